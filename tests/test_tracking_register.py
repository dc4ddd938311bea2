"""Frame registration (link.drift: registration): known sub-pixel stage shifts, and links across a stage jump."""
import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy.special import erf

from tracking import track_video
from tracking.params import ParameterError
from tracking.register import register_frames

pytest.importorskip("skimage.registration")

SIZE, N_FRAMES, SIGMA = 128, 16, 1.5  # px, frames, Gaussian spot width (px)
JUMP_AT, JUMP = 8, (5.3, -4.1)  # a stage jump (px) larger than the search range, between frames 7 and 8


def stage_shifts(rng) -> np.ndarray:
    """Cumulative stage position (x, y) per frame: sub-pixel random steps and one jump."""
    steps = rng.uniform(-0.6, 0.6, (N_FRAMES, 2))
    steps[0] = 0
    steps[JUMP_AT] += JUMP
    return np.cumsum(steps, axis=0)


def render(x, y, rng) -> np.ndarray:
    image = np.full((SIZE, SIZE), 300.0)
    axis = np.arange(SIZE)
    s = np.sqrt(2) * SIGMA
    for xc, yc in zip(x, y, strict=True):
        wx = 0.5 * (erf((axis + 0.5 - xc) / s) - erf((axis - 0.5 - xc) / s))
        wy = 0.5 * (erf((axis + 0.5 - yc) / s) - erf((axis - 0.5 - yc) / s))
        image += 2 * np.pi * SIGMA**2 * 1200 * np.outer(wy, wx)
    return np.clip(np.rint(image + rng.normal(0, 10, image.shape)), 0, 4095).astype(np.uint16)


@pytest.fixture(scope="module")
def shifted_video(tmp_path_factory):
    """Particles that barely move on a stage that drifts by known sub-pixel steps and jumps once."""
    rng = np.random.default_rng(4)
    grid = np.arange(-20, SIZE + 20, 12.0)
    x0, y0 = (g.ravel() + rng.uniform(-2, 2, g.size) for g in np.meshgrid(grid, grid))
    shifts = stage_shifts(rng)
    frames, rows = [], []
    for frame in range(N_FRAMES):
        x0, y0 = x0 + rng.normal(0, 0.05, x0.size), y0 + rng.normal(0, 0.05, y0.size)
        x, y = x0 + shifts[frame, 0], y0 + shifts[frame, 1]
        frames.append(render(x, y, rng))
        rows.append(pd.DataFrame({"frame": frame, "particle": np.arange(x.size), "x_px": x, "y_px": y}))
    path = tmp_path_factory.mktemp("stage") / "frames.tif"
    tifffile.imwrite(path, np.stack(frames), photometric="minisblack")
    return path, shifts, np.stack(frames)


def test_registration_recovers_known_sub_pixel_shifts(shifted_video):
    _, shifts, frames = shifted_video
    drift, record = register_frames(frames, np.arange(N_FRAMES))
    error = drift[["x_px", "y_px"]].to_numpy() - (shifts - shifts[0])
    # ~0.01 px per step (1/100 px upsampling; the particles' own diffusion, 0.05 px per frame over ~100 in
    # view, adds ~0.005 px), accumulated over 15 steps as a random walk: ~0.04 px.
    assert np.sqrt(np.mean(error**2)) < 0.06
    assert record["largest_step_px"] == pytest.approx(np.hypot(*np.diff(shifts, axis=0)[JUMP_AT - 1]), abs=0.05)


def test_registration_links_across_a_stage_jump(shifted_video, tmp_path):
    path, shifts, _ = shifted_video
    units = {"pixel_size_um": 0.5, "frame_rate_hz": 10}
    link = {"search_range_px": 3.0, "min_length": 2}
    checks = {"max_short_fraction": None}
    registered = track_video(path, tmp_path / "registered", {"link": {**link, "drift": "registration"},
                                                             "checks": checks}, **units)
    plain = track_video(path, tmp_path / "plain", {"link": {**link, "drift": "median"}, "checks": checks}, **units)
    # The jump (6.7 px) is beyond the search range (3 px): trajectories linked on the measured positions break
    # there; linked in the stage's frame they run through it.
    span = registered.trajectories.groupby("particle")["frame"].agg(["min", "max"])
    through = ((span["min"] < JUMP_AT) & (span["max"] >= JUMP_AT)).sum()
    plain_span = plain.trajectories.groupby("particle")["frame"].agg(["min", "max"])
    assert ((plain_span["min"] < JUMP_AT) & (plain_span["max"] >= JUMP_AT)).sum() == 0
    assert through >= 0.8 * registered.trajectories.groupby("frame").size().median()
    # The measured drift is the stage's, removed from x, y (µm) but not from x_px, y_px (as measured).
    drift = pd.read_csv(tmp_path / "registered" / "drift.csv").set_index("frame")
    np.testing.assert_allclose(drift[["x", "y"]].to_numpy() / units["pixel_size_um"], shifts - shifts[0], atol=0.12)
    t = registered.trajectories
    np.testing.assert_allclose(t["x"] / units["pixel_size_um"],
                               t["x_px"] - drift["x"].reindex(t["frame"]).to_numpy() / units["pixel_size_um"])
    features = registered.features.set_index(["frame", "x_px"])
    assert t.set_index(["frame", "x_px"]).index.isin(features.index).all()  # positions exactly as located
    assert registered.qc["resolved"]["link"]["registration"]["precision_px"] == 0.01


def test_registration_without_scikit_image_is_one_error(monkeypatch, shifted_video, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "skimage.registration", None)
    with pytest.raises(ParameterError, match="pip install scikit-image"):
        track_video(shifted_video[0], tmp_path / "x", {"link": {"drift": "registration"}}, pixel_size_um=0.5,
                    frame_rate_hz=10)
    assert not (tmp_path / "x").exists()
