"""Reading user photos: every odd file a phone, a scanner or an editor produces becomes RGB, or one
clear line saying which file is wrong and what to do.

Handled: EXIF rotation, RGBA/LA/palette-with-transparency (composited on white, not black),
CMYK, 16-bit and 32-bit greyscale (scaled, not clipped), huge JPEGs (decoded at reduced size),
decompression bombs, truncated and non-image files.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import PersonifyError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
# Sidecar and metadata files that may sit beside photos without a warning.
QUIET_SUFFIXES = (".txt", ".caption", ".json", ".yaml", ".yml", ".toml", ".md")
MAX_PIXELS = 400_000_000  # 20k x 20k; beyond that PIL's bomb check refuses, with our message.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def find_images(folder: Path, max_images: int = 10_000) -> list[Path]:
    """Image files in `folder` (not recursive), sorted by name so runs are reproducible."""
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise PersonifyError(f"{folder}: folder not found; pass the folder holding your subject photos")
    if not folder.is_dir():
        raise PersonifyError(f"{folder}: not a folder; pass the folder holding your subject photos")
    paths, skipped = [], []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.is_dir():
            continue
        if p.suffix.lower() in IMAGE_SUFFIXES:
            paths.append(p)
        elif p.suffix.lower() not in QUIET_SUFFIXES:
            skipped.append(p.name)
    if skipped:
        warnings.warn(f"{folder}: skipping {len(skipped)} non-image file(s): {', '.join(skipped[:5])}")
    if not paths:
        raise PersonifyError(f"{folder}: no images found; add 3-5 photos of your subject (.jpg, .png, .webp)")
    if len(paths) > max_images:
        raise PersonifyError(f"{folder}: {len(paths)} images is more than the limit {max_images}; pass a smaller folder")
    return paths


def load_rgb(path: Path, min_side: int = 0, target: int | None = None) -> Image.Image:
    """Open `path` as an RGB image, EXIF-rotated. `target` lets huge JPEGs decode at reduced size."""
    path = Path(path)
    try:
        with Image.open(path) as f:
            if target and f.format == "JPEG":
                f.draft("RGB", (2 * target, 2 * target))  # DCT-domain downscale: fast and memory-light
            f.load()
            img = ImageOps.exif_transpose(f)
    except Image.DecompressionBombError:
        raise PersonifyError(f"{path}: image is larger than {MAX_PIXELS // 1_000_000} megapixels; downscale it first") from None
    except UnidentifiedImageError:
        raise PersonifyError(f"{path}: not a readable image; re-export it as JPEG/PNG or remove it from the folder") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise PersonifyError(f"{path}: corrupt or truncated image ({str(e)[:80]}); re-export it or remove it from the folder") from None
    img = to_rgb(img)
    if min(img.size) < min_side:
        raise PersonifyError(
            f"{path}: image is {img.size[0]}x{img.size[1]} px, smaller than the minimum {min_side} px side; use a larger photo"
        )
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # PIL's convert("RGB") clips these at 255 (a 16-bit photo turns white); rescale instead.
        a = np.asarray(img).astype(np.float64)
        top = 65535.0 if mode.startswith("I;16") or a.max() > 255 else 255.0
        if mode == "F":
            top = max(float(a.max()), 1e-8)
        a = np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def resize_crop(img: Image.Image, size: int, center: bool = True, rng: np.random.Generator | None = None) -> Image.Image:
    """Resize the short side to `size` (Lanczos) and crop a `size` square (center or random)."""
    w, h = img.size
    s = size / min(w, h)
    img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.LANCZOS)
    w, h = img.size
    if center or rng is None:
        left, top = (w - size) // 2, (h - size) // 2
    else:
        left, top = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1))
    return img.crop((left, top, left + size, top + size))


def to_tensor(img: Image.Image):
    """PIL RGB -> float tensor in [-1, 1], (3, H, W), as the SD VAE expects."""
    import torch

    a = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()) / 127.5 - 1.0
    return a.permute(2, 0, 1)
