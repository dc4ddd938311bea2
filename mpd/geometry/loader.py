"""Lazy torch reader of the snapshot-pair dataset (format: `mpd.geometry.dataset`).

`SnapshotPairDataset(path, split)` reads only metadata.json and pairs.parquet
at construction; each item is one record batch of a memory-mapped Arrow file,
read when asked for. The file is opened on first access in each process, so
the dataset can be handed to DataLoader workers.

An item is a dict of tensors, NONDIMENSIONAL by default (lengths / h,
velocities * dt / h, t / dt; `dataset.scales.to_physical(item)` converts
back):

    x0, v0, x1, v1, x_ref : (N, 2) float   at t, t+1, and in the reference frame
    flow                   : (N, 2) float   background (solvent) velocity at x0 during t -> t+1
    has_ref, interior      : (N,) bool      x_ref is NaN where has_ref is False
    particle               : (N,) int64     ids, sorted
    species                : (N,) int64     species labels (0 .. n_species - 1)
    frame                  : () int64       frame index of t
    t                      : () float       time of frame t
    box, box1              : (3,) float     (lx, ly, xy) at t and t+1, periodic datasets only

A 3D dataset (metadata ``dimension: 3``, `mpd.geometry.particles`) gives
(N, 3) positions, velocities and flow (zero) and box = (lx, ly, lz) of its
orthorhombic cell (`mpd.geometry.domain.periodic_box(box, 3)`).

`collate_snapshots` batches variable-N items by concatenation (as torch
geometric does): per-particle tensors are concatenated along dim 0, ``batch``
(sum N,) gives each row's snapshot, ``ptr`` (B+1,) the row offsets
(snapshot b is rows ptr[b]:ptr[b+1]); per-snapshot scalars/boxes are stacked.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from pyarrow import ipc
from torch.utils.data import Dataset

from mpd.geometry.dataset import (
    AXES,
    FORMAT_NAME,
    FORMAT_VERSION,
    SPLITS,
    Scales,
    box_attributes,
    dataset_dir,
    read_metadata,
)
from mpd.geometry.kinematics import FLOW_COLUMNS, flow_velocity

PARTICLE_KEYS = ("x0", "v0", "x1", "v1", "x_ref", "flow", "has_ref", "interior", "particle", "species")
SNAPSHOT_KEYS = ("frame", "t", "box", "box1")


class SnapshotPairDataset(Dataset):
    """Snapshot pairs of one split, read lazily.

    Parameters
    ----------
    path : the dataset directory (or the geometry output directory holding `dataset/`).
    split : "train", "val" or "test".
    nondimensional : True (default) for x/h, v*dt/h, t/dt; False for µm, µm/s, s.
    dtype : float dtype of the returned positions, velocities and times.
    """

    def __init__(self, path, split: str, *, nondimensional: bool = True, dtype: torch.dtype = torch.float32):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.root = dataset_dir(path)
        self.metadata = read_metadata(self.root)
        if self.metadata.get("format") != FORMAT_NAME:
            raise ValueError(f"{self.root} is not a {FORMAT_NAME} dataset")
        if self.metadata.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"{self.root} is a version {self.metadata.get('version')} dataset; this reader needs version "
                f"{FORMAT_VERSION} (kinematic velocities and the background flow): rerun the geometry stage "
                f"(snakemake --forcerun geometry)")
        self.split = split
        self.scales = Scales(self.metadata["length_scale_um"], self.metadata["time_scale_s"])
        self.nondimensional = nondimensional
        self.dtype = dtype
        index = pd.read_parquet(self.root / "pairs.parquet")
        self.index = index[index["split"] == split].sort_values("item").reset_index(drop=True)
        self.periodic = bool(self.metadata.get("periodic", False))
        self.n_species = int(self.metadata.get("n_species", 1))
        self.dim = int(self.metadata.get("dimension", 2))
        if self.dim not in AXES:
            raise ValueError(f"{self.root} is a {self.dim}D dataset; this reader reads 2D and 3D ones")
        self._file = self.root / self.metadata["splits"][split]["file"]
        self._reader = None

    def flow_coefficients(self, k: int) -> np.ndarray:
        """The background flow's 6 coefficients (u0x, u0y, Gxx, Gxy, Gyx, Gyy) of item k, in model units
        (h per frame and 1/frame), whatever `nondimensional` says."""
        c = self.index.iloc[k][list(FLOW_COLUMNS)].to_numpy(np.float64)
        h, dt = self.scales.length_um, self.scales.time_s
        return np.concatenate([c[:2] * dt / h, c[2:] * dt])

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self):  # a memory map does not travel to worker processes; reopen there
        state = dict(self.__dict__)
        state["_reader"] = None
        return state

    def _open(self):
        if self._reader is None:
            self._reader = ipc.open_file(pa.memory_map(str(self._file), "r"))
        return self._reader

    def __getitem__(self, k: int) -> dict:
        if not -len(self) <= k < len(self):
            raise IndexError(f"item {k} out of range for {len(self)} pairs in split {self.split!r}")
        k = k % len(self)
        batch = self._open().get_batch(k)
        col = {name: batch.column(name).to_numpy(zero_copy_only=False) for name in batch.schema.names}
        meta = self.index.iloc[k]
        if self.dim != 2:
            return self._item_nd(col, meta)
        item = {
            "x0": np.stack([col["x0"], col["y0"]], axis=1),
            "v0": np.stack([col["vx0"], col["vy0"]], axis=1),
            "x1": np.stack([col["x1"], col["y1"]], axis=1),
            "v1": np.stack([col["vx1"], col["vy1"]], axis=1),
            "x_ref": np.stack([col["x_ref"], col["y_ref"]], axis=1),
            "t": np.float64(meta["t_s"]),
        }
        item["flow"] = flow_velocity(meta[list(FLOW_COLUMNS)].to_numpy(np.float64), item["x0"])
        if self.periodic:
            item["box"] = meta[["lx", "ly", "xy"]].to_numpy(np.float64)
            item["box1"] = meta[["lx1", "ly1", "xy1"]].to_numpy(np.float64)
        return self._tensors(item, col, meta)

    def _tensors(self, item: dict, col: dict, meta) -> dict:
        """The item's vectors (nondimensional unless asked otherwise) and labels as tensors."""
        if self.nondimensional:
            item = self.scales.to_nondimensional(item)
        out = {key: torch.as_tensor(np.asarray(value), dtype=self.dtype) for key, value in item.items()}
        out["has_ref"] = torch.as_tensor(col["has_ref"].astype(bool))
        out["interior"] = torch.as_tensor(col["interior"].astype(bool))
        out["particle"] = torch.as_tensor(col["particle"].astype(np.int64))
        out["species"] = torch.as_tensor(col["species"].astype(np.int64))
        out["frame"] = torch.tensor(int(meta["frame"]), dtype=torch.int64)
        return out

    def _item_nd(self, col: dict, meta) -> dict:
        """An item of a 3D dataset: the same keys, (N, 3) vectors, no background flow."""
        axes = AXES[self.dim]

        def vectors(fmt: str) -> np.ndarray:
            return np.stack([col[fmt.format(a)] for a in axes], axis=1)

        item = {"x0": vectors("{}0"), "v0": vectors("v{}0"), "x1": vectors("{}1"), "v1": vectors("v{}1"),
                "x_ref": vectors("{}_ref"), "t": np.float64(meta["t_s"])}
        item["flow"] = np.zeros_like(item["x0"])
        if self.periodic:
            attrs = box_attributes(self.dim)
            item["box"] = meta[list(attrs)].to_numpy(np.float64)
            item["box1"] = meta[[a + "1" for a in attrs]].to_numpy(np.float64)
        return self._tensors(item, col, meta)


def collate_snapshots(items: list[dict]) -> dict:
    """Concatenate variable-N snapshot pairs; adds ``batch`` (sum N,) and ``ptr`` (B+1,) int64."""
    sizes = torch.tensor([len(item["particle"]) for item in items], dtype=torch.int64)
    out = {key: torch.cat([item[key] for item in items]) for key in PARTICLE_KEYS}
    for key in SNAPSHOT_KEYS:
        if key in items[0]:
            out[key] = torch.stack([item[key] for item in items])
    out["batch"] = torch.repeat_interleave(torch.arange(len(items)), sizes)
    out["ptr"] = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(sizes, 0)])
    return out
