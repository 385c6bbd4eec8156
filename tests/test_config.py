"""Run configurations as TOML (issue 12): `serbench eval --config`, command-line overrides,
one-line errors for bad keys, and the config.toml in every run directory that re-runs it."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from serbench.config import merge, read_config, run_config_text
from serbench.errors import SerbenchError
from serbench.runner import eval_config
from test_cli import assert_one_line_error, serbench

#: A small, fast configuration (a few rounds) on a tiny built-in corpus: ten speakers, of
#: whom the disjoint split leaves the target five (so not every fold: hence folds = "all").
RUN_TOML = """\
attack = "fedsgd"
dataset = "synth"
folds = "all"
seed = 3

[dataset_options]
speakers = 10
utterances_per_emotion = 2

[attack_params]
rounds = 5
epochs = 2
averaging = ["1", "all"]
"""


def write(tmp_path: Path, text: str, name: str = "run.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_values_arrive_as_the_command_line_gives_them(tmp_path: Path) -> None:
    options = read_config(write(tmp_path, """\
layer = "second"
analysis = "layers"
shadow_root = "/data/a"
""" + RUN_TOML + """
[defense_params]
epsilon = [5, 10.5]
adaptive = true
"""))
    cfg, out = eval_config(options)
    assert out is None and cfg.folds is None and cfg.seed == 3 and cfg.defense == "none"
    assert cfg.dataset_options == {"speakers": "10", "utterances_per_emotion": "2"}
    assert cfg.attack_params == {"rounds": "5", "epochs": "2", "averaging": "1,all",
                                 "layer": "second", "analyses": "layers"}
    assert cfg.defense_params == {"epsilon": "5,10.5", "adaptive": "true"}  # a list sweeps
    assert cfg.shadow_root == ["/data/a"]


def test_workers_is_a_key_of_its_own_that_no_number_depends_on(tmp_path: Path) -> None:
    """``workers`` arrives as an int from a file (like ``seed``), and is left out of the
    resolved configuration a resumed run must match (it is recorded in environment.json)."""
    from serbench.config import NOT_RESOLVED

    cfg, _ = eval_config(read_config(write(tmp_path, 'attack = "fedavg"\nworkers = 2\n')))
    assert cfg.workers == 2 and NOT_RESOLVED == ("workers",)
    assert "workers" not in run_config_text({"attack": "fedavg", "seed": 0})


def test_a_map_table_becomes_old_new_pairs(tmp_path: Path) -> None:
    options = read_config(write(tmp_path, 'attack = "fedavg"\n[dataset_options]\n'
                                          'map = { fear = "fearful", boredom = "neutral" }\n'
                                          'classes = ["neutral", "fearful"]\n'))
    assert options["dataset_options"] == {"map": "fear:fearful,boredom:neutral",
                                          "classes": "neutral,fearful"}


def test_the_command_line_overrides_the_file(tmp_path: Path) -> None:
    file = read_config(write(tmp_path, RUN_TOML))
    merged = merge(file, {"seed": 4, "attack_params": {"rounds": "7"}, "folds": "2"})
    cfg, _ = eval_config(merged)
    assert (cfg.seed, cfg.folds) == (4, [2])
    assert cfg.attack_params == {"rounds": "7", "epochs": "2", "averaging": "1,all"}


@pytest.mark.parametrize("text, fragment", [
    ('attack = "fedavg"\nrounds = 5\n', "unknown key 'rounds'"),
    ('attack = "fedavg"\nseed = "one"\n', "'seed' must be an integer"),
    ('attack = "fedavg"\nworkers = "2"\n', "'workers' must be an integer"),
    ('attack = "fedavg"\nworkers = -1\n', "--workers -1"),
    ('attack = "fedavg"\nattack_params = 5\n', "'attack_params' must be a table"),
    ('attack = 5\n', "'attack' must be a string"),
    ('attack = "fedavg\n', "not valid TOML"),
    ('defense = "none"\n', "no attack"),
    ('attack = "fedavg"\n[attack_params]\nx = { a = 1 }\n', "unsupported value"),
])
def test_bad_files_are_one_line_errors(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SerbenchError, match=fragment):
        eval_config(read_config(path))


def test_bad_keys_through_the_command_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'attack = "fedavg"\ndataset_option = { null = true }\n')
    assert_one_line_error(serbench("eval", "--config", str(path)), "run.toml",
                          "unknown key 'dataset_option'", "dataset_options")
    bad_param = write(tmp_path, 'attack = "fedavg"\n[attack_params]\nroundz = 5\n', "p.toml")
    assert_one_line_error(serbench("eval", "--config", str(bad_param)), "'roundz'")
    assert_one_line_error(serbench("eval", "--config", str(tmp_path / "nope.toml")), "nope.toml")


def test_run_config_round_trips_resolved_values() -> None:
    resolved = {"attack": "intercept", "defense": "noise", "dataset": "ravdess",
                "data_root": "rel/ravdess", "dataset_options": {"classes": "angry,sad"},
                "shadow": "disjoint", "shadow_root": [], "features": "logmel", "folds": [1, 2],
                "seed": 0, "engine": "inprocess",
                "attack_params": {"lr": 0.001, "workers": 0, "analyses": ""},
                "defense_params": {"sigma": None, "snr_db": 10.0},
                "target_speakers": ["01"], "class_counts": {}}
    text = run_config_text(resolved)
    assert "target_speakers" not in text and "class_counts" not in text
    assert tomllib.loads(text)["data_root"] == str(Path("rel/ravdess").absolute())
    cfg, _ = eval_config(read_config_text(text))
    assert cfg.folds == [1, 2] and cfg.dataset_options == {"classes": "angry,sad"}
    assert cfg.attack_params == {"lr": "0.001", "workers": "0", "analyses": ""}
    assert cfg.defense_params == {"sigma": "none", "snr_db": "10.0"}  # coerced back as given


def read_config_text(text: str) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return read_config(write(Path(tmp), text))


def test_config_toml_reruns_the_run_byte_for_byte(tmp_path: Path) -> None:
    """A run from a file with a command-line override; its config.toml re-runs it into a new
    directory with the same metrics.csv, and config.json (paths absolute) the same."""
    first = tmp_path / "first"
    proc = serbench("eval", "--config", str(write(tmp_path, RUN_TOML)), "--seed", "1",
                    "--out", str(first))
    assert proc.returncode == 0, proc.stderr
    config = json.loads((first / "config.json").read_text())
    assert config["seed"] == 1 and config["attack_params"]["rounds"] == 5
    saved = tomllib.loads((first / "config.toml").read_text())
    assert saved["seed"] == 1 and saved["attack_params"]["averaging"] == "1,all"
    again = tmp_path / "again"
    proc = serbench("eval", "--config", str(first / "config.toml"), "--out", str(again))
    assert proc.returncode == 0, proc.stderr
    assert (again / "metrics.csv").read_bytes() == (first / "metrics.csv").read_bytes()
    assert (again / "predictions.csv").read_bytes() == (first / "predictions.csv").read_bytes()
    assert json.loads((again / "config.json").read_text()) == config
