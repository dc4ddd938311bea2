"""Benchmark: fidelity of the learned model against the digital twin's truth (issue 10).

    python benchmarks/bench_fidelity.py [--out benchmarks/results/fidelity.json] [--quick]

The protocol (docs/fidelity.md):

1. Truth: LAMMPS Brownian dynamics of a bidisperse monolayer (default 1500
   particles) under cyclic box shear, for train + validation + 25 x train
   cycles (2 + 1 + 50 by default), so that the periodic-box rollout has a
   truth to be compared with over all of its frames.
2. Video: the first train + validation + window cycles (2 + 1 + 15) rendered
   through a bright-field microscope smaller than the sample; tracked with the
   pipeline's defaults (species from the spot sizes).
3. Geometry and training with the pipeline's defaults on the first 2 cycles,
   validation on the 3rd.
4. Rollouts: in the field of view over the remaining 15 cycles (exterior band
   prescribed from the data, particles handed over as they cross it), and in
   the twin's periodic, sheared box for 25 times the training span, from the
   truth's state at the end of the validation cycle.
5. The analysis stage (`analysis.stage.analyse_experiment`): every statistic
   of the rollouts and of the null model (affine flow + Brownian steps with
   the measured diffusion coefficients) against the truth over the same
   frames, and the targets, met or missed.

Writes the JSON (`--out`), a markdown table beside it, and the figures of the
comparison into `--figures` (default benchmarks/results/fidelity/). Work
files go to `--work` (default a temporary folder, removed). `--quick` runs a
small, short version (a smoke test of the script, not a measurement).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO))

import pandas as pd
import torch

from analysis.inputs import truth_box_table
from analysis.measure import length_scale
from analysis.stage import analyse_experiment
from mpd.geometry.masks import window_from_video_metadata
from mpd.geometry.params import GeometryParams
from mpd.geometry.stage import compute_geometry
from mpd.params import ModelConfig
from mpd.provenance import software_versions
from mpd.stage import rollout_box, rollout_model, train_model
from tracking.pipeline import track_video
from twin.params import MicroscopeParams, SimulationParams, from_dict
from twin.render import render_video
from twin.simulate import simulate

DEFAULT_OUT = REPO / "benchmarks" / "results" / "fidelity.json"
PERIOD_S, FRAME_RATE_HZ = 2.0, 20.0


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def protocol(args) -> dict:
    """The twin, the cycle counts and the frame ranges of the benchmark."""
    frames_per_cycle = round(PERIOD_S * FRAME_RATE_HZ)
    train_frames = args.train_cycles * frames_per_cycle
    box_frames = args.box_factor * train_frames
    video_cycles = args.train_cycles + 1 + args.window_cycles
    truth_cycles = args.train_cycles + 1 + max(args.window_cycles, math.ceil(box_frames / frames_per_cycle))
    test_start = (args.train_cycles + 1) * frames_per_cycle
    return {
        "simulation": {"seed": args.seed, "n_particles": args.particles, "packing_fraction": 0.5,
                       "interaction": {"dipolar_kT": 300.0},
                       "shear": {"amplitude": 0.08, "period_s": PERIOD_S, "cycles": truth_cycles},
                       "frame_rate_hz": FRAME_RATE_HZ},
        "microscope": {"seed": args.seed + 1, "pixel_size_um": 0.3, "width_px": args.fov_px, "height_px": args.fov_px,
                       "spot": "brightfield", "bit_depth": 12},
        "frames_per_cycle": frames_per_cycle, "train_cycles": args.train_cycles, "validation_cycles": 1,
        "window_cycles": args.window_cycles, "video_frames": video_cycles * frames_per_cycle + 1,
        "test_start_frame": test_start, "box_frames": box_frames, "box_factor": args.box_factor,
        "split_fractions": [args.train_cycles / video_cycles, 1 / video_cycles, args.window_cycles / video_cycles],
    }


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    p = protocol(args)
    work = Path(args.work)
    timings = {}

    def timed(name, fn, *a, **k):
        t0 = time.perf_counter()
        out = fn(*a, **k)
        timings[name] = round(time.perf_counter() - t0, 2)
        print(f"{name}: {timings[name]} s", flush=True)
        return out

    sim = from_dict(SimulationParams, p["simulation"], "simulation")
    timed("simulate", simulate, sim, work / "truth")
    truth = pd.read_parquet(work / "truth" / "trajectories.parquet")
    truth_meta = json.loads((work / "truth" / "metadata.json").read_text())
    mic = from_dict(MicroscopeParams, p["microscope"], "microscope")
    timed("render", render_video, truth[truth["frame"] < p["video_frames"]], truth_meta, mic, work / "video")
    video = json.loads((work / "video" / "metadata.json").read_text())
    tracked = timed("track", track_video, video["frames_path"], work / "tracking",
                    {"locate": {"invert": bool(video["dark_particles"])}},
                    pixel_size_um=video["pixel_size_um"], frame_rate_hz=video["frame_rate_hz"],
                    processes=args.threads, truth_pixels=work / "video" / "truth_pixels.parquet")
    trajectories = tracked.trajectories
    window = window_from_video_metadata(video)
    geometry = GeometryParams.from_config({"split_fractions": p["split_fractions"]})
    kwargs = geometry.compute_kwargs(spacing_um=length_scale(trajectories, window=tuple(window)),
                                     cycle_frames=float(p["frames_per_cycle"]))
    timed("geometry", compute_geometry, trajectories, work / "geometry", frame_rate_hz=FRAME_RATE_HZ,
          video_metadata=video, **kwargs)
    model_config = {"training": {"progress": False, "num_threads": args.threads,
                                 **({"epochs": args.epochs} if args.epochs else {})},
                    "rollout": {"progress": False}}
    config = ModelConfig.from_config(model_config)
    timed("train", train_model, work / "geometry", work / "model", config)
    timed("rollout_window", rollout_model, work / "model" / "model.pt", trajectories, work / "geometry",
          work / "model", config)
    strain = pd.read_csv(work / "truth" / "strain.csv")
    start = p["test_start_frame"]
    timed("rollout_box", rollout_box, work / "model" / "model.pt", truth[truth["frame"] <= start],
          truth_box_table(truth_meta, strain), work / "geometry", work / "model", config, start_frame=start,
          n_frames=p["box_frames"])
    doc = timed("analysis", analyse_experiment, trajectories, video, work / "analysis",
                truth=truth, truth_metadata=truth_meta, strain=strain,
                rollout=work / "model" / "rollout.parquet", rollout_status=work / "model" / "rollout_status.json",
                rollout_box=work / "model" / "rollout_box.parquet",
                rollout_box_status=work / "model" / "rollout_box_status.json",
                dataset_metadata=work / "geometry" / "dataset" / "metadata.json",
                settings={"d2min_lag_frames": p["frames_per_cycle"] // 4, "frame_step": 1,
                          "box_frame_step": args.frame_step})

    window_status = json.loads((work / "model" / "rollout_status.json").read_text())
    box_status = json.loads((work / "model" / "rollout_box_status.json").read_text())
    model_meta = torch.load(work / "model" / "model.pt", map_location="cpu", weights_only=True)["metadata"]
    dataset_meta = json.loads((work / "geometry" / "dataset" / "metadata.json").read_text())
    box_doc = json.loads((work / "analysis" / "box" / "metrics.json").read_text())
    pairs_per_particle = _pairs_per_particle(truth, truth_meta, strain, dataset_meta["length_scale_um"], start)
    result = {
        "benchmark": "fidelity",
        "issue": 10,
        "quick": bool(args.quick),
        "protocol": p,
        "work_size": {
            "truth_particles": int(truth["particle"].nunique()),
            "truth_frames": int(truth["frame"].nunique()),
            "tracked_particles_per_frame": float(trajectories.groupby("frame").size().mean()),
            "h_um": dataset_meta["length_scale_um"],
            "neighbours_per_particle_within_h": pairs_per_particle,
            "n_species": dataset_meta.get("n_species", 1),
            "training_pairs": dataset_meta["splits"]["train"]["n_pairs"],
            "window_rollout_frames": window_status["frames_written"],
            "window_predicted_at_start": window_status.get("n_predicted_at_start"),
            "box_rollout_frames": box_status["frames_written"],
            "box_particle_steps": box_status["frames_written"] * int(truth["particle"].nunique()),
        },
        "tracking_accuracy": tracked.accuracy,
        "training": {"best_epoch": model_meta["best_epoch"], "selection_basis": model_meta["selection_basis"],
                     "epochs_run": model_meta["epochs_run"], "dtype": model_meta["dtype"]},
        "rollout_status": {"window": window_status["status"], "periodic_box": box_status["status"]},
        "fidelity": doc["fidelity"],
        "errors_window": {ref: {c: doc["errors"][ref][c] for c in ("rollout", "null")} for ref in doc["errors"]},
        "errors_box": box_doc["errors"]["truth"],
        "summary_box": box_doc["summary"],
        "timings_s": timings,
        "machine": {"cores": _cores(), "threads": args.threads, "platform": platform.platform(),
                    "python": platform.python_version()},
        "versions": software_versions("torch", "numpy", "pandas"),
    }
    return result


def _pairs_per_particle(truth, truth_meta, strain, h_um, frame) -> float:
    from mpd.geometry.neighbours import radius_pairs

    box = truth_box_table(truth_meta, strain).set_index("frame").loc[frame]
    from mpd.geometry.domain import Box

    rows = truth[truth["frame"] == frame]
    found = radius_pairs(rows[["x", "y"]].to_numpy(), float(h_um), Box(box["lx"], box["ly"], box["xy"]))
    return 2.0 * len(found.i) / len(rows)


def markdown(result: dict) -> str:
    lines = ["# Fidelity of the learned model against the twin's truth (issue 10)", "",
             (f"Written by `benchmarks/bench_fidelity.py`{' (--quick: a smoke test, not a measurement)' if result['quick'] else ''}; "
             "the numbers come from `fidelity.json`. Error: relative L2 error of the curve (relative error for "
             "non-affine <v²> and the mean rearranging fraction, ± its counting error from the independent "
             "rearrangement events of both runs; fraction for overlaps). **met** / *missed* "
             "against the target; the null model is the imposed affine flow plus independent Brownian steps."), ""]
    for domain, report in result["fidelity"].items():
        w = result["work_size"]
        size = (f"{w['window_rollout_frames']} frames, {w['window_predicted_at_start']} predicted particles at the start"
                if domain == "window" else f"{w['box_rollout_frames']} frames x {w['truth_particles']} particles")
        lines += [f"## {domain.replace('_', ' ')} (frames {report['frames'][0]}-{report['frames'][1]}; {size})", "",
                  "| metric | target | rollout | null model | rollout beats null |", "|---|---|---|---|---|"]
        for row in report["rows"]:
            def cell(name, row=row):
                v = row["values"].get(name)
                text = "n/a" if v is None else f"{v:.3g}"
                error = row.get("uncertainty", {}).get(name)
                text += f" ± {error:.2g}" if error is not None else ""
                return f"**{text}** met" if row["met"].get(name) else f"*{text}* missed"
            beats = row["beats_null"].get("rollout")
            lines.append(f"| {row['metric']} | {row['target']:g} | {cell('rollout')} | {cell('null')} | "
                         f"{'yes' if beats else 'no' if beats is not None else 'n/a'} |")
        lines += ["", f"Missed by the rollout: {', '.join(report['missed']['rollout']) or 'none'}.", ""]
    lines += [f"Timings (s): {json.dumps(result['timings_s'])}", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--figures", type=Path, default=None, help="default: beside --out, in a folder named after it")
    parser.add_argument("--work", type=Path, default=None, help="keep the work files here (default: a temporary folder)")
    parser.add_argument("--particles", type=int, default=1500)
    parser.add_argument("--fov-px", type=int, default=360)
    parser.add_argument("--train-cycles", type=int, default=2)
    parser.add_argument("--window-cycles", type=int, default=15,
                        help="cycles rolled out in the field of view: rearrangements are rare events (about 8 "
                             "independent ones per 100 frames in the default window); 5 cycles cannot resolve the "
                             "25 %% target")
    parser.add_argument("--box-factor", type=int, default=25)
    parser.add_argument("--epochs", type=int, default=None, help="default: the training default")
    parser.add_argument("--frame-step", type=int, default=2,
                        help="every n-th frame for g(r), D2min, defects in the periodic box (the window: every frame)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--threads", type=int, default=min(2, _cores()))
    parser.add_argument("--quick", action="store_true", help="a small, short run: a smoke test of the script")
    args = parser.parse_args(argv)
    if args.quick:
        args.particles, args.fov_px, args.window_cycles, args.box_factor = 300, 160, 1, 2
        args.train_cycles, args.epochs, args.frame_step = 1, args.epochs or 2, 4
    figures = args.figures or args.out.with_suffix("")
    with tempfile.TemporaryDirectory(prefix="bench-fidelity-") as tmp:
        args.work = args.work or Path(tmp)
        result = run(args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, allow_nan=False, default=float) + "\n")
        args.out.with_suffix(".md").write_text(markdown(result))
        figures.mkdir(parents=True, exist_ok=True)
        for source, prefix in ((args.work / "analysis" / "figures", "window_"),
                               (args.work / "analysis" / "box" / "figures", "box_")):
            for png in source.glob("*.png"):
                name = png.name if png.name.startswith("fidelity") else prefix + png.name
                shutil.copyfile(png, figures / name)
        movie = args.work / "analysis" / "figures" / "movie.mp4"
        if movie.is_file():
            shutil.copyfile(movie, figures / "window_movie.mp4")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
