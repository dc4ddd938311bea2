"""All-or-nothing output folders.

Every stage writes its files into a fresh folder beside the destination and
renames it into place at the very end, so an error (or a kill) never leaves
half-written outputs that a rerun or a user could mistake for results.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def prepare_parent(out_dir: str | os.PathLike) -> Path:
    """Create the parent folder of ``out_dir`` and check it is writable; returns it.

    Stages with a long computation call this first, so a bad output location
    fails at once rather than after the work.
    """
    parent = Path(out_dir).parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PermissionError(f"cannot create the parent directory {parent} of {out_dir}: {exc}") from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"the parent directory {parent} of {out_dir} is not writable; "
                              f"choose another output folder or fix its permissions")
    return parent


@contextmanager
def atomic_output_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder that becomes ``out_dir`` on success.

    On success an existing ``out_dir`` (for instance the empty folder
    Snakemake creates for a rule's outputs) is replaced; on any exception the
    temporary folder is removed and ``out_dir`` is left as it was. The folder
    gets the permissions ``mkdir`` would give it, not mkdtemp's private 0700,
    so results stay readable by collaborators on a shared cluster.
    """
    out_dir = Path(out_dir)
    parent = prepare_parent(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        if out_dir.exists():
            # rename(2) cannot replace a non-empty folder: move the old one aside first.
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=parent))
            os.replace(out_dir, old / out_dir.name)
            try:
                os.replace(tmp, out_dir)
            except BaseException:
                os.replace(old / out_dir.name, out_dir)
                raise
            finally:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Yield a binary handle whose content becomes ``path`` only when the block succeeds.

    For stages whose outputs are single files in a shared folder (the model's
    checkpoint, log and rollout files). The data are flushed to disk before
    the rename, so a kill or power loss leaves the old file or the new one,
    never half of either; the file gets the permissions ``open`` would give
    it, not mkstemp's private 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> None:
    """Write ``data`` to ``path`` all at once or not at all (see atomic_file)."""
    with atomic_file(path) as handle:
        handle.write(data)


def atomic_write_json(document, path: str | os.PathLike) -> None:
    """Write ``document`` as indented JSON (strict: no NaN) to ``path``, creating its folder, all at once."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes((json.dumps(document, indent=2, allow_nan=False) + "\n").encode(), path)

