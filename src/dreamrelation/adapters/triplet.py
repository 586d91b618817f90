"""The relation LoRA triplet (relation / subject1 / subject2 + always-on output LoRA) as PEFT named adapters.

Each role is one PEFT LoRA adapter on the backbone's transformer (``MochiTransformer3DModel``,
``WanTransformer3DModel``, see :mod:`dreamrelation.backbones.registry`). A role lists projection kinds among
{"q", "k", "v", "out"}; the same kind on the visual and the text stream are different modules, so each stream
gets its own weights. Only the adapters made active by :func:`set_active_roles` are computed in a forward.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import save_file

from dreamrelation.backbones.registry import MOCHI, Backbone, get_backbone
from dreamrelation.core.roles import PROJECTIONS, STREAMS, AdapterConfig
from dreamrelation.utils.io import atomic_path

METADATA_KEY = "dreamrelation_metadata"


def target_regex(kinds: Sequence[str], streams: Sequence[str], backbone: Backbone = MOCHI) -> str:
    """Anchored regex matching the attention projections of ``kinds`` on ``streams`` in every block.

    PEFT applies a string ``target_modules`` with ``re.fullmatch``; the explicit anchors keep it exact anywhere.
    The module names come from ``backbone`` (Mochi 1 or Wan 2.1; default Mochi).
    """
    bad = [k for k in kinds if k not in PROJECTIONS] + [s for s in streams if s not in STREAMS]
    if bad or not kinds or not streams:
        raise ValueError(f"bad projection kinds {list(kinds)} / streams {list(streams)}: {bad}")
    return backbone.target_regex(kinds, streams)


def lora_config(cfg: AdapterConfig, role: str, backbone: Backbone = MOCHI) -> LoraConfig:
    """PEFT ``LoraConfig`` for one role of ``cfg.placement`` on ``backbone``."""
    return LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        init_lora_weights=True,
        target_modules=target_regex(cfg.placement[role], cfg.streams, backbone),
    )


def _lora_layers(model: torch.nn.Module) -> Iterable[BaseTunerLayer]:
    return (m for m in model.modules() if isinstance(m, BaseTunerLayer))


def add_relation_adapters(transformer: torch.nn.Module, cfg: AdapterConfig) -> list[str]:
    """Add one LoRA adapter per role in ``cfg.placement``; adapters in fp32, base frozen. Returns the roles.

    All roles are left active (call :func:`set_active_roles` to choose).
    """
    transformer.requires_grad_(False)
    roles = list(cfg.placement)
    backbone = get_backbone(transformer)  # an unregistered class is refused, never guessed
    for role in roles:
        conf = lora_config(cfg, role, backbone)
        if not any(re.fullmatch(conf.target_modules, n) for n, _ in transformer.named_modules()):
            raise ValueError(f"adapter {role!r}: no module matches {conf.target_modules}")
        with warnings.catch_warnings():  # PEFT warns on every adapter after the first; several are intended
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            transformer.add_adapter(conf, adapter_name=role)
    for params in adapter_parameters(transformer, roles).values():
        for p in params:
            p.data = p.data.float()
    set_active_roles(transformer, roles)
    return roles


def adapter_roles(transformer: torch.nn.Module) -> list[str]:
    """Names of the adapters present on the model, in insertion order."""
    return list(getattr(transformer, "peft_config", {}) or {})


def adapter_parameters(
    transformer: torch.nn.Module, roles: Sequence[str] | None = None
) -> dict[str, list[torch.nn.Parameter]]:
    """Every LoRA parameter of each role (active or not), in a fixed module order."""
    roles = adapter_roles(transformer) if roles is None else list(roles)
    out: dict[str, list[torch.nn.Parameter]] = {r: [] for r in roles}
    for layer in _lora_layers(transformer):
        for attr in layer.adapter_layer_names:
            container = getattr(layer, attr)
            for role in roles:
                if role in container:
                    out[role].extend(container[role].parameters())
    return out


def named_adapter_parameters(transformer: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """All LoRA parameters of all adapters keyed by their full parameter name."""
    ids = {id(p) for ps in adapter_parameters(transformer).values() for p in ps}
    return {n: p for n, p in transformer.named_parameters() if id(p) in ids}


def set_active_roles(transformer: torch.nn.Module, roles: Sequence[str], trainable: bool = True) -> None:
    """Make exactly ``roles`` active for the next forward; inactive adapters are not computed at all.

    PEFT's ``set_adapter`` also sets ``requires_grad`` (True for active adapters unless ``trainable`` is
    False, False for the others); base weights stay frozen. An empty list runs the bare base model.
    """
    known = set(adapter_roles(transformer))
    missing = [r for r in roles if r not in known]
    if missing:
        raise ValueError(f"unknown adapters {missing}; the model has {sorted(known)}")
    for layer in _lora_layers(transformer):
        layer.set_adapter(list(roles), inference_mode=not trainable)


def active_roles(transformer: torch.nn.Module) -> list[str]:
    """Adapters active in the model (as reported by its first LoRA layer)."""
    for layer in _lora_layers(transformer):
        return list(layer.active_adapters)
    return []


def write_adapter_file(
    path: str | os.PathLike,
    role: str,
    state: Mapping[str, torch.Tensor],
    lora_config: dict,
    metadata: dict | None = None,
    backbone: Backbone = MOCHI,
) -> Path:
    """Write one adapter file in our format, atomically: the LoRA ``state`` (keys ``{module}.lora_A.weight`` /
    ``lora_B.weight``) in diffusers' LoRA layout through ``backbone``'s pipeline class (``MochiPipeline`` /
    ``WanPipeline`` ``.save_lora_weights``: keys prefixed ``transformer.``, ``lora_config`` in the header),
    and our ``metadata`` (with ``role``) under :data:`METADATA_KEY`. The one writer of adapter files.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    tmp = Path(tempfile.mkdtemp(prefix=f".{role}-", dir=out.parent))
    try:
        backbone.classes()[1].save_lora_weights(
            tmp,
            transformer_lora_layers=state,
            weight_name="a.safetensors",
            transformer_lora_adapter_metadata=lora_config,
        )
        with safe_open(str(tmp / "a.safetensors"), framework="pt") as f:
            header = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
        header[METADATA_KEY] = json.dumps({"role": role, **(metadata or {})}, sort_keys=True)
        with atomic_path(out) as target:
            save_file(tensors, str(target), metadata=header)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def save_adapters(
    transformer: torch.nn.Module,
    out_dir: str | os.PathLike,
    roles: Sequence[str] | None = None,
    metadata: dict | None = None,
) -> list[Path]:
    """Write ``{role}.safetensors`` per role in diffusers' LoRA format (loadable by ``load_lora_adapter`` and
    the backbone pipeline's ``load_lora_weights``). ``metadata`` (JSON-serialisable) is stored in the file
    header. Each file is written atomically (:func:`write_adapter_file`).
    """
    backbone = get_backbone(transformer)
    roles = adapter_roles(transformer) if roles is None else list(roles)
    return [
        write_adapter_file(
            Path(out_dir) / f"{role}.safetensors",
            role,
            get_peft_model_state_dict(transformer, adapter_name=role),
            transformer.peft_config[role].to_dict(),
            metadata,
            backbone,
        )
        for role in roles
    ]


def role_of(path: str | os.PathLike, metadata: Mapping) -> str:
    """An adapter file's role: the one recorded in its metadata, else its file name."""
    return str(metadata.get("role") or Path(path).stem)


def read_adapter_metadata(path: str | os.PathLike) -> dict:
    """The ``metadata`` given to :func:`save_adapters` (plus ``role``) from one adapter file."""
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
    return json.loads(header.get(METADATA_KEY, "{}"))


def load_adapters(
    transformer: torch.nn.Module, in_dir: str | os.PathLike, roles: Sequence[str], activate: bool = True
) -> None:
    """Load ``{role}.safetensors`` from ``in_dir`` as adapter ``role`` each; then activate exactly ``roles``.

    Loaded adapters are frozen (inference); call :func:`set_active_roles` with ``trainable=True`` to train.
    """
    for role in roles:
        path = Path(in_dir) / f"{role}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"no adapter file {path}")
        transformer.load_lora_adapter(
            str(in_dir), weight_name=path.name, adapter_name=role, prefix="transformer"
        )
    if activate:
        set_active_roles(transformer, roles, trainable=False)
