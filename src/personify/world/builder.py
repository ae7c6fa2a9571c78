"""`build(cfg)`: fetch -> sprites -> class table -> render 4 splits -> npz + meta.json + manifest.

Cache layout (the contract with the mini-model trainer):
    <cache>/npm/*.tgz              pinned npm tarballs (one-time download)
    <cache>/sprites-v2.npz         decoded 64 px emoji sprites (+ class word, family, flags)
    <cache>/scenes/<split>.npz     images uint8 (N,64,64,3), class_id int32 (N,), captions str (N,),
                                   background_id int16 (N,), style_id int16 (N,), family_id int8 (N,)
    <cache>/scenes/meta.json       class names (index = class_id), backgrounds, styles, families,
                                   per-class weights, head/tail lists
    <cache>/scenes/manifest.json   sha256 + size of every file above, and the config that made them
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np

from . import classes as C
from .backgrounds import NAMES as BG_NAMES, make_bank
from .config import SPLITS, WorldConfig, WorldError
from .effects import ACCESSORIES, COLOURS, MATERIALS, STYLES
from .fetch import FAMILIES, HELDOUT_FAMILY, load_sprites
from .render import World, render_chunk, trim

FORMAT_VERSION = 2  # bump when rendering changes, so old caches re-render
KEYS = {"images": np.uint8, "class_id": np.int32, "captions": np.str_, "background_id": np.int16,
        "style_id": np.int16, "family_id": np.int8}
CHUNK = 1000  # scenes per worker task
BG_VARIANTS = 48  # painted variants per background per split
EVAL_SHARE = 0.25  # fraction of each class's sprites reserved for eval_train
_WORLD: World | None = None  # set in the parent before forking; workers read it copy-on-write


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _recipe(cfg: WorldConfig) -> dict:
    """Config fields that change the scenes (not where they live or how many workers)."""
    d = asdict(cfg)
    return {"format": FORMAT_VERSION, **{k: d[k] for k in (*SPLITS, "seed", "image_size", "zipf_exponent")}}


def check_file(scenes: Path, name: str, manifest: dict | None = None) -> str | None:
    """None if scenes/name matches the manifest, else a one-line reason."""
    if manifest is None:
        try:
            manifest = json.loads((scenes / "manifest.json").read_text())
        except (OSError, json.JSONDecodeError):
            return "scenes/manifest.json is missing or unreadable"
    entry, path = manifest.get("files", {}).get(name), scenes / name
    if entry is None or not path.is_file():
        return f"scenes/{name} is missing"
    if path.stat().st_size != entry["bytes"] or sha256(path) != entry["sha256"]:
        return f"scenes/{name} failed its sha256 check (truncated or modified)"
    return None


def class_table(bank, zipf_exponent: float):
    """Class names in rank order (index = class_id), (C,) weights, and (M,) class id per sprite."""
    names = C.rank_classes(set(bank.word.tolist()))
    index = {w: i for i, w in enumerate(names)}
    return names, C.zipf_weights(len(names), zipf_exponent), np.array([index[w] for w in bank.word])


def split_pools(sprite_class: np.ndarray, bank, n_classes: int, seed: int) -> dict[str, list[np.ndarray]]:
    """Per class: a disjoint ~25% of its sprites for eval_train, the rest for gen_train/test.
    Classes with a single sprite share it (the only case where the splits overlap)."""
    rng = np.random.default_rng([seed, 777])
    gen, ev = [], []
    for c in range(n_classes):
        idx = np.nonzero(sprite_class == c)[0]
        idx = idx[np.lexsort((bank.family[idx], bank.emoji[idx]))][rng.permutation(len(idx))]
        k = 0 if len(idx) < 2 else max(1, round(len(idx) * EVAL_SHARE))
        ev.append(idx[:k] if k else idx)
        gen.append(idx[k:])
    # test and eval_seen draw the generator's sprites in scenes of their own seed streams: eval_seen
    # trains an evaluator that knows what the generator was shown (a CAS-style classifier)
    return {"gen_train": gen, "eval_train": ev, "test": gen, "eval_seen": gen}


def _work(args):
    seed_words, n = args
    return render_chunk(_WORLD, seed_words, n)


def render_split(world: World, seed_words: tuple[int, ...], n: int, workers: int) -> dict[str, np.ndarray]:
    global _WORLD
    _WORLD = world
    tasks = [((*seed_words, i), min(CHUNK, n - i * CHUNK)) for i in range((n + CHUNK - 1) // CHUNK)]
    if workers > 1 and len(tasks) > 1 and "fork" in mp.get_all_start_methods():
        with mp.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_work, tasks, chunksize=1)
    else:
        parts = [_work(t) for t in tasks]
    return {k: np.concatenate([p[k] for p in parts]) for k in KEYS}


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Compressed (emoji scenes compress ~3x); write to a temp name then rename (no half files)."""
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


def build(cfg: WorldConfig, log: Callable[[str], None] = print) -> Path:
    """Build (or verify) the scene cache; returns the scenes folder. Idempotent and resumable."""
    cache = Path(cfg.cache_dir)
    scenes = cache / "scenes"
    try:
        scenes.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WorldError(f"cannot create {scenes} ({e.strerror}); set PERSONIFY_WORLD or --cache-dir to a writable folder") from None
    recipe = _recipe(cfg)
    try:
        manifest = json.loads((scenes / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        manifest = {}
    if manifest.get("recipe") != recipe or cfg.force:
        old = manifest.get("recipe") or {}
        # a recipe that only gained a split (eval_seen, added after format 2 caches existed) keeps the
        # files it has: the old splits' seed streams do not depend on the new one
        gained_only = bool(old) and all(recipe.get(k) == v for k, v in old.items()) and set(old) < set(recipe)
        if gained_only and not cfg.force:
            manifest["recipe"] = recipe
        else:
            manifest = {"recipe": recipe, "files": {}, "timings_s": {}}
    todo = [s for s in SPLITS if check_file(scenes, f"{s}.npz", manifest) is not None]
    meta_bad = check_file(scenes, "meta.json", manifest) is not None
    for s in todo:
        if s + ".npz" in manifest["files"]:
            log(f"world: {check_file(scenes, s + '.npz', manifest)}; rebuilding it")
    if not todo and not meta_bad:
        log(f"world: cache at {scenes} is valid")
        return scenes

    t0 = time.time()
    bank = load_sprites(cache)
    log(f"world: {len(bank.word)} sprites loaded in {time.time() - t0:.1f}s")
    names, weights, sprite_class = class_table(bank, cfg.zipf_exponent)
    pools = split_pools(sprite_class, bank, len(names), cfg.seed)
    head, tail = C.head_tail(names)
    if C.HEAD and (C.HEAD != head or C.TAIL != tail):
        print("world: warning: head/tail classes differ from personify.world.classes.HEAD/TAIL (npm packages changed?)", file=sys.stderr)
    sprites = [trim(s) for s in bank.rgba]

    for si, split in enumerate(SPLITS):
        if split not in todo:
            continue
        t1 = time.time()
        bg_bank = make_bank(np.random.default_rng([cfg.seed, si, 999]), BG_VARIANTS)
        world = World(sprites, sprite_class, bank.family, bank.animal, bank.face, names, pools[split], weights, bg_bank)
        arrays = render_split(world, (cfg.seed, si), getattr(cfg, split), cfg.workers)
        t2 = time.time()
        write_npz(scenes / f"{split}.npz", arrays)
        p = scenes / f"{split}.npz"
        manifest["files"][p.name] = {"sha256": sha256(p), "bytes": p.stat().st_size}
        manifest["timings_s"][split] = {"render": round(t2 - t1, 1), "write": round(time.time() - t2, 1)}
        (scenes / "manifest.json").write_text(json.dumps(manifest, indent=1))  # progress survives a crash
        log(f"world: {split}: {len(arrays['class_id'])} scenes, render {t2 - t1:.0f}s, write {time.time() - t2:.0f}s, {p.stat().st_size / 1e6:.0f} MB")

    meta = {
        "format": FORMAT_VERSION, "image_size": cfg.image_size, "classes": names, "class_weights": weights.tolist(),
        "head": head, "tail": tail, "backgrounds": BG_NAMES, "styles": list(STYLES),
        "families": {str(fid): {"name": n, "npm": spec} for fid, (n, spec, _) in FAMILIES.items()}
        | {str(HELDOUT_FAMILY[0]): {"name": HELDOUT_FAMILY[1], "npm": HELDOUT_FAMILY[2], "held_out": True}},
        "colours": list(COLOURS), "materials": list(MATERIALS), "accessories": list(ACCESSORIES),
        "sprites_per_split": {s: int(sum(len(p) for p in pools[s])) for s in SPLITS},
        "eval_disjoint_classes": int(sum(not set(e) & set(g) for e, g in zip(pools["eval_train"], pools["gen_train"]))),
        "sprite_emoji": {s: sorted({f"{bank.family[i]}:{bank.emoji[i]}" for p in pools[s] for i in p}) for s in ("gen_train", "eval_train")},
    }
    (scenes / "meta.json").write_text(json.dumps(meta, indent=1))
    manifest["files"]["meta.json"] = {"sha256": sha256(scenes / "meta.json"), "bytes": (scenes / "meta.json").stat().st_size}
    manifest["timings_s"]["total_last_run"] = round(time.time() - t0, 1)
    (scenes / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return scenes


def load_meta(cache_dir: Path | str | None = None) -> dict:
    scenes = Path(cache_dir or WorldConfig().cache_dir) / "scenes"
    why = check_file(scenes, "meta.json")
    if why:
        raise WorldError(f"{why} in {scenes.parent}; run `personify world build` to (re)build it")
    return json.loads((scenes / "meta.json").read_text())


def load_split(split: str, cache_dir: Path | str | None = None) -> dict[str, np.ndarray]:
    """Validate (sha256 manifest) and load one split: dict of the six arrays described above."""
    if split not in SPLITS:
        raise WorldError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    scenes = Path(cache_dir or WorldConfig().cache_dir) / "scenes"
    why = check_file(scenes, f"{split}.npz")
    if why:
        raise WorldError(f"{why} in {scenes.parent}; run `personify world build` to (re)build it")
    with np.load(scenes / f"{split}.npz") as z:
        out = {k: z[k] for k in KEYS}
    for k, dt in KEYS.items():
        if out[k].dtype.type is not dt or len(out[k]) != len(out["class_id"]):
            raise WorldError(f"scenes/{split}.npz: array {k!r} has dtype {out[k].dtype} / length {len(out[k])}; rebuild with `personify world build --force`")
    return out


def main(cfg: WorldConfig) -> int:
    """CLI entry (`personify world build`): build, then print counts and sizes."""
    t0 = time.time()
    scenes = build(cfg)
    for f in sorted(scenes.iterdir()):
        print(f"  {f.name:18s} {f.stat().st_size / 1e6:9.1f} MB")
    print(f"world: done in {time.time() - t0:.0f}s -> {scenes}")
    return 0
