"""Data-parallel training of the relation adapters on several GPUs (or CPU processes), via ``accelerate``.

Launch (one process per GPU; ``accelerate`` sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT)::

    accelerate launch --multi_gpu --num_processes 4 -m dreamrelation.cli train DATA --out runs/x ...

or :func:`launch_distributed` (what a ``--num-gpus N`` CLI option calls). Keep accelerate's
``--mixed_precision no``: the trainer applies ``TrainConfig.mixed_precision`` itself. Without CUDA the same
command starts N CPU processes that talk over gloo (useful for tests only). :func:`train_adapters
<dreamrelation.training.trainer.train_adapters>` notices the launch (:func:`init_distributed`) and then:

* ``optim.batch_size`` is the batch *per process*; a global batch of ``batch_size * world_size`` samples
  is drawn exactly as a single process with that batch size would draw it, and rank r keeps slice r.
* Random numbers: the HMT choice comes from a generator seeded identically on every rank, so all ranks
  activate the same adapters every step. The noise of each sample (caption dropout, latent sampling,
  sigma, eps) comes from a generator keyed by (seed, step, position in the global batch): every rank
  draws only its own shard's noise, different from the other ranks', and the run is independent of the
  number of processes - N processes reproduce one process with an N times larger batch.
* Gradients: after ``backward`` the gradients of the explicit adapter parameter list are averaged with one
  flat ``all_reduce`` (:func:`all_reduce_gradients`), then clipped and stepped identically everywhere.
  We do not wrap the model in ``DistributedDataParallel``: PEFT's ``set_adapter`` flips ``requires_grad``
  every step, which DDP's reducer (built once, over the parameters that required grad at wrap time) does
  not expect; ``find_unused_parameters=True`` would walk the 10B-parameter graph every step to find the
  unused adapters, and the wrapper hides PEFT's methods behind ``.module``. The adapter gradients are
  small (the whole triplet on Mochi: ~41 M parameters, ~165 MB in fp32, less on subject steps) next to a
  multi-second step, so giving up DDP's overlap of communication with backward costs little.
* Contrastive loss: the spatially pooled output vectors of the whole global batch are all-gathered with a
  differentiable gather (:class:`GatheredContrastiveLoss`), so other ranks' videos are positives and
  negatives; the (tiny) loss is evaluated on the full global batch on every rank and the memory banks
  receive the whole global batch, so they stay identical on every rank and equal to a single-process run.
* Only rank 0 writes checkpoints, ``loss.csv``, ``config.json`` and the adapters; the logged losses are
  averaged over ranks. On resume every rank reads the same checkpoint.

Memory, and FSDP: by default each rank holds a full replica of the base model. Mochi's 10B base is ~20 GB
in bf16, which fits next to 61-frame activations (with gradient checkpointing) on 80 GB GPUs - the paper's
setting. ``memory.fsdp=true`` shards the frozen base instead (:func:`shard_frozen_base`): PyTorch's FSDP2
``fully_shard`` per transformer block and then the root, with every adapter parameter passed as
``ignored_params``. The base then costs ~1/N per rank (plus the one or two blocks gathered at a time), while
the adapters stay plain whole tensors on every rank, so everything above - HMT's per-step adapter subsets
(``requires_grad`` flips that FSDP never sees), the flat gradient all-reduce, the gathered contrastive loss,
rank-0 checkpoints that any number of processes can resume - holds unchanged. The base has no gradients,
so FSDP only all-gathers (no reduce-scatter; works on gloo too). Launch as for data parallel (``accelerate
launch --multi_gpu`` / ``--num-gpus N``); accelerate's own FSDP plugin (``accelerate config`` -> FSDP)
would wrap the trainable adapters too and is refused by :func:`init_distributed`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from dreamrelation.errors import UserError
from dreamrelation.training.losses import RelationalContrastiveLoss

_UNSUPPORTED_ENV = {
    "ACCELERATE_USE_FSDP": "FSDP",
    "ACCELERATE_USE_DEEPSPEED": "DeepSpeed",
}


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a data-parallel run (``world_size == 1``: a plain single process)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device | None = None

    @property
    def enabled(self) -> bool:
        """True when there are other processes to talk to."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and shows progress."""
        return self.rank == 0

    def shard(self, items: Sequence[int]) -> list[int]:
        """This rank's contiguous slice of a global batch whose length is a multiple of ``world_size``."""
        per = len(items) // self.world_size
        if per * self.world_size != len(items):
            raise ValueError(f"global batch of {len(items)} does not split over {self.world_size} ranks")
        return list(items[self.rank * per : (self.rank + 1) * per])

    def barrier(self) -> None:
        """Wait for every rank (no-op for a single process)."""
        if self.enabled:
            dist.barrier()

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise mean over ranks of a small tensor (returns a new tensor, same device)."""
        if not self.enabled:
            return values
        out = values.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out / self.world_size

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when ``flag`` is True on at least one."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)


def _env_world_size() -> int:
    for key in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        if os.environ.get(key):
            return int(os.environ[key])
    return 1


def init_distributed() -> DistContext:
    """Join the process group of an ``accelerate launch`` / ``torchrun`` run (idempotent) and pick the device.

    A process group already set up by the caller is used as it is. Otherwise, when the environment says there
    are several processes, ``accelerate.PartialState`` initialises it (NCCL on CUDA, gloo on CPU) and makes
    ``cuda:LOCAL_RANK`` the current device. Without a launcher this is a single process on device ``None``
    (the trainer then keeps the model where it is).
    """
    for key, name in _UNSUPPORTED_ENV.items():
        if os.environ.get(key, "false").lower() == "true":
            raise UserError(
                f"{name} launches are not supported; run `accelerate launch --multi_gpu` (data parallel, "
                "add memory.fsdp=true to shard the frozen base; see dreamrelation.training.distributed)"
            )
    if not dist.is_available():
        return DistContext()
    if not dist.is_initialized():
        if _env_world_size() <= 1:
            return DistContext()
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())
        if not dist.is_initialized():
            raise UserError(f"accelerate did not start a process group ({state.distributed_type})")
    rank, world = dist.get_rank(), dist.get_world_size()
    if world <= 1:
        return DistContext()
    if dist.get_backend() == "nccl":
        local = int(os.environ.get("LOCAL_RANK", rank % max(torch.cuda.device_count(), 1)))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return DistContext(rank, world, device)


def broadcast_parameters(params: Sequence[torch.Tensor], ctx: DistContext) -> None:
    """Copy rank 0's values of ``params`` to every rank (one flat broadcast)."""
    if not ctx.enabled or not params:
        return
    with torch.no_grad():
        flat = torch.cat([p.detach().reshape(-1).float() for p in params])
        dist.broadcast(flat, src=0)
        offset = 0
        for p in params:
            n = p.numel()
            p.copy_(flat[offset : offset + n].view_as(p))
            offset += n


def all_reduce_gradients(params: Sequence[torch.Tensor], ctx: DistContext) -> None:
    """Average the gradients of ``params`` over ranks in place, with one flat ``all_reduce``.

    A parameter keeps ``grad is None`` only when it got no gradient on any rank (an inactive adapter), so
    AdamW skips it exactly as a single process would; one that got a gradient somewhere gets zeros
    elsewhere before averaging. All ranks must pass the same list in the same order.
    """
    if not ctx.enabled or not params:
        return
    device = params[0].device
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    dist.all_reduce(has, op=dist.ReduceOp.MAX)
    grads = []
    for p, h in zip(params, has.tolist(), strict=True):
        if h > 0:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
    if not grads:
        return
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= ctx.world_size
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def shard_frozen_base(
    model: torch.nn.Module,
    blocks: Sequence[torch.nn.Module],
    resident: Sequence[torch.nn.Parameter],
    device: torch.device,
) -> None:
    """Shard ``model``'s parameters over the ranks with FSDP2, per block and then the root, leaving out
    ``resident`` (the adapters: moved whole to ``device``, trained and all-reduced as in data parallel).
    FSDP moves each rank's shards to the process group's device itself."""
    from torch.distributed.fsdp import fully_shard

    ignored = set(resident)
    with torch.no_grad():
        for p in ignored:
            p.data = p.data.to(device)
    for block in blocks:
        fully_shard(block, ignored_params=ignored)
    fully_shard(model, ignored_params=ignored)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums the incoming gradients over ranks and keeps this rank's
    slice (the gradient of a sum of per-rank losses); works on any backend that has ``all_reduce``."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, rank: int, world: int) -> torch.Tensor:  # type: ignore[override]
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor)
        ctx.rank, ctx.n = rank, tensor.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n], None, None


def gather_with_grad(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Concatenate ``tensor`` (same shape on every rank) over ranks along dim 0, differentiably."""
    if not ctx.enabled:
        return tensor
    return _GatherWithGrad.apply(tensor, ctx.rank, ctx.world_size)


class GatheredContrastiveLoss(RelationalContrastiveLoss):
    """The relational contrastive loss over the *global* batch of a data-parallel run.

    Each rank pools its predictions over space, the pooled (B, F, C) vectors are all-gathered
    differentiably, and the loss of the whole global batch is computed on every rank (it is tiny: C = 12
    for Mochi). Every rank thus returns the single-process loss value; since the gathered gradient is
    summed over ranks and the trainer then averages gradients over ranks, the parameter gradient is the
    single-process one as well. The banks receive the global batch, so they are identical on every rank;
    bank sampling uses the generator given by the trainer, which is seeded identically on every rank.
    """

    def __init__(self, ctx: DistContext, **kwargs: float) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.ctx = ctx

    @classmethod
    def wrap(cls, rcl: RelationalContrastiveLoss, ctx: DistContext) -> GatheredContrastiveLoss:
        """The gathering version of ``rcl`` (same hyper-parameters)."""
        return cls(
            ctx,
            temperature=rcl.temperature,
            n_pos=rcl.n_pos,
            n_neg=rcl.n_neg,
            pos_bank=rcl.pos_bank_size,
            neg_bank=rcl.neg_bank_size,
        )

    def __call__(
        self, pred: torch.Tensor, generator: torch.Generator | None = None, first: int = 0
    ) -> torch.Tensor:
        """Loss of the global batch for this rank's ``pred`` (B, C, F, h, w); pushes the global batch."""
        pooled = pred.float().mean(dim=(3, 4))  # (B, C, F)
        everyone = gather_with_grad(pooled, self.ctx)  # (world * B, C, F)
        return super().__call__(everyone[..., None, None], generator, first)


def launch_command(
    num_processes: int, cli_args: Sequence[str], main_process_port: int | None = None
) -> list[str]:
    """The ``accelerate launch`` command line that runs ``dreamrelation <cli_args>`` on ``num_processes`` GPUs.

    ``--multi_gpu`` makes accelerate start the processes with ``torch.distributed.run``; without CUDA the same
    command runs CPU processes over gloo (checked on CPU: 2 processes reproduce one with the doubled batch).
    """
    if num_processes < 1:
        raise UserError(f"--num-gpus must be at least 1, got {num_processes}")
    accelerate = shutil.which("accelerate")
    head = [accelerate, "launch"] if accelerate else [sys.executable, "-m", "accelerate.commands.launch"]
    cmd = [*head, "--num_processes", str(num_processes), "--num_machines", "1", "--mixed_precision", "no"]
    cmd += ["--dynamo_backend", "no"]
    if torch.cuda.is_available() and num_processes > torch.cuda.device_count():
        raise UserError(
            f"--num-gpus {num_processes} but only {torch.cuda.device_count()} CUDA devices are visible"
        )
    if num_processes > 1:
        cmd.append("--multi_gpu")
    if main_process_port is not None:
        cmd += ["--main_process_port", str(main_process_port)]
    return [*cmd, "-m", "dreamrelation.cli", *cli_args]


def launch_distributed(
    num_processes: int, cli_args: Sequence[str], main_process_port: int | None = None
) -> int:
    """Re-run ``dreamrelation <cli_args>`` under ``accelerate launch`` on ``num_processes`` processes; returns
    the exit code. Call it from the CLI when ``--num-gpus N > 1`` and not already inside a launch
    (``WORLD_SIZE`` unset), passing the original arguments without ``--num-gpus``."""
    cmd = launch_command(num_processes, cli_args, main_process_port)
    return subprocess.call(cmd)


def inside_launch() -> bool:
    """True in a process started by ``accelerate launch`` / ``torchrun`` with more than one process."""
    return _env_world_size() > 1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for a local process group)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_local_processes(
    fn: Callable[..., None], world_size: int, args: Sequence = (), start_method: str | None = None
) -> None:
    """Run ``fn(rank, *args)`` in ``world_size`` local processes that can form one process group, as
    ``torchrun`` would start them (RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT set, 127.0.0.1 and a free
    port, one CPU thread each); :func:`init_distributed` in ``fn`` joins the group, which is destroyed when
    ``fn`` returns. For tests (gloo on CPU) and benchmarks; users launch with ``accelerate``. ``start_method``:
    ``fork`` by default without CUDA, ``spawn`` with it (a CUDA context cannot be forked; ``fn`` must then be
    importable)."""
    method = start_method or ("spawn" if torch.cuda.is_available() else "fork")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.multiprocessing.start_processes(
            _local_rank,
            args=(world_size, free_port(), fn, tuple(args)),
            nprocs=world_size,
            start_method=method,
        )
    finally:
        torch.set_num_threads(threads)


def _local_rank(rank: int, world_size: int, port: int, fn: Callable[..., None], args: tuple) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        GLOO_SOCKET_IFNAME="lo",
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    try:
        fn(rank, *args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
