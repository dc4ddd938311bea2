"""Pair interaction of the digital twin, as numpy functions and as a LAMMPS table.

For particles i, j with diameters d_i, d_j and d_ij = (d_i + d_j) / 2, the pair
energy (units of kT, lengths in µm) is, with A = ``dipolar_kT``,
k = ``contact_stiffness_kT_um2`` and r_c = ``cutoff_diameters`` * d_ij,

    u(r) = A [ (d_ij/r)^3 - (d_ij/r_c)^3 + 3 (r - r_c) d_ij^3 / r_c^4 ]   (r < r_c)
         + (k/2) (d_ij - r)^2                                            (r < d_ij)
    u(r) = 0                                                             (r >= r_c)

i.e. a dipolar-like soft repulsion made "shifted-force" (energy and force both
vanish at the cut-off, so there is no impulse when a pair crosses it), plus a
stiff harmonic contact. The truncation lowers the dipolar force by the
constant 3 A d_ij^3 / r_c^4 (6 % of the contact value for r_c = 2 d_ij) and
the energy at contact from A to 0.6875 A; A keeps its meaning as the amplitude
of the untruncated dipolar law. The force is f(r) = -du/dr (positive =
repulsive); it is continuous at r = d_ij (the contact force starts at zero)
with a kink in its slope there.

LAMMPS table: ``write_pair_table`` tabulates u and f on a grid evenly spaced in
r^2 (keyword RSQ), which ``pair_style table linear N`` with the same N and
cut-off uses without re-splining; the grid's inner end is chosen so that
r = d_ij is a grid node and the kink is represented exactly.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from twin.params import InteractionParams

#: Inner end of the tabulated range, as a fraction of d_ij (approximately:
#: adjusted so that d_ij falls on a grid node). A pair closer than this stops
#: LAMMPS with "Pair distance < table inner cutoff" instead of going unnoticed.
TABLE_INNER_FRACTION = 0.5


def cutoff(d_ij, params: InteractionParams):
    """Cut-off radius r_c = cutoff_diameters * d_ij (µm)."""
    return params.cutoff_diameters * np.asarray(d_ij, dtype=float)


def pair_energy(r, d_ij, params: InteractionParams) -> np.ndarray:
    """Pair energy u(r) in kT for centre distance r (µm) and mean diameter d_ij (µm)."""
    r = np.asarray(r, dtype=float)
    d = np.asarray(d_ij, dtype=float)
    rc = cutoff(d, params)
    a = params.dipolar_kT
    with np.errstate(divide="ignore"):
        dip = a * ((d / r) ** 3 - (d / rc) ** 3 + 3.0 * (r - rc) * d**3 / rc**4)
    contact = 0.5 * params.contact_stiffness_kT_um2 * np.square(np.minimum(r - d, 0.0))
    return np.where(r < rc, dip, 0.0) + contact


def pair_force(r, d_ij, params: InteractionParams) -> np.ndarray:
    """Pair force f(r) = -du/dr in kT/µm (positive = repulsive)."""
    r = np.asarray(r, dtype=float)
    d = np.asarray(d_ij, dtype=float)
    rc = cutoff(d, params)
    with np.errstate(divide="ignore"):
        dip = 3.0 * params.dipolar_kT * d**3 * (1.0 / r**4 - 1.0 / rc**4)
    contact = params.contact_stiffness_kT_um2 * np.maximum(d - r, 0.0)
    return np.where(r < rc, dip, 0.0) + contact


@dataclass(frozen=True)
class TableSection:
    """One species pair of a written table: use as ``pair_coeff ti tj FILE keyword cutoff``."""

    keyword: str
    d_ij: float       # µm
    r_inner: float    # µm, first tabulated distance
    cutoff: float     # µm, last tabulated distance (the pair cut-off)
    n_points: int


def table_grid(d_ij: float, params: InteractionParams, n_points: int,
               inner_fraction: float = TABLE_INNER_FRACTION) -> tuple[float, float, np.ndarray]:
    """(r_inner, r_cut, r): n_points distances evenly spaced in r^2 with d_ij on a node."""
    if n_points < 10:
        raise ValueError(f"n_points must be >= 10, got {n_points}")
    if params.cutoff_diameters <= 1.0:
        raise ValueError(f"cutoff_diameters must exceed 1, got {params.cutoff_diameters}")
    rc = float(params.cutoff_diameters * d_ij)
    lo_target = inner_fraction * d_ij
    m_frac = round((d_ij**2 - lo_target**2) / (rc**2 - lo_target**2) * (n_points - 1)) / (n_points - 1)
    lo2 = (d_ij**2 - m_frac * rc**2) / (1.0 - m_frac)
    r_inner = float(np.sqrt(lo2))
    # the same arithmetic LAMMPS uses for an RSQ table
    delta = (rc * rc - lo2) / (n_points - 1)
    r = np.sqrt(lo2 + np.arange(n_points) * delta)
    return r_inner, rc, r


def section_keyword(i: int, j: int) -> str:
    return f"PAIR_{i}_{j}"


def write_pair_table(path, diameters: Sequence[float], params: InteractionParams,
                     n_points: int = 8000) -> dict[tuple[int, int], TableSection]:
    """Write a LAMMPS ``pair_style table`` file with one section per species pair.

    ``diameters[s]`` is the diameter (µm) of species s (LAMMPS type s+1).
    Returns {(i, j): TableSection} for i <= j (0-based species), to be used as
    ``pair_style table linear n_points`` and
    ``pair_coeff i+1 j+1 path section.keyword section.cutoff``.
    """
    path = Path(path)
    sections: dict[tuple[int, int], TableSection] = {}
    lines = [
        "# Digital-twin pair potential (twin/potential.py): shifted-force dipolar (d/r)^3 + harmonic contact",
        (f"# dipolar_kT={params.dipolar_kT!r} contact_stiffness_kT_um2={params.contact_stiffness_kT_um2!r} "
         f"cutoff_diameters={params.cutoff_diameters!r}; units: um, kT"),
        "",
    ]
    for i in range(len(diameters)):
        for j in range(i, len(diameters)):
            d_ij = 0.5 * (float(diameters[i]) + float(diameters[j]))
            r_inner, rc, r = table_grid(d_ij, params, n_points)
            e = pair_energy(r, d_ij, params)
            f = pair_force(r, d_ij, params)
            e[-1] = 0.0
            f[-1] = 0.0
            key = section_keyword(i, j)
            sections[(i, j)] = TableSection(key, d_ij, r_inner, rc, n_points)
            lines.append(key)
            lines.append(f"N {n_points} RSQ {r_inner!r} {rc!r}")
            lines.append("")
            rows = zip(r.tolist(), e.tolist(), f.tolist())
            lines.extend(f"{k + 1} {rk!r} {ek!r} {fk!r}" for k, (rk, ek, fk) in enumerate(rows))
            lines.append("")
    path.write_text("\n".join(lines) + "\n")
    return sections
