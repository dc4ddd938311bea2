"""Tracking parameters, with their units and defaults.

These dataclasses are the single home of the defaults: the workflow's schema
(``tracking/config_schema.yaml``) checks the types and ranges of the same keys
but sets no defaults, so a value is never defined in two places.
``from_config`` rejects unknown keys by name, so a typo in ``config.yaml``
cannot be silently ignored.

Units: lengths the user writes in a config are in micrometres (``*_um``) where
they describe the sample (how far a particle may move), and in pixels
(``*_px`` or trackpy's own names) where they describe the image (how large a
spot looks). Times are in frames where they count frames.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

AUTO = "auto"
PREDICTORS = ("none", "nearest_velocity", "affine")
SMOOTHING = ("none", "savgol")
CHANNELS = ("luma", "mean", 0, 1, 2)
FLATTEN = ("none", "gaussian", "rolling_ball")
DRIFT_METHODS = ("none", "median", "mean", "registration")
DRIFT_FROM = ("all", "filtered")
FILTER_PER = ("trajectory", "observation")
REFINE_METHODS = ("none", "psf_fit")
# Keys that were replaced: an old config fails with the new key named, never silently.
RENAMED = {
    "tracking.link.subtract_drift": (
        "tracking.link.subtract_drift was replaced by tracking.link.drift: write `drift: median` for what "
        "`subtract_drift: true` did, `drift: mean` for trackpy's compute_drift, or `drift: none` (the default) "
        "for `subtract_drift: false`"),
}


class ParameterError(ValueError):
    """A tracking parameter is unknown or out of range; the message names the key."""


@dataclass(frozen=True)
class LocateParams:
    """Feature finding (trackpy.locate); image lengths in pixels."""

    diameter: int | str = AUTO        # px, odd: trackpy's mask diameter; "auto" estimates it (docs/tracking.md)
    minmass: float | str = AUTO       # trackpy mass units (integrated band-passed brightness); "auto" estimates it
    # px, smallest distance between two features; None: trackpy's diameter + 1;
    # "auto": trackpy's default, or less where the spots are denser
    separation: float | str | None = AUTO
    # True for dark particles on a bright background (bright field); "auto": detected from the
    # first frames (the stronger of the bright and dark Laplacian-of-Gaussian blobs, docs/tracking.md)
    invert: bool | str = AUTO
    # How colour frames become grey: "luma" (Rec. 709, as pims.as_grey), "mean" of R, G, B,
    # or the channel 0, 1 or 2 alone (trackpy's walkthrough tracks the green channel, 1)
    channel: int | str = "luma"
    percentile: float = 64.0          # %, a peak must be brighter than this percentile of the band-passed image
    noise_size: float = 1.0           # px, width of the Gaussian noise filter of trackpy's band pass
    smoothing_size: float | None = None  # px, background box size of the band pass; None: the diameter
    max_mass: float | None = None     # drop features brighter than this (same units as minmass)
    min_size: float | None = None     # px, drop features with a smaller radius of gyration
    max_size: float | None = None     # px, drop features with a larger radius of gyration
    min_ecc: float | None = None      # drop features less eccentric than this (0 = round)
    max_ecc: float | None = None      # drop features more eccentric than this (1 = a line)
    auto_frames: int = 3              # frames, counted from the first selected one, the auto estimates look at
    # Divide each frame by a large-scale background before locating (uneven illumination, vignetting):
    # "none", "gaussian" (blur) or "rolling_ball" (envelope on the background side; needs scikit-image)
    flatten: str = "none"
    flatten_size: float | None = None  # px, Gaussian sigma or ball radius; None: one particle diameter
    # Sub-pixel refinement after trackpy's centroid (tracking/refine.py): "none", or "psf_fit" (each
    # particle's measured spot fitted with its touching neighbours' spots subtracted)
    refine: str = "psf_fit"
    # px, radius of each particle's fitted window and of the measured spot profile; "auto": 0.75 of the
    # mask diameter
    refine_radius_px: float | str = AUTO
    refine_sweeps: int = 8            # most Gauss-Newton sweeps over a frame (settled particles drop out)
    refine_profile_frames: int = 3    # frames, from the first selected one, on which the spot profiles are measured
    refine_max_shift_px: float = 2.0  # px, a refined position farther from trackpy's centroid is rejected


@dataclass(frozen=True)
class LinkParams:
    """Linking features into trajectories (trackpy.link); sample lengths in µm."""

    # µm, farthest a particle may move between frames beyond the predicted
    # position; "auto": half the median nearest-neighbour distance of features
    search_range_um: float | str = AUTO
    # px, the same in image pixels (trackpy's own unit), instead of search_range_um; None: not used
    search_range_px: float | None = None
    memory: int = 0                    # frames a particle may vanish and still keep its id
    # µm, smallest search range adaptive search may shrink to; None: adaptive search off
    adaptive_stop_um: float | None = None
    adaptive_step: float = 0.95        # factor by which adaptive search shrinks the search range per retry
    predictor: str = "none"            # "none", "nearest_velocity" (trackpy) or "affine" (shear-aware)
    min_length: int = 3                # observations: shorter trajectories (stubs) are dropped
    # Rigid drift removed per frame: "none", "median" displacement between consecutive frames,
    # "mean" (trackpy.compute_drift, as trackpy's walkthrough), or "registration" (phase
    # cross-correlation of successive frames, removed before linking; needs scikit-image)
    drift: str = "none"
    drift_smoothing: int = 0           # frames, trackpy's trailing rolling mean of the mean drift steps; 0: none
    drift_from: str = "filtered"       # trajectories the drift is measured on: "all" or "filtered" (trajectory_filter)


@dataclass(frozen=True)
class TrajectoryFilterParams:
    """Filters after linking and the stub filter (trackpy walkthrough's mass/size/ecc cut).

    Limits are strict (kept: min < value < max), as the walkthrough's ``>`` and
    ``<``; None is no limit.
    """

    per: str = "trajectory"            # "trajectory": judge the trajectory's mean; "observation": each row
    min_mass: float | None = None      # mass units (as locate.minmass)
    max_mass: float | None = None
    min_size: float | None = None      # px, radius of gyration
    max_size: float | None = None
    min_ecc: float | None = None       # eccentricity, 0 round
    max_ecc: float | None = None


@dataclass(frozen=True)
class ChecksParams:
    """Plausibility checks that stop a run instead of returning junk (docs/tracking.md)."""

    # stop when an explicit locate.invert contradicts the contrast detected in the first frames
    polarity: bool = True
    # stop when the median features per frame exceed this times the close-packed count of disks of
    # the mask diameter in the analysed area; None: off
    max_packing_ratio: float | None = 1.5
    # stop when more than this fraction of the linked features lie in trajectories shorter than
    # min(10, half the analysed frames); None: off
    max_short_fraction: float | None = 0.5


@dataclass(frozen=True)
class VelocityParams:
    """Velocities by finite differences inside each trajectory, never across a gap."""

    smoothing: str = "none"  # "none" (central differences) or "savgol" (Savitzky-Golay derivative)
    window: int = 5          # frames, odd: Savitzky-Golay window length
    polyorder: int = 2       # Savitzky-Golay polynomial order, < window


@dataclass(frozen=True)
class SpeciesParams:
    """Species labels from the per-trajectory median of trackpy's size (tracking.species)."""

    n_species: int | str = AUTO  # number of species; "auto": chosen from the sizes (1 for a monodisperse sample)
    max_species: int = 3         # "auto" considers 1 .. max_species
    separation: float = 4.0      # "auto" keeps k species over k-1 when the within-class size variance drops this many times
    min_fraction: float = 0.05   # "auto" keeps k species only when each holds at least this fraction of the trajectories


@dataclass(frozen=True)
class FrameRange:
    """Frames to track, as a Python slice of the video's frames (stop exclusive)."""

    start: int = 0
    stop: int | None = None  # None: to the end of the video
    step: int = 1


@dataclass(frozen=True)
class RegionOfInterest:
    """Rectangle of the image to track, in pixels of the full frame."""

    x0: int  # px, first column
    y0: int  # px, first row
    width: int   # px
    height: int  # px


@dataclass(frozen=True)
class TrackingParams:
    """The ``tracking:`` section of an experiment."""

    locate: LocateParams = field(default_factory=LocateParams)
    link: LinkParams = field(default_factory=LinkParams)
    velocity: VelocityParams = field(default_factory=VelocityParams)
    species: SpeciesParams = field(default_factory=SpeciesParams)
    trajectory_filter: TrajectoryFilterParams = field(default_factory=TrajectoryFilterParams)
    checks: ChecksParams = field(default_factory=ChecksParams)
    frame_range: FrameRange | None = None       # None: every frame
    roi: RegionOfInterest | None = None         # None: the full frame
    # frames per chunk of split, bounded-memory tracking (tracking.stream: one Snakemake job per chunk
    # locates, one gather links); None: the whole video in one job, in memory (tracking.pipeline)
    chunk_frames: int | None = None
    # frames of the previous chunk each chunk's link job links first (warm-up), so that its linker reaches the
    # unsplit run's state at the chunk's first frame (tracking.stream.link_chunk); None: max(link.memory + 2, 5)
    link_overlap_frames: int | None = None


_NESTED = {
    "locate": LocateParams,
    "link": LinkParams,
    "velocity": VelocityParams,
    "species": SpeciesParams,
    "trajectory_filter": TrajectoryFilterParams,
    "checks": ChecksParams,
    "frame_range": FrameRange,
    "roi": RegionOfInterest,
}

_SCALARS = ("chunk_frames", "link_overlap_frames")


def _build(cls, values: Mapping[str, Any] | None, where: str):
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ParameterError(f"{where} must be a mapping, got {type(values).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    for key in unknown:
        if f"{where}.{key}" in RENAMED:
            raise ParameterError(RENAMED[f"{where}.{key}"])
    if unknown:
        raise ParameterError(
            f"unknown key {where}.{unknown[0]}; allowed keys: {', '.join(sorted(names))}"
        )
    try:
        return cls(**values)
    except TypeError as error:  # a required key (of the ROI) is missing
        missing = sorted(names - set(values))
        raise ParameterError(f"{where} needs the keys {', '.join(missing)}") from error


def from_config(section: Mapping[str, Any] | None) -> TrackingParams:
    """Build ``TrackingParams`` from the ``tracking:`` section of an experiment.

    Missing keys take the defaults; unknown keys and out-of-range values raise
    ``ParameterError`` naming the dotted key, e.g. ``tracking.link.memory``.
    """
    section = {} if section is None else section
    if not isinstance(section, Mapping):
        raise ParameterError(f"tracking must be a mapping, got {type(section).__name__}")
    unknown = sorted(set(section) - set(_NESTED) - set(_SCALARS))
    if unknown:
        raise ParameterError(
            f"unknown key tracking.{unknown[0]}; allowed keys: {', '.join(sorted([*_NESTED, *_SCALARS]))}"
        )
    kwargs = {}
    for name, cls in _NESTED.items():
        if name in section and section[name] is not None:
            kwargs[name] = _build(cls, section[name], f"tracking.{name}")
        elif name not in ("frame_range", "roi"):
            kwargs[name] = cls()
    link = section.get("link")
    if isinstance(link, Mapping) and "search_range_um" in link and "search_range_px" in link:
        # Caught here too: `search_range_um: auto` beside search_range_px looks like the default afterwards.
        raise ParameterError(_BOTH_SEARCH_RANGES)
    for name in _SCALARS:
        if name in section:
            kwargs[name] = section[name]
    params = TrackingParams(**kwargs)
    check(params)
    return params


def to_dict(params: TrackingParams) -> dict:
    """Plain-dict form of the parameters (for qc.json and for Snakemake params)."""
    return dataclasses.asdict(params)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require(condition: bool, key: str, expected: str, value) -> None:
    if not condition:
        raise ParameterError(f"tracking.{key} must be {expected}, got {value!r}")


_BOTH_SEARCH_RANGES = ("tracking.link.search_range_um and tracking.link.search_range_px are both set; "
                       "keep one of them (µm of the sample, or px of the image)")


def check(params: TrackingParams) -> None:
    """Check types and ranges; raise ParameterError naming the first bad key."""
    loc = params.locate
    _require(loc.diameter == AUTO or (_is_int(loc.diameter) and loc.diameter >= 3 and loc.diameter % 2 == 1),
             "locate.diameter", "'auto' or an odd integer >= 3 (px)", loc.diameter)
    _require(loc.minmass == AUTO or (_is_number(loc.minmass) and loc.minmass >= 0),
             "locate.minmass", "'auto' or a number >= 0", loc.minmass)
    _require(loc.separation is None or loc.separation == AUTO or (_is_number(loc.separation) and loc.separation > 0),
             "locate.separation", "'auto', null or a number > 0 (px)", loc.separation)
    _require(isinstance(loc.invert, bool) or loc.invert == AUTO, "locate.invert", "'auto', true or false",
             loc.invert)
    _require(any(loc.channel == c and type(loc.channel) is type(c) for c in CHANNELS), "locate.channel",
             "'luma', 'mean' or a channel index 0, 1 or 2", loc.channel)
    _require(_is_number(loc.percentile) and 0 <= loc.percentile <= 100,
             "locate.percentile", "a number in [0, 100]", loc.percentile)
    _require(_is_number(loc.noise_size) and loc.noise_size > 0,
             "locate.noise_size", "a number > 0 (px)", loc.noise_size)
    _require(loc.smoothing_size is None or (_is_number(loc.smoothing_size) and loc.smoothing_size > 0),
             "locate.smoothing_size", "null or a number > 0 (px)", loc.smoothing_size)
    for key in ("max_mass", "min_size", "max_size"):
        value = getattr(loc, key)
        _require(value is None or (_is_number(value) and value >= 0), f"locate.{key}", "null or a number >= 0", value)
    for key in ("min_ecc", "max_ecc"):
        value = getattr(loc, key)
        _require(value is None or (_is_number(value) and 0 <= value <= 1), f"locate.{key}",
                 "null or a number in [0, 1]", value)
    _require(_is_int(loc.auto_frames) and loc.auto_frames >= 1, "locate.auto_frames", "an integer >= 1",
             loc.auto_frames)
    _require(loc.flatten in FLATTEN, "locate.flatten", f"one of {', '.join(FLATTEN)}", loc.flatten)
    _require(loc.flatten_size is None or (_is_number(loc.flatten_size) and loc.flatten_size >= 1),
             "locate.flatten_size", "null or a number >= 1 (px)", loc.flatten_size)
    _require(isinstance(loc.refine, str) and loc.refine in REFINE_METHODS, "locate.refine",
             f"one of {', '.join(REFINE_METHODS)}", loc.refine)
    _require(loc.refine_radius_px == AUTO or (_is_number(loc.refine_radius_px) and loc.refine_radius_px >= 2),
             "locate.refine_radius_px", "'auto' or a number >= 2 (px)", loc.refine_radius_px)
    _require(_is_int(loc.refine_sweeps) and loc.refine_sweeps >= 1, "locate.refine_sweeps", "an integer >= 1",
             loc.refine_sweeps)
    _require(_is_int(loc.refine_profile_frames) and loc.refine_profile_frames >= 1, "locate.refine_profile_frames",
             "an integer >= 1 (frames)", loc.refine_profile_frames)
    _require(_is_number(loc.refine_max_shift_px) and 0 < loc.refine_max_shift_px <= 3, "locate.refine_max_shift_px",
             "a number in (0, 3] (px; a fit farther from trackpy's centroid has found another object)",
             loc.refine_max_shift_px)

    link = params.link
    _require(link.search_range_um == AUTO or (_is_number(link.search_range_um) and link.search_range_um > 0),
             "link.search_range_um", "'auto' or a number > 0 (µm)", link.search_range_um)
    _require(_is_int(link.memory) and link.memory >= 0, "link.memory", "an integer >= 0 (frames)", link.memory)
    _require(link.adaptive_stop_um is None or (_is_number(link.adaptive_stop_um) and link.adaptive_stop_um > 0),
             "link.adaptive_stop_um", "null or a number > 0 (µm)", link.adaptive_stop_um)
    _require(_is_number(link.adaptive_step) and 0 < link.adaptive_step < 1,
             "link.adaptive_step", "a number in (0, 1)", link.adaptive_step)
    _require(link.search_range_px is None or (_is_number(link.search_range_px) and link.search_range_px > 0),
             "link.search_range_px", "null or a number > 0 (px)", link.search_range_px)
    if link.search_range_px is not None and link.search_range_um != AUTO:
        raise ParameterError(_BOTH_SEARCH_RANGES)
    _require(link.predictor in PREDICTORS, "link.predictor", f"one of {', '.join(PREDICTORS)}", link.predictor)
    _require(_is_int(link.min_length) and link.min_length >= 1, "link.min_length", "an integer >= 1", link.min_length)
    _require(link.drift in DRIFT_METHODS, "link.drift", f"one of {', '.join(DRIFT_METHODS)}", link.drift)
    _require(_is_int(link.drift_smoothing) and link.drift_smoothing >= 0, "link.drift_smoothing",
             "an integer >= 0 (frames)", link.drift_smoothing)
    if link.drift_smoothing > 0 and link.drift != "mean":
        raise ParameterError(f"tracking.link.drift_smoothing = {link.drift_smoothing} smooths trackpy's mean drift "
                             f"only, but tracking.link.drift is {link.drift!r}; set drift: mean or remove "
                             f"drift_smoothing")
    _require(link.drift_from in DRIFT_FROM, "link.drift_from", f"one of {', '.join(DRIFT_FROM)}", link.drift_from)

    flt = params.trajectory_filter
    _require(flt.per in FILTER_PER, "trajectory_filter.per", f"one of {', '.join(FILTER_PER)}", flt.per)
    for key in ("min_mass", "max_mass", "min_size", "max_size"):
        value = getattr(flt, key)
        _require(value is None or (_is_number(value) and value >= 0), f"trajectory_filter.{key}",
                 "null or a number >= 0", value)
    for key in ("min_ecc", "max_ecc"):
        value = getattr(flt, key)
        _require(value is None or (_is_number(value) and 0 <= value <= 1), f"trajectory_filter.{key}",
                 "null or a number in [0, 1]", value)
    for low, high in (("min_mass", "max_mass"), ("min_size", "max_size"), ("min_ecc", "max_ecc")):
        lo, hi = getattr(flt, low), getattr(flt, high)
        if lo is not None and hi is not None and lo >= hi:
            raise ParameterError(f"tracking.trajectory_filter.{low} = {lo} is not below {high} = {hi}: nothing "
                                 f"would be kept; lower {low} or raise {high}")

    chk = params.checks
    _require(isinstance(chk.polarity, bool), "checks.polarity", "true or false", chk.polarity)
    _require(chk.max_packing_ratio is None or (_is_number(chk.max_packing_ratio) and chk.max_packing_ratio > 0),
             "checks.max_packing_ratio", "null or a number > 0", chk.max_packing_ratio)
    _require(chk.max_short_fraction is None
             or (_is_number(chk.max_short_fraction) and 0 < chk.max_short_fraction <= 1),
             "checks.max_short_fraction", "null or a number in (0, 1]", chk.max_short_fraction)

    vel = params.velocity
    _require(vel.smoothing in SMOOTHING, "velocity.smoothing", f"one of {', '.join(SMOOTHING)}", vel.smoothing)
    _require(_is_int(vel.window) and vel.window >= 3 and vel.window % 2 == 1,
             "velocity.window", "an odd integer >= 3 (frames)", vel.window)
    _require(_is_int(vel.polyorder) and 1 <= vel.polyorder < vel.window,
             "velocity.polyorder", "an integer >= 1 and < velocity.window", vel.polyorder)

    sp = params.species
    _require(sp.n_species == AUTO or (_is_int(sp.n_species) and sp.n_species >= 1), "species.n_species",
             "'auto' or an integer >= 1", sp.n_species)
    _require(_is_int(sp.max_species) and sp.max_species >= 1, "species.max_species", "an integer >= 1", sp.max_species)
    _require(_is_number(sp.separation) and sp.separation > 1, "species.separation", "a number > 1", sp.separation)
    _require(_is_number(sp.min_fraction) and 0 <= sp.min_fraction < 1, "species.min_fraction",
             "a number in [0, 1)", sp.min_fraction)

    fr = params.frame_range
    if fr is not None:
        _require(_is_int(fr.start) and fr.start >= 0, "frame_range.start", "an integer >= 0", fr.start)
        _require(fr.stop is None or (_is_int(fr.stop) and fr.stop > fr.start),
                 "frame_range.stop", "null or an integer > frame_range.start", fr.stop)
        _require(_is_int(fr.step) and fr.step >= 1, "frame_range.step", "an integer >= 1", fr.step)

    _require(params.chunk_frames is None or (_is_int(params.chunk_frames) and params.chunk_frames >= 2),
             "chunk_frames", "null (the whole video in one job) or an integer >= 2 (frames per chunk)",
             params.chunk_frames)
    _require(params.link_overlap_frames is None or (_is_int(params.link_overlap_frames)
                                                     and params.link_overlap_frames >= 1),
             "link_overlap_frames", "null (max(link.memory + 2, 5)) or an integer >= 1 (frames of the previous "
             "chunk linked first by each chunk's link job)", params.link_overlap_frames)

    roi = params.roi
    if roi is not None:
        _require(_is_int(roi.x0) and roi.x0 >= 0, "roi.x0", "an integer >= 0 (px)", roi.x0)
        _require(_is_int(roi.y0) and roi.y0 >= 0, "roi.y0", "an integer >= 0 (px)", roi.y0)
        _require(_is_int(roi.width) and roi.width >= 8, "roi.width", "an integer >= 8 (px)", roi.width)
        _require(_is_int(roi.height) and roi.height >= 8, "roi.height", "an integer >= 8 (px)", roi.height)


def as_params(params: TrackingParams | Mapping[str, Any] | None) -> TrackingParams:
    """Accept parameters as dataclasses, as a config section, or None (defaults)."""
    if isinstance(params, TrackingParams):
        check(params)
        return params
    return from_config(params)
