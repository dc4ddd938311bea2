"""The paper's Table 1: every model's long rollout against the held-back truth, beside the published values.

Metric (the paper's): the relative L2 error ``||c - r||_2 / ||r||_2`` of a
statistic's curve c of a model's rollout against the same curve r of the
held-back truth over the same time span (`analysis.compare.curve_error`, on
the truth's grid):

* ``rdf``: g(r) of all pairs, averaged over the frames, on [0, r_max];
* ``msd``: the ensemble mean squared displacement against lag, lags 1 .. the
  rollout's length;
* ``vacf``: the velocity autocorrelation <v(t + tau) . v(t)> over the same lags.

Each experiment writes one ``comparison.json`` (`comparison_document`); the
table (`comparison_table`, markdown and CSV) is built from those files only,
so it can never disagree with them. The published values (``PAPER_TABLE1``,
Hernández et al., Table 1) stand beside ours with the target of issue 13:
the learned model at or below the paper's errors, every baseline worse than
the learned model on every metric (where one is not, the table says so).
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.compare import curve_error
from analysis.dynamics import msd, vacf
from analysis.structure import rdf
from mpd.atomic import atomic_write_bytes, atomic_write_json

__all__ = ["METRICS", "MODELS", "PAPER_TABLE1", "compare_rollouts", "comparison_document", "comparison_table",
           "read_comparisons", "rollout_errors", "sampling_floor", "twin_comparison", "write_table"]

METRICS = ("rdf", "msd", "vacf")
#: model key -> name in the table (the learned model first, then the baselines)
MODELS = {"learned": "Ours", "gns": "GNS", "gns_sde": "GNS-SDE", "dpd": "DPD"}
#: Published relative L2 errors (paper, Table 1); None: not reported.
PAPER_TABLE1 = {
    "SP11": {"gns": {"rdf": 4.3e-1, "msd": 2.1e6}, "gns_sde": {"rdf": 4.3e-1, "msd": 6.5e5},
             "dpd": {"rdf": 2.3e-1, "msd": 9.5e-1}, "learned": {"rdf": 2.0e-2, "msd": 4.7e-2}},
    "SP51": {"gns": {"rdf": 2.1e-1, "msd": 2.1e1}, "gns_sde": {"rdf": 2.2e-1, "msd": 1.6e7},
             "dpd": {"rdf": 9.6e-2, "msd": 7.6e0}, "learned": {"rdf": 5.3e-2, "msd": 5.3e-2}},
    "colloids": {"learned": {"rdf": 1.15e-1, "msd": None}},
}


def _finite(value) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def rollout_curves(traj: pd.DataFrame, *, r_max: float, bins: int = 60, n_lags: int, lengths=None, box=None,
                   window=None) -> dict[str, pd.DataFrame | None]:
    """The curves the errors compare: RDF (all pairs), MSD and VACF up to ``n_lags`` (None where not formed)."""
    curves: dict[str, pd.DataFrame | None] = {"rdf": None, "msd": None, "vacf": None}
    try:
        curves["rdf"] = rdf(traj, r_max, bins=bins, by_species=False, lengths=lengths, box=box, window=window)
    except ValueError:
        pass
    if traj["frame"].nunique() >= 2 and n_lags >= 1:
        curves["msd"], curves["vacf"] = msd(traj, max_lag=n_lags), vacf(traj, max_lag=n_lags)
    return curves


#: metric -> (abscissa, value) columns of its curve
CURVE_COLUMNS = {"rdf": ("r", "g"), "msd": ("t", "msd"), "vacf": ("t", "vacf")}


def _compared(curve: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The part of a curve its error compares: MSD without lag 0 (zero in both: no information, and it
    would only dilute the norm)."""
    return curve[curve["t"] > 0] if metric == "msd" else curve


def curve_errors(reference: Mapping, candidate: Mapping) -> dict[str, float | None]:
    """Relative L2 errors of `rollout_curves` of a candidate against a reference's (None: no curve)."""
    errors: dict[str, float | None] = {}
    for metric, (x, y) in CURVE_COLUMNS.items():
        ref, cand = reference.get(metric), candidate.get(metric)
        if ref is None or cand is None:
            errors[metric] = None
            continue
        ref, cand = _compared(ref, metric), _compared(cand, metric)
        errors[metric] = _finite(curve_error(ref[x], ref[y], cand[x], cand[y]))
    return errors


def rollout_errors(truth: pd.DataFrame, rollout: pd.DataFrame, *, r_max: float, bins: int = 60,
                   lengths=None, box=None, window=None) -> dict[str, float | None]:
    """Relative L2 errors of one rollout's RDF, MSD and VACF against the truth over the same span.

    truth, rollout: trajectory tables (docs/data_schema.md; x, y (, z), unwrapped
    xu, yu (, zu) where periodic, vx, vy (, vz)), the truth cut to the frames
    the rollout covers. lengths: (lx, ly, lz) of a 3D periodic box; box or
    window: a 2D periodic cell or field of view (as `analysis.structure.rdf`).
    None where a statistic cannot be formed (a diverged, too short rollout).
    """
    where = {"lengths": lengths, "box": box, "window": window}
    n_lags = int(min(truth["frame"].nunique(), rollout["frame"].nunique())) - 1
    reference = rollout_curves(truth, r_max=r_max, bins=bins, n_lags=n_lags, **where)
    return curve_errors(reference, rollout_curves(rollout, r_max=r_max, bins=bins, n_lags=n_lags, **where))


#: Random halvings of the truth's particles that `sampling_floor` averages over.
FLOOR_SPLITS = 4


def sampling_floor(truth: pd.DataFrame, *, r_max: float, bins: int = 60, n_lags: int, lengths=None, box=None,
                   window=None, splits: int = FLOOR_SPLITS, seed: int = 0) -> dict[str, float | None]:
    """The relative L2 sampling noise of the truth's own curves: the error no model of this size can beat.

    The particles are split at random into two halves, each half's curves
    formed, and ||c_a - c_b|| / (2 ||c||) averaged over `splits` halvings: the
    difference of two halves has four times the variance of the whole sample's
    curve, so this estimates the whole curve's relative noise. Two independent
    samples of this size differ by about sqrt(2) times it (a rollout from the
    truth's own starting configuration shares its early noise and can score
    lower): a published error below that is within the noise of this sample.
    An estimate, not a bound. None where a curve cannot be formed.
    """
    where = {"lengths": lengths, "box": box, "window": window}
    full = rollout_curves(truth, r_max=r_max, bins=bins, n_lags=n_lags, **where)
    ids = np.unique(truth["particle"].to_numpy())
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {metric: [] for metric in METRICS}
    for _ in range(splits):
        half = set(rng.permutation(ids)[: len(ids) // 2].tolist())
        chosen = truth["particle"].isin(half)
        a = rollout_curves(truth[chosen], r_max=r_max, bins=bins, n_lags=n_lags, **where)
        b = rollout_curves(truth[~chosen], r_max=r_max, bins=bins, n_lags=n_lags, **where)
        between = curve_errors(b, a)
        for metric in METRICS:
            if between[metric] is not None and full[metric] is not None:
                # ||a - b|| / ||b|| x ||b|| / ||full||: the difference relative to the whole sample's curve
                ratio = _curve_norm(b, metric) / _curve_norm(full, metric)
                values[metric].append(0.5 * between[metric] * ratio)
    return {metric: (float(np.mean(v)) if v else None) for metric, v in values.items()}


def _curve_norm(curves: Mapping, metric: str) -> float:
    values = _compared(curves[metric], metric)[CURVE_COLUMNS[metric][1]]
    return float(np.linalg.norm(values.to_numpy(np.float64)))


def comparison_document(experiment: str, case: str | None, errors: Mapping[str, Mapping | None], *,
                        statuses: Mapping[str, str] | None = None, settings: Mapping | None = None,
                        floor: Mapping[str, float | None] | None = None) -> dict:
    """The content of ``results/{exp}/analysis/comparison.json``.

    errors: model key (``MODELS``) -> `rollout_errors` (None: the model did not
    run or its rollout is unusable). case: the paper's column (``SP11``, ``SP51``,
    ``colloids``) for the published values, or None. Targets: the learned model at
    or below the paper's errors; every baseline worse than the learned model on
    every metric. A missing value is a miss, never a pass. floor: the truth's
    `sampling_floor` per metric (recorded, and a published value below sqrt(2)
    times it is flagged: on this sample it cannot be told from zero; the target
    still counts as missed or met as measured). statuses: model ->
    ``completed`` or ``diverged`` (the rollout stopped early: its errors cover
    only the frames it wrote, so a diverged learned model misses every target
    and a diverged baseline counts as worse, whatever its partial errors).
    """
    unknown = sorted(set(errors) - set(MODELS))
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; known: {sorted(MODELS)}")
    paper = PAPER_TABLE1.get(case, {}) if case else {}
    ours = {model: {metric: _finite((values or {}).get(metric)) for metric in METRICS}
            for model, values in errors.items()}
    statuses = {model: (statuses or {}).get(model, "completed" if errors[model] else "missing") for model in errors}
    usable = {model: statuses[model] == "completed" for model in errors}
    checks = []
    learned = ours.get("learned")
    for metric in METRICS:
        published = paper.get("learned", {}).get(metric)
        if published is not None:
            value = learned.get(metric) if learned else None
            floor_value = (floor or {}).get(metric)
            checks.append({"check": f"learned {metric} at or below the paper's", "metric": metric,
                           "model": "learned", "value": value, "bound": published,
                           "met": value is not None and value <= published and usable.get("learned", False),
                           "below_sampling_floor": floor_value is not None and published < math.sqrt(2) * floor_value})
    for model, values in ours.items():
        if model == "learned":
            continue
        for metric in METRICS:
            value, bound = values[metric], (learned or {}).get(metric)
            if bound is None:
                continue
            # a baseline whose rollout is unusable (None) is worse than a learned model that has a value
            checks.append({"check": f"{MODELS[model]} {metric} worse than the learned model", "metric": metric,
                           "model": model, "value": value, "bound": bound,
                           "met": value is None or value > bound or not usable[model]})
    return {
        "experiment": experiment,
        "case": case,
        "metric": "relative L2 error ||c - r|| / ||r|| of the rollout's curve against the held-back truth's",
        "models": {model: {"name": MODELS[model], "errors": ours[model],
                           "status": statuses[model]}
                   for model in errors},
        "paper": {model: {metric: values.get(metric) for metric in METRICS} for model, values in paper.items()},
        "sampling_floor": {metric: _finite((floor or {}).get(metric)) for metric in METRICS},
        "sampling_floor_note": "the truth's own relative L2 noise (analysis.table1.sampling_floor, an estimate); "
                               "two independent samples of this size differ by about sqrt(2) times it",
        "targets": checks,
        "met": [c["check"] for c in checks if c["met"]],
        "missed": [c["check"] for c in checks if not c["met"]],
        "settings": dict(settings or {}),
    }


def write_comparison(document: dict, path) -> Path:
    """Write ``comparison.json`` atomically; returns its path."""
    atomic_write_json(document, path)
    return Path(path)


def read_comparisons(paths: Iterable) -> list[dict]:
    """The comparison documents at ``paths`` (errors name the file)."""
    documents = []
    for path in paths:
        try:
            document = json.loads(Path(path).read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read the comparison file {path}: {error}; rerun its analysis") from error
        if not isinstance(document, dict) or "models" not in document:
            raise ValueError(f"{path} is not a comparison file (no 'models'); rerun its analysis")
        documents.append(document)
    return documents


def comparison_table(documents: Iterable[Mapping]) -> pd.DataFrame:
    """One row per (experiment, metric); per model our error and, where published, the paper's."""
    documents = list(documents)
    rows = []
    for document in documents:
        models = [m for m in MODELS if m in document["models"] or m in document.get("paper", {})]
        for metric in METRICS:
            row = {"experiment": document["experiment"], "case": document.get("case") or "", "metric": metric}
            for model in models:
                entry = document["models"].get(model, {})
                ours = entry.get("errors", {}).get(metric)
                row[f"{MODELS[model]}"] = ours
                row[f"{MODELS[model]} (paper)"] = document.get("paper", {}).get(model, {}).get(metric)
            row["truth sampling floor"] = (document.get("sampling_floor") or {}).get(metric)
            rows.append(row)
    table = pd.DataFrame(rows)
    # each model's rollout status, last: a value of a diverged rollout covers only the frames before it
    for model, name in MODELS.items():
        statuses = [d["models"].get(model, {}).get("status", "") for d in documents for _ in METRICS]
        if any(statuses) and len(statuses) == len(table):
            table[f"{name} rollout"] = statuses
    return table


def _format(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.3g}"


def write_table(documents: list[Mapping], markdown_path, csv_path) -> pd.DataFrame:
    """Write the table as CSV and markdown (with each experiment's missed targets listed); returns it."""
    table = comparison_table(documents)
    atomic_write_bytes(table.to_csv(index=False).encode(), csv_path)
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(_format(v) if not isinstance(v, str) else v for v in row.to_numpy()) + " |")
    lines.append("")
    for document in documents:
        missed = document.get("missed", [])
        verdict = "every target met" if not missed else "missed: " + "; ".join(missed)
        lines.append(f"- {document['experiment']}: {verdict}")
        unresolvable = [c["check"] for c in document.get("targets", []) if c.get("below_sampling_floor")]
        if unresolvable:
            lines.append(f"- {document['experiment']}: within the truth's sampling noise (below sqrt(2) x its floor, "
                         f"what two independent samples of this size differ by): {'; '.join(unresolvable)}")
        for model, entry in document["models"].items():
            if entry.get("status") not in ("completed", None):
                lines.append(f"- {document['experiment']}: the {MODELS[model]} rollout {entry['status']}; its "
                             f"errors cover only the frames before")
    atomic_write_bytes(("\n".join(lines) + "\n").encode(), markdown_path)
    return table



def compare_rollouts(experiment: str, case: str | None, truth_path, metadata_path,
                     rollouts: Mapping[str, tuple], out_dir, settings: Mapping | None = None, *,
                     comparison_path=None) -> dict:
    """Compare every model's rollout with the held-back truth; returns the comparison document.

    rollouts: model key -> (rollout.parquet, rollout_status.json) of a simulated
    bulk sample (3D periodic box, lengths from the truth's metadata). The truth is
    cut to the frames the `mpd.horizon` split rolls out (``settings``:
    train_frames, rollout_factor; rdf_r_max (default 0.45 of the shortest box
    side), rdf_bins (60)). Writes the folder ``out_dir`` atomically
    (``results/{exp}/analysis/comparison/``: ``comparison.png``, every model's
    curves beside the truth's with the missed targets under it, and
    ``tables/{model}_{rdf,msd,vacf}.csv``), then the document to
    ``comparison_path`` (default ``comparison.json`` beside ``out_dir``).
    """
    from analysis.figures import figure_note, model_comparison_figure
    from mpd.atomic import atomic_output_dir
    from mpd.geometry.particles import load_bulk_truth
    from mpd.horizon import comparison_settings

    settings = comparison_settings(settings)
    bulk = load_bulk_truth(truth_path, metadata_path, settings)
    truth, frames, split, lengths, metadata = bulk.table, bulk.frames, bulk.split, bulk.lengths, bulk.metadata
    held = truth[(truth["frame"] >= frames[split.start]) & (truth["frame"] <= frames[split.end])]
    r_max = float(settings["rdf_r_max"] or 0.45 * float(lengths.min()))
    bins = int(settings["rdf_bins"])
    where = {"lengths": lengths} if len(lengths) == 3 else {"box": _box_2d(lengths)}
    curves = {"truth": rollout_curves(held, r_max=r_max, bins=bins, n_lags=split.rollout_frames, **where)}
    errors, statuses = {}, {}
    for model, (rollout_path, status_path) in rollouts.items():
        status = json.loads(Path(status_path).read_text())
        statuses[model] = status.get("status", "unknown")
        rollout = pd.read_parquet(rollout_path)
        if rollout["frame"].nunique() < 2:
            errors[model], curves[model] = None, {}
            continue
        curves[model] = rollout_curves(rollout, r_max=r_max, bins=bins, n_lags=split.rollout_frames, **where)
        errors[model] = curve_errors(curves["truth"], curves[model])
    floor = sampling_floor(held, r_max=r_max, bins=bins, n_lags=split.rollout_frames, **where)
    document = comparison_document(experiment, case, errors, statuses=statuses, settings={
        **split.to_dict(), "rdf_r_max": r_max, "rdf_bins": bins,
        "units": metadata.get("units", "µm, s")}, floor=floor)
    missed = document["missed"]
    note = ("every target met" if not missed else "missed: " + "; ".join(missed)) + " | rollouts: " + ", ".join(
        f"{MODELS[m]} {s}" for m, s in statuses.items())
    with atomic_output_dir(out_dir) as tmp:
        (tmp / "tables").mkdir()
        for key, model_curves in curves.items():
            for metric, table in model_curves.items():
                if table is not None:
                    table.to_csv(tmp / "tables" / f"{key}_{metric}.csv", index=False)
        units = ("σ", "τ") if metadata.get("units") == "lj" else ("µm", "s")
        named = {MODELS.get(key, key): model_curves for key, model_curves in curves.items()}
        with figure_note(note):
            model_comparison_figure(named, tmp / "comparison.png", units=units)
    atomic_write_json(document, comparison_path or Path(out_dir).parent / "comparison.json")
    return document


def _box_2d(lengths):
    from mpd.geometry.domain import Box

    return Box(float(lengths[0]), float(lengths[1]))


def twin_comparison(experiment: str, box_metrics_path, comparison_path) -> dict:
    """The colloid twin's row of Table 1: the learned model's periodic-box rollout against the truth.

    Read from the analysis stage's ``analysis/box/metrics.json`` (errors of the
    rollout 25 times the training span in the twin's sheared periodic box,
    `analysis.compare`), beside the paper's colloid value. The baselines are
    not run on the twin: they take an orthorhombic box, not the twin's
    deforming one (docs/comparison.md); the document says so.
    """
    try:
        metrics = json.loads(Path(box_metrics_path).read_text())
        errors = metrics["errors"]["truth"]["rollout"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{box_metrics_path} has no truth-versus-rollout errors ({error}); rerun the twin's "
                         f"analysis") from error
    document = comparison_document(experiment, "colloids", {"learned": errors}, statuses={"learned": "completed"},
                                   settings={"domain": "periodic box (sheared), rollout 25 x the training span",
                                             "source": str(box_metrics_path),
                                             "baselines": "not run: the baselines take an orthorhombic box, not "
                                                          "the twin's deforming one"})
    atomic_write_json(document, comparison_path)
    return document
