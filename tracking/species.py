"""Particle species from their apparent size: the static label a bidisperse sample needs.

Colloidal monolayers are made bidisperse (or polydisperse) on purpose, to stop
them crystallising, and the interactions depend strongly on the sizes: the
twin's dipolar repulsion between two large particles is 2.7 times that
between two small ones at the same distance. A model that cannot tell the
particles apart can only learn their average force, which explains a small
fraction of the observed motion (docs/fidelity.md). The size is observable:
trackpy's radius of gyration ``size`` (px) separates the twin's two species
by forty standard deviations.

Each trajectory gets one label, from the median of its per-frame sizes, so a
particle never changes species. Labels are 0, 1, ... in order of increasing
size. The number of species is ``n_species`` when given, else chosen from
the data ("auto"): the medians are split optimally (1D k-means, exact by
dynamic programming over the sorted values) into k = 1 .. max_species
classes, and k classes are kept over k - 1 when they lower the within-class
variance by at least the factor ``separation`` and every class holds at
least ``min_fraction`` of the trajectories. A monodisperse sample stays one
species.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .params import SpeciesParams

__all__ = ["classify_species", "optimal_1d_split"]


def optimal_1d_split(values: np.ndarray, k: int, weights: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Labels (in the order of `values`) of the k-class split of 1D values with the least weighted
    within-class sum of squares, and that sum. Exact: classes of an optimal 1D split are intervals
    of the sorted values, found by dynamic programming in O(k n^2); call it on distinct values with
    their counts as weights, not on every feature."""
    values = np.asarray(values, np.float64)
    weights = np.ones(len(values)) if weights is None else np.asarray(weights, np.float64)
    order = np.argsort(values, kind="stable")
    v, w = values[order], weights[order]
    n = len(v)
    k = max(1, min(int(k), n))
    W = np.concatenate([[0.0], np.cumsum(w)])
    S1 = np.concatenate([[0.0], np.cumsum(w * v)])
    S2 = np.concatenate([[0.0], np.cumsum(w * v * v)])

    def cost(a: int, b: int) -> float:  # weighted sum of squares of v[a:b] about its mean
        m = W[b] - W[a]
        return S2[b] - S2[a] - (S1[b] - S1[a]) ** 2 / m if m > 0 else 0.0

    best = np.full((k + 1, n + 1), np.inf)
    cut = np.zeros((k + 1, n + 1), np.int64)
    best[0, 0] = 0.0
    for c in range(1, k + 1):
        for b in range(c, n + 1):
            for a in range(c - 1, b):
                value = best[c - 1, a] + cost(a, b)
                if value < best[c, b]:
                    best[c, b], cut[c, b] = value, a
    labels = np.empty(n, np.int64)
    b = n
    for c in range(k, 0, -1):
        a = cut[c, b]
        labels[a:b] = c - 1
        b = a
    out = np.empty(n, np.int64)
    out[order] = labels
    return out, float(max(best[k, n], 0.0))


def classify_species(trajectories: pd.DataFrame, params: SpeciesParams | None = None,
                     size_column: str = "size", region_px=None, margin_px: float = 0.0) -> tuple[pd.Series, dict]:
    """Species label per row of `trajectories` (int64, constant along a trajectory) and a record.

    region_px (x0, y0, width, height) and margin_px: a spot cut by the image
    edge looks smaller, so a trajectory's size is the median over its rows at
    least margin_px inside the region (all its rows when it has none there).
    The record (for qc.json) holds the number of species, how it was chosen,
    the median size and the trajectory count of each species and the size
    thresholds between them (px).
    """
    params = params or SpeciesParams()
    rows = trajectories
    if region_px is not None and margin_px > 0:
        x0, y0, width, height = region_px
        x, y = trajectories["x_px"].to_numpy(), trajectories["y_px"].to_numpy()
        inside = (x >= x0 + margin_px) & (x <= x0 + width - margin_px) & (y >= y0 + margin_px) & \
            (y <= y0 + height - margin_px)
        rows = trajectories[inside]
    confident = rows.groupby("particle")[size_column].median()
    if len(confident) == 0:  # nothing away from the edges: use every row
        confident = trajectories.groupby("particle")[size_column].median()
    values = confident.to_numpy(np.float64)
    if len(values) == 0:  # no trajectory at all: nothing to classify
        return pd.Series(np.zeros(len(trajectories), np.int64), index=trajectories.index), {
            "feature": size_column, "chosen_by": "no trajectories", "n_species": 1}
    # the split is exact on distinct sizes rounded to 0.01 px: few enough for the O(k n^2) search
    rounded = np.round(values, 2)
    distinct, inverse, counts = np.unique(rounded, return_inverse=True, return_counts=True)
    record: dict = {"feature": size_column}

    def split(k: int) -> tuple[np.ndarray, float]:
        per_distinct, sse = optimal_1d_split(distinct, k, counts)
        return per_distinct[inverse], sse

    if params.n_species != "auto":
        k = int(params.n_species)
        labels, _ = split(k)
        record["chosen_by"] = "n_species"
    else:
        k, (labels, sse) = 1, split(1)
        for candidate in range(2, params.max_species + 1):
            trial, trial_sse = split(candidate)
            fractions = np.bincount(trial, minlength=candidate) / len(trial)
            if trial_sse > 0 and sse / max(trial_sse, 1e-300) < params.separation:
                break
            if fractions.min() < params.min_fraction:
                break
            k, labels, sse = candidate, trial, trial_sse
        record["chosen_by"] = "auto"
    record["n_species"] = int(k)
    centres = np.array([np.median(values[labels == c]) for c in range(k)])
    # trajectories never away from the edge: the nearest class centre (their sizes are biased low)
    all_medians = trajectories.groupby("particle")[size_column].median()
    per_particle = pd.Series(np.abs(all_medians.to_numpy()[:, None] - centres[None, :]).argmin(1),
                             index=all_medians.index)
    per_particle.loc[confident.index] = labels
    record["median_size_px"] = centres.tolist()
    record["trajectories"] = np.bincount(per_particle.to_numpy(), minlength=k).tolist()
    record["trajectories_near_edge_only"] = int(len(all_medians) - len(confident))
    record["thresholds_px"] = [float(0.5 * (values[labels == c].max() + values[labels == c + 1].min()))
                               for c in range(k - 1)]
    return trajectories["particle"].map(per_particle).astype(np.int64), record
