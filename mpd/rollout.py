"""Rollouts of the learned dynamics in a field of view (physics.md, Rollout).

Integrator: `mpd.model.euler_maruyama_step`, one or more steps per frame.
Units: the model's nondimensional units (lengths / h, times in frames,
velocities in h per frame; `mpd.geometry.Scales` converts); the stage
(`mpd.stage.rollout_model`) converts back to µm and µm/s.

Pieces, composable and small:

* `mpd.pairs` (shared with training): the model's `PairTensors` of one
  snapshot, and the Verlet list that keeps them up to date during a rollout.
* `ObservedFrames`: the data a rollout needs (snapshots per frame, reference
  rule, periodic boxes, exterior rule), from a trajectory table or from the
  snapshot-pair dataset.
* `rollout`: the integration loop, returning frames, per-frame conservation
  diagnostics and a status (completed or diverged).

Hand-over policy (which particles the model predicts)
------------------------------------------------------
The exterior is a band of the field of view (physics.md, Rollout): particles
in it, and those of a driving boundary, are prescribed from data at every
step; the set changes with time as particles move (the geometry stage's rule,
`mpd.geometry.masks.exterior_mask`). At the start frame the interior particles
are predicted. After every frame:

* a predicted particle whose *model* position has entered the exterior band is
  handed back to the data: from now on it is prescribed, at its observed
  position and velocity (it is dropped if the data no longer has it, e.g. it
  left the field of view);
* a prescribed particle whose *observed* position lies in the interior is
  handed to the model, which predicts it from its observed state onwards;
* an observed particle closer than `duplicate_distance` to a predicted one is
  the same particle under a new id (a tracker that lost it for a frame gives it
  a new one; particles do not appear in the interior): it is left out, the
  model's copy stands (counted in the status as duplicates_left_out);
* every other observed particle is prescribed: position and velocity from the
  data (`ObservedFrames`, the model's kinematic velocities), entropy from the
  teacher on the current configuration. A prescribed particle exists in a
  frame only if the data has it there.

So the model never carries a particle into the band, where its deviation from
the data would make it collide with the prescribed particles around it (a
fixed predicted set did, and long window rollouts blew up at the window's
edge). Each hand-over starts a new `segment` of the particle (a column of the
output): statistics of the model's motion are taken within segments, inside
the interior (`analysis`, edge margin = the exterior width). With
`substeps > 1` prescribed particles move linearly between frames (those present
in both frames; the others are held), and hand-overs happen at frame
boundaries only. A closed periodic box (no exterior rule) predicts every
particle for the whole rollout.

Reference configuration (strain bonds): the reference rule of the geometry
stage (`lag` or `cycle`, docs/geometry.md). The reference of frame f is the
rollout's own configuration at that frame when it lies within the rollout,
else the observed one, exactly as the training pairs saw the data's.
"""
from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.spatial import cKDTree

from mpd.atomic import atomic_write_bytes, atomic_write_json
from mpd.geometry.domain import Box, OrthoBox, Window
from mpd.geometry.kinematics import affine_flow, backward_velocities, shear_box_flow
from mpd.geometry.masks import exterior_mask
from mpd.model import (
    CounterNoise,
    MetriplecticModel,
    PairTensors,
    State,
    closed_energy,
    euler_maruyama_step,
    restore_energy,
)
from mpd.model.geometry import pair_kinds
from mpd.model.streams import NOISE_STREAMS
from mpd.pairs import VerletList, minimum_image_shift, reference_bonds
from mpd.params import RolloutParams

log = logging.getLogger(__name__)

DIVERGED = "diverged"
COMPLETED = "completed"


# ---------------------------------------------------------------------------
# Devices and dtypes
# ---------------------------------------------------------------------------


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """CUDA when available for "auto"/None, else CPU; an explicit choice is honoured (and checked)."""
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but torch sees no CUDA device; use 'cpu' or 'auto'")
    return device


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    return {"float32": torch.float32, "float64": torch.float64}[name]


# ---------------------------------------------------------------------------
# What the rollout needs from the data
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """Observed particles of one frame in model units: ids sorted, x (N, 2) / h, v (N, 2) * dt / h."""

    particle: np.ndarray
    x: np.ndarray
    v: np.ndarray


@dataclass(frozen=True)
class ExteriorRule:
    """The geometry stage's exterior rule (`mpd.geometry.masks.exterior_mask`) in model units.

    length_um converts model positions to µm; window_um, width_um,
    boundary_geometry_um as in the geometry metadata.
    """

    length_um: float
    width_um: float
    window_um: tuple | None = None
    boundary_particles: tuple | None = None
    boundary_geometry_um: tuple | None = None

    def __call__(self, x: np.ndarray, particle: np.ndarray) -> np.ndarray:
        return exterior_mask(
            np.asarray(x, np.float64) * self.length_um, self.width_um, window=self.window_um,
            particle_ids=particle, boundary_particles=self.boundary_particles,
            boundary_geometry=self.boundary_geometry_um,
        )

    @property
    def window(self) -> Window | None:
        """The field of view in model units."""
        if self.window_um is None:
            return None
        return Window(*(float(v) / self.length_um for v in self.window_um))

    @classmethod
    def from_geometry(cls, geometry: Mapping, length_um: float) -> ExteriorRule:
        """From the geometry stage's parameters (`metadata.json` "parameters", or the dataset's "geometry")."""
        window = geometry.get("window_um")
        boundary = geometry.get("boundary_particles")
        polyline = geometry.get("boundary_geometry_um")
        return cls(
            length_um=float(length_um),
            width_um=float(geometry.get("exterior_width_um") or geometry.get("h_um") or length_um),
            window_um=None if window is None else tuple(float(v) for v in window),
            boundary_particles=None if boundary is None else tuple(boundary),
            boundary_geometry_um=None if polyline is None else tuple(map(tuple, polyline)),
        )


@dataclass
class ObservedFrames:
    """Observed data in model units, per frame.

    snapshots: frame -> Snapshot (every observed particle of the frame).
    reference_frame: frame -> its reference frame (-1: none), the geometry stage's rule.
    references: frame -> Snapshot of that frame's observed reference configuration
        (only the particles that have one; v unused), when it is not itself a snapshot.
    boxes: frame -> periodic Box in model units, or None for an open window.
    exterior: the exterior rule, or None (no exterior, e.g. a periodic box).
    flows: frame t -> the 6 coefficients (u0x, u0y, gxx, gxy, gyx, gyy) of the background
        flow u(x) = u0 + G x during t -> t+1 in model units (h per frame, 1/frame;
        `mpd.geometry.kinematics`); a frame without one has a zero flow.
    species: particle id -> species label (tracking.species); an id not listed is species 0.

    A closed periodic box (no exterior rule) needs a snapshot of the start frame
    only, and boxes for every frame: nothing is prescribed after the start.
    """

    snapshots: dict[int, Snapshot]
    reference_frame: dict[int, int] = field(default_factory=dict)
    references: dict[int, Snapshot] = field(default_factory=dict)
    boxes: dict[int, Box] | None = None
    exterior: ExteriorRule | None = None
    flows: dict[int, np.ndarray] = field(default_factory=dict)
    species: dict[int, int] = field(default_factory=dict)

    def box(self, frame: int) -> Box | None:
        if self.boxes is None:
            return None
        if frame not in self.boxes:
            raise KeyError(f"no periodic box known for frame {frame}")
        return self.boxes[frame]

    def flow(self, frame: int) -> np.ndarray:
        """The background flow's 6 coefficients during frame -> frame + 1 (zero when unknown)."""
        return np.asarray(self.flows.get(frame, np.zeros(6)), np.float64)

    def reference_snapshot(self, frame: int) -> Snapshot | None:
        if frame in self.references:
            return self.references[frame]
        return self.snapshots.get(self.reference_frame.get(frame, -1))


def observed_from_table(
    table: pd.DataFrame,
    length_um: float,
    time_s: float,
    *,
    reference_frame: Mapping[int, int] | None = None,
    boxes: Mapping[int, Box] | None = None,
    exterior: ExteriorRule | None = None,
    velocity: str = "backward",
    flows: Mapping[int, np.ndarray] | None = None,
) -> ObservedFrames:
    """ObservedFrames from a trajectory table (frame, particle, x, y µm, vx, vy µm/s; docs/data_schema.md).

    length_um (h) and time_s (dt) are the model's scales; boxes (periodic data)
    are in model units already (lengths / h), as `mpd.training.DatasetFrames` has them.
    velocity: "backward" (default) recomputes every velocity as the kinematic
    backward difference of the positions, the estimator the model was trained on
    (`mpd.geometry.kinematics`); "tracked" keeps the table's vx, vy.
    flows: frame -> background-flow coefficients in model units; default: the
    exterior particles' affine flow of each step (open window), the box's shear
    (periodic), exactly as the geometry stage computes them for training.
    A particle observed in a single frame has no difference quotient: it is
    given the background flow's velocity at its position.
    """
    velocity_scale = length_um / time_s
    table = table.sort_values(["frame", "particle"], kind="stable")
    frame = table["frame"].to_numpy(np.int64)
    particle = table["particle"].to_numpy(np.int64)
    x_um = table[["x", "y"]].to_numpy(np.float64)
    if velocity == "backward":
        minimum_image = None
        if boxes is not None:
            def minimum_image(f, d):
                b = boxes[f]
                return Box(b.lx * length_um, b.ly * length_um, b.xy * length_um).minimum_image(d)
        v_um, _ = backward_velocities(frame, particle, x_um, 1.0 / time_s, minimum_image)
    elif velocity == "tracked":
        v_um = table[["vx", "vy"]].to_numpy(np.float64)
    else:
        raise ValueError(f"velocity must be 'backward' or 'tracked', got {velocity!r}")
    x = x_um / length_um
    v = v_um / velocity_scale
    frames, starts, counts = np.unique(frame, return_index=True, return_counts=True)
    snapshots = {}
    for f, s, c in zip(frames, starts, counts):
        rows = slice(s, s + c)
        if len(np.unique(particle[rows])) != c:
            raise ValueError(f"frame {f} lists a particle id twice")
        snapshots[int(f)] = Snapshot(particle[rows], x[rows], v[rows])
    if flows is None:
        flows = observed_flows(snapshots, boxes, exterior)
    for f, snap in snapshots.items():  # a lone observation has no difference: it moves with the flow
        lone = ~np.isfinite(snap.v).all(axis=1)
        if lone.any():
            c = np.asarray(flows.get(f, flows.get(f - 1, np.zeros(6))), np.float64)
            snap.v[lone] = c[:2] + snap.x[lone] @ c[2:].reshape(2, 2).T
    species = {}
    if "species" in table.columns:
        first = table.drop_duplicates("particle")
        species = dict(zip(first["particle"].to_numpy(np.int64).tolist(), first["species"].to_numpy(np.int64).tolist()))
    return ObservedFrames(snapshots, dict(reference_frame or {}), {}, None if boxes is None else dict(boxes), exterior,
                          dict(flows), species)


def observed_flows(snapshots: Mapping[int, Snapshot], boxes: Mapping[int, Box] | None,
                   exterior: ExteriorRule | None) -> dict[int, np.ndarray]:
    """Background flow of every step f -> f+1 in model units (the geometry stage's rule, `mpd.geometry.kinematics`)."""
    flows = {}
    if boxes is not None:  # every step the boxes cover, also where no snapshot is (a closed box)
        for f in sorted(boxes):
            if f + 1 in boxes:
                flows[f] = shear_box_flow(boxes[f].xy, boxes[f + 1].xy, boxes[f].ly, 1.0)
        return flows
    for f in sorted(snapshots):
        if f + 1 not in snapshots:
            continue
        a, b = snapshots[f], snapshots[f + 1]
        common, ia, ib = np.intersect1d(a.particle, b.particle, assume_unique=True, return_indices=True)
        outside = exterior(a.x[ia], common) if exterior is not None else np.ones(len(common), bool)
        flows[f] = affine_flow(a.x[ia][outside], b.x[ib][outside], 1.0)
    return flows


# ---------------------------------------------------------------------------
# The rollout
# ---------------------------------------------------------------------------


@dataclass
class RolloutResult:
    """frames: one row per particle per frame (model units): frame, particle, x, y, vx, vy, S, predicted,
    interior. conservation: one row per frame. status: "completed" or "diverged", with a message."""

    frames: pd.DataFrame
    conservation: pd.DataFrame
    status: dict


class _Divergence(Exception):
    """The state stopped being physical at `frame`."""

    def __init__(self, frame: int, message: str):
        super().__init__(message)
        self.frame = int(frame)


def rollout(
    model: MetriplecticModel,
    observed: ObservedFrames,
    params: RolloutParams | None = None,
    *,
    start_frame: int,
    n_frames: int,
    predicted: np.ndarray | None = None,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    on_frame: Callable[[int], None] | None = None,
) -> RolloutResult:
    """Integrate the model from `start_frame` for `n_frames` frames (see the module docstring).

    predicted: ids the model integrates from the start (all must be observed at the start);
        default: the start frame's interior particles by observed.exterior
        (all observed particles when there is no exterior rule). With an exterior
        rule the set then changes by the hand-over policy (module docstring).
    generator: the noise's random stream (default: seeded with params.seed on the device); with
        params.noise_stream "counter" none may be given: each model step k (substeps counted from 0 at
        the start) draws from `CounterNoise(params.seed, k, particle ids)`, so a pair's noise does
        not depend on the pair list's order.
    Stops early, keeping the frames so far, when the state diverges (non-finite
    values, a predicted particle moving more than max_step_displacement in
    one frame or leaving the window by escape_margin, or the energy per
    particle blowing up); the status then says why and where.
    """
    params = params or RolloutParams()
    device = resolve_device(device if device is not None else params.device)
    dtype = resolve_dtype(params.dtype)
    use_counter = _use_counter(params.noise_stream, generator)
    if generator is None and not use_counter:
        generator = torch.Generator(device=device).manual_seed(params.seed)
    t_start = time.perf_counter()
    frames = list(range(int(start_frame), int(start_frame) + int(n_frames) + 1))
    if frames[0] not in observed.snapshots:
        raise ValueError(f"the start frame {frames[0]} is not in the data")
    first = observed.snapshots[frames[0]]
    if predicted is None:
        exterior = observed.exterior(first.x, first.particle) if observed.exterior else np.zeros(len(first.x), bool)
        predicted = first.particle[~exterior]
    predicted = np.unique(np.asarray(predicted, np.int64))
    if not np.isin(predicted, first.particle).all():
        raise ValueError(f"predicted particles must be observed at the start frame {frames[0]}")
    # A closed system (every particle predicted, no exterior rule: a periodic box) needs no data after the start.
    closed = observed.exterior is None and len(predicted) == len(first.particle)
    missing = [f for f in frames if f not in observed.snapshots]
    if missing and not closed:
        raise ValueError(f"frames {missing[:5]} of the rollout are not in the data (a rollout with prescribed "
                         f"particles needs every frame)")
    if observed.boxes is not None:
        no_box = [f for f in frames if f not in observed.boxes]
        if no_box:
            raise ValueError(f"frames {no_box[:5]} of the rollout have no periodic box")
    data_frames = [f for f in frames if f in observed.snapshots]

    # Slots: every particle that takes part, in one fixed numbering for the whole rollout.
    ids = np.unique(np.concatenate([predicted] + [observed.snapshots[f].particle for f in data_frames]))
    n_slots = len(ids)
    is_predicted = np.isin(ids, predicted)
    placeholder = np.full((n_slots, 2), np.nan)
    for f in reversed(data_frames):  # each slot's first observed position stands in while it is absent
        snap = observed.snapshots[f]
        placeholder[np.searchsorted(ids, snap.particle)] = snap.x

    def slots(particle: np.ndarray) -> np.ndarray:
        return np.searchsorted(ids, particle)

    slot_species = np.array([observed.species.get(int(p), 0) for p in ids], np.int64)
    if len(slot_species) and slot_species.max() >= model.n_species:
        raise ValueError(f"the data has species labels up to {int(slot_species.max())}, but the model was trained "
                         f"with {model.n_species} species (model.pt's n_species)")

    as_tensor = {"dtype": dtype, "device": device}
    counter: CounterNoise | None = None
    if use_counter:  # checks every id once; each step selects the active slots' ids
        counter = CounterNoise(params.seed, 0, torch.as_tensor(ids, dtype=torch.int64, device=device))
    x = torch.as_tensor(placeholder, **as_tensor)
    v = torch.zeros((n_slots, 2), **as_tensor)
    S = torch.zeros(n_slots, **as_tensor)
    n_predicted_at_start = int(is_predicted.sum())
    predicted_t = torch.as_tensor(is_predicted, device=device)
    present = is_predicted.copy()
    segment = np.zeros(n_slots, np.int64)  # hand-overs so far, per slot
    n_duplicates = [0]  # data particles left out as re-identified copies of predicted ones
    verlet = VerletList(1.0, params.skin)  # model units: the cut-off is 1
    reference_frames_needed = {observed.reference_frame.get(f, -1) for f in frames[:-1]}
    history: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # frame -> (x of slots, present) of the rollout
    bond_cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def observe(f: int, include_predicted: bool = False) -> None:
        """Prescribe the observed particles of frame f (and, at the start, the predicted ones too)."""
        nonlocal present
        if f not in observed.snapshots:  # closed system: nothing to prescribe
            present = is_predicted.copy()
            return
        snap = observed.snapshots[f]
        s = slots(snap.particle)
        keep = np.ones(len(s), bool) if include_predicted else ~is_predicted[s]
        index = torch.as_tensor(s[keep], device=device)
        x[index] = torch.as_tensor(snap.x[keep], **as_tensor)
        v[index] = torch.as_tensor(snap.v[keep], **as_tensor)
        present = is_predicted.copy()
        present[s] = True

    def hand_over(f: int) -> np.ndarray:
        """Move particles between model and data at frame f (module docstring); returns the slots the model
        has just taken over (their entropy comes from the teacher once more)."""
        nonlocal predicted_t, present
        if observed.exterior is None or f not in observed.snapshots:
            return np.zeros(0, np.int64)
        snap = observed.snapshots[f]
        s_data = slots(snap.particle)
        mine = np.flatnonzero(is_predicted)
        mine_x = x[torch.as_tensor(mine, device=device)].cpu().numpy()
        leaving = np.zeros(0, np.int64)
        if len(mine):
            outside = observed.exterior(mine_x, ids[mine])
            leaving = mine[outside]
            mine, mine_x = mine[~outside], mine_x[~outside]
            is_predicted[leaving] = False
            segment[leaving] += 1
            seen = np.isin(s_data, leaving)
            index = torch.as_tensor(s_data[seen], device=device)
            x[index] = torch.as_tensor(snap.x[seen], **as_tensor)
            v[index] = torch.as_tensor(snap.v[seen], **as_tensor)
        # A data particle this close to a predicted one is the same particle under a new id (the tracker lost
        # it for a frame or more): the model's copy stands, the data's is left out.
        duplicate = np.zeros(len(s_data), bool)
        others = ~is_predicted[s_data]
        if len(mine) and others.any():
            tree = cKDTree(mine_x)
            distance, _ = tree.query(snap.x[others], k=1)
            duplicate[np.flatnonzero(others)[distance < params.duplicate_distance]] = True
        # a particle handed back to the data in this frame stays the data's until the next one
        candidates = ~is_predicted[s_data] & ~duplicate & ~np.isin(s_data, leaving)
        entering = np.zeros(0, np.int64)
        if candidates.any():
            inside = ~observed.exterior(snap.x[candidates], snap.particle[candidates])
            entering = s_data[candidates][inside]
            is_predicted[entering] = True
            segment[entering] += 1
        predicted_t = torch.as_tensor(is_predicted, device=device)
        present = is_predicted.copy()
        present[s_data[~duplicate]] = True
        n_duplicates[0] += int(duplicate.sum())
        return entering

    def remember(f: int) -> None:
        """Keep frame f's state when it is a strain reference, before its own pairs are built: a frame may be its
        own reference (the cycle rule's first frame of a cycle), and its bonds then serve the whole cycle."""
        if f in reference_frames_needed:
            history[f] = (x.detach().cpu().numpy().copy(), present.copy())

    def bonds(f: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Strain bonds of frame f in slot numbering (all reference particles; filtered by presence later)."""
        r = observed.reference_frame.get(f, -1)
        if r in bond_cache:
            return bond_cache[r]
        if r in history:
            x_ref_all, present_ref = history[r]
            s_ref = np.flatnonzero(present_ref)
            x_ref = x_ref_all[s_ref]
        else:
            ref = observed.reference_snapshot(f)
            if ref is None or r < 0:
                empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 2)))
                bond_cache[r] = empty
                return empty
            known = np.isin(ref.particle, ids)
            s_ref, x_ref = slots(ref.particle[known]), ref.x[known]
        bi, bj, r_ref = reference_bonds(x_ref, 1.0, observed.box(r) if observed.boxes is not None else None)
        # Reference frames never go backwards (lag and cycle rules): older ones are done with.
        bond_cache.clear()
        for old in [k for k in history if k < r]:
            del history[old]
        bond_cache[r] = (s_ref[bi], s_ref[bj], r_ref)
        return bond_cache[r]

    def frame_graph(f: int, box: Box | None, tilt_rate: float = 0.0) -> tuple[torch.Tensor, PairTensors]:
        """Active slots and their PairTensors (compact numbering) at the current configuration.

        tilt_rate: d(xy)/dt of the periodic cell over the step in which the current velocities were taken.
        """
        present_t = torch.as_tensor(present, device=device)
        i, j, shift, image = verlet.update(x, present_t, box)
        shift_rate = image[:, None] * torch.tensor([tilt_rate, 0.0], **as_tensor)
        i_np, j_np = i.cpu().numpy(), j.cpu().numpy()
        kind = pair_kinds(slot_species[i_np], slot_species[j_np], model.n_species, dtype, device)
        active = np.flatnonzero(present)
        compact = np.full(n_slots, -1, np.int64)
        compact[active] = np.arange(len(active))
        compact_t = torch.as_tensor(compact, device=device)
        bi, bj, r_ref = bonds(f)
        ok = present[bi] & present[bj]
        bi, bj, r_ref = bi[ok], bj[ok], r_ref[ok]
        x_np = x.detach().cpu().numpy() if box is not None else None
        bond_shift = minimum_image_shift(x_np[bi] - x_np[bj], box) if box is not None else np.zeros((len(bi), 2))
        pairs = PairTensors(
            compact_t[i], compact_t[j], shift,
            torch.as_tensor(compact[bi], device=device), torch.as_tensor(compact[bj], device=device),
            torch.as_tensor(bond_shift, **as_tensor), torch.as_tensor(r_ref, **as_tensor), shift_rate, kind,
            torch.as_tensor(slot_species[active], dtype=torch.int64, device=device),
        )
        return torch.as_tensor(active, device=device), pairs

    def tilt_rate(f0: int, f1: int) -> float:
        """d(xy)/dt (model units, per frame) of the periodic cell from frame f0 to f1 (0 without a box)."""
        if observed.boxes is None or f0 not in observed.boxes or f1 not in observed.boxes:
            return 0.0
        return (observed.boxes[f1].xy - observed.boxes[f0].xy) / (f1 - f0)

    def flow_at(f: int, active: torch.Tensor) -> torch.Tensor:
        """Background velocity u0 + G x of the active slots during f -> f+1."""
        c = torch.as_tensor(observed.flow(f), **as_tensor)
        return c[:2] + x[active] @ c[2:].reshape(2, 2).T

    def teacher_entropy(active: torch.Tensor, pairs: PairTensors, only_prescribed: bool,
                        fresh: np.ndarray | None = None) -> None:
        """S from the teacher for the active slots; with only_prescribed, the model's own S is kept for the
        predicted ones, except those just handed over to it (`fresh`)."""
        with torch.no_grad():
            S_new = model.teacher_entropy(x[active], v[active], pairs)
        if only_prescribed:
            keep = predicted_t.clone()
            if fresh is not None and len(fresh):
                keep[torch.as_tensor(fresh, device=device)] = False
            S_new = torch.where(keep[active], S[active], S_new)
        S[active] = S_new

    records: list[pd.DataFrame] = []
    rows: list[dict] = []
    status = {"status": COMPLETED, "message": "completed"}
    energy0: dict[str, float] = {}

    def record(step: int, f: int, active: torch.Tensor, pairs: PairTensors) -> None:
        """Append frame f to the outputs, after checking its energy."""
        state = State(x[active], v[active], S[active])
        with torch.no_grad():
            mass = model.particle_mass(pairs, len(active))[:, None]
            kinetic = (0.5 * mass * state.v * state.v).sum().item()
            energy = model.energy(state, pairs).item()
            momentum = (mass * state.v).sum(0).tolist()
        n = len(active)
        if step == 0:
            energy0.update(e=energy / max(n, 1), kinetic=kinetic / max(n, 1))
        else:
            e = energy / max(n, 1)
            scale = max(abs(energy0["e"]), energy0["kinetic"], 1e-300)
            if not math.isfinite(energy) or abs(e - energy0["e"]) > params.energy_blowup * scale:
                raise _Divergence(f, f"energy per particle {e:.6g} left {energy0['e']:.6g} by more than "
                                  f"energy_blowup={params.energy_blowup:g} x {scale:.3g}")
        active_np = active.cpu().numpy()
        x_np = state.x.detach().cpu().numpy()
        v_np = state.v.detach().cpu().numpy()
        exterior = observed.exterior(x_np, ids[active_np]) if observed.exterior else np.zeros(n, bool)
        records.append(pd.DataFrame({
            "frame": np.full(n, f, np.int64), "particle": ids[active_np],
            "x": x_np[:, 0], "y": x_np[:, 1], "vx": v_np[:, 0], "vy": v_np[:, 1],
            "S": state.S.detach().cpu().numpy(), "predicted": is_predicted[active_np], "interior": ~exterior,
            "segment": segment[active_np],
        }))
        rows.append({
            "step": step, "frame": f, "n_particles": n, "n_predicted": int(is_predicted[active_np].sum()),
            "momentum_x": momentum[0], "momentum_y": momentum[1], "energy": energy, "kinetic_energy": kinetic,
            "entropy": state.S.sum().item(), "n_pairs": len(pairs.i), "rebuilds": verlet.n_builds,
        })

    window = observed.exterior.window if observed.exterior is not None else None
    progress = _progress_bar(len(frames) - 1, params.progress, "rollout")
    f = frames[0]
    try:
        observe(f, include_predicted=True)
        box = observed.box(f)
        # the start velocities are backward differences: the cell moved as over the step before the start
        start_rate = tilt_rate(f - 1, f) if observed.boxes is not None and f - 1 in observed.boxes else \
            tilt_rate(f, f + 1)
        remember(f)
        active, pairs = frame_graph(f, box, start_rate)
        teacher_entropy(active, pairs, only_prescribed=False)
        record(0, f, active, pairs)
        dt = 1.0 / params.substeps
        for step, f_next in enumerate(frames[1:], start=1):
            x_frame = x[predicted_t].clone()
            for sub in range(params.substeps):
                model_step = (step - 1) * params.substeps + sub
                if sub > 0:
                    if f in observed.snapshots and f_next in observed.snapshots:
                        _interpolate_prescribed(x, v, observed, f, f_next, sub * dt, ids, is_predicted, as_tensor)
                    box = _interpolate_box(observed, f, f_next, sub * dt)
                    active, pairs = frame_graph(f, box, tilt_rate(f, f_next))
                state = State(x[active], v[active], S[active])
                stream = generator if counter is None else counter.select(active, model_step)
                new = euler_maruyama_step(model, state, pairs, dt, predicted_t[active], stream, params.noise,
                                          flow_at(f, active))
                x[active], v[active], S[active] = new.x, new.v, new.S
            _check_predicted(x, v, S, predicted_t, x_frame, window, params, f_next)
            rate = tilt_rate(f, f_next)
            f = f_next
            observe(f)
            fresh = hand_over(f)
            box = observed.box(f)
            remember(f)
            active, pairs = frame_graph(f, box, rate)
            teacher_entropy(active, pairs, only_prescribed=True, fresh=fresh)
            record(step, f, active, pairs)
            progress.update(1)
            if on_frame is not None:
                on_frame(f)
    except _Divergence as exc:
        status = {"status": DIVERGED, "message": f"rollout diverged at frame {exc.frame}: {exc}; "
                  f"kept the {len(records)} frames before it", "diverged_at_frame": exc.frame}
        log.warning(status["message"])
    finally:
        progress.close()
    frames_table = pd.concat(records, ignore_index=True) if records else _empty_frames()
    status.update(
        start_frame=int(frames[0]), frames_requested=len(frames), frames_written=len(records),
        last_frame=int(rows[-1]["frame"]) if rows else None, steps=max(len(records) - 1, 0),
        substeps=params.substeps, rebuilds=verlet.n_builds, n_predicted_at_start=n_predicted_at_start,
        n_predicted_at_end=int(is_predicted.sum()), handovers=int(segment.sum()),
        duplicates_left_out=n_duplicates[0],
        wall_s=time.perf_counter() - t_start, device=str(device), dtype=params.dtype, noise=params.noise,
        seed=params.seed, noise_stream=params.noise_stream,
    )
    return RolloutResult(frames_table, pd.DataFrame(rows, columns=CONSERVATION_COLUMNS), status)


def _use_counter(noise_stream: str, generator: torch.Generator | None) -> bool:
    """Whether the noise comes from the counter stream (`mpd.model.streams`) rather than a torch.Generator;
    refuses an unknown stream and a generator given with the counter stream."""
    if noise_stream not in NOISE_STREAMS:
        raise ValueError(f"noise_stream must be one of {', '.join(NOISE_STREAMS)}, got {noise_stream!r}")
    if noise_stream == "counter" and generator is not None:
        raise ValueError("a generator was given with noise_stream 'counter', which keys the noise by particle "
                         "ids and the step instead")
    return noise_stream == "counter"


CONSERVATION_COLUMNS = [
    "step", "frame", "n_particles", "n_predicted", "momentum_x", "momentum_y", "energy", "kinetic_energy",
    "entropy", "n_pairs", "rebuilds",
]
FRAME_COLUMNS = ["frame", "particle", "x", "y", "vx", "vy", "S", "predicted", "interior", "segment"]


def _empty_frames() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=float) for c in FRAME_COLUMNS})


def _check_predicted(x, v, S, predicted, x_frame, window: Window | None, params: RolloutParams, frame: int) -> None:
    """Raise _Divergence when the predicted particles' state is no longer physical."""
    xp, vp, Sp = x[predicted], v[predicted], S[predicted]
    if not (torch.isfinite(xp).all() and torch.isfinite(vp).all() and torch.isfinite(Sp).all()):
        raise _Divergence(frame, "non-finite position, velocity or entropy")
    if len(xp):
        step = torch.linalg.vector_norm(xp - x_frame, dim=-1).max().item()
        if step > params.max_step_displacement:
            raise _Divergence(frame, f"a predicted particle moved {step:.3g} h in one frame "
                              f"(max_step_displacement={params.max_step_displacement:g} h)")
        if window is not None:
            m = params.escape_margin
            lo = torch.tensor([window.x_min - m, window.y_min - m], dtype=xp.dtype, device=xp.device)
            hi = torch.tensor([window.x_max + m, window.y_max + m], dtype=xp.dtype, device=xp.device)
            if ((xp < lo) | (xp > hi)).any():
                raise _Divergence(frame, f"a predicted particle left the field of view by more than escape_margin={m:g} h")


def _interpolate_prescribed(x, v, observed, f0, f1, alpha, ids, is_predicted, as_tensor) -> None:
    """Prescribed particles present at f0 and f1 at the fraction alpha between the frames."""
    a, b = observed.snapshots[f0], observed.snapshots[f1]
    common, ia, ib = np.intersect1d(a.particle, b.particle, assume_unique=True, return_indices=True)
    s = np.searchsorted(ids, common)
    keep = ~is_predicted[s]
    s, ia, ib = s[keep], ia[keep], ib[keep]
    index = torch.as_tensor(s, device=x.device)
    x[index] = torch.as_tensor((1 - alpha) * a.x[ia] + alpha * b.x[ib], **as_tensor)
    v[index] = torch.as_tensor((1 - alpha) * a.v[ia] + alpha * b.v[ib], **as_tensor)


def _interpolate_box(observed: ObservedFrames, f0: int, f1: int, alpha: float) -> Box | None:
    if observed.boxes is None:
        return None
    a, b = observed.box(f0), observed.box(f1)
    return Box((1 - alpha) * a.lx + alpha * b.lx, (1 - alpha) * a.ly + alpha * b.ly, (1 - alpha) * a.xy + alpha * b.xy)


def _progress_bar(total: int, enabled: bool, desc: str):
    import sys

    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not (enabled and sys.stderr.isatty()), leave=False)


# ---------------------------------------------------------------------------
# Comparing a rollout with the data
# ---------------------------------------------------------------------------


def rollout_statistics_error(result: RolloutResult, observed: ObservedFrames) -> float:
    """Relative error of the MSD and of the mean squared velocity of the predicted particles.

    For each frame k after the start, over the particles predicted from the
    start and not handed over since, that the data also has at that frame:
    MSD(k) = <|x(k) - x(0)|^2> and
    <|v(k)|^2>, model vs data; the metric is the sum of the two relative L1
    errors over the frames,
        sum_k |MSD_model - MSD_data| / sum_k MSD_data + sum_k |v2_model - v2_data| / sum_k v2_data
    (normalised by the sums, not frame by frame: under cyclic shear <v^2>
    of the data nearly vanishes at the strain reversals, and a per-frame ratio
    would be dominated by those frames).
    Statistics, not paths: a stochastic model is not expected to follow the
    observed trajectory of each particle. MSD tests drift and diffusion
    (mobility, forces, the imposed flow); <v^2> tests the fluctuation
    balance (heating or cooling). inf for a diverged or empty rollout.
    """
    table = result.frames
    if result.status.get("status") != COMPLETED or table.empty:
        return math.inf
    # the particles predicted from the start, while the model still carries them (their first segment)
    table = table[table["predicted"].to_numpy(bool) & (table["segment"].to_numpy() == 0)]
    frames = np.unique(table["frame"].to_numpy())
    if len(frames) < 2:
        return math.inf
    start = observed.snapshots[int(frames[0])]
    model_start = table[table["frame"] == frames[0]]
    x0 = dict(zip(model_start["particle"].to_numpy(), model_start[["x", "y"]].to_numpy()))
    data_disp = {int(p): np.zeros(2) for p in start.particle}  # unwrapped data displacement since the start
    previous = start
    msd, v2 = [], []  # per frame: (model, data)
    for f in frames[1:]:
        snap = observed.snapshots[int(f)]
        common, ia, ib = np.intersect1d(previous.particle, snap.particle, assume_unique=True, return_indices=True)
        step = minimum_image_shift(snap.x[ib] - previous.x[ia], observed.box(int(f))) + snap.x[ib] - previous.x[ia]
        data_disp = {int(p): data_disp[int(p)] + d for p, d in zip(common, step) if int(p) in data_disp}
        previous = Snapshot(common, snap.x[ib], snap.v[ib])
        rows = table[table["frame"] == f]
        particles = rows["particle"].to_numpy()
        in_data = np.array([int(p) in data_disp for p in particles], bool)
        if not in_data.any():
            continue
        rows = rows[in_data]
        particles = particles[in_data]
        model_disp = rows[["x", "y"]].to_numpy() - np.stack([x0[p] for p in particles])
        data_d = np.stack([data_disp[int(p)] for p in particles])
        msd_model, msd_data = (model_disp**2).sum(1).mean(), (data_d**2).sum(1).mean()
        where = np.searchsorted(snap.particle, particles)
        v2_model = (rows[["vx", "vy"]].to_numpy() ** 2).sum(1).mean()
        v2_data = (snap.v[where] ** 2).sum(1).mean()
        msd.append((msd_model, msd_data))
        v2.append((v2_model, v2_data))
    if not msd:
        return math.inf
    msd, v2 = np.array(msd), np.array(v2)
    value = float(np.abs(msd[:, 0] - msd[:, 1]).sum() / max(msd[:, 1].sum(), 1e-300)
                  + np.abs(v2[:, 0] - v2[:, 1]).sum() / max(v2[:, 1].sum(), 1e-300))
    return value if math.isfinite(value) else math.inf


# ---------------------------------------------------------------------------
# 3D periodic fluids (star-polymer melts): a closed box, every particle predicted
# ---------------------------------------------------------------------------

#: The columns of a fluid rollout: those of the simulation trajectories it starts from (mpd.geometry.particles).
FLUID_COLUMNS = ["frame", "t", "particle", "species", "x", "y", "z", "xu", "yu", "zu", "vx", "vy", "vz", "S"]
FLUID_CONSERVATION_COLUMNS = ["step", "frame", "n_particles", "momentum_x", "momentum_y", "momentum_z", "energy",
                              "kinetic_energy", "entropy", "n_pairs", "rebuilds"]


@dataclass
class FluidRollout:
    """A periodic-fluid rollout: trajectory table (FLUID_COLUMNS), per-frame conservation, status."""

    frames: pd.DataFrame
    conservation: pd.DataFrame
    status: dict = field(default_factory=dict)


def periodic_fluid_rollout(
    model: MetriplecticModel,
    x0,
    v0,
    box_lengths,
    n_frames: int,
    *,
    seed: int = 0,
    noise: bool = True,
    substeps: int = 1,
    skin: float = 0.3,
    species=None,
    particle=None,
    start_frame: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    conserve_energy: bool = True,
    noise_stream: str = "torch",
) -> FluidRollout:
    """Integrate every particle of a closed orthorhombic periodic box for `n_frames` frames, in model units.

    x0 (N, D) positions / h (anywhere: the box wraps them), v0 (N, D) velocities in h per frame,
    box_lengths (D,) / h; D = model.dim. Positions are integrated unwrapped (the Verlet list's
    lattice shifts make the pairs exact); the table gives both (x wrapped into [0, L), xu
    unwrapped), t in frames. The drift and the pair noise are sums of antisymmetric pair
    terms, so the total momentum is conserved to round-off (not with a bath: it exchanges
    momentum with the solvent). With `conserve_energy` (and no bath, which exchanges energy
    too) every step ends on the initial energy shell (`mpd.model.restore_energy`: the
    Euler-Maruyama step's second-order energy gain goes back out of the entropies). Stops
    early, keeping the frames so far, on non-finite values. noise_stream "torch": the noise from
    `generator` (default: seeded with `seed`); "counter": model step k (substeps counted from 0) draws
    from `CounterNoise(seed, k, particle ids)` (`mpd.model.streams`; ids `particle`, else 0 .. N-1),
    independent of the pair list's order.
    """
    device = resolve_device(device)
    dim = int(model.dim)
    box = OrthoBox(tuple(np.ravel(np.asarray(box_lengths, np.float64))))
    as_tensor = {"dtype": dtype, "device": device}
    x = torch.as_tensor(np.asarray(x0, np.float64), **as_tensor).clone()
    v = torch.as_tensor(np.asarray(v0, np.float64), **as_tensor).clone()
    n = x.shape[0]
    if box.dim != dim or x.shape != (n, dim) or v.shape != (n, dim):
        raise ValueError(f"a {dim}D model needs x0, v0 of shape (N, {dim}) and {dim} box lengths, got "
                         f"{tuple(x.shape)}, {tuple(v.shape)} and {box.lengths}")
    if 1.0 + skin >= box.max_cutoff():
        raise ValueError(f"the cut-off h plus the skin ({1.0 + skin:g} h) must be < half the shortest box edge "
                         f"({box.max_cutoff():g} h)")
    labels = np.zeros(n, np.int64) if species is None else np.asarray(species, np.int64).reshape(n)
    if len(labels) and (labels.min() < 0 or labels.max() >= model.n_species):
        raise ValueError(f"species labels must lie in 0 .. {model.n_species - 1} (the model's n_species)")
    ids = np.arange(n, dtype=np.int64) if particle is None else np.asarray(particle, np.int64).reshape(n)
    if model.has_bath:
        log.warning("the model has a bath: it exchanges momentum with a solvent, so momentum is not conserved")
    counter: CounterNoise | None = None
    if _use_counter(noise_stream, generator):
        counter = CounterNoise(int(seed), 0, torch.as_tensor(ids, dtype=torch.int64, device=device))
    elif generator is None:
        generator = torch.Generator(device=device).manual_seed(int(seed))
    labels_t = torch.as_tensor(labels, device=device)
    everyone = torch.ones(n, dtype=torch.bool, device=device)
    verlet = VerletList(1.0, skin)
    no_bonds = torch.zeros((0, dim), **as_tensor)
    no_index = torch.zeros(0, dtype=torch.int64, device=device)

    def graph() -> PairTensors:
        i, j, shift, _ = verlet.update(x, None, box)
        kind = pair_kinds(labels[i.cpu().numpy()], labels[j.cpu().numpy()], model.n_species, dtype, device)
        return PairTensors(i, j, shift, no_index, no_index, no_bonds, no_bonds, torch.zeros_like(shift), kind,
                           labels_t)

    records, rows = [], []
    status = {"status": COMPLETED, "message": "completed"}

    def record(step: int, pairs: PairTensors) -> None:
        state = State(x, v, S)
        with torch.no_grad():
            mass = model.particle_mass(pairs, n)[:, None]
            kinetic = (0.5 * mass * v * v).sum().item()
            momentum = (mass * v).sum(0).tolist()
        with torch.enable_grad():
            energy = model.energy(state, pairs).item()
        xu = x.detach().cpu().numpy()
        vv = v.detach().cpu().numpy()
        frame = {"frame": np.full(n, start_frame + step, np.int64), "t": np.full(n, float(step)), "particle": ids,
                 "species": labels}
        wrapped = box.wrap(xu)
        for k, axis in enumerate("xyz"[:dim]):
            frame[axis] = wrapped[:, k]
        for k, axis in enumerate("xyz"[:dim]):
            frame[axis + "u"] = xu[:, k]
        for k, axis in enumerate("xyz"[:dim]):
            frame["v" + axis] = vv[:, k]
        frame["S"] = S.detach().cpu().numpy()
        records.append(pd.DataFrame(frame))
        rows.append({"step": step, "frame": start_frame + step, "n_particles": n,
                     **{f"momentum_{a}": m for a, m in zip("xyz", momentum)}, "energy": energy,
                     "kinetic_energy": kinetic, "entropy": S.sum().item(), "n_pairs": len(pairs.i),
                     "rebuilds": verlet.n_builds})

    t_start = time.perf_counter()
    pairs = graph()
    with torch.no_grad():
        S = model.teacher_entropy(x, v, pairs)
    record(0, pairs)
    conserve_energy = bool(conserve_energy) and not model.has_bath
    short_steps = 0  # steps whose energy error the entropies could not absorb (restore_energy)
    if conserve_energy:
        shell = closed_energy(model, State(x, v, S), pairs)
    dt = 1.0 / int(substeps)
    for step in range(1, int(n_frames) + 1):
        for sub in range(int(substeps)):
            stream = generator if counter is None else counter.at((step - 1) * int(substeps) + sub)
            new = euler_maruyama_step(model, State(x, v, S), pairs, dt, everyone, stream, noise)
            x, v, S = new.x, new.v, new.S
            finite = bool(torch.isfinite(x).all() and torch.isfinite(v).all() and torch.isfinite(S).all())
            if not finite:
                break
            pairs = graph()
            if conserve_energy:
                restored, on_shell = restore_energy(model, State(x, v, S), pairs, shell)
                S = restored.S
                short_steps += not on_shell
        if not finite:
            frame = start_frame + step
            status = {"status": DIVERGED, "message": f"rollout diverged at frame {frame}: non-finite state; kept "
                      f"the {len(records)} frames before it", "diverged_at_frame": frame}
            log.warning(status["message"])
            break
        record(step, pairs)
    status.update(start_frame=int(start_frame), frames_requested=int(n_frames) + 1, frames_written=len(records),
                  substeps=int(substeps), rebuilds=verlet.n_builds, wall_s=time.perf_counter() - t_start,
                  device=str(device), dtype=str(dtype).replace("torch.", ""), noise=bool(noise), seed=int(seed),
                  noise_stream=noise_stream, conserve_energy=conserve_energy, energy_short_steps=short_steps)
    if short_steps:
        log.warning("%d of %d steps ended off the energy shell: their energy error was more than the entropies "
                    "could absorb (mpd.model.restore_energy)", short_steps, int(n_frames) * int(substeps))
    columns = [c for c in FLUID_COLUMNS if c in records[0].columns]
    conservation = [c for c in FLUID_CONSERVATION_COLUMNS if c in rows[0]]
    return FluidRollout(pd.concat(records, ignore_index=True)[columns], pd.DataFrame(rows)[conservation], status)


def to_physical_units(table: pd.DataFrame, lengths, h: float, dt: float) -> pd.DataFrame:
    """A periodic rollout's table in physical units, in place: xu (h) times h, v (h per frame) times h / dt, and
    x wrapped from the physical xu into the box of `lengths` (physical), exactly as the simulation's tables have
    it. t is the caller's."""
    axes = [a for a in "xyz" if a + "u" in table]
    for axis in axes:
        table[axis + "u"] = table[axis + "u"].to_numpy() * h
        table["v" + axis] = table["v" + axis].to_numpy() * h / dt
    wrapped = OrthoBox(tuple(np.ravel(lengths))).wrap(table[[a + "u" for a in axes]].to_numpy())
    for k, axis in enumerate(axes):
        table[axis] = wrapped[:, k]
    return table


def wrap_in_frame_cells(table: pd.DataFrame, cell_of) -> np.ndarray:
    """The unwrapped xu, yu of `table` wrapped, frame by frame, into that frame's periodic cell: cell_of(frame) -> a
    `Box` (a sheared cell changes from frame to frame). Returns (E, 2) in the table's row order."""
    wrapped = table[["xu", "yu"]].to_numpy(np.float64).copy()
    for frame, rows in table.groupby("frame").indices.items():
        wrapped[rows] = cell_of(int(frame)).wrap(wrapped[rows])
    return wrapped


def rollout_fluid(
    model_path,
    x0,
    v0,
    box_lengths,
    n_frames: int,
    *,
    seed: int = 0,
    noise: bool = True,
    substeps: int = 1,
    skin: float = 0.3,
    species=None,
    particle=None,
    start_frame: int = 0,
    t0: float = 0.0,
    dtype: str = "float64",
    device: str | torch.device = "cpu",
    out=None,
    status_extra=None,
    noise_stream: str = "torch",
) -> FluidRollout:
    """A trained model.pt rolled out in a 3D periodic box from (x0, v0), in the simulation's units.

    x0 (N, 3) positions (wrapped or not), v0 (N, 3) velocities, box_lengths (lx, ly, lz), all in
    the units of the dataset the model was trained on (`mpd.geometry.particles.particle_dataset`:
    h = its length_scale, dt = its frame interval). Returns the trajectory table with the input's
    columns (frame, t, particle, species, x, y, z wrapped, xu, yu, zu unwrapped, vx, vy, vz) plus S,
    the conservation table (momentum, energy, entropy per frame, in model units) and the status;
    with `out` (a folder) writes rollout.parquet, conservation.csv and rollout_status.json there
    (the status with `status_extra` added). noise_stream: as `periodic_fluid_rollout`.
    """
    from mpd.training import load_model

    model, meta = load_model(model_path, device=device, dtype=dtype)
    h, dt_s = float(meta["h_um"]), float(meta["dt_s"])
    lengths = np.ravel(np.asarray(box_lengths, np.float64))
    result = periodic_fluid_rollout(model, np.asarray(x0, np.float64) / h, np.asarray(v0, np.float64) * dt_s / h,
                                    lengths / h, n_frames, seed=seed, noise=noise, substeps=substeps, skin=skin,
                                    species=species, particle=particle, start_frame=start_frame,
                                    dtype=resolve_dtype(dtype), device=device, noise_stream=noise_stream)
    table = result.frames
    table["t"] = t0 + table["t"].to_numpy() * dt_s
    to_physical_units(table, lengths, h, dt_s)
    result.status.update(h=h, dt=dt_s, model=str(model_path), **dict(status_extra or {}))
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        table.to_parquet(buffer, index=False)
        atomic_write_bytes(buffer.getvalue(), out / "rollout.parquet")
        atomic_write_bytes(result.conservation.to_csv(index=False).encode(), out / "conservation.csv")
        atomic_write_json(result.status, out / "rollout_status.json")
    return result


__all__ = [
    "COMPLETED",
    "CONSERVATION_COLUMNS",
    "DIVERGED",
    "FLUID_COLUMNS",
    "ExteriorRule",
    "FluidRollout",
    "ObservedFrames",
    "RolloutResult",
    "Snapshot",
    "observed_from_table",
    "periodic_fluid_rollout",
    "resolve_device",
    "resolve_dtype",
    "rollout",
    "rollout_fluid",
    "rollout_statistics_error",
]
