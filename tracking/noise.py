"""Localisation noise of tracked positions, and the velocity noise floor it sets.

A position found with a static localisation error that is white in time,
standard deviation ``sigma`` (px, per axis), gives every velocity a noise that
depends only on the stencil (docs/tracking.md, *Velocities*). With ``dt`` the
time between analysed frames and ``c_j`` the stencil's weights on positions
(velocity = sum_j c_j r_j / dt), the noise is ``||c|| sigma / dt`` per axis:

* first (one-sided) differences, used at the ends of each unbroken run:
  ``sqrt(2) sigma / dt``;
* central differences, inside a run: ``sigma / (sqrt(2) dt)``;
* Savitzky-Golay derivative: the L2 norm of its coefficients times
  ``sigma / dt`` (window 5, order 2: 0.316; 7: 0.189; 9: 0.129), larger at the
  first and last ``window // 2`` rows of a run, where the polynomial is
  evaluated off centre.

``sigma`` comes from a truth when there is one (the frame-to-frame part of
the error of the positions matched to it: a per-particle bias cancels in every
difference and adds no velocity noise), else from the data: the negative
lag-1 covariance of the displacements (r[n+1] - r[n] = true step + e[n+1] -
e[n], so successive steps share -e[n] and covary by -sigma^2 when the true
steps are uncorrelated). Each frame pair's affine flow (drift, shear) is
removed from the displacements first, by the robust fit of the linker's
affine predictor. Caged particles, whose true steps are anticorrelated, make
this estimate too large: the lag-2 correlation of the steps is recorded to
show it (about 0 for free diffusion; clearly negative for caged motion).

Only positions at least ``margin_px`` inside the analysed region count:
particles cut by the edge of the image have centroids biased by the edge,
which no stencil removes.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.signal import savgol_filter

from .accuracy import match_frames
from .link import AffineVelocityPredict
from .motion import add_velocities, run_ids
from .params import VelocityParams

PIXEL_COLUMNS = ("x_px", "y_px")
# A frame pair needs this many steps for its affine flow to be fitted (6 coefficients and a margin).
MIN_STEPS_PER_PAIR = 12


def savgol_row_factors(window: int, polyorder: int) -> np.ndarray:
    """||c|| of the Savitzky-Golay derivative (unit time step) at each row of a run of exactly ``window`` rows.

    Row ``window // 2`` is the factor of every interior row of a longer run;
    the rows before and after it are those of the first and last rows of a
    run (scipy's ``mode='interp'`` fits one polynomial to the end window).
    """
    operator = savgol_filter(np.eye(window), window, polyorder, deriv=1, delta=1.0, axis=0, mode="interp")
    return np.linalg.norm(operator, axis=1)


def stencil_factors(params: VelocityParams) -> dict:
    """Noise factor ``||c||`` (velocity noise / (sigma / dt)) of the scheme, inside a run and at its ends."""
    factors = {"first_difference": float(np.sqrt(2.0)), "central_difference": float(1 / np.sqrt(2.0))}
    if params.smoothing == "savgol":
        rows = savgol_row_factors(params.window, params.polyorder)
        half = params.window // 2
        factors.update(interior=float(rows[half]), run_ends=[round(float(v), 4) for v in rows[:half]])
    else:
        factors.update(interior=factors["central_difference"], run_ends=[factors["first_difference"]])
    return factors


def row_factors(trajectories: pd.DataFrame, params: VelocityParams, frame_step: int = 1) -> np.ndarray:
    """``||c||`` of the stencil each row's velocity was computed with (rows sorted by particle, frame).

    Mirrors tracking.motion: finite differences in runs shorter than the
    Savitzky-Golay window (central inside, one-sided at the ends), NaN for a
    lone observation.
    """
    if len(trajectories) == 0:
        return np.empty(0)
    run = run_ids(trajectories, frame_step)
    starts = np.r_[True, run[1:] != run[:-1]]
    start_index = np.maximum.accumulate(np.where(starts, np.arange(len(run)), 0))
    length = np.bincount(run)[run]
    position = np.arange(len(run)) - start_index
    from_end = length - 1 - position
    factor = np.where((position == 0) | (from_end == 0), np.sqrt(2.0), 1 / np.sqrt(2.0))
    factor[length == 1] = np.nan
    if params.smoothing == "savgol":
        rows = savgol_row_factors(params.window, params.polyorder)
        half = params.window // 2
        smoothed = length >= params.window
        offset = np.where(position < half, position, np.where(from_end < half, params.window - 1 - from_end, half))
        factor = np.where(smoothed, rows[offset], factor)
    return factor


def _inside(table: pd.DataFrame, region_px, margin_px: float) -> np.ndarray:
    x0, y0, width, height = region_px
    x, y = table["x_px"].to_numpy(), table["y_px"].to_numpy()
    return ((x >= x0 + margin_px) & (x <= x0 + width - 1 - margin_px)
            & (y >= y0 + margin_px) & (y <= y0 + height - 1 - margin_px))


def _steps(trajectories: pd.DataFrame, frame_step: int, inside: np.ndarray):
    """Steps between successive rows of one run, both rows inside: (step (n, 2), run, first row's frame)."""
    order = np.lexsort((trajectories["frame"].to_numpy(), trajectories["particle"].to_numpy()))
    table = trajectories.iloc[order]
    run = run_ids(table, frame_step)
    ok = inside[order]
    xy = table[list(PIXEL_COLUMNS)].to_numpy(dtype=float)
    keep = (run[1:] == run[:-1]) & ok[1:] & ok[:-1]
    # A step belongs to the run and carries the index of its first row, so successive steps are found again.
    index = np.flatnonzero(keep)
    return xy[1:][keep] - xy[:-1][keep], run[:-1][keep], index, table["frame"].to_numpy()[:-1][keep], xy[:-1][keep]


def sigma_from_data(trajectories: pd.DataFrame, frame_step: int = 1, region_px=None, margin_px: float = 0.0) -> dict:
    """Localisation error (px, per axis) from the negative lag-1 covariance of flow-free displacements."""
    inside = (np.ones(len(trajectories), bool) if region_px is None
              else _inside(trajectories, region_px, margin_px))
    step, run, index, frame, start = _steps(trajectories, frame_step, inside)
    record: dict = {"method": "negative lag-1 covariance of the displacements, each frame pair's affine flow removed",
                    "margin_px": float(margin_px)}
    # Remove each frame pair's affine flow (drift, shear): what is left is the particles' own motion and the noise.
    residual = np.full_like(step, np.nan)
    for value in np.unique(frame):
        rows = np.flatnonzero(frame == value)
        if len(rows) < MIN_STEPS_PER_PAIR:
            continue
        fit = AffineVelocityPredict.fit(start[rows], step[rows], min_links=MIN_STEPS_PER_PAIR)
        if fit is None:
            continue
        coefficients, centre = fit
        design = np.column_stack([np.ones(len(rows)), start[rows] - centre])
        residual[rows] = step[rows] - design @ coefficients
    finite = np.isfinite(residual[:, 0])
    # Successive steps: same run, consecutive rows.
    lag1 = finite[:-1] & finite[1:] & (run[1:] == run[:-1]) & (index[1:] == index[:-1] + 1)
    lag2 = finite[:-2] & finite[2:] & (run[2:] == run[:-2]) & (index[2:] == index[:-2] + 2)
    record["step_pairs"] = int(lag1.sum())
    if record["step_pairs"] < 10:
        return {**record, "sigma_px": None,
                "reason": "fewer than 10 pairs of successive steps away from the edges of the image"}
    products = residual[:-1][lag1] * residual[1:][lag1]
    covariance = products.mean(axis=0)
    variance = np.mean(residual[finite] ** 2, axis=0)
    standard_error = products.std(axis=0) / np.sqrt(len(products))
    record["step_variance_px2"] = [float(v) for v in variance]
    record["lag1_covariance_px2"] = [float(v) for v in covariance]
    lag2_covariance = (residual[:-2][lag2] * residual[2:][lag2]).mean(axis=0) if lag2.any() else None
    record["lag2_correlation"] = (None if lag2_covariance is None else
                                  [float(c / v) if v > 0 else None for c, v in zip(lag2_covariance, variance, strict=True)])
    if np.any(covariance >= 0):
        return {**record, "sigma_px": None,
                "reason": "successive displacements are not anticorrelated: the localisation noise is below what "
                          "the particles' own correlated motion hides"}
    sigma = np.sqrt(-covariance)
    record["sigma_px"] = [float(v) for v in sigma]
    record["sigma_standard_error_px"] = [float(v) for v in standard_error / (2 * sigma)]
    return record


def _error_table(trajectories: pd.DataFrame, truth: pd.DataFrame, match_radius_px: float) -> pd.DataFrame:
    """Found minus true position (px) of every matched row, one run per (found, true) particle pair."""
    matches = match_frames(trajectories, truth, match_radius_px)
    found = trajectories.iloc[matches["found_row"].to_numpy()]
    true_id = truth["particle"].to_numpy()[matches["truth_row"].to_numpy()]
    # A found trajectory that switches to another true particle starts a new run there.
    pair = pd.MultiIndex.from_arrays([found["particle"].to_numpy(), true_id])
    return pd.DataFrame({"particle": pd.factorize(pair)[0], "frame": found["frame"].to_numpy(),
                         "x_px": found["x_px"].to_numpy(), "y_px": found["y_px"].to_numpy(),
                         "ex": matches["dx"].to_numpy(), "ey": matches["dy"].to_numpy()})


def truth_comparison(trajectories: pd.DataFrame, truth: pd.DataFrame, params: VelocityParams, frame_rate_hz: float,
                     frame_step: int, region_px, margin_px: float, match_radius_px: float) -> dict:
    """sigma (px) from the truth, and the velocity noise the scheme makes of the actual position errors (px/s).

    sigma^2 is half the mean square change of the error between successive
    frames. The measured noise is the scheme applied to the errors themselves
    (the part of v_found - v_true that localisation causes), over rows whose
    whole run lies inside the margin; the predicted one is sigma times the
    same rows' stencil factors.
    """
    errors = _error_table(trajectories, truth, match_radius_px)
    errors = errors[_inside(errors, region_px, margin_px)].sort_values(["particle", "frame"]).reset_index(drop=True)
    record: dict = {"method": "truth: frame-to-frame change of the matched position errors", "margin_px": float(margin_px),
                    "matched_rows": len(errors)}
    run = run_ids(errors, frame_step)
    same = run[1:] == run[:-1]
    change = np.diff(errors[["ex", "ey"]].to_numpy(), axis=0)[same]
    if len(change) < 10:
        return {**record, "sigma_px": None, "reason": "fewer than 10 successive matched positions away from the edges"}
    sigma = np.sqrt(np.mean(change**2, axis=0) / 2)
    record["sigma_px"] = [float(v) for v in sigma]
    noise = add_velocities(errors, frame_rate_hz, params, frame_step, pos_columns=("ex", "ey"),
                           velocity_columns=("nx", "ny"))
    factor = row_factors(noise, params, frame_step)
    velocity = noise[["nx", "ny"]].to_numpy()
    ok = np.isfinite(factor) & np.all(np.isfinite(velocity), axis=1)
    dt = frame_step / frame_rate_hz
    record["velocity_rows"] = int(ok.sum())
    if not ok.any():
        return {**record, "velocity_noise_measured_px_s": None, "velocity_noise_predicted_px_s": None}
    record["velocity_noise_measured_px_s"] = [float(v) for v in np.sqrt(np.mean(velocity[ok] ** 2, axis=0))]
    record["velocity_noise_predicted_px_s"] = [float(v) for v in sigma * np.sqrt(np.mean(factor[ok] ** 2)) / dt]
    return record


def velocity_noise_report(trajectories: pd.DataFrame, params: VelocityParams, *, frame_rate_hz: float,
                          pixel_size_um: float, frame_step: int = 1, region_px=None, mask_diameter_px: float = 0.0,
                          truth: pd.DataFrame | None = None) -> dict:
    """The ``velocity_noise`` record of qc.json: sigma, how it was found, and the noise floor in µm/s per axis.

    ``trajectories`` has ``particle, frame, x_px, y_px``; ``region_px`` =
    (x0, y0, width, height) of the analysed region; positions closer than
    one mask diameter to its edges are left out of the estimates. With
    ``truth`` (truth_pixels), sigma is taken from it (matched within half the
    smallest true diameter, as in tracking.accuracy); the data's own estimate
    is recorded beside it.
    """
    margin_px = float(mask_diameter_px)
    dt = frame_step / frame_rate_hz
    scheme = (f"Savitzky-Golay derivative, window {params.window}, order {params.polyorder} (finite differences "
              f"in runs shorter than the window)" if params.smoothing == "savgol"
              else "central differences inside a run, first differences at its ends")
    report: dict = {"scheme": scheme, "dt_s": dt, "stencil_factor": stencil_factors(params)}
    data = sigma_from_data(trajectories, frame_step, region_px, margin_px)
    report["sigma_from_data"] = data
    sigma, source = data.get("sigma_px"), "data"
    if truth is not None:
        radius = (0.5 * float(truth["diameter"].min()) / pixel_size_um if "diameter" in truth and len(truth)
                  else 0.5 * margin_px)
        report["sigma_from_truth"] = truth_comparison(trajectories, truth, params, frame_rate_hz, frame_step,
                                                      region_px, margin_px, radius)
        if report["sigma_from_truth"].get("sigma_px") is not None:
            sigma, source = report["sigma_from_truth"]["sigma_px"], "truth"
    report["sigma_source"] = source if sigma is not None else None
    if sigma is None:
        report.update(sigma_px=None, sigma_um=None, noise_floor_um_s=None)
        return report
    sigma_um = np.asarray(sigma) * pixel_size_um
    table = trajectories.sort_values(["particle", "frame"], kind="stable")
    factor = row_factors(table, params, frame_step)
    factor = factor[np.isfinite(factor)]
    factors = report["stencil_factor"]
    report["sigma_px"] = [float(v) for v in sigma]
    report["sigma_um"] = [float(v) for v in sigma_um]
    report["noise_floor_um_s"] = {
        "interior": [float(v) for v in factors["interior"] * sigma_um / dt],
        "run_ends": [float(v) for v in max(factors["run_ends"]) * sigma_um / dt],
        # Over every row with a velocity, as each row's own stencil gives it.
        "rms_over_rows": [float(v) for v in np.sqrt(np.mean(factor**2)) * sigma_um / dt] if len(factor) else None,
    }
    return report
