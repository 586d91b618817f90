"""What a run over a folder of videos did (``prepare``, ``masks``): the shared part of their reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class FolderReport:
    """Videos skipped (already done), one line per problem, wall time; ``ok`` when there was no problem."""

    out: Path
    skipped: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when every input was usable."""
        return not self.problems
