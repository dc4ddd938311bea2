"""Counter-based noise: increments keyed by particle ids and the step, not by the pair list's order.

A `torch.Generator` hands out numbers in call order, so the increment a pair receives depends on
where the pair sits in the pair list. In a domain decomposition a pair straddling two ranks is
evaluated on both, in another order, with other local indices and possibly in the other
orientation, so the two ranks would give the same pair different noise. Here every increment is a
pure function of (seed, step, particle ids, component):

    pair (i, j), lo = min(id_i, id_j), hi = max(id_i, id_j):
        dW_ij  (D x D, row-major)  = normals of counter (lo, hi, step, PAIR_DOMAIN + block)
        dV_ij                      = s_ij * the normal after dW's D^2,  s_ij = +1 if id_i < id_j else -1
    particle i (the bath):
        dW_bath_i (D), dU_bath_i   = normals of counter (id_i, 0, step, BATH_DOMAIN + block)

dW is shared by both ends and dV is antisymmetric (dV_ji = -dV_ij, docs/physics.md), so the
per-particle noise (dv~, dS~) is the same whichever way round, in whatever order and on whichever
rank a pair is stored (`MetriplecticModel.noise_from_increments`: flipping (i, j) flips e_ij and
v_ij, so the kick and the work are unchanged, and the conduction C dV_ij changes ends with dV's sign).

Generator: Philox-4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as 1, 2, 3",
SC 2011), the counter-based generator of Random123, cuRAND, JAX and PyTorch's CUDA backend. It
passes TestU01's BigCrush (the paper's claim, not re-tested here); its known-answer vectors are
tested (tests/test_noise_stream.py). It is written in int64 torch arithmetic on 32-bit words, the
32 x 32-bit products split into 16-bit halves so that no intermediate exceeds 2^50: no overflow, so
the bits are the same on every device and in TorchScript (the functions here are scriptable).

Normals: one Philox block (4 words) gives two 53-bit uniforms u1, u2 (two words each, as
numpy's random_double), and the Box-Muller transform two independent N(0, 1) numbers,
sqrt(-2 log(1 - u1)) (cos, sin)(2 pi u2); 1 - u1 lies in (0, 1], so the logarithm is finite and
|z| <= sqrt(2 * 53 log 2) = 8.6 (the tails beyond are cut, with probability 2^-53). Computed in
float64 and then cast to the state's dtype. The integers are bit-identical across devices; the
normals agree to the last bit or two of float64 (log, cos and sin are not correctly rounded on
every device), far below any float32 rounding.

Limits: ids and steps must lie in [0, 2^32); the seed in [0, 2^63) (its two 32-bit halves are
Philox's key). Two images of one pair (a periodic box shorter than 2 (h + skin), which the Verlet
list refuses) would share their noise. A pair of a particle with itself is not a pair.
"""
from __future__ import annotations

import math

import torch

MASK32 = 0xFFFFFFFF
PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10
#: the fourth counter word: stream domain in its top byte, the block index below it
PAIR_DOMAIN = 0
BATH_DOMAIN = 1 << 24
TWO_POW_32 = 1 << 32
TWO_POW_63 = 1 << 63


def _mulhilo(a: torch.Tensor, multiplier: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit words of a * multiplier for 32-bit words a (int64 tensor) and a 32-bit constant.

    a * m = (a m_hi) 2^16 + a m_lo, each product < 2^48: nothing overflows int64.
    """
    m_lo, m_hi = multiplier & 0xFFFF, multiplier >> 16
    p_lo = a * m_lo
    p_hi = a * m_hi
    t = p_lo + ((p_hi & 0xFFFF) << 16)
    return (p_hi >> 16) + (t >> 32), t & 0xFFFFFFFF


def philox4x32(c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor,
               k0: int, k1: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Philox-4x32-10 of the counters (c0, c1, c2, c3) (int64 tensors of 32-bit words, broadcast together)
    under the key (k0, k1): four int64 tensors of 32-bit words (Random123's philox4x32_R(10, ...))."""
    for r in range(10):
        if r > 0:
            k0 = (k0 + 0x9E3779B9) & 0xFFFFFFFF
            k1 = (k1 + 0xBB67AE85) & 0xFFFFFFFF
        hi0, lo0 = _mulhilo(c0, 0xD2511F53)
        hi1, lo1 = _mulhilo(c2, 0xCD9E8D57)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def normals_from_words(w0: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
                       w3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent standard normals (float64) from four random 32-bit words, by Box-Muller."""
    scale = 2.0 ** -53
    u1 = ((w0 >> 5) * 67108864 + (w1 >> 6)).to(torch.float64) * scale  # [0, 1), 53 bits
    u2 = ((w2 >> 5) * 67108864 + (w3 >> 6)).to(torch.float64) * scale
    radius = torch.sqrt(-2.0 * torch.log1p(-u1))  # log(1 - u1), 1 - u1 in (0, 1]: finite
    angle = (2.0 * math.pi) * u2
    return radius * torch.cos(angle), radius * torch.sin(angle)


def stream_normals(seed: int, step: int, first: torch.Tensor, second: torch.Tensor, domain: int,
                   count: int) -> torch.Tensor:
    """(K, count) float64 standard normals, row k a function of (seed, step, first[k], second[k], domain) only.

    first, second: (K,) int64 in [0, 2^32); normal 2b and 2b + 1 of a row come from the Philox block
    with counter (first, second, step, domain + b).
    """
    k0, k1 = seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF
    n_blocks = (count + 1) // 2
    blocks = torch.arange(n_blocks, dtype=torch.int64, device=first.device) + domain
    c0 = first[:, None].expand(-1, n_blocks)
    c1 = second[:, None].expand(-1, n_blocks)
    c2 = torch.full_like(c0, step & 0xFFFFFFFF)
    c3 = blocks[None, :].expand_as(c0)
    w0, w1, w2, w3 = philox4x32(c0, c1, c2, c3, k0, k1)
    z0, z1 = normals_from_words(w0, w1, w2, w3)
    return torch.stack([z0, z1], dim=-1).reshape(first.shape[0], 2 * n_blocks)[:, :count]


def pair_normals(seed: int, step: int, id_i: torch.Tensor, id_j: torch.Tensor,
                 count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """((E, count) float64 normals of each unordered pair {id_i, id_j}, (E,) orientation sign: +1 where
    id_i < id_j, else -1)."""
    lo, hi = torch.minimum(id_i, id_j), torch.maximum(id_i, id_j)
    sign = (id_i < id_j).to(torch.float64) * 2.0 - 1.0
    return stream_normals(seed, step, lo, hi, 0, count), sign  # 0: PAIR_DOMAIN (TorchScript takes no globals)


def counter_increments(seed: int, step: int, ids: torch.Tensor, i: torch.Tensor, j: torch.Tensor, dim: int,
                       bath: bool, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None,
                                                                torch.Tensor | None]:
    """(dW (E, D, D), dV (E,), dW_bath (N, D), dU_bath (N,)) for pairs (i, j) of local indices and the
    particles' ids (N,) (the bath's two None without `bath`), in `dtype` on the ids' device.

    The layout of `MetriplecticModel.draw_increments`, by the rules of the module docstring.
    """
    id_i, id_j = ids.index_select(0, i), ids.index_select(0, j)
    z, sign = pair_normals(seed, step, id_i, id_j, dim * dim + 1)
    dW = z[:, :dim * dim].reshape(-1, dim, dim).to(dtype)
    dV = (sign * z[:, dim * dim]).to(dtype)
    dW_bath: torch.Tensor | None = None
    dU_bath: torch.Tensor | None = None
    if bath:
        zb = stream_normals(seed, step, ids, torch.zeros_like(ids), 16777216, dim + 1)  # BATH_DOMAIN = 2^24
        dW_bath, dU_bath = zb[:, :dim].to(dtype), zb[:, dim].to(dtype)
    return dW, dV, dW_bath, dU_bath


class CounterNoise:
    """A noise stream keyed by particle ids and a step: pass it where a `torch.Generator` goes for the
    noise (`MetriplecticModel.draw_increments`, `noise`, `drift_and_noise`, `euler_maruyama_step`; eager
    only: a scripted `EulerMaruyama` takes a generator, or `EulerMaruyama.counter_step`).

    seed: in [0, 2^63). step: the model step, in [0, 2^32) (a rollout counts substeps). ids: (N,) int64
    global id of each local particle, in [0, 2^32), distinct; None: the local index (then the noise
    depends on the numbering). One object serves one step: `at(step)` gives the next.
    """

    def __init__(self, seed: int, step: int, ids: torch.Tensor | None = None):
        seed, step = int(seed), int(step)
        if not 0 <= seed < TWO_POW_63:
            raise ValueError(f"the counter stream's seed must lie in [0, 2^63), got {seed}")
        if not 0 <= step < TWO_POW_32:
            raise ValueError(f"the counter stream's step must lie in [0, 2^32), got {step}")
        if ids is not None:
            ids = torch.as_tensor(ids).reshape(-1)
            if ids.dtype.is_floating_point or ids.dtype == torch.bool:
                raise ValueError(f"particle ids must be integers, got {ids.dtype}")
            ids = ids.to(torch.int64)
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= TWO_POW_32):
                raise ValueError(f"particle ids must lie in [0, 2^32) for the counter stream, got "
                                 f"{int(ids.min())} .. {int(ids.max())}")
        self.seed, self.step, self.ids = seed, step, ids

    def at(self, step: int) -> CounterNoise:
        """The same stream (seed, ids) at another step."""
        out = CounterNoise.__new__(CounterNoise)
        out.seed, out.ids = self.seed, self.ids
        step = int(step)
        if not 0 <= step < TWO_POW_32:
            raise ValueError(f"the counter stream's step must lie in [0, 2^32), got {step}")
        out.step = step
        return out

    def select(self, index: torch.Tensor, step: int) -> CounterNoise:
        """The same stream at `step` for the particles ids[index] (a rollout's active slots), unchecked again."""
        if self.ids is None:
            raise ValueError("select needs a stream with particle ids")
        out = self.at(step)
        out.ids = self.ids[index.to(self.ids.device)]
        return out

    def particle_ids(self, n: int, device: torch.device) -> torch.Tensor:
        """The ids of the n local particles on `device`."""
        if self.ids is None:
            return torch.arange(n, dtype=torch.int64, device=device)
        if self.ids.shape[0] != n:
            raise ValueError(f"the counter stream has {self.ids.shape[0]} particle ids for {n} particles")
        return self.ids.to(device)

    def increments(self, n: int, i: torch.Tensor, j: torch.Tensor, dim: int, bath: bool, dtype: torch.dtype,
                   device: torch.device):
        """(dW (E, D, D), dV (E,), dW_bath (N, D) or None, dU_bath (N,) or None) of the pairs (i, j)."""
        ids = self.particle_ids(n, device)
        return counter_increments(self.seed, self.step, ids, i.to(device), j.to(device), dim, bath, dtype)

    def __repr__(self) -> str:
        n = "index" if self.ids is None else f"{self.ids.shape[0]} ids"
        return f"CounterNoise(seed={self.seed}, step={self.step}, {n})"


NOISE_STREAMS = ("torch", "counter")

__all__ = [
    "BATH_DOMAIN",
    "NOISE_STREAMS",
    "PAIR_DOMAIN",
    "CounterNoise",
    "counter_increments",
    "normals_from_words",
    "pair_normals",
    "philox4x32",
    "stream_normals",
]
