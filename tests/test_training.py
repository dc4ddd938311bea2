"""Training: exact resume from a checkpoint, learning on the digital twin, the stage's outputs, devices."""
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_training_support import H_UM, RATE, SMALL_NETWORK, lattice_trajectories

import mpd.training
from mpd.geometry.stage import compute_geometry
from mpd.model import MetriplecticModel, State, euler_maruyama_step
from mpd.pairs import snapshot_pairs
from mpd.provenance import source_fingerprint
from mpd.rollout import resolve_device
from mpd.stage import rollout_model, train_model
from mpd.training import LOG_COLUMNS, ModelFileError, load_checkpoint, load_model, train

WINDOW = (4.0, 36.0, 3.0, 28.0)  # µm


def small_config(epochs=3, dtype="float64", **training):
    return {
        "network": SMALL_NETWORK,
        "training": {"epochs": epochs, "batch_size": 2, "dtype": dtype, "device": "cpu", "progress": False,
                     "num_threads": 1, "selection_steps": 2, "selection_starts": 1, **training},
        "rollout": {"progress": False, "device": "cpu"},
    }


@pytest.fixture(scope="module")
def lattice_dataset(tmp_path_factory):
    """A drifting, random-walking lattice seen through a window: 16 frames, ~100 particles per frame."""
    root = tmp_path_factory.mktemp("lattice")
    traj = lattice_trajectories(n_frames=16, drift_um_s=(4.0, 1.0), window=WINDOW, seed=5)
    return traj, compute_geometry(traj, root / "geometry", h_um=H_UM, frame_rate_hz=RATE, window=WINDOW)


def test_resumed_training_equals_an_uninterrupted_run_bitwise(lattice_dataset, tmp_path):
    _, geometry = lattice_dataset
    config = small_config(epochs=3, selection_metric="rollout")  # the rollout selection's streams resume too
    straight = train(geometry, tmp_path / "straight", config)
    assert straight.selection_basis == "val_rollout_metric"
    interrupted = train(geometry, tmp_path / "resumed", config, stop_after_epoch=2)
    assert [row["epoch"] for row in interrupted.log] == [0, 1, 2]
    checkpoint = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    assert checkpoint["epoch"] == 2
    assert set(checkpoint["rng"]) == {"torch", "cuda", "numpy", "python", "loader"}
    assert {"model", "optimizer", "scheduler", "best_model", "best_metric", "log"} <= set(checkpoint)
    # perturb every global random stream: a correct resume restores them all from the checkpoint
    torch.manual_seed(123)
    np.random.seed(123)
    resumed = train(geometry, tmp_path / "resumed", config)

    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 3
    for key in ("model", "best_model"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), (key, name)
    for key in ("train_loss", "val_loss", "val_rollout_metric", "lr"):
        np.testing.assert_array_equal([r[key] for r in straight.log], [r[key] for r in resumed.log], err_msg=key)
    assert torch.equal(a["rng"]["loader"], b["rng"]["loader"])
    assert straight.best_epoch == resumed.best_epoch
    assert not list((tmp_path / "resumed").glob("*.tmp"))  # written by rename, no leftovers


def test_a_checkpoint_of_another_configuration_is_set_aside_and_not_resumed(lattice_dataset, tmp_path, caplog):
    _, geometry = lattice_dataset
    train(geometry, tmp_path, small_config(epochs=2), stop_after_epoch=1)  # an interrupted run
    with caplog.at_level(logging.WARNING, logger="mpd.training"):
        other = train(geometry, tmp_path, small_config(epochs=2, learning_rate=1e-3))
    assert [row["epoch"] for row in other.log] == [0, 1, 2]  # started afresh (epoch 0 is the initial model)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["config"]["training"]["learning_rate"] == 1e-3
    assert load_checkpoint(tmp_path / "checkpoint.pt.foreign")["config"]["training"]["learning_rate"] != 1e-3
    assert "another training_hash" in caplog.text and "checkpoint.pt.foreign" in caplog.text


def test_a_code_change_starts_training_afresh(lattice_dataset, tmp_path, monkeypatch, caplog):
    _, geometry = lattice_dataset
    train(geometry, tmp_path, small_config(epochs=2), stop_after_epoch=1)
    monkeypatch.setattr(mpd.training, "source_fingerprint", lambda *modules: "edited-code-0000")
    with caplog.at_level(logging.WARNING, logger="mpd.training"):
        again = train(geometry, tmp_path, small_config(epochs=2))
    assert [row["epoch"] for row in again.log] == [0, 1, 2]
    assert "another code" in caplog.text
    assert load_checkpoint(tmp_path / "checkpoint.pt")["code"] == "edited-code-0000"


def test_source_fingerprint_follows_the_files(tmp_path, monkeypatch):
    package = tmp_path / "fingerprinted"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "physics.py").write_text("G = 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = source_fingerprint("fingerprinted")
    assert source_fingerprint("fingerprinted") == before
    (package / "physics.py").write_text("G = 2.0\n")
    assert source_fingerprint("fingerprinted") != before


@pytest.mark.parametrize("damage", ["garbage", "empty", "truncated"])
def test_a_corrupt_checkpoint_is_set_aside_and_training_starts_afresh(lattice_dataset, tmp_path, caplog, damage):
    _, geometry = lattice_dataset
    train(geometry, tmp_path, small_config(epochs=2), stop_after_epoch=1)
    path = tmp_path / "checkpoint.pt"
    data = path.read_bytes()
    path.write_bytes({"garbage": b"not a checkpoint" * 10, "empty": b"", "truncated": data[: len(data) // 2]}[damage])
    with caplog.at_level(logging.WARNING, logger="mpd.training"):
        result = train(geometry, tmp_path, small_config(epochs=2))
    assert [row["epoch"] for row in result.log] == [0, 1, 2]
    assert (tmp_path / "checkpoint.pt.corrupt").is_file() and "cannot be read" in caplog.text
    assert load_checkpoint(path)["epoch"] == 2


def test_stage_writes_the_model_its_scripted_step_the_log_and_resumes_instantly(lattice_dataset, tmp_path):
    traj, geometry = lattice_dataset
    config = small_config(epochs=2, dtype="float32")
    out = train_model(geometry, tmp_path / "model", config)
    names = {p.name for p in out.iterdir()}
    assert {"model.pt", "rollout_step.pt", "training_log.csv", "checkpoint.pt"} <= names
    assert not [n for n in names if n.endswith(".tmp")]

    log = pd.read_csv(out / "training_log.csv")
    assert list(log.columns) == LOG_COLUMNS and log["epoch"].tolist() == [0, 1, 2]
    assert np.isfinite(log.loc[1:, ["train_loss", "val_loss", "lr", "wall_s"]].to_numpy()).all()

    model, meta = load_model(out / "model.pt")
    assert meta["h_um"] == H_UM and meta["dt_s"] == pytest.approx(1 / RATE)
    assert meta["scales"] == {"length_um": H_UM, "time_s": pytest.approx(1 / RATE)}
    assert len(meta["config_hash"]) == 16 and meta["config"]["training"]["epochs"] == 2
    assert meta["versions"]["torch"] and meta["dtype"] == "float32" and meta["device"] == "cpu"
    # by the validation likelihood: this validation split is shorter than a cage window (else the likelihood
    # plus the weighted cage objective); the training split has cage windows and trains with them
    assert meta["best_epoch"] in (1, 2) and meta["selection_basis"] == "val_loss"
    assert np.isfinite(log.loc[1:, "train_cage"]).all() and log["val_cage"].isna().all()
    assert next(model.parameters()).dtype == torch.float32

    step = torch.jit.load(str(out / "rollout_step.pt"))
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.uniform(0, 4, size=(25, 2)), dtype=torch.float32)
    state = State(x, 0.01 * torch.randn(25, 2), torch.zeros(25))
    pairs = snapshot_pairs(x, 1.0, x_ref=x, dtype=torch.float32)
    interior = torch.ones(25, dtype=torch.bool)
    with torch.enable_grad():
        scripted = step(state, pairs, 1.0, interior, torch.Generator().manual_seed(1), True)
    eager = euler_maruyama_step(model, state, pairs, 1.0, interior, torch.Generator().manual_seed(1))
    for s, e in zip(scripted, eager):
        torch.testing.assert_close(s, e)

    # running the stage again (a deleted model, --forcerun) trains again from scratch, not from the
    # finished checkpoint, and with the same seed to the same model
    before = pd.read_csv(out / "training_log.csv")
    train_model(geometry, out, config)
    after = pd.read_csv(out / "training_log.csv")
    assert after["epoch"].tolist() == [0, 1, 2] and not (out / "checkpoint.pt.foreign").exists()
    pd.testing.assert_frame_equal(after.drop(columns="wall_s"), before.drop(columns="wall_s"))

    rolled = rollout_model(out / "model.pt", traj, geometry, out, config)
    status = json.loads((rolled / "rollout_status.json").read_text())
    assert status["start_frame"] == 14  # the test split's first frame
    assert pd.read_parquet(rolled / "rollout.parquet")["frame"].min() == 14


def test_periodic_data_train_and_roll_out_with_every_particle_predicted(tmp_path):
    """Periodic box: bonds use the reference frame's box; the rollout predicts all and wraps x, y."""
    from test_training_support import lattice_box

    box = lattice_box()
    traj = lattice_trajectories(n_frames=16, box=box, seed=6)
    geometry = compute_geometry(traj, tmp_path / "geometry", h_um=H_UM, frame_rate_hz=RATE, box=box)
    config = small_config(epochs=1, selection_starts=1)
    out = train_model(geometry, tmp_path / "model", config)
    log = pd.read_csv(out / "training_log.csv")
    assert np.isfinite(log.loc[1, ["train_loss", "val_loss"]].astype(float)).all()
    rollout_model(out / "model.pt", traj, geometry, out, {**config, "rollout": {
        "start_frame": 0, "n_frames": 3, "progress": False, "device": "cpu"}})
    table = pd.read_parquet(out / "rollout.parquet")
    assert {"xu", "yu"} <= set(table.columns) and table["predicted"].all()
    assert table.groupby("frame").size().eq(traj["particle"].nunique()).all()
    inside = table["x"].between(0, box.lx) & table["y"].between(0, box.ly)
    assert inside.all()


@pytest.fixture(scope="module")
def twin_dataset(tmp_path_factory):
    """A small sheared digital twin (Brownian dynamics, not the model's form), seen through a window."""
    from twin.params import ShearParams, SimulationParams
    from twin.simulate import simulate

    root = tmp_path_factory.mktemp("twin")
    params = SimulationParams(seed=3, n_particles=200, equilibration_s=0.5,
                              shear=ShearParams(amplitude=0.04, period_s=1.0, cycles=1.5))
    simulate(params, root / "truth")
    truth = pd.read_parquet(root / "truth" / "trajectories.parquet")
    window = (8.0, 57.0, 8.0, 57.0)  # µm, inside the 65 µm box: no periodic wrapping within view
    seen = truth[truth.x.between(window[0], window[1]) & truth.y.between(window[2], window[3])]
    return compute_geometry(seen, root / "geometry", h_um=7.0, frame_rate_hz=params.frame_rate_hz, window=window)


def test_a_short_training_on_the_twin_lowers_the_validation_loss(twin_dataset, tmp_path):
    config = {"training": {"epochs": 4, "dtype": "float32", "device": "cpu", "progress": False, "num_threads": 1}}
    result = train(twin_dataset, tmp_path, config)
    log = pd.DataFrame(result.log)
    initial, final = log["val_loss"].iloc[0], log["val_loss"].iloc[-1]
    assert np.isfinite(log["val_loss"]).all()
    assert final < initial - 0.1, log
    assert log["train_loss"].iloc[-1] < log["train_loss"].iloc[1]
    best = load_checkpoint(tmp_path / "checkpoint.pt")["best_model"]
    for name, value in result.model.state_dict().items():
        assert torch.equal(value.cpu(), best[name])


def test_device_is_chosen_automatically_and_an_unavailable_cuda_is_refused():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            resolve_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_training_on_cuda_matches_cpu_loosely_and_loads_on_cpu(lattice_dataset, tmp_path):
    _, geometry = lattice_dataset
    cpu = train(geometry, tmp_path / "cpu", small_config(epochs=1, dtype="float64"), device="cpu")
    gpu = train(geometry, tmp_path / "gpu", small_config(epochs=1, dtype="float64"), device="cuda")
    assert next(gpu.model.parameters()).is_cuda
    np.testing.assert_allclose(cpu.log[-1]["train_loss"], gpu.log[-1]["train_loss"], rtol=1e-6)
    out = train_model(geometry, tmp_path / "stage", small_config(epochs=1, dtype="float32"), device="cuda")
    model, meta = load_model(Path(out) / "model.pt", device="cpu")
    assert meta["device"].startswith("cuda") and not next(model.parameters()).is_cuda


def test_a_model_file_of_another_version_is_refused_by_name(tmp_path):
    """A model.pt from before the bath and species cannot be loaded: one message naming the file and the fix."""
    model = MetriplecticModel(h=1.0, kernel_hidden=(8,), energy_hidden=(8, 8), amplitude_hidden=(8,),
                              teacher_hidden=(8,))
    path = tmp_path / "model.pt"
    torch.save({"format": "mpd-model", "version": 1, "model_kwargs": {"h": 1.0}, "state_dict": model.state_dict(),
                "metadata": {}}, path)
    with pytest.raises(ModelFileError, match=r"model\.pt is an mpd-model file of version 1.*forcerun train_model"):
        load_model(path)


class NotAModel:
    pass


@pytest.mark.parametrize("damage", ["garbage", "empty", "truncated", "pickle", "missing"])
def test_a_damaged_model_file_gives_one_message_naming_it_and_no_unsafe_advice(lattice_dataset, tmp_path, damage):
    _, geometry = lattice_dataset
    out = train_model(geometry, tmp_path / "model", small_config(epochs=1, dtype="float32"))
    path = out / "model.pt"
    data = path.read_bytes()
    if damage == "pickle":  # a pickle of an arbitrary object: torch's refusal recommends weights_only=False
        torch.save({"format": "mpd-model", "object": NotAModel()}, path)
    elif damage == "missing":
        path.unlink()
    else:
        path.write_bytes({"garbage": b"\x00not a model" * 9, "empty": b"", "truncated": data[: len(data) // 3]}[damage])
    with pytest.raises(ModelFileError) as raised:
        load_model(path)
    message = str(raised.value)
    assert str(path) in message and "forcerun train_model" in message
    assert "weights_only" not in message and "\n" not in message
    with pytest.raises(ModelFileError):  # the rollout stage reads it the same way
        rollout_model(path, lattice_dataset[0], geometry, tmp_path / "rollout", small_config(epochs=1))


def test_a_frame_without_features_is_skipped_by_geometry_and_training(tmp_path):
    """A blank frame (tracking found nothing there, qc.json warns): no snapshot pair crosses it, and
    training runs on the others."""
    from mpd.geometry.loader import SnapshotPairDataset

    traj = lattice_trajectories(n_frames=16, drift_um_s=(4.0, 1.0), window=WINDOW, seed=5)
    traj = traj[traj["frame"] != 6]
    geometry = compute_geometry(traj, tmp_path / "geometry", h_um=H_UM, frame_rate_hz=RATE, window=WINDOW)
    train_set = SnapshotPairDataset(geometry, "train")
    frames = [int(train_set[k]["frame"]) for k in range(len(train_set))]
    assert 5 not in frames and 6 not in frames and {4, 7} <= set(frames)
    result = train(geometry, tmp_path / "model", small_config(epochs=1))
    assert np.isfinite(result.log[-1]["train_loss"]) and np.isfinite(result.log[-1]["val_loss"])


def test_recomputing_activations_trains_the_same_model(lattice_dataset, tmp_path, monkeypatch):
    """recompute_activations changes memory and time, never the result (float64: to round-off)."""
    _, geometry = lattice_dataset
    from mpd.model import dynamics

    calls = []
    original = dynamics.MetriplecticModel._eager_pair_chunk
    monkeypatch.setattr(dynamics.MetriplecticModel, "_eager_pair_chunk",
                        lambda self, checkpoint, *a: (calls.append(1) if checkpoint else None,
                                                      original(self, checkpoint, *a))[1])
    states = {}
    for mode in ("never", "always"):
        calls.clear()
        result = train(geometry, tmp_path / mode, small_config(epochs=2, recompute_activations=mode,
                                                               calibrate_temperature=False))
        states[mode] = ({k: v.detach().clone() for k, v in result.model.state_dict().items()}, len(calls))
    assert states["never"][1] == 0 and states["always"][1] > 0
    for key, value in states["never"][0].items():
        assert torch.allclose(value.double(), states["always"][0][key].double(), rtol=1e-9, atol=1e-12), key
