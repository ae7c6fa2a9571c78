"""mini-DreamBench: 30 held-out subjects from the Fluent emoji family, which pretraining never sees.

The shipped assets (`src/personify/assets/mini_dreambench/`) are the output of
`python -m personify.world.dreambench`; regenerating them needs npm (to fetch `fluentui-emoji`)
and `cairosvg` (SVG -> PNG), neither of which users need. Each subject gets 5 images of 64 px:
varied position/scale, plain or light backgrounds, one mirrored, like DreamBench's casual photos.
"""
from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from .config import WorldError, default_cache_dir
from .fetch import HELDOUT_FAMILY, npm_pack
from .render import composite, scaled, trim

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "mini_dreambench"
PROMPTS_SRC = Path("/work/shared/dreambench/prompts_and_classes.txt")
N_IMAGES = 5

# DreamBench subject -> (DreamBench class, Fluent icon, world class word, substitution note).
# Classes are the world's class words, so prior-preservation / class prompts use known words.
SUBJECTS = {
    "backpack": ("backpack", "flat/backpack", "backpack", "backpack (flat)"),
    "backpack_dog": ("backpack", "modern/backpack", "backpack", "no dog backpack emoji; backpack in the Fluent 'modern' (shaded) style"),
    "bear_plushie": ("stuffed animal", "flat/teddy-bear", "teddy bear", "teddy bear"),
    "berry_bowl": ("bowl", "flat/bowl-with-spoon", "bowl", "bowl with spoon"),
    "can": ("can", "flat/canned-food", "can", "canned food"),
    "candle": ("candle", "flat/candle", "candle", "candle"),
    "cat": ("cat", "flat/cat", "cat", "cat (full body)"),
    "cat2": ("cat", "flat/black-cat", "cat", "black cat"),
    "clock": ("clock", "flat/alarm-clock", "clock", "alarm clock"),
    "colorful_sneaker": ("sneaker", "flat/running-shoe", "sneaker", "running shoe"),
    "dog": ("dog", "flat/dog", "dog", "dog (full body)"),
    "dog2": ("dog", "flat/dog-face", "dog", "dog face"),
    "dog3": ("dog", "flat/poodle", "dog", "poodle"),
    "dog5": ("dog", "flat/guide-dog", "dog", "guide dog"),
    "dog6": ("dog", "flat/service-dog", "dog", "service dog"),
    "dog7": ("dog", "modern/dog", "dog", "dog in the 'modern' (shaded) style"),
    "dog8": ("dog", "modern/poodle", "dog", "poodle in the 'modern' (shaded) style"),
    "duck_toy": ("toy", "flat/duck", "duck", "duck (no rubber duck emoji)"),
    "fancy_boot": ("boot", "flat/womans-boot", "boot", "woman's boot"),
    "grey_sloth_plushie": ("stuffed animal", "flat/sloth", "sloth", "sloth (no plush emoji)"),
    "monster_toy": ("toy", "flat/alien-monster", "alien monster", "alien monster (space invader)"),
    "pink_sunglasses": ("glasses", "flat/sunglasses", "glasses", "sunglasses"),
    "poop_emoji": ("toy", "flat/pile-of-poo", "poop emoji", "pile of poo"),
    "rc_car": ("toy", "flat/racing-car", "race car", "racing car"),
    "red_cartoon": ("cartoon", "flat/ogre", "ogre", "ogre (red cartoon face)"),
    "robot_toy": ("toy", "flat/robot", "robot", "robot face"),
    "shiny_sneaker": ("sneaker", "modern/running-shoe", "sneaker", "running shoe in the 'modern' (shaded) style"),
    "teapot": ("teapot", "flat/teapot", "teapot", "teapot"),
    "vase": ("vase", "flat/amphora", "vase", "amphora"),
    "wolf_plushie": ("stuffed animal", "flat/wolf", "wolf", "wolf (no plush emoji)"),
}
LIVE_CLASSES = {"dog", "cat"}  # DreamBench uses the live-subject prompt list for these
BACKDROPS = [(250, 250, 250), (238, 238, 236), (246, 240, 228), (226, 234, 244), (242, 232, 236), (232, 240, 228)]
LICENSE = {"family": "Fluent Emoji (flat/modern) via npm fluentui-emoji@1.3.0", "license": "MIT",
           "attribution": "Fluent Emoji (c) Microsoft Corporation, MIT License; npm repackaging (c) 2022 Mohammad Abu Mattar, MIT License"}


def parse_prompts(text: str) -> dict[str, list[str]]:
    """The two `prompt_list = [...]` blocks of DreamBench's prompts_and_classes.txt, with
    `'...'.format(unique_token, class_token)` reduced to the '{0} {1}' template string."""
    blocks = re.findall(r"prompt_list = \[(.*?)\]", text, re.S)
    if len(blocks) != 2:
        raise WorldError("prompts_and_classes.txt: expected 2 prompt lists (object, live); check the file")
    lists = [re.findall(r"'([^']*)'\.format", b) for b in blocks]
    return {"object": lists[0], "live": lists[1]}


def render_svg(svg: bytes, px: int = 192) -> np.ndarray:
    """SVG bytes -> (h, w, 4) uint8 RGBA trimmed to its opaque box."""
    try:
        import cairosvg
    except ImportError:
        raise WorldError("regenerating mini-DreamBench needs cairosvg; run `pip install cairosvg`") from None
    png = cairosvg.svg2png(bytestring=svg, output_width=px, output_height=px)
    return trim(np.asarray(Image.open(io.BytesIO(png)).convert("RGBA")))


def subject_images(sprite: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """N_IMAGES (64, 64, 3) uint8 shots: sizes 30..54 px, varied position, light backdrops."""
    out = []
    sizes = rng.permutation(np.linspace(30, 54, N_IMAGES))
    for k in range(N_IMAGES):
        col = np.array(BACKDROPS[rng.integers(len(BACKDROPS))], np.float32) / 255
        canvas = (col - 0.05 * np.linspace(0, 1, 64, dtype=np.float32)[:, None, None]) * np.ones((64, 64, 3), np.float32)
        s = scaled(sprite, float(sizes[k]))
        if k == N_IMAGES - 1:
            s = s[:, ::-1]  # one mirrored view, as if photographed from the other side
        h, w = s.shape[:2]
        composite(canvas, s, int(rng.integers(0, 64 - w + 1)), int(rng.integers(0, 64 - h + 1)))
        out.append(np.clip(canvas * 255 + 0.5, 0, 255).astype(np.uint8))
    return out


def make_assets(out: Path = ASSETS, cache: Path | None = None, seed: int = 0) -> Path:
    tgz = npm_pack(HELDOUT_FAMILY[2], (cache or default_cache_dir()) / "npm")
    with tarfile.open(tgz, "r:gz") as tar:
        svgs = {f"package/icons/{icon}.svg": None for _, icon, _, _ in SUBJECTS.values()}
        for m in tar:
            if m.name in svgs:
                svgs[m.name] = tar.extractfile(m).read()
    missing = [k for k, v in svgs.items() if v is None]
    if missing:
        raise WorldError(f"{tgz.name} lacks {missing[0]}; update SUBJECTS in personify/world/dreambench.py")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    meta = []
    for name, (db_class, icon, word, note) in SUBJECTS.items():
        sprite = render_svg(svgs[f"package/icons/{icon}.svg"])
        (out / name).mkdir()
        for k, img in enumerate(subject_images(sprite, rng)):
            Image.fromarray(img).save(out / name / f"{k:02d}.png", optimize=True)
        meta.append({"subject": name, "class": word, "dreambench_class": db_class,
                     "prompt_kind": "live" if db_class in LIVE_CLASSES else "object",
                     "source_emoji": f"fluentui-emoji/icons/{icon}.svg", "substitution": note,
                     "images": [f"{name}/{k:02d}.png" for k in range(N_IMAGES)], **LICENSE})
    (out / "subjects.json").write_text(json.dumps(meta, indent=1))
    prompts = parse_prompts(PROMPTS_SRC.read_text())
    prompts["note"] = "From DreamBench (google/dreambooth, prompts_and_classes.txt): {0} = identifier token, {1} = class word"
    (out / "prompts.json").write_text(json.dumps(prompts, indent=1))
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Regenerate src/personify/assets/mini_dreambench")
    ap.add_argument("--out", type=Path, default=ASSETS)
    ap.add_argument("--cache-dir", type=Path, default=None)
    a = ap.parse_args()
    print(make_assets(a.out, a.cache_dir))
