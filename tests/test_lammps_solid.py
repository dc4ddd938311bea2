"""A solid model (strain bonds to a reference configuration) rolled out in LAMMPS (mpd.lammps_rollout, issue 16)
against the PyTorch rollout of a closed, fixed periodic box whose reference is a fixed configuration."""
from __future__ import annotations

import json

import numpy as np
import pytest
from lammps_support import mpi_command, mpi_run
from test_model_support import random_model, triangular_lattice

from mpd.geometry.domain import Box
from mpd.lammps_env import LammpsUnavailableError, import_lammps
from mpd.params import RolloutParams
from mpd.rollout import ObservedFrames, Snapshot, periodic_fluid_rollout, rollout
from mpd.training import save_model

try:
    import_lammps()
except LammpsUnavailableError as _exc:  # pragma: no cover - depends on the environment
    pytest.skip(f"LAMMPS is not available: {_exc}", allow_module_level=True)

from mpd.lammps_rollout import LammpsRolloutError, lammps_box_rollout, lammps_fluid_rollout

STEPS = 20
#: The random solid flows: its bonds stretch to about 2 h in 20 steps, so the ghost shell must reach further than
#: the default 2.5 h (bond partners of bond partners).
GHOST = 3.0
KWARGS = {"n_species": 2, "kernel_hidden": (16, 16), "energy_hidden": (16, 16), "amplitude_hidden": (16, 16),
          "teacher_hidden": (16,), "mass": 100.0, "solid": True}


def solid_case(seed: int = 2):
    """A random solid model and a slightly perturbed triangular lattice (spacing 0.8 h: six reference bonds per
    particle) in an 8 x 10 periodic box, one box length off; x_ref the perfect lattice (also one box off)."""
    model = random_model(3, dim=2, **KWARGS)
    lattice, L = triangular_lattice()
    rng = np.random.default_rng(seed)
    n = len(lattice)
    x0 = lattice + 0.05 * rng.normal(size=(n, 2)) + L
    v0 = 0.01 * rng.normal(size=(n, 2))
    species = rng.integers(0, 2, n)
    return model, x0, v0, L, species, lattice - L


def pytorch_rollout(model, x0, v0, L, species, x_ref=None, steps: int = STEPS):
    """`mpd.rollout.rollout` of the closed box, every frame's strain reference fixed: the start (x_ref None, the
    rollout's own start) or x_ref (an observed reference outside the rollout, frame 10**6)."""
    ids = np.arange(len(x0))
    frames = range(steps + 1)
    reference = 0 if x_ref is None else 10**6
    references = {} if x_ref is None else {f: Snapshot(ids, np.asarray(x_ref), np.zeros_like(x_ref)) for f in frames}
    observed = ObservedFrames({0: Snapshot(ids, x0, v0)}, reference_frame={f: reference for f in frames},
                              references=references, boxes={f: Box(L[0], L[1], 0.0) for f in [*frames, reference]},
                              species={int(p): int(s) for p, s in zip(ids, species)})
    params = RolloutParams(noise=False, progress=False, dtype="float64", device="cpu")
    result = rollout(model, observed, params, start_frame=0, n_frames=steps)
    assert result.status["status"] == "completed"
    return result.frames


def assert_same(pytorch, lammps, tol: float = 1e-6) -> None:
    """Unwrapped positions (h = 1), velocities and entropies agree at every frame, relative to the largest |v|, |S|."""
    assert np.array_equal(pytorch["frame"].to_numpy(), lammps["frame"].to_numpy())
    assert np.array_equal(pytorch["particle"].to_numpy(), lammps["particle"].to_numpy())
    assert np.abs(pytorch[["x", "y"]].to_numpy() - lammps[["xu", "yu"]].to_numpy()).max() < tol
    v_a, v_b = pytorch[["vx", "vy"]].to_numpy(), lammps[["vx", "vy"]].to_numpy()
    assert np.abs(v_a - v_b).max() < tol * np.abs(v_a).max()
    S_a, S_b = pytorch["S"].to_numpy(), lammps["S"].to_numpy()
    assert np.abs(S_a - S_b).max() < tol * np.abs(S_a).max()


def assert_momentum_conserved(conservation, model, v0, species) -> None:
    momentum = conservation[["momentum_x", "momentum_y"]].to_numpy()
    mass = model.mass.detach().numpy()[species]
    assert np.abs(momentum - momentum[0]).max() < 1e-12 * (mass[:, None] * np.abs(v0)).sum()


def test_a_solid_model_in_lammps_follows_the_pytorch_rollout_with_the_same_reference():
    model, x0, v0, L, species, x_ref = solid_case()
    expected = pytorch_rollout(model, x0, v0, L, species, x_ref)
    S0 = expected.loc[expected["frame"] == 0, "S"].to_numpy()
    result = lammps_box_rollout(model, x0, v0, L, STEPS, S0=S0, species=species, x_ref=x_ref, ghost_cutoff=GHOST)
    assert result.status["status"] == "completed" and result.status["model_steps"] == STEPS
    assert result.status["solid"] and result.status["n_reference_bonds"] == 3 * len(x0)  # six per particle
    assert_same(expected, result.frames)
    assert_momentum_conserved(result.conservation, model, v0, species)
    # not a trivial agreement: the particles moved, the entropies changed, and the bonds matter (the same model
    # without them, a fluid's pairs only, goes elsewhere)
    first, last = (result.frames[result.frames["t"] == t] for t in (0, STEPS))
    assert np.abs(last[["xu", "yu"]].to_numpy() - first[["xu", "yu"]].to_numpy()).max() > 0.5
    assert np.abs(last["S"].to_numpy() - first["S"].to_numpy()).max() > 0.1
    without_bonds = periodic_fluid_rollout(model, x0, v0, L, STEPS, noise=False, conserve_energy=False,
                                           species=species)
    assert np.abs(without_bonds.frames[["vx", "vy"]].to_numpy() - result.frames[["vx", "vy"]].to_numpy()).max() > 1e-2
    # the default reference is the initial state
    start = pytorch_rollout(model, x0, v0, L, species, steps=3)
    assert_same(start, lammps_box_rollout(model, x0, v0, L, 3, S0=S0, species=species, ghost_cutoff=GHOST).frames)


def test_a_bond_beyond_the_ghost_shell_stops_the_rollout_with_a_clear_error():
    model, x0, v0, L, species, x_ref = solid_case()
    with pytest.raises(LammpsRolloutError, match=r"strain bond\(s\) reach beyond this rank's ghost shell \(2.05 h\)"
                       r".*raise ghost_cutoff"):
        lammps_box_rollout(model, x0, v0, L, STEPS, species=species, x_ref=x_ref, ghost_cutoff=2.05)
    with pytest.raises(LammpsRolloutError, match="ghost_cutoff must be at least 2.05 h"):
        lammps_box_rollout(model, x0, v0, L, 1, species=species, ghost_cutoff=1.5)
    with pytest.raises(LammpsRolloutError, match="fluid models only"):
        lammps_fluid_rollout(model, x0, v0, L, 1, species=species)
    with pytest.raises(LammpsRolloutError, match="x_ref must be finite, of shape"):
        lammps_box_rollout(model, x0, v0, L, 1, species=species, x_ref=x_ref[:-1])


def test_two_mpi_ranks_follow_the_pytorch_rollout_of_a_solid(two_ranks_start, tmp_path):
    import pandas as pd

    model, x0, v0, L, species, x_ref = solid_case()
    save_model(model, {**KWARGS, "h": 1.0, "dim": 2}, {"dtype": "float64", "h_um": 1.0, "dt_s": 1.0}, tmp_path / "model.pt")
    expected = pytorch_rollout(model, x0, v0, L, species)
    S0 = expected.loc[expected["frame"] == 0, "S"].to_numpy()
    np.savez(tmp_path / "state.npz", x=x0, v=v0, box=L, species=species, S=S0)
    out = tmp_path / "two.parquet"
    proc = mpi_run(mpi_command(2, "-m", "mpd.lammps_rollout", "--model", str(tmp_path / "model.pt"), "--state",
                               str(tmp_path / "state.npz"), "--steps", str(STEPS), "--ghost-cutoff", str(GHOST),
                               "--out", str(out)), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = json.loads(out.with_suffix(".status.json").read_text())
    assert status["ranks"] == 2 and status["status"] == "completed" and status["solid"]
    assert_same(expected, pd.read_parquet(out))
    assert_momentum_conserved(pd.read_csv(out.with_suffix(".conservation.csv")), model, v0, species)
    # a ghost shell too small for the bonds: the rank that misses one says so (and the run fails)
    np.savez(tmp_path / "small.npz", x=x0, v=v0, box=L, species=species, x_ref=x_ref)
    proc = mpi_run(mpi_command(2, "-m", "mpd.lammps_rollout", "--model", str(tmp_path / "model.pt"), "--state",
                               str(tmp_path / "small.npz"), "--steps", str(STEPS), "--ghost-cutoff", "2.05",
                               "--out", str(tmp_path / "small.parquet")), tmp_path)
    assert proc.returncode != 0
    assert "ModelStepError" in proc.stderr and "reach beyond this rank's ghost shell (2.05 h)" in proc.stderr
