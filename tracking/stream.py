"""Tracking a long video in bounded memory, and split into jobs: plan, locate per chunk, link per chunk, gather.

``tracking.pipeline.track_video`` holds every feature and trajectory of a
video in memory at once. Here the same tracking is cut into four steps whose
memory depends on the particles per frame and the chunk size, never on the
number of frames (docs/tracking.md, *Long videos: chunks, bounded memory,
split jobs*):

1. ``plan_tracking``: open the video, resolve every automatic locate
   parameter ONCE from the first frames (``tracking.pipeline.resolve_locate``,
   the one-job path's own code), measure the sub-pixel refinement's spot
   profile (``refine: psf_fit``) on the first frames, and cut the selected
   frames into chunks of ``chunk_frames`` frames. The plan is a small JSON file.
2. ``locate_chunk``: locate (and refine) the frames of one chunk with the
   plan's parameters and write them to one parquet file. Locating is
   deterministic frame by frame, so the chunk files together hold exactly the
   features of an unsplit run. Chunks are independent: one Snakemake job each.
3. ``link_chunk``: link the frames of one chunk with trackpy's iterative
   linker (``_LinkEngine``: the predictors and the bootstrap of
   ``tracking.link.link_features``), starting ``link_overlap_frames`` frames
   earlier (the warm-up), and write the chunk's linked rows (ids local to the
   job) and the linker's state before the chunk's first frame and after its
   last. One Snakemake job per chunk.
4. ``link_chunks``: the gather. Pass 1 checks each chunk's starting state
   against its predecessor's final state: equal (the same features to link
   from, the same predictor field), the chunk's links are the unsplit run's and
   only its particle ids are mapped; otherwise the chunk is linked again here
   from the predecessor's state (always exact). Without link files it links
   every frame in order itself. It counts each trajectory's length and sums
   its mass, size and eccentricity. Pass 2a measures the
   drift (per frame pair) and each trajectory's median size (exactly, through
   temporary bucket files) for the species. Pass 2b reads the linked chunks
   again with a halo of frames on either side (the velocity stencil's reach),
   applies the stub and trajectory filters, the drift, the velocities
   (``tracking.motion``) and the species, and writes ``trajectories.parquet``
   one row group per chunk (pyarrow ParquetWriter), readable lazily.

The trajectories are those of ``track_video`` (tests/test_tracking_stream.py
compares particle ids, frames, positions and velocities). What qc.json of the
one-job path holds and cannot be had in bounded memory is computed on part of
the data or left out, and qc.json's ``split`` section says which.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.interpolate import NearestNDInterpolator
from trackpy.linking.linking import Linker
from trackpy.linking.utils import Point, SubnetOversizeException, TrackUnstored
from trackpy.predict import NearestVelocityPredict

from mpd.atomic import atomic_write_bytes
from mpd.jsonsafe import json_ready
from mpd.provenance import software_versions

from ._quiet import quiet_trackpy
from .accuracy import accuracy_report
from .checks import check_packing_counts, check_short_lengths
from .flatten import flatten_frames
from .io import TrackingInputError, open_video
from .link import (
    POS_COLUMNS,
    AffineVelocityPredict,
    LinkingError,
    _first_pair_velocities,
    auto_search_range_px,
    bootstrap_field,
)
from .locate import ResolvedLocate, filter_features, locate_stack, prepare
from .motion import finite_differences, velocities
from .noise import velocity_noise_report
from .params import _NESTED, AUTO, ParameterError, TrackingParams, as_params, to_dict
from .pipeline import FEATURE_COLUMNS, TRAJECTORY_COLUMNS, _search_range_text, check_units, load_truth, resolve_locate
from .qc import MAX_POINTS, SAVE, _frame_picture, _to_picture, annotated_frame_figure, features_per_frame_figure
from .refine import (
    STATUS,
    RefineError,
    RefineSkippedWarning,
    measure_spot_model,
    refine_frame,
    resolve_radius,
    spot_model,
)
from .species import classify_species

log = logging.getLogger(__name__)

PLAN_VERSION = 2
DEFAULT_CHUNK_FRAMES = 200
# Frames are read for locating in stacks of at most this many bytes (as tracking.io.Video.chunks).
STACK_BYTES = 256 * 2**20
# The exact per-trajectory median size (species) is computed bucket by bucket of about this many rows.
SPECIES_BUCKET_ROWS = 4_000_000
LINKED_COLUMNS = ["frame", "particle", "x_px", "y_px", "mass", "size", "ecc", "signal", "raw_mass", "ep"]
FILTER_COLUMNS = ("mass", "size", "ecc")


def chunk_file_name(chunk: int) -> str:
    """The file name of a chunk's features: ``chunk-00000.parquet`` (the features dataset's layout)."""
    return f"chunk-{int(chunk):05d}.parquet"


def check_chunk_frames(chunk_frames) -> int:
    """``tracking.chunk_frames`` must be an integer >= 2 (frames per chunk)."""
    if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, (int, np.integer)) or chunk_frames < 2:
        raise ParameterError(f"tracking.chunk_frames must be an integer >= 2 (frames per chunk) or null (one job, "
                             f"in memory), got {chunk_frames!r}")
    return int(chunk_frames)


def _check_split_supported(params: TrackingParams) -> None:
    if params.link.drift == "registration":
        raise ParameterError(
            "tracking.link.drift: registration is not available with tracking.chunk_frames (split tracking): "
            "it registers whole frames before linking; use drift: median or mean, or set tracking.chunk_frames: "
            "null to track the video in one job")


def _write_json(path: Path, data: dict) -> None:
    atomic_write_bytes((json.dumps(json_ready(data), indent=2, allow_nan=False) + "\n").encode(), path)


# --- 1. the plan ------------------------------------------------------------------------------------------------

def plan_tracking(frames_path, params: TrackingParams | dict | None = None, *, pixel_size_um: float,
                  frame_rate_hz: float, chunk_frames: int, out_path=None) -> dict:
    """Resolve the automatic parameters once and cut the video into chunks; return (and write) the plan.

    Parameters
    ----------
    frames_path : str or path
        The video (any input ``tracking.io.open_video`` reads).
    params : TrackingParams, dict or None
        The experiment's ``tracking:`` section; None takes every default.
    pixel_size_um, frame_rate_hz : float
        µm per pixel and frames per second (required, as for track_video).
    chunk_frames : int
        Frames per chunk (>= 2); the last chunk holds the rest.
    out_path : path, optional
        Where to write the plan (JSON, atomically).

    Returns the plan: ``version``, ``source``, ``frame_numbers`` (the
    selected frames), ``chunks`` ([first, stop) positions in frame_numbers),
    ``resolved`` (tracking.locate.ResolvedLocate), ``auto`` (the automatic
    choices, as qc.json's), ``flatten_size_px``, ``refine`` (the measured
    spot model or why there is none), ``parameters``, ``units``, frame geometry.
    """
    pixel_size_um, frame_rate_hz = check_units(pixel_size_um, frame_rate_hz)
    chunk_frames = check_chunk_frames(chunk_frames)
    params = as_params(params)
    _check_split_supported(params)
    video = open_video(frames_path, params.frame_range, params.roi, params.locate.channel)
    resolved, chosen, _, flatten, flatten_size = resolve_locate(video, params)
    refine = _plan_refine(video, params, resolved, flatten)
    n = len(video)
    chunks = [[start, min(start + chunk_frames, n)] for start in range(0, n, chunk_frames)]
    overlap = link_overlap(params)
    auto_range = params.link.search_range_px is None and params.link.search_range_um == AUTO
    plan = {
        "version": PLAN_VERSION,
        "source": os.fspath(frames_path),
        "reader": type(video.reader).__name__,
        "frame_numbers": [int(f) for f in video.frame_numbers],
        "frame_step": params.frame_range.step if params.frame_range is not None else 1,
        "frame_shape_px": list(video.frame_shape),
        "roi_origin_px": list(video.origin_px),
        "chunk_frames": chunk_frames,
        "chunks": chunks,
        "link_overlap_frames": overlap,
        "link_inputs": _link_inputs(chunks, overlap, auto_range),
        "resolved": dataclasses.asdict(resolved),
        "flatten_size_px": flatten_size,
        "auto": chosen,
        "refine": refine,
        "parameters": to_dict(params),
        "units": {"pixel_size_um": pixel_size_um, "frame_rate_hz": frame_rate_hz},
    }
    if out_path is not None:
        _write_json(Path(out_path), plan)
    return json.loads(json.dumps(json_ready(plan)))  # exactly what a reader of the file gets


def _locate_positions(video, params: TrackingParams, resolved: ResolvedLocate, flatten_size, start: int, stop: int,
                      processes: int = 1) -> pd.DataFrame:
    """trackpy's features (px of the full frame, filtered) of the selected frames start .. stop - 1."""
    pieces = []
    if stop > start:
        first = video.read(start)
        size = max(1, int(STACK_BYTES // max(first.nbytes, 1)))
        for begin in range(start, stop, size):
            end = min(begin + size, stop)
            stack = np.empty((end - begin,) + first.shape, dtype=first.dtype)
            for i in range(begin, end):
                stack[i - begin] = first if i == start else video.read(i)
            if flatten_size is not None:
                stack = flatten_frames(stack, params.locate.flatten, flatten_size, resolved.invert)
            pieces.append(locate_stack(prepare(stack, resolved.invert), video.frame_numbers[begin:end], resolved,
                                       processes))
    if not pieces:
        from .locate import tidy

        return tidy(pd.DataFrame())
    features = pd.concat(pieces, ignore_index=True)
    x0, y0 = video.origin_px
    features["x"] += x0
    features["y"] += y0
    return filter_features(features, params.locate)


def _plan_refine(video, params: TrackingParams, resolved: ResolvedLocate, flatten_size) -> dict | None:
    """The psf_fit spot model measured on the first frames (as refine_features does), or why there is none."""
    loc = params.locate
    if loc.refine == "none":
        return None
    radius = resolve_radius(loc.refine_radius_px, resolved.diameter)
    n_cal = min(int(loc.refine_profile_frames), len(video))
    features = _locate_positions(video, params, resolved, flatten_size, 0, n_cal)
    x_origin, y_origin = video.origin_px
    images = [np.asarray(prepare(video.read(i), resolved.invert), np.float64) for i in range(n_cal)]
    pieces = []
    for i in range(n_cal):
        piece = features.loc[features["frame"] == int(video.frame_numbers[i]), ["x", "y", "size"]].assign(frame=i)
        pieces.append(piece.assign(x=piece["x"] - x_origin, y=piece["y"] - y_origin))
    try:
        model = measure_spot_model(images, pd.concat(pieces, ignore_index=True), radius, params.species,
                                   loc.refine_sweeps)
    except RefineError as error:
        message = (f"{video.source}: tracking.locate.refine: psf_fit skipped, trackpy's centroids kept: {error}; "
                   f"raise tracking.locate.refine_profile_frames, or set tracking.locate.refine: none to silence this")
        warnings.warn(message, RefineSkippedWarning, stacklevel=3)
        return {"method": loc.refine, "skipped": str(error)}
    return {"method": loc.refine, "radius_px": float(radius), "size_thresholds_px": model.size_thresholds_px.tolist(),
            "table": model.table.tolist(), "profile": model.record}


def load_plan(plan) -> dict:
    """A plan given as a dict or the path of its JSON file, checked."""
    if isinstance(plan, dict):
        return plan
    path = os.fspath(plan)
    if not os.path.isfile(path):
        raise TrackingInputError(f"{path}: tracking plan not found; run plan_tracking first")
    try:
        plan = json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise TrackingInputError(f"{path}: not a tracking plan ({error}); delete it and plan again") from None
    if not isinstance(plan, dict) or plan.get("version") != PLAN_VERSION:
        raise TrackingInputError(f"{path}: a tracking plan of another version ({plan.get('version')!r}, this code "
                                 f"reads {PLAN_VERSION}); delete it and plan again")
    return plan


def _plan_params(plan: dict) -> TrackingParams:
    """The plan's parameters (``to_dict``'s form, every key written) as TrackingParams, checked."""
    values = dict(plan["parameters"])
    kwargs = {}
    for name, cls in _NESTED.items():
        section = values.pop(name, None)
        if section is not None:
            kwargs[name] = cls(**section)
    return as_params(TrackingParams(**kwargs, **values))


# --- 2. locating one chunk --------------------------------------------------------------------------------------

def locate_chunk(plan, chunk: int, out_path, *, processes: int = 1) -> Path:
    """Locate (and refine) the frames of ``plan["chunks"][chunk]``; write their features to ``out_path`` (parquet).

    Columns are ``tracking.pipeline.FEATURE_COLUMNS`` (docs/data_schema.md),
    rows in frame order and, within a frame, in trackpy's order (which the
    linker's particle numbering follows). Written atomically.
    """
    plan = load_plan(plan)
    _check_chunk(plan, chunk)
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise TrackingInputError(f"processes must be an integer >= 1, got {processes!r}")
    params = _plan_params(plan)
    video = _open_planned_video(plan, params)
    resolved = ResolvedLocate(**plan["resolved"])
    start, stop = plan["chunks"][chunk]
    features = _locate_positions(video, params, resolved, plan["flatten_size_px"], start, stop, processes)
    features = _refine_chunk(video, features, plan, resolved, start, stop)
    units = plan["units"]
    table = _feature_table(features, units["pixel_size_um"], units["frame_rate_hz"])
    out_path = Path(out_path)
    _write_parquet(table, out_path)
    return out_path


def _open_planned_video(plan: dict, params: TrackingParams):
    video = open_video(plan["source"], params.frame_range, params.roi, params.locate.channel)
    if [int(f) for f in video.frame_numbers] != plan["frame_numbers"] or list(video.frame_shape) != \
            plan["frame_shape_px"]:
        raise TrackingInputError(f"{plan['source']}: the video is not the one planned (its selected frames or frame "
                                 f"size differ from the plan's); plan the tracking again")
    return video


def _refine_chunk(video, features: pd.DataFrame, plan: dict, resolved: ResolvedLocate, start: int,
                  stop: int) -> pd.DataFrame:
    """Centroids kept beside the positions; with a measured spot model, positions refined frame by frame."""
    features = features.assign(x_centroid=features["x"], y_centroid=features["y"], refined=False)
    model_record = plan.get("refine")
    if model_record is None or "skipped" in model_record:
        return features
    params = _plan_params(plan)
    loc = params.locate
    model = spot_model(model_record["radius_px"], np.asarray(model_record["size_thresholds_px"], float),
                       np.asarray(model_record["table"], float), model_record["profile"])
    x_origin, y_origin = video.origin_px
    by_frame = {int(f): idx for f, idx in features.groupby("frame").indices.items()}
    status = np.zeros(len(features), np.int64)
    columns = [features.columns.get_loc(c) for c in ("x", "y")]
    for i in range(start, stop):
        idx = by_frame.get(int(video.frame_numbers[i]))
        if idx is None or len(idx) == 0:
            continue
        image = np.asarray(prepare(video.read(i), resolved.invert), np.float64)
        local = features.iloc[idx][["x", "y", "size"]]
        local = local.assign(x=local["x"] - x_origin, y=local["y"] - y_origin)
        result = refine_frame(image, local, model, loc.refine_sweeps, loc.refine_max_shift_px, resolved.margin_px)
        features.iloc[idx, columns[0]] = result["x"].to_numpy() + x_origin
        features.iloc[idx, columns[1]] = result["y"].to_numpy() + y_origin
        status[idx] = result["status"].to_numpy()
    features["refined"] = status == 0
    features["refine_status"] = status
    return features


def _feature_table(features: pd.DataFrame, pixel_size_um: float, frame_rate_hz: float) -> pd.DataFrame:
    """Located features in the units and columns of features.parquet (as track_video), trackpy's row order."""
    status = features["refine_status"].to_numpy() if "refine_status" in features else None
    table = features.rename(columns={"x": "x_px", "y": "y_px", "x_centroid": "x_centroid_px",
                                     "y_centroid": "y_centroid_px"})
    table["x"] = table["x_px"] * pixel_size_um
    table["y"] = table["y_px"] * pixel_size_um
    table["t"] = table["frame"] / frame_rate_hz
    table = table[FEATURE_COLUMNS].reset_index(drop=True)
    table["refined"] = table["refined"].astype(bool)
    if status is not None:
        table["refine_status"] = status.astype(np.int8)
    return table


def _write_parquet(table: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(pa.Table.from_pandas(table, preserve_index=False), tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- 3. the gather: linking and everything after, streaming -----------------------------------------------------

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


def _read_features(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    try:
        return pq.read_table(path, columns=list(columns)).to_pandas()
    except (OSError, pa.ArrowException, KeyError) as error:
        raise TrackingInputError(f"{path}: cannot be read as a chunk of features ({error}); locate that chunk "
                                 f"again (tracking.stream.locate_chunk)") from None


def _check_feature_files(plan: dict, feature_files) -> tuple[list[Path], np.ndarray]:
    """The chunk files in order, checked against the plan; features per selected frame."""
    files = [Path(f) for f in feature_files]
    if len(files) != len(plan["chunks"]):
        raise TrackingInputError(f"{len(files)} feature file(s) given for the plan's {len(plan['chunks'])} chunks; "
                                 f"give one file per chunk, in order")
    frame_numbers = np.asarray(plan["frame_numbers"], np.int64)
    counts = np.zeros(len(frame_numbers), np.int64)
    for path, (start, stop) in zip(files, plan["chunks"], strict=True):
        if not path.is_file():
            raise TrackingInputError(f"{path}: feature file of a chunk not found; run locate_chunk for it")
        schema = pq.read_schema(path)
        missing = [c for c in FEATURE_COLUMNS if c not in schema.names]
        if missing:
            raise TrackingInputError(f"{path}: lacks the feature columns {missing}; locate that chunk again")
        frames = _read_features(path, ["frame"])["frame"].to_numpy()
        position = np.searchsorted(frame_numbers, frames)
        bad = (position < start) | (position >= stop) | (frame_numbers[np.minimum(position, len(frame_numbers) - 1)]
                                                          != frames)
        if bad.any() or np.any(np.diff(frames) < 0):
            raise TrackingInputError(f"{path}: holds frames outside its chunk (frames {frame_numbers[start]} .. "
                                     f"{frame_numbers[stop - 1]}) or out of order; give the chunk files in the "
                                     f"plan's order, or locate that chunk again")
        counts += np.bincount(position, minlength=len(frame_numbers))
    return files, counts


def _frames_of(table: pd.DataFrame) -> Iterator[pd.DataFrame]:
    """The rows of each frame of a table sorted by frame, in their order."""
    frames = table["frame"].to_numpy()
    bounds = np.flatnonzero(np.r_[True, frames[1:] != frames[:-1], True]) if len(frames) else np.array([0])
    for start, stop in itertools.pairwise(bounds):
        yield table.iloc[start:stop]


class _Peekable:
    """An iterator of (chunk, frame table) that can look ahead (the auto search range, the bootstrap)."""

    def __init__(self, iterator):
        self.iterator, self.buffer = iterator, []

    def take(self, n_nonempty: int, min_rows: int = 1) -> list[pd.DataFrame]:
        """The first frames until n_nonempty of them hold at least min_rows rows (or the end)."""
        seen = [frame for _, frame in self.buffer]
        while sum(len(f) >= min_rows for f in seen) < n_nonempty:
            try:
                item = next(self.iterator)
            except StopIteration:
                break
            self.buffer.append(item)
            seen.append(item[1])
        return seen

    def __iter__(self):
        while self.buffer:
            yield self.buffer.pop(0)
        yield from self.iterator


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


def _linked_table(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Linked frames (columns frame, particle, x, y, mass, ...) as one table of LINKED_COLUMNS, rows in order."""
    table = (pd.concat(frames, ignore_index=True) if frames
             else pd.DataFrame({c: pd.Series(dtype=np.int64 if c in ("frame", "particle") else float)
                                for c in ("frame", "particle", "x", "y")}))
    table = table.rename(columns={"x": "x_px", "y": "y_px"})
    for column in LINKED_COLUMNS:
        if column not in table:
            table[column] = pd.Series(dtype=float)
    table = table[LINKED_COLUMNS]
    table["particle"] = table["particle"].astype(np.int64)
    table["frame"] = table["frame"].astype(np.int64)
    return table


def _search_range(params: TrackingParams, frames: _Peekable, pixel_size_um: float) -> tuple[float, dict]:
    """The search range (px) and its record, as link_features resolves it."""
    link = params.link
    record: dict = {}
    if link.search_range_px is not None:
        search_range_px = link.search_range_px
    elif link.search_range_um == AUTO:
        first = frames.take(10, min_rows=2)
        record["search_range"] = auto_search_range_px(pd.concat(first, ignore_index=True) if first
                                                      else pd.DataFrame({"frame": [], "x": [], "y": []}))
        search_range_px = record["search_range"]["search_range_px"]
    else:
        search_range_px = link.search_range_um / pixel_size_um
    record["search_range_px"] = float(search_range_px)
    return float(search_range_px), record


def _frame_stream(files: Sequence[Path], first_chunk: int = 0, first_frame: int | None = None
                  ) -> Iterator[tuple[int, pd.DataFrame]]:
    """(chunk, rows of one frame in px: frame, x, y, mass, ...) for every frame with features, in order.

    ``files`` are the chunks first_chunk, first_chunk + 1, ...; ``first_frame``: frames before it are skipped.
    """
    columns = ["frame", "x_px", "y_px", "mass", "size", "ecc", "signal", "raw_mass", "ep"]
    for chunk, path in enumerate(files, start=first_chunk):
        table = _read_features(path, columns).rename(columns={"x_px": "x", "y_px": "y"})
        table["frame"] = table["frame"].astype(np.int64)
        if first_frame is not None:
            table = table[table["frame"].to_numpy() >= first_frame]
        for frame in _frames_of(table):
            yield chunk, frame


# --- linking per chunk: trackpy's linker, its state at a chunk boundary, the warm-up ---------------------------

LINK_STATE_VERSION = 1
_NO_COORDS = np.empty((0, len(POS_COLUMNS)))
# The auto search range looks at the first 10 frames holding two features; a link job reads the chunks of the
# first AUTO_HEAD_FRAMES frames for it (the gather checks every job's range against its own).
AUTO_HEAD_FRAMES = 20


def _null_interpolator(*x):  # trackpy.predict.NearestVelocityPredict's, when a frame pair shares no particle
    return np.zeros((len(x),))


class _LinkEngine:
    """trackpy's iterative linker (``trackpy.linking.Linker``) driven frame by frame, as ``trackpy.link``
    (empty frames linked as empty levels) or a predictor's ``link_df_iter`` (non-empty frames only, the
    predictor bootstrapped as ``tracking.link.link_features`` does) drive it, whose state can be read and
    restored between two frames (``state``, ``restore``).

    The state before a frame is everything the linker's later decisions depend on: the features it links
    from (the last linked frame's, and the features lost within ``link.memory`` levels with the level each
    was lost at), the predictor's velocity field (AffineVelocityPredict: field and centre;
    NearestVelocityPredict: the interpolator's points and velocities) and the next particle id. Features are
    named by (frame, row within the frame).
    """

    def __init__(self, params: TrackingParams, search_range_px: float, pixel_size_um: float):
        link = params.link
        self.kind = link.predictor
        self.memory = int(link.memory)
        self.search_range_px = float(search_range_px)
        self.kwargs = {"memory": link.memory, "adaptive_step": link.adaptive_step}
        if link.adaptive_stop_um is not None:
            self.kwargs["adaptive_stop"] = link.adaptive_stop_um / pixel_size_um
        self.linker = None
        self.predictor = None
        self.last_t: int | None = None
        self.counter = None
        self.recent: dict[int, list | dict] = {}  # frame -> its points (list: row order; dict: row -> point)
        self.bootstrap: dict | None = None

    def _new_linker(self) -> None:
        predict = None if self.predictor is None else self.predictor.predict
        self.linker = Linker(self.search_range_px, predictor=predict, **self.kwargs)

    def start(self, first_frames: list[pd.DataFrame]) -> None:
        """A fresh linker; with a predictor, bootstrapped on the first two non-empty frames given."""
        if self.kind != "none":
            pair = pd.concat([f for f in first_frames if len(f)][:2], ignore_index=True)
            field, centre, first_pair = bootstrap_field(pair, self.search_range_px, **self.kwargs)
            self.bootstrap = {
                "frames": sorted(int(f) for f in pair["frame"].unique()),
                "record": None if field is None else {"centre_yx": np.round(centre, 4).tolist(),
                                                      "coefficients": np.round(field, 6).tolist()}}
            if self.kind == "affine":
                self.predictor = AffineVelocityPredict(field, centre, pos_columns=POS_COLUMNS)
            else:
                guess = _first_pair_velocities(first_pair)
                self.predictor = (NearestVelocityPredict(guess[0], guess[1], pos_columns=POS_COLUMNS)
                                  if guess is not None else NearestVelocityPredict(pos_columns=POS_COLUMNS))
            self.predictor.t_column = "frame"
        self._new_linker()

    def link(self, frame: pd.DataFrame) -> np.ndarray:
        """Link one non-empty frame (rows in trackpy's order); its particle ids."""
        t = int(frame["frame"].iloc[0])
        coords = frame[POS_COLUMNS].to_numpy()
        linker = self.linker
        if self.last_t is None:
            linker.init_level(coords, t)
            self.counter = TrackUnstored.counter
        else:
            TrackUnstored.counter = self.counter  # trackpy's track counter is global: this engine's own
            if self.kind == "none":
                for gap in range(self.last_t + 1, t):  # trackpy.link links the frames between as empty ones
                    linker.next_level(_NO_COORDS, gap)
            linker.next_level(coords, t)
        points = list(linker.hash.points)
        ids = np.fromiter((p.track.id for p in points), np.int64, len(points))
        if self.predictor is not None:
            self.predictor.observe(frame.assign(particle=ids))
        self.last_t = t
        self.recent[t] = points
        while len(self.recent) > self.memory + 1:  # a remembered feature is at most memory + 1 frames old
            del self.recent[next(iter(self.recent))]
        return ids

    def state(self) -> dict | None:
        """The linker's state before the next frame (None before the first frame)."""
        if self.last_t is None:
            return None
        linker = self.linker
        current = self.recent[self.last_t]
        remembered = []
        if linker.mem_set:
            where = {}
            for t, points in self.recent.items():
                if t != self.last_t:
                    for i, p in (enumerate(points) if isinstance(points, list) else points.items()):
                        where[id(p)] = (t, i)
            for slot, members in enumerate(linker.mem_history):
                for p in members:
                    if p in linker.mem_set:
                        remembered.append((*where[id(p)], slot, p))
            remembered.sort(key=lambda item: item[:2])
        next_particle = next(self.counter)
        self.counter = itertools.count(next_particle)
        TrackUnstored.counter = self.counter
        points = list(current) + [item[3] for item in remembered]
        n = len(current)
        state = {
            "last_t": int(self.last_t), "next_particle": int(next_particle),
            "t": np.r_[np.full(n, self.last_t, np.int64), np.array([r[0] for r in remembered], np.int64)],
            "index": np.r_[np.arange(n, dtype=np.int64), np.array([r[1] for r in remembered], np.int64)],
            "slot": np.r_[np.full(n, -1, np.int64), np.array([r[2] for r in remembered], np.int64)],
            "particle": np.fromiter((p.track.id for p in points), np.int64, len(points)),
            "pos": np.array([p.pos for p in points], np.float64).reshape(-1, len(POS_COLUMNS)),
            "predictor": {"kind": self.kind},
        }
        predictor = self.predictor
        if isinstance(predictor, AffineVelocityPredict):
            state["predictor"].update(field=None if predictor.field is None else np.array(predictor.field, float),
                                      centre=np.array(predictor.centre, float))
        elif isinstance(predictor, NearestVelocityPredict):
            interpolator = predictor.interpolator
            state["predictor"].update(
                use_initial_guess=bool(predictor.use_initial_guess),
                interpolator=None if not isinstance(interpolator, NearestNDInterpolator)
                else (np.array(interpolator.points, float), np.array(interpolator.values, float)))
        return state

    def restore(self, state: dict) -> None:
        """Continue from a state (``state()``'s): the linker as trackpy's would be before the next frame."""
        kind = state["predictor"]["kind"]
        if kind != self.kind:
            raise LinkingError(f"a link state of predictor {kind!r} given to a {self.kind!r} linker")
        cur = state["slot"] < 0
        t, pos, particle = state["t"], state["pos"], state["particle"]
        last = pd.DataFrame({"frame": t[cur], POS_COLUMNS[0]: pos[cur, 0], POS_COLUMNS[1]: pos[cur, 1]},
                            index=pd.Index(particle[cur], name="particle"))
        if kind == "affine":
            self.predictor = AffineVelocityPredict(state["predictor"]["field"], state["predictor"]["centre"],
                                                   pos_columns=POS_COLUMNS)
            self.predictor.previous = last
        elif kind != "none":
            self.predictor = NearestVelocityPredict(pos_columns=POS_COLUMNS)
            self.predictor.use_initial_guess = state["predictor"]["use_initial_guess"]
            interpolator = state["predictor"]["interpolator"]
            self.predictor.interpolator = (_null_interpolator if interpolator is None
                                           else NearestNDInterpolator(*interpolator))
            self.predictor.recent_frames.append(last)
        if self.predictor is not None:
            self.predictor.t_column = "frame"
        self._new_linker()
        linker = self.linker
        Point.reset_counter()
        TrackUnstored.reset_counter()
        linker.ndim = len(POS_COLUMNS)
        linker.mem_set = set()
        linker.mem_history = [set() for _ in range(self.memory)]
        self.recent = {}

        def point(frame, position, pid):
            p = Point(int(frame), position)
            TrackUnstored(p).id = int(pid)
            p.track.indx = int(pid)
            return p

        for k in np.flatnonzero(~cur):
            p = point(t[k], pos[k], particle[k])
            linker.mem_set.add(p)
            linker.mem_history[state["slot"][k]].add(p)
            self.recent.setdefault(int(t[k]), {})[int(state["index"][k])] = p
        points = [point(state["last_t"], pos[k], particle[k]) for k in np.flatnonzero(cur)]
        linker.hash = linker.hash_cls(points, ndim=linker.ndim, to_eucl=linker.to_eucl, dist_func=linker.dist_func)
        self.recent[int(state["last_t"])] = points
        self.last_t = int(state["last_t"])
        self.counter = itertools.count(int(state["next_particle"]))
        TrackUnstored.counter = self.counter


def _same_state(a: dict | None, b: dict | None) -> bool:
    """Two link states equal but for the particle ids: the same features to link from (remembered ones with
    the same level), the same predictor field, bit for bit."""
    if a is None or b is None:
        return a is None and b is None
    if a["last_t"] != b["last_t"] or a["predictor"]["kind"] != b["predictor"]["kind"]:
        return False
    if not all(np.array_equal(a[k], b[k]) for k in ("t", "index", "slot", "pos")):
        return False
    pa_, pb = a["predictor"], b["predictor"]
    if pa_["kind"] == "affine":
        if (pa_["field"] is None) != (pb["field"] is None):
            return False
        return (pa_["field"] is None or np.array_equal(pa_["field"], pb["field"])) and \
            np.array_equal(pa_["centre"], pb["centre"])
    if pa_["kind"] == "nearest_velocity":
        ia, ib = pa_["interpolator"], pb["interpolator"]
        if pa_["use_initial_guess"] != pb["use_initial_guess"] or (ia is None) != (ib is None):
            return False
        return ia is None or (np.array_equal(ia[0], ib[0]) and np.array_equal(ia[1], ib[1]))
    return True


def _state_arrays(prefix: str, state: dict | None) -> tuple[dict, dict]:
    """A state as npz arrays and JSON-able flags."""
    if state is None:
        return {}, {"present": False}
    arrays = {f"{prefix}.{k}": state[k] for k in ("t", "index", "slot", "particle", "pos")}
    flags = {"present": True, "last_t": state["last_t"], "next_particle": state["next_particle"]}
    pred = state["predictor"]
    flags["predictor"] = {"kind": pred["kind"]}
    if pred["kind"] == "affine":
        flags["predictor"]["field"] = pred["field"] is not None
        if pred["field"] is not None:
            arrays[f"{prefix}.field"] = pred["field"]
        arrays[f"{prefix}.centre"] = pred["centre"]
    elif pred["kind"] == "nearest_velocity":
        flags["predictor"].update(use_initial_guess=pred["use_initial_guess"],
                                  interpolator=pred["interpolator"] is not None)
        if pred["interpolator"] is not None:
            arrays[f"{prefix}.points"], arrays[f"{prefix}.values"] = pred["interpolator"]
    return arrays, flags


def _state_from_arrays(prefix: str, flags: dict, arrays) -> dict | None:
    if not flags["present"]:
        return None
    state = {k: np.asarray(arrays[f"{prefix}.{k}"]) for k in ("t", "index", "slot", "particle", "pos")}
    state.update(last_t=int(flags["last_t"]), next_particle=int(flags["next_particle"]))
    kind = flags["predictor"]["kind"]
    pred = {"kind": kind}
    if kind == "affine":
        pred["field"] = np.asarray(arrays[f"{prefix}.field"]) if flags["predictor"]["field"] else None
        pred["centre"] = np.asarray(arrays[f"{prefix}.centre"])
    elif kind == "nearest_velocity":
        pred["use_initial_guess"] = bool(flags["predictor"]["use_initial_guess"])
        pred["interpolator"] = ((np.asarray(arrays[f"{prefix}.points"]), np.asarray(arrays[f"{prefix}.values"]))
                                if flags["predictor"]["interpolator"] else None)
    state["predictor"] = pred
    return state


def link_state_path(link_path) -> Path:
    """The state file beside a chunk's link file: ``chunk-00001.state.npz`` beside ``chunk-00001.parquet``."""
    link_path = Path(link_path)
    return link_path.with_name(link_path.name.removesuffix(".parquet") + ".state.npz")


def _plan_id(plan: dict) -> str:
    return hashlib.sha256(json.dumps(json_ready(plan), sort_keys=True).encode()).hexdigest()[:16]


def link_overlap(params: TrackingParams) -> int:
    """Frames of warm-up before each chunk's own frames (``tracking.link_overlap_frames``; default
    max(link.memory + 2, 5))."""
    overlap = params.link_overlap_frames
    if overlap is None:
        return max(int(params.link.memory) + 2, 5)
    if isinstance(overlap, bool) or not isinstance(overlap, (int, np.integer)) or overlap < 1:
        raise ParameterError(f"tracking.link_overlap_frames must be null or an integer >= 1 (frames of the previous "
                             f"chunk linked first by each chunk's link job), got {overlap!r}")
    return int(overlap)


def _link_inputs(chunks: list, overlap: int, auto_range: bool) -> list[list[int]]:
    """Per chunk, the chunks whose features its link job reads: its own, those of its warm-up frames and,
    with an automatic search range, those of the first AUTO_HEAD_FRAMES frames."""
    inputs = []
    for i, (a, b) in enumerate(chunks):
        lo = max(0, a - overlap) if i else a
        needed = {j for j, (c, d) in enumerate(chunks) if c < b and d > lo}
        if auto_range:
            needed |= {j for j, (c, _) in enumerate(chunks) if c < AUTO_HEAD_FRAMES}
        inputs.append(sorted(needed))
    return inputs


def link_chunk_inputs(plan, chunk: int) -> list[int]:
    """The chunks whose feature files ``link_chunk(plan, chunk, ...)`` reads, in the order it takes them."""
    plan = load_plan(plan)
    _check_chunk(plan, chunk)
    return list(plan["link_inputs"][chunk])


def _check_chunk(plan: dict, chunk) -> None:
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or not 0 <= chunk < len(plan["chunks"]):
        raise TrackingInputError(f"chunk {chunk!r} is not a chunk of the plan (it has {len(plan['chunks'])}: 0 .. "
                                 f"{len(plan['chunks']) - 1})")


def link_chunk(plan, chunk: int, feature_files, out_path) -> Path:
    """Link the frames of one chunk, starting ``link_overlap_frames`` frames earlier (the warm-up).

    ``feature_files``: the feature files of the chunks ``link_chunk_inputs(plan, chunk)`` names, in that
    order (or a mapping chunk -> file). Writes ``out_path`` (parquet: the chunk's own linked rows, columns
    LINKED_COLUMNS, particle ids local to this job) and, beside it, ``link_state_path(out_path)`` (npz: the
    linker's state before the chunk's first frame and after its last, the next particle id, the search range
    and the bootstrap), both atomically. ``link_chunks`` checks each chunk's starting state against its
    predecessor's final one: equal, the chunk's links are the unsplit run's and only its ids change.
    One chunk of features and the warm-up frames are held in memory.
    """
    plan = load_plan(plan)
    _check_chunk(plan, chunk)
    params = _plan_params(plan)
    _check_split_supported(params)
    pixel_size_um = check_units(plan["units"]["pixel_size_um"], plan["units"]["frame_rate_hz"])[0]
    needed = plan["link_inputs"][chunk]
    if isinstance(feature_files, dict):
        missing = [j for j in needed if j not in feature_files]
        if missing:
            raise TrackingInputError(f"link_chunk {chunk}: the feature files of chunks {missing} are missing; give "
                                     f"those of chunks {needed} (link_chunk_inputs)")
        by_chunk = {j: Path(feature_files[j]) for j in needed}
    else:
        feature_files = [Path(f) for f in feature_files]
        if len(feature_files) != len(needed):
            raise TrackingInputError(f"link_chunk {chunk}: {len(feature_files)} feature file(s) given; give those "
                                     f"of chunks {needed} (link_chunk_inputs), in that order")
        by_chunk = dict(zip(needed, feature_files, strict=True))
    for j, path in by_chunk.items():
        if not path.is_file():
            raise TrackingInputError(f"{path}: feature file of chunk {j} not found; run locate_chunk for it")
    frame_numbers = np.asarray(plan["frame_numbers"], np.int64)
    a, b = plan["chunks"][chunk]
    warm = max(0, a - plan["link_overlap_frames"]) if chunk else a
    head = [by_chunk[j] for j in itertools.takewhile(lambda j: j in by_chunk, range(len(plan["chunks"])))]
    search_range_px, record = _search_range(params, _Peekable(_frame_stream(head)), pixel_size_um)
    span = [j for j in needed if plan["chunks"][j][0] < b and plan["chunks"][j][1] > warm]
    stream = ((j, frame) for j, frame in _frame_stream([by_chunk[j] for j in span], span[0],
                                                        int(frame_numbers[warm]) if warm < len(frame_numbers) else None)
              if int(frame["frame"].iloc[0]) <= frame_numbers[b - 1])
    frames = _Peekable(stream)
    engine = _LinkEngine(params, search_range_px, pixel_size_um)
    first_own = int(frame_numbers[a])
    own, start_state, started = [], None, chunk == 0
    try:
        with warnings.catch_warnings(), quiet_trackpy():
            warnings.simplefilter("ignore")
            first = frames.take(2)
            if first:
                engine.start(first)
            for _, frame in frames:
                if not started and int(frame["frame"].iloc[0]) >= first_own:
                    start_state, started = engine.state(), True
                ids = engine.link(frame)
                if started:
                    own.append(frame.assign(particle=ids))
            if not started:
                start_state = engine.state()
            end_state = engine.state()
    except SubnetOversizeException as error:
        raise _oversize(error, search_range_px, pixel_size_um) from None
    table = _linked_table(own)
    start_arrays, start_flags = _state_arrays("start", start_state)
    end_arrays, end_flags = _state_arrays("end", end_state)
    meta = {"version": LINK_STATE_VERSION, "plan": _plan_id(plan), "chunk": int(chunk), "rows": len(table),
            "warm_up": {"first_frame": int(frame_numbers[warm]), "frames": a - warm},
            "search_range": record, "bootstrap": engine.bootstrap, "start": start_flags, "end": end_flags}
    out_path = Path(out_path)
    _write_npz(link_state_path(out_path), {**start_arrays, **end_arrays, "meta": np.array(json.dumps(meta))})
    _write_parquet(table, out_path)
    return out_path


def _oversize(error, search_range_px: float, pixel_size_um: float) -> LinkingError:
    return LinkingError(
        f"linking failed: too many candidate links in a crowded region ({error}); lower "
        f"link.search_range_um (now {search_range_px * pixel_size_um:.3g} µm) or set link.adaptive_stop_um")


def _write_npz(path: Path, arrays: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp.npz", dir=path.parent)
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_link(path: Path, plan: dict, chunk: int) -> dict:
    """A chunk's link file and state, checked against the plan."""
    state_path = link_state_path(path)
    for p in (path, state_path):
        if not p.is_file():
            raise TrackingInputError(f"{p}: link file of chunk {chunk} not found; run link_chunk for it")
    try:
        with np.load(state_path, allow_pickle=False) as arrays:
            meta = json.loads(str(arrays["meta"]))
            if meta.get("version") != LINK_STATE_VERSION:
                raise ValueError(f"version {meta.get('version')!r}, this code reads {LINK_STATE_VERSION}")
            start = _state_from_arrays("start", meta["start"], arrays)
            end = _state_from_arrays("end", meta["end"], arrays)
    except (OSError, ValueError, KeyError) as error:
        raise TrackingInputError(f"{state_path}: not a link state ({error}); run link_chunk for chunk {chunk} "
                                 f"again") from None
    if meta["plan"] != _plan_id(plan) or meta["chunk"] != chunk:
        raise TrackingInputError(f"{path}: linked for another plan or chunk (chunk {meta['chunk']}); give the link "
                                 f"files in the plan's order, or run link_chunk for chunk {chunk} again")
    return {"path": path, "meta": meta, "start": start, "end": end}


def _stitch_ids(link: dict, previous: dict | None, next_global: int):
    """A checked chunk's map local id -> global id, its final state in global ids, the next global id.

    Tracks alive at the chunk's first frame are the predecessor's (matched through the features they end
    on); tracks born in the chunk's own frames are numbered on, in the order the job numbered them (the
    order trackpy numbers them in, as the linker's state is the same).
    """
    start, end = link["start"], link["end"]
    first_own = start["next_particle"] if start is not None else 0
    n_local = end["next_particle"] if end is not None else first_own
    mapping = np.full(max(n_local, first_own), -1, np.int64)
    if start is not None:
        mapping[start["particle"]] = previous["particle"]
    mapping[first_own:n_local] = np.arange(next_global, next_global + n_local - first_own)
    next_global += max(n_local - first_own, 0)
    if end is None:
        return mapping, None, next_global
    return mapping, {**end, "particle": mapping[end["particle"]], "next_particle": next_global}, next_global


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
    n_features = int(counts.sum())
    empty = [int(f) for f in frame_numbers[counts == 0]]
    summary = {
        "frames_analysed": n_frames,
        "features": n_features,
        "frames_without_features": {"count": len(empty), "frames": empty},
        "features_per_frame": {
            "mean": float(counts.mean()), "median": float(np.median(counts)),
            "min": int(counts.min()), "max": int(counts.max()),
            "by_frame": {str(int(f)): int(n) for f, n in zip(frame_numbers, counts, strict=True)},
        },
        "trajectories": len(lengths),
        "mean_trajectory_length_frames": float(lengths.mean()) if len(lengths) else 0.0,
        "median_trajectory_length_frames": float(np.median(lengths)) if len(lengths) else 0.0,
        "fraction_of_frames_tracked": int((in_trajectories > 0).sum()) / n_frames if n_frames else 0.0,
        "fraction_of_features_in_trajectories": int(lengths.sum()) / n_features if n_features else 0.0,
    }
    report_warnings = []
    if empty:
        shown = ", ".join(map(str, empty[:10])) + (" ..." if len(empty) > 10 else "")
        message = (f"{source}: {len(empty)} frame(s) without any feature ({shown}): every trajectory "
                   f"breaks there; check those frames (blank, overexposed, out of focus) or leave them out with "
                   f"tracking.frame_range")
        log.warning(message)
        report_warnings.append(message)

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

    report = {
        "source": source,
        "reader": plan["reader"],
        "frame_numbers": {"first": int(frame_numbers[0]), "last": int(frame_numbers[-1]), "step": frame_step},
        "frame_shape_px": [height, width],
        "roi_origin_px": list(origin),
        **summary,
        "warnings": report_warnings,
        "auto": chosen,
        "checks": checks,
        "trajectory_filter": filtered,
        "species": species_record,
        "velocity_noise": velocity_noise,
        "refine": _refine_record(plan, files),
        "resolved": {"locate": dataclasses.asdict(resolved), "link": link_record},
        "parameters": plan["parameters"],
        "units": plan["units"],
        "processes": 1,
        "split": {
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
        },
        "software": software_versions("trackpy", "pims", "numpy", "scipy", "pandas", "pyarrow"),
    }

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


# --- all in one process -----------------------------------------------------------------------------------------

def track_video_streaming(frames_path, out_dir, params: TrackingParams | dict | None = None, *, pixel_size_um: float,
                          frame_rate_hz: float, processes: int = 1, chunk_frames: int | None = DEFAULT_CHUNK_FRAMES,
                          truth_pixels=None) -> StreamingResult:
    """Track a video in bounded memory in one process: plan, locate every chunk, link.

    Writes ``out_dir/plan.json``, ``out_dir/features/chunk-00000.parquet`` ...
    (a parquet dataset: ``pandas.read_parquet(out_dir / "features")`` reads it
    as one table) and what ``link_chunks`` writes. ``chunk_frames``: frames per
    chunk (None: the parameters' ``chunk_frames``, else DEFAULT_CHUNK_FRAMES);
    ``processes``: trackpy.batch's processes within each chunk.
    """
    params = as_params(params)
    if chunk_frames is None:
        chunk_frames = params.chunk_frames if params.chunk_frames is not None else DEFAULT_CHUNK_FRAMES
    out_dir = Path(out_dir)
    truth = load_truth(truth_pixels)  # checked before any work
    timing = {}
    mark = time.perf_counter()
    plan = plan_tracking(frames_path, params, pixel_size_um=pixel_size_um, frame_rate_hz=frame_rate_hz,
                         chunk_frames=chunk_frames, out_path=out_dir / "plan.json")
    timing["plan"] = time.perf_counter() - mark
    mark = time.perf_counter()
    features_dir = out_dir / "features"
    if features_dir.exists():
        for stale in features_dir.glob("chunk-*.parquet"):
            stale.unlink()
    files = [locate_chunk(plan, i, features_dir / chunk_file_name(i), processes=processes)
             for i in range(len(plan["chunks"]))]
    timing["locate"] = time.perf_counter() - mark
    result = link_chunks(plan, files, out_dir, truth_pixels=truth)
    result.qc["timing_s"] = {**{k: round(v, 3) for k, v in timing.items()}, **result.qc["timing_s"]}
    _write_json(out_dir / "qc.json", result.qc)
    return result
