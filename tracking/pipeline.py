"""One call from a microscopy video to linked trajectories with velocities.

``track_video`` reads and validates the input, resolves the automatic
parameters (contrast, diameter, separation, minmass), locates (trackpy.batch
on N processes), checks that the features can be particles, links, filters
stubs and trajectories, optionally removes drift, computes velocities,
compares with a truth when one is given, and writes everything atomically
(docs/tracking.md lists the files and their columns). Nothing is written
before every frame has been read and tracked, and the output directory
appears only complete: on any error it is left as it was.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mpd.atomic import atomic_output_dir
from mpd.jsonsafe import json_ready
from mpd.provenance import software_versions

from . import qc
from .accuracy import accuracy_report
from .checks import check_packing, check_polarity, check_short_trajectories
from .flatten import flatten_size_px, make_flattener
from .io import TrackingInputError, open_video
from .link import compute_drift, filter_stubs, filter_trajectories, link_features, subtract_drift
from .locate import (
    NoParticlesError,
    detect_polarity,
    estimate_diameter,
    filter_features,
    locate_stack,
    prepare,
    resolve,
    tidy,
)
from .motion import add_velocities, finite_differences
from .noise import velocity_noise_report
from .params import AUTO, TrackingParams, as_params, to_dict
from .refine import RefineError, RefineSkippedWarning, refine_features, resolve_radius

log = logging.getLogger(__name__)
from .register import check_available as check_registration
from .register import link_in_stage_frame, register_video
from .species import classify_species

FEATURE_COLUMNS = ["frame", "t", "x", "y", "x_px", "y_px", "mass", "size", "ecc", "signal", "raw_mass", "ep",
                   "x_centroid_px", "y_centroid_px", "refined"]
TRAJECTORY_COLUMNS = ["frame", "t", "particle", "x", "y", "x_px", "y_px", "vx", "vy",
                      "mass", "size", "ecc", "signal", "raw_mass", "ep", "species"]


@dataclass
class TrackingResult:
    """What track_video wrote, also returned in memory."""

    out_dir: Path
    features: pd.DataFrame
    trajectories: pd.DataFrame
    qc: dict
    accuracy: dict | None


def check_units(pixel_size_um, frame_rate_hz) -> tuple[float, float]:
    """Physical units are required: a missing or invalid one is an error naming its key."""
    values = {}
    for key, value, meaning in (("pixel_size_um", pixel_size_um, "micrometres per pixel"),
                                ("frame_rate_hz", frame_rate_hz, "frames per second")):
        if value is None:
            raise TrackingInputError(f"{key} is required ({meaning}) and has no default; give it in the "
                                     f"experiment's video section or the video's metadata.json")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value <= 0:
            raise TrackingInputError(f"{key} must be a positive number ({meaning}), got {value!r}")
        values[key] = float(value)
    return values["pixel_size_um"], values["frame_rate_hz"]


def load_truth(truth_pixels) -> pd.DataFrame | None:
    """Read a truth_pixels table (path or DataFrame), checking its columns before any work."""
    if truth_pixels is None:
        return None
    if isinstance(truth_pixels, pd.DataFrame):
        truth = truth_pixels
    else:
        path = os.fspath(truth_pixels)
        if not os.path.isfile(path):
            raise TrackingInputError(f"{path}: truth table not found; check truth_pixels")
        truth = pd.read_parquet(path)
    from .accuracy import TRUTH_COLUMNS

    missing = [c for c in TRUTH_COLUMNS if c not in truth.columns]
    if missing:
        raise TrackingInputError(f"the truth table lacks the columns {missing} (docs/data_schema.md, "
                                 f"truth_pixels.parquet)")
    return truth


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w") as handle:
        json.dump(json_ready(data), handle, indent=2, allow_nan=False)
        handle.write("\n")


def resolve_polarity(video, params: TrackingParams, raw_images: np.ndarray) -> tuple[bool, dict | None, list | None]:
    """The contrast to track (invert or not), its detection record, and the spots found on the way.

    Detected from the first frames when ``locate.invert`` is 'auto'; when it
    is given, the detection still runs (unless ``checks.polarity`` is off) and
    a contradiction stops the run: a bright-field video tracked as
    fluorescence yields thousands of junk trajectories, never an error.
    """
    invert = params.locate.invert
    if invert != AUTO and not params.checks.polarity:
        return invert, None, None
    try:
        detected, spots = detect_polarity(raw_images)
    except NoParticlesError as error:
        raise TrackingInputError(f"{video.source}: no particle found: {error}") from None
    if invert == AUTO:
        if detected["invert"] is None:
            raise TrackingInputError(
                f"{video.source}: cannot tell whether the particles are bright or dark: the strongest dark and "
                f"bright blobs of the first {len(raw_images)} frame(s) are alike (ratio "
                f"{detected['dark_over_bright']}); set tracking.locate.invert: true for dark particles on a bright "
                f"background (bright field), false for bright particles (fluorescence)")
        invert = detected["invert"]
    else:
        check_polarity(detected, invert, video.source)
    return invert, detected, spots[invert]


def resolve_locate(video, params: TrackingParams):
    """Resolve the 'auto' locate parameters (contrast, flattening, diameter, separation, minmass) once.

    Looks at the first ``locate.auto_frames`` frames only. Returns (resolved
    parameters, record of the automatic choices, the first frames' features
    at minmass 0 or None (see tracking.locate.resolve), the flattening function,
    the flattening scale in px or None). Shared by ``locate_video`` and the
    split tracking's plan (tracking.stream), so both use identical parameters.
    """
    n_auto = min(params.locate.auto_frames, len(video))
    raw_images = np.stack([video.read(i) for i in range(n_auto)])
    invert, detected, spots = resolve_polarity(video, params, raw_images)
    try:
        flatten, flattened, spots = make_flattener(params.locate, raw_images, invert, spots)
        first_images = prepare(flatten(raw_images), invert)
        resolved, chosen, probes = resolve(params.locate, first_images, invert, spots)
    except NoParticlesError as error:
        raise TrackingInputError(f"{video.source}: no particle found: {error}") from None
    flatten_size = None
    if flattened is not None:
        chosen["flatten"] = flattened
        # the exact scale make_flattener used (its record rounds it)
        loc = params.locate
        diameter = (0.0 if loc.flatten_size is not None else float(loc.diameter) if loc.diameter != AUTO
                    else float(estimate_diameter(spots)["particle_diameter_px"]))
        flatten_size = flatten_size_px(loc, diameter)
    if detected is not None:
        chosen = {"invert": {**detected, "used": invert, "given": params.locate.invert}, **chosen}
    return resolved, chosen, probes, flatten, flatten_size


def locate_video(video, params: TrackingParams, processes: int = 1):
    """Resolve 'auto' locate parameters, then locate every selected frame.

    Returns (features with px columns x, y in full-frame pixels, resolved
    parameters, record of the automatic choices).
    """
    resolved, chosen, probes, flatten, _ = resolve_locate(video, params)
    invert = resolved.invert
    pieces = []
    if probes is not None:
        # The minmass estimate located the first frames already (at minmass 0).
        for index, probe in enumerate(probes):
            kept = probe[probe["mass"] > resolved.minmass].assign(frame=int(video.frame_numbers[index]))
            pieces.append(tidy(kept))
    pieces += [locate_stack(prepare(flatten(stack), invert), numbers, resolved, processes)
               for numbers, stack in video.chunks(skip=0 if probes is None else len(probes))]
    features = pd.concat(pieces, ignore_index=True)
    x0, y0 = video.origin_px
    features["x"] += x0
    features["y"] += y0
    features = filter_features(features, params.locate)
    if len(features) == 0:
        raise TrackingInputError(
            f"{video.source}: no particle found in any of the {len(video)} frames (diameter {resolved.diameter} px, "
            f"minmass {resolved.minmass:.4g}, invert {invert}); check locate.invert (true for dark particles), "
            f"lower locate.minmass or loosen the mass/size/ecc filters")
    return features, resolved, chosen


def refine_video(video, features: pd.DataFrame, params: TrackingParams, resolved) -> tuple[pd.DataFrame, dict | None]:
    """Sub-pixel refinement of the features' x, y (px), trackpy's centroids kept as x_centroid, y_centroid.

    With ``locate.refine: none`` the centroids are the positions and no
    feature is marked ``refined``. Frames are read again (one at a time)
    rather than kept from locating: decoding costs little beside the fit.
    """
    loc = params.locate
    def centroids() -> pd.DataFrame:
        return features.assign(x_centroid=features["x"], y_centroid=features["y"], refined=False)

    if loc.refine == "none":
        return centroids(), None
    try:
        refined, record = refine_features(
            lambda index: prepare(video.read(index), resolved.invert), video.frame_numbers, features,
            radius_px=resolve_radius(loc.refine_radius_px, resolved.diameter), sweeps=loc.refine_sweeps,
            profile_frames=loc.refine_profile_frames, max_shift_px=loc.refine_max_shift_px,
            species_params=params.species, origin_px=video.origin_px, border_px=resolved.margin_px)
    except RefineError as error:
        # A refinement, not a necessity: too few particles to measure their spot is no reason to fail a
        # video trackpy can track. The centroids are kept, and qc.json and a warning say why.
        message = (f"{video.source}: tracking.locate.refine: psf_fit skipped, trackpy's centroids kept: {error}; "
                   f"raise tracking.locate.refine_profile_frames, or set tracking.locate.refine: none to silence this")
        warnings.warn(message, RefineSkippedWarning, stacklevel=2)
        return centroids(), {"method": loc.refine, "skipped": str(error)}
    return refined, record


def _search_range_text(params: TrackingParams, search_range_px: float, pixel_size_um: float) -> str:
    key = "tracking.link.search_range_px" if params.link.search_range_px is not None else \
        "tracking.link.search_range_um"
    return f"{key}, now {search_range_px * pixel_size_um:.3g} µm = {search_range_px:.3g} px"


def remove_drift(kept: pd.DataFrame, every: pd.DataFrame, params: TrackingParams, frame_numbers,
                 pixel_size_um: float, registered: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Subtract the rigid drift (µm) from x, y of ``kept``; measured on ``kept`` or on ``every`` trajectory.

    The drift is measured on the positions in pixels, as trackpy measures
    it, then converted to µm; returns (trajectories, drift in µm or None).
    With ``drift: registration`` it is ``registered`` (px), measured on the frames.
    """
    link = params.link
    if link.drift == "none":
        return kept, None
    if link.drift == "registration":
        drift_px = registered
    else:
        source = kept if link.drift_from == "filtered" else every
        drift_px = compute_drift(source, frame_numbers, ("x_px", "y_px"), method=link.drift,
                                 smoothing=link.drift_smoothing)
    drift = drift_px.rename(columns={"x_px": "x", "y_px": "y"}) * pixel_size_um
    return subtract_drift(kept, drift), drift


def track_video(frames_path, out_dir, params: TrackingParams | dict | None = None, *, pixel_size_um: float,
                frame_rate_hz: float, processes: int = 1, truth_pixels=None) -> TrackingResult:
    """Track a video into ``out_dir`` (see docs/tracking.md for the files and columns).

    Parameters
    ----------
    frames_path : str or path
        A multi-page TIFF, AVI/MP4/MOV, ND2, a folder of images or a glob of
        image files (one frame each, natural sort order).
    out_dir : str or path
        Directory to create (replaced atomically if it exists).
    params : TrackingParams, dict or None
        The experiment's ``tracking:`` section (``tracking.params.from_config``)
        or its dataclasses; None takes every default.
    pixel_size_um : float
        Micrometres per pixel. Required: no default.
    frame_rate_hz : float
        Frames per second. Required: no default.
    processes : int
        Processes for trackpy.batch (the Snakemake rule's threads).
    truth_pixels : path or DataFrame, optional
        Truth in pixel coordinates (``truth_pixels.parquet``); when given,
        ``accuracy.json`` is written.

    Raises
    ------
    TrackingInputError
        Bad input: missing/empty/unsupported/corrupt file, missing unit, no particle,
        undecidable contrast; ``tracking.checks.ImplausibleResultError`` (a subclass)
        when the features or trajectories cannot be particles (docs/tracking.md).
    tracking.params.ParameterError
        Unknown or out-of-range parameter.
    tracking.link.LinkingError
        Linking impossible with these parameters (names the key to change).
    """
    timing = {}
    start = time.perf_counter()
    pixel_size_um, frame_rate_hz = check_units(pixel_size_um, frame_rate_hz)
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise TrackingInputError(f"processes must be an integer >= 1, got {processes!r}")
    params = as_params(params)
    if params.link.drift == "registration":
        check_registration()
    out_dir = Path(out_dir)
    truth = load_truth(truth_pixels)
    video = open_video(frames_path, params.frame_range, params.roi, params.locate.channel)
    frame_numbers = video.frame_numbers
    frame_step = params.frame_range.step if params.frame_range is not None else 1
    timing["open"] = time.perf_counter() - start

    mark = time.perf_counter()
    features, resolved, chosen = locate_video(video, params, processes)
    checks = {"packing": check_packing(features, video.frame_shape, resolved, params.checks.max_packing_ratio,
                                       video.source)}
    timing["locate"] = time.perf_counter() - mark
    mark = time.perf_counter()
    features, refine_record = refine_video(video, features, params, resolved)
    timing["refine"] = time.perf_counter() - mark

    mark = time.perf_counter()
    registered = None
    if params.link.drift == "registration":  # measured on the frames; linked in the stage's frame
        registered, registration = register_video(video)
        linked, link_record = link_in_stage_frame(features, registered, params.link, pixel_size_um)
        link_record["registration"] = registration
    else:
        linked, link_record = link_features(features, params.link, pixel_size_um)
    if "search_range" in link_record:
        chosen["search_range"] = link_record.pop("search_range")
    checks["short_trajectories"] = check_short_trajectories(
        linked, len(frame_numbers), params.checks.max_short_fraction,
        _search_range_text(params, link_record["search_range_px"], pixel_size_um), video.source)
    stubs_removed = filter_stubs(linked, params.link.min_length)
    trajectories = filter_trajectories(stubs_removed, params.trajectory_filter)
    # Counts before and after the trajectory filter, for qc.json.
    filtered = {"trajectories_before": int(stubs_removed["particle"].nunique()),
                "observations_before": len(stubs_removed),
                "trajectories_after": int(trajectories["particle"].nunique()),
                "observations_after": len(trajectories)}
    timing["link"] = time.perf_counter() - mark

    mark = time.perf_counter()
    features = features.rename(columns={"x": "x_px", "y": "y_px", "x_centroid": "x_centroid_px",
                                        "y_centroid": "y_centroid_px"})
    features["x"] = features["x_px"] * pixel_size_um
    features["y"] = features["y_px"] * pixel_size_um
    features["t"] = features["frame"] / frame_rate_hz
    features = features.sort_values(["frame", "y_px", "x_px"], kind="stable")[FEATURE_COLUMNS]
    features = features.reset_index(drop=True)

    trajectories = trajectories.rename(columns={"x": "x_px", "y": "y_px"})
    trajectories["x"] = trajectories["x_px"] * pixel_size_um
    trajectories["y"] = trajectories["y_px"] * pixel_size_um
    drift_velocity = None
    trajectories, drift = remove_drift(trajectories, stubs_removed.rename(columns={"x": "x_px", "y": "y_px"}),
                                       params, frame_numbers, pixel_size_um, registered)
    if drift is not None:
        # Drift velocity by the same stencil as the particles', for comparing with a truth.
        drift_velocity = pd.DataFrame(
            finite_differences(drift.to_numpy(), frame_numbers / frame_rate_hz, np.zeros(len(drift), int)),
            index=drift.index, columns=["vx", "vy"])
    trajectories = add_velocities(trajectories, frame_rate_hz, params.velocity, frame_step=frame_step)
    trajectories["t"] = trajectories["frame"] / frame_rate_hz
    height, width = video.frame_shape
    trajectories["species"], species_record = classify_species(
        trajectories, params.species, region_px=(*video.origin_px, width, height), margin_px=resolved.diameter)
    trajectories = trajectories.sort_values(["frame", "particle"], kind="stable")[TRAJECTORY_COLUMNS]
    trajectories = trajectories.reset_index(drop=True)
    timing["velocities"] = time.perf_counter() - mark

    accuracy = None
    if truth is not None:
        mark = time.perf_counter()
        accuracy = accuracy_report(trajectories, truth, pixel_size_um=pixel_size_um, frame_numbers=frame_numbers,
                                   region_px=(*video.origin_px, width, height), mask_diameter_px=resolved.diameter,
                                   drift_velocity_um_s=drift_velocity)
        timing["accuracy"] = time.perf_counter() - mark
    mark = time.perf_counter()
    velocity_noise = velocity_noise_report(trajectories, params.velocity, frame_rate_hz=frame_rate_hz,
                                           pixel_size_um=pixel_size_um, frame_step=frame_step,
                                           region_px=(*video.origin_px, width, height),
                                           mask_diameter_px=resolved.diameter, truth=truth)
    timing["velocity_noise"] = time.perf_counter() - mark

    summary = qc.summary(features, trajectories, frame_numbers)
    report_warnings = qc.empty_frame_warnings(video.source, summary)
    for message in report_warnings:
        log.warning(message)
    report = qc.report(
        source=video.source, reader=type(video.reader).__name__, frame_numbers=frame_numbers, frame_step=frame_step,
        frame_shape_px=video.frame_shape, roi_origin_px=video.origin_px, summary=summary, warnings=report_warnings,
        auto=chosen, checks=checks, trajectory_filter=filtered, species=species_record,
        velocity_noise=velocity_noise, refine=refine_record, resolved_locate=dataclasses.asdict(resolved),
        resolved_link=link_record, parameters=to_dict(params),
        units={"pixel_size_um": pixel_size_um, "frame_rate_hz": frame_rate_hz}, processes=processes,
        software=software_versions("trackpy", "pims", "numpy", "scipy", "pandas", "tifffile"))

    mark = time.perf_counter()
    with atomic_output_dir(out_dir) as tmp:
        features.to_parquet(tmp / "features.parquet", index=False)
        trajectories.to_parquet(tmp / "trajectories.parquet", index=False)
        if drift is not None:
            table = drift.reset_index()
            table.insert(1, "t", table["frame"] / frame_rate_hz)
            table.to_csv(tmp / "drift.csv", index=False)
        report["figures"] = qc.write_figures(tmp / "qc", video.read(0), video.origin_px, features, trajectories,
                                             frame_numbers, resolved.diameter)
        if accuracy is not None:
            _write_json(tmp / "accuracy.json", accuracy)
        timing["write"] = time.perf_counter() - mark
        timing["total"] = time.perf_counter() - start
        report["timing_s"] = {k: round(v, 3) for k, v in timing.items()}
        _write_json(tmp / "qc.json", report)
    return TrackingResult(out_dir=out_dir, features=features, trajectories=trajectories, qc=report,
                          accuracy=accuracy)
