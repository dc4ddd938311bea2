"""All-or-nothing output folders.

Every stage writes its files into a fresh folder beside the destination and
renames it into place at the very end, so an error (or a kill) never leaves
half-written outputs that a rerun or a user could mistake for results.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
    parent = out_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"cannot write to '{parent}': the output folder's parent is not writable")
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
