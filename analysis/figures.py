"""Figures of a comparison (PNG); one function per figure, captions in workflow/report/<figure>.rst.

Uses matplotlib's object API (`matplotlib.figure.Figure`, Agg canvas), never
pyplot, so no display or global state is needed on a cluster node.
"""
from __future__ import annotations

import contextlib
import contextvars
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from analysis.measure import Measurements

__all__ = ["FIGURES", "all_figures", "colours", "fidelity_figure", "figure_note", "model_comparison_figure",
           "training_figure"]

FIGURES = ("rdf", "msd", "vacf", "d2min_distribution", "nn_distance", "d2min_map", "defect_map", "cycle")
_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def colours(names, reference: str) -> dict[str, str]:
    """Reference in black, the others from a fixed palette in order."""
    out, k = {}, 0
    for name in names:
        if name == reference:
            out[name] = "black"
        else:
            out[name] = _PALETTE[k % len(_PALETTE)]
            k += 1
    return out


_NOTE: contextvars.ContextVar[str | None] = contextvars.ContextVar("figure_note", default=None)


@contextlib.contextmanager
def figure_note(note: str | None):
    """Every figure saved inside the block carries `note` under it (the rollout's status and verdict)."""
    token = _NOTE.set(note)
    try:
        yield
    finally:
        _NOTE.reset(token)


def _save(fig: Figure, path: Path) -> None:
    note = _NOTE.get()
    if note:
        # a rollout that diverged or missed its targets says so on the figure itself
        alarming = any(word in note for word in ("DIVERGED", "missed", "not analysed"))
        fig.text(0.0, -0.02, note, fontsize=7, ha="left", va="top", wrap=True,
                 color="crimson" if alarming else "dimgray")
    fig.savefig(path, dpi=120, bbox_inches="tight")


def rdf_figure(ms: dict[str, Measurements], path: Path, reference: str, a: float) -> None:
    pairs = ["all"] + sorted({p for m in ms.values() for p in m.rdf["pair"].unique()} - {"all"})
    col = colours(ms, reference)
    fig = Figure(figsize=(4.2 * len(pairs), 3.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(pairs), sharey=True))
    for ax, pair in zip(axes, pairs):
        for name, m in ms.items():
            g = m.rdf[m.rdf["pair"] == pair]
            if len(g):
                ax.plot(g["r"] / a, g["g"], color=col[name], lw=1.2 if name == reference else 1.0, label=name)
        ax.axhline(1.0, color="grey", lw=0.6, ls=":")
        ax.set_xlabel("r / a")
        ax.set_title("all particles" if pair == "all" else f"species {pair}")
    axes[0].set_ylabel("g(r)")
    axes[0].legend(frameon=False)
    _save(fig, path)


def _loglog_guides(ax, t, y):
    """Power laws of slope 1 and 2 through the middle of the reference curve, offset below it by 2x."""
    ok = (np.asarray(t) > 0) & np.isfinite(y) & (np.asarray(y) > 0)
    t, y = np.asarray(t)[ok], np.asarray(y)[ok]
    if len(t) < 2:
        return
    t_mid, y_mid = t[len(t) // 2], y[len(t) // 2]
    for slope, ls in ((1, "--"), (2, ":")):
        ax.plot(t, 0.5 * y_mid * (t / t_mid) ** slope, color="grey", lw=0.7, ls=ls, label=f"slope {slope}")


def msd_figure(ms, path, reference):
    col = colours(ms, reference)
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, table, title in ((axes[0], "msd", "raw (affine shear included)"),
                             (axes[1], "msd_nonaffine", "non-affine (imposed shear removed)")):
        for name, m in ms.items():
            d = getattr(m, table)
            d = d[d["t"] > 0]
            ax.loglog(d["t"], d["msd"], color=col[name], label=name)
        d = getattr(ms[reference], table)
        d = d[d["t"] > 0]
        _loglog_guides(ax, d["t"].to_numpy(), d["msd"].to_numpy())
        ax.set_xlabel("lag time (s)")
        ax.set_title(title)
    axes[0].set_ylabel("MSD (µm²)")
    axes[0].legend(frameon=False, fontsize=8)
    _save(fig, path)


def vacf_figure(ms, path, reference):
    col = colours(ms, reference)
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, table, title in ((axes[0], "vacf", "raw"), (axes[1], "vacf_nonaffine", "non-affine")):
        for name, m in ms.items():
            d = getattr(m, table)
            ax.plot(d["t"], d["vacf_norm"], color=col[name], marker=".", ms=3, label=name)
        ax.axhline(0.0, color="grey", lw=0.6)
        ax.set_xlabel("lag time (s)")
        ax.set_title(title)
    axes[0].set_ylabel("VACF / VACF(0)")
    axes[0].legend(frameon=False)
    _save(fig, path)


def d2min_distribution_figure(ms, path, reference, threshold_fraction):
    col = colours(ms, reference)
    fig = Figure(figsize=(5, 3.6), layout="constrained")
    ax = fig.subplots()
    for name, m in ms.items():
        ax.plot(m.d2min_hist["log10"], m.d2min_hist["density"], color=col[name], label=name)
    ax.axvline(np.log10(threshold_fraction**2), color="grey", ls="--", lw=0.8, label="rearrangement threshold")
    ax.set_xlabel("log10( D²min per neighbour / a² )")
    ax.set_ylabel("probability density")
    ax.legend(frameon=False, fontsize=8)
    _save(fig, path)


def nn_distance_figure(ms, path, reference):
    col = colours(ms, reference)
    fig = Figure(figsize=(5, 3.6), layout="constrained")
    ax = fig.subplots()
    for name, m in ms.items():
        ax.plot(m.nn_hist["r"], m.nn_hist["density"], color=col[name], label=name)
    ax.set_xlabel("nearest-neighbour distance / a")
    ax.set_ylabel("probability density")
    ax.legend(frameon=False, fontsize=8)
    _save(fig, path)


def fidelity_figure(report: dict, path: Path, title: str = "") -> None:
    """Scoreboard of a `analysis.fidelity.fidelity_report`: each metric's error per candidate against its target.

    Bars are error / target (log scale): below the line at 1 the target is met.
    Whiskers: the counting error where the report gives one (rearrangements).
    """
    rows = report["rows"]
    names = list(rows[0]["values"]) if rows else []
    col = colours(names, reference="")
    fig = Figure(figsize=(max(6.0, 0.75 * len(rows) * max(len(names), 1)), 3.8), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(len(names), 1)
    for k, name in enumerate(names):
        ratio = [(r["values"][name] / r["target"]) if r["values"][name] is not None else np.nan for r in rows]
        ratio = np.maximum(np.asarray(ratio, float), 1e-3)
        x = np.arange(len(rows)) + (k - (len(names) - 1) / 2) * width
        bars = ax.bar(x, ratio, width=width, color=col[name], label=name)
        # a rare-event statistic's counting error: the target is only as resolved as this bar
        for xk, rk, r in zip(x, ratio, rows):
            error = (r.get("uncertainty") or {}).get(name)
            if error is not None and np.isfinite(rk):
                low = max(rk - error / r["target"], 1e-3)
                ax.errorbar(xk, rk, yerr=[[rk - low], [error / r["target"]]], color="black", capsize=3, lw=0.8)
        for bar, r in zip(bars, rows):
            if not r["met"][name]:
                bar.set_hatch("///")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(rows)))
    ax.set_xticklabels([r["metric"] for r in rows], rotation=40, ha="right", fontsize=8)
    ax.set_ylabel("error / target  (< 1: met)")
    ax.set_title(title or "fidelity against truth (hatched: target missed)", fontsize=9)
    ax.legend(frameon=False, fontsize=8)
    _save(fig, path)


def training_figure(log, path: Path) -> None:
    """Training curves from training_log.csv (a DataFrame): the likelihood per epoch (train, validation)
    and, when trained with it, the cage objective (docs/training.md)."""
    has_cage = "val_cage" in log and log["val_cage"].notna().any()
    fig = Figure(figsize=(9.0 if has_cage else 5.0, 3.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, 2 if has_cage else 1))
    epochs = log["epoch"].to_numpy()
    for column, colour in (("train_loss", _PALETTE[0]), ("val_loss", "black")):
        if column in log:
            axes[0].plot(epochs, log[column], color=colour, label=column.replace("_", " "))
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("negative log-likelihood per particle")
    axes[0].legend(frameon=False, fontsize=8)
    if has_cage:
        for column, colour in (("train_cage", _PALETTE[0]), ("val_cage", "black")):
            ok = log[column].notna() & (log[column] > 0)
            axes[1].plot(epochs[ok], log.loc[ok, column], color=colour, label=column.replace("_", " "))
        axes[1].set_yscale("log")
        axes[1].set_xlabel("epoch")
        axes[1].set_ylabel("cage objective: mean (log model / data)^2")
        axes[1].legend(frameon=False, fontsize=8)
    _save(fig, path)


def _panels(n):
    fig = Figure(figsize=(3.8 * n, 3.9), layout="constrained")
    return fig, np.atleast_1d(fig.subplots(1, n, sharex=True, sharey=True))


def _frame_box(ax, window):
    if window is not None:
        x0, x1, y0, y1 = window
        ax.plot([x0, x1, x1, x0, x0], [y0, y0, y1, y1, y0], color="grey", lw=0.6)


def d2min_map_figure(ms, path, frame, a, threshold_fraction, window):
    fig, axes = _panels(len(ms))
    lo, hi = -5.0, 0.0
    mappable = None
    for ax, (name, m) in zip(axes, ms.items()):
        d = m.d2min[m.d2min["frame"] == frame]
        if len(d):
            v = np.log10(np.maximum(d["d2min_per_neighbour"].to_numpy() / a**2, 1e-12))
            mappable = ax.scatter(d["x"], d["y"], c=v, s=10, cmap="viridis", vmin=lo, vmax=hi)
            flag = v > np.log10(threshold_fraction**2)
            ax.scatter(d["x"][flag], d["y"][flag], s=40, facecolors="none", edgecolors="red", lw=0.8)
        _frame_box(ax, window)
        ax.set_title(f"{name}: frame {frame}")
        ax.set_aspect("equal")
        ax.set_xlabel("x (µm)")
    axes[0].set_ylabel("y (µm)")
    if mappable is not None:
        fig.colorbar(mappable, ax=list(axes), label="log10( D²min per neighbour / a² )", shrink=0.8)
    _save(fig, path)


def defect_map_figure(ms, path, frame, window):
    fig, axes = _panels(len(ms))
    colour_of = {5: "#d62728", 6: "#dddddd", 7: "#1f77b4"}
    for ax, (name, m) in zip(axes, ms.items()):
        p = m.defect_particles
        p = p[p["frame"] == frame] if len(p) else p
        if len(p):
            valid = p["valid"].to_numpy(bool)
            z = p["n_sides"].to_numpy()
            ax.scatter(p["x"][~valid], p["y"][~valid], s=8, facecolors="none", edgecolors="#bbbbbb", lw=0.5)
            c = [colour_of.get(int(k), "#ff7f0e") for k in z[valid]]
            ax.scatter(p["x"][valid], p["y"][valid], s=10, c=c)
            dl = m.dislocations[m.dislocations["frame"] == frame]
            ax.scatter(dl["x"], dl["y"], s=60, marker="x", color="black", lw=1.2)
        _frame_box(ax, window)
        ax.set_title(f"{name}: frame {frame}")
        ax.set_aspect("equal")
        ax.set_xlabel("x (µm)")
    axes[0].set_ylabel("y (µm)")
    _save(fig, path)


def cycle_figure(ms, path, reference):
    col = colours(ms, reference)
    rows = [("strain", "imposed strain"), ("rearranging_fraction", "rearranging fraction"),
            ("defect_fraction", "defect fraction (z≠6)"), ("dislocation_fraction", "dislocations per particle"),
            ("psi6_mean_abs", "⟨|ψ6|⟩")]
    rows = [r for r in rows if any(r[0] in m.per_frame for m in ms.values())]
    has_phase = any(m.by_phase is not None for m in ms.values())
    fig = Figure(figsize=(10 if has_phase else 5.5, 2.0 * len(rows)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(rows), 2 if has_phase else 1, sharex="col", squeeze=False))
    for k, (column, label) in enumerate(rows):
        ax = axes[k, 0]
        for name, m in ms.items():
            if column in m.per_frame and m.per_frame[column].notna().any():
                ax.plot(m.per_frame["t"], m.per_frame[column], color=col[name], lw=0.9, label=name)
        ax.set_ylabel(label, fontsize=8)
        if has_phase:
            ax = axes[k, 1]
            for name, m in ms.items():
                b = m.by_phase
                if b is not None and column in b and b[column].notna().any():
                    ax.errorbar(b["phase"], b[column], yerr=b[f"{column}_sem"], color=col[name], marker="o", ms=3,
                                lw=0.9, capsize=2)
    axes[-1, 0].set_xlabel("time (s)")
    if has_phase:
        axes[-1, 1].set_xlabel("phase of the shear cycle")
        axes[0, 1].set_title("averaged over cycles", fontsize=9)
    axes[0, 0].set_title("per frame", fontsize=9)
    axes[0, 0].legend(frameon=False, fontsize=7)
    _save(fig, path)


def all_figures(ms: dict[str, Measurements], folder: Path, *, reference: str, settings: dict,
                map_frame: int | None, window=None) -> list[Path]:
    """Write every figure of FIGURES as folder/<name>.png; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    a, fraction = settings["length_scale_um"], settings["threshold_fraction"]
    paths = {name: folder / f"{name}.png" for name in FIGURES}
    rdf_figure(ms, paths["rdf"], reference, a)
    msd_figure(ms, paths["msd"], reference)
    vacf_figure(ms, paths["vacf"], reference)
    d2min_distribution_figure(ms, paths["d2min_distribution"], reference, fraction)
    nn_distance_figure(ms, paths["nn_distance"], reference)
    d2min_map_figure(ms, paths["d2min_map"], map_frame, a, fraction, window)
    defect_map_figure(ms, paths["defect_map"], map_frame, window)
    cycle_figure(ms, paths["cycle"], reference)
    return list(paths.values())


def model_comparison_figure(curves: dict[str, dict], path: Path, reference: str = "truth",
                            units: tuple[str, str] = ("σ", "τ")) -> None:
    """RDF, MSD and VACF of every model's rollout beside the held-back truth (analysis.table1).

    curves: name -> {"rdf": table (r, g), "msd": table (t, msd), "vacf": table (t, vacf)}, any of them
    None where a model's rollout could not give it.
    """
    length, time = units
    col = colours(curves, reference)
    fig = Figure(figsize=(12, 3.6), layout="constrained")
    ax_rdf, ax_msd, ax_vacf = fig.subplots(1, 3)
    for name, c in curves.items():
        width = 1.6 if name == reference else 1.0
        if c.get("rdf") is not None:
            ax_rdf.plot(c["rdf"]["r"], c["rdf"]["g"], color=col[name], lw=width, label=name)
        if c.get("msd") is not None:
            d = c["msd"][c["msd"]["t"] > 0]
            ax_msd.loglog(d["t"], d["msd"], color=col[name], lw=width, label=name)
        if c.get("vacf") is not None:
            ax_vacf.plot(c["vacf"]["t"], c["vacf"]["vacf"], color=col[name], lw=width, label=name)
    ax_rdf.axhline(1.0, color="grey", lw=0.6, ls=":")
    ax_rdf.set(xlabel=f"r ({length})", ylabel="g(r)", title="radial distribution")
    ax_msd.set(xlabel=f"lag ({time})", ylabel=f"MSD ({length}²)", title="mean squared displacement")
    ax_vacf.axhline(0.0, color="grey", lw=0.6)
    ax_vacf.set(xlabel=f"lag ({time})", ylabel=f"<v(t)·v(0)> ({length}²/{time}²)", title="velocity autocorrelation")
    ax_rdf.legend(frameon=False, fontsize=8)
    _save(fig, path)
