"""Phase of the shear cycle, and averages of per-frame quantities over phase bins.

Phase convention: the imposed strain is fitted by
gamma(t) ~= gamma_m + gamma_0 sin(2 pi t / P + phi) (least squares, P scanned
on a fine grid and refined), and the phase of time t is
((t / P + phi / 2 pi) mod 1) in [0, 1): phase 0 is the strain crossing its
mean upwards, 0.25 its maximum, 0.5 the downward crossing and 0.75 the
minimum. For the twin (gamma = gamma_0 sin(2 pi t / P)) this is simply
(t / P) mod 1. Without a strain series the caller may give the period P and
the phase is (t / P) mod 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["ShearCycle", "fit_cycle", "phase_average", "phase_of"]


@dataclass(frozen=True)
class ShearCycle:
    """period_s (s); phase_offset (cycles, added to t / period_s); amplitude (strain); mean (strain)."""

    period_s: float
    phase_offset: float = 0.0
    amplitude: float = float("nan")
    mean: float = float("nan")


def _sine_fit(t, y, omega):
    design = np.stack([np.sin(omega * t), np.cos(omega * t), np.ones_like(t)], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    return coef, float(np.sum((design @ coef - y) ** 2))


def fit_cycle(t, strain, period_s: float | None = None) -> ShearCycle:
    """Period, phase, amplitude and mean of a sinusoidal strain series gamma(t) (t in s).

    With `period_s` given only the phase is fitted. Otherwise the period is
    the best of a scan over 2000 frequencies between one cycle per recording
    and the Nyquist frequency, refined by golden-section search; one full
    cycle or more of data is needed for a meaningful period.
    """
    t = np.asarray(t, np.float64)
    y = np.asarray(strain, np.float64)
    good = np.isfinite(t) & np.isfinite(y)
    t, y = t[good], y[good]
    if len(t) < 4:
        raise ValueError("need at least 4 strain samples to fit the shear cycle")
    if period_s is None:
        span = t.max() - t.min()
        dt = np.median(np.diff(np.sort(t)))
        omegas = np.linspace(2 * np.pi / span, np.pi / dt, 2000)
        residuals = np.array([_sine_fit(t, y, w)[1] for w in omegas])
        k = int(np.argmin(residuals))
        lo, hi = omegas[max(k - 1, 0)], omegas[min(k + 1, len(omegas) - 1)]
        g = (np.sqrt(5) - 1) / 2
        for _ in range(60):  # golden section on the bracket around the best grid point
            a, b = hi - g * (hi - lo), lo + g * (hi - lo)
            if _sine_fit(t, y, a)[1] < _sine_fit(t, y, b)[1]:
                hi = b
            else:
                lo = a
        omega = 0.5 * (lo + hi)
        period_s = 2 * np.pi / omega
    omega = 2 * np.pi / period_s
    (s, c, mean), _ = _sine_fit(t, y, omega)
    # s sin(wt) + c cos(wt) = A sin(wt + phi) with A = hypot(s, c), phi = atan2(c, s).
    amplitude = float(np.hypot(s, c))
    phi = float(np.arctan2(c, s)) if amplitude > 0 else 0.0
    # Rounded before the modulo so that a phase of -1e-17 cycles reads 0, not 0.99999...
    return ShearCycle(float(period_s), float(np.round(phi / (2 * np.pi), 12) % 1.0), amplitude, float(mean))


def phase_of(t, cycle: ShearCycle) -> np.ndarray:
    """Phase in [0, 1) of each time t (s)."""
    return (np.asarray(t, np.float64) / cycle.period_s + cycle.phase_offset) % 1.0


def phase_average(per_frame: pd.DataFrame, columns, cycle: ShearCycle, n_bins: int = 8) -> pd.DataFrame:
    """Mean and standard error of `columns` of a per-frame table (with a `t` column) in `n_bins` phase bins.

    Returns one row per bin: phase_lo, phase_hi, phase (bin centre), n_frames,
    and for each column c: c (mean over the frames in the bin, NaNs skipped)
    and c_sem (standard error, std / sqrt(n); NaN with fewer than 2 frames).
    """
    phase = phase_of(per_frame["t"].to_numpy(), cycle)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, phase, side="right") - 1, 0, n_bins - 1)
    out = pd.DataFrame({"phase_lo": edges[:-1], "phase_hi": edges[1:], "phase": 0.5 * (edges[:-1] + edges[1:])})
    out["n_frames"] = np.bincount(idx, minlength=n_bins)
    for column in columns:
        v = per_frame[column].to_numpy(np.float64)
        ok = np.isfinite(v)
        n = np.bincount(idx[ok], minlength=n_bins).astype(float)
        s1 = np.bincount(idx[ok], weights=v[ok], minlength=n_bins)
        s2 = np.bincount(idx[ok], weights=v[ok] ** 2, minlength=n_bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = s1 / n
            var = np.maximum(s2 / n - mean**2, 0.0) * n / (n - 1)
            out[column] = mean
            out[f"{column}_sem"] = np.where(n > 1, np.sqrt(var / n), np.nan)
    return out
