"""Velocities by finite differences: exact where they should be, never across a gap."""
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracking.motion import add_velocities, finite_differences, run_ids, velocities
from tracking.params import VelocityParams

FPS = 8.0


def track(frames, x, y=None, particle=0):
    frames = np.asarray(frames)
    return pd.DataFrame({"frame": frames, "particle": particle, "x": np.asarray(x, float),
                         "y": np.zeros(len(frames)) if y is None else np.asarray(y, float)})


def test_linear_track_is_exact_everywhere_including_ends():
    frames = np.arange(10)
    t = frames / FPS
    out = add_velocities(track(frames, 3.0 - 1.5 * t, 0.25 * t), FPS)
    np.testing.assert_allclose(out["vx"], -1.5)
    np.testing.assert_allclose(out["vy"], 0.25)


def test_quadratic_track_central_inside_one_sided_at_ends():
    frames = np.arange(7)
    t = frames / FPS
    a, b, c = 0.7, -2.0, 5.0
    out = add_velocities(track(frames, a * t**2 + b * t + c), FPS)
    exact = 2 * a * t + b
    # Central differences are exact for a quadratic at every interior point.
    np.testing.assert_allclose(out["vx"].to_numpy()[1:-1], exact[1:-1], rtol=0, atol=1e-12)
    # The ends are one-sided: forward and backward differences.
    x = a * t**2 + b * t + c
    assert out["vx"].iloc[0] == pytest.approx((x[1] - x[0]) * FPS)
    assert out["vx"].iloc[-1] == pytest.approx((x[-1] - x[-2]) * FPS)


def test_gap_splits_the_stencil():
    # Frame 5 is missing (e.g. bridged by linking memory) and the particle
    # jumped by 100 during the gap: no velocity may see the jump.
    frames = np.array([0, 1, 2, 3, 4, 6, 7, 8])
    x = np.where(frames < 5, 2.0 * frames, 100 + 2.0 * frames)
    out = add_velocities(track(frames, x), FPS)
    np.testing.assert_allclose(out["vx"], 2.0 * FPS)


def test_lone_observation_has_no_velocity_and_particles_are_separate():
    a = track([0, 1, 2], [0.0, 1.0, 2.0], particle=1)
    b = track([2, 3], [50.0, 50.5], particle=2)
    lone = track([5], [7.0], particle=3)
    out = add_velocities(pd.concat([b, lone, a]), FPS)
    v = out.set_index(["particle", "frame"])["vx"]
    assert v.loc[(1, 0)] == pytest.approx(FPS)
    assert v.loc[(2, 2)] == pytest.approx(0.5 * FPS)
    assert v.loc[(2, 3)] == pytest.approx(0.5 * FPS)
    assert np.isnan(v.loc[(3, 5)])


def test_frame_step_sets_the_time_step_and_what_a_gap_is():
    frames = np.array([0, 2, 4, 6, 10, 12])  # analysed every 2nd frame; 8 is missing
    x = frames.astype(float) ** 2
    out = add_velocities(track(frames, x), FPS, frame_step=2)
    t = frames / FPS
    # Interior of the first run: central difference over 2 * (2 / FPS).
    assert out["vx"].iloc[1] == pytest.approx((x[2] - x[0]) / (t[2] - t[0]))
    # Frame 6 ends its run (8 missing): backward difference, not a stencil to 10.
    assert out["vx"].iloc[3] == pytest.approx((x[3] - x[2]) / (t[3] - t[2]))
    assert out["vx"].iloc[4] == pytest.approx((x[5] - x[4]) / (t[5] - t[4]))
    # With step 1 every step of 2 is a gap: runs of one frame, no velocity.
    assert out.pipe(add_velocities, FPS, frame_step=1)["vx"].isna().all()


def test_savgol_exact_on_quadratic_and_not_across_gaps():
    frames = np.r_[np.arange(0, 9), np.arange(11, 20)]
    t = frames / FPS
    x = np.where(frames < 10, 1.0 + 0.5 * t - 0.8 * t**2, -30.0 + 2.0 * t + 0.3 * t**2)
    params = VelocityParams(smoothing="savgol", window=5, polyorder=2)
    out = add_velocities(track(frames, x), FPS, params)
    exact = np.where(frames < 10, 0.5 - 1.6 * t, 2.0 + 0.6 * t)
    np.testing.assert_allclose(out["vx"], exact, atol=1e-9)


def test_savgol_short_run_falls_back_to_finite_differences():
    frames = np.array([0, 1, 2])
    x = np.array([0.0, 1.0, 4.0])
    smoothed = add_velocities(track(frames, x), FPS, VelocityParams(smoothing="savgol", window=5))
    plain = add_velocities(track(frames, x), FPS)
    np.testing.assert_allclose(smoothed["vx"], plain["vx"])


def test_run_ids():
    table = pd.DataFrame({"particle": [1, 1, 1, 2, 2, 2], "frame": [0, 1, 3, 3, 4, 5]})
    np.testing.assert_array_equal(run_ids(table), [0, 0, 1, 2, 2, 2])


@settings(max_examples=60, deadline=None)
@given(coefficients=st.lists(st.floats(-5, 5), min_size=3, max_size=3),
       gaps=st.lists(st.booleans(), min_size=12, max_size=12))
def test_property_central_differences_exact_for_quadratics(coefficients, gaps):
    a, b, c = coefficients
    frames = np.array([f for f, drop in zip(range(12), gaps, strict=True) if not drop or f in (0, 11)])
    t = frames / FPS
    values = a * t**2 + b * t + c
    run = np.cumsum(np.r_[True, np.diff(frames) != 1]) - 1
    derivative = finite_differences(values, t, run)
    for i in range(len(frames)):
        same_before = i > 0 and run[i - 1] == run[i]
        same_after = i < len(frames) - 1 and run[i + 1] == run[i]
        if same_before and same_after:
            assert derivative[i] == pytest.approx(2 * a * t[i] + b, abs=1e-9)
        elif same_after:
            assert derivative[i] == pytest.approx((values[i + 1] - values[i]) * FPS, abs=1e-9)
        elif same_before:
            assert derivative[i] == pytest.approx((values[i] - values[i - 1]) * FPS, abs=1e-9)
        else:
            assert np.isnan(derivative[i])


@pytest.mark.parametrize("params", [VelocityParams(), VelocityParams(smoothing="savgol", window=5, polyorder=2)],
                         ids=["finite_differences", "savgol"])
def test_velocities_on_arrays_in_any_row_order_are_add_velocities(params):
    """The array form (the split tracking's gather) gives add_velocities' numbers, in the rows' own order."""
    rng = np.random.default_rng(3)
    pieces = []
    for particle in range(6):
        frames = np.sort(rng.choice(np.arange(0, 40, 2), size=rng.integers(1, 15), replace=False))
        pieces.append(track(frames, rng.normal(size=len(frames)).cumsum(), rng.normal(size=len(frames)).cumsum(),
                            particle=particle))
    table = pd.concat(pieces, ignore_index=True).sample(frac=1.0, random_state=1).reset_index(drop=True)
    expected = add_velocities(table, FPS, params, frame_step=2).set_index(["particle", "frame"])
    got = velocities(table["particle"].to_numpy(), table["frame"].to_numpy(), table[["x", "y"]].to_numpy(), FPS,
                     params, frame_step=2)
    want = expected.loc[list(zip(table["particle"], table["frame"], strict=True)), ["vx", "vy"]].to_numpy()
    np.testing.assert_array_equal(got, want)
    assert np.isnan(got).any() and np.isfinite(got).any()  # lone rows and gaps are there, and real velocities
