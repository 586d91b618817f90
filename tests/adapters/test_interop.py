"""LoRA import/export against hand-merged weights on a tiny random MochiTransformer3DModel (no mocks).

Original-layout checkpoints are built from their documented layout (public DreamRelation pickles, genmo
fine-tuner safetensors); the reference output comes from adding ``scale * B @ A`` to the base weights by
hand (for genmo: to the fused q/k/v weight, then split as genmo/diffusers do).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from diffusers import MochiTransformer3DModel
from safetensors import safe_open
from safetensors.torch import save_file
from tiny import TINY_TRANSFORMER

from dreamrelation.adapters.interop import (
    check_adapter_file,
    export_adapters,
    import_checkpoint,
    read_adapter_file,
)
from dreamrelation.adapters.triplet import (
    adapter_parameters,
    add_relation_adapters,
    load_adapters,
    read_adapter_metadata,
    set_active_roles,
)
from dreamrelation.core.roles import AdapterConfig
from dreamrelation.errors import UserError

TINY = TINY_TRANSFORMER
LAST = TINY["num_layers"] - 1
QKV = {"x": ("to_q", "to_k", "to_v"), "y": ("add_q_proj", "add_k_proj", "add_v_proj")}
PROJ = {"x": "to_out.0", "y": "to_add_out"}


def tiny() -> MochiTransformer3DModel:
    torch.manual_seed(0)
    return MochiTransformer3DModel(**TINY).eval()


@torch.no_grad()
def forward(model: torch.nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 12, 3, 4, 4, generator=g)
    emb = torch.randn(2, 8, 32, generator=g)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[0, 5:] = False
    return model(x, emb, torch.tensor([250.0, 700.0]), mask, return_dict=False)[0]


def linear(model: torch.nn.Module, block: int, name: str) -> torch.nn.Linear:
    return model.get_submodule(f"transformer_blocks.{block}.attn1.{name}")


def lora(rank: int, fan_in: int, fan_out: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(rank, fan_in, generator=g) * 0.3, torch.randn(fan_out, rank, generator=g) * 0.3


def dims(model: torch.nn.Module, block: int, name: str) -> tuple[int, int]:
    layer = linear(model, block, name)
    return layer.in_features, layer.out_features


@torch.no_grad()
def add_delta(model: torch.nn.Module, block: int, name: str, delta: torch.Tensor) -> None:
    linear(model, block, name).weight += delta


def outputs_with(adapter_dir: Path, roles: list[str]) -> torch.Tensor:
    model = tiny()
    load_adapters(model, adapter_dir, roles)
    return forward(model)


# ----------------------------------------------------------------------------------------------
# public DreamRelation pickles
# ----------------------------------------------------------------------------------------------


def dreamrelation_checkpoint(path: Path, extra: dict | None = None) -> dict[str, torch.nn.Module]:
    """Write a pickle in the public code's layout; return hand-merged reference models per role set."""
    r, qkv_alpha, out_alpha = 4, 8.0, 2.0  # qkv scale 2, output scale 0.5
    g = torch.Generator().manual_seed(5)
    base = tiny()
    refs = {"inference": copy.deepcopy(base), "subject1": copy.deepcopy(base)}
    state: dict[str, torch.Tensor] = {}
    for i in range(TINY["num_layers"]):
        for stream, names in QKV.items():
            for kind, name in zip("qkv", names, strict=True):
                owners = ["relation"] if kind in "qk" else ["subject1", "subject2"]
                for owner in owners:
                    a, b = lora(r, *dims(base, i, name), g)
                    state[f"blocks.{i}.attn.to_{kind}_{stream}.lora_A.{owner}"] = a
                    state[f"blocks.{i}.attn.to_{kind}_{stream}.lora_B.{owner}"] = b
                    ref = {"relation": "inference", "subject1": "subject1"}.get(owner)
                    if ref:
                        add_delta(refs[ref], i, name, qkv_alpha / r * b @ a)
        for stream, name in PROJ.items():
            if stream == "y" and i == LAST:
                continue
            a, b = lora(r, *dims(base, i, name), g)
            state[f"blocks.{i}.attn.proj_{stream}.lora_A"] = a
            state[f"blocks.{i}.attn.proj_{stream}.lora_B"] = b
            for ref in refs.values():
                add_delta(ref, i, name, out_alpha / r * b @ a)
    state.update(extra or {})
    kwargs = {
        "separate_qkv_x": True,
        "separate_qkv_y": True,
        "qkv_proj_lora_rank": r,
        "qkv_proj_lora_alpha": qkv_alpha,
        "out_proj_lora_rank": r,
        "out_proj_lora_alpha": out_alpha,
        "q_lora_names": ["relation"],
        "k_lora_names": ["relation"],
        "v_lora_names": ["subject1", "subject2"],
        "test_lora_names": ["relation"],
    }
    torch.save({"state_dict": state, "kwargs": kwargs}, path)
    return refs


def test_dreamrelation_pickle_imports_exactly(tmp_path: Path) -> None:
    refs = dreamrelation_checkpoint(tmp_path / "model_2400.lora.pt")
    result = import_checkpoint(tmp_path / "model_2400.lora.pt", tmp_path / "ours", transformer=tiny())
    assert result.source_format == "dreamrelation"
    assert sorted(result.roles) == ["output", "relation", "subject1", "subject2"]
    assert result.roles["relation"] == 4 * TINY["num_layers"]  # q, k on both streams per block
    assert result.roles["output"] == 2 * TINY["num_layers"] - 1  # no text output in the last block
    assert result.inference_roles == ["relation", "output"]
    assert result.unknown_keys == []
    assert (
        read_adapter_metadata(tmp_path / "ours" / "relation.safetensors")["source_format"] == "dreamrelation"
    )
    base = forward(tiny())
    got = outputs_with(tmp_path / "ours", ["relation", "output"])
    assert (got - base).abs().max() > 1e-3  # the LoRAs do something
    torch.testing.assert_close(got, forward(refs["inference"]), atol=1e-5, rtol=0)
    got = outputs_with(tmp_path / "ours", ["subject1", "output"])
    torch.testing.assert_close(got, forward(refs["subject1"]), atol=1e-5, rtol=0)


def test_unknown_keys_are_reported_not_dropped(tmp_path: Path) -> None:
    extra = {"blocks.0.mlp_x.w1.lora_A": torch.zeros(4, 32), "pos_frequencies": torch.zeros(3)}
    dreamrelation_checkpoint(tmp_path / "ckpt.pt", extra=extra)
    with pytest.warns(UserWarning, match="2 key"):
        result = import_checkpoint(tmp_path / "ckpt.pt", tmp_path / "ours")
    assert sorted(result.unknown_keys) == sorted(extra)
    report = json.loads((tmp_path / "ours" / "import.json").read_text())
    assert sorted(report["unknown_keys"]) == sorted(extra)


class Exploit:
    """Unpickling this would create ``target`` (a stand-in for arbitrary code)."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_malicious_pickle_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {"x": Exploit(marker)}}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="weights_only"):
        import_checkpoint(tmp_path / "evil.pt", tmp_path / "ours")
    assert not marker.exists()
    with pytest.raises(UserError, match="not found"):
        import_checkpoint(tmp_path / "missing.pt", tmp_path / "ours")


# ----------------------------------------------------------------------------------------------
# genmo fine-tuner (fused qkv)
# ----------------------------------------------------------------------------------------------


def test_genmo_fused_lora_splits_exactly(tmp_path: Path) -> None:
    r, alpha, out_r, out_alpha = 4, 4.0, 3, 6.0
    g = torch.Generator().manual_seed(7)
    base = tiny()
    ref = copy.deepcopy(base)
    state: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for i in range(TINY["num_layers"]):
            for stream, names in QKV.items():
                layers = [linear(ref, i, n) for n in names]
                fused = torch.cat([layer.weight for layer in layers])  # genmo's qkv weight: rows q, k, v
                a, b = lora(r, fused.shape[1], fused.shape[0], g)
                state[f"blocks.{i}.attn.qkv_{stream}.lora_A"] = a
                state[f"blocks.{i}.attn.qkv_{stream}.lora_B"] = b
                merged = fused + alpha / r * b @ a
                for layer, rows in zip(layers, merged.chunk(3), strict=True):
                    layer.weight.copy_(rows)
            for stream, name in PROJ.items():
                if stream == "y" and i == LAST:
                    continue
                a, b = lora(out_r, *dims(base, i, name), g)
                state[f"blocks.{i}.attn.proj_{stream}.lora_A"] = a
                state[f"blocks.{i}.attn.proj_{stream}.lora_B"] = b
                add_delta(ref, i, name, out_alpha / out_r * b @ a)
    kwargs = {
        "qkv_proj_lora_rank": r,
        "qkv_proj_lora_alpha": alpha,
        "out_proj_lora_rank": out_r,
        "out_proj_lora_alpha": out_alpha,
    }
    save_file(state, str(tmp_path / "model_1000.lora.safetensors"), metadata={"kwargs": json.dumps(kwargs)})

    result = import_checkpoint(
        tmp_path / "model_1000.lora.safetensors", tmp_path / "ours", transformer=tiny()
    )
    assert result.source_format == "genmo"
    assert list(result.roles) == ["direct"] and result.inference_roles == ["direct"]
    got = outputs_with(tmp_path / "ours", ["direct"])
    assert (got - forward(base)).abs().max() > 1e-3
    torch.testing.assert_close(got, forward(ref), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------
# export -> import round trips
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def trained(tmp_path: Path) -> tuple[Path, torch.Tensor]:
    """Our adapters with random values (alpha != rank) saved to a folder, and the relation+output output."""
    model = tiny()
    add_relation_adapters(model, AdapterConfig(rank=4, alpha=6.0))
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for params in adapter_parameters(model).values():
            for p in params:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    set_active_roles(model, ["relation", "output"], trainable=False)
    expected = forward(model)
    from dreamrelation.adapters.triplet import save_adapters

    save_adapters(model, tmp_path / "adapters", metadata={"inference_roles": ["relation", "output"]})
    return tmp_path / "adapters", expected


@pytest.mark.parametrize("fmt", ["comfyui", "genmo"])
def test_export_then_import_round_trip(tmp_path: Path, trained: tuple[Path, torch.Tensor], fmt: str) -> None:
    adapters, expected = trained
    exported = export_adapters(adapters, tmp_path / f"lora_{fmt}.safetensors", format=fmt)
    assert exported.roles == {"relation": 1.0, "output": 1.0}
    with safe_open(str(exported.path), framework="pt") as f:
        keys = set(f.keys())  # noqa: SIM118
        header = f.metadata()
    if fmt == "comfyui":
        assert "diffusion_model.blocks.0.attn.qkv_x.lora_A.weight" in keys
        assert "diffusion_model.blocks.0.attn.qkv_x.alpha" in keys
        assert "diffusion_model.blocks.0.attn.proj_y.lora_B.weight" in keys
    else:
        assert {
            "blocks.0.attn.qkv_x.lora_A",
            "blocks.1.attn.qkv_y.lora_B",
            "blocks.0.attn.proj_y.lora_A",
        } <= keys
        kwargs = json.loads(header["kwargs"])
        assert kwargs["qkv_proj_lora_rank"] == kwargs["qkv_proj_lora_alpha"] == 8  # q and k stacked: 2 x 4
    result = import_checkpoint(exported.path, tmp_path / "back", transformer=tiny())
    assert result.unknown_keys == []
    got = outputs_with(tmp_path / "back", ["direct"])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # exact weights too: each module's delta is the sum of the exported roles' deltas
    _, original_rel, _ = read_adapter_file(adapters / "relation.safetensors")
    _, original_out, _ = read_adapter_file(adapters / "output.safetensors")
    _, back, _ = read_adapter_file(tmp_path / "back" / "direct.safetensors")
    assert set(back) == set(original_rel) | set(original_out)
    for module, factor in back.items():
        want = (original_rel.get(module) or original_out[module]).delta()
        torch.testing.assert_close(factor.delta(), want, atol=1e-6, rtol=0)
        assert factor.rank == 4  # zero blocks of the fused layout are dropped again


def test_export_strengths_and_bad_input(tmp_path: Path, trained: tuple[Path, torch.Tensor]) -> None:
    adapters, _ = trained
    half = export_adapters(adapters, tmp_path, format="comfyui", roles={"relation": 0.5})
    assert half.path.name == "dreamrelation_comfyui.safetensors"
    import_checkpoint(half.path, tmp_path / "half")
    _, orig, _ = read_adapter_file(adapters / "relation.safetensors")
    _, back, _ = read_adapter_file(tmp_path / "half" / "direct.safetensors")
    module = "transformer_blocks.0.attn1.to_q"
    torch.testing.assert_close(back[module].delta(), 0.5 * orig[module].delta(), atol=1e-6, rtol=0)
    with pytest.raises(UserError, match="subject9"):
        export_adapters(adapters, tmp_path / "x.safetensors", roles={"subject9": 1.0})
    with pytest.raises(UserError, match="format"):
        export_adapters(adapters, tmp_path / "x.safetensors", format="kohya")


def test_check_adapter_file_rejects_other_model_sizes(
    tmp_path: Path, trained: tuple[Path, torch.Tensor]
) -> None:
    adapters, _ = trained
    info = check_adapter_file(adapters / "relation.safetensors", tiny())
    assert info.role == "relation" and info.modules["transformer_blocks.0.attn1.add_q_proj"] == (4, 16, 32)
    wider = MochiTransformer3DModel(**{**TINY, "attention_head_dim": 8})
    with pytest.raises(UserError, match="features"):
        check_adapter_file(adapters / "relation.safetensors", wider)
    deeper = MochiTransformer3DModel(**{**TINY, "num_layers": 1})
    with pytest.raises(UserError, match="does not exist"):
        check_adapter_file(adapters / "relation.safetensors", deeper)
