"""Parameters of the geometry stage (the `geometry:` section of an experiment's config).

Defaults live here only; workflow/schemas/geometry.schema.yaml checks the same
keys' types and ranges. Lengths in µm, times in frames.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class GeometryParameterError(ValueError):
    """Unknown or inconsistent geometry parameter; the message names the key."""


@dataclass(frozen=True)
class GeometryParams:
    # Cut-off h, µm: neighbours, strain, exterior band and the model's length scale.
    # "auto": h_factor x a, a = sqrt(2 / (sqrt(3) rho)) the mean particle spacing.
    h_um: float | str = "auto"
    h_factor: float = 1.5
    # Strain reference: "cycle" (first frame of each shear cycle), "lag" (frame - lag_frames),
    # or "auto" ("cycle" when the shear period is known, else "lag").
    reference: str = "auto"
    lag_frames: int = 1
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)  # train, validation, test
    gap_pairs: int = 1                   # snapshot pairs dropped between blocks (no leakage)
    exterior_width_um: float | None = None  # µm; None: h
    strain_measure: str = "green_lagrange"  # or "small"
    d2min_per_neighbour: bool = False
    backend: str = "auto"                # neighbour search: "auto", "scipy", "torch_cluster"
    # Dataset velocities: "backward" ((x_t - x_{t-1}) / dt, the model integrator's kinematic velocity)
    # or "tracked" (the tracking stage's central differences); mpd.geometry.kinematics.
    velocity: str = "backward"
    # Recorded frames computed and written at a time: memory grows with chunk_frames x particles
    # per frame, not with the video's length; the outputs do not depend on it (docs/geometry.md).
    chunk_frames: int = 100

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> GeometryParams:
        values = dict(section or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise GeometryParameterError(f"unknown key geometry.{unknown[0]}; allowed keys: {', '.join(sorted(names))}")
        if "split_fractions" in values:
            values["split_fractions"] = tuple(values["split_fractions"])
        params = cls(**values)
        chunk = params.chunk_frames
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise GeometryParameterError(
                f"geometry.chunk_frames must be an integer >= 1 (frames per chunk), got {chunk!r}")
        if abs(sum(params.split_fractions) - 1.0) > 1e-9:
            raise GeometryParameterError(
                f"geometry.split_fractions {list(params.split_fractions)} must add up to 1 (train, validation, test)")
        return params

    def cutoff_um(self, spacing_um: float) -> float:
        """h in µm, given the mean particle spacing a (µm) of the data."""
        return float(self.h_um) if self.h_um != "auto" else self.h_factor * float(spacing_um)

    def reference_rule(self, cycle_frames: float | None) -> str:
        if self.reference == "auto":
            return "cycle" if cycle_frames else "lag"
        if self.reference == "cycle" and not cycle_frames:
            raise GeometryParameterError(
                "geometry.reference is 'cycle' but the shear period is unknown: set video.shear_period_s "
                "for a real recording, or use reference 'lag'")
        return self.reference

    def compute_kwargs(self, *, spacing_um: float, cycle_frames: float | None) -> dict:
        """Keyword arguments of mpd.geometry.stage.compute_geometry."""
        return {
            "h_um": self.cutoff_um(spacing_um),
            "reference": self.reference_rule(cycle_frames),
            "lag_frames": self.lag_frames,
            "cycle_frames": cycle_frames,
            "split_fractions": self.split_fractions,
            "gap_pairs": self.gap_pairs,
            "exterior_width_um": self.exterior_width_um,
            "strain_measure": self.strain_measure,
            "d2min_per_neighbour": self.d2min_per_neighbour,
            "backend": self.backend,
            "velocity": self.velocity,
            "chunk_frames": self.chunk_frames,
        }
