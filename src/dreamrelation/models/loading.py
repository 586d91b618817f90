"""Load only what training needs: the transformer of a diffusers-format model directory.

Training from a prepared cache needs neither the text encoder (T5-XXL, ~9.5 GB in bf16) nor the VAE, so
:func:`load_transformer` reads ``transformer/`` alone; the backbone comes from ``model_index.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from dreamrelation.errors import UserError
from dreamrelation.models.backbones import Backbone, backbone_of_model_dir


def model_backbone_dir(model_dir: str | os.PathLike | None) -> tuple[Path, Backbone]:
    """``(path, backbone)`` of a diffusers-format directory (default: the shipped toy bundle)."""
    from dreamrelation.sampling.generate import TOY_BUNDLE

    path = Path(model_dir) if model_dir else TOY_BUNDLE
    if not path.is_dir():
        raise UserError(f"model path not found: {path}")
    try:
        return path, backbone_of_model_dir(path)
    except ValueError as exc:
        raise UserError(f"{path}: {exc}") from None


def text_length_of_model_dir(path: str | os.PathLike, backbone: Backbone) -> int:
    """Text tokens the model reads, from its files alone: the transformer config's ``max_sequence_length``
    (Mochi), a toy bundle's ``toy_info.json``, else the backbone's default (Wan: 512)."""
    path = Path(path)
    for file in (path / "transformer" / "config.json", path / "toy_info.json"):
        try:
            length = json.loads(file.read_text()).get("max_sequence_length")
        except (OSError, ValueError):
            continue
        if length:
            return int(length)
    return backbone.default_text_length


def is_toy_model_dir(path: str | os.PathLike) -> bool:
    """Whether a model directory is toy-sized (a toy bundle's ``toy_info.json``, or a transformer reading at
    most 64 text tokens), as :func:`dreamrelation.sampling.generate.is_toy` decides for a loaded pipeline."""
    path = Path(path)
    if (path / "toy_info.json").is_file():
        return True
    try:
        length = json.loads((path / "transformer" / "config.json").read_text()).get("max_sequence_length")
    except (OSError, ValueError):
        return False
    return length is not None and int(length) <= 64


def load_transformer(
    model_dir: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> torch.nn.Module:
    """The transformer of ``model_dir`` (toy bundle when None) in ``dtype``, on ``device`` if given.

    Nothing else of the pipeline (text encoder, tokenizer, VAE, scheduler) is loaded.
    """
    path, backbone = model_backbone_dir(model_dir)
    if not (path / "transformer" / "config.json").is_file():
        raise UserError(
            f"{path}: no transformer/config.json (not a diffusers-format {backbone.name} directory)"
        )
    transformer_cls = backbone.classes()[0]
    try:
        transformer = transformer_cls.from_pretrained(path, subfolder="transformer", torch_dtype=dtype)
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"{path}: cannot load the {backbone.name} transformer ({exc})") from None
    if device is not None:
        transformer = transformer.to(device)
    return transformer
