"""Benchmark: generating the digital twin (for now: the LAMMPS ground-truth simulation only).

    python benchmarks/bench_twin_generate.py [--out benchmarks/results/twin_generate.json]

Runs ``twin.simulate.simulate`` with the default ``SimulationParams`` into a
temporary directory and writes the timings as JSON.
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

from twin.params import SimulationParams, to_dict
from twin.simulate import simulate

DEFAULT_OUT = REPO / "benchmarks" / "results" / "twin_generate.json"


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def time_simulation(params: SimulationParams) -> dict:
    """Run the ground-truth simulation once and return its timings and sizes."""
    with tempfile.TemporaryDirectory(prefix="bench-twin-") as tmp:
        t0 = time.perf_counter()
        result = simulate(params, Path(tmp) / "truth")
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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file to write (default: %(default)s)")
    args = parser.parse_args(argv)
    report = {
        "benchmark": "twin_generate",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "simulation": time_simulation(SimulationParams()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["simulation"] | {"params": "..."}, indent=2))
    return report


if __name__ == "__main__":
    main()
