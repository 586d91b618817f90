"""Block swapping: the frozen weights of some transformer blocks live on the CPU and visit the GPU per use.

:func:`enable_block_swap` keeps the frozen parameters of the *last* ``n`` blocks in (pinned, when CUDA is
present) CPU memory - the "master" copies - and registers hooks on each such block:

* forward pre-hook: every frozen parameter's ``.data`` becomes a copy on the compute device (taken from a
  prefetch started on a side CUDA stream when the previous swapped block began, else copied now);
* forward hook: ``.data`` points back at the master, so the copy lives only as long as autograd needs it.

Swapped blocks must be gradient-checkpointed (the trainer does so): a checkpointed block keeps only its
inputs, so its weight copy is freed after the forward, and the backward pass recomputes the block - which
runs the hooks again and streams the weights in once more. Early stopping of the recompute is turned off
for these blocks so the forward hook always runs. Trainable parameters (the adapters) and buffers stay
where they are.

Cost per step: each swapped block's frozen weights cross the bus twice (forward and recompute), e.g. Mochi
1 in bf16 (~0.41 GB per block) over PCIe 4 x16 (~25 GB/s): ~33 ms per block per step, mostly hidden behind
the previous block's compute by the prefetch (a Mochi block at 61 frames computes for ~60 ms forward and
more backward), plus ~0.41 GB pinned host memory per swapped block.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

_HANDLE = "_dreamrelation_block_swap"


class BlockSwap:
    """The swapped blocks of one model, their master copies and the movement hooks (see the module doc)."""

    def __init__(self, blocks: Sequence[torch.nn.Module], compute: torch.device, resident: Iterable[object]):
        keep = {id(p) for p in resident}
        self.blocks = list(blocks)
        self.compute = torch.device(compute)
        self.cuda = self.compute.type == "cuda"
        self.stream = torch.cuda.Stream(self.compute) if self.cuda else None
        self.masters: list[list[tuple[torch.nn.Parameter, torch.Tensor]]] = []
        self.pending: dict[int, tuple[list[torch.Tensor], object]] = {}
        self.fetches = 0  # blocks streamed in so far (forward + recompute)
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        for k, block in enumerate(self.blocks):
            entries = []
            for p in block.parameters():
                if id(p) in keep:
                    continue
                master = p.data.to("cpu")
                master = master.pin_memory() if self.cuda else master
                p.data = master
                entries.append((p, master))
            self.masters.append(entries)
            self.handles.append(block.register_forward_pre_hook(self._before(k)))
            self.handles.append(block.register_forward_hook(self._after(k)))

    def _copy(self, k: int) -> list[torch.Tensor]:
        return [m.to(self.compute, non_blocking=self.cuda, copy=True) for _, m in self.masters[k]]

    def _prefetch(self, k: int) -> None:
        """Start copying block ``k``'s weights on the side stream (CUDA only)."""
        if not self.cuda or not 0 <= k < len(self.blocks) or k in self.pending:
            return
        with torch.cuda.stream(self.stream):
            copies = self._copy(k)
            event = torch.cuda.Event()
            event.record(self.stream)
        self.pending[k] = (copies, event)

    def stage(self, k: int) -> None:
        """Point block ``k``'s frozen parameters at copies on the compute device."""
        if k in self.pending:
            copies, event = self.pending.pop(k)
            torch.cuda.current_stream(self.compute).wait_event(event)
            for c in copies:
                c.record_stream(torch.cuda.current_stream(self.compute))
        else:
            copies = self._copy(k)
        for (p, _), c in zip(self.masters[k], copies, strict=True):
            p.data = c
        self.fetches += 1

    def release(self, k: int) -> None:
        """Point block ``k``'s frozen parameters back at their CPU masters."""
        for p, master in self.masters[k]:
            p.data = master

    def _before(self, k: int):
        def hook(module: torch.nn.Module, args: object) -> None:
            self.stage(k)
            backward = torch._C._current_graph_task_id() != -1  # recomputing inside the backward pass
            self._prefetch(k - 1 if backward else k + 1)

        return hook

    def _after(self, k: int):
        def hook(module: torch.nn.Module, args: object, output: object) -> None:
            self.release(k)

        return hook

    def remove(self) -> None:
        """Remove the hooks (the weights stay on the CPU)."""
        for h in self.handles:
            h.remove()
        self.handles.clear()


def enable_block_swap(
    blocks: Sequence[torch.nn.Module], count: int, compute: torch.device, resident: Iterable[object] = ()
) -> BlockSwap | None:
    """Swap the frozen weights of the last ``count`` of ``blocks`` (``resident`` parameters stay put); the
    model's other weights are the caller's to place. Returns the :class:`BlockSwap` (None for ``count`` 0)."""
    if count <= 0:
        return None
    blocks = list(blocks)
    return BlockSwap(blocks[len(blocks) - min(count, len(blocks)) :], compute, resident)


def swapped_blocks(model: torch.nn.Module) -> BlockSwap | None:
    """The :class:`BlockSwap` installed on ``model`` by the trainer, if any."""
    return getattr(model, _HANDLE, None)


def attach(model: torch.nn.Module, swap: BlockSwap | None) -> None:
    """Remember ``swap`` on ``model`` (see :func:`swapped_blocks`)."""
    object.__setattr__(model, _HANDLE, swap)
