"""The solid-extended metriplectic particle model (physics core).

Read docs/model.md for the equations as implemented. The pieces, JAX-MD style:
geometry (pair separations, learned volume, local strain), monotonic (energy
networks with signs and convexity by construction), networks (noise
amplitudes, entropy teacher, k_B and m), dynamics (drift, noise, marginal
covariance, likelihood), integrator (one rollout step) and streams (noise keyed
by particle ids and the step).
"""
from .dynamics import MetriplecticModel, State, Thermodynamics
from .geometry import (
    PairTensors,
    deviatoric_strain_invariant,
    local_deformation_gradient,
    make_pairs,
    pair_separations,
)
from .integrator import EulerMaruyama, closed_energy, euler_maruyama_step, restore_energy
from .monotonic import DeviatoricEnergy, MonotoneConvexNet, VolumetricEnergy
from .streams import CounterNoise

__all__ = [
    "CounterNoise",
    "DeviatoricEnergy",
    "EulerMaruyama",
    "MetriplecticModel",
    "MonotoneConvexNet",
    "PairTensors",
    "State",
    "Thermodynamics",
    "VolumetricEnergy",
    "closed_energy",
    "deviatoric_strain_invariant",
    "euler_maruyama_step",
    "local_deformation_gradient",
    "make_pairs",
    "pair_separations",
    "restore_energy",
]
