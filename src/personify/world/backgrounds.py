"""Procedural 64x64 backgrounds named by DreamBench's prompt words.

Each painter takes a numpy Generator and returns (64, 64, 3) float32 in [0, 1]. They are simple
(gradients, noise, a few shapes) but distinguishable at 64 px. `Background.floor` is the range
(fraction of height) where an object's bottom edge may sit, so things stand on the ground and
buildings stay behind them; `submerge` paints water over the object's lower part ("floating").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

H = 64
YY, XX = np.mgrid[0:H, 0:H].astype(np.float32) / (H - 1)  # (64, 64) each, in [0, 1]


def noise(rng: np.random.Generator, cells: int | tuple[int, int]) -> np.ndarray:
    """(64, 64) smooth value noise in [0, 1]: a cells-sized random grid, bicubic-upsampled."""
    ch, cw = (cells, cells) if isinstance(cells, int) else cells
    small = rng.random((ch, cw)).astype(np.float32)
    return np.clip(np.asarray(Image.fromarray(small, "F").resize((H, H), Image.BICUBIC)), 0, 1)


def rgb(*c: float) -> np.ndarray:
    return np.array(c, np.float32) / 255.0


def lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per-pixel mix of two colours; t (64, 64) -> (64, 64, 3)."""
    return a + (b - a) * t[..., None]


def paint(img: np.ndarray, mask: np.ndarray, color: np.ndarray | tuple) -> None:
    img[mask] = color if isinstance(color, np.ndarray) and color.ndim == 1 else np.asarray(color, np.float32)


def ellipse(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    return ((XX - cx) / rx) ** 2 + ((YY - cy) / ry) ** 2 <= 1


def sky(rng, top=(120, 180, 235), bottom=(200, 225, 250)) -> np.ndarray:
    j = rng.uniform(-20, 20, 3)
    return lerp(rgb(*(np.array(top) + j)), rgb(*(np.array(bottom) + j)), YY)


def clouds(img, rng, horizon: float, n: int = 3) -> None:
    for _ in range(rng.integers(0, n + 1)):
        cx, cy = rng.uniform(0, 1), rng.uniform(0.05, horizon * 0.7)
        for dx in (-0.06, 0, 0.06):
            paint(img, ellipse(cx + dx, cy + rng.uniform(-0.02, 0.02), 0.07, 0.035), rgb(248, 250, 255))


def beach(rng):
    img = sky(rng)
    clouds(img, rng, 0.35)
    sea_top, sand_top = rng.uniform(0.3, 0.4), rng.uniform(0.48, 0.58)
    sea = lerp(rgb(30, 110, 180), rgb(60, 170, 200), (YY - sea_top) / (sand_top - sea_top))
    sea += 0.12 * (np.sin(YY * 90 + XX * 8 + rng.uniform(0, 6)) > 0.8)[..., None]
    img = np.where((YY >= sea_top)[..., None], sea, img)
    sand = lerp(rgb(225, 200, 150), rgb(240, 220, 175), noise(rng, 12)) - 0.05 * noise(rng, 32)[..., None]
    shore = sand_top + 0.02 * np.sin(XX * 12 + rng.uniform(0, 6))
    img = np.where((YY >= shore)[..., None], sand, img)
    paint(img, (np.abs(YY - shore) < 0.012), rgb(250, 250, 245))  # foam line
    return img


def snow(rng):
    img = sky(rng, (170, 185, 205), (215, 225, 235))
    horizon = rng.uniform(0.3, 0.45) + 0.04 * noise(rng, 4)
    ground = lerp(rgb(215, 228, 242), rgb(250, 252, 255), noise(rng, 8))
    img = np.where((YY >= horizon)[..., None], ground, img)
    flakes = rng.random((H, H)) < 0.025
    paint(img, flakes, rgb(255, 255, 255))
    return img


def jungle(rng):
    img = lerp(rgb(20, 60, 25), rgb(50, 110, 40), noise(rng, 6))
    for _ in range(rng.integers(25, 40)):
        c = rgb(*rng.uniform([20, 90, 20], [90, 190, 70]))
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.14)
        ang = rng.uniform(0, np.pi)
        u = (XX - cx) * np.cos(ang) + (YY - cy) * np.sin(ang)
        v = -(XX - cx) * np.sin(ang) + (YY - cy) * np.cos(ang)
        paint(img, (u / r) ** 2 + (v / (r * 0.35)) ** 2 <= 1, c)  # a leaf: thin rotated ellipse
    for x in rng.uniform(0, 1, rng.integers(1, 4)):
        paint(img, np.abs(XX - x - 0.03 * np.sin(YY * 9)) < 0.01, rgb(60, 90, 30))  # vines
    return img


def city(rng):
    img = sky(rng, (150, 185, 225), (230, 215, 200))
    x = -0.05
    while x < 1.0:
        w, top = rng.uniform(0.1, 0.22), rng.uniform(0.1, 0.55)
        col = rgb(*rng.uniform([80, 85, 95], [160, 165, 180]))
        bld = (XX >= x) & (XX < x + w) & (YY >= top)
        paint(img, bld, col)
        win = bld & (((XX - x) * H) % 4 < 1.5) & (((YY - top) * H) % 5 < 2) & (YY > top + 0.03)
        paint(img, win & (rng.random((H, H)) < 0.6), rgb(250, 230, 140))
        x += w + rng.uniform(0.0, 0.03)
    paint(img, YY > 0.82, rgb(95, 95, 100))
    return img


def mountain(rng):
    img = sky(rng)
    clouds(img, rng, 0.3)
    for _ in range(rng.integers(2, 4)):
        px, py, w = rng.uniform(0.1, 0.9), rng.uniform(0.12, 0.35), rng.uniform(0.35, 0.6)
        m = YY >= py + np.abs(XX - px) * (0.75 - py) / w * 1.6
        shade = rgb(*rng.uniform([100, 100, 110], [140, 130, 140]))
        paint(img, m & (YY < 0.75), shade)
        paint(img, m & (YY < py + 0.09), rgb(245, 248, 252))  # snow cap
    meadow = lerp(rgb(70, 140, 50), rgb(110, 175, 70), noise(rng, 10))
    return np.where((YY >= 0.72 + 0.02 * noise(rng, 5))[..., None], meadow, img)


def wooden_floor(rng):
    base = rgb(*rng.uniform([130, 80, 40], [185, 125, 75]))
    n = rng.integers(5, 8)  # planks across the image
    planks = np.floor(YY * n * 0.999).astype(int)
    tone = rng.uniform(-0.08, 0.08, n)[planks]
    grain = 0.06 * np.sin(XX * rng.uniform(30, 60) + noise(rng, (16, 3)) * 12)
    img = base + (tone + grain)[..., None]
    paint(img, (YY * n) % 1 < 0.09, base * 0.55)  # dark seams between planks
    return img


def pink_fabric(rng):
    folds = 0.5 + 0.5 * np.sin(XX * rng.uniform(8, 16) + YY * rng.uniform(-6, 6) + 3 * noise(rng, 4))
    img = lerp(rgb(220, 120, 160), rgb(250, 185, 210), folds)
    weave = ((np.arange(H)[:, None] + np.arange(H)[None, :]) % 2).astype(np.float32)
    return img - 0.03 * weave[..., None]


def water(rng, top=(40, 120, 190), bottom=(20, 70, 140), crest=(200, 230, 250)):
    img = lerp(rgb(*top), rgb(*bottom), YY)
    waves = np.sin(XX * rng.uniform(15, 30) + np.sin(YY * 40) * 2 + YY * 80 + rng.uniform(0, 6))
    paint(img, waves > 0.85, rgb(*crest))
    return img


def milk(rng):
    return water(rng, (250, 248, 240), (235, 230, 215), (255, 255, 255)) - 0.04 * noise(rng, 6)[..., None]


def sunflowers(rng):
    img = sky(rng)
    grass = lerp(rgb(50, 120, 35), rgb(100, 170, 60), noise(rng, 16))
    img = np.where((YY >= 0.25)[..., None], grass, img)
    for _ in range(rng.integers(6, 12)):
        cx, cy = rng.uniform(0, 1), rng.uniform(0.28, 1)
        r = 0.03 + 0.05 * cy
        paint(img, ellipse(cx, cy, r, r), rgb(250, 200, 30))
        paint(img, ellipse(cx, cy, r * 0.45, r * 0.45), rgb(100, 60, 20))
    return img


def dirt_road(rng):
    img = sky(rng)
    hz = rng.uniform(0.3, 0.4)
    img = np.where((YY >= hz)[..., None], lerp(rgb(70, 140, 50), rgb(100, 160, 60), noise(rng, 10)), img)
    vx = rng.uniform(0.35, 0.65)
    half = 0.02 + (YY - hz) * 0.8
    road = (YY >= hz) & (np.abs(XX - vx - (YY - hz) * rng.uniform(-0.3, 0.3)) < half)
    dirt = lerp(rgb(140, 100, 60), rgb(185, 145, 100), noise(rng, 20))
    return np.where(road[..., None], dirt, img)


def cobblestone(rng):
    n = 8  # stones per row; centres jittered on a grid, then nearest-centre (Voronoi) cells
    gy, gx = np.mgrid[0:n + 1, 0:n + 1].astype(np.float32)
    cy = (gy + 0.5 + rng.uniform(-0.3, 0.3, gy.shape)) / n
    cx = (gx + 0.5 * (gy % 2) + rng.uniform(-0.3, 0.3, gx.shape)) / n
    d = np.sqrt((XX[..., None] - cx.ravel()) ** 2 + (YY[..., None] - cy.ravel()) ** 2)  # (64, 64, K)
    part = np.partition(d, 1, axis=-1)
    cell = d.argmin(-1)
    tone = rng.uniform(0.35, 0.65, cx.size)[cell]
    img = np.repeat(tone[..., None], 3, -1) * rgb(255, 245, 230)
    paint(img, part[..., 1] - part[..., 0] < 0.012, rgb(50, 45, 40))  # mortar
    return img


def blue_house(rng):
    img = sky(rng)
    x0, w = rng.uniform(0.05, 0.35), rng.uniform(0.45, 0.6)
    top, roof = rng.uniform(0.3, 0.4), rng.uniform(0.12, 0.18)
    paint(img, (XX >= x0) & (XX < x0 + w) & (YY >= top) & (YY < 0.8), rgb(*rng.uniform([50, 90, 170], [90, 140, 220])))
    apex = x0 + w / 2
    paint(img, (YY < top) & (YY >= top - roof + np.abs(XX - apex) * roof / (w / 2 + 0.04)), rgb(90, 50, 40))
    for wx in (x0 + w * 0.15, x0 + w * 0.65):
        paint(img, (XX >= wx) & (XX < wx + w * 0.2) & (YY >= top + 0.08) & (YY < top + 0.2), rgb(240, 240, 230))
    paint(img, (np.abs(XX - apex) < w * 0.09) & (YY >= 0.62) & (YY < 0.8), rgb(245, 245, 245))
    paint(img, YY >= 0.8, rgb(80, 150, 60))
    return img


def forest(rng):
    img = lerp(rgb(40, 90, 45), rgb(80, 130, 70), noise(rng, 5))
    for x in np.sort(rng.uniform(0, 1, rng.integers(5, 9))):
        paint(img, (np.abs(XX - x) < rng.uniform(0.015, 0.04)) & (YY > 0.2), rgb(80, 55, 35))
        paint(img, ellipse(x, rng.uniform(0.05, 0.25), 0.12, 0.14), rgb(*rng.uniform([30, 90, 30], [70, 140, 60])))
    return img


def purple_rug(rng):
    img = forest(rng)
    img = np.where((YY > 0.6)[..., None], lerp(rgb(60, 90, 40), rgb(90, 120, 50), noise(rng, 10)), img)
    top, skew = rng.uniform(0.6, 0.68), rng.uniform(0.05, 0.15)
    rug = (YY >= top) & (YY < 0.97) & (XX > 0.06 + skew * (1 - YY)) & (XX < 0.94 - skew * (1 - YY))
    stripes = (np.sin(YY * 120) > 0.6) | (np.abs(XX - 0.5) < 0.02)
    paint(img, rug, rgb(120, 50, 150))
    paint(img, rug & stripes, rgb(170, 100, 200))
    return img


def wheat_field(rng):
    img = sky(rng, (110, 170, 230), (230, 230, 210))
    hz = rng.uniform(0.35, 0.5)
    stalks = noise(rng, (4, 48)) * 0.6 + noise(rng, 16) * 0.4
    wheat = lerp(rgb(200, 150, 50), rgb(245, 210, 100), stalks)
    return np.where((YY >= hz + 0.03 * np.sin(XX * 7))[..., None], wheat, img)


def autumn(rng):
    img = sky(rng, (150, 190, 230), (235, 220, 190))
    tx = rng.uniform(0.15, 0.85)
    paint(img, (np.abs(XX - tx) < 0.05) & (YY > 0.35), rgb(90, 60, 35))
    leaves = [rgb(220, 80, 30), rgb(240, 150, 30), rgb(200, 40, 30), rgb(245, 200, 50)]
    for _ in range(30):
        paint(img, ellipse(tx + rng.normal(0, 0.22), rng.uniform(0.02, 0.45), 0.07, 0.06), leaves[rng.integers(4)])
    ground = lerp(rgb(170, 100, 40), rgb(220, 140, 50), noise(rng, 24))
    return np.where((YY > 0.78)[..., None], ground, img)


def white_rug(rng):
    fluff = 0.6 * noise(rng, 32) + 0.4 * rng.random((H, H)).astype(np.float32)
    return lerp(rgb(215, 212, 205), rgb(252, 250, 245), fluff) - 0.05 * YY[..., None]


def eiffel(rng):
    img = sky(rng, (140, 180, 230), (240, 220, 210))
    cx = rng.uniform(0.3, 0.7)
    half = 0.015 + 0.28 * YY ** 2.2  # the tower flares out towards its base
    tower = (YY > 0.05) & (np.abs(XX - cx) < half) & (YY < 0.82)
    arch = ellipse(cx, 0.82, 0.12, 0.12)
    lattice = ((XX * H + YY * H) % 4 < 1) | ((XX * H - YY * H) % 4 < 1) | (np.abs(XX - cx) > half - 0.02)
    paint(img, tower & ~arch & (lattice | (YY < 0.3)), rgb(110, 90, 75))
    paint(img, YY >= 0.82, rgb(90, 150, 70))
    return img


def mirror(rng):
    streak = 0.5 + 0.5 * np.sin((XX + YY) * rng.uniform(5, 9) + rng.uniform(0, 6))
    img = lerp(rgb(175, 185, 195), rgb(235, 240, 245), streak)
    paint(img, (XX < 0.03) | (XX > 0.97) | (YY < 0.03) | (YY > 0.97), rgb(150, 120, 70))  # frame
    return img


def crowded_street(rng):
    img = lerp(rgb(150, 150, 155), rgb(185, 185, 190), noise(rng, 6))
    for _ in range(rng.integers(10, 16)):  # people: a coloured body and a round head
        px, py = rng.uniform(0, 1), rng.uniform(0.15, 0.55)
        paint(img, ellipse(px, py + 0.08, 0.035, 0.09), rgb(*rng.uniform(30, 230, 3)))
        paint(img, ellipse(px, py - 0.04, 0.025, 0.03), rgb(*rng.choice([[240, 200, 170], [160, 110, 70], [90, 60, 40]])))
    side = (YY > 0.72)
    tiles = ((XX * H) % 10 < 1) | ((YY * H) % 6 < 1)
    paint(img, side, rgb(205, 200, 195))
    paint(img, side & tiles, rgb(150, 145, 140))
    return img


def grass(rng):
    blades = noise(rng, (6, 48)) * 0.6 + 0.4 * rng.random((H, H)).astype(np.float32)
    return lerp(rgb(50, 120, 35), rgb(120, 190, 70), blades)


def desert(rng):
    img = sky(rng, (90, 160, 230), (245, 225, 190))
    dune = 0.45 + 0.08 * np.sin(XX * rng.uniform(4, 8) + rng.uniform(0, 6))
    sand = lerp(rgb(210, 160, 90), rgb(240, 200, 130), noise(rng, 8))
    return np.where((YY >= dune)[..., None], sand, img)


@dataclass(frozen=True)
class Background:
    name: str  # short name used in "X, <name>" captions
    phrase: str  # the DreamBench phrase: "a X <phrase>"
    alts: tuple[str, ...]  # other wordings: "a X <alt>"
    floor: tuple[float, float]  # where the object's bottom edge sits (fraction of height)
    paint: Callable[[np.random.Generator], np.ndarray]
    submerge: bool = False


BACKGROUNDS: tuple[Background, ...] = (
    Background("beach", "on the beach", ("lying on the sand at the beach", "on a sandy beach by the sea"), (0.68, 0.97), beach),
    Background("snow", "in the snow", ("standing in white snow", "in a snowy landscape"), (0.6, 0.97), snow),
    Background("jungle", "in the jungle", ("surrounded by jungle leaves", "in a dense green jungle"), (0.5, 0.97), jungle),
    Background("city", "with a city in the background", ("in front of city skyscrapers", "in the city"), (0.85, 0.98), city),
    Background("mountain", "with a mountain in the background", ("in front of snowy mountains", "in the mountains"), (0.8, 0.98), mountain),
    Background("wooden floor", "on top of a wooden floor", ("on a wooden floor", "standing on wooden planks"), (0.5, 0.97), wooden_floor),
    Background("pink fabric", "on top of pink fabric", ("lying on pink cloth", "on a pink blanket"), (0.4, 0.97), pink_fabric),
    Background("water", "floating on top of water", ("floating in blue water", "in the water"), (0.6, 0.85), water, True),
    Background("ocean of milk", "floating in an ocean of milk", ("floating in white milk", "in a sea of milk"), (0.6, 0.85), milk, True),
    Background("sunflowers", "on top of green grass with sunflowers around it", ("in a field of sunflowers", "on grass among sunflowers"), (0.6, 0.97), sunflowers),
    Background("dirt road", "on top of a dirt road", ("on a dusty dirt road", "in the middle of a dirt road"), (0.75, 0.97), dirt_road),
    Background("cobblestone street", "on a cobblestone street", ("on cobblestones", "on an old stone-paved street"), (0.5, 0.97), cobblestone),
    Background("blue house", "with a blue house in the background", ("in front of a blue house", "in the garden of a blue house"), (0.88, 0.98), blue_house),
    Background("purple rug", "on top of a purple rug in a forest", ("on a purple carpet among trees", "on a purple rug in the woods"), (0.8, 0.96), purple_rug),
    Background("wheat field", "with a wheat field in the background", ("in a golden wheat field", "in front of a field of wheat"), (0.75, 0.97), wheat_field),
    Background("autumn leaves", "with a tree and autumn leaves in the background", ("among autumn leaves", "under an autumn tree"), (0.85, 0.98), autumn),
    Background("white rug", "on top of a white rug", ("on a fluffy white rug", "lying on a white carpet"), (0.4, 0.97), white_rug),
    Background("eiffel tower", "with the Eiffel Tower in the background", ("in Paris in front of the Eiffel Tower", "near the Eiffel Tower"), (0.88, 0.98), eiffel),
    Background("mirror", "on top of a mirror", ("on a reflective mirror", "standing on a mirror"), (0.55, 0.7), mirror),
    Background("crowded street", "on top of the sidewalk in a crowded street", ("on a busy sidewalk full of people", "in a crowded street"), (0.85, 0.98), crowded_street),
    Background("grass", "on the grass", ("on a green lawn", "sitting in the grass"), (0.4, 0.97), grass),
    Background("desert", "in the desert", ("on desert sand dunes", "in a hot sandy desert"), (0.7, 0.97), desert),
    Background("forest", "in a forest", ("among the trees of a forest", "in the woods"), (0.8, 0.98), forest),
)
NAMES = [b.name for b in BACKGROUNDS]


def make_bank(rng: np.random.Generator, per_background: int) -> np.ndarray:
    """(B, K, 64, 64, 3) uint8: K painted variants of each background, reused with random flips."""
    out = np.empty((len(BACKGROUNDS), per_background, H, H, 3), np.uint8)
    for b, bg in enumerate(BACKGROUNDS):
        for k in range(per_background):
            out[b, k] = np.clip(bg.paint(rng) * 255 + 0.5, 0, 255).astype(np.uint8)
    return out
