"""What the folder commands (``prepare``, ``masks``) share: the video listing and the report's common part."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dreamrelation.utils.media import VIDEO_SUFFIXES


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


def video_files(folder: Path, problems: list[str]) -> list[Path]:
    """The videos of ``folder`` by name (sorted); a second video of the same name adds a problem line."""
    seen: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES:
            if p.stem in seen:
                problems.append(f"{p}: two videos named {p.stem!r}; rename one of them.")
                continue
            seen[p.stem] = p
    return list(seen.values())
