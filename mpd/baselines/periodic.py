"""Periodic orthorhombic boxes: wrapping, minimum image, neighbour pairs and the block statistics the baselines match.

Every function takes ``box`` as a length-D array of periodic lengths and works in any dimension D.
"""
from __future__ import annotations

from math import gamma as gamma_function

import numpy as np
from scipy.spatial import cKDTree


def as_box(box, dim: int) -> np.ndarray:
    """``box`` as a float64 (D,) array of positive lengths; a ValueError names what is wrong."""
    box = np.asarray(box, dtype=np.float64).reshape(-1)
    if box.shape != (dim,):
        raise ValueError(f"box must have {dim} periodic lengths (one per dimension), got shape {box.shape}")
    if not np.all(np.isfinite(box)) or np.any(box <= 0):
        raise ValueError(f"box lengths must be finite and positive, got {box}")
    return box


def wrap(x: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Positions wrapped into [0, L) per axis (also the round-off case ``x mod L == L``, which cKDTree rejects)."""
    w = np.mod(x, box)
    return np.where(w >= box, 0.0, w)


def minimum_image(d: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Separation vectors mapped to their minimum image, components in [-L/2, L/2]."""
    return d - box * np.round(d / box)


def unwrap(positions: np.ndarray, box: np.ndarray) -> np.ndarray:
    """A (T, N, D) trajectory made continuous: frame-to-frame steps taken as minimum images.

    Accepts wrapped or already unwrapped input (the result starts at the first frame as given); it assumes no
    particle moves by half a box length between two frames.
    """
    steps = minimum_image(np.diff(positions, axis=0), box)
    return np.concatenate([positions[:1], positions[:1] + np.cumsum(steps, axis=0)], axis=0)


def mean_spacing(n_particles: int, box: np.ndarray) -> float:
    """The mean interparticle spacing n^(-1/D), n the number density."""
    return float((np.prod(box) / n_particles) ** (1.0 / len(box)))


def pairs(x: np.ndarray, box: np.ndarray, cutoff: float):
    """All pairs i < j closer than ``cutoff`` in the periodic box.

    Returns ``(i, j, d, r)``: index arrays, minimum-image separations ``d = x_i - x_j`` (M, D) and distances (M,).
    ``cutoff`` must be below half the smallest box length (else a pair would have two images in range).
    """
    if cutoff >= 0.5 * float(np.min(box)):
        raise ValueError(f"cutoff {cutoff:g} must be below half the smallest box length {np.min(box):g}")
    xw = wrap(x, box)
    ij = cKDTree(xw, boxsize=box).query_pairs(cutoff, output_type="ndarray")
    i, j = ij[:, 0].astype(np.int64), ij[:, 1].astype(np.int64)
    d = minimum_image(xw[i] - xw[j], box)
    r = np.sqrt(np.einsum("md,md->m", d, d))
    keep = r < cutoff
    return i[keep], j[keep], d[keep], r[keep]


def rdf(positions: np.ndarray, box: np.ndarray, r_max: float, bins: int = 50):
    """Radial distribution function g(r) of a (T, N, D) block (or one (N, D) frame), averaged over frames.

    Returns ``(r_centres, g)``. Normalised by the ideal-gas pair count at the same density in the shell of each
    bin, so g -> 1 for an uncorrelated system.
    """
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim == 2:
        positions = positions[None]
    t, n, dim = positions.shape
    edges = np.linspace(0.0, r_max, bins + 1)
    counts = np.zeros(bins)
    for frame in positions:
        counts += np.histogram(pairs(frame, box, r_max)[3], bins=edges)[0]
    unit = 2.0 * np.pi ** (dim / 2) / gamma_function(dim / 2) / dim  # volume of the unit D-ball
    shell = unit * (edges[1:] ** dim - edges[:-1] ** dim)
    ideal = 0.5 * n * (n - 1) / np.prod(box) * shell * t
    return 0.5 * (edges[1:] + edges[:-1]), counts / ideal


def msd(unwrapped: np.ndarray, starts, lags) -> np.ndarray:
    """Mean-squared displacement at each lag (frames), averaged over particles and the given start frames."""
    out = []
    for lag in lags:
        d = unwrapped[np.asarray(starts) + lag] - unwrapped[np.asarray(starts)]
        out.append(float(np.mean(np.sum(d * d, axis=-1))))
    return np.asarray(out)

