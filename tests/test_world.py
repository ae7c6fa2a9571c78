"""Tests for personify.world: fast (< 20 s), no network (npm is monkeypatched or never reached)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from personify.world import SPLITS, WorldConfig, WorldError, build, load_split
from personify.world import builder as build_mod
from personify.world import fetch
from personify.world.backgrounds import BACKGROUNDS, make_bank
from personify.world.captions import noun_phrase, with_article
from personify.world.classes import PRIORITY, class_word, rank_classes, zipf_weights
from personify.world.dreambench import ASSETS, parse_prompts
from personify.world.render import World, render_chunk, trim


def sprite(shape: str, colour: tuple[int, int, int]) -> np.ndarray:
    """A 64x64 RGBA test sprite (square or disc) with transparent padding."""
    yy, xx = np.mgrid[0:64, 0:64]
    mask = (np.abs(yy - 32) < 20) & (np.abs(xx - 32) < 14) if shape == "square" else (yy - 32) ** 2 + (xx - 32) ** 2 < 18 ** 2
    out = np.zeros((64, 64, 4), np.uint8)
    out[mask] = (*colour, 255)
    return out


WORDS = ["dog", "teapot", "cat", "glasses"]


def fake_bank() -> fetch.SpriteBank:
    """Two sprites per class (one per family), so eval_train can get a disjoint sprite."""
    rgba, word, fam, emoji = [], [], [], []
    for i, w in enumerate(WORDS):
        for f in (0, 1):
            rgba.append(sprite("square" if (i + f) % 2 else "disc", (40 * i + 60, 200 - 50 * f, 90)))
            word.append(w), fam.append(f), emoji.append(f"{w}_{f}")
    return fetch.SpriteBank(np.stack(rgba), np.array(word), np.array(fam, np.int8), np.array(emoji),
                            np.array([w in ("dog", "cat") for w in word]), np.array([f == 0 for f in fam]))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache dir whose decoded sprite bank already exists, so build() never calls npm."""
    bank = fake_bank()
    np.savez(fetch.sprites_path(tmp_path), **{k: getattr(bank, k) for k in fetch.FIELDS})
    monkeypatch.setattr(build_mod, "BG_VARIANTS", 2)
    return tmp_path


def small_cfg(cache: Path, **kw) -> WorldConfig:
    return WorldConfig(cache_dir=cache, **{"gen_train": 40, "eval_train": 20, "test": 12, "eval_seen": 16, "workers": 1, **kw})


def test_render_chunk_shapes_and_captions():
    bank = fake_bank()
    sprite_class = np.array([WORDS.index(w) for w in bank.word])
    world = World([trim(s) for s in bank.rgba], sprite_class, bank.family, bank.animal, bank.face, WORDS,
                  [np.nonzero(sprite_class == c)[0] for c in range(len(WORDS))], zipf_weights(len(WORDS), 1.0),
                  make_bank(np.random.default_rng(0), 2))
    out = render_chunk(world, (0, 1), 60)
    assert out["images"].shape == (60, 64, 64, 3) and out["images"].dtype == np.uint8
    assert out["class_id"].dtype == np.int32 and out["background_id"].dtype == np.int16
    assert out["style_id"].dtype == np.int16 and out["family_id"].dtype == np.int8
    assert out["captions"].shape == (60,) and out["captions"].dtype.kind == "U"
    assert set(out["family_id"].tolist()) <= {0, 1}
    assert (out["background_id"] >= 0).any() and out["images"].std() > 10  # not blank
    for cap, c, b in zip(out["captions"], out["class_id"], out["background_id"]):
        assert WORDS[c] in cap, cap
        if b >= 0:
            bg = BACKGROUNDS[b]
            assert any(p in cap for p in (bg.phrase, bg.name, *bg.alts)), cap
    again = render_chunk(world, (0, 1), 60)  # same seed words -> identical scenes
    assert np.array_equal(again["images"], out["images"])


def test_build_load_and_corrupt_cache_is_rebuilt(cache):
    cfg = small_cfg(cache)
    scenes = build(cfg, log=lambda s: None)
    meta = json.loads((scenes / "meta.json").read_text())
    assert meta["classes"] == rank_classes(set(WORDS)) and len(meta["class_weights"]) == len(WORDS)
    data = {s: load_split(s, cache) for s in SPLITS}
    assert [len(data[s]["class_id"]) for s in SPLITS] == [40, 20, 12, 16]
    assert meta["eval_disjoint_classes"] == len(WORDS)  # each class: eval sprite != gen sprite
    assert not set(meta["sprite_emoji"]["eval_train"]) & set(meta["sprite_emoji"]["gen_train"])

    path = scenes / "gen_train.npz"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # flip one byte in the middle
    path.write_bytes(bytes(raw))
    with pytest.raises(WorldError, match="sha256"):
        load_split("gen_train", cache)
    logs: list[str] = []
    build(cfg, log=logs.append)
    assert any("rebuilding" in line for line in logs)
    assert np.array_equal(load_split("gen_train", cache)["images"], data["gen_train"]["images"])

    path.write_bytes(path.read_bytes()[:1000])  # truncated
    with pytest.raises(WorldError, match="sha256"):
        load_split("gen_train", cache)


def test_a_cache_from_before_eval_seen_keeps_its_splits(cache):
    """Caches built before the eval_seen split existed gain it without re-rendering the others, and
    eval_seen draws the generator's sprites (like test), not the evaluator's disjoint ones."""
    scenes = build(small_cfg(cache), log=lambda s: None)
    man = json.loads((scenes / "manifest.json").read_text())
    del man["recipe"]["eval_seen"], man["files"]["eval_seen.npz"]
    (scenes / "manifest.json").write_text(json.dumps(man))
    (scenes / "eval_seen.npz").unlink()
    before = {s: (scenes / f"{s}.npz").stat().st_mtime_ns for s in ("gen_train", "eval_train", "test")}
    logs: list[str] = []
    build(small_cfg(cache), log=logs.append)
    assert before == {s: (scenes / f"{s}.npz").stat().st_mtime_ns for s in before}
    assert any("eval_seen: 16 scenes" in line for line in logs) and not any("gen_train:" in line for line in logs)
    meta = json.loads((scenes / "meta.json").read_text())
    assert meta["sprites_per_split"]["eval_seen"] == meta["sprites_per_split"]["gen_train"]
    seen, gen = load_split("eval_seen", cache), load_split("gen_train", cache)
    assert not np.array_equal(seen["images"][:12], gen["images"][:12])  # its own seed stream
    # a changed recipe value (not just a new split) still re-renders everything
    build(small_cfg(cache, test=13), log=logs.append)
    assert len(load_split("test", cache)["class_id"]) == 13


def test_valid_cache_is_not_rerendered(cache):
    build(small_cfg(cache), log=lambda s: None)
    logs: list[str] = []
    build(small_cfg(cache), log=logs.append)
    assert logs == [f"world: cache at {cache / 'scenes'} is valid"]


@pytest.mark.parametrize("bad", [dict(gen_train=0), dict(test=-5), dict(eval_train="10"), dict(image_size=32),
                                 dict(seed=-1), dict(zipf_exponent=-0.5), dict(workers=0), dict(gen_train=True)])
def test_config_rejects_bad_values(bad):
    with pytest.raises(WorldError) as e:
        WorldConfig(**bad)
    assert "\n" not in str(e.value) and next(iter(bad)) in str(e.value)


def test_config_cache_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("PERSONIFY_WORLD", str(tmp_path))
    assert WorldConfig().cache_dir == tmp_path
    assert all(f.metadata.get("help") for f in WorldConfig.__dataclass_fields__.values())


def test_no_network_gives_world_error(tmp_path, monkeypatch):
    def offline(cmd, **kw):
        assert cmd[:2] == ["npm", "pack"]
        return subprocess.CompletedProcess(cmd, 1, "", "npm ERR! code ENOTFOUND\nnpm ERR! network request failed")

    monkeypatch.setattr(fetch.shutil, "which", lambda name: "/usr/bin/npm")
    monkeypatch.setattr(fetch.subprocess, "run", offline)
    with pytest.raises(WorldError) as e:
        build(WorldConfig(cache_dir=tmp_path, gen_train=10, eval_train=10, test=10, eval_seen=10), log=lambda s: None)
    msg = str(e.value)
    assert "npm pack" in msg and "network" in msg and "\n" not in msg

    def crash(cmd, **kw):
        raise subprocess.TimeoutExpired(cmd, 600)

    monkeypatch.setattr(fetch.subprocess, "run", crash)
    with pytest.raises(WorldError, match="TimeoutExpired"):
        fetch.npm_pack("emoji-datasource-google@16.0.0", tmp_path)


def test_class_words():
    def e(short, cat="Animals & Nature", sub="animal-mammal", name=None):
        return {"short_name": short, "category": cat, "subcategory": sub, "name": name}

    assert class_word(e("dog2", name="DOG")) == "dog"
    assert class_word(e("poodle", name="POODLE")) == "dog"
    assert class_word(e("fox_face", name="FOX FACE")) == "fox"
    assert class_word(e("clock930", "Travel & Places", "time", "CLOCK FACE NINE-THIRTY")) == "clock"
    assert class_word(e("flag-eg", "Flags", "country-flag", "Egypt Flag")) is None
    assert class_word(e("one", "Symbols", "keycap", "DIGIT ONE")) is None
    assert class_word(e("grinning", "Smileys & Emotion", "face-smiling", "GRINNING FACE")) is None
    ranked = rank_classes({"zebra", "cat", "dog", "abacus"})
    assert ranked[:2] == ["dog", "cat"]
    w = zipf_weights(600, 1.0)
    assert np.isclose(w.sum(), 1) and np.all(np.diff(w) < 0) and w[0] / w[-1] > 50


def test_captions_grammar():
    assert with_article("apple", "apple") == "an apple"
    assert with_article("ufo", "ufo") == "a ufo"
    assert with_article("red glasses", "glasses") == "red glasses"
    assert with_article("bus", "bus") == "a bus"
    assert with_article("hourglass", "hourglass") == "an hourglass"
    assert noun_phrase("dog", "purple", "a red hat") == "a purple dog wearing a red hat"


def test_mini_dreambench_assets():
    subjects = json.loads((ASSETS / "subjects.json").read_text())
    prompts = json.loads((ASSETS / "prompts.json").read_text())
    assert len(subjects) == 30 and len(prompts["object"]) == 25 and len(prompts["live"]) == 25
    assert all("{0} {1}" in p for p in prompts["object"] + prompts["live"])
    total = 0
    for s in subjects:
        assert s["class"] in PRIORITY[:50] and s["license"] == "MIT" and 4 <= len(s["images"]) <= 6
        for rel in s["images"]:
            img = Image.open(ASSETS / rel)
            assert img.size == (64, 64) and img.mode == "RGB"
            total += (ASSETS / rel).stat().st_size
    assert total < 1_000_000


def test_parse_prompts():
    text = "prompt_list = [\n'a {0} {1} in the snow'.format(unique_token, class_token),\n]\n" \
           "prompt_list = [\n'a {0} {1} wearing a red hat'.format(unique_token, class_token)\n]"
    assert parse_prompts(text) == {"object": ["a {0} {1} in the snow"], "live": ["a {0} {1} wearing a red hat"]}
    with pytest.raises(WorldError):
        parse_prompts("nothing here")
