"""The guarantees of physics.md for the drift, the noise and the likelihood.

Momentum conservation of each part, dE/dt = 0 and dS/dt >= 0 without noise,
noise covariance 2 k_B M, div(M) against finite differences, the marginal
covariance and the likelihood, and linear cost in N. float64 throughout.
"""
import math

import numpy as np
import torch
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from scipy.spatial import cKDTree
from scipy.stats import multivariate_normal
from test_model_support import dense_mobility, particle_masses, random_model, random_system
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from mpd.model import PairTensors, State, make_pairs
from mpd.model.dynamics import gaussian_nll, mobility_divergence

# no shrinking: examples are random seeds (a smaller seed explains nothing) and shrinking takes minutes
NO_SHRINK = (Phase.explicit, Phase.generate)
PROPERTY = settings(max_examples=5, deadline=None, database=None, phases=NO_SHRINK)
seeds = st.integers(0, 2**31 - 1)


def stack_particles(v: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """(N, D), (N,) -> (N (D+1),), particle by particle: the order of dense_mobility."""
    return torch.cat([v, S[:, None]], dim=1).reshape(-1)


def assert_sums_to_zero(per_particle: torch.Tensor, rtol: float = 1e-12):
    total, scale = per_particle.sum(0), per_particle.abs().sum()
    assert scale > 0, "vacuous: the term is identically zero"
    assert total.abs().max() <= rtol * scale, (total, scale)


def divergence(model, state, pairs) -> torch.Tensor:
    """k_B-free div(M) per particle, stacked like dense_mobility, from the hand derivation (pairs and bath)."""
    thermo, terms = model._terms(state, pairs, with_derivatives=True, create_graph=False)
    to_p_i, to_S_i, to_S_j = mobility_divergence(terms)
    m = particle_masses(model, pairs, state.x.shape[0])[:, None]
    div_v = torch.zeros_like(state.v).index_add(0, pairs.i, to_p_i).index_add(0, pairs.j, -to_p_i) / m
    div_S = torch.zeros_like(state.S).index_add(0, pairs.i, to_S_i).index_add(0, pairs.j, to_S_j)
    if model.has_bath:
        bath = model.bath.terms(thermo.T, True, False)
        T, T_prime = thermo.T, thermo.dT_dS
        div_S = div_S + T_prime * (bath.dkappa_dT / T**2 - 2 * bath.kappa / T**3)
    return stack_particles(div_v, div_S)


# -- momentum --------------------------------------------------------------------------


@PROPERTY
@given(seed=seeds, periodic=st.booleans())
def test_each_part_of_the_dynamics_conserves_momentum(seed, periodic):
    model = random_model(seed)
    state, pairs = random_system(seed, n=16, periodic=periodic)
    m = particle_masses(model, pairs, 16)[:, None]
    assert m.unique().numel() == 2  # two species, two masses: momentum is m_i v_i, not m sum v
    force = model.thermodynamics(state.x, state.S, pairs).force
    f_v_deterministic, _ = model.drift(state, pairs, thermal=False)
    f_v_full, _ = model.drift(state, pairs, thermal=True)
    dv_noise, _ = model.noise(state, pairs, torch.Generator().manual_seed(seed))
    assert_sums_to_zero(force)  # conservative
    assert_sums_to_zero(m * f_v_deterministic - force)  # dissipative, M dS/dz
    assert_sums_to_zero(m * (f_v_full - f_v_deterministic))  # k_B div(M)
    assert_sums_to_zero(m * dv_noise)  # stochastic


# -- first and second law --------------------------------------------------------------


@PROPERTY
@given(seed=seeds, speed=st.floats(0.01, 10.0))
def test_without_noise_energy_is_conserved_and_entropy_produced(seed, speed):
    model = random_model(seed)
    state, pairs = random_system(seed, n=16)
    state = State(state.x, speed * state.v, state.S)
    f_v, f_S = model.drift(state, pairs, thermal=False)
    x, v, S = (t.clone().requires_grad_(True) for t in state)
    dE_dx, dE_dv, dE_dS = torch.autograd.grad(model.energy(State(x, v, S), pairs), (x, v, S))
    rates = torch.cat([(dE_dx * state.v).reshape(-1), (dE_dv * f_v).reshape(-1), dE_dS * f_S])
    dE_dt = rates.sum()
    assert abs(dE_dt) <= 1e-12 * rates.abs().sum(), (dE_dt, rates.abs().sum())
    assert f_S.sum() >= 0
    # and the entropy production equals dS/dz . M dS/dz, a quadratic form of a PSD matrix
    M = dense_mobility(model, state, pairs)
    dS_dz = stack_particles(torch.zeros_like(state.v), torch.ones_like(state.S))
    torch.testing.assert_close(f_S.sum(), dS_dz @ M @ dS_dz, rtol=1e-12, atol=0)


def test_energy_check_can_fail():
    """The same check rejects a drift with the friction's entropy production dropped."""
    model = random_model(1)
    state, pairs = random_system(1, n=16)
    f_v, _ = model.drift(state, pairs, thermal=False)
    x, v, S = (t.clone().requires_grad_(True) for t in state)
    dE_dx, dE_dv, _ = torch.autograd.grad(model.energy(State(x, v, S), pairs), (x, v, S))
    rates = torch.cat([(dE_dx * state.v).reshape(-1), (dE_dv * f_v).reshape(-1)])
    assert abs(rates.sum()) > 1e-6 * rates.abs().sum()


# -- mobility and its divergence ---------------------------------------------------------


@PROPERTY
@given(seed=seeds, bath=st.booleans())
def test_drift_is_L_dE_plus_M_dS_plus_kB_div_M(seed, bath):
    """The assembled drift equals the dense M applied to dS/dz (and k_B div M on top)."""
    model = random_model(seed, bath=bath)
    state, pairs = random_system(seed, n=10)
    M = dense_mobility(model, state, pairs)
    m, k_B = particle_masses(model, pairs, 10)[:, None], model.k_B.detach()
    force = model.thermodynamics(state.x, state.S, pairs).force
    dS_dz = stack_particles(torch.zeros_like(state.v), torch.ones_like(state.S))
    expected = M @ dS_dz + stack_particles(force / m, torch.zeros_like(state.S))
    if bath:  # the S_b column of M times dS/dS_b = 1: -gamma v (at rest) and -kappa / (T T_b)
        T = model.thermodynamics(state.x, state.S, pairs).T
        terms = model.bath.terms(T, False, False)
        expected = expected + stack_particles(-terms.gamma[:, None] * state.v, -terms.kappa / (T * terms.T_b))
    torch.testing.assert_close(stack_particles(*model.drift(state, pairs, thermal=False)), expected, rtol=1e-10, atol=1e-12)
    expected = expected + k_B * divergence(model, state, pairs)
    torch.testing.assert_close(stack_particles(*model.drift(state, pairs)), expected, rtol=1e-10, atol=1e-12)


@settings(max_examples=3, deadline=None, database=None, phases=NO_SHRINK)
@given(seed=seeds, bath=st.booleans())
def test_div_M_matches_central_finite_differences(seed, bath):
    """div(M)_a = sum_b dM_ab/dz_b over velocities and entropies, step 1e-6, float64."""
    model = random_model(seed, bath=bath)
    state, pairs = random_system(seed, n=8, box=2.0)
    n, dim = state.x.shape
    z0 = stack_particles(state.v, state.S)
    step = 1e-6

    def mobility_at(z):
        blocks = z.reshape(n, dim + 1)
        return dense_mobility(model, State(state.x, blocks[:, :dim].contiguous(), blocks[:, dim].contiguous()), pairs)

    numerical = torch.zeros_like(z0)
    for b in range(z0.numel()):
        dz = torch.zeros_like(z0)
        dz[b] = step
        numerical += (mobility_at(z0 + dz)[:, b] - mobility_at(z0 - dz)[:, b]) / (2 * step)
    analytic = divergence(model, state, pairs)
    scale = analytic.abs().max()
    assert scale > 0
    assert (analytic - numerical).abs().max() <= 1e-7 * scale, (analytic - numerical).abs().max() / scale


@PROPERTY
@given(seed=seeds)
def test_div_M_satisfies_the_ito_energy_balance(seed):
    """M dE/dz = 0 everywhere implies dE/dz . div M = -tr(M d2E/dz2): an exact identity
    (the mean energy is conserved with noise on) and a second check of div(M)."""
    model = random_model(seed)
    state, pairs = random_system(seed, n=12)
    thermo = model.thermodynamics(state.x, state.S, pairs)
    m = particle_masses(model, pairs, 12)[:, None]
    dE_dz = stack_particles(m * state.v, thermo.T)
    d2E_dz2 = stack_particles(m * torch.ones_like(state.v), thermo.dT_dS)  # diagonal in (v, S)
    M = dense_mobility(model, state, pairs)
    lhs = dE_dz @ divergence(model, state, pairs)
    rhs = -(torch.diagonal(M) * d2E_dz2).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=0)


# -- noise -------------------------------------------------------------------------------


def tiled(state: State, pairs: PairTensors, copies: int) -> tuple[State, PairTensors]:
    """`copies` disconnected replicas of a system: one noise draw gives `copies` samples."""
    n = state.x.shape[0]
    offset = (n * torch.arange(copies))[:, None]
    big_pairs = PairTensors(
        (pairs.i[None] + offset).reshape(-1),
        (pairs.j[None] + offset).reshape(-1),
        pairs.shift.repeat(copies, 1),
        (pairs.bond_i[None] + offset).reshape(-1),
        (pairs.bond_j[None] + offset).reshape(-1),
        pairs.bond_shift.repeat(copies, 1),
        pairs.bond_r_ref.repeat(copies, 1),
        pairs.shift_rate.repeat(copies, 1),
        pairs.pair_kind.repeat(copies, 1),
        pairs.species.repeat(copies),
    )
    return State(state.x.repeat(copies, 1), state.v.repeat(copies, 1), state.S.repeat(copies)), big_pairs


def sampled_noise_covariance(model, state: State, pairs: PairTensors, copies: int = 25000):
    """(draws (copies, N (D+1)), their covariance, 2 k_B M, the standard error of each covariance entry).

    The standard error of a sample covariance of zero-mean Gaussians is sqrt((C_aa C_bb + C_ab^2) / K).
    """
    n, dim = state.x.shape
    big_state, big_pairs = tiled(state, pairs, copies)
    dv, dS = model.noise(big_state, big_pairs, torch.Generator().manual_seed(0))
    samples = torch.cat([dv.reshape(copies, n, dim), dS.reshape(copies, n, 1)], dim=-1).reshape(copies, -1)
    expected = 2 * model.k_B.detach() * dense_mobility(model, state, pairs)
    sample_cov = samples.T @ samples / copies  # the increments have zero mean by construction
    variance = torch.diagonal(expected)
    standard_error = torch.sqrt((variance[:, None] * variance[None, :] + expected**2) / copies)
    return samples, sample_cov, expected, standard_error


def test_noise_covariance_is_2_kB_M():
    """Sample covariance of (dv~, dS~) over 25000 draws vs 2 k_B M (per unit time), every
    entry: per-particle blocks and cross blocks between particles. Tolerance: 5 standard
    errors of each entry, sqrt((C_aa C_bb + C_ab^2)/K) (a family-wise false alarm rate
    below 1e-4 for the 15^2 entries; the seed is fixed, so the test is deterministic)."""
    model = random_model(7)
    state, pairs = random_system(7, n=5, box=1.3, periodic=False)
    samples, sample_cov, expected, standard_error = sampled_noise_covariance(model, state, pairs)
    n, dim = state.x.shape
    variance, copies = torch.diagonal(expected), samples.shape[0]
    z = (sample_cov - expected) / standard_error
    assert z.abs().max() < 5, z.abs().max()
    assert (samples.mean(0).abs() < 5 * torch.sqrt(variance / copies)).all()
    # the test has power: velocity-entropy covariances and cross-particle blocks are far
    # above the noise floor of the estimate
    signal = expected.abs() / standard_error
    particle = torch.arange(n * (dim + 1)) // (dim + 1)
    assert signal[torch.arange(n) * (dim + 1), torch.arange(n) * (dim + 1) + dim].max() > 20  # v_x, S of one particle
    assert signal[particle[:, None] != particle[None, :]].max() > 20  # cross block


def test_noise_conserves_energy_and_momentum_sample_by_sample():
    """m v.dv~ + T dS~ summed over particles is zero for every draw (M dE/dz = 0)."""
    model = random_model(3)
    state, pairs = random_system(3, n=16)
    thermo = model.thermodynamics(state.x, state.S, pairs)
    m = particle_masses(model, pairs, 16)[:, None]
    for seed in range(5):
        dv, dS = model.noise(state, pairs, torch.Generator().manual_seed(seed))
        power = torch.cat([(m * state.v * dv).reshape(-1), thermo.T * dS])
        assert abs(power.sum()) <= 1e-12 * power.abs().sum()
        assert_sums_to_zero(m * dv)


def test_marginal_covariance_is_the_diagonal_block_of_2_kB_M_dt():
    model = random_model(5)
    state, pairs = random_system(5, n=10)
    n, dim = state.x.shape
    dt = 0.01
    sigma = model.marginal_covariance(state, pairs, dt)
    M = dense_mobility(model, state, pairs)
    for k in range(n):
        block = slice(k * (dim + 1), (k + 1) * (dim + 1))
        torch.testing.assert_close(sigma[k], 2 * model.k_B.detach() * dt * M[block, block], rtol=1e-12, atol=1e-15)
        has_neighbours = ((pairs.i == k) | (pairs.j == k)).any()
        # positive definite with a neighbour (A, C > 0); zero for a lone particle
        assert torch.linalg.eigvalsh(sigma[k]).min() > 0 if has_neighbours else (sigma[k] == 0).all()


# -- likelihood ---------------------------------------------------------------------------


def test_nll_is_the_mean_gaussian_nll_over_interior_particles():
    model = random_model(11)
    state, pairs = random_system(11, n=12)
    g = torch.Generator().manual_seed(1)
    dt = 0.05
    state_t1 = State(state.x, state.v + torch.randn(state.v.shape, generator=g, dtype=torch.float64),
                     state.S + torch.randn(state.S.shape, generator=g, dtype=torch.float64))
    interior = torch.arange(12) % 3 != 0
    loss = model.nll(state, state_t1, pairs, dt, interior, jitter=0.0)
    f_v, f_S = model.drift(state, pairs)
    sigma = model.marginal_covariance(state, pairs, dt)
    expected = np.mean([
        -multivariate_normal.logpdf(
            np.r_[state_t1.v[k].numpy(), state_t1.S[k].item()],
            mean=np.r_[(state.v[k] + f_v[k] * dt).numpy(), (state.S[k] + f_S[k] * dt).item()],
            cov=sigma[k].numpy(),
        )
        for k in range(12) if interior[k]
    ])
    np.testing.assert_allclose(loss.item(), expected, rtol=1e-10)


def test_nll_trains_every_part_including_the_teacher():
    model = random_model(2, bath=True)
    state, pairs = random_system(2, n=12)
    S_t = model.teacher_entropy(state.x, state.v, pairs)
    S_t1 = model.teacher_entropy(state.x, 0.9 * state.v, pairs)
    loss = model.nll(State(state.x, state.v, S_t), State(state.x, 0.9 * state.v, S_t1), pairs, 0.01)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for part in ("kernel", "U_vol", "U_dev", "amplitudes", "teacher", "log_k_B", "log_mass", "species_log_mass", "bath"):
        assert any(p.grad.abs().sum() > 0 for name, p in model.named_parameters() if name.startswith(part)), part


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op produces."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


def test_likelihood_runs_at_20000_particles_without_an_N_by_N_tensor():
    """Forward and backward of the likelihood at N = 20000 (float32, about 6 neighbours
    each): no tensor has more than 200 N elements (an N x N one would have 20000 N).
    Timings belong to the benchmarks."""
    n = 20000
    rng = np.random.default_rng(0)
    box = np.sqrt(n / 2.0)
    x = rng.uniform(0, box, (n, 2))
    ij = cKDTree(x, boxsize=box).query_pairs(1.0, output_type="ndarray")
    shift = -box * np.round((x[ij[:, 0]] - x[ij[:, 1]]) / box)
    bonds = (ij[:, 0], ij[:, 1], x[ij[:, 0]] - x[ij[:, 1]] + shift)  # reference = the current configuration
    pairs = make_pairs(ij[:, 0], ij[:, 1], shift, bonds=bonds, bond_shift=shift, dtype=torch.float32)
    model = random_model(0, n_species=1).float()
    v = torch.as_tensor(rng.normal(size=(n, 2)), dtype=torch.float32)
    S = torch.as_tensor(rng.normal(size=n), dtype=torch.float32)
    state = State(torch.as_tensor(x, dtype=torch.float32), v, S)
    largest = LargestTensor()
    with largest:
        loss = model.nll(state, State(state.x, 1.01 * v, S + 0.01), pairs, 0.01)
        loss.backward()
    assert torch.isfinite(loss)
    assert largest.numel <= 200 * n, largest.numel / n


def _random_covariances(rng, k: int, scales) -> torch.Tensor:
    a = torch.as_tensor(rng.normal(size=(k, 3, 3)))
    return (a @ a.transpose(-1, -2) + 0.1 * torch.eye(3)) * torch.as_tensor(scales)[:, None, None]


def test_likelihood_is_invariant_under_rotations_of_the_velocities():
    """Rotating the velocity residuals and the velocity blocks of Sigma by Q leaves the NLL unchanged
    (the covariance floor is isotropic in velocity; a per-component floor changed it by percent)."""
    rng = np.random.default_rng(3)
    # anisotropic velocity blocks and very different scales across rows: a per-component floor shows
    covariance = _random_covariances(rng, 6, [1.0, 1e-3, 1.0, 1e3, 1.0, 1.0])
    covariance[:, 0, 0] *= 1e4
    residual = torch.as_tensor(rng.normal(size=(6, 3)))
    angle = 0.7
    Q = torch.eye(3, dtype=torch.float64)
    Q[:2, :2] = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    jitter = 1e-3  # large, so that any anisotropy of the floor would show clearly
    before = gaussian_nll(residual, covariance, jitter)
    after = gaussian_nll(residual @ Q.T, Q @ covariance @ Q.T, jitter)
    torch.testing.assert_close(after, before, rtol=1e-7, atol=0.0)


def test_likelihood_floor_does_not_swamp_a_nearly_singular_row():
    """A small, nearly singular row beside large ones: with the default jitter its NLL stays within
    0.1 % of the exact one (a floor scaled by the batch mean changed it by an order of magnitude)."""
    rng = np.random.default_rng(5)
    covariance = _random_covariances(rng, 4, [1.0, 1.0, 1.0, 1e-4])
    u = torch.as_tensor(rng.normal(size=3))
    covariance[3] = 1e-4 * (torch.outer(u, u) + 1e-4 * torch.eye(3, dtype=torch.float64))  # condition ~1e4
    residual = torch.as_tensor(rng.normal(size=(4, 3))) * torch.tensor([1.0, 1.0, 1.0, 1e-4])[:, None]
    exact = gaussian_nll(residual, covariance, 0.0)
    default = gaussian_nll(residual, covariance, 1e-6)
    torch.testing.assert_close(default, exact, rtol=1e-3, atol=0.0)
    # float32: the floor rises to 100 eps, the factorisation succeeds and the value stays close
    single = gaussian_nll(residual.float(), covariance.float(), 1e-6)
    assert torch.isfinite(single).all()
    torch.testing.assert_close(single.double()[:3], exact[:3], rtol=1e-3, atol=1e-3)


def test_amplitude_T_derivatives_by_forward_mode_match_autograd_and_script():
    """NoiseAmplitudes.with_T_derivative carries d/dT through the network in one pass (issue 14): the
    same factors and the same derivatives as three backward passes, eager and under TorchScript."""
    from mpd.model.networks import NoiseAmplitudes

    torch.manual_seed(3)
    amplitudes = NoiseAmplitudes((16, 16)).double()
    amplitudes.mobility_scale.fill_(1.7)
    rho = torch.rand(40, dtype=torch.float64)
    T = torch.rand(40, dtype=torch.float64) * 3 + 0.1
    factors, derivative = amplitudes.with_T_derivative(rho, T)
    leaf = T.clone().requires_grad_(True)
    reference = amplitudes(rho, leaf)
    columns = [torch.autograd.grad(reference[:, k].sum(), leaf, retain_graph=True)[0] for k in range(3)]
    assert torch.allclose(factors, reference, rtol=1e-14, atol=0)
    assert torch.allclose(derivative, torch.stack(columns, -1), rtol=1e-12, atol=1e-15)

    class Call(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, rho: torch.Tensor, T: torch.Tensor):
            return self.inner.with_T_derivative(rho, T)

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated; the rollout step uses it
        scripted = torch.jit.script(Call(amplitudes))
    scripted_factors, scripted_derivative = scripted(rho, T)
    assert torch.equal(scripted_factors, factors) and torch.allclose(scripted_derivative, derivative, rtol=1e-14)
