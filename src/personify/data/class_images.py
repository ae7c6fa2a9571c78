"""Class images for prior preservation: generated once by the frozen base model and cached.

Cache key = (model hash with the VAE decoder, prompt, resolution, sampler settings); the manifest records
the seed of every image, so a later run with more `num_class_images` only generates the missing ones and a
run on another base model gets its own folder (Ruiz et al. 2023, Sec. 3.3: x_pr = x̂(z, c_pr) from the
frozen model). The key includes the decoder although concepts do not depend on it (`model_hash`): the
class images are pixels the decoder drew, so a swapped-in decoder (`--vae`) draws its own.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from ..artifact import atomic_write
from ..generate import generate_images

CLASS_STEPS = 25
CLASS_GUIDANCE = 7.5


def cache_root() -> Path:
    return Path(os.environ.get("PERSONIFY_CACHE", Path.home() / ".cache" / "personify")) / "class_images"


def class_images(pipe, prompt: str, n: int, resolution: int, seed: int = 0, root: Path | None = None, batch: int = 16) -> list[Path]:
    drawn_by = getattr(pipe, "personify_full_hash", None) or pipe.personify_base_hash
    key = hashlib.sha256(json.dumps([drawn_by, prompt, resolution, CLASS_STEPS, CLASS_GUIDANCE]).encode()).hexdigest()[:16]
    folder = (root or cache_root()) / f"{drawn_by}-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {
        "prompt": prompt, "base_model_hash": pipe.personify_base_hash, "full_model_hash": drawn_by, "resolution": resolution,
        "steps": CLASS_STEPS, "guidance": CLASS_GUIDANCE, "images": {},
    }
    have = {k: v for k, v in manifest["images"].items() if (folder / k).is_file()}
    todo = [i for i in range(n) if f"{i:05d}.png" not in have]
    for start in range(0, len(todo), batch):
        idx = todo[start : start + batch]
        seeds = [seed * 100_003 + i for i in idx]
        with torch.no_grad():
            images = generate_images(pipe, [prompt] * len(idx), seeds, steps=CLASS_STEPS, guidance=CLASS_GUIDANCE, height=resolution, width=resolution)
        for i, s, img in zip(idx, seeds, images):
            name = f"{i:05d}.png"
            # Experts fanned out over subjects (incontext.experts) fill one class's folder from several
            # processes: per-process temp names + rename, so no reader sees half a file.
            atomic_write(folder / name, lambda tmp, img=img: img.save(tmp, format="PNG"))
            have[name] = {"seed": s}
        manifest["images"] = have
        atomic_write(manifest_path, lambda tmp: tmp.write_text(json.dumps(manifest, indent=1)))  # progress survives an interruption
    return [folder / f"{i:05d}.png" for i in range(n)]


def joint_class_images(pipe, prompts: list[str], n: int, resolution: int, seed: int = 0) -> Path:
    """Prior images of several classes in one folder, as the loop reads one class folder: each
    class's `n` cached images (`class_images`) copied as `c{i}_NAME.png` with a sidecar caption
    holding that class's prompt (the loop trains a class image with its own caption). Used by joint
    training of several subjects (DreamBooth, Custom Diffusion)."""
    import shutil

    per = [class_images(pipe, p, n, resolution, seed=seed) for p in prompts]
    key = hashlib.sha256(json.dumps([[str(x) for x in paths] for paths in per]).encode()).hexdigest()[:16]
    folder = cache_root() / f"joint-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    for ci, (p, paths) in enumerate(zip(prompts, per)):
        for j, src in enumerate(paths):
            dst = folder / f"c{ci}_{j:05d}.png"
            if not dst.is_file():
                shutil.copyfile(src, dst)
            dst.with_suffix(".txt").write_text(p + "\n")
    return folder
