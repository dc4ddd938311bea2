"""Tests of the digital twin's microscope renderer (twin/render.py, twin/video_io.py).

All inputs are small synthetic truth tables (particles on a grid moving with a
known velocity), so these tests do not depend on the simulation stage.
"""
from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pandas as pd
import pytest

from twin.params import IlluminationParams, MicroscopeParams, NoiseParams
from twin.render import (
    TRUTH_PIXEL_COLUMNS,
    illumination_field,
    quantise,
    render_frame,
    render_video,
)
from twin.video_io import VideoIOError, read_tiff_stack, write_movie, write_tiff_stack

DIAMETER_UM = {0: 3.0, 1: 4.2}


def make_truth(box_um=40.0, spacing_um=6.0, n_frames=6, fps=20.0, velocity=(8.0, -4.0), seed=0):
    """Bidisperse particles on a jittered grid translating at ``velocity`` (um/s),
    wrapped into the periodic box [0, box)^2, in the layout of truth/trajectories.parquet."""
    rng = np.random.default_rng(seed)
    g = np.arange(0.5 * spacing_um, box_um, spacing_um)
    x0, y0 = (a.ravel() + rng.uniform(-0.5, 0.5, a.size) for a in np.meshgrid(g, g))
    n = x0.size
    species = (np.arange(n) % 2).astype(np.int8)
    diameter = np.where(species == 0, DIAMETER_UM[0], DIAMETER_UM[1])
    rows = []
    for f in range(n_frames):
        t = f / fps
        xu, yu = x0 + velocity[0] * t, y0 + velocity[1] * t
        rows.append(pd.DataFrame({
            "frame": np.full(n, f, np.int64), "t": np.full(n, t), "particle": np.arange(n, dtype=np.int64),
            "species": species, "diameter": diameter, "x": xu % box_um, "y": yu % box_um,
            "xu": xu, "yu": yu, "vx": np.full(n, velocity[0]), "vy": np.full(n, velocity[1]),
        }))
    meta = {"lx_um": box_um, "ly_um": box_um, "xlo_um": 0.0, "ylo_um": 0.0, "frame_rate_hz": fps}
    return pd.concat(rows, ignore_index=True), meta


def small_params(**kw) -> MicroscopeParams:
    """60 x 60 px (30 um) field of view: fits a 40 um box with a diameter to spare."""
    return dataclasses.replace(MicroscopeParams(pixel_size_um=0.5, width_px=60, height_px=60), **kw)


def centroid(weights: np.ndarray, x: float, y: float, radius: float) -> tuple[float, float]:
    rows, cols = np.mgrid[: weights.shape[0], : weights.shape[1]]
    m = (cols - x) ** 2 + (rows - y) ** 2 <= radius**2
    w = weights[m]
    return float((w * cols[m]).sum() / w.sum()), float((w * rows[m]).sum() / w.sum())


# --------------------------------------------------------------------------- spot models

@pytest.mark.parametrize("spot", ["fluorescence", "brightfield"])
@pytest.mark.parametrize("species", [0, 1])
def test_noiseless_centroid_is_unbiased(spot, species):
    params = MicroscopeParams(width_px=72, height_px=72, spot=spot, noise=NoiseParams(enabled=False))
    rng = np.random.default_rng(10 + species)
    d_px = DIAMETER_UM[species] / params.pixel_size_um
    background = render_frame([], [], [], [], params, rng)
    flat = illumination_field(params)
    errors = []
    for _ in range(3):
        grid = np.array([12.0, 36.0, 60.0])
        gx, gy = (a.ravel() for a in np.meshgrid(grid, grid))
        x, y = gx + rng.uniform(-0.5, 0.5, gx.size), gy + rng.uniform(-0.5, 0.5, gy.size)
        image = render_frame(x, y, np.full(x.size, d_px), np.full(x.size, species), params, rng)
        signal = (image - background) / flat  # background subtracted, flat-field corrected
        if spot == "brightfield":
            signal = -signal  # dark particles: use the inverted image
        for xi, yi in zip(x, y):
            cx, cy = centroid(signal, xi, yi, d_px / 2 + 5)
            errors.append(np.hypot(cx - xi, cy - yi))
    assert max(errors) < 0.05, f"max centroid error {max(errors):.4f} px"


def test_spot_size_scales_with_diameter():
    params = MicroscopeParams(width_px=48, height_px=48, spot="brightfield", noise=NoiseParams(enabled=False))
    rng = np.random.default_rng(0)
    bg = render_frame([], [], [], [], params, rng)
    dark_area = []
    for d_px in (6.0, 8.4):
        img = render_frame([24.2], [23.7], [d_px], [0], params, rng)
        dark_area.append(np.count_nonzero((bg - img) > 0.5 * (bg - img).max()))
    assert dark_area[1] / dark_area[0] == pytest.approx((8.4 / 6.0) ** 2, rel=0.25)


def test_trackpy_finds_particles_in_noisy_brightfield_frame():
    trackpy = pytest.importorskip("trackpy")
    params = MicroscopeParams()  # defaults: bright field, noise on, 12 bit
    assert params.spot == "brightfield" and params.noise.enabled
    rng = np.random.default_rng(5)
    # spacing of 1.3 large diameters: as dense as the default twin's gaps allow
    g = np.arange(9.0, params.width_px - 5, 1.3 * DIAMETER_UM[1] / params.pixel_size_um)
    gx, gy = (a.ravel() for a in np.meshgrid(g, g))
    x, y = gx + rng.uniform(-1, 1, gx.size), gy + rng.uniform(-1, 1, gy.size)
    species = np.arange(x.size) % 2
    d_px = np.where(species == 0, DIAMETER_UM[0], DIAMETER_UM[1]) / params.pixel_size_um
    frame = quantise(render_frame(x, y, d_px, species, params, rng), params.bit_depth)
    assert frame.dtype == np.uint16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the mask covers the largest dark disk and its rim (14 px at the default 0.3 um/px)
        found = trackpy.locate(frame, 15, invert=True, separation=9)
    pos = found[["x", "y"]].to_numpy()
    inside = (x > 10) & (x < params.width_px - 11) & (y > 10) & (y < params.height_px - 11)
    truth = np.column_stack([x[inside], y[inside]])
    dist = np.sqrt(((truth[:, None, :] - pos[None, :, :]) ** 2).sum(-1))
    nearest = dist.min(axis=1)
    matched = nearest < 2.0
    assert matched.mean() >= 0.98, f"found {matched.sum()} of {matched.size}"
    rms = np.sqrt(np.mean(nearest[matched] ** 2))
    assert rms < 0.1, f"RMS localisation error {rms:.3f} px"


# --------------------------------------------------------------------------- camera

def test_illumination_is_nonuniform_and_follows_params():
    params = MicroscopeParams(noise=NoiseParams(enabled=False))
    img = render_frame([], [], [], [], params, np.random.default_rng(0))
    h, w = img.shape
    centre = img[h // 2 - 2: h // 2 + 2, w // 2 - 2: w // 2 + 2].mean()
    corners = np.mean([img[0, 0], img[0, -1], img[-1, 0], img[-1, -1]])
    assert corners < 0.85 * centre  # 25 % vignetting at the corners
    left, right = img[h // 2, : w // 8].mean(), img[h // 2, -w // 8:].mean()
    assert right > 1.05 * left  # 10 % gradient across the width
    flat = dataclasses.replace(params, illumination=IlluminationParams(vignetting=0.0, gradient=0.0))
    img_flat = render_frame([], [], [], [], flat, np.random.default_rng(0))
    assert np.ptp(img_flat) < 1e-9 * img_flat.max()


@pytest.mark.parametrize("bit_depth, dtype", [(8, np.uint8), (12, np.uint16), (16, np.uint16)])
def test_bit_depth_dtype_and_range(tmp_path, bit_depth, dtype):
    truth, meta = make_truth(n_frames=2)
    for background, saturates in ((2000.0, False), (6000.0, True)):
        noise = NoiseParams(background_photons=background)
        res = render_video(truth, meta, small_params(bit_depth=bit_depth, noise=noise), tmp_path / f"v{background}")
        frames = read_tiff_stack(res.frames_path)
        assert frames.dtype == dtype
        assert frames.max() <= 2**bit_depth - 1
        assert (frames.max() == 2**bit_depth - 1) == saturates
        assert json.loads(res.metadata_path.read_text())["bit_depth"] == bit_depth


def test_noise_statistics_match_camera_model():
    noise = NoiseParams(background_photons=1000.0, read_noise_e=10.0, full_well_e=4095.0)
    params = MicroscopeParams(bit_depth=12, noise=noise, illumination=IlluminationParams(0.0, 0.0))
    img = render_frame([], [], [], [], params, np.random.default_rng(1))
    assert np.all(img == np.rint(img))  # quantised
    assert img.mean() == pytest.approx(1000.0, rel=0.01)  # 1 ADU per electron here
    assert img.std() == pytest.approx(np.sqrt(1000.0 + 10.0**2), rel=0.05)


def test_same_seed_gives_identical_frames(tmp_path):
    truth, meta = make_truth(n_frames=3)
    a = read_tiff_stack(render_video(truth, meta, small_params(seed=7), tmp_path / "a").frames_path)
    b = read_tiff_stack(render_video(truth, meta, small_params(seed=7), tmp_path / "b").frames_path)
    c = read_tiff_stack(render_video(truth, meta, small_params(seed=8), tmp_path / "c").frames_path)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("spot", ["fluorescence", "brightfield"])
def test_motion_blur_elongates_along_velocity(spot):
    params = MicroscopeParams(width_px=64, height_px=64, spot=spot, exposure_s=0.005,
                              noise=NoiseParams(enabled=False), illumination=IlluminationParams(0.0, 0.0))
    rng = np.random.default_rng(0)
    bg = render_frame([], [], [], [], params, rng)
    sign = -1.0 if spot == "brightfield" else 1.0
    x, y, d = 31.3, 32.6, 6.0

    def moments(vx, vy, blur=True):
        p = dataclasses.replace(params, motion_blur=blur)
        w = sign * (render_frame([x], [y], [d], [0], p, rng, [vx], [vy]) - bg)
        w = np.clip(w, 0, None)  # the dark disk only
        rows, cols = np.mgrid[:64, :64]
        cx, cy = (w * cols).sum() / w.sum(), (w * rows).sum() / w.sum()
        return cx, cy, (w * (cols - cx) ** 2).sum() / w.sum(), (w * (rows - cy) ** 2).sum() / w.sum()

    _, _, vx0, vy0 = moments(0.0, 0.0)
    cx, cy, varx, vary = moments(2000.0, 0.0)  # 10 px travelled during the exposure
    assert abs(cx - x) < 0.05 and abs(cy - y) < 0.05  # truth = mid-exposure position
    assert varx > vx0 + 5.0  # a 10 px uniform streak adds ~10^2/12 px^2
    assert vary < vy0 + 0.05  # not wider across the motion
    _, _, varx_y, vary_y = moments(0.0, -2000.0)
    assert vary_y > vy0 + 5.0 and varx_y < vx0 + 0.05
    # motion_blur=False ignores the velocity
    assert moments(2000.0, 0.0, blur=False)[2] == pytest.approx(vx0, abs=1e-9)


# --------------------------------------------------------------------------- files

def test_video_files_match_schema(tmp_path):
    truth, meta = make_truth(n_frames=8)
    params = small_params(movie="avi")
    out = tmp_path / "exp" / "video"
    res = render_video(truth, meta, params, out)
    assert sorted(p.name for p in out.iterdir()) == [
        "frames.avi", "frames.tif", "metadata.json", "truth_pixels.parquet"]
    assert [p.name for p in tmp_path.joinpath("exp").iterdir()] == ["video"]  # no temp dirs left

    frames = read_tiff_stack(out / "frames.tif")
    assert frames.shape == (8, params.height_px, params.width_px) and frames.dtype == np.uint16

    md = json.loads((out / "metadata.json").read_text())
    for key in ("pixel_size_um", "frame_rate_hz", "bit_depth", "exposure_s", "n_frames", "width_px",
                "height_px", "source", "frames_path", "fov_origin_um", "spot", "dark_particles"):
        assert key in md, key
    assert md["source"] == "rendered" and md["n_frames"] == 8 and md["dark_particles"] is True
    assert md["frames_path"] == str(out / "frames.tif")
    assert md["width_px"] == 60 and md["height_px"] == 60 and md["frame_rate_hz"] == 20.0
    x0, y0 = md["fov_origin_um"]
    assert (x0, y0) == pytest.approx((20.0 - 15.0, 20.0 - 15.0))  # centred in the 40 um box

    tp_df = pd.read_parquet(out / "truth_pixels.parquet")
    assert list(tp_df.columns) == list(TRUTH_PIXEL_COLUMNS)
    expected = {"frame": "int64", "t": "float64", "particle": "int64", "species": "int8",
                "diameter": "float64", "x_px": "float64", "y_px": "float64", "vx_px": "float64",
                "vy_px": "float64", "in_fov": "bool"}
    assert {c: str(t) for c, t in tp_df.dtypes.items()} == expected
    assert not tp_df.duplicated(["frame", "particle"]).any()

    # Mapping without flip, velocities in px/s.
    merged = tp_df.merge(truth, on=["frame", "particle"])
    assert np.allclose(merged["x_px"], (merged["x"] - x0) / 0.5)
    assert np.allclose(merged["y_px"], (merged["y"] - y0) / 0.5)
    assert np.allclose(merged["vx_px"], 16.0) and np.allclose(merged["vy_px"], -8.0)
    # Exactly the particles whose disk touches the FOV; in_fov = centre inside the image.
    all_px = truth.assign(x_px=(truth["x"] - x0) / 0.5, y_px=(truth["y"] - y0) / 0.5, r=truth["diameter"] / 1.0)
    gap_x = np.maximum(np.maximum(-0.5 - all_px["x_px"], all_px["x_px"] - 59.5), 0)
    gap_y = np.maximum(np.maximum(-0.5 - all_px["y_px"], all_px["y_px"] - 59.5), 0)
    assert int((np.hypot(gap_x, gap_y) <= all_px["r"]).sum()) == len(tp_df)
    inside = tp_df["x_px"].between(-0.5, 59.5) & tp_df["y_px"].between(-0.5, 59.5)
    assert (tp_df["in_fov"] == inside).all()
    assert (~tp_df["in_fov"]).any()  # some particles only partly in view
    # Particles enter and leave the field of view.
    per_particle = tp_df.groupby("particle")["frame"].nunique()
    assert (per_particle < 8).any()

    # The preview movie has one 8-bit frame per frame.
    import imageio.v2 as imageio

    with imageio.get_reader(out / "frames.avi") as reader:
        assert sum(1 for _ in reader) == 8
    assert res.movie_path == out / "frames.avi" and res.n_frames == 8


def test_rendered_particles_are_where_truth_pixels_says(tmp_path):
    truth, meta = make_truth(n_frames=2)
    params = small_params(noise=NoiseParams(enabled=False), illumination=IlluminationParams(0.0, 0.0))
    res = render_video(truth, meta, params, tmp_path / "v")
    frame = read_tiff_stack(res.frames_path)[1].astype(float)
    tp_df = pd.read_parquet(res.truth_pixels_path).query("frame == 1 and in_fov")
    bg = 2000.0 * 4095 / 4000.0
    rows, cols = np.mgrid[:60, :60]
    for row in tp_df.itertuples():
        r_px = row.diameter / 2 / 0.5
        if not (r_px + 3 < row.x_px < 56 - r_px and r_px + 3 < row.y_px < 56 - r_px):
            continue
        inner = (cols - row.x_px) ** 2 + (rows - row.y_px) ** 2 < (0.5 * r_px) ** 2
        assert frame[inner].mean() < 0.6 * bg  # dark disk at the truth position


def test_periodic_image_of_particle_outside_rectangle(tmp_path):
    """Positions wrapped into a sheared (parallelogram) cell can lie beyond lx:
    such a particle is seen through its image shifted by -lx."""
    truth, meta = make_truth(n_frames=1)
    extra = truth.iloc[[0]].copy()
    extra["particle"] = 999
    extra["x"], extra["y"] = 40.0 + 6.0, 20.0  # image at x = 6 um -> x_px = (6 - 5) / 0.5 = 2
    truth = pd.concat([truth, extra], ignore_index=True)
    res = render_video(truth, meta, small_params(), tmp_path / "v")
    tp_df = pd.read_parquet(res.truth_pixels_path)
    row = tp_df[tp_df["particle"] == 999]
    assert len(row) == 1 and row["x_px"].iloc[0] == pytest.approx(2.0) and bool(row["in_fov"].iloc[0])


def test_fov_larger_than_box_fails_and_leaves_nothing(tmp_path):
    truth, meta = make_truth(n_frames=2)
    out = tmp_path / "video"
    with pytest.raises(ValueError, match="does not fit"):
        render_video(truth, meta, small_params(width_px=100), out)  # 50 um > 40 um box
    with pytest.raises(ValueError, match="does not fit"):
        render_video(truth, meta, small_params(height_px=74), out)  # 37 um + 4.2 um > 40 um
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_failure_while_writing_leaves_nothing(tmp_path, monkeypatch):
    from twin import render

    def broken_movie(path, frames, fps):
        raise VideoIOError(f"cannot write movie {path}: codec unavailable")

    monkeypatch.setattr(render, "write_movie", broken_movie)
    truth, meta = make_truth(n_frames=2)
    out = tmp_path / "video"
    with pytest.raises(VideoIOError, match="codec unavailable"):
        render_video(truth, meta, small_params(movie="mp4"), out)
    assert list(tmp_path.iterdir()) == []


def test_invalid_inputs_raise(tmp_path):
    truth, meta = make_truth(n_frames=3)
    with pytest.raises(ValueError, match="spot"):
        render_video(truth, meta, small_params(spot="phase"), tmp_path / "v")
    with pytest.raises(ValueError, match="bit_depth"):
        render_video(truth, meta, small_params(bit_depth=10), tmp_path / "v")
    with pytest.raises(ValueError, match="without gaps"):
        render_video(truth[truth["frame"] != 1], meta, small_params(), tmp_path / "v")
    assert not (tmp_path / "v").exists()


# --------------------------------------------------------------------------- video_io

def test_video_io_round_trip_and_errors(tmp_path):
    frames = np.random.default_rng(0).integers(0, 4096, size=(4, 10, 13), dtype=np.uint16)
    path = write_tiff_stack(tmp_path / "s.tif", frames)
    assert np.array_equal(read_tiff_stack(path), frames)
    with pytest.raises(VideoIOError, match="missing"):
        write_tiff_stack(tmp_path / "missing" / "s.tif", frames)
    with pytest.raises(VideoIOError, match="nothere.tif"):
        read_tiff_stack(tmp_path / "nothere.tif")
    with pytest.raises(ValueError, match=r"\.avi or \.mp4"):
        write_movie(tmp_path / "m.mov", frames.astype(np.uint8), 20)
    movie = write_movie(tmp_path / "m.mp4", (frames >> 4).astype(np.uint8), 20)  # odd width padded
    assert movie.stat().st_size > 0
