"""Faults of the machine, not of the input (issue 25): a full disk, a corrupt or unwritable
feature cache, Ctrl-C, a leaderboard write cut short. Each is one line and no traceback, loses
nothing that was written, and a rerun with the same --out resumes to the clean run's bytes.

Every run is the guide's quick trial (docs/writing-a-defense.md) on one fold, a child
``serbench`` process as a user starts it; a fault that needs the machine's help is injected by a
few lines run in that child before ``main()`` (a fuller disk than the test can make, a
read-only cache, Ctrl-C at the exact moment of a write)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from serbench.features.extractors import feature_spec
from serbench.features.store import file_digest, read_entry

REPO = Path(__file__).resolve().parents[1]
QUICK = ("eval", "--attack", "fedsgd", "--dataset-option", "utterances_per_emotion=2",
         "--attack-param", "rounds=3", "--attack-param", "model=linear", "--folds", "1")
MAIN = "from serbench.cli import main; main()"
RESULTS = ("metrics.csv", "predictions.csv")
#: A run's own log lines (``[12:34:56] ...``) and their wrapped continuations.
LOG_LINE = re.compile(r"\[\d\d:\d\d:\d\d\] | {11}")


def command(*args: str, prelude: str = "") -> list[str]:
    """``serbench ARGS`` as the console script runs it, after ``prelude`` (a fault)."""
    return [sys.executable, "-c", f"{prelude}\n{MAIN}", *args]


def _as_from_a_terminal() -> None:
    """Ctrl-C's default in the child, as a user's shell gives it: a test suite started as a
    background job (``cmd &``) inherits SIGINT ignored, and so would every run it starts."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def serbench(*args: str, prelude: str = "", cwd: Path | None = None,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command(*args, prelude=prelude), capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=600,
                          preexec_fn=_as_from_a_terminal)


def fault_lines(stderr: str) -> list[str]:
    """What a run printed besides its own log: the lines its faults added."""
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.strip() and not LOG_LINE.match(line)]


def the_line(stderr: str) -> str:
    lines = fault_lines(stderr)
    assert len(lines) == 1, stderr
    return lines[0]


def temporary_files(directory: Path) -> list[Path]:
    """The atomic writer's temporary files (``.NAME.XXXX``): none may outlive a fault."""
    return [p for p in directory.rglob(".*") if p.is_file()]


def assert_same_results(run: Path, clean: Path) -> None:
    for name in RESULTS:
        assert (run / name).read_bytes() == (clean / name).read_bytes(), name


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quick trial run without a fault: the bytes every faulty run must end up with."""
    out = tmp_path_factory.mktemp("clean") / "run"
    proc = serbench(*QUICK, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert not fault_lines(proc.stderr)
    return out


# -- a full disk ---------------------------------------------------------------------------

#: A disk with ``SERBENCH_TEST_FREE_BYTES`` left under ``SERBENCH_TEST_FULL_DIR``: a write that
#: does not fit writes what fits, then fails as write(2) does (ENOSPC, naming no file).
FULL_DISK = """
import errno, os, pathlib
_free = [int(os.environ["SERBENCH_TEST_FREE_BYTES"])]
_write_text = pathlib.Path.write_text
def _write(self, data, *args, **kwargs):
    if str(self).startswith(os.environ["SERBENCH_TEST_FULL_DIR"]):
        if len(data) > _free[0]:
            _write_text(self, data[:_free[0]], *args, **kwargs)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        _free[0] -= len(data)
    return _write_text(self, data, *args, **kwargs)
pathlib.Path.write_text = _write
"""


def mount_tmpfs(mountpoint: Path, size: str) -> str | None:
    """Mount a tmpfs of ``size`` at ``mountpoint``; why not, if the machine does not allow it
    (no root, a container without CAP_SYS_ADMIN, no mount(8))."""
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                               str(mountpoint)], capture_output=True, text=True, timeout=30)
    except OSError as exc:
        return str(exc)
    return None if proc.returncode == 0 else (proc.stderr.strip() or "mount failed")


@pytest.fixture(params=["tmpfs", "patched writer"])
def full_disk(request: pytest.FixtureRequest, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> dict:
    """Where --out runs out of space: a 16 KB tmpfs where the machine lets the test mount one
    (``free()`` then grows it); else, standing in for it, the patched writer (``free()`` then
    drops it). The variant that does not apply is skipped, saying why."""
    disk = tmp_path / "disk"
    disk.mkdir()
    why = mount_tmpfs(disk, "16k")
    state = {"out": disk / "run"}
    if request.param == "tmpfs":
        if why is not None:
            pytest.skip(f"cannot mount a tmpfs here ({why}); the patched writer stands in")
        state["prelude"] = ""
        state["free"] = lambda: subprocess.run(["mount", "-o", "remount,size=4m", str(disk)],
                                               check=True)
        yield state
        subprocess.run(["umount", "-l", str(disk)], check=False)
        return
    if why is None:
        subprocess.run(["umount", "-l", str(disk)], check=False)
        pytest.skip("a real tmpfs ran out of space instead (the tmpfs variant)")
    monkeypatch.setenv("SERBENCH_TEST_FULL_DIR", str(disk))
    monkeypatch.setenv("SERBENCH_TEST_FREE_BYTES", "5000")  # config and fold fit, results not
    state["prelude"] = FULL_DISK
    state["free"] = lambda: state.update(prelude="")
    yield state


def test_disk_full_is_one_line_and_a_rerun_resumes_to_the_clean_bytes(clean: Path,
                                                                      full_disk: dict) -> None:
    out = full_disk["out"]
    proc = serbench(*QUICK, "--out", str(out), prelude=full_disk["prelude"])
    assert proc.returncode == 1, proc.stderr
    line = the_line(proc.stderr)
    assert re.match(rf"error: {re.escape(str(out))}/\S+: No space left on device; free space",
                    line), line
    assert line.endswith("then rerun with the same --out to resume: serbench "
                         + shlex.join([*QUICK, "--out", str(out)])), line
    assert not temporary_files(out)
    written = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert out / "folds" / "non-adaptive" / "fold-1.json" in written  # the finished fold

    full_disk["free"]()
    proc = serbench(*QUICK, "--out", str(out), prelude=full_disk["prelude"])
    assert proc.returncode == 0, proc.stderr
    assert not fault_lines(proc.stderr)
    assert {p: p.read_bytes() for p in written} == written  # kept whole, and reused
    assert_same_results(out, clean)


# -- the feature cache ---------------------------------------------------------------------

def quick_trial_entries(cache: Path) -> list[Path]:
    """The emobase cache entries the quick trial reads, under the copy ``cache``."""
    from serbench.protocol import load_corpus

    corpus = load_corpus("synth", None, {"utterances_per_emotion": "2"})
    root = cache / "features" / feature_spec("emobase").key
    return sorted(root / f"{file_digest(p)}.npy" for p in corpus.table["path"])


@pytest.fixture
def cache_copy(clean: Path, serbench_cache: Path, tmp_path: Path) -> tuple[Path, dict]:
    """A copy of the session's cache, and the arrays of the quick trial's entries."""
    cache = tmp_path / "cache"
    shutil.copytree(serbench_cache, cache, ignore=shutil.ignore_patterns("locks"))
    entries = quick_trial_entries(cache)
    return cache, {p: read_entry(p) for p in entries}


def test_corrupt_cache_entries_are_recomputed_and_replaced(clean: Path, cache_copy: tuple,
                                                           tmp_path: Path) -> None:
    """Ten entries each truncated (as an interrupted copy leaves them), garbage, and with one
    flipped byte (only the checksum sees it), recomputed in worker processes: one warning line,
    the clean run's numbers, every entry whole again."""
    cache, good = cache_copy
    rng = np.random.default_rng(0)
    good = dict(list(good.items())[::len(good) // 30][:30])
    for i, path in enumerate(good):
        data = bytearray(path.read_bytes())
        if i % 3 == 0:
            data = data[:100]
        elif i % 3 == 1:
            data = bytearray(rng.bytes(len(data)))
        else:
            data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    out = tmp_path / "run"
    proc = serbench(*QUICK, "--out", str(out), env={"SERBENCH_CACHE": str(cache)})
    assert proc.returncode == 0, proc.stderr
    line = the_line(proc.stderr)
    root = next(iter(good)).parent
    assert line.startswith(f"warning: {len(good)} feature cache entries under {root} are "
                           f"corrupt (e.g. "), line
    assert line.endswith("recomputing them"), line
    assert_same_results(out, clean)
    for path, values in good.items():
        assert np.array_equal(read_entry(path), values), path
    assert not temporary_files(cache)


#: A read-only feature cache: new files and appends under ``SERBENCH_TEST_READONLY`` fail with
#: EROFS, as on a read-only mount.
READ_ONLY = """
import builtins, errno, os, tempfile
_root = os.environ["SERBENCH_TEST_READONLY"]
def _refuse(path):
    if str(path).startswith(_root):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
_mkstemp, _open = tempfile.mkstemp, builtins.open
def _mkstemp_ro(*args, dir=None, **kwargs):
    _refuse(dir)
    return _mkstemp(*args, dir=dir, **kwargs)
def _open_ro(file, mode="r", *args, **kwargs):
    if any(m in mode for m in "wax+"):
        _refuse(file)
    return _open(file, mode, *args, **kwargs)
tempfile.mkstemp, builtins.open = _mkstemp_ro, _open_ro
"""


def test_a_cache_the_run_cannot_write_is_skipped_in_one_line(clean: Path, cache_copy: tuple,
                                                            tmp_path: Path) -> None:
    cache, good = cache_copy
    broken = list(good)[:4]  # recomputed in this process (a few files need no workers)
    for path in broken:
        path.write_bytes(path.read_bytes()[:100])
    out = tmp_path / "run"
    proc = serbench(*QUICK, "--out", str(out), prelude=READ_ONLY,
                    env={"SERBENCH_CACHE": str(cache), "SERBENCH_TEST_READONLY": str(cache)})
    assert proc.returncode == 0, proc.stderr
    corrupt, unwritable = fault_lines(proc.stderr)
    assert corrupt.startswith("warning: 4 feature cache entries under ")
    assert unwritable.startswith(f"warning: cannot write the feature cache ({cache}/"), unwritable
    assert "Read-only file system); going on without caching" in unwritable
    assert_same_results(out, clean)
    assert all(len(p.read_bytes()) == 100 for p in broken)  # skipped: the cache was read-only


# -- Ctrl-C --------------------------------------------------------------------------------

def session(sid: int) -> list[str]:
    """The live processes of session ``sid`` (zombies have exited): a child started in a
    session of its own, and everything it started, orphans included."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # it has just exited
            continue
        state, _, _, session_id = stat[stat.rindex(")") + 2:].split()[:4]
        if int(session_id) == sid and state != "Z":
            found.append(f"{entry.name} {cmdline}")
    return found


def interrupt(args: list[str], ready, cwd: Path | None = None,
              env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str, list[str]]:
    """Start ``args`` in a session of its own, send SIGINT to it (not its workers) once
    ``ready(pid)``, and return it with its stderr and the processes it left running."""
    if not Path("/proc/self/stat").is_file():
        pytest.skip("no /proc to look for left-over processes on this OS")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=cwd, env={**os.environ, **(env or {})}, start_new_session=True,
                            preexec_fn=_as_from_a_terminal)
    try:
        deadline = time.monotonic() + 300
        while not ready(proc.pid):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
        deadline = time.monotonic() + 20  # a forkserver sees its parent's end, then exits
        while (left := session(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        return proc, stderr, left
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def test_ctrl_c_is_one_line_with_the_command_that_resumes(clean: Path, tmp_path: Path) -> None:
    """Interrupted once its run directory exists (the attacker's shadow runs or the fold), with
    no --out: the line gives it, and running that line finishes the run to the clean bytes."""
    started = lambda pid: any(tmp_path.glob("runs/*/config.toml"))  # noqa: E731
    proc, stderr, left = interrupt(command(*QUICK), started, cwd=tmp_path)
    assert proc.returncode == 130, stderr
    line = the_line(stderr)
    (out,) = [p.relative_to(tmp_path) for p in tmp_path.glob("runs/*")]
    assert line == ("interrupted; rerun with the same --out to resume: serbench "
                    + shlex.join([*QUICK, "--out", str(out)]))
    assert not left, left
    assert not temporary_files(tmp_path / out)

    rerun = shlex.split(line.split(": ", 1)[1])
    assert rerun[0] == "serbench"
    proc = serbench(*rerun[1:], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert_same_results(tmp_path / out, clean)


def test_ctrl_c_stops_the_worker_processes(tmp_path: Path) -> None:
    """Interrupted while worker processes generate the synth corpus into an empty cache: no
    worker, forkserver or serbench process is left, and no half-made corpus."""
    from serbench.workers import cpu_count

    if cpu_count() < 2:
        pytest.skip("one CPU: serbench runs no worker processes")
    workers = lambda pid: sum("forkserver" in p for p in session(pid)) >= 2  # noqa: E731
    cache = tmp_path / "cache"
    proc, stderr, left = interrupt(command(*QUICK, "--out", str(tmp_path / "run")), workers,
                                   env={"SERBENCH_CACHE": str(cache)})
    assert proc.returncode == 130, stderr
    assert the_line(stderr).startswith("interrupted; rerun with the same --out to resume: ")
    assert not left, left
    assert not [p for p in (cache / "synth").iterdir() if p.name.startswith(".")]  # no half corpus


# -- the leaderboard -----------------------------------------------------------------------

ENTRY = REPO / "leaderboards" / "synth" / "update" / "none.json"

#: The committed entry stands for the runs' (their checks are not what is tested here), and
#: the write of anything under ``SERBENCH_TEST_FAULT_DIR`` stops halfway: Ctrl-C (a real
#: SIGINT) or a full disk, as ``SERBENCH_TEST_FAULT`` says.
HALFWAY = """
import errno, json, os, pathlib, signal, sys, time
import serbench.leaderboard.submit as submit
_entry = json.loads(pathlib.Path(os.environ["SERBENCH_TEST_ENTRY"]).read_text())
submit.load_run = lambda path: path
submit.build_entry = lambda runs, name, allow_reduced, home: dict(_entry, name=name)
_write_text = pathlib.Path.write_text
def _halfway(self, data, *args, **kwargs):
    if str(self).startswith(os.environ["SERBENCH_TEST_FAULT_DIR"]) and \\
            self.name.startswith(".leaderboard.html" if "render" in sys.argv else "."):
        _write_text(self, data[:len(data) // 2], *args, **kwargs)
        if os.environ["SERBENCH_TEST_FAULT"] == "sigint":
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(10)  # the signal's handler raises here
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return _write_text(self, data, *args, **kwargs)
pathlib.Path.write_text = _halfway
"""


@pytest.mark.parametrize("fault, status, start", [
    ("sigint", 130, "interrupted; rerun: serbench leaderboard submit "),
    ("enospc", 1, "error: {entry}: No space left on device; free space on its disk, then "
                  "rerun: serbench leaderboard submit "),
])
def test_submit_cut_short_at_its_write_leaves_no_half_written_entry(
        tmp_path: Path, fault: str, status: int, start: str) -> None:
    board = tmp_path / "board"
    entry = board / "synth" / "update" / "mine.json"
    env = {"SERBENCH_TEST_ENTRY": str(ENTRY), "SERBENCH_TEST_FAULT_DIR": str(board),
           "SERBENCH_TEST_FAULT": fault}
    args = ["leaderboard", "submit", "runs/a", "runs/b", "--name", "mine", "--dir", str(board)]
    proc = serbench(*args, prelude=HALFWAY, env=env)
    assert proc.returncode == status, proc.stderr
    assert the_line(proc.stderr).startswith(start.format(entry=entry)), proc.stderr
    assert not entry.exists() and not temporary_files(board)

    entry.write_text(old := ENTRY.read_text())  # --replace: the old entry stays whole
    proc = serbench(*args, "--replace", prelude=HALFWAY, env=env)
    assert proc.returncode == status, proc.stderr
    assert entry.read_text() == old and not temporary_files(board)


def test_render_interrupted_leaves_no_half_written_page(tmp_path: Path) -> None:
    board, page = tmp_path / "board", tmp_path / "page"
    (board / "synth" / "update").mkdir(parents=True)
    shutil.copy(ENTRY, board / "synth" / "update")
    page.mkdir()
    (page / "leaderboard.html").write_text("the page before")
    proc = serbench("leaderboard", "render", "--dir", str(board), "--out", str(page),
                    prelude=HALFWAY, env={"SERBENCH_TEST_ENTRY": str(ENTRY),
                                          "SERBENCH_TEST_FAULT_DIR": str(page),
                                          "SERBENCH_TEST_FAULT": "sigint"})
    assert proc.returncode == 130, proc.stderr
    assert the_line(proc.stderr).startswith("interrupted; rerun: serbench leaderboard render")
    assert (page / "leaderboard.html").read_text() == "the page before"
    assert (page / "synth-update.png").read_bytes().startswith(b"\x89PNG")  # written whole
    assert not temporary_files(page)


# -- the terminal --------------------------------------------------------------------------

def test_log_lines_carry_no_source_path_and_one_overall_line_sits_above_the_bars() -> None:
    import io

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from serbench.progress import RichReporter

    piped = Console(file=io.StringIO(), width=80)  # not a terminal: 80 columns, no bars
    reporter = RichReporter(Progress(console=piped, disable=True))
    reporter.log("non-adaptive fold 1 done")
    reporter.log("adaptive attack model: linear (held-out shadow UAR linear 0.654) " * 2)
    text = piped.file.getvalue()
    assert "progress.py" not in text and "━" not in text
    assert all(len(line) <= 80 for line in text.splitlines())
    assert re.match(r"\[\d\d:\d\d:\d\d\] non-adaptive fold 1 done *\n", text)

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        console=Console(file=io.StringIO(), width=100), auto_refresh=False)
    reporter = RichReporter(progress)
    reporter.stage("attacker's training", mode="non-adaptive", folds=[1, 2, 3, 4, 5])
    reporter.stage("target's training", fold=2, folds=[1, 2, 3, 4, 5])
    with reporter.track("fold 2: target fedsgd", 200) as advance:
        advance(50)
        reporter.stage("attack", mode="adaptive", fold=4, folds=[2, 4])
        shown = Console(file=io.StringIO(), width=100, color_system=None)
        shown.print(progress.get_renderable())
        lines = shown.file.getvalue().splitlines()
    assert lines[0].startswith("adaptive · fold 4 (2 of 2) · attack") and "1/2" in lines[0]
    assert lines[1].startswith("fold 2: target fedsgd") and "50/200" in lines[1]
    assert len(lines) == 2
