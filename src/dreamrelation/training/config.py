"""Training configuration: plain dataclasses whose defaults are the paper's numbers (see METHOD.md).

Only OmegaConf-compatible field types are used so these can serve as structured configs for YAML files.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from dreamrelation.core.roles import AdapterConfig
from dreamrelation.errors import UserError, warn_user


@dataclass
class HMTConfig:
    """Hybrid mask training: per-step choice of relation/subject1/subject2 and the mask loss weight.

    ``shared_on``: the choices on whose steps the roles outside the triplet (``output``) are active and
    trained; the paper trains the output adapter on every step, ``["relation"]`` keeps it off subject steps.
    """

    enabled: bool = True
    probs: dict[str, float] = field(
        default_factory=lambda: {"relation": 1.0 / 3, "subject1": 1.0 / 3, "subject2": 1.0 / 3}
    )
    lambda_m: float = 50.0
    shared_on: list[str] = field(default_factory=lambda: ["relation", "subject1", "subject2"])


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
class I2VConfig:
    """Image-to-video steps (backbones that take an image: Wan 2.2 TI2V-5B).

    With ``probability`` p, a step conditions on the first frame as the backbone's image pipeline samples:
    the first latent frame enters clean at timestep 0 and gets no loss (HMT masks and RCL see only the
    generated frames); the other steps are plain text-to-video steps. p = 0: text-to-video only (exactly
    the trainer without this option); p = 1: image-to-video only.
    """

    probability: float = 0.0


def check_i2v_config(i2v: I2VConfig) -> None:
    """Refuse a probability outside [0, 1] (one line naming the key)."""
    if not 0.0 <= float(i2v.probability) <= 1.0:
        raise UserError(
            f"i2v.probability={i2v.probability}: must be between 0 and 1 (e.g. 0.5: half the steps "
            "condition on the first frame)."
        )


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
    # noise levels drawn shifted towards pure noise (losses.shift_sigmas): 1 draws them uniformly, as the
    # paper's code; above 1 spends more of the training where a video's layout and motion are decided
    sigma_shift: float = 1.0
    seed: int = 0
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 10


def check_optim_config(oc: OptimConfig) -> None:
    """Refuse values that cannot train (one line naming the key) and warn about a schedule that would not
    do what was meant (a warm-up as long as the run keeps the learning rate below ``lr`` throughout)."""
    for key in ("steps", "batch_size"):  # checkpoint_every=0: no periodic checkpoints
        if int(getattr(oc, key)) < 1:
            raise UserError(f"optim.{key}={getattr(oc, key)}: must be at least 1 (e.g. optim.steps=500).")
    if not (0 < oc.sigma_shift < float("inf")):
        raise UserError(
            f"optim.sigma_shift={oc.sigma_shift}: must be a positive number (1: uniform noise levels)."
        )
    if not (0 < oc.lr < float("inf")):
        raise UserError(f"optim.lr={oc.lr}: must be a positive number (the paper uses 2e-4).")
    if oc.warmup_steps < 0 or not 0 <= oc.caption_dropout < 1:
        raise UserError(
            f"optim.warmup_steps={oc.warmup_steps}, optim.caption_dropout={oc.caption_dropout}: need "
            "warmup_steps >= 0 and 0 <= caption_dropout < 1."
        )
    if oc.warmup_steps >= oc.steps:
        warn_user(
            f"optim.warmup_steps={oc.warmup_steps} >= optim.steps={oc.steps}: the learning rate never leaves "
            f"warm-up (it peaks at {oc.steps / oc.warmup_steps:.0%} of lr); set e.g. "
            f"optim.warmup_steps={max(oc.steps // 10, 0)}."
        )


OPTIMIZERS = ("adamw", "adamw8bit")
SDPA_KERNELS = ("sdpa", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn", "sdpa_math")


@dataclass
class MemoryConfig:
    """Memory/speed modes for large backbones; the defaults change nothing.

    Estimates for Mochi 1 (10 B parameters, 48 blocks, width 3072) at 61 x 480 x 848 (latent 12 x 11 x 60 x
    106 -> 17,490 visual + 256 text tokens), batch 1, the paper's adapters (~41 M LoRA parameters), measured
    ones in ``benchmarks/results/gpu_mochi.json`` (``benchmarks/gpu_scale.py``):

    * ``checkpoint_blocks``: gradient checkpointing of the first N transformer blocks (None: all blocks when
      ``TrainConfig.gradient_checkpointing`` is on, else none; 0: none). A checkpointed block keeps only its
      inputs (~0.11 GB per block here) and recomputes its forward in the backward pass (~+30 % step time
      when all are checkpointed); a block kept whole holds every intermediate (order of 2-3 GB per block
      here), so un-checkpointing some of the last blocks trades spare memory for speed.
    * ``fp8_base``: the frozen base weights stored in float8 e4m3 and cast to bf16 layer by layer for compute
      (diffusers ``enable_layerwise_casting``; LoRA, norm and embedding layers are skipped, adapters stay
      fp32): base weights ~20 GB (bf16) -> ~10 GB; each forward (and recompute) pays one cast per layer
      (a few % to ~15 % slower) and weights are rounded to 3 mantissa bits (small quality loss). Implies bf16
      compute (autocast) even on the CPU.
    * ``optimizer``: "adamw" (torch) or "adamw8bit" (bitsandbytes, must be installed): the optimizer state
      shrinks from 8 to ~2 bytes per adapter parameter; ~0.33 GB -> ~0.08 GB for the paper's adapters, so
      it matters only for much larger adapters.
    * ``attention_backend``: "sdpa" (default: PyTorch's choice of kernel), "sdpa_flash" / "sdpa_efficient" /
      "sdpa_cudnn" / "sdpa_math" (force one SDPA kernel for the training forward and backward; works for
      every backbone) or any diffusers backend name such as "flash" or "sage" (``set_attention_backend``;
      only for backbones whose attention goes through diffusers' dispatcher, e.g. Wan - Mochi calls SDPA
      directly). Math attention materialises the 17.7k x 17.7k score matrix per head (~0.6 GB each in bf16)
      - only for debugging.

    * ``offload_frozen``: the frozen parts other than the transformer - the text encoder (T5-XXL, ~9.5 GB in
      bf16) and the VAE (~0.8 GB) - are parked on the CPU while the adapters train and moved to the GPU only
      to generate validation samples (a few seconds of transfer per validation). It matters when training
      from raw videos with ``monitor.validate_every``; training from a prepared cache never loads them at
      all (``dreamrelation.backbones.loading.load_transformer`` loads the transformer alone). The frozen
      transformer base itself is not offloaded: its PEFT adapters live inside the blocks and train there;
      ``fp8_base`` is the way to halve it, ``blocks_to_swap`` or ``fsdp`` the ways to spread it.
    * ``blocks_to_swap``: the frozen weights of the last N transformer blocks stay in CPU memory (pinned on
      CUDA machines) and are streamed to the GPU just before each block's forward and its backward
      recompute (prefetched on a side stream); those blocks are always gradient-checkpointed. Saves
      ~0.41 GB of GPU memory per block on Mochi in bf16 (0.21 GB with ``fp8_base``; Wan 2.1 1.3B: ~0.05
      GB, 14B: ~0.35 GB) for ~0.41 GB of host memory and two transfers per block per step (~33 ms each
      over PCIe 4 x16, largely hidden behind compute). Same results bit for bit (see
      :mod:`dreamrelation.backbones.block_swap`).
    * ``fsdp``: under a multi-process launch, shard the frozen base over the ranks per transformer block
      with PyTorch's FSDP2 (``fully_shard``), gathering each block's weights just for its forward and
      recompute; the adapters stay whole on every rank and are trained exactly as in data parallel. Base
      memory per GPU ~20 GB / N on Mochi (plus about two blocks gathered at a time). Ignored by a single
      process; not combined with ``blocks_to_swap`` or ``fp8_base`` yet.
    """

    checkpoint_blocks: int | None = None
    fp8_base: bool = False
    optimizer: str = "adamw"
    attention_backend: str = "sdpa"
    offload_frozen: bool = True
    blocks_to_swap: int = 0
    fsdp: bool = False


@dataclass
class MonitorConfig:
    """Logging and validation during training (see ``training/monitor.py``).

    ``tensorboard``: scalars (loss, lr) under ``OUT/tensorboard`` (needs the ``tensorboard`` package);
    ``wandb``: the same to Weights & Biases (needs ``wandb``; ``wandb_mode=offline`` works without network);
    ``validate_every``: every N steps (0: never) generate ``prompts`` x ``seeds`` with the inference adapters
    into ``OUT/validation/step_N/`` (MP4 + contact sheet) - needs the pipeline's VAE and text encoder;
    ``num_frames`` / ``height`` / ``width``: their size (None: the model's default).
    """

    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str = "dreamrelation"
    wandb_mode: str = "online"
    validate_every: int = 0
    prompts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    num_inference_steps: int = 32
    guidance_scale: float = 4.0
    num_frames: int | None = None  # validation video geometry (None: the model's default)
    height: int | None = None
    width: int | None = None


@dataclass
class TrainConfig:
    """Everything the trainer needs. ``mixed_precision``: "auto" (bf16 on CUDA, fp32 on CPU), "bf16", "fp32".

    ``memory``: memory/speed modes (:class:`MemoryConfig`), all off by default. ``i2v``: the share of
    image-to-video steps (:class:`I2VConfig`; 0 by default).
    """

    method: str = "dreamrelation"
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    hmt: HMTConfig = field(default_factory=HMTConfig)
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = False
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    i2v: I2VConfig = field(default_factory=I2VConfig)


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


def _inference_roles(roles: list[str]):
    def edit(cfg: TrainConfig) -> None:
        cfg.adapter.inference_roles = list(roles)

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
    # why the toy results differ from the paper (issue 16): the same training, other roles at inference ...
    "roles_relation": _inference_roles(["relation"]),
    "roles_all": _inference_roles(["relation", "subject1", "subject2", "output"]),
    # ... and training variants: the mask loss weight, the output adapter kept off subject steps
    "lambda_m_0": _set("hmt.lambda_m", 0.0),
    "lambda_m_5": _set("hmt.lambda_m", 5.0),
    "output_relation_steps": _set("hmt.shared_on", ["relation"]),
}

PRESET_NAMES = tuple(_PRESETS)


def preset(name: str) -> TrainConfig:
    """Return a fresh ``TrainConfig`` for a method or ablation preset (see ``PRESET_NAMES``)."""
    if name not in _PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESET_NAMES)}")
    cfg = TrainConfig(method=name)
    _PRESETS[name](cfg)
    return copy.deepcopy(cfg)
