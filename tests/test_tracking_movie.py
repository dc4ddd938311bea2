"""Movies decoded by OpenCV (optional): the same frames as imageio-ffmpeg, and the same tracking."""
import imageio.v2 as imageio
import numpy as np
import pims
import pytest

from tracking import TrackingInputError, track_video
from tracking import movie as movie_module
from tracking.io import open_video

cv2 = pytest.importorskip("cv2")

N_FRAMES = 12


def spots(n_frames=N_FRAMES, shape=(96, 128)) -> np.ndarray:
    """Bright Gaussian spots on a grey background, moving by a fraction of a pixel per frame."""
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    frames = []
    for frame in range(n_frames):
        image = np.full(shape, 40.0)
        for y in range(16, shape[0] - 8, 20):
            for x in range(16, shape[1] - 8, 20):
                xc, yc = x + 0.3 * frame + 0.1 * y / 20, y + 0.2 * frame
                image += 180 * np.exp(-((cols - xc) ** 2 + (rows - yc) ** 2) / (2 * 2.0**2))
        frames.append(np.clip(image, 0, 255).astype(np.uint8))
    return np.stack(frames)


@pytest.fixture(scope="module", params=[".avi", ".mp4"])
def movie(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("movie") / f"spots{request.param}"
    frames = spots()
    writer = imageio.get_writer(path, fps=10, macro_block_size=16)
    for frame in frames:
        writer.append_data(np.dstack([frame] * 3))
    writer.close()
    return path, frames


def test_opencv_and_imageio_decode_the_same_frames(movie):
    path, frames = movie
    ours = movie_module.OpenCVReader(str(path))
    reader = pims.ImageIOReader(str(path))
    assert len(ours) == len(reader) == N_FRAMES
    reference = [np.asarray(frame) for frame in reader]  # in order: imageio's reader cannot seek back
    for index in (0, 5, N_FRAMES - 1, 2):  # sequential, a jump ahead, the last frame, and back
        a, b = np.asarray(ours[index]), reference[index]
        assert a.shape == b.shape == (*frames.shape[1:], 3) and a.dtype == np.uint8
        # Same FFmpeg decoder; the YUV to RGB conversion may round differently on lossy codecs.
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 1.0
        assert np.abs(a[..., 1].astype(int) - frames[index]).mean() < 3  # lossy, but the same picture


def test_open_video_prefers_opencv_and_falls_back(movie, monkeypatch):
    path, _ = movie
    assert isinstance(open_video(path).reader, movie_module.OpenCVReader)
    monkeypatch.setattr(movie_module, "opencv_available", lambda: False)
    assert isinstance(open_video(path).reader, pims.ImageIOReader)


def test_tracking_a_movie_with_either_decoder_agrees(movie, tmp_path, monkeypatch):
    path, _ = movie
    units = {"pixel_size_um": 0.5, "frame_rate_hz": 10}
    params = {"locate": {"invert": False, "diameter": 11}}
    with_opencv = track_video(path, tmp_path / "cv", params, **units)
    monkeypatch.setattr(movie_module, "opencv_available", lambda: False)
    with_imageio = track_video(path, tmp_path / "imageio", params, **units)
    assert with_opencv.qc["reader"] == "OpenCVReader" and with_imageio.qc["reader"] == "ImageIOReader"
    a, b = with_opencv.features, with_imageio.features
    assert len(a) == len(b) and len(a) >= N_FRAMES * 20
    np.testing.assert_allclose(a[["x_px", "y_px"]], b[["x_px", "y_px"]], atol=0.05)


def test_a_truncated_movie_is_one_clear_error(movie, tmp_path):
    path, _ = movie
    broken = tmp_path / f"broken{path.suffix}"
    broken.write_bytes(path.read_bytes()[:300])
    with pytest.raises(TrackingInputError, match="broken"):
        open_video(broken).read(N_FRAMES - 1)
