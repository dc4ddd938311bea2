"""The calibration search and the statistics it matches (mpd.calibration)."""
import math

import numpy as np
import pytest
import torch

from mpd.calibration import CalibrationError, block_velocities, memory_lags, normalised_vacf, secant_scale


class Dial:
    """A scalar set by `assign`, with a ratio that is a known function of it; counts the measurements."""

    def __init__(self, ratio_of):
        self.value, self.ratio_of, self.calls = None, ratio_of, 0

    def assign(self, value):
        self.value = value

    def measure(self):
        self.calls += 1
        return self.ratio_of(self.value)


@pytest.mark.parametrize("power, exponent", [(1.0, 1.0), (0.4, 1.0), (-0.2, -0.3), (-0.8, -0.3)])
def test_secant_finds_the_scale_where_the_ratio_is_one(power, exponent):
    """ratio = (v / v*)^power: found to the tolerance however far the first guess of the response is."""
    target = 1.7
    dial = Dial(lambda v: (v / target) ** power)
    history, gave_up = secant_scale(dial.assign, dial.measure, 1.0, (0.25, 4.0), exponent, iterations=8,
                                    tolerance=0.01)
    assert gave_up is None and dial.calls == len(history) <= 8
    assert abs(math.log(dial.measure())) < 0.01 and dial.value == pytest.approx(target, rel=0.05)


def test_secant_stays_within_its_bounds_and_keeps_the_best_point():
    dial = Dial(lambda v: v / 10.0)  # the root lies at 10, beyond the bound 2
    history, _ = secant_scale(dial.assign, dial.measure, 1.0, (0.5, 2.0), 1.0)
    assert max(h["value"] for h in history) == 2.0 and dial.value == 2.0
    assert dial.calls == 2  # pinned at the bound: measured once, not again


def test_secant_backs_off_from_a_failed_measurement_and_raises_on_a_failed_start():
    dial = Dial(lambda v: math.nan if v > 2.5 else (v / 2.0) ** -0.5)  # root at 2, diverges beyond 2.5
    history, _ = secant_scale(dial.assign, dial.measure, 1.0, (0.25, 4.0), -0.3, iterations=8, tolerance=0.01)
    assert any(h["ratio"] is None for h in history)  # the first step overshot into the failing side
    assert dial.value == pytest.approx(2.0, rel=0.05) and dial.value <= 2.5
    failing = Dial(lambda v: math.inf)
    with pytest.raises(CalibrationError, match="starting"):
        secant_scale(failing.assign, failing.measure, 1.0, (0.5, 2.0))
    assert failing.value == 1.0


def test_secant_gives_up_on_a_ratio_that_does_not_respond():
    dial = Dial(lambda v: 1.5 * v ** 0.05)
    history, gave_up = secant_scale(dial.assign, dial.measure, 1.0, (0.5, 2.0), 1.0, min_response=0.2)
    assert gave_up is not None and gave_up["response"] == pytest.approx(0.05, abs=1e-6)
    assert len(history) == 2 and dial.value == 1.0  # left as it was


def test_normalised_vacf_and_the_memory_time_of_a_damped_oscillation():
    """An underdamped Ornstein-Uhlenbeck velocity: C(k) = exp(-k/tau) cos(w k), first zero at pi / (2 w)."""
    rng = np.random.default_rng(0)
    tau, w, n_frames, n = 6.0, math.pi / 9, 4000, 64  # C crosses zero at lag 4.5
    a, b = math.exp(-1 / tau) * math.cos(w), math.exp(-1 / tau) * math.sin(w)
    v = np.zeros((n_frames, n, 2))  # a 2D rotation-decay process: each particle's (vx, vy)
    v[0] = rng.normal(size=(n, 2))
    noise = math.sqrt(1 - a * a - b * b)
    for t in range(1, n_frames):
        v[t, :, 0] = a * v[t - 1, :, 0] - b * v[t - 1, :, 1] + noise * rng.normal(size=n)
        v[t, :, 1] = b * v[t - 1, :, 0] + a * v[t - 1, :, 1] + noise * rng.normal(size=n)
    c = normalised_vacf(v, 12)
    expected = np.exp(-np.arange(13) / tau) * np.cos(w * np.arange(13))
    assert c[0] == 1.0 and np.abs(c - expected).max() < 0.02
    assert memory_lags(c, 12) == 5 and memory_lags(c, 3) == 3  # capped
    assert memory_lags(np.exp(-np.arange(8) / 2.0), 20) == 7  # no zero: the longest lag there is
    with pytest.raises(ValueError, match="zero"):
        normalised_vacf(np.zeros((3, 2, 3)), 2)


def test_block_velocities_follow_particles_through_the_longest_consecutive_run():
    """Items in any order, particles shuffled within frames, a gap: rows come back matched by particle id."""
    frames = [0, 1, 2, 5, 6, 7, 8]
    rng = np.random.default_rng(1)
    items = []
    for f in frames:
        ids = rng.permutation(4)
        items.append({"frame": torch.tensor(f), "particle": torch.as_tensor(ids),
                      "v0": torch.as_tensor(np.stack([ids * 10.0 + f, ids * 0.0, ids * 0.0], 1), dtype=torch.float32)})
    shuffled = [items[k] for k in rng.permutation(len(items))]
    v = block_velocities(shuffled)
    assert v.shape == (4, 4, 3)  # frames 5..8, the longer run
    assert np.array_equal(v[:, :, 0], np.array([[10.0 * p + f for p in range(4)] for f in (5, 6, 7, 8)]))


def test_the_mobility_scale_multiplies_M_exactly_and_old_models_load_with_scale_one():
    """M -> s M: friction and noise together, so the fluctuation-dissipation ratio is untouched."""
    from test_model_support import random_model, random_system

    model = random_model(3)
    state, pairs = random_system(3)
    before = model.pair_mobility(state, pairs)
    f_v0, _ = model.drift(state, pairs, thermal=False)
    model.amplitudes.mobility_scale.fill_(2.5)
    after = model.pair_mobility(state, pairs)
    assert torch.allclose(after, 2.5 * before, rtol=1e-12, atol=1e-15)
    # the friction (M dS/dx) scales with M; the conservative force does not: the drift changes, and by
    # exactly 1.5 times the friction part
    f_v1, _ = model.drift(state, pairs, thermal=False)
    model.amplitudes.mobility_scale.fill_(0.0)  # no M at all: the conservative force alone
    conservative, _ = model.drift(state, pairs, thermal=False)
    assert torch.allclose(f_v1 - conservative, 2.5 * (f_v0 - conservative), rtol=1e-9, atol=1e-12)
    state_dict = {k: v for k, v in model.state_dict().items() if not k.endswith("mobility_scale")}
    fresh = random_model(4)
    fresh.amplitudes.mobility_scale.fill_(7.0)
    fresh.load_state_dict(state_dict)  # a model.pt from before the scale existed
    assert float(fresh.amplitudes.mobility_scale) == 1.0
