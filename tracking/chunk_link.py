"""Split tracking, step 3: linking one chunk of frames with trackpy's iterative linker, and the files between
the steps: the chunks' feature files read as a stream of frames, each link job's rows and the linker's state at
the chunk's boundaries (``link_state_path``), and how the gather maps a job's particle ids onto global ones.

The linker's decisions from a frame on depend only on its state before that frame, so a chunk linked from the
state its predecessor ends in gives exactly the unsplit run's links (``tracking.stream``, step 3).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.interpolate import NearestNDInterpolator
from trackpy.linking.linking import Linker
from trackpy.linking.utils import Point, SubnetOversizeException, TrackUnstored
from trackpy.predict import NearestVelocityPredict

from mpd.jsonsafe import json_ready

from ._quiet import quiet_trackpy
from .chunk_plan import _check_chunk, _check_split_supported, _plan_params, _write_parquet, load_plan
from .io import TrackingInputError
from .link import (
    POS_COLUMNS,
    AffineVelocityPredict,
    LinkingError,
    _first_pair_velocities,
    auto_search_range_px,
    bootstrap_field,
)
from .params import AUTO, TrackingParams
from .pipeline import FEATURE_COLUMNS, check_units

LINKED_COLUMNS = ["frame", "particle", "x_px", "y_px", "mass", "size", "ecc", "signal", "raw_mass", "ep"]


def _read_features(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    try:
        return pq.read_table(path, columns=list(columns)).to_pandas()
    except (OSError, pa.ArrowException, KeyError) as error:
        raise TrackingInputError(f"{path}: cannot be read as a chunk of features ({error}); locate that chunk "
                                 f"again (tracking.stream.locate_chunk)") from None


def _check_feature_files(plan: dict, feature_files) -> tuple[list[Path], np.ndarray]:
    """The chunk files in order, checked against the plan; features per selected frame."""
    files = [Path(f) for f in feature_files]
    if len(files) != len(plan["chunks"]):
        raise TrackingInputError(f"{len(files)} feature file(s) given for the plan's {len(plan['chunks'])} chunks; "
                                 f"give one file per chunk, in order")
    frame_numbers = np.asarray(plan["frame_numbers"], np.int64)
    counts = np.zeros(len(frame_numbers), np.int64)
    for path, (start, stop) in zip(files, plan["chunks"], strict=True):
        if not path.is_file():
            raise TrackingInputError(f"{path}: feature file of a chunk not found; run locate_chunk for it")
        schema = pq.read_schema(path)
        missing = [c for c in FEATURE_COLUMNS if c not in schema.names]
        if missing:
            raise TrackingInputError(f"{path}: lacks the feature columns {missing}; locate that chunk again")
        frames = _read_features(path, ["frame"])["frame"].to_numpy()
        position = np.searchsorted(frame_numbers, frames)
        bad = (position < start) | (position >= stop) | (frame_numbers[np.minimum(position, len(frame_numbers) - 1)]
                                                          != frames)
        if bad.any() or np.any(np.diff(frames) < 0):
            raise TrackingInputError(f"{path}: holds frames outside its chunk (frames {frame_numbers[start]} .. "
                                     f"{frame_numbers[stop - 1]}) or out of order; give the chunk files in the "
                                     f"plan's order, or locate that chunk again")
        counts += np.bincount(position, minlength=len(frame_numbers))
    return files, counts


def _frames_of(table: pd.DataFrame) -> Iterator[pd.DataFrame]:
    """The rows of each frame of a table sorted by frame, in their order."""
    frames = table["frame"].to_numpy()
    bounds = np.flatnonzero(np.r_[True, frames[1:] != frames[:-1], True]) if len(frames) else np.array([0])
    for start, stop in itertools.pairwise(bounds):
        yield table.iloc[start:stop]


class _Peekable:
    """An iterator of (chunk, frame table) that can look ahead (the auto search range, the bootstrap)."""

    def __init__(self, iterator):
        self.iterator, self.buffer = iterator, []

    def take(self, n_nonempty: int, min_rows: int = 1) -> list[pd.DataFrame]:
        """The first frames until n_nonempty of them hold at least min_rows rows (or the end)."""
        seen = [frame for _, frame in self.buffer]
        while sum(len(f) >= min_rows for f in seen) < n_nonempty:
            try:
                item = next(self.iterator)
            except StopIteration:
                break
            self.buffer.append(item)
            seen.append(item[1])
        return seen

    def __iter__(self):
        while self.buffer:
            yield self.buffer.pop(0)
        yield from self.iterator


def _linked_table(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Linked frames (columns frame, particle, x, y, mass, ...) as one table of LINKED_COLUMNS, rows in order."""
    table = (pd.concat(frames, ignore_index=True) if frames
             else pd.DataFrame({c: pd.Series(dtype=np.int64 if c in ("frame", "particle") else float)
                                for c in ("frame", "particle", "x", "y")}))
    table = table.rename(columns={"x": "x_px", "y": "y_px"})
    for column in LINKED_COLUMNS:
        if column not in table:
            table[column] = pd.Series(dtype=float)
    table = table[LINKED_COLUMNS]
    table["particle"] = table["particle"].astype(np.int64)
    table["frame"] = table["frame"].astype(np.int64)
    return table


def _search_range(params: TrackingParams, frames: _Peekable, pixel_size_um: float) -> tuple[float, dict]:
    """The search range (px) and its record, as link_features resolves it."""
    link = params.link
    record: dict = {}
    if link.search_range_px is not None:
        search_range_px = link.search_range_px
    elif link.search_range_um == AUTO:
        first = frames.take(10, min_rows=2)
        record["search_range"] = auto_search_range_px(pd.concat(first, ignore_index=True) if first
                                                      else pd.DataFrame({"frame": [], "x": [], "y": []}))
        search_range_px = record["search_range"]["search_range_px"]
    else:
        search_range_px = link.search_range_um / pixel_size_um
    record["search_range_px"] = float(search_range_px)
    return float(search_range_px), record


def _frame_stream(files: Sequence[Path], first_chunk: int = 0, first_frame: int | None = None
                  ) -> Iterator[tuple[int, pd.DataFrame]]:
    """(chunk, rows of one frame in px: frame, x, y, mass, ...) for every frame with features, in order.

    ``files`` are the chunks first_chunk, first_chunk + 1, ...; ``first_frame``: frames before it are skipped.
    """
    columns = ["frame", "x_px", "y_px", "mass", "size", "ecc", "signal", "raw_mass", "ep"]
    for chunk, path in enumerate(files, start=first_chunk):
        table = _read_features(path, columns).rename(columns={"x_px": "x", "y_px": "y"})
        table["frame"] = table["frame"].astype(np.int64)
        if first_frame is not None:
            table = table[table["frame"].to_numpy() >= first_frame]
        for frame in _frames_of(table):
            yield chunk, frame


# --- linking per chunk: trackpy's linker, its state at a chunk boundary, the warm-up ---------------------------

LINK_STATE_VERSION = 1
_NO_COORDS = np.empty((0, len(POS_COLUMNS)))


def _null_interpolator(*x):  # trackpy.predict.NearestVelocityPredict's, when a frame pair shares no particle
    return np.zeros((len(x),))


class _LinkEngine:
    """trackpy's iterative linker (``trackpy.linking.Linker``) driven frame by frame, as ``trackpy.link``
    (empty frames linked as empty levels) or a predictor's ``link_df_iter`` (non-empty frames only, the
    predictor bootstrapped as ``tracking.link.link_features`` does) drive it, whose state can be read and
    restored between two frames (``state``, ``restore``).

    The state before a frame is everything the linker's later decisions depend on: the features it links
    from (the last linked frame's, and the features lost within ``link.memory`` levels with the level each
    was lost at), the predictor's velocity field (AffineVelocityPredict: field and centre;
    NearestVelocityPredict: the interpolator's points and velocities) and the next particle id. Features are
    named by (frame, row within the frame).
    """

    def __init__(self, params: TrackingParams, search_range_px: float, pixel_size_um: float):
        link = params.link
        self.kind = link.predictor
        self.memory = int(link.memory)
        self.search_range_px = float(search_range_px)
        self.kwargs = {"memory": link.memory, "adaptive_step": link.adaptive_step}
        if link.adaptive_stop_um is not None:
            self.kwargs["adaptive_stop"] = link.adaptive_stop_um / pixel_size_um
        self.linker = None
        self.predictor = None
        self.last_t: int | None = None
        self.counter = None
        self.recent: dict[int, list | dict] = {}  # frame -> its points (list: row order; dict: row -> point)
        self.bootstrap: dict | None = None

    def _new_linker(self) -> None:
        predict = None if self.predictor is None else self.predictor.predict
        self.linker = Linker(self.search_range_px, predictor=predict, **self.kwargs)

    def start(self, first_frames: list[pd.DataFrame]) -> None:
        """A fresh linker; with a predictor, bootstrapped on the first two non-empty frames given."""
        if self.kind != "none":
            pair = pd.concat([f for f in first_frames if len(f)][:2], ignore_index=True)
            field, centre, first_pair = bootstrap_field(pair, self.search_range_px, **self.kwargs)
            self.bootstrap = {
                "frames": sorted(int(f) for f in pair["frame"].unique()),
                "record": None if field is None else {"centre_yx": np.round(centre, 4).tolist(),
                                                      "coefficients": np.round(field, 6).tolist()}}
            if self.kind == "affine":
                self.predictor = AffineVelocityPredict(field, centre, pos_columns=POS_COLUMNS)
            else:
                guess = _first_pair_velocities(first_pair)
                self.predictor = (NearestVelocityPredict(guess[0], guess[1], pos_columns=POS_COLUMNS)
                                  if guess is not None else NearestVelocityPredict(pos_columns=POS_COLUMNS))
            self.predictor.t_column = "frame"
        self._new_linker()

    def link(self, frame: pd.DataFrame) -> np.ndarray:
        """Link one non-empty frame (rows in trackpy's order); its particle ids."""
        t = int(frame["frame"].iloc[0])
        coords = frame[POS_COLUMNS].to_numpy()
        linker = self.linker
        if self.last_t is None:
            linker.init_level(coords, t)
            self.counter = TrackUnstored.counter
        else:
            TrackUnstored.counter = self.counter  # trackpy's track counter is global: this engine's own
            if self.kind == "none":
                for gap in range(self.last_t + 1, t):  # trackpy.link links the frames between as empty ones
                    linker.next_level(_NO_COORDS, gap)
            linker.next_level(coords, t)
        points = list(linker.hash.points)
        ids = np.fromiter((p.track.id for p in points), np.int64, len(points))
        if self.predictor is not None:
            self.predictor.observe(frame.assign(particle=ids))
        self.last_t = t
        self.recent[t] = points
        while len(self.recent) > self.memory + 1:  # a remembered feature is at most memory + 1 frames old
            del self.recent[next(iter(self.recent))]
        return ids

    def state(self) -> dict | None:
        """The linker's state before the next frame (None before the first frame)."""
        if self.last_t is None:
            return None
        linker = self.linker
        current = self.recent[self.last_t]
        remembered = []
        if linker.mem_set:
            where = {}
            for t, points in self.recent.items():
                if t != self.last_t:
                    for i, p in (enumerate(points) if isinstance(points, list) else points.items()):
                        where[id(p)] = (t, i)
            for slot, members in enumerate(linker.mem_history):
                for p in members:
                    if p in linker.mem_set:
                        remembered.append((*where[id(p)], slot, p))
            remembered.sort(key=lambda item: item[:2])
        next_particle = next(self.counter)
        self.counter = itertools.count(next_particle)
        TrackUnstored.counter = self.counter
        points = list(current) + [item[3] for item in remembered]
        n = len(current)
        state = {
            "last_t": int(self.last_t), "next_particle": int(next_particle),
            "t": np.r_[np.full(n, self.last_t, np.int64), np.array([r[0] for r in remembered], np.int64)],
            "index": np.r_[np.arange(n, dtype=np.int64), np.array([r[1] for r in remembered], np.int64)],
            "slot": np.r_[np.full(n, -1, np.int64), np.array([r[2] for r in remembered], np.int64)],
            "particle": np.fromiter((p.track.id for p in points), np.int64, len(points)),
            "pos": np.array([p.pos for p in points], np.float64).reshape(-1, len(POS_COLUMNS)),
            "predictor": {"kind": self.kind},
        }
        predictor = self.predictor
        if isinstance(predictor, AffineVelocityPredict):
            state["predictor"].update(field=None if predictor.field is None else np.array(predictor.field, float),
                                      centre=np.array(predictor.centre, float))
        elif isinstance(predictor, NearestVelocityPredict):
            interpolator = predictor.interpolator
            state["predictor"].update(
                use_initial_guess=bool(predictor.use_initial_guess),
                interpolator=None if not isinstance(interpolator, NearestNDInterpolator)
                else (np.array(interpolator.points, float), np.array(interpolator.values, float)))
        return state

    def restore(self, state: dict) -> None:
        """Continue from a state (``state()``'s): the linker as trackpy's would be before the next frame."""
        kind = state["predictor"]["kind"]
        if kind != self.kind:
            raise LinkingError(f"a link state of predictor {kind!r} given to a {self.kind!r} linker")
        cur = state["slot"] < 0
        t, pos, particle = state["t"], state["pos"], state["particle"]
        last = pd.DataFrame({"frame": t[cur], POS_COLUMNS[0]: pos[cur, 0], POS_COLUMNS[1]: pos[cur, 1]},
                            index=pd.Index(particle[cur], name="particle"))
        if kind == "affine":
            self.predictor = AffineVelocityPredict(state["predictor"]["field"], state["predictor"]["centre"],
                                                   pos_columns=POS_COLUMNS)
            self.predictor.previous = last
        elif kind != "none":
            self.predictor = NearestVelocityPredict(pos_columns=POS_COLUMNS)
            self.predictor.use_initial_guess = state["predictor"]["use_initial_guess"]
            interpolator = state["predictor"]["interpolator"]
            self.predictor.interpolator = (_null_interpolator if interpolator is None
                                           else NearestNDInterpolator(*interpolator))
            self.predictor.recent_frames.append(last)
        if self.predictor is not None:
            self.predictor.t_column = "frame"
        self._new_linker()
        linker = self.linker
        Point.reset_counter()
        TrackUnstored.reset_counter()
        linker.ndim = len(POS_COLUMNS)
        linker.mem_set = set()
        linker.mem_history = [set() for _ in range(self.memory)]
        self.recent = {}

        def point(frame, position, pid):
            p = Point(int(frame), position)
            TrackUnstored(p).id = int(pid)
            p.track.indx = int(pid)
            return p

        for k in np.flatnonzero(~cur):
            p = point(t[k], pos[k], particle[k])
            linker.mem_set.add(p)
            linker.mem_history[state["slot"][k]].add(p)
            self.recent.setdefault(int(t[k]), {})[int(state["index"][k])] = p
        points = [point(state["last_t"], pos[k], particle[k]) for k in np.flatnonzero(cur)]
        linker.hash = linker.hash_cls(points, ndim=linker.ndim, to_eucl=linker.to_eucl, dist_func=linker.dist_func)
        self.recent[int(state["last_t"])] = points
        self.last_t = int(state["last_t"])
        self.counter = itertools.count(int(state["next_particle"]))
        TrackUnstored.counter = self.counter


def _same_state(a: dict | None, b: dict | None) -> bool:
    """Two link states equal but for the particle ids: the same features to link from (remembered ones with
    the same level), the same predictor field, bit for bit."""
    if a is None or b is None:
        return a is None and b is None
    if a["last_t"] != b["last_t"] or a["predictor"]["kind"] != b["predictor"]["kind"]:
        return False
    if not all(np.array_equal(a[k], b[k]) for k in ("t", "index", "slot", "pos")):
        return False
    pa_, pb = a["predictor"], b["predictor"]
    if pa_["kind"] == "affine":
        if (pa_["field"] is None) != (pb["field"] is None):
            return False
        return (pa_["field"] is None or np.array_equal(pa_["field"], pb["field"])) and \
            np.array_equal(pa_["centre"], pb["centre"])
    if pa_["kind"] == "nearest_velocity":
        ia, ib = pa_["interpolator"], pb["interpolator"]
        if pa_["use_initial_guess"] != pb["use_initial_guess"] or (ia is None) != (ib is None):
            return False
        return ia is None or (np.array_equal(ia[0], ib[0]) and np.array_equal(ia[1], ib[1]))
    return True


def _state_arrays(prefix: str, state: dict | None) -> tuple[dict, dict]:
    """A state as npz arrays and JSON-able flags."""
    if state is None:
        return {}, {"present": False}
    arrays = {f"{prefix}.{k}": state[k] for k in ("t", "index", "slot", "particle", "pos")}
    flags = {"present": True, "last_t": state["last_t"], "next_particle": state["next_particle"]}
    pred = state["predictor"]
    flags["predictor"] = {"kind": pred["kind"]}
    if pred["kind"] == "affine":
        flags["predictor"]["field"] = pred["field"] is not None
        if pred["field"] is not None:
            arrays[f"{prefix}.field"] = pred["field"]
        arrays[f"{prefix}.centre"] = pred["centre"]
    elif pred["kind"] == "nearest_velocity":
        flags["predictor"].update(use_initial_guess=pred["use_initial_guess"],
                                  interpolator=pred["interpolator"] is not None)
        if pred["interpolator"] is not None:
            arrays[f"{prefix}.points"], arrays[f"{prefix}.values"] = pred["interpolator"]
    return arrays, flags


def _state_from_arrays(prefix: str, flags: dict, arrays) -> dict | None:
    if not flags["present"]:
        return None
    state = {k: np.asarray(arrays[f"{prefix}.{k}"]) for k in ("t", "index", "slot", "particle", "pos")}
    state.update(last_t=int(flags["last_t"]), next_particle=int(flags["next_particle"]))
    kind = flags["predictor"]["kind"]
    pred = {"kind": kind}
    if kind == "affine":
        pred["field"] = np.asarray(arrays[f"{prefix}.field"]) if flags["predictor"]["field"] else None
        pred["centre"] = np.asarray(arrays[f"{prefix}.centre"])
    elif kind == "nearest_velocity":
        pred["use_initial_guess"] = bool(flags["predictor"]["use_initial_guess"])
        pred["interpolator"] = ((np.asarray(arrays[f"{prefix}.points"]), np.asarray(arrays[f"{prefix}.values"]))
                                if flags["predictor"]["interpolator"] else None)
    state["predictor"] = pred
    return state


def link_state_path(link_path) -> Path:
    """The state file beside a chunk's link file: ``chunk-00001.state.npz`` beside ``chunk-00001.parquet``."""
    link_path = Path(link_path)
    return link_path.with_name(link_path.name.removesuffix(".parquet") + ".state.npz")


def _plan_id(plan: dict) -> str:
    return hashlib.sha256(json.dumps(json_ready(plan), sort_keys=True).encode()).hexdigest()[:16]


def link_chunk(plan, chunk: int, feature_files, out_path) -> Path:
    """Link the frames of one chunk, starting ``link_overlap_frames`` frames earlier (the warm-up).

    ``feature_files``: the feature files of the chunks ``link_chunk_inputs(plan, chunk)`` names, in that
    order (or a mapping chunk -> file). Writes ``out_path`` (parquet: the chunk's own linked rows, columns
    LINKED_COLUMNS, particle ids local to this job) and, beside it, ``link_state_path(out_path)`` (npz: the
    linker's state before the chunk's first frame and after its last, the next particle id, the search range
    and the bootstrap), both atomically. ``link_chunks`` checks each chunk's starting state against its
    predecessor's final one: equal, the chunk's links are the unsplit run's and only its ids change.
    One chunk of features and the warm-up frames are held in memory.
    """
    plan = load_plan(plan)
    _check_chunk(plan, chunk)
    params = _plan_params(plan)
    _check_split_supported(params)
    pixel_size_um = check_units(plan["units"]["pixel_size_um"], plan["units"]["frame_rate_hz"])[0]
    needed = plan["link_inputs"][chunk]
    if isinstance(feature_files, dict):
        missing = [j for j in needed if j not in feature_files]
        if missing:
            raise TrackingInputError(f"link_chunk {chunk}: the feature files of chunks {missing} are missing; give "
                                     f"those of chunks {needed} (link_chunk_inputs)")
        by_chunk = {j: Path(feature_files[j]) for j in needed}
    else:
        feature_files = [Path(f) for f in feature_files]
        if len(feature_files) != len(needed):
            raise TrackingInputError(f"link_chunk {chunk}: {len(feature_files)} feature file(s) given; give those "
                                     f"of chunks {needed} (link_chunk_inputs), in that order")
        by_chunk = dict(zip(needed, feature_files, strict=True))
    for j, path in by_chunk.items():
        if not path.is_file():
            raise TrackingInputError(f"{path}: feature file of chunk {j} not found; run locate_chunk for it")
    frame_numbers = np.asarray(plan["frame_numbers"], np.int64)
    a, b = plan["chunks"][chunk]
    warm = max(0, a - plan["link_overlap_frames"]) if chunk else a
    head = [by_chunk[j] for j in itertools.takewhile(lambda j: j in by_chunk, range(len(plan["chunks"])))]
    search_range_px, record = _search_range(params, _Peekable(_frame_stream(head)), pixel_size_um)
    span = [j for j in needed if plan["chunks"][j][0] < b and plan["chunks"][j][1] > warm]
    stream = ((j, frame) for j, frame in _frame_stream([by_chunk[j] for j in span], span[0],
                                                        int(frame_numbers[warm]) if warm < len(frame_numbers) else None)
              if int(frame["frame"].iloc[0]) <= frame_numbers[b - 1])
    frames = _Peekable(stream)
    engine = _LinkEngine(params, search_range_px, pixel_size_um)
    first_own = int(frame_numbers[a])
    own, start_state, started = [], None, chunk == 0
    try:
        with warnings.catch_warnings(), quiet_trackpy():
            warnings.simplefilter("ignore")
            first = frames.take(2)
            if first:
                engine.start(first)
            for _, frame in frames:
                if not started and int(frame["frame"].iloc[0]) >= first_own:
                    start_state, started = engine.state(), True
                ids = engine.link(frame)
                if started:
                    own.append(frame.assign(particle=ids))
            if not started:
                start_state = engine.state()
            end_state = engine.state()
    except SubnetOversizeException as error:
        raise _oversize(error, search_range_px, pixel_size_um) from None
    table = _linked_table(own)
    start_arrays, start_flags = _state_arrays("start", start_state)
    end_arrays, end_flags = _state_arrays("end", end_state)
    meta = {"version": LINK_STATE_VERSION, "plan": _plan_id(plan), "chunk": int(chunk), "rows": len(table),
            "warm_up": {"first_frame": int(frame_numbers[warm]), "frames": a - warm},
            "search_range": record, "bootstrap": engine.bootstrap, "start": start_flags, "end": end_flags}
    out_path = Path(out_path)
    _write_npz(link_state_path(out_path), {**start_arrays, **end_arrays, "meta": np.array(json.dumps(meta))})
    _write_parquet(table, out_path)
    return out_path


def _oversize(error, search_range_px: float, pixel_size_um: float) -> LinkingError:
    return LinkingError(
        f"linking failed: too many candidate links in a crowded region ({error}); lower "
        f"link.search_range_um (now {search_range_px * pixel_size_um:.3g} µm) or set link.adaptive_stop_um")


def _write_npz(path: Path, arrays: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp.npz", dir=path.parent)
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_link(path: Path, plan: dict, chunk: int) -> dict:
    """A chunk's link file and state, checked against the plan."""
    state_path = link_state_path(path)
    for p in (path, state_path):
        if not p.is_file():
            raise TrackingInputError(f"{p}: link file of chunk {chunk} not found; run link_chunk for it")
    try:
        with np.load(state_path, allow_pickle=False) as arrays:
            meta = json.loads(str(arrays["meta"]))
            if meta.get("version") != LINK_STATE_VERSION:
                raise ValueError(f"version {meta.get('version')!r}, this code reads {LINK_STATE_VERSION}")
            start = _state_from_arrays("start", meta["start"], arrays)
            end = _state_from_arrays("end", meta["end"], arrays)
    except (OSError, ValueError, KeyError) as error:
        raise TrackingInputError(f"{state_path}: not a link state ({error}); run link_chunk for chunk {chunk} "
                                 f"again") from None
    if meta["plan"] != _plan_id(plan) or meta["chunk"] != chunk:
        raise TrackingInputError(f"{path}: linked for another plan or chunk (chunk {meta['chunk']}); give the link "
                                 f"files in the plan's order, or run link_chunk for chunk {chunk} again")
    return {"path": path, "meta": meta, "start": start, "end": end}


def _stitch_ids(link: dict, previous: dict | None, next_global: int):
    """A checked chunk's map local id -> global id, its final state in global ids, the next global id.

    Tracks alive at the chunk's first frame are the predecessor's (matched through the features they end
    on); tracks born in the chunk's own frames are numbered on, in the order the job numbered them (the
    order trackpy numbers them in, as the linker's state is the same).
    """
    start, end = link["start"], link["end"]
    first_own = start["next_particle"] if start is not None else 0
    n_local = end["next_particle"] if end is not None else first_own
    mapping = np.full(max(n_local, first_own), -1, np.int64)
    if start is not None:
        mapping[start["particle"]] = previous["particle"]
    mapping[first_own:n_local] = np.arange(next_global, next_global + n_local - first_own)
    next_global += max(n_local - first_own, 0)
    if end is None:
        return mapping, None, next_global
    return mapping, {**end, "particle": mapping[end["particle"]], "next_particle": next_global}, next_global
