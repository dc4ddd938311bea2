"""g(r) on known answers: the ideal gas in an open window (checks the window correction), exact pair counts,
a periodic sheared box, and a lattice's first peak."""
import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import pdist

from analysis.structure import expected_pair_fraction, rdf, window_pair_cdf
from analysis.synthetic import triangular_lattice
from mpd.geometry import Box


def ideal_gas(n_frames, n, window, seed=0, species=False):
    rng = np.random.default_rng(seed)
    x0, x1, y0, y1 = window
    frames = []
    for f in range(n_frames):
        table = pd.DataFrame({"frame": f, "t": 0.1 * f, "particle": np.arange(n),
                              "x": rng.uniform(x0, x1, n), "y": rng.uniform(y0, y1, n)})
        if species:
            table["species"] = rng.integers(0, 2, n)
        frames.append(table)
    return pd.concat(frames, ignore_index=True)


def test_window_pair_distribution_matches_monte_carlo():
    # Two independent uniform points in a 3 x 1 rectangle: the closed form against 400 000 sampled pairs.
    rng = np.random.default_rng(1)
    a, b, m = 3.0, 1.0, 400_000
    d = np.hypot(rng.uniform(0, a, m) - rng.uniform(0, a, m), rng.uniform(0, b, m) - rng.uniform(0, b, m))
    edges = np.linspace(0, 1.0, 21)
    p = expected_pair_fraction(edges, window=(0, a, 0, b))
    observed = np.histogram(d, edges)[0] / m
    assert np.all(np.abs(observed - p) < 5 * np.sqrt(p * (1 - p) / m))
    assert window_pair_cdf(0.0, (0, a, 0, b)) == 0.0
    with pytest.raises(ValueError):
        window_pair_cdf(1.5, (0, a, 0, b))  # beyond the shorter side the closed form does not hold


def test_ideal_gas_in_open_window_has_g_equal_to_one():
    window = (0.0, 60.0, 0.0, 40.0)
    gas = ideal_gas(30, 400, window)
    g = rdf(gas, 30.0, bins=30, window=window)
    assert set(g["pair"]) == {"all"}
    z = (g["g"] - 1.0) / g["g_err"]
    assert np.all(np.abs(z) < 5.0), z.to_numpy()  # every bin within 5 of its standard errors
    assert np.all(g["g_err"] < 0.02)  # ... which are small: the test has power
    # Bins at large r share most pairs, so their errors are correlated: the pooled mean gets a loose bound.
    assert abs(g["n_observed"].sum() / g["n_expected"].sum() - 1.0) < 3 * g["g_err"].mean()
    # Without the window correction (periodic normalisation N(N-1) 2 pi r dr / A) g would sag by >40% at r = 25 µm:
    naive = g["n_observed"] / (30 * 400 * 399 * expected_pair_fraction(np.r_[g["r_lo"], 30.0], box=Box(60, 40)))
    assert naive[g["r"].between(24, 26)].max() < 0.6


def test_partial_ideal_gas_and_species_pairs():
    window = (0.0, 50.0, 0.0, 50.0)
    g = rdf(ideal_gas(20, 300, window, seed=2, species=True), 20.0, bins=20, window=window)
    assert set(g["pair"]) == {"all", "0-0", "0-1", "1-1"}
    for _, part in g.groupby("pair"):
        assert np.all(np.abs(part["g"] - 1.0) < 5 * part["g_err"])


def test_pair_counts_are_exact():
    window = (0.0, 30.0, 0.0, 30.0)
    gas = ideal_gas(1, 300, window, seed=3)
    g = rdf(gas, 15.0, bins=15, window=window)
    brute = np.histogram(pdist(gas[["x", "y"]].to_numpy()), np.linspace(0, 15, 16))[0]
    np.testing.assert_array_equal(g["n_observed"].to_numpy(), 2 * brute)  # ordered pairs


def test_edge_margin_drops_points_and_shrinks_the_window():
    window = (0.0, 40.0, 0.0, 40.0)
    gas = ideal_gas(20, 400, window, seed=4)
    g = rdf(gas, 15.0, bins=15, window=window, edge_margin=5.0)
    assert np.all(np.abs(g["g"] - 1.0) < 5 * g["g_err"])


def test_ideal_gas_in_sheared_periodic_box():
    rng = np.random.default_rng(5)
    lx, ly, n = 50.0, 40.0, 400
    frames = []
    for f, gamma in enumerate(np.linspace(-0.05, 0.05, 20)):
        # Uniform in the parallelogram a = (lx, 0), b = (gamma ly, ly).
        u, v = rng.uniform(0, 1, n), rng.uniform(0, 1, n)
        frames.append(pd.DataFrame({"frame": f, "t": f * 0.1, "particle": np.arange(n),
                                    "x": u * lx + v * gamma * ly, "y": v * ly}))
    boxes = pd.DataFrame({"frame": np.arange(20), "lx": lx, "ly": ly, "xy": np.linspace(-0.05, 0.05, 20) * ly})
    g = rdf(pd.concat(frames), 15.0, bins=15, box=boxes)
    assert np.all(np.abs(g["g"] - 1.0) < 5 * g["g_err"])


def test_triangular_lattice_first_peak_at_the_spacing():
    points = triangular_lattice(30, 34, spacing=2.0)
    window = (points[:, 0].min(), points[:, 0].max(), points[:, 1].min(), points[:, 1].max())
    lattice = pd.DataFrame({"frame": 0, "t": 0.0, "particle": np.arange(len(points)),
                            "x": points[:, 0], "y": points[:, 1]})
    g = rdf(lattice, 5.0, bins=50, window=window)
    assert g.loc[g["g"].idxmax(), "r_lo"] <= 2.0 < g.loc[g["g"].idxmax(), "r_hi"]
    assert np.all(g.loc[g["r_hi"] < 1.99, "g"] == 0.0)
