"""The bath (mpd.model.bath): friction and noise against a reservoir, in metriplectic form.

What physics.md ("Open systems") requires: energy conserved with the
reservoir's (E + T_b S_b), entropy produced, noise covariance 2 k_B M, div M
against finite differences, and momentum *not* conserved, exactly by the
bath's friction and kicks. float64 throughout.
"""
import math

import numpy as np
import torch
from test_model_dynamics import divergence, sampled_noise_covariance, stack_particles
from test_model_support import dense_mobility, particle_masses, random_model, random_system

from mpd.model import State, euler_maruyama_step, make_pairs
from mpd.model.bath import bath_entropy_rate


def bath_model(seed: int):
    return random_model(seed, bath=True)


def flow_field(state: State, rate: float = 0.3) -> torch.Tensor:
    """A simple shear u = (rate y, 0) at each particle."""
    return torch.stack([rate * state.x[:, 1], torch.zeros_like(state.x[:, 0])], dim=-1)


def test_without_noise_energy_plus_bath_energy_is_conserved_and_entropy_produced():
    """dE/dt + T_b dS_b/dt = 0 and dS/dt + dS_b/dt >= 0 (in the solvent's frame: the flow's work is the drive's)."""
    for seed in range(4):
        model = bath_model(seed)
        state, pairs = random_system(seed, n=16)
        f_v, f_S = model.drift(state, pairs, thermal=False)
        x, v, S = (t.clone().requires_grad_(True) for t in state)
        dE_dx, dE_dv, dE_dS = torch.autograd.grad(model.energy(State(x, v, S), pairs), (x, v, S))
        thermo = model.thermodynamics(state.x, state.S, pairs)
        bath = model.bath.terms(thermo.T, False, False)
        dSb_dt = bath_entropy_rate(bath, thermo.T, state.v, torch.zeros_like(state.v), particle_masses(model, pairs, 16))
        rates = torch.cat([(dE_dx * state.v).reshape(-1), (dE_dv * f_v).reshape(-1), dE_dS * f_S,
                           (bath.T_b * dSb_dt)[None]])
        assert abs(rates.sum()) <= 1e-12 * rates.abs().sum(), (rates.sum(), rates.abs().sum())
        assert f_S.sum() + dSb_dt >= 0
        # and the system's energy alone is not conserved: the check has teeth
        assert abs(rates[:-1].sum()) > 1e-3 * rates.abs().sum()


def test_bath_friction_acts_on_the_velocity_relative_to_the_flow():
    model = bath_model(2)
    state, pairs = random_system(2, n=12)
    flow = flow_field(state)
    f_at_rest, _ = model.drift(state, pairs, thermal=False)
    f_in_flow, _ = model.drift(state, pairs, thermal=False, flow=flow)
    gamma = model.bath.gamma.detach()
    torch.testing.assert_close(f_in_flow - f_at_rest, gamma * flow, rtol=1e-12, atol=1e-14)
    # a particle moving with the flow feels no friction
    moving = State(state.x, flow.clone(), state.S)
    without = random_model(2)  # the same weights, no bath
    f_bath, _ = model.drift(moving, pairs, thermal=False, flow=flow)
    f_none, _ = without.drift(moving, pairs, thermal=False)
    torch.testing.assert_close(f_bath, f_none, rtol=1e-12, atol=1e-14)


def test_bath_breaks_momentum_conservation_by_exactly_its_friction_and_kicks():
    model = bath_model(4)
    state, pairs = random_system(4, n=16)
    flow = flow_field(state)
    m = particle_masses(model, pairs, 16)[:, None]
    f_v, _ = model.drift(state, pairs, thermal=True, flow=flow)
    no_bath = random_model(4)
    f_v_pairs, _ = no_bath.drift(state, pairs, thermal=True)
    thermo = model.thermodynamics(state.x, state.S, pairs)
    bath = model.bath.terms(thermo.T, True, False)
    # pairs: momentum conserved; bath: -m gamma sum (v - u), nothing else (k_B div M has no velocity part)
    assert (m * f_v_pairs).sum(0).abs().max() < 1e-12 * (m * f_v_pairs).abs().sum()
    expected = -(m * bath.gamma[:, None] * (state.v - flow)).sum(0)
    torch.testing.assert_close((m * f_v).sum(0), expected, rtol=1e-10, atol=1e-12)
    # the noise: the pairs' kicks cancel, the bath's are sqrt(2 k_B gamma m T_b) dW per particle
    g = torch.Generator().manual_seed(0)
    dv, _ = model.noise(state, pairs, g)
    assert (m * dv).sum(0).abs().max() > 1e-3


def test_noise_covariance_with_a_bath_is_2_kB_M():
    """Sample covariance over 25000 draws vs 2 k_B M including the bath's diagonal share (5 standard errors)."""
    model = bath_model(7)
    state, pairs = random_system(7, n=5, box=1.3, periodic=False)
    _, sample_cov, expected, standard_error = sampled_noise_covariance(model, state, pairs)
    assert ((sample_cov - expected) / standard_error).abs().max() < 5
    # power: the bath's share of the velocity variance is far above the estimate's noise
    thermo = model.thermodynamics(state.x, state.S, pairs)
    bath_vv = (2 * model.k_B.detach() * model.bath.gamma.detach() * model.bath.T_b.detach()
               / particle_masses(model, pairs, 5)[0])
    assert bath_vv / standard_error[0, 0] > 20
    assert thermo.T.min() > 0


def test_bath_noise_conserves_energy_with_the_reservoir_sample_by_sample():
    """m (v - u).dv~ + T dS~ + T_b dS~_b = 0 for every draw, with T_b dS~_b = -sqrt(2 k_B) sum [G (v-u).dW + K dU]."""
    model = bath_model(3)
    state, pairs = random_system(3, n=12)
    flow = flow_field(state)
    peculiar = state.v - flow
    thermo = model.thermodynamics(state.x, state.S, pairs)
    bath = model.bath.terms(thermo.T, False, False)
    m, k_B = particle_masses(model, pairs, 12), model.k_B.detach()
    n_pairs = pairs.i.shape[0]
    g = torch.Generator().manual_seed(1)
    dW = torch.randn(n_pairs, 2, 2, generator=g, dtype=torch.float64)
    dV = torch.randn(n_pairs, generator=g, dtype=torch.float64)
    dW_b = torch.randn(12, 2, generator=g, dtype=torch.float64)
    dU_b = torch.randn(12, generator=g, dtype=torch.float64)
    # bath part only: subtract the pairs' share (checked in test_model_dynamics)
    dv, dS = model.noise_from_increments(State(state.x, peculiar, state.S), pairs, dW, dV, None, dW_b, dU_b)
    dv0, dS0 = model.noise_from_increments(State(state.x, peculiar, state.S), pairs, dW, dV, None,
                                           torch.zeros_like(dW_b), torch.zeros_like(dU_b))
    G = torch.sqrt(bath.gamma * m * bath.T_b)
    T_b_dS_b = -math.sqrt(2) * torch.sqrt(k_B) * ((G[:, None] * peculiar * dW_b).sum() + (torch.sqrt(bath.kappa) * dU_b).sum())
    power = torch.cat([(m[:, None] * peculiar * (dv - dv0)).reshape(-1), thermo.T * (dS - dS0), T_b_dS_b[None]])
    assert abs(power.sum()) <= 1e-12 * power.abs().sum()


def test_bath_div_M_satisfies_the_ito_energy_balance_with_the_reservoir():
    """M dE/dz = 0 over (v, S, S_b) implies dE/dz . div M = -tr(M d2E/dz2) over the whole space.

    With T_b constant, d2E/dS_b2 = 0, and the S_b row of div M is, per particle,
    dM_{Sb,v}/dv = -D gamma and dM_{Sb,S}/dS = -T' (dkappa/dT / (T T_b) - kappa / (T^2 T_b)).
    """
    for seed in range(3):
        model = bath_model(seed)
        state, pairs = random_system(seed, n=10)
        dim = state.x.shape[1]
        thermo = model.thermodynamics(state.x, state.S, pairs)
        bath = model.bath.terms(thermo.T, True, False)
        m = particle_masses(model, pairs, 10)[:, None]
        T, T_prime, T_b = thermo.T, thermo.dT_dS, bath.T_b
        dE_dz = stack_particles(m * state.v, T)
        d2E_dz2 = stack_particles(m * torch.ones_like(state.v), T_prime)
        M = dense_mobility(model, state, pairs)
        div_Sb = (-dim * bath.gamma - T_prime * (bath.dkappa_dT / (T * T_b) - bath.kappa / (T**2 * T_b))).sum()
        lhs = dE_dz @ divergence(model, state, pairs) + T_b * div_Sb
        rhs = -(torch.diagonal(M) * d2E_dz2).sum()
        torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=0)


def test_bath_alone_gives_equipartition_at_the_bath_temperature():
    """Isolated particles (no pairs) under the bath only: the Euler-Maruyama chain of v is an AR(1)
    process whose stationary variance per component is k_B T_b / m / (1 - gamma dt / 2) (exact for the
    discrete chain; k_B T_b / m in the dt -> 0 limit)."""
    model = random_model(5, bath=True, n_species=1).double()  # no species: one mass
    with torch.no_grad():
        model.bath.log_gamma.raw.fill_(math.log(math.expm1(0.8)))  # gamma = 0.8 per unit time
    n = 20000
    x = torch.as_tensor(np.random.default_rng(0).uniform(0, 1e4, (n, 2)))  # far apart: no neighbours
    pairs = make_pairs(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 2)))
    state = State(x, torch.zeros(n, 2, dtype=torch.float64), torch.zeros(n, dtype=torch.float64))
    interior = torch.ones(n, dtype=torch.bool)
    g = torch.Generator().manual_seed(2)
    dt = 0.5
    for _ in range(60):
        state = euler_maruyama_step(model, state, pairs, dt, interior, g)
    gamma = model.bath.gamma.item()
    expected = (model.k_B * model.bath.T_b / model.mass[0]).item() / (1 - gamma * dt / 2)  # no species: all 0
    measured = state.v.var(0).mean().item()
    assert abs(measured / expected - 1) < 0.03, (measured, expected)
