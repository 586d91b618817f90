"""Typed configuration: YAML files validated into dataclasses, with ``key.path=value`` overrides.

Any dataclass can serve as a schema (``OmegaConf.structured``). An unknown key or a value of the wrong
type raises :class:`~dreamrelation.errors.UserError` naming the key and the file it came from.
"""

from __future__ import annotations

from dataclasses import is_dataclass
from pathlib import Path
from typing import TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dreamrelation.errors import UserError

T = TypeVar("T")


def _describe(exc: OmegaConfBaseException) -> str:
    key = getattr(exc, "full_key", None)
    message = str(exc).splitlines()[0]
    return f"{key}: {message}" if key else message


def load_config(schema: type[T] | T, path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build a config from ``schema`` (a dataclass, or an instance giving the defaults), then a YAML file,
    then ``key=value`` overrides."""
    if not is_dataclass(schema):
        raise TypeError(f"{schema} is not a dataclass")
    config = OmegaConf.structured(schema)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: config file not found; pass an existing YAML file")
        try:
            config = OmegaConf.merge(config, OmegaConf.load(path))
        except OmegaConfBaseException as exc:
            raise UserError(f"{path}: invalid config key or value ({_describe(exc)})") from None
        except Exception as exc:  # YAML syntax errors
            raise UserError(f"{path}: cannot parse YAML ({str(exc).splitlines()[0]})") from None
    for item in overrides or []:
        if "=" not in item:
            raise UserError(f"override '{item}' must look like key.path=value")
        try:
            config = OmegaConf.merge(config, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as exc:
            raise UserError(f"override '{item}': invalid key or value ({_describe(exc)})") from None
    return OmegaConf.to_object(config)


def to_yaml(config) -> str:
    """The config as YAML (recorded next to every training run)."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))
