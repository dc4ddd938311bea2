"""The null model, the nearest-neighbour statistic and the fidelity report (analysis.baselines, .structure, .fidelity)."""
import numpy as np
import pandas as pd
import pytest

from analysis.baselines import box_flows, brownian_null, measured_diffusion, observed_flows
from analysis.dynamics import vacf
from analysis.fidelity import TARGETS, fidelity_report, overlap_fraction
from analysis.measure import Settings, measure, resolve_settings
from analysis.structure import nearest_neighbour_distances, nearest_neighbour_histogram
from analysis.synthetic import triangular_lattice
from mpd.geometry.domain import Box

DT = 0.05


def random_walkers(n_frames=60, D=(0.04, 0.02), rate=0.3, seed=0, n=400, box=None):
    """Particles of two species random-walking with diffusion D[s] in a simple shear u = (rate y, 0)."""
    rng = np.random.default_rng(seed)
    x = triangular_lattice(20, 20, spacing=4.0)[:n] + 1.0
    species = np.arange(len(x)) % 2
    sigma = np.sqrt(2 * np.asarray(D)[species] * DT)
    rows = []
    for f in range(n_frames):
        rows.append(pd.DataFrame({"frame": f, "t": f * DT, "particle": np.arange(len(x)), "species": species,
                                  "x": x[:, 0], "y": x[:, 1]}))
        x = x + np.c_[rate * x[:, 1] * DT, np.zeros(len(x))] + sigma[:, None] * rng.normal(size=x.shape)
    return pd.concat(rows, ignore_index=True)


def test_measured_diffusion_recovers_each_species_under_shear():
    traj = random_walkers()
    D = measured_diffusion(traj, observed_flows(traj))
    assert D[0] == pytest.approx(0.04, rel=0.05) and D[1] == pytest.approx(0.02, rel=0.05)


def test_the_null_model_follows_the_data_presence_in_a_window_and_keeps_everyone_in_a_box():
    traj = random_walkers(n_frames=20)
    window = traj[(traj["x"] > 10) & (traj["x"] < 60)]  # particles enter and leave a strip
    frames = range(5, 20)
    data = window[window["frame"].isin(frames)]
    null = brownian_null(data, frames, observed_flows(data), {0: 0.04, 1: 0.02}, seed=1)
    assert set(zip(null["frame"], null["particle"])) == set(zip(data["frame"], data["particle"]))
    first = null.sort_values("frame").drop_duplicates("particle").set_index("particle")
    start = data.sort_values("frame").drop_duplicates("particle").set_index("particle")
    np.testing.assert_allclose(first.loc[start.index, ["x", "y"]], start[["x", "y"]])  # it starts where the data does
    # its steps: the flow plus Brownian noise of the species' D
    again = measured_diffusion(null, observed_flows(null))
    assert again[0] == pytest.approx(0.04, rel=0.2) and again[1] == pytest.approx(0.02, rel=0.2)
    # a periodic box: everyone, every frame, unwrapped and wrapped positions
    lx = ly = 80.0
    boxes = pd.DataFrame({"frame": range(20), "lx": lx, "ly": ly, "xy": 0.3 * ly * np.arange(20) * DT})
    start_box = traj[traj["frame"] == 5].assign(xu=lambda t: t["x"], yu=lambda t: t["y"])
    boxed = brownian_null(start_box, frames, box_flows(boxes, DT), {0: 0.04, 1: 0.02}, box=boxes, dt=DT)
    assert len(boxed) == 15 * traj["particle"].nunique() and {"xu", "yu"} <= set(boxed.columns)
    last = boxed[boxed["frame"] == 19]
    inside = Box(lx, ly, float(boxes["xy"].iloc[19])).wrap(last[["xu", "yu"]].to_numpy())
    np.testing.assert_allclose(last[["x", "y"]].to_numpy(), inside)
    # velocities are the backward differences of the null's own positions
    p = boxed[boxed["particle"] == 3].sort_values("frame")
    np.testing.assert_allclose(p["vx"].to_numpy()[1:], np.diff(p["xu"].to_numpy()) / DT)


def test_nearest_neighbour_distances_of_a_lattice_and_a_periodic_box():
    spacing = 4.0
    lattice = triangular_lattice(10, 10, spacing=spacing)
    traj = pd.DataFrame({"frame": 0, "t": 0.0, "particle": np.arange(len(lattice)), "x": lattice[:, 0],
                         "y": lattice[:, 1]})
    d = nearest_neighbour_distances(traj, 2 * spacing, window=(0, 40, 0, 40))
    np.testing.assert_allclose(d, spacing)
    hist = nearest_neighbour_histogram(d, spacing)
    assert hist.loc[hist["count"].idxmax(), "r_lo"] <= 1.0 <= hist.loc[hist["count"].idxmax(), "r_hi"]
    # two particles across the edge of a sheared periodic cell are neighbours through the image
    box = Box(20.0, 20.0, 5.0)
    pair = pd.DataFrame({"frame": 0, "t": 0.0, "particle": [0, 1], "x": [1.0, 5.5], "y": [0.5, 19.5]})
    np.testing.assert_allclose(nearest_neighbour_distances(pair, 8.0, box=box), np.hypot(0.5, 1.0))
    # a lone particle gets r_max
    assert nearest_neighbour_distances(pair.iloc[:1], 3.0, box=box).tolist() == [3.0]


def test_vacf_of_a_table_without_any_difference_is_empty_not_nan():
    lone = pd.DataFrame({"frame": [0, 2], "t": [0.0, 0.1], "particle": [0, 0], "x": [0.0, 1.0], "y": [0.0, 0.0],
                         "vx": [np.nan, np.nan], "vy": [np.nan, np.nan]})
    assert len(vacf(lone)) == 0


def measured(traj, name, settings):
    return measure(traj, settings, name=name, window=(0, 90, 0, 90))


def test_fidelity_report_meets_misses_and_compares_with_the_null():
    truth = random_walkers(n_frames=30, seed=1)
    settings = resolve_settings(Settings(max_lag_frames=10, d2min_lag_frames=2), truth, window=(0, 90, 0, 90))
    same = measured(truth, "same", settings)
    hot = measured(random_walkers(n_frames=30, D=(0.08, 0.04), seed=2), "hot", settings)
    m_truth = measured(truth, "truth", settings)
    report = fidelity_report(m_truth, {"rollout": same, "null": hot}, completed={"rollout": True})
    rows = {r["metric"]: r for r in report["rows"]}
    assert list(rows) == list(TARGETS) and report["targets"] == TARGETS
    assert rows["rdf"]["values"]["rollout"] == 0.0 and rows["rdf"]["met"]["rollout"]
    assert rows["nonaffine_v2"]["values"]["null"] == pytest.approx(1.0, rel=0.15)  # twice the diffusion
    assert not rows["msd_nonaffine"]["met"]["null"] and rows["msd_nonaffine"]["beats_null"]["rollout"]
    assert "msd_nonaffine" in report["missed"]["null"]
    assert overlap_fraction(m_truth, same) == 0.0
    # a rollout that did not complete meets nothing, whatever its numbers
    failed = fidelity_report(m_truth, {"rollout": same, "null": hot}, completed={"rollout": False})
    assert not failed["met"]["rollout"] and set(failed["missed"]["rollout"]) == set(TARGETS)
