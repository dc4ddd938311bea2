"""The model benchmark measures what it says: the neighbour count it is asked for, memory in a fresh process."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_model.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_model", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("neighbours", [10, 19])
def test_the_liquid_has_the_requested_neighbours_per_particle(bench, neighbours):
    model = bench.build_model(torch.device("cpu"))
    n, n_pairs, steps = bench.cases(2000, model, torch.device("cpu"), neighbours)
    assert 2 * n_pairs / n == pytest.approx(neighbours, rel=0.1)
    assert set(steps) == {"rollout_step", "training_step", "training_step_recompute", "training_step_compiled"}


def test_timing_runs_no_helper_thread_and_memory_comes_from_a_fresh_process(bench, monkeypatch):
    import threading

    started = []
    original = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", lambda self: (started.append(self), original(self))[1])
    timing = bench.time_step(lambda: sum(range(1000)), torch.device("cpu"), 3)
    assert started == [] and timing["repeats"] == 3
    assert timing["best_seconds_per_step"] <= timing["seconds_per_step"]
    probe = bench.probe_in_subprocess(300, "training_step", "cpu", 19, 1)
    assert probe["peak_memory_mb"] > 0 and probe["n_pairs"] > 0
    assert probe["memory_measure"] == "resident-set growth, first step of a fresh process"
    done = subprocess.run([sys.executable, str(BENCH), "--memory-probe", "300", "rollout_step", "cpu"],
                                        capture_output=True, text=True, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1])["n_particles"] > 0


def test_targets_are_judged_from_the_rows_nearest_their_size(bench):
    rows = [
        {"device": "cpu", "kind": "rollout_step", "n_particles": 9844, "cpu_particle_steps_per_s": 1.5e5},
        {"device": "cpu", "kind": "rollout_step", "n_particles": 99960, "cpu_particle_steps_per_s": 1e3},
        {"device": "cpu", "kind": "training_step", "n_particles": 9844, "cpu_particle_steps_per_s": 3.0e4},
        {"device": "cpu", "kind": "training_step", "n_particles": 99960, "memory_bytes_per_pair": 4800.0},
        {"device": "cpu", "kind": "training_step_recompute", "n_particles": 9844, "memory_bytes_per_pair": None},
    ]
    verdicts = {t["kind"] + str(t["n"]): t["verdict"] for t in bench.target_results(rows)}
    assert verdicts == {"rollout_step10000": "met", "training_step10000": "missed", "training_step100000": "met",
                        "training_step_recompute10000": "not measured", "training_step_compiled10000": "not measured",
                        "rollout_step1000000": "not measured"}
    table = bench.markdown_table({"machine": {"torch_threads": 1, "cpu_count": 2, "torch": "x"},
                                  "neighbours_per_particle_target": 19, "results": [], "scaling_exponent": {},
                                  "targets": bench.target_results(rows)})
    assert "| missed |" in table and "| met |" in table and "not measured" in table
