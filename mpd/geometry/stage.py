"""The geometry stage: trajectories -> per-particle observables and the training dataset.

`compute_geometry` writes, atomically (into a temporary directory beside
`out_dir`, renamed at the very end; on any error nothing is left behind):

    out_dir/observables.parquet   one row per particle per frame (columns in OBSERVABLE_UNITS)
    out_dir/metadata.json         parameters, domain, units, versions
    out_dir/dataset/              snapshot pairs (format: mpd.geometry.dataset)
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from mpd.atomic import atomic_output_dir
from mpd.geometry.dataset import write_dataset
from mpd.geometry.domain import Box, Window
from mpd.geometry.inputs import GeometryInputError, boxes_per_frame, load_trajectories, validate_trajectories
from mpd.geometry.kinematics import VELOCITY_ESTIMATORS, affine_flow, backward_velocities, shear_box_flow
from mpd.geometry.masks import exterior_mask, window_from_video_metadata
from mpd.geometry.neighbours import torch_cluster_available
from mpd.geometry.reference import reference_frames
from mpd.geometry.strain import local_strain
from mpd.geometry.voronoi import voronoi_areas
from mpd.provenance import software_versions

OBSERVABLE_UNITS = {
    "frame": "", "t": "s", "particle": "", "x": "µm", "y": "µm",
    "area": "µm^2 (Voronoi cell; NaN where area_valid is False)", "area_valid": "bool",
    "ref_frame": "reference frame of this frame (-1: none)",
    "F_xx": "", "F_xy": "", "F_yx": "", "F_yy": "",
    "eps_xx": "", "eps_xy": "", "eps_yy": "", "eps_dev_xx": "", "eps_dev_xy": "",
    "strain_invariant": "sqrt(eps_dev:eps_dev/2)",
    "d2min": "µm^2 (µm^2 per neighbour with d2min_per_neighbour)",
    "n_neighbours": "reference neighbours within h present in both frames",
    "strain_valid": "bool (F, strains, d2min are NaN where False)",
    "interior": "bool (False: exterior, prescribed from data)",
}


def compute_geometry(
    trajectories,
    out_dir,
    *,
    h_um: float,
    frame_rate_hz: float,
    reference: str = "lag",
    lag_frames: int = 1,
    cycle_frames: float | None = None,
    cycle_start_frame: int = 0,
    window: Window | tuple | None = None,
    video_metadata=None,
    box: Box | pd.DataFrame | None = None,
    boundary_particles=None,
    boundary_geometry=None,
    exterior_width_um: float | None = None,
    split_fractions=(0.7, 0.15, 0.15),
    gap_pairs: int = 1,
    strain_measure: str = "green_lagrange",
    d2min_per_neighbour: bool = False,
    backend: str = "auto",
    velocity: str = "backward",
) -> Path:
    """Compute the observables and the dataset of `trajectories`; returns `out_dir`.

    Parameters
    ----------
    trajectories : DataFrame or .parquet/.csv path; columns frame, particle,
        x, y (µm), vx, vy (µm/s) (docs/data_schema.md); other columns ignored.
    out_dir : output directory (replaced as a whole if it exists).
    h_um : cut-off radius h, µm: neighbours for the strain, exterior width,
        and the length scale of the dataset.
    frame_rate_hz : frames per second; dt = 1/frame_rate_hz is the time scale.
    reference, lag_frames, cycle_frames, cycle_start_frame : reference
        configuration of the strain (`mpd.geometry.reference`).
    window : field of view (x_min, x_max, y_min, y_max), µm. Default: from
        `video_metadata` (dict or path of video metadata.json), else the extent
        of all positions (with a warning).
    box : periodic domain instead of a window: a `Box`, or a table frame, lx,
        ly, xy (µm) for a cell whose tilt changes with time.
    boundary_particles, boundary_geometry : driving boundary (`mpd.geometry.masks.exterior_mask`).
    exterior_width_um : width of the exterior band; default h_um.
    split_fractions, gap_pairs : train/val/test blocks (`mpd.geometry.dataset.split_blocks`).
    strain_measure, d2min_per_neighbour : `mpd.geometry.strain`.
    backend : neighbour search backend (`mpd.geometry.neighbours.radius_pairs`).
    velocity : the dataset's velocities: "backward" (kinematic, (x_t - x_{t-1}) / dt, the
        model integrator's; `mpd.geometry.kinematics`) or "tracked" (the table's vx, vy).
    """
    table, source = load_trajectories(trajectories)
    table = validate_trajectories(table, source)
    _check_positive(h_um=h_um, frame_rate_hz=frame_rate_hz)
    if velocity not in VELOCITY_ESTIMATORS:
        raise GeometryInputError(f"geometry.velocity must be one of {', '.join(VELOCITY_ESTIMATORS)}, got {velocity!r}")
    if box is not None and (window is not None or video_metadata is not None):
        raise GeometryInputError("give a periodic box or a window (or video_metadata), not both")
    table = table.sort_values(["frame", "particle"], kind="stable").reset_index(drop=True)
    positions = table[["x", "y"]].to_numpy(np.float64)
    frame = table["frame"].to_numpy()
    ids = table["particle"].to_numpy()
    frames, starts, counts = np.unique(frame, return_index=True, return_counts=True)
    # Validate the reference rule before the (long) per-frame work.
    refs = reference_frames(
        frames, reference=reference, lag_frames=lag_frames, cycle_frames=cycle_frames,
        cycle_start_frame=cycle_start_frame,
    )
    boxes = boxes_per_frame(box, frames) if box is not None else None
    if boxes is None:
        window, window_source = _resolve_window(window, video_metadata, positions)
    else:
        window, window_source = None, "periodic box"
        too_small = [f for f, b in boxes.items() if h_um >= b.max_cutoff()]
        if too_small:
            raise GeometryInputError(f"h_um={h_um} must be < min(lx, ly)/2 of the box (frame {too_small[0]})")

    n = len(table)
    area, area_valid = np.full(n, np.nan), np.zeros(n, bool)
    F = np.full((n, 2, 2), np.nan)
    eps, eps_dev = np.full((n, 2, 2), np.nan), np.full((n, 2, 2), np.nan)
    invariant, d2min = np.full(n, np.nan), np.full(n, np.nan)
    n_neighbours, strain_valid = np.zeros(n, np.int64), np.zeros(n, bool)
    x_ref = np.full((n, 2), np.nan)
    row_ref = np.full(n, -1, np.int64)
    slot = {int(f): k for k, f in enumerate(frames)}
    for k, f in enumerate(frames):  # per frame; everything inside is vectorised
        rows = slice(starts[k], starts[k] + counts[k])
        p = positions[rows]
        frame_box = boxes[int(f)] if boxes is not None else None
        area[rows], area_valid[rows] = voronoi_areas(p, window=window, box=frame_box)
        row_ref[rows] = refs[k]
        if refs[k] < 0:
            continue
        r = slot[int(refs[k])]
        ref_rows = slice(starts[r], starts[r] + counts[r])
        _, here, there = np.intersect1d(ids[rows], ids[ref_rows], assume_unique=True, return_indices=True)
        if len(here) == 0:
            continue
        target = starts[k] + here
        x_ref[target] = positions[ref_rows][there]
        s = local_strain(
            p[here], x_ref[target], h_um,
            box=frame_box, box_ref=boxes[int(refs[k])] if boxes is not None else None,
            measure=strain_measure, per_neighbour=d2min_per_neighbour, backend=backend,
        )
        F[target], eps[target], eps_dev[target] = s.F, s.eps, s.eps_dev
        invariant[target], d2min[target] = s.invariant, s.d2min
        n_neighbours[target], strain_valid[target] = s.n_neighbours, s.valid

    width = h_um if exterior_width_um is None else float(exterior_width_um)
    interior = ~exterior_mask(
        positions, width, window=window, particle_ids=ids,
        boundary_particles=boundary_particles, boundary_geometry=boundary_geometry,
    )
    observables = pd.DataFrame(
        {
            "frame": frame, "t": frame / float(frame_rate_hz), "particle": ids,
            "x": positions[:, 0], "y": positions[:, 1],
            "area": area, "area_valid": area_valid, "ref_frame": row_ref,
            "F_xx": F[:, 0, 0], "F_xy": F[:, 0, 1], "F_yx": F[:, 1, 0], "F_yy": F[:, 1, 1],
            "eps_xx": eps[:, 0, 0], "eps_xy": eps[:, 0, 1], "eps_yy": eps[:, 1, 1],
            "eps_dev_xx": eps_dev[:, 0, 0], "eps_dev_xy": eps_dev[:, 0, 1],
            "strain_invariant": invariant, "d2min": d2min,
            "n_neighbours": n_neighbours, "strain_valid": strain_valid, "interior": interior,
        }
    )
    parameters = {
        "h_um": float(h_um), "frame_rate_hz": float(frame_rate_hz),
        "reference": {"rule": reference, "lag_frames": int(lag_frames),
                      "cycle_frames": None if cycle_frames is None else float(cycle_frames),
                      "cycle_start_frame": int(cycle_start_frame)},
        "window_um": None if window is None else [float(v) for v in window], "window_source": window_source,
        "periodic": boxes is not None,
        "exterior_width_um": width,
        "boundary_particles": None if boundary_particles is None else np.asarray(boundary_particles).tolist(),
        "boundary_geometry_um": None if boundary_geometry is None else np.asarray(boundary_geometry, float).tolist(),
        "strain_measure": strain_measure, "d2min_per_neighbour": bool(d2min_per_neighbour),
        "velocity": velocity,
    }
    if velocity == "backward":
        minimum_image = (lambda f, d: boxes[f].minimum_image(d)) if boxes is not None else None
        v, backward = backward_velocities(frame, ids, positions, frame_rate_hz, minimum_image)
        # a transition enters the likelihood only from an exactly kinematic state
        predicted = interior & backward
    else:
        v, predicted = table[["vx", "vy"]].to_numpy(np.float64), interior
    dataset_rows = pd.DataFrame(
        {
            "frame": frame, "particle": ids, "x": positions[:, 0], "y": positions[:, 1],
            "vx": v[:, 0], "vy": v[:, 1],
            "x_ref": x_ref[:, 0], "y_ref": x_ref[:, 1], "interior": predicted,
            "species": species_labels(table),
        }
    )
    flows = _background_flows(frames, starts, counts, ids, positions, interior, boxes, 1.0 / float(frame_rate_hz))

    def write(tmp: Path) -> None:
        observables.to_parquet(tmp / "observables.parquet", index=False)
        write_dataset(
            tmp / "dataset", dataset_rows, length_scale_um=h_um, frame_rate_hz=frame_rate_hz,
            split_fractions=split_fractions, gap_pairs=gap_pairs,
            ref_frame={int(f): int(r) for f, r in zip(frames, refs)}, boxes=boxes, flows=flows,
            extra_metadata={"geometry": parameters, "source": source},
        )
        metadata = {
            "source": source, "parameters": parameters,
            "observables": {"file": "observables.parquet", "columns": OBSERVABLE_UNITS},
            "n_frames": len(frames), "n_rows": int(n), "versions": _versions(),
        }
        (tmp / "metadata.json").write_text(json.dumps(metadata, indent=2, ensure_ascii=False))

    with atomic_output_dir(out_dir) as tmp:
        write(tmp)
    return Path(out_dir)


def species_labels(table: pd.DataFrame) -> np.ndarray:
    """The table's species column (0, 1, ...; tracking.species), or zeros when it has none."""
    if "species" not in table.columns:
        return np.zeros(len(table), np.int64)
    species = table["species"].to_numpy()
    if not np.issubdtype(species.dtype, np.number) or not np.isfinite(species.astype(float)).all() \
            or (species < 0).any() or (species != np.round(species)).any():
        raise GeometryInputError("column 'species' of the trajectories must hold integers >= 0 (tracking.species)")
    return species.astype(np.int64)


def _background_flows(frames, starts, counts, ids, positions, interior, boxes, dt) -> dict[int, np.ndarray]:
    """frame t -> the 6 coefficients of the background flow during t -> t+1 (`mpd.geometry.kinematics`)."""
    flows = {}
    for k in range(len(frames) - 1):
        f = int(frames[k])
        if int(frames[k + 1]) != f + 1:
            continue
        if boxes is not None:
            flows[f] = shear_box_flow(boxes[f].xy, boxes[f + 1].xy, boxes[f].ly, dt)
            continue
        now, nxt = slice(starts[k], starts[k] + counts[k]), slice(starts[k + 1], starts[k + 1] + counts[k + 1])
        _, a, b = np.intersect1d(ids[now], ids[nxt], assume_unique=True, return_indices=True)
        exterior = ~interior[now][a]
        flows[f] = affine_flow(positions[now][a][exterior], positions[nxt][b][exterior], dt)
    return flows


def _resolve_window(window, video_metadata, positions):
    if window is not None:
        return Window(*map(float, window)).check(), "given"
    if video_metadata is not None:
        return window_from_video_metadata(video_metadata), "video metadata"
    warnings.warn(
        "no window or video metadata given: using the extent of all tracked positions as the field of view",
        stacklevel=3,
    )
    lo, hi = positions.min(axis=0), positions.max(axis=0)
    return Window(lo[0], hi[0], lo[1], hi[1]).check(), "extent of the tracked positions"


def _check_positive(**values) -> None:
    for name, value in values.items():
        if value is None or not np.isfinite(value) or value <= 0:
            raise GeometryInputError(f"{name} must be a positive number, got {value}")


def _versions() -> dict:
    return {**software_versions("numpy", "scipy", "pandas", "pyarrow"), "torch_cluster": torch_cluster_available()}
