"""Whole serbench commands run side by side: on this machine, or on a Ray cluster.

A board's runs (``leaderboards/baselines.py``) share nothing but the feature cache, so they
parallelise as whole processes: each ``python -m serbench ...`` computes on one thread
(:mod:`serbench.threads`), its output in a log file beside its run directory. The local pool
is the default; ``--ray`` hands the same command lines to Ray, the distributed engine that
Flower's simulation already installs, when one machine is not enough. Either way a run writes
the run directory its command names, so its numbers do not depend on where it ran; on several
machines every one must see the same paths (a shared filesystem: docs/cluster.md).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from serbench.errors import SerbenchError
from serbench.results import CHECKSUMS

#: A run computes on one thread (serbench.threads); the BLAS pools are capped before they
#: start, so runs side by side do not oversubscribe the cores.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
#: ``--ray`` without an address: a new Ray instance on this machine (Ray's own name for it).
LOCAL_RAY = "local"


@dataclass(frozen=True)
class Run:
    """One ``serbench`` command (``args``) that writes the run directory ``out``."""

    args: tuple[str, ...]
    out: Path

    @property
    def log(self) -> Path:
        """The run's output, beside its directory: ``<name>.log`` (not ``with_suffix``, which
        took ``noise-sigma0.1-seed0``'s ``.1-seed0`` for a suffix, so a family's runs shared
        one log)."""
        return self.out.parent / f"{self.out.name}.log"


@dataclass(frozen=True)
class Outcome:
    """How a run ended: its wall time where it ran and its exit status."""

    seconds: float
    returncode: int
    skipped: bool = False  #: finished before (its directory was complete): not started
    last_line: str = ""  #: of a failed run's log (read where it ran), e.g. its one-line error


def run_command(args: tuple[str, ...], log: Path, cwd: Path, env: dict[str, str]) -> Outcome:
    """``python -m serbench ARGS`` in ``cwd``, ``env`` over this process's environment, its
    output to ``log``. It runs in a thread here or in a Ray worker elsewhere, so it takes
    everything as arguments and reports a failure as its exit status, not as an exception."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("w") as stream:
        stream.write("+ serbench " + " ".join(args) + "\n")
        stream.flush()
        proc = subprocess.run([sys.executable, "-m", "serbench", *args], cwd=cwd,
                              env=os.environ | env, stdout=stream, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if proc.returncode == 0:
        return Outcome(seconds, 0)
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return Outcome(seconds, proc.returncode, last_line=lines[-1].strip() if lines else "")


def run_env() -> dict[str, str]:
    """What every run's environment gets: one thread, and serbench's own settings
    (``SERBENCH_CACHE``, ...) from ours, so a Ray worker started elsewhere uses them too."""
    return {k: v for k, v in os.environ.items() if k.startswith("SERBENCH_")} | ONE_THREAD


class Backend(Protocol):
    """Where runs execute. ``submit`` returns at once; the future ends with the run."""

    description: str

    def submit(self, run: Run) -> Future[Outcome]: ...

    def close(self) -> None: ...


class LocalPool:
    """``jobs`` runs at once on this machine: threads that each wait on one process."""

    def __init__(self, cwd: Path, jobs: int) -> None:
        self.cwd, self.env = cwd, run_env()
        self.pool = ThreadPoolExecutor(max_workers=jobs)
        self.description = f"{jobs} at a time on this machine"

    def submit(self, run: Run) -> Future[Outcome]:
        return self.pool.submit(run_command, run.args, self.cwd / run.log, self.cwd, self.env)

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)  # after an interrupt: drop what has not started


class RayCluster:
    """Each run a Ray task of one CPU, so a node runs as many at once as it has CPUs: on a new
    local instance of ``cpus`` CPUs (``address`` :data:`LOCAL_RAY`) or on the running cluster
    at ``address`` (``HOST:PORT``, or ``auto``: the one ``ray start`` began on this machine)."""

    def __init__(self, cwd: Path, address: str, cpus: int) -> None:
        ray = _connect(address, cpus)
        self.cwd, self.env, self.ray = cwd, run_env(), ray
        self.task = ray.remote(num_cpus=1)(run_command)
        total = int(ray.cluster_resources().get("CPU", 0))
        where = "a local Ray instance" if address == LOCAL_RAY else f"the Ray cluster at {address}"
        self.description = f"{total} at a time on {where}"

    def submit(self, run: Run) -> Future[Outcome]:
        return self.task.remote(run.args, self.cwd / run.log, self.cwd, self.env).future()

    def close(self) -> None:
        self.ray.shutdown()  # a local instance ends; a cluster forgets this driver's tasks


def _connect(address: str, cpus: int):  # -> the ray module
    """``ray.init`` quietly (no dashboard, usage report or worker output here), or a
    one-line :class:`SerbenchError`: Ray itself retries an unreachable address for minutes."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Leave the GPUs visible to a run, as the local pool does (and silence Ray's notice).
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    try:
        import ray
    except ImportError:
        raise SerbenchError("--ray needs Ray: pip install -c constraints.txt -e '.[flower]'") \
            from None
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address == LOCAL_RAY:
        # The tasks return a few numbers: the smallest object store Ray accepts will do.
        ray.init(address=LOCAL_RAY, num_cpus=cpus, include_dashboard=False,
                 object_store_memory=80 * 2**20, **quiet)
        return ray
    if address != "auto":
        _check_reachable(address)
    try:
        ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SerbenchError(f"cannot join the Ray cluster at {address}: {first}") from None
    return ray


def _check_reachable(address: str) -> None:
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise SerbenchError(f"--ray {address}: give HOST:PORT of a Ray head, 'auto' (the "
                            f"cluster started on this machine) or no value (a local instance)")
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as exc:
        raise SerbenchError(f"no Ray cluster at {address} ({exc.strerror or exc}); start one "
                            f"with `ray start --head` (docs/cluster.md)") from None


@contextmanager
def backend(cwd: Path, ray: str | None = None, jobs: int | None = None) -> Iterator[Backend]:
    """The local pool of ``jobs`` (default 2) processes, or with ``ray`` a Ray cluster
    (:class:`RayCluster`; a local instance gets ``jobs`` CPUs, default all of this machine's).
    Paths in runs are relative to ``cwd``."""
    if ray is None:
        chosen: Backend = LocalPool(cwd, jobs or 2)
    else:
        from serbench.workers import cpu_count

        chosen = RayCluster(cwd, ray, jobs or cpu_count())
    try:
        yield chosen
    finally:
        chosen.close()


def dispatch(runs: Iterable[Run], where: Backend, cwd: Path) -> dict[Path, Future[Outcome]]:
    """Start each run once (one shared by several entries is run once), each printing a line
    as it ends. A run whose directory holds a finished run is not started again (delete it to
    redo it); an unfinished one is started and ``serbench eval`` resumes its finished folds."""
    started: dict[Path, Future[Outcome]] = {}
    for run in runs:
        if run.out in started:
            continue
        if (cwd / run.out / CHECKSUMS).exists():
            future: Future[Outcome] = Future()
            future.set_result(Outcome(0.0, 0, skipped=True))
            say(f"  finished before: {run.out}")
        else:
            future = where.submit(run)
            future.add_done_callback(lambda f, run=run: say(f"  {report(run, f)}"))
        started[run.out] = future
    return started


def say(line: str) -> None:
    """Print a line in one write: runs end on other threads, mid-way through other lines."""
    print(line + "\n", end="", flush=True)


def failure(run: Run, future: Future[Outcome]) -> str | None:
    """Why ``run`` failed (waiting for it to end), or None."""
    try:
        outcome = future.result()
    except Exception as exc:  # the backend's, e.g. a Ray worker lost with its node
        lines = str(exc).strip().splitlines()
        return f"{run.out}: {lines[-1] if lines else type(exc).__name__}"
    if outcome.returncode:
        return (f"serbench {run.args[0]} failed (exit {outcome.returncode}: "
                f"{outcome.last_line}); see {run.log}")
    return None


def report(run: Run, future: Future[Outcome]) -> str:
    """One line on how a finished run ended."""
    if (why := failure(run, future)) is not None:
        return f"failed: {why}"
    return f"done: {run.out} ({future.result().seconds:.0f} s)"
