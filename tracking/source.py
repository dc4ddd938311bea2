"""The video stage for real recordings: describe the input once, copy nothing.

``results/{exp}/video/metadata.json`` records where the frames are and in what
units, in the same form as a rendered twin's metadata, so every later stage
reads real and synthetic videos the same way (docs/data_schema.md). The units
are the config's where it gives them, else the file's own metadata's; where
both give one and they differ, the config's is used, a warning logged and the
difference recorded (``sources``, ``disagreements``).
"""
from __future__ import annotations

import json
import logging
import math
import os

import numpy as np

from mpd.atomic import atomic_write_bytes
from tracking.io import TrackingInputError, open_video

log = logging.getLogger(__name__)


# Config and file values closer than this (relative) agree: configs round, OME stores float32.
AGREE_RTOL = 1e-3
UNIT_KEYS = {"pixel_size_um": "micrometres per pixel in the sample plane", "frame_rate_hz": "frames per second"}


def reconcile(name: str, config_value, file_value, *, path: str, key: str = "video") -> tuple[float | None, dict]:
    """The value of ``name`` to use and its record ``{"config", "file", "used"}``.

    The config wins when it gives a value; the file's own metadata fill in
    when it does not. A disagreement (relative difference over AGREE_RTOL) is
    logged as a warning and marked ``"disagree": true`` in the record.
    """
    used = config_value if config_value is not None else file_value
    record = {"config": config_value, "file": file_value, "used": used}
    if config_value is not None and file_value is not None and not math.isclose(
            float(config_value), float(file_value), rel_tol=AGREE_RTOL):
        record["disagree"] = True
        log.warning("%s: the config sets %s.%s = %s but the file's metadata say %s; using the config's value "
                    "(remove the key to use the file's)", path, key, name, config_value, file_value)
    return used, record


def describe_video(path: str, *, pixel_size_um: float | None = None, frame_rate_hz: float | None = None,
                   exposure_s: float | None = None, bit_depth: int | None = None, key: str = "video") -> dict:
    """Open and validate a recording and return its metadata.

    ``path`` is a video file, a folder of image files or a glob of them. The
    pixel size and frame rate come from the caller (the config) where given,
    else from the file's own metadata (cine, MRAW, ND2, OME-TIFF, ImageJ TIFF:
    tracking.formats); neither is ever guessed, and a unit that neither gives
    is a TrackingInputError naming ``{key}.pixel_size_um`` or
    ``{key}.frame_rate_hz``. The exposure and the bit depth follow the same
    precedence; the bit depth falls back to that of the stored dtype (8 for
    uint8, 16 for uint16). ``sources`` records, per value, the config's, the
    file's and the one used; ``disagreements`` lists the keys where the config
    overrode a different value of the file's (each also logged as a warning).
    """
    video = open_video(path)
    first = video.read(0)
    file_meta = video.file_metadata
    from_file = file_meta.to_dict() if file_meta is not None else {}
    sources, used = {}, {}
    for name, config_value in (("pixel_size_um", pixel_size_um), ("frame_rate_hz", frame_rate_hz),
                               ("exposure_s", exposure_s), ("bit_depth", bit_depth)):
        used[name], sources[name] = reconcile(name, config_value, from_file.get(name), path=path, key=key)
    for name, what in UNIT_KEYS.items():
        if used[name] is None:
            said = (f"the file's {from_file['format']} metadata hold none" if from_file
                    else "this kind of file records none")
            raise TrackingInputError(f"{path}: no {name} ({what}): the config sets no {key}.{name} and {said}; "
                                     f"set {key}.{name}")
    if used["bit_depth"] is None:
        used["bit_depth"] = int(np.iinfo(first.dtype).bits) if np.issubdtype(first.dtype, np.integer) else 32
        sources["bit_depth"]["used"] = used["bit_depth"]
    height, width = video.full_shape
    return {
        "source": "linked",
        "frames_path": os.path.abspath(path) if not os.path.isabs(path) else path,
        "kind": video.kind,
        "format": from_file.get("format", video.kind),
        "n_files": len(video.files),
        "pixel_size_um": float(used["pixel_size_um"]),
        "frame_rate_hz": float(used["frame_rate_hz"]),
        "exposure_s": None if used["exposure_s"] is None else float(used["exposure_s"]),
        "bit_depth": int(used["bit_depth"]),
        "n_frames": len(video),
        "width_px": int(width),
        "height_px": int(height),
        "sources": sources,
        "disagreements": [name for name, record in sources.items() if record.get("disagree")],
    }


def write_video_metadata(video_section: dict, out_path: str | os.PathLike, *, key: str = "video") -> dict:
    """Describe the recording of one experiment's ``video:`` config section into ``out_path`` (JSON).

    ``key`` is the section's dotted name in the config (e.g.
    ``experiments.run1.video``), named by errors and warnings. The file is
    written beside its destination and renamed into place, so a failure leaves
    no metadata that later stages could trust.
    """
    metadata = describe_video(
        video_section["path"],
        pixel_size_um=video_section.get("pixel_size_um"),
        frame_rate_hz=video_section.get("frame_rate_hz"),
        exposure_s=video_section.get("exposure_s"),
        bit_depth=video_section.get("bit_depth"),
        key=key,
    )
    atomic_write_bytes((json.dumps(metadata, indent=2) + "\n").encode(), out_path)
    return metadata
