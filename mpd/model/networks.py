"""Learned parts other than the energy: entropy teacher, noise amplitudes, k_B and m."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .geometry import PairTensors, cutoff_polynomial, pair_separations, sum_to_both_ends


def mlp(n_in: int, hidden: Sequence[int], n_out: int) -> nn.Sequential:
    """Plain MLP with SiLU: smooth, because forces and div(M) differentiate through it."""
    layers: list[nn.Module] = []
    width = n_in
    for n_hidden in hidden:
        layers += [nn.Linear(width, n_hidden), nn.SiLU()]
        width = n_hidden
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


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

    def forward(self, rho: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
        """rho (E,), T (E,) -> (E, 3) columns a, b, c."""
        raw = self.net(torch.stack([rho, torch.log(T)], dim=-1))
        return F.softplus(raw) * cutoff_polynomial(rho)[:, None]


class EntropyTeacher(nn.Module):
    """S_i = EdgeConv over neighbours of rotation-invariant pair features (training only).

    Pair features, each unchanged by swapping i and j and by rotations:
    rho = |r_ij|/h, the radial relative velocity (e_ij . v_ij)/v0 and the squared
    speed |v_ij|^2/v0^2 (squared, not |v_ij|, to stay smooth at v_ij = 0). The
    message is weighted by (1 - rho^2)^2 so S is continuous as neighbours come and
    go, summed to both ends, and a node network maps the sum to S_i.
    """

    def __init__(self, h: float, velocity_scale: float = 1.0, hidden: Sequence[int] = (64, 64), message_width: int = 32):
        super().__init__()
        self.h = float(h)
        self.velocity_scale = float(velocity_scale)
        self.message = mlp(3, hidden, message_width)
        self.node = mlp(message_width, hidden, 1)

    def forward(self, x: torch.Tensor, v: torch.Tensor, pairs: PairTensors) -> torch.Tensor:
        r_ij = pair_separations(x, pairs)
        distance = torch.linalg.vector_norm(r_ij, dim=-1)
        e_ij = r_ij / distance[:, None]
        v_ij = (v[pairs.i] - v[pairs.j]) / self.velocity_scale
        rho = distance / self.h
        features = torch.stack([rho, (e_ij * v_ij).sum(-1), (v_ij * v_ij).sum(-1)], dim=-1)
        messages = self.message(features) * (cutoff_polynomial(rho) ** 2)[:, None]
        return self.node(sum_to_both_ends(messages, pairs.i, pairs.j, x.shape[0])).squeeze(-1)


__all__ = ["EntropyTeacher", "NoiseAmplitudes", "PositiveScalar", "mlp"]
