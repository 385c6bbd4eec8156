"""Attack-model comparison on real data: the reference CNN vs the linear model, by input pooling.

    SERBENCH_CACHE=/tmp/sbcache python benchmarks/attack_models.py fedsgd ../shared/data/ravdess

One target FL run (fold 1) and one shadow run on disjoint speakers; prints each model's
target gender UAR on single updates and its training time. This is the measurement behind
the default ``input_pool`` and the ``model=auto`` choice in attacks/fl_inference.py.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score

from serbench.attacks.update_models import LinearUpdateModel, UpdateAttackModel
from serbench.fl.clients import make_clients
from serbench.fl.engine import FLConfig, init_params, run_federated
from serbench.metrics import emotion_classes, emotion_labels
from serbench.models.train import fit_classifier, predict_proba
from serbench.protocol import load_corpus, split_disjoint

algorithm, root = sys.argv[1], sys.argv[2]
data = load_corpus("ravdess", root)
data.features("emobase")
target, shadow = split_disjoint(data, 0)
classes = emotion_classes(data.table["emotion"])


def federate(part, rows, seed):
    table = part.table.iloc[rows].reset_index(drop=True)
    x = part.features("emobase")[rows]
    cfg = FLConfig(algorithm, n_classes=len(classes))
    return run_federated(x, emotion_labels(table["emotion"], classes),
                         make_clients(table, part.clients_per_speaker, seed), cfg, seed,
                         init=init_params(x.shape[1], cfg, 0),
                         record=["first.weight", "first.bias"]).log


s_log = federate(shadow, np.arange(len(shadow.table)), 11)
t_log = federate(target, np.flatnonzero(target.table["fold"] != 1), 1)
stats = [(t.mean(0), t.std(0) + 1e-8) for t in (s_log.layers["first.weight"], s_log.layers["first.bias"])]


def inputs(log):
    return [(log.layers[k] - m) / s for k, (m, s) in zip(("first.weight", "first.bias"), stats)]


labels = torch.as_tensor(s_log.genders)
pool8 = torch.nn.AvgPool2d(8, ceil_mode=True)
for name, pool in [("linear", 1), ("linear", 8), ("cnn", 4), ("cnn", 8)]:
    start = time.perf_counter()
    if name == "linear":
        weight, bias = inputs(s_log)
        if pool > 1:  # what pooling would do to the linear model (it never pools)
            s_in, t_in = [pool8(weight.unsqueeze(1)).squeeze(1), bias], None
            weight_t, bias_t = inputs(t_log)
            t_in = [pool8(weight_t.unsqueeze(1)).squeeze(1), bias_t]
        else:
            s_in, t_in = [weight, bias], inputs(t_log)
        model = LinearUpdateModel().fit(s_in, labels)
        pred = predict_proba(model, t_in).argmax(1).numpy()
    else:
        model = UpdateAttackModel(256, pool)
        model = fit_classifier(model, model.prepare(*inputs(s_log)), labels, epochs=25)
        pred = predict_proba(model, model.prepare(*inputs(t_log))).argmax(1).numpy()
    print(f"{name:6s} pool {pool}: target gender UAR "
          f"{balanced_accuracy_score(t_log.genders, pred):.3f}, {time.perf_counter() - start:.1f} s")
