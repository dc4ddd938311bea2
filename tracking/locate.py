"""Find particles in every frame with trackpy, and estimate contrast, diameter, separation and minmass.

The automatic estimates (``auto``) look at the first few frames only;
docs/tracking.md explains and justifies them:

* contrast (invert): the particles are the strongest blobs of their own
  contrast in a Laplacian-of-Gaussian scale space; the 90th-percentile
  significance of the dark and the bright blobs is compared (detect_polarity).

* diameter: the characteristic scale of the spots in a scale-normalised
  Laplacian-of-Gaussian scale space (Lindeberg 1998). A flat disk of radius
  r responds most strongly at sigma = r / sqrt(2), a Gaussian spot of width s
  at sigma = s, a sphere's dome-shaped image a little below r / sqrt(2); the
  mask must hold the whole image of the larger particles, so it is taken from
  the 75th percentile of the scales (see estimate_diameter).
* separation: trackpy's default (diameter + 1) unless the spots are denser,
  then 0.6 of their median nearest-neighbour distance (touching particles of
  a dense monolayer must not be merged).
* minmass: Otsu's two-class split of the log-mass histogram of the features
  found with minmass = 0, accepted only where the two classes are distinct
  populations (geometric means a factor >= 3 apart), which is the signature of
  faint noise maxima beside real particles. Otherwise (every maximum is a
  particle, e.g. a dense monolayer) a fifth of the 90th-percentile mass.

The same scale space decides whether there is any particle at all (whenever
one parameter is automatic): a video without a single spot standing out of
the noise is an input error, not an empty result.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import trackpy
from scipy import fft, ndimage
from scipy.spatial import cKDTree

from ._quiet import quiet_trackpy
from .params import AUTO, LocateParams

# A blob's filter response must exceed this many times the response the
# image's pixel noise gives: white, uniform and low-count Poisson noise peak
# below 6.5 in a megapixel over all scales; real particles are >> 10.
BLOB_SIGNIFICANCE = 8.0
# Scale space: 4 scales per octave from 0.7 px (a spot smaller than a pixel
# cannot be located to sub-pixel precision anyway).
SIGMA_MIN_PX = 0.7
SCALES_PER_OCTAVE = 4
SIGMA_MAX_PX = 16.0
# Auto estimates look at a central crop of at most this size (px), which
# bounds their cost on large frames.
AUTO_CROP_PX = 512
# Otsu's split is trusted only when the two mass classes differ this much.
MASS_CLASS_RATIO = 3.0
FALLBACK_MASS_FRACTION = 0.2
SEPARATION_FRACTION = 0.6
DOME_FACTOR = 1.25
SIGMA_PERCENTILE = 75
# Polarity: the contrast whose 90th-percentile blob significance is this many
# times the other's is the particles' (measured: >= 1.39 or <= 1 / 1.54).
POLARITY_RATIO = 1.25

FEATURE_COLUMNS = ["frame", "x", "y", "mass", "size", "ecc", "signal", "raw_mass", "ep"]


class NoParticlesError(ValueError):
    """No particle-like spot in the frames looked at."""


@dataclass(frozen=True)
class ResolvedLocate:
    """Locate parameters with 'auto' replaced by numbers, ready for trackpy."""

    diameter: int
    minmass: float
    separation: float | None
    invert: bool
    percentile: float
    noise_size: float
    smoothing_size: float | None

    @property
    def margin_px(self) -> int:
        """trackpy's own margin (trackpy.feature.locate): no feature centre is reported closer to the border."""
        separation = self.separation if self.separation is not None else self.diameter + 1
        smoothing = self.smoothing_size if self.smoothing_size is not None else self.diameter
        return int(max(self.diameter // 2, separation // 2 - 1, smoothing // 2))

    def trackpy_kwargs(self) -> dict:
        kwargs = {"diameter": self.diameter, "minmass": self.minmass, "percentile": self.percentile,
                  "noise_size": self.noise_size}
        if self.separation is not None:
            kwargs["separation"] = self.separation
        if self.smoothing_size is not None:
            kwargs["smoothing_size"] = self.smoothing_size
        return kwargs


def prepare(images: np.ndarray, invert: bool) -> np.ndarray:
    """Make particles bright: invert dark-on-bright frames (bright field).

    Done here rather than with trackpy's deprecated ``invert`` argument (its
    advice: use a pims pipeline). Integers invert within their dtype, so the
    band-passed values, and hence the masses, are those trackpy would give.
    """
    if not invert:
        return images
    if np.issubdtype(images.dtype, np.integer):
        return np.iinfo(images.dtype).max - images
    return images.max() - images


def _central_crop(image: np.ndarray, size: int) -> np.ndarray:
    rows, cols = image.shape
    r0, c0 = max(0, (rows - size) // 2), max(0, (cols - size) // 2)
    return image[r0:r0 + size, c0:c0 + size]


def log_scale_space(image: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """Scale-normalised -sigma^2 LoG responses (bright blobs positive), stacked by scale.

    Computed in Fourier space (one forward transform for all scales) with
    reflective padding so the image border does not ring.
    """
    pad = int(np.ceil(3 * sigmas.max()))
    padded = np.pad(image.astype(np.float64), pad, mode="reflect")
    spectrum = fft.rfft2(padded, workers=-1)
    ky = 2 * np.pi * fft.fftfreq(padded.shape[0])[:, None]
    kx = 2 * np.pi * fft.rfftfreq(padded.shape[1])[None, :]
    k2 = ky**2 + kx**2
    out = np.empty((len(sigmas),) + image.shape, dtype=np.float32)
    for i, sigma in enumerate(sigmas):
        kernel = sigma**2 * k2 * np.exp(-0.5 * sigma**2 * k2)
        response = fft.irfft2(spectrum * kernel, s=padded.shape, workers=-1)
        out[i] = response[pad:pad + image.shape[0], pad:pad + image.shape[1]]
    return out


def pixel_noise(image: np.ndarray) -> float:
    """Robust standard deviation of the pixel noise (Immerkaer 1996, with a median).

    The 3x3 mask is the difference of two discrete Laplacians, blind to
    smooth structure and nearly so to particle edges, so dense packings do not
    inflate the estimate as a plain MAD of the image would. Floored at the
    quantisation noise (1/sqrt(12) grey level) of integer images.
    """
    mask = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])
    residual = ndimage.convolve(image.astype(np.float64), mask, mode="reflect")[1:-1, 1:-1]
    noise = 1.4826 * float(np.median(np.abs(residual))) / 6.0  # 6 = L2 norm of the mask
    if np.issubdtype(image.dtype, np.integer):
        return max(noise, 1 / np.sqrt(12))
    return max(noise, 1e-6 * float(np.ptp(image)), np.finfo(np.float64).tiny)


def find_blobs(image: np.ndarray, sigma_max: float = SIGMA_MAX_PX) -> pd.DataFrame:
    """Significant scale-space maxima of one (bright-particle) image: x, y, sigma, significance.

    Significance is a maximum's response in units of the response the
    image's own pixel noise would give at that scale.
    """
    return find_blobs_both(image, sigma_max)[0]


def find_blobs_both(image: np.ndarray, sigma_max: float = SIGMA_MAX_PX) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Significant bright and dark blobs of one image (see find_blobs), from one scale space.

    The dark blobs are the bright blobs of the inverted image: the filter has
    no response to a constant, so ``max - image`` and ``-image`` give the same
    responses, and the scale space is computed once for both.
    """
    sigma_max = min(sigma_max, min(image.shape) / 8)
    n_scales = int(np.floor(SCALES_PER_OCTAVE * np.log2(sigma_max / SIGMA_MIN_PX))) + 1
    if n_scales < 3:
        empty = pd.DataFrame(columns=["x", "y", "sigma", "significance"])
        return empty, empty.copy()
    sigmas = SIGMA_MIN_PX * 2 ** (np.arange(n_scales) / SCALES_PER_OCTAVE)
    response = log_scale_space(image, sigmas)
    noise = pixel_noise(image) * _kernel_norms(sigmas)
    bright = _significant_maxima(response, noise, sigmas, image.shape)
    np.negative(response, out=response)
    return bright, _significant_maxima(response, noise, sigmas, image.shape)


def _significant_maxima(response: np.ndarray, noise: np.ndarray, sigmas: np.ndarray, shape) -> pd.DataFrame:
    is_peak = response == ndimage.maximum_filter(response, size=(3, 5, 5), mode="nearest")
    is_peak[0] = is_peak[-1] = False  # a maximum at the end of the scale range is no scale selection
    scale, row, col = np.nonzero(is_peak)
    significance = response[scale, row, col] / noise[scale]
    keep = significance > BLOB_SIGNIFICANCE
    # Reflective padding mirrors spots at the border; keep peaks clear of it.
    margin = 2 * sigmas[scale]
    keep &= (row >= margin) & (row < shape[0] - margin) & (col >= margin) & (col < shape[1] - margin)
    scale, row, col, significance = scale[keep], row[keep], col[keep], significance[keep]
    # Sub-scale refinement: vertex of the parabola through the three scales in log sigma.
    below, here, above = (response[scale - 1, row, col], response[scale, row, col], response[scale + 1, row, col])
    curvature = below - 2 * here + above
    offset = np.where(curvature < 0, 0.5 * (below - above) / np.where(curvature < 0, curvature, -1), 0.0)
    sigma = SIGMA_MIN_PX * 2 ** ((scale + np.clip(offset, -0.5, 0.5)) / SCALES_PER_OCTAVE)
    return pd.DataFrame({"x": col, "y": row, "sigma": sigma, "significance": significance})


def _kernel_norms(sigmas: np.ndarray, size: int = 256) -> np.ndarray:
    """L2 norm of each scale-normalised LoG kernel: the response std to unit white noise (Parseval)."""
    k = 2 * np.pi * fft.fftfreq(size)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    return np.array([np.sqrt(np.mean((s**2 * k2 * np.exp(-0.5 * s**2 * k2)) ** 2)) for s in sigmas])


def find_spots(images: np.ndarray) -> list[pd.DataFrame]:
    """Significant scale-space spots of each image (central crop); NoParticlesError if none at all."""
    spots = [find_blobs(_central_crop(image, AUTO_CROP_PX)) for image in images]
    if sum(len(s) for s in spots) == 0:
        raise NoParticlesError(_no_spot_message(len(images)))
    return spots


def _no_spot_message(n_images: int) -> str:
    return (f"no particle-like spot stands out of the noise (by {BLOB_SIGNIFICANCE:g} times the response of "
            f"the pixel noise to a Laplacian-of-Gaussian filter at any scale from {SIGMA_MIN_PX} px) in the "
            f"first {n_images} frame(s); check locate.invert (true for dark particles) and the frame range")


def detect_polarity(images: np.ndarray) -> tuple[dict, dict[bool, list[pd.DataFrame]]]:
    """Are the particles bright or dark? Decided from the strongest blobs of each contrast.

    Particles are the strongest blobs of their own contrast: their images are
    larger and of higher contrast than what lies between them (gaps between
    dark bright-field spheres, their bright rims, the dark gaps between
    fluorescent spots), which make the blobs of the other contrast. The 90th
    percentile of the blobs' significance, over the first frames, is compared:
    measured ratios were >= 1.39 for bright-field renders (dense and dilute,
    down to a tenth of the default contrast) and bulk_water, and <= 0.65
    for fluorescence renders and Gaussian spots (docs/tracking.md). Between
    1/POLARITY_RATIO and POLARITY_RATIO the contrast is called undecided.

    Returns the record (``invert``: True, False or None when undecided) and
    the spots of each contrast per image, keyed by ``invert`` (True: the
    dark blobs), so that the automatic diameter reuses them. Raises
    NoParticlesError when neither contrast has a spot.
    """
    bright, dark = zip(*(find_blobs_both(_central_crop(image, AUTO_CROP_PX)) for image in images), strict=True)
    strength = {}
    for name, spots in (("bright", bright), ("dark", dark)):
        significance = np.concatenate([s["significance"].to_numpy(dtype=float) for s in spots])
        strength[name] = float(np.percentile(significance, 90)) if len(significance) else 0.0
    if strength["bright"] == 0 and strength["dark"] == 0:
        raise NoParticlesError(_no_spot_message(len(images)))
    ratio = strength["dark"] / strength["bright"] if strength["bright"] > 0 else float("inf")
    invert = True if ratio >= POLARITY_RATIO else False if ratio <= 1 / POLARITY_RATIO else None
    record = {"invert": invert, "method": "p90_blob_significance_dark_over_bright",
              "dark_over_bright": round(ratio, 3) if np.isfinite(ratio) else None,
              "p90_significance_bright": round(strength["bright"], 2),
              "p90_significance_dark": round(strength["dark"], 2),
              "frames": len(images)}
    return record, {False: list(bright), True: list(dark)}


def estimate_diameter(spots: list[pd.DataFrame]) -> dict:
    """trackpy's diameter from the scales of the significant spots of the first few frames.

    A flat disk of diameter d has its scale-space maximum at
    sigma = d / (2 sqrt 2); a sphere's dome-shaped or blurred image peaks at a
    smaller scale (about 0.8 of that on rendered bright-field spheres), so
    the particle diameter is taken as 1.25 * 2 sqrt(2) sigma. trackpy's
    centroid is unbiased only when the mask holds the whole particle image,
    so the scale used is the 75th percentile over spots (the larger species
    of a mixture, as long as it makes up a quarter of the particles) and the
    mask is the next odd integer above that diameter plus one pixel. Returns
    the chosen diameter (px) and what it came from.
    """
    sigmas = np.concatenate([s["sigma"].to_numpy() for s in spots])
    sigma = float(np.percentile(sigmas, SIGMA_PERCENTILE))
    particle_diameter = DOME_FACTOR * 2 * np.sqrt(2) * sigma
    diameter = int(np.ceil(particle_diameter + 1))
    diameter += 1 - diameter % 2
    return {
        "diameter": max(3, diameter),
        "method": "laplacian_of_gaussian_scale",
        "sigma_p75_px": round(sigma, 3),
        "sigma_median_px": round(float(np.median(sigmas)), 3),
        "particle_diameter_px": round(float(particle_diameter), 3),
        "spots_per_frame": round(len(sigmas) / len(spots), 1),
        "frames": len(spots),
    }


def estimate_separation(spots: list[pd.DataFrame], diameter: int) -> dict:
    """trackpy's separation: trackpy's default (diameter + 1) unless the spots are closer.

    In a dense monolayer neighbours touch, and trackpy's default would
    discard the dimmer of every close pair. 0.6 of the median
    nearest-neighbour distance between spots keeps touching particles of a
    1:1.4 bidisperse packing apart (their distance is at least ~0.8 of the
    median) while still merging maxima closer than any two particles can be.
    """
    distances = []
    for s in spots:
        if len(s) >= 2:
            points = s[["x", "y"]].to_numpy(dtype=float)
            distances.append(cKDTree(points).query(points, k=2)[0][:, 1])
    spacing = float(np.median(np.concatenate(distances))) if distances else float("inf")
    separation = float(min(diameter + 1, SEPARATION_FRACTION * spacing))
    return {"separation": round(separation, 3), "method": "min(diameter + 1, 0.6 median spot spacing)",
            "median_spot_spacing_px": round(spacing, 3) if np.isfinite(spacing) else None}


def otsu_threshold(values: np.ndarray) -> tuple[float, float, float]:
    """Otsu's split of 1-D values: (threshold, mean of lower class, mean of upper class)."""
    values = np.sort(values)
    n = len(values)
    counts = np.arange(1, n)
    cumulative = np.cumsum(values)[:-1]
    mean_low = cumulative / counts
    mean_high = (values.sum() - cumulative) / (n - counts)
    between = counts * (n - counts) * (mean_high - mean_low) ** 2
    k = int(np.argmax(between))
    return 0.5 * (values[k] + values[k + 1]), float(mean_low[k]), float(mean_high[k])


def estimate_minmass(images: np.ndarray, locate_kwargs: dict) -> tuple[dict, list[pd.DataFrame]]:
    """Estimate minmass from the masses of all maxima (minmass = 0) in a few frames.

    Also returns each frame's features at minmass = 0: trackpy applies
    minmass last, so these filtered by the estimate are exactly what
    locating those frames again would give, and the caller can reuse them.
    """
    kwargs = dict(locate_kwargs, minmass=0)
    with warnings.catch_warnings(), quiet_trackpy():
        warnings.simplefilter("ignore")
        probes = [trackpy.locate(image, **kwargs) for image in images]
    masses = np.concatenate([p["mass"].to_numpy(dtype=np.float64) for p in probes])
    masses = masses[np.isfinite(masses) & (masses > 0)]
    if len(masses) == 0:
        raise NoParticlesError(f"trackpy finds no intensity maximum in the first {len(images)} frame(s) with "
                               f"diameter {kwargs['diameter']}; check locate.invert and locate.diameter")
    choice = {"frames": len(images), "maxima": len(masses)}
    if len(masses) >= 4:
        threshold, low, high = otsu_threshold(np.log10(masses))
        ratio = 10 ** (high - low)
        choice["class_ratio"] = round(float(ratio), 2)
        if ratio >= MASS_CLASS_RATIO:
            choice.update(minmass=float(10**threshold), method="otsu_log_mass")
            return choice, probes
    choice.update(minmass=float(FALLBACK_MASS_FRACTION * np.percentile(masses, 90)),
                  method="fraction_of_p90_mass")
    return choice, probes


def resolve(params: LocateParams, first_images: np.ndarray, invert: bool,
            spots: list[pd.DataFrame] | None = None) -> tuple[ResolvedLocate, dict, list | None]:
    """Replace 'auto' diameter/separation/minmass by estimates from first_images (already ``prepare``d).

    ``invert`` is the resolved polarity (``params.invert`` may be 'auto');
    ``spots`` may pass the spots of first_images found already (detect_polarity).
    Returns the resolved parameters, a record of the automatic choices, and
    (when minmass was estimated) the features of first_images at minmass = 0
    (see estimate_minmass), else None. Raises NoParticlesError when an
    estimate finds no particle.
    """
    chosen: dict = {}
    # Any automatic choice first asks whether there is a particle at all, so
    # that a noise-only video fails instead of yielding noise "particles".
    if AUTO in (params.diameter, params.separation, params.minmass):
        if spots is None:
            spots = find_spots(first_images)
        elif sum(len(s) for s in spots) == 0:
            raise NoParticlesError(_no_spot_message(len(first_images)))
    diameter = params.diameter
    if diameter == AUTO:
        chosen["diameter"] = estimate_diameter(spots)
        diameter = chosen["diameter"]["diameter"]
    separation = params.separation
    if separation == AUTO:
        chosen["separation"] = estimate_separation(spots, int(diameter))
        separation = chosen["separation"]["separation"]
    resolved = ResolvedLocate(diameter=int(diameter), minmass=0.0, separation=separation,
                              invert=bool(invert), percentile=params.percentile,
                              noise_size=params.noise_size, smoothing_size=params.smoothing_size)
    minmass, probes = params.minmass, None
    if minmass == AUTO:
        chosen["minmass"], probes = estimate_minmass(first_images, resolved.trackpy_kwargs())
        minmass = chosen["minmass"]["minmass"]
    return dataclasses.replace(resolved, minmass=float(minmass)), chosen, probes


def locate_stack(images: np.ndarray, frame_numbers: np.ndarray, params: ResolvedLocate,
                 processes: int = 1) -> pd.DataFrame:
    """Locate features in a stack of prepared frames with trackpy.batch on ``processes`` processes."""
    frame_numbers = np.asarray(frame_numbers)

    def renumber(index, features):
        # trackpy.batch counts frames of the stack from 0; report the video's own numbers.
        features["frame"] = int(frame_numbers[index])
        return features

    with warnings.catch_warnings(), quiet_trackpy():
        warnings.simplefilter("ignore")  # "No maxima found": an empty result is checked by the caller
        features = trackpy.batch(images, processes=max(1, int(processes)), after_locate=renumber,
                                 **params.trackpy_kwargs())
    return tidy(features)


def tidy(features: pd.DataFrame) -> pd.DataFrame:
    """trackpy's feature columns in a fixed order and dtype (an empty result keeps the columns)."""
    features = features.copy()
    for column in FEATURE_COLUMNS:
        if column not in features:
            features[column] = np.nan
    features = features[FEATURE_COLUMNS].astype(float)
    features["frame"] = features["frame"].astype(np.int64)
    return features


def filter_features(features: pd.DataFrame, params: LocateParams) -> pd.DataFrame:
    """Drop features outside the mass/size/eccentricity limits (a NaN value is kept: not judged)."""
    keep = np.ones(len(features), dtype=bool)
    for column, low, high in (("mass", None, params.max_mass), ("size", params.min_size, params.max_size),
                              ("ecc", params.min_ecc, params.max_ecc)):
        values = features[column].to_numpy()
        if low is not None:
            keep &= ~(values < low)
        if high is not None:
            keep &= ~(values > high)
    return features.loc[keep].reset_index(drop=True)
