"""Training of the metriplectic model on the snapshot-pair dataset (docs/training.md).

Loss: the model's Gaussian negative log-likelihood of (v_i, S_i) at t+1 given
the state at t (docs/model.md, Likelihood), over the interior particles of
each snapshot pair, with self-supervised entropies S_t, S_{t+1} from the
model's teacher (which trains through the loss). Units are the dataset's
nondimensional ones: lengths / h, one frame per step (h = dt = 1 in the model).

Reproducibility: every random stream (weights, shuffling, noise of the
selection rollouts) is seeded from `TrainingParams.seed`, and `checkpoint.pt`
holds the model, optimiser, scheduler, best weights, log, and every random
state (torch CPU and CUDA, numpy, python, the DataLoader's shuffling
generator), written to a temporary file and renamed after every epoch. A run
resumed from it continues exactly as if it had not stopped (bitwise in
float64 on CPU; tested).

Model selection: after each epoch, short rollouts from validation snapshots
are compared with the data (`mpd.rollout.rollout_statistics_error`: relative
errors of the MSD and of <v^2>); the weights with the lowest value are kept
as the best (`selection_metric: val_loss` uses the validation NLL instead).
"""
from __future__ import annotations

import copy
import hashlib
import io
import logging
import math
import pickle
import random
import sys
import time
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from mpd import distributed as ddp
from mpd.atomic import atomic_file, atomic_write_bytes
from mpd.cage import CageObjective
from mpd.calibration import calibrate_closed_fluid
from mpd.geometry.dataset import box_attributes
from mpd.geometry.dataset import dataset_dir as find_dataset_dir
from mpd.geometry.domain import Box, OrthoBox, periodic_box
from mpd.geometry.loader import SnapshotPairDataset, collate_snapshots
from mpd.model import EulerMaruyama, MetriplecticModel, PairTensors, State
from mpd.pairs import concatenate_pairs, snapshot_pairs
from mpd.params import AUTO, ModelConfig, NetworkParams, RolloutParams, TrainingParams, config_hash
from mpd.provenance import software_versions, source_fingerprint
from mpd.rollout import (
    ExteriorRule,
    ObservedFrames,
    Snapshot,
    resolve_device,
    resolve_dtype,
    rollout,
    rollout_statistics_error,
)

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "mpd-training-checkpoint"
MODEL_FORMAT = "mpd-model"
#: 2: bath, species, standardised entropy labels; 3: one mass per species (older models cannot be loaded)
MODEL_VERSION = 3
#: What torch.load raises for a damaged, empty, truncated or foreign file (its archive reader, the
#: restricted unpickler of weights_only=True, the file system).
UNREADABLE = (RuntimeError, OSError, EOFError, ValueError, KeyError, AttributeError, pickle.UnpicklingError,
              zipfile.BadZipFile)
#: The modules whose code a checkpoint depends on: a change to any of them starts training afresh.
TRAINING_CODE = ("mpd.model", "mpd.training", "mpd.pairs", "mpd.params", "mpd.distributed", "mpd.geometry.loader")
LOG_COLUMNS = ["epoch", "train_loss", "val_loss", "val_rollout_metric", "train_cage", "val_cage", "lr", "wall_s"]


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the last checkpoint is kept."""


class ModelFileError(TrainingError):
    """A model file cannot be read (corrupt, truncated, empty, or not a model of this code)."""


# ---------------------------------------------------------------------------
# Facts about the dataset's frames
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetFrames:
    """Per frame, from pairs.parquet of all splits: the reference frame and (periodic data) the box / h.

    The reader's items carry the box at t and t+1 but not the box of the
    reference frame, which the strain bonds need (minimum image in the
    reference box); every recorded frame appears as `frame` or `frame1` of
    some pair, so the whole index has it.
    """

    reference_frame: dict[int, int]
    boxes: dict[int, Box | OrthoBox] | None
    geometry: dict
    length_um: float
    time_s: float
    n_species: int = 1
    dim: int = 2              # 3: a 3D periodic fluid (mpd.geometry.particles), boxes are OrthoBoxes
    has_reference: bool = True  # False: the dataset says it has no reference configuration (a fluid)

    def box(self, frame: int) -> Box | OrthoBox | None:
        if self.boxes is None:
            return None
        if frame not in self.boxes:
            raise KeyError(f"the dataset records no box for frame {frame}")
        return self.boxes[frame]

    def reference_box(self, frame: int) -> Box | OrthoBox | None:
        """The box of frame's strain reference (that of the frame itself where it has none)."""
        ref = self.reference_frame.get(frame, -1)
        return self.box(ref if ref >= 0 else frame)

    def exterior_rule(self) -> ExteriorRule | None:
        if not self.geometry or (self.boxes is not None and not self.geometry.get("boundary_particles")
                                 and not self.geometry.get("boundary_geometry_um")):
            return None
        return ExteriorRule.from_geometry(self.geometry, self.length_um)


def dataset_frames(dataset: SnapshotPairDataset) -> DatasetFrames:
    index = pd.read_parquet(dataset.root / "pairs.parquet")
    reference = {int(f): int(r) for f, r in zip(index["frame"], index["ref_frame"])}
    boxes = None
    if dataset.periodic:
        h = dataset.scales.length_um
        boxes = {}
        for suffix, frame_col in (("", "frame"), ("1", "frame1")):
            if dataset.dim == 2:
                cols = index[[frame_col, "lx" + suffix, "ly" + suffix, "xy" + suffix]].to_numpy()
                for f, lx, ly, xy in cols:
                    boxes[int(f)] = Box(lx / h, ly / h, xy / h)
            else:
                cols = index[[frame_col, *(a + suffix for a in box_attributes(dataset.dim))]].to_numpy()
                for f, *lengths in cols:
                    boxes[int(f)] = OrthoBox(tuple(v / h for v in lengths))
    return DatasetFrames(reference, boxes, dict(dataset.metadata.get("geometry") or {}),
                         dataset.scales.length_um, dataset.scales.time_s, dataset.n_species, dataset.dim,
                         dataset.metadata.get("has_reference", True) is not False)


def dataset_fingerprint(path) -> str:
    """Hash of the dataset's metadata and index: a checkpoint is resumed only on the same data."""
    root = find_dataset_dir(path)
    digest = hashlib.sha256()
    for name in ("metadata.json", "pairs.parquet"):
        digest.update((root / name).read_bytes())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------
# Pairs and loss of a batch of snapshot pairs
# ---------------------------------------------------------------------------


def batch_pairs(
    batch: Mapping[str, torch.Tensor], frames: DatasetFrames, dtype: torch.dtype, device: torch.device
) -> tuple[PairTensors, PairTensors]:
    """PairTensors at t (neighbours + strain bonds) and at t+1 (neighbours, for the teacher) of a collated batch.

    Pairs are searched per snapshot (`mpd.geometry.radius_pairs`, cut-off 1 = h)
    and stacked with the row offsets, so no pair crosses snapshots.
    """
    at_t, at_t1, offsets = [], [], []
    ptr = batch["ptr"].tolist()
    for b in range(len(ptr) - 1):
        rows = slice(ptr[b], ptr[b + 1])
        frame = int(batch["frame"][b])
        periodic = "box" in batch
        box = periodic_box(batch["box"][b], frames.dim) if periodic else None
        box1 = periodic_box(batch["box1"][b], frames.dim) if periodic else None
        ref = frames.reference_frame.get(frame, -1)
        box_ref = frames.box(ref) if periodic and ref >= 0 else box
        species = batch["species"][rows]
        at_t.append(snapshot_pairs(batch["x0"][rows], 1.0, box, batch["x_ref"][rows], batch["has_ref"][rows],
                                   box_ref, dtype, device, species, frames.n_species))
        at_t1.append(snapshot_pairs(batch["x1"][rows], 1.0, box1, dtype=dtype, device=device, species=species,
                                    n_species=frames.n_species))
        offsets.append(ptr[b])
    return concatenate_pairs(at_t, offsets), concatenate_pairs(at_t1, offsets)


def batch_to(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def teacher_labels(
    model: MetriplecticModel, batch: Mapping[str, torch.Tensor], pairs_t: PairTensors, pairs_t1: PairTensors,
    reduce=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy labels (S_t, S_t+1) of a batch, standardised by the batch's statistics at t (with graph).

    The teacher's raw output at t and t+1 is shifted and divided by the mean and
    standard deviation of the raw values at t over the batch's interior
    particles, the ones the likelihood predicts (the gauge of docs/model.md,
    Entropy labels; exterior particles near the window's edge have truncated
    neighbourhoods, and their labels would set the scale otherwise); in training mode the teacher's
    running statistics move towards them. ``reduce`` sums a tensor over the
    ranks of data-parallel training (differentiably), so every rank uses the
    global batch's statistics.
    """
    raw0 = model.teacher.raw(batch["x0"], batch["v0"], pairs_t)
    raw1 = model.teacher.raw(batch["x1"], batch["v1"], pairs_t1)
    sums = model.teacher.sums(raw0[batch["interior"]])
    mean, scale = model.teacher.statistics(sums if reduce is None else reduce(sums))
    if model.training:
        model.teacher.track(mean, scale)
    return (raw0 - mean) / scale, (raw1 - mean) / scale



def snapshot_loss(
    model: MetriplecticModel, batch: Mapping[str, torch.Tensor], pairs_t: PairTensors, pairs_t1: PairTensors,
    jitter: float, observation_variance: tuple[float, float] = (0.0, 0.0),
) -> torch.Tensor:
    """Mean NLL over the interior particles of the batch, entropies from the teacher at t and t+1.

    observation_variance: (velocity, entropy label) variances added to the
    likelihood's covariance (`observation_variances`).
    """
    S0, S1 = teacher_labels(model, batch, pairs_t, pairs_t1)
    return model.nll(State(batch["x0"], batch["v0"], S0), State(batch["x1"], batch["v1"], S1), pairs_t,
                     1.0, batch["interior"], jitter, batch.get("flow"), *observation_variance)


# ---------------------------------------------------------------------------
# Model construction and data-driven initial scales
# ---------------------------------------------------------------------------


def model_kwargs(network: NetworkParams, velocity_scale: float, n_species: int = 1, dim: int = 2,
                 solid: bool | None = None) -> dict:
    """Constructor arguments of MetriplecticModel (stored with the weights to rebuild it).

    solid: overrides network.solid (False for a dataset without a reference configuration: a fluid).
    """
    return {
        "h": 1.0, "dim": int(dim),
        "kernel_hidden": list(network.kernel_hidden), "energy_hidden": list(network.energy_hidden),
        "amplitude_hidden": list(network.amplitude_hidden), "teacher_hidden": list(network.teacher_hidden),
        "velocity_scale": float(velocity_scale), "k_B": 1.0, "mass": 1.0,  # both set after construction
        "solid": bool(network.solid if solid is None else solid), "strict_convexity": float(network.strict_convexity),
        "bath": bool(network.bath), "bath_hidden": list(network.bath_hidden), "n_species": int(n_species),
        "teacher_velocities": bool(network.teacher_velocities),
    }


def build_model(kwargs: Mapping, dtype: torch.dtype, device: torch.device) -> MetriplecticModel:
    return MetriplecticModel(**kwargs).to(dtype=dtype, device=device)


def relative_velocity_scale(dataset: SnapshotPairDataset, n_items: int = 8) -> float:
    """rms |v_i - v_j| over neighbour pairs of the first training pairs (h per frame): the teacher's velocity unit."""
    total, count = 0.0, 0
    for k in range(min(n_items, len(dataset))):
        item = dataset[k]
        pairs = snapshot_pairs(item["x0"], 1.0, periodic_box(item["box"], dataset.dim) if "box" in item else None)
        dv = item["v0"][pairs.i] - item["v0"][pairs.j]
        total += float((dv.double() ** 2).sum())
        count += len(pairs.i)
    scale = math.sqrt(total / count) if count else 0.0
    return scale if scale > 0 and math.isfinite(scale) else 1.0


def calibrate_mass(model: MetriplecticModel, batch: Mapping, pairs_t: PairTensors) -> float:
    """m that makes the initial conservative accelerations as large as the data's velocity increments.

    An untrained energy network exerts forces of order one in model units,
    far above the observed accelerations (velocities change by a few per cent
    of h per frame): m = rms|F| / rms|v_{t+1} - v_t| over interior particles
    starts the drift at the data's scale. k_B is calibrated afterwards.
    """
    interior = batch["interior"]
    with torch.enable_grad():
        S0 = model.teacher_entropy(batch["x0"], batch["v0"], pairs_t).detach()
        force = model.thermodynamics(batch["x0"], S0, pairs_t, with_dT_dS=False).force
    force_rms = force[interior].pow(2).sum(-1).mean().sqrt()
    dv_rms = (batch["v1"] - batch["v0"])[interior].pow(2).sum(-1).mean().sqrt()
    mass = float(force_rms / dv_rms)
    return mass if math.isfinite(mass) and mass > 0 else 1.0


def calibrate_k_B(model: MetriplecticModel, batch: Mapping, pairs_t: PairTensors, pairs_t1: PairTensors) -> float:
    """k_B that makes the model's velocity noise match the data's at the initial weights.

    Sigma_vv = 2 k_B M_vv dt is proportional to k_B, so
    k_B = <|v_{t+1} - v_t|^2> / <tr Sigma_vv(k_B = 1)> over interior particles
    (an upper bound on the noise part: it includes the drift). Starting there
    avoids thousands of optimiser steps spent only on k_B's scale.
    """
    interior = batch["interior"]
    with torch.enable_grad():
        S0 = model.teacher_entropy(batch["x0"], batch["v0"], pairs_t).detach()
        sigma = model.marginal_covariance(State(batch["x0"], batch["v0"], S0), pairs_t, 1.0)
    d = model.dim
    trace = torch.diagonal(sigma[interior][:, :d, :d], dim1=-2, dim2=-1).sum(-1).mean() / model.k_B.detach()
    observed = ((batch["v1"] - batch["v0"])[interior] ** 2).sum(-1).mean()
    k_B = float(observed / trace)
    return k_B if math.isfinite(k_B) and k_B > 0 else 1.0


def equipartition_k_B(model: MetriplecticModel, batch: Mapping, pairs_t: PairTensors) -> float:
    """k_B at which the model's temperatures carry the data's kinetic energy: sum m v^2 / (D sum T_i).

    A closed fluid (no bath) relaxes to the temperature its internal energies
    define: at equilibrium m <v^2> / D = k_B <T_i> per particle. The one-step
    likelihood alone does not tie k_B to the data's kinetic energy; without
    this the rollouts drift to the model's own temperature (docs/training.md,
    3D periodic fluids). Interior particles of the batch; entropies from the
    teacher.
    """
    interior = batch["interior"]
    with torch.enable_grad():
        S0 = model.teacher_entropy(batch["x0"], batch["v0"], pairs_t).detach()
        T = model.thermodynamics(batch["x0"], S0, pairs_t, with_dT_dS=False).T.detach()
    mass = model.particle_mass(pairs_t, batch["x0"].shape[0], detach=True)
    kinetic = (mass[:, None] * batch["v0"] * batch["v0"]).sum(-1)[interior].sum()
    k_B = float(kinetic / (model.dim * T[interior].sum()))
    return k_B if math.isfinite(k_B) and k_B > 0 else float(model.k_B.detach())


def initialise_bath(model: MetriplecticModel, batch: Mapping, pairs_t: PairTensors, friction: float) -> None:
    """Bath at the particles' median initial temperature (no initial heat flow) with friction rate `friction`."""
    with torch.enable_grad():
        S0 = model.teacher_entropy(batch["x0"], batch["v0"], pairs_t).detach()
        T = model.thermodynamics(batch["x0"], S0, pairs_t, with_dT_dS=False).T
    T_b = float(T[batch["interior"]].median()) if bool(batch["interior"].any()) else float(T.median())
    set_positive_scalar(model.bath.log_T_b, T_b if math.isfinite(T_b) and T_b > 0 else 1.0)
    set_positive_scalar(model.bath.log_gamma, friction)


def observation_variances(params: TrainingParams, length_um: float) -> tuple[float, float]:
    """(velocity, entropy) variances the likelihood adds to Sigma_ii for what the model does not predict.

    Velocity: a backward difference's tracking error per component, 2 (sigma / h)^2
    in model units (measurement_noise_um). Entropy: the labels' resolution
    squared (entropy_resolution, in units of the standardised labels).
    """
    return 2.0 * (float(params.measurement_noise_um) / float(length_um)) ** 2, float(params.entropy_resolution) ** 2


def set_positive_scalar(scalar: torch.nn.Module, value: float) -> None:
    """Set a PositiveScalar (softplus(raw)) to `value`."""
    scalar.assign(value)


def make_optimizer(model: torch.nn.Module, params: TrainingParams):
    optimizer = torch.optim.Adam(model.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay)
    if params.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=params.epochs, eta_min=params.min_learning_rate)
    elif params.schedule == "step":
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=params.step_epochs, gamma=params.step_factor)
    else:
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=1.0)
    return optimizer, scheduler


# ---------------------------------------------------------------------------
# Validation: likelihood and selection rollouts
# ---------------------------------------------------------------------------


def spaced_items(n: int, k: int | None) -> list[int]:
    """k indices evenly spread over range(n) (all of them when k is None or >= n)."""
    if k is None or k >= n:
        return list(range(n))
    return sorted({round(v) for v in np.linspace(0, n - 1, k)})


def evaluate_loss(
    model: MetriplecticModel, dataset: SnapshotPairDataset, items: Sequence[int], frames: DatasetFrames,
    params: TrainingParams, device: torch.device, dtype: torch.dtype,
) -> float:
    """Interior-particle-weighted mean NLL over the given items (no parameter update)."""
    total, weight = 0.0, 0
    for start in range(0, len(items), params.batch_size):
        batch = collate_snapshots([dataset[k] for k in items[start:start + params.batch_size]])
        n_interior = int(batch["interior"].sum())
        if n_interior == 0:
            continue
        pairs_t, pairs_t1 = batch_pairs(batch, frames, dtype, device)
        with torch.enable_grad():  # forces are autograd gradients
            loss = snapshot_loss(model, batch_to(batch, device), pairs_t, pairs_t1, params.jitter,
                                 observation_variances(params, frames.length_um))
        total += float(loss.detach()) * n_interior
        weight += n_interior
    return total / weight if weight else math.nan


def observed_from_dataset(
    dataset: SnapshotPairDataset, items: Sequence[int], frames: DatasetFrames
) -> tuple[ObservedFrames, dict[int, np.ndarray]]:
    """ObservedFrames of consecutive dataset items (frames f .. f+K) and the interior ids of each frame."""
    snapshots, references, interior, flows, species = {}, {}, {}, {}, {}
    for k in items:
        item = dataset[k]
        f = int(item["frame"])
        species.update(zip(item["particle"].tolist(), item["species"].tolist()))
        flows[f] = dataset.flow_coefficients(k)
        particle = item["particle"].numpy()
        snapshots[f] = Snapshot(particle, item["x0"].double().numpy(), item["v0"].double().numpy())
        if f + 1 not in snapshots:
            snapshots[f + 1] = Snapshot(particle, item["x1"].double().numpy(), item["v1"].double().numpy())
        has = item["has_ref"].numpy()
        references[f] = Snapshot(particle[has], item["x_ref"].double().numpy()[has], np.zeros((has.sum(), 2)))
        interior[f] = particle[item["interior"].numpy()]
    observed = ObservedFrames(snapshots, dict(frames.reference_frame), references, frames.boxes,
                              frames.exterior_rule(), flows, species)
    return observed, interior


def selection_windows(dataset: SnapshotPairDataset, steps: int, starts: int) -> list[list[int]]:
    """Item lists of up to `starts` evenly spaced runs of `steps` consecutive frames (fewer steps if the block is short)."""
    if len(dataset) == 0:
        return []
    frame = dataset.index["frame"].to_numpy()
    run = np.ones(len(frame), int)  # run[k]: consecutive frames starting at item k
    for k in range(len(frame) - 2, -1, -1):
        run[k] = run[k + 1] + 1 if frame[k + 1] == frame[k] + 1 else 1
    steps = min(steps, int(run.max()))
    candidates = np.flatnonzero(run >= steps)
    chosen = [candidates[i] for i in spaced_items(len(candidates), starts)]
    return [list(range(k, k + steps)) for k in chosen]


def selection_metric(
    model: MetriplecticModel, dataset: SnapshotPairDataset, windows: Sequence[Sequence[int]],
    frames: DatasetFrames, params: TrainingParams, device: torch.device,
) -> float:
    """Mean `rollout_statistics_error` of short noisy rollouts from validation snapshots.

    The noise is drawn from generators seeded by the training seed and the
    window, the same in every epoch (common random numbers: epochs differ by
    their weights only) and independent of the training's random state.
    """
    if not windows:
        return math.nan
    values = []
    for w, items in enumerate(windows):
        observed, interior = observed_from_dataset(dataset, items, frames)
        start = int(dataset.index["frame"].iloc[items[0]])
        rollout_params = RolloutParams(dtype=params.dtype, seed=params.seed + w, progress=False, noise=True)
        result = rollout(model, observed, rollout_params, start_frame=start, n_frames=len(items),
                         predicted=interior[start], device=device)
        values.append(rollout_statistics_error(result, observed))
    return float(np.mean(values))


# ---------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------


def random_states(loader_generator: torch.Generator) -> dict:
    """Every random stream training may touch, in a form torch.load(weights_only=True) accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": name, "keys": torch.as_tensor(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
        "loader": loader_generator.get_state(),
    }


def restore_random_states(states: Mapping, loader_generator: torch.Generator) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    n = states["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    loader_generator.set_state(states["loader"])


def atomic_torch_save(obj, path: Path) -> None:
    """torch.save all at once or not at all: a kill never leaves half a checkpoint."""
    with atomic_file(path) as handle:
        torch.save(obj, handle)


def write_log(rows: Sequence[Mapping], path: Path) -> None:
    atomic_write_bytes(pd.DataFrame(list(rows), columns=LOG_COLUMNS).to_csv(index=False).encode(), path)


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def checkpoint_identity(config: ModelConfig, dataset_fingerprint_: str) -> dict:
    """What a checkpoint must share with this run to be resumed: configuration, dataset, code, model version."""
    return {"training_hash": config.training_hash(), "dataset": dataset_fingerprint_,
            "code": source_fingerprint(*TRAINING_CODE), "model_version": MODEL_VERSION}


def set_aside(path: Path, reason: str) -> Path:
    """Rename a checkpoint that cannot be resumed to `<name>.<reason>` (replacing an older one) and return it."""
    target = path.with_name(f"{path.name}.{reason}")
    path.replace(target)
    return target


def resumable_checkpoint(path: Path, identity: Mapping, epochs: int) -> dict | None:
    """The checkpoint at `path` when this run can continue it, else None (training starts afresh).

    A checkpoint that cannot be read is set aside as `.corrupt`, one of another configuration,
    dataset, code or model version as `.foreign`, each with a warning; a finished one (all
    `epochs` done) is not resumed: running training again (a deleted model, --forcerun) means
    training again.
    """
    if not path.is_file():
        return None
    try:
        checkpoint = load_checkpoint(path)
        if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("not a training checkpoint")
    except UNREADABLE as error:
        moved = set_aside(path, "corrupt")
        log.warning("%s cannot be read (%s); set aside as %s, training starts afresh", path, type(error).__name__,
                    moved.name)
        return None
    differs = [key for key, value in identity.items() if checkpoint.get(key) != value]
    if differs:
        moved = set_aside(path, "foreign")
        log.warning("%s was written with another %s; set aside as %s, training starts afresh", path,
                    " and ".join(differs), moved.name)
        return None
    if int(checkpoint.get("epoch", 0)) >= epochs:
        log.info("%s holds a finished training: training again from scratch", path)
        return None
    return checkpoint


# ---------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------


@dataclass
class TrainingResult:
    """The best model (by the selection metric), its constructor arguments and the run's record."""

    model: MetriplecticModel
    model_kwargs: dict
    log: list[dict]
    best_epoch: int
    best_metric: float
    selection_basis: str
    scales: dict
    dataset_fingerprint: str
    checkpoint_path: Path
    device: str
    temperature_calibration: dict | None = None
    transport_calibration: dict | None = None  # closed fluids: the mobility scale (mpd.calibration)


def train(
    dataset_path,
    work_dir,
    config: ModelConfig | Mapping | None = None,
    *,
    device: str | torch.device | None = None,
    resume: bool = True,
    stop_after_epoch: int | None = None,
) -> TrainingResult:
    """Train on the dataset's train split; checkpoint.pt and training_log.csv go to `work_dir` every epoch.

    dataset_path : the geometry stage's output (or its dataset/ folder).
    config : ModelConfig or the ``model:`` mapping (defaults for missing keys).
    device : overrides TrainingParams.device ("auto": CUDA when available).
    resume : continue from work_dir/checkpoint.pt when it was written by the
        same configuration (`ModelConfig.training_hash`) on the same dataset;
        otherwise start afresh (with a log message).
    stop_after_epoch : stop after this many epochs in total, as if
        interrupted there (tests); the checkpoint is the one of that epoch.

    Data-parallel: when a torch.distributed process group with more than one
    rank is initialised (torchrun; `mpd.distributed`), every rank trains on
    its shard of each global batch, the gradients are summed over the ranks
    and rank 0 alone evaluates and writes (docs/training.md, Distributed
    training). Each rank returns a TrainingResult; rank 0's is the one to save.
    """
    config = ModelConfig.from_config(config) if not isinstance(config, ModelConfig) else config
    params = config.training
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = work_dir / "checkpoint.pt"
    device = resolve_device(device if device is not None else params.device)
    dtype = resolve_dtype(params.dtype)
    threads = torch.get_num_threads()
    if params.num_threads:
        # never more than the process was given (a workflow rule's `threads`, mpd.threads)
        if params.num_threads > threads:
            log.warning("training.num_threads = %d, but this process may use %d threads: using %d",
                        params.num_threads, threads, threads)
        torch.set_num_threads(min(params.num_threads, threads))
    try:
        return _train(config, dataset_path, checkpoint_path, work_dir, device, dtype, resume, stop_after_epoch)
    finally:
        torch.set_num_threads(threads)


def _train(config, dataset_path, checkpoint_path, work_dir, device, dtype, resume, stop_after_epoch):
    params = config.training
    train_set = SnapshotPairDataset(dataset_path, "train", dtype=dtype)
    val_set = SnapshotPairDataset(dataset_path, "val", dtype=dtype)
    if len(train_set) == 0:
        raise TrainingError(f"the dataset {train_set.root} has no training pairs")
    frames = dataset_frames(train_set)
    fingerprint = dataset_fingerprint(dataset_path)
    identity = checkpoint_identity(config, fingerprint)
    cage_train = cage_val = None
    if params.cage_weight > 0 and frames.dim != 2:
        log.info("cage objective off: a %dD periodic fluid (mpd.cage follows 2D cages relative to their "
                 "neighbours, with the background flow of a monolayer)", frames.dim)
    elif params.cage_weight > 0:
        cage_train = CageObjective(train_set, frames.reference_box, params.cage_steps, dtype, device, params.seed)
        cage_val = CageObjective(val_set, frames.reference_box, params.cage_steps, dtype, device, params.seed)
        if not cage_train.available:
            log.info("cage objective off: no run of %d consecutive frames in the training split", params.cage_steps)
            cage_train = cage_val = None
    ctx = ddp.context()

    loader_generator = torch.Generator()
    checkpoint = resumable_checkpoint(checkpoint_path, identity, params.epochs) if resume and ctx.is_main else None
    if ctx.active:  # every rank resumes or none does: rank 0 decides (and sets aside), the others follow
        (resumed,) = ddp.broadcast_floats([float(checkpoint is not None)], device)
        if resumed and checkpoint is None:
            checkpoint = load_checkpoint(checkpoint_path)
    if checkpoint is not None:
        kwargs = dict(checkpoint["model_kwargs"])
        model = build_model(kwargs, dtype, device)
        model.load_state_dict(checkpoint["model"])
        optimizer, scheduler = make_optimizer(model, params)
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        restore_random_states(checkpoint["rng"], loader_generator)
        start_epoch, history = int(checkpoint["epoch"]), list(checkpoint["log"])
        best_state, best_metric = checkpoint["best_model"], float(checkpoint["best_metric"])
        best_epoch = int(checkpoint["best_epoch"])
        log.info("resuming from %s after epoch %d", checkpoint_path, start_epoch)
    else:
        torch.manual_seed(params.seed)
        np.random.seed(params.seed)
        random.seed(params.seed)
        loader_generator.manual_seed(params.seed)
        network = config.network
        velocity_scale = (relative_velocity_scale(train_set) if network.teacher_velocity_scale == AUTO
                          else float(network.teacher_velocity_scale))
        solid = None
        if network.solid and not frames.has_reference:
            log.info("deviatoric (strain) energy off: the dataset has no reference configuration (a fluid stores "
                     "energy only via dilatation)")
            solid = False
        kwargs = model_kwargs(network, velocity_scale, frames.n_species, frames.dim, solid)
        model = build_model(kwargs, dtype, device)
        batch = collate_snapshots([train_set[k] for k in range(min(params.batch_size, len(train_set)))])
        pairs_t, pairs_t1 = batch_pairs(batch, frames, dtype, device)
        batch = batch_to(batch, device)
        model.train()
        teacher_labels(model, batch, pairs_t, pairs_t1)  # the first batch's label statistics (running ones)
        mass = calibrate_mass(model, batch, pairs_t) if network.mass_init == AUTO else float(network.mass_init)
        set_positive_scalar(model.log_mass, mass)
        if network.bath:
            initialise_bath(model, batch, pairs_t, network.bath_friction_init)
        k_B = calibrate_k_B(model, batch, pairs_t, pairs_t1) if network.k_B_init == AUTO else network.k_B_init
        set_positive_scalar(model.log_k_B, float(k_B))
        optimizer, scheduler = make_optimizer(model, params)
        start_epoch, history, best_state, best_metric, best_epoch = 0, [], None, math.inf, 0
    model.set_recompute_activations(params.recompute_activations)  # how the steps compute, not what
    model.compile_pairs(params.compile_pairs)

    if ctx.active:
        ddp.broadcast_module(model)  # identical by construction; rank 0's values make sure of it
        # the global batches' item indices: the same sampler and generator draws as the 1-process loader
        loader = DataLoader(list(range(len(train_set))), batch_size=params.batch_size, shuffle=True,
                            generator=loader_generator, collate_fn=list, num_workers=0)
    else:
        loader = DataLoader(train_set, batch_size=params.batch_size, shuffle=True, generator=loader_generator,
                            collate_fn=collate_snapshots, num_workers=0)
    val_items = spaced_items(len(val_set), params.max_val_pairs)
    windows = selection_windows(val_set, params.selection_steps, params.selection_starts)
    if frames.dim != 2 and windows:
        windows = []
        if params.selection_metric == "rollout":
            log.info("selection by rollouts off for a %dD periodic fluid (mpd.rollout.rollout is 2D): the "
                     "validation loss picks the best weights", frames.dim)
    basis = ("val_rollout_metric" if params.selection_metric == "rollout" and windows
             else ("val_objective" if cage_val is not None and cage_val.available else "val_loss") if val_items
             else "train_loss")
    show = params.progress and sys.stderr.isatty() and ctx.is_main
    noise_variance = observation_variances(params, frames.length_um)
    last_epoch = params.epochs if stop_after_epoch is None else min(params.epochs, stop_after_epoch)
    if not history:  # epoch 0: the initial weights, for reference (never selected as the best)
        t0 = time.perf_counter()
        model.eval()
        val_loss, metric = _evaluate(model, val_set, val_items, windows, frames, params, device, dtype, ctx, True)
        val_cage = _evaluate_cage(model, cage_val, ctx, device)
        history.append({
            "epoch": 0, "train_loss": math.nan, "val_loss": val_loss, "val_rollout_metric": metric,
            "train_cage": math.nan, "val_cage": val_cage, "lr": optimizer.param_groups[0]["lr"],
            "wall_s": time.perf_counter() - t0,
        })

    from tqdm.auto import tqdm

    equipartition = frames.dim != 2 and not frames.has_reference and not config.network.bath
    if equipartition and start_epoch == 0:
        log.info("k_B by equipartition: a closed fluid without a bath keeps the data's kinetic temperature only "
                 "when k_B <T_i> = m <v^2> / D")
    for epoch in range(start_epoch, last_epoch):
        t0 = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        model.train()
        total, weight = 0.0, 0
        cage_values: list[float] = []

        def cage_term(step: int, epoch: int = epoch, cage_values: list = cage_values) -> torch.Tensor | None:
            """params.cage_weight x the cage loss of this step's window, on the steps it is due (else None)."""
            if cage_train is None or step % params.cage_every:
                return None
            term = cage_train.term(model, epoch, step)
            if term is None or not torch.isfinite(term):
                return None  # no usable window, or a cage rollout that left the data: the likelihood alone
            cage_values.append(float(term.detach()))
            return params.cage_weight * term

        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{params.epochs}", disable=not show, leave=False)
        for step, batch in enumerate(bar):
            if ctx.active:
                stepped = _distributed_step(model, optimizer, train_set, batch, frames, params, device, dtype, ctx,
                                            f"at epoch {epoch + 1}, batch {step + 1}; the checkpoint of epoch "
                                            f"{epoch} is kept in {checkpoint_path}",
                                            extra=(lambda step=step: cage_term(step)) if ctx.is_main else None)
                if stepped is not None:
                    value, n_interior = stepped
                    total += value * n_interior
                    weight += n_interior
                    bar.set_postfix(loss=f"{value:.4g}")
                continue
            n_interior = int(batch["interior"].sum())
            if n_interior == 0:
                continue
            pairs_t, pairs_t1 = batch_pairs(batch, frames, dtype, device)
            optimizer.zero_grad(set_to_none=True)
            batch = batch_to(batch, device)
            loss = snapshot_loss(model, batch, pairs_t, pairs_t1, params.jitter, noise_variance)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"non-finite training loss at epoch {epoch + 1}, batch {step + 1}; the checkpoint of "
                    f"epoch {epoch} is kept in {checkpoint_path} (try a smaller learning_rate or float64)")
            extra = cage_term(step)
            (loss if extra is None else loss + extra).backward()
            if params.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), params.grad_clip)
            optimizer.step()
            if equipartition:  # k_B follows the temperatures: the noise is FDT-consistent with the data's
                set_positive_scalar(model.log_k_B, equipartition_k_B(model, batch, pairs_t))
            value = loss.item()
            total += value * n_interior
            weight += n_interior
            bar.set_postfix(loss=f"{value:.4g}")
        bar.close()
        scheduler.step()
        model.eval()
        train_loss = total / weight if weight else math.nan
        val_loss, metric = _evaluate(model, val_set, val_items, windows, frames, params, device, dtype, ctx, False)
        val_cage = _evaluate_cage(model, cage_val, ctx, device)
        train_cage = float(np.mean(cage_values)) if cage_values else math.nan
        objective = val_loss + params.cage_weight * val_cage if math.isfinite(val_cage) else val_loss
        score = {"val_rollout_metric": metric, "val_loss": val_loss, "val_objective": objective,
                 "train_loss": train_loss}[basis]
        if best_state is None or score < best_metric:
            best_metric, best_epoch = score, epoch + 1
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss,
                        "val_rollout_metric": metric, "train_cage": train_cage, "val_cage": val_cage, "lr": lr,
                        "wall_s": time.perf_counter() - t0})
        if not ctx.is_main:
            continue
        done = [row["wall_s"] for row in history[1:]][-(epoch + 1 - start_epoch):]
        left_s = (last_epoch - epoch - 1) * sum(done) / max(len(done), 1)
        log.info("epoch %d/%d: train %.5g val %.5g rollout %.4g cage %.3g/%.3g lr %.3g (%.1f s; about %s left)",
                 epoch + 1, last_epoch, train_loss, val_loss, metric, train_cage, val_cage, lr,
                 history[-1]["wall_s"], _duration(left_s))
        atomic_torch_save({
            "format": CHECKPOINT_FORMAT, "version": 1, "epoch": epoch + 1, **identity,
            "config": config.to_dict(), "model_kwargs": kwargs,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "best_model": best_state, "best_metric": best_metric, "best_epoch": best_epoch,
            "selection_basis": basis, "log": history, "rng": random_states(loader_generator),
        }, checkpoint_path)
        write_log(history, work_dir / "training_log.csv")

    best = build_model(kwargs, dtype, device)
    best.load_state_dict(best_state if best_state is not None else model.state_dict())
    best.eval()
    calibration = transport = None
    if params.calibrate_temperature and ctx.is_main and (stop_after_epoch is None or last_epoch == params.epochs):
        if frames.dim != 2:
            calibration, transport = calibrate_closed_fluid(best, train_set, frames, params, dtype, device)
        else:
            calibration = calibrate_model_temperature(best, train_set, frames, params, dtype, device)
    scales = {"length_um": frames.length_um, "time_s": frames.time_s}
    return TrainingResult(best, kwargs, history, best_epoch, best_metric, basis, scales, fingerprint,
                          checkpoint_path, str(device), calibration, transport)


def calibrate_model_temperature(model: MetriplecticModel, train_set: SnapshotPairDataset, frames: DatasetFrames,
                                params: TrainingParams, dtype: torch.dtype, device: torch.device) -> dict:
    """`mpd.cage.calibrate_temperature` on up to two windows of the training split (in place); its record.

    The windows are the longest runs of consecutive frames up to calibration_frames; without one long
    enough to settle and measure, k_B is left as trained and the record says why.
    """
    from mpd.cage import calibrate_temperature, load_window, window_starts

    need = params.calibration_settle + params.calibration_lag + 1
    length = params.calibration_frames
    starts = window_starts(train_set, length)
    while not starts and length > need:
        length -= 1
        starts = window_starts(train_set, length)
    if length < need or not starts:
        log.info("temperature not calibrated: the training split has no run of %d consecutive frames", need)
        return {"calibrated": False, "reason": f"no run of {need} consecutive training frames"}
    picks = sorted({starts[len(starts) // 2], starts[-1]})
    windows = [w for w in (load_window(train_set, s, length, frames.reference_box, dtype, device) for s in picks)
               if w is not None]
    if not windows:
        return {"calibrated": False, "reason": "no calibration window with enough interior particles"}
    record = calibrate_temperature(model, windows, params.calibration_lag, params.calibration_settle,
                                   seed=params.seed)
    if record["calibrated"]:
        log.info("temperature calibrated: k_B x %.3f (settled relative cage, model / data: %.3f -> %.3f)",
                 record["scale"], record["iterations"][0]["ratio"], record["ratio"])
    else:
        log.info("temperature not calibrated: %s", record["reason"])
    return {"frames": length, **record}


def _duration(seconds: float) -> str:
    """A duration for progress lines: 42 s, 3 min 5 s, 1 h 12 min."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _evaluate(model, val_set, val_items, windows, frames, params, device, dtype, ctx, initial: bool):
    """(val_loss, val_rollout_metric); data-parallel: rank 0 computes them and broadcasts them."""
    if ctx.is_main:
        val_loss = evaluate_loss(model, val_set, val_items, frames, params, device, dtype)
        metric = (selection_metric(model, val_set, windows, frames, params, device) if initial or windows
                  else math.nan)
    else:
        val_loss, metric = math.nan, math.nan
    if ctx.active:
        val_loss, metric = ddp.broadcast_floats([val_loss, metric], device)
    return val_loss, metric


def _evaluate_cage(model, cage: CageObjective | None, ctx, device) -> float:
    """The validation split's cage loss (rank 0 computes, every rank gets it); nan without one."""
    value = cage.evaluate(model) if cage is not None and cage.available and ctx.is_main else math.nan
    if ctx.active:
        (value,) = ddp.broadcast_floats([value], device)
    return value


def _distributed_step(model, optimizer, train_set, indices, frames, params, device, dtype, ctx, where, extra=None):
    """One optimiser step on this rank's shard of a global batch (item indices); (loss, n_interior) of the
    global batch, or None when it has no interior particle (every rank skips it).

    extra: on one rank, a callable giving a further loss term (the cage objective) or None; its gradient
    joins the sum over the ranks once.

    The shard's NLL summed over its interior particles, divided by the global
    batch's count, is backpropagated and the gradients summed over the ranks:
    the 1-process gradient of the global batch's mean NLL (up to summation order).
    """
    mine = ddp.shard(indices, ctx)
    batch = collate_snapshots([train_set[k] for k in mine]) if mine else None
    n_local = int(batch["interior"].sum()) if batch is not None else 0
    n_total = int(ddp.all_sum([n_local], device)[0])
    if n_total == 0:
        return None
    optimizer.zero_grad(set_to_none=True)
    loss_sum = None
    # The label statistics are the global batch's; a rank without interior particles joins their collectives
    # with zeros (teacher_labels adds nothing for it either).
    if batch is not None:
        pairs_t, pairs_t1 = batch_pairs(batch, frames, dtype, device)
        b = batch_to(batch, device)
        S0, S1 = teacher_labels(model, b, pairs_t, pairs_t1, reduce=ddp.differentiable_all_sum)
        labels = S0
    else:
        labels = ddp.differentiable_all_sum(torch.zeros(3, dtype=dtype, device=device, requires_grad=True))
        model.teacher.track(*model.teacher.statistics(labels.detach()))  # the same running statistics on every rank
    if n_local > 0:
        loss_sum = ddp.sharded_nll_sum(model, State(b["x0"], b["v0"], S0), State(b["x1"], b["v1"], S1), pairs_t,
                                       1.0, b["interior"], params.jitter, device, b["flow"],
                                       *observation_variances(params, frames.length_um))
    else:
        ddp.sharded_nll_sum(model, None, None, None, 1.0, None, params.jitter, device)
    value = ddp.all_sum([float(loss_sum.detach()) if loss_sum is not None else 0.0], device)[0] / n_total
    if not math.isfinite(value):
        raise TrainingError(f"non-finite training loss {where} (try a smaller learning_rate or float64)")
    if loss_sum is not None:
        (loss_sum / n_total).backward()
    else:  # the label statistics' backward collective, with a zero gradient: this rank adds nothing
        (labels.sum() * 0.0).backward()
    term = extra() if extra is not None else None
    if term is not None:
        term.backward()
    ddp.all_reduce_gradients(list(model.parameters()))
    if params.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), params.grad_clip)
    optimizer.step()
    return value, n_total


# ---------------------------------------------------------------------------
# Outputs: model.pt and the TorchScript rollout step
# ---------------------------------------------------------------------------


def model_metadata(result: TrainingResult, config: ModelConfig, dataset_path, dtype: str) -> dict:
    """What a user of model.pt needs besides the weights: units, scales, provenance."""
    h, dt = result.scales["length_um"], result.scales["time_s"]
    return {
        "units": {"length": "h", "time": "frame (dt)", "velocity": "h per frame", "entropy": "model units",
                  "energy": "model units", "mass": "model units"},
        "h_um": h, "dt_s": dt, "scales": dict(result.scales),
        "config_hash": config_hash(config), "training_hash": config.training_hash(), "config": config.to_dict(),
        "dataset": {"path": str(dataset_path), "fingerprint": result.dataset_fingerprint},
        "best_epoch": result.best_epoch, "best_metric": result.best_metric, "selection_basis": result.selection_basis,
        "epochs_run": max(len(result.log) - 1, 0), "dtype": dtype, "device": result.device,
        "temperature_calibration": result.temperature_calibration,
        "transport_calibration": result.transport_calibration,
        "versions": software_versions("torch", "numpy", "pandas"),
    }


def save_model(model: MetriplecticModel, kwargs: Mapping, metadata: Mapping, path: Path) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save({"format": MODEL_FORMAT, "version": MODEL_VERSION, "model_kwargs": dict(kwargs),
                       "state_dict": state, "metadata": dict(metadata)}, path)


def load_model(path, device: str | torch.device | None = "cpu", dtype: str | torch.dtype | None = None):
    """(model, metadata) from model.pt; dtype default: the training dtype."""
    rerun = "train it again (snakemake --forcerun train_model)"
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelFileError(f"the model file {path} does not exist: {rerun}") from None
    except UNREADABLE as error:  # torch's own message may advise weights_only=False: not for a file from elsewhere
        raise ModelFileError(f"the model file {path} cannot be read ({type(error).__name__}): it is corrupt, "
                             f"truncated or empty; {rerun}") from None
    if not isinstance(saved, dict) or saved.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{path} is not an {MODEL_FORMAT} file: {rerun}")
    if saved.get("version") != MODEL_VERSION:
        raise ModelFileError(f"{path} is an {MODEL_FORMAT} file of version {saved.get('version')}; this code reads "
                         f"version {MODEL_VERSION} (per-species masses changed the model): "
                         f"train it again (snakemake --forcerun train_model)")
    metadata = saved["metadata"]
    dtype = resolve_dtype(dtype or metadata.get("dtype", "float32"))
    model = build_model(saved["model_kwargs"], dtype, resolve_device(device))
    model.load_state_dict(saved["state_dict"])
    model.eval()
    return model, metadata


def save_scripted_step(model: MetriplecticModel, path: Path) -> None:
    """TorchScript of one rollout step, `torch.jit.script(EulerMaruyama(model))` (docs/model.md).

    Load with torch.jit.load; call it with grad mode on:
    step(state, pairs, dt, interior, generator, noise).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in favour of torch.export
        scripted = torch.jit.script(EulerMaruyama(copy.deepcopy(model)))
        buffer = io.BytesIO()
        torch.jit.save(scripted, buffer)
    atomic_write_bytes(buffer.getvalue(), path)


__all__ = [
    "LOG_COLUMNS",
    "DatasetFrames",
    "ModelFileError",
    "TrainingError",
    "TrainingResult",
    "batch_pairs",
    "calibrate_k_B",
    "dataset_frames",
    "evaluate_loss",
    "load_checkpoint",
    "load_model",
    "model_metadata",
    "observed_from_dataset",
    "save_model",
    "save_scripted_step",
    "selection_metric",
    "snapshot_loss",
    "train",
]
