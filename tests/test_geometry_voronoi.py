"""Voronoi areas: exact on lattices, equal to scipy.spatial.Voronoi where valid, NaN where they cannot be known."""
import numpy as np
import pytest
from scipy.spatial import ConvexHull, Voronoi

from mpd.geometry.domain import Box, Window
from mpd.geometry.voronoi import voronoi_areas


def triangular_lattice(nx, ny, a=1.0):
    return np.array([(i + 0.5 * (j % 2), j * np.sqrt(3) / 2) for j in range(ny) for i in range(nx)]) * a


def test_square_lattice_in_a_large_window():
    g = np.stack(np.meshgrid(np.arange(10.0), np.arange(10.0)), -1).reshape(-1, 2) * 2.0
    area, valid = voronoi_areas(g, window=(-10, 30, -10, 30))
    interior = (g.min(1) > 0) & (g.max(1) < 18)  # all but the hull
    np.testing.assert_array_equal(valid, interior)
    np.testing.assert_allclose(area[valid], 4.0, rtol=1e-12)
    assert np.isnan(area[~valid]).all()


def test_cells_reaching_the_window_edge_are_invalid():
    g = np.stack(np.meshgrid(np.arange(10.0), np.arange(10.0)), -1).reshape(-1, 2)
    area, valid = voronoi_areas(g, window=(0, 9, 0, 9))
    # the second ring's cells are bounded, but an unseen particle just outside the window
    # could still cut them (their circumdiscs cross the edge): flagged, not guessed
    assert not valid[(g.min(1) < 2) | (g.max(1) > 7)].any()
    assert valid[(g.min(1) >= 2) & (g.max(1) <= 7)].all()
    np.testing.assert_allclose(area[valid], 1.0)


def test_matches_scipy_voronoi_where_valid():
    rng = np.random.default_rng(2)
    p = rng.uniform(0, 30, (800, 2))
    area, valid = voronoi_areas(p, window=Window(0, 30, 0, 30))
    vor = Voronoi(p)
    for k in np.flatnonzero(valid):
        region = vor.regions[vor.point_region[k]]
        assert -1 not in region
        assert area[k] == pytest.approx(ConvexHull(vor.vertices[region]).volume, rel=1e-10)
        assert (vor.vertices[region] >= 0).all() and (vor.vertices[region] <= 30).all()
    assert 0.6 < valid.mean() < 0.95
    # every unbounded cell is invalid
    unbounded = [k for k in range(len(p)) if -1 in vor.regions[vor.point_region[k]]]
    assert not valid[unbounded].any()
    assert np.isnan(area[~valid]).all()


def test_obtuse_triangles():
    # a cell surrounded by obtuse triangles: signed areas must still add up (checked against scipy)
    p = np.array([[0, 0], [4, 0.3], [-4, 0.3], [0, 3], [0, -3], [3, 3], [-3, 3], [3, -3], [-3, -3],
                  [6, 0], [-6, 0], [0, 6], [0, -6], [6, 6], [-6, 6], [6, -6], [-6, -6]], float)
    area, valid = voronoi_areas(p, window=(-50, 50, -50, 50))
    vor = Voronoi(p)
    assert valid[0]
    assert area[0] == pytest.approx(ConvexHull(vor.vertices[vor.regions[vor.point_region[0]]]).volume, rel=1e-12)


@pytest.mark.parametrize("box", [Box(20.0, 20.0, 0.0), Box(20.0, 15.0, 7.5), Box(20.0, 15.0, -31.0)])
def test_periodic_areas_tile_the_box(box):
    rng = np.random.default_rng(3)
    p = rng.uniform(-5, 25, (400, 2))
    area, valid = voronoi_areas(p, box=box)
    assert valid.all()
    assert area.sum() == pytest.approx(box.area, rel=1e-10)


def test_periodic_triangular_lattice_has_equal_cells_also_when_sheared():
    nx, ny, a = 12, 10, 1.5
    p = triangular_lattice(nx, ny, a)
    box = Box(nx * a, ny * a * np.sqrt(3) / 2, 0.0)
    gamma = 0.3
    sheared = p + np.stack([gamma * p[:, 1], np.zeros(len(p))], 1)  # area preserving
    area, valid = voronoi_areas(sheared, box=Box(box.lx, box.ly, gamma * box.ly))
    assert valid.all()
    np.testing.assert_allclose(area, box.area / len(p), rtol=1e-9)


def test_degenerate_inputs_give_invalid_not_wrong():
    area, valid = voronoi_areas(np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]))
    assert not valid.any() and np.isnan(area).all()
    area, valid = voronoi_areas(np.zeros((2, 2)), window=(0, 1, 0, 1))
    assert not valid.any()
    g = np.stack(np.meshgrid(np.arange(6.0), np.arange(6.0)), -1).reshape(-1, 2)
    dup = np.concatenate([g, g[[14]]])  # a duplicated particle: the two cannot both own the cell
    area, valid = voronoi_areas(dup, window=(-10, 15, -10, 15))
    assert not valid[14] and not valid[-1]
    assert valid.sum() == 16 - 1  # the 4 x 4 inner block, less the duplicated one
    assert np.isfinite(area[valid]).all()
