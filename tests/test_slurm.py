"""The SLURM profile as shipped, on a real one-node SLURM cluster started on localhost (tests/slurm_support.py).

The demo, and a video tracked in split jobs (tracking.chunk_frames), run through it.

The node is small and has no GPU and no accounting, like a workstation made
into a cluster: the whole demo must run through the profile with nothing
added on the command line (docs/cluster.md).
"""
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from slurm_support import missing

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "workflow" / "profiles" / "slurm"
pytestmark = pytest.mark.skipif(missing() is not None, reason=missing() or "")

# The demo's experiments (config.yaml) made small: the same rules run, in a few minutes on 2 CPUs.
SHRINK = {
    "twin_demo": {
        "synthetic": {"simulation": {"n_particles": 150, "equilibration_s": 0.5, "frame_rate_hz": 10,
                                     "shear": {"amplitude": 0.04, "period_s": 1.0, "cycles": 2}},
                      "microscope": {"width_px": 96, "height_px": 96}},
        "model": {"training": {"epochs": 1}},
        "analysis": {"d2min_lag_frames": 2},
    },
    "sp11": {
        "synthetic": {"star_polymer": {"n_polymers": 40, "equilibration_tau": 2, "sample_interval_tau": 0.1,
                                       "n_frames": 30}},
        "comparison": {"train_frames": 8, "rollout_factor": 2, "dpd": {"budget": 4, "starts": 4}},
        "geometry": {"h_factor": 1.2},
        "model": {"training": {"epochs": 1}},
    },
}


def merged(base: dict, change: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in change.items():
        out[key] = merged(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def small_demo_config() -> dict:
    demo = yaml.safe_load((REPO / "config.yaml").read_text())
    assert set(demo["experiments"]) == set(SHRINK), "the demo's experiments changed: update SHRINK"
    return {"experiments": {name: merged(section, SHRINK[name]) for name, section in demo["experiments"].items()}}


def lammps_or_skip():
    from twin.lammps_env import LammpsUnavailableError, open_lammps

    try:
        open_lammps().close()
    except (LammpsUnavailableError, ImportError, OSError) as error:
        pytest.skip(f"LAMMPS unavailable: {error}")


def snakemake_with_profile(workdir: Path, env: dict, *args: str, timeout: float = 840):
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
               "--configfile", str(workdir / "config.yaml"), "--profile", str(PROFILE), *args]
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


def squeue(env: dict, fields: str) -> list[list[str]]:
    out = subprocess.run(["squeue", "--noheader", "--states=all", f"--format={fields}"], env=env,
                         capture_output=True, text=True, timeout=20, check=True).stdout
    return [line.split("|") for line in out.splitlines() if line.strip()]


def node_cpus(env: dict) -> int:
    out = subprocess.run(["sinfo", "--Node", "--noheader", "--format=%c"], env=env, capture_output=True,
                         text=True, timeout=20, check=True).stdout
    return max(int(n) for n in out.split())


@pytest.mark.slow
def test_the_demo_runs_through_the_profile_on_a_small_cpu_only_node(slurm_cluster, tmp_path):
    lammps_or_skip()
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(small_demo_config()))
    cpus = node_cpus(slurm_cluster)
    started = time.monotonic()
    result = snakemake_with_profile(tmp_path, slurm_cluster)  # the profile as shipped: nothing added
    elapsed = time.monotonic() - started
    log = result.stdout[-3000:] + result.stderr[-8000:]
    assert result.returncode == 0, log
    print(f"the small demo through SLURM: {elapsed:.0f} s on {cpus} CPUs")

    for output in ("results/twin_demo/analysis/metrics.json", "results/twin_demo/tracking/accuracy.json",
                   "results/sp11/analysis/comparison.json", "results/table1.md"):
        assert (tmp_path / output).stat().st_size > 0, output
    assert f"rule threads capped at {cpus} CPUs" in result.stderr, log

    # every rule the demo has ran as its own SLURM job (the plugin's per-job logs, named by job id) ...
    slurm_logs = tmp_path / ".snakemake" / "slurm_logs"
    by_rule = {d.name.removeprefix("rule_"): sorted(p.stem for p in d.rglob("*.log")) for d in slurm_logs.glob("rule_*")}
    expected = {"simulate_twin", "render_twin", "track_twin", "geometry", "train_model", "rollout_model",
                "rollout_box_twin", "analyse_twin", "compare_twin", "simulate_star_polymers", "bulk_dataset",
                "rollout_bulk", "baseline", "compare_models", "table1"}
    assert expected <= set(by_rule), (sorted(by_rule), log)
    # ... completed, within the node's CPUs (a request above them pends for ever), and without a GPU
    jobs = {row[0]: row[1:] for row in squeue(slurm_cluster, "%i|%T|%C|%b|%j")}
    ours = {job for ids in by_rule.values() for job in ids}
    assert ours <= set(jobs), (ours, jobs)
    assert {jobs[j][0] for j in ours} == {"COMPLETED"}, {j: jobs[j] for j in ours}
    asked = {j: int(jobs[j][1]) for j in ours}
    assert max(asked.values()) == cpus, asked  # the 8-thread rules were capped, not refused or shrunk to 1
    assert not any("gpu" in jobs[j][2] for j in ours), {j: jobs[j][2] for j in ours}


def test_an_account_on_a_cluster_without_accounting_stops_before_submitting(slurm_cluster, tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(small_demo_config()))
    before = squeue(slurm_cluster, "%i")
    result = snakemake_with_profile(tmp_path, slurm_cluster, "--default-resources", "slurm_account=myproject",
                                    timeout=300)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "ClusterSetupError" in last and "remove slurm_account" in last and "config.yaml" in last, last
    assert squeue(slurm_cluster, "%i") == before  # nothing was submitted
    assert not (tmp_path / "results").exists()


def test_a_long_video_is_tracked_in_split_jobs_through_the_profile(slurm_cluster, tmp_path):
    """chunk_frames through the SLURM profile: the plan, every chunk's locate and link, and the gather are
    each their own SLURM job, and the trajectories are those of the same video tracked in one job."""
    import numpy as np
    import pandas as pd
    import tifffile
    from test_tracking_stream import FPS, MPP, N_FRAMES, render, simulate

    chunk_frames = 12  # two chunks: one boundary the gather joins from the link jobs' states
    x, y = simulate()
    rng = np.random.default_rng(1)
    tifffile.imwrite(tmp_path / "frames.tif", np.stack([render(x[f], y[f], rng) for f in range(N_FRAMES)]),
                     photometric="minisblack")
    video = {"path": str(tmp_path / "frames.tif"), "pixel_size_um": MPP, "frame_rate_hz": FPS}
    tracking = {"locate": {"refine": "none", "invert": False}, "link": {"search_range_px": 4.0},
                "checks": {"max_short_fraction": None}}
    config = {"experiments": {"split": {"video": video, "tracking": {**tracking, "chunk_frames": chunk_frames}},
                              "whole": {"video": video, "tracking": tracking}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake_with_profile(tmp_path, slurm_cluster, "results/split/tracking/qc.json",
                                    "results/whole/tracking/qc.json", timeout=600)
    log = result.stdout[-3000:] + result.stderr[-8000:]
    assert result.returncode == 0, log

    n_chunks = -(-N_FRAMES // chunk_frames)
    slurm_logs = tmp_path / ".snakemake" / "slurm_logs"
    by_rule = {d.name.removeprefix("rule_"): sorted(p.stem for p in d.rglob("*.log")) for d in slurm_logs.glob("rule_*")}
    counts = {rule: len(by_rule.get(rule, [])) for rule in ("plan_tracking", "locate_chunk", "link_chunk",
                                                             "link_tracking", "track_video")}
    assert counts == {"plan_tracking": 1, "locate_chunk": n_chunks, "link_chunk": n_chunks, "link_tracking": 1,
                      "track_video": 1}, (by_rule, log)
    jobs = {row[0]: row[1] for row in squeue(slurm_cluster, "%i|%T")}
    ours = {job for ids in by_rule.values() for job in ids}
    assert ours <= set(jobs) and {jobs[j] for j in ours} == {"COMPLETED"}, ({j: jobs.get(j) for j in ours}, log)
    results = tmp_path / "results"
    link = json.loads((results / "split" / "tracking" / "qc.json").read_text())["split"]["link"]
    assert link["per_chunk"] is True and link["relinked"] == [], link  # the gather used the link jobs' links
    pd.testing.assert_frame_equal(pd.read_parquet(results / "split" / "tracking" / "trajectories.parquet"),
                                  pd.read_parquet(results / "whole" / "tracking" / "trajectories.parquet"))
