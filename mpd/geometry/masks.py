"""Interior and exterior particles (physics.md, Rollout).

A particle is *exterior* when its dynamics cannot be predicted from what is
observed, so its positions and velocities are prescribed from data:

* within `width` (default h) of the field-of-view edge: some of its
  neighbours may be outside the window and unseen (also any particle outside
  the window);
* a particle of a driving boundary, given by id (the particles glued to the
  needle): prescribed itself, while its neighbours stay interior, since
  the boundary particles' positions are known at every step;
* within `width` of a driving boundary given as geometry (a polyline, e.g.
  the needle's edge, or a closed polygon, whose inside also counts): the wall
  itself is not a particle, so its neighbours' forces are unknown.

The mask is a pure function of the positions of one frame, so computing it
row by row for all frames at once handles particles entering and leaving the
window naturally. Interior = not exterior.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from mpd.geometry.domain import Window


def window_from_video_metadata(metadata: Mapping | str | Path) -> Window:
    """Field of view in µm from a video `metadata.json` (dict or path): pixel centres 0..(width_px-1)*pixel_size_um.

    Tracked coordinates are x = x_px * pixel_size_um with pixel centres at
    integer x_px (docs/data_schema.md), so the outermost pixel centres bound
    the window.
    """
    source = str(metadata)
    if not isinstance(metadata, Mapping):
        metadata = json.loads(Path(metadata).read_text())
    missing = [k for k in ("pixel_size_um", "width_px", "height_px") if k not in metadata]
    if missing:
        raise KeyError(f"video metadata {source if len(source) < 200 else ''} lacks {', '.join(missing)}")
    s = float(metadata["pixel_size_um"])
    return Window(0.0, (int(metadata["width_px"]) - 1) * s, 0.0, (int(metadata["height_px"]) - 1) * s).check()


def distance_to_window_edge(positions, window: Window | tuple) -> np.ndarray:
    """Distance (µm) from each position (N, 2) to the nearest window edge; negative outside the window."""
    p = np.asarray(positions, dtype=np.float64)
    w = Window(*window).check()
    return np.minimum.reduce([p[:, 0] - w.x_min, w.x_max - p[:, 0], p[:, 1] - w.y_min, w.y_max - p[:, 1]])


def distance_to_polyline(positions, vertices) -> np.ndarray:
    """Distance (µm) from each position (N, 2) to the polyline through `vertices` (K, 2), K >= 1."""
    p = np.asarray(positions, dtype=np.float64)
    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 2)
    if len(v) == 1:
        return np.linalg.norm(p - v[0], axis=1)
    a, b = v[:-1], v[1:]  # segments (S, 2)
    ab = b - a
    length2 = np.maximum(np.einsum("sk,sk->s", ab, ab), np.finfo(float).tiny)
    out = np.empty(len(p))
    for start in range(0, len(p), _chunk(len(a))):  # bounded memory: rows x segments per chunk
        q = p[start : start + _chunk(len(a))]
        t = np.clip(np.einsum("nsk,sk->ns", q[:, None, :] - a[None], ab) / length2, 0.0, 1.0)
        closest = a[None] + t[:, :, None] * ab[None]
        out[start : start + len(q)] = np.sqrt(((q[:, None, :] - closest) ** 2).sum(-1)).min(axis=1)
    return out


def inside_polygon(positions, vertices) -> np.ndarray:
    """Even-odd rule: True for positions strictly inside the closed polygon `vertices` (K, 2)."""
    p = np.asarray(positions, dtype=np.float64)
    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 2)
    a, b = v, np.roll(v, -1, axis=0)
    out = np.empty(len(p), dtype=bool)
    for start in range(0, len(p), _chunk(len(a))):
        q = p[start : start + _chunk(len(a))]
        crosses = (a[None, :, 1] > q[:, None, 1]) != (b[None, :, 1] > q[:, None, 1])
        with np.errstate(divide="ignore", invalid="ignore"):
            x_cross = a[None, :, 0] + (q[:, None, 1] - a[None, :, 1]) * (b[None, :, 0] - a[None, :, 0]) / (
                b[None, :, 1] - a[None, :, 1]
            )
        out[start : start + len(q)] = (crosses & (q[:, None, 0] < x_cross)).sum(axis=1) % 2 == 1
    return out


def exterior_mask(
    positions,
    width: float,
    *,
    window: Window | tuple | None = None,
    particle_ids=None,
    boundary_particles=None,
    boundary_geometry=None,
) -> np.ndarray:
    """Exterior particles (bool (N,)) of one frame, or of many frames' rows at once.

    Parameters
    ----------
    positions : (N, 2) µm.
    width : µm, normally the model's cut-off h.
    window : field of view (x_min, x_max, y_min, y_max) µm; None for a periodic box (no edge).
    particle_ids : (N,) ids of the rows, needed with `boundary_particles`.
    boundary_particles : ids of driving-boundary particles (exterior themselves).
    boundary_geometry : (K, 2) vertices (µm) of a driving-boundary polyline;
        closed (first vertex == last) means a polygon whose inside is exterior too.
    """
    p = np.asarray(positions, dtype=np.float64)
    exterior = np.zeros(len(p), dtype=bool)
    if window is not None:
        exterior |= distance_to_window_edge(p, window) < width
    if boundary_particles is not None:
        if particle_ids is None:
            raise ValueError("boundary_particles needs particle_ids for the rows")
        exterior |= np.isin(np.asarray(particle_ids), np.asarray(boundary_particles))
    if boundary_geometry is not None:
        v = np.asarray(boundary_geometry, dtype=np.float64).reshape(-1, 2)
        exterior |= distance_to_polyline(p, v) < width
        if len(v) >= 4 and np.array_equal(v[0], v[-1]):
            exterior |= inside_polygon(p, v[:-1])
    return exterior


def _chunk(n_segments: int) -> int:
    return max(1, 2_000_000 // max(n_segments, 1))
