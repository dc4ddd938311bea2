"""Removing the imposed affine deformation: non-affine positions and velocities.

Two ways to know the affine part, chosen by `method`:

* ``"strain"`` (a strain series gamma(frame) is given: the twin's
  strain.csv, or the rheometer's record for an experiment). Simple shear along
  x about the line y = y_c: between consecutive frames k, k+1 every point moves
  affinely by

      du_x = (gamma_{k+1} - gamma_k) (y_mid - y_c),   du_y = 0,

  with y_mid the particle's mean height over the step. Summed along the
  trajectory this is u_affine(t) = (gamma(t) - gamma(t0)) (y - y_c) whenever y
  does not change, and the correct integral of the affine velocity field when
  it does. The affine velocity is v_x = gamma'(t) (y - y_c) with gamma' the
  central finite difference of the strain series (the same estimator as the
  schema's velocities, so a purely affine motion leaves exactly zero).
  y_c, the height of the shear's fixed line (µm, same coordinates as y), is
  rarely known for a field of view; with `shear_line_y=None` the mean
  non-affine displacement (velocity) of the particles present in both frames
  (in the frame) is removed instead, which is the same up to a rigid
  translation and also removes stage drift.
* ``"fit"`` (no strain series: tracked data of an unknown drive). For each
  pair of consecutive frames, the displacements of the particles present in
  both are fitted by least squares with a full affine map du = A (r - r_bar) + b
  (6 parameters: shear, compression, rotation and translation); the residual is
  the non-affine step. Velocities are likewise fitted per frame, v = L r + c.
  Needs at least 3 non-collinear particles per frame (else only the mean is
  removed). This also removes any non-imposed homogeneous deformation, so
  it gives a lower bound of the non-affine motion.

``"auto"`` is "strain" when a strain series is given, else "fit".

Non-affine positions are the cumulative sum of the non-affine steps within a
contiguous segment of a trajectory (inputs.sorted_segments), starting at the
segment's first position; a gap starts a new segment, since the affine motion
during a gap is not observed.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.inputs import position_columns, sorted_segments, strain_of_frames

__all__ = ["AFFINE_METHODS", "nonaffine_positions", "nonaffine_velocities"]

AFFINE_METHODS = ("auto", "strain", "fit")


def _method(method: str, strain) -> str:
    if method not in AFFINE_METHODS:
        raise ValueError(f"affine method must be one of {AFFINE_METHODS}, got {method!r}")
    if method == "auto":
        return "strain" if strain is not None else "fit"
    if method == "strain" and strain is None:
        raise ValueError("affine method 'strain' needs a strain series (columns frame, strain)")
    return method


def _group_mean(values: np.ndarray, group: np.ndarray, n: int) -> np.ndarray:
    count = np.maximum(np.bincount(group, minlength=n), 1)
    return np.stack([np.bincount(group, weights=values[:, c], minlength=n) / count
                     for c in range(values.shape[1])], axis=1)


def _affine_residual(r: np.ndarray, d: np.ndarray, group: np.ndarray) -> np.ndarray:
    """d - (A_g (r - r_bar_g) + d_bar_g), A_g the least-squares affine map of group g; vectorised over groups.

    Normal equations per group: A = S_dr S_rr^-1 with S_dr = sum (d - d_bar)(r - r_bar)^T and
    S_rr = sum (r - r_bar)(r - r_bar)^T (2 x 2 each, accumulated with bincount).
    """
    _, group = np.unique(group, return_inverse=True)
    n = int(group.max()) + 1 if len(group) else 0
    rc = r - _group_mean(r, group, n)[group]
    dc = d - _group_mean(d, group, n)[group]
    s_rr = np.zeros((n, 2, 2))
    s_dr = np.zeros((n, 2, 2))
    for a in range(2):
        for b in range(2):
            s_rr[:, a, b] = np.bincount(group, weights=rc[:, a] * rc[:, b], minlength=n)
            s_dr[:, a, b] = np.bincount(group, weights=dc[:, a] * rc[:, b], minlength=n)
    det = s_rr[:, 0, 0] * s_rr[:, 1, 1] - s_rr[:, 0, 1] ** 2
    trace = s_rr[:, 0, 0] + s_rr[:, 1, 1]
    # Nearly collinear or tiny groups: the gradient is undetermined, keep only the mean.
    ok = det > 1e-6 * np.maximum(trace, np.finfo(float).tiny) ** 2
    inv = np.zeros_like(s_rr)
    safe = np.where(ok, det, 1.0)
    inv[:, 0, 0], inv[:, 1, 1] = s_rr[:, 1, 1] / safe, s_rr[:, 0, 0] / safe
    inv[:, 0, 1] = inv[:, 1, 0] = -s_rr[:, 0, 1] / safe
    grad = np.einsum("gab,gbc->gac", s_dr, inv) * ok[:, None, None]
    return dc - np.einsum("nab,nb->na", grad[group], rc)


def nonaffine_positions(
    traj: pd.DataFrame,
    strain: pd.DataFrame | None = None,
    *,
    method: str = "auto",
    shear_line_y: float | None = None,
) -> pd.DataFrame:
    """Trajectories with the affine deformation removed.

    Parameters
    ----------
    traj : trajectory table; positions from `position_columns` (xu, yu for
        periodic truth, else x, y), µm.
    strain : table with columns frame, strain (dimensionless), for method "strain".
    method : "auto", "strain" or "fit" (module docstring).
    shear_line_y : y_c, µm, the fixed line of the shear; None removes the mean
        non-affine step of each frame pair instead (module docstring).

    Returns
    -------
    `traj` sorted by (particle, frame) with columns segment (contiguous run id)
    and x_na, y_na (µm): the non-affine positions.
    """
    method = _method(method, strain)
    cx, cy = position_columns(traj)
    t, segment, offset = sorted_segments(traj)
    r = t[[cx, cy]].to_numpy(np.float64)
    frame = t["frame"].to_numpy()
    step = np.flatnonzero(offset > 0)  # rows that have a predecessor one frame earlier in their segment
    d = r[step] - r[step - 1]
    if method == "strain":
        gamma = strain_of_frames(strain, frame)
        if np.isnan(gamma).any():
            missing = np.unique(frame[np.isnan(gamma)])
            raise ValueError(f"strain series has no value for frame(s) {missing[:10].tolist()}")
        y_mid = 0.5 * (r[step, 1] + r[step - 1, 1])
        y_c = 0.0 if shear_line_y is None else float(shear_line_y)
        d[:, 0] -= (gamma[step] - gamma[step - 1]) * (y_mid - y_c)
        if shear_line_y is None:
            _, g = np.unique(frame[step], return_inverse=True)
            d -= _group_mean(d, g, int(g.max()) + 1 if len(g) else 0)[g]
    else:
        d = _affine_residual(r[step - 1], d, frame[step])
    increments = np.zeros_like(r)
    increments[step] = d
    cumulative = np.cumsum(increments, axis=0)
    start = np.flatnonzero(offset == 0)
    # Position = segment's first position + non-affine steps since then.
    na = r[start][segment] + cumulative - cumulative[start][segment]
    return t.assign(segment=segment, x_na=na[:, 0], y_na=na[:, 1])


def nonaffine_velocities(
    traj: pd.DataFrame,
    strain: pd.DataFrame | None = None,
    *,
    method: str = "auto",
    shear_line_y: float | None = None,
) -> pd.DataFrame:
    """`traj` with columns vx_na, vy_na (µm/s): velocities minus the affine velocity field of their frame.

    Parameters as `nonaffine_positions`; the strain rate is the central finite
    difference of `strain` against its `t` column (or the table's frame times).
    """
    method = _method(method, strain)
    cx, cy = position_columns(traj)
    r = traj[[cx, cy]].to_numpy(np.float64)
    v = traj[["vx", "vy"]].to_numpy(np.float64).copy()
    frame = traj["frame"].to_numpy()
    if method == "strain":
        s = strain.drop_duplicates("frame").sort_values("frame")
        if "t" in s.columns:
            times = s["t"].to_numpy(np.float64)
        else:
            times = traj.groupby("frame")["t"].first().reindex(s["frame"]).to_numpy(np.float64)
        rate = pd.Series(np.gradient(s["strain"].to_numpy(np.float64), times), index=s["frame"].to_numpy())
        gamma_dot = rate.reindex(frame).to_numpy()
        if np.isnan(gamma_dot).any():
            raise ValueError("strain series does not cover every frame of the trajectories")
        y_c = 0.0 if shear_line_y is None else float(shear_line_y)
        v[:, 0] -= gamma_dot * (r[:, 1] - y_c)
        if shear_line_y is None:
            _, g = np.unique(frame, return_inverse=True)
            v -= _group_mean(v, g, int(g.max()) + 1)[g]
    else:
        v = _affine_residual(r, v, frame)
    return traj.assign(vx_na=v[:, 0], vy_na=v[:, 1])
