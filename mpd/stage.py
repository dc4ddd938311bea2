"""Stage functions the Snakemake rules call: train the model, roll it out (docs/training.md).

Both write into `results/{exp}/model/`, file by file and each atomically
(temporary file + rename), because the two rules share the folder:

    train_model   -> model.pt, rollout_step.pt, training_log.csv (+ checkpoint.pt, kept for resuming)
    rollout_model -> rollout.parquet, conservation.csv, rollout_status.json
"""
from __future__ import annotations

import io
import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from mpd.atomic import atomic_write_bytes
from mpd.geometry.dataset import dataset_dir as find_dataset_dir
from mpd.geometry.dataset import read_metadata
from mpd.geometry.domain import Box
from mpd.geometry.loader import SnapshotPairDataset
from mpd.geometry.reference import reference_frames
from mpd.params import ModelConfig, RolloutParams
from mpd.rollout import ObservedFrames, observed_from_table, rollout, wrap_in_frame_cells
from mpd.training import (
    dataset_frames,
    load_model,
    model_metadata,
    save_model,
    save_scripted_step,
    train,
    write_log,
)

log = logging.getLogger(__name__)

TRAJECTORY_COLUMNS = ("frame", "particle", "x", "y", "vx", "vy")
ROLLOUT_UNITS = {
    "frame": "", "t": "s", "particle": "", "x": "µm", "y": "µm", "vx": "µm/s", "vy": "µm/s",
    "S": "model entropy units", "predicted": "bool: integrated by the model (else prescribed from data)",
    "interior": "bool: not exterior by the geometry stage's rule at this frame",
    "segment": "hand-overs between data and model so far (mpd.rollout: a new segment at each)",
    "xu": "µm, unwrapped (periodic data only)", "yu": "µm, unwrapped (periodic data only)",
}


def train_model(dataset_dir, out_dir, params=None, *, device=None, resume: bool = True, tasks: int = 1,
                threads_per_task: int | None = None, log_file=None) -> Path:
    """Train on the geometry stage's dataset; write model.pt, rollout_step.pt, training_log.csv into out_dir.

    dataset_dir : `results/{exp}/geometry` (or its `dataset/` folder).
    out_dir : `results/{exp}/model`; checkpoint.pt is written there every
        epoch and resumed from when `resume` and the configuration and data
        are unchanged (an interrupted job continues where it stopped).
    params : the ``model:`` config section (mapping) or a ModelConfig.
    device : overrides model.training.device ("cpu", "cuda", "auto").
    tasks : data-parallel processes; more than 1 starts them with
        `mpd.distributed.launch` (srun inside a SLURM job, else torchrun on
        this machine), each with `threads_per_task` threads; `log_file` is
        the rule's log, named by the error when they fail.
    """
    config = effective_model_config(params, dataset_dir)
    out_dir = Path(out_dir)
    if tasks > 1:
        from mpd.distributed import launch

        return launch(dataset_dir, out_dir, config, tasks, threads_per_task or 1, device=device, resume=resume,
                      log_file=log_file)
    result = train(dataset_dir, out_dir, config, device=device, resume=resume)
    write_model_files(result, config, dataset_dir, out_dir)
    return out_dir


def effective_model_config(params, dataset_dir) -> ModelConfig:
    """The ModelConfig a training of this dataset uses: the ``model:`` section over `closed_box_defaults`.

    A ModelConfig is taken as it is. The one path for 1-process and data-parallel training
    (`mpd.distributed.main` calls it too), so both train, hash and record the same configuration.
    """
    if isinstance(params, ModelConfig):
        return params
    return ModelConfig.from_config(closed_box_defaults(params, dataset_dir))


def write_model_files(result, config: ModelConfig, dataset_dir, out_dir, world_size: int = 1) -> None:
    """model.pt (weights and `model_metadata`, with the number of training processes), rollout_step.pt and
    training_log.csv of a finished training, each atomically."""
    out_dir = Path(out_dir)
    metadata = model_metadata(result, config, dataset_dir, config.training.dtype)
    metadata["world_size"] = int(world_size)
    save_model(result.model, result.model_kwargs, metadata, out_dir / "model.pt")
    save_scripted_step(result.model, out_dir / "rollout_step.pt")
    write_log(result.log, out_dir / "training_log.csv")


#: Default `training.epochs` of a closed periodic fluid. Its training block is short (the Table 1 protocol:
#: 40 frames, 32 training pairs, 8 optimiser steps per epoch at batch size 4), and the likelihood converges
#: only after ~1200 steps: on SP11 (0.1 tau frames) 30 epochs left a rollout 5 times too mobile (RDF error
#: 0.45, MSD 4.3), 300 epochs reach RDF 0.02-0.024, MSD 0.32-0.46, VACF 0.21 (two seeds; docs/training.md).
CLOSED_BOX_EPOCHS = 300
#: Calibration of a closed periodic fluid (mpd.calibration.calibrate_closed_fluid): its rollouts
#: drift in temperature over hundreds of frames (SP11: 60 frames 1.4 % cold, 1000 frames 8 % hot), so the
#: calibration rollouts run 200 frames and are measured after 100.
CLOSED_BOX_CALIBRATION = {"calibration_frames": 200, "calibration_settle": 100}


def closed_box_defaults(section, dataset_dir) -> dict:
    """The ``model:`` section with closed-box defaults for a closed periodic fluid (star-polymer melts).

    The bath is off: it is friction and noise against a solvent (docs/model.md);
    a simulated melt in a closed box has none and conserves momentum, which a
    bath would break. ``training.epochs`` is `CLOSED_BOX_EPOCHS`: the training
    block gives few optimiser steps per epoch; the temperature calibration's
    rollouts are `CLOSED_BOX_CALIBRATION`. Explicit values are kept as given.
    """
    section = dict(section or {})
    network = dict(section.get("network") or {})
    training = dict(section.get("training") or {})
    folder = Path(dataset_dir)
    meta_path = folder / "metadata.json" if (folder / "metadata.json").exists() else folder / "dataset" / "metadata.json"
    try:
        kind = json.loads(meta_path.read_text()).get("kind")
    except (OSError, ValueError):
        return section  # the training reports an unreadable dataset itself
    if kind == "periodic_fluid" and "bath" not in network:
        log.info("bath off: a closed periodic fluid has no solvent and conserves momentum (set model.network.bath "
                 "to override)")
        section["network"] = {**network, "bath": False}
    if kind == "periodic_fluid" and "epochs" not in training:
        log.info("%d epochs: a closed periodic fluid's training block gives few optimiser steps per epoch (set "
                 "model.training.epochs to override)", CLOSED_BOX_EPOCHS)
        training["epochs"] = CLOSED_BOX_EPOCHS
    if kind == "periodic_fluid":
        for key, value in CLOSED_BOX_CALIBRATION.items():
            training.setdefault(key, value)
        section["training"] = training
    return section


def rollout_bulk(model_path, truth_path, metadata_path, out_dir, comparison=None, params=None) -> dict:
    """The learned model rolled out from the held-back truth of a simulated bulk sample; returns its status.

    The `mpd.horizon` split of ``comparison`` (the experiment's `comparison:`
    settings) gives the start frame and the rollout length; the state at the
    start is the truth's (positions, exact velocities). Writes rollout.parquet,
    conservation.csv and rollout_status.json into ``out_dir``
    (`mpd.rollout.rollout_fluid`; the status also holds the split).
    ``params``: the ``model:`` section, for the rollout's dtype and device.
    """
    from mpd.geometry.particles import load_bulk_truth
    from mpd.horizon import comparison_settings
    from mpd.rollout import rollout_fluid

    settings = comparison_settings(comparison)
    rollout_params = ModelConfig.from_config(params).rollout if params else RolloutParams()
    truth = load_bulk_truth(truth_path, metadata_path, settings)
    lengths, split, frames = truth.lengths, truth.split, truth.frames
    start = truth.rows(split.start)
    axes = "xyz"[:len(lengths)]
    result = rollout_fluid(model_path, start[[f"{a}u" for a in axes]].to_numpy(np.float64),
                           start[[f"v{a}" for a in axes]].to_numpy(np.float64), lengths, split.rollout_frames,
                           seed=int(settings["seed"]), species=start["species"].to_numpy(np.int64)
                           if "species" in start else None, particle=start["particle"].to_numpy(np.int64),
                           start_frame=int(frames[split.start]), t0=float(start["t"].iloc[0]),
                           dtype=rollout_params.dtype, device=_device(None, rollout_params), out=out_dir,
                           noise_stream=rollout_params.noise_stream, status_extra={"split": split.to_dict()})
    return result.status


def model_and_dataset(model_path, geometry_dir, params: RolloutParams, device):
    """The trained model and its dataset's metadata and scales h (µm), dt (s), which must be the model's."""
    model, meta = load_model(model_path, device=_device(device, params), dtype=params.dtype)
    root = find_dataset_dir(geometry_dir)
    data_meta = read_metadata(root)
    h, dt = float(data_meta["length_scale_um"]), float(data_meta["time_scale_s"])
    if not (math.isclose(meta["h_um"], h, rel_tol=1e-9) and math.isclose(meta["dt_s"], dt, rel_tol=1e-9)):
        raise ValueError(f"model {model_path} was trained with h = {meta['h_um']} µm, dt = {meta['dt_s']} s, "
                         f"but {root} has h = {h} µm, dt = {dt} s")
    return model, meta, root, data_meta, h, dt


def _reference_frames(data_meta: dict, frames: np.ndarray, available=None) -> np.ndarray:
    """The strain reference frame of each frame, by the dataset's rule (the geometry stage's); available: see
    `mpd.geometry.reference.reference_frames` (None: `frames` itself)."""
    reference = (data_meta.get("geometry") or {}).get("reference") or {"rule": "lag", "lag_frames": 1}
    return reference_frames(frames, reference=reference.get("rule", "lag"), lag_frames=reference.get("lag_frames", 1),
                            cycle_frames=reference.get("cycle_frames"),
                            cycle_start_frame=reference.get("cycle_start_frame", 0), available=available)


def _test_start(data_meta: dict, fallback: int) -> int:
    """The default first frame of a rollout: the dataset's test block, else `fallback`."""
    first = data_meta.get("splits", {}).get("test", {}).get("first_frame")
    return int(first) if first is not None else int(fallback)


def box_rollout_span(params, geometry_dir, last_truth_frame: int) -> tuple[int, int]:
    """(start_frame, n_frames) of a twin's periodic-box rollout from the rollout settings.

    start: `box_start_frame`, else the window rollout's `start_frame`, else the test block's first frame
    (at least 1: the start velocities need the frame before); n_frames: `box_n_frames`, else to the
    truth's last frame, which it may not pass.
    """
    params = _rollout_params(params)
    start = params.box_start_frame
    if start is None:
        start = params.start_frame if params.start_frame is not None else _test_start(
            read_metadata(geometry_dir), 1)
    start = max(int(start), 1)
    last = int(last_truth_frame)
    n_frames = params.box_n_frames if params.box_n_frames is not None else last - start
    if start + n_frames > last:
        raise ValueError(f"model.rollout.box_n_frames: the truth ends at frame {last}, the box rollout would reach "
                         f"frame {start + n_frames}")
    return start, int(n_frames)


def rollout_model(model_path, trajectories, geometry_dir, out_dir, params=None, *, device=None) -> Path:
    """Roll the trained model out against observed trajectories; write rollout.parquet, conservation.csv,
    rollout_status.json into out_dir.

    model_path : model.pt of `train_model`.
    trajectories : DataFrame or .parquet/.csv path (frame, particle, x, y µm, vx, vy µm/s): the data that
        gives the start state and the prescribed (exterior) particles at every frame.
    geometry_dir : the geometry stage's output (or its dataset/): window, exterior rule, reference rule,
        periodic boxes, scales and the default start (the test split).
    params : RolloutParams, a ModelConfig, or the ``model:`` mapping (its ``rollout`` part is used).
    A diverging rollout is not an error: the frames before it are written and
    rollout_status.json says where and why it stopped.
    """
    params = _rollout_params(params)
    out_dir = Path(out_dir)
    model, _meta, root, data_meta, h, dt = model_and_dataset(model_path, geometry_dir, params, device)
    table = _load_trajectories(trajectories)
    frames_info = dataset_frames(SnapshotPairDataset(root, "train"))
    geometry = dict(data_meta.get("geometry") or {})
    frames = np.unique(table["frame"].to_numpy(np.int64))
    refs = _reference_frames(data_meta, frames)
    observed = observed_from_table(table, h, dt, reference_frame=dict(zip(frames.tolist(), refs.tolist())),
                                   boxes=frames_info.boxes, exterior=frames_info.exterior_rule(),
                                   velocity=geometry.get("velocity", "tracked"))
    start = params.start_frame if params.start_frame is not None else _test_start(data_meta, int(frames[0]))
    n_frames = params.n_frames if params.n_frames is not None else int(frames[-1]) - start
    if start not in observed.snapshots or n_frames < 1:
        raise ValueError(f"cannot roll out from frame {start} for {n_frames} frames: the data has frames "
                         f"{int(frames[0])}..{int(frames[-1])}")
    result = rollout(model, observed, params, start_frame=start, n_frames=n_frames, device=_device(device, params))

    physical = _physical_table(result.frames, table, h, dt, frames_info.boxes,
                               exact_velocities=geometry.get("velocity", "tracked") == "tracked")
    status = dict(result.status, model=str(model_path), h_um=h, dt_s=dt, units=ROLLOUT_UNITS,
                  conservation_units="model units (mass, energy, entropy); momentum = sum m_i v_i, v in h per frame")
    return _write_rollout(out_dir, "", physical, result, status, dt)


def box_start_state(table: pd.DataFrame, boxes: pd.DataFrame, data_meta: dict, h: float, dt: float, *,
                    start_frame: int, n_frames: int) -> tuple[ObservedFrames, pd.DataFrame]:
    """A closed sheared box's start as `mpd.rollout.rollout` takes it, and the box table indexed by frame (µm).

    The start snapshot (velocities: the kinematic backward differences from frame start_frame - 1 when the
    table has it), every frame's periodic cell (model units), each frame's strain reference by the dataset's
    rule, and the start's reference snapshot when that lies before the start (the first cycle's); ValueError
    naming what is missing. Shared by `rollout_box` and the LAMMPS box rollout (`mpd.lammps_rollout`).
    """
    missing = [c for c in ("frame", "particle", "x", "y") if c not in table.columns]
    if missing:
        raise ValueError(f"the start-state trajectories lack the columns {', '.join(missing)}")
    start, last = int(start_frame), int(start_frame) + int(n_frames)
    box_table = boxes.drop_duplicates("frame").set_index("frame").sort_index()
    absent = [f for f in range(start, last + 1) if f not in box_table.index]
    if absent:
        raise ValueError(f"the box table has no row for frames {absent[:5]} (it must cover {start}..{last})")
    first = table[table["frame"].isin([start - 1, start])]
    if not (first["frame"] == start).any():
        raise ValueError(f"the start-state trajectories have no row at the start frame {start}")
    frames = np.arange(start - 1, last + 1)
    model_boxes = {int(f): Box(r.lx / h, r.ly / h, r.xy / h) for f, r in box_table.iterrows() if f <= last}
    refs = _reference_frames(data_meta, frames, available=np.arange(0, last + 1))
    observed = observed_from_table(first, h, dt, reference_frame=dict(zip(frames.tolist(), refs.tolist())),
                                   boxes=model_boxes)
    observed.snapshots.pop(start - 1, None)  # it gave the start velocities; the rollout starts at start
    ref_start = int(refs[1])
    if 0 <= ref_start < start:  # the reference of the first cycle lies before the start: the observed one
        ref_rows = table[table["frame"] == ref_start]
        if len(ref_rows) == 0:
            raise ValueError(f"the start frame's strain reference, frame {ref_start}, is not in the trajectories")
        ref_obs = observed_from_table(ref_rows.assign(vx=0.0, vy=0.0), h, dt, velocity="tracked")
        observed.snapshots[ref_start] = ref_obs.snapshots[ref_start]  # only its positions are used
    return observed, box_table


def rollout_box(model_path, trajectories, boxes, geometry_dir, out_dir, params=None, *, start_frame: int,
                n_frames: int, device=None) -> Path:
    """Roll the trained model out in a closed, sheared periodic box; write rollout_box.parquet,
    conservation_box.csv and rollout_box_status.json into out_dir.

    The deforming-box (Lees-Edwards) protocol of a twin's truth, for as long
    as wanted: every particle is predicted, the box's tilt is prescribed frame
    by frame (its rate is the bath's background flow and the image velocity of
    pairs across the tilted edge), and nothing else comes from data after the
    start (docs/fidelity.md).

    model_path : model.pt of `train_model`.
    trajectories : the start state: a table (or parquet path) with frame, particle, x, y (µm, wrapped
        in the cell), species when the model has several, and frame start_frame - 1 too (the start
        velocities are the kinematic backward differences; without it the forward difference is used),
        and the frame of the start's strain reference when that lies before the start.
    boxes : table frame, lx, ly, xy (µm) for every frame start_frame .. start_frame + n_frames.
    geometry_dir : the geometry stage's output: the model's scales h, dt and the strain reference rule.
    params : RolloutParams, a ModelConfig or the ``model:`` mapping (its rollout part; start_frame and
        n_frames are the arguments here).
    """
    params = _rollout_params(params)
    out_dir = Path(out_dir)
    model, _meta, _root, data_meta, h, dt = model_and_dataset(model_path, geometry_dir, params, device)
    table = trajectories if isinstance(trajectories, pd.DataFrame) else pd.read_parquet(trajectories)
    observed, box_table = box_start_state(table, boxes, data_meta, h, dt, start_frame=start_frame, n_frames=n_frames)
    start = int(start_frame)
    first = table[table["frame"] == start]
    result = rollout(model, observed, params, start_frame=start, n_frames=int(n_frames), device=_device(device, params))

    fr = result.frames
    out = pd.DataFrame({
        "frame": fr["frame"].to_numpy(np.int64), "t": fr["frame"].to_numpy(np.int64) * dt,
        "particle": fr["particle"].to_numpy(np.int64),
        "xu": fr["x"].to_numpy(float) * h, "yu": fr["y"].to_numpy(float) * h,
        "vx": fr["vx"].to_numpy(float) * h / dt, "vy": fr["vy"].to_numpy(float) * h / dt,
        "S": fr["S"].to_numpy(float),
    })
    if "species" in first.columns:
        species = first.drop_duplicates("particle").set_index("particle")["species"]
        out.insert(3, "species", species.reindex(out["particle"]).to_numpy(np.int64))
    wrapped = wrap_in_frame_cells(out, lambda f: Box(*box_table.loc[f, ["lx", "ly", "xy"]]))
    out.insert(3, "x", wrapped[:, 0])
    out.insert(4, "y", wrapped[:, 1])
    status = dict(result.status, model=str(model_path), h_um=h, dt_s=dt, domain="periodic box",
                  units={**ROLLOUT_UNITS, "x": "µm, wrapped in the cell", "y": "µm, wrapped in the cell",
                         "xu": "µm, unwrapped", "yu": "µm, unwrapped"})
    return _write_rollout(out_dir, "_box", out, result, status, dt)


def _write_rollout(out_dir: Path, suffix: str, table: pd.DataFrame, result, status: dict, dt: float) -> Path:
    """rollout{suffix}.parquet, conservation{suffix}.csv (with t in s) and rollout{suffix}_status.json."""
    conservation = result.conservation.copy()
    conservation.insert(2, "t", conservation["frame"] * dt)
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    atomic_write_bytes(buffer.getvalue(), out_dir / f"rollout{suffix}.parquet")
    atomic_write_bytes(conservation.to_csv(index=False).encode(), out_dir / f"conservation{suffix}.csv")
    atomic_write_bytes(json.dumps(status, indent=2, ensure_ascii=False).encode(),
                       out_dir / f"rollout{suffix}_status.json")
    if result.status["status"] != "completed":
        log.warning("%s", result.status["message"])
    return out_dir


def _rollout_params(params) -> RolloutParams:
    if isinstance(params, RolloutParams):
        return params
    if isinstance(params, ModelConfig):
        return params.rollout
    return ModelConfig.from_config(params).rollout


def _device(device, params: RolloutParams):
    return device if device is not None else params.device


def _load_trajectories(trajectories) -> pd.DataFrame:
    if isinstance(trajectories, pd.DataFrame):
        table = trajectories
    else:
        path = Path(trajectories)
        table = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    missing = [c for c in TRAJECTORY_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"trajectories lack the columns {', '.join(missing)} (docs/data_schema.md)")
    return table[list(TRAJECTORY_COLUMNS) + (["species"] if "species" in table.columns else [])]


def _physical_table(frames: pd.DataFrame, data: pd.DataFrame, h: float, dt: float, boxes,
                    exact_velocities: bool = True) -> pd.DataFrame:
    """The rollout in the trajectory schema: µm, µm/s, t in s; prescribed rows carry the data's exact positions.

    Their velocities are the ones the model saw: the data's own columns with `exact_velocities`
    (the dataset used the tracked velocities), else the kinematic (backward-difference) ones.
    """
    out = pd.DataFrame({
        "frame": frames["frame"].to_numpy(np.int64),
        "t": frames["frame"].to_numpy(np.int64) * dt,
        "particle": frames["particle"].to_numpy(np.int64),
        "x": frames["x"].to_numpy(float) * h, "y": frames["y"].to_numpy(float) * h,
        "vx": frames["vx"].to_numpy(float) * h / dt, "vy": frames["vy"].to_numpy(float) * h / dt,
        "S": frames["S"].to_numpy(float),
        "predicted": frames["predicted"].to_numpy(bool), "interior": frames["interior"].to_numpy(bool),
        "segment": frames["segment"].to_numpy(np.int64),
    })
    prescribed = ~out["predicted"].to_numpy()
    if prescribed.any():  # exact data values, not x/h*h
        columns = ["x", "y", "vx", "vy"] if exact_velocities else ["x", "y"]
        keyed = data.set_index(["frame", "particle"])[columns]
        index = pd.MultiIndex.from_arrays([out["frame"][prescribed], out["particle"][prescribed]])
        out.loc[prescribed, columns] = keyed.loc[index].to_numpy()
    if boxes is not None:
        out["xu"], out["yu"] = out["x"].copy(), out["y"].copy()
        for f, rows in out.groupby("frame").groups.items():
            b = boxes[int(f)]
            wrapped = Box(b.lx * h, b.ly * h, b.xy * h).wrap(out.loc[rows, ["xu", "yu"]].to_numpy())
            keep = out.loc[rows, "predicted"].to_numpy()
            out.loc[rows[keep], ["x", "y"]] = wrapped[keep]
    return out


__all__ = ["ROLLOUT_UNITS", "rollout_box", "rollout_model", "train_model"]
