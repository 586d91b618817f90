"""generate on 2 CPU processes (gloo): the prompts x seeds are split, and the folder equals one process's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import dreamrelation.inference.generate as generate
from dreamrelation.inference.generate import GenerationConfig, generate_to_folder
from dreamrelation.training.distributed import run_local_processes

WORLD = 2
PROMPTS = ["A red circle is high-fiving a blue square.", "A bear is shaking hands with a raccoon."]
SEEDS = [3, 4]  # 4 jobs; with 3 prompts below the split is uneven (2 + 1)


def _config(bundle: Path, out: Path, prompts: list[str]) -> GenerationConfig:
    return GenerationConfig(model=bundle, out_dir=out, prompts=prompts, seeds=SEEDS, steps=2)


def _worker(rank: int, bundle: str, root: str, prompts: list[str]) -> None:
    sampled: list[int] = []
    real = generate._write_one

    def counting(run, pipe, n, *args, **kwargs):
        sampled.append(n)
        return real(run, pipe, n, *args, **kwargs)

    generate._write_one = counting  # a forked child: the parent's module is untouched
    result = generate_to_folder(_config(Path(bundle), Path(root) / "two", prompts))
    np.save(Path(root) / f"frames{rank}.npy", np.stack(result.frames))
    (Path(root) / f"sampled{rank}.json").write_text(json.dumps(sampled))


def _sidecar(path: Path) -> dict:
    data = json.loads(path.read_text())
    data.pop("seconds")  # wall time differs run to run
    return data


@pytest.mark.parametrize("prompts", [PROMPTS, [*PROMPTS, "A cat is hugging a dog."]], ids=["even", "uneven"])
def test_two_processes_write_the_single_process_folder(tiny_bundle: Path, tmp_path: Path, prompts) -> None:
    run_local_processes(_worker, WORLD, (str(tiny_bundle), str(tmp_path), prompts))
    single = generate_to_folder(_config(tiny_bundle, tmp_path / "one", prompts))
    two, one = tmp_path / "two", tmp_path / "one"
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    assert len(single.videos) == len(prompts) * len(SEEDS)
    for path in one.glob("*.json"):
        if path.name == "manifest.json":
            assert json.loads((two / path.name).read_text()) == json.loads(path.read_text())
        else:
            assert _sidecar(two / path.name) == _sidecar(path), path.name
    expected = np.stack(single.frames)
    for rank in range(WORLD):  # every process ends with all the frames, in job order
        np.testing.assert_array_equal(np.load(tmp_path / f"frames{rank}.npy"), expected)
    shares = [json.loads((tmp_path / f"sampled{r}.json").read_text()) for r in range(WORLD)]
    half = (len(single.videos) + 1) // 2  # each process sampled only its contiguous share
    assert shares == [list(range(half)), list(range(half, len(single.videos)))]
