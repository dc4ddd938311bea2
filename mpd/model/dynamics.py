"""The solid-extended metriplectic particle model: energy, drift, noise, likelihood.

State per particle: position x_i, velocity v_i, entropy S_i. With the symbols of
docs/physics.md (D dimensions, h cut-off, e_ij = r_ij/|r_ij|, v_ij = v_i - v_j):

    E = sum_i m_i v_i^2/2 + U_i,   U_i = U_vol(S_i, V_i) + U_dev(S_i, I_i),   S = sum_i S_i
    dz = [L dE/dz + M dS/dz + k_B div(M)] dt + dz~,   <dz~ dz~^T> = 2 k_B M dt

L gives dx = v dt, m_i dv_i = -dU/dx_i dt (m_i: the mass of i's species, so each species
has its own mobility). M = sum over pairs of G_ij G_ij^T, where
G_ij maps the pair's Gaussian increments (dW_ij, dV_ij) to the pair's share of
(dv_i, dS_i, dv_j, dS_j). M is never formed; every term is a sum over pairs of
closed-form per-pair expressions (docs/model.md derives them):

    Pi_ij   = <(X_ij e_ij)(X_ij e_ij)^T> per unit increment
            = A^2 [I/2 + (1/2 - 1/D) e e^T] + B^2 e e^T / D
    M block of pair ij in the order (v_i, S_i, v_j, S_j), with u = v_ij, q = u.Pi u:
        M_vivi =  Pi/m_i^2        M_vivj = -Pi/(m_i m_j)     M_vjvj = Pi/m_j^2
        M_viSi = -Pi u/(2 m_i T_i) M_viSj = -Pi u/(2 m_i T_j)   (v_j rows: opposite sign, m_j)
        M_SiSi = (q/4 + C^2)/T_i^2,  M_SjSj = (q/4 + C^2)/T_j^2,  M_SiSj = (q/4 - C^2)/(T_i T_j)
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.utils.checkpoint
from torch import nn

from . import compiled
from .bath import Bath, BathTerms, bath_drift, bath_marginal, bath_noise
from .fused import pair_drift, pair_kicks, pair_marginal
from .geometry import (
    PairTensors,
    VolumeKernel,
    pair_relative_velocities,
    pair_separations,
    particle_density,
    strain_force,
    strain_invariant,
    strain_invariant_and_gradient,
)
from .layers import RECOMPUTE_MODES, chunk_rows, recompute_activations
from .monotonic import DeviatoricEnergy, VolumetricEnergy
from .networks import EntropyTeacher, NoiseAmplitudes, PositiveScalar
from .streams import CounterNoise, counter_increments


class State(NamedTuple):
    x: torch.Tensor  # (N, D) positions
    v: torch.Tensor  # (N, D) velocities
    S: torch.Tensor  # (N,)   entropies


class Thermodynamics(NamedTuple):
    """Per-particle energy and its derivatives at fixed pair list."""

    U: torch.Tensor  # (N,)   internal energy U_i
    force: torch.Tensor  # (N, D) -dU/dx_i of the total potential (conservative force)
    T: torch.Tensor  # (N,)   temperature dU_i/dS_i
    dT_dS: torch.Tensor  # (N,)   dT_i/dS_i = d^2U_i/dS_i^2 (zero when not requested)


class EnergyTerms(NamedTuple):
    """The energy's first derivatives by the fused evaluation (`MetriplecticModel.energy_terms`)."""

    U: torch.Tensor  # (N,)   internal energy U_i
    force: torch.Tensor  # (N, D) the strain part of -dU/dx (the pairs' volume part comes with the pair pass)
    T: torch.Tensor  # (N,)   temperature dU_i/dS_i
    dT_dS: torch.Tensor  # (N,)   dT_i/dS_i (zero when not requested)
    pressure_weight: torch.Tensor  # (N,) dU_i/dV_i V_i^2
    e: torch.Tensor  # (E, D) unit separations
    distance: torch.Tensor  # (E,) |r_ij|
    dW_dr: torch.Tensor  # (E,) the volume kernel's slope at |r_ij|


class PairTerms(NamedTuple):
    """Everything the mobility M of one pair depends on, per pair (E rows).

    dX_dTi is the derivative of amplitude X with respect to T_i at fixed rho, T_j;
    the S-derivatives that div(M) needs follow by the chain rule with dT_i/dS_i.
    """

    e: torch.Tensor  # (E, D) unit separation
    u: torch.Tensor  # (E, D) relative velocity v_ij
    T_i: torch.Tensor
    T_j: torch.Tensor
    dT_dS_i: torch.Tensor
    dT_dS_j: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    dA_dTi: torch.Tensor
    dA_dTj: torch.Tensor
    dB_dTi: torch.Tensor
    dB_dTj: torch.Tensor
    dC_dTi: torch.Tensor
    dC_dTj: torch.Tensor
    m_i: torch.Tensor  # (E,) masses of the two ends
    m_j: torch.Tensor


# ---------------------------------------------------------------------------
# Per-pair algebra of the noise and the mobility (pure functions of PairTerms)
# ---------------------------------------------------------------------------


def noise_projectors(e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """P_shear = I/2 + (1/2 - 1/D) e e^T and P_bulk = e e^T / D, (E, D, D).

    For dW with iid unit entries, <(dWbar e)(dWbar e)^T> = P_shear and
    <(tr dW / D)^2> e e^T = P_bulk, and the two parts are uncorrelated.
    """
    dim = e.shape[-1]
    eeT = e[:, :, None] * e[:, None, :]
    identity = torch.eye(dim, dtype=e.dtype, device=e.device)
    return 0.5 * identity + (0.5 - 1.0 / dim) * eeT, eeT / dim


def friction_tensor(A: torch.Tensor, B: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """Pi = <(X e)(X e)^T> = A^2 P_shear + B^2 P_bulk, (E, D, D)."""
    P_shear, P_bulk = noise_projectors(e)
    return (A * A)[:, None, None] * P_shear + (B * B)[:, None, None] * P_bulk


def friction_tensor_dT(terms: PairTerms, wrt_i: bool) -> torch.Tensor:
    """dPi/dT_i (wrt_i) or dPi/dT_j."""
    P_shear, P_bulk = noise_projectors(terms.e)
    dA = terms.dA_dTi if wrt_i else terms.dA_dTj
    dB = terms.dB_dTi if wrt_i else terms.dB_dTj
    return (2 * terms.A * dA)[:, None, None] * P_shear + (2 * terms.B * dB)[:, None, None] * P_bulk


def _matvec(matrix: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    return (matrix @ vector[:, :, None]).squeeze(-1)


def pair_mobility(terms: PairTerms) -> torch.Tensor:
    """M of each pair, (E, 2D+2, 2D+2), in the order (v_i, S_i, v_j, S_j).

    For tests and diagnostics only: the dynamics never assembles it.
    """
    dim = terms.e.shape[-1]
    Pi = friction_tensor(terms.A, terms.B, terms.e)
    Pi_u = _matvec(Pi, terms.u)
    q = (terms.u * Pi_u).sum(-1)
    C2 = terms.C * terms.C
    n_pairs = terms.e.shape[0]
    M = terms.e.new_zeros((n_pairs, 2 * dim + 2, 2 * dim + 2))
    vi, si = slice(0, dim), dim
    vj, sj = slice(dim + 1, 2 * dim + 1), 2 * dim + 1
    m_i, m_j = terms.m_i[:, None, None], terms.m_j[:, None, None]
    M[:, vi, vi] = Pi / m_i**2
    M[:, vj, vj] = Pi / m_j**2
    M[:, vi, vj] = -Pi / (m_i * m_j)
    M[:, vj, vi] = -Pi / (m_i * m_j)
    for rows, sign, m in ((vi, -1.0, terms.m_i), (vj, 1.0, terms.m_j)):
        M[:, rows, si] = sign * Pi_u / (2 * m * terms.T_i)[:, None]
        M[:, rows, sj] = sign * Pi_u / (2 * m * terms.T_j)[:, None]
        M[:, si, rows] = M[:, rows, si]
        M[:, sj, rows] = M[:, rows, sj]
    M[:, si, si] = (q / 4 + C2) / terms.T_i**2
    M[:, sj, sj] = (q / 4 + C2) / terms.T_j**2
    M[:, si, sj] = (q / 4 - C2) / (terms.T_i * terms.T_j)
    M[:, sj, si] = M[:, si, sj]
    return M


def entropy_gradient_flow(terms: PairTerms) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """M dS/dz per pair: dS/dz is 1 on every S_k, so this is the sum of the S_i and S_j columns.

    Returns (to p_i, to S_i, to S_j): the velocity rows in momentum form, v_i
    receives to_p_i / m_i and v_j receives -to_p_i / m_j (momentum conserved).
        p_i: -(1/T_i + 1/T_j) Pi u / 2   (pairwise friction)
        S_i: (q/4 + C^2)/T_i^2 + (q/4 - C^2)/(T_i T_j)
    """
    Pi_u = _matvec(friction_tensor(terms.A, terms.B, terms.e), terms.u)
    q = (terms.u * Pi_u).sum(-1)
    C2 = terms.C * terms.C
    inv_Ti, inv_Tj = 1.0 / terms.T_i, 1.0 / terms.T_j
    to_p_i = -((inv_Ti + inv_Tj) / 2)[:, None] * Pi_u
    cross = (q / 4 - C2) * inv_Ti * inv_Tj
    to_S_i = (q / 4 + C2) * inv_Ti**2 + cross
    to_S_j = (q / 4 + C2) * inv_Tj**2 + cross
    return to_p_i, to_S_i, to_S_j


def mobility_divergence(terms: PairTerms) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """div(M) of one pair, (div)_a = sum_b dM_ab/dz_b over the pair's (v_i, S_i, v_j, S_j).

    Hand-derived (docs/model.md). M depends on v only through u = v_ij and on
    S_k only through T_k (dT_k/dS_k = T'_k), in the amplitudes and explicitly:
        p_i: sum_{k=i,j} -(T'_k / 2) [dPi/dT_k u / T_k - Pi u / T_k^2]   (v_i: p_i / m_i)
        S_i: -tr(Pi) (1/m_i + 1/m_j) / (2 T_i)
             + T'_i [(u.dPi/dT_i u/4 + 2 C dC/dT_i)/T_i^2 - 2 (q/4 + C^2)/T_i^3]
             + T'_j [(u.dPi/dT_j u/4 - 2 C dC/dT_j)/(T_i T_j) - (q/4 - C^2)/(T_i T_j^2)]
    and S_j with i and j swapped; v_j receives -p_i / m_j (momentum form, as in entropy_gradient_flow).
    """
    T_i, T_j, u, C = terms.T_i, terms.T_j, terms.u, terms.C
    Pi = friction_tensor(terms.A, terms.B, terms.e)
    dPi_dTi = friction_tensor_dT(terms, wrt_i=True)
    dPi_dTj = friction_tensor_dT(terms, wrt_i=False)
    Pi_u, dPi_dTi_u, dPi_dTj_u = _matvec(Pi, u), _matvec(dPi_dTi, u), _matvec(dPi_dTj, u)
    q = (u * Pi_u).sum(-1)
    dq_dTi, dq_dTj = (u * dPi_dTi_u).sum(-1), (u * dPi_dTj_u).sum(-1)
    trace_Pi = torch.diagonal(Pi, dim1=-2, dim2=-1).sum(-1)
    C2 = C * C
    Ti_prime, Tj_prime = terms.dT_dS_i, terms.dT_dS_j

    to_p_i = -0.5 * (
        (Ti_prime / T_i)[:, None] * (dPi_dTi_u - Pi_u / T_i[:, None])
        + (Tj_prime / T_j)[:, None] * (dPi_dTj_u - Pi_u / T_j[:, None])
    )
    half_inverse_mass = 0.5 * (1.0 / terms.m_i + 1.0 / terms.m_j)
    to_S_i = (
        -trace_Pi * half_inverse_mass / T_i
        + Ti_prime * ((dq_dTi / 4 + 2 * C * terms.dC_dTi) / T_i**2 - 2 * (q / 4 + C2) / T_i**3)
        + Tj_prime * ((dq_dTj / 4 - 2 * C * terms.dC_dTj) / (T_i * T_j) - (q / 4 - C2) / (T_i * T_j**2))
    )
    to_S_j = (
        -trace_Pi * half_inverse_mass / T_j
        + Tj_prime * ((dq_dTj / 4 + 2 * C * terms.dC_dTj) / T_j**2 - 2 * (q / 4 + C2) / T_j**3)
        + Ti_prime * ((dq_dTi / 4 - 2 * C * terms.dC_dTi) / (T_i * T_j) - (q / 4 - C2) / (T_i**2 * T_j))
    )
    return to_p_i, to_S_i, to_S_j


def marginal_mobility(terms: PairTerms, pairs: PairTensors, n_particles: int) -> torch.Tensor:
    """M_ii, the (D+1) x (D+1) (v_i, S_i) block of M for every particle, (N, D+1, D+1).

    Each pair adds its (v_i, S_i) block to i and its (v_j, S_j) block to j:
        [[Pi/m^2, -/+ Pi u/(2 m T)], [., (q/4 + C^2)/T^2]]   (- for i, + for j; m, T of that end)
    """
    dim = terms.e.shape[-1]
    Pi = friction_tensor(terms.A, terms.B, terms.e)
    Pi_u = _matvec(Pi, terms.u)
    q = (terms.u * Pi_u).sum(-1)
    C2 = terms.C * terms.C
    out = terms.e.new_zeros((n_particles, dim + 1, dim + 1))
    for index, T, m, sign in ((pairs.i, terms.T_i, terms.m_i, -1.0), (pairs.j, terms.T_j, terms.m_j, 1.0)):
        block = terms.e.new_zeros((terms.e.shape[0], dim + 1, dim + 1))
        block[:, :dim, :dim] = Pi / (m * m)[:, None, None]
        block[:, :dim, dim] = sign * Pi_u / (2 * m * T)[:, None]
        block[:, dim, :dim] = block[:, :dim, dim]
        block[:, dim, dim] = (q / 4 + C2) / T**2
        out = out.index_add(0, index, block)
    return out


def assemble_drift(
    thermo: Thermodynamics, terms: PairTerms, pairs: PairTensors, mass: torch.Tensor, k_B: torch.Tensor | None,
    bath: BathTerms | None = None, v: torch.Tensor | None = None, flow: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(f_v, f_S) = L dE/dz + M dS/dz [+ k_B div M] summed over pairs and the bath (k_B None: no div M).

    mass: each particle's mass, (N,). Every pair's momentum term is added to
    particle i and subtracted from j, so total momentum is untouched by the pairwise dissipative and thermal parts; the
    conservative force is the gradient of a function of separations only, so it
    sums to zero as well. The bath (when given, with the velocities v and the
    background flow at each particle, zero when None) adds Stokes friction and
    heat exchange per particle (`mpd.model.bath`): it does not conserve momentum.
    """
    to_p_i, to_S_i, to_S_j = entropy_gradient_flow(terms)
    if k_B is not None:
        div_p_i, div_S_i, div_S_j = mobility_divergence(terms)
        to_p_i = to_p_i + k_B * div_p_i
        to_S_i = to_S_i + k_B * div_S_i
        to_S_j = to_S_j + k_B * div_S_j
    f_v = thermo.force.index_add(0, pairs.i, to_p_i).index_add(0, pairs.j, -to_p_i) / mass[:, None]
    f_S = torch.zeros_like(thermo.T).index_add(0, pairs.i, to_S_i).index_add(0, pairs.j, to_S_j)
    if bath is not None:
        assert v is not None
        background = torch.zeros_like(v) if flow is None else flow
        bath_v, bath_S = bath_drift(bath, thermo.T, thermo.dT_dS, v, background, k_B)
        f_v = f_v + bath_v
        f_S = f_S + bath_S
    return f_v, f_S


def covariance_floor(covariance: torch.Tensor, jitter: float, n_velocity: int,
                     scale_mean: torch.Tensor | None = None) -> torch.Tensor:
    """The likelihood's diagonal floor per row, (K, D+1): isotropic in velocity, separate for entropy.

    Each row's scale is its own: s_v = tr(Sigma_vv)/D for every velocity
    component (one value, so the NLL is invariant under rotations of the
    velocities) and s_S = Sigma_SS for the entropy (another unit). The floor is
    jitter_eff * (s + 1e-6 <s>), with <s> the batch mean of the same scales
    (`scale_mean`, (2,): data-parallel training passes the global batch's),
    which only keeps a row whose block vanishes (no neighbour, no bath) finite.
    jitter_eff = max(jitter, 100 eps) of the dtype (1.2e-5 in float32), so that
    the Cholesky factorisation is safe at the dtype's resolution. Detached: a
    numerical floor, not part of the model.
    """
    scales = row_scales(covariance, n_velocity).detach()
    mean = scales.mean(0) if scale_mean is None else scale_mean.detach()
    effective = max(float(jitter), 100.0 * torch.finfo(covariance.dtype).eps)
    per_row = effective * (scales + 1e-6 * mean)
    n_entropy = covariance.shape[-1] - n_velocity
    return torch.cat([per_row[:, :1].expand(-1, n_velocity), per_row[:, 1:].expand(-1, n_entropy)], dim=-1)


def row_scales(covariance: torch.Tensor, n_velocity: int) -> torch.Tensor:
    """(tr Sigma_vv / D, mean of the entropy diagonal) per row, (K, 2)."""
    diagonal = torch.diagonal(covariance, dim1=-2, dim2=-1)
    velocity = diagonal[:, :n_velocity].mean(-1)
    entropy = diagonal[:, n_velocity:].mean(-1) if diagonal.shape[-1] > n_velocity else torch.zeros_like(velocity)
    return torch.stack([velocity, entropy], dim=-1)


def gaussian_nll(residual: torch.Tensor, covariance: torch.Tensor, jitter: float,
                 scale_mean: torch.Tensor | None = None, n_velocity: int | None = None) -> torch.Tensor:
    """-log N(residual; 0, covariance + floor) per row, (K,), by batched Cholesky.

    Rows are (v_1..v_D, S); the floor is `covariance_floor` (isotropic in the
    velocities, so rotating the velocities leaves the NLL unchanged, and
    relative to each row's own scale, so a nearly singular row is not
    swamped by its neighbours' scale). n_velocity defaults to all components but the last.
    """
    n_velocity = residual.shape[-1] - 1 if n_velocity is None else n_velocity
    floor = covariance_floor(covariance, jitter, n_velocity, scale_mean)
    regularised = covariance + torch.diag_embed(floor)
    cholesky = torch.linalg.cholesky(regularised)
    whitened = torch.linalg.solve_triangular(cholesky, residual[:, :, None], upper=False).squeeze(-1)
    log_det_half = torch.log(torch.diagonal(cholesky, dim1=-2, dim2=-1)).sum(-1)
    k = residual.shape[-1]
    return 0.5 * (whitened * whitened).sum(-1) + log_det_half + 0.5 * k * math.log(2 * math.pi)


def _required(grads: list[torch.Tensor | None]) -> list[torch.Tensor]:
    """autograd.grad's results, none of which may be missing (TorchScript needs the check)."""
    out: list[torch.Tensor] = []
    for g in grads:
        assert g is not None, "an input does not reach the output"
        out.append(g)
    return out


def _differentiable(t: torch.Tensor) -> torch.Tensor:
    """t itself when it already carries a graph (training: keep it), else a fresh leaf."""
    return t if t.requires_grad else t.detach().requires_grad_(True)


def _with_bath_marginal(M: torch.Tensor, bath: BathTerms | None, T: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """M_ii (N, D+1, D+1) plus the bath's diagonal share (gamma T_b / m on the velocities, kappa / T^2 on S)."""
    if bath is None:
        return M
    vv, SS = bath_marginal(bath, T, mass)
    dim = M.shape[-1] - 1
    extra = torch.zeros_like(M)
    extra[:, :dim, :dim] = vv[:, None, None] * torch.eye(dim, dtype=M.dtype, device=M.device)
    extra[:, dim, dim] = SS
    return M + extra


def _kernel_with_r_derivative(model: MetriplecticModel, distance: torch.Tensor,
                              kind: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """model.kernel.with_r_derivative as a function of the model (what `mpd.model.compiled` compiles)."""
    return model.kernel.with_r_derivative(distance, kind)


# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------


class MetriplecticModel(nn.Module):
    """Learned solid-extended metriplectic particle model.

    All methods take PairTensors (current neighbours for the volume, noise and
    teacher; reference-configuration bonds for the strain) and work in
    O(number of pairs). They need autograd (forces are gradients of U),
    so call them with grad mode enabled, also in rollouts; create_graph=True
    keeps the graph for training (the likelihood does this itself).
    """

    def __init__(
        self,
        h: float,
        dim: int = 2,
        kernel_hidden: Sequence[int] = (32, 32),
        energy_hidden: Sequence[int] = (32, 32),
        amplitude_hidden: Sequence[int] = (32, 32),
        teacher_hidden: Sequence[int] = (64, 64),
        velocity_scale: float = 1.0,
        k_B: float = 1.0,
        mass: float = 1.0,
        solid: bool = True,
        strict_convexity: float = 1e-3,
        collinear_tol: float = 1e-2,
        bath: bool = False,
        bath_hidden: Sequence[int] = (16,),
        n_species: int = 1,
        teacher_velocities: bool = True,
    ):
        super().__init__()
        self.h = float(h)
        self.dim = int(dim)
        self.solid = bool(solid)
        # The bath module always exists (TorchScript wants a fixed structure); has_bath switches it on.
        self.has_bath = bool(bath)
        self.bath = Bath(bath_hidden)
        self.collinear_tol = float(collinear_tol)
        self.n_species = int(n_species)
        self.kernel = VolumeKernel(h, kernel_hidden, self.n_species)
        self.U_vol = VolumetricEnergy(energy_hidden, strict_convexity)
        self.U_dev = DeviatoricEnergy(energy_hidden, strict_convexity)
        self.amplitudes = NoiseAmplitudes(amplitude_hidden)
        self.teacher = EntropyTeacher(h, velocity_scale, teacher_hidden, use_velocities=teacher_velocities,
                                      n_species=n_species)
        self.log_k_B = PositiveScalar(k_B)  # k_B = softplus(raw)
        # One mass per species: in the overdamped limit the mobility of a species is dt/m (its diffusion
        # k_B T_b/(m gamma)), and a bidisperse monolayer's species diffuse at different rates. The mass
        # scale (geometric mean over species) is calibrated from the data; the species' log ratios to it
        # are learned from zero, scale-free (a softplus per species would move by the learning rate in
        # absolute units, and the calibrated scale is of order 100).
        self.log_mass = PositiveScalar(mass)
        self.species_log_mass = nn.Parameter(torch.zeros(self.n_species))
        # Pairs per chunk of the fused evaluation (drift_and_noise, predictive_moments): small enough that a
        # chunk's (2 x chunk, 32) activations stay in a core's cache, large enough that the per-operation
        # overhead does not show (measured at N = 1e4: 8192 is 5x faster than one pass over all pairs).
        self.pair_chunk = 8192
        self.recompute_activations = "auto"  # in training: mpd.model.layers.recompute_activations

    @torch.jit.unused
    def set_recompute_activations(self, mode: str) -> None:
        """Whether training recomputes the pair networks in backward: "auto" (above
        `mpd.model.layers.RECOMPUTE_ABOVE_PAIRS` pairs per batch), "always" or "never"."""
        if mode not in RECOMPUTE_MODES:
            raise ValueError(f"recompute_activations must be one of {', '.join(RECOMPUTE_MODES)}, got {mode!r}")
        self.recompute_activations = self.teacher.recompute_activations = mode

    # -- scalars --------------------------------------------------------------
    @property
    def k_B(self) -> torch.Tensor:
        return self.log_k_B()

    @property
    def mass(self) -> torch.Tensor:
        """The mass of each species, (n_species,): the scale times exp(the species' centred log ratio)."""
        ratio = self.species_log_mass - self.species_log_mass.mean()
        return self.log_mass() * torch.exp(ratio)

    def particle_mass(self, pairs: PairTensors, n_particles: int, detach: bool = False) -> torch.Tensor:
        """m_i of every particle, (N,), from its species (pairs.species; empty: all of species 0)."""
        mass = self.mass.detach() if detach else self.mass
        if pairs.species.shape[0] == 0:
            return mass[0].expand(n_particles)
        return mass[pairs.species]

    # -- energy ----------------------------------------------------------------
    def volume(self, x: torch.Tensor, pairs: PairTensors) -> torch.Tensor:
        """V_i = 1/d_i, d_i = W(0) + sum_j W(|r_ij|)."""
        distance = torch.linalg.vector_norm(pair_separations(x, pairs), dim=-1)
        W_self = self.kernel(distance.new_zeros(1))  # the self term takes no kind: one constant for every particle
        return 1.0 / particle_density(self.kernel(distance, pairs.pair_kind), W_self, pairs, x.shape[0])

    def strain_invariant(self, x: torch.Tensor, pairs: PairTensors) -> torch.Tensor:
        """I_i over the strain bonds (reference neighbours), zero where ill-conditioned."""
        return strain_invariant(x, pairs, self.collinear_tol)

    def internal_energy(self, S: torch.Tensor, V: torch.Tensor, I: torch.Tensor) -> torch.Tensor:
        """U_i = U_vol(S_i, V_i) + U_dev(S_i, I_i) (U_dev omitted for solid=False)."""
        U = self.U_vol(S, V)
        if self.solid:
            U = U + self.U_dev(S, I)
        return U

    def volume_and_invariant(self, x: torch.Tensor, pairs: PairTensors) -> tuple[torch.Tensor, torch.Tensor]:
        """(V_i, I_i), the arguments of U besides S (I zero for solid=False)."""
        V = self.volume(x, pairs)
        I = self.strain_invariant(x, pairs) if self.solid else torch.zeros_like(V)
        return V, I

    def potential(self, x: torch.Tensor, S: torch.Tensor, pairs: PairTensors) -> torch.Tensor:
        """U_i per particle, (N,): a function of the pair separations only."""
        V, I = self.volume_and_invariant(x, pairs)
        return self.internal_energy(S, V, I)

    def energy(self, state: State, pairs: PairTensors) -> torch.Tensor:
        """E = sum_i m_i v_i^2/2 + U_i (scalar)."""
        mass = self.particle_mass(pairs, state.x.shape[0])
        return 0.5 * (mass[:, None] * state.v * state.v).sum() + self.potential(state.x, state.S, pairs).sum()

    def thermodynamics(
        self, x: torch.Tensor, S: torch.Tensor, pairs: PairTensors, with_dT_dS: bool = True, create_graph: bool = False
    ) -> Thermodynamics:
        """U, the conservative force -dU/dx, T = dU_i/dS_i and dT_i/dS_i by autograd.

        U_i depends on S_i alone among the entropies, so the gradient of sum U with
        respect to S is T, and that of sum T is dT/dS, both exactly.
        """
        x_, S_ = _differentiable(x), _differentiable(S)
        V, I = self.volume_and_invariant(x_, pairs)
        U = self.internal_energy(S_, V, I)
        # Training (create_graph) differentiates T twice through the whole graph, which it keeps anyway
        # for the parameters' gradients. A rollout needs no graph through the pairs: dT/dS is a derivative
        # of the per-particle network alone (V and I do not depend on S), so it comes from a second,
        # per-particle evaluation (measured at N = 1e5: 10 % faster, 22 % less memory; in training the
        # second evaluation cost more than it saved).
        dU_dx, T = _required(torch.autograd.grad([U.sum()], [x_, S_], create_graph=create_graph))
        if with_dT_dS and create_graph:
            (dT_dS,) = _required(torch.autograd.grad([T.sum()], [S_], create_graph=True, retain_graph=True))
        elif with_dT_dS:
            S2 = S_.detach().requires_grad_(True)
            (T2,) = _required(torch.autograd.grad([self.internal_energy(S2, V.detach(), I.detach()).sum()], [S2],
                                                  create_graph=True))
            (dT_dS,) = _required(torch.autograd.grad([T2.sum()], [S2]))
        else:
            dT_dS = torch.zeros_like(T)
        if not create_graph:
            U, dU_dx, T, dT_dS = U.detach(), dU_dx.detach(), T.detach(), dT_dS.detach()
        return Thermodynamics(U, -dU_dx, T, dT_dS)

    # -- pair terms -------------------------------------------------------------
    def pair_terms(
        self, state: State, pairs: PairTensors, thermo: Thermodynamics, with_derivatives: bool, create_graph: bool
    ) -> PairTerms:
        r_ij = pair_separations(state.x, pairs)
        distance = torch.linalg.vector_norm(r_ij, dim=-1)
        e = r_ij / distance[:, None]
        rho = distance / self.h
        u = pair_relative_velocities(state.v, pairs)
        n_pairs = pairs.i.shape[0]
        # both ends in one batch: row k < E is end i, row E + k is end j
        T_ends = torch.cat([thermo.T[pairs.i], thermo.T[pairs.j]])
        rho_ends = torch.cat([rho, rho])
        # each factor row depends on its own T only: its T-derivative comes along the forward pass
        # (forward mode); d(f_i f_j)/dT_i = f_i' f_j. Without create_graph nothing differentiates the
        # amplitudes any further: no graph is recorded for them.
        if create_graph:
            factors, d_factors = self._amplitudes(rho_ends, T_ends, with_derivatives)
        else:
            with torch.no_grad():
                factors, d_factors = self._amplitudes(rho_ends, T_ends, with_derivatives)
        f_i, f_j = factors[:n_pairs], factors[n_pairs:]
        amplitude = f_i * f_j  # (E, 3): A, B, C symmetric in i, j
        if with_derivatives:
            d_amp_dTi = d_factors[:n_pairs] * f_j
            d_amp_dTj = f_i * d_factors[n_pairs:]
        else:
            d_amp_dTi = torch.zeros_like(amplitude)
            d_amp_dTj = torch.zeros_like(amplitude)
        if not create_graph:
            amplitude, d_amp_dTi, d_amp_dTj = amplitude.detach(), d_amp_dTi.detach(), d_amp_dTj.detach()
        T_i, T_j = thermo.T[pairs.i], thermo.T[pairs.j]
        mass = self.particle_mass(pairs, state.x.shape[0], detach=not create_graph)
        return PairTerms(
            e,
            u,
            T_i,
            T_j,
            thermo.dT_dS[pairs.i],
            thermo.dT_dS[pairs.j],
            amplitude[:, 0],
            amplitude[:, 1],
            amplitude[:, 2],
            d_amp_dTi[:, 0],
            d_amp_dTj[:, 0],
            d_amp_dTi[:, 1],
            d_amp_dTj[:, 1],
            d_amp_dTi[:, 2],
            d_amp_dTj[:, 2],
            mass[pairs.i],
            mass[pairs.j],
        )

    def _amplitudes(self, rho: torch.Tensor, T: torch.Tensor, with_derivatives: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(factors a, b, c (E, 3), their T-derivatives, zeros without with_derivatives)."""
        if with_derivatives:
            return self.amplitudes.with_T_derivative(rho, T)
        factors = self.amplitudes(rho, T)
        return factors, torch.zeros_like(factors)

    def _terms(self, state: State, pairs: PairTensors, with_derivatives: bool, create_graph: bool):
        thermo = self.thermodynamics(state.x, state.S, pairs, with_dT_dS=with_derivatives, create_graph=create_graph)
        return thermo, self.pair_terms(state, pairs, thermo, with_derivatives, create_graph)

    def bath_terms(self, T: torch.Tensor, with_derivatives: bool, create_graph: bool) -> BathTerms | None:
        """The bath's coefficients at temperatures T, or None for a model without a bath."""
        if not self.has_bath:
            return None
        return self.bath.terms(T, with_derivatives, create_graph)

    def pair_mobility(self, state: State, pairs: PairTensors) -> torch.Tensor:
        """Per-pair blocks of M, (E, 2D+2, 2D+2), order (v_i, S_i, v_j, S_j) (tests, diagnostics)."""
        _, terms = self._terms(state, pairs, with_derivatives=False, create_graph=False)
        return pair_mobility(terms)

    # -- dynamics ----------------------------------------------------------------
    def drift(
        self, state: State, pairs: PairTensors, thermal: bool = True, create_graph: bool = False,
        flow: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(f_v, f_S): dv = f_v dt + dv~,  dS = f_S dt + dS~.

        f_v = -dU/dx / m + [M dS/dz + k_B div M]_v,   f_S = [M dS/dz + k_B div M]_S.
        thermal=False drops k_B div(M): the k_B -> 0 limit, in which the noise
        vanishes too and dE/dt = 0, dS/dt >= 0 hold exactly (L dS/dz = M dE/dz = 0;
        with a bath, E + T_b S_b is conserved). k_B div(M) belongs with the
        noise: only together do they conserve E (in the mean, by Ito's formula).
        flow: the background (solvent) velocity at each particle, (N, D), for the
        bath's friction (None: at rest); ignored without a bath.
        """
        thermo, terms = self._terms(state, pairs, with_derivatives=thermal, create_graph=create_graph)
        mass = self.particle_mass(pairs, state.x.shape[0], detach=not create_graph)
        k_B = self.k_B if create_graph else self.k_B.detach()
        bath = self.bath_terms(thermo.T, thermal, create_graph)
        return assemble_drift(thermo, terms, pairs, mass, k_B if thermal else None, bath, state.v, flow)

    def noise_from_increments(
        self, state: State, pairs: PairTensors, dW: torch.Tensor, dV: torch.Tensor, T: torch.Tensor | None = None,
        dW_bath: torch.Tensor | None = None, dU_bath: torch.Tensor | None = None, create_graph: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(dv~, dS~) for given pair increments dW (E, D, D), dV (E,), exactly as physics.md:

            X_ij = A dWbar_ij + B (tr dW_ij / D) I
            m dv~_i   = sqrt(2 k_B) sum_j X_ij e_ij          (v_j gets minus: momentum conserved)
            T_i dS~_i = sqrt(2 k_B) sum_j [-1/2 (X_ij e_ij).v_ij + C_ij dV_ij]   (dV_ji = -dV_ij)

        plus, with a bath, its per-particle increments dW_bath (N, D) and dU_bath (N,)
        (`mpd.model.bath.bath_noise`). With unit-variance increments the result has
        covariance 2 k_B M (per unit time). create_graph: keep the graph through T and the bath's
        coefficients (differentiable rollouts, `mpd.cage`).
        """
        if T is None:
            T = self.thermodynamics(state.x, state.S, pairs, with_dT_dS=False, create_graph=create_graph).T
        r_ij = pair_separations(state.x, pairs)
        distance = torch.linalg.vector_norm(r_ij, dim=-1)
        e = r_ij / distance[:, None]
        u = pair_relative_velocities(state.v, pairs)
        factors_i = self.amplitudes(distance / self.h, T[pairs.i])
        factors_j = self.amplitudes(distance / self.h, T[pairs.j])
        A, B, C = (factors_i * factors_j).unbind(-1)
        dim = e.shape[-1]
        identity = torch.eye(dim, dtype=e.dtype, device=e.device)
        trace_dW = torch.diagonal(dW, dim1=-2, dim2=-1).sum(-1)
        dW_bar = 0.5 * (dW + dW.transpose(-1, -2)) - (trace_dW / dim)[:, None, None] * identity
        X = A[:, None, None] * dW_bar + (B * trace_dW / dim)[:, None, None] * identity
        amplitude = torch.sqrt(2 * self.k_B)
        kick = amplitude * _matvec(X, e)  # m dv~ of end i from this pair
        heat_work = -0.5 * (kick * u).sum(-1)  # same for both ends: X_ji e_ji . v_ji = X_ij e_ij . v_ij
        heat_conduction = amplitude * C * dV
        n = state.x.shape[0]
        mass = self.particle_mass(pairs, n)
        dv = state.v.new_zeros(state.v.shape).index_add(0, pairs.i, kick).index_add(0, pairs.j, -kick) / mass[:, None]
        T_dS = (
            state.S.new_zeros(n)
            .index_add(0, pairs.i, heat_work + heat_conduction)
            .index_add(0, pairs.j, heat_work - heat_conduction)
        )
        dS = T_dS / T
        bath = self.bath_terms(T, False, create_graph)
        if bath is not None:
            assert dW_bath is not None and dU_bath is not None
            dv_bath, dS_bath = bath_noise(bath, T, mass, self.k_B, dW_bath, dU_bath)
            dv = dv + dv_bath
            dS = dS + dS_bath
        return dv, dS

    def draw_increments(self, state: State, pairs: PairTensors, generator: torch.Generator | None):
        """The noise's unit increments, in the draw order: pair dW (E, D, D), dV (E,), then the bath's
        dW_bath (N, D), dU_bath (N,).

        generator: a torch.Generator (None: torch's default), which draws in pair order, or, outside
        TorchScript, a `mpd.model.streams.CounterNoise`, which keys each pair's increments by its two
        particle ids and the step (dV_ij = +/- the pair's number as id_i < id_j or not), and the bath's by
        the particle's id: the same noise in any pair order and orientation."""
        n_pairs, n, dim = pairs.i.shape[0], state.x.shape[0], state.x.shape[-1]
        if not torch.jit.is_scripting():  # noqa: SIM102 (alone, so that TorchScript skips the block)
            if isinstance(generator, CounterNoise):
                return generator.increments(n, pairs.i, pairs.j, dim, self.has_bath, state.x.dtype, state.x.device)
        dW = torch.randn([n_pairs, dim, dim], generator=generator, dtype=state.x.dtype, device=state.x.device)
        dV = torch.randn([n_pairs], generator=generator, dtype=state.x.dtype, device=state.x.device)
        dW_bath: torch.Tensor | None = None
        dU_bath: torch.Tensor | None = None
        if self.has_bath:
            dW_bath = torch.randn([n, dim], generator=generator, dtype=state.x.dtype, device=state.x.device)
            dU_bath = torch.randn([n], generator=generator, dtype=state.x.dtype, device=state.x.device)
        return dW, dV, dW_bath, dU_bath

    def counter_increments(self, state: State, pairs: PairTensors, ids: torch.Tensor, seed: int, step: int):
        """`draw_increments` with the counter stream (seed, step, ids (N,) int64 in [0, 2^32)), scriptable
        (`mpd.model.streams.counter_increments`; the ids' range is checked by `CounterNoise` only)."""
        return counter_increments(seed, step, ids.to(state.x.device), pairs.i, pairs.j, state.x.shape[-1],
                                  self.has_bath, state.x.dtype)

    def noise(
        self, state: State, pairs: PairTensors, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(dv~, dS~) per unit sqrt(dt): covariance 2 k_B M. Scale by sqrt(dt) to step.

        Draw order: pair increments dW (E, D, D), dV (E,), then the bath's dW_bath (N, D), dU_bath (N,);
        generator: as `draw_increments` (also a `CounterNoise`).
        """
        dW, dV, dW_bath, dU_bath = self.draw_increments(state, pairs, generator)
        dv, dS = self.noise_from_increments(state, pairs, dW, dV, None, dW_bath, dU_bath)
        return dv.detach(), dS.detach()

    def drift_and_noise(
        self, state: State, pairs: PairTensors, generator: torch.Generator | None = None, noise: bool = True,
        flow: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(f_v, f_S, dv~, dS~) of `drift(thermal=noise)` and `noise`, by the fused first-order evaluation.

        The same draws as `noise` (zeros with noise=False), and the same drift and noise to round-off:
        forces and the amplitudes' T-derivatives by forward mode (`energy_terms`), the pairs' algebra
        in cache-sized chunks (`mpd.model.fused`), no autograd over pairs. The rollout's step.
        generator: as `draw_increments` (a `CounterNoise` outside TorchScript).
        """
        dW: torch.Tensor | None = None
        dV: torch.Tensor | None = None
        dW_bath: torch.Tensor | None = None
        dU_bath: torch.Tensor | None = None
        if noise:
            dW, dV, dW_bath, dU_bath = self.draw_increments(state, pairs, generator)
        return self.drift_and_noise_from_increments(state, pairs, noise, flow, dW, dV, dW_bath, dU_bath)

    def drift_and_noise_from_increments(
        self, state: State, pairs: PairTensors, noise: bool, flow: torch.Tensor | None, dW: torch.Tensor | None,
        dV: torch.Tensor | None, dW_bath: torch.Tensor | None, dU_bath: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """`drift_and_noise` for given unit increments (those of `draw_increments`; None with noise=False)."""
        n = state.x.shape[0]
        thermo = self.energy_terms(state.x, state.S, pairs, noise, False)
        mass = self.particle_mass(pairs, n, detach=True)
        k_B = self.k_B.detach()
        bath = self.bath_terms(thermo.T, noise, False)  # autograd for its T-derivative: outside no_grad
        with torch.no_grad():
            sums = self._pair_sums(state.v, pairs, thermo, 1.0 / mass, k_B if noise else None, noise, dW, dV, False,
                                   False)
        f_v = (thermo.force + sums[0]) / mass[:, None]
        f_S = sums[1]
        dv, dS = sums[2] / mass[:, None], sums[3] / thermo.T  # zeros without noise
        if bath is not None:
            background = torch.zeros_like(state.v) if flow is None else flow
            bath_v, bath_S = bath_drift(bath, thermo.T, thermo.dT_dS, state.v, background, k_B if noise else None)
            f_v, f_S = f_v + bath_v, f_S + bath_S
            if noise:
                assert dW_bath is not None and dU_bath is not None
                dv_bath, dS_bath = bath_noise(bath, thermo.T, mass, k_B, dW_bath, dU_bath)
                dv, dS = dv + dv_bath, dS + dS_bath
        return f_v.detach(), f_S.detach(), dv.detach(), dS.detach()

    # -- the fused first-order evaluation ----------------------------------------------
    def energy_terms(
        self, x: torch.Tensor, S: torch.Tensor, pairs: PairTensors, with_dT_dS: bool, create_graph: bool
    ) -> EnergyTerms:
        """The energy's first derivatives without autograd over the pairs (`EnergyTerms`).

        The pairs' volume force is left to the pair pass: V_k = 1/d_k and d_k = W(0) + sum W(|r|), so
            -dU/dx_i = sum over pairs (i, j) of (dU_i/dV_i V_i^2 + dU_j/dV_j V_j^2) W'(|r_ij|) e_ij
        (and minus that for j); W' comes with W from one forward-mode pass over chunks of pairs. The
        strain part is closed form (`mpd.model.geometry.strain_force`), and the energy networks carry
        their input derivatives forward too (`with_derivatives`): T = dU/dS, dU/dV, dU/dI and dT/dS.
        No autograd is needed: without create_graph nothing is recorded; with it (training) the graph
        through the parameters and S is kept (x is data), and in a large batch the kernel chunks are
        recomputed in backward rather than stored (`recompute_activations`).
        """
        if create_graph:
            terms = self._energy_terms(x, S, pairs, with_dT_dS, True)
        else:
            with torch.no_grad():
                terms = self._energy_terms(x, S, pairs, with_dT_dS, False)
        return terms

    def _energy_terms(
        self, x: torch.Tensor, S: torch.Tensor, pairs: PairTensors, with_dT_dS: bool, recording: bool
    ) -> EnergyTerms:
        n = x.shape[0]
        r = pair_separations(x, pairs)
        distance = torch.linalg.vector_norm(r, dim=-1)
        e = r / distance[:, None]
        W, dW_dr = self._kernel_with_slope(
            distance, pairs.pair_kind, recording and recompute_activations(self.recompute_activations, distance.shape[0]))
        V = 1.0 / particle_density(W, self.kernel(distance.new_zeros(1)), pairs, n)
        if self.solid:
            I, G = strain_invariant_and_gradient(x.detach(), pairs, self.collinear_tol)
        else:
            I, G = torch.zeros_like(V), torch.zeros(n, x.shape[-1], x.shape[-1], dtype=x.dtype, device=x.device)
        U, T, dU_dV, dT_dS = self.U_vol.with_derivatives(S, V)
        force = torch.zeros_like(x)
        if self.solid:
            U_dev, T_dev, dU_dI, dT_dS_dev = self.U_dev.with_derivatives(S, I)
            U, T, dT_dS = U + U_dev, T + T_dev, dT_dS + dT_dS_dev
            force = strain_force(G, dU_dI, pairs)
        if not with_dT_dS:
            dT_dS = torch.zeros_like(T)
        return EnergyTerms(U, force, T, dT_dS, dU_dV * V * V, e, distance, dW_dr)

    def _kernel_with_slope(self, distance: torch.Tensor, kind: torch.Tensor,
                           checkpoint: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(W, dW/dr) of every pair, chunk by chunk."""
        values: list[torch.Tensor] = []
        slopes: list[torch.Tensor] = []
        n_pairs = distance.shape[0]
        per_chunk = chunk_rows(self.pair_chunk, distance.device)
        for start in range(0, n_pairs, per_chunk):
            stop = min(start + per_chunk, n_pairs)
            if torch.jit.is_scripting():
                W, dW = self.kernel.with_r_derivative(distance[start:stop], kind[start:stop])
            else:
                W, dW = self._kernel_chunk(checkpoint, distance[start:stop], kind[start:stop])
            values.append(W)
            slopes.append(dW)
        if n_pairs == 0:
            return distance, distance
        return torch.cat(values), torch.cat(slopes)

    @torch.jit.unused
    def _kernel_chunk(self, checkpoint: bool, distance: torch.Tensor,
                      kind: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(W, dW/dr) of one chunk outside TorchScript: compiled when asked (`compile_pairs`), recomputed in
        backward with checkpoint."""
        run = compiled.function(self, "kernel", _kernel_with_r_derivative)
        if checkpoint:
            return torch.utils.checkpoint.checkpoint(run, self, distance, kind, use_reentrant=False)
        return run(self, distance, kind)

    def _pair_chunk(
        self, e: torch.Tensor, u: torch.Tensor, rho: torch.Tensor, dW_dr: torch.Tensor, i: torch.Tensor,
        j: torch.Tensor, particles: torch.Tensor, k_B: torch.Tensor | None, with_derivatives: bool,
        dW: torch.Tensor | None, dV: torch.Tensor | None, marginal: bool,
    ) -> list[torch.Tensor]:
        """What one chunk's pairs add to their ends i and to their ends j, (K, C) each, in the rows
        momentum drift (D; incl. the volume force), entropy drift (1), with increments m dv~ (D) and
        T dS~ (1), with marginal Pi (D x D, flattened), -/+ Pi u (D) and q/4 + C^2 (1).

        e, u: (D, C); dW: (D, D, C); particles: (4, N) rows T, dT/dS, 1/m, dU/dV V^2, gathered once per end."""
        n_rows = i.shape[0]
        dim = e.shape[0]
        ends_i, ends_j = particles.index_select(1, i), particles.index_select(1, j)
        T_i, T_j = ends_i[0], ends_j[0]
        # both ends in one batch: row k < C is end i, row C + k is end j; d(f_i f_j)/dT_i = f_i' f_j
        factors, d_factors = self._amplitudes(torch.cat([rho, rho]), torch.cat([T_i, T_j]), with_derivatives)
        factors, d_factors = factors.t(), d_factors.t()  # (3, 2C): rows a, b, c
        f_i, f_j = factors[:, :n_rows], factors[:, n_rows:]
        amp = f_i * f_j
        to_p, to_S_i, to_S_j = pair_drift(e, u, T_i, T_j, ends_i[1], ends_j[1], amp, d_factors[:, :n_rows] * f_j,
                                          f_i * d_factors[:, n_rows:], 0.5 * (ends_i[2] + ends_j[2]), k_B)
        to_p = to_p + ((ends_i[3] + ends_j[3]) * dW_dr) * e
        # what each end receives, stacked, so that one index_add per end sums the chunk
        to_i, to_j = [to_p, to_S_i[None]], [-to_p, to_S_j[None]]
        if dW is not None and dV is not None and k_B is not None:
            kick, heat_i, heat_j = pair_kicks(e, u, amp, dW, dV, torch.sqrt(2 * k_B))
            to_i += [kick, heat_i[None]]
            to_j += [-kick, heat_j[None]]
        if marginal:
            Pi, Pi_u, entropy_diagonal = pair_marginal(e, u, amp)
            Pi_flat = Pi.reshape(dim * dim, n_rows)
            to_i += [Pi_flat, -Pi_u, entropy_diagonal[None]]
            to_j += [Pi_flat, Pi_u, entropy_diagonal[None]]
        return [torch.cat(to_i, dim=0), torch.cat(to_j, dim=0)]

    @torch.jit.unused
    def _eager_pair_chunk(self, checkpoint: bool, *args) -> list[torch.Tensor]:
        """`_pair_chunk` outside TorchScript: compiled when asked (`compile_pairs`), recomputed in backward with
        checkpoint."""
        run = compiled.function(self, "pair_chunk", MetriplecticModel._pair_chunk)
        if checkpoint:
            return torch.utils.checkpoint.checkpoint(run, self, *args, use_reentrant=False)
        return run(self, *args)

    @torch.jit.unused
    def compile_pairs(self, enable: bool = True) -> None:
        """torch.compile the pair chunks and the kernel (`model.training.compile_pairs`; `mpd.model.compiled`):
        the same results to round-off, fused elementwise loops, about 30 s of compilation per process and dtype."""
        if enable:
            compiled.enable(self, {"pair_chunk": MetriplecticModel._pair_chunk, "kernel": _kernel_with_r_derivative})
        else:
            compiled.disable(self)

    def _pair_sums(
        self, v: torch.Tensor, pairs: PairTensors, terms: EnergyTerms, inverse_mass: torch.Tensor,
        k_B: torch.Tensor | None, with_derivatives: bool, dW: torch.Tensor | None, dV: torch.Tensor | None,
        marginal: bool, checkpoint: bool,
    ) -> list[torch.Tensor]:
        """The chunks' outputs summed per particle: [momentum drift of the pairs (N, D), entropy drift (N,),
        m dv~ (N, D), T dS~ (N,), sum Pi (N, D, D), sum -/+ Pi u (N, D), sum q/4 + C^2 (N,)]
        (zeros for the parts not asked for)."""
        n, dim = v.shape[0], v.shape[-1]
        dW_dr, T = terms.dW_dr, terms.T
        e = terms.e.t().contiguous()  # (D, E): one contiguous row per component (mpd.model.fused)
        u_all = pair_relative_velocities(v, pairs).t().contiguous()
        rho_all = terms.distance / self.h
        noise = dW is not None and dV is not None and k_B is not None
        dW_rows = dW.permute(1, 2, 0).contiguous() if dW is not None else None  # (D, D, E), the same draws
        width = dim + 1 + (dim + 1 if noise else 0) + (dim * dim + dim + 1 if marginal else 0)
        sums = torch.zeros(width, n, dtype=v.dtype, device=v.device)
        particles = torch.stack([T, terms.dT_dS, inverse_mass, terms.pressure_weight])
        n_pairs = pairs.i.shape[0]
        per_chunk = chunk_rows(self.pair_chunk, v.device)
        for start in range(0, n_pairs, per_chunk):
            stop = min(start + per_chunk, n_pairs)
            i, j = pairs.i[start:stop], pairs.j[start:stop]
            dW_c: torch.Tensor | None = None
            dV_c: torch.Tensor | None = None
            if dW_rows is not None and dV is not None:
                dW_c, dV_c = dW_rows[:, :, start:stop], dV[start:stop]
            if torch.jit.is_scripting():
                out = self._pair_chunk(e[:, start:stop], u_all[:, start:stop], rho_all[start:stop], dW_dr[start:stop],
                                       i, j, particles, k_B, with_derivatives, dW_c, dV_c, marginal)
            else:
                out = self._eager_pair_chunk(checkpoint, e[:, start:stop], u_all[:, start:stop], rho_all[start:stop],
                                             dW_dr[start:stop], i, j, particles, k_B, with_derivatives, dW_c, dV_c,
                                             marginal)
            # in place also when recording: an out-of-place chain keeps every intermediate (K, N) sum alive
            # until backward (measured: one per chunk, 6 GB for the teacher at N = 1e5)
            sums.index_add_(1, i, out[0]).index_add_(1, j, out[1])
        zero_v, zero_S = torch.zeros_like(v), torch.zeros_like(T)
        to_p, to_S = sums[:dim].t(), sums[dim]
        kicks, T_dS, row = zero_v, zero_S, dim + 1
        if noise:
            kicks, T_dS, row = sums[row:row + dim].t(), sums[row + dim], row + dim + 1
        Pi_sum = torch.zeros(n, dim, dim, dtype=v.dtype, device=v.device)
        Pi_u_sum, entropy_diagonal = zero_v, zero_S
        if marginal:
            Pi_sum = sums[row:row + dim * dim].t().reshape(n, dim, dim)
            Pi_u_sum = sums[row + dim * dim:row + dim * dim + dim].t()
            entropy_diagonal = sums[row + dim * dim + dim]
        return [to_p, to_S, kicks, T_dS, Pi_sum, Pi_u_sum, entropy_diagonal]

    def marginal_covariance(
        self, state: State, pairs: PairTensors, dt: float, create_graph: bool = False
    ) -> torch.Tensor:
        """Sigma_ii = 2 k_B M_ii dt, (N, D+1, D+1), order (v_i, S_i) (pairs and bath)."""
        thermo, terms = self._terms(state, pairs, with_derivatives=False, create_graph=create_graph)
        k_B = self.k_B if create_graph else self.k_B.detach()
        mass = self.particle_mass(pairs, state.x.shape[0], detach=not create_graph)
        M = self.marginal_mobility(thermo, terms, pairs, mass, create_graph)
        return 2 * k_B * dt * M

    def marginal_mobility(self, thermo: Thermodynamics, terms: PairTerms, pairs: PairTensors, mass: torch.Tensor,
                          create_graph: bool) -> torch.Tensor:
        """M_ii of the pairs plus the bath's diagonal share, (N, D+1, D+1); mass: each particle's, (N,)."""
        return _with_bath_marginal(marginal_mobility(terms, pairs, thermo.T.shape[0]),
                                   self.bath_terms(thermo.T, False, create_graph), thermo.T, mass)

    def nll(
        self,
        state_t: State,
        state_t1: State,
        pairs: PairTensors,
        dt: float,
        interior: torch.Tensor | None = None,
        jitter: float = 1e-6,
        flow: torch.Tensor | None = None,
        observation_variance: float = 0.0,
        label_variance: float = 0.0,
    ) -> torch.Tensor:
        """Mean over interior particles of -log N((v_i, S_i)^{t+1}; mu_i, Sigma_ii).

        mu_i = (v_i + f_v dt, S_i + f_S dt) (Euler-Maruyama mean, full drift with
        k_B div M), Sigma_ii = 2 k_B M_ii dt. Keeps the graph for training; the
        entropies may come from the teacher (their graph is kept too). flow,
        observation_variance and label_variance: see `predictive_moments`.
        """
        residual, covariance = self.predictive_moments(state_t, state_t1, pairs, dt, interior, flow,
                                                       observation_variance, label_variance)
        return gaussian_nll(residual, covariance, jitter).mean()

    def predictive_moments(
        self,
        state_t: State,
        state_t1: State,
        pairs: PairTensors,
        dt: float,
        interior: torch.Tensor | None = None,
        flow: torch.Tensor | None = None,
        observation_variance: float = 0.0,
        label_variance: float = 0.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(v_i, S_i)^{t+1} - mu_i and Sigma_ii = 2 k_B M_ii dt of the (interior) particles, with graph.

        flow: background velocity at each particle (bath friction; None: at rest).
        observation_variance: variance per component of the observed velocities'
        measurement error, added to the velocity block of Sigma_ii (the tracking
        noise of a backward difference: 2 sigma_loc^2 / dt^2); not part of the
        model, so rollouts do not reproduce it.
        label_variance: likewise for the entropy labels, the resolution of the
        teacher's closure (docs/training.md, entropy_resolution).
        """
        f_v, f_S, M = self.fused_moments(state_t, pairs, flow)
        mean = torch.cat([state_t.v + f_v * dt, (state_t.S + f_S * dt)[:, None]], dim=-1)
        target = torch.cat([state_t1.v, state_t1.S[:, None]], dim=-1)
        covariance = 2 * self.k_B * dt * M
        if observation_variance > 0 or label_variance > 0:
            dim = state_t.v.shape[-1]
            observation = torch.zeros_like(covariance[0])
            observation[:dim, :dim] = observation_variance * torch.eye(dim, dtype=covariance.dtype,
                                                                        device=covariance.device)
            observation[dim, dim] = label_variance
            covariance = covariance + observation
        if interior is not None:
            target, mean, covariance = target[interior], mean[interior], covariance[interior]
        return target - mean, covariance

    @torch.jit.unused
    def fused_moments(self, state: State, pairs: PairTensors,
                      flow: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(f_v, f_S, M_ii) with graph, by the fused evaluation: `drift(thermal=True)` and
        `marginal_mobility` to round-off, for training (in a large batch the pair chunks are recomputed in
        backward: `recompute_activations`)."""
        n = state.x.shape[0]
        thermo = self.energy_terms(state.x, state.S, pairs, True, True)
        mass, k_B = self.particle_mass(pairs, n), self.k_B
        inverse_mass = 1.0 / mass
        sums = self._pair_sums(state.v, pairs, thermo, inverse_mass, k_B, True, None, None, True,
                               recompute_activations(self.recompute_activations, pairs.i.shape[0]))
        f_v = (thermo.force + sums[0]) * inverse_mass[:, None]
        f_S = sums[1]
        bath = self.bath_terms(thermo.T, True, True)
        if bath is not None:
            background = torch.zeros_like(state.v) if flow is None else flow
            bath_v, bath_S = bath_drift(bath, thermo.T, thermo.dT_dS, state.v, background, k_B)
            f_v, f_S = f_v + bath_v, f_S + bath_S
        velocity_block = sums[4] * (inverse_mass * inverse_mass)[:, None, None]
        beside = sums[5] * (0.5 * inverse_mass / thermo.T)[:, None]
        entropy_block = sums[6] / (thermo.T * thermo.T)
        M = torch.cat([torch.cat([velocity_block, beside[:, :, None]], dim=-1),
                       torch.cat([beside, entropy_block[:, None]], dim=-1)[:, None, :]], dim=1)
        return f_v, f_S, _with_bath_marginal(M, bath, thermo.T, mass)

    # -- self-supervision -------------------------------------------------------------
    def teacher_entropy(self, x: torch.Tensor, v: torch.Tensor, pairs: PairTensors) -> torch.Tensor:
        """S_i from the edge-convolution teacher, standardised with its running statistics.

        Training standardises with the batch's own statistics instead (`mpd.training.teacher_labels`).
        """
        return self.teacher(x, v, pairs)


__all__ = [
    "EnergyTerms",
    "MetriplecticModel",
    "PairTerms",
    "State",
    "Thermodynamics",
    "assemble_drift",
    "covariance_floor",
    "entropy_gradient_flow",
    "friction_tensor",
    "gaussian_nll",
    "marginal_mobility",
    "mobility_divergence",
    "noise_projectors",
    "pair_mobility",
    "row_scales",
]
