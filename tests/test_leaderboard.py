"""The leaderboard as a submitter meets it (SPEC §6, §7): a defense written in one file exactly
as docs/writing-a-defense.md says, evaluated and submitted with the guide's commands; protocol
checks; hand-edited and malformed entries; verification by re-running; the rendered views."""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import html
import importlib.util
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from importlib.metadata import entry_points
from types import SimpleNamespace

import jsonschema
import matplotlib.image
import numpy as np
import pytest

from serbench.errors import SerbenchError
from serbench.leaderboard.entry import SCHEMA_PATH, cells, compute_results
from serbench.leaderboard.tracks import TRACKS
from serbench.registry import load_plugin
from test_cli import assert_one_line_error

REPO = Path(__file__).resolve().parents[1]
GUIDE = (REPO / "docs" / "writing-a-defense.md").read_text()
ENTRY = Path("leaderboards/synth/update/my-prune-trial.json")
RUNS = {"fedsgd": Path("runs/my-prune-fedsgd-trial"), "fedavg": Path("runs/my-prune-fedavg-trial")}


def serbench(*args: str, cwd: Path) -> SimpleNamespace:
    """``serbench ARGS`` run from ``cwd`` as the console script runs it (``serbench.cli.main``),
    in this process to spare an interpreter start per command, on a terminal wide enough that
    table rows stay on one line."""
    from serbench import cli
    from serbench.leaderboard import cli as leaderboard_cli

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.chdir(cwd), \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        for console in (cli.console, cli.err_console, leaderboard_cli.console,
                        leaderboard_cli.err_console):
            mp.setattr(console, "width", 250)
        mp.setattr(sys, "argv", ["serbench", *args])
        try:
            cli.main()
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
    return SimpleNamespace(args=args, returncode=code, stdout=out.getvalue(),
                           stderr=err.getvalue())


def guide_commands(heading: str) -> list[list[str]]:
    """The ``serbench`` command lines of the guide's first bash block under ``heading``."""
    block = re.search(r"```bash\n(.*?)```", GUIDE.split(heading, 1)[1], re.S).group(1)
    return [shlex.split(line)[1:] for line in block.splitlines() if line.startswith("serbench ")]


@pytest.fixture(scope="module")
def trial(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Step 1 and the quick trial of docs/writing-a-defense.md, verbatim, in a fresh directory."""
    work = tmp_path_factory.mktemp("submitter")
    name, code = re.search(r"Save this as `([^`]+)`:\s*```python\n(.*?)```", GUIDE, re.S).groups()
    (work / name).write_text(code)
    procs = [serbench(*args, cwd=work) for args in guide_commands("### Quick trial")]
    return SimpleNamespace(work=work, procs=procs, entry=json.loads((work / ENTRY).read_text()))


def lb(*args: str, cwd: Path) -> SimpleNamespace:
    return serbench("leaderboard", *args, cwd=cwd)


def write_entry(directory: Path, data: dict) -> Path:
    path = directory / data["corpus"] / data["surface"] / f"{data['name']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_guide_defense_becomes_a_valid_entry(trial: SimpleNamespace) -> None:
    for proc in trial.procs:
        assert proc.returncode == 0, (proc.args, proc.stderr[-2000:])
    entry = trial.entry
    jsonschema.validate(entry, json.loads(SCHEMA_PATH.read_text()))
    assert (entry["name"], entry["corpus"], entry["surface"]) == ("my-prune-trial", "synth", "update")
    assert entry["defense"] | {"summary": ""} == {"ref": "my_prune.py:MyPrune", "name": "my-prune",
                                                  "summary": "", "surfaces": ["update"],
                                                  "params": {"keep": 0.1}}
    assert not entry["standard"] and entry["deviations"]["fedavg"]["rounds"] == 3
    assert entry["deviations"]["fedsgd"]["dataset_options.utterances_per_emotion"] == "2"
    for attack, run in RUNS.items():
        summary = json.loads((trial.work / run / "summary.json").read_text())
        # Both attack modes, and the entry's statistics are the run's own report's.
        assert set(entry["results"][attack]) == set(summary["modes"]) == {"non-adaptive",
                                                                           "adaptive"}
        for mode, report in summary["modes"].items():
            for row in report["pooled"]:
                stats = entry["results"][attack][mode][
                    row["task"] + (f"@{row['group']}" if row["group"] else "")]
                assert stats["uar"] == pytest.approx(row["uar"], abs=1e-12)
                assert stats["ci"] == pytest.approx([row["ci_low"], row["ci_high"]], abs=1e-12)
            for metric, spread in report["folds"].items():
                if metric.endswith(".uar"):
                    stats = entry["results"][attack][mode][metric.removesuffix(".uar")]
                    assert [stats["mean"], stats["std"]] == pytest.approx(
                        [spread["mean"], spread["std"]], abs=1e-12)
        sums = (trial.work / run / "SHA256SUMS").read_bytes()
        stored = next(r for r in entry["runs"] if r["attack"] == attack)
        assert stored["content_hash"] == hashlib.sha256(sums).hexdigest()
    shown = trial.procs[-1].stdout  # the guide's `leaderboard show`
    utility = entry["headline"]["utility"]
    row = next(line for line in shown.splitlines() if "my-prune-trial" in line)
    assert "trial" in row and f"{utility['uar']:.3f}" in row
    assert f"{utility['ci'][0]:.2f}–{utility['ci'][1]:.2f}" in shown
    assert f"{utility['mean']:.3f}±{utility['std']:.3f}" in shown


def test_worst_case_is_the_maximum_over_attacks_and_modes(trial: SimpleNamespace) -> None:
    leakage = {}
    for attack, run in RUNS.items():
        summary = json.loads((trial.work / run / "summary.json").read_text())
        for mode, report in summary["modes"].items():
            for row in report["pooled"]:
                if row["task"] == "gender":
                    leakage[(attack, mode, f"gender@{row['group']}")] = row["uar"]
    assert {a for a, _, _ in leakage} == {"fedsgd", "fedavg"} and len(leakage) == 8
    worst = trial.entry["headline"]["worst"]
    at = (worst["attack"], worst["mode"], worst["measure"])
    assert worst["uar"] == leakage[at] == max(leakage.values())
    # Multiplicity (SPEC §6): the maximum of 8 measures gets a Bonferroni-widened CI, which
    # contains the measure's own 95% CI.
    own = trial.entry["results"][worst["attack"]][worst["mode"]][worst["measure"]]["ci"]
    assert (worst["candidates"], worst["level"]) == (8, pytest.approx(1 - 0.05 / 8))
    assert worst["ci"][0] <= own[0] and worst["ci"][1] >= own[1] and worst["ci"] != own
    # The terminal table shows where the worst case was attained under its numbers.
    lines = trial.procs[-1].stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if "my-prune-trial" in line)
    end = next(i for i in range(start + 1, len(lines)) if lines[i][:1] in "├└")
    cell = " ".join(line.split("│")[4].strip() for line in lines[start:end])
    assert cell.startswith(f"{worst['uar']:.3f} {worst['ci'][0]:.2f}–{worst['ci'][1]:.2f} ")
    assert cell.endswith(", ".join(at) + " (of 8)")


def test_statistics_span_folds_and_seeds(trial: SimpleNamespace) -> None:
    """Several seeds per attack, submitted together: mean ± std is over every (seed, fold),
    the pooled UAR and its CI over both seeds' predictions (SPEC §6)."""
    runs = []
    for args in guide_commands("### Quick trial")[:2]:
        out = args.index("--out") + 1
        args = [*args[:out], args[out] + "-seed1", *args[out + 1:], "--seed", "1"]
        assert serbench(*args, cwd=trial.work).returncode == 0
        runs.append(args[out])
    proc = lb("submit", *map(str, RUNS.values()), *runs, "--name", "two-seeds", "--dir",
              "seeds-board", "--allow-reduced", cwd=trial.work)
    assert proc.returncode == 0, proc.stderr
    entry = json.loads((trial.work / "seeds-board/synth/update/two-seeds.json").read_text())
    assert entry["protocol"]["seeds"] == [0, 1]
    for attack, mode, measure, one_seed in cells(trial.entry["results"]):
        stats = entry["results"][attack][mode][measure]
        uars = {(f["seed"], f["fold"]): f["uar"] for f in stats["folds"]}
        assert set(uars) == {(s, f) for s in (0, 1) for f in range(1, 6)}
        assert [uars[0, f["fold"]] for f in one_seed["folds"]] == [f["uar"] for f in
                                                                 one_seed["folds"]]
        assert [stats["mean"], stats["std"]] == pytest.approx(
            [np.mean(list(uars.values())), np.std(list(uars.values()))], abs=1e-12)
        assert stats["n"] > one_seed["n"]  # seed 1 draws its own target/shadow split
    shown = lb("show", "--dir", "seeds-board", cwd=trial.work).stdout
    utility = entry["headline"]["utility"]
    assert f"{utility['mean']:.3f}±{utility['std']:.3f}" in shown


@pytest.fixture(scope="module")
def rerun(trial: SimpleNamespace) -> SimpleNamespace:
    """`verify --folds 1` of the trial entry, its re-runs kept for reuse."""
    out = trial.work / "verify-runs"
    proc = lb("verify", str(ENTRY), "--folds", "1", "--out", str(out), "--defense",
              "my_prune.py:MyPrune", cwd=trial.work)
    return SimpleNamespace(proc=proc, out=out)


def test_verify_reruns_and_catches_forged_predictions(trial: SimpleNamespace,
                                                      rerun: SimpleNamespace) -> None:
    assert rerun.proc.returncode == 0, rerun.proc.stderr
    assert "verified:" in rerun.proc.stdout and "exact" in rerun.proc.stdout
    assert "fedavg adaptive gender@n=1 seed 0 fold 1 UAR" in rerun.proc.stdout
    # A forgery consistent with itself: fold 1's leakage predictions all right (all wrong
    # where they were all right) and every statistic recomputed, so only a re-run can tell.
    forged = copy.deepcopy(trial.entry) | {"name": "forged"}
    for records in forged["predictions"]["fedsgd"].values():
        for r in records:
            if r["fold"] == 1 and r["measure"].startswith("gender"):
                wrong = "".join("1" if c == "0" else "0" for c in r["y_true"])
                r["y_pred"] = wrong if r["y_pred"] == r["y_true"] else r["y_true"]
    forged |= compute_results(forged)
    path = write_entry(trial.work / "forged-board", forged)
    shown = lb("show", "--dir", str(trial.work / "forged-board"), cwd=trial.work)
    assert shown.returncode == 0 and "inconsistent" not in shown.stdout
    proc = lb("verify", str(path), "--folds", "1", "--out", str(rerun.out), "--defense",
              "my_prune.py:MyPrune", cwd=trial.work)
    assert proc.returncode == 1 and "FAILED" in proc.stdout, proc.stdout + proc.stderr
    failed = [line for line in proc.stdout.splitlines() if "✗" in line]
    assert failed and all("fedsgd" in line and "gender" in line for line in failed)


def test_submit_checks_the_standard_protocol(trial: SimpleNamespace,
                                             rerun: SimpleNamespace) -> None:
    fedsgd, fedavg = (str(p) for p in RUNS.values())
    board = ["--dir", "board", "--allow-reduced"]
    assert_one_line_error(lb("submit", fedsgd, "--name", "x", *board, cwd=trial.work),
                          "attack suite is fedsgd, fedavg", "no run of fedavg")
    assert_one_line_error(lb("submit", fedsgd, fedavg, "--name", "x", "--dir", "board",
                             cwd=trial.work), "reduced protocol", "rounds=3",
                          "utterances_per_emotion=2")
    folds = [str(rerun.out / d) for d in ("fedsgd-seed0", "fedavg-seed0")]
    assert_one_line_error(lb("submit", *folds, "--name", "x", *board, cwd=trial.work),
                          "ran fold(s) [1]", "all of synth's folds [1, 2, 3, 4, 5]")
    edited = trial.work / "edited-run"
    shutil.copytree(trial.work / RUNS["fedavg"], edited)
    summary = edited / "summary.json"
    summary.write_text(summary.read_text().replace('"uar": 0.', '"uar": 0.9', 1))
    assert_one_line_error(lb("submit", fedsgd, str(edited), "--name", "x", *board,
                             cwd=trial.work), "summary.json changed since the run wrote it")
    for name in ("../escape", "a/b", ".hidden"):
        assert_one_line_error(lb("submit", fedsgd, fedavg, "--name", name, *board,
                                 cwd=trial.work), repr(name), "no path characters")
    assert not (trial.work / "board").exists() and not (trial.work / "escape.json").exists()


def test_hand_edited_entry_is_marked_and_fails_verify(trial: SimpleNamespace,
                                                      tmp_path: Path) -> None:
    edited = copy.deepcopy(trial.entry) | {"name": "edited"}
    edited["results"]["fedsgd"]["adaptive"]["gender@n=1"]["folds"][0]["uar"] = 0.5
    honest = copy.deepcopy(trial.entry) | {"name": "honest"}
    for data in (edited, honest):
        write_entry(tmp_path, data)
    shown = lb("show", "--dir", str(tmp_path), cwd=trial.work)
    assert shown.returncode == 0, shown.stderr
    rows = {name: next(line for line in shown.stdout.splitlines() if f" {name} " in line)
            for name in ("edited", "honest")}
    assert "✗ inconsistent" in rows["edited"] and "inconsistent" not in rows["honest"]
    assert "edited: stored results/fedsgd/adaptive/gender@n=1/folds[0]/uar = 0.5" in shown.stdout
    proc = lb("verify", str(tmp_path / "synth/update/edited.json"), "--defense",
              "my_prune.py:MyPrune", cwd=trial.work)
    assert_one_line_error(proc, "edited.json", "but its predictions give", "edited by hand")


def scored_record(data: dict) -> dict:
    """The first prediction record holding the attacker's scores (a gender measure's)."""
    return next(r for r in data["predictions"]["fedsgd"]["adaptive"] if "scores" in r)


MALFORMED = {
    "unknown-field": (lambda d: d.update(comment="hi"),
                      "Additional properties are not allowed ('comment' was unexpected)"),
    "missing-field": (lambda d: d.pop("runs"), "'runs' is a required property"),
    "code": (lambda d: d["defense"].update(code="import os"), "('code' was unexpected)"),
    "dotdot": (lambda d: d.update(name="../../etc/x"), "'../../etc/x'"),
    "slash": (lambda d: d.update(name="sub/x"), "'sub/x'"),
    "newline": (lambda d: d.update(name="x\n"), "'x\\n'"),
    "labels": (lambda d: d["predictions"]["fedsgd"]["adaptive"][0].update(y_pred="os\nsystem"),
               "$.predictions.fedsgd.adaptive[0].y_pred: 'os\\nsystem' does not match"),
    # Valid per-prediction arrays skip jsonschema's item walk; an invalid one still meets it.
    "speaker": (lambda d: scored_record(d)["speakers"].__setitem__(-1, 7),
                "is not of type 'string'"),
    "score": (lambda d: scored_record(d)["scores"].__setitem__(0, True),
              "].scores[0]: True is not of type 'number'"),
}


def test_malformed_entries_are_rejected_in_one_line(trial: SimpleNamespace,
                                                    tmp_path: Path) -> None:
    for name, (edit, _) in MALFORMED.items():
        data = copy.deepcopy(trial.entry)
        edit(data)
        path = tmp_path / "synth" / "update" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
    shown = lb("show", "--dir", str(tmp_path), cwd=trial.work)
    assert shown.returncode == 1
    lines = shown.stderr.splitlines()
    assert len(lines) == len(MALFORMED), shown.stderr
    for line, (name, (_, reason)) in zip(lines, sorted(MALFORMED.items())):
        assert line.startswith(f"rejected {tmp_path}/synth/update/{name}.json: ") and reason in line
        if name in ("dotdot", "slash", "newline"):
            assert "no path characters" in line
    assert "no entries" in shown.stdout
    for name in ("unknown-field", "slash"):
        path = tmp_path / "synth" / "update" / f"{name}.json"
        assert_one_line_error(lb("verify", str(path), cwd=trial.work), str(path),
                              MALFORMED[name][1])


def test_a_missing_board_directory_is_a_one_line_error(tmp_path: Path) -> None:
    """A mistyped --dir must not read as an empty board (exit 0, "no entries")."""
    for command in ("show", "render"):
        assert_one_line_error(lb(command, "--dir", "no-such-board", cwd=tmp_path),
                              "no-such-board: no such leaderboard directory")
    (tmp_path / "empty").mkdir()
    shown = lb("show", "--dir", "empty", cwd=tmp_path)
    assert shown.returncode == 0 and "no entries under empty" in shown.stdout


def test_entries_are_data_never_code(trial: SimpleNamespace, tmp_path: Path) -> None:
    """An entry naming a defense file does not make any command import it; NaN is not JSON."""
    marker = tmp_path / "imported"
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    data = copy.deepcopy(trial.entry) | {"name": "evil"}
    data["defense"]["ref"] = "evil.py:MyPrune"
    path = write_entry(tmp_path / "board", data)
    assert lb("show", "--dir", "board", cwd=tmp_path).returncode == 0
    assert_one_line_error(lb("verify", str(path), cwd=tmp_path), "evil.py:MyPrune",
                          "pass --defense")
    assert not marker.exists()
    path.write_text(path.read_text().replace('"keep": 0.1', '"keep": NaN'))
    proc = lb("show", "--dir", "board", cwd=tmp_path)
    assert proc.returncode == 1 and "not valid JSON (non-standard JSON constant NaN)" in proc.stderr


def baselines_module() -> SimpleNamespace:
    path = REPO / "leaderboards" / "baselines.py"
    spec = importlib.util.spec_from_file_location("baselines", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["baselines"] = module  # its dataclasses resolve annotations through it
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def committed_board() -> list:
    """The committed board, loaded (validated and re-scored from its predictions) once for
    every test of this module that reads it."""
    from serbench.leaderboard.entry import load_entries

    entries, rejected = load_entries(REPO / "leaderboards")
    assert not rejected, rejected
    return entries


def committed_entries() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((REPO / "leaderboards").glob("*/*/*.json"))]


def test_committed_leaderboard_has_valid_baselines_of_every_built_in_defense(
        committed_board: list) -> None:
    """SPEC §7 / docs/leaderboard.md: serbench's own standard entries for each built-in defense
    on every track of the default corpus and of RAVDESS, each consistent with its predictions
    (what `leaderboard show` marks "inconsistent") and none a trial. Schema version 1 entries
    (made before issue 11) still load and render; a track not yet rebuilt since then lacks
    udp-ref."""
    assert all(e.problem is None for e in committed_board), [
        (e.track_id, e.problem) for e in committed_board if e.problem]
    assert not any(e.data["name"].endswith("-trial") for e in committed_board)
    built_in = {ep.name for ep in entry_points(group="serbench.defenses")
                if ep.value.startswith("serbench.defenses.")}
    assert {"none", "udp", "udp-ref", "noise", "dpsgd", "adv"} <= built_in
    unbuilt = []
    on_board = {json.loads(p.read_text())["defense"]["name"]
                for p in (REPO / "leaderboards").glob("*/*/*.json")}
    newer = built_in - on_board  # built-in defenses added since the board was built
    built_in -= newer
    for corpus in ("synth", "ravdess"):
        for surface in TRACKS:
            if not (REPO / "leaderboards" / corpus / surface).is_dir():
                unbuilt.append(f"{corpus}/{surface}")  # a track newer than the board
                continue
            entries = [json.loads(p.read_text())
                       for p in (REPO / "leaderboards" / corpus / surface).glob("*.json")]
            # A track rebuilt since issue 11 (any version 2 entry) holds udp-ref too.
            rebuilt = any(e["schema_version"] >= 2 for e in entries)
            expected = built_in - (set() if rebuilt else {"udp-ref"})
            if surface == "release":  # only a defense that transforms the audio acts there
                expected = {d for d in expected if d == "none" or "audio" in
                            load_plugin("defense", d).tags.surfaces}
            # Issue 24's defenses stand only where they act (grl on the update track, or
            # prune off it, would be `none` under another name: docs/defenses.md).
            expected -= {d for d in ISSUE_24 if not acts_on(d, surface)}
            assert {e["defense"]["name"] for e in entries} >= expected, (corpus, surface)
            assert all(e["standard"] for e in entries), (corpus, surface)
    if unbuilt or newer:
        pytest.skip(f"not yet on the committed board: tracks {', '.join(unbuilt) or '-'}, "
                    f"defenses {', '.join(sorted(newer)) or '-'} "
                    f"(python leaderboards/baselines.py --track ... --defense ...)")


#: Issue 24's defenses (the field's): on the board only on the tracks they act on.
ISSUE_24 = frozenset({"prune", "grl", "recup", "mcadams"})


def acts_on(defense: str, surface: str) -> bool:
    """Whether ``defense`` changes what an attacker sees on the ``surface`` track (a defense
    of the audio changes every track)."""
    surfaces = load_plugin("defense", defense).tags.surfaces
    return "audio" in surfaces or surface in surfaces


def committed_families() -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """The (corpus, surface) tracks that issue 11's families act on, and those of them that
    hold a family on the committed board (a defense with several entries), from the raw files
    (without loading and re-scoring every entry)."""
    per_track = Counter((e["corpus"], e["surface"], e["defense"]["name"]) for e in (
        json.loads(p.read_text()) for p in (REPO / "leaderboards").glob("*/*/*.json")))
    acted_on = {(corpus, surface) for corpus in ("synth", "ravdess")
                for sweep in baselines_module().SWEEPS.values() for surface in sweep.tracks}
    return acted_on, {(c, s) for (c, s, _), n in per_track.items() if n >= 2}


def test_committed_families_are_whole_and_drawn_as_curves(committed_board: list) -> None:
    """Issue 11: a committed track that holds families holds baselines.py's standard sweep of
    every defense acting on it (the board's families are rebuilt a track at a time), and its
    plot draws each family as a line through its entries in strength order."""
    from serbench.leaderboard.plot import GID, figure
    from serbench.leaderboard.views import boards

    _, with_families = committed_families()
    if not with_families:
        pytest.skip("the committed board holds no family yet (issue 11): rebuild it with "
                    "`python leaderboards/baselines.py --families ...` (docs/leaderboard.md)")
    tracks = boards(committed_board)
    for corpus, surface in sorted(with_families):
        board = tracks[f"{corpus}/{surface}"]
        for defense, sweep in baselines_module().SWEEPS.items():
            if surface not in sweep.tracks:
                continue
            family = next((f for f in board.families if f.defense == defense
                           and f.axis == sweep.param), None)
            assert family is not None, (corpus, surface, defense, "no family")
            values = [family.value(r) for r in family.rows]
            assert values == sorted(values) and set(sweep.values_on(surface)) <= set(values), \
                (corpus, surface, defense, values)
            lines = {line.get_gid(): line for line in figure(board).axes[0].lines}
            line = lines[GID + family.label]
            assert line.get_linestyle() == "-"
            assert list(line.get_xdata()) == [r.worst["uar"] for r in family.rows]


def test_committed_board_holds_every_family() -> None:
    """Issue 11's acceptance: families on every track they act on, synth and RAVDESS."""
    acted_on, with_families = committed_families()
    missing = sorted(acted_on - with_families)
    if missing:
        pytest.skip(f"issue 11 is open: no families yet on {', '.join(map('/'.join, missing))} "
                    f"(python leaderboards/baselines.py --families --sweeps-only --track ...)")


def test_a_family_swept_at_one_seed_is_compared_with_none_at_that_seed() -> None:
    """Issue 15 (attacker adequacy) for families swept at seed 0 beside defaults at seeds 0
    and 1: the sweep's entries are compared with the undefended entry's seed-0 predictions,
    scored again, not with nothing and not with its two-seed headline."""
    from serbench.leaderboard.entry import read_entry
    from serbench.leaderboard.views import boards
    from serbench.scoring import uar

    track = REPO / "leaderboards" / "ravdess" / "update"
    entries = [read_entry(track / f"{name}.json") for name in ("none", "noise", "noise-sigma1")]
    none = entries[0].data
    assert none["protocol"]["seeds"] == [0, 1]
    assert entries[2].data["protocol"]["seeds"] == [0]
    rows = {r.data["name"]: r for f in boards(entries)["ravdess/update"].families for r in f.rows}
    assert rows["noise"].baseline is rows["none"]  # same protocol: the entry itself
    base = rows["noise-sigma1"].baseline
    assert base is not None and base.data["protocol"]["seeds"] == [0]
    assert base.data["name"] == "none (seed 0)"
    worst = base.worst
    records = [r for r in none["predictions"][worst["attack"]][worst["mode"]]
               if r["measure"] == worst["measure"]]
    seed0 = [r for r in records if r["seed"] == 0]
    assert 0 < len(seed0) < len(records)
    truth, pred = ("".join(r[k] for r in seed0) for k in ("y_true", "y_pred"))
    assert worst["uar"] == pytest.approx(uar(np.array(list(truth), int), np.array(list(pred), int)))
    folds = {(f["seed"], f["fold"]): f["uar"]
             for f in none["results"][worst["attack"]][worst["mode"]][worst["measure"]]["folds"]}
    for fold in base.data["results"][worst["attack"]][worst["mode"]][worst["measure"]]["folds"]:
        assert fold["seed"] == 0 and fold["uar"] == folds[0, fold["fold"]]


def test_committed_synth_update_baseline_is_attacked_at_least_as_hard_as_defended_ones(
        committed_board: list) -> None:
    """Issue 15 (attacker adequacy): on the committed synth update track, the undefended
    entry's worst case (at the entry's seeds) is at least every defended entry's adaptive
    leakage less its CI half-width; an attacker weaker against ``none`` than against a defense
    would make every defense look better than it is."""
    from serbench.leaderboard.views import boards

    rows = [r for r in boards([e for e in committed_board if e.data["corpus"] == "synth"
                               and e.data["surface"] == "update"])["synth/update"].rows if r.data["defense"]["name"] != "none"]
    assert rows
    for row in rows:
        assert row.baseline is not None, row.data["name"]
        for attack, modes in row.data["results"].items():
            for measure, r in modes.get("adaptive", {}).items():
                if measure.startswith("gender"):
                    half = (r["ci"][1] - r["ci"][0]) / 2
                    assert row.baseline.worst["uar"] >= r["uar"] - half, (
                        row.data["name"], attack, measure, r["uar"], row.baseline.worst["uar"])


def test_an_attack_parameter_added_later_keeps_older_entries_comparable() -> None:
    """An entry made before an attack parameter existed (its runs record none) is under the
    same protocol as one made with the value that reproduces the old behaviour, and under
    another one than an entry made with a different value: ``validation`` (older runs chose
    their model on the training run) and ``weight_space_gib`` (older runs fitted within 1.5)."""
    from serbench.leaderboard.families import protocol_key

    entry = json.loads((REPO / "leaderboards" / "ravdess" / "update" / "none.json").read_text())

    def made_with(**params: object) -> dict:
        new = copy.deepcopy(entry)
        for run in new["runs"]:
            recorded = run["config"]["attack_params"]
            for name in ("validation", "weight_space_gib"):
                recorded.pop(name, None)
            recorded.update(params)
        return new

    old = made_with()
    assert protocol_key(made_with(validation="same-run")) == protocol_key(old)
    assert protocol_key(made_with(validation="run")) != protocol_key(old)
    assert protocol_key(made_with(weight_space_gib=1.5)) == protocol_key(old)
    assert protocol_key(made_with(weight_space_gib=4.0)) != protocol_key(old)


#: The DP trial entries: (name, defense, parameters), each made like the guide's quick trial.
DP_ENTRIES = (("none-trial", "none", ()), ("udp-eps10", "udp", ("epsilon=10",)),
              ("udp-ref-eps10", "udp-ref", ()))


@pytest.fixture(scope="module")
def dp(trial: SimpleNamespace) -> SimpleNamespace:
    """`udp` (ε against the server), `udp-ref` (nominal ε) and `none`, with the quick trial's
    reduced protocol, submitted to DIR dp-board."""
    guide = guide_commands("### Quick trial")[0]
    shared = guide[guide.index("--dataset-option"):guide.index("--out")]
    entries = {}
    for name, defense, params in DP_ENTRIES:
        runs = []
        for attack in ("fedsgd", "fedavg"):
            out = f"runs/{name}-{attack}"
            proc = serbench("eval", "--attack", attack, "--defense", defense,
                            *(a for p in params for a in ("--param", p)), *shared, "--out", out,
                            cwd=trial.work)
            assert proc.returncode == 0, proc.stderr[-2000:]
            runs.append(out)
        proc = lb("submit", *runs, "--name", name, "--dir", "dp-board", "--allow-reduced",
                  cwd=trial.work)
        assert proc.returncode == 0, proc.stderr
        entries[name] = json.loads(
            (trial.work / "dp-board" / "synth" / "update" / f"{name}.json").read_text())
    return SimpleNamespace(entries=entries, shown=lb("show", "--dir", "dp-board",
                                                     cwd=trial.work))


def variant(entry: dict, name: str, epsilon: float, flips: int) -> dict:
    """A consistent copy of a `udp` entry as if made at another ε: its parameters, extras and
    accounting say ``epsilon``, and its first ``flips`` leakage predictions per record are
    flipped, so that it is another point on the plot."""
    data = copy.deepcopy(entry) | {"name": name}
    data["defense"]["params"]["epsilon"] = epsilon
    for modes in data["extras"].values():
        for values in modes.values():
            values["epsilon"] = epsilon
    for modes in data["accounting"].values():
        for contexts in modes.values():
            for c in contexts:
                c["context"]["epsilon"] = epsilon
    for modes in data["predictions"].values():
        for records in modes.values():
            for r in records:
                if r["measure"].startswith("gender"):
                    r["y_pred"] = "".join(str(1 - int(c)) if i < flips else c
                                          for i, c in enumerate(r["y_pred"]))
    return data | compute_results(data)


def family_entries(dp: SimpleNamespace) -> list[dict]:
    """`udp` at ε 1, 10, 100 and 1000 (the one at 10 real, the others variants of it), `udp-ref`
    and `none`, all under the trial's protocol."""
    udp = dp.entries["udp-eps10"]
    return [*dp.entries.values(), variant(udp, "udp-eps1", 1.0, 1),
            variant(udp, "udp-eps100", 100.0, 3), variant(udp, "udp-eps1000", 1000.0, 5)]


@pytest.fixture(scope="module")
def rendered(trial: SimpleNamespace, dp: SimpleNamespace,
             tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The committed synth baselines plus the trial entry and a `udp` family with `udp-ref`
    and `none` under the trial's protocol, rendered."""
    board = tmp_path_factory.mktemp("board")
    shutil.copytree(REPO / "leaderboards" / "synth", board / "synth")
    shutil.copy(trial.work / ENTRY, board / "synth" / "update")
    for data in family_entries(dp):
        write_entry(board, data)
    proc = lb("render", "--dir", str(board), cwd=trial.work)
    assert proc.returncode == 0, proc.stderr
    entries = [json.loads(p.read_text()) for p in board.glob("synth/*/*.json")]
    return SimpleNamespace(dir=board, entries=entries)


def show_row(shown: str, name: str) -> str:
    """The first line of an entry's row in `show`'s table."""
    return next(line for line in shown.splitlines() if f" {name} " in line)


def test_dp_entries_carry_their_accounting_and_say_which_epsilon(dp: SimpleNamespace) -> None:
    """Issue 11: the entry records each fold's accounting context; `show` gives udp's ε as
    the server's and udp-ref's as nominal."""
    assert dp.shown.returncode == 0 and not dp.shown.stderr, dp.shown.stderr
    udp, ref, none = (dp.entries[n] for n in ("udp-eps10", "udp-ref-eps10", "none-trial"))
    assert all(e["schema_version"] == 2 for e in (udp, ref, none))
    for entry, key in ((udp, "epsilon"), (ref, "nominal_epsilon")):
        assert set(entry["accounting"]) == {"fedsgd", "fedavg"}
        for attack, modes in entry["accounting"].items():
            assert set(modes) == {"non-adaptive", "adaptive"}
            for mode, contexts in modes.items():
                assert [(c["seed"], c["fold"]) for c in contexts] == [(0, f) for f in range(1, 6)]
                for c in contexts:
                    assert {"accountant", "sampling", "neighbouring_relation", "clip",
                            "rounds", "sample_rate", key} <= set(c["context"])
    assert all(c["context"]["epsilon_against"].startswith("the server")
               for modes in udp["accounting"].values() for cs in modes.values() for c in cs)
    assert udp["headline"]["epsilon"] == pytest.approx(10, abs=0.01)
    assert udp["headline"]["nominal_epsilon"] is None
    assert (ref["headline"]["epsilon"], ref["headline"]["nominal_epsilon"]) == (None, 10)
    assert none["accounting"] == {} and none["headline"]["epsilon"] is None
    assert f"{udp['headline']['epsilon']:.3g} (server)" in show_row(dp.shown.stdout, "udp-eps10")
    assert "10 nominal" in show_row(dp.shown.stdout, "udp-ref-eps10")
    assert "ε (server): DP against the server" in dp.shown.stdout


def test_dp_entry_without_its_accounting_context_is_rejected(trial: SimpleNamespace,
                                                             dp: SimpleNamespace,
                                                             tmp_path: Path) -> None:
    """Schema version 2: a DP entry (ε or nominal ε in its headline) without its accounting
    context fails validation in one line; one without a fold's context is inconsistent; and
    `submit` refuses a run that reports ε without a context."""
    from serbench.leaderboard.submit import build_entry, load_run

    udp, ref = dp.entries["udp-eps10"], dp.entries["udp-ref-eps10"]
    cases = {"udp-dropped": (udp, lambda d: d.pop("accounting")),
             "udp-empty": (udp, lambda d: d.update(accounting={})),
             "ref-dropped": (ref, lambda d: d.pop("accounting"))}
    for name, (entry, edit) in cases.items():
        data = copy.deepcopy(entry) | {"name": name}
        edit(data)
        write_entry(tmp_path, data)
    partial = copy.deepcopy(udp) | {"name": "udp-partial"}
    del partial["accounting"]["fedavg"]["adaptive"][2]
    write_entry(tmp_path, partial)
    shown = lb("show", "--dir", str(tmp_path), cwd=trial.work)
    assert shown.returncode == 1
    lines = shown.stderr.splitlines()
    assert len(lines) == len(cases), shown.stderr
    for line, name in zip(lines, sorted(cases)):
        assert line.startswith(f"rejected {tmp_path}/synth/update/{name}.json: $.accounting: "
                               f"missing accounting context"), line
    assert "✗ inconsistent" in show_row(shown.stdout, "udp-partial")
    assert ("its fedavg adaptive runs report epsilon but the accounting context of seed 0 "
            "fold 3 is missing") in shown.stdout
    run = load_run(trial.work / "runs" / "udp-eps10-fedsgd")
    del run.summary["modes"]["adaptive"]["accounting"]
    with pytest.raises(SerbenchError, match="its adaptive results report epsilon but the run "
                                            "recorded no accounting context"):
        build_entry([run, load_run(trial.work / "runs" / "udp-eps10-fedavg")], "x", True)


def test_submit_needs_the_modes_the_runner_attacks(trial: SimpleNamespace,
                                                  dp: SimpleNamespace) -> None:
    """SPEC §5: an entry holds every mode the runner attacks for its attack and defense
    (runner.attack_modes), no fewer: a defended FL run without its adaptive mode is refused."""
    from serbench.leaderboard.submit import build_entry, load_run

    runs = [load_run(trial.work / "runs" / f"udp-eps10-{a}") for a in ("fedsgd", "fedavg")]
    del runs[0].summary["modes"]["adaptive"]
    with pytest.raises(SerbenchError, match="attack modes non-adaptive; fedsgd against 'udp' "
                                            "needs non-adaptive, adaptive"):
        build_entry(runs, "x", True)


def test_defended_entries_show_the_undefended_leakage_beside_their_own(
        dp: SimpleNamespace) -> None:
    """Issue 15 (attacker adequacy): each defended entry shows the worst case of `none` under
    the same protocol."""
    none = dp.entries["none-trial"]["headline"]["worst"]["uar"]
    for name in ("udp-eps10", "udp-ref-eps10"):
        lines = dp.shown.stdout.splitlines()
        start = lines.index(show_row(dp.shown.stdout, name))
        end = next(i for i in range(start + 1, len(lines)) if lines[i][:1] in "├└")
        assert f"none: {none:.3f}" in "".join(lines[start:end]), name
    assert "none: itself" in "".join(dp.shown.stdout.splitlines())


def test_families_are_grouped_and_drawn_as_curves(dp: SimpleNamespace, tmp_path: Path) -> None:
    """Issue 11: a defense at several strengths is one family: its rows stand together in
    strength order with a heading in the terminal and Markdown views, and its points are
    joined by a line in strength order; no two labels of the plot overlap."""
    from serbench.leaderboard.entry import load_entries
    from serbench.leaderboard.plot import GID, figure
    from serbench.leaderboard.views import boards, markdown

    for data in family_entries(dp):
        write_entry(tmp_path, data)
    entries, rejected = load_entries(tmp_path)
    assert not rejected and not any(e.problem for e in entries)
    board = boards(entries)["synth/update"]
    udp = next(f for f in board.families if f.defense == "udp")
    order = ["udp-eps1", "udp-eps10", "udp-eps100", "udp-eps1000"]
    assert [r.data["name"] for r in udp.rows] == order and udp.axis == "epsilon"
    assert [r.strength for r in udp.rows] == ["ε=1", "ε=10", "ε=100", "ε=1000"]
    heading = "udp (ε): 4 entries, ε 1 → 1000"
    md = markdown({"synth/update": board})
    lines = md.splitlines()
    at = lines.index(next(line for line in lines if heading in line))
    assert [next(n for n in order if f"| {n} |" in line) for line in lines[at + 1:at + 5]] == order
    shown = lb("show", "--dir", str(tmp_path), cwd=tmp_path).stdout
    assert heading in shown
    assert [shown.index(f" {n} ") for n in order] == sorted(shown.index(f" {n} ") for n in order)
    fig = figure(board)
    ax = fig.axes[0]
    line = next(line for line in ax.lines if line.get_gid() == GID + udp.label)
    assert line.get_linestyle() == "-"
    assert list(line.get_xdata()) == [r.worst["uar"] for r in udp.rows]
    assert list(line.get_ydata()) == [r.utility["uar"] for r in udp.rows]
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert len(boxes) >= 3
    frame = fig.bbox
    for i, a in enumerate(boxes):
        assert frame.x0 <= a.x0 and a.x1 <= frame.x1 and frame.y0 <= a.y0 and a.y1 <= frame.y1
        assert not any(a.overlaps(b) for b in boxes[i + 1:]), ax.texts[i].get_text()


def pareto(entries: list[dict]) -> set[str]:
    """Standard entries that no other has beaten on both emotion UAR and the worst case
    (leakage, lower is better; robust UAR on the input track, higher is better)."""
    sign = {s: 1 if t.higher_is_worse else -1 for s, t in TRACKS.items()}
    points = {e["name"]: (e["headline"]["utility"]["uar"],
                          sign[e["surface"]] * e["headline"]["worst"]["uar"])
              for e in entries if e["standard"]}
    return {n for n, (u, w) in points.items()
            if not any(u2 >= u and w2 <= w and (u2, w2) != (u, w) for u2, w2 in points.values())}


def rendered_tracks(rendered: SimpleNamespace) -> list[str]:
    """The tracks the rendered board holds entries of (a track newer than the committed board,
    such as release before its first build, has none)."""
    return [s for s in TRACKS if any(e["surface"] == s for e in rendered.entries)]


def test_render_writes_markdown_and_pareto_plots(rendered: SimpleNamespace) -> None:
    md = (rendered.dir / "leaderboard.md").read_text()
    for surface in rendered_tracks(rendered):
        entries = [e for e in rendered.entries if e["surface"] == surface]
        section = md.split(f"## synth / {surface}", 1)[1].split("\n## ", 1)[0]
        front = pareto(entries)
        assert front
        for e in entries:
            row = next(line for line in section.splitlines() if f"| {e['name']} |" in line)
            worst, utility = e["headline"]["worst"], e["headline"]["utility"]
            for cell in (utility, worst):
                assert f"| {cell['uar']:.3f} | {cell['ci'][0]:.2f}–{cell['ci'][1]:.2f} | " \
                       f"{cell['mean']:.3f}±{cell['std']:.3f} |" in row
            assert ("★" in row) == (e["name"] in front)
        image = matplotlib.image.imread(rendered.dir / f"synth-{surface}.png")
        assert image.shape[0] > 300 and image.shape[1] > 400
        assert f"(synth-{surface}.png)" in section


class BoardParser(HTMLParser):
    """Per table: its rows' entry names and cells' sort values; the headers' sort state; the
    inline images."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[tuple[str, dict[str, str]]]] = {}
        self.headers: dict[str, dict[str, str | None]] = {}
        self.images: list[str] = []
        self.table = self.row = None
        self.column = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "table" and "data-track" in a:
            self.table = a["data-track"]
            self.tables[self.table], self.headers[self.table] = [], {}
        elif tag == "th" and "data-key" in a:
            self.headers[self.table][a["data-key"]] = a.get("aria-sort")
        elif tag == "tr" and "data-entry" in a:
            self.row = (a["data-entry"], {})
            self.tables[self.table].append(self.row)
            self.column = 0
        elif tag == "tr" and a.get("class") in ("details", "family"):
            self.row = None  # a row's details, or a family's heading
        elif tag == "td" and self.row is not None:
            self.row[1][list(self.headers[self.table])[self.column]] = a["data-sort"]
            self.column += 1
        elif tag == "img":
            self.images.append(a["src"])


def chromium_dom(page: Path, fragment: str) -> BoardParser:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not installed (Debian: apt-get install chromium; .ci/run does)")
    proc = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                           "--virtual-time-budget=5000", "--dump-dom",
                           page.resolve().as_uri() + fragment],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    parser = BoardParser()
    parser.feed(proc.stdout)
    return parser


@pytest.mark.parametrize("key, descending", [("worst", False), ("utility", True),
                                             ("entry", False)])
def test_html_page_in_headless_chromium(rendered: SimpleNamespace, key: str,
                                        descending: bool) -> None:
    fragment = f"#sort={key}" + (":desc" if descending else "")
    dom = chromium_dom(rendered.dir / "leaderboard.html", fragment)
    assert set(dom.tables) == {f"synth/{surface}" for surface in rendered_tracks(rendered)}
    for track, rows in dom.tables.items():
        names = {e["name"] for e in rendered.entries if f"synth/{e['surface']}" == track}
        assert {name for name, _ in rows} == names
        values = [cells[key] for _, cells in rows]
        typed = [float(v) for v in values] if key != "entry" else values
        assert typed == sorted(typed, reverse=descending), (track, values)
        assert dom.headers[track][key] == ("descending" if descending else "ascending")
        assert {"utility", "utility-ci", "utility-spread", "worst", "worst-ci",
                "worst-spread", "epsilon", "pareto"} <= set(dom.headers[track])
    assert len(dom.images) == len(rendered_tracks(rendered))
    for src in dom.images:
        assert src.startswith("data:image/png;base64,")
        image = matplotlib.image.imread(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert image.shape[0] > 300


#: Appended to a copy of the page: per entry row and plot, its box and whether it is what the
#: browser shows at its centre (nothing covers it), then the page's height, as JSON.
_LAYOUT_PROBE = """<script>
const box = (e) => { const r = e.getBoundingClientRect();
  return {x: r.left + scrollX, y: r.top + scrollY, w: r.width, h: r.height}; };
const shown = (e) => { const r = e.getBoundingClientRect();
  const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
  return hit !== null && e.contains(hit); };
const out = {height: document.documentElement.scrollHeight, rows: {}, plots: {}};
document.querySelectorAll("tr[data-entry]").forEach((row) => {
  out.rows[row.closest("table").dataset.track + " " + row.dataset.entry] =
    {...box(row), shown: shown(row)}; });
document.querySelectorAll("img.plot").forEach((img) => {
  out.plots[img.dataset.track] = {...box(img), shown: shown(img), loaded: img.complete,
                                  natural: [img.naturalWidth, img.naturalHeight]}; });
const pre = document.createElement("pre"); pre.id = "layout";
pre.textContent = JSON.stringify(out); document.body.append(pre);
</script>"""


def chromium_run(*args: str) -> subprocess.CompletedProcess:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not installed (Debian: apt-get install chromium; .ci/run does)")
    proc = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                           "--hide-scrollbars", "--force-device-scale-factor=1", *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_html_page_screenshot_shows_every_plot_and_entry(rendered: SimpleNamespace,
                                                         tmp_path: Path) -> None:
    """Issue 11: in headless Chromium, at a desktop width, every track's plot is loaded and
    drawn as rendered (the screenshot's pixels are the PNG's) and every entry's row is
    visible, uncovered and has text; families are lines in the plot's own colours."""
    page = tmp_path / "probe.html"
    page.write_text((rendered.dir / "leaderboard.html").read_text().replace(
        "</body>", _LAYOUT_PROBE + "</body>"))

    def layout(height: int) -> dict:
        proc = chromium_run(f"--window-size=1400,{height}", "--virtual-time-budget=5000",
                            "--dump-dom", page.as_uri())
        text = re.search(r'<pre id="layout">(.*?)</pre>', proc.stdout, re.S).group(1)
        return json.loads(html.unescape(text))

    height = layout(900)["height"]
    found = layout(height)  # the whole page in the window: every row can be hit-tested
    shot = tmp_path / "page.png"
    chromium_run(f"--window-size=1400,{height}", "--virtual-time-budget=5000",
                 f"--screenshot={shot}", page.as_uri())
    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (height, 1400)
    names = {f"synth/{e['surface']} {e['name']}" for e in rendered.entries}
    assert set(found["rows"]) == names
    for key, r in found["rows"].items():
        assert r["shown"] and r["w"] > 600 and r["h"] > 10, key
        region = pixels[int(r["y"]):int(r["y"] + r["h"]), int(r["x"]):int(r["x"] + r["w"])]
        assert (region.mean(axis=2) < 0.5).mean() > 0.003, key  # dark text in the row
    assert set(found["plots"]) == {f"synth/{s}" for s in rendered_tracks(rendered)}
    for track, r in found["plots"].items():
        assert r["shown"] and r["loaded"] and r["natural"][0] > 400, track
        png = matplotlib.image.imread(rendered.dir / f"{track.replace('/', '-')}.png")[..., :3]
        assert r["natural"] == [png.shape[1], png.shape[0]]
        border = (r["w"] - png.shape[1]) / 2  # drawn at its own size, inside a thin border
        assert border in (0, 1) and r["h"] - png.shape[0] == 2 * border, (track, r)
        x, y = round(r["x"] + border), round(r["y"] + border)
        region = pixels[y:y + png.shape[0], x:x + png.shape[1]]
        assert np.abs(region - png).mean() < 0.02, track  # the plot, as rendered, on screen
    # The udp family's line, in its colour, is on screen: plenty of pixels of one colour.
    update = found["plots"]["synth/update"]
    region = pixels[round(update["y"]):round(update["y"] + update["h"]),
                    round(update["x"]):round(update["x"] + update["w"])]
    saturated = region.max(axis=2) - region.min(axis=2) > 0.3
    assert saturated.mean() > 0.002


def test_template_is_a_loadable_defense() -> None:
    cls = load_plugin("defense", f"{REPO / 'docs' / 'templates' / 'defense_template.py'}:MyDefense")
    assert cls.from_params({"strength": "0.25"}).params() == {"strength": 0.25}
    with pytest.raises(SerbenchError, match=r"^defense 'my-defense': strength must be in \[0, 1\]"):
        cls.from_params({"strength": "2"})


def _strings(value: object) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def test_no_committed_entry_names_a_path_of_the_machine_that_made_it() -> None:
    """Issue 28: entries record corpus paths relative to the board's home, so that `verify`
    finds the corpus on any machine where it sits at its documented place."""
    for path in sorted((REPO / "leaderboards").glob("*/*/*.json")):
        absolute = [s for s in _strings(json.loads(path.read_text()))
                    if s.startswith(("/", "~")) and "/" in s[1:]]
        assert not absolute, (path, absolute[:3])


def test_corpus_paths_are_recorded_relative_to_the_board_home_and_resolved_there(
        tmp_path: Path) -> None:
    from serbench.leaderboard.entry import board_home, local_config, portable_config

    entry_file = tmp_path / "repo" / "leaderboards" / "ravdess" / "update" / "x.json"
    home = board_home(entry_file)
    assert home == tmp_path / "repo"
    corpus = tmp_path / "shared" / "data" / "ravdess"
    config = {"data_root": "typed/elsewhere", "shadow_root": [], "seed": 0}
    recorded = portable_config(config, {"data_root": str(corpus)}, home)
    assert recorded == {"data_root": "../shared/data/ravdess", "shadow_root": [], "seed": 0}
    resolved = local_config(recorded, home)
    assert Path(resolved["data_root"]).resolve() == corpus.resolve()
    assert local_config({"data_root": None}, home) == {"data_root": None}


def test_every_committed_measure_wholly_below_chance_is_flagged_on_the_board(
        committed_board: list) -> None:
    """Issue 28: no entry's measure with a CI wholly below chance passes as "at chance": the
    committed board's notes name each one."""
    from serbench.leaderboard.entry import measure_roles
    from serbench.scoring import MIS_SIGNED, Role

    board = (REPO / "leaderboards" / "leaderboard.md").read_text()
    flagged = 0
    for entry in committed_board:
        roles = measure_roles(entry.data)
        for attack, mode, measure, stats in cells(entry.data["results"]):
            if roles[attack][measure] is Role.LEAKAGE and stats["ci"][1] < stats["chance"]:
                flagged += 1
                assert (f"{entry.data['name']}: {MIS_SIGNED}: {attack} {mode} {measure} UAR "
                        f"{stats['uar']:.3f}") in board, (entry.track_id, measure)
    assert flagged  # the committed board holds such measures (issue 28 counted seven entries)


def test_the_representation_track_shows_the_layers_speaker_eer_beside_gender(
        committed_board: list) -> None:
    """Issue 26: an intercept entry's lowest speaker EER from the intercepted layer (its
    direction from the role: lower links better) stands in its own column beside the
    worst-case gender leakage; an entry made before the measure shows a dash."""
    from serbench.leaderboard.views import beside, boards, markdown
    from serbench.scoring import Role

    track = boards([e for e in committed_board if e.data["surface"] == "representation"
                    and e.data["corpus"] == "ravdess"])
    rows = {r.data["name"]: r for r in track["ravdess/representation"].rows}
    eer = beside(rows["none"], Role.LINKABILITY)
    assert eer is not None and eer["uar"] < 0.5
    linked = [c["uar"] for modes in rows["none"].data["results"].values()
              for measures in modes.values() for name, c in measures.items()
              if name.startswith("speaker@")]
    assert eer["uar"] == min(linked)
    md = markdown(track)
    assert "worst speaker EER" in md
    assert f"| — | {eer['uar']:.3f} (" in md  # none attacks once: no adaptive mode
    if (older := next((r for r in rows.values() if beside(r, Role.LINKABILITY) is None), None)):
        assert f"| {older.data['name']} |" in md and " | — | " in md


def test_the_board_shows_each_attack_mode_apart(committed_board: list) -> None:
    """Issue 24: for every entry, the board shows the worst gender measure of each attack mode
    (the attacker the defense's paper used, and serbench's adaptive one) with its own CI,
    beside the emotion UAR; an entry attacked in one mode shows a dash for the other."""
    from serbench.leaderboard.views import beside, boards, markdown
    from serbench.scoring import Role

    track = boards([e for e in committed_board if e.track_id == "ravdess/update"])
    rows = {r.data["name"]: r for r in track["ravdess/update"].rows}
    md = markdown(track)
    for name in ("recup-b1", "none"):
        results = rows[name].data["results"]
        for mode in ("non-adaptive", "adaptive"):
            gender = [c for modes in results.values()
                      for measure, c in modes.get(mode, {}).items()
                      if measure.startswith("gender")]
            stats = beside(rows[name], Role.LEAKAGE, mode)
            assert (stats is None) == (not gender), (name, mode)
            if gender:
                assert stats["uar"] == max(c["uar"] for c in gender)
    recup = [beside(rows["recup-b1"], Role.LEAKAGE, m) for m in ("non-adaptive", "adaptive")]
    none = beside(rows["none"], Role.LEAKAGE, "non-adaptive")
    assert f"| {recup[0]['uar']:.3f} ({recup[0]['ci'][0]:.2f}–{recup[0]['ci'][1]:.2f}) | " \
           f"{recup[1]['uar']:.3f} (" in md
    assert f"| {none['uar']:.3f} ({none['ci'][0]:.2f}–{none['ci'][1]:.2f}) | — |" in md

