"""Benchmark: generating the default digital-twin experiment (simulation + rendering).

    python benchmarks/bench_twin_generate.py [--out benchmarks/results/twin_generate.json]

Runs ``twin.simulate.simulate`` and ``twin.render.render_video`` with the
parameters of the default experiment in ``config.yaml`` into a temporary
directory and writes the timings as JSON. Target: under 2 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO))

import pandas as pd
import yaml

from twin.params import MicroscopeParams, SimulationParams, from_dict, to_dict
from twin.render import render_video
from twin.simulate import simulate

DEFAULT_OUT = REPO / "benchmarks" / "results" / "twin_generate.json"


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def default_experiment() -> tuple[str, SimulationParams, MicroscopeParams]:
    """The first synthetic experiment of the repository's config.yaml."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    for name, experiment in config["experiments"].items():
        if "synthetic" in experiment:
            spec = experiment["synthetic"]
            return (name, from_dict(SimulationParams, spec.get("simulation"), "simulation"),
                    from_dict(MicroscopeParams, spec.get("microscope"), "microscope"))
    raise SystemExit("config.yaml has no synthetic experiment to benchmark")


def time_simulation(params: SimulationParams, out_dir: Path | None = None) -> dict:
    """Run the ground-truth simulation once and return its timings and sizes."""
    with tempfile.TemporaryDirectory(prefix="bench-twin-") as tmp:
        t0 = time.perf_counter()
        result = simulate(params, Path(out_dir or tmp) / "truth")
        wall = time.perf_counter() - t0
    particle_steps = result.n_particles * result.n_steps
    return {
        "stage": "simulation",
        "wall_s": wall,
        "lammps_wall_s": result.lammps_wall_s,
        "n_particles": result.n_particles,
        "n_frames": result.n_frames,
        "steps": result.n_steps,
        "particle_steps_per_s": particle_steps / wall,
        "particle_steps_per_s_lammps": particle_steps / result.lammps_wall_s,
        "max_overlap_fraction": result.max_overlap_fraction,
        "lammps_version": result.lammps_version,
        "mpi_ranks": params.mpi_ranks,
        "cores": _cores(),
        "params": to_dict(params),
    }


def time_rendering(truth_dir: Path, params: MicroscopeParams) -> dict:
    """Render a simulated truth once and return the timings."""
    truth = pd.read_parquet(truth_dir / "trajectories.parquet")
    truth_meta = json.loads((truth_dir / "metadata.json").read_text())
    with tempfile.TemporaryDirectory(prefix="bench-render-") as tmp:
        t0 = time.perf_counter()
        result = render_video(truth, truth_meta, params, Path(tmp) / "video")
        wall = time.perf_counter() - t0
    return {
        "stage": "rendering",
        "wall_s": wall,
        "n_frames": result.n_frames,
        "frame_shape_px": [result.height_px, result.width_px],
        "mean_particles_in_fov": result.mean_particles_in_fov,
        "frames_per_s": result.n_frames / wall,
        "params": to_dict(params),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file to write (default: %(default)s)")
    args = parser.parse_args(argv)
    name, sim_params, mic_params = default_experiment()
    with tempfile.TemporaryDirectory(prefix="bench-twin-") as tmp:
        simulation = time_simulation(sim_params, Path(tmp))
        rendering = time_rendering(Path(tmp) / "truth", mic_params)
    total = simulation["wall_s"] + rendering["wall_s"]
    report = {
        "benchmark": "twin_generate",
        "experiment": name,
        "total_wall_s": total,
        "target_wall_s": 120.0,
        "meets_target": total < 120.0,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "simulation": simulation,
        "rendering": rendering,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k not in ("simulation", "rendering")}, indent=2))
    return report


if __name__ == "__main__":
    main()
