"""Tracking a long video in bounded memory, and split into jobs: plan, locate per chunk, link per chunk, gather.

``tracking.pipeline.track_video`` holds every feature and trajectory of a
video in memory at once. Here the same tracking is cut into four steps whose
memory depends on the particles per frame and the chunk size, never on the
number of frames (docs/tracking.md, *Long videos: chunks, bounded memory,
split jobs*):

Each step is its own module and the names users call are re-exported here:
steps 1 and 2 are ``tracking.chunk_plan``, step 3 ``tracking.chunk_link`` (with
the files between the steps), step 4 ``tracking.gather``; this module runs
them all in one process (``track_video_streaming``).

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

import time
from pathlib import Path

from .chunk_link import link_chunk, link_state_path
from .chunk_plan import (
    DEFAULT_CHUNK_FRAMES,
    _write_json,
    check_chunk_frames,
    chunk_file_name,
    link_chunk_inputs,
    link_overlap,
    load_plan,
    locate_chunk,
    plan_tracking,
)
from .gather import StreamingResult, link_chunks
from .params import TrackingParams, as_params
from .pipeline import load_truth

__all__ = ["StreamingResult", "check_chunk_frames", "chunk_file_name", "link_chunk", "link_chunk_inputs", "link_chunks",
           "link_overlap", "link_state_path", "load_plan", "locate_chunk", "plan_tracking", "track_video_streaming"]


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
