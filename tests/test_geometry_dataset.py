"""Snapshot-pair dataset: splits without leakage, file round trip, lazy reads, scaling and collation."""
import pickle

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mpd.geometry.dataset import Scales, split_blocks, write_dataset
from mpd.geometry.domain import Box
from mpd.geometry.loader import SnapshotPairDataset, collate_snapshots

H, RATE = 2.0, 50.0  # µm, Hz


def make_rows(n_frames=30, n_particles=20, seed=0, drop=0.1):
    """Random tracks; some particles missing in some frames; frame 17 missing entirely."""
    rng = np.random.default_rng(seed)
    parts = []
    for f in range(n_frames):
        if f == 17:
            continue
        ids = np.flatnonzero(rng.random(n_particles) > drop)
        parts.append(pd.DataFrame({
            "frame": f, "particle": ids,
            "x": 100 * f + ids + 0.5, "y": 1000.0 + ids,  # encode (frame, id) in the position
            "vx": 10.0 * f, "vy": -1.0 * ids,
            "x_ref": np.where(ids % 5 == 0, np.nan, ids * 2.0), "y_ref": np.where(ids % 5 == 0, np.nan, 7.0),
            "interior": ids % 3 != 0,
        }))
    return pd.concat(parts, ignore_index=True)


@given(n=st.integers(0, 500), f=st.lists(st.floats(0, 1), min_size=3, max_size=3), gap=st.integers(0, 3))
def test_split_blocks_are_disjoint_contiguous_and_ordered(n, f, gap):
    total = sum(f)
    fractions = [x / total for x in f] if total > 1 else f
    blocks = split_blocks(n, fractions, gap)
    everything = np.concatenate(list(blocks.values()))
    assert len(np.unique(everything)) == len(everything)  # no pair in two blocks
    assert everything.min(initial=0) >= 0 and everything.max(initial=-1) < n
    previous_end = -1
    for name in ("train", "val", "test"):
        b = blocks[name]
        if len(b):
            assert np.all(np.diff(b) == 1)  # contiguous
            assert b[0] > previous_end + (gap if previous_end >= 0 else -1)  # time order and gap
            previous_end = b[-1]


def test_split_fraction_errors():
    with pytest.raises(ValueError, match="split_fractions"):
        split_blocks(10, (0.8, 0.3, 0.1))
    with pytest.raises(ValueError, match="split_fractions"):
        split_blocks(10, (0.8, 0.2))


def test_round_trip_nondimensional_and_back(tmp_path):
    rows = make_rows()
    meta = write_dataset(tmp_path, rows, length_scale_um=H, frame_rate_hz=RATE, split_fractions=(0.6, 0.2, 0.2))
    index = pd.read_parquet(tmp_path / "pairs.parquet")
    # pairs exist only for consecutive recorded frames: 28 frames recorded, 16-17 and 17-18 lost
    assert meta["n_pairs_total"] == 27
    assert set(index["frame"]) <= set(range(29)) - {16, 17}
    assert len(index) == 27 - 2  # one gap pair before val and before test
    # frames never shared between splits (gap of one pair)
    used = {s: set(index.loc[index.split == s, "frame"]) | set(index.loc[index.split == s, "frame1"])
            for s in ("train", "val", "test")}
    assert not (used["train"] & used["val"]) and not (used["val"] & used["test"])
    full = pd.read_feather(tmp_path / "train.arrow")  # plain pandas can read a split
    assert len(full) == index.loc[index.split == "train", "n_particles"].sum()

    ds = SnapshotPairDataset(tmp_path, "train")
    assert len(ds) == (index.split == "train").sum()
    for k in (0, len(ds) - 1):
        item = ds[k]
        frame = int(item["frame"])
        now = rows[rows.frame == frame].set_index("particle")
        nxt = rows[rows.frame == frame + 1].set_index("particle")
        common = np.intersect1d(now.index, nxt.index)
        np.testing.assert_array_equal(item["particle"].numpy(), common)
        x0 = now.loc[common, ["x", "y"]].to_numpy() / H
        np.testing.assert_allclose(item["x0"].numpy(), x0, rtol=1e-6)
        np.testing.assert_allclose(item["x1"].numpy(), nxt.loc[common, ["x", "y"]].to_numpy() / H, rtol=1e-6)
        v0 = now.loc[common, ["vx", "vy"]].to_numpy() / (H * RATE)  # v dt / h
        np.testing.assert_allclose(item["v0"].numpy(), v0, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(item["interior"].numpy(), now.loc[common, "interior"].to_numpy())
        row = index[(index.split == "train") & (index.item == k)].iloc[0]
        assert row["n_interior"] == int(item["interior"].sum()) and row["n_particles"] == len(common)
        has_ref = (common % 5) != 0
        np.testing.assert_array_equal(item["has_ref"].numpy(), has_ref)
        assert torch.isnan(item["x_ref"][~torch.as_tensor(has_ref)]).all()
        assert float(item["t"]) == pytest.approx(frame)  # t / dt
        assert item["x0"].dtype == torch.float32 and item["particle"].dtype == torch.int64
        back = ds.scales.to_physical(item)
        np.testing.assert_allclose(back["x0"].numpy(), x0 * H, rtol=1e-6)
        np.testing.assert_allclose(back["v0"].numpy(), v0 * H * RATE, rtol=1e-6, atol=1e-5)
        assert float(back["t"]) == pytest.approx(frame / RATE)
    physical = SnapshotPairDataset(tmp_path, "train", nondimensional=False, dtype=torch.float64)[0]
    np.testing.assert_allclose(physical["x0"].numpy(), ds.scales.to_physical(ds[0])["x0"].numpy(), rtol=1e-6)


def test_reads_lazily_and_survives_pickling(tmp_path):
    write_dataset(tmp_path, make_rows(n_frames=40, n_particles=300), length_scale_um=H, frame_rate_hz=RATE)
    before = pa.total_allocated_bytes()
    ds = SnapshotPairDataset(tmp_path, "train")
    assert ds._reader is None  # nothing but the index is read at construction
    ds[3]
    # the Arrow file is memory-mapped: reading an item does not copy the file into Arrow buffers
    assert pa.total_allocated_bytes() - before < 100_000
    clone = pickle.loads(pickle.dumps(ds))  # what DataLoader workers get
    assert clone._reader is None
    np.testing.assert_array_equal(clone[3]["x0"].numpy(), ds[3]["x0"].numpy())
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate_snapshots, num_workers=0)
    assert sum(int(b["ptr"][-1]) for b in loader) == sum(len(ds[k]["particle"]) for k in range(len(ds)))


def test_collate_concatenates_with_batch_index(tmp_path):
    write_dataset(tmp_path, make_rows(), length_scale_um=H, frame_rate_hz=RATE)
    ds = SnapshotPairDataset(tmp_path, "train")
    items = [ds[0], ds[1], ds[2]]
    batch = collate_snapshots(items)
    sizes = [len(it["particle"]) for it in items]
    assert batch["x0"].shape == (sum(sizes), 2)
    np.testing.assert_array_equal(batch["ptr"].numpy(), np.cumsum([0] + sizes))
    np.testing.assert_array_equal(batch["batch"].numpy(), np.repeat([0, 1, 2], sizes))
    np.testing.assert_array_equal(batch["x0"][batch["ptr"][1]:batch["ptr"][2]].numpy(), items[1]["x0"].numpy())
    assert batch["frame"].shape == (3,) and batch["t"].shape == (3,)


def test_periodic_boxes_travel_with_the_pairs(tmp_path):
    rows = make_rows(n_frames=12, drop=0.0)
    boxes = {f: Box(50.0, 40.0, 0.5 * f) for f in range(12)}
    write_dataset(tmp_path, rows, length_scale_um=H, frame_rate_hz=RATE, boxes=boxes, split_fractions=(1, 0, 0))
    ds = SnapshotPairDataset(tmp_path, "train")
    item = ds[2]
    f = int(item["frame"])
    np.testing.assert_allclose(item["box"].numpy(), np.array([50.0, 40.0, 0.5 * f]) / H, rtol=1e-6)
    np.testing.assert_allclose(item["box1"].numpy(), np.array([50.0, 40.0, 0.5 * (f + 1)]) / H, rtol=1e-6)
    assert collate_snapshots([ds[0], ds[1]])["box"].shape == (2, 3)
    assert len(SnapshotPairDataset(tmp_path, "test")) == 0
    with pytest.raises(ValueError, match="split"):
        SnapshotPairDataset(tmp_path, "validation")


def test_scales():
    s = Scales(length_um=2.0, time_s=0.1)
    assert s.velocity_um_per_s == 20.0
    item = {"x0": np.array([4.0]), "v1": np.array([40.0]), "t": 0.5, "particle": np.array([3])}
    nd = s.to_nondimensional(item)
    assert nd["x0"][0] == 2.0 and nd["v1"][0] == 2.0 and nd["t"] == 5.0 and nd["particle"][0] == 3
    back = s.to_physical(nd)
    assert back["x0"][0] == 4.0 and back["v1"][0] == 40.0 and back["t"] == 0.5
