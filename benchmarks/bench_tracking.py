"""Frames per second of tracking.track_video against bare trackpy on the same frames.

Bare trackpy is what a user would write by hand (trackpy's walkthrough):
``pims.open(glob)`` through a grey pims pipeline, ``trackpy.batch(...,
invert=True, processes=n)``, ``trackpy.link``. The grey conversion is the one
track_video uses (Rec. 709 luma rounded to 8 bits; ``pims.as_grey`` would
give floats, which trackpy scales differently, so the same minmass would
select other features). ``track_video`` is run with the same diameter,
minmass, separation and search range (resolved once by a first ``auto``
run; the auto run is timed too), so both do the same locate and link work
and find the same features (``refine: none`` on our side: the default sub-pixel
refinement is extra work that bare trackpy does not do, timed on its own by
benchmarks/bench_localisation.py); track_video additionally validates the input,
computes velocities, writes parquet files and QC figures. Runs alternate between the two so that load
from other processes on the machine affects both alike; the best of
``--repeats`` runs is reported (and the median).

    python benchmarks/bench_tracking.py [--frames GLOB] [--processes 1 2] [--out PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import imageio.v2 as imageio
import numpy as np
import pims
import trackpy

from mpd.atomic import atomic_write_json
from tracking import track_video
from tracking._quiet import quiet_trackpy

TARGET_RATIO = 1.2
LUMA = np.array([0.2125, 0.7154, 0.0721])


@pims.pipeline
def grey8(frame):
    """Colour to 8-bit grey, as a user would write it (and as tracking.io does)."""
    frame = np.asarray(frame)
    return frame if frame.ndim == 2 else np.rint(frame[..., :3] @ LUMA).astype(frame.dtype)


def bare_trackpy(frames_glob: str, diameter: int, minmass: float, separation: float, invert: bool,
                 search_range_px: float, memory: int, processes: int) -> tuple[float, int]:
    start = time.perf_counter()
    frames = grey8(pims.open(frames_glob))
    with warnings.catch_warnings(), quiet_trackpy():
        warnings.simplefilter("ignore")
        features = trackpy.batch(frames, diameter, minmass=minmass, separation=separation, invert=invert,
                                 processes=processes)
        trajectories = trackpy.link(features, search_range_px, memory=memory)
    return time.perf_counter() - start, len(trajectories)


def ours(frames_glob: str, params: dict, pixel_size_um: float, fps: float, processes: int) -> tuple[float, int]:
    out = Path(tempfile.mkdtemp(prefix="bench-tracking-")) / "out"
    try:
        start = time.perf_counter()
        result = track_video(frames_glob, out, params, pixel_size_um=pixel_size_um, frame_rate_hz=fps,
                             processes=processes)
        return time.perf_counter() - start, len(result.features)
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)


def pingpong_sequence(frames_glob: str, n_frames: int, folder: Path) -> str:
    """A longer grey PNG sequence from the input played forwards and backwards (motion stays continuous).

    PNG files rather than one TIFF: bare trackpy.batch with processes > 1
    reads a pims TiffStack from two threads at once (its task feeder and the
    loop asking each frame's number) and corrupts the shared file position.
    """
    frames = [np.asarray(frame) for frame in grey8(pims.open(frames_glob))]
    order = []
    while len(order) < n_frames:
        order += list(range(len(frames))) + list(range(len(frames) - 2, 0, -1))
    for index, frame in enumerate(order[:n_frames]):
        imageio.imwrite(folder / f"frame_{index:05d}.png", frames[frame])
    return str(folder / "*.png")


def time_input(source: str, n_frames: int, locate: dict, search_range_px: float, explicit: dict, args,
               with_auto: bool) -> list[dict]:
    """Alternate bare trackpy and track_video runs on one input; best and median per number of processes."""
    auto_params = {"locate": {"invert": args.invert, "refine": "none"}}
    results = []
    for processes in args.processes:
        times = {"bare_trackpy": [], "track_video": []} | ({"track_video_auto": []} if with_auto else {})
        counts = {}
        for _ in range(args.repeats):
            seconds, counts["bare_trackpy_features"] = bare_trackpy(
                source, locate["diameter"], locate["minmass"], locate["separation"], args.invert,
                search_range_px, 0, processes)
            times["bare_trackpy"].append(seconds)
            seconds, counts["track_video_features"] = ours(source, explicit, args.pixel_size_um, args.fps, processes)
            times["track_video"].append(seconds)
            if with_auto:
                seconds, _ = ours(source, auto_params, args.pixel_size_um, args.fps, processes)
                times["track_video_auto"].append(seconds)
        best = {k: min(v) for k, v in times.items()}
        entry = {
            "processes": processes,
            "seconds_best": {k: round(v, 3) for k, v in best.items()},
            "seconds_median": {k: round(statistics.median(v), 3) for k, v in times.items()},
            "frames_per_second_best": {k: round(n_frames / v, 2) for k, v in best.items()},
            "ratio_track_video_to_bare": round(best["track_video"] / best["bare_trackpy"], 3),
            "ratio_track_video_to_bare_median": round(statistics.median(times["track_video"])
                                                      / statistics.median(times["bare_trackpy"]), 3),
            **counts,
        }
        if with_auto:
            entry["ratio_track_video_auto_to_bare"] = round(best["track_video_auto"] / best["bare_trackpy"], 3)
        results.append(entry)
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", default="/work/shared/data/bulk_water/*.png", help="video file or glob")
    parser.add_argument("--pixel-size-um", type=float, default=1 / 2.85)
    parser.add_argument("--fps", type=float, default=24.0)
    parser.add_argument("--invert", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--long-frames", type=int, default=120,
                        help="also time a video of this many frames made from the input played back and forth "
                             "(fixed costs weigh less); 0 to skip")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "tracking.json"))
    args = parser.parse_args(argv)
    load_at_start = list(os.getloadavg())

    # One auto run resolves the parameters both sides then use.
    out = Path(tempfile.mkdtemp(prefix="bench-tracking-")) / "out"
    try:
        first = track_video(args.frames, out, {"locate": {"invert": args.invert, "refine": "none"}},
                            pixel_size_um=args.pixel_size_um,
                            frame_rate_hz=args.fps, processes=1)
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
    resolved = first.qc["resolved"]
    locate = resolved["locate"]
    search_range_px = resolved["link"]["search_range_px"]
    explicit = {"locate": {"invert": args.invert, "diameter": locate["diameter"], "minmass": locate["minmass"],
                           "separation": locate["separation"], "refine": "none"},
                "link": {"search_range_um": search_range_px * args.pixel_size_um}}

    inputs = [{"input": args.frames, "frames": first.qc["frames_analysed"],
               "results": time_input(args.frames, first.qc["frames_analysed"], locate, search_range_px, explicit,
                                     args, with_auto=True)}]
    if args.long_frames:
        folder = Path(tempfile.mkdtemp(prefix="bench-tracking-long-"))
        try:
            long_source = pingpong_sequence(args.frames, args.long_frames, folder)
            inputs.append({"input": f"{args.frames} played back and forth, {args.long_frames} grey PNG frames",
                           "frames": args.long_frames,
                           "results": time_input(long_source, args.long_frames, locate, search_range_px, explicit,
                                                 args, with_auto=False)})
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    report = {
        "frame_shape_px": first.qc["frame_shape_px"],
        "parameters": explicit,
        "target_ratio": TARGET_RATIO,
        "within_target": all(r["ratio_track_video_to_bare"] <= TARGET_RATIO for i in inputs for r in i["results"]),
        "inputs": inputs,
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": load_at_start,
                    "load_average_at_end": list(os.getloadavg()),
                    "python": platform.python_version(), "trackpy": trackpy.__version__, "pims": pims.__version__},
        "repeats": args.repeats,
        "note": "best of the repeats; other processes on the machine (see load_average) add noise",
    }
    atomic_write_json(report, args.out)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
