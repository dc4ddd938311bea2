"""radius_pairs against an O(N^2) brute force, in open, periodic and sheared boxes, for every backend."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mpd.geometry.domain import Box
from mpd.geometry.neighbours import radius_pairs, torch_cluster_available

BACKENDS = ["scipy"] + (["torch_cluster"] if torch_cluster_available() else [])


def brute_force(p, h, box=None):
    """All pairs i < j with the shortest image closer than h; images enumerated, not computed cleverly."""
    n = len(p)
    i, j = np.triu_indices(n, 1)
    d = p[i] - p[j]
    if box is not None:
        images = np.array([(a, b) for a in range(-7, 8) for b in range(-3, 4)], float) @ box.basis
        candidates = d[:, None, :] + images[None]
        d = candidates[np.arange(len(d)), np.argmin((candidates**2).sum(-1), axis=1)]
    keep = (d**2).sum(1) < h * h
    return i[keep], j[keep], d[keep]


def assert_same_as_brute_force(p, h, box, backend):
    pairs = radius_pairs(p, h, box=box, backend=backend)
    bi, bj, bd = brute_force(p, h, box)
    assert pairs.i.dtype == np.int64 and pairs.j.dtype == np.int64 and pairs.shift.shape == (len(pairs), 2)
    assert np.all(pairs.i < pairs.j)
    assert len(set(zip(pairs.i.tolist(), pairs.j.tolist()))) == len(pairs), "a pair is listed twice"
    assert set(zip(pairs.i.tolist(), pairs.j.tolist())) == set(zip(bi.tolist(), bj.tolist()))
    r = pairs.displacements(p)
    assert np.all((r**2).sum(1) < h * h)
    order = np.lexsort((bj, bi))  # pairs come sorted by (i, j)
    np.testing.assert_allclose(r, bd[order], atol=1e-9)
    if box is not None:  # shifts are exact lattice vectors
        nm = pairs.shift @ np.linalg.inv(box.basis)
        np.testing.assert_allclose(nm, np.round(nm), atol=1e-9)
    return pairs


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("h", [0.3, 1.1, 2.9])
@pytest.mark.parametrize(
    "box",
    [None, Box(10.0, 8.0, 0.0), Box(10.0, 8.0, 2.5), Box(10.0, 8.0, 5.0), Box(10.0, 8.0, -4.9),
     Box(7.0, 12.0, 3.5), Box(10.0, 8.0, 23.7)],
    ids=["open", "orthogonal", "tilt0.25", "tilt0.5", "tilt-0.49", "tall-tilt0.5", "tilt2.37"],
)
def test_matches_brute_force(box, h, backend):
    rng = np.random.default_rng(7)
    bulk = rng.uniform(-2.0, 12.0, size=(300, 2))  # also outside the cell: must be wrapped
    # particles hugging the edges and corners of the cell, where the images matter
    edges = np.array([[0.0, 0.0], [1e-12, 7.999999], [9.99999, 0.0], [10.0, 8.0], [5.0, 1e-9], [5.0, 7.9999]])
    p = np.concatenate([bulk, edges, rng.uniform(0, 1, (20, 2)) * [10.0, 0.2]])
    assert_same_as_brute_force(p, h, box, backend)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(2, 60),
    tilt=st.floats(-0.55, 0.55),
    h_frac=st.floats(0.02, 0.49),
    periodic=st.booleans(),
)
def test_property_random_boxes(seed, n, tilt, h_frac, periodic):
    rng = np.random.default_rng(seed)
    lx, ly = rng.uniform(3, 9, size=2)
    box = Box(lx, ly, tilt * lx) if periodic else None
    h = h_frac * min(lx, ly)
    p = rng.uniform(-1, 1, (n, 2)) * [lx, ly] * 1.2
    assert_same_as_brute_force(p, h, box, "scipy")


def test_torch_input_returns_numpy_and_displacements_keep_autograd():
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 10, (200, 2))
    box = Box(10.0, 10.0, 3.0)
    ref = radius_pairs(p, 1.5, box=box)
    x = torch.tensor(p, dtype=torch.float32, requires_grad=True)
    pairs = radius_pairs(x, 1.5, box=box)
    assert isinstance(pairs.i, np.ndarray) and isinstance(pairs.shift, np.ndarray)
    assert set(zip(pairs.i.tolist(), pairs.j.tolist())) == set(zip(ref.i.tolist(), ref.j.tolist()))
    r = pairs.displacements(x)
    assert isinstance(r, torch.Tensor) and r.dtype == torch.float32
    r.pow(2).sum().backward()  # differentiable with respect to the caller's positions
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.skipif(not torch_cluster_available(), reason="torch-cluster is not installed "
                    "(pip install --no-build-isolation torch-cluster); only the scipy backend can be checked")
@pytest.mark.parametrize("box", [None, Box(20.0, 16.0, 0.0), Box(20.0, 16.0, 9.5)], ids=["open", "periodic", "sheared"])
def test_backends_give_the_same_edge_sets(box):
    rng = np.random.default_rng(3)
    p = rng.uniform(0, 20, (3000, 2))
    for h in (0.4, 1.7):
        a = radius_pairs(p, h, box=box, backend="scipy")
        b = radius_pairs(torch.tensor(p), h, box=box, backend="torch_cluster")
        np.testing.assert_array_equal(a.i, b.i)
        np.testing.assert_array_equal(a.j, b.j)
        np.testing.assert_allclose(a.shift, b.shift, atol=1e-9)


@pytest.mark.skipif(not torch_cluster_available(), reason="torch-cluster is not installed")
def test_torch_cluster_is_not_truncated_by_max_num_neighbors():
    rng = np.random.default_rng(4)
    p = rng.uniform(0, 3, (600, 2))  # ~200 neighbours each, above torch_cluster's default cap
    a = radius_pairs(p, 1.4, backend="scipy")
    b = radius_pairs(p, 1.4, backend="torch_cluster")
    assert len(a) == len(b) > 200 * 600 / 2 * 0.5


def test_few_points_and_bad_arguments():
    assert len(radius_pairs(np.zeros((0, 2)), 1.0)) == 0
    assert len(radius_pairs(np.zeros((1, 2)), 1.0, box=Box(5, 5))) == 0
    pairs = radius_pairs(np.array([[0.1, 0.1], [4.9, 4.9]]), 1.0, box=Box(5.0, 5.0))
    np.testing.assert_allclose(pairs.displacements(np.array([[0.1, 0.1], [4.9, 4.9]])), [[0.2, 0.2]])
    with pytest.raises(ValueError, match="min\\(lx, ly\\)/2"):
        radius_pairs(np.zeros((3, 2)), 2.5, box=Box(5.0, 8.0))
    with pytest.raises(ValueError, match="shape"):
        radius_pairs(np.zeros((3, 3)), 1.0)
    with pytest.raises(ValueError, match="NaN"):
        radius_pairs(np.array([[0.0, np.nan], [1.0, 1.0]]), 1.0)
    with pytest.raises(ValueError, match="backend"):
        radius_pairs(np.zeros((3, 2)), 1.0, backend="kdtree")


def test_strict_cutoff():
    p = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 0.5]])
    pairs = radius_pairs(p, 1.0)
    assert set(zip(pairs.i.tolist(), pairs.j.tolist())) == {(0, 2)}  # |r| == h is excluded


def test_minimum_image_of_box():
    rng = np.random.default_rng(5)
    for box in (Box(10.0, 8.0, 4.0), Box(10.0, 1.0, 5.0), Box(3.0, 11.0, -7.0)):
        d = rng.uniform(-30, 30, (500, 2))
        m_max = int(np.ceil(30 / box.ly)) + 2  # enough images to contain the shortest one, whatever the tilt
        n_max = int(np.ceil((30 + m_max * abs(box.xy)) / box.lx)) + 2
        images = np.array([(a, b) for a in range(-n_max, n_max + 1) for b in range(-m_max, m_max + 1)], float)
        images = images @ box.basis
        candidates = d[:, None, :] + images[None]
        best = candidates[np.arange(len(d)), np.argmin((candidates**2).sum(-1), axis=1)]
        np.testing.assert_allclose((box.minimum_image(d) ** 2).sum(1), (best**2).sum(1), rtol=1e-12)
