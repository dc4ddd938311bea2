"""Compare tracked trajectories with a known truth (rendered videos).

The truth is ``truth_pixels.parquet`` (docs/data_schema.md): per frame and
particle ``x_px, y_px`` (px), ``vx_px, vy_px`` (px/s), ``in_fov`` and, when
known, ``diameter`` (µm). In each frame, found and true positions are matched
one-to-one, minimising the total distance (Hungarian algorithm) among pairs
closer than the match radius (default: half the smallest true diameter, or
half trackpy's mask diameter without diameters). Then:

* localisation: RMS (and mean, i.e. bias) of found - true position, px,
  over matches whose true particle lies away from the edges (see missed: a
  particle cut by the image edge has a biased centroid whatever the method);
  ``localisation_rms_all_px`` includes them;
* links: a link joins two successive observations of one found trajectory;
  it is correct when both ends are matched to the same true particle;
* velocity: RMS of |v_found - v_true| over matched rows with a finite
  velocity, divided by the RMS true speed over the same rows;
* missed: true particles with ``in_fov`` whose centre lies at least the
  edge margin inside the analysed region (trackpy cannot find a particle
  whose mask would leave the image), in an analysed frame, not matched;
* spurious: found rows matched to no true particle (any truth counts here,
  also a particle whose disk only touches the field of view).
"""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

TRUTH_COLUMNS = ("frame", "particle", "x_px", "y_px", "vx_px", "vy_px", "in_fov")


def match_points(found: np.ndarray, truth: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Optimal one-to-one matching of two point sets within radius: (found index, truth index).

    Maximum number of pairs, then minimum total distance. Candidate pairs
    split into independent clusters; each is solved by the Hungarian
    algorithm, which keeps large frames cheap.
    """
    if len(found) == 0 or len(truth) == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    pairs = cKDTree(found).sparse_distance_matrix(cKDTree(truth), radius, output_type="coo_matrix")
    if pairs.nnz == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    n_found = len(found)
    # One graph over found (0..n_found-1) and truth (n_found..) nodes.
    graph = coo_matrix((np.ones(pairs.nnz), (pairs.row, pairs.col + n_found)),
                       shape=(n_found + len(truth),) * 2)
    _, label = connected_components(graph, directed=False)
    cluster = label[pairs.row]
    order = np.argsort(cluster, kind="stable")
    rows, cols, dist, cluster = pairs.row[order], pairs.col[order], pairs.data[order], cluster[order]
    bounds = np.flatnonzero(np.r_[True, cluster[1:] != cluster[:-1], True])
    out_found, out_truth = [], []
    for start, stop in itertools.pairwise(bounds):
        r, c, d = rows[start:stop], cols[start:stop], dist[start:stop]
        if stop - start == 1:
            out_found.append(r)
            out_truth.append(c)
            continue
        ur, ri = np.unique(r, return_inverse=True)
        uc, ci = np.unique(c, return_inverse=True)
        # Absent pairs cost more than any set of real ones, so the number of
        # real pairs is maximised first.
        big = radius * (len(d) + 1) + 1.0
        cost = np.full((len(ur), len(uc)), big)
        cost[ri, ci] = d
        a, b = linear_sum_assignment(cost)
        real = cost[a, b] < big
        out_found.append(ur[a[real]])
        out_truth.append(uc[b[real]])
    return np.concatenate(out_found).astype(np.int64), np.concatenate(out_truth).astype(np.int64)


def match_frames(found: pd.DataFrame, truth: pd.DataFrame, radius: float) -> pd.DataFrame:
    """Per-frame matches: columns found_row, truth_row (positional indices), frame, dx, dy (px)."""
    pieces = []
    truth_frames = set(truth["frame"].unique().tolist())
    found_positions = found[["x_px", "y_px"]].to_numpy()
    truth_positions = truth[["x_px", "y_px"]].to_numpy()
    found_rows = np.arange(len(found))
    truth_rows = np.arange(len(truth))
    found_frame = found["frame"].to_numpy()
    truth_frame = truth["frame"].to_numpy()
    for frame in np.unique(found_frame):
        if frame not in truth_frames:
            continue
        fr = found_rows[found_frame == frame]
        tr = truth_rows[truth_frame == frame]
        i, j = match_points(found_positions[fr], truth_positions[tr], radius)
        delta = found_positions[fr[i]] - truth_positions[tr[j]]
        pieces.append(pd.DataFrame({"found_row": fr[i], "truth_row": tr[j], "frame": frame,
                                    "dx": delta[:, 0], "dy": delta[:, 1]}))
    if not pieces:
        return pd.DataFrame({"found_row": pd.Series(dtype=np.int64), "truth_row": pd.Series(dtype=np.int64),
                             "frame": pd.Series(dtype=np.int64), "dx": pd.Series(dtype=float),
                             "dy": pd.Series(dtype=float)})
    return pd.concat(pieces, ignore_index=True)


def link_accuracy(found: pd.DataFrame, truth_id_of_row: np.ndarray) -> tuple[int, int]:
    """(correct links, all links) of found trajectories, given each found row's true id (-1: none)."""
    order = np.lexsort((found["frame"].to_numpy(), found["particle"].to_numpy()))
    particle = found["particle"].to_numpy()[order]
    truth_id = truth_id_of_row[order]
    is_link = particle[1:] == particle[:-1]
    correct = is_link & (truth_id[1:] == truth_id[:-1]) & (truth_id[1:] >= 0)
    return int(correct.sum()), int(is_link.sum())


def _rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(values**2))) if len(values) else float("nan")


def accuracy_report(trajectories: pd.DataFrame, truth: pd.DataFrame, *, pixel_size_um: float,
                    frame_numbers, region_px: tuple[float, float, float, float], mask_diameter_px: int,
                    match_radius_px: float | None = None, drift_velocity_um_s: pd.DataFrame | None = None) -> dict:
    """Accuracy of trajectories (x_px, y_px, vx, vy µm/s, frame, particle) against the truth.

    region_px = (x0, y0, width, height) of the analysed region in full-frame
    pixels. drift_velocity_um_s (indexed by frame, columns vx, vy) is
    subtracted from the true velocities when drift was removed from the
    tracked ones.
    """
    missing = [c for c in TRUTH_COLUMNS if c not in truth.columns]
    if missing:
        raise ValueError(f"the truth table lacks the columns {missing}")
    frame_numbers = np.asarray(frame_numbers)
    truth = truth[truth["frame"].isin(frame_numbers)].reset_index(drop=True)
    true_diameter_px = (truth["diameter"].to_numpy(float) / pixel_size_um if "diameter" in truth
                        else np.full(len(truth), float(mask_diameter_px)))
    if match_radius_px is None:
        match_radius_px = 0.5 * float(np.min(true_diameter_px)) if len(truth) else 0.5 * mask_diameter_px
    matches = match_frames(trajectories, truth, match_radius_px)
    report: dict = {"match_radius_px": float(match_radius_px), "frames": len(frame_numbers),
                    "found": len(trajectories), "matched": len(matches)}

    x0, y0, width, height = region_px
    margin = np.maximum(0.5 * true_diameter_px, mask_diameter_px // 2)
    x, y = truth["x_px"].to_numpy(), truth["y_px"].to_numpy()
    inside = (truth["in_fov"].to_numpy(bool)
              & (x >= x0 + margin) & (x <= x0 + width - 1 - margin)
              & (y >= y0 + margin) & (y <= y0 + height - 1 - margin))

    delta = matches[["dx", "dy"]].to_numpy()
    interior = inside[matches["truth_row"].to_numpy()]
    report["localisation_rms_px"] = _rms(np.linalg.norm(delta[interior], axis=1))
    report["localisation_rms_x_px"] = _rms(delta[interior, 0])
    report["localisation_rms_y_px"] = _rms(delta[interior, 1])
    report["localisation_bias_px"] = ([float(v) for v in delta[interior].mean(axis=0)] if interior.any()
                                      else [None, None])
    report["localisation_rms_all_px"] = _rms(np.linalg.norm(delta, axis=1))

    truth_id = np.full(len(trajectories), -1, dtype=np.int64)
    truth_id[matches["found_row"].to_numpy()] = truth["particle"].to_numpy()[matches["truth_row"].to_numpy()]
    correct, links = link_accuracy(trajectories, truth_id)
    report["links"] = links
    report["correct_links"] = correct
    report["fraction_correct_links"] = correct / links if links else float("nan")

    found_v = trajectories[["vx", "vy"]].to_numpy()[matches["found_row"].to_numpy()]
    true_v = truth[["vx_px", "vy_px"]].to_numpy()[matches["truth_row"].to_numpy()] * pixel_size_um
    if drift_velocity_um_s is not None and len(matches):
        true_v = true_v - drift_velocity_um_s.reindex(matches["frame"].to_numpy())[["vx", "vy"]].to_numpy()
    finite = np.all(np.isfinite(found_v), axis=1)
    error = _rms(np.linalg.norm(found_v[finite] - true_v[finite], axis=1))
    speed = _rms(np.linalg.norm(true_v[finite], axis=1))
    report["velocity_rms_error_um_s"] = error
    report["truth_rms_speed_um_s"] = speed
    report["velocity_relative_rms_error"] = error / speed if speed > 0 else float("nan")

    matched_truth = np.zeros(len(truth), dtype=bool)
    matched_truth[matches["truth_row"].to_numpy()] = True
    report["truth_away_from_edges"] = int(inside.sum())
    report["missed"] = int((inside & ~matched_truth).sum())
    report["fraction_missed"] = report["missed"] / int(inside.sum()) if inside.any() else float("nan")
    report["spurious"] = int(len(trajectories) - len(matches))
    report["fraction_spurious"] = report["spurious"] / len(trajectories) if len(trajectories) else float("nan")
    report["edge_margin_px"] = "max(true diameter / 2, trackpy mask radius)"
    return report
