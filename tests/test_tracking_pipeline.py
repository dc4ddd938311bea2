"""End to end: a synthetic sheared video with known truth, and the real bulk_water sample."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import trackpy
from scipy.special import erf

from tracking import track_video

BULK_WATER = Path("/work/shared/data/bulk_water")
WIDTH, HEIGHT, PAD = 160, 120, 12  # px; particles live in a periodic strip PAD wider on each side
FPS, MPP = 10.0, 0.25  # frames per second, µm per pixel
SIGMA = 1.5  # px, Gaussian spot width
SHEAR_PER_FRAME = 0.02  # simple shear vx = rate (y - y0), px per frame per px
DRIFT = (0.4, -0.05)  # px per frame, uniform
DIFFUSION_STEP = 0.08  # px, rms random step per frame and axis


def simulate(n_frames=30, seed=0, *, width=WIDTH, height=HEIGHT, pad=PAD, shear=SHEAR_PER_FRAME, y0=50.0,
             drift=DRIFT, step=DIFFUSION_STEP):
    """Unwrapped truth positions (n_frames, n) of particles in rows 10 px apart, sheared about y0 (px), drifting,
    diffusing. Also the split-tracking tests' video (tests/test_tracking_stream.py), with its own sizes."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for row_y in np.arange(8.0, height - 6, 10.0):
        x = -pad + 5.0
        while x < width + pad - 5:
            xs.append(x)
            ys.append(row_y + rng.uniform(-1, 1))
            x += rng.uniform(11, 18)
    x, y = np.array(xs), np.array(ys)
    x_t, y_t = [x], [y]
    for _ in range(n_frames - 1):
        x = x + shear * (y - y0) + drift[0] + rng.normal(0, step, x.size)
        y = y + drift[1] + rng.normal(0, step, y.size)
        x_t.append(x)
        y_t.append(y)
    return np.array(x_t), np.array(y_t)


def render(x, y, rng, *, width=WIDTH, height=HEIGHT, blank=False):
    """One 12-bit frame: pixel-integrated Gaussian spots on a background with Gaussian noise (blank: no spot)."""
    image = np.full((height, width), 200.0)
    half = int(np.ceil(4 * SIGMA))
    offsets = np.arange(-half, half + 1)
    s = np.sqrt(2) * SIGMA
    for xc, yc in ([] if blank else zip(x, y, strict=True)):
        cols = np.rint(xc).astype(int) + offsets
        rows = np.rint(yc).astype(int) + offsets
        wx = 0.5 * (erf((cols + 0.5 - xc) / s) - erf((cols - 0.5 - xc) / s))
        wy = 0.5 * (erf((rows + 0.5 - yc) / s) - erf((rows - 0.5 - yc) / s))
        keep_c = (cols >= 0) & (cols < width)
        keep_r = (rows >= 0) & (rows < height)
        image[np.ix_(rows[keep_r], cols[keep_c])] += 2 * np.pi * SIGMA**2 * 1500 * np.outer(wy[keep_r], wx[keep_c])
    image += rng.normal(0, 15, image.shape)
    return np.clip(np.rint(image), 0, 4095).astype(np.uint16)


@pytest.fixture(scope="module")
def sheared_video(tmp_path_factory):
    """A 12-bit TIFF of a sheared, drifting, diffusing monolayer and its truth_pixels table."""
    folder = tmp_path_factory.mktemp("sheared")
    xu, yu = simulate()
    period = WIDTH + 2 * PAD
    x = np.mod(xu + PAD, period) - PAD  # wrapped: particles leave on one side and come back on the other
    rng = np.random.default_rng(1)
    tifffile.imwrite(folder / "frames.tif", np.stack([render(x[f], yu[f], rng) for f in range(len(x))]),
                     photometric="minisblack")
    # Truth velocities: central differences of the unwrapped positions (docs/data_schema.md).
    vx, vy = np.gradient(xu, axis=0) * FPS, np.gradient(yu, axis=0) * FPS
    frames = np.repeat(np.arange(len(x)), x.shape[1])
    truth = pd.DataFrame({"frame": frames, "t": frames / FPS, "particle": np.tile(np.arange(x.shape[1]), len(x)),
                          "diameter": 4 * SIGMA * MPP, "x_px": x.ravel(), "y_px": yu.ravel(),
                          "vx_px": vx.ravel(), "vy_px": vy.ravel()})
    truth["in_fov"] = truth["x_px"].between(-0.5, WIDTH - 0.5) & truth["y_px"].between(-0.5, HEIGHT - 0.5)
    truth = truth[truth["x_px"].between(-4 * SIGMA, WIDTH - 1 + 4 * SIGMA)].reset_index(drop=True)
    truth.to_parquet(folder / "truth_pixels.parquet")
    return folder


@pytest.fixture(scope="module")
def tracked(sheared_video, tmp_path_factory):
    out = tmp_path_factory.mktemp("tracked") / "tracking"
    params = {"link": {"predictor": "affine", "search_range_um": 0.75}}
    result = track_video(sheared_video / "frames.tif", out, params, pixel_size_um=MPP, frame_rate_hz=FPS,
                         processes=2, truth_pixels=sheared_video / "truth_pixels.parquet")
    return result


def test_synthetic_shear_accuracy(tracked):
    accuracy = json.loads((tracked.out_dir / "accuracy.json").read_text())
    assert accuracy["localisation_rms_px"] < 0.1
    assert accuracy["fraction_correct_links"] >= 0.99
    assert accuracy["fraction_missed"] < 0.01
    assert accuracy["fraction_spurious"] < 0.01
    assert accuracy["velocity_relative_rms_error"] < 0.1


def test_outputs_columns_units_and_trackpy_compatibility(tracked):
    out = tracked.out_dir
    for name in ("features.parquet", "trajectories.parquet", "qc.json", "accuracy.json"):
        assert (out / name).is_file(), name
    for name in ("annotated_frame", "mass_size", "subpixel_bias", "trajectories", "features_per_frame"):
        assert (out / "qc" / f"{name}.png").stat().st_size > 1000, name
    trajectories = pd.read_parquet(out / "trajectories.parquet")
    assert list(trajectories.columns[:9]) == ["frame", "t", "particle", "x", "y", "x_px", "y_px", "vx", "vy"]
    for column in ("mass", "size", "ecc", "signal"):
        assert column in trajectories
    np.testing.assert_allclose(trajectories["x"], trajectories["x_px"] * MPP)
    np.testing.assert_allclose(trajectories["t"], trajectories["frame"] / FPS)
    # The imposed shear, in physical units: d vx / d y = rate * FPS (1/s).
    slope = np.polyfit(trajectories["y"], trajectories["vx"], 1)[0]
    assert slope == pytest.approx(SHEAR_PER_FRAME * FPS, rel=0.02)
    # trackpy reads the table as it is: x, y in µm, so mpp=1.
    msd = trackpy.emsd(trajectories, mpp=1, fps=FPS, max_lagtime=5)
    assert len(msd) == 5 and np.all(np.diff(msd.to_numpy()) > 0)
    qc = json.loads((out / "qc.json").read_text())
    for key in ("features_per_frame", "trajectories", "mean_trajectory_length_frames",
                "fraction_of_frames_tracked", "auto"):
        assert key in qc
    assert qc["fraction_of_frames_tracked"] == 1.0
    assert {"diameter", "minmass", "separation"} <= set(qc["auto"])


def tracked_vx(folder):
    truth = pd.read_parquet(folder / "truth_pixels.parquet")
    return truth["vx_px"] * MPP


def test_drift_subtraction_keeps_shear_end_to_end(sheared_video, tmp_path):
    params = {"link": {"predictor": "affine", "search_range_um": 0.75, "drift": "median"}}
    result = track_video(sheared_video / "frames.tif", tmp_path / "out", params, pixel_size_um=MPP,
                         frame_rate_hz=FPS, truth_pixels=sheared_video / "truth_pixels.parquet")
    trajectories = result.trajectories
    # Per frame: drift moves every y of a frame by the same amount.
    slope = np.mean([np.polyfit(f["y"], f["vx"], 1)[0] for _, f in trajectories.groupby("frame")])
    assert slope == pytest.approx(SHEAR_PER_FRAME * FPS, rel=0.02)
    assert abs(np.median(trajectories["vx"])) < 0.2 * abs(np.median(tracked_vx(sheared_video)))
    drift = pd.read_csv(tmp_path / "out" / "drift.csv")
    assert list(drift.columns) == ["frame", "t", "x", "y"]
    # Compared in the co-moving frame, the velocities are as accurate as before.
    assert result.accuracy["velocity_relative_rms_error"] < 0.1


def test_rerun_replaces_atomically(sheared_video, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("from an older run")
    params = {"frame_range": {"stop": 5}, "link": {"search_range_um": 0.75}}
    track_video(sheared_video / "frames.tif", out, params, pixel_size_um=MPP, frame_rate_hz=FPS)
    assert not (out / "stale.txt").exists()
    assert (out / "trajectories.parquet").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary directories left


@pytest.mark.skipif(not BULK_WATER.is_dir(), reason="the bulk_water sample is not available")
def test_bulk_water_end_to_end(tmp_path):
    # 1-µm latex in water: dark spots, 2.85 px per µm, 24 frames per second.
    result = track_video(str(BULK_WATER / "*.png"), tmp_path / "out", {"locate": {"invert": True}},
                         pixel_size_um=1 / 2.85, frame_rate_hz=24.0, processes=2)
    qc = result.qc
    assert qc["frames_analysed"] == 30
    # Counted by eye on the annotated frame: about 250-350 sharp dark spots
    # and as many fainter out-of-focus ones; 640 x 424 px.
    assert 250 <= qc["features_per_frame"]["median"] <= 800
    assert qc["features_per_frame"]["min"] >= 0.8 * qc["features_per_frame"]["median"]
    assert qc["fraction_of_frames_tracked"] == 1.0
    assert qc["mean_trajectory_length_frames"] >= 10
    # Brownian motion in water, not flow: the median speed is a few µm/s at most.
    speed = np.hypot(result.trajectories["vx"], result.trajectories["vy"])
    assert 0.1 < np.nanmedian(speed) < 10


@pytest.fixture(scope="module")
def tracked_centroid(sheared_video, tmp_path_factory):
    """trackpy's centroids, without refinement: a localisation noise the data's own estimate can resolve."""
    out = tmp_path_factory.mktemp("tracked_centroid") / "tracking"
    params = {"locate": {"refine": "none"}, "link": {"predictor": "affine", "search_range_um": 0.75}}
    return track_video(sheared_video / "frames.tif", out, params, pixel_size_um=MPP, frame_rate_hz=FPS,
                       processes=2, truth_pixels=sheared_video / "truth_pixels.parquet")


def test_velocity_noise_floor_from_data_agrees_with_the_truth(tracked_centroid):
    # Free diffusion under shear: the data's own estimate (negative lag-1 step covariance, affine flow
    # removed) finds the localisation noise the truth shows, within its reported standard error.
    noise = json.loads((tracked_centroid.out_dir / "qc.json").read_text())["velocity_noise"]
    data, truth = noise["sigma_from_data"], noise["sigma_from_truth"]
    assert noise["sigma_source"] == "truth" and noise["sigma_px"] == truth["sigma_px"]
    for axis in range(2):
        assert abs(data["sigma_px"][axis] - truth["sigma_px"][axis]) < 3 * data["sigma_standard_error_px"][axis]
        # The floor predicts the velocity noise the actual position errors make (3200 rows: ~2 % statistical
        # error; errors that are not quite white in time add up to ~10 %).
        assert truth["velocity_noise_measured_px_s"][axis] == pytest.approx(
            truth["velocity_noise_predicted_px_s"][axis], rel=0.15)
    floor = noise["noise_floor_um_s"]["interior"][0]
    assert floor == pytest.approx(truth["sigma_px"][0] * MPP * FPS / np.sqrt(2))


def test_a_noise_below_the_data_estimate_s_resolution_is_null_with_its_reason(tracked):
    # psf_fit's localisation noise (default) is below what the steps' anticorrelation resolves on this video:
    # the data's estimate says so instead of returning a number; the truth's is still there.
    noise = json.loads((tracked.out_dir / "qc.json").read_text())["velocity_noise"]
    assert noise["sigma_source"] == "truth" and all(s > 0 for s in noise["sigma_px"])
    data = noise["sigma_from_data"]
    if data["sigma_px"] is None:
        assert data["reason"]
    else:
        assert all(np.isfinite(data["sigma_px"]))
