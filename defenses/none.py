"""The undefended baseline every table starts from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from serbench.plugins import Defense


@dataclass
class NoDefense(Defense):
    name: ClassVar[str] = "none"
    summary: ClassVar[str] = "no defense: the undefended baseline"
