"""Linking under shear, drift subtraction that keeps the shear, stubs, auto search range."""
import numpy as np
import pandas as pd
import pytest

from tracking.accuracy import link_accuracy
from tracking.link import (
    AffineVelocityPredict,
    LinkingError,
    auto_search_range_px,
    compute_drift,
    filter_stubs,
    link_features,
    subtract_drift,
)
from tracking.motion import add_velocities
from tracking.params import LinkParams

FPS = 10.0


def sheared_particles(n_frames=20, shear_per_frame=0.02, y_zero=-60.0, drift=(0.7, -0.4), jitter=0.1,
                      spacing=12.0, seed=0):
    """Particles on a jittered lattice in simple shear vx = rate (y - y_zero), plus a uniform drift.

    The zero-velocity line y_zero lies outside the field (an off-centre
    field of view), so the mean flow is not zero. Positions in px.
    """
    rng = np.random.default_rng(seed)
    gx, gy = np.meshgrid(np.arange(10, 390, spacing), np.arange(10, 190, spacing))
    x = gx.ravel() + rng.uniform(-2, 2, gx.size)
    y = gy.ravel() + rng.uniform(-2, 2, gx.size)
    rows = []
    for frame in range(n_frames):
        rows.append(pd.DataFrame({"frame": frame, "truth": np.arange(x.size), "x": x.copy(), "y": y.copy()}))
        x = x + shear_per_frame * (y - y_zero) + drift[0] + rng.normal(0, jitter, x.size)
        y = y + drift[1] + rng.normal(0, jitter, x.size)
    return pd.concat(rows, ignore_index=True)


def shear_rate(table):
    """Mean over frames of the least-squares slope of vx against y (1/s)."""
    return np.mean([np.polyfit(frame["y"], frame["vx"], 1)[0] for _, frame in table.groupby("frame")])


def test_drift_subtraction_keeps_the_imposed_shear():
    rate_per_frame = 0.02
    truth = sheared_particles(shear_per_frame=rate_per_frame).rename(columns={"truth": "particle"})
    before = add_velocities(truth, FPS)
    drift = compute_drift(truth, np.arange(20))
    after = add_velocities(subtract_drift(truth, drift), FPS)
    # The uniform part is gone...
    assert abs(after["vx"].median()) < 0.05 * abs(before["vx"].median())
    assert abs(after["vy"].median()) < 0.1
    # ...and the gradient is not: same shear rate, equal to the imposed one.
    assert shear_rate(after) == pytest.approx(shear_rate(before), rel=1e-9, abs=1e-9)
    assert shear_rate(after) == pytest.approx(rate_per_frame * FPS, rel=0.02)


def test_drift_is_the_median_displacement_accumulated():
    truth = sheared_particles(shear_per_frame=0.0, drift=(1.5, -0.5), jitter=0.05)
    truth = truth.rename(columns={"truth": "particle"})
    drift = compute_drift(truth, np.arange(20))
    np.testing.assert_allclose(drift["x"].to_numpy(), 1.5 * np.arange(20), atol=0.05)
    np.testing.assert_allclose(drift["y"].to_numpy(), -0.5 * np.arange(20), atol=0.05)
    assert drift.loc[0].tolist() == [0.0, 0.0]


def test_drift_ignores_steps_across_gaps():
    table = pd.DataFrame({"particle": [1, 1, 2, 2], "frame": [0, 2, 0, 1], "x": [0.0, 50.0, 0.0, 1.0],
                          "y": 0.0})
    drift = compute_drift(table, np.array([0, 1, 2]))
    # Only particle 2's step 0 -> 1 counts; 1's jump over the missing frame 1 does not.
    assert drift["x"].tolist() == [0.0, 1.0, 1.0]


@pytest.mark.parametrize("predictor", ["affine", "nearest_velocity"])
def test_predictor_links_a_shear_faster_than_the_search_range(predictor):
    # Zero-velocity line at y = 70 in view; edge particles move 0.05 * 120 = 6 px
    # per frame, twice the 3 px search range (half the 12 px spacing).
    features = sheared_particles(shear_per_frame=0.05, y_zero=70.0, drift=(0.3, 0.0), jitter=0.15)
    params = LinkParams(search_range_um=3.0, predictor=predictor)
    linked, record = link_features(features, params, pixel_size_um=1.0)
    correct, links = link_accuracy(linked, linked["truth"].to_numpy())
    n_true_links = len(features) - features["truth"].nunique()
    assert links >= 0.99 * n_true_links
    assert correct / links >= 0.99
    assert record["bootstrap_velocity_field_px_per_frame"] is not None

    plain, _ = link_features(features, LinkParams(search_range_um=3.0), pixel_size_um=1.0)
    plain_correct, _ = link_accuracy(plain, plain["truth"].to_numpy())
    assert plain_correct < 0.7 * n_true_links  # what the predictor is for


def test_affine_fit_recovers_a_velocity_gradient_despite_mislinks():
    rng = np.random.default_rng(1)
    positions = rng.uniform(0, 100, (200, 2))  # columns (y, x), trackpy's order
    # Simple shear plus drift: vx = 0.5 + 0.03 (y - 20), vy = -0.2.
    velocities = np.column_stack([np.full(200, -0.2), 0.5 + 0.03 * (positions[:, 0] - 20)])
    velocities[:5] += 40  # a few mislinks must not tilt the field
    coefficients, centre = AffineVelocityPredict.fit(positions, velocities)
    predictor = AffineVelocityPredict(coefficients, centre)
    probe = np.array([[20.0, 0.0], [80.0, 50.0]])
    np.testing.assert_allclose(predictor.velocity(probe), [[-0.2, 0.5], [-0.2, 0.5 + 0.03 * 60]], atol=1e-9)


def test_filter_stubs_and_auto_search_range():
    table = pd.DataFrame({"particle": [1, 1, 1, 2, 2, 3], "frame": [0, 1, 2, 0, 1, 0]})
    assert set(filter_stubs(table, 2)["particle"]) == {1, 2}
    assert set(filter_stubs(table, 3)["particle"]) == {1}

    grid = np.stack(np.meshgrid(np.arange(0, 100, 8.0), np.arange(0, 100, 8.0)), -1).reshape(-1, 2)
    features = pd.DataFrame({"frame": 0, "x": grid[:, 0], "y": grid[:, 1]})
    choice = auto_search_range_px(features)
    assert choice["search_range_px"] == pytest.approx(4.0)


def test_crowded_linking_error_names_the_key():
    rng = np.random.default_rng(2)
    features = pd.concat([pd.DataFrame({"frame": f, "x": rng.uniform(0, 30, 300), "y": rng.uniform(0, 30, 300)})
                          for f in range(2)], ignore_index=True)
    with pytest.raises(LinkingError, match="link.search_range_um"):
        link_features(features, LinkParams(search_range_um=15.0), pixel_size_um=1.0)
