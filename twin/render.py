"""Microscope renderer of the digital-twin experiment.

Turns the simulated truth (``results/{exp}/truth/``) into the video a camera on
a microscope would record (``results/{exp}/video/``, see docs/data_schema.md):

* a ``width_px x height_px`` field of view of ``pixel_size_um`` pixels, centred
  in the periodic sample box and smaller than it, so particles enter and leave;
  box coordinates map to pixels without a flip,
  ``x_px = (x - x0) / pixel_size_um``, ``y_px = (y - y0) / pixel_size_um``;
* spot models: ``"fluorescence"`` (a Gaussian of sigma = diameter/4 integrated
  exactly over each pixel with erf) and ``"brightfield"`` (a dark disk of the
  particle's diameter, darker towards the centre like the sphere's thickness,
  edge softened with a 0.5 px Gaussian, plus a thin bright rim just outside,
  integrated over each pixel by a 16x16 midpoint sum tabulated per diameter
  on a 1/16 px grid of centre offsets); both give unbiased intensity-weighted
  centroids (< 0.01 px on a noiseless image);
* motion blur: the spot is averaged over sub-positions spread over the exposure,
  the truth position being the mid-exposure position;
* a smooth multiplicative illumination (vignetting + linear gradient), Poisson
  shot noise on photo-electrons, Gaussian read noise, and an ADC mapping
  ``full_well_e`` to ``2**bit_depth - 1`` with rounding and clipping.

Every particle is drawn only in a small window around it, so a frame costs
O(N * window^2). The run is seeded (``MicroscopeParams.seed``): the same inputs
give identical frames.
"""
from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import erf, erfc

from mpd.atomic import atomic_output_dir
from mpd.provenance import software_versions
from twin.params import MicroscopeParams, to_dict
from twin.video_io import to_uint8_preview, write_movie, write_tiff_stack

SPOT_MODELS = ("brightfield", "fluorescence")
BIT_DEPTHS = (8, 12, 16)
MOVIE_FORMATS = ("none", "avi", "mp4")

# Spot-model shape constants (optics, in pixels unless stated).
FLUO_SIGMA_PER_DIAMETER = 0.25   # Gaussian sigma / particle diameter
BF_EDGE_SIGMA_PX = 0.5           # Gaussian softening of the dark disk's edge (~1 px wide)
BF_CENTRE_DARKENING = 0.7        # fraction of the dark contrast following the sphere's thickness
BF_RIM_OFFSET_PX = 0.8           # bright rim: radius = particle radius + offset
BF_RIM_SIGMA_PX = 0.45           # bright rim: radial Gaussian width
BF_RIM_AMPLITUDE = 0.4           # bright rim peak, in units of signal_photons
TABLE_STEPS_PER_PX = 16          # bright field: table step (1/px) of the pixel-integrated spot
BLUR_STEP_PX = 0.2               # largest displacement between motion-blur sub-samples
MAX_BLUR_SUBSAMPLES = 256
_CHUNK_EVALUATIONS = 2_000_000   # bound on the temporary arrays of one vectorised batch

TRUTH_COLUMNS = ("frame", "t", "particle", "species", "diameter", "x", "y", "vx", "vy")
TRUTH_PIXEL_COLUMNS = (
    "frame", "t", "particle", "species", "diameter",
    "x_px", "y_px", "vx_px", "vy_px", "in_fov",
)


@dataclass(frozen=True)
class RenderResult:
    """Where ``render_video`` put its outputs, and a summary of the run."""

    out_dir: Path
    frames_path: Path
    metadata_path: Path
    truth_pixels_path: Path
    movie_path: Path | None
    n_frames: int
    width_px: int
    height_px: int
    fov_origin_um: tuple[float, float]
    mean_particles_in_fov: float


# --------------------------------------------------------------------------- checks

def check_params(params: MicroscopeParams) -> None:
    """Raise ValueError naming the offending key if ``params`` cannot be rendered."""
    if params.spot not in SPOT_MODELS:
        raise ValueError(f"microscope.spot must be one of {SPOT_MODELS}, got {params.spot!r}")
    if params.bit_depth not in BIT_DEPTHS:
        raise ValueError(f"microscope.bit_depth must be one of {BIT_DEPTHS}, got {params.bit_depth!r}")
    if params.movie not in MOVIE_FORMATS:
        raise ValueError(f"microscope.movie must be one of {MOVIE_FORMATS}, got {params.movie!r}")
    for key in ("width_px", "height_px"):
        value = getattr(params, key)
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"microscope.{key} must be a positive integer, got {value!r}")
    if not params.pixel_size_um > 0:
        raise ValueError(f"microscope.pixel_size_um must be positive, got {params.pixel_size_um!r}")
    if not params.exposure_s >= 0:
        raise ValueError(f"microscope.exposure_s must be >= 0, got {params.exposure_s!r}")
    noise = params.noise
    if not noise.full_well_e > 0:
        raise ValueError(f"microscope.noise.full_well_e must be positive, got {noise.full_well_e!r}")
    for key in ("background_photons", "signal_photons", "read_noise_e"):
        if not getattr(noise, key) >= 0:
            raise ValueError(f"microscope.noise.{key} must be >= 0, got {getattr(noise, key)!r}")
    ill = params.illumination
    if not 0 <= ill.vignetting < 1:
        raise ValueError(f"microscope.illumination.vignetting must be in [0, 1), got {ill.vignetting!r}")
    if not -2 < ill.gradient < 2:
        raise ValueError(f"microscope.illumination.gradient must be in (-2, 2), got {ill.gradient!r}")


# --------------------------------------------------------------------------- optics

def illumination_field(params: MicroscopeParams) -> np.ndarray:
    """Smooth multiplicative illumination, shape (height_px, width_px), mean about 1.

    ``(1 - vignetting * rho^2) * (1 + gradient * (x_px / (W - 1) - 1/2))`` with
    rho the distance from the image centre over the centre-to-corner distance:
    the corners are ``vignetting`` darker than the centre, and the right edge
    ``gradient`` brighter than the left.
    """
    w, h = params.width_px, params.height_px
    ill = params.illumination
    xs = np.arange(w, dtype=np.float64)
    ys = np.arange(h, dtype=np.float64)
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    rho2 = ((xs[None, :] - cx) ** 2 + (ys[:, None] - cy) ** 2) / max(cx**2 + cy**2, 1e-12)
    tilt = 1.0 + ill.gradient * (xs[None, :] / max(w - 1, 1) - 0.5)
    return (1.0 - ill.vignetting * rho2) * tilt


def spot_halfwidth_px(spot: str, diameter_px: np.ndarray | float) -> np.ndarray:
    """Half-width (px) of the window outside which a spot is negligible (< 1e-4 of its peak)."""
    d = np.asarray(diameter_px, dtype=np.float64)
    if spot == "fluorescence":
        return 4.3 * FLUO_SIGMA_PER_DIAMETER * d + 1.0
    return d / 2.0 + max(4.0 * BF_EDGE_SIGMA_PX, BF_RIM_OFFSET_PX + 4.5 * BF_RIM_SIGMA_PX) + 1.0


def _brightfield_profile(r: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Contrast (units of signal_photons) of a bright-field particle at distance r (px).

    A dark disk, darkest (-1) at the centre: a fraction ``1 - BF_CENTRE_DARKENING``
    of the contrast is a flat disk, the rest follows the sphere's thickness
    sqrt(1 - (r/R)^2); the edge is softened by a Gaussian of BF_EDGE_SIGMA_PX, and
    a thin bright rim (+BF_RIM_AMPLITUDE) sits just outside. The darker centre
    gives the inverted spot a single maximum, which trackpy needs.
    """
    edge = 0.5 * erfc((r - radius) * (1.0 / (np.sqrt(2.0) * BF_EDGE_SIGMA_PX)))
    dome = np.sqrt(np.clip(1.0 - (r / radius) ** 2, 0.0, None))
    dark = edge * (1.0 - BF_CENTRE_DARKENING + BF_CENTRE_DARKENING * dome)
    rim = np.exp(-0.5 * ((r - radius - BF_RIM_OFFSET_PX) * (1.0 / BF_RIM_SIGMA_PX)) ** 2)
    return BF_RIM_AMPLITUDE * rim - dark


@functools.lru_cache(maxsize=32)
def _brightfield_table(diameter_px: float) -> tuple[np.ndarray, int]:
    """Pixel-integrated bright-field spot on a grid of centre offsets.

    Returns ``(table, extent)``: ``table[ky, kx]`` is the integral of the profile
    over a 1 px square centred at offset ``(kx, ky) / TABLE_STEPS_PER_PX - extent``
    from the particle centre. The integral is a 16 x 16 midpoint sum per pixel
    (a moving average of the profile sampled at 1/16 px), accurate to ~1e-4.
    """
    m = TABLE_STEPS_PER_PX
    extent = int(np.ceil(spot_halfwidth_px("brightfield", diameter_px))) + 1
    fine = (np.arange((2 * extent + 1) * m) + 0.5) / m - extent - 0.5
    r = np.hypot(fine[:, None], fine[None, :])
    prof = _brightfield_profile(r, 0.5 * diameter_px)
    for axis in (0, 1):  # box average of m consecutive samples along each axis
        c = np.cumsum(prof, axis=axis)
        c = np.concatenate([np.zeros_like(np.take(c, [0], axis=axis)), c], axis=axis)
        n = c.shape[axis]
        prof = (np.take(c, np.arange(m, n), axis=axis) - np.take(c, np.arange(0, n - m), axis=axis)) / m
    prof.setflags(write=False)
    return prof, extent


def _bilinear_weights(offset: np.ndarray, extent: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Lower table index and fractional weight for centre offsets (px)."""
    u = (offset + extent) * TABLE_STEPS_PER_PX
    i0 = np.clip(np.floor(u).astype(np.int64), 0, size - 2)
    frac = np.clip(u - i0, 0.0, 1.0)
    return i0, frac


def _render_batch(image_flat, x, y, d, vx, vy, n_sub, spot, width, height, exposure):
    """Add the spots of one batch of particles (same number of blur sub-samples;
    for bright field also the same diameter)."""
    n = x.size
    if n == 0:
        return
    # Sub-positions over the exposure, midpoint rule around the mid-exposure position.
    offsets = ((np.arange(n_sub) + 0.5) / n_sub - 0.5) * exposure  # s
    xs = x[:, None] + vx[:, None] * offsets[None, :]               # (n, S)
    ys = y[:, None] + vy[:, None] * offsets[None, :]
    blur_half = 0.5 * exposure * np.hypot(vx, vy)
    half = int(np.ceil(np.max(spot_halfwidth_px(spot, d) + blur_half)))
    k = np.arange(-half, half + 1)
    ix = np.rint(x).astype(np.int64)[:, None] + k[None, :]           # (n, K) pixel columns
    iy = np.rint(y).astype(np.int64)[:, None] + k[None, :]           # (n, K) pixel rows
    px = ix[:, None, :] - xs[:, :, None]                              # (n, S, K) pixel - centre
    py = iy[:, None, :] - ys[:, :, None]
    if spot == "fluorescence":
        sigma = (FLUO_SIGMA_PER_DIAMETER * d)[:, None, None]
        inv = 1.0 / (np.sqrt(2.0) * sigma)
        fx = 0.5 * (erf((px + 0.5) * inv) - erf((px - 0.5) * inv))
        fy = 0.5 * (erf((py + 0.5) * inv) - erf((py - 0.5) * inv))
        # Continuous peak 1: pixel value = 2 pi sigma^2 * (pixel fraction of the Gaussian).
        weight = (2.0 * np.pi * sigma[:, :, 0] ** 2) / n_sub          # (n, 1)
        patch = np.einsum("nsk,nsl->nkl", fy, fx) * weight[:, :, None]
    else:
        table, extent = _brightfield_table(float(d[0]))
        size = table.shape[0]
        jx, wx = _bilinear_weights(px, extent, size)                  # (n, S, K)
        jy, wy = _bilinear_weights(py, extent, size)
        jy_, jx_ = jy[:, :, :, None], jx[:, :, None, :]
        wy_, wx_ = wy[:, :, :, None], wx[:, :, None, :]
        lower = table[jy_, jx_] * (1.0 - wx_) + table[jy_, jx_ + 1] * wx_
        upper = table[jy_ + 1, jx_] * (1.0 - wx_) + table[jy_ + 1, jx_ + 1] * wx_
        patch = (lower * (1.0 - wy_) + upper * wy_).mean(axis=1)       # (n, K, K)
    rows = np.broadcast_to(iy[:, :, None], patch.shape)
    cols = np.broadcast_to(ix[:, None, :], patch.shape)
    keep = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    image_flat += np.bincount(
        (rows[keep] * width + cols[keep]), weights=patch[keep], minlength=width * height
    )


def render_contrast(x_px, y_px, diameter_px, params: MicroscopeParams, vx_px=None, vy_px=None) -> np.ndarray:
    """Noiseless sum of the particles' spots (units of signal_photons), shape (H, W).

    Positive for fluorescence (peak 1 per isolated spot), negative dark disks
    (-1 inside) with a +BF_RIM_AMPLITUDE rim for bright field. Velocities in
    px/s; blur is applied when ``params.motion_blur`` and ``exposure_s > 0``.
    """
    x = np.asarray(x_px, dtype=np.float64).ravel()
    y = np.asarray(y_px, dtype=np.float64).ravel()
    d = np.broadcast_to(np.asarray(diameter_px, dtype=np.float64), x.shape).ravel()
    if y.shape != x.shape:
        raise ValueError(f"x_px and y_px differ in length ({x.size} vs {y.size})")
    vx = np.zeros_like(x) if vx_px is None else np.broadcast_to(np.asarray(vx_px, np.float64), x.shape).ravel()
    vy = np.zeros_like(x) if vy_px is None else np.broadcast_to(np.asarray(vy_px, np.float64), x.shape).ravel()
    for name, arr in (("x_px", x), ("y_px", y), ("diameter_px", d), ("vx_px", vx), ("vy_px", vy)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains non-finite values")
    if np.any(d <= 0):
        raise ValueError("diameter_px must be positive")
    width, height = params.width_px, params.height_px
    image = np.zeros(width * height, dtype=np.float64)
    exposure = float(params.exposure_s) if params.motion_blur else 0.0
    # Only particles whose window can reach the image.
    reach = spot_halfwidth_px(params.spot, d) + 0.5 * exposure * np.hypot(vx, vy) + 1.0
    visible = (x > -reach) & (x < width - 1 + reach) & (y > -reach) & (y < height - 1 + reach)
    x, y, d, vx, vy = x[visible], y[visible], d[visible], vx[visible], vy[visible]
    if x.size == 0:
        return image.reshape(height, width)
    travel = exposure * np.hypot(vx, vy)
    n_sub = np.clip(np.ceil(travel / BLUR_STEP_PX), 1, MAX_BLUR_SUBSAMPLES).astype(np.int64)
    # Bucket by the next power of two so that a fast particle does not slow down the rest.
    n_sub = np.minimum(2 ** np.ceil(np.log2(n_sub)).astype(np.int64), MAX_BLUR_SUBSAMPLES)
    # Batches: same blur sub-sample count and (bright field: one table per diameter) diameter.
    group_d = d if params.spot == "brightfield" else np.zeros_like(d)
    keys = np.stack([n_sub.astype(np.float64), group_d], axis=1)
    _, batch = np.unique(keys, axis=0, return_inverse=True)
    for b in range(int(batch.max()) + 1):
        idx = np.flatnonzero(batch.ravel() == b)
        s = int(n_sub[idx[0]])
        half = int(np.ceil(np.max(spot_halfwidth_px(params.spot, d[idx]) + 0.5 * travel[idx])))
        per_particle = s * (2 * half + 1) ** 2 * (8 if params.spot == "brightfield" else 1)
        step = max(1, _CHUNK_EVALUATIONS // per_particle)
        for start in range(0, idx.size, step):
            j = idx[start:start + step]
            _render_batch(image, x[j], y[j], d[j], vx[j], vy[j], s, params.spot, width, height, exposure)
    return image.reshape(height, width)


def photons_to_adc(photons: np.ndarray, params: MicroscopeParams, rng: np.random.Generator) -> np.ndarray:
    """Camera: shot noise, read noise, ADC gain, rounding and clipping (float output).

    With ``noise.enabled=False`` the image is only scaled and clipped (not rounded).
    """
    noise = params.noise
    top = float(2**params.bit_depth - 1)
    gain = top / noise.full_well_e
    electrons = np.clip(photons, 0.0, None)
    if not noise.enabled:
        return np.clip(electrons * gain, 0.0, top)
    if noise.shot_noise:
        electrons = rng.poisson(electrons).astype(np.float64)
    if noise.read_noise_e > 0:
        electrons = electrons + rng.normal(0.0, noise.read_noise_e, size=electrons.shape)
    return np.clip(np.rint(electrons * gain), 0.0, top)


def render_frame(
    x_px, y_px, diameter_px, species, params: MicroscopeParams, rng: np.random.Generator,
    vx_px=None, vy_px=None, *, illumination: np.ndarray | None = None,
) -> np.ndarray:
    """Render one camera frame, float array (height_px, width_px) in ADC units.

    Positions and diameters in pixels, velocities in px/s (used for motion
    blur). ``species`` is checked for length only: the spot depends on the
    diameter. With noise enabled the values are integers in
    ``[0, 2**bit_depth - 1]``; with ``noise.enabled=False`` the noiseless,
    unrounded image. ``illumination`` may pass a precomputed
    :func:`illumination_field`.
    """
    check_params(params)
    x = np.asarray(x_px, dtype=np.float64).ravel()
    if np.asarray(species).ravel().size != x.size:
        raise ValueError(f"species has {np.asarray(species).size} entries for {x.size} particles")
    contrast = render_contrast(x, y_px, diameter_px, params, vx_px, vy_px)
    if illumination is None:
        illumination = illumination_field(params)
    noise = params.noise
    photons = illumination * (noise.background_photons + noise.signal_photons * contrast)
    return photons_to_adc(photons, params, rng)


def quantise(frame: np.ndarray, bit_depth: int) -> np.ndarray:
    """Round and clip a float ADC frame to the integer dtype of ``bit_depth``."""
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    return np.clip(np.rint(frame), 0, 2**bit_depth - 1).astype(dtype)


# --------------------------------------------------------------------------- geometry

def fov_origin_um(truth_meta: dict, params: MicroscopeParams) -> tuple[float, float]:
    """(x0, y0): box coordinates of the centre of pixel (0, 0), FOV centred in the box."""
    lx, ly = float(truth_meta["lx_um"]), float(truth_meta["ly_um"])
    xlo, ylo = float(truth_meta.get("xlo_um", 0.0)), float(truth_meta.get("ylo_um", 0.0))
    return (
        xlo + 0.5 * lx - 0.5 * params.width_px * params.pixel_size_um,
        ylo + 0.5 * ly - 0.5 * params.height_px * params.pixel_size_um,
    )


def _check_fov_fits(truth_meta: dict, params: MicroscopeParams, d_max_um: float) -> None:
    ps = params.pixel_size_um
    for axis, n_px, key in (("width", params.width_px, "lx_um"), ("height", params.height_px, "ly_um")):
        box = float(truth_meta[key])
        fov = n_px * ps
        if fov + d_max_um > box:
            max_px = int(np.floor((box - d_max_um) / ps))
            raise ValueError(
                f"field of view does not fit in the sample: {axis} {n_px} px x {ps} um = {fov:g} um "
                f"plus the largest particle diameter {d_max_um:g} um exceeds the box {key} = {box:g} um "
                f"(a particle could be seen twice through the periodic boundary); "
                f"use microscope.{axis}_px <= {max_px} or a larger sample"
            )


def truth_to_pixels(
    truth: pd.DataFrame, truth_meta: dict, params: MicroscopeParams, margin_px: float = 0.0
) -> pd.DataFrame:
    """Truth in pixel coordinates for every particle whose disk (grown by
    ``margin_px``) touches the field of view, columns as ``truth_pixels.parquet``
    plus ``touches`` (the disk itself touches the FOV).

    Periodic images shifted by +-lx are considered, so positions wrapped into a
    sheared (parallelogram) cell are handled; the FOV must fit in the box with a
    particle diameter to spare (ValueError otherwise), so at most one image of a
    particle can touch it.
    """
    missing = [c for c in TRUTH_COLUMNS if c not in truth.columns]
    if missing:
        raise ValueError(f"truth table lacks columns {missing}")
    for key in ("lx_um", "ly_um"):
        if key not in truth_meta:
            raise ValueError(f"truth metadata lacks {key!r}")
    check_params(params)
    ps = params.pixel_size_um
    d_um = truth["diameter"].to_numpy(np.float64)
    if d_um.size and not np.all(d_um > 0):
        raise ValueError("truth diameters must be positive")
    _check_fov_fits(truth_meta, params, float(d_um.max()) if d_um.size else 0.0)
    lx, ly = float(truth_meta["lx_um"]), float(truth_meta["ly_um"])
    ylo = float(truth_meta.get("ylo_um", 0.0))
    y = truth["y"].to_numpy(np.float64)
    if y.size and (y.min() < ylo - 0.5 * ly or y.max() > ylo + 1.5 * ly):
        raise ValueError("truth y positions are not wrapped into the periodic box")
    x0, y0 = fov_origin_um(truth_meta, params)
    w, h = params.width_px, params.height_px
    radius_px = 0.5 * d_um / ps
    y_px = (y - y0) / ps
    gap_y = np.maximum(np.maximum(-0.5 - y_px, y_px - (h - 0.5)), 0.0)
    x_um = truth["x"].to_numpy(np.float64)
    pieces = []
    for shift in (0.0, -lx, lx):
        x_px = (x_um + shift - x0) / ps
        gap_x = np.maximum(np.maximum(-0.5 - x_px, x_px - (w - 0.5)), 0.0)
        dist2 = gap_x**2 + gap_y**2
        near = dist2 <= (radius_px + margin_px) ** 2
        if not near.any():
            continue
        sel = truth.loc[near]
        pieces.append(pd.DataFrame({
            "frame": sel["frame"].to_numpy(np.int64),
            "t": sel["t"].to_numpy(np.float64),
            "particle": sel["particle"].to_numpy(np.int64),
            "species": sel["species"].to_numpy().astype(np.int8),
            "diameter": sel["diameter"].to_numpy(np.float64),
            "x_px": x_px[near],
            "y_px": y_px[near],
            "vx_px": sel["vx"].to_numpy(np.float64) / ps,
            "vy_px": sel["vy"].to_numpy(np.float64) / ps,
            "in_fov": (x_px[near] >= -0.5) & (x_px[near] <= w - 0.5)
                      & (y_px[near] >= -0.5) & (y_px[near] <= h - 0.5),
            "touches": dist2[near] <= radius_px[near] ** 2,
        }))
    if pieces:
        out = pd.concat(pieces, ignore_index=True)
    else:
        out = pd.DataFrame({c: pd.Series(dtype=t) for c, t in (
            ("frame", np.int64), ("t", np.float64), ("particle", np.int64), ("species", np.int8),
            ("diameter", np.float64), ("x_px", np.float64), ("y_px", np.float64),
            ("vx_px", np.float64), ("vy_px", np.float64), ("in_fov", bool), ("touches", bool))})
    out = out.sort_values(["frame", "particle"], kind="stable").reset_index(drop=True)
    dup = out.loc[out["touches"]].duplicated(["frame", "particle"])
    if dup.any():  # cannot happen once the FOV fits with a diameter to spare
        raise RuntimeError("a particle touches the field of view through two periodic images")
    return out


# --------------------------------------------------------------------------- video

def render_video(
    truth: pd.DataFrame, truth_meta: dict, params: MicroscopeParams, out_dir: str | os.PathLike
) -> RenderResult:
    """Render the truth into ``out_dir`` (frames.tif, optional movie, metadata.json,
    truth_pixels.parquet; see docs/data_schema.md).

    Written atomically: everything goes to a temporary directory next to
    ``out_dir`` which is renamed at the end; on any error nothing is left. An
    existing ``out_dir`` is replaced.
    """
    check_params(params)
    out_dir = Path(out_dir)
    if "frame_rate_hz" not in truth_meta:
        raise ValueError("truth metadata lacks 'frame_rate_hz'")
    frame_rate = float(truth_meta["frame_rate_hz"])
    if "frame" not in truth.columns:
        raise ValueError("truth table lacks column 'frame'")
    frames = np.unique(truth["frame"].to_numpy(np.int64))
    if frames.size == 0:
        raise ValueError("truth table is empty")
    if frames[0] != 0 or frames[-1] != frames.size - 1:
        raise ValueError(
            f"truth frames must be 0..n-1 without gaps, got {frames[0]}..{frames[-1]} ({frames.size} frames)"
        )
    n_frames = int(frames.size)
    if params.exposure_s > 1.0 / frame_rate:
        raise ValueError(f"exposure_s {params.exposure_s} is longer than a frame interval 1/{frame_rate:g} Hz")

    ps = params.pixel_size_um
    d_max_px = float(truth["diameter"].max()) / ps if "diameter" in truth.columns else 0.0
    margin = float(spot_halfwidth_px(params.spot, d_max_px)) - 0.5 * d_max_px + 1.0
    if params.motion_blur and {"vx", "vy"} <= set(truth.columns):
        margin += 0.5 * params.exposure_s * float(np.nanmax(np.hypot(truth["vx"], truth["vy"]))) / ps
    pix = truth_to_pixels(truth, truth_meta, params, margin_px=margin)
    x0, y0 = fov_origin_um(truth_meta, params)

    rng = np.random.default_rng(params.seed)
    illum = illumination_field(params)
    dtype = np.uint8 if params.bit_depth == 8 else np.uint16
    stack = np.empty((n_frames, params.height_px, params.width_px), dtype=dtype)
    fr = pix["frame"].to_numpy(np.int64)
    bounds = np.searchsorted(fr, np.arange(n_frames + 1))
    cols = {c: pix[c].to_numpy() for c in ("x_px", "y_px", "diameter", "species", "vx_px", "vy_px")}
    for f in range(n_frames):
        s = slice(bounds[f], bounds[f + 1])
        img = render_frame(
            cols["x_px"][s], cols["y_px"][s], cols["diameter"][s] / ps, cols["species"][s], params, rng,
            cols["vx_px"][s], cols["vy_px"][s], illumination=illum,
        )
        stack[f] = quantise(img, params.bit_depth)

    truth_pixels = pix.loc[pix["touches"], list(TRUTH_PIXEL_COLUMNS)].reset_index(drop=True)
    movie_name = None if params.movie == "none" else f"frames.{params.movie}"
    species_d = (
        truth.groupby("species")["diameter"].first().sort_index()
        if {"species", "diameter"} <= set(truth.columns) else pd.Series(dtype=float)
    )
    metadata = {
        "pixel_size_um": float(ps),
        "frame_rate_hz": frame_rate,
        "bit_depth": int(params.bit_depth),
        "exposure_s": float(params.exposure_s),
        "n_frames": n_frames,
        "width_px": int(params.width_px),
        "height_px": int(params.height_px),
        "source": "rendered",
        "frames_path": os.fspath(out_dir / "frames.tif"),
        "fov_origin_um": [float(x0), float(y0)],
        "spot": params.spot,
        "dark_particles": params.spot == "brightfield",
        "movie_path": None if movie_name is None else os.fspath(out_dir / movie_name),
        "diameter_um_by_species": {str(int(k)): float(v) for k, v in species_d.items()},
        "diameter_px_by_species": {str(int(k)): float(v) / ps for k, v in species_d.items()},
        "box_um": [float(truth_meta["lx_um"]), float(truth_meta["ly_um"])],
        "mean_particles_in_fov": float(truth_pixels["in_fov"].sum() / n_frames),
        "microscope": to_dict(params),
        "software": software_versions("numpy", "scipy", "pandas", "pyarrow", "tifffile", "imageio", "imageio-ffmpeg"),
    }

    with atomic_output_dir(out_dir) as tmp:
        write_tiff_stack(tmp / "frames.tif", stack)
        if movie_name is not None:
            write_movie(tmp / movie_name, to_uint8_preview(stack, params.bit_depth), frame_rate)
        truth_pixels.to_parquet(tmp / "truth_pixels.parquet", index=False)
        with open(tmp / "metadata.json", "w") as fh:
            json.dump(metadata, fh, indent=2)
            fh.write("\n")

    return RenderResult(
        out_dir=out_dir,
        frames_path=out_dir / "frames.tif",
        metadata_path=out_dir / "metadata.json",
        truth_pixels_path=out_dir / "truth_pixels.parquet",
        movie_path=None if movie_name is None else out_dir / movie_name,
        n_frames=n_frames,
        width_px=int(params.width_px),
        height_px=int(params.height_px),
        fov_origin_um=(float(x0), float(y0)),
        mean_particles_in_fov=metadata["mean_particles_in_fov"],
    )
