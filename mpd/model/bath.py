"""The bath: single-particle friction and noise against a reservoir, in metriplectic form (physics.md, Open systems).

Colloids lose momentum to the solvent and the interface far faster than one
video frame, so their motion is overdamped and the centre of mass of a
cluster is damped as fast as one particle; pairwise friction, which conserves
momentum, cannot do that. The bath is one reservoir with entropy S_b,
constant temperature T_b (a large reservoir) and a velocity field u(x): the
solvent's flow, imposed by the drive (`mpd.geometry.kinematics`). Per particle
i, with independent Gaussian increments dW_i (a D-vector) and dU_i (a scalar):

    m dv~_i   = sqrt(2 k_B) G_i dW_i                      G_i^2 = gamma_i m T_b
    T_i dS~_i = sqrt(2 k_B) K_i dU_i                      K_i^2 = kappa_i >= 0
    T_b dS~_b = -sqrt(2 k_B) sum_i [G_i (v_i - u_i) . dW_i + K_i dU_i]

so m (v - u) . dv~ + T_i dS~_i + T_b dS~_b = 0 per particle: M dE/dz = 0 in
the frame of the solvent (the energy a particle loses heats the reservoir).
The non-zero blocks of M (order v_i, S_i, S_b) are

    M_vv = gamma T_b / m I,   M_vSb = -gamma (v - u),
    M_SS = kappa / T_i^2,     M_SSb = -kappa / (T_i T_b),
    M_SbSb = sum_i [gamma m |v_i - u_i|^2 / T_b + kappa_i / T_b^2],

and M dS/dz (dS/dz = 1 on every S_k and on S_b) gives

    v_i: -gamma_i (v_i - u_i)                       Stokes friction against the solvent
    S_i: (kappa_i / T_i) (1/T_i - 1/T_b)            heat exchange: T_i relaxes to T_b
    S_b: sum_i gamma m |v - u|^2 / T_b + kappa (1/T_b^2 - 1/(T_i T_b)),

hence dE/dt + T_b dS_b/dt = 0 and dS/dt + dS_b/dt = sum gamma m |v - u|^2 / T_b
+ kappa (1/T_i - 1/T_b)^2 >= 0 without noise. The noise covariance is
2 k_B M dt by construction; the velocity part gives <(v - u)^2> = k_B T_b / m
per component in equilibrium (equipartition at the bath temperature). div M:
M_vv is constant and M_vSb does not depend on S_b, so the v rows get nothing;
the S_i row gets d(kappa_i / T_i^2)/dS_i = T'_i (dkappa/dT_i / T_i^2 - 2 kappa_i / T_i^3)
with T'_i = dT_i/dS_i. Total momentum is not conserved: on purpose, the
solvent takes it (docs/model.md, Bath).

Learned: gamma (friction rate, 1/time, a positive scalar), T_b (a positive
scalar, in the units of T_i) and kappa(T_i / T_b) (a positive function).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .networks import PositiveScalar, mlp


class BathTerms(NamedTuple):
    """The bath's per-particle coefficients at one state (N rows)."""

    gamma: torch.Tensor  # (N,) friction rate
    T_b: torch.Tensor  # () bath temperature
    kappa: torch.Tensor  # (N,) heat conductance K_i^2 to the bath
    dkappa_dT: torch.Tensor  # (N,) d kappa / d T_i


class Bath(nn.Module):
    """Learned bath coefficients: gamma > 0, T_b > 0 and kappa(T_i / T_b) >= 0."""

    def __init__(self, hidden: Sequence[int] = (16,), friction: float = 1.0, temperature: float = 1.0):
        super().__init__()
        self.log_gamma = PositiveScalar(friction)
        self.log_T_b = PositiveScalar(temperature)
        self.conductance = mlp(1, hidden, 1)

    @property
    def gamma(self) -> torch.Tensor:
        return self.log_gamma()

    @property
    def T_b(self) -> torch.Tensor:
        return self.log_T_b()

    def terms(self, T: torch.Tensor, with_derivatives: bool, create_graph: bool) -> BathTerms:
        """gamma, T_b, kappa and dkappa/dT at the particles' temperatures T (N,)."""
        T_b = self.T_b
        T_in = T.detach().requires_grad_(True) if with_derivatives and not T.requires_grad else T
        kappa = F.softplus(self.conductance(torch.log(T_in / T_b)[:, None]).squeeze(-1))
        if with_derivatives:
            grads = torch.autograd.grad([kappa.sum()], [T_in], create_graph=create_graph, retain_graph=True)
            dkappa = grads[0]
            assert dkappa is not None
        else:
            dkappa = torch.zeros_like(kappa)
        gamma = self.gamma.expand_as(kappa)
        if not create_graph:
            gamma, T_b, kappa, dkappa = gamma.detach(), T_b.detach(), kappa.detach(), dkappa.detach()
        return BathTerms(gamma, T_b, kappa, dkappa)


def bath_drift(terms: BathTerms, T: torch.Tensor, dT_dS: torch.Tensor, v: torch.Tensor, flow: torch.Tensor,
               k_B: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(to v, to S) of M dS/dz [+ k_B div M] from the bath, per particle."""
    to_v = -terms.gamma[:, None] * (v - flow)
    to_S = terms.kappa / T * (1.0 / T - 1.0 / terms.T_b)
    if k_B is not None:
        to_S = to_S + k_B * dT_dS * (terms.dkappa_dT / T**2 - 2.0 * terms.kappa / T**3)
    return to_v, to_S


def bath_entropy_rate(terms: BathTerms, T: torch.Tensor, v: torch.Tensor, flow: torch.Tensor,
                      mass: torch.Tensor) -> torch.Tensor:
    """dS_b/dt of the deterministic part, M dS/dz in the S_b row (diagnostics and tests)."""
    peculiar = ((v - flow) ** 2).sum(-1)
    return (terms.gamma * mass * peculiar / terms.T_b
            + terms.kappa * (1.0 / terms.T_b**2 - 1.0 / (T * terms.T_b))).sum()


def bath_marginal(terms: BathTerms, T: torch.Tensor, mass: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The bath's share of M_ii: (velocity block / I, entropy entry), (N,) each; no v-S cross term."""
    return terms.gamma * terms.T_b / mass, terms.kappa / T**2


def bath_noise(terms: BathTerms, T: torch.Tensor, mass: torch.Tensor, k_B: torch.Tensor,
               dW: torch.Tensor, dU: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dv~, dS~) of the bath for increments dW (N, D), dU (N,): covariance 2 k_B M_bath per unit time."""
    amplitude = torch.sqrt(2 * k_B)
    G = torch.sqrt(terms.gamma * mass * terms.T_b)
    dv = amplitude * (G / mass)[:, None] * dW
    dS = amplitude * torch.sqrt(terms.kappa) * dU / T
    return dv, dS


def equilibrium_velocity_variance(bath: Bath, k_B: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """k_B T_b / m: the bath's equipartition variance of each velocity component (model units), per mass given."""
    return (k_B * bath.T_b / mass).detach()


__all__ = [
    "Bath",
    "BathTerms",
    "bath_drift",
    "bath_entropy_rate",
    "bath_marginal",
    "bath_noise",
    "equilibrium_velocity_variance",
]
