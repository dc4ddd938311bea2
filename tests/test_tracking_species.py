"""Species from the spot sizes (tracking.species): exact 1D split, automatic count, edge spots, errors."""
import itertools

import numpy as np
import pandas as pd
import pytest

from tracking.params import ParameterError, SpeciesParams, from_config
from tracking.species import classify_species, optimal_1d_split


def brute_force_sse(values, weights, k):
    """Least weighted within-class sum of squares over every split of the sorted values into k intervals."""
    order = np.argsort(values)
    v, w = values[order], weights[order]
    best = np.inf
    for cuts in itertools.combinations(range(1, len(v)), k - 1):
        sse = 0.0
        for a, b in zip((0, *cuts), (*cuts, len(v))):
            m = np.average(v[a:b], weights=w[a:b])
            sse += float((w[a:b] * (v[a:b] - m) ** 2).sum())
        best = min(best, sse)
    return best


@pytest.mark.parametrize("seed", range(5))
def test_the_1d_split_is_optimal(seed):
    rng = np.random.default_rng(seed)
    values, weights = rng.normal(size=9), rng.integers(1, 5, size=9).astype(float)
    for k in (1, 2, 3):
        labels, sse = optimal_1d_split(values, k, weights)
        assert sse == pytest.approx(brute_force_sse(values, weights, k), abs=1e-12)
        # labels are intervals of the sorted values, numbered by increasing value
        assert (np.diff(labels[np.argsort(values)]) >= 0).all() and len(np.unique(labels)) == k


def trajectories(sizes_by_particle, n_frames=6, edge=()):
    rows = []
    rng = np.random.default_rng(1)
    for p, size in enumerate(sizes_by_particle):
        x = 5.0 if p in edge else 50.0
        for f in range(n_frames):
            rows.append({"frame": f, "particle": p, "x_px": x + rng.normal(), "y_px": 50.0 + rng.normal(),
                         "size": size + 0.02 * rng.normal()})
    return pd.DataFrame(rows)


def test_two_sizes_give_two_species_in_order_of_size():
    sizes = [4.0] * 30 + [2.8] * 25
    traj = trajectories(sizes)
    species, record = classify_species(traj)
    per_particle = species.groupby(traj["particle"]).first()
    assert record["n_species"] == 2 and record["chosen_by"] == "auto"
    assert (per_particle.iloc[:30] == 1).all() and (per_particle.iloc[30:] == 0).all()
    assert record["trajectories"] == [25, 30]
    assert 2.8 < record["thresholds_px"][0] < 4.0
    # constant along each trajectory
    assert (species.groupby(traj["particle"]).nunique() == 1).all()


def test_a_monodisperse_sample_stays_one_species():
    traj = trajectories([3.0] * 40)
    species, record = classify_species(traj)
    assert record["n_species"] == 1 and (species == 0).all()


def test_spots_cut_by_the_edge_join_the_nearest_species():
    """A large particle seen only at the image edge looks smaller; it must not become a third species."""
    sizes = [4.0] * 30 + [2.8] * 30 + [3.7] * 4  # the last four: large ones, clipped by the edge
    traj = trajectories(sizes, edge=range(60, 64))
    species, record = classify_species(traj, region_px=(0, 0, 100, 100), margin_px=10)
    assert record["n_species"] == 2 and record["trajectories_near_edge_only"] == 4
    assert (species.groupby(traj["particle"]).first().iloc[60:] == 1).all()
    # without the edge rule the clipped spots would have made a class of their own
    _, naive = classify_species(traj, SpeciesParams(min_fraction=0.05))
    assert naive["n_species"] == 3


def test_n_species_forces_the_count_and_bad_values_are_named():
    species, record = classify_species(trajectories([4.0] * 20 + [2.8] * 20), SpeciesParams(n_species=1))
    assert record["n_species"] == 1 and record["chosen_by"] == "n_species" and (species == 0).all()
    for section, key in (({"n_species": 0}, "species.n_species"), ({"separation": 1.0}, "species.separation"),
                         ({"min_fraction": 1.5}, "species.min_fraction"), ({"nspecies": 2}, "species.nspecies")):
        with pytest.raises(ParameterError, match=key.replace(".", r"\.")):
            from_config({"species": section})
