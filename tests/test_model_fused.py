"""The fused first-order evaluation against the slow, obviously correct path (issue 14).

`drift_and_noise` (rollouts) and `predictive_moments` (training) compute forces and
the amplitudes' T-derivatives by forward mode and the pairs' algebra in chunks
(`mpd.model.fused`); `drift`, `noise`, `marginal_covariance` and `pair_terms` keep
autograd forces and the (E, D, D) matrices of docs/model.md. Both must agree to
round-off in float64, gradients of the likelihood included, with several chunks,
a bath, two species, a sheared cell and the fluid model. float64 unless stated.
"""
import numpy as np
import pytest
import torch
from test_model_support import random_model, random_system

from mpd.allocator import retain_freed_memory
from mpd.model import State
from mpd.model.dynamics import assemble_drift, gaussian_nll
from mpd.model.geometry import (
    VolumeKernel,
    make_pairs,
    strain_force,
    strain_invariant,
    strain_invariant_and_gradient,
)
from mpd.model.layers import RECOMPUTE_ABOVE_PAIRS, _TangentMLPFunction, mlp, recompute_activations
from mpd.model.monotonic import DeviatoricEnergy, VolumetricEnergy

CASES = [  # (seed, bath, solid, pairs per chunk)
    (1, False, True, 8192),
    (2, True, True, 5),
    (3, False, False, 7),
    (4, True, False, 3),
]


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = b.abs().max()
    assert scale > 0, "vacuous: the reference is identically zero"
    return float(((a - b).abs().max() / scale).detach())


def system(seed, bath, solid, chunk, n=20):
    model = random_model(seed, bath=bath, solid=solid)
    model.pair_chunk = chunk
    model.teacher.pair_chunk = chunk
    state, pairs = random_system(seed, n=n)
    g = torch.Generator().manual_seed(seed)
    pairs = pairs._replace(shift_rate=0.1 * torch.randn(pairs.shift.shape, generator=g, dtype=torch.float64))
    flow = 0.1 * torch.randn(state.v.shape, generator=g, dtype=torch.float64) if bath else None
    assert pairs.i.shape[0] > 2 * chunk or chunk > 1000, "several chunks"
    return model, state, pairs, flow


@pytest.mark.parametrize("seed,bath,solid,chunk", CASES)
def test_rollout_drift_and_noise_match_the_reference_draw_for_draw(seed, bath, solid, chunk):
    model, state, pairs, flow = system(seed, bath, solid, chunk)
    fused = model.drift_and_noise(state, pairs, torch.Generator().manual_seed(5), True, flow)
    drift = model.drift(state, pairs, thermal=True, flow=flow)
    noise = model.noise(state, pairs, torch.Generator().manual_seed(5))
    for a, b in zip(fused, (*drift, *noise)):
        assert relative(a, b) < 1e-12
    cold = model.drift_and_noise(state, pairs, None, False, flow)
    drift = model.drift(state, pairs, thermal=False, flow=flow)
    assert relative(cold[0], drift[0]) < 1e-12 and relative(cold[1], drift[1]) < 1e-12
    assert (cold[2] == 0).all() and (cold[3] == 0).all()


@pytest.mark.parametrize("seed,bath,solid,chunk", CASES)
def test_training_moments_match_the_reference(seed, bath, solid, chunk):
    model, state, pairs, flow = system(seed, bath, solid, chunk)
    f_v, f_S, M = model.fused_moments(state, pairs, flow)
    r_v, r_S = model.drift(state, pairs, thermal=True, flow=flow)
    reference = model.marginal_covariance(state, pairs, 1.0) / (2 * model.k_B.detach())
    assert relative(f_v, r_v) < 1e-12 and relative(f_S, r_S) < 1e-12 and relative(M, reference) < 1e-12


def reference_nll(model, state, state_t1, pairs, dt, flow):
    """The likelihood by the reference path: autograd forces (double backward) and per-pair M blocks."""
    thermo, terms = model._terms(state, pairs, with_derivatives=True, create_graph=True)
    mass = model.particle_mass(pairs, state.x.shape[0])
    bath = model.bath_terms(thermo.T, True, True)
    f_v, f_S = assemble_drift(thermo, terms, pairs, mass, model.k_B, bath, state.v, flow)
    mean = torch.cat([state.v + f_v * dt, (state.S + f_S * dt)[:, None]], -1)
    target = torch.cat([state_t1.v, state_t1.S[:, None]], -1)
    covariance = 2 * model.k_B * dt * model.marginal_mobility(thermo, terms, pairs, mass, True)
    return gaussian_nll(target - mean, covariance, 1e-6).mean()


def likelihood_gradients(model, state, pairs, flow, fused: bool):
    S_t = model.teacher_entropy(state.x, state.v, pairs)
    S_t1 = model.teacher_entropy(state.x, 0.9 * state.v, pairs)
    now, later = State(state.x, state.v, S_t), State(state.x, 0.9 * state.v, S_t1)
    loss = model.nll(now, later, pairs, 0.01, flow=flow) if fused else reference_nll(model, now, later, pairs, 0.01,
                                                                                    flow)
    params = [p for p in model.parameters()]
    return loss, torch.autograd.grad(loss, params, allow_unused=True)


@pytest.mark.parametrize("recompute", ["never", "always"])
@pytest.mark.parametrize("seed,bath,solid,chunk", CASES)
def test_likelihood_and_its_gradients_match_the_reference(seed, bath, solid, chunk, recompute):
    model, state, pairs, flow = system(seed, bath, solid, chunk)
    model.recompute_activations = model.teacher.recompute_activations = recompute
    loss, grads = likelihood_gradients(model, state, pairs, flow, fused=True)
    reference, expected = likelihood_gradients(model, state, pairs, flow, fused=False)
    assert abs(float(loss - reference)) <= 1e-12 * abs(float(reference))
    compared = 0
    for (name, _), got, want in zip(model.named_parameters(), grads, expected):
        assert (got is None) == (want is None), name
        if want is not None and want.abs().max() > 0:
            assert relative(got, want) < 1e-9, name
            compared += 1
    assert compared >= 10


def test_float32_rollout_terms_agree_with_the_reference_to_float32_resolution():
    model, state, pairs, flow = system(2, True, True, 6)
    model, flow = model.float(), flow.float()
    state = State(*(t.float() for t in state))
    pairs = pairs._replace(**{k: getattr(pairs, k).float() for k in ("shift", "bond_shift", "bond_r_ref", "shift_rate",
                                                                      "pair_kind")})
    fused = model.drift_and_noise(state, pairs, torch.Generator().manual_seed(1), True, flow)
    reference = (*model.drift(state, pairs, flow=flow), *model.noise(state, pairs, torch.Generator().manual_seed(1)))
    for a, b in zip(fused, reference):
        assert a.dtype == torch.float32 and relative(a, b) < 1e-4


# -- the pieces ------------------------------------------------------------------------------


def test_kernel_slope_by_forward_mode_matches_autograd_inside_and_beyond_the_cut_off():
    torch.manual_seed(0)
    for n_species in (1, 3):
        kernel = VolumeKernel(1.3, (8, 8), n_species).double()
        r = (torch.rand(60, dtype=torch.float64) * 1.6).requires_grad_(True)  # some beyond h: W = 0, slope 0
        kind = torch.rand(60, n_species, dtype=torch.float64) if n_species > 1 else None
        (slope,) = torch.autograd.grad(kernel(r, kind).sum(), r)
        W, dW_dr = kernel.with_r_derivative(r, kind)
        assert torch.allclose(W, kernel(r, kind), rtol=1e-14, atol=0) and torch.allclose(dW_dr, slope, rtol=1e-12,
                                                                                          atol=1e-15)
        assert (dW_dr[r > 1.3] == 0).all() and (dW_dr[r < 1.3] != 0).all()


def test_tangent_mlp_backward_is_the_gradient_of_its_forward():
    torch.manual_seed(0)
    net = mlp(2, (5, 4), 3).double()
    h = torch.randn(7, 2, dtype=torch.float64, requires_grad=True)
    dh = torch.randn(7, 2, dtype=torch.float64, requires_grad=True)
    params = net._linear_parameters()
    assert torch.autograd.gradcheck(lambda *a: _TangentMLPFunction.apply(*a), (h, dh, *params))
    with torch.no_grad():  # the in-place loop the rollout uses gives the same values
        plain = net.with_tangent(h, dh)
    for a, b in zip(net.with_tangent(h, dh), plain):
        assert torch.equal(a.detach(), b)


@pytest.mark.parametrize("energy", [VolumetricEnergy, DeviatoricEnergy])
def test_energy_derivatives_by_forward_mode_match_autograd(energy):
    torch.manual_seed(1)
    net = energy((8, 8)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    S = (4 * torch.randn(80, dtype=torch.float64)).requires_grad_(True)  # wide: some pre-activations beyond 20
    y = (torch.rand(80, dtype=torch.float64) + 0.3).requires_grad_(True)
    U = net(S, y)
    dU_dS, dU_dy = torch.autograd.grad(U.sum(), [S, y], create_graph=True)
    (d2U_dS2,) = torch.autograd.grad(dU_dS.sum(), S)
    for got, want in zip(net.with_derivatives(S, y), (U, dU_dS, dU_dy, d2U_dS2)):
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-14)
    with torch.no_grad():  # the rollout's in-place path
        for got, want in zip(net.with_derivatives(S, y), (U, dU_dS, dU_dy, d2U_dS2)):
            assert torch.allclose(got, want, rtol=1e-12, atol=1e-14)
        inside = net.with_derivatives(S.clamp(-1, 1), y)  # no pre-activation beyond 20: the shortcut
    for got, want in zip(inside, net.with_derivatives(S.clamp(-1, 1), y)):
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-14)


def test_strain_force_in_closed_form_is_minus_the_gradient_of_the_strain_energy():
    state, pairs = random_system(7, n=30, strain=0.2)
    x = state.x.clone().requires_grad_(True)
    dU_dI = torch.rand(30, dtype=torch.float64)
    (gradient,) = torch.autograd.grad((dU_dI * strain_invariant(x, pairs)).sum(), x)
    I, G = strain_invariant_and_gradient(state.x, pairs)
    assert torch.equal(I, strain_invariant(state.x, pairs))
    assert relative(strain_force(G, dU_dI, pairs), -gradient) < 1e-12


def test_strain_force_is_zero_for_a_degenerate_neighbourhood():
    x = np.array([[0.0, 0.0], [0.5, 0.0], [1.0, 0.0]])  # collinear: no valid strain anywhere
    pairs = make_pairs([0, 1, 0], [1, 2, 2], np.zeros((3, 2)), bonds=([0, 1], [1, 2], x[[0, 1]] - x[[1, 2]]))
    I, G = strain_invariant_and_gradient(torch.as_tensor(1.1 * x), pairs)
    assert (I == 0).all() and (strain_force(G, torch.ones(3, dtype=torch.float64), pairs) == 0).all()


def plain_teacher(teacher, x, v, pairs):
    """The teacher as docs/model.md writes it: the message network on every pair, weighted, summed to both ends."""
    r = x[pairs.i] - x[pairs.j] + pairs.shift
    distance = r.norm(dim=-1)
    e, u = r / distance[:, None], (v[pairs.i] - v[pairs.j] + pairs.shift_rate) / teacher.velocity_scale
    features = torch.cat([distance[:, None] / teacher.h, (e * u).sum(-1, keepdim=True), (u * u).sum(-1, keepdim=True),
                          pairs.pair_kind], dim=-1)
    messages = torch.nn.Sequential(*teacher.message)(features) * ((1 - (distance / teacher.h) ** 2) ** 2)[:, None]
    summed = torch.zeros(x.shape[0], messages.shape[1], dtype=x.dtype).index_add(0, pairs.i, messages)
    return torch.nn.Sequential(*teacher.node)(summed.index_add(0, pairs.j, messages)).squeeze(-1)


@pytest.mark.parametrize("recompute", ["never", "always"])
def test_teacher_in_chunks_matches_the_plain_edge_convolution(recompute):
    model, state, pairs, _ = system(3, False, True, 4)
    model.teacher.recompute_activations = recompute
    chunked = model.teacher.raw(state.x, state.v, pairs)
    weights = [model.teacher.message[0].weight, model.teacher.message[-1].bias]
    got = torch.autograd.grad(chunked.sum(), weights)
    plain = plain_teacher(model.teacher, state.x, state.v, pairs)
    want = torch.autograd.grad(plain.sum(), weights)
    assert relative(chunked, plain) < 1e-13
    assert all(relative(a, b) < 1e-12 for a, b in zip(got, want))


def saved_bytes(model, state, pairs) -> int:
    """Bytes autograd keeps for the backward pass of the likelihood (saved-tensor hooks)."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        S_t = model.teacher_entropy(state.x, state.v, pairs)
        S_t1 = model.teacher_entropy(state.x, 0.9 * state.v, pairs)
        model.nll(State(state.x, state.v, S_t), State(state.x, 0.9 * state.v, S_t1), pairs, 0.01)
    return total[0]


def test_recomputation_keeps_far_less_for_backward():
    model, state, pairs, _ = system(1, False, True, 64, n=120)
    model.recompute_activations = model.teacher.recompute_activations = "never"
    stored = saved_bytes(model, state, pairs)
    model.recompute_activations = model.teacher.recompute_activations = "always"
    recomputed = saved_bytes(model, state, pairs)
    assert recomputed < 0.5 * stored, (recomputed, stored)


def test_recomputation_policy():
    model = random_model(0)
    model.set_recompute_activations("always")
    assert model.recompute_activations == model.teacher.recompute_activations == "always"
    with pytest.raises(ValueError, match="recompute_activations must be one of auto, always, never"):
        model.set_recompute_activations("sometimes")
    assert recompute_activations("always", 1) and not recompute_activations("never", 10**9)
    assert not recompute_activations("auto", RECOMPUTE_ABOVE_PAIRS)
    assert recompute_activations("auto", RECOMPUTE_ABOVE_PAIRS + 1)


def test_freed_memory_is_retained_once_per_process_on_glibc():
    applied = retain_freed_memory()
    assert retain_freed_memory() is applied
    try:
        import ctypes

        has_mallopt = hasattr(ctypes.CDLL("libc.so.6"), "mallopt")
    except OSError:
        has_mallopt = False
    assert applied == has_mallopt


def test_first_layer_backward_differentiates_twice_as_forces_need():
    torch.manual_seed(2)
    net = mlp(2, (6,), 1).double()
    x = torch.randn(9, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x: net(x), (x,))
    (force,) = torch.autograd.grad(net(x).sum(), x, create_graph=True)
    (want,) = torch.autograd.grad(force.pow(2).sum(), net[0].weight)
    plain = torch.nn.Sequential(*net)  # torch's own Linear backward
    (force,) = torch.autograd.grad(plain(x).sum(), x, create_graph=True)
    (got,) = torch.autograd.grad(force.pow(2).sum(), net[0].weight)
    assert torch.allclose(got, want, rtol=1e-13, atol=0)


def test_tangent_mlp_refuses_a_second_derivative_instead_of_getting_it_wrong():
    net = mlp(2, (4,), 3).double()
    h = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    _, tangent = net.with_tangent(h, torch.ones_like(h))
    with pytest.raises(RuntimeError, match="differentiate twice"):
        torch.autograd.grad(tangent.sum(), h, create_graph=True)


@pytest.mark.parametrize("solid", [True, False])
def test_three_dimensions_match_the_reference(solid):
    rng = np.random.default_rng(3)
    x_ref = rng.uniform(0, 2.2, size=(30, 3))
    x = x_ref + 0.05 * rng.normal(size=x_ref.shape)
    i, j = np.triu_indices(30, k=1)
    near = np.linalg.norm(x[i] - x[j], axis=1) < 1.0
    bonded = np.linalg.norm(x_ref[i] - x_ref[j], axis=1) < 1.0
    pairs = make_pairs(i[near], j[near], np.zeros((near.sum(), 3)),
                       bonds=(i[bonded], j[bonded], x_ref[i[bonded]] - x_ref[j[bonded]]), dim=3)
    model = random_model(5, dim=3, n_species=1, solid=solid, bath=True)
    model.pair_chunk = 16
    state = State(torch.as_tensor(x), torch.as_tensor(rng.normal(size=(30, 3))), torch.as_tensor(rng.normal(size=30)))
    fused = model.drift_and_noise(state, pairs, torch.Generator().manual_seed(2))
    reference = (*model.drift(state, pairs), *model.noise(state, pairs, torch.Generator().manual_seed(2)))
    for a, b in zip(fused, reference):
        assert relative(a, b) < 1e-12
    M = model.fused_moments(state, pairs)[2]
    assert relative(M, model.marginal_covariance(state, pairs, 1.0) / (2 * model.k_B.detach())) < 1e-12


def test_chunks_are_cache_sized_on_cpu_and_large_on_an_accelerator():
    from mpd.model.layers import chunk_rows

    assert chunk_rows(8192, torch.device("cpu")) == 8192
    assert chunk_rows(8192, torch.device("cuda")) == 1 << 20


def _has_cxx() -> bool:
    import shutil

    return shutil.which("g++") is not None or shutil.which("c++") is not None


@pytest.mark.skipif(not _has_cxx(), reason="torch.compile on CPU needs a C++ compiler (g++)")
def test_compiled_pair_chunks_give_the_same_likelihood_and_gradients():
    model, state, pairs, flow = system(2, True, True, 9)
    loss, grads = likelihood_gradients(model, state, pairs, flow, fused=True)
    model.compile_pairs()
    try:
        compiled_loss, compiled_grads = likelihood_gradients(model, state, pairs, flow, fused=True)
        from mpd.model import compiled

        assert all(f.proven for f in compiled._compiled[model].values()), "compiled, not fallen back"
    finally:
        model.compile_pairs(False)
    assert abs(float(compiled_loss - loss)) <= 1e-12 * abs(float(loss))
    for got, want in zip(compiled_grads, grads):
        if want is not None:
            assert torch.allclose(got, want, rtol=1e-9, atol=1e-13)


def test_a_failed_compilation_warns_and_runs_uncompiled(monkeypatch, caplog):
    from mpd.model import compiled

    def broken(function, **kwargs):
        def call(*args):
            raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")
        return call

    monkeypatch.setattr(compiled.torch, "compile", broken)
    model, state, pairs, flow = system(3, False, True, 7)
    loss, _ = likelihood_gradients(model, state, pairs, flow, fused=True)
    model.compile_pairs()
    import torch._inductor.config as inductor_config

    assert inductor_config.compile_threads == torch.get_num_threads()  # no more compile workers than threads
    with caplog.at_level("WARNING"):
        fallback_loss, _ = likelihood_gradients(model, state, pairs, flow, fused=True)
    model.compile_pairs(False)
    assert float(fallback_loss) == float(loss)
    assert "torch.compile of MetriplecticModel.pair_chunk failed (RuntimeError: InvalidCxxCompiler" in caplog.text
