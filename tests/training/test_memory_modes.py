"""MemoryConfig modes on tiny models (CPU): partial checkpointing, fp8 base storage, optimizer, attention."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from diffusers import MochiPipeline, MochiTransformer3DModel, WanTransformer3DModel
from tiny import TINY_TRANSFORMER, TINY_WAN

import dreamrelation.training.memory as memory
from dreamrelation.adapters.triplet import adapter_parameters
from dreamrelation.backbones.loading import load_transformer
from dreamrelation.core.samples import TrainingSample
from dreamrelation.errors import UserError
from dreamrelation.training.config import MemoryConfig, TrainConfig
from dreamrelation.training.trainer import train_adapters

TINY = {**TINY_TRANSFORMER, "num_layers": 3}


def tiny() -> MochiTransformer3DModel:
    torch.manual_seed(0)
    return MochiTransformer3DModel(**TINY)


def samples(channels: int = 12, n: int = 3) -> list[TrainingSample]:
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


def small(steps: int = 3, **mem: object) -> TrainConfig:
    cfg = TrainConfig()
    cfg.optim.steps, cfg.optim.warmup_steps, cfg.optim.batch_size, cfg.optim.lr = steps, 1, 2, 1e-2
    cfg.optim.checkpoint_every = 0
    cfg.memory = MemoryConfig(**mem)  # type: ignore[arg-type]
    return cfg


def test_defaults_change_nothing(tmp_path) -> None:
    plain = train_adapters(tiny(), samples(), small(), tmp_path / "a", progress=False)
    cfg = small()
    cfg.memory = MemoryConfig(
        checkpoint_blocks=None, fp8_base=False, optimizer="adamw", attention_backend="sdpa"
    )
    again = train_adapters(tiny(), samples(), cfg, tmp_path / "b", progress=False)
    assert plain.losses == again.losses


def test_partial_checkpointing_checkpoints_only_the_first_blocks_and_gives_the_same_run(
    tmp_path, monkeypatch
) -> None:
    calls: list[int] = []
    real = memory.checkpoint

    def counting(fn, *args, **kwargs):
        calls.append(id(fn.__self__))
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(memory, "checkpoint", counting)
    model = tiny()
    blocks = [id(b) for b in model.transformer_blocks]
    partial = train_adapters(model, samples(), small(checkpoint_blocks=2), tmp_path / "p", progress=False)
    assert calls and set(calls) == set(blocks[:2])
    plain = train_adapters(tiny(), samples(), small(checkpoint_blocks=0), tmp_path / "n", progress=False)
    assert partial.losses == pytest.approx(plain.losses, rel=1e-5)
    assert memory.checkpoint_count(MemoryConfig(), True, 48) == 48
    assert memory.checkpoint_count(MemoryConfig(), False, 48) == 0
    assert memory.checkpoint_count(MemoryConfig(checkpoint_blocks=60), False, 48) == 48


def test_fp8_base_trains_on_cpu_with_fp32_adapters(tmp_path) -> None:
    model = tiny()
    cfg = small(fp8_base=True, checkpoint_blocks=1)
    cfg.mixed_precision = "fp32"  # fp8 storage computes in bf16 whatever this says
    result = train_adapters(model, samples(), cfg, tmp_path, progress=False)
    assert all(math.isfinite(x) for x in result.losses)
    assert {p.dtype for ps in adapter_parameters(model).values() for p in ps} == {torch.float32}
    assert model.transformer_blocks[0].attn1.to_q.base_layer.weight.dtype == torch.float8_e4m3fn
    assert any(p.any() for n, p in model.named_parameters() if ".lora_B." in n)  # adapters did train
    memory.enable_fp8_base(model)  # idempotent


def test_wan_bf16_keeps_its_fp32_modules(tmp_path) -> None:
    torch.manual_seed(0)
    model = WanTransformer3DModel(**TINY_WAN)
    cfg = small(2)
    cfg.mixed_precision = "bf16"
    result = train_adapters(model, samples(channels=4), cfg, tmp_path, progress=False)
    assert all(math.isfinite(x) for x in result.losses)
    assert model.blocks[0].scale_shift_table.dtype == torch.float32
    assert model.blocks[0].norm2.weight.dtype == torch.float32
    assert model.blocks[0].attn1.to_q.base_layer.weight.dtype == torch.bfloat16


def test_sdpa_kernel_choice_gives_the_same_run(tmp_path) -> None:
    plain = train_adapters(tiny(), samples(), small(), tmp_path / "a", progress=False)
    math_kernel = train_adapters(
        tiny(),
        samples(),
        small(attention_backend="sdpa_math", checkpoint_blocks=3),
        tmp_path / "b",
        progress=False,
    )
    assert math_kernel.losses == pytest.approx(plain.losses, rel=1e-5)


@pytest.mark.parametrize(
    ("mem", "message"),
    [
        ({"attention_backend": "flash"}, "calls PyTorch SDPA directly"),
        ({"attention_backend": "nope"}, "choose one of"),
        ({"optimizer": "sgd"}, "choose one of"),
        ({"checkpoint_blocks": -1}, ">= 0"),
    ],
)
def test_bad_memory_settings_are_user_errors(mem: dict, message: str, tmp_path) -> None:
    with pytest.raises(UserError, match=message):
        train_adapters(tiny(), samples(), small(**mem), tmp_path, progress=False)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes installed")
def test_adamw8bit_without_bitsandbytes_is_a_user_error(tmp_path) -> None:
    with pytest.raises(UserError, match="bitsandbytes"):
        train_adapters(tiny(), samples(), small(optimizer="adamw8bit"), tmp_path, progress=False)


def test_load_transformer_loads_nothing_else(tiny_bundle, monkeypatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the pipeline must not be loaded")

    monkeypatch.setattr(MochiPipeline, "from_pretrained", refuse)
    from diffusers import AutoencoderKLMochi
    from transformers import T5EncoderModel

    monkeypatch.setattr(AutoencoderKLMochi, "from_pretrained", refuse)
    monkeypatch.setattr(T5EncoderModel, "from_pretrained", refuse)
    transformer = load_transformer(tiny_bundle, torch.bfloat16)
    assert isinstance(transformer, MochiTransformer3DModel) and transformer.dtype == torch.bfloat16
    with pytest.raises(UserError, match="not found"):
        load_transformer(tiny_bundle / "missing")


def test_frozen_parts_visit_the_training_device_only_inside_validation(tiny_bundle, monkeypatch) -> None:
    """The move logic of memory.offload_frozen (the CPU has no second device, so .to is recorded, not run)."""
    from dreamrelation.backbones.loading import load_pipeline
    from dreamrelation.training.memory import frozen_parts_on, park_frozen_parts

    pipe = load_pipeline(tiny_bundle)
    moves: list[tuple[str, str]] = []
    for name in ("text_encoder", "vae", "transformer"):
        monkeypatch.setattr(getattr(pipe, name), "to", lambda d, _n=name: moves.append((_n, str(d))))
    park_frozen_parts(pipe)
    assert moves == [("text_encoder", "cpu"), ("vae", "cpu")]  # the transformer stays where it trains
    moves.clear()
    with pytest.raises(RuntimeError, match="generation failed"), frozen_parts_on(pipe, "cuda:0"):
        assert moves == [("text_encoder", "cuda:0"), ("vae", "cuda:0")]
        raise RuntimeError("generation failed")
    assert moves[2:] == [("text_encoder", "cpu"), ("vae", "cpu")]  # back home even after an error
    moves.clear()
    with frozen_parts_on(pipe, "cpu"):  # already there: nothing moves
        pass
    assert moves == []
