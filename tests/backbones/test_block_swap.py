"""memory.blocks_to_swap on the CPU: the movement hooks really run, copies die when autograd is done with
them, and training is bit-identical to the same run without swapping."""

from __future__ import annotations

import weakref

import pytest
import torch
from diffusers import MochiTransformer3DModel, WanTransformer3DModel
from tiny import TINY_TRANSFORMER, TINY_WAN

import dreamrelation.training.memory as memory
from dreamrelation.adapters.triplet import (
    adapter_parameters,
    add_relation_adapters,
    named_adapter_parameters,
    set_active_roles,
)
from dreamrelation.backbones.block_swap import swapped_blocks
from dreamrelation.core.roles import AdapterConfig
from dreamrelation.core.samples import TrainingSample
from dreamrelation.errors import UserError
from dreamrelation.training.config import MemoryConfig, TrainConfig
from dreamrelation.training.trainer import train_adapters

CPU = torch.device("cpu")


def tiny(layers: int = 3) -> MochiTransformer3DModel:
    torch.manual_seed(0)
    return MochiTransformer3DModel(**{**TINY_TRANSFORMER, "num_layers": layers})


def samples(channels: int = 12, n: int = 4) -> list[TrainingSample]:
    g = torch.Generator().manual_seed(1)
    masks = torch.zeros(2, 3, 4, 4)
    masks[0, :, :2] = 1.0
    masks[1, :, 2:] = 1.0
    return [
        TrainingSample(
            latents=torch.randn(channels, 3, 4, 4, generator=g),
            prompt_embeds=torch.randn(8, 32, generator=g),
            prompt_mask=torch.arange(8) < 6,
            masks=masks,
            name=f"video{i}",
        )
        for i in range(n)
    ]


def config(**mem: object) -> TrainConfig:
    cfg = TrainConfig()
    cfg.optim.steps, cfg.optim.warmup_steps, cfg.optim.batch_size, cfg.optim.lr = 4, 1, 2, 1e-2
    cfg.optim.checkpoint_every = 0
    cfg.memory = MemoryConfig(**mem)  # type: ignore[arg-type]
    return cfg


def _forward_backward(model: torch.nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    out = model(
        hidden_states=torch.randn(2, 12, 3, 4, 4, generator=g),
        encoder_hidden_states=torch.randn(2, 8, 32, generator=g),
        timestep=torch.tensor([100, 700]),
        encoder_attention_mask=torch.ones(2, 8, dtype=torch.bool),
        return_dict=False,
    )[0]
    return out.square().mean()


def _with_adapters(swap: int) -> MochiTransformer3DModel:
    model = tiny().requires_grad_(False)
    torch.manual_seed(1)
    cfg = AdapterConfig()
    add_relation_adapters(model, cfg)
    set_active_roles(model, list(cfg.placement))
    memory.apply_memory_modes(model, MemoryConfig(blocks_to_swap=swap, checkpoint_blocks=3), False, CPU)
    model.train()
    return model


def test_hooks_stream_every_swapped_block_in_for_forward_and_recompute_and_drop_the_copies() -> None:
    model = _with_adapters(swap=2)
    swap = swapped_blocks(model)
    assert swap is not None and swap.blocks == list(model.transformer_blocks[1:])
    layer = model.transformer_blocks[2].attn1.to_q.base_layer
    master = layer.weight.data
    seen: list[weakref.ref] = []

    def record(module: torch.nn.Module, args: object) -> None:
        assert module.weight.data_ptr() != master.data_ptr()  # computing on a staged copy
        torch.testing.assert_close(module.weight.data, master, rtol=0, atol=0)
        seen.append(weakref.ref(module.weight.data))

    layer.register_forward_pre_hook(record)
    loss = _forward_backward(model)
    assert swap.fetches == 2 and len(seen) == 1  # two swapped blocks, forward only so far
    assert layer.weight.data_ptr() == master.data_ptr()  # back on the master after its forward
    assert seen[0]() is None  # the forward's copy is gone: the checkpointed block kept only its inputs
    loss.backward()
    assert swap.fetches == 4 and len(seen) == 2  # the backward recomputed both blocks, streaming them again
    assert seen[1]() is None and layer.weight.data_ptr() == master.data_ptr()
    lora = model.transformer_blocks[2].attn1.to_q.lora_A["relation"].weight
    assert lora.grad is not None and layer.weight.grad is None  # adapters train, the base stays frozen
    assert all(p.data_ptr() != master.data_ptr() for p in adapter_parameters(model)["relation"])


def test_gradients_are_bitwise_those_without_swapping() -> None:
    grads = []
    for n in (0, 2):
        model = _with_adapters(swap=n)
        _forward_backward(model).backward()
        grads.append({k: p.grad for k, p in named_adapter_parameters(model).items() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for k in grads[0]:
        assert torch.equal(grads[0][k], grads[1][k]), k


@pytest.mark.parametrize("arch", ["mochi", "wan", "mochi_fp8"])
def test_training_with_swapped_blocks_is_bitwise_the_same_run(tmp_path, arch: str) -> None:
    fp8 = arch == "mochi_fp8"  # fp8 storage: the swapped masters are fp8, cast per layer after staging

    def build() -> torch.nn.Module:
        if arch != "wan":
            return tiny()
        torch.manual_seed(0)
        return WanTransformer3DModel(**{**TINY_WAN, "num_layers": 3})

    channels = 4 if arch == "wan" else 12
    runs = {}
    for n in (0, 3):
        model = build()
        result = train_adapters(
            model,
            samples(channels),
            config(blocks_to_swap=n, checkpoint_blocks=3, fp8_base=fp8),
            tmp_path / str(n),
            False,
        )
        runs[n] = (result.losses, {k: p.detach().clone() for k, p in named_adapter_parameters(model).items()})
        assert (swapped_blocks(model) is not None) == (n > 0)
    assert runs[0][0] == runs[3][0]
    assert any(p.abs().max() > 0 for k, p in runs[3][1].items() if ".lora_B." in k)  # adapters trained
    for k, p in runs[0][1].items():
        assert torch.equal(p, runs[3][1][k]), k
    plain = train_adapters(build(), samples(channels), config(fp8_base=fp8), tmp_path / "plain", False)
    assert plain.losses == pytest.approx(runs[3][0], rel=1e-5)  # and close to no checkpointing at all


def test_swapped_blocks_are_checkpointed_even_without_checkpoint_blocks(monkeypatch, tmp_path) -> None:
    calls: list[int] = []
    real = memory.checkpoint

    def counting(fn, *args, **kwargs):
        calls.append(id(fn.__self__))
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(memory, "checkpoint", counting)
    model = tiny()
    train_adapters(model, samples(), config(blocks_to_swap=1, checkpoint_blocks=0), tmp_path, False)
    assert calls and set(calls) == {id(model.transformer_blocks[2])}


@pytest.mark.parametrize(
    ("mem", "message"),
    [
        ({"blocks_to_swap": -1}, ">= 0"),
        ({"blocks_to_swap": 4}, "only 3 blocks"),
        ({"blocks_to_swap": 1, "fsdp": True}, "cannot be combined"),
        ({"fp8_base": True, "fsdp": True}, "cannot be combined"),
    ],
)
def test_bad_swap_settings_are_user_errors(mem: dict, message: str, tmp_path) -> None:
    with pytest.raises(UserError, match=message):
        train_adapters(tiny(), samples(), config(**mem), tmp_path, progress=False)
