"""Local deformation gradient, strain and non-affine residual D2min (Falk & Langer 1998).

For particle i and each neighbour j within h *in the reference configuration*
let d0 = r_ij(ref) and d = r_ij(now) (bond vectors, µm; the sign convention
does not matter, both enter quadratically). The best affine map of i's
neighbourhood minimises sum_j |d - F d0|^2, whose solution is

    X_i = sum_j d d0^T,   Y_i = sum_j d0 d0^T,   F_i = X_i Y_i^-1,
    D2min_i = sum_j |d - F_i d0|^2   [µm^2]   (Falk & Langer's definition:
    a sum, not a mean; `per_neighbour=True` divides by the neighbour count).

F needs Y invertible and well conditioned: at least 2 neighbours that are
not (nearly) collinear. We ask det(Y) / (tr(Y)/2)^2 = 4 l1 l2 / (l1 + l2)^2
(l the eigenvalues of Y; 1 for an isotropic neighbourhood, 0 for a collinear
one; sin^2 of the angle between two equal bonds) to exceed `collinear_tol`,
default 0.01: below it, noise in the bond across the thin direction is
amplified more than tenfold in F. Otherwise F, the strains and D2min are NaN
and `valid` is False.

Strain measure (dimensionless), `measure=`:
* ``"green_lagrange"`` (default): E = (F^T F - I)/2, exact for finite strain
  and blind to local rotations (which are frequent in a sheared packing).
* ``"small"``: eps = (F + F^T)/2 - I, linearised; also blind to rotation only
  to first order.
Deviatoric part (2D): eps_dev = eps - tr(eps)/2 I, traceless; shear invariant
sqrt(eps_dev : eps_dev / 2) = sqrt(eps_dev_xx^2 + eps_dev_xy^2), which equals
|gamma|/2 for a small simple shear gamma.

Everything is vectorised over pairs (bincount), O(number of pairs).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpd.geometry.domain import Box
from mpd.geometry.neighbours import radius_pairs

STRAIN_MEASURES = ("green_lagrange", "small")


@dataclass(frozen=True)
class LocalStrain:
    """Per-particle results; NaN where `valid` is False.

    F (N, 2, 2) deformation gradient, eps (N, 2, 2) symmetric strain,
    eps_dev (N, 2, 2) its traceless part, invariant (N,) shear invariant
    (all dimensionless); d2min (N,) µm^2 (or µm^2 per neighbour);
    n_neighbours (N,) int64 reference neighbours also present now; valid (N,) bool.
    """

    F: np.ndarray
    eps: np.ndarray
    eps_dev: np.ndarray
    invariant: np.ndarray
    d2min: np.ndarray
    n_neighbours: np.ndarray
    valid: np.ndarray


def deformation_gradient(i, j, d, d0, n_particles: int, *, collinear_tol: float = 1e-2):
    """Best-fit F_i = X_i Y_i^-1 from bonds d (now) and d0 (reference), each (E, 2), of pairs (i, j).

    Every pair contributes to both ends (d d0^T is even in the bond's sign).
    Returns F (N, 2, 2) (NaN where invalid), n_neighbours (N,) int64, valid (N,) bool.
    """
    i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
    d, d0 = np.asarray(d, np.float64), np.asarray(d0, np.float64)
    n_neighbours = np.bincount(i, minlength=n_particles) + np.bincount(j, minlength=n_particles)
    X = _sum_to_both_ends(i, j, d[:, :, None] * d0[:, None, :], n_particles)
    Y = _sum_to_both_ends(i, j, d0[:, :, None] * d0[:, None, :], n_particles)
    det = Y[:, 0, 0] * Y[:, 1, 1] - Y[:, 0, 1] * Y[:, 1, 0]
    trace = Y[:, 0, 0] + Y[:, 1, 1]
    valid = (n_neighbours >= 2) & (trace > 0) & (det > collinear_tol * (0.5 * trace) ** 2)
    safe_det = np.where(valid, det, 1.0)
    Y_inv = np.stack(
        [np.stack([Y[:, 1, 1], -Y[:, 0, 1]], -1), np.stack([-Y[:, 1, 0], Y[:, 0, 0]], -1)], axis=1
    ) / safe_det[:, None, None]
    F = np.einsum("nab,nbc->nac", X, Y_inv)
    F[~valid] = np.nan
    return F, n_neighbours.astype(np.int64), valid


def d2min(i, j, d, d0, F: np.ndarray, *, per_neighbour: bool = False) -> np.ndarray:
    """D2min_i = sum_j |d - F_i d0|^2 over i's reference neighbours (µm^2); NaN where F_i is NaN.

    With `per_neighbour`, divided by the number of neighbours (µm^2 per neighbour).
    """
    i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
    n = len(F)
    d, d0 = np.asarray(d, np.float64), np.asarray(d0, np.float64)
    flat = F.reshape(n, 4)
    total = np.zeros(n)
    for end in (i, j):  # the residual seen by each end of the bond, with its own F
        f = flat[end]
        rx = d[:, 0] - (f[:, 0] * d0[:, 0] + f[:, 1] * d0[:, 1])
        ry = d[:, 1] - (f[:, 2] * d0[:, 0] + f[:, 3] * d0[:, 1])
        total += np.bincount(end, weights=rx * rx + ry * ry, minlength=n)
    total = np.where(np.isnan(F[:, 0, 0]), np.nan, total)
    if per_neighbour:
        count = np.bincount(i, minlength=n) + np.bincount(j, minlength=n)
        total = total / np.where(count > 0, count, np.nan)
    return total


def strain_tensor(F: np.ndarray, measure: str = "green_lagrange") -> np.ndarray:
    """Symmetric strain (N, 2, 2) from F: Green-Lagrange (F^T F - I)/2 or small (F + F^T)/2 - I."""
    if measure not in STRAIN_MEASURES:
        raise ValueError(f"strain measure must be one of {STRAIN_MEASURES}, got {measure!r}")
    eye = np.eye(2)
    if measure == "green_lagrange":
        return 0.5 * (np.einsum("nba,nbc->nac", F, F) - eye)
    return 0.5 * (F + np.swapaxes(F, 1, 2)) - eye


def deviatoric(eps: np.ndarray) -> np.ndarray:
    """Traceless part eps - tr(eps)/2 I (2D)."""
    trace = eps[:, 0, 0] + eps[:, 1, 1]
    return eps - 0.5 * trace[:, None, None] * np.eye(2)


def shear_invariant(eps_dev: np.ndarray) -> np.ndarray:
    """sqrt(eps_dev : eps_dev / 2) = sqrt(eps_dev_xx^2 + eps_dev_xy^2) for a traceless symmetric 2x2 tensor."""
    return np.sqrt(0.5 * np.einsum("nab,nab->n", eps_dev, eps_dev))


def local_strain(
    x,
    x_ref,
    h: float,
    *,
    box: Box | None = None,
    box_ref: Box | None = None,
    measure: str = "green_lagrange",
    per_neighbour: bool = False,
    collinear_tol: float = 1e-2,
    backend: str = "auto",
) -> LocalStrain:
    """Falk-Langer strain of every particle between `x_ref` and `x`.

    Parameters
    ----------
    x, x_ref : (N, 2) µm, the same particles in the same order, now and in the reference.
    h : neighbour cut-off in the reference configuration, µm.
    box, box_ref : periodic boxes now and in the reference (None: open window;
        `box_ref` defaults to `box`). Reference bonds use `radius_pairs`' minimum
        image; current bonds the minimum image in `box`, so wrapped and unwrapped
        positions both work as long as bonds stay shorter than half the box.
    measure, per_neighbour, collinear_tol : see the module docstring.
    backend : neighbour-search backend (`radius_pairs`).
    """
    x, x_ref = np.asarray(x, np.float64), np.asarray(x_ref, np.float64)
    if x.shape != x_ref.shape:
        raise ValueError(f"x {x.shape} and x_ref {x_ref.shape} must hold the same particles")
    box_ref = box if box_ref is None else box_ref
    pairs = radius_pairs(x_ref, h, box=box_ref, backend=backend)
    d0 = pairs.displacements(x_ref)
    d = x[pairs.i] - x[pairs.j]
    if box is not None:
        d = box.minimum_image(d)
    F, n_neighbours, valid = deformation_gradient(pairs.i, pairs.j, d, d0, len(x), collinear_tol=collinear_tol)
    eps = strain_tensor(F, measure)
    eps_dev = deviatoric(eps)
    return LocalStrain(
        F=F,
        eps=eps,
        eps_dev=eps_dev,
        invariant=shear_invariant(eps_dev),
        d2min=d2min(pairs.i, pairs.j, d, d0, F, per_neighbour=per_neighbour),
        n_neighbours=n_neighbours,
        valid=valid,
    )


def _sum_to_both_ends(i, j, values: np.ndarray, n: int) -> np.ndarray:
    """out[k] = sum of values (E, 2, 2) over pairs with i == k or j == k."""
    flat = values.reshape(len(values), 4)
    out = np.empty((n, 4))
    for c in range(4):  # four tensor components, not a loop over particles
        out[:, c] = np.bincount(i, weights=flat[:, c], minlength=n) + np.bincount(j, weights=flat[:, c], minlength=n)
    return out.reshape(n, 2, 2)
