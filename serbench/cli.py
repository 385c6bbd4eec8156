"""The ``serbench`` command line."""

from __future__ import annotations

import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, \
    TimeElapsedColumn
from rich.table import Table

from serbench.errors import SerbenchError
from serbench.leaderboard.cli import app as leaderboard_app

app = typer.Typer(help="serbench: how much a speech emotion recognition system leaks about its "
                       "speakers, and how well defenses stop it.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
app.add_typer(leaderboard_app, name="leaderboard")
console = Console()
err_console = Console(stderr=True)


def _pairs(values: list[str], option: str) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SerbenchError(f"{option} {item!r}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


@app.command("eval")
def eval_cmd(
    attack: Annotated[Optional[str], typer.Option(
        help="Attack name (see `serbench list`), or file.py:ClassName.")] = None,
    defense: Annotated[Optional[str], typer.Option(
        help="Defense name, or file.py:ClassName.  \\[default: none]")] = None,
    dataset: Annotated[Optional[str], typer.Option(
        help="Target corpus.  \\[default: synth]")] = None,
    data_root: Annotated[Optional[Path], typer.Option(
        help="Corpus directory (manifest: the CSV file). synth: where to write its audio.")] = None,
    dataset_option: Annotated[Optional[list[str]], typer.Option(
        help="Corpus option KEY=VALUE, e.g. subset=improvised (repeatable). Every corpus: "
             "classes=A,B,... keeps those emotion classes, map=OLD:NEW,... renames or merges "
             "them, permute_gender=true permutes gender labels across speakers (the "
             "real-audio null), shuffle_speakers=true shuffles speaker labels across each "
             "gender's utterances (the linkability null).")] = None,
    shadow: Annotated[Optional[str], typer.Option(
        help="Attacker's shadow data: 'disjoint' (half the target corpus's speakers, never "
             "the target's), 'none', or other dataset name(s), comma-separated.  "
             "[default: disjoint]")] = None,
    shadow_root: Annotated[Optional[list[str]], typer.Option(
        help="Root of each --shadow dataset, in order (repeatable).")] = None,
    features: Annotated[Optional[str], typer.Option(
        help="Feature set (default: the attack's; see `serbench list features`).")] = None,
    folds: Annotated[Optional[str], typer.Option(
        help="'all' or fold numbers, e.g. 1,3.  \\[default: all]")] = None,
    seed: Annotated[Optional[int], typer.Option(
        help="Seed for every random choice.  \\[default: 0]")] = None,
    engine: Annotated[Optional[str], typer.Option(
        help="FL engine: 'inprocess' (default: a round's clients batched), 'inprocess-serial' "
             "(client by client), 'flower' (Flower's simulation engine) or "
             "'flower-deployment' (a running SuperLink: docs/cluster.md).")] = None,
    layer: Annotated[Optional[str], typer.Option(
        help="Layer whose output/update the attacker reads (FL: first, second, last).")] = None,
    analysis: Annotated[Optional[list[str]], typer.Option(
        help="Analysis the attack writes beside the results, e.g. layers (repeatable; "
             "intercept: layers, emotions, features, improvised).")] = None,
    param: Annotated[Optional[list[str]], typer.Option(
        help="Defense parameter KEY=VALUE (repeatable); KEY=V1,V2,... sweeps it against the "
             "undefended baseline, with a utility-vs-leakage table and plot.")] = None,
    attack_param: Annotated[Optional[list[str]], typer.Option(
        help="Attack parameter KEY=VALUE, e.g. rounds=100 (repeatable).")] = None,
    workers: Annotated[Optional[int], typer.Option(
        help="Worker processes for the run's independent work (FL simulations, folds); 0: "
             "one per usable CPU. No number depends on it.  \\[default: 0]")] = None,
    out: Annotated[Optional[Path], typer.Option(
        help="Run directory (default runs/<time>-<attack>-<defense>-<dataset>); an existing "
             "one with the same configuration is resumed.")] = None,
    config: Annotated[Optional[Path], typer.Option(
        help="TOML file of eval options (keys as the options, with \\[dataset_options], "
             "\\[attack_params] and \\[defense_params] tables; docs/your-own-corpus.md). Options "
             "given here override it. Every run directory holds a config.toml that re-runs "
             "it.")] = None,
) -> None:
    """Run an attack against a defense on a corpus and report utility vs leakage."""
    given = dict(locals())  # every option, by its parameter's name
    from serbench.config import KEYS, merge, read_config

    typed = {name: value for name, value in given.items() if name in KEYS}
    typed |= {key: _pairs(given[name] or [], option) or None
              for name, (key, option) in PAIRED_OPTIONS.items()}
    typed |= {k: str(typed[k]) for k in ("data_root", "out") if typed[k]}
    typed |= {k: typed[k] or None for k in ("shadow_root", "analysis")}
    _evaluate(merge(read_config(config) if config else {},
                    {k: v for k, v in typed.items() if v is not None}))


#: The options given as KEY=VALUE pairs: their configuration key and their name.
PAIRED_OPTIONS = {"dataset_option": ("dataset_options", "--dataset-option"),
                  "attack_param": ("attack_params", "--attack-param"),
                  "param": ("defense_params", "--param")}


def _evaluate(options: dict) -> None:
    """``serbench eval`` with ``options`` merged from --config and the command line: one run,
    or a sweep of one defense parameter against the undefended baseline."""
    from serbench.config import write_run_config
    from serbench.progress import RichReporter
    from serbench.report import print_report, print_sweep
    from serbench.runner import eval_config, run_eval

    cfg, out = eval_config(options)
    swept = {k: v.split(",") for k, v in cfg.defense_params.items() if "," in v}
    if len(swept) > 1:
        raise SerbenchError(f"--param sweeps one parameter at a time; got {', '.join(swept)}")
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
               MofNCompleteColumn(), TimeElapsedColumn())
    # Off a terminal (a pipe, a CI log) rich cannot redraw bars; it would only leave a blank line.
    with Progress(*columns, console=err_console, transient=True,
                  disable=not err_console.is_terminal) as progress:
        reporter = RichReporter(progress)
        if swept:
            from serbench.runner import build_plugins, default_out
            from serbench.sweep import run_sweep

            (key, values), = swept.items()
            for value in values:  # every value is checked before the first run starts
                build_plugins(replace(cfg, defense_params={**cfg.defense_params, key: value}))
            out = out or default_out(cfg)
            write_run_config(out / "config.toml", asdict(cfg))  # re-runs the whole sweep
            frame = run_sweep(cfg, key, values, out, reporter)
        else:
            result = run_eval(cfg, out, reporter)
    if swept:
        print_sweep(frame, out, console)
    else:
        print_report(result, console)


@app.command("report")
def report_cmd(
    run: Annotated[Path, typer.Argument(help="A run directory (finished or partial).")],
) -> None:
    """Print a run's report again, scored from its fold files (also in RUN/report.md)."""
    from serbench.report import print_report
    from serbench.runner import load_result

    print_report(load_result(run), console)


@app.command("check-defense")
def check_defense_cmd(
    defense: Annotated[str, typer.Argument(help="path/to/file.py:ClassName or an installed "
                                                "defense's name.")],
) -> None:
    """Check that a defense meets serbench's contract (shapes, determinism, RNG, pickling)."""
    from serbench.registry import load_plugin
    from serbench.testing import check_defense

    checks = check_defense(load_plugin("defense", defense))
    for check in checks:
        mark = "[green]ok[/]" if check.passed else "[red]FAIL[/]"
        console.print(f"{mark} {escape(check.name)}"
                      + (f": {escape(check.reason)}" if check.reason else ""), highlight=False)
    failed = sum(not c.passed for c in checks)
    if failed:
        console.print(f"{failed} of {len(checks)} checks failed")
        raise typer.Exit(1)
    console.print(f"all {len(checks)} checks passed")


@app.command("list")
def list_cmd(
    what: Annotated[Optional[str], typer.Argument(
        help="attacks, defenses, datasets or features (default: all), or an attack's or a "
             "defense's name: its parameters.")] = None,
) -> None:
    """List the available attacks, defenses, datasets and feature sets, or one plugin's
    parameters (`serbench list fedavg`)."""
    from serbench.corpora import CORPORA
    from serbench.features.extractors import FEATURES
    from serbench.registry import available

    plugins = {"attacks": available("attack"), "defenses": available("defense")}
    sections = {
        "attacks": {n: c.summary for n, c in plugins["attacks"].items()},
        "defenses": {n: c.summary for n, c in plugins["defenses"].items()},
        "datasets": {n: c.summary for n, c in CORPORA.items()},
        "features": {n: s.summary for n, s in FEATURES.items()},
    }
    named = {**plugins["defenses"], **plugins["attacks"]}
    if what in named:
        plugin = named[what]
        table = Table(title=f"{plugin.kind} {what}: {plugin.summary}", title_justify="left")
        for column in ("parameter", "default", "what it sets"):
            table.add_column(column)
        for name, default, doc in plugin.parameters():
            table.add_row(f"[bold]{name}[/]", escape(repr(default)), escape(doc))
        console.print(table)
        return
    if what is not None and what not in sections:
        raise SerbenchError(f"unknown list {what!r}; valid: {', '.join(sections)}, or an attack "
                            f"or defense: {', '.join(sorted(named))}")
    for name, rows in sections.items():
        if what in (None, name):
            table = Table(title=name, title_justify="left", show_header=False)
            for key, summary in rows.items():
                table.add_row(f"[bold]{key}[/]", summary)
            console.print(table)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit status 2; faults of the
    machine one line too (serbench.faults): an OSError at a path (a full disk, no permission)
    exit status 1, Ctrl-C 130, each with the command that resumes or retries."""
    from serbench import faults

    faults.reset()
    try:
        with faults.interrupts_raise():
            app(standalone_mode=True)
    except SerbenchError as exc:
        err_console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (faults.Interrupted, KeyboardInterrupt):
        err_console.print(escape(faults.interrupted_line()), highlight=False, soft_wrap=True)
        sys.exit(faults.INTERRUPTED)
    except OSError as exc:
        if not faults.environmental(exc):
            raise
        err_console.print(f"[red]error:[/] {escape(faults.describe(exc))}", highlight=False,
                          soft_wrap=True)
        sys.exit(1)
