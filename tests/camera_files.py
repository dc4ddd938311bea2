"""Small camera files written by the tests: Phantom cine, Photron MRAW (.cih and .cihx), OME-TIFF.

No sample of these formats ships with the repository, and the real ones are
gigabytes; each writer here makes the smallest file its reader accepts, with
known pixels and known metadata, so that a test can compare what comes back.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import tifffile

# --- Phantom cine ---------------------------------------------------------------------------------------------------
# Vision Research "Cine file format" (Phantom SDK documentation): a CINEFILEHEADER (44 bytes), a
# BITMAPINFOHEADER (40 bytes), the SETUP structure (packed, no alignment), tagged information blocks, the
# table of 64-bit image offsets (pImage) and the images, each an annotation (its size first, then the image
# size) followed by the pixels, rows stored bottom-up. The SETUP offsets below are those of the packed
# structure of Phantom software version 702+, whose length is 7240 bytes (the field order pims.cine follows).
CINE_HEADER = struct.Struct("<2sHHHiIiIIIIQ")  # Type .. OffImageOffsets, TriggerTime
BITMAPINFOHEADER = struct.Struct("<IiiHHIIiiII")
SETUP_LENGTH = 7240
SETUP_OFFSETS = {  # field: (byte offset in SETUP, struct format)
    "FrameRate16": (0, "H"),
    "Mark": (140, "2s"),
    "Length": (142, "H"),
    "ImWidth": (737, "H"),
    "ImHeight": (739, "H"),
    "FrameRate": (768, "I"),
    "Shutter": (772, "I"),  # µs (obsolete, kept for old readers)
    "bEnableColor": (788, "i"),
    "SoftwareVersion": (800, "I"),
    "CFA": (808, "I"),
    "RealBPP": (896, "I"),
    "ShutterNs": (1568, "I"),
}
TAG_TIME_ONLY, TAG_EXPOSURE_ONLY = 1002, 1003


def write_cine(path, frames: np.ndarray, *, frame_rate_hz: int, exposure_s: float = 1e-4,
               real_bpp: int | None = None, truncate_bytes: int = 0) -> Path:
    """A monochrome, uncompressed cine of ``frames`` (n, height, width), uint8 or uint16.

    ``real_bpp`` is the camera's bit depth recorded in SETUP (default: the
    stored one); ``truncate_bytes`` cuts that many bytes off the end (a
    damaged copy).
    """
    frames = np.asarray(frames)
    n, height, width = frames.shape
    bits = {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}[frames.dtype]
    image_size = height * width * bits // 8
    off_bitmap, off_setup = CINE_HEADER.size, CINE_HEADER.size + BITMAPINFOHEADER.size
    seconds = 1_700_000_000

    setup = bytearray(SETUP_LENGTH)
    values = {"FrameRate16": min(frame_rate_hz, 65535), "Mark": b"ST", "Length": SETUP_LENGTH, "ImWidth": width,
              "ImHeight": height, "FrameRate": frame_rate_hz, "Shutter": round(exposure_s * 1e6),
              "bEnableColor": 0, "SoftwareVersion": 800, "CFA": 0, "RealBPP": real_bpp or bits,
              "ShutterNs": round(exposure_s * 1e9)}
    for name, value in values.items():
        offset, fmt = SETUP_OFFSETS[name]
        struct.pack_into("<" + fmt, setup, offset, value)

    # Tagged blocks: BlockSize (uint32), Type (uint16), Reserved (uint16: nonzero while more blocks follow).
    times = [((seconds + (i // frame_rate_hz)) << 32) | int((i % frame_rate_hz) / frame_rate_hz * 2**32)
             for i in range(n)]
    time_block = struct.pack(f"<IHH{n}Q", 8 + 8 * n, TAG_TIME_ONLY, 1, *times)
    exposure_block = struct.pack(f"<IHH{n}I", 8 + 4 * n, TAG_EXPOSURE_ONLY, 0, *[round(exposure_s * 2**32)] * n)
    tagged = time_block + exposure_block
    off_offsets = off_setup + SETUP_LENGTH + len(tagged)
    first_image = off_offsets + 8 * n
    locations = [first_image + i * (8 + image_size) for i in range(n)]

    header = CINE_HEADER.pack(b"CI", CINE_HEADER.size, 0, 1, 0, n, 0, n, off_bitmap, off_setup, off_offsets,
                              seconds << 32)
    bitmap = BITMAPINFOHEADER.pack(BITMAPINFOHEADER.size, width, height, 1, bits, 0, image_size, 100_000, 100_000, 0, 0)
    body = bytearray(header + bitmap + setup + tagged + struct.pack(f"<{n}Q", *locations))
    for frame in frames:
        body += struct.pack("<II", 8, image_size)  # annotation: its own size (8: no annotation data), image size
        body += np.ascontiguousarray(frame[::-1]).astype(frame.dtype.newbyteorder("<")).tobytes()  # bottom-up rows
    path = Path(path)
    path.write_bytes(bytes(body[: len(body) - truncate_bytes]))
    return path


# --- Photron MRAW ---------------------------------------------------------------------------------------------------

def write_mraw_cih(path, frames: np.ndarray, *, frame_rate_hz: float, shutter: str = "1/10000") -> tuple[Path, Path]:
    """(path.mraw, path.cih) written by pyMRAW.save_mraw: 8 bit for uint8 frames, 16 bit for uint16."""
    import pyMRAW

    frames = np.asarray(frames)
    bits = 8 if frames.dtype == np.uint8 else 16
    mraw, cih = pyMRAW.save_mraw(frames, str(Path(path).with_suffix(".cih")), bit_depth=bits,
                                 info_dict={"Record Rate(fps)": frame_rate_hz, "Shutter Speed(s)": shutter})
    return Path(mraw), Path(cih)


def pack_12bit(frames: np.ndarray) -> bytes:
    """Photron's 12-bit packing: two pixels a, b in three bytes a[11:4], a[3:0]b[11:8], b[7:0]."""
    flat = np.asarray(frames, dtype=np.uint16).reshape(-1, 2)
    a, b = flat[:, 0], flat[:, 1]
    packed = np.stack([a >> 4, ((a & 0x0F) << 4) | (b >> 8), b & 0xFF], axis=1).astype(np.uint8)
    return packed.tobytes()


CIHX = """<?xml version="1.0" encoding="UTF-8" ?>
<cih>
<fileInfo><date>2024/01/01</date><time>12:00:00</time></fileInfo>
<deviceInfo><deviceName>FASTCAM test</deviceName></deviceInfo>
<basicInfo><comment>written by tests/camera_files.py</comment></basicInfo>
<recordInfo><recordRate>{rate}</recordRate><shutterSpeed>{shutter}</shutterSpeed></recordInfo>
<frameInfo><totalFrame>{n}</totalFrame><recordedFrame>{n}</recordedFrame><startFrame>0</startFrame></frameInfo>
<imageDataInfo>
<resolution><width>{width}</width><height>{height}</height></resolution>
<colorInfo><type>Mono</type><bit>{bits}</bit></colorInfo>
<effectiveBit><depth>{effective}</depth><side>{side}</side></effectiveBit>
</imageDataInfo>
<imageFileInfo><fileFormat>MRaw</fileFormat></imageFileInfo>
</cih>
"""


def write_mraw_cihx(path, frames: np.ndarray, *, frame_rate_hz: float, shutter_s: float = 5e-5, bits: int = 12,
                    side: str = "Lower") -> tuple[Path, Path]:
    """(path.mraw, path.cihx): a .cihx (XML) header, frames 12-bit packed or 8/16 bit little-endian.

    With ``side='Higher'`` and 16 bits the 12 significant bits are stored in
    the high bits of each word, as Photron cameras may.
    """
    frames = np.asarray(frames, dtype=np.uint16 if bits > 8 else np.uint8)
    n, height, width = frames.shape
    mraw, cihx = Path(path).with_suffix(".mraw"), Path(path).with_suffix(".cihx")
    if bits == 12:
        data = pack_12bit(frames)
    elif bits == 16:
        data = (frames << (4 if side == "Higher" else 0)).astype("<u2").tobytes()
    else:
        data = frames.tobytes()
    mraw.write_bytes(data)
    cihx.write_text(CIHX.format(rate=frame_rate_hz, shutter=shutter_s, n=n, width=width, height=height, bits=bits,
                                effective=12 if bits > 8 else 8, side=side))
    return mraw, cihx


# --- OME-TIFF -------------------------------------------------------------------------------------------------------

def write_ome_tiff(path, frames: np.ndarray, *, pixel_size=None, pixel_unit: str = "µm", time_increment=None,
                   time_unit: str = "s", delta_t=None, axes: str = "TYX") -> Path:
    """An OME-TIFF by tifffile, with PhysicalSizeX/Y, TimeIncrement and per-plane DeltaT where given."""
    metadata: dict = {"axes": axes}
    if pixel_size is not None:
        metadata.update(PhysicalSizeX=pixel_size, PhysicalSizeXUnit=pixel_unit, PhysicalSizeY=pixel_size,
                        PhysicalSizeYUnit=pixel_unit)
    if time_increment is not None:
        metadata.update(TimeIncrement=time_increment, TimeIncrementUnit=time_unit)
    if delta_t is not None:
        metadata["Plane"] = {"DeltaT": list(delta_t), "DeltaTUnit": [time_unit] * len(delta_t)}
    tifffile.imwrite(path, frames, ome=True, photometric="minisblack", metadata=metadata)
    return Path(path)
