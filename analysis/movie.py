"""Side-by-side movie of the data and a model rollout, particles coloured by D2min.

One frame per video frame over the rollout's frames: on the left the
reference (the tracked experiment, or the truth), on the right the rollout,
each particle a dot coloured by log10(D2min per neighbour / a^2) over the
analysis lag (`analysis.rearrangements`; grey where it is undefined: near the
window edge or without a reference), rearranging particles ringed in red.
Written as an H.264 MP4 (imageio's ffmpeg) and, for the HTML report (which
shows images, PDF and HTML, not video), as a small HTML page that embeds the
same MP4.
"""
from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

__all__ = ["side_by_side_movie"]


def _panel(ax, rows: pd.DataFrame, d2: pd.DataFrame, a: float, threshold_fraction: float, window, title: str):
    ax.clear()
    ax.scatter(rows["x"], rows["y"], s=9, color="#cccccc", lw=0)
    if len(d2):
        value = np.log10(np.maximum(d2["d2min_per_neighbour"].to_numpy() / a**2, 1e-12))
        ax.scatter(d2["x"], d2["y"], c=value, s=9, cmap="viridis", vmin=-5.0, vmax=0.0, lw=0)
        flag = value > np.log10(threshold_fraction**2)
        ax.scatter(d2["x"][flag], d2["y"][flag], s=40, facecolors="none", edgecolors="red", lw=0.8)
    if window is not None:
        x0, x1, y0, y1 = window
        ax.plot([x0, x1, x1, x0, x0], [y0, y0, y1, y1, y0], color="grey", lw=0.6)
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)


def side_by_side_movie(left: pd.DataFrame, right: pd.DataFrame, left_d2min: pd.DataFrame, right_d2min: pd.DataFrame,
                       path, *, a: float, threshold_fraction: float, window=None, fps: float = 10.0,
                       names=("experiment", "rollout"), html: bool = True) -> list[Path]:
    """Write the movie to `path` (.mp4) and, with `html`, path.with_suffix(".html"); returns the files.

    left, right : trajectory tables (frame, x, y µm); frames are the right table's.
    left_d2min, right_d2min : D2min tables (`analysis.rearrangements.d2min`: frame, x, y, d2min_per_neighbour).
    a : the length scale of the comparison (µm); threshold_fraction: the rearrangement threshold.
    """
    import imageio.v2 as imageio

    path = Path(path)
    frames = np.unique(right["frame"].to_numpy())
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = Figure(figsize=(8.0, 4.2), dpi=100, layout="constrained")
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    by_frame = {k: dict(tuple(t.groupby("frame"))) for k, t in
                (("left", left), ("right", right), ("left_d2", left_d2min), ("right_d2", right_d2min))}
    empty = pd.DataFrame({"x": [], "y": [], "d2min_per_neighbour": []})
    with imageio.get_writer(path, fps=fps, codec="libx264", quality=7, macro_block_size=1,
                            pixelformat="yuv420p") as writer:
        for f in frames:
            for ax, side, name in ((axes[0], "left", names[0]), (axes[1], "right", names[1])):
                rows = by_frame[side].get(f, empty)
                _panel(ax, rows, by_frame[side + "_d2"].get(f, empty), a, threshold_fraction, window,
                       f"{name}, frame {int(f)}")
            canvas.draw()
            image = np.asarray(canvas.buffer_rgba())[:, :, :3]
            # H.264 wants even sizes
            image = image[: image.shape[0] // 2 * 2, : image.shape[1] // 2 * 2]
            writer.append_data(image)
    out = [path]
    if html:
        page = path.with_suffix(".html")
        data = base64.b64encode(path.read_bytes()).decode()
        page.write_text(
            "<!DOCTYPE html><html><head><meta charset='utf-8'><title>" + path.stem + "</title></head><body>"
            f"<video controls loop autoplay muted style='max-width:100%' src='data:video/mp4;base64,{data}'></video>"
            "<p>Left: " + names[0] + ". Right: " + names[1] + ". Colour: log10(D²min per neighbour / a²) from −5 "
            "(dark) to 0 (yellow); red rings: rearranging particles; grey: no D²min (edge of the view).</p>"
            "</body></html>")
        out.append(page)
    return out
