"""Mochi in genmo's original layout: tiny checkpoints written in genmo's key names (from genmo's public
model code, written out here by hand), loaded and compared output for output with the same weights in a
diffusers model."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKLMochi, MochiTransformer3DModel
from safetensors.torch import save_file
from transformers import T5Config, T5EncoderModel

from dreamrelation.backbones.genmo import (
    is_genmo_dir,
    load_genmo_transformer,
    load_genmo_vae,
    text_encoder_dir,
    transformer_config,
)
from dreamrelation.backbones.loading import convert_model, load_pipeline, load_transformer
from dreamrelation.backbones.registry import MOCHI, backbone_of_model_dir
from dreamrelation.errors import UserError
from dreamrelation.toy.backbone import build_tokenizer, toy_words

# diffusers' single-file Mochi converter reads exactly 48 blocks: the tiny DiT is deep but 32 wide
TINY_DIT = dict(
    num_layers=48,
    num_attention_heads=2,
    attention_head_dim=16,
    pooled_projection_dim=16,
    in_channels=12,
    text_embed_dim=32,
    time_embed_dim=16,
    patch_size=2,
)
TINY_VAE = dict(
    encoder_block_out_channels=(32, 32, 32, 32),
    decoder_block_out_channels=(32, 32, 32, 32),
    layers_per_block=(1, 2, 1, 1, 1),  # unequal, so a stage mix-up shows
    add_attention_block=(False, True, True, True, True),
)


def _randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter random (norm weights too), so a swapped or transposed tensor changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a])


def genmo_dit_state(model: MochiTransformer3DModel) -> dict[str, torch.Tensor]:
    """genmo's ``AsymmDiTJoint`` keys: fused q/k/v per stream, ``FeedForward.w1`` computing ``silu(x) * gate``
    from ``x, gate = w1(.).chunk(2)`` (diffusers' SwiGLU gates the other half) and ``FinalLayer.mod``
    giving ``shift, scale`` (diffusers' continuous AdaLN: ``scale, shift``)."""
    d = {k: v.clone() for k, v in model.state_dict().items()}
    g = {
        "x_embedder.proj.weight": d["patch_embed.proj.weight"],
        "x_embedder.proj.bias": d["patch_embed.proj.bias"],
        "t_embedder.mlp.0.weight": d["time_embed.timestep_embedder.linear_1.weight"],
        "t_embedder.mlp.0.bias": d["time_embed.timestep_embedder.linear_1.bias"],
        "t_embedder.mlp.2.weight": d["time_embed.timestep_embedder.linear_2.weight"],
        "t_embedder.mlp.2.bias": d["time_embed.timestep_embedder.linear_2.bias"],
        "t5_yproj.weight": d["time_embed.caption_proj.weight"],
        "t5_yproj.bias": d["time_embed.caption_proj.bias"],
        "final_layer.mod.weight": _swap_halves(d["norm_out.linear.weight"]),
        "final_layer.mod.bias": _swap_halves(d["norm_out.linear.bias"]),
        "final_layer.linear.weight": d["proj_out.weight"],
        "final_layer.linear.bias": d["proj_out.bias"],
        "pos_frequencies": d["pos_frequencies"],
    }
    for part in ("to_kv", "to_q", "to_out"):
        for w in ("weight", "bias"):
            g[f"t5_y_embedder.{part}.{w}"] = d[f"time_embed.pooler.{part}.{w}"]
    last = model.config.num_layers - 1
    for i in range(model.config.num_layers):
        a, o = f"transformer_blocks.{i}.", f"blocks.{i}."
        context = "norm1_context.linear_1" if i == last else "norm1_context.linear"
        for w in ("weight", "bias"):
            g[o + f"mod_x.{w}"] = d[a + f"norm1.linear.{w}"]
            g[o + f"mod_y.{w}"] = d[a + f"{context}.{w}"]
            g[o + f"attn.proj_x.{w}"] = d[a + f"attn1.to_out.0.{w}"]
        g[o + "attn.qkv_x.weight"] = torch.cat([d[a + f"attn1.to_{x}.weight"] for x in "qkv"])
        g[o + "attn.qkv_y.weight"] = torch.cat([d[a + f"attn1.add_{x}_proj.weight"] for x in "qkv"])
        g[o + "attn.q_norm_x.weight"] = d[a + "attn1.norm_q.weight"]
        g[o + "attn.k_norm_x.weight"] = d[a + "attn1.norm_k.weight"]
        g[o + "attn.q_norm_y.weight"] = d[a + "attn1.norm_added_q.weight"]
        g[o + "attn.k_norm_y.weight"] = d[a + "attn1.norm_added_k.weight"]
        g[o + "mlp_x.w1.weight"] = _swap_halves(d[a + "ff.net.0.proj.weight"])
        g[o + "mlp_x.w2.weight"] = d[a + "ff.net.2.weight"]
        if i != last:  # genmo's last block updates no text tokens: no proj_y, no mlp_y
            g[o + "attn.proj_y.weight"] = d[a + "attn1.to_add_out.weight"]
            g[o + "attn.proj_y.bias"] = d[a + "attn1.to_add_out.bias"]
            g[o + "mlp_y.w1.weight"] = _swap_halves(d[a + "ff_context.net.0.proj.weight"])
            g[o + "mlp_y.w2.weight"] = d[a + "ff_context.net.2.weight"]
    return {k: v.contiguous() for k, v in g.items()}


def _res(d: dict, new: str, old: str, i: int, g: dict) -> None:
    """genmo ``ResBlock``: ``stack`` = GroupNorm, SiLU, conv, GroupNorm, SiLU, conv (+ ``attn_block``)."""
    for idx, name in ((0, "norm1.norm_layer"), (2, "conv1.conv"), (3, "norm2.norm_layer"), (5, "conv2.conv")):
        for w in ("weight", "bias"):
            g[f"{old}.stack.{idx}.{w}"] = d[f"{new}.resnets.{i}.{name}.{w}"]
    if f"{new}.attentions.{i}.to_q.weight" in d:
        g[f"{old}.attn_block.attn.qkv.weight"] = torch.cat(
            [d[f"{new}.attentions.{i}.to_{x}.weight"] for x in "qkv"]
        )
        for w in ("weight", "bias"):
            g[f"{old}.attn_block.attn.out.{w}"] = d[f"{new}.attentions.{i}.to_out.0.{w}"]
            g[f"{old}.attn_block.norm.{w}"] = d[f"{new}.norms.{i}.norm_layer.{w}"]


def genmo_vae_states(vae: AutoencoderKLMochi) -> tuple[dict, dict]:
    """genmo's ``Encoder.layers`` (1x1 projection, res blocks, ``DownsampleBlock.layers`` = strided conv +
    res blocks, res blocks, ``output_norm``, ``output_proj``) and ``Decoder.blocks`` (1x1x1 conv + res
    blocks, ``CausalUpsampleBlock`` = ``blocks`` + ``proj``, res blocks; ``output_proj``)."""
    d = {k: v.clone() for k, v in vae.state_dict().items()}
    lpb = vae.config.layers_per_block
    enc = {"layers.0.weight": d["encoder.proj_in.weight"], "layers.0.bias": d["encoder.proj_in.bias"]}
    n = 1
    for i in range(lpb[0]):
        _res(d, "encoder.block_in", f"layers.{n}", i, enc)
        n += 1
    for b in range(3):
        for w in ("weight", "bias"):
            enc[f"layers.{n}.layers.0.{w}"] = d[f"encoder.down_blocks.{b}.conv_in.conv.{w}"]
        for i in range(lpb[b + 1]):
            _res(d, f"encoder.down_blocks.{b}", f"layers.{n}.layers.{i + 1}", i, enc)
        n += 1
    for i in range(lpb[4]):
        _res(d, "encoder.block_out", f"layers.{n}", i, enc)
        n += 1
    enc["output_norm.weight"] = d["encoder.norm_out.norm_layer.weight"]
    enc["output_norm.bias"] = d["encoder.norm_out.norm_layer.bias"]
    enc["output_proj.weight"] = d["encoder.proj_out.weight"]
    dec = {"blocks.0.0.weight": d["decoder.conv_in.weight"], "blocks.0.0.bias": d["decoder.conv_in.bias"]}
    for i in range(lpb[-1]):
        _res(d, "decoder.block_in", f"blocks.0.{i + 1}", i, dec)
    for b in range(3):
        for i in range(lpb[-2 - b]):
            _res(d, f"decoder.up_blocks.{b}", f"blocks.{b + 1}.blocks.{i}", i, dec)
        dec[f"blocks.{b + 1}.proj.weight"] = d[f"decoder.up_blocks.{b}.proj.weight"]
        dec[f"blocks.{b + 1}.proj.bias"] = d[f"decoder.up_blocks.{b}.proj.bias"]
    for i in range(lpb[0]):
        _res(d, "decoder.block_out", f"blocks.4.{i}", i, dec)
    dec["output_proj.weight"] = d["decoder.proj_out.weight"]
    dec["output_proj.bias"] = d["decoder.proj_out.bias"]
    return enc, dec


@pytest.fixture(scope="module")
def genmo_models():
    torch.manual_seed(0)
    dit = _randomised(MochiTransformer3DModel(**TINY_DIT), 1)
    vae = _randomised(AutoencoderKLMochi(**TINY_VAE), 2)
    return dit, vae


@pytest.fixture(scope="module")
def genmo_dir(tmp_path_factory, genmo_models):
    """``pretrained_models/mochi`` (genmo layout) and ``pretrained_models/t5-v1_1-xxl`` (a tiny T5)."""
    dit, vae = genmo_models
    root = tmp_path_factory.mktemp("pretrained_models")
    mochi = root / "mochi"
    mochi.mkdir()
    save_file(genmo_dit_state(dit), str(mochi / "dit.safetensors"))
    enc, dec = genmo_vae_states(vae)
    save_file({k: v.contiguous() for k, v in enc.items()}, str(mochi / "encoder.safetensors"))
    save_file({k: v.contiguous() for k, v in dec.items()}, str(mochi / "decoder.safetensors"))
    tokenizer = build_tokenizer(toy_words())
    t5 = T5EncoderModel(
        T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                 relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", dropout_rate=0.0)
    )  # fmt: skip
    t5.save_pretrained(root / "t5-v1_1-xxl")
    tokenizer.save_pretrained(root / "t5-v1_1-xxl")
    return mochi


def _dit_inputs():
    g = torch.Generator().manual_seed(3)
    return dict(
        hidden_states=torch.randn(1, 12, 2, 4, 4, generator=g),
        encoder_hidden_states=torch.randn(1, 5, 32, generator=g),
        timestep=torch.tensor([400.0]),
        encoder_attention_mask=torch.tensor([[1, 1, 1, 0, 0]]),
        return_dict=False,
    )


def test_genmo_dir_is_recognised_as_mochi(genmo_dir, tiny_bundle):
    assert is_genmo_dir(genmo_dir) and backbone_of_model_dir(genmo_dir) is MOCHI
    assert not is_genmo_dir(tiny_bundle) and not is_genmo_dir(genmo_dir.parent)
    assert transformer_config(genmo_dir / "dit.safetensors") == {**TINY_DIT, "out_channels": 12}


@torch.no_grad()
def test_dit_loads_output_for_output(genmo_dir, genmo_models):
    dit, _ = genmo_models
    loaded = load_genmo_transformer(genmo_dir)
    expected, got = dit(**_dit_inputs())[0], loaded(**_dit_inputs())[0]
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)
    assert isinstance(load_transformer(genmo_dir), MochiTransformer3DModel)  # the training entry point


@torch.no_grad()
def test_vae_converts_output_for_output(genmo_dir, genmo_models):
    _, vae = genmo_models
    loaded = load_genmo_vae(genmo_dir)
    assert list(loaded.config.layers_per_block) == list(TINY_VAE["layers_per_block"])
    video = torch.rand(1, 3, 7, 16, 16, generator=torch.Generator().manual_seed(4)) * 2 - 1
    mean_expected = vae.encode(video).latent_dist.mean
    mean_got = loaded.encode(video).latent_dist.mean
    assert torch.allclose(mean_got, mean_expected, atol=1e-5, rtol=0)
    latents = torch.randn(1, 12, 2, 2, 2, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(loaded.decode(latents).sample, vae.decode(latents).sample, atol=1e-5, rtol=0)


def test_pipeline_and_conversion_agree(genmo_dir, tmp_path):
    pipe = load_pipeline(genmo_dir)  # T5 found beside it, as the official instructions place it
    assert pipe.prompt_length == 256 and type(pipe).__name__ == "MochiPipeline"
    out = convert_model(genmo_dir, tmp_path / "mochi-diffusers", dtype=torch.float32)
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "MochiPipeline"
    again = load_pipeline(out)
    embeds, _ = MOCHI.encode_prompts(pipe, ["a person is high-fiving a person"])
    embeds2, _ = MOCHI.encode_prompts(again, ["a person is high-fiving a person"])
    assert torch.equal(embeds, embeds2)
    with torch.no_grad():
        a = pipe.transformer(**_dit_inputs())[0]
        b = again.transformer(**_dit_inputs())[0]
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)  # from_single_file's memory-mapped weights round apart
    with pytest.raises(UserError, match="not empty"):
        convert_model(genmo_dir, out)


def test_text_encoder_errors_name_the_fix(genmo_dir, tmp_path):
    lonely = tmp_path / "mochi"
    lonely.mkdir()
    with pytest.raises(UserError, match="--text-encoder"):
        text_encoder_dir(lonely, None)
    with pytest.raises(UserError, match="not a T5 folder"):
        load_pipeline(genmo_dir, text_encoder=tmp_path)
    assert text_encoder_dir(genmo_dir, genmo_dir.parent / "t5-v1_1-xxl").name == "t5-v1_1-xxl"


def test_cli_from_the_official_layout(genmo_dir, tmp_path):
    """render -> prepare -> train (official YAML) -> generate, all with --model pretrained_models/mochi."""
    from test_official import OFFICIAL
    from typer.testing import CliRunner

    from dreamrelation.cli import app

    def cli(*args: str) -> str:
        result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    geometry = ("--num-frames", "7", "--height", "32", "--width", "32")
    t5 = ("--text-encoder", genmo_dir.parent / "t5-v1_1-xxl")
    cli("toy", "render", tmp_path / "data", "--relation", "pushing", "--num", "1")
    cli("prepare", tmp_path / "data", tmp_path / "cache", "--model", genmo_dir, *t5, *geometry)
    yaml = OFFICIAL.replace("num_steps: 2400", "num_steps: 1").replace("warmup_steps: 150", "warmup_steps: 1")
    (tmp_path / "example.yaml").write_text(yaml.replace("_lora_rank: 8", "_lora_rank: 2"))
    out = cli("train", tmp_path / "cache", "--model", genmo_dir, "--config", tmp_path / "example.yaml",
              "--out", tmp_path / "run")  # fmt: skip
    assert "official DreamRelation YAML" in out and "sample.interval (validation is off" in out
    record = json.loads((tmp_path / "run" / "official_config.json").read_text())
    assert record["mapped"]["model.kwargs.qkv_proj_lora_rank -> adapter.rank"] == 2
    cli("generate", "A bear is pushing a raccoon.", "--model", genmo_dir, *t5, "--adapters",
        tmp_path / "run" / "adapters", "--steps", "2", *geometry, "--out", tmp_path / "gen")  # fmt: skip
    meta = json.loads(sorted((tmp_path / "gen").glob("*.json"))[0].read_text())  # before manifest.json
    assert [a["role"] for a in meta["adapters"]] == ["relation", "output"]
