"""Star-polymer melts (SP11, SP51) in LAMMPS, coarse-grained to one point per polymer.

The second family of synthetic experiments: a 3D melt of star polymers whose
polymers' centres of mass (COM) are the "particles" a thermodynamically
consistent model is learned for (the paper's Table 1 systems SP11 and SP51).

What is simulated
-----------------
``n_polymers`` star polymers in a cubic periodic box, LJ units (sigma = 1,
epsilon = 1, bead mass m = 1, tau = sigma sqrt(m / epsilon)). Each polymer is
one core bead (atom type 1) bonded to ``arms`` arms of ``beads_per_arm``
beads (atom type 2), so a polymer has ``1 + arms * beads_per_arm`` beads:
SP11 = 10 arms of 1 bead (11 beads), SP51 = 10 arms of 5 beads (51 beads).
The two types interact identically; the type only marks the core.

- Bonds (Kremer-Grest): FENE, E = -0.5 K R0^2 ln(1 - (r / R0)^2) with
  K = 30 epsilon / sigma^2 and R0 = 1.5 sigma (``bond_style fene``; its own
  WCA term with epsilon = sigma = 1), ``special_bonds fene`` (the pair force
  is excluded between bonded beads only, as in Kremer-Grest).
- Pairs: purely repulsive WCA, LJ(epsilon = 1, sigma = 1) cut at
  2^(1/6) sigma = 1.122462 and shifted to zero there.
- Thermostat: a DPD thermostat (``pair_style dpd/tstat``, package DPD-BASIC,
  overlaid on the WCA pair with ``pair_style hybrid/overlay``): pairwise
  dissipative and random forces with friction ``gamma`` (m / tau) and
  cut-off ``dpd_cutoff`` (sigma) at temperature ``kT`` (epsilon), integrated
  with ``fix nve`` (velocity Verlet) at time step ``dt`` (tau). Every force
  is pairwise and central, so the total momentum is conserved: it is set to
  zero at the start (``velocity ... mom yes``) and checked to stay zero to
  round-off in every recorded frame. Bonded pairs are excluded from the
  thermostat too (special weight 0), which does not affect momentum.
- Density: the box side L = (n_polymers * beads_per_polymer / bead_density)^(1/3),
  so the bead number density is ``bead_density`` (default 0.85 sigma^-3, the
  usual Kremer-Grest melt density) and the polymer number density is
  bead_density / beads_per_polymer (0.0773 sigma^-3 for SP11, 0.01667 sigma^-3
  for SP51).

Parameters (:class:`StarPolymerParams`)
---------------------------------------
==================== ========= ==================================================================
key                  unit      meaning (SP11 / SP51 preset values)
==================== ========= ==================================================================
n_polymers           -         number of stars (256 / 128)
arms                 -         arms per star, f (10)
beads_per_arm        -         beads per arm (1 / 5)
bead_density         sigma^-3  bead number density (0.85)
kT                   epsilon   thermostat temperature (1.0)
gamma                m/tau     DPD friction coefficient (1.0)
dpd_cutoff           sigma     DPD thermostat cut-off (1.122462, = WCA cut-off)
dt                   tau       time step (0.005; stable with FENE K = 30 at kT = 1)
equilibration_tau    tau       dynamics with the final force field before the first frame (100 / 200)
sample_interval_tau  tau       time between frames; a multiple of dt (0.1)
n_frames             -         frames recorded (1000)
seed                 -         seeds the initial structure and every LAMMPS generator
==================== ========= ==================================================================

Initial structure and equilibration
-----------------------------------
Cores are placed uniformly at random in the final box (a lattice start left
measurable lattice order, S(q) ~ 10 at the lattice's wave vectors, after
200 tau of SP11 dynamics, because the stars move less than their own size in
that time); each arm starts along one of ``arms`` directions spread
evenly over the sphere (Fibonacci points, randomly rotated per polymer) and
continues as a persistent random walk of bond length 0.97 sigma (each step
the previous direction plus Gaussian noise of 0.6 per component,
renormalised). Beads of different stars then overlap, so the overlaps are
pushed off in three stages, all at the final box size and density:

1. ``PUSHOFF_STEPS`` steps with a soft cosine repulsion (``pair_style soft``,
   cut-off 2^(1/6)) whose amplitude is ramped from 1 to ``PUSHOFF_A_MAX``
   epsilon, bonds as stiff harmonic springs (K = ``PUSHOFF_BOND_K``, r0 = 0.97)
   so no bond can break, ``fix nve/limit`` (at most ``PUSHOFF_LIMIT`` sigma
   per step) and a Langevin thermostat (kT, damping 1 tau) to remove the heat.
2. ``WCA_LIMIT_STEPS`` steps with the real force field (FENE + WCA), still
   under ``fix nve/limit`` and the Langevin thermostat, to relax the remaining
   close pairs.
3. New velocities from a Gaussian at ``kT`` with zero total momentum, the
   Langevin and limit fixes removed, the DPD thermostat switched on, and
   ``equilibration_tau`` of production dynamics (``round(equilibration_tau / dt)``
   steps). Only then is the first frame recorded (t = 0).

Frames are recorded every ``sample_interval_tau`` (an integer number of steps)
for ``n_frames`` frames, through the LAMMPS Python interface after each
``run`` chunk. Each chunk is a full ``run`` (with set-up, i.e. re-neighbouring):
with ``run ... pre no`` LAMMPS's ``compute com/chunk`` occasionally returned a
stale COM (off by a box length), so the cheaper form is not used; it costs
little (default SP11: 25 s with ``pre no``, 26-34 s without, on a shared machine).

State of the default presets (measured, seed 1): SP51 is a liquid (COM
structure factor: shell-averaged peak 1.4, no Bragg peak). SP11 at bead
density 0.85 orders: the shell-averaged S(q) peak is 3.4 (above the
Hansen-Verlet freezing value 2.85) and a single-q peak grows from 27 to 46
over the 100 tau recorded, i.e. the 11-bead stars (compact soft spheres)
crystallise slowly; the COM MSD is only 0.6 sigma^2 in 100 tau. Each run
reports this in ``metadata.json`` (``diagnostics.com_structure_factor``).

Coarse-graining
---------------
Per polymer and frame, with all bead masses equal to 1:

- unwrapped COM ``xu, yu, zu`` = mean over its beads of the unwrapped bead
  position x + i L (i: LAMMPS image flags; the box's lower corner is 0), so it
  is continuous in time;
- wrapped COM ``x, y, z`` = the unwrapped COM folded into [0, L);
- COM velocity ``vx, vy, vz`` = mean of the bead velocities (exactly the
  polymer's momentum / its mass; no finite differences).

Every frame is cross-checked against LAMMPS's own ``compute com/chunk`` over
``compute chunk/atom molecule``; the largest difference is reported as
``max_com_chunk_deviation`` (round-off, about 1e-13 sigma).

Outputs (written atomically into ``out_dir``)
---------------------------------------------
``trajectories.parquet``, one row per polymer per frame: ``frame`` int64,
``t`` float64 (tau since the first frame), ``particle`` int64 (polymer id
0..n-1 = LAMMPS molecule id - 1), ``species`` int8 (0), ``x, y, z``,
``xu, yu, zu``, ``vx, vy, vz`` float64 (sigma, sigma / tau).
``metadata.json``: ``kind: "star_polymer"``, ``dimension: 3``, ``units: "lj"``,
box (``lx, ly, lz``, lower corner ``xlo, ylo, zlo`` = 0), the polymer's
architecture, densities, thermostat, bond and pair parameters, run lengths,
seed, diagnostics and software versions.

Public API: :class:`StarPolymerParams`, :func:`preset` (``"SP11"``,
``"SP51"``), :func:`check_params`, :func:`simulate_star_polymers`,
:class:`StarPolymerResult`, :func:`com_structure_factor`, :data:`TRAJECTORY_DTYPES` and the errors
:class:`StarPolymerParameterError` and :class:`StarPolymerError`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mpd.atomic import atomic_output_dir, prepare_parent
from mpd.provenance import software_versions
from twin import lammps_env
from twin.params import ParameterError

#: Kremer-Grest FENE bond: spring constant K (epsilon/sigma^2), maximum extent R0 (sigma), WCA part eps, sigma.
FENE_K = 30.0
FENE_R0 = 1.5
FENE_EPSILON = 1.0
FENE_SIGMA = 1.0
#: WCA pair: LJ epsilon, sigma and the cut-off 2^(1/6) sigma (energy shifted to 0 there).
LJ_EPSILON = 1.0
LJ_SIGMA = 1.0
WCA_CUTOFF = 1.122462
#: Bond length used to build the initial arms (sigma), about the FENE + WCA equilibrium length.
INITIAL_BOND = 0.97
#: Persistence of the initial random-walk arms: Gaussian noise per component added to the unit step.
ARM_NOISE = 0.6
#: Push-off: steps, final amplitude of the soft repulsion (epsilon), harmonic bond K (epsilon/sigma^2,
#: LAMMPS E = K (r - r0)^2), displacement limit per step (sigma) and time step (tau).
PUSHOFF_STEPS = 2000
PUSHOFF_A_MAX = 100.0
PUSHOFF_BOND_K = 200.0
PUSHOFF_LIMIT = 0.05
PUSHOFF_DT = 0.005
#: Steps with the real force field under fix nve/limit before the DPD dynamics start.
WCA_LIMIT_STEPS = 1000
#: Neighbour-list skin (sigma).
SKIN = 0.4
#: Ghost-atom cut-off (sigma): longer than any bond can be (FENE R0) plus the skin, as LAMMPS asks.
COMM_CUTOFF = 3.0

#: LAMMPS packages and styles the star-polymer melt needs.
REQUIRED_PACKAGES: tuple[str, ...] = ("MOLECULE", "DPD-BASIC")
REQUIRED_STYLES: tuple[tuple[str, str], ...] = (
    ("atom", "bond"), ("bond", "fene"), ("bond", "harmonic"), ("pair", "lj/cut"), ("pair", "soft"),
    ("pair", "dpd/tstat"), ("pair", "hybrid/overlay"), ("fix", "nve"), ("fix", "nve/limit"),
    ("fix", "langevin"), ("fix", "adapt"), ("compute", "com/chunk"), ("compute", "chunk/atom"),
)

TRAJECTORY_DTYPES = {
    "frame": "int64", "t": "float64", "particle": "int64", "species": "int8",
    "x": "float64", "y": "float64", "z": "float64", "xu": "float64", "yu": "float64", "zu": "float64",
    "vx": "float64", "vy": "float64", "vz": "float64",
}


class StarPolymerParameterError(ParameterError):
    """A star-polymer parameter is out of range; the message names the key."""


class StarPolymerError(RuntimeError):
    """LAMMPS is missing a needed package, failed, or produced output that fails a consistency check."""


@dataclass(frozen=True)
class StarPolymerParams:
    """A star-polymer melt run; see the module docstring for units and meaning. Defaults: SP11."""

    n_polymers: int = 256
    arms: int = 10
    beads_per_arm: int = 1
    bead_density: float = 0.85          # sigma^-3
    kT: float = 1.0                     # epsilon
    gamma: float = 1.0                  # m / tau, DPD friction
    dpd_cutoff: float = WCA_CUTOFF      # sigma
    dt: float = 0.005                   # tau
    equilibration_tau: float = 100.0    # tau
    sample_interval_tau: float = 0.1    # tau
    n_frames: int = 1000
    seed: int = 1

    @property
    def beads_per_polymer(self) -> int:
        return 1 + self.arms * self.beads_per_arm

    @property
    def n_beads(self) -> int:
        return self.n_polymers * self.beads_per_polymer

    @property
    def box_length(self) -> float:
        return (self.n_beads / self.bead_density) ** (1.0 / 3.0)

    @property
    def polymer_number_density(self) -> float:
        return self.bead_density / self.beads_per_polymer


PRESETS: dict[str, StarPolymerParams] = {
    # The Table 1 protocol (mpd.horizon defaults): 40 training frames, 5 held back, 25 x 40 rolled out, + 1.
    # SP11 at the melt's 0.85 freezes (docs/twin.md); at 0.6 it is a liquid. Frames every 0.1 tau: the
    # centres of mass keep 93 % (SP11) of their velocity correlation over one frame; at 0.5 tau (37 %) the
    # learned model's one-step integrator overheats, at 1 tau SP51's velocities decorrelate entirely (4 %).
    "SP11": StarPolymerParams(n_polymers=256, beads_per_arm=1, bead_density=0.6, equilibration_tau=100.0,
                              sample_interval_tau=0.1, n_frames=1046),
    "SP51": StarPolymerParams(n_polymers=128, beads_per_arm=5, equilibration_tau=200.0, sample_interval_tau=0.1,
                              n_frames=1046),
}


def preset(name: str) -> StarPolymerParams:
    """The named preset, ``"SP11"`` (10 arms of 1 bead) or ``"SP51"`` (10 arms of 5 beads)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise StarPolymerParameterError(f"unknown star-polymer preset {name!r}; known: {', '.join(PRESETS)}") from None


def params_from_config(section, where: str = "synthetic.star_polymer") -> StarPolymerParams:
    """The parameters of a config section: ``preset`` (default SP11) with the section's other keys over it.

    Checked (`check_params`); errors name ``where.key``.
    """
    values = dict(section or {})
    name = values.pop("preset", "SP11")
    known = {f.name for f in dataclasses.fields(StarPolymerParams)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise StarPolymerParameterError(f"unknown key {where}.{unknown[0]}; allowed: preset, {', '.join(sorted(known))}")
    try:
        params = dataclasses.replace(preset(name), **values)
        check_params(params)
    except StarPolymerParameterError as error:
        raise StarPolymerParameterError(f"{where}: {error}") from None
    return params


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def check_params(params: StarPolymerParams) -> tuple[int, int]:
    """Validate ``params``; returns (equilibration steps, steps per frame).

    Raises StarPolymerParameterError naming the offending key.
    """
    p = params

    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise StarPolymerParameterError(f"{key} must be {what}, got {getattr(p, key)!r}")

    need(_is_int(p.n_polymers) and p.n_polymers >= 2, "n_polymers", "an integer >= 2")
    need(_is_int(p.arms) and p.arms >= 1, "arms", "an integer >= 1")
    need(_is_int(p.beads_per_arm) and p.beads_per_arm >= 1, "beads_per_arm", "an integer >= 1")
    need(_is_real(p.bead_density) and 0.0 < p.bead_density <= 1.2, "bead_density", "in (0, 1.2] sigma^-3")
    need(_is_real(p.kT) and p.kT > 0, "kT", "> 0")
    need(_is_real(p.gamma) and p.gamma > 0, "gamma", "> 0")
    need(_is_real(p.dpd_cutoff) and 0.5 <= p.dpd_cutoff <= 3.0, "dpd_cutoff", "in [0.5, 3] sigma")
    need(_is_real(p.dt) and 0.0 < p.dt <= 0.01, "dt", "in (0, 0.01] tau (FENE bonds are unstable above)")
    need(_is_real(p.equilibration_tau) and p.equilibration_tau >= 0, "equilibration_tau", ">= 0")
    need(_is_real(p.sample_interval_tau) and p.sample_interval_tau > 0, "sample_interval_tau", "> 0")
    need(_is_int(p.n_frames) and p.n_frames >= 1, "n_frames", "an integer >= 1")
    need(_is_int(p.seed) and 0 <= p.seed < 2**31, "seed", "an integer in [0, 2^31)")
    box = p.box_length
    need(box >= 2.0 * max(WCA_CUTOFF, p.dpd_cutoff) + 2 * SKIN, "n_polymers",
         f"large enough for a box side >= {2.0 * (max(WCA_CUTOFF, p.dpd_cutoff) + SKIN):.3g} sigma "
         f"(box side {box:.3g})")
    ratio = p.sample_interval_tau / p.dt
    spf = round(ratio)
    if spf < 1 or abs(ratio - spf) > 1e-6 * ratio:
        raise StarPolymerParameterError(
            f"sample_interval_tau={p.sample_interval_tau!r} must be a multiple of dt={p.dt!r} "
            f"(ratio {ratio:.6g} is not an integer)")
    return round(p.equilibration_tau / p.dt), int(spf)


@dataclass(frozen=True)
class StarPolymerResult:
    """Where ``simulate_star_polymers`` wrote its outputs, and summary numbers of the run."""

    out_dir: Path
    trajectories_path: Path
    metadata_path: Path
    n_polymers: int
    n_beads: int
    n_frames: int
    box_length: float
    polymer_number_density: float     # measured: n_polymers / box volume read back from LAMMPS
    bead_density: float               # measured: n_beads / box volume
    max_total_momentum: float         # max over frames of |sum_polymers M v_com|
    max_relative_momentum: float      # max over frames of |sum M v_com| / sum |M v_com|
    max_com_chunk_deviation: float    # max |COM (numpy) - COM (LAMMPS compute com/chunk)|, sigma
    mean_temperature: float           # bead kinetic temperature averaged over the frames, epsilon
    max_structure_factor: float       # largest single-q COM S(q) in the last frame (tens: ordered COMs)
    peak_structure_factor: float      # peak of the shell-averaged COM S(q) in the last frame (liquid: < ~2.85)
    equilibration_steps: int
    steps_per_frame: int
    lammps_wall_s: float
    wall_s: float
    lammps_version: str


# ---------------------------------------------------------------------------
# initial structure


def _sphere_directions(n: int) -> np.ndarray:
    """n unit vectors spread evenly over the sphere (Fibonacci lattice)."""
    k = np.arange(n) + 0.5
    z = 1.0 - 2.0 * k / n
    phi = math.pi * (3.0 - math.sqrt(5.0)) * k
    r = np.sqrt(1.0 - z * z)
    return np.column_stack([r * np.cos(phi), r * np.sin(phi), z])


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _initial_structure(p: StarPolymerParams, rng: np.random.Generator) -> np.ndarray:
    """Unwrapped bead positions (n_beads, 3), polymer-major: core, then arm 0 beads 0.., arm 1, ..."""
    box = p.box_length
    # uniformly random cores: a lattice start leaves long-lived order in these slow, dense melts
    cores = rng.uniform(0.0, box, size=(p.n_polymers, 3))
    dirs0 = _sphere_directions(p.arms)
    pos = np.empty((p.n_polymers, p.beads_per_polymer, 3))
    for i in range(p.n_polymers):
        pos[i, 0] = cores[i]
        dirs = dirs0 @ _random_rotation(rng).T
        for a in range(p.arms):
            prev, d = cores[i], dirs[a]
            for b in range(p.beads_per_arm):
                if b > 0:
                    d = d + ARM_NOISE * rng.normal(size=3)
                    d /= np.linalg.norm(d)
                prev = prev + INITIAL_BOND * d
                pos[i, 1 + a * p.beads_per_arm + b] = prev
    return pos.reshape(-1, 3)


def _write_data_file(path: Path, p: StarPolymerParams, pos: np.ndarray) -> None:
    box = p.box_length
    bpp, nb = p.beads_per_polymer, p.beads_per_arm
    bonds = []
    for i in range(p.n_polymers):
        base = i * bpp + 1
        for a in range(p.arms):
            first = base + 1 + a * nb
            bonds.append((base, first))
            bonds += [(first + b, first + b + 1) for b in range(nb - 1)]
    lines = [
        "LAMMPS data file: star-polymer melt (twin/star_polymer.py)",
        "",
        f"{p.n_beads} atoms",
        f"{len(bonds)} bonds",
        "2 atom types",
        "1 bond types",
        f"{p.arms + 2} extra special per atom",
        "",
        f"0.0 {box!r} xlo xhi",
        f"0.0 {box!r} ylo yhi",
        f"0.0 {box!r} zlo zhi",
        "",
        "Masses",
        "",
        "1 1.0",
        "2 1.0",
        "",
        "Atoms # bond",
        "",
    ]
    # wrapped positions plus image flags, so that every polymer is whole in unwrapped coordinates
    image = np.floor(pos / box).astype(np.int64)
    wrapped = pos - image * box
    image[wrapped >= box] += 1
    wrapped[wrapped >= box] -= box
    for k, ((x, y, z), (ix, iy, iz)) in enumerate(zip(wrapped.tolist(), image.tolist())):
        mol, within = divmod(k, bpp)
        lines.append(f"{k + 1} {mol + 1} {1 if within == 0 else 2} {x!r} {y!r} {z!r} {ix} {iy} {iz}")
    lines += ["", "Bonds", ""]
    lines += [f"{k + 1} 1 {i} {j}" for k, (i, j) in enumerate(bonds)]
    path.write_text("\n".join(lines) + "\n")


def com_structure_factor(x: np.ndarray, box: float, kmax: int = 12) -> tuple[float, float, float]:
    """Order indicator of one frame of COM positions (n, 3) in a cubic box of side ``box``.

    S(q) = |sum_j exp(i q.x_j)|^2 / n on the grid q = 2 pi k / box, 0 < max |k_i| <= kmax. Returns (largest S
    at a single q, largest shell average of S over |q| bins of width 2 pi / box, the |q| of that shell). In a
    liquid both are about 3 or less (the shell peak stays below ~2.85, Hansen-Verlet); a single-q value of
    tens (a Bragg peak, of order n for a perfect crystal) means the COMs have ordered.
    """
    k = np.arange(-kmax, kmax + 1)
    grid = np.stack(np.meshgrid(k, k, k, indexing="ij"), -1).reshape(-1, 3)
    grid = grid[np.abs(grid).sum(axis=1) > 0]
    q = 2.0 * np.pi / box * grid
    s = np.empty(len(q))
    for a in range(0, len(q), 4096):
        s[a:a + 4096] = np.abs(np.exp(1j * (x @ q[a:a + 4096].T)).sum(axis=0)) ** 2 / len(x)
    shell = np.rint(np.linalg.norm(grid, axis=1)).astype(int)
    shell_mean = np.bincount(shell, weights=s) / np.maximum(np.bincount(shell), 1)
    shell_mean[kmax + 1:] = 0.0  # shells beyond kmax are incomplete
    best = int(np.argmax(shell_mean))
    return float(s.max()), float(shell_mean[best]), 2.0 * np.pi * best / box


# ---------------------------------------------------------------------------
# LAMMPS input


def _q(path: Path) -> str:
    s = str(path)
    if '"' in s:
        raise ValueError(f"path must not contain a double quote: {s}")
    return f'"{s}"'


def _setup_commands(p: StarPolymerParams, data: Path, seeds: list[int], eq_steps: int) -> list[str]:
    """Everything up to and including the equilibration run (the frames are run chunk by chunk)."""
    kt = p.kT
    return [
        "# Star-polymer melt (twin/star_polymer.py), LJ units",
        "units lj",
        "dimension 3",
        "boundary p p p",
        "atom_style bond",
        f"read_data {_q(data)}",
        f"neighbor {SKIN!r} bin",
        "neigh_modify every 1 delay 0 check yes",
        f"comm_modify vel yes cutoff {COMM_CUTOFF!r}",
        "special_bonds fene",
        "thermo 1000",
        "thermo_style custom step temp pe ebond press",
        "thermo_modify lost error",
        "# 1) soft push-off with harmonic bonds, displacement-limited, Langevin",
        "bond_style harmonic",
        f"bond_coeff 1 {PUSHOFF_BOND_K!r} {INITIAL_BOND!r}",
        f"pair_style soft {WCA_CUTOFF!r}",
        "pair_coeff * * 1.0",
        f"variable pushA equal ramp(1.0,{PUSHOFF_A_MAX!r})",
        "fix pushoff all adapt 1 pair soft a * * v_pushA",
        f"velocity all create {kt!r} {seeds[0]} mom yes rot no dist gaussian",
        f"fix limit all nve/limit {PUSHOFF_LIMIT!r}",
        f"fix lang all langevin {kt!r} {kt!r} 1.0 {seeds[1]}",
        f"timestep {PUSHOFF_DT!r}",
        f"run {PUSHOFF_STEPS}",
        "unfix pushoff",
        "# 2) the real force field (FENE + WCA), still displacement-limited",
        "bond_style fene",
        f"bond_coeff 1 {FENE_K!r} {FENE_R0!r} {FENE_EPSILON!r} {FENE_SIGMA!r}",
        f"pair_style lj/cut {WCA_CUTOFF!r}",
        f"pair_coeff * * {LJ_EPSILON!r} {LJ_SIGMA!r} {WCA_CUTOFF!r}",
        "pair_modify shift yes",
        f"run {WCA_LIMIT_STEPS}",
        "unfix limit",
        "unfix lang",
        "# 3) production: WCA + DPD thermostat, velocity Verlet, zero total momentum",
        f"pair_style hybrid/overlay lj/cut {WCA_CUTOFF!r} dpd/tstat {kt!r} {kt!r} {p.dpd_cutoff!r} {seeds[2]}",
        f"pair_coeff * * lj/cut {LJ_EPSILON!r} {LJ_SIGMA!r} {WCA_CUTOFF!r}",
        f"pair_coeff * * dpd/tstat {p.gamma!r} {p.dpd_cutoff!r}",
        "pair_modify pair lj/cut shift yes",
        f"velocity all create {kt!r} {seeds[3]} mom yes rot no dist gaussian",
        "fix integrate all nve",
        f"timestep {p.dt!r}",
        "compute polymer all chunk/atom molecule",
        "compute com all com/chunk polymer",
        f"run {eq_steps}",
        "reset_timestep 0",
        "run 0 post no",
    ]


# ---------------------------------------------------------------------------
# running


def _open(log: Path):
    try:
        return lammps_env.open_lammps(["-screen", "none", "-log", str(log), "-nocite"],
                                      packages=REQUIRED_PACKAGES, styles=REQUIRED_STYLES)
    except lammps_env.LammpsUnavailableError as exc:
        raise StarPolymerError(f"{exc} (star-polymer melts need the LAMMPS packages "
                               f"{', '.join(REQUIRED_PACKAGES)})") from exc


def _command(lmp, cmd: str) -> None:
    if cmd.startswith("#"):
        return
    try:
        lmp.command(cmd)
    except Exception as exc:  # LAMMPS raises a bare Exception with its error text
        raise StarPolymerError(f"LAMMPS failed on '{cmd}': {exc}".strip()) from exc


def _gather(lmp, name: str, kind: int, n: int) -> np.ndarray:
    """Per-atom array sorted by atom id (gather_atoms unpacks image flags into 3 ints)."""
    arr = lmp.gather_atoms(name, kind, 3)
    return np.ctypeslib.as_array(arr).reshape(n, 3).copy()


def simulate_star_polymers(params: StarPolymerParams, out_dir: Path, workdir: Path | None = None, *,
                           on_frame: Callable[[int, np.ndarray, np.ndarray], None] | None = None
                           ) -> StarPolymerResult:
    """Simulate a star-polymer melt and write its polymers' COM trajectories to ``out_dir``.

    ``out_dir`` gets ``trajectories.parquet`` and ``metadata.json`` (module
    docstring), replacing an existing folder atomically. ``workdir`` keeps
    the LAMMPS files (data file, input, log); by default a temporary folder
    is used and removed. ``on_frame(frame, bead_xu, bead_v)`` (for tests and
    inspection) is called for every recorded frame with the unwrapped bead
    positions and velocities, (n_beads, 3) arrays in atom-id order (polymer i
    owns rows i*beads_per_polymer ... (i+1)*beads_per_polymer - 1, core first).

    Raises StarPolymerParameterError for invalid parameters, PermissionError
    for an unwritable destination, StarPolymerError when LAMMPS lacks a
    package or the run fails a check.
    """
    t_start = time.perf_counter()
    eq_steps, spf = check_params(params)
    out_dir = Path(out_dir).absolute()
    prepare_parent(out_dir)
    p = params
    n, bpp, n_beads, nf = p.n_polymers, p.beads_per_polymer, p.n_beads, p.n_frames
    rng = np.random.default_rng(p.seed)
    pos0 = _initial_structure(p, rng)
    seeds = [int(s) for s in rng.integers(1, 900_000_000, size=4)]
    mol = np.repeat(np.arange(n), bpp)

    com_u = np.empty((nf, n, 3))
    vcom = np.empty((nf, n, 3))
    temps = np.empty(nf)
    chunk_dev = 0.0
    worst = None
    with ExitStack() as stack:
        if workdir is None:
            wd = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="star-lammps-")))
        else:
            wd = Path(workdir).absolute()
            wd.mkdir(parents=True, exist_ok=True)
        data, script, log = wd / "init.data", wd / "in.lammps", wd / "log.lammps"
        _write_data_file(data, p, pos0)
        cmds = _setup_commands(p, data, seeds, eq_steps)
        script.write_text("\n".join(cmds + [f"# then {nf} frames: run {spf} between frames"]) + "\n")

        t_lmp = time.perf_counter()
        lmp = _open(log)
        stack.callback(lmp.close)
        version = str(lmp.version())
        from lammps import LMP_STYLE_GLOBAL, LMP_TYPE_ARRAY
        for cmd in cmds:
            _command(lmp, cmd)
        boxlo, boxhi, *_ = lmp.extract_box()
        lo, hi = np.array(boxlo), np.array(boxhi)
        lengths = hi - lo
        if lmp.get_natoms() != n_beads:
            raise StarPolymerError(f"LAMMPS has {lmp.get_natoms()} atoms, expected {n_beads}")
        ids = np.ctypeslib.as_array(lmp.gather_atoms("molecule", 0, 1)).copy()
        if not np.array_equal(ids - 1, mol):
            raise StarPolymerError("molecule ids are not the polymer ids of the data file")
        for f in range(nf):
            if f > 0:
                _command(lmp, f"run {spf} post no")  # pre yes: with pre no, compute com/chunk went stale
            x = _gather(lmp, "x", 1, n_beads)
            img = _gather(lmp, "image", 0, n_beads)
            v = _gather(lmp, "v", 1, n_beads)
            xu = x - lo + img * lengths
            com_u[f] = xu.reshape(n, bpp, 3).mean(axis=1)
            vcom[f] = v.reshape(n, bpp, 3).mean(axis=1)
            temps[f] = float(np.sum(v * v)) / (3 * n_beads - 3)
            ref = np.array(lmp.numpy.extract_compute("com", LMP_STYLE_GLOBAL, LMP_TYPE_ARRAY), dtype=float)
            dev = np.abs(ref - lo - com_u[f]).max(axis=1)
            if dev.max() > chunk_dev:
                chunk_dev = float(dev.max())
                worst = (f, int(np.argmax(dev)), ref[np.argmax(dev)] - lo, com_u[f][np.argmax(dev)])
            if on_frame is not None:
                on_frame(f, xu, v)
        lammps_wall = time.perf_counter() - t_lmp

    # --- consistency checks
    volume = float(np.prod(lengths))
    if not np.allclose(lengths, p.box_length, rtol=1e-12):
        raise StarPolymerError(f"box lengths {lengths.tolist()} differ from the expected {p.box_length!r}")
    tol = 1e-9 * p.box_length
    if chunk_dev > tol:
        raise StarPolymerError(f"COM differs from LAMMPS compute com/chunk by {chunk_dev:.3g} sigma "
                               f"(frame, polymer, LAMMPS, numpy: {worst})")
    m_poly = float(bpp)
    mom = m_poly * vcom
    total = np.linalg.norm(mom.sum(axis=1), axis=1)
    scale = np.linalg.norm(mom, axis=2).sum(axis=1)
    rel = total / np.maximum(scale, np.finfo(float).tiny)
    if float(rel.max()) > 1e-9:
        raise StarPolymerError(f"total momentum is not conserved: |P| / sum |p| reaches {rel.max():.3g}")

    com_w = np.mod(com_u, lengths)
    com_w[com_w >= lengths] = 0.0
    s_first = com_structure_factor(com_w[0], float(lengths[0]))
    s_last = com_structure_factor(com_w[-1], float(lengths[0]))
    frame_col = np.repeat(np.arange(nf, dtype=np.int64), n)
    traj = pd.DataFrame({
        "frame": frame_col,
        "t": frame_col * (spf * p.dt),
        "particle": np.tile(np.arange(n, dtype=np.int64), nf),
        "species": np.zeros(nf * n, np.int8),
        "x": com_w[..., 0].ravel(), "y": com_w[..., 1].ravel(), "z": com_w[..., 2].ravel(),
        "xu": com_u[..., 0].ravel(), "yu": com_u[..., 1].ravel(), "zu": com_u[..., 2].ravel(),
        "vx": vcom[..., 0].ravel(), "vy": vcom[..., 1].ravel(), "vz": vcom[..., 2].ravel(),
    }).astype(TRAJECTORY_DTYPES)
    meta = {
        "kind": "star_polymer",
        "dimension": 3,
        "units": "lj",
        "lx": float(lengths[0]), "ly": float(lengths[1]), "lz": float(lengths[2]),
        "xlo": 0.0, "ylo": 0.0, "zlo": 0.0,
        "n_polymers": n, "arms": p.arms, "beads_per_arm": p.beads_per_arm, "beads_per_polymer": bpp,
        "n_beads": n_beads, "bead_mass": 1.0, "polymer_mass": m_poly,
        "bead_density": n_beads / volume, "polymer_number_density": n / volume,
        "kT": p.kT, "dt": p.dt,
        "thermostat": {"style": "dpd/tstat", "gamma": p.gamma, "cutoff": p.dpd_cutoff, "integrator": "fix nve"},
        "bond": {"style": "fene", "K": FENE_K, "R0": FENE_R0, "epsilon": FENE_EPSILON, "sigma": FENE_SIGMA,
                 "special_bonds": "fene (lj 0 1 1)"},
        "pair": {"style": "lj/cut (WCA)", "epsilon": LJ_EPSILON, "sigma": LJ_SIGMA, "cutoff": WCA_CUTOFF,
                 "shift": True},
        "pushoff": {"steps": PUSHOFF_STEPS, "soft_A_max": PUSHOFF_A_MAX, "bond_K": PUSHOFF_BOND_K,
                    "limit": PUSHOFF_LIMIT, "dt": PUSHOFF_DT, "wca_limit_steps": WCA_LIMIT_STEPS},
        "equilibration_tau": p.equilibration_tau, "equilibration_steps": eq_steps,
        "sample_interval_tau": spf * p.dt, "steps_per_frame": spf, "n_frames": nf,
        "seed": p.seed, "lammps_seeds": seeds,
        "particle_ids": "particle = LAMMPS molecule id - 1; t = 0 at the first frame",
        "coarse_graining": "xu = mean unwrapped bead position, v = mean bead velocity (equal masses)",
        "star_polymer_params": dataclasses.asdict(p),
        "diagnostics": {"max_relative_momentum": float(rel.max()), "max_total_momentum": float(total.max()),
                        "max_com_chunk_deviation": chunk_dev, "mean_temperature": float(temps.mean()),
                        "com_structure_factor": {
                            "definition": "twin.star_polymer.com_structure_factor: max single-q S, "
                                          "peak shell-averaged S and its |q|, of the wrapped COMs",
                            "first_frame": list(s_first), "last_frame": list(s_last)}},
        "lammps_version": version,
        "software": {**software_versions("lammps", "mpich", "numpy", "pandas", "pyarrow"),
                     "lammps_library": version},
    }
    with atomic_output_dir(out_dir) as tmp:
        traj.to_parquet(tmp / "trajectories.parquet", index=False)
        (tmp / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")

    return StarPolymerResult(
        out_dir=out_dir, trajectories_path=out_dir / "trajectories.parquet", metadata_path=out_dir / "metadata.json",
        n_polymers=n, n_beads=n_beads, n_frames=nf, box_length=float(lengths[0]),
        polymer_number_density=n / volume, bead_density=n_beads / volume,
        max_total_momentum=float(total.max()), max_relative_momentum=float(rel.max()),
        max_com_chunk_deviation=chunk_dev, mean_temperature=float(temps.mean()),
        max_structure_factor=s_last[0], peak_structure_factor=s_last[1],
        equilibration_steps=eq_steps, steps_per_frame=spf, lammps_wall_s=lammps_wall,
        wall_s=time.perf_counter() - t_start, lammps_version=version,
    )
