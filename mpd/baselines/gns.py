"""Graph network simulator (GNS; Sanchez-Gonzalez et al. 2020, "Learning to simulate complex physics with graph
networks") and its stochastic variant GNS-SDE, for periodic orthorhombic boxes in any dimension.

Model
-----
Encode-process-decode graph network on the particles:

* nodes: the last ``history`` (C = 5) velocities ``(x_t - x_{t-1}) / dt`` (finite differences of the
  positions), each normalised per component by the training mean and standard deviation; no absolute
  positions, so the model is translation invariant and blind to where the periodic box is cut;
* edges: every ordered pair closer than the connectivity radius R (default 1.5 x the mean spacing
  ``n^(-1/D)``), with features the minimum-image displacement ``(x_receiver - x_sender) / R`` and its norm;
* encoder MLPs to a latent of 64; ``message_steps`` (M = 5) interaction-network steps with residual updates
  (edge: ``e += MLP([e, v_sender, v_receiver])``; node: ``v += MLP([v, sum of incoming e])``), unshared weights;
  every MLP has ``mlp_layers`` (2) hidden layers of width ``latent`` with ReLU and, except the decoders, a
  LayerNorm on the output;
* decoder: the normalised acceleration per particle. GNS-SDE (``stochastic=True``) adds a second decoder head
  for a per-particle diagonal log-variance (one per component) with a smooth floor
  ``log v = log v_min + softplus(raw - log v_min)``, ``v_min = var_floor`` (1e-6 in normalised units, above float32
  resolution), so the variance is always positive and its log finite.

Training: one-step targets ``a_t = (x_{t+1} - 2 x_t + x_{t-1}) / dt^2`` (minimum-image steps) on the training
block. As in the paper, random-walk noise is added to the input position history: velocity noise of per-step
standard deviation ``noise_std * s_v / sqrt(C)`` (``s_v`` the per-component training velocity std; ``noise_std`` is
therefore the noise on the last input velocity as a fraction of the thermal velocity) is accumulated over the C
velocities and integrated into positions, the first frame unperturbed; the target next position receives the last
frame's noise, so the target acceleration teaches the model to undo the velocity noise. Loss: the MSE of the
normalised acceleration (GNS) or the Gaussian negative log-likelihood ``0.5 (log v + (y - mu)^2 / v)`` of it
(GNS-SDE). Adam, learning rate decaying exponentially from ``lr`` to ``lr_final`` over ``steps`` steps of
``batch`` random frames each. The ``velocities`` of the block are checked for shape but not used: as in the paper
the network sees finite differences of positions, which is what it produces in a rollout.

Rollout: semi-implicit Euler ``v_{t+1} = v_t + a dt``, ``x_{t+1} = x_t + v_{t+1} dt`` in float64 (the network runs
in float32); GNS-SDE samples ``a ~ N(mu, v)`` per particle and component from a generator seeded by ``seed``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import nn

from mpd.baselines.periodic import as_box, mean_spacing, minimum_image, unwrap, wrap

FORMAT = "mpd.baselines.gns/1"


@dataclass(frozen=True)
class GNSParams:
    """GNS hyperparameters. ``radius`` None means ``radius_factor`` x the training block's mean spacing;
    ``noise_std`` is a fraction of the training velocity std (see the module docstring)."""

    history: int = 5
    latent: int = 64
    mlp_layers: int = 2
    message_steps: int = 5
    radius: float | None = None
    radius_factor: float = 1.5
    noise_std: float = 0.05
    steps: int = 2000
    lr: float = 1e-3
    lr_final: float = 1e-4
    batch: int = 2
    stochastic: bool = False
    var_floor: float = 1e-6
    seed: int = 0


def _mlp(n_in: int, n_out: int, width: int, layers: int, layer_norm: bool) -> nn.Sequential:
    mods: list[nn.Module] = []
    size = n_in
    for _ in range(layers):
        mods += [nn.Linear(size, width), nn.ReLU()]
        size = width
    mods.append(nn.Linear(size, n_out))
    if layer_norm:
        mods.append(nn.LayerNorm(n_out))
    return nn.Sequential(*mods)


class GNS(nn.Module):
    """The encode-process-decode network; ``params.radius`` must be resolved (a number)."""

    def __init__(self, params: GNSParams, dim: int):
        super().__init__()
        if params.radius is None:
            raise ValueError("GNS needs a resolved radius (train_gns sets it from the data)")
        if params.var_floor <= 2e-7:
            raise ValueError("var_floor must stay above float32 resolution (> 2e-7)")
        self.params = params
        self.dim = dim
        h, w, k = params.latent, params.latent, params.mlp_layers
        for name in ("vel_mean", "acc_mean"):
            self.register_buffer(name, torch.zeros(dim, dtype=torch.float64))
        for name in ("vel_std", "acc_std"):
            self.register_buffer(name, torch.ones(dim, dtype=torch.float64))
        self.node_encoder = _mlp(params.history * dim, h, w, k, True)
        self.edge_encoder = _mlp(dim + 1, h, w, k, True)
        self.edge_updates = nn.ModuleList(_mlp(3 * h, h, w, k, True) for _ in range(params.message_steps))
        self.node_updates = nn.ModuleList(_mlp(2 * h, h, w, k, True) for _ in range(params.message_steps))
        self.decoder = _mlp(h, dim, w, k, False)
        self.logvar_head = _mlp(h, dim, w, k, False) if params.stochastic else None

    def forward(self, nodes: torch.Tensor, senders: torch.Tensor, receivers: torch.Tensor, edges: torch.Tensor):
        """Normalised node inputs (N, C D) and edge features (E, D + 1) -> (mean (N, D), log-variance or None)."""
        v = self.node_encoder(nodes)
        e = self.edge_encoder(edges)
        for edge_mlp, node_mlp in zip(self.edge_updates, self.node_updates, strict=True):
            e = e + edge_mlp(torch.cat([e, v[senders], v[receivers]], dim=-1))
            incoming = torch.zeros_like(v).index_add_(0, receivers, e)
            v = v + node_mlp(torch.cat([v, incoming], dim=-1))
        mean = self.decoder(v)
        if self.logvar_head is None:
            return mean, None
        floor = math.log(self.params.var_floor)
        return mean, floor + nn.functional.softplus(self.logvar_head(v) - floor)


def _graph(x_last: np.ndarray, box: np.ndarray, radius: float):
    """Both directions of every pair closer than ``radius``: senders, receivers, features (E, D + 1) float64."""
    xw = wrap(x_last, box)
    ij = cKDTree(xw, boxsize=box).query_pairs(radius, output_type="ndarray").astype(np.int64)
    senders = np.concatenate([ij[:, 0], ij[:, 1]])
    receivers = np.concatenate([ij[:, 1], ij[:, 0]])
    d = minimum_image(xw[receivers] - xw[senders], box) / radius
    return senders, receivers, np.concatenate([d, np.linalg.norm(d, axis=1, keepdims=True)], axis=1)


def _inputs(model: GNS, histories: list[np.ndarray], box: np.ndarray, dt: float):
    """Batched network inputs from unwrapped position histories, each (C + 1, N, D)."""
    nodes, snd, rcv, edg = [], [], [], []
    offset = 0
    mean, std = model.vel_mean.numpy(), model.vel_std.numpy()
    for hist in histories:
        vel = (np.diff(hist, axis=0) / dt - mean) / std  # (C, N, D)
        nodes.append(np.transpose(vel, (1, 0, 2)).reshape(hist.shape[1], -1))
        s, r, e = _graph(hist[-1], box, model.params.radius)
        snd.append(s + offset)
        rcv.append(r + offset)
        edg.append(e)
        offset += hist.shape[1]
    f32 = torch.float32
    return (torch.as_tensor(np.concatenate(nodes), dtype=f32), torch.as_tensor(np.concatenate(snd)),
            torch.as_tensor(np.concatenate(rcv)), torch.as_tensor(np.concatenate(edg), dtype=f32))


def _check_block(positions, velocities, box):
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim != 3:
        raise ValueError(f"positions must be (T, N, D), got shape {positions.shape}")
    if velocities is not None and np.shape(velocities) != positions.shape:
        raise ValueError(f"velocities must match positions {positions.shape}, got {np.shape(velocities)}")
    return positions, as_box(box, positions.shape[2])


def train_gns(positions, velocities, box, dt: float, params: GNSParams = GNSParams()):
    """Train GNS (or GNS-SDE with ``params.stochastic``) on one block; returns ``(model, log)``.

    ``log`` is a dict: ``loss`` (one value per step), ``radius``, ``mean_spacing``, ``frames`` (training samples).
    Deterministic given ``params.seed`` (torch's global random state is left untouched).
    """
    positions, box = _check_block(positions, velocities, box)
    t_frames, n, dim = positions.shape
    c = params.history
    if t_frames < c + 2:
        raise ValueError(f"the block has {t_frames} frames; history={c} needs at least {c + 2}")
    if not dt > 0:
        raise ValueError("dt must be positive")
    spacing = mean_spacing(n, box)
    radius = float(params.radius if params.radius is not None else params.radius_factor * spacing)
    if radius >= 0.5 * float(np.min(box)):
        raise ValueError(f"radius {radius:g} must be below half the smallest box length {np.min(box):g}")
    params = replace(params, radius=radius)
    x = unwrap(positions, box)
    vel = np.diff(x, axis=0) / dt
    acc = np.diff(x, n=2, axis=0) / dt**2
    tiny = 1e-12
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(params.seed)
        model = GNS(params, dim)
    model.vel_mean.copy_(torch.as_tensor(vel.reshape(-1, dim).mean(0)))
    model.vel_std.copy_(torch.as_tensor(np.maximum(vel.reshape(-1, dim).std(0), tiny)))
    model.acc_mean.copy_(torch.as_tensor(acc.reshape(-1, dim).mean(0)))
    model.acc_std.copy_(torch.as_tensor(np.maximum(acc.reshape(-1, dim).std(0), tiny)))
    acc_mean, acc_std = model.acc_mean.numpy(), model.acc_std.numpy()
    step_noise = params.noise_std * model.vel_std.numpy() / math.sqrt(c)

    rng = np.random.default_rng(params.seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=params.lr)
    decay = (params.lr_final / params.lr) ** (1.0 / max(1, params.steps))
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimiser, gamma=decay)
    losses = []
    model.train()
    for _ in range(params.steps):
        histories, targets = [], []
        for t in rng.integers(c, t_frames - 1, size=params.batch):
            hist = x[t - c:t + 1]
            vel_noise = np.cumsum(rng.standard_normal((c, n, dim)) * step_noise, axis=0)
            pos_noise = np.concatenate([np.zeros((1, n, dim)), np.cumsum(vel_noise * dt, axis=0)])
            noisy = hist + pos_noise
            target = (x[t + 1] + pos_noise[-1] - 2.0 * noisy[-1] + noisy[-2]) / dt**2
            histories.append(noisy)
            targets.append((target - acc_mean) / acc_std)
        inputs = _inputs(model, histories, box, dt)
        y = torch.as_tensor(np.concatenate(targets), dtype=torch.float32)
        mean, logvar = model(*inputs)
        if logvar is None:
            loss = torch.mean((mean - y) ** 2)
        else:
            loss = 0.5 * torch.mean(logvar + (y - mean) ** 2 * torch.exp(-logvar))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        scheduler.step()
        losses.append(loss.item())
    model.eval()
    return model, {"loss": losses, "radius": radius, "mean_spacing": spacing, "frames": t_frames - c - 1}


@torch.no_grad()
def predict_acceleration(model: GNS, history, box, dt: float):
    """Acceleration mean (N, D) and variance (N, D) or None, in physical units, from an unwrapped (C + 1, N, D)
    position history."""
    box = as_box(box, model.dim)
    mean, logvar = model(*_inputs(model, [np.asarray(history, dtype=np.float64)], box, dt))
    std = model.acc_std.numpy()
    mu = mean.double().numpy() * std + model.acc_mean.numpy()
    var = None if logvar is None else torch.exp(logvar.double()).numpy() * std**2
    return mu, var


@torch.no_grad()
def rollout_gns(model: GNS, positions_history, box, dt: float, n_frames: int, seed: int = 0):
    """Roll the model out from a position history (at least ``history + 1`` frames, wrapped or unwrapped; the last
    ``history + 1`` are used); returns ``(positions, velocities)``, each (n_frames, N, D), positions unwrapped and
    continuing the last given frame. GNS-SDE samples its accelerations with a generator seeded by ``seed``."""
    hist = np.asarray(positions_history, dtype=np.float64)
    c = model.params.history
    if hist.ndim != 3 or hist.shape[0] < c + 1 or hist.shape[2] != model.dim:
        raise ValueError(f"positions_history must be (>= {c + 1}, N, {model.dim}), got {hist.shape}")
    box = as_box(box, model.dim)
    hist = unwrap(hist[-(c + 1):], box)
    hist = hist - hist[-1] + np.asarray(positions_history, dtype=np.float64)[-1]  # continue the last frame as given
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    n, dim = hist.shape[1:]
    xs = np.empty((n_frames, n, dim))
    vs = np.empty_like(xs)
    for k in range(n_frames):
        mu, var = predict_acceleration(model, hist, box, dt)
        if var is not None:
            eps = torch.randn((n, dim), generator=gen, dtype=torch.float64).numpy()
            mu = mu + np.sqrt(var) * eps
        v = (hist[-1] - hist[-2]) / dt + mu * dt
        x = hist[-1] + v * dt
        xs[k], vs[k] = x, v
        hist = np.concatenate([hist[1:], x[None]])
    return xs, vs


def save_gns(model: GNS, path) -> None:
    """One file with the format tag, the resolved parameters, the dimension and the state_dict (normalisation
    statistics included as buffers): plain dicts, numbers and tensors, so ``torch.load(weights_only=True)`` reads it.
    Written atomically (mpd.atomic)."""
    import io

    from mpd.atomic import atomic_write_bytes

    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "params": asdict(model.params), "dim": model.dim,
                "state_dict": model.state_dict()}, buffer)
    atomic_write_bytes(buffer.getvalue(), path)


def load_gns(path) -> GNS:
    """The model saved by ``save_gns`` (weights_only loading), in eval mode."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"{path} is not a GNS baseline file ({FORMAT})")
    model = GNS(GNSParams(**blob["params"]), int(blob["dim"]))
    model.load_state_dict(blob["state_dict"])
    return model.eval()
