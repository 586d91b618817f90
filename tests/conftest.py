"""Shared fixtures: tiny randomly initialised Mochi and Wan stacks built from configs (no downloads)."""

from __future__ import annotations

import pytest
import torch
from tiny import TINY_WAN_TOY

from dreamrelation.toy.backbone import (
    ToyBackboneConfig,
    build_text_encoder,
    build_tokenizer,
    build_transformer,
    build_vae,
    save_bundle,
    toy_words,
)

TINY = ToyBackboneConfig(
    vae_encoder_channels=[32, 32, 32, 32],
    vae_decoder_channels=[32, 32, 32, 32],
    num_layers=2,
    num_attention_heads=2,
    attention_head_dim=16,
    text_dim=32,
    time_embed_dim=16,
)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """A tiny toy bundle directory (random weights) that ``MochiPipeline.from_pretrained`` loads."""
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("bundle")
    tokenizer = build_tokenizer(toy_words())
    save_bundle(
        out,
        vae=build_vae(TINY, latents_mean=[0.1] * 12, latents_std=[0.5] * 12),
        transformer=build_transformer(TINY),
        text_encoder=build_text_encoder(len(tokenizer), TINY),
        tokenizer=tokenizer,
    )
    return out


@pytest.fixture(scope="session")
def tiny_wan_bundle(tmp_path_factory):
    """A tiny toy bundle of the Wan 2.1 classes (random weights) that ``WanPipeline.from_pretrained`` loads."""
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("wan_bundle")
    tokenizer = build_tokenizer(toy_words())
    save_bundle(
        out,
        vae=build_vae(TINY_WAN_TOY, latents_mean=[0.1] * 12, latents_std=[0.5] * 12),
        transformer=build_transformer(TINY_WAN_TOY),
        text_encoder=build_text_encoder(len(tokenizer), TINY_WAN_TOY),
        tokenizer=tokenizer,
    )
    return out


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run much faster on one thread, above all on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
