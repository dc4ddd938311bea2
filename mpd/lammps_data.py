"""A user's LAMMPS data file as the starting sample of a LAMMPS rollout (docs/lammps.md).

LAMMPS itself reads the file (``read_data``), so every data file LAMMPS accepts for an atomic sample
works: its Atoms section (any atom style whose columns hold id, type and x y z), optional Velocities,
an orthorhombic periodic box anywhere in space. The sample comes back as arrays in the file's own units,
which the LAMMPS stage takes to be the truth's (lengths as the truth's positions, velocities as its).
Atom types are species + 1; atom ids are particle + 1 (as in the stage's dump).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mpd.lammps_env import open_lammps


class LammpsDataError(ValueError):
    """The data file cannot start a rollout; the message names the file and the fix."""


@dataclass(frozen=True)
class DataSample:
    """A sample read from a data file: positions relative to the box's lower corner, rows by atom id."""

    x: np.ndarray            # (N, D), in [0, L)
    v: np.ndarray            # (N, D), zeros where the file has no Velocities section
    species: np.ndarray      # (N,) int64: atom type - 1
    particle: np.ndarray     # (N,) int64: atom id - 1
    box_lengths: np.ndarray  # (D,)


def read_lammps_data(path, dim: int, atom_style: str = "atomic") -> DataSample:
    """The atoms of LAMMPS data file `path` for a `dim`-dimensional model (2: the file's z must be thin)."""
    path = Path(path)
    if not path.is_file():
        raise LammpsDataError(f"the LAMMPS data file {path} does not exist: give lammps.data_file the path of a "
                              "data file (write_data in LAMMPS writes one)")
    if dim not in (2, 3):
        raise LammpsDataError(f"a data file needs a 2D or 3D model, got dim={dim}")
    lmp = open_lammps()
    try:
        try:
            lmp.commands_list([
                "units lj", f"dimension {dim}", "boundary p p p", f"atom_style {atom_style}",
                "atom_modify map array sort 0 0", f'read_data "{path}"'])
        except Exception as error:  # noqa: BLE001 (the lammps module raises plain Exception with LAMMPS's message)
            raise LammpsDataError(f"LAMMPS cannot read {path} as a {dim}D {atom_style} data file: "
                                  f"{' '.join(str(error).split())}") from None
        n = int(lmp.get_natoms())
        if n == 0:
            raise LammpsDataError(f"{path} holds no atoms")
        lo, hi, xy, yz, xz, _, _ = lmp.extract_box()
        if any(abs(t) > 0 for t in (xy, yz, xz)):
            raise LammpsDataError(f"{path} has a triclinic box (tilts {xy}, {xz}, {yz}): the LAMMPS rollout needs an "
                                  "orthorhombic one")
        ids = np.ctypeslib.as_array(lmp.gather_atoms("id", 0, 1)).astype(np.int64)
        types = np.ctypeslib.as_array(lmp.gather_atoms("type", 0, 1)).astype(np.int64)
        x = np.ctypeslib.as_array(lmp.gather_atoms("x", 1, 3)).reshape(n, 3)
        v = np.ctypeslib.as_array(lmp.gather_atoms("v", 1, 3)).reshape(n, 3)
    finally:
        lmp.close()
    order = np.argsort(ids, kind="stable")
    lengths = np.asarray(hi, np.float64)[:dim] - np.asarray(lo, np.float64)[:dim]
    positions = np.mod(x[order, :dim] - np.asarray(lo, np.float64)[:dim], lengths)
    positions = np.where(positions >= lengths, 0.0, positions)
    if dim == 2 and np.abs(v[:, 2]).max(initial=0.0) > 0:
        raise LammpsDataError(f"{path} gives z velocities to a 2D sample")
    return DataSample(x=positions, v=np.asarray(v[order, :dim], np.float64), species=types[order] - 1,
                      particle=ids[order] - 1, box_lengths=lengths)
