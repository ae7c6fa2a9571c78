"""SuTI-style apprentice (personify.incontext) on the tiny random pipeline."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from personify.errors import ConfigError, PersonifyError
from personify.evaluation.encoders import tiny_clip
from personify.generate import generate_images
from personify.incontext import Apprentice, DemosConfig, demo_consistency, generate_with_demos, load_apprentice
from personify.incontext.data import SpriteClusters
from personify.incontext.train import ApprenticeTrainConfig, Batch, loss_on, main as train_main, make_optimizer, save_adapter, train_steps
from personify.models import load_pipeline
from personify.sampling import encode_prompts, make_scheduler, sample


@pytest.fixture()
def pipe():
    p = load_pipeline("tiny")
    p.vae.requires_grad_(False)
    p.text_encoder.requires_grad_(False)
    return p


def _txt(pipe, prompt="a photo of a thing"):
    return encode_prompts(pipe.tokenizer, pipe.text_encoder, [prompt]).detach()


def _solid(rng, colour, size=32):
    return Image.fromarray(np.clip(np.array(colour)[None, None] + rng.normal(0, 4, (size, size, 3)), 0, 255).astype(np.uint8))


def test_zero_init_is_bit_identical_to_base(pipe):
    g = torch.Generator().manual_seed(0)
    x, cond = torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 16, 16, generator=g)
    t = torch.tensor(700)
    with torch.no_grad():
        base = pipe.unet(x, t, encoder_hidden_states=cond).sample
        app = Apprentice(pipe.unet, pipe.scheduler.alphas_cumprod)
        # every cross-attention block got a demo layer, down, mid and up
        assert len(app.demo_layers) == 4 and any("mid_block" in k for k in app.layer_level)
        ctx = app.encode_demos(torch.randn(3, 4, 4, 4, generator=g), torch.randn(3, 16, 16, generator=g))
        assert [tuple(tk.shape) for tk in ctx.tokens] == [(1, 3 * 4 * 4, 16)]
        assert torch.equal(app(x, t, cond, ctx), base)
        assert torch.equal(app(x, t, cond, None), base)
        # a non-zero output projection does change the output: the identity is the zero init, not dead code
        app.demo_layers[next(iter(app.demo_layers))].attn.to_out[0].weight.data.fill_(0.1)
        assert not torch.allclose(app(x, t, cond, ctx), base)
        assert torch.equal(app(x, t, cond, None), base)  # without demos: the base model
    with pytest.raises(PersonifyError, match="already carries"):
        Apprentice(pipe.unet)
    app.detach_from_unet()
    with torch.no_grad():
        assert torch.equal(pipe.unet(x, t, encoder_hidden_states=cond).sample, base)
    Apprentice(pipe.unet)  # a fresh one attaches after detaching
    assert set(pipe.unet.state_dict()) == set(load_pipeline("tiny").unet.state_dict())  # UNet's own weights untouched


def test_generate_with_untrained_apprentice_equals_base_generation(pipe):
    rng = np.random.default_rng(0)
    demos = [_solid(rng, (200, 40, 40)) for _ in range(3)]
    app = Apprentice(pipe.unet, pipe.scheduler.alphas_cumprod)
    with torch.no_grad():
        ours = generate_with_demos(pipe, app, demos, ["a photo of a dog"] * 3, "a dog on the beach", n=2, seed=3, steps=3, guidance=3.0)
        base = generate_images(pipe, ["a dog on the beach"] * 2, [3, 4], steps=3, guidance=3.0)
    assert [im.size for im in ours] == [(32, 32)] * 2
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(ours, base))


def test_gradients_reach_added_layers_and_demo_encoder(pipe):
    app = Apprentice(pipe.unet, pipe.scheduler.alphas_cumprod)
    opt = make_optimizer(app, 1e-2)
    assert not any(p.requires_grad for p in pipe.unet.parameters())
    txt = _txt(pipe)
    demos = torch.randn(1, 3, 4, 4, 4, requires_grad=True)
    batch = Batch(demos, txt.expand(1, 3, -1, -1), torch.randn(1, 4, 4, 4), txt)
    g = torch.Generator().manual_seed(0)
    loss_on(app, pipe.scheduler, batch, g).backward()
    for name, m in app.demo_layers.items():
        assert m.attn.to_out[0].weight.grad.abs().sum() > 0, name  # zero-init output still gets gradient
    opt.step()
    opt.zero_grad()
    demos.grad = None
    loss_on(app, pipe.scheduler, batch, g).backward()
    for name, m in app.demo_layers.items():  # after one step the gradient reaches q/k/v too
        assert m.attn.to_k.weight.grad.abs().sum() > 0, name
        assert m.attn.to_q.weight.grad.abs().sum() > 0, name
    assert demos.grad is not None and demos.grad.abs().sum() > 0  # through the shared down-block encoder


def _signal(z):  # the toy "colour": +1 on channels 0-1 and -1 on 2-3 is "red", the opposite "blue"
    return z[:, :2].mean((1, 2, 3)) - z[:, 2:].mean((1, 2, 3))


def test_demos_steer_generation_after_training(pipe):
    """Two subjects with the same caption, told apart only by their demos (latent-space toy: the tiny
    random VAE maps colours to almost identical latents). After a short fit, sampling with the red
    demos ends redder than with the blue demos, for every seed; at init the demos change nothing."""
    g0 = torch.Generator().manual_seed(0)

    def lat(sign, n):
        z = torch.zeros(n, 4, 4, 4)
        z[:, :2], z[:, 2:] = sign, -sign
        return z + 0.1 * torch.randn(n, 4, 4, 4, generator=g0)

    k, zr, zb, txt = 3, lat(1.0, 4), lat(-1.0, 4), _txt(pipe)
    batch = Batch(torch.stack([zr[:k], zb[:k]]), txt.expand(2, k, -1, -1), torch.stack([zr[k], zb[k]]), txt.expand(2, -1, -1))
    swapped = Batch(batch.demo_latents.flip(0), batch.demo_text, batch.target_latents, batch.target_text)
    app = Apprentice(pipe.unet, pipe.scheduler.alphas_cumprod)
    x = torch.randn(4, 4, 4, 4, generator=torch.Generator().manual_seed(5))
    sched, cond = make_scheduler("ddim", pipe.scheduler), txt.expand(4, -1, -1)

    def run():
        with torch.no_grad():
            red = sample(app.denoiser(app.encode_demos(zr[:k], txt.expand(k, -1, -1))), x, cond, sched, 10)
            blue = sample(app.denoiser(app.encode_demos(zb[:k], txt.expand(k, -1, -1))), x, cond, sched, 10)
        return _signal(red), _signal(blue)

    r0, b0 = run()
    assert torch.equal(r0, b0)
    opt = make_optimizer(app, 1e-2, unet_lr=1e-3)  # the random tiny UNet is junk, so it is tuned too
    train_steps(app, pipe.scheduler, lambda s: batch, opt, 0, 250, torch.Generator().manual_seed(0))

    def ev(b):
        g = torch.Generator().manual_seed(123)
        with torch.no_grad():
            return np.mean([loss_on(app, pipe.scheduler, b, g).item() for _ in range(4)])

    assert ev(batch) < ev(swapped)  # its own demos explain the target better than the other subject's
    r1, b1 = run()
    print("red-blue margin", (r1 - b1).tolist())
    assert (r1 - b1).min() > 0.2, (r1, b1)


def test_demo_count_errors(pipe):
    rng = np.random.default_rng(0)
    app = Apprentice(pipe.unet, pipe.scheduler.alphas_cumprod)
    for k in (1, 9):
        with pytest.raises(PersonifyError, match="demonstration"):
            generate_with_demos(pipe, app, [_solid(rng, (0, 0, 0))] * k, ["a"] * k, "a dog", n=1, steps=1)
    with pytest.raises(PersonifyError, match="captions"):
        generate_with_demos(pipe, app, [_solid(rng, (0, 0, 0))] * 3, ["a"] * 2, "a dog", n=1, steps=1)
    with pytest.raises(ConfigError):
        DemosConfig(steps=0)
    with pytest.raises(ConfigError):
        ApprenticeTrainConfig(n_demos=1)


def test_consistency_warning(pipe):
    clip = tiny_clip()
    rng = np.random.default_rng(0)
    same = [_solid(rng, (200, 40, 40)) for _ in range(3)]
    mixed = [_solid(rng, (200, 40, 40)), Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)), _solid(rng, (20, 220, 40)),
             Image.fromarray(np.tile(np.linspace(0, 255, 32, dtype=np.uint8)[:, None, None], (1, 32, 3)))]
    thr = 0.98  # the random tiny CLIP rates everything similar; real CLIP uses the default threshold
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert demo_consistency(same, clip, thr) > thr
    with pytest.warns(UserWarning, match="different subjects"):
        assert demo_consistency(mixed, clip, thr) < thr
    app = Apprentice(pipe.unet, pipe.scheduler.alphas_cumprod)
    with pytest.warns(UserWarning, match="different subjects"):
        generate_with_demos(pipe, app, mixed, ["a"] * 4, "a dog", n=1, steps=1, clip=clip, consistency_threshold=thr)


def _fake_sprites():
    rng = np.random.default_rng(0)
    rgba = np.zeros((3, 64, 64, 4), np.uint8)
    for i, c in enumerate([(255, 0, 0), (0, 0, 255), (0, 255, 0)]):
        rgba[i, 16:48, 20:44, :3], rgba[i, 16:48, 20:44, 3] = c, 255
    rgba[..., :3] = np.clip(rgba[..., :3] + rng.integers(0, 5, rgba[..., :3].shape), 0, 255)
    return {"rgba": rgba, "word": np.array(["dog", "cat", "fluentdog"]), "family": np.array([0, 1, 2], np.int8)}


def test_sprite_clusters_pretraining_families_only_and_deterministic():
    cl = SpriteClusters(n_demos=3, seed=1, sprites=_fake_sprites())
    assert len(cl) == 2  # family 2 (held-out Fluent) is excluded
    c = cl[1]
    assert c.demo_images.shape == (3, 64, 64, 3) and c.target_image.shape == (64, 64, 3)
    assert len(set(c.backgrounds)) == 4  # the target's scene is new
    assert all(c.word in cap for cap in [*c.demo_captions, c.target_caption])
    assert np.array_equal(cl[1].target_image, c.target_image) and cl[1].demo_captions == c.demo_captions
    assert {cl[i].word for i in range(len(cl))} == {"dog", "cat"}


def test_sprite_clusters_generic_captions_hide_the_class_word_only():
    sprites = {**_fake_sprites(), "animal": np.array([True, False, True])}
    plain = SpriteClusters(n_demos=2, seed=0, sprites=sprites)
    every = SpriteClusters(n_demos=2, seed=0, sprites=sprites, generic_p=1.0)
    for i, generic in enumerate(["animal", "object"]):  # dog is an animal, cat is not (in this fake)
        a, b = plain[i], every[i]
        assert np.array_equal(a.target_image, b.target_image) and np.array_equal(a.demo_images, b.demo_images)
        caps = [*b.demo_captions, b.target_caption]
        assert all(generic in c and a.word not in c for c in caps), caps
        assert b.word == a.word  # the cluster still knows its subject
    half = SpriteClusters(n_demos=2, seed=0, sprites=sprites, generic_p=0.5)
    words = [half.caption_word(i) for i in range(200)]  # indices past len() are further renders
    assert 0.35 < np.mean([w in ("animal", "object") for w in words]) < 0.65
    assert [half[i].target_caption for i in range(2)] == [half[i].target_caption for i in range(2)]
    with pytest.raises(PersonifyError, match="generic_p"):
        SpriteClusters(sprites=sprites, generic_p=1.5)


def test_train_main_resumes_and_weights_load(tmp_path, pipe):
    clusters = SpriteClusters(n_demos=2, seed=0, sprites=_fake_sprites())
    cfg = ApprenticeTrainConfig(model="tiny", out=str(tmp_path), steps=2, batch_size=2, n_demos=2, save_every=1, lr=1e-2, device="cpu")
    path = train_main(cfg, clusters=clusters)
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 2 and not list(tmp_path.glob("*.tmp"))
    cfg.steps = 3
    with torch.no_grad():  # training enables gradients for itself
        train_main(cfg, clusters=clusters)
    steps = [json.loads(l)["step"] for l in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # resumed at step 2, did not restart
    app = load_apprentice(pipe, path)
    w = app.demo_layers[next(iter(app.demo_layers))].attn.to_out[0].weight
    assert w.abs().sum() > 0  # trained, non-zero output projection loaded
    with pytest.raises(PersonifyError, match="not found"):
        load_apprentice(load_pipeline("tiny"), tmp_path / "missing.safetensors")
    other = load_pipeline("tiny:1")
    save_adapter(app, tmp_path / "a.safetensors", pipe)
    with pytest.raises(PersonifyError, match="base model"):
        load_apprentice(other, tmp_path / "a.safetensors")
    with pytest.warns(UserWarning, match="loaded anyway"):  # opt-in transfer measurement: loads, says so
        moved = load_apprentice(other, tmp_path / "a.safetensors", allow_other_base=True)
    k = next(iter(app.demo_layers))
    assert torch.equal(moved.demo_layers[k].attn.to_out[0].weight, app.demo_layers[k].attn.to_out[0].weight)


def test_full_unet_training_ships_its_unet(tmp_path):
    clusters = SpriteClusters(n_demos=2, seed=0, sprites=_fake_sprites())
    cfg = ApprenticeTrainConfig(model="tiny", out=str(tmp_path), steps=1, batch_size=2, n_demos=2, lr=1e-2, unet_lr=1e-2, device="cpu")
    path = train_main(cfg, clusters=clusters)
    fresh = load_pipeline("tiny")
    before = {k: v.clone() for k, v in fresh.unet.state_dict().items()}
    load_apprentice(fresh, path)
    from safetensors.torch import load_file

    tuned = load_file(str(tmp_path / "unet.safetensors"))
    assert any(not torch.equal(before[k], tuned[k]) for k in tuned)
    assert all(torch.equal(fresh.unet.state_dict()[k], tuned[k]) for k in tuned)
    (tmp_path / "unet.safetensors").unlink()
    with pytest.raises(PersonifyError, match="beside it"):
        load_apprentice(load_pipeline("tiny"), path)


def test_demos_cli_main_writes_images(tmp_path, pipe):
    from personify.incontext.generate import main as demos_main

    rng = np.random.default_rng(0)
    d = tmp_path / "demos"
    d.mkdir()
    for i in range(3):
        _solid(rng, (200, 40, 40), 48).save(d / f"{i}.png")
    (d / "0.txt").write_text("a photo of a red dog on the grass")
    app = Apprentice(pipe.unet, pipe.scheduler.alphas_cumprod)
    save_adapter(app, tmp_path / "app.safetensors", pipe)
    cfg = DemosConfig(prompt="a [class] on the beach", demos=str(d), apprentice=str(tmp_path / "app.safetensors"), model="tiny",
                      class_word="dog", n=2, steps=2, out=str(tmp_path / "out"))
    paths = demos_main(cfg)
    assert len(paths) == 2 and all(p.is_file() for p in paths)
    side = json.loads(paths[0].with_suffix(".json").read_text())
    assert side["prompt"] == "a dog on the beach" and side["demo_captions"][0] == "a photo of a red dog on the grass"
    assert side["demo_captions"][1] == "a photo of a dog"
    (d / "1.png").unlink(), (d / "2.png").unlink()
    with pytest.raises(PersonifyError, match="demonstration"):
        demos_main(cfg)


def test_dreambench_scores_the_apprentice_with_zero_tuning(pipe):
    """evaluate_subject with a pluggable generator: the apprentice reads the subject's first 3 real
    images as demos and the identifier-free prompts; a zero-init apprentice reproduces the base model's
    images exactly, a non-zero one changes them (so the plumbing really routes through the demos)."""
    from personify.evaluation import tiny_dino
    from personify.evaluation.dreambench import (Evaluator, apprentice_generator, evaluate_subject, load_mini, strip_identifier,
                                                 stylization_prompts)

    bench = load_mini()
    sub = bench.subjects["dog"]
    ev = Evaluator(tiny_clip(), tiny_dino())
    seen: dict[str, tuple] = {}

    def recording(label, gen):
        def g(prompts, seeds):
            ims = gen(prompts, seeds)
            seen[label] = (prompts, seeds, [np.asarray(im) for im in ims])
            return ims
        return g

    kw = dict(n_per_prompt=1, steps=2, guidance=3.0)
    base = evaluate_subject(pipe, bench, sub, None, ev, "base", **kw,
                            generate=recording("base", lambda ps, ss: generate_images(pipe, ps, ss, steps=2, guidance=3.0)))
    app = Apprentice(pipe.unet, pipe.scheduler.alphas_cumprod)
    gen, demos = apprentice_generator(pipe, app, sub, n_demos=3, steps=2, guidance=3.0)
    assert demos == sub.images[:3]
    zero = evaluate_subject(pipe, bench, sub, None, ev, "apprentice", **kw, generate=recording("zero", gen))
    prompts = seen["zero"][0]
    assert prompts == [strip_identifier(t, "dog") for t, _ in bench.prompts(sub)] and "a dog in the jungle" in prompts
    assert seen["zero"][:2] == seen["base"][:2]
    assert all(np.array_equal(a, b) for a, b in zip(seen["zero"][2], seen["base"][2]))
    assert zero.overall == base.overall and set(zero.per_kind) == {"recontextualization", "accessorization", "property"}
    for m in app.demo_layers.values():
        torch.nn.init.normal_(m.attn.to_out[0].weight, std=0.5, generator=torch.Generator().manual_seed(0))
    trained = evaluate_subject(pipe, bench, sub, None, ev, "apprentice", **kw, generate=recording("trained", gen))
    diff = [np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(seen["trained"][2], seen["base"][2])]
    assert min(diff) > 1.0, diff  # every image changed
    assert trained.overall != base.overall and trained.upper == base.upper
    styled = evaluate_subject(pipe, bench, sub, None, ev, "apprentice", **kw, generate=recording("style", gen), prompts=stylization_prompts())
    assert "a watercolor painting of a dog" in seen["style"][0] and len(seen["style"][0]) == 3 and set(styled.per_kind) == {"stylization"}
    with pytest.raises(PersonifyError, match="demonstration"):
        apprentice_generator(pipe, app, sub, n_demos=1)


def test_latent_cache_is_an_exact_memo(pipe):
    from personify.incontext.train import LatentCache, make_batch

    cl = SpriteClusters(n_demos=2, seed=0, sprites=_fake_sprites())
    plain = make_batch(pipe, [cl[0], cl[1]])
    pipe.personify_latent_cache = cache = LatentCache()
    first = make_batch(pipe, [cl[0], cl[1]])
    again = make_batch(pipe, [cl[1], cl[0]])  # re-rendered clusters, other batch order: served from the cache
    assert (cache.misses, cache.hits) == (2, 2)
    assert torch.equal(first.demo_latents, plain.demo_latents) and torch.equal(first.target_latents, plain.target_latents)
    assert torch.equal(again.demo_latents, plain.demo_latents.flip(0)) and torch.equal(again.target_text, plain.target_text.flip(0))
    tiny = LatentCache(max_bytes=1)  # over budget: computed, not stored
    pipe.personify_latent_cache = tiny
    make_batch(pipe, [cl[0]]), make_batch(pipe, [cl[0]])
    assert (tiny.misses, tiny.hits, len(tiny.items)) == (2, 0, 0)


def test_generate_demos_defaults_to_the_shipped_mini_apprentice(tmp_path, capsys):
    """`personify generate --demos DIR` without --apprentice uses assets/apprentice for the mini model
    (fp16 on disk, trained on the shipped mini-sd), and only for it."""
    from safetensors import safe_open

    from personify.cli import main as cli
    from personify.incontext.generate import ADAPTER_FORMAT, default_apprentice

    shipped = default_apprentice("mini")
    assert shipped is not None and shipped.is_file() and shipped.parent.name == "apprentice"
    assert default_apprentice("tiny") is None and default_apprentice(str(shipped.parents[1] / "mini-sd")) is None
    with safe_open(str(shipped), "pt") as f:
        meta = json.loads(f.metadata()["personify"])
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    assert meta["format"] == ADAPTER_FORMAT
    mini = load_pipeline("mini")
    assert meta["base_model_hash"] == mini.personify_base_hash, (
        "assets/mini-sd changed after the apprentice was trained: retrain it (benchmarks/incontext_mini.py --ship ...)")
    sz = sum(p.stat().st_size for p in shipped.parent.glob("*.safetensors"))
    assert sz <= 40 * 2**20
    app = load_apprentice(mini, shipped)  # fp16 file into the fp32 pipeline
    assert app.demo_layers[next(iter(app.demo_layers))].attn.to_out[0].weight.dtype == mini.unet.dtype
    assert any(m.attn.to_out[0].weight.abs().sum() > 0 for m in app.demo_layers.values())  # trained, not the zero init

    rng = np.random.default_rng(0)
    d = tmp_path / "demos"
    d.mkdir()
    for i in range(3):
        _solid(rng, (200, 40, 40), 64).save(d / f"{i}.png")
    out = tmp_path / "out"
    assert cli(["generate", "a [class] on the beach", "--demos", str(d), "--class-word", "dog", "--n", "1", "--steps", "2",
                "--out", str(out)]) == 0
    side = json.loads(next(out.glob("*.json")).read_text())
    assert side["apprentice"] == str(shipped) and side["prompt"] == "a dog on the beach"
    assert cli(["generate", "a dog", "--demos", str(d), "--model", "tiny", "--n", "1", "--steps", "1", "--out", str(out)]) == 2
    assert "--apprentice is required" in capsys.readouterr().err
    # demos of three different subjects: the mini model checks consistency with its evaluator CLIP by default
    import shutil

    from personify.evaluation.dreambench import load_mini

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for i, name in enumerate(("dog", "teapot", "backpack")):
        shutil.copy(load_mini().subjects[name].images[0], mixed / f"{i}.png")
    with pytest.warns(UserWarning, match="different subjects"):
        assert cli(["generate", "a [class] on the beach", "--demos", str(mixed), "--class-word", "dog", "--n", "1", "--steps", "1",
                    "--out", str(tmp_path / "out2")]) == 0


def test_demo_cfg_cond_only_guides_with_the_demos(pipe):
    """demo_cfg='cond': only the conditional CFG branch sees the demos. Zero-init: still the base model;
    trained: differs from SuTI's both-branches variant."""
    rng = np.random.default_rng(0)
    demos = [_solid(rng, (200, 40, 40)) for _ in range(3)]
    app = Apprentice(pipe.unet, pipe.scheduler.alphas_cumprod)
    kw = dict(n=2, seed=3, steps=3, guidance=3.0)
    with torch.no_grad():
        base = generate_images(pipe, ["a dog"] * 2, [3, 4], steps=3, guidance=3.0)
        cond0 = generate_with_demos(pipe, app, demos, ["a photo of a dog"] * 3, "a dog", demo_cfg="cond", **kw)
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(cond0, base))
        for m in app.demo_layers.values():
            torch.nn.init.normal_(m.attn.to_out[0].weight, std=0.5, generator=torch.Generator().manual_seed(0))
        both = generate_with_demos(pipe, app, demos, ["a photo of a dog"] * 3, "a dog", **kw)
        cond = generate_with_demos(pipe, app, demos, ["a photo of a dog"] * 3, "a dog", demo_cfg="cond", **kw)
        # dual guidance with the demo scale equal to the text scale is "cond" (same ε, up to float rounding);
        # demo scale 0 ignores the demos (the base model's text guidance)
        dual_eq = generate_with_demos(pipe, app, demos, ["a photo of a dog"] * 3, "a dog", demo_cfg="dual", demo_guidance=3.0, **kw)
        dual_0 = generate_with_demos(pipe, app, demos, ["a photo of a dog"] * 3, "a dog", demo_cfg="dual", demo_guidance=0.0, **kw)
    assert all(np.abs(np.asarray(a, int) - np.asarray(b, int)).mean() > 1.0 for a, b in zip(both, cond))
    assert all(np.abs(np.asarray(a, int) - np.asarray(b, int)).max() <= 1 for a, b in zip(dual_eq, cond))
    assert all(np.abs(np.asarray(a, int) - np.asarray(b, int)).max() <= 1 for a, b in zip(dual_0, base))
    with pytest.raises(PersonifyError, match="demo_cfg"):
        generate_with_demos(pipe, app, demos, ["a"] * 3, "a dog", n=1, steps=1, demo_cfg="uncond")
    with pytest.raises(ConfigError):
        DemosConfig(demo_cfg="uncond")
    with pytest.raises(ConfigError):
        DemosConfig(demo_cfg="dual", demo_guidance=-1.0)


def test_init_warm_starts_from_an_apprentice_of_another_base_model(tmp_path, pipe):
    """--init loads adapter weights trained on another version of the base model (whose hash
    load_apprentice refuses for generating) as the starting point; unreadable files are one-line errors."""
    from safetensors.torch import load_file

    clusters = SpriteClusters(n_demos=2, seed=0, sprites=_fake_sprites())
    first = train_main(ApprenticeTrainConfig(model="tiny", out=str(tmp_path / "a"), steps=2, batch_size=2, n_demos=2, lr=1e-2, device="cpu"),
                       clusters=clusters)
    cfg = ApprenticeTrainConfig(model="tiny:1", out=str(tmp_path / "b"), steps=1, batch_size=2, n_demos=2, lr=1e-12, device="cpu", init=str(first))
    second = train_main(cfg, clusters=clusters)
    a, b = load_file(str(first)), load_file(str(second))
    assert any(v.abs().sum() > 0 for v in a.values())
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-8) for k in a)  # started from `first`, barely moved
    cfg = ApprenticeTrainConfig(model="tiny:1", out=str(tmp_path / "c"), steps=1, batch_size=2, n_demos=2, device="cpu", init=str(tmp_path / "nope.safetensors"))
    with pytest.raises(PersonifyError, match="--init"):
        train_main(cfg, clusters=clusters)


def test_apprentice_on_a_wider_latent(tmp_path):
    """Train (1 step) and sample with demos on a model whose latent has 16 channels, not SD's 4."""
    from personify.incontext.generate import main as demos_main
    from personify.models.tiny import build_tiny_pipeline

    model = tmp_path / "wide"
    build_tiny_pipeline(seed=3, latent_channels=16).save_pretrained(model)
    clusters = SpriteClusters(n_demos=2, seed=0, sprites=_fake_sprites())
    cfg = ApprenticeTrainConfig(model=str(model), out=str(tmp_path / "app"), steps=1, batch_size=2, n_demos=2, lr=1e-2, device="cpu")
    path = train_main(cfg, clusters=clusters)
    rng = np.random.default_rng(0)
    d = tmp_path / "demos"
    d.mkdir()
    for i in range(2):
        _solid(rng, (200, 40, 40), 48).save(d / f"{i}.png")
    out = demos_main(DemosConfig(prompt="a [class] on the beach", demos=str(d), apprentice=str(path), model=str(model),
                                 class_word="dog", n=1, steps=2, out=str(tmp_path / "out")))
    assert len(out) == 1 and out[0].is_file()
