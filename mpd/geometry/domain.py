"""The kinds of domain a frame lives in: a periodic `Box` (2D, sheared), a periodic
`OrthoBox` (D dimensions, orthorhombic) or an open `Window`.

A `Box` is a (possibly sheared) periodic cell in the LAMMPS convention: edge
vectors a = (lx, 0) and b = (xy, ly), lower-left corner at the origin. Only the
lattice {n a + m b} matters for neighbours and minimum images, so the corner
position never enters and positions may lie anywhere (they are wrapped here).

An `OrthoBox` is a periodic cell with edges L_k e_k along the axes, in any
dimension D (3D periodic fluids: star-polymer melts). It has the interface of
`Box` (wrap, minimum_image, lattice_round, margin_images, max_cutoff, basis,
dim) so that neighbour searches, pair lists and rollouts take either. It is a
sibling of `Box`, not a generalisation: `Box`'s algorithms (the tilt, Gauss
reduction, the one-strip ghost copy of the tree search) are 2D-triclinic and
stay exactly as they are, while every operation of an orthorhombic lattice is
a per-axis rounding.

A `Window` is the field of view of a microscope, (x_min, x_max, y_min, y_max)
in micrometres: nothing is known outside it.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np


class Window(NamedTuple):
    """Open rectangular field of view, all in µm."""

    x_min: float
    x_max: float
    y_min: float
    y_max: float

    def check(self) -> Window:
        if not (self.x_max > self.x_min and self.y_max > self.y_min):
            raise ValueError(f"window {tuple(self)} must have x_max > x_min and y_max > y_min (µm)")
        return self


@dataclass(frozen=True)
class Box:
    """Periodic triclinic cell: a = (lx, 0), b = (xy, ly); lx, ly > 0 and xy in µm."""

    lx: float
    ly: float
    xy: float = 0.0

    def __post_init__(self):
        if not (np.isfinite([self.lx, self.ly, self.xy]).all() and self.lx > 0 and self.ly > 0):
            raise ValueError(f"Box(lx={self.lx}, ly={self.ly}, xy={self.xy}): lx and ly must be finite and > 0 (µm)")

    @property
    def basis(self) -> np.ndarray:
        """Rows are the edge vectors a and b (µm)."""
        return np.array([[self.lx, 0.0], [self.xy, self.ly]])

    @property
    def dim(self) -> int:
        return 2

    @property
    def area(self) -> float:
        return float(self.lx * self.ly)

    @property
    def reduced_tilt(self) -> float:
        """xy shifted by a multiple of lx into [-lx/2, lx/2]: b - k a spans the same lattice."""
        return float(self.xy - self.lx * np.round(self.xy / self.lx))

    def max_cutoff(self) -> float:
        """Largest cut-off for which every pair has a unique image within it.

        Every lattice vector n a + m b has length >= min(lx, ly) (|y| = |m| ly
        when m != 0, else |n| lx), so two images of one particle are never
        both closer than min(lx, ly)/2 to another.
        """
        return 0.5 * min(self.lx, self.ly)

    def wrap(self, positions: np.ndarray) -> np.ndarray:
        """Images of `positions` (N, 2) inside the rectangle [0, lx) x [0, ly).

        With a horizontal edge a, horizontal strips of height ly tile the
        plane, so the rectangle is a fundamental domain of the sheared lattice
        too: shift by m b to bring y into [0, ly), then by n a for x.
        """
        p = np.asarray(positions, dtype=np.float64)
        tilt = self.reduced_tilt
        m = np.floor(p[:, 1] / self.ly)
        y = p[:, 1] - m * self.ly
        x = p[:, 0] - m * tilt
        x = x - np.floor(x / self.lx) * self.lx
        # Round-off can land exactly on the upper edge; the tree wants [0, L).
        x = np.where(x >= self.lx, np.nextafter(self.lx, 0.0), np.maximum(x, 0.0))
        y = np.where(y >= self.ly, np.nextafter(self.ly, 0.0), np.maximum(y, 0.0))
        return np.stack([x, y], axis=1)

    def margin_images(self, wrapped: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
        """`wrapped` (N, 2) (output of `wrap`) followed by its images within `margin` of the rectangle.

        Returns (points (M, 2), owner (M,) int64: index of the original). The
        images are w + n a + m b' with b' the tilt-reduced edge and n, m in
        {-1, 0, 1}; with |tilt| <= lx/2 these cover a margin up to
        min(lx/2, ly) completely.
        """
        if margin > min(0.5 * self.lx, self.ly) * (1 + 1e-6):  # slack for a search radius a hair above h
            raise ValueError(f"margin {margin} exceeds min(lx/2, ly) of {self}")
        a = np.array([self.lx, 0.0])
        b = np.array([self.reduced_tilt, self.ly])
        parts, owners = [wrapped], [np.arange(len(wrapped))]
        for dn in (-1, 0, 1):
            for dm in (-1, 0, 1):
                if dn == 0 and dm == 0:
                    continue
                img = wrapped + dn * a + dm * b
                inside = (
                    (img[:, 0] >= -margin) & (img[:, 0] < self.lx + margin)
                    & (img[:, 1] >= -margin) & (img[:, 1] < self.ly + margin)
                )
                parts.append(img[inside])
                owners.append(np.flatnonzero(inside))
        return np.concatenate(parts), np.concatenate(owners).astype(np.int64)

    def lattice_round(self, vectors: np.ndarray) -> np.ndarray:
        """Nearest exact lattice vectors n a + m b to `vectors` (E, 2) that are lattice vectors up to round-off."""
        basis = self.basis
        nm = np.round(_rows_times(np.asarray(vectors, dtype=np.float64), np.linalg.inv(basis)))
        return _rows_times(nm, basis)

    def minimum_image(self, d: np.ndarray) -> np.ndarray:
        """Shortest lattice image of each displacement d (E, 2), in µm.

        Gauss-reduces the basis (so that rounding the fractional coordinates
        lands next to the closest lattice vector) and checks the 3 x 3
        neighbouring images: exact for any tilt and aspect ratio.
        """
        d = np.asarray(d, dtype=np.float64)
        basis = _gauss_reduce(self.basis)
        frac = _rows_times(d, np.linalg.inv(basis))
        out = d - _rows_times(np.round(frac), basis)
        # Shorter than half the shortest lattice vector (the first reduced one):
        # no other image can be shorter, so only the rest need the 3 x 3 search.
        shortest2 = basis[0] @ basis[0]
        unsure = np.flatnonzero(np.einsum("ek,ek->e", out, out) > 0.25 * shortest2)
        if len(unsure):
            offsets = np.array([(n, m) for n in (-1, 0, 1) for m in (-1, 0, 1)], dtype=np.float64) @ basis
            candidates = out[unsure, None, :] + offsets[None, :, :]
            best = np.argmin(np.einsum("eck,eck->ec", candidates, candidates), axis=1)
            out[unsure] = candidates[np.arange(len(unsure)), best]
        return out


@dataclass(frozen=True)
class OrthoBox:
    """Periodic orthorhombic cell in D dimensions: edges lengths[k] along axis k, corner at the origin.

    Same interface as `Box` (in the positions' length unit). `lx, ly, lz` name
    the first three lengths and `xy` is 0 (no tilt), so code written for a
    `Box` that reads them keeps working.
    """

    lengths: tuple[float, ...]

    def __post_init__(self):
        lengths = tuple(float(v) for v in np.ravel(np.asarray(self.lengths, dtype=np.float64)))
        object.__setattr__(self, "lengths", lengths)
        if len(lengths) < 1 or not (np.isfinite(lengths).all() and min(lengths) > 0):
            raise ValueError(f"OrthoBox(lengths={lengths}): the lengths must be finite and > 0")

    @property
    def dim(self) -> int:
        return len(self.lengths)

    @property
    def lx(self) -> float:
        return self.lengths[0]

    @property
    def ly(self) -> float:
        return self.lengths[1]

    @property
    def lz(self) -> float:
        return self.lengths[2]

    @property
    def xy(self) -> float:
        return 0.0

    @property
    def reduced_tilt(self) -> float:
        return 0.0

    @property
    def length_array(self) -> np.ndarray:
        return np.array(self.lengths)

    @property
    def basis(self) -> np.ndarray:
        """Rows are the edge vectors (a diagonal matrix)."""
        return np.diag(self.length_array)

    @property
    def volume(self) -> float:
        return float(np.prod(self.lengths))

    def max_cutoff(self) -> float:
        """Half the shortest edge: below it every pair has one image within the cut-off."""
        return 0.5 * min(self.lengths)

    def _check(self, a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != self.dim:
            raise ValueError(f"expected an array of shape (N, {self.dim}) for {self}, got {a.shape}")
        return a

    def wrap(self, positions: np.ndarray) -> np.ndarray:
        """Images of `positions` (N, D) inside [0, L_0) x ... x [0, L_{D-1})."""
        p = self._check(positions)
        L = self.length_array
        w = p - np.floor(p / L) * L
        # Round-off can land exactly on the upper edge; the tree wants [0, L).
        return np.where(w >= L, np.nextafter(L, 0.0), np.maximum(w, 0.0))

    def margin_images(self, wrapped: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
        """`wrapped` (N, D) followed by its images (shifts in {-1, 0, 1}^D) within `margin` of the cell.

        Returns (points (M, D), owner (M,) int64). Complete for margin <= min(lengths).
        """
        if margin > min(self.lengths) * (1 + 1e-6):
            raise ValueError(f"margin {margin} exceeds the shortest edge of {self}")
        wrapped = self._check(wrapped)
        L = self.length_array
        parts, owners = [wrapped], [np.arange(len(wrapped))]
        for offset in itertools.product((-1, 0, 1), repeat=self.dim):
            if not any(offset):
                continue
            img = wrapped + np.asarray(offset) * L
            inside = ((img >= -margin) & (img < L + margin)).all(axis=1)
            parts.append(img[inside])
            owners.append(np.flatnonzero(inside))
        return np.concatenate(parts), np.concatenate(owners).astype(np.int64)

    def lattice_round(self, vectors: np.ndarray) -> np.ndarray:
        """Nearest exact lattice vectors n * L to `vectors` (E, D) that are lattice vectors up to round-off."""
        L = self.length_array
        return np.round(self._check(vectors) / L) * L

    def minimum_image(self, d: np.ndarray) -> np.ndarray:
        """Shortest lattice image of each displacement d (E, D): per-axis rounding (exact for a diagonal lattice)."""
        d = self._check(d)
        L = self.length_array
        return d - np.round(d / L) * L


def periodic_box(values, dim: int = 2) -> Box | OrthoBox:
    """The periodic cell of a dataset item's ``box`` entry: (lx, ly, xy) in 2D, (lx, ly, lz) in 3D."""
    values = [float(v) for v in (values.tolist() if hasattr(values, "tolist") else values)]
    if dim == 2:
        return Box(*values)
    if len(values) != dim:
        raise ValueError(f"a {dim}D periodic box needs {dim} lengths, got {values}")
    return OrthoBox(tuple(values))


def _gauss_reduce(basis: np.ndarray) -> np.ndarray:
    """Lagrange-Gauss reduction of a 2D lattice basis (rows): shortest, nearly orthogonal pair."""
    u, v = np.array(basis[0], dtype=np.float64), np.array(basis[1], dtype=np.float64)
    if u @ u > v @ v:
        u, v = v, u
    for _ in range(64):  # converges in a few steps; the bound only guards against NaN input
        k = np.round((u @ v) / (u @ u))
        v = v - k * u
        if v @ v >= u @ u:
            break
        u, v = v, u
    return np.stack([u, v])


def _rows_times(rows: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """rows (E, 2) @ matrix (2, 2); einsum is ~10x faster than matmul for many rows of length 2."""
    return np.einsum("ek,kl->el", rows, matrix)
