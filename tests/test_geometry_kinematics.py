"""Kinematic velocities and the background flow (mpd.geometry.kinematics)."""
import numpy as np
import pytest

from mpd.geometry.domain import Box
from mpd.geometry.kinematics import affine_flow, backward_velocities, flow_velocity, shear_box_flow

RATE = 20.0


def test_backward_differences_forward_at_a_first_frame_and_nan_for_a_lone_row():
    # particle 0: frames 0, 1, 2, (gap), 4, 5; particle 1: only frame 3
    frame = np.array([0, 1, 2, 4, 5, 3])
    particle = np.array([0, 0, 0, 0, 0, 1])
    x = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [10.0, 1.0], [11.0, 3.0], [7.0, 7.0]])
    shuffle = np.array([3, 0, 5, 2, 4, 1])  # rows in any order
    v, backward = backward_velocities(frame[shuffle], particle[shuffle], x[shuffle], RATE)
    expected = {0: ([1.0, 0.0], False), 1: ([1.0, 0.0], True), 2: ([2.0, 0.0], True), 4: ([1.0, 2.0], False),
                5: ([1.0, 2.0], True)}
    for row, k in enumerate(shuffle):
        if particle[k] == 1:
            assert np.isnan(v[row]).all() and not backward[row]
            continue
        value, is_backward = expected[frame[k]]
        np.testing.assert_allclose(v[row], np.array(value) * RATE)
        assert backward[row] == is_backward  # a gap: frame 4 has no predecessor, so the forward difference


def test_backward_differences_take_the_minimum_image_in_a_periodic_box():
    box = Box(10.0, 10.0, 2.0)
    x = np.array([[9.9, 5.0], [0.1, 5.0]])  # crossed the x edge: moved +0.2
    v, backward = backward_velocities([0, 1], [0, 0], x, RATE, lambda f, d: box.minimum_image(d))
    np.testing.assert_allclose(v[1], [0.2 * RATE, 0.0], atol=1e-9)
    assert backward.tolist() == [False, True]


def test_affine_flow_recovers_an_affine_field_and_degrades_gracefully():
    rng = np.random.default_rng(0)
    x0 = rng.uniform(0, 50, size=(40, 2))
    u0, G = np.array([1.5, -0.5]), np.array([[0.01, 0.3], [-0.02, 0.005]])
    dt = 0.05
    x1 = x0 + (u0 + x0 @ G.T) * dt
    c = affine_flow(x0, x1, dt)
    np.testing.assert_allclose(c, [*u0, *G.ravel()], atol=1e-9)
    np.testing.assert_allclose(flow_velocity(c, x0), (x1 - x0) / dt, atol=1e-9)
    # collinear points: the mean velocity only; no point: zero
    line = np.c_[np.linspace(0, 10, 5), np.zeros(5)]
    c_line = affine_flow(line, line + [0.1, 0.2], dt)
    np.testing.assert_allclose(c_line, [2.0, 4.0, 0, 0, 0, 0], atol=1e-9)
    assert (affine_flow(np.zeros((0, 2)), np.zeros((0, 2)), dt) == 0).all()


def test_the_sheared_box_imposes_simple_shear_about_its_lower_edge():
    c = shear_box_flow(xy0=1.0, xy1=1.5, ly=20.0, dt=0.1)
    np.testing.assert_allclose(flow_velocity(c, [[3.0, 0.0], [3.0, 10.0]]), [[0.0, 0.0], [2.5, 0.0]])
    with pytest.raises(ValueError, match="flow coefficients"):
        flow_velocity(np.zeros(5), [[0.0, 0.0]])
