"""Throughput of ``prepare_folder`` on toy-sized videos, and the data loader's share of a training step.

* prepare: frames per second of a first run (decode, clip choice, resize, masks, VAE + T5 encode, atomic
  writes) and of the decode/transform part alone, on 25-frame toy videos stored at 64x64 (native) and at
  256x256 (4x, so frames and masks are downscaled), plus the time of an all-up-to-date re-run.
* loader: ``load_prepared`` once (amortised over the training run) plus the trainer's per-step batch
  work (``batch_indices`` + ``collate``: stack, sample latents from mean/logvar, caption dropout), against
  the median toy training step (DreamRelation recipe, the toy backbone's default size, through
  ``train_adapters``). Target: loader < 5% of a step.

The model is a randomly initialised bundle of the toy backbone's default size (same cost as the trained
one) unless ``--bundle`` names one. Usage::

    OMP_NUM_THREADS=1 python benchmarks/prepare_throughput.py [--videos 12] [--train-steps 10] [--batch 4]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dreamrelation.backbones.loading import load_pipeline
from dreamrelation.data.mask_io import write_colour_masks
from dreamrelation.data.prepare_folder import PrepareConfig, load_prepared, prepare_folder, read_example
from dreamrelation.toy import world
from dreamrelation.toy.backbone import (
    ToyBackboneConfig,
    build_text_encoder,
    build_tokenizer,
    build_transformer,
    build_vae,
    save_bundle,
    toy_words,
)
from dreamrelation.toy.render import render_video
from dreamrelation.training.config import preset
from dreamrelation.training.trainer import batch_indices, collate, sample_generator, train_adapters
from dreamrelation.utils.media import upscale_nearest, write_video

GEOMETRY = {"num_frames": world.NUM_FRAMES, "height": world.HEIGHT, "width": world.WIDTH, "fps": world.FPS}
TARGET_LOADER_SHARE = 0.05


def make_bundle(path: Path) -> Path:
    """A random toy-size bundle (the default ``ToyBackboneConfig``)."""
    torch.manual_seed(0)
    cfg = ToyBackboneConfig()
    tokenizer = build_tokenizer(toy_words())
    save_bundle(
        path,
        vae=build_vae(cfg),
        transformer=build_transformer(cfg),
        text_encoder=build_text_encoder(len(tokenizer), cfg),
        tokenizer=tokenizer,
    )
    return path


def make_folder(root: Path, n: int, scale: int) -> Path:
    """``n`` toy videos (stored ``scale`` x upscaled) with captions and colour-coded masks."""
    rng = np.random.default_rng(0)
    for i in range(n):
        video = render_video(world.sample_video_spec(rng))
        write_video(root / f"v{i:03d}.mp4", upscale_nearest(video.frames, scale), fps=world.FPS, scale=1)
        (root / f"v{i:03d}.txt").write_text(video.caption + "\n")
        write_colour_masks(
            root / "masks" / f"v{i:03d}", upscale_nearest(video.masks[..., None], scale)[..., 0]
        )
    return root


def bench_prepare(src: Path, out: Path, bundle: Path, n: int) -> dict:
    """First run, decode-only pass and up-to-date re-run of one folder."""
    pipe = load_pipeline(bundle)
    t = time.perf_counter()
    report = prepare_folder(src, out, pipe, PrepareConfig(**GEOMETRY), progress=False)
    first = time.perf_counter() - t
    assert report.ok and len(report.prepared) == n, report.problems
    t = time.perf_counter()
    for i in range(n):
        read_example(src, f"v{i:03d}", PrepareConfig(**GEOMETRY))
    decode = time.perf_counter() - t
    t = time.perf_counter()
    again = prepare_folder(src, out, bundle, PrepareConfig(**GEOMETRY), progress=False)
    rerun = time.perf_counter() - t
    assert len(again.skipped) == n
    frames = n * GEOMETRY["num_frames"]
    return {
        "videos": n,
        "frames": frames,
        "first_run_s": first,
        "first_run_frames_per_s": frames / first,
        "decode_transform_frames_per_s": frames / decode,
        "encode_and_write_frames_per_s": frames / max(first - decode, 1e-9),
        "rerun_all_up_to_date_s": rerun,
    }


def bench_loader(out: Path, batch: int, total_steps: int, repeats: int = 200) -> dict:
    """``load_prepared`` and the per-step batch work of the trainer."""
    t = time.perf_counter()
    samples = load_prepared(out)
    load = time.perf_counter() - t
    times = []
    for step in range(repeats):
        t = time.perf_counter()
        idx = batch_indices(step, batch, len(samples), 0)
        collate(samples, idx, torch.device("cpu"), [sample_generator(0, step, k) for k in range(batch)], 0.1)
        times.append(time.perf_counter() - t)
    per_step = statistics.median(times)
    return {
        "load_prepared_s": load,
        "collate_median_s": per_step,
        "loader_per_step_s": per_step + load / total_steps,
        "samples": samples,
    }


def bench_step(bundle: Path, samples: list, batch: int, steps: int, skip: int = 2) -> float:
    """Median seconds of a toy DreamRelation training step (``train_adapters``' own per-step wall time)."""
    cfg = preset("dreamrelation")
    cfg.optim.steps, cfg.optim.batch_size, cfg.optim.warmup_steps, cfg.optim.checkpoint_every = (
        steps,
        batch,
        1,
        0,
    )
    cfg.mixed_precision = "fp32"
    transformer = load_pipeline(bundle).transformer
    with tempfile.TemporaryDirectory() as tmp:
        result = train_adapters(transformer, samples, cfg, tmp, progress=False)
    return statistics.median(result.step_seconds[skip:])


def main() -> None:
    """Run both benchmarks, print a table and write ``benchmarks/results/prepare.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=12)
    parser.add_argument("--batch", type=int, default=4, help="training batch (the toy demo's)")
    parser.add_argument("--train-steps", type=int, default=10, help="timed toy steps (+2 warm-up)")
    parser.add_argument("--recipe-steps", type=int, default=300, help="steps load_prepared is amortised over")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bundle", type=Path, default=None, help="model bundle (default: random toy-size)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "prepare.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bundle = args.bundle or make_bundle(root / "bundle")
        prep = {}
        for label, scale in (("64x64 source", 1), ("256x256 source (4x)", 4)):
            src = make_folder(root / f"src{scale}", args.videos, scale)
            prep[label] = bench_prepare(src, root / f"out{scale}", bundle, args.videos)
        loader = bench_loader(root / "out1", args.batch, args.recipe_steps)
        samples = loader.pop("samples")
        step = bench_step(bundle, samples, args.batch, args.train_steps + 2)
    share = loader["loader_per_step_s"] / step

    print(
        f"prepare: {args.videos} toy videos x {GEOMETRY['num_frames']} frames -> "
        f"{GEOMETRY['height']}x{GEOMETRY['width']}, {args.threads} thread(s)"
    )
    print(f"{'source':<22}{'first run f/s':>15}{'decode f/s':>12}{'encode f/s':>12}{'re-run s':>10}")
    for label, r in prep.items():
        print(
            f"{label:<22}{r['first_run_frames_per_s']:>15.1f}{r['decode_transform_frames_per_s']:>12.1f}"
            f"{r['encode_and_write_frames_per_s']:>12.1f}{r['rerun_all_up_to_date_s']:>10.3f}"
        )
    print(
        f"loader: load_prepared {loader['load_prepared_s'] * 1e3:.1f} ms once, collate (batch {args.batch}) "
        f"{loader['collate_median_s'] * 1e3:.2f} ms/step, {loader['loader_per_step_s'] * 1e3:.2f} ms/step "
        f"amortised over {args.recipe_steps} steps"
    )
    verdict = "meets" if share < TARGET_LOADER_SHARE else "misses"
    print(
        f"toy step {step * 1e3:.1f} ms -> loader share {100 * share:.2f}% ({verdict} the target "
        f"< {100 * TARGET_LOADER_SHARE:.0f}%); wall {time.perf_counter() - t0:.0f} s"
    )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "geometry": GEOMETRY,
        "prepare": prep,
        "loader": {**loader, "batch_size": args.batch, "amortised_over_steps": args.recipe_steps},
        "toy_step_median_s": step,
        "loader_share_of_step": share,
        "target_loader_share": TARGET_LOADER_SHARE,
        "meets_target": share < TARGET_LOADER_SHARE,
        "model": "random toy-size bundle" if args.bundle is None else str(args.bundle),
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
