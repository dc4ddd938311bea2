"""Model-side geometry: pair separations, learned particle volume, local strain.

Everything here is a differentiable function of the positions through pair
separations x_i - x_j + shift only, so any energy built from it is
translation invariant and its forces conserve total momentum. Per-particle
sums run over unordered pair lists with index_add, O(number of pairs).

Two pair lists travel together in PairTensors:
* neighbours (i, j, shift): the current pairs with |r_ij| < h, for the volume,
  the noise and the teacher;
* strain bonds (bond_i, bond_j, bond_shift, bond_r_ref): the pairs within h in
  the *reference* configuration, with their reference separations, for the
  Falk-Langer strain, as in the geometry stage (mpd.geometry.strain). Being
  fixed by the reference, the bond set does not change as particles move, so
  the strain energy is smooth in the current positions.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from .layers import mlp


class PairTensors(NamedTuple):
    """Neighbour pairs and strain bonds as tensors (unordered, i < j).

    i, j        (E,) int64    current neighbours, |r_ij| < h
    shift       (E, D)        r_ij = x[i] - x[j] + shift is the minimum image
    bond_i, bond_j (B,) int64 reference neighbours (within h in the reference
                              configuration) still present now
    bond_shift  (B, D)        current separation of a bond: x[bond_i] - x[bond_j] + bond_shift
    bond_r_ref  (B, D)        its separation in the reference configuration
    shift_rate  (E, D)        d shift / dt: a deforming periodic cell moves the image of j, so the pair's
                              relative velocity is v_ij = v[i] - v[j] + shift_rate (Lees-Edwards; zero
                              in an open window or a fixed cell)
    pair_kind   (E, K)        onehot(species_i) + onehot(species_j): the pair's species, symmetric in i
                              and j (K = the number of species; 2 everywhere when there is one)
    species     (N,) int64    each particle's species label (the per-species mass); empty when every
                              particle is of species 0
    """

    i: torch.Tensor
    j: torch.Tensor
    shift: torch.Tensor
    bond_i: torch.Tensor
    bond_j: torch.Tensor
    bond_shift: torch.Tensor
    bond_r_ref: torch.Tensor
    shift_rate: torch.Tensor
    pair_kind: torch.Tensor
    species: torch.Tensor


def pair_kinds(species_i, species_j, n_species: int, dtype: torch.dtype = torch.float64,
               device: torch.device | None = None) -> torch.Tensor:
    """onehot(species_i) + onehot(species_j), (E, n_species): which kind of pair, the same for (i, j) and (j, i)."""
    si = torch.as_tensor(np.asarray(species_i), dtype=torch.int64, device=device).reshape(-1)
    sj = torch.as_tensor(np.asarray(species_j), dtype=torch.int64, device=device).reshape(-1)
    if len(si) and (int(torch.maximum(si, sj).max()) >= n_species or int(torch.minimum(si, sj).min()) < 0):
        raise ValueError(f"species labels must lie in 0 .. {n_species - 1} (the model's n_species), got "
                         f"{int(torch.minimum(si, sj).min())} .. {int(torch.maximum(si, sj).max())}")
    eye = torch.eye(n_species, dtype=dtype, device=device)
    return eye[si] + eye[sj]


def make_pairs(
    i,
    j,
    shift,
    bonds=None,
    bond_shift=None,
    shift_rate=None,
    species=None,
    n_species: int = 1,
    dim: int = 2,
    dtype: torch.dtype = torch.float64,
    device: torch.device | None = None,
) -> PairTensors:
    """PairTensors from arrays (e.g. the fields of mpd.geometry.neighbours.Pairs).

    bonds = (bond_i, bond_j, bond_r_ref): the reference configuration's pairs
    within h and their reference separations (minimum image in the reference
    box); bond_shift: the periodic shift that makes the current separation the
    minimum image (default zero: an open window, or unwrapped coordinates).
    Without bonds the strain term has nothing to act on (fluid model, solid=False).
    shift_rate: the rate of change of each pair's shift (default zero; see PairTensors).
    species: each particle's species label (default all 0) and n_species their number: pair_kind.
    """

    def as_index(a) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a), dtype=torch.int64, device=device).reshape(-1)

    def as_float(a) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a), dtype=dtype, device=device).reshape(-1, dim)

    if bonds is None:
        bonds = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, dim)))
    bond_i, bond_j, bond_r_ref = as_index(bonds[0]), as_index(bonds[1]), as_float(bonds[2])
    bond_shift_t = torch.zeros_like(bond_r_ref) if bond_shift is None else as_float(bond_shift)
    shift_t = as_float(shift)
    shift_rate_t = torch.zeros_like(shift_t) if shift_rate is None else as_float(shift_rate)
    i_t, j_t = as_index(i), as_index(j)
    if species is None:  # every particle of species 0
        kind = pair_kinds(np.zeros(len(i_t), np.int64), np.zeros(len(i_t), np.int64), n_species, dtype, device)
        labels_t = torch.zeros(0, dtype=torch.int64, device=device)
    else:
        labels = np.asarray(species.cpu().numpy() if isinstance(species, torch.Tensor) else species, np.int64)
        labels = labels.reshape(-1)
        kind = pair_kinds(labels[i_t.cpu().numpy()], labels[j_t.cpu().numpy()], n_species, dtype, device)
        labels_t = torch.as_tensor(labels, dtype=torch.int64, device=device)
    return PairTensors(i_t, j_t, shift_t, bond_i, bond_j, bond_shift_t, bond_r_ref, shift_rate_t, kind, labels_t)


def pair_separations(x: torch.Tensor, pairs: PairTensors) -> torch.Tensor:
    """r_ij = x_i - x_j + shift_ij, (E, D), differentiable in x."""
    # index_select, not x[i]: the same values, three times faster on CPU (issue 14)
    return x.index_select(0, pairs.i) - x.index_select(0, pairs.j) + pairs.shift


def pair_relative_velocities(v: torch.Tensor, pairs: PairTensors) -> torch.Tensor:
    """v_ij = v_i - v_j + shift_rate_ij, (E, D): the velocity of i relative to the image of j it interacts with."""
    return v.index_select(0, pairs.i) - v.index_select(0, pairs.j) + pairs.shift_rate


def bond_separations(x: torch.Tensor, pairs: PairTensors) -> torch.Tensor:
    """Current separations of the strain bonds, (B, D), differentiable in x."""
    return x.index_select(0, pairs.bond_i) - x.index_select(0, pairs.bond_j) + pairs.bond_shift


def sum_to_both_ends(values: torch.Tensor, i: torch.Tensor, j: torch.Tensor, n_particles: int) -> torch.Tensor:
    """a_k = sum over pairs (i, j) with i = k or j = k of the (symmetric) pair value, O(E)."""
    out = values.new_zeros([n_particles] + list(values.shape[1:]))
    return out.index_add(0, i, values).index_add(0, j, values)


def cutoff_polynomial(rho: torch.Tensor) -> torch.Tensor:
    """1 - rho^2 with rho = r/h, clamped at zero so that a pair that drifted out
    of range between neighbour-list updates never adds a negative weight."""
    return torch.clamp(1.0 - rho * rho, min=0.0)


class VolumeKernel(nn.Module):
    """W(r; kind) = exp(MLP(r/h, kind)) (1 - r^2/h^2): positive inside the cut-off, zero at h.

    With several species the pair's kind (onehot(s_i) + onehot(s_j), symmetric)
    is an input too, so that a pair of large particles can repel more than a
    pair of small ones at the same distance (docs/model.md, Species). With one
    species the kernel is the paper's, W(r) = exp(MLP(r/h)) (1 - r^2/h^2).
    """

    def __init__(self, h: float, hidden: Sequence[int] = (32, 32), n_species: int = 1):
        super().__init__()
        self.h = float(h)
        self.n_species = int(n_species)
        self.log_shape = mlp(1 + (self.n_species if self.n_species > 1 else 0), hidden, 1)

    def _features(self, rho: torch.Tensor, kind: torch.Tensor | None) -> torch.Tensor:
        features = rho.unsqueeze(-1)
        if self.n_species > 1:
            if kind is None:
                kind = torch.zeros(rho.shape[0], self.n_species, dtype=rho.dtype, device=rho.device)
            features = torch.cat([features, kind], dim=-1)
        return features

    def forward(self, r: torch.Tensor, kind: torch.Tensor | None = None) -> torch.Tensor:
        """W at distances r (E,) for pairs of the given kind (E, n_species); kind None: the self term (no kind)."""
        rho = r / self.h
        return torch.exp(self.log_shape(self._features(rho, kind)).squeeze(-1)) * cutoff_polynomial(rho)

    def with_r_derivative(self, r: torch.Tensor, kind: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(W, dW/dr) at distances r (E,), from one forward pass carrying the tangent along r (forward mode).

        W = exp(g(rho)) (1 - rho^2) inside the cut-off, so dW/dr = exp(g) [g'(rho) (1 - rho^2) - 2 rho] / h
        there and 0 beyond it (where the clamp holds W at zero).
        """
        rho = r / self.h
        features = self._features(rho, kind)
        tangent = torch.zeros_like(features)
        tangent[:, 0] = 1.0
        g, dg = self.log_shape.with_tangent(features, tangent)
        shape = torch.exp(g.squeeze(-1))
        inside = 1.0 - rho * rho
        cutoff = torch.clamp(inside, min=0.0)
        slope = torch.where(inside > 0, dg.squeeze(-1) * inside - 2.0 * rho, torch.zeros_like(rho))
        return shape * cutoff, shape * slope / self.h


def particle_density(W_ij: torch.Tensor, W_self: torch.Tensor, pairs: PairTensors, n_particles: int) -> torch.Tensor:
    """d_i = W(0) + sum_j W(|r_ij|) from the kernel values of the pairs and of r = 0.

    The self term keeps d_i > 0 (V_i finite) for a particle without neighbours.
    """
    return sum_to_both_ends(W_ij, pairs.i, pairs.j, n_particles) + W_self


def particle_volume(kernel: VolumeKernel, r_ij: torch.Tensor, pairs: PairTensors, n_particles: int) -> torch.Tensor:
    """V_i = 1 / d_i (physics.md, Geometry), kernel evaluated here (eager use)."""
    distance = torch.linalg.vector_norm(r_ij, dim=-1)
    return 1.0 / particle_density(kernel(distance, pairs.pair_kind), kernel(distance.new_zeros(1)), pairs,
                                  n_particles)


def local_deformation_gradient(
    x: torch.Tensor, pairs: PairTensors, collinear_tol: float = 1e-2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best-fit local deformation gradient over the strain bonds (Falk and Langer 1998).

    Returns F (N, D, D) and valid (N,) bool. With d = current and d0 = reference
    separation of each bond of i,

        X_i = sum_j d d0^T,   Y_i = sum_j d0 d0^T,   F_i = X_i Y_i^{-1},

    the geometry stage's estimator (mpd.geometry.strain), unweighted like it. A
    bond adds the same d d0^T to both ends (both vectors flip sign). Y depends
    on the reference only, so F is linear in the current positions.

    valid_i: det(Y_i) / (tr Y_i / D)^D > collinear_tol, the data stage's test
    (1 for an isotropic neighbourhood, 0 for collinear bonds or fewer than D
    bonds). It bounds the condition number of Y_i (below 4 / collinear_tol in
    2D: 400 by default), so the unregularised solve is exact and safe in
    float32. Where it fails the data stage reports NaN; here Y_i is replaced
    by the identity before the solve, so F_i is finite (and unused: callers
    mask it with `valid`) and no gradient can become NaN. No Tikhonov term:
    one small enough not to bias F would sit below float32 resolution.
    """
    F, _, valid = _fitted_deformation(x, pairs, collinear_tol)
    return F, valid


def _fitted_deformation(x: torch.Tensor, pairs: PairTensors,
                        collinear_tol: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(F, Y_safe, valid) of `local_deformation_gradient`; Y_safe is Y_i, or the identity where not valid."""
    dim, n = x.shape[-1], x.shape[0]
    # the outer products d d0^T and d0 d0^T of every bond as rows (2 D^2, B), summed to both ends in one
    # pass: broadcast (B, D, D) products and (B, 4) index_adds are several times slower on CPU (issue 14)
    d, d0 = bond_separations(x, pairs).t(), pairs.bond_r_ref.t()
    rows: list[torch.Tensor] = []
    for left in (d, d0):  # X's rows, then Y's
        for a in range(dim):
            for b in range(dim):
                rows.append(left[a] * d0[b])
    products = torch.stack(rows)
    sums = products.new_zeros(2 * dim * dim, n).index_add_(1, pairs.bond_i, products).index_add_(1, pairs.bond_j,
                                                                                                products)
    X, Y = sums[:dim * dim].t().reshape(n, dim, dim), sums[dim * dim:].t().reshape(n, dim, dim)
    mean_eigenvalue = torch.diagonal(Y, dim1=-2, dim2=-1).sum(-1) / dim
    valid = (mean_eigenvalue > 0) & (torch.linalg.det(Y) > collinear_tol * mean_eigenvalue**dim)
    identity = torch.eye(dim, dtype=x.dtype, device=x.device)
    Y_safe = torch.where(valid[:, None, None], Y, identity)
    # F = X Y^{-1}  <=>  Y F^T = X^T (Y symmetric)
    F = torch.linalg.solve(Y_safe, X.transpose(-1, -2)).transpose(-1, -2)
    return F, Y_safe, valid


def deviatoric_strain_invariant(F: torch.Tensor) -> torch.Tensor:
    """I = dev E : dev E / 2 with E = (F^T F - I)/2 the Green-Lagrange strain, (N,).

    The square of the geometry stage's shear invariant sqrt(dev E : dev E / 2)
    (gamma^2/4 for a small simple shear gamma). Squared because the root has a
    cone at zero strain: U_dev increasing in it would give a shear stress that
    jumps as the strain passes through zero. Green-Lagrange, not the small
    strain sym(F) - I: a rigid rotation of the neighbourhood costs no energy,
    so the conservative forces conserve angular momentum too.
    """
    dev_E = deviatoric_green_lagrange(F)
    return 0.5 * (dev_E * dev_E).sum((-2, -1))


def deviatoric_green_lagrange(F: torch.Tensor) -> torch.Tensor:
    """dev E, the traceless part of the Green-Lagrange strain E = (F^T F - I)/2, (..., D, D)."""
    dim = F.shape[-1]
    identity = torch.eye(dim, dtype=F.dtype, device=F.device)
    E = 0.5 * (F.transpose(-1, -2) @ F - identity)
    return E - torch.diagonal(E, dim1=-2, dim2=-1).sum(-1)[..., None, None] / dim * identity


def strain_invariant(x: torch.Tensor, pairs: PairTensors, collinear_tol: float = 1e-2) -> torch.Tensor:
    """I_i, the deviatoric strain invariant of x against the bonds' reference, (N,).

    Zero where the neighbourhood is too degenerate for a strain (valid False:
    the data stage's NaN): such a particle stores no shear energy, instead of an
    energy driven by noise amplified across its thin direction. valid depends on
    the reference only, so this switch never flips during a rollout.
    """
    F, valid = local_deformation_gradient(x, pairs, collinear_tol)
    return torch.where(valid, deviatoric_strain_invariant(F), torch.zeros_like(F[:, 0, 0]))


def strain_invariant_and_gradient(x: torch.Tensor, pairs: PairTensors,
                                  collinear_tol: float = 1e-2) -> tuple[torch.Tensor, torch.Tensor]:
    """(I_i as `strain_invariant`, G_i (N, D, D)): dI_k/dd_b = G_k d0_b for each bond b of k.

    Closed form, first order (no autograd over the bonds). With E = (F^T F - 1)/2
    and dev E traceless, dI = dev E : dE = (F dev E) : dF, and F = X Y^{-1} with
    X_k = sum over k's bonds of d d0^T, so a bond b = (i, j) moves I_k (k = i, j) by
        dI_k = dd_b . (F_k dev E_k Y_k^{-1} d0_b),   G_k = F_k dev E_k Y_k^{-1},
    zero where the neighbourhood is not valid (as I_k is). `strain_force` turns it into forces.
    """
    F, Y_safe, valid = _fitted_deformation(x, pairs, collinear_tol)
    dev_E = deviatoric_green_lagrange(F)
    I = torch.where(valid, 0.5 * (dev_E * dev_E).sum((-2, -1)), torch.zeros_like(F[:, 0, 0]))
    # (F dev E Y^{-1})^T = Y^{-1} (F dev E)^T: Y symmetric
    G = torch.linalg.solve(Y_safe, (F @ dev_E).transpose(-1, -2)).transpose(-1, -2)
    return I, torch.where(valid[:, None, None], G, torch.zeros_like(G))


def strain_force(G: torch.Tensor, dU_dI: torch.Tensor, pairs: PairTensors) -> torch.Tensor:
    """-d(sum_k U_k)/dx through the strain invariants, (N, D), given dU_k/dI_k and G of `strain_invariant_and_gradient`.

    dU/dd_b = (H_i + H_j) d0_b with H_k = dU/dI_k G_k; the force is -dU/dd_b on
    bond_i and +dU/dd_b on bond_j (d_b = x_i - x_j + shift).
    """
    H = dU_dI[:, None, None] * G
    dU_dd = ((H.index_select(0, pairs.bond_i) + H.index_select(0, pairs.bond_j))
             @ pairs.bond_r_ref[:, :, None]).squeeze(-1)
    out = torch.zeros(G.shape[0], G.shape[-1], dtype=G.dtype, device=G.device)
    return out.index_add(0, pairs.bond_i, -dU_dd).index_add(0, pairs.bond_j, dU_dd)


__all__ = [
    "PairTensors",
    "VolumeKernel",
    "bond_separations",
    "cutoff_polynomial",
    "deviatoric_green_lagrange",
    "deviatoric_strain_invariant",
    "local_deformation_gradient",
    "make_pairs",
    "pair_kinds",
    "pair_relative_velocities",
    "pair_separations",
    "particle_density",
    "particle_volume",
    "strain_force",
    "strain_invariant",
    "strain_invariant_and_gradient",
    "sum_to_both_ends",
]
