"""Shared helpers for the model tests: a brute-force pair finder and random systems.

Kept free of mpd.geometry (written elsewhere) on purpose. No tests here.
"""
from __future__ import annotations

import numpy as np
import torch

from mpd.model import MetriplecticModel, PairTensors, State, make_pairs
from mpd.model.bath import bath_marginal


def brute_force_pairs(x: np.ndarray, h: float, box: float | None = None):
    """All unordered pairs i < j with |minimum-image r_ij| < h; shift makes r_ij the minimum image."""
    n = len(x)
    i, j = np.triu_indices(n, k=1)
    r = x[i] - x[j]
    shift = minimum_image_shift(r, box)
    keep = np.linalg.norm(r + shift, axis=1) < h
    return i[keep], j[keep], shift[keep]


def minimum_image_shift(r: np.ndarray, box: float | None) -> np.ndarray:
    return np.zeros_like(r) if box is None else -box * np.round(r / box)


def random_system(
    seed: int,
    n: int = 12,
    box: float = 3.0,
    h: float = 1.0,
    periodic: bool = True,
    strain: float = 0.05,
    dtype=torch.float64,
    n_species: int = 2,
) -> tuple[State, PairTensors]:
    """A random 2D state with its neighbour pairs and strain bonds, of random species 0 .. n_species - 1.

    The reference is uniform random; the current positions are the reference
    under a random small affine map plus jitter (wrapped into a periodic box), so
    the strain and its force are non-zero. Bonds: reference pairs within h.
    """
    rng = np.random.default_rng(seed)
    period = box if periodic else None
    x_ref = rng.uniform(0, box, size=(n, 2))
    affine = strain * rng.normal(size=(2, 2))
    x = x_ref + (x_ref - box / 2) @ affine.T + 0.02 * rng.normal(size=(n, 2))
    if periodic:
        x = np.mod(x, box)
    i, j, shift = brute_force_pairs(x, h, period)
    bond_i, bond_j, ref_shift = brute_force_pairs(x_ref, h, period)
    bond_r_ref = x_ref[bond_i] - x_ref[bond_j] + ref_shift
    bond_shift = minimum_image_shift(x[bond_i] - x[bond_j], period)
    species = rng.integers(0, n_species, size=n) if n_species > 1 else None
    pairs = make_pairs(i, j, shift, bonds=(bond_i, bond_j, bond_r_ref), bond_shift=bond_shift, species=species,
                       n_species=n_species, dtype=dtype)
    state = State(
        x=torch.as_tensor(x, dtype=dtype),
        v=torch.as_tensor(rng.normal(size=(n, 2)), dtype=dtype),
        S=torch.as_tensor(rng.normal(size=n), dtype=dtype),
    )
    return state, pairs


def random_model(seed: int, h: float = 1.0, **kwargs) -> MetriplecticModel:
    """A model with random weights (default init, then a random perturbation of every
    parameter so that tests do not only see the initialisation), in float64.

    Two species by default (random_system's default), so every mass is per species and differs.
    """
    torch.manual_seed(seed)
    kwargs.setdefault("n_species", 2)
    kwargs.setdefault("kernel_hidden", (16, 16))
    kwargs.setdefault("energy_hidden", (16, 16))
    kwargs.setdefault("amplitude_hidden", (16, 16))
    kwargs.setdefault("teacher_hidden", (16,))
    kwargs.setdefault("k_B", 0.5 + torch.rand(()).item())
    kwargs.setdefault("mass", 0.5 + torch.rand(()).item())
    model = MetriplecticModel(h, **kwargs).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def dense_mobility(model: MetriplecticModel, state: State, pairs: PairTensors) -> torch.Tensor:
    """The full M over (v, S) of every particle, (N(D+1), N(D+1)); small systems only.

    Particle k's block is rows k(D+1) .. k(D+1)+D: its velocity, then its entropy.
    With a bath, its share of the (v, S) block is added: gamma T_b / m on each
    velocity, kappa / T^2 on each entropy (mpd.model.bath; the S_b row and column
    are left out, they never enter the particles' dynamics).
    """
    n, dim = state.x.shape
    blocks = model.pair_mobility(state, pairs)  # (E, 2D+2, 2D+2)
    M = torch.zeros(n * (dim + 1), n * (dim + 1), dtype=state.x.dtype)
    for k in range(pairs.i.shape[0]):
        idx = torch.cat([
            torch.arange(dim + 1) + int(pairs.i[k]) * (dim + 1),
            torch.arange(dim + 1) + int(pairs.j[k]) * (dim + 1),
        ])
        M[idx[:, None], idx[None, :]] += blocks[k]
    if model.has_bath:
        T = model.thermodynamics(state.x, state.S, pairs, with_dT_dS=False).T
        bath = model.bath.terms(T, False, False)
        vv, SS = bath_marginal(bath, T, particle_masses(model, pairs, n))
        for k in range(n):
            for a in range(dim):
                M[k * (dim + 1) + a, k * (dim + 1) + a] += vv[k]
            M[k * (dim + 1) + dim, k * (dim + 1) + dim] += SS[k]
    return M


def particle_masses(model: MetriplecticModel, pairs: PairTensors, n: int) -> torch.Tensor:
    """Each particle's mass, (N,) (its species' mass), detached."""
    return model.particle_mass(pairs, n, detach=True)


def triangular_lattice(nx: int = 8, ny: int = 10, a: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """A triangular lattice of spacing `a` (rows offset by a/2), nx x ny sites, and the periodic box it tiles:
    (positions (nx ny, 2), box lengths (2,)). At a = 0.8 h every site has six neighbours within h."""
    row, col = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    sites = np.stack([(col + 0.5 * (row % 2)) * a, row * a * np.sqrt(3) / 2], -1).reshape(-1, 2)
    return sites, np.array([nx * a, ny * a * np.sqrt(3) / 2])
