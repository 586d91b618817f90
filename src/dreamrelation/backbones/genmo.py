"""Mochi 1 in genmo's original layout, as the official Mochi / DreamRelation code keeps it on disk.

A genmo directory (``pretrained_models/mochi/``) holds the DiT (``dit.safetensors``, or any other
``*.safetensors`` with genmo's DiT keys) and the VAE as ``encoder.safetensors`` + ``decoder.safetensors``;
T5 v1.1 XXL (weights and tokenizer) sits in a folder of its own, by default the sibling
``t5-v1_1-xxl/``. :func:`load_genmo_pipeline` builds a ``MochiPipeline`` from these files at load time:

* the DiT through diffusers' single-file loader (``MochiTransformer3DModel.from_single_file``), with a
  config inferred from the file's shapes and passed explicitly (nothing is fetched from the Hub);
  diffusers' converter reads exactly Mochi's 48 blocks.
* the VAE through :func:`vae_state_dict`, our converter of genmo's key layout (diffusers ships none):

  ===============================================  =============================================
  genmo ``encoder.safetensors``                    diffusers ``encoder.``
  ===============================================  =============================================
  ``layers.0`` (1x1 projection)                    ``proj_in``
  ``layers.N`` (res blocks before the first down)  ``block_in.resnets.i``
  ``layers.N.layers.0`` (strided causal conv)      ``down_blocks.b.conv_in.conv``
  ``layers.N.layers.j`` (j >= 1)                   ``down_blocks.b.resnets.(j-1)``
  ``layers.N`` (res blocks after the last down)    ``block_out.resnets.i``
  ``output_norm`` / ``output_proj``                ``norm_out.norm_layer`` / ``proj_out``
  ===============================================  =============================================

  Decoder: ``blocks.0.0`` -> ``conv_in``, ``blocks.0.j`` -> ``block_in.resnets.(j-1)``, ``blocks.b.blocks.j``
  / ``blocks.b.proj`` -> ``up_blocks.(b-1)``, the last ``blocks.K.j`` -> ``block_out.resnets.j``,
  ``output_proj`` -> ``proj_out``. In a res block ``stack.0/2/3/5`` are ``norm1/conv1/norm2/conv2`` and
  ``attn_block.{norm, attn.qkv, attn.out}`` are ``norms.i``, ``attentions.i.to_q/to_k/to_v`` (the fused
  rows cut in three) and ``attentions.i.to_out.0``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from dreamrelation.errors import UserError

DIT_FILE = "dit.safetensors"
ENCODER_FILE = "encoder.safetensors"
DECODER_FILE = "decoder.safetensors"
T5_FOLDER = "t5-v1_1-xxl"  # where the official instructions put T5, beside the Mochi folder
DIT_KEY = "blocks.0.attn.qkv_x.weight"
MOCHI_BLOCKS = 48  # diffusers' single-file converter reads exactly this many DiT blocks
_COMFY_PREFIX = "model.diffusion_model."


# ----------------------------------------------------------------------------------------------- layout


def _keys_and_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a safetensors file, without reading the tensors."""
    try:
        with safe_open(str(file), framework="pt") as f:
            return {k.removeprefix(_COMFY_PREFIX): tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises several types for a bad file
        raise UserError(f"{file}: not a readable safetensors file ({exc})") from None


def dit_file(path: str | os.PathLike) -> Path | None:
    """The DiT checkpoint of a genmo directory: ``dit.safetensors``, else the one file with genmo DiT keys."""
    path = Path(path)
    if (path / DIT_FILE).is_file():
        return path / DIT_FILE
    for file in sorted(path.glob("*.safetensors")):
        if file.name not in (ENCODER_FILE, DECODER_FILE) and DIT_KEY in _keys_and_shapes(file):
            return file
    return None


def is_genmo_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a Mochi directory in genmo's layout (a DiT and ``decoder.safetensors``, no
    ``model_index.json``); checked from file names and tensor names only."""
    path = Path(path)
    if not path.is_dir() or (path / "model_index.json").is_file():
        return False
    return (path / DECODER_FILE).is_file() and dit_file(path) is not None


def _require(path: Path, name: str) -> Path:
    file = path / name
    if not file.is_file():
        raise UserError(f"{path}: no {name} (genmo's Mochi layout needs dit, encoder and decoder files)")
    return file


# ----------------------------------------------------------------------------------------------- DiT


def transformer_config(dit: str | os.PathLike) -> dict[str, Any]:
    """``MochiTransformer3DModel`` config of a genmo DiT file, from its tensor shapes."""
    shapes = _keys_and_shapes(Path(dit))
    try:
        inner, in_channels, patch, _ = shapes["x_embedder.proj.weight"]
        head_dim = shapes["blocks.0.attn.q_norm_x.weight"][0]
        pooled, text_dim = shapes["t5_yproj.weight"]
        out_rows = shapes["final_layer.linear.weight"][0]
        time_dim = shapes["t_embedder.mlp.0.weight"][1]
    except KeyError as exc:
        raise UserError(f"{dit}: not a genmo Mochi DiT checkpoint (no {exc.args[0]})") from None
    blocks = {int(k.split(".")[1]) for k in shapes if k.startswith("blocks.")}
    return {
        "num_layers": len(blocks),
        "num_attention_heads": inner // head_dim,
        "attention_head_dim": head_dim,
        "pooled_projection_dim": pooled,
        "in_channels": in_channels,
        "out_channels": out_rows // (patch * patch),
        "text_embed_dim": text_dim,
        "time_embed_dim": time_dim,
        "patch_size": patch,
    }


def load_genmo_transformer(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The DiT of a genmo directory as a ``MochiTransformer3DModel`` (diffusers' single-file loading)."""
    from diffusers import MochiTransformer3DModel

    dit = dit_file(path)
    if dit is None:
        raise UserError(f"{path}: no genmo DiT file ({DIT_FILE} or a *.safetensors with {DIT_KEY})")
    config = transformer_config(dit)
    if config["num_layers"] != MOCHI_BLOCKS:
        raise UserError(
            f"{dit}: {config['num_layers']} DiT blocks; diffusers' Mochi single-file converter reads exactly "
            f"{MOCHI_BLOCKS} (Mochi 1). Use a diffusers-format directory for other sizes."
        )
    with tempfile.TemporaryDirectory() as tmp:  # from_single_file takes a local config directory, offline
        Path(tmp, "config.json").write_text(json.dumps({"_class_name": "MochiTransformer3DModel", **config}))
        try:
            return MochiTransformer3DModel.from_single_file(
                str(dit), config=tmp, local_files_only=True, dtype=dtype
            )
        except (KeyError, RuntimeError, ValueError) as exc:
            raise UserError(f"{dit}: cannot load as a Mochi DiT ({exc})") from None


# ----------------------------------------------------------------------------------------------- VAE

_RES_PARTS = (("stack.0", "norm1.norm_layer"), ("stack.2", "conv1.conv"), ("stack.3", "norm2.norm_layer"),
              ("stack.5", "conv2.conv"))  # fmt: skip


def _move(src: dict, old: str, out: dict, new: str) -> None:
    """``out[new.w] = src.pop(old.w)`` for the weight and (if present) the bias."""
    for w in ("weight", "bias"):
        if f"{old}.{w}" in src:
            out[f"{new}.{w}"] = src.pop(f"{old}.{w}")


def _res_block(src: dict, old: str, out: dict, new: str, i: int) -> bool:
    """Move genmo res block ``old`` to diffusers ``new.resnets.i`` (+ its attention); whether it had one."""
    for part, name in _RES_PARTS:
        _move(src, f"{old}.{part}", out, f"{new}.resnets.{i}.{name}")
    qkv = src.pop(f"{old}.attn_block.attn.qkv.weight", None)
    if qkv is None:
        return False
    for name, rows in zip(("to_q", "to_k", "to_v"), qkv.chunk(3), strict=True):
        out[f"{new}.attentions.{i}.{name}.weight"] = rows
    _move(src, f"{old}.attn_block.attn.out", out, f"{new}.attentions.{i}.to_out.0")
    _move(src, f"{old}.attn_block.norm", out, f"{new}.norms.{i}.norm_layer")
    return True


def _children(src: dict, prefix: str) -> list[int]:
    """Sorted integer indices directly under ``prefix`` (``prefix.N....``)."""
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    return sorted({int(m[1]) for k in src if (m := pattern.match(k))})


def _convert_encoder(src: dict, out: dict) -> tuple[list[int], list[bool], list[tuple[int, ...]]]:
    """genmo encoder keys -> ``encoder.`` keys in ``out``; returns per stage (block_in, down blocks,
    block_out) the res blocks and whether they attend, and each down block's conv kernel."""
    _move(src, "layers.0", out, "encoder.proj_in")
    edge: dict[str, list[bool]] = {"block_in": [], "block_out": []}  # attention flag per res block
    downs: list[list[bool]] = []
    kernels = []
    for n in _children(src, "layers"):
        subs = _children(src, f"layers.{n}.layers")
        if n == 0:
            continue
        if subs:  # a down block: strided conv, then res blocks
            b = len(downs)
            kernels.append(tuple(src[f"layers.{n}.layers.0.weight"].shape[2:]))
            _move(src, f"layers.{n}.layers.0", out, f"encoder.down_blocks.{b}.conv_in.conv")
            downs.append(
                [
                    _res_block(src, f"layers.{n}.layers.{j}", out, f"encoder.down_blocks.{b}", j - 1)
                    for j in subs[1:]
                ]
            )
        else:
            name = "block_out" if downs else "block_in"
            edge[name].append(_res_block(src, f"layers.{n}", out, f"encoder.{name}", len(edge[name])))
    _move(src, "output_norm", out, "encoder.norm_out.norm_layer")
    _move(src, "output_proj", out, "encoder.proj_out")
    stages = [edge["block_in"], *downs, edge["block_out"]]
    return [len(s) for s in stages], [any(s) for s in stages], kernels


def _convert_decoder(src: dict, out: dict) -> list[int]:
    """genmo decoder keys -> ``decoder.`` keys in ``out``; returns res blocks per stage (decoder order)."""
    blocks = _children(src, "blocks")
    if len(blocks) < 2:
        raise ValueError("decoder: expected blocks.0 .. blocks.K")
    _move(src, "blocks.0.0", out, "decoder.conv_in")
    counts = [0]
    for j in _children(src, "blocks.0"):
        if j > 0:
            _res_block(src, f"blocks.0.{j}", out, "decoder.block_in", j - 1)
            counts[0] += 1
    for b in blocks[1:-1]:
        subs = _children(src, f"blocks.{b}.blocks")
        for j in subs:
            _res_block(src, f"blocks.{b}.blocks.{j}", out, f"decoder.up_blocks.{b - 1}", j)
        _move(src, f"blocks.{b}.proj", out, f"decoder.up_blocks.{b - 1}.proj")
        counts.append(len(subs))
    last = _children(src, f"blocks.{blocks[-1]}")
    for j in last:
        _res_block(src, f"blocks.{blocks[-1]}.{j}", out, "decoder.block_out", j)
    _move(src, "output_proj", out, "decoder.proj_out")
    return [*counts, len(last)]


def vae_state_dict(encoder: dict, decoder: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, config)`` of an ``AutoencoderKLMochi`` from genmo's encoder and decoder state dicts.

    The config is read from the shapes; the latent normalisation keeps diffusers' Mochi defaults (genmo
    hard-codes the same statistics in its pipeline). Raises ``ValueError`` for keys left over or a layout
    diffusers' class cannot hold.
    """
    enc, dec, out = dict(encoder), dict(decoder), {}
    layers, attention, kernels = _convert_encoder(enc, out)
    dec_counts = _convert_decoder(dec, out)
    left = sorted(enc)[:3] + sorted(dec)[:3]
    if left:
        raise ValueError(f"keys not understood: {', '.join(left)}")
    if dec_counts != layers[::-1]:
        raise ValueError(f"encoder res blocks {layers} and decoder {dec_counts} are not mirrored")
    ups = len(dec_counts) - 2
    dec_channels = [out["decoder.block_out.resnets.0.norm1.norm_layer.weight"].shape[0]] + [
        out[f"decoder.up_blocks.{i}.resnets.0.norm1.norm_layer.weight"].shape[0] for i in reversed(range(ups))
    ]
    config = {
        "in_channels": out["encoder.proj_in.weight"].shape[1],
        "out_channels": out["decoder.proj_out.weight"].shape[0],
        "latent_channels": out["decoder.conv_in.weight"].shape[1],
        "encoder_block_out_channels": [out["encoder.proj_in.weight"].shape[0]]
        + [out[f"encoder.down_blocks.{b}.conv_in.conv.weight"].shape[0] for b in range(ups)],
        "decoder_block_out_channels": dec_channels,
        "layers_per_block": layers,
        "temporal_expansions": [int(k[0]) for k in kernels],
        "spatial_expansions": [int(k[1]) for k in kernels],
        "add_attention_block": attention,
    }
    return out, config


def load_genmo_vae(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The VAE of a genmo directory (``encoder.safetensors`` + ``decoder.safetensors``) as ``AutoencoderKLMochi``."""
    from diffusers import AutoencoderKLMochi

    path = Path(path)
    encoder, decoder = _require(path, ENCODER_FILE), _require(path, DECODER_FILE)
    try:
        state, config = vae_state_dict(load_file(str(encoder)), load_file(str(decoder)))
        vae = AutoencoderKLMochi(**config)
        vae.load_state_dict(state, strict=True)
    except (KeyError, ValueError, RuntimeError) as exc:
        first = str(exc).splitlines()[0][:300]
        raise UserError(f"{path}: cannot convert genmo's {ENCODER_FILE}/{DECODER_FILE} ({first})") from None
    return vae.to(dtype).eval()


# ----------------------------------------------------------------------------------------------- T5


def text_encoder_dir(model: str | os.PathLike, text_encoder: str | os.PathLike | None) -> Path:
    """The T5 folder: ``text_encoder`` if given, else ``t5-v1_1-xxl/`` beside the genmo directory."""
    if text_encoder:
        folder = Path(text_encoder).expanduser()
    else:
        folder = Path(model).expanduser().resolve().parent / T5_FOLDER
        if not folder.is_dir():
            raise UserError(
                f"{model}: genmo-layout Mochi needs T5; pass --text-encoder pretrained_models/{T5_FOLDER} "
                f"(no {folder})"
            )
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder}: not a T5 folder (no config.json); pass the google/t5-v1_1-xxl download")
    return folder


def load_text_encoder(folder: Path, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """``(T5EncoderModel, tokenizer)`` from one folder (a T5 download: weights, config and spiece model)."""
    from transformers import AutoTokenizer, T5EncoderModel

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        encoder = T5EncoderModel.from_pretrained(str(folder), dtype=dtype)
    except (OSError, ValueError) as exc:
        raise UserError(f"{folder}: cannot load T5 and its tokenizer ({str(exc).splitlines()[0]})") from None
    return encoder.eval(), tokenizer


# ----------------------------------------------------------------------------------------------- pipeline


def mochi_scheduler():
    """Mochi 1's sampler: flow-matching Euler with inverted sigmas (the diffusers release's config)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(invert_sigmas=True)


def load_genmo_pipeline(
    path: str | os.PathLike,
    text_encoder: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float32,
    with_transformer: bool = True,
):
    """A ``MochiPipeline`` from a genmo directory and a T5 folder (see the module docstring); without the
    transformer when ``with_transformer`` is False (encoding data needs only the VAE and T5)."""
    from diffusers import MochiPipeline

    folder = text_encoder_dir(path, text_encoder)
    transformer = load_genmo_transformer(path, dtype) if with_transformer else None
    encoder, tokenizer = load_text_encoder(folder, dtype)
    return MochiPipeline(
        scheduler=mochi_scheduler(),
        vae=load_genmo_vae(path, dtype),
        text_encoder=encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        force_zeros_for_empty_prompt=True,  # genmo zeroes the empty (negative) prompt's T5 states
    )
