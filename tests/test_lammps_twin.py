"""A twin's learned (solid) model rolled out in LAMMPS on a tiled copy of its sheared periodic box
(`mpd.lammps_rollout.rollout_box_lammps`, issue 16) against the PyTorch box rollout (`mpd.stage.rollout_box`)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from test_rollout import box_case  # noqa: F401 (the fixture: a sheared lattice, its geometry, a quiet solid model)

from mpd.lammps_env import LammpsUnavailableError, import_lammps
from mpd.params import RolloutParams
from mpd.stage import rollout_box

try:
    import_lammps()
except LammpsUnavailableError as _exc:  # pragma: no cover - depends on the environment
    pytest.skip(f"LAMMPS is not available: {_exc}", allow_module_level=True)

from mpd.lammps_rollout import LammpsStageError, rollout_box_lammps, tile_sample

START, FRAMES = 8, 20
#: A steady shear gentle enough for the quiet model's solid: 0.5 % of the cell's height per frame.
RATE_PER_FRAME = 0.005


def settings(**extra) -> dict:
    return {"tiles": [1, 1], "frames": FRAMES, "ranks": 1, "noise": False, "start_frame": START, **extra}


def pytorch(traj, boxes, geometry, out, start: int = START):
    done = rollout_box(out.parent / "model.pt", traj[traj["frame"] <= start], boxes, geometry, out,
                       RolloutParams(progress=False, device="cpu", dtype="float64", noise=False),
                       start_frame=start, n_frames=FRAMES)
    return pd.read_parquet(done / "rollout_box.parquet").sort_values(["frame", "particle"]).reset_index(drop=True)


def test_one_tile_is_the_pytorch_box_rollout(box_case):  # noqa: F811
    """The twin's cyclic shear with the cycle reference rule (the start is its own reference, the next cycle's
    bonds come from the rollout's frame 16): LAMMPS equals the PyTorch rollout frame by frame."""
    traj, boxes, geometry, root = box_case
    expected = pytorch(traj, boxes, geometry, root / "torch")
    status = rollout_box_lammps(root / "model.pt", traj, boxes, geometry, root / "lammps1", settings())
    got = pd.read_parquet(root / "lammps1" / "trajectories.parquet").sort_values(["frame", "particle"])
    got = got.reset_index(drop=True)
    assert status["status"] == "completed" and status["sheared"] and status["solid"]
    assert np.array_equal(expected[["frame", "particle"]].to_numpy(), got[["frame", "particle"]].to_numpy())
    scale = np.abs(expected[["vx", "vy"]].to_numpy()).max()
    assert np.abs(expected[["xu", "yu"]].to_numpy() - got[["xu", "yu"]].to_numpy()).max() < 1e-6
    assert np.abs(expected[["vx", "vy"]].to_numpy() - got[["vx", "vy"]].to_numpy()).max() < 1e-6 * scale
    assert np.abs(expected["S"].to_numpy() - got["S"].to_numpy()).max() < 1e-6 * np.abs(expected["S"]).max()
    assert np.allclose(expected[["x", "y"]].to_numpy(), got[["x", "y"]].to_numpy(), atol=1e-6)
    # the dump is a triclinic box per frame with the frame's tilt
    dump = (root / "lammps1" / "trajectory.dump").read_text().splitlines()
    at = dump.index("ITEM: BOX BOUNDS xy xz yz pp pp pp")
    tilt = boxes.set_index("frame").loc[START, "xy"]
    assert float(dump[at + 1].split()[2]) == pytest.approx(tilt)
    assert json.loads((root / "lammps1" / "status.json").read_text())["tilt_first"] == pytest.approx(tilt)


@pytest.mark.parametrize("start", [START, START + 3], ids=["own-reference", "reference-before-the-start"])
def test_tiles_are_images_of_the_sample_under_steady_shear(box_case, start):  # noqa: F811
    """At a constant shear rate, tile (i, j) of a 2 x 2 sample stays the image i a + j b(t) of the sample, moving at
    j d(xy)/dt: the tiled cell holds the same system (the sample's own rollout, as PyTorch gives it). From frame
    11 the strain reference (the cycle's first frame, 8) lies before the start: each particle's reference copy
    is the one of its own tile, also for particles that crossed the cell's edge since."""
    traj, boxes, geometry, root = box_case
    steady = boxes.assign(xy=RATE_PER_FRAME * boxes["ly"] * (boxes["frame"] - START))
    shifted = traj.assign(x=traj["x"] + 0.45 * boxes["lx"].iloc[0])  # particles wrap across x between frames
    shifted["x"] -= boxes["lx"].iloc[0] * np.floor(shifted["x"] / boxes["lx"].iloc[0])
    expected = pytorch(shifted, steady, geometry, root / f"torch_steady{start}", start=start)
    status = rollout_box_lammps(root / "model.pt", shifted, steady, geometry, root / f"lammps4_{start}",
                                settings(tiles=[2, 2], ghost_cutoff=2.6, start_frame=start))
    assert status["n_particles"] == 4 * status["n_particles_sample"] and status["tiles"] == [2, 2]
    got = pd.read_parquet(root / f"lammps4_{start}" / "trajectories.parquet")
    stride = status["id_stride"]
    lx, ly = boxes["lx"].iloc[0], boxes["ly"].iloc[0]
    rate = RATE_PER_FRAME * ly / (1 / 20.0)  # µm per s: the tilt's rate (dt = 1 / RATE)
    expected = expected.set_index(["frame", "particle"])
    for tile, (i, j) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        copy = got[got["particle"] // stride == tile].assign(particle=lambda t: t["particle"] % stride)
        copy = copy.set_index(["frame", "particle"]).loc[expected.index]
        xy = steady.set_index("frame").loc[copy.index.get_level_values("frame"), "xy"].to_numpy()
        shift = np.stack([i * lx + j * xy, np.full(len(xy), j * ly)], 1)
        d = copy[["xu", "yu"]].to_numpy() - shift - expected[["xu", "yu"]].to_numpy()
        d[:, 0] -= lx * np.round(d[:, 0] / lx)  # the start's wrap may pick another x image
        assert np.abs(d).max() < 1e-6, (i, j)
        dv = copy[["vx", "vy"]].to_numpy() - expected[["vx", "vy"]].to_numpy() - np.array([j * rate, 0.0])
        assert np.abs(dv).max() < 1e-6 * np.abs(expected[["vx", "vy"]].to_numpy()).max(), (i, j)


def test_frames_beyond_the_truth_s_cells_are_one_clear_error(box_case):  # noqa: F811
    traj, boxes, geometry, root = box_case
    with pytest.raises(LammpsStageError, match="lower lammps.frames"):
        rollout_box_lammps(root / "model.pt", traj, boxes, geometry, root / "bad", settings(frames=500))
    with pytest.raises(LammpsStageError, match="two numbers"):
        rollout_box_lammps(root / "model.pt", traj, boxes, geometry, root / "bad", settings(tiles=[2, 2, 2]))
    assert not (root / "bad").exists()


def test_tiling_a_sheared_cell_keeps_the_images_velocities():
    """A particle wrapped down one cell is its image there, which moves at -d(xy)/dt; tile j moves at +j d(xy)/dt."""
    x = np.array([[1.0, 0.5], [1.0, 2.5]])  # the second lies one cell above (ly = 2)
    v = np.zeros((2, 2))
    tiled = tile_sample(x, v, (4.0, 2.0), [1, 2], tilt=0.5, tilt_rate=0.1)
    assert tiled.tilt == pytest.approx(1.0)
    np.testing.assert_allclose(tiled.x[:2], [[1.0, 0.5], [0.5, 0.5]])
    np.testing.assert_allclose(tiled.v[:, 0], [0.0, -0.1, 0.1, 0.0])
    np.testing.assert_allclose(tiled.x[2:], tiled.x[:2] + [0.5, 2.0])
