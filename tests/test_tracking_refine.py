"""Sub-pixel refinement (tracking/refine.py): the measured spot fitted with its neighbours subtracted.

The video is rendered with the twin's own bright-field microscope (twin.render)
from positions built here: a bidisperse monolayer of 3 and 4.2 µm particles
(10 and 14 px) on a jittered triangular lattice whose spacing leaves
neighbours almost touching, moving by small random steps. No simulation is needed,
so the video takes a fraction of a second to make.
"""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd
import pytest
import tifffile
import trackpy

from tracking import ParameterError, from_config, track_video
from tracking.accuracy import match_points
from tracking.params import LocateParams, SpeciesParams
from tracking.refine import (
    STATUS,
    RefineError,
    RefineSkippedWarning,
    fit_frame,
    measure_spot_model,
    refine_features,
    resolve_radius,
    spot_model,
    status_of,
)
from twin.params import MicroscopeParams
from twin.render import illumination_field, quantise, render_frame

SIZE_PX = 160
PIXEL_UM = 0.3
DIAMETERS_PX = (10.0, 14.0)
MASK_PX = 15  # what the automatic diameter picks for these spots (docs/tracking.md)
SPACING_PX = 16.0  # gaps between neighbours 0.2-3 px (median 3): rims overlap the neighbours' disks
FRAMES = 5


def lattice(rng, size=SIZE_PX, spacing=SPACING_PX, hole=None):
    """Jittered triangular lattice covering the frame; `hole` (x, y, r) leaves a disk empty."""
    rows = np.arange(-spacing, size + spacing, spacing * np.sqrt(3) / 2)
    points = [(x + (i % 2) * spacing / 2, y) for i, y in enumerate(rows) for x in np.arange(-spacing, size + spacing,
                                                                                           spacing)]
    xy = np.array(points) + rng.uniform(-0.7, 0.7, (len(points), 2))
    if hole is not None:
        xy = xy[np.hypot(xy[:, 0] - hole[0], xy[:, 1] - hole[1]) > hole[2]]
    return xy


def render(truth: pd.DataFrame, seed=3, size=SIZE_PX) -> np.ndarray:
    params = dataclasses.replace(MicroscopeParams(), width_px=size, height_px=size, seed=seed)
    rng = np.random.default_rng(seed)
    illumination = illumination_field(params)
    frames = []
    for _, rows in truth.groupby("frame"):
        image = render_frame(rows["x_px"], rows["y_px"], rows["diameter_px"], rows["species"], params, rng,
                             illumination=illumination)
        frames.append(quantise(image, params.bit_depth))
    return np.stack(frames)


def make_video(seed=0, hole=None, frames=FRAMES, spacing=SPACING_PX):
    """(frames uint16, truth: frame, particle, x_px, y_px, species, diameter_px)."""
    rng = np.random.default_rng(seed)
    xy = lattice(rng, spacing=spacing, hole=hole)
    species = rng.integers(0, 2, len(xy))
    pieces = []
    for frame in range(frames):
        xy = xy + rng.normal(0.0, 0.3, xy.shape)  # Brownian-like steps between frames (px)
        pieces.append(pd.DataFrame({"frame": frame, "particle": np.arange(len(xy)), "x_px": xy[:, 0],
                                    "y_px": xy[:, 1], "species": species,
                                    "diameter_px": np.take(DIAMETERS_PX, species)}))
    truth = pd.concat(pieces, ignore_index=True)
    return render(truth), truth


def locate(frames: np.ndarray) -> pd.DataFrame:
    inverted = 4095 - frames  # dark particles, made bright as the pipeline does (prepare)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trackpy.quiet()
        features = trackpy.batch(inverted, MASK_PX, minmass=1000, separation=8, processes=1)
    return features.reset_index(drop=True)


def interior_rms(found: pd.DataFrame, truth: pd.DataFrame) -> float:
    """RMS error (px) of found x, y over matches whose true centre lies a mask radius inside the frame."""
    errors = []
    for frame, rows in truth.groupby("frame"):
        mine = found[found["frame"] == frame]
        i, j = match_points(mine[["x", "y"]].to_numpy(), rows[["x_px", "y_px"]].to_numpy(), 5.0)
        true_xy = rows[["x_px", "y_px"]].to_numpy()[j]
        inside = np.all((true_xy >= MASK_PX // 2) & (true_xy <= SIZE_PX - 1 - MASK_PX // 2), axis=1)
        errors.append((mine[["x", "y"]].to_numpy()[i] - true_xy)[inside])
    errors = np.concatenate(errors)
    assert len(errors) > 200
    return float(np.sqrt(np.mean(np.sum(errors**2, axis=1))))


@pytest.fixture(scope="module")
def video():
    frames, truth = make_video()
    return frames, truth, locate(frames)


def refine(frames, features, **overrides):
    defaults = LocateParams()
    settings = {"radius_px": resolve_radius(defaults.refine_radius_px, MASK_PX), "sweeps": defaults.refine_sweeps,
                "profile_frames": defaults.refine_profile_frames, "max_shift_px": defaults.refine_max_shift_px}
    settings.update(overrides)
    inverted = 4095 - frames
    return refine_features(lambda i: inverted[i], np.arange(len(frames)), features, species_params=SpeciesParams(),
                           border_px=MASK_PX // 2, **settings)


def test_refinement_removes_most_of_the_centroid_error_between_touching_neighbours(video):
    frames, truth, features = video
    refined, record = refine(frames, features)
    centroid = interior_rms(features, truth)
    fitted = interior_rms(refined, truth)
    # Measured: centroid 0.23 px, refined 0.017 px. The threshold, 0.04 px, is 2.3 times the refined
    # error (room for other platforms' rounding and trackpy versions) and 2.5 times below the
    # issue's target of 0.1 px; the centroid misses it six-fold.
    assert fitted < 0.04
    assert fitted < 0.25 * centroid
    assert record["profile"]["n_species"] == 2  # one measured spot per size
    assert record["fraction_refined"] > 0.95
    # trackpy's centroids are kept beside the refined positions
    np.testing.assert_array_equal(refined["x_centroid"], features["x"])
    assert np.isfinite(refined[["x", "y"]].to_numpy()).all()


def test_edge_particles_and_a_blank_patch_give_no_nan_and_keep_the_centroid(video):
    frames, _truth, features = video
    calibration = features[features["frame"] < 3]
    inverted = (4095 - frames).astype(float)
    model = measure_spot_model(inverted[:3], calibration, resolve_radius("auto", MASK_PX), SpeciesParams(), 8)
    # A frame with a hole: a feature placed in the blank patch, others at and beyond the edges.
    hole_frames, _ = make_video(seed=5, hole=(80, 80, 30), frames=1)
    image = (4095 - hole_frames[0]).astype(float)
    found = locate(hole_frames)
    x = np.r_[found["x"].to_numpy(), 80.0, 0.0, SIZE_PX - 1.0, 1.5, -3.0]
    y = np.r_[found["y"].to_numpy(), 80.0, 0.0, SIZE_PX - 1.0, 80.0, 40.0]
    size = np.r_[found["size"].to_numpy(), 3.0, 3.0, 3.0, 3.0, 3.0]
    species = model.species_of(size)
    fit = fit_frame(image, x, y, species, model, 8)
    status = status_of(fit, x, y, species, model.n_species, 2.0)
    for key in ("x", "y", "amplitude", "background"):
        assert np.isfinite(fit[key]).all(), key
    blank, corner, far_corner, left_edge, outside = range(len(found), len(x))
    assert STATUS[status[blank]] == "weak"
    assert STATUS[status[corner]] == STATUS[status[far_corner]] == STATUS[status[outside]] == "edge"
    # Half of its window is outside the image: still fitted, on the pixels inside.
    assert STATUS[status[left_edge]] != "edge"
    # A flat frame: nothing to fit, every feature weak, still finite.
    flat = fit_frame(np.full_like(image, 2000.0), x, y, species, model, 8)
    flat_status = status_of(flat, x, y, species, model.n_species, 2.0)
    assert np.isfinite(flat["x"]).all() and np.isfinite(flat["y"]).all()
    assert (flat_status != 0).all()


def test_no_contrast_or_too_few_spots_is_an_error_of_the_module_and_a_warning_of_the_pipeline(tmp_path):
    flat = np.full((3, 64, 64), 2000.0)
    features = pd.DataFrame({"frame": [0, 1, 2], "x": [32.0] * 3, "y": [32.0] * 3, "size": [3.0] * 3})
    with pytest.raises(RefineError, match="too few spots"):
        measure_spot_model(flat, features, 8.0, SpeciesParams(), 4)
    # Through the pipeline: a video of 4 particles cannot measure a spot; trackpy's centroids are kept.
    rng = np.random.default_rng(1)
    truth = pd.concat([pd.DataFrame({"frame": f, "particle": np.arange(4), "x_px": [40.0, 80, 40, 80],
                                     "y_px": [40.0, 40, 80, 80] + rng.normal(0, 0.2, 4), "species": 0,
                                     "diameter_px": 10.0}) for f in range(6)], ignore_index=True)
    tifffile.imwrite(tmp_path / "few.tif", render(truth, size=120))
    with pytest.warns(RefineSkippedWarning, match="tracking.locate.refine"):
        result = track_video(tmp_path / "few.tif", tmp_path / "out", {"locate": {"invert": True}},
                             pixel_size_um=PIXEL_UM, frame_rate_hz=10.0)
    assert "skipped" in result.qc["refine"]
    np.testing.assert_array_equal(result.features["x_px"], result.features["x_centroid_px"])
    assert not result.features["refined"].any()


def test_pipeline_refines_by_default_and_keeps_the_centroid_columns(video, tmp_path):
    frames, _truth, _ = video
    tifffile.imwrite(tmp_path / "video.tif", frames)
    units = {"pixel_size_um": PIXEL_UM, "frame_rate_hz": 10.0}
    fitted = track_video(tmp_path / "video.tif", tmp_path / "fit", {"locate": {"invert": True}}, **units)
    plain = track_video(tmp_path / "video.tif", tmp_path / "plain", {"locate": {"invert": True, "refine": "none"}},
                        **units)
    assert fitted.qc["refine"]["method"] == "psf_fit" and plain.qc["refine"] is None
    assert fitted.features["refined"].mean() > 0.95 and not plain.features["refined"].any()
    # The centroids of the refined run are the plain run's positions, row for row (same sort order up to ties).
    a = fitted.features.sort_values(["frame", "y_centroid_px", "x_centroid_px"])
    b = plain.features.sort_values(["frame", "y_px", "x_px"])
    np.testing.assert_allclose(a["x_centroid_px"], b["x_px"], atol=1e-9)
    np.testing.assert_array_equal(plain.features["x_px"], plain.features["x_centroid_px"])
    shift = np.hypot(fitted.features["x_px"] - fitted.features["x_centroid_px"],
                     fitted.features["y_px"] - fitted.features["y_centroid_px"])
    assert 0.01 < shift.median() < 0.5
    # x (µm) follows the refined pixels
    np.testing.assert_allclose(fitted.features["x"], fitted.features["x_px"] * PIXEL_UM)


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("refine", "gauss", "one of none, psf_fit"),
    ("refine", None, "one of none, psf_fit"),
    ("refine_radius_px", 1.0, "'auto' or a number >= 2"),
    ("refine_radius_px", "big", "'auto' or a number >= 2"),
    ("refine_sweeps", 0, "an integer >= 1"),
    ("refine_profile_frames", 1.5, "an integer >= 1"),
    ("refine_max_shift_px", 5.0, "a number in (0, 3]"),
])
def test_refine_settings_are_checked_with_the_key_named(key, value, expected):
    with pytest.raises(ParameterError) as error:
        from_config({"locate": {key: value}})
    assert f"tracking.locate.{key}" in str(error.value)
    assert expected in str(error.value)


def test_spot_model_lookup_matches_the_profile():
    # The tabulated pixel image of a spot, read at a centre on a grid point, is the profile averaged
    # over the pixel's 2 x 2 sample points: check one pixel against the direct computation.
    r = np.arange(0, 12.02, 0.01)
    table = np.exp(-0.5 * (r / 2.5) ** 2)[None, :]
    model = spot_model(10.0, np.array([]), table)
    from tracking.refine import _pixel_values, _windows

    win = _windows((64, 64), np.array([30.3]), np.array([31.6]), 10.0)
    value, _, _ = _pixel_values(model, np.array([0]), win, np.array([0]), np.array([30.3]), np.array([31.6]))
    k = np.flatnonzero(win.weight[0])[5]
    px, py = win.cx[0] + win.ox[0, k], win.cy[0] + win.oy[0, k]
    offsets = [-0.25, 0.25]
    direct = np.mean([np.exp(-0.5 * ((px + ox - 30.3) ** 2 + (py + oy - 31.6) ** 2) / 2.5**2)
                      for ox in offsets for oy in offsets])
    assert value[0, k] == pytest.approx(direct, abs=2e-4)
