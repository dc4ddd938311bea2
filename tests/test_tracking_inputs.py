"""Reading inputs, and one clear error (with no partial output) for each bad one."""
import importlib.resources
import importlib.util

import imageio.v2 as imageio
import jsonschema
import numpy as np
import pytest
import tifffile
import yaml

from tracking import ParameterError, TrackingInputError, from_config, track_video
from tracking.io import open_video, to_grey
from tracking.params import TrackingParams, to_dict

SCHEMA = yaml.safe_load((importlib.resources.files("tracking") / "config_schema.yaml").read_text())


def spot_frames(n_frames=4, shape=(64, 80), seed=0, dtype=np.uint8):
    """Frames with nine Gaussian spots (sigma 1.5 px) on a noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    centres = [(x, y) for x in (16, 40, 64) for y in (14, 32, 50)]
    frames = []
    for frame in range(n_frames):
        image = 20.0 + rng.normal(0, 2, shape)
        for x, y in centres:
            image += 150 * np.exp(-((xx - x - 0.3 * frame) ** 2 + (yy - y) ** 2) / (2 * 1.5**2))
        frames.append(np.clip(np.rint(image), 0, 255).astype(dtype))
    return np.stack(frames)


def write_tiff(path, frames):
    tifffile.imwrite(path, frames, photometric="minisblack")  # one grey page per frame


def run(source, out_dir, **kwargs):
    kwargs.setdefault("pixel_size_um", 0.5)
    kwargs.setdefault("frame_rate_hz", 10.0)
    return track_video(source, out_dir, kwargs.pop("params", None), **kwargs)


def assert_one_clear_error(source, tmp_path, *fragments, error=TrackingInputError, **kwargs):
    """Exactly one exception of the type, naming each fragment; nothing written beside out_dir."""
    before = set(tmp_path.iterdir())
    out_dir = tmp_path / "out"
    with pytest.raises(error) as caught:
        run(source, out_dir, **kwargs)
    message = str(caught.value)
    for fragment in fragments:
        assert str(fragment) in message, message
    assert not out_dir.exists()
    assert set(tmp_path.iterdir()) == before  # no temporary directory left behind
    return message


def test_good_tiff_tracks(tmp_path):
    write_tiff(tmp_path / "video.tif", spot_frames())
    result = run(tmp_path / "video.tif", tmp_path / "out")
    assert result.qc["features_per_frame"]["median"] == 9
    assert (tmp_path / "out" / "trajectories.parquet").is_file()


def test_truncated_tiff(tmp_path):
    path = tmp_path / "video.tif"
    with tifffile.TiffWriter(path) as writer:  # one page at a time: IFD, data, IFD, data ...
        for frame in spot_frames(n_frames=6, dtype=np.uint16):
            writer.write(frame, contiguous=False, photometric="minisblack")
    data = path.read_bytes()
    for cut, name in ((len(data) - 300, "cut_end.tif"), (len(data) // 2, "cut_half.tif")):
        (tmp_path / name).write_bytes(data[:cut])
    path.unlink()
    for name in ("cut_end.tif", "cut_half.tif"):
        assert_one_clear_error(tmp_path / name, tmp_path, name, "truncated")


def test_truncated_contiguous_tiff_with_declared_shape(tmp_path):
    path = tmp_path / "stack.tif"
    write_tiff(path, spot_frames(n_frames=6))  # contiguous, the shape declared in its description
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_one_clear_error(path, tmp_path, "stack.tif", "truncated")


def test_corrupt_tiff(tmp_path):
    path = tmp_path / "garbage.tif"
    path.write_bytes(b"this is not a tiff file" * 20)
    assert_one_clear_error(path, tmp_path, "garbage.tif", "corrupt")


def test_empty_folder_and_glob_matching_nothing(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    assert_one_clear_error(folder, tmp_path, str(folder), "no image file")
    assert_one_clear_error(str(folder / "*.png"), tmp_path, "*.png", "matches no file")


def test_missing_path(tmp_path):
    assert_one_clear_error(tmp_path / "nowhere.tif", tmp_path, "nowhere.tif", "no such file")


def test_unsupported_extension(tmp_path):
    path = tmp_path / "video.xyz"
    path.write_bytes(b"\x00" * 100)
    assert_one_clear_error(path, tmp_path, "video.xyz", "unsupported extension", "multi-page TIFF")
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "notes.txt").write_text("x")
    assert_one_clear_error(folder, tmp_path, "notes.txt", "unsupported extension")


def test_damaged_nd2(tmp_path):
    path = tmp_path / "video.nd2"
    path.write_bytes(b"\x00" * 100)
    # read by the nd2 package (tests/test_tracking_formats.py: the error without it)
    fragment = "cannot be read as an ND2 file" if importlib.util.find_spec("nd2") else "pip install nd2"
    assert_one_clear_error(path, tmp_path, "video.nd2", fragment)


def test_video_without_particles(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "noise.tif"
    write_tiff(path, rng.integers(0, 256, (5, 128, 128)).astype(np.uint8))
    assert_one_clear_error(path, tmp_path, "noise.tif", "no particle")
    flat = tmp_path / "flat.tif"
    write_tiff(flat, np.full((3, 64, 64), 100, np.uint8))
    assert_one_clear_error(flat, tmp_path, "flat.tif", "no particle")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_pixels_are_reported_as_such(tmp_path, bad):
    frames = spot_frames(n_frames=4).astype(np.float32)
    frames[2, 10:12, 30:33] = bad
    path = tmp_path / "float.tif"
    write_tiff(path, frames)
    message = assert_one_clear_error(path, tmp_path, "float.tif", "frame 2", "6 NaN or infinite pixel(s)")
    assert "no particle" not in message and "invert" not in message


def test_frames_without_features_are_counted_and_warned_in_qc(tmp_path, caplog):
    frames = spot_frames(n_frames=6)
    frames[3] = 20  # a blank frame in the middle: the shutter missed it
    write_tiff(tmp_path / "gap.tif", frames)
    import logging

    with caplog.at_level(logging.WARNING):
        result = run(tmp_path / "gap.tif", tmp_path / "out", params={"link": {"memory": 1}})
    empty = result.qc["frames_without_features"]
    assert empty == {"count": 1, "frames": [3]}
    assert any("1 frame(s) without any feature" in w for w in result.qc["warnings"])
    assert "without any feature" in caplog.text
    assert result.qc["features_per_frame"]["min"] == 0


def test_no_particle_with_explicit_parameters(tmp_path):
    path = tmp_path / "dim.tif"
    write_tiff(path, spot_frames())
    params = {"locate": {"diameter": 7, "minmass": 1e9, "separation": None}}
    assert_one_clear_error(path, tmp_path, "dim.tif", "no particle", "minmass", params=params)


@pytest.mark.parametrize("key", ["pixel_size_um", "frame_rate_hz"])
@pytest.mark.parametrize("value", [None, 0.0, -1.0, float("nan")])
def test_missing_or_invalid_unit_names_the_key(tmp_path, key, value):
    write_tiff(tmp_path / "video.tif", spot_frames())
    assert_one_clear_error(tmp_path / "video.tif", tmp_path, key, **{key: value})


def test_frames_of_different_sizes(tmp_path):
    folder = tmp_path / "seq"
    folder.mkdir()
    frames = spot_frames(n_frames=3)
    imageio.imwrite(folder / "f0.png", frames[0])
    imageio.imwrite(folder / "f1.png", frames[1])
    imageio.imwrite(folder / "f2.png", frames[2][:, :60])
    assert_one_clear_error(folder, tmp_path, "f2.png", "size")


def test_corrupt_png_in_a_sequence(tmp_path):
    folder = tmp_path / "seq"
    folder.mkdir()
    for i, frame in enumerate(spot_frames(n_frames=3)):
        imageio.imwrite(folder / f"f{i}.png", frame)
    data = (folder / "f2.png").read_bytes()
    (folder / "f2.png").write_bytes(data[: len(data) // 3])
    assert_one_clear_error(folder, tmp_path, "f2.png", "corrupt")


def test_frame_range_and_roi_outside_the_video(tmp_path):
    write_tiff(tmp_path / "video.tif", spot_frames())
    assert_one_clear_error(tmp_path / "video.tif", tmp_path, "frame_range.start",
                           params={"frame_range": {"start": 10}})
    assert_one_clear_error(tmp_path / "video.tif", tmp_path, "roi",
                           params={"roi": {"x0": 50, "y0": 0, "width": 40, "height": 20}})


def test_unknown_or_bad_parameter_names_the_key(tmp_path):
    write_tiff(tmp_path / "video.tif", spot_frames())
    assert_one_clear_error(tmp_path / "video.tif", tmp_path, "tracking.locate.diamter", error=ParameterError,
                           params={"locate": {"diamter": 7}})
    assert_one_clear_error(tmp_path / "video.tif", tmp_path, "tracking.locate.diameter", error=ParameterError,
                           params={"locate": {"diameter": 8}})
    with pytest.raises(ParameterError, match="tracking.link.memory"):
        from_config({"link": {"memory": -1}})
    with pytest.raises(ParameterError, match="tracking.roi needs"):
        from_config({"roi": {"x0": 1}})


def test_colour_frames_become_grey():
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100, 200, 50
    grey = to_grey(rgb)
    assert grey.dtype == np.uint8
    assert grey[0, 0] == round(0.2125 * 100 + 0.7154 * 200 + 0.0721 * 50)
    rgba = np.concatenate([rgb, np.full((2, 3, 1), 7, np.uint8)], axis=-1)
    np.testing.assert_array_equal(to_grey(rgba), grey)  # alpha ignored


def test_colour_channel_choice():
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 100, 201, 50, 7
    assert to_grey(rgba, channel="mean")[0, 0] == round((100 + 201 + 50) / 3)
    for index, value in enumerate((100, 201, 50)):
        grey = to_grey(rgba, channel=index)
        assert grey.dtype == np.uint8 and (grey == value).all()
    with pytest.raises(TrackingInputError, match="tracking.locate.channel = 1"):
        to_grey(rgba[..., 0], "frame 0", channel=1)  # a grey frame has no channel 1


def test_channel_on_grey_video_names_the_key(tmp_path):
    write_tiff(tmp_path / "video.tif", spot_frames())
    assert_one_clear_error(tmp_path / "video.tif", tmp_path, "tracking.locate.channel", params={"locate": {"channel": 0}})


def test_folder_of_images_is_read_in_natural_order(tmp_path):
    # frame2 before frame10: a name sort would put frame10 first and scramble time.
    folder = tmp_path / "frames"
    folder.mkdir()
    frames = spot_frames(n_frames=12)  # spots move +0.3 px per frame
    for i, frame in enumerate(frames):
        imageio.imwrite(folder / f"frame{i}.png", frame)
    result = run(folder, tmp_path / "out", params={"link": {"search_range_um": 1.0}})  # 2 px
    assert result.qc["frames_analysed"] == 12
    one = result.trajectories[result.trajectories["particle"] == result.trajectories["particle"].iloc[0]]
    assert np.all(np.diff(one.sort_values("frame")["x_px"]) > 0)  # steady motion: frames in order


def test_rgba_png_sequence_frame_range_and_roi(tmp_path):
    folder = tmp_path / "seq"
    folder.mkdir()
    for i, frame in enumerate(spot_frames(n_frames=6)):
        rgba = np.dstack([frame, frame, frame, np.full(frame.shape, 255, np.uint8)])
        imageio.imwrite(folder / f"frame_{i}.png", rgba)
    params = {"frame_range": {"start": 1, "step": 2}, "roi": {"x0": 30, "y0": 0, "width": 50, "height": 64}}
    result = run(str(folder / "*.png"), tmp_path / "out", params=params)
    features = result.features
    assert sorted(features["frame"].unique()) == [1, 3, 5]
    # Six spots lie in the region; positions are in full-frame pixels.
    assert result.qc["features_per_frame"]["median"] == 6
    assert features["x_px"].min() > 30
    near = features[(features["frame"] == 1) & (features["y_px"] < 20)]
    np.testing.assert_allclose(np.sort(near["x_px"]), [40.3, 64.3], atol=0.1)


@pytest.mark.parametrize("extension", [".avi", ".mp4"])
def test_movie_files_are_read(tmp_path, extension):
    path = tmp_path / f"movie{extension}"
    frames = spot_frames(n_frames=5, shape=(64, 80))
    writer = imageio.get_writer(path, fps=10, macro_block_size=16)
    for frame in frames:
        writer.append_data(np.dstack([frame] * 3))
    writer.close()
    video = open_video(path)
    assert len(video) == 5
    image = video.read(0)
    assert image.shape == (64, 80) and image.dtype == np.uint8
    assert abs(float(image.mean()) - float(frames[0].mean())) < 3  # lossy, but the same picture


def test_config_schema_matches_the_dataclasses():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    defaults = to_dict(TrackingParams())
    schema_keys = {name: set(section.get("properties", {})) for name, section in SCHEMA["properties"].items()}
    for name in ("locate", "link", "velocity", "species", "trajectory_filter", "checks"):
        assert schema_keys[name] == set(defaults[name]), name
    assert schema_keys["frame_range"] == {"start", "stop", "step"}
    assert schema_keys["roi"] == {"x0", "y0", "width", "height"}
    # The defaults satisfy the schema, and both reject the same mistakes.
    jsonschema.validate({k: v for k, v in defaults.items() if v is not None}, SCHEMA)
    for bad in ({"locate": {"diameter": 8}}, {"link": {"predictor": "magic"}}, {"velocity": {"window": 4}},
                {"locate": {"typo": 1}}, {"roi": {"x0": 0}}, {"locate": {"channel": 3}},
                {"locate": {"channel": "red"}}, {"locate": {"invert": "yes"}}, {"link": {"drift": "mode"}},
                {"link": {"subtract_drift": True}}, {"trajectory_filter": {"per": "frame"}},
                {"trajectory_filter": {"max_ecc": 2}}, {"checks": {"max_short_fraction": 0}},
                {"locate": {"refine": "gauss"}}, {"locate": {"refine_radius_px": 1}},
                {"locate": {"refine_sweeps": 0}}, {"locate": {"refine_max_shift_px": 5}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, SCHEMA)
        with pytest.raises(ParameterError):
            from_config(bad)
