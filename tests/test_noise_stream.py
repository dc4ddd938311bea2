"""The counter-based noise stream (mpd.model.streams, issue 16): Philox's known answers, the normals'
statistics, and noise that depends on particle ids and the step, not on the pair list's order,
orientation or partition. float64 throughout unless said."""
import warnings

import numpy as np
import pytest
import torch
from scipy import stats
from test_model_support import random_model, random_system
from test_training_support import H_UM, RATE, lattice_box, lattice_trajectories, quiet_model

from mpd.geometry.domain import Box
from mpd.model import CounterNoise, EulerMaruyama, PairTensors, State, euler_maruyama_step
from mpd.model.streams import BATH_DOMAIN, PAIR_DOMAIN, counter_increments, philox4x32, stream_normals
from mpd.params import ModelConfig, ParameterError, RolloutParams
from mpd.rollout import observed_from_table, periodic_fluid_rollout, rollout

# Random123's kat_vectors for philox4x32_10: counter, key, output
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]
N_DRAWS = 100_000


@pytest.mark.parametrize(("counter", "key", "expected"), PHILOX_KAT)
def test_philox_matches_the_random123_known_answers(counter, key, expected):
    words = philox4x32(*(torch.tensor([c], dtype=torch.int64) for c in counter), *key)
    assert tuple(int(w) for w in words) == expected


def _pair_draws(seed=7, step=3, count=10, offset=0):
    """(N_DRAWS, count) normals of distinct random id pairs."""
    rng = np.random.default_rng(seed)
    lo = torch.as_tensor(rng.integers(0, 2**31, N_DRAWS), dtype=torch.int64)
    hi = lo + 1 + torch.as_tensor(rng.integers(0, 2**20, N_DRAWS), dtype=torch.int64) + offset
    return lo, hi, stream_normals(seed, step, lo, hi, PAIR_DOMAIN, count)


def _max_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest |correlation| between the columns of a and those of b, (K, p) and (K, q)."""
    a = (a - a.mean(0)) / a.std(0)
    b = (b - b.mean(0)) / b.std(0)
    return float((a.T @ b / (a.shape[0] - 1)).abs().max())


def test_normals_have_zero_mean_unit_variance_and_pass_a_ks_test():
    _, _, z = _pair_draws()
    flat = z.reshape(-1)  # 1e6 numbers, every component
    n = flat.numel()
    assert abs(float(flat.mean())) < 5 / n**0.5
    assert abs(float(flat.var()) - 1) < 5 * (2 / n) ** 0.5
    assert abs(float(stats.kurtosis(flat.numpy()))) < 5 * (24 / n) ** 0.5  # excess kurtosis of N(0, 1): 0
    for column in range(z.shape[1]):  # each component alone: 1e5 draws
        assert stats.kstest(z[:, column].numpy(), "norm").pvalue > 1e-3, column
    assert torch.isfinite(z).all() and float(z.abs().max()) < 8.6


def test_normals_are_uncorrelated_between_components_steps_neighbouring_pairs_and_domains():
    bound = 5 / N_DRAWS**0.5  # five standard errors of a correlation
    lo, hi, z = _pair_draws()
    c = torch.corrcoef(z.T)
    assert float((c - torch.eye(c.shape[0], dtype=c.dtype)).abs().max()) < bound  # between components
    assert _max_correlation(z, stream_normals(7, 4, lo, hi, PAIR_DOMAIN, 10)) < bound  # next step
    assert _max_correlation(z, stream_normals(7, 3, lo, hi + 1, PAIR_DOMAIN, 10)) < bound  # neighbouring pair
    assert _max_correlation(z, stream_normals(7, 3, lo + 1, hi, PAIR_DOMAIN, 10)) < bound
    assert _max_correlation(z, stream_normals(8, 3, lo, hi, PAIR_DOMAIN, 10)) < bound  # next seed
    assert _max_correlation(z, stream_normals(7, 3, lo, hi, BATH_DOMAIN, 10)) < bound  # the bath's domain
    # consecutive ids: pairs (k, k + 1) against (k + 1, k + 2), the lattice a tracker numbers
    k = torch.arange(N_DRAWS, dtype=torch.int64)
    chain = stream_normals(7, 3, k, k + 1, PAIR_DOMAIN, 4)
    assert _max_correlation(chain[:-1], chain[1:]) < bound


def test_pair_increments_are_symmetric_in_the_ids_and_dv_antisymmetric():
    ids = torch.tensor([5, 900, 17, 2**32 - 1], dtype=torch.int64)
    i, j = torch.tensor([0, 1, 2, 3]), torch.tensor([1, 0, 3, 2])
    dW, dV, dW_bath, dU_bath = counter_increments(3, 11, ids, i, j, 3, True, torch.float64)
    assert torch.equal(dW[0], dW[1]) and torch.equal(dW[2], dW[3])
    assert dV[0] == -dV[1] and dV[2] == -dV[3] and dV[0] != 0
    assert not torch.equal(dW[0], dW[2])
    assert dW_bath.shape == (4, 3) and dU_bath.shape == (4,)
    # float32: the float64 numbers rounded
    dW32, dV32, _, _ = counter_increments(3, 11, ids, i, j, 3, True, torch.float32)
    assert torch.equal(dW32, dW.float()) and torch.equal(dV32, dV.float())


def test_counter_noise_checks_its_arguments():
    with pytest.raises(ValueError, match="2\\^32"):
        CounterNoise(0, 0, torch.tensor([0, 2**32]))
    with pytest.raises(ValueError, match="2\\^32"):
        CounterNoise(0, 0, torch.tensor([-1, 2]))
    with pytest.raises(ValueError, match="step"):
        CounterNoise(0, -1)
    with pytest.raises(ValueError, match="seed"):
        CounterNoise(-1, 0)
    with pytest.raises(ValueError, match="integers"):
        CounterNoise(0, 0, torch.tensor([0.5]))
    with pytest.raises(ValueError, match="3 particle ids for 4"):
        CounterNoise(0, 0, torch.tensor([1, 2, 3])).particle_ids(4, torch.device("cpu"))


# -- the same noise in any pair order, orientation and partition -----------------------------------------


def _ids(n: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed + 1)
    return torch.as_tensor(rng.choice(2**32, size=n, replace=False), dtype=torch.int64)


def _relabel(state: State, pairs: PairTensors, ids: torch.Tensor, seed: int):
    """The same system with the particles in another order and the pairs and bonds in another order and
    random orientation: (state', pairs', ids', perm) with particle k' = perm[k'] of the original."""
    rng = np.random.default_rng(seed + 2)
    n = state.x.shape[0]
    perm = torch.as_tensor(rng.permutation(n))
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(n)

    def reorder(i, j, *vectors):
        order = torch.as_tensor(rng.permutation(i.shape[0]))
        flip = torch.as_tensor(rng.random(i.shape[0]) < 0.5)
        a, b = inverse[i][order], inverse[j][order]
        flip_col = flip[:, None]
        out = [torch.where(flip, b, a), torch.where(flip, a, b)]
        out += [torch.where(flip_col, -vec[order], vec[order]) for vec in vectors]
        return out, order, flip

    (i, j, shift, shift_rate), order, flip = reorder(pairs.i, pairs.j, pairs.shift, pairs.shift_rate)
    assert flip.any() and (~flip).any()
    (bi, bj, bond_shift, bond_r_ref), _, _ = reorder(pairs.bond_i, pairs.bond_j, pairs.bond_shift,
                                                      pairs.bond_r_ref)
    species = pairs.species[perm] if pairs.species.shape[0] else pairs.species
    new_pairs = PairTensors(i, j, shift, bi, bj, bond_shift, bond_r_ref, shift_rate, pairs.pair_kind[order], species)
    new_state = State(state.x[perm], state.v[perm], state.S[perm])
    return new_state, new_pairs, ids[perm], perm


@pytest.mark.parametrize("bath", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_per_particle_noise_is_unchanged_by_renumbering_reordering_and_flipping_pairs(seed, bath):
    model = random_model(seed, bath=bath)
    state, pairs = random_system(seed, n=24, box=3.5)
    ids = _ids(24, seed)
    stream = CounterNoise(seed + 100, 7, ids)
    dv, dS = model.noise(state, pairs, stream)
    f_v, f_S, dv_fused, dS_fused = model.drift_and_noise(state, pairs, stream)
    state2, pairs2, ids2, perm = _relabel(state, pairs, ids, seed)
    stream2 = CounterNoise(seed + 100, 7, ids2)
    dv2, dS2 = model.noise(state2, pairs2, stream2)
    f_v2, f_S2, dv2_fused, dS2_fused = model.drift_and_noise(state2, pairs2, stream2)
    scale_v, scale_S = float(dv.abs().max()), float(dS.abs().max())
    assert scale_v > 0 and scale_S > 0
    for a, b, scale in ((dv[perm], dv2, scale_v), (dS[perm], dS2, scale_S), (dv_fused[perm], dv2_fused, scale_v),
                        (dS_fused[perm], dS2_fused, scale_S), (dv, dv_fused, scale_v), (dS, dS_fused, scale_S)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12 * scale)
    torch.testing.assert_close(f_v[perm], f_v2, rtol=0, atol=1e-12 * float(f_v.abs().max()))
    torch.testing.assert_close(f_S[perm], f_S2, rtol=0, atol=1e-12 * float(f_S.abs().max()))
    # the torch generator, by contrast, draws in pair order: the relabelled system gets other noise
    dv_torch, _ = model.noise(state, pairs, torch.Generator().manual_seed(0))
    dv2_torch, _ = model.noise(state2, pairs2, torch.Generator().manual_seed(0))
    assert (dv_torch[perm] - dv2_torch).abs().max() > 1e-3 * float(dv_torch.abs().max())
    # another step or seed: other noise; momentum of the noise is still conserved
    dv_next, _ = model.noise(state, pairs, stream.at(8))
    assert (dv_next - dv).abs().max() > 1e-3 * scale_v
    if not bath:
        mass = model.particle_mass(pairs, 24, detach=True)[:, None]
        momentum = (mass * dv).sum(0)
        assert float(momentum.abs().max()) <= 1e-12 * float((mass * dv).abs().sum())


def _subdomain(state: State, pairs: PairTensors, ids: torch.Tensor, owned: torch.Tensor, seed: int):
    """A rank's view: its owned particles and their neighbours (ghosts), local numbering shuffled, the
    pairs with an owned end in shuffled order and orientation; returns (state, pairs, ids, local -> global)."""
    rng = np.random.default_rng(seed)
    keep = owned[pairs.i] | owned[pairs.j]
    members = torch.unique(torch.cat([torch.nonzero(owned).reshape(-1), pairs.i[keep], pairs.j[keep]]))
    members = members[torch.as_tensor(rng.permutation(members.shape[0]))]
    local = torch.full((state.x.shape[0],), -1, dtype=torch.int64)
    local[members] = torch.arange(members.shape[0])
    rows = torch.nonzero(keep).reshape(-1)
    rows = rows[torch.as_tensor(rng.permutation(rows.shape[0]))]
    flip = torch.as_tensor(rng.random(rows.shape[0]) < 0.5)
    a, b = local[pairs.i[rows]], local[pairs.j[rows]]
    shift = torch.where(flip[:, None], -pairs.shift[rows], pairs.shift[rows])
    empty = torch.zeros(0, dtype=torch.int64)
    no_bonds = torch.zeros((0, 2), dtype=state.x.dtype)
    sub_pairs = PairTensors(torch.where(flip, b, a), torch.where(flip, a, b), shift, empty, empty, no_bonds, no_bonds,
                            torch.zeros_like(shift), pairs.pair_kind[rows], pairs.species[members])
    return State(state.x[members], state.v[members], state.S[members]), sub_pairs, ids[members], members


@pytest.mark.parametrize("bath", [False, True])
def test_two_ranks_give_their_particles_the_noise_of_one_rank(bath):
    """A domain decomposition: each rank sees its own particles and their ghosts, with the ghosts' T
    communicated; pairs across the cut are on both ranks, numbered and oriented differently."""
    seed = 3
    model = random_model(seed, bath=bath)
    state, pairs = random_system(seed, n=30, box=4.0)
    ids = _ids(30, seed)
    T = model.thermodynamics(state.x, state.S, pairs, with_dT_dS=False).T
    stream = CounterNoise(5, 12, ids)
    whole = [t.detach() for t in model.noise_from_increments(state, pairs, *_increments(model, state, pairs, stream, T))]
    left = state.x[:, 0] < 2.0
    shared_pairs = 0
    increments = {}
    for rank, owned in enumerate((left, ~left)):
        sub_state, sub_pairs, sub_ids, members = _subdomain(state, pairs, ids, owned, seed + rank)
        sub_stream = CounterNoise(5, 12, sub_ids)
        dW, dV, dW_bath, dU_bath = sub_stream.increments(sub_state.x.shape[0], sub_pairs.i, sub_pairs.j, 2, bath,
                                                          torch.float64, torch.device("cpu"))
        dv, dS = (t.detach() for t in model.noise_from_increments(sub_state, sub_pairs, dW, dV, T[members], dW_bath,
                                                                    dU_bath))
        mine = owned[members]
        torch.testing.assert_close(dv[mine], whole[0][members[mine]], rtol=0, atol=1e-12 * float(whole[0].abs().max()))
        torch.testing.assert_close(dS[mine], whole[1][members[mine]], rtol=0, atol=1e-12 * float(whole[1].abs().max()))
        # the increments of each pair as this rank stores it, keyed by (id_i, id_j)
        for k in range(sub_pairs.i.shape[0]):
            key = (int(sub_ids[sub_pairs.i[k]]), int(sub_ids[sub_pairs.j[k]]))
            if key in increments or key[::-1] in increments:
                shared_pairs += 1
                other_key = key if key in increments else key[::-1]
                other_dW, other_dV = increments[other_key]
                assert torch.equal(dW[k], other_dW)  # bit for bit
                assert dV[k] == (other_dV if other_key == key else -other_dV)
            increments[key] = (dW[k], dV[k])
    assert shared_pairs > 0  # pairs across the cut are on both ranks


def _increments(model, state, pairs, stream, T):
    dW, dV, dW_bath, dU_bath = model.draw_increments(state, pairs, stream)
    return dW, dV, T, dW_bath, dU_bath


def test_scripted_counter_step_matches_the_eager_step_and_the_generator_path_is_kept():
    model = random_model(2, bath=True)
    state, pairs = random_system(2, n=20)
    ids = _ids(20, 2)
    interior = torch.ones(20, dtype=torch.bool)
    interior[:3] = False
    eager = euler_maruyama_step(model, state, pairs, 0.1, interior, CounterNoise(9, 4, ids))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in favour of torch.export
        scripted = torch.jit.script(EulerMaruyama(model))
    with torch.enable_grad():
        via_script = scripted.counter_step(state, pairs, 0.1, interior, ids, 9, 4, True, None)
        via_generator = scripted(state, pairs, 0.1, interior, torch.Generator().manual_seed(1), True)
    for a, b in zip(eager, via_script):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-14)
    with_generator = euler_maruyama_step(model, state, pairs, 0.1, interior, torch.Generator().manual_seed(1))
    for a, b in zip(with_generator, via_generator):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-14)
    assert not torch.allclose(eager.v, with_generator.v)


# -- rollouts ------------------------------------------------------------------------------------------


def test_rollout_setting_is_validated():
    assert RolloutParams().noise_stream == "torch"
    assert ModelConfig.from_config({"rollout": {"noise_stream": "counter"}}).rollout.noise_stream == "counter"
    with pytest.raises(ParameterError, match="model.rollout.noise_stream"):
        ModelConfig.from_config({"rollout": {"noise_stream": "philox"}})


def _periodic_observed():
    box = lattice_box(8, 7)
    traj = lattice_trajectories(box=box, n_frames=4, seed=2)
    model_box = Box(box.lx / H_UM, box.ly / H_UM, 0.0)
    return traj, observed_from_table(traj, H_UM, 1 / RATE, reference_frame={f: f - 1 for f in range(4)},
                                     boxes={f: model_box for f in range(4)})


def test_window_rollout_with_the_counter_stream_is_reproducible_and_seeded():
    _, observed = _periodic_observed()
    model = quiet_model(seed=3, mass=1e4, k_B=1e-3)
    params = RolloutParams(progress=False, dtype="float64", device="cpu", noise_stream="counter", substeps=2)
    runs = [rollout(model, observed, params, start_frame=0, n_frames=3) for _ in range(2)]
    other = rollout(model, observed, RolloutParams(**{**params.__dict__, "seed": 1}), start_frame=0, n_frames=3)
    torch_run = rollout(model, observed, RolloutParams(**{**params.__dict__, "noise_stream": "torch"}),
                        start_frame=0, n_frames=3)
    columns = ["x", "y", "vx", "vy", "S"]
    a, b = runs[0].frames[columns].to_numpy(), runs[1].frames[columns].to_numpy()
    assert runs[0].status["status"] == "completed" and runs[0].status["noise_stream"] == "counter"
    np.testing.assert_array_equal(a, b)
    last = runs[0].frames["frame"] == 3
    for different in (other, torch_run):
        assert np.abs(different.frames[columns].to_numpy()[last] - a[last]).max() > 1e-9
    p = runs[0].conservation[["momentum_x", "momentum_y"]].to_numpy()
    assert np.abs(p - p[0]).max() <= 1e-12 * model.mass.item() * np.abs(runs[0].frames[["vx", "vy"]].to_numpy()).sum()
    with pytest.raises(ValueError, match="generator"):
        rollout(model, observed, params, start_frame=0, n_frames=1, generator=torch.Generator())


def test_fluid_rollout_with_the_counter_stream_follows_the_particles_not_their_order():
    """The same box with the particles listed in another order: every particle's trajectory is the same to
    round-off with the counter stream (with the torch generator it is another realisation)."""
    model = random_model(4, solid=False, k_B=0.05)
    rng = np.random.default_rng(4)
    n = 40
    x0 = rng.uniform(0, 4.0, size=(n, 2))
    v0 = 0.01 * rng.normal(size=(n, 2))
    species = rng.integers(0, 2, n)
    ids = rng.choice(10_000, size=n, replace=False)
    perm = rng.permutation(n)

    def run(order, stream, seed=3):
        result = periodic_fluid_rollout(model, x0[order], v0[order], (4.0, 4.0), 3, seed=seed, substeps=2,
                                        species=species[order], particle=ids[order], noise_stream=stream)
        assert result.status["status"] == "completed" and result.status["noise_stream"] == stream
        return result.frames.sort_values(["frame", "particle"])[["xu", "yu", "vx", "vy", "S"]].to_numpy()

    base = run(np.arange(n), "counter")
    shuffled = run(perm, "counter")
    np.testing.assert_allclose(shuffled, base, rtol=0, atol=1e-10 * np.abs(base).max())
    moved = np.abs(base[-n:, 2:4] - base[:n, 2:4]).max()
    assert moved > 1e-4  # the noise and the forces did act
    np.testing.assert_array_equal(run(np.arange(n), "counter"), base)  # reproducible
    assert np.abs(run(np.arange(n), "counter", seed=4) - base).max() > 1e-3 * moved
    torch_base, torch_shuffled = run(np.arange(n), "torch"), run(perm, "torch")
    assert np.abs(torch_shuffled - torch_base).max() > 1e-3 * moved
