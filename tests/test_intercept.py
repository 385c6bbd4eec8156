"""The intercepted-layer gender attack end to end on the built-in corpus (SPEC §3.1, §8)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from serbench.analyses import write_analyses
from serbench.attacks.intercept import InterceptAttack
from serbench.context import EvalContext
from serbench.defenses.none import NoDefense
from serbench.errors import SerbenchError
from serbench.fl.engine import single_thread
from serbench.scoring import uar
from serbench.models.targets import build, readable_layers
from serbench.plugins import Defense, Surface, Tags
from serbench.progress import NullReporter
from serbench.protocol import load_corpus, split_disjoint
from serbench.runner import EvalConfig, run_eval
from deployed import evaluate_fold
from test_cli import assert_one_line_error, serbench

# Half the default corpus's utterances and fewer epochs keep the suite fast; every scenario
# and attacker type still runs on every fold.
SMALL = {"utterances_per_emotion": 4}
FAST = {"epochs": 6, "target_epochs": 6}
SCENARIOS = ("worst", "s1", "s2", "s3", "s4")


def leakage(result) -> dict[str, float]:
    pooled = result.modes[0].pooled.query("task == 'gender'")
    return dict(zip(pooled["group"], pooled["uar"]))


def leakage_over_folds(dataset_options: dict, params: dict) -> dict[str, float]:
    """Pooled gender UAR per scenario/attacker over all folds, through fit and evaluate_fold."""
    target, shadow = split_disjoint(load_corpus("synth", None, dataset_options), 0)
    ctx = EvalContext(target, shadow, NoDefense(), NoDefense(), "logmel", 0)
    attack = InterceptAttack(**params)
    attack.fit(ctx)
    preds = pd.concat([evaluate_fold(attack, ctx, fold).predictions
                       for fold in sorted(set(target.table["fold"]))])
    return {group: uar(rows["y_true"].to_numpy(), rows["y_pred"].to_numpy())
            for group, rows in preds.query("task == 'gender'").groupby("group")}


@pytest.mark.slow
def test_null_corpus_leaks_nothing() -> None:
    """SPEC §8: where gender has no acoustic cue, every scenario's leakage is chance.

    The null corpus's speakers are twins: one voice, one F- and one M-labelled speaker, on
    the same side of every split. Every acoustic trait then has the same distribution under
    both labels, so a pipeline that infers gender from the audio alone scores chance, and any
    other route (labels, speaker ids, ordering) would show.
    """
    scores = leakage_over_folds({"utterances_per_emotion": 2, "null": True},
                                {"epochs": 3, "target_epochs": 3})
    assert set(scores) == {f"{s}/{a}" for s in SCENARIOS for a in ("generic", "aware")}
    for group, score in scores.items():
        assert abs(score - 0.5) <= 0.05, (group, score)


@pytest.mark.slow
def test_gender_cues_leak_in_the_worst_case() -> None:
    """The control for the null test: the same pipeline on the normal corpus leaks."""
    scores = leakage_over_folds(SMALL, {
        **FAST, "scenarios": "worst", "attackers": "generic"})
    assert scores["worst/generic"] > 0.7


def test_same_seed_gives_identical_metrics(tmp_path: Path) -> None:
    params = {"epochs": 1, "target_epochs": 1, "workers": 2}
    cfg = EvalConfig(attack="intercept", dataset_options=SMALL, folds=[1], seed=3,
                     attack_params=params)
    first = run_eval(cfg, tmp_path / "a").modes[0].folds[1].metrics
    serial = EvalConfig(**{**cfg.__dict__, "attack_params": {**params, "workers": 1}})
    assert run_eval(serial, tmp_path / "b").modes[0].folds[1].metrics == first
    metrics = [(tmp_path / run / "metrics.csv").read_text() for run in ("a", "b")]
    assert metrics[0] == metrics[1]
    other = run_eval(EvalConfig(**{**cfg.__dict__, "seed": 4}), tmp_path / "c")
    assert other.modes[0].folds[1].metrics != first


class Messages(NullReporter):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)


@pytest.mark.slow
def test_analyses_write_tables_and_plots(tmp_path: Path) -> None:
    params = {"epochs": 1, "target_epochs": 1, "scenarios": "worst", "attackers": "generic",
              "analysis_scenarios": "worst", "analyses": "layers,emotions,features,improvised"}
    cfg = EvalConfig(attack="intercept", dataset_options=SMALL, folds=[2], attack_params=params)
    messages = Messages()
    run_eval(cfg, tmp_path / "run", messages)
    out = tmp_path / "run" / "analyses" / "non-adaptive"
    for name in ("layers", "emotions", "features"):
        assert (out / f"{name}.png").stat().st_size > 1000
    layers = pd.read_csv(out / "layers.csv").query("task == 'gender'")
    assert list(layers["layer"]) == list(readable_layers("vgg"))
    emotions = pd.read_csv(out / "emotions.csv").query("task == 'gender'")
    assert set(emotions["emotion"]) == {"neutral", "happy", "sad", "angry"}
    features = pd.read_csv(out / "features.csv")
    assert set(features["model"]) == {"vgg on logmel (pool1)", "lstm on logmel (lstm1)",
                                      "vgg on is09-lld (pool1)", "lstm on is09-lld (lstm1)"}
    assert not (out / "improvised.csv").exists()
    assert any("'improvised' skipped" in line and "no 'improvised' column" in line
               for line in messages.lines)


def small_context(tmp_path: Path, defense: Defense, shadow_defense: Defense,
                  table_extra: dict | None = None) -> EvalContext:
    data = load_corpus("synth", None, SMALL)
    data.table = data.table.assign(**(table_extra or {}))
    data.features("logmel")
    target, shadow = split_disjoint(data, 0)
    return EvalContext(target, shadow, defense, shadow_defense, "logmel", 0)


def test_improvised_analysis_splits_iemocap_style_tables(tmp_path: Path) -> None:
    ctx = small_context(tmp_path, NoDefense(), NoDefense(), {
        "improvised": lambda t: t["utt_id"].str.endswith(("0", "2"))})
    attack = InterceptAttack(epochs=1, target_epochs=1, scenarios="worst",
                             attackers="generic", analyses="improvised")
    attack.fit(ctx)
    result = evaluate_fold(attack, ctx, 1)
    # The attack returns the rows; the results stage writes the tables and plots.
    write_analyses(tmp_path, 1, result.analyses, attack.analysis_views(), ctx.seed)
    table = pd.read_csv(tmp_path / "improvised.csv")
    assert set(table.query("task == 'gender'")["utterances"]) == {"improvised", "scripted"}


class Record:
    """What a spy defense saw, shared by its copies (every deployment works on its own copy of
    the defense, so the record must survive deep copies)."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []
        self.trained = 0

    def __deepcopy__(self, memo: dict) -> Record:
        return self


class Scramble(Defense):
    """Replaces the transmitted representation by noise, and records who transmitted what
    (``trained``: the batches T's noise-aware training passed through it)."""

    name = "scramble"
    summary = "test double"
    tags = Tags(surfaces={Surface.REPRESENTATION}, randomized=True, noise_aware=True)

    def __post_init__(self) -> None:
        self.record = Record()
        super().__post_init__()

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return self.record.shapes

    @property
    def trained(self) -> int:
        return self.record.trained

    def transform_representation(self, h: torch.Tensor, *,
                                 generator: torch.Generator) -> torch.Tensor:
        if h.requires_grad:
            self.record.trained += len(h)
        else:
            self.record.shapes.append(tuple(h.shape))
        return torch.randn(h.shape, generator=generator)


def test_the_defense_sees_every_transmission(tmp_path: Path) -> None:
    """Target side through ctx.defense, the attacker's training side through
    ctx.shadow_defense; noise instead of h_T leaves nothing to learn. T itself trains through
    the deployed defense (noise-aware training): every epoch, every training utterance."""
    target_side, attacker_side = Scramble(), Scramble()
    ctx = small_context(tmp_path, target_side, attacker_side)
    # The count is the gender attack's transmissions; speaker@layer's (every target and shadow
    # utterance, through the same two defenses: attacks/layer_link.py) are left out here.
    attack = InterceptAttack(epochs=2, target_epochs=2, scenarios="worst,s1",
                             attackers="generic", linkability=False)
    attack.fit(ctx)
    result = evaluate_fold(attack, ctx, 1)
    n_test = int((ctx.target.table["fold"] == 1).sum())
    assert target_side.shapes == [(n_test, 4, 32, 25)]  # the fold's speakers at pool1
    assert target_side.trained == 2 * (len(ctx.target.table) - n_test)
    assert attacker_side.trained == 0
    assert sorted(s[0] for s in attacker_side.shapes) == sorted(
        [len(ctx.target.table) - n_test, len(ctx.shadow.table)])
    assert result.metrics["emotion.uar"] < 0.45  # T's server side gets noise too


@pytest.mark.parametrize("size", ["cpu", "full"])
def test_layers_are_addressable_and_the_tail_continues_the_network(size: str) -> None:
    x = torch.randn(2, 1, 64, 48)
    for family in ("vgg", "resnet", "densenet", "lstm"):
        net = build(family, (1, 64, 48), 4, size, time_pool=4).eval()
        with torch.no_grad(), single_thread():  # two threads crawl on a busy 2-core machine
            for layer in readable_layers(family, size):
                h = net.upto(x, layer)
                assert h.dim() == 4
                assert torch.allclose(net.after(layer)(h), net(x), atol=1e-5)


def test_bad_layer_lists_the_valid_ones() -> None:
    proc = serbench("eval", "--attack", "intercept", "--layer", "pool9")
    assert_one_line_error(proc, "'pool9'", "valid layers: input, block1, pool1, block2")


def test_shadow_scenarios_without_shadow_data_say_which_option_to_give(tmp_path: Path) -> None:
    proc = serbench("eval", "--attack", "intercept", "--shadow", "none", "--dataset-option",
                    "utterances_per_emotion=4", "--out", str(tmp_path / "run"))
    assert_one_line_error(proc, "s1, s3, s4", "--shadow disjoint")


@pytest.mark.parametrize("params, fragment", [
    ({"other": "vgg"}, "other than the target's"),
    ({"scenarios": "s9"}, "valid: s1, s2, s3, s4, worst"),
    ({"analyses": "colours"}, "valid: emotions, features, improvised, layers"),
])
def test_bad_parameters(params: dict, fragment: str) -> None:
    with pytest.raises(SerbenchError, match=fragment):
        InterceptAttack.from_params(params)


def test_pad_and_crop_keep_the_centre() -> None:
    from serbench.features.store import pad_sequences

    long, short = np.arange(10.0)[:, None], np.ones((3, 1))
    x, mask = pad_sequences([long, short], 4)
    assert x[0, 0].tolist() == [3, 4, 5, 6] and x[1, 0].tolist() == [1, 1, 1, 0]
    assert mask[1, 0].tolist() == [1, 1, 1, 0]


def test_worst_validates_on_held_out_training_speakers_and_picks_the_best(tmp_path: Path) -> None:
    """Issue 15: worst (and s2) set their epochs on a third of each gender's speakers of T's
    training side, never a test speaker; worst then takes the attacker of its type that
    scores best on those speakers, so it bounds the scenarios it ran with."""
    from serbench.attacks.intercept_fold import FoldRun

    ctx = small_context(tmp_path, NoDefense(), NoDefense())
    attack = InterceptAttack(epochs=2, target_epochs=1, attackers="generic", workers=1)
    attack.fit(ctx)
    run = FoldRun(attack, ctx, 1)
    held = run.held_out_rows()
    side = run.table("target")
    val_speakers = set(side.loc[held, "speaker"])
    assert not val_speakers & set(run.table("test")["speaker"])
    for gender, group in side.drop_duplicates("speaker").groupby("gender"):
        assert len(val_speakers & set(group["speaker"])) == max(1, round(len(group) / 3))
    preds = evaluate_fold(attack, ctx, 1).predictions.query("task == 'gender'")
    by_group = {g: rows for g, rows in preds.groupby("group")}
    picked = by_group["worst/generic"]["model"].iloc[0]
    assert picked in SCENARIOS
    assert (by_group["worst/generic"]["y_pred"].to_numpy()
            == by_group[f"{picked}/generic"]["y_pred"].to_numpy()).all()
    assert set(by_group["s1/generic"]["bound"]) == {"worst/generic"}
    assert set(by_group["worst/generic"]["bound"]) == {""}


def test_too_few_speakers_fall_back_to_fixed_epochs(tmp_path: Path) -> None:
    from serbench.attacks.intercept_fold import FoldRun

    ctx = small_context(tmp_path, NoDefense(), NoDefense())
    assert FoldRun(InterceptAttack(validation=0), ctx, 1).held_out_rows() is None
    one_each = ctx.target.table.drop_duplicates("gender")["speaker"]
    ctx.target.table = ctx.target.table[ctx.target.table["speaker"].isin(one_each)
                                        | (ctx.target.table["fold"] == 1)]
    assert FoldRun(InterceptAttack(), ctx, 1).held_out_rows() is None


def _bounded(fold: int, worst: list[int], other: list[int]) -> pd.DataFrame:
    y = [0] * 30 + [1] * 30
    speakers = [f"{fold}f"] * 30 + [f"{fold}m"] * 30
    rows = [pd.DataFrame({"task": "gender", "group": group, "bound": bound, "fold": fold,
                          "speaker": speakers, "y_true": y, "y_pred": pred})
            for group, bound, pred in (("worst/generic", "", worst),
                                       ("s1/generic", "worst/generic", other))]
    return pd.concat(rows, ignore_index=True)


def test_a_scenario_beating_worst_beyond_its_ci_is_flagged() -> None:
    from serbench.scoring import bound_violations, paired_difference

    right = [0] * 30 + [1] * 30
    half = [0] * 15 + [1] * 15 + [1] * 15 + [0] * 15  # UAR 0.5
    near = right[:]
    near[0] = 1  # one miss: UAR 0.983
    preds = pd.concat([_bounded(1, right, near), _bounded(2, half, right)], ignore_index=True)
    flags = bound_violations(preds)
    assert [(f["fold"], f["group"], f["bound"]) for f in flags if f["fold"] != "pooled"] == [
        (2, "s1/generic", "worst/generic")]
    assert flags[0]["uar"] == 1.0 and flags[0]["bound_uar"] == 0.5
    same = paired_difference(np.array(right), np.array(near), np.array(near),
                             np.array(["a"] * 30 + ["b"] * 30))
    assert (same.diff, same.ci_low, same.ci_high) == (0.0, 0.0, 0.0)
    assert not bound_violations(_bounded(1, right, near))
    assert not bound_violations(preds.drop(columns="bound"))


def test_the_run_records_and_reports_the_flag(tmp_path: Path) -> None:
    import json

    from serbench.report import markdown
    from serbench.results import FoldResult
    from serbench.results import ModeResult, RunResult
    from serbench.scoring import Role, pooled

    right = [0] * 30 + [1] * 30
    half = [0] * 15 + [1] * 15 + [1] * 15 + [0] * 15
    preds = _bounded(3, half, right)
    mode = ModeResult("non-adaptive", {3: FoldResult(preds.drop(columns="fold"))}, {},
                      pooled(preds), {})
    result = RunResult(tmp_path, {"attack": "intercept", "defense": "none", "dataset": "x",
                                  "features": "logmel", "shadow": "disjoint", "seed": 0,
                                  "folds": [3]}, [mode],
                       {"gender@worst/generic": Role.LEAKAGE, "gender@s1/generic": Role.LEAKAGE})
    assert [v["fold"] for v in result.violations] == [3, "pooled"]
    assert "BOUND EXCEEDED (non-adaptive, fold 3): gender s1/generic UAR 1.000 > " \
           "worst/generic 0.500" in markdown(result)
    json.dumps(result.violations)  # summary.json takes it as is
