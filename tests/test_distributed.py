"""Data-parallel training (mpd.distributed under torchrun, gloo on CPU) equals 1-process training of the same global batch."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
from test_training_support import H_UM, RATE, SMALL_NETWORK, lattice_trajectories

from mpd.geometry.stage import compute_geometry
from mpd.training import load_checkpoint, load_model, train

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with the gloo backend is not available")

ROOT = Path(__file__).resolve().parents[1]
WINDOW = (4.0, 36.0, 3.0, 28.0)  # µm
# float64: the two runs differ only by summation order (shard sums + all-reduce vs one batch sum)
PARAMETER_TOLERANCE = 1e-9  # max |theta_2proc - theta_1proc| after training, model units


def config(epochs=2, solid=False):
    # batch_size 3 on 2 ranks: uneven shards (2 + 1 pairs); "auto" k_B, mass and teacher scale. Fluid and solid
    # models are exact up to rounding (docs/training.md)
    return {
        "network": dict(SMALL_NETWORK, solid=solid),
        "training": {"epochs": epochs, "batch_size": 3, "dtype": "float64", "device": "cpu", "progress": False,
                     "num_threads": 1, "selection_steps": 2, "selection_starts": 1, "learning_rate": 3e-3},
        "rollout": {"progress": False, "device": "cpu"},
    }


@pytest.fixture(scope="module")
def geometry(tmp_path_factory):
    root = tmp_path_factory.mktemp("lattice")
    traj = lattice_trajectories(n_frames=14, drift_um_s=(4.0, 1.0), window=WINDOW, seed=5)
    return compute_geometry(traj, root / "geometry", h_um=H_UM, frame_rate_hz=RATE, window=WINDOW)


def torchrun(geometry, out_dir, config_path, nproc=2):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "mpd.distributed", str(geometry), str(out_dir), "--config", str(config_path)]
    done = subprocess.run(command, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]


@pytest.mark.parametrize("solid", [False, True], ids=["fluid", "solid"])
def test_two_process_training_equals_one_process_training(geometry, tmp_path, solid):
    cfg = config(epochs=2, solid=solid)
    config_path = tmp_path / "model.json"
    config_path.write_text(json.dumps({"model": cfg}))
    torchrun(geometry, tmp_path / "two", config_path)
    single = train(geometry, tmp_path / "one", cfg)
    initial = train(geometry, tmp_path / "zero", cfg, stop_after_epoch=0)

    a = load_checkpoint(tmp_path / "one" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "two" / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 2
    steps = int(a["optimizer"]["state"][0]["step"])
    assert steps >= 4  # several optimiser steps, over uneven shards
    assert set(a["model"]) == set(b["model"])
    diff = max(float((a["model"][k] - b["model"][k]).abs().max()) for k in a["model"])
    moved = max(float((a["model"][k] - initial.model.state_dict()[k]).abs().max()) for k in a["model"])
    print(f"max |theta_2proc - theta_1proc| = {diff:.3e} after {steps} steps (training moved them by {moved:.3e})")
    assert moved > 1e3 * PARAMETER_TOLERANCE  # the comparison is not vacuous
    assert diff < PARAMETER_TOLERANCE
    # the automatic initial scales (from the first batch) and the optimiser state agree too
    for k in a["optimizer"]["state"]:
        for name in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(a["optimizer"]["state"][k][name], b["optimizer"]["state"][k][name],
                                       rtol=1e-7, atol=1e-15)
    assert a["rng"]["loader"].equal(b["rng"]["loader"])  # same shuffling stream on every rank
    # the log (rank 0 alone writes it) and the stage's model files
    log2 = pd.read_csv(tmp_path / "two" / "training_log.csv")
    np.testing.assert_allclose(log2["train_loss"][1:], [r["train_loss"] for r in single.log][1:], rtol=1e-9)
    np.testing.assert_allclose(log2["val_loss"], [r["val_loss"] for r in single.log], rtol=1e-9)
    _, meta = load_model(tmp_path / "two" / "model.pt")
    assert meta["world_size"] == 2
    assert (tmp_path / "two" / "rollout_step.pt").is_file()
    assert not list((tmp_path / "two").glob(".*.tmp"))


# ---------------------------------------------------------------------------
# The launcher of the train_model rule with several tasks (mpd.distributed.launch)
# ---------------------------------------------------------------------------


def without_slurm(**extra) -> dict:
    """This environment as outside any SLURM job (the launcher's choice: torchrun on this machine)."""
    env = {k: v for k, v in os.environ.items() if k not in ("SLURM_JOB_ID", "SLURM_JOBID")}
    return dict(env, **extra)


def parameters(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_launched_two_process_training_equals_one_process_training(geometry, tmp_path):
    """`launch` (what train_model runs with tasks: 2) gives stage.train_model's 1-process model."""
    from mpd.distributed import CONFIG_NAME, launch
    from mpd.stage import train_model

    cfg = config(epochs=2)
    out = launch(geometry, tmp_path / "two", cfg, 2, 1, environ=without_slurm(), log_file="logs/x/train_model.log")
    train_model(geometry, tmp_path / "one", cfg)
    a, b = parameters(tmp_path / "one" / "model.pt"), parameters(out / "model.pt")
    assert set(a) == set(b)
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"launcher: max |theta_2proc - theta_1proc| = {diff:.3e}")
    assert diff < PARAMETER_TOLERANCE
    _, meta1 = load_model(tmp_path / "one" / "model.pt")
    _, meta2 = load_model(out / "model.pt")
    assert (meta1["world_size"], meta2["world_size"]) == (1, 2)
    # one effective configuration (closed-box defaults included) for both: same hashes, same recorded config
    assert meta1["config"] == meta2["config"] and meta1["training_hash"] == meta2["training_hash"]
    assert (out / "rollout_step.pt").is_file() and (out / "training_log.csv").is_file()
    assert not (out / CONFIG_NAME).exists() and not list(out.glob(".*.tmp"))


def failing_rank_hook(tmp_path) -> Path:
    """A folder to put first on PYTHONPATH: its sitecustomize makes rank 1 die at interpreter start-up."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os, sys\n"
        "if os.environ.get('RANK') == '1':\n"
        "    sys.stderr.write('rank 1 fails on purpose\\n'); sys.stderr.flush(); os._exit(3)\n")
    return hook


def test_a_failing_rank_ends_the_launch_with_one_clear_error_and_no_model(geometry, tmp_path):
    from mpd import errors
    from mpd.distributed import CONFIG_NAME, launch
    from mpd.training import TrainingError

    hook = failing_rank_hook(tmp_path)  # rank 1 dies at start-up; rank 0 waits for it in vain
    out = tmp_path / "model"
    with pytest.raises(TrainingError) as caught:
        launch(geometry, out, config(epochs=2), 2, 1, environ=without_slurm(PYTHONPATH=str(hook)),
               log_file="logs/lattice/train_model.log")
    message = str(caught.value)
    assert errors.is_clear(caught.value)
    assert "2 processes" in message and "logs/lattice/train_model.log" in message
    assert "rank 1 fails on purpose" in message  # the ranks' output tail
    assert not (out / "model.pt").exists() and not (out / "rollout_step.pt").exists()
    assert not (out / CONFIG_NAME).exists()


def test_launch_commands_with_and_without_slurm():
    from mpd.distributed import SlurmJob, launch_command

    local = launch_command("g", "m", "m/.c.json", 2, 3, python="py")
    assert local == ["py", "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc-per-node=2",
                     "--max-restarts=0", "-m", "mpd.distributed", "g", "m", "--config", "m/.c.json", "--threads", "3"]
    job = SlurmJob("42", ("n1", "n2"), gpus=0)
    slurm = launch_command("g", "m", "m/.c.json", 4, 2, job=job, port=29511, device="cpu", python="py")
    assert slurm[:6] == ["srun", "--ntasks=4", "--nodes=2", "--cpus-per-task=2", "--kill-on-bad-exit=1", "--label"]
    assert slurm[6:] == ["py", "-m", "torch.distributed.run", "--nnodes=4", "--nproc-per-node=1",
                         "--rdzv-backend=c10d", "--rdzv-endpoint=n1:29511", "--rdzv-id=mpd-42", "--max-restarts=0",
                         "-m", "mpd.distributed", "g", "m", "--config", "m/.c.json", "--threads", "2",
                         "--device", "cpu"]
    gpu = launch_command("g", "m", "c", 2, 8, job=SlurmJob("7", ("n1",), gpus=2), port=1, resume=False)
    assert "--gpus-per-task=1" in gpu and "--nodes=1" in gpu and gpu[-1] == "--no-resume"


def test_slurm_job_fields_and_device_index():
    from mpd.distributed import job_gpus, local_device_index, parse_job

    text = ("JobId=42 JobName=x UserId=root(0) NumNodes=2 NumCPUs=4 NumTasks=2 CPUs/Task=2 NodeList=n[1-2] "
            "BatchHost=n1 TRES=cpu=4,mem=8000M,node=2,billing=4,gres/gpu=2 Command=/bin/sh")
    fields = parse_job(text)
    assert fields["NodeList"] == "n[1-2]" and fields["CPUs/Task"] == "2" and fields["NumTasks"] == "2"
    assert job_gpus(fields) == 2
    assert job_gpus({"TRES": "cpu=2,gres/gpu:a100=1,gres/gpu:h100=2"}) == 3
    assert job_gpus({"TRES": "cpu=2,mem=1G,node=1"}) == 0
    # one GPU per task (srun --gpus-per-task=1): that one; torchrun ranks on one node: LOCAL_RANK;
    # one agent per SLURM task on a node with all its GPUs visible: the task's local id
    assert local_device_index(1, {"LOCAL_RANK": "0", "SLURM_LOCALID": "1"}) == 0
    assert local_device_index(4, {"LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "4"}) == 3
    assert local_device_index(2, {"LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "SLURM_LOCALID": "1"}) == 1
    with pytest.raises(RuntimeError, match="only 2 GPUs"):
        local_device_index(2, {"LOCAL_RANK": "0", "SLURM_LOCALID": "2"})
