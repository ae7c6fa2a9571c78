"""Apprenticeship clusters from the mini emoji world: one subject (one emoji sprite) per cluster.

A cluster = K demonstrations (the sprite rendered into K different backgrounds, with captions) and one
target (the same sprite in a further, different background, with its caption). Renders use the
world's own pieces (`world.render.scaled/place/composite`, `world.backgrounds.BACKGROUNDS`,
`world.captions`), so demos and targets look like the pretraining scenes. Only the pretraining
families are used: the sprite cache (`sprites-v2.npz`) holds Noto + Twemoji only, and any sprite of
the held-out family id is refused.

`ExpertTriples` reads the other data source, the CLIP-filtered expert shards of `incontext.experts`,
as clusters too: demos from the shard, the kept expert image as the target.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import PersonifyError


@dataclass
class Cluster:
    demo_images: np.ndarray  # (K, 64, 64, 3) uint8
    demo_captions: list[str]
    target_image: np.ndarray  # (64, 64, 3) uint8
    target_caption: str
    sprite: int  # index into the sprite bank
    word: str  # class word
    backgrounds: list[int]  # K demo background ids, then the target's


def render_sprite(rng: np.random.Generator, sprite: np.ndarray, word: str, bg_id: int) -> tuple[np.ndarray, str]:
    """One trimmed RGBA sprite (h, w, 4) uint8 into background `bg_id` (-1: plain) -> (64,64,3) uint8, caption."""
    from ..world.backgrounds import BACKGROUNDS
    from ..world.captions import caption, noun_phrase
    from ..world.render import PLAIN_COLOURS, SIZE_ONE, composite, place, scaled

    bg = None if bg_id < 0 else BACKGROUNDS[bg_id]
    if bg is None:
        col = PLAIN_COLOURS[rng.integers(len(PLAIN_COLOURS))]
        canvas = np.broadcast_to(col - 0.04 * np.linspace(0, 1, 64, dtype=np.float32)[:, None, None], (64, 64, 3)).copy()
    else:
        canvas = bg.paint(rng).astype(np.float32)
    floor = bg.floor if bg is not None else (0.45, 1.0)
    s = scaled(sprite, rng.uniform(*SIZE_ONE))
    h, w = s.shape[:2]
    x, y = place(rng, h, w, floor, 0, 64)
    composite(canvas, s, x, y)
    text = caption(rng, noun_phrase(word), word, bg, None)
    return np.clip(canvas * 255 + 0.5, 0, 255).astype(np.uint8), text


# Words that name a sprite's kind without naming the sprite (see `SpriteClusters.generic_p`).
GENERIC_WORDS = {True: "animal", False: "object"}


class SpriteClusters:
    """Deterministic cluster sampler over the pretraining sprites: `clusters[i]` is the same every time.

    `generic_p`: the fraction of clusters whose captions (demos and target) say "animal"/"object"
    instead of the sprite's class word. The pretraining sprites are the base model's own classes, so
    with the word in the caption the base UNet already draws the target's sprite and the demos have
    little left to explain (the loss stays flat); with a generic word only the demos say which sprite
    it is, which is the held-out case: a "dog" the base model has never drawn."""

    def __init__(self, cache_dir: str | Path | None = None, n_demos: int = 3, seed: int = 0, sprites=None,
                 generic_p: float = 0.0):
        from ..world.fetch import HELDOUT_FAMILY
        from ..world.render import trim

        if sprites is None:
            from ..world.config import WorldConfig
            from ..world.fetch import sprites_path

            cache = Path(cache_dir) if cache_dir else WorldConfig().cache_dir
            path = sprites_path(cache)
            if not path.is_file():
                raise PersonifyError(f"{path}: sprite cache missing; run `personify world build` first")
            with np.load(path) as z:
                sprites = {k: z[k] for k in ("rgba", "word", "family", "animal")}
        fam = np.asarray(sprites["family"])
        keep = np.nonzero(fam != HELDOUT_FAMILY[0])[0]  # never the held-out Fluent family
        if len(keep) == 0:
            raise PersonifyError("no pretraining-family sprites in the sprite cache")
        self.index = keep
        self.rgba = sprites["rgba"]
        self.words = [str(w) for w in sprites["word"]]
        self.family = fam
        self.animal = np.asarray(sprites["animal"], bool) if "animal" in sprites else np.zeros(len(fam), bool)
        if not 0.0 <= generic_p <= 1.0:
            raise PersonifyError(f"generic_p must be in [0, 1], got {generic_p}")
        self._trim = trim
        self.n_demos, self.seed, self.generic_p = int(n_demos), int(seed), float(generic_p)

    def caption_word(self, i: int) -> str:
        """The word cluster i's captions use: its class word, or a generic one (own random stream, so
        generic_p = 0 renders exactly what it always did)."""
        idx = int(self.index[i % len(self.index)])
        if self.generic_p > 0 and np.random.default_rng([self.seed, int(i), 1]).random() < self.generic_p:
            return GENERIC_WORDS[bool(self.animal[idx])]
        return self.words[idx]

    def __len__(self) -> int:
        return len(self.index)

    def name(self, i: int) -> str:
        """Stable subject id of cluster i without rendering it: sprite index and class word."""
        idx = int(self.index[i % len(self.index)])
        return f"{idx:05d}-" + re.sub(r"[^a-z0-9]+", "-", self.words[idx].lower()).strip("-")

    def __getitem__(self, i: int) -> Cluster:
        from ..world.backgrounds import BACKGROUNDS

        rng = np.random.default_rng([self.seed, int(i)])
        idx = int(self.index[i % len(self.index)])
        sprite = self._trim(self.rgba[idx])
        bgs = [int(b) for b in rng.choice(np.arange(-1, len(BACKGROUNDS)), size=self.n_demos + 1, replace=False)]
        word = self.caption_word(i)
        imgs, caps = zip(*(render_sprite(rng, sprite, word, b) for b in bgs))
        return Cluster(np.stack(imgs[:-1]), list(caps[:-1]), imgs[-1], caps[-1], idx, self.words[idx], bgs)


class ExpertTriples:
    """Kept (demos, prompt, image) triples of expert shards (`personify incontext experts`), as `Cluster`s.

    `names` pins which shard files make up the set (default: all `*.npz` in `folder`, sorted), so a
    resumed apprentice run sees the same triples while experts are still being written. Shards are
    opened lazily and the last 64 stay in memory."""

    def __init__(self, folder: str | Path, n_demos: int, names: list[str] | None = None):
        self.folder, self.n_demos = Path(folder), int(n_demos)
        self.names = sorted(p.name for p in self.folder.glob("*.npz")) if names is None else list(names)
        self.rows: list[tuple[int, int]] = []  # (shard, row) per triple
        for s, name in enumerate(self.names):
            path = self.folder / name
            if not path.is_file():
                raise PersonifyError(f"{path}: expert shard missing (this run was started with it); restore it or train into a new --out")
            with np.load(path) as z:
                k, m = len(z["demo_captions"]), len(z["prompts"])
            if k < self.n_demos:
                raise PersonifyError(f"{path}: {k} demos per subject, fewer than n_demos={self.n_demos}; rerun the experts with --n-demos {self.n_demos}")
            self.rows += [(s, j) for j in range(m)]
        if not self.rows:
            raise PersonifyError(f"{self.folder}: no expert triples; run `personify incontext experts --out {self.folder}` first")
        self._shard = lru_cache(maxsize=64)(self._load)

    def _load(self, s: int) -> dict[str, np.ndarray]:
        with np.load(self.folder / self.names[s]) as z:
            return {k: z[k] for k in z.files}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Cluster:
        s, j = self.rows[i]
        z, k = self._shard(s), self.n_demos
        demos, target = z["demo_images"][:k], z["images"][j]  # target at the expert model's resolution
        meta = json.loads(str(z["meta"]))
        bgs = [int(b) for b in z["demo_backgrounds"][:k]] + [int(z["backgrounds"][j])]
        return Cluster(demos, [str(c) for c in z["demo_captions"][:k]], target, str(z["prompts"][j]), int(meta["sprite"]), meta["word"], bgs)
