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
from typing import NamedTuple, Self

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


class PairChunk(NamedTuple):
    """A piece of `write_dataset`'s rows: whole frames in time order, with their flows and reference frames."""

    rows: pd.DataFrame
    flows: Mapping | None = None
    ref_frame: Mapping | None = None


def write_dataset(
    out_dir,
    rows,
    *,
    length_scale_um: float,
    frame_rate_hz: float,
    split_fractions=(0.7, 0.15, 0.15),
    gap_pairs: int = 1,
    ref_frame: Mapping[int, int] | None = None,
    boxes: Mapping | None = None,
    flows: Mapping | None = None,
    extra_metadata: Mapping | None = None,
    n_pairs: int | None = None,
) -> dict:
    """Write the dataset files (see the module docstring) into `out_dir`; returns the metadata.

    rows : per particle per frame: frame, particle, x, y (µm), vx, vy (µm/s),
        x_ref, y_ref (µm, NaN without reference), interior (bool), species (int, optional).
        Or an iterable of `PairChunk`s (or DataFrames), for a video too long to hold:
        each chunk the rows of consecutive frames in time order; a chunk contributes the
        pairs (f, f+1) with both frames in it, so consecutive chunks share one frame (the
        first frame of the next chunk, whose rows need only frame, particle, x, y, vx,
        vy, is the t+1 of the last pair) and every pair is in exactly one chunk. Then
        `n_pairs`, the total number of pairs, is required (it fixes the splits before the
        first pair is written); only one chunk is held at a time.
    length_scale_um : h; frame_rate_hz : 1/dt.
    ref_frame : frame -> reference frame (-1 none), recorded in pairs.parquet.
    boxes : frame -> `Box` for a periodic box (None: open window).
    flows : frame t -> the 6 coefficients of the background flow during t -> t+1
        (`mpd.geometry.kinematics`); frames without one get a zero flow. A chunk's own
        `flows` and `ref_frame`, when given, replace these for its pairs.
    """
    if isinstance(rows, pd.DataFrame):
        return write_pair_table(out_dir, build_pairs(rows), length_scale_um=length_scale_um,
                                frame_rate_hz=frame_rate_hz, split_fractions=split_fractions, gap_pairs=gap_pairs,
                                ref_frame=ref_frame, boxes=boxes, flows=flows, extra_metadata=extra_metadata)
    if n_pairs is None:
        raise ValueError("write_dataset of an iterable of chunks needs n_pairs, the total number of snapshot pairs")
    with PairWriter(out_dir, n_pairs, length_scale_um=length_scale_um, frame_rate_hz=frame_rate_hz,
                    split_fractions=split_fractions, gap_pairs=gap_pairs, boxes=boxes) as writer:
        for chunk in rows:
            chunk = chunk if isinstance(chunk, PairChunk) else PairChunk(chunk)
            writer.add(build_pairs(chunk.rows),
                       ref_frame=chunk.ref_frame if chunk.ref_frame is not None else ref_frame,
                       flows=chunk.flows if chunk.flows is not None else flows)
        return writer.finish(extra_metadata)


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
    n_pairs = len(np.unique(table["frame"].to_numpy()))
    with PairWriter(out_dir, n_pairs, length_scale_um=length_scale_um, frame_rate_hz=frame_rate_hz,
                    split_fractions=split_fractions, gap_pairs=gap_pairs, boxes=boxes,
                    dimension=dimension) as writer:
        writer.add(table, ref_frame=ref_frame, flows=flows)
        return writer.finish(extra_metadata)


class PairWriter:
    """Writes the dataset files pair by pair, in time order, holding one batch of pairs at a time.

    `n_pairs` (the total, known beforehand) fixes the split blocks; `add` takes
    the next snapshot pairs (`build_pairs` rows, any number of whole pairs,
    continuing in time order) and appends each to its split's Arrow file;
    `finish` writes pairs.parquet and metadata.json. The files equal those
    of one `write_pair_table` call on all the pairs at once. Use as a context
    manager: the Arrow files are closed on the way out, also on an error.
    """

    def __init__(self, out_dir, n_pairs: int, *, length_scale_um: float, frame_rate_hz: float,
                 split_fractions=(0.7, 0.15, 0.15), gap_pairs: int = 1, boxes: Mapping | None = None,
                 dimension: int = 2):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.n_pairs = int(n_pairs)
        self.length_scale_um, self.dt = float(length_scale_um), 1.0 / float(frame_rate_hz)
        self.split_fractions, self.gap_pairs = split_fractions, gap_pairs
        self.boxes, self.dimension = boxes, dimension
        self.columns = row_columns(dimension)
        blocks = split_blocks(self.n_pairs, split_fractions, gap_pairs)
        self._split = np.full(self.n_pairs, -1, np.int64)  # split of each pair (-1: a dropped gap pair)
        for s, name in enumerate(SPLITS):
            self._split[blocks[name]] = s
        self._schema = pa.schema([(name, pa.from_numpy_dtype(np.dtype(dtype)))
                                  for name, (dtype, _) in self.columns.items()])
        # per pair: frame, n_particles, n_interior, ref_frame, flow (6), box attributes at t and t+1
        self._frame = np.zeros(self.n_pairs, np.int64)
        self._n_particles = np.zeros(self.n_pairs, np.int64)
        self._n_interior = np.zeros(self.n_pairs, np.int64)
        self._ref_frame = np.full(self.n_pairs, -1, np.int64)
        self._flow = np.zeros((self.n_pairs, len(FLOW_COLUMNS)))
        self._box = np.zeros((self.n_pairs, 2 * len(box_attributes(dimension)))) if boxes is not None else None
        self._done = 0
        self._max_species = None
        self._sinks, self._writers = {}, {}
        try:
            for name in SPLITS:
                self._sinks[name] = pa.OSFile(str(self.out_dir / f"{name}.arrow"), "wb")
                self._writers[name] = ipc.new_file(self._sinks[name], self._schema)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add(self, table: pd.DataFrame, *, ref_frame: Mapping[int, int] | None = None,
            flows: Mapping | None = None) -> None:
        """Append the pairs of `table` (frame + the row columns, sorted by frame then particle)."""
        frame_col = table["frame"].to_numpy()
        pair_frames, starts, counts = np.unique(frame_col, return_index=True, return_counts=True)
        if self._done + len(pair_frames) > self.n_pairs:
            raise ValueError(f"more snapshot pairs than the {self.n_pairs} announced")
        if len(pair_frames) == 0:
            return
        interior = table["interior"].to_numpy()
        n_interior = np.add.reduceat(interior.astype(np.int64), starts)
        everything = pa.RecordBatch.from_pandas(table[list(self.columns)], schema=self._schema, preserve_index=False,
                                                nthreads=1)
        species_max = int(table["species"].max())
        self._max_species = species_max if self._max_species is None else max(self._max_species, species_max)
        attributes = box_attributes(self.dimension)
        for j, f in enumerate(pair_frames):
            k = self._done
            self._done += 1
            if self._split[k] < 0:
                continue
            # one record batch per snapshot pair (zero-copy slices)
            self._writers[SPLITS[self._split[k]]].write_batch(everything.slice(int(starts[j]), int(counts[j])))
            self._frame[k], self._n_particles[k], self._n_interior[k] = f, counts[j], n_interior[j]
            if ref_frame is not None:
                self._ref_frame[k] = ref_frame.get(int(f), -1)
            if flows:
                self._flow[k] = np.asarray(flows.get(int(f), np.zeros(6)), float)
            if self.boxes is not None:
                self._box[k] = [getattr(self.boxes[int(f) + offset], attr) for offset in (0, 1) for attr in attributes]

    def finish(self, extra_metadata: Mapping | None = None) -> dict:
        """Close the Arrow files, write pairs.parquet and metadata.json; returns the metadata."""
        if self._done != self.n_pairs:
            raise ValueError(f"{self._done} snapshot pairs written, {self.n_pairs} announced")
        self.close()
        index_parts, split_info = [], {}
        attributes = box_attributes(self.dimension)
        for s, name in enumerate(SPLITS):
            chosen = self._split == s
            frames = self._frame[chosen]
            n = len(frames)
            index = pd.DataFrame(
                {
                    "split": name,
                    "item": np.arange(n, dtype=np.int64),
                    "frame": frames,
                    "frame1": frames + 1,
                    "t_s": frames * self.dt,
                    "n_particles": self._n_particles[chosen],
                    "n_interior": self._n_interior[chosen],
                    "ref_frame": self._ref_frame[chosen],
                }
            )
            coefficients = self._flow[chosen]
            for c, column in enumerate(FLOW_COLUMNS):
                index[column] = coefficients[:, c]
            if self.boxes is not None:
                values = self._box[chosen]
                for k, column in enumerate(a + suffix for suffix in ("", "1") for a in attributes):
                    index[column] = values[:, k]
            index_parts.append(index)
            split_info[name] = {
                "file": f"{name}.arrow",
                "n_pairs": n,
                "first_frame": int(frames[0]) if n else None,
                "last_frame": int(frames[-1]) + 1 if n else None,
            }
        pd.concat(index_parts, ignore_index=True).to_parquet(self.out_dir / "pairs.parquet", index=False)
        metadata = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "length_scale_um": self.length_scale_um,
            "time_scale_s": self.dt,
            "nondimensionalisation": "reader returns x/h, v*dt/h, t/dt, box/h; files hold µm, µm/s, s",
            "row_columns": {name: {"dtype": dtype, "unit": unit} for name, (dtype, unit) in self.columns.items()},
            "periodic": self.boxes is not None,
            "n_species": self._max_species + 1 if self._max_species is not None else 1,
            "splits": split_info,
            "split_fractions": [float(f) for f in self.split_fractions],
            "gap_pairs": int(self.gap_pairs),
            "n_pairs_total": self.n_pairs,
        }
        if self.dimension != 2:
            metadata["dimension"] = int(self.dimension)
        metadata.update(dict(extra_metadata or {}))
        (self.out_dir / "metadata.json").write_text(json.dumps(metadata, indent=2, ensure_ascii=False))
        return metadata

    def close(self) -> None:
        """Close the Arrow files (idempotent)."""
        while self._writers:
            _, writer = self._writers.popitem()
            writer.close()
        while self._sinks:
            _, sink = self._sinks.popitem()
            sink.close()


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
