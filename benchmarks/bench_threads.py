"""Training speed on a shared machine: idle against beside a competing process, with and without the rule's limit.

Usage: python benchmarks/bench_threads.py [--out benchmarks/results/threads.json] [--particles N] [--steps K]

Each case runs in a fresh process: the training step of `bench_model.py` (teacher
at t and t+1, Gaussian NLL, backward; default network widths, float32, a dense
liquid of N particles in a periodic box) K times after one warm-up.

* limited: the process is started as a workflow rule is (`mpd.threads.limit_threads`
  with the threads a rule gets when one other process holds a core: all cores
  less one, at least one);
* unlimited: torch's default, one thread per core (what every rule did before).

Each is timed idle and beside a competitor: a separate process that keeps one
core busy (a pure-Python loop, one thread). Reported per case: the median wall
seconds per step, the CPU seconds per step of the training process itself, and
loaded / idle. Target (issue 12): limited training beside a competitor within
1.5x of idle.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mpd.atomic import atomic_write_json
from mpd.provenance import software_versions

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "threads.json"
TARGET_RATIO = 1.5

CASE = """
import json, statistics, sys, time
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
threads = {threads!r}
if threads is not None:
    from mpd.threads import limit_threads
    limit_threads(threads)
import torch
from bench_model import cases
from mpd.model import MetriplecticModel
from mpd.params import NetworkParams
from mpd.training import model_kwargs
torch.manual_seed(0)
model = MetriplecticModel(**model_kwargs(NetworkParams(), 1.0)).float()
n, n_pairs, steps = cases({particles}, model, torch.device("cpu"))
step = steps["training_step"]
step()
walls, cpus = [], []
for _ in range({steps}):
    t0, c0 = time.perf_counter(), time.process_time()
    step()
    walls.append(time.perf_counter() - t0)
    cpus.append(time.process_time() - c0)
print(json.dumps({{"n_particles": n, "n_pairs": n_pairs, "torch_threads": torch.get_num_threads(),
                  "wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus)}}))
"""


def _spin(stop) -> None:
    """Keep one core busy until told to stop (the competing process)."""
    x = 0
    while not stop.is_set():
        for _ in range(10_000):
            x += 1


def run_case(threads: int | None, particles: int, steps: int, competitor: bool) -> dict:
    code = CASE.format(root=str(ROOT), bench=str(Path(__file__).resolve().parent), threads=threads,
                       particles=particles, steps=steps)
    environment = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    stop = mp.Event()
    spinner = mp.Process(target=_spin, args=(stop,), daemon=True) if competitor else None
    if spinner:
        spinner.start()
        time.sleep(0.5)
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env=environment, timeout=3600)
    finally:
        if spinner:
            stop.set()
            spinner.join(timeout=10)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--particles", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    given = max(1, cores - 1)
    rows = []
    for label, threads in (("limited", given), ("unlimited", None)):
        idle = run_case(threads, args.particles, args.steps, competitor=False)
        loaded = run_case(threads, args.particles, args.steps, competitor=True)
        ratio = loaded["wall_s"] / idle["wall_s"]
        rows.append({"case": label, "rule_threads": threads, "torch_threads": idle["torch_threads"],
                     "idle": idle, "beside_competitor": loaded, "loaded_over_idle": ratio})
        print(f"{label}: {idle['torch_threads']} threads, idle {idle['wall_s']:.3f} s/step, beside a competitor "
              f"{loaded['wall_s']:.3f} s/step ({ratio:.2f}x)", flush=True)
    limited = rows[0]["loaded_over_idle"]
    report = {
        "benchmark": "threads",
        "issue": 12,
        "work_size": {"particles": rows[0]["idle"]["n_particles"], "pairs": rows[0]["idle"]["n_pairs"],
                      "steps_timed": args.steps, "kind": "training step (teacher, NLL, backward), float32"},
        "machine": {"cores": cores, "platform": platform.platform(), "python": platform.python_version()},
        "competitor": "one process keeping one core busy (pure-Python loop)",
        "rows": rows,
        "target": {"limited_loaded_over_idle_at_most": TARGET_RATIO, "value": limited,
                   "met": bool(limited <= TARGET_RATIO)},
        "versions": software_versions("torch", "threadpoolctl"),
    }
    atomic_write_json(report, args.out)
    print(f"limited: {limited:.2f}x idle beside a competitor (target <= {TARGET_RATIO}): "
          f"{'met' if limited <= TARGET_RATIO else 'MISSED'}; {args.out}")
    return report


if __name__ == "__main__":
    main()
