"""``--engine flower-deployment``: federated training on a running Flower deployment, one
SuperLink and SuperNodes as separate processes, on one machine or many (docs/cluster.md).

Each SuperNode holds a partition of the corpora's features, written by
``serbench-flower partition``. For every FL run this process writes the ServerApp's job (no
features: fingerprints of each client's rows, labels, the recipe), submits the app with
``flwr run``, follows the ServerApp's progress file, and reads back the recorded run. The
ServerApp is started by the SuperLink on its machine, so run serbench there (or share the
temporary directory, ``$TMPDIR``, with it).

Environment: ``SERBENCH_SUPERLINK`` is the SuperLink's ``HOST:PORT`` (an insecure connection)
or the name of a connection in flwr's own configuration (TLS and accounts);
``SERBENCH_FLOWER_TIMEOUT`` bounds, in seconds, the wait for SuperNodes and for each round.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from serbench.errors import SerbenchError
from serbench.fl.clients import Client
from serbench.fl.engine import FLConfig, FLRun, Params
from serbench.fl.flower_apps import make_job, write_partition
from serbench.plugins import Defense
from serbench.protocol import DISJOINT, NO_SHADOW, load_corpus, load_shadow

APP = Path(__file__).with_name("flower_app")
#: Seconds the ServerApp gets to start and to write its result, beyond its own timeouts.
GRACE = 60.0


def _timeout() -> float:
    text = os.environ.get("SERBENCH_FLOWER_TIMEOUT", "600")
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise SerbenchError(f"SERBENCH_FLOWER_TIMEOUT={text!r}: expected seconds > 0")
    return value


class _Flwr:
    """The ``flwr`` CLI on the SuperLink that ``SERBENCH_SUPERLINK`` names; every command
    answers JSON or raises a one-line error."""

    def __init__(self, home: Path) -> None:
        target = os.environ.get("SERBENCH_SUPERLINK", "")
        if not target:
            raise SerbenchError("engine 'flower-deployment' needs SERBENCH_SUPERLINK=HOST:PORT of "
                                "a running SuperLink, or a flwr connection name (docs/cluster.md)")
        self.target, self.connection, self.env = target, target, dict(os.environ)
        if ":" in target:  # an address: a private flwr configuration with one connection
            home.mkdir()
            (home / "config.toml").write_text(
                f'[superlink]\ndefault = "serbench"\n\n[superlink.serbench]\n'
                f'address = {json.dumps(target)}\ninsecure = true\n')
            self.env["FLWR_HOME"], self.connection = str(home), "serbench"
        # The flwr next to this Python first: the one installed with serbench.
        path = f"{Path(sys.executable).parent}{os.pathsep}{self.env.get('PATH', '')}"
        self.exe = shutil.which("flwr", path=path) or "flwr"

    def __call__(self, *args: str) -> dict[str, Any]:
        try:
            done = subprocess.run([self.exe, *args, "--format", "json"], env=self.env,
                                  capture_output=True, text=True, timeout=120)
            answer = json.loads(done.stdout or "{}")
        except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
            answer, done = {"error-message": str(exc)}, None
        if not answer.get("success"):
            reason = answer.get("error-message") or (done.stderr if done else "") or "no answer"
            raise SerbenchError(f"`flwr {args[0]}` on {self.target} failed: "
                                f"{' '.join(str(reason).split())}")
        return answer

    def submit(self, run_config: Path) -> str:
        return str(self("run", str(APP), self.connection, "--run-config", str(run_config))["run-id"])

    def status(self, run_id: str) -> str:
        return self("ls", self.connection, "--run-id", run_id)["runs"][0]["status"]

    def stop(self, run_id: str) -> None:
        self("stop", run_id, self.connection)


def run_federated(x: np.ndarray, y: np.ndarray, clients: Sequence[Client], cfg: FLConfig,
                  seed: int, *, init: Params | None = None, defense: Defense | None = None,
                  record: Sequence[str] = (), probe_rounds: Collection[int] = (),
                  on_round: Callable[[int], None] | None = None) -> FLRun:
    """:func:`serbench.fl.engine.run_federated` on the SuperLink named by
    ``SERBENCH_SUPERLINK``, whose SuperNodes hold partitions of ``x``'s corpus."""
    timeout = _timeout()
    with tempfile.TemporaryDirectory(prefix="serbench-flower-") as name:
        tmp = Path(name)
        flwr = _Flwr(tmp / "flwr-home")
        job, out = tmp / "job.pkl", tmp / "run.pkl"
        job.write_bytes(pickle.dumps(make_job(x, y, clients, cfg, seed, init=init, defense=defense,
                                              record=record, probe_rounds=probe_rounds,
                                              timeout=timeout)))
        run_config = tmp / "run.toml"
        run_config.write_text(f"job = {json.dumps(str(job))}\nout = {json.dumps(str(out))}\n")
        run_id = flwr.submit(run_config)
        try:
            return _follow(flwr, run_id, out, timeout, cfg.rounds, on_round)
        except BaseException:
            try:
                flwr.stop(run_id)
            except SerbenchError:
                pass  # it has stopped already
            raise


def _follow(flwr: _Flwr, run_id: str, out: Path, timeout: float, rounds: int,
            on_round: Callable[[int], None] | None) -> FLRun:
    """Wait for the ServerApp's result, reporting its rounds. Never hangs: a run that fails or
    stops without a result, or makes no progress for longer than its own timeouts, is an
    error."""
    progress, error = out.with_suffix(".progress"), out.with_suffix(".error")
    done, changed, checked = 0, time.monotonic(), 0.0

    def report(reached: int) -> None:
        nonlocal done, changed
        if reached > done:
            if on_round:
                on_round(reached - done)
            done, changed = reached, time.monotonic()

    while not out.exists():
        if error.exists():
            raise SerbenchError(f"Flower run {run_id}: {error.read_text()}")
        now = time.monotonic()
        report(int(progress.read_text() or 0) if progress.exists() else 0)
        if now - checked > 5:
            checked = now
            status = flwr.status(run_id)
            if status.startswith("finished") and not out.exists() and not error.exists():
                raise SerbenchError(f"Flower run {run_id} {status} without a result; see "
                                    f"`flwr log {run_id}`")
        if now - changed > timeout + GRACE:
            raise SerbenchError(f"Flower run {run_id}: no progress for {timeout + GRACE:g} s")
        time.sleep(0.2)
    report(rounds)
    return pickle.loads(out.read_bytes())


def partition(dataset: str, data_root: str | None, options: dict[str, str], shadow: str,
              shadow_roots: list[str], features: str, nodes: int, out: Path) -> list[Path]:
    """Split the target corpus's speakers, and the shadow corpora's, over ``nodes`` partition
    files (whole speakers per node, round robin): every client of every FL run in
    ``serbench eval`` with the same data options then lives on one node."""
    if nodes < 1:
        raise SerbenchError(f"--nodes must be >= 1, got {nodes}")
    corpora = [load_corpus(dataset, data_root, options)]
    if shadow not in (DISJOINT, NO_SHADOW):
        corpora.append(load_shadow(shadow.split(","), shadow_roots, dataset))
    parts: list[list[np.ndarray]] = [[] for _ in range(nodes)]
    i = 0
    for corpus in corpora:
        matrix = corpus.features(features)
        for rows in corpus.table.groupby("speaker", sort=True).indices.values():
            parts[i % nodes].append(matrix[rows])
            i += 1
    if i < nodes:
        raise SerbenchError(f"{i} speakers cannot fill {nodes} SuperNodes")
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"node-{n}.npz" for n in range(nodes)]
    for path, blocks in zip(paths, parts):
        write_partition(path, np.concatenate(blocks))
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    """``serbench-flower partition``: write the SuperNodes' partitions (docs/cluster.md)."""
    parser = argparse.ArgumentParser(prog="serbench-flower", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("partition", help="split a corpus's features over N SuperNodes")
    p.add_argument("--dataset", default="synth")
    p.add_argument("--data-root")
    p.add_argument("--dataset-option", action="append", default=[], metavar="K=V")
    p.add_argument("--shadow", default=DISJOINT)
    p.add_argument("--shadow-root", action="append", default=[])
    p.add_argument("--features", default="emobase")
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        options = dict(item.split("=", 1) for item in args.dataset_option)
        paths = partition(args.dataset, args.data_root, options, args.shadow, args.shadow_root,
                          args.features, args.nodes, args.out)
    except (SerbenchError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    for n, path in enumerate(paths):
        print(f"node {n}: flower-supernode --insecure --superlink SUPERLINK_HOST:8000 "
              f"--node-config \"data='{path.resolve()}'\"")


if __name__ == "__main__":
    main()
