"""Toy pretraining: exact resume from checkpoints, the jointly trained text encoder, a reused VAE."""

import json
from pathlib import Path

import pytest
import torch
from tiny import TINY_MOCHI_TOY, TINY_WAN_TOY

from dreamrelation.backbones.loading import load_pipeline
from dreamrelation.backbones.registry import get_backbone
from dreamrelation.errors import UserError
from dreamrelation.toy.backbone import build_transformer, load_deepened, tokenize_captions
from dreamrelation.toy.pretrain import (
    CaptionSet,
    PretrainConfig,
    adopt_vae,
    build_text_encoder,
    build_tokenizer,
    pretrain,
    snapshot_bundle,
    toy_words,
    train_transformer,
)


def _inputs(arch: str = "mochi"):
    tokenizer = build_tokenizer(toy_words())
    captions = ["A red star is chasing a blue circle.", "A green square is passing a white cross."] * 3
    ids, masks = tokenize_captions(tokenizer, captions)
    null_ids, null_mask = tokenize_captions(tokenizer, [""])
    caption_set = CaptionSet(ids, masks, null_ids[0], null_mask[0], zero_dropped=arch != "wan")
    latents = torch.randn(6, 12, 2, 4, 4, generator=torch.Generator().manual_seed(3))
    return tokenizer, caption_set, latents


def _run(cfg: PretrainConfig, work: Path | None, steps: int):
    tokenizer, caption_set, latents = _inputs()
    text_encoder = build_text_encoder(len(tokenizer), cfg.backbone, seed=cfg.seed)
    cfg.transformer_steps = steps
    transformer, _, log = train_transformer(cfg, latents, caption_set, text_encoder, False, work)
    return transformer, text_encoder, log


def test_an_interrupted_run_resumes_exactly(tmp_path: Path) -> None:
    def config() -> PretrainConfig:
        return PretrainConfig(
            transformer_batch=2,
            checkpoint_every=3,
            caption_dropout=0.5,
            train_text_encoder=True,
            ema_decay=0.9,  # the weight average is part of the state a resumed run must continue
            backbone=TINY_MOCHI_TOY,
        )

    whole_tr, whole_te, whole_log = _run(config(), None, 8)
    # "interrupted" after 6 steps: the last checkpoint (step 6) is what a killed run leaves behind
    work = tmp_path / "work"
    work.mkdir()
    cfg = config()
    cfg.transformer_steps = 8
    tokenizer, caption_set, latents = _inputs()
    text_encoder = build_text_encoder(len(tokenizer), cfg.backbone, seed=cfg.seed)
    train_transformer(cfg, latents, caption_set, text_encoder, False, work)
    state = torch.load(work / "transformer_checkpoint.pt", weights_only=False)
    assert state["step"] == 6 and len(state["log"]) == 6
    resumed_tr, resumed_te, resumed_log = _run(config(), work, 8)  # starts at step 6
    assert resumed_log == whole_log
    for a, b in ((whole_tr, resumed_tr), (whole_te, resumed_te)):
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(p, q), name
    # a setting added to the code later matches at its default, so an upgrade does not strand a run
    state = torch.load(work / "transformer_checkpoint.pt", weights_only=False)
    del state["config"]["unknown_word_prob"], state["config"]["backbone"]["text_local_attention"]
    torch.save(state, work / "transformer_checkpoint.pt")
    assert _run(config(), work, 8)[2] == whole_log
    # other settings refuse the checkpoint instead of silently mixing two runs
    other = config()
    other.transformer_lr = 1e-3
    with pytest.raises(UserError, match="other pretraining settings"):
        _run(other, work, 8)


def test_the_bundle_holds_the_weight_average_when_asked() -> None:
    def weights(ema_decay: float, steps: int) -> list[torch.Tensor]:
        cfg = PretrainConfig(transformer_batch=2, ema_decay=ema_decay, backbone=TINY_MOCHI_TOY)
        return [p.detach().clone() for p in _run(cfg, None, steps)[0].parameters()]

    # the average does not steer training: the raw weights after k steps are those of a run without it
    raw = [weights(0.0, k) for k in (1, 2, 3)]
    # by hand, with EMAModel's warm-up: decay min(0.5, (1 + s) / (10 + s)) at its s-th update, s = k - 1
    expected = raw[0]
    for k in (2, 3):
        decay = min(0.5, k / (9 + k))
        expected = [decay * e + (1 - decay) * w for e, w in zip(expected, raw[k - 1], strict=True)]
    averaged = weights(0.5, 3)
    assert all(torch.allclose(a, e, atol=1e-6) for a, e in zip(averaged, expected, strict=True))
    assert not all(torch.allclose(a, w) for a, w in zip(averaged, raw[2], strict=True))


def test_the_text_encoder_trains_only_when_asked() -> None:
    tokenizer, _, _ = _inputs()
    initial = build_text_encoder(len(tokenizer), TINY_MOCHI_TOY, seed=0).state_dict()
    for trained in (False, True):
        cfg = PretrainConfig(transformer_batch=2, train_text_encoder=trained, backbone=TINY_MOCHI_TOY)
        _, text_encoder, _ = _run(cfg, None, 3)
        changed = [not torch.equal(initial[k], v) for k, v in text_encoder.state_dict().items()]
        assert any(changed) == trained
        assert not any(p.requires_grad for p in text_encoder.parameters())  # frozen afterwards


def test_dropped_captions_are_the_pipelines_unconditional_input() -> None:
    tokenizer, mochi, _ = _inputs("mochi")
    _, wan, _ = _inputs("wan")
    encoder = build_text_encoder(len(tokenizer), TINY_MOCHI_TOY, seed=0)
    idx, drop = torch.tensor([0, 1]), torch.tensor([True, False])
    emb, mask = mochi.encode(encoder, idx, drop)
    assert emb[0].abs().sum() == 0 and mask[0].sum() == 0 and mask[1].sum() > 0
    emb, mask = wan.encode(encoder, idx, drop)
    null = encoder(wan.null_ids[None], attention_mask=wan.null_mask[None])[0][0]
    assert torch.allclose(emb[0], null) and torch.equal(mask[0], wan.null_mask)


def test_a_bundle_can_reuse_another_bundles_vae(tmp_path: Path, tiny_bundle: Path) -> None:
    work = tmp_path / "work"
    adopt_vae(tiny_bundle, work)
    cfg = PretrainConfig(num_videos=4, transformer_steps=3, transformer_batch=2, backbone=TINY_MOCHI_TOY)
    cfg.train_text_encoder, cfg.checkpoint_every, cfg.ema_decay = True, 1, 0.9
    bundle = pretrain(tmp_path / "bundle", cfg, ("transformer",), work_dir=work, progress=False)
    assert (bundle / "vae" / "config.json").is_file()
    trained = json.loads((work / "transformer_stats.json").read_text())["text_encoder_trained"]
    assert trained is True
    # a snapshot of the checkpoint (step 2 of 3) is a loadable bundle holding the checkpoint's weight average
    snap = snapshot_bundle(tmp_path / "snap", cfg, work)
    state = torch.load(work / "transformer_checkpoint.pt", weights_only=False)
    pipe = load_pipeline(snap)
    n_transformer = len(list(pipe.transformer.parameters()))
    for (name, value), average in zip(
        pipe.transformer.named_parameters(), state["ema"]["shadow_params"][:n_transformer], strict=True
    ):
        assert torch.allclose(value, average.half().float()), name
    raw = state["models"][0]
    assert not all(torch.allclose(v, raw[n].half().float()) for n, v in pipe.transformer.named_parameters())
    assert json.loads((snap / "toy_info.json").read_text())["transformer"]["steps"] == 2
    with pytest.raises(UserError, match="not a toy bundle"):
        adopt_vae(tmp_path / "nowhere", work)


def test_made_up_relation_words_stay_outside_the_vocabulary() -> None:
    import numpy as np

    from dreamrelation.toy import world
    from dreamrelation.toy.pretrain import with_made_up_words

    tokenizer = build_tokenizer(toy_words())
    word_pieces = {p for p, _ in tokenizer.get_vocab().items() if p.startswith("\u2581") and len(p) > 2}
    rng = np.random.default_rng(0)
    for _ in range(50):
        word = world.made_up_word(rng)
        assert word not in world.caption_words() and "\u2581" + word not in word_pieces
    captions = ["A red star is moving away from a blue circle.", "A person is chasing a person."] * 50
    swapped = with_made_up_words(captions, 0.3, seed=0)
    changed = [a != b for a, b in zip(captions, swapped, strict=True)]
    assert 15 <= sum(changed) <= 45 and with_made_up_words(captions, 0.3, seed=0) == swapped
    for before, after, was in zip(captions, swapped, changed, strict=True):
        if was:  # the subjects stay, the relation phrase is gone
            assert (
                after.startswith(before.split(" is ")[0] + " is ")
                and after.split()[-2:] == before.split()[-2:]
            )
            assert not any(f" {r.phrase} " in after for r in world.RELATIONS.values())
    assert with_made_up_words(captions, 0.0, seed=0) == captions
    with pytest.raises(UserError, match="no toy relation phrase"):
        world.with_relation_word("A red star.", "zorbing")


@pytest.mark.parametrize("architecture", ["mochi", "wan"])
def test_a_local_attention_text_encoder_binds_colours_to_shapes(architecture: str) -> None:
    from types import SimpleNamespace

    from dreamrelation.toy.backbone import ToyBackboneConfig
    from dreamrelation.toy.check import caption_binding

    tokenizer = build_tokenizer(toy_words())
    captions = [
        "A red star is chasing a blue circle.",
        "A red square is chasing a blue circle.",
        "A red star is chasing a blue square.",
    ]
    ids, mask = tokenize_captions(tokenizer, captions)
    binding, own_shape = {}, {}
    for local in (False, True):
        cfg = ToyBackboneConfig(architecture=architecture, text_local_attention=local)
        encoder = build_text_encoder(len(tokenizer), cfg)
        binding[local] = caption_binding(SimpleNamespace(tokenizer=tokenizer, text_encoder=encoder))
        red = encoder(ids, attention_mask=mask)[0][:, 1]
        # how much more "red" moves when its own shape changes than when the other subject's shape does
        own_shape[local] = ((red[0] - red[1]).norm() / (red[0] - red[2]).norm()).item()
    # a random T5/UMT5 averages over the caption; heads on the neighbouring words carry the shape to its colour
    assert binding[False] > 0.99 and binding[True] < 0.9, binding
    assert own_shape[False] < 2 and own_shape[True] > 3, own_shape


def test_a_fine_tune_starts_from_a_bundles_weights(tiny_bundle: Path) -> None:
    from dataclasses import replace

    pipe = load_pipeline(tiny_bundle)
    # seed 1: a fresh model differs from the bundle's (made with seed 0)
    cfg = PretrainConfig(seed=1, transformer_batch=2, backbone=TINY_MOCHI_TOY, init_from=str(tiny_bundle))
    transformer, text_encoder, log = _run(cfg, None, 0)
    assert log == []
    for mine, theirs in ((transformer, pipe.transformer), (text_encoder, pipe.text_encoder)):
        for (name, p), q in zip(mine.state_dict().items(), theirs.state_dict().values(), strict=True):
            assert torch.equal(p, q.float()), name
    fresh, _, _ = _run(replace(cfg, init_from=None), None, 0)
    assert not all(
        torch.equal(p, q) for p, q in zip(fresh.parameters(), transformer.parameters(), strict=True)
    )
    other = replace(
        cfg, backbone=replace(TINY_MOCHI_TOY, attention_head_dim=TINY_MOCHI_TOY.attention_head_dim * 2)
    )
    with pytest.raises(UserError, match="not the backbone.* architecture"):
        _run(other, None, 0)
    with pytest.raises(UserError, match="no transformer/ there"):
        _run(replace(cfg, init_from=str(tiny_bundle.parent)), None, 0)


@pytest.mark.parametrize("toy", [TINY_MOCHI_TOY, TINY_WAN_TOY], ids=["mochi", "wan"])
def test_a_deeper_transformer_grows_from_a_shallower_one_unchanged(toy) -> None:
    from dataclasses import replace

    shallow = build_transformer(toy, seed=0).eval()
    deep = build_transformer(replace(toy, num_layers=toy.num_layers + 2), seed=1)
    new = load_deepened(deep, shallow.state_dict(), toy.num_layers)
    assert new == [1, 2]  # inserted before the last block, which stays last
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, toy.latent_channels, 2, 4, 4, generator=gen)
    emb, mask = torch.randn(2, 6, toy.text_dim, generator=gen), torch.ones(2, 6, dtype=torch.long)
    t = torch.tensor([300.0, 900.0])
    backbone = get_backbone(toy.architecture)
    with torch.no_grad():
        before = backbone.forward(shallow, x, t, emb, mask)
        after = backbone.forward(deep.eval(), x, t, emb, mask)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)  # the new blocks are the identity
    # ... and trainable: the weights that silence them get a gradient
    deep.train()
    (backbone.forward(deep, x, t, emb, mask) ** 2).mean().backward()
    block = backbone.block_list(deep)[1]
    silencer = block.norm1.linear if toy.architecture == "mochi" else block.ffn.net[-1]
    assert silencer.weight.grad is not None and silencer.weight.grad.abs().sum() > 0


def test_init_from_a_shallower_bundle_grows_it(tiny_bundle: Path) -> None:
    from dataclasses import replace

    deeper = replace(TINY_MOCHI_TOY, num_layers=TINY_MOCHI_TOY.num_layers + 1)
    cfg = PretrainConfig(seed=1, transformer_batch=2, backbone=deeper, init_from=str(tiny_bundle))
    transformer, _, _ = _run(cfg, None, 0)
    theirs = load_pipeline(tiny_bundle).transformer.state_dict()
    mine = transformer.state_dict()
    last = TINY_MOCHI_TOY.num_layers - 1
    for name, value in theirs.items():
        moved = name.replace(f"transformer_blocks.{last}.", f"transformer_blocks.{last + 1}.")
        assert torch.equal(mine[moved], value.float()), name
