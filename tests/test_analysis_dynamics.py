"""MSD and VACF on known answers: exact sums against brute force (with gaps), ballistic and diffusive
log-slopes, an Ornstein-Uhlenbeck decay time, and zero non-affine motion under a purely affine shear."""
import itertools

import numpy as np
import pandas as pd
import pytest

from analysis import dynamics
from analysis.affine import nonaffine_positions, nonaffine_velocities
from analysis.dynamics import msd, nonaffine_msd, nonaffine_vacf, vacf
from analysis.inputs import sorted_segments
from analysis.synthetic import ornstein_uhlenbeck_tracks, sheared_tracks, triangular_lattice


def log_slope(table, column, lo, hi):
    sel = table[(table["lag"] >= lo) & (table["lag"] <= hi)]
    return np.polyfit(np.log(sel["t"]), np.log(sel[column]), 1)[0]


def random_tracks_with_gaps(seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(40):
        n = int(rng.integers(3, 70))
        frames = np.sort(rng.choice(90, n, replace=False))
        rows.append(pd.DataFrame({"frame": frames, "particle": p, "x": rng.normal(size=n).cumsum(),
                                  "y": rng.normal(size=n).cumsum(), "vx": rng.normal(size=n),
                                  "vy": rng.normal(size=n)}))
    table = pd.concat(rows, ignore_index=True)
    table["t"] = table["frame"] * 0.1
    return table


@pytest.mark.parametrize("batch", [4_000_000, 50])
def test_fft_sums_equal_brute_force_over_contiguous_segments(monkeypatch, batch):
    monkeypatch.setattr(dynamics, "_BATCH_ELEMENTS", batch)  # 50 forces many small batches
    table = random_tracks_with_gaps()
    m, v = msd(table, max_lag=25), vacf(table, max_lag=25)
    t, segment, _ = sorted_segments(table)
    xy, uv = t[["x", "y"]].to_numpy(), t[["vx", "vy"]].to_numpy()
    bounds = np.flatnonzero(np.diff(np.r_[-1, segment, segment[-1] + 1]))
    s, c, w = np.zeros(26), np.zeros(26), np.zeros(26)
    for lo, hi in itertools.pairwise(bounds):
        r, u = xy[lo:hi], uv[lo:hi]
        for lag in range(min(26, len(r))):
            s[lag] += ((r[lag:] - r[: len(r) - lag]) ** 2).sum()
            w[lag] += (u[lag:] * u[: len(u) - lag]).sum()
            c[lag] += len(r) - lag
    ok = c > 0
    np.testing.assert_array_equal(m["n"], c[ok])
    np.testing.assert_allclose(m["msd"], s[ok] / c[ok], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(v["vacf"], w[ok] / c[ok], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(m["t"], m["lag"] * 0.1)


def test_msd_equals_trackpy_emsd_without_gaps():
    trackpy = pytest.importorskip("trackpy")
    rng = np.random.default_rng(5)
    n, frames = 30, 50
    pos = rng.normal(size=(frames, n, 2)).cumsum(0)
    f = np.arange(frames)
    table = pd.DataFrame({"frame": np.repeat(f, n), "t": np.repeat(f / 10.0, n), "particle": np.tile(np.arange(n), frames),
                          "x": pos[:, :, 0].ravel(), "y": pos[:, :, 1].ravel()})
    expected = trackpy.emsd(table, mpp=1.0, fps=10.0, max_lagtime=20)  # x, y already in µm: mpp = 1
    ours = msd(table, max_lag=20).set_index("lag")
    np.testing.assert_allclose(ours.loc[1:20, "msd"].to_numpy(), expected.to_numpy(), rtol=1e-10)
    np.testing.assert_allclose(ours.loc[1:20, "t"].to_numpy(), expected.index.to_numpy())


def test_ballistic_tracks_have_log_slope_two():
    rng = np.random.default_rng(1)
    n, frames = 50, 200
    angle = rng.uniform(0, 2 * np.pi, n)  # one speed, random directions: every (segment, origin) weighs the same v^2
    v = 1.7 * np.c_[np.cos(angle), np.sin(angle)]
    f = np.arange(frames)
    table = pd.DataFrame({"frame": np.repeat(f, n), "particle": np.tile(np.arange(n), frames)})
    table["t"] = table["frame"] / 25.0
    table["x"] = 3.0 + v[table["particle"], 0] * table["t"]
    table["y"] = -1.0 + v[table["particle"], 1] * table["t"]
    table = table.sample(frac=0.8, random_state=0)  # gaps: many segments, slopes unchanged
    m = msd(table)
    assert log_slope(m, "msd", 1, 50) == pytest.approx(2.0, abs=1e-6)
    np.testing.assert_allclose(m["msd"], 1.7**2 * m["t"] ** 2, rtol=1e-9)


def test_diffusive_tracks_have_log_slope_one_and_the_right_coefficient():
    rng = np.random.default_rng(2)
    n, frames, dt, d_coef = 300, 400, 0.05, 0.2
    steps = rng.normal(0.0, np.sqrt(2 * d_coef * dt), size=(frames, n, 2))
    pos = steps.cumsum(axis=0)
    f = np.arange(frames)
    table = pd.DataFrame({"frame": np.repeat(f, n), "t": np.repeat(f * dt, n), "particle": np.tile(np.arange(n), frames),
                          "x": pos[:, :, 0].ravel(), "y": pos[:, :, 1].ravel()})
    m = msd(table, max_lag=60)
    assert log_slope(m, "msd", 1, 60) == pytest.approx(1.0, abs=0.03)
    np.testing.assert_allclose(m.loc[m["lag"].between(1, 60), "msd"], 4 * d_coef * m.loc[m["lag"].between(1, 60), "t"],
                               rtol=0.05)


def test_ornstein_uhlenbeck_vacf_decays_at_its_rate():
    tau, fps = 0.4, 50.0
    table = ornstein_uhlenbeck_tracks(300, 600, tau, fps, sigma=2.0, seed=3)
    v = vacf(table, max_lag=150)
    assert v["vacf"].iloc[0] == pytest.approx(2 * 2.0**2, rel=0.02)  # <|v|^2> = 2 sigma^2
    sel = v[(v["t"] > 0) & (v["t"] <= 2 * tau)]
    tau_fit = -1.0 / np.polyfit(sel["t"], np.log(sel["vacf_norm"]), 1)[0]
    assert tau_fit == pytest.approx(tau, rel=0.05)
    assert v.loc[v["t"] > 5 * tau, "vacf_norm"].abs().max() < 0.05


def affine_lattice(shear_line_y=7.3, crop=False):
    points = triangular_lattice(15, 15, spacing=3.0, origin=(-5.0, -2.0))
    frames = 60
    t = np.arange(frames) / 20.0
    gamma = 0.05 * np.sin(2 * np.pi * t / 1.5) + 0.01
    table = sheared_tracks(points, gamma, 20.0, shear_line_y=shear_line_y)
    if crop:  # particles leave and re-enter a window: gaps and new segments
        table = table[table["x"].between(0.0, 30.0)]
    strain = pd.DataFrame({"frame": np.arange(frames), "t": t, "strain": gamma})
    return table, strain


@pytest.mark.parametrize("crop", [False, True])
def test_purely_affine_shear_has_zero_nonaffine_msd(crop):
    table, strain = affine_lattice(crop=crop)
    assert msd(table)["msd"].iloc[1:10].min() > 1e-3  # the raw motion is not zero ...
    for kwargs in ({"strain": strain, "shear_line_y": 7.3}, {"strain": strain}, {"method": "fit"}):
        m = nonaffine_msd(table, **kwargs)
        assert m["msd"].abs().max() < 1e-20, kwargs  # ... the non-affine motion is
    # With the wrong fixed line and no drift removal, a uniform drift remains: the test can fail.
    assert nonaffine_msd(table, strain, shear_line_y=0.0)["msd"].max() > 1e-3


def test_purely_affine_shear_has_zero_nonaffine_velocities():
    table, strain = affine_lattice()
    for kwargs in ({"strain": strain, "shear_line_y": 7.3}, {"strain": strain}, {"method": "fit"}):
        na = nonaffine_velocities(table, **kwargs)
        assert np.abs(na[["vx_na", "vy_na"]].to_numpy()).max() < 1e-10, kwargs
        assert nonaffine_vacf(table, **kwargs)["vacf"].abs().max() < 1e-20
    assert vacf(table)["vacf"].iloc[0] > 1e-3


def test_nonaffine_positions_recover_a_known_nonaffine_motion():
    # Particles advected by the shear flow at their current height plus an independent random walk:
    # x_{k+1} = x_k + (gamma_{k+1} - gamma_k) (y_mid - y_c) + dW_x, y_{k+1} = y_k + dW_y. The non-affine
    # positions must be the starting lattice plus the walk, to round-off.
    rng = np.random.default_rng(4)
    points = triangular_lattice(12, 12, spacing=3.0)
    frames, y_c = 80, 5.0
    gamma = 0.04 * np.sin(np.arange(frames) / 5.0)
    kicks = rng.normal(0, 0.02, (frames, len(points), 2))
    kicks[0] = 0.0
    walk = np.cumsum(kicks, axis=0)
    pos = np.empty((frames, len(points), 2))
    pos[0] = points
    for k in range(frames - 1):
        y_next = pos[k, :, 1] + kicks[k + 1, :, 1]
        pos[k + 1, :, 0] = pos[k, :, 0] + (gamma[k + 1] - gamma[k]) * (0.5 * (pos[k, :, 1] + y_next) - y_c) \
            + kicks[k + 1, :, 0]
        pos[k + 1, :, 1] = y_next
    f = np.arange(frames)
    table = pd.DataFrame({"frame": np.repeat(f, len(points)), "t": np.repeat(f / 10.0, len(points)),
                          "particle": np.tile(np.arange(len(points)), frames),
                          "x": pos[:, :, 0].ravel(), "y": pos[:, :, 1].ravel()})
    strain = pd.DataFrame({"frame": f, "t": f / 10.0, "strain": gamma})
    na = nonaffine_positions(table, strain, shear_line_y=y_c).sort_values(["frame", "particle"])
    expected = (points[None] + walk).reshape(-1, 2)
    np.testing.assert_allclose(na[["x_na", "y_na"]].to_numpy(), expected, atol=1e-12)
    m = nonaffine_msd(table, strain, shear_line_y=y_c, max_lag=20)
    np.testing.assert_allclose(m["msd"].iloc[1:], 2 * 0.02**2 * m["lag"].iloc[1:], rtol=0.1)  # 2 components
    # Removing only the mean instead of knowing y_c changes it by the walk's mean: still close.
    m_drift = nonaffine_msd(table, strain, max_lag=20)
    np.testing.assert_allclose(m_drift["msd"].iloc[1:], m["msd"].iloc[1:], rtol=0.05)


def test_strain_method_requires_a_strain_series():
    table, _ = affine_lattice()
    with pytest.raises(ValueError, match="strain series"):
        nonaffine_msd(table, method="strain")
