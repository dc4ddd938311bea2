"""Checks on the trajectory table the geometry stage reads; one clear error per problem."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mpd.geometry.domain import Box

REQUIRED_COLUMNS = ("frame", "particle", "x", "y", "vx", "vy")
SCHEMA_HINT = "docs/data_schema.md: frame, particle (integers), x, y in µm, vx, vy in µm/s"


class GeometryInputError(ValueError):
    """The input of the geometry stage is unusable; the message names the file and column."""


def load_trajectories(trajectories) -> tuple[pd.DataFrame, str]:
    """(table, name for messages) from a DataFrame or a .parquet/.csv path."""
    if isinstance(trajectories, pd.DataFrame):
        return trajectories, "trajectories (DataFrame)"
    path = Path(trajectories)
    if not path.is_file():
        raise GeometryInputError(f"trajectory file {path} does not exist")
    try:
        table = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    except Exception as error:  # any reader failure becomes one message naming the file
        raise GeometryInputError(f"cannot read trajectory file {path}: {error}") from error
    return table, str(path)


def check_columns(columns, source: str = "trajectories") -> None:
    """Raise GeometryInputError naming the required columns (`REQUIRED_COLUMNS`) missing from `columns`."""
    missing = [c for c in REQUIRED_COLUMNS if c not in set(columns)]
    if missing:
        raise GeometryInputError(f"{source} lacks column(s) {', '.join(map(repr, missing))} ({SCHEMA_HINT})")


def validate_trajectories(table: pd.DataFrame, source: str = "trajectories") -> pd.DataFrame:
    """Return `table` with int64 frame/particle if it is usable; raise GeometryInputError otherwise."""
    if not isinstance(table, pd.DataFrame):
        raise GeometryInputError(f"{source}: expected a pandas DataFrame, got {type(table).__name__}")
    check_columns(table.columns, source)
    if len(table) == 0:
        raise GeometryInputError(f"{source} is empty: no rows ({SCHEMA_HINT})")
    for column in REQUIRED_COLUMNS:
        if not pd.api.types.is_numeric_dtype(table[column]) or pd.api.types.is_bool_dtype(table[column]):
            raise GeometryInputError(f"column {column!r} of {source} must be numeric, has dtype {table[column].dtype}")
        values = table[column].to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            first = table.loc[bad].iloc[0]
            raise GeometryInputError(
                f"column {column!r} of {source} has {int(bad.sum())} NaN/inf value(s) "
                f"(first at row {int(np.flatnonzero(bad)[0])}, frame {first['frame']}, particle {first['particle']})"
            )
    for column in ("frame", "particle"):
        values = table[column].to_numpy(dtype=np.float64)
        if (values != np.round(values)).any():
            raise GeometryInputError(f"column {column!r} of {source} must hold integers")
    if (table["frame"] < 0).any():
        raise GeometryInputError(f"column 'frame' of {source} has negative frame numbers")
    out = table.assign(frame=table["frame"].astype(np.int64), particle=table["particle"].astype(np.int64))
    duplicated = out.duplicated(["frame", "particle"])
    if duplicated.any():
        row = out.loc[duplicated].iloc[0]
        raise GeometryInputError(
            f"{source} has {int(duplicated.sum())} duplicated (frame, particle) rows "
            f"(first: frame {row['frame']}, particle {row['particle']})"
        )
    return out


def boxes_per_frame(box, frames) -> dict[int, Box]:
    """frame -> Box from one Box (fixed cell) or a table with columns frame, lx, ly, xy (µm; sheared cell)."""
    frames = np.unique(np.asarray(frames, dtype=np.int64))
    if isinstance(box, Box):
        return {int(f): box for f in frames}
    if isinstance(box, pd.DataFrame):
        missing = [c for c in ("frame", "lx", "ly", "xy") if c not in box.columns]
        if missing:
            raise GeometryInputError(f"box table lacks column(s) {', '.join(map(repr, missing))}")
        table = box.set_index(box["frame"].astype(np.int64))
        absent = np.setdiff1d(frames, table.index.to_numpy())
        if len(absent):
            raise GeometryInputError(f"box table has no row for frame(s) {absent[:10].tolist()}")
        rows = table.loc[frames]
        return {int(f): Box(float(r.lx), float(r.ly), float(r.xy)) for f, r in zip(frames, rows.itertuples())}
    raise GeometryInputError(f"box must be a Box or a DataFrame with frame, lx, ly, xy; got {type(box).__name__}")
