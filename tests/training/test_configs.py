"""Every shipped YAML under configs/ is a valid trainer config and means what its name says."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dreamrelation.config import load_config
from dreamrelation.training.config import PRESET_NAMES, TrainConfig, preset

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
FILES = sorted(CONFIGS.rglob("*.yaml"))


def test_configs_are_shipped() -> None:
    names = {p.relative_to(CONFIGS).as_posix() for p in FILES}
    assert {
        "mochi/high_five.yaml",
        "mochi/shaking_hands.yaml",
        "toy/dreamrelation.yaml",
        "toy/direct_lora.yaml",
        "wan/high_five.yaml",
        "wan/shaking_hands.yaml",
        "wan22/high_five.yaml",
        "wan22/shaking_hands.yaml",
    } <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(CONFIGS).as_posix())
def test_every_config_loads(path: Path) -> None:
    assert isinstance(load_config(TrainConfig, path), TrainConfig)
    method = OmegaConf.load(path).get("method", "dreamrelation")
    assert method in PRESET_NAMES
    cfg = load_config(preset(method), path)  # how the CLI applies it: preset defaults, then the file
    assert cfg.method == method
    assert set(cfg.adapter.inference_roles) <= set(cfg.adapter.placement)


def test_mochi_configs_follow_the_paper() -> None:
    for name in ("high_five", "shaking_hands"):
        cfg = load_config(TrainConfig, CONFIGS / "mochi" / f"{name}.yaml")
        assert (cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.steps, cfg.optim.batch_size) == (
            2e-4,
            200,
            2000,
            1,
        )
        assert (cfg.adapter.rank, cfg.hmt.lambda_m, cfg.contrastive.weight) == (16, 50.0, 0.01)
        assert cfg.mixed_precision == "bf16" and cfg.hmt.enabled and cfg.contrastive.enabled
        assert cfg == load_config(preset("dreamrelation"), CONFIGS / "mochi" / f"{name}.yaml")


def test_toy_configs() -> None:
    dr = load_config(preset("dreamrelation"), CONFIGS / "toy" / "dreamrelation.yaml")
    direct = load_config(preset("direct_lora"), CONFIGS / "toy" / "direct_lora.yaml")
    from dreamrelation.demo import DemoConfig

    demo = DemoConfig()  # the shipped toy configs are the demo's recipe
    for cfg in (dr, direct):
        got = (cfg.optim.steps, cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.batch_size, cfg.adapter.rank)
        assert got == (demo.train_steps, demo.lr, demo.warmup_steps, demo.batch_size, demo.rank)
    assert dr.hmt.enabled and dr.contrastive.enabled
    assert direct.adapter.placement == {"direct": ["q", "k", "v", "out"]}
    assert not direct.hmt.enabled and not direct.contrastive.enabled


def test_wan_configs_follow_the_paper_and_place_adapters_on_wan_attention() -> None:
    from diffusers import WanTransformer3DModel
    from tiny import TINY_WAN

    from dreamrelation.adapters.triplet import add_relation_adapters

    for name in ("high_five", "shaking_hands"):
        path = CONFIGS / "wan" / f"{name}.yaml"
        cfg = load_config(preset("dreamrelation"), path)
        mochi = load_config(preset("dreamrelation"), CONFIGS / "mochi" / f"{name}.yaml")
        assert cfg == mochi  # the same recipe; only the backbone's module names differ
        model = WanTransformer3DModel(**TINY_WAN)
        add_relation_adapters(model, cfg.adapter)
        roles = {
            n.removesuffix(".lora_A"): set(m.keys())
            for n, m in model.named_modules()
            if n.endswith(".lora_A") and n.startswith("blocks.0.")
        }
        assert roles == {
            "blocks.0.attn1.to_q": {"relation"},
            "blocks.0.attn1.to_k": {"relation"},
            "blocks.0.attn1.to_v": {"subject1", "subject2"},
            "blocks.0.attn1.to_out.0": {"output"},
            "blocks.0.attn2.to_k": {"relation"},
            "blocks.0.attn2.to_v": {"subject1", "subject2"},
        }


def test_wan22_configs_are_the_wan_recipe_with_image_to_video_steps() -> None:
    for name in ("high_five", "shaking_hands"):
        cfg = load_config(preset("dreamrelation"), CONFIGS / "wan22" / f"{name}.yaml")
        wan = load_config(preset("dreamrelation"), CONFIGS / "wan" / f"{name}.yaml")
        assert cfg.i2v.probability == 0.5 and wan.i2v.probability == 0.0
        cfg.i2v.probability = 0.0
        assert cfg == wan  # the paper's recipe; only the share of image-conditioned steps differs
