"""Seconds per generated toy video: the untuned toy model vs the same model with DreamRelation adapters.

For each toy bundle present (the shipped Mochi one; the Wan one when ``dreamrelation toy pretrain
--architecture wan`` has written it) the pipeline generates the same prompts and seeds at the toy defaults
(32 steps, CFG 4, 25 frames at 64x64) three ways, interleaved by round so background load hits all alike:

* ``untuned``: the base model.
* ``adapters``: the paper's inference adapters (relation on Q/K + output, rank 16, random non-zero
  weights) computed by PEFT next to the frozen base - what ``dreamrelation generate --adapters`` runs.
* ``all_roles``: every role of the triplet active (relation, both subjects, output) - the most an adapter
  set can cost.

Reported: mean CPU seconds per video (robust to other jobs on one thread; the headline), median wall
seconds, and each variant's ratio to ``untuned`` paired by round. Usage::

    OMP_NUM_THREADS=1 python benchmarks/generation_time.py [--rounds 2] [--steps 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from dreamrelation.adapters.triplet import adapter_parameters, add_relation_adapters, set_active_roles
from dreamrelation.backbones.loading import load_pipeline
from dreamrelation.backbones.registry import TOY
from dreamrelation.core.roles import AdapterConfig
from dreamrelation.inference.generate import Sampling, generate_videos

PROMPTS = ["A red circle is high-fiving with a blue square.", "A green star is pushing a yellow diamond."]
VARIANTS = {"untuned": None, "adapters": ["relation", "output"], "all_roles": None}


def add_random_adapters(transformer: torch.nn.Module, rank: int = 16) -> None:
    """The paper's relation triplet + output adapters with random non-zero weights."""
    add_relation_adapters(transformer, AdapterConfig(rank=rank, alpha=float(rank)))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for params in adapter_parameters(transformer).values():
            for p in params:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def time_variant(pipe, variant: str, steps: int, seed: int) -> tuple[float, float]:
    """CPU and wall seconds per video of one variant (one video per prompt)."""
    transformer = pipe.transformer
    if variant == "untuned":
        transformer.disable_adapters()
    else:
        transformer.enable_adapters()
        roles = VARIANTS[variant] or list(adapter_parameters(transformer))
        set_active_roles(transformer, roles, trainable=False)
    cpu, wall = time.process_time(), time.perf_counter()
    generate_videos(pipe, PROMPTS, [seed] * len(PROMPTS), Sampling(steps, 4.0))
    return (time.process_time() - cpu) / len(PROMPTS), (time.perf_counter() - wall) / len(PROMPTS)


def main() -> None:
    """Run the interleaved benchmark per bundle, print a table and write the JSON results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "generation_time.json"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    t0 = time.perf_counter()
    for arch, path in TOY.bundles.items():
        if not (path / "model_index.json").is_file():
            print(f"{arch}: no toy bundle at {path} (skipped)")
            continue
        pipe = load_pipeline(path)
        add_random_adapters(pipe.transformer)
        names = list(VARIANTS)
        seconds = {c: {v: [] for v in names} for c in ("cpu", "wall")}
        paired = {c: {v: [] for v in names} for c in ("cpu", "wall")}
        time_variant(pipe, "untuned", 2, seed=0)  # warm-up
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            this_round = {v: time_variant(pipe, v, args.steps, seed=r) for v in order}
            for i, c in enumerate(("cpu", "wall")):
                for v in names:
                    seconds[c][v].append(this_round[v][i])
                    paired[c][v].append(this_round[v][i] / this_round["untuned"][i])
        results[arch] = {
            "bundle": str(path),
            "seconds_per_video": {
                "cpu": {v: statistics.fmean(s) for v, s in seconds["cpu"].items()},
                "wall": {v: statistics.median(s) for v, s in seconds["wall"].items()},
            },
            "ratio_vs_untuned": {c: {v: statistics.median(p) for v, p in paired[c].items()} for c in paired},
        }
    wall = time.perf_counter() - t0

    print(
        f"toy video: 25 frames 64x64, {args.steps} steps, CFG 4 (2 forwards a step), {args.threads} thread(s), "
        f"{args.rounds} rounds x {len(PROMPTS)} videos"
    )
    print(f"{'bundle':<8}{'variant':<12}{'CPU s/video':>13}{'ratio':>8}{'wall s/video':>14}{'ratio':>8}")
    for arch, res in results.items():
        s, q = res["seconds_per_video"], res["ratio_vs_untuned"]
        for v in VARIANTS:
            print(
                f"{arch:<8}{v:<12}{s['cpu'][v]:>13.3f}{q['cpu'][v]:>8.3f}{s['wall'][v]:>14.3f}{q['wall'][v]:>8.3f}"
            )
    print(
        f"(CPU: mean, wall: median; ratio: median over rounds, each vs that round's untuned); wall {wall:.0f} s"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "steps": args.steps,
        "guidance_scale": 4.0,
        "geometry": [25, 64, 64],
        "prompts": PROMPTS,
        "threads": args.threads,
        "rounds": args.rounds,
        "bundles": results,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "wall_seconds": wall,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
