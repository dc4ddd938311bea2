"""The model in LAMMPS in a deforming (sheared) periodic cell (``fix deform``, Lees-Edwards; issue 16) against the
PyTorch rollout of the same closed sheared box (`mpd.rollout.rollout` with a box per frame)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from lammps_support import mpi_command, mpi_run
from test_lammps_solid import assert_momentum_conserved, assert_same
from test_model_support import random_model, triangular_lattice

from mpd.geometry.domain import Box
from mpd.lammps_env import LammpsUnavailableError, import_lammps
from mpd.params import RolloutParams
from mpd.rollout import ObservedFrames, Snapshot, observed_flows, rollout
from mpd.training import save_model

try:
    import_lammps()
except LammpsUnavailableError as _exc:  # pragma: no cover - depends on the environment
    pytest.skip(f"LAMMPS is not available: {_exc}", allow_module_level=True)

from mpd.lammps_rollout import NO_REFERENCE, REFERENCE_GIVEN, LammpsRolloutError, lammps_box_rollout

STEPS = 20
FLUID = {"n_species": 2, "kernel_hidden": (16, 16), "energy_hidden": (16, 16), "amplitude_hidden": (16, 16),
         "teacher_hidden": (16,), "mass": 20.0, "solid": False}


def sheared_fluid(seed: int = 4, **extra):
    """A random fluid model and a random state in a 6 x 6.5 periodic cell, positions one cell off."""
    model = random_model(3, dim=2, **{**FLUID, **extra})
    rng = np.random.default_rng(seed)
    L = np.array([6.0, 6.5])
    n = 70
    x0 = rng.uniform(0, 1, (n, 2)) * L + L
    v0 = 0.05 * rng.normal(size=(n, 2))
    return model, x0, v0, L, rng.integers(0, 2, n)


def steady(rate: float, start: float = 0.0) -> np.ndarray:
    return start + rate * np.arange(STEPS + 1)


def wiggle(amplitude: float, period: float) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * np.arange(STEPS + 1) / period)


def pytorch_sheared(model, x0, v0, L, species, tilt, substeps: int = 1, x_ref=None, reference_frame=None):
    """`mpd.rollout.rollout` of the closed box whose cell tilts by `tilt` frame by frame (a solid's reference: the
    start, x_ref in the start's cell, or the frames `reference_frame` (frame -> its reference, -1 none))."""
    ids = np.arange(len(x0))
    frames = range(len(tilt))
    boxes = {f: Box(L[0], L[1], float(tilt[f])) for f in frames}
    reference, references = 0, {}
    if x_ref is not None:
        reference = 10**6
        references = {f: Snapshot(ids, np.asarray(x_ref), np.zeros_like(x_ref)) for f in frames}
        boxes[reference] = boxes[0]
    reference_frame = reference_frame or {f: reference for f in frames}
    snapshots = {0: Snapshot(ids, x0, v0)}
    observed = ObservedFrames(snapshots, reference_frame=reference_frame, references=references,
                              boxes=boxes, flows=observed_flows(snapshots, boxes, None),
                              species={int(p): int(s) for p, s in zip(ids, species)})
    params = RolloutParams(noise=False, progress=False, dtype="float64", device="cpu", substeps=substeps)
    result = rollout(model, observed, params, start_frame=0, n_frames=len(tilt) - 1)
    assert result.status["status"] == "completed"
    return result.frames


@pytest.mark.parametrize("tilt, substeps", [
    (steady(0.4, start=2.5), 1),   # steady shear from a tilt beyond half an edge: LAMMPS flips its cell on the way
    (wiggle(1.5, 12.0), 2),         # the twin's cyclic shear, sampled at the frames, two substeps per frame
], ids=["steady-flip", "wiggle-substeps"])
def test_sheared_cell_agrees_with_the_pytorch_rollout_and_conserves_momentum(tilt, substeps):
    model, x0, v0, L, species = sheared_fluid()
    expected = pytorch_sheared(model, x0, v0, L, species, tilt, substeps)
    got = lammps_box_rollout(model, x0, v0, L, STEPS, species=species, tilt=tilt, substeps=substeps)
    assert got.status["status"] == "completed" and got.status["sheared"]
    assert_same(expected, got.frames)
    assert_momentum_conserved(got.conservation, model, v0, species)
    # the wrapped column is the continuous trajectory's image in the frame's cell
    last = got.frames[got.frames["frame"] == STEPS]
    cell = Box(L[0], L[1], float(tilt[-1]))
    assert np.allclose(last[["x", "y"]].to_numpy(), cell.wrap(last[["xu", "yu"]].to_numpy()), atol=1e-9)


def test_the_shear_reaches_the_pairs():
    """Without the pairs' shift rate the run is another one: the sheared and the fixed cell differ (the test
    above cannot pass by a cell that never moves)."""
    model, x0, v0, L, species = sheared_fluid()
    tilt = steady(0.4)
    sheared = lammps_box_rollout(model, x0, v0, L, 5, species=species, tilt=tilt[:6])
    fixed = lammps_box_rollout(model, x0, v0, L, 5, species=species)
    assert np.abs(sheared.frames["vx"].to_numpy() - fixed.frames["vx"].to_numpy()).max() > 1e-6


def test_bath_model_feels_the_sheared_solvent():
    """A model with a bath: the solvent flows with the cell (u = d(xy)/dt y / ly), as the PyTorch rollout's flow."""
    model, x0, v0, L, species = sheared_fluid(seed=5, bath=True)
    tilt = steady(0.3)
    expected = pytorch_sheared(model, x0, v0, L, species, tilt)
    got = lammps_box_rollout(model, x0, v0, L, STEPS, species=species, tilt=tilt)
    assert_same(expected, got.frames)


def test_sheared_solid_keeps_its_bonds_across_the_tilted_edge():
    """A solid model's strain bonds in a sheared cell (reference: a perfect lattice in the start's cell)."""
    model = random_model(3, dim=2, **{**FLUID, "mass": 100.0, "solid": True})
    lattice, L = triangular_lattice()
    rng = np.random.default_rng(7)
    x0 = lattice + 0.05 * rng.normal(size=lattice.shape)
    v0 = 0.01 * rng.normal(size=lattice.shape)
    species = rng.integers(0, 2, len(x0))
    tilt = wiggle(0.8, 16.0)
    expected = pytorch_sheared(model, x0, v0, L, species, tilt, x_ref=lattice)
    got = lammps_box_rollout(model, x0, v0, L, STEPS, species=species, tilt=tilt, x_ref=lattice, ghost_cutoff=3.0)
    assert got.status["n_reference_bonds"] == 3 * len(x0)
    assert_same(expected, got.frames)


def test_sheared_cell_one_two_and_four_ranks_agree_with_noise(tmp_path, two_ranks_start):
    """The command line with a tilt in the state file: 1, 2 and 4 ranks (a 2 x 2 grid of sub-domains of 3 x 3.25 h
    under a 2.05 h ghost shell, oversubscribing this machine's cores) give the same noisy sheared trajectory,
    the cell flipping on the way."""
    model, x0, v0, L, species = sheared_fluid()
    model_path = tmp_path / "model.pt"
    save_model(model, {"h": 1.0, **FLUID, "dim": 2}, {"dtype": "float64", "h_um": 1.0, "dt_s": 1.0}, model_path)
    state = tmp_path / "state.npz"
    np.savez(state, x=x0, v=v0, box=L, species=species, tilt=steady(0.4, start=2.5))
    runs = {}
    for ranks in (1, 2, 4):
        out = tmp_path / f"run{ranks}.parquet"
        done = mpi_run(mpi_command(ranks, "-m", "mpd.lammps_rollout", "--model", str(model_path), "--state", str(state), "--steps", str(STEPS),
                                   "--noise", "--seed", "3", "--out", str(out)), tmp_path)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        runs[ranks] = out
    import pandas as pd

    one, two, four = (pd.read_parquet(runs[k]) for k in (1, 2, 4))
    assert json.loads(runs[2].with_suffix(".status.json").read_text())["ranks"] == 2
    assert json.loads(runs[4].with_suffix(".status.json").read_text())["ranks"] == 4
    # the same up to summation order (round-off grows over the 20 steps of a random model, as in the fixed box)
    assert_same(one.assign(x=one["xu"], y=one["yu"]), two)
    assert_same(one.assign(x=one["xu"], y=one["yu"]), four)
    quiet = lammps_box_rollout(model, x0, v0, L, STEPS, species=species, tilt=steady(0.4, start=2.5))
    assert np.abs(quiet.frames["vx"].to_numpy() - one["vx"].to_numpy()).max() > 1e-3  # the noise was on


def test_bad_tilt_is_one_clear_error():
    model, x0, v0, L, _ = sheared_fluid()
    with pytest.raises(LammpsRolloutError, match="n_frames \\+ 1 = 6"):
        lammps_box_rollout(model, x0, v0, L, 5, tilt=np.zeros(3))
    with pytest.raises(LammpsRolloutError, match="finite"):
        lammps_box_rollout(model, x0, v0, L, 2, tilt=[0.0, np.nan, 0.0])
    model3 = random_model(3, dim=3, **FLUID)
    with pytest.raises(LammpsRolloutError, match="two-dimensional"):
        lammps_box_rollout(model3, np.ones((4, 3)), np.zeros((4, 3)), [5.0, 5.0, 5.0], 2, tilt=np.zeros(3))


def sheared_solid(seed: int = 7):
    model = random_model(3, dim=2, **{**FLUID, "mass": 100.0, "solid": True})
    lattice, L = triangular_lattice()
    rng = np.random.default_rng(seed)
    x0 = lattice + 0.05 * rng.normal(size=lattice.shape)
    v0 = 0.01 * rng.normal(size=lattice.shape)
    return model, x0, v0, L, rng.integers(0, 2, len(x0))


@pytest.mark.parametrize("rule", ["lag", "cycle"])
def test_sheared_solid_follows_the_geometry_reference_rule(rule):
    """A solid model whose strain reference moves with the rollout (the geometry stage's lag or cycle rule): the
    bonds are rebuilt from the rollout's own frames, as mpd.rollout.rollout does from its history."""
    from mpd.geometry.reference import reference_frames

    model, x0, v0, L, species = sheared_solid()
    tilt = wiggle(0.8, 12.0)
    frames = np.arange(STEPS + 1)
    refs = reference_frames(frames, reference=rule, lag_frames=2, cycle_frames=6.0, cycle_start_frame=0)
    expected = pytorch_sheared(model, x0, v0, L, species, tilt,
                               reference_frame={int(f): int(r) for f, r in zip(frames, refs)})
    got = lammps_box_rollout(model, x0, v0, L, STEPS, species=species, tilt=tilt, ghost_cutoff=3.0, every=4,
                             references=np.where(refs >= 0, refs, NO_REFERENCE))
    assert_same(expected[expected["frame"] % 4 == 0].reset_index(drop=True), got.frames)
    # the moving reference matters: a fixed one (the start) is another run
    fixed = lammps_box_rollout(model, x0, v0, L, STEPS, species=species, tilt=tilt, ghost_cutoff=3.0, every=4)
    assert np.abs(fixed.frames["vx"].to_numpy() - got.frames["vx"].to_numpy()).max() > 1e-6


def test_bad_references_are_one_clear_error():
    model, x0, v0, L, _ = sheared_solid()
    with pytest.raises(LammpsRolloutError, match="reference frame k <= it"):
        lammps_box_rollout(model, x0, v0, L, 3, references=[0, 2, 2, 3])  # frame 1 would look ahead
    with pytest.raises(LammpsRolloutError, match="reference frame k <= it"):
        lammps_box_rollout(model, x0, v0, L, 3, references=[REFERENCE_GIVEN, 0])
    fluid, *_ = sheared_fluid()
    with pytest.raises(LammpsRolloutError, match="fluid"):
        lammps_box_rollout(fluid, x0, v0, L, 3, references=[0, 0, 0, 0])
