"""The SLURM profile on a real one-node SLURM cluster started on localhost.

The fixture starts munged, slurmctld and slurmd in the foreground from a
temporary directory (its own munge key and socket, its own slurm.conf named by
SLURM_CONF, free ports), waits for the node to be idle, and stops the daemons
by their process ids at teardown. Skips (never fails) where slurm-wlm, munge or
snakemake-executor-plugin-slurm are not installed, or when not root.
See docs/cluster.md.
"""
import importlib.util
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
TARGET = "results/tiny/video/metadata.json"
TINY = {"experiments": {"tiny": {"synthetic": {
    "simulation": {"n_particles": 150, "equilibration_s": 0.5, "frame_rate_hz": 10,
                   "shear": {"amplitude": 0.04, "period_s": 1.0, "cycles": 1}},
    "microscope": {"width_px": 96, "height_px": 96},
}}}}
pytestmark = pytest.mark.skipif(missing() is not None, reason=missing() or "")


def test_profile_runs_jobs_through_slurm(slurm_cluster, tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(TINY))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
           "--profile", str(PROFILE), TARGET,
           "--configfile", str(tmp_path / "config.yaml"),
           # the test cluster has no accounting: status via squeue; and it polls quickly
           "--slurm-status-command", "squeue",
           "--slurm-init-seconds-before-status-checks", "3", "--slurm-keep-successful-logs",
           "--latency-wait", "5", "--retries", "0", "--jobs", "4"]
    started = time.monotonic()
    result = subprocess.run(cmd, cwd=tmp_path, env=slurm_cluster, capture_output=True, text=True,
                            timeout=240, check=False)
    log = result.stdout[-4000:] + result.stderr[-6000:]
    assert result.returncode == 0, log
    assert time.monotonic() - started < 240

    meta = json.loads((tmp_path / TARGET).read_text())
    assert meta["width_px"] == 96 and meta["n_frames"] > 0
    assert (tmp_path / "results/tiny/truth/trajectories.parquet").stat().st_size > 0
    assert (tmp_path / "results/tiny/video/frames.tif").stat().st_size > 0

    # evidence that SLURM ran both rules: the plugin's per-job logs, named by SLURM job id
    slurm_logs = tmp_path / ".snakemake" / "slurm_logs"
    by_rule = {d.name: sorted(d.rglob("*.log")) for d in slurm_logs.glob("rule_*")}
    assert by_rule.get("rule_simulate_twin") and by_rule.get("rule_render_twin"), \
        f"no SLURM job logs in {slurm_logs}: {list(slurm_logs.rglob('*'))}\n{log}"
    job_ids = {p.stem for logs in by_rule.values() for p in logs}
    assert all(j.isdigit() for j in job_ids) and len(job_ids) >= 2, job_ids
    # and slurmctld knows them (squeue shows finished jobs for MinJobAge seconds; no sacct needed)
    seen = subprocess.run(["squeue", "-h", "--states=all", "-o", "%i %T"], env=slurm_cluster,
                          capture_output=True, text=True, timeout=20, check=True).stdout.split("\n")
    states = dict(line.split() for line in seen if line.strip())
    assert job_ids <= set(states), (job_ids, states)
    assert {states[j] for j in job_ids} == {"COMPLETED"}, states


class _Resources(dict):
    __getattr__ = dict.__getitem__


@pytest.mark.skipif(importlib.util.find_spec("snakemake_executor_plugin_slurm") is None,
                    reason="snakemake-executor-plugin-slurm is not installed")
def test_profile_asks_slurm_for_a_gpu_for_train_model():
    """No cluster needed: the sbatch line the plugin builds from the profile's train_model resources."""
    from types import SimpleNamespace

    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    assert profile["executor"] == "slurm" and profile["slurm-status-command"] == "squeue"
    resources = _Resources(profile["default-resources"], **profile["set-resources"]["train_model"])
    job = SimpleNamespace(resources=resources, threads=profile["set-threads"]["train_model"])
    params = {"run_uuid": "x", "slurm_logfile": "x.log", "comment_str": "train_model", "account": "",
              "partition": "", "workdir": "."}
    call = get_submit_command(job, params) + set_gres_string(job)
    assert "--gpus=1" in call and "--mem 8000" in call and "-t 240" in call
    assert "--cpus-per-gpu=8" in call or "--cpus-per-task=8" in call
