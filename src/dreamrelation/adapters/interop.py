"""LoRA interoperability: import public DreamRelation / genmo fine-tuner checkpoints, export for ComfyUI / genmo.

Our format is one diffusers-LoRA safetensors file per role (see :mod:`dreamrelation.adapters.triplet`): keys
``transformer.transformer_blocks.{i}.attn1.{module}.lora_A.weight`` (r x in) / ``lora_B.weight`` (out x r),
the PEFT ``LoraConfig`` in the header (``lora_adapter_metadata``) and our own metadata beside it.

Module names. genmo's Mochi (and ComfyUI's port of it) fuses the visual and the text q/k/v projections:

==========================  ==================================================
genmo ``blocks.{i}.attn.``  diffusers ``transformer_blocks.{i}.attn1.``
==========================  ==================================================
``qkv_x`` (rows q, k, v)    ``to_q``, ``to_k``, ``to_v``
``qkv_y`` (rows q, k, v)    ``add_q_proj``, ``add_k_proj``, ``add_v_proj``
``proj_x``                  ``to_out.0``
``proj_y``                  ``to_add_out`` (absent in the last block)
``to_q_x`` ... ``to_v_y``   the split projections of the public DreamRelation code
==========================  ==================================================

Fused <-> split, exactly. A LoRA ``(A, B)`` on ``qkv`` changes the three row blocks of the fused weight by
``B_q A``, ``B_k A``, ``B_v A``: on import each split projection gets ``(A, B_chunk)`` (A shared, B cut into
three row chunks; rank components whose chunk column or A row is all zero are dropped, which changes
nothing). On export, separate LoRAs ``(A_q, B_q)``, ``(A_k, B_k)``, ``(A_v, B_v)`` become one fused LoRA of rank
``r_q + r_k + r_v`` with ``A`` stacked (``3r x in``) and ``B`` block-diagonal (``3 out x 3r``); a missing
projection is a zero block. Scales (``alpha / r`` and the per-role strength) are folded into ``B`` on export,
so the exported file has scale 1 everywhere (ComfyUI: ``alpha`` = rank; genmo: ``lora_alpha`` = ``lora_rank``).

Wan (2.1 and 2.2) adapters export to ComfyUI's Wan layout, the original Wan module names: diffusers
``blocks.{i}.attn1.{to_q,to_k,to_v,to_out.0}`` -> ``diffusion_model.blocks.{i}.self_attn.{q,k,v,o}``,
``attn2.*`` -> ``cross_attn.*``; roles on the same module are merged by concatenating their ranks (scales and
strengths folded into B). diffusers' own Wan LoRA loader reads that layout back (``load_lora_weights``).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig
from safetensors import safe_open
from safetensors.torch import save_file

from dreamrelation.adapters.triplet import METADATA_KEY, role_of, write_adapter_file
from dreamrelation.errors import UserError
from dreamrelation.utils.io import atomic_path, atomic_write_json

__all__ = [
    "EXPORT_FORMATS",
    "AdapterFileInfo",
    "ExportResult",
    "ImportResult",
    "LoraFactor",
    "check_adapter_file",
    "export_adapters",
    "import_checkpoint",
    "is_foreign_checkpoint",
    "read_adapter_file",
    "write_factors",
]

EXPORT_FORMATS = ("comfyui", "genmo")
PEFT_HEADER_KEY = "lora_adapter_metadata"  # where diffusers keeps the LoraConfig in a LoRA file's header
PREFIX = "transformer."  # diffusers' key prefix for the transformer's LoRA layers

# genmo fused module -> the diffusers modules of its row chunks (in order)
_FUSED: dict[str, tuple[str, ...]] = {
    "qkv_x": ("to_q", "to_k", "to_v"),
    "qkv_y": ("add_q_proj", "add_k_proj", "add_v_proj"),
    "proj_x": ("to_out.0",),
    "proj_y": ("to_add_out",),
}
# public DreamRelation split projections -> diffusers modules
_SPLIT = {
    f"to_{kind}_{stream}": module
    for stream, names in (("x", _FUSED["qkv_x"]), ("y", _FUSED["qkv_y"]))
    for kind, module in zip("qkv", names, strict=True)
}
# diffusers module -> (genmo fused module, chunk index)
_TO_GENMO = {m: (fused, i) for fused, mods in _FUSED.items() for i, m in enumerate(mods)}

_OURS_RE = re.compile(r"^transformer\.(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")
_MODULE_RE = re.compile(r"^transformer_blocks\.(?P<block>\d+)\.attn1\.(?P<name>.+)$")
_SOURCE_RE = re.compile(
    r"^blocks\.(?P<block>\d+)\.attn\.(?P<proj>qkv_[xy]|proj_[xy]|to_[qkv]_[xy])\."
    r"(?:lora_(?P<ab>[AB])(?:\.(?P<name>[A-Za-z_][\w-]*))?|(?P<alpha>alpha))$"
)
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "diffusion_model.")


# ----------------------------------------------------------------------------------------------
# one LoRA on one module, and files in our format
# ----------------------------------------------------------------------------------------------


@dataclass
class LoraFactor:
    """One module's LoRA: ``delta W = scale * b @ a`` with ``a`` (r x in) and ``b`` (out x r)."""

    a: torch.Tensor
    b: torch.Tensor
    scale: float = 1.0

    @property
    def rank(self) -> int:
        """Number of rank components."""
        return int(self.a.shape[0])

    def delta(self) -> torch.Tensor:
        """The dense weight change (fp32)."""
        return self.scale * (self.b.float() @ self.a.float())

    def plus(self, other: LoraFactor) -> LoraFactor:
        """The LoRA whose delta is the sum of both (ranks concatenated)."""
        if self.scale == other.scale:
            return LoraFactor(torch.cat([self.a, other.a]), torch.cat([self.b, other.b], dim=1), self.scale)
        b = torch.cat([self.b.float() * self.scale, other.b.float() * other.scale], dim=1)
        return LoraFactor(torch.cat([self.a.float(), other.a.float()]), b, 1.0)


def _pattern_value(patterns: dict, name: str, default: float) -> float:
    """PEFT's ``rank_pattern`` / ``alpha_pattern`` lookup for module ``name``."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def _peft_config(header: dict[str, str]) -> dict:
    """The LoraConfig fields stored by diffusers (``transformer.`` prefix removed), or ``{}``."""
    raw = header.get(PEFT_HEADER_KEY)
    if not raw:
        return {}
    conf = json.loads(raw)
    return {k.removeprefix(PREFIX): v for k, v in conf.items() if k.startswith(PREFIX)}


def _module_scale(conf: dict, module: str, rank: int) -> float:
    """PEFT's LoRA scale for ``module``: alpha / r (alpha / sqrt(r) with rsLoRA); 1 without a config."""
    if not conf:
        return 1.0
    r = _pattern_value(conf.get("rank_pattern") or {}, module, conf.get("r", rank))
    alpha = _pattern_value(conf.get("alpha_pattern") or {}, module, conf.get("lora_alpha", r))
    return float(alpha) / (float(r) ** 0.5 if conf.get("use_rslora") else float(r))


@dataclass
class AdapterFileInfo:
    """What :func:`check_adapter_file` found in one adapter file."""

    path: Path
    role: str
    metadata: dict
    modules: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # module -> (rank, in, out)


def check_adapter_file(
    path: str | os.PathLike, transformer: torch.nn.Module | None = None
) -> AdapterFileInfo:
    """Check an adapter file in our format without loading its tensors; raise :class:`UserError` if it does
    not fit: unreadable file, unknown keys, A without B, ranks that disagree with the stored LoraConfig, or
    (given ``transformer``) a target module that is missing or not a Linear of matching in/out features.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"adapter file not found: {p}")
    try:
        with safe_open(str(p), framework="pt") as f:
            header = dict(f.metadata() or {})
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises several types for a bad file
        raise UserError(f"{p}: not a readable safetensors adapter file ({exc})") from exc
    metadata = json.loads(header.get(METADATA_KEY, "{}"))
    conf = _peft_config(header)
    if conf.get("use_dora"):
        raise UserError(f"{p}: DoRA adapters are not supported")
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    bad = []
    for key, shape in shapes.items():
        m = _OURS_RE.match(key)
        if not m or len(shape) != 2:
            bad.append(key)
            continue
        pairs.setdefault(m["module"], {})[m["ab"]] = shape
    if bad:
        raise UserError(f"{p}: keys that are not transformer LoRA A/B matrices: {', '.join(sorted(bad)[:5])}")
    if not pairs:
        raise UserError(f"{p}: no LoRA weights in the file")
    info = AdapterFileInfo(p, role_of(p, metadata), metadata)
    modules = dict(transformer.named_modules()) if transformer is not None else {}
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise UserError(f"{p}: {module} has lora_{''.join(ab)} but not both lora_A and lora_B")
        (r, fan_in), (fan_out, r_b) = ab["A"], ab["B"]
        if r != r_b:
            raise UserError(f"{p}: {module}: lora_A has rank {r} but lora_B has rank {r_b}")
        if conf:
            want = int(_pattern_value(conf.get("rank_pattern") or {}, module, conf.get("r", r)))
            if want != r:
                raise UserError(
                    f"{p}: {module}: the file's LoraConfig says rank {want}, the tensors have rank {r}"
                )
        info.modules[module] = (r, fan_in, fan_out)
        if transformer is None:
            continue
        layer = modules.get(module)
        layer = getattr(layer, "base_layer", layer)
        if not isinstance(layer, torch.nn.Linear):
            what = "is not a Linear layer" if layer is not None else "does not exist in the model"
            raise UserError(f"{p}: target module {module} {what} (adapter made for another model?)")
        if (layer.in_features, layer.out_features) != (fan_in, fan_out):
            raise UserError(
                f"{p}: {module}: LoRA maps {fan_in} -> {fan_out} features but the model's layer is "
                f"{layer.in_features} -> {layer.out_features} (adapter made for another model size?)"
            )
    return info


def read_adapter_file(path: str | os.PathLike) -> tuple[str, dict[str, LoraFactor], dict]:
    """``(role, {module: LoraFactor}, metadata)`` of one adapter file in our format (checked first)."""
    info = check_adapter_file(path)
    with safe_open(str(info.path), framework="pt") as f:
        conf = _peft_config(dict(f.metadata() or {}))
        factors = {
            module: LoraFactor(
                f.get_tensor(f"{PREFIX}{module}.lora_A.weight"),
                f.get_tensor(f"{PREFIX}{module}.lora_B.weight"),
                _module_scale(conf, module, rank),
            )
            for module, (rank, _, _) in info.modules.items()
        }
    return info.role, factors, info.metadata


def write_factors(
    path: str | os.PathLike, role: str, factors: dict[str, LoraFactor], metadata: dict | None = None
) -> Path:
    """Write ``factors`` as adapter ``role`` in our format (through :func:`adapters.write_adapter_file`, as
    :func:`adapters.save_adapters` does).

    Each module keeps its rank and scale (``lora_alpha = scale * r``); the most common rank/alpha are the
    config defaults, others go to ``rank_pattern`` / ``alpha_pattern``. Written atomically.
    """
    if not factors:
        raise ValueError(f"adapter {role!r}: nothing to write")
    ranks = {m: f.rank for m, f in factors.items()}
    alphas = {m: f.scale * f.rank for m, f in factors.items()}
    r = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    conf = LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules="^(" + "|".join(re.escape(m) for m in sorted(factors)) + ")$",
        rank_pattern={f"^{re.escape(m)}": v for m, v in ranks.items() if v != r},
        alpha_pattern={f"^{re.escape(m)}": v for m, v in alphas.items() if v != alpha},
        init_lora_weights=True,
    ).to_dict()
    state = {}
    for module, f in sorted(factors.items()):
        state[f"{module}.lora_A.weight"] = f.a
        state[f"{module}.lora_B.weight"] = f.b
    return write_adapter_file(path, role, state, conf, metadata)


# ----------------------------------------------------------------------------------------------
# import
# ----------------------------------------------------------------------------------------------


@dataclass
class ImportResult:
    """Outcome of :func:`import_checkpoint`."""

    out_dir: Path
    files: list[Path]
    source_format: str
    roles: dict[str, int]  # role -> number of LoRA modules
    inference_roles: list[str]
    unknown_keys: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _load_source(path: Path) -> tuple[dict, dict]:
    """``(state_dict, kwargs)`` of a safetensors file or a pickle loaded with ``weights_only=True``."""
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                header = dict(f.metadata() or {})
                state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        except Exception as exc:
            raise UserError(f"{path}: not a readable safetensors file ({exc})") from exc
        if METADATA_KEY in header or PEFT_HEADER_KEY in header:
            raise UserError(f"{path}: already in dreamrelation/diffusers LoRA format; nothing to import")
        try:
            kwargs = json.loads(header.get("kwargs", "{}"))
        except json.JSONDecodeError:
            kwargs = {}
        return state, kwargs if isinstance(kwargs, dict) else {}
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure of a weights-only load means: not a checkpoint we can read
        first = f"{type(exc).__name__}: " + " ".join(str(exc).split())[:300]
        raise UserError(
            f"{path}: refused to load: not a plain tensor checkpoint (loaded with weights_only=True, which "
            f"never runs code from the file): {first}"
        ) from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        kwargs = obj.get("kwargs")
        return obj["state_dict"], kwargs if isinstance(kwargs, dict) else {}
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, {}
    raise UserError(
        f"{path}: expected a state dict or {{'state_dict': ..., 'kwargs': ...}}, got {type(obj).__name__}"
    )


def is_foreign_checkpoint(path: str | os.PathLike) -> bool:
    """Whether an existing file is a LoRA checkpoint to import (a pickle such as the official
    ``model_2000.lora.pt``, or a safetensors file without our / diffusers' LoRA header)."""
    p = Path(path)
    if p.suffix != ".safetensors":
        return True
    try:
        with safe_open(str(p), framework="pt") as f:
            header = dict(f.metadata() or {})
    except Exception:  # unreadable: the adapter checks report it
        return False
    return METADATA_KEY not in header and PEFT_HEADER_KEY not in header


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key.removesuffix(".weight") if ".lora_" in key and key.endswith(".weight") else key


def _kind_scale(kwargs: dict, proj: str, rank: int, notes: list[str]) -> float:
    """genmo/DreamRelation scale ``alpha / r`` from the training kwargs (qkv or output projection)."""
    kind = "out" if proj.startswith("proj") else "qkv"
    r = kwargs.get(f"{kind}_proj_lora_rank")
    alpha = kwargs.get(f"{kind}_proj_lora_alpha")
    if alpha is None or not r:
        note = f"no {kind}_proj_lora_alpha/rank in the checkpoint kwargs: assuming alpha = rank (scale 1)"
        if note not in notes:
            notes.append(note)
        return 1.0
    if int(r) != rank:
        note = f"{kind}_proj_lora_rank is {r} but tensors have rank {rank}; scale alpha/{r} kept as genmo uses it"
        if note not in notes:
            notes.append(note)
    return float(alpha) / float(r)


def _compact(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Drop rank components that contribute nothing (zero B column or zero A row); None if all do."""
    keep = (b.abs().sum(0) > 0) & (a.abs().sum(1) > 0)
    if not bool(keep.any()):
        return None
    return a[keep], b[:, keep]


def _convert(
    state: dict, kwargs: dict
) -> tuple[dict[str, dict[str, LoraFactor]], list[str], list[str], bool]:
    """Source keys -> ``{role: {module: LoraFactor}}``, unknown keys, notes, whether names were present."""
    groups: dict[tuple[int, str, str | None], dict[str, torch.Tensor]] = {}
    unknown: list[str] = []
    for raw, value in state.items():
        m = _SOURCE_RE.match(_strip(raw))
        if m is None or not isinstance(value, torch.Tensor):
            unknown.append(raw)
            continue
        slot = "alpha" if m["alpha"] else m["ab"]
        if slot != "alpha" and value.ndim != 2:
            unknown.append(raw)
            continue
        groups.setdefault((int(m["block"]), m["proj"], m["name"]), {})[slot] = value
    notes: list[str] = []
    named = any(name is not None for _, _, name in groups)
    roles: dict[str, dict[str, LoraFactor]] = {}
    for (block, proj, name), parts in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or "")
    ):
        if "A" not in parts or "B" not in parts:
            unknown.extend(f"blocks.{block}.attn.{proj}.{slot} (no matching lora_A/lora_B)" for slot in parts)
            continue
        a, b = parts["A"], parts["B"]
        if a.shape[0] != b.shape[1]:
            raise UserError(
                f"blocks.{block}.attn.{proj}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} disagree"
            )
        if "alpha" in parts:
            scale = float(parts["alpha"].float().item()) / a.shape[0]
        else:
            scale = _kind_scale(kwargs, proj, a.shape[0], notes)
        # named LoRAs keep their name; DreamRelation's unnamed output LoRA -> "output"; no names -> "direct"
        role = name if name is not None else ("output" if named and proj.startswith("proj") else "direct")
        prefix = f"transformer_blocks.{block}.attn1."
        if proj in _SPLIT:
            pieces = [(_SPLIT[proj], a, b)]
        else:
            modules = _FUSED[proj]
            if b.shape[0] % len(modules):
                raise UserError(
                    f"blocks.{block}.attn.{proj}: lora_B has {b.shape[0]} rows, not {len(modules)} equal chunks"
                )
            pieces = [(mod, a, chunk) for mod, chunk in zip(modules, b.chunk(len(modules)), strict=True)]
            if len(modules) > 1:
                pieces = [(mod, *ab) for mod, pa, pb in pieces if (ab := _compact(pa, pb)) is not None]
        target = roles.setdefault(role, {})
        for module, pa, pb in pieces:
            factor = LoraFactor(pa.float().contiguous(), pb.float().contiguous(), scale)
            key = prefix + module
            target[key] = target[key].plus(factor) if key in target else factor
    return {r: f for r, f in roles.items() if f}, unknown, notes, named


def import_checkpoint(
    path: str | os.PathLike, out_dir: str | os.PathLike, transformer: torch.nn.Module | None = None
) -> ImportResult:
    """Convert a public DreamRelation or genmo fine-tuner LoRA checkpoint into our per-role adapter files.

    Reads ``.safetensors`` (genmo: ``kwargs`` JSON in the header) or a pickle ``{"state_dict", "kwargs"}``
    loaded with ``torch.load(weights_only=True)`` (no code from the file runs; anything else is refused
    with a :class:`UserError`). Named LoRAs (``...lora_A.relation``) keep their name as role; the unnamed
    output-projection LoRA of a DreamRelation checkpoint becomes role ``output``; a checkpoint without
    names (genmo, ComfyUI) becomes one role ``direct``. Keys that are not understood are listed in the
    result and warned about, never silently dropped. With ``transformer`` the files are checked against it.
    """
    src = Path(path)
    state, kwargs = _load_source(src)
    roles, unknown, notes, named = _convert(state, kwargs)
    if unknown:
        shown = ", ".join(unknown[:8]) + (f" ... ({len(unknown)} in all)" if len(unknown) > 8 else "")
        warnings.warn(f"{src}: {len(unknown)} key(s) not understood and not imported: {shown}", stacklevel=2)
    if not roles:
        raise UserError(f"{src}: no Mochi attention LoRA weights found ({len(unknown)} unknown keys)")
    if named:
        source_format = "dreamrelation"
        test_names = kwargs.get("test_lora_names") or ["relation"]
        inference = [r for r in test_names if r in roles] + (["output"] if "output" in roles else [])
    else:
        source_format = "comfyui" if any(k.startswith("diffusion_model.") for k in state) else "genmo"
        inference = sorted(roles)
    out = Path(out_dir)
    meta = {
        "source": str(src.resolve()),
        "source_format": source_format,
        "source_kwargs": kwargs,
        "inference_roles": inference,
    }
    files = [
        write_factors(out / f"{role}.safetensors", role, factors, meta) for role, factors in roles.items()
    ]
    if transformer is not None:
        for file in files:
            check_adapter_file(file, transformer)
    result = ImportResult(
        out, files, source_format, {r: len(f) for r, f in roles.items()}, inference, unknown, notes
    )
    report = {k: v for k, v in result.__dict__.items() if k not in ("out_dir", "files")}
    atomic_write_json(out / "import.json", {"source": str(src), "files": [f.name for f in files], **report})
    return result


# ----------------------------------------------------------------------------------------------
# export
# ----------------------------------------------------------------------------------------------


@dataclass
class ExportResult:
    """Outcome of :func:`export_adapters`."""

    path: Path
    format: str
    roles: dict[str, float]  # role -> strength folded into the file
    modules: int


def _adapter_files(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Adapter files of a directory (``*.safetensors``) or an explicit list; each must exist."""
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if p.is_dir():
            files = sorted(p.glob("*.safetensors"))
            if not files:
                raise UserError(f"{p}: no adapter files (*.safetensors)")
            return files
        source = [p]
    files = [Path(s) for s in source]
    for f in files:
        if not f.is_file():
            raise UserError(f"adapter file not found: {f}")
    return files


def _default_roles(available: dict[str, dict]) -> list[str]:
    """The roles to use when none are given: recorded inference roles, else relation + output, else all."""
    for meta in available.values():
        wanted = [r for r in meta.get("inference_roles") or [] if r in available]
        if wanted:
            return wanted
    paper = [r for r in ("relation", "output") if r in available]
    return paper or sorted(available)


def export_adapters(
    adapter_dir: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    format: str = "comfyui",  # noqa: A002 - the CLI option's name
    roles: dict[str, float] | Sequence[str] | None = None,
) -> ExportResult:
    """Merge the chosen roles (default: the inference roles, i.e. relation + output) into one LoRA file in
    genmo's module layout (Wan adapters: ComfyUI's Wan layout, see the module docstring): ``format="comfyui"`` writes ``diffusion_model.blocks.{i}.attn.{qkv_x,...}.lora_A.weight``
    / ``lora_B.weight`` / ``alpha`` (ComfyUI's Mochi LoRA loader); ``"genmo"`` writes genmo fine-tuner keys
    ``blocks.{i}.attn.qkv_x.lora_A`` / ``lora_B`` with uniform ranks (zero-padded) and the ``kwargs`` header
    genmo's loader reads. ``roles`` maps role -> strength (folded into B). ``out`` is a file, or a directory
    that gets ``dreamrelation_{format}.safetensors``.
    """
    if format not in EXPORT_FORMATS:
        raise UserError(f"--format {format!r}: choose one of {', '.join(EXPORT_FORMATS)}")
    loaded = {}
    for file in _adapter_files(adapter_dir):
        role, factors, meta = read_adapter_file(file)
        loaded[role] = (factors, meta)
    if roles is None:
        strengths = dict.fromkeys(_default_roles({r: m for r, (_, m) in loaded.items()}), 1.0)
    elif isinstance(roles, dict):
        strengths = {r: float(s) for r, s in roles.items()}
    else:
        strengths = dict.fromkeys(roles, 1.0)
    missing = [r for r in strengths if r not in loaded]
    if missing:
        raise UserError(f"no adapter file for role(s) {missing}; found {sorted(loaded)}")
    header = {"dreamrelation_export": json.dumps({"roles": strengths, "format": format}, sort_keys=True)}
    chosen = {r: loaded[r][0] for r in strengths}
    if _is_wan_layout(chosen):
        if format != "comfyui":
            raise UserError(f"--format {format}: genmo's layout is Mochi's; Wan adapters export to comfyui")
        tensors = _wan_comfyui_tensors(_wan_targets(chosen, strengths))
        n_modules = len(tensors) // 3
    else:
        merged = _fuse(_genmo_targets(chosen, strengths))
        tensors = _comfyui_tensors(merged) if format == "comfyui" else _genmo_tensors(merged, header)
        n_modules = len(merged)
    target = Path(out)
    if target.is_dir() or not target.suffix:
        target = target / f"dreamrelation_{format}.safetensors"
    with atomic_path(target) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return ExportResult(target, format, strengths, n_modules)


_Targets = dict[tuple[int, str], list[tuple[int, torch.Tensor, torch.Tensor]]]


def _genmo_targets(factors: dict[str, dict[str, LoraFactor]], strengths: dict[str, float]) -> _Targets:
    """(block, genmo fused module) -> [(row chunk, A, B with every scale and the strength folded in)]."""
    targets: _Targets = {}
    for role, strength in strengths.items():
        for module, f in factors[role].items():
            m = _MODULE_RE.match(module)
            if m is None or m["name"] not in _TO_GENMO:
                raise UserError(f"role {role!r}: {module} has no counterpart in genmo's Mochi layout")
            fused, chunk = _TO_GENMO[m["name"]]
            targets.setdefault((int(m["block"]), fused), []).append(
                (chunk, f.a.float(), f.b.float() * (f.scale * strength))
            )
    return targets


_WAN_ATTENTION = {"attn1": "self_attn", "attn2": "cross_attn"}
_WAN_PROJECTION = {"to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "o"}
_WAN_MODULE_RE = re.compile(r"^blocks\.(?P<block>\d+)\.(?P<attn>attn[12])\.(?P<proj>to_[qkv]|to_out\.0)$")


def _is_wan_layout(factors: dict[str, dict[str, LoraFactor]]) -> bool:
    """Whether the adapters target Wan's blocks (``blocks.{i}.attn1/attn2``) rather than Mochi's."""
    return any(m.startswith("blocks.") for f in factors.values() for m in f)


def _wan_targets(
    factors: dict[str, dict[str, LoraFactor]], strengths: dict[str, float]
) -> dict[str, LoraFactor]:
    """ComfyUI Wan module -> one LoRA of scale 1: the roles on it with scale and strength folded into B."""
    merged: dict[str, LoraFactor] = {}
    for role, strength in strengths.items():
        for module, f in factors[role].items():
            m = _WAN_MODULE_RE.match(module)
            if m is None:
                raise UserError(f"role {role!r}: {module} has no counterpart in ComfyUI's Wan layout")
            name = f"blocks.{m['block']}.{_WAN_ATTENTION[m['attn']]}.{_WAN_PROJECTION[m['proj']]}"
            part = LoraFactor(f.a.float(), f.b.float() * (f.scale * strength))
            merged[name] = merged[name].plus(part) if name in merged else part
    return merged


def _wan_comfyui_tensors(merged: dict[str, LoraFactor]) -> dict[str, torch.Tensor]:
    """ComfyUI's Wan LoRA keys, ``alpha`` = rank (scale 1)."""
    tensors: dict[str, torch.Tensor] = {}
    for name, f in sorted(merged.items()):
        key = f"diffusion_model.{name}"
        tensors[f"{key}.lora_A.weight"] = f.a.contiguous()
        tensors[f"{key}.lora_B.weight"] = f.b.contiguous()
        tensors[f"{key}.alpha"] = torch.tensor(float(f.rank))
    return tensors


def _fuse(targets: _Targets) -> dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]:
    """One LoRA per fused module: A stacked, B block-diagonal over the row chunks (a missing one is zero)."""
    merged: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
    for (block, fused), parts in targets.items():
        n_chunks = len(_FUSED[fused])
        out_dim = parts[0][2].shape[0]
        if any(b.shape[0] != out_dim for _, _, b in parts):
            raise UserError(f"block {block} {fused}: projections of unequal size cannot be fused")
        a = torch.cat([p[1] for p in parts])
        b = torch.zeros(n_chunks * out_dim, a.shape[0])
        col = 0
        for chunk, _, pb in parts:
            b[chunk * out_dim : (chunk + 1) * out_dim, col : col + pb.shape[1]] = pb
            col += pb.shape[1]
        merged[(block, fused)] = (a, b)
    return merged


def _comfyui_tensors(
    merged: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """ComfyUI's Mochi LoRA keys, ``alpha`` = rank (scale 1)."""
    tensors: dict[str, torch.Tensor] = {}
    for (block, fused), (a, b) in sorted(merged.items()):
        key = f"diffusion_model.blocks.{block}.attn.{fused}"
        tensors[f"{key}.lora_A.weight"] = a.contiguous()
        tensors[f"{key}.lora_B.weight"] = b.contiguous()
        tensors[f"{key}.alpha"] = torch.tensor(float(a.shape[0]))
    return tensors


def _genmo_tensors(
    merged: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]], header: dict[str, str]
) -> dict[str, torch.Tensor]:
    """genmo fine-tuner keys with uniform ranks per kind (zero-padded); its ``kwargs`` go into ``header``."""
    tensors: dict[str, torch.Tensor] = {}
    rank = {"qkv": 0, "out": 0}
    for (_, fused), (a, _) in merged.items():
        kind = "qkv" if fused.startswith("qkv") else "out"
        rank[kind] = max(rank[kind], a.shape[0])
    for (block, fused), (a, b) in sorted(merged.items()):
        r = rank["qkv" if fused.startswith("qkv") else "out"]
        pad = r - a.shape[0]
        tensors[f"blocks.{block}.attn.{fused}.lora_A"] = torch.cat(
            [a, a.new_zeros(pad, a.shape[1])]
        ).contiguous()
        tensors[f"blocks.{block}.attn.{fused}.lora_B"] = torch.cat(
            [b, b.new_zeros(b.shape[0], pad)], 1
        ).contiguous()
    kwargs = {
        "qkv_proj_lora_rank": rank["qkv"],
        "qkv_proj_lora_alpha": rank["qkv"],
        "qkv_proj_lora_dropout": 0.0,
        "out_proj_lora_rank": rank["out"],
        "out_proj_lora_alpha": rank["out"],
        "out_proj_lora_dropout": 0.0,
    }
    header["kwargs"] = json.dumps(kwargs)
    return tensors
