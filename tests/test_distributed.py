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
