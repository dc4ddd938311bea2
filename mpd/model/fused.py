"""The per-pair algebra of a step, fused: scalars per pair instead of (E, D, D) matrices.

The same quantities as `mpd.model.dynamics` (entropy_gradient_flow,
mobility_divergence, marginal_mobility, the noise of noise_from_increments),
which spell them out with the projectors P_shear and P_bulk as matrices; those
stay as the reference the tests compare against. Here every product with a
projector is written out, with e the unit separation, u = v_ij, eu = e.u and
c1 = 1/2 - 1/D:

    P_shear u = u/2 + c1 eu e,    P_bulk u = eu e / D,    tr P_shear = D/2 + c1,  tr P_bulk = 1/D
    Pi u      = (A^2/2) u + (c1 A^2 + B^2/D) eu e
    dPi/dT_k u = A A_k u + 2 (c1 A A_k + B B_k/D) eu e           (X_k = dX/dT_k)
    q         = u.Pi u = A^2 (|u|^2/2 + c1 eu^2) + B^2 eu^2/D

so the momentum terms of a pair are alpha u + beta e with two scalars per pair,
and a step needs a few dozen elementwise operations on (E,) vectors. The
model evaluates them on chunks of pairs small enough to stay in cache
(`MetriplecticModel.drift_and_noise`, `predictive_moments`).

Layout: vectors per pair are (D, C), one contiguous row per component, and
amplitudes (3, C): PyTorch's CPU kernels run (C, 2) columns, dot products over
a last axis of 2 and broadcast outer products four to ten times slower than
the same work on contiguous rows (measured for C = 8192).
"""
from __future__ import annotations

import torch


def pair_drift(
    e: torch.Tensor, u: torch.Tensor, T_i: torch.Tensor, T_j: torch.Tensor, Tp_i: torch.Tensor, Tp_j: torch.Tensor,
    amp: torch.Tensor, d_amp_i: torch.Tensor, d_amp_j: torch.Tensor, half_inverse_mass: torch.Tensor,
    k_B: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(to p_i (D, C), to S_i (C,), to S_j (C,)) of M dS/dz [+ k_B div M] for a chunk of pairs.

    e, u: (D, C); amp, d_amp_i, d_amp_j: (3, C) rows A, B, C and their derivatives
    with respect to T_i and T_j; Tp = dT/dS of each end; half_inverse_mass =
    (1/m_i + 1/m_j)/2; k_B None leaves out div M (the deterministic limit).
    v_j receives -to_p_i / m_j, as in `mpd.model.dynamics.entropy_gradient_flow`.
    """
    dim = e.shape[0]
    c1 = 0.5 - 1.0 / dim
    A, B, C = amp[0], amp[1], amp[2]
    eu = (e * u).sum(0)
    uu = (u * u).sum(0)
    A2, B2, C2 = A * A, B * B, C * C
    q_shear, q_bulk = 0.5 * uu + c1 * eu * eu, eu * eu / dim
    q = A2 * q_shear + B2 * q_bulk
    inv_Ti, inv_Tj = 1.0 / T_i, 1.0 / T_j
    # Pi u = a0 u + b0 e
    a0, b0 = 0.5 * A2, (c1 * A2 + B2 / dim) * eu
    along_u = -0.5 * (inv_Ti + inv_Tj) * a0
    along_e = -0.5 * (inv_Ti + inv_Tj) * b0
    q4_plus, q4_minus = q / 4 + C2, q / 4 - C2
    cross = q4_minus * inv_Ti * inv_Tj
    to_S_i = q4_plus * inv_Ti * inv_Ti + cross
    to_S_j = q4_plus * inv_Tj * inv_Tj + cross
    if k_B is not None:
        dA_i, dB_i, dC_i = d_amp_i[0], d_amp_i[1], d_amp_i[2]
        dA_j, dB_j, dC_j = d_amp_j[0], d_amp_j[1], d_amp_j[2]
        # dPi/dT_k u = a_k u + b_k e
        a_i, b_i = A * dA_i, 2 * (c1 * A * dA_i + B * dB_i / dim) * eu
        a_j, b_j = A * dA_j, 2 * (c1 * A * dA_j + B * dB_j / dim) * eu
        dq_i = 2 * A * dA_i * q_shear + 2 * B * dB_i * q_bulk
        dq_j = 2 * A * dA_j * q_shear + 2 * B * dB_j * q_bulk
        w_i, w_j = Tp_i * inv_Ti, Tp_j * inv_Tj
        along_u = along_u - 0.5 * k_B * (w_i * (a_i - a0 * inv_Ti) + w_j * (a_j - a0 * inv_Tj))
        along_e = along_e - 0.5 * k_B * (w_i * (b_i - b0 * inv_Ti) + w_j * (b_j - b0 * inv_Tj))
        trace_Pi = A2 * (0.5 * dim + c1) + B2 / dim
        inv_TiTj = inv_Ti * inv_Tj
        div_S_i = (
            -trace_Pi * half_inverse_mass * inv_Ti
            + Tp_i * ((dq_i / 4 + 2 * C * dC_i) * inv_Ti * inv_Ti - 2 * q4_plus * inv_Ti * inv_Ti * inv_Ti)
            + Tp_j * ((dq_j / 4 - 2 * C * dC_j) * inv_TiTj - q4_minus * inv_TiTj * inv_Tj)
        )
        div_S_j = (
            -trace_Pi * half_inverse_mass * inv_Tj
            + Tp_j * ((dq_j / 4 + 2 * C * dC_j) * inv_Tj * inv_Tj - 2 * q4_plus * inv_Tj * inv_Tj * inv_Tj)
            + Tp_i * ((dq_i / 4 - 2 * C * dC_i) * inv_TiTj - q4_minus * inv_TiTj * inv_Ti)
        )
        to_S_i = to_S_i + k_B * div_S_i
        to_S_j = to_S_j + k_B * div_S_j
    return along_u * u + along_e * e, to_S_i, to_S_j


def pair_kicks(
    e: torch.Tensor, u: torch.Tensor, amp: torch.Tensor, dW: torch.Tensor, dV: torch.Tensor, amplitude: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(m dv~ of end i (D, C), T_i dS~_i, T_j dS~_j) of a chunk of pairs for unit increments dW (D, D, C), dV (C,).

    X e = A (sym(dW) e - tr(dW)/D e) + B tr(dW)/D e; amplitude = sqrt(2 k_B).
    As `MetriplecticModel.noise_from_increments`: v_j gets -kick / m_j.
    """
    dim = e.shape[0]
    A, B, C = amp[0], amp[1], amp[2]
    trace = dW[0, 0]
    for a in range(1, dim):
        trace = trace + dW[a, a]
    sym_e = 0.5 * ((dW * e[None, :, :]).sum(1) + (dW * e[:, None, :]).sum(0))  # (dW e + dW^T e)/2
    kick = amplitude * (A * sym_e + ((B - A) * trace / dim) * e)
    work = -0.5 * (kick * u).sum(0)
    conduction = amplitude * C * dV
    return kick, work + conduction, work - conduction


def pair_marginal(e: torch.Tensor, u: torch.Tensor, amp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Pi (D, D, C), Pi u (D, C), q/4 + C^2 (C,)): what a pair adds to its ends' marginal blocks of M.

    End k of the pair (mass m_k, temperature T_k) receives Pi/m_k^2 in the velocity block,
    -/+ Pi u/(2 m_k T_k) (i: -, j: +) beside it and (q/4 + C^2)/T_k^2 on the entropy
    diagonal: the factors of m_k and T_k are the particle's own, so the sums over pairs can
    come first (`mpd.model.dynamics.marginal_mobility` forms each pair's block).
    """
    dim = e.shape[0]
    c1 = 0.5 - 1.0 / dim
    A, B, C = amp[0], amp[1], amp[2]
    A2, B2 = A * A, B * B
    along_e = c1 * A2 + B2 / dim
    identity = torch.eye(dim, dtype=e.dtype, device=e.device)
    Pi = identity[:, :, None] * (0.5 * A2) + along_e * (e[:, None, :] * e[None, :, :])
    eu = (e * u).sum(0)
    Pi_u = (0.5 * A2) * u + (along_e * eu) * e
    q = (u * Pi_u).sum(0)
    return Pi, Pi_u, q / 4 + C * C


__all__ = ["pair_drift", "pair_kicks", "pair_marginal"]
