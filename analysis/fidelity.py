"""Fidelity of a model against truth: the targets, which are met, and whether the null model is beaten.

The targets (docs/fidelity.md) are relative errors of a rollout's statistics
against the truth measured the same way (`analysis.compare.errors`), plus the
overlaps the truth does not have:

    rdf <= 0.05; msd, msd_nonaffine <= 0.10; vacf, vacf_nonaffine <= 0.10;
    nonaffine_v2 <= 0.10 (non-affine <v^2> within 10 %);
    d2min_distribution <= 0.20; rearranging_fraction_mean <= 0.25 (within 25 %);
    nn_distance_distribution <= 0.10;
    overlap_fraction <= 1e-4: nearest-neighbour distances more than 5 % below the
    truth's smallest (an overlap the truth does not have). Not "below the
    truth's smallest" itself: that is an extreme value of a finite sample, and a
    process identical to the truth falls below it in about half of all runs;
    5 % closer than the truth ever comes is an overlap, whatever the sample.

A rollout that did not complete (NaN, blow-up) meets nothing. Every value is
reported, met or missed, never filtered: `fidelity_report` returns one row per
target with the value of each candidate, whether it meets the target and
whether it beats the null model (`analysis.baselines`).
"""
from __future__ import annotations

import math

import numpy as np

from analysis.compare import errors
from analysis.measure import Measurements

__all__ = ["OVERLAP_MARGIN", "TARGETS", "fidelity_report", "overlap_fraction"]

#: metric -> largest value that meets the target (docs/fidelity.md)
TARGETS = {
    "rdf": 0.05,
    "msd": 0.10,
    "msd_nonaffine": 0.10,
    "vacf": 0.10,
    "vacf_nonaffine": 0.10,
    "nonaffine_v2": 0.10,
    "d2min_distribution": 0.20,
    "rearranging_fraction_mean": 0.25,
    "nn_distance_distribution": 0.10,
    "overlap_fraction": 1e-4,
}


#: a nearest-neighbour distance below this fraction of the reference's smallest is an overlap
OVERLAP_MARGIN = 0.95


def overlap_fraction(reference: Measurements, candidate: Measurements, margin: float = OVERLAP_MARGIN) -> float:
    """Fraction of the candidate's nearest-neighbour distances below `margin` times the reference's smallest."""
    ref, cand = reference.nn_distances, candidate.nn_distances
    if ref is None or cand is None or len(ref) == 0 or len(cand) == 0:
        return math.nan
    return float(np.mean(cand < margin * ref.min()))


def _counting_error(reference: Measurements, candidate: Measurements) -> float | None:
    n_ref = reference.summary.get("rearranging_independent_events") or 0.0
    n_cand = candidate.summary.get("rearranging_independent_events") or 0.0
    if n_ref <= 0 or n_cand <= 0:
        return None
    return float(math.sqrt(1.0 / n_ref + 1.0 / n_cand))


def fidelity_report(reference: Measurements, candidates: dict[str, Measurements], *,
                    completed: dict[str, bool] | None = None, null: str | None = "null") -> dict:
    """Targets met or missed by each candidate against `reference` (usually the truth).

    completed : candidate -> whether its rollout completed (a diverged one meets nothing).
    null : the name of the null model among the candidates (None: no comparison with it).
    Returns {"targets", "rows": [{metric, target, values, met, beats_null, uncertainty}],
    "met": {candidate: bool}, "missed": {candidate: [metrics]}, "beats_null_everywhere": {candidate: bool}}.
    `uncertainty` (rearranging_fraction_mean only, else None): the counting error of the relative
    error, sqrt(1/n_reference + 1/n_candidate) with n the independent rearrangement events
    (`analysis.measure` summary): a rare-event statistic on a small sample cannot resolve a tight target.
    """
    completed = completed or {}
    values = {}
    for name, m in candidates.items():
        e = errors(reference, m)
        e["overlap_fraction"] = overlap_fraction(reference, m)
        values[name] = {k: (None if e.get(k) is None or not math.isfinite(e[k]) else float(e[k])) for k in TARGETS}
    rows = []
    for metric, target in TARGETS.items():
        row = {"metric": metric, "target": target, "values": {}, "met": {}, "beats_null": {}, "uncertainty": {}}
        null_value = values.get(null, {}).get(metric) if null else None
        for name, table in candidates.items():
            value = values[name][metric]
            ok = completed.get(name, True) and value is not None and value <= target
            row["values"][name] = value
            row["met"][name] = bool(ok)
            row["uncertainty"][name] = (_counting_error(reference, table)
                                        if metric == "rearranging_fraction_mean" else None)
            if null and name != null:
                row["beats_null"][name] = (None if value is None or null_value is None
                                           else bool(value < null_value or (value == 0 and null_value == 0)))
        rows.append(row)
    met = {name: all(r["met"][name] for r in rows) for name in candidates}
    missed = {name: [r["metric"] for r in rows if not r["met"][name]] for name in candidates}
    beats = {name: all(r["beats_null"].get(name) is True for r in rows)
             for name in candidates if null and name != null and null in candidates}
    return {"targets": dict(TARGETS), "rows": rows, "met": met, "missed": missed, "beats_null_everywhere": beats}
