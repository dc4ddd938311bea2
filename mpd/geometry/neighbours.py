"""All pairs of particles closer than a cut-off h, in O(N).

`radius_pairs` returns each unordered pair once (i < j) with the lattice
`shift` that turns the raw difference into the minimum-image displacement:

    r_ij = positions[i] - positions[j] + shift,   |r_ij| < h   (strictly).

`shift` is zero in an open window and an exact lattice vector n a + m b of
the `Box` in a periodic cell, so the caller (e.g. the model, in torch, with
autograd) recomputes r_ij from its own positions and gets the same vectors.

Backends (both give the same edge set; tested):

* ``"scipy"``: `scipy.spatial.cKDTree`. Periodic cells, sheared or not, use
  the fact that a = (lx, 0) is horizontal: after wrapping into the rectangle
  [0, lx) x [0, ly) the cell is periodic in x for every y (the tree's
  ``boxsize=(lx, 0)``), and the tilt only matters across the top/bottom edge.
  So only particles within h of the bottom edge are copied once, by +b, above
  the top edge; a pair across that edge is then found exactly once, as
  (original, copy).
* ``"torch_cluster"``: `torch_cluster.radius_graph` / `radius` (CPU or GPU)
  when installed. Periodic cells: all images within a margin h around the
  rectangle are added as ghosts and each original queries them; of the two
  directed edges of a pair the one with i < j is kept.

A D-dimensional orthorhombic `OrthoBox` (3D periodic fluids) works with both
backends: the scipy tree is periodic along every axis (``boxsize=lengths``),
torch_cluster gets the 3^D - 1 images within h as ghosts. Positions then
have shape (N, D) with D = box.dim, and shifts (E, D).
* ``"auto"``: torch_cluster for a CUDA tensor when it is installed, scipy
  otherwise (on CPU the tree is faster).

Both search with a radius a hair above h and then keep |r_ij| < h computed
in float64 exactly as above, so the two agree to the last pair. Inputs may be
numpy arrays or torch tensors (any device, any float dtype); the result is
always numpy (int64 indices, float64 shifts in the positions' unit).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from mpd.geometry.domain import Box, OrthoBox

BACKENDS = ("auto", "scipy", "torch_cluster")


@dataclass(frozen=True)
class Pairs:
    """Unordered neighbour pairs: i < j, int64 (E,); shift float64 (E, D), same unit as positions."""

    i: np.ndarray
    j: np.ndarray
    shift: np.ndarray

    def __len__(self) -> int:
        return int(self.i.shape[0])

    def displacements(self, positions):
        """r_ij = positions[i] - positions[j] + shift, for numpy arrays or torch tensors (keeps autograd)."""
        if _is_torch(positions):
            import torch

            i = torch.as_tensor(self.i, device=positions.device)
            j = torch.as_tensor(self.j, device=positions.device)
            shift = torch.as_tensor(self.shift, dtype=positions.dtype, device=positions.device)
            return positions[i] - positions[j] + shift
        positions = np.asarray(positions)
        return positions[self.i] - positions[self.j] + self.shift


def torch_cluster_available() -> bool:
    return importlib.util.find_spec("torch_cluster") is not None


def radius_pairs(positions, h: float, box: Box | OrthoBox | None = None, backend: str = "auto") -> Pairs:
    """Pairs closer than `h`.

    Parameters
    ----------
    positions : (N, 2) numpy array or torch tensor, µm (or any length unit, the same as h);
        (N, D) with an `OrthoBox` of dimension D.
    h : cut-off radius, same unit; pairs with |r_ij| < h are returned.
    box : None for an open window (no periodicity), or a periodic `Box` / `OrthoBox`; then
        h must be below `box.max_cutoff()` = min(lx, ly)/2 so that each pair has
        one image within h.
    backend : "auto", "scipy" or "torch_cluster" (see the module docstring).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    h = float(h)
    if not (np.isfinite(h) and h > 0):
        raise ValueError(f"cut-off h must be a positive number, got {h}")
    if box is not None and h >= box.max_cutoff():
        raise ValueError(f"cut-off h={h} must be < min(lx, ly)/2 = {box.max_cutoff()} for a periodic {box}")
    p64 = _to_numpy64(positions)
    if box is not None:
        if p64.ndim != 2 or p64.shape[1] != box.dim:
            raise ValueError(f"positions must have shape (N, {box.dim}) for {box}, got {p64.shape}")
    elif p64.ndim != 2 or p64.shape[1] != 2:  # an open window is 2D (microscopy); 3D needs an OrthoBox
        raise ValueError(f"positions must have shape (N, 2) without a box, got {p64.shape}")
    if not np.isfinite(p64).all():
        raise ValueError("positions contain NaN or inf")
    if backend == "auto":
        on_gpu = _is_torch(positions) and positions.is_cuda
        backend = "torch_cluster" if (on_gpu and torch_cluster_available()) else "scipy"
    if backend == "torch_cluster" and not torch_cluster_available():
        raise ImportError("backend='torch_cluster' needs torch-cluster: pip install --no-build-isolation torch-cluster")
    if len(p64) < 2:
        return _empty(p64.shape[1])

    # Search a hair wider than h; the exact test |r_ij| < h is done once, below.
    h_search = h * (1 + 1e-9) + 64 * np.finfo(np.float32 if _is_float32(positions) else np.float64).eps * (
        np.abs(p64).max() + h
    )
    if backend == "scipy":
        i, j, r_wrapped = _scipy_candidates(p64, h_search, box)
    else:
        i, j, r_wrapped = _torch_cluster_candidates(positions, p64, h_search, box)
    return _finalise(p64, i, j, r_wrapped, h, box)


def _finalise(p: np.ndarray, i, j, r_wrapped, h: float, box: Box | None) -> Pairs:
    """Exact lattice shifts, i < j, strict |r_ij| < h, sorted by (i, j)."""
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    raw = p[i] - p[j]
    if box is None:  # candidates already have i < j
        r = raw
        keep = np.einsum("ek,ek->e", r, r) < h * h
        shift = np.zeros((int(keep.sum()), p.shape[1]))
    else:
        # r_wrapped - (p_i - p_j) is a lattice vector up to round-off: snap it.
        shift = box.lattice_round(r_wrapped - raw)
        r = raw + shift
        keep = (i != j) & (np.einsum("ek,ek->e", r, r) < h * h)
        swap = i > j  # r_ji = -r_ij
        shift[swap] *= -1
        i, j = np.where(swap, j, i), np.where(swap, i, j)
        shift = shift[keep]
    i, j = i[keep], j[keep]
    order = np.argsort(i * max(len(p), 1) + j)  # by (i, j); the key is unique and fits int64
    return Pairs(i=i[order], j=j[order], shift=shift[order])


def _scipy_candidates(p: np.ndarray, h_search: float, box: Box | None):
    if box is None:
        ij = cKDTree(p).query_pairs(h_search, output_type="ndarray")
        return ij[:, 0], ij[:, 1], None
    if isinstance(box, OrthoBox):  # periodic along every axis: the tree does it all
        w = box.wrap(p)
        ij = cKDTree(w, boxsize=box.lengths).query_pairs(h_search, output_type="ndarray")
        a, b = ij[:, 0], ij[:, 1]
        return a, b, box.minimum_image(w[a] - w[b])
    n = len(p)
    w = box.wrap(p)
    near_bottom = np.flatnonzero(w[:, 1] < h_search)
    ghosts = w[near_bottom] + np.array([box.reduced_tilt, box.ly])  # the +b image, above the top edge
    ghosts[:, 0] = _wrap_coordinate(ghosts[:, 0], box.lx)
    ext = np.concatenate([w, ghosts])
    owner = np.concatenate([np.arange(n), near_bottom])
    ij = cKDTree(ext, boxsize=(box.lx, 0.0)).query_pairs(h_search, output_type="ndarray")
    a, b = ij[:, 0], ij[:, 1]  # a < b; ghosts come after originals
    a, b = a[a < n], b[a < n]  # copy-copy pairs repeat original-original ones
    r = ext[a] - ext[b]
    r[:, 0] -= box.lx * np.round(r[:, 0] / box.lx)  # the tree's x-periodic minimum image
    return a, owner[b], r


def _torch_cluster_candidates(positions, p: np.ndarray, h_search: float, box: Box | None):
    import torch
    from torch_cluster import radius

    device = positions.device if _is_torch(positions) else torch.device("cpu")
    # float64 on CPU costs nothing; on GPU keep the caller's precision (the search radius has slack).
    dtype = positions.dtype if (device.type != "cpu" and _is_torch(positions)) else torch.float64
    if box is None:
        x = torch.as_tensor(p, dtype=dtype, device=device)
        row, col = _radius_uncapped(radius, x, x, h_search)
        keep = row < col
        return row[keep], col[keep], None
    w = box.wrap(p)
    ext, owner = box.margin_images(w, h_search)
    y_t = torch.as_tensor(w, dtype=dtype, device=device)
    x_t = torch.as_tensor(ext, dtype=dtype, device=device)
    row, col = _radius_uncapped(radius, x_t, y_t, h_search)  # row: query original, col: ghost or original
    j = owner[col]
    keep = row < j
    row, col = row[keep], col[keep]
    return row, owner[col], w[row] - ext[col]


def _radius_uncapped(radius, x, y, r: float):
    """torch_cluster.radius without its silent max_num_neighbors truncation: retry with a larger cap."""
    cap = 64
    while True:
        edge = radius(x, y, r, max_num_neighbors=cap)
        row = edge[0].cpu().numpy().astype(np.int64)
        col = edge[1].cpu().numpy().astype(np.int64)
        if len(row) == 0 or np.bincount(row).max() < cap:
            return row, col
        cap *= 4


def _wrap_coordinate(x: np.ndarray, length: float) -> np.ndarray:
    x = x - np.floor(x / length) * length
    return np.where(x >= length, np.nextafter(length, 0.0), np.maximum(x, 0.0))


def _empty(dim: int = 2) -> Pairs:
    return Pairs(i=np.zeros(0, np.int64), j=np.zeros(0, np.int64), shift=np.zeros((0, dim)))


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _is_float32(x) -> bool:
    if _is_torch(x):
        return x.element_size() <= 4
    return np.asarray(x).dtype.itemsize <= 4


def _to_numpy64(x) -> np.ndarray:
    if _is_torch(x):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)
