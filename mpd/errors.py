"""One-line errors for the workflow: a failing rule ends the console output with its clear message.

The packages raise a few error types whose messages name the key or file and
the fix (``CLEAR_ERRORS``). A traceback adds nothing to those for a user, so
when a rule's script fails with one of them:

* the full traceback goes to the rule's log file (``logs/...``);
* the console gets the message as one line, ``ErrorType: message``;
* the line is also recorded under ``.snakemake/mpd-clear-errors/``, and the
  workflow's ``onerror`` handler prints every recorded line last, after
  Snakemake's own report of the failed jobs, and ends the run there
  (exit status 1) instead of closing with Snakemake's generic "At least one
  job did not complete successfully".

Set the environment variable ``MPD_DEBUG=1`` to get the tracebacks on the
console as well, and Snakemake's own closing lines. Any other exception
(a bug) is reported the same way, its line saying that it is one; without a
log file its traceback goes to the console.

A ModuleNotFoundError in a rule's deployed conda env is a clear error too: its
line names the env and the env file to add the missing package to
(``mpd.envs.explain_missing``).

The error classes are recognised by their qualified names, so this module
imports none of the packages: each rule's environment has only its own
(``mpd.envs``, standard library only, is imported for a missing module).
"""
from __future__ import annotations

import hashlib
import os
import sys
import traceback
from pathlib import Path

CLEAR_ERRORS = frozenset({
    "mpd.config.ConfigError",
    "mpd.params.ParameterError",
    "mpd.training.TrainingError",
    "mpd.geometry.params.GeometryParameterError",
    "mpd.geometry.inputs.GeometryInputError",
    "analysis.inputs.AnalysisInputError",
    "tracking.io.TrackingInputError",  # with tracking.checks.ImplausibleResultError, a subclass
    "tracking.params.ParameterError",
    "tracking.link.LinkingError",
    "twin.params.ParameterError",
    "mpd.lammps_env.LammpsUnavailableError",
    "mpd.lammps_rollout.LammpsRolloutError",  # with LammpsStageError, a subclass
    "mpd.lammps_data.LammpsDataError",
    "twin.star_polymer.StarPolymerError",
    "mpd.horizon.HorizonError",
    "mpd.geometry.particles.ParticleDataError",
    "mpd.baselines.stage.BaselineInputError",
    "mpd.envs.MissingFromEnvError",  # a module the rule's conda env lacks (its emulation)
    "mpd.slurm.ClusterSetupError",
})
DEBUG_VARIABLE = "MPD_DEBUG"
RECORDS = Path(".snakemake") / "mpd-clear-errors"


def debug() -> bool:
    """Whether tracebacks should reach the console too (``MPD_DEBUG`` set to anything but 0/false/no)."""
    return os.environ.get(DEBUG_VARIABLE, "").strip().lower() not in ("", "0", "false", "no")


def is_clear(error: BaseException) -> bool:
    """Whether ``error`` is (a subclass of) one of the project's clear errors."""
    return any(f"{cls.__module__}.{cls.__qualname__}" in CLEAR_ERRORS for cls in type(error).__mro__)


def one_line(error: BaseException) -> str:
    """``ErrorType: message`` on one line (a message's own line breaks become spaces)."""
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def report_failure(error: BaseException, *, rule: str, log_file: str | os.PathLike | None,
                   records: Path = RECORDS, kept: str = "") -> None:
    """Report a failure of a rule's script: traceback to its log, one line to stderr and to the records.

    Any other error than a clear one is a bug: its line says so, and its traceback
    also reaches the console when there is no log file to hold it. ``kept`` names
    where the rule's previous results are kept (mpd.previous), if anywhere.
    """
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    line = one_line(error)
    missing = None if is_clear(error) else _missing_from_env(error, rule)
    if missing:
        line = f"{type(error).__name__}: {missing}"
    elif not is_clear(error):
        where = f"its traceback is in {log_file}" if log_file else "its traceback is above"
        line = f"{line} (an unexpected error, a bug: {where}; please report it)"
    if log_file:
        with open(log_file, "a") as handle:
            handle.write(text)
            if kept:
                handle.write(f"The previous results of rule {rule} are kept in {kept}\n")
            handle.write(line + "\n")
    if debug() or not log_file:
        sys.stderr.write(text)
    where = f"; traceback in {log_file}" if log_file else ""
    if kept:
        where += f"; its previous results are kept in {kept}"
    try:
        records.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha1(f"{rule} {log_file}".encode()).hexdigest()[:16]
        (records / f"{name}.txt").write_text(f"Error in rule {rule}{where}:\n{line}\n")
    except OSError:
        pass  # the console line below still says it
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _missing_from_env(error: BaseException, rule: str) -> str | None:
    """The clear message for a module the rule's deployed conda env lacks, else None (mpd.envs)."""
    if not isinstance(error, ModuleNotFoundError):
        return None
    try:
        from mpd import envs

        return envs.explain_missing(error, rule)
    except Exception:  # noqa: BLE001 (the report must not fail over its hint: the plain line still says it)
        return None


def install(rule: str, log_file: str | os.PathLike | None, outputs=()) -> None:
    """Make uncaught errors of this process end as one line, their traceback in the log file (``report_failure``).

    Exit status 1. KeyboardInterrupt keeps Python's own report. The report names
    where the previous versions of the rule's ``outputs`` are kept (mpd.previous).
    """
    outputs = [str(output) for output in outputs]

    def hook(kind, error, tb):
        if not isinstance(error, Exception):
            sys.__excepthook__(kind, error, tb)
            return
        from mpd import previous  # standard library only, like this module

        kept = previous.describe(previous.kept_previous(outputs)) if outputs else ""
        report_failure(error, rule=rule, log_file=log_file, kept=kept)

    sys.excepthook = hook


def clear_records(records: Path = RECORDS) -> None:
    """Forget the clear errors of an earlier run (the workflow's ``onstart``)."""
    if records.is_dir():
        for path in records.glob("*.txt"):
            path.unlink(missing_ok=True)


def finish_with_clear_errors(records: Path = RECORDS, *, snakemake_log=None) -> None:
    """The workflow's ``onerror``: print the recorded errors' lines last and exit with status 1.

    Does nothing when no failed job recorded one or with ``MPD_DEBUG`` set.
    """
    # Each record: where (rule, log file), then the message; the message is the last line printed.
    lines = sorted(path.read_text().strip() for path in records.glob("*.txt")) if records.is_dir() else []
    if not lines or debug():
        return
    if snakemake_log:  # Snakemake passes its log file, or a list of them
        logs = [snakemake_log] if isinstance(snakemake_log, (str, os.PathLike)) else list(snakemake_log)
        sys.stderr.write(f"Complete log: {', '.join(map(str, logs))}\n")
    sys.stderr.write("\n".join(lines) + "\n")
    sys.stderr.flush()
    # Leaves through Snakemake's cleanup (its lock is released in a finally block), before its closing lines.
    raise SystemExit(1)
