"""The plain MLP of the model's learned shapes, with forward-mode derivatives along one input direction.

The volume kernel W(r), the noise amplitudes (a, b, c)(rho, T) and the bath are
SiLU MLPs. Forces and div(M) need their derivatives with respect to one input
(r for W, T for the amplitudes). Reverse mode gets them by a backward pass over
every pair, and training then differentiates that backward pass once more (a
double backward, the bulk of a training step's time and memory: issue 14).
Forward mode carries the tangent along the forward pass instead: one more
matrix product per layer and a few elementwise terms, and ordinary operations
that a training graph differentiates like the values themselves.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Sequential):
    """Linear, SiLU, Linear, SiLU, ..., Linear (an nn.Sequential: its state-dict keys are the usual 0.weight ...)."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        first = True
        for layer in self:
            if torch.jit.is_scripting():
                h = layer(h)
            elif first and torch.is_grad_enabled():  # training: the first layer's backward with thin products
                h = self._first_layer(layer, h)
            else:
                h = layer(h)
            first = False
        return h

    @torch.jit.unused
    def _first_layer(self, layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
        if isinstance(layer, nn.Linear) and layer.bias is not None and layer.in_features < layer.out_features:
            return _ThinInputLinear.apply(h, layer.weight, layer.bias)
        return layer(h)

    def with_tangent(self, h: torch.Tensor, dh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(output, its directional derivative) for the input h and the input tangent dh, same shape.

        Linear: the tangent goes through the weights only. SiLU: d/dz z sigmoid(z) = sigmoid(z) (1 + z (1 - sigmoid(z))).
        In place where no graph is recorded (rollouts), which halves the time on a chunk of pairs.
        """
        if not torch.jit.is_scripting() and torch.is_grad_enabled():
            params = self._linear_parameters()
            if params is not None and (h.requires_grad or dh.requires_grad or params[0].requires_grad):
                return _TangentMLPFunction.apply(h, dh, *params)
        linear = True  # layers alternate (TorchScript's isinstance does not refine in this loop)
        for layer in self:
            if linear:
                if torch.jit.is_scripting():  # no layer.weight on a module of unknown type: W dh = layer(dh) - layer(0)
                    dh = layer(dh) - layer(torch.zeros_like(dh[:1]))
                else:
                    dh = F.linear(dh, layer.weight)
                h = layer(h)
            else:
                _, h, slope = _silu_and_slope(h)
                dh = slope * dh if torch.is_grad_enabled() else slope.mul_(dh)
            linear = not linear
        return h, dh

    @torch.jit.unused
    def _linear_parameters(self) -> list[torch.Tensor] | None:
        """[W_1, b_1, W_2, b_2, ...] of the Linear layers, or None when one has no bias."""
        params: list[torch.Tensor] = []
        for layer in self:
            if isinstance(layer, nn.Linear):
                if layer.bias is None:
                    return None
                params += [layer.weight, layer.bias]
        return params


def _silu_and_slope(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sigmoid(z), silu(z), silu'(z)), with silu' = sig + silu (1 - sig): four passes over z (seven written
    out plainly)."""
    sig = torch.sigmoid(z)
    value = z * sig
    return sig, value, torch.addcmul(value, value, sig, value=-1.0).add_(sig)


def chunk_rows(chunk: int, device: torch.device) -> int:
    """Pairs per chunk on `device`: `chunk` on CPU, where it keeps a chunk's activations in cache; on an
    accelerator at least 2^20, since there each chunk is a round of kernel launches and the cache argument
    does not apply (not measured: no GPU was lent while this was written)."""
    return chunk if device.type == "cpu" else max(chunk, 1 << 20)


# Training keeps every activation of the pair networks for its backward pass: a step's peak is about 7.5 kB
# per pair (issue 14, benchmarks/results/model.md). Above this many pairs in one training batch the pair chunks
# are recomputed in backward instead (activation checkpointing): about 2-5 kB per pair, for up to 1.4x the
# step time. Below it memory is not the limit (250 000 pairs: under 2 GB either way).
RECOMPUTE_ABOVE_PAIRS = 250_000
RECOMPUTE_MODES = ("auto", "always", "never")


def recompute_activations(mode: str, n_pairs: int, threshold: int = RECOMPUTE_ABOVE_PAIRS) -> bool:
    """Whether to recompute a training step's pair chunks in backward: mode "always", "never" or "auto"
    (above RECOMPUTE_ABOVE_PAIRS pairs)."""
    if mode == "always":
        return True
    if mode == "never":
        return False
    return n_pairs > threshold


def _weight_gradient(g: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """g^T a, (out, in), for many rows. With few inputs (the first layer: rho, log T) the product is
    taken as (a^T g)^T: the BLAS's (out, rows) x (rows, 2) runs at a tenth of its speed (measured
    0.44 ms against 0.07 ms for 16384 rows)."""
    if a.shape[-1] < g.shape[-1]:
        return (a.t() @ g).t()
    return g.t() @ a


def _input_gradient(g: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """g W, (rows, in); as (W^T g^T)^T when the layer has few inputs (0.31 ms against 0.16 ms)."""
    if W.shape[1] < W.shape[0]:
        return (W.t() @ g.t()).t()
    return g @ W


class _ThinInputLinear(torch.autograd.Function):
    """F.linear whose backward takes the thin products of `_weight_gradient` and `_input_gradient`
    (a first layer with a handful of inputs; PyTorch's own backward runs them at a tenth of the speed)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, W: torch.Tensor, b: torch.Tensor):
        ctx.save_for_backward(x, W)
        return torch.addmm(b, x, W.t())

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # plain differentiable operations: forces differentiate through it again
        x, W = ctx.saved_tensors
        g_x = _input_gradient(g, W) if ctx.needs_input_grad[0] else None
        return g_x, _weight_gradient(g, x), g.sum(0)


class _TangentMLPFunction(torch.autograd.Function):
    """`MLP.with_tangent` with a hand-written backward, for training.

    Autograd would keep every intermediate of the SiLU tangents and run a dozen
    generic elementwise backward nodes per layer; this keeps four (rows, width)
    tensors per hidden layer (the pre-activation z, its tangent dz, sigmoid(z)
    and silu'(z)) and recomputes the rest. Backward, with g_z and g_dz the gradients reaching a
    layer's output and its tangent:
        dL/dW = g_z^T a + g_dz^T da,  dL/db = sum g_z,  g_a = g_z W,  g_da = g_dz W
    and through a SiLU (a = silu(z), da = silu'(z) dz):
        g_z <- g_a silu'(z) + g_da silu''(z) dz,   g_dz <- g_da silu'(z).
    Not differentiable twice (training differentiates the loss once): asked to, it raises.
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, dh: torch.Tensor, *params: torch.Tensor):
        a, da = h, dh
        saved = [h, dh]
        n_layers = len(params) // 2
        for layer in range(n_layers):
            W, b = params[2 * layer], params[2 * layer + 1]
            z, dz = torch.addmm(b, a, W.t()), da @ W.t()
            if layer == n_layers - 1:
                a, da = z, dz
                break
            sig, a, first = _silu_and_slope(z)
            saved += [z, dz, sig, first]
            da = first * dz
        ctx.save_for_backward(*saved, *params)
        ctx.n_layers = n_layers
        return a, da

    @staticmethod
    def backward(ctx, g_z: torch.Tensor, g_dz: torch.Tensor):
        if torch.is_grad_enabled():  # create_graph: a silent first-order answer would drop a path of the second
            raise RuntimeError("MLP.with_tangent cannot differentiate twice in training mode; evaluate it under "
                               "torch.no_grad() or differentiate the network by autograd instead")
        n_layers = ctx.n_layers
        saved = ctx.saved_tensors
        h, dh = saved[0], saved[1]
        activations = saved[2:2 + 4 * (n_layers - 1)]
        params = saved[2 + 4 * (n_layers - 1):]
        grads: list[torch.Tensor | None] = [None] * len(params)
        g_h = g_dh = None
        for layer in reversed(range(n_layers)):
            W = params[2 * layer]
            if layer == 0:
                a, da = h, dh
            else:
                z, dz, sig, first = activations[4 * (layer - 1):4 * layer]
                a, da = z * sig, first * dz
            grads[2 * layer] = _weight_gradient(g_z, a) + _weight_gradient(g_dz, da)
            grads[2 * layer + 1] = g_z.sum(0)
            if layer == 0:
                if ctx.needs_input_grad[0]:
                    g_h = _input_gradient(g_z, W)
                if ctx.needs_input_grad[1]:
                    g_dh = _input_gradient(g_dz, W)
            else:  # in place where nothing else holds the tensor: the backward records no graph
                g_a, g_da = g_z @ W, g_dz @ W
                # silu'' = sig (1 - sig) (2 + z (1 - 2 sig)) = (sig - sig^2) (2 + z - 2 a)
                second = torch.addcmul(sig, sig, sig, value=-1.0).mul_(torch.add(z, a, alpha=-2.0).add_(2.0))
                g_z = torch.addcmul(second.mul_(dz).mul_(g_da), g_a, first)
                g_dz = g_da.mul_(first)
        return (g_h, g_dh, *grads)


def mlp(n_in: int, hidden: Sequence[int], n_out: int, out_bias: bool = True) -> MLP:
    """Plain MLP with SiLU: smooth, because forces and div(M) differentiate through it."""
    layers: list[nn.Module] = []
    width = n_in
    for n_hidden in hidden:
        layers += [nn.Linear(width, n_hidden), nn.SiLU()]
        width = n_hidden
    layers.append(nn.Linear(width, n_out, bias=out_bias))
    return MLP(*layers)


__all__ = ["MLP", "RECOMPUTE_ABOVE_PAIRS", "RECOMPUTE_MODES", "chunk_rows", "mlp", "recompute_activations"]
