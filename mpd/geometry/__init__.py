"""Geometry of particle snapshots: neighbours, Voronoi areas, local strain and D2min,
interior/exterior masks, and the snapshot-pair training dataset (docs/geometry.md).

The torch reader (`SnapshotPairDataset`, `collate_snapshots`) is imported on
first use, so the numpy/scipy parts do not pay for importing torch.
"""
from mpd.geometry.dataset import Scales, split_blocks, write_dataset
from mpd.geometry.domain import Box, OrthoBox, Window, periodic_box
from mpd.geometry.inputs import GeometryInputError, validate_trajectories
from mpd.geometry.masks import exterior_mask, window_from_video_metadata
from mpd.geometry.neighbours import Pairs, radius_pairs, torch_cluster_available
from mpd.geometry.particles import ParticleDataError, particle_dataset
from mpd.geometry.reference import reference_frames
from mpd.geometry.stage import compute_geometry
from mpd.geometry.strain import LocalStrain, local_strain
from mpd.geometry.voronoi import voronoi_areas

__all__ = [
    "Box",
    "GeometryInputError",
    "LocalStrain",
    "OrthoBox",
    "Pairs",
    "ParticleDataError",
    "Scales",
    "SnapshotPairDataset",
    "Window",
    "collate_snapshots",
    "compute_geometry",
    "exterior_mask",
    "local_strain",
    "particle_dataset",
    "periodic_box",
    "radius_pairs",
    "reference_frames",
    "split_blocks",
    "torch_cluster_available",
    "validate_trajectories",
    "voronoi_areas",
    "window_from_video_metadata",
    "write_dataset",
]


def __getattr__(name):
    if name in ("SnapshotPairDataset", "collate_snapshots"):
        from mpd.geometry import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'mpd.geometry' has no attribute {name!r}")
