"""Falk-Langer strain and D2min: closed-form cases, flags, and the reference-frame rules."""
import numpy as np
import pytest

from mpd.geometry.domain import Box
from mpd.geometry.reference import reference_frames
from mpd.geometry.strain import deviatoric, local_strain, shear_invariant, strain_tensor


def triangular_lattice(nx, ny, a=1.0):
    return np.array([(i + 0.5 * (j % 2), j * np.sqrt(3) / 2) for j in range(ny) for i in range(nx)]) * a


@pytest.mark.parametrize(
    "A",
    [np.array([[1.0, 0.04], [0.0, 1.0]]),  # simple shear, gamma = 4 %
     np.array([[1.1, 0.3], [-0.2, 0.9]]),  # general affine map
     np.array([[np.cos(0.7), -np.sin(0.7)], [np.sin(0.7), np.cos(0.7)]]) * 1.02],  # rotation + dilation
)
def test_affine_map_gives_exact_strain_and_zero_d2min(A):
    rng = np.random.default_rng(0)
    x_ref = rng.uniform(0, 20, (500, 2))
    x = x_ref @ A.T + np.array([3.0, -7.0])
    s = local_strain(x, x_ref, 2.5)
    assert s.valid.mean() > 0.95
    v = s.valid
    np.testing.assert_allclose(s.F[v], np.broadcast_to(A, s.F[v].shape), atol=1e-10)
    E = 0.5 * (A.T @ A - np.eye(2))
    np.testing.assert_allclose(s.eps[v], np.broadcast_to(E, s.eps[v].shape), atol=1e-10)
    np.testing.assert_allclose(s.d2min[v], 0.0, atol=1e-10)
    E_dev = E - 0.5 * np.trace(E) * np.eye(2)
    np.testing.assert_allclose(s.eps_dev[v], np.broadcast_to(E_dev, s.eps[v].shape), atol=1e-10)
    np.testing.assert_allclose(s.invariant[v], np.sqrt(E_dev[0, 0] ** 2 + E_dev[0, 1] ** 2), atol=1e-10)


def test_simple_shear_invariants():
    gamma = 0.03
    F = np.array([[[1.0, gamma], [0.0, 1.0]]])
    small = strain_tensor(F, "small")
    np.testing.assert_allclose(small[0], [[0, gamma / 2], [gamma / 2, 0]], atol=1e-15)
    green = strain_tensor(F, "green_lagrange")
    np.testing.assert_allclose(green[0], [[0, gamma / 2], [gamma / 2, gamma**2 / 2]], atol=1e-15)
    assert shear_invariant(deviatoric(small))[0] == pytest.approx(gamma / 2)
    np.testing.assert_allclose(np.trace(deviatoric(green)[0]), 0.0, atol=1e-15)
    with pytest.raises(ValueError, match="strain measure"):
        strain_tensor(F, "hencky")


def test_one_displaced_particle_on_a_triangular_lattice():
    """Analytic D2min: 6|delta|^2 for the particle, 2/3 |delta|^2 for each of its 6 neighbours, 0 elsewhere.

    Particle 0 keeps F = I (its bonds d0 + delta sum to zero change in X since sum d0 = 0) and
    every bond is off by delta. A neighbour k has Y = 3 I and one bond changed by eta = delta:
    F = I + eta b*^T / 3, residuals 2/3 eta on that bond and -eta (b*.b)/3 on the others
    (b*.b = 1/2, 1/2, -1/2, -1/2, -1): sum |.|^2 = |eta|^2 (4/9 + 2/9).
    """
    x_ref = triangular_lattice(15, 14, a=2.0)
    c = int(np.argmin(((x_ref - x_ref.mean(0)) ** 2).sum(1)))
    delta = np.array([0.03, -0.05])
    x = x_ref.copy()
    x[c] += delta
    s = local_strain(x, x_ref, 2.5)  # first shell only (a = 2 < h < 2 sqrt 3)
    dd = delta @ delta
    neighbours = np.flatnonzero(np.abs(np.linalg.norm(x_ref - x_ref[c], axis=1) - 2.0) < 1e-9)
    assert len(neighbours) == 6
    assert s.d2min[c] == pytest.approx(6 * dd, rel=1e-10)
    np.testing.assert_allclose(s.d2min[neighbours], 2 / 3 * dd, rtol=1e-10)
    others = np.setdiff1d(np.arange(len(x)), np.r_[c, neighbours])
    np.testing.assert_allclose(s.d2min[others], 0.0, atol=1e-12)
    np.testing.assert_allclose(s.F[c], np.eye(2), atol=1e-12)
    # normalised per neighbour: 6|delta|^2 / 6
    s_per = local_strain(x, x_ref, 2.5, per_neighbour=True)
    assert s_per.d2min[c] == pytest.approx(dd, rel=1e-10)


def test_displaced_particle_random_packing_is_local():
    rng = np.random.default_rng(1)
    x_ref = rng.uniform(0, 30, (900, 2))
    x = x_ref.copy()
    c = int(np.argmin(((x_ref - 15) ** 2).sum(1)))
    x[c] += [0.2, 0.1]
    h = 2.0
    s = local_strain(x, x_ref, h)
    touched = np.linalg.norm(x_ref - x_ref[c], axis=1) < h  # c and its reference neighbours
    assert (s.d2min[touched & s.valid] > 1e-6).all()
    np.testing.assert_allclose(s.d2min[~touched & s.valid], 0.0, atol=1e-12)


def test_too_few_or_collinear_neighbours_are_nan_and_flagged():
    x_ref = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [10.0, 10.0], [20.0, 0.0], [20.5, 0.5]])
    x = x_ref * 1.1
    s = local_strain(x, x_ref, 1.2)
    # a row of particles (collinear neighbours), an isolated one, a pair (one neighbour each)
    assert not s.valid.any()
    assert np.isnan(s.F).all() and np.isnan(s.d2min).all() and np.isnan(s.invariant).all()
    np.testing.assert_array_equal(s.n_neighbours, [1, 2, 2, 1, 0, 1, 1])
    # two non-collinear neighbours suffice
    tri = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    s = local_strain(tri * 1.1, tri, 1.2)
    assert s.valid[0] and not s.valid[1:].any()  # 1 and 2 see each other at sqrt(2) > h
    np.testing.assert_allclose(s.F[0], 1.1 * np.eye(2))


def test_periodic_sheared_box_with_wrapped_positions():
    nx, ny, a = 12, 10, 1.5
    x_ref = triangular_lattice(nx, ny, a) + 0.1
    box_ref = Box(nx * a, ny * a * np.sqrt(3) / 2, 0.0)
    gamma = 0.05
    box = Box(box_ref.lx, box_ref.ly, gamma * box_ref.ly)
    x = x_ref + np.stack([gamma * x_ref[:, 1], np.zeros(len(x_ref))], 1)
    x = box.wrap(x)  # as a simulation stores them: wrapped into the sheared cell
    s = local_strain(x, x_ref, 1.6, box=box, box_ref=box_ref)
    assert s.valid.all()
    A = np.array([[1.0, gamma], [0.0, 1.0]])
    np.testing.assert_allclose(s.F, np.broadcast_to(A, s.F.shape), atol=1e-10)
    np.testing.assert_allclose(s.d2min, 0.0, atol=1e-10)
    np.testing.assert_array_equal(s.n_neighbours, 6)


def test_reference_frames():
    frames = np.arange(10)
    np.testing.assert_array_equal(reference_frames(frames, reference="lag", lag_frames=3),
                                  [-1, -1, -1, 0, 1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(reference_frames(frames, reference="cycle", cycle_frames=4),
                                  [0, 0, 0, 0, 4, 4, 4, 4, 8, 8])
    # non-integer period and a late start
    np.testing.assert_array_equal(
        reference_frames(frames, reference="cycle", cycle_frames=2.5, cycle_start_frame=1),
        [-1, 1, 1, 1, 4, 4, 6, 6, 6, 9],
    )
    # a reference that was not recorded is missing
    np.testing.assert_array_equal(
        reference_frames([2, 3, 5], reference="lag", lag_frames=1), [-1, 2, -1])
    with pytest.raises(ValueError, match="cycle_frames"):
        reference_frames(frames, reference="cycle")
    with pytest.raises(ValueError, match="lag_frames"):
        reference_frames(frames, reference="lag", lag_frames=0)
    with pytest.raises(ValueError, match="reference"):
        reference_frames(frames, reference="first")
