"""The LAMMPS-against-PyTorch benchmark (issue 16, point 5) measures what it says and judges its targets from
its numbers."""
import importlib.util
import json
from pathlib import Path

import pytest

from mpd.lammps_env import LammpsUnavailableError, import_lammps, mpiexec_path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_lammps.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_lammps", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick(bench, tmp_path_factory):
    """The benchmark's smallest configuration (N = 2000, one warm-up and 2 timed steps, 4 configurations)."""
    try:
        import_lammps()
        mpiexec_path()
    except LammpsUnavailableError as exc:
        pytest.skip(f"LAMMPS or mpiexec is not available: {exc}")
    out = tmp_path_factory.mktemp("bench") / "lammps.json"
    result = bench.main(["--quick", "--out", str(out), "--timeout", "120", "--quiet-wait", "0", "--retries", "0"])
    lammps_rows = [r for r in result["results"] if r["engine"] == "lammps"]
    if any(r["status"] == "failed" for r in lammps_rows):
        pytest.skip("MPI cannot start the LAMMPS ranks here: "
                    + "; ".join(r.get("reason", "")[:300] for r in lammps_rows))
    return result, out


def test_quick_run_writes_every_figure_with_its_work_size(quick):
    result, out = quick
    assert json.loads(out.read_text()) == result
    table = out.with_suffix(".md").read_text()
    assert "| lammps | 2 x 1 | 2000 |" in table and "| pytorch | 1 x 2 | 2000 |" in table
    rows = {(r["engine"], r["ranks"], r["threads_per_rank"]): r for r in result["results"]}
    assert set(rows) == {("pytorch", 1, 1), ("pytorch", 1, 2), ("lammps", 1, 1), ("lammps", 2, 1)}
    for r in rows.values():
        assert r["status"] == "completed" and r["n_particles"] == 2000 and r["timed_steps"] == 2
        assert 9 < r["neighbours_per_particle"] < 15 and r["n_pairs"] > 0 and r["pairs_evaluated"] > 0
        assert r["particle_steps_per_s"] == pytest.approx(r["n_particles"] / r["seconds_per_step"])
        assert r["min_seconds_per_step"] <= r["seconds_per_step"] <= r["max_seconds_per_step"]
        assert len(r["peak_rss_mb"]) == r["ranks"] and all(mb > 0 for mb in r["peak_rss_mb"])
        assert r["peak_rss_mb_total"] == pytest.approx(sum(r["peak_rss_mb"]))
        assert 0 < r["startup_s"] < r["run_wall_s"]
        # the same trajectory in both engines (the LAMMPS runs start from the PyTorch run's entropies)
        assert r["agreement_with_pytorch_1_thread"]["max_abs_dx_h"] < 1e-9
    two = rows[("lammps", 2, 1)]
    assert two["cores_used"] == 2 == rows[("pytorch", 1, 2)]["cores_used"]
    assert sum(two["local_atoms"]) == 2000 and all(g > 0 for g in two["ghost_atoms"])
    assert len(two["pairs_evaluated_per_rank"]) == 2 and two["pairs_evaluated_over_true"] > 1  # the ghost shell
    per_n = result["derived"]["per_n"][0]
    assert per_n["speedup_2_over_1_ranks"] == pytest.approx(
        rows[("lammps", 1, 1)]["seconds_per_step"] / two["seconds_per_step"])
    # one size only: nothing to judge, and said so
    for target in result["targets"]:
        assert target["met"] is None and target["verdict"] == "not measured"


def _row(engine, ranks, n, seconds, status="completed", rss=(100.0,)):
    return {"engine": engine, "ranks": ranks, "threads_per_rank": 1, "n_particles": n, "status": status,
            "seconds_per_step": seconds, "seconds_per_particle_step": None if seconds is None else seconds / n,
            "peak_rss_mb": list(rss), "peak_rss_mb_total": sum(rss)}


def test_targets_are_booleans_computed_from_the_numbers(bench):
    rows = [_row("lammps", 1, 10_000, 0.1), _row("lammps", 2, 10_000, 0.06),
            _row("lammps", 1, 100_000, 1.0), _row("lammps", 2, 100_000, 0.7),  # speed-up 1.43: missed
            _row("lammps", 1, 1_000_000, 11.0), _row("lammps", 2, 1_000_000, 9.0, rss=(3000.0, 3100.0))]
    targets = {t["key"]: t for t in bench.target_results(rows, {}, 24_000.0, True)}
    speedup = targets["speedup_2_over_1_ranks"]
    assert speedup["measured"] == pytest.approx(1.0 / 0.7) and speedup["met"] is False
    assert speedup["verdict"] == "missed" and speedup["n_particles"] == 100_000
    one = targets["linearity_lammps_1_ranks"]  # 11e-6 / 10e-6 = 1.1 <= 1.25
    assert one["measured"] == pytest.approx(1.1) and one["met"] is True and one["verdict"] == "met"
    two = targets["linearity_lammps_2_ranks"]  # 9e-6 / 6e-6 = 1.5
    assert two["measured"] == pytest.approx(1.5) and two["met"] is False
    million = targets["peak_rss_mb_total_1e6"]
    assert million["measured"] == 6100.0 and million["at_most"] == 24_000.0 and million["met"] is True
    # the same numbers with a faster second rank and a 1e6 run that did not finish
    rows[3]["seconds_per_step"] = 0.55
    rows[5] = {**_row("lammps", 2, 1_000_000, None, status="failed"), "reason": "timed out after 600 s"}
    targets = {t["key"]: t for t in bench.target_results(rows, {}, 24_000.0, True)}
    assert targets["speedup_2_over_1_ranks"]["met"] is True
    assert targets["peak_rss_mb_total_1e6"]["met"] is False and "timed out" in targets["peak_rss_mb_total_1e6"]["reason"]
    assert targets["linearity_lammps_2_ranks"]["n_particles"] == [10_000, 100_000]
    # not asked for: not measured, and no boolean
    targets = {t["key"]: t for t in bench.target_results(rows[:4], {}, 24_000.0, False)}
    assert targets["peak_rss_mb_total_1e6"]["met"] is None
    assert targets["peak_rss_mb_total_1e6"]["verdict"] == "not measured"
    for t in targets.values():
        assert t["met"] in (True, False, None)
