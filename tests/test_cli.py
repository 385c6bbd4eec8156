"""The command line as a user meets it: one-line errors, listings, a small end-to-end run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf


def serbench(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "from serbench.cli import main; main()", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=300)


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def write_manifest(root: Path, rows: list[str], header: str = "path,speaker,gender,emotion") -> Path:
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join([header, *rows]) + "\n")
    return manifest


def tone(path: Path) -> str:
    sf.write(path, 0.1 * np.sin(np.linspace(0, 600, 8000)).astype(np.float32), 16000)
    return path.name


@pytest.mark.parametrize("option, value, fragment", [
    ("--attack", "nope", "valid: asv, autoattack, eot-pgd, fedavg, fedsgd, fgsm, intercept, pgd"),
    ("--defense", "nope",
     "valid: adv, dpsgd, grl, mcadams, noise, none, prune, recup, udp, udp-ref"),
    ("--dataset", "nope", "valid: crema-d, iemocap, manifest, msp-improv, ravdess, synth"),
    ("--features", "nope", "valid: egemaps, emobase"),
])
def test_unknown_names_list_the_valid_ones(option: str, value: str, fragment: str) -> None:
    args = ["eval", "--attack", "fedavg", option, value] if option != "--attack" else \
        ["eval", option, value]
    assert_one_line_error(serbench(*args), repr(value), fragment)


def test_missing_data_root(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    proc = serbench("eval", "--attack", "fedavg", "--dataset", "ravdess", "--data-root", str(missing))
    assert_one_line_error(proc, str(missing), "does not exist")


def test_data_root_without_audio(tmp_path: Path) -> None:
    proc = serbench("eval", "--attack", "fedsgd", "--dataset", "ravdess", "--data-root", str(tmp_path))
    assert_one_line_error(proc, str(tmp_path))


def test_manifest_errors(tmp_path: Path) -> None:
    name = tone(tmp_path / "a.wav")
    missing_col = write_manifest(tmp_path, [f"{name},s1,F"], header="path,speaker,gender")
    assert_one_line_error(serbench("eval", "--attack", "fedavg", "--dataset", "manifest",
                                   "--data-root", str(missing_col)), "manifest.csv", "emotion")
    bad_gender = write_manifest(tmp_path, [f"{name},s1,X,angry"])
    assert_one_line_error(serbench("eval", "--attack", "fedavg", "--dataset", "manifest",
                                   "--data-root", str(bad_gender)), "manifest.csv", "'X'")


@pytest.mark.parametrize("content", [b"", b"RIFF not really a wave file" * 10])
def test_corrupt_or_empty_audio(tmp_path: Path, content: bytes) -> None:
    rows = []
    for spk in range(8):
        for i, emotion in enumerate(["neutral", "happy", "sad", "angry"]):
            rows.append(f"{tone(tmp_path / f'{spk}_{i}.wav')},s{spk},{'FM'[spk % 2]},{emotion}")
    (tmp_path / "3_2.wav").write_bytes(content)
    manifest = write_manifest(tmp_path, rows)
    proc = serbench("eval", "--attack", "fedavg", "--dataset", "manifest", "--data-root",
                    str(manifest), "--out", str(tmp_path / "run"))
    assert_one_line_error(proc, "3_2.wav")


def test_bad_values_are_one_line_errors() -> None:
    assert_one_line_error(serbench("eval", "--attack", "fedavg", "--layer", "middle"),
                          "'middle'", "first, second, last")
    assert_one_line_error(serbench("eval", "--attack", "fedavg", "--attack-param", "colour=red"),
                          "'colour'", "valid parameters")
    assert_one_line_error(serbench("eval", "--attack", "fedavg", "--param", "epsilon=1"),
                          "'epsilon'")


def test_list_shows_plugins_and_datasets() -> None:
    proc = serbench("list")
    assert proc.returncode == 0
    for name in ("fedsgd", "fedavg", "none", "synth", "ravdess", "emobase"):
        assert name in proc.stdout


def test_eval_help_shows_defaults_and_config_tables() -> None:
    """Bracketed text in help is shown, not taken for rich markup and dropped."""
    proc = serbench("eval", "--help")
    text = " ".join(proc.stdout.replace("│", " ").split())
    assert proc.returncode == 0
    assert "[default: synth]" in text and "[default: none]" in text
    assert "[dataset_options], [attack_params] and [defense_params] tables" in text


def test_eval_end_to_end_writes_a_report_and_results(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = serbench("eval", "--attack", "fedsgd", "--folds", "1", "--attack-param", "rounds=10",
                    "--attack-param", "epochs=2", "--attack-param", "shadow_runs=1",
                    "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "gender n=1" in proc.stdout and "emotion" in proc.stdout and "95% CI" in proc.stdout
    for name in ("config.json", "environment.json", "metrics.csv", "predictions.csv",
                 "summary.json"):
        assert (out / name).is_file()


def test_list_a_plugin_shows_its_parameters_defaults_and_meaning() -> None:
    proc = serbench("list", "fedavg")
    text = " ".join(proc.stdout.replace("│", " ").split())
    assert proc.returncode == 0
    assert "shadow_probe_every 8" in text and "weight_space_gib 1.5" in text
    assert "held-out shadow speakers" in text  # the parameter's own documentation
    assert_one_line_error(serbench("list", "fedavgg"), "fedavgg", "fedavg")


def test_one_and_two_workers_give_the_same_bytes(tmp_path: Path) -> None:
    """``--workers`` changes how a run computes, never what: the FL attacker's shadow runs and
    the target's folds in two worker processes give the predictions and metrics of one, in
    both attack modes (issue 23)."""
    args = ["eval", "--attack", "fedavg", "--defense", "noise", "--folds", "2,3",
            *(f"--attack-param={p}" for p in ("rounds=6", "averaging=1,all", "shadow_runs=2",
                                              "shadow_probe_every=3"))]
    for workers in ("1", "2"):
        proc = serbench(*args, "--workers", workers, "--out", str(tmp_path / workers))
        assert proc.returncode == 0, proc.stderr
    for name in ("predictions.csv", "metrics.csv", "config.json"):
        assert (tmp_path / "1" / name).read_bytes() == (tmp_path / "2" / name).read_bytes(), name
    assert "adaptive" in (tmp_path / "1" / "metrics.csv").read_text()
    assert json.loads((tmp_path / "2" / "environment.json").read_text())["workers"] == 2
