"""Trajectories read frame chunk by frame chunk: what keeps the geometry stage's memory bounded.

`compute_geometry` never holds the whole trajectory table unless it was
given one. It opens the input as a `TrajectorySource`:

* a ``.parquet`` path (the tracking stage's ``trajectories.parquet``, one row
  group per chunk of frames): `ParquetTrajectories`. Opening it makes one
  pass over the file in record batches (the required columns only) that
  validates every batch (`mpd.geometry.inputs.validate_trajectories`), counts
  the rows of each frame and keeps the extent of the positions; afterwards
  `read(frames)` loads just those frames through a pyarrow.dataset filter on
  ``frame`` (row groups whose statistics exclude them are skipped);
* a DataFrame or a ``.csv`` path (read whole; a CSV cannot be read by frame):
  `TableTrajectories`, validated and sorted once, `read` slices it.

Either way `read` returns the rows of the requested frames, validated,
sorted by (frame, particle) and with int64 frame and particle, so the stage's
per-chunk computation does not depend on where the rows came from, nor on how
the frames are cut into chunks. Memory: a parquet source holds one record
batch (`BATCH_ROWS`) while scanning, and per frame its number and row count.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from mpd.geometry.domain import Window
from mpd.geometry.inputs import REQUIRED_COLUMNS, GeometryInputError, check_columns, validate_trajectories

BATCH_ROWS = 1 << 16  # rows per record batch of the validation pass over a parquet file
OPTIONAL_COLUMNS = ("species",)


class TrajectorySource:
    """Common interface: `source` (name for messages), `frames`, `counts`, `columns`, `extent()`, `read()`."""

    source: str
    frames: np.ndarray  # recorded frame numbers, int64, increasing
    counts: np.ndarray  # rows per recorded frame, int64
    columns: tuple[str, ...]  # the columns `read` returns by default

    @property
    def n_rows(self) -> int:
        return int(self.counts.sum())

    def extent(self) -> tuple[np.ndarray, np.ndarray]:
        """(min, max) of x and y over all rows, µm."""
        raise NotImplementedError

    def read(self, frames, columns=None) -> pd.DataFrame:
        """Rows of the recorded `frames` (increasing), sorted by (frame, particle), index 0..n-1."""
        raise NotImplementedError

    def _check_frames(self, frames) -> np.ndarray:
        frames = np.asarray(frames, np.int64)
        position = np.searchsorted(self.frames, frames)
        if (position >= len(self.frames)).any() or (self.frames[np.minimum(position, len(self.frames) - 1)]
                                                     != frames).any():
            raise ValueError(f"frames {frames.tolist()[:10]} are not all recorded frames of {self.source}")
        if (np.diff(frames) <= 0).any():
            raise ValueError("frames to read must be increasing")
        return position

    def _check_counts(self, table: pd.DataFrame, frames, position) -> None:
        found = table["frame"].to_numpy()
        got = np.searchsorted(found, frames, side="right") - np.searchsorted(found, frames, side="left")
        if len(found) != self.counts[position].sum() or (got != self.counts[position]).any():
            raise GeometryInputError(f"{self.source} changed while it was being read (frames {frames[0]}-{frames[-1]} "
                                     f"hold other rows than at the start); rerun the stage")


class TableTrajectories(TrajectorySource):
    """A trajectory table in memory (DataFrame, or a CSV read whole)."""

    def __init__(self, table: pd.DataFrame, source: str):
        table = validate_trajectories(table, source)
        columns = [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in table.columns]
        self.table = table[columns].sort_values(["frame", "particle"], kind="stable").reset_index(drop=True)
        self.source, self.columns = source, tuple(columns)
        self.frames, self._starts, self.counts = np.unique(
            self.table["frame"].to_numpy(), return_index=True, return_counts=True)

    def extent(self):
        positions = self.table[["x", "y"]].to_numpy(np.float64)
        return positions.min(axis=0), positions.max(axis=0)

    def read(self, frames, columns=None) -> pd.DataFrame:
        position = self._check_frames(frames)
        columns = list(self.columns if columns is None else columns)
        pieces = [self.table.iloc[self._starts[a]:self._starts[b - 1] + self.counts[b - 1]][columns]
                  for a, b in _runs(position)]
        return pd.concat(pieces, ignore_index=True) if len(pieces) != 1 else pieces[0].reset_index(drop=True)


class ParquetTrajectories(TrajectorySource):
    """A trajectory parquet file, read by frames (one validation pass when opened)."""

    def __init__(self, path):
        path = Path(path)
        self.source = str(path)
        try:
            self._file = pq.ParquetFile(path)
            names = self._file.schema_arrow.names
        except Exception as error:  # any reader failure becomes one message naming the file
            raise GeometryInputError(f"cannot read trajectory file {path}: {error}") from error
        check_columns(names, self.source)
        if self._file.metadata.num_rows == 0:
            raise GeometryInputError(f"{self.source} is empty: no rows")
        self.columns = tuple(c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in names)
        frame_parts, count_parts = [], []
        lo, hi = np.full(2, np.inf), np.full(2, -np.inf)
        first_row = 0
        for batch in self._batches():
            if batch.num_rows == 0:
                continue
            rows = validate_trajectories(
                batch.to_pandas(), f"{self.source} (the {batch.num_rows} rows from row {first_row})")
            first_row += batch.num_rows
            f, c = np.unique(rows["frame"].to_numpy(), return_counts=True)
            frame_parts.append(f)
            count_parts.append(c)
            xy = rows[["x", "y"]].to_numpy(np.float64)
            lo, hi = np.minimum(lo, xy.min(axis=0)), np.maximum(hi, xy.max(axis=0))
        frames, inverse = np.unique(np.concatenate(frame_parts), return_inverse=True)
        self.frames = frames.astype(np.int64)
        self.counts = np.bincount(inverse, weights=np.concatenate(count_parts)).astype(np.int64)
        self._extent = (lo, hi)
        self._dataset = pads.dataset(str(path), format="parquet")

    def _batches(self):
        try:
            yield from self._file.iter_batches(batch_size=BATCH_ROWS, columns=list(self.columns))
        except GeometryInputError:
            raise
        except Exception as error:
            raise GeometryInputError(f"cannot read trajectory file {self.source}: {error}") from error

    def extent(self):
        return self._extent

    def read(self, frames, columns=None) -> pd.DataFrame:
        frames = np.asarray(frames, np.int64)
        position = self._check_frames(frames)
        columns = list(dict.fromkeys(["frame", "particle", *(self.columns if columns is None else columns)]))
        field = pc.field("frame")
        condition = None
        for a, b in _runs(position):  # one range per run of consecutive recorded frames
            term = (field >= int(self.frames[a])) & (field <= int(self.frames[b - 1]))
            condition = term if condition is None else condition | term
        try:
            table = self._dataset.to_table(columns=columns, filter=condition).to_pandas()
        except Exception as error:
            raise GeometryInputError(f"cannot read trajectory file {self.source}: {error}") from error
        if set(REQUIRED_COLUMNS) <= set(columns):
            table = validate_trajectories(table, f"{self.source} (frames {frames[0]}-{frames[-1]})")
        else:
            table = table.astype({c: np.int64 for c in ("frame", "particle") if c in columns})
        table = table.sort_values(["frame", "particle"], kind="stable").reset_index(drop=True)
        self._check_counts(table, frames, position)
        return table


def open_trajectories(trajectories) -> TrajectorySource:
    """A `TrajectorySource` from a source, a DataFrame, or a .parquet/.csv path."""
    if isinstance(trajectories, TrajectorySource):
        return trajectories
    if isinstance(trajectories, pd.DataFrame):
        return TableTrajectories(trajectories, "trajectories (DataFrame)")
    if not isinstance(trajectories, (str, Path)):
        raise GeometryInputError(f"trajectories: expected a pandas DataFrame or a file path, "
                                 f"got {type(trajectories).__name__}")
    path = Path(trajectories)
    if not path.is_file():
        raise GeometryInputError(f"trajectory file {path} does not exist")
    if path.suffix == ".csv":
        try:
            table = pd.read_csv(path)
        except Exception as error:
            raise GeometryInputError(f"cannot read trajectory file {path}: {error}") from error
        return TableTrajectories(table, str(path))
    return ParquetTrajectories(path)


def plan_chunks(n_frames: int, chunk_frames: int) -> list[tuple[int, int]]:
    """[start, stop) indices into the recorded frames, `chunk_frames` frames each (the last may be shorter)."""
    return [(a, min(a + chunk_frames, n_frames)) for a in range(0, n_frames, chunk_frames)]


def check_chunk_frames(chunk_frames) -> int:
    """`chunk_frames` as an int; GeometryInputError naming geometry.chunk_frames unless an integer >= 1."""
    if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, (int, np.integer)) or chunk_frames < 1:
        raise GeometryInputError(
            f"geometry.chunk_frames (frames per chunk of the geometry stage) must be an integer >= 1, "
            f"got {chunk_frames!r}")
    return int(chunk_frames)


def count_pairs(source: TrajectorySource, chunks) -> int:
    """Snapshot pairs (f, f+1): consecutive recorded frames that share a particle (reads frame, particle only)."""
    frames, n = source.frames, 0
    for a, b in chunks:
        stop = b + 1 if b < len(frames) and frames[b] == frames[b - 1] + 1 else b  # and the frame after
        ids = source.read(frames[a:stop], columns=["frame", "particle"])["particle"].to_numpy()
        ends = np.cumsum(source.counts[a:stop])
        starts = ends - source.counts[a:stop]
        for k in range(a, min(b, stop - 1)):
            if frames[k + 1] == frames[k] + 1:
                i = k - a
                if len(np.intersect1d(ids[starts[i]:ends[i]], ids[starts[i + 1]:ends[i + 1]])):
                    n += 1
    return n


def spacing_in_window(source: TrajectorySource, window, chunk_frames: int = 100) -> float:
    """a = sqrt(2 / (sqrt(3) rho)) µm over the rows inside `window`, read chunk by chunk.

    The same number as `analysis.measure.length_scale(table, window=window)`
    on the whole table (rho: mean over the frames with a row in the window of
    their rows in it, per µm^2 of the window), without holding the table.
    """
    w = Window(*map(float, window)).check()
    total, n_frames = 0, 0
    for a, b in plan_chunks(len(source.frames), check_chunk_frames(chunk_frames)):
        table = source.read(source.frames[a:b], columns=["frame", "x", "y"])
        x, y = table["x"].to_numpy(), table["y"].to_numpy()
        inside = (x >= w.x_min) & (x <= w.x_max) & (y >= w.y_min) & (y <= w.y_max)
        per_frame = np.unique(table["frame"].to_numpy()[inside], return_counts=True)[1]
        total += int(per_frame.sum())
        n_frames += len(per_frame)
    if n_frames == 0:
        raise GeometryInputError(f"{source.source}: no tracked position inside the window {tuple(w)}")
    n = float(total) / n_frames
    return float(np.sqrt(2.0 / (np.sqrt(3.0) * n / ((w.x_max - w.x_min) * (w.y_max - w.y_min)))))


def _runs(position: np.ndarray):
    """[start, stop) of the runs of consecutive integers in `position`."""
    if len(position) == 0:
        return []
    breaks = np.flatnonzero(np.diff(position) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(position)]])
    return [(int(position[s]), int(position[e - 1]) + 1) for s, e in zip(starts, stops)]


__all__ = [
    "ParquetTrajectories",
    "TableTrajectories",
    "TrajectorySource",
    "check_chunk_frames",
    "count_pairs",
    "open_trajectories",
    "plan_chunks",
    "spacing_in_window",
]
