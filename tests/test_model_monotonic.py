"""T > 0, P > 0, monotonicity and convexity of the energy networks hold for any weights."""
import numpy as np
import pytest
import torch
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from mpd.model.monotonic import DeviatoricEnergy, MonotoneConvexNet, VolumetricEnergy

# no shrinking: examples are random seeds (a smaller seed explains nothing) and shrinking takes minutes
NO_SHRINK = (Phase.explicit, Phase.generate)
PROPERTY = settings(max_examples=6, deadline=None, database=None, phases=NO_SHRINK)
seeds = st.integers(0, 2**31 - 1)


def scrambled(module: torch.nn.Module, seed: int, scale: float = 2.0) -> torch.nn.Module:
    """The module in float64 with every raw parameter replaced by a wide random draw:
    the guarantees must not depend on the initialisation."""
    torch.manual_seed(seed)
    module = module.double()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn_like(p))
    return module


def gradient_and_hessian(f, a: torch.Tensor, b: torch.Tensor):
    """Gradient (K, 2) and Hessian (K, 2, 2) of the elementwise f(a, b) at K points."""
    a, b = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    value = f(a, b)
    ga, gb = torch.autograd.grad(value.sum(), (a, b), create_graph=True)
    haa, hab = torch.autograd.grad(ga.sum(), (a, b), retain_graph=True)
    hba, hbb = torch.autograd.grad(gb.sum(), (a, b))
    grad = torch.stack([ga, gb], -1).detach()
    hess = torch.stack([torch.stack([haa, hab], -1), torch.stack([hba, hbb], -1)], -2)
    return grad, hess


def assert_psd(hess: torch.Tensor, rtol: float = 1e-10):
    eigenvalues = torch.linalg.eigvalsh(0.5 * (hess + hess.transpose(-1, -2)))
    scale = hess.abs().amax((-2, -1))
    assert (eigenvalues[:, 0] >= -rtol * scale).all(), eigenvalues[:, 0].min()


def random_points(seed: int, k: int = 200):
    g = torch.Generator().manual_seed(seed)
    S = 4 * torch.randn(k, generator=g, dtype=torch.float64)
    V = torch.exp(1.5 * torch.randn(k, generator=g, dtype=torch.float64))  # V > 0, many scales
    I = torch.exp(2 * torch.randn(k, generator=g, dtype=torch.float64)) * (torch.rand(k, generator=g) > 0.1)
    return S, V, I


@PROPERTY
@given(seed=seeds)
def test_volumetric_energy_temperature_pressure_convexity(seed):
    U_vol = scrambled(VolumetricEnergy(hidden=(8, 8)), seed)
    S, V, _ = random_points(seed)
    grad, hess = gradient_and_hessian(U_vol, S, V)
    T, P = grad[:, 0], -grad[:, 1]
    assert (T > 0).all() and (P > 0).all()
    dT_dS = hess[:, 0, 0]
    assert (dT_dS > 0).all()  # heat capacity C = T / (dT/dS) positive and finite
    assert torch.isfinite(T / dT_dS).all()
    assert_psd(hess)  # jointly convex in (S, V)


@PROPERTY
@given(seed=seeds)
def test_deviatoric_energy_monotone_and_convex(seed):
    U_dev = scrambled(DeviatoricEnergy(hidden=(8, 8)), seed)
    S, _, I = random_points(seed)
    grad, hess = gradient_and_hessian(U_dev, S, I)
    assert (grad > 0).all()  # increasing in S and in the strain invariant
    assert_psd(hess)


@PROPERTY
@given(seed=seeds, depth=st.integers(1, 3))
def test_monotone_convex_net_midpoint_convexity_and_monotonicity(seed, depth):
    """Deeper nets and three inputs: check convexity on random segments without derivatives."""
    net = scrambled(MonotoneConvexNet(3, hidden=(6,) * depth), seed)
    g = torch.Generator().manual_seed(seed)
    a = 3 * torch.randn(300, 3, generator=g, dtype=torch.float64)
    b = 3 * torch.randn(300, 3, generator=g, dtype=torch.float64)
    fa, fb, fmid = net(a), net(b), net(0.5 * (a + b))
    assert (fmid <= 0.5 * (fa + fb) + 1e-12 * (fa.abs() + fb.abs())).all()
    step = torch.rand(300, 3, generator=g, dtype=torch.float64)  # componentwise non-negative
    assert (net(a + step) > net(a)).all()


def test_checks_catch_a_non_convex_decreasing_function():
    """The checks above can fail: they reject -g (concave, decreasing)."""
    U_vol = scrambled(VolumetricEnergy(hidden=(8, 8)), 0)
    S, V, _ = random_points(0)
    grad, hess = gradient_and_hessian(lambda s, v: -U_vol(s, v), S, V)
    assert not (grad[:, 0] > 0).all()
    with pytest.raises(AssertionError):
        assert_psd(hess)


def test_float32_properties_hold_at_large_arguments():
    """The algebraic floor keeps dT/dS > 0 where softplus curvature underflows in float32."""
    U_vol = scrambled(VolumetricEnergy(hidden=(8, 8)), 3).float()
    S = torch.tensor(np.linspace(-50, 50, 101), dtype=torch.float32)
    V = torch.ones_like(S)
    S.requires_grad_(True)
    T = torch.autograd.grad(U_vol(S, V).sum(), S, create_graph=True)[0]
    dT_dS = torch.autograd.grad(T.sum(), S)[0]
    assert (T > 0).all() and (dT_dS > 0).all()
