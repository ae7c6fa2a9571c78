"""Loading the emoji world's scene splits, plus a synthetic stand-in world for tests.

Data contract (written by ``personify.world``): ``<world>/scenes/<split>.npz`` with ``images``
uint8 (N, 64, 64, 3), ``class_id`` int32 (N,), ``captions`` (N,) str, ``background_id`` int16,
``style_id`` int16, ``family_id`` int8; ``<world>/scenes/meta.json`` with ``classes`` (index =
class_id), ``backgrounds``, ``styles``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# OpenAI CLIP pixel normalisation; used by both CLIPs (saved in their preprocessor configs).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class SceneSplit:
    images: np.ndarray  # uint8 (N, H, W, 3)
    class_id: np.ndarray  # int64 (N,)
    captions: list[str]
    meta: dict

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        classes = self.meta.get("classes")
        return len(classes) if classes else int(self.class_id.max()) + 1


def split_path(world: Path, split: str) -> Path:
    return Path(world) / "scenes" / f"{split}.npz"


def load_split(world: Path, split: str, max_images: int = 0) -> SceneSplit:
    """Load one split into memory (images stay uint8)."""
    path = split_path(world, split)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: build the emoji world first (personify.world) or set PERSONIFY_WORLD"
        )
    with np.load(path, allow_pickle=False) as z:
        n = len(z["images"]) if not max_images else min(max_images, len(z["images"]))
        images = np.ascontiguousarray(z["images"][:n])
        class_id = z["class_id"][:n].astype(np.int64)
        captions = [str(c) for c in z["captions"][:n]]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{path}: images must be uint8 (N,H,W,3), got {images.dtype} {images.shape}")
    meta_path = Path(world) / "scenes" / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return SceneSplit(images=images, class_id=class_id, captions=captions, meta=meta)


def to_unit(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1] (VAE / UNet convention)."""
    return images_u8.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def to_clip_pixels(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float NCHW normalised with the CLIP mean/std."""
    x = images_u8.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


# ------------------------------------------------------------------------------------------
# Synthetic world (tests / development before the real world exists)
# ------------------------------------------------------------------------------------------
_SHAPES = ["circle", "square", "triangle", "cross"]
_COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}
_BACKS = {"white": (245, 245, 245), "black": (20, 20, 20), "grey": (128, 128, 128)}


def _draw(shape: str, color, back, size: int, rng: np.random.Generator) -> np.ndarray:
    img = np.empty((size, size, 3), np.uint8)
    img[:] = back
    yy, xx = np.mgrid[:size, :size]
    cx, cy = rng.uniform(0.35, 0.65, 2) * size
    r = rng.uniform(0.18, 0.3) * size
    if shape == "circle":
        m = (xx - cx) ** 2 + (yy - cy) ** 2 < r**2
    elif shape == "square":
        m = (abs(xx - cx) < r) & (abs(yy - cy) < r)
    elif shape == "triangle":
        m = (yy - cy < r) & (yy - cy > -r) & (abs(xx - cx) < (yy - cy + r) / 2)
    else:
        m = ((abs(xx - cx) < r / 3) & (abs(yy - cy) < r)) | ((abs(yy - cy) < r / 3) & (abs(xx - cx) < r))
    img[m] = color
    return img


def make_synthetic_world(root: Path, n_per_split: int = 64, size: int = 64, seed: int = 0) -> Path:
    """Write a tiny world following the data contract: coloured shapes on plain backgrounds."""
    root = Path(root)
    (root / "scenes").mkdir(parents=True, exist_ok=True)
    classes = [f"{c} {s}" for s in _SHAPES for c in _COLORS]
    backs = list(_BACKS)
    rng = np.random.default_rng(seed)
    for k, split in enumerate(("gen_train", "eval_train", "test")):
        imgs, cls, caps, bg = [], [], [], []
        for _ in range(n_per_split):
            c = int(rng.integers(len(classes)))
            b = int(rng.integers(len(backs)))
            color, shape = classes[c].split()
            imgs.append(_draw(shape, _COLORS[color], _BACKS[backs[b]], size, rng))
            cls.append(c)
            bg.append(b)
            caps.append(f"a {color} {shape} on a {backs[b]} background")
        np.savez(
            root / "scenes" / f"{split}.npz",
            images=np.stack(imgs),
            class_id=np.array(cls, np.int32),
            captions=np.array(caps),
            background_id=np.array(bg, np.int16),
            style_id=np.zeros(n_per_split, np.int16),
            family_id=np.zeros(n_per_split, np.int8),
        )
    meta = {"classes": classes, "backgrounds": backs, "styles": ["flat"], "head": classes[:8], "tail": classes[8:]}
    (root / "scenes" / "meta.json").write_text(json.dumps(meta, indent=1))
    return root
