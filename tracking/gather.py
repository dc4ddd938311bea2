"""Split tracking, step 4, the gather: the chunks' links stitched into global trajectories, then the
trajectory filters, drift, velocities, species and QC, streaming chunk by chunk into ``trajectories.parquet``.

Memory: one chunk's rows plus the halo of the chunk before it (``_Linked``), and per-trajectory counters.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from trackpy.linking.utils import SubnetOversizeException

from mpd.provenance import software_versions

from . import qc
from ._quiet import quiet_trackpy
from .accuracy import accuracy_report
from .checks import check_packing_counts, check_short_lengths
from .chunk_link import (
    LINKED_COLUMNS,
    _check_feature_files,
    _frame_stream,
    _linked_table,
    _LinkEngine,
    _oversize,
    _Peekable,
    _read_features,
    _read_link,
    _same_state,
    _search_range,
    _stitch_ids,
)
from .chunk_plan import _check_split_supported, _open_planned_video, _plan_params, _write_json, load_plan
from .io import TrackingInputError
from .locate import ResolvedLocate
from .motion import finite_differences, velocities
from .noise import velocity_noise_report
from .params import TrackingParams
from .pipeline import TRAJECTORY_COLUMNS, _search_range_text, check_units, load_truth
from .qc import MAX_POINTS, SAVE, _frame_picture, _to_picture, annotated_frame_figure, features_per_frame_figure
from .refine import (
    STATUS,
)
from .species import classify_species

log = logging.getLogger(__name__)

# The exact per-trajectory median size (species) is computed bucket by bucket of about this many rows.
SPECIES_BUCKET_ROWS = 4_000_000
FILTER_COLUMNS = ("mass", "size", "ecc")


@dataclass
class StreamingResult:
    """What link_chunks wrote; the tables stay on disk (read them lazily with pyarrow or pandas)."""

    out_dir: Path
    trajectories_path: Path
    feature_files: list[Path]
    qc: dict
    accuracy: dict | None

    @property
    def trajectories(self) -> pd.DataFrame:
        """The whole trajectories table, read on demand (memory: the whole table)."""
        return pd.read_parquet(self.trajectories_path)



class _Pass1:
    """Each chunk's linked rows (global particle ids), per-trajectory counts and sums, feature statistics.

    A chunk's rows are either written to the gather's scratch folder (linked in the gather) or read from the
    chunk's own link file through its map of particle ids (``mapped``); ``load`` reads them back either way.
    """

    def __init__(self, work: Path, n_chunks: int, first_frame: int, filter_sums: bool):
        self.work, self.n_chunks, self.first_frame = work, n_chunks, first_frame
        self.filter_sums = filter_sums
        self.counts = np.zeros(0, np.int64)
        self.sums = {c: np.zeros(0) for c in FILTER_COLUMNS}
        self.valid = {c: np.zeros(0, np.int64) for c in FILTER_COLUMNS}
        self.sources: dict[int, tuple[Path, np.ndarray | None]] = {}
        self.subpixel = np.zeros((2, 20), np.int64)
        self.sample_keys = np.empty(0)
        self.sample = pd.DataFrame({"mass": [], "size": []})
        self.first_features = None
        self.rng = np.random.default_rng(0)

    def path(self, chunk: int) -> Path:
        return self.work / f"linked-{chunk:05d}.parquet"

    def write(self, chunk: int, table: pd.DataFrame) -> None:
        """Rows linked here (global ids): written to the scratch folder."""
        pq.write_table(pa.Table.from_pandas(table, preserve_index=False), self.path(chunk))
        self.sources[chunk] = (self.path(chunk), None)
        self._accumulate(table)

    def mapped(self, chunk: int, path: Path, mapping: np.ndarray, table: pd.DataFrame) -> None:
        """Rows of a chunk's own link file, already relabelled (``table``); read again through ``mapping``."""
        self.sources[chunk] = (Path(path), mapping)
        self._accumulate(table)

    def load(self, chunk: int) -> pd.DataFrame:
        path, mapping = self.sources[chunk]
        table = pq.read_table(path, columns=LINKED_COLUMNS).to_pandas()
        if mapping is not None and len(table):
            table["particle"] = mapping[table["particle"].to_numpy()]
        return table

    def _grow(self, size: int) -> None:
        if size > len(self.counts):
            extra = size - len(self.counts)
            self.counts = np.r_[self.counts, np.zeros(extra, np.int64)]
            for c in FILTER_COLUMNS:
                self.sums[c] = np.r_[self.sums[c], np.zeros(extra)]
                self.valid[c] = np.r_[self.valid[c], np.zeros(extra, np.int64)]

    def _accumulate(self, table: pd.DataFrame) -> None:
        particle = table["particle"].to_numpy()
        if len(particle):
            self._grow(int(particle.max()) + 1)
            self.counts += np.bincount(particle, minlength=len(self.counts))
            if self.filter_sums:
                for c in FILTER_COLUMNS:
                    values = table[c].to_numpy(float)
                    ok = np.isfinite(values)
                    self.sums[c] += np.bincount(particle[ok], values[ok], minlength=len(self.counts))
                    self.valid[c] += np.bincount(particle[ok], minlength=len(self.counts))
        # QC figures: the first frame's features, sub-pixel histograms, a uniform sample of (mass, size).
        if self.first_features is None:
            self.first_features = table.loc[table["frame"] == self.first_frame, ["x_px", "y_px"]].copy()
        for k, column in enumerate(("x_px", "y_px")):
            self.subpixel[k] += np.histogram(np.mod(table[column].to_numpy(), 1.0), bins=20, range=(0, 1))[0]
        keys = np.r_[self.sample_keys, self.rng.random(len(table))]
        sample = pd.concat([self.sample, table[["mass", "size"]]], ignore_index=True)
        if len(keys) > MAX_POINTS:
            keep = np.argpartition(keys, MAX_POINTS)[:MAX_POINTS]
            keys, sample = keys[keep], sample.iloc[keep].reset_index(drop=True)
        self.sample_keys, self.sample = keys, sample



class _Linked:
    """Rows of the linked chunks (global particle ids) by position range in frame_numbers, read forward.

    Read forward (each ``lo`` at or after the last one's), a chunk that a range starts inside is never wanted
    before that start again, so only its tail is kept. With a halo of a few frames the cache holds the chunk
    in hand, the next one and the previous one's last frames: memory is that of two chunks, whatever the
    number of chunks. A range that starts earlier than the last one reads its chunks again.
    """

    def __init__(self, sink: _Pass1, chunks: list, frame_numbers: np.ndarray):
        self.sink, self.chunks, self.frame_numbers = sink, chunks, frame_numbers
        self.cache: dict[int, pd.DataFrame] = {}
        self.last_lo = 0

    def rows(self, lo: int, hi: int) -> pd.DataFrame:
        lo, hi = max(lo, 0), min(hi, len(self.frame_numbers))
        if lo < self.last_lo:  # a new pass: the tails kept are too short for it
            self.cache.clear()
        self.last_lo = lo
        wanted = [i for i, (a, b) in enumerate(self.chunks) if a < hi and b > lo]
        for i in [i for i in self.cache if i not in wanted]:
            del self.cache[i]
        pieces = []
        for i in wanted:
            if i not in self.cache:
                self.cache[i] = self.sink.load(i)
            a, b = self.chunks[i]
            if a < lo:
                table = self.cache[i]
                self.cache[i] = table[table["frame"].to_numpy() >= self.frame_numbers[lo]]
            table = self.cache[i]
            if b <= hi:
                pieces.append(table)
            else:
                pieces.append(table[table["frame"].to_numpy() <= self.frame_numbers[hi - 1]])
        return pd.concat(pieces, ignore_index=True) if pieces else self.sink_empty()

    def sink_empty(self) -> pd.DataFrame:
        return pd.DataFrame({c: pd.Series(dtype=np.int64 if c in ("frame", "particle") else float)
                             for c in LINKED_COLUMNS})


def _keep_rows(table: pd.DataFrame, keep_particle: np.ndarray, params: TrackingParams) -> pd.DataFrame:
    """The stub filter and the trajectory filter (per trajectory: decided in pass 1; per observation: here)."""
    particle = table["particle"].to_numpy()
    keep = keep_particle[particle] if len(particle) else np.zeros(0, bool)
    flt = params.trajectory_filter
    if flt.per == "observation":
        for column, low, high in (("mass", flt.min_mass, flt.max_mass), ("size", flt.min_size, flt.max_size),
                                  ("ecc", flt.min_ecc, flt.max_ecc)):
            values = table[column].to_numpy()
            if low is not None:
                keep &= values > low
            if high is not None:
                keep &= values < high
    return table.loc[keep].reset_index(drop=True)


def _keep_particles(sink: _Pass1, params: TrackingParams) -> np.ndarray:
    """Per particle id: kept by the stub filter and (per trajectory) by the trajectory filter's means."""
    keep = sink.counts >= params.link.min_length if params.link.min_length > 1 else sink.counts > 0
    flt = params.trajectory_filter
    if flt.per == "trajectory":
        with np.errstate(invalid="ignore", divide="ignore"):
            for column, low, high in (("mass", flt.min_mass, flt.max_mass), ("size", flt.min_size, flt.max_size),
                                      ("ecc", flt.min_ecc, flt.max_ecc)):
                if low is None and high is None:
                    continue
                mean = sink.sums[column] / sink.valid[column]
                if low is not None:
                    keep &= mean > low
                if high is not None:
                    keep &= mean < high
    return keep


def _inside(table: pd.DataFrame, region_px, margin_px: float) -> np.ndarray:
    x0, y0, width, height = region_px
    x, y = table["x_px"].to_numpy(), table["y_px"].to_numpy()
    return (x >= x0 + margin_px) & (x <= x0 + width - margin_px) & (y >= y0 + margin_px) & \
        (y <= y0 + height - margin_px)


def _drift_increments(rows: pd.DataFrame, position_of, method: str) -> pd.DataFrame:
    """Per target position: the median (tracking.link.compute_drift) or mean (trackpy) step of x_px, y_px."""
    if len(rows) == 0:
        return pd.DataFrame(columns=["x_px", "y_px"], dtype=float)
    t = rows.sort_values(["particle", "frame"])
    position = position_of(t["frame"].to_numpy())
    same = (t["particle"].to_numpy()[1:] == t["particle"].to_numpy()[:-1]) & (np.diff(position) == 1)
    steps = np.diff(t[["x_px", "y_px"]].to_numpy(), axis=0)[same]
    target = position[1:][same]
    if method == "median":
        return pd.DataFrame(steps, columns=["x_px", "y_px"]).groupby(target).median()
    # trackpy.compute_drift: the mean over each frame's steps, rows in (particle, frame) order
    return pd.DataFrame({"x_px": steps[:, 0], "y_px": steps[:, 1], "frame": target}).groupby("frame").mean()


def _drift_table(increments: list[pd.DataFrame], n_frames: int, params: TrackingParams) -> pd.DataFrame:
    """Cumulative drift (px) per analysed position, as tracking.link.compute_drift returns it."""
    columns = ["x_px", "y_px"]
    steps = pd.concat(increments) if increments else pd.DataFrame(columns=columns, dtype=float)
    if params.link.drift == "median":
        array = np.zeros((n_frames, 2))
        if len(steps):
            array[steps.index.to_numpy()] = steps[columns].to_numpy()
        return pd.DataFrame(np.cumsum(array, axis=0), columns=columns)
    steps.index.name = "frame"
    if params.link.drift_smoothing > 0:
        steps = steps.rolling(params.link.drift_smoothing, min_periods=0).mean()
    cumulative = steps.cumsum().reindex(np.arange(n_frames))[columns].ffill().fillna(0.0)
    return pd.DataFrame(cumulative.to_numpy(), columns=columns)


def _size_buckets_and_drift(linked: _Linked, chunks: list, keep_particle: np.ndarray, stub_kept: np.ndarray,
                            params: TrackingParams, position_of, frame_numbers: np.ndarray, region_px,
                            margin_px: float, bucket_paths: list[Path]) -> list[pd.DataFrame]:
    """Pass 2a: each kept row's (particle, size, inside) into its bucket file; the drift's per-frame steps."""
    writers: dict[int, pq.ParquetWriter] = {}
    increments = []
    try:
        for i, (a, b) in enumerate(chunks):
            # one frame before the chunk: the steps into its first frame
            step, pieces = _chunk_sizes_and_steps(linked.rows(a - 1 if i else a, b), frame_numbers[a], keep_particle,
                                                  stub_kept, params, position_of, region_px, margin_px,
                                                  len(bucket_paths))
            if step is not None:
                increments.append(step[step.index >= a] if i else step)
            for k, piece in pieces.items():
                if k not in writers:
                    writers[k] = pq.ParquetWriter(bucket_paths[k], piece.schema)
                writers[k].write_table(piece)
    finally:
        for writer in writers.values():
            writer.close()
    return increments


SIZE_BUCKET_SCHEMA = pa.schema([("particle", pa.int64()), ("size", pa.float64()), ("inside", pa.bool_())])


def _chunk_sizes_and_steps(rows: pd.DataFrame, first_frame: int, keep_particle: np.ndarray, stub_kept: np.ndarray,
                           params: TrackingParams, position_of, region_px, margin_px: float, n_buckets: int
                           ) -> tuple[pd.DataFrame | None, dict[int, pa.Table]]:
    """One chunk of pass 2a: its drift steps (or None) and its (particle, size, inside) rows by bucket."""
    kept = _keep_rows(rows, keep_particle, params)
    step = None
    if params.link.drift in ("median", "mean"):
        source_rows = (kept if params.link.drift_from == "filtered"
                       else rows[stub_kept[rows["particle"].to_numpy()]])
        step = _drift_increments(source_rows, position_of, params.link.drift)
    own = kept[kept["frame"].to_numpy() >= first_frame]
    inside = _inside(own, region_px, margin_px)
    particle = own["particle"].to_numpy(np.int64)
    size = own["size"].to_numpy(float)
    bucket = particle % n_buckets
    pieces = {}
    for k in np.unique(bucket):
        here = bucket == k
        pieces[int(k)] = pa.table({"particle": particle[here], "size": size[here], "inside": inside[here]},
                                  schema=SIZE_BUCKET_SCHEMA)
    return step, pieces


def _trajectory_columns(rows: pd.DataFrame, first_frame: int, last_frame: int, drift: pd.DataFrame | None,
                        species_map: np.ndarray, params: TrackingParams, pixel_size_um: float, frame_rate_hz: float,
                        frame_step: int) -> dict[str, np.ndarray]:
    """One chunk of pass 2b: kept rows with their halo in; the chunk's TRAJECTORY_COLUMNS out, rows in
    (frame, particle) order.

    The numbers of track_video's table operations (positions in µm less the drift, tracking.motion's
    velocities, the species), computed column by column: each column is copied once, in the final order,
    where sorting and filtering the table would copy every column several times.
    """
    frame = rows["frame"].to_numpy(np.int64)
    particle = rows["particle"].to_numpy(np.int64)
    x = rows["x_px"].to_numpy() * pixel_size_um
    y = rows["y_px"].to_numpy() * pixel_size_um
    if drift is not None:  # tracking.link.subtract_drift's arithmetic
        shift = drift.reindex(frame)
        x = x - shift["x"].to_numpy()
        y = y - shift["y"].to_numpy()
    velocity = velocities(particle, frame, np.column_stack([x, y]), frame_rate_hz, params.velocity, frame_step)
    own = np.flatnonzero((frame >= first_frame) & (frame <= last_frame))
    own = own[np.lexsort((particle[own], frame[own]))]
    columns = {"frame": frame[own], "t": frame[own] / frame_rate_hz, "particle": particle[own],
               "x": x[own], "y": y[own], "vx": velocity[own, 0], "vy": velocity[own, 1],
               "species": species_map[particle[own]].astype(np.int64)}
    for name in TRAJECTORY_COLUMNS:
        if name not in columns:
            columns[name] = rows[name].to_numpy()[own]
    return {name: columns[name] for name in TRAJECTORY_COLUMNS}


class _TrajectoryFile:
    """trajectories.parquet written one row group per chunk, with the lengths, frame counts and figure it feeds."""

    def __init__(self, path: Path, n_particles: int, n_frames: int, position_of, figures: _TrajectoryFigures):
        self.path, self.position_of, self.figures = path, position_of, figures
        self.lengths = np.zeros(n_particles, np.int64)
        self.in_trajectories = np.zeros(n_frames, np.int64)
        self.schema, self.writer = None, None

    def write(self, columns: dict[str, np.ndarray]) -> None:
        if self.writer is None:  # the schema pandas would write (its metadata too): the one-job file's
            empty = pd.DataFrame({name: values[:0] for name, values in columns.items()})
            self.schema = pa.Schema.from_pandas(empty, preserve_index=False)
            self.writer = pq.ParquetWriter(self.path, self.schema)
        self.writer.write_table(pa.table(columns, schema=self.schema))
        particle, frame = columns["particle"], columns["frame"]
        if len(particle):
            self.lengths += np.bincount(particle, minlength=len(self.lengths))
        self.in_trajectories += np.bincount(self.position_of(frame), minlength=len(self.in_trajectories))
        self.figures.add(particle, frame, columns["x_px"], columns["y_px"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

def _species_labels(bucket_paths: list[Path], params: TrackingParams, region_px, margin_px: float
                    ) -> tuple[pd.Series, dict]:
    """classify_species on each trajectory's exact median size, computed bucket by bucket (memory: per bucket)."""
    confident, every = [], []
    for path in bucket_paths:
        table = pq.read_table(path).to_pandas() if path.exists() else pd.DataFrame(
            {"particle": [], "size": [], "inside": []})
        every.append(table.groupby("particle")["size"].median())
        confident.append(table[table["inside"].astype(bool)].groupby("particle")["size"].median())
    every = pd.concat(every).sort_index() if every else pd.Series(dtype=float)
    confident = pd.concat(confident).sort_index() if confident else pd.Series(dtype=float)
    x0, y0, width, height = region_px
    # One row per trajectory with its median: inside the region where it has rows away from the edges
    # (their median), else outside it (the median of all its rows): classify_species then sees the medians
    # track_video's whole table gives it.
    outside = every.drop(confident.index)
    table = pd.DataFrame({
        "particle": np.r_[confident.index.to_numpy(), outside.index.to_numpy()].astype(np.int64),
        "size": np.r_[confident.to_numpy(), outside.to_numpy()],
        "x_px": np.r_[np.full(len(confident), x0 + 0.5 * width), np.full(len(outside), x0 - margin_px - 1.0)],
        "y_px": np.r_[np.full(len(confident), y0 + 0.5 * height), np.full(len(outside), y0 - margin_px - 1.0)],
    })
    labels, record = classify_species(table, params.species, region_px=region_px, margin_px=margin_px)
    return pd.Series(labels.to_numpy(), index=table["particle"].to_numpy()), record


class _TrajectoryFigures:
    """The trajectories over the first frame and the per-frame counts, drawn as the row groups pass."""

    def __init__(self, first_image: np.ndarray, origin_px):
        from PIL import ImageDraw

        self.picture, self.zoom = _frame_picture(first_image)
        self.draw = ImageDraw.Draw(self.picture)
        self.origin = origin_px
        self.last: dict[int, tuple[float, float]] = {}

    def add(self, particle: np.ndarray, frame: np.ndarray, x_px: np.ndarray, y_px: np.ndarray) -> None:
        if len(particle) == 0:
            return
        order = np.lexsort((frame, particle))
        x0, y0 = self.origin
        x, y = _to_picture(x_px[order] - x0, y_px[order] - y0, self.zoom)
        particle = particle[order]
        starts = np.flatnonzero(np.r_[True, particle[1:] != particle[:-1], True])
        for start, stop in itertools.pairwise(starts):
            points = list(zip(x[start:stop], y[start:stop], strict=True))
            p = int(particle[start])
            if p in self.last:
                points.insert(0, self.last[p])
            if len(points) > 1:
                self.draw.line(points, fill=(255, 140, 0), width=1)
            self.last[p] = points[-1]


def _write_stream_figures(qc_dir: Path, first_image: np.ndarray, origin_px, sink: _Pass1, drawn: _TrajectoryFigures,
                          frame_numbers: np.ndarray, counts: np.ndarray, in_trajectories: np.ndarray,
                          n_trajectories: int, diameter_px: float) -> list[str]:
    """The five QC figures of tracking.qc.write_figures, from what the passes gathered."""
    from matplotlib.figure import Figure

    qc_dir.mkdir(parents=True, exist_ok=True)
    first = int(frame_numbers[0])
    here = sink.first_features if sink.first_features is not None else pd.DataFrame({"x_px": [], "y_px": []})
    annotated_frame_figure(qc_dir / "annotated_frame.png", first_image, origin_px, here, diameter_px, first)

    fig = Figure(figsize=(5, 4), dpi=80)
    ax = fig.add_axes((0.15, 0.13, 0.8, 0.82))
    ax.scatter(sink.sample["mass"], sink.sample["size"], s=3, alpha=0.4, edgecolors="none")
    ax.set_xlabel("mass (integrated band-passed brightness)")
    ax.set_ylabel("size: radius of gyration (px)")
    fig.savefig(qc_dir / "mass_size.png", **SAVE)

    fig = Figure(figsize=(7, 3), dpi=80)
    axes = fig.subplots(1, 2, sharey=True, gridspec_kw={"left": 0.1, "right": 0.97, "bottom": 0.17, "top": 0.88})
    edges = np.linspace(0, 1, 21)
    for ax, column, hist in zip(axes, ("x_px", "y_px"), sink.subpixel, strict=True):
        ax.stairs(hist, edges, fill=True)
        ax.set_xlabel(f"{column} mod 1")
    axes[0].set_ylabel("features")
    fig.suptitle("sub-pixel bias: flat is good")
    fig.savefig(qc_dir / "subpixel_bias.png", **SAVE)

    drawn.draw.text((4, 2), f"{n_trajectories} trajectories", fill=(255, 255, 0))
    drawn.picture.save(qc_dir / "trajectories.png", compress_level=1)

    features_per_frame_figure(qc_dir / "features_per_frame.png", frame_numbers, counts, in_trajectories)
    return ["annotated_frame.png", "mass_size.png", "subpixel_bias.png", "trajectories.png", "features_per_frame.png"]


def _refine_record(plan: dict, files: list[Path]) -> dict | None:
    """qc.json's refine record, summed over the chunks (the shift percentiles are left out)."""
    refine = plan.get("refine")
    if refine is None or "skipped" in refine:
        return refine
    params = _plan_params(plan)
    counts = np.zeros(len(STATUS), np.int64)
    for path in files:
        if "refine_status" in pq.read_schema(path).names:
            status = _read_features(path, ["refine_status"])["refine_status"].to_numpy(np.int64)
            counts += np.bincount(status, minlength=len(STATUS))
    total = int(counts.sum())
    resolved = ResolvedLocate(**plan["resolved"])
    return {"method": "psf_fit", "radius_px": round(float(refine["radius_px"]), 3),
            "sweeps": int(params.locate.refine_sweeps), "border_px": int(resolved.margin_px),
            "max_shift_px": float(params.locate.refine_max_shift_px), "profile": refine["profile"],
            "features": total, "refined": int(counts[0]),
            "fraction_refined": float(counts[0] / total) if total else None,
            "kept_centroid": {name: int(counts[k]) for k, name in enumerate(STATUS) if k > 0},
            "shift_px": None}


def _link_pass(plan: dict, params: TrackingParams, files: list[Path], counts: np.ndarray, link_files,
               sink: _Pass1, pixel_size_um: float) -> tuple[dict, dict]:
    """Pass 1: every chunk's linked rows into ``sink``, with the particle ids of an unsplit run.

    Without ``link_files``: trackpy's linker runs here over every frame in order (one process). With them
    (link_chunk's files, one per chunk): a chunk whose starting state equals its predecessor's final state
    (``_same_state``), with the same search range (and, where nothing was linked before it, the same
    bootstrap frames) has the unsplit run's links, and only its ids are mapped; any other chunk is linked
    again here from its predecessor's final state, which is always exact. Returns the link record
    (qc.json's resolved.link) and what the split linking did (qc.json's split.link).
    """
    chunks = plan["chunks"]
    frame_numbers = np.asarray(plan["frame_numbers"], np.int64)
    search_range_px, record = _search_range(params, _Peekable(_frame_stream(files)), pixel_size_um)
    first_two = [int(f) for f in frame_numbers[np.flatnonzero(counts)[:2]]]
    split = {"overlap_frames": plan["link_overlap_frames"], "per_chunk": link_files is not None,
             "boundaries": len(chunks) - 1, "relinked": []}
    bootstrap = None
    try:
        with warnings.catch_warnings(), quiet_trackpy():
            warnings.simplefilter("ignore")
            if link_files is None:
                bootstrap = _link_serially(params, files, search_range_px, pixel_size_um, len(chunks), sink)
            else:
                bootstrap = _stitch(plan, params, files, counts, [Path(p) for p in link_files], search_range_px,
                                    pixel_size_um, first_two, sink, split)
    except SubnetOversizeException as error:
        raise _oversize(error, search_range_px, pixel_size_um) from None
    if params.link.predictor != "none" and len(first_two) >= 2:
        record["bootstrap_velocity_field_px_per_frame"] = None if bootstrap is None else bootstrap["record"]
    split["boundaries_relinked"] = sum(1 for r in split["relinked"] if r["chunk"] > 0)
    return record, split


def _link_serially(params, files, search_range_px, pixel_size_um, n_chunks, sink) -> dict | None:
    """One linker over every frame in order; each chunk's rows written as it completes."""
    frames = _Peekable(_frame_stream(files))
    engine = _LinkEngine(params, search_range_px, pixel_size_um)
    first = frames.take(2)
    if first:
        engine.start(first)
    pending, done = [], 0
    for chunk, frame in frames:
        while done < chunk:
            sink.write(done, _linked_table(pending))
            pending, done = [], done + 1
        pending.append(frame.assign(particle=engine.link(frame)))
    while done < n_chunks:
        sink.write(done, _linked_table(pending))
        pending, done = [], done + 1
    return engine.bootstrap


def _stitch(plan, params, files, counts, link_files, search_range_px, pixel_size_um, first_two, sink,
            split) -> dict | None:
    """Check each chunk's link file against its predecessor; map its ids or link it again (see _link_pass)."""
    chunks = plan["chunks"]
    if len(link_files) != len(chunks):
        raise TrackingInputError(f"{len(link_files)} link file(s) given for the plan's {len(chunks)} chunks; give "
                                 f"one file per chunk (link_chunk's), in order")
    frame_numbers = np.asarray(plan["frame_numbers"], np.int64)
    previous, next_global, bootstrap = None, 0, None
    for i, path in enumerate(link_files):
        link = _read_link(path, plan, i)
        a, b = chunks[i]
        if link["meta"]["rows"] != int(counts[a:b].sum()):
            raise TrackingInputError(f"{path}: {link['meta']['rows']} linked rows for the {int(counts[a:b].sum())} "
                                     f"features of chunk {i}: linked from other features; run link_chunk for it again")
        rows = pq.read_table(path, columns=LINKED_COLUMNS).to_pandas() if link["meta"]["rows"] else None
        reason = None
        if link["meta"]["search_range"]["search_range_px"] != search_range_px:
            reason = (f"its search range ({link['meta']['search_range']['search_range_px']:.6g} px) is not the "
                      f"video's ({search_range_px:.6g} px)")
        elif not _same_state(previous, link["start"]):
            reason = (f"its linker's state at frame {frame_numbers[a]} after {link['meta']['warm_up']['frames']} "
                      f"warm-up frame(s) differs from the state the previous chunk ends in")
        elif link["start"] is None and params.link.predictor != "none" and link["meta"]["rows"] and \
                (link["meta"]["bootstrap"] or {}).get("frames") != first_two:
            reason = "its predictor was bootstrapped on other frames than the video's first two"
        if reason is None:
            mapping, end, next_global_after = _stitch_ids(link, previous, next_global)
            if rows is not None:
                local = rows["particle"].to_numpy()
                if local.max() >= len(mapping) or (mapping[local] < 0).any() or (
                        end is not None and (end["particle"] < 0).any()):
                    reason = "some of its trajectories start in the warm-up but not in the state it starts from"
                else:
                    rows["particle"] = mapping[local]
        if reason is None:
            if rows is None:
                rows = _linked_table([])
                sink.write(i, rows)
            else:
                sink.mapped(i, path, mapping, rows)
            if previous is None and link["meta"]["rows"]:  # the chunk linking starts in
                bootstrap = link["meta"]["bootstrap"]
            previous, next_global = end, next_global_after
            continue
        # linked again here, from the previous chunk's final state (or from the start of the video)
        split["relinked"].append({"chunk": i, "first_frame": int(frame_numbers[a]), "reason": reason})
        engine = _LinkEngine(params, search_range_px, pixel_size_um)
        frames = _Peekable(_frame_stream(files[i:], i))
        if previous is None:
            first = frames.take(2)
            if first:
                engine.start(first)
        else:
            engine.restore(previous)
        own = []
        for chunk, frame in frames:
            if chunk != i:
                break
            own.append(frame.assign(particle=engine.link(frame)))
        sink.write(i, _linked_table(own))
        if previous is None and engine.bootstrap is not None:
            bootstrap = engine.bootstrap
        state = engine.state()
        if state is not None:
            previous, next_global = state, state["next_particle"]
    return bootstrap


def link_chunks(plan, feature_files, out_dir, *, truth_pixels=None, link_files=None) -> StreamingResult:
    """The gather: stitch the chunks' links (or link their features streaming), then filter, remove drift, add
    velocities and species.

    ``link_files``: link_chunk's output of every chunk, in order (None: link here, in one process).

    Writes into ``out_dir`` (created; other files there, such as the plan and
    the features folder, are left alone): ``trajectories.parquet`` (one row
    group per chunk, columns of tracking.pipeline.TRAJECTORY_COLUMNS),
    ``qc.json``, ``qc/*.png``, ``drift.csv`` (with a drift) and, with
    ``truth_pixels``, ``accuracy.json``. Each file is replaced whole (written
    beside it, then renamed), qc.json last.

    Memory: one chunk of features (pass 1) or of linked rows with its halo
    (pass 2), per-trajectory counts and sums, per-frame counts and the drift
    (a few numbers per frame). With ``truth_pixels`` the accuracy report reads
    the whole trajectories table (the truth is whole in memory anyway).
    """
    timing = {}
    start_time = time.perf_counter()
    plan = load_plan(plan)
    params = _plan_params(plan)
    _check_split_supported(params)
    check_units(plan["units"]["pixel_size_um"], plan["units"]["frame_rate_hz"])
    n_frames = len(plan["frame_numbers"])
    resolved = ResolvedLocate(**plan["resolved"])
    source = plan["source"]
    truth = load_truth(truth_pixels)
    files, counts = _check_feature_files(plan, feature_files)
    if counts.sum() == 0:
        raise TrackingInputError(
            f"{source}: no particle found in any of the {n_frames} frames (diameter {resolved.diameter} px, "
            f"minmass {resolved.minmass:.4g}, invert {resolved.invert}); check locate.invert (true for dark "
            f"particles), lower locate.minmass or loosen the mass/size/ecc filters")
    checks = {"packing": check_packing_counts(counts, tuple(plan["frame_shape_px"]), resolved,
                                              params.checks.max_packing_ratio, source)}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".link-", dir=out_dir))
    try:
        result = _gather(plan, params, files, counts, out_dir, work, truth, checks, timing, link_files)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result.qc["timing_s"]["total"] = round(time.perf_counter() - start_time, 3)
    _write_json(out_dir / "qc.json", result.qc)
    return result


def _gather(plan, params, files, counts, out_dir, work, truth, checks, timing, link_files) -> StreamingResult:
    pixel_size_um, frame_rate_hz = plan["units"]["pixel_size_um"], plan["units"]["frame_rate_hz"]
    frame_numbers = np.asarray(plan["frame_numbers"], np.int64)
    n_frames, chunks, frame_step = len(frame_numbers), plan["chunks"], plan["frame_step"]
    resolved = ResolvedLocate(**plan["resolved"])
    source = plan["source"]
    height, width = plan["frame_shape_px"]
    origin = tuple(plan["roi_origin_px"])
    region = (*origin, width, height)
    chosen = dict(plan["auto"])
    flt = params.trajectory_filter
    filtering = any(getattr(flt, k) is not None for k in ("min_mass", "max_mass", "min_size", "max_size",
                                                          "min_ecc", "max_ecc"))

    def position_of(frames):
        return np.searchsorted(frame_numbers, frames)

    # Pass 1: link.
    mark = time.perf_counter()
    sink = _Pass1(work, len(chunks), int(frame_numbers[0]), filter_sums=filtering and flt.per == "trajectory")
    link_record, split_link = _link_pass(plan, params, files, counts, link_files, sink, pixel_size_um)
    if "search_range" in link_record:
        chosen["search_range"] = link_record.pop("search_range")
    checks["short_trajectories"] = check_short_lengths(
        sink.counts[sink.counts > 0], n_frames, params.checks.max_short_fraction,
        _search_range_text(params, link_record["search_range_px"], pixel_size_um), source)
    keep_particle = _keep_particles(sink, params) if filtering else (
        sink.counts >= params.link.min_length if params.link.min_length > 1 else sink.counts > 0)
    stub_kept = sink.counts >= params.link.min_length if params.link.min_length > 1 else sink.counts > 0
    timing["link"] = time.perf_counter() - mark

    # Pass 2a: drift increments and the species' median sizes.
    mark = time.perf_counter()
    linked = _Linked(sink, chunks, frame_numbers)
    drift_method = params.link.drift
    kept_rows_bound = int(sink.counts[keep_particle].sum())
    n_buckets = max(1, math.ceil(kept_rows_bound / SPECIES_BUCKET_ROWS))
    bucket_paths = [work / f"species-{b:04d}.parquet" for b in range(n_buckets)]
    increments = _size_buckets_and_drift(linked, chunks, keep_particle, stub_kept, params, position_of,
                                         frame_numbers, region, resolved.diameter, bucket_paths)
    species_of, species_record = _species_labels(bucket_paths, params, region, resolved.diameter)
    drift = None
    if drift_method in ("median", "mean"):
        drift_px = _drift_table(increments, n_frames, params)
        drift = pd.DataFrame({"x": drift_px["x_px"].to_numpy() * pixel_size_um,
                              "y": drift_px["y_px"].to_numpy() * pixel_size_um},
                             index=pd.Index(frame_numbers, name="frame"))
    timing["drift_species"] = time.perf_counter() - mark

    # Pass 2b: filters, drift, velocities, species; one row group per chunk.
    mark = time.perf_counter()
    halo = params.velocity.window if params.velocity.smoothing == "savgol" else 1
    video = _open_planned_video(plan, params)
    first_image = video.read(0)
    species_map = np.zeros(len(sink.counts), np.int64)
    if len(species_of):
        species_map[species_of.index.to_numpy()] = species_of.to_numpy()
    out = _TrajectoryFile(work / "trajectories.parquet", len(sink.counts), n_frames, position_of,
                          _TrajectoryFigures(first_image, origin))
    velocity_noise = None
    try:
        for i, (a, b) in enumerate(chunks):
            columns = _trajectory_columns(_keep_rows(linked.rows(a - halo, b + halo), keep_particle, params),
                                          frame_numbers[a], frame_numbers[b - 1], drift, species_map, params,
                                          pixel_size_um, frame_rate_hz, frame_step)
            out.write(columns)
            if i == 0:  # on the first chunk only: one chunk's table is all the memory allows
                velocity_noise = velocity_noise_report(
                    pd.DataFrame(columns), params.velocity, frame_rate_hz=frame_rate_hz, pixel_size_um=pixel_size_um,
                    frame_step=frame_step, region_px=region, mask_diameter_px=resolved.diameter,
                    truth=None if truth is None else truth[truth["frame"].between(frame_numbers[a],
                                                                                   frame_numbers[b - 1])])
                velocity_noise["frames"] = {"first": int(frame_numbers[a]), "last": int(frame_numbers[b - 1]),
                                            "scope": "the first chunk only (split tracking)"}
            del columns  # before the next chunk's are built: one chunk's rows in memory, not two
    finally:
        out.close()
    lengths, in_trajectories, drawn, trajectories_tmp = out.lengths, out.in_trajectories, out.figures, out.path
    timing["velocities"] = time.perf_counter() - mark

    lengths = lengths[lengths > 0]
    stub_lengths = sink.counts[stub_kept]
    filtered = {"trajectories_before": int(stub_kept.sum()), "observations_before": int(stub_lengths.sum()),
                "trajectories_after": len(lengths), "observations_after": int(lengths.sum())}
    summary = qc.summary_from_counts(frame_numbers, counts, lengths, in_trajectories)
    report_warnings = qc.empty_frame_warnings(source, summary)
    for message in report_warnings:
        log.warning(message)

    mark = time.perf_counter()
    drift_velocity = None
    if drift is not None:
        drift_velocity = pd.DataFrame(
            finite_differences(drift.to_numpy(), frame_numbers / frame_rate_hz, np.zeros(len(drift), int)),
            index=drift.index, columns=["vx", "vy"])
    accuracy = None
    if truth is not None:
        accuracy = accuracy_report(pd.read_parquet(trajectories_tmp), truth, pixel_size_um=pixel_size_um,
                                   frame_numbers=frame_numbers, region_px=region, mask_diameter_px=resolved.diameter,
                                   drift_velocity_um_s=drift_velocity)
    timing["reports"] = time.perf_counter() - mark

    report = qc.report(
        source=source, reader=plan["reader"], frame_numbers=frame_numbers, frame_step=frame_step,
        frame_shape_px=[height, width], roi_origin_px=origin, summary=summary, warnings=report_warnings,
        auto=chosen, checks=checks, trajectory_filter=filtered, species=species_record,
        velocity_noise=velocity_noise, refine=_refine_record(plan, files), resolved_locate=dataclasses.asdict(resolved),
        resolved_link=link_record, parameters=plan["parameters"], units=plan["units"], processes=1,
        software=software_versions("trackpy", "pims", "numpy", "scipy", "pandas", "pyarrow"),
        split={
            "chunks": len(chunks), "chunk_frames": plan["chunk_frames"], "velocity_halo_frames": halo,
            "trajectory_row_groups": len(chunks),
            "computed_on_part": {"velocity_noise": "the frames of the first chunk"},
            "left_out": {"refine.shift_px": "percentiles of the refinement's shifts need every feature at once",
                         "figures.mass_size": f"drawn from a uniform sample of at most {MAX_POINTS} features, "
                                              "as the one-job figure",
                         "features.parquet": "the features are the chunk files of the features folder (a "
                                             "parquet dataset), not one file"},
            "link": split_link,
            "processes": ("locate_chunk and link_chunk run one job per chunk; the gather runs in one process"
                          if split_link["per_chunk"] else
                          "locate_chunk runs one job per chunk; the gather links and runs in one process"),
        })

    mark = time.perf_counter()
    qc_tmp = work / "qc"
    report["figures"] = _write_stream_figures(qc_tmp, first_image, origin, sink, drawn, frame_numbers, counts,
                                              in_trajectories, len(lengths), resolved.diameter)
    os.replace(trajectories_tmp, out_dir / "trajectories.parquet")
    qc_dir = out_dir / "qc"
    qc_dir.mkdir(exist_ok=True)
    for name in report["figures"]:
        os.replace(qc_tmp / name, qc_dir / name)
    if drift is not None:
        table = drift.reset_index()
        table.insert(1, "t", table["frame"] / frame_rate_hz)
        csv = work / "drift.csv"
        table.to_csv(csv, index=False)
        os.replace(csv, out_dir / "drift.csv")
    if accuracy is not None:
        _write_json(out_dir / "accuracy.json", accuracy)
    timing["write"] = time.perf_counter() - mark
    report["timing_s"] = {k: round(v, 3) for k, v in timing.items()}
    return StreamingResult(out_dir=out_dir, trajectories_path=out_dir / "trajectories.parquet",
                           feature_files=list(files), qc=report, accuracy=accuracy)
