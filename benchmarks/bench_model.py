"""Throughput and memory of the learned model: one rollout step and one training step against N.

Usage: python benchmarks/bench_model.py [--out benchmarks/results/model.json] [--quick] [--threads K]
                                        [--neighbours 19]

Systems: random dense-liquid configurations in a periodic box, in model units
(cut-off h = 1): a triangular lattice whose spacing gives `--neighbours`
neighbours within h per particle (default 19, the issue's measurement; each
unordered pair counted once in `n_pairs`, so n_pairs ~ N x neighbours / 2),
every particle displaced uniformly by up to 0.3 of the spacing, velocities
~ N(0, 0.02^2) h/frame, entropies ~ N(0, 0.1^2). The undisplaced lattice is
the reference configuration of the strain bonds. Default network widths
(mpd.params.NetworkParams), float32, one torch thread unless --threads.

* rollout step: `VerletList.update` (no rebuild: the usual case) + one
  `euler_maruyama_step` with noise;
* training step: teacher at t and t+1 + the Gaussian NLL + backward (no
  optimiser update), as in `mpd.training`, with the default activation
  recomputation ("auto": only above `mpd.model.layers.RECOMPUTE_ABOVE_PAIRS`
  pairs); training_step_recompute: the same with recomputation always on
  (the memory-lean mode; slower); training_step_compiled: the default with
  `model.training.compile_pairs` (torch.compile; the warm-up step compiles,
  its seconds recorded as warmup_seconds; the memory probe compiles on a
  small system first and measures the first step at the full size:
  compilation is a one-off per process).

Measured honestly:
* time: one warm-up step, then the repeats with nothing else running in the
  process (no memory poller): the median and best wall seconds and the CPU
  seconds of the median repeat (this process, all threads: the torch threads
  only), particle-steps per second = N / median wall seconds;
* memory: in a fresh subprocess per (N, step), the first step with no
  warm-up (nothing freed for reuse yet): the peak growth of the resident set
  over the state the step starts from, sampled every millisecond from
  /proc/self/statm by a thread that exists only there (CUDA:
  torch.cuda.max_memory_allocated over the allocation before the step); also
  per pair. A size whose predicted peak (from the last size's, linearly in
  the pairs) would exceed 60 % of the available memory is neither timed nor
  probed, and recorded as skipped with the prediction.
* the work size beside every figure: particles, unordered pairs, neighbours
  per particle; and for each (device, step) the fitted exponent k of
  seconds ~ N^k (1 = linear cost).
N = 10^3, 10^4, 10^5 on CPU and CUDA, 10^6 on CUDA only; --quick: 10^3, 10^4.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mpd.allocator import retain_freed_memory
from mpd.atomic import atomic_write_bytes, atomic_write_json
from mpd.geometry.domain import Box
from mpd.model import MetriplecticModel, State, compiled, euler_maruyama_step
from mpd.pairs import VerletList, snapshot_pairs
from mpd.params import NetworkParams

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "model.json"
NEIGHBOURS = 19  # per particle within h (the measurement)
REPEATS = {1_000: 7, 10_000: 5, 100_000: 3, 1_000_000: 1}


def lattice_spacing(neighbours: float) -> float:
    """Spacing (h) of a triangular lattice with `neighbours` other particles per disc of radius h.

    Number density 2 / (sqrt(3) a^2) times pi h^2 counts the particle itself too.
    """
    return float(np.sqrt(2 * np.pi / (np.sqrt(3) * (neighbours + 1))))


def dense_liquid(n: int, seed: int = 0, neighbours: float = NEIGHBOURS):
    """~n particles: displaced triangular lattice in its periodic box (model units); also the lattice itself."""
    spacing = lattice_spacing(neighbours)
    nx = round(float(np.sqrt(n * 2 / np.sqrt(3))))
    ny = max(2, round(n / nx) // 2 * 2)
    j, i = np.divmod(np.arange(nx * ny), nx)
    lattice = np.stack([i + 0.5 * (j % 2), j * np.sqrt(3) / 2], axis=1) * spacing
    rng = np.random.default_rng(seed)
    x = lattice + rng.uniform(-0.3, 0.3, lattice.shape) * spacing
    box = Box(nx * spacing, ny * spacing * np.sqrt(3) / 2)
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_step(fn, device: torch.device, repeats: int) -> dict:
    """Wall and CPU seconds of fn(): one warm-up, then `repeats` timed calls with nothing else running.

    CPU seconds (this process, all threads) are reported beside the wall clock
    because on a shared machine the wall clock also measures the neighbours'
    load; no measuring thread runs meanwhile, so they are the step's own.
    """
    t0 = time.perf_counter()
    fn()
    _sync(device)
    warmup = time.perf_counter() - t0
    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        _sync(device)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    median = statistics.median(walls)
    at_median = cpus[min(range(len(walls)), key=lambda k: abs(walls[k] - median))]
    return {"seconds_per_step": median, "best_seconds_per_step": min(walls), "cpu_seconds_per_step": at_median,
            "repeats": repeats, "warmup_seconds": warmup}


def peak_memory_of_first_step(fn, device: torch.device) -> tuple[float, str]:
    """(MB, what was measured) of the first call of fn() in this process: peak growth over the state before."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20, "cuda max_memory_allocated growth"
    with PeakRSS() as rss:
        fn()
    return rss.mb, "resident-set growth, first step of a fresh process"


def build_model(device: torch.device) -> MetriplecticModel:
    network = NetworkParams()
    torch.manual_seed(0)
    return MetriplecticModel(
        h=1.0, kernel_hidden=network.kernel_hidden, energy_hidden=network.energy_hidden,
        amplitude_hidden=network.amplitude_hidden, teacher_hidden=network.teacher_hidden, velocity_scale=0.02,
    ).to(device)


def cases(n: int, model: MetriplecticModel, device: torch.device, neighbours: float = NEIGHBOURS):
    x_np, lattice, box = dense_liquid(n, neighbours=neighbours)
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
        model.compile_pairs(False)
        verlet.update(x, None, box)
        euler_maruyama_step(model, State(x, v, S), pairs, 1.0, interior, gen, noise=True)

    def training_step(recompute: str = "auto", keep_compiled: bool = False):
        if not keep_compiled:
            model.compile_pairs(False)
        model.set_recompute_activations(recompute)
        model.zero_grad(set_to_none=True)
        S0 = model.teacher_entropy(x, v, pairs)
        S1 = model.teacher_entropy(x, v1, pairs)
        loss = model.nll(State(x, v, S0), State(x, v1, S1), pairs, 1.0, interior)
        loss.backward()
        model.set_recompute_activations("auto")

    def compiled_training_step():  # stays compiled for its repeats; the other steps switch it off
        if not compiled.is_enabled(model):
            model.compile_pairs()
        training_step(keep_compiled=True)

    return n, len(pairs.i), {"rollout_step": rollout_step, "training_step": training_step,
                             "training_step_recompute": lambda: training_step("always"),
                             "training_step_compiled": compiled_training_step}


#: issue 14's targets: one CPU thread, float32, about 19 neighbours; rates in particle-steps per CPU second
#: (the issue measured CPU time, medians), memory as the first step's resident-set growth per pair
TARGETS = [
    {"what": "rollout step at N = 1e4", "device": "cpu", "kind": "rollout_step", "n": 10_000,
     "key": "cpu_particle_steps_per_s", "at_least": 1.4e5},
    {"what": "training step at N = 1e4", "device": "cpu", "kind": "training_step", "n": 10_000,
     "key": "cpu_particle_steps_per_s", "at_least": 3.4e4},
    {"what": "training step at N = 1e4, compiled (model.training.compile_pairs)", "device": "cpu",
     "kind": "training_step_compiled", "n": 10_000, "key": "cpu_particle_steps_per_s", "at_least": 3.4e4},
    {"what": "training memory per pair at N = 1e5 (default: recomputation on at this size)", "device": "cpu",
     "kind": "training_step", "n": 100_000, "key": "memory_bytes_per_pair", "at_most": 5000},
    {"what": "training memory per pair at N = 1e4 with recomputation on", "device": "cpu",
     "kind": "training_step_recompute", "n": 10_000, "key": "memory_bytes_per_pair", "at_most": 5000},
    {"what": "GPU rollout step at N = 1e6", "device": "cuda", "kind": "rollout_step", "n": 1_000_000,
     "key": "particle_steps_per_s", "at_least": 1e7},
]


def target_results(rows) -> list[dict]:
    """Each target with the measured value of the row of its (device, kind) nearest its N, and "met",
    "missed" or "not measured" (no such row: e.g. no GPU, or --quick)."""
    out = []
    for target in TARGETS:
        candidates = [r for r in rows if r["device"] == target["device"] and r["kind"] == target["kind"]
                      and r.get(target["key"]) is not None and 0.5 < r["n_particles"] / target["n"] < 2]
        entry = {k: v for k, v in target.items()}
        if not candidates:
            entry.update(measured=None, n_particles=None, verdict="not measured")
        else:
            row = min(candidates, key=lambda r: abs(np.log(r["n_particles"] / target["n"])))
            value = row[target["key"]]
            met = value >= target["at_least"] if "at_least" in target else value <= target["at_most"]
            entry.update(measured=value, n_particles=row["n_particles"], verdict="met" if met else "missed")
        out.append(entry)
    return out


def fitted_exponent(rows, device: str, kind: str, key: str = "seconds_per_step") -> float | None:
    """Least-squares slope of log(time) against log(N) (sizes that were skipped left out)."""
    pts = [(r["n_particles"], r[key]) for r in rows
           if r["device"] == device and r["kind"] == kind and r[key] is not None]
    if len(pts) < 2:
        return None
    n, t = np.log(np.array(pts, float)).T
    return float(np.polyfit(n, t, 1)[0])


def markdown_table(result: dict) -> str:
    """The README's table of this benchmark, from its JSON (never typed)."""
    machine = result["machine"]
    title = (f"Model step throughput and memory (`benchmarks/bench_model.py`; float32, "
             f"{machine['torch_threads']} torch thread(s), {machine['cpu_count']} cores, torch {machine['torch']}; "
             f"about {result['neighbours_per_particle_target']:g} neighbours within h per particle)")
    lines = [title, "",
             "| device | step | N | pairs | neighbours | particle-steps/s (wall) | CPU s/step | peak MB | bytes/pair |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in result["results"]:
        mb, per_pair = row["peak_memory_mb"], row["memory_bytes_per_pair"]
        rate, cpu = row["particle_steps_per_s"], row["cpu_seconds_per_step"]
        lines.append(f"| {row['device']} | {row['kind'].replace('_step', '')} | {row['n_particles']} | "
                     f"{row['n_pairs']} | {row['neighbours_per_particle']:.1f} | "
                     f"{'–' if rate is None else f'{rate:.3g}'} | {'–' if cpu is None else f'{cpu:.3g}'} | "
                     f"{'–' if mb is None else f'{mb:.0f}'} | "
                     f"{'–' if per_pair is None else f'{per_pair:.0f}'} |")
    lines += ["", "Scaling exponents (wall seconds ~ N^k): " + ", ".join(
        f"{key} {value:.2f}" for key, value in result["scaling_exponent"].items() if value is not None)]
    skipped = [r for r in result["results"] if r["peak_memory_mb"] is None]
    lines += [f"- {r['device']} {r['kind']} N={r['n_particles']}: {r['memory_measure']}" for r in skipped]
    lines += ["", "Targets (issue 14):", "", "| target | wanted | measured | N | result |", "|---|---|---|---|---|"]
    for t in result.get("targets", []):
        wanted = f">= {t['at_least']:.3g}" if "at_least" in t else f"<= {t['at_most']:.3g}"
        measured = "–" if t["measured"] is None else f"{t['measured']:.3g}"
        unit = " B/pair" if "bytes" in t["key"] else " particle-steps/s"
        lines.append(f"| {t['what']} | {wanted}{unit} | {measured} | {t['n_particles'] or '–'} | {t['verdict']} |")
    return "\n".join(lines) + "\n"


def memory_probe(n_target: int, kind: str, device: str, neighbours: float, threads: int) -> dict:
    """Run in a fresh process: build the case, then the peak memory of its first `kind` step (JSON line);
    for the compiled step, compiled first on a small system."""
    torch.set_num_threads(threads)
    dev = torch.device(device)
    model = build_model(dev)
    if kind == "training_step_compiled":  # compile on a small system first (dynamic shapes: once for all sizes)
        cases(300, model, dev, neighbours)[2][kind]()
    n, n_pairs, steps = cases(n_target, model, dev, neighbours)
    mb, how = peak_memory_of_first_step(steps[kind], dev)
    if kind == "training_step_compiled":
        how += " (compiled beforehand on 300 particles)"
    return {"n_particles": n, "n_pairs": n_pairs, "peak_memory_mb": mb, "memory_measure": how}


def probe_in_subprocess(n_target: int, kind: str, device: str, neighbours: float, threads: int) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--memory-probe", str(n_target), kind, device,
               "--neighbours", str(neighbours), "--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"peak_memory_mb": None, "memory_measure": f"probe failed: {done.stderr.strip()[-300:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def available_mb() -> float:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("inf")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true", help="only N = 10^3 and 10^4")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--neighbours", type=float, default=NEIGHBOURS, help="neighbours within h per particle")
    parser.add_argument("--memory-probe", nargs=3, metavar=("N", "KIND", "DEVICE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    retain_freed_memory()  # as every workflow rule does (mpd.allocator)
    if args.memory_probe:
        n_target, kind, device = args.memory_probe
        print(json.dumps(memory_probe(int(n_target), kind, device, args.neighbours, args.threads)))
        return {}
    torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    network = NetworkParams()
    rows = []
    for device in devices:
        sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
        if device.type == "cuda" and not args.quick:
            sizes.append(1_000_000)
        model = build_model(device)
        last_mb: dict[str, tuple[int, float]] = {}
        for n_target in sizes:
            n, n_pairs, steps = cases(n_target, model, device, args.neighbours)
            for kind, fn in steps.items():
                predicted = None
                if kind in last_mb and last_mb[kind][1] is not None:
                    predicted = last_mb[kind][1] * n_pairs / last_mb[kind][0]
                limit = available_mb() * 0.6 if device.type == "cpu" else float("inf")
                if predicted is not None and predicted > limit:  # neither timed nor probed: it would swap or die
                    reason = f"skipped: predicted {predicted:.0f} MB > 60 % of the available {limit / 0.6:.0f} MB"
                    rows.append({"device": device.type, "kind": kind, "n_particles": n, "n_pairs": n_pairs,
                                 "neighbours_per_particle": 2 * n_pairs / n, "seconds_per_step": None,
                                 "best_seconds_per_step": None, "cpu_seconds_per_step": None, "repeats": 0,
                                 "particle_steps_per_s": None, "cpu_particle_steps_per_s": None,
                                 "peak_memory_mb": None, "memory_bytes_per_pair": None, "memory_measure": reason})
                    print(f"{device.type:4s} {kind:13s} N={n:>8d} pairs={n_pairs:>9d} {reason}", flush=True)
                    continue
                timing = time_step(fn, device, REPEATS[n_target])
                memory = probe_in_subprocess(n_target, kind, device.type, args.neighbours, args.threads)
                mb = memory.get("peak_memory_mb")
                last_mb[kind] = (n_pairs, mb)
                row = {"device": device.type, "kind": kind, "n_particles": n, "n_pairs": n_pairs,
                       "neighbours_per_particle": 2 * n_pairs / n, **timing,
                       "particle_steps_per_s": n / timing["seconds_per_step"],
                       "cpu_particle_steps_per_s": n / timing["cpu_seconds_per_step"],
                       "peak_memory_mb": mb, "memory_bytes_per_pair": None if mb is None else mb * 2**20 / n_pairs,
                       "memory_measure": memory["memory_measure"]}
                rows.append(row)
                print(f"{device.type:4s} {kind:13s} N={n:>8d} pairs={n_pairs:>9d} ({2 * n_pairs / n:4.1f} neighbours) "
                      f"{timing['seconds_per_step']:9.4f} s (cpu {timing['cpu_seconds_per_step']:8.3f} s) "
                      f"{n / timing['seconds_per_step']:10.0f} particle-steps/s "
                      f"{memory['memory_measure'] if mb is None else f'{mb:9.1f} MB'}", flush=True)
    devices_run = sorted({r["device"] for r in rows})
    kinds = ("rollout_step", "training_step", "training_step_recompute", "training_step_compiled")
    exponents = {f"{d}/{k}": fitted_exponent(rows, d, k) for d in devices_run for k in kinds}
    cpu_exponents = {f"{d}/{k}": fitted_exponent(rows, d, k, "cpu_seconds_per_step")
                     for d in devices_run if d == "cpu" for k in kinds}
    result = {
        "benchmark": "model", "dtype": "float32", "neighbours_per_particle_target": args.neighbours,
        "lattice_spacing_h": lattice_spacing(args.neighbours), "network": {
            k: list(v) if isinstance(v, tuple) else v for k, v in vars(network).items()},
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "torch": str(torch.__version__),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "timing": "median of the repeats after one warm-up step; CPU seconds of this process with no helper thread",
        "quick": args.quick, "results": rows, "scaling_exponent": exponents,
        "scaling_exponent_cpu_time": cpu_exponents, "targets": target_results(rows),
    }
    atomic_write_json(result, args.out)
    atomic_write_bytes(markdown_table(result).encode(), args.out.with_suffix(".md"))
    print("scaling exponents (wall seconds ~ N^k):", json.dumps(exponents))
    print("scaling exponents (CPU seconds ~ N^k):", json.dumps(cpu_exponents))
    for t in result["targets"]:
        print(f"target {t['what']}: {t['verdict']} ({t['measured']})")
    return result


if __name__ == "__main__":
    main()
