"""Data-parallel training as one SLURM job of 2 tasks, on a real one-node SLURM cluster (tests/slurm_support.py).

`--set-resources train_model:tasks=2` makes train_model one job of 2 SLURM tasks (the rule's `mpi` resource:
no `srun -n1` around the Snakemake job); its script starts the 2 ranks with srun, one torchrun agent per task
meeting at a c10d rendezvous (mpd.distributed.launch). Both agents run on the one node, which also checks that
two agents on the rendezvous host work (one hosts the store, the other connects). The model equals the one of a
1-process training of the same dataset to the tolerance of tests/test_distributed.py (float64).
"""
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from slurm_support import missing
from test_distributed import PARAMETER_TOLERANCE
from test_training_support import SMALL_NETWORK

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "workflow" / "profiles" / "slurm"
MODEL = {
    "network": dict(SMALL_NETWORK),
    # batch_size 3 on 2 ranks: uneven shards; one thread each (2 CPUs on the test node, shared)
    "training": {"epochs": 2, "batch_size": 3, "dtype": "float64", "device": "cpu", "progress": False,
                 "num_threads": 1, "selection_steps": 2, "selection_starts": 1, "learning_rate": 3e-3},
    "rollout": {"progress": False, "device": "cpu"},
}
CONFIG = {"experiments": {"tiny": {
    "synthetic": {"simulation": {"n_particles": 150, "equilibration_s": 0.5, "frame_rate_hz": 10,
                                 "shear": {"amplitude": 0.04, "period_s": 1.0, "cycles": 2}},
                  "microscope": {"width_px": 96, "height_px": 96}},
    "model": MODEL,
}}}
GEOMETRY = "results/tiny/geometry/dataset/metadata.json"
TARGET = "results/tiny/model/model.pt"
pytestmark = pytest.mark.skipif(missing() is not None, reason=missing() or "")


def snakemake(workdir: Path, env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
           "--configfile", str(workdir / "config.yaml"), *args]
    return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def test_train_model_runs_as_one_slurm_job_of_two_tasks_and_equals_one_process(slurm_cluster, tmp_path):
    from mpd.stage import effective_model_config, train_model
    from mpd.training import load_model, train

    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    # the stages before training, here (not this test's subject)
    done = snakemake(tmp_path, slurm_cluster, "--cores", "2", GEOMETRY)
    assert done.returncode == 0, done.stderr[-4000:]

    started = time.monotonic()
    done = snakemake(tmp_path, slurm_cluster, "--profile", str(PROFILE), TARGET,
                     # the test cluster polls quickly, keeps no failed attempt
                     "--slurm-init-seconds-before-status-checks", "3", "--latency-wait", "5", "--retries", "0",
                     "--set-resources", "train_model:tasks=2")
    log = done.stdout[-3000:] + done.stderr[-6000:]
    rule_log = tmp_path / "logs" / "tiny" / "train_model.log"
    rule_text = rule_log.read_text() if rule_log.exists() else "(no rule log)"
    assert done.returncode == 0, log + "\n" + rule_text[-6000:]
    print(f"train_model through SLURM with 2 tasks: {time.monotonic() - started:.1f} s")

    # one SLURM job of 2 tasks ran it (the test cluster keeps finished jobs for MinJobAge = 3600 s)
    job_logs = sorted((tmp_path / ".snakemake" / "slurm_logs" / "rule_train_model").rglob("*.log"))
    assert len(job_logs) == 1 and job_logs[0].stem.isdigit(), job_logs
    job_id = job_logs[0].stem
    shown = subprocess.run(["scontrol", "show", "job", "--oneliner", job_id], env=slurm_cluster,
                           capture_output=True, text=True, timeout=20, check=True).stdout
    assert "NumTasks=2 " in shown and "JobState=COMPLETED" in shown, shown
    # and its script started the ranks with srun inside that job, one torchrun agent per task
    assert f"(SLURM job {job_id} on " in rule_text, rule_text[-3000:]
    assert "srun --ntasks=2 --nodes=1 --cpus-per-task=1 --kill-on-bad-exit=1" in rule_text
    assert "--rdzv-backend=c10d" in rule_text and f"--rdzv-id=mpd-{job_id}" in rule_text

    # the same model as one process on the same dataset: the selected model (model.pt) and the last epoch's
    # parameters (checkpoint.pt)
    geometry = tmp_path / "results" / "tiny" / "geometry"
    single = train_model(geometry, tmp_path / "one", MODEL)
    two = (tmp_path / TARGET).parent
    initial = train(geometry, tmp_path / "zero", effective_model_config(MODEL, geometry), stop_after_epoch=0)
    for name, key in (("model.pt", "state_dict"), ("checkpoint.pt", "model")):
        a = torch.load(single / name, map_location="cpu", weights_only=True)[key]
        b = torch.load(two / name, map_location="cpu", weights_only=True)[key]
        assert set(a) == set(b)
        diff = max(float((a[k] - b[k]).abs().max()) for k in a)
        print(f"{name}: max |theta_SLURM_2tasks - theta_1proc| = {diff:.3e}")
        assert diff < PARAMETER_TOLERANCE
    moved = max(float((a[k] - initial.model.state_dict()[k]).abs().max()) for k in a)
    assert moved > 1e3 * PARAMETER_TOLERANCE  # the comparison is not vacuous
    _, meta_one = load_model(single / "model.pt")
    _, meta_two = load_model(two / "model.pt")
    assert meta_two["world_size"] == 2 and meta_one["world_size"] == 1
    assert meta_two["config"] == meta_one["config"] and meta_two["epochs_run"] == 2


FAILING = """\
import sys
from pathlib import Path

sys.path.insert(0, {repo!r})
from mpd.distributed import launch
from mpd.training import TrainingError

try:
    launch({geometry!r}, {out!r}, {model!r}, 2, 1, log_file="logs/tiny/train_model.log")
except TrainingError as error:
    Path({result!r}).write_text(str(error))
"""


def test_a_failing_rank_in_a_slurm_job_ends_both_tasks_with_the_clear_error(slurm_cluster, tmp_path):
    """srun --kill-on-bad-exit: rank 1 dies at start-up, rank 0 (waiting at the rendezvous) is ended too."""
    from test_distributed import WINDOW, failing_rank_hook
    from test_training_support import H_UM, RATE, lattice_trajectories

    from mpd.geometry.stage import compute_geometry

    traj = lattice_trajectories(n_frames=14, drift_um_s=(4.0, 1.0), window=WINDOW, seed=5)
    geometry = compute_geometry(traj, tmp_path / "geometry", h_um=H_UM, frame_rate_hz=RATE, window=WINDOW)
    hook = failing_rank_hook(tmp_path)
    out, result = tmp_path / "model", tmp_path / "error.txt"
    script = tmp_path / "launch.py"
    script.write_text(FAILING.format(repo=str(REPO), geometry=str(geometry), out=str(out), model=MODEL,
                                     result=str(result)))
    env = dict(slurm_cluster, PYTHONPATH=str(hook))
    started = time.monotonic()
    done = subprocess.run(["sbatch", "--wait", "--ntasks=2", "--cpus-per-task=1", "--mem=2000", "-t", "5",
                           f"--output={tmp_path / 'job.log'}", "-D", str(tmp_path),
                           f"--wrap={sys.executable} {script}"],
                          env=env, capture_output=True, text=True, timeout=240, check=False)
    job_log = (tmp_path / "job.log").read_text() if (tmp_path / "job.log").exists() else ""
    assert done.returncode == 0, done.stdout + done.stderr + job_log[-4000:]
    print(f"failing launch in a SLURM job: {time.monotonic() - started:.1f} s")
    message = result.read_text()
    assert message.startswith("data-parallel training with 2 processes (SLURM job "), message
    assert "logs/tiny/train_model.log" in message and "rank 1 fails on purpose" in message, message
    assert not (out / "model.pt").exists() and not (out / "rollout_step.pt").exists()
