"""Illumination flattening before locating: divide each frame by its large-scale background.

Bright-field light is rarely even: vignetting darkens the corners, a tilted
lamp or condenser makes a gradient. trackpy's band pass removes a background
on the scale of the mask, but a particle's contrast still scales with the
light that falls on it, so its mass does too, and ``minmass`` and
``percentile`` (one threshold for the whole frame) treat the dim corners
differently from the bright centre. Illumination multiplies the image, so it
is divided out: ``frame / background * mean(background)``, which keeps the
grey levels on the frame's own scale, rounded back to its integer type
(trackpy's integer code path, and ``minmass`` keeps its meaning).

``locate.flatten`` chooses the background estimate (``locate.flatten_size``
its scale in px; default one particle diameter, ``FLATTEN_DIAMETERS``):

* ``gaussian``: a Gaussian blur of the frame of that sigma (scipy). The
  particles are averaged in (a lone particle's own contrast is diluted by
  about its area over the Gaussian's, 1/8 at one diameter), which an even
  packing turns into a constant factor; cheap. A wider blur cannot follow
  vignetting's curvature: on the vignetted twin (corners at 40 % light)
  sigma = 1 diameter missed 0.04 % of the particles, 2 diameters 1.5 %,
  3 diameters 4 %, none 16 %.
* ``rolling_ball``: the envelope a ball of that radius traces on the
  background side of the frame, above for dark particles (bright field),
  below for bright ones (scikit-image's ``rolling_ball``, on the frame
  smoothed by 1 px to keep the envelope off single noisy pixels). It follows
  the background between the particles, not their mean, so a sparse or
  uneven packing does not tint it; it needs scikit-image (an optional
  dependency: ``pip install scikit-image``).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .params import LocateParams, ParameterError

FLATTEN_DIAMETERS = 1.0  # default scale of the background: this many particle diameters (px; measured best on the twin)
ROLLING_BALL_PRESMOOTH_PX = 1.0
ROLLING_BALL_SHRINK_PX = 8.0  # shrink the frame so that the ball's radius is at least this many (small) px
ENVELOPE_SMOOTHING = 0.25  # Gaussian sigma of the envelope's smoothing, in ball radii


def background(image: np.ndarray, method: str, size_px: float, dark_particles: bool) -> np.ndarray:
    """Large-scale background (float64) of one grey frame by ``method`` at scale ``size_px``."""
    image = image.astype(np.float64)
    if method == "gaussian":
        return ndimage.gaussian_filter(image, size_px, mode="reflect")
    if method == "rolling_ball":
        from skimage.restoration import rolling_ball

        smooth = ndimage.gaussian_filter(image, ROLLING_BALL_PRESMOOTH_PX, mode="reflect")
        top = float(smooth.max())
        # skimage rolls the ball under the landscape: flip it when the background lies above the particles.
        side = top - smooth if dark_particles else smooth
        # As ImageJ: roll a smaller ball over the frame shrunk by block minima (the envelope stays an
        # envelope), which costs shrink^4 times less, and interpolate back.
        shrink = max(1, int(size_px // ROLLING_BALL_SHRINK_PX))
        rows, cols = side.shape
        padded = np.pad(side, ((0, -rows % shrink), (0, -cols % shrink)), mode="edge")
        small = padded.reshape(padded.shape[0] // shrink, shrink, padded.shape[1] // shrink, shrink).min(axis=(1, 3))
        try:
            envelope = rolling_ball(small, radius=size_px / shrink, workers=1)
        except TypeError:  # scikit-image < 0.26 calls it num_threads
            envelope = rolling_ball(small, radius=size_px / shrink, num_threads=1)
        # Back to full size (block centres), then smoothed: the ball's own facets are no illumination.
        centres = (np.arange(rows) + 0.5) / shrink - 0.5, (np.arange(cols) + 0.5) / shrink - 0.5
        envelope = ndimage.map_coordinates(envelope, np.meshgrid(*centres, indexing="ij"), order=1, mode="nearest")
        envelope = ndimage.gaussian_filter(envelope, ENVELOPE_SMOOTHING * size_px, mode="reflect")
        return top - envelope if dark_particles else envelope
    raise ValueError(f"unknown flatten method {method!r}")


def flatten_frames(images: np.ndarray, method: str, size_px: float, dark_particles: bool) -> np.ndarray:
    """Frames divided by their own background, on their own grey scale and dtype; ``method='none'``: unchanged."""
    if method == "none":
        return images
    out = np.empty_like(images)
    for index, image in enumerate(images):
        floor = np.finfo(np.float64).tiny
        bg = np.maximum(background(image, method, size_px, dark_particles), floor)
        flat = image.astype(np.float64) / bg * float(bg.mean())
        if np.issubdtype(images.dtype, np.integer):
            info = np.iinfo(images.dtype)
            flat = np.clip(np.rint(flat), info.min, info.max)
        out[index] = flat
    return out


def check_available(params: LocateParams) -> None:
    """Fail before any work when the chosen method needs a package that is missing."""
    if params.flatten == "rolling_ball":
        try:
            import skimage.restoration  # noqa: F401
        except ImportError:
            raise ParameterError("tracking.locate.flatten: rolling_ball needs scikit-image, which is not "
                                 "installed; `pip install scikit-image` (or colloid-mpd[images]), or use "
                                 "flatten: gaussian") from None


def flatten_size_px(params: LocateParams, particle_diameter_px: float) -> float:
    """The background scale in px: ``flatten_size`` when given, else FLATTEN_DIAMETERS particle diameters."""
    if params.flatten_size is not None:
        return float(params.flatten_size)
    return float(FLATTEN_DIAMETERS * particle_diameter_px)


def make_flattener(params: LocateParams, raw_images: np.ndarray, invert: bool, spots=None):
    """(function flattening a stack of frames, record for qc.json or None, spots) for ``params.flatten``.

    The default scale needs the particle diameter: the given mask diameter,
    else the automatic estimate from the first frames' spots (found here when
    the contrast detection did not find them already; returned for reuse).
    Raises tracking.locate.NoParticlesError when there is no spot to measure.
    """
    from .locate import estimate_diameter, find_spots, prepare

    if params.flatten == "none":
        return (lambda images: images), None, spots
    check_available(params)
    if params.flatten_size is not None:
        diameter = None
    elif params.diameter != "auto":
        diameter = float(params.diameter)
    else:
        if spots is None:
            spots = find_spots(prepare(raw_images, invert))
        diameter = float(estimate_diameter(spots)["particle_diameter_px"])
    size = flatten_size_px(params, diameter if diameter is not None else 0.0)
    record = {"method": params.flatten, "size_px": round(size, 3),
              "size_from": "flatten_size" if params.flatten_size is not None
              else f"{FLATTEN_DIAMETERS:g} x particle diameter {diameter:.3g} px",
              "background_side": "above (dark particles)" if invert else "below (bright particles)"}
    return (lambda images: flatten_frames(images, params.flatten, size, invert)), record, spots
