"""Seconds per training step: plain LoRA vs the DreamRelation recipe (HMT + RCL), on a small CPU Mochi.

Three trainers, all through :func:`dreamrelation.training.trainer.train_adapters` (the timed span is the
trainer's own per-step wall time: batch, forward, losses, backward, clipping, AdamW):

* ``direct_lora``: the ``direct_lora`` preset - one adapter on q, k, v and out of both streams, plain MSE.
* ``dreamrelation``: the paper recipe - relation (q, k), subject1/subject2 (v), output (out), hybrid mask
  training (only the chosen role's adapters are computed) and the relational contrastive loss.
* ``public_code``: the same recipe computed the way the public code does it - every adapter in every step
  (emulated by activating all roles whatever the HMT choice; the public code multiplies inactive adapters
  by zero, which costs the same forward and backward).

Runs interleave the trainers (round 1: a, b, c; round 2: b, c, a; ...) so background load hits all of them
alike, drop each run's first steps (warm-up), and report the mean CPU time per step (robust to other jobs when torch
runs on one thread; the headline) and the median wall time, with ratios paired by round. Usage::

    OMP_NUM_THREADS=1 python benchmarks/step_time.py [--rounds 8] [--steps 14] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import MochiTransformer3DModel

import dreamrelation.training.trainer as trainer_module
from dreamrelation.core.samples import TrainingSample
from dreamrelation.training.config import TrainConfig, preset
from dreamrelation.training.trainer import train_adapters

MODEL = dict(
    num_layers=4,
    num_attention_heads=4,
    attention_head_dim=32,
    pooled_projection_dim=64,
    in_channels=12,
    text_embed_dim=64,
    time_embed_dim=64,
    patch_size=2,
    max_sequence_length=32,
)
LATENT = (12, 5, 8, 8)
TOKENS = 32
METHODS = ("direct_lora", "dreamrelation", "public_code")
TARGET_RATIO = 1.15


def make_samples(n: int = 8) -> list[TrainingSample]:
    """Random encoded videos with two subject masks (left / right halves)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        masks = torch.zeros(2, *LATENT[1:])
        masks[0, ..., : LATENT[3] // 2] = 1.0
        masks[1, ..., LATENT[3] // 2 :] = 1.0
        out.append(
            TrainingSample(
                latents=torch.randn(*LATENT, generator=g),
                prompt_embeds=torch.randn(TOKENS, MODEL["text_embed_dim"], generator=g),
                prompt_mask=torch.arange(TOKENS) < 20,
                masks=masks,
                name=f"video{i}",
            )
        )
    return out


def make_config(method: str, steps: int, batch: int, seed: int) -> TrainConfig:
    """The preset of ``method`` (``public_code`` uses the DreamRelation recipe) at benchmark size."""
    cfg = preset("direct_lora" if method == "direct_lora" else "dreamrelation")
    cfg.optim.seed = seed  # a new seed per round varies the mix of HMT choices
    cfg.optim.steps = steps
    cfg.optim.warmup_steps = 1
    cfg.optim.batch_size = batch
    cfg.optim.checkpoint_every = 0
    cfg.mixed_precision = "fp32"
    return cfg


@contextmanager
def all_adapters_every_step(enabled: bool) -> Iterator[None]:
    """Emulate the public code: every adapter computed in every step, whatever the HMT choice."""
    original = trainer_module.roles_for_choice
    if enabled:
        trainer_module.roles_for_choice = lambda choice, roles, shared_on=(): list(roles)
    try:
        yield
    finally:
        trainer_module.roles_for_choice = original


def run_once(
    method: str, samples: list[TrainingSample], steps: int, batch: int, skip: int, seed: int
) -> dict:
    """Train a fresh model for ``steps`` steps; per-step wall and CPU seconds (after ``skip``), HMT choices.

    CPU time (of this thread, read at each step's callback) is robust to other jobs on a shared machine when
    torch runs on one thread; the wall time is the trainer's own per-step measurement.
    """
    torch.manual_seed(0)
    model = MochiTransformer3DModel(**MODEL)
    marks: list[float] = []
    cfg = make_config(method, steps, batch, seed)
    with tempfile.TemporaryDirectory() as tmp, all_adapters_every_step(method == "public_code"):
        marks.append(time.thread_time())
        result = train_adapters(
            model,
            samples,
            cfg,
            tmp,
            progress=False,
            callback=lambda step, loss: marks.append(time.thread_time()),
        )
    cpu = [b - a for a, b in zip(marks, marks[1:], strict=False)]
    return {"wall": result.step_seconds[skip:], "cpu": cpu[skip:], "choices": result.choices[skip:]}


def main() -> None:
    """Run the interleaved benchmark, print a table and write the JSON results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=14, help="steps per run (first --skip not timed)")
    parser.add_argument("--skip", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "step_time.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    samples = make_samples()
    params = sum(p.numel() for p in MochiTransformer3DModel(**MODEL).parameters())

    clocks = ("cpu", "wall")
    # CPU time barely depends on other jobs: its mean is the throughput over the HMT mix of step kinds.
    # Wall time has load spikes: use medians.
    stat = {"cpu": statistics.fmean, "wall": statistics.median}
    seconds = {c: {m: [] for m in METHODS} for c in clocks}
    paired = {c: {m: [] for m in METHODS} for c in clocks}  # per round: statistic / that round's direct LoRA
    by_choice: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    for r in range(args.rounds):
        order = METHODS[r % len(METHODS) :] + METHODS[: r % len(METHODS)]
        this_round = {}
        for method in order:
            this_round[method] = res = run_once(method, samples, args.steps, args.batch, args.skip, seed=r)
            for c in clocks:
                seconds[c][method] += res[c]
            if method == "dreamrelation":
                for s, c in zip(res["cpu"], res["choices"], strict=True):
                    by_choice.setdefault(c, []).append(s)
        for c in clocks:
            base_r = stat[c](this_round["direct_lora"][c])
            for m in METHODS:
                paired[c][m].append(stat[c](this_round[m][c]) / base_r)
    wall = time.perf_counter() - t0

    med = {c: {m: stat[c](v) for m, v in seconds[c].items()} for c in clocks}
    ratio = {c: {m: statistics.median(v) for m, v in paired[c].items()} for c in clocks}
    print(
        f"Mochi {MODEL['num_layers']} layers, {MODEL['num_attention_heads']}x{MODEL['attention_head_dim']}, "
        f"{params / 1e6:.2f} M params, latent {'x'.join(map(str, LATENT))}, batch {args.batch}, "
        f"LoRA rank 16, {args.threads} thread(s), {args.rounds} rounds x {args.steps - args.skip} timed steps"
    )
    print(f"{'method':<15}{'CPU s/step':>12}{'ratio':>8}{'wall s/step':>13}{'ratio':>8}")
    for m in METHODS:
        print(
            f"{m:<15}{med['cpu'][m]:>12.4f}{ratio['cpu'][m]:>8.3f}{med['wall'][m]:>13.4f}{ratio['wall'][m]:>8.3f}"
        )
    print(
        "(CPU: mean, wall: median over all timed steps; ratio: median over rounds, each round vs its direct LoRA)"
    )
    for c, v in sorted(by_choice.items()):
        print(f"  dreamrelation {c:<9} step: {statistics.median(v):.4f} CPU s (n={len(v)})")
    headline = ratio["cpu" if args.threads == 1 else "wall"]["dreamrelation"]
    verdict = "meets" if headline <= TARGET_RATIO else "misses"
    print(
        f"DreamRelation / plain LoRA = {headline:.3f} ({verdict} the target <= {TARGET_RATIO}); wall {wall:.0f} s"
    )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "model": {**MODEL, "parameters": params},
        "latent": list(LATENT),
        "batch_size": args.batch,
        "threads": args.threads,
        "rounds": args.rounds,
        "timed_steps_per_run": args.steps - args.skip,
        "seconds_per_step": med,
        "statistic": {"cpu": "mean", "wall": "median"},
        "ratio_vs_direct_lora": ratio,
        "dreamrelation_median_cpu_seconds_by_choice": {c: statistics.median(v) for c, v in by_choice.items()},
        "ratio_dreamrelation_vs_direct_lora": headline,
        "headline_clock": "cpu" if args.threads == 1 else "wall",
        "target_ratio": TARGET_RATIO,
        "meets_target": headline <= TARGET_RATIO,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "wall_seconds": wall,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
