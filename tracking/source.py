"""The video stage for real recordings: describe the input once, copy nothing.

``results/{exp}/video/metadata.json`` records where the frames are and in what
units, in the same form as a rendered twin's metadata, so every later stage
reads real and synthetic videos the same way (docs/data_schema.md).
"""
from __future__ import annotations

import json
import os

import numpy as np

from mpd.atomic import atomic_write_bytes
from tracking.io import open_video


def describe_video(path: str, *, pixel_size_um: float, frame_rate_hz: float, exposure_s: float | None = None,
                   bit_depth: int | None = None) -> dict:
    """Open and validate a recording and return its metadata (units from the caller, never guessed).

    ``path`` is a video file, a folder of image files or a glob of them. The bit depth, when not
    given, is that of the stored dtype (8 for uint8, 16 for uint16).
    """
    video = open_video(path)
    first = video.read(0)
    if bit_depth is None:
        bit_depth = int(np.iinfo(first.dtype).bits) if np.issubdtype(first.dtype, np.integer) else 32
    height, width = video.full_shape
    return {
        "source": "linked",
        "frames_path": os.path.abspath(path) if not os.path.isabs(path) else path,
        "kind": video.kind,
        "n_files": len(video.files),
        "pixel_size_um": float(pixel_size_um),
        "frame_rate_hz": float(frame_rate_hz),
        "exposure_s": None if exposure_s is None else float(exposure_s),
        "bit_depth": int(bit_depth),
        "n_frames": len(video),
        "width_px": int(width),
        "height_px": int(height),
    }


def write_video_metadata(video_section: dict, out_path: str | os.PathLike) -> dict:
    """Describe the recording of one experiment's ``video:`` config section into ``out_path`` (JSON).

    The file is written beside its destination and renamed into place, so a
    failure leaves no metadata that later stages could trust.
    """
    metadata = describe_video(
        video_section["path"],
        pixel_size_um=video_section["pixel_size_um"],
        frame_rate_hz=video_section["frame_rate_hz"],
        exposure_s=video_section.get("exposure_s"),
        bit_depth=video_section.get("bit_depth"),
    )
    atomic_write_bytes((json.dumps(metadata, indent=2) + "\n").encode(), out_path)
    return metadata
