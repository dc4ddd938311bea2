"""The cage objective: short differentiable rollouts from training data, matched to the data's cage statistics.

Why (docs/fidelity.md, section 2): the one-step likelihood fits the mean force
and an isotropic noise to single-frame displacements. In a dense packing the
relative motion of neighbours is stiffer than the collective motion, so one
noise level for both gives the relative modes too much noise, and the weakly
determined restoring force (R^2 of about 0.07 per frame) comes out too soft:
a trained model's cages were 16-19 % too wide in relative displacement, and
cage escapes (rearrangements, a tail of that distribution) twice too frequent.
The likelihood never sees more than one frame; this objective does.

From a window of K+1 consecutive training frames, the model integrates the
particles the data calls interior for K steps (Euler-Maruyama, the noise
reparameterised so that gradients reach every parameter), the others prescribed
from the data as in a rollout. Over the same particles and lags k = 1..K,

    relative:  <|dr_ij(k) - G r_ij dt|^2>   over neighbour pairs (within h at the start)
    single:    <|dx_i(k) - (u0 + G x_i) dt - <.>|^2>   (the window's mean drift removed)

non-affine with the data's flow (u0, G) summed over the steps, and the loss is
the mean over lags of (log model - log data)^2 for both. Scale-free (a ratio),
so one weight serves every data set. The data's statistics come from the
training split only.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mpd.calibration import secant_scale
from mpd.geometry.domain import Box
from mpd.geometry.loader import SnapshotPairDataset
from mpd.model import MetriplecticModel, State
from mpd.pairs import snapshot_pairs


@dataclass
class CageWindow:
    """K+1 consecutive frames of the particles of the first, in model units."""

    x: torch.Tensor             # (K+1, N, D) data positions (a particle the data lose is held at its last)
    v: torch.Tensor             # (K+1, N, D) data velocities (backward differences, as the dataset stores them)
    predicted: torch.Tensor     # (N,) bool: integrated by the model (interior at the first frame)
    present: torch.Tensor       # (K+1, N) bool: in the data at each frame (a prescribed particle takes part
                                # only then, as in a rollout: one held still while the flow goes on
                                # would be rammed by its neighbours)
    core: torch.Tensor          # (N,) bool: predicted, tracked and farther than CORE_DISTANCE from any
                                # prescribed particle at the first frame: the statistics' particles
    species: torch.Tensor       # (N,) int64
    x_ref: torch.Tensor         # (K, N, D) reference positions of each step's strain bonds (the dataset's rule)
    has_ref: torch.Tensor       # (K, N) bool
    flows: torch.Tensor         # (K, 6) flow coefficients (u0x, u0y, Gxx, Gxy, Gyx, Gyy) of each step
    boxes: list[Box | None]     # per frame (None: an open window)
    box_ref: list[Box | None]   # per step: the reference configuration's box


#: h: particles this close to a prescribed one at the start are integrated but not measured (their
#: neighbours' motion is the data's, and a particle pushed against the prescribed band is no cage).
CORE_DISTANCE = 1.0


def window_starts(dataset: SnapshotPairDataset, steps: int) -> list[int]:
    """Items k whose frames k .. k+steps-1 are consecutive (each item is the pair f -> f+1)."""
    if len(dataset) < steps:
        return []
    frame = dataset.index["frame"].to_numpy()
    ok = frame[steps - 1:] - frame[: len(frame) - steps + 1] == steps - 1
    return [int(k) for k in np.flatnonzero(ok)]


def load_window(dataset: SnapshotPairDataset, start: int, steps: int, reference_box, dtype: torch.dtype,
                device: torch.device) -> CageWindow | None:
    """The window of items start .. start+steps-1 (frames f .. f+steps), or None when fewer than 3 of its
    predicted particles are tracked throughout.

    Every particle of the first frame takes part, so that each keeps its neighbours: one that the data
    lose later is held at its last position if prescribed, and left out of the statistics (not in `core`).
    """
    items = [dataset[k] for k in range(start, start + steps)]
    first = items[0]
    periodic = "box" in first
    boxes = ([Box(*first["box"].tolist())] + [Box(*item["box1"].tolist()) for item in items]) if periodic \
        else [None] * (steps + 1)
    ids = first["particle"].numpy()
    n = len(ids)
    positions = [first["x0"].double().numpy()]
    velocities = [first["v0"].double().numpy()]
    present = [np.ones(n, bool)]
    x_ref, has_ref = [], []
    for item in items:
        where = {int(p): r for r, p in enumerate(item["particle"].tolist())}
        rows = np.array([where.get(int(p), -1) for p in ids])
        found = rows >= 0
        ref = np.zeros((n, positions[0].shape[1]))
        ref[found] = item["x_ref"].double().numpy()[rows[found]]
        x_ref.append(ref)
        has_ref.append(found & _take(item["has_ref"].numpy(), rows, found))
        present.append(found)
        now = positions[-1].copy()
        now[found] = item["x1"].double().numpy()[rows[found]]
        positions.append(now)
        now = velocities[-1].copy()
        now[found] = item["v1"].double().numpy()[rows[found]]
        velocities.append(now)
    predicted = first["interior"].numpy().astype(bool)
    core = predicted & np.logical_and.reduce(present)  # tracked throughout
    if (~predicted).any() and core.any():
        from scipy.spatial import cKDTree

        box = boxes[0]
        prescribed = positions[0][~predicted]
        points = positions[0][core]
        if box is not None:  # wrapped coordinates; the tree's periodic box is rectangular, so search images
            prescribed, _ = box.margin_images(box.wrap(prescribed), min(CORE_DISTANCE, box.max_cutoff()))
            points = box.wrap(points)
        distance, _ = cKDTree(prescribed).query(points)
        core[np.flatnonzero(core)[distance <= CORE_DISTANCE]] = False
    if int(core.sum()) < 3:
        return None
    flows = torch.as_tensor(np.stack([dataset.flow_coefficients(start + k) for k in range(steps)]))
    frames_of_steps = [int(item["frame"]) for item in items]
    as_t = {"dtype": dtype, "device": device}
    return CageWindow(
        torch.as_tensor(np.stack(positions)).to(**as_t), torch.as_tensor(np.stack(velocities)).to(**as_t),
        torch.as_tensor(predicted, device=device),
        torch.as_tensor(np.stack(present), device=device), torch.as_tensor(core, device=device),
        first["species"].to(device), torch.as_tensor(np.stack(x_ref)).to(**as_t),
        torch.as_tensor(np.stack(has_ref), device=device), flows.to(**as_t), boxes,
        [reference_box(f) if periodic else None for f in frames_of_steps])


def _take(values: np.ndarray, rows: np.ndarray, found: np.ndarray) -> np.ndarray:
    out = np.zeros(len(rows), values.dtype)
    out[found] = values[rows[found]]
    return out


def _affine(flow: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The flow's displacement over one frame at positions x: u0 + G x (model units, dt = 1 frame)."""
    return flow[:2] + x @ flow[2:].reshape(2, 2).T


def _minimum_image(d: torch.Tensor, box: Box | None) -> torch.Tensor:
    """Shortest periodic image of data displacements (no graph needed: data only)."""
    if box is None:
        return d
    return torch.as_tensor(box.minimum_image(d.detach().cpu().numpy()), dtype=d.dtype, device=d.device)


def _wrap(x: torch.Tensor, box: Box | None) -> torch.Tensor:
    """x moved into the box by whole lattice vectors (a constant shift: the graph passes through)."""
    if box is None:
        return x
    x_np = x.detach().cpu().numpy()
    return x + torch.as_tensor(box.wrap(x_np) - x_np, dtype=x.dtype, device=x.device)


def rollout_displacements(model: MetriplecticModel, window: CageWindow, generator: torch.Generator,
                          noise: bool = True, create_graph: bool = True) -> torch.Tensor:
    """(K+1, N, D) cumulative displacements of the model's particles, with the graph (prescribed: the data's).

    Entropies start from the teacher (detached), and the prescribed particles' are the teacher's at
    every frame, as in `mpd.rollout`; pairs are searched at every step on the detached positions (the
    separations themselves carry the graph).
    """
    n_steps = window.x.shape[0] - 1
    predicted = window.predicted[:, None]
    x = window.x[0]
    v = window.v[0]
    with torch.no_grad():
        pairs = _pairs(model, x, window, 0)
        S = model.teacher_entropy(x, v, pairs).detach()
    displacement = torch.zeros_like(x)
    out = [displacement]
    for k in range(n_steps):
        pairs = _pairs(model, x, window, k)
        if k > 0:  # prescribed particles take the teacher's entropy of the frame, as in a rollout
            with torch.no_grad():
                S = torch.where(window.predicted, S, model.teacher_entropy(x.detach(), v.detach(), pairs))
        flow = _affine(window.flows[k], x.detach())
        state = State(x, v, S)
        if create_graph:  # differentiable: autograd forces, the graph kept through the noise's amplitudes
            f_v, f_S = model.drift(state, pairs, thermal=noise, create_graph=True, flow=flow)
            dv, dS = torch.zeros_like(v), torch.zeros_like(S)
            if noise:
                dW, dV, dW_bath, dU_bath = model.draw_increments(state, pairs, generator)
                dv, dS = model.noise_from_increments(state, pairs, dW, dV, None, dW_bath, dU_bath, create_graph=True)
        else:  # the rollout's fused step: the same drift and draws to round-off, no autograd over the pairs
            f_v, f_S, dv, dS = model.drift_and_noise(state, pairs, generator, noise, flow)
        v_new = v + f_v + dv
        if not create_graph:
            v_new = v_new.detach()
        data_step = _minimum_image(window.x[k + 1] - window.x[k], window.boxes[k + 1])
        displacement = displacement + torch.where(predicted, v_new, data_step)
        out.append(displacement)
        v = torch.where(predicted, v_new, window.v[k + 1])
        x = _wrap(torch.where(predicted, x + v_new, window.x[k + 1]), window.boxes[k + 1])
        S = torch.where(window.predicted, S + f_S + dS, S)
    return torch.stack(out)


def _pairs(model: MetriplecticModel, x: torch.Tensor, window: CageWindow, k: int):
    """Pairs among the particles taking part at step k (predicted, or in the data at frame k)."""
    active = window.predicted | window.present[k]
    x_ref, has_ref, box_ref = window.x_ref[k], window.has_ref[k], window.box_ref[k]
    if bool(active.all()):
        return snapshot_pairs(x.detach(), 1.0, window.boxes[k], x_ref, has_ref, box_ref,
                              x.dtype, x.device, window.species, model.n_species)
    idx = torch.nonzero(active).squeeze(-1)
    sub = snapshot_pairs(x.detach()[idx], 1.0, window.boxes[k], x_ref[idx], has_ref[idx],
                         box_ref, x.dtype, x.device, window.species[idx], model.n_species)
    return sub._replace(i=idx[sub.i], j=idx[sub.j], bond_i=idx[sub.bond_i], bond_j=idx[sub.bond_j],
                        species=window.species)


def data_displacements(window: CageWindow) -> torch.Tensor:
    """(K+1, N, D) cumulative displacements of the data (minimum image per step)."""
    steps = [_minimum_image(window.x[k + 1] - window.x[k], window.boxes[k + 1]) for k in range(window.x.shape[0] - 1)]
    return torch.cat([torch.zeros_like(window.x[:1]), torch.cumsum(torch.stack(steps), dim=0)])


def cage_statistics(displacement: torch.Tensor, window: CageWindow,
                    data: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(relative, single) non-affine mean square displacements at lags 1..K, (K,) each (module docstring).

    Pairs: neighbours within h at the first frame, both in the window's core; particles: the core
    (predicted, tracked, away from the prescribed ones, whose motion is not the model's). The affine part
    follows the data, for the model and the data alike: per step, the flow at the data's unwrapped
    positions (u0 + G x) for a particle and G r_ij at the pair's separation (a minimum image at the start,
    then followed continuously) for a pair, so that in a periodic, sheared box neither a pair across an
    edge nor a particle that crosses one sees a jump of the flow. `data`: the window's
    `data_displacements`, when the caller has them.
    """
    n_steps = window.x.shape[0] - 1
    data = data_displacements(window) if data is None else data
    unwrapped = window.x[0] + data  # continuous data positions
    keep = window.core
    affine = torch.cumsum(torch.stack([_affine(window.flows[k], unwrapped[k]) for k in range(n_steps)]), dim=0)
    single = (displacement[1:] - affine)[:, keep]
    single = single - single.mean(dim=1, keepdim=True)
    pairs = snapshot_pairs(window.x[0], 1.0, window.boxes[0])
    both = keep[pairs.i] & keep[pairs.j]
    i, j = pairs.i[both], pairs.j[both]
    r0 = window.x[0][i] - window.x[0][j] + pairs.shift[both].to(window.x.dtype)  # minimum image at the start
    separation = r0[None] + (data[:, i] - data[:, j])  # (K+1, E, D), followed continuously
    pair_affine = torch.cumsum(torch.stack([separation[k] @ window.flows[k][2:].reshape(2, 2).T
                                            for k in range(n_steps)]), dim=0)
    relative = (displacement[1:, i] - displacement[1:, j]) - pair_affine
    return (relative**2).sum(-1).mean(-1), (single**2).sum(-1).mean(-1)


def cage_loss(model: MetriplecticModel, windows: Sequence[CageWindow], generator: torch.Generator) -> torch.Tensor:
    """Mean over windows and lags of (log model/data)^2 of the relative and single non-affine MSDs."""
    terms = []
    for window in windows:
        data = data_displacements(window)
        model_rel, model_single = cage_statistics(rollout_displacements(model, window, generator), window, data)
        with torch.no_grad():
            data_rel, data_single = cage_statistics(data, window, data)
        tiny = torch.finfo(model_rel.dtype).tiny
        for m, d in ((model_rel, data_rel), (model_single, data_single)):
            ok = (d > 0) & torch.isfinite(m)
            if bool(ok.any()):
                terms.append(((torch.log(m[ok] + tiny) - torch.log(d[ok])) ** 2).mean())
    if not terms:
        return torch.zeros((), dtype=windows[0].x.dtype if windows else torch.float32)
    return torch.stack(terms).mean()


class CageObjective:
    """The cage term of training over one split: its windows (loaded once, cached) and the term of a step.

    Windows and noise are drawn from generators keyed by (seed, epoch, step), so a
    resumed training draws what an uninterrupted one would.
    """

    def __init__(self, dataset: SnapshotPairDataset, reference_box, steps: int, dtype: torch.dtype,
                 device: torch.device, seed: int):
        self.dataset, self.reference_box, self.steps = dataset, reference_box, int(steps)
        self.dtype, self.device, self.seed = dtype, device, int(seed)
        self.starts = window_starts(dataset, self.steps)
        self._cache: dict[int, CageWindow | None] = {}

    @property
    def available(self) -> bool:
        return bool(self.starts)

    def window(self, start: int) -> CageWindow | None:
        if start not in self._cache:
            self._cache[start] = load_window(self.dataset, start, self.steps, self.reference_box, self.dtype,
                                             self.device)
        return self._cache[start]

    def term(self, model: MetriplecticModel, epoch: int, step: int) -> torch.Tensor | None:
        """The cage loss of one window drawn for (epoch, step), with graph; None without a usable window."""
        rng = np.random.default_rng([self.seed, epoch, step])
        for start in rng.permutation(self.starts)[:4]:  # a window without enough core particles: try another
            window = self.window(int(start))
            if window is not None:
                generator = torch.Generator(device=self.device).manual_seed(int(rng.integers(2**62)))
                return cage_loss(model, [window], generator)
        return None

    def evaluate(self, model: MetriplecticModel, n_windows: int = 2) -> float:
        """The cage loss over up to n_windows evenly spaced windows with fixed noise (common random numbers)."""
        picks = [self.starts[int(k)] for k in np.linspace(0, len(self.starts) - 1, min(n_windows, len(self.starts)))]
        windows = [w for w in (self.window(s) for s in picks) if w is not None]
        if not windows:
            return math.nan
        generator = torch.Generator(device=self.device).manual_seed(self.seed)
        with torch.enable_grad():
            return float(cage_loss(model, windows, generator).detach())


def relaxed_cage_ratio(model: MetriplecticModel, window: CageWindow, lag: int, settle: int,
                       generator: torch.Generator) -> float:
    """Model over data of the core's relative (neighbour-pair) non-affine mean square displacement over
    `lag` frames, averaged over the start frames from `settle` on: after the model's particles have
    settled into their own local structure (a rollout from data loosens its cages within 10-30 frames,
    which a short window never sees). No graph."""
    with torch.enable_grad():
        model_d = rollout_displacements(model, window, generator, create_graph=False).detach()
    data_d = data_displacements(window)
    n_frames = window.x.shape[0]
    starts = range(settle, n_frames - lag)
    if not len(starts):
        raise ValueError(f"a window of {n_frames - 1} steps is too short for settle={settle} and lag={lag}")

    totals = {"model": 0.0, "data": 0.0}
    for t0 in starts:
        frames, steps = slice(t0, t0 + lag + 1), slice(t0, t0 + lag)
        shifted = dataclasses.replace(
            window, x=window.x[frames], v=window.v[frames], present=window.present[frames], x_ref=window.x_ref[steps],
            has_ref=window.has_ref[steps], flows=window.flows[steps], boxes=window.boxes[frames],
            box_ref=window.box_ref[steps])
        data = data_d[frames] - data_d[t0]
        for name, d in (("model", model_d[frames] - model_d[t0]), ("data", data)):
            totals[name] += float(cage_statistics(d, shifted, data)[0][-1])
    return totals["model"] / totals["data"]


#: Calibration keeps k_B within these factors of the trained value, and gives up (keeping it as trained)
#: where the cage responds to k_B with an exponent below MIN_RESPONSE: there the relative motion is the
#: drive's (shear-induced), not the noise's, and no temperature would match it.
CALIBRATION_BOUNDS = (0.5, 2.0)
MIN_RESPONSE = 0.2


def bracketed_secant(model: MetriplecticModel, measure_ratio, iterations: int = 6, tolerance: float = 0.02,
                     check_response: bool = True) -> tuple[list[dict], dict | None]:
    """Scale k_B until ``measure_ratio()`` (model over data, at the model's current k_B) is 1.

    `mpd.calibration.secant_scale` on k_B, assuming the ratio proportional to
    k_B until bracketed, within `CALIBRATION_BOUNDS` of the starting value.
    With ``check_response``, gives up after two points whose response exponent
    is below `MIN_RESPONSE`. Leaves the model at the best k_B found (or the
    starting one when it gave up); returns the history of (k_B, ratio) and,
    when it gave up, the response that made it.
    """
    return secant_scale(model.log_k_B.assign, measure_ratio, float(model.k_B.detach()), CALIBRATION_BOUNDS,
                        exponent=1.0, iterations=iterations, tolerance=tolerance,
                        min_response=MIN_RESPONSE if check_response else None, adapt=False, key="k_B")


def calibrate_temperature(model: MetriplecticModel, windows: Sequence[CageWindow], lag: int, settle: int,
                          seed: int = 0, iterations: int = 6, tolerance: float = 0.02) -> dict:
    """Scale k_B (every noise of the model, at its fluctuation-dissipation ratio) so that settled rollouts'
    relative cage fluctuations over `lag` frames match the data's (`relaxed_cage_ratio`); returns a record.

    The ratio is measured with common random numbers (`bracketed_secant` adjusts k_B).
    """
    k_B0 = float(model.k_B.detach())

    def ratio() -> float:
        ratios = [relaxed_cage_ratio(model, w, lag, settle, torch.Generator(device=w.x.device).manual_seed(seed + i))
                  for i, w in enumerate(windows)]
        return float(np.exp(np.mean(np.log(ratios))))

    history, gave_up = bracketed_secant(model, ratio, iterations, tolerance)
    record = {"k_B_trained": k_B0, "lag_frames": lag, "settle_frames": settle, "windows": len(windows),
              "iterations": history}
    if gave_up is not None:
        return {**record, "k_B": k_B0, "scale": 1.0, "ratio": history[0]["ratio"], "calibrated": False,
                "reason": f"the cage responds to k_B with exponent {gave_up['response']:.2f} < {MIN_RESPONSE}: "
                          "its relative motion is the drive's, not the noise's"}
    best = min((h for h in history if h["ratio"] is not None), key=lambda h: abs(math.log(h["ratio"])))
    return {**record, "k_B": best["k_B"], "scale": best["k_B"] / k_B0, "ratio": best["ratio"], "calibrated": True}


__all__ = [
    "CORE_DISTANCE",
    "CageObjective",
    "CageWindow",
    "bracketed_secant",
    "cage_loss",
    "cage_statistics",
    "calibrate_temperature",
    "data_displacements",
    "load_window",
    "relaxed_cage_ratio",
    "rollout_displacements",
    "window_starts",
]
