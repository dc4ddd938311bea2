"""Velocities of tracked particles by finite differences, never across a gap.

Inside a trajectory the velocity is the central difference
``(r[n+1] - r[n-1]) / (t[n+1] - t[n-1])``; at either end of an unbroken run of
frames it is the one-sided difference to the single neighbour; a lone
observation gets NaN. This is the estimator the twin's truth uses
(docs/data_schema.md), so a comparison measures tracking error only.

A gap is any step between successive observations of a particle longer than
the sampling step (``frame_step``, the frame range's step): linking memory
can bridge a vanished frame, but a difference stencil must not, because the
particle's path during the gap is unknown. Each unbroken run is
differentiated on its own.

Optional Savitzky-Golay smoothing (off by default) fits a local polynomial of
``polyorder`` over ``window`` frames and takes its derivative, also run by
run; a run shorter than the window falls back to finite differences.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.signal import savgol_filter

from .params import VelocityParams


def run_ids(trajectories: pd.DataFrame, frame_step: int = 1) -> np.ndarray:
    """Label each row (sorted by particle, frame) with the id of its unbroken run of frames."""
    return runs_of(trajectories["particle"].to_numpy(), trajectories["frame"].to_numpy(), frame_step)


def runs_of(particle: np.ndarray, frame: np.ndarray, frame_step: int = 1) -> np.ndarray:
    """run_ids on arrays: rows sorted by particle, then frame."""
    new_run = np.ones(len(frame), dtype=bool)
    new_run[1:] = (particle[1:] != particle[:-1]) | (np.diff(frame) != frame_step)
    return np.cumsum(new_run) - 1


def finite_differences(values: np.ndarray, times: np.ndarray, run: np.ndarray) -> np.ndarray:
    """d(values)/dt per row: central inside a run, one-sided at its ends, NaN for a run of one.

    ``values`` is (n,) or (n, k); rows are sorted by run and time.
    """
    values = np.asarray(values, dtype=float)
    columns = values.reshape(len(values), -1)
    times = np.asarray(times, dtype=float)
    n = len(columns)
    has_prev = np.zeros(n, dtype=bool)
    has_next = np.zeros(n, dtype=bool)
    has_prev[1:] = run[1:] == run[:-1]
    has_next[:-1] = run[:-1] == run[1:]
    index = np.arange(n)
    # Each row's stencil: (previous, next) inside a run, (self, next) or
    # (previous, self) at its ends; a lone row has no stencil.
    upper = np.where(has_next, np.minimum(index + 1, n - 1), index)
    lower = np.where(has_prev, np.maximum(index - 1, 0), index)
    derivative = np.full(columns.shape, np.nan)
    ok = has_prev | has_next
    derivative[ok] = (columns[upper[ok]] - columns[lower[ok]]) / (times[upper[ok]] - times[lower[ok]])[:, None]
    return derivative.reshape(values.shape)


def savgol_derivative(values: np.ndarray, times: np.ndarray, run: np.ndarray, window: int,
                      polyorder: int) -> np.ndarray:
    """Savitzky-Golay first derivative run by run; runs shorter than window use finite differences."""
    derivative = finite_differences(values, times, run)
    starts = np.flatnonzero(np.r_[True, run[1:] != run[:-1]])
    stops = np.r_[starts[1:], len(run)]
    for start, stop in zip(starts, stops, strict=True):
        if stop - start < window:
            continue
        dt = (times[stop - 1] - times[start]) / (stop - start - 1)  # runs are evenly sampled
        derivative[start:stop] = savgol_filter(values[start:stop], window, polyorder, deriv=1, delta=dt,
                                               axis=0, mode="interp")
    return derivative


def add_velocities(trajectories: pd.DataFrame, frame_rate_hz: float, params: VelocityParams | None = None,
                   frame_step: int = 1, pos_columns=("x", "y"), velocity_columns=("vx", "vy")) -> pd.DataFrame:
    """Return trajectories sorted by (particle, frame) with velocity columns added.

    Velocities are in position units per second (µm/s for µm positions);
    time is ``frame / frame_rate_hz``. ``frame_step`` is the sampling step of
    the analysed frames: a larger step between observations is a gap.
    """
    params = params or VelocityParams()
    out = trajectories.sort_values(["particle", "frame"], kind="stable").reset_index(drop=True)
    if len(out) == 0:
        for column in velocity_columns:
            out[column] = pd.Series(dtype=float)
        return out
    derivative = _sorted_velocities(out["particle"].to_numpy(), out["frame"].to_numpy(),
                                    out[list(pos_columns)].to_numpy(dtype=float), frame_rate_hz, params, frame_step)
    for i, column in enumerate(velocity_columns):
        out[column] = derivative[:, i]
    return out


def velocities(particle: np.ndarray, frame: np.ndarray, positions: np.ndarray, frame_rate_hz: float,
               params: VelocityParams | None = None, frame_step: int = 1) -> np.ndarray:
    """add_velocities on arrays, rows in any order: (n, k) velocities, in the rows' own order.

    For callers that hold columns rather than a table (the split tracking's gather): no table is sorted or
    copied, only the positions, in (particle, frame) order; the numbers are add_velocities'.
    """
    order = np.lexsort((frame, particle))
    derivative = np.empty((len(order), positions.shape[1]))
    derivative[order] = _sorted_velocities(particle[order], frame[order], positions[order], frame_rate_hz,
                                           params or VelocityParams(), frame_step)
    return derivative


def _sorted_velocities(particle: np.ndarray, frame: np.ndarray, positions: np.ndarray, frame_rate_hz: float,
                       params: VelocityParams, frame_step: int) -> np.ndarray:
    run = runs_of(particle, frame, frame_step)
    times = frame.astype(float) / frame_rate_hz
    if params.smoothing == "savgol":
        return savgol_derivative(positions, times, run, params.window, params.polyorder)
    return finite_differences(positions, times, run)
