"""Wall time of a standard submission: one defense on one corpus, every track, seeds 0 and 1,
the runs ``serbench leaderboard submit`` needs and their entries.

The runs and their dispatch are leaderboards/baselines.py's (its plan, its local pool or
``--ray``), into a fresh temporary runs directory, so nothing is resumed. Untimed first: the
backend's start (Ray's) and the feature cache, warmed as a submitter's is after a corpus's
first run (with ``--ray ADDRESS`` only this machine's cache). It prints each run's wall time
where it ran and the total from the first run queued to the last entry written (the
``submit`` steps included).

    python benchmarks/submission.py --defense noise --dataset ravdess --data-root ../shared/data/ravdess
    python benchmarks/submission.py --defense noise --jobs 2 --workers 1
    python benchmarks/submission.py --defense noise --ray                # a local Ray instance
    python benchmarks/submission.py --defense noise --track representation --seed 0 --workers 1 \\
        --dataset-option speakers=10 --dataset-option utterances_per_emotion=2 \\
        --attack-param frames=16 --attack-param scenarios=worst --attack-param attackers=generic
                                                                         # a quick trial
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "leaderboards"))
import baselines  # noqa: E402  (a script, not a package)
from serbench.dispatch import Outcome  # noqa: E402
from serbench.leaderboard.tracks import TRACKS  # noqa: E402


def warm(entries: list[baselines.Entry], opts: baselines.Options) -> None:
    """Generate or read the corpus and extract every feature set its runs use into the cache,
    as the runs themselves would (the same corpus options, so the same audio)."""
    from serbench.protocol import load_corpus
    from serbench.registry import load_plugin

    options = dict(p.split("=", 1) for p in opts.dataset_options)
    corpus = load_corpus(opts.dataset, REPO / opts.data_root if opts.data_root else None,
                         options)
    attacks = {a for e in entries for a in TRACKS[e.config.surface].attacks}
    for features in sorted({load_plugin("attack", a).default_features for a in attacks}):
        print(f"warming the cache: {opts.dataset} {features}", flush=True)
        corpus.features(features)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    baselines.add_run_options(parser)
    parser.add_argument("--defense", required=True, help="the defense, at its defaults")
    parser.add_argument("--seed", action="append", type=int, help="seed(s) (default: 0 and 1)")
    parser.add_argument("--tmp-dir", type=Path,
                        help="where the fresh runs directory is made (default: the system's; "
                             "with --ray ADDRESS a path every machine shares)")
    parser.add_argument("--keep", action="store_true", help="keep the runs and entries")
    args = parser.parse_args()

    opts = baselines.Options(args.dataset, args.data_root, tuple(args.seed or [0, 1]), None,
                             tuple(args.dataset_option), tuple(args.attack_param), args.workers)
    tmp = Path(tempfile.mkdtemp(prefix="serbench-submission-", dir=args.tmp_dir))
    failed: list[str] = []
    try:
        with baselines.one_line_errors():
            todo = baselines.configs(baselines.surfaces_of(args), [args.defense], families=False)
            entries = baselines.plan(todo, replace(opts, runs_dir=tmp / "runs"))
            with baselines.backend(REPO, args.ray, args.jobs) as where:  # a bad address: now
                warm(entries, opts)
                print(f"runs: {where.description}", flush=True)
                start = time.perf_counter()
                failed, outcomes = baselines.produce(entries, where, tmp / "board")
                total = time.perf_counter() - start
    finally:
        if args.keep or failed:
            print(f"kept: {tmp}")  # asked for, or the logs say why runs failed
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print_table(outcomes, total, f"{args.defense} on {args.dataset}: {len(entries)} entries",
                f"runs {where.description}")
    baselines.exit_if_failed(failed, len(entries))


def print_table(outcomes: dict[Path, Future[Outcome]], total: float, title: str,
                caption: str) -> None:
    """Each run's seconds where it ran (or how it failed), then the total wall time."""
    table = Table(title=title, caption=caption)
    table.add_column("run")
    table.add_column("seconds", justify="right")
    for out, future in outcomes.items():
        ok = future.exception() is None and future.result().returncode == 0
        table.add_row(out.name, f"{future.result().seconds:.0f}" if ok else "failed")
    table.add_section()
    table.add_row(f"total ({len(outcomes)} runs)", f"{total:.0f}")
    Console().print(table)


if __name__ == "__main__":
    main()
