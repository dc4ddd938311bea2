"""CPU time per frame of the optional image tools, each against the run without it, with what it buys.

* ``locate.flatten`` (none, gaussian, rolling_ball) on the default twin
  filmed in bright field under strong vignetting (corners at 40 % light, a
  80 % gradient): CPU time of the flattening per frame, of the whole
  ``track_video`` per frame, and the detection and localisation against the
  truth;
* ``link.drift: registration`` against ``median`` on the same video shifted
  by a known stage drift (sub-pixel steps and one 6 px jump): CPU time per
  frame of the registration, of ``track_video``, and the drift error;
* movie decoding by OpenCV against imageio-ffmpeg (pims.ImageIOReader) on an
  MP4 (H.264) and an AVI (MJPEG) of the same frames: CPU time per frame,
  ffmpeg's subprocess included, reading every frame in order.

Everything runs on one thread (OMP/BLAS/OpenCV/FFmpeg): CPU time is this
process's plus its finished children's (``resource.getrusage``).

    python benchmarks/bench_preprocess.py [--out benchmarks/results/preprocess.json]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(variable, "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
import pandas as pd
import tifffile
from scipy import ndimage

from mpd.atomic import atomic_write_json
from tracking import track_video
from tracking.flatten import flatten_frames
from tracking.register import register_frames

VIGNETTING, GRADIENT = 0.6, 0.8
REPEATS = 3


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def best_cpu(function, repeats: int = REPEATS):
    """(least CPU seconds over repeats, the last result)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = cpu_seconds()
        result = function()
        best = min(best, cpu_seconds() - start)
    return best, result


def make_twin(work: Path) -> tuple[Path, dict]:
    from twin.params import IlluminationParams, MicroscopeParams, SimulationParams
    from twin.render import render_video
    from twin.simulate import simulate

    defaults = SimulationParams()
    simulate(dataclasses.replace(defaults, shear=dataclasses.replace(defaults.shear, cycles=0.5)), work / "truth")
    truth = pd.read_parquet(work / "truth" / "trajectories.parquet")
    meta = json.loads((work / "truth" / "metadata.json").read_text())
    microscope = MicroscopeParams(illumination=IlluminationParams(vignetting=VIGNETTING, gradient=GRADIENT))
    render_video(truth, meta, microscope, work / "video")
    return work / "video", json.loads((work / "video" / "metadata.json").read_text())


def flatten_case(video_dir: Path, video: dict, work: Path) -> dict:
    frames = tifffile.imread(video["frames_path"])
    units = {"pixel_size_um": video["pixel_size_um"], "frame_rate_hz": video["frame_rate_hz"]}
    out = {"work": {"frames": len(frames), "frame_shape_px": list(frames.shape[1:]),
                    "particles_in_view": round(video["mean_particles_in_fov"], 1),
                    "illumination": {"vignetting": VIGNETTING, "gradient": GRADIENT}}, "methods": {}}
    for method in ("none", "gaussian", "rolling_ball"):
        flatten_s, _ = best_cpu(lambda m=method: flatten_frames(frames, m, 13.7, dark_particles=True))
        total_s, result = best_cpu(lambda m=method: track_video(
            video["frames_path"], work / f"flat_{m}", {"locate": {"invert": True, "flatten": m}}, **units,
            truth_pixels=video_dir / "truth_pixels.parquet"))
        accuracy = result.accuracy
        out["methods"][method] = {
            "flatten_cpu_ms_per_frame": round(1000 * flatten_s / len(frames), 3),
            "track_video_cpu_ms_per_frame": round(1000 * total_s / len(frames), 2),
            "fraction_missed": round(accuracy["fraction_missed"], 4),
            "fraction_spurious": round(accuracy["fraction_spurious"], 4),
            "localisation_rms_px": round(accuracy["localisation_rms_px"], 4),
            "fraction_correct_links": round(accuracy["fraction_correct_links"], 4),
            "size_px": (result.qc["auto"].get("flatten") or {}).get("size_px"),
        }
    return out


JUMP_PX = (7.0, -6.0)  # the stage jump, beyond the search range SEARCH_RANGE_PX
SEARCH_RANGE_PX = 4.0


def shifted_copy(frame: np.ndarray, n_frames: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """One frame of a still sample, moved by a stage drift (sub-pixel steps, one jump; cubic spline), new noise each.

    A still sample, so that the stage's motion is all the content's motion and the drift has a truth.
    """
    steps = rng.uniform(-0.5, 0.5, (n_frames, 2))
    steps[0] = 0
    steps[n_frames // 2] += JUMP_PX
    shifts = np.cumsum(steps, axis=0)
    top = np.iinfo(frame.dtype).max
    moved = np.stack([np.clip(np.rint(ndimage.shift(frame.astype(float), (dy, dx), order=3, mode="nearest")
                                      + rng.normal(0, 20, frame.shape)), 0, top).astype(frame.dtype)
                      for dx, dy in shifts])
    return moved, shifts


def registration_case(video: dict, work: Path) -> dict:
    frames = tifffile.imread(video["frames_path"])
    moved, shifts = shifted_copy(frames[0], len(frames), np.random.default_rng(0))
    path = work / "shifted.tif"
    tifffile.imwrite(path, moved, photometric="minisblack")
    units = {"pixel_size_um": video["pixel_size_um"], "frame_rate_hz": video["frame_rate_hz"]}
    register_s, (drift, _) = best_cpu(lambda: register_frames(moved, np.arange(len(moved))))
    out = {"work": {"frames": len(moved), "frame_shape_px": list(moved.shape[1:]), "search_range_px": SEARCH_RANGE_PX,
                    "largest_step_px": round(float(np.max(np.hypot(*np.diff(shifts, axis=0).T))), 3)},
           "registration_cpu_ms_per_frame": round(1000 * register_s / len(moved), 3),
           "registration_error_rms_px": round(float(np.sqrt(np.mean(
               (drift[["x_px", "y_px"]].to_numpy() - (shifts - shifts[0])) ** 2))), 4),
           "methods": {}}
    for method in ("median", "registration"):
        total_s, result = best_cpu(lambda m=method: track_video(
            path, work / f"drift_{m}", {"locate": {"invert": True}, "link": {"drift": m, "search_range_px": SEARCH_RANGE_PX,
                                                                          "min_length": 2},
                                        "checks": {"max_short_fraction": None}}, **units))
        found = pd.read_csv(work / f"drift_{method}" / "drift.csv")[["x", "y"]].to_numpy() / units["pixel_size_um"]
        lengths = result.trajectories.groupby("particle").size()
        out["methods"][method] = {
            "track_video_cpu_ms_per_frame": round(1000 * total_s / len(moved), 2),
            "drift_error_rms_px": round(float(np.sqrt(np.mean((found - (shifts - shifts[0])) ** 2))), 4),
            "trajectories": len(lengths),
            "mean_trajectory_length_frames": round(float(lengths.mean()), 2),
        }
    return out


BULK_WATER = ROOT.parent / "shared" / "data" / "bulk_water"


def decode_case(video: dict, work: Path) -> dict:
    from tracking.movie import opencv_available

    if not opencv_available():
        return {"skipped": "opencv-python-headless is not installed"}
    frames = tifffile.imread(video["frames_path"])
    inputs = {"twin": np.clip(np.rint(frames.astype(float) / frames.max() * 255), 0, 255).astype(np.uint8)}
    if BULK_WATER.exists():
        from tracking.io import open_video

        real = open_video(str(BULK_WATER / "*.png"))
        inputs["bulk_water"] = np.stack([real.read(i) for i in range(len(real))])
    return {name: decode_movies(grey, work / name) for name, grey in inputs.items()}


def decode_movies(grey: np.ndarray, work: Path) -> dict:
    import imageio.v2 as imageio
    import pims

    from tracking.movie import OpenCVReader

    work.mkdir(parents=True, exist_ok=True)
    # A longer movie (the frames back and forth, 4 times) so that opening costs weigh less.
    order = np.r_[np.arange(len(grey)), np.arange(len(grey) - 2, 0, -1)]
    sequence = grey[np.tile(order, 4)]
    out = {"work": {"frames": len(sequence), "frame_shape_px": list(sequence.shape[1:])}, "movies": {}}
    for suffix, codec in ((".mp4", "libx264"), (".avi", "mjpeg")):
        path = work / f"movie{suffix}"
        writer = imageio.get_writer(path, fps=20, codec=codec, macro_block_size=16, ffmpeg_log_level="error")
        for frame in sequence:
            writer.append_data(np.dstack([frame] * 3))
        writer.close()
        entry = {"codec": codec}
        for name, opener in (("opencv", lambda p=path: OpenCVReader(str(p))),
                             ("imageio_ffmpeg", lambda p=path: pims.ImageIOReader(str(p)))):
            def read_all(opener=opener):
                reader = opener()
                count = sum(1 for _ in reader)
                reader.close()
                return count
            start_wall = time.perf_counter()
            seconds, count = best_cpu(read_all)
            entry[name] = {"cpu_ms_per_frame": round(1000 * seconds / count, 3), "frames_read": count,
                           "wall_s_all_repeats": round(time.perf_counter() - start_wall, 2)}
        entry["opencv_speedup"] = round(entry["imageio_ffmpeg"]["cpu_ms_per_frame"]
                                        / entry["opencv"]["cpu_ms_per_frame"], 2)
        out["movies"][suffix[1:]] = entry
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "preprocess.json"))
    args = parser.parse_args(argv)
    os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "threads;1")
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-preprocess-") as tmp:
        work = Path(tmp)
        video_dir, video = make_twin(work)
        report = {"flatten": flatten_case(video_dir, video, work),
                  "registration": registration_case(video, work),
                  "decode": decode_case(video, work)}
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["repeats"] = REPEATS
    report["note"] = "CPU times are the least of the repeats, on one thread; work sizes beside each case"
    report["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                         "load_average": list(os.getloadavg())}
    atomic_write_json(report, args.out)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
