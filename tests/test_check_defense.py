"""`serbench check-defense`: the conformance suite passes every built-in defense and the guide's
template, and names each broken rule of a broken defense in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from serbench.registry import load_plugin
from serbench.testing import assert_defense_conforms, check_defense

REPO = Path(__file__).resolve().parents[1]
BROKEN = '''
from dataclasses import dataclass
from typing import ClassVar
import torch
from serbench.plugins import Defense, Surface

@dataclass
class Broken(Defense):
    name: ClassVar[str] = "broken"
    summary: ClassVar[str] = "changes shapes and uses the global RNG"
    surfaces: ClassVar[frozenset] = frozenset({Surface.REPRESENTATION})
    randomized: ClassVar[bool] = True

    def transform_representation(self, h, *, generator):
        return (h + torch.randn(h.shape)).flatten(1)
'''


@pytest.mark.parametrize("name", ["none", "udp", "udp-ref", "dpsgd", "noise", "adv"])
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
