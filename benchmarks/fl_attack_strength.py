"""FL attack strength side by side: the weight-space models of fl_inference.py against the
input-space inversion (attacks/update_inversion.py), same-corpus and cross-corpus.

    SERBENCH_CACHE=~/.cache/serbench python benchmarks/fl_attack_strength.py \
        --algorithm fedsgd --target ravdess --shadow ravdess --rounds 200
    python benchmarks/fl_attack_strength.py --algorithm fedavg --target ravdess --shadow synth
    python benchmarks/fl_attack_strength.py --algorithm fedavg --target synth --folds 1 \
        --before 25,50,100     # the same, on the updates of early rounds only

``--shadow`` equal to ``--target`` means disjoint speakers of it (the protocol's default), any
other corpus means all of that corpus's speakers. The target is the disjoint target half with
its standard folds: one target FL run per fold on the fold's training speakers, every update of
theirs classified, pooled over the folds. Shadow: ``--shadow-runs`` FL runs (different
initialisations and client samplings, every client probed every ``--probe-every`` rounds); the
first starts from the server's initialisation, as fl_inference's single shadow run does, and is
the only one the weight-space model uses (it needs the target's hidden-unit alignment).
A last candidate trains, per target run, on the shadow clients' updates computed on that run's
own global models (every ``--probe-every`` rounds; the server sent them, so it may).
Model selection (the regularisation C) on a held-out third of the shadow speakers only.
Prints pooled gender UAR with the number of target speakers (and updates) behind it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from serbench.attacks.update_models import LinearUpdateModel
from serbench.attacks.update_inversion import (BasisRecorder, InputSpaceModel, centre_by_round,
                                               invert, invert_log)
from serbench.fl.batched import BatchedUpdates
from serbench.fl.clients import make_clients
from serbench.fl.engine import FLConfig, init_params, run_in_process
from serbench.metrics import emotion_classes, emotion_labels
from serbench.protocol import load_corpus, split_disjoint
from serbench.scoring import uar
from serbench.seeds import client_seed, shadow_run_seeds

ROOTS = {"ravdess": str(Path(__file__).resolve().parents[2] / "shared" / "data" / "ravdess"),
         "synth": None}
WIDTH = 25  # rounds per centring window (centre_by_round)
SEED = 0  # the protocol's seed: disjoint split and the server's initialisation


def federate(part, rows, classes, algorithm, seed, init_seed, rounds, probe_every, x_ref,
             raw: bool, keep=range(0)):
    table = part.table.iloc[rows].reset_index(drop=True)
    x = part.features("emobase")[rows]
    y = emotion_labels(table["emotion"], classes)
    cfg = FLConfig(algorithm, rounds=rounds, n_classes=len(classes))
    clients = make_clients(table, part.clients_per_speaker, seed)
    engine = BasisRecorder(x_ref)
    engine.keep = set(keep)
    probe = range(0, rounds, probe_every) if probe_every else range(0)
    run = run_in_process(engine, x, y, clients, cfg, seed, init=init_params(x.shape[1], cfg, init_seed),
                         record=["first.weight", "first.bias"], probe_rounds=probe)
    log = run.log
    phi, psi = invert_log(log.layers["first.weight"], log.layers["first.bias"], log.rounds,
                          engine.bases)
    out = {"phi": phi, "psi": psi, "phic": centre_by_round(phi, log.rounds, WIDTH), "genders": log.genders, "speakers": np.asarray(log.speakers),
           "clients": np.asarray(log.clients), "rounds": log.rounds}
    if raw:
        out["weight"], out["bias"] = log.layers["first.weight"], log.layers["first.bias"]
    out["globals"], out["bases"], out["cfg"] = engine.globals, engine.bases, cfg
    return out


def probe_on(run, part, classes, seed):
    """Every shadow client's update on each global model the target's server kept (the server
    sent it, so it can compute what its shadow clients would send back), inverted."""
    x = torch.tensor(part.features("emobase"), dtype=torch.float32)
    y = torch.tensor(np.asarray(emotion_labels(part.table["emotion"], classes)), dtype=torch.long)
    clients = make_clients(part.table, part.clients_per_speaker, seed)
    data = [(x[c.train], y[c.train]) for c in clients]
    engine = BatchedUpdates()
    phis, psis, genders, speakers, rounds = [], [], [], [], []
    for rnd, params in sorted(run["globals"].items()):
        ups = engine(params, data, run["cfg"], [client_seed(seed, rnd, k) for k in range(len(data))],
                     None, rnd)
        w = torch.stack([u["first.weight"] for u in ups])
        b = torch.stack([u["first.bias"] for u in ups])
        phi, psi = invert(w, b, run["bases"][rnd])
        phis.append(phi); psis.append(psi)
        genders += [int(c.gender == "M") for c in clients]
        speakers += [c.speaker for c in clients]
        rounds += [rnd] * len(clients)
    return {"phi": torch.cat(phis), "psi": torch.cat(psis), "genders": np.asarray(genders),
            "speakers": np.asarray(speakers), "rounds": np.asarray(rounds),
            "clients": np.asarray([c.cid for c in clients] * len(run["globals"]))}


def corpus(name):
    data = load_corpus(name, ROOTS[name])
    data.features("emobase")
    return data


def before(run, rounds):
    """The run's updates (and kept global models) of the rounds before ``rounds`` only."""
    keep = np.flatnonzero(np.asarray(run["rounds"]) < rounds)
    out = dict(run, globals={r: g for r, g in run["globals"].items() if r < rounds})
    for k in ("phi", "psi", "phic", "weight", "bias"):
        if k in run:
            out[k] = run[k][torch.as_tensor(keep)]
    for k in ("genders", "speakers", "clients", "rounds"):
        out[k] = np.asarray(run[k])[keep]
    return out


def average(run, keys, n):
    """Each client's rows averaged over chunks of n (None = all), as fl_inference does."""
    out = {k: [] for k in keys}
    genders, speakers = [], []
    for cid in dict.fromkeys(run["clients"]):
        rows = np.flatnonzero(run["clients"] == cid)
        size = len(rows) if n is None else min(n, len(rows))
        chunks = rows[:len(rows) // size * size].reshape(-1, size)
        for k in keys:
            out[k].append(run[k][torch.as_tensor(chunks.ravel())].view(
                *chunks.shape, *run[k].shape[1:]).mean(1))
        genders += [run["genders"][rows[0]]] * len(chunks)
        speakers += [run["speakers"][rows[0]]] * len(chunks)
    return [torch.cat(out[k]) for k in keys], np.asarray(genders), np.asarray(speakers)


def training_set(runs, keys, sizes):
    """Single updates plus averages of n, as fl_inference trains."""
    parts = []
    for run in runs:
        parts.append(([run[k] for k in keys], run["genders"], run["speakers"]))
        parts += [average(run, keys, n) for n in sizes if n != 1]
    inputs = [torch.cat([p[0][i] for p in parts]) for i in range(len(keys))]
    return inputs, np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])


def held_out(speakers, genders, seed=SEED):
    rng = np.random.default_rng(seed)
    held = set()
    for g in (0, 1):
        spk = sorted(set(speakers[genders == g]))
        held.update(rng.choice(spk, max(1, len(spk) // 3), replace=False))
    return np.isin(speakers, list(held))


def select(make, grid, inputs, genders, speakers, adapt):
    """The grid value with the best held-out-shadow UAR, refitted on every shadow speaker."""
    val = held_out(speakers, genders)
    labels = torch.as_tensor(genders)
    scores = {}
    for c in grid:
        model = make(c).fit([t[~val] for t in inputs], labels[~val])
        held = [t[val] for t in inputs]
        if adapt:
            model.adapt(held)
        scores[c] = uar(genders[val], model(*held).argmax(1).numpy())
    best = max(scores, key=scores.get)
    return make(best).fit(inputs, labels), best, scores


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--algorithm", default="fedsgd", choices=["fedsgd", "fedavg"])
    p.add_argument("--target", default="ravdess", choices=list(ROOTS))
    p.add_argument("--shadow", default=None, help="corpus (default: the target's disjoint half)")
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--probe-every", type=int, default=8)
    p.add_argument("--shadow-runs", type=int, default=3)
    p.add_argument("--folds", default="all")
    p.add_argument("--averaging", default="1,all")
    p.add_argument("--scale", default="update,class,none")
    p.add_argument("--width", type=int, default=25)
    p.add_argument("--no-weight-space", action="store_true")
    p.add_argument("--before", default="",
                   help="also attack only the updates of rounds before each of these, both "
                        "sides (e.g. 25,50,100): how leakage depends on the round")
    args = p.parse_args()
    shadow_name = args.shadow or args.target
    global WIDTH
    WIDTH = args.width
    t0 = time.time()
    target_data = corpus(args.target)
    target, disjoint = split_disjoint(target_data, SEED)
    shadow = disjoint if shadow_name == args.target else corpus(shadow_name)
    classes = emotion_classes(target_data.table["emotion"])
    sizes = [None if s == "all" else int(s) for s in args.averaging.split(",")]
    x_shadow = torch.tensor(shadow.features("emobase"), dtype=torch.float32)
    x_ref = x_shadow[torch.randperm(len(x_shadow), generator=torch.Generator().manual_seed(0))[:400]]
    same_init = shadow_name == args.target and not args.no_weight_space
    runs = [federate(shadow, np.arange(len(shadow.table)), classes, args.algorithm,
                     *shadow_run_seeds(SEED, k), args.rounds,
                     args.probe_every, x_ref, raw=same_init and k == 0)
            for k in range(args.shadow_runs)]
    folds = sorted(target.table["fold"].unique()) if args.folds == "all" else [
        int(f) for f in args.folds.split(",")]
    targets = [federate(target, np.flatnonzero(target.table["fold"] != f), classes,
                        args.algorithm, SEED + f, SEED, args.rounds, 0, x_ref, raw=same_init,
                        keep=range(0, args.rounds, args.probe_every))
               for f in folds]
    print(f"# {args.algorithm} target {args.target} ({target.table.speaker.nunique()} speakers, "
          f"folds {folds}) shadow {shadow_name} ({shadow.table.speaker.nunique()} speakers, "
          f"{args.shadow_runs} runs) rounds {args.rounds}; FL runs {time.time() - t0:.0f} s",
          flush=True)

    for rounds in [args.rounds] + [int(r) for r in args.before.split(",") if r]:
        print(f"## updates of rounds before {rounds}", flush=True)
        attack([before(r, rounds) for r in runs], [before(t, rounds) for t in targets], args,
               sizes, same_init, shadow, classes)
    print(f"# total {time.time() - t0:.0f} s")


def attack(runs, targets, args, sizes, same_init, shadow, classes) -> None:
    """Every candidate trained on the shadow ``runs``, scored on the ``targets``."""
    candidates = {}
    for scale, keys in [(s, ["phi", "psi"]) for s in args.scale.split(",")] + [
            ("centred", ["phic", "psi"])]:
        for nruns in sorted({1, args.shadow_runs}):
            inputs, g, s = training_set(runs[:nruns], keys, sizes)
            model, c, scores = select(lambda c, scale=scale: InputSpaceModel(
                                          c, "none" if scale == "centred" else scale),
                                      [1e-3, 1e-2, 1e-1, 1.0], inputs, g, s, adapt=True)
            candidates[f"inversion/{scale}/{nruns}run"] = (model, keys, True, c, scores)
    if same_init:
        inputs, g, s = training_set(runs[:1], ["weight", "bias"], sizes)
        stats = [(t.mean(0), t.std(0) + 1e-8) for t in inputs]
        norm = [(t - m) / sd for t, (m, sd) in zip(inputs, stats)]
        model = LinearUpdateModel().fit(norm, torch.as_tensor(g))
        candidates["weight-space linear"] = (model, ["weight", "bias"], stats, 1e-3, {})

    # Per target run: shadow clients probed on that run's own global models.
    per_fold = []
    for run in targets:
        probed = probe_on(run, shadow, classes, shadow_run_seeds(SEED, 0)[0])
        inputs, g, s = training_set([probed], ["phi", "psi"], sizes)
        per_fold.append(select(lambda c: InputSpaceModel(c, "class"), [1e-3, 1e-2, 1e-1, 1.0],
                               inputs, g, s, adapt=True))
    candidates["inversion/class/on-target-models"] = (per_fold, ["phi", "psi"], True,
                                                      per_fold[0][1], per_fold[0][2])

    for name, (model, keys_, adapt, c, scores) in candidates.items():
        line = [f"{name:28s} C={c:g}"]
        if scores:
            line.append(f"shadow-val {max(scores.values()):.3f}")
        for n in sizes:
            preds, truth, spk = [], [], []
            for i, run in enumerate(targets):
                if isinstance(model, list):
                    model_ = model[i][0]
                else:
                    model_ = model
                inputs, g, s = average(run, keys_, n)
                if adapt is True:
                    model_.adapt(inputs)
                else:
                    inputs = [(t - m) / sd for t, (m, sd) in zip(inputs, adapt)]
                preds.append(model_(*inputs).argmax(1).numpy())
                truth.append(g)
                spk.append(s)
            truth, preds, spk = map(np.concatenate, (truth, preds, spk))
            line.append(f"n={n or 'all'} UAR {uar(truth, preds):.3f} "
                        f"({len(set(spk))} spk, {len(truth)} upd)")
        print("  ".join(line), flush=True)


if __name__ == "__main__":
    sys.exit(main())
