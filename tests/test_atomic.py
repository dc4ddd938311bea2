"""Outputs appear all at once or not at all."""
import json
import os
import stat

import pytest

from mpd.atomic import atomic_output_dir


def test_success_publishes_with_mkdir_permissions(tmp_path):
    out = tmp_path / "stage"
    with atomic_output_dir(out) as tmp:
        assert not out.exists()
        (tmp / "a.txt").write_text("x")
    assert (out / "a.txt").read_text() == "x"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~mask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage"]


def test_existing_folder_is_replaced(tmp_path):
    out = tmp_path / "stage"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    with atomic_output_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage"]


def test_error_leaves_previous_state(tmp_path):
    out = tmp_path / "stage"
    out.mkdir()
    (out / "kept.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_output_dir(out) as tmp:
        (tmp / "half.txt").write_text("partial")
        raise RuntimeError("boom")
    assert sorted(p.name for p in out.iterdir()) == ["kept.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage"]


def test_atomic_file_replaces_whole_or_not_at_all(tmp_path):
    from mpd.atomic import atomic_file, atomic_write_bytes

    path = tmp_path / "model.pt"
    atomic_write_bytes(b"old", path)
    with pytest.raises(RuntimeError), atomic_file(path) as handle:
        handle.write(b"half")
        raise RuntimeError("killed")
    assert path.read_bytes() == b"old"
    atomic_write_bytes(b"new", path)
    assert path.read_bytes() == b"new"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_json_is_written_whole_into_a_new_folder_and_nan_is_refused_without_touching_the_old_file(tmp_path):
    from mpd.atomic import atomic_write_json

    path = tmp_path / "results" / "bench.json"
    atomic_write_json({"wall_s": 1.5}, path)
    assert json.loads(path.read_text()) == {"wall_s": 1.5}
    with pytest.raises(ValueError):
        atomic_write_json({"wall_s": float("nan")}, path)
    assert json.loads(path.read_text()) == {"wall_s": 1.5}
    assert [p.name for p in path.parent.iterdir()] == ["bench.json"]
