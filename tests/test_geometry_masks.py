"""Interior/exterior masks: window edge, boundary particles, boundary geometry, per-frame membership."""
import json

import numpy as np
import pytest

from mpd.geometry.masks import (
    distance_to_polyline,
    distance_to_window_edge,
    exterior_mask,
    inside_polygon,
    window_from_video_metadata,
)


def test_window_from_video_metadata(tmp_path):
    meta = {"pixel_size_um": 0.5, "width_px": 160, "height_px": 120, "frame_rate_hz": 20}
    assert tuple(window_from_video_metadata(meta)) == (0.0, 79.5, 0.0, 59.5)
    path = tmp_path / "metadata.json"
    path.write_text(json.dumps(meta))
    assert tuple(window_from_video_metadata(path)) == (0.0, 79.5, 0.0, 59.5)
    with pytest.raises(KeyError, match="width_px"):
        window_from_video_metadata({"pixel_size_um": 0.5, "height_px": 3})


def test_window_edge_band():
    window = (0.0, 10.0, 0.0, 20.0)
    p = np.array([[5.0, 10.0], [0.9, 10.0], [1.1, 10.0], [5.0, 19.5], [9.2, 1.2], [-1.0, 5.0], [5.0, 1.0]])
    np.testing.assert_allclose(distance_to_window_edge(p, window), [5, 0.9, 1.1, 0.5, 0.8, -1.0, 1.0])
    np.testing.assert_array_equal(exterior_mask(p, 1.0, window=window), [0, 1, 0, 1, 1, 1, 0])


def test_boundary_particles_and_geometry():
    p = np.array([[5.0, 5.0], [5.0, 6.5], [8.0, 8.0], [2.0, 2.0], [3.0, 5.2]])
    ids = np.array([10, 11, 12, 13, 14])
    ext = exterior_mask(p, 1.0, particle_ids=ids, boundary_particles=[12])
    np.testing.assert_array_equal(ext, [0, 0, 1, 0, 0])  # a boundary particle's neighbours stay interior
    needle = np.array([[0.0, 6.0], [10.0, 6.0]])  # a line
    np.testing.assert_allclose(distance_to_polyline(p, needle), [1.0, 0.5, 2.0, 4.0, 0.8])
    np.testing.assert_array_equal(exterior_mask(p, 1.0, boundary_geometry=needle), [0, 1, 0, 0, 1])
    square = np.array([[4.0, 4.0], [6.0, 4.0], [6.0, 7.0], [4.0, 7.0], [4.0, 4.0]])  # closed: inside counts
    inside = inside_polygon(p, square[:-1])
    np.testing.assert_array_equal(inside, [1, 1, 0, 0, 0])
    np.testing.assert_array_equal(exterior_mask(p, 0.5, boundary_geometry=square), [1, 1, 0, 0, 0])
    with pytest.raises(ValueError, match="particle_ids"):
        exterior_mask(p, 1.0, boundary_particles=[12])


def test_membership_changes_as_particles_cross_the_band():
    # one particle drifting out of the window over 5 frames: interior, then exterior, then gone
    window = (0.0, 10.0, 0.0, 10.0)
    xs = np.array([7.0, 8.0, 8.9, 9.1, 9.9])
    ext = exterior_mask(np.stack([xs, np.full(5, 5.0)], 1), 1.0, window=window)
    np.testing.assert_array_equal(ext, [0, 0, 0, 1, 1])


def test_large_inputs_are_chunked_without_changing_results(monkeypatch):
    from mpd.geometry import masks

    rng = np.random.default_rng(0)
    p = rng.uniform(0, 10, (5_000, 2))
    angle = np.linspace(0, 2 * np.pi, 200)
    ring = np.stack([5 + 3 * np.cos(angle), 5 + 3 * np.sin(angle)], 1)
    whole_d, whole_in = distance_to_polyline(p, ring), inside_polygon(p, ring[:-1])
    monkeypatch.setattr(masks, "_chunk", lambda n_segments: 777)  # many uneven chunks
    d = distance_to_polyline(p, ring)
    np.testing.assert_array_equal(d, whole_d)
    np.testing.assert_array_equal(inside_polygon(p, ring[:-1]), whole_in)
    r = np.linalg.norm(p - 5, axis=1)
    np.testing.assert_allclose(d, np.abs(r - 3), atol=1e-3)
    far = np.abs(r - 3) > 1e-3
    np.testing.assert_array_equal(whole_in[far], (r < 3)[far])
