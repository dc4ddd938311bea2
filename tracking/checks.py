"""Plausibility checks: stop with one clear error instead of returning junk.

trackpy finds *something* in any image: with the wrong contrast it locates the
bright gaps between dark particles, in noise it locates noise maxima, and both
link into thousands of short trajectories without a warning. Three symptoms
are checked, each with its setting in ``tracking.checks`` (docs/tracking.md):

* polarity: an explicit ``locate.invert`` that contradicts the contrast
  detected in the first frames (tracking.locate.detect_polarity);
* packing: more features per frame than disks of the mask diameter could
  fill the analysed area at hexagonal close packing, by a margin;
* persistence: most linked features in trajectories only a few frames long
  (real particles persist; noise maxima and mislinks do not).

Each check returns the number it measured, for ``qc.json``, and raises
``ImplausibleResultError`` (a ``TrackingInputError``) naming the settings to
change and the check's own key to relax it.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .io import TrackingInputError

# Hexagonal close packing of disks of diameter d: 2 / sqrt(3) disks per d^2.
CLOSE_PACKED_PER_D2 = 2 / np.sqrt(3)
# A trajectory is "short" below this many frames (or half the analysed frames, if fewer).
SHORT_FRAMES = 10
# Videos shorter than this are not judged on persistence: a few frames say nothing.
MIN_FRAMES_FOR_PERSISTENCE = 4


class ImplausibleResultError(TrackingInputError):
    """The features or trajectories found cannot be particles; the message names the settings to check."""


def check_polarity(detected: dict, invert: bool, source: str) -> None:
    """Raise when an explicit ``invert`` contradicts the contrast detected in the first frames."""
    if detected["invert"] is None or detected["invert"] == invert:
        return
    seen = "dark particles on a bright background" if detected["invert"] else "bright particles on a dark background"
    raise ImplausibleResultError(
        f"{source}: the first frames show {seen} (dark/bright blob strength {detected['dark_over_bright']}), but "
        f"tracking.locate.invert is {str(invert).lower()}; set tracking.locate.invert: "
        f"{str(detected['invert']).lower()} (or auto), or, if you are sure of it, tracking.checks.polarity: false")


def packing_ratio(features: pd.DataFrame, frame_shape: tuple[int, int], diameter: float) -> dict:
    """Median features per frame over the close-packed count of disks of ``diameter`` in the frame."""
    return packing_ratio_of_counts(features.groupby("frame").size().to_numpy(), frame_shape, diameter)


def packing_ratio_of_counts(counts: np.ndarray, frame_shape: tuple[int, int], diameter: float) -> dict:
    """`packing_ratio` from the features per frame (frames without features do not count)."""
    height, width = frame_shape
    close_packed = CLOSE_PACKED_PER_D2 * height * width / float(diameter) ** 2
    counts = np.asarray(counts)
    per_frame = float(np.median(counts[counts > 0])) if counts.sum() else 0.0
    return {"features_per_frame": per_frame, "close_packed": round(float(close_packed), 1),
            "ratio": round(float(per_frame / close_packed), 4)}


def check_packing(features: pd.DataFrame, frame_shape: tuple[int, int], resolved, max_ratio: float | None,
                  source: str) -> dict:
    """Raise when far more features per frame are found than particles of the mask diameter could be."""
    return check_packing_counts(features.groupby("frame").size().to_numpy(), frame_shape, resolved, max_ratio,
                                source)


def check_packing_counts(counts: np.ndarray, frame_shape: tuple[int, int], resolved, max_ratio: float | None,
                         source: str) -> dict:
    """`check_packing` from the features per frame (the split tracking counts them chunk by chunk)."""
    record = packing_ratio_of_counts(counts, frame_shape, resolved.diameter)
    if max_ratio is not None and record["ratio"] > max_ratio:
        height, width = frame_shape
        raise ImplausibleResultError(
            f"{source}: {record['features_per_frame']:.0f} features per frame (median) are {record['ratio']:.2f} "
            f"times as many as disks of the mask diameter ({resolved.diameter} px) can fill the {width}x{height} px "
            f"analysed area at close packing ({record['close_packed']:.0f}); they are not particles: check "
            f"tracking.locate.invert (now {str(resolved.invert).lower()}), tracking.locate.diameter (now "
            f"{resolved.diameter}) and tracking.locate.minmass (now {resolved.minmass:.4g}); if the sample really "
            f"is this dense, raise tracking.checks.max_packing_ratio (now {max_ratio:g}) or set it to null")
    return record


def short_fraction(linked: pd.DataFrame, n_frames: int) -> dict:
    """Fraction of linked features in trajectories shorter than min(SHORT_FRAMES, n_frames // 2) frames.

    Counted over features, not trajectories: a real recording also has
    many short trajectories (particles entering, leaving or defocusing), but
    most of its features belong to long ones; noise maxima and features of
    the wrong contrast link into chains of one or two frames.
    """
    lengths = linked.groupby("particle").size().to_numpy() if len(linked) else np.zeros(0, np.int64)
    return short_fraction_of_lengths(lengths, n_frames)


def short_fraction_of_lengths(lengths: np.ndarray, n_frames: int) -> dict:
    """`short_fraction` from each trajectory's length (its features)."""
    lengths = np.asarray(lengths)
    total = int(lengths.sum())
    if n_frames < MIN_FRAMES_FOR_PERSISTENCE or total == 0:
        return {"short_frames": None, "fraction": None}
    short = min(SHORT_FRAMES, n_frames // 2)
    return {"short_frames": short, "fraction": round(float(lengths[lengths < short].sum() / total), 4)}


def check_short_trajectories(linked: pd.DataFrame, n_frames: int, max_fraction: float | None,
                             search_range: str, source: str) -> dict:
    """Raise when most linked features lie in trajectories only a few frames long."""
    lengths = linked.groupby("particle").size().to_numpy() if len(linked) else np.zeros(0, np.int64)
    return check_short_lengths(lengths, n_frames, max_fraction, search_range, source)


def check_short_lengths(lengths: np.ndarray, n_frames: int, max_fraction: float | None, search_range: str,
                        source: str) -> dict:
    """`check_short_trajectories` from each trajectory's length (the split tracking counts them as it links)."""
    record = short_fraction_of_lengths(lengths, n_frames)
    if max_fraction is not None and record["fraction"] is not None and record["fraction"] > max_fraction:
        raise ImplausibleResultError(
            f"{source}: {record['fraction']:.0%} of the linked features lie in trajectories shorter than "
            f"{record['short_frames']} frames (of {n_frames} analysed); features that cannot be followed from "
            f"frame to frame are noise, the wrong contrast or mislinks: check tracking.locate.invert, "
            f"tracking.locate.minmass and the search range ({search_range}); if the particles really are seen "
            f"this briefly, raise tracking.checks.max_short_fraction (now {max_fraction:g}) or set it to null")
    return record
