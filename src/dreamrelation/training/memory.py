"""Memory/speed modes of :class:`~dreamrelation.training.config.MemoryConfig`, applied by the trainer.

Partial gradient checkpointing (first N blocks), fp8 storage of the frozen base with bf16 compute, block
swapping (the frozen weights of the last N blocks streamed from CPU memory, see
:mod:`dreamrelation.backbones.block_swap`), the optimizer (AdamW or bitsandbytes' 8-bit AdamW), the
attention kernel/backend, and parking the frozen text encoder and VAE on the CPU between validations.
Sharding the base over GPUs (``memory.fsdp``) is in :mod:`dreamrelation.training.distributed`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch.utils.checkpoint import checkpoint, set_checkpoint_early_stop

from dreamrelation.adapters.triplet import adapter_parameters
from dreamrelation.backbones.block_swap import BlockSwap, attach, enable_block_swap
from dreamrelation.backbones.registry import get_backbone
from dreamrelation.errors import UserError
from dreamrelation.training.config import OPTIMIZERS, SDPA_KERNELS, MemoryConfig, OptimConfig
from dreamrelation.utils.extras import require

_FP8_FLAG = "_dreamrelation_fp8_base"


def check_memory_config(mem: MemoryConfig) -> None:
    """Raise :class:`UserError` for a value no mode accepts (before the model is touched)."""
    if mem.checkpoint_blocks is not None and int(mem.checkpoint_blocks) < 0:
        raise UserError(f"memory.checkpoint_blocks={mem.checkpoint_blocks}: use a number >= 0 (or null)")
    if int(mem.blocks_to_swap) < 0:
        raise UserError(f"memory.blocks_to_swap={mem.blocks_to_swap}: use a number >= 0")
    if mem.fsdp and (mem.blocks_to_swap or mem.fp8_base):
        other = "memory.blocks_to_swap" if mem.blocks_to_swap else "memory.fp8_base"
        raise UserError(f"memory.fsdp cannot be combined with {other} yet; choose one")
    if mem.optimizer not in OPTIMIZERS:
        raise UserError(f"memory.optimizer={mem.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
    if mem.attention_backend not in SDPA_KERNELS:
        from diffusers.models.attention_dispatch import AttentionBackendName

        names = sorted(b.value for b in AttentionBackendName)
        if mem.attention_backend not in names:
            raise UserError(
                f"memory.attention_backend={mem.attention_backend!r}: choose one of "
                f"{', '.join(SDPA_KERNELS)} or a diffusers backend ({', '.join(names)})"
            )


def checkpoint_count(mem: MemoryConfig, gradient_checkpointing: bool, num_blocks: int) -> int:
    """How many leading blocks are checkpointed: ``checkpoint_blocks``, else all or none by the old flag."""
    if mem.checkpoint_blocks is None:
        return num_blocks if gradient_checkpointing else 0
    return min(int(mem.checkpoint_blocks), num_blocks)


def enable_block_checkpointing(transformer: torch.nn.Module, count: int, swapped: int = 0) -> None:
    """Gradient checkpointing for the first ``count`` blocks and the last ``swapped`` ones (all: diffusers'
    own; none: nothing). Swapped blocks recompute in full (no early stop), so their swap hooks always run."""
    blocks = list(get_backbone(transformer).block_list(transformer))
    n = len(blocks)
    chosen = {id(b) for b in blocks[: max(count, 0)]}
    late = {id(b) for b in blocks[n - min(max(swapped, 0), n) :]} if swapped > 0 else set()
    if not chosen | late:
        return
    if len(chosen) == n and not late:
        transformer.enable_gradient_checkpointing()
        return

    def maybe_checkpoint(module: torch.nn.Module, *args: object) -> object:
        if id(module) in late:
            with set_checkpoint_early_stop(False):
                return checkpoint(module.__call__, *args, use_reentrant=False)
        if id(module) in chosen:
            return checkpoint(module.__call__, *args, use_reentrant=False)
        return module(*args)

    transformer.enable_gradient_checkpointing(gradient_checkpointing_func=maybe_checkpoint)


def enable_fp8_base(transformer: torch.nn.Module) -> None:
    """Store the frozen base weights in float8 e4m3, computing in bf16 (diffusers layerwise casting).

    LoRA layers and the model's own skip patterns (norms, patch/time embeddings, fp32 modules) keep their
    dtype; the adapters stay fp32. Idempotent. Call after the adapters are added.
    """
    if getattr(transformer, _FP8_FLAG, False):
        return
    if not hasattr(transformer, "enable_layerwise_casting"):
        raise UserError(f"memory.fp8_base: {type(transformer).__name__} has no layerwise casting (diffusers)")
    transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
    setattr(transformer, _FP8_FLAG, True)
    for params in adapter_parameters(transformer).values():  # belt and braces: adapters train in fp32
        for p in params:
            if p.dtype != torch.float32:
                p.data = p.data.float()


def make_optimizer(
    params: Sequence[torch.nn.Parameter], oc: OptimConfig, mem: MemoryConfig
) -> torch.optim.Optimizer:
    """AdamW over ``params``: torch's, or bitsandbytes' 8-bit one (:class:`UserError` when not installed)."""
    kwargs = {"lr": oc.lr, "betas": tuple(oc.betas), "weight_decay": oc.weight_decay}
    if mem.optimizer == "adamw":
        return torch.optim.AdamW(params, **kwargs)
    if mem.optimizer == "adamw8bit":
        bnb = require(
            "bitsandbytes",
            "memory.optimizer=adamw8bit needs bitsandbytes (pip install bitsandbytes, CUDA); "
            "or use memory.optimizer=adamw",
        )
        return bnb.optim.AdamW8bit(params, **kwargs)
    raise UserError(f"memory.optimizer={mem.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")


def set_attention_backend(transformer: torch.nn.Module, backend: str) -> None:
    """Select a diffusers attention backend (a no-op for the ``sdpa*`` names, see :func:`attention_kernel`)."""
    if backend in SDPA_KERNELS:
        return
    dispatched = any(
        hasattr(getattr(m, "processor", None), "_attention_backend") for m in transformer.modules()
    )
    if not dispatched:
        raise UserError(
            f"memory.attention_backend={backend!r}: {type(transformer).__name__} calls PyTorch SDPA directly; "
            f"choose one of {', '.join(SDPA_KERNELS)}"
        )
    try:
        transformer.set_attention_backend(backend)
    except (ValueError, RuntimeError, ImportError) as exc:
        raise UserError(f"memory.attention_backend={backend!r}: {exc}") from exc


@contextlib.contextmanager
def attention_kernel(backend: str) -> Iterator[None]:
    """Force one SDPA kernel (``sdpa_flash``, ``sdpa_efficient``, ``sdpa_cudnn``, ``sdpa_math``) inside the
    block; ``sdpa`` and diffusers backend names leave the choice alone. Wrap forward *and* backward (a
    checkpointed block recomputes its forward in the backward pass)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kernels = {
        "sdpa_flash": SDPBackend.FLASH_ATTENTION,
        "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION,
        "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
        "sdpa_math": SDPBackend.MATH,
    }
    if backend not in kernels:
        yield
        return
    with sdpa_kernel([kernels[backend]]):
        yield


FROZEN_PARTS = ("text_encoder", "vae")


def park_frozen_parts(pipe, device: str | torch.device = "cpu") -> None:
    """Move the pipeline's text encoder and VAE to ``device`` (the CPU) while the transformer trains."""
    for name in FROZEN_PARTS:
        part = getattr(pipe, name, None)
        if part is not None:
            part.to(device)


@contextlib.contextmanager
def frozen_parts_on(pipe, device: str | torch.device) -> Iterator[None]:
    """The text encoder and VAE on ``device`` inside the block (validation), back where they were after."""
    device = torch.device(device)
    moved = []
    for name in FROZEN_PARTS:
        part = getattr(pipe, name, None)
        home = next(part.parameters()).device if part is not None else None
        if home is not None and home != device:
            part.to(device)
            moved.append((part, home))
    try:
        yield
    finally:
        for part, home in moved:
            part.to(home)


def swap_count(mem: MemoryConfig, num_blocks: int) -> int:
    """How many trailing blocks are swapped (:class:`UserError` when there are not that many)."""
    n = int(mem.blocks_to_swap)
    if n > num_blocks:
        raise UserError(f"memory.blocks_to_swap={n}: the transformer has only {num_blocks} blocks")
    return n


def enable_swap(transformer: torch.nn.Module, count: int, device: torch.device) -> BlockSwap | None:
    """Swap the frozen weights of the last ``count`` blocks (adapters stay resident) and move everything
    else to ``device``; the swap is remembered on the model (``block_swap.swapped_blocks``)."""
    blocks = get_backbone(transformer).block_list(transformer)
    adapters = [p for ps in adapter_parameters(transformer).values() for p in ps]
    swap = enable_block_swap(blocks, count, device, resident=adapters)
    if swap is None:
        return None
    offloaded = {id(p) for entries in swap.masters for p, _ in entries}
    with torch.no_grad():
        for tensor in [*transformer.parameters(), *transformer.buffers()]:
            if id(tensor) not in offloaded and tensor.device != device:
                tensor.data = tensor.data.to(device)
    attach(transformer, swap)
    return swap


def apply_memory_modes(
    transformer: torch.nn.Module,
    mem: MemoryConfig,
    gradient_checkpointing: bool,
    device: torch.device | None = None,
) -> None:
    """Checkpointing, fp8 base storage, block swapping (to compute ``device``, default: where the model is)
    and the attention backend, in that order (adapters already added)."""
    check_memory_config(mem)
    n = len(get_backbone(transformer).block_list(transformer))
    swapped = swap_count(mem, n)
    enable_block_checkpointing(transformer, checkpoint_count(mem, gradient_checkpointing, n), swapped)
    if mem.fp8_base:
        enable_fp8_base(transformer)
    if swapped:
        enable_swap(transformer, swapped, device or next(transformer.parameters()).device)
    set_attention_backend(transformer, mem.attention_backend)
