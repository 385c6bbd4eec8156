"""`serbench check-defense`: the conformance suite passes every built-in defense and the guide's
template, and names each broken rule of a broken defense in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from serbench.registry import load_plugin
from serbench.testing import assert_defense_conforms, check_defense, contract_problems

REPO = Path(__file__).resolve().parents[1]
BROKEN = '''
from dataclasses import dataclass
from typing import ClassVar
import torch
from serbench.plugins import Defense, Surface, Tags

@dataclass
class Broken(Defense):
    name: ClassVar[str] = "broken"
    summary: ClassVar[str] = "changes shapes and uses the global RNG"
    tags: ClassVar[Tags] = Tags(surfaces={Surface.REPRESENTATION}, randomized=True)

    def transform_representation(self, h, *, generator):
        return (h + torch.randn(h.shape)).flatten(1)
'''


@pytest.mark.parametrize("name", ["none", "udp", "udp-ref", "dpsgd", "noise", "adv", "prune", "grl",
                                  "recup"])
def test_every_built_in_defense_conforms(name: str) -> None:
    assert_defense_conforms(load_plugin("defense", name))


def test_the_guides_template_passes_on_the_command_line() -> None:
    proc = subprocess.run([sys.executable, "-c", "from serbench.cli import main; main()",
                           "check-defense",
                           str(REPO / "docs/templates/defense_template.py") + ":MyDefense"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "checks passed" in proc.stdout


def test_a_broken_defense_fails_with_one_line_per_rule(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text(BROKEN)
    failed = {c.name: c.reason for c in
              check_defense(load_plugin("defense", f"{tmp_path / 'broken.py'}:Broken"))
              if not c.passed}
    assert set(failed) == {"transform_representation keeps shapes and dtypes",
                           "transform_representation is deterministic under its generator",
                           "transform_representation leaves the global RNG alone"}
    assert all(reason and "\n" not in reason for reason in failed.values())
    proc = subprocess.run([sys.executable, "-c", "from serbench.cli import main; main()",
                           "check-defense", f"{tmp_path / 'broken.py'}:Broken"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "3 of" in proc.stdout


SNEAKY = '''
from dataclasses import dataclass
from typing import ClassVar
import torch
from serbench.plugins import Defense, Surface, Tags

@dataclass
class Sneaky(Defense):
    """Noise on T's input, declared nowhere: the adaptive attacker would never simulate it."""
    name: ClassVar[str] = "sneaky"
    summary: ClassVar[str] = "undeclared input noise"

    def transform_input(self, x, *, generator):
        return x + 0.1 * torch.randn(x.shape, generator=generator)

@dataclass
class Unrandomized(Defense):
    """Declares its surface but not that its output varies with the generator."""
    name: ClassVar[str] = "unrandomized"
    summary: ClassVar[str] = "noise on h_T, randomness undeclared"
    tags: ClassVar[Tags] = Tags(surfaces={Surface.REPRESENTATION})

    def transform_representation(self, h, *, generator):
        return h + 0.1 * torch.randn(h.shape, generator=generator)

@dataclass
class OldStyle(Defense):
    """Written for the contract before tags: its declaration would be silently ignored."""
    name: ClassVar[str] = "old-style"
    summary: ClassVar[str] = "surfaces as a class attribute"
    surfaces: ClassVar[frozenset] = frozenset({Surface.UPDATE})
'''


def test_a_defense_that_does_more_than_it_declares_fails_and_is_refused(tmp_path: Path) -> None:
    """A hook of an undeclared surface, or undeclared randomness, fails check-defense with a
    line naming the hook and what is missing, and `serbench eval` refuses it in one line
    before any work."""
    path = tmp_path / "sneaky.py"
    path.write_text(SNEAKY)
    reasons = {}
    for name in ("Sneaky", "Unrandomized", "OldStyle"):
        failed = [c for c in check_defense(load_plugin("defense", f"{path}:{name}"))
                  if not c.passed]
        assert len(failed) == 1 and "\n" not in failed[0].reason, failed
        reasons[name] = failed[0].reason
    assert "transform_input" in reasons["Sneaky"] and "input surface" in reasons["Sneaky"]
    assert ("transform_representation" in reasons["Unrandomized"]
            and "randomized=True" in reasons["Unrandomized"])
    assert "'surfaces'" in reasons["OldStyle"] and "Tags(surfaces=" in reasons["OldStyle"]
    proc = subprocess.run([sys.executable, "-c", "from serbench.cli import main; main()",
                           "check-defense", f"{path}:Sneaky"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "transform_input" in proc.stdout
    for name in ("Sneaky", "Unrandomized"):
        proc = subprocess.run([sys.executable, "-c", "from serbench.cli import main; main()",
                               "eval", "--attack", "pgd", "--defense", f"{path}:{name}",
                               "--out", str(tmp_path / name)],
                              capture_output=True, text=True, timeout=120)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert "does more than it declares" in lines[0] and "Traceback" not in proc.stderr
        assert not (tmp_path / name).exists()  # refused before any work


CAPABILITIES = '''
from dataclasses import dataclass
from typing import ClassVar
from serbench.plugins import Defense, Guarantee, Surface, Tags

@dataclass
class Peeking(Defense):
    """Expects the client's gender without declaring it: it would never be given it."""
    name: ClassVar[str] = "peeking"
    summary: ClassVar[str] = "undeclared attribute"
    tags: ClassVar[Tags] = Tags(surfaces={Surface.UPDATE})

    def privatize_update(self, update, *, generator, attribute):
        return update

@dataclass
class Deaf(Defense):
    """Declares the attribute, but its hook cannot take it."""
    name: ClassVar[str] = "deaf"
    summary: ClassVar[str] = "declared attribute, no keyword"
    tags: ClassVar[Tags] = Tags(surfaces={Surface.UPDATE}, reads_attribute=True)

    def privatize_update(self, update, *, generator):
        return update

@dataclass
class Offline(Defense):
    """Declares public data where it is never given (no FL calibration)."""
    name: ClassVar[str] = "offline"
    summary: ClassVar[str] = "public data off the update surface"
    tags: ClassVar[Tags] = Tags(surfaces={Surface.REPRESENTATION}, public_data=True)

    def calibrate(self, *, rounds, sample_rate, participations=None, public=None):
        return Guarantee()
'''


@pytest.mark.parametrize("name, fragments", [
    ("Peeking", ("privatize_update takes 'attribute'", "reads_attribute=True")),
    ("Deaf", ("reads_attribute=True", "privatize_update takes no 'attribute'")),
    ("Offline", ("public_data=True", "Surface.UPDATE")),
])
def test_a_capability_used_against_its_tags_fails_with_the_rule(tmp_path: Path, name: str,
                                                                  fragments: tuple) -> None:
    """The new capabilities (issue 24): a hook expecting the attribute or public data its tags
    do not declare, a tag its hooks cannot take, or public data off the update surface fails
    the tags' check in one line naming the rule, and the runner refuses it."""
    path = tmp_path / "capabilities.py"
    path.write_text(CAPABILITIES)
    cls = load_plugin("defense", f"{path}:{name}")
    failed = {c.name: c.reason for c in check_defense(cls) if not c.passed}
    reason = failed["hooks act only where its tags declare"]
    assert all(f in reason for f in fragments) and "\n" not in reason, reason
    assert all("\n" not in r for r in failed.values())
    assert contract_problems(cls())
