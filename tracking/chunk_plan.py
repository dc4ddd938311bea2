"""Split tracking, steps 1 and 2: the plan (every automatic parameter resolved once, the frames cut into chunks)
and locating one chunk of frames into one parquet file of features.

``tracking.stream`` describes the four steps; this module is the first two, which the link jobs and the gather
read through the plan (``load_plan``) and the chunk files (``chunk_file_name``).
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mpd.atomic import atomic_write_bytes
from mpd.jsonsafe import json_ready

from .flatten import flatten_frames
from .io import TrackingInputError, open_video
from .locate import ResolvedLocate, filter_features, locate_stack, prepare
from .params import _NESTED, AUTO, ParameterError, TrackingParams, as_params, to_dict
from .pipeline import FEATURE_COLUMNS, check_units, resolve_locate
from .refine import (
    RefineError,
    RefineSkippedWarning,
    measure_spot_model,
    refine_frame,
    resolve_radius,
    spot_model,
)

PLAN_VERSION = 2
DEFAULT_CHUNK_FRAMES = 200
# Frames are read for locating in stacks of at most this many bytes (as tracking.io.Video.chunks).
STACK_BYTES = 256 * 2**20
# The auto search range looks at the first 10 frames holding two features; a link job reads the chunks of the
# first AUTO_HEAD_FRAMES frames for it (the gather checks every job's range against its own).
AUTO_HEAD_FRAMES = 20


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


# --- what each link job reads ------------------------------------------------------------------------------------

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
