"""Seconds to load Mochi from genmo's original layout (converted in memory at every load) vs from the
diffusers directory ``dreamrelation convert`` writes once - on the TINY test model, not Mochi 1.

The tiny model is the one of ``tests/backbones/test_genmo.py``: a DiT of 48 blocks (diffusers' single-file converter
reads exactly 48) but width 32, a 32-channel VAE with attention, a one-layer T5 - a few MB in all, so the
figures show the fixed overhead of each path (config inference, key conversion, the single-file loader),
not the cost of reading 40 GB of real weights. Medians of ``--rounds`` loads each, interleaved. Usage::

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/genmo_load.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_genmo import TINY_DIT, TINY_VAE, _randomised, genmo_dit_state, genmo_vae_states  # noqa: E402

from dreamrelation.backbones.loading import convert_model, load_pipeline, load_transformer  # noqa: E402


def _write_genmo(root: Path) -> Path:
    """``root/mochi`` (genmo layout) and ``root/t5-v1_1-xxl`` with the tiny test weights."""
    from diffusers import AutoencoderKLMochi, MochiTransformer3DModel
    from safetensors.torch import save_file
    from transformers import T5Config, T5EncoderModel

    from dreamrelation.toy.backbone import build_tokenizer, toy_words

    mochi = root / "mochi"
    mochi.mkdir(parents=True)
    save_file(
        genmo_dit_state(_randomised(MochiTransformer3DModel(**TINY_DIT), 1)), str(mochi / "dit.safetensors")
    )
    enc, dec = genmo_vae_states(_randomised(AutoencoderKLMochi(**TINY_VAE), 2))
    save_file({k: v.contiguous() for k, v in enc.items()}, str(mochi / "encoder.safetensors"))
    save_file({k: v.contiguous() for k, v in dec.items()}, str(mochi / "decoder.safetensors"))
    tokenizer = build_tokenizer(toy_words())
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
    T5EncoderModel(config).save_pretrained(root / "t5-v1_1-xxl")
    tokenizer.save_pretrained(root / "t5-v1_1-xxl")
    return mochi


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        genmo = _write_genmo(Path(tmp))
        convert_s = _seconds(lambda: convert_model(genmo, Path(tmp) / "diffusers", dtype=torch.float32))
        converted = Path(tmp) / "diffusers"
        cases = {
            "pipeline_genmo": lambda: load_pipeline(genmo),
            "pipeline_diffusers": lambda: load_pipeline(converted),
            "transformer_genmo": lambda: load_transformer(genmo),
            "transformer_diffusers": lambda: load_transformer(converted),
        }
        times: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(args.rounds):
            for name, fn in cases.items():
                times[name].append(_seconds(fn))
    result = {
        "model": "tiny test model (tests/backbones/test_genmo.py), NOT Mochi 1",
        "rounds": args.rounds,
        "convert_once_s": round(convert_s, 3),
        **{f"{k}_median_s": round(statistics.median(v), 3) for k, v in times.items()},
    }
    out = Path(__file__).resolve().parent / "results" / "genmo_load.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
