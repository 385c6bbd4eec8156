"""The input-space FL attack (attacks/update_inversion.py): the inversion recovers a client's
class-conditional input statistic from its first-layer update, and the attack model trained on
shadow speakers beats chance on the built-in corpus."""

from __future__ import annotations

import numpy as np
import torch
from torch.func import functional_call
from torch.nn import functional as F

from serbench.attacks.update_inversion import (BasisRecorder, InputSpaceModel, backprop_basis,
                                               invert, invert_log)
from serbench.fl.clients import make_clients
from serbench.fl.engine import FLConfig, init_params, local_update, run_in_process
from serbench.metrics import emotion_classes, emotion_labels
from serbench.models.mlp import SERMLP
from serbench.protocol import load_corpus, split_disjoint
from serbench.scoring import uar


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.flatten() @ b.flatten()) / (a.norm() * b.norm()))


def test_inversion_recovers_a_clients_class_conditional_inputs() -> None:
    """A toy client whose classes have distinct mean inputs: pinv(M) G of its FedSGD gradient
    points along E = (1/N) sum_i (p_i - y_i) x_i^T (class-centred), its class-conditional
    statistic, with M from other (reference) inputs only."""
    d, c, n = 60, 4, 80
    gen = torch.Generator().manual_seed(0)
    means = 1.5 * torch.randn(c, d, generator=gen)
    y = torch.arange(n) % c
    x = means[y] + torch.randn(n, d, generator=gen)
    x_ref = torch.randn(300, d, generator=gen) + means[torch.arange(300) % c]
    cfg = FLConfig("fedsgd", n_classes=c, dropout=0.0)
    params = init_params(d, cfg, 0)
    update = local_update(params, x, y, cfg, seed=0)
    phi, psi = invert(update["first.weight"][None], update["first.bias"][None],
                      backprop_basis(params, x_ref))
    with torch.no_grad():
        p = torch.softmax(functional_call(SERMLP(d, c, dropout=0.0), params, (x,)), 1)
    e = (p - F.one_hot(y, c)).T @ x / n
    e = e - e.mean(0)
    assert phi.shape == (1, c, d) and psi.shape == (1, c)
    assert _cosine(phi[0], e) > 0.8
    # The class rows, not just the whole map: each row matches its own class's statistic best.
    sims = torch.stack([torch.stack([torch.cosine_similarity(phi[0, i], e[j], 0)
                                     for j in range(c)]) for i in range(c)])
    assert (sims.argmax(1) == torch.arange(c)).all()


def _run(part, rows, classes, x_ref, seed, init_seed, rounds, probe):
    table = part.table.iloc[rows].reset_index(drop=True)
    x = part.features("emobase")[rows]
    cfg = FLConfig("fedsgd", rounds=rounds, n_classes=len(classes))
    recorder = BasisRecorder(x_ref)
    run = run_in_process(recorder, x, emotion_labels(table["emotion"], classes),
                         make_clients(table, part.clients_per_speaker, seed), cfg, seed,
                         init=init_params(x.shape[1], cfg, init_seed),
                         record=["first.weight", "first.bias"], probe_rounds=probe)
    phi, psi = invert_log(run.log.layers["first.weight"], run.log.layers["first.bias"],
                          run.log.rounds, recorder.bases)
    return phi, psi, run.log.genders


def test_input_space_attack_beats_chance_on_synth() -> None:
    """Shadow and target runs from *different* initialisations (no hidden-unit alignment):
    the weight-space model would be at chance, the input-space one is not."""
    data = load_corpus("synth", None)
    data.features("emobase")
    target, shadow = split_disjoint(data, 0)
    classes = emotion_classes(data.table["emotion"])
    x_ref = torch.tensor(shadow.features("emobase")[:200], dtype=torch.float32)
    phi, psi, genders = _run(shadow, np.arange(len(shadow.table)), classes, x_ref, 1, 1, 20,
                             range(0, 20, 2))
    model = InputSpaceModel().fit([phi, psi], torch.as_tensor(genders))
    rows = np.flatnonzero(target.table["fold"] != 1)
    phi, psi, genders = _run(target, rows, classes, x_ref, 2, 2, 20, range(0))
    pred = model.adapt([phi, psi])(phi, psi).argmax(1).numpy()
    assert uar(genders, pred) > 0.7


def test_deployment_keeps_the_basis_of_each_rounds_global_model() -> None:
    """The engine's ``on_global`` hook, used by the deployment stage, shows each round's global
    model before its clients train: the kept bases equal a recording engine's."""
    from functools import partial

    from serbench.deploy.federated import FLRecipe, federate
    from serbench.progress import NullReporter
    from serbench.registry import load_plugin

    data = load_corpus("synth", None)
    classes = emotion_classes(data.table["emotion"])
    rows = np.flatnonzero(data.table["fold"] == 1)
    x_ref = torch.tensor(data.features("emobase")[:50], dtype=torch.float32)
    cfg = FLConfig("fedavg", rounds=4, n_classes=len(classes))
    recipe = FLRecipe(cfg, ("first.weight",), "emobase", tuple(classes),
                      observe=partial(backprop_basis, x_ref=x_ref))
    deployed = federate(recipe, data, rows, load_plugin("defense", "none")(), seed=3,
                        init_seed=0, engine="inprocess", reporter=NullReporter(),
                        description="test")
    table = data.table.iloc[rows].reset_index(drop=True)
    recorder = BasisRecorder(x_ref)
    run_in_process(recorder, data.features("emobase")[rows],
                   emotion_labels(table["emotion"], classes, deal_others=True),
                   make_clients(table, data.clients_per_speaker, 3), cfg, 3,
                   init=init_params(x_ref.shape[1], cfg, 0))
    assert sorted(deployed.observed) == list(range(4))
    for rnd in range(4):
        torch.testing.assert_close(deployed.observed[rnd], recorder.bases[rnd])


def test_a_deployment_can_store_each_update_inverted_as_it_arrives() -> None:
    """``FLRecipe.keep``: the server stores each first-layer update inverted with its round's
    basis (4 x D numbers, not 256 x D) instead of the update; the same maps as inverting a
    recording run's log afterwards."""
    from functools import partial

    from serbench.attacks.update_sets import INVERTED, keep_inverted
    from serbench.deploy.federated import FLRecipe, federate
    from serbench.progress import NullReporter
    from serbench.registry import load_plugin

    data = load_corpus("synth", None)
    classes = tuple(emotion_classes(data.table["emotion"]))
    rows = np.flatnonzero(data.table["fold"] == 1)
    x_ref = torch.tensor(data.features("emobase")[:50], dtype=torch.float32)
    cfg = FLConfig("fedsgd", rounds=3, n_classes=len(classes))
    observe = partial(backprop_basis, x_ref=x_ref)

    def deploy(**keep):
        return federate(FLRecipe(cfg, ("first.weight", "first.bias"), "emobase", classes,
                                 observe=observe, **keep),
                        data, rows, load_plugin("defense", "none")(), seed=3, init_seed=0,
                        engine="inprocess", reporter=NullReporter(), description="test",
                        probe_rounds=[1])
    recorded, streamed = deploy(), deploy(keep=keep_inverted)
    assert set(streamed.run.log.layers) == set(INVERTED)
    assert streamed.run.log.layers[INVERTED[0]].shape[1:] == (len(classes), x_ref.shape[1])
    log = recorded.run.log
    phi, psi = invert_log(log.layers["first.weight"], log.layers["first.bias"], log.rounds,
                          recorded.observed)
    torch.testing.assert_close(streamed.run.log.layers[INVERTED[0]], phi)
    torch.testing.assert_close(streamed.run.log.layers[INVERTED[1]], psi)
    assert streamed.run.log.clients == log.clients
