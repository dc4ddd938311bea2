"""Movies (AVI, MP4, MOV, MKV) decoded by OpenCV when it is installed, else by imageio-ffmpeg through pims.

OpenCV (``opencv-python-headless``, an optional dependency: ``pip install
colloid-mpd[images]``) decodes in-process with its bundled FFmpeg; imageio-
ffmpeg pipes raw frames from an ffmpeg subprocess and, through pims, seeks by
restarting it. Both give the same frames (the same FFmpeg decoders; colour
conversion may differ by a grey level on lossy codecs), and OpenCV is faster
(docs/tracking.md, *Performance*); ``qc.json["reader"]`` says which was used.

The reader reads sequentially and seeks only when asked for a frame other
than the next one. The frame count is OpenCV's own, checked once at opening
by reading the last frame: containers that only estimate it (from duration
and frame rate) get the count of frames that really decode, found by
stepping back.
"""
from __future__ import annotations

import numpy as np
import pims
from pims.frame import Frame

# How far back from the container's stated frame count to look for the last frame that decodes.
MAX_COUNT_CORRECTION = 16


def opencv_available() -> bool:
    try:
        import cv2  # noqa: F401
    except ImportError:
        return False
    return True


class OpenCVReader(pims.FramesSequence):
    """A pims frame sequence of a movie, decoded by OpenCV as RGB (uint8)."""

    @classmethod
    def class_exts(cls):
        return {"avi", "mp4", "mov", "mkv"}

    def __init__(self, path: str):
        import cv2

        self._cv2 = cv2
        self._path = path
        # One decoding thread: the process has its cores counted (trackpy.batch's processes), and
        # FFmpeg would otherwise start one per core.
        self._capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
        if not self._capture.isOpened():
            raise OSError(f"OpenCV cannot open {path}")
        self._next = 0
        stated = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT))
        self._count = stated
        for last in range(stated - 1, max(stated - 1 - MAX_COUNT_CORRECTION, -1), -1):
            if self._decode(last) is not None:
                self._count = last + 1
                break
        else:
            self._count = 0
        first = self._decode(0) if self._count else None
        if first is None:
            raise OSError(f"OpenCV decodes no frame of {path}")
        self._shape, self._dtype = first.shape, first.dtype

    def _decode(self, index: int) -> np.ndarray | None:
        if index != self._next:
            self._capture.set(self._cv2.CAP_PROP_POS_FRAMES, index)
        ok, frame = self._capture.read()
        if not ok or frame is None:
            self._next = -1  # position unknown: seek next time
            return None
        self._next = index + 1
        return self._cv2.cvtColor(frame, self._cv2.COLOR_BGR2RGB) if frame.ndim == 3 else frame

    def get_frame(self, index: int) -> Frame:
        frame = self._decode(int(index))
        if frame is None:
            raise OSError(f"frame {index} of {self._path} cannot be decoded")
        return Frame(frame, frame_no=int(index))

    def __len__(self) -> int:
        return self._count

    @property
    def frame_shape(self):
        return self._shape

    @property
    def pixel_type(self):
        return self._dtype

    def close(self):
        self._capture.release()
        super().close()


def open_movie(path: str) -> pims.FramesSequence:
    """OpenCVReader when OpenCV is installed, else pims.ImageIOReader (imageio-ffmpeg)."""
    if opencv_available():
        return OpenCVReader(path)
    return pims.ImageIOReader(path)
