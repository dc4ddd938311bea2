"""Reading and aligning the inputs of the analysis: trajectories, strain series, windows and boxes.

Every function here takes and returns plain DataFrames in the trajectory
schema of docs/data_schema.md (frame, t, particle, x, y in µm, vx, vy in
µm/s; truth adds species, diameter, xu, yu).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from mpd.geometry.domain import Window
from mpd.geometry.inputs import boxes_per_frame
from mpd.geometry.masks import window_from_video_metadata

__all__ = [
    "AnalysisInputError",
    "as_window",
    "boxes_per_frame",
    "check_trajectories",
    "frame_interval",
    "position_columns",
    "position_velocities",
    "read_json",
    "read_table",
    "shrink_window",
    "sorted_segments",
    "spatial_columns",
    "strain_of_frames",
    "truth_box_table",
    "truth_in_window",
    "window_of_video",
]

REQUIRED = ("frame", "particle", "x", "y")


class AnalysisInputError(ValueError):
    """An input of the analysis is unusable; the message names it."""


def read_table(source, what: str = "table") -> pd.DataFrame:
    """A DataFrame as is, or a .parquet / .csv file read into one."""
    if isinstance(source, pd.DataFrame):
        return source
    path = Path(source)
    if not path.is_file():
        raise AnalysisInputError(f"{what} file {path} does not exist")
    return pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)


def read_json(source) -> dict:
    """A mapping as is, or a JSON file read into a dict."""
    if source is None or isinstance(source, Mapping):
        return dict(source or {})
    return json.loads(Path(source).read_text())


def check_trajectories(traj: pd.DataFrame, name: str = "trajectories") -> pd.DataFrame:
    """`traj` with int64 frame/particle and a `t` column, sorted by (particle, frame); errors name `name`."""
    missing = [c for c in REQUIRED if c not in traj.columns]
    if missing:
        raise AnalysisInputError(f"{name} lacks column(s) {missing} (docs/data_schema.md)")
    if len(traj) == 0:
        raise AnalysisInputError(f"{name} has no rows")
    out = traj.assign(frame=traj["frame"].astype(np.int64), particle=traj["particle"].astype(np.int64))
    if out.duplicated(["frame", "particle"]).any():
        raise AnalysisInputError(f"{name} has duplicated (frame, particle) rows")
    if "t" not in out.columns:
        raise AnalysisInputError(f"{name} lacks column 't' (s)")
    return out.sort_values(["particle", "frame"], kind="stable").reset_index(drop=True)


def position_columns(traj: pd.DataFrame) -> tuple[str, str]:
    """('xu', 'yu') when the table has unwrapped positions (periodic truth), else ('x', 'y').

    Displacements must be continuous in time: in a periodic box only the
    unwrapped columns are; in a window (tracked data, rollouts, truth cropped to
    the field of view) x, y are continuous while the particle is in view.
    """
    return ("xu", "yu") if {"xu", "yu"} <= set(traj.columns) else ("x", "y")


def spatial_columns(traj: pd.DataFrame) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(position columns, velocity columns) of every axis the table has: x, y and, in 3D, z.

    Positions are the unwrapped ones when the table has them for every axis
    (`position_columns`); 2D tables give exactly `position_columns` and
    ('vx', 'vy'), so 2D statistics do not depend on which function names them.
    """
    axes = ("x", "y", "z") if "z" in traj.columns else ("x", "y")
    unwrapped = tuple(f"{a}u" for a in axes)
    positions = unwrapped if set(unwrapped) <= set(traj.columns) else axes
    return positions, tuple(f"v{a}" for a in axes)


def frame_interval(traj: pd.DataFrame) -> float:
    """Seconds per frame, from the `t` and `frame` columns (median over distinct frames)."""
    frames = traj.groupby("frame")["t"].first().sort_index()
    if len(frames) < 2:
        raise AnalysisInputError("need at least two frames to know the frame interval")
    dt = np.diff(frames.to_numpy(np.float64)) / np.diff(frames.index.to_numpy(np.float64))
    return float(np.median(dt))


def sorted_segments(traj: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """(`traj` sorted by particle, frame; segment id per row; index of each row within its segment).

    A segment is a run of consecutive frames of one particle: a gap (a frame
    where the tracker lost the particle, or a particle leaving and re-entering
    the window) starts a new segment, so time differences inside a segment are
    always whole, known numbers of frames. In a rollout table, a change of its
    `segment` column (a hand-over between data and model, where the position
    jumps from the model's to the data's) starts a new segment too.
    """
    t = traj.sort_values(["particle", "frame"], kind="stable").reset_index(drop=True)
    particle = t["particle"].to_numpy()
    frame = t["frame"].to_numpy()
    new = np.ones(len(t), dtype=bool)
    new[1:] = (particle[1:] != particle[:-1]) | (frame[1:] != frame[:-1] + 1)
    if "segment" in t.columns:  # a rollout's hand-over between data and model (mpd.rollout) starts a new piece
        piece = t["segment"].to_numpy()
        new[1:] |= piece[1:] != piece[:-1]
    segment = np.cumsum(new) - 1
    start = np.flatnonzero(new)
    offset = np.arange(len(t)) - start[segment]
    return t, segment, offset


def position_velocities(traj: pd.DataFrame) -> pd.DataFrame:
    """`traj` with vx, vy (µm/s) recomputed from its positions: central differences inside each
    contiguous segment, one-sided at its ends, NaN for a lone row (tracking.motion's estimator).

    Every data set compared by the analysis (tracked, truth, rollout) is measured
    with this one estimator, whatever velocities it carries: a model integrated
    with backward-difference velocities and a truth with central differences would
    otherwise differ by the estimator alone (for Brownian steps, by a factor 2 in
    <v^2>). Positions from `position_columns` (unwrapped in a periodic box).
    """
    from tracking.motion import finite_differences  # the tracking stage's estimator, one home

    t, segment, _ = sorted_segments(traj)
    cx, cy = position_columns(t)
    v = finite_differences(t[[cx, cy]].to_numpy(np.float64), t["t"].to_numpy(np.float64), segment)
    return t.assign(vx=v[:, 0], vy=v[:, 1])


def strain_of_frames(strain: pd.DataFrame, frames) -> np.ndarray:
    """Strain (dimensionless) at each of `frames`; NaN where the series has no row."""
    unique = strain.drop_duplicates("frame")
    s = pd.Series(unique["strain"].to_numpy(np.float64), index=unique["frame"].to_numpy(np.int64))
    return s.reindex(np.asarray(frames, dtype=np.int64)).to_numpy(np.float64)


def as_window(window) -> Window:
    return Window(*map(float, window)).check()


def shrink_window(window, margin: float) -> Window:
    """The window with `margin` µm removed on every side."""
    w = as_window(window)
    return Window(w.x_min + margin, w.x_max - margin, w.y_min + margin, w.y_max - margin).check()


def window_of_video(video_metadata) -> Window:
    """Field of view (µm) of a video's metadata.json: pixel centres 0 .. (width_px - 1) * pixel_size_um."""
    return window_from_video_metadata(read_json(video_metadata))


def truth_box_table(truth_metadata, strain: pd.DataFrame) -> pd.DataFrame:
    """frame, lx, ly, xy (µm) of a twin's sheared periodic cell: xy = gamma ly, from its metadata and strain.csv."""
    meta = read_json(truth_metadata)
    lx, ly = float(meta["lx_um"]), float(meta["ly_um"])
    return pd.DataFrame({"frame": strain["frame"].astype(np.int64), "lx": lx, "ly": ly,
                         "xy": strain["strain"].to_numpy(np.float64) * ly})


def truth_in_window(truth: pd.DataFrame, truth_metadata, video_metadata) -> pd.DataFrame:
    """The simulated truth seen through the camera: camera coordinates, only particles whose centre is in view.

    Uses the rendered video's `fov_origin_um` (box coordinates of the centre of
    pixel (0, 0)): x_cam = x - x0, y_cam = y - y0, exactly the mapping the
    renderer uses, so truth and tracked positions share one frame of reference
    and the same window correction, edge exclusion and neighbour statistics
    apply to both. Periodic images at x +- lx are tried, as in the renderer
    (the cell is sheared, so a particle in view may be stored near the far x
    edge). The unwrapped columns xu, yu are dropped: they are box coordinates,
    and in the window x, y are continuous while a particle stays in view.
    """
    meta, video = read_json(truth_metadata), read_json(video_metadata)
    if "fov_origin_um" not in video:
        raise AnalysisInputError("video metadata has no fov_origin_um: cannot place the truth in the field of view")
    x0, y0 = map(float, video["fov_origin_um"])
    window = window_from_video_metadata(video)
    lx = float(meta["lx_um"])
    x = truth["x"].to_numpy(np.float64) - x0
    y = truth["y"].to_numpy(np.float64) - y0
    inside_y = (y >= window.y_min) & (y <= window.y_max)
    pieces = []
    for shift in (0.0, -lx, lx):
        xs = x + shift
        keep = inside_y & (xs >= window.x_min) & (xs <= window.x_max)
        if keep.any():
            pieces.append(truth.loc[keep].assign(x=xs[keep], y=y[keep]))
    out = pd.concat(pieces) if pieces else truth.iloc[:0]
    return out.drop(columns=[c for c in ("xu", "yu") if c in out.columns]).sort_values(
        ["frame", "particle"], kind="stable").reset_index(drop=True)
