"""Read a microscopy video through pims into grey frames, failing early and clearly.

Accepted inputs: a multi-page TIFF (OME-TIFF and ImageJ metadata read), a
folder or glob of image files (one frame per file, in pims's natural order:
``frame2`` before ``frame10``), an AVI/MP4/MOV movie (decoded by OpenCV when
installed, else imageio-ffmpeg: tracking.movie), and the high-speed and
microscope cameras' own files: Phantom ``.cine``, Photron ``.mraw`` (with its
``.cihx``/``.cih`` header) and Nikon ``.nd2`` (tracking.formats, which also
reads each file's frame rate and pixel size). Every reader decodes one frame
at a time, never the whole file. Colour frames (RGB/RGBA) become grey by the
configured ``channel``: the Rec. 709 luma weights pims uses (default), the mean
of R, G and B, or one channel (trackpy's walkthrough tracks the green one);
alpha is always ignored.

Every problem with an input raises one ``TrackingInputError`` that names the
file and says how to fix it. A TIFF's structure is validated before any frame
is tracked (a truncated TIFF otherwise reads as a shorter video, or as
zero-filled frames); other formats are validated as each frame is decoded.
"""
from __future__ import annotations

import glob
import logging
import os
import re
import struct
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pims
from pims.utils.sort import natural_keys

from .movie import open_movie
from .params import FrameRange, RegionOfInterest

TIFF_EXTENSIONS = (".tif", ".tiff")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif") + TIFF_EXTENSIONS
MOVIE_EXTENSIONS = (".avi", ".mp4", ".mov", ".mkv")
ND2_EXTENSIONS = (".nd2",)
CINE_EXTENSIONS = (".cine",)
MRAW_EXTENSIONS = (".mraw", ".cihx", ".cih")  # the frames or either of their Photron headers
CAMERA_KINDS = {**{ext: "cine" for ext in CINE_EXTENSIONS}, **{ext: "mraw" for ext in MRAW_EXTENSIONS},
                **{ext: "nd2" for ext in ND2_EXTENSIONS}}
SUPPORTED_EXTENSIONS = tuple(dict.fromkeys(TIFF_EXTENSIONS + MOVIE_EXTENSIONS + CINE_EXTENSIONS + MRAW_EXTENSIONS
                                           + ND2_EXTENSIONS + IMAGE_EXTENSIONS))

# What decoders (tifffile, PIL via imageio, ffmpeg) raise for damaged or
# unreadable data; each becomes one TrackingInputError naming the file.
DECODE_ERRORS = (OSError, ValueError, RuntimeError, SyntaxError, EOFError, IndexError, KeyError,
                 struct.error, zlib.error)

# Rec. 709 luma, as pims.as_grey: keeps grey levels comparable with pims users.
_LUMA = np.array([0.2125, 0.7154, 0.0721])
LUMA, MEAN = "luma", "mean"


class TrackingInputError(ValueError):
    """An input (file, parameter, unit) cannot be tracked; the message names it and the fix."""


def _is_glob(source: str) -> bool:
    return any(char in source for char in "*?[")


def _image_files(paths: Sequence[str], what: str) -> list[str]:
    """Check that a sequence of files are images of one supported kind."""
    files = sorted((p for p in paths if os.path.isfile(p)), key=natural_keys)  # pims's own order: frame2 before frame10
    if not files:
        raise TrackingInputError(f"{what} holds no image file; put the frames there as "
                                 f"{', '.join(IMAGE_EXTENSIONS)} files, or point frames_path at a video file")
    extensions = {Path(p).suffix.lower() for p in files}
    unsupported = sorted(extensions - set(IMAGE_EXTENSIONS))
    if unsupported:
        offender = next(p for p in files if Path(p).suffix.lower() == unsupported[0])
        raise TrackingInputError(
            f"{offender}: unsupported extension {unsupported[0]!r} in the image sequence {what}; "
            f"an image sequence must consist of {', '.join(IMAGE_EXTENSIONS)} files "
            f"(narrow the glob, e.g. '*.png')")
    if len(extensions) > 1:
        raise TrackingInputError(f"{what} mixes image types ({', '.join(sorted(extensions))}); "
                                 f"narrow the glob to one extension")
    return files


def resolve_source(source: str | os.PathLike) -> tuple[str, list[str]]:
    """Classify an input as ('tiff' | 'movie' | 'cine' | 'mraw' | 'nd2' | 'sequence', files).

    Raises TrackingInputError for a missing path, an empty folder, a glob
    matching nothing and an unsupported extension.
    """
    if source is None or str(source).strip() == "":
        raise TrackingInputError("frames_path is empty; give a video file, a folder of images or a glob")
    source = os.fspath(source)
    if _is_glob(source) and not os.path.exists(source):
        matches = glob.glob(source)
        if not matches:
            raise TrackingInputError(f"the glob {source!r} matches no file; check the folder and the pattern")
        return "sequence", _image_files(matches, f"the glob {source!r}")
    path = Path(source)
    if not path.exists():
        raise TrackingInputError(f"{source}: no such file or folder; check frames_path")
    if path.is_dir():
        return "sequence", _image_files([str(p) for p in path.iterdir()], f"the folder {source}")
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        raise TrackingInputError(f"{source}: the file is empty (0 bytes); copy or export it again")
    if suffix in TIFF_EXTENSIONS:
        return "tiff", [source]
    if suffix in MOVIE_EXTENSIONS:
        return "movie", [source]
    if suffix in CAMERA_KINDS:
        return CAMERA_KINDS[suffix], [source]
    if suffix in IMAGE_EXTENSIONS:
        return "sequence", [source]
    raise TrackingInputError(
        f"{source}: unsupported extension {suffix or '(none)'!r}; supported are "
        f"{', '.join(SUPPORTED_EXTENSIONS)} — convert the video to a multi-page TIFF")


class _LogCollector(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def validate_tiff(path: str) -> int:
    """Check a TIFF's structure without decoding it; return its number of pages.

    tifffile reads a truncated file as a shorter stack (it stops at the first
    invalid page offset, logging instead of raising) or returns zeros for
    pixel data past the end of the file, so both are checked explicitly.
    """
    import tifffile

    size = os.path.getsize(path)
    collector = _LogCollector()
    logger = logging.getLogger("tifffile")
    logger.addHandler(collector)
    propagate, logger.propagate = logger.propagate, False
    fix = "the file is truncated or corrupt; copy or export it again"
    try:
        with tifffile.TiffFile(path) as tif:
            pages = list(tif.pages)
            if collector.messages:
                reason = re.sub(r"^<[^>]*>\s*", "", collector.messages[0])  # drop tifffile's object repr
                raise TrackingInputError(f"{path}: {reason}; {fix}")
            for index, page in enumerate(pages):
                ends = np.add(page.dataoffsets, page.databytecounts)
                if len(ends) == 0 or ends.max() > size:
                    raise TrackingInputError(f"{path}: the pixel data of page {index} lie past the end of "
                                             f"the file ({size} bytes); {fix}")
            # tifffile's and ImageJ's metadata state the intended number of frames.
            declared = None
            if tif.shaped_metadata:
                shape = tif.shaped_metadata[0].get("shape")
                if shape:
                    frame_ndim = pages[0].ndim if pages else 2
                    declared = int(np.prod(shape[: len(shape) - frame_ndim])) if len(shape) > frame_ndim else 1
            elif tif.imagej_metadata:
                declared = tif.imagej_metadata.get("images")
            if declared is not None and declared != len(pages):
                raise TrackingInputError(f"{path}: the file declares {declared} frames but holds {len(pages)}; {fix}")
            return len(pages)
    except TrackingInputError:
        raise
    except DECODE_ERRORS as error:
        raise TrackingInputError(f"{path}: cannot be read as a TIFF ({error}); {fix}") from None
    finally:
        logger.removeHandler(collector)
        logger.propagate = propagate


def open_reader_with_metadata(kind: str, files: list[str], source: str):
    """(pims reader, tracking.formats.FileMetadata or None) of a resolved input.

    The metadata are the file's own (frame rate, pixel size, ...) for TIFF and
    the camera formats; None for movies and image sequences, which carry none.
    Failures become TrackingInputError.
    """
    from . import formats  # imported here: the camera readers' packages load only when such a file is read

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pims/imageio chatter about plugins; real failures raise
        try:
            if kind == "tiff":
                n_pages = validate_tiff(files[0])
                metadata = formats.tiff_metadata(files[0], n_pages)
                return pims.TiffStack(files[0]), metadata
            if kind == "movie":
                return open_movie(files[0]), None
            if kind in ("cine", "mraw", "nd2"):
                return formats.open_camera_file(kind, files[0])
            return pims.ImageSequence(files), None
        except TrackingInputError:
            raise
        except DECODE_ERRORS as error:
            raise TrackingInputError(f"{source}: cannot be opened as a {kind} ({type(error).__name__}: {error}); "
                                     f"the file may be corrupt or truncated — copy or export it again") from None


def open_reader(kind: str, files: list[str], source: str) -> pims.FramesSequence:
    """Open the pims reader for a resolved input, turning failures into TrackingInputError."""
    return open_reader_with_metadata(kind, files, source)[0]


@dataclass
class Video:
    """A validated selection of frames of one input, read on demand as grey images.

    ``frame_numbers`` are the indices of the selected frames in the whole
    video, so ``t = frame / frame_rate_hz`` holds whatever the frame range.
    Pixel coordinates of anything found in a region of interest are reported
    in the full frame: add ``roi.x0`` and ``roi.y0``.
    """

    source: str
    kind: str
    reader: pims.FramesSequence
    files: list[str]
    frame_numbers: np.ndarray
    roi: RegionOfInterest | None
    full_shape: tuple[int, int]
    channel: int | str = LUMA  # how colour frames become grey (to_grey)
    file_metadata: object = None  # tracking.formats.FileMetadata: what the file says (rate, pixel size); or None

    @property
    def frame_shape(self) -> tuple[int, int]:
        if self.roi is None:
            return self.full_shape
        return (self.roi.height, self.roi.width)

    @property
    def origin_px(self) -> tuple[int, int]:
        """(x0, y0) of the analysed region in the full frame, px."""
        return (0, 0) if self.roi is None else (self.roi.x0, self.roi.y0)

    def __len__(self) -> int:
        return len(self.frame_numbers)

    def _where(self, index: int) -> str:
        frame = int(self.frame_numbers[index])
        if self.kind == "sequence":
            return f"{self.files[frame]}"
        return f"frame {frame} of {self.source}"

    def read(self, index: int) -> np.ndarray:
        """The grey, cropped image of the index-th selected frame (dtype kept for grey input)."""
        frame = int(self.frame_numbers[index])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                image = np.asarray(self.reader[frame])
        except DECODE_ERRORS as error:
            raise TrackingInputError(f"{self._where(index)} cannot be decoded ({type(error).__name__}: {error}); "
                                     f"the file is corrupt or truncated — copy or export it again") from None
        image = to_grey(image, self._where(index), self.channel)
        if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
            bad = int((~np.isfinite(image)).sum())
            raise TrackingInputError(
                f"{self._where(index)} has {bad} NaN or infinite pixel(s) of {image.size}: the locator cannot "
                f"weigh them; replace them in the file (e.g. with the background level) or crop them away "
                f"with tracking.roi")
        if image.shape != self.full_shape:
            raise TrackingInputError(f"{self._where(index)} is {image.shape[1]}x{image.shape[0]} px but the first "
                                     f"frame is {self.full_shape[1]}x{self.full_shape[0]} px; all frames must "
                                     f"have one size")
        if self.roi is not None:
            r = self.roi
            image = image[r.y0:r.y0 + r.height, r.x0:r.x0 + r.width]
        return image

    def chunks(self, max_bytes: int = 256 * 2**20, skip: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (frame_numbers, stack of grey frames) in chunks of at most max_bytes.

        Chunks bound the memory of long videos while letting trackpy.batch
        work on an in-memory stack (decoding each frame once). The first
        ``skip`` selected frames are left out.
        """
        if skip >= len(self):
            return
        first = self.read(skip)
        size = max(1, int(max_bytes // max(first.nbytes, 1)))
        for start in range(skip, len(self), size):
            stop = min(start + size, len(self))
            stack = np.empty((stop - start,) + first.shape, dtype=first.dtype)
            for i in range(start, stop):
                stack[i - start] = first if i == skip else self.read(i)
            yield self.frame_numbers[start:stop], stack


def to_grey(image: np.ndarray, where: str = "frame", channel: int | str = LUMA) -> np.ndarray:
    """Grey version of a frame, rounded back to its integer dtype.

    ``channel``: "luma" (Rec. 709, as ``pims.as_grey``), "mean" (of R, G, B)
    or 0, 1, 2 (that channel alone, exactly as stored). Alpha is ignored. A
    grey frame is returned as it is for "luma" and "mean"; a channel index on
    a grey frame is an error, since the setting then cannot mean anything.
    """
    image = np.squeeze(image)
    if image.ndim == 2:
        if isinstance(channel, int):
            raise TrackingInputError(f"{where} is a grey frame, but tracking.locate.channel = {channel} asks for "
                                     f"one colour channel; remove the key (or set it to 'luma')")
        return image
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        if isinstance(channel, int):
            return image[..., channel]  # a copy-free view; its dtype and values are those stored
        grey = image[..., :3] @ _LUMA if channel == LUMA else image[..., :3].mean(axis=-1)
        if np.issubdtype(image.dtype, np.integer):
            # Integer grey keeps trackpy's integer code path (threshold and mass scaling).
            return np.rint(grey).astype(image.dtype)
        return grey.astype(np.float32)
    raise TrackingInputError(f"{where} has shape {image.shape}: expected a grey (rows, columns) or colour "
                             f"(rows, columns, 3|4) frame; split multi-channel or 3-D data into one "
                             f"channel first")


def select_frames(n_frames: int, frame_range: FrameRange | None, source: str) -> np.ndarray:
    """Indices of the frames in frame_range (a Python slice), checked against the video length."""
    if n_frames <= 0:
        raise TrackingInputError(f"{source} holds no frame; check that it is the right file")
    if frame_range is None:
        return np.arange(n_frames)
    if frame_range.start >= n_frames:
        raise TrackingInputError(f"frame_range.start = {frame_range.start} but {source} has only {n_frames} "
                                 f"frames (0 to {n_frames - 1}); lower frame_range.start")
    stop = n_frames if frame_range.stop is None else min(frame_range.stop, n_frames)
    return np.arange(frame_range.start, stop, frame_range.step)


def check_roi(roi: RegionOfInterest | None, shape: tuple[int, int], source: str) -> None:
    if roi is None:
        return
    height, width = shape
    if roi.x0 + roi.width > width or roi.y0 + roi.height > height:
        raise TrackingInputError(
            f"roi (x0={roi.x0}, y0={roi.y0}, width={roi.width}, height={roi.height}) reaches outside the "
            f"{width}x{height} px frames of {source}; shrink roi.width/roi.height or move roi.x0/roi.y0")


def open_video(source: str | os.PathLike, frame_range: FrameRange | None = None,
               roi: RegionOfInterest | None = None, channel: int | str = LUMA) -> Video:
    """Open and validate an input; frames are decoded later by ``Video.read``/``chunks``.

    ``channel`` says how colour frames become grey (``to_grey``).
    """
    kind, files = resolve_source(source)
    source = os.fspath(source)
    reader, file_metadata = open_reader_with_metadata(kind, files, source)
    n_frames = len(reader)
    numbers = select_frames(n_frames, frame_range, source)
    # The first selected frame fixes the size every other frame must have.
    video = Video(source=source, kind=kind, reader=reader, files=files, frame_numbers=numbers,
                  roi=None, full_shape=(-1, -1), channel=channel, file_metadata=file_metadata)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # readers' plugin chatter (pims through skimage.io); failures raise
            first = np.asarray(reader[int(numbers[0])])
    except DECODE_ERRORS as error:
        raise TrackingInputError(f"{video._where(0)} cannot be decoded ({type(error).__name__}: {error}); "
                                 f"the file is corrupt or truncated — copy or export it again") from None
    video.full_shape = tuple(to_grey(first, video._where(0), channel).shape)
    check_roi(roi, video.full_shape, source)
    video.roi = roi
    return video
