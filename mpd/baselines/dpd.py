"""Groot & Warren (1997) dissipative particle dynamics (DPD), calibrated on a training block.

Model
-----
For a pair i, j closer than ``rc`` with minimum-image separation ``r_ij = x_i - x_j``, ``r = |r_ij|``,
``e_ij = r_ij / r``, ``v_ij = v_i - v_j`` and ``w(r) = 1 - r / rc``::

    F^C_ij = a w(r) e_ij                                    (soft repulsion)
    F^D_ij = -gamma w(r)^2 (e_ij . v_ij) e_ij                (w_D = w_R^2)
    F^R_ij = sigma w(r) theta_ij e_ij / sqrt(dt_int),        sigma^2 = 2 gamma kT

``theta_ij = theta_ji`` is one standard normal number per pair and force evaluation, and each pair force is added
to i and subtracted from j, so the forces are antisymmetric and the total momentum is conserved to round-off.
The Español–Warren fluctuation-dissipation relation (``w_D = w_R^2``, ``sigma^2 = 2 gamma kT``) makes the
Gibbs distribution ``exp(-(K + U) / kT)`` stationary, ``U`` the sum of ``a rc / 2 w(r)^2`` over pairs.

Integrator: Groot–Warren modified velocity Verlet with ``lam`` (0.5) and ``substeps`` internal steps of
``dt_int = dt / substeps`` per sampling interval ``dt``::

    x <- x + dt_int v + dt_int^2 / 2 f / m
    v~ = v + lam dt_int f / m
    f' = F(x, v~)
    v <- v + dt_int / 2 (f + f') / m

Calibration (``calibrate_dpd``), in this order
----------------------------------------------
kT
    Equipartition of the velocities about each frame's centre-of-mass velocity:
    ``kT = m sum_{t,i} |v_ti - vbar_t|^2 / (T D (N - 1))``. Removing the mean velocity removes D degrees of freedom
    per frame, hence ``N - 1`` (for N = 50 the plain ``N`` would bias kT low by 2 %). Exact given the data; no
    rollout is involved.
rc
    A fixed multiple of the mean spacing ``n^(-1/D)``: ``rc = (3)^(1/D) n^(-1/D)``, i.e. ``n rc^D = 3``, Groot and
    Warren's standard density (about 12.6 neighbours inside rc in 3D, 9.4 in 2D). We prefer this to the first
    minimum of the training RDF because it is always defined and noise-free: the soft fluids DPD describes have a
    weak, broad first shell whose minimum on a short block is a few histogram bins of noise, and rc fixed by the
    density leaves the structure to ``a`` (one parameter, one structural target) rather than sharing it between
    two correlated parameters. ``rc_factor`` overrides the multiple, ``rc`` the value.
a (default ``a_method="configurational"``)
    The configurational-temperature identity of the Gibbs distribution, ``<|grad U|^2> = kT <lap U>``, is linear
    in ``a`` (``U = a U_1``), so ``a = kT <lap U_1> / <|grad U_1|^2>`` from the training positions alone, no
    rollout. ``lap U_1`` integrates to zero against a uniform density, so this is a structural match: it is the
    amplitude for which the training configurations, specifically their correlation hole inside rc, are typical
    of the Boltzmann weight. We use it instead of matching the RDF peak with short rollouts because rollouts of a
    few sampling intervals started from training frames keep the training structure whatever ``a`` is (the
    structure relaxes on the time a particle needs to cross a neighbour spacing), so a short-rollout RDF barely
    identifies ``a``. Where the identity gives no positive amplitude (data not DPD-like: ``<lap U_1> <= 0``), or
    with ``a_method="rdf"``, ``a`` is found by a golden-section search in log a minimising the squared mismatch
    of g(r) on (0, 2 rc] after ``relax`` sampling intervals from training frames (that rollout-based objective
    is evaluated once more for the final parameters and recorded in the report as a diagnostic, with the
    first-peak heights of the data and the model).
gamma
    Golden-section search in log gamma over ``[1e-2, 1e2] sqrt(m kT) / rc`` minimising the squared mismatch of the
    normalised velocity autocorrelation ``C(k) = <u(s) . u(s + k dt)> / <u(s) . u(s)>`` (u the velocity about the
    frame's mean) at k = 1..``lags`` (default 1), the model's from rollouts of ``lags`` intervals started at
    ``starts`` (32) training frames with their positions and velocities, so data and model share ``u(s)`` (a paired
    comparison: most of the sampling noise cancels). Every evaluation reuses the same random numbers (common
    random numbers), so the objective is smooth in gamma. We match the velocity autocorrelation rather than the
    MSD because, at Groot–Warren densities and repulsions, single-particle diffusion over a few intervals is set
    mostly by the soft collisions: in a 3D test (a = 25, gamma = 4.5, n rc^3 = 3) the MSD over 8 intervals of
    0.2 changed by less than its sampling noise between gamma = 0.02 and gamma = 3, while C(dt) fell from 0.49 to
    0.28 between gamma = 0.5 and 13.5. The default is the first lag alone: the paired model and data
    trajectories diverge chaotically, so later lags add noise faster than signal (same 3D system, 16 starts:
    lags 1..3 gave gamma = 1.3 for the true 4.5; lag 1 with 32 starts gave 3.7-4.4 on three blocks; lags 1..2
    with 32 starts 3.3-3.7). The MSD of each trial is still recorded in the report.
substeps
    The smallest count keeping ``dt_int`` below ``0.04 rc sqrt(m/kT)`` (Groot and Warren's step), below
    ``0.5/omega`` (omega the curvature frequency of the soft repulsion summed over the mean neighbour count) and
    below ``0.25/zeta`` (zeta the friction rate); recomputed for each trial (a, gamma).

``budget`` bounds the number of rollout-based objective evaluations (each is ``starts`` rollouts of ``lags``
intervals; one more RDF evaluation follows as the diagnostic); every evaluation's parameters and objective are
returned in the report.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from mpd.baselines.periodic import as_box, mean_spacing, msd, pairs, rdf, unwrap, wrap


@dataclass(frozen=True)
class DPDParams:
    """Groot–Warren DPD parameters (units of the training data: length, time, mass of one particle).

    ``a`` conservative amplitude (force), ``gamma`` friction (mass / time), ``kT`` thermal energy, ``rc`` cutoff,
    ``mass`` particle mass, ``substeps`` integrator steps per sampling interval, ``lam`` the Groot–Warren
    velocity-prediction factor.
    """

    a: float
    gamma: float
    kT: float
    rc: float
    mass: float = 1.0
    substeps: int = 10
    lam: float = 0.5

    @property
    def sigma(self) -> float:
        """Random-force amplitude from the fluctuation-dissipation relation sigma^2 = 2 gamma kT."""
        return math.sqrt(2.0 * self.gamma * self.kT)

    def to_dict(self) -> dict:
        return asdict(self)


def dpd_forces(x, v, box, params: DPDParams, *, dt_int: float | None = None, rng: np.random.Generator | None = None,
               components: bool = False):
    """DPD forces (N, D) on every particle at positions ``x`` and velocities ``v`` in the periodic ``box``.

    The random force is included only when both ``dt_int`` (the integration step it is scaled for) and ``rng``
    are given. With ``components=True`` returns a dict of the conservative, dissipative and random parts
    (each (N, D)) and the total.
    """
    x = np.asarray(x, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    n, dim = x.shape
    box = as_box(box, dim)
    i, j, d, r = pairs(x, box, params.rc)
    e = d / np.maximum(r, 1e-12)[:, None]
    w = 1.0 - r / params.rc
    fc = params.a * w
    fd = -params.gamma * w * w * np.einsum("md,md->m", e, v[i] - v[j])
    if dt_int is not None and rng is not None:
        fr = params.sigma * w * rng.standard_normal(len(r)) / math.sqrt(dt_int)
    else:
        fr = np.zeros_like(r)

    def scatter(magnitude):
        f = magnitude[:, None] * e
        out = np.empty((n, dim))
        for k in range(dim):
            out[:, k] = np.bincount(i, f[:, k], n) - np.bincount(j, f[:, k], n)
        return out

    if not components:
        return scatter(fc + fd + fr)
    parts = {"conservative": scatter(fc), "dissipative": scatter(fd), "random": scatter(fr)}
    parts["total"] = parts["conservative"] + parts["dissipative"] + parts["random"]
    return parts


def rollout_dpd(params: DPDParams, x0, v0, box, dt: float, n_frames: int, seed: int = 0):
    """Integrate DPD from ``(x0, v0)`` and return ``(positions, velocities)``, each (n_frames, N, D).

    Frame k is the state at time ``(k + 1) dt`` (the initial state is not repeated); positions are unwrapped,
    continuing from ``x0`` as given (wrapped or not). ``seed`` fixes the random forces.
    """
    x = np.array(x0, dtype=np.float64)
    v = np.array(v0, dtype=np.float64)
    if x.ndim != 2 or v.shape != x.shape:
        raise ValueError(f"x0 and v0 must both be (N, D), got {x.shape} and {v.shape}")
    box = as_box(box, x.shape[1])
    if not dt > 0 or n_frames < 0:
        raise ValueError("dt must be positive and n_frames non-negative")
    rng = np.random.default_rng(seed)
    h = dt / params.substeps
    m = params.mass
    f = dpd_forces(x, v, box, params, dt_int=h, rng=rng)
    xs = np.empty((n_frames,) + x.shape)
    vs = np.empty_like(xs)
    for k in range(n_frames):
        for _ in range(params.substeps):
            x = x + h * v + 0.5 * h * h * f / m
            f_new = dpd_forces(x, v + params.lam * h * f / m, box, params, dt_int=h, rng=rng)
            v = v + 0.5 * h * (f + f_new) / m
            f = f_new
        xs[k], vs[k] = x, v
    return xs, vs


def kinetic_temperature(velocities, mass: float = 1.0) -> float:
    """kT from equipartition about each frame's mean velocity, D (N - 1) degrees of freedom per frame."""
    v = np.asarray(velocities, dtype=np.float64)
    if v.ndim == 2:
        v = v[None]
    t, n, dim = v.shape
    dv = v - v.mean(axis=1, keepdims=True)
    return float(mass * np.sum(dv * dv) / (t * dim * (n - 1)))


def configurational_amplitude(positions, box, rc: float, kT: float, max_frames: int = 200) -> float:
    """``a = kT <lap U_1> / <|grad U_1|^2>`` over (up to ``max_frames`` evenly spaced) frames; may be <= 0."""
    positions = np.asarray(positions, dtype=np.float64)
    dim = positions.shape[-1]
    frames = np.unique(np.linspace(0, len(positions) - 1, min(max_frames, len(positions))).astype(int))
    unit = DPDParams(a=1.0, gamma=0.0, kT=kT, rc=rc)
    lap, grad2 = 0.0, 0.0
    for t in frames:
        x = positions[t]
        f = dpd_forces(x, np.zeros_like(x), box, unit)
        grad2 += float(np.sum(f * f))
        r = pairs(x, as_box(box, dim), rc)[3]
        # lap of u_1(r) = rc/2 (1 - r/rc)^2 is u'' + (D-1) u'/r, counted once for each particle of the pair
        lap += float(np.sum(2.0 * (1.0 / rc - (dim - 1) * (1.0 - r / rc) / np.maximum(r, 1e-12))))
    return kT * lap / grad2 if grad2 > 0 else float("nan")


def _neighbour_sums(positions, box, rc: float, max_frames: int = 20):
    """Mean neighbour count inside rc and mean sum of w(r)^2 per particle (for the step-size rule)."""
    frames = np.unique(np.linspace(0, len(positions) - 1, min(max_frames, len(positions))).astype(int))
    n = positions.shape[1]
    z, s2 = 0.0, 0.0
    for t in frames:
        r = pairs(positions[t], box, rc)[3]
        z += 2.0 * len(r) / n
        s2 += 2.0 * float(np.sum((1.0 - r / rc) ** 2)) / n
    return z / len(frames), s2 / len(frames)


def stable_substeps(dt, a, gamma, kT, rc, mass, dim, z, s2) -> int:
    """The substep count rule of the module docstring (Groot–Warren step, repulsion and friction limits)."""
    limit = 0.04 * rc * math.sqrt(mass / kT)
    omega = math.sqrt(max(a, 0.0) * z / (dim * mass * rc))
    zeta = gamma * s2 / (dim * mass)
    if omega > 0:
        limit = min(limit, 0.5 / omega)
    if zeta > 0:
        limit = min(limit, 0.25 / zeta)
    return max(1, math.ceil(dt / limit - 1e-9))


def _golden(objective, lo: float, hi: float, n_eval: int):
    """Golden-section search of ``objective(exp(s))`` for s in [log lo, log hi], ``n_eval`` evaluations (>= 2)."""
    g = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = math.log(lo), math.log(hi)
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = objective(math.exp(c)), objective(math.exp(d))
    for _ in range(max(0, n_eval - 2)):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = objective(math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = objective(math.exp(d))
    return math.exp(c) if fc <= fd else math.exp(d)


def calibrate_dpd(positions, velocities, box, dt: float, *, mass: float = 1.0, budget: int = 16, seed: int = 0,
                  rc: float | None = None, rc_factor: float | None = None, lags: int = 1, starts: int = 32,
                  relax: int = 20, a_method: str = "configurational"):
    """Fit Groot–Warren DPD to a training block; returns ``(DPDParams, report)``.

    ``positions``/``velocities`` (T, N, D), wrapped or unwrapped; ``box`` (D,); ``dt`` the sampling interval;
    ``mass`` the (equal) particle mass. ``budget`` bounds the rollout-based objective evaluations (at least 4);
    ``lags`` sampling intervals per velocity-autocorrelation rollout, ``starts`` start frames, ``relax`` intervals per RDF rollout
    (``a_method="rdf"`` or fallback only). The method and why are in the module docstring. The report records
    each step's value and every objective evaluation (``gamma_search``, ``a_search``) with its parameters.
    """
    positions = np.asarray(positions, dtype=np.float64)
    velocities = np.asarray(velocities, dtype=np.float64)
    if positions.ndim != 3 or velocities.shape != positions.shape:
        raise ValueError(f"positions and velocities must both be (T, N, D), got {positions.shape}, {velocities.shape}")
    t_frames, n, dim = positions.shape
    box = as_box(box, dim)
    if not dt > 0:
        raise ValueError("dt must be positive")
    if t_frames < lags + 1:
        raise ValueError(f"the block has {t_frames} frames; the velocity-autocorrelation match needs more than lags={lags}")
    if budget < 4:
        raise ValueError("budget must allow at least 4 objective evaluations")
    if a_method not in ("configurational", "rdf"):
        raise ValueError(f"a_method must be 'configurational' or 'rdf', not {a_method!r}")
    x = unwrap(positions, box)
    xw = wrap(x, box)

    kT = kinetic_temperature(velocities, mass)
    spacing = mean_spacing(n, box)
    if rc is None:
        rc = (rc_factor if rc_factor is not None else 3.0 ** (1.0 / dim)) * spacing
    rc = float(rc)
    if rc >= 0.5 * float(np.min(box)):
        raise ValueError(f"rc = {rc:g} is not below half the smallest box length {np.min(box):g}; the box holds too "
                         f"few particles for DPD's minimum-image pair forces (pass a smaller rc or rc_factor)")
    z, s2 = _neighbour_sums(xw, box, rc)
    scale_gamma = math.sqrt(mass * kT) / rc
    report = {"kT": kT, "mean_spacing": spacing, "rc": rc, "mean_neighbours": z, "a_method": a_method,
              "gamma_search": [], "a_search": [], "budget": budget}

    starts_idx = np.unique(np.linspace(0, t_frames - 1 - lags, starts).astype(int))
    lag_list = np.arange(1, lags + 1)
    msd_data = msd(x, starts_idx, lag_list)
    report["msd_data"] = msd_data.tolist()

    def params_for(a, gamma):
        return DPDParams(a=a, gamma=gamma, kT=kT, rc=rc, mass=mass,
                         substeps=stable_substeps(dt, a, gamma, kT, rc, mass, dim, z, s2))

    v_rel = velocities - velocities.mean(axis=1, keepdims=True)
    c0 = float(np.mean(np.sum(v_rel[starts_idx] ** 2, axis=-1)))
    vacf_data = np.array([np.mean(np.sum(v_rel[starts_idx] * v_rel[starts_idx + k], axis=-1)) for k in lag_list]) / c0
    report["vacf_data"] = vacf_data.tolist()

    def vacf_objective(a, gamma):
        p = params_for(a, gamma)
        sq = np.zeros(lags)
        corr = np.zeros(lags)
        for k, s in enumerate(starts_idx):
            xs, vs = rollout_dpd(p, x[s], velocities[s], box, dt, lags, seed=seed + k)
            sq += np.mean(np.sum((xs - x[s]) ** 2, axis=-1), axis=1)
            vs = vs - vs.mean(axis=1, keepdims=True)
            corr += np.mean(np.sum(vs * v_rel[s], axis=-1), axis=1)
        model_msd, model_vacf = sq / len(starts_idx), corr / (len(starts_idx) * c0)
        if not (np.all(np.isfinite(model_vacf)) and np.all(np.isfinite(model_msd))):
            return math.inf, model_vacf, model_msd
        return float(np.mean((model_vacf - vacf_data) ** 2)), model_vacf, model_msd

    r_max = min(2.0 * rc, 0.499 * float(np.min(box)))
    rdf_frames = xw[np.unique(np.linspace(0, t_frames - 1, min(t_frames, 50)).astype(int))]
    r_centres, g_data = rdf(rdf_frames, box, r_max, bins=40)
    report["rdf_r"] = r_centres.tolist()
    report["rdf_data"] = g_data.tolist()

    def rdf_objective(a, gamma):
        p = params_for(a, gamma)
        finals = []
        for k, s in enumerate(starts_idx[: max(2, len(starts_idx) // 2)]):
            xs, _ = rollout_dpd(p, x[s], velocities[s], box, dt, relax, seed=seed + 1000 + k)
            finals.append(xs[relax // 2:])
        g = rdf(np.concatenate(finals), box, r_max, bins=40)[1]
        if not np.all(np.isfinite(g)):
            return math.inf, g
        return float(np.mean((g - g_data) ** 2)), g

    a_conf = configurational_amplitude(xw, box, rc, kT)
    report["a_configurational"] = a_conf
    used = 0

    def gamma_search(a, n_eval):
        def f(gamma):
            value, vacf_model, msd_model = vacf_objective(a, gamma)
            report["gamma_search"].append({"a": a, "gamma": gamma, "objective": value, "vacf": vacf_model.tolist(),
                                           "msd": msd_model.tolist()})
            return value
        return _golden(f, 1e-2 * scale_gamma, 1e2 * scale_gamma, n_eval)

    def a_search(gamma, n_eval):
        def f(a):
            value, _ = rdf_objective(a, gamma)
            report["a_search"].append({"a": a, "gamma": gamma, "objective": value})
            return value
        return _golden(f, 0.5 * kT / rc, 500.0 * kT / rc, n_eval)

    if a_method == "configurational" and np.isfinite(a_conf) and a_conf > 0:
        a = a_conf
        gamma = gamma_search(a, budget)
        used = budget
    else:
        if a_method == "configurational":
            report["a_fallback"] = f"configurational amplitude {a_conf:g} is not positive; RDF search used"
        n_g = max(2, budget // 3)
        n_a = max(2, budget - 2 * n_g)
        gamma = gamma_search(25.0 * kT / rc, n_g)
        a = a_search(gamma, n_a)
        gamma = gamma_search(a, n_g)
        used = 2 * n_g + n_a
    report["evaluations"] = used
    params = params_for(a, gamma)
    best = [e for e in report["gamma_search"] if e["gamma"] == gamma and e["a"] == a]
    report["vacf_objective"] = best[-1]["objective"] if best else vacf_objective(a, gamma)[0]
    value, g_model = rdf_objective(a, gamma)
    report["rdf_objective"] = value
    report["rdf_model"] = g_model.tolist()
    report["rdf_first_peak_data"] = rdf_first_peak(r_centres, g_data, rc)
    report["rdf_first_peak_model"] = rdf_first_peak(r_centres, g_model, rc)
    report["params"] = params.to_dict()
    return params, report


def rdf_first_peak(r, g, rc: float):
    """Height and position of the largest g(r) value at r <= 1.5 rc (the first-shell peak of a soft fluid)."""
    r, g = np.asarray(r), np.asarray(g)
    sel = r <= 1.5 * rc
    k = int(np.argmax(np.where(sel, g, -np.inf)))
    return float(g[k]), float(r[k])
