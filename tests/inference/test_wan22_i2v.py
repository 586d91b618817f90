"""Wan 2.2 TI2V-5B image-to-video on a tiny bundle: generation from a photo, diffusers' loaders, the ComfyUI
Wan export, and the command line end to end (prepare -> train with i2v steps -> generate --image)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import WanImageToVideoPipeline, WanPipeline
from peft.utils import get_peft_model_state_dict
from PIL import Image
from safetensors.torch import load_file
from tiny import TINY_WAN22_TOY

from dreamrelation.adapters.interop import export_adapters, read_adapter_file
from dreamrelation.adapters.triplet import add_relation_adapters, save_adapters
from dreamrelation.backbones.loading import load_pipeline
from dreamrelation.core.roles import AdapterConfig
from dreamrelation.errors import InputWarning, UserError
from dreamrelation.evaluation.toy_study import write_exemplar_videos
from dreamrelation.inference.generate import (
    GenerationConfig,
    generate_to_folder,
    image_pipeline,
    model_takes_image,
)
from dreamrelation.toy.backbone import build_transformer
from dreamrelation.utils.media import fit_image, read_image

PROMPT = "A red circle is high-fiving with a blue square."


def photo(path: Path, width: int = 96, height: int = 48, seed: int = 0) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> Path:
    """The paper's adapters on the tiny Wan 2.2 transformer, with random (non-zero) weights."""
    transformer = build_transformer(TINY_WAN22_TOY)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        add_relation_adapters(transformer, AdapterConfig(rank=4))
        with torch.no_grad():
            for name, p in transformer.named_parameters():
                if "lora_" in name:
                    p.normal_(0.0, 0.2)
    folder = tmp_path_factory.mktemp("wan22_adapters")
    save_adapters(
        transformer,
        folder,
        list(AdapterConfig().placement),
        metadata={"inference_roles": ["relation", "output"]},
    )
    return folder


# ----------------------------------------------------------------------------------------------- the photo


def test_fit_image_covers_then_centre_crops() -> None:
    image = Image.fromarray(np.arange(48 * 96 * 3, dtype=np.uint8).reshape(48, 96, 3) % 251)
    fitted, note = fit_image(image, 64, 64)
    # an independent computation: cover 64x64 keeping 2:1 -> 128x64, keep the middle 64 columns
    expected = np.asarray(image.resize((128, 64), Image.Resampling.LANCZOS))[:, 32:96]
    assert fitted.size == (64, 64) and np.array_equal(np.asarray(fitted), expected)
    assert note == "resized from 96x48 to 128x64 and centre-cropped to 64x64"
    same, none = fit_image(fitted, 64, 64)
    assert same is fitted and none is None


def test_unreadable_or_missing_photos_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match="junk.png: not a readable image"):
        read_image(tmp_path / "junk.png")
    with pytest.raises(UserError, match="image file not found"):
        read_image(tmp_path / "missing.jpg")


# ----------------------------------------------------------------------------------------------- generation


def test_generate_from_a_photo_starts_from_it(
    tiny_wan22_bundle: Path, adapters: Path, tmp_path: Path
) -> None:
    pipe = load_pipeline(tiny_wan22_bundle)
    cfg = GenerationConfig(
        prompts=[PROMPT],
        adapters=adapters,
        image=photo(tmp_path / "p.png"),
        steps=2,
        out_dir=tmp_path / "out",
    )
    with pytest.warns(InputWarning, match="p.png: resized from 96x48 to 128x64 and centre-cropped to 64x64"):
        result = generate_to_folder(cfg, pipe=pipe)
    sidecar = json.loads(result.sidecars[0].read_text())
    assert (
        sidecar["settings"]["image"]["size"] == [96, 48] and sidecar["settings"]["backbone"] == "wan2.2-ti2v"
    )
    assert result.frames[0].shape == (25, 64, 64, 3)
    # the same adapters sample text-to-video: no image, a different video
    text = generate_to_folder(
        GenerationConfig(prompts=[PROMPT], adapters=adapters, steps=2, out_dir=tmp_path / "t"), pipe=pipe
    )
    assert "image" not in json.loads(text.sidecars[0].read_text())["settings"]
    assert not np.array_equal(text.frames[0], result.frames[0])
    # the image pipeline's first latent frame is the encoded (fitted) photo, as WanImageToVideoPipeline makes it
    fitted, _ = fit_image(read_image(tmp_path / "p.png"), 64, 64)
    sampler = image_pipeline(pipe)
    assert isinstance(sampler, WanImageToVideoPipeline) and sampler.transformer is pipe.transformer
    embeds, negative = pipe.encode_prompt([PROMPT], [""], max_sequence_length=32)
    latents = sampler(
        image=fitted,
        prompt_embeds=embeds,
        negative_prompt_embeds=negative,
        num_frames=25,
        height=64,
        width=64,
        num_inference_steps=2,
        output_type="latent",
    ).frames
    video = sampler.video_processor.preprocess(fitted, 64, 64)[:, :, None]
    mean = torch.tensor(pipe.vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(pipe.vae.config.latents_std).view(1, -1, 1, 1, 1)
    first = (pipe.vae.encode(video).latent_dist.mode() - mean) / std
    assert torch.allclose(latents[:, :, :1], first, atol=1e-5)


def test_models_that_cannot_take_an_image_are_refused(
    tiny_wan_bundle: Path, tiny_wan22_bundle: Path, tmp_path: Path
) -> None:
    assert model_takes_image(tiny_wan22_bundle) and not model_takes_image(tiny_wan_bundle)
    cfg = GenerationConfig(
        prompts=[PROMPT], model=tiny_wan_bundle, image=photo(tmp_path / "p.png"), out_dir=tmp_path / "o"
    )
    with pytest.raises(UserError, match="a wan2.1 model cannot take an image"):
        generate_to_folder(cfg)
    assert not (tmp_path / "o").exists()
    with pytest.raises(UserError, match="cannot take an image"):
        image_pipeline(load_pipeline(tiny_wan_bundle))


# ----------------------------------------------------------------------------------------------- interop


def test_adapters_load_with_the_image_pipelines_lora_loader(tiny_wan22_bundle: Path, adapters: Path) -> None:
    pipe = WanImageToVideoPipeline.from_pretrained(tiny_wan22_bundle)
    assert pipe.config.expand_timesteps
    pipe.load_lora_weights(str(adapters), weight_name="relation.safetensors", adapter_name="relation")
    loaded = get_peft_model_state_dict(pipe.transformer, adapter_name="relation")
    saved = {
        k.removeprefix("transformer."): v
        for k, v in load_file(str(adapters / "relation.safetensors")).items()
    }
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved)


def _dense_deltas(transformer: torch.nn.Module, adapter: str) -> dict[str, torch.Tensor]:
    """module -> scale * B @ A of one loaded adapter, as PEFT applies it."""
    out = {}
    for name, module in transformer.named_modules():
        if hasattr(module, "lora_A") and adapter in module.lora_A:
            a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
            out[name] = module.scaling[adapter] * (b @ a)
    return out


def test_comfyui_wan_export_round_trips_through_diffusers(
    tiny_wan22_bundle: Path, adapters: Path, tmp_path: Path
) -> None:
    strengths = {"relation": 0.7, "subject1": 1.0, "output": 1.3}
    result = export_adapters(adapters, tmp_path / "comfy.safetensors", roles=strengths)
    keys = load_file(str(result.path)).keys()
    assert all(k.startswith("diffusion_model.blocks.") for k in keys)
    assert "diffusion_model.blocks.0.self_attn.q.lora_A.weight" in keys
    assert "diffusion_model.blocks.1.cross_attn.v.alpha" in keys and not any("attn1" in k for k in keys)
    # diffusers converts the ComfyUI Wan layout back; its dense deltas are the strength-weighted role sums
    pipe = WanPipeline.from_pretrained(tiny_wan22_bundle)
    pipe.load_lora_weights(str(result.path), adapter_name="comfy")
    got = _dense_deltas(pipe.transformer, "comfy")
    expected: dict[str, torch.Tensor] = {}
    for role, strength in strengths.items():
        _, factors, _ = read_adapter_file(adapters / f"{role}.safetensors")
        for module, f in factors.items():
            expected[module] = expected.get(module, 0) + strength * f.delta()
    assert got.keys() == expected.keys() and result.modules == len(expected)
    for module, delta in expected.items():
        assert torch.allclose(got[module], delta, atol=1e-6), module
    with pytest.raises(UserError, match="Wan adapters export to comfyui"):
        export_adapters(adapters, tmp_path / "g.safetensors", format="genmo")


# ----------------------------------------------------------------------------------------------- end to end


def test_prepare_train_i2v_and_generate_from_a_photo_on_the_command_line(
    tiny_wan22_bundle: Path, tmp_path: Path
) -> None:
    src, cache, run = tmp_path / "exemplars", tmp_path / "cache", tmp_path / "run"
    write_exemplar_videos("high_fiving", 2, 1, src)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "dreamrelation.cli", *args], capture_output=True, text=True, check=False
        )

    done = cli("prepare", str(src), str(cache), "-m", str(tiny_wan22_bundle))
    assert done.returncode == 0, done.stderr[-2000:]
    latents = load_file(str(next((cache / "samples").glob("*.safetensors"))))
    assert latents["latents"].shape == (48, 7, 4, 4)  # 25 x 64 x 64 through the Wan 2.2 VAE
    done = cli(
        "train",
        str(cache),
        "-m",
        str(tiny_wan22_bundle),
        "optim.steps=5",
        "i2v.probability=0.5",
        "--out",
        str(run),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    i2v = [row.split(",")[-1] for row in (run / "loss.csv").read_text().splitlines()[1:]]
    assert "1" in i2v and "0" in i2v  # seed 0 draws: steps 1-4 text-to-video, step 5 image-to-video

    out = tmp_path / "videos"
    image = photo(tmp_path / "photo.jpg", 80, 120)
    args = ["-m", str(tiny_wan22_bundle), "--adapters", str(run / "adapters"), "--steps", "2"]
    done = cli("generate", "--image", str(image), PROMPT, *args, "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: photo.jpg: resized from 80x120 to 64x96 and centre-cropped to 64x64 (the video's 64x64 frame)"
    ]
    assert len(list(out.glob("*.mp4"))) == 1
    done = cli("generate", PROMPT, *args, "--out", str(tmp_path / "text"))  # text-to-video, same adapters
    assert done.returncode == 0 and len(list((tmp_path / "text").glob("*.mp4"))) == 1
    (tmp_path / "bad.png").write_text("no")
    done = cli(
        "generate", "--image", str(tmp_path / "bad.png"), PROMPT, *args, "--out", str(tmp_path / "bad")
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "bad.png: not a readable image" in done.stderr and len(done.stderr.strip().splitlines()) == 1
