"""NTU RGB+D 120's two-person relations (A50-A60, A106-A120) and selection from a user's download.

The data set cannot be redistributed: ``dreamrelation data ntu --src DIR --relation A58 --num 25`` picks
videos of one relation from a local copy (file names like ``S001C001P001R001A058_rgb.avi``), spreading
the choice over setups, cameras and performer pairs, and writes the folder layout ``prepare``/``train``
read: ``videos/NAME.ext`` (a symlink, or a copy) with a ``videos/NAME.txt`` caption in the paper's style.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from dreamrelation.errors import UserError
from dreamrelation.utils.io import atomic_write_text

# action id -> verb phrase, used as "A person is {phrase} a person." (the paper's caption style)
NTU_RELATIONS: dict[int, str] = {
    50: "punching",
    51: "kicking",
    52: "pushing",
    53: "patting on the back of",
    54: "pointing a finger at",
    55: "hugging",
    56: "giving an object to",
    57: "touching the pocket of",
    58: "shaking hands with",
    59: "walking towards",
    60: "walking apart from",
    106: "hitting with an object",
    107: "wielding a knife towards",
    108: "knocking over",
    109: "grabbing the stuff of",
    110: "shooting with a gun at",
    111: "stepping on the foot of",
    112: "high-fiving with",
    113: "cheering and drinking with",
    114: "carrying an object with",
    115: "taking a photo of",
    116: "following",
    117: "whispering in the ear of",
    118: "exchanging things with",
    119: "supporting",
    120: "playing rock-paper-scissors with",
}
NTU_NAME = re.compile(r"S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})", re.IGNORECASE)
VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".mov")  # the containers NTU RGB+D ships


@dataclass(frozen=True)
class NtuVideo:
    """One NTU file and the fields of its name."""

    path: Path
    setup: int
    camera: int
    performer: int
    replication: int
    action: int


def parse_relation(relation: str | int) -> int:
    """``"A58"``, ``"a058"``, ``"58"`` or ``58`` -> 58; an unknown or one-person action is a UserError."""
    text = str(relation).strip().upper().lstrip("A")
    if not text.isdigit() or int(text) not in NTU_RELATIONS:
        known = ", ".join(f"A{a}" for a in NTU_RELATIONS)
        raise UserError(f"--relation {relation!r}: not a two-person NTU relation; choose one of {known}")
    return int(text)


def caption(action: int) -> str:
    """The paper-style caption of an NTU relation, e.g. ``A person is shaking hands with a person.``"""
    return f"A person is {NTU_RELATIONS[action]} a person."


def scan(src: str | Path) -> list[NtuVideo]:
    """Every NTU-named video file under ``src`` (recursively), sorted by name."""
    src = Path(src)
    if not src.is_dir():
        raise UserError(f"{src}: not a folder; pass the folder holding your NTU RGB+D videos")
    found = []
    for path in sorted(src.rglob("*")):
        match = NTU_NAME.search(path.name)
        if match and path.suffix.lower() in VIDEO_SUFFIXES and path.is_file():
            s, c, p, r, a = (int(g) for g in match.groups())
            found.append(NtuVideo(path, s, c, p, r, a))
    return found


def select(videos: list[NtuVideo], action: int, num: int) -> list[NtuVideo]:
    """Up to ``num`` videos of ``action``, round-robin over (setup, performer pair) groups for diversity."""
    groups: dict[tuple[int, int], list[NtuVideo]] = {}
    for video in videos:
        if video.action == action:
            groups.setdefault((video.setup, video.performer), []).append(video)
    chosen: list[NtuVideo] = []
    queues = [sorted(g, key=lambda v: (v.camera, v.replication)) for _, g in sorted(groups.items())]
    while len(chosen) < num and any(queues):
        for queue in queues:
            if queue and len(chosen) < num:
                chosen.append(queue.pop(0))
    return chosen


def write_ntu_folder(
    src: str | Path, out: str | Path, relation: str | int, num: int = 25, copy: bool = False
) -> list[Path]:
    """Select ``num`` videos of ``relation`` from ``src`` into ``out/videos`` with captions; returns the videos."""
    action = parse_relation(relation)
    chosen = select(scan(src), action, num)
    if not chosen:
        raise UserError(
            f"{src}: no video of A{action:03d} ({NTU_RELATIONS[action]}) found; expected names like "
            f"S001C001P001R001A{action:03d}_rgb.avi"
        )
    videos_dir = Path(out) / "videos"
    videos_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for video in chosen:
        target = videos_dir / (video.path.stem + video.path.suffix.lower())
        if target.exists() or target.is_symlink():
            target.unlink()
        if copy:
            shutil.copyfile(video.path, target)
        else:
            os.symlink(video.path.resolve(), target)
        atomic_write_text(target.with_suffix(".txt"), caption(action) + "\n")
        written.append(target)
    return written
