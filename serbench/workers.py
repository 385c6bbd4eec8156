"""One worker-process pool policy for every parallel step of a run: feature extraction, the
synthetic corpus's audio, the intercept attack's attacker fits.

Workers start from a forkserver: plain ``fork`` deadlocked once torch had started its thread
pools (seen in CI), and the forkserver is forked before any of that. A ``__main__`` module is
imported by it as ``__mp_main__`` (as with ``spawn``), so a script that calls serbench keeps
its work under ``if __name__ == "__main__":``. Each worker computes on the run's thread policy
(:mod:`serbench.threads`), so results never depend on how many workers ran.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity mask, where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def process_map(fn: Callable[[T], R], items: Sequence[T], *, workers: int = 0,
                chunksize: int = 1) -> Iterator[R]:
    """``map(fn, items)`` in order, over ``workers`` processes (0: one per usable CPU), or in
    this process where one would do (a single item or worker, no forkserver on this OS). The
    first failure cancels the items not yet started and is raised."""
    workers = min(workers or cpu_count(), len(items))
    if workers < 2 or "forkserver" not in mp.get_all_start_methods():
        yield from map(fn, items)
        return
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("forkserver")) as pool:
        try:
            yield from pool.map(fn, items, chunksize=chunksize)
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
