"""Shared helpers for the training and rollout tests: small synthetic trajectories and models. No tests here."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from mpd.geometry.domain import Box
from mpd.model import MetriplecticModel
from mpd.training import set_positive_scalar

RATE = 20.0  # Hz
H_UM = 4.0  # cut-off, µm
SPACING = 3.0  # lattice spacing, µm
SMALL_NETWORK = {
    "kernel_hidden": [8], "energy_hidden": [8, 8], "amplitude_hidden": [8], "teacher_hidden": [8],
}


def lattice_trajectories(
    n_x: int = 14, n_y: int = 12, n_frames: int = 16, step_um: float = 0.08, drift_um_s=(0.0, 0.0),
    box: Box | None = None, window=None, seed: int = 0,
) -> pd.DataFrame:
    """A jittered triangular lattice whose particles random-walk (and drift), in the trajectory schema.

    Velocities are central differences of the continuous positions (one-sided
    at the ends), as tracking computes them. With `box`, positions are wrapped
    into it; with `window`, only rows inside the window are kept, so drifting
    particles enter and leave the field of view.
    """
    rng = np.random.default_rng(seed)
    base = np.array([(i + 0.5 * (j % 2), j * np.sqrt(3) / 2) for j in range(n_y) for i in range(n_x)]) * SPACING
    base = base + 0.1 * SPACING * rng.normal(size=base.shape)
    steps = step_um * rng.normal(size=(n_frames, len(base), 2))
    steps[0] = 0.0
    t = np.arange(n_frames) / RATE
    xu = base[None] + np.cumsum(steps, axis=0) + np.asarray(drift_um_s)[None, None, :] * t[:, None, None]
    v = np.gradient(xu, axis=0) * RATE
    parts = []
    for f in range(n_frames):
        x = box.wrap(xu[f]) if box is not None else xu[f]
        parts.append(pd.DataFrame({"frame": f, "t": t[f], "particle": np.arange(len(base)), "x": x[:, 0],
                                   "y": x[:, 1], "vx": v[f, :, 0], "vy": v[f, :, 1]}))
    table = pd.concat(parts, ignore_index=True)
    if window is not None:
        x0, x1, y0, y1 = window
        inside = (table.x >= x0) & (table.x <= x1) & (table.y >= y0) & (table.y <= y1)
        table = table[inside].reset_index(drop=True)
    return table


def lattice_box(n_x: int = 14, n_y: int = 12) -> Box:
    """The periodic cell that the n_x by n_y triangular lattice tiles (n_y even)."""
    return Box(n_x * SPACING, n_y * SPACING * np.sqrt(3) / 2)


def quiet_model(seed: int = 0, mass: float = 50.0, k_B: float = 1e-6, dtype=torch.float64) -> MetriplecticModel:
    """A small random model in model units (h = 1) whose motion stays gentle: heavy particles, weak noise."""
    torch.manual_seed(seed)
    model = MetriplecticModel(h=1.0, kernel_hidden=(8,), energy_hidden=(8, 8), amplitude_hidden=(8,),
                              teacher_hidden=(8,), velocity_scale=0.02).to(dtype)
    set_positive_scalar(model.log_mass, mass)
    set_positive_scalar(model.log_k_B, k_B)
    return model
