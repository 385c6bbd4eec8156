"""One thread policy for every computation a run makes.

Floating-point sums split over a different number of threads round differently, so the same
seed gave different numbers on machines with different core counts (a leaderboard entry failed
`verify` on a fresh machine). Runs therefore compute on one thread of torch and of the BLAS
libraries numpy and scikit-learn use (threadpoolctl), whatever the machine; parallelism comes
from worker processes, which the same policy governs. The models are small enough that one
thread is also the fastest on a busy 2-core machine (measured: docs/intercept.md). The
kernels' instruction set is pinned where serbench is imported (:data:`serbench.KERNELS`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from threadpoolctl import threadpool_limits

#: Threads of every computation in a run (recorded in environment.json).
THREADS = 1


@contextmanager
def fixed_threads(threads: int = THREADS) -> Iterator[None]:
    """Compute on ``threads`` threads (torch's intra-op pool and BLAS), then restore."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        torch.set_num_threads(previous)
