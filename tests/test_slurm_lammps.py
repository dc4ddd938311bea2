"""rollout_lammps through the SLURM profile: one job of 2 tasks whose ranks srun starts with PMI2 (mpich wheel),
on the local one-node SLURM cluster (tests/slurm_support.py; docs/lammps.md)."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from slurm_support import missing
from test_lammps_stage import TINY_STARS

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "workflow" / "profiles" / "slurm"
TARGET = "results/stars/lammps/status.json"
pytestmark = pytest.mark.skipif(missing() is not None, reason=missing() or "")


def snakemake(workdir: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
                           "--configfile", str(workdir / "config.yaml"), *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=600, check=False)


def test_rollout_lammps_runs_as_one_slurm_job_of_two_mpi_tasks(slurm_cluster, two_ranks_start, tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"experiments": {"stars": TINY_STARS}}))
    # the truth and the model here (not this test's subject), the LAMMPS rollout through the profile
    done = snakemake(tmp_path, slurm_cluster, "--cores", "2", "results/stars/model/model.pt")
    assert done.returncode == 0, done.stderr[-3000:]
    done = snakemake(tmp_path, slurm_cluster, "--profile", str(PROFILE), TARGET)
    log = done.stdout[-2000:] + done.stderr[-5000:]
    assert done.returncode == 0, log

    status = json.loads((tmp_path / TARGET).read_text())
    assert status["ranks"] == 2 and status["n_particles"] == 80 and status["status"] in ("completed", "diverged")
    table = pd.read_parquet(tmp_path / "results/stars/lammps/trajectories.parquet")
    assert table.groupby("frame")["particle"].count().eq(80).all()
    # SLURM ran it as one job of 2 tasks, and the ranks were srun's (the rule's log names the launch)
    job_logs = sorted((tmp_path / ".snakemake" / "slurm_logs" / "rule_rollout_lammps").rglob("*.log"))
    assert len(job_logs) == 1, job_logs
    job = job_logs[0].stem
    shown = subprocess.run(["scontrol", "show", "job", job], env=slurm_cluster, capture_output=True, text=True,
                           timeout=20, check=True).stdout
    assert "NumTasks=2" in shown and "JobState=COMPLETED" in shown, shown
    rule_log = (tmp_path / "logs" / "stars" / "rollout_lammps.log").read_text()
    assert "srun --ntasks=2" in rule_log and "--mpi=pmi2" in rule_log, rule_log[-3000:]
