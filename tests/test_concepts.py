"""Several concepts on one pipeline, across methods and formats."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import personify
from personify.cli import main
from personify.generate import generate_images
from personify.models import load_pipeline

COMMON = {"model": "tiny", "resolution": 32, "progress": False, "save_precision": "fp32", "steps": 2, "prior_weight": 0.0}


@pytest.fixture
def arts(subject_dir, tmp_path):
    lora = personify.train("lora", images=subject_dir, out=str(tmp_path / "lora"), class_word="dog", identifier="sks", learning_rate=1e-2, **COMMON)
    db = personify.train("dreambooth", images=subject_dir, out=str(tmp_path / "db"), class_word="dog", learning_rate=1e-3, **COMMON)
    ti = personify.train("textual_inversion", images=subject_dir, out=str(tmp_path / "ti"), class_word="dog", placeholder="<x>",
                         num_vectors=2, learning_rate=5e-2, **{k: v for k, v in COMMON.items() if k != "prior_weight"})
    return {"lora": lora, "db": db, "ti": ti}


def _img(pipe, prompt):
    with torch.no_grad():
        return np.asarray(generate_images(pipe, [prompt], [1], steps=2)[0])


def test_lora_then_dreambooth_then_ti(arts):
    pipe = load_pipeline("tiny")
    personify.apply_concepts(pipe, [arts["lora"], arts["db"], arts["ti"]])
    assert [c["method"] for c in pipe.personify_concepts] == ["lora", "dreambooth", "textual_inversion"]
    # Multi-vector placeholders expand by themselves: '<x>' reads as '<x> <x>_1'.
    assert np.array_equal(_img(pipe, "a <x> on the beach"), _img(pipe, "a <x> <x>_1 on the beach"))
    assert not np.array_equal(_img(pipe, "a <x> on the beach"), _img(pipe, "a <x>_1 on the beach"))


def test_shared_identifier_is_an_error(arts, subject_dir, tmp_path):
    other = personify.train("dreambooth", images=subject_dir, out=str(tmp_path / "db2"), class_word="dog", identifier="sks", **COMMON)
    pipe = load_pipeline("tiny")
    with pytest.raises(personify.PersonifyError, match="token 'sks' is also used by"):
        personify.apply_concepts(pipe, [arts["lora"], other])


def test_kohya_export_loads_through_generate(arts, tmp_path):
    assert main(["export", "--concept", str(arts["lora"]), "--out", str(tmp_path / "k.safetensors")]) == 0
    for name, concept in (("ours", arts["lora"]), ("kohya", tmp_path / "k.safetensors")):
        assert main(["generate", "a sks dog", "--model", "tiny", "--concept", str(concept), "--n", "1", "--steps", "2", "--out", str(tmp_path / name)]) == 0
    a = next((tmp_path / "ours").glob("a-sks-dog-*.png"))
    b = next((tmp_path / "kohya").glob("a-sks-dog-*.png"))
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def test_dreambooth_joint_subjects(tmp_path, monkeypatch):
    """Two subjects in one DreamBooth run: one identifier per class word, images assigned by their
    sidecars, each class's prior images generated and captioned with their own class prompt."""
    from pathlib import Path

    from personify.artifact import read_concept
    from personify.errors import ConfigError, PersonifyError
    from personify.methods.custom_diffusion import join_concept_folders
    from personify.methods.dreambooth import DreamBooth, DreamBoothConfig
    from conftest import make_subject

    monkeypatch.setenv("PERSONIFY_CACHE", str(tmp_path / "cache"))
    m = DreamBooth(load_pipeline("tiny"), DreamBoothConfig(class_word=["dog", "teapot"]))  # two distinct rare identifiers
    a, b = m.identifiers
    folder = join_concept_folders([make_subject(tmp_path / "d", n=2), make_subject(tmp_path / "t", n=2, seed=4)], [a, b], tmp_path / "joint")
    art = personify.train("dreambooth", images=folder, out=str(tmp_path / "run"), class_word=["dog", "teapot"], identifier=[a, b],
                          num_class_images=2, **{**COMMON, "prior_weight": 1.0})
    meta = read_concept(art)[1]
    assert meta["tokens"] == [a, b] and meta["class_word"] == ["dog", "teapot"]
    assert meta["instance_prompt"] == f"a {a} dog and a {b} teapot" and [c["instance_prompt"] for c in meta["concepts"]] == [f"a {a} dog", f"a {b} teapot"]
    prior = meta["prior_images"]  # the loop generated both classes' images into one folder (the config is left as given)
    assert meta["config"]["method"]["class_images"] is None
    assert sorted(p.read_text().strip() for p in Path(prior).glob("*.txt")) == ["a photo of a dog"] * 2 + ["a photo of a teapot"] * 2

    assert a != b and m.captions(b) == [f"a {b} teapot"] and m.captions(f"a {a} dog on grass") == [f"a {a} dog on grass"]
    with pytest.raises(PersonifyError, match="sidecar"):
        m.captions(None)
    with pytest.raises(PersonifyError, match="ambiguous"):
        m.captions("a [V] dog")
    single = DreamBooth(load_pipeline("tiny"), DreamBoothConfig(class_word="dog", identifier="sks"))
    assert single.captions("a photo") == ["a sks dog"] and single.captions("[V] on grass") == ["sks on grass"]  # unchanged
    with pytest.raises(ConfigError, match="one --identifier per"):
        DreamBoothConfig(class_word=["dog", "teapot"], identifier=["sks"])
    pipe = load_pipeline("tiny")
    personify.apply_concepts(pipe, [art])
    assert pipe.personify_concepts[0]["tokens"] == [a, b]
