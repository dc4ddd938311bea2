"""Throughput of the learned model: one rollout step and one training step against N.

Usage: python benchmarks/bench_model.py [--out benchmarks/results/model.json] [--quick] [--threads K]

Systems: random dense-liquid configurations in a periodic box, in model units
(cut-off h = 1): a triangular lattice of spacing 0.6 h (about 10 neighbours
within h) with every particle displaced uniformly by up to 0.3 of the spacing,
velocities ~ N(0, 0.02^2) h/frame, entropies ~ N(0, 0.1^2). The undisplaced
lattice is the reference configuration of the strain bonds. Default network
widths (mpd.params.NetworkParams), float32.

* rollout step: `VerletList.update` (no rebuild: the usual case) + one
  `euler_maruyama_step` with noise;
* training step: teacher at t and t+1 + the Gaussian NLL + backward (no
  optimiser update), as in `mpd.training`.

Reported: seconds per step (best of the repeats, after one warm-up at the
smaller sizes) and the CPU seconds of that repeat, particle-steps per
second = N / wall seconds, peak memory (CPU:
the largest resident-set growth during the step, sampled every millisecond
from /proc/self/statm; CUDA: torch.cuda.max_memory_allocated), and for each
(device, kind) the fitted exponent k of seconds ~ N^k (1 = linear cost).
N = 10^3, 10^4, 10^5 on CPU and CUDA, 10^6 on CUDA only; --quick: 10^3, 10^4.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mpd.geometry.domain import Box
from mpd.model import MetriplecticModel, State, euler_maruyama_step
from mpd.pairs import VerletList, snapshot_pairs
from mpd.params import NetworkParams

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "model.json"
SPACING = 0.6  # h
REPEATS = {1_000: 5, 10_000: 3, 100_000: 1, 1_000_000: 1}


def dense_liquid(n: int, seed: int = 0):
    """~n particles: displaced triangular lattice in its periodic box (model units); also the lattice itself."""
    nx = round(float(np.sqrt(n * 2 / np.sqrt(3))))
    ny = max(2, round(n / nx) // 2 * 2)
    j, i = np.divmod(np.arange(nx * ny), nx)
    lattice = np.stack([i + 0.5 * (j % 2), j * np.sqrt(3) / 2], axis=1) * SPACING
    rng = np.random.default_rng(seed)
    x = lattice + rng.uniform(-0.3, 0.3, lattice.shape) * SPACING
    box = Box(nx * SPACING, ny * SPACING * np.sqrt(3) / 2)
    return x, lattice, box


class PeakRSS:
    """Largest growth of the resident set size (MB) while the block runs, sampled every millisecond."""

    def __init__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = 0

    def rss(self) -> int:
        try:
            with open("/proc/self/statm") as handle:
                return int(handle.read().split()[1]) * self.page
        except OSError:  # not Linux: the process-wide maximum (kB on Linux, bytes on macOS)
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def __enter__(self):
        self.start = self.rss()
        self.peak = self.start
        self.running = True
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _poll(self):
        while self.running:
            self.peak = max(self.peak, self.rss())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.rss())
        self.mb = (self.peak - self.start) / 2**20


def measure(fn, device: torch.device, repeats: int, warmup: bool) -> tuple[float, float, float]:
    """(best wall seconds, CPU seconds of that repeat, peak memory MB) of fn().

    CPU seconds (this process, all threads) are reported beside the wall
    clock because on a shared machine the wall clock also measures the
    neighbours' load.
    """
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    if warmup:
        fn()
        sync()
    best, best_cpu, peak = float("inf"), float("inf"), 0.0
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync()
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
            peak = max(peak, (torch.cuda.max_memory_allocated(device) - base) / 2**20)
        else:
            with PeakRSS() as rss:
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
            peak = max(peak, rss.mb)
        if elapsed < best:
            best, best_cpu = elapsed, cpu
    return best, best_cpu, peak


def cases(n: int, model: MetriplecticModel, device: torch.device):
    x_np, lattice, box = dense_liquid(n)
    n = len(x_np)
    dtype = torch.float32
    pairs = snapshot_pairs(x_np, 1.0, box, x_ref=lattice, box_ref=box, dtype=dtype, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.as_tensor(x_np, dtype=dtype, device=device)
    v = 0.02 * torch.randn(n, 2, generator=gen, device=device, dtype=dtype)
    S = 0.1 * torch.randn(n, generator=gen, device=device, dtype=dtype)
    v1 = v + 0.005 * torch.randn(n, 2, generator=gen, device=device, dtype=dtype)
    interior = torch.ones(n, dtype=torch.bool, device=device)
    verlet = VerletList(1.0, 0.3)
    verlet.update(x, None, box)  # the build is not part of a typical step

    def rollout_step():
        verlet.update(x, None, box)
        euler_maruyama_step(model, State(x, v, S), pairs, 1.0, interior, gen, noise=True)

    def training_step():
        model.zero_grad(set_to_none=True)
        S0 = model.teacher_entropy(x, v, pairs)
        S1 = model.teacher_entropy(x, v1, pairs)
        loss = model.nll(State(x, v, S0), State(x, v1, S1), pairs, 1.0, interior)
        loss.backward()

    return n, len(pairs.i), {"rollout_step": rollout_step, "training_step": training_step}


def fitted_exponent(rows, device: str, kind: str, key: str = "seconds_per_step") -> float | None:
    """Least-squares slope of log(time) against log(N)."""
    pts = [(r["n_particles"], r[key]) for r in rows if r["device"] == device and r["kind"] == kind]
    if len(pts) < 2:
        return None
    n, t = np.log(np.array(pts, float)).T
    return float(np.polyfit(n, t, 1)[0])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true", help="only N = 10^3 and 10^4")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    network = NetworkParams()
    rows = []
    for device in devices:
        sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
        if device.type == "cuda" and not args.quick:
            sizes.append(1_000_000)
        torch.manual_seed(0)
        model = MetriplecticModel(
            h=1.0, kernel_hidden=network.kernel_hidden, energy_hidden=network.energy_hidden,
            amplitude_hidden=network.amplitude_hidden, teacher_hidden=network.teacher_hidden, velocity_scale=0.02,
        ).to(device)
        for n_target in sizes:
            n, n_pairs, steps = cases(n_target, model, device)
            for kind, fn in steps.items():
                seconds, cpu, memory = measure(fn, device, REPEATS[n_target], warmup=n_target <= 10_000)
                row = {"device": device.type, "kind": kind, "n_particles": n, "n_pairs": n_pairs,
                       "seconds_per_step": seconds, "cpu_seconds_per_step": cpu,
                       "particle_steps_per_s": n / seconds,
                       "peak_memory_mb": memory, "memory_measure": "cuda max_memory_allocated" if
                       device.type == "cuda" else "resident-set growth", "repeats": REPEATS[n_target]}
                rows.append(row)
                print(f"{device.type:4s} {kind:13s} N={n:>8d} pairs={n_pairs:>9d} {seconds:9.4f} s "
                      f"(cpu {cpu:8.3f} s) {n / seconds:10.0f} particle-steps/s {memory:9.1f} MB", flush=True)
    devices_run = sorted({r["device"] for r in rows})
    kinds = ("rollout_step", "training_step")
    exponents = {f"{d}/{k}": fitted_exponent(rows, d, k) for d in devices_run for k in kinds}
    cpu_exponents = {f"{d}/{k}": fitted_exponent(rows, d, k, "cpu_seconds_per_step")
                     for d in devices_run if d == "cpu" for k in kinds}
    result = {
        "benchmark": "model", "dtype": "float32", "spacing_h": SPACING, "network": {
            k: list(v) if isinstance(v, tuple) else v for k, v in vars(network).items()},
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "torch": str(torch.__version__),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "quick": args.quick, "results": rows, "scaling_exponent": exponents,
        "scaling_exponent_cpu_time": cpu_exponents,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, args.out)
    print("scaling exponents (wall seconds ~ N^k):", json.dumps(exponents))
    print("scaling exponents (CPU seconds ~ N^k):", json.dumps(cpu_exponents))
    return result


if __name__ == "__main__":
    main()
