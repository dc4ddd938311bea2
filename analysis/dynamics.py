"""Ensemble mean squared displacement (MSD) and velocity autocorrelation (VACF), raw and non-affine.

Both are averages over every particle and every time origin, computed with
FFTs on contiguous segments of trajectories (a gap starts a new segment, see
inputs.sorted_segments), so cost is O(rows log length):

    MSD(tau)  = < |r(t + tau) - r(t)|^2 >        [µm^2]
    VACF(tau) = < v(t + tau) . v(t) >            [µm^2/s^2],  normalised: VACF(tau) / VACF(0)

where < > is the mean over all (segment, origin t) with both t and t + tau in
the segment: each lag is weighted by its number of samples, as trackpy's
`emsd` does. Positions are µm already (trackpy would need mpp=1 and fps).
Lags are in frames, `t` = lag x frame interval (s).

Non-affine versions use analysis.affine (the imposed shear removed by the
strain series, or by a per-frame affine fit).

Segment correlations: with a segment zero-padded to length L and a mask m
(1 inside the segment), for every lag tau

    sum_t m(t) m(t+tau) |r(t+tau) - r(t)|^2
        = C[m, m r^2](tau) + C[m r^2, m](tau) - 2 C[m r, m r](tau),

where C[a, b](tau) = sum_t a(t) b(t + tau), computed by FFT; segments are
batched by length so padding wastes little.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import fft

from analysis.affine import nonaffine_positions, nonaffine_velocities
from analysis.inputs import check_trajectories, frame_interval, sorted_segments, spatial_columns

__all__ = ["msd", "nonaffine_msd", "nonaffine_vacf", "segment_correlations", "vacf"]

_BATCH_ELEMENTS = 4_000_000  # padded samples per FFT batch: bounds memory at ~100 MB


def _corr(a: np.ndarray, b: np.ndarray, n_fft: int, max_lag: int) -> np.ndarray:
    """C[a, b](tau) = sum_t a(t) b(t + tau) along axis 1, tau = 0..max_lag."""
    fa = fft.rfft(a, n_fft, axis=1)
    fb = fft.rfft(b, n_fft, axis=1)
    return fft.irfft(np.conj(fa) * fb, n_fft, axis=1)[:, : max_lag + 1]


def segment_correlations(values: np.ndarray, segment: np.ndarray, offset: np.ndarray, max_lag: int, kind: str):
    """Sums over segments and origins, per lag 0..max_lag.

    values : (rows, D) positions (kind "msd") or velocities (kind "vacf"),
        rows grouped by segment; offset : index of each row in its segment.
    Returns (sums (max_lag + 1, D): per component, sum of squared
    displacements or of products v_c(t) v_c(t + tau); counts (max_lag + 1,)).
    """
    values = np.asarray(values, np.float64)
    n_seg = int(segment.max()) + 1 if len(segment) else 0
    lengths = np.bincount(segment, minlength=n_seg)
    if kind == "msd":
        # Displacements do not depend on the origin: centring each segment keeps the FFT sums small.
        mean = np.stack([np.bincount(segment, weights=values[:, c], minlength=n_seg) for c in range(values.shape[1])],
                        axis=1) / np.maximum(lengths, 1)[:, None]
        values = values - mean[segment]
    sums = np.zeros((max_lag + 1, values.shape[1]))
    counts = np.zeros(max_lag + 1)
    # Shortest segments first; rows regrouped so each batch is one contiguous block of rows.
    order = np.argsort(lengths, kind="stable")
    rank = np.empty(n_seg, np.int64)
    rank[order] = np.arange(n_seg)
    sorted_lengths = lengths[order]
    row_rank = rank[segment]
    rows = np.argsort(row_rank, kind="stable")
    row_rank, row_offset, values = row_rank[rows], offset[rows], values[rows]
    start = 0
    while start < n_seg:
        # Largest batch whose padded size (segments x 2 x longest length) fits the budget.
        cost = np.arange(1, n_seg - start + 1) * 2 * sorted_lengths[start:]
        stop = start + max(1, int(np.searchsorted(cost, _BATCH_ELEMENTS, side="right")))
        longest = int(sorted_lengths[stop - 1])
        n_fft = fft.next_fast_len(2 * longest)
        lag = min(max_lag, longest - 1)
        lo, hi = np.searchsorted(row_rank, [start, stop])
        seg_b, off_b = row_rank[lo:hi] - start, row_offset[lo:hi]
        mask = np.zeros((stop - start, longest))
        mask[seg_b, off_b] = 1.0
        counts[: lag + 1] += _corr(mask, mask, n_fft, lag).sum(axis=0)
        for c in range(values.shape[1]):
            x = np.zeros((stop - start, longest))
            x[seg_b, off_b] = values[lo:hi, c]
            if kind == "msd":
                x2 = x * x
                s = _corr(mask, x2, n_fft, lag) + _corr(x2, mask, n_fft, lag) - 2.0 * _corr(x, x, n_fft, lag)
            else:
                s = _corr(x, x, n_fft, lag)
            sums[: lag + 1, c] += s.sum(axis=0)
        start = stop
    counts = np.rint(counts)  # FFT round-off on integer counts
    return sums, counts


def _table(sums, counts, dt, names):
    lag = np.arange(len(counts))
    ok = counts > 0
    out = pd.DataFrame({"lag": lag[ok], "t": lag[ok] * dt, "n": counts[ok].astype(np.int64)})
    for c, name in enumerate(names):
        out[name] = sums[ok, c] / counts[ok]
    return out


def _max_lag(traj, max_lag):
    n_frames = int(traj["frame"].max() - traj["frame"].min()) + 1
    return n_frames // 2 if max_lag is None else int(max_lag)


def msd(traj: pd.DataFrame, *, max_lag: int | None = None, pos_columns=None) -> pd.DataFrame:
    """Ensemble MSD.

    Parameters
    ----------
    traj : trajectory table (frame, t, particle and positions in µm).
    max_lag : largest lag in frames; default half the recorded frame range.
    pos_columns : position column names, one per axis; default `spatial_columns(traj)`
        (x, y, and z in 3D; unwrapped when the table has them).

    Returns
    -------
    lag (frames), t (s), n (number of displacement samples), msd (µm^2,
    <dx^2 + dy^2 (+ dz^2)>), msd_x, msd_y (, msd_z) (µm^2, per component).
    """
    traj = check_trajectories(traj)
    cols = list(pos_columns or spatial_columns(traj)[0])
    names = [f"msd_{axis}" for axis in "xyz"[:len(cols)]]
    t, segment, offset = sorted_segments(traj)
    sums, counts = segment_correlations(t[cols].to_numpy(), segment, offset, _max_lag(traj, max_lag), "msd")
    out = _table(sums, counts, frame_interval(traj), names)
    out.loc[out["lag"] == 0, names] = 0.0  # exactly, not FFT round-off
    out.insert(3, "msd", sum((out[n] for n in names[1:]), out[names[0]]))  # NaN stays NaN
    return out


def vacf(traj: pd.DataFrame, *, max_lag: int | None = None, vel_columns=None) -> pd.DataFrame:
    """Velocity autocorrelation averaged over particles and origins.

    vel_columns: one per axis; default `spatial_columns(traj)` (vx, vy, and vz in 3D).
    Returns lag (frames), t (s), n (samples), vacf (µm^2/s^2, <v(t+tau).v(t)>)
    and vacf_norm (vacf / vacf at lag 0, dimensionless).
    """
    traj = check_trajectories(traj)
    vel_columns = tuple(vel_columns or spatial_columns(traj)[1])
    lags, dt = _max_lag(traj, max_lag), frame_interval(traj)
    # a lone observation has no finite difference: it is not a sample (and splits its segment)
    traj = traj[np.isfinite(traj[list(vel_columns)].to_numpy(np.float64)).all(axis=1)]
    if len(traj) == 0:  # no sample at any lag: an empty table, as `_table` gives for lags without samples
        return pd.DataFrame({c: pd.Series(dtype=float) for c in ("lag", "t", "n", "vacf", "vacf_norm")})
    t, segment, offset = sorted_segments(traj)
    sums, counts = segment_correlations(t[list(vel_columns)].to_numpy(), segment, offset, lags, "vacf")
    names = [f"vacf_{axis}" for axis in "xyz"[:len(vel_columns)]]
    out = _table(sums, counts, dt, names)
    out["vacf"] = sum((out[n] for n in names[1:]), out[names[0]])
    out["vacf_norm"] = out["vacf"] / out["vacf"].iloc[0] if len(out) and out["vacf"].iloc[0] > 0 else np.nan
    return out.drop(columns=names)


def nonaffine_msd(traj: pd.DataFrame, strain: pd.DataFrame | None = None, *, method: str = "auto",
                  shear_line_y: float | None = None, max_lag: int | None = None) -> pd.DataFrame:
    """MSD of the non-affine positions (analysis.affine.nonaffine_positions); columns as `msd`."""
    traj = check_trajectories(traj)
    na = nonaffine_positions(traj, strain, method=method, shear_line_y=shear_line_y)
    return msd(na, max_lag=_max_lag(traj, max_lag), pos_columns=("x_na", "y_na"))


def nonaffine_vacf(traj: pd.DataFrame, strain: pd.DataFrame | None = None, *, method: str = "auto",
                   shear_line_y: float | None = None, max_lag: int | None = None) -> pd.DataFrame:
    """VACF of the non-affine velocities (analysis.affine.nonaffine_velocities); columns as `vacf`."""
    traj = check_trajectories(traj)
    na = nonaffine_velocities(traj, strain, method=method, shear_line_y=shear_line_y)
    return vacf(na, max_lag=max_lag, vel_columns=("vx_na", "vy_na"))
