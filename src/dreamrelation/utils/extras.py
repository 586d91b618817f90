"""The optional extras (gradio, bitsandbytes, wandb, tensorboard): imported when a feature asks for one."""

from __future__ import annotations

import importlib
from types import ModuleType

from dreamrelation.errors import UserError


def require(module: str, why: str) -> ModuleType:
    """``module`` imported, else a :class:`UserError` with ``why`` (what needs it and how to install it)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UserError(why) from exc
