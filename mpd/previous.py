"""Earlier results kept until their replacement is ready.

Snakemake deletes a job's declared outputs before the job runs, and the
outputs of a job that fails, so that a stale file can never look like the
result of the current inputs, parameters and code. That also means a rerun
that fails (a damaged model file, a bad parameter) would lose the last good
model, rollout or metrics. Restoring them in place after a failure would bring
back that hazard: Snakemake records the new parameters at the start of a job,
so a restored file would pass for the result of parameters it never saw.

So every rule's script, once all its outputs are written, keeps a second name
for each of them under ``results/.previous/`` (a hard link: no extra disk
space while the output exists). Snakemake's deletion before the next run then
removes only the output's name, and the data stay readable under
``results/.previous/`` until that run succeeds and replaces them. A failed
rule's message names where the previous results are.

Outputs outside ``results/`` are kept under ``results/.previous/_other/``.
Where the filesystem refuses hard links the file is copied instead.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

RESULTS = Path("results")
STORE = RESULTS / ".previous"


def kept_path(output: str | os.PathLike, store: Path = STORE) -> Path | None:
    """Where the previous version of ``output`` (a path relative to the working directory) is kept.

    None for an absolute path or one leaving the working directory: such an output is not kept.
    """
    path = Path(os.path.normpath(output))
    if path.is_absolute() or path.parts[:1] == ("..",):
        return None
    if path.parts[:len(RESULTS.parts)] == RESULTS.parts:
        relative = path.relative_to(RESULTS)
        if relative.parts[:1] == (STORE.name,):
            return None  # never keep the store itself
        return store / relative
    return store / "_other" / path


def _link_or_copy(source: Path, target: Path) -> None:
    """Give ``source`` the second name ``target``, replacing what ``target`` named, atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(handle)
    os.unlink(tmp)
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copy2(source, tmp)  # another filesystem, or one without hard links
        os.replace(tmp, target)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def keep(outputs: Iterable[str | os.PathLike], store: Path = STORE) -> list[Path]:
    """Keep every file of a finished rule's ``outputs`` under ``store``; returns the kept paths.

    Call only once every output is complete: what is kept here survives the
    next run's deletion of the outputs and is replaced only when that run
    finishes. Folders among the outputs are kept file by file.
    """
    kept = []
    for output in outputs:
        output = Path(output)
        target = kept_path(output, store)
        if target is None or not output.exists():
            continue
        if output.is_dir():
            for source in sorted(p for p in output.rglob("*") if p.is_file()):
                destination = target / source.relative_to(output)
                _link_or_copy(source, destination)
                kept.append(destination)
        else:
            _link_or_copy(output, target)
            kept.append(target)
    return kept


def kept_previous(outputs: Iterable[str | os.PathLike], store: Path = STORE) -> list[Path]:
    """The kept previous versions of ``outputs`` that exist (for a failed rule's message)."""
    found = []
    for output in outputs:
        target = kept_path(output, store)
        if target is not None and target.exists():
            found.append(target)
    return found


def describe(kept: list[Path]) -> str:
    """``"results/.previous/x/model/ (model.pt, rollout_step.pt)"``: kept files grouped by folder."""
    by_folder: dict[Path, list[str]] = {}
    for path in kept:
        by_folder.setdefault(path.parent, []).append(path.name)
    return "; ".join(f"{folder}/ ({', '.join(names)})" for folder, names in by_folder.items())
