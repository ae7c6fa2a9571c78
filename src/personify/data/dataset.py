"""The subject dataset: validated photos, their captions, and their cached VAE latents.

Latents are encoded once (the VAE is frozen for every method) and cached as the posterior's mean
and std, so each step still draws a fresh sample z = μ + σ·ε like an uncached run does.
"""
from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ..errors import PersonifyError
from .images import find_images, load_rgb, resize_crop, to_tensor

MANY_IMAGES = 50  # DreamBooth-style methods expect 3-5; more still works, with a note.


@dataclass
class SubjectImage:
    path: Path
    image: Image.Image  # RGB, resolution x resolution
    caption: str | None  # from a sidecar `name.txt`, if present


class SubjectImages:
    """Load and validate every image in `folder` at `resolution` (square, center crop by default)."""

    def __init__(self, folder: str | Path, resolution: int, center_crop: bool = True, max_images: int = 10_000, subject: bool = True):
        self.folder = Path(folder).expanduser()
        self.resolution = resolution
        paths = find_images(self.folder, max_images)
        min_side = max(8, resolution // 4)
        self.items: list[SubjectImage] = []
        small = []
        for p in paths:
            img = load_rgb(p, min_side=min_side, target=resolution)
            if min(img.size) < resolution:
                small.append(p.name)
            sidecar = p.with_suffix(".txt")
            caption = sidecar.read_text().strip() if sidecar.is_file() else None
            self.items.append(SubjectImage(p, resize_crop(img, resolution, center=center_crop), caption or None))
        if small:
            warnings.warn(f"{self.folder}: {len(small)} image(s) smaller than {resolution} px are upscaled (blurry): {', '.join(small[:5])}")
        if not subject:  # class/regularization sets: counts are the user's choice
            return
        if len(self.items) == 1:
            warnings.warn(f"{self.folder}: only 1 image; it works, but 3-5 photos of the subject in different settings generalize better")
        elif len(self.items) > MANY_IMAGES:
            warnings.warn(f"{self.folder}: {len(self.items)} images; subject methods are designed for 3-5, consider fewer steps per image")

    def __len__(self) -> int:
        return len(self.items)

    def pixels(self, flip: bool = False) -> torch.Tensor:
        """(N, 3, R, R) in [-1, 1]."""
        x = torch.stack([to_tensor(it.image) for it in self.items])
        return x.flip(-1) if flip else x

    def fingerprint(self) -> str:
        h = hashlib.sha256(str(self.resolution).encode())
        for it in self.items:
            h.update(it.path.name.encode())
            h.update(it.image.tobytes())
        return h.hexdigest()[:16]


@torch.no_grad()
def encode_latents(vae, pixels: torch.Tensor, batch: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of the VAE, (N, 4, R/8, R/8) each, unscaled."""
    means, stds = [], []
    p = next(vae.parameters())
    for i in range(0, len(pixels), batch):
        dist = vae.encode(pixels[i : i + batch].to(p.device, p.dtype)).latent_dist
        means.append(dist.mean.float().cpu())
        stds.append(dist.std.float().cpu())
    return torch.cat(means), torch.cat(stds)


def load_class_folder(folder: Path, resolution: int) -> SubjectImages:
    try:
        return SubjectImages(folder, resolution, subject=False)
    except PersonifyError as e:
        raise PersonifyError(f"class images: {e}") from None
