"""Statistics of a 3D periodic sample (the star-polymer melts): RDF, MSD and VACF with a third axis."""
import numpy as np
import pandas as pd
import pytest

from analysis.dynamics import msd, vacf
from analysis.structure import rdf


def gas(n_frames=20, n=400, side=10.0, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for f in range(n_frames):
        p = rng.uniform(0, side, (n, 3))
        rows.append(pd.DataFrame({"frame": f, "t": 0.1 * f, "particle": np.arange(n), "species": 0,
                                  "x": p[:, 0], "y": p[:, 1], "z": p[:, 2]}))
    return pd.concat(rows, ignore_index=True)


def test_ideal_gas_has_g_one_in_a_3d_box():
    table = rdf(gas(), 4.0, bins=20, lengths=(10.0, 10.0, 10.0))
    g = table[table["r"] > 1.0]
    assert set(table["pair"]) == {"all"}
    # within 4 standard errors at every r, and 2 % on average
    assert (np.abs(g["g"] - 1) < 4 * g["g_err"]).all()
    assert abs(g["g"].mean() - 1) < 0.02


def test_simple_cubic_lattice_peaks_at_the_spacing_with_six_neighbours():
    side, a = 8.0, 1.0
    grid = np.stack(np.meshgrid(*[np.arange(0, side, a)] * 3, indexing="ij"), -1).reshape(-1, 3) + 0.25
    traj = pd.DataFrame({"frame": 0, "t": 0.0, "particle": np.arange(len(grid)),
                         "x": grid[:, 0], "y": grid[:, 1], "z": grid[:, 2]})
    table = rdf(traj, 1.2, bins=12, lengths=(side, side, side))
    n = len(grid)
    shell = table[(table["r_lo"] < a) & (table["r_hi"] > a)]
    assert shell["n_observed"].sum() == pytest.approx(6 * n)  # ordered pairs: 6 nearest neighbours each
    assert table.loc[table["r_hi"] < a, "n_observed"].sum() == 0


def test_rdf_3d_rejects_a_too_long_range_and_missing_z():
    with pytest.raises(ValueError, match="half the box"):
        rdf(gas(2), 5.0, lengths=(10.0, 10.0, 10.0))
    with pytest.raises(ValueError, match="column 'z'"):
        rdf(gas(2).drop(columns="z"), 4.0, lengths=(10.0, 10.0, 10.0))


def ballistic(velocity=(0.3, -0.2, 0.5), n=5, frames=11, dt=0.5) -> pd.DataFrame:
    v = np.array(velocity)
    rows = []
    for f in range(frames):
        for p in range(n):
            x0 = np.array([p, 2 * p, 3 * p], float)
            x = x0 + v * f * dt
            rows.append({"frame": f, "t": f * dt, "particle": p, "x": x[0] % 4, "y": x[1] % 4, "z": x[2] % 4,
                         "xu": x[0], "yu": x[1], "zu": x[2], "vx": v[0], "vy": v[1], "vz": v[2]})
    return pd.DataFrame(rows)


def test_msd_and_vacf_count_the_third_axis():
    traj, v, dt = ballistic(), np.array([0.3, -0.2, 0.5]), 0.5
    table = msd(traj)
    t = table["lag"].to_numpy() * dt
    np.testing.assert_allclose(table["msd"], (v @ v) * t**2, rtol=1e-9, atol=1e-12)  # unwrapped columns used
    np.testing.assert_allclose(table["msd_z"], v[2] ** 2 * t**2, rtol=1e-9, atol=1e-12)
    correlation = vacf(traj)
    np.testing.assert_allclose(correlation["vacf"], v @ v, rtol=1e-9)


def test_2d_tables_keep_their_columns():
    traj = ballistic().drop(columns=["z", "zu", "vz"])
    assert list(msd(traj).columns) == ["lag", "t", "n", "msd", "msd_x", "msd_y"]
    np.testing.assert_allclose(vacf(traj)["vacf"], 0.3**2 + 0.2**2, rtol=1e-9)
