"""``serbench eval``: one attack against one defense over the standard folds, in both attack
modes where they differ (SPEC §5), written to a run directory."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from collections.abc import Iterator, Mapping
from typing import Any

import pandas as pd

from serbench.config import NOT_RESOLVED, EvalConfig, eval_config, write_run_config
from serbench.context import Attack, EvalContext
from serbench.corpora.data import CorpusData
from serbench.deploy import Recipe, deploy
from serbench.errors import SerbenchError
from serbench.features.extractors import feature_spec
from serbench.features.release import Release
from serbench.fl import get_engine
from serbench.plugins import Defense, Surface
from serbench.progress import NullReporter, Reporter
from serbench.protocol import DISJOINT, NO_SHADOW, class_counts, gender_permutation, load_corpus, \
    load_shadow, select_folds, split_disjoint
from serbench.registry import load_plugin
from serbench.report import write_markdown
from serbench.results import FoldResult, ModeResult, RunDir, RunResult, environment, \
    write_content_hash, write_csv, write_json
from serbench.scoring import measure_name, pooled, spread
from serbench.seeds import release_seed
from serbench.testing import contract_problems
from serbench.threads import fixed_threads
from serbench.workers import cpu_count, in_process, process_map


def attack_modes(attack: Attack, defense: Defense) -> list[str]:
    """SPEC §5's two modes where they can differ: the defense transforms the surface this
    attack reads, or it trains and the attacker's own training simulates that training
    (:attr:`Attack.shadow_trains_with_defense`: the FL attacks' shadow clients). Otherwise the
    adaptive attacker simulates nothing the non-adaptive one lacks, so the run attacks once
    (as for ``none``): e.g. ``udp`` against intercept, ``adv`` against intercept or ``dpsgd``
    against the input attacks, whose attackers read the deployed T itself. A defense of the
    audio surface changes what every other surface carries, so it is attacked in both."""
    if attack.surface in defense.surfaces or Surface.AUDIO in defense.surfaces or (
            defense.tags.trains and attack.shadow_trains_with_defense):
        return ["non-adaptive", "adaptive"]
    return ["non-adaptive"]


def build_plugins(cfg: EvalConfig) -> tuple[Attack, Defense]:
    """Resolve and validate both plugins before any heavy work starts."""
    get_engine(cfg.engine)  # an unknown engine fails before any work
    attack = load_plugin("attack", cfg.attack).from_params(cfg.attack_params)
    defense = load_plugin("defense", cfg.defense).from_params(cfg.defense_params)
    if problems := contract_problems(defense):  # it would escape the modes its tags choose
        raise SerbenchError(f"defense {defense.name!r} does more than it declares: "
                            f"{'; '.join(problems)} (see `serbench check-defense`)")
    features = cfg.features or attack.default_features
    if feature_spec(features).kind not in attack.feature_kinds:
        raise SerbenchError(f"attack {attack.name!r} needs {' or '.join(attack.feature_kinds)} "
                            f"features; {features!r} gives {feature_spec(features).kind}")
    return attack, defense


def attacker_shadow(shadow: CorpusData | None, simulated: Defense,
                    seed: int) -> CorpusData | None:
    """The attacker's shadow data as it runs ``simulated`` (the adaptive mode's public defense)
    on it: an AUDIO-surface defense transforms the shadow audio, with the attacker's own draws."""
    if shadow is None or Surface.AUDIO not in simulated.surfaces:
        return shadow
    return shadow.released(Release(simulated, release_seed(seed, "attacker")))


def default_out(cfg: EvalConfig) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{cfg.attack}-{cfg.defense}-{cfg.dataset}".replace("/", "_")


def run_eval(cfg: EvalConfig, out: Path | None = None,
             reporter: Reporter | None = None) -> RunResult:
    """Evaluate ``cfg`` into the run directory ``out`` (resumed if it holds this run), on a
    fixed number of threads so the numbers do not depend on the machine."""
    with fixed_threads():
        return _run_eval(cfg, out, reporter or NullReporter())


def _run_eval(cfg: EvalConfig, out: Path | None, reporter: Reporter) -> RunResult:
    attack, defense = build_plugins(cfg)
    features = cfg.features or attack.default_features
    target = load_corpus(cfg.dataset, cfg.data_root, cfg.dataset_options, reporter, cfg.seed)
    folds = select_folds(target.table, cfg.folds)
    # Extract everything up front: a corrupt file fails the run before any training.
    target.features(features)
    shadow = None
    if cfg.shadow == DISJOINT:
        target, shadow = split_disjoint(target, cfg.seed)
    elif cfg.shadow != NO_SHADOW:
        shadow = load_shadow(cfg.shadow.split(","), cfg.shadow_root, cfg.dataset, reporter)
        shadow.features(features)
    if Surface.AUDIO in defense.surfaces:  # every stage reads the audio the device released
        target = target.released(Release(defense, release_seed(cfg.seed, "device")))
        target.features(features)
    folds = [f for f in folds if f in set(target.table["fold"])]  # folds left to the target
    resolved = {k: v for k, v in asdict(cfg).items() if k not in NOT_RESOLVED} | {
        "features": features, "folds": folds,
        "attack_params": attack.params(), "defense_params": defense.params(),
        "target_speakers": sorted(target.table["speaker"].unique()),
        "shadow_speakers": sorted(shadow.table["speaker"].unique()) if shadow else [],
        "class_counts": {"target": class_counts(target.table),
                         "shadow": class_counts(shadow.table) if shadow else {}},
    }
    if defense.tags.public_data:  # SPEC §4a: which public data the defense was given
        resolved["public_speakers"] = resolved["shadow_speakers"]
    if (permuted := gender_permutation(target.table, *([shadow.table] if shadow else []))):
        resolved["gender_permutation"] = permuted
    run_dir = RunDir(out or default_out(cfg), resolved)
    write_run_config(run_dir.path / "config.toml", resolved)  # `eval --config` re-runs it
    env = environment() | {"workers": cfg.workers or cpu_count()}
    modes = attack_modes(attack, defense)
    none = load_plugin("defense", "none")()
    # Defenses are public (Kerckhoffs): the adaptive attacker simulates a clone of the deployed
    # defense (same parameters, its own state), as scikit-learn's clone would give it.
    simulated = {mode: dataclasses.replace(defense) if mode == "adaptive" else none
                 for mode in modes}
    contexts = {mode: EvalContext(target, attacker_shadow(shadow, simulated[mode], cfg.seed),
                                  defense, simulated[mode], features, cfg.seed, mode, reporter,
                                  cfg.engine, cfg.workers)
                for mode in modes}
    done = {mode: {f: run_dir.load_fold(mode, f) for f in folds} for mode in modes}
    for mode, ctx in contexts.items():
        if any(r is None for r in done[mode].values()):
            reporter.stage("attacker's training", mode=mode, folds=folds)
            attack.fit(ctx)
    todo = {fold: left for fold in folds if (left := [m for m in modes if done[m][fold] is None])}
    job = FoldJob(attack, contexts, attack.recipe(contexts[modes[0]]), folds)
    for fold, results in zip(todo, job.map(todo)):
        for mode, fold_result in results.items():
            done[mode][fold] = fold_result
            if (rows := fold_result.analyses) is not None:  # before the fold counts done
                from serbench.analyses import write_analyses  # matplotlib: only when needed

                write_analyses(run_dir.path / "analyses" / mode, fold, rows,
                               attack.analysis_views(), cfg.seed)
            run_dir.save_fold(mode, fold, fold_result)
            reporter.log(f"{mode} fold {fold} done")
    result = _result(run_dir.path, resolved, attack, done)
    _write_outputs(result, env)
    return result


@dataclass
class FoldJob:
    """One fold's deployment attacked in every mode still to do: the deployment stage builds
    the target with the deployed defense once, and every attack mode attacks that same
    deployment. Picklable where the attack allows it (:attr:`Attack.parallel_folds`), so
    worker processes attack folds at once, each on the run's thread policy."""

    attack: Attack
    contexts: dict[str, EvalContext]
    recipe: Recipe
    folds: list[int]  #: every fold of the run (for progress)

    def __call__(self, item: tuple[int, list[str]]) -> dict[str, FoldResult]:
        fold, modes = item
        ctx = self.contexts[modes[0]]
        ctx.reporter.stage("target's training", fold=fold, folds=self.folds)
        with fixed_threads():
            deployed = deploy(self.recipe, ctx.target, fold, ctx.defense, seed=ctx.seed,
                              engine=ctx.engine, reporter=ctx.reporter, public=ctx.shadow)
            out = {}
            for mode in modes:
                ctx.reporter.stage("attack", mode=mode, fold=fold, folds=self.folds)
                out[mode] = self.attack.evaluate_fold(self.contexts[mode], fold, deployed)
        return out

    def map(self, todo: dict[int, list[str]]) -> Iterator[dict[str, FoldResult]]:
        """Each fold's results, in order: in worker processes (quiet, ``--workers``) where the
        attack allows and there are several, else here, with progress."""
        items = list(todo.items())
        workers = next(iter(self.contexts.values())).pool_workers(self.attack)
        if not self.attack.parallel_folds:
            return map(self, items)
        job = self if in_process(items, workers) else replace(
            self, contexts={mode: ctx.quiet() for mode, ctx in self.contexts.items()})
        return process_map(job, items, workers=workers)


def _result(path: Path, config: dict[str, Any], attack: Attack,
            done: dict[str, dict[int, FoldResult | None]]) -> RunResult:
    """The run's results, scored from the folds finished so far in each mode."""
    results = [_mode_result(mode, finished, config["seed"]) for mode, folds in done.items()
               if (finished := {f: r for f, r in folds.items() if r is not None})]
    roles = {measure_name(task, group): attack.role(task, group)
             for m in results for task, group in m.pooled[["task", "group"]].itertuples(index=False)}
    return RunResult(path, config, results, roles)


def load_result(path: Path) -> RunResult:
    """A finished or partial run, scored again from its fold files (``serbench report``):
    scoring is deterministic, so this gives the tables the run printed."""
    run_dir = RunDir.open(path)
    config = run_dir.config
    attack = load_plugin("attack", config["attack"]).from_params(config["attack_params"])
    modes = sorted({p.name for p in (path / "folds").glob("*") if p.is_dir()},
                   key=lambda m: (m != "non-adaptive", m))
    done = {mode: {f: run_dir.load_fold(mode, f) for f in config["folds"]} for mode in modes}
    result = _result(path, config, attack, done)
    if not result.modes:
        raise SerbenchError(f"{path}: no fold has finished yet")
    return result


def _mode_result(mode: str, folds: dict[int, FoldResult], seed: int) -> ModeResult:
    preds = pd.concat([r.predictions.assign(fold=f) for f, r in folds.items()], ignore_index=True)
    extras = spread([r.extras for r in folds.values()]) if any(
        r.extras for r in folds.values()) else {}
    return ModeResult(mode, folds, spread([r.metrics for r in folds.values()]),
                      pooled(preds, seed), {k: v["mean"] for k, v in extras.items()})


def _write_outputs(result: RunResult, env: dict[str, Any]) -> None:
    path, results = result.path, result.modes
    metrics = pd.DataFrame([{"mode": m.mode, "fold": f, **r.metrics}
                            for m in results for f, r in m.folds.items()])
    preds = pd.concat([r.predictions.assign(mode=m.mode, fold=f)
                       for m in results for f, r in m.folds.items()], ignore_index=True)
    write_csv(path / "metrics.csv", metrics)
    write_csv(path / "predictions.csv", preds)
    worst = result.worst()
    write_json(path / "summary.json", {
        "stronger_mode": result.stronger_mode(),
        "worst": None if worst is None else asdict(worst),
        "bound_violations": result.violations,
        "measures": {name: str(role) for name, role in result.roles.items()},
        "modes": {m.mode: {"folds": m.summary, "pooled": m.pooled.to_dict(orient="records"),
                           "extras": m.extras,
                           "accounting": {str(f): r.accounting for f, r in m.folds.items()
                                          if r.accounting}} for m in results}})
    write_markdown(result)
    env["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json(path / "environment.json", env)
    write_content_hash(path)
