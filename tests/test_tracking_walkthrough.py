"""trackpy's walkthrough, side by side: bare trackpy and track_video with the equivalent config.

The walkthrough (soft-matter.github.io/trackpy, "Walkthrough") tracks the
bulk_water recording: the green channel (``image[:, :, 1]``), diameter 11,
minmass 20, invert, ``link(f, 5, memory=3)``, ``filter_stubs(t, 25)``, the
per-observation cut ``t1[(mass > 50) & (size < 2.6) & (ecc < 0.3)]``, and
trackpy's mean drift computed on that cut set and subtracted from it. The
shared sample holds its first 30 frames; both sides run on those.
"""
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

trackpy = pytest.importorskip("trackpy")
pims = pytest.importorskip("pims")

from tracking import track_video

REPO = Path(__file__).resolve().parents[1]
BULK_WATER = REPO.parent / "shared" / "data" / "bulk_water"
MPP, FPS = 1 / 2.85, 24.0  # µm per pixel, frames per second (the sample's README)

WALKTHROUGH_CONFIG = {
    # refine: none keeps trackpy's centroids (the default psf_fit moves them: see test_tracking_refine.py)
    "locate": {"channel": 1, "invert": True, "diameter": 11, "minmass": 20, "separation": None, "refine": "none"},
    "link": {"search_range_px": 5, "memory": 3, "min_length": 25, "drift": "mean", "drift_from": "filtered"},
    "trajectory_filter": {"per": "observation", "min_mass": 50, "max_size": 2.6, "max_ecc": 0.3},
}

pytestmark = pytest.mark.skipif(not BULK_WATER.is_dir(),
                                reason="the shared bulk_water sample (../shared/data/bulk_water) is not beside the "
                                       "checkout")


@pims.pipeline
def green(image):
    return image[:, :, 1]  # the walkthrough's channel


@pytest.fixture(scope="module")
def bare_trackpy():
    """The walkthrough's own calls, verbatim in substance."""
    frames = green(pims.open(str(BULK_WATER / "*.png")))
    trackpy.quiet()
    with warnings.catch_warnings():  # pandas' deprecations inside trackpy 0.7, re-emitted by pytest.warns
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.warns(PendingDeprecationWarning):  # trackpy's invert argument; its result is what we compare
            features = trackpy.batch(frames, 11, minmass=20, invert=True, processes=1)
    linked = trackpy.link(features, 5, memory=3)
    t1 = trackpy.filter_stubs(linked, 25)
    t2 = t1[((t1["mass"] > 50) & (t1["size"] < 2.6) & (t1["ecc"] < 0.3))]
    drift = trackpy.compute_drift(t2)
    tm = trackpy.subtract_drift(t2.copy(), drift)
    return {"features": features, "t1": t1, "t2": t2, "drift": drift, "tm": tm}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    out = tmp_path_factory.mktemp("walkthrough") / "tracking"
    return track_video(str(BULK_WATER / "*.png"), out, WALKTHROUGH_CONFIG, pixel_size_um=MPP, frame_rate_hz=FPS)


def test_features_identical_to_trackpy(bare_trackpy, project):
    theirs = bare_trackpy["features"].sort_values(["frame", "y", "x"]).reset_index(drop=True)
    mine = project.features  # sorted by frame, y_px, x_px
    pd.testing.assert_series_equal(mine.groupby("frame").size(), theirs.groupby("frame").size())
    np.testing.assert_allclose(mine["x_px"], theirs["x"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(mine["y_px"], theirs["y"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(mine["mass"], theirs["mass"], rtol=1e-12)
    assert len(mine) / 30 > 500  # about 580 per frame in the green channel


def test_trajectories_identical_to_trackpy(bare_trackpy, project):
    t2, tm = bare_trackpy["t2"], bare_trackpy["tm"]
    # Raw positions beside the drift-subtracted ones, to pair rows on both sides.
    theirs = tm.reset_index(drop=True).merge(t2[["frame", "particle", "x", "y"]], on=["frame", "particle"],
                                             suffixes=("", "_raw"))
    theirs = theirs.sort_values(["frame", "y_raw", "x_raw"]).reset_index(drop=True)
    mine = project.trajectories.sort_values(["frame", "y_px", "x_px"]).reset_index(drop=True)
    assert mine["particle"].nunique() == t2["particle"].nunique() == project.qc["trajectories"]
    assert project.qc["trajectory_filter"]["trajectories_before"] == bare_trackpy["t1"]["particle"].nunique()
    assert len(mine) == len(theirs)
    np.testing.assert_array_equal(mine["frame"], theirs["frame"])
    np.testing.assert_allclose(mine["x_px"], theirs["x_raw"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(mine["y_px"], theirs["y_raw"], rtol=0, atol=1e-9)
    # The same trajectories: particle ids pair one to one.
    pairs = pd.DataFrame({"mine": mine["particle"], "theirs": theirs["particle"]}).drop_duplicates()
    assert len(pairs) == pairs["mine"].nunique() == pairs["theirs"].nunique()
    # After trackpy's mean drift is subtracted (x, y in µm on our side, px on trackpy's).
    np.testing.assert_allclose(mine["x"] / MPP, theirs["x"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(mine["y"] / MPP, theirs["y"], rtol=0, atol=1e-9)
    assert np.abs(bare_trackpy["drift"].to_numpy()).max() > 0.05  # a drift was there to remove


def test_luma_default_differs_from_the_walkthrough_channel(bare_trackpy, tmp_path):
    # Without channel: 1 the frames become luma grey and fewer features pass minmass 20:
    # the channel key is what makes the comparison above possible.
    locate = {k: v for k, v in WALKTHROUGH_CONFIG["locate"].items() if k != "channel"}
    luma = track_video(str(BULK_WATER / "*.png"), tmp_path / "luma",
                       {"locate": locate, "frame_range": {"stop": 3}, "link": {"search_range_px": 5}},
                       pixel_size_um=MPP, frame_rate_hz=FPS).features
    green_count = (bare_trackpy["features"]["frame"] < 3).sum()
    assert len(luma) < 0.98 * green_count
