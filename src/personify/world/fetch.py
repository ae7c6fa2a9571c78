"""One-time download of the pinned emoji npm packages, and decoding of their 64 px PNGs.

Only Noto (Apache-2.0) and Twemoji (CC-BY-4.0) images are read from the emoji-datasource
packages; the Apple and Facebook images are not licensed for this use and are never extracted.
"""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .classes import class_word
from .config import WorldError

# family id -> (npm spec, image folder inside the package). Pinned so class lists are stable.
FAMILIES = {0: ("noto", "emoji-datasource-google@16.0.0", "google"),
            1: ("twemoji", "emoji-datasource-twitter@16.0.0", "twitter")}
SPRITES_VERSION = 2
HELDOUT_FAMILY = (2, "fluent", "fluentui-emoji@1.3.0")  # only used for mini-DreamBench assets


def tarball_name(spec: str) -> str:
    name, version = spec.rsplit("@", 1)
    return f"{name}-{version}.tgz"


def npm_pack(spec: str, dest: Path) -> Path:
    """`npm pack spec` into dest (cached); raise WorldError with the fix if it cannot be fetched."""
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / tarball_name(spec)
    if out.is_file() and tarfile.is_tarfile(out):
        return out
    if shutil.which("npm") is None:
        raise WorldError(f"cannot fetch {spec}: npm is not installed; install Node.js/npm or copy {out.name} into {dest}")
    try:
        proc = subprocess.run(["npm", "pack", spec, "--silent"], cwd=dest, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as e:
        raise WorldError(f"cannot fetch {spec} with npm pack ({type(e).__name__}); check the network or copy {out.name} into {dest}") from None
    if proc.returncode != 0 or not out.is_file():
        last = (proc.stderr or proc.stdout or "").strip().splitlines()
        why = last[-1][:160] if last else f"exit {proc.returncode}"
        raise WorldError(f"cannot fetch {spec} with npm pack ({why}); check the network or copy {out.name} into {dest}")
    return out


@dataclass
class SpriteBank:
    """All usable emoji images of the pretraining families.

    rgba: (M, 64, 64, 4) uint8; word: (M,) class word; family: (M,) int8; emoji: (M,) short_name;
    animal: (M,) bool (can wear hats/glasses); face: (M,) bool (the emoji is just a head).
    """
    rgba: np.ndarray
    word: np.ndarray
    family: np.ndarray
    emoji: np.ndarray
    animal: np.ndarray
    face: np.ndarray


FIELDS = ("rgba", "word", "family", "emoji", "animal", "face")


NOT_WEARING = {"shell", "coral", "oyster", "feather", "wing", "feet", "microbe"}  # "animal-*" but no head


def is_animal(e: dict) -> bool:
    """Creatures that get hats/glasses/scarves (bugs are too small to read)."""
    sub = e["subcategory"]
    return (sub.startswith("animal-") and sub != "animal-bug" and e["short_name"] not in NOT_WEARING) or sub in ("cat-face", "monkey-face")


def is_face(e: dict) -> bool:
    return "face" in (e.get("name") or "").lower() or e["subcategory"] in ("cat-face", "monkey-face")


def read_family(tgz: Path, folder: str, family_id: int) -> SpriteBank:
    """Decode the 64 px PNGs of one emoji-datasource tarball (base emoji only, no skin tones)."""
    try:
        with tarfile.open(tgz, "r:gz") as tar:
            entries = json.load(tar.extractfile("package/emoji.json"))
            want = {}
            for e in entries:
                w = class_word(e)
                if w is not None and e.get(f"has_img_{folder}") and not e.get("obsoleted_by"):
                    want[f"package/img/{folder}/64/{e['image']}"] = (w, e["short_name"], is_animal(e), is_face(e))
            found = {}
            for m in tar:  # one sequential pass over the gzip stream
                if m.name in want:
                    img = Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGBA")
                    found[m.name] = np.asarray(img.resize((64, 64), Image.LANCZOS) if img.size != (64, 64) else img)
    except (tarfile.TarError, OSError, KeyError, json.JSONDecodeError, EOFError) as e:
        tgz.unlink(missing_ok=True)
        raise WorldError(f"{tgz.name} is corrupt ({type(e).__name__}); deleted it, run the build again to re-fetch") from None
    keys = sorted(found)
    return SpriteBank(rgba=np.stack([found[k] for k in keys]),
                      word=np.array([want[k][0] for k in keys]),
                      family=np.full(len(keys), family_id, np.int8),
                      emoji=np.array([want[k][1] for k in keys]),
                      animal=np.array([want[k][2] for k in keys]),
                      face=np.array([want[k][3] for k in keys]))


def _read_with_refetch(cache: Path, fid: int, spec: str, folder: str) -> SpriteBank:
    """A corrupt tarball is deleted by read_family; fetch it once more before giving up."""
    try:
        return read_family(npm_pack(spec, cache / "npm"), folder, fid)
    except WorldError:
        return read_family(npm_pack(spec, cache / "npm"), folder, fid)


def sprites_path(cache: Path) -> Path:
    return cache / f"sprites-v{SPRITES_VERSION}.npz"  # versioned: bump when sprite fields change


def load_sprites(cache: Path) -> SpriteBank:
    """Fetch both pretraining families (once) and cache the decoded sprites in sprites-v*.npz."""
    path = sprites_path(cache)
    if path.is_file():
        try:
            with np.load(path) as z:
                return SpriteBank(**{k: z[k] for k in FIELDS})
        except Exception:  # a damaged sprite cache is simply rebuilt from the tarballs
            path.unlink()
    banks = [_read_with_refetch(cache, fid, spec, folder) for fid, (_, spec, folder) in FAMILIES.items()]
    bank = SpriteBank(*(np.concatenate([getattr(b, k) for b in banks]) for k in FIELDS))
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **{k: getattr(bank, k) for k in FIELDS})
    tmp.replace(path)
    return bank
