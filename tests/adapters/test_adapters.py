"""Relation LoRA triplet on a tiny, randomly initialised MochiTransformer3DModel (no mocks)."""

from __future__ import annotations

import re

import pytest
import torch
from diffusers import MochiPipeline, MochiTransformer3DModel
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import safe_open
from tiny import TINY_TRANSFORMER, paper_placement_targets

from dreamrelation.adapters.triplet import (
    active_roles,
    adapter_parameters,
    add_relation_adapters,
    load_adapters,
    read_adapter_metadata,
    save_adapters,
    set_active_roles,
    target_regex,
)
from dreamrelation.core.roles import AdapterConfig
from dreamrelation.training.trainer import roles_for_choice

TINY = TINY_TRANSFORMER


LAST = TINY["num_layers"] - 1


def tiny(seed: int = 0) -> MochiTransformer3DModel:
    torch.manual_seed(seed)
    return MochiTransformer3DModel(**TINY)


def inputs(batch: int = 2) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(batch, 12, 3, 4, 4, generator=g)
    emb = torch.randn(batch, 8, 32, generator=g)
    mask = torch.ones(batch, 8, dtype=torch.bool)
    mask[0, 5:] = False
    return x, emb, torch.tensor([250.0, 700.0][:batch]), mask


def forward(model: torch.nn.Module) -> torch.Tensor:
    x, emb, t, mask = inputs()
    return model(x, emb, t, mask, return_dict=False)[0]


def randomise(model: torch.nn.Module) -> None:
    """LoRA B starts at zero; give every adapter weight a value so outputs and gradients depend on it."""
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for params in adapter_parameters(model).values():
            for p in params:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def lora_targets(model: torch.nn.Module) -> dict[str, set[str]]:
    """module name -> adapters on it."""
    return {
        n: set(m.lora_A.keys())
        for n, m in model.named_modules()
        if isinstance(m, BaseTunerLayer) and len(m.lora_A)
    }


def test_paper_placement_targets_exactly_the_expected_modules() -> None:
    model = tiny()
    add_relation_adapters(model, AdapterConfig())
    expected = paper_placement_targets(TINY["num_layers"])
    assert lora_targets(model) == expected


def test_pooler_to_q_is_not_targeted() -> None:
    model = tiny()
    assert "time_embed.pooler.to_q" in dict(model.named_modules())
    assert re.fullmatch(r".*to_q", "time_embed.pooler.to_q")  # why a bare suffix would be wrong
    regex = target_regex(["q", "k", "v", "out"], ["visual", "text"])
    assert not re.fullmatch(regex, "time_embed.pooler.to_q")
    add_relation_adapters(model, AdapterConfig(placement={"direct": ["q", "k", "v", "out"]}))
    targets = lora_targets(model)
    assert all(name.startswith("transformer_blocks.") for name in targets)
    assert not isinstance(model.time_embed.pooler.to_q, BaseTunerLayer)


def test_visual_only_stream_leaves_text_projections_alone() -> None:
    model = tiny()
    add_relation_adapters(model, AdapterConfig(streams=["visual"]))
    names = lora_targets(model)
    assert names and not any(("add_" in n) or ("to_add_out" in n) for n in names)


def test_adapters_fp32_on_bf16_base_and_base_frozen() -> None:
    model = tiny().to(torch.bfloat16)
    add_relation_adapters(model, AdapterConfig())
    lora = {id(p) for ps in adapter_parameters(model).values() for p in ps}
    for _, p in model.named_parameters():
        if id(p) in lora:
            assert p.dtype == torch.float32
        else:
            assert p.dtype == torch.bfloat16 and not p.requires_grad


def test_adapter_parameters_cover_inactive_adapters() -> None:
    model = tiny()
    add_relation_adapters(model, AdapterConfig())
    set_active_roles(model, ["output"])  # PEFT now sets requires_grad=False on the others
    groups = adapter_parameters(model)
    every_lora = [p for n, p in model.named_parameters() if ".lora_" in n]
    assert sum(len(v) for v in groups.values()) == len(every_lora)
    assert not any(p.requires_grad for p in groups["relation"])
    assert all(p.requires_grad for p in groups["output"])
    assert active_roles(model) == ["output"]


@pytest.mark.parametrize("choice", ["relation", "subject1", "subject2", "all"])
def test_gradients_reach_exactly_the_active_adapters(choice: str) -> None:
    model = tiny()
    roles = add_relation_adapters(model, AdapterConfig())
    randomise(model)
    active = roles_for_choice(choice, roles)
    set_active_roles(model, active)
    calls: dict[str, int] = dict.fromkeys(roles, 0)
    hooks = []
    for m in model.modules():
        if isinstance(m, BaseTunerLayer):
            for role, lin in m.lora_A.items():
                hooks.append(lin.register_forward_hook(lambda *_, r=role: calls.__setitem__(r, calls[r] + 1)))
    forward(model).square().mean().backward()
    for h in hooks:
        h.remove()
    # inactive adapters are not computed at all (no multiply-by-zero), active ones are
    assert {r for r, c in calls.items() if c} == set(active)
    lora_names = {n for n, _ in model.named_parameters() if ".lora_" in n}
    for name, p in model.named_parameters():
        if name not in lora_names:
            assert p.grad is None, f"base weight {name} got a gradient"
            continue
        role = name.split(".")[-2]
        if role not in active:
            assert p.grad is None, f"inactive {name} got a gradient"
        elif f"blocks.{LAST}.attn1.add_q_proj" in name:
            # text queries of the last block are dropped by the model: zero gradient (harmless)
            assert p.grad is not None and not p.grad.any()
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"active {name} got no gradient"


def test_set_active_roles_rejects_unknown_names() -> None:
    model = tiny()
    add_relation_adapters(model, AdapterConfig())
    with pytest.raises(ValueError, match="unknown adapters"):
        set_active_roles(model, ["relation", "nope"])


def test_save_load_round_trip_gives_identical_outputs(tmp_path) -> None:
    model = tiny()
    roles = add_relation_adapters(model, AdapterConfig())
    randomise(model)
    files = save_adapters(model, tmp_path, roles, metadata={"relation": "shaking hands", "steps": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{r}.safetensors" for r in roles)
    assert read_adapter_metadata(files[0]) == {"role": "relation", "relation": "shaking hands", "steps": 3}

    inference = ["relation", "output"]
    set_active_roles(model, inference)
    with torch.no_grad():
        expected = forward(model)
        set_active_roles(model, [])
        bare = forward(model)
    assert not torch.allclose(expected, bare)  # the adapters matter

    fresh = tiny()
    load_adapters(fresh, tmp_path, inference)
    with torch.no_grad():
        assert torch.equal(forward(fresh), expected)

    # diffusers' LoRA format: what MochiPipeline.load_lora_weights does (state dict + metadata -> transformer)
    with safe_open(str(tmp_path / "relation.safetensors"), framework="pt") as f:
        keys = list(f.keys())  # noqa: SIM118
    assert keys and all(k.startswith("transformer.transformer_blocks.") and ".lora_" in k for k in keys)
    other = tiny()
    for role in inference:
        sd, meta = MochiPipeline.lora_state_dict(
            str(tmp_path), weight_name=f"{role}.safetensors", return_lora_metadata=True
        )
        MochiPipeline.load_lora_into_transformer(sd, transformer=other, adapter_name=role, metadata=meta)
    other.set_adapters(inference)
    with torch.no_grad():
        assert torch.equal(forward(other), expected)
