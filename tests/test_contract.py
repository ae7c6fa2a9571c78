"""One contract every registered method must meet: train, save, reload, generate, resume exactly.

A new method gets tested by adding its minimal options to OPTIONS; a registered method without an
entry fails `test_every_method_has_options`.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import personify
from personify.artifact import read_concept
from personify.generate import generate_images
from personify.methods import available
from personify.models import load_pipeline

OPTIONS = {
    "dreambooth": {"class_word": "dog", "num_class_images": 2, "learning_rate": 1e-3},
    "lora": {"class_word": "dog", "num_class_images": 2, "learning_rate": 1e-2},
    "textual_inversion": {"class_word": "dog", "placeholder": "<sub>", "learning_rate": 5e-2},
    "custom_diffusion": {"class_word": "dog", "num_class_images": 2, "learning_rate": 1e-3},
}
COMMON = {"model": "tiny", "resolution": 32, "progress": False, "save_precision": "fp32", "batch_size": 2}


@pytest.fixture(autouse=True)
def fast_class_images(monkeypatch):
    monkeypatch.setattr("personify.data.class_images.CLASS_STEPS", 2)


def test_every_method_has_options():
    assert set(available()) <= set(OPTIONS), f"add contract options for {set(available()) - set(OPTIONS)}"


def _train(method, subject_dir, out, steps, **extra):
    return personify.train(method, images=subject_dir, out=str(out), steps=steps, **COMMON, **OPTIONS[method], **extra)


@pytest.mark.parametrize("method", available())
def test_train_save_reload_generate(method, subject_dir, tmp_path):
    pipe = load_pipeline("tiny")
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}

    art = personify.train(method, images=subject_dir, out=str(tmp_path / "run"), steps=2, pipe=pipe, **COMMON, **OPTIONS[method])
    tensors, meta = read_concept(art)
    assert meta["method"] == method and meta["base_model_hash"] == load_pipeline("tiny").personify_base_hash
    assert tensors and meta["metrics"]["steps"] == 2 and meta["tokens"]
    prompt = f"{meta.get('instance_prompt') or meta['tokens'][0]} on the beach"
    with torch.no_grad():
        trained = generate_images(pipe, [prompt], [7], steps=3)[0]
    # The artifact applied to a freshly loaded base model reproduces the trained pipeline.
    fresh = load_pipeline("tiny")
    personify.apply_concepts(fresh, [art])
    with torch.no_grad():
        reloaded = generate_images(fresh, [prompt], [7], steps=3)[0]
    assert np.array_equal(np.asarray(trained), np.asarray(reloaded))
    # ... and training really changed something relative to the base model.
    base = load_pipeline("tiny")
    if method != "textual_inversion":  # TI's prompt has a new token, the base can't read it
        with torch.no_grad():
            untouched = generate_images(base, [prompt], [7], steps=3)[0]
        assert not np.array_equal(np.asarray(untouched), np.asarray(reloaded))
    del before


@pytest.mark.parametrize("method", available())
def test_resume_is_bitwise_identical(method, subject_dir, tmp_path, monkeypatch):
    full = read_concept(_train(method, subject_dir, tmp_path / "full", 4, checkpoint_every=2))[0]

    from personify.training.loop import Trainer

    real_step = Trainer._train_step

    def interrupt_at_3(self, step, *a):
        if step == 2:  # 0-based: steps 1-2 done and checkpointed, die during the third
            raise KeyboardInterrupt
        return real_step(self, step, *a)

    monkeypatch.setattr(Trainer, "_train_step", interrupt_at_3)
    with pytest.raises(personify.PersonifyError, match="--resume"):
        _train(method, subject_dir, tmp_path / "cut", 4, checkpoint_every=2)
    monkeypatch.setattr(Trainer, "_train_step", real_step)
    with pytest.raises(personify.PersonifyError, match="--resume"):  # no silent restart over a run
        _train(method, subject_dir, tmp_path / "cut", 4, checkpoint_every=2)
    resumed = read_concept(_train(method, subject_dir, tmp_path / "cut", 4, checkpoint_every=2, resume=True))[0]
    assert full.keys() == resumed.keys()
    for k in full:
        assert torch.equal(full[k], resumed[k]), k


def test_resume_would_detect_a_restart(subject_dir, tmp_path):
    """The equality above is meaningful: a different data/noise stream gives different weights."""
    a = read_concept(_train("dreambooth", subject_dir, tmp_path / "a", 2))[0]
    b = read_concept(_train("dreambooth", subject_dir, tmp_path / "b", 2, seed=1))[0]
    assert any(not torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    """A tiny model saved as a diffusers folder with a 16-channel latent (the mini model's widened
    candidate): nothing in the methods, loop or sampler may assume SD's 4 latent channels."""
    from personify.models.tiny import build_tiny_pipeline

    folder = tmp_path_factory.mktemp("wide") / "model"
    build_tiny_pipeline(seed=3, latent_channels=16).save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("method", available())
def test_every_method_on_a_wider_latent(method, subject_dir, tmp_path, wide_model):
    common = {**COMMON, "model": wide_model}
    art = personify.train(method, images=subject_dir, out=str(tmp_path / "run"), steps=2, **common, **OPTIONS[method])
    tensors, meta = read_concept(art)
    assert meta["metrics"]["steps"] == 2
    pipe = load_pipeline(wide_model)
    assert pipe.unet.config.in_channels == pipe.vae.config.latent_channels == 16
    personify.apply_concepts(pipe, [art])
    prompt = f"{meta.get('instance_prompt') or meta['tokens'][0]} on the beach"
    with torch.no_grad():
        img = generate_images(pipe, [prompt], [7], steps=2)[0]
    assert img.size == (32, 32) and np.asarray(img).std() > 0
