"""The batched in-process engine (serbench.fl.batched) against the per-client reference
(``local_update`` per client, the ``inprocess-serial`` engine), and the update log's memory
bound.

Tolerance: the batched engine sums in another order (batched and shared-weight matmuls), so
its updates differ from ``local_update``'s in the last bits, and FedAvg's Adam, which divides
by the gradient's running RMS, can amplify that where a gradient is nearly zero. Over a few
rounds every recorded update and the final model agree within ``ATOL`` absolutely (updates
are 1e-3 to 1e-1 here), far below any signal the attack reads.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from serbench.errors import SerbenchError
from serbench.fl import batched, engine, get_engine
from serbench.fl.clients import Client
from serbench.registry import load_plugin
from serbench.seeds import client_seed

ATOL = 1e-5
LAYERS = [f"{layer}.{p}" for layer in ("first", "second", "last") for p in ("weight", "bias")]


def ragged(n_clients: int = 7, dim: int = 24, seed: int = 0
           ) -> tuple[np.ndarray, np.ndarray, list[Client]]:
    """Clients of 3 to 29 training rows: unequal batch counts, a last batch of 1, one client
    smaller than a batch."""
    rng = np.random.default_rng(seed)
    sizes = [29, 3, 21, 12, 25, 20, 8][:n_clients]
    x = rng.normal(size=(sum(sizes), dim)).astype(np.float32)
    y = rng.integers(0, 4, len(x))
    ends = np.cumsum(sizes)
    clients = [Client(f"c{k}", f"s{k}", "FM"[k % 2], np.arange(end - n, end), np.arange(0))
               for k, (n, end) in enumerate(zip(sizes, ends))]
    return x, y, clients


def run_both(cfg: engine.FLConfig, defense=None, seed: int = 3
             ) -> tuple[engine.FLRun, engine.FLRun]:
    x, y, clients = ragged()
    kwargs = dict(defense=defense, record=LAYERS, probe_rounds={1})
    return (get_engine("inprocess-serial")(x, y, clients, cfg, seed, **kwargs),
            get_engine("inprocess")(x, y, clients, cfg, seed, **kwargs))


def assert_close_runs(a: engine.FLRun, b: engine.FLRun, atol: float = ATOL) -> None:
    assert a.log.clients == b.log.clients and np.array_equal(a.log.rounds, b.log.rounds)
    assert np.array_equal(a.log.genders, b.log.genders)
    for name in LAYERS:
        torch.testing.assert_close(b.log.layers[name], a.log.layers[name], atol=atol, rtol=0)
        torch.testing.assert_close(b.params[name], a.params[name], atol=atol, rtol=0)


@pytest.mark.parametrize("cfg", [
    engine.FLConfig("fedsgd", rounds=4, client_fraction=0.5),
    engine.FLConfig("fedavg", rounds=4, client_fraction=0.5, batch_size=4),
    engine.FLConfig("fedavg", rounds=3, client_fraction=0.5, batch_size=5, local_epochs=2),
    engine.FLConfig("fedavg", rounds=2, client_fraction=0.5, batch_size=4, dropout=0.0),
], ids=["fedsgd", "fedavg", "fedavg-2-epochs", "fedavg-no-dropout"])
def test_batched_engine_matches_local_update(cfg: engine.FLConfig,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Same clients, same minibatch order and dropout masks, updates within ``ATOL``; in
    chunks of 3 clients, so the probe round (all 7) spans three chunks."""
    monkeypatch.setattr(batched, "CHUNK", 3)
    assert_close_runs(*run_both(cfg))


@pytest.mark.parametrize("algorithm", ["fedsgd", "fedavg"])
def test_first_round_updates_match_closely(algorithm: str) -> None:
    """On one global model (no divergence across rounds yet) the updates agree to a few ulps
    of their size: the masks and the minibatch order are the same draws."""
    x, y, clients = ragged()
    cfg = engine.FLConfig(algorithm, batch_size=4)
    params = engine.init_params(x.shape[1], cfg, 0)
    data = [(torch.from_numpy(x[c.train]), torch.from_numpy(y[c.train])) for c in clients]
    seeds = [client_seed(1, 0, k) for k in range(len(clients))]
    reference = engine.serial_updates(params, data, cfg, seeds, None, 0)
    for ref, got in zip(reference, batched.BatchedUpdates()(params, data, cfg, seeds, None, 0)):
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("algorithm", ["fedsgd", "fedavg"])
def test_udp_is_applied_per_client_with_local_updates_generator(algorithm: str) -> None:
    """UDP clips and adds noise after the batched computation, from each client's generator
    in the state ``local_update`` leaves it: the same noise draws."""
    udp = load_plugin("defense", "udp")(epsilon=None, noise_multiplier=0.5, clip=0.05)
    udp.validate()
    assert_close_runs(*run_both(engine.FLConfig(algorithm, rounds=3, client_fraction=0.5,
                                                batch_size=4), udp))


@pytest.mark.parametrize("name", ["dpsgd", "adv"])
def test_training_defenses_run_per_client(name: str) -> None:
    """DP-SGD and adversarial training wrap a real module and optimizer: the batched engine
    runs ``local_update`` for them, so its runs equal the per-client engine's exactly."""
    defense = load_plugin("defense", name)()
    defense.validate()
    defense.calibrate(rounds=2, sample_rate=0.5)
    serial, batch = run_both(engine.FLConfig("fedavg", rounds=2, client_fraction=0.5,
                                             batch_size=4), defense)
    assert_close_runs(serial, batch, atol=0)


def test_batched_updates_do_not_depend_on_the_thread_count() -> None:
    """Reproducible on any machine: one and two threads give the same bits."""
    x, y, clients = ragged()
    cfg = engine.FLConfig("fedavg", batch_size=4)
    params = engine.init_params(x.shape[1], cfg, 0)
    data = [(torch.from_numpy(x[c.train]), torch.from_numpy(y[c.train])) for c in clients]
    runs = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            runs.append([{k: v.clone() for k, v in u.items()} for u in
                         batched.BatchedUpdates()(params, data, cfg, range(7), None, 0)])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(*runs) for k in a)


def test_a_log_that_would_not_fit_in_memory_fails_early_with_one_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the log is allocated (once the first update shows what is stored of each): the
    size, and the option that reduces it, not an OOM kill."""
    x, y, clients = ragged()
    cfg = engine.FLConfig("fedsgd", rounds=40, client_fraction=0.5)
    per_update = 4 * (256 * x.shape[1] + 256)
    needed = (36 * 4 + 4 * 7) * per_update  # 4 clients a round; 4 probe rounds of all 7
    monkeypatch.setattr(engine, "available_memory", lambda: engine.MEMORY_MARGIN + needed - 1)
    with pytest.raises(SerbenchError) as failure:
        get_engine("inprocess")(x, y, clients, cfg, 0, record=["first.weight", "first.bias"],
                                probe_rounds=range(0, 40, 10))
    message = str(failure.value)
    assert "\n" not in message and "recording 172 FL updates" in message
    assert "shadow_probe_every" in message
    monkeypatch.setattr(engine, "available_memory", lambda: engine.MEMORY_MARGIN + needed)
    run = get_engine("inprocess")(x, y, clients, cfg, 0, record=["first.weight", "first.bias"],
                                  probe_rounds=range(0, 40, 10))
    assert len(run.log) == 172


def test_a_diverging_run_stops_with_one_line() -> None:
    """Noise far above the updates' scale sends FedSGD's global model to inf; the run stops
    there with one line naming the round, instead of handing inf and NaN updates on to the
    attack (whose inversion then failed with a linear-algebra traceback)."""
    x, y, clients = ragged()
    noise = load_plugin("defense", "noise").from_params({"sigma": "1e30"})
    cfg = engine.FLConfig("fedsgd", rounds=20, client_fraction=0.5)
    with pytest.raises(SerbenchError) as failure:
        get_engine("inprocess")(x, y, clients, cfg, 0, defense=noise,
                                record=["first.weight"])
    message = str(failure.value)
    assert "\n" not in message and message.startswith("FL training diverged: the global model "
                                                      "is not finite after round ")
    # What an attacker's simulation keeps of it: the updates until then, all finite.
    run = failure.value.run
    assert 0 < len(run.log) == len(run.log.clients) and run.log.rounds.max() < cfg.rounds - 1
    assert torch.isfinite(run.log.layers["first.weight"]).all()
    assert all(torch.isfinite(v).all() for v in run.params.values())


def test_a_simulation_that_diverges_keeps_its_updates_until_then() -> None:
    """``partial``: an attacker's shadow run that diverges by chance under a noisy defense ends
    there with what it recorded (the target's run, which it imitates, still fails)."""
    from serbench.deploy.federated import FLRecipe, federate
    from serbench.metrics import emotion_classes
    from serbench.progress import NullReporter
    from serbench.protocol import load_corpus

    data = load_corpus("synth", None)
    classes = tuple(emotion_classes(data.table["emotion"]))
    rows = np.flatnonzero(data.table["fold"] == 1)
    recipe = FLRecipe(engine.FLConfig("fedsgd", rounds=20, n_classes=len(classes)),
                      ("first.bias",), "emobase", classes)
    noise = load_plugin("defense", "noise").from_params({"sigma": "1e30"})
    run = dict(seed=0, init_seed=0, engine="inprocess", reporter=NullReporter(),
               description="shadow")
    with pytest.raises(SerbenchError, match="diverged"):
        federate(recipe, data, rows, noise, **run)
    deployed = federate(recipe, data, rows, noise, partial=True, **run)
    assert 0 < len(deployed.run.log) < 20 * len(rows)
    assert torch.isfinite(deployed.run.log.layers["first.bias"]).all()
