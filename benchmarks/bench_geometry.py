"""Cost of the per-frame geometry (neighbour search, Falk-Langer strain, Voronoi areas) against N.

Usage: python benchmarks/bench_geometry.py [--out benchmarks/results/geometry.json] [--sizes 1000 10000 100000]

Particles: a jittered triangular lattice (spacing 1, the unit of length),
h = 2.5 (about 20 neighbours, a few particle diameters), in an open window and
in a periodic box sheared by xy = 0.3 lx. Times are the best of a few repeats,
wall clock and CPU time of this process. The scaling exponent is the slope of
log(time) against log(N) over the sizes run; 1 means linear cost.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from functools import partial
from pathlib import Path

import numpy as np

from mpd.geometry.domain import Box
from mpd.geometry.neighbours import radius_pairs, torch_cluster_available
from mpd.geometry.strain import local_strain
from mpd.geometry.voronoi import voronoi_areas

H = 2.5
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "geometry.json"


def configuration(n: int, seed: int = 0):
    """~n particles on a jittered triangular lattice; returns positions, the sheared box, a strained copy."""
    nx = round(float(np.sqrt(n * 2 / np.sqrt(3))))
    ny = max(2, round(n / nx) // 2 * 2)
    j, i = np.divmod(np.arange(nx * ny), nx)
    p = np.stack([i + 0.5 * (j % 2), j * np.sqrt(3) / 2], axis=1)
    rng = np.random.default_rng(seed)
    p += rng.normal(0, 0.1, p.shape)
    lx, ly = float(nx), ny * np.sqrt(3) / 2
    box = Box(lx, ly, 0.3 * lx)
    p[:, 0] += 0.3 * p[:, 1]  # fill the sheared cell
    moved = p + np.stack([0.02 * p[:, 1], np.zeros(len(p))], 1) + rng.normal(0, 0.01, p.shape)
    return p, box, moved


def tasks(p, box, moved, backends):
    """(task, backend, domain, callable) for one configuration."""
    cases = []
    for backend in backends:
        for domain, b in (("open", None), ("periodic_sheared", box)):
            cases.append(("neighbours", backend, domain, partial(radius_pairs, p, H, box=b, backend=backend)))
    cases.append(("strain", "scipy", "open", partial(local_strain, moved, p, H)))
    cases.append(("strain", "scipy", "periodic_sheared", partial(local_strain, moved, p, H, box=box)))
    cases.append(("voronoi", "scipy", "open", partial(voronoi_areas, p)))
    cases.append(("voronoi", "scipy", "periodic_sheared", partial(voronoi_areas, p, box=box)))
    return cases


def best_time(fn, repeats: int) -> tuple[float, float]:
    """Best wall-clock and best CPU time (this process, all threads) of `repeats` calls, seconds.

    CPU time is reported too because on a shared machine other processes
    inflate wall-clock time but not this process's CPU time.
    """
    best_wall, best_cpu = np.inf, np.inf
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best_wall, best_cpu


def fitted_exponent(rows, key: str) -> float:
    """Slope of log(time) against log(N)."""
    return round(float(np.polyfit(np.log([r["n"] for r in rows]), np.log([r[key] for r in rows]), 1)[0]), 3)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    args = parser.parse_args(argv)

    backends = ["scipy"] + (["torch_cluster"] if torch_cluster_available() else [])
    rows = []
    for n in sorted(args.sizes):
        p, box, moved = configuration(n)
        small = len(p) <= 10_000
        for task, backend, domain, fn in tasks(p, box, moved, backends):
            if small:
                fn()  # warm-up (imports, first allocations); the large sizes come after the small ones
            wall, cpu = best_time(fn, 5 if small else 2)
            rows.append({"task": task, "backend": backend, "domain": domain, "n": len(p),
                         "seconds": wall, "cpu_seconds": cpu})
            print(f"{task:10s} {backend:13s} {domain:17s} N={len(p):>7d}  wall {wall * 1e3:9.2f} ms"
                  f"  cpu {cpu * 1e3:9.2f} ms", flush=True)

    exponents, cpu_exponents = {}, {}
    for key in sorted({(r["task"], r["backend"], r["domain"]) for r in rows}):
        sel = [r for r in rows if (r["task"], r["backend"], r["domain"]) == key]
        if len(sel) >= 2:
            exponents["/".join(key)] = fitted_exponent(sel, "seconds")
            cpu_exponents["/".join(key)] = fitted_exponent(sel, "cpu_seconds")
    for name, slope in exponents.items():
        print(f"scaling exponent {name}: wall {slope}, cpu {cpu_exponents[name]}")
    import scipy
    import torch

    result = {
        "benchmark": "geometry per frame",
        "h_over_spacing": H,
        "configuration": "jittered triangular lattice (spacing 1, jitter 0.1), sheared box xy = 0.3 lx",
        "timing": "best of 5 (N <= 1e4, after a warm-up) or 2 repeats; seconds = wall clock, "
                  "cpu_seconds = this process's CPU time (robust to other load on a shared machine)",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "numpy": np.__version__, "scipy": scipy.__version__, "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads()},
        "backends": backends,
        "results": rows,
        "scaling_exponent": exponents,
        "scaling_exponent_cpu": cpu_exponents,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
