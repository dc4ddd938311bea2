"""Tracking the default digital twin (twin.simulate + twin.render) against its truth."""
import json

import pytest

twin_params = pytest.importorskip("twin.params")
twin_render = pytest.importorskip("twin.render")
twin_simulate = pytest.importorskip("twin.simulate")
twin_lammps = pytest.importorskip("twin.lammps_env")

from twin_support import half_cycle_twin_video

from tracking import track_video
from tracking.checks import ImplausibleResultError


@pytest.fixture(scope="module")
def twin_tracking(tmp_path_factory):
    """Default twin, shortened to half a shear cycle (21 frames), rendered with the default microscope."""
    root = half_cycle_twin_video(tmp_path_factory.mktemp("twin"))
    video = json.loads((root / "video" / "metadata.json").read_text())
    return track_video(video["frames_path"], root / "tracking", {"locate": {"invert": video["dark_particles"]}},
                       pixel_size_um=video["pixel_size_um"], frame_rate_hz=video["frame_rate_hz"], processes=2,
                       truth_pixels=root / "video" / "truth_pixels.parquet")


def test_twin_links_and_detection(twin_tracking):
    # Automatic parameters throughout, as the workflow runs by default.
    accuracy = twin_tracking.accuracy
    assert accuracy["fraction_correct_links"] >= 0.99
    assert accuracy["fraction_missed"] < 0.01
    assert accuracy["fraction_spurious"] < 0.01


def test_twin_localisation_below_a_tenth_of_a_pixel(twin_tracking):
    # Over particles away from the edges: one cut by the edge of the image
    # has a biased centroid whatever the method (tracking/accuracy.py).
    assert twin_tracking.accuracy["localisation_rms_px"] < 0.1


def test_twin_contrast_is_detected_and_a_wrong_one_stops(twin_tracking, tmp_path):
    # The workflow passes the render's dark_particles; without it the contrast is detected.
    source = twin_tracking.qc["source"]
    units = {"pixel_size_um": twin_tracking.qc["units"]["pixel_size_um"],
             "frame_rate_hz": twin_tracking.qc["units"]["frame_rate_hz"]}
    auto = track_video(source, tmp_path / "auto", None, **units)
    assert auto.qc["auto"]["invert"]["used"] is True
    assert auto.qc["trajectories"] == twin_tracking.qc["trajectories"]
    # Tracked as fluorescence it once gave 1240 junk trajectories without a word; now one error...
    with pytest.raises(ImplausibleResultError, match="tracking.locate.invert is false"):
        track_video(source, tmp_path / "wrong", {"locate": {"invert": False}}, **units)
    # ...and with the contrast check off, the junk's short trajectories (88 % of its features) stop it.
    with pytest.raises(ImplausibleResultError, match="tracking.checks.max_short_fraction"):
        track_video(source, tmp_path / "wrong", {"locate": {"invert": False}, "checks": {"polarity": False}},
                    **units)
    assert not (tmp_path / "wrong").exists()


def test_twin_velocity_noise_floor(twin_tracking):
    # sigma from the truth: the frame-to-frame part of the position error, away from the edges.
    noise = twin_tracking.qc["velocity_noise"]
    assert noise["sigma_source"] == "truth"
    truth = noise["sigma_from_truth"]
    assert 0.005 < min(truth["sigma_px"]) and max(truth["sigma_px"]) < 0.05
    # Central differences: the white-noise floor is a lower bound of the velocity error the actual position
    # errors make; measured 1.13 times it over 81 frames (bench_velocity), because part of the error (neighbours' pull)
    # changes slowly, and a two-frame stencil sees more of it than white noise of the same sigma would give.
    for measured, predicted in zip(truth["velocity_noise_measured_px_s"], truth["velocity_noise_predicted_px_s"],
                                   strict=True):
        assert 0.95 * predicted < measured < 1.3 * predicted
    # The data's own estimate cannot tell the caged particles' anticorrelated steps from noise: it is larger,
    # and the negative lag-2 correlation of the steps says why.
    data = noise["sigma_from_data"]
    assert min(data["sigma_px"]) > max(truth["sigma_px"]) and max(data["lag2_correlation"]) < 0
