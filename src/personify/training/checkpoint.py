"""Atomic, resumable checkpoints: `out/checkpoints/step-000100/{method.safetensors, optimizer.pt, state.json}`.

A checkpoint is written into `step-000100.tmp/` and renamed only when complete, so an interruption or
a full disk leaves the previous checkpoint intact. There is no RNG state to save: the loop derives
every step's randomness from (seed, step) — see `loop.step_generator`.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..errors import PersonifyError


def checkpoint_dir(out: Path) -> Path:
    return Path(out) / "checkpoints"


def list_checkpoints(out: Path) -> list[tuple[int, Path]]:
    root = checkpoint_dir(out)
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        if d.is_dir() and d.name.startswith("step-") and not d.name.endswith(".tmp") and (d / "state.json").is_file():
            found.append((int(d.name[5:]), d))
    return sorted(found)


def save_checkpoint(out: Path, step: int, method_state: dict[str, torch.Tensor], optimizer_state: dict, state: dict[str, Any], keep: int) -> Path:
    root = checkpoint_dir(out)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f"step-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        save_file({k: v.detach().contiguous().cpu() for k, v in method_state.items()}, str(tmp / "method.safetensors"))
        torch.save(optimizer_state, tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps(state, indent=1, default=str))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        prev = list_checkpoints(out)
        kept = f"the previous checkpoint {prev[-1][1].name} is intact" if prev else "no earlier checkpoint exists"
        raise PersonifyError(
            f"{tmp}: could not save checkpoint at step {step} ({e.strerror or e}); {kept}; free disk space and rerun with --resume"
        ) from None
    for _, old in list_checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict, dict[str, Any]]:
    try:
        method_state = load_file(str(path / "method.safetensors"))
        optimizer_state = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        state = json.loads((path / "state.json").read_text())
    except Exception as e:
        raise PersonifyError(f"{path}: unreadable checkpoint ({str(e)[:100]}); delete this folder to resume from the one before") from None
    return method_state, optimizer_state, state
