"""Ground truth of the digital twin: Brownian dynamics of a sheared bidisperse monolayer (LAMMPS).

What is simulated
-----------------
``n_particles`` disks of two sizes (species 0 = small, diameter
``diameter_small_um``; species 1 = large, ``diameter_ratio`` times bigger;
number fraction ``fraction_small`` of small ones) in a 2D triclinic periodic
box sized to the area fraction ``packing_fraction``, interacting through the
pair law of :mod:`twin.potential` (tabulated for LAMMPS ``pair_style table``).
Start: uniformly random centres from ``seed``; overlaps are removed by an
energy minimisation with a harmonic repulsion (``pair_style harmonic/cut``), then a
second minimisation with the real potential, then ``equilibration_s`` of
unsheared Brownian dynamics. Recording: ``n_frames`` frames every
1/``frame_rate_hz`` s while the box is sheared cyclically.

Units
-----
LAMMPS ``units lj`` with LJ length = 1 µm, LJ energy = 1 kT (so LAMMPS
temperature 1.0 is the thermal energy; k_B = 1) and LJ time = 1 s. Masses are
set to 1 but never enter: ``fix brownian`` integrates the overdamped Langevin
equation dx = (F / gamma_t) dt + sqrt(2 kT dt / gamma_t) N(0, 1), which has no
inertia, and the minimiser (conjugate gradients) does not use masses. The
translational friction of a species is gamma_t = kT / D, with D_small =
``diffusion_small_um2_s`` and D_large = D_small * d_small / d_large
(Stokes-Einstein scaling with size), in kT s / µm^2.

Why the shear is imposed by deforming the box
---------------------------------------------
The box tilt follows xy(t) = amplitude * Ly * sin(2 pi t / period_s)
(``fix deform ... xy wiggle ... remap x``), starting at the first recorded
frame, so the imposed strain gamma(t) = xy / Ly is known exactly. With
``remap x`` every particle position is moved affinely with the box at every
step: this is the homogeneous imposed strain that drives an overdamped solid,
and the particles' non-affine response comes from the interactions and the
noise alone. The box stays periodic in both directions (Lees-Edwards-like), so
there are no walls: no wall-induced layering, no slip at a driven boundary,
and no ambiguity about the strain actually felt by the sample. That is the
situation of the imaged region in the interfacial-stress rheometer, where the
driving needle is far away from the field of view and the region seen by the
camera deforms homogeneously. Driven walls would add boundary artefacts that
the experiment does not have in its field of view.

Recording and outputs
---------------------
The run is one LAMMPS input (written to ``in.lammps`` in the work directory);
positions are dumped every frame as unwrapped ``xu, yu`` (LAMMPS: xu = x + ix*Lx
+ iy*xy, yu = y + iy*Ly for the triclinic box, so they are continuous in time
and include the affine shear) with ``%.17g`` precision and read back. The
wrapped ``x, y`` are recomputed from ``xu, yu`` and each frame's box (LAMMPS's
own wrapped coordinates may sit slightly outside the cell between
re-neighbourings). The box's lower-left corner is the origin (xlo = ylo = 0).
``out_dir`` receives ``trajectories.parquet``, ``strain.csv`` and
``metadata.json`` as documented in ``docs/data_schema.md``; they are written
to a temporary directory next to ``out_dir`` and renamed into place, so an
error leaves no partial output. ``particle`` = LAMMPS atom id - 1.

Reproducibility: the initial positions come from numpy's ``default_rng(seed)``
and the Brownian noise from LAMMPS generators seeded from the same stream; a
run with the same parameters and the same number of MPI ranks gives
bit-identical trajectories. ``mpi_ranks > 1`` runs the same input with the
wheel's ``lmp`` executable under the mpich wheel's ``mpiexec`` (results then
differ in the last bits from a 1-rank run, since the summation order changes).
"""
from __future__ import annotations

import json
import math
import subprocess
import tempfile
import time
import warnings
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from mpd.atomic import atomic_output_dir, prepare_parent
from mpd.provenance import software_versions
from twin import lammps_env
from twin.params import ParameterError, SimulationParams, to_dict
from twin.potential import write_pair_table

#: A frame whose largest pair overlap exceeds this fraction of d_ij triggers a warning.
MAX_OVERLAP_WARN = 0.10
#: Push-off: stiffness (kT/um^2) of the harmonic repulsion k (d_ij - r)^2 (pair_style harmonic/cut) used
#: only to remove the overlaps of the random initial positions. Its force is largest at r = 0, so
#: nearly coincident particles are pushed apart (a cosine "soft" potential has zero force there and
#: can leave pairs stacked on top of each other at high packing).
PUSHOFF_STIFFNESS = 100.0
#: Push-off minimisation: relative energy tolerance and iteration cap (it only has to remove the
#: large random overlaps; the real potential is minimised afterwards).
PUSHOFF_ETOL = 1.0e-6
PUSHOFF_MAXITER = 2000
#: Points per species pair in the LAMMPS pair table.
TABLE_POINTS = 8000

TRAJECTORY_DTYPES = {
    "frame": "int64", "t": "float64", "particle": "int64", "species": "int8", "diameter": "float64",
    "x": "float64", "y": "float64", "xu": "float64", "yu": "float64", "vx": "float64", "vy": "float64",
}


class SimulationError(RuntimeError):
    """LAMMPS failed or produced output that fails a consistency check."""


@dataclass(frozen=True)
class SimulationResult:
    """Where ``simulate`` wrote the truth, and a few summary numbers of the run."""

    out_dir: Path
    trajectories_path: Path
    strain_path: Path
    metadata_path: Path
    n_particles: int
    n_frames: int
    n_steps: int                      # integration steps (equilibration + recording)
    steps_per_frame: int
    lx_um: float
    ly_um: float
    max_overlap_fraction: float       # max over recorded frames and pairs of (d_ij - r) / d_ij
    rms_nonaffine_displacement_um: float  # first to last frame, affine part and mean drift removed
    lammps_wall_s: float              # seconds spent in LAMMPS (set-up, minimisation, dynamics)
    wall_s: float                     # seconds for the whole call
    lammps_version: str


# ---------------------------------------------------------------------------
# set-up


@dataclass(frozen=True)
class _Setup:
    n_small: int
    n_large: int
    diameters: tuple[float, float]
    box_l: float
    steps_per_frame: int
    eq_steps: int
    rec_steps: int
    frame_dt: float


def _steps_per_frame(params: SimulationParams) -> int:
    if params.frame_rate_hz <= 0 or params.timestep_s <= 0:
        raise ParameterError(f"frame_rate_hz and timestep_s must be > 0, got {params.frame_rate_hz}, "
                             f"{params.timestep_s}")
    frame_dt = 1.0 / params.frame_rate_hz
    ratio = frame_dt / params.timestep_s
    n = round(ratio)
    if n < 1 or abs(ratio - n) > 1e-6 * ratio:
        hint = frame_dt / max(math.ceil(ratio), 1)
        raise ParameterError(
            f"timestep_s={params.timestep_s!r} does not divide the frame interval 1/frame_rate_hz={frame_dt!r} s "
            f"(ratio {ratio:.6g} is not an integer); choose e.g. timestep_s={hint!r}"
        )
    return int(n)


def _check_params(params: SimulationParams) -> _Setup:
    p = params
    if not isinstance(p.n_particles, int) or p.n_particles < 2:
        raise ParameterError(f"n_particles must be an integer >= 2, got {p.n_particles!r}")
    if not 0.0 < p.packing_fraction < 0.95:
        raise ParameterError(f"packing_fraction must be in (0, 0.95), got {p.packing_fraction!r}")
    if p.diameter_small_um <= 0 or p.diameter_ratio <= 0:
        raise ParameterError("diameter_small_um and diameter_ratio must be > 0")
    if not 0.0 <= p.fraction_small <= 1.0:
        raise ParameterError(f"fraction_small must be in [0, 1], got {p.fraction_small!r}")
    if p.diffusion_small_um2_s <= 0:
        raise ParameterError(f"diffusion_small_um2_s must be > 0, got {p.diffusion_small_um2_s!r}")
    if p.equilibration_s < 0:
        raise ParameterError(f"equilibration_s must be >= 0, got {p.equilibration_s!r}")
    if not isinstance(p.seed, int) or p.seed < 0:
        raise ParameterError(f"seed must be a non-negative integer, got {p.seed!r}")
    if not isinstance(p.mpi_ranks, int) or p.mpi_ranks < 1:
        raise ParameterError(f"mpi_ranks must be an integer >= 1, got {p.mpi_ranks!r}")
    s = p.shear
    if not abs(s.amplitude) < 0.5:
        raise ParameterError(f"shear.amplitude must be in (-0.5, 0.5) (no box flips), got {s.amplitude!r}")
    if s.period_s <= 0 or s.cycles <= 0:
        raise ParameterError("shear.period_s and shear.cycles must be > 0")
    it = p.interaction
    if it.dipolar_kT < 0 or it.contact_stiffness_kT_um2 <= 0 or it.cutoff_diameters <= 1.0:
        raise ParameterError("interaction: need dipolar_kT >= 0, contact_stiffness_kT_um2 > 0, cutoff_diameters > 1")
    spf = _steps_per_frame(p)
    if p.n_frames < 2:
        raise ParameterError(f"need at least 2 frames, got {p.n_frames} (cycles * period_s * frame_rate_hz + 1)")

    n_small = round(p.n_particles * p.fraction_small)
    n_large = p.n_particles - n_small
    d_s = float(p.diameter_small_um)
    d_l = float(p.diameter_small_um * p.diameter_ratio)
    area = math.pi / 4.0 * (n_small * d_s**2 + n_large * d_l**2)
    box_l = math.sqrt(area / p.packing_fraction)
    rc_max = it.cutoff_diameters * max(d_s, d_l)
    if box_l < 2.0 * rc_max:
        raise ParameterError(
            f"box side {box_l:.3g} um is shorter than twice the interaction cut-off ({rc_max:.3g} um): "
            f"increase n_particles"
        )
    return _Setup(
        n_small=n_small, n_large=n_large, diameters=(d_s, d_l), box_l=box_l, steps_per_frame=spf,
        eq_steps=round(p.equilibration_s / p.timestep_s),
        rec_steps=spf * (p.n_frames - 1), frame_dt=1.0 / p.frame_rate_hz,
    )


def _initial_state(params: SimulationParams, setup: _Setup):
    rng = np.random.default_rng(params.seed)
    species = rng.permutation(np.r_[np.zeros(setup.n_small, np.int8), np.ones(setup.n_large, np.int8)])
    pos = rng.uniform(0.0, setup.box_l, size=(params.n_particles, 2))
    # LAMMPS' Marsaglia generator accepts seeds in [1, 900000000]; fix brownian adds the MPI rank
    noise_seeds = [int(v) for v in rng.integers(1, 899_000_000, size=2)]
    return species, pos, noise_seeds


def _write_data_file(path: Path, species, pos, box_l: float) -> None:
    lines = [
        "Digital-twin initial configuration (twin/simulate.py); units: um",
        "",
        f"{len(species)} atoms",
        "2 atom types",
        "",
        f"0.0 {box_l!r} xlo xhi",
        f"0.0 {box_l!r} ylo yhi",
        "-0.5 0.5 zlo zhi",
        "0.0 0.0 0.0 xy xz yz",
        "",
        "Masses",
        "",
        "1 1.0",
        "2 1.0",
        "",
        "Atoms # atomic",
        "",
    ]
    lines += [f"{i + 1} {int(sp) + 1} {px!r} {py!r} 0.0"
              for i, (sp, px, py) in enumerate(zip(species.tolist(), pos[:, 0].tolist(), pos[:, 1].tolist()))]
    path.write_text("\n".join(lines) + "\n")


def _q(path: Path) -> str:
    s = str(path)
    if '"' in s:
        raise ValueError(f"path must not contain a double quote: {s}")
    return f'"{s}"'


def _commands(params: SimulationParams, setup: _Setup, files: dict[str, Path], tables, noise_seeds) -> list[str]:
    p = params
    d_s, d_l = setup.diameters
    d = {(0, 0): d_s, (0, 1): 0.5 * (d_s + d_l), (1, 1): d_l}
    skin = 0.1 * min(d_s, d_l)
    gammas = [1.0 / p.diffusion_small_um2_s, 1.0 / (p.diffusion_small_um2_s * d_s / d_l)]
    cmds = [
        "# Digital-twin ground truth (twin/simulate.py). Units lj: length 1 um, energy 1 kT, time 1 s.",
        "units lj",
        "dimension 2",
        "boundary p p p",
        "atom_style atomic",
        f"read_data {_q(files['data'])}",
        f"neighbor {skin!r} bin",
        "neigh_modify every 1 delay 0 check yes",
        "thermo 2000",
        "thermo_style custom step time pe press pxy",
        "thermo_modify lost error norm yes",
        "fix twod all enforce2d",
        "# 1) push-off of the random initial positions with a harmonic repulsion",
        "pair_style harmonic/cut",
    ]
    cmds += [f"pair_coeff {i + 1} {j + 1} {PUSHOFF_STIFFNESS!r} {dij!r}" for (i, j), dij in d.items()]
    cmds += [
        "min_style cg",
        f"minimize {PUSHOFF_ETOL!r} 1.0e-4 {PUSHOFF_MAXITER} {10 * PUSHOFF_MAXITER}",
        "# 2) the real potential (twin/potential.py), minimised",
        f"pair_style table linear {TABLE_POINTS}",
    ]
    cmds += [f"pair_coeff {i + 1} {j + 1} {_q(files['table'])} {sec.keyword} {sec.cutoff!r}"
             for (i, j), sec in tables.items()]
    cmds += [
        "minimize 0.0 1.0e-4 20000 200000",
        "# 3) overdamped Brownian dynamics, gamma_t = kT / D per species",
        "group small type 1",
        "group large type 2",
        f"fix bd_small small brownian 1.0 {noise_seeds[0]} gamma_t {gammas[0]!r} rng gaussian",
        f"fix bd_large large brownian 1.0 {noise_seeds[1]} gamma_t {gammas[1]!r} rng gaussian",
        f"timestep {p.timestep_s!r}",
        f"run {setup.eq_steps}",
        "# 4) cyclic shear by box deformation; t = 0 at the first frame",
        "reset_timestep 0",
        (f"fix shear all deform 1 xy wiggle {p.shear.amplitude * setup.box_l!r} {p.shear.period_s!r} "
         "remap x flip no units box"),
        f"dump traj all custom {setup.steps_per_frame} {_q(files['dump'])} id type xu yu",
        "dump_modify traj sort id format float %.17g",
        f"run {setup.rec_steps}",
    ]
    return cmds


# ---------------------------------------------------------------------------
# running LAMMPS


def _run_library(cmds: list[str], log: Path) -> str:
    lmp = lammps_env.open_lammps(["-screen", "none", "-log", str(log), "-nocite"])
    try:
        for cmd in cmds:
            if cmd.startswith("#"):
                continue
            try:
                lmp.command(cmd)
            except Exception as exc:  # LAMMPS raises a bare Exception with its error text
                raise SimulationError(f"LAMMPS failed on '{cmd}': {exc}".strip()) from exc
        return str(lmp.version())
    finally:
        lmp.close()


def _lammps_version() -> str:
    lmp = lammps_env.open_lammps()
    try:
        return str(lmp.version())
    finally:
        lmp.close()


def _run_mpi(cmds: list[str], workdir: Path, ranks: int) -> str:
    version = _lammps_version()  # also checks that LAMMPS and its packages are there
    script = workdir / "in.lammps"
    log = workdir / "log.lammps"
    argv = [str(lammps_env.mpiexec_path()), "-n", str(ranks), str(lammps_env.lammps_executable()),
            "-in", str(script), "-log", str(log), "-screen", "none", "-nocite"]
    proc = subprocess.run(argv, check=False, cwd=workdir, env=lammps_env.mpi_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise SimulationError(
            f"LAMMPS under mpiexec ({' '.join(argv)}) exited with {proc.returncode}.\n"
            f"stderr: {proc.stderr[-2000:]}\nlog tail:\n{tail}"
        )
    return version


# ---------------------------------------------------------------------------
# reading the dump back


def _read_dump(path: Path, n_atoms: int, n_frames: int):
    """(steps, box rows [xlo_b, xhi_b, xy, ylo_b, yhi_b], ids, types, xu, yu), arrays over frames."""
    lines = path.read_text().splitlines()
    block = 9 + n_atoms
    if len(lines) != block * n_frames:
        raise SimulationError(f"dump {path} has {len(lines)} lines, expected {n_frames} frames of "
                              f"{n_atoms} atoms ({block * n_frames} lines)")
    steps = np.empty(n_frames, np.int64)
    box = np.empty((n_frames, 5))
    data = np.empty((n_frames, n_atoms, 4))
    for f in range(n_frames):
        b = f * block
        if lines[b] != "ITEM: TIMESTEP" or int(lines[b + 3]) != n_atoms or not lines[b + 8].startswith(
                "ITEM: ATOMS id type xu yu"):
            raise SimulationError(f"unexpected dump layout in {path} at frame {f}")
        steps[f] = int(lines[b + 1])
        xlo_b, xhi_b, xy = (float(v) for v in lines[b + 5].split())
        ylo_b, yhi_b = (float(v) for v in lines[b + 6].split()[:2])
        box[f] = (xlo_b, xhi_b, xy, ylo_b, yhi_b)
        data[f] = np.array(" ".join(lines[b + 9:b + block]).split(), dtype=float).reshape(n_atoms, 4)
    ids = data[:, :, 0].astype(np.int64)
    types = data[:, :, 1].astype(np.int64)
    return steps, box, ids, types, data[:, :, 2], data[:, :, 3]


def _wrap(xu, yu, xy, lx: float, ly: float):
    """Wrap unwrapped positions (origin at the box corner) into the sheared cell; xy per frame."""
    xy = np.asarray(xy)[:, None]
    lam_y = yu / ly
    lam_x = (xu - xy * lam_y) / lx
    lam_x = lam_x - np.floor(lam_x)
    lam_y = lam_y - np.floor(lam_y)
    return lx * lam_x + xy * lam_y, ly * lam_y


def _max_overlap_fraction(x, y, diam, lx: float, ly: float, xy: float) -> float:
    """Largest (d_ij - r) / d_ij over all pairs in one frame (negative if nothing touches)."""
    h = np.array([[lx, xy], [0.0, ly]])
    lam = np.linalg.solve(h, np.vstack([x, y])).T
    lam = np.mod(lam, 1.0)
    lam[lam >= 1.0] = 0.0
    radius = diam.max() * np.linalg.norm(np.linalg.inv(h), 2) * 1.01
    pairs = cKDTree(lam, boxsize=1.0).query_pairs(radius, output_type="ndarray")
    if len(pairs) == 0:
        return -1.0
    i, j = pairs[:, 0], pairs[:, 1]
    dlam = lam[j] - lam[i]
    dlam -= np.round(dlam)
    best = None
    for shift in (-1.0, 0.0, 1.0):
        dl = dlam + np.array([shift, 0.0])
        dr = dl @ h.T
        r = np.hypot(dr[:, 0], dr[:, 1])
        best = r if best is None else np.minimum(best, r)
    d_ij = 0.5 * (diam[i] + diam[j])
    return float(np.max((d_ij - best) / d_ij))


# ---------------------------------------------------------------------------
# writing


# ---------------------------------------------------------------------------
# public entry point


def simulate(params: SimulationParams, out_dir: Path, workdir: Path | None = None) -> SimulationResult:
    """Run the twin's Brownian-dynamics ground truth and write it to ``out_dir``.

    ``out_dir`` gets ``trajectories.parquet``, ``strain.csv`` and
    ``metadata.json`` (docs/data_schema.md), replacing an existing directory
    atomically. ``workdir`` keeps the LAMMPS files (input, table, data, dump,
    log) for inspection; by default a temporary directory is used and removed.
    Raises ParameterError for invalid parameters (e.g. a timestep that does
    not divide the frame interval), PermissionError for an unwritable
    destination, LammpsUnavailableError when LAMMPS cannot be loaded and
    SimulationError when the run fails.
    """
    t_start = time.perf_counter()
    setup = _check_params(params)
    out_dir = Path(out_dir).absolute()
    prepare_parent(out_dir)  # fail before a long run, not after it
    n, n_frames, spf = params.n_particles, params.n_frames, setup.steps_per_frame
    lx = ly = setup.box_l

    with ExitStack() as stack:
        if workdir is None:
            wd = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="twin-lammps-")))
        else:
            wd = Path(workdir).absolute()
            wd.mkdir(parents=True, exist_ok=True)
        files = {"data": wd / "init.data", "table": wd / "pair.table", "dump": wd / "traj.dump",
                 "script": wd / "in.lammps", "log": wd / "log.lammps"}
        if files["dump"].exists():
            files["dump"].unlink()
        species0, pos0, noise_seeds = _initial_state(params, setup)
        _write_data_file(files["data"], species0, pos0, setup.box_l)
        tables = write_pair_table(files["table"], setup.diameters, params.interaction, TABLE_POINTS)
        cmds = _commands(params, setup, files, tables, noise_seeds)
        files["script"].write_text("\n".join(cmds) + "\n")

        t_lmp = time.perf_counter()
        if params.mpi_ranks == 1:
            version = _run_library(cmds, files["log"])
        else:
            version = _run_mpi(cmds, wd, params.mpi_ranks)
        lammps_wall = time.perf_counter() - t_lmp

        steps, box, ids, types, xu, yu = _read_dump(files["dump"], n, n_frames)

    # --- consistency checks on what LAMMPS wrote
    if not np.array_equal(steps, np.arange(n_frames) * spf):
        raise SimulationError(f"dump steps {steps[:3]}... are not multiples of {spf}")
    if not (ids == np.arange(1, n + 1)[None, :]).all():
        raise SimulationError("dump is not sorted by atom id or atoms were lost")
    if not (types == species0[None, :].astype(np.int64) + 1).all():
        raise SimulationError("atom types changed during the run")
    xy = box[:, 2]
    xlo = box[:, 0] - np.minimum(0.0, xy)
    xhi = box[:, 1] - np.maximum(0.0, xy)
    ylo, yhi = box[:, 3], box[:, 4]
    if not (np.allclose(xhi - xlo, lx, rtol=1e-12) and np.allclose(yhi - ylo, ly, rtol=1e-12)):
        raise SimulationError("box side lengths changed during the run")
    t = np.arange(n_frames) / params.frame_rate_hz
    omega = 2.0 * np.pi / params.shear.period_s
    strain = xy / ly
    expected = params.shear.amplitude * np.sin(omega * t)
    if not np.allclose(strain, expected, rtol=0, atol=1e-9):
        raise SimulationError(f"box strain deviates from the imposed one by {np.abs(strain - expected).max():.3g}")
    strain_rate = params.shear.amplitude * omega * np.cos(omega * t)

    # --- positions relative to the box's lower-left corner, wrapped copies, velocities
    xu = xu - xlo[:, None]
    yu = yu - ylo[:, None]
    x, y = _wrap(xu, yu, xy, lx, ly)
    vx = np.gradient(xu, setup.frame_dt, axis=0)
    vy = np.gradient(yu, setup.frame_dt, axis=0)
    diam_of_species = np.array(setup.diameters)
    diam = diam_of_species[species0]

    overlaps = np.array([_max_overlap_fraction(x[f], y[f], diam, lx, ly, xy[f]) for f in range(n_frames)])
    max_overlap = float(overlaps.max())
    if max_overlap > MAX_OVERLAP_WARN:
        warnings.warn(f"largest pair overlap is {max_overlap:.1%} of d_ij (> {MAX_OVERLAP_WARN:.0%}): the "
                      f"contact is too soft or the timestep too long for these parameters", stacklevel=2)
    dx = xu[-1] - xu[0] - (strain[-1] - strain[0]) * yu[0]
    dy = yu[-1] - yu[0]
    rms_na = float(np.sqrt(np.mean((dx - dx.mean()) ** 2 + (dy - dy.mean()) ** 2)))

    frame_col = np.repeat(np.arange(n_frames, dtype=np.int64), n)
    traj = pd.DataFrame({
        "frame": frame_col,
        "t": frame_col / params.frame_rate_hz,
        "particle": np.tile(np.arange(n, dtype=np.int64), n_frames),
        "species": np.tile(species0.astype(np.int8), n_frames),
        "diameter": np.tile(diam, n_frames),
        "x": x.ravel(), "y": y.ravel(), "xu": xu.ravel(), "yu": yu.ravel(),
        "vx": vx.ravel(), "vy": vy.ravel(),
    }).astype(TRAJECTORY_DTYPES)
    strain_df = pd.DataFrame({"frame": np.arange(n_frames, dtype=np.int64), "t": t,
                              "strain": strain, "strain_rate": strain_rate})
    meta = {
        "lx_um": lx, "ly_um": ly, "xlo_um": 0.0, "ylo_um": 0.0,
        "n_particles": n, "n_small": setup.n_small, "n_large": setup.n_large,
        "packing_fraction": params.packing_fraction,
        "diameters_um": list(setup.diameters),
        "diameter_small_um": setup.diameters[0], "diameter_large_um": setup.diameters[1],
        "diffusion_um2_s": [params.diffusion_small_um2_s,
                            params.diffusion_small_um2_s * setup.diameters[0] / setup.diameters[1]],
        "seed": params.seed, "frame_rate_hz": params.frame_rate_hz, "n_frames": n_frames,
        "timestep_s": params.timestep_s, "steps_per_frame": spf,
        "equilibration_steps": setup.eq_steps, "recording_steps": setup.rec_steps,
        "strain_definition": "gamma = xy / ly of the periodic box; gamma(t) = amplitude * sin(2 pi t / period_s)",
        "box": "triclinic, edge vectors a = (lx_um, 0), b = (gamma * ly_um, ly_um); lower-left corner at (0, 0)",
        "units": {"lammps_units": "lj", "length": "1 um", "energy": "1 kT", "time": "1 s",
                  "mass": "1 (irrelevant: overdamped dynamics)"},
        "potential": ("shifted-force dipolar dipolar_kT*(d_ij/r)^3 truncated at cutoff_diameters*d_ij "
                      "plus harmonic contact (k/2)(d_ij-r)^2 for r<d_ij; see twin/potential.py"),
        "particle_ids": "particle = LAMMPS atom id - 1",
        "mpi_ranks": params.mpi_ranks,
        "simulation_params": to_dict(params),
        "diagnostics": {"max_overlap_fraction": max_overlap, "rms_nonaffine_displacement_um": rms_na},
        "software": {**software_versions("lammps", "mpich", "numpy", "pandas", "pyarrow", "scipy"),
                     "lammps_library": version},
    }

    with atomic_output_dir(out_dir) as tmp:
        traj.to_parquet(tmp / "trajectories.parquet", index=False)
        strain_df.to_csv(tmp / "strain.csv", index=False)
        (tmp / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")

    return SimulationResult(
        out_dir=out_dir, trajectories_path=out_dir / "trajectories.parquet", strain_path=out_dir / "strain.csv",
        metadata_path=out_dir / "metadata.json", n_particles=n, n_frames=n_frames,
        n_steps=setup.eq_steps + setup.rec_steps, steps_per_frame=spf, lx_um=lx, ly_um=ly,
        max_overlap_fraction=max_overlap, rms_nonaffine_displacement_um=rms_na,
        lammps_wall_s=lammps_wall, wall_s=time.perf_counter() - t_start, lammps_version=version,
    )
