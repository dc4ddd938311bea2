"""3D periodic fluids (star-polymer benchmark): box, pairs, dataset, training and rollout, all in seconds.

The fluid: 64 soft spheres in a cubic periodic box, integrated with velocity
Verlet under a pair force (momentum-conserving) from a jittered lattice with
Maxwell velocities; positions wrapped and unwrapped and exact velocities, as
LAMMPS writes them.
"""
import itertools
import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch

from mpd.geometry.dataset import ROW_COLUMNS_3D
from mpd.geometry.domain import Box, OrthoBox, periodic_box
from mpd.geometry.loader import SnapshotPairDataset, collate_snapshots
from mpd.geometry.neighbours import radius_pairs
from mpd.geometry.particles import ParticleDataError, particle_dataset
from mpd.pairs import VerletList, snapshot_pairs
from mpd.rollout import periodic_fluid_rollout, rollout_fluid
from mpd.stage import train_model
from mpd.training import load_model

L = 4.0        # box edge (simulation length unit)
H = 1.5        # the model's cut-off, < L / 2
N_SIDE = 4     # 4^3 = 64 particles
SMALL_NETWORK = {"kernel_hidden": [8], "energy_hidden": [8], "amplitude_hidden": [8], "teacher_hidden": [8],
                 "solid": True, "bath": False}


def soft_sphere_fluid(n_frames=24, steps_per_frame=5, dt=0.01, seed=0, lengths=(L, L, L)):
    """Trajectory table of a momentum-conserving soft-sphere fluid: frame, t, particle, species, x.., xu.., v.."""
    rng = np.random.default_rng(seed)
    box = np.asarray(lengths, float)
    grid = np.array(list(itertools.product(range(N_SIDE), repeat=3)), float) + 0.5
    x = (grid + 0.1 * rng.normal(size=grid.shape)) * box / N_SIDE
    v = rng.normal(size=x.shape)
    v -= v.mean(0)  # zero total momentum

    def force(x):
        d = x[:, None, :] - x[None, :, :]
        d -= np.round(d / box) * box
        r = np.linalg.norm(d, axis=-1)
        np.fill_diagonal(r, np.inf)
        sigma = 1.1
        magnitude = np.where(r < sigma, 20.0 * (1 - r / sigma), 0.0)  # -dU/dr of 10 (1 - r/sigma)^2 * sigma
        return (magnitude / r)[..., None].__mul__(d).sum(1)

    f = force(x)
    rows = []
    for frame in range(n_frames):
        wrapped = x - np.floor(x / box) * box
        rows.append(pd.DataFrame({
            "frame": frame, "t": frame * steps_per_frame * dt, "particle": np.arange(len(x)), "species": 0,
            "x": wrapped[:, 0], "y": wrapped[:, 1], "z": wrapped[:, 2],
            "xu": x[:, 0], "yu": x[:, 1], "zu": x[:, 2], "vx": v[:, 0], "vy": v[:, 1], "vz": v[:, 2]}))
        for _ in range(steps_per_frame):
            v = v + 0.5 * dt * f
            x = x + dt * v
            f = force(x)
            v = v + 0.5 * dt * f
    return pd.DataFrame(pd.concat(rows, ignore_index=True))


@pytest.fixture(scope="module")
def fluid():
    return soft_sphere_fluid()


@pytest.fixture(scope="module")
def fluid_dataset(fluid, tmp_path_factory):
    out = tmp_path_factory.mktemp("fluid") / "dataset"
    meta = particle_dataset(fluid, (L, L, L), out, length_scale=H, split_fractions=(0.6, 0.2, 0.2))
    return out, meta


# ---------------------------------------------------------------------------
# Box and pairs
# ---------------------------------------------------------------------------


def brute_force_pairs(x, h, lengths):
    """Every pair within h over the 27 images of the partner, with its shift."""
    found = set()
    offsets = np.array(list(itertools.product((-1, 0, 1), repeat=3)), float) * np.asarray(lengths)
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            r = x[i] - x[j] + offsets
            close = np.linalg.norm(r, axis=1) < h
            assert close.sum() <= 1  # h < L/2: one image at most
            for k in np.flatnonzero(close):
                found.add((i, j, *np.round(offsets[k], 9)))
    return found


@pytest.mark.parametrize("lengths", [(4.0, 4.0, 4.0), (3.2, 4.5, 5.1)])
def test_3d_minimum_image_pairs_match_a_brute_force_search_over_the_27_images(lengths):
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, size=(90, 3)) * np.asarray(lengths)
    box = OrthoBox(lengths)
    found = radius_pairs(x, 1.5, box)
    got = {(int(i), int(j), *np.round(s, 9)) for i, j, s in zip(found.i, found.j, found.shift)}
    assert got == brute_force_pairs(x, 1.5, lengths)
    r = found.displacements(x)
    assert (np.linalg.norm(r, axis=1) < 1.5).all()
    # positions anywhere (unwrapped, torch): the same pairs and displacements, with exact lattice shifts
    far = x + rng.integers(-3, 4, size=x.shape) * np.asarray(lengths)
    again = radius_pairs(torch.as_tensor(far), 1.5, box)
    assert np.array_equal(again.i, found.i) and np.array_equal(again.j, found.j)
    assert np.allclose(again.displacements(far), r, atol=1e-12)
    assert np.array_equal(again.shift, box.lattice_round(again.shift))


def test_orthobox_wraps_into_the_cell_and_rejects_a_too_long_cutoff():
    box = OrthoBox((2.0, 3.0, 4.0))
    x = np.array([[-0.5, 3.0, 9.0], [2.0, -1e-18, 3.999999999999999]])
    w = box.wrap(x)
    assert ((w >= 0) & (w < box.length_array)).all()
    assert np.allclose(box.minimum_image(w - x), 0.0)
    assert box.dim == 3 and box.xy == 0.0 and box.volume == 24.0 and box.max_cutoff() == 1.0
    with pytest.raises(ValueError, match="cut-off"):
        radius_pairs(x, 1.0, box)
    with pytest.raises(ValueError, match="shape"):
        radius_pairs(x[:, :2], 0.5, box)
    assert isinstance(periodic_box([1.0, 2.0, 0.5], 2), Box)
    assert periodic_box(torch.tensor([1.0, 2.0, 3.0]), 3) == OrthoBox((1.0, 2.0, 3.0))


def test_verlet_list_in_a_3d_box_gives_the_pairs_of_a_fresh_search():
    rng = np.random.default_rng(2)
    box = OrthoBox((5.0, 4.0, 4.5))
    x = torch.as_tensor(rng.uniform(0, 4, size=(120, 3)), dtype=torch.float64)
    verlet = VerletList(1.0, 0.3)
    for _ in range(25):
        x = x + 0.05 * torch.as_tensor(rng.normal(size=x.shape))  # unwrapped: crosses the edges freely
        i, j, shift, image = verlet.update(x, None, box)
        fresh = radius_pairs(x.numpy(), 1.0, box)
        assert np.array_equal(i.numpy(), fresh.i) and np.array_equal(j.numpy(), fresh.j)
        assert np.allclose(shift.numpy(), fresh.shift) and not image.any()
    assert 1 < verlet.n_builds < 25


# ---------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------


def test_particle_dataset_schema_metadata_and_3d_loader(fluid, fluid_dataset):
    out, meta = fluid_dataset
    assert meta["dimension"] == 3 and meta["version"] == 2 and meta["periodic"] is True
    assert meta["has_reference"] is False and meta["kind"] == "periodic_fluid"
    assert meta["time_scale_s"] == pytest.approx(0.05) and meta["length_scale_um"] == H
    assert json.loads((out / "metadata.json").read_text())["dimension"] == 3
    train = pd.read_feather(out / "train.arrow")
    assert list(train.columns) == list(ROW_COLUMNS_3D)
    assert train["interior"].all() and not train["has_ref"].any() and train["z_ref"].isna().all()
    index = pd.read_parquet(out / "pairs.parquet")
    assert {"lx", "ly", "lz", "lx1", "ly1", "lz1"} <= set(index.columns) and "xy" not in index.columns
    assert np.allclose(index[["lx", "ly", "lz"]].to_numpy(), L)
    assert np.allclose(index.filter(like="flow_").to_numpy(), 0.0)

    data = SnapshotPairDataset(out, "train", nondimensional=False, dtype=torch.float64)
    item = data[0]
    for key in ("x0", "v0", "x1", "v1", "x_ref", "flow"):
        assert item[key].shape == (64, 3), key
    assert item["box"].tolist() == [L, L, L]
    assert ((item["x0"] >= 0) & (item["x0"] < L)).all()
    frame = int(item["frame"])
    truth = fluid[fluid["frame"] == frame].sort_values("particle")
    after = fluid[fluid["frame"] == frame + 1].sort_values("particle")
    assert np.allclose(item["x0"].numpy(), truth[["x", "y", "z"]].to_numpy())
    assert np.allclose(item["v1"].numpy(), after[["vx", "vy", "vz"]].to_numpy())  # the exact velocities
    moved = after[["xu", "yu", "zu"]].to_numpy() - truth[["xu", "yu", "zu"]].to_numpy()
    assert np.allclose((item["x1"] - item["x0"]).numpy(), moved)  # x1 - x0: the true motion
    nondim = SnapshotPairDataset(out, "train")[0]
    assert nondim["x0"].dtype == torch.float32
    assert torch.allclose(nondim["v0"].double(), item["v0"] * meta["time_scale_s"] / H, atol=1e-6)
    batch = collate_snapshots([nondim, SnapshotPairDataset(out, "train")[1]])
    pairs = snapshot_pairs(batch["x0"][:64], 1.0, periodic_box(batch["box"][0], 3))
    assert pairs.shift.shape[1] == 3 and len(pairs.bond_i) == 0 and len(pairs.i) > 64


def test_particle_dataset_rejects_inconsistent_tables(fluid, tmp_path):
    with pytest.raises(ParticleDataError, match="modulo the box"):
        particle_dataset(fluid, (L, L, 1.1 * L), tmp_path / "a", length_scale=H)
    with pytest.raises(ParticleDataError, match="half the shortest"):
        particle_dataset(fluid, (L, L, L), tmp_path / "b", length_scale=2.5)
    with pytest.raises(ParticleDataError, match="frame interval"):
        particle_dataset(fluid, (L, L, L), tmp_path / "c", length_scale=H, time_scale=0.01)
    with pytest.raises(ParticleDataError, match="lacks"):
        particle_dataset(fluid.drop(columns="zu"), (L, L, L), tmp_path / "d", length_scale=H)


# ---------------------------------------------------------------------------
# Training and rollout
# ---------------------------------------------------------------------------


def small_config(epochs=2, dtype="float64", **training):
    return {
        "network": SMALL_NETWORK,
        "training": {"epochs": epochs, "batch_size": 2, "dtype": dtype, "device": "cpu", "progress": False,
                     "num_threads": 1, "max_val_pairs": 2, "selection_metric": "rollout", **training},
        "rollout": {"progress": False, "device": "cpu"},
    }


@pytest.fixture(scope="module")
def trained(fluid_dataset, tmp_path_factory):
    out, _ = fluid_dataset
    model_dir = tmp_path_factory.mktemp("model")
    with _capture_logs() as messages:
        train_model(out, model_dir, small_config())
    return model_dir, messages


class _capture_logs:
    """Log records of mpd (training, calibration) at INFO, without pytest's caplog (module-scoped fixture)."""

    def __enter__(self):
        self.messages = []
        self.handler = logging.Handler(logging.INFO)
        self.handler.emit = lambda record: self.messages.append(record.getMessage())
        self.logger = logging.getLogger("mpd")
        self.level = self.logger.level
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self.handler)
        return self.messages

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)


def test_training_on_the_3d_fluid_builds_a_3d_fluid_model_with_finite_losses(trained):
    model_dir, messages = trained
    model, meta = load_model(model_dir / "model.pt", dtype="float64")
    assert model.dim == 3 and model.solid is False and model.has_bath is False
    log_table = pd.read_csv(model_dir / "training_log.csv")
    assert len(log_table) == 3
    assert np.isfinite(log_table["train_loss"].iloc[1:]).all() and np.isfinite(log_table["val_loss"]).all()
    assert log_table["val_rollout_metric"].isna().all() and log_table["val_cage"].isna().all()
    assert meta["selection_basis"] == "val_loss"
    calibration = meta["temperature_calibration"]
    assert calibration["calibrated"] is True and calibration["method"].startswith("kinetic energy of settled")
    assert 0.5 <= calibration["scale"] <= 2.0 and len(calibration["iterations"]) >= 1
    transport = meta["transport_calibration"]
    assert transport["calibrated"] is True and 0.25 <= transport["mobility_scale"] <= 4.0
    assert float(model.amplitudes.mobility_scale) == pytest.approx(transport["mobility_scale"])
    # the calibrated k_B is one whose settled rollouts were measured
    assert any(h["ratio"] == pytest.approx(calibration["ratio"], rel=1e-3) for h in calibration["iterations"])
    text = " | ".join(messages)
    assert "deviatoric (strain) energy off" in text and "cage objective off" in text
    assert "selection by rollouts off" in text and "temperature calibrated: k_B x" in text
    assert "mobility calibrated: M x" in text
    assert "k_B by equipartition" in text
    assert (model_dir / "rollout_step.pt").is_file()


def test_a_trained_fluid_keeps_the_datas_kinetic_temperature(fluid, fluid_dataset, trained):
    """k_B follows equipartition during training: the model's temperatures carry the data's kinetic energy."""
    import torch

    from mpd.geometry.loader import SnapshotPairDataset, collate_snapshots
    from mpd.training import batch_pairs, dataset_frames, equipartition_k_B

    model_dir, _ = trained
    model, _ = load_model(model_dir / "model.pt", dtype="float64")
    data = SnapshotPairDataset(fluid_dataset[0], "train")
    frames = dataset_frames(data)
    batch = collate_snapshots([data[k] for k in range(len(data))])
    batch = {k: v.to(torch.float64) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}
    pairs_t, _ = batch_pairs(batch, frames, torch.float64, "cpu")
    # the trained k_B (before the rollout calibration) is the last batch's equipartition value: close to the
    # whole split's
    trained = load_model(model_dir / "model.pt", dtype="float64")[1]["temperature_calibration"]["k_B_trained"]
    model.log_k_B.assign(trained)
    assert trained == pytest.approx(equipartition_k_B(model, batch, pairs_t), rel=0.25)


def test_rollout_in_the_3d_box_wraps_right_and_conserves_momentum_with_noise(fluid, trained, tmp_path):
    model_dir, _ = trained
    start = fluid[fluid["frame"] == 3].sort_values("particle")
    x0 = start[["xu", "yu", "zu"]].to_numpy() + np.array([L, -2 * L, 0.0])  # unwrapped, anywhere
    v0 = start[["vx", "vy", "vz"]].to_numpy()
    result = rollout_fluid(model_dir / "model.pt", x0, v0, (L, L, L), 4, seed=3, noise=True, start_frame=3,
                           t0=0.15, out=tmp_path)
    table = result.frames
    assert result.status["status"] == "completed"
    assert list(table.columns) == [*fluid.columns, "S"]  # the simulation's columns, plus the model's entropy
    assert len(table) == 5 * 64 and sorted(table["frame"].unique()) == [3, 4, 5, 6, 7]
    assert np.allclose(table.groupby("frame")["t"].first().to_numpy(), 0.15 + 0.05 * np.arange(5))
    values = table[["x", "y", "z", "xu", "yu", "zu", "vx", "vy", "vz", "S"]].to_numpy()
    assert np.isfinite(values).all()
    wrapped, unwrapped = values[:, :3], values[:, 3:6]
    assert ((wrapped >= 0) & (wrapped < L)).all()
    assert np.allclose(wrapped, np.mod(unwrapped, L), atol=1e-9)  # x == xu mod L
    first = table[table["frame"] == 3]
    assert np.allclose(first[["xu", "yu", "zu"]].to_numpy(), x0) and np.allclose(first[["vx", "vy", "vz"]], v0)
    momentum = result.conservation[["momentum_x", "momentum_y", "momentum_z"]].to_numpy()
    kinetic = result.conservation["kinetic_energy"].to_numpy()
    scale = np.sqrt(2 * kinetic.mean() * 64)  # |p| of one particle's worth of thermal motion x sqrt(N)
    assert np.abs(momentum - momentum[0]).max() < 1e-10 * scale  # to round-off, with noise on
    assert table.groupby("frame")[["vx"]].std().to_numpy().min() > 0  # the particles do move
    for name in ("rollout.parquet", "conservation.csv", "rollout_status.json"):
        assert (tmp_path / name).is_file()
    again = rollout_fluid(model_dir / "model.pt", x0, v0, (L, L, L), 4, seed=3, noise=True, start_frame=3, t0=0.15)
    pd.testing.assert_frame_equal(again.frames, table)  # seeded


def test_fluid_rollout_rejects_a_2d_state_and_a_box_below_the_cutoff(trained):
    model_dir, _ = trained
    model, _ = load_model(model_dir / "model.pt", dtype="float64")
    x = np.random.default_rng(0).uniform(0, 2, size=(10, 3))
    with pytest.raises(ValueError, match="shape"):
        periodic_fluid_rollout(model, x[:, :2], x[:, :2], (2.0, 2.0), 1)
    with pytest.raises(ValueError, match="half the shortest"):
        periodic_fluid_rollout(model, x, x, (2.0, 2.0, 2.0), 1)


def test_closed_box_defaults_turn_the_bath_off_and_train_longer_unless_set(fluid_dataset, tmp_path):
    """A closed periodic fluid: no bath, CLOSED_BOX_EPOCHS epochs (few steps per epoch); explicit keys win."""
    from mpd.stage import CLOSED_BOX_CALIBRATION, CLOSED_BOX_EPOCHS, closed_box_defaults

    out, _ = fluid_dataset
    section = closed_box_defaults({"training": {"batch_size": 2}}, out)
    assert section["network"]["bath"] is False
    assert section["training"] == {"batch_size": 2, "epochs": CLOSED_BOX_EPOCHS, **CLOSED_BOX_CALIBRATION}
    section = closed_box_defaults({"network": {"bath": True}, "training": {"epochs": 7}}, out.parent)
    assert section["network"]["bath"] is True and section["training"]["epochs"] == 7
    assert closed_box_defaults(None, tmp_path) == {}  # no dataset there: left to the training to report


def test_fluid_temperature_calibration_keeps_the_best_measured_k_B_and_the_mobility(fluid_dataset, trained):
    """The temperature pass alone (calibrate_mobility false) ends at the k_B of its best measured ratio.

    (Whether a too hot model is cooled is measured on the star polymers, docs/training.md: in 12 frames of
    this untrained 64-particle fluid the kinetic energy barely responds to k_B; the search itself is
    tested in tests/test_calibration.py.)
    """
    import torch

    from mpd.calibration import calibrate_closed_fluid
    from mpd.geometry.loader import SnapshotPairDataset
    from mpd.params import ModelConfig
    from mpd.training import dataset_frames

    model_dir, _ = trained
    model, _ = load_model(model_dir / "model.pt", dtype="float64")
    data = SnapshotPairDataset(fluid_dataset[0], "train")
    params = ModelConfig.from_config({"training": {"calibration_frames": 12, "calibration_settle": 4,
                                                   "calibrate_mobility": False}}).training
    model.log_k_B.assign(1.8 * float(model.k_B))
    mobility = float(model.amplitudes.mobility_scale)
    record, transport = calibrate_closed_fluid(model, data, dataset_frames(data), params, torch.float64, "cpu")
    ratios = [h["ratio"] for h in record["iterations"]]
    assert record["calibrated"] is True and len(ratios) >= 2 and all(r > 0 for r in ratios)
    assert abs(np.log(record["ratio"])) == pytest.approx(min(abs(np.log(r)) for r in ratios), rel=1e-6)
    assert float(model.k_B) == pytest.approx(record["k_B"]) and 0.5 <= record["scale"] <= 2.0
    assert transport is None and float(model.amplitudes.mobility_scale) == mobility  # not asked for: kept


def test_mobility_calibration_ends_at_its_best_measured_scale_and_records_its_search(fluid_dataset, trained):
    """Wiring of the transport pass: the model ends at the mobility scale whose settled rollouts came
    closest to the data's Green-Kubo integral, within the bounds, with the data's VACF to its memory time.

    (Its effect is measured where friction matters: SP11, Green-Kubo ratio 1.12 -> 1.00 and MSD error
    0.34 -> 0.011, docs/comparison.md; in this 64-particle fluid after two epochs the conservative
    motion dominates and the ratio barely responds. The search itself: tests/test_calibration.py.)
    """
    import torch

    from mpd.calibration import MOBILITY_BOUNDS, calibrate_closed_fluid
    from mpd.geometry.loader import SnapshotPairDataset
    from mpd.params import ModelConfig
    from mpd.training import dataset_frames

    model_dir, _ = trained
    model, meta = load_model(model_dir / "model.pt", dtype="float64")
    calibrated = float(model.amplitudes.mobility_scale)
    assert meta["transport_calibration"]["mobility_scale"] == pytest.approx(calibrated)
    model.amplitudes.mobility_scale.fill_(0.5 * calibrated)
    data = SnapshotPairDataset(fluid_dataset[0], "train")
    params = ModelConfig.from_config({"training": {"calibration_frames": 16, "calibration_settle": 4}}).training
    _, transport = calibrate_closed_fluid(model, data, dataset_frames(data), params, torch.float64, "cpu")
    measured = [h for h in transport["iterations"] if h["ratio"] is not None]
    best = min(measured, key=lambda h: abs(np.log(h["ratio"])))
    assert float(model.amplitudes.mobility_scale) == pytest.approx(best["mobility_scale"])
    assert transport["mobility_scale"] == pytest.approx(best["mobility_scale"])
    assert transport["mobility_scale_trained"] == pytest.approx(0.5 * calibrated)
    low, high = (0.5 * calibrated * f for f in MOBILITY_BOUNDS)
    assert all(low * (1 - 1e-9) <= h["mobility_scale"] <= high * (1 + 1e-9) for h in transport["iterations"])
    assert 1 <= transport["memory_lags"] <= (16 - 4) // 4 and transport["data_vacf"][0] == 1.0
    assert len(transport["data_vacf"]) == transport["memory_lags"] + 1


def test_closed_fluid_rollout_stays_on_its_energy_shell_with_noise(fluid, trained):
    """Euler-Maruyama's noise adds energy at second order; restore_energy takes it back out of S."""
    model_dir, _ = trained
    model, _ = load_model(model_dir / "model.pt", dtype="float64")
    start = fluid[fluid["frame"] == 3].sort_values("particle")
    x0, v0 = start[["xu", "yu", "zu"]].to_numpy() / H, start[["vx", "vy", "vz"]].to_numpy() * 0.05 / H
    kept = periodic_fluid_rollout(model, x0, v0, np.full(3, L / H), 20, seed=1)
    free = periodic_fluid_rollout(model, x0, v0, np.full(3, L / H), 20, seed=1, conserve_energy=False)
    assert kept.status["status"] == free.status["status"] == "completed" and kept.status["energy_short_steps"] == 0
    e_kept, e_free = kept.conservation["energy"].to_numpy(), free.conservation["energy"].to_numpy()
    assert np.abs(e_kept - e_kept[0]).max() < 1e-9 * abs(e_kept[0])
    assert np.abs(e_free - e_free[0]).max() > 1e3 * np.abs(e_kept - e_kept[0]).max()
    # only the entropies moved: positions and velocities of step one are the uncorrected step's
    one_kept, one_free = kept.frames[kept.frames["t"] == 1], free.frames[free.frames["t"] == 1]
    assert np.allclose(one_kept[["xu", "yu", "zu", "vx", "vy", "vz"]], one_free[["xu", "yu", "zu", "vx", "vy", "vz"]])
    momentum = kept.conservation[["momentum_x", "momentum_y", "momentum_z"]].to_numpy()
    assert np.abs(momentum - momentum[0]).max() < 1e-10 * np.abs(v0).sum()
    # float32: held to the dtype's resolution of the internal energy, far below the step's drift
    model32, _ = load_model(model_dir / "model.pt", dtype="float32")
    kept32 = periodic_fluid_rollout(model32, x0, v0, np.full(3, L / H), 20, seed=1, dtype=torch.float32)
    e32 = kept32.conservation["energy"].to_numpy()
    assert kept32.status["energy_short_steps"] == 0
    assert np.abs(e32 - e32[0]).max() < 1e-2 * np.abs(e_free - e_free[0]).max()
