"""The defenses the field built against gender inference (issue 24): prune, grl and recup end
to end through the command line in both attack modes on small data, with their own attackers
scored, and the contract's capabilities they need: the sensitive attribute reaches only a
defense that declares it and only for its own training data, and public data never holds a
target speaker."""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from serbench.deploy.split import SplitRecipe, train_target
from serbench.plugins import Defense, Private, Surface, Tags
from serbench.protocol import load_corpus, split_disjoint
from serbench.registry import load_plugin

SMALL = ["--dataset-option", "utterances_per_emotion=2", "--folds", "1"]
FL_SMALL = ["--attack-param", "rounds=3", "--attack-param", "model=linear",
            "--attack-param", "averaging=1", "--attack-param", "shadow_probe_every=3",
            "--attack-param", "shadow_runs=1"]
INTERCEPT_SMALL = ["--attack-param", "scenarios=worst", "--attack-param", "attackers=generic",
                   "--attack-param", "epochs=2", "--attack-param", "target_epochs=2"]


def serbench(*args: str) -> None:
    """``serbench ARGS`` in this process (no interpreter start per run); fails on an error."""
    from serbench import cli

    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(sys.stderr):
        mp.setattr(sys, "argv", ["serbench", *args])
        try:
            cli.main()
        except SystemExit as exc:
            assert not exc.code, args


def pooled(run: Path) -> dict[str, set[str]]:
    """Each mode's measures (``task@group``) in the run's summary."""
    summary = json.loads((run / "summary.json").read_text())
    return {mode: {r["task"] + (f"@{r['group']}" if r["group"] else "") for r in m["pooled"]}
            for mode, m in summary["modes"].items()}


def test_prune_keeps_exactly_the_top_k_entries() -> None:
    prune = load_plugin("defense", "prune")(keep=0.25)
    update = {"w": torch.tensor([[4.0, -3.0], [1.0, 1.0]]), "b": torch.tensor([0.5, -2.0])}
    shared = prune.privatize_update(update, generator=torch.Generator())
    assert torch.equal(shared["w"], torch.tensor([[4.0, 0.0], [0.0, 0.0]]))  # ties keep one
    assert torch.equal(shared["b"], torch.tensor([0.0, -2.0]))


def test_prune_end_to_end(tmp_path: Path) -> None:
    serbench("eval", "--attack", "fedsgd", "--defense", "prune", *SMALL, *FL_SMALL,
             "--out", str(tmp_path / "run"))
    measures = pooled(tmp_path / "run")
    assert set(measures) == {"non-adaptive", "adaptive"}
    assert "gender@n=1" in measures["adaptive"]


def test_grl_end_to_end_with_its_own_adversary(tmp_path: Path) -> None:
    """Both modes; the adversary trained with T is scored in the non-adaptive mode only."""
    serbench("eval", "--attack", "intercept", "--defense", "grl", *SMALL, *INTERCEPT_SMALL,
             "--out", str(tmp_path / "run"))
    measures = pooled(tmp_path / "run")
    assert "gender@own/adversary" in measures["non-adaptive"]
    assert "gender@own/adversary" not in measures["adaptive"]
    assert "gender@worst/generic" in measures["adaptive"]


#: The made-up public speakers of `check-defense`'s client update (the runner checks first).
CHECK_SPEAKERS = {f"public{i}" for i in range(6)}


def test_recup_end_to_end_on_public_speakers_only(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Both modes with the zoo's own score; the public data every calibration received (the
    target's run and the adaptive attacker's simulated clients) are the shadow speakers the
    run recorded, none of them a target speaker."""
    recup = load_plugin("defense", "recup")
    given: list[set[str]] = []
    calibrate = recup.calibrate

    def recording(self, *, public, **kwargs):  # noqa: ANN001, ANN202
        given.append(set(public.speakers))
        return calibrate(self, public=public, **kwargs)

    monkeypatch.setattr(recup, "calibrate", recording)
    serbench("eval", "--attack", "fedavg", "--defense", "recup", *SMALL, *FL_SMALL,
             "--out", str(tmp_path / "run"))
    measures = pooled(tmp_path / "run")
    assert "gender@own/zoo" in measures["non-adaptive"]
    assert "gender@n=1" in measures["adaptive"] and "gender@own/zoo" not in measures["adaptive"]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    public = set(config["public_speakers"])
    assert public == set(config["shadow_speakers"]) and public
    assert not public & set(config["target_speakers"])
    runs = [speakers for speakers in given if not speakers <= CHECK_SPEAKERS]  # not the check's
    assert runs and all(speakers <= public for speakers in runs)


@dataclass
class Recording(Defense):
    """Records the attribute its training is given."""

    name: ClassVar[str] = "recording"
    summary: ClassVar[str] = "records the attribute"
    tags: ClassVar[Tags] = Tags(surfaces={Surface.REPRESENTATION}, trains=True,
                                reads_attribute=True)
    seen: ClassVar[list] = []

    def make_private(self, model, optimizer, criterion, loader, *, epochs, generator,  # noqa: ANN001
                     attribute, transmitted=None) -> Private:
        self.seen.append((attribute.clone(), transmitted))
        return Private(model, optimizer, criterion, loader)


def test_the_attribute_reaches_a_declaring_defense_for_training_speakers_only() -> None:
    """T's trainer gives the genders of T's own training rows (never a fold's test speaker's)
    and the module whose output is transmitted; a training defense that does not declare
    ``reads_attribute`` is given nothing (dpsgd's make_private would reject the keyword), and
    recup, which acts on FL updates only, trains T unchanged."""
    data = load_corpus("synth", None, {"utterances_per_emotion": 2}, seed=0)
    target, _ = split_disjoint(data, 0)
    rows = np.flatnonzero(target.table["fold"].to_numpy() != 1)
    recipe = SplitRecipe("vgg", "cpu", "logmel", 40, 1, 1e-3, "pool1")
    Recording.seen.clear()
    trained, _, _ = train_target(recipe, target, rows, Recording(), seed=0)
    (attribute, transmitted), = Recording.seen
    genders = (target.table["gender"].iloc[rows] == "M").to_numpy()
    assert attribute.tolist() == genders.astype(int).tolist()
    assert transmitted is trained.net.layers["pool1"]
    for name in ("dpsgd", "recup"):  # recup shares nothing in T's training: it is unchanged
        train_target(recipe, target, rows, load_plugin("defense", name)(), seed=0)
