"""The baselines as a stage: fitted on the training block only, rolled out from the held-back start."""
import json

import numpy as np
import pandas as pd
import pytest

from mpd.baselines.dpd import DPDParams, rollout_dpd
from mpd.baselines.stage import BaselineInputError, rollout_table, run_baseline
from mpd.horizon import HorizonError, horizon

SIDE = 4.0


@pytest.fixture(scope="module")
def truth(tmp_path_factory):
    """A small 3D DPD fluid as the truth: 150 particles, 60 frames."""
    rng = np.random.default_rng(3)
    n, dt = 150, 0.1
    x0 = rng.uniform(0, SIDE, (n, 3))
    v0 = rng.normal(0, 1, (n, 3))
    v0 -= v0.mean(axis=0)
    params = DPDParams(a=15.0, gamma=4.5, kT=1.0, rc=1.0, substeps=5)
    positions, velocities = rollout_dpd(params, x0, v0, np.full(3, SIDE), dt, 60, seed=1)
    table = rollout_table(positions, velocities, 0, dt, 0.0, np.arange(n), np.zeros(n, np.int8), np.full(3, SIDE))
    folder = tmp_path_factory.mktemp("truth")
    table.to_parquet(folder / "trajectories.parquet")
    (folder / "metadata.json").write_text(json.dumps({"lx": SIDE, "ly": SIDE, "lz": SIDE}))
    return folder


def test_dpd_baseline_writes_a_rollout_from_the_held_back_start(truth, tmp_path):
    settings = {"train_frames": 8, "rollout_factor": 5, "dpd": {"budget": 4, "starts": 4}}
    status = run_baseline("dpd", truth / "trajectories.parquet", truth / "metadata.json", tmp_path / "dpd", settings)
    split = horizon(60, 8, 5)
    assert status["status"] == "completed" and status["frames_written"] == split.rollout_frames + 1
    rollout = pd.read_parquet(tmp_path / "dpd" / "rollout.parquet")
    assert sorted(rollout["frame"].unique()) == list(range(split.start, split.end + 1))
    source = pd.read_parquet(truth / "trajectories.parquet")
    first = rollout[rollout["frame"] == split.start].sort_values("particle")
    start = source[source["frame"] == split.start].sort_values("particle")
    np.testing.assert_array_equal(first[["xu", "yu", "zu", "vx", "vy", "vz"]].to_numpy(),
                                  start[["xu", "yu", "zu", "vx", "vy", "vz"]].to_numpy())
    np.testing.assert_allclose(rollout["x"], np.mod(rollout["xu"], SIDE))
    momentum = rollout.groupby("frame")[["vx", "vy", "vz"]].sum().to_numpy()
    np.testing.assert_allclose(momentum - momentum[0], 0.0, atol=1e-9)  # DPD conserves it
    fit = json.loads((tmp_path / "dpd" / "fit.json").read_text())
    # calibrated on the training block only: its temperature is the block's equipartition value
    from mpd.baselines.dpd import kinetic_temperature
    from mpd.baselines.stage import trajectory_arrays

    _, block_v, _ = trajectory_arrays(source, np.arange(split.train_frames), 3)
    assert fit["params"]["kT"] == pytest.approx(kinetic_temperature(block_v), rel=1e-9)


def test_gns_baseline_trains_saves_and_rolls_out(truth, tmp_path):
    settings = {"train_frames": 8, "rollout_factor": 1, "gns_sde": {"steps": 5, "latent": 16, "message_steps": 2}}
    status = run_baseline("gns_sde", truth / "trajectories.parquet", truth / "metadata.json", tmp_path / "g", settings)
    assert status["status"] in ("completed", "diverged") and (tmp_path / "g" / "model.pt").exists()
    rollout = pd.read_parquet(tmp_path / "g" / "rollout.parquet")
    assert rollout["frame"].nunique() == status["frames_written"] and np.isfinite(rollout["xu"]).all()


def test_too_short_a_truth_names_the_keys(truth, tmp_path):
    with pytest.raises(HorizonError, match="comparison.rollout_factor"):
        run_baseline("dpd", truth / "trajectories.parquet", truth / "metadata.json", tmp_path / "x",
                     {"train_frames": 8, "rollout_factor": 25})
    assert not (tmp_path / "x").exists()
    with pytest.raises(BaselineInputError, match="unknown baseline"):
        run_baseline("lstm", truth / "trajectories.parquet", truth / "metadata.json", tmp_path / "x", {})


def test_comparison_of_rollouts_with_the_held_back_truth(truth, tmp_path):
    from analysis.table1 import compare_rollouts

    settings = {"train_frames": 8, "rollout_factor": 5, "dpd": {"budget": 4, "starts": 4}, "rdf_bins": 20}
    run_baseline("dpd", truth / "trajectories.parquet", truth / "metadata.json", tmp_path / "dpd", settings)
    # a "model" that reproduces the held-back truth exactly has zero error on every metric
    split = horizon(60, 8, 5)
    source = pd.read_parquet(truth / "trajectories.parquet")
    exact = source[(source["frame"] >= split.start) & (source["frame"] <= split.end)]
    exact.to_parquet(tmp_path / "exact.parquet")
    (tmp_path / "exact.json").write_text(json.dumps({"status": "completed"}))
    rollouts = {"dpd": (tmp_path / "dpd" / "rollout.parquet", tmp_path / "dpd" / "rollout_status.json"),
                "gns": (tmp_path / "exact.parquet", tmp_path / "exact.json")}
    doc = compare_rollouts("tiny", "SP11", truth / "trajectories.parquet", truth / "metadata.json", rollouts,
                           tmp_path / "analysis" / "comparison", settings)
    assert doc["models"]["gns"]["errors"] == {"rdf": 0.0, "msd": 0.0, "vacf": 0.0}
    dpd = doc["models"]["dpd"]["errors"]
    assert all(value is not None and 0 < value < 5 for value in dpd.values()), dpd
    assert doc["settings"]["start_frame"] == split.start and doc["paper"]["dpd"]["rdf"] == 0.23
    on_disk = json.loads((tmp_path / "analysis" / "comparison.json").read_text())
    assert on_disk["models"]["dpd"]["errors"] == pytest.approx(dpd)
    assert (tmp_path / "analysis" / "comparison" / "comparison.png").stat().st_size > 0
    tables = tmp_path / "analysis" / "comparison" / "tables"
    assert {p.name for p in tables.iterdir()} >= {"truth_rdf.csv", "dpd_msd.csv"}
