"""The tracking-at-scale benchmark (issue 17, point 4) measures what it says, puts the work size beside every
figure and judges its goals from its numbers."""
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_tracking_scale.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_tracking_scale", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick(bench, tmp_path_factory):
    """The benchmark's smallest configuration (256 px, 200 particles, 20 and 40 frames), every run a subprocess."""
    if importlib.util.find_spec("tracking.stream") is None:
        pytest.skip("tracking.stream (issue 17, point 2) is not there yet")
    work = tmp_path_factory.mktemp("bench_tracking_scale")
    out = work / "tracking_scale.json"
    return bench.main(["--quick", "--workdir", str(work / "cache"), "--out", str(out), "--quiet"]), out


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_quick_run_writes_every_figure_with_its_work_size(quick):
    result, out = quick
    assert json.loads(out.read_text()) == result
    table = out.with_suffix(".md").read_text()
    assert "## Goals" in table and table.count("| completed |") >= 2
    video = result["video"]
    assert video["size_px"] == 256 and video["pixels_per_frame"] == 256 * 256 and video["frames_done"] >= 40
    assert 150 < video["particles_in_frame_mean"] < 250  # about the 200 asked for
    assert result["parameters"]["locate"]["refine"] == "none"
    assert isinstance(result["parameters"]["locate"]["diameter"], int)

    memory = result["memory"]
    assert [r["frames"] for r in memory] == [20, 40]
    for r in memory:
        assert r["status"] == "completed" and r["chunk_frames"] == 10 and r["processes"] == 1
        for key in ("peak_rss_mb", "rss_after_imports_mb", "seconds", "wall_s", "frames_per_second", "features"):
            assert _positive(r[key]), (key, r[key])
        assert r["peak_rss_mb"] >= r["rss_after_imports_mb"]
        assert 100 < r["features_per_frame"] < 250

    speed = result["speed"]
    assert speed["status"] == "completed" and speed["frames"] == 20
    assert sorted(r["processes"] for r in speed["runs"]) == [1, 2]
    for r in speed["runs"]:
        assert r["status"] == "completed"
        assert sum(w["frames"] for w in r["workers"]) == 20 and len(r["workers"]) == r["processes"]
        assert sorted(c for w in r["workers"] for c in w["chunks"]) == list(range(len(speed["chunks"])))
        for key in ("scatter_wall_s", "gather_wall_s", "wall_s", "frames_per_second", "features", "locate_s",
                    "link_chunk_s"):
            assert _positive(r[key]), (key, r[key])
        assert r["wall_s"] == pytest.approx(r["scatter_wall_s"] + r["gather_wall_s"], rel=2e-3)
        assert r["boundaries_relinked"] == 0  # every chunk's own links were stitched, none linked again
    assert speed["same_trajectory_rows"] is True
    assert 0 < speed["serial_fraction_1_process"] < 1 and 1 < speed["amdahl_limit_2"] < 2
    assert all(_positive(v) for v in speed["frames_per_second"].values())
    assert speed["speedup_2_over_1"] == pytest.approx(speed["frames_per_second"]["2"]
                                                      / speed["frames_per_second"]["1"], rel=2e-3)

    versus = result["versus_trackpy"]
    assert versus["status"] == "completed" and versus["frames"] == 20
    for key in ("bare_trackpy", "ours"):
        for figure in ("seconds_best", "seconds_per_frame_best", "frames_per_second_best", "features",
                       "peak_rss_mb"):
            assert _positive(versus[key][figure]), (key, figure)
    # the same locate parameters on the same frames find the same features
    assert versus["ours"]["features"] == versus["bare_trackpy"]["features"] == memory[0]["features"]
    assert _positive(versus["ratio_ours_to_bare"])

    goals = {g["key"]: g for g in result["goals"]}
    assert set(goals) == {"memory_spread", "speedup_2_over_1", "ratio_to_bare_trackpy"}
    for g in goals.values():
        assert g["met"] in (True, False) and g["verdict"] == ("met" if g["met"] else "missed")
        assert g["measured"] is not None and math.isfinite(g["measured"])
        assert f"| {g['what']} |" in table


def _memory(frames, peaks, status="completed"):
    return [{"frames": n, "status": status, "peak_rss_mb": p, "reason": "killed"} for n, p in zip(frames, peaks)]


def test_goals_are_booleans_computed_from_the_numbers(bench):
    speed = {"status": "completed", "frames": 200, "speedup_2_over_1": 1.75}
    versus = {"status": "completed", "frames": 100, "ratio_ours_to_bare": 1.19}
    goals = {g["key"]: g for g in bench.goal_results(_memory([250, 500, 1000], [1000.0, 1050.0, 1099.0]),
                                                     speed, versus)}
    assert goals["memory_spread"]["measured"] == pytest.approx(0.099) and goals["memory_spread"]["met"] is True
    assert goals["speedup_2_over_1"]["met"] is False and goals["speedup_2_over_1"]["verdict"] == "missed"
    assert goals["ratio_to_bare_trackpy"]["met"] is True and goals["ratio_to_bare_trackpy"]["frames"] == 100
    goals = {g["key"]: g for g in bench.goal_results(_memory([250, 500, 1000], [1000.0, 1050.0, 1101.0]),
                                                     {**speed, "speedup_2_over_1": 1.8},
                                                     {**versus, "ratio_ours_to_bare": 1.21})}
    assert goals["memory_spread"]["met"] is False and goals["speedup_2_over_1"]["met"] is True
    assert goals["ratio_to_bare_trackpy"]["met"] is False
    # a run that did not finish is a miss, with its reason, never a pass
    memory = _memory([250, 500], [1000.0, 1000.0])
    memory[1]["status"] = "failed"
    goals = {g["key"]: g for g in bench.goal_results(memory, {"status": "failed", "reason": "rc 1"}, {})}
    assert goals["memory_spread"]["met"] is False and "killed" in goals["memory_spread"]["reason"]
    assert goals["speedup_2_over_1"]["met"] is False and goals["speedup_2_over_1"]["reason"] == "rc 1"
    assert goals["ratio_to_bare_trackpy"]["verdict"] == "missed"


def test_the_cached_video_is_reused_and_extended_identically(bench, tmp_path):
    import tifffile

    whole = bench.ensure_video(tmp_path / "a", 64, 12, 5, log=lambda *a: None)
    bench.ensure_video(tmp_path / "b", 64, 12, 3, log=lambda *a: None)
    extended = bench.ensure_video(tmp_path / "b", 64, 12, 5, log=lambda *a: None)
    assert whole["frames_done"] == extended["frames_done"] == 5
    assert whole["particles_in_frame"] == extended["particles_in_frame"]
    for frame in range(5):
        a = tifffile.imread(Path(whole["frames_dir"]) / f"frame_{frame:05d}.tif")
        b = tifffile.imread(Path(extended["frames_dir"]) / f"frame_{frame:05d}.tif")
        assert a.shape == (64, 64) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert bench.ensure_video(tmp_path / "b", 64, 12, 4, log=lambda *a: None) == extended  # no work
    glob = bench.first_frames(extended, 4)
    assert len(sorted(Path(glob).parent.glob("*.tif"))) == 4
