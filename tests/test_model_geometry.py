"""Learned volume, local deformation gradient and strain: values, invariances, conserved momentum."""
import math

import numpy as np
import pytest
import torch
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from test_model_support import brute_force_pairs, random_model, random_system

from mpd.model.geometry import (
    VolumeKernel,
    deviatoric_strain_invariant,
    local_deformation_gradient,
    make_pairs,
    pair_separations,
    particle_volume,
    strain_invariant,
)

# no shrinking: examples are random seeds (a smaller seed explains nothing) and shrinking takes minutes
NO_SHRINK = (Phase.explicit, Phase.generate)
PROPERTY = settings(max_examples=5, deadline=None, database=None, phases=NO_SHRINK)
seeds = st.integers(0, 2**31 - 1)


def triangular_lattice(rows: int = 8, cols: int = 8, spacing: float = 0.5) -> np.ndarray:
    points = [((c + 0.5 * (r % 2)) * spacing, r * spacing * math.sqrt(3) / 2) for r in range(rows) for c in range(cols)]
    return np.array(points)


def test_volume_matches_direct_sum_over_all_particles():
    torch.manual_seed(0)
    kernel = VolumeKernel(h=1.0, hidden=(8,)).double()
    state, pairs = random_system(4, n=15, periodic=True)
    V = particle_volume(kernel, pair_separations(state.x, pairs), pairs, 15)
    # direct: every ordered pair with the minimum image, plus the self term
    x = state.x.numpy()
    d = np.zeros(15)
    with torch.no_grad():
        for a in range(15):
            r = x[a] - x
            r -= 3.0 * np.round(r / 3.0)
            dist = np.linalg.norm(r, axis=1)
            near = dist < 1.0
            d[a] = kernel(torch.as_tensor(dist[near])).sum().item()  # includes a itself at r = 0
    np.testing.assert_allclose(V.detach().numpy(), 1 / d, rtol=1e-12)
    assert (V > 0).all()


def lattice_pairs(x_ref: np.ndarray, F0: np.ndarray):
    """Current positions x_ref F0^T, their neighbour pairs, and reference bonds (open window)."""
    x = x_ref @ F0.T
    i, j, shift = brute_force_pairs(x, h=1.0)
    bond_i, bond_j, _ = brute_force_pairs(x_ref, h=1.0)
    pairs = make_pairs(i, j, shift, bonds=(bond_i, bond_j, x_ref[bond_i] - x_ref[bond_j]))
    return torch.as_tensor(x), pairs


def test_deformation_gradient_recovers_an_affine_map():
    x_ref = triangular_lattice()
    F0 = np.array([[1.04, 0.07], [-0.02, 0.97]])
    x, pairs = lattice_pairs(x_ref, F0)
    F, valid = local_deformation_gradient(x, pairs)
    assert valid.all()
    np.testing.assert_allclose(F.numpy(), np.broadcast_to(F0, F.shape), rtol=0, atol=1e-8)
    E = 0.5 * (F0.T @ F0 - np.eye(2))
    dev = E - np.trace(E) / 2 * np.eye(2)
    np.testing.assert_allclose(strain_invariant(x, pairs).numpy(), 0.5 * (dev**2).sum(), rtol=1e-6)  # lambda bias ~1e-7 at corners


def test_strain_invariant_ignores_rotation_and_dilation_and_sees_shear():
    x_ref = triangular_lattice()
    angle = 0.3
    Q = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    shear = np.array([[1.0, 0.05], [0.0, 1.0]])
    I_dilated = strain_invariant(*lattice_pairs(x_ref, 1.1 * Q))
    I_sheared = strain_invariant(*lattice_pairs(x_ref, Q @ shear))
    assert (I_dilated < 1e-14).all()
    # a small simple shear gamma has I = gamma^2/4 (to second order)
    np.testing.assert_allclose(I_sheared.numpy(), 0.05**2 / 4, rtol=0.05)


def test_degenerate_neighbourhoods_store_no_shear_energy():
    """A particle with collinear bonds (the data stage's NaN) gets I = 0 and finite F."""
    x_ref = np.array([[0.0, 0.0], [0.5, 0.0], [1.0, 0.0], [0.5, 0.5]])
    bond_i, bond_j, _ = brute_force_pairs(x_ref, h=0.6)  # particle 0: a single bond
    x = torch.as_tensor(x_ref @ np.array([[1.0, 0.3], [0.0, 1.0]]).T)
    pairs = make_pairs([], [], np.zeros((0, 2)), bonds=(bond_i, bond_j, x_ref[bond_i] - x_ref[bond_j]))
    F, valid = local_deformation_gradient(x, pairs)
    assert torch.isfinite(F).all()
    assert valid.tolist() == [False, True, False, False]
    I = strain_invariant(x, pairs)
    assert I[1] > 0 and (I[[0, 2, 3]] == 0).all()


def test_model_strain_is_the_square_of_the_data_stage_invariant():
    """Contract with mpd.geometry.strain (if present): same bonds, same F, I = invariant^2."""
    strain = pytest.importorskip("mpd.geometry.strain")
    rng = np.random.default_rng(0)
    x_ref = triangular_lattice() + 0.03 * rng.normal(size=(64, 2))
    x = x_ref @ np.array([[1.02, 0.04], [0.01, 0.99]]).T + 0.01 * rng.normal(size=(64, 2))
    data = strain.local_strain(x, x_ref, 0.7)
    bond_i, bond_j, _ = brute_force_pairs(x_ref, h=0.7)
    pairs = make_pairs([], [], np.zeros((0, 2)), bonds=(bond_i, bond_j, x_ref[bond_i] - x_ref[bond_j]))
    F, valid = local_deformation_gradient(torch.as_tensor(x), pairs)
    I = strain_invariant(torch.as_tensor(x), pairs)
    np.testing.assert_array_equal(valid.numpy(), data.valid)
    np.testing.assert_allclose(F.numpy()[data.valid], data.F[data.valid], rtol=0, atol=1e-7)
    np.testing.assert_allclose(I.numpy()[data.valid], data.invariant[data.valid] ** 2, rtol=1e-6, atol=1e-14)


def test_deviatoric_invariant_of_identity_is_zero():
    assert deviatoric_strain_invariant(torch.eye(2, dtype=torch.float64)[None]).item() == 0.0


@PROPERTY
@given(seed=seeds, periodic=st.booleans())
def test_strain_and_volume_forces_conserve_momentum(seed, periodic):
    """Forces from the strain invariant, the volume and the whole potential sum to zero."""
    model = random_model(seed)
    state, pairs = random_system(seed, n=20, box=3.0, periodic=periodic, strain=0.1)
    x = state.x.clone().requires_grad_(True)
    for total in (strain_invariant(x, pairs).sum(), model.volume(x, pairs).sum(),
                  model.potential(x, state.S, pairs).sum()):
        force = -torch.autograd.grad(total, x)[0]
        scale = force.abs().sum()
        assert scale > 0
        assert force.sum(0).abs().max() <= 1e-13 * scale


@PROPERTY
@given(seed=seeds)
def test_conservative_force_has_no_torque(seed):
    """The energy depends on objective quantities only (|r_ij|, Green-Lagrange strain), so
    the conservative forces also conserve angular momentum (open boundaries)."""
    model = random_model(seed)
    state, pairs = random_system(seed, n=20, box=3.0, periodic=False, strain=0.1)
    force = model.thermodynamics(state.x, state.S, pairs).force
    torque = (state.x[:, 0] * force[:, 1] - state.x[:, 1] * force[:, 0]).sum()
    scale = (state.x.norm(dim=1) * force.norm(dim=1)).sum()
    assert abs(torque) <= 1e-12 * scale


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_strain_of_one_bond_and_collinear_clusters_is_finite_with_finite_gradients(dtype):
    """Random clusters in which many particles have a single reference bond or collinear bonds: the
    strain energy and its force stay finite in float32 (no singular solve), and degenerate particles
    store no shear energy. (With a Tikhonov term of 1e-9 tr Y, below float32 resolution, the solve
    raised LinAlgError for most such clusters.)"""
    rng = np.random.default_rng(4)
    model = random_model(4, n_species=1).to(dtype)
    n_degenerate = 0
    for _ in range(40):
        n = int(rng.integers(2, 6))
        x_ref = np.cumsum(rng.uniform(0.3, 0.6, size=(n, 1)) * np.array([[1.0, 0.0]]), axis=0)  # a line
        if rng.random() < 0.5:
            x_ref = np.vstack([x_ref, x_ref[-1] + [0.0, 0.5]])  # one particle off the line: one bond
        angle = rng.uniform(0, 2 * np.pi)  # generic directions: Y has no exact zero entry
        x_ref = x_ref @ np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
        bond_i, bond_j, _ = brute_force_pairs(x_ref, h=0.65)
        pairs = make_pairs(bond_i, bond_j, np.zeros((len(bond_i), 2)), dtype=dtype,
                           bonds=(bond_i, bond_j, x_ref[bond_i] - x_ref[bond_j]))
        x = torch.as_tensor(x_ref + 0.05 * rng.normal(size=x_ref.shape), dtype=dtype).requires_grad_(True)
        F, valid = local_deformation_gradient(x, pairs)
        n_degenerate += int((~valid).sum())
        I = strain_invariant(x, pairs)
        assert torch.isfinite(F).all() and (I[~valid] == 0).all()
        U = model.potential(x, torch.zeros(len(x_ref), dtype=dtype), pairs).sum()
        (force,) = torch.autograd.grad(-U, [x])
        assert torch.isfinite(U) and torch.isfinite(force).all()
    assert n_degenerate > 40  # the clusters did exercise the degenerate path


def test_strain_solve_is_exact_for_a_well_conditioned_neighbourhood_in_float32():
    """No regulariser biases F: an affine map is recovered to float32 round-off."""
    x_ref = triangular_lattice(4, 4)
    bond_i, bond_j, _ = brute_force_pairs(x_ref, h=0.6)
    A = np.array([[1.05, 0.08], [-0.02, 0.97]])
    pairs = make_pairs([], [], np.zeros((0, 2)), bonds=(bond_i, bond_j, x_ref[bond_i] - x_ref[bond_j]),
                       dtype=torch.float32)
    F, valid = local_deformation_gradient(torch.as_tensor(x_ref @ A.T, dtype=torch.float32), pairs)
    np.testing.assert_allclose(F[valid].numpy(), np.broadcast_to(A, F[valid].shape), atol=2e-6)
