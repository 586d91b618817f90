"""generate on 2 CPU processes (gloo): the prompts x seeds are split (or, with context parallelism, each
video's tokens), and the folder equals one process's."""

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


def _context_parallel_worker(rank: int, bundle: str, root: str) -> None:
    import torch

    # diffusers divides the rank by the accelerator count to pick a device; 0 on a CPU
    torch.accelerator.device_count = lambda: 1
    cfg = _config(Path(bundle), Path(root) / "two", PROMPTS[:1])
    cfg.context_parallel, cfg.adapters = True, Path(root) / "adapters"
    seen = []
    real = generate.enable_context_parallel
    generate.enable_context_parallel = lambda *a: seen.append(a[1:]) or real(*a)  # a forked child's module
    result = generate_to_folder(cfg)
    if rank == 0:
        np.save(Path(root) / "cp_frames.npy", np.stack(result.frames))
    (Path(root) / f"cp{rank}.json").write_text(json.dumps({"calls": seen, "videos": len(result.videos)}))


def test_context_parallel_processes_sample_each_video_together(tiny_wan_bundle: Path, tmp_path: Path) -> None:
    from diffusers import WanTransformer3DModel
    from test_generate import make_adapters

    make_adapters(
        WanTransformer3DModel.from_pretrained(tiny_wan_bundle / "transformer"), tmp_path / "adapters"
    )
    run_local_processes(_context_parallel_worker, WORLD, (str(tiny_wan_bundle), str(tmp_path)))
    one_process = _config(tiny_wan_bundle, tmp_path / "one", PROMPTS[:1])
    one_process.adapters = tmp_path / "adapters"
    single = generate_to_folder(one_process)
    two, one = tmp_path / "two", tmp_path / "one"
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    for path in one.glob("*_seed*.json"):
        assert _sidecar(two / path.name) == _sidecar(path), path.name
    # the same videos from tokens split over two processes
    diff = np.abs(np.load(tmp_path / "cp_frames.npy").astype(int) - np.stack(single.frames).astype(int))
    assert diff.max() <= 1  # float rounding of a different split; the MP4 codec can amplify it, so frames
    tokens = generate.video_tokens(generate.load_pipeline(tiny_wan_bundle), 25, 64, 64)
    for rank in range(WORLD):  # both processes split the tokens; both sampled every video, rank 0 wrote them
        record = json.loads((tmp_path / f"cp{rank}.json").read_text())
        assert record["calls"] == [[WORLD, tokens]] and tokens % WORLD == 0
        assert record["videos"] == (len(single.videos) if rank == 0 else 0)


def test_context_parallel_refuses_mochi_and_uneven_splits(
    tiny_bundle: Path, tiny_wan_bundle: Path, monkeypatch
) -> None:
    import torch

    from dreamrelation.errors import UserError

    wan = generate.load_pipeline(tiny_wan_bundle).transformer
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="--context-parallel needs GPUs"):
            generate.enable_context_parallel(wan, 2, 64)
        monkeypatch.setattr(torch.accelerator, "device_count", lambda: 1)  # as on one GPU

    mochi = generate.load_pipeline(tiny_bundle).transformer
    with pytest.raises(UserError, match="no context-parallel plan for MochiTransformer3DModel"):
        generate.enable_context_parallel(mochi, 2, 64)
    heads = wan.config.num_attention_heads
    with pytest.raises(UserError, match=f"the {heads} attention heads do not split evenly"):
        generate.enable_context_parallel(wan, heads + 1, 64 * (heads + 1))
    with pytest.raises(UserError, match="the 63 video tokens do not split evenly"):
        generate.enable_context_parallel(wan, 2, 63)
