"""Model (or truth, or tracking) against a reference: relative L2 errors of every curve, tables and figures.

Relative L2 error of a candidate curve f_c against a reference f_r (as in the
paper's Table 1), on the reference's grid x_k (r, lag time or phase) where
both curves are defined (two scalars, the non-affine <v^2> and the mean
rearranging fraction, are compared by their relative error |c / r - 1|):

    e = sqrt( sum_k (f_c(x_k) - f_r(x_k))^2 ) / sqrt( sum_k f_r(x_k)^2 )

f_c is linearly interpolated onto x_k; points outside the candidate's range or
NaN in either curve are left out. All grids are uniform (r bins, lags,
phase bins), so the sums are the integrals up to the same constant factor.
e = 0 for identical curves; e = 1 for f_c = 0.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.inputs import check_trajectories
from analysis.measure import PHASE_COLUMNS, Measurements, Settings, measure, resolve_settings
from mpd.atomic import atomic_output_dir
from mpd.jsonsafe import json_ready

__all__ = ["METRIC_KEYS", "compare", "curve_error", "errors", "relative_l2", "write_into", "write_outputs"]

# Keys of errors[reference][candidate] in metrics.json, each a relative L2 error (dimensionless) or null.
METRIC_KEYS = (
    "rdf", "msd", "msd_nonaffine", "vacf", "vacf_norm", "vacf_nonaffine", "vacf_nonaffine_norm",
    "d2min_distribution", "rearranging_fraction_cycle", "defect_fraction_cycle", "dislocation_fraction_cycle",
    "psi6_cycle", "nn_distance_distribution", "nonaffine_v2", "rearranging_fraction_mean",
)


def relative_l2(candidate, reference) -> float:
    """||candidate - reference||_2 / ||reference||_2 of two curves on the same grid (NaN pairs skipped)."""
    c, r = np.asarray(candidate, np.float64), np.asarray(reference, np.float64)
    if c.shape != r.shape:
        raise ValueError(f"curves on the same grid must have the same shape, got {c.shape} and {r.shape}")
    ok = np.isfinite(c) & np.isfinite(r)
    norm = np.sqrt(np.sum(r[ok] ** 2))
    if not ok.any() or norm == 0:
        return float("nan")
    return float(np.sqrt(np.sum((c[ok] - r[ok]) ** 2)) / norm)


def curve_error(x_ref, f_ref, x_c, f_c) -> float:
    """Relative L2 error of (x_c, f_c) against (x_ref, f_ref) on the reference grid (module docstring)."""
    x_ref, f_ref = np.asarray(x_ref, np.float64), np.asarray(f_ref, np.float64)
    x_c, f_c = np.asarray(x_c, np.float64), np.asarray(f_c, np.float64)
    ok = np.isfinite(x_c) & np.isfinite(f_c)
    x_c, f_c = x_c[ok], f_c[ok]
    if len(x_c) < 2:
        return float("nan")
    order = np.argsort(x_c)
    x_c, f_c = x_c[order], f_c[order]
    inside = (x_ref >= x_c[0]) & (x_ref <= x_c[-1])
    return relative_l2(np.interp(x_ref[inside], x_c, f_c), f_ref[inside])


def _none(value):
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else value


def errors(reference: Measurements, candidate: Measurements) -> dict:
    """Relative L2 errors (METRIC_KEYS, plus rdf_<a-b> for common species pairs) of `candidate` against `reference`."""
    out = {}

    def rdf_pair(pair):
        r = reference.rdf[reference.rdf["pair"] == pair]
        c = candidate.rdf[candidate.rdf["pair"] == pair]
        return curve_error(r["r"], r["g"], c["r"], c["g"]) if len(r) and len(c) else float("nan")

    out["rdf"] = rdf_pair("all")
    for pair in sorted(set(reference.rdf["pair"]) & set(candidate.rdf["pair"]) - {"all"}):
        out[f"rdf_{pair}"] = rdf_pair(pair)
    for key, table, column in (("msd", "msd", "msd"), ("msd_nonaffine", "msd_nonaffine", "msd"),
                               ("vacf", "vacf", "vacf"), ("vacf_norm", "vacf", "vacf_norm"),
                               ("vacf_nonaffine", "vacf_nonaffine", "vacf"),
                               ("vacf_nonaffine_norm", "vacf_nonaffine", "vacf_norm")):
        r, c = getattr(reference, table), getattr(candidate, table)
        out[key] = curve_error(r["t"], r[column], c["t"], c[column])
    out["d2min_distribution"] = curve_error(reference.d2min_hist["log10"], reference.d2min_hist["density"],
                                            candidate.d2min_hist["log10"], candidate.d2min_hist["density"])
    for column in PHASE_COLUMNS:
        key = f"{column}_cycle"
        if reference.by_phase is not None and candidate.by_phase is not None:
            r, c = reference.by_phase, candidate.by_phase
            out[key] = curve_error(r["phase"], r[column], c["phase"], c[column])
        else:  # no shear cycle known: compare the per-frame series over time instead
            r, c = reference.per_frame, candidate.per_frame
            out[key] = curve_error(r["t"], r[column], c["t"], c[column])
    out["psi6_cycle"] = out.pop("psi6_mean_abs_cycle")
    out["nn_distance_distribution"] = curve_error(reference.nn_hist["r"], reference.nn_hist["density"],
                                                  candidate.nn_hist["r"], candidate.nn_hist["density"])
    # relative errors of two scalars: non-affine <v^2> (the VACF at lag 0) and the mean rearranging fraction
    for key, summary_key in (("nonaffine_v2", "nonaffine_v2_um2_s2"),
                             ("rearranging_fraction_mean", "rearranging_fraction_mean")):
        r, c = reference.summary.get(summary_key), candidate.summary.get(summary_key)
        out[key] = abs(c / r - 1.0) if r is not None and c is not None and r != 0 else float("nan")
    return {k: _none(float(v)) for k, v in out.items()}


def write_outputs(out_dir, metrics: dict, measurements: dict[str, Measurements], *, reference: str,
                  map_frame: int | None = None, window=None, figures: bool = True) -> Path:
    """Write metrics.json, tables/<name>/*.csv and (unless `figures` is False) figures/*.png atomically."""
    with atomic_output_dir(out_dir) as tmp:
        write_into(tmp, metrics, measurements, reference=reference, map_frame=map_frame, window=window,
                   figures=figures)
    return Path(out_dir)


def write_into(folder, metrics: dict, measurements: dict[str, Measurements], *, reference: str,
               map_frame: int | None = None, window=None, figures: bool = True) -> Path:
    """`write_outputs` into an existing folder, not atomically (for a caller that publishes it as a whole)."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    for name, m in measurements.items():
        tables = root / "tables" / name
        tables.mkdir(parents=True)
        m.rdf.to_csv(tables / "rdf.csv", index=False)
        m.msd.to_csv(tables / "msd.csv", index=False)
        m.msd_nonaffine.to_csv(tables / "msd_nonaffine.csv", index=False)
        m.vacf.to_csv(tables / "vacf.csv", index=False)
        m.vacf_nonaffine.to_csv(tables / "vacf_nonaffine.csv", index=False)
        m.d2min_hist.to_csv(tables / "d2min_distribution.csv", index=False)
        m.nn_hist.to_csv(tables / "nn_distance_distribution.csv", index=False)
        m.per_frame.to_csv(tables / "per_frame.csv", index=False)
        m.dislocations.to_csv(tables / "dislocations.csv", index=False)
        if m.by_phase is not None:
            m.by_phase.to_csv(tables / "by_phase.csv", index=False)
    if figures:
        from analysis import figures as figure_module  # matplotlib is imported only to draw

        figure_module.all_figures(measurements, root / "figures", reference=reference,
                                  settings=metrics["settings"], map_frame=map_frame, window=window)
    (root / "metrics.json").write_text(json.dumps(json_ready(metrics), indent=2, allow_nan=False) + "\n")
    return root


def common_frames(measurements: dict[str, Measurements]) -> np.ndarray:
    """Frames with a D2min value in every dataset (a rollout covers only part of the recording)."""
    frames = None
    for m in measurements.values():
        pf = m.per_frame
        have = pf.loc[pf["mean_d2min_per_neighbour"].notna(), "frame"] if "mean_d2min_per_neighbour" in pf \
            else pf["frame"]
        these = set(have.astype(int).tolist())
        frames = these if frames is None else frames & these
    return np.array(sorted(frames or []), dtype=np.int64)


def map_frame_of(reference: Measurements, frames=None) -> int | None:
    """Frame shown in the D2min and defect maps: the reference's frame with the largest mean D2min.

    (The mean rather than the rearranging fraction, which is zero in every frame of a
    sample that does not rearrange.) Falls back to the middle frame. `frames`: choose
    among these only (`common_frames`: a frame every dataset has, so no panel is empty);
    all of the reference's when None or empty.
    """
    pf = reference.per_frame
    if frames is not None and len(frames) and pf["frame"].isin(frames).any():
        pf = pf[pf["frame"].isin(frames)].reset_index(drop=True)
    column = "mean_d2min_per_neighbour"
    if column in pf and pf[column].notna().any():
        return int(pf.loc[pf[column].idxmax(), "frame"])
    return int(pf["frame"].iloc[len(pf) // 2]) if len(pf) else None


def metrics_document(measurements: dict[str, Measurements], settings: Settings, references: list[str],
                     *, window=None, extra: dict | None = None) -> dict:
    """The metrics.json content: settings, per-data-set summaries, and errors[reference][candidate][metric]."""
    a = settings.length_scale_um
    doc = {
        "schema_version": 1,
        "reference": references[0],
        "datasets": sorted(measurements),
        "window_um": None if window is None else [float(v) for v in window],
        "settings": {
            **settings.to_dict(),
            "h_um": settings.h_factor * a,
            "d2min_threshold_um2": (settings.threshold_fraction * a) ** 2,
        },
        "summary": {name: m.summary for name, m in measurements.items()},
        "errors": {ref: {name: errors(measurements[ref], m) for name, m in measurements.items() if name != ref}
                   for ref in references if ref in measurements},
    }
    doc.update(extra or {})
    return doc


def compare(
    reference: pd.DataFrame,
    candidates: dict[str, pd.DataFrame],
    out_dir,
    *,
    reference_name: str = "experiment",
    window=None,
    boxes: dict | None = None,
    strain: pd.DataFrame | None = None,
    settings: Settings | dict | None = None,
    also_against: list[str] | None = None,
    figures: bool = True,
) -> dict:
    """Measure the reference and every candidate the same way, write metrics, tables and figures.

    Parameters
    ----------
    reference : trajectory table of the reference (usually the tracked experiment).
    candidates : name -> trajectory table (truth, rollout, ...).
    out_dir : folder written atomically: metrics.json, figures/*.png, tables/<name>/*.csv.
    reference_name : name of the reference in the outputs.
    window : field of view (x_min, x_max, y_min, y_max), µm, shared by all data sets
        unless `boxes` gives one a periodic box (name -> `mpd.geometry.Box` or
        table frame, lx, ly, xy).
    strain : frame, t, strain table (the imposed shear; frames aligned with the data sets).
    settings : `analysis.measure.Settings` (or a dict of its fields); automatic ones are
        resolved from the reference.
    also_against : further data sets used as references too (e.g. ["truth"] for the twin):
        errors[name][other] is then written for them as well.
    figures : draw the figures (False: metrics and tables only, e.g. for parameter sweeps).

    Returns the metrics dict (the content of metrics.json).
    """
    boxes = dict(boxes or {})
    settings = settings if isinstance(settings, Settings) else Settings.from_dict(settings)
    if reference_name in candidates:
        raise ValueError(f"candidate name {reference_name!r} is the reference's name")
    reference = check_trajectories(reference, reference_name)
    settings = resolve_settings(settings, reference, window=window, box=boxes.get(reference_name), strain=strain)
    data = {reference_name: reference, **candidates}
    measurements = {
        name: measure(traj, settings, name=name, window=None if name in boxes else window, box=boxes.get(name),
                      strain=strain)
        for name, traj in data.items()
    }
    references = [reference_name] + [n for n in (also_against or []) if n in measurements and n != reference_name]
    doc = metrics_document(measurements, settings, references, window=window)
    write_outputs(out_dir, doc, measurements, reference=reference_name,
                  map_frame=map_frame_of(measurements[reference_name]), window=window, figures=figures)
    return doc
