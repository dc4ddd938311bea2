"""No silent garbage: contrast detection, and one clear error when the result cannot be particles.

Small videos are rendered with the twin's microscope (twin.render.render_frame):
a dense bidisperse monolayer (10 and 14 px disks, 1.15 large diameters apart)
as bright field (dark disks with a bright rim) or fluorescence (Gaussians).
"""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from tracking import TrackingInputError, track_video
from tracking.checks import ImplausibleResultError, check_packing, short_fraction
from tracking.io import to_grey
from tracking.locate import NoParticlesError, ResolvedLocate, detect_polarity
from twin.params import MicroscopeParams
from twin.render import illumination_field, quantise, render_frame

REPO = Path(__file__).resolve().parents[1]
BULK_WATER = REPO.parent / "shared" / "data" / "bulk_water"
MPP, FPS = 0.3, 20.0


def rendered_frames(spot, n_frames=12, size=128, seed=0):
    """12-bit frames of a dense bidisperse monolayer, particles diffusing 0.3 px per frame."""
    params = MicroscopeParams(width_px=size, height_px=size, spot=spot)
    rng = np.random.default_rng(seed)
    grid = np.arange(8.0, size - 6, 1.15 * 14)
    gx, gy = (a.ravel() for a in np.meshgrid(grid, grid))
    x, y = gx + rng.uniform(-1, 1, gx.size), gy + rng.uniform(-1, 1, gy.size)
    diameter = np.where(np.arange(x.size) % 2 == 0, 10.0, 14.0)
    light = illumination_field(params)
    frames = []
    for _ in range(n_frames):
        frames.append(quantise(render_frame(x, y, diameter, np.zeros(x.size), params, rng, illumination=light), 12))
        x, y = x + rng.normal(0, 0.3, x.size), y + rng.normal(0, 0.3, x.size)
    return np.stack(frames)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    for spot in ("brightfield", "fluorescence"):
        tifffile.imwrite(folder / f"{spot}.tif", rendered_frames(spot), photometric="minisblack")
    rng = np.random.default_rng(0)
    tifffile.imwrite(folder / "noise.tif", rng.normal(1000, 30, (12, 128, 128)).astype(np.uint16),
                     photometric="minisblack")
    return folder


def track(source, out_dir, params=None):
    return track_video(source, out_dir, params, pixel_size_um=MPP, frame_rate_hz=FPS)


def assert_stops(source, tmp_path, params, *fragments, error=ImplausibleResultError):
    with pytest.raises(error) as caught:
        track(source, tmp_path / "out", params)
    for fragment in fragments:
        assert fragment in str(caught.value), str(caught.value)
    assert not (tmp_path / "out").exists()  # nothing written
    return str(caught.value)


# --------------------------------------------------------------------------- contrast

@pytest.mark.parametrize("spot, dark", [("brightfield", True), ("fluorescence", False)])
def test_polarity_detected_on_renders(spot, dark):
    record, spots = detect_polarity(rendered_frames(spot, n_frames=3))
    assert record["invert"] is dark
    ratio = record["dark_over_bright"]
    assert ratio > 1.5 if dark else ratio < 0.7
    assert all(len(s) > 0 for s in spots[dark])  # the particles' spots, reused by the automatic diameter


@pytest.mark.skipif(not BULK_WATER.is_dir(), reason="the shared bulk_water sample (../shared/data/bulk_water) is "
                                                    "not beside the checkout")
def test_polarity_of_bulk_water_is_dark():
    import imageio.v2 as imageio

    frames = np.stack([to_grey(imageio.imread(BULK_WATER / f"bulk_water_{i:03d}.png")) for i in (0, 10, 20)])
    record, _ = detect_polarity(frames)
    assert record["invert"] is True and record["dark_over_bright"] > 1.5


def test_noise_has_no_polarity():
    rng = np.random.default_rng(1)
    with pytest.raises(NoParticlesError):
        detect_polarity(rng.normal(100, 10, (2, 128, 128)))


def test_undecided_contrast_is_one_error_naming_invert(tmp_path):
    # As many dark spots as bright ones, alike: no setting can be guessed.
    yy, xx = np.mgrid[:96, :96]
    rng = np.random.default_rng(2)
    frames = []
    for frame in range(4):
        image = 1000 + rng.normal(0, 5, (96, 96))
        for i, (x, y) in enumerate((x, y) for x in (16, 40, 64, 88) for y in (16, 40, 64, 88)):
            sign = 1 if (i + i // 4) % 2 else -1
            image += sign * 300 * np.exp(-((xx - x - 0.2 * frame) ** 2 + (yy - y) ** 2) / (2 * 2.0**2))
        frames.append(np.rint(image).astype(np.uint16))
    tifffile.imwrite(tmp_path / "both.tif", np.stack(frames), photometric="minisblack")
    assert_stops(tmp_path / "both.tif", tmp_path, None, "cannot tell", "tracking.locate.invert",
                 error=TrackingInputError)


@pytest.mark.parametrize("spot", ["brightfield", "fluorescence"])
def test_auto_contrast_tracks_as_the_right_setting_and_is_recorded(videos, tmp_path, spot):
    dark = spot == "brightfield"
    auto = track(videos / f"{spot}.tif", tmp_path / "auto")
    given = track(videos / f"{spot}.tif", tmp_path / "given", {"locate": {"invert": dark}})
    pd.testing.assert_frame_equal(auto.trajectories, given.trajectories)
    record = auto.qc["auto"]["invert"]
    assert record["used"] is dark and record["given"] == "auto"
    assert auto.qc["resolved"]["locate"]["invert"] is dark
    assert auto.qc["checks"]["packing"]["ratio"] < 1.0
    assert auto.qc["checks"]["short_trajectories"]["fraction"] < 0.1


@pytest.mark.parametrize("spot", ["brightfield", "fluorescence"])
def test_wrong_invert_stops_with_the_setting_named(videos, tmp_path, spot):
    wrong = spot == "fluorescence"
    message = assert_stops(videos / f"{spot}.tif", tmp_path, {"locate": {"invert": wrong}},
                           f"tracking.locate.invert is {str(wrong).lower()}",
                           f"set tracking.locate.invert: {str(not wrong).lower()}", "tracking.checks.polarity")
    assert "\n" not in message


# --------------------------------------------------------------------------- noise and junk

def test_noise_frames_stop(videos, tmp_path):
    noise = videos / "noise.tif"
    assert_stops(noise, tmp_path, None, "no particle found", error=TrackingInputError)
    # With every locate setting given (and the contrast check off) trackpy finds noise maxima:
    # far more than particles of the mask could be...
    explicit = {"diameter": 11, "minmass": 0, "separation": 1, "invert": False}
    assert_stops(noise, tmp_path, {"locate": explicit, "checks": {"polarity": False}},
                 "times as many as disks of the mask diameter", "tracking.locate.diameter",
                 "tracking.checks.max_packing_ratio")
    # ...or, sparser, maxima that cannot be followed from frame to frame.
    sparse = {**explicit, "diameter": 7, "separation": 2}
    assert_stops(noise, tmp_path, {"locate": sparse, "checks": {"polarity": False}},
                 "lie in trajectories shorter than 6 frames", "tracking.locate.invert",
                 "tracking.link.search_range_um", "tracking.checks.max_short_fraction")
    # The checks can be switched off by the keys the errors name.
    off = {"polarity": False, "max_packing_ratio": None, "max_short_fraction": None}
    result = track(noise, tmp_path / "out", {"locate": sparse, "checks": off})
    assert result.qc["checks"]["short_trajectories"]["fraction"] > 0.5


def test_packing_check_counts_close_packed_disks():
    features = pd.DataFrame({"frame": np.repeat([0, 1, 2], [100, 120, 110])})
    resolved = ResolvedLocate(diameter=10, minmass=5.0, separation=None, invert=False, percentile=64,
                              noise_size=1, smoothing_size=None)
    # 100 x 100 px hold 2 / sqrt(3) * 100 disks of 10 px at close packing: 115.5.
    record = check_packing(features, (100, 100), resolved, 1.5, "video")
    assert record["close_packed"] == pytest.approx(115.5, abs=0.1)
    assert record["ratio"] == pytest.approx(110 / 115.47, rel=1e-3)
    with pytest.raises(ImplausibleResultError, match="tracking.checks.max_packing_ratio"):
        check_packing(features, (100, 100), resolved, 0.9, "video")


def test_short_fraction_counts_features_not_trajectories():
    # One particle seen in all 20 frames, ten seen once each: most trajectories are short,
    # but most features are in the long one, as in a real recording with particles passing by.
    long = pd.DataFrame({"particle": 0, "frame": np.arange(20)})
    short = pd.DataFrame({"particle": np.arange(1, 11), "frame": np.arange(10)})
    record = short_fraction(pd.concat([long, short]), n_frames=20)
    assert record == {"short_frames": 10, "fraction": pytest.approx(10 / 30, abs=1e-4)}
    assert short_fraction(short, n_frames=3)["fraction"] is None  # too few frames to judge
