"""The geometry stage: trajectories -> per-particle observables and the training dataset.

`compute_geometry` writes, atomically (into a temporary directory beside
`out_dir`, renamed at the very end; on any error nothing is left behind):

    out_dir/observables.parquet   one row per particle per frame (columns in OBSERVABLE_UNITS)
    out_dir/metadata.json         parameters, domain, units, versions
    out_dir/dataset/              snapshot pairs (format: mpd.geometry.dataset)

It works chunk by chunk of frames (`chunk_frames`; inputs read by frames through
`mpd.geometry.chunks`), so its memory does not grow with the number of frames and
its results do not depend on the chunks (docs/geometry.md, "Long videos").
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mpd.atomic import atomic_output_dir
from mpd.geometry.chunks import check_chunk_frames, count_pairs, open_trajectories, plan_chunks
from mpd.geometry.dataset import PairChunk, write_dataset
from mpd.geometry.domain import Box, Window
from mpd.geometry.inputs import GeometryInputError, boxes_per_frame
from mpd.geometry.kinematics import VELOCITY_ESTIMATORS, affine_flow, backward_velocities, shear_box_flow
from mpd.geometry.masks import exterior_mask, window_from_video_metadata
from mpd.geometry.neighbours import torch_cluster_available
from mpd.geometry.params import GeometryParams
from mpd.geometry.reference import reference_frames
from mpd.geometry.strain import local_strain
from mpd.geometry.voronoi import voronoi_areas
from mpd.provenance import software_versions

DEFAULT_CHUNK_FRAMES = GeometryParams.chunk_frames  # the config's default (mpd.geometry.params)
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
    chunk_frames: int = DEFAULT_CHUNK_FRAMES,
) -> Path:
    """Compute the observables and the dataset of `trajectories`; returns `out_dir`.

    Parameters
    ----------
    trajectories : DataFrame, .parquet/.csv path, or `mpd.geometry.chunks.TrajectorySource`;
        columns frame, particle, x, y (µm), vx, vy (µm/s) (docs/data_schema.md), optional
        species; other columns ignored. A parquet file is read chunk by chunk (below).
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
    chunk_frames : recorded frames computed and written at a time (config geometry.chunk_frames).
        Each chunk reads its frames plus the frames it needs besides (the frame before and
        the frame after, for velocities, pairs and flows; the reference frames of its frames),
        and appends one row group to observables.parquet and its pairs to the dataset, so
        the memory depends on chunk_frames and the particles per frame, not on the number
        of frames. The outputs do not depend on chunk_frames.
    """
    source = open_trajectories(trajectories)
    _check_positive(h_um=h_um, frame_rate_hz=frame_rate_hz)
    if velocity not in VELOCITY_ESTIMATORS:
        raise GeometryInputError(f"geometry.velocity must be one of {', '.join(VELOCITY_ESTIMATORS)}, got {velocity!r}")
    if box is not None and (window is not None or video_metadata is not None):
        raise GeometryInputError("give a periodic box or a window (or video_metadata), not both")
    chunk_frames = check_chunk_frames(chunk_frames)
    frames = source.frames
    # Validate the reference rule before the (long) per-frame work.
    refs = reference_frames(
        frames, reference=reference, lag_frames=lag_frames, cycle_frames=cycle_frames,
        cycle_start_frame=cycle_start_frame,
    )
    boxes = boxes_per_frame(box, frames) if box is not None else None
    if boxes is None:
        window, window_source = _resolve_window(window, video_metadata, source)
    else:
        window, window_source = None, "periodic box"
        too_small = [f for f, b in boxes.items() if h_um >= b.max_cutoff()]
        if too_small:
            raise GeometryInputError(f"h_um={h_um} must be < min(lx, ly)/2 of the box (frame {too_small[0]})")
    width = h_um if exterior_width_um is None else float(exterior_width_um)
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
    chunks = plan_chunks(len(frames), chunk_frames)
    n_pairs = count_pairs(source, chunks)
    settings = _ChunkSettings(
        h_um=float(h_um), frame_rate_hz=float(frame_rate_hz), window=window, boxes=boxes, width=width,
        boundary_particles=boundary_particles, boundary_geometry=boundary_geometry,
        strain_measure=strain_measure, d2min_per_neighbour=d2min_per_neighbour, backend=backend, velocity=velocity,
    )

    def write(tmp: Path) -> None:
        observables = _ObservableWriter(tmp / "observables.parquet")

        def pair_chunks():  # computes each chunk, appends its observables, hands its rows to the dataset
            for a, b in chunks:
                table, rows, flows = _compute_chunk(source, frames, refs, a, b, settings)
                observables.write(table)
                yield PairChunk(rows, flows, {int(f): int(r) for f, r in zip(frames[a:b], refs[a:b])})

        try:
            write_dataset(
                tmp / "dataset", pair_chunks(), length_scale_um=h_um, frame_rate_hz=frame_rate_hz,
                split_fractions=split_fractions, gap_pairs=gap_pairs, boxes=boxes, n_pairs=n_pairs,
                extra_metadata={"geometry": parameters, "source": source.source},
            )
        finally:
            observables.close()
        metadata = {
            "source": source.source, "parameters": parameters,
            "observables": {"file": "observables.parquet", "columns": OBSERVABLE_UNITS},
            "n_frames": len(frames), "n_rows": source.n_rows, "versions": _versions(),
            "chunks": {"chunk_frames": chunk_frames, "n_chunks": len(chunks),
                       "note": "observables.parquet holds one row group per chunk of frames"},
        }
        (tmp / "metadata.json").write_text(json.dumps(metadata, indent=2, ensure_ascii=False))

    with atomic_output_dir(out_dir) as tmp:
        write(tmp)
    return Path(out_dir)


@dataclass(frozen=True)
class _ChunkSettings:
    h_um: float
    frame_rate_hz: float
    window: Window | None
    boxes: dict | None
    width: float
    boundary_particles: object
    boundary_geometry: object
    strain_measure: str
    d2min_per_neighbour: bool
    backend: str
    velocity: str


def _compute_chunk(source, frames, refs, a: int, b: int, s: _ChunkSettings):
    """Observables, dataset rows and flows of the recorded frames[a:b].

    Reads frames[a:b], the frame just before and just after (when recorded:
    backward and forward differences, the pair (last, last + 1) and its
    flow) and the reference frames of frames[a:b]. Every number is computed
    from the same rows as in one pass over the whole video, so the results do
    not depend on the chunks. Returns (observables of frames[a:b], dataset rows of
    frames[a:b] and of the frame after, flows of frames[a:b]).
    """
    chunk, chunk_refs = frames[a:b], refs[a:b]
    before = frames[a - 1] if a > 0 and frames[a - 1] == chunk[0] - 1 else None
    after = frames[b] if b < len(frames) and frames[b] == chunk[-1] + 1 else None
    extra = [f for f in (before, after) if f is not None]
    wanted = np.unique(np.concatenate([chunk, chunk_refs[chunk_refs >= 0], np.asarray(extra, np.int64)]))
    table = source.read(wanted)
    positions = table[["x", "y"]].to_numpy(np.float64)
    frame = table["frame"].to_numpy()
    ids = table["particle"].to_numpy()
    counts = source.counts[np.searchsorted(frames, wanted)]  # rows of each frame read (checked by read)
    ends = np.cumsum(counts)
    starts = ends - counts
    slot = {int(f): k for k, f in enumerate(wanted)}
    lo, hi = starts[slot[int(chunk[0])]], ends[slot[int(chunk[-1])]]  # the chunk's own rows
    first = starts[slot[int(before)]] if before is not None else lo  # rows for the velocities
    last = ends[slot[int(after)]] if after is not None else hi
    box_of = (lambda f: s.boxes[int(f)]) if s.boxes is not None else (lambda f: None)

    n = len(table)
    area, area_valid = np.full(n, np.nan), np.zeros(n, bool)
    F = np.full((n, 2, 2), np.nan)
    eps, eps_dev = np.full((n, 2, 2), np.nan), np.full((n, 2, 2), np.nan)
    invariant, d2min = np.full(n, np.nan), np.full(n, np.nan)
    n_neighbours, strain_valid = np.zeros(n, np.int64), np.zeros(n, bool)
    x_ref = np.full((n, 2), np.nan)
    row_ref = np.full(n, -1, np.int64)
    for f, ref in zip(chunk, chunk_refs):  # per frame; everything inside is vectorised
        k = slot[int(f)]
        rows = slice(starts[k], starts[k] + counts[k])
        p = positions[rows]
        area[rows], area_valid[rows] = voronoi_areas(p, window=s.window, box=box_of(f))
        row_ref[rows] = ref
        if ref < 0:
            continue
        r = slot[int(ref)]
        ref_rows = slice(starts[r], starts[r] + counts[r])
        _, here, there = np.intersect1d(ids[rows], ids[ref_rows], assume_unique=True, return_indices=True)
        if len(here) == 0:
            continue
        target = starts[k] + here
        x_ref[target] = positions[ref_rows][there]
        st = local_strain(
            p[here], x_ref[target], s.h_um, box=box_of(f), box_ref=box_of(ref),
            measure=s.strain_measure, per_neighbour=s.d2min_per_neighbour, backend=s.backend,
        )
        F[target], eps[target], eps_dev[target] = st.F, st.eps, st.eps_dev
        invariant[target], d2min[target] = st.invariant, st.d2min
        n_neighbours[target], strain_valid[target] = st.n_neighbours, st.valid

    own = slice(lo, hi)
    interior = ~exterior_mask(
        positions[own], s.width, window=s.window, particle_ids=ids[own],
        boundary_particles=s.boundary_particles, boundary_geometry=s.boundary_geometry,
    )
    observables = pd.DataFrame(
        {
            "frame": frame[own], "t": frame[own] / s.frame_rate_hz, "particle": ids[own],
            "x": positions[own, 0], "y": positions[own, 1],
            "area": area[own], "area_valid": area_valid[own], "ref_frame": row_ref[own],
            "F_xx": F[own, 0, 0], "F_xy": F[own, 0, 1], "F_yx": F[own, 1, 0], "F_yy": F[own, 1, 1],
            "eps_xx": eps[own, 0, 0], "eps_xy": eps[own, 0, 1], "eps_yy": eps[own, 1, 1],
            "eps_dev_xx": eps_dev[own, 0, 0], "eps_dev_xy": eps_dev[own, 0, 1],
            "strain_invariant": invariant[own], "d2min": d2min[own],
            "n_neighbours": n_neighbours[own], "strain_valid": strain_valid[own], "interior": interior,
        }
    )
    # Dataset rows: the chunk's frames and the frame after (the t+1 of the chunk's last pair).
    span = slice(lo, last)
    if s.velocity == "backward":
        minimum_image = (lambda f, d: s.boxes[f].minimum_image(d)) if s.boxes is not None else None
        moving = slice(first, last)
        v, backward = backward_velocities(frame[moving], ids[moving], positions[moving], s.frame_rate_hz,
                                          minimum_image)
        v, backward = v[lo - first:], backward[lo - first:hi - first]
        # a transition enters the likelihood only from an exactly kinematic state
        predicted = interior & backward
    else:
        v, predicted = table[["vx", "vy"]].to_numpy(np.float64)[span], interior
    species = species_labels(table)
    n_after = last - hi
    dataset_rows = pd.DataFrame(
        {
            "frame": frame[span], "particle": ids[span], "x": positions[span, 0], "y": positions[span, 1],
            "vx": v[:, 0], "vy": v[:, 1],
            "x_ref": x_ref[span, 0], "y_ref": x_ref[span, 1],
            "interior": np.concatenate([predicted, np.zeros(n_after, bool)]),
            "species": species[span],
        }
    )
    flows = {}
    for f in chunk:  # the background flow during f -> f + 1
        if int(f) + 1 not in slot:
            continue
        if s.boxes is not None:
            flows[int(f)] = shear_box_flow(s.boxes[int(f)].xy, s.boxes[int(f) + 1].xy, s.boxes[int(f)].ly,
                                           1.0 / s.frame_rate_hz)
            continue
        k, k1 = slot[int(f)], slot[int(f) + 1]
        now, nxt = slice(starts[k], ends[k]), slice(starts[k1], ends[k1])
        _, i, j = np.intersect1d(ids[now], ids[nxt], assume_unique=True, return_indices=True)
        exterior = ~interior[starts[k] - lo:ends[k] - lo][i]
        flows[int(f)] = affine_flow(positions[now][i][exterior], positions[nxt][j][exterior], 1.0 / s.frame_rate_hz)
    return observables, dataset_rows, flows


class _ObservableWriter:
    """observables.parquet written chunk by chunk: one row group per chunk, one schema for all."""

    def __init__(self, path: Path):
        self.path, self._schema, self._writer = path, None, None

    def write(self, table: pd.DataFrame) -> None:
        arrow = pa.Table.from_pandas(table, preserve_index=False, schema=self._schema, nthreads=1)
        if self._writer is None:
            self._schema = arrow.schema
            self._writer = pq.ParquetWriter(self.path, self._schema)
        self._writer.write_table(arrow, row_group_size=max(len(table), 1))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def species_labels(table: pd.DataFrame) -> np.ndarray:
    """The table's species column (0, 1, ...; tracking.species), or zeros when it has none."""
    if "species" not in table.columns:
        return np.zeros(len(table), np.int64)
    species = table["species"].to_numpy()
    if not np.issubdtype(species.dtype, np.number) or not np.isfinite(species.astype(float)).all() \
            or (species < 0).any() or (species != np.round(species)).any():
        raise GeometryInputError("column 'species' of the trajectories must hold integers >= 0 (tracking.species)")
    return species.astype(np.int64)


def _resolve_window(window, video_metadata, source):
    if window is not None:
        return Window(*map(float, window)).check(), "given"
    if video_metadata is not None:
        return window_from_video_metadata(video_metadata), "video metadata"
    warnings.warn(
        "no window or video metadata given: using the extent of all tracked positions as the field of view",
        stacklevel=3,
    )
    lo, hi = source.extent()
    return Window(lo[0], hi[0], lo[1], hi[1]).check(), "extent of the tracked positions"


def _check_positive(**values) -> None:
    for name, value in values.items():
        if value is None or not np.isfinite(value) or value <= 0:
            raise GeometryInputError(f"{name} must be a positive number, got {value}")


def _versions() -> dict:
    return {**software_versions("numpy", "scipy", "pandas", "pyarrow"), "torch_cluster": torch_cluster_available()}
