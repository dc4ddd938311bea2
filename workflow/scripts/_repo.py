"""Shared preamble of the workflow scripts: import path, the rule's conda env, and logging.

Snakemake puts this folder on sys.path; this puts the repository root first
there too, so the project's packages import from the workflow's source tree
inside a --use-conda environment that has only their dependencies. Imported
before anything else of a script: in a deployed conda env it takes the main
environment off sys.path (mpd.envs.isolate), so a package missing from the
env fails instead of being taken from there; with MPD_EMULATE_CONDA_ENVS set
it lets the script import only what the rule's env installs (mpd.envs.emulate_rule).
"""
import logging
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) in sys.path:
    sys.path.remove(str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT))  # first: an installed copy elsewhere on the path must not shadow the tree

from mpd import envs  # standard library only

envs.isolate(keep=(REPO_ROOT, Path(__file__).resolve().parent))
if envs.emulation_requested():
    envs.emulate_rule(sys.modules["__main__"].snakemake.rule)


def start_rule(snakemake, threads: int | None = None) -> logging.Logger:
    """Start a rule's script: thread limits, logging and one-line errors; returns the rule's logger.

    Computation keeps to the rule's `threads` (or `threads`, e.g. 1 for a rule
    that parallelises with processes) for torch, BLAS, OpenMP and OpenCV alike
    (`mpd.threads`), and freed memory stays in the process (`mpd.allocator`). Logs go to the rule's log file (when it has one) and to
    stderr; a clear error of the packages (mpd.errors) ends the script as one
    line on the console, its traceback in the log file, and any other error
    (a bug) leaves its traceback in the log file too.
    """
    from mpd.allocator import retain_freed_memory
    from mpd.threads import limit_threads

    limit_threads(int(snakemake.threads if threads is None else threads))
    retain_freed_memory()  # a model step's temporaries are not page-faulted in afresh every step
    return setup_logging(snakemake)


def finish_rule(snakemake) -> None:
    """End a rule's script that succeeded: keep its outputs until a later run replaces them (mpd.previous).

    The last line of every script: what it keeps must be complete.
    """
    from mpd import previous

    previous.keep(snakemake.output)


def setup_logging(snakemake) -> logging.Logger:
    """Log to the rule's log file (when it has one) and to stderr (`start_rule`)."""
    from mpd import errors

    errors.install(snakemake.rule, snakemake.log[0] if snakemake.log else None, getattr(snakemake, "output", ()))
    handlers = [logging.StreamHandler(sys.stderr)]
    if snakemake.log:
        handlers.append(logging.FileHandler(snakemake.log[0], mode="w"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", handlers=handlers, force=True)
    return logging.getLogger(f"rule.{snakemake.rule}")
