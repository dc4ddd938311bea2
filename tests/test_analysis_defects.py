"""Defects on known answers: a perfect lattice (psi6 = 1, no defect), one edge dislocation (exactly one
5-7 pair at its core), the two Voronoi backends and freud's Hexatic agreeing, periodic boxes."""
import freud
import numpy as np
import pandas as pd
import pytest

from analysis.defects import defects, frame_defects, voronoi_neighbours
from analysis.synthetic import edge_dislocation, triangular_lattice
from mpd.geometry import Box, voronoi_areas

SQRT3 = np.sqrt(3.0)


def bounds(p, pad=0.0):
    return (p[:, 0].min() - pad, p[:, 0].max() + pad, p[:, 1].min() - pad, p[:, 1].max() + pad)


@pytest.mark.parametrize("backend", ["scipy", "freud"])
@pytest.mark.parametrize("angle", [0.0, 0.37])
def test_perfect_lattice_has_psi6_one_and_no_defects(backend, angle):
    # A large rotated lattice seen through a window it covers entirely (the window must hold every particle).
    p = triangular_lattice(60, 70, spacing=2.5, origin=(-75.0, -75.0))
    c, s = np.cos(angle), np.sin(angle)
    p = p @ np.array([[c, s], [-s, c]])
    p = p[(np.abs(p) < 35).all(axis=1)]
    fd = frame_defects(p, window=bounds(p), backend=backend)
    assert fd.valid.sum() > 0.5 * len(p)  # the interior is analysed ...
    hull = (p[:, 0] == p[:, 0].min()) | (p[:, 1] == p[:, 1].min())
    assert not fd.valid[hull].any()  # ... and cells at the window edge are not
    assert np.all(fd.n_sides[fd.valid] == 6)
    np.testing.assert_allclose(np.abs(fd.psi6[fd.valid]), 1.0, atol=1e-9)
    # The global phase is 6 x the lattice orientation.
    np.testing.assert_allclose(np.angle(fd.psi6[fd.valid].mean() * np.exp(-6j * angle)), 0.0, atol=1e-9)
    assert len(fd.index_5) == 0 and fd.n_57_bonds == 0


CASES = [  # (core offset inside the cell, Burgers vector in lattice units)
    ((0.25, SQRT3 / 6), (1.0, 0.0)),
    ((0.75, SQRT3 / 3), (-1.0, 0.0)),
    ((0.25, SQRT3 / 6), (0.5, SQRT3 / 2)),
    ((0.5, SQRT3 / 6 + SQRT3 / 2), (-0.5, SQRT3 / 2)),
]


@pytest.mark.parametrize("backend", ["scipy", "freud"])
@pytest.mark.parametrize(("offset", "burgers"), CASES)
def test_one_edge_dislocation_gives_one_five_seven_pair_at_its_core(backend, offset, burgers):
    a = 3.0
    lattice = triangular_lattice(40, 46, spacing=a)
    core = np.array([20 * a, 23 * a * SQRT3 / 2]) + a * np.asarray(offset)
    p = edge_dislocation(lattice, core, a * np.asarray(burgers))
    fd = frame_defects(p, window=bounds(p), backend=backend)
    z = fd.n_sides[fd.valid]
    assert (z == 5).sum() == 1 and (z == 7).sum() == 1 and np.all((z >= 5) & (z <= 7))
    assert fd.n_57_bonds == 1 and len(fd.index_5) == 1
    assert np.linalg.norm(fd.position[0] - core) < a
    assert fd.n_sides[fd.index_5[0]] == 5 and fd.n_sides[fd.index_7[0]] == 7


def test_lattice_without_dislocation_is_not_a_false_positive_of_the_displacement_field():
    # Same construction with zero Burgers vector's limit: a tiny b leaves the lattice perfect.
    a = 3.0
    lattice = triangular_lattice(30, 30, spacing=a)
    p = edge_dislocation(lattice, (15.25 * a, 15 * a * SQRT3 / 2 + a * SQRT3 / 6), (1e-3 * a, 0.0))
    fd = frame_defects(p, window=bounds(p))
    assert np.all(fd.n_sides[fd.valid] == 6) and len(fd.index_5) == 0


def test_backends_agree_and_validity_matches_mpd_geometry():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 60, (1200, 2))
    window = (0.0, 60.0, 0.0, 60.0)
    i1, j1, v1 = voronoi_neighbours(p, window=window, backend="scipy")
    i2, j2, v2 = voronoi_neighbours(p, window=window, backend="freud")
    np.testing.assert_array_equal(v1, v2)
    np.testing.assert_array_equal(v1, voronoi_areas(p, window=window)[1])
    assert 0.5 * len(p) < v1.sum() < len(p)
    assert set(zip(i1[v1[i1]], j1[v1[i1]])) == set(zip(i2[v2[i2]], j2[v2[i2]]))


def test_psi6_equals_freud_hexatic_on_the_same_neighbours():
    rng = np.random.default_rng(1)
    p = triangular_lattice(25, 25, spacing=2.0) + rng.normal(0, 0.2, (625, 2))
    fd = frame_defects(p, window=bounds(p))
    i, j, _ = voronoi_neighbours(p, window=bounds(p))
    order = np.lexsort((j, i))
    i, j = i[order], j[order]
    box = freud.box.Box.square(200.0)
    centred = np.c_[p - p.mean(0), np.zeros(len(p))]
    nlist = freud.locality.NeighborList.from_arrays(len(p), len(p), i, j, centred[j] - centred[i])
    hexatic = freud.order.Hexatic(k=6).compute((box, centred), neighbors=nlist)
    expected = np.asarray(hexatic.particle_order)[fd.valid]
    np.testing.assert_allclose(fd.psi6[fd.valid], expected, atol=2e-3)  # freud computes in float32
    assert 0.5 < np.abs(fd.psi6[fd.valid]).mean() < 1.0


def test_periodic_box_lattice_sheared_and_not():
    a, nx, ny = 2.0, 20, 24
    p = triangular_lattice(nx, ny, spacing=a)
    box = Box(nx * a, ny * a * SQRT3 / 2)
    fd = frame_defects(p, box=box)
    assert fd.valid.all() and np.all(fd.n_sides == 6)
    np.testing.assert_allclose(np.abs(fd.psi6), 1.0, atol=1e-9)
    gamma = 0.03  # affine shear with the box's tilt: still periodic, still no defects
    q = p + np.c_[gamma * p[:, 1], np.zeros(len(p))]
    fd = frame_defects(q, box=Box(box.lx, box.ly, gamma * box.ly))
    assert np.all(fd.n_sides == 6) and len(fd.index_5) == 0
    with pytest.raises(ValueError):
        voronoi_neighbours(p, box=box, backend="scipy")


def test_defect_tables_over_frames():
    a = 3.0
    lattice = triangular_lattice(30, 30, spacing=a)
    core = np.array([15 * a, 15 * a * SQRT3 / 2]) + a * np.array([0.25, SQRT3 / 6])
    frames = [lattice, edge_dislocation(lattice, core, (a, 0.0))]
    traj = pd.concat([pd.DataFrame({"frame": f, "t": 0.5 * f, "particle": np.arange(len(q)), "x": q[:, 0],
                                    "y": q[:, 1]}) for f, q in enumerate(frames)])
    window = bounds(frames[1], pad=-0.01)
    per_particle, per_frame, disl = defects(traj, window=window)
    assert list(per_frame["n_dislocations"]) == [0, 1]
    assert list(per_frame["n_defects"]) == [0, 2]
    assert per_frame.loc[0, "psi6_mean_abs"] == pytest.approx(1.0)
    assert per_frame.loc[1, "dislocation_fraction"] == pytest.approx(1 / per_frame.loc[1, "n_valid"])
    assert len(disl) == 1 and disl.loc[0, "frame"] == 1 and np.hypot(disl.x[0] - core[0], disl.y[0] - core[1]) < a
    assert set(per_particle.columns) >= {"frame", "particle", "n_sides", "valid", "psi6_abs"}
