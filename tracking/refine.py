"""Refine trackpy's centroids by fitting the measured spot of every particle, its neighbours included.

Why: trackpy's centroid weighs every pixel of the mask by its brightness. In
a packing of touching particles the mask also holds the neighbours' spots
(in bright field their bright rims and dark disks), which pull the centroid
towards or away from each neighbour: a fixed per-particle bias that no
amount of averaging removes. On the project's dense bright-field twin that
bias is most of the centroid's error (benchmarks/results/localisation.json).

Method (``psf_fit``):

1. The spot of each species (labelled from trackpy's ``size`` as in
   tracking.species, one size threshold per pair of species) is measured on
   the first frames as a radial profile ``T_s(r)``: a cubic B-spline in the
   distance r (knots every KNOT_SPACING_PX, flat at r = 0, zero with zero
   slope at the fit radius R), fitted by linear least squares to every pixel
   within R of any particle (and EDGE_MARGIN_RADII R inside the image), with
   all particles' spots overlapping where they do and a smooth background.
   The motion-blurred, noisy spot is what gets measured, so no optics model
   is assumed; only radial symmetry, and that a pixel integrates the spot
   (its value is the profile's mean over PIXEL_SUBSAMPLES^2 points).
2. Each frame is modelled as ``I(p) = B_i(p) + sum_j a_j T_{s_j}(|p - r_j|)``
   on the window of radius R around each particle i (B_i a plane: the local
   background; a_j the amplitudes). Every particle's position, amplitude and
   plane are fitted on its own window with its neighbours' modelled spots
   subtracted, by Gauss-Newton steps; all particles are updated at once (a
   sweep), and the neighbours' spots are recomputed between sweeps. Pixels
   within trackpy's margin of the border are left out (spots there are not
   reported, so not modelled).
3. Steps 1 and 2 alternate CALIBRATION_ROUNDS times on the first frames, so
   that the profile is measured at the refined positions with the fitted
   amplitudes.

Guards: a particle whose window lies less than MIN_INSIDE_FRACTION inside
the image (``edge``), whose fitted amplitude is below MIN_AMPLITUDE_FRACTION
of its species' median or whose normal matrix is singular (``weak``: a blank
patch), whose last step exceeds CONVERGED_STEP_PX (``not_converged``) or whose
refined position lies farther than ``max_shift_px`` from the centroid
(``too_far``) keeps trackpy's centroid and is flagged (``refined`` False).
Positions are never NaN.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sps
from scipy.interpolate import BSpline

from .params import SpeciesParams
from .species import classify_species

# Radial knot spacing of the measured profile (px): the twin's bright rim is
# ~1 px wide after pixel integration, so 0.5 px resolves it; with hundreds of
# spots per frame there are ~1e4 pixels per knot, no over-fitting.
KNOT_SPACING_PX = 0.5
# The profile is tabulated this finely and interpolated linearly: interpolation
# error ~ T'' h^2 / 8, far below the noise.
TABLE_STEP_PX = 0.01
# Smoothness penalty on the spline's second differences, relative to the mean
# diagonal of the normal matrix (well above float32 resolution, far below the
# data's weight).
PROFILE_SMOOTHING = 1e-3
# Levenberg damping of the per-particle Gauss-Newton systems (x, y, amplitude, plane), relative to
# their diagonal, plus a floor of 1e-9 of each parameter's mean diagonal.
DAMPING = 1e-4
CALIBRATION_ROUNDS = 2
# Background of the calibration frames: a smooth polynomial field of this degree (the twin's
# illumination, vignetting times a tilt, is of degree 3).
BACKGROUND_DEGREE = 3
MAX_STEP_PX = 0.5              # a Gauss-Newton step is clipped to this per coordinate
MIN_INSIDE_FRACTION = 0.5      # of the window's pixels inside the image, else "edge"
MIN_AMPLITUDE_FRACTION = 0.2   # of the species' median amplitude, else "weak"
CONVERGED_STEP_PX = 0.05       # last sweep's step, else "not_converged"
# A camera pixel integrates the spot: its value is the mean of the profile at this many points
# squared. Evaluating the profile at the pixel centre only pulled refined positions of the small,
# sharp spots of bulk_water towards pixel edges (x mod 1 histogram); 2 x 2 points removed that.
PIXEL_SUBSAMPLES = 2
# Grid steps per px of the tabulated pixel image of each spot, interpolated bilinearly.
PIXEL_TABLE_STEPS_PER_PX = 16
# How far (px) a centre may travel from its centroid during the fit (the pixel table covers it);
# tracking.locate.refine_max_shift_px is at most this.
TRAVEL_PX = 3.0
SETTLED_STEP_PX = 1e-3         # a particle whose step falls below this is not moved again
# Particles x window pixels fitted at once. Small blocks keep the temporaries (256 KB each) in cache
# and in the allocator's heap: one block of a whole 360 px frame (500 particles, 1.8 MB temporaries)
# took 86 ms per frame, blocks of 2^15 44 ms, with the same result.
BLOCK_ELEMENTS = 1 << 15
MIN_SPOTS_PER_SPECIES = 10     # to measure a profile (spots away from the border)
# Profiles are measured on pixels at least this many window radii from the image border: an
# unreported particle lies within trackpy's mask radius (< R) of it, and its spot reaches R further.
EDGE_MARGIN_RADII = 2.0
STATUS = ("refined", "edge", "weak", "not_converged", "too_far")
AUTO_RADIUS_PER_DIAMETER = 0.75  # auto window radius, in trackpy mask diameters (resolve_radius)


class RefineError(ValueError):
    """The spots cannot be measured (too few particles, no contrast)."""


class RefineSkippedWarning(UserWarning):
    """The refinement was skipped (RefineError) and trackpy's centroids were kept."""


@dataclass(frozen=True)
class SpotModel:
    """Measured radial profiles of the species' spots, and their pixel images tabulated for fast lookup."""

    radius_px: float                   # R: window radius and the profiles' support (px)
    size_thresholds_px: np.ndarray     # trackpy size (px) between species s and s + 1
    table: np.ndarray                  # (n_species, n): T_s at r = k * TABLE_STEP_PX, max |T| = 1
    pixel_table: np.ndarray            # (n_species, M, M): pixel value at offsets -half + k / PIXEL_TABLE_STEPS_PER_PX
    half_px: float                     # half-width of pixel_table (px)
    record: dict = field(default_factory=dict)

    @property
    def n_species(self) -> int:
        return self.table.shape[0]

    def species_of(self, size: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.size_thresholds_px, np.asarray(size, float)).astype(np.int64)


def spot_model(radius_px: float, size_thresholds_px: np.ndarray, table: np.ndarray, record: dict | None = None
               ) -> SpotModel:
    """A SpotModel from radial profiles: tabulates each species' pixel image (a pixel integrates the spot,
    sampled at PIXEL_SUBSAMPLES^2 points) on a grid of centre offsets."""
    # Window pixels reach R + 0.71 px from the centroid, and the fit may move the centre away from it.
    half = radius_px + 1.0 + TRAVEL_PX
    grid = -half + np.arange(int(2 * half * PIXEL_TABLE_STEPS_PER_PX) + 1) / PIXEL_TABLE_STEPS_PER_PX
    offsets = (np.arange(PIXEL_SUBSAMPLES) + 0.5) / PIXEL_SUBSAMPLES - 0.5
    n = table.shape[1]
    pixel_table = np.zeros((table.shape[0], len(grid), len(grid)))
    for oy in offsets:
        for ox in offsets:
            r = np.hypot(grid[:, None] + oy, grid[None, :] + ox)
            u = r / TABLE_STEP_PX
            i = np.minimum(u.astype(np.int64), n - 2)
            f = np.minimum(u - i, 1.0)
            pixel_table += table[:, i] + f * (table[:, i + 1] - table[:, i])
    pixel_table /= PIXEL_SUBSAMPLES**2
    return SpotModel(float(radius_px), np.asarray(size_thresholds_px, float), table, pixel_table, half,
                     record or {})


@dataclass
class _Windows:
    """Pixels within R of each particle's centroid, padded to one width; invalid entries weigh 0."""

    flat: np.ndarray     # (N, P) int: index into the raveled image (0 where invalid)
    cx: np.ndarray       # (N,) int: pixel nearest to the centroid (column)
    cy: np.ndarray       # (N,) int: (row)
    ox: np.ndarray       # (N, P) int: pixel column - cx; OUTSIDE where invalid
    oy: np.ndarray       # (N, P) int: pixel row - cy; OUTSIDE where invalid
    weight: np.ndarray   # (N, P) float: 1 inside the circle and the image, else 0
    inside_fraction: np.ndarray  # (N,)


# Offset given to a window's invalid entries: beyond every table, whose zero border it then reads.
OUTSIDE = 1 << 20


def _windows(shape: tuple[int, int], x: np.ndarray, y: np.ndarray, radius: float, border: int = 0) -> _Windows:
    """Windows of radius R around x, y (px), leaving out pixels within ``border`` px of the image border."""
    height, width = shape
    k = int(np.ceil(radius + 0.5))
    oy, ox = np.mgrid[-k:k + 1, -k:k + 1]
    # Offsets that can fall within R of a centre anywhere in its pixel.
    keep = np.hypot(ox, oy) <= radius + np.sqrt(0.5)
    ox, oy = ox[keep], oy[keep]
    cx, cy = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
    ix = cx[:, None] + ox[None, :]
    iy = cy[:, None] + oy[None, :]
    in_circle = np.hypot(ix - x[:, None], iy - y[:, None]) <= radius
    in_image = (ix >= 0) & (ix < width) & (iy >= 0) & (iy < height)
    away = (ix >= border) & (ix < width - border) & (iy >= border) & (iy < height - border)
    valid = in_circle & away
    flat = np.where(valid, iy * width + ix, 0)
    inside = (in_circle & in_image).sum(1) / np.maximum(in_circle.sum(1), 1)
    return _Windows(flat, cx, cy, np.where(valid, ox[None, :], OUTSIDE), np.where(valid, oy[None, :], OUTSIDE),
                    valid.astype(np.float64), inside)


def _pixel_values(model: SpotModel, species: np.ndarray, win: _Windows, rows: np.ndarray, x: np.ndarray,
                  y: np.ndarray):
    """Unit spots' pixel values on the windows ``rows`` for centres x, y (px), and their gradients in x, y.

    Bilinear interpolation of the pixel table. Window pixels lie at integer
    offsets from a whole pixel and the table step divides a pixel, so the
    interpolation weights are the same for all pixels of a particle: one
    gather per corner and per-particle weights. The gradient is the
    interpolant's own (Gauss-Newton steps follow the model evaluated).
    """
    m = model.pixel_table.shape[1]
    per_px = PIXEL_TABLE_STEPS_PER_PX
    # Table coordinate of pixel (cx, cy) relative to the centre (x, y); clipped to the table's travel.
    ux = np.clip((win.cx[rows] - x + model.half_px) * per_px, 0.0, m - 1.000001)
    uy = np.clip((win.cy[rows] - y + model.half_px) * per_px, 0.0, m - 1.000001)
    bx, by = np.floor(ux), np.floor(uy)
    fx, fy = (ux - bx)[:, None], (uy - by)[:, None]
    ix = np.clip(bx.astype(np.int64)[:, None] + per_px * win.ox[rows], 0, m - 2)
    iy = np.clip(by.astype(np.int64)[:, None] + per_px * win.oy[rows], 0, m - 2)
    index = (species[:, None] * m + iy) * m + ix
    flat = model.pixel_table.ravel()
    g00 = flat[index]
    g01 = flat[index + 1]
    g10 = flat[index + m]
    g11 = flat[index + m + 1]
    low = g00 + fx * (g01 - g00)
    high = g10 + fx * (g11 - g10)
    value = low + fy * (high - low)
    # d/dx of the spot at (pixel - centre) is minus d/d(centre): the caller's Jacobian takes care of the sign.
    grad_x = ((g01 - g00) + fy * ((g11 - g10) - (g01 - g00))) * per_px
    grad_y = (high - low) * per_px
    return value, grad_x, grad_y


def fit_frame(image: np.ndarray, x: np.ndarray, y: np.ndarray, species: np.ndarray, model: SpotModel,
              sweeps: int, border_px: int = 0) -> dict:
    """Fit (x, y, amplitude, background) of every particle of one frame, neighbours modelled.

    ``x, y`` (px, column and row of ``image``) are the start (trackpy's
    centroids) and fix each particle's window; pixels within ``border_px``
    of the image border are left out (trackpy reports no particle there,
    so a spot there is not modelled: give trackpy's margin, the mask
    radius). At most ``sweeps``
    Gauss-Newton sweeps; a particle whose step fell below SETTLED_STEP_PX
    is left alone afterwards (its neighbours' later moves are far smaller
    than the step it just made), which makes the later sweeps cheap.
    Returns arrays ``x, y, amplitude, background, last_step`` (px),
    ``inside_fraction`` and ``solvable`` (position determined: the spot's
    slope carries weight in the window).
    """
    x0 = np.asarray(x, np.float64)
    y0 = np.asarray(y, np.float64)
    n = len(x0)
    empty = np.empty(0)
    if n == 0:
        return {"x": empty, "y": empty, "amplitude": empty, "background": empty, "last_step": empty,
                "inside_fraction": empty, "solvable": np.empty(0, bool)}
    image = np.asarray(image, np.float64)
    win = _windows(image.shape, x0, y0, model.radius_px, border_px)
    data = image.ravel()[win.flat] * win.weight
    x, y = x0.copy(), y0.copy()
    amplitude = np.ones(n)
    # Local background: a plane over the window, b0 + bx ox / R + by oy / R. A constant one biased
    # the fluorescence twin's smooth spots towards the bright side of its vignetting (0.07 px).
    background = np.zeros((n, 3))
    plane = np.stack([win.weight, win.weight * win.ox / model.radius_px, win.weight * win.oy / model.radius_px],
                     axis=-1)
    last_step = np.full(n, np.inf)
    solvable = np.ones(n, bool)
    # The model image always holds every particle's spot as stored in `own` (the neighbours' view of it).
    own = np.zeros(win.weight.shape)
    image_model = np.zeros(image.size)
    typical = None  # each parameter's mean diagonal of the normal matrices, from the first two sweeps
    active = np.arange(n)
    for sweep in range(sweeps + 1):
        # Particles in blocks (BLOCK_ELEMENTS); a block sees the blocks before it already moved
        # (Gauss-Seidel between blocks, Jacobi within one).
        block = max(1, BLOCK_ELEMENTS // win.weight.shape[1])
        for start in range(0, len(active), block):
            rows = active[start:start + block]
            typical = _sweep(model, species, win, data, image_model, own, plane, rows, x, y, x0, y0, amplitude,
                             background, last_step, solvable, typical, sweep)
        if sweep > 0:
            active = active[~(last_step[active] < SETTLED_STEP_PX)]
            if len(active) == 0:
                break
    background = background[:, 0]
    finite = np.isfinite(x) & np.isfinite(y) & np.isfinite(amplitude) & np.isfinite(background)
    return {"x": np.where(finite, x, x0), "y": np.where(finite, y, y0),
            "amplitude": np.where(finite, amplitude, 0.0), "background": np.where(finite, background, 0.0),
            "last_step": np.where(finite, last_step, np.inf), "inside_fraction": win.inside_fraction,
            "solvable": solvable & finite}


def _sweep(model, species, win, data, image_model, own, plane, rows, x, y, x0, y0, amplitude, background,
           last_step, solvable, typical, sweep):
    """One Gauss-Newton step of the particles ``rows`` (sweep 0: amplitude and plane only), in place."""
    t, grad_x, grad_y = _pixel_values(model, species[rows], win, rows, x[rows], y[rows])
    new_own = amplitude[rows, None] * t
    flat = win.flat[rows]
    image_model += np.bincount(flat.ravel(), weights=(new_own - own[rows]).ravel(), minlength=image_model.size)
    own[rows] = new_own
    basis = plane[rows]
    # Data minus the neighbours' spots: what this particle and the background must explain.
    target = data[rows] - (image_model[flat] - new_own) * basis[..., 0]
    if sweep == 0:
        # Amplitude and background are linear: solve them at the centroid first.
        jac = np.concatenate([t[..., None], basis], axis=-1)
        residual = target
    else:
        gain = -amplitude[rows, None]
        jac = np.concatenate([(gain * grad_x)[..., None], (gain * grad_y)[..., None], t[..., None], basis], axis=-1)
        residual = target - new_own - np.einsum("npk,nk->np", basis, background[rows])
    jac_t = jac.transpose(0, 2, 1)
    normal = np.matmul(jac_t, jac)
    rhs = np.matmul(jac_t, residual[..., None])[..., 0]
    diagonal = np.diagonal(normal, axis1=1, axis2=2)
    if typical is None or len(typical) != diagonal.shape[1]:
        # Each parameter's own scale (px, amplitude, background differ by orders of magnitude).
        typical = np.maximum(diagonal.mean(axis=0), np.finfo(np.float64).tiny)
    normal = normal + np.eye(normal.shape[-1]) * (DAMPING * diagonal + 1e-9 * typical)[:, None, :]
    step = np.linalg.solve(normal, rhs[..., None])[..., 0]
    if sweep == 0:
        amplitude[rows] = step[:, 0]
        background[rows] = step[:, 1:]
        return None  # the position's scale is set in the first Gauss-Newton sweep
    step_x = np.clip(step[:, 0], -MAX_STEP_PX, MAX_STEP_PX)
    step_y = np.clip(step[:, 1], -MAX_STEP_PX, MAX_STEP_PX)
    # The pixel table covers TRAVEL_PX around the centroid; farther is rejected anyway (max_shift_px).
    x[rows] = np.clip(x[rows] + step_x, x0[rows] - TRAVEL_PX, x0[rows] + TRAVEL_PX)
    y[rows] = np.clip(y[rows] + step_y, y0[rows] - TRAVEL_PX, y0[rows] + TRAVEL_PX)
    amplitude[rows] += step[:, 2]
    background[rows] += step[:, 3:]
    last_step[rows] = np.hypot(step_x, step_y)
    solvable[rows] = (diagonal[:, 0] > 1e-6 * typical[0]) & (diagonal[:, 1] > 1e-6 * typical[1])
    return typical


def status_of(fit: dict, x0: np.ndarray, y0: np.ndarray, species: np.ndarray, n_species: int,
              max_shift_px: float) -> np.ndarray:
    """Index into STATUS for each particle (0: refined; else why the centroid is kept)."""
    amplitude = fit["amplitude"]
    typical = np.zeros(n_species)
    for s in range(n_species):
        values = amplitude[(species == s) & fit["solvable"]]
        typical[s] = np.median(values) if len(values) else 0.0
    reference = typical[species] if len(species) else np.empty(0)
    # The sign of the profile is the species' typical sign: a weak spot is small *in that direction*.
    weak = ~fit["solvable"] | ~(amplitude * np.sign(reference) > MIN_AMPLITUDE_FRACTION * np.abs(reference))
    status = np.zeros(len(x0), np.int64)
    shift = np.hypot(fit["x"] - x0, fit["y"] - y0)
    status[shift > max_shift_px] = STATUS.index("too_far")
    status[fit["last_step"] > CONVERGED_STEP_PX] = STATUS.index("not_converged")
    status[weak] = STATUS.index("weak")
    status[fit["inside_fraction"] < MIN_INSIDE_FRACTION] = STATUS.index("edge")
    return status


def _basis(radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Cubic B-spline knots on [0, R] and the map from free coefficients to spline coefficients.

    Flat at r = 0 (first two coefficients tied: a smooth radial spot has no
    cusp) and zero with zero slope at R (last two coefficients 0), so the
    spot ends smoothly at the window's edge.
    """
    n_intervals = max(2, int(np.ceil(radius / KNOT_SPACING_PX)))
    inner = np.linspace(0.0, radius, n_intervals + 1)
    knots = np.r_[[0.0] * 3, inner, [radius] * 3]
    n_coef = len(knots) - 4
    n_free = n_coef - 3
    tie = np.zeros((n_coef, n_free))
    tie[0, 0] = tie[1, 0] = 1.0
    tie[2:n_coef - 2, 1:] = np.eye(n_free - 1)
    return knots, tie


def _polynomial(pixels: np.ndarray, shape: tuple[int, int]) -> list[np.ndarray]:
    """Monomials x^i y^j (i + j <= BACKGROUND_DEGREE) at raveled pixel indices, x and y scaled to [-1, 1]."""
    row, col = np.divmod(pixels, shape[1])
    x = 2.0 * col / max(shape[1] - 1, 1) - 1.0
    y = 2.0 * row / max(shape[0] - 1, 1) - 1.0
    return [x**i * y**(total - i) for total in range(BACKGROUND_DEGREE + 1) for i in range(total + 1)]


def measure_profiles(images, positions, species, n_species: int, radius: float, amplitudes=None) -> np.ndarray:
    """Least-squares radial profiles (n_species, n_table) from the pixels within R of any particle.

    ``positions[k]`` (N, 2: x, y in px), ``species[k]`` (N,) per image;
    ``amplitudes[k]`` weigh each spot (None: 1, the first round). The
    background of each image is fitted with the profiles, as a smooth field
    (a polynomial of degree BACKGROUND_DEGREE in x and y): a per-window
    constant would trade off against the profile's tail wherever windows
    overlap (every pixel of a dense packing), and the tail would come out
    arbitrary.
    """
    knots, tie = _basis(radius)
    n_coef, n_free = tie.shape
    n_spline = n_species * n_coef
    n_terms = (BACKGROUND_DEGREE + 1) * (BACKGROUND_DEGREE + 2) // 2
    n_unknowns = n_spline + len(images) * n_terms
    normal = np.zeros((n_unknowns, n_unknowns))
    rhs = np.zeros(n_unknowns)
    counts = np.zeros(n_species)
    for k, image in enumerate(images):
        image = np.asarray(image, np.float64)
        xy = np.asarray(positions[k], np.float64).reshape(-1, 2)
        sp = np.asarray(species[k], np.int64)
        if len(xy) == 0:
            continue
        win = _windows(image.shape, xy[:, 0], xy[:, 1], radius)
        # Pixels near the border may hold spots trackpy does not report (its mask must fit in the
        # image, and particles outside the view shine in): unmodelled light there distorted the
        # profiles (a negative tail on the fluorescence twin). Only pixels farther than
        # EDGE_MARGIN_RADII * R from the border are fitted.
        row_of, col_of = np.divmod(win.flat, image.shape[1])
        margin = EDGE_MARGIN_RADII * radius
        valid = (win.weight > 0) & (row_of >= margin) & (row_of <= image.shape[0] - 1 - margin) \
            & (col_of >= margin) & (col_of <= image.shape[1] - 1 - margin)
        particle = np.broadcast_to(np.arange(len(xy))[:, None], valid.shape)[valid]
        pixels, row = np.unique(win.flat[valid], return_inverse=True)
        offsets = (np.arange(PIXEL_SUBSAMPLES) + 0.5) / PIXEL_SUBSAMPLES - 0.5
        px = (win.cx[:, None] + win.ox)[valid] - xy[particle, 0]
        py = (win.cy[:, None] + win.oy)[valid] - xy[particle, 1]
        sub = [np.hypot(px + ox, py + oy) for oy in offsets for ox in offsets]
        # d is clipped to [0, R]: design_matrix's bounds check (Python's min and max over the array) is not needed.
        design = sum(BSpline.design_matrix(np.clip(d, 0.0, radius), knots, 3, extrapolate=True) for d in sub).tocoo()
        design.data /= len(sub)
        weight = np.ones(len(xy)) if amplitudes is None else np.asarray(amplitudes[k], np.float64)
        who = particle[design.row]
        # Spline part (sparse: each pixel sees the few spots reaching it) and background part (dense,
        # few columns), kept apart so the normal matrix costs O(pixels).
        spline = sps.csr_matrix((design.data * weight[who], (row[design.row], design.col + sp[who] * n_coef)),
                                shape=(len(pixels), n_spline))
        poly = np.stack(_polynomial(pixels, image.shape), axis=1)
        target = image.ravel()[pixels]
        block = slice(n_spline + k * n_terms, n_spline + (k + 1) * n_terms)
        normal[:n_spline, :n_spline] += (spline.T @ spline).toarray()
        cross = spline.T @ poly
        normal[:n_spline, block] += cross
        normal[block, :n_spline] += cross.T
        normal[block, block] += poly.T @ poly
        rhs[:n_spline] += spline.T @ target
        rhs[block] += poly.T @ target
        counts += np.bincount(sp[np.unique(particle)], minlength=n_species)
    if counts.min() < MIN_SPOTS_PER_SPECIES:
        raise RefineError(f"too few spots to measure the profile of every species ({counts.astype(int).tolist()} "
                          f"spots per species, at least {MIN_SPOTS_PER_SPECIES} needed)")
    # Free coefficients: the tied spline basis per species, then the backgrounds.
    n_extra = n_unknowns - n_spline
    reduce = sps.block_diag([tie] * n_species + [sps.identity(n_extra)], format="csr")
    normal = np.asarray(reduce.T @ (reduce.T @ normal).T)
    rhs = reduce.T @ rhs
    n_profile = n_species * n_free
    second = np.diff(np.eye(n_free), 2, axis=0)
    penalty = np.zeros_like(normal)
    penalty[:n_profile, :n_profile] = sps.block_diag([second.T @ second] * n_species).toarray()
    scale = float(np.mean(np.diagonal(normal)[:n_profile]))
    # A frame without features leaves its background undetermined (and unused): pin it.
    unused = np.diagonal(normal) == 0
    normal[unused, unused] = 1.0
    solution = np.linalg.solve(normal + PROFILE_SMOOTHING * scale * penalty, rhs)
    coefficients = solution[:n_profile].reshape(n_species, n_free) @ tie.T
    r = np.arange(int(np.ceil(radius / TABLE_STEP_PX)) + 2) * TABLE_STEP_PX
    table = np.array([BSpline(knots, c, 3)(np.minimum(r, radius)) for c in coefficients])
    table[:, r >= radius] = 0.0
    peak = np.abs(table).max(axis=1, keepdims=True)
    if not np.all(peak > 0):
        raise RefineError("the measured spot profile is flat: the image holds no contrast at the features")
    return table / peak


def measure_spot_model(images, features: pd.DataFrame, radius_px: float, species_params: SpeciesParams,
                       sweeps: int) -> SpotModel:
    """Measure the species' spot profiles on a few frames (alternating with fits of the positions).

    ``images`` (prepared, particles bright), ``features`` with columns
    ``frame`` (0 .. len(images) - 1, the image index), ``x, y`` (px of
    the images) and ``size`` (trackpy's, px).
    """
    features = features.reset_index(drop=True)
    shape = np.asarray(images[0]).shape
    labels, species_record = classify_species(
        features.assign(particle=np.arange(len(features)), x_px=features["x"], y_px=features["y"]),
        species_params, region_px=(0, 0, shape[1], shape[0]), margin_px=radius_px)
    n_species = species_record["n_species"]
    thresholds = np.asarray(species_record.get("thresholds_px", []), float)
    species = labels.to_numpy()
    frames = features["frame"].to_numpy()
    per_image = [np.flatnonzero(frames == k) for k in range(len(images))]
    positions = [features.loc[idx, ["x", "y"]].to_numpy(np.float64) for idx in per_image]
    species_per_image = [species[idx] for idx in per_image]
    table = measure_profiles(images, positions, species_per_image, n_species, radius_px)
    model = spot_model(radius_px, thresholds, table)
    for _ in range(CALIBRATION_ROUNDS):
        fits = [fit_frame(images[k], p[:, 0], p[:, 1], s, model, sweeps)
                for k, (p, s) in enumerate(zip(positions, species_per_image, strict=True))]
        refined = [np.c_[f["x"], f["y"]] for f in fits]
        table = measure_profiles(images, refined, species_per_image, n_species, radius_px,
                                 [f["amplitude"] for f in fits])
        model = spot_model(radius_px, thresholds, table)
    record = {"n_species": int(n_species), "size_thresholds_px": thresholds.tolist(),
              "spots_per_species": np.bincount(species, minlength=n_species).tolist(),
              "frames": len(images), "species_chosen_by": species_record.get("chosen_by")}
    return spot_model(radius_px, thresholds, table, record)


def refine_frame(image: np.ndarray, features: pd.DataFrame, model: SpotModel, sweeps: int,
                 max_shift_px: float, border_px: int = 0) -> pd.DataFrame:
    """Columns ``x, y`` (refined, or the centroid where not), ``status`` (index into STATUS) of one frame.

    ``features`` holds ``x, y`` (trackpy's centroids, px of ``image``) and ``size``.
    """
    x0 = features["x"].to_numpy(np.float64)
    y0 = features["y"].to_numpy(np.float64)
    species = model.species_of(features["size"].to_numpy())
    fit = fit_frame(image, x0, y0, species, model, sweeps, border_px)
    status = status_of(fit, x0, y0, species, model.n_species, max_shift_px)
    keep = status == 0
    return pd.DataFrame({"x": np.where(keep, fit["x"], x0), "y": np.where(keep, fit["y"], y0), "status": status},
                        index=features.index)


def resolve_radius(radius_px, diameter: int) -> float:
    """The window radius (px): given, or 0.75 of trackpy's mask diameter (``auto``).

    The automatic mask diameter holds a particle's image plus a pixel
    (tracking.locate.estimate_diameter), so 1.5 mask radii also hold the
    bright-field rim outside the dark disk and the blur of its edge.
    """
    return float(radius_px) if radius_px != "auto" else AUTO_RADIUS_PER_DIAMETER * float(diameter)


def refine_features(read_image, frame_numbers, features: pd.DataFrame, *, radius_px: float, sweeps: int,
                    profile_frames: int, max_shift_px: float, species_params: SpeciesParams,
                    origin_px: tuple[float, float] = (0.0, 0.0), border_px: int = 0) -> tuple[pd.DataFrame, dict]:
    """Refine the ``x, y`` (px) of trackpy's features of every frame; keep the centroids beside them.

    ``read_image(index)`` gives the index-th selected frame (prepared:
    particles bright) whose video frame number is ``frame_numbers[index]``;
    ``features`` hold ``frame``, ``x, y`` (px of the full frame: the image's
    ``origin_px`` added) and ``size``; ``border_px``: see fit_frame (trackpy's
    mask radius). Returns the features with ``x, y``
    refined where the fit succeeded, ``x_centroid, y_centroid`` (trackpy's)
    and ``refined`` (bool), and a record for qc.json. Raises RefineError
    when the first ``profile_frames`` frames hold too few spots.
    """
    features = features.copy()
    features["x_centroid"] = features["x"]
    features["y_centroid"] = features["y"]
    features["refined"] = False
    x_origin, y_origin = origin_px
    frame_numbers = np.asarray(frame_numbers)
    by_frame = {int(f): idx for f, idx in features.groupby("frame").indices.items()}
    n_cal = min(int(profile_frames), len(frame_numbers))
    calibration_images = [np.asarray(read_image(i), np.float64) for i in range(n_cal)]
    pieces = []
    for i in range(n_cal):
        idx = by_frame.get(int(frame_numbers[i]), np.empty(0, np.int64))
        piece = features.iloc[idx][["x", "y", "size"]].assign(frame=i)
        pieces.append(piece.assign(x=piece["x"] - x_origin, y=piece["y"] - y_origin))
    model = measure_spot_model(calibration_images, pd.concat(pieces, ignore_index=True), radius_px, species_params,
                               sweeps)
    status = np.zeros(len(features), np.int64)
    columns = [features.columns.get_loc(c) for c in ("x", "y")]
    for i, frame in enumerate(frame_numbers):
        idx = by_frame.get(int(frame))
        if idx is None or len(idx) == 0:
            continue
        image = calibration_images[i] if i < n_cal else np.asarray(read_image(i), np.float64)
        local = features.iloc[idx][["x", "y", "size"]]
        local = local.assign(x=local["x"] - x_origin, y=local["y"] - y_origin)
        result = refine_frame(image, local, model, sweeps, max_shift_px, border_px)
        features.iloc[idx, columns[0]] = result["x"].to_numpy() + x_origin
        features.iloc[idx, columns[1]] = result["y"].to_numpy() + y_origin
        status[idx] = result["status"].to_numpy()
    features["refined"] = status == 0
    shift = np.hypot(features["x"] - features["x_centroid"], features["y"] - features["y_centroid"]).to_numpy()
    counts = np.bincount(status, minlength=len(STATUS))
    record = {"method": "psf_fit", "radius_px": round(float(radius_px), 3), "sweeps": int(sweeps),
              "border_px": int(border_px),
              "max_shift_px": float(max_shift_px), "profile": model.record,
              "features": len(features), "refined": int(counts[0]),
              "fraction_refined": float(counts[0] / len(features)) if len(features) else None,
              "kept_centroid": {name: int(counts[k]) for k, name in enumerate(STATUS) if k > 0},
              "shift_px": ({"median": float(np.median(shift[status == 0])),
                            "p95": float(np.percentile(shift[status == 0], 95))} if counts[0] else None)}
    return features, record
