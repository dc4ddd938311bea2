"""Kinematic velocities and the background flow: what the model's integrator needs from the positions.

One home for both, used by the geometry stage (training dataset) and by the
rollouts (prescribed particles), so that training and rollouts see the same
velocities and the same flow.

Kinematic velocity (``velocity: backward``, the default)
----------------------------------------------------------
The model integrates semi-implicit Euler, x_{t+1} = x_t + v_{t+1} dt
(physics.md, Rollout). That update is exact for the data when v_{t+1} is the
backward difference

    v_t = (x_t - x_{t-1}) / dt,

so (x, v) with this v is a Markov embedding of the observed positions: the
likelihood of v_{t+1} given the state at t is the likelihood of x_{t+1}, and a
rollout of v reproduces positions with the right short-time statistics. The
tracking stage's central differences (x_{t+1} - x_{t-1}) / 2dt are smoother,
but they mix the step being predicted into the state it is predicted from
(and are a two-step average: for Brownian motion their lag-one correlation
is 1/2 where the backward difference's is 0). At the first observation of a
trajectory, where there is no x_{t-1}, the forward difference stands in (for
prescribed particles only: a transition from such a state is excluded from
the likelihood, see `mpd.geometry.dataset`). ``velocity: tracked`` keeps the
tracking stage's velocities instead.

Background flow
---------------
Colloids at an interface move in a solvent that is itself sheared: the bath
of the model (docs/model.md, Bath) damps velocities relative to the local
solvent velocity u(x), not relative to rest. Over each step t -> t+1 the flow
is an affine field

    u(x) = u0 + G x   (µm/s, 1/s; x in the data's coordinates, µm)

* in a field of view: the least-squares affine fit of the displacements
  (x_{t+1} - x_t) / dt of the *exterior* particles (the ones a rollout
  prescribes from data at every step, so training and rollouts use the same
  information and no predicted particle informs its own flow); with fewer than
  three non-collinear exterior particles only the mean displacement is used,
  with none the flow is zero;
* in a periodic box sheared by its tilt xy(t): G = [[0, (xy_{t+1} - xy_t) /
  (ly dt)], [0, 0]], u0 = 0: the affine field the deforming box imposes about
  its lower edge y = 0, exactly as LAMMPS's ``fix deform ... remap x`` moves the
  particles. Its jump across the tilted boundary is the Lees-Edwards image
  velocity (mpd.model.PairTensors.shift_rate).
"""
from __future__ import annotations

import numpy as np

VELOCITY_ESTIMATORS = ("backward", "tracked")
FLOW_COLUMNS = ("flow_u0x", "flow_u0y", "flow_gxx", "flow_gxy", "flow_gyx", "flow_gyy")


def backward_velocities(frame, particle, x, frame_rate_hz: float, minimum_image=None):
    """Kinematic velocities (µm/s) of every row, and whether each is a true backward difference.

    frame, particle : (n,) integers; x : (n, 2) µm (rows in any order).
    minimum_image : optional callable (frame, displacement (k, 2)) -> displacement
        mapped to its minimum image, for wrapped positions in a periodic box.
    Returns (v (n, 2), backward (n,) bool): v_t = (x_t - x_{t-1}) * frame_rate_hz
    where the same particle is observed at frame t - 1 (backward True); else the
    forward difference to frame t + 1; NaN for a lone observation.
    """
    frame = np.asarray(frame, np.int64)
    particle = np.asarray(particle, np.int64)
    x = np.asarray(x, np.float64)
    order = np.lexsort((frame, particle))
    f, p, r = frame[order], particle[order], x[order]
    same_as_previous = np.zeros(len(f), bool)
    same_as_previous[1:] = (p[1:] == p[:-1]) & (f[1:] == f[:-1] + 1)
    step = np.full_like(r, np.nan)
    step[1:] = r[1:] - r[:-1]
    if minimum_image is not None and len(f) > 1:
        rows = np.flatnonzero(same_as_previous)
        for g in np.unique(f[rows]):
            k = rows[f[rows] == g]
            step[k] = minimum_image(int(g), step[k])
    v_sorted = np.full_like(r, np.nan)
    v_sorted[same_as_previous] = step[same_as_previous] * frame_rate_hz
    # forward difference where there is no predecessor but a successor
    has_next = np.zeros(len(f), bool)
    has_next[:-1] = same_as_previous[1:]
    use_forward = ~same_as_previous & has_next
    v_sorted[use_forward] = step[np.flatnonzero(use_forward) + 1] * frame_rate_hz
    v = np.empty_like(v_sorted)
    v[order] = v_sorted
    backward = np.empty(len(f), bool)
    backward[order] = same_as_previous
    return v, backward


def affine_flow(x0, x1, dt: float) -> np.ndarray:
    """Least-squares affine velocity field of the displacements (x1 - x0) / dt at positions x0.

    Returns the 6 coefficients (u0x, u0y, gxx, gxy, gyx, gyy) of u(x) = u0 + G x
    (µm/s and 1/s for µm and s). Fewer than 3 points, or points (nearly) on a
    line: the mean velocity only (G = 0); no point: zero.
    """
    x0 = np.asarray(x0, np.float64).reshape(-1, 2)
    velocity = (np.asarray(x1, np.float64).reshape(-1, 2) - x0) / dt
    if len(x0) == 0:
        return np.zeros(6)
    centre, mean = x0.mean(0), velocity.mean(0)
    gradient = np.zeros((2, 2))
    if len(x0) >= 3:
        rc, vc = x0 - centre, velocity - mean
        s_rr = rc.T @ rc
        trace = np.trace(s_rr)
        if trace > 0 and np.linalg.det(s_rr) > 1e-6 * trace**2:
            gradient = np.linalg.solve(s_rr, rc.T @ vc).T  # vc ≈ rc G^T
    u0 = mean - gradient @ centre
    return np.array([u0[0], u0[1], gradient[0, 0], gradient[0, 1], gradient[1, 0], gradient[1, 1]])


def shear_box_flow(xy0: float, xy1: float, ly: float, dt: float) -> np.ndarray:
    """The affine flow (6 coefficients) of a periodic box whose tilt goes from xy0 to xy1 in dt."""
    return np.array([0.0, 0.0, 0.0, (xy1 - xy0) / (ly * dt), 0.0, 0.0])


def flow_velocity(coefficients, x) -> np.ndarray:
    """u(x) = u0 + G x of 6 flow coefficients at positions x (k, 2)."""
    c = np.asarray(coefficients, np.float64)
    if c.shape != (len(FLOW_COLUMNS),):
        raise ValueError(f"flow coefficients must be the {len(FLOW_COLUMNS)} values {list(FLOW_COLUMNS)}; "
                         f"got shape {c.shape}")
    x = np.asarray(x, np.float64).reshape(-1, 2)
    return c[:2] + x @ np.array([[c[2], c[3]], [c[4], c[5]]]).T


__all__ = [
    "FLOW_COLUMNS",
    "VELOCITY_ESTIMATORS",
    "affine_flow",
    "backward_velocities",
    "flow_velocity",
    "shear_box_flow",
]
