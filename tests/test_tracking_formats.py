"""Camera formats (Phantom cine, Photron MRAW, ND2, OME-TIFF, ImageJ TIFF): frames and metadata read back.

Each format is written here (tests/camera_files.py) with known pixels and known
metadata, then read through tracking.io.open_video and tracking.source.describe_video;
ND2 has no writer, so its reader is tested on a stand-in file object built from
the nd2 package's own metadata structures (dispatch, frames, frame rate, pixel
size, refused axes, errors), and on a real file only where one is found in
shared/data.
"""
import json
import logging
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile
from camera_files import write_cine, write_mraw_cih, write_mraw_cihx, write_ome_tiff

from mpd.config import ConfigError, validate_config
from tracking import TrackingInputError, track_video
from tracking.formats import MrawFrames
from tracking.io import SUPPORTED_EXTENSIONS, open_video, resolve_source
from tracking.source import describe_video, write_video_metadata

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = [REPO.parent / "shared" / "data", Path("/work/shared/data")]


def frames16(n=6, shape=(24, 32), seed=1, high=4096):
    return np.random.default_rng(seed).integers(0, high, (n, *shape), dtype=np.uint16)


def frames8(n=6, shape=(24, 32), seed=2):
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def assert_frames_equal(video, frames):
    assert len(video) == len(frames)
    for i, frame in enumerate(frames):
        image = video.read(i)
        assert image.dtype == frame.dtype and image.shape == frame.shape
        np.testing.assert_array_equal(image, frame)


# --- Phantom cine ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("frames, real_bpp, bits", [(frames8(), None, 8), (frames16(), 12, 12)])
def test_cine_frames_and_metadata_read_back(tmp_path, frames, real_bpp, bits):
    # 120 kHz: above what the old 16-bit FrameRate16 field can hold, so the 32-bit FrameRate must be the one read
    path = write_cine(tmp_path / "run.cine", frames, frame_rate_hz=120_000, exposure_s=2e-5, real_bpp=real_bpp)
    video = open_video(path)
    assert video.kind == "cine"
    assert_frames_equal(video, frames)
    meta = video.file_metadata
    assert (meta.format, meta.frame_rate_hz, meta.bit_depth, meta.n_frames, meta.shape) == \
        ("cine", 120_000.0, bits, len(frames), frames.shape[1:])
    assert meta.exposure_s == pytest.approx(2e-5)
    assert meta.pixel_size_um is None  # a cine has no calibration of the sample plane


def test_cine_frame_rate_from_the_file_when_the_config_gives_none(tmp_path):
    path = write_cine(tmp_path / "run.cine", frames16(), frame_rate_hz=2000)
    described = describe_video(str(path), pixel_size_um=0.5)
    assert described["frame_rate_hz"] == 2000.0 and described["pixel_size_um"] == 0.5
    assert described["format"] == "cine" and described["bit_depth"] == 16 and described["n_frames"] == 6
    assert described["sources"]["frame_rate_hz"] == {"config": None, "file": 2000.0, "used": 2000.0}
    assert described["sources"]["pixel_size_um"] == {"config": 0.5, "file": None, "used": 0.5}
    assert described["disagreements"] == []


def test_cine_without_a_pixel_size_names_the_key(tmp_path):
    path = write_cine(tmp_path / "run.cine", frames16(), frame_rate_hz=2000)
    with pytest.raises(TrackingInputError) as caught:
        describe_video(str(path), key="experiments.run.video")
    message = str(caught.value)
    assert "run.cine" in message and "experiments.run.video.pixel_size_um" in message and "cine" in message


@pytest.mark.parametrize("cut", [1, 500, 20_000])
def test_truncated_cine_is_one_clear_error(tmp_path, cut):
    path = write_cine(tmp_path / "cut.cine", frames16(), frame_rate_hz=100, truncate_bytes=cut)
    with pytest.raises(TrackingInputError) as caught:
        open_video(path)
    assert "cut.cine" in str(caught.value) and "truncated or corrupt" in str(caught.value)


def test_a_file_that_is_not_a_cine(tmp_path):
    path = tmp_path / "fake.cine"
    path.write_bytes(b"XX" + bytes(20_000))
    with pytest.raises(TrackingInputError, match=r"fake\.cine.*not a Phantom cine"):
        open_video(path)


# --- Photron MRAW ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("frames", [frames8(), frames16()], ids=["8bit", "16bit"])
@pytest.mark.parametrize("named", [".mraw", ".cih"])
def test_mraw_written_by_pymraw_reads_back(tmp_path, frames, named):
    mraw, cih = write_mraw_cih(tmp_path / "shot", frames, frame_rate_hz=20000, shutter="1/40000")
    video = open_video(mraw if named == ".mraw" else cih)
    assert video.kind == "mraw"
    assert_frames_equal(video, frames)
    meta = video.file_metadata
    assert (meta.format, meta.frame_rate_hz, meta.n_frames, meta.shape) == ("mraw", 20000.0, 6, (24, 32))
    assert meta.exposure_s == pytest.approx(1 / 40000)
    assert meta.bit_depth == (8 if frames.dtype == np.uint8 else 12)  # pyMRAW records 12 effective bits in 16


@pytest.mark.parametrize("bits, side", [(12, "Lower"), (16, "Higher"), (8, "Lower")])
def test_mraw_with_a_cihx_header(tmp_path, bits, side):
    frames = frames8() if bits == 8 else frames16()
    mraw, _ = write_mraw_cihx(tmp_path / "shot", frames, frame_rate_hz=125000, shutter_s=4e-6, bits=bits,
                              side=side)
    video = open_video(mraw)
    assert_frames_equal(video, frames)
    assert video.file_metadata.frame_rate_hz == 125000.0
    assert video.file_metadata.exposure_s == pytest.approx(4e-6)
    assert video.file_metadata.bit_depth == (8 if bits == 8 else 12)


def test_mraw_12bit_unpacking_agrees_with_pymraw(tmp_path):
    import pyMRAW

    frames = frames16(n=4, shape=(10, 14))
    _, cihx = write_mraw_cihx(tmp_path / "shot", frames, frame_rate_hz=1000, bits=12)
    theirs, _ = pyMRAW.load_video(str(cihx))  # unpacks the whole file; fine for four small frames
    video = open_video(cihx)
    for i in range(len(frames)):
        np.testing.assert_array_equal(video.read(i), np.asarray(theirs[i]))


def test_mraw_without_its_header_names_the_missing_file(tmp_path):
    mraw, cih = write_mraw_cih(tmp_path / "shot", frames16(), frame_rate_hz=1000)
    cih.unlink()
    with pytest.raises(TrackingInputError) as caught:
        open_video(mraw)
    assert "shot.mraw" in str(caught.value) and "shot.cihx" in str(caught.value) and "missing" in str(caught.value)


def test_mraw_header_without_its_frames(tmp_path):
    mraw, cih = write_mraw_cih(tmp_path / "shot", frames16(), frame_rate_hz=1000)
    mraw.unlink()
    with pytest.raises(TrackingInputError, match=r"shot\.mraw are missing"):
        open_video(cih)


def test_truncated_mraw_is_one_clear_error(tmp_path):
    mraw, _ = write_mraw_cih(tmp_path / "shot", frames16(), frame_rate_hz=1000)
    mraw.write_bytes(mraw.read_bytes()[:-100])
    with pytest.raises(TrackingInputError) as caught:
        open_video(mraw)
    assert "shot.mraw" in str(caught.value) and "truncated" in str(caught.value)


def test_colour_mraw_is_refused_with_the_fix(tmp_path):
    mraw, cihx = write_mraw_cihx(tmp_path / "shot", frames16(), frame_rate_hz=1000, bits=12)
    cihx.write_text(cihx.read_text().replace("<bit>12</bit>", "<bit>24</bit>"))
    with pytest.raises(TrackingInputError, match=r"shot\.cihx.*24 bits.*(OME-)?TIFF"):
        open_video(mraw)


# --- laziness: a reader never holds the whole file -------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["cine", "mraw", "ome-tiff"])
def test_reading_one_frame_costs_about_one_frame_of_memory(tmp_path, kind):
    frames = frames16(n=120, shape=(64, 64))  # 8 KiB a frame, ~1 MiB in all
    if kind == "cine":
        path = write_cine(tmp_path / "long.cine", frames, frame_rate_hz=1000)
    elif kind == "mraw":
        path, _ = write_mraw_cih(tmp_path / "long", frames, frame_rate_hz=1000)
    else:
        path = write_ome_tiff(tmp_path / "long.ome.tif", frames, pixel_size=0.2, time_increment=0.001)
    video = open_video(path)
    tracemalloc.start()
    try:
        image = video.read(97)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(image, frames[97])
    assert peak < 12 * frames[0].nbytes, f"{kind}: {peak} bytes traced to read one {frames[0].nbytes}-byte frame"


def test_mraw_reader_reads_only_the_frame_it_is_asked_for(tmp_path):
    frames = frames16(n=5, shape=(8, 8))
    mraw, _ = write_mraw_cih(tmp_path / "shot", frames, frame_rate_hz=1000)
    reader = MrawFrames(str(mraw), 5, 8, 8, 16)
    data = bytearray(mraw.read_bytes())
    data[: 3 * reader.frame_bytes] = b"\xff" * (3 * reader.frame_bytes)  # frames 0-2 overwritten, 3-4 intact
    mraw.write_bytes(bytes(data))
    np.testing.assert_array_equal(np.asarray(reader[4]), frames[4])
    assert (np.asarray(reader[0]) == 0xFFFF).all()


# --- OME-TIFF and ImageJ TIFF ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("pixel_size, unit, expected_um", [(0.345, "µm", 0.345), (250, "nm", 0.25)])
def test_ome_tiff_pixel_size_and_time_increment(tmp_path, pixel_size, unit, expected_um):
    frames = frames16()
    path = write_ome_tiff(tmp_path / "run.ome.tif", frames, pixel_size=pixel_size, pixel_unit=unit,
                          time_increment=4, time_unit="ms")
    video = open_video(path)
    assert video.kind == "tiff"
    assert_frames_equal(video, frames)
    meta = video.file_metadata
    assert meta.format == "ome-tiff" and meta.n_frames == 6 and meta.shape == (24, 32)
    assert meta.pixel_size_um == pytest.approx(expected_um) and meta.frame_rate_hz == pytest.approx(250.0)
    described = describe_video(str(path))  # no config units at all: both from the file
    assert described["pixel_size_um"] == pytest.approx(expected_um) and described["frame_rate_hz"] == \
        pytest.approx(250.0)


def test_ome_tiff_frame_rate_from_the_planes_delta_t(tmp_path):
    path = write_ome_tiff(tmp_path / "run.ome.tif", frames16(n=5), pixel_size=0.2,
                          delta_t=[0.0, 0.02, 0.04, 0.06, 0.08])
    assert open_video(path).file_metadata.frame_rate_hz == pytest.approx(50.0)


def test_ome_tiff_with_channels_is_refused(tmp_path):
    frames = frames16(n=4).reshape(2, 2, 24, 32)
    path = write_ome_tiff(tmp_path / "two.ome.tif", frames, pixel_size=0.2, axes="TCYX")
    with pytest.raises(TrackingInputError, match=r"two\.ome\.tif.*SizeC=2.*export one channel"):
        open_video(path)


def test_plain_tiff_has_no_metadata_and_needs_the_config(tmp_path):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, frames16(), photometric="minisblack")
    assert open_video(path).file_metadata.format == "tiff"
    with pytest.raises(TrackingInputError) as caught:
        describe_video(str(path), pixel_size_um=0.3)
    assert "plain.tif" in str(caught.value) and "video.frame_rate_hz" in str(caught.value)


def test_imagej_tiff_interval_and_resolution(tmp_path):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, frames16(), imagej=True, resolution=(1 / 0.4, 1 / 0.4),
                     metadata={"axes": "TYX", "unit": "um", "finterval": 0.05})
    meta = open_video(path).file_metadata
    assert meta.format == "imagej-tiff"
    assert meta.pixel_size_um == pytest.approx(0.4) and meta.frame_rate_hz == pytest.approx(20.0)


# --- precedence: config over file, disagreement reported -------------------------------------------------------------

def test_config_that_disagrees_with_the_file_wins_and_is_reported(tmp_path, caplog):
    path = write_ome_tiff(tmp_path / "run.ome.tif", frames16(), pixel_size=0.25, time_increment=0.01)
    out = tmp_path / "video" / "metadata.json"
    section = {"path": str(path), "pixel_size_um": 0.3, "frame_rate_hz": 100.0}
    with caplog.at_level(logging.WARNING, logger="tracking.source"):
        written = write_video_metadata(section, out, key="experiments.run.video")
    stored = json.loads(out.read_text())
    assert stored == written
    assert stored["pixel_size_um"] == 0.3 and stored["frame_rate_hz"] == 100.0
    assert stored["sources"]["pixel_size_um"] == {"config": 0.3, "file": pytest.approx(0.25), "used": 0.3,
                                                  "disagree": True}
    assert "disagree" not in stored["sources"]["frame_rate_hz"]  # 1/0.01 s = 100 Hz: the two agree
    assert stored["disagreements"] == ["pixel_size_um"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "experiments.run.video.pixel_size_um = 0.3" in warnings[0] and "0.25" in warnings[0]


def test_config_that_agrees_within_rounding_is_not_a_disagreement(tmp_path):
    path = write_ome_tiff(tmp_path / "run.ome.tif", frames16(), pixel_size=1 / 2.85, time_increment=1 / 30)
    described = describe_video(str(path), pixel_size_um=0.3509, frame_rate_hz=30.0)
    assert described["disagreements"] == []


def test_movie_and_image_sequences_keep_requiring_both_units(tmp_path):
    folder = tmp_path / "seq"
    folder.mkdir()
    for i, frame in enumerate(frames8(n=3)):
        tifffile.imwrite(folder / f"f{i}.tif", frame)
    with pytest.raises(TrackingInputError) as caught:
        describe_video(str(folder), frame_rate_hz=10.0, key="experiments.s.video")
    assert "experiments.s.video.pixel_size_um" in str(caught.value)


def test_the_config_schema_asks_only_for_what_the_format_cannot_record():
    def check(video):
        return validate_config({"experiments": {"run": {"video": video}}}, check_paths=False)

    check({"path": "a.nd2"})
    check({"path": "a.ome.tif"})
    check({"path": "a.OME.TIFF"})
    check({"path": "a.cine", "pixel_size_um": 0.2})
    check({"path": "a.mraw", "pixel_size_um": 0.2})
    check({"path": "a.cihx", "pixel_size_um": 0.2})
    for video, key in [({"path": "a.cine"}, "pixel_size_um"), ({"path": "a.tif", "pixel_size_um": 1}, "frame_rate_hz"),
                       ({"path": "a.avi", "frame_rate_hz": 1}, "pixel_size_um")]:
        with pytest.raises(ConfigError, match=rf"experiments\.run\.video\.{key}"):
            check(video)


# --- ND2: no writer exists ------------------------------------------------------------------------------------------

def test_nd2_goes_to_the_nd2_package_and_a_damaged_file_is_one_clear_error(tmp_path):
    pytest.importorskip("nd2")
    path = tmp_path / "broken.nd2"
    path.write_bytes(b"this is not an nd2 file" * 100)
    assert resolve_source(path)[0] == "nd2"
    with pytest.raises(TrackingInputError) as caught:
        open_video(path)
    assert "broken.nd2" in str(caught.value) and "cannot be read as an ND2 file" in str(caught.value)


def test_nd2_without_the_nd2_package_names_the_package(tmp_path, monkeypatch):
    path = tmp_path / "run.nd2"
    path.write_bytes(b"\0" * 4096)
    monkeypatch.setitem(sys.modules, "nd2", None)  # how Python marks a module as not importable
    with pytest.raises(TrackingInputError) as caught:
        open_video(path)
    assert "run.nd2" in str(caught.value) and "pip install nd2" in str(caught.value)


class _Nd2Stand_in:
    """An ``nd2.ND2File`` stand-in holding frames and the package's own metadata structures.

    No ND2 writer exists, so this is how the adapter's reading of them (the time
    loop's measured or set period, the calibrated pixel size, the axes it
    refuses) is tested; the objects are nd2.structures' dataclasses, so a
    renamed field in the package fails here.
    """

    def __init__(self, frames, experiment, pixel_um, sizes=None):
        import nd2.structures as s

        self.path, self._frames, self.experiment = "stand-in.nd2", frames, experiment
        self.sizes = sizes or {"T": len(frames), "Y": frames.shape[1], "X": frames.shape[2]}
        self.shape, self.dtype, self.is_rgb = frames.shape, frames.dtype, False
        self.attributes = s.Attributes(bitsPerComponentInMemory=16, bitsPerComponentSignificant=12,
                                       componentCount=1, heightPx=frames.shape[1], pixelDataType="unsigned",
                                       sequenceCount=len(frames), widthPx=frames.shape[2])
        volume = s.Volume(axesCalibrated=(pixel_um is not None, pixel_um is not None, False),
                          axesCalibration=(pixel_um or 1.0, pixel_um or 1.0, 1.0),
                          axesInterpretation=("distance", "distance", "distance"),
                          bitsPerComponentInMemory=16, bitsPerComponentSignificant=12,
                          cameraTransformationMatrix=(1.0, 0.0, 0.0, 1.0), componentCount=1,
                          componentDataType="unsigned", voxelCount=(frames.shape[2], frames.shape[1], 1))
        self.metadata = s.Metadata(channels=[s.Channel(channel=None, loops=None, microscope=None, volume=volume)])
        self.closed = False

    def read_frame(self, i):
        return self._frames[i]

    def close(self):
        self.closed = True


def _time_loop(period_ms, measured_ms=0.0, nested=False):
    import nd2.structures as s

    diff = s.PeriodDiff(avg=measured_ms, max=measured_ms, min=measured_ms)
    if nested:
        period = s.Period(startMs=0.0, periodMs=period_ms, durationMs=0.0, periodDiff=diff, count=6)
        return s.NETimeLoop(count=6, nestingLevel=0, parameters=s.NETimeLoopParams(periods=[period]))
    return s.TimeLoop(count=6, nestingLevel=0,
                      parameters=s.TimeLoopParams(startMs=0.0, periodMs=period_ms, durationMs=0.0, periodDiff=diff))


@pytest.mark.parametrize("loop, pixel_um, rate_hz", [
    ((10.0, 8.0, False), 0.325, 125.0),   # the measured mean period wins over the set one
    ((10.0, 0.0, False), 0.325, 100.0),   # none measured: the set period
    ((4.0, 0.0, True), None, 250.0),      # a one-phase NIS "ND" time loop; uncalibrated pixels
    (None, 0.5, None),                    # no time loop at all: the config must give the rate
], ids=["measured", "set", "ne_loop_uncalibrated", "no_loop"])
def test_nd2_frames_and_metadata_through_the_nd2_package_structures(tmp_path, monkeypatch, loop, pixel_um,
                                                                     rate_hz):
    nd2 = pytest.importorskip("nd2")
    frames = frames16()
    experiment = [] if loop is None else [_time_loop(loop[0], measured_ms=loop[1], nested=loop[2])]
    handle = _Nd2Stand_in(frames, experiment, pixel_um)
    monkeypatch.setattr(nd2, "ND2File", lambda path: handle)
    path = tmp_path / "run.nd2"
    path.write_bytes(b"\0" * 64)
    video = open_video(path)
    assert video.kind == "nd2"
    assert_frames_equal(video, frames)
    meta = video.file_metadata
    assert (meta.format, meta.bit_depth, meta.n_frames, meta.shape) == ("nd2", 12, len(frames), frames.shape[1:])
    assert meta.frame_rate_hz == (pytest.approx(rate_hz) if rate_hz else None)
    assert meta.pixel_size_um == (pytest.approx(pixel_um) if pixel_um else None)


def test_nd2_with_channels_or_planes_is_refused_naming_the_axes(tmp_path, monkeypatch):
    nd2 = pytest.importorskip("nd2")
    frames = frames16()
    handle = _Nd2Stand_in(frames, [_time_loop(10.0)], 0.3, sizes={"T": 3, "C": 2, "Y": 24, "X": 32})
    monkeypatch.setattr(nd2, "ND2File", lambda path: handle)
    path = tmp_path / "multi.nd2"
    path.write_bytes(b"\0" * 64)
    with pytest.raises(TrackingInputError) as caught:
        open_video(path)
    message = str(caught.value)
    assert "multi.nd2" in message and "C=2" in message and "export one channel" in message
    assert handle.closed  # the refused file is not left open


def _nd2_samples():
    return sorted({p for folder in SHARED_DATA if folder.is_dir() for p in folder.rglob("*.nd2")})


@pytest.mark.skipif(not _nd2_samples(), reason="no ND2 file can be written (the nd2 package only reads) and none "
                                                  "is in shared/data; the reader is tested on a stand-in file object")
def test_real_nd2_sample_reads_frames_and_metadata():
    import nd2

    path = _nd2_samples()[0]
    video = open_video(path)
    with nd2.ND2File(path) as handle:
        np.testing.assert_array_equal(np.asarray(video.reader[0]), handle.read_frame(0))
    assert video.file_metadata.format == "nd2" and video.file_metadata.n_frames == len(video)


# --- the formats as inputs of the tracking stage ---------------------------------------------------------------------

def spot_frames(n_frames=4, shape=(64, 80)):
    """Nine Gaussian spots moving 0.3 px a frame on a noisy background (as tests/test_tracking_inputs.py)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    frames = []
    for frame in range(n_frames):
        image = 20.0 + rng.normal(0, 2, shape)
        for x in (16, 40, 64):
            for y in (14, 32, 50):
                image += 150 * np.exp(-((xx - x - 0.3 * frame) ** 2 + (yy - y) ** 2) / (2 * 1.5**2))
        frames.append(np.clip(np.rint(image), 0, 255).astype(np.uint8))
    return np.stack(frames)


@pytest.mark.parametrize("kind", ["cine", "mraw"])
def test_camera_files_track(tmp_path, kind):
    frames = spot_frames()
    if kind == "cine":
        path = write_cine(tmp_path / "spots.cine", frames, frame_rate_hz=10)
    else:
        path, _ = write_mraw_cih(tmp_path / "spots", frames, frame_rate_hz=10)
    params = {"locate": {"refine": "none"}}  # nine spots are too few for the PSF fit, which would only warn
    result = track_video(path, tmp_path / "out", params, pixel_size_um=0.5, frame_rate_hz=10.0)
    assert result.qc["features_per_frame"]["median"] == 9


def test_unsupported_extension_lists_the_camera_formats(tmp_path):
    path = tmp_path / "run.xyz"
    path.write_bytes(b"1")
    with pytest.raises(TrackingInputError) as caught:
        open_video(path)
    for ext in (".cine", ".mraw", ".cihx", ".nd2"):
        assert ext in SUPPORTED_EXTENSIONS and ext in str(caught.value)
