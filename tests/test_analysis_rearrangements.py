"""D2min and rearrangements on known answers (affine shear: zero; one displaced particle: its D2min per
neighbour is the displacement squared), and the shear-cycle phase."""
import numpy as np
import pandas as pd
import pytest

from analysis.cycle import ShearCycle, fit_cycle, phase_average, phase_of
from analysis.rearrangements import d2min, d2min_histogram, rearrangement_threshold, rearrangements
from analysis.synthetic import sheared_tracks, triangular_lattice

A = 3.0


def lattice_window(points):
    return (points[:, 0].min(), points[:, 0].max(), points[:, 1].min(), points[:, 1].max())


def test_affine_shear_has_zero_d2min_and_no_rearrangement():
    points = triangular_lattice(20, 20, spacing=A)
    table = sheared_tracks(points, np.linspace(0.0, 0.08, 6), 10.0, shear_line_y=12.0)
    d2 = d2min(table, 1.5 * A, lag_frames=2, window=lattice_window(points))
    assert set(d2["frame"]) == {2, 3, 4, 5} and (d2["ref_frame"] == d2["frame"] - 2).all()
    assert d2["d2min"].abs().max() < 1e-20
    assert len(d2) > 0 and (d2["n_neighbours"] == 6).all()
    events = rearrangements(d2, rearrangement_threshold(A), frame_interval_s=0.1)
    assert (events["n_rearranging"] == 0).all() and (events["rate"] == 0).all()


def test_one_displaced_particle_has_d2min_per_neighbour_equal_to_its_displacement_squared():
    points = triangular_lattice(20, 20, spacing=A)
    moved = points.copy()
    centre = int(np.argmin(np.linalg.norm(points - points.mean(0), axis=1)))
    delta = np.array([0.3 * A, 0.1 * A])
    moved[centre] += delta
    table = pd.concat([pd.DataFrame({"frame": f, "t": 0.1 * f, "particle": np.arange(len(q)), "x": q[:, 0],
                                     "y": q[:, 1]}) for f, q in enumerate([points, moved])])
    d2 = d2min(table, 1.5 * A, window=lattice_window(points))
    row = d2.set_index("particle").loc[centre]
    # Its six neighbours sit symmetrically, so the best F is the identity and the residual is delta per bond.
    assert row["d2min_per_neighbour"] == pytest.approx(delta @ delta, rel=1e-9)
    threshold = rearrangement_threshold(A, 0.1)
    assert threshold == pytest.approx((0.1 * A) ** 2)
    flagged = d2.loc[d2["d2min_per_neighbour"] > threshold, "particle"].to_numpy()
    assert centre in flagged
    far = np.linalg.norm(points[flagged] - points[centre], axis=1)
    assert far.max() < 1.5 * A  # only the particle and its first shell
    events = rearrangements(d2, threshold)
    assert events.loc[0, "n_rearranging"] == len(flagged)
    assert events.loc[0, "fraction"] == pytest.approx(len(flagged) / len(d2))


def test_particles_near_the_window_edge_are_excluded():
    points = triangular_lattice(20, 20, spacing=A)
    table = sheared_tracks(points, [0.0, 0.01], 10.0)
    window = lattice_window(points)
    d2 = d2min(table, 1.5 * A, window=window)
    ref = points[d2["particle"].to_numpy()]
    assert np.minimum.reduce([ref[:, 0] - window[0], window[1] - ref[:, 0], ref[:, 1] - window[2],
                              window[3] - ref[:, 1]]).min() >= 1.5 * A


def test_d2min_histogram_is_a_normalised_density():
    d2 = pd.DataFrame({"d2min_per_neighbour": np.r_[np.full(10, 1e-3), np.full(30, 1e-1)] * A**2})
    hist = d2min_histogram(d2, A)
    widths = hist["log10_hi"] - hist["log10_lo"]
    assert (hist["density"] * widths).sum() == pytest.approx(1.0)
    assert hist.loc[hist["count"].idxmax(), "log10_lo"] <= -1 < hist.loc[hist["count"].idxmax(), "log10_hi"]


@pytest.mark.parametrize(("period", "offset"), [(2.0, 0.0), (1.3, 0.3)])
def test_fit_cycle_recovers_period_and_phase(period, offset):
    rng = np.random.default_rng(0)
    t = np.arange(0, 6.0, 0.05)
    strain = 0.04 * np.sin(2 * np.pi * (t / period + offset)) + 0.002 + rng.normal(0, 1e-4, len(t))
    cycle = fit_cycle(t, strain)
    assert cycle.period_s == pytest.approx(period, rel=1e-3)
    assert min(abs(cycle.phase_offset - offset), 1 - abs(cycle.phase_offset - offset)) < 2e-3
    assert cycle.amplitude == pytest.approx(0.04, rel=1e-2)
    # The strain maximum is at phase 1/4.
    t_max = t[np.argmax(strain)]
    assert phase_of(t_max, cycle) == pytest.approx(0.25, abs=0.03)
    assert fit_cycle(t, strain, period_s=period).period_s == period


def test_phase_average_of_a_known_signal():
    t = np.arange(0, 4.0, 0.05)  # two cycles of period 2 s
    cycle = ShearCycle(2.0)
    per_frame = pd.DataFrame({"t": t, "value": np.floor(4 * phase_of(t, cycle))})  # 0, 1, 2, 3 per quarter
    out = phase_average(per_frame, ["value"], cycle, n_bins=4)
    np.testing.assert_allclose(out["value"], [0, 1, 2, 3])
    np.testing.assert_allclose(out["value_sem"], 0.0)
    assert out["n_frames"].sum() == len(t) and (out["n_frames"] == 20).all()
