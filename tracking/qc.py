"""Quality-control numbers and figures of one tracking run.

Plots are drawn with matplotlib's object API on the Agg canvas (no pyplot
state, safe inside a Snakemake job without a display), pictures of a frame
directly with PIL:

* ``annotated_frame.png``: the first analysed frame with every feature circled;
* ``mass_size.png``: mass against size (radius of gyration), which separates
  real particles from noise maxima and shows clusters;
* ``subpixel_bias.png``: histograms of the fractional part of x_px and y_px;
  a flat histogram means no pixel locking (a dip in the middle: diameter too small);
* ``trajectories.png``: every trajectory over the first frame;
* ``features_per_frame.png``: features found, and kept in trajectories, per frame; frames without any
  feature are marked.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

MAX_POINTS = 20_000  # scatter plots subsample beyond this, to stay fast
MAX_IMAGE_PX = 1000  # px, largest side of a figure showing a frame
MIN_IMAGE_PX = 400   # px, smallest side of the longer axis of such a figure
# Fast zlib level: QC figures are looked at, not archived, and level 6
# would make PNG compression the slowest step of a short video.
SAVE = {"pil_kwargs": {"compress_level": 1}}


def summary(features: pd.DataFrame, trajectories: pd.DataFrame, frame_numbers) -> dict:
    """Counts describing how much of the video was found and tracked."""
    frame_numbers = np.asarray(frame_numbers)
    per_frame = features.groupby("frame").size().reindex(frame_numbers, fill_value=0).to_numpy()
    lengths = trajectories.groupby("particle").size().to_numpy() if len(trajectories) else np.zeros(0, int)
    tracked = (trajectories.groupby("frame").size().reindex(frame_numbers, fill_value=0).to_numpy()
               if len(trajectories) else np.zeros(len(frame_numbers), int))
    return summary_from_counts(frame_numbers, per_frame, lengths, tracked)


def summary_from_counts(frame_numbers, features_per_frame, trajectory_lengths, tracked_per_frame) -> dict:
    """:func:`summary` from counts alone, for split tracking, which never holds the tables.

    Parameters
    ----------
    frame_numbers : array of int
        The analysed frames, in order.
    features_per_frame : array of int
        Features found in each of those frames.
    trajectory_lengths : array of int
        Observations in each kept trajectory.
    tracked_per_frame : array of int
        Observations in kept trajectories in each frame.
    """
    frame_numbers = np.asarray(frame_numbers)
    counts = np.asarray(features_per_frame)
    lengths = np.asarray(trajectory_lengths)
    n_frames, n_features = len(frame_numbers), int(counts.sum())
    empty = [int(f) for f in frame_numbers[counts == 0]]
    return {
        "frames_analysed": n_frames,
        "features": n_features,
        # frames where nothing was found (a blank or overexposed frame, a focus jump): every trajectory
        # breaks there, and the geometry stage has no snapshot pair across them
        "frames_without_features": {"count": len(empty), "frames": empty},
        "features_per_frame": {
            "mean": float(counts.mean()), "median": float(np.median(counts)),
            "min": int(counts.min()), "max": int(counts.max()),
            "by_frame": {str(int(f)): int(n) for f, n in zip(frame_numbers, counts, strict=True)},
        },
        "trajectories": len(lengths),
        "mean_trajectory_length_frames": float(lengths.mean()) if len(lengths) else 0.0,
        "median_trajectory_length_frames": float(np.median(lengths)) if len(lengths) else 0.0,
        "fraction_of_frames_tracked": int((np.asarray(tracked_per_frame) > 0).sum()) / n_frames if n_frames else 0.0,
        "fraction_of_features_in_trajectories": int(lengths.sum()) / n_features if n_features else 0.0,
    }


def empty_frame_warnings(source: str, summary: dict) -> list[str]:
    """qc.json's warnings about frames without any feature (a summary's frames_without_features)."""
    empty = summary["frames_without_features"]
    if not empty["count"]:
        return []
    shown = ", ".join(map(str, empty["frames"][:10])) + (" ..." if empty["count"] > 10 else "")
    message = (f"{source}: {empty['count']} frame(s) without any feature ({shown}): every trajectory breaks there; "
               f"check those frames (blank, overexposed, out of focus) or leave them out with tracking.frame_range")
    return [message]


def report(*, source: str, reader: str, frame_numbers, frame_step: int, frame_shape_px, roi_origin_px,
           summary: dict, warnings: list[str], auto, checks, trajectory_filter, species, velocity_noise, refine,
           resolved_locate: dict, resolved_link, parameters: dict, units: dict, processes, software: dict,
           **extra) -> dict:
    """qc.json's contents, the same keys for one-job and split tracking (docs/tracking.md lists them).

    ``extra`` keys (split tracking's ``split``) go after ``processes``.
    """
    return {
        "source": source,
        "reader": reader,
        "frame_numbers": {"first": int(frame_numbers[0]), "last": int(frame_numbers[-1]), "step": frame_step},
        "frame_shape_px": list(frame_shape_px),
        "roi_origin_px": list(roi_origin_px),
        **summary,
        "warnings": warnings,
        "auto": auto,
        "checks": checks,
        "trajectory_filter": trajectory_filter,
        "species": species,
        "velocity_noise": velocity_noise,
        "refine": refine,
        "resolved": {"locate": resolved_locate, "link": resolved_link},
        "parameters": parameters,
        "units": units,
        "processes": processes,
        **extra,
        "software": software,
    }


def _frame_picture(image: np.ndarray) -> tuple[Image.Image, float]:
    """The frame as an RGB picture at about its own resolution, and its zoom (picture px per image px).

    Drawn with PIL rather than matplotlib: a frame needs no axes, and this
    is several times faster for hundreds of circles or trajectories.
    """
    height, width = image.shape
    zoom = float(np.clip(MAX_IMAGE_PX / max(height, width), None, 1.0))
    zoom = max(zoom, MIN_IMAGE_PX / max(height, width))
    lo, hi = np.percentile(image, [0.5, 99.5])
    grey = np.clip((image.astype(np.float64) - lo) * (255.0 / max(hi - lo, 1e-12)), 0, 255).astype(np.uint8)
    picture = Image.fromarray(grey).convert("RGB")
    if zoom != 1.0:
        picture = picture.resize((round(width * zoom), round(height * zoom)), Image.Resampling.NEAREST)
    return picture, zoom


def _to_picture(x_px: np.ndarray, y_px: np.ndarray, zoom: float) -> tuple[np.ndarray, np.ndarray]:
    # Pixel centres sit at integer coordinates, picture pixels span [i, i + 1).
    return (np.asarray(x_px) + 0.5) * zoom, (np.asarray(y_px) + 0.5) * zoom


def _sample(frame: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    return frame.sample(MAX_POINTS, random_state=seed) if len(frame) > MAX_POINTS else frame


def write_figures(qc_dir: Path, first_image: np.ndarray, origin_px: tuple[int, int], features: pd.DataFrame,
                  trajectories: pd.DataFrame, frame_numbers, diameter_px: float) -> list[str]:
    """Write the QC figures into qc_dir; return their file names.

    first_image is the first analysed frame as read (grey, cropped to the
    region of interest whose top-left pixel is origin_px in the full frame).
    """
    qc_dir.mkdir(parents=True, exist_ok=True)
    x0, y0 = origin_px
    first = int(np.asarray(frame_numbers)[0])
    written = []

    annotated_frame_figure(qc_dir / "annotated_frame.png", first_image, origin_px,
                           features[features["frame"] == first], diameter_px, first)
    written.append("annotated_frame.png")

    fig = Figure(figsize=(5, 4), dpi=80)
    ax = fig.add_axes((0.15, 0.13, 0.8, 0.82))
    sample = _sample(features)
    ax.scatter(sample["mass"], sample["size"], s=3, alpha=0.4, edgecolors="none")
    ax.set_xlabel("mass (integrated band-passed brightness)")
    ax.set_ylabel("size: radius of gyration (px)")
    fig.savefig(qc_dir / "mass_size.png", **SAVE)
    written.append("mass_size.png")

    fig = Figure(figsize=(7, 3), dpi=80)
    axes = fig.subplots(1, 2, sharey=True, gridspec_kw={"left": 0.1, "right": 0.97, "bottom": 0.17, "top": 0.88})
    for ax, column in zip(axes, ("x_px", "y_px"), strict=True):
        ax.hist(np.mod(features[column].to_numpy(), 1.0), bins=20, range=(0, 1))
        ax.set_xlabel(f"{column} mod 1")
    axes[0].set_ylabel("features")
    fig.suptitle("sub-pixel bias: flat is good")
    fig.savefig(qc_dir / "subpixel_bias.png", **SAVE)
    written.append("subpixel_bias.png")

    picture, zoom = _frame_picture(first_image)
    draw = ImageDraw.Draw(picture)
    if len(trajectories):
        t = trajectories.sort_values(["particle", "frame"])
        x, y = _to_picture(t["x_px"].to_numpy() - x0, t["y_px"].to_numpy() - y0, zoom)
        particle = t["particle"].to_numpy()
        starts = np.flatnonzero(np.r_[True, particle[1:] != particle[:-1], True])
        for start, stop in itertools.pairwise(starts):
            if stop - start > 1:
                draw.line(list(zip(x[start:stop], y[start:stop], strict=True)), fill=(255, 140, 0), width=1)
    n_trajectories = trajectories["particle"].nunique() if len(trajectories) else 0
    draw.text((4, 2), f"{n_trajectories} trajectories", fill=(255, 255, 0))
    picture.save(qc_dir / "trajectories.png", compress_level=1)
    written.append("trajectories.png")

    frames = np.asarray(frame_numbers)
    counts = features.groupby("frame").size().reindex(frames, fill_value=0).to_numpy()
    in_traj = (trajectories.groupby("frame").size().reindex(frames, fill_value=0).to_numpy()
               if len(trajectories) else np.zeros(len(frames)))
    features_per_frame_figure(qc_dir / "features_per_frame.png", frames, counts, in_traj)
    written.append("features_per_frame.png")
    return written


def annotated_frame_figure(path, image: np.ndarray, origin_px, here: pd.DataFrame, diameter_px: float,
                           frame: int) -> None:
    """The frame with a circle of the mask diameter on each of its features `here` (x_px, y_px; annotated_frame.png)."""
    x0, y0 = origin_px
    picture, zoom = _frame_picture(image)
    draw = ImageDraw.Draw(picture)
    x, y = _to_picture(here["x_px"] - x0, here["y_px"] - y0, zoom)
    radius = 0.5 * diameter_px * zoom
    for xc, yc in zip(x, y, strict=True):
        draw.ellipse((xc - radius, yc - radius, xc + radius, yc + radius), outline=(255, 40, 40))
    draw.text((4, 2), f"frame {frame}: {len(here)} features", fill=(255, 255, 0))
    picture.save(path, compress_level=1)


def features_per_frame_figure(path, frames: np.ndarray, counts: np.ndarray, in_trajectories: np.ndarray) -> None:
    """Features and features in trajectories per frame, frames without any marked (features_per_frame.png)."""
    frames, counts = np.asarray(frames), np.asarray(counts)
    fig = Figure(figsize=(6, 3), dpi=80)
    ax = fig.add_axes((0.12, 0.17, 0.85, 0.78))
    ax.plot(frames, counts, label="features")
    ax.plot(frames, in_trajectories, label="in trajectories")
    if (counts == 0).any():
        empty = frames[counts == 0]
        ax.plot(empty, np.zeros(len(empty)), "v", color="crimson", clip_on=False,
                label=f"{len(empty)} frame(s) without features")
    ax.set_xlabel("frame")
    ax.set_ylabel("count")
    ax.set_ylim(bottom=0)
    ax.legend(loc="lower right")
    fig.savefig(path, **SAVE)
