"""A conformance suite for defenses, in the spirit of scikit-learn's ``check_estimator``.

``serbench check-defense FILE.py:Class`` (or :func:`check_defense` in a test) runs each check on
the defense at its defaults and reports one line per failure. The checks are what the benchmark
relies on: a defense does what its tags declare and no more (a hook of an undeclared surface
would escape the adaptive attacker; a transform that varies with its generator escapes the
non-EOT attacks' rules unless it is ``randomized``), parameters that round-trip (runs and
entries record them), transforms that keep shapes and dtypes (audio: its length and sample rate, finite), randomness drawn only from the given generator (same seed, same numbers;
no global RNG touched), a defense that pickles (the Flower engines ship it to clients), and
one-line errors for bad parameters.
"""

from __future__ import annotations

import copy
import inspect
import pickle
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from serbench.errors import SerbenchError
from serbench.defenses.none import NoDefense
from serbench.plugins import HOOKS, Defense, PublicData, Surface

#: What the contract declares in :class:`serbench.plugins.Tags`, and no longer as class
#: attributes of its own (a defense written for the older contract).
TAG_NAMES = ("surfaces", "randomized", "trains", "noise_aware", "input_draws")


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    reason: str = ""


def _public() -> PublicData:
    """Six public speakers (three of each gender), two utterances each, in the small model's
    12-feature space: what a ``public_data`` defense is calibrated with here."""
    data = torch.Generator().manual_seed(3)
    speakers = tuple(f"public{i // 2}" for i in range(12))
    return PublicData(torch.randn(12, 12, generator=data), speakers,
                      torch.tensor([(i // 2) % 2 for i in range(12)]),
                      torch.randint(0, 4, (12,), generator=data))


def _client_update(defense: Defense, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A FedAvg client's shared update on a small model, through the defense as the FL engines
    apply it (calibrated for a 10-round recipe, with public data if it declares them; its
    training hooks if it ``trains``; the client's gender if it ``reads_attribute``)."""
    from serbench.fl.engine import FLConfig, init_params, local_update

    cfg = FLConfig("fedavg", rounds=10, client_fraction=0.5, batch_size=4)
    defense.calibrate(rounds=cfg.rounds, sample_rate=0.5, participations=5,
                      **({"public": _public()} if defense.tags.public_data else {}))
    data = torch.Generator().manual_seed(2)
    x, y = torch.randn(12, 12, generator=data), torch.randint(0, 4, (12,), generator=data)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):  # init_params seeds torch's global RNG itself
        params = init_params(12, cfg, 0)
    return local_update(params, x, y, cfg, seed, defense, attribute=1)


#: What each capability tag lets a hook receive: tag -> (keyword, the hooks that receive it).
GIVEN: dict[str, tuple[str, tuple[str, ...]]] = {
    "reads_attribute": ("attribute", ("make_private", "privatize_update")),
    "public_data": ("public", ("calibrate",)),
}


def ungiven(cls: type[Defense]) -> list[str]:
    """Each capability a hook of ``cls`` expects without its tag (it would never receive it),
    or a tag whose hooks cannot take what it gives (they would fail when given it), in one line
    each; and ``public_data`` without the update surface, the only one it is given on."""
    problems = []
    for tag, (keyword, hooks) in GIVEN.items():
        declared = getattr(cls.tags, tag)
        for hook in hooks:
            if getattr(cls, hook) is getattr(Defense, hook):
                continue
            takes = keyword in inspect.signature(getattr(cls, hook)).parameters
            if takes and not declared:
                problems.append(f"{hook} takes {keyword!r} but its tags do not declare "
                                f"{tag}=True, so it is never given")
            elif declared and not takes:
                problems.append(f"its tags declare {tag}=True but {hook} takes no {keyword!r} "
                                f"keyword")
    if cls.tags.public_data and Surface.UPDATE not in cls.tags.surfaces:
        problems.append("its tags declare public_data=True, which is given at FL calibration "
                        "only, without the update surface (Surface.UPDATE)")
    return problems


def undeclared(cls: type[Defense]) -> list[str]:
    """Each hook ``cls`` overrides without declaring what it acts on, in one line each: the
    runner would apply the hook to the deployed system, but attack modes and scoring follow the
    tags, so the adaptive attacker would never simulate it."""
    problems = [f"it sets {name!r} as a class attribute; declare it in its tags: "
                f"tags = Tags({name}=...)" for name in TAG_NAMES
                if any(name in vars(k) for k in cls.__mro__[:cls.__mro__.index(Defense)])]
    tags = cls.tags
    for hook, needs in HOOKS.items():
        if getattr(cls, hook) is getattr(Defense, hook):
            continue
        if needs == "trains" and not tags.trains:
            problems.append(f"it overrides {hook} but its tags do not declare trains=True")
        elif isinstance(needs, Surface) and needs not in tags.surfaces:
            problems.append(f"it overrides {hook} but its tags do not declare the "
                            f"{needs.value} surface (Surface.{needs.name})")
    return problems + ungiven(cls)


def unrandomized(defense: Defense) -> list[str]:
    """Each declared transform whose output varies with its generator although the defense
    is not ``randomized``: attacks that do not average over randomness would score it."""
    if defense.tags.randomized:
        return []
    problems = []
    defense = copy.deepcopy(defense)  # calibrating it must not change the caller's instance
    for name, apply in _transforms(defense, whole_update=False).items():
        with torch.random.fork_rng(devices=[]):
            a, b = (_tensors(apply(torch.Generator().manual_seed(s))) for s in (7, 8))
        if not all(torch.equal(x, y) for x, y in zip(a, b)):
            problems.append(f"{name}'s output varies with its generator, but its tags do not "
                            f"declare randomized=True")
    return problems


def contract_problems(defense: Defense) -> list[str]:
    """What the runner refuses before any heavy work: hooks beyond the declared tags."""
    problems = undeclared(type(defense))
    return problems or unrandomized(defense)


def _transforms(defense: Defense, whole_update: bool = True
                ) -> dict[str, Callable[[torch.Generator], Any]]:
    """The defense's transforms of its declared surfaces, each applied to fixed inputs: a
    client's whole update through its local training, or (not ``whole_update``) only the
    ``privatize_update`` of a fixed update, whose training draws from the generator too."""
    x = torch.randn(4, 1, 8, 20, generator=torch.Generator().manual_seed(1))
    out: dict[str, Callable[[torch.Generator], Any]] = {}
    if Surface.UPDATE in defense.surfaces and whole_update:
        out["client update"] = lambda g: _client_update(defense, g)
    elif Surface.UPDATE in defense.surfaces:
        # An undefended client's update; a training defense first wraps one client's training
        # (its privatize_update may use what its make_private saw).
        update = _client_update(NoDefense(), torch.Generator().manual_seed(5))
        _client_update(defense, torch.Generator().manual_seed(5))
        given = {"attribute": 1} if defense.tags.reads_attribute else {}
        out["privatize_update"] = lambda g: defense.privatize_update(
            {k: v.clone() for k, v in update.items()}, generator=g, **given)
    if Surface.REPRESENTATION in defense.surfaces:
        out["transform_representation"] = lambda g: defense.transform_representation(
            x.clone(), generator=g)
    if Surface.INPUT in defense.surfaces:
        out["transform_input"] = lambda g: defense.transform_input(x.clone(), generator=g)
    if Surface.AUDIO in defense.surfaces:
        out["transform_audio"] = lambda g: torch.from_numpy(np.asarray(defense.transform_audio(
            _test_audio(), AUDIO_RATE, generator=g), dtype=np.float32))
    return out


#: The sample rate of :func:`_test_audio`: a transform returns audio at the rate it was given,
#: so audio of another rate shows as another length.
AUDIO_RATE = 16_000


def _test_audio() -> np.ndarray:
    """One second of a voiced-like test signal: harmonics of 120 Hz with a little noise."""
    t = np.arange(AUDIO_RATE) / AUDIO_RATE
    harmonics = sum(np.sin(2 * np.pi * 120 * k * t) / k for k in range(1, 30))
    noise = np.random.default_rng(3).normal(0, 0.01, AUDIO_RATE)
    return (0.1 * harmonics + noise).astype(np.float32)


def _reference(name: str) -> list[torch.Tensor]:
    """What a transform's output must match in shape and dtype (its input, for most)."""
    if name == "client update":
        return _tensors(_client_update(NoDefense(), torch.Generator().manual_seed(7)))
    if name == "transform_audio":
        return [torch.from_numpy(_test_audio())]
    return [torch.randn(4, 1, 8, 20, generator=torch.Generator().manual_seed(1))]


def _tensors(value: Any) -> list[torch.Tensor]:
    return list(value.values()) if isinstance(value, dict) else [value]


def _global_state() -> tuple:
    return (torch.random.get_rng_state().clone(), np.random.get_state()[1].copy(),
            random.getstate())


def _same_state(a: tuple, b: tuple) -> bool:
    return torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def _checks(cls: type[Defense]) -> Iterator[Check]:
    try:
        defense = cls()
    except SerbenchError as exc:
        yield Check("defaults", False, f"the defaults are invalid: {exc}")
        return
    yield Check("defaults", True)
    params = defense.params()
    try:
        again = cls.from_params({k: "none" if v is None else str(v) for k, v in params.items()})
        ok = again.params() == params
        yield Check("parameters round-trip", ok,
                    "" if ok else f"from_params(params()) gave {again.params()}, not {params}")
    except SerbenchError as exc:
        yield Check("parameters round-trip", False, f"from_params(params()) failed: {exc}")
    try:
        cls.from_params({"no_such_parameter": "1"})
        yield Check("one-line errors", False, "an unknown parameter was accepted")
    except SerbenchError as exc:
        one_line = "\n" not in str(exc)
        yield Check("one-line errors", one_line, "" if one_line else "the error spans lines")
    yield from _declared(defense)
    for name, apply in _transforms(defense).items():
        before = _global_state()
        try:
            first = apply(torch.Generator().manual_seed(7))
            second = apply(torch.Generator().manual_seed(7))
        except Exception as exc:  # a user's hook: report it as a failed check
            yield Check(name, False, f"raised {type(exc).__name__}: {exc}")
            continue
        reference, got = _reference(name), _tensors(first)
        shaped = len(got) == len(reference) and all(
            isinstance(g, torch.Tensor) and g.shape == r.shape and g.dtype == r.dtype
            for g, r in zip(got, reference))
        rule = "keeps the length and sample rate" if name == "transform_audio" else \
            "keeps shapes and dtypes"
        yield Check(f"{name} {rule}", shaped,
                    "" if shaped else f"returned {[tuple(g.shape) for g in got]} "
                                      f"{[g.dtype for g in got]} for "
                                      f"{[tuple(r.shape) for r in reference]}")
        if name == "transform_audio":
            finite = bool(torch.isfinite(got[0]).all())
            yield Check(f"{name} returns finite audio", finite,
                        "" if finite else "its output holds NaN or infinite samples")
        same = all(torch.equal(a, b) for a, b in zip(got, _tensors(second)))
        yield Check(f"{name} is deterministic under its generator", same,
                    "" if same else "two calls with generators of the same seed differ")
        untouched = _same_state(before, _global_state())
        yield Check(f"{name} leaves the global RNG alone", untouched,
                    "" if untouched else "it drew from torch's, numpy's or Python's global RNG; "
                                         "draw only from the generator it is given")
    try:
        pickle.loads(pickle.dumps(defense))
        yield Check("pickles", True)
    except Exception:  # a class from a file pickles by value through cloudpickle (Flower)
        try:
            import cloudpickle

            cloudpickle.loads(cloudpickle.dumps(defense))
            yield Check("pickles", True)
        except Exception as exc:
            yield Check("pickles", False, f"{type(exc).__name__}: {exc}")


def _declared(defense: Defense) -> Iterator[Check]:
    """The tags' checks: every overridden hook declared, and randomness declared."""
    problems = undeclared(type(defense))
    yield Check("hooks act only where its tags declare", not problems, "; ".join(problems))
    try:
        problems = unrandomized(defense)
    except Exception as exc:  # a user's hook: report it as a failed check
        problems = [f"raised {type(exc).__name__}: {exc}"]
    yield Check("randomness declared", not problems, "; ".join(problems))


def check_defense(cls: type[Defense]) -> list[Check]:
    """Every check's outcome for ``cls`` (a :class:`Defense` subclass)."""
    return list(_checks(cls))


def assert_defense_conforms(cls: type[Defense]) -> None:
    """For a defense's own tests: raise with one line per failed check."""
    failed = [c for c in check_defense(cls) if not c.passed]
    if failed:
        raise AssertionError("\n".join(f"{c.name}: {c.reason}" for c in failed))
