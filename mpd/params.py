"""Hyperparameters of the learned model, its training and its rollouts, with units and defaults.

These dataclasses are the single home of the defaults: the workflow's schema
fragment (``mpd/model_schema.yaml``, the ``model:`` section) checks the types
and ranges of the same keys but sets no defaults, so a value is never defined
in two places. ``from_config`` rejects unknown keys by name, so a typo in
``config.yaml`` cannot be silently ignored.

Units. The model works in the dataset's nondimensional units
(docs/geometry.md): lengths in units of the cut-off h, times in frames
(dt = 1/frame_rate), velocities in h per frame. Lengths a user writes here
(``skin``, the divergence bounds) are therefore in units of h, times in frames.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

AUTO = "auto"
SCHEDULES = ("cosine", "step", "constant")
SELECTION_METRICS = ("rollout", "val_loss")
DTYPES = ("float32", "float64")
RECOMPUTE_MODES = ("auto", "always", "never")  # as mpd.model.layers.RECOMPUTE_MODES (no torch import here)
DEVICES = ("auto", "cpu", "cuda")
NOISE_STREAMS = ("torch", "counter")  # as mpd.model.streams.NOISE_STREAMS (no torch import here)


class ParameterError(ValueError):
    """A model parameter is unknown or out of range; the message names the key."""


class _FromConfig:
    """Mixin: `from_config(section)` builds the dataclass from a (possibly partial) mapping.

    Missing keys take the defaults; unknown keys raise ParameterError naming
    the dotted key (e.g. ``model.training.epoch``); values are range-checked.
    """

    _where = "model"

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None = None, where: str | None = None):
        return _build(cls, section, where or cls._where)


@dataclass(frozen=True)
class NetworkParams(_FromConfig):
    """Architecture and initial values of `mpd.model.MetriplecticModel` (nondimensional units)."""

    _where = "model.network"

    kernel_hidden: tuple[int, ...] = (32, 32)     # widths of the volume kernel MLP W(r)
    energy_hidden: tuple[int, ...] = (32, 32)     # widths of the monotone convex energy networks U_vol, U_dev
    amplitude_hidden: tuple[int, ...] = (32, 32)  # widths of the noise-amplitude MLP (a, b, c)
    teacher_hidden: tuple[int, ...] = (64, 64)    # widths of the entropy teacher (edge convolution)
    solid: bool = True                            # True: U = U_vol + U_dev (strain energy); False: fluid
    k_B_init: float | str = AUTO    # initial k_B (model energy units); "auto": match the noise to the data's velocity increments
    mass_init: float | str = AUTO   # initial particle mass m (model units); "auto": match the forces to the data's accelerations
    teacher_velocity_scale: float | str = AUTO  # h/frame, velocity unit of the teacher's inputs; "auto": rms |v_ij| of the data
    teacher_velocities: bool = True  # the teacher sees relative velocities (the paper's); False: positions only
    strict_convexity: float = 1e-3  # weight of the strictly convex floor of the energy networks (docs/model.md)
    bath: bool = True               # single-particle friction and noise against the solvent (docs/model.md, Bath)
    bath_hidden: tuple[int, ...] = (16,)  # widths of the bath's heat-conductance network kappa(T / T_b)
    bath_friction_init: float = 1.0  # 1/frame, initial friction rate gamma of the bath (1: overdamped at the frame rate)


@dataclass(frozen=True)
class TrainingParams(_FromConfig):
    """Optimisation, checkpoints and model selection."""

    _where = "model.training"

    epochs: int = 100                 # passes over the training split
    batch_size: int = 4               # snapshot pairs per optimiser step
    learning_rate: float = 3e-3       # Adam's initial learning rate
    schedule: str = "cosine"          # "cosine" (to min_learning_rate), "step" or "constant"
    min_learning_rate: float = 1e-5   # floor of the cosine schedule
    step_epochs: int = 20             # "step" schedule: epochs between decays
    step_factor: float = 0.5          # "step" schedule: factor per decay
    weight_decay: float = 0.0         # Adam's L2 penalty
    grad_clip: float | None = 10.0    # largest global gradient norm; None: no clipping
    jitter: float = 1e-6              # relative diagonal floor of the likelihood's covariance (docs/model.md)
    seed: int = 0                     # seeds the weights, the shuffling and the selection rollouts
    dtype: str = "float32"            # "float32" or "float64"
    device: str = "auto"              # "auto" (CUDA when available), "cpu" or "cuda"
    max_val_pairs: int | None = 16    # validation pairs evaluated for val_loss (evenly spaced); None: all
    selection_metric: str = "val_loss"  # "val_loss" or "rollout" (val_rollout_metric) picks the best weights
    selection_starts: int = 2         # validation snapshots the selection rollouts start from
    selection_steps: int = 4          # frames per selection rollout
    progress: bool = True             # tqdm progress bar (also off when stderr is not a terminal)
    num_threads: int | None = None    # torch CPU threads, at most the process's; None: all it was given
    measurement_noise_um: float = 0.0  # µm, rms localisation error per coordinate of the tracked positions (docs/training.md)
    entropy_resolution: float = 0.01  # resolution of the standardised entropy labels in the likelihood (docs/training.md)
    cage_weight: float = 5.0          # weight of the cage objective (mpd.cage, docs/training.md); 0: likelihood only
    cage_steps: int = 8               # frames of each cage rollout
    cage_every: int = 4               # optimiser steps per cage rollout (a window of the training split each time)
    calibrate_temperature: bool = True  # after training, scale k_B so relaxed rollouts' cages match the data's
    calibration_frames: int = 60      # frames of each calibration rollout (at most the training split's longest run)
    calibration_settle: int = 20      # frames a calibration rollout runs before it is measured
    calibration_lag: int = 10         # frames of the measured relative displacements
    calibrate_mobility: bool = True   # closed fluids: after k_B, scale M so settled rollouts' VACF integral matches
    compile_pairs: bool = False       # torch.compile the pair chunks (needs a C++ compiler): ~1.15x faster steps after ~30 s
    recompute_activations: str = "auto"  # "auto" (above 250k pairs per batch), "always" or "never": recompute the pair
    #                                      networks in backward instead of storing them (less memory, slower step)


@dataclass(frozen=True)
class RolloutParams(_FromConfig):
    """Rollouts of the learned dynamics (physics.md, Rollout)."""

    _where = "model.rollout"

    start_frame: int | None = None    # first frame; None: first frame of the dataset's test split (else of the data)
    n_frames: int | None = None       # frames to predict after the start; None: to the last frame of the data
    substeps: int = 1                 # model steps per frame (dt = 1/substeps frames)
    skin: float = 0.3                 # h, Verlet-list skin: pairs are searched within h + skin
    noise: bool = True                # False: deterministic k_B -> 0 limit (no noise, no k_B div M)
    seed: int = 0                     # seeds the rollout's noise
    noise_stream: str = "torch"       # "torch": a torch.Generator in pair order; "counter": keyed by particle ids
    #                                   and the step (mpd.model.streams), the same noise in any pair order or partition
    dtype: str = "float64"            # "float32" or "float64"
    device: str = "auto"              # "auto", "cpu" or "cuda"
    max_step_displacement: float = 1.0  # h: a predicted particle moving farther in one frame means divergence
    escape_margin: float = 5.0        # h: a predicted particle this far outside the field of view means divergence
    duplicate_distance: float = 0.25  # h: an observed particle this close to a predicted one is its copy under a new id
    box_start_frame: int | None = None  # first frame of a twin's periodic-box rollout; None: as the window rollout
    box_n_frames: int | None = None   # frames of the periodic-box rollout; None: to the last frame of the truth
    energy_blowup: float = 1.0e3      # divergence when |e - e0| > energy_blowup * max(|e0|, kinetic e0), e per particle
    progress: bool = True             # tqdm progress bar (also off when stderr is not a terminal)


@dataclass(frozen=True)
class ModelConfig(_FromConfig):
    """The ``model:`` section of the configuration: network, training, rollout."""

    _where = "model"

    network: NetworkParams = field(default_factory=NetworkParams)
    training: TrainingParams = field(default_factory=TrainingParams)
    rollout: RolloutParams = field(default_factory=RolloutParams)

    def to_dict(self) -> dict:
        return to_dict(self)

    def training_hash(self) -> str:
        """Hash of what determines a training run (network and training, less how it is computed: progress,
        device, threads, compilation, activation recomputation).

        A checkpoint is resumed only when this matches, so a changed
        hyperparameter never continues an old run.
        """
        ignored = ("progress", "device", "num_threads", "compile_pairs", "recompute_activations")
        training = {k: v for k, v in to_dict(self.training).items() if k not in ignored}
        return config_hash({"network": to_dict(self.network), "training": training})


_NESTED = {"network": NetworkParams, "training": TrainingParams, "rollout": RolloutParams}
_TUPLES = ("kernel_hidden", "energy_hidden", "amplitude_hidden", "teacher_hidden", "bath_hidden")
_POSITIVE_INTS = ("epochs", "batch_size", "step_epochs", "selection_starts", "selection_steps", "substeps",
                  "cage_steps", "cage_every", "calibration_frames", "calibration_lag")
_OPTIONAL_POSITIVE_INTS = ("max_val_pairs", "num_threads", "n_frames", "box_n_frames")
_CHOICES = {"schedule": SCHEDULES, "selection_metric": SELECTION_METRICS, "dtype": DTYPES, "device": DEVICES,
            "recompute_activations": RECOMPUTE_MODES, "noise_stream": NOISE_STREAMS}


def _build(cls, values, where: str):
    if values is None:
        values = {}
    if isinstance(values, cls):
        return values
    if not isinstance(values, Mapping):
        raise ParameterError(f"{where} must be a mapping, got {type(values).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ParameterError(f"unknown key {where}.{unknown[0]}; allowed keys: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in values.items():
        if cls is ModelConfig:
            kwargs[name] = _build(_NESTED[name], value, f"{where}.{name}")
        elif name in _TUPLES:
            if not isinstance(value, list | tuple):
                raise ParameterError(f"{where}.{name} must be a list of layer widths, got {value!r}")
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    params = cls(**kwargs)
    if cls is not ModelConfig:
        _check(params, where)
    return params


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _problem(name: str, value) -> str | None:
    """Why `value` is not allowed for key `name`, or None when it is."""
    if name in _TUPLES:
        ok = len(value) > 0 and all(_is_int(w) and w >= 1 for w in value)
        return None if ok else "must be a non-empty list of positive integers"
    if name in ("k_B_init", "mass_init", "teacher_velocity_scale"):
        return None if value == AUTO or (_is_number(value) and value > 0) else "must be a positive number or 'auto'"
    if name in ("solid", "progress", "noise", "bath", "teacher_velocities", "calibrate_temperature",
                "calibrate_mobility", "compile_pairs"):
        return None if isinstance(value, bool) else "must be true or false"
    if name in _POSITIVE_INTS:
        return None if _is_int(value) and value >= 1 else "must be an integer >= 1"
    if name in _OPTIONAL_POSITIVE_INTS:
        return None if value is None or (_is_int(value) and value >= 1) else "must be an integer >= 1 or null"
    if name in ("seed", "calibration_settle"):
        return None if _is_int(value) and value >= 0 else "must be an integer >= 0"
    if name in ("start_frame", "box_start_frame"):
        return None if value is None or (_is_int(value) and value >= 0) else "must be an integer >= 0 or null"
    if name == "grad_clip":
        return None if value is None or (_is_number(value) and value > 0) else "must be a positive number or null"
    if name in ("weight_decay", "skin", "measurement_noise_um", "entropy_resolution", "duplicate_distance",
                "cage_weight"):
        return None if _is_number(value) and value >= 0 else "must be a number >= 0"
    if name == "step_factor":
        return None if _is_number(value) and 0 < value <= 1 else "must be in (0, 1]"
    if name == "jitter":
        return None if _is_number(value) and 0 <= value < 1 else "must be in [0, 1)"
    if name in _CHOICES:
        return None if value in _CHOICES[name] else f"must be one of {', '.join(_CHOICES[name])}"
    # learning rates, mass, strict_convexity, divergence bounds
    return None if _is_number(value) and value > 0 else "must be a positive number"


def _check(params, where: str) -> None:
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        problem = _problem(f.name, value)
        if problem:
            raise ParameterError(f"{where}.{f.name} {problem}, got {value!r}")
    if isinstance(params, TrainingParams) and params.min_learning_rate > params.learning_rate:
        raise ParameterError(
            f"{where}.min_learning_rate ({params.min_learning_rate}) must not exceed "
            f"{where}.learning_rate ({params.learning_rate})"
        )


def to_dict(params) -> dict:
    """Plain, JSON-ready dict of a params dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(params)))


def config_hash(section) -> str:
    """First 16 hex digits of the SHA-256 of the canonical JSON of a config section or dataclass."""
    if dataclasses.is_dataclass(section):
        section = to_dict(section)
    text = json.dumps(section, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


__all__ = [
    "AUTO",
    "ModelConfig",
    "NetworkParams",
    "ParameterError",
    "RolloutParams",
    "TrainingParams",
    "config_hash",
    "to_dict",
]
