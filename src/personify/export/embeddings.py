"""personify Textual Inversion concepts -> the embedding files other tools read.

- `a1111` (also what kohya-ss writes): `{"emb_params": (N, D)}` in a .safetensors. AUTOMATIC1111
  reads a one-tensor file as the embedding and names it after the file, so `my-dog.safetensors`
  is prompted as `my-dog`.
- `diffusers`: `{placeholder: (N, D)}` (the `learned_embeds.safetensors` of diffusers' training
  script), read by `pipe.load_textual_inversion(path)`; vectors 2..N become `placeholder_1`, ...
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..artifact import atomic_save_safetensors, read_concept
from ..errors import PersonifyError


def embedding_of(concept_path: str | os.PathLike) -> tuple[str, torch.Tensor, dict]:
    tensors, meta = read_concept(concept_path)
    if meta.get("method") != "textual_inversion":
        raise PersonifyError(f"{meta['path']}: embedding export is for textual_inversion concepts, this one is {meta.get('method')!r}")
    if len(tensors) != 1:
        raise PersonifyError(f"{meta['path']}: expected one placeholder embedding, found {len(tensors)} tensors")
    placeholder, vec = next(iter(tensors.items()))
    return placeholder, vec, meta


def export_embedding(concept_path: str | os.PathLike, out_path: str | os.PathLike, format: str) -> Path:
    placeholder, vec, meta = embedding_of(concept_path)
    header = {"personify_source": json.dumps({k: meta.get(k) for k in ("method", "tokens", "instance_prompt", "base_model", "base_model_hash")})}
    if format in ("a1111", "kohya"):
        tensors = {"emb_params": vec}
        header["name"] = placeholder
    elif format == "diffusers":
        tensors = {placeholder: vec}
    else:
        raise PersonifyError(f"unknown embedding format {format!r}; use a1111 or diffusers")
    out = Path(out_path)
    atomic_save_safetensors(tensors, out, header)
    return out


def default_name(concept_path: str | os.PathLike, format: str) -> str:
    placeholder, _, _ = embedding_of(concept_path)
    if format == "diffusers":
        return "learned_embeds.safetensors"
    stem = "".join(c if c.isalnum() or c in "-_" else "" for c in placeholder) or "embedding"
    return f"{stem}.safetensors"
