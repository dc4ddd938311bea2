"""The training dataset of a simulated 3D periodic fluid (star-polymer melts; docs/geometry.md).

`particle_dataset` turns a simulation trajectory table (LAMMPS: positions and
exact velocities of coarse-grained particles in an orthorhombic periodic box)
into the snapshot-pair dataset of `mpd.geometry.dataset` (format version 2,
metadata ``dimension: 3``), which `SnapshotPairDataset` reads as (N, 3)
tensors. A fluid stores energy only via dilatation: there is no reference
configuration (has_ref False, no strain bonds), no background flow (zero) and
no window (every particle is interior: the box is closed).

Positions on disk: x0 is the wrapped position at t (in [0, L)), x1 = x0 plus
the unwrapped displacement xu(t+1) - xu(t), so x1 - x0 is the true motion
over the frame while both stay within about one box of the origin (float32
keeps its resolution however far the particles diffuse). Velocities are the
simulation's own (no finite differences).
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mpd.atomic import atomic_output_dir
from mpd.geometry.dataset import build_pairs, write_pair_table
from mpd.geometry.domain import OrthoBox
from mpd.horizon import Horizon

AXES = ("x", "y", "z")
TRAJECTORY_COLUMNS_3D = ("frame", "particle", "x", "y", "z", "xu", "yu", "zu", "vx", "vy", "vz")
#: relative tolerance of the checks on the frame spacing and on x == xu mod L
TOLERANCE = 1e-6


class ParticleDataError(ValueError):
    """The trajectory table cannot make a 3D periodic dataset; the message says what to fix."""


def box_lengths(metadata: Mapping, path="metadata.json") -> np.ndarray:
    """(lx, ly[, lz]) of an orthorhombic periodic box from a truth metadata document."""
    keys = ["lx", "ly", "lz"] if "lz" in metadata else ["lx", "ly"]
    try:
        lengths = np.array([float(metadata[k]) for k in keys])
    except (KeyError, TypeError, ValueError) as error:
        raise ParticleDataError(f"{path} lacks the box lengths {keys} of a periodic sample ({error})") from None
    if not (np.isfinite(lengths).all() and (lengths > 0).all()):
        raise ParticleDataError(f"{path}: box lengths {lengths.tolist()} must be finite and > 0")
    return lengths


@dataclass(frozen=True)
class BulkTruth:
    """The truth of a simulated bulk sample and its comparison split (`load_bulk_truth`)."""

    table: pd.DataFrame     # trajectory table (columns of `TRAJECTORY_COLUMNS_3D`, t, species)
    metadata: dict          # the truth's metadata.json
    lengths: np.ndarray     # box lengths (lx, ly[, lz])
    frames: np.ndarray      # the distinct frame numbers, sorted
    split: Horizon          # `mpd.horizon.horizon` of the comparison settings, in positions into `frames`

    def rows(self, index: int) -> pd.DataFrame:
        """The rows of frame ``frames[index]``, sorted by particle."""
        return self.table[self.table["frame"] == self.frames[index]].sort_values("particle")


def load_bulk_truth(truth_path, metadata_path, comparison=None) -> BulkTruth:
    """Read a simulated bulk sample's truth and split it by the experiment's `comparison:` settings.

    One reading of truth, box and split for every stage that uses them: the
    learned model's dataset and rollout, the baselines and the comparison.
    """
    from mpd.horizon import comparison_settings, horizon

    settings = comparison_settings(comparison)
    metadata = json.loads(Path(metadata_path).read_text())
    lengths = box_lengths(metadata, metadata_path)
    table = load_particle_trajectories(truth_path)
    frames = np.unique(table["frame"].to_numpy())
    split = horizon(len(frames), settings["train_frames"], settings["rollout_factor"])
    return BulkTruth(table, metadata, lengths, frames, split)


def load_particle_trajectories(trajectories) -> pd.DataFrame:
    """A DataFrame, or a parquet / csv file of one."""
    if isinstance(trajectories, pd.DataFrame):
        return trajectories
    path = Path(trajectories)
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def frame_interval(table: pd.DataFrame, time_scale: float | None = None) -> float:
    """Time between consecutive frames, from the ``t`` column (it must be uniform), or `time_scale`.

    The model takes one step per frame, so the dataset's time scale must be
    the frame interval; a given time_scale that disagrees with ``t`` is an error.
    """
    interval = None
    if "t" in table.columns:
        per_frame = table.groupby("frame")["t"].first().sort_index()
        frames = per_frame.index.to_numpy(np.float64)
        if len(frames) > 1:
            rates = np.diff(per_frame.to_numpy(np.float64)) / np.diff(frames)
            interval = float(np.median(rates))
            if not (interval > 0 and np.allclose(rates, interval, rtol=1e-4, atol=0)):
                raise ParticleDataError(f"the frames are not equally spaced in t (t per frame from {rates.min():g} "
                                        f"to {rates.max():g}): the model takes one step per frame")
    if time_scale is None:
        if interval is None:
            raise ParticleDataError("give time_scale (the time between frames): the table has no usable t column")
        return interval
    time_scale = float(time_scale)
    if not (np.isfinite(time_scale) and time_scale > 0):
        raise ParticleDataError(f"time_scale must be a positive number, got {time_scale}")
    if interval is not None and not np.isclose(time_scale, interval, rtol=1e-4, atol=0):
        raise ParticleDataError(f"time_scale {time_scale:g} is not the frame interval {interval:g} of the t column "
                                f"(the model takes one step per frame)")
    return time_scale


def particle_dataset(
    trajectories,
    box_lengths: Sequence[float],
    out_dir,
    *,
    length_scale: float,
    time_scale: float | None = None,
    split_fractions=(0.7, 0.15, 0.15),
    gap_pairs: int = 1,
    extra_metadata: Mapping | None = None,
) -> dict:
    """Write the snapshot-pair dataset of a 3D periodic simulation into `out_dir`; returns its metadata.

    trajectories : table (or parquet/csv file) with columns frame, particle,
        x, y, z (wrapped), xu, yu, zu (unwrapped), vx, vy, vz, and optionally
        t and species (int labels 0, 1, ...; default all 0). Lengths and times
        in the simulation's units (e.g. LAMMPS σ and τ).
    box_lengths : (lx, ly, lz) of the orthorhombic box (constant in time; the
        corner position does not matter).
    length_scale : h, the model's cut-off, in the same length unit; must be
        below half the shortest box edge.
    time_scale : the time between frames (default: from t, which must then
        be uniform; a given value must agree with t).
    split_fractions, gap_pairs : as `mpd.geometry.dataset.split_blocks`.
    """
    table = load_particle_trajectories(trajectories)
    missing = [c for c in TRAJECTORY_COLUMNS_3D if c not in table.columns]
    if missing:
        raise ParticleDataError(f"the trajectory table lacks the columns {missing} "
                                f"(needs {list(TRAJECTORY_COLUMNS_3D)}, optionally t and species)")
    box = OrthoBox(tuple(box_lengths))
    if box.dim != 3:
        raise ParticleDataError(f"box_lengths must be (lx, ly, lz), got {box.lengths}")
    h = float(length_scale)
    if not (np.isfinite(h) and 0 < h < box.max_cutoff()):
        raise ParticleDataError(f"length_scale h={h} must be > 0 and < half the shortest box edge "
                                f"({box.max_cutoff():g})")
    if table.duplicated(["frame", "particle"]).any():
        raise ParticleDataError("a particle appears twice in one frame")
    numeric = list(TRAJECTORY_COLUMNS_3D[2:])
    values = table[numeric].to_numpy(np.float64)
    if not np.isfinite(values).all():
        raise ParticleDataError("positions or velocities contain NaN or inf")
    wrapped, unwrapped = values[:, 0:3], values[:, 3:6]
    offset = box.minimum_image(wrapped - unwrapped)  # zero when x == xu mod L
    if np.abs(offset).max(initial=0.0) > TOLERANCE * max(box.lengths) + 1e-9 * np.abs(unwrapped).max(initial=0.0):
        raise ParticleDataError("the wrapped positions x, y, z are not the unwrapped xu, yu, zu modulo the box: "
                                "check the columns and box_lengths")
    dt = frame_interval(table, time_scale)
    species = table["species"].to_numpy(np.int64) if "species" in table.columns else np.zeros(len(table), np.int64)
    if len(species) and species.min() < 0:
        raise ParticleDataError("species labels must be 0, 1, ...")
    rows = pd.DataFrame({"frame": table["frame"].to_numpy(np.int64), "particle": table["particle"].to_numpy(np.int64),
                         "x": unwrapped[:, 0], "y": unwrapped[:, 1], "z": unwrapped[:, 2],
                         "vx": values[:, 6], "vy": values[:, 7], "vz": values[:, 8],
                         "x_ref": np.nan, "y_ref": np.nan, "z_ref": np.nan, "interior": True, "species": species})
    pairs = build_pairs(rows, dimension=3)
    # Shift each pair's two positions by the lattice vector that wraps x0: x1 - x0 is unchanged.
    x0 = pairs[["x0", "y0", "z0"]].to_numpy()
    shift = box.wrap(x0) - x0
    for k, axis in enumerate(AXES):
        pairs[f"{axis}0"] = x0[:, k] + shift[:, k]
        pairs[f"{axis}1"] = pairs[f"{axis}1"].to_numpy() + shift[:, k]
    frames = np.unique(table["frame"].to_numpy(np.int64))
    metadata = {
        "kind": "periodic_fluid",
        "source": "simulation trajectories (mpd.geometry.particles.particle_dataset)",
        "has_reference": False,
        "velocity": "exact (the simulation's velocities)",
        "length_unit": "the simulation's (length_scale_um holds h in it)",
        "time_unit": "the simulation's (time_scale_s holds the frame interval in it)",
        "box_lengths": list(box.lengths),
        "n_particles_max": int(table.groupby("frame").size().max()) if len(table) else 0,
        "geometry": {},
    }
    metadata.update(dict(extra_metadata or {}))
    return write_pair_table(out_dir, pairs, length_scale_um=h, frame_rate_hz=1.0 / dt,
                            split_fractions=split_fractions, gap_pairs=gap_pairs,
                            boxes={int(f): box for f in frames}, extra_metadata=metadata, dimension=3)


__all__ = ["TRAJECTORY_COLUMNS_3D", "ParticleDataError", "frame_interval", "particle_dataset"]


#: Verlet skin of the rollouts (mpd.rollout.periodic_fluid_rollout), in units of h: h (1 + skin) < L / 2.
ROLLOUT_SKIN = 0.3
#: Dataset splits of a training block: train and validation only (the held-back truth is the test).
BLOCK_SPLIT_FRACTIONS = (0.8, 0.2, 0.0)


def training_block_dataset(truth_path, metadata_path, out_dir, geometry=None, comparison=None) -> dict:
    """The dataset of a simulated bulk sample's training block (`mpd.horizon`); returns its metadata.

    Only frames ``[0, comparison.train_frames)`` enter: the rest is the
    held-back truth the rollouts are compared with. ``geometry`` (the
    experiment's `geometry:` section) gives the cut-off h: ``h_um`` in the
    sample's length unit, or ``h_factor`` (default 1.5) times the mean spacing
    n^(-1/3); and ``split_fractions`` (default train 0.8, validation 0.2,
    no test) and ``gap_pairs`` within the block.
    """
    from mpd.geometry.params import GeometryParams

    section = dict(geometry or {})
    section.setdefault("split_fractions", list(BLOCK_SPLIT_FRACTIONS))
    params = GeometryParams.from_config(section)
    truth = load_bulk_truth(truth_path, metadata_path, comparison)
    lengths, split, metadata = truth.lengths, truth.split, truth.metadata
    block = truth.table[truth.table["frame"].isin(truth.frames[:split.train_frames])]
    n_particles = block.groupby("frame")["particle"].nunique().mean()
    spacing = (float(np.prod(lengths)) / n_particles) ** (1.0 / len(lengths))
    h = params.cutoff_um(spacing)
    if (1.0 + ROLLOUT_SKIN) * h >= 0.5 * float(lengths.min()):
        raise ParticleDataError(
            f"the cut-off h = {h:.3g} (geometry: {'h_um' if params.h_um != 'auto' else f'h_factor {params.h_factor}'}"
            f" x mean spacing {spacing:.3g}) plus the rollouts' Verlet skin ({ROLLOUT_SKIN} h) must be below half "
            f"the box side {float(lengths.min()):.3g}: lower geometry.h_factor (or h_um) or simulate a larger box "
            f"(synthetic.star_polymer.n_polymers)")
    with atomic_output_dir(out_dir) as tmp:  # the whole dataset appears at once, or the old one stays
        return particle_dataset(block, lengths, tmp, length_scale=h, split_fractions=params.split_fractions,
                                gap_pairs=params.gap_pairs,
                                extra_metadata={"horizon": split.to_dict(), "mean_spacing": spacing,
                                                "h_rule": "h_um" if params.h_um != "auto" else
                                                f"{params.h_factor} x mean spacing n^(-1/3)",
                                                "source": str(truth_path), "units": metadata.get("units")})
