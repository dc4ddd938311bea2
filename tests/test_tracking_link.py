"""Linking under shear, drift subtraction that keeps the shear, stubs, auto search range, trajectory filters."""
import numpy as np
import pandas as pd
import pytest
import trackpy

from tracking.accuracy import link_accuracy
from tracking.link import (
    AffineVelocityPredict,
    LinkingError,
    auto_search_range_px,
    compute_drift,
    filter_stubs,
    filter_trajectories,
    link_features,
    subtract_drift,
)
from tracking.motion import add_velocities
from tracking.params import LinkParams, ParameterError, TrackingParams, TrajectoryFilterParams, from_config
from tracking.pipeline import remove_drift

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


def test_search_range_in_pixels_ignores_the_pixel_size():
    features = sheared_particles(n_frames=3, shear_per_frame=0.0, drift=(2.0, 0.0), jitter=0.0)
    # 2 px steps: a 3 px search range links them, whatever µm a pixel is.
    linked, record = link_features(features, LinkParams(search_range_px=3.0), pixel_size_um=0.01)
    assert record["search_range_px"] == 3.0
    assert linked["particle"].nunique() == features["truth"].nunique()
    with pytest.raises(ParameterError, match="search_range_um and tracking.link.search_range_px are both set"):
        from_config({"link": {"search_range_um": "auto", "search_range_px": 3}})
    with pytest.raises(ParameterError, match="both set"):
        from_config({"link": {"search_range_um": 1.0, "search_range_px": 3}})


def test_mean_drift_is_trackpys_compute_drift():
    truth = sheared_particles(shear_per_frame=0.0, drift=(1.5, -0.5), jitter=0.3).rename(columns={"truth": "particle"})
    truth = truth.sample(frac=0.9, random_state=0)  # particles missing here and there
    for smoothing in (0, 4):
        theirs = trackpy.compute_drift(truth, smoothing)
        mine = compute_drift(truth, np.arange(20), method="mean", smoothing=smoothing)
        assert mine.loc[0].tolist() == [0.0, 0.0]
        np.testing.assert_allclose(mine.loc[1:, ["x", "y"]], theirs[["x", "y"]], rtol=0, atol=1e-12)
    # The median is a different estimator: the noisy steps make them differ.
    median = compute_drift(truth, np.arange(20), method="median")
    assert not np.allclose(median.to_numpy(), compute_drift(truth, np.arange(20), method="mean").to_numpy())


def test_mean_drift_over_a_frame_step():
    # frame_range step 2: analysed frames 0, 2, 4, ...; trackpy alone finds no 1-frame step.
    truth = sheared_particles(shear_per_frame=0.0, drift=(1.5, -0.5), jitter=0.0).rename(columns={"truth": "particle"})
    every_other = truth[truth["frame"] % 2 == 0]
    drift = compute_drift(every_other, np.arange(0, 20, 2), method="mean")
    np.testing.assert_allclose(drift["x"], 1.5 * np.arange(0, 20, 2), atol=1e-9)
    assert trackpy.compute_drift(every_other).empty


def test_drift_from_filtered_or_all_trajectories():
    # Kept trajectories drift by +1 px per frame; the filtered-out ones by +5.
    frames = np.arange(6)
    kept = pd.DataFrame({"frame": np.tile(frames, 3), "particle": np.repeat([0, 1, 2], 6)})
    kept["x_px"] = kept["particle"] * 20.0 + kept["frame"]
    dropped = pd.DataFrame({"frame": np.tile(frames, 3), "particle": np.repeat([3, 4, 5], 6)})
    dropped["x_px"] = dropped["particle"] * 20.0 + 5 * dropped["frame"]
    every = pd.concat([kept, dropped], ignore_index=True).assign(y_px=0.0)
    kept = kept.assign(y_px=0.0, x=kept["x_px"] * 0.5, y=0.0)
    for source, step in (("filtered", 1.0), ("all", 3.0)):  # the mean of 1 and 5
        params = TrackingParams(link=LinkParams(drift="mean", drift_from=source))
        corrected, drift = remove_drift(kept, every, params, frames, pixel_size_um=0.5)
        np.testing.assert_allclose(drift["x"], 0.5 * step * frames)
        np.testing.assert_allclose(corrected["x"], kept["x"] - 0.5 * step * kept["frame"])
    assert remove_drift(kept, every, TrackingParams(), frames, 0.5)[1] is None  # drift: none, the default


def test_trajectory_filter_per_trajectory_mean_or_per_observation():
    table = pd.DataFrame({"particle": [0, 0, 0, 1, 1, 1], "frame": [0, 1, 2, 0, 1, 2],
                          "mass": [60.0, 40.0, 70.0, 45.0, 45.0, 55.0], "size": 2.0, "ecc": 0.1})
    # Means: particle 0 56.7, particle 1 48.3.
    by_mean = filter_trajectories(table, TrajectoryFilterParams(min_mass=50))
    assert by_mean["particle"].tolist() == [0, 0, 0]
    by_row = filter_trajectories(table, TrajectoryFilterParams(per="observation", min_mass=50))
    assert by_row["mass"].tolist() == [60.0, 70.0, 55.0]
    # Strict limits, as the walkthrough's (mass > 50): 55 stays, 45 goes, and size 2.0 < 2.0 is false.
    assert filter_trajectories(table, TrajectoryFilterParams(per="observation", max_size=2.0)).empty
    assert filter_trajectories(table, TrajectoryFilterParams()).equals(table)
    with pytest.raises(ParameterError, match="tracking.trajectory_filter.per"):
        from_config({"trajectory_filter": {"per": "frame"}})


def test_old_subtract_drift_key_names_its_replacement():
    with pytest.raises(ParameterError, match="subtract_drift was replaced by tracking.link.drift.*drift: median"):
        from_config({"link": {"subtract_drift": True}})
    with pytest.raises(ParameterError, match="drift_smoothing"):
        from_config({"link": {"drift": "median", "drift_smoothing": 3}})
