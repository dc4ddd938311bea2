"""Baselines of the paper, as plain functions over arrays: Groot–Warren DPD (``mpd.baselines.dpd``) and the graph
network simulator GNS / GNS-SDE (``mpd.baselines.gns``), any dimension D (2D and 3D), periodic orthorhombic boxes.

Data contract (every baseline)
------------------------------
A training block is

``positions``  (T, N, D) float64, wrapped into [0, L) or unwrapped (both accepted; wrapped internally where
               neighbours are searched, unwrapped by minimum-image frame steps where displacements are needed,
               which assumes no particle moves half a box length between frames);
``velocities`` (T, N, D), in the length and time units of ``positions`` and ``dt``;
``box``        (D,) periodic lengths of the orthorhombic box;
``dt``         the sampling interval between frames.

All particles have the same mass (1, or a given ``mass``): the coarse-grained star-polymer case.

Rollouts start from an initial state (DPD: positions and velocities; GNS: the last ``history + 1`` positions) and
return ``positions (n_frames, N, D)`` unwrapped (continuing the given last positions) and ``velocities
(n_frames, N, D)``; frame k is the state at time ``(k + 1) dt`` after the initial state, which is not repeated.

Neighbours come from scipy's ``cKDTree(..., boxsize=box)`` with minimum-image separations
(``mpd.baselines.periodic``); every cutoff must be below half the smallest box length.

Importing this package imports torch (for GNS); ``mpd.baselines.dpd`` and ``mpd.baselines.periodic`` alone need
only numpy and scipy.
"""
from mpd.baselines.dpd import DPDParams, calibrate_dpd, dpd_forces, rollout_dpd
from mpd.baselines.gns import GNS, GNSParams, load_gns, rollout_gns, save_gns, train_gns

__all__ = ["GNS", "DPDParams", "GNSParams", "calibrate_dpd", "dpd_forces", "load_gns", "rollout_dpd", "rollout_gns",
           "save_gns", "train_gns"]
