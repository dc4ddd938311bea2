"""One Euler-Maruyama step of the learned dynamics (physics.md, Rollout).

    v <- v + f_v dt + dv~ sqrt(dt);   x <- x + v dt;   S <- S + f_S dt + dS~ sqrt(dt)

Positions take the new velocity (semi-implicit Euler, as in physics.md); the
noise acts on velocity and entropy only.

The bracket conserves the total energy E exactly in continuous time (with
k_B div M, the Ito terms cancel), but this step does not: its noise adds
energy at second order, about k_B tr(M) dt per step on average, and in a
closed box nothing takes it out again. The entropies absorb it, T = dU/dS
grows with them, and so do the noise and the kinetic temperature: calibrated
star-polymer rollouts gained 3 % (SP11) and 130 % (SP51) of their energy over
1000 frames, and SP51 warmed by 20-30 %. `restore_energy` puts a closed
system back on its energy shell after each step by one common shift of the
entropies (the first law held exactly; momentum and positions untouched). Exterior particles are returned
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
    on (TorchScript cannot switch it; the forces are autograd gradients). The
    scripted module takes a torch.Generator (or None); eagerly, `generator` may
    also be a `mpd.model.streams.CounterNoise`. `counter_step` is the step with
    the counter stream given as (ids, seed, step), in TorchScript too.
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
        f_v, f_S, dv, dS = self.model.drift_and_noise(state, pairs, generator, noise, flow)
        return _advance(state, dt, interior, f_v, f_S, dv, dS)

    @torch.jit.export
    def counter_step(
        self,
        state: State,
        pairs: PairTensors,
        dt: float,
        interior: torch.Tensor,
        ids: torch.Tensor,
        seed: int,
        step: int,
        noise: bool = True,
        flow: torch.Tensor | None = None,
    ) -> State:
        """forward with the counter stream: each pair's increments from (seed, step, the ids of its ends),
        each particle's bath increments from (seed, step, its id); ids (N,) int64 in [0, 2^32)
        (`mpd.model.streams`; unchecked here, `CounterNoise` checks them)."""
        dW: torch.Tensor | None = None
        dV: torch.Tensor | None = None
        dW_bath: torch.Tensor | None = None
        dU_bath: torch.Tensor | None = None
        if noise:
            dW, dV, dW_bath, dU_bath = self.model.counter_increments(state, pairs, ids, seed, step)
        f_v, f_S, dv, dS = self.model.drift_and_noise_from_increments(state, pairs, noise, flow, dW, dV, dW_bath,
                                                                      dU_bath)
        return _advance(state, dt, interior, f_v, f_S, dv, dS)


def _advance(state: State, dt: float, interior: torch.Tensor, f_v: torch.Tensor, f_S: torch.Tensor,
             dv: torch.Tensor, dS: torch.Tensor) -> State:
    """v <- v + f_v dt + dv~ sqrt(dt), x <- x + v dt, S <- S + f_S dt + dS~ sqrt(dt) where interior."""
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
    discretisation. generator: a torch.Generator, None (torch's default) or a
    `mpd.model.streams.CounterNoise` (noise keyed by particle ids and the step,
    independent of the pair list's order). The dtype and device follow the state (the model's
    parameters must match: model.to(dtype)). Grad mode is switched on inside,
    because the forces are autograd gradients; the result is detached.
    """
    with torch.enable_grad():
        return EulerMaruyama(model)(state, pairs, dt, interior, generator, noise, flow)


def _kinetic64(model: MetriplecticModel, state: State, pairs: PairTensors) -> float:
    mass = model.particle_mass(pairs, state.x.shape[0], detach=True)
    return float((0.5 * mass[:, None] * state.v * state.v).detach().double().sum())


def closed_energy(model: MetriplecticModel, state: State, pairs: PairTensors) -> float:
    """The total energy E = sum_i m_i v_i^2 / 2 + U_i, summed in float64 whatever the model's dtype.

    A float32 sum over N particles errs by about sqrt(N) x 6e-8 x |U|, more
    than the energy one step moves; the per-particle terms are float32-exact
    enough (`restore_energy` holds E to that).
    """
    with torch.enable_grad():
        U = model.potential(state.x.detach(), state.S.detach(), pairs).detach()
    return _kinetic64(model, state, pairs) + float(U.double().sum())


def restore_energy(model: MetriplecticModel, state: State, pairs: PairTensors, energy: float,
                   iterations: int = 8, tolerance: float = 1e-10) -> tuple[State, bool]:
    """(the state with every entropy shifted by one constant c so that `closed_energy` is `energy`,
    whether it got there).

    For a closed system (every particle predicted, no bath), whose exact
    dynamics conserve E. Newton's method on sum_i U_i(S_i + c) = E - kinetic:
    increasing and convex in c (T > 0, dT/dS > 0 by construction), so the
    iterates approach the root monotonically after the first (quadratically:
    a few iterations reach `tolerance` relative to the internal energy, or
    the resolution of the model's dtype, 8 eps sum |U_i|, if that is coarser).
    Positions and velocities, hence momentum, are untouched. Where no root is
    found (the internal energy cannot fall that far, so the iterates chase T
    towards zero; or a non-finite value appears) the state comes back
    unchanged and False.
    """
    with torch.enable_grad():
        x, S = state.x.detach(), state.S.detach()
        volume, invariant = (t.detach() for t in model.volume_and_invariant(x, pairs))
        target = float(energy) - _kinetic64(model, state, pairs)
        shift = torch.zeros((), dtype=S.dtype, device=S.device)
        eps = torch.finfo(S.dtype).eps
        for _ in range(iterations):
            shifted = (S + shift).requires_grad_(True)
            U = model.internal_energy(shifted, volume, invariant)
            (T,) = torch.autograd.grad([U.sum()], [shifted])
            U64 = U.detach().double()
            residual, slope = float(U64.sum()) - target, float(T.double().sum())
            if not (math.isfinite(residual) and math.isfinite(slope) and slope > 0):
                return state, False
            if abs(residual) <= max(tolerance * max(abs(target), 1.0), 8 * eps * float(U64.abs().sum())):
                return State(state.x, state.v, (S + shift).detach()), True
            shift = shift - residual / slope
    return state, False


__all__ = ["EulerMaruyama", "closed_energy", "euler_maruyama_step", "restore_energy"]
