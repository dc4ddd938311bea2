"""Rollouts: Verlet list exactness, the hand-over policy, outputs in the schema, conservation, divergence."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from test_training_support import H_UM, RATE, lattice_box, lattice_trajectories, quiet_model

from mpd.geometry.domain import Box
from mpd.geometry.kinematics import backward_velocities
from mpd.geometry.neighbours import radius_pairs
from mpd.geometry.stage import compute_geometry
from mpd.model import MetriplecticModel
from mpd.pairs import VerletList
from mpd.params import RolloutParams
from mpd.rollout import (
    ExteriorRule,
    RolloutResult,
    observed_from_table,
    rollout,
    rollout_statistics_error,
)
from mpd.stage import rollout_box, rollout_model
from mpd.training import load_model, save_model, save_scripted_step, set_positive_scalar

WINDOW = (4.0, 36.0, 3.0, 28.0)  # µm, inside the 14 x 12 lattice of spacing 3 µm
QUIET = RolloutParams(progress=False, dtype="float64", device="cpu")


def pair_set(i, j, shift):
    return {(int(a), int(b), round(float(s[0]), 9), round(float(s[1]), 9)) for a, b, s in zip(i, j, shift)}


@pytest.mark.parametrize("periodic", [False, True])
def test_verlet_list_gives_the_pairs_of_a_fresh_search_at_every_step(periodic):
    """Random walk with a changing tilt (periodic) or particles switching on and off (window)."""
    rng = np.random.default_rng(0)
    n, steps, skin = 400, 40, 0.3
    box0 = Box(14.0, 12.0, 0.0) if periodic else None
    x = torch.as_tensor(rng.uniform(0, 12, size=(n, 2)), dtype=torch.float64)
    present = torch.ones(n, dtype=torch.bool)
    verlet = VerletList(1.0, skin)
    for step in range(steps):
        x = x + 0.04 * torch.as_tensor(rng.normal(size=(n, 2)))
        box = Box(box0.lx, box0.ly, 0.02 * step) if periodic else None  # the cell shears as it goes
        if not periodic:
            present = torch.as_tensor(rng.random(n) > 0.1)
        i, j, shift, image = verlet.update(x, present, box)
        # the image index across the tilted edge reproduces the shift's y part
        expected_image = torch.round(shift[:, 1] / box.ly) if periodic else torch.zeros_like(image)
        assert torch.equal(image, expected_image)
        keep = present.numpy()
        idx = np.flatnonzero(keep)
        fresh = radius_pairs(x.numpy()[idx], 1.0, box)
        assert pair_set(i.numpy(), j.numpy(), shift.numpy()) == pair_set(idx[fresh.i], idx[fresh.j], fresh.shift)
        r = x[i] - x[j] + shift
        assert (torch.linalg.vector_norm(r, dim=-1) < 1.0).all()
    assert 1 < verlet.n_builds < steps  # the skin saves searches, and the list is rebuilt when needed


def test_verlet_list_rejects_a_reach_beyond_half_the_box():
    verlet = VerletList(1.0, 0.5)
    with pytest.raises(ValueError, match="min\\(lx, ly\\)/2"):
        verlet.update(torch.zeros((3, 2), dtype=torch.float64), None, Box(2.5, 10.0))


@pytest.fixture(scope="module")
def window_case(tmp_path_factory):
    """Drifting lattice seen through a window, its geometry output, and a quiet random model saved as model.pt."""
    root = tmp_path_factory.mktemp("window")
    traj = lattice_trajectories(n_frames=14, drift_um_s=(6.0, 2.0), window=WINDOW, seed=1)
    geometry = compute_geometry(traj, root / "geometry", h_um=H_UM, frame_rate_hz=RATE, window=WINDOW)
    model = quiet_model(mass=1e4, k_B=1e-4)
    meta = {"h_um": H_UM, "dt_s": 1 / RATE, "dtype": "float64"}
    save_model(model, _kwargs(), meta, root / "model.pt")
    return traj, geometry, root


def _kwargs():
    return {"h": 1.0, "kernel_hidden": [8], "energy_hidden": [8, 8], "amplitude_hidden": [8], "teacher_hidden": [8],
            "velocity_scale": 0.02}


def test_window_rollout_prescribes_the_band_and_hands_particles_over_as_they_cross_it(window_case):
    traj, geometry, root = window_case
    out = rollout_model(root / "model.pt", traj, geometry, root / "out",
                        RolloutParams(start_frame=2, n_frames=10, progress=False, device="cpu"))
    table = pd.read_parquet(out / "rollout.parquet")
    status = json.loads((out / "rollout_status.json").read_text())
    assert sorted(table["frame"].unique()) == list(range(2, 13))
    data = traj.set_index(["frame", "particle"])
    meta = json.loads((geometry / "metadata.json").read_text())["parameters"]
    rule = ExteriorRule.from_geometry(meta, H_UM)
    observables = pd.read_parquet(geometry / "observables.parquet")
    start = observables[observables["frame"] == 2]
    first = table[table["frame"] == 2]
    # at the start, the interior particles are predicted, the band and the rest prescribed
    assert set(first.loc[first["predicted"], "particle"]) == set(start.loc[start["interior"], "particle"])
    was_predicted = set()
    for f, rows in table.groupby("frame"):
        predicted, prescribed = rows[rows["predicted"]], rows[~rows["predicted"]]
        # no predicted particle is in the band at a frame boundary: it was handed back to the data
        assert not rule(predicted[["x", "y"]].to_numpy() / H_UM, predicted["particle"].to_numpy()).any()
        # every prescribed particle is observed there, at its observed position, in the band, except one the
        # model has just handed back (its observed position may still be interior: it returns next frame)
        index = pd.MultiIndex.from_arrays([prescribed["frame"], prescribed["particle"]])
        np.testing.assert_array_equal(prescribed[["x", "y"]].to_numpy(), data.loc[index, ["x", "y"]].to_numpy())
        in_band = rule(prescribed[["x", "y"]].to_numpy() / H_UM, prescribed["particle"].to_numpy())
        assert set(prescribed["particle"][~in_band]) <= was_predicted
        was_predicted = set(predicted["particle"])
    # the drift carried particles across the band: both kinds of hand-over happened, and each starts a segment
    assert status["handovers"] > 0 and table["segment"].max() >= 1
    entered = table[(table["segment"] == 1) & table["predicted"]]
    assert len(entered) > 0  # a particle the data brought into the interior is now the model's
    # their velocities are the kinematic ones the model saw: backward differences of the data (forward at a
    # particle's first frame)
    kinematic, _ = backward_velocities(traj["frame"], traj["particle"], traj[["x", "y"]].to_numpy(), RATE)
    kinematic = pd.DataFrame(kinematic, columns=["vx", "vy"], index=data.index)
    prescribed = table[~table["predicted"]]
    index = pd.MultiIndex.from_arrays([prescribed["frame"], prescribed["particle"]])
    has_difference = np.isfinite(kinematic.loc[index, "vx"].to_numpy())
    np.testing.assert_allclose(prescribed[["vx", "vy"]].to_numpy()[has_difference],
                               kinematic.loc[index].to_numpy()[has_difference], rtol=1e-9, atol=1e-9)
    # the first frame is the data itself, and the predicted particles moved
    np.testing.assert_array_equal(first[["x", "y"]].to_numpy(), data.loc[list(zip(first["frame"], first["particle"])),
                                                                             ["x", "y"]].to_numpy())
    moved = table[(table["frame"] == 12) & table["predicted"] & (table["segment"] == 0)]
    assert len(moved) and not np.allclose(
        moved[["x", "y"]].to_numpy(), data.loc[list(zip(moved["frame"], moved["particle"])), ["x", "y"]].to_numpy(),
        atol=1e-9)


def test_a_particle_the_tracker_renamed_is_not_doubled(window_case):
    """The tracker loses an interior particle for a frame and finds it again under a new id: the rollout keeps
    the model's copy and leaves the data's out (a doubled particle exploded earlier rollouts)."""
    traj, geometry, root = window_case
    observables = pd.read_parquet(geometry / "observables.parquet")
    victim = int(observables[(observables["frame"] == 2) & observables["interior"]]["particle"].iloc[0])
    renamed = traj.copy()
    later = (renamed["particle"] == victim) & (renamed["frame"] >= 5)
    renamed = renamed[~((renamed["particle"] == victim) & (renamed["frame"] == 4))]  # a gap at frame 4
    renamed.loc[later, "particle"] = renamed["particle"].max() + 1  # a new id from frame 5 on
    out = rollout_model(root / "model.pt", renamed, geometry, root / "renamed",
                        RolloutParams(start_frame=2, n_frames=8, progress=False, device="cpu"))
    table = pd.read_parquet(out / "rollout.parquet")
    status = json.loads((out / "rollout_status.json").read_text())
    new_id = int(renamed["particle"].max())
    assert status["status"] == "completed" and status["duplicates_left_out"] >= 1
    assert (table["particle"] == victim).sum() == 9  # predicted throughout, frames 2..10
    assert not ((table["particle"] == new_id) & (table["frame"] <= 10)).any()


def test_rollout_output_is_in_the_trajectory_schema_and_reproducible(window_case):
    traj, geometry, root = window_case
    params = RolloutParams(start_frame=0, n_frames=4, progress=False, device="cpu")
    out_a = rollout_model(root / "model.pt", traj, geometry, root / "a", params)
    out_b = rollout_model(root / "model.pt", traj, geometry, root / "b", params)
    table = pd.read_parquet(out_a / "rollout.parquet")
    assert list(table.columns) == ["frame", "t", "particle", "x", "y", "vx", "vy", "S", "predicted", "interior",
                                   "segment"]
    assert table["frame"].dtype == np.int64 and table["particle"].dtype == np.int64
    assert table["predicted"].dtype == bool and table["interior"].dtype == bool
    np.testing.assert_allclose(table["t"], table["frame"] / RATE)
    assert np.isfinite(table[["x", "y", "vx", "vy", "S"]].to_numpy()).all()
    assert not table.duplicated(["frame", "particle"]).any()
    pd.testing.assert_frame_equal(table, pd.read_parquet(out_b / "rollout.parquet"))  # same seed, same rollout
    conservation = pd.read_csv(out_a / "conservation.csv")
    assert list(conservation.columns) == ["step", "frame", "t", "n_particles", "n_predicted", "momentum_x",
                                          "momentum_y", "energy", "kinetic_energy", "entropy", "n_pairs", "rebuilds"]
    assert len(conservation) == 5
    np.testing.assert_array_equal(conservation["n_particles"], table.groupby("frame").size().to_numpy())
    status = json.loads((out_a / "rollout_status.json").read_text())
    assert status["status"] == "completed" and status["frames_written"] == 5


def test_momentum_is_conserved_to_round_off_in_a_periodic_run_with_noise():
    box = lattice_box()
    traj = lattice_trajectories(box=box, n_frames=10, seed=2)
    model_box = Box(box.lx / H_UM, box.ly / H_UM, 0.0)
    observed = observed_from_table(traj, H_UM, 1 / RATE, reference_frame={f: f - 1 for f in range(10)},
                                   boxes={f: model_box for f in range(10)})
    model = quiet_model(seed=3, mass=1e4, k_B=1e-3)
    result = rollout(model, observed, QUIET, start_frame=0, n_frames=9)
    assert result.status["status"] == "completed"
    c = result.conservation
    assert (c["n_predicted"] == c["n_particles"]).all() and c["n_particles"].nunique() == 1
    p = c[["momentum_x", "momentum_y"]].to_numpy()
    scale = model.mass.item() * np.abs(traj[["vx", "vy"]].to_numpy() * (1 / RATE) / H_UM).sum()
    assert np.abs(p - p[0]).max() <= 1e-12 * scale
    # and the noise did act: the kinetic energy and the velocities changed
    assert not np.allclose(c["kinetic_energy"], c["kinetic_energy"].iloc[0], rtol=1e-6)
    assert c["rebuilds"].iloc[-1] >= 1


def test_a_diverging_rollout_stops_with_a_message_and_keeps_its_frames(window_case, caplog):
    """Light particles under an untrained energy: the forces (times dt^2/m, as a huge time step
    would give) throw particles across the window after a few frames."""
    traj, geometry, root = window_case
    light = quiet_model(mass=50.0, k_B=1e-4)
    save_model(light, _kwargs(), {"h_um": H_UM, "dt_s": 1 / RATE, "dtype": "float64"}, root / "light.pt")
    with caplog.at_level("WARNING"):
        out = rollout_model(root / "light.pt", traj, geometry, root / "diverged",
                            RolloutParams(start_frame=0, n_frames=13, progress=False, device="cpu"))
    status = json.loads((out / "rollout_status.json").read_text())
    assert status["status"] == "diverged"
    assert "diverged at frame" in status["message"] and "diverged at frame" in caplog.text
    table = pd.read_parquet(out / "rollout.parquet")
    conservation = pd.read_csv(out / "conservation.csv")
    written = status["frames_written"]
    assert 1 <= written < 14
    assert table["frame"].nunique() == written == len(conservation)
    assert table["frame"].max() == status["diverged_at_frame"] - 1
    assert np.isfinite(table[["x", "y", "vx", "vy", "S"]].to_numpy()).all()


def test_statistics_error_is_zero_for_the_data_and_grows_with_a_wrong_velocity():
    traj = lattice_trajectories(n_frames=6, seed=4)
    observed = observed_from_table(traj, H_UM, 1 / RATE)
    rows = []
    for f, snap in observed.snapshots.items():
        rows.append(pd.DataFrame({"frame": f, "particle": snap.particle, "x": snap.x[:, 0], "y": snap.x[:, 1],
                                  "vx": snap.v[:, 0], "vy": snap.v[:, 1], "S": 0.0, "predicted": True,
                                  "interior": True, "segment": 0}))
    frames = pd.concat(rows, ignore_index=True)
    ok = RolloutResult(frames, pd.DataFrame(), {"status": "completed"})
    assert rollout_statistics_error(ok, observed) == pytest.approx(0.0, abs=1e-12)
    hot = frames.assign(vx=frames["vx"] * 2, vy=frames["vy"] * 2)
    assert rollout_statistics_error(RolloutResult(hot, pd.DataFrame(), {"status": "completed"}), observed) > 1.0
    assert math.isinf(rollout_statistics_error(RolloutResult(frames, pd.DataFrame(), {"status": "diverged"}),
                                               observed))


def test_exterior_rule_matches_the_geometry_stage(window_case):
    _, geometry, _ = window_case
    meta = json.loads((geometry / "metadata.json").read_text())["parameters"]
    rule = ExteriorRule.from_geometry(meta, H_UM)
    obs = pd.read_parquet(geometry / "observables.parquet")
    exterior = rule(obs[["x", "y"]].to_numpy() / H_UM, obs["particle"].to_numpy())
    np.testing.assert_array_equal(~exterior, obs["interior"].to_numpy())


def test_scripted_rollout_step_loads_and_matches_the_eager_step(window_case, tmp_path):
    _, _, root = window_case
    model, _ = load_model(root / "model.pt", dtype="float64")
    save_scripted_step(model, tmp_path / "rollout_step.pt")
    step = torch.jit.load(str(tmp_path / "rollout_step.pt"))
    from mpd.model import State, euler_maruyama_step
    from mpd.pairs import snapshot_pairs

    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.uniform(0, 4, size=(30, 2)))
    state = State(x, 0.01 * torch.as_tensor(rng.normal(size=(30, 2))), torch.zeros(30, dtype=torch.float64))
    pairs = snapshot_pairs(x, 1.0, x_ref=x)
    interior = torch.ones(30, dtype=torch.bool)
    eager = euler_maruyama_step(model, state, pairs, 1.0, interior, torch.Generator().manual_seed(5))
    with torch.enable_grad():
        scripted = step(state, pairs, 1.0, interior, torch.Generator().manual_seed(5), True)
    for a, b in zip(eager, scripted):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_rollout_on_cuda_matches_the_deterministic_cpu_rollout(window_case):
    traj, geometry, root = window_case
    params = RolloutParams(start_frame=0, n_frames=3, progress=False, noise=False)
    cpu = rollout_model(root / "model.pt", traj, geometry, root / "cpu", params, device="cpu")
    gpu = rollout_model(root / "model.pt", traj, geometry, root / "gpu", params, device="cuda")
    a, b = pd.read_parquet(cpu / "rollout.parquet"), pd.read_parquet(gpu / "rollout.parquet")
    np.testing.assert_allclose(a[["x", "y", "vx", "vy"]], b[["x", "y", "vx", "vy"]], rtol=1e-9, atol=1e-9)
    assert json.loads((gpu / "rollout_status.json").read_text())["device"].startswith("cuda")


@pytest.fixture(scope="module")
def box_case(tmp_path_factory):
    """A periodic lattice sheared by its box, its geometry output (periodic dataset) and a quiet model."""
    root = tmp_path_factory.mktemp("box")
    box0 = lattice_box()
    n_frames = 12
    tilts = 0.05 * box0.ly * np.sin(2 * np.pi * np.arange(n_frames + 30) / 16)
    boxes = pd.DataFrame({"frame": np.arange(n_frames + 30), "lx": box0.lx, "ly": box0.ly, "xy": tilts})
    traj = lattice_trajectories(n_frames=n_frames, box=box0, seed=3)
    traj["species"] = traj["particle"] % 2
    geometry = compute_geometry(traj, root / "geometry", h_um=H_UM, frame_rate_hz=RATE,
                                box=boxes[boxes["frame"] < n_frames], reference="cycle", cycle_frames=8.0)
    kwargs = dict(_kwargs(), n_species=2)
    torch.manual_seed(0)
    model = MetriplecticModel(**kwargs).double()  # heavy particles, weak noise: gentle motion
    set_positive_scalar(model.log_mass, 1e4)
    set_positive_scalar(model.log_k_B, 1e-4)
    save_model(model, kwargs, {"h_um": H_UM, "dt_s": 1 / RATE, "dtype": "float64"}, root / "model.pt")
    return traj, boxes, geometry, root


def test_periodic_box_rollout_runs_past_the_data_and_writes_wrapped_and_unwrapped_positions(box_case):
    traj, boxes, geometry, root = box_case
    out = rollout_box(root / "model.pt", traj[traj["frame"] <= 8], boxes, geometry, root / "out",
                      RolloutParams(progress=False, device="cpu"), start_frame=8, n_frames=30)
    table = pd.read_parquet(out / "rollout_box.parquet")
    status = json.loads((out / "rollout_box_status.json").read_text())
    assert status["status"] == "completed" and status["domain"] == "periodic box"
    # 30 frames beyond the start: far past the data's last frame (11); every particle, every frame
    assert sorted(table["frame"].unique()) == list(range(8, 39))
    assert (table.groupby("frame").size() == traj["particle"].nunique()).all()
    assert list(table.columns[:9]) == ["frame", "t", "particle", "x", "y", "species", "xu", "yu", "vx"]
    # wrapped positions are the unwrapped ones in each frame's sheared cell
    for f in (8, 20, 38):
        rows = table[table["frame"] == f]
        b = boxes.set_index("frame").loc[f]
        np.testing.assert_allclose(rows[["x", "y"]].to_numpy(),
                                   Box(b["lx"], b["ly"], b["xy"]).wrap(rows[["xu", "yu"]].to_numpy()), atol=1e-9)
    # the start is the data; the species come along
    start = table[table["frame"] == 8].set_index("particle")
    data = traj[traj["frame"] == 8].set_index("particle")
    np.testing.assert_allclose(start.loc[data.index, ["x", "y"]].to_numpy(), data[["x", "y"]].to_numpy(), atol=1e-9)
    assert (start.loc[data.index, "species"] == data["species"]).all()
    # the box table must cover the rollout
    with pytest.raises(ValueError, match="box table has no row"):
        rollout_box(root / "model.pt", traj, boxes[boxes["frame"] < 20], geometry, root / "bad",
                    RolloutParams(progress=False, device="cpu"), start_frame=8, n_frames=30)
    assert not (root / "bad").exists()


def test_the_box_rollout_span_defaults_to_the_test_block_and_stops_at_the_truth(tmp_path):
    from mpd.stage import box_rollout_span

    dataset = tmp_path / "geometry" / "dataset"
    dataset.mkdir(parents=True)
    (dataset / "metadata.json").write_text(json.dumps({"splits": {"test": {"first_frame": 30}}}))
    assert box_rollout_span({}, tmp_path / "geometry", 100) == (30, 70)
    assert box_rollout_span({"rollout": {"start_frame": 12}}, tmp_path / "geometry", 100) == (12, 88)
    assert box_rollout_span({"rollout": {"box_start_frame": 0, "box_n_frames": 5}}, tmp_path / "geometry", 100) == (1, 5)
    with pytest.raises(ValueError, match="model.rollout.box_n_frames"):
        box_rollout_span({"rollout": {"box_start_frame": 90, "box_n_frames": 20}}, tmp_path / "geometry", 100)


def test_a_frame_that_is_its_own_strain_reference_keeps_the_solid_bonded():
    """The cycle rule's first frame of each cycle is its own reference: in a closed box (no data after the start)
    its bonds come from the rollout's own state, built before that frame's pairs, and serve the whole cycle.
    (They were once looked up before the frame was remembered, found nowhere, and the solid went without
    bonds for every cycle after the first.)"""
    from test_model_support import random_model, triangular_lattice

    from mpd.rollout import ObservedFrames, Snapshot

    model = random_model(3, dim=2, mass=100.0, solid=True)
    x0, L = triangular_lattice()
    rng = np.random.default_rng(3)
    x0 = x0 + 0.05 * rng.normal(size=x0.shape)
    v0 = 0.01 * rng.normal(size=x0.shape)
    ids = np.arange(len(x0))
    steps, cycle = 12, 6

    def run(reference_of):
        frames = range(steps + 1)
        observed = ObservedFrames({0: Snapshot(ids, x0, v0)}, reference_frame={f: reference_of(f) for f in frames},
                                  boxes={f: Box(L[0], L[1], 0.1 * math.sin(f)) for f in frames})
        params = RolloutParams(noise=False, progress=False, dtype="float64", device="cpu")
        result = rollout(model, observed, params, start_frame=0, n_frames=steps)
        assert result.status["status"] == "completed"
        return result.frames.set_index(["frame", "particle"])[["vx", "vy"]]

    cycled = run(lambda f: (f // cycle) * cycle)
    unbonded_second_cycle = run(lambda f: 0 if f < cycle else -1)
    same_first = cycled.loc[:cycle] - unbonded_second_cycle.loc[:cycle]
    assert np.abs(same_first.to_numpy()).max() < 1e-12  # up to the second cycle's start the runs are one
    late = (cycled.loc[cycle + 2:] - unbonded_second_cycle.loc[cycle + 2:]).to_numpy()
    assert np.abs(late).max() > 1e-6  # then the bonds of the second cycle act
