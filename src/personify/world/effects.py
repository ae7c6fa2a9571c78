"""Appearance changes that DreamBench prompts ask for: colour ("a red X"), material ("shiny",
"wet"), style (sketch, pixel art, watercolor) and accessories drawn on animals.

Sprites here are float32 premultiplied-free RGBA (h, w, 4) in [0, 1]; scenes are (64, 64, 3).
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

# colour word -> (dark, light) RGB endpoints; the sprite's luminance interpolates between them,
# which keeps its shading and outlines while replacing its hue.
COLOURS = {
    "red": ((0.35, 0.02, 0.02), (1.0, 0.35, 0.3)),
    "orange": ((0.4, 0.15, 0.0), (1.0, 0.7, 0.3)),
    "yellow": ((0.4, 0.32, 0.0), (1.0, 0.95, 0.45)),
    "green": ((0.02, 0.25, 0.05), (0.5, 0.95, 0.45)),
    "blue": ((0.02, 0.08, 0.35), (0.45, 0.65, 1.0)),
    "purple": ((0.2, 0.02, 0.3), (0.8, 0.5, 1.0)),
    "pink": ((0.45, 0.1, 0.25), (1.0, 0.75, 0.88)),
    "black": ((0.02, 0.02, 0.02), (0.38, 0.38, 0.4)),
    "white": ((0.6, 0.6, 0.62), (1.0, 1.0, 1.0)),
}
MATERIALS = ("shiny", "wet")
STYLES = ("sketch", "pixel art", "watercolor")
ACCESSORIES = ("a red hat", "a santa hat", "a black top hat", "sunglasses", "pink glasses", "a rainbow scarf")


def luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def tint(sprite: np.ndarray, colour: str) -> np.ndarray:
    dark, light = (np.array(c, np.float32) for c in COLOURS[colour])
    lum = luminance(sprite[..., :3])
    lum = (lum - lum.min()) / max(float(lum.max() - lum.min()), 1e-3)  # stretch so every sprite spans the range
    out = sprite.copy()
    out[..., :3] = dark + (light - dark) * lum[..., None]
    return out


def material(sprite: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """'shiny': more contrast plus a white specular highlight; 'wet': darker, bluer, with droplets."""
    out = sprite.copy()
    h, w = sprite.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w] / np.float32(max(h, w))
    if kind == "shiny":
        out[..., :3] = np.clip((out[..., :3] - 0.5) * 1.35 + 0.55, 0, 1)
        cx, cy = rng.uniform(0.25, 0.45) * w / max(h, w), rng.uniform(0.2, 0.4) * h / max(h, w)
        spec = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.006)[..., None]
        out[..., :3] = out[..., :3] * (1 - spec) + spec
    else:
        out[..., :3] = out[..., :3] * np.array([0.72, 0.78, 0.9], np.float32)
        drops = (rng.random((h, w)) < 0.035) & (sprite[..., 3] > 0.5)
        out[drops, :3] = np.array([0.85, 0.92, 1.0], np.float32)
    return out


def style(img: np.ndarray, name: str, rng: np.random.Generator) -> np.ndarray:
    """Whole-scene restyle; img (64, 64, 3) float32 in [0, 1]."""
    if name == "pixel art":  # 16x16 grid, 5 levels per channel, nearest upsample
        small = img.reshape(16, 4, 16, 4, 3).mean((1, 3))
        small = np.round(small * 4) / 4
        return np.repeat(np.repeat(small, 4, 0), 4, 1)
    lum = luminance(img)
    gy, gx = np.gradient(lum)
    edge = np.clip(np.hypot(gx, gy) * 4, 0, 1)
    if name == "sketch":  # pencil lines on paper, faint diagonal hatching in dark areas
        hatch = ((np.add.outer(np.arange(64), np.arange(64)) % 4) == 0) & (lum < 0.45)
        g = np.clip(0.97 - 1.3 * edge - 0.25 * hatch, 0, 1)
        return np.repeat(g[..., None], 3, -1) * np.array([1.0, 0.98, 0.93], np.float32)
    # watercolor: blurred, lighter, posterised washes, darker pigment at edges, paper grain
    pil = Image.fromarray((img * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.2))
    wash = np.asarray(pil, np.float32) / 255
    wash = np.round(wash * 6) / 6
    wash = 0.75 * wash + 0.25 - 0.25 * edge[..., None] * wash
    grain = rng.random((64, 64, 1)).astype(np.float32) * 0.06
    return np.clip(wash - grain + 0.03, 0, 1)


def _accessory_patch(kind: str, w: int) -> np.ndarray:
    """(h, w, 4) float32 RGBA drawing of the accessory at width w (h depends on kind)."""
    h = max(3, int(w * (0.7 if "hat" in kind else 0.4)))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u, v = (xx + 0.5) / w, (yy + 0.5) / h  # [0, 1] across the patch
    a = np.zeros((h, w, 4), np.float32)

    def put(mask, colour):
        a[mask] = (*colour, 1.0)

    if kind == "a red hat":
        put(((u - 0.5) / 0.32) ** 2 + ((v - 0.8) / 0.75) ** 2 <= 1, (0.85, 0.1, 0.1))
        put((v > 0.78) & (np.abs(u - 0.5) < 0.5), (0.7, 0.05, 0.05))
    elif kind == "a santa hat":
        put((v < 0.85) & (np.abs(u - 0.45 - 0.3 * (1 - v)) < 0.35 * v + 0.02), (0.85, 0.1, 0.1))
        put(v >= 0.75, (0.97, 0.97, 0.97))
        put(((u - 0.8) / 0.12) ** 2 + ((v - 0.1) / 0.14) ** 2 <= 1, (0.97, 0.97, 0.97))
    elif kind == "a black top hat":
        put((np.abs(u - 0.5) < 0.28) & (v < 0.85), (0.08, 0.08, 0.08))
        put((v > 0.6) & (v < 0.72) & (np.abs(u - 0.5) < 0.28), (0.6, 0.1, 0.1))
        put(v >= 0.85, (0.08, 0.08, 0.08))
    elif kind in ("sunglasses", "pink glasses"):
        lens = (((u - 0.27) / 0.22) ** 2 + ((v - 0.5) / 0.45) ** 2 <= 1) | (((u - 0.73) / 0.22) ** 2 + ((v - 0.5) / 0.45) ** 2 <= 1)
        bridge = (np.abs(v - 0.4) < 0.12) & (u > 0.4) & (u < 0.6)
        if kind == "sunglasses":
            put(lens | bridge, (0.05, 0.05, 0.08))
        else:
            inner = (((u - 0.27) / 0.12) ** 2 + ((v - 0.5) / 0.24) ** 2 <= 1) | (((u - 0.73) / 0.12) ** 2 + ((v - 0.5) / 0.24) ** 2 <= 1)
            put((lens & ~inner) | bridge, (1.0, 0.25, 0.65))
            a[inner] = (1.0, 0.6, 0.8, 0.6)  # pink-tinted lenses, half see-through
    else:  # rainbow scarf: horizontal stripes and a hanging end
        bands = np.array([(0.9, 0.1, 0.1), (1.0, 0.6, 0.1), (1.0, 0.9, 0.2), (0.2, 0.7, 0.2), (0.2, 0.4, 0.9), (0.5, 0.2, 0.7)], np.float32)
        m = (v < 0.55) | ((u > 0.6) & (u < 0.8))
        a[m, :3] = bands[np.minimum((u[m] * 6 + v[m] * 3).astype(int) % 6, 5)]
        a[m, 3] = 1.0
    return a


def wear(sprite: np.ndarray, kind: str, face: bool) -> np.ndarray:
    """Draw an accessory onto an animal sprite (h, w, 4); returns a (possibly taller) sprite.

    Head box: the whole sprite for face emoji ("dog face"); for full-body emoji the area around
    the topmost opaque column (usually the head of a side-view animal).
    """
    h, w = sprite.shape[:2]
    alpha = sprite[..., 3] > 0.5
    if face:
        hx0, hw, top, hh = 0, w, int(np.argmax(alpha.any(1))), h
    else:
        tops = np.where(alpha.any(0), alpha.argmax(0), h)
        k = max(5, w // 4)  # wide window: a broad head beats a thin raised tail or ear
        cx = int(np.argmin(np.convolve(np.pad(tops, k // 2, mode="edge"), np.ones(k) / k, "valid")[:w]))
        hw = max(8, int(w * 0.5))
        hx0, top, hh = int(np.clip(cx - hw // 2, 0, w - hw)), int(tops[cx]), max(6, int(h * 0.45))
    is_hat = "hat" in kind
    pw = max(5, int(hw * (0.62 if is_hat else 0.8 if "scarf" in kind else 0.72)))
    patch = _accessory_patch(kind, pw)
    ph = patch.shape[0]
    if is_hat:
        y0 = top + int(0.12 * hh) - ph  # brim sits slightly into the head
    elif "scarf" in kind:  # under the chin of a face emoji; at the neck of a full-body animal
        y0 = top + hh - ph // 2 if face else top + int(0.82 * hh) - ph // 3
    else:
        y0 = top + int(0.4 * hh) - ph // 2
    x0 = hx0 + (hw - pw) // 2
    pad = max(0, -y0)  # hats may stick out above the sprite: grow the canvas upwards
    out = np.zeros((h + pad, w, 4), np.float32)
    out[pad:] = sprite
    y0 += pad
    y1, x1 = min(y0 + ph, out.shape[0]), min(x0 + pw, w)
    region, p = out[y0:y1, x0:x1], patch[: y1 - y0, : x1 - x0]
    pa, ra = p[..., 3:4], region[..., 3:4]
    oa = pa + ra * (1 - pa)  # straight-alpha "over"
    region[..., :3] = (p[..., :3] * pa + region[..., :3] * ra * (1 - pa)) / np.maximum(oa, 1e-6)
    region[..., 3:4] = oa
    return out
