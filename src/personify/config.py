"""Typed, self-validating configs, and the CLI flags / config files built from them.

There is exactly one schema: the dataclasses. `add_arguments` turns a dataclass into argparse flags
(`field_name` -> `--field-name`, help from `field(metadata={"help": ...})`), and `load_file`
reads the same fields from YAML or TOML. Values layer as defaults < config file < CLI flags.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

from .errors import ConfigError


def check(cond: bool, msg: str) -> None:
    """Validation helper for `__post_init__`: raise a one-line ConfigError when `cond` is false."""
    if not cond:
        raise ConfigError(msg)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def add_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one flag per dataclass field. Defaults are SUPPRESSed so only flags the user typed
    override the config file."""
    hints = _hints(cls)
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init or f.metadata.get("cli") is False:
            continue
        tp, _ = _unwrap_optional(hints[f.name])
        kw: dict[str, Any] = {"help": _help_with_default(f), "default": argparse.SUPPRESS, "dest": f.name}
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(tp) in (list, tuple):
            inner = typing.get_args(tp)[0] if typing.get_args(tp) else str
            kw.update(nargs="*", type=_scalar_type(inner))
        elif typing.get_origin(tp) is typing.Literal:
            kw.update(choices=list(typing.get_args(tp)))
        else:
            kw["type"] = _scalar_type(tp)
        names = [_flag(f.name)] + (["--" + f.name] if "_" in f.name else [])  # --max-steps and --max_steps
        group.add_argument(*names, **kw)


def _help_with_default(f: dataclasses.Field) -> str:
    """The field's help plus its default (the flags' argparse defaults are SUPPRESSed, so argparse cannot
    show them); left out where the help already explains the default or there is no plain one."""
    text = f.metadata.get("help", "")
    if f.default is dataclasses.MISSING or f.default in (None, "", ()) or "default" in text:
        return text
    shown = f"{f.default:g}" if isinstance(f.default, float) else str(f.default)
    return f"{text} (default: {shown.replace('%', '%%')})"


def _scalar_type(tp: Any):
    if tp in (int, float, str):
        return tp
    if tp is Path:
        return Path
    return str


def _coerce(cls: type, name: str, value: Any, source: str) -> Any:
    tp, optional = _unwrap_optional(_hints(cls)[name])
    if value is None and optional:
        return None
    try:
        if tp is Path:
            return Path(value).expanduser()
        if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if tp is bool and not isinstance(value, bool):
            raise TypeError
        if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError
        if typing.get_origin(tp) in (list, tuple):
            if isinstance(value, str):
                value = [value]
            return list(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {name} = {value!r} is not a valid {getattr(tp, '__name__', tp)}") from None
    return value


def build(cls: type, values: dict[str, Any], source: str = "config"):
    """Instantiate `cls` from a flat dict; unknown keys are an error naming the key and source."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{source}: unknown option {unknown[0]!r} for {cls.__name__}; valid: {', '.join(sorted(names))}")
    kwargs = {k: _coerce(cls, k, v, source) for k, v in values.items()}
    return cls(**kwargs)


def load_file(path: Path) -> dict[str, Any]:
    """Read a YAML or TOML config file into a dict of sections (e.g. `train:`, `method:`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found; pass an existing .yaml/.yml/.toml file")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"{path}: unknown config format {path.suffix!r}; use .yaml, .yml or .toml")
    except ConfigError:
        raise
    except Exception as e:  # parse errors from either library
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{path}: cannot parse config ({first}); fix the syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections like 'train:' and 'method:'")
    return data


@dataclasses.dataclass
class ModelSource:
    """The base-model options every command shares (one schema: `--model`, `--model-config`,
    `--allow-pickle`, `--vae`); command configs inherit them."""

    model: str = dataclasses.field(default="mini", metadata={"help": "base model: 'mini' (embedded), 'tiny' (random, for tests), a diffusers folder or a single .safetensors file"})
    model_config: str | None = dataclasses.field(default=None, metadata={"help": "diffusers config folder for a single-file checkpoint"})
    allow_pickle: bool = dataclasses.field(default=False, metadata={"help": "allow .ckpt/.pt/.bin models (loaded with weights_only=True)"})
    vae: str | None = dataclasses.field(default=None, metadata={"help": "AutoencoderKL folder used instead of the model's VAE, e.g. a fine-tuned decoder (same encoder: trained concepts stay valid)"})

    def model_options(self) -> dict[str, Any]:
        """These options as keywords (for `personify.train(...)`, which takes TrainConfig fields)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(ModelSource)}

    def load_pipeline(self, **kw):
        from .models import load_pipeline

        return load_pipeline(self.model, config=self.model_config, allow_pickle=self.allow_pickle, vae=self.vae, **kw)


def to_dict(obj: Any) -> dict[str, Any]:
    """JSON-friendly dict of a config (Paths become strings)."""
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        out[f.name] = str(v) if isinstance(v, Path) else v
    return out
