"""Local non-affine residual D2min and rearrangement events over the shear cycle.

D2min is Falk and Langer's, computed by `mpd.geometry.local_strain` (one
implementation for the whole project): for particle i and its neighbours j
within h in the reference frame, D2min_i = min_F sum_j |d_ij - F d0_ij|^2.
Here it is reported per neighbour, D2min_i / n_i (µm^2), so that it does not
grow with the number of neighbours (which differs between small and large
particles and near defects).

Reference: a rolling one, frame f - lag_frames (`lag_frames` >= 1): D2min then
measures the rearrangements that happen during that interval, which is what
can be resolved against the phase of the cycle. Particles closer than h to the
window edge are excluded (their neighbourhood is incomplete in view).

Rearrangement threshold (same for every data set of a comparison):

    D2min_i / n_i > (threshold_fraction x a)^2,   threshold_fraction = 0.1 by default,

with a a length scale common to all data sets (analysis.measure uses the
nearest-neighbour distance of a triangular lattice of the reference's number
density, sqrt(2 / (sqrt(3) rho)), close to the mean particle spacing). That
is: the neighbourhood of i moved non-affinely by more than a tenth of a
particle spacing (rms per neighbour) within the interval, the Lindemann-like
scale at which cages break; thermal rattling and localisation noise in a
jammed packing stay well below it. A fixed physical threshold is used rather
than a multiple of the median because the comparison must be able to show a
model that is too noisy everywhere: a median-relative threshold would flag
the same fraction of particles in every data set.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.inputs import as_window, boxes_per_frame, check_trajectories
from mpd.geometry import local_strain
from mpd.geometry.masks import distance_to_window_edge

__all__ = ["d2min", "d2min_histogram", "rearrangement_threshold", "rearrangements"]


def d2min(
    traj: pd.DataFrame,
    h: float,
    *,
    lag_frames: int = 1,
    window=None,
    box=None,
    frame_step: int = 1,
) -> pd.DataFrame:
    """D2min of every particle present in frame f and in its reference f - lag_frames.

    Parameters
    ----------
    traj : trajectory table (x, y in µm; wrapped x, y for a periodic box).
    h : neighbour cut-off in the reference frame, µm (about 1.5 particle spacings: the first shell).
    lag_frames : reference = frame - lag_frames.
    window : field of view (µm); particles within h of its edge are excluded.
        Default: the bounding box of all positions.
    box : periodic cell instead (a `mpd.geometry.Box`, or a table frame, lx, ly, xy).
    frame_step : analyse every `frame_step`-th frame (references are still f - lag_frames).

    Returns
    -------
    frame, ref_frame, t, particle, x, y (µm, in frame f), d2min (µm^2, Falk-Langer sum),
    n_neighbours, d2min_per_neighbour (µm^2).
    """
    if int(lag_frames) != lag_frames or lag_frames < 1:
        raise ValueError(f"lag_frames must be an integer >= 1, got {lag_frames}")
    traj = check_trajectories(traj)
    all_frames = np.unique(traj["frame"].to_numpy())
    frames = all_frames[::frame_step]
    frames = frames[np.isin(frames - lag_frames, all_frames)]
    boxes = boxes_per_frame(box, all_frames) if box is not None else None
    if boxes is None and window is None:
        window = (traj["x"].min(), traj["x"].max(), traj["y"].min(), traj["y"].max())
    by_frame = {f: rows for f, rows in traj.groupby("frame", sort=True)}
    out = []
    for f in frames:
        now = by_frame[f].set_index("particle")
        ref = by_frame[f - lag_frames].set_index("particle")
        common = now.index.intersection(ref.index)
        x = now.loc[common, ["x", "y"]].to_numpy(np.float64)
        x0 = ref.loc[common, ["x", "y"]].to_numpy(np.float64)
        if boxes is None:
            keep = distance_to_window_edge(x0, as_window(window)) >= h
            box_now = box_ref = None
        else:
            keep = np.ones(len(common), bool)
            box_now, box_ref = boxes[int(f)], boxes[int(f - lag_frames)]
        if len(common) < 3:
            continue
        ls = local_strain(x, x0, h, box=box_now, box_ref=box_ref)
        keep &= ls.valid
        n = ls.n_neighbours[keep]
        out.append(pd.DataFrame({
            "frame": f, "ref_frame": f - lag_frames, "t": now.loc[common[keep], "t"].to_numpy(np.float64),
            "particle": common[keep].to_numpy(np.int64), "x": x[keep, 0], "y": x[keep, 1],
            "d2min": ls.d2min[keep], "n_neighbours": n, "d2min_per_neighbour": ls.d2min[keep] / n,
        }))
    columns = ["frame", "ref_frame", "t", "particle", "x", "y", "d2min", "n_neighbours", "d2min_per_neighbour"]
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=columns)


def rearrangement_threshold(length_scale: float, threshold_fraction: float = 0.1) -> float:
    """(threshold_fraction x length_scale)^2, µm^2 per neighbour (module docstring)."""
    return float((threshold_fraction * length_scale) ** 2)


def rearrangements(d2: pd.DataFrame, threshold: float, *, frame_interval_s: float | None = None) -> pd.DataFrame:
    """Per frame: n_particles analysed, n_rearranging (d2min_per_neighbour > threshold, µm^2),
    fraction, mean_d2min_per_neighbour (µm^2) and, with `frame_interval_s`, rate (1/s:
    fraction / (lag x frame interval), the probability per particle and second to rearrange).
    """
    if len(d2) == 0:
        return pd.DataFrame(columns=["frame", "t", "n_particles", "n_rearranging", "fraction",
                                     "mean_d2min_per_neighbour"])
    flagged = d2.assign(event=d2["d2min_per_neighbour"] > threshold)
    per = flagged.groupby("frame").agg(
        t=("t", "first"), n_particles=("particle", "size"), n_rearranging=("event", "sum"),
        mean_d2min_per_neighbour=("d2min_per_neighbour", "mean"), ref_frame=("ref_frame", "first"),
    ).reset_index()
    per["fraction"] = per["n_rearranging"] / per["n_particles"]
    if frame_interval_s is not None:
        per["rate"] = per["fraction"] / ((per["frame"] - per["ref_frame"]) * frame_interval_s)
    return per.drop(columns="ref_frame")


def d2min_histogram(d2: pd.DataFrame, length_scale: float, bins=None) -> pd.DataFrame:
    """Probability density of log10(D2min per neighbour / a^2) (dimensionless), a = `length_scale` µm.

    Default bins: 60 equal bins on [-7, 1]. Returns log10_lo, log10_hi, log10 (centre), density, count.
    """
    bins = np.linspace(-7.0, 1.0, 61) if bins is None else np.asarray(bins, np.float64)
    v = d2["d2min_per_neighbour"].to_numpy(np.float64) / length_scale**2
    v = np.log10(v[v > 0])
    count, edges = np.histogram(v, bins=bins)
    density = count / max(count.sum(), 1) / np.diff(edges)
    return pd.DataFrame({"log10_lo": edges[:-1], "log10_hi": edges[1:], "log10": 0.5 * (edges[:-1] + edges[1:]),
                         "density": density, "count": count})
