"""Shared fixtures: tiny randomly initialised Mochi and Wan stacks built from configs (no downloads)."""

from __future__ import annotations

import pytest
import torch
from tiny import TINY_MOCHI_TOY, TINY_WAN22_TOY, TINY_WAN_TOY

from dreamrelation.toy.backbone import (
    ToyBackboneConfig,
    build_text_encoder,
    build_tokenizer,
    build_transformer,
    build_vae,
    save_bundle,
    toy_words,
)


def _write_tiny_bundle(out, cfg: ToyBackboneConfig):
    """A toy bundle of ``cfg``'s classes with random weights and non-trivial VAE normalisation."""
    torch.manual_seed(0)
    tokenizer = build_tokenizer(toy_words())
    channels = cfg.latent_channels
    save_bundle(
        out,
        vae=build_vae(cfg, latents_mean=[0.1] * channels, latents_std=[0.5] * channels),
        transformer=build_transformer(cfg),
        text_encoder=build_text_encoder(len(tokenizer), cfg),
        tokenizer=tokenizer,
    )
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """A tiny toy bundle directory (random weights) that ``MochiPipeline.from_pretrained`` loads."""
    return _write_tiny_bundle(tmp_path_factory.mktemp("bundle"), TINY_MOCHI_TOY)


@pytest.fixture(scope="session")
def tiny_wan_bundle(tmp_path_factory):
    """A tiny toy bundle of the Wan 2.1 classes (random weights) that ``WanPipeline.from_pretrained`` loads."""
    return _write_tiny_bundle(tmp_path_factory.mktemp("wan_bundle"), TINY_WAN_TOY)


@pytest.fixture(scope="session")
def tiny_wan22_bundle(tmp_path_factory):
    """A tiny bundle in Wan 2.2 TI2V-5B's configuration (random weights): ``WanPipeline`` with
    ``expand_timesteps``, the 48-channel 16x16 Wan 2.2 VAE layout."""
    return _write_tiny_bundle(tmp_path_factory.mktemp("wan22_bundle"), TINY_WAN22_TOY)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run much faster on one thread, above all on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
