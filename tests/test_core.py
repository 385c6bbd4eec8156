"""Building blocks: metrics, plugins, features, FL engine."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
import torch

from serbench.errors import SerbenchError
from serbench.features.extractors import compute, feature_spec
from serbench.features.logmel import LogMel
from serbench.features.store import zscore_per_speaker
from serbench.fl.clients import make_clients
from serbench.fl.engine import FLConfig, aggregate, init_params, local_update, run_federated
from serbench.plugins import Defense
from serbench.registry import load_plugin


def test_plugin_parameters_are_typed_and_checked(tmp_path) -> None:
    attack_cls = load_plugin("attack", "fedavg")
    attack = attack_cls.from_params({"rounds": "7", "client_fraction": "0.5", "layer": "second"})
    assert (attack.rounds, attack.client_fraction, attack.layer) == (7, 0.5, "second")
    with pytest.raises(SerbenchError, match="not a valid int"):
        attack_cls.from_params({"rounds": "many"})
    with pytest.raises(SerbenchError, match="unknown layer"):
        attack_cls(layer="middle")


def test_defense_from_a_file(tmp_path) -> None:
    path = tmp_path / "mine.py"
    path.write_text(
        "from dataclasses import dataclass\nfrom typing import ClassVar\n"
        "from serbench.plugins import Defense, Surface, Tags\n\n@dataclass\nclass Mine(Defense):\n"
        "    name: ClassVar[str] = 'mine'\n    summary: ClassVar[str] = 'test'\n"
        "    tags: ClassVar[Tags] = Tags(surfaces={Surface.UPDATE})\n    scale: float = 1.0\n")
    cls = load_plugin("defense", f"{path}:Mine")
    assert cls.from_params({"scale": "2"}).scale == 2.0
    with pytest.raises(SerbenchError, match="no Defense subclass"):
        load_plugin("defense", f"{path}:Missing")


def test_logmel_keeps_gradients_to_the_waveform() -> None:
    wave = torch.randn(16000, requires_grad=True)
    spec = LogMel()(wave)
    assert spec.shape == (64, 101)
    spec.sum().backward()
    assert wave.grad is not None and torch.isfinite(wave.grad).all()


def test_is09_lld_holds_descriptors_and_their_deltas() -> None:
    """The paper's LSTM input: 16 IS09 LLDs plus their 16 deltas per frame."""
    t = np.arange(16000) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 150 * t)).astype(np.float32)
    frames = compute(feature_spec("is09-lld"), wave, 16000)
    assert frames.shape[1] == 32 and len(frames) > 90
    # A steady tone: the LLDs (e.g. F0) are non-zero, their deltas near zero mid-utterance.
    middle = frames[20:-20]
    assert np.abs(middle[:, :16]).mean() > 10 * np.abs(middle[:, 16:]).mean()


def test_zscore_per_speaker() -> None:
    x = np.random.default_rng(0).normal(3, 2, size=(6, 4))
    z = zscore_per_speaker(x, ["a", "a", "a", "b", "b", "b"])
    assert np.allclose(z[:3].mean(0), 0, atol=1e-6) and np.allclose(z[3:].std(0), 1, atol=1e-4)


def table(n_speakers: int = 4, per: int = 10) -> pd.DataFrame:
    return pd.DataFrame({"speaker": np.repeat([f"s{i}" for i in range(n_speakers)], per),
                         "gender": np.repeat(["F", "M"] * (n_speakers // 2), per),
                         "corpus": "c"})


def test_clients_follow_the_corpus_rule() -> None:
    clients = make_clients(table(), {"c": 2}, seed=0)
    assert len(clients) == 8
    rows = np.concatenate([np.r_[c.train, c.val] for c in clients])
    assert sorted(rows) == list(range(40))  # every row in exactly one client
    assert all(len(c.train) == 4 and len(c.val) == 1 for c in clients)  # 80 / 20


@pytest.mark.parametrize("algorithm", ["fedsgd", "fedavg"])
def test_local_update_is_a_pure_function_of_its_inputs(algorithm: str) -> None:
    cfg = FLConfig(algorithm)
    params = init_params(12, cfg, seed=0)
    x, y = torch.randn(30, 12), torch.randint(0, 4, (30,))
    a, b = local_update(params, x, y, cfg, 5), local_update(params, x, y, cfg, 5)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert set(a) == {f"{l}.{p}" for l in ("first", "second", "last") for p in ("weight", "bias")}


def test_aggregation_is_sample_weighted() -> None:
    cfg = FLConfig("fedavg")
    params = {"w": torch.zeros(2)}
    out = aggregate(params, [{"w": torch.ones(2)}, {"w": 4 * torch.ones(2)}], [3, 1], cfg)
    assert torch.allclose(out["w"], -torch.full((2,), 1.75))


@dataclasses.dataclass
class Clip(Defense):
    name: ClassVar[str] = "clip-test"
    summary: ClassVar[str] = "test"

    def privatize_update(self, update, *, generator):
        return {k: torch.zeros_like(v) for k, v in update.items()}


def test_engine_records_every_update_after_the_defense() -> None:
    cfg = FLConfig("fedsgd", rounds=4, client_fraction=0.5)
    t = table()
    x = np.random.default_rng(0).normal(size=(40, 12)).astype(np.float32)
    y = np.tile(np.arange(4), 10)
    run = run_federated(x, y, make_clients(t, {}, 0), cfg, 0, record=["first.weight"])
    assert run.log.layers["first.weight"].shape == (8, 256, 12)
    assert list(run.log.rounds) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert set(run.log.genders) <= {0, 1}
    zeroed = run_federated(x, y, make_clients(t, {}, 0), cfg, 0, defense=Clip(),
                           record=["first.weight"])
    assert zeroed.log.layers["first.weight"].abs().sum() == 0  # the server sees what is shared


def test_no_import_cycles_even_under_type_checking() -> None:
    """The stages layer (corpus -> features -> deployment -> attack -> scoring -> results):
    no two serbench modules import each other, counting imports inside functions and under
    ``TYPE_CHECKING``, which hide a cycle from Python but not from a reader."""
    import ast
    from pathlib import Path

    import serbench
    import serbench.attacks
    import serbench.defenses

    roots = {"serbench": Path(serbench.__file__).parent,
             "serbench.attacks": Path(serbench.attacks.__file__).parent,
             "serbench.defenses": Path(serbench.defenses.__file__).parent}
    modules: dict[str, Path] = {}
    for prefix, root in roots.items():
        for path in root.rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            if prefix == "serbench" and parts[0] in ("attacks", "defenses"):
                continue
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            modules[".".join((prefix, *parts))] = path
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                       [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                       if isinstance(node, ast.ImportFrom) and node.module else [])
            graph[name].update(t for t in targets if t in modules and t != name)

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                todo.extend(graph[node])
        return False

    cycles = sorted(f"{a} <-> {b}" for a in graph for b in graph[a]
                    if a < b and reaches(b, a) and not b.startswith(a + "."))
    assert not cycles, cycles


@pytest.mark.parametrize("attack, defense, modes", [
    ("fedavg", "udp", 2), ("fedavg", "noise", 2), ("fedavg", "adv", 2), ("fedavg", "none", 1),
    ("fedsgd", "dpsgd", 2), ("fedavg", "udp-ref", 2),
    ("intercept", "udp", 1), ("intercept", "udp-ref", 1), ("intercept", "noise", 2),
    ("intercept", "dpsgd", 2), ("intercept", "adv", 1),
    ("pgd", "noise", 1), ("pgd", "udp", 1), ("pgd", "adv", 2), ("pgd", "dpsgd", 1),
    ("autoattack", "adv", 2), ("autoattack", "dpsgd", 1)])
def test_two_attack_modes_only_where_the_defense_can_act(attack: str, defense: str,
                                                         modes: int) -> None:
    """SPEC §5: adaptive and non-adaptive differ only if the defense transforms the attacked
    surface, or trains and the attacker simulates that training (FL shadow clients);
    otherwise the run attacks once."""
    from serbench.registry import load_plugin
    from serbench.runner import attack_modes

    assert len(attack_modes(load_plugin("attack", attack)(),
                            load_plugin("defense", defense)())) == modes


def test_process_map_keeps_order_and_raises_the_first_failure() -> None:
    """One pool policy for every parallel step: results in the items' order whatever the
    workers, and a failing item is raised, not swallowed."""
    import math

    from serbench.workers import process_map

    items = [float(i) for i in range(20)]
    assert list(process_map(math.sqrt, items, workers=2)) == [math.sqrt(i) for i in items]
    assert list(process_map(math.sqrt, items[:1], workers=2)) == [0.0]
    with pytest.raises(ValueError):
        list(process_map(math.sqrt, [4.0, -1.0, 9.0], workers=2))


def test_seed_derivations_keep_the_committed_entries_arithmetic() -> None:
    """serbench.seeds is the one place seeds are derived; the FL offsets and the step names
    keep the values the committed entries were made with (verify re-runs them)."""
    from serbench.seeds import client_seed, shadow_run_seeds, stable_seed, stream, \
        target_run_seed

    assert target_run_seed(3, 2) == 5
    assert shadow_run_seeds(3, 0) == (3 + 7919, 3) and shadow_run_seeds(3, 2) == (3 + 7921, 1005)
    assert stable_seed(0, 1, "target") == 1359885301  # crc32("0/1/target") & 0x7FFFFFFF
    assert client_seed(0, 1, 2) == client_seed(0, 1, 2) != client_seed(0, 2, 1)
    assert stream(1, 2).random() == stream(1, 2).random() != stream(2, 1).random()
