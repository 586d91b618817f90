"""Peak memory of `dreamrelation train DATA/` on a raw folder of long HD videos (issue 15: <= 3 GB).

Writes four 10 s 1280x720 30 fps videos (two moving subjects on a textured background) with colour-coded
mask videos and captions, then runs one training step on the default toy model in a child process and
reads the child's peak resident memory (``getrusage``). Before the raw folder went through `prepare`'s
streaming decode, the same command decoded every frame of every video and was killed at 24.4 GB.

    python benchmarks/raw_train_memory.py [--seconds 10] [--videos 4]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

TARGET_GB = 3.0
RESULTS = Path(__file__).parent / "results" / "raw_train_memory.json"
RED, GREEN = (230, 40, 40), (40, 200, 60)
MASK_COLOURS = ((255, 0, 0), (0, 255, 0))


def _encode(path: Path, frames, n: int, width: int, height: int, fps: int) -> None:
    with av.open(str(path), "w") as container:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "crf": "23"}
        for i in range(n):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frames(i), format="rgb24")))
        container.mux(stream.encode(None))


def _boxes(i: int, v: int, n: int, width: int, height: int) -> list[tuple[slice, slice]]:
    """Subject boxes of video ``v`` at frame ``i``: they walk past each other over the clip."""
    x = int((width - 400) * i / max(n - 1, 1))
    top = height // 3 + 20 * v
    return [
        (slice(top, top + 200), slice(x, x + 160)),
        (slice(top, top + 200), slice(width - x - 160, width - x)),
    ]


def _painted(base: np.ndarray, boxes: list[tuple[slice, slice]], colours) -> np.ndarray:
    img = base.copy()
    for box, colour in zip(boxes, colours, strict=True):
        img[box] = colour
    return img


def write_folder(
    root: Path, videos: int, seconds: float, width: int = 1280, height: int = 720, fps: int = 30
):
    """``videos`` exemplars: NAME.mp4, NAME.txt, masks/NAME.mp4 (colour-coded) and masks/NAME.json."""
    background = np.random.default_rng(0).integers(20, 90, (height, width, 3), dtype=np.uint8)
    black = np.zeros_like(background)
    n = int(seconds * fps)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for v in range(videos):
        boxes = [_boxes(i, v, n, width, height) for i in range(n)]
        name = f"clip{v}"
        _encode(
            root / f"{name}.mp4",
            lambda i, b=boxes: _painted(background, b[i], (RED, GREEN)),
            n,
            width,
            height,
            fps,
        )
        _encode(
            root / "masks" / f"{name}.mp4",
            lambda i, b=boxes: _painted(black, b[i], MASK_COLOURS),
            n,
            width,
            height,
            fps,
        )
        (root / "masks" / f"{name}.json").write_text(
            json.dumps({"subject1": [255, 0, 0], "subject2": [0, 255, 0]})
        )
        (root / f"{name}.txt").write_text("A red person is passing a green person.\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--videos", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data, run = Path(tmp) / "data", Path(tmp) / "run"
        began = time.perf_counter()
        write_folder(data, args.videos, args.seconds)
        written = time.perf_counter() - began
        size_mb = sum(p.stat().st_size for p in data.rglob("*") if p.is_file()) / 1e6
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [
            sys.executable,
            "-m",
            "dreamrelation.cli",
            "train",
            str(data),
            "optim.steps=1",
            "optim.warmup_steps=0",
            "--out",
            str(run),
        ]
        began = time.perf_counter()
        result = subprocess.run(cmd, capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - began
        if result.returncode != 0:
            sys.exit(f"train failed ({result.returncode}): {result.stderr[-2000:]}")
        peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2  # kB on Linux
    row = {
        "videos": args.videos,
        "seconds_each": args.seconds,
        "resolution": "1280x720",
        "fps": 30,
        "folder_mb": round(size_mb, 1),
        "peak_rss_gb": round(peak_gb, 3),
        "target_gb": TARGET_GB,
        "passed": peak_gb <= TARGET_GB,
        "train_seconds": round(seconds, 1),
        "write_seconds": round(written, 1),
    }
    print("| videos | each | folder | peak RSS | target | train (prepare + 1 step) |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {args.videos} x 1280x720 30 fps | {args.seconds:g} s | {size_mb:.0f} MB | {peak_gb:.2f} GB | "
        f"<= {TARGET_GB:g} GB ({'PASS' if row['passed'] else 'FAIL'}) | {seconds:.0f} s |"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(row, indent=2) + "\n")


if __name__ == "__main__":
    main()
