"""Voronoi area per particle (µm^2), with a flag saying whether it can be trusted.

The areas come from the Delaunay triangulation (`scipy.spatial.Delaunay`),
fully vectorised: the Voronoi cell of particle i is the union, over the
triangles (i, j, l) around it (counter-clockwise), of the quadrilaterals
(p_i, midpoint of ij, circumcentre, midpoint of il). With signed areas this
sum is exact also for obtuse triangles, whose circumcentre lies outside.

When is a cell right? Its vertices are the circumcentres of the triangles
around i, and a triangle stays Delaunay as long as no particle lies inside its
circumdisc. So:

* open window: a cell is valid (``area_valid=True``) iff particle i is not on
  the convex hull (unbounded cell) and every circumdisc around it lies inside
  the window. Then no particle outside the window, seen or not, can change
  the cell. Otherwise the area is NaN: cells cut by, or reaching beyond, the
  window edge are never reported with a wrong value.
* periodic box: images of the particles within a margin around the cell are
  added (3 mean spacings, doubled until every circumdisc touching an original
  particle fits inside the margin), so every cell is exact; the areas then
  sum to the box area.

Degenerate triangles (collinear points, area < 1e-12 of the squared extent)
and duplicated points (both copies) make the cells of their particles invalid.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial import Delaunay, QhullError

from mpd.geometry.domain import Box, Window


def voronoi_areas(positions, *, window: Window | tuple | None = None, box: Box | None = None):
    """Voronoi cell area of each particle.

    Parameters
    ----------
    positions : (N, 2) array, µm.
    window : open field of view (x_min, x_max, y_min, y_max) in µm; default the
        bounding box of `positions` (then every hull cell is invalid anyway).
    box : periodic `Box` instead of a window (give one or the other).

    Returns
    -------
    area : (N,) float64, µm^2, NaN where invalid.
    valid : (N,) bool.
    """
    p = np.asarray(positions, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"positions must have shape (N, 2), got {p.shape}")
    if window is not None and box is not None:
        raise ValueError("give either an open window or a periodic box, not both")
    n = len(p)
    if box is not None:
        return _periodic_areas(p, box)
    if window is None:
        window = Window(p[:, 0].min(), p[:, 0].max(), p[:, 1].min(), p[:, 1].max()) if n else Window(0, 1, 0, 1)
    window = Window(*map(float, window))
    tri = _delaunay(p)
    if tri is None:
        return np.full(n, np.nan), np.zeros(n, bool)
    area, centre, radius, bad_triangle = _cell_areas(p, tri.simplices)
    disc_inside = (
        (centre[:, 0] - radius >= window.x_min) & (centre[:, 0] + radius <= window.x_max)
        & (centre[:, 1] - radius >= window.y_min) & (centre[:, 1] + radius <= window.y_max)
    )
    valid = _valid_vertices(n, tri.simplices, disc_inside & ~bad_triangle)
    valid[np.unique(tri.convex_hull)] = False
    valid[tri.coplanar[:, 2]] = False  # owners of a cell shared with a duplicated (coplanar) point
    return np.where(valid, area, np.nan), valid


def _periodic_areas(p: np.ndarray, box: Box):
    n = len(p)
    if n < 3:
        return np.full(n, np.nan), np.zeros(n, bool)
    w = box.wrap(p)
    max_margin = min(0.5 * box.lx, box.ly)
    margin = min(3.0 * np.sqrt(box.area / n), max_margin)
    while True:
        ext, _ = box.margin_images(w, margin)
        tri = _delaunay(ext)
        if tri is None:
            return np.full(n, np.nan), np.zeros(n, bool)
        area, centre, radius, bad_triangle = _cell_areas(ext, tri.simplices)
        touches_original = (tri.simplices < n).any(axis=1)
        disc_inside = (
            (centre[:, 0] - radius >= -margin) & (centre[:, 0] + radius <= box.lx + margin)
            & (centre[:, 1] - radius >= -margin) & (centre[:, 1] + radius <= box.ly + margin)
        )
        if (disc_inside | ~touches_original).all():
            break
        if margin >= max_margin:
            raise ValueError(
                f"{n} particles are too few to fix their Voronoi cells with images within "
                f"min(lx/2, ly) of {box}; cells are larger than the box allows"
            )
        margin = min(2.0 * margin, max_margin)
    valid = _valid_vertices(len(ext), tri.simplices, ~bad_triangle)
    valid[tri.coplanar[:, 2]] = False
    valid = valid[:n]
    return np.where(valid, area[:n], np.nan), valid


def _delaunay(p: np.ndarray):
    if len(p) < 3:
        return None
    try:
        return Delaunay(p)
    except QhullError:  # all points collinear or coincident: no cell is bounded
        return None


def _cell_areas(p: np.ndarray, simplices: np.ndarray):
    """Voronoi area of every vertex from the triangles, plus circumcentres, circumradii and degeneracy flags."""
    s = simplices.copy()
    a, b, c = p[s[:, 0]], p[s[:, 1]], p[s[:, 2]]
    ab, ac = b - a, c - a
    cross = ab[:, 0] * ac[:, 1] - ab[:, 1] * ac[:, 0]
    s[cross < 0] = s[cross < 0][:, [0, 2, 1]]  # counter-clockwise
    cross = np.abs(cross)
    extent = np.ptp(p, axis=0).max() if len(p) else 1.0
    bad = cross < 1e-12 * extent**2
    safe = np.where(bad, 1.0, cross)
    a, b, c = p[s[:, 0]], p[s[:, 1]], p[s[:, 2]]
    ab, ac = b - a, c - a
    ab2, ac2 = np.einsum("tk,tk->t", ab, ab), np.einsum("tk,tk->t", ac, ac)
    u = np.stack([ac[:, 1] * ab2 - ab[:, 1] * ac2, ab[:, 0] * ac2 - ac[:, 0] * ab2], axis=1) / (2 * safe[:, None])
    centre = a + u
    radius = np.linalg.norm(u, axis=1)
    area = np.zeros(len(p))
    for k in range(3):  # the three corners of every triangle
        vi, vj, vl = s[:, k], s[:, (k + 1) % 3], s[:, (k + 2) % 3]
        pi, pj, pl = p[vi], p[vj], p[vl]
        quad = _signed_area(pi, 0.5 * (pi + pj), centre) + _signed_area(pi, centre, 0.5 * (pi + pl))
        area += np.bincount(vi, weights=np.where(bad, 0.0, quad), minlength=len(p))
    return area, centre, radius, bad


def _signed_area(a, b, c):
    return 0.5 * ((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0]))


def _valid_vertices(n: int, simplices: np.ndarray, good_triangle: np.ndarray) -> np.ndarray:
    """A vertex is valid iff it belongs to at least one triangle and all its triangles are good."""
    flat = simplices.ravel()
    n_triangles = np.bincount(flat, minlength=n)
    n_bad = np.bincount(flat, weights=np.repeat(~good_triangle, 3).astype(float), minlength=n)
    return (n_triangles > 0) & (n_bad == 0)
