"""The paper's baselines (mpd.baselines): Groot–Warren DPD conserves momentum, obeys fluctuation-dissipation and is
recovered by its own calibration; GNS and GNS-SDE train, roll out, and are translation invariant, periodic,
seeded and round-trip through their file."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mpd.baselines.dpd import DPDParams, calibrate_dpd, dpd_forces, kinetic_temperature, rollout_dpd
from mpd.baselines.gns import GNSParams, load_gns, predict_acceleration, rollout_gns, save_gns, train_gns
from mpd.baselines.periodic import minimum_image, unwrap, wrap

GW = DPDParams(a=25.0, gamma=4.5, kT=1.0, rc=1.0, substeps=5)
TINY_GNS = {"latent": 16, "mlp_layers": 2, "message_steps": 2, "steps": 40, "batch": 4, "lr": 3e-3}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def dpd_block(dim, n, params, dt, frames, seed=0, equilibrate=30):
    """A DPD trajectory at density 3 (rc = 1): (positions, velocities, box)."""
    rng = np.random.default_rng(seed)
    box = np.full(dim, (n / 3.0) ** (1.0 / dim))
    x0 = rng.uniform(0.0, box, (n, dim))
    v0 = rng.normal(0.0, np.sqrt(params.kT / params.mass), (n, dim))
    xs, vs = rollout_dpd(params, x0, v0, box, dt, equilibrate, seed=seed + 1)
    xs, vs = rollout_dpd(params, xs[-1], vs[-1], box, dt, frames, seed=seed + 2)
    return xs, vs, box


# ---------------------------------------------------------------- DPD


@pytest.mark.parametrize("dim, n", [(2, 40), (3, 60)])
def test_dpd_conserves_total_momentum(dim, n):
    rng = np.random.default_rng(1)
    box = np.full(dim, (n / 3.0) ** (1.0 / dim))
    params = DPDParams(a=25.0, gamma=4.5, kT=1.0, rc=1.0, mass=2.0, substeps=4)
    v0 = rng.normal(size=(n, dim)) + 0.3  # a net drift, which must stay as it is
    _, vs = rollout_dpd(params, rng.uniform(0, box, (n, dim)), v0, box, 0.1, 20, seed=3)
    p0 = params.mass * v0.sum(axis=0)
    scale = params.mass * np.abs(vs).sum(axis=(1, 2))  # sum of |p| per frame
    drift = np.abs(params.mass * vs.sum(axis=1) - p0).max(axis=1)
    assert np.all(drift / scale < 1e-12)


def test_dpd_forces_are_antisymmetric():
    box = np.array([5.0, 6.0, 7.0])
    x = np.array([[0.2, 3.0, 6.9], [4.6, 3.3, 0.3]])  # a pair across two periodic edges, r < rc
    v = np.array([[0.5, -1.0, 0.2], [-0.3, 0.4, 1.0]])
    parts = dpd_forces(x, v, box, GW, dt_int=0.01, rng=np.random.default_rng(0), components=True)
    for name in ("conservative", "dissipative", "random", "total"):
        np.testing.assert_array_equal(parts[name][0], -parts[name][1])
        assert np.abs(parts[name][0]).sum() > 0, name
    # the pair force is along the minimum-image separation, repulsive for a > 0
    d = minimum_image(x[0] - x[1], box)
    assert np.allclose(np.cross(parts["total"][0], d), 0.0, atol=1e-12)
    assert parts["conservative"][0] @ d > 0
    # many particles: the forces add to zero up to round-off
    rng = np.random.default_rng(2)
    many = rng.uniform(0, box, (60, 3))
    f = dpd_forces(many, rng.normal(size=(60, 3)), box, GW, dt_int=0.01, rng=rng)
    assert np.abs(f.sum(axis=0)).max() < 1e-12 * np.abs(f).sum()


def test_dpd_thermostat_relaxes_to_kT_without_repulsion():
    # a = 0: an ideal gas coupled only through the pair thermostat; from rest it must heat to kT (FDT)
    params = DPDParams(a=0.0, gamma=4.5, kT=1.5, rc=1.0, substeps=4)
    rng = np.random.default_rng(4)
    n, dim = 60, 2
    box = np.full(dim, np.sqrt(n / 3.0))
    _, vs = rollout_dpd(params, rng.uniform(0, box, (n, dim)), np.zeros((n, dim)), box, 0.1, 150, seed=5)
    # 100 frames x 59 x 2 degrees of freedom, correlated over ~1 time unit: a few % statistical error
    assert kinetic_temperature(vs[50:]) == pytest.approx(params.kT, rel=0.06)
    assert kinetic_temperature(vs[:3]) < 0.8 * params.kT  # it did start cold


def test_dpd_calibration_recovers_its_own_parameters():
    xs, vs, box = dpd_block(3, 60, DPDParams(a=25.0, gamma=4.5, kT=1.0, rc=1.0, substeps=10), 0.2, 200)
    params, report = calibrate_dpd(wrap(xs, box), vs, box, 0.2, budget=12, seed=0)
    # kT is the equipartition estimate itself, exactly
    dv = vs - vs.mean(axis=1, keepdims=True)
    assert params.kT == pytest.approx(np.sum(dv**2) / (200 * 3 * 59), rel=1e-12)
    # ... which is the true kT up to the integrator's finite-step heating (~1 % at dt_int = 0.02) and sampling
    assert params.kT == pytest.approx(1.0, rel=0.05)
    assert params.rc == pytest.approx(1.0, rel=1e-9)  # n rc^3 = 3
    # a from the configurational temperature: ~5 % sampling error on 200 frames of 60 particles
    assert params.a == pytest.approx(25.0, rel=0.15)
    # gamma from the velocity autocorrelation at one lag, 32 start frames: 3.7-4.4 on three such blocks
    assert params.gamma == pytest.approx(4.5, rel=0.35)
    assert len(report["gamma_search"]) == 12 and report["evaluations"] == 12
    assert np.isfinite(report["vacf_objective"]) and np.isfinite(report["rdf_objective"])


def test_dpd_calibration_rdf_search_moves_toward_the_truth():
    xs, vs, box = dpd_block(2, 40, GW, 0.2, 80, seed=7)
    params, report = calibrate_dpd(xs, vs, box, 0.2, budget=6, a_method="rdf", starts=6, relax=10)
    assert len(report["a_search"]) >= 2 and report["evaluations"] <= 6
    best = min(report["a_search"], key=lambda e: e["objective"])
    assert params.a == best["a"]
    # over the whole bracket [0.5, 500] the search lands within a factor of 3 of a = 25
    assert 25.0 / 3 < params.a < 25.0 * 3


def test_dpd_rejects_a_box_too_small_for_rc():
    xs, vs, box = dpd_block(2, 40, GW, 0.2, 12)
    with pytest.raises(ValueError, match="half the smallest box"):
        calibrate_dpd(xs, vs, box, 0.2, rc=0.6 * box[0])


# ---------------------------------------------------------------- GNS


@pytest.fixture(scope="module")
def block():
    """A deterministic (gamma = 0) 2D DPD block: accelerations are a function of the positions, so learnable."""
    params = DPDParams(a=25.0, gamma=0.0, kT=1.0, rc=1.0, substeps=5)
    return dpd_block(2, 30, params, 0.05, 40, seed=11, equilibrate=5) + (0.05,)


@pytest.fixture(scope="module")
def models(block):
    xs, vs, box, dt = block
    torch.set_num_threads(1)
    return {stochastic: train_gns(xs, vs, box, dt, GNSParams(stochastic=stochastic, **TINY_GNS))
            for stochastic in (False, True)}


@pytest.mark.parametrize("stochastic", [False, True])
def test_gns_trains_and_rolls_out(block, models, stochastic):
    xs, _, box, dt = block
    model, log = models[stochastic]
    loss = np.asarray(log["loss"])
    assert len(loss) == TINY_GNS["steps"] and np.all(np.isfinite(loss))
    assert loss[-10:].mean() < loss[:10].mean()
    pos, vel = rollout_gns(model, xs[:6], box, dt, 12, seed=0)
    assert pos.shape == vel.shape == (12, 30, 2)
    assert np.all(np.isfinite(pos)) and np.all(np.isfinite(vel))
    # semi-implicit Euler: every step is v_{t+1} dt
    steps = np.diff(np.concatenate([xs[5:6], pos]), axis=0)
    np.testing.assert_allclose(steps, vel * dt, atol=1e-12)


@pytest.mark.parametrize("stochastic", [False, True])
def test_gns_rollout_is_translation_invariant_and_periodic(block, models, stochastic):
    xs, _, box, dt = block
    model, _ = models[stochastic]
    hist = unwrap(xs[:6], box)
    ref, vref = rollout_gns(model, hist, box, dt, 8, seed=3)
    shift = np.array([0.37 * box[0], -1.9 * box[1]])
    moved, vmoved = rollout_gns(model, hist + shift, box, dt, 8, seed=3)
    np.testing.assert_allclose(moved - shift, ref, atol=1e-6)
    np.testing.assert_allclose(vmoved, vref, atol=1e-5)
    wrapped, vwrapped = rollout_gns(model, wrap(hist, box), box, dt, 8, seed=3)
    np.testing.assert_allclose(minimum_image(wrapped - ref, box), 0.0, atol=1e-6)
    np.testing.assert_allclose(vwrapped, vref, atol=1e-5)


def test_gns_save_load_round_trip(block, models, tmp_path):
    xs, _, box, dt = block
    for stochastic, (model, _) in models.items():
        path = tmp_path / f"gns_{stochastic}.pt"
        save_gns(model, path)
        assert torch.load(path, weights_only=True)["params"]["stochastic"] is stochastic
        loaded = load_gns(path)
        for a, b in zip(rollout_gns(model, xs[:6], box, dt, 6, seed=2), rollout_gns(loaded, xs[:6], box, dt, 6, seed=2),
                        strict=True):
            np.testing.assert_array_equal(a, b)


def test_gns_sde_variance_is_positive(block, models):
    xs, _, box, dt = block
    model, _ = models[True]
    for t in (5, 20, 39):
        mu, var = predict_acceleration(model, xs[t - 5:t + 1], box, dt)
        assert np.all(np.isfinite(mu)) and np.all(np.isfinite(var)) and np.all(var > 0)
    assert predict_acceleration(models[False][0], xs[:6], box, dt)[1] is None


def test_gns_is_deterministic_given_the_seed(block, models):
    xs, vs, box, dt = block
    model, log = models[False]
    again, log_again = train_gns(xs, vs, box, dt, GNSParams(stochastic=False, **TINY_GNS))
    assert log_again["loss"] == log["loss"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    a = rollout_gns(model, xs[:6], box, dt, 5)[0]
    np.testing.assert_array_equal(a, rollout_gns(again, xs[:6], box, dt, 5)[0])
    # the stochastic rollout is fixed by its seed, and changes with it
    sde = models[True][0]
    one = rollout_gns(sde, xs[:6], box, dt, 5, seed=1)[0]
    np.testing.assert_array_equal(one, rollout_gns(sde, xs[:6], box, dt, 5, seed=1)[0])
    assert not np.array_equal(one, rollout_gns(sde, xs[:6], box, dt, 5, seed=2)[0])


def test_gns_sde_in_3d():
    xs, vs, box = dpd_block(3, 40, DPDParams(a=25.0, gamma=0.0, kT=1.0, rc=1.0, substeps=5), 0.05, 12, equilibrate=2)
    params = GNSParams(stochastic=True, **{**TINY_GNS, "steps": 3})
    model, log = train_gns(xs, vs, box, 0.05, params)
    assert log["radius"] == pytest.approx(1.5 * (np.prod(box) / 40) ** (1 / 3))
    pos, vel = rollout_gns(model, xs[-6:], box, 0.05, 4, seed=0)
    assert pos.shape == vel.shape == (4, 40, 3) and np.all(np.isfinite(pos))
