"""The geometry stage frame chunk by frame chunk: the same outputs as one pass, lazily readable, bounded memory."""
import json
import tracemalloc

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyarrow import ipc
from test_training_support import RATE, lattice_box, lattice_trajectories

from analysis.measure import length_scale
from mpd.geometry import chunks
from mpd.geometry.chunks import ParquetTrajectories, count_pairs, open_trajectories, plan_chunks, spacing_in_window
from mpd.geometry.dataset import PairChunk, build_pairs, write_dataset
from mpd.geometry.inputs import GeometryInputError
from mpd.geometry.loader import SnapshotPairDataset
from mpd.geometry.params import GeometryParameterError, GeometryParams
from mpd.geometry.stage import compute_geometry

WINDOW = (2.0, 38.0, 1.0, 28.0)


def drifting_trajectories(n_frames=23, seed=3, n_x=14, n_y=12):
    """Particles drift through a window (they enter and leave), frame 9 is missing, two species, shuffled rows."""
    table = lattice_trajectories(n_x=n_x, n_y=n_y, n_frames=n_frames, drift_um_s=(2.0, 1.0), window=WINDOW,
                                 seed=seed)
    table = table[table.frame != 9]
    table = table.assign(species=(table.particle % 3 == 0).astype(np.int64))
    return table.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def write_row_groups(table, path, frames_per_group):
    """A trajectories.parquet as the tracking stage writes it: sorted, one row group per chunk of frames."""
    table = table.sort_values(["frame", "particle"]).reset_index(drop=True)
    frames = table["frame"].to_numpy()
    writer = None
    for start in range(frames.min(), frames.max() + 1, frames_per_group):
        part = table[(frames >= start) & (frames < start + frames_per_group)]
        if len(part) == 0:
            continue
        arrow = pa.Table.from_pandas(part, preserve_index=False)
        writer = writer or pq.ParquetWriter(path, arrow.schema)
        writer.write_table(arrow)
    writer.close()
    return path


def assert_same_outputs(a, b):
    """Two geometry output folders hold the same numbers (every file; metadata but for source and chunks)."""
    pd.testing.assert_frame_equal(pd.read_parquet(a / "observables.parquet"),
                                  pd.read_parquet(b / "observables.parquet"), check_exact=True)
    meta = [json.loads((d / "metadata.json").read_text()) for d in (a, b)]
    for m in meta:
        m.pop("source"), m.pop("chunks")
    assert meta[0] == meta[1]
    meta = [json.loads((d / "dataset" / "metadata.json").read_text()) for d in (a, b)]
    for m in meta:
        m.pop("source")
    assert meta[0] == meta[1]
    pd.testing.assert_frame_equal(pd.read_parquet(a / "dataset" / "pairs.parquet"),
                                  pd.read_parquet(b / "dataset" / "pairs.parquet"), check_exact=True)
    for split in ("train", "val", "test"):
        files = [ipc.open_file(str(d / "dataset" / f"{split}.arrow")) for d in (a, b)]
        assert files[0].num_record_batches == files[1].num_record_batches
        for k in range(files[0].num_record_batches):
            assert files[0].get_batch(k).equals(files[1].get_batch(k)), (split, k)


CASES = {
    "lag": {"reference": "lag", "lag_frames": 2, "window": WINDOW},
    "cycle": {"reference": "cycle", "cycle_frames": 7.5, "cycle_start_frame": 1, "window": WINDOW,
              "boundary_geometry": [(10.0, 10.0), (20.0, 12.0), (25.0, 25.0)],
              "split_fractions": (0.5, 0.25, 0.25)},
    "cycle_tracked": {"reference": "cycle", "cycle_frames": 6, "window": WINDOW, "velocity": "tracked", "gap_pairs": 2},
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("as_file", [False, True], ids=["dataframe", "parquet"])
def test_chunks_give_the_whole_video_result(tmp_path, case, as_file):
    table = drifting_trajectories()
    kwargs = dict(h_um=4.0, frame_rate_hz=RATE, **CASES[case])
    whole = compute_geometry(table, tmp_path / "whole", chunk_frames=10_000, **kwargs)
    source = write_row_groups(table, tmp_path / "trajectories.parquet", 5) if as_file else table
    chunked = compute_geometry(source, tmp_path / "chunked", chunk_frames=4, **kwargs)
    assert_same_outputs(whole, chunked)
    # 22 recorded frames in chunks of 4: 6 row groups, each readable alone, in frame order
    observables = pq.ParquetFile(chunked / "observables.parquet")
    assert observables.num_row_groups == 6 == pq.ParquetFile(whole / "observables.parquet").num_row_groups + 5
    recorded = np.unique(table["frame"])
    for k in range(observables.num_row_groups):
        group = observables.read_row_group(k, columns=["frame"]).to_pandas()
        assert set(group["frame"]) == set(recorded[4 * k:4 * k + 4])
    assert json.loads((chunked / "metadata.json").read_text())["chunks"]["n_chunks"] == 6
    # the strain had something to compare: references across chunk edges, pairs in every split
    obs = pd.read_parquet(chunked / "observables.parquet")
    assert obs["strain_valid"].mean() > 0.5 and (obs["ref_frame"] >= 0).any()
    assert all(len(SnapshotPairDataset(chunked, split)) > 0 for split in ("train", "val", "test"))


def test_periodic_box_in_chunks_of_one_frame(tmp_path):
    box = lattice_box()
    table = lattice_trajectories(n_frames=12, step_um=0.3, box=box, seed=1)  # wrapped positions cross the edges
    table = table[~((table.frame == 5) & (table.particle % 4 == 0))]  # particles missing for a frame
    boxes = pd.DataFrame({"frame": np.arange(12), "lx": box.lx, "ly": box.ly, "xy": 0.2 * np.arange(12)})
    kwargs = {"h_um": 4.0, "frame_rate_hz": RATE, "reference": "lag", "lag_frames": 3, "box": boxes,
              "boundary_particles": [0, 7]}
    whole = compute_geometry(table, tmp_path / "whole", chunk_frames=100, **kwargs)
    chunked = compute_geometry(table, tmp_path / "chunked", chunk_frames=1, **kwargs)
    assert_same_outputs(whole, chunked)
    assert pq.ParquetFile(chunked / "observables.parquet").num_row_groups == 12


def test_parquet_source_reads_only_the_frames_asked_for(tmp_path):
    table = drifting_trajectories()
    path = write_row_groups(table, tmp_path / "t.parquet", 5)
    source = open_trajectories(path)
    assert isinstance(source, ParquetTrajectories)
    counts = table.groupby("frame").size()
    np.testing.assert_array_equal(source.frames, counts.index.to_numpy())
    np.testing.assert_array_equal(source.counts, counts.to_numpy())
    lo, hi = source.extent()
    np.testing.assert_array_equal(lo, table[["x", "y"]].min().to_numpy())
    np.testing.assert_array_equal(hi, table[["x", "y"]].max().to_numpy())
    part = source.read([8, 10, 11])  # frame 9 is not recorded: 8 and 10 are consecutive recorded frames
    expected = (table[table.frame.isin([8, 10, 11])].sort_values(["frame", "particle"])
                [list(source.columns)].reset_index(drop=True))
    pd.testing.assert_frame_equal(part, expected, check_exact=True)
    with pytest.raises(ValueError, match="recorded"):
        source.read([9])
    # the number of pairs: consecutive recorded frames sharing a particle, whatever the chunks
    n = build_pairs(table.assign(x_ref=np.nan, y_ref=np.nan, interior=True))["frame"].nunique()
    assert n == 20 and all(count_pairs(source, plan_chunks(len(source.frames), c)) == n for c in (1, 3, 100))


def test_bad_rows_in_a_later_row_group_are_named_and_leave_nothing(tmp_path):
    table = drifting_trajectories()
    bad = table.copy()
    bad.loc[bad.index[bad.frame == 20][0], "vy"] = np.nan
    path = write_row_groups(bad, tmp_path / "nan.parquet", 5)
    with pytest.raises(GeometryInputError, match="column 'vy' of .*nan.parquet.* 1 NaN/inf .*frame 20"):
        compute_geometry(path, tmp_path / "geo", h_um=4.0, frame_rate_hz=RATE, window=WINDOW, chunk_frames=4)
    # a (frame, particle) twice, in two row groups: found when its frame's chunk is read
    twice = pd.concat([table, table[table.frame == 21].head(1)], ignore_index=True)
    path = tmp_path / "twice.parquet"
    pq.write_table(pa.Table.from_pandas(twice, preserve_index=False), path, row_group_size=500)
    with pytest.raises(GeometryInputError, match="duplicated .*frame 21"):
        compute_geometry(path, tmp_path / "geo", h_um=4.0, frame_rate_hz=RATE, window=WINDOW, chunk_frames=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.parquet", "twice.parquet"]
    table.drop(columns=["vx"]).to_parquet(tmp_path / "novx.parquet")
    with pytest.raises(GeometryInputError, match="novx.parquet lacks column\\(s\\) 'vx'"):
        open_trajectories(tmp_path / "novx.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(GeometryInputError, match="cannot read trajectory file"):
        open_trajectories(tmp_path / "junk.parquet")


def test_spacing_in_window_is_the_analysis_length_scale(tmp_path):
    table = drifting_trajectories()
    path = write_row_groups(table, tmp_path / "t.parquet", 5)
    expected = length_scale(table, window=WINDOW)
    for chunk in (1, 4, 1000):
        assert spacing_in_window(open_trajectories(path), WINDOW, chunk) == expected
    assert spacing_in_window(open_trajectories(table), (0.0, 20.0, 0.0, 15.0)) == \
        length_scale(table, window=(0.0, 20.0, 0.0, 15.0))


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "100", None])
def test_chunk_frames_is_checked_by_name(tmp_path, bad):
    with pytest.raises(GeometryParameterError, match="geometry.chunk_frames"):
        GeometryParams.from_config({"chunk_frames": bad})
    with pytest.raises(GeometryInputError, match="geometry.chunk_frames"):
        compute_geometry(drifting_trajectories(n_frames=4), tmp_path / "geo", h_um=4.0, frame_rate_hz=RATE,
                         window=WINDOW, chunk_frames=bad)
    assert not (tmp_path / "geo").exists()
    assert GeometryParams.from_config({"chunk_frames": 7}).compute_kwargs(spacing_um=3.0, cycle_frames=None)[
        "chunk_frames"] == 7


def test_dataset_written_in_chunks_equals_one_call(tmp_path):
    rows = drifting_trajectories().sort_values(["frame", "particle"]).reset_index(drop=True)
    rows = rows.assign(x_ref=rows.x - 1.0, y_ref=np.where(rows.particle % 5 == 0, np.nan, rows.y),
                       interior=rows.particle % 2 == 0)
    flows = {int(f): np.arange(6.0) * f for f in rows.frame.unique()}
    refs = {int(f): int(f) - 1 for f in rows.frame.unique()}
    kwargs = {"length_scale_um": 4.0, "frame_rate_hz": RATE, "split_fractions": (0.5, 0.3, 0.2), "gap_pairs": 1}
    whole = write_dataset(tmp_path / "whole", rows, flows=flows, ref_frame=refs, **kwargs)
    frames = np.unique(rows.frame)

    def chunks(size):  # each chunk: its frames and the next recorded frame
        for a in range(0, len(frames), size):
            mine = frames[a:a + size + 1]
            yield PairChunk(rows[rows.frame.isin(mine)], {f: flows[f] for f in mine[:size]}, refs)

    n = whole["n_pairs_total"]
    chunked = write_dataset(tmp_path / "chunked", chunks(3), n_pairs=n, **kwargs)
    assert chunked == whole
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "whole" / "pairs.parquet"),
                                  pd.read_parquet(tmp_path / "chunked" / "pairs.parquet"), check_exact=True)
    for split in ("train", "val", "test"):
        a, b = (pd.read_feather(tmp_path / d / f"{split}.arrow") for d in ("whole", "chunked"))
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    with pytest.raises(ValueError, match="n_pairs"):
        write_dataset(tmp_path / "x", chunks(3), **kwargs)
    with pytest.raises(ValueError, match="announced"):
        write_dataset(tmp_path / "y", chunks(3), n_pairs=n + 1, **kwargs)
    with pytest.raises(ValueError, match="announced"):
        write_dataset(tmp_path / "z", chunks(3), n_pairs=n - 1, **kwargs)


def _peak_bytes(path, out):
    tracemalloc.start()
    try:
        compute_geometry(path, out, h_um=4.0, frame_rate_hz=RATE, window=(0.0, 60.0, 0.0, 50.0), reference="lag",
                         chunk_frames=8)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_does_not_grow_with_the_number_of_frames(tmp_path, monkeypatch):
    # The validation pass reads record batches of a fixed number of rows (at most a 65536-row batch
    # in use): smaller here, so that its bound is reached by both videos and below a chunk's own memory.
    monkeypatch.setattr(chunks, "BATCH_ROWS", 2048)
    peaks = {}
    for n_frames in (40, 160):
        table = lattice_trajectories(n_x=22, n_y=20, n_frames=n_frames, seed=2)
        path = write_row_groups(table, tmp_path / f"t{n_frames}.parquet", 8)
        del table
        peaks[n_frames] = _peak_bytes(path, tmp_path / f"geo{n_frames}")
    assert peaks[160] < 1.25 * peaks[40], peaks
