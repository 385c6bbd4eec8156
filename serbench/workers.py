"""One worker-process pool policy for every parallel step of a run: feature extraction, the
synthetic corpus's audio, the intercept attack's attacker fits, the FL attacker's shadow
simulations and the target's folds (``--workers``).

Workers start from a forkserver: plain ``fork`` deadlocked once torch had started its thread
pools (seen in CI), and the forkserver is forked before any of that. A ``__main__`` module is
imported by it as ``__mp_main__`` (as with ``spawn``), so a script that calls serbench keeps
its work under ``if __name__ == "__main__":``. Each worker computes on the run's thread policy
(:mod:`serbench.threads`), so results never depend on how many workers ran.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from functools import partial
from typing import TypeVar

from serbench.faults import interrupts_deferred

#: Imported once by the forkserver, so that each worker it forks starts with them instead of
#: importing them again (seconds per worker; a run starts a pool per parallel step).
PRELOAD = ["torch", "pandas", "sklearn.linear_model", "serbench.runner"]

T = TypeVar("T")
R = TypeVar("R")


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity mask, where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def in_process(items: Sequence[object], workers: int = 0) -> bool:
    """Whether :func:`process_map` computes ``items`` in this process: a single item or
    worker, or no forkserver on this OS."""
    return (min(workers or cpu_count(), len(items)) < 2
            or "forkserver" not in mp.get_all_start_methods())


def process_map(fn: Callable[[T], R], items: Sequence[T], *, workers: int = 0,
                chunksize: int = 1) -> Iterator[R]:
    """``map(fn, items)`` in order, over ``workers`` processes (0: one per usable CPU), or in
    this process where one would do (a single item or worker, no forkserver on this OS). The
    first failure cancels the items not yet started and is raised.

    Ctrl-C stops the workers with the run: they ignore the terminal's SIGINT (the parent stops
    them, so no worker prints a traceback of its own), and an interrupted parent (or a caller
    that stops iterating) terminates them at once, without waiting for their current items;
    a terminated worker first unwinds its item, so an atomic write it had begun removes its
    temporary file (:mod:`serbench.io`)."""
    if in_process(items, workers):
        yield from map(fn, items)
        return
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)  # once the forkserver runs, this changes nothing
    with ProcessPoolExecutor(min(workers or cpu_count(), len(items)), mp_context=context,
                             initializer=_worker_started) as pool:
        try:
            # map() submits every item, so starts every worker (and the forkserver, the first
            # time): not to be stopped halfway, and the processes it starts inherit SIGINT
            # blocked until they ignore it.
            with interrupts_deferred(), _sigint_blocked():
                results = pool.map(partial(_call, fn), items, chunksize=chunksize)
            yield from results
        except Exception:
            pool.shutdown(cancel_futures=True)  # the items already running finish
            raise
        except BaseException:  # Ctrl-C, or the caller stopped: the workers stop now
            _terminate(pool)
            raise


@contextmanager
def _sigint_blocked() -> Iterator[None]:
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _terminate(pool: ProcessPoolExecutor) -> None:
    processes = list((pool._processes or {}).values())  # Python 3.14: pool.terminate_workers()
    for process in processes:
        process.terminate()
    pool.shutdown(cancel_futures=True)
    for process in processes:
        process.join()


class _Stopped(BaseException):
    """SIGTERM in a worker that is computing an item."""


_busy = False  #: whether this worker is computing an item


def _worker_started() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # ignored now, not held
    signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum: int, frame: object) -> None:
    if _busy:
        raise _Stopped()  # unwinds the item (its cleanup runs), then _call exits
    os._exit(128 + signum)


def _call(fn: Callable[[T], R], item: T) -> R:
    global _busy
    _busy = True
    try:
        return fn(item)
    except _Stopped:
        os._exit(128 + signal.SIGTERM)
    finally:
        _busy = False
