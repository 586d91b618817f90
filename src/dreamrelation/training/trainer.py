"""Single-process trainer for the relation LoRA triplet (hybrid mask training + relational contrastive loss).

One step: pick a batch; pick the HMT role (relation / subject1 / subject2, same choice for the whole batch,
from its own seeded RNG); activate that role's adapters; rectified-flow loss with the role's mask; plus the
contrastive loss; AdamW over *all* adapter parameters (inactive ones get no gradient and are skipped).

Image-to-video steps (``i2v.probability`` > 0, backbones that take an image: Wan 2.2 TI2V-5B): with that
probability a step conditions on the first frame as the backbone's image pipeline samples - the first latent
frame enters clean with timestep 0 on its tokens, and the losses (flow MSE, HMT mask, RCL) cover the
generated frames only; the choice is drawn per step from a generator keyed by (seed, step), so it needs no
state, resumes exactly and agrees across ranks, and with probability 0 nothing is drawn at all.

Randomness: the HMT choice comes from ``hmt_gen`` and the RCL bank sampling from ``data_gen`` (CPU generators
saved in the checkpoints); the noise of each sample (caption dropout, latent sampling, sigma, eps) comes from a
generator keyed by (seed, step, position in the global batch), stateless like the batch order. So a resumed run
reproduces an uninterrupted one exactly on CPU, and a data-parallel run (``accelerate launch``, see
:mod:`dreamrelation.training.distributed`) on N processes reproduces a single process with an N times larger
batch: ``hmt_gen`` and ``data_gen`` are seeded identically on every rank, each rank draws its own shard's noise.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from dreamrelation.adapters.triplet import (
    adapter_parameters,
    adapter_roles,
    add_relation_adapters,
    named_adapter_parameters,
    save_adapters,
    set_active_roles,
)
from dreamrelation.backbones.registry import get_backbone
from dreamrelation.core.roles import HMT_CHOICES
from dreamrelation.core.samples import TrainingSample
from dreamrelation.errors import UserError
from dreamrelation.training.config import (
    OptimConfig,
    TrainConfig,
    check_i2v_config,
    check_optim_config,
)
from dreamrelation.training.distributed import (
    GatheredContrastiveLoss,
    all_reduce_gradients,
    broadcast_parameters,
    init_distributed,
    shard_frozen_base,
)
from dreamrelation.training.losses import (
    RelationalContrastiveLoss,
    condition_on_first_frames,
    flow_matching_inputs,
    masked_mse,
)
from dreamrelation.training.memory import (
    apply_memory_modes,
    attention_kernel,
    check_memory_config,
    make_optimizer,
)
from dreamrelation.utils.io import RunLock, atomic_path, remove_partial_writes

CHOICES = (*HMT_CHOICES, "all")  # "all": HMT disabled, every adapter on, plain MSE
CHECKPOINT_FORMAT = "dreamrelation-checkpoint-v1"
_CKPT_RE = re.compile(r"^step_(\d+)\.safetensors$")


@dataclass
class TrainResult:
    """Per-step history (including steps before a resume), timings and output paths."""

    losses: list[float]
    choices: list[str]
    lrs: list[float]
    step_seconds: list[float]
    total_seconds: float
    start_step: int
    out_dir: Path
    adapter_dir: Path
    checkpoint: Path | None
    parts: dict[str, list[float]] = field(default_factory=dict)
    i2v_steps: list[bool] = field(default_factory=list)  # per step: conditioned on the first frame

    @property
    def seconds_per_step(self) -> float:
        """Mean wall time of the steps run in this call."""
        new = self.step_seconds[self.start_step :]
        return sum(new) / max(len(new), 1)


# ----------------------------------------------------------------------------------------------- schedule


def lr_at(step: int, cfg: OptimConfig) -> float:
    """Learning rate for 0-based ``step``: linear warm-up to ``lr`` then cosine decay to ``lr * min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(cfg.steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / span, 1.0)
    low = cfg.lr * cfg.min_lr_ratio
    return low + 0.5 * (cfg.lr - low) * (1.0 + math.cos(math.pi * progress))


def roles_for_choice(choice: str, roles: Sequence[str], shared_on: Sequence[str] = HMT_CHOICES) -> list[str]:
    """Adapters active for an HMT choice. Roles other than relation/subject1/subject2 (``output``, ``direct``)
    are on for the choices in ``shared_on`` (all of them by default, as the paper); roles missing from the
    placement (ablations) are skipped."""
    if choice == "all":
        return list(roles)
    wanted = {
        "relation": {"relation", "subject1", "subject2"},
        "subject1": {"subject1"},
        "subject2": {"subject2"},
    }
    shared = choice in shared_on
    return [r for r in roles if r in wanted[choice] or (shared and r not in HMT_CHOICES)]


def mask_for_choice(choice: str, masks: torch.Tensor) -> torch.Tensor:
    """Loss mask (B, F, h, w) from subject masks (B, 2, F, h, w): union for relation, one subject otherwise."""
    if choice == "relation":
        return masks.amax(dim=1)
    return masks[:, HMT_CHOICES.index(choice) - 1]


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> list[int]:
    """Sample indices of a step: consecutive slices of per-epoch permutations (stateless, so resumable)."""
    out = []
    for k in range(step * batch_size, (step + 1) * batch_size):
        epoch, pos = divmod(k, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch + 7))
        out.append(int(perm[pos]))
    return out


_MASK64 = (1 << 64) - 1


def sample_generator(seed: int, step: int, position: int) -> torch.Generator:
    """CPU generator for the noise of the sample at ``position`` of the global batch of ``step`` (a 64-bit mix
    of the three numbers, so streams of nearby keys are unrelated)."""
    h = 0x9E3779B97F4A7C15
    for v in (seed, step, position):
        h = ((h ^ (v & _MASK64)) * 0xBF58476D1CE4E5B9) & _MASK64
        h ^= h >> 31
    return torch.Generator().manual_seed(h & ((1 << 63) - 1))


# ------------------------------------------------------------------------------------------------- data


def _check_samples(samples: Sequence[TrainingSample], need_masks: bool) -> None:
    if not samples:
        raise UserError("no training samples: give at least one encoded video")
    ref = samples[0]
    for i, s in enumerate(samples):
        name = s.name or f"sample {i}"
        if s.latents.ndim != 4 or s.latents.shape != ref.latents.shape:
            raise UserError(
                f"{name}: latents {tuple(s.latents.shape)}, expected (C, F, h, w) = {tuple(ref.latents.shape)}"
            )
        if (
            s.prompt_embeds.shape != ref.prompt_embeds.shape
            or s.prompt_mask.shape != s.prompt_embeds.shape[:1]
        ):
            raise UserError(
                f"{name}: prompt embeddings {tuple(s.prompt_embeds.shape)} / mask {tuple(s.prompt_mask.shape)} "
                "do not match the others; pad all prompts to the same token count"
            )
        if need_masks and (s.masks is None or s.masks.shape != (2, *s.latents.shape[1:])):
            got = None if s.masks is None else tuple(s.masks.shape)
            raise UserError(
                f"{name}: hybrid mask training needs latent masks (2, F, h, w) = "
                f"{(2, *s.latents.shape[1:])}, got {got}"
            )


def collate(
    samples: Sequence[TrainingSample],
    idx: Sequence[int],
    device: torch.device,
    gen: torch.Generator | Sequence[torch.Generator],
    caption_dropout: float,
    null_prompt: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Stack a batch on ``device``; sample latents from mean/logvar (the means kept as ``latent_means``);
    drop captions with probability ``caption_dropout``: a dropped caption becomes ``null_prompt`` (the
    encoded empty prompt, embedding ``(L, D)`` and mask ``(L,)``: Wan's unconditional input) or, without one,
    zeros (Mochi's pipeline zeroes the empty prompt).

    ``gen``: one generator for the whole batch, or one per sample (see :func:`sample_generator`)."""
    batch = [samples[i] for i in idx]
    if isinstance(gen, torch.Generator):
        gens = [gen] * len(batch)
        drop = torch.rand(len(batch), generator=gen) < caption_dropout
    else:
        gens = list(gen)
        if len(gens) != len(batch):
            raise ValueError(f"{len(gens)} generators for a batch of {len(batch)}")
        drop = torch.cat([torch.rand(1, generator=g) for g in gens]) < caption_dropout
    latents = []
    for s, g in zip(batch, gens, strict=True):
        z = s.latents.float()
        if s.latent_logvar is not None:
            z = z + torch.exp(0.5 * s.latent_logvar.float()) * torch.randn(z.shape, generator=g)
        latents.append(z)
    emb = torch.stack([s.prompt_embeds.float() for s in batch])
    emask = torch.stack([s.prompt_mask.bool() for s in batch])
    if null_prompt is None:
        emb[drop] = 0.0
        emask[drop] = False
    else:
        emb[drop] = null_prompt[0].float()
        emask[drop] = null_prompt[1].bool()
    out = {"latents": torch.stack(latents), "prompt_embeds": emb, "prompt_mask": emask}
    if any(s.latent_logvar is not None for s in batch):  # the posterior means: an image step's clean frame
        out["latent_means"] = torch.stack([s.latents.float() for s in batch])
    if batch[0].masks is not None:
        out["masks"] = torch.stack([s.masks.float() for s in batch])
    return {k: v.to(device) for k, v in out.items()}


# ------------------------------------------------------------------------------------------- checkpoints


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The checkpoint with the highest step in ``out_dir/checkpoints``, or None."""
    folder = Path(out_dir) / "checkpoints"
    found = [(int(m.group(1)), p) for p in folder.glob("step_*.safetensors") if (m := _CKPT_RE.match(p.name))]
    return max(found)[1] if found else None


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def _config_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)


@dataclass
class _State:
    """Everything a checkpoint holds besides the model/optimizer: RNGs, banks, history."""

    step: int
    hmt_gen: torch.Generator
    data_gen: torch.Generator
    rcl: RelationalContrastiveLoss | None
    history: dict[str, list] = field(default_factory=lambda: {k: [] for k in _HISTORY})

    def record(
        self, losses: dict[str, torch.Tensor], lr: float, seconds: float, choice: str, i2v: bool = False
    ) -> None:
        for k in ("loss", "mse", "mask", "rcl"):
            self.history[k].append(float(losses[k].detach()))
        self.history["lr"].append(lr)
        self.history["seconds"].append(seconds)
        self.history["i2v"].append(float(i2v))
        self.history["choice"].append(choice)

    def snapshot(self) -> dict[str, torch.Tensor]:
        out = {
            "rng.hmt": self.hmt_gen.get_state(),
            "rng.data": self.data_gen.get_state(),
            "rng.torch": torch.get_rng_state(),
        }
        if self.rcl is not None:
            out.update({f"rcl.{k}": v for k, v in self.rcl.state_dict().items()})
        return out


_HISTORY = ("loss", "mse", "mask", "rcl", "lr", "seconds", "i2v", "choice")


def save_checkpoint(
    path: Path,
    transformer: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    state: _State,
    snapshot: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write one safetensors checkpoint atomically (weights, flattened AdamW state, RNGs, banks, history)."""
    params = named_adapter_parameters(transformer)
    names = {id(p): n for n, p in params.items()}
    tensors = {f"adapter.{n}": p for n, p in params.items()}
    for p, st in optimizer.state.items():
        for k, v in st.items():
            tensors[f"optim.{names[id(p)]}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    tensors.update(snapshot if snapshot is not None else state.snapshot())
    for k in _HISTORY:
        vals = state.history[k]
        if k == "choice":
            tensors[f"history.{k}"] = torch.tensor([CHOICES.index(c) for c in vals], dtype=torch.int64)
        else:
            tensors[f"history.{k}"] = torch.tensor(vals, dtype=torch.float64)
    meta = {"format": CHECKPOINT_FORMAT, "step": str(state.step), "config": json.dumps(_config_dict(cfg))}
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_save(tensors, path, meta)
    return path


def load_checkpoint(
    path: Path,
    transformer: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    state: _State,
) -> None:
    """Restore what :func:`save_checkpoint` wrote into ``transformer``, ``optimizer`` and ``state``."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception as exc:  # corrupt/truncated file: report, never delete
        raise UserError(
            f"cannot read checkpoint {path}: {exc}; remove it to resume from an earlier one"
        ) from exc
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint")
    saved = json.loads(meta["config"])
    if saved["adapter"] != dataclasses.asdict(cfg.adapter):
        raise UserError(
            f"{path} was trained with adapter config {saved['adapter']}, not {dataclasses.asdict(cfg.adapter)}; "
            "resume with the same adapter settings or use a new output directory"
        )
    params = named_adapter_parameters(transformer)
    with torch.no_grad():
        for n, p in params.items():
            if f"adapter.{n}" not in tensors:
                raise UserError(f"{path} lacks adapter weight {n}")
            p.copy_(tensors[f"adapter.{n}"])
    order = [p for g in optimizer.param_groups for p in g["params"]]
    name_of = {id(p): n for n, p in params.items()}
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for i, p in enumerate(order):
        prefix = f"optim.{name_of[id(p)]}."
        st = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        if st:
            opt_state[i] = st
    sd = optimizer.state_dict()
    optimizer.load_state_dict({"state": opt_state, "param_groups": sd["param_groups"]})
    state.step = int(meta["step"])
    state.hmt_gen.set_state(tensors["rng.hmt"])
    state.data_gen.set_state(tensors["rng.data"])
    torch.set_rng_state(tensors["rng.torch"])
    if state.rcl is not None and "rcl.pos" in tensors:
        state.rcl.load_state_dict({"pos": tensors["rcl.pos"], "neg": tensors["rcl.neg"]})
    for k in _HISTORY:
        if k == "i2v" and "history.i2v" not in tensors:  # a checkpoint from before image-to-video steps
            state.history[k] = [0.0] * len(state.history["loss"])
            continue
        vals = tensors[f"history.{k}"].tolist()
        state.history[k] = [CHOICES[int(v)] for v in vals] if k == "choice" else vals


def _write_loss_csv(out_dir: Path, history: dict[str, list]) -> None:
    with atomic_path(out_dir / "loss.csv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["step", "choice", "loss", "mse", "mask_mse", "rcl", "lr", "seconds", "i2v"])
        for i in range(len(history["loss"])):
            w.writerow([i + 1, history["choice"][i], *(f"{history[k][i]:.6g}" for k in _HISTORY[:-1])])


@contextlib.contextmanager
def _deferred_sigint() -> Iterator[dict[str, bool]]:
    """First Ctrl-C asks the loop to stop after the current step (so the checkpoint is consistent);
    a second one interrupts at once."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: object) -> None:
        if flag["stop"]:
            raise KeyboardInterrupt
        flag["stop"] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def compute_losses(
    transformer: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    choice: str,
    cfg: TrainConfig,
    rcl: RelationalContrastiveLoss | None,
    generator: torch.Generator,
    noise_generators: Sequence[torch.Generator] | None = None,
    clean_frames: int = 0,
) -> dict[str, torch.Tensor]:
    """Forward on noised latents (under the caller's autocast) and the fp32 loss terms:
    ``loss = mse + lambda_m * mask + weight * rcl``.

    ``choice`` "all" (HMT disabled) uses the plain MSE only (plus RCL when enabled). Sigma and eps come from
    ``noise_generators`` (one per sample) when given, else from ``generator``, which also drives the RCL.
    The call signature and the flow convention (timestep, velocity sign) are the backbone's.
    ``clean_frames`` > 0: an image-to-video step (:func:`~dreamrelation.training.losses.condition_on_first_frames`); the losses cover the
    other frames only.
    """
    backbone = get_backbone(transformer)
    shift = cfg.optim.sigma_shift
    if noise_generators is None:
        noisy, timestep, target, _ = flow_matching_inputs(batch["latents"], generator, backbone.flow, shift)
    else:
        parts = [
            flow_matching_inputs(batch["latents"][i : i + 1], g, backbone.flow, shift)
            for i, g in enumerate(noise_generators)
        ]
        noisy, timestep, target = (torch.cat([p[j] for p in parts]) for j in range(3))
    if clean_frames:  # the image's latent is the VAE's mean, as the image pipeline encodes it (argmax)
        image = batch.get("latent_means", batch["latents"])
        noisy, timestep = condition_on_first_frames(image, noisy, timestep, clean_frames)
    pred = backbone.forward(
        transformer, noisy, timestep, batch["prompt_embeds"], batch["prompt_mask"]
    ).float()
    with torch.autocast(pred.device.type, enabled=False):  # losses in fp32 even under bf16 autocast
        return loss_terms(pred, target, batch.get("masks"), choice, cfg, rcl, generator, clean_frames)


def loss_terms(
    pred: torch.Tensor,
    target: torch.Tensor,
    masks: torch.Tensor | None,
    choice: str,
    cfg: TrainConfig,
    rcl: RelationalContrastiveLoss | None,
    generator: torch.Generator | None,
    first: int = 0,
) -> dict[str, torch.Tensor]:
    """The loss terms of a prediction ``(B, C, F, h, w)``, over the frames from ``first`` on (the leading
    conditioning frames of an image-to-video step get no loss, so no gradient)."""
    gen_pred, gen_target = (pred[:, :, first:], target[:, :, first:]) if first else (pred, target)
    mse = F.mse_loss(gen_pred, gen_target)
    zero = mse.new_zeros(())
    if choice == "all":
        mask = zero
    else:
        loss_mask = mask_for_choice(choice, masks)
        mask = masked_mse(gen_pred, gen_target, loss_mask[:, first:] if first else loss_mask)
    contrast = zero if rcl is None else rcl(pred, generator, first)
    loss = mse + cfg.hmt.lambda_m * mask + cfg.contrastive.weight * contrast
    return {"loss": loss, "mse": mse, "mask": mask, "rcl": contrast}


def _keep_fp32_modules(transformer: torch.nn.Module) -> None:
    """Cast back to fp32 the modules the model class keeps in fp32 (``_keep_in_fp32_modules``; Wan's norms
    and time embedding; none on Mochi)."""
    keep = getattr(transformer, "_keep_in_fp32_modules", None) or []
    if not keep:
        return
    with torch.no_grad():
        for name, tensor in [*transformer.named_parameters(), *transformer.named_buffers()]:
            if tensor.is_floating_point() and any(k in name for k in keep):  # diffusers' matching rule
                tensor.data = tensor.data.float()


def _check_finite(value: torch.Tensor, what: str, step: int, choice: str) -> None:
    if not torch.isfinite(value):
        raise UserError(
            f"{what} became {value.item()} at step {step} (HMT choice {choice}); lower optim.lr or check the "
            "training latents for NaN/inf. The last good checkpoint is kept; resume from it after the fix"
        )


# ------------------------------------------------------------------------------------------------- train


def _as_dataclass(cfg: object) -> TrainConfig:
    if isinstance(cfg, TrainConfig):
        return cfg
    from omegaconf import OmegaConf  # a DictConfig built from the structured config

    obj = OmegaConf.to_object(cfg)
    if not isinstance(obj, TrainConfig):
        raise TypeError(f"expected a TrainConfig, got {type(obj).__name__}")
    return obj


def train_adapters(
    transformer: torch.nn.Module,
    samples: Sequence[TrainingSample],
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    progress: bool = True,
    resume: bool = False,
    callback: Callable[[int, float], None] | None = None,
    null_prompt: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> TrainResult:
    """Add the adapters of ``cfg.adapter`` to ``transformer`` (or reuse identical ones) and train them.

    ``null_prompt``: what a dropped caption becomes (see :func:`collate`), from
    :func:`dreamrelation.data.prepare.null_prompt_for` or a prepared cache's ``load_null_prompt``.

    Writes ``out_dir/checkpoints/step_N.safetensors`` every ``checkpoint_every`` steps and at the end,
    ``out_dir/loss.csv`` (rewritten every ``log_every`` steps), ``out_dir/config.json`` and the final adapters ``out_dir/adapters/{role}.safetensors``
    (diffusers LoRA format); ``out_dir`` is locked while the run writes to it (:class:`RunLock`).
    ``resume=True`` continues from the latest checkpoint. Ctrl-C (or a
    ``KeyboardInterrupt`` from ``callback(step, loss)``) saves a checkpoint and re-raises. A non-finite loss
    raises :class:`UserError` without overwriting the last good checkpoint. With ``mixed_precision`` bf16
    (the "auto" choice on CUDA) the base weights are cast to bf16 and the forward runs under autocast.

    Under ``accelerate launch`` (several processes) this trains data-parallel: ``optim.batch_size`` per
    process, gradients averaged over ranks, files written by rank 0 only; every rank must call it with the
    same model, samples and config, and ``callback`` must act alike on every rank. See
    :mod:`dreamrelation.training.distributed`.
    """
    trainer = Trainer(transformer, samples, _as_dataclass(cfg), Path(out_dir), null_prompt)
    with RunLock(out_dir) if trainer.ctx.is_main else contextlib.nullcontext():
        trainer.setup(resume)
        return trainer.run(progress, callback)


class Trainer:
    """One run of :func:`train_adapters` in phases: :meth:`setup` (devices, precision, adapters, optimizer,
    resume), :meth:`step` (one optimisation step), :meth:`checkpoint`, :meth:`run` (the loop, Ctrl-C) and
    :meth:`finish` (final checkpoint, adapter files, result)."""

    def __init__(
        self,
        transformer: torch.nn.Module,
        samples: Sequence[TrainingSample],
        cfg: TrainConfig,
        out: Path,
        null_prompt: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        self.transformer, self.samples, self.cfg, self.out = transformer, samples, cfg, out
        self.null_prompt = null_prompt
        self.oc = cfg.optim
        self.ctx = init_distributed()
        self.ckpt_dir = out / "checkpoints"

    # ------------------------------------------------------------------------------------------- setup

    def setup(self, resume: bool = False) -> None:
        """Place the model, check the config and samples, add the adapters, build the optimizer, resume."""
        cfg, ctx, transformer = self.cfg, self.ctx, self.transformer
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = self._place()
        bf16 = cfg.mixed_precision == "bf16" or (cfg.mixed_precision == "auto" and self.device.type == "cuda")
        self.bf16 = bf16 or cfg.memory.fp8_base  # fp8 storage computes in bf16
        if cfg.mixed_precision not in ("auto", "bf16", "fp32"):
            raise UserError(f"mixed_precision must be auto, bf16 or fp32, not {cfg.mixed_precision!r}")
        check_memory_config(cfg.memory)
        check_optim_config(cfg.optim)
        _check_samples(self.samples, need_masks=cfg.hmt.enabled)
        self._check_i2v()
        self.roles = list(cfg.adapter.placement)
        self._add_adapters()
        self._hmt_choices()
        apply_memory_modes(transformer, cfg.memory, cfg.gradient_checkpointing, self.device)
        if cfg.memory.fsdp and ctx.enabled:
            self._shard()
        transformer.train()
        self._optimizer()
        if ctx.is_main:
            remove_partial_writes(self.ckpt_dir)  # a killed run's half-written checkpoint is never read
        self.last_ckpt = latest_checkpoint(self.out) if resume else None
        if self.last_ckpt is not None:
            load_checkpoint(self.last_ckpt, transformer, self.optimizer, cfg, self.state)
        if ctx.is_main:
            (self.out / "config.json").write_text(json.dumps(_config_dict(cfg), indent=2))
        self.start = self.state.step
        per_rank = self.oc.batch_size
        self.positions = range(ctx.rank * per_rank, (ctx.rank + 1) * per_rank)  # this rank's global slice

    def _place(self) -> torch.device:
        """The compute device. The whole model moves there, except under block swapping (the swapped blocks'
        frozen weights stay on the CPU) and FSDP (each rank receives only its shard)."""
        mem, ctx = self.cfg.memory, self.ctx
        device = next(self.transformer.parameters()).device
        if mem.blocks_to_swap and ctx.device is None and torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if ctx.device is None or device == ctx.device:
            return device
        if not (mem.blocks_to_swap or (mem.fsdp and ctx.enabled)):
            torch.nn.Module.to(self.transformer, ctx.device)
        return ctx.device

    def _shard(self) -> None:
        """FSDP2 over the frozen base (per block, then the root); the adapters stay whole on every rank."""
        if self.cfg.monitor.validate_every:
            raise UserError(
                "memory.fsdp with monitor.validate_every: validation samples on one rank would wait for the "
                "others; validate after training (dreamrelation generate --num-gpus N) or drop memory.fsdp"
            )
        blocks = get_backbone(self.transformer).block_list(self.transformer)
        adapters = [p for ps in adapter_parameters(self.transformer).values() for p in ps]
        shard_frozen_base(self.transformer, blocks, adapters, self.device)

    def _check_i2v(self) -> None:
        """Image-to-video steps need a backbone that takes an image and clips of two latent frames or more."""
        i2v = self.cfg.i2v
        check_i2v_config(i2v)
        if i2v.probability <= 0:
            return
        backbone = get_backbone(self.transformer)
        if not backbone.takes_image:
            raise UserError(
                f"i2v.probability={i2v.probability}: {backbone.name} cannot take an image; image-to-video "
                "steps need Wan 2.2 TI2V-5B (set i2v.probability=0 for text-to-video)"
            )
        if self.samples[0].latents.shape[1] < 2:
            raise UserError("image-to-video steps need clips of 2 latent frames or more (use longer clips)")

    def i2v_step(self, step: int) -> bool:
        """Whether ``step`` conditions on the first frame (drawn from a generator keyed by seed and step)."""
        p = float(self.cfg.i2v.probability)
        if p <= 0 or p >= 1:
            return p >= 1
        gen = sample_generator(self.oc.seed, step, -1)  # position -1: no sample's noise stream
        return bool(torch.rand(1, generator=gen) < p)

    def _add_adapters(self) -> None:
        """Add the adapters (deterministic init that leaves the global RNG alone) or reuse identical ones."""
        existing = adapter_roles(self.transformer)
        if existing and existing != self.roles:
            raise UserError(
                f"the transformer already has adapters {existing}, the config asks for {self.roles}"
            )
        if existing:
            return
        if self.bf16:  # base in bf16; nn.Module.to skips diffusers' warning
            torch.nn.Module.to(self.transformer, dtype=torch.bfloat16)
            _keep_fp32_modules(self.transformer)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.oc.seed)
            add_relation_adapters(self.transformer, self.cfg.adapter)

    def _hmt_choices(self) -> None:
        """The HMT choices with their probabilities ("all" alone when HMT is off)."""
        hmt = self.cfg.hmt
        probs = {c: float(p) for c, p in hmt.probs.items() if p > 0} if hmt.enabled else {"all": 1.0}
        unknown = [c for c in hmt.shared_on if c not in HMT_CHOICES]
        if unknown:
            raise UserError(f"hmt.shared_on={list(hmt.shared_on)}: {unknown} not among {list(HMT_CHOICES)}")
        for c in probs:
            if c not in CHOICES or not roles_for_choice(c, self.roles, hmt.shared_on):
                raise UserError(
                    f"HMT choice {c!r} has no adapter to train with placement {list(self.roles)}; "
                    "set its probability to 0 or add adapters"
                )
        self.choice_names = list(probs)
        self.choice_probs = torch.tensor(list(probs.values()), dtype=torch.float64)

    def _optimizer(self) -> None:
        """Optimizer over every adapter parameter, the contrastive loss and the run state."""
        oc, ctx = self.oc, self.ctx
        groups = adapter_parameters(self.transformer, self.roles)
        self.params = [p for r in self.roles for p in groups[r]]
        broadcast_parameters(self.params, ctx)  # identical start on every rank whatever the init RNG did
        self.optimizer = make_optimizer(self.params, oc, self.cfg.memory)
        rcl = (
            RelationalContrastiveLoss.from_config(self.cfg.contrastive)
            if self.cfg.contrastive.enabled
            else None
        )
        if rcl is not None and ctx.enabled:
            rcl = GatheredContrastiveLoss.wrap(rcl, ctx)
        self.rcl = rcl
        self.state = _State(
            0, torch.Generator().manual_seed(oc.seed), torch.Generator().manual_seed(oc.seed + 1), rcl
        )

    # ------------------------------------------------------------------------------------------- step

    def step(self) -> tuple[dict[str, torch.Tensor], float, str]:
        """One optimisation step at ``state.step``: ``(logged losses, lr, HMT choice)``; the caller records
        (``last_i2v``: whether it conditioned on the first frame)."""
        cfg, oc, ctx, state = self.cfg, self.oc, self.ctx, self.state
        everyone = batch_indices(state.step, oc.batch_size * ctx.world_size, len(self.samples), oc.seed)
        idx = [everyone[k] for k in self.positions]
        gens = [sample_generator(oc.seed, state.step, k) for k in self.positions]
        batch = collate(self.samples, idx, self.device, gens, oc.caption_dropout, self.null_prompt)
        choice = self.choice_names[int(torch.multinomial(self.choice_probs, 1, generator=state.hmt_gen))]
        set_active_roles(self.transformer, roles_for_choice(choice, self.roles, cfg.hmt.shared_on))
        self.last_i2v = self.i2v_step(state.step)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)
        with autocast, attention_kernel(cfg.memory.attention_backend):
            losses = compute_losses(
                self.transformer, batch, choice, cfg, self.rcl, state.data_gen, gens, int(self.last_i2v)
            )
        lr = lr_at(state.step, oc)
        logged = losses
        if ctx.enabled:  # global-batch means, identical on every rank (so all see a NaN together)
            keys = ("loss", "mse", "mask", "rcl")
            means = ctx.mean(torch.stack([losses[k].detach().float() for k in keys]))
            logged = {k: means[i] for i, k in enumerate(keys)}
        _check_finite(logged["loss"], "loss", state.step + 1, choice)
        self.optimizer.zero_grad(set_to_none=True)
        with attention_kernel(cfg.memory.attention_backend):  # checkpointed blocks recompute here
            losses["loss"].backward()
        all_reduce_gradients(self.params, ctx)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, oc.grad_clip)
        _check_finite(grad_norm, "gradient norm", state.step + 1, choice)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        return logged, lr, choice

    # ------------------------------------------------------------------------------------------- checkpoint

    def checkpoint(self, snapshot: dict[str, torch.Tensor] | None = None) -> Path:
        """Save ``step_N.safetensors`` (rank 0), keep the newest ``keep_checkpoints``, rewrite loss.csv."""
        path = self.ckpt_dir / f"step_{self.state.step:06d}.safetensors"
        if not self.ctx.is_main:  # rank 0 writes; the others only need the name
            return path
        path = save_checkpoint(path, self.transformer, self.optimizer, self.cfg, self.state, snapshot)
        old = sorted(p for p in self.ckpt_dir.glob("step_*.safetensors") if _CKPT_RE.match(p.name))
        for p in old[: max(len(old) - max(self.oc.keep_checkpoints, 1), 0)]:
            p.unlink()
        _write_loss_csv(self.out, self.state.history)
        return path

    # ------------------------------------------------------------------------------------------- loop

    def run(self, progress: bool = True, callback: Callable[[int, float], None] | None = None) -> TrainResult:
        """Train to ``optim.steps``; Ctrl-C (or a ``KeyboardInterrupt`` from ``callback``) saves a checkpoint
        and re-raises."""
        oc, ctx, state = self.oc, self.ctx, self.state
        bar = tqdm(
            total=oc.steps,
            initial=self.start,
            disable=not (progress and ctx.is_main),
            desc="train",
            dynamic_ncols=True,
        )
        t_start = time.perf_counter()
        snapshot = state.snapshot()  # RNGs/banks as of the last completed step (what a checkpoint must hold)
        try:
            with _deferred_sigint() as sigint:
                while state.step < oc.steps:
                    t0 = time.perf_counter()
                    logged, lr, choice = self.step()
                    state.step += 1
                    state.record(logged, lr, time.perf_counter() - t0, choice, self.last_i2v)
                    snapshot = state.snapshot()
                    bar.update(1)
                    if state.step % max(oc.log_every, 1) == 0 or state.step == oc.steps:
                        bar.set_postfix(
                            loss=f"{state.history['loss'][-1]:.4f}", lr=f"{lr:.2e}", refresh=False
                        )
                        if ctx.is_main:  # watchers (the web UI) see the losses as they come
                            _write_loss_csv(self.out, state.history)
                    if callback is not None:
                        callback(state.step, state.history["loss"][-1])
                    if (
                        oc.checkpoint_every > 0
                        and state.step % oc.checkpoint_every == 0
                        and state.step < oc.steps
                    ):
                        self.last_ckpt = self.checkpoint(snapshot)
                    if ctx.any(sigint["stop"], self.device):  # every rank stops at the same step
                        raise KeyboardInterrupt
        except KeyboardInterrupt:
            bar.close()
            path = self.checkpoint(snapshot)  # completed steps only; weights are updated only at their end
            if ctx.is_main:
                tqdm.write(f"interrupted: step {state.step} saved to {path}; rerun with resume to continue")
            raise
        finally:
            bar.close()
        return self.finish(snapshot, t_start)

    def finish(self, snapshot: dict[str, torch.Tensor], t_start: float) -> TrainResult:
        """Final checkpoint (if any step ran), the adapter files with their metadata, the result."""
        state, cfg = self.state, self.cfg
        if state.step > self.start or self.last_ckpt is None:
            self.last_ckpt = self.checkpoint(snapshot)
        set_active_roles(self.transformer, self.roles)
        meta = {
            "method": cfg.method,
            "steps": state.step,
            "inference_roles": list(cfg.adapter.inference_roles),
        }
        adapter_dir = self.out / "adapters"
        if self.ctx.is_main:
            save_adapters(self.transformer, adapter_dir, self.roles, metadata=meta)
            _write_loss_csv(self.out, state.history)
        self.ctx.barrier()  # every rank returns once the files exist
        h = state.history
        return TrainResult(
            losses=list(h["loss"]),
            choices=list(h["choice"]),
            lrs=list(h["lr"]),
            step_seconds=list(h["seconds"]),
            total_seconds=time.perf_counter() - t_start,
            start_step=self.start,
            out_dir=self.out,
            adapter_dir=adapter_dir,
            checkpoint=self.last_ckpt,
            parts={k: list(h[k]) for k in ("mse", "mask", "rcl")},
            i2v_steps=[bool(v) for v in h["i2v"]],
        )
