"""Radial distribution function g(r), total and per species pair, in an open window or a periodic box.

Pair counting is freud's (`freud.density.RDF`, its raw histogram
`bin_counts`, O(N) per frame); the normalisation is ours, because freud's
assumes a periodic box:

    g(r_k) = sum_frames observed pairs in bin k / sum_frames expected pairs in bin k

where "expected" is for uniformly distributed, independent points in the same
domain with the same number of points:

* open rectangular window a x b (the microscope's field of view): for two
  independent uniform points the probability that their distance lies in
  [r1, r2) is F(r2) - F(r1) with (set covariogram of a rectangle, isotropised,
  exact for r <= min(a, b))

      F(r) = [pi a b r^2 - 4/3 (a + b) r^3 + r^4 / 2] / (a b)^2,

  so expected ordered pairs = N (N - 1) (F(r2) - F(r1)). This removes the
  edge deficit (a point near the edge has fewer partners within r) exactly,
  with no guard zone and no periodic assumption: an ideal gas gives g = 1 at
  every r <= min(a, b). The open window is handled by freud with a periodic
  box more than twice as large as the window plus 2 r_max, so no pair
  reaches a periodic image.
* periodic box of area A: expected = N (N - 1) pi (r2^2 - r1^2) / A
  (r_max below half the box's shortest width).
* periodic orthorhombic 3D box of volume V (`lengths=(lx, ly, lz)`, e.g. the
  star-polymer melts): expected = N (N - 1) 4/3 pi (r2^3 - r1^3) / V.

Partial g_ab: observed a-b pairs over N_a N_b (F(r2) - F(r1)) for a != b, and
over N_a (N_a - 1) (...) for a == b; g_ab = g_ba.

Error: g is a ratio of sums over frames, so its standard error is that of a
ratio estimator with frames as samples,

    g_err = sqrt( n/(n-1) sum_f (O_f - g E_f)^2 ) / sum_f E_f

(O_f, E_f observed and expected counts of frame f, n frames). This includes
the correlations between pairs sharing a particle (which make plain Poisson
errors too small at large r) but treats frames as independent, so for frames
much closer in time than the structural relaxation time it is a lower bound.
With a single frame the Poisson estimate g / sqrt(distinct pairs) is given.
"""
from __future__ import annotations

import freud
import numpy as np
import pandas as pd

from analysis.inputs import as_window, boxes_per_frame, check_trajectories, shrink_window
from mpd.geometry.domain import Box

__all__ = ["expected_pair_fraction", "nearest_neighbour_distances", "nearest_neighbour_histogram", "rdf",
           "window_pair_cdf"]


def window_pair_cdf(r, window) -> np.ndarray:
    """F(r): probability that two independent uniform points of the rectangle are closer than r (r <= min side)."""
    w = as_window(window)
    a, b = w.x_max - w.x_min, w.y_max - w.y_min
    r = np.asarray(r, np.float64)
    if np.any(r > min(a, b) * (1 + 1e-12)):
        raise ValueError(f"r up to {r.max():g} µm exceeds the window's shorter side {min(a, b):g} µm")
    return (np.pi * a * b * r**2 - 4.0 / 3.0 * (a + b) * r**3 + 0.5 * r**4) / (a * b) ** 2


def expected_pair_fraction(edges, *, window=None, box: Box | None = None) -> np.ndarray:
    """Probability per bin (len(edges) - 1) that two independent uniform points' distance falls in the bin."""
    edges = np.asarray(edges, np.float64)
    if box is not None:
        return np.pi * np.diff(edges**2) / box.area
    return np.diff(window_pair_cdf(edges, window))


def _freud_box(box: Box) -> freud.box.Box:
    # freud's tilt factor is dimensionless: xy_freud = xy / ly (the strain gamma for a sheared cell).
    return freud.box.Box(Lx=box.lx, Ly=box.ly, xy=box.xy / box.ly, is2D=True)


def _open_box(window, r_max: float) -> tuple[freud.box.Box, np.ndarray]:
    w = as_window(window)
    side = 2.0 * max(w.x_max - w.x_min, w.y_max - w.y_min) + 4.0 * r_max
    centre = np.array([0.5 * (w.x_min + w.x_max), 0.5 * (w.y_min + w.y_max)])
    return freud.box.Box.square(side), centre


def rdf(
    traj: pd.DataFrame,
    r_max: float,
    *,
    bins: int = 100,
    window=None,
    box=None,
    lengths=None,
    by_species: bool = True,
    edge_margin: float = 0.0,
    frame_step: int = 1,
) -> pd.DataFrame:
    """g(r) averaged over frames.

    Parameters
    ----------
    traj : trajectory table (docs/data_schema.md); positions x, y in µm.
    r_max : largest distance, µm; at most the window's shorter side after the
        margin, or below half the periodic box's width.
    bins : number of equal bins on [0, r_max].
    window : open field of view (x_min, x_max, y_min, y_max), µm. Default: the
        bounding box of all positions (slightly smaller than the true window,
        which biases g(r) by at most a few per cent; pass the real one).
    box : periodic cell instead of a window: a `mpd.geometry.Box`, or a table
        (frame, lx, ly, xy) for a cell that shears with time (xy = gamma ly).
    lengths : (lx, ly, lz) of a fixed periodic orthorhombic 3D box instead (positions
        x, y, z; r_max below half its shortest side).
    by_species : also compute partial g_ab when a `species` column exists.
    edge_margin : µm dropped on every side of the window (points there are
        ignored and the smaller window is used for the correction), e.g. to
        stay clear of the band where a tracker misses particles cut by the edge.
    frame_step : use every `frame_step`-th frame.

    Returns
    -------
    Long table: pair ('all', or 'a-b' for species a <= b), r (bin centre, µm),
    r_lo, r_hi, g, g_err, n_observed (ordered pairs), n_expected.
    """
    traj = check_trajectories(traj)
    frames = np.unique(traj["frame"].to_numpy())[::frame_step]
    traj = traj[traj["frame"].isin(frames)]
    if lengths is not None:
        return _rdf_orthorhombic_3d(traj, np.asarray(lengths, np.float64), r_max, bins, by_species)
    periodic = box is not None
    if periodic:
        boxes = boxes_per_frame(box, frames)
    else:
        if window is None:
            window = (traj["x"].min(), traj["x"].max(), traj["y"].min(), traj["y"].max())
        window = shrink_window(window, edge_margin)
        if r_max > min(window.x_max - window.x_min, window.y_max - window.y_min):
            raise ValueError(f"r_max {r_max} µm exceeds the window's shorter side {window}")
        open_box, centre = _open_box(window, r_max)
    edges = np.linspace(0.0, r_max, bins + 1)

    species, pair_keys = _pair_keys(traj, by_species)
    counter = freud.density.RDF(bins=bins, r_max=r_max)
    observed = {key: [] for key, _, _ in pair_keys}  # per frame, (bins,) each
    expected = {key: [] for key, _, _ in pair_keys}

    for frame, rows in traj.groupby("frame", sort=True):
        xy = rows[["x", "y"]].to_numpy(np.float64)
        labels = rows["species"].to_numpy() if species is not None else None
        if periodic:
            fbox = _freud_box(boxes[int(frame)])
            points = fbox.wrap(np.c_[xy, np.zeros(len(xy))])
            fraction = expected_pair_fraction(edges, box=boxes[int(frame)])
        else:
            inside = (xy[:, 0] >= window.x_min) & (xy[:, 0] <= window.x_max) \
                & (xy[:, 1] >= window.y_min) & (xy[:, 1] <= window.y_max)
            rows, xy = rows[inside], xy[inside]
            fbox = open_box
            points = np.c_[xy - centre, np.zeros(len(xy))]
            fraction = expected_pair_fraction(edges, window=window)
            labels = labels[inside] if labels is not None else None
        _count_pairs(counter, fbox, points, labels, pair_keys, fraction, r_max, observed, expected)
    return _rdf_table(edges, pair_keys, observed, expected)


def _pair_keys(traj, by_species: bool):
    """(species labels or None, [(key, a, b)]): 'all', then every species pair a <= b when there are several."""
    species = np.unique(traj["species"].to_numpy()) if by_species and "species" in traj.columns else None
    pair_keys = [("all", None, None)]
    if species is not None and len(species) > 1:
        pair_keys += [(f"{a}-{b}", a, b) for i, a in enumerate(species) for b in species[i:]]
    return species, pair_keys


def _count_pairs(counter, fbox, points, labels, pair_keys, fraction, r_max, observed, expected) -> None:
    """Append one frame's observed and expected pair counts per bin for every species pair."""
    bins = len(fraction)
    for key, a, b in pair_keys:
        pa = points if a is None else points[labels == a]
        pb = points if b is None else points[labels == b]
        same = bool(a == b)
        n_pairs = len(pa) * (len(pa) - 1) if same else len(pa) * len(pb)
        expected[key].append(n_pairs * fraction)
        if n_pairs == 0:
            observed[key].append(np.zeros(bins))
            continue
        query = {"r_max": r_max, "exclude_ii": same}
        counter.compute(system=(fbox, pb), query_points=None if same else pa, neighbors=query, reset=True)
        observed[key].append(np.asarray(counter.bin_counts, np.float64))


def _rdf_orthorhombic_3d(traj, lengths: np.ndarray, r_max: float, bins: int, by_species: bool) -> pd.DataFrame:
    """`rdf` in a fixed periodic orthorhombic 3D box (positions x, y, z)."""
    if lengths.shape != (3,) or not (np.isfinite(lengths).all() and (lengths > 0).all()):
        raise ValueError(f"lengths must be three positive box lengths (lx, ly, lz), got {lengths}")
    if r_max >= 0.5 * lengths.min():
        raise ValueError(f"r_max {r_max} must be below half the box's shortest side {lengths.min()}")
    if "z" not in traj.columns:
        raise ValueError("a 3D box needs positions x, y, z: the table has no column 'z'")
    edges = np.linspace(0.0, r_max, bins + 1)
    fraction = 4.0 / 3.0 * np.pi * np.diff(edges**3) / float(np.prod(lengths))
    species, pair_keys = _pair_keys(traj, by_species)
    fbox = freud.box.Box(Lx=lengths[0], Ly=lengths[1], Lz=lengths[2])
    counter = freud.density.RDF(bins=bins, r_max=r_max)
    observed = {key: [] for key, _, _ in pair_keys}
    expected = {key: [] for key, _, _ in pair_keys}
    for _, rows in traj.groupby("frame", sort=True):
        points = fbox.wrap(rows[["x", "y", "z"]].to_numpy(np.float64) - 0.5 * lengths)
        labels = rows["species"].to_numpy() if species is not None else None
        _count_pairs(counter, fbox, points, labels, pair_keys, fraction, r_max, observed, expected)
    return _rdf_table(edges, pair_keys, observed, expected)


def _rdf_table(edges, pair_keys, observed, expected) -> pd.DataFrame:
    """g and its error per bin and species pair from the per-frame counts (module docstring)."""
    bins = len(edges) - 1
    out = []
    centres = 0.5 * (edges[:-1] + edges[1:])
    for key, a, b in pair_keys:
        obs_f, exp_f = np.array(observed[key]).reshape(-1, bins), np.array(expected[key]).reshape(-1, bins)
        obs, exp = obs_f.sum(axis=0), exp_f.sum(axis=0)
        n = len(obs_f)
        with np.errstate(invalid="ignore", divide="ignore"):
            g = obs / exp
            if n > 1:
                err = np.sqrt(n / (n - 1) * ((obs_f - g * exp_f) ** 2).sum(axis=0)) / exp
            else:
                # Ordered counts: every unlike pair once (a queries b), every like pair twice.
                err = g / np.sqrt(obs / 2.0 if a == b else obs)
        out.append(pd.DataFrame({"pair": key, "r": centres, "r_lo": edges[:-1], "r_hi": edges[1:], "g": g,
                                 "g_err": err, "n_observed": obs, "n_expected": exp}))
    return pd.concat(out, ignore_index=True)


def nearest_neighbour_distances(
    traj: pd.DataFrame,
    r_max: float,
    *,
    window=None,
    box=None,
    edge_margin: float = 0.0,
    frame_step: int = 1,
) -> np.ndarray:
    """Distance from every particle to its nearest neighbour (µm), all frames pooled.

    In a window only particles inside it (less `edge_margin`) count, and their
    nearest neighbour may be any observed particle; in a periodic box (a Box
    or a frame, lx, ly, xy table) the minimum image counts. A particle with no
    neighbour within r_max (µm) gets r_max. Two particles closer than any
    pair of the truth are an overlap the physics forbids: this distribution
    shows a model that lets particles pass through each other.
    """
    from mpd.geometry.neighbours import radius_pairs

    traj = check_trajectories(traj)
    frames = np.unique(traj["frame"].to_numpy())[::frame_step]
    traj = traj[traj["frame"].isin(frames)]
    boxes = boxes_per_frame(box, frames) if box is not None else None
    if box is None:
        if window is None:
            window = (traj["x"].min(), traj["x"].max(), traj["y"].min(), traj["y"].max())
        window = shrink_window(window, edge_margin)
    out = []
    for frame, rows in traj.groupby("frame", sort=True):
        xy = rows[["x", "y"]].to_numpy(np.float64)
        pairs = radius_pairs(xy, r_max, boxes[int(frame)] if boxes is not None else None)
        distance = np.linalg.norm(pairs.displacements(xy), axis=1)
        nearest = np.full(len(xy), float(r_max))
        np.minimum.at(nearest, pairs.i, distance)
        np.minimum.at(nearest, pairs.j, distance)
        if boxes is None:
            inside = (xy[:, 0] >= window.x_min) & (xy[:, 0] <= window.x_max) \
                & (xy[:, 1] >= window.y_min) & (xy[:, 1] <= window.y_max)
            nearest = nearest[inside]
        out.append(nearest)
    return np.concatenate(out) if out else np.zeros(0)


def nearest_neighbour_histogram(distances: np.ndarray, length_scale: float, bins=None) -> pd.DataFrame:
    """Probability density of the nearest-neighbour distance in units of a (dimensionless).

    Default bins: 80 equal bins on [0, 2] a. Returns r_lo, r_hi, r (centre), density, count.
    """
    bins = np.linspace(0.0, 2.0, 81) if bins is None else np.asarray(bins, np.float64)
    count, edges = np.histogram(np.asarray(distances, np.float64) / length_scale, bins=bins)
    density = count / max(count.sum(), 1) / np.diff(edges)
    return pd.DataFrame({"r_lo": edges[:-1], "r_hi": edges[1:], "r": 0.5 * (edges[:-1] + edges[1:]),
                         "density": density, "count": count})
