"""The leaderboard as a submitter meets it (SPEC §6, §7): a defense written in one file exactly
as docs/writing-a-defense.md says, evaluated and submitted with the guide's commands; protocol
checks; hand-edited and malformed entries; verification by re-running; the rendered views."""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
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
ENTRY = Path("leaderboards/synth/update/prune-trial.json")
RUNS = {"fedsgd": Path("runs/prune-fedsgd-trial"), "fedavg": Path("runs/prune-fedavg-trial")}


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
    assert (entry["name"], entry["corpus"], entry["surface"]) == ("prune-trial", "synth", "update")
    assert entry["defense"] | {"summary": ""} == {"ref": "prune.py:Prune", "name": "prune",
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
    row = next(line for line in shown.splitlines() if "prune-trial" in line)
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
    # The terminal table shows where the worst case was attained under its numbers.
    lines = trial.procs[-1].stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if "prune-trial" in line)
    end = next(i for i in range(start + 1, len(lines)) if lines[i][:1] in "├└")
    cell = " ".join(line.split("│")[4].strip() for line in lines[start:end])
    assert cell.startswith(f"{worst['uar']:.3f} ") and cell.endswith(", ".join(at))


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
              "prune.py:Prune", cwd=trial.work)
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
              "prune.py:Prune", cwd=trial.work)
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
              "prune.py:Prune", cwd=trial.work)
    assert_one_line_error(proc, "edited.json", "but its predictions give", "edited by hand")


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


def test_entries_are_data_never_code(trial: SimpleNamespace, tmp_path: Path) -> None:
    """An entry naming a defense file does not make any command import it; NaN is not JSON."""
    marker = tmp_path / "imported"
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    data = copy.deepcopy(trial.entry) | {"name": "evil"}
    data["defense"]["ref"] = "evil.py:Prune"
    path = write_entry(tmp_path / "board", data)
    assert lb("show", "--dir", "board", cwd=tmp_path).returncode == 0
    assert_one_line_error(lb("verify", str(path), cwd=tmp_path), "evil.py:Prune",
                          "pass --defense")
    assert not marker.exists()
    path.write_text(path.read_text().replace('"keep": 0.1', '"keep": NaN'))
    proc = lb("show", "--dir", "board", cwd=tmp_path)
    assert proc.returncode == 1 and "not valid JSON (non-standard JSON constant NaN)" in proc.stderr


def test_committed_leaderboard_has_valid_baselines_of_every_built_in_defense() -> None:
    """SPEC §7 / docs/leaderboard.md: serbench's own standard entries for each built-in defense
    on every track of the default corpus and of RAVDESS."""
    proc = lb("show", "--dir", str(REPO / "leaderboards"), cwd=REPO)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    assert "inconsistent" not in proc.stdout and "trial" not in proc.stdout
    built_in = {ep.name for ep in entry_points(group="serbench.defenses")
                if ep.value.startswith("serbench.defenses.")}
    assert {"none", "udp", "noise", "dpsgd", "adv"} <= built_in
    for corpus in ("synth", "ravdess"):
        for surface in TRACKS:
            entries = [json.loads(p.read_text())
                       for p in (REPO / "leaderboards" / corpus / surface).glob("*.json")]
            assert {e["defense"]["name"] for e in entries} >= built_in, (corpus, surface)
            assert all(e["standard"] for e in entries), (corpus, surface)


@pytest.fixture(scope="module")
def rendered(trial: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The committed baselines plus the trial entry, rendered."""
    board = tmp_path_factory.mktemp("board")
    shutil.copytree(REPO / "leaderboards" / "synth", board / "synth")
    shutil.copy(trial.work / ENTRY, board / "synth" / "update")
    proc = lb("render", "--dir", str(board), cwd=trial.work)
    assert proc.returncode == 0, proc.stderr
    entries = [json.loads(p.read_text()) for p in board.glob("synth/*/*.json")]
    return SimpleNamespace(dir=board, entries=entries)


def pareto(entries: list[dict]) -> set[str]:
    """Standard entries that no other has beaten on both emotion UAR and the worst case
    (leakage, lower is better; robust UAR on the input track, higher is better)."""
    sign = {s: 1 if t.higher_is_worse else -1 for s, t in TRACKS.items()}
    points = {e["name"]: (e["headline"]["utility"]["uar"],
                          sign[e["surface"]] * e["headline"]["worst"]["uar"])
              for e in entries if e["standard"]}
    return {n for n, (u, w) in points.items()
            if not any(u2 >= u and w2 <= w and (u2, w2) != (u, w) for u2, w2 in points.values())}


def test_render_writes_markdown_and_pareto_plots(rendered: SimpleNamespace) -> None:
    md = (rendered.dir / "leaderboard.md").read_text()
    for surface in TRACKS:
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
        if tag == "table":
            self.table = a["data-track"]
            self.tables[self.table], self.headers[self.table] = [], {}
        elif tag == "th":
            self.headers[self.table][a["data-key"]] = a.get("aria-sort")
        elif tag == "tr" and "data-entry" in a:
            self.row = (a["data-entry"], {})
            self.tables[self.table].append(self.row)
            self.column = 0
        elif tag == "td":
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
    assert set(dom.tables) == {f"synth/{surface}" for surface in TRACKS}
    for track, rows in dom.tables.items():
        names = {e["name"] for e in rendered.entries if f"synth/{e['surface']}" == track}
        assert {name for name, _ in rows} == names
        values = [cells[key] for _, cells in rows]
        typed = [float(v) for v in values] if key != "entry" else values
        assert typed == sorted(typed, reverse=descending), (track, values)
        assert dom.headers[track][key] == ("descending" if descending else "ascending")
        assert {"utility", "utility-ci", "utility-spread", "worst", "worst-ci",
                "worst-spread", "epsilon", "pareto"} <= set(dom.headers[track])
    assert len(dom.images) == len(TRACKS)
    for src in dom.images:
        assert src.startswith("data:image/png;base64,")
        image = matplotlib.image.imread(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert image.shape[0] > 300


def test_template_is_a_loadable_defense() -> None:
    cls = load_plugin("defense", f"{REPO / 'docs' / 'templates' / 'defense_template.py'}:MyDefense")
    assert cls.from_params({"strength": "0.25"}).params() == {"strength": 0.25}
    with pytest.raises(SerbenchError, match=r"^defense 'my-defense': strength must be in \[0, 1\]"):
        cls.from_params({"strength": "2"})
