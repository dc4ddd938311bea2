"""The model's pair lists, built the same way for training and for rollouts (one home for both).

* `snapshot_pairs`: the `PairTensors` of one snapshot: neighbours within h
  (current positions, periodic minimum image) and strain bonds against the
  reference configuration (docs/model.md, data contract).
* `reference_bonds`, `minimum_image_shift`: their parts.
* `concatenate_pairs`: several snapshots stacked into one graph (a training batch).
* `VerletList`: neighbours within h from candidates within h + skin, rebuilt only
  when a pair could have come within h (rollouts).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mpd.geometry.domain import Box, OrthoBox
from mpd.geometry.neighbours import radius_pairs
from mpd.model import PairTensors, make_pairs


def _numpy(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def minimum_image_shift(separation: np.ndarray, box: Box | None) -> np.ndarray:
    """Lattice vector that turns each raw separation (E, 2) into its minimum image (zero without a box)."""
    if box is None or len(separation) == 0:
        return np.zeros_like(separation)
    return box.minimum_image(separation) - separation


def reference_bonds(x_ref, h: float, box_ref: Box | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Strain bonds of a reference configuration: pairs within h and their reference separations.

    x_ref (N, 2) of the particles that have a reference (callers index back).
    Returns (bond_i, bond_j, r_ref) with r_ref the minimum image in the reference box.
    """
    x_ref = _numpy(x_ref)
    found = radius_pairs(x_ref, h, box_ref)
    return found.i, found.j, found.displacements(x_ref)


def snapshot_pairs(
    x,
    h: float = 1.0,
    box: Box | None = None,
    x_ref=None,
    has_ref=None,
    box_ref: Box | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | None = None,
    species=None,
    n_species: int = 1,
) -> PairTensors:
    """The model's pairs of one snapshot: neighbours of x within h, strain bonds from x_ref.

    Bonds are the pairs within h in the reference configuration among the
    particles with has_ref (docs/model.md, data contract), with their
    reference separation (minimum image in box_ref) and the current periodic
    shift (minimum image in box). Without x_ref there are no bonds.
    species (N,) labels and n_species give the pairs' kinds (default: one species).
    """
    x_np = _numpy(x)
    now = radius_pairs(x_np, h, box)
    bonds = None
    bond_shift = None
    if x_ref is not None:
        has = np.ones(len(x_np), bool) if has_ref is None else _as_bool(has_ref)
        idx = np.flatnonzero(has)
        bi, bj, r_ref = reference_bonds(_numpy(x_ref)[idx], h, box_ref)
        bi, bj = idx[bi], idx[bj]
        bonds = (bi, bj, r_ref)
        bond_shift = minimum_image_shift(x_np[bi] - x_np[bj], box)
    return make_pairs(now.i, now.j, now.shift, bonds=bonds, bond_shift=bond_shift, species=species,
                      n_species=n_species, dim=x_np.shape[1], dtype=dtype, device=device)


def _as_bool(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=bool)


def concatenate_pairs(parts: Sequence[PairTensors], offsets: Sequence[int]) -> PairTensors:
    """Pairs of several snapshots stacked into one graph (particle indices shifted by each offset)."""
    labelled = [len(pairs.species) > 0 for pairs in parts]
    if any(labelled) and not all(labelled):
        raise ValueError("concatenate_pairs: some snapshots carry particle species and some do not; "
                         "give every snapshot its species (or none)")
    fields = []
    for name in PairTensors._fields:
        tensors = []
        for pairs, offset in zip(parts, offsets):
            t = getattr(pairs, name)
            tensors.append(t + offset if name in ("i", "j", "bond_i", "bond_j") else t)
        fields.append(torch.cat(tensors))
    return PairTensors(*fields)


# ---------------------------------------------------------------------------
# Verlet neighbour list
# ---------------------------------------------------------------------------


class VerletList:
    """Pairs closer than `cutoff`, filtered from candidates within cutoff + skin.

    The candidate list is rebuilt (with `mpd.geometry.radius_pairs`) only when
    a pair could have come within the cut-off since the last build: a pair's
    separation changes by at most |dx_i| + |dx_j| + |m| |d tilt| (m = 0, ±1 is
    its image across the tilted edge), so the list stays exact while
    2 max_i |dx_i| + |d xy| <= skin. Periodic shifts are kept as lattice
    coefficients (n, m), so a cell whose tilt changes with time is followed
    exactly. `present` masks particles that do not exist at this step (their
    positions still serve as placeholders for the build; a particle that
    appears elsewhere counts as displaced from its placeholder).

    An `OrthoBox` (D dimensions, no tilt) keeps the shifts as integer
    coefficients of its D edges; its pairs have no image across a tilted edge (m = 0).
    """

    def __init__(self, cutoff: float, skin: float):
        if cutoff <= 0 or skin < 0:
            raise ValueError(f"cutoff must be > 0 and skin >= 0, got {cutoff}, {skin}")
        self.cutoff = float(cutoff)
        self.skin = float(skin)
        self.n_builds = 0
        self._x_build: torch.Tensor | None = None
        self._box_build: Box | None = None

    def needs_rebuild(self, x: torch.Tensor, box: Box | None) -> bool:
        if self._x_build is None or self._x_build.shape != x.shape:
            return True
        if (box is None) != (self._box_build is None) or type(box) is not type(self._box_build):
            return True
        tilt_change = 0.0
        if isinstance(box, OrthoBox):
            if box.lengths != self._box_build.lengths:
                return True
        elif box is not None:
            if box.lx != self._box_build.lx or box.ly != self._box_build.ly:
                return True
            tilt_change = abs(box.xy - self._box_build.xy)
        max_disp = torch.linalg.vector_norm(x - self._x_build, dim=-1).max().item() if len(x) else 0.0
        return not (2.0 * max_disp + tilt_change <= self.skin)  # NaN displacements also rebuild

    def build(self, x: torch.Tensor, box: Box | None) -> None:
        reach = self.cutoff + self.skin
        if box is not None and reach >= box.max_cutoff():
            raise ValueError(
                f"cut-off + skin = {reach:g} must be < min(lx, ly)/2 = {box.max_cutoff():g} of the periodic box"
            )
        found = radius_pairs(_numpy(x), reach, box)
        device = x.device
        self._i = torch.as_tensor(found.i, device=device)
        self._j = torch.as_tensor(found.j, device=device)
        if isinstance(box, OrthoBox):
            n = np.round(found.shift / box.length_array)
            self._nm = torch.as_tensor(n, dtype=x.dtype, device=device)
        elif box is not None:
            m = np.round(found.shift[:, 1] / box.ly)
            n = np.round((found.shift[:, 0] - m * box.xy) / box.lx)
            self._nm = torch.as_tensor(np.stack([n, m], 1), dtype=x.dtype, device=device)
        else:
            self._nm = None
        self._x_build = x.detach().clone()
        self._box_build = box
        self.n_builds += 1

    def shifts(self, box: Box | None, dtype: torch.dtype, device) -> torch.Tensor:
        if self._nm is None:
            return torch.zeros((len(self._i), self._x_build.shape[-1]), dtype=dtype, device=device)
        if isinstance(box, OrthoBox):
            return self._nm.to(dtype) * torch.tensor(box.lengths, dtype=dtype, device=device)
        basis = torch.tensor([[box.lx, 0.0], [box.xy, box.ly]], dtype=dtype, device=device)
        return self._nm.to(dtype) @ basis

    def update(
        self, x: torch.Tensor, present: torch.Tensor | None = None, box: Box | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(i, j, shift, m) of the present pairs with |x_i - x_j + shift| < cutoff, i < j, sorted by (i, j).

        m (E,) is each pair's image index across the tilted edge (shift = n a + m b,
        b = (xy, ly)); zero without a box. A tilt changing at rate d(xy)/dt moves the
        image, so the pair's shift changes at m (d(xy)/dt, 0) (Lees-Edwards).
        """
        if self.needs_rebuild(x, box):
            self.build(x, box)
        shift = self.shifts(box, x.dtype, x.device)
        r = x.index_select(0, self._i) - x.index_select(0, self._j) + shift
        keep = torch.linalg.vector_norm(r, dim=-1) < self.cutoff
        if present is not None:
            keep = keep & present[self._i] & present[self._j]
        if self._nm is not None and not isinstance(box, OrthoBox):
            image = self._nm[:, 1]
        else:
            image = torch.zeros(len(self._i), dtype=x.dtype, device=x.device)
        # one nonzero and index_select per array: boolean masks would search the mask four times
        kept = keep.nonzero().squeeze(1)
        return (self._i.index_select(0, kept), self._j.index_select(0, kept),
                shift.index_select(0, kept),
                image.index_select(0, kept).to(x.dtype))


__all__ = ["VerletList", "concatenate_pairs", "minimum_image_shift", "reference_bonds", "snapshot_pairs"]
