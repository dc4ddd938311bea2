"""Illumination flattening before locating: a flat background, and fewer misses under vignetting."""
import json
import sys

import numpy as np
import pytest
from twin_support import half_cycle_twin_video

from tracking import track_video
from tracking.flatten import flatten_frames
from tracking.params import ParameterError, from_config

twin_params = pytest.importorskip("twin.params")
twin_render = pytest.importorskip("twin.render")
twin_simulate = pytest.importorskip("twin.simulate")
twin_lammps = pytest.importorskip("twin.lammps_env")

VIGNETTING, GRADIENT = 0.6, 0.8  # corners 60 % darker than the centre, the right edge 80 % brighter than the left


def vignetted_frames(dark: bool, n_frames: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """12-bit frames of sparse disks under the twin's illumination profile; (frames, background mask, light)."""
    microscope = twin_params.MicroscopeParams(
        width_px=160, height_px=120,
        illumination=twin_params.IlluminationParams(vignetting=VIGNETTING, gradient=GRADIENT))
    light = twin_render.illumination_field(microscope)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:120, 0:160]
    frames, particles = [], np.zeros((120, 160), bool)
    for _ in range(n_frames):
        contrast = np.zeros((120, 160))
        for x, y in zip(np.arange(10, 160, 20.0), np.tile([20.0, 60.0, 100.0], 3), strict=False):
            disk = (xx - x - rng.uniform(-2, 2)) ** 2 + (yy - y) ** 2 < 25
            contrast[disk] = -0.7 if dark else 2.0
            particles |= (xx - x) ** 2 + (yy - y) ** 2 < 100
        frames.append(np.rint(light * 1500 * (1 + contrast) + rng.normal(0, 5, light.shape)).astype(np.uint16))
    return np.stack(frames), ~particles, light


@pytest.mark.parametrize("method", ["gaussian", "rolling_ball"])
@pytest.mark.parametrize("dark", [True, False])
def test_flattened_background_is_even(method, dark):
    if method == "rolling_ball":
        pytest.importorskip("skimage")
    frames, background, _ = vignetted_frames(dark)
    flat = flatten_frames(frames, method, 12.0, dark_particles=dark)
    assert flat.dtype == frames.dtype and flat.shape == frames.shape
    before = frames[0][background].std() / frames[0][background].mean()
    after = flat[0][background].astype(float).std() / flat[0][background].mean()
    # The illumination varies by 27 % (relative std) over the background; divided out, by a few per cent.
    assert before > 0.2 and after < before / 4, (before, after)
    # Grey levels stay on the frame's scale (the mean of the background is kept).
    assert flat[0][background].mean() == pytest.approx(frames[0][background].mean(), rel=0.25)
    assert flatten_frames(frames, "none", 12.0, dark) is frames


def test_flatten_parameters_are_checked(monkeypatch):
    with pytest.raises(ParameterError, match="tracking.locate.flatten "):
        from_config({"locate": {"flatten": "tophat"}})
    with pytest.raises(ParameterError, match="tracking.locate.flatten_size"):
        from_config({"locate": {"flatten": "gaussian", "flatten_size": 0}})
    # rolling_ball without scikit-image: one error naming the key and the install, before any work.
    from tracking.flatten import check_available

    monkeypatch.setitem(sys.modules, "skimage.restoration", None)
    with pytest.raises(ParameterError, match="pip install scikit-image"):
        check_available(from_config({"locate": {"flatten": "rolling_ball"}}).locate)


@pytest.fixture(scope="module")
def vignetted_twin(tmp_path_factory):
    """The default twin, half a shear cycle (21 frames), filmed in bright field under strong vignetting."""
    microscope = twin_params.MicroscopeParams(
        illumination=twin_params.IlluminationParams(vignetting=VIGNETTING, gradient=GRADIENT))
    return half_cycle_twin_video(tmp_path_factory.mktemp("vignetted"), microscope)


def track(root, flatten: str, tmp_path):
    video = json.loads((root / "video" / "metadata.json").read_text())
    # trackpy's centroids: what flattening changes for them (with psf_fit see docs/tracking.md)
    return track_video(video["frames_path"], tmp_path / flatten,
                       {"locate": {"invert": True, "flatten": flatten, "refine": "none"}},
                       pixel_size_um=video["pixel_size_um"], frame_rate_hz=video["frame_rate_hz"],
                       truth_pixels=root / "video" / "truth_pixels.parquet")


@pytest.mark.parametrize("method", ["gaussian", "rolling_ball"])
def test_flattening_finds_the_particles_in_the_dark_corners(vignetted_twin, tmp_path, method):
    if method == "rolling_ball":
        pytest.importorskip("skimage")
    plain = track(vignetted_twin, "none", tmp_path).accuracy
    flat = track(vignetted_twin, method, tmp_path)
    # Without flattening 16 % of the particles are missed, nearly all where the light is below 70 %;
    # flattened, 0.04 % (gaussian and rolling_ball alike, measured), and no localisation lost.
    assert plain["fraction_missed"] > 0.1
    assert flat.accuracy["fraction_missed"] < 0.01
    assert flat.accuracy["fraction_spurious"] <= plain["fraction_spurious"] + 0.005
    assert flat.accuracy["localisation_rms_px"] <= plain["localisation_rms_px"]
    assert flat.accuracy["fraction_correct_links"] >= 0.99
    assert flat.qc["auto"]["flatten"]["method"] == method
