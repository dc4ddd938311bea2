"""The training dataset: snapshot pairs (t, t+1), split into contiguous time blocks, on disk.

File format (directory `dataset/`, version 2; docs/geometry.md):

* ``{split}.arrow`` for split in train, val, test: an Arrow IPC file
  (Feather v2, uncompressed) holding ONE RECORD BATCH PER SNAPSHOT PAIR, in
  time order, one row per particle present in both frames (sorted by id):
  ``particle`` int64; ``x0, y0, x1, y1, x_ref, y_ref`` float64 µm;
  ``vx0, vy0, vx1, vy1`` float64 µm/s; ``has_ref`` bool (the particle is in
  the reference frame; else x_ref, y_ref are NaN); ``species`` int64 (0, 1, ...:
  the tracking stage's size classes, 0 where the trajectories have none);
  ``interior`` bool (at t:
  predicted by the likelihood, i.e. not exterior and, with the default
  kinematic velocities, observed at t-1 too). Velocities are the geometry
  stage's ``velocity`` estimator (metadata "geometry"; default the backward
  difference, `mpd.geometry.kinematics`).
  The footer indexes the batches, so a reader memory-maps the file and reads
  snapshot pair k alone (`pyarrow.ipc.open_file(...).get_batch(k)`);
  ``pd.read_feather`` reads a whole split.
* ``pairs.parquet``: one row per pair: ``split, item`` (batch number in its
  file), ``frame, frame1`` (= frame + 1), ``t_s`` (s), ``n_particles``,
  ``n_interior``, ``ref_frame`` (-1: none), the background flow during
  t -> t+1, u(x) = u0 + G x (``flow_u0x, flow_u0y`` µm/s, ``flow_gxx, flow_gxy,
  flow_gyx, flow_gyy`` 1/s; `mpd.geometry.kinematics`) and, for a periodic box,
  ``lx, ly, xy`` at t and ``lx1, ly1, xy1`` at t+1 (µm).
* ``metadata.json``: format/version, the scales of the nondimensionalisation
  (``length_scale_um`` = h, ``time_scale_s`` = dt = 1/frame_rate_hz), units,
  the splits (file, pair count, frame range), split fractions and gap,
  and whatever the stage adds (reference rule, window or box, ...).

3D periodic fluids (`mpd.geometry.particles.particle_dataset`; metadata
``dimension: 3``, absent means 2): the rows add ``z0, vz0, z1, vz1, z_ref``
(`ROW_COLUMNS_3D`), the box columns are ``lx, ly, lz, lx1, ly1, lz1`` (an
orthorhombic `OrthoBox`), the flow columns are zero and the lengths are in
the simulation's unit (the ``_um`` names are kept for the reader).

Values on disk are physical (µm, µm/s, s); the reader
(`mpd.geometry.loader.SnapshotPairDataset`) returns them divided by the
scales: x/h, v*dt/h, t/dt. `Scales` converts back.

Splits: the pairs, in time order, are cut into contiguous blocks train |
val | test with the given fractions; the first `gap_pairs` pairs of val and
of test are dropped so that no frame belongs to two splits (pair (f, f+1) in
train and (f+1, f+2) in val would share frame f+1). Every pair belongs to at
most one split.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from pyarrow import ipc

from mpd.geometry.kinematics import FLOW_COLUMNS

FORMAT_NAME = "mpd-snapshot-pairs"
FORMAT_VERSION = 2
SPLITS = ("train", "val", "test")
ROW_COLUMNS = {
    "particle": ("int64", ""),
    "x0": ("float64", "µm"), "y0": ("float64", "µm"),
    "vx0": ("float64", "µm/s"), "vy0": ("float64", "µm/s"),
    "x1": ("float64", "µm"), "y1": ("float64", "µm"),
    "vx1": ("float64", "µm/s"), "vy1": ("float64", "µm/s"),
    "x_ref": ("float64", "µm"), "y_ref": ("float64", "µm"),
    "has_ref": ("bool", ""),
    "interior": ("bool", ""),
    "species": ("int64", ""),
}
BOX_COLUMNS = ("lx", "ly", "xy", "lx1", "ly1", "xy1")
ROW_COLUMNS_3D = {
    "particle": ("int64", ""),
    "x0": ("float64", "length"), "y0": ("float64", "length"), "z0": ("float64", "length"),
    "vx0": ("float64", "length/time"), "vy0": ("float64", "length/time"), "vz0": ("float64", "length/time"),
    "x1": ("float64", "length"), "y1": ("float64", "length"), "z1": ("float64", "length"),
    "vx1": ("float64", "length/time"), "vy1": ("float64", "length/time"), "vz1": ("float64", "length/time"),
    "x_ref": ("float64", "length"), "y_ref": ("float64", "length"), "z_ref": ("float64", "length"),
    "has_ref": ("bool", ""),
    "interior": ("bool", ""),
    "species": ("int64", ""),
}
BOX_COLUMNS_3D = ("lx", "ly", "lz", "lx1", "ly1", "lz1")
AXES = {2: ("x", "y"), 3: ("x", "y", "z")}


def row_columns(dimension: int = 2) -> dict:
    """The per-particle columns of a dataset of this dimension (2: `ROW_COLUMNS`, 3: `ROW_COLUMNS_3D`)."""
    if dimension not in AXES:
        raise ValueError(f"datasets are 2D or 3D, got dimension {dimension}")
    return ROW_COLUMNS if dimension == 2 else ROW_COLUMNS_3D


def box_attributes(dimension: int = 2) -> tuple[str, str, str]:
    """The box's attributes on disk (and in a reader's ``box`` item): lx, ly, xy in 2D, lx, ly, lz in 3D."""
    return ("lx", "ly", "xy") if dimension == 2 else ("lx", "ly", "lz")


@dataclass(frozen=True)
class Scales:
    """Nondimensionalisation: lengths by `length_um` (h), times by `time_s` (dt), velocities by h/dt."""

    length_um: float
    time_s: float

    @property
    def velocity_um_per_s(self) -> float:
        return self.length_um / self.time_s

    # Keys of an item (or a collated batch) and the scale each one is divided by.
    def _factors(self) -> dict:
        L, T, V = self.length_um, self.time_s, self.velocity_um_per_s
        return {"x0": L, "x1": L, "x_ref": L, "box": L, "box1": L, "v0": V, "v1": V, "flow": V, "t": T}

    def to_physical(self, item: Mapping) -> dict:
        """Copy of `item` with positions in µm, velocities in µm/s, t in s (other keys untouched)."""
        f = self._factors()
        return {k: (v * f[k] if k in f else v) for k, v in item.items()}

    def to_nondimensional(self, item: Mapping) -> dict:
        f = self._factors()
        return {k: (v / f[k] if k in f else v) for k, v in item.items()}


def split_blocks(n_pairs: int, fractions=(0.7, 0.15, 0.15), gap_pairs: int = 1) -> dict[str, np.ndarray]:
    """Indices (into the time-ordered pairs) of each split: contiguous blocks, `gap_pairs` dropped between them."""
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) > 1 + 1e-9:
        raise ValueError(f"split_fractions must be 3 non-negative numbers summing to <= 1, got {fractions}")
    if int(gap_pairs) != gap_pairs or gap_pairs < 0:
        raise ValueError(f"gap_pairs must be an integer >= 0, got {gap_pairs}")
    edges = np.rint(np.cumsum((0.0,) + fractions) * n_pairs).astype(int)
    out = {}
    for k, name in enumerate(SPLITS):
        start = edges[k] + (gap_pairs if k > 0 else 0)
        out[name] = np.arange(min(start, edges[k + 1]), edges[k + 1])
    return out


def build_pairs(rows: pd.DataFrame, dimension: int = 2) -> pd.DataFrame:
    """Rows of all snapshot pairs: particles present at frame and frame + 1 (matched by id).

    `rows`: one row per particle per frame with frame, particle, x, y, vx, vy,
    x_ref, y_ref, interior and optionally species (0 where absent). Returns the
    `ROW_COLUMNS` plus ``frame``, sorted by (frame, particle). dimension 3: also z, vz, z_ref
    in and `ROW_COLUMNS_3D` out.
    """
    if dimension != 2:
        return _build_pairs_nd(rows, dimension)
    if "species" not in rows.columns:
        rows = rows.assign(species=np.zeros(len(rows), np.int64))
    now = rows[["frame", "particle", "x", "y", "vx", "vy", "x_ref", "y_ref", "interior", "species"]]
    nxt = rows[["frame", "particle", "x", "y", "vx", "vy"]].assign(frame=rows["frame"] - 1)
    pairs = now.merge(nxt, on=["frame", "particle"], how="inner", suffixes=("0", "1"))
    pairs = pairs.sort_values(["frame", "particle"], kind="stable").reset_index(drop=True)
    pairs["has_ref"] = np.isfinite(pairs["x_ref"].to_numpy()) & np.isfinite(pairs["y_ref"].to_numpy())
    return pairs[["frame", *ROW_COLUMNS]]


def _build_pairs_nd(rows: pd.DataFrame, dimension: int) -> pd.DataFrame:
    columns = row_columns(dimension)
    axes = AXES[dimension]
    if "species" not in rows.columns:
        rows = rows.assign(species=np.zeros(len(rows), np.int64))
    moving = [*axes, *(f"v{a}" for a in axes)]
    now = rows[["frame", "particle", *moving, *(f"{a}_ref" for a in axes), "interior", "species"]]
    nxt = rows[["frame", "particle", *moving]].assign(frame=rows["frame"] - 1)
    pairs = now.merge(nxt, on=["frame", "particle"], how="inner", suffixes=("0", "1"))
    pairs = pairs.sort_values(["frame", "particle"], kind="stable").reset_index(drop=True)
    pairs["has_ref"] = np.isfinite(pairs[[f"{a}_ref" for a in axes]].to_numpy()).all(axis=1)
    return pairs[["frame", *columns]]


def write_dataset(
    out_dir,
    rows: pd.DataFrame,
    *,
    length_scale_um: float,
    frame_rate_hz: float,
    split_fractions=(0.7, 0.15, 0.15),
    gap_pairs: int = 1,
    ref_frame: Mapping[int, int] | None = None,
    boxes: Mapping | None = None,
    flows: Mapping | None = None,
    extra_metadata: Mapping | None = None,
) -> dict:
    """Write the dataset files (see the module docstring) into `out_dir`; returns the metadata.

    rows : per particle per frame: frame, particle, x, y (µm), vx, vy (µm/s),
        x_ref, y_ref (µm, NaN without reference), interior (bool), species (int, optional).
    length_scale_um : h; frame_rate_hz : 1/dt.
    ref_frame : frame -> reference frame (-1 none), recorded in pairs.parquet.
    boxes : frame -> `Box` for a periodic box (None: open window).
    flows : frame t -> the 6 coefficients of the background flow during t -> t+1
        (`mpd.geometry.kinematics`); frames without one get a zero flow.
    """
    return write_pair_table(out_dir, build_pairs(rows), length_scale_um=length_scale_um,
                            frame_rate_hz=frame_rate_hz, split_fractions=split_fractions, gap_pairs=gap_pairs,
                            ref_frame=ref_frame, boxes=boxes, flows=flows, extra_metadata=extra_metadata)


def write_pair_table(
    out_dir,
    table: pd.DataFrame,
    *,
    length_scale_um: float,
    frame_rate_hz: float,
    split_fractions=(0.7, 0.15, 0.15),
    gap_pairs: int = 1,
    ref_frame: Mapping[int, int] | None = None,
    boxes: Mapping | None = None,
    flows: Mapping | None = None,
    extra_metadata: Mapping | None = None,
    dimension: int = 2,
) -> dict:
    """`write_dataset` from the snapshot-pair rows (`build_pairs`' output: frame + the row columns).

    dimension 3: `ROW_COLUMNS_3D`, boxes are `OrthoBox`es (written as lx, ly, lz) and the
    metadata says ``dimension: 3`` (2D datasets carry no such key: their files are unchanged).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dt = 1.0 / float(frame_rate_hz)
    columns = row_columns(dimension)
    frame_col = table["frame"].to_numpy()
    pair_frames, starts, counts = np.unique(frame_col, return_index=True, return_counts=True)
    blocks = split_blocks(len(pair_frames), split_fractions, gap_pairs)
    interior = table["interior"].to_numpy()
    n_interior = np.add.reduceat(interior.astype(np.int64), starts) if len(starts) else np.zeros(0, np.int64)
    schema = pa.schema([(name, pa.from_numpy_dtype(np.dtype(dtype))) for name, (dtype, _) in columns.items()])
    everything = pa.RecordBatch.from_pandas(table[list(columns)], schema=schema, preserve_index=False)
    index_parts, split_info = [], {}
    for name in SPLITS:
        chosen = blocks[name]
        path = out_dir / f"{name}.arrow"
        with pa.OSFile(str(path), "wb") as sink, ipc.new_file(sink, schema) as writer:
            for k in chosen:  # one record batch per snapshot pair (zero-copy slices)
                writer.write_batch(everything.slice(int(starts[k]), int(counts[k])))
        frames = pair_frames[chosen]
        index = pd.DataFrame(
            {
                "split": name,
                "item": np.arange(len(chosen), dtype=np.int64),
                "frame": frames.astype(np.int64),
                "frame1": frames.astype(np.int64) + 1,
                "t_s": frames * dt,
                "n_particles": counts[chosen].astype(np.int64),
                "n_interior": n_interior[chosen],
                "ref_frame": np.array([ref_frame.get(int(f), -1) for f in frames], dtype=np.int64)
                if ref_frame is not None else np.full(len(chosen), -1, np.int64),
            }
        )
        coefficients = np.array([np.asarray(flows.get(int(f), np.zeros(6)), float) if flows else np.zeros(6)
                                 for f in frames]).reshape(-1, 6)
        for c, column in enumerate(FLOW_COLUMNS):
            index[column] = coefficients[:, c]
        if boxes is not None:
            for suffix, offset in (("", 0), ("1", 1)):
                for attr in box_attributes(dimension):
                    index[attr + suffix] = np.array([getattr(boxes[int(f) + offset], attr) for f in frames], float)
        index_parts.append(index)
        split_info[name] = {
            "file": path.name,
            "n_pairs": len(chosen),
            "first_frame": int(frames[0]) if len(frames) else None,
            "last_frame": int(frames[-1]) + 1 if len(frames) else None,
        }
    pd.concat(index_parts, ignore_index=True).to_parquet(out_dir / "pairs.parquet", index=False)
    metadata = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "length_scale_um": float(length_scale_um),
        "time_scale_s": dt,
        "nondimensionalisation": "reader returns x/h, v*dt/h, t/dt, box/h; files hold µm, µm/s, s",
        "row_columns": {name: {"dtype": dtype, "unit": unit} for name, (dtype, unit) in columns.items()},
        "periodic": boxes is not None,
        "n_species": int(table["species"].max()) + 1 if len(table) else 1,
        "splits": split_info,
        "split_fractions": [float(f) for f in split_fractions],
        "gap_pairs": int(gap_pairs),
        "n_pairs_total": len(pair_frames),
    }
    if dimension != 2:
        metadata["dimension"] = int(dimension)
    metadata.update(dict(extra_metadata or {}))
    (out_dir / "metadata.json").write_text(json.dumps(metadata, indent=2, ensure_ascii=False))
    return metadata


def read_metadata(path) -> dict:
    """metadata.json of a dataset directory (or of a geometry output directory holding `dataset/`)."""
    root = dataset_dir(path)
    return json.loads((root / "metadata.json").read_text())


def dataset_dir(path) -> Path:
    path = Path(path)
    if (path / "metadata.json").is_file() and (path / "pairs.parquet").is_file():
        return path
    if (path / "dataset" / "metadata.json").is_file():
        return path / "dataset"
    raise FileNotFoundError(f"{path} holds no snapshot-pair dataset (metadata.json and pairs.parquet)")
