"""Monotone convex networks for the internal energy.

After Runje and Shankaranarayana, "Constrained Monotonic Neural Networks"
(ICML 2023): monotonicity comes from sign-constrained weights, not from a
penalty. CMNN mixes convex and concave activations so that it can also
represent non-convex monotone functions; the internal energy must be convex
as well, so only the convex half of that construction is used here: every
weight on a path from an input to the output is positive and every activation
is convex and non-decreasing. A non-negative combination of convex
non-decreasing functions of convex non-decreasing functions is again convex
and non-decreasing, so the output is convex and increasing in every input for
any value of the raw parameters.

The energy terms of physics.md are built on top:

    U_vol(S, V) = g_vol(S, 1/V)     increasing in S, decreasing in V, jointly convex
    U_dev(S, I) = g_dev(S, I)       increasing in S and in I, jointly convex

(see docs/model.md for why 1/V is the right input).
"""
from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn


def positive(raw: torch.Tensor) -> torch.Tensor:
    """A strictly positive weight from an unconstrained parameter.

    softplus rather than CMNN's |W|: |W| can be exactly zero, which would make
    T = dU/dS or P = -dU/dV vanish; softplus(raw) > 0 keeps them strictly positive.
    """
    return F.softplus(raw)


def _inverse_softplus(value: torch.Tensor) -> torch.Tensor:
    return value + torch.log(-torch.expm1(-value))


def algebraic_softplus(z: torch.Tensor) -> torch.Tensor:
    """(z + sqrt(1 + z^2)) / 2: increasing and strictly convex on all of R.

    Its slope and curvature decay algebraically, never to an exact zero, unlike
    softplus whose curvature underflows (and which PyTorch makes exactly linear
    beyond its threshold). Added with a small weight, it keeps dT/dS > 0 (so the
    heat capacity C = T / (dT/dS) is finite and positive) in floating point too.
    """
    return 0.5 * (z + torch.sqrt(1.0 + z * z))


def _init_positive(raw: torch.Tensor, fan_in: int) -> None:
    """Positive weights do not average out as signed ones do: a unit's
    pre-activation grows with its fan-in. Draw each with mean about 1/fan_in so
    pre-activations stay O(1) at any depth and width."""
    with torch.no_grad():
        value = torch.empty_like(raw).uniform_(0.2, 1.8) / fan_in
        raw.copy_(_inverse_softplus(value))


class ConvexLayer(nn.Module):
    """z' = softplus(W z + V x + b) with W, V > 0: convex non-decreasing in (z, x) when z is.

    V (the skip connection from the network inputs x) is absent in the first
    layer, where z is x itself.
    """

    def __init__(self, width_in: int, width_out: int, n_inputs: int, skip: bool):
        super().__init__()
        self.raw_weight = nn.Parameter(torch.empty(width_out, width_in))
        self.bias = nn.Parameter(torch.empty(width_out))
        fan_in = width_in + (n_inputs if skip else 0)
        _init_positive(self.raw_weight, fan_in)
        if skip:
            self.raw_skip = nn.Parameter(torch.empty(width_out, n_inputs))
            _init_positive(self.raw_skip, fan_in)
        else:
            self.register_parameter("raw_skip", None)
        with torch.no_grad():
            self.bias.uniform_(-1.0, 1.0)

    def forward(self, z: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        pre = F.linear(z, positive(self.raw_weight), self.bias)
        raw_skip = self.raw_skip
        if raw_skip is not None:
            pre = pre + F.linear(inputs, positive(raw_skip))
        return F.softplus(pre)

    def with_tangents(self, z: torch.Tensor, dz: torch.Tensor, d2z: torch.Tensor,
                      inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z', dz', d2z') for z (N, w), its derivatives dz (k, N, w) along each of the k inputs and its
        second derivative d2z (N, w) along input 0 twice (forward mode, `MonotoneConvexNet.with_derivatives`).

        softplus' = sigmoid and softplus'' = sigmoid (1 - sigmoid), except beyond PyTorch's threshold
        (pre > 20), where softplus is the identity: slope 1, curvature 0, as autograd has them.
        """
        W = positive(self.raw_weight)
        pre = F.linear(z, W, self.bias)
        d_pre = F.linear(dz, W)
        d2_pre = F.linear(d2z, W)
        raw_skip = self.raw_skip
        if raw_skip is not None:
            skip = positive(raw_skip)  # d inputs / d input_a = e_a, so the skip adds column a of V
            pre = pre + F.linear(inputs, skip)
            d_pre = d_pre + skip.t()[:, None, :]
        sig = torch.sigmoid(pre)
        beyond = pre > 20.0
        if bool(beyond.any()):
            slope = torch.where(beyond, torch.ones_like(sig), sig)
            curvature = torch.where(beyond, torch.zeros_like(sig), sig * (1.0 - sig))
        else:  # the usual case: no pre-activation on softplus's linear branch
            slope, curvature = sig, torch.addcmul(sig, sig, sig, value=-1.0)
        if torch.is_grad_enabled():
            return F.softplus(pre), slope * d_pre, torch.addcmul(slope * d2_pre, curvature * d_pre[0], d_pre[0])
        # rollouts: in place, no graph (a sixth fewer passes over the (k, N, width) tangents)
        d2_out = d2_pre.mul_(slope).addcmul_(curvature.mul_(d_pre[0]), d_pre[0])  # before d_pre changes
        return F.softplus(pre), d_pre.mul_(slope), d2_out


class MonotoneConvexNet(nn.Module):
    """g: R^k -> R, strictly increasing and convex in every input, for any weights.

    An input-convex network whose input weights are positive too:

        z_1     = softplus(W_0 x + b_0)
        z_{l+1} = softplus(W_l z_l + V_l x + b_l)
        g(x)    = w . z_L + u . x + eps * sum_k algebraic_softplus(x_k)

    with W_l, V_l, w, u positive (softplus of raw parameters). softplus is convex
    and non-decreasing, so each z_l is convex and non-decreasing in x, and so is g.
    The eps term makes g strictly increasing and strictly convex in each input,
    with a floor that does not underflow. No output bias: a constant in the
    energy changes no force, temperature or pressure, so it could not be learned.
    """

    def __init__(self, in_features: int, hidden: Sequence[int] = (32, 32), eps: float = 1e-3):
        super().__init__()
        if len(hidden) == 0:
            raise ValueError("MonotoneConvexNet needs at least one hidden layer")
        self.eps = eps
        widths = [in_features] + list(hidden)
        self.layers = nn.ModuleList(
            [ConvexLayer(w_in, w_out, in_features, skip=k > 0) for k, (w_in, w_out) in enumerate(pairwise(widths))]
        )
        # (1, width) rather than (width,): TorchScript's autodiff of linear wants 2-D weights
        self.raw_out = nn.Parameter(torch.empty(1, hidden[-1]))
        self.raw_out_skip = nn.Parameter(torch.empty(1, in_features))
        _init_positive(self.raw_out, hidden[-1])
        _init_positive(self.raw_out_skip, 10 * in_features)  # a small linear part to start with

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """inputs (..., in_features) -> g (...)."""
        z = inputs
        for layer in self.layers:
            z = layer(z, inputs)
        g = (F.linear(z, positive(self.raw_out)) + F.linear(inputs, positive(self.raw_out_skip))).squeeze(-1)
        return g + self.eps * algebraic_softplus(inputs).sum(-1)

    def with_derivatives(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(g (N,), dg/dinputs (N, k), d^2 g/d input_0^2 (N,)) from one forward pass carrying the tangents.

        Forward mode: per particle, the k first derivatives and the one second derivative that T = dU/dS,
        the pressure, dU/dI and dT/dS need, without the double backward of autograd (a sixth of a
        rollout step at N = 1e4), and as ordinary operations that training differentiates once.
        """
        k, n = inputs.shape[-1], inputs.shape[0]
        z = inputs
        dz = torch.eye(k, dtype=inputs.dtype, device=inputs.device)[:, None, :].expand(k, n, k)
        d2z = torch.zeros_like(inputs)
        for layer in self.layers:
            z, dz, d2z = layer.with_tangents(z, dz, d2z, inputs)
        out, out_skip = positive(self.raw_out), positive(self.raw_out_skip)
        g = (F.linear(z, out) + F.linear(inputs, out_skip)).squeeze(-1) + self.eps * algebraic_softplus(inputs).sum(-1)
        root = torch.sqrt(1.0 + inputs * inputs)
        gradient = F.linear(dz, out).squeeze(-1).t() + out_skip + self.eps * 0.5 * (1.0 + inputs / root)
        first = inputs[:, 0]
        second = F.linear(d2z, out).squeeze(-1) + self.eps * 0.5 / (root[:, 0] * (1.0 + first * first))
        return g, gradient, second


class VolumetricEnergy(nn.Module):
    """U_vol(S, V): T = dU/dS > 0, P = -dU/dV > 0, jointly convex in (S, V) for V > 0.

    U_vol(S, V) = g(S, 1/V) with g increasing and convex. 1/V is convex and
    decreasing for V > 0, and a convex non-decreasing function of convex
    functions is convex, so U_vol is convex in (S, V); P = g_2 / V^2 > 0.
    """

    def __init__(self, hidden: Sequence[int] = (32, 32), eps: float = 1e-3):
        super().__init__()
        self.g = MonotoneConvexNet(2, hidden, eps)

    def forward(self, S: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        return self.g(torch.stack([S, 1.0 / V], dim=-1))

    def with_derivatives(self, S: torch.Tensor, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(U, dU/dS, dU/dV, d^2U/dS^2) by forward mode; dU/dV = -g_2 / V^2."""
        inverse = 1.0 / V
        U, gradient, second = self.g.with_derivatives(torch.stack([S, inverse], dim=-1))
        return U, gradient[:, 0], -gradient[:, 1] * inverse * inverse, second


class DeviatoricEnergy(nn.Module):
    """U_dev(S, I): increasing in S and in the strain invariant I >= 0, jointly convex."""

    def __init__(self, hidden: Sequence[int] = (32, 32), eps: float = 1e-3):
        super().__init__()
        self.g = MonotoneConvexNet(2, hidden, eps)

    def forward(self, S: torch.Tensor, I: torch.Tensor) -> torch.Tensor:
        return self.g(torch.stack([S, I], dim=-1))

    def with_derivatives(self, S: torch.Tensor, I: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(U, dU/dS, dU/dI, d^2U/dS^2) by forward mode."""
        U, gradient, second = self.g.with_derivatives(torch.stack([S, I], dim=-1))
        return U, gradient[:, 0], gradient[:, 1], second


__all__ = [
    "ConvexLayer",
    "DeviatoricEnergy",
    "MonotoneConvexNet",
    "VolumetricEnergy",
    "algebraic_softplus",
    "positive",
]
