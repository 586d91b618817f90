"""Coming from the official DreamRelation code: its training YAML and its pretrained ``.lora.pt`` adapters."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import MochiTransformer3DModel

from dreamrelation.errors import UserError
from dreamrelation.inference.generate import resolve_adapters
from dreamrelation.inference.run import cli_generation_config, run_generate, run_import
from dreamrelation.training.config import preset
from dreamrelation.training.official import is_official_config, load_train_config, official_train_config

# the official file's field names and layout (demos/fine_tuner/configs/<relation>/example.yaml), other values
OFFICIAL = """\
init_checkpoint_path: pretrained_models/mochi/dit.safetensors
checkpoint_dir: finetunes/example/A58-shaking_hands
train_data_dir: videos_prepared/A58-shaking_hands
mask_data_dir: videos/A58-shaking_hands_masks
loss_mask_type: combine_mask
loss_mask_lam: 40
attention_mode: sdpa
train_lora_names: ["relation", "subject1", "subject2"]
test_lora_names: ["relation"]
use_relational_contrastive_learning: true
positive_buffer_size: 12
negative_buffer_size: 60
relational_contrastive_learning_lam: 0.02
total_positive_nums: 3
total_negative_nums: 9

optimizer:
  lr: 3e-4
  weight_decay: 0.02

model:
  type: lora
  kwargs:
    separate_qkv_x: True
    separate_qkv_y: True
    qkv_proj_lora_rank: 8
    qkv_proj_lora_alpha: 4
    qkv_proj_lora_dropout: 0.
    q_lora_names: ["relation"]
    k_lora_names: ["relation"]
    v_lora_names: ["subject1", "subject2"]
    test_lora_names: ["relation"]
    out_proj_lora_rank: 8
    out_proj_lora_alpha: 4
    out_proj_lora_dropout: 0.

training:
  model_dtype: bf16
  warmup_steps: 150
  num_qkv_checkpoint: 48
  num_ff_checkpoint: 48
  num_post_attn_checkpoint: 48
  num_steps: 2400
  save_interval: 300
  caption_dropout: 0.2
  grad_clip: 0.0
  save_safetensors: false

sample:
   interval: 250
   output_dir: ${checkpoint_dir}/samples
   decoder_path: pretrained_models/mochi/decoder.safetensors
   prompts:
       - A bear is shaking hands with a raccoon.
   seed: 522
   kwargs:
     height: 480
     width: 848
     num_frames: 61
     num_inference_steps: 64
     sigma_schedule_python_code: "linear_quadratic_schedule(64, 0.025)"
     cfg_schedule_python_code: "[5.5] * 64"
"""


def test_official_yaml_maps_field_by_field(tmp_path: Path) -> None:
    path = tmp_path / "example.yaml"
    path.write_text(OFFICIAL)
    assert is_official_config(path)
    cfg, mapping = load_train_config("dreamrelation", path, ["optim.seed=7"])
    assert (cfg.optim.steps, cfg.optim.warmup_steps, cfg.optim.checkpoint_every) == (2400, 150, 300)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.caption_dropout) == (3e-4, 0.02, 0.2)
    assert math.isinf(cfg.optim.grad_clip)  # genmo clips only when grad_clip > 0
    assert (cfg.adapter.rank, cfg.adapter.alpha) == (8, 4.0)
    assert cfg.adapter.placement == {
        "relation": ["q", "k"],
        "subject1": ["v"],
        "subject2": ["v"],
        "output": ["out"],
    }
    assert cfg.adapter.inference_roles == ["relation", "output"]
    assert cfg.hmt.enabled and cfg.hmt.lambda_m == 40.0
    c = cfg.contrastive
    assert (c.enabled, c.weight, c.n_pos, c.n_neg, c.pos_bank, c.neg_bank) == (True, 0.02, 3, 9, 12, 60)
    assert cfg.gradient_checkpointing and cfg.memory.checkpoint_blocks == 48
    m = cfg.monitor
    assert (m.validate_every, m.prompts, m.seeds) == (250, ["A bear is shaking hands with a raccoon."], [522])
    assert (m.num_inference_steps, m.guidance_scale, m.num_frames, m.height, m.width) == (
        64,
        5.5,
        61,
        480,
        848,
    )
    assert cfg.optim.seed == 7  # our overrides still apply on top
    assert mapping.ignored == sorted(
        [
            "init_checkpoint_path", "checkpoint_dir", "train_data_dir", "mask_data_dir", "attention_mode",
            "model.type", "model.kwargs.separate_qkv_x", "model.kwargs.separate_qkv_y",
            "model.kwargs.qkv_proj_lora_dropout", "model.kwargs.out_proj_lora_dropout", "training.model_dtype",
            "training.save_safetensors", "sample.output_dir", "sample.decoder_path",
            "sample.kwargs.sigma_schedule_python_code",
        ]
    )  # fmt: skip
    assert mapping.mapped["training.num_steps -> optim.steps"] == 2400
    assert "ignored: attention_mode, checkpoint_dir," in mapping.summary()
    record = json.loads(mapping.write(tmp_path).read_text())
    assert record["mapped"]["optimizer.lr -> optim.lr"] == 3e-4 and record["ignored"] == mapping.ignored


def test_official_yaml_edge_cases(tmp_path: Path) -> None:
    path = tmp_path / "example.yaml"
    path.write_text(OFFICIAL.replace("out_proj_lora_rank: 8", "out_proj_lora_rank: 16"))
    with pytest.raises(UserError, match="out_proj_lora_rank 16 differs"):
        official_train_config(path)
    no_out = OFFICIAL.replace("out_proj_lora_rank: 8", "out_proj_lora_rank: 0").replace(
        "grad_clip: 0.0", "grad_clip: 2"
    )
    path.write_text(
        no_out.replace(
            'train_lora_names: ["relation", "subject1", "subject2"]', 'train_lora_names: ["relation"]'
        )
    )
    cfg, _ = official_train_config(path, preset("wo_rcl"))
    assert cfg.adapter.placement == {"relation": ["q", "k"]} and cfg.adapter.inference_roles == ["relation"]
    assert cfg.optim.grad_clip == 2.0 and cfg.method == "wo_rcl"
    ours = tmp_path / "ours.yaml"
    ours.write_text("optim:\n  steps: 5\n")
    cfg, mapping = load_train_config("dreamrelation", ours, None)
    assert mapping is None and cfg.optim.steps == 5 and not is_official_config(ours)
    path.write_text(OFFICIAL.replace("num_steps: 2400", "num_steps: many"))
    with pytest.raises(UserError, match="num_steps='many'"):
        official_train_config(path)


# ----------------------------------------------------------------------------------------------
# the official pretrained adapters generate directly
# ----------------------------------------------------------------------------------------------


def official_lora(transformer: MochiTransformer3DModel, path: Path) -> None:
    """A ``model_2000.lora.pt`` in the official layout: named split q/k/v LoRAs per block and stream
    (``blocks.i.attn.to_q_x.lora_A.relation``), one unnamed LoRA on each output projection, ``kwargs``."""
    g = torch.Generator().manual_seed(11)
    state, r = {}, 4
    blocks = transformer.transformer_blocks
    for i, block in enumerate(blocks):
        attn = block.attn1
        for stream, names in (
            ("x", ("to_q", "to_k", "to_v")),
            ("y", ("add_q_proj", "add_k_proj", "add_v_proj")),
        ):
            for kind, name in zip("qkv", names, strict=True):
                layer = getattr(attn, name)
                for owner in ["relation"] if kind in "qk" else ["subject1", "subject2"]:
                    state[f"blocks.{i}.attn.to_{kind}_{stream}.lora_A.{owner}"] = torch.randn(
                        r, layer.in_features, generator=g
                    )
                    state[f"blocks.{i}.attn.to_{kind}_{stream}.lora_B.{owner}"] = (
                        torch.randn(layer.out_features, r, generator=g) * 0.1
                    )
        for stream, layer in (("x", attn.to_out[0]), ("y", getattr(attn, "to_add_out", None))):
            if layer is None:
                continue
            state[f"blocks.{i}.attn.proj_{stream}.lora_A"] = torch.randn(r, layer.in_features, generator=g)
            state[f"blocks.{i}.attn.proj_{stream}.lora_B"] = (
                torch.randn(layer.out_features, r, generator=g) * 0.1
            )
    kwargs = {"qkv_proj_lora_rank": r, "qkv_proj_lora_alpha": 8, "out_proj_lora_rank": r, "out_proj_lora_alpha": 4,
              "test_lora_names": ["relation"]}  # fmt: skip
    torch.save({"state_dict": state, "kwargs": kwargs}, path)


def test_official_lora_generates_directly(tiny_bundle: Path, tmp_path: Path) -> None:
    transformer = MochiTransformer3DModel.from_pretrained(tiny_bundle, subfolder="transformer")
    checkpoint = tmp_path / "model_2000.lora.pt"
    official_lora(transformer, checkpoint)
    choices = resolve_adapters(checkpoint)
    assert [c.role for c in choices] == ["relation", "output"]
    assert choices[0].metadata["source"] == str(checkpoint.resolve())
    run_import(checkpoint, tmp_path / "imported", model=tiny_bundle)  # the saved import, as before
    videos = {}
    for name, adapters in (("direct", [checkpoint]), ("imported", [tmp_path / "imported"])):
        cfg = cli_generation_config(
            ["A bear is shaking hands with a raccoon."],
            None,
            adapters,
            None,
            model=tiny_bundle,
            out_dir=tmp_path / name,
            steps=2,
        )
        result = run_generate(cfg)
        videos[name] = np.asarray(result.frames[0]) if result.frames else result.videos[0].read_bytes()
        meta = json.loads(result.sidecars[0].read_text())
        assert [a["role"] for a in meta["adapters"]] == ["relation", "output"]
    assert np.array_equal(videos["direct"], videos["imported"])
    with pytest.raises(UserError, match="alone"):
        resolve_adapters([checkpoint, tmp_path / "imported" / "relation.safetensors"])
