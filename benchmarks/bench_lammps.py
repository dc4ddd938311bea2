"""The LAMMPS rollout against the PyTorch rollout: particle-steps per second and memory against N and ranks.

Usage: python benchmarks/bench_lammps.py [--out benchmarks/results/lammps.json] [--quick] [--no-1e6]
                                         [--steps 10000:8,100000:4,1000000:2] [--timeout 900]

Issue 16, point 5. For N = 1e4, 1e5, 1e6 particles (--quick: N = 2000 only; --no-1e6: without 1e6):

* pytorch: `mpd.rollout.periodic_fluid_rollout` (noise off, conserve_energy off: the bare integrator, as in
  LAMMPS) in one process with 1 and with 2 torch threads;
* lammps: `mpd.lammps_rollout.lammps_fluid_rollout` under ``mpiexec -np 1`` and ``-np 2`` (the mpich wheel's
  launcher), one torch thread per rank, so that 2 ranks use the same 2 cores as the 2-thread PyTorch run.
  One ``run`` of all the steps (``every`` = the step count): no trajectory gather between steps.

Every configuration runs in fresh processes (this script again, as a worker), from the same state file.

System: a 3D fluid model of the size a trained star-polymer model has (`mpd.params.NetworkParams`
defaults: kernel, energy and amplitude networks (32, 32), teacher (64, 64); one species, no bath, float64
as the rollouts' default), with UNTRAINED weights (seeded; speed does not depend on the weights) and a
mass of 20 so that a few steps stay tame; saved to a temporary model.pt (`mpd.training.save_model`).
Positions uniform in a periodic cube at number density 12 / (4 pi / 3) h^-3, i.e. about 12 neighbours
within h per particle (a liquid's; ideal-gas structure), velocities ~ N(0, 0.02^2) h per frame. The
entropies are the teacher's (the 1-thread PyTorch run computes them; the LAMMPS runs start from them,
so both engines integrate the same trajectory: their final frames are compared as a check).

Measured honestly, per configuration:
* steady state: one warm-up step, then the timed steps, from timestamps taken inside the worker
  processes (the model step and the pair build are wrapped; nothing else runs meanwhile). LAMMPS: a step
  is the interval between the ends of two successive model callbacks (LAMMPS's re-neighbouring, atom
  migration and ghost exchange + the pair search of local and ghost atoms + the model), the slowest rank's;
  PyTorch: the model step plus the pair-list update that follows it (the Verlet list; rebuilds counted);
  its per-frame recording (energy, table) is reported beside, not in the step. seconds_per_step: the
  mean over the timed steps (amortises Verlet rebuilds); particle-steps per second = N / seconds_per_step;
  CPU seconds per step: all processes, all threads (mpich ranks busy-wait in MPI calls: their CPU time
  includes waiting);
* start-up: launch to the first model step (Python, torch and LAMMPS imports, model load, LAMMPS set-up
  and atom creation; PyTorch: the teacher's entropies and the first pair list), and the whole run's wall;
* memory: the peak resident set (ru_maxrss) of each process over its whole run, and their sum;
* work sizes beside every figure: particles, pairs within h (each once), neighbours per particle, ranks,
  threads per rank; LAMMPS also local and ghost atoms and the pairs each rank evaluates (the 2h ghost shell).
* derived: speed-up of 2 ranks over 1 rank (and 2 threads over 1), LAMMPS against PyTorch on the same cores,
  the per-particle cost at the largest N over the smallest (1 = linear) and the fitted exponent of
  seconds ~ N^k, whether the 1e6 run completed and its peak memory against the machine's.
The 2-core machine may be shared: the load average before each run is recorded.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mpd.atomic import atomic_write_bytes, atomic_write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import available_mb  # a sibling script: one home for the memory probe

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "lammps.json"
NEIGHBOURS = 12.0  # mean neighbours within h per particle (3D liquid)
DENSITY = NEIGHBOURS / (4 * math.pi / 3)  # per h^3
STEPS = {10_000: 8, 100_000: 4, 1_000_000: 2}  # timed steps after the one warm-up step
QUICK_STEPS = {2_000: 2}
MASS = 20.0
VELOCITY = 0.02  # h per frame
#: (engine, ranks, torch threads per rank); both multi-core rows use the machine's 2 cores
CONFIGS = [("pytorch", 1, 1), ("pytorch", 1, 2), ("lammps", 1, 1), ("lammps", 2, 1)]
#: issue 16, point 5. "linear" is read as: the per-particle-step cost at the largest N at most 1.25 times the
#: smallest N's (this benchmark's reading; the fitted exponent is reported beside).
TARGETS = [
    {"what": "LAMMPS, 2 ranks over 1 rank at N = 1e5 (1 torch thread per rank)", "key": "speedup_2_over_1_ranks",
     "n": 100_000, "at_least": 1.6},
    {"what": "LAMMPS 1 rank: per-step cost linear in N (per-particle cost, largest N / smallest N)",
     "key": "linearity_lammps_1_ranks", "at_most": 1.25},
    {"what": "LAMMPS 2 ranks: per-step cost linear in N (per-particle cost, largest N / smallest N)",
     "key": "linearity_lammps_2_ranks", "at_most": 1.25},
    {"what": "a 1e6-particle LAMMPS run (2 ranks) completes within this machine's memory (sum of peak RSS, MB)",
     "key": "peak_rss_mb_total_1e6", "n": 1_000_000, "at_most": "machine_memory_mb"},
]


# ----------------------------------------------------------------------------------------------- system
def network_kwargs() -> dict:
    from mpd.params import NetworkParams
    from mpd.training import model_kwargs

    kwargs = model_kwargs(NetworkParams(), velocity_scale=VELOCITY * math.sqrt(2), n_species=1, dim=3, solid=False)
    kwargs.update(bath=False, mass=MASS)
    return kwargs


def write_model(path: Path) -> dict:
    """An untrained 3D fluid model of the default (trained star-polymer) size, saved as model.pt (float64)."""
    import torch

    from mpd.training import build_model, save_model

    kwargs = network_kwargs()
    torch.manual_seed(0)
    model = build_model(kwargs, torch.float64, torch.device("cpu"))
    save_model(model, kwargs, {"dtype": "float64", "h_um": 1.0, "dt_s": 1.0, "note": "untrained: benchmark only"},
               path)
    return kwargs


def liquid(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, v, box): n positions uniform in a periodic cube at DENSITY, velocities ~ N(0, VELOCITY^2)."""
    L = (n / DENSITY) ** (1 / 3)
    rng = np.random.default_rng(seed)
    return rng.uniform(0, L, (n, 3)), VELOCITY * rng.normal(size=(n, 3)), np.full(3, L)


# ----------------------------------------------------------------------------------------------- workers
class Probe:
    """Wall (time.time, comparable across processes) and CPU timestamps at the entry and exit of wrapped calls."""

    def __init__(self):
        self.events: dict[str, list] = {}

    def wrap(self, name: str, fn, extra=None):
        events = self.events.setdefault(name, [])

        def wrapped(*args, **kwargs):
            w0, c0 = time.time(), time.process_time()
            out = fn(*args, **kwargs)
            row = [w0, time.time(), c0, time.process_time()]
            if extra is not None:
                row.append(extra(args, out))
            events.append(row)
            return out

        return wrapped


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def torch_worker(args) -> None:
    """One PyTorch rollout (noise off, bare integrator) from the state file; timestamps to --report."""
    import torch

    torch.set_num_threads(args.threads)
    import mpd.pairs
    import mpd.rollout as ro
    from mpd.training import load_model

    model, _ = load_model(args.model, dtype="float64")
    with np.load(args.state) as data:
        state = {k: data[k] for k in data.files}
    probe = Probe()
    ro.euler_maruyama_step = probe.wrap("step", ro.euler_maruyama_step, lambda a, out: len(a[2].i))
    mpd.pairs.VerletList.update = probe.wrap("pairs", mpd.pairs.VerletList.update, lambda a, out: a[0].n_builds)
    ro.pair_kinds = probe.wrap("kinds", ro.pair_kinds)
    result = ro.periodic_fluid_rollout(model, state["x"], state["v"], state["box"], args.steps, noise=False,
                                       conserve_energy=False, dtype=torch.float64)
    frames = result.frames
    last = frames[frames["t"] == frames["t"].max()].sort_values("particle")
    first = frames[frames["t"] == 0].sort_values("particle")
    np.savez(args.final, xu=last[["xu", "yu", "zu"]].to_numpy(), v=last[["vx", "vy", "vz"]].to_numpy(),
             S=last["S"].to_numpy(), S0=first["S"].to_numpy(), t=float(last["t"].iloc[0]))
    report = {"engine": "pytorch", "rank": 0, "threads": torch.get_num_threads(), "events": probe.events,
              "status": {k: v for k, v in result.status.items() if isinstance(v, (int, float, str, bool))},
              "peak_rss_mb": _peak_rss_mb()}
    Path(args.report).write_text(json.dumps(report))


def lammps_worker(args) -> None:
    """One rank of the LAMMPS rollout (noise off) from the state file, all steps in one ``run``."""
    import torch

    torch.set_num_threads(args.threads)
    from mpd import lammps_rollout as lr
    from mpd.training import load_model

    model, _ = load_model(args.model, dtype="float64")
    with np.load(args.state) as data:
        state = {k: data[k] for k in data.files}
    probe = Probe()

    def sizes(a, out):
        step = a[0]
        return [int(a[1]), int(step.lmp.extract_global("nghost")), int(step.n_pairs)]

    lr.ModelStep.advance = probe.wrap("step", lr.ModelStep.advance, sizes)
    lr.ModelStep.pairs = probe.wrap("pairs", lr.ModelStep.pairs)
    lr.euler_maruyama_step = probe.wrap("model", lr.euler_maruyama_step)
    result = lr.lammps_fluid_rollout(model, state["x"], state["v"], state["box"], args.steps, S0=state.get("S"),
                                     every=args.steps)
    rank = int(result.status["rank"])
    if rank == 0:
        frames = result.frames
        last = frames[frames["t"] == frames["t"].max()].sort_values("particle")
        np.savez(args.final, xu=last[["xu", "yu", "zu"]].to_numpy(), v=last[["vx", "vy", "vz"]].to_numpy(),
                 S=last["S"].to_numpy(), t=float(last["t"].iloc[0]))
    report = {"engine": "lammps", "rank": rank, "threads": torch.get_num_threads(), "events": probe.events,
              "status": {k: v for k, v in result.status.items() if isinstance(v, (int, float, str, bool))},
              "peak_rss_mb": _peak_rss_mb()}
    Path(f"{args.report}.rank{rank}").write_text(json.dumps(report))
    from mpd.lammps_env import finalize_mpi

    finalize_mpi()  # every rank, last: mpiexec kills the others when a rank exits without it


# ----------------------------------------------------------------------------------------------- analysis
def _between(events: list, lo: float, hi: float) -> float:
    """Wall seconds of the wrapped calls that started in (lo, hi)."""
    return sum(e[1] - e[0] for e in events if lo < e[0] < hi)


def torch_steps(report: dict) -> dict:
    """Per timed step k >= 2 (step 1 is the warm-up): model step + the pair update after step k-1."""
    steps, pairs, kinds = report["events"]["step"], report["events"]["pairs"], report["events"].get("kinds", [])
    rows = []
    for k in range(1, len(steps)):
        prev, cur = steps[k - 1], steps[k]
        pair_s = _between(pairs, prev[1], cur[0]) + _between(kinds, prev[1], cur[0])
        model_s = cur[1] - cur[0]
        frame_s = cur[1] - prev[1]
        cpu_pairs = sum(e[3] - e[2] for e in pairs + kinds if prev[1] < e[0] < cur[0])
        rows.append({"step_s": model_s + pair_s, "model_s": model_s, "pairs_s": pair_s,
                     "record_s": frame_s - model_s - pair_s, "frame_s": frame_s,
                     "cpu_s": cur[3] - cur[2] + cpu_pairs, "n_pairs": cur[4]})
    # Verlet rebuilds among the pair updates of the timed steps (each update's n_builds after it, minus before)
    builds = [0] + [e[4] for e in pairs]
    timed_from = steps[0][1] if steps else math.inf
    rebuilds = sum(builds[k + 1] - builds[k] for k, e in enumerate(pairs) if timed_from < e[0] < steps[-1][0])
    return {"rows": rows, "rebuilds_in_timed_steps": int(rebuilds), "first_step_wall": steps[0][0] if steps else None}


def lammps_steps(reports: list[dict]) -> dict:
    """Per timed step k >= 2: end of callback k-1 to end of callback k, per rank; the slowest rank's."""
    per_rank = []
    for report in reports:
        steps, pairs, model = report["events"]["step"], report["events"]["pairs"], report["events"]["model"]
        rows = []
        for k in range(1, len(steps)):
            prev, cur = steps[k - 1], steps[k]
            pair_s, model_s = _between(pairs, cur[0], cur[1]), _between(model, cur[0], cur[1])
            callback_s = cur[1] - cur[0]
            rows.append({"step_s": cur[1] - prev[1], "lammps_s": cur[0] - prev[1], "callback_s": callback_s,
                         "pairs_s": pair_s, "model_s": model_s, "copy_s": callback_s - pair_s - model_s,
                         "cpu_s": cur[3] - prev[3], "nlocal": cur[4][0], "nghost": cur[4][1], "n_pairs": cur[4][2]})
        per_rank.append(rows)
    return {"per_rank": per_rank, "first_step_wall": min(r["events"]["step"][0][0] for r in reports
                                                         if r["events"]["step"])}


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def summarise(engine: str, n: int, n_pairs_true: int, ranks: int, threads: int, reports: list[dict],
              launched: float, wall: float) -> dict:
    """One row: timing, work sizes and memory of a finished run."""
    row = {"engine": engine, "n_particles": n, "n_pairs": n_pairs_true, "neighbours_per_particle": 2 * n_pairs_true / n,
           "ranks": ranks, "threads_per_rank": threads, "cores_used": ranks * threads,
           "peak_rss_mb": [r["peak_rss_mb"] for r in sorted(reports, key=lambda r: r["rank"])],
           "run_wall_s": wall, "status": reports[0]["status"].get("status")}
    row["peak_rss_mb_total"] = float(sum(row["peak_rss_mb"]))
    if engine == "pytorch":
        steps = torch_steps(reports[0])
        timed = steps["rows"]
        row.update(timed_steps=len(timed), seconds_per_step=_mean(r["step_s"] for r in timed),
                   min_seconds_per_step=min(r["step_s"] for r in timed), max_seconds_per_step=max(r["step_s"] for r in timed),
                   cpu_seconds_per_step=_mean(r["cpu_s"] for r in timed),
                   breakdown_s={"model": _mean(r["model_s"] for r in timed), "pairs": _mean(r["pairs_s"] for r in timed)},
                   record_seconds_per_frame=_mean(r["record_s"] for r in timed),
                   frame_seconds=_mean(r["frame_s"] for r in timed),
                   verlet_rebuilds_in_timed_steps=steps["rebuilds_in_timed_steps"],
                   pairs_evaluated=int(np.mean([r["n_pairs"] for r in timed])))
    else:
        steps = lammps_steps(reports)
        per_rank = steps["per_rank"]
        timed = len(per_rank[0])
        step_s = [max(rows[k]["step_s"] for rows in per_rank) for k in range(timed)]  # the slowest rank's
        cpu_s = [sum(rows[k]["cpu_s"] for rows in per_rank) for k in range(timed)]
        row.update(timed_steps=timed, seconds_per_step=_mean(step_s), min_seconds_per_step=min(step_s),
                   max_seconds_per_step=max(step_s), cpu_seconds_per_step=_mean(cpu_s),
                   breakdown_s={key: [_mean(r[key + "_s"] for r in rows) for rows in per_rank]
                                for key in ("model", "pairs", "copy", "lammps")},
                   local_atoms=[int(np.mean([r["nlocal"] for r in rows])) for rows in per_rank],
                   ghost_atoms=[int(np.mean([r["nghost"] for r in rows])) for rows in per_rank],
                   pairs_evaluated_per_rank=[int(np.mean([r["n_pairs"] for r in rows])) for rows in per_rank])
        row["pairs_evaluated"] = int(sum(row["pairs_evaluated_per_rank"]))
        row["atoms_held_over_n"] = (sum(row["local_atoms"]) + sum(row["ghost_atoms"])) / n
        row["breakdown_s"]["note"] = ("per rank, mean per timed step: model = euler_maruyama_step; pairs = the "
                                      "cKDTree pair search over local+ghost atoms; copy = array extraction and "
                                      "write-back; lammps = between two callbacks (re-neighbouring, migration, "
                                      "ghost exchange, waiting for the other rank)")
        row["lammps_model_wall_s_rank0"] = reports[0]["status"].get("model_wall_s")
    row["pairs_evaluated_over_true"] = row["pairs_evaluated"] / max(n_pairs_true, 1)
    row["particle_steps_per_s"] = n / row["seconds_per_step"]
    row["cpu_particle_steps_per_s"] = n / row["cpu_seconds_per_step"] if row["cpu_seconds_per_step"] else None
    row["seconds_per_particle_step"] = row["seconds_per_step"] / n
    row["startup_s"] = steps["first_step_wall"] - launched
    return row


def fitted_exponent(rows, engine: str, ranks: int, threads: int) -> float | None:
    pts = [(r["n_particles"], r["seconds_per_step"]) for r in rows if r["engine"] == engine and r["ranks"] == ranks
           and r["threads_per_rank"] == threads and r.get("seconds_per_step")]
    if len(pts) < 2:
        return None
    n, t = np.log(np.array(pts, float)).T
    return float(np.polyfit(n, t, 1)[0])


def _find(rows, engine, ranks, threads, n):
    for r in rows:
        if (r["engine"], r["ranks"], r["threads_per_rank"], r["n_particles"]) == (engine, ranks, threads, n):
            return r
    return None


def derived(rows: list[dict], machine_memory_mb: float) -> dict:
    """Speed-ups per N, linearity per configuration, the 1e6 run's memory."""
    sizes = sorted({r["n_particles"] for r in rows})
    ok = [r for r in rows if r.get("seconds_per_step")]
    out: dict = {"per_n": []}
    for n in sizes:
        t = {f"{e}_{rk}x{th}": (_find(ok, e, rk, th, n) or {}).get("seconds_per_step") for e, rk, th in CONFIGS}

        def ratio(a, b, t=t):
            return t[a] / t[b] if t[a] and t[b] else None

        out["per_n"].append({"n_particles": n,
                             "speedup_2_over_1_ranks": ratio("lammps_1x1", "lammps_2x1"),
                             "speedup_2_over_1_threads_pytorch": ratio("pytorch_1x1", "pytorch_1x2"),
                             "lammps_over_pytorch_1_core": ratio("pytorch_1x1", "lammps_1x1"),
                             "lammps_2_ranks_over_pytorch_2_threads": ratio("pytorch_1x2", "lammps_2x1")})
    out["linearity"] = {}
    for e, rk, th in CONFIGS:
        mine = sorted((r for r in ok if (r["engine"], r["ranks"], r["threads_per_rank"]) == (e, rk, th)),
                      key=lambda r: r["n_particles"])
        key = f"{e}_{rk}_ranks_{th}_threads"
        if len(mine) < 2:
            out["linearity"][key] = {"cost_ratio_largest_over_smallest": None, "exponent": None, "sizes": None}
            continue
        out["linearity"][key] = {
            "cost_ratio_largest_over_smallest": mine[-1]["seconds_per_particle_step"] / mine[0]["seconds_per_particle_step"],
            "exponent": fitted_exponent(ok, e, rk, th), "sizes": [mine[0]["n_particles"], mine[-1]["n_particles"]],
            "seconds_per_particle_step": {str(r["n_particles"]): r["seconds_per_particle_step"] for r in mine}}
    big = [r for r in rows if r["n_particles"] >= 500_000 and r["engine"] == "lammps"]
    out["million"] = {"machine_memory_mb": machine_memory_mb,
                      "runs": [{"ranks": r["ranks"], "status": r["status"], "peak_rss_mb": r.get("peak_rss_mb"),
                                "peak_rss_mb_total": r.get("peak_rss_mb_total"), "reason": r.get("reason")}
                               for r in big]}
    return out


def target_results(rows: list[dict], extra: dict, machine_memory_mb: float, million_asked: bool) -> list[dict]:
    """Each target with its measured value and met (bool, None when not measured) and verdict."""
    results = []
    for target in TARGETS:
        entry = dict(target)
        value, n_used, why = None, None, None
        if target["key"] == "speedup_2_over_1_ranks":
            one = [r for r in rows if r["engine"] == "lammps" and r["ranks"] == 1 and r.get("seconds_per_step")
                   and 0.5 < r["n_particles"] / target["n"] < 2]
            for r in one:
                two = _find(rows, "lammps", 2, 1, r["n_particles"])
                if two and two.get("seconds_per_step"):
                    value, n_used = r["seconds_per_step"] / two["seconds_per_step"], r["n_particles"]
        elif target["key"].startswith("linearity_lammps_"):
            ranks = int(target["key"].split("_")[2])
            mine = sorted((r for r in rows if r["engine"] == "lammps" and r["ranks"] == ranks
                           and r.get("seconds_per_step")), key=lambda r: r["n_particles"])
            if len(mine) >= 2 and mine[-1]["n_particles"] >= 10 * mine[0]["n_particles"]:
                value = mine[-1]["seconds_per_particle_step"] / mine[0]["seconds_per_particle_step"]
                n_used = [mine[0]["n_particles"], mine[-1]["n_particles"]]
            else:
                why = "needs two sizes a decade apart or more"
        elif target["key"] == "peak_rss_mb_total_1e6":
            entry["at_most"] = machine_memory_mb
            run = [r for r in rows if r["engine"] == "lammps" and r["ranks"] == 2
                   and 0.5 < r["n_particles"] / target["n"] < 2]
            if run:
                r = run[0]
                n_used = r["n_particles"]
                if r.get("status") == "completed" and r.get("peak_rss_mb_total") is not None:
                    value = r["peak_rss_mb_total"]
                else:  # asked for and it did not run to the end: the target is missed, with the reason
                    why = r.get("reason") or f"status {r.get('status')}"
                    entry.update(measured=None, n_particles=n_used, met=False, verdict="missed", reason=why)
                    results.append(entry)
                    continue
            elif million_asked:
                why = "the 1e6 size was asked for but has no row"
            else:
                why = "not run (--quick or --no-1e6)"
        if value is None:
            entry.update(measured=None, n_particles=n_used, met=None, verdict="not measured", reason=why)
        else:
            met = bool(value >= entry["at_least"]) if "at_least" in entry else bool(value <= entry["at_most"])
            entry.update(measured=float(value), n_particles=n_used, met=met, verdict="met" if met else "missed")
        results.append(entry)
    return results


# ----------------------------------------------------------------------------------------------- driver
def machine_memory_mb() -> float:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot (/proc/stat)."""
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


class OtherLoad:
    """Cores kept busy by processes other than this one's children while the block runs (a shared machine)."""

    def __enter__(self):
        self.busy0, self.wall0 = _cpu_jiffies()[0], time.time()
        self.own0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.self0 = resource.getrusage(resource.RUSAGE_SELF)
        return self

    def __exit__(self, *exc):
        hz = os.sysconf("SC_CLK_TCK")
        busy = (_cpu_jiffies()[0] - self.busy0) / hz
        own1, self1 = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
        own = sum(getattr(b, k) - getattr(a, k) for a, b in ((self.own0, own1), (self.self0, self1))
                  for k in ("ru_utime", "ru_stime"))
        self.cores = max(0.0, (busy - own) / max(time.time() - self.wall0, 1e-9))


def wait_for_quiet(max_wait: float, threshold: float = 0.3) -> tuple[float, float]:
    """Wait (1 s samples, up to max_wait s) until other processes keep fewer than `threshold` cores busy;
    (seconds waited, cores busy in the last sample)."""
    if max_wait <= 0:
        return 0.0, None
    start = time.time()
    while True:
        with OtherLoad() as load:
            time.sleep(1.0)
        if load.cores < threshold or time.time() - start >= max_wait:
            return time.time() - start, load.cores


def _env(threads: int) -> dict:
    from mpd.lammps_env import mpi_env

    env = mpi_env()
    env["PYTHONPATH"] = str(REPO) + ((os.pathsep + env["PYTHONPATH"]) if env.get("PYTHONPATH") else "")
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[key] = str(threads)
    return env


def run_config(engine: str, ranks: int, threads: int, steps: int, model: Path, state: Path, work: Path,
               timeout: float) -> tuple[list[dict] | None, float, float, str | None]:
    """(worker reports, launch time, wall seconds, error) of one configuration in fresh processes."""
    tag = f"{engine}_{ranks}x{threads}"
    report, final = work / f"{tag}.json", work / f"{tag}.final.npz"
    worker = [sys.executable, str(Path(__file__).resolve()), "--worker", engine, "--model", str(model), "--state",
              str(state), "--frames", str(steps), "--threads", str(threads), "--report", str(report), "--final",
              str(final)]
    if engine == "lammps":
        from mpd.lammps_env import mpiexec_path

        worker = [str(mpiexec_path()), "-np", str(ranks), *worker]
    launched = time.time()
    try:
        done = subprocess.run(worker, env=_env(threads), cwd=work, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        return None, launched, time.time() - launched, f"timed out after {timeout:.0f} s"
    wall = time.time() - launched
    if done.returncode != 0:
        return None, launched, wall, f"failed (rc {done.returncode}): {done.stderr.strip()[-600:]}"
    paths = [report] if engine == "pytorch" else [Path(f"{report}.rank{r}") for r in range(ranks)]
    return [json.loads(p.read_text()) for p in paths], launched, wall, None


def agreement(work: Path, tag: str, box: np.ndarray) -> dict | None:
    """Largest differences between this run's final frame and the 1-thread PyTorch run's."""
    ref, mine = work / "pytorch_1x1.final.npz", work / f"{tag}.final.npz"
    if not (ref.exists() and mine.exists()):
        return None
    with np.load(ref) as a, np.load(mine) as b:
        if float(a["t"]) != float(b["t"]):
            return None
        scale = lambda z: float(np.abs(z).max()) or 1.0
        return {"frame": float(a["t"]), "max_abs_dx_h": float(np.abs(a["xu"] - b["xu"]).max()),
                "max_rel_dv": float(np.abs(a["v"] - b["v"]).max() / scale(a["v"])),
                "max_rel_dS": float(np.abs(a["S"] - b["S"]).max() / scale(a["S"]))}


def true_pairs(x: np.ndarray, box: np.ndarray) -> int:
    from scipy.spatial import cKDTree

    return len(cKDTree(x, boxsize=box).query_pairs(1.0, output_type="ndarray"))


def markdown_table(result: dict) -> str:
    """The table of this benchmark, from its JSON (never typed)."""
    m = result["machine"]
    lines = [(f"LAMMPS rollout against the PyTorch rollout (`benchmarks/bench_lammps.py`; 3D fluid model of the "
              f"default size, untrained weights, float64, noise off; about {result['neighbours_per_particle_target']:g}"
              f" neighbours within h; {m['cpu_count']} cores, {m['memory_mb']:.0f} MB, torch {m['torch']}, LAMMPS "
              f"{m['lammps']}; timed steps after one warm-up step, mean s/step)"), "",
             ("| engine | ranks x threads | N | pairs within h | neighbours | pairs evaluated | timed steps | s/step "
              "| particle-steps/s | CPU s/step | model / pairs / other s | start-up s | peak RSS MB (per process) "
              "| other processes' cores during run | status |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    f = lambda v, fmt=".3g": "–" if v is None else format(v, fmt)
    for r in result["results"]:
        if not r.get("seconds_per_step"):
            lines.append(f"| {r['engine']} | {r['ranks']} x {r['threads_per_rank']} | {r['n_particles']} | "
                         f"{r['n_pairs']} | {r['neighbours_per_particle']:.1f} | – | – | – | – | – | – | – | "
                         f"{'–' if not r.get('peak_rss_mb') else '+'.join(f'{v:.0f}' for v in r['peak_rss_mb'])} | "
                         f"{f(r.get('other_cores_busy_during_run'), '.2f')} | {r['status']}: {r.get('reason', '')[:120]} |")
            continue
        b = r["breakdown_s"]
        if r["engine"] == "pytorch":
            parts = f"{b['model']:.3g} / {b['pairs']:.3g} / record {r['record_seconds_per_frame']:.2g} per frame"
            pairs_eval = f"{r['pairs_evaluated']}"
        else:
            parts = " ; ".join(f"r{k}: {b['model'][k]:.3g} / {b['pairs'][k]:.3g} / {b['copy'][k] + b['lammps'][k]:.2g}"
                               for k in range(r["ranks"]))
            pairs_eval = "+".join(str(p) for p in r["pairs_evaluated_per_rank"])
        lines.append(f"| {r['engine']} | {r['ranks']} x {r['threads_per_rank']} | {r['n_particles']} | {r['n_pairs']} | "
                     f"{r['neighbours_per_particle']:.1f} | {pairs_eval} | {r['timed_steps']} | "
                     f"{r['seconds_per_step']:.3g} | {r['particle_steps_per_s']:.3g} | {f(r['cpu_seconds_per_step'])} | "
                     f"{parts} | {r['startup_s']:.3g} | {'+'.join(f'{v:.0f}' for v in r['peak_rss_mb'])} | "
                     f"{f(r.get('other_cores_busy_during_run'), '.2f')} | {r['status']} |")
    d = result["derived"]
    lines += ["", ("LAMMPS 'other' = copies in and out of LAMMPS's arrays + everything between two callbacks "
                   "(re-neighbouring every step, migration, the 2h ghost exchange, waiting for the other rank)."), "",
              ("| N | LAMMPS 2 ranks vs 1 rank | PyTorch 2 threads vs 1 | LAMMPS 1 rank vs PyTorch 1 thread "
               "| LAMMPS 2 ranks vs PyTorch 2 threads | LAMMPS atoms held / N (1 rank, 2 ranks) |"),
              "|---|---|---|---|---|---|"]
    for p in d["per_n"]:
        held = [(_find(result["results"], "lammps", rk, 1, p["n_particles"]) or {}).get("atoms_held_over_n")
                for rk in (1, 2)]
        lines.append(f"| {p['n_particles']} | {f(p['speedup_2_over_1_ranks'])} | "
                     f"{f(p['speedup_2_over_1_threads_pytorch'])} | {f(p['lammps_over_pytorch_1_core'])} | "
                     f"{f(p['lammps_2_ranks_over_pytorch_2_threads'])} | {f(held[0])}, {f(held[1])} |")
    lines += ["", ("(speed ratios, i.e. the other's s/step over the first named's: > 1 means the first named is "
                   "faster; atoms held = local + ghost atoms over all ranks / N)"), "",
              "| configuration | s per particle-step, smallest N | largest N | ratio | exponent k (s ~ N^k) |",
              "|---|---|---|---|---|"]
    for key, v in d["linearity"].items():
        if v["sizes"] is None:
            lines.append(f"| {key} | – | – | – | – |")
            continue
        per = v["seconds_per_particle_step"]
        lines.append(f"| {key} | {per[str(v['sizes'][0])]:.3g} (N={v['sizes'][0]}) | {per[str(v['sizes'][1])]:.3g} "
                     f"(N={v['sizes'][1]}) | {v['cost_ratio_largest_over_smallest']:.3g} | {f(v['exponent'])} |")
    lines += ["", "Targets (issue 16, point 5):", "", "| target | wanted | measured | N | result |", "|---|---|---|---|---|"]
    for t in result["targets"]:
        wanted = f">= {t['at_least']:.3g}" if "at_least" in t else f"<= {t['at_most']:.6g}"
        extra = f" ({t['reason']})" if t.get("reason") else ""
        lines.append(f"| {t['what']} | {wanted} | {f(t['measured'])} | {t['n_particles'] or '–'} | "
                     f"{t['verdict']}{extra} |")
    return "\n".join(lines) + "\n"


def parse_steps(text: str) -> dict[int, int]:
    return {int(float(a)): int(b) for a, b in (item.split(":") for item in text.split(","))}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true", help="N = 2000 only, 2 timed steps")
    parser.add_argument("--no-1e6", dest="million", action="store_false", help="skip N = 1e6")
    parser.add_argument("--steps", type=parse_steps, default=None,
                        help="N:timed steps,... (default 10000:8,100000:4,1000000:2)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed to each run")
    parser.add_argument("--retries", type=int, default=1,
                        help="runs again a run during which other processes kept >= 0.3 cores busy (keeps the quieter)")
    parser.add_argument("--quiet-wait", type=float, default=60.0,
                        help="seconds to wait before each run for other processes to leave the cores")
    parser.add_argument("--worker", choices=["pytorch", "lammps"], help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--frames", type=int, help=argparse.SUPPRESS)  # worker: steps, warm-up included
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--report", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--final", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.steps = args.frames
        (torch_worker if args.worker == "pytorch" else lammps_worker)(args)
        return {}
    sizes = args.steps or (QUICK_STEPS if args.quick else STEPS)
    if not args.million:
        sizes = {n: k for n, k in sizes.items() if n < 1_000_000}
    import torch

    from mpd.lammps_env import import_lammps

    lammps = import_lammps()
    memory = machine_memory_mb()
    rows: list[dict] = []
    peaks: dict[tuple, list[tuple[int, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_lammps_") as tmp:
        work = Path(tmp)
        model_path = work / "model.pt"
        kwargs = write_model(model_path)
        for n, timed in sorted(sizes.items()):
            x, v, box = liquid(n)
            n_pairs = true_pairs(x, box)
            state = work / f"state_{n}.npz"
            np.savez(state, x=x, v=v, box=box)
            for engine, ranks, threads in CONFIGS:
                base = {"engine": engine, "n_particles": n, "n_pairs": n_pairs,
                        "neighbours_per_particle": 2 * n_pairs / n, "ranks": ranks, "threads_per_rank": threads,
                        "cores_used": ranks * threads, "timed_steps": timed}
                key = (engine, ranks, threads)
                if key in peaks:  # a size whose predicted memory would not fit is not run
                    (n0, p0), (n1, p1) = peaks[key][-2:] if len(peaks[key]) > 1 else ((0, 0.0), peaks[key][-1])
                    predicted = p1 + (p1 - p0) / (n1 - n0) * (n - n1)  # linear in N through the last two sizes
                    limit = 0.6 * available_mb()
                    if predicted > limit:
                        reason = f"not run: predicted peak {predicted:.0f} MB > 60 % of the available {limit / 0.6:.0f} MB"
                        rows.append({**base, "status": "skipped", "reason": reason, "peak_rss_mb": None})
                        print(f"{engine:7s} {ranks}x{threads} N={n:>8d}: {reason}", flush=True)
                        continue
                best = None
                for attempt in range(1 + args.retries):  # a run disturbed by other processes is run again
                    waited, _quiet = wait_for_quiet(args.quiet_wait)
                    load = os.getloadavg()[0]
                    with OtherLoad() as other:
                        reports, launched, wall, error = run_config(engine, ranks, threads, timed + 1, model_path,
                                                                    state, work, args.timeout)
                    if best is None or (error is None and (best[3] is not None or other.cores < best[4])):
                        best = (reports, launched, wall, error, other.cores, load, waited, attempt + 1)
                    if error is not None or other.cores < 0.3:
                        break
                    print(f"{engine:7s} {ranks}x{threads} N={n:>8d}: other processes kept {other.cores:.2f} cores "
                          f"busy during the run", flush=True)
                reports, launched, wall, error, other_cores, load, waited, attempts = best
                if error is not None:
                    rows.append({**base, "status": "failed", "reason": error, "peak_rss_mb": None, "run_wall_s": wall,
                                 "load_before": load, "other_cores_busy_during_run": other_cores})
                    print(f"{engine:7s} {ranks}x{threads} N={n:>8d}: {error}", flush=True)
                    continue
                row = summarise(engine, n, n_pairs, ranks, threads, reports, launched, wall)
                row.update(load_before=load, other_cores_busy_during_run=other_cores, waited_for_quiet_s=waited,
                           attempts=attempts)
                row["agreement_with_pytorch_1_thread"] = agreement(work, f"{engine}_{ranks}x{threads}", box)
                if engine == "pytorch" and threads == 1:  # the LAMMPS runs start from the same entropies
                    with np.load(work / "pytorch_1x1.final.npz") as final:
                        np.savez(state, x=x, v=v, box=box, S=final["S0"])
                peaks.setdefault(key, []).append((n, row["peak_rss_mb_total"]))
                rows.append(row)
                print(f"{engine:7s} {ranks}x{threads} N={n:>8d} pairs={n_pairs:>9d} ({2 * n_pairs / n:4.1f} neighbours) "
                      f"{row['seconds_per_step']:8.4f} s/step {row['particle_steps_per_s']:10.0f} particle-steps/s "
                      f"start-up {row['startup_s']:5.1f} s peak {row['peak_rss_mb_total']:7.0f} MB "
                      f"(load {load:.2f})", flush=True)
    result = {
        "benchmark": "lammps", "dtype": "float64", "noise": False, "weights": "untrained (seeded); speed only",
        "network": kwargs, "neighbours_per_particle_target": NEIGHBOURS, "number_density_per_h3": DENSITY,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
                    "memory_mb": memory, "torch": str(torch.__version__), "lammps": str(lammps.__version__),
                    "python": platform.python_version()},
        "timing": ("one warm-up step, then the timed steps; mean seconds per step (LAMMPS: end of one model callback "
                   "to the end of the next, the slowest rank; PyTorch: model step + pair-list update, per-frame "
                   "recording separate); start-up = launch to the first model step; memory = ru_maxrss of every "
                   "process over its run"),
        "quick": args.quick, "sizes": {str(n): k for n, k in sizes.items()}, "results": rows,
    }
    result["derived"] = derived(rows, memory)
    result["targets"] = target_results(rows, result["derived"], memory, any(n >= 1_000_000 for n in sizes))
    atomic_write_json(result, args.out)
    atomic_write_bytes(markdown_table(result).encode(), args.out.with_suffix(".md"))
    for t in result["targets"]:
        print(f"target {t['what']}: {t['verdict']} ({t['measured']})")
    return result


if __name__ == "__main__":
    main()
