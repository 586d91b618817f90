"""Registry of supported video backbones: everything DreamRelation needs to know about one architecture.

A :class:`Backbone` names the attention projections each adapter stream targets, the VAE's compression
(latent mask geometry), how to call the transformer, the flow-matching convention its sampler expects,
the VAE latent normalisation and the diffusers classes to load it. Adding a third backbone is one new
entry passed to :func:`register`.

The toy world's models (:data:`TOY`: small Mochi and Wan stacks pretrained by ``dreamrelation toy
pretrain``) are registered here too, with their bundle paths, video geometry and sampling defaults: a toy
bundle is a diffusers directory of a registered architecture, so :func:`get_backbone` gives its
architecture and :func:`model_profile` the defaults it is used with (toy, else the architecture's).

Stream mapping per backbone (projection kinds q / k / v / out):

* **Mochi 1** (asymmetric MM-DiT, joint attention ``attn1``): visual stream ``attn1.to_q/to_k/to_v`` and
  ``attn1.to_out.0``; text stream ``attn1.add_q_proj/add_k_proj/add_v_proj`` and ``attn1.to_add_out``.
* **Wan 2.1** (DiT with self-attention ``attn1`` over video tokens and cross-attention ``attn2`` to T5
  tokens): the visual stream is the self-attention, ``attn1.to_q/to_k`` (relation), ``attn1.to_v``
  (subjects), ``attn1.to_out.0`` (output LoRA). Text never acts as a query and has no output projection
  of its own, so the text stream is only ``attn2.to_k`` (kind k: which text tokens the video attends to,
  with the relation LoRA) and ``attn2.to_v`` (kind v: the text content written into the video, with the
  subject LoRAs); kinds q and out have no text module on Wan. Drop the text stream with
  ``adapter.streams=[visual]``.
* **Wan 2.2 TI2V-5B** (:data:`WAN22`): the same classes and the same stream mapping as Wan 2.1, with the
  Wan 2.2 VAE (16x16 spatial, 4x temporal compression, 48 latent channels) and per-token timesteps
  (``expand_timesteps``): its pipelines (``WanPipeline`` for text, ``WanImageToVideoPipeline`` for an image)
  keep the first latent frame clean at timestep 0 when conditioning on an image. The classes being shared,
  it is told apart from Wan 2.1 by its config (:func:`is_wan22_config`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dreamrelation.backbones.genmo import is_genmo_dir
from dreamrelation.core.flow import MOCHI_FLOW, FlowConvention

#: ``call(transformer, hidden_states, timestep, prompt_embeds, prompt_mask) -> prediction``
ForwardCall = Callable[
    [torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor
]
#: ``encode(pipe, prompts) -> (embeds (N, L, D), mask (N, L))`` at the length the transformer trains with
PromptEncoder = Callable[[Any, Sequence[str]], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Backbone:
    """One video transformer architecture as DreamRelation sees it (see the module docstring)."""

    name: str
    transformer_class: str
    pipeline_class: str
    vae_class: str
    blocks: str  # attribute of the transformer holding its ``nn.ModuleList`` of blocks
    projections: Mapping[str, Mapping[str, str | None]]  # stream -> kind -> module path inside a block
    spatial_compression: int
    temporal_compression: int  # the VAE needs ``temporal * k + 1`` frames
    flow: FlowConvention
    call: ForwardCall
    prompt_encoder: PromptEncoder
    vae_channels_key: str = "latent_channels"
    default_geometry: tuple[int, int, int] = (61, 480, 848)  # (frames, height, width) of the paper setup
    sampling_defaults: tuple[int, float, float] = (64, 6.0, 30.0)  # (steps, CFG scale, fps) of its release
    empty_prompt_zeroed: bool = True  # the pipeline zeroes the empty negative prompt (else: encodes "")
    default_text_length: int = 256  # the pipeline's max_sequence_length when the transformer names none
    aliases: tuple[str, ...] = field(default_factory=tuple)
    min_sampling_steps: int = 1  # Mochi's linear-quadratic sigma schedule needs 2
    image_pipeline_class: str | None = None  # the pipeline that conditions on a first frame (None: text only)
    detect: Callable[[Mapping[str, Any]], bool] | None = None  # tells it from entries sharing its classes
    patch: int = (
        2  # spatial patch size of the transformer: heights and widths are multiples of spatial * patch
    )

    @property
    def takes_image(self) -> bool:
        """Whether the backbone generates from a first frame (image-to-video)."""
        return self.image_pipeline_class is not None

    @property
    def class_names(self) -> tuple[str, ...]:
        """Every diffusers class name that belongs to the backbone."""
        names = (self.transformer_class, self.pipeline_class, self.vae_class, self.image_pipeline_class)
        return tuple(n for n in names if n)

    # --------------------------------------------------------------------------------------- adapters

    def module_names(self, kinds: Sequence[str], streams: Sequence[str]) -> list[str]:
        """Module paths (inside a block) of ``kinds`` on ``streams``; kinds absent on a stream are skipped."""
        bad = [s for s in streams if s not in self.projections]
        bad += [k for k in kinds if not any(k in self.projections[s] for s in self.projections)]
        if bad or not kinds or not streams:
            raise ValueError(f"bad projection kinds {list(kinds)} / streams {list(streams)}: {bad}")
        return [m for s in streams for k in kinds if (m := self.projections[s].get(k)) is not None]

    def target_regex(self, kinds: Sequence[str], streams: Sequence[str]) -> str:
        """Anchored regex matching the projections of ``kinds`` on ``streams`` in every block.

        PEFT applies a string ``target_modules`` with ``re.fullmatch``; the anchors keep it exact anywhere.
        When every module sits in one attention layer the regex reads ``^blocks\\.\\d+\\.attn1\\.(to_q|to_k)$``.
        """
        names = self.module_names(kinds, streams)
        if not names:
            raise ValueError(f"{self.name}: no module for kinds {list(kinds)} on streams {list(streams)}")
        parents = {n.split(".", 1)[0] for n in names}
        prefix = rf"^{re.escape(self.blocks)}\.\d+\."
        if len(parents) == 1 and all("." in n for n in names):
            parent = parents.pop()
            tails = [re.escape(n.split(".", 1)[1]) for n in names]
            return prefix + re.escape(parent) + r"\.(" + "|".join(tails) + r")$"
        return prefix + "(" + "|".join(re.escape(n) for n in names) + r")$"

    # --------------------------------------------------------------------------------------- geometry

    @property
    def clip_fps(self) -> float:
        """The frame rate `prepare` samples source videos at: the release's."""
        return self.sampling_defaults[2]

    def default_sampler(self, pipe: Any = None) -> str:
        """The sampler a release model generates with by default: its release's (``release``)."""
        return "release"

    @property
    def size_multiple(self) -> int:
        """Heights and widths must be multiples of this (VAE compression times the patch size)."""
        return self.spatial_compression * self.patch

    @property
    def mask_geometry(self) -> tuple[int, int]:
        """``(spatial, temporal)`` compression, the arguments of :func:`~dreamrelation.data.latent_masks.latent_masks`."""
        return self.spatial_compression, self.temporal_compression

    def latent_shape(self, channels: int, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """Latent ``(C, F, h, w)`` of a ``frames x height x width`` video."""
        if frames < 1 or (frames - 1) % self.temporal_compression:
            raise ValueError(f"{self.name} needs {self.temporal_compression}k+1 frames, got {frames}")
        s = self.spatial_compression
        return channels, (frames - 1) // self.temporal_compression + 1, height // s, width // s

    # --------------------------------------------------------------------------------------- model

    def forward(
        self,
        transformer: torch.nn.Module,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        prompt_embeds: torch.Tensor,
        prompt_mask: torch.Tensor,
    ) -> torch.Tensor:
        """The transformer's prediction for noisy latents ``(B, C, F, h, w)`` at ``timestep`` ``(B,)``."""
        return self.call(transformer, hidden_states, timestep, prompt_embeds, prompt_mask)

    def text_length(self, pipe: Any) -> int:
        """Text tokens the transformer reads: its config's ``max_sequence_length``, else the pipeline's
        ``prompt_length`` (set from a toy bundle's ``toy_info.json``), else the backbone's default."""
        return _text_length(pipe, self.default_text_length)

    @torch.no_grad()
    def encode_prompts(self, pipe: Any, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Text-encoder states ``(N, L, D)`` (fp32, CPU) and masks ``(N, L)`` as the pipeline makes them."""
        embeds, mask = self.prompt_encoder(pipe, list(prompts))
        return embeds.float().cpu(), mask.cpu()

    def block_list(self, transformer: torch.nn.Module) -> torch.nn.ModuleList:
        """The transformer's blocks, in forward order."""
        return getattr(_unwrap(transformer), self.blocks)

    def latent_normalisation(self, vae: Any) -> tuple[torch.Tensor, torch.Tensor, float]:
        """``(mean, std, scaling)`` with ``latent = (mu - mean) * scaling / std``, shaped ``(C, 1, 1, 1)``.

        The inverse of what the backbone's pipeline does before decoding (Mochi:
        ``z * std / scaling_factor + mean``; Wan: ``z * std + mean``, no scaling factor).
        """
        config = vae.config
        channels = int(config[self.vae_channels_key])
        mean = torch.tensor(config.get("latents_mean") or [0.0] * channels, dtype=torch.float32)
        std = torch.tensor(config.get("latents_std") or [1.0] * channels, dtype=torch.float32)
        if mean.numel() != channels or std.numel() != channels:
            raise ValueError(
                f"VAE config: {mean.numel()} latents_mean / {std.numel()} latents_std for {channels} channels"
            )
        scaling = config.get("scaling_factor", None)
        return mean.view(-1, 1, 1, 1), std.view(-1, 1, 1, 1), float(1.0 if scaling is None else scaling)

    def classes(self) -> tuple[type, type, type]:
        """The diffusers ``(transformer, pipeline, vae)`` classes."""
        import diffusers

        return tuple(
            getattr(diffusers, c) for c in (self.transformer_class, self.pipeline_class, self.vae_class)
        )


# ----------------------------------------------------------------------------------------------- calls


def _mochi_call(
    transformer: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, emb: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    return transformer(
        hidden_states=x, encoder_hidden_states=emb, timestep=t, encoder_attention_mask=mask, return_dict=False
    )[0]


def _wan_call(
    transformer: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, emb: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    # Wan takes no attention mask: WanPipeline zero-pads the T5 states after each prompt's last token
    emb = emb * mask.unsqueeze(-1).to(emb.dtype)
    return transformer(hidden_states=x, timestep=t, encoder_hidden_states=emb, return_dict=False)[0]


def token_timesteps(transformer: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Per-token timesteps ``(B, F/pt * h/ph * w/pw)`` from ``t`` per sample ``(B,)`` or per latent frame
    ``(B, F)``, in the transformer's patch order, as Wan 2.2's pipelines build them (``expand_timesteps``)."""
    b, _, f, h, w = x.shape
    pt, ph, pw = _unwrap(transformer).config.patch_size
    t = t.reshape(b, -1)
    if t.shape[1] not in (1, f):
        raise ValueError(f"timesteps {tuple(t.shape)} for {f} latent frames")
    per_frame = t.expand(b, f)[:, ::pt]
    return per_frame[:, :, None].expand(-1, -1, (h // ph) * (w // pw)).reshape(b, -1)


def _wan22_call(
    transformer: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, emb: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    return _wan_call(transformer, x, token_timesteps(transformer, x, t), emb, mask)


def _text_length(pipe: Any, default: int | None = None) -> int:
    """The transformer's text length, else ``pipe.prompt_length`` (a pipeline loaded without transformer)."""
    transformer = getattr(pipe, "transformer", None)
    length = None if transformer is None else transformer.config.get("max_sequence_length")
    return int(length or getattr(pipe, "prompt_length", None) or default or 256)


def _mochi_prompts(pipe: Any, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    length = MOCHI.text_length(pipe)
    embeds, mask, _, _ = pipe.encode_prompt(
        prompt=list(prompts), do_classifier_free_guidance=False, max_sequence_length=length
    )
    return embeds, mask


WAN_TEXT_LENGTH = 512  # WanPipeline's default max_sequence_length


def _wan_prompts(pipe: Any, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    length = WAN.text_length(pipe)
    embeds, _ = pipe.encode_prompt(
        prompt=list(prompts), do_classifier_free_guidance=False, max_sequence_length=length
    )
    tokens = pipe.tokenizer(
        list(prompts), padding="max_length", max_length=length, truncation=True, add_special_tokens=True
    )
    return embeds, torch.as_tensor(tokens["attention_mask"]).bool()


# ----------------------------------------------------------------------------------------------- registry

# One entry per architecture: the entries share their shape by design (duplicates lists them as a pair).
MOCHI = Backbone(
    name="mochi",
    min_sampling_steps=2,
    transformer_class="MochiTransformer3DModel",
    pipeline_class="MochiPipeline",
    vae_class="AutoencoderKLMochi",
    blocks="transformer_blocks",
    projections={
        "visual": {"q": "attn1.to_q", "k": "attn1.to_k", "v": "attn1.to_v", "out": "attn1.to_out.0"},
        "text": {
            "q": "attn1.add_q_proj",
            "k": "attn1.add_k_proj",
            "v": "attn1.add_v_proj",
            "out": "attn1.to_add_out",
        },
    },
    spatial_compression=8,
    temporal_compression=6,
    flow=MOCHI_FLOW,
    call=_mochi_call,
    prompt_encoder=_mochi_prompts,
    default_geometry=(61, 480, 848),
    sampling_defaults=(64, 6.0, 30.0),  # the paper's 64 Euler steps, CFG 6.0; Mochi renders 30 fps
    default_text_length=256,
    aliases=("mochi1", "mochi-1"),
)

WAN = Backbone(
    name="wan2.1",
    transformer_class="WanTransformer3DModel",
    pipeline_class="WanPipeline",
    vae_class="AutoencoderKLWan",
    blocks="blocks",
    projections={
        "visual": {"q": "attn1.to_q", "k": "attn1.to_k", "v": "attn1.to_v", "out": "attn1.to_out.0"},
        "text": {"q": None, "k": "attn2.to_k", "v": "attn2.to_v", "out": None},
    },
    spatial_compression=8,
    temporal_compression=4,
    # UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True): t = sigma * 1000,
    # x0 = x - sigma * v, so v = eps - z
    flow=FlowConvention(timestep_is_noise=True, velocity_to_data=False),
    call=_wan_call,
    prompt_encoder=_wan_prompts,
    vae_channels_key="z_dim",
    default_geometry=(81, 480, 832),
    sampling_defaults=(50, 5.0, 16.0),  # WanPipeline's 50 UniPC steps, CFG 5.0; Wan 2.1 renders 16 fps
    empty_prompt_zeroed=False,  # WanPipeline encodes the empty negative prompt
    default_text_length=WAN_TEXT_LENGTH,
    aliases=("wan", "wan21", "wan-2.1"),
)

WAN22_CHANNELS = 48  # latent channels of the Wan 2.2 VAE (z_dim); Wan 2.1's has 16


def is_wan22_config(config: Mapping[str, Any]) -> bool:
    """Whether a Wan config (pipeline / ``model_index.json``, VAE or transformer) is Wan 2.2 TI2V-5B's: a
    pipeline with ``expand_timesteps``, a VAE with 48 latent channels, a transformer reading 48 channels."""
    if "expand_timesteps" in config:
        return bool(config["expand_timesteps"])
    if "z_dim" in config:
        return config["z_dim"] == WAN22_CHANNELS
    return config.get("in_channels") == WAN22_CHANNELS == config.get("out_channels")


WAN22 = dataclasses.replace(
    WAN,
    name="wan2.2-ti2v",
    spatial_compression=16,
    call=_wan22_call,
    # Wan 2.2's release: 121 frames at 704 x 1280, 24 fps; 50 UniPC steps (flow shift 5), CFG 5.0
    default_geometry=(121, 704, 1280),
    sampling_defaults=(50, 5.0, 24.0),
    aliases=("wan22", "wan2.2-ti2v-5b", "ti2v-5b"),
    image_pipeline_class="WanImageToVideoPipeline",
    detect=is_wan22_config,
)

BACKBONES: dict[str, Backbone] = {}


def register(backbone: Backbone) -> Backbone:
    """Add ``backbone`` to the registry (by name and aliases); returns it."""
    for key in (backbone.name, *backbone.aliases):
        BACKBONES[key.lower()] = backbone
    return backbone


register(MOCHI)
register(WAN)
register(WAN22)


def _unwrap(module: Any) -> Any:
    for attr in ("_orig_mod", "module"):  # torch.compile / DDP wrappers
        inner = getattr(module, attr, None)
        if isinstance(inner, torch.nn.Module):
            return _unwrap(inner)
    return module


def _unique() -> list[Backbone]:
    return list({b.name: b for b in BACKBONES.values()}.values())


def _by_class(name: str, config: Mapping[str, Any]) -> Backbone | None:
    """The entry owning class ``name``: among entries sharing it, the one whose ``detect`` accepts
    ``config``, else the one without ``detect``."""
    owners = [b for b in _unique() if name in b.class_names]
    detected = [b for b in owners if b.detect is not None and b.detect(config)]
    return next(iter(detected or [b for b in owners if b.detect is None]), None)


def get_backbone(obj: Any) -> Backbone:
    """The backbone of a name, a transformer, a VAE or a pipeline (by class, subclasses included).

    A pipeline is matched by its own class, else by its transformer's or VAE's.
    """
    if isinstance(obj, Backbone):
        return obj
    if isinstance(obj, str):
        key = obj.lower()
        if key not in BACKBONES:
            names = sorted({b.name for b in BACKBONES.values()})
            raise ValueError(f"unknown backbone {obj!r}; choose one of {', '.join(names)}")
        return BACKBONES[key]
    obj = _unwrap(obj)
    for cls in type(obj).__mro__:
        found = _by_class(cls.__name__, getattr(obj, "config", None) or {})
        if found is not None:
            return found
    for attr in ("transformer", "vae"):
        part = getattr(obj, attr, None)
        if part is not None and not isinstance(part, (str, int, float)):
            try:
                return get_backbone(part)
            except ValueError:
                continue
    raise ValueError(f"no registered backbone for {type(obj).__name__}")


def backbone_of_model_dir(path: str | Path) -> Backbone:
    """The backbone of a diffusers-format directory, from ``model_index.json`` (or ``transformer/config.json``);
    a directory in genmo's original layout is Mochi."""
    path = Path(path)
    if is_genmo_dir(path):
        return MOCHI
    for file, key in (("model_index.json", "_class_name"), ("transformer/config.json", "_class_name")):
        if (path / file).is_file():
            config = json.loads((path / file).read_text())
            found = _by_class(config.get(key, ""), config)
            if found is not None:
                return found
            name = config.get(key, "")
            raise ValueError(f"{path / file}: class {name!r} is not a registered backbone")
    raise ValueError(f"{path}: no model_index.json or transformer/config.json")


# ----------------------------------------------------------------------------------------------- the toy

_ASSETS = Path(__file__).resolve().parent.parent / "assets"


@dataclass(frozen=True)
class ToyModels:
    """The toy world's models: per architecture a bundle (a diffusers directory of that architecture, with a
    ``toy_info.json``), the toy world's video geometry and the sampling defaults the bundles were tuned for.

    A model is toy-sized when it has the info file or its transformer reads at most ``max_text_length``
    text tokens (a release reads 256 or more).
    """

    bundles: Mapping[str, Path]  # architecture -> bundle directory; the first is the default
    default_geometry: tuple[int, int, int]  # (frames, height, width) of the toy world
    sampling_defaults: tuple[int, float, float]  # (steps, CFG scale, fps)
    # backbone name -> the sampler its toy bundle generates with by default (`inference.samplers`; measured
    # with `toy check --sampler`); a backbone not named samples with its release's
    samplers: Mapping[str, str] = field(default_factory=dict)
    clip_fps: float = 30.0  # the frame rate `prepare` samples source videos at for a toy model
    info_file: str = "toy_info.json"
    max_text_length: int = 64

    def default_sampler(self, pipe: Any) -> str:
        """The sampler a toy model of ``pipe``'s backbone generates with by default."""
        return self.samplers.get(get_backbone(pipe).name, "release")

    @property
    def default_bundle(self) -> Path:
        """The shipped bundle (the toy Mochi), the model used when none is given."""
        return next(iter(self.bundles.values()))

    def bundle_path(self, bundle: str | os.PathLike | None) -> Path:
        """A bundle by architecture name (empty: the default) or a path."""
        name = str(bundle or next(iter(self.bundles)))
        return self.bundles.get(name.lower()) or Path(name)

    def is_model_dir(self, path: str | os.PathLike) -> bool:
        """Whether a diffusers directory holds a toy-sized model (without loading it)."""
        path = Path(path)
        if (path / self.info_file).is_file():
            return True
        length = _json_field(path / "transformer" / "config.json", "max_sequence_length")
        return length is not None and int(length) <= self.max_text_length

    def is_pipeline(self, pipe: Any) -> bool:
        """Whether a loaded pipeline is toy-sized: loaded from a toy directory, or a short text context."""
        source = getattr(pipe, "name_or_path", None)
        if source and (Path(source) / self.info_file).is_file():
            return True
        return (pipe.transformer.config.get("max_sequence_length") or 512) <= self.max_text_length


TOY = ToyModels(
    bundles={"mochi": _ASSETS / "toy-mochi", "wan": _ASSETS / "toy-wan", "wan22": _ASSETS / "toy-wan22"},
    default_geometry=(25, 64, 64),  # 25 = 6k + 1 = 4k + 1 frames: both VAEs keep frame 0 and every 6th / 4th
    sampling_defaults=(32, 4.0, 8.0),
    # the toy Mochi samples ancestrally: one subject each 0.855 vs 0.700 with the release's Euler over the
    # same 200 prompts and seeds (README, "Checking a toy base")
    samplers={"mochi": "ancestral"},
    clip_fps=8.0,  # the rendered world's frame rate: `toy render` writes it and `prepare` reads at it
)


def _json_field(file: Path, key: str) -> Any:
    """``key`` of a JSON file, None when the file is missing or unreadable."""
    try:
        return json.loads(file.read_text()).get(key)
    except (OSError, ValueError):
        return None


def model_dir(model: str | os.PathLike | None) -> Path:
    """The directory of a model argument: a path (``~`` expanded), or the shipped toy bundle when empty."""
    text = str(model).strip() if model is not None else ""
    return Path(text).expanduser() if text else TOY.default_bundle


def model_profile(model: Any) -> Backbone | ToyModels:
    """What a model is used with (``default_geometry``, ``sampling_defaults``, ``clip_fps``): :data:`TOY` for
    a toy-sized model, else its backbone. ``model``: a loaded pipeline or a diffusers directory."""
    if isinstance(model, (str, os.PathLike)):
        return TOY if TOY.is_model_dir(model) else backbone_of_model_dir(model)
    return TOY if TOY.is_pipeline(model) else get_backbone(model)


def text_length_of_model_dir(path: str | os.PathLike, backbone: Backbone) -> int:
    """Text tokens the model reads, from its files alone: the transformer config's ``max_sequence_length``
    (Mochi), a toy bundle's ``toy_info.json``, else the backbone's default (Wan: 512)."""
    path = Path(path)
    for file in (path / "transformer" / "config.json", path / TOY.info_file):
        length = _json_field(file, "max_sequence_length")
        if length:
            return int(length)
    return backbone.default_text_length
