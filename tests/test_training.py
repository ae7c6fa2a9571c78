"""Loop features beyond the contract: accumulation, sample grids and logs, checkpoint pruning, options."""
from __future__ import annotations

import pytest
import torch

import personify
from personify.artifact import read_concept
from personify.training.checkpoint import list_checkpoints

from conftest import assert_same_training, fraction_different

BASE = {"model": "tiny", "resolution": 32, "progress": False, "save_precision": "fp32", "class_word": "dog",
        "prior_weight": 0.0, "learning_rate": 1e-3}


def test_accumulation_equals_bigger_batch(subject_dir, tmp_path):
    a = read_concept(personify.train("dreambooth", images=subject_dir, out=str(tmp_path / "a"), steps=2, batch_size=2, **BASE))[0]
    b = read_concept(personify.train("dreambooth", images=subject_dir, out=str(tmp_path / "b"), steps=2, batch_size=1,
                                     gradient_accumulation=2, **BASE))[0]
    c = read_concept(personify.train("dreambooth", images=subject_dir, out=str(tmp_path / "c"), steps=2, batch_size=1, **BASE))[0]
    assert_same_training(a, b, lr=BASE["learning_rate"], steps=2)
    assert fraction_different(a, c) > 0.1  # a different global batch changes most weights


def test_samples_logs_and_pruning(subject_dir, tmp_path):
    out = tmp_path / "run"
    personify.train("dreambooth", images=subject_dir, out=str(out), steps=3, checkpoint_every=1, keep_checkpoints=2,
                    sample_every=2, sample_prompts=["{} on the beach"], sample_steps=2, **BASE)
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step-000002.png", "step-000003.png"]
    assert [s for s, _ in list_checkpoints(out)] == [2, 3]
    assert list((out / "logs").rglob("events.out.tfevents.*"))


def test_gradient_checkpointing_and_bf16_run(subject_dir, tmp_path):
    art = personify.train("dreambooth", images=subject_dir, out=str(tmp_path / "gc"), steps=1, gradient_checkpointing=True,
                          mixed_precision="bf16", train_text_encoder=True, **BASE)
    t, meta = read_concept(art)
    assert any(k.startswith("text_encoder.") for k in t) and meta["metrics"]["final_loss"] > 0


def test_lr_schedule_and_warmup():
    from personify.training.config import TrainConfig
    from personify.training.loop import lr_factor

    c = TrainConfig(lr_warmup_steps=4, lr_schedule="cosine")
    assert lr_factor(c, 0, 10) == pytest.approx(0.2)
    assert lr_factor(c, 4, 10) == pytest.approx(1.0)
    assert lr_factor(c, 10, 10) == pytest.approx(0.0, abs=1e-9)


def test_checkpoint_selection_keeps_the_best(subject_dir, tmp_path):
    import json

    from personify.evaluation import tiny_clip, tiny_dino

    c, d = tiny_clip(), tiny_dino()
    c.model.save_pretrained(tmp_path / "clip")
    c.tokenizer.save_pretrained(tmp_path / "clip")
    d.model.save_pretrained(tmp_path / "dino")
    out = tmp_path / "run"
    personify.train("dreambooth", images=subject_dir, out=str(out), steps=3, validate_every=1, validate_metric="clip_i",
                    validate_prompts=["{} on the beach"], eval_clip=str(tmp_path / "clip"), eval_dino=str(tmp_path / "dino"), **BASE)
    curve = json.loads((out / "validation.json").read_text())["curve"]
    assert [e["step"] for e in curve] == [1, 2, 3]
    best = max(curve, key=lambda e: e["clip_i"])
    meta = read_concept(out / "best.safetensors")[1]
    assert meta["metrics"]["best_step"] == best["step"] and meta["metrics"]["best_value"] == pytest.approx(best["clip_i"])
    assert read_concept(out / "concept.safetensors")[1]["metrics"]["validation"] == curve


def test_fused_adamw_same_update_and_used_by_default():
    """make_adamw picks torch's fused kernel for CPU float params (the default of TrainConfig) and the
    update matches the per-tensor AdamW up to float rounding; --no-fused-adamw gives the plain one."""
    from personify.training.config import TrainConfig
    from personify.training.loop import make_adamw

    assert TrainConfig().fused_adamw
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(17, 5, generator=g), torch.randn(3, generator=g)]
    grads = [[torch.randn(w.shape, generator=g) for w in ws] for _ in range(5)]
    results = []
    for fused in (True, False):
        params = [w.clone().requires_grad_() for w in ws]
        opt = make_adamw(params, lr=1e-2, weight_decay=1e-2, fused=fused)
        assert bool(opt.defaults.get("fused")) is fused
        for gs in grads:
            for p, gr in zip(params, gs):
                p.grad = gr.clone()
            opt.step()
        results.append([p.detach() for p in params])
    for a, b, w in zip(*results, ws):
        assert torch.allclose(a, b, atol=1e-6) and not torch.allclose(a, w, atol=1e-3)


def test_rerun_of_a_finished_or_resumed_run_reports_the_whole_training(subject_dir, tmp_path, monkeypatch):
    """train_seconds and final_loss travel in checkpoints: resuming to more steps adds to them, and
    re-running a finished run (benchmarks reuse trainings this way) keeps them instead of 0 s / NaN."""
    import math

    import personify.training.loop as L

    clock = iter(range(0, 10_000, 5))  # every time.time() call in the loop advances 5 "seconds"
    monkeypatch.setattr(L.time, "time", lambda: float(next(clock)))
    out = str(tmp_path / "run")
    m1 = read_concept(personify.train("dreambooth", images=subject_dir, out=out, steps=2, **BASE))[1]["metrics"]
    m2 = read_concept(personify.train("dreambooth", images=subject_dir, out=out, steps=2, resume=True, **BASE))[1]["metrics"]
    m3 = read_concept(personify.train("dreambooth", images=subject_dir, out=out, steps=3, resume=True, **BASE))[1]["metrics"]
    assert m1["train_seconds"] > 0 and math.isfinite(m1["final_loss"])
    assert m2["train_seconds"] >= m1["train_seconds"] and m2["final_loss"] == m1["final_loss"]
    assert m3["train_seconds"] > m2["train_seconds"] and m3["steps"] == 3


def _trainer(subject_dir, out, pipe=None, method="dreambooth", **extra):
    from personify.config import build
    from personify.methods import get_method
    from personify.training.config import TrainConfig
    from personify.training.loop import Trainer

    opts = {k: v for k, v in {**BASE, "steps": 2, "out": str(out), **extra}.items() if v is not None}
    tnames = set(TrainConfig.__dataclass_fields__)
    tcfg = build(TrainConfig, {"images": str(subject_dir), **{k: v for k, v in opts.items() if k in tnames}}, "test")
    mcfg = build(get_method(method).Config, {k: v for k, v in opts.items() if k not in tnames}, "test")
    return Trainer(method, mcfg, tcfg, pipe=pipe)


def test_frozen_encoders_are_freed_only_when_nothing_needs_them(subject_dir, tmp_path, tiny_pipe):
    """A pipeline the trainer loaded sheds its VAE and frozen text encoder once latents and text
    embeddings are cached (less peak memory) and trains exactly as with a caller's pipeline, which
    is left whole; sample grids keep both, a trained text encoder (or TI's rows) keeps that one,
    and Custom Diffusion keeps the VAE its size augmentation runs."""
    own = _trainer(subject_dir, tmp_path / "own")
    a = read_concept(own.run())[0]
    given = _trainer(subject_dir, tmp_path / "given", pipe=tiny_pipe)
    b = read_concept(given.run())[0]
    assert own.released_encoders == ("vae", "text_encoder") and given.released_encoders == ()
    assert all(p.is_meta for p in own.pipe.vae.parameters()) and all(p.is_meta for p in own.pipe.text_encoder.parameters())
    assert not any(p.is_meta for p in tiny_pipe.vae.parameters())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sampled = _trainer(subject_dir, tmp_path / "s", sample_every=2, sample_steps=2)
    sampled.run()
    te = _trainer(subject_dir, tmp_path / "te", train_text_encoder=True)
    te.run()
    assert sampled.released_encoders == () and te.released_encoders == ("vae",)
    ti = _trainer(subject_dir, tmp_path / "ti", method="textual_inversion", placeholder="<cat-toy>", initializer="dog", prior_weight=None)
    ti.run()
    cd = _trainer(subject_dir, tmp_path / "cd", method="custom_diffusion", prior_weight=0.0, class_word=["dog"])
    cd.run()
    assert ti.released_encoders == ("vae",) and cd.released_encoders == ()


def test_training_works_under_a_callers_no_grad(subject_dir, tmp_path):
    with torch.no_grad():
        art = personify.train("dreambooth", images=subject_dir, out=str(tmp_path / "ng"), steps=1, **BASE)
    assert read_concept(art)[1]["metrics"]["final_loss"] > 0


def test_resume_refuses_a_checkpoint_of_another_base_model(subject_dir, tmp_path):
    from personify.errors import PersonifyError

    out = str(tmp_path / "run")
    personify.train("lora", images=subject_dir, out=out, steps=1, checkpoint_every=1, **BASE)
    with pytest.raises(PersonifyError, match="trained on base model") as e:
        personify.train("lora", images=subject_dir, out=out, steps=2, resume=True, **{**BASE, "model": "tiny:1"})
    assert "\n" not in str(e.value)
    personify.train("lora", images=subject_dir, out=out, steps=2, resume=True, **BASE)  # same model: continues


def test_class_image_cache_is_reused_and_kept_apart_per_decoder(tiny_pipe, tmp_path, monkeypatch):
    """Class images are pixels the decoder drew: a second call reuses them, and a swapped-in decoder (same
    concept fingerprint) gets its own folder instead of images drawn by another decoder."""
    from personify.data.class_images import class_images
    from personify.models.loading import model_hash

    monkeypatch.setattr("personify.data.class_images.CLASS_STEPS", 2)
    a = class_images(tiny_pipe, "a photo of a dog", 2, 32, root=tmp_path)
    stamps = [p.stat().st_mtime_ns for p in a]
    assert class_images(tiny_pipe, "a photo of a dog", 2, 32, root=tmp_path) == a
    assert [p.stat().st_mtime_ns for p in a] == stamps, "cached class images were drawn again"

    with torch.no_grad():
        tiny_pipe.vae.decoder.conv_out.bias.add_(0.5)
    assert model_hash(tiny_pipe) == tiny_pipe.personify_base_hash  # concepts stay valid across decoders
    tiny_pipe.personify_full_hash = model_hash(tiny_pipe, decoder=True)
    b = class_images(tiny_pipe, "a photo of a dog", 2, 32, root=tmp_path)
    assert b[0].parent != a[0].parent
    assert a[0].read_bytes() != b[0].read_bytes()
