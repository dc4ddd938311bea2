"""Constructed configurations with known answers, for tests and for checking the analysis by hand.

Lengths in µm, times in s; trajectory tables follow docs/data_schema.md.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["edge_dislocation", "ornstein_uhlenbeck_tracks", "sheared_tracks", "triangular_lattice"]


def triangular_lattice(nx: int, ny: int, spacing: float = 1.0, origin=(0.0, 0.0)) -> np.ndarray:
    """(nx * ny, 2) points of a triangular lattice, rows along x, nearest-neighbour distance `spacing`."""
    i, j = np.meshgrid(np.arange(nx), np.arange(ny))
    x = (i + 0.5 * (j % 2)).ravel() * spacing
    y = j.ravel() * spacing * np.sqrt(3.0) / 2.0
    return np.stack([x, y], axis=1) + np.asarray(origin, np.float64)


def edge_dislocation(points, core, burgers, poisson_ratio: float = 1.0 / 3.0) -> np.ndarray:
    """`points` displaced by the isotropic-elastic field of one edge dislocation (Volterra; Hirth & Lothe).

    For Burgers vector b along the local x' axis (b = |burgers|, rotated back
    to the direction of `burgers`), with (x', y') relative to the core and
    theta = atan2(y', x'):

        u_x' = b/(2 pi) [theta + x'y' / (2 (1 - nu) r^2)]
        u_y' = -b/(2 pi) [(1 - 2 nu)/(4 (1 - nu)) ln r^2 + (x'^2 - y'^2) / (4 (1 - nu) r^2)]

    The jump of u_x' by b across the cut (the negative x' axis) inserts one
    extra half line of particles on one side of the glide plane: with a
    lattice vector as `burgers` the far field is a perfect lattice again and
    the core holds one 5-fold and one 7-fold particle. nu = 1/3 is the 2D
    Poisson ratio of a triangular lattice of nearest-neighbour springs. Keep the
    core off lattice points and off the cut's particles (e.g. at a triangle's centre).
    """
    p = np.asarray(points, np.float64)
    b_vec = np.asarray(burgers, np.float64)
    b = float(np.hypot(*b_vec))
    c, s = b_vec / b
    rot = np.array([[c, s], [-s, c]])  # lab -> dislocation frame
    d = (p - np.asarray(core, np.float64)) @ rot.T
    x, y = d[:, 0], d[:, 1]
    r2 = x * x + y * y
    nu = poisson_ratio
    ux = b / (2 * np.pi) * (np.arctan2(y, x) + x * y / (2 * (1 - nu) * r2))
    uy = -b / (2 * np.pi) * ((1 - 2 * nu) / (4 * (1 - nu)) * np.log(r2) + (x * x - y * y) / (4 * (1 - nu) * r2))
    return p + np.stack([ux, uy], axis=1) @ rot


def sheared_tracks(points, strain, frame_rate_hz: float, *, shear_line_y: float = 0.0,
                   extra_displacement=None) -> pd.DataFrame:
    """Trajectories of `points` (N, 2) carried affinely by simple shear along x about y = shear_line_y.

    x(f) = x0 + gamma(f) (y0 - shear_line_y) [+ extra_displacement[f]], y(f) = y0 [+ ...];
    `strain` (F,) is gamma per frame, `extra_displacement` optional (F, N, 2) non-affine
    motion. Velocities are central finite differences (one-sided at the ends), as in the schema.
    """
    p = np.asarray(points, np.float64)
    gamma = np.asarray(strain, np.float64)
    n_frames, n = len(gamma), len(p)
    pos = np.repeat(p[None], n_frames, axis=0)
    pos[:, :, 0] += gamma[:, None] * (p[None, :, 1] - shear_line_y)
    if extra_displacement is not None:
        pos += np.asarray(extra_displacement, np.float64)
    t = np.arange(n_frames) / frame_rate_hz
    vel = np.gradient(pos, t, axis=0)
    frame = np.repeat(np.arange(n_frames), n)
    return pd.DataFrame({"frame": frame, "t": frame / frame_rate_hz, "particle": np.tile(np.arange(n), n_frames),
                         "x": pos[:, :, 0].ravel(), "y": pos[:, :, 1].ravel(),
                         "vx": vel[:, :, 0].ravel(), "vy": vel[:, :, 1].ravel()})


def ornstein_uhlenbeck_tracks(n_particles: int, n_frames: int, tau_s: float, frame_rate_hz: float, *,
                              sigma: float = 1.0, seed: int = 0) -> pd.DataFrame:
    """Tracks whose velocities are independent Ornstein-Uhlenbeck processes (exact discretisation).

    v(t + dt) = v(t) e^(-dt/tau) + sigma sqrt(1 - e^(-2 dt/tau)) xi, stationary from the start, so
    <v(t).v(t + s)> = 2 sigma^2 exp(-s / tau) (µm^2/s^2, sigma in µm/s per component). Positions
    are the running sum of v dt.
    """
    rng = np.random.default_rng(seed)
    dt = 1.0 / frame_rate_hz
    decay = np.exp(-dt / tau_s)
    kick = sigma * np.sqrt(1.0 - decay**2)
    v = np.empty((n_frames, n_particles, 2))
    v[0] = sigma * rng.standard_normal((n_particles, 2))
    noise = kick * rng.standard_normal((n_frames, n_particles, 2))
    for k in range(1, n_frames):  # a recursion in time, vectorised over particles
        v[k] = decay * v[k - 1] + noise[k]
    pos = np.cumsum(v * dt, axis=0)
    frame = np.repeat(np.arange(n_frames), n_particles)
    return pd.DataFrame({"frame": frame, "t": frame * dt, "particle": np.tile(np.arange(n_particles), n_frames),
                         "x": pos[:, :, 0].ravel(), "y": pos[:, :, 1].ravel(),
                         "vx": v[:, :, 0].ravel(), "vy": v[:, :, 1].ravel()})
