"""Small helpers to write and read the twin's videos.

* ``frames.tif``: a multi-page TIFF, one page per frame (tifffile).
* ``frames.avi`` / ``frames.mp4``: an optional 8-bit preview movie written
  with imageio's ffmpeg plugin.

Errors name the path that could not be written or read.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

# ffmpeg codec and pixel format per container; both accept any even frame size.
_MOVIE_CODECS = {
    ".mp4": ("libx264", "yuv420p"),
    ".avi": ("mjpeg", "yuvj420p"),
}


class VideoIOError(OSError):
    """A video file could not be written or read; the message names the path."""


def _as_stack(frames) -> np.ndarray:
    stack = np.asarray(frames) if isinstance(frames, np.ndarray) else np.stack(list(frames))
    if stack.ndim == 2:
        stack = stack[None]
    if stack.ndim != 3:
        raise ValueError(f"frames must be a (n_frames, height, width) stack, got shape {stack.shape}")
    return stack


def write_tiff_stack(path: str | os.PathLike, frames: np.ndarray | Iterable[np.ndarray]) -> Path:
    """Write ``frames`` (n_frames, height, width) as a multi-page TIFF, one page per frame.

    The dtype is kept (uint8 for 8-bit, uint16 for 12/16-bit data).
    """
    import tifffile

    path = Path(path)
    stack = _as_stack(frames)
    if stack.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{path}: TIFF frames must be uint8 or uint16, got {stack.dtype}")
    try:
        tifffile.imwrite(path, stack, photometric="minisblack")
    except Exception as exc:  # re-raised with the path
        raise VideoIOError(f"could not write TIFF stack {path}: {exc}") from exc
    return path


def read_tiff_stack(path: str | os.PathLike) -> np.ndarray:
    """Read a multi-page TIFF into an array (n_frames, height, width)."""
    import tifffile

    path = Path(path)
    if not path.is_file():
        raise VideoIOError(f"TIFF stack not found: {path}")
    try:
        stack = tifffile.imread(path)
    except Exception as exc:  # re-raised with the path
        raise VideoIOError(f"could not read TIFF stack {path}: {exc}") from exc
    if stack.ndim == 2:
        stack = stack[None]
    return stack


def to_uint8_preview(frames: np.ndarray, bit_depth: int) -> np.ndarray:
    """Scale integer frames of ``bit_depth`` bits to 0..255 (uint8)."""
    stack = _as_stack(frames)
    if bit_depth == 8 and stack.dtype == np.uint8:
        return stack
    scale = 255.0 / (2**bit_depth - 1)
    return np.clip(np.rint(stack.astype(np.float64) * scale), 0, 255).astype(np.uint8)


def write_movie(path: str | os.PathLike, frames: np.ndarray | Iterable[np.ndarray], fps: float) -> Path:
    """Write 8-bit grey frames as an ``.avi`` (MJPEG) or ``.mp4`` (H.264) movie.

    ``frames`` must be uint8 (use :func:`to_uint8_preview`). Odd frame sizes are
    padded by one edge pixel (the codecs need even sizes).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _MOVIE_CODECS:
        raise ValueError(f"{path}: movie must end in .avi or .mp4")
    if not fps > 0:
        raise ValueError(f"{path}: fps must be positive, got {fps}")
    stack = _as_stack(frames)
    if stack.dtype != np.uint8:
        raise ValueError(f"{path}: movie frames must be uint8, got {stack.dtype}")
    pad_y, pad_x = stack.shape[1] % 2, stack.shape[2] % 2
    if pad_y or pad_x:
        stack = np.pad(stack, ((0, 0), (0, pad_y), (0, pad_x)), mode="edge")
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as exc:  # re-raised with the path
        raise VideoIOError(f"cannot write movie {path}: ffmpeg (imageio-ffmpeg) is unavailable: {exc}") from exc
    codec, pix_fmt = _MOVIE_CODECS[suffix]
    try:
        writer = imageio.get_writer(
            path, format="FFMPEG", mode="I", fps=float(fps), codec=codec,
            pixelformat=pix_fmt, macro_block_size=1, quality=None,
            output_params=["-q:v", "3"] if codec == "mjpeg" else ["-crf", "18"],
            ffmpeg_log_level="error",
        )
        try:
            for frame in stack:
                writer.append_data(frame)
        finally:
            writer.close()
    except Exception as exc:  # re-raised with the path
        raise VideoIOError(f"could not write movie {path} with codec {codec}: {exc}") from exc
    if not path.is_file() or path.stat().st_size == 0:
        raise VideoIOError(f"could not write movie {path} with codec {codec}: no output produced")
    return path
