"""One Euler-Maruyama step: who moves, what is conserved, reproducibility, dtypes."""
import pytest
import torch
from test_model_support import particle_masses, random_model, random_system

from mpd.model import EulerMaruyama, PairTensors, State, euler_maruyama_step


def test_only_interior_particles_move():
    model = random_model(0)
    state, pairs = random_system(0, n=16)
    interior = torch.arange(16) >= 4
    new = euler_maruyama_step(model, state, pairs, 0.01, interior, torch.Generator().manual_seed(0))
    for before, after in zip(state, new):
        assert torch.equal(before[~interior], after[~interior])
        assert (before[interior] != after[interior]).all()


def test_positions_take_the_new_velocity_and_noise_enters_velocity_and_entropy_only():
    model = random_model(1)
    state, pairs = random_system(1, n=12)
    interior = torch.ones(12, dtype=torch.bool)
    dt = 0.02
    new = euler_maruyama_step(model, state, pairs, dt, interior, torch.Generator().manual_seed(3))
    torch.testing.assert_close(new.x, state.x + new.v * dt, rtol=1e-14, atol=1e-14)
    f_v, f_S = model.drift(state, pairs)
    dv, dS = model.noise(state, pairs, torch.Generator().manual_seed(3))
    torch.testing.assert_close(new.v, state.v + f_v * dt + dv * dt**0.5, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(new.S, state.S + f_S * dt + dS * dt**0.5, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("noise", [True, False])
def test_step_conserves_total_momentum(noise):
    model = random_model(2)
    state, pairs = random_system(2, n=16)
    interior = torch.ones(16, dtype=torch.bool)
    new = euler_maruyama_step(model, state, pairs, 0.05, interior, torch.Generator().manual_seed(0), noise=noise)
    m = particle_masses(model, pairs, 16)[:, None]  # two species of different masses
    change = (m * (new.v - state.v)).sum(0)
    assert change.abs().max() <= 1e-13 * (m * (new.v - state.v)).abs().sum()


def test_same_generator_seed_same_step_and_noise_off_is_deterministic():
    model = random_model(3)
    state, pairs = random_system(3, n=12)
    interior = torch.ones(12, dtype=torch.bool)

    def step(seed, noise=True):
        return euler_maruyama_step(model, state, pairs, 0.01, interior, torch.Generator().manual_seed(seed), noise)

    assert all(torch.equal(a, b) for a, b in zip(step(0), step(0)))
    assert not torch.equal(step(0).v, step(1).v)
    assert all(torch.equal(a, b) for a, b in zip(step(0, False), step(1, False)))


def test_deterministic_step_energy_error_is_second_order_and_entropy_never_decreases():
    """noise=False: dE/dt = 0 exactly, so one step changes E by O(dt^2); S grows by
    dt * sum f_S >= 0 exactly (S enters linearly)."""
    model = random_model(4)
    state, pairs = random_system(4, n=16)
    interior = torch.ones(16, dtype=torch.bool)
    E0 = model.energy(state, pairs).item()
    errors = []
    for dt in (2e-3, 1e-3):
        new = euler_maruyama_step(model, state, pairs, dt, interior, noise=False)
        errors.append(abs(model.energy(new, pairs).item() - E0))
        assert new.S.sum() >= state.S.sum()
    assert 3.0 < errors[0] / errors[1] < 5.0, errors


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_follows_the_state(dtype):
    model = random_model(5).to(dtype)
    state, pairs = random_system(5, n=12)
    state = State(*(t.to(dtype) for t in state))
    pairs = PairTensors(*(t.to(dtype) if t.is_floating_point() else t for t in pairs))
    interior = torch.ones(12, dtype=torch.bool)
    with torch.no_grad():  # the step switches grad mode on itself
        new = euler_maruyama_step(model, state, pairs, 0.01, interior, torch.Generator().manual_seed(0))
    assert all(t.dtype == dtype and torch.isfinite(t).all() for t in new)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_step_compiles_with_torchscript_and_matches_eager():
    """The lead may ship the step as TorchScript (torch.export cannot trace the
    autograd forces). The scripted module reproduces the eager step draw for draw."""
    model = random_model(6)
    state, pairs = random_system(6, n=12)
    interior = torch.arange(12) > 1
    scripted = torch.jit.script(EulerMaruyama(model))
    for noise in (True, False):
        a = scripted(state, pairs, 0.01, interior, torch.Generator().manual_seed(0), noise)
        b = euler_maruyama_step(model, state, pairs, 0.01, interior, torch.Generator().manual_seed(0), noise)
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("bath", [False, True])
def test_one_pass_drift_and_noise_equal_the_separate_drift_and_noise(bath):
    """The step evaluates energy, temperatures and amplitudes once (drift_and_noise); the result is the
    drift and the noise computed separately, draw for draw (mpd.model.dynamics)."""
    model = random_model(5, bath=bath)
    state, pairs = random_system(5)
    with torch.enable_grad():
        f_v, f_S = model.drift(state, pairs, thermal=True)
        dv, dS = model.noise(state, pairs, torch.Generator().manual_seed(7))
        g_v, g_S, ev, eS = model.drift_and_noise(state, pairs, torch.Generator().manual_seed(7))
        h_v, h_S, zv, zS = model.drift_and_noise(state, pairs, None, noise=False)
        d_v, d_S = model.drift(state, pairs, thermal=False)
    for a, b in ((f_v, g_v), (f_S, g_S), (dv, ev), (dS, eS), (d_v, h_v), (d_S, h_S)):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)
    assert not zv.any() and not zS.any()
