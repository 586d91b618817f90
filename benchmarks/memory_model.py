"""Memory model of DreamRelation training per GPU, per memory mode, for the full-size backbones - on the CPU.

Nothing is allocated: the release architectures (diffusers configs of Mochi 1, Wan 2.1 T2V 1.3B and 14B,
Wan 2.2 TI2V-5B: ``gpu_scale.py``'s, at its release clips) are built on the ``meta`` device with the paper's
adapters (rank 16, both streams). Counted exactly: parameters (base, adapters) and, per frame count, the
activations autograd keeps: one full forward of the transformer on meta tensors of the release clip size,
batch 1, bf16, with a saved-tensor hook summing the bytes saved for backward per block and the bytes of
each block's inputs (what a checkpointed block keeps).
Attention is counted as a fused (flash / memory-efficient) kernel saves it: q, k, v, output and the
log-sum-exp - the math kernel's score matrices are not (use such a kernel on GPU).

Per GPU (GB = 2**30 bytes), batch 1, every block checkpointed unless said otherwise:

* weights: the frozen base (bf16: 2 bytes per parameter; fp8: 1 byte for the block linears); with
  ``blocks_to_swap=N`` minus N blocks plus two staged (current + prefetched); with ``fsdp`` over G GPUs
  1/G of it plus two gathered blocks;
* adapters: fp32 weights, gradients (all roles, the "relation" step) and AdamW's two moments (16 bytes per
  parameter; 8-bit AdamW: 10);
* activations: the inputs of every checkpointed block + the saved tensors of one block being recomputed
  (x 2 for its backward's transients) + the model's un-checkpointed ends (embeddings, output head, loss).

It underestimates by what allocators and kernels add (fragmentation, cuBLAS / attention workspaces, the
CUDA context ~0.5-1 GB): read "fits" with ~15 % headroom, which the table applies. Usage::

    python benchmarks/memory_model.py [--backbone all] [--out benchmarks/results/memory_model.json]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"
GB = 2**30
HEADROOM = 1.15  # allocator / workspace / context overhead on top of the model


@dataclass(frozen=True)
class Arch:
    """One release architecture and the clips it is trained on."""

    name: str
    backbone: str
    config: dict[str, Any]
    frames: tuple[int, ...]  # frame counts to model; the first is the release clip
    height: int
    width: int
    channels: int
    text_tokens: int
    text_dim: int = 4096


def _gpu_scale() -> Any:
    """``gpu_scale.py`` beside this file (imported once): the one home of the release configs and clips."""
    if "gpu_scale" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "gpu_scale", Path(__file__).resolve().with_name("gpu_scale.py")
        )
        assert spec is not None and spec.loader is not None
        sys.modules["gpu_scale"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["gpu_scale"])
    return sys.modules["gpu_scale"]


def _release(key: str, more_frames: tuple[int, ...], **config: Any) -> Arch:
    """The architecture and release clip of ``gpu_scale.SPECS[key]`` (``config`` overrides), modelled at
    the release frame count and ``more_frames``."""
    spec = _gpu_scale().SPECS[key]
    clip = spec.full
    return Arch(
        spec.name,
        clip.backbone,
        {**spec.model, **config},
        (clip.frames, *more_frames),
        clip.height,
        clip.width,
        clip.channels,
        clip.text_tokens,
        clip.text_dim,
    )


ARCHS = {
    "mochi": _release("mochi", (31, 85, 163)),
    "wan1.3b": _release("wan", (33, 49)),
    # Wan-AI/Wan2.1-T2V-14B-Diffusers transformer/config.json: the 1.3B's with these sizes, at 720p
    "wan14b": Arch(
        "Wan 2.1 T2V 14B",
        "wan",
        {**_gpu_scale().SPECS["wan"].model, "num_attention_heads": 40, "ffn_dim": 13824, "num_layers": 40},
        (81, 33, 49),
        720,
        1280,
        16,
        512,
    ),
    "wan22": _release("wan22", (49, 81)),
}


def build_meta(arch: Arch) -> torch.nn.Module:
    """The release transformer on the meta device in bf16, with the paper's adapters (bf16 too: the dtype
    autocast computes them in; their fp32 storage is accounted in :func:`mode_memory`)."""
    from dreamrelation.adapters.triplet import add_relation_adapters, set_active_roles
    from dreamrelation.backbones.registry import get_backbone
    from dreamrelation.core.roles import AdapterConfig

    cls = get_backbone(arch.backbone).classes()[0]
    with torch.device("meta"):
        model = torch.nn.Module.to(cls(**arch.config), torch.bfloat16).requires_grad_(False)
        cfg = AdapterConfig()
        add_relation_adapters(model, cfg)
    set_active_roles(model, list(cfg.placement))
    for n, p in model.named_parameters():  # as under the trainer's bf16 autocast (meta has no autocast)
        if "lora_" in n:
            p.data = p.data.to(torch.bfloat16)
    _meta_rope(model)
    return model


def parameter_counts(model: torch.nn.Module, blocks: torch.nn.ModuleList) -> dict[str, int]:
    """Base / adapter parameters, one block's base parameters, and the base parameters of block linears."""
    adapter = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    base = sum(p.numel() for p in model.parameters()) - adapter
    block = sum(p.numel() for n, p in blocks[0].named_parameters() if "lora_" not in n)
    linear = sum(
        m.weight.numel()
        for b in blocks
        for m in b.modules()
        if isinstance(m, torch.nn.Linear) and not any(k in type(m).__module__ for k in ("peft",))
    )
    return {"base": base, "adapters": adapter, "per_block": block, "block_linears": linear}


class _FusedAttention(torch.autograd.Function):
    """Shape-only stand-in for a fused SDPA kernel: saves q, k, v, out and a float32 log-sum-exp."""

    @staticmethod
    def forward(ctx, q, k, v):  # type: ignore[override]
        out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _meta_rope(model: torch.nn.Module) -> None:
    """Mochi's RoPE opens an autocast on its parameters' device, which meta has not: the same einsum without."""
    rope = getattr(model, "rope", None)
    if rope is not None and hasattr(rope, "_create_rope"):

        def create(freqs: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            f = torch.einsum("nd,dhf->nhf", pos.to(torch.float32), freqs.to(torch.float32))
            return torch.cos(f), torch.sin(f)

        rope._create_rope = create


@contextlib.contextmanager
def _fused_sdpa() -> Iterator[None]:
    real = torch.nn.functional.scaled_dot_product_attention

    def sdpa(query=None, key=None, value=None, *args, **kwargs):  # diffusers passes them by name or not
        return _FusedAttention.apply(query, key, value)

    torch.nn.functional.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = real


def _nbytes(tensors: Any) -> int:
    if torch.is_tensor(tensors):
        return tensors.numel() * tensors.element_size()
    if isinstance(tensors, (tuple, list)):
        return sum(_nbytes(t) for t in tensors)
    if isinstance(tensors, dict):
        return sum(_nbytes(t) for t in tensors.values())
    return 0


def activations(
    model: torch.nn.Module, blocks: torch.nn.ModuleList, arch: Arch, frames: int
) -> dict[str, int]:
    """Bytes autograd saves in one bf16 forward of one clip: per block (max), block inputs (sum), the rest."""
    from dreamrelation.backbones.registry import get_backbone

    backbone = get_backbone(arch.backbone)
    c, f, h, w = backbone.latent_shape(arch.channels, frames, arch.height, arch.width)
    where = {"block": None}
    saved: dict[object, int] = {}
    # each distinct block input by id (RoPE tables are shared), held so that no later tensor reuses its id
    inputs: dict[int, Any] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = where["block"]
        saved[key] = saved.get(key, 0) + (0 if isinstance(t, torch.nn.Parameter) else _nbytes(t))
        return t

    handles = []
    for i, b in enumerate(blocks):

        def before(module, args, kwargs, i=i):
            where["block"] = i
            for v in [*args, *kwargs.values()]:
                for t in v if isinstance(v, (tuple, list)) else [v]:
                    inputs[id(t)] = t

        handles.append(b.register_forward_pre_hook(before, with_kwargs=True))
        handles.append(b.register_forward_hook(lambda *a: where.update(block=None)))
    with torch.device("meta"):
        x = torch.empty(1, c, f, h, w, dtype=torch.bfloat16, requires_grad=True)
        emb = torch.empty(1, arch.text_tokens, arch.text_dim, dtype=torch.bfloat16)
        mask = torch.ones(1, arch.text_tokens, dtype=torch.bool)
        t = torch.full((1,), 500.0)
    from torch.fx.experimental import _config as fx_config

    try:  # Mochi selects the valid text tokens with nonzero: on meta every token counts (an upper bound)
        with (
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
            _fused_sdpa(),
            fx_config.patch(meta_nonzero_assume_all_nonzero=True),
        ):
            backbone.forward(model, x, t, emb, mask)
    finally:
        for hd in handles:
            hd.remove()
    per_block = [v for k, v in saved.items() if k is not None]
    return {
        "tokens": f * (h // 2) * (w // 2),
        "latent": [c, f, h, w],
        "block_saved_max": max(per_block),
        "block_inputs_sum": sum(_nbytes(t) for t in inputs.values()),
        "outside_blocks": saved.get(None, 0),
    }


def _adapter_bytes(n: int, optimizer: str) -> int:
    return n * (4 + 4 + (2 if optimizer == "adamw8bit" else 8))


def mode_memory(
    params: dict[str, int], act: dict[str, int], blocks: int, mode: dict[str, Any]
) -> dict[str, float]:
    """GB per GPU of one mode: weights, adapters (+grads, optimizer), activations, total with headroom."""
    fp8 = mode.get("fp8_base", False)
    base = params["base"] * 2 - (params["block_linears"] if fp8 else 0)
    per_block = base * params["per_block"] / max(params["base"], 1)
    swap, gpus = mode.get("blocks_to_swap", 0), mode.get("fsdp_gpus", 1)
    if swap:
        base = base - swap * per_block + 2 * per_block
    if gpus > 1:
        base = base / gpus + 2 * per_block
    ckpt = mode.get("checkpoint_blocks", blocks)
    whole = blocks - ckpt  # blocks that keep all their intermediates
    acts = (
        act["block_inputs_sum"] * ckpt / blocks + act["block_saved_max"] * (whole + 2) + act["outside_blocks"]
    )
    out = {
        "weights_gb": base / GB,
        "adapters_gb": _adapter_bytes(params["adapters"], mode.get("optimizer", "adamw")) / GB,
        "activations_gb": acts / GB,
    }
    out["total_gb"] = sum(out.values()) * HEADROOM
    return out


def modes_for(arch: Arch, blocks: int) -> dict[str, dict[str, Any]]:
    """The modelled modes: the benchmark's, block swapping sweeps and FSDP over 2/4/8 GPUs."""
    modes: dict[str, dict[str, Any]] = {
        "bf16_ckpt_all": {},
        "fp8_ckpt_all": {"fp8_base": True},
    }
    for swap in sorted({blocks // 4, blocks // 2, 3 * blocks // 4}):
        modes[f"bf16_swap{swap}"] = {"blocks_to_swap": swap}
        modes[f"fp8_swap{swap}"] = {"blocks_to_swap": swap, "fp8_base": True}
    for g in (2, 4, 8):
        modes[f"fsdp{g}"] = {"fsdp_gpus": g}
    return modes


def swap_to_fit(
    params: dict[str, int], act: dict[str, int], blocks: int, budget_gb: float, fp8: bool
) -> int | None:
    """The fewest swapped blocks whose modelled total fits ``budget_gb`` (None: not even all of them)."""
    for swap in range(blocks + 1):
        if (
            mode_memory(params, act, blocks, {"blocks_to_swap": swap, "fp8_base": fp8})["total_gb"]
            <= budget_gb
        ):
            return swap
    return None


def model_arch(arch: Arch) -> dict[str, Any]:
    """Parameters, activations per frame count and per-mode memory of one architecture."""
    from dreamrelation.backbones.registry import get_backbone

    model = build_meta(arch)
    blocks = get_backbone(arch.backbone).block_list(model)
    params = parameter_counts(model, blocks)
    result: dict[str, Any] = {"name": arch.name, "blocks": len(blocks), "parameters": params, "clips": {}}
    for frames in arch.frames:
        act = activations(model, blocks, arch, frames)
        result["clips"][str(frames)] = {
            "activations": act,
            "modes": {
                m: mode_memory(params, act, len(blocks), cfg)
                for m, cfg in modes_for(arch, len(blocks)).items()
            },
            "swap_for_24gb": {
                "bf16": swap_to_fit(params, act, len(blocks), 24.0, False),
                "fp8": swap_to_fit(params, act, len(blocks), 24.0, True),
            },
        }
    return result


def table(result: dict[str, Any]) -> str:
    """Markdown table of one architecture: GB per GPU per mode and frame count."""
    p = result["parameters"]
    frames = list(result["clips"])
    lines = [
        f"{result['name']}: {p['base'] / 1e9:.2f} B base parameters in {result['blocks']} blocks, "
        f"{p['adapters'] / 1e6:.1f} M adapter parameters",
        "",
        "| mode | weights GB | adapters+AdamW GB | " + " | ".join(f"{f} frames GB" for f in frames) + " |",
        "|---|---|---|" + "---|" * len(frames),
    ]
    first = result["clips"][frames[0]]["modes"]
    for mode, m in first.items():
        totals = [result["clips"][f]["modes"][mode]["total_gb"] for f in frames]
        lines.append(
            f"| {mode} | {m['weights_gb']:.1f} | {m['adapters_gb']:.2f} | "
            + " | ".join(f"{t:.1f}" for t in totals)
            + " |"
        )
    acts = " / ".join(
        f"{f}: {result['clips'][f]['activations']['tokens']} tokens, "
        f"{result['clips'][f]['activations']['block_inputs_sum'] / GB:.1f} GB checkpoint inputs, "
        f"{result['clips'][f]['activations']['block_saved_max'] / GB:.1f} GB per recomputed block"
        for f in frames
    )
    fits = ", ".join(
        f"{f} frames: bf16 swap {result['clips'][f]['swap_for_24gb']['bf16']}, "
        f"fp8 swap {result['clips'][f]['swap_for_24gb']['fp8']}"
        for f in frames
    )
    return "\n".join([*lines, "", f"Activations ({acts}).", f"Blocks to swap for 24 GB: {fits}."])


def main(argv: list[str] | None = None) -> int:
    """Print the tables and write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="all", choices=[*ARCHS, "all"])
    p.add_argument("--out", type=Path, default=RESULTS / "memory_model.json")
    args = p.parse_args(argv)
    names = list(ARCHS) if args.backbone == "all" else [args.backbone]
    results = {}
    for name in names:
        results[name] = model_arch(ARCHS[name])
        print(table(results[name]) + "\n", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"headroom": HEADROOM, "architectures": results}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
