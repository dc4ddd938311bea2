"""Calibration of a trained model's temperature and transport against its training data (docs/training.md).

The one-step likelihood fits what happens within one frame. Two things it does
not pin down are calibrated afterwards, each by one scalar that keeps the
model's structure (exact fluctuation-dissipation balance, conservation):

* **k_B** (every noise, at its fluctuation-dissipation ratio): the temperature
  a rollout settles at. In a monolayer `mpd.cage.calibrate_temperature` matches
  the relative cage motion; in a closed periodic fluid
  `calibrate_closed_fluid` matches the kinetic energy of settled rollouts.
* **the mobility scale s** (M -> s M, friction and noise variance together,
  `mpd.model.networks.NoiseAmplitudes`): how fast velocities decorrelate, and
  with them the diffusion coefficient D = integral of the VACF (Green-Kubo).
  Why it is needed: the coarse-grained velocity of a star polymer decorrelates
  through forces that are correlated over several frames (a memory kernel),
  and a Markov model fitted to one frame learns only the short-time part of
  that friction. On SP11 (0.1 tau frames) the trained friction left the VACF
  integral to its first zero 14 % above the data's and the MSD after 1000
  frames 40 % above the truth's; scaling M by 2 matched both (MSD error 0.34 ->
  0.04). `calibrate_closed_fluid` picks s from the training block alone: the
  running Green-Kubo integral of the normalised VACF up to the lag where the
  data's first crosses zero (the memory time; capped by what the block
  resolves), settled rollouts against the data.

Both use `secant_scale`: a bracketed secant on log(ratio) against log(scale),
with common random numbers so that the measured ratio is a smooth function of
the scale.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import torch

log = logging.getLogger(__name__)

#: Calibration keeps k_B within these factors of the trained value.
TEMPERATURE_BOUNDS = (0.5, 2.0)
#: ... and the mobility scale within these (SP51 needs about 2.5: its one-frame VACF is 0.73).
MOBILITY_BOUNDS = (0.25, 4.0)
#: First-step guess of d log(ratio) / d log(scale): the kinetic energy is about proportional to k_B; the
#: Green-Kubo integral responds weakly to the mobility (measured -0.1 to -0.5 on SP11 and SP51).
TEMPERATURE_EXPONENT = 1.0
MOBILITY_EXPONENT = -0.3


def secant_scale(assign: Callable[[float], None], measure: Callable[[], float], start: float,
                 bounds: tuple[float, float], exponent: float = 1.0, iterations: int = 6, tolerance: float = 0.02,
                 min_response: float | None = None, adapt: bool = True,
                 key: str = "value") -> tuple[list[dict], dict | None]:
    """Find the value v (set by ``assign(v)``) at which ``measure()`` (a ratio, model over data) is 1.

    The first step assumes ratio proportional to v**exponent; later ones
    interpolate log v linearly in log ratio between the closest points on
    either side of 1 (a bracketed secant: the ratio is a noisy estimate and its
    response need not be a power law); while no point lies on the other side,
    they extrapolate with the exponent (``adapt``: the last two points' measured
    one, where it has the expected sign). v stays within ``bounds`` x start.
    With ``min_response``, gives up after two points whose response exponent
    d log ratio / d log v (signed as ``exponent``) is below it. Leaves the best v
    assigned (the start when it gave up); returns the history of
    {key: v, "ratio": r} and, when it gave up, {"response": exponent}. A failed
    measurement (``measure()`` not finite and positive: a diverging rollout)
    is recorded with ratio None and bounds the search on its side; one at the
    start raises `CalibrationError`.
    """
    history: list[dict] = []

    def evaluate(value: float) -> float | None:
        """The ratio at `value`, or None where the measurement failed (a rollout that diverged)."""
        assign(value)
        ratio = float(measure())
        ok = math.isfinite(ratio) and ratio > 0
        history.append({key: value, "ratio": ratio if ok else None})
        return ratio if ok else None

    low, high = (start * f for f in bounds)
    value = start
    if evaluate(value) is None:
        assign(start)
        raise CalibrationError(f"the measurement failed at the starting {key} {start:g} (a diverging rollout)")
    for step in range(iterations - 1):
        good = [h for h in history if h["ratio"] is not None]
        last = history[-1]
        if last["ratio"] is None:  # failed: that side is out of reach; halve the step (in log) back
            if last[key] > good[-1][key]:
                high = last[key]
            else:
                low = last[key]
            value = math.sqrt(last[key] * good[-1][key])
        else:
            ratio = last["ratio"]
            if abs(math.log(ratio)) < tolerance:
                break
            if len(good) >= 2 and step >= 1:
                a, b = good[-2], good[-1]
                if a[key] != b[key]:
                    slope = math.log(a["ratio"] / b["ratio"]) / math.log(a[key] / b[key])
                    if (len(history) == 2 and min_response is not None
                            and slope * math.copysign(1.0, exponent) < min_response):
                        assign(start)
                        return history, {"response": slope}
                    if adapt and abs(slope) > 1e-3 and math.copysign(1, slope) == math.copysign(1, exponent):
                        exponent = slope  # the measured response, where it has the expected sign
            above = [h for h in good if h["ratio"] > 1]
            below = [h for h in good if h["ratio"] <= 1]
            if above and below:
                a = min(above, key=lambda h: h["ratio"])
                b = max(below, key=lambda h: h["ratio"])
                la, lb = math.log(a[key]), math.log(b[key])
                ra, rb = math.log(a["ratio"]), math.log(b["ratio"])
                value = math.exp(la + (lb - la) * ra / (ra - rb))
            else:
                value = last[key] * ratio ** (-1.0 / exponent)
        value = min(max(value, low), high)
        if any(math.isclose(value, h[key], rel_tol=1e-9) for h in history):
            break  # pinned at a bound already measured
        evaluate(value)
    best = min((h for h in history if h["ratio"] is not None), key=lambda h: abs(math.log(h["ratio"])))
    assign(best[key])
    return history, None


class CalibrationError(RuntimeError):
    """A calibration could not measure its ratio at the trained model (its rollouts diverge)."""


def normalised_vacf(v: np.ndarray, max_lag: int) -> np.ndarray:
    """C(k)/C(0) for k = 0..max_lag of velocities v (frames, particles, D), every time origin and axis."""
    v = np.asarray(v, np.float64)
    c0 = float((v * v).sum(-1).mean())
    if not c0 > 0:
        raise ValueError("the velocities are all zero: no velocity autocorrelation")
    n = v.shape[0]
    return np.array([float((v[k:] * v[: n - k]).sum(-1).mean()) / c0 for k in range(min(max_lag, n - 1) + 1)])


def memory_lags(c: np.ndarray, cap: int) -> int:
    """The lag where the normalised VACF c first reaches zero (the memory time), at most `cap`, at least 1."""
    crossing = np.flatnonzero(c[1:] <= 0)
    lag = int(crossing[0]) + 1 if len(crossing) else len(c) - 1
    return max(1, min(lag, cap))


def block_velocities(train_set) -> np.ndarray:
    """The training split's velocities as (frames, particles, D) over its longest run of consecutive frames.

    train_set: the dataset, or a list of its items.

    A closed box has the same particles in every frame; rows are matched by particle id.
    """
    frames = np.array([int(train_set[k]["frame"]) for k in range(len(train_set))])
    order = np.argsort(frames)
    frames = frames[order]
    # the longest run of consecutive frames: lags across a gap between splits would mix unrelated frames
    breaks = np.flatnonzero(np.diff(frames) != 1) + 1
    runs = np.split(np.arange(len(frames)), breaks)
    run = max(runs, key=len)
    rows = []
    for index in order[run]:
        item = train_set[int(index)]
        rank = np.argsort(item["particle"].numpy())
        rows.append(item["v0"].double().numpy()[rank])
    return np.stack(rows)


def calibrate_closed_fluid(model, train_set, frames, params, dtype: torch.dtype, device) -> tuple[dict, dict | None]:
    """Calibrate k_B and (with ``params.calibrate_mobility``) the mobility scale of a closed periodic fluid.

    Rollouts of ``calibration_frames`` frames from the first and the middle
    training snapshot (common random numbers), measured after
    ``calibration_settle`` frames. First k_B until their <v^2> matches the
    training split's; then the mobility scale until their running Green-Kubo
    integral sum_{k<=K} C(k)/C(0) matches the data's, K the data's memory time
    (`memory_lags`, at most a quarter of the settled span and half the
    training run); then k_B again (a changed mobility moves the temperature
    of the discrete dynamics a little). Training data only. Returns the
    temperature record and the transport record (None when not asked for).
    """
    from mpd.rollout import periodic_fluid_rollout

    n_frames, settle = params.calibration_frames, params.calibration_settle
    if n_frames <= settle or not len(train_set) or frames.boxes is None:
        reason = f"calibration_frames {n_frames} must exceed calibration_settle {settle}, with a periodic dataset"
        log.info("temperature not calibrated: %s", reason)
        return {"calibrated": False, "reason": reason}, None
    every_item = [train_set[k] for k in range(len(train_set))]  # read once: a dataset item is a file read
    items = [every_item[k] for k in sorted({0, len(every_item) // 2})]
    data_v = block_velocities(every_item)
    data_v2 = float(np.mean([float((item["v0"].double() ** 2).sum(-1).mean()) for item in every_item]))
    cap = max(1, min((n_frames - settle) // 4, data_v.shape[0] // 2))
    data_c = normalised_vacf(data_v, cap)
    lags = memory_lags(data_c, cap)
    data_integral = float(data_c[: lags + 1].sum())
    cache: dict[tuple[float, float], tuple[float, float]] = {}

    def rollout_statistics() -> tuple[float, float]:
        """(<v^2> ratio, Green-Kubo ratio) of the settled calibration rollouts at the model's current scalars."""
        key = (float(model.k_B.detach()), float(model.amplitudes.mobility_scale))
        if key not in cache:
            v2, integral = [], []
            for i, item in enumerate(items):
                box = frames.boxes[int(item["frame"])]
                result = periodic_fluid_rollout(model, item["x0"].double().numpy(), item["v0"].double().numpy(),
                                                np.asarray(box.lengths), n_frames, seed=params.seed + i,
                                                species=item["species"].numpy(), dtype=dtype, device=device)
                table = result.frames
                if result.status.get("status", "completed") != "completed" or table["t"].max() < n_frames:
                    return math.nan, math.nan
                settled = table[table["t"] >= settle].sort_values(["t", "particle"])
                axes = [c for c in ("vx", "vy", "vz") if c in settled.columns]
                v = settled[axes].to_numpy().reshape(settled["t"].nunique(), -1, len(axes))
                v2.append(float((v * v).sum(-1).mean()))
                integral.append(float(normalised_vacf(v, lags).sum()))
            cache[key] = (float(np.mean(v2)) / data_v2, float(np.mean(integral)) / data_integral)
        return cache[key]

    def set_k_B(value: float) -> None:
        model.log_k_B.assign(value)

    def set_mobility(value: float) -> None:
        model.amplitudes.mobility_scale.fill_(value)

    k_B0 = float(model.k_B.detach())
    try:
        passes = {"temperature": secant_scale(set_k_B, lambda: rollout_statistics()[0], k_B0, TEMPERATURE_BOUNDS,
                                              TEMPERATURE_EXPONENT, key="k_B")[0]}
    except CalibrationError as error:
        log.warning("temperature not calibrated: %s", error)
        return {"calibrated": False, "reason": str(error), "k_B": k_B0, "k_B_trained": k_B0, "scale": 1.0}, None
    transport = None
    if params.calibrate_mobility:
        scale0 = float(model.amplitudes.mobility_scale)
        passes["mobility"] = secant_scale(set_mobility, lambda: rollout_statistics()[1], scale0, MOBILITY_BOUNDS,
                                          MOBILITY_EXPONENT, key="mobility_scale")[0]
        k_B1 = float(model.k_B.detach())
        passes["temperature_again"] = secant_scale(
            set_k_B, lambda: rollout_statistics()[0], k_B1, TEMPERATURE_BOUNDS, TEMPERATURE_EXPONENT, key="k_B")[0]
        scale = float(model.amplitudes.mobility_scale)
        gk_ratio = rollout_statistics()[1]
        transport = {
            "method": "running Green-Kubo integral of the normalised VACF up to the data's memory time, settled "
                      "rollouts against the training split (mpd.calibration)",
            "mobility_scale_trained": scale0, "mobility_scale": scale, "ratio_trained": passes["mobility"][0]["ratio"],
            "ratio": gk_ratio,
            "memory_lags": lags, "data_vacf": [round(float(c), 4) for c in data_c[: lags + 1]],
            "iterations": passes["mobility"], "calibrated": True}
        log.info("mobility calibrated: M x %.3f (Green-Kubo integral to lag %d, model / data: %.3f -> %.3f)",
                 scale, lags, transport["ratio_trained"], gk_ratio)
    v2_ratio = rollout_statistics()[0]
    temperature = {"method": "kinetic energy of settled rollouts (closed periodic fluid)", "k_B_trained": k_B0,
                   "k_B": float(model.k_B.detach()), "scale": float(model.k_B.detach()) / k_B0, "ratio": v2_ratio,
                   "frames": n_frames, "settle_frames": settle, "windows": len(items),
                   "iterations": passes["temperature"] + passes.get("temperature_again", []), "calibrated": True}
    log.info("temperature calibrated: k_B x %.3f (settled rollouts' kinetic energy, model / data: %.3f -> %.3f)",
             temperature["scale"], passes["temperature"][0]["ratio"], v2_ratio)
    return temperature, transport


__all__ = [
    "MOBILITY_BOUNDS",
    "TEMPERATURE_BOUNDS",
    "CalibrationError",
    "block_velocities",
    "calibrate_closed_fluid",
    "memory_lags",
    "normalised_vacf",
    "secant_scale",
]
