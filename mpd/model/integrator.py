"""One Euler-Maruyama step of the learned dynamics (physics.md, Rollout).

    v <- v + f_v dt + dv~ sqrt(dt);   x <- x + v dt;   S <- S + f_S dt + dS~ sqrt(dt)

Positions take the new velocity (semi-implicit Euler, as in physics.md); the
noise acts on velocity and entropy only. Exterior particles are returned
unchanged: the caller prescribes their positions and velocities from data (and
their entropies, e.g. from the teacher) and rebuilds the pair list, since
particles move between steps.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .dynamics import MetriplecticModel, State
from .geometry import PairTensors


class EulerMaruyama(nn.Module):
    """The step as a module, for TorchScript: forward(state, pairs, dt, interior, generator, noise).

    Same contract as euler_maruyama_step, except that grad mode must already be
    on (TorchScript cannot switch it; the forces are autograd gradients).
    """

    def __init__(self, model: MetriplecticModel):
        super().__init__()
        self.model = model

    def forward(
        self,
        state: State,
        pairs: PairTensors,
        dt: float,
        interior: torch.Tensor,
        generator: torch.Generator | None = None,
        noise: bool = True,
        flow: torch.Tensor | None = None,
    ) -> State:
        f_v, f_S = self.model.drift(state, pairs, thermal=noise, flow=flow)
        if noise:
            dv, dS = self.model.noise(state, pairs, generator)
        else:
            dv, dS = torch.zeros_like(state.v), torch.zeros_like(state.S)
        sqrt_dt = math.sqrt(dt)
        v_new = state.v + f_v * dt + dv * sqrt_dt
        x_new = state.x + v_new * dt
        S_new = state.S + f_S * dt + dS * sqrt_dt
        moves = interior[:, None]
        return State(
            torch.where(moves, x_new, state.x).detach(),
            torch.where(moves, v_new, state.v).detach(),
            torch.where(interior, S_new, state.S).detach(),
        )


def euler_maruyama_step(
    model: MetriplecticModel,
    state: State,
    pairs: PairTensors,
    dt: float,
    interior: torch.Tensor,
    generator: torch.Generator | None = None,
    noise: bool = True,
    flow: torch.Tensor | None = None,
) -> State:
    """The next state; only particles with interior[i] move.

    flow: the background (solvent) velocity at each particle during the step,
    (N, D), which the bath's friction acts against (None: at rest).

    noise=False is the deterministic k_B -> 0 limit: it drops both the noise and
    k_B div(M), so energy is conserved and entropy produced up to time
    discretisation. The dtype and device follow the state (the model's
    parameters must match: model.to(dtype)). Grad mode is switched on inside,
    because the forces are autograd gradients; the result is detached.
    """
    with torch.enable_grad():
        return EulerMaruyama(model)(state, pairs, dt, interior, generator, noise, flow)


__all__ = ["EulerMaruyama", "euler_maruyama_step"]
