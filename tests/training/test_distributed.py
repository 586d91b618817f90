"""Data-parallel training: 2 CPU processes (gloo) reproduce one process with the combined batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import MochiTransformer3DModel
from safetensors.torch import load_file, save_file
from tiny import TINY_TRANSFORMER

from dreamrelation.adapters.triplet import named_adapter_parameters
from dreamrelation.backbones.block_swap import swapped_blocks
from dreamrelation.core.samples import TrainingSample
from dreamrelation.training.config import TrainConfig
from dreamrelation.training.distributed import DistContext, launch_command, run_local_processes
from dreamrelation.training.trainer import train_adapters

WORLD = 2
PER_RANK = 2
TINY = TINY_TRANSFORMER


def _model() -> MochiTransformer3DModel:
    torch.manual_seed(0)
    return MochiTransformer3DModel(**TINY)


def _samples(n: int = 5) -> list[TrainingSample]:
    g = torch.Generator().manual_seed(3)
    out = []
    for i in range(n):
        masks = torch.zeros(2, 3, 4, 4)
        masks[0, :, :2] = 1.0
        masks[1, :, 2:] = 1.0
        out.append(
            TrainingSample(
                latents=torch.randn(12, 3, 4, 4, generator=g),
                prompt_embeds=torch.randn(8, 32, generator=g),
                prompt_mask=torch.arange(8) < 5 + i % 3,
                masks=masks,
                latent_logvar=torch.full((12, 3, 4, 4), -3.0),
                name=f"v{i}",
            )
        )
    return out


def _config(rcl: bool, batch_size: int, swap: int = 0) -> TrainConfig:
    cfg = TrainConfig()
    cfg.memory.blocks_to_swap = swap
    cfg.contrastive.enabled = rcl
    cfg.optim.steps = 4
    cfg.optim.warmup_steps = 1
    cfg.optim.lr = 1e-3
    cfg.optim.batch_size = batch_size
    cfg.optim.checkpoint_every = 2
    cfg.optim.caption_dropout = 0.3  # exercise the per-sample noise path
    return cfg


def _run(
    rcl: bool, batch_size: int, out: Path, swap: int = 0
) -> tuple[dict[str, torch.Tensor], list[float], list[str]]:
    model = _model()
    result = train_adapters(model, _samples(), _config(rcl, batch_size, swap), out, progress=False)
    weights = {n: p.detach().clone() for n, p in named_adapter_parameters(model).items()}
    swap_state = swapped_blocks(model)
    weights["fetches"] = torch.tensor(swap_state.fetches if swap_state else 0)  # blocks streamed in
    return weights, result.losses, result.choices


def _worker(rank: int, root: str) -> None:
    for name, rcl, swap in (("rcl0", False, 0), ("rcl1", True, 0), ("swap1", True, 1)):
        # rank 1 gets its own run folder, which must stay empty: only rank 0 writes
        weights, losses, choices = _run(rcl, PER_RANK, Path(root) / f"run-{name}-rank{rank}", swap)
        weights["losses"] = torch.tensor(losses, dtype=torch.float64)
        weights["choices"] = torch.tensor([len(c) for c in choices])
        save_file(weights, str(Path(root) / f"{name}-rank{rank}.safetensors"))


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    """Train on 2 forked CPU processes (gloo) with and without RCL, and with a swapped block; one file of results
    per rank and run."""
    root = tmp_path_factory.mktemp("ddp")
    run_local_processes(_worker, WORLD, (str(root),))
    return root


@pytest.mark.parametrize(("name", "rcl"), [("rcl0", False), ("rcl1", True), ("swap1", True)])
def test_two_ranks_match_one_process_with_the_combined_batch(
    two_ranks: Path, tmp_path, name: str, rcl: bool
) -> None:
    """``swap1``: each rank swaps a block (memory.blocks_to_swap=1), the one process does not."""
    ranks = [load_file(str(two_ranks / f"{name}-rank{r}.safetensors")) for r in range(WORLD)]
    # (a) identical adapters (and logged global losses) on every rank
    assert ranks[0].keys() == ranks[1].keys()
    for k in ranks[0]:
        assert torch.equal(ranks[0][k], ranks[1][k]), k
    # (b) equal to one process trained on the global batch (2 x per-rank batch)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single, losses, _ = _run(rcl, WORLD * PER_RANK, tmp_path / "single")
    finally:
        torch.set_num_threads(threads)
    assert (ranks[0]["fetches"] > 0) == (name == "swap1") and single.pop("fetches") == 0
    moved = {n: p for n, p in single.items() if ".lora_B." in n and p.abs().max() > 0}
    assert moved, "training did not update any adapter"
    for n, p in single.items():
        torch.testing.assert_close(ranks[0][n], p, atol=1e-5, rtol=1e-4, msg=n)
    torch.testing.assert_close(
        ranks[0]["losses"], torch.tensor(losses, dtype=torch.float64), atol=1e-5, rtol=1e-5
    )
    # only rank 0 wrote checkpoints / adapters / loss.csv
    rank0, rank1 = (two_ranks / f"run-{name}-rank{r}" for r in range(WORLD))
    assert (rank0 / "adapters").is_dir() and (rank0 / "loss.csv").is_file()
    assert not any(p.is_file() for p in rank1.rglob("*"))


def test_shard_and_single_process_context() -> None:
    ctx = DistContext(rank=1, world_size=2)
    assert ctx.shard([5, 6, 7, 8]) == [7, 8] and not ctx.is_main and ctx.enabled
    assert not DistContext().enabled and DistContext().mean(torch.ones(2)).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError):
        ctx.shard([1, 2, 3])


def test_launch_command_runs_the_cli_module(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cmd = launch_command(4, ["train", "data", "--out", "runs/x"], main_process_port=29555)
    assert cmd[-6:] == ["-m", "dreamrelation.cli", "train", "data", "--out", "runs/x"]
    assert "--num_processes" in cmd and cmd[cmd.index("--num_processes") + 1] == "4"
    assert "29555" in cmd and "--multi_gpu" in cmd
