"""A null model to beat: the imposed affine flow plus independent Brownian steps.

Every particle moves with the measured affine (solvent) flow of each step and
an independent Gaussian displacement of variance 2 D dt per coordinate, with
D the measured short-time diffusion coefficient of its species. It has the
data's one-frame mobility by construction and no interactions at all: no
cage, no structure, no rearrangement mechanism. A learned model that does
not beat it on a statistic has learned nothing about that statistic
(docs/fidelity.md).

Flows are `mpd.geometry.kinematics` coefficients per step (frame f -> f+1,
µm/s and 1/s): in a field of view the affine fit of the observed
displacements of each step (`observed_flows`), in a sheared periodic box the
box's own (`box_flows`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.inputs import boxes_per_frame, check_trajectories, frame_interval
from mpd.geometry.kinematics import affine_flow, flow_velocity, shear_box_flow

__all__ = ["box_flows", "brownian_null", "measured_diffusion", "observed_flows"]


def observed_flows(traj: pd.DataFrame, mask=None) -> dict[int, np.ndarray]:
    """frame f -> the affine flow of the observed displacements f -> f+1 (µm/s, 1/s).

    mask: optional boolean per row of `traj`: only those particles (at f) inform the fit.
    """
    traj = check_trajectories(traj)
    dt = frame_interval(traj)
    if mask is not None:
        traj = traj.assign(_use=np.asarray(mask, bool))
    frames = np.unique(traj["frame"].to_numpy())
    by_frame = {int(f): rows for f, rows in traj.groupby("frame")}
    flows = {}
    for f in frames:
        f = int(f)
        if f + 1 not in by_frame:
            continue
        a, b = by_frame[f], by_frame[f + 1]
        if mask is not None:
            a = a[a["_use"].to_numpy(bool)]
        common = a.merge(b[["particle", "x", "y"]], on="particle", suffixes=("", "_next"))
        flows[f] = affine_flow(common[["x", "y"]].to_numpy(), common[["x_next", "y_next"]].to_numpy(), dt)
    return flows


def box_flows(boxes: pd.DataFrame, dt: float) -> dict[int, np.ndarray]:
    """frame f -> the affine flow a sheared periodic box imposes over f -> f+1 (boxes: frame, lx, ly, xy µm)."""
    table = boxes.drop_duplicates("frame").set_index("frame").sort_index()
    return {int(f): shear_box_flow(table.loc[f, "xy"], table.loc[f + 1, "xy"], table.loc[f, "ly"], dt)
            for f in table.index if f + 1 in table.index}


def measured_diffusion(traj: pd.DataFrame, flows: dict[int, np.ndarray], box=None) -> dict[int, float]:
    """Short-time diffusion coefficient of each species, µm^2/s: <|dx - u dt|^2> / (4 dt) over one-frame steps.

    box: a periodic cell (Box or frame, lx, ly, xy table) for wrapped positions (minimum-image steps).
    """
    traj = check_trajectories(traj)
    dt = frame_interval(traj)
    species = traj["species"] if "species" in traj.columns else pd.Series(0, index=traj.index)
    t = traj.assign(species=species.to_numpy()).sort_values(["particle", "frame"])
    nxt = t.groupby("particle").shift(-1)
    ok = (nxt["frame"] == t["frame"] + 1).to_numpy()
    x0 = t[["x", "y"]].to_numpy()[ok]
    step = nxt[["x", "y"]].to_numpy()[ok] - x0
    frames = t["frame"].to_numpy()[ok]
    if box is not None:
        boxes = boxes_per_frame(box, frames)
        for f in np.unique(frames):
            rows = frames == f
            step[rows] = boxes[int(f)].minimum_image(step[rows])
    flow = np.zeros_like(step)
    for f in np.unique(frames):
        rows = frames == f
        flow[rows] = flow_velocity(flows.get(int(f), np.zeros(6)), x0[rows]) * dt
    residual = step - flow
    labels = t["species"].to_numpy()[ok]
    return {int(s): float((residual[labels == s] ** 2).sum(1).mean() / (4 * dt)) for s in np.unique(labels)}


def brownian_null(
    traj: pd.DataFrame,
    frames,
    flows: dict[int, np.ndarray],
    diffusion: dict[int, float],
    *,
    box: pd.DataFrame | None = None,
    seed: int = 0,
    dt: float | None = None,
) -> pd.DataFrame:
    """Trajectories of the null model over `frames` (consecutive), in the trajectory schema (µm, s).

    traj : the data over those frames. In a field of view (box None) each
        particle starts where the data first shows it in `frames` and exists
        in the frames where the data has it (the data's density and the
        particles entering and leaving the window are kept); in a periodic box
        (a frame, lx, ly, xy table) every particle of the first frame moves for
        all frames and the table has unwrapped xu, yu and wrapped x, y.
    flows : frame -> the affine flow of f -> f+1 (µm/s, 1/s; `observed_flows`, `box_flows`).
    diffusion : species -> D (µm^2/s; `measured_diffusion`); species 0 when the table has no species.
    dt : the frame interval (s); default: from the data's times (which then needs two frames).
    Velocities are the backward differences of the null positions (zero at the first frame).
    """
    traj = check_trajectories(traj)
    frames = np.asarray(sorted(int(f) for f in frames))
    dt = frame_interval(traj) if dt is None else float(dt)
    data = traj[traj["frame"].isin(frames)]
    rng = np.random.default_rng(seed)
    if box is not None:
        start = data[data["frame"] == frames[0]].sort_values("particle")
        ids = start["particle"].to_numpy()
        present = np.ones((len(frames), len(ids)), bool)
        x0 = start[["xu", "yu"]].to_numpy(np.float64) if {"xu", "yu"} <= set(start.columns) else \
            start[["x", "y"]].to_numpy(np.float64)
        first = np.zeros(len(ids), np.int64)
        species_of = start["species"].to_numpy() if "species" in start.columns else np.zeros(len(ids), np.int64)
    else:
        ids = np.unique(data["particle"].to_numpy())
        slot = {int(p): k for k, p in enumerate(ids)}
        present = np.zeros((len(frames), len(ids)), bool)
        f_index = {int(f): k for k, f in enumerate(frames)}
        rows_f = data["frame"].map(f_index).to_numpy()
        rows_p = data["particle"].map(slot).to_numpy()
        present[rows_f, rows_p] = True
        first = present.argmax(axis=0)
        x0 = np.zeros((len(ids), 2))
        first_rows = data.sort_values("frame").drop_duplicates("particle")
        x0[first_rows["particle"].map(slot).to_numpy()] = first_rows[["x", "y"]].to_numpy(np.float64)
        species_col = first_rows.set_index("particle")["species"] if "species" in first_rows.columns else None
        species_of = (species_col.reindex(ids).to_numpy() if species_col is not None
                      else np.zeros(len(ids), np.int64))
    sigma = np.sqrt(2.0 * np.array([diffusion.get(int(s), diffusion.get(0, 0.0)) for s in species_of]) * dt)
    positions = np.zeros((len(frames), len(ids), 2))
    x = x0.copy()
    for k, f in enumerate(frames):
        started = first == k
        x[started] = x0[started]
        positions[k] = x
        if k + 1 < len(frames):
            u = flow_velocity(flows.get(int(f), np.zeros(6)), x)
            x = x + u * dt + sigma[:, None] * rng.normal(size=x.shape)
    velocity = np.zeros_like(positions)
    velocity[1:] = (positions[1:] - positions[:-1]) / dt
    k_idx, p_idx = np.nonzero(present)
    out = pd.DataFrame({
        "frame": frames[k_idx], "t": frames[k_idx] * dt, "particle": ids[p_idx],
        "x": positions[k_idx, p_idx, 0], "y": positions[k_idx, p_idx, 1],
        "vx": velocity[k_idx, p_idx, 0], "vy": velocity[k_idx, p_idx, 1],
        "species": np.asarray(species_of)[p_idx].astype(np.int64),
    })
    if box is not None:
        cells = boxes_per_frame(box.drop_duplicates("frame"), frames)
        out["xu"], out["yu"] = out["x"].to_numpy(), out["y"].to_numpy()
        wrapped = out[["xu", "yu"]].to_numpy().copy()
        for f, rows in out.groupby("frame").indices.items():
            wrapped[rows] = cells[int(f)].wrap(wrapped[rows])
        out["x"], out["y"] = wrapped[:, 0], wrapped[:, 1]
    return out.sort_values(["frame", "particle"]).reset_index(drop=True)
