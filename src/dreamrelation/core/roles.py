"""The relation LoRA triplet's roles: projection kinds, attention streams, placement (role -> kinds)."""

from __future__ import annotations

from dataclasses import dataclass, field

PROJECTIONS = ("q", "k", "v", "out")
STREAMS = ("visual", "text")
HMT_CHOICES = ("relation", "subject1", "subject2")
#: The roles applied at inference when nothing else is recorded or asked for (the paper's choice).
PAPER_ROLES = ("relation", "output")


def _paper_placement() -> dict[str, list[str]]:
    return {"relation": ["q", "k"], "subject1": ["v"], "subject2": ["v"], "output": ["out"]}


@dataclass
class AdapterConfig:
    """Which LoRA adapters exist (role -> projection kinds), on which attention streams, and their size."""

    rank: int = 16
    alpha: float = 16.0
    streams: list[str] = field(default_factory=lambda: ["visual", "text"])
    placement: dict[str, list[str]] = field(default_factory=_paper_placement)
    inference_roles: list[str] = field(default_factory=lambda: list(PAPER_ROLES))
