"""Camera formats: a lazy frame reader and the file's own metadata, per format.

One job: for a Phantom ``.cine``, a Photron ``.mraw`` (with its ``.cihx`` or
``.cih`` header), a Nikon ``.nd2`` and a TIFF (OME-TIFF or ImageJ metadata),
open a pims-style reader that decodes one frame at a time (never the whole
file: a recording is often 10-100 GB) and read what the file says about itself:
frame rate, pixel size, exposure, bit depth, frame count and frame shape
(``FileMetadata``). Which value wins over the config is decided by
``tracking.source``; every value here is the file's alone, and ``None`` where
the format or the file does not say.

Readers:

* ``.cine``: ``pims.Cine`` (uncompressed monochrome, or interpolated colour);
  the frame rate is the SETUP's ``FrameRate``, the exposure its ``ShutterNs``.
  A cine holds no pixel size in the sample plane.
* ``.mraw``: the header is parsed by ``pyMRAW.get_cih`` (both ``.cih`` and
  ``.cihx``); frames are read here one at a time from their byte offset (8 and
  16 bit, and 12 bit packed, unpacked per frame: ``pyMRAW.load_video`` would
  unpack a 12-bit file whole into memory). A Photron header holds the record
  rate and the shutter speed, no pixel size.
* ``.nd2``: the maintained ``nd2`` package (``nd2.ND2File.read_frame``); the
  pixel size is the calibration of the first channel, the frame rate that of
  the time loop (the measured mean period where the file has it).
* TIFF: OME-XML ``Pixels`` ``PhysicalSizeX`` (+ unit) and ``TimeIncrement``
  (+ unit), or the planes' ``DeltaT``; ImageJ's ``finterval`` and the
  resolution tags when ImageJ's ``unit`` is microns.

Every problem raises ``tracking.io.TrackingInputError`` naming the file and the fix.
"""
from __future__ import annotations

import logging
import math
import os
import struct
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pims

log = logging.getLogger(__name__)

CINE_EXTENSIONS = (".cine",)
MRAW_EXTENSIONS = (".mraw", ".cihx", ".cih")  # the data file or either of its headers
ND2_EXTENSIONS = (".nd2",)
OME_TIFF_SUFFIXES = (".ome.tif", ".ome.tiff")

_EXPORT = "or export the recording as a multi-page (OME-)TIFF"


def _error(message: str) -> Exception:
    from .io import TrackingInputError  # tracking.io imports this module lazily; no cycle at import time

    return TrackingInputError(message)


def _positive(value) -> float | None:
    """A finite, positive float, else None (a file's 0 or NaN means 'not recorded')."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


@dataclass(frozen=True)
class FileMetadata:
    """What a video file says about itself; None where it says nothing.

    ``frame_rate_hz``: frames per second; ``pixel_size_um``: micrometres per
    pixel in the sample plane; ``exposure_s``: exposure per frame, s;
    ``bit_depth``: significant bits per pixel; ``shape``: (height, width) px.
    """

    format: str
    frame_rate_hz: float | None = None
    pixel_size_um: float | None = None
    exposure_s: float | None = None
    bit_depth: int | None = None
    n_frames: int | None = None
    shape: tuple[int, int] | None = None

    def to_dict(self) -> dict:
        record = asdict(self)
        record["shape"] = None if self.shape is None else list(self.shape)
        return record


# --- Phantom cine ----------------------------------------------------------------------------------------------------

def open_cine(path: str) -> tuple[pims.FramesSequence, FileMetadata]:
    """A ``pims.Cine`` reader of ``path`` and the cine's metadata, checked before any frame is decoded."""
    fix = "the file is truncated or corrupt; copy or export it again"
    with open(path, "rb") as handle:
        if handle.read(2) != b"CI":
            raise _error(f"{path}: not a Phantom cine (the file does not start with 'CI'); check that it is the "
                         f"recording, or export it from Phantom PCC again")
    try:
        reader = pims.Cine(path)
    except (struct.error, KeyError, TypeError, ValueError, IndexError, OSError) as error:
        raise _error(f"{path}: cannot be read as a Phantom cine ({type(error).__name__}: {error}); "
                     f"the header, setup or tagged blocks are incomplete — {fix}") from None
    bitmap, setup = reader.bitmapinfo_dict, reader.setup_fields_dict
    if reader.cfa == 0 and reader.compression != 0:
        reader.close()
        raise _error(f"{path}: a compressed monochrome cine (compression {reader.compression}) cannot be read; "
                     f"save it uncompressed in Phantom PCC, {_EXPORT}")
    if reader.cfa != 0 and reader.compression != 0:
        reader.close()
        raise _error(f"{path}: a raw (un-interpolated) colour cine cannot be read; save it interpolated "
                     f"in Phantom PCC, {_EXPORT}")
    n_frames = int(reader.image_count)
    locations = getattr(reader, "image_locations", [])
    size = os.path.getsize(path)
    if len(locations) != n_frames:
        reader.close()
        raise _error(f"{path}: the cine declares {n_frames} images but its offset table holds "
                     f"{len(locations)}; {fix}")
    if n_frames and int(locations[-1]) + 8 + int(bitmap["bi_image_size"]) > size:
        reader.close()
        raise _error(f"{path}: the last image lies past the end of the file ({size} bytes); {fix}")
    real_bpp = int(setup.get("real_bpp") or 0)
    bit_depth = real_bpp if 1 <= real_bpp <= 16 else {24: 8, 48: 16}.get(bitmap["bi_bit_count"],
                                                                         bitmap["bi_bit_count"])
    shutter_ns = setup.get("shutter_ns")
    metadata = FileMetadata(
        format="cine",
        frame_rate_hz=_positive(setup.get("frame_rate")),
        pixel_size_um=None,  # a cine records the sensor's pixels (BITMAPINFOHEADER), not the sample plane's
        exposure_s=None if _positive(shutter_ns) is None else float(shutter_ns) * 1e-9,
        bit_depth=int(bit_depth),
        n_frames=n_frames,
        shape=(abs(int(bitmap["bi_height"])), int(bitmap["bi_width"])),
    )
    return reader, metadata


# --- Photron MRAW ----------------------------------------------------------------------------------------------------

def mraw_files(path: str) -> tuple[str, str]:
    """(data file, header file) of a Photron recording named by either of them."""
    stem, suffix = os.path.splitext(path)
    if suffix.lower() == ".mraw":
        headers = [stem + ext for ext in (".cihx", ".cih", ".CIHX", ".CIH") if os.path.isfile(stem + ext)]
        if not headers:
            raise _error(f"{path}: the Photron header {Path(stem).name}.cihx (or .cih) is missing beside it; copy it "
                         f"with the .mraw file (it holds the frame size, bit depth and record rate)")
        return path, headers[0]
    datas = [stem + ext for ext in (".mraw", ".MRAW") if os.path.isfile(stem + ext)]
    if not datas:
        raise _error(f"{path}: the frames {Path(stem).name}.mraw are missing beside this Photron header; "
                     f"copy the .mraw file next to it")
    return datas[0], path


def _seconds(value) -> float | None:
    """A Photron shutter speed: a number of seconds or a fraction such as '1/5000'."""
    try:
        return _positive(float(Fraction(str(value).strip())))
    except (ValueError, ZeroDivisionError):
        return _positive(value)


class MrawFrames(pims.FramesSequence):
    """The frames of a Photron .mraw file, each read from its byte offset when asked for (lazy).

    8- and 16-bit frames are stored as little-endian integers, 12-bit frames
    packed (two pixels in three bytes, big-endian nibbles, as pyMRAW reads
    them). Data stored in the high bits of 16-bit words (EffectiveBit Side
    'Higher') are shifted down so that values fit ``effective_bits``.
    """

    def __init__(self, path: str, n_frames: int, height: int, width: int, bits: int, shift: int = 0):
        super().__init__()
        self.filename = path
        self._n, self._height, self._width, self._bits, self._shift = n_frames, height, width, bits, shift
        self._frame_bytes = height * width * bits // 8

    @property
    def frame_bytes(self) -> int:
        return self._frame_bytes

    @property
    def frame_shape(self):
        return (self._height, self._width)

    @property
    def pixel_type(self):
        return np.dtype(np.uint8 if self._bits == 8 else np.uint16)

    def __len__(self) -> int:
        return self._n

    def get_frame(self, i):
        with open(self.filename, "rb") as handle:
            handle.seek(int(i) * self._frame_bytes)
            data = handle.read(self._frame_bytes)
        if len(data) != self._frame_bytes:
            raise EOFError(f"frame {i} needs {self._frame_bytes} bytes, the file holds {len(data)} at its offset")
        if self._bits == 8:
            image = np.frombuffer(data, np.uint8).copy()
        elif self._bits == 16:
            image = np.frombuffer(data, "<u2").astype(np.uint16)
            if self._shift:
                image >>= self._shift
        else:  # 12 bit packed
            packed = np.frombuffer(data, np.uint8).reshape(-1, 3).astype(np.uint16)
            image = np.empty(packed.shape[0] * 2, np.uint16)
            image[0::2] = (packed[:, 0] << 4) | (packed[:, 1] >> 4)
            image[1::2] = ((packed[:, 1] & 0x0F) << 8) | packed[:, 2]
        return pims.Frame(image.reshape(self._height, self._width), frame_no=int(i))


def open_mraw(path: str) -> tuple[MrawFrames, FileMetadata]:
    """A lazy reader of a Photron recording (``.mraw``, ``.cihx`` or ``.cih`` path) and its header's metadata."""
    data_path, header_path = mraw_files(path)
    try:
        import pyMRAW
    except ImportError:
        raise _error(f"{path}: reading Photron MRAW needs the package pyMRAW, which is not installed; "
                     f"`pip install pyMRAW`, {_EXPORT}") from None
    try:
        cih = pyMRAW.get_cih(header_path)
    except Exception as error:  # noqa: BLE001 (pyMRAW raises bare Exception, xmltodict its own ExpatError)
        raise _error(f"{header_path}: cannot be read as a Photron header ({type(error).__name__}: {error}); "
                     f"copy or export the .cihx/.cih again") from None
    required = ("Total Frame", "Image Height", "Image Width", "Color Bit")
    missing = [key for key in required if key not in cih]
    if missing:
        raise _error(f"{header_path}: the Photron header lacks {', '.join(missing)}; copy or export it again")
    file_format = str(cih.get("File Format", "MRaw"))
    if file_format.lower() != "mraw":
        raise _error(f"{header_path}: the header describes {file_format!r} frames, not MRAW; "
                     f"point video.path at the exported frames instead")
    try:
        n_frames, height, width, bits = (int(cih[key]) for key in required)
    except (TypeError, ValueError):
        raise _error(f"{header_path}: frame count, size or bit depth is not a number; copy or export it again") \
            from None
    if bits not in (8, 12, 16):
        raise _error(f"{header_path}: {bits} bits per pixel (colour MRAW) cannot be read; pyMRAW reads monochrome "
                     f"8, 12 and 16 bit MRAW — {_EXPORT}")
    if bits == 12 and (height * width) % 2:
        raise _error(f"{header_path}: a 12-bit frame of {width}x{height} px has an odd pixel count; check the header")
    effective = int(cih.get("EffectiveBit Depth") or bits)
    side = str(cih.get("EffectiveBit Side", "Lower")).lower()
    shift = 16 - effective if bits == 16 and side == "higher" and 0 < effective < 16 else 0
    reader = MrawFrames(data_path, n_frames, height, width, bits, shift)
    size = os.path.getsize(data_path)
    if size < n_frames * reader.frame_bytes:
        raise _error(f"{data_path}: holds {size} bytes but the header declares {n_frames} frames of "
                     f"{reader.frame_bytes} bytes ({n_frames * reader.frame_bytes}); the file is truncated, or the "
                     f"header belongs to another recording — copy or export it again")
    metadata = FileMetadata(
        format="mraw",
        frame_rate_hz=_positive(cih.get("Record Rate(fps)")),
        pixel_size_um=None,  # a Photron header records no calibration
        exposure_s=_seconds(cih.get("Shutter Speed(s)")),
        bit_depth=min(effective, bits) if effective > 0 else bits,
        n_frames=n_frames,
        shape=(height, width),
    )
    return reader, metadata


# --- Nikon ND2 -------------------------------------------------------------------------------------------------------

class Nd2Frames(pims.FramesSequence):
    """The time series of an ND2 file through the ``nd2`` package, one frame read per request."""

    def __init__(self, handle, n_frames: int):
        super().__init__()
        self._file, self._n = handle, n_frames
        self.filename = handle.path
        self._shape = tuple(handle.shape[-3:] if handle.is_rgb else handle.shape[-2:])

    @property
    def frame_shape(self):
        return self._shape

    @property
    def pixel_type(self):
        return self._file.dtype

    def __len__(self) -> int:
        return self._n

    def get_frame(self, i):
        return pims.Frame(np.asarray(self._file.read_frame(int(i))), frame_no=int(i))

    def close(self):
        self._file.close()


def _nd2_frame_rate(handle) -> float | None:
    """Frames per second of an ND2's time loop: the measured mean period where recorded, else the set one."""
    for loop in handle.experiment:
        if loop.type == "TimeLoop":
            periods = [loop.parameters]
        elif loop.type == "NETimeLoop" and len(loop.parameters.periods) == 1:
            periods = loop.parameters.periods
        else:
            continue
        params = periods[0]
        measured = getattr(params.periodDiff, "avg", 0) if params.periodDiff is not None else 0
        period_ms = _positive(measured) or _positive(params.periodMs)
        if period_ms:
            return 1000.0 / period_ms
    return None


def _nd2_pixel_size(handle) -> float | None:
    metadata = handle.metadata
    channels = getattr(metadata, "channels", None) if metadata is not None else None
    if not channels:
        return None
    volume = channels[0].volume
    calibrated = getattr(volume, "axesCalibrated", (True,))
    return _positive(volume.axesCalibration[0]) if calibrated and calibrated[0] else None


def open_nd2(path: str) -> tuple[Nd2Frames, FileMetadata]:
    """A lazy reader of an ND2 time series (through the ``nd2`` package) and its metadata."""
    try:
        import nd2
    except ImportError:
        raise _error(f"{path}: reading ND2 files needs the package nd2, which is not installed; "
                     f"`pip install nd2`, {_EXPORT}") from None
    try:
        handle = nd2.ND2File(path)
    except Exception as error:  # noqa: BLE001 (nd2 raises ValueError, OSError, struct and parser errors)
        raise _error(f"{path}: cannot be read as an ND2 file ({type(error).__name__}: {error}); the file is corrupt "
                     f"or truncated — copy or export it again") from None
    try:
        sizes = dict(handle.sizes)
        others = {axis: n for axis, n in sizes.items() if axis not in ("T", "Y", "X", "S")}
        if others:
            listed = ", ".join(f"{axis}={n}" for axis, n in others.items())
            raise _error(f"{path}: the ND2 file has more than a time series of 2-D frames ({listed}; "
                         f"C channels, Z planes, P positions); tracking reads one: export one channel, plane and "
                         f"position in NIS-Elements, {_EXPORT}")
        n_frames = int(sizes.get("T", 1))
        bits = getattr(handle.attributes, "bitsPerComponentSignificant", None)
        metadata = FileMetadata(
            format="nd2",
            frame_rate_hz=_nd2_frame_rate(handle),
            pixel_size_um=_nd2_pixel_size(handle),
            exposure_s=None,
            bit_depth=int(bits) if bits else None,
            n_frames=n_frames,
            shape=(int(sizes["Y"]), int(sizes["X"])),
        )
        return Nd2Frames(handle, n_frames), metadata
    except Exception:
        handle.close()
        raise


# --- TIFF: OME-XML and ImageJ metadata --------------------------------------------------------------------------------

_LENGTH_UM = {"pm": 1e-6, "nm": 1e-3, "µm": 1.0, "um": 1.0, "\u03bcm": 1.0, "micron": 1.0, "mm": 1e3, "cm": 1e4,
              "m": 1e6, "Å": 1e-4}
_TIME_S = {"ps": 1e-12, "ns": 1e-9, "µs": 1e-6, "us": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0,
           "h": 3600.0}


def _quantity(element, name: str, units: dict, default_unit: str, path: str) -> float | None:
    value = _positive(element.get(name))
    if value is None:
        return None
    unit = element.get(name + "Unit", default_unit)
    if unit not in units:
        log.warning("%s: OME %s has the unit %r, which is not read; the value is ignored", path, name, unit)
        return None
    return value * units[unit]


def _ome_metadata(path: str, xml: str, n_pages: int) -> FileMetadata:
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as error:
        raise _error(f"{path}: the OME-XML metadata cannot be parsed ({error}); export the OME-TIFF again") from None
    namespace = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    images = root.findall(f"{namespace}Image")
    if not images or images[0].find(f"{namespace}Pixels") is None:
        raise _error(f"{path}: the OME-XML describes no image; export the OME-TIFF again")
    if len(images) > 1:
        raise _error(f"{path}: the OME-TIFF holds {len(images)} images (series or positions); tracking reads one "
                     f"time series — export one series as its own OME-TIFF")
    pixels = images[0].find(f"{namespace}Pixels")
    size = {axis: int(pixels.get(f"Size{axis}", 1)) for axis in "XYZCT"}
    channels = pixels.findall(f"{namespace}Channel")
    samples = int(channels[0].get("SamplesPerPixel", 1)) if channels else 1
    planes_c = size["C"] // samples if samples > 1 else size["C"]
    if size["Z"] > 1 or planes_c > 1:
        raise _error(f"{path}: the OME-TIFF has SizeZ={size['Z']} and SizeC={size['C']}; tracking reads one time "
                     f"series of 2-D frames — export one channel and one z-plane")
    if size["T"] != n_pages:
        raise _error(f"{path}: the OME-XML declares SizeT={size['T']} frames but the file holds {n_pages} pages "
                     f"(a multi-file OME-TIFF, or a truncated one); point video.path at one complete file, or "
                     f"export the series as one OME-TIFF")
    frame_rate = None
    increment = _quantity(pixels, "TimeIncrement", _TIME_S, "s", path)
    if increment:
        frame_rate = 1.0 / increment
    else:
        times = {}
        for plane in pixels.findall(f"{namespace}Plane"):
            delta = plane.get("DeltaT")
            if delta is not None:
                unit = _TIME_S.get(plane.get("DeltaTUnit", "s"))
                if unit is not None:
                    times[int(plane.get("TheT", 0))] = float(delta) * unit
        if len(times) >= 2:
            first, last = min(times), max(times)
            span = times[last] - times[first]
            frame_rate = (last - first) / span if span > 0 else None
    size_x = _quantity(pixels, "PhysicalSizeX", _LENGTH_UM, "µm", path)
    size_y = _quantity(pixels, "PhysicalSizeY", _LENGTH_UM, "µm", path)
    if size_x and size_y and not math.isclose(size_x, size_y, rel_tol=1e-3):
        log.warning("%s: pixels are not square (PhysicalSizeX %.6g µm, PhysicalSizeY %.6g µm); the tracking uses "
                    "PhysicalSizeX", path, size_x, size_y)
    exposure = None
    first_plane = pixels.find(f"{namespace}Plane")
    if first_plane is not None:
        exposure = _quantity(first_plane, "ExposureTime", _TIME_S, "s", path)
    bits = pixels.get("SignificantBits")
    return FileMetadata(format="ome-tiff", frame_rate_hz=frame_rate, pixel_size_um=size_x or size_y,
                        exposure_s=exposure, bit_depth=int(bits) if bits else None, n_frames=n_pages,
                        shape=(size["Y"], size["X"]))


def _imagej_metadata(tif, n_pages: int) -> FileMetadata:
    imagej = tif.imagej_metadata or {}
    frame_rate = None
    interval = _positive(imagej.get("finterval"))
    unit = _TIME_S.get(str(imagej.get("tunit", "s")).replace("sec", "s"))
    if interval and unit:
        frame_rate = 1.0 / (interval * unit)
    elif interval:
        log.warning("%s: ImageJ's frame interval has the unit %r, which is not read; it is ignored",
                    tif.filename, imagej.get("tunit"))
    pixel_size = None
    unit = str(imagej.get("unit", "")).replace("\\u00B5", "µ")
    if unit in ("micron", "um", "µm", "\u03bcm"):
        tag = tif.pages.first.tags.get("XResolution")
        if tag is not None:
            numerator, denominator = tag.value
            pixels_per_um = numerator / denominator if denominator else 0
            pixel_size = _positive(1.0 / pixels_per_um) if pixels_per_um > 0 else None
    page = tif.pages.first
    return FileMetadata(format="imagej-tiff", frame_rate_hz=frame_rate, pixel_size_um=pixel_size,
                        n_frames=n_pages, shape=tuple(int(n) for n in page.shape[:2]))


def tiff_metadata(path: str, n_pages: int) -> FileMetadata:
    """The OME-XML or ImageJ metadata of a (validated) TIFF of ``n_pages`` pages; format 'tiff' when it has none."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if tif.is_ome and tif.ome_metadata:
            return _ome_metadata(path, tif.ome_metadata, n_pages)
        if tif.is_imagej:
            return _imagej_metadata(tif, n_pages)
        page = tif.pages.first
        return FileMetadata(format="tiff", n_frames=n_pages, shape=tuple(int(n) for n in page.shape[:2]))


def open_camera_file(kind: str, path: str) -> tuple[pims.FramesSequence, FileMetadata]:
    """The reader and metadata of a camera file of ``kind`` 'cine', 'mraw' or 'nd2'."""
    opener = {"cine": open_cine, "mraw": open_mraw, "nd2": open_nd2}[kind]
    return opener(path)
