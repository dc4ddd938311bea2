"""Learned parts other than the energy: entropy teacher, noise amplitudes, k_B and m."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from .geometry import PairTensors, cutoff_polynomial, pair_relative_velocities, pair_separations, sum_to_both_ends
from .layers import chunk_rows, mlp, recompute_activations


class PositiveScalar(nn.Module):
    """A learned scalar kept positive as softplus(raw) (k_B, m)."""

    def __init__(self, initial: float):
        super().__init__()
        if initial <= 0:
            raise ValueError(f"initial value must be positive, got {initial}")
        initial_t = torch.tensor(float(initial), dtype=torch.float64)
        self.raw = nn.Parameter((initial_t + torch.log(-torch.expm1(-initial_t))).to(torch.get_default_dtype()))

    def forward(self) -> torch.Tensor:
        return F.softplus(self.raw)

    def assign(self, value: float) -> None:
        """Set the scalar to `value` (> 0): raw = the inverse softplus of it."""
        with torch.no_grad():
            v = torch.tensor(float(value), dtype=torch.float64)
            self.raw.copy_(v + torch.log(-torch.expm1(-v)))


class NoiseAmplitudes(nn.Module):
    """Per-end factors (a, b, c) of the pair noise amplitudes.

    A_ij = a(|r_ij|/h, T_i) a(|r_ij|/h, T_j), and likewise B and C: symmetric in
    i and j by construction, positive (softplus), and vanishing at the cut-off
    with the factor (1 - rho^2) so that a pair entering or leaving the
    neighbourhood switches its noise on or off continuously. log T rather than T
    as input: T > 0 and its scale is whatever the energy network makes it.
    """

    def __init__(self, hidden: Sequence[int] = (32, 32)):
        super().__init__()
        self.net = mlp(2, hidden, 3)
        # Mobility scale s: M = sum G G^T is quartic in the per-end factors, so factors times s^(1/4) scale
        # M by s: friction and noise variance together, the fluctuation-dissipation balance untouched. Not
        # trained; set by the transport calibration of a closed fluid (mpd.calibration), 1 otherwise.
        self.register_buffer("mobility_scale", torch.ones(()))

    def forward(self, rho: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
        """rho (E,), T (E,) -> (E, 3) columns a, b, c."""
        raw = self.net(torch.stack([rho, torch.log(T)], dim=-1))
        return F.softplus(raw) * cutoff_polynomial(rho)[:, None] * self.mobility_scale.to(rho.dtype) ** 0.25

    def with_T_derivative(self, rho: torch.Tensor, T: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(factors, d factors / dT), both (E, 3), from one forward pass carrying the tangent along.

        Forward mode (`mpd.model.layers.MLP.with_tangent`): the tangent of the input (rho, log T)
        along T is (0, 1/T). Ordinary operations, so a training graph
        differentiates it like the factors themselves, with no double backward (issue 14: three
        backward passes for the three columns cost a quarter of a rollout step).
        """
        h, dh = self.net.with_tangent(torch.stack([rho, torch.log(T)], dim=-1),
                                      torch.stack([torch.zeros_like(rho), 1.0 / T], dim=-1))
        scale = cutoff_polynomial(rho)[:, None] * self.mobility_scale.to(rho.dtype) ** 0.25
        return F.softplus(h) * scale, torch.sigmoid(h) * dh * scale

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Models saved before the mobility scale existed had none: theirs is 1.
        state_dict.setdefault(prefix + "mobility_scale", torch.ones(()))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class EntropyTeacher(nn.Module):
    """S_i = EdgeConv over neighbours of rotation-invariant pair features, standardised (training labels).

    Pair features, each unchanged by swapping i and j and by rotations:
    rho = |r_ij|/h, the radial relative velocity (e_ij . v_ij)/v0 and the squared
    speed |v_ij|^2/v0^2 (squared, not |v_ij|, to stay smooth at v_ij = 0; both
    left out with use_velocities=False: a structural entropy), and with several
    species the pair's kind (`mpd.model.PairTensors.pair_kind`). The
    message is weighted by (1 - rho^2)^2 so S is continuous as neighbours come and
    go, summed to both ends, and a node network maps the sum to the raw value s_i.

    Gauge. The scale of S is not observable: rescaling the labels and U's
    dependence on S together changes no velocity statistic, but the entropy
    part of the likelihood gains log(1/a) when the labels shrink by a, so an
    unconstrained teacher drives S to zero and T = dU/dS to infinity (which
    starves the pairwise friction: docs/fidelity.md). The labels are therefore
    standardised, S = (s - mean) / scale with the mean and standard deviation
    of s over the interior particles at t of the training batch (`statistics`,
    differentiable, so the raw scale is an exact symmetry of the loss), and the
    same numbers applied to t+1. Running averages of them (buffers, saved with
    the model) standardise the teacher outside training.
    """

    def __init__(self, h: float, velocity_scale: float = 1.0, hidden: Sequence[int] = (64, 64), message_width: int = 32,
                 momentum: float = 0.1, use_velocities: bool = True, n_species: int = 1):
        super().__init__()
        self.h = float(h)
        self.velocity_scale = float(velocity_scale)
        self.momentum = float(momentum)
        self.use_velocities = bool(use_velocities)
        self.n_species = int(n_species)
        n_features = 1 + (2 if self.use_velocities else 0) + (self.n_species if self.n_species > 1 else 0)
        self.message = mlp(n_features, hidden, message_width)
        self.message_width = int(message_width)
        self.pair_chunk = 8192
        self.recompute_activations = "auto"  # mpd.model.layers.recompute_activations
        # no output bias: a constant in s is removed by the standardisation (a parameter without gradient)
        self.node = mlp(message_width, hidden, 1, out_bias=False)
        self.register_buffer("running_mean", torch.zeros(()))
        self.register_buffer("running_scale", torch.ones(()))
        self.register_buffer("batches_tracked", torch.zeros((), dtype=torch.int64))

    def raw(self, x: torch.Tensor, v: torch.Tensor, pairs: PairTensors) -> torch.Tensor:
        """s_i before standardisation, (N,)."""
        r_ij = pair_separations(x, pairs)
        distance = torch.linalg.vector_norm(r_ij, dim=-1)
        rho = distance / self.h
        features = rho[:, None]
        if self.use_velocities:
            e_ij = r_ij / distance[:, None]
            v_ij = pair_relative_velocities(v, pairs) / self.velocity_scale
            features = torch.cat([features, (e_ij * v_ij).sum(-1, keepdim=True), (v_ij * v_ij).sum(-1, keepdim=True)],
                                 dim=-1)
        if self.n_species > 1:
            features = torch.cat([features, pairs.pair_kind], dim=-1)
        weight = cutoff_polynomial(rho) ** 2
        n_pairs = features.shape[0]
        if torch.jit.is_scripting():
            summed = features.new_zeros(x.shape[0], self.message_width)
            per_chunk = chunk_rows(self.pair_chunk, features.device)
            for start in range(0, n_pairs, per_chunk):
                stop = min(start + per_chunk, n_pairs)
                messages = self._messages(features[start:stop], weight[start:stop])
                summed = summed.index_add(0, pairs.i[start:stop], messages).index_add(0, pairs.j[start:stop], messages)
        else:
            summed = self._summed_messages(features, weight, pairs, x.shape[0])
        return self.node(summed).squeeze(-1)

    @torch.jit.unused
    def _summed_messages(self, features: torch.Tensor, weight: torch.Tensor, pairs: PairTensors,
                         n_particles: int) -> torch.Tensor:
        """sum over i's pairs of w (W h + b) = W (sum w h) + b sum w, with h the message network's last hidden
        layer: its last, linear layer runs once per particle instead of once per pair (a third of the teacher's
        work). Chunks of pairs keep the (chunk, 64) activations in cache; in a large training batch each chunk
        is recomputed in backward rather than stored (mpd.model.layers.recompute_activations; issue 14: the
        teacher's activations were a third of a training step's memory)."""
        hidden, last = self.message[:-1], self.message[-1]
        n_pairs = features.shape[0]
        recompute = torch.is_grad_enabled() and recompute_activations(self.recompute_activations, n_pairs)
        summed = features.new_zeros(n_particles, last.in_features)
        per_chunk = chunk_rows(self.pair_chunk, features.device)
        for start in range(0, n_pairs, per_chunk):
            stop = min(start + per_chunk, n_pairs)
            chunk, w = features[start:stop], weight[start:stop, None]
            if recompute:
                h = torch.utils.checkpoint.checkpoint(lambda f, w: hidden(f) * w, chunk, w, use_reentrant=False)
            else:
                h = hidden(chunk) * w
            # in place: an out-of-place chain keeps every intermediate (N, 64) sum alive until backward
            summed.index_add_(0, pairs.i[start:stop], h).index_add_(0, pairs.j[start:stop], h)
        weight_sum = sum_to_both_ends(weight, pairs.i, pairs.j, n_particles)
        return F.linear(summed, last.weight) + weight_sum[:, None] * last.bias

    def _messages(self, features: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return self.message(features) * weight[:, None]

    @staticmethod
    @torch.jit.unused
    def statistics(sums: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, scale) of raw values from their (sum, sum of squares, count), differentiable.

        Sums rather than values, so that data-parallel training can add them over
        its ranks first (`mpd.training.teacher_labels`). The scale has a floor of
        1e-3, far above float32 resolution.
        """
        mean = sums[0] / sums[2]
        return mean, torch.sqrt(torch.clamp(sums[1] / sums[2] - mean * mean, min=0.0) + 1e-6)

    @staticmethod
    @torch.jit.unused
    def sums(raw: torch.Tensor) -> torch.Tensor:
        """(sum, sum of squares, count) of raw values, the input of `statistics`."""
        return torch.stack([raw.sum(), (raw * raw).sum(), raw.new_tensor(float(raw.shape[0]))])

    @torch.jit.unused
    def track(self, mean: torch.Tensor, scale: torch.Tensor) -> None:
        """Move the running statistics towards a training batch's (exponential average; the first batch's are taken)."""
        weight = 1.0 if int(self.batches_tracked) == 0 else self.momentum
        with torch.no_grad():
            self.running_mean.lerp_(mean.detach().to(self.running_mean), weight)
            self.running_scale.lerp_(scale.detach().to(self.running_scale), weight)
            self.batches_tracked += 1

    def forward(self, x: torch.Tensor, v: torch.Tensor, pairs: PairTensors) -> torch.Tensor:
        """S_i standardised with the running statistics (rollouts, prescribed particles)."""
        return (self.raw(x, v, pairs) - self.running_mean) / self.running_scale


__all__ = ["EntropyTeacher", "NoiseAmplitudes", "PositiveScalar", "mlp"]
