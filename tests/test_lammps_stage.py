"""The workflow's LAMMPS stage (issue 16, point 3): a bulk experiment's model rolled out in LAMMPS on a tiled sample.

`mpd.lammps_rollout.tile_sample`, `rollout_lammps` (the stage function: tiling, units, the mpiexec launch, the
outputs in the truth's schema, the LAMMPS dump) and the rule `rollout_lammps` through Snakemake.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from test_model_support import random_model

from mpd.lammps_env import LammpsUnavailableError, import_lammps, mpiexec_path
from mpd.training import save_model

try:
    import_lammps()
except LammpsUnavailableError as _exc:  # pragma: no cover - depends on the environment
    pytest.skip(f"LAMMPS is not available: {_exc}", allow_module_level=True)

from mpd.lammps_rollout import LammpsStageError, rollout_lammps, tile_sample

REPO = Path(__file__).resolve().parents[1]
# The model's scales in the sample's units (LJ sigma and tau): h = 0.8 sigma, one frame = 0.1 tau, so that a
# mix-up of the units shows in every column.
H, DT = 0.8, 0.1
L = 2.0  # the truth's cubic box, in sigma: 2.5 h
N = 40
FRAMES = 3
KWARGS = {"h": 1.0, "n_species": 2, "kernel_hidden": (16, 16), "energy_hidden": (16, 16),
          "amplitude_hidden": (16, 16), "teacher_hidden": (16,), "mass": 20.0, "solid": False, "dim": 3}
COMPARISON = {"train_frames": 3, "rollout_factor": 1}  # start: frame 3 + 5 = 8; needs 12 frames
# The rule the Snakemake test proves runs in its emulated conda env (tests/test_envs.py, with WORKFLOW_TESTS).
EMULATED_RULES = {"stars_lammps": ("simulate_star_polymers", "bulk_dataset", "train_model", "rollout_lammps")}


def axes() -> list[str]:
    return ["x", "y", "z"]


# --- tiling ---------------------------------------------------------------------------------------------------


def test_tiling_replicates_the_box_with_unique_ids_at_the_same_density():
    rng = np.random.default_rng(0)
    lengths = np.array([2.0, 3.0, 2.5])
    x = rng.uniform(0, 1, (50, 3)) * lengths + np.array([-2.0, 3.0, 0.0])  # some a box off: wrapped first
    v = rng.normal(size=(50, 3))
    ids = rng.permutation(200)[:50] + 7
    species = rng.integers(0, 2, 50)
    S = rng.normal(size=50)
    tiles = [3, 1, 2]
    tiled = tile_sample(x, v, lengths, tiles, species=species, particle=ids, S=S)
    assert len(tiled.x) == 50 * 6 and np.allclose(tiled.lengths, lengths * tiles)
    assert len(np.unique(tiled.particle)) == len(tiled.particle)  # unique ids
    assert np.array_equal(tiled.particle % tiled.stride, np.tile(ids, 6))  # id % stride: the original particle
    assert np.isclose(len(tiled.x) / np.prod(tiled.lengths), 50 / np.prod(lengths))  # density preserved
    assert (tiled.x >= 0).all() and (tiled.x < tiled.lengths).all()  # inside the tiled box
    # every tile is the wrapped sample shifted by whole box lengths; velocities, species, S copied
    wrapped = np.mod(x, lengths)
    for t in range(6):
        rows = tiled.tile == t
        shift = tiled.x[rows] - wrapped
        assert np.allclose(shift / lengths, np.round(shift / lengths), atol=1e-12)
        assert np.allclose(shift, shift[0])  # one rigid shift per tile
        assert np.array_equal(tiled.v[rows], v) and np.array_equal(tiled.species[rows], species)
        assert np.array_equal(tiled.S[rows], S)
    corners = {tuple(np.round((tiled.x[tiled.tile == t] - wrapped)[0] / lengths).astype(int)) for t in range(6)}
    assert corners == {(i, 0, k) for i in range(3) for k in range(2)}
    # no two particles on top of each other (a tile shifted onto another would be)
    from scipy.spatial import cKDTree

    assert cKDTree(tiled.x).query_pairs(1e-9).__len__() == 0


def test_tiling_refuses_mismatched_shapes_and_bad_tiles():
    x, v = np.zeros((4, 3)), np.zeros((4, 3))
    with pytest.raises(LammpsStageError, match="disagree"):
        tile_sample(x, v, [1.0, 1.0, 1.0], [2, 2])
    with pytest.raises(LammpsStageError, match="positive"):
        tile_sample(x, v, [1.0, 1.0, 1.0], [2, 0, 1])
    with pytest.raises(LammpsStageError, match="unique"):
        tile_sample(x, v, [1.0, 1.0, 1.0], [1, 1, 1], particle=[0, 1, 1, 2])


# --- the stage function ---------------------------------------------------------------------------------------


def write_truth(root: Path, frames: int = 12, seed: int = 2) -> tuple[Path, Path]:
    """A small 3D bulk truth in the star-polymer schema (LJ units): random walkers in a cubic periodic box."""
    rng = np.random.default_rng(seed)
    xu = rng.uniform(0, L, (N, 3))
    species = rng.integers(0, 2, N).astype(np.int8)
    rows = []
    for frame in range(frames):
        v = 0.3 * rng.normal(size=(N, 3))
        xu = xu + v * DT
        wrapped = np.mod(xu, L)
        table = {"frame": frame, "t": 5.0 + frame * DT, "particle": np.arange(N) + 3, "species": species}
        for k, a in enumerate(axes()):
            table[a] = wrapped[:, k]
        for k, a in enumerate(axes()):
            table[a + "u"] = xu[:, k]
        for k, a in enumerate(axes()):
            table["v" + a] = v[:, k]
        rows.append(pd.DataFrame(table))
    pd.concat(rows, ignore_index=True).to_parquet(root / "trajectories.parquet", index=False)
    (root / "metadata.json").write_text(json.dumps({"lx": L, "ly": L, "lz": L, "units": "lj", "dimension": 3}))
    return root / "trajectories.parquet", root / "metadata.json"


def write_model(root: Path, solid: bool = False, h: float = H) -> Path:
    kwargs = {**KWARGS, "solid": solid}
    model = random_model(3, **{k: v for k, v in kwargs.items() if k != "h"})
    path = root / ("solid.pt" if solid else "model.pt")
    save_model(model, kwargs, {"dtype": "float64", "h_um": h, "dt_s": DT}, path)
    return path


SETTINGS = {"tiles": [2, 1, 1], "frames": FRAMES, "ranks": 2, "noise": True, "seed": 4}


@pytest.fixture(scope="module")
def two_rank_run(two_ranks_start, tmp_path_factory):
    root = tmp_path_factory.mktemp("stage")
    truth, metadata = write_truth(root)
    model = write_model(root)
    status = rollout_lammps(model, truth, metadata, root / "lammps", SETTINGS, COMPARISON,
                            log_file=root / "rollout_lammps.log")
    return root, truth, status


def read_dump_frame(path: Path):
    """The first frame of a LAMMPS text dump: timestep, box bounds (3, 2) and the atoms' table."""
    lines = path.read_text().splitlines()
    assert lines[0] == "ITEM: TIMESTEP" and lines[2] == "ITEM: NUMBER OF ATOMS"
    step, n = int(lines[1]), int(lines[3])
    assert lines[4] == "ITEM: BOX BOUNDS pp pp pp"
    bounds = np.array([[float(v) for v in lines[5 + k].split()] for k in range(3)])
    assert lines[8] == "ITEM: ATOMS id type x y z vx vy vz"
    atoms = np.array([[float(v) for v in line.split()] for line in lines[9:9 + n]])
    return step, bounds, pd.DataFrame(atoms, columns=["id", "type", "x", "y", "z", "vx", "vy", "vz"])


def test_two_ranks_write_the_tiled_rollout_in_the_truths_schema_and_units(two_rank_run):
    root, truth_path, status = two_rank_run
    out = root / "lammps"
    assert sorted(p.name for p in out.iterdir()) == ["conservation.csv", "status.json", "trajectories.parquet",
                                                     "trajectory.dump"]  # and no work files left
    assert status == json.loads((out / "status.json").read_text())
    assert status["status"] == "completed" and status["ranks"] == 2 and status["n_particles"] == 2 * N
    assert status["tiles"] == [2, 1, 1] and status["box"] == [2 * L, L, L] and status["seconds"] > 0
    truth = pd.read_parquet(truth_path)
    table = pd.read_parquet(out / "trajectories.parquet")
    assert set(truth.columns) | {"S"} == set(table.columns)
    start = truth[truth["frame"] == 8].sort_values("particle")  # the comparison split's rollout start
    assert status["start_frame"] == 8
    assert sorted(table["frame"].unique()) == list(range(8, 8 + FRAMES + 1))
    assert np.allclose(table.groupby("frame")["t"].first().to_numpy(), 5.0 + DT * np.arange(8, 8 + FRAMES + 1))
    first = table[table["frame"] == 8]
    assert len(first) == 2 * N and first["particle"].is_unique
    # physical units: the first frame is the tiled truth itself (sigma, sigma/tau), not in h or h per frame
    tiled = tile_sample(start[["xu", "yu", "zu"]].to_numpy(), start[["vx", "vy", "vz"]].to_numpy(), [L] * 3,
                        [2, 1, 1], particle=start["particle"].to_numpy(), species=start["species"].to_numpy())
    keyed = first.set_index("particle").loc[tiled.particle]
    assert np.allclose(keyed[["x", "y", "z"]].to_numpy(), tiled.x, atol=1e-9)
    assert np.allclose(keyed[["vx", "vy", "vz"]].to_numpy(), tiled.v, atol=1e-9)
    assert np.array_equal(keyed["species"].to_numpy(), tiled.species)
    # x is xu wrapped into the tiled box at every frame, and the particles moved
    box = np.array([2 * L, L, L])
    d = table[["x", "y", "z"]].to_numpy() - table[["xu", "yu", "zu"]].to_numpy()
    assert np.allclose(d / box, np.round(d / box), atol=1e-9)
    assert ((table[["x", "y", "z"]].to_numpy() >= 0) & (table[["x", "y", "z"]].to_numpy() < box)).all()
    last = table[table["frame"] == 8 + FRAMES].set_index("particle").loc[tiled.particle]
    assert np.abs(last[["xu", "yu", "zu"]].to_numpy() - keyed[["xu", "yu", "zu"]].to_numpy()).max() > 1e-3
    # the noise is keyed by the (unique) ids: the tiles, equal at the start, part ways (without it they would not)
    half = len(tiled.particle) // 2
    drift = (last[["xu", "yu", "zu"]].to_numpy()[half:] - last[["xu", "yu", "zu"]].to_numpy()[:half]) - [L, 0, 0]
    assert np.abs(drift).max() > 1e-6
    # the pair forces are antisymmetric: momentum is conserved across the ranks (the noise included)
    assert status["momentum_drift_relative"] < 1e-12
    conservation = pd.read_csv(out / "conservation.csv")
    assert len(conservation) == FRAMES + 1 and np.allclose(conservation["t"], 5.0 + DT * np.arange(8, 12))


def test_the_dump_parses_back_to_the_first_frame_and_lammps_reads_it(two_rank_run):
    root, _, _ = two_rank_run
    out = root / "lammps"
    table = pd.read_parquet(out / "trajectories.parquet")
    first = table[table["frame"] == 8].sort_values("particle")
    step, bounds, atoms = read_dump_frame(out / "trajectory.dump")
    assert step == 8 and np.allclose(bounds, [[0, 2 * L], [0, L], [0, L]])
    atoms = atoms.sort_values("id")
    assert np.array_equal(atoms["id"].to_numpy(np.int64), first["particle"].to_numpy() + 1)
    assert np.array_equal(atoms["type"].to_numpy(np.int64), first["species"].to_numpy() + 1)
    assert np.allclose(atoms[["x", "y", "z", "vx", "vy", "vz"]].to_numpy(),
                       first[["x", "y", "z", "vx", "vy", "vz"]].to_numpy(), rtol=0, atol=1e-12)
    assert (out / "trajectory.dump").read_text().count("ITEM: TIMESTEP") == FRAMES + 1
    # LAMMPS's own reader of its dump format (what OVITO reads too) takes the last frame with its box
    from mpd.lammps_env import open_lammps

    lmp = open_lammps()
    try:
        lmp.commands_string("""
            units lj
            atom_style atomic
            region box block 0 1 0 1 0 1
            create_box 2 box
            mass * 1.0
        """)
        lmp.command(f"read_dump {out / 'trajectory.dump'} {8 + FRAMES} x y z vx vy vz box yes add keep")
        assert lmp.get_natoms() == 2 * N
        assert np.isclose(lmp.extract_box()[1][0], 2 * L)
    finally:
        lmp.close()


def test_the_analysis_runs_on_the_lammps_trajectory_unchanged(two_rank_run):
    from analysis.table1 import rollout_curves

    root, _, status = two_rank_run
    table = pd.read_parquet(root / "lammps" / "trajectories.parquet")
    curves = rollout_curves(table, r_max=0.45 * L, bins=10, n_lags=FRAMES, lengths=np.asarray(status["box"]))
    assert all(curves[name] is not None and len(curves[name]) for name in ("rdf", "msd", "vacf"))


def test_one_rank_in_process_gives_the_two_rank_trajectory(two_rank_run, tmp_path):
    root, truth, _ = two_rank_run
    one = rollout_lammps(root / "model.pt", truth, root / "metadata.json", tmp_path / "lammps",
                         {**SETTINGS, "ranks": 1}, COMPARISON)
    assert one["ranks"] == 1 and one["launcher"] == "this process"
    a = pd.read_parquet(tmp_path / "lammps" / "trajectories.parquet")
    b = pd.read_parquet(root / "lammps" / "trajectories.parquet")
    assert np.array_equal(a["particle"], b["particle"]) and np.array_equal(a["frame"], b["frame"])
    columns = ["xu", "yu", "zu", "vx", "vy", "vz", "S"]
    assert np.allclose(a[columns].to_numpy(), b[columns].to_numpy(), rtol=1e-9, atol=1e-9)


def test_a_solid_model_is_refused_with_a_clear_error_and_no_outputs(tmp_path):
    from mpd.errors import is_clear

    truth, metadata = write_truth(tmp_path)
    solid = write_model(tmp_path, solid=True)
    with pytest.raises(LammpsStageError, match="fluid models in a fixed periodic box only") as caught:
        rollout_lammps(solid, truth, metadata, tmp_path / "lammps", SETTINGS, COMPARISON)
    assert is_clear(caught.value)
    assert not (tmp_path / "lammps").exists()


def test_a_failed_launch_leaves_no_outputs_and_names_the_log(two_ranks_start, tmp_path):
    truth, metadata = write_truth(tmp_path)
    model = write_model(tmp_path)
    (tmp_path / "lammps").mkdir()
    (tmp_path / "lammps" / "status.json").write_text("{}")  # an earlier run's (or Snakemake's empty folder)
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'rank failed here' >&2\nexit 3\n")
    broken.chmod(0o755)
    with pytest.raises(LammpsStageError) as caught:
        rollout_lammps(model, truth, metadata, tmp_path / "lammps", SETTINGS, COMPARISON,
                       log_file="logs/stars/rollout_lammps.log", python=str(broken))
    message = str(caught.value)
    assert "2 MPI ranks" in message and "exit status 3" in message and "no outputs were written" in message
    assert "logs/stars/rollout_lammps.log" in message and "rank failed here" in message
    assert [p.name for p in (tmp_path / "lammps").iterdir()] == ["status.json"]  # the earlier one, untouched
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".lammps")]  # no temporary folder left


def test_a_tiled_box_too_small_for_the_cutoff_is_refused_before_launching(tmp_path):
    truth, metadata = write_truth(tmp_path)
    table = pd.read_parquet(truth)
    table.assign(S=1.0).to_parquet(truth, index=False)  # given entropies: no teacher on the too small box
    model = write_model(tmp_path, h=1.1)  # L = 1.8 h: one box is too small, two along each axis are not
    with pytest.raises(LammpsStageError, match="longer than 2 h"):
        rollout_lammps(model, truth, metadata, tmp_path / "lammps", {**SETTINGS, "tiles": [2, 1, 1]}, COMPARISON,
                       python="/nonexistent/python")
    assert not (tmp_path / "lammps").exists()


def test_the_ranks_start_with_mpiexec_here_and_with_srun_inside_a_slurm_job():
    from mpd.distributed import SlurmJob
    from mpd.lammps_rollout import lammps_launch_command

    local = lammps_launch_command(3, ["--steps", "2"], python="py")
    assert local == [str(mpiexec_path()), "-np", "3", "py", "-m", "mpd.lammps_rollout", "--steps", "2"]
    job = SlurmJob("42", ("n1", "n2"))
    srun = lammps_launch_command(4, ["--steps", "2"], job=job, python="py")
    assert srun[:6] == ["srun", "--ntasks=4", "--nodes=2", "--cpus-per-task=1", "--kill-on-bad-exit=1", "--label"]
    assert srun[6:] == ["--mpi=pmi2", "py", "-m", "mpd.lammps_rollout", "--steps", "2"]
    assert "--mpi=pmi2" not in lammps_launch_command(4, [], job=job, srun_mpi="")


def test_the_config_section_is_checked_and_only_simulated_experiments_may_have_it():
    from mpd.config import ConfigError, validate_config
    from mpd.lammps_rollout import LAMMPS_DEFAULTS, lammps_settings

    bulk = {"synthetic": {"star_polymer": {"preset": "SP11"}}, "lammps": {"tiles": [2, 1, 1], "ranks": 3}}
    validate_config({"experiments": {"s": bulk}}, check_paths=False)
    assert lammps_settings(bulk["lammps"]) == {**LAMMPS_DEFAULTS, "tiles": [2, 1, 1], "ranks": 3}
    for bad in ({"tiles": [2, 2]}, {"ranks": 0}, {"frames": 2.5}, {"tile": [1, 1, 1]}):
        with pytest.raises(ConfigError, match="lammps"):
            validate_config({"experiments": {"s": {**bulk, "lammps": bad}}}, check_paths=False)
    # a twin's sheared 2D box (rollout_box_lammps, tests/test_lammps_twin.py); a recording has no box
    twin = {"synthetic": {"simulation": {"n_particles": 100}}, "lammps": {"tiles": [3, 2]}}
    validate_config({"experiments": {"t": twin}}, check_paths=False)
    recording = {"video": {"path": "x.tif", "pixel_size_um": 1.0, "frame_rate_hz": 10.0}, "lammps": {}}
    with pytest.raises(ConfigError, match="needs a simulated sample"):
        validate_config({"experiments": {"r": recording}}, check_paths=False)


# --- the rule -------------------------------------------------------------------------------------------------

TINY_STARS = {
    "synthetic": {"star_polymer": {"preset": "SP11", "n_polymers": 40, "equilibration_tau": 2,
                                   "sample_interval_tau": 0.1, "n_frames": 30}},
    "comparison": {"train_frames": 8, "rollout_factor": 2, "models": ["learned"]},
    "geometry": {"h_factor": 1.2},
    "model": {"training": {"epochs": 1}},
    "lammps": {"tiles": [2, 1, 1], "frames": 3, "ranks": 2},
}


def test_the_rule_writes_the_outputs_through_snakemake_in_its_emulated_env(two_ranks_start, tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"experiments": {"stars": TINY_STARS}}))
    base = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
            "--configfile", str(tmp_path / "config.yaml"), "--cores", "2"]
    env = {**os.environ, "MPD_EMULATE_CONDA_ENVS": "emulated-conda-envs.txt"}
    dry = subprocess.run([*base, "-n"], capture_output=True, text=True, timeout=300, check=False, env=env)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "rollout_lammps" in dry.stdout + dry.stderr  # `all` asks for it: the experiment has a lammps section
    target = "results/stars/lammps/status.json"
    done = subprocess.run([*base, target], capture_output=True, text=True, timeout=600, check=False, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    status = json.loads((tmp_path / target).read_text())
    assert status["ranks"] == 2 and status["status"] in ("completed", "diverged")
    assert status["n_particles"] == 2 * 40 and status["tiles"] == [2, 1, 1]
    table = pd.read_parquet(tmp_path / "results" / "stars" / "lammps" / "trajectories.parquet")
    assert table.groupby("frame")["particle"].count().eq(80).all()
    assert (tmp_path / "results" / "stars" / "lammps" / "trajectory.dump").stat().st_size > 0
    record = (tmp_path / "emulated-conda-envs.txt").read_text()
    assert "rollout_lammps" in record


# --- a user's LAMMPS data file as the sample ------------------------------------------------------------------


def write_data_file(path: Path, x, v, species, lengths) -> Path:
    """A LAMMPS data file (atom_style atomic) of this sample, its box's lower corner off the origin."""
    lo = np.array([-1.0, 0.5, 2.0])
    lines = ["LAMMPS data file of a test sample", "", f"{len(x)} atoms", f"{int(species.max()) + 1} atom types", ""]
    lines += [f"{lo[k]} {lo[k] + lengths[k]} {a}lo {a}hi" for k, a in enumerate("xyz")]
    lines += ["", "Masses", ""] + [f"{t + 1} 1.0" for t in range(int(species.max()) + 1)]
    lines += ["", "Atoms # atomic", ""]
    lines += [f"{i + 1} {species[i] + 1} {' '.join(str(c) for c in x[i] + lo)}" for i in range(len(x))]
    lines += ["", "Velocities", ""] + [f"{i + 1} {' '.join(str(c) for c in v[i])}" for i in range(len(x))]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_users_data_file_is_the_sample_instead_of_the_truth(tmp_path):
    truth, metadata = write_truth(tmp_path)
    model = write_model(tmp_path)
    rng = np.random.default_rng(9)
    lengths = np.array([2.2, 2.0, 2.4])  # another box than the truth's, in the truth's units
    x, v = rng.uniform(0, 1, (30, 3)) * lengths, 0.2 * rng.normal(size=(30, 3))
    species = rng.integers(0, 2, 30)
    data = write_data_file(tmp_path / "sample.data", x, v, species, lengths)
    settings = {**SETTINGS, "ranks": 1, "tiles": [1, 1, 1], "data_file": str(data)}
    status = rollout_lammps(model, truth, metadata, tmp_path / "lammps", settings, COMPARISON)
    assert status["n_particles"] == 30
    table = pd.read_parquet(tmp_path / "lammps" / "trajectories.parquet")
    first = table[table["frame"] == table["frame"].min()].sort_values("particle")
    np.testing.assert_array_equal(first["particle"], np.arange(30))  # atom id - 1
    np.testing.assert_array_equal(first["species"], species)
    np.testing.assert_allclose(first[["x", "y", "z"]].to_numpy(), x, atol=1e-9)  # relative to the box corner
    np.testing.assert_allclose(first[["vx", "vy", "vz"]].to_numpy(), v, atol=1e-9)
    # a type the model does not know stops with the file named
    write_data_file(tmp_path / "bad.data", x, v, species + 2, lengths)
    with pytest.raises(LammpsStageError, match="bad.data: atom types must be 1 .. 2"):
        rollout_lammps(model, truth, metadata, tmp_path / "bad", {**settings, "data_file": str(tmp_path / "bad.data")},
                       COMPARISON)


def test_a_missing_data_file_is_a_config_error(tmp_path):
    from mpd.config import ConfigError, validate_config

    stars = {**TINY_STARS, "lammps": {**TINY_STARS["lammps"], "data_file": "nowhere.data"}}
    with pytest.raises(ConfigError, match=r"experiments.stars.lammps.data_file: nowhere.data does not exist"):
        validate_config({"experiments": {"stars": stars}}, workdir=tmp_path)
