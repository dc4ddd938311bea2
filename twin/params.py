"""Parameters of the digital-twin experiment, with their units and defaults.

These dataclasses are the single home of the defaults: the workflow's config
schema checks types and ranges of the same keys but sets no defaults, so a
value is never defined in two places. ``from_dict`` rejects unknown keys with
the key's name, so a typo in ``config.yaml`` cannot be silently ignored.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class ParameterError(ValueError):
    """A twin parameter is unknown or out of range; the message names the key."""


@dataclass(frozen=True)
class ShearParams:
    """Cyclic simple shear imposed by deforming the periodic box.

    strain(t) = amplitude * sin(2 pi t / period_s) for t >= 0 (after equilibration).
    """

    amplitude: float = 0.08          # dimensionless strain amplitude gamma_0 (enough for occasional rearrangements)
    period_s: float = 2.0            # s, period of one cycle
    cycles: float = 2.0              # number of cycles recorded


@dataclass(frozen=True)
class InteractionParams:
    """Pair repulsion of the twin (deliberately not the model's functional form).

    Dipolar-like soft repulsion between interfacial colloids,
    u(r) = dipolar_kT * (d_ij / r)^3, smoothly truncated at cutoff_diameters * d_ij,
    plus a stiff harmonic contact (k/2) (d_ij - r)^2 for r < d_ij, with
    d_ij = (d_i + d_j) / 2. Energies in units of the thermal energy kT.
    """

    dipolar_kT: float = 300.0                # kT, amplitude A of A (d_ij/r)^3 (the truncation lowers the energy at contact to 0.69 A)
    contact_stiffness_kT_um2: float = 2000.0  # kT / um^2, harmonic contact stiffness
    cutoff_diameters: float = 2.0             # cut-off radius in units of d_ij


@dataclass(frozen=True)
class SimulationParams:
    """Brownian dynamics of a bidisperse monolayer in a sheared periodic box."""

    seed: int = 1
    n_particles: int = 600
    # Area fraction sum(pi d^2 / 4) / box area. The default monolayer is jammed by
    # its dipolar repulsion (coupling ~ 450 kT for small pairs, far above 2D dipolar
    # melting at ~60) with gaps between particles, as at an oil-water interface;
    # set >= 0.84 with a weak dipolar_kT for a contact-jammed packing.
    packing_fraction: float = 0.5
    diameter_small_um: float = 3.0       # um
    diameter_ratio: float = 1.4          # d_large / d_small
    fraction_small: float = 0.5          # number fraction of small particles
    diffusion_small_um2_s: float = 0.05  # um^2/s, free diffusion coefficient of a small particle (large: scaled by 1/d)
    timestep_s: float = 2.0e-4           # s, integration step
    equilibration_s: float = 2.0         # s, run before the first frame (no shear)
    frame_rate_hz: float = 20.0          # camera frames per second
    mpi_ranks: int = 1                   # LAMMPS MPI ranks (mpirun -np)
    interaction: InteractionParams = field(default_factory=InteractionParams)
    shear: ShearParams = field(default_factory=ShearParams)

    @property
    def n_frames(self) -> int:
        return round(self.shear.cycles * self.shear.period_s * self.frame_rate_hz) + 1


@dataclass(frozen=True)
class IlluminationParams:
    """Smooth multiplicative illumination profile (vignetting and a tilt)."""

    vignetting: float = 0.25   # fractional brightness drop from centre to corner
    gradient: float = 0.10     # fractional brightness change across the width


@dataclass(frozen=True)
class NoiseParams:
    """Camera noise, in photo-electrons."""

    background_photons: float = 2000.0  # e-/px of the illuminated background (bright field) or of the dark background offset (fluorescence)
    signal_photons: float = 1500.0      # e-/px peak contrast of a particle
    read_noise_e: float = 5.0           # e- rms read noise
    full_well_e: float = 4000.0         # e- mapped to the top of the ADC range
    shot_noise: bool = True
    enabled: bool = True                # False gives a noiseless, unquantised-by-noise image (for tests)


@dataclass(frozen=True)
class MicroscopeParams:
    """Camera and optics of the rendered video."""

    seed: int = 2
    pixel_size_um: float = 0.3           # um per pixel: 3 and 4.2 um particles span 10 and 14 px, as in bright-field colloid work
    width_px: int = 192                  # field of view (58 um), well inside the default 85 um sample: particles enter and leave it
    height_px: int = 192
    spot: str = "brightfield"            # "brightfield" (dark disk with bright rim) or "fluorescence" (Gaussian)
    bit_depth: int = 12                  # 8, 12 or 16
    exposure_s: float = 0.005            # s
    motion_blur: bool = True             # integrate positions over the exposure
    movie: str = "none"                  # "none", "avi" or "mp4": an extra 8-bit preview movie
    illumination: IlluminationParams = field(default_factory=IlluminationParams)
    noise: NoiseParams = field(default_factory=NoiseParams)


def from_dict(cls, values: Mapping[str, Any] | None, where: str = ""):
    """Build dataclass ``cls`` from a (possibly partial) mapping.

    Missing keys take the defaults; unknown keys raise ParameterError naming
    the dotted key path ``where``.
    """
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ParameterError(
            f"unknown key {where + '.' if where else ''}{unknown[0]}; "
            f"allowed keys: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in values.items():
        default = fields[name].default_factory() if fields[name].default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            kwargs[name] = from_dict(type(default), value, f"{where}.{name}" if where else name)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def to_dict(params) -> dict:
    return dataclasses.asdict(params)
