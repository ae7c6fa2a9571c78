"""The concept artifact: one `.safetensors` file for every method.

Tensors are whatever the method saves (LoRA matrices, token embeddings, K/V weights, a UNet);
the JSON metadata (safetensors header key "personify") says how to apply them:

    {"format": "personify.concept/1", "method": "lora", "base_model_hash": "...",
     "base_model": "mini", "tokens": ["rcn"], "class_word": "dog",
     "instance_prompt": "a rcn dog", "config": {...}, "metrics": {...}, "created": "..."}

Applying checks the base-model hash first: a concept trained on one model is meaningless on another.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import PersonifyError
from .models.loading import same_base

FORMAT = "personify.concept/1"


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """`write(tmp)` into a hidden temp file beside `path` (unique per process, so concurrent writers of
    one path never share it), fsync, rename: a crash, a killed worker or a full disk never leaves a
    half file, and an OSError is one line naming the file and the fix."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise PersonifyError(f"{path}: could not write ({e.strerror or e}); free disk space and retry") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    atomic_write(path, lambda tmp: save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata))


def save_concept(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any], dtype: torch.dtype | None = None) -> Path:
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path / "concept.safetensors" if path.is_dir() else path.with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    meta = {"format": FORMAT, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **meta}
    atomic_save_safetensors(tensors, path, {"personify": json.dumps(meta, default=str)})
    return path


def read_concept(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "concept.safetensors"
    if not p.is_file():
        raise PersonifyError(f"{p}: concept not found; pass the .safetensors file written by 'personify train'")
    try:
        with safe_open(str(p), "pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise PersonifyError(f"{p}: unreadable concept file ({str(e)[:100]}); re-export it from its training run") from None
    if "personify" not in header:
        raise PersonifyError(f"{p}: not a personify concept (no metadata); kohya/A1111 LoRA files (lora_unet_* keys) are loaded as they are")
    meta = json.loads(header["personify"])
    if meta.get("format") != FORMAT:
        raise PersonifyError(f"{p}: concept format {meta.get('format')!r} is not {FORMAT!r}; upgrade personify")
    meta["path"] = str(p)
    return tensors, meta


def _is_kohya(path) -> bool:
    """A kohya / A1111 LoRA file (no personify metadata, `lora_unet_*` keys)."""
    p = Path(path)
    if p.suffix != ".safetensors" or not p.is_file():
        return False
    try:
        with safe_open(str(p), "pt") as f:
            return "personify" not in (f.metadata() or {}) and any(k.startswith(("lora_unet_", "lora_te_")) for k in f.keys())
    except Exception:
        return False


def apply_concepts(pipe, paths: list[str | os.PathLike]) -> None:
    """Apply several concepts to a loaded pipeline, in order, after checking each one's base model."""
    from .methods import get_method

    for path in paths:
        if _is_kohya(path):
            from .export import load_kohya_lora

            load_kohya_lora(pipe, path)
            continue
        tensors, meta = read_concept(path)
        for other in pipe.personify_concepts:
            shared = set(other.get("tokens") or []) & set(meta.get("tokens") or [])
            if shared:
                raise PersonifyError(
                    f"{meta['path']}: token {sorted(shared)[0]!r} is also used by {other.get('path')}; "
                    "retrain one concept with another --identifier / --placeholder"
                )
        base = getattr(pipe, "personify_base_hash", None)
        if not same_base(pipe, meta["base_model_hash"]):
            raise PersonifyError(
                f"{meta['path']}: trained on base model {meta['base_model_hash']} ({meta.get('base_model')}), "
                f"but the loaded model is {base}; pass --model {meta.get('base_model')}"
            )
        get_method(meta["method"]).apply(pipe, tensors, meta)
        pipe.personify_concepts.append(meta)
