"""Method registry: `@register` on a Method subclass makes it available as `--method NAME`."""
from __future__ import annotations

from ..errors import PersonifyError
from .base import Method, MethodConfig, PriorConfig

METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    _load_builtin()
    if name not in METHODS:
        raise PersonifyError(f"unknown method {name!r}; choose one of: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def available() -> list[str]:
    _load_builtin()
    return sorted(METHODS)


def _load_builtin() -> None:
    # Imported lazily so `import personify` stays cheap; each import runs its @register.
    import importlib

    for mod in BUILTIN:
        importlib.import_module(f"{__name__}.{mod}")


BUILTIN = ("dreambooth", "lora", "textual_inversion", "custom_diffusion")

__all__ = ["Method", "MethodConfig", "PriorConfig", "register", "get_method", "available", "METHODS"]
