"""Peak GPU memory and speed of DreamRelation training and sampling at full backbone size (random weights).

Per backbone (``--backbone mochi``, ``wan``, ``wan22`` or ``all``, the default) builds the release architecture with
random weights directly on the GPU in bf16 (no download), adds the paper's adapters (relation / subject1 /
subject2 / output on both streams, rank 16, fp32) and measures at the release clip, batch 1:

* **Mochi 1** (``MochiTransformer3DModel`` default config: 48 blocks, width 3072, ~10 B parameters):
  61 frames of 480 x 848 (latent 12 x 11 x 60 x 106), 256 text tokens; 64 Euler steps, CFG 6.
* **Wan 2.1 T2V 1.3B** (``WanTransformer3DModel``: 30 blocks, width 1536, ~1.4 B parameters): 81 frames of
  480 x 832 (latent 16 x 21 x 60 x 104), 512 text tokens; 50 UniPC steps, CFG 5.
* **Wan 2.2 TI2V-5B** (``WanTransformer3DModel``: 30 blocks, width 3072, 48 latent channels, ~5 B
  parameters; Wan 2.2 VAE 16x16 / 4x): 121 frames of 704 x 1280 at 24 fps (latent 48 x 31 x 44 x 80, 27,280
  video tokens), 512 text tokens; training steps are image-to-video steps (first latent frame clean at
  timestep 0, per-token timesteps); 50 UniPC steps (shift 5), CFG 5. Its 24 GB target mode is
  ``target_24gb`` = fp8 base + 28 of 30 blocks swapped (the memory model's fit at 121 frames; fp8 alone is
  modelled at 28.6 GB): the result records whether each mode's peak stays within 24 GB (``fits_target``).

Measured:

* training, per memory mode (``MemoryConfig``): peak ``torch.cuda.max_memory_allocated`` and seconds per
  step (forward with the HMT "relation" choice - every adapter active, the heaviest step - hybrid mask loss +
  relational contrastive loss, backward, clipping, AdamW), after warm-up steps. Modes: ``bf16_ckpt_all``
  (bf16 base, every block checkpointed), ``fp8_ckpt_all`` (fp8 storage / bf16 compute, every block
  checkpointed), ``bf16_ckpt_partial`` (bf16, the first ``--partial-blocks`` blocks checkpointed; default
  Mochi 40 of 48, Wan 24 of 30). A mode that runs out of memory is recorded as ``oom``;
* training with the frozen base sharded by FSDP2 over the GPUs (``fsdpN``: every visible GPU when there are
  two or more, or ``--fsdp-gpus N``; ``memory.fsdp=true``'s path, one clip per rank): each rank's peak and
  the frozen parameters it holds. ``--tiny --fsdp-gpus 2`` runs it over gloo CPU processes;
* inference: seconds per video for the backbone's sampler and step count with classifier-free guidance
  (one batch-2 forward per step; relation + output adapters active), transformer only;
* optionally (``--vae-decode``) one tiled decode of the latent video by the backbone's VAE (default config,
  random weights, bf16).

Prints a table per backbone and writes ``benchmarks/results/gpu_{backbone}.json``. Without CUDA it prints a
message and exits 0 (safe in scripts). ``--tiny`` runs the same code path with tiny models and clips (on the
CPU when there is no GPU; written to ``gpu_{backbone}_tiny.json``). Usage::

    python benchmarks/gpu_scale.py [--backbone all] [--steps 3] [--warmup 1] [--vae-decode]
    OMP_NUM_THREADS=1 python benchmarks/gpu_scale.py --tiny
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("bf16_ckpt_all", "fp8_ckpt_all", "bf16_ckpt_partial", "bf16_swap_half", "target_24gb")
#: Also accepted by ``--modes``: ``bf16_swapN`` / ``fp8_swapN`` (N blocks swapped), e.g. a sweep
SWEEP_PREFIXES = ("bf16_swap", "fp8_swap")


@dataclass
class Geometry:
    """Video and text sizes of one benchmark run."""

    frames: int
    height: int
    width: int
    text_tokens: int
    text_dim: int
    channels: int = 12
    backbone: str = "mochi"

    @property
    def latent(self) -> tuple[int, int, int, int]:
        """Latent ``(C, F, h, w)`` of the backbone's VAE (Mochi 8x / 6x, Wan 8x / 4x)."""
        from dreamrelation.backbones.registry import get_backbone

        return get_backbone(self.backbone).latent_shape(self.channels, self.frames, self.height, self.width)


@dataclass
class Spec:
    """One backbone as benchmarked: model configs, clips, sampler and the partial-checkpointing default."""

    name: str
    model: dict[str, Any]
    tiny_model: dict[str, Any]
    full: Geometry
    tiny: Geometry
    tiny_vae: dict[str, Any]
    inference_steps: int
    guidance: float
    partial_blocks: int
    target_24gb: dict[str, Any] = field(
        default_factory=dict
    )  # MemoryConfig fields the memory model (benchmarks/memory_model.py) fits in 24 GB
    vae: dict[str, Any] = field(default_factory=dict)  # the release VAE config (empty: diffusers' default)
    flow_shift: float = 3.0  # Wan's UniPC shift
    clean_frames: int = 0  # conditioning latent frames of a training step (image-to-video)
    target_gb: float | None = None  # the memory a mode is meant to fit
    target_mode: str | None = None


SPECS = {
    "mochi": Spec(
        name="Mochi 1",
        model={},  # diffusers' default MochiTransformer3DModel config is Mochi 1's
        tiny_model=dict(
            num_layers=3,
            num_attention_heads=2,
            attention_head_dim=16,
            pooled_projection_dim=16,
            in_channels=12,
            text_embed_dim=32,
            time_embed_dim=16,
            patch_size=2,
            max_sequence_length=16,
        ),
        full=Geometry(frames=61, height=480, width=848, text_tokens=256, text_dim=4096),
        tiny=Geometry(frames=13, height=32, width=32, text_tokens=8, text_dim=32),
        tiny_vae=dict(
            encoder_block_out_channels=(32, 32, 32, 32),
            decoder_block_out_channels=(32, 32, 32, 32),
            layers_per_block=(1, 1, 1, 1, 1),
        ),
        inference_steps=64,
        guidance=6.0,
        partial_blocks=40,
        target_24gb={"blocks_to_swap": 38},  # modelled to fit 24 GB at 61 frames (fp8: 25 swapped)
    ),
    "wan": Spec(
        name="Wan 2.1 T2V 1.3B",
        model=dict(  # Wan-AI/Wan2.1-T2V-1.3B-Diffusers transformer/config.json (diffusers' default is 14B)
            patch_size=(1, 2, 2),
            num_attention_heads=12,
            attention_head_dim=128,
            in_channels=16,
            out_channels=16,
            text_dim=4096,
            freq_dim=256,
            ffn_dim=8960,
            num_layers=30,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            eps=1e-6,
        ),
        tiny_model=dict(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=16,
            in_channels=12,
            out_channels=12,
            text_dim=32,
            freq_dim=32,
            ffn_dim=64,
            num_layers=3,
            rope_max_seq_len=64,
        ),
        full=Geometry(
            frames=81, height=480, width=832, text_tokens=512, text_dim=4096, channels=16, backbone="wan"
        ),
        tiny=Geometry(frames=13, height=32, width=32, text_tokens=8, text_dim=32, backbone="wan"),
        tiny_vae=dict(base_dim=8, z_dim=12),
        inference_steps=50,
        guidance=5.0,
        partial_blocks=24,
        target_24gb={},  # modelled 14.5 GB at 81 frames with every block checkpointed: nothing to swap
    ),
    "wan22": Spec(
        name="Wan 2.2 TI2V-5B",
        model=dict(  # Wan-AI/Wan2.2-TI2V-5B-Diffusers transformer/config.json
            patch_size=(1, 2, 2),
            num_attention_heads=24,
            attention_head_dim=128,
            in_channels=48,
            out_channels=48,
            text_dim=4096,
            freq_dim=256,
            ffn_dim=14336,
            num_layers=30,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            eps=1e-6,
        ),
        tiny_model=dict(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=16,
            in_channels=48,
            out_channels=48,
            text_dim=32,
            freq_dim=32,
            ffn_dim=64,
            num_layers=3,
            rope_max_seq_len=64,
        ),
        full=Geometry(
            frames=121, height=704, width=1280, text_tokens=512, text_dim=4096, channels=48, backbone="wan22"
        ),
        tiny=Geometry(
            frames=13, height=64, width=64, text_tokens=8, text_dim=32, channels=48, backbone="wan22"
        ),
        tiny_vae=dict(
            base_dim=8,
            z_dim=48,
            is_residual=True,
            in_channels=12,
            out_channels=12,
            patch_size=2,
            scale_factor_spatial=16,
            latents_mean=[0.0] * 48,
            latents_std=[1.0] * 48,
        ),
        inference_steps=50,
        guidance=5.0,
        partial_blocks=24,
        vae=dict(  # Wan-AI/Wan2.2-TI2V-5B-Diffusers vae/config.json
            base_dim=160,
            decoder_base_dim=256,
            z_dim=48,
            is_residual=True,
            in_channels=12,
            out_channels=12,
            patch_size=2,
            scale_factor_spatial=16,
            latents_mean=[0.0] * 48,
            latents_std=[1.0] * 48,
        ),
        flow_shift=5.0,
        clean_frames=1,
        # memory_model.py at 121 frames: fp8_ckpt_all 28.6 GB (with 15 % headroom); fp8 + 28 swapped: 24.0 GB
        target_24gb={"blocks_to_swap": 28, "fp8_base": True},
        target_gb=24.0,
        target_mode="target_24gb",
    ),
}
#: Compatibility names: the Mochi clips
FULL, TINY = SPECS["mochi"].full, SPECS["mochi"].tiny


# ------------------------------------------------------------------------------------------------ helpers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _allocated_gb(device: torch.device) -> float | None:
    return torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _oom_errors() -> tuple[type[BaseException], ...]:
    return (torch.OutOfMemoryError,) if hasattr(torch, "OutOfMemoryError") else (RuntimeError,)


@contextlib.contextmanager
def _measurement(out: dict[str, Any], device: torch.device) -> Iterator[None]:
    """One measurement: starts with the previous one's memory freed (its models went with its function);
    running out of memory is recorded in ``out`` as ``oom`` with the peak reached, not raised."""
    _free(device)
    try:
        yield
    except _oom_errors() as exc:
        out.update(status="oom", error=str(exc).splitlines()[0], peak_gb=_peak_gb(device))


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_transformer(spec: Spec, tiny: bool, device: torch.device, seed: int = 0) -> torch.nn.Module:
    """The backbone's transformer (release or tiny config) with random weights, built on ``device`` in bf16."""
    from dreamrelation.backbones.registry import get_backbone

    transformer_cls = get_backbone(spec.full.backbone).classes()[0]
    torch.manual_seed(seed)
    with torch.device(device), _default_dtype(torch.bfloat16):
        model = transformer_cls(**(spec.tiny_model if tiny else spec.model))
    return model.requires_grad_(False)


def build_vae(spec: Spec, tiny: bool, device: torch.device) -> torch.nn.Module:
    """The backbone's VAE (default config, or a tiny one) with random weights, bf16, tiling on."""
    from dreamrelation.backbones.registry import get_backbone

    vae_cls = get_backbone(spec.full.backbone).classes()[2]
    torch.manual_seed(0)
    with torch.device(device), _default_dtype(torch.bfloat16):
        vae = vae_cls(**(spec.tiny_vae if tiny else spec.vae))
    vae.enable_tiling()
    return vae.eval().requires_grad_(False)


def build_scheduler(spec: Spec, steps: int, device: torch.device):
    """The backbone's sampler with its timesteps set: Mochi's inverted-sigma Euler on the linear-quadratic
    schedule, Wan's flow-prediction UniPC with the spec's shift (Wan 2.1 at 480p: 3, Wan 2.2 TI2V-5B: 5)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
    from diffusers.pipelines.mochi.pipeline_mochi import linear_quadratic_schedule

    if spec.full.backbone.startswith("wan"):
        sched = UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=spec.flow_shift
        )
        sched.set_timesteps(steps, device=device)
        return sched
    sched = FlowMatchEulerDiscreteScheduler(invert_sigmas=True)
    sched.set_timesteps(sigmas=linear_quadratic_schedule(steps, 0.025), device=device)
    sched.set_begin_index(0)
    return sched


def make_batch(geo: Geometry, device: torch.device) -> dict[str, torch.Tensor]:
    """One random training sample shaped like a prepared one (subject masks: left and right halves)."""
    g = torch.Generator().manual_seed(0)
    c, f, h, w = geo.latent
    masks = torch.zeros(1, 2, f, h, w)
    masks[:, 0, :, :, : w // 2] = 1.0
    masks[:, 1, :, :, w // 2 :] = 1.0
    batch = {
        "latents": torch.randn(1, c, f, h, w, generator=g),
        "prompt_embeds": torch.randn(1, geo.text_tokens, geo.text_dim, generator=g),
        "prompt_mask": torch.arange(geo.text_tokens)[None] < geo.text_tokens * 3 // 4,
        "masks": masks,
    }
    return {k: v.to(device) for k, v in batch.items()}


def memory_config(mode: str, partial_blocks: int, num_blocks: int = 0, target: dict | None = None):
    """The ``MemoryConfig`` of a benchmark mode (every block checkpointed unless the mode says otherwise)."""
    from dreamrelation.training.config import MemoryConfig

    if mode == "bf16_ckpt_all":
        return MemoryConfig(checkpoint_blocks=10_000)
    if mode == "fp8_ckpt_all":
        return MemoryConfig(checkpoint_blocks=10_000, fp8_base=True)
    if mode == "bf16_ckpt_partial":
        return MemoryConfig(checkpoint_blocks=partial_blocks)
    if mode == "bf16_swap_half":
        return MemoryConfig(checkpoint_blocks=10_000, blocks_to_swap=num_blocks // 2)
    if mode == "target_24gb":
        return MemoryConfig(checkpoint_blocks=10_000, **(target or {}))
    for prefix in SWEEP_PREFIXES:
        if mode.startswith(prefix) and mode[len(prefix) :].isdigit():
            n = int(mode[len(prefix) :])
            return MemoryConfig(checkpoint_blocks=10_000, blocks_to_swap=n, fp8_base=prefix == "fp8_swap")
    raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)} or bf16_swapN / fp8_swapN")


def valid_mode(mode: str) -> bool:
    """A named mode or a sweep point (``bf16_swapN`` / ``fp8_swapN``)."""
    return mode in MODES or any(mode.startswith(p) and mode[len(p) :].isdigit() for p in SWEEP_PREFIXES)


def _timed(fn: Callable[[], None], device: torch.device, warmup: int, steps: int) -> list[float]:
    times = []
    for i in range(warmup + steps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


# ------------------------------------------------------------------------------------------------ measures


def _record_steps(
    out: dict[str, Any],
    step,
    params: list,
    losses: list[float],
    device: torch.device,
    warmup: int,
    steps: int,
) -> None:
    """Run ``warmup`` untimed and ``steps`` timed training steps; record speed, peak memory, losses and the
    adapters' dtypes in ``out``."""
    times = _timed(step, device, warmup, steps)
    out.update(
        status="ok",
        seconds_per_step=sum(times) / len(times),
        step_seconds=times,
        peak_gb=_peak_gb(device),
        losses=losses,
        adapter_dtypes=sorted({str(p.dtype) for p in params}),
    )


def _training_step(
    transformer, cfg, spec: Spec, batch: dict, params: list, optimizer, rcl, losses: list[float], ctx=None
):
    """One DreamRelation step as the trainer takes it (HMT "relation" choice, hybrid mask + contrastive loss,
    backward, gradient all-reduce over ``ctx``'s ranks, clipping, optimizer step); appends the loss."""
    from dreamrelation.training.distributed import all_reduce_gradients
    from dreamrelation.training.memory import attention_kernel
    from dreamrelation.training.trainer import compute_losses

    gen = torch.Generator().manual_seed(0)
    device = batch["latents"].device

    def step() -> None:
        with (
            torch.autocast(device.type, dtype=torch.bfloat16),
            attention_kernel(cfg.memory.attention_backend),
        ):
            parts = compute_losses(
                transformer, batch, "relation", cfg, rcl, gen, clean_frames=spec.clean_frames
            )
        optimizer.zero_grad(set_to_none=True)
        with attention_kernel(cfg.memory.attention_backend):
            parts["loss"].backward()
        if ctx is not None:
            all_reduce_gradients(params, ctx)
        torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        optimizer.step()
        losses.append(float(parts["loss"].detach()))

    return step


def train_mode(
    spec: Spec, mode: str, tiny: bool, device: torch.device, steps: int, warmup: int, partial_blocks: int
) -> dict[str, Any]:
    """Peak memory and seconds per step of DreamRelation training in one memory mode."""
    from dreamrelation.adapters.triplet import adapter_parameters, add_relation_adapters, set_active_roles
    from dreamrelation.backbones.registry import get_backbone
    from dreamrelation.training.config import TrainConfig
    from dreamrelation.training.losses import RelationalContrastiveLoss
    from dreamrelation.training.memory import apply_memory_modes, make_optimizer
    from dreamrelation.training.trainer import roles_for_choice

    geo = spec.tiny if tiny else spec.full
    cfg = TrainConfig()
    layers = (spec.tiny_model if tiny else spec.model).get("num_layers", 48)
    target = {"blocks_to_swap": min(spec.target_24gb.get("blocks_to_swap", 0), layers - 1)} if tiny else None
    cfg.memory = memory_config(mode, partial_blocks, layers, target or spec.target_24gb)
    out: dict[str, Any] = {"memory": asdict(cfg.memory), "clean_frames": spec.clean_frames}
    with _measurement(out, device):
        _reset_peak(device)
        transformer = build_transformer(spec, tiny, device)
        add_relation_adapters(transformer, cfg.adapter)
        apply_memory_modes(transformer, cfg.memory, cfg.gradient_checkpointing)
        transformer.train()
        roles = list(cfg.adapter.placement)
        groups = adapter_parameters(transformer, roles)
        params = [p for r in roles for p in groups[r]]
        optimizer = make_optimizer(params, cfg.optim, cfg.memory)
        rcl = RelationalContrastiveLoss.from_config(cfg.contrastive)
        set_active_roles(transformer, roles_for_choice("relation", roles))
        batch = make_batch(geo, device)
        out["checkpointed_blocks"] = min(
            cfg.memory.checkpoint_blocks or 0, len(get_backbone(transformer).block_list(transformer))
        )
        out["swapped_blocks"] = cfg.memory.blocks_to_swap
        out["resident_gb"] = _allocated_gb(device)
        _reset_peak(device)
        losses: list[float] = []
        step = _training_step(transformer, cfg, spec, batch, params, optimizer, rcl, losses)
        _record_steps(out, step, params, losses, device, warmup, steps)
    return out


def fsdp_train(spec: Spec, tiny: bool, world_size: int, steps: int, warmup: int) -> dict[str, Any]:
    """Training with the frozen base sharded over ``world_size`` processes (``memory.fsdp=true``, FSDP2): one
    per GPU, or gloo CPU processes for a ``--tiny`` dry run without CUDA. Each rank builds the base on the
    host (as the trainer loads it: host memory for ``world_size`` copies), shards it per block, trains one
    clip per rank; the record has every rank's peak memory and the frozen parameters it holds."""
    from dreamrelation.training.distributed import run_local_processes

    with tempfile.TemporaryDirectory() as tmp:
        key = next(k for k, v in SPECS.items() if v is spec)
        run_local_processes(_fsdp_rank, world_size, (key, tiny, steps, warmup, tmp))
        ranks = [json.loads((Path(tmp) / f"rank{r}.json").read_text()) for r in range(world_size)]
    out = dict(ranks[0])
    peaks = [r.get("peak_gb") for r in ranks]
    failed = [r.get("status") for r in ranks if r.get("status") != "ok"]
    out.update(
        status=failed[0] if failed else "ok",
        world_size=world_size,
        peak_gb=None if None in peaks else max(peaks),
        peak_gb_per_rank=peaks,
        frozen_parameters_per_rank=[r.get("frozen_parameters") for r in ranks],
        seconds_per_step=max((r.get("seconds_per_step") or 0.0) for r in ranks) or None,
    )
    return out


def _fsdp_rank(rank: int, backbone: str, tiny: bool, steps: int, warmup: int, tmp: str) -> None:
    """One rank of :func:`fsdp_train`: writes its record to ``tmp/rank{rank}.json``."""
    from dreamrelation.adapters.triplet import adapter_parameters, add_relation_adapters, set_active_roles
    from dreamrelation.backbones.registry import get_backbone
    from dreamrelation.training.config import MemoryConfig, TrainConfig
    from dreamrelation.training.distributed import (
        GatheredContrastiveLoss,
        init_distributed,
        shard_frozen_base,
    )
    from dreamrelation.training.losses import RelationalContrastiveLoss
    from dreamrelation.training.memory import apply_memory_modes, make_optimizer
    from dreamrelation.training.trainer import roles_for_choice

    ctx = init_distributed()
    device = ctx.device or torch.device("cpu")
    spec, cfg = SPECS[backbone], TrainConfig()
    cfg.memory = MemoryConfig(checkpoint_blocks=10_000, fsdp=True)
    out: dict[str, Any] = {"memory": asdict(cfg.memory), "clean_frames": spec.clean_frames}
    with _measurement(out, device):
        _reset_peak(device)
        transformer = build_transformer(spec, tiny, torch.device("cpu"))
        add_relation_adapters(transformer, cfg.adapter)
        apply_memory_modes(transformer, cfg.memory, cfg.gradient_checkpointing, device)
        roles = list(cfg.adapter.placement)
        groups = adapter_parameters(transformer, roles)
        params = [p for r in roles for p in groups[r]]
        blocks = get_backbone(transformer).block_list(transformer)
        shard_frozen_base(transformer, blocks, params, device)
        transformer.train()
        optimizer = make_optimizer(params, cfg.optim, cfg.memory)
        rcl = GatheredContrastiveLoss.wrap(RelationalContrastiveLoss.from_config(cfg.contrastive), ctx)
        set_active_roles(transformer, roles_for_choice("relation", roles))
        ids = {id(p) for p in params}
        out["frozen_parameters"] = sum(
            _local(p).numel() for p in transformer.parameters() if id(p) not in ids
        )
        out["checkpointed_blocks"], out["swapped_blocks"] = len(blocks), 0
        out["resident_gb"] = _allocated_gb(device)
        _reset_peak(device)
        losses: list[float] = []
        step = _training_step(
            transformer,
            cfg,
            spec,
            make_batch(spec.tiny if tiny else spec.full, device),
            params,
            optimizer,
            rcl,
            losses,
            ctx,
        )
        _record_steps(out, step, params, losses, device, warmup, steps)
    (Path(tmp) / f"rank{rank}.json").write_text(json.dumps(out))


def _local(param: torch.Tensor) -> torch.Tensor:
    """This rank's shard of an FSDP parameter (a DTensor); the tensor itself otherwise."""
    return param.to_local() if hasattr(param, "to_local") else param


@torch.inference_mode()
def inference(spec: Spec, tiny: bool, device: torch.device, steps: int, timed_steps: int) -> dict[str, Any]:
    """Seconds per video for ``steps`` sampler steps with CFG (batch-2 forward), transformer only, bf16."""
    from dreamrelation.adapters.triplet import add_relation_adapters, set_active_roles
    from dreamrelation.backbones.registry import get_backbone
    from dreamrelation.core.roles import AdapterConfig

    geo, guidance, backbone = (
        spec.tiny if tiny else spec.full,
        spec.guidance,
        get_backbone(spec.full.backbone),
    )
    out: dict[str, Any] = {"steps": steps, "guidance": guidance}
    with _measurement(out, device):
        transformer = build_transformer(spec, tiny, device)
        cfg = AdapterConfig()
        add_relation_adapters(transformer, cfg)
        set_active_roles(transformer, cfg.inference_roles, trainable=False)
        transformer.eval()
        sched = build_scheduler(spec, steps, device)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, *geo.latent, generator=g).to(device)
        cond = torch.randn(1, geo.text_tokens, geo.text_dim, generator=g)
        emb = torch.cat([torch.zeros_like(cond), cond]).to(device, torch.bfloat16)  # zeroed empty negative
        mask = torch.ones(2, geo.text_tokens, dtype=torch.bool, device=device)
        mask[0] = False
        timesteps = list(sched.timesteps)
        state = {"x": x, "i": 0}

        def denoise() -> None:
            t = timesteps[state["i"] % len(timesteps)]
            inp = torch.cat([state["x"], state["x"]]).to(torch.bfloat16)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                v = backbone.forward(transformer, inp, t.expand(2), emb, mask).float()
            uncond, cond_v = v.chunk(2)
            v = uncond + guidance * (cond_v - uncond)
            if state["i"] < len(timesteps):
                state["x"] = sched.step(v, t, state["x"], return_dict=False)[0]
            state["i"] += 1

        _reset_peak(device)
        times = _timed(denoise, device, 1, min(timed_steps, steps))
        per_step = sum(times) / len(times)
        out.update(
            status="ok",
            seconds_per_step=per_step,
            seconds_per_video=per_step * steps,
            timed_steps=len(times),
            peak_gb=_peak_gb(device),
            finite=bool(torch.isfinite(state["x"]).all()),
        )
    return out


@torch.inference_mode()
def vae_decode(spec: Spec, tiny: bool, device: torch.device) -> dict[str, Any]:
    """Seconds and peak memory of one tiled decode of the latent video."""
    geo = spec.tiny if tiny else spec.full
    out: dict[str, Any] = {}
    with _measurement(out, device):
        vae = build_vae(spec, tiny, device)
        z = torch.randn(1, *geo.latent, generator=torch.Generator().manual_seed(0)).to(device, torch.bfloat16)
        _reset_peak(device)
        shapes: list[tuple[int, ...]] = []
        times = _timed(lambda: shapes.append(tuple(vae.decode(z, return_dict=False)[0].shape)), device, 0, 1)
        out.update(status="ok", seconds=times[0], peak_gb=_peak_gb(device), video_shape=list(shapes[-1]))
    return out


# ------------------------------------------------------------------------------------------------ report


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def table(result: dict[str, Any]) -> str:
    """A plain-text table of the training modes, inference and VAE decode."""
    lines = [
        f"{result['model']} on {result['device']} | video {result['geometry']['frames']}x"
        f"{result['geometry']['height']}x{result['geometry']['width']} -> latent {result['latent']}",
        f"{'training mode':<22}{'ckpt blocks':>12}{'resident GB':>13}{'peak GB':>10}{'s/step':>10}",
    ]
    for mode, r in result["train"].items():
        if r.get("status") != "ok":
            lines.append(f"{mode:<22}{'':>12}{'':>13}{_fmt(r.get('peak_gb')):>10}{r.get('status', '?'):>10}")
            continue
        lines.append(
            f"{mode:<22}{r['checkpointed_blocks']:>12}{_fmt(r['resident_gb']):>13}{_fmt(r['peak_gb']):>10}"
            f"{_fmt(r['seconds_per_step'], '.3f'):>10}"
        )
    target = result.get("target") or {}
    if target.get("gb"):
        fits = {m: r.get("fits_target") for m, r in result["train"].items()}
        lines.append(f"{target['gb']:g} GB target (mode {target['mode']}): fits {fits}")
    inf = result.get("inference")
    if inf:
        lines.append(
            f"inference ({inf['steps']} steps, CFG batch 2): "
            + (
                f"{_fmt(inf['seconds_per_video'], '.1f')} s/video ({_fmt(inf['seconds_per_step'], '.3f')} "
                f"s/step over {inf['timed_steps']} steps), peak {_fmt(inf['peak_gb'])} GB"
                if inf.get("status") == "ok"
                else str(inf.get("status"))
            )
        )
    dec = result.get("vae_decode")
    if dec:
        lines.append(
            "VAE decode (tiled): "
            + (
                f"{_fmt(dec['seconds'], '.1f')} s, peak {_fmt(dec['peak_gb'])} GB"
                if dec.get("status") == "ok"
                else str(dec.get("status"))
            )
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="all", choices=[*SPECS, "all"], help="which backbone(s) to measure")
    p.add_argument("--tiny", action="store_true", help="tiny models and clips (CPU dry run of the code path)")
    p.add_argument("--device", default=None, help="default: cuda (cpu allowed only with --tiny)")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {', '.join(MODES)}")
    p.add_argument("--steps", type=int, default=3, help="timed training steps per mode")
    p.add_argument("--warmup", type=int, default=1, help="untimed training steps first")
    p.add_argument(
        "--partial-blocks",
        type=int,
        default=None,
        help="blocks checkpointed in bf16_ckpt_partial (Mochi 40, Wan 24; tiny: 2)",
    )
    p.add_argument(
        "--fsdp-gpus",
        type=int,
        default=None,
        help="also train with the base sharded over this many GPUs (memory.fsdp); default: every visible GPU "
        "when there are 2 or more; with --tiny on a CPU, gloo processes",
    )
    p.add_argument("--inference-steps", type=int, default=None, help="default: Mochi 64, Wan 50")
    p.add_argument("--inference-timed-steps", type=int, default=None, help="time this many, extrapolate")
    p.add_argument("--skip-inference", action="store_true")
    p.add_argument("--vae-decode", action="store_true", help="also time a tiled VAE decode")
    p.add_argument("--out-dir", type=Path, default=RESULTS, help="where gpu_{backbone}[_tiny].json go")
    return p.parse_args(argv)


def fsdp_world_size(args: argparse.Namespace, device: torch.device) -> int:
    """Processes of the FSDP measurement: ``--fsdp-gpus``, else every GPU when there are two or more (0: none)."""
    if args.fsdp_gpus is not None:
        if device.type == "cuda" and args.fsdp_gpus > torch.cuda.device_count():
            raise SystemExit(
                f"gpu_scale: --fsdp-gpus {args.fsdp_gpus} but {torch.cuda.device_count()} GPUs are visible"
            )
        return args.fsdp_gpus
    return torch.cuda.device_count() if device.type == "cuda" and torch.cuda.device_count() > 1 else 0


def _add_mode(result: dict[str, Any], spec: Spec, mode: str, r: dict[str, Any]) -> None:
    """Record training mode ``mode``'s measurement ``r`` (with whether it fits the spec's target) and print it."""
    if spec.target_gb is not None:
        peak = r.get("peak_gb")
        r["fits_target"] = None if peak is None else (r.get("status") == "ok" and peak <= spec.target_gb)
    result["train"][mode] = r
    print(
        f"{spec.name} {mode}: {r.get('status')} peak {_fmt(r.get('peak_gb'))} GB, "
        f"{_fmt(r.get('seconds_per_step'), '.3f')} s/step",
        flush=True,
    )


def run_backbone(
    spec: Spec, args: argparse.Namespace, modes: list[str], device: torch.device
) -> dict[str, Any]:
    """Every measurement of one backbone; returns the result record."""
    import diffusers

    from dreamrelation.backbones.registry import get_backbone

    geo = spec.tiny if args.tiny else spec.full
    partial = (
        args.partial_blocks if args.partial_blocks is not None else (2 if args.tiny else spec.partial_blocks)
    )
    with torch.device("meta"):
        transformer_cls = get_backbone(geo.backbone).classes()[0]
        meta = transformer_cls(**(spec.tiny_model if args.tiny else spec.model))
    result: dict[str, Any] = {
        "model": f"tiny {spec.name} (random)" if args.tiny else f"{spec.name} architecture, random weights",
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "parameters": sum(p.numel() for p in meta.parameters()),
        "geometry": asdict(geo),
        "latent": list(geo.latent),
        "batch_size": 1,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "train": {},
        "target": {"gb": spec.target_gb, "mode": spec.target_mode},
    }
    del meta
    for mode in modes:
        _add_mode(
            result, spec, mode, train_mode(spec, mode, args.tiny, device, args.steps, args.warmup, partial)
        )
    world = fsdp_world_size(args, device)
    if world > 1:  # the peak is the largest rank's
        _add_mode(result, spec, f"fsdp{world}", fsdp_train(spec, args.tiny, world, args.steps, args.warmup))
    if not args.skip_inference:
        steps = args.inference_steps or spec.inference_steps
        result["inference"] = inference(spec, args.tiny, device, steps, args.inference_timed_steps or steps)
    if args.vae_decode:
        result["vae_decode"] = vae_decode(spec, args.tiny, device)
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status (0 also when there is no GPU)."""
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        print(
            "gpu_scale: no CUDA device here; nothing measured (use --tiny for a CPU dry run of the code path)"
        )
        return 0
    device = torch.device(args.device or ("cuda" if cuda else "cpu"))
    if device.type != "cuda" and not args.tiny:
        print(f"gpu_scale: the full-size benchmark needs a CUDA device, not {device}")
        return 0
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if not valid_mode(m)]
    if bad:
        print(f"gpu_scale: unknown modes {bad}; choose from {', '.join(MODES)}", file=sys.stderr)
        return 2
    names = list(SPECS) if args.backbone == "all" else [args.backbone]
    for name in names:
        result = run_backbone(SPECS[name], args, modes, device)
        print(table(result))
        out_path = args.out_dir / f"gpu_{name}{'_tiny' if args.tiny else ''}.json"
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
