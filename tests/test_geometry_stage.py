"""The geometry stage end to end: known strains come out, outputs are atomic, bad input is named."""
import json
import os

import numpy as np
import pandas as pd
import pytest

from mpd.geometry.domain import Box
from mpd.geometry.inputs import GeometryInputError
from mpd.geometry.loader import SnapshotPairDataset
from mpd.geometry.stage import OBSERVABLE_UNITS, compute_geometry

RATE = 20.0  # Hz
PERIOD = 8  # frames per shear cycle
AMPLITUDE = 0.04


def triangular_lattice(nx, ny, a):
    return np.array([(i + 0.5 * (j % 2), j * np.sqrt(3) / 2) for j in range(ny) for i in range(nx)]) * a


def gamma(frame):
    return AMPLITUDE * np.sin(2 * np.pi * frame / PERIOD)


def affine_shear_trajectories(n_frames=20, drop_seed=None, box=None):
    """A triangular lattice under homogeneous simple shear x += gamma(t) y (about y = 0)."""
    a = 3.0
    base = triangular_lattice(16, 14, a) + [1.0, 1.0]
    rng = np.random.default_rng(drop_seed)
    parts = []
    for f in range(n_frames):
        p = base + np.stack([gamma(f) * base[:, 1], np.zeros(len(base))], 1)
        if box is not None:
            p = Box(box.lx, box.ly, gamma(f) * box.ly).wrap(p)
        ids = np.arange(len(base))
        keep = rng.random(len(ids)) > 0.05 if drop_seed is not None else np.ones(len(ids), bool)
        gdot = AMPLITUDE * 2 * np.pi / PERIOD * np.cos(2 * np.pi * f / PERIOD) * RATE
        parts.append(pd.DataFrame({"frame": f, "particle": ids[keep], "x": p[keep, 0], "y": p[keep, 1],
                                   "vx": gdot * base[keep, 1], "vy": 0.0}))
    return pd.concat(parts, ignore_index=True), base


def test_affine_shear_in_a_window(tmp_path):
    traj, _ = affine_shear_trajectories(drop_seed=1)
    window = (0.0, 50.0, 0.0, 40.0)
    out = compute_geometry(traj, tmp_path / "geo", h_um=4.0, frame_rate_hz=RATE, reference="cycle",
                           cycle_frames=PERIOD, window=window, split_fractions=(0.6, 0.2, 0.2))
    obs = pd.read_parquet(out / "observables.parquet")
    assert list(obs.columns) == list(OBSERVABLE_UNITS)
    assert len(obs) == len(traj)
    # exact strain relative to the start of each cycle for every particle with a valid fit
    ref_gamma = gamma(obs["ref_frame"].to_numpy())
    g = gamma(obs["frame"].to_numpy()) - ref_gamma
    F_true_xy = g / 1.0  # current = ref + g * y_base, reference = base + ref_gamma * y_base: F_xy = g
    ok = obs["strain_valid"].to_numpy()
    assert ok.mean() > 0.9
    np.testing.assert_allclose(obs.loc[ok, "F_xy"], F_true_xy[ok], atol=1e-10)
    np.testing.assert_allclose(obs.loc[ok, ["F_xx", "F_yy"]], 1.0, atol=1e-10)
    np.testing.assert_allclose(obs.loc[ok, "eps_xy"], g[ok] / 2, atol=1e-10)
    np.testing.assert_allclose(obs.loc[ok, "eps_yy"], g[ok] ** 2 / 2, atol=1e-10)
    np.testing.assert_allclose(obs.loc[ok, "d2min"], 0.0, atol=1e-10)
    assert obs.loc[ok, "ref_frame"].isin([0, 8, 16]).all()
    assert obs.loc[~ok, ["F_xx", "eps_xy", "d2min"]].isna().all().all()
    # simple shear preserves area: valid Voronoi cells all have the lattice's cell area
    cell = 3.0**2 * np.sqrt(3) / 2
    valid_area = obs["area_valid"].to_numpy()
    assert valid_area.sum() > 0
    assert np.isnan(obs.loc[~valid_area, "area"]).all()
    # interior: at least h from the window edge
    x, y = obs["x"].to_numpy(), obs["y"].to_numpy()
    edge = np.minimum.reduce([x - 0, 50 - x, y - 0, 40 - y])
    np.testing.assert_array_equal(obs["interior"].to_numpy(), edge >= 4.0)
    # missing particles make some cells wrong-but-bounded, so compare only where all 6 neighbours exist
    full = valid_area & (obs["n_neighbours"].to_numpy() == 6) & obs["interior"].to_numpy()
    assert full.sum() > 100
    np.testing.assert_allclose(obs.loc[full, "area"].median(), cell, rtol=1e-6)

    meta = json.loads((out / "metadata.json").read_text())
    assert meta["parameters"]["reference"]["rule"] == "cycle" and meta["parameters"]["window_um"] == list(window)
    ds = SnapshotPairDataset(out, "train")
    item = ds[5]
    f = int(item["frame"])
    rows = traj[traj.frame == f].set_index("particle")
    common = item["particle"].numpy()
    np.testing.assert_allclose(item["x0"].numpy(), rows.loc[common, ["x", "y"]].to_numpy() / 4.0, rtol=1e-6)
    ref = obs[(obs.frame == f)].set_index("particle").loc[common]
    # predicted in the likelihood: interior, and observed one frame earlier (a kinematic velocity)
    before = traj[traj.frame == f - 1].set_index("particle")
    np.testing.assert_array_equal(item["interior"].numpy(), ref["interior"].to_numpy() & np.isin(common, before.index))
    # kinematic velocities: v0 = (x_f - x_{f-1}) / dt where the particle was there, v1 = (x_{f+1} - x_f) / dt
    seen = np.isin(common, before.index)
    expected_v0 = (rows.loc[common[seen], ["x", "y"]].to_numpy() - before.loc[common[seen], ["x", "y"]].to_numpy())
    np.testing.assert_allclose(item["v0"].numpy()[seen], expected_v0 * RATE / (4.0 * RATE), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(item["v1"].numpy(), (item["x1"] - item["x0"]).numpy(), atol=2e-6)  # float32 items
    # the background flow is the imposed shear: u = (gamma' y, 0) over the step, exactly (model units)
    shear_step = gamma(f + 1) - gamma(f)
    expected_flow = np.stack([shear_step * item["x0"].numpy()[:, 1], np.zeros(len(common))], 1)
    np.testing.assert_allclose(item["flow"].numpy(), expected_flow, atol=1e-6)
    # x_ref is the position in the reference frame of f (start of its cycle)
    r = (f // PERIOD) * PERIOD
    ref_rows = traj[traj.frame == r].set_index("particle")
    has = item["has_ref"].numpy()
    np.testing.assert_array_equal(has, np.isin(common, ref_rows.index))
    np.testing.assert_allclose(item["x_ref"].numpy()[has], ref_rows.loc[common[has], ["x", "y"]].to_numpy() / 4.0,
                               rtol=1e-6)
    assert not [p for p in os.listdir(tmp_path) if p != "geo"]  # no temporary directories left


def test_periodic_sheared_box(tmp_path):
    a = 3.0
    box0 = Box(16 * a, 14 * a * np.sqrt(3) / 2, 0.0)
    traj, base = affine_shear_trajectories(n_frames=10, box=box0)
    boxes = pd.DataFrame({"frame": np.arange(10), "lx": box0.lx, "ly": box0.ly, "xy": gamma(np.arange(10)) * box0.ly})
    out = compute_geometry(traj, tmp_path / "geo", h_um=4.0, frame_rate_hz=RATE, reference="lag", lag_frames=2,
                           box=boxes, boundary_particles=[0, 1, 2])
    obs = pd.read_parquet(out / "observables.parquet")
    has_ref = obs["frame"] >= 2
    assert obs.loc[has_ref, "strain_valid"].all() and not obs.loc[~has_ref, "strain_valid"].any()
    g = gamma(obs["frame"].to_numpy()) - gamma(obs["frame"].to_numpy() - 2)
    # reference x0 = b + g0 y_b, now x = b + g1 y_b: F = [[1, g1 - g0], [0, 1]] in the reference's shear frame
    np.testing.assert_allclose(obs.loc[has_ref, "F_xy"], g[has_ref], atol=1e-10)
    np.testing.assert_allclose(obs.loc[has_ref, "d2min"], 0.0, atol=1e-10)
    assert obs["area_valid"].all()
    np.testing.assert_allclose(obs["area"], box0.area / len(base), rtol=1e-9)
    np.testing.assert_array_equal(obs["interior"], ~obs["particle"].isin([0, 1, 2]))
    item = SnapshotPairDataset(out, "train")[0]
    assert item["box"].shape == (3,)


def test_window_from_video_metadata_and_default(tmp_path):
    traj, _ = affine_shear_trajectories(n_frames=4)
    meta = {"pixel_size_um": 0.5, "width_px": 101, "height_px": 81}
    out = compute_geometry(traj, tmp_path / "a", h_um=4.0, frame_rate_hz=RATE, video_metadata=meta)
    assert json.loads((out / "metadata.json").read_text())["parameters"]["window_um"] == [0, 50, 0, 40]
    with pytest.warns(UserWarning, match="extent"):
        compute_geometry(traj, tmp_path / "b", h_um=4.0, frame_rate_hz=RATE)


def test_output_is_replaced_atomically_and_nothing_partial_on_error(tmp_path, monkeypatch):
    traj, _ = affine_shear_trajectories(n_frames=4)
    out = tmp_path / "geo"
    compute_geometry(traj, out, h_um=4.0, frame_rate_hz=RATE, window=(0, 50, 0, 40))
    before = (out / "observables.parquet").read_bytes()

    from mpd.geometry import stage

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(stage, "write_dataset", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        compute_geometry(traj, out, h_um=4.0, frame_rate_hz=RATE, window=(0, 50, 0, 40), lag_frames=2)
    assert (out / "observables.parquet").read_bytes() == before  # old output untouched
    assert sorted(os.listdir(tmp_path)) == ["geo"]  # and no temporary left
    with pytest.raises(RuntimeError):
        compute_geometry(traj, tmp_path / "new", h_um=4.0, frame_rate_hz=RATE, window=(0, 50, 0, 40))
    assert sorted(os.listdir(tmp_path)) == ["geo"]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.drop(columns=["vy"]), "lacks column\\(s\\) 'vy'"),
        (lambda t: t.drop(columns=["x", "frame"]), "'frame', 'x'"),
        (lambda t: t.iloc[:0], "empty"),
        (lambda t: t.assign(y=np.where(t.index == 7, np.nan, t.y)), "column 'y' .* 1 NaN"),
        (lambda t: t.assign(vx=np.inf), "column 'vx'"),
        (lambda t: t.assign(x=t.x.astype(str)), "column 'x' .* numeric"),
        (lambda t: t.assign(frame=t.frame + 0.5), "column 'frame' .* integers"),
        (lambda t: pd.concat([t, t.iloc[:1]]), "duplicated"),
    ],
)
def test_bad_input_is_named(tmp_path, edit, message):
    traj, _ = affine_shear_trajectories(n_frames=3)
    with pytest.raises(GeometryInputError, match=message):
        compute_geometry(edit(traj), tmp_path / "geo", h_um=4.0, frame_rate_hz=RATE, window=(0, 50, 0, 40))
    assert not (tmp_path / "geo").exists()


def test_bad_files_and_parameters_are_named(tmp_path):
    traj, _ = affine_shear_trajectories(n_frames=3)
    path = tmp_path / "tracks.parquet"
    traj.drop(columns=["vx"]).to_parquet(path)
    with pytest.raises(GeometryInputError, match=f"{path}.*'vx'"):
        compute_geometry(path, tmp_path / "geo", h_um=4.0, frame_rate_hz=RATE)
    with pytest.raises(GeometryInputError, match="does not exist"):
        compute_geometry(tmp_path / "nope.parquet", tmp_path / "geo", h_um=4.0, frame_rate_hz=RATE)
    with pytest.raises(GeometryInputError, match="h_um"):
        compute_geometry(traj, tmp_path / "geo", h_um=0.0, frame_rate_hz=RATE, window=(0, 50, 0, 40))
    with pytest.raises(ValueError, match="cycle_frames"):
        compute_geometry(traj, tmp_path / "geo", h_um=4.0, frame_rate_hz=RATE, reference="cycle")
    with pytest.raises(GeometryInputError, match="frame"):
        compute_geometry(traj, tmp_path / "geo", h_um=4.0, frame_rate_hz=RATE,
                         box=pd.DataFrame({"frame": [0], "lx": [50.0], "ly": [40.0], "xy": [0.0]}))
    assert not (tmp_path / "geo").exists()
