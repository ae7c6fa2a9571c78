"""Scene composition: sprite(s) at varied position and scale on a named background, with optional
colour/material, accessory, second object and style, plus a caption that says all of it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from . import effects
from .backgrounds import BACKGROUNDS
from .captions import bare, caption, noun_phrase

# Scene-kind probabilities. Kept as constants (not config) because they define the data world
# that downstream metrics are measured in.
P_PLAIN = 0.15  # plain light background (background_id -1)
P_TWO = 0.12  # "X next to Y"
P_COLOUR, P_MATERIAL = 0.12, 0.06
P_ACCESSORY = 0.3  # of animal scenes
P_STYLE = 0.15
SIZE_ONE, SIZE_TWO = (22, 52), (18, 34)  # longest side of an object, px
PLAIN_COLOURS = np.array([(248, 248, 248), (235, 235, 235), (245, 238, 225), (220, 232, 245), (245, 225, 232), (225, 242, 225)], np.float32) / 255


@dataclass
class World:
    """Everything a render worker needs; built once, shared with forked workers.

    sprites: list of trimmed (h, w, 4) uint8 RGBA; sprite_class: (M,) int class id;
    pools: per class id, the sprite indices allowed in this split; weights: (C,) class probabilities;
    bank: (B, K, 64, 64, 3) uint8 backgrounds.
    """
    sprites: list[np.ndarray]
    sprite_class: np.ndarray
    family: np.ndarray
    animal: np.ndarray
    face: np.ndarray
    names: list[str]
    pools: list[np.ndarray]
    weights: np.ndarray
    bank: np.ndarray


def trim(rgba: np.ndarray) -> np.ndarray:
    """Crop an (H, W, 4) sprite to its opaque bounding box (emoji PNGs have uneven padding)."""
    ys, xs = np.nonzero(rgba[..., 3] > 8)
    if len(ys) == 0:
        return rgba
    return rgba[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]


def scaled(sprite: np.ndarray, size: float) -> np.ndarray:
    """uint8 (h, w, 4) -> float32 (h', w', 4) in [0, 1] with max(h', w') == round(size)."""
    h, w = sprite.shape[:2]
    k = size / max(h, w)
    nh, nw = max(2, round(h * k)), max(2, round(w * k))
    img = Image.fromarray(sprite, "RGBA").resize((nw, nh), Image.LANCZOS)  # Pillow resizes RGBA premultiplied
    return np.asarray(img, np.float32) / 255


def composite(canvas: np.ndarray, sprite: np.ndarray, x: int, y: int, alpha_scale: float = 1.0) -> None:
    """Alpha-blend sprite (h, w, 4) onto canvas (64, 64, 3) with top-left at (x, y); clips at edges."""
    h, w = sprite.shape[:2]
    y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + h, 64), min(x + w, 64)
    if y0 >= y1 or x0 >= x1:
        return
    s = sprite[y0 - y: y1 - y, x0 - x: x1 - x]
    a = s[..., 3:4] * alpha_scale
    canvas[y0:y1, x0:x1] = s[..., :3] * a + canvas[y0:y1, x0:x1] * (1 - a)


def place(rng: np.random.Generator, h: int, w: int, floor: tuple[float, float], xlo: float, xhi: float) -> tuple[int, int]:
    """Top-left (x, y) so the object's bottom is in the floor band and it stays inside the image."""
    bottom = rng.uniform(*floor) * 64
    y = int(np.clip(bottom - h, 0, 64 - h)) if h <= 64 else 0
    x = int(rng.uniform(xlo, max(xlo, xhi - w)))
    return x, y


def render_scene(rng: np.random.Generator, world: World, cls: int):
    """One scene -> (image (64, 64, 3) uint8, caption, background_id, style_id, family_id)."""
    bg_id = -1 if rng.random() < P_PLAIN else int(rng.integers(len(BACKGROUNDS)))
    bg = None if bg_id < 0 else BACKGROUNDS[bg_id]
    if bg is None:
        col = PLAIN_COLOURS[rng.integers(len(PLAIN_COLOURS))]
        canvas = np.broadcast_to(col - 0.04 * np.linspace(0, 1, 64, dtype=np.float32)[:, None, None], (64, 64, 3)).copy()
    else:
        canvas = world.bank[bg_id, rng.integers(world.bank.shape[1])].astype(np.float32) / 255
        if rng.random() < 0.5:
            canvas = canvas[:, ::-1].copy()
    backdrop = canvas.copy()
    floor = bg.floor if bg is not None else (0.45, 1.0)

    classes = [cls]
    if rng.random() < P_TWO:
        classes.append(int(rng.choice(len(world.weights), p=world.weights)))
    two = len(classes) == 2
    phrases, tags, family = [], [], -1
    for i, c in enumerate(classes):
        idx = int(rng.choice(world.pools[c]))
        family = family if family >= 0 else int(world.family[idx])
        sprite = scaled(world.sprites[idx], rng.uniform(*(SIZE_TWO if two else SIZE_ONE)))
        mod = acc = None
        r = rng.random()
        if r < P_COLOUR:
            mod = list(effects.COLOURS)[rng.integers(len(effects.COLOURS))]
            sprite = effects.tint(sprite, mod)
        elif r < P_COLOUR + P_MATERIAL:
            mod = effects.MATERIALS[rng.integers(2)]
            sprite = effects.material(sprite, mod, rng)
        if not two and world.animal[idx] and rng.random() < P_ACCESSORY:
            acc = effects.ACCESSORIES[rng.integers(len(effects.ACCESSORIES))]
            sprite = effects.wear(sprite, acc, bool(world.face[idx]))
        h, w = sprite.shape[:2]
        xlo, xhi = (0, 64) if not two else ((0, 34) if i == 0 else (30, 64))
        x, y = place(rng, h, w, floor, xlo, xhi)
        if bg is not None and bg.name == "mirror":  # faint upside-down reflection under the object
            composite(canvas, sprite[::-1], x, y + h, 0.35)
        composite(canvas, sprite, x, y)
        if bg is not None and bg.submerge:  # water covers the lowest quarter: "floating"
            wl = y + int(h * 0.75)
            canvas[wl:y + h, max(x, 0):x + w] = 0.3 * canvas[wl:y + h, max(x, 0):x + w] + 0.7 * backdrop[wl:y + h, max(x, 0):x + w]
        word = world.names[c]
        phrases.append(noun_phrase(word, mod, acc))
        tags.append(bare(word, mod))
    joiner = [" next to ", " and "][rng.integers(2)] if two else ""
    subject, subject_bare = joiner.join(phrases), (" and ".join(tags))
    style_id = int(rng.integers(len(effects.STYLES))) if rng.random() < P_STYLE else -1
    if style_id >= 0:
        canvas = effects.style(canvas, effects.STYLES[style_id], rng)
    text = caption(rng, subject, subject_bare, bg, effects.STYLES[style_id] if style_id >= 0 else None)
    img = np.clip(canvas * 255 + 0.5, 0, 255).astype(np.uint8)
    return img, text, bg_id, style_id, family


def render_chunk(world: World, seed_words: tuple[int, ...], n: int) -> dict[str, np.ndarray]:
    """n scenes from one SeedSequence, so results do not depend on the number of workers."""
    rng = np.random.default_rng(np.random.SeedSequence(list(seed_words)))
    cls = rng.choice(len(world.weights), size=n, p=world.weights)
    out = {"images": np.empty((n, 64, 64, 3), np.uint8), "class_id": cls.astype(np.int32),
           "background_id": np.empty(n, np.int16), "style_id": np.empty(n, np.int16), "family_id": np.empty(n, np.int8)}
    caps = []
    for i in range(n):
        img, text, b, s, f = render_scene(rng, world, int(cls[i]))
        out["images"][i], out["background_id"][i], out["style_id"][i], out["family_id"][i] = img, b, s, f
        caps.append(text)
    out["captions"] = np.array(caps, dtype=str)
    return out
