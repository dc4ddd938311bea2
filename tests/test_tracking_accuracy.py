"""Accuracy metrics against a truth, on cases constructed by hand."""
import numpy as np
import pandas as pd
import pytest

from tracking.accuracy import accuracy_report, link_accuracy, match_points

MPP = 0.5  # µm per pixel


def test_matching_is_optimal_not_greedy():
    # Greedy nearest-first would pair found 0 with truth 1 (distance 0.9) and
    # leave found 1 unmatched; the optimal matching pairs both.
    found = np.array([[0.0, 0.0], [1.9, 0.0]])
    truth = np.array([[-0.95, 0.0], [0.9, 0.0]])
    i, j = match_points(found, truth, radius=1.0)
    assert sorted(zip(i.tolist(), j.tolist(), strict=True)) == [(0, 0), (1, 1)]


def test_matching_respects_the_radius_and_empty_inputs():
    i, j = match_points(np.array([[0.0, 0.0]]), np.array([[3.0, 0.0]]), radius=2.0)
    assert len(i) == len(j) == 0
    i, j = match_points(np.empty((0, 2)), np.array([[3.0, 0.0]]), radius=2.0)
    assert len(i) == 0


def make_truth(n_frames=4):
    """Three particles moving right at 2 px/frame (fps 10: 20 px/s), one near the edge."""
    rows = []
    for frame in range(n_frames):
        for particle, (x, y) in enumerate([(20.0, 20.0), (40.0, 30.0), (60.0, 1.0)]):
            rows.append({"frame": frame, "particle": particle, "x_px": x + 2 * frame, "y_px": y,
                         "vx_px": 20.0, "vy_px": 0.0, "in_fov": True, "diameter": 3.0})
    return pd.DataFrame(rows)


def found_from(truth, dx=0.0, dy=0.0, ids=None):
    found = truth[["frame", "particle", "x_px", "y_px"]].copy()
    found["x_px"] += dx
    found["y_px"] += dy
    if ids is not None:
        found["particle"] = ids
    found["vx"] = truth["vx_px"] * MPP
    found["vy"] = 0.0
    return found.reset_index(drop=True)


def report(found, truth, **kw):
    return accuracy_report(found, truth, pixel_size_um=MPP, frame_numbers=np.arange(4),
                           region_px=(0, 0, 100, 100), mask_diameter_px=5, **kw)


def test_perfect_tracking():
    truth = make_truth()
    r = report(found_from(truth), truth)
    assert r["localisation_rms_px"] == pytest.approx(0.0)
    assert r["fraction_correct_links"] == 1.0
    assert r["links"] == 9
    assert r["velocity_relative_rms_error"] == pytest.approx(0.0)
    assert r["missed"] == 0 and r["spurious"] == 0
    assert r["match_radius_px"] == pytest.approx(3.0)  # half the true diameter, 3 µm = 6 px


def test_known_offset_gives_known_rms_and_bias():
    truth = make_truth()
    r = report(found_from(truth, dx=0.3, dy=-0.4), truth)
    assert r["localisation_rms_px"] == pytest.approx(0.5)
    assert r["localisation_bias_px"] == pytest.approx([0.3, -0.4])


def test_swapped_identity_breaks_exactly_the_links_it_touches():
    truth = make_truth()
    ids = truth["particle"].to_numpy().copy()
    # From frame 2 on, particles 0 and 1 swap ids: links 1->2 of both are wrong.
    late = truth["frame"].to_numpy() >= 2
    ids[late & (truth["particle"].to_numpy() == 0)] = 1
    ids[late & (truth["particle"].to_numpy() == 1)] = 0
    r = report(found_from(truth, ids=ids), truth)
    assert r["links"] == 9
    assert r["correct_links"] == 7


def test_velocity_error_is_relative_to_rms_truth_speed():
    truth = make_truth()
    found = found_from(truth)
    found["vy"] = 0.1 * 20.0 * MPP  # 10 % of the speed, sideways
    r = report(found, truth)
    assert r["velocity_relative_rms_error"] == pytest.approx(0.1)
    assert r["truth_rms_speed_um_s"] == pytest.approx(10.0)


def test_missed_counts_only_truth_away_from_the_edges_and_spurious_any_unmatched():
    truth = make_truth()
    found = found_from(truth)
    # Lose particle 1 in frame 3 and the edge particle 2 everywhere; add a ghost.
    found = found[~((found["particle"] == 1) & (found["frame"] == 3)) & (found["particle"] != 2)]
    ghost = pd.DataFrame({"frame": [0], "particle": [99], "x_px": [80.0], "y_px": [80.0], "vx": [0.0],
                          "vy": [0.0]})
    r = report(pd.concat([found, ghost], ignore_index=True), truth)
    # Particle 2 sits 1 px from the top edge, within the margin: not counted as missed.
    assert r["truth_away_from_edges"] == 8
    assert r["missed"] == 1
    assert r["spurious"] == 1


def test_link_accuracy_counts_unmatched_ends_as_wrong():
    found = pd.DataFrame({"particle": [5, 5, 5], "frame": [0, 1, 2]})
    correct, links = link_accuracy(found, np.array([3, -1, 3]))
    assert (correct, links) == (0, 2)


def test_localisation_headline_leaves_out_particles_cut_by_the_edge():
    truth = make_truth()
    found = found_from(truth)
    found.loc[found["particle"] == 2, "y_px"] += 1.0  # the edge particle's centroid is biased
    r = report(found, truth)
    assert r["localisation_rms_px"] == pytest.approx(0.0)
    assert r["localisation_rms_all_px"] == pytest.approx(np.sqrt(4 / 12))
