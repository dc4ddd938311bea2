"""The baselines as a pipeline stage: fit on the training block, roll out from the held-back start, write tables.

`run_baseline(kind, truth, metadata, out_dir, settings)` takes the truth of a
simulated bulk sample (docs/data_schema.md; positions x, y, z wrapped, xu,
yu, zu unwrapped, vx, vy, vz; box lengths lx, ly, lz in its metadata), fits
the baseline ``kind`` (``dpd``: calibrated, ``gns`` / ``gns_sde``: trained) on
the training block of the `mpd.horizon` split only, rolls it out from the
held-back start for the split's rollout length, and writes into ``out_dir``
(``results/{exp}/baselines/{kind}/``), atomically:

* ``rollout.parquet``: the rollout in the truth's columns, frames
  ``start .. start + rollout_frames`` (the start frame is the truth's state);
* ``rollout_status.json``: ``status`` (``completed`` or ``diverged``),
  ``message``, ``frames_written``, ``diverged_at_frame``, the split;
* ``fit.json``: the fitted parameters and the calibration or training report;
* ``model.pt`` (GNS, GNS-SDE): the trained network (`mpd.baselines.gns.save_gns`).

A rollout that leaves the finite numbers (or moves a particle more than half
a box length in one interval: no longer a trajectory) stops there; what it
wrote before stays, and its status says so.
"""
from __future__ import annotations

import json
import time
from collections.abc import Mapping

import numpy as np
import pandas as pd

from mpd.atomic import atomic_output_dir
from mpd.geometry.particles import ParticleDataError, frame_interval, load_bulk_truth
from mpd.horizon import Horizon, comparison_settings
from mpd.jsonsafe import json_ready

KINDS = ("dpd", "gns", "gns_sde")
AXES = ("x", "y", "z")


class BaselineInputError(ValueError):
    """The truth or the settings cannot run a baseline; the message names the file or key and the fix."""


def trajectory_arrays(truth: pd.DataFrame, frames, dim: int, path="trajectories.parquet"):
    """(positions unwrapped, velocities) arrays (len(frames), N, dim) and the particle ids, sorted by id.

    Every particle must be present in every frame (a closed simulated sample).
    """
    axes = AXES[:dim]
    needed = ["frame", "particle", *(f"{a}u" for a in axes), *(f"v{a}" for a in axes)]
    missing = [c for c in needed if c not in truth.columns]
    if missing:
        raise BaselineInputError(f"{path} lacks column(s) {missing} (docs/data_schema.md)")
    rows = truth[truth["frame"].isin(frames)].sort_values(["frame", "particle"])
    ids = np.unique(rows["particle"].to_numpy())
    if len(rows) != len(frames) * len(ids):
        raise BaselineInputError(f"{path}: every particle must be present in frames {frames[0]}..{frames[-1]}")
    shape = (len(frames), len(ids), dim)
    positions = rows[[f"{a}u" for a in axes]].to_numpy(np.float64).reshape(shape)
    velocities = rows[[f"v{a}" for a in axes]].to_numpy(np.float64).reshape(shape)
    return positions, velocities, ids


def rollout_table(positions, velocities, first_frame: int, dt: float, t0: float, ids, species, lengths) -> pd.DataFrame:
    """A rollout (frames, N, D) as a trajectory table: wrapped and unwrapped positions and velocities."""
    n_frames, n, dim = positions.shape
    frames = np.repeat(np.arange(first_frame, first_frame + n_frames), n)
    table = {"frame": frames.astype(np.int64), "t": t0 + (frames - first_frame) * dt,
             "particle": np.tile(ids, n_frames).astype(np.int64), "species": np.tile(species, n_frames)}
    flat_x, flat_v = positions.reshape(-1, dim), velocities.reshape(-1, dim)
    for k, axis in enumerate(AXES[:dim]):
        table[axis] = np.mod(flat_x[:, k], lengths[k])
    for k, axis in enumerate(AXES[:dim]):
        table[f"{axis}u"] = flat_x[:, k]
    for k, axis in enumerate(AXES[:dim]):
        table[f"v{axis}"] = flat_v[:, k]
    return pd.DataFrame(table)


def _first_bad_frame(positions, velocities, start_positions, lengths) -> int | None:
    """Index of the first rollout frame that is not finite or jumps more than half a box length."""
    previous = start_positions
    for k in range(len(positions)):
        if not (np.isfinite(positions[k]).all() and np.isfinite(velocities[k]).all()):
            return k
        if (np.abs(positions[k] - previous) > 0.5 * lengths).any():
            return k
        previous = positions[k]
    return None


def _fit_and_roll(kind: str, block_x, block_v, lengths, dt, split: Horizon, history_x, start_v, settings, out_dir,
                  seed: int):
    if kind == "dpd":
        from mpd.baselines.dpd import DPDParams, calibrate_dpd, rollout_dpd

        options = dict(settings.get("dpd") or {})
        params, report = calibrate_dpd(block_x, block_v, lengths, dt, seed=seed, **options)
        positions, velocities = rollout_dpd(params, history_x[-1], start_v, lengths, dt, split.rollout_frames,
                                            seed=seed)
        return positions, velocities, {"params": params.to_dict(), "calibration": report,
                                       "class": DPDParams.__name__}
    from mpd.baselines.gns import GNSParams, rollout_gns, save_gns, train_gns

    options = dict(settings.get(kind) or {})
    params = GNSParams(**{**options, "stochastic": kind == "gns_sde", "seed": seed})
    model, log = train_gns(block_x, block_v, lengths, dt, params)
    save_gns(model, out_dir / "model.pt")
    positions, velocities = rollout_gns(model, history_x, lengths, dt, split.rollout_frames, seed=seed)
    losses = log.get("loss", [])
    return positions, velocities, {"params": dict(vars(params)), "training": {
        k: v for k, v in log.items() if k != "loss"}, "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None}


def run_baseline(kind: str, truth_path, metadata_path, out_dir, settings: Mapping | None = None) -> dict:
    """Fit baseline ``kind`` on the training block and roll it out (module docstring); returns the status."""
    if kind not in KINDS:
        raise BaselineInputError(f"unknown baseline {kind!r}; choose one of {list(KINDS)}")
    settings = comparison_settings(settings)
    seed = int(settings["seed"])
    try:
        bulk = load_bulk_truth(truth_path, metadata_path, settings)
    except ParticleDataError as error:
        raise BaselineInputError(str(error)) from None
    truth, frame_values, split, lengths = bulk.table, bulk.frames, bulk.split, bulk.lengths
    dim = len(lengths)
    dt = frame_interval(truth)
    block_x, block_v, ids = trajectory_arrays(truth, frame_values[:split.train_frames], dim, truth_path)
    history_frames = frame_values[split.train_frames:split.start + 1]  # held back, never trained on
    history_x, history_v, _ = trajectory_arrays(truth, history_frames, dim, truth_path)
    start_rows = bulk.rows(split.start)
    species = start_rows["species"].to_numpy() if "species" in start_rows else np.zeros(len(ids), np.int8)

    clock = time.process_time()
    with atomic_output_dir(out_dir) as tmp:
        try:
            positions, velocities, fit = _fit_and_roll(kind, block_x, block_v, lengths, dt, split, history_x,
                                                       history_v[-1], settings, tmp, seed)
        except (TypeError, ValueError) as error:  # a setting the baseline refuses: name the section
            raise BaselineInputError(f"comparison.{kind}: {error}; fix the setting in the experiment's "
                                     f"comparison section") from error
        bad = _first_bad_frame(positions, velocities, history_x[-1], lengths)
        kept = len(positions) if bad is None else bad
        start_frame = int(frame_values[split.start])
        table = rollout_table(np.concatenate([history_x[-1:], positions[:kept]]),
                              np.concatenate([history_v[-1:], velocities[:kept]]), start_frame, dt,
                              float(start_rows["t"].iloc[0]), ids, species, lengths)
        table.to_parquet(tmp / "rollout.parquet", index=False)
        status = {
            "model": kind, "status": "completed" if bad is None else "diverged",
            "message": "completed" if bad is None else
            f"left finite numbers or jumped over half the box at frame {start_frame + bad + 1}",
            "frames_written": int(kept + 1), "diverged_at_frame": None if bad is None else start_frame + bad + 1,
            "split": split.to_dict(), "cpu_s": time.process_time() - clock,
        }
        (tmp / "rollout_status.json").write_text(json.dumps(json_ready(status), indent=2))
        (tmp / "fit.json").write_text(json.dumps(json_ready(fit), indent=2))
    return status
