"""Training configuration: plain dataclasses whose defaults are the paper's numbers (see METHOD.md).

Only OmegaConf-compatible field types are used so these can serve as structured configs for YAML files.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

PROJECTIONS = ("q", "k", "v", "out")
STREAMS = ("visual", "text")
HMT_CHOICES = ("relation", "subject1", "subject2")


def _paper_placement() -> dict[str, list[str]]:
    return {"relation": ["q", "k"], "subject1": ["v"], "subject2": ["v"], "output": ["out"]}


@dataclass
class AdapterConfig:
    """Which LoRA adapters exist (role -> projection kinds), on which attention streams, and their size."""

    rank: int = 16
    alpha: float = 16.0
    streams: list[str] = field(default_factory=lambda: ["visual", "text"])
    placement: dict[str, list[str]] = field(default_factory=_paper_placement)
    inference_roles: list[str] = field(default_factory=lambda: ["relation", "output"])


@dataclass
class HMTConfig:
    """Hybrid mask training: per-step choice of relation/subject1/subject2 and the mask loss weight."""

    enabled: bool = True
    probs: dict[str, float] = field(
        default_factory=lambda: {"relation": 1.0 / 3, "subject1": 1.0 / 3, "subject2": 1.0 / 3}
    )
    lambda_m: float = 50.0


@dataclass
class ContrastiveConfig:
    """Space-time relational contrastive loss (RCL) with FIFO memory banks."""

    enabled: bool = True
    weight: float = 0.01
    temperature: float = 0.07
    n_pos: int = 4
    n_neg: int = 10
    pos_bank: int = 10
    neg_bank: int = 64


@dataclass
class OptimConfig:
    """AdamW, warm-up + cosine schedule, clipping, batch, caption dropout, seed and logging cadence."""

    lr: float = 2e-4
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 200
    steps: int = 2000
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0
    batch_size: int = 1
    caption_dropout: float = 0.1
    seed: int = 0
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 10


@dataclass
class TrainConfig:
    """Everything the trainer needs. ``mixed_precision``: "auto" (bf16 on CUDA, fp32 on CPU), "bf16", "fp32"."""

    method: str = "dreamrelation"
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    hmt: HMTConfig = field(default_factory=HMTConfig)
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = False


def _direct_lora(cfg: TrainConfig) -> None:
    cfg.adapter.placement = {"direct": ["q", "k", "v", "out"]}
    cfg.adapter.inference_roles = ["direct"]
    cfg.hmt.enabled = False
    cfg.contrastive.enabled = False
    cfg.optim.steps = 1000


def _placement(relation: list[str], subject: list[str]) -> dict[str, list[str]]:
    return {"relation": relation, "subject1": subject, "subject2": subject, "output": ["out"]}


def _without(role: str):
    def edit(cfg: TrainConfig) -> None:
        cfg.adapter.placement.pop(role, None)
        if role in ("subject1", "subject2"):
            cfg.adapter.placement.pop("subject1", None)
            cfg.adapter.placement.pop("subject2", None)
        cfg.adapter.inference_roles = [r for r in cfg.adapter.inference_roles if r in cfg.adapter.placement]

    return edit


def _set(path: str, value: object):
    def edit(cfg: TrainConfig) -> None:
        section, name = path.split(".")
        setattr(getattr(cfg, section), name, value)

    return edit


_PRESETS = {
    "dreamrelation": lambda cfg: None,
    "direct_lora": _direct_lora,
    "wo_hmt": _set("hmt.enabled", False),
    "wo_rcl": _set("contrastive.enabled", False),
    "wo_relation": _without("relation"),
    "wo_subject": _without("subject1"),
    "wo_output": _without("output"),
    "v_qk": lambda cfg: setattr(cfg.adapter, "placement", _placement(["v"], ["q", "k"])),
    "q_kv": lambda cfg: setattr(cfg.adapter, "placement", _placement(["q"], ["k", "v"])),
    "kv_q": lambda cfg: setattr(cfg.adapter, "placement", _placement(["k", "v"], ["q"])),
    "visual_only": _set("adapter.streams", ["visual"]),
}

PRESET_NAMES = tuple(_PRESETS)


def preset(name: str) -> TrainConfig:
    """Return a fresh ``TrainConfig`` for a method or ablation preset (see ``PRESET_NAMES``)."""
    if name not in _PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESET_NAMES)}")
    cfg = TrainConfig(method=name)
    _PRESETS[name](cfg)
    return copy.deepcopy(cfg)
