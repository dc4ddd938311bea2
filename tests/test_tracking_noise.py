"""The velocity noise floor: stencil factors, sigma from the data, and the floor against measured errors."""
import numpy as np
import pandas as pd
import pytest

from tracking.motion import add_velocities
from tracking.noise import row_factors, savgol_row_factors, sigma_from_data, stencil_factors, velocity_noise_report
from tracking.params import VelocityParams

FPS = 20.0
SIGMA = 0.05  # px, localisation noise of the synthetic trajectories


def test_stencil_factors_are_the_coefficient_norms():
    plain = stencil_factors(VelocityParams())
    assert plain["interior"] == pytest.approx(1 / np.sqrt(2)) and plain["run_ends"] == [pytest.approx(np.sqrt(2))]
    # Savitzky-Golay order 2 (or 3): the derivative weights are j / sum(j^2), so ||c|| = 1 / sqrt(sum(j^2)).
    for window, sum_j2 in ((5, 10), (7, 28), (9, 60)):
        factors = stencil_factors(VelocityParams(smoothing="savgol", window=window, polyorder=2))
        assert factors["interior"] == pytest.approx(1 / np.sqrt(sum_j2))
        # Off-centre rows at the ends of a run are noisier than the centre, and symmetric.
        rows = savgol_row_factors(window, 2)
        assert rows[0] > rows[window // 2] and rows == pytest.approx(rows[::-1])


def white_noise_tracks(n_tracks: int, length: int, rng, gap_at: int | None = None) -> pd.DataFrame:
    frames = np.arange(length)
    if gap_at is not None:
        frames = np.delete(frames, gap_at)
    n = len(frames)
    return pd.DataFrame({"particle": np.repeat(np.arange(n_tracks), n), "frame": np.tile(frames, n_tracks),
                         "x": rng.normal(0, SIGMA, n_tracks * n), "y": rng.normal(0, SIGMA, n_tracks * n)})


@pytest.mark.parametrize("params", [VelocityParams(), VelocityParams(smoothing="savgol", window=5),
                                    VelocityParams(smoothing="savgol", window=7, polyorder=3)])
def test_row_factors_predict_the_noise_of_every_row(params):
    # Runs of 12 and 3 frames (a gap at frame 12 of 16 frames): interior rows, run ends, and runs
    # shorter than the window, which fall back to finite differences. Pure white noise of known sigma.
    rng = np.random.default_rng(3)
    tracks = white_noise_tracks(3000, 16, rng, gap_at=12)
    out = add_velocities(tracks, FPS, params)
    factor = row_factors(out, params)
    predicted = factor * SIGMA * FPS
    position = out.groupby("particle").cumcount().to_numpy()
    for p in range(15):
        rows = position == p
        measured = np.sqrt(np.mean(out.loc[rows, ["vx", "vy"]].to_numpy() ** 2))
        # 6000 samples per row position: the RMS has a relative standard error of 1 / sqrt(2 * 6000) ~ 0.9 %.
        assert measured == pytest.approx(predicted[rows][0], rel=0.05), p
        assert np.all(predicted[rows] == predicted[rows][0])


def flowing_tracks(rng, n_tracks=1500, length=60, diffusion_step=0.1, sigma=SIGMA) -> tuple[pd.DataFrame, np.ndarray]:
    """Particles on a grid under a slow oscillating shear and drift, diffusing freely, seen with white noise.

    Returns the tracked table (x_px, y_px noisy, rows by frame) and the flow's true velocities (px/frame,
    shape (frames, particles)).
    """
    side = int(np.ceil(np.sqrt(n_tracks)))
    gx, gy = np.meshgrid(np.arange(side) * 12.0 + 20, np.arange(side) * 12.0 + 20)
    x0, y0 = gx.ravel()[:n_tracks], gy.ravel()[:n_tracks]
    t = np.arange(length)[:, None]
    omega = 2 * np.pi / 200  # per frame: slow, so that the stencils' truncation error is negligible
    shear = 0.02 * np.sin(omega * t)  # strain
    brownian = np.cumsum(rng.normal(0, diffusion_step, (2, length, n_tracks)), axis=1)
    x = x0 + shear * (y0 - 250) + 0.3 * t + brownian[0]
    y = y0 - 0.1 * t + brownian[1]
    table = pd.DataFrame({"particle": np.tile(np.arange(n_tracks), length), "frame": np.repeat(np.arange(length),
                                                                                              n_tracks),
                          "x_px": (x + rng.normal(0, sigma, x.shape)).ravel(),
                          "y_px": (y + rng.normal(0, sigma, y.shape)).ravel()})
    vx = 0.02 * omega * np.cos(omega * t) * (y0 - 250) + 0.3
    return table, vx, np.full_like(vx, -0.1)


def test_sigma_from_data_under_flow_and_diffusion():
    rng = np.random.default_rng(5)
    table, _, _ = flowing_tracks(rng)
    record = sigma_from_data(table, region_px=(-1000, -1000, 3000, 3000))
    # ~85,000 step pairs: a standard error of about 1 % of sigma (reported by the estimate itself).
    assert record["sigma_px"] == pytest.approx([SIGMA, SIGMA], rel=0.05)
    assert max(record["sigma_standard_error_px"]) < 0.02 * SIGMA
    # Free diffusion: no correlation beyond lag 1 once the flow is removed.
    assert np.abs(record["lag2_correlation"]).max() < 0.02
    # Without removing the flow the steps would covary by the flow's square and hide the noise.
    assert record["step_variance_px2"][0] < 0.03


def test_data_sigma_refuses_correlated_motion_without_noise():
    rng = np.random.default_rng(6)
    # Persistent motion (correlated steps, no localisation noise): nothing to estimate, and it says so.
    n, length = 200, 40
    velocity = np.cumsum(rng.normal(0, 0.05, (length, n)), axis=0)
    x = np.cumsum(velocity, axis=0) + np.arange(n) * 20.0
    table = pd.DataFrame({"particle": np.tile(np.arange(n), length), "frame": np.repeat(np.arange(length), n),
                          "x_px": x.ravel(), "y_px": np.tile(np.arange(n) * 20.0, length)})
    record = sigma_from_data(table)
    assert record["sigma_px"] is None and "not anticorrelated" in record["reason"]


@pytest.mark.parametrize("params", [VelocityParams(), VelocityParams(smoothing="savgol", window=5),
                                    VelocityParams(smoothing="savgol", window=9)])
def test_reported_floor_matches_the_measured_velocity_error(params):
    # Smooth flow (no diffusion) plus white noise: the velocity error is the noise alone, and the floor
    # reported from the data's own sigma must predict it.
    rng = np.random.default_rng(7)
    table, vx, vy = flowing_tracks(rng, diffusion_step=0.0)
    mpp = 0.3
    report = velocity_noise_report(table, params, frame_rate_hz=FPS, pixel_size_um=mpp,
                                   region_px=(-1000, -1000, 3000, 3000))
    assert report["sigma_source"] == "data"
    out = add_velocities(table, FPS, params, pos_columns=("x_px", "y_px"))
    true_vx = vx.ravel(order="F") * FPS  # out is sorted by particle, then frame
    true_vy = vy.ravel(order="F") * FPS
    measured = np.sqrt([np.mean((out["vx"] - true_vx) ** 2), np.mean((out["vy"] - true_vy) ** 2)]) * mpp
    # sigma from ~85,000 step pairs is within ~1 % (its reported standard error); the RMS over 90,000 rows
    # within 0.3 %; the stencils' truncation error on this flow is below 0.1 % of the floor. 5 % is > 3 errors.
    assert measured == pytest.approx(report["noise_floor_um_s"]["rms_over_rows"], rel=0.05)
    # The trade-off's noise side: a longer Savitzky-Golay window has a lower floor.
    if params.smoothing == "savgol":
        assert report["noise_floor_um_s"]["interior"][0] < report["stencil_factor"]["central_difference"] * \
            report["sigma_um"][0] * FPS


def test_too_few_steps_give_no_sigma_and_say_why():
    table = pd.DataFrame({"particle": [0, 0, 1], "frame": [0, 1, 0], "x_px": [1.0, 1.1, 5.0], "y_px": [2.0, 2.0, 3.0]})
    report = velocity_noise_report(table, VelocityParams(), frame_rate_hz=FPS, pixel_size_um=0.3)
    assert report["sigma_px"] is None and report["noise_floor_um_s"] is None
    assert "fewer than 10" in report["sigma_from_data"]["reason"]
    assert len(row_factors(table.iloc[:0], VelocityParams())) == 0
