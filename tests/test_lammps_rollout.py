"""The model evaluated inside LAMMPS (mpd.lammps_rollout) against the PyTorch closed-box rollout (issue 16)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lammps_support import mpi_command, mpi_run
from test_model_support import random_model

from mpd.lammps_env import LammpsUnavailableError, import_lammps
from mpd.rollout import periodic_fluid_rollout
from mpd.training import MODEL_FORMAT, save_model

try:
    import_lammps()
except LammpsUnavailableError as _exc:  # pragma: no cover - depends on the environment
    pytest.skip(f"LAMMPS is not available: {_exc}", allow_module_level=True)

from mpd.lammps_rollout import LammpsRolloutError, lammps_fluid_rollout, main

REPO = Path(__file__).resolve().parents[1]
STEPS = 20
KWARGS = {"h": 1.0, "n_species": 2, "kernel_hidden": (16, 16), "energy_hidden": (16, 16),
          "amplitude_hidden": (16, 16), "teacher_hidden": (16,), "mass": 20.0, "solid": False}


def fluid_case(dim: int, seed: int = 1):
    """A random fluid model (random_model's weights, two species, heavy enough to move a few h in 20 steps) and a
    random periodic state whose positions start one box length off (the wrap and the image flags are exercised)."""
    model = random_model(3, dim=dim, **{k: v for k, v in KWARGS.items() if k not in ("h",)})
    rng = np.random.default_rng(seed)
    L, n = (6.0, 60) if dim == 2 else (4.5, 120)
    x0 = rng.uniform(0, L, (n, dim)) + L
    v0 = 0.05 * rng.normal(size=(n, dim))
    species = rng.integers(0, 2, n)
    return model, x0, v0, np.full(dim, L), species


def axes(dim: int) -> list[str]:
    return list("xyz"[:dim])


def assert_same_trajectory(a, b, dim: int, L: np.ndarray, tol: float = 1e-6) -> None:
    """Positions (minimum image, in h), velocities and entropies agree at every frame to tol (relative to the
    largest |v| and |S|)."""
    assert len(a) == len(b) and np.array_equal(a["frame"].to_numpy(), b["frame"].to_numpy())
    assert np.array_equal(a["particle"].to_numpy(), b["particle"].to_numpy())
    d = a[axes(dim)].to_numpy() - b[axes(dim)].to_numpy()
    assert np.abs(d - L * np.round(d / L)).max() < tol  # h = 1
    assert np.abs(a[[c + "u" for c in axes(dim)]].to_numpy() - b[[c + "u" for c in axes(dim)]].to_numpy()).max() < tol
    v_a, v_b = a[["v" + c for c in axes(dim)]].to_numpy(), b[["v" + c for c in axes(dim)]].to_numpy()
    assert np.abs(v_a - v_b).max() < tol * np.abs(v_a).max()
    assert np.abs(a["S"].to_numpy() - b["S"].to_numpy()).max() < tol * np.abs(a["S"].to_numpy()).max()


@pytest.mark.parametrize("dim", [2, 3])
def test_lammps_steps_agree_with_the_pytorch_closed_box_rollout_and_conserve_momentum(dim):
    model, x0, v0, L, species = fluid_case(dim)
    reference = periodic_fluid_rollout(model, x0, v0, L, STEPS, noise=False, conserve_energy=False, species=species)
    S0 = reference.frames.loc[reference.frames["t"] == 0, "S"].to_numpy()
    result = lammps_fluid_rollout(model, x0, v0, L, STEPS, S0=S0, species=species)
    assert result.status["status"] == "completed" and result.status["model_steps"] == STEPS
    assert result.status["ranks"] == 1
    frames = result.frames
    assert list(frames.columns) == list(reference.frames.columns)
    assert_same_trajectory(reference.frames, frames, dim, L)
    # not a trivial agreement: particles crossed the box and velocities and entropies changed a lot
    first, last = (frames[frames["t"] == t] for t in (0, STEPS))
    u = [c + "u" for c in axes(dim)]
    assert np.abs(last[u].to_numpy() - first[u].to_numpy()).max() > 1.0
    assert (np.abs(frames[u].to_numpy() - frames[axes(dim)].to_numpy()) > L / 2).any()  # image flags at work
    assert np.abs(last["S"].to_numpy() - first["S"].to_numpy()).max() > 0.1
    # the pair forces are antisymmetric: the total momentum is conserved to round-off in the LAMMPS run
    momentum = result.conservation[[f"momentum_{c}" for c in axes(dim)]].to_numpy()
    mass = model.mass.detach().numpy()[species]
    scale = (mass[:, None] * np.abs(v0)).sum()
    assert np.abs(momentum - momentum[0]).max() < 1e-12 * scale


def test_default_entropies_are_the_teachers_and_kept_frames_follow_every():
    model, x0, v0, L, species = fluid_case(2)
    reference = periodic_fluid_rollout(model, x0, v0, L, 6, noise=False, conserve_energy=False, species=species)
    result = lammps_fluid_rollout(model, x0, v0, L, 6, species=species, every=3, start_frame=5,
                                  particle=np.arange(len(x0)) + 100)
    assert sorted(set(result.frames["frame"])) == [5, 8, 11]
    expected = reference.frames[reference.frames["t"].isin([0, 3, 6])].reset_index(drop=True)
    expected["frame"] += 5
    expected["particle"] += 100
    assert_same_trajectory(expected, result.frames, 2, L)


@pytest.mark.parametrize("dim", [2, 3])
def test_with_the_counter_noise_lammps_follows_the_pytorch_rollout_and_conserves_momentum(dim):
    """The noise keyed by particle ids and the step (mpd.model.streams): the same increments whatever the
    pair order or the rank, so the two paths agree with the noise on too."""
    pytest.importorskip("mpd.model.streams")
    model, x0, v0, L, species = fluid_case(dim)
    ids = 3 * np.arange(len(x0)) + 5
    reference = periodic_fluid_rollout(model, x0, v0, L, STEPS, noise=True, noise_stream="counter", seed=7,
                                       conserve_energy=False, species=species, particle=ids)
    quiet = periodic_fluid_rollout(model, x0, v0, L, STEPS, noise=False, conserve_energy=False, species=species,
                                   particle=ids)
    S0 = reference.frames.loc[reference.frames["t"] == 0, "S"].to_numpy()
    result = lammps_fluid_rollout(model, x0, v0, L, STEPS, S0=S0, species=species, particle=ids, noise=True, seed=7)
    assert result.status["status"] == "completed" and result.status["noise"]
    assert_same_trajectory(reference.frames, result.frames, dim, L)
    assert np.abs(reference.frames["S"].to_numpy() - quiet.frames["S"].to_numpy()).max() > 1.0  # the noise acts
    momentum = result.conservation[[f"momentum_{c}" for c in axes(dim)]].to_numpy()
    mass = model.mass.detach().numpy()[species]
    assert np.abs(momentum - momentum[0]).max() < 1e-12 * (mass[:, None] * np.abs(v0)).sum()


def test_solid_models_and_small_boxes_are_refused_with_a_reason():
    model, x0, v0, L, species = fluid_case(2)
    solid = random_model(3, dim=2, solid=True, n_species=2)
    with pytest.raises(LammpsRolloutError, match="fluid models only"):
        lammps_fluid_rollout(solid, x0, v0, L, 1, species=species)
    with pytest.raises(LammpsRolloutError, match="half the shortest box edge"):
        lammps_fluid_rollout(model, x0, v0, [1.8, 6.0], 1, species=species)


def test_an_error_inside_the_lammps_callback_is_raised_after_the_run(monkeypatch):
    """Python exceptions cannot cross LAMMPS's C code: the step keeps it, and the rollout raises it."""
    from mpd import lammps_rollout

    model, x0, v0, L, species = fluid_case(2)
    advance = lammps_rollout.ModelStep.advance

    def failing(self, nlocal):
        if self.done == 3:
            raise FloatingPointError("boom")
        advance(self, nlocal)

    monkeypatch.setattr(lammps_rollout.ModelStep, "advance", failing)
    with pytest.raises(LammpsRolloutError, match="rank 0 at LAMMPS step 3: FloatingPointError: boom"):
        lammps_fluid_rollout(model, x0, v0, L, 5, species=species)


def write_case(root: Path, dim: int) -> tuple[Path, Path, tuple]:
    model, x0, v0, L, species = fluid_case(dim)
    kwargs = {**KWARGS, "dim": dim}
    save_model(model, kwargs, {"dtype": "float64", "h_um": 1.0, "dt_s": 1.0}, root / "model.pt")
    np.savez(root / "state.npz", x=x0, v=v0, box=L, species=species)
    return root / "model.pt", root / "state.npz", (model, x0, v0, L, species)


def test_the_command_line_reports_a_missing_or_foreign_model_file_clearly(tmp_path, capsys):
    _, state, _ = write_case(tmp_path, 2)
    out = tmp_path / "run.parquet"
    assert main(["--model", str(tmp_path / "nowhere.pt"), "--state", str(state), "--steps", "2",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "ModelFileError" in err and "does not exist" in err and len(err.strip().splitlines()) == 1
    torch.save({"format": MODEL_FORMAT, "version": -1, "model_kwargs": {}, "state_dict": {}, "metadata": {}},
               tmp_path / "old.pt")
    assert main(["--model", str(tmp_path / "old.pt"), "--state", str(state), "--steps", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "version -1" in err and "train it again" in err
    assert not out.exists()


@pytest.mark.parametrize(("dim", "noise"), [(2, False), (3, False), (2, True)])
def test_two_mpi_ranks_give_the_one_rank_trajectory(two_ranks_start, tmp_path, dim, noise):
    import pandas as pd

    if noise:
        pytest.importorskip("mpd.model.streams")
    model_path, state, (model, x0, v0, L, species) = write_case(tmp_path, dim)
    one = lammps_fluid_rollout(model, x0, v0, L, STEPS, species=species, noise=noise, seed=11)
    out = tmp_path / "two.parquet"
    proc = mpi_run(mpi_command(2, "-m", "mpd.lammps_rollout", "--model", str(model_path), "--state", str(state),
                               "--steps", str(STEPS), "--out", str(out), *(["--noise", "--seed", "11"] if noise else [])),
                   tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = json.loads(out.with_suffix(".status.json").read_text())
    assert status["ranks"] == 2 and status["status"] == "completed" and status["frames_written"] == STEPS + 1
    assert status["noise"] == noise
    two = pd.read_parquet(out)
    assert_same_trajectory(one.frames, two, dim, L)
    momentum = pd.read_csv(out.with_suffix(".conservation.csv"))[[f"momentum_{c}" for c in axes(dim)]].to_numpy()
    mass = model.mass.detach().numpy()[species]
    assert np.abs(momentum - momentum[0]).max() < 1e-12 * (mass[:, None] * np.abs(v0)).sum()


def test_ranks_that_finish_at_different_times_all_exit_cleanly(two_ranks_start, tmp_path):
    """Every rank finalises MPI before it exits (mpd.lammps_env.finalize_mpi, as mpd.lammps_rollout's command
    line does). Without it mpich's launcher took a rank exiting for a crashed one and killed the ranks still
    running (SIGKILL, exit code 9): about one finished 3- or 4-rank run in three failed, rank 0 still writing."""
    snippet = ("import sys, time; from mpd.lammps_env import finalize_mpi, open_lammps; lmp = open_lammps(); "
               "rank = lmp.extract_setting('world_rank'); lmp.close(); "
               "time.sleep(1.0 if rank == 0 else 0.0); open(f'{sys.argv[1]}/done{rank}', 'w').close(); "
               "finalize_mpi(); finalize_mpi()")  # the second call is a no-op
    for attempt in range(4):
        folder = tmp_path / f"run{attempt}"
        folder.mkdir()
        proc = mpi_run(mpi_command(3, "-c", snippet, str(folder)), folder)
        assert proc.returncode == 0, (attempt, proc.stdout[-1500:] + proc.stderr[-1500:])
        assert sorted(p.name for p in folder.iterdir()) == ["done0", "done1", "done2"]
    # without mpiexec, and in a process that never loaded LAMMPS, it does nothing
    for code in ("from mpd.lammps_env import finalize_mpi; finalize_mpi()",
                 "from mpd.lammps_env import finalize_mpi, open_lammps; open_lammps().close(); finalize_mpi()"):
        alone = mpi_run([sys.executable, "-c", code], tmp_path)
        assert alone.returncode == 0, alone.stderr[-2000:]
