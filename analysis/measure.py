"""Every statistic of one data set (tracked, truth or rollout), measured with one shared set of settings.

The comparison is only fair if every data set is measured the same way: the
same window (or periodic box), the same length scale a, cut-off h and D2min
threshold, the same lags and the same shear phase. `Settings` holds them;
`resolve_settings` fills the automatic ones from the reference data set, and
`measure` computes everything for one data set.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.cycle import ShearCycle, fit_cycle, phase_average, phase_of
from analysis.defects import defects
from analysis.dynamics import msd, nonaffine_msd, nonaffine_vacf, vacf
from analysis.inputs import (
    as_window,
    boxes_per_frame,
    check_trajectories,
    frame_interval,
    position_velocities,
    shrink_window,
)
from analysis.rearrangements import d2min, d2min_histogram, rearrangement_threshold, rearrangements
from analysis.structure import nearest_neighbour_distances, nearest_neighbour_histogram, rdf

__all__ = ["PHASE_COLUMNS", "Measurements", "Settings", "length_scale", "measure", "resolve_settings"]

# Per-frame quantities averaged over the phase of the cycle (and compared between data sets).
PHASE_COLUMNS = ("rearranging_fraction", "defect_fraction", "dislocation_fraction", "psi6_mean_abs")


@dataclass(frozen=True)
class Settings:
    """Analysis settings; None means automatic (resolved from the reference data set, see `resolve_settings`).

    length_scale_um : a, µm; default sqrt(2 / (sqrt(3) rho)) of the reference (`length_scale`).
    edge_margin_um : µm cut from every side of the window for all statistics; default a / 2
        (a tracker does not find centres closer than about a radius to the image edge).
    r_max_um : largest r of g(r), µm; default min(8 a, shorter window side / 2).
    rdf_bins : number of g(r) bins.
    max_lag_frames : largest MSD / VACF lag, frames; default half the recording.
    d2min_lag_frames : D2min reference = frame - lag; default period / 20 in frames (>= 1), 1 without a period.
    h_factor : D2min neighbour cut-off h = h_factor x a (1.5: the first shell of a 2D packing).
    threshold_fraction : rearrangement when D2min per neighbour > (threshold_fraction x a)^2.
    n_phase_bins : bins of the shear phase.
    frame_step : analyse every frame_step-th frame for g(r), defects and D2min.
    box_frame_step : the same for a twin's periodic-box comparison (analysis.stage); default frame_step.
    affine_method, shear_line_y_um : how the imposed deformation is removed (analysis.affine).
    period_s : shear period, s; default fitted to the strain series (analysis.cycle).
    velocity : "positions" (default): every data set's velocities are recomputed from its
        positions with one estimator (`analysis.inputs.position_velocities`), so that the
        VACF compares motion, not estimators; "columns" uses the tables' vx, vy as they are.
    """

    length_scale_um: float | None = None
    edge_margin_um: float | None = None
    r_max_um: float | None = None
    rdf_bins: int = 150
    max_lag_frames: int | None = None
    d2min_lag_frames: int | None = None
    h_factor: float = 1.5
    threshold_fraction: float = 0.1
    n_phase_bins: int = 8
    frame_step: int = 1
    box_frame_step: int | None = None
    affine_method: str = "auto"
    shear_line_y_um: float | None = None
    period_s: float | None = None
    velocity: str = "positions"
    phase_offset: float = field(default=0.0, repr=False)  # cycles; set by resolve_settings from the strain fit

    @classmethod
    def from_dict(cls, values) -> Settings:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values or {}) - names)
        if unknown:
            raise ValueError(f"unknown analysis setting(s) {unknown}; allowed: {sorted(names)}")
        return cls(**dict(values or {}))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Measurements:
    """All statistics of one data set. Tables as returned by the analysis functions; see docs/analysis.md."""

    name: str
    rdf: pd.DataFrame
    msd: pd.DataFrame
    msd_nonaffine: pd.DataFrame
    vacf: pd.DataFrame
    vacf_nonaffine: pd.DataFrame
    d2min: pd.DataFrame
    d2min_hist: pd.DataFrame
    nn_hist: pd.DataFrame
    defect_particles: pd.DataFrame
    dislocations: pd.DataFrame
    per_frame: pd.DataFrame
    by_phase: pd.DataFrame | None
    summary: dict
    nn_distances: np.ndarray | None = None  # every nearest-neighbour distance (µm), for the overlap count


def _domain_area(traj, window, box) -> float:
    if box is not None:
        boxes = boxes_per_frame(box, traj["frame"].unique())
        return float(np.mean([b.area for b in boxes.values()]))
    w = as_window(window)
    return (w.x_max - w.x_min) * (w.y_max - w.y_min)


def _in_window(traj, window):
    w = as_window(window)
    return traj[(traj["x"] >= w.x_min) & (traj["x"] <= w.x_max) & (traj["y"] >= w.y_min) & (traj["y"] <= w.y_max)]


def length_scale(traj: pd.DataFrame, *, window=None, box=None) -> float:
    """a = sqrt(2 / (sqrt(3) rho)) µm, rho the mean number of particles per frame per µm^2 in the domain.

    This is the nearest-neighbour distance of a triangular lattice of the same
    density: exact for a crystal, and close to the mean particle spacing of a
    dense disordered packing, whatever its size ratio or gaps.
    """
    if box is None:
        traj = _in_window(traj, window)
    n = traj.groupby("frame").size().mean()
    return float(np.sqrt(2.0 / (np.sqrt(3.0) * n / _domain_area(traj, window, box))))


def resolve_settings(settings: Settings, reference: pd.DataFrame, *, window=None, box=None,
                     strain: pd.DataFrame | None = None) -> Settings:
    """Fill the automatic settings from the reference data set (and the strain series)."""
    s = settings
    reference = check_trajectories(reference)
    if box is None and window is None:
        window = (reference["x"].min(), reference["x"].max(), reference["y"].min(), reference["y"].max())
    a = s.length_scale_um or length_scale(reference, window=window, box=box)
    margin = s.edge_margin_um if s.edge_margin_um is not None else (0.0 if box is not None else 0.5 * a)
    if not s.length_scale_um and box is None and margin > 0:
        # The density inside the margin: a tracker misses particles cut by the image edge.
        a = length_scale(reference, window=shrink_window(window, margin))
    if box is None:
        w = shrink_window(window, margin)
        r_cap = 0.5 * min(w.x_max - w.x_min, w.y_max - w.y_min)
    else:
        r_cap = 0.45 * min(b.max_cutoff() * 2 for b in boxes_per_frame(box, reference["frame"].unique()).values())
    r_max = s.r_max_um or min(8.0 * a, r_cap)
    period, offset = s.period_s, s.phase_offset
    if strain is not None and len(strain) >= 4:
        cycle = fit_cycle(strain["t"], strain["strain"], s.period_s)
        period, offset = cycle.period_s, cycle.phase_offset
    lag = s.d2min_lag_frames
    if lag is None:
        lag = max(1, round(period / 20.0 / frame_interval(reference))) if period else 1
    max_lag = s.max_lag_frames
    if max_lag is None:
        max_lag = int(reference["frame"].max() - reference["frame"].min() + 1) // 2
    return dataclasses.replace(s, length_scale_um=float(a), edge_margin_um=float(margin), r_max_um=float(r_max),
                               max_lag_frames=int(max_lag), d2min_lag_frames=int(lag), period_s=period,
                               phase_offset=float(offset))


def measure(traj: pd.DataFrame, settings: Settings, *, name: str = "data", window=None, box=None,
            strain: pd.DataFrame | None = None) -> Measurements:
    """All statistics of `traj` with resolved `settings` (see `resolve_settings`).

    window : field of view (µm) of the data set, before the edge margin; or box : periodic cell.
    strain : frame, t, strain table; used for the non-affine motion and the phase.
    """
    s = settings
    if s.length_scale_um is None or s.r_max_um is None or s.d2min_lag_frames is None:
        raise ValueError("settings are not resolved: call resolve_settings first")
    traj = check_trajectories(traj, name)
    if s.velocity == "positions":
        traj = position_velocities(traj)
    elif s.velocity != "columns":
        raise ValueError(f"analysis velocity must be 'positions' or 'columns', got {s.velocity!r}")
    a = s.length_scale_um
    if box is None:
        if window is None:
            window = (traj["x"].min(), traj["x"].max(), traj["y"].min(), traj["y"].max())
        window = shrink_window(window, s.edge_margin_um)
    dt = frame_interval(traj)
    strain_here = strain if strain is not None and s.affine_method != "fit" else None
    if strain_here is not None and not np.isin(traj["frame"].unique(), strain["frame"]).all():
        raise ValueError(f"{name}: the strain series does not cover every frame")

    g = rdf(traj, s.r_max_um, bins=s.rdf_bins, window=window, box=box, frame_step=s.frame_step)
    kw = {"method": s.affine_method, "shear_line_y": s.shear_line_y_um, "max_lag": s.max_lag_frames}
    m_raw = msd(traj, max_lag=s.max_lag_frames)
    m_na = nonaffine_msd(traj, strain_here, **kw)
    v_raw = vacf(traj, max_lag=s.max_lag_frames)
    v_na = nonaffine_vacf(traj, strain_here, **kw)

    h = s.h_factor * a
    threshold = rearrangement_threshold(a, s.threshold_fraction)
    d2 = d2min(traj, h, lag_frames=s.d2min_lag_frames, window=window, box=box, frame_step=s.frame_step)
    hist = d2min_histogram(d2, a)
    nn = nearest_neighbour_distances(traj, 2.0 * a, window=window, box=box, frame_step=s.frame_step)
    nn_hist = nearest_neighbour_histogram(nn, a)
    events = rearrangements(d2, threshold, frame_interval_s=dt)
    particles, defect_frames, disl = defects(traj, window=window, box=box, frame_step=s.frame_step)

    per_frame = defect_frames.copy() if len(defect_frames) else pd.DataFrame(
        {"frame": traj["frame"].unique(), "t": traj.groupby("frame")["t"].first().to_numpy()})
    if len(events):
        ev = events.rename(columns={"fraction": "rearranging_fraction", "rate": "rearrangement_rate_per_s",
                                    "n_particles": "n_d2min"})
        per_frame = per_frame.merge(ev.drop(columns="t"), on="frame", how="outer")
        per_frame["t"] = per_frame["t"].fillna(per_frame["frame"].map(traj.groupby("frame")["t"].first()))
    per_frame = per_frame.sort_values("frame").reset_index(drop=True)
    for column in PHASE_COLUMNS:
        if column not in per_frame.columns:
            per_frame[column] = np.nan
    if strain is not None:
        per_frame["strain"] = per_frame["frame"].map(strain.drop_duplicates("frame").set_index("frame")["strain"])
    by_phase = None
    if s.period_s:
        cycle = ShearCycle(s.period_s, s.phase_offset)
        per_frame["phase"] = phase_of(per_frame["t"].to_numpy(), cycle)
        columns = list(PHASE_COLUMNS) + (["strain"] if "strain" in per_frame else [])
        by_phase = phase_average(per_frame, columns, cycle, s.n_phase_bins)

    total = g[g["pair"] == "all"]
    peak = total.loc[total["g"].idxmax()] if total["g"].notna().any() else None
    mean = lambda c: float(per_frame[c].mean()) if c in per_frame and per_frame[c].notna().any() else None
    summary = {
        "n_rows": len(traj),
        "n_frames": int(traj["frame"].nunique()),
        "n_particles_mean": float(traj.groupby("frame").size().mean()),
        "frame_interval_s": dt,
        "length_scale_own_um": length_scale(traj, window=window, box=box),
        "rdf_peak_r_um": float(peak["r"]) if peak is not None else None,
        "rdf_peak_g": float(peak["g"]) if peak is not None else None,
        "rearranging_fraction_mean": mean("rearranging_fraction"),
        "rearrangement_rate_per_s": mean("rearrangement_rate_per_s"),
        "defect_fraction_mean": mean("defect_fraction"),
        "n_defects_mean": mean("n_defects"),
        "n_dislocations_mean": mean("n_dislocations"),
        "dislocation_fraction_mean": mean("dislocation_fraction"),
        "psi6_mean_abs": mean("psi6_mean_abs"),
        "psi6_global": mean("psi6_global"),
        "d2min_per_neighbour_median_um2": float(d2["d2min_per_neighbour"].median()) if len(d2) else None,
        "nn_distance_min_um": float(nn.min()) if len(nn) else None,
        "nn_distance_p001_um": float(np.quantile(nn, 0.001)) if len(nn) else None,
        "nonaffine_v2_um2_s2": float(v_na["vacf"].iloc[0]) if len(v_na) else None,
        "rearranging_events": int(events["n_rearranging"].sum()) if len(events) else 0,
        # D2min over a lag of L frames flags one event in about L consecutive frames (every frame_step-th analysed)
        "rearranging_independent_events": float(events["n_rearranging"].sum()) * s.frame_step
        / max(s.d2min_lag_frames, 1) if len(events) else 0.0,
    }
    return Measurements(name, g, m_raw, m_na, v_raw, v_na, d2, hist, nn_hist, particles, disl, per_frame, by_phase,
                        summary, nn)
