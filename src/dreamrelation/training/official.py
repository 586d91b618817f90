"""The official DreamRelation training YAML (``demos/fine_tuner/configs/<relation>/example.yaml``) as a
:class:`TrainConfig`.

Fields with an equivalent are mapped (steps, learning rate, LoRA rank/alpha and names, mask type and
lambda, contrastive weight, counts and banks, validation samples and their frames); everything else
(paths, wandb, dropout, dtype, save format, Python-code schedules) is listed as ignored. The official code
trains one unnamed output-projection LoRA beside the named ones: here it is the ``output`` role, used at
inference with ``test_lora_names`` as the official sampler does.
"""

from __future__ import annotations

import copy
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from dreamrelation.config import load_config
from dreamrelation.errors import UserError
from dreamrelation.training.config import TrainConfig, preset
from dreamrelation.utils.io import atomic_write_json

#: official key -> (our key, conversion)
_SIMPLE: dict[str, tuple[str, type]] = {
    "training.num_steps": ("optim.steps", int),
    "training.warmup_steps": ("optim.warmup_steps", int),
    "training.save_interval": ("optim.checkpoint_every", int),
    "training.caption_dropout": ("optim.caption_dropout", float),
    "optimizer.lr": ("optim.lr", float),
    "optimizer.weight_decay": ("optim.weight_decay", float),
    "loss_mask_lam": ("hmt.lambda_m", float),
    "use_relational_contrastive_learning": ("contrastive.enabled", bool),
    "relational_contrastive_learning_lam": ("contrastive.weight", float),
    "total_positive_nums": ("contrastive.n_pos", int),
    "total_negative_nums": ("contrastive.n_neg", int),
    "positive_buffer_size": ("contrastive.pos_bank", int),
    "negative_buffer_size": ("contrastive.neg_bank", int),
    "model.kwargs.qkv_proj_lora_rank": ("adapter.rank", int),
    "model.kwargs.qkv_proj_lora_alpha": ("adapter.alpha", float),
    "sample.interval": ("monitor.validate_every", int),
    "sample.prompts": ("monitor.prompts", list),
    "sample.kwargs.num_inference_steps": ("monitor.num_inference_steps", int),
    "sample.kwargs.num_frames": ("monitor.num_frames", int),
    "sample.kwargs.height": ("monitor.height", int),
    "sample.kwargs.width": ("monitor.width", int),
}
_NAMES = ("train_lora_names", "test_lora_names", "model.kwargs.q_lora_names", "model.kwargs.k_lora_names",
          "model.kwargs.v_lora_names", "model.kwargs.test_lora_names", "model.kwargs.out_proj_lora_rank",
          "model.kwargs.out_proj_lora_alpha")  # fmt: skip
_CHECKPOINTS = (
    "training.num_qkv_checkpoint",
    "training.num_ff_checkpoint",
    "training.num_post_attn_checkpoint",
)
OFFICIAL_RECORD = "official_config.json"
_CFG_CODE = re.compile(r"^\s*\[\s*([0-9.eE+-]+)\s*\]\s*\*\s*\d+\s*$")  # "[6.0] * 64": one constant scale


@dataclass
class OfficialMapping:
    """What :func:`official_train_config` took from an official YAML (recorded in the run folder)."""

    source: str
    mapped: dict[str, Any] = field(default_factory=dict)  # "official.key -> our.key" -> value
    ignored: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: how many fields were mapped, and the ignored ones."""
        ignored = ", ".join(self.ignored) or "none"
        return f"{self.source}: official DreamRelation YAML, {len(self.mapped)} field(s) mapped; ignored: {ignored}"

    def write(self, out_dir: str | os.PathLike) -> Path:
        """Record the mapping as ``OUT/official_config.json``."""
        path = Path(out_dir) / OFFICIAL_RECORD
        atomic_write_json(path, {"source": self.source, "mapped": self.mapped, "ignored": self.ignored})
        return path


def _flatten(data: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML file as flat ``a.b.c`` keys (interpolations such as ``${checkpoint_dir}`` left unresolved)."""
    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as exc:  # YAML syntax errors
        raise UserError(f"{path}: cannot parse YAML ({str(exc).splitlines()[0]})") from None
    return _flatten(data) if isinstance(data, dict) else {}


def is_official_config(path: str | os.PathLike) -> bool:
    """Whether a YAML file is an official DreamRelation training config (its own field names)."""
    keys = read_yaml(path)
    return any(
        k in keys for k in ("train_lora_names", "training.num_steps", "model.kwargs.qkv_proj_lora_rank")
    )


def _set(cfg: TrainConfig, dotted: str, value: Any) -> None:
    *parents, name = dotted.split(".")
    target = cfg
    for part in parents:
        target = getattr(target, part)
    setattr(target, name, value)


def _convert(value: Any, kind: type, key: str, path: str) -> Any:
    try:
        if kind is bool and isinstance(value, str):
            return value.strip().lower() in ("true", "1", "yes")
        return [str(v) for v in value] if kind is list else kind(value)
    except (TypeError, ValueError):
        raise UserError(f"{path}: {key}={value!r} is not a {kind.__name__}; fix the value") from None


def _placement(keys: dict[str, Any], path: str) -> dict[str, list[str]]:
    """role -> projection kinds from the ``{q,k,v}_lora_names`` lists (+ ``output`` for the out LoRA)."""
    trained = keys.get("train_lora_names")
    placement: dict[str, list[str]] = {}
    for kind in "qkv":
        for role in keys.get(f"model.kwargs.{kind}_lora_names") or []:
            if trained is None or role in trained:
                placement.setdefault(str(role), []).append(kind)
    if not placement:
        raise UserError(
            f"{path}: no q/k/v_lora_names in model.kwargs; add them (e.g. q_lora_names: [relation])"
        )
    out_rank = int(keys.get("model.kwargs.out_proj_lora_rank") or 0)
    qkv_rank = int(keys.get("model.kwargs.qkv_proj_lora_rank") or out_rank)
    if out_rank and out_rank != qkv_rank:
        raise UserError(
            f"{path}: out_proj_lora_rank {out_rank} differs from qkv_proj_lora_rank {qkv_rank}; "
            "adapters here share one rank: set both equal"
        )
    if out_rank:
        placement["output"] = ["out"]
    return placement


def _special(cfg: TrainConfig, keys: dict[str, Any], mapping: OfficialMapping) -> set[str]:
    """Fields that map onto several settings or need a conversion; returns the keys used."""
    used: set[str] = set()
    placement = _placement(keys, mapping.source)
    cfg.adapter.placement = placement
    tests = keys.get("test_lora_names") or keys.get("model.kwargs.test_lora_names") or ["relation"]
    cfg.adapter.inference_roles = [str(r) for r in tests if r in placement] + (
        ["output"] if "output" in placement else []
    )
    mapping.mapped["*_lora_names, out_proj_lora_rank -> adapter.placement"] = placement
    mapping.mapped["test_lora_names -> adapter.inference_roles"] = cfg.adapter.inference_roles
    used.update(k for k in _NAMES if k in keys)
    if keys.get("loss_mask_type") == "combine_mask":  # the hybrid relation / subject mask loss
        cfg.hmt.enabled = True
        mapping.mapped["loss_mask_type -> hmt.enabled"] = True
        used.add("loss_mask_type")
    if "training.grad_clip" in keys:  # genmo clips only when grad_clip > 0
        clip = float(keys["training.grad_clip"])
        cfg.optim.grad_clip = clip if clip > 0 else math.inf
        mapping.mapped["training.grad_clip -> optim.grad_clip"] = cfg.optim.grad_clip
        used.add("training.grad_clip")
    blocks = [int(keys[k]) for k in _CHECKPOINTS if k in keys]
    if blocks:
        cfg.gradient_checkpointing = max(blocks) > 0
        cfg.memory.checkpoint_blocks = max(blocks)
        mapping.mapped["training.num_*_checkpoint -> memory.checkpoint_blocks"] = max(blocks)
        used.update(k for k in _CHECKPOINTS if k in keys)
    if "sample.seed" in keys:
        cfg.monitor.seeds = [int(keys["sample.seed"])]
        mapping.mapped["sample.seed -> monitor.seeds"] = cfg.monitor.seeds
        used.add("sample.seed")
    match = _CFG_CODE.match(str(keys.get("sample.kwargs.cfg_schedule_python_code", "")))
    if match:
        cfg.monitor.guidance_scale = float(match[1])
        mapping.mapped["sample.kwargs.cfg_schedule_python_code -> monitor.guidance_scale"] = float(match[1])
        used.add("sample.kwargs.cfg_schedule_python_code")
    return used


def official_train_config(
    path: str | os.PathLike, base: TrainConfig | None = None, overrides: list[str] | None = None
) -> tuple[TrainConfig, OfficialMapping]:
    """``(config, mapping)`` of an official YAML on top of ``base`` (default: the DreamRelation preset),
    then ``key=value`` overrides (ours, checked as for our own YAML files)."""
    keys = read_yaml(path)
    cfg = copy.deepcopy(base) if base is not None else preset("dreamrelation")
    mapping = OfficialMapping(str(path))
    used = _special(cfg, keys, mapping)
    for key, (ours, kind) in _SIMPLE.items():
        if key in keys and keys[key] is not None:
            value = _convert(keys[key], kind, key, str(path))
            _set(cfg, ours, value)
            mapping.mapped[f"{key} -> {ours}"] = value
            used.add(key)
    mapping.ignored = sorted(k for k in keys if k not in used)
    return load_config(cfg, None, overrides), mapping


def load_train_config(
    method: str, path: str | os.PathLike | None, overrides: list[str] | None
) -> tuple[TrainConfig, OfficialMapping | None]:
    """The training config of a method preset + our YAML or an official one (detected by its field names)
    + overrides; the mapping is None for our own format."""
    base = preset(method)
    if path is not None and Path(path).is_file() and is_official_config(path):
        return official_train_config(path, base, overrides)
    return load_config(base, path, overrides), None
