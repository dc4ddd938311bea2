"""Thread limits for one process: torch, BLAS, OpenMP and OpenCV all keep to the threads a rule was given.

Machines are shared: a library that takes every core slows down next to anything
else by 10-100x (oversubscription: an epoch of 0.65 s alone took 20-75 s beside
one other process with torch's default threads, 0.7-1.0 s with one thread). Each
workflow rule calls `limit_threads(snakemake.threads)` before it computes.
"""
from __future__ import annotations

import os
import sys

#: Environment variables read by OpenMP, the BLAS builds numpy, scipy and torch ship with, and numexpr;
#: set so that libraries loaded later and child processes keep the limit too.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")

_limits = []  # keeps threadpoolctl's limiter alive for the life of the process


def limit_threads(n: int) -> int:
    """Keep this process (and the processes it starts) to `n` threads of computation; returns n.

    Sets the environment variables above, limits the thread pools of the BLAS
    and OpenMP libraries already loaded (threadpoolctl), torch's intra- and
    inter-op pools when torch is loaded (a later import reads OMP_NUM_THREADS),
    and OpenCV's when it is loaded. n must be a positive integer.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"limit_threads: the number of threads must be a positive integer, got {n!r}")
    for name in THREAD_VARIABLES:
        os.environ[name] = str(n)
    from threadpoolctl import threadpool_limits

    _limits.append(threadpool_limits(limits=n))
    torch = sys.modules.get("torch")  # torch imported later reads OMP_NUM_THREADS
    if torch is not None:
        torch.set_num_threads(n)
        try:
            torch.set_num_interop_threads(n)
        except RuntimeError:  # only settable before the first parallel work: the intra-op limit still holds
            pass
    if "cv2" in sys.modules:
        sys.modules["cv2"].setNumThreads(n)
    return n


__all__ = ["THREAD_VARIABLES", "limit_threads"]
