"""memory.fsdp: 2 CPU processes (gloo) with the frozen base sharded by FSDP2 train the adapters of one process
on the combined batch, and their checkpoints resume on 1 or 2 processes into the same loss curve."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from test_distributed import PER_RANK, WORLD, _config, _model, _samples
from torch.distributed.tensor import DTensor

from dreamrelation.adapters.triplet import named_adapter_parameters
from dreamrelation.training.distributed import run_local_processes
from dreamrelation.training.trainer import train_adapters

STOP = 2  # the interrupted run stops after this step; the config trains 4


def _fsdp_config(batch_size: int):
    cfg = _config(rcl=True, batch_size=batch_size)
    cfg.memory.fsdp = True
    return cfg


def _train(out: Path, batch_size: int, resume: bool = False, stop: int | None = None):
    """Train (or resume) the tiny model; ``stop``: interrupt after that step, as Ctrl-C would."""

    def callback(step: int, loss: float) -> None:
        if stop is not None and step == stop:
            raise KeyboardInterrupt

    model = _model()
    try:
        result = train_adapters(
            model, _samples(), _fsdp_config(batch_size), out, progress=False, resume=resume, callback=callback
        )
    except KeyboardInterrupt:
        return model, None
    return model, result


def _adapters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in named_adapter_parameters(model).items()}


def _worker(rank: int, root: str) -> None:
    root_path = Path(root)
    model, result = _train(root_path / f"full-rank{rank}", PER_RANK)  # uninterrupted
    out = _adapters(model)
    out["losses"] = torch.tensor(result.losses, dtype=torch.float64)
    weight = model.transformer_blocks[0].attn1.to_q.base_layer.weight
    out["shard"] = torch.tensor(
        [isinstance(weight, DTensor), weight.to_local().numel(), weight.numel()], dtype=torch.int64
    )
    # interrupted after STOP steps (rank 0 writes the checkpoint), then resumed on these 2 ranks
    _train(root_path / "cut", PER_RANK, stop=STOP)
    dist.barrier()
    if rank == 0:
        shutil.copytree(root_path / "cut", root_path / "cut-two")
    dist.barrier()
    model, result = _train(root_path / "cut-two", PER_RANK, resume=True)
    out.update({f"resumed.{k}": v for k, v in _adapters(model).items()})
    out["resumed.losses"] = torch.tensor(result.losses, dtype=torch.float64)
    save_file(out, str(root_path / f"rank{rank}.safetensors"))


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    """Train, interrupt and resume on 2 forked CPU processes (gloo) with memory.fsdp=true."""
    root = tmp_path_factory.mktemp("fsdp")
    run_local_processes(_worker, WORLD, (str(root),))
    return root


def test_fsdp_shards_the_base_and_matches_one_process_on_the_combined_batch(
    two_ranks: Path, tmp_path
) -> None:
    ranks = [load_file(str(two_ranks / f"rank{r}.safetensors")) for r in range(WORLD)]
    for k in ranks[0]:
        assert torch.equal(ranks[0][k], ranks[1][k]), k  # identical adapters and logged losses everywhere
    is_dtensor, local, full = ranks[0]["shard"].tolist()
    assert is_dtensor and local * WORLD == full  # each rank holds half of a frozen base weight
    single, result = _train(tmp_path / "single", WORLD * PER_RANK)  # one process: fsdp is a no-op
    assert not isinstance(single.transformer_blocks[0].attn1.to_q.base_layer.weight, DTensor)
    moved = [n for n, p in _adapters(single).items() if ".lora_B." in n and p.abs().max() > 0]
    assert moved, "training did not update any adapter"
    for n, p in _adapters(single).items():
        torch.testing.assert_close(ranks[0][n], p, atol=1e-5, rtol=1e-4, msg=n)
    # losses are float32 sums over other reduction orders (two ranks vs one batch): float32, not float64, tolerance
    losses = torch.tensor(result.losses, dtype=torch.float64)
    torch.testing.assert_close(ranks[0]["losses"], losses, atol=1e-5, rtol=1e-5)
    assert (two_ranks / "full-rank0" / "adapters").is_dir()
    assert not any(p.is_file() for p in (two_ranks / "full-rank1").rglob("*"))  # only rank 0 writes


def test_fsdp_checkpoint_resumes_on_one_and_on_two_processes_into_the_same_curve(
    two_ranks: Path, tmp_path
) -> None:
    rank0 = load_file(str(two_ranks / "rank0.safetensors"))
    saved = sorted((two_ranks / "cut" / "checkpoints").glob("step_*.safetensors"))
    assert [p.name for p in saved] == [f"step_{STOP:06d}.safetensors"]
    torch.testing.assert_close(rank0["resumed.losses"], rank0["losses"])  # resumed on 2 == uninterrupted
    shutil.copytree(two_ranks / "cut", tmp_path / "cut-one")
    model, result = _train(tmp_path / "cut-one", WORLD * PER_RANK, resume=True)  # resumed on 1 process
    assert result.start_step == STOP
    torch.testing.assert_close(torch.tensor(result.losses, dtype=torch.float64), rank0["losses"])
    for n, p in _adapters(model).items():
        torch.testing.assert_close(rank0[f"resumed.{n}"], p, atol=1e-5, rtol=1e-4, msg=n)
