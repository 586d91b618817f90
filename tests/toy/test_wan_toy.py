"""The toy world on the Wan 2.1 classes: pretraining, sampling through WanPipeline, preparation, training."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import WanPipeline
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file
from tiny import TINY_WAN_TOY

from dreamrelation.backbones.loading import load_pipeline
from dreamrelation.backbones.registry import TOY, WAN, model_profile
from dreamrelation.core.samples import TrainingSample
from dreamrelation.data.prepare import null_prompt_for
from dreamrelation.data.prepare_folder import (
    PrepareConfig,
    load_null_prompt,
    load_prepared,
    prepare_folder,
    read_example,
)
from dreamrelation.errors import UserError
from dreamrelation.evaluation.toy_study import write_exemplar_videos
from dreamrelation.inference.generate import GenerationConfig, Sampling, generate_to_folder, generate_videos
from dreamrelation.toy.backbone import MAX_SEQUENCE_LENGTH, analytic_decode, analytic_latents, build_vae
from dreamrelation.toy.pretrain import (
    PretrainConfig,
    long_clip_steps,
    pretrain,
    random_shape_clips,
    render_pretraining_set,
    train_vae,
    vae_decode,
    vae_moments,
)
from dreamrelation.training.trainer import collate
from dreamrelation.ui import model_defaults

PROMPT = "A red circle is high-fiving with a blue square."


@pytest.mark.parametrize("temporal", [4, 6])
def test_analytic_latents_take_every_temporal_th_frame(temporal: int) -> None:
    gen = torch.Generator().manual_seed(temporal)
    video = torch.rand(1, 3, 2 * temporal + 1, 16, 16, generator=gen) * 2 - 1
    latents = analytic_latents(video, temporal)
    assert latents.shape == (1, 12, 3, 2, 2)
    for f in range(3):
        for c, dy, dx, y, x in ((0, 0, 0, 0, 0), (1, 1, 0, 1, 1), (2, 1, 1, 0, 1)):
            y0, x0 = 8 * y + 4 * dy, 8 * x + 4 * dx
            expected = video[0, c, f * temporal, y0 : y0 + 4, x0 : x0 + 4].mean()
            assert torch.isclose(latents[0, c * 4 + 2 * dy + dx, f, y, x], expected, atol=1e-6)
    decoded = analytic_decode(latents, temporal)
    assert decoded.shape == (1, 3, 2 * temporal + 1, 16, 16)
    halfway = decoded[:, :, temporal // 2]  # linear interpolation between keyframes 0 and 1
    assert torch.allclose(halfway, (decoded[:, :, 0] + decoded[:, :, temporal]) / 2, atol=1e-6)
    with pytest.raises(ValueError, match=f"{temporal}k\\+1"):
        analytic_latents(video[:, :, :-1], temporal)


def test_wan_vae_pretraining_learns_the_analytic_latent(tmp_path: Path) -> None:
    # the chunked, cached causal path (needed for Wan's temporal downsampling) passes gradients everywhere
    vae = build_vae(TINY_WAN_TOY)
    clips = random_shape_clips(2, 5, 16, torch.Generator().manual_seed(0))
    loss = (
        vae_moments(vae, clips).square().mean() + vae_decode(vae, analytic_latents(clips, 4)).square().mean()
    )
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in vae.parameters())
    assert vae_decode(vae, analytic_latents(clips, 4)).shape == clips.shape

    cfg = PretrainConfig(vae_steps=60, vae_batch=2, vae_crop=16, vae_lr=3e-3, backbone=TINY_WAN_TOY)
    vae, _ = train_vae(cfg, tmp_path, progress=False)
    log = json.loads((tmp_path / "vae_log.json").read_text())["log"]
    first = np.mean([r["encoder_mse"] for r in log[:10]])
    last = np.mean([r["encoder_mse"] for r in log[-10:]])
    assert type(vae).__name__ == "AutoencoderKLWan" and last < 0.8 * first, (first, last)


def test_toy_pretraining_on_wan_writes_a_wan_pipeline(tmp_path: Path) -> None:
    cfg = PretrainConfig(
        vae_steps=2,
        vae_batch=2,
        vae_crop=16,
        num_videos=6,
        vae_long_steps=2,
        vae_long_batch=1,
        transformer_steps=2,
        transformer_batch=2,
        backbone=TINY_WAN_TOY,
    )
    bundle = pretrain(tmp_path / "bundle", cfg, work_dir=tmp_path / "work", progress=False)
    # the VAE's second phase ran on toy-length clips; its quality is recorded for them too
    assert len(json.loads((tmp_path / "work" / "vae_long_log.json").read_text())["log"]) == 2
    assert (
        long_clip_steps(PretrainConfig(backbone=TINY_WAN_TOY)) == 300
        and long_clip_steps(PretrainConfig()) == 0
    )
    assert set(json.loads((bundle / "toy_info.json").read_text())["vae"]["toy_length"]) >= {"round_trip_l1"}
    assert json.loads((bundle / "model_index.json").read_text())["_class_name"] == "WanPipeline"
    info = json.loads((bundle / "toy_info.json").read_text())
    assert info["config"]["backbone"]["architecture"] == "wan"
    assert info["max_sequence_length"] == MAX_SEQUENCE_LENGTH
    pipe = load_pipeline(bundle)
    assert isinstance(pipe, WanPipeline) and pipe.prompt_length == MAX_SEQUENCE_LENGTH
    # the VAE's normalisation is the statistics of the analytic latents at Wan's 4x temporal stride
    latents, _ = render_pretraining_set(6, cfg.seed, progress=False, temporal=4)
    assert latents.shape[2] == 7  # 25 frames -> 1 + 24 / 4 latent frames
    mean = latents.mean(dim=(0, 2, 3, 4))
    assert np.allclose(pipe.vae.config.latents_mean, mean.numpy(), atol=1e-3)  # fp16 storage
    # a Mochi stage mixed into the Wan work directory is refused, not assembled
    mochi = PretrainConfig(vae_steps=1, vae_batch=1, vae_crop=16)
    mochi.backbone.vae_encoder_channels = [32, 32, 32, 32]
    mochi.backbone.vae_decoder_channels = [32, 32, 32, 32]
    with pytest.raises(UserError, match="trained for mochi, wan"):
        pretrain(tmp_path / "mixed", mochi, ("vae",), work_dir=tmp_path / "work", progress=False)


def test_wan_bundle_samples_as_wanpipeline_at_the_toy_text_length(
    tiny_wan_bundle: Path, tmp_path: Path
) -> None:
    pipe = load_pipeline(tiny_wan_bundle)
    assert model_profile(pipe) is TOY and TOY.sampling_defaults == (32, 4.0, 8.0)
    assert TOY.default_geometry == (25, 64, 64)
    ours = generate_videos(pipe, [PROMPT], [3], Sampling(2, 4.0))[0]

    def direct(**kwargs) -> np.ndarray:
        generator = torch.Generator().manual_seed(3)
        args = dict(prompt=PROMPT, negative_prompt="", num_frames=25, height=64, width=64, output_type="np")
        return pipe(**args, num_inference_steps=2, guidance_scale=4.0, generator=generator, **kwargs).frames[
            0
        ]

    same = direct(max_sequence_length=MAX_SEQUENCE_LENGTH)
    assert ours.shape == (25, 64, 64, 3)
    assert np.array_equal(ours, (np.clip(same, 0, 1) * 255).round().astype(np.uint8))
    # at Wan's default 512 tokens the zero padding enters the (unmasked) cross-attention: another video
    longer = direct()
    assert not np.allclose(same, longer)

    cfg = GenerationConfig([PROMPT], tiny_wan_bundle, seeds=[3], out_dir=tmp_path / "out", steps=2)
    result = generate_to_folder(cfg, pipe=pipe)
    assert np.array_equal(result.frames[0], ours)
    settings = json.loads(result.sidecars[0].read_text())["settings"]
    assert settings["backbone"] == "wan2.1" and settings["scheduler"] == "UniPCMultistepScheduler"
    assert settings["prediction_type"] == "flow_prediction" and settings["fps"] == TOY.sampling_defaults[2]


def test_toy_bundles_by_name_or_path(tmp_path: Path) -> None:
    assert TOY.bundle_path("") == TOY.bundle_path("mochi") == TOY.default_bundle
    assert TOY.bundle_path("Wan") == TOY.bundles["wan"] != TOY.default_bundle
    assert TOY.bundle_path(str(tmp_path)) == tmp_path
    if not (TOY.bundles["wan"] / "model_index.json").is_file():
        with pytest.raises(UserError, match="toy pretrain --architecture wan"):
            load_pipeline(TOY.bundles["wan"])


def test_a_wan_release_directory_gets_wan_defaults(tiny_wan_bundle: Path, tmp_path: Path) -> None:
    release = tmp_path / "wan"
    shutil.copytree(tiny_wan_bundle, release)
    (release / "toy_info.json").unlink()  # no toy marker: treated as a Wan 2.1 release
    pipe = load_pipeline(release)
    assert not TOY.is_pipeline(pipe)
    profile = model_profile(pipe)
    assert profile.sampling_defaults == (50, 5.0, 16.0) and profile.default_geometry == (81, 480, 832)
    assert WAN.text_length(pipe) == 512
    assert (
        model_defaults(str(release)) == (50, 5.0)
        and model_defaults(str(tiny_wan_bundle)) == TOY.sampling_defaults[:2]
    )


def test_prepare_encodes_with_the_wan_vae_masks_and_prompt_encoding(
    tiny_wan_bundle: Path, tmp_path: Path
) -> None:
    src = tmp_path / "exemplars"
    write_exemplar_videos("high_fiving", 2, 0, src)
    report = prepare_folder(
        src,
        tmp_path / "cache",
        tiny_wan_bundle,
        PrepareConfig(num_frames=25, height=64, width=64),
        progress=False,
    )
    assert report.ok and len(report.prepared) == 2
    pipe = load_pipeline(tiny_wan_bundle)
    for sample in load_prepared(tmp_path / "cache"):
        frames, masks, _ = read_example(
            src, sample.name, PrepareConfig(num_frames=25, height=64, width=64), backbone="wan"
        )
        assert sample.latents.shape == (12, 7, 8, 8) and sample.masks.shape == (2, 7, 8, 8)
        video = torch.from_numpy(frames).float().div(127.5).sub(1).permute(3, 0, 1, 2)[None]
        with torch.no_grad():
            mu = pipe.vae.encode(video).latent_dist.mean[0]
        assert torch.allclose(sample.latents, (mu - 0.1) / 0.5, atol=1e-4)  # the pipeline's z * std + mean
        # latent masks by hand: any foreground pixel per 8x8 cell, frame 0 alone, then groups of 4 averaged
        cells = masks.reshape(2, 25, 8, 8, 8, 8).any(axis=(3, 5)).astype(np.float32)
        expected = np.concatenate([cells[:, :1], cells[:, 1:].reshape(2, 6, 4, 8, 8).mean(axis=2)], axis=1)
        assert np.allclose(sample.masks.numpy(), expected)
        # the training text states are what WanPipeline feeds the transformer when sampling
        caption = (src / "videos" / f"{sample.name}.txt").read_text().strip()
        with torch.no_grad():
            sampled, _ = pipe.encode_prompt(
                caption, do_classifier_free_guidance=False, max_sequence_length=MAX_SEQUENCE_LENGTH
            )
        trained = sample.prompt_embeds * sample.prompt_mask[:, None]
        assert torch.allclose(trained, sampled[0], atol=1e-5)
    with pytest.raises(UserError, match="4k\\+1"):
        prepare_folder(
            src,
            tmp_path / "bad",
            tiny_wan_bundle,
            PrepareConfig(num_frames=23, height=64, width=64),
            progress=False,
        )
    # a dropped caption becomes WanPipeline's encoded empty prompt, kept in the cache for training
    null = load_null_prompt(tmp_path / "cache")
    assert null is not None and all(
        torch.equal(a, b) for a, b in zip(null, null_prompt_for(pipe), strict=True)
    )
    with torch.no_grad():
        empty, _ = pipe.encode_prompt(
            "", do_classifier_free_guidance=False, max_sequence_length=MAX_SEQUENCE_LENGTH
        )
    assert torch.allclose(null[0] * null[1][:, None], empty[0], atol=1e-6)


def test_dropped_captions_become_the_samplers_unconditional_input(
    tiny_bundle: Path, tiny_wan_bundle: Path, tmp_path: Path
) -> None:
    assert null_prompt_for(load_pipeline(tiny_bundle)) is None  # Mochi's pipeline zeroes the empty prompt
    null = null_prompt_for(load_pipeline(tiny_wan_bundle))
    g = torch.Generator().manual_seed(0)
    samples = [
        TrainingSample(
            latents=torch.randn(12, 7, 8, 8, generator=g),
            prompt_embeds=torch.randn(MAX_SEQUENCE_LENGTH, 32, generator=g),
            prompt_mask=torch.arange(MAX_SEQUENCE_LENGTH) < 5 + i,
        )
        for i in range(3)
    ]
    kept = collate(samples, [0, 1, 2], torch.device("cpu"), g, caption_dropout=0.0, null_prompt=null)
    assert torch.equal(kept["prompt_embeds"][2], samples[2].prompt_embeds)
    dropped = collate(samples, [0, 1, 2], torch.device("cpu"), g, caption_dropout=1.0, null_prompt=null)
    for i in range(3):
        assert torch.equal(dropped["prompt_embeds"][i], null[0]) and torch.equal(
            dropped["prompt_mask"][i], null[1]
        )
    zeroed = collate(samples, [0, 1, 2], torch.device("cpu"), g, caption_dropout=1.0)
    assert not zeroed["prompt_embeds"].any() and not zeroed["prompt_mask"].any()
    # a Wan cache keeps its encoded null prompt; a Mochi prepare into it is refused (another model), the
    # Wan samples and null prompt stay, and a Mochi cache has no null prompt (Mochi zeroes dropped captions)
    src, cache = tmp_path / "exemplars", tmp_path / "cache"
    write_exemplar_videos("high_fiving", 1, 0, src)
    settings = PrepareConfig(num_frames=25, height=64, width=64, fps=8)
    prepare_folder(src, cache, tiny_wan_bundle, settings, progress=False)
    assert load_null_prompt(cache) is not None
    with pytest.raises(UserError, match="other settings"):
        prepare_folder(src, cache, tiny_bundle, settings, progress=False)
    assert load_null_prompt(cache) is not None
    prepare_folder(src, tmp_path / "mochi", tiny_bundle, settings, progress=False)
    assert load_null_prompt(tmp_path / "mochi") is None


@pytest.mark.slow
def test_train_and_generate_commands_on_a_wan_bundle(tiny_wan_bundle: Path, tmp_path: Path) -> None:
    src = tmp_path / "exemplars"
    write_exemplar_videos("high_fiving", 2, 1, src)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "dreamrelation.cli", *args], capture_output=True, text=True, check=False
        )

    run = tmp_path / "run"
    done = cli(
        "train", str(src), "-m", str(tiny_wan_bundle), "optim.steps=3", "optim.lr=0.01", "--out", str(run)
    )
    assert done.returncode == 0, done.stderr[-2000:]
    adapters = run / "adapters"
    assert {p.stem for p in adapters.glob("*.safetensors")} >= {"relation", "subject1", "subject2", "output"}

    # the files load through WanPipeline's own LoRA loader with the trained values
    pipe = WanPipeline.from_pretrained(tiny_wan_bundle)
    pipe.load_lora_weights(str(adapters), weight_name="relation.safetensors", adapter_name="relation")
    loaded = get_peft_model_state_dict(pipe.transformer, adapter_name="relation")
    saved = {
        k.removeprefix("transformer."): v
        for k, v in load_file(str(adapters / "relation.safetensors")).items()
    }
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert any(k.startswith("blocks.0.attn1.to_q") for k in saved) and any("attn2.to_k" in k for k in saved)

    # genmo's export is Mochi's layout: a Wan run gets one line saying so, exit 2 (ComfyUI's Wan layout works)
    done = cli("export", str(adapters), str(tmp_path / "x.safetensors"), "--format", "genmo")
    assert done.returncode == 2 and "Wan adapters" in done.stderr and "Traceback" not in done.stderr

    plain, tuned = tmp_path / "plain", tmp_path / "tuned"
    for out, extra in ((plain, []), (tuned, ["--adapters", str(adapters)])):
        done = cli("generate", PROMPT, "-m", str(tiny_wan_bundle), "--steps", "2", "--out", str(out), *extra)
        assert done.returncode == 0, done.stderr[-2000:]
    sidecar = json.loads(next(tuned.glob("000_*.json")).read_text())
    assert [a["role"] for a in sidecar["adapters"]] == ["relation", "output"]
    assert sidecar["settings"]["backbone"] == "wan2.1"


def test_cross_attention_probs_reproduce_wan_attn2() -> None:
    from diffusers import WanTransformer3DModel
    from tiny import TINY_WAN

    from dreamrelation.evaluation.analysis import cross_attention_probs

    torch.manual_seed(0)
    attn = WanTransformer3DModel(**TINY_WAN).blocks[1].attn2
    dim = TINY_WAN["num_attention_heads"] * TINY_WAN["attention_head_dim"]
    hidden, text = torch.randn(1, 24, dim), torch.randn(1, 7, dim)
    probs = cross_attention_probs(attn, hidden, text)
    assert probs.shape == (2, 24, 7) and torch.allclose(probs.sum(-1), torch.ones(2, 24), atol=1e-6)
    values = attn.to_v(text)[0].unflatten(-1, (2, -1))  # (L, heads, d)
    mixed = torch.einsum("hnl,lhd->nhd", probs, values).flatten(1)
    with torch.no_grad():
        assert torch.allclose(attn.to_out[0](mixed)[None], attn(hidden, text), atol=1e-5)


def test_analysis_runs_on_a_wan_model(tiny_wan_bundle: Path, tmp_path: Path) -> None:
    from dreamrelation.evaluation.analysis import AnalysisConfig, run_analysis, text_to_video_attention

    pipe = load_pipeline(tiny_wan_bundle)
    latents = torch.randn(12, 7, 8, 8, generator=torch.Generator().manual_seed(0))
    att = text_to_video_attention(pipe, PROMPT, ["circle", "square", "zebra"], latents, 500.0)
    assert att.missing == ["zebra"] and set(att.maps) == {"circle", "square"}
    for m in att.maps.values():  # per visual token: the share of its cross-attention on the word
        assert m.shape == (7, 4, 4) and (m >= 0).all() and (m <= 1 + 1e-6).all() and m.sum() > 0
    summary = run_analysis(
        pipe, tmp_path / "analysis", [PROMPT], AnalysisConfig(words=["circle"], rank=8, steps=2, sigma=0.2)
    )
    assert summary["timestep"] == pytest.approx(200.0)  # Wan's timestep is sigma * 1000 (Mochi's 800)
    assert summary["inputs"][0]["token_grid"] == [7, 4, 4]
    assert "visual" in summary["base_qkv_similarity"] and "text" not in summary["base_qkv_similarity"]
    for name in ("qkv_features", "base_qkv_similarity", "attention_00"):
        assert (tmp_path / "analysis" / f"{name}.png").is_file()
