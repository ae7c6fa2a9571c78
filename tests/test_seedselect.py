"""SeedSelect: the loss goes down, only z_T moves, seeds reproduce through `generate --latents`,
NaN keeps the last good seed, 1 reference warns, bootstrap diversifies. Tiny model, 32 px, 4 steps."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from personify.errors import ConfigError, PersonifyError
from personify.evaluation import tiny_clip
from personify.generate import generate_images
from personify.sampling import decode
from personify.seedselect import (
    SeedLoss, SeedSelectConfig, Settings, Targets, bootstrap_subsets, encode_references, main, optimize_seeds,
    seedselect, seedselect_multi,
)
from personify.seedselect.core import frozen
from personify.seedselect.run import cli

from conftest import make_subject

PROMPT = "a photo of a box"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors gain nothing from 2 threads, and on a 2-core machine shared with another job
    2 OpenMP threads made this file ~40x slower (830 s vs 22 s measured)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def fast(**kw) -> Settings:
    base = dict(iterations=4, steps=4, lr_drop_after=100)  # constant lr 0.1: visible progress in a few steps
    base.update(kw)
    return Settings(**base)


@pytest.fixture(scope="module")
def tiny():
    from personify.models import load_pipeline

    return load_pipeline("tiny"), tiny_clip()


@pytest.fixture(scope="module")
def refs(tiny, tmp_path_factory):
    pipe, clip = tiny
    return encode_references(pipe, clip, make_subject(tmp_path_factory.mktemp("refs") / "s", n=3, size=40))


def _arr(images) -> np.ndarray:
    return np.stack([np.asarray(im) for im in images])


def test_loss_decreases(tiny, refs):
    pipe, clip = tiny
    r = seedselect(pipe, clip, PROMPT, refs, n=1, settings=fast(iterations=5), bootstrap=False)
    loss = [it[0] for it in r.runs[0]["loss"]]
    assert len(loss) == 5 and all(np.isfinite(loss))
    assert loss[-1] < loss[0] - 1e-3, loss
    assert not torch.equal(r.latents, r.initial)
    with torch.no_grad():  # a caller's no_grad (e.g. around a whole notebook cell) does not stop the optimization
        again = seedselect(pipe, clip, PROMPT, refs, n=1, settings=fast(iterations=5), bootstrap=False)
    assert torch.equal(again.latents, r.latents)


def test_gradients_reach_seed_only(tiny, refs):
    pipe, clip = tiny
    mods = {"unet": pipe.unet, "vae": pipe.vae, "text_encoder": pipe.text_encoder, "clip": clip}
    before = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in mods.items()}
    flags = {n: [p.requires_grad for p in m.parameters()] for n, m in mods.items()}
    s = fast()
    c, z = refs.centroid()
    z_T = torch.randn(1, 4, 4, 4, requires_grad=True)
    with frozen(*mods.values()):
        loss, sem, app = SeedLoss(pipe, clip, [PROMPT], s)(z_T, Targets(c[None], z[None]))
        loss.sum().backward()
    assert z_T.grad is not None and torch.isfinite(z_T.grad).all() and z_T.grad.abs().sum() > 0
    assert sem.item() > 0 and app.item() > 0
    z_T.grad = None
    seedselect(pipe, clip, PROMPT, refs, n=2, settings=s, bootstrap_iterations=2)
    for n, m in mods.items():
        assert all(p.grad is None for p in m.parameters()), f"{n} parameters received gradients"
        assert all(torch.equal(v, before[n][k]) for k, v in m.state_dict().items()), f"{n} weights changed"
        assert [p.requires_grad for p in m.parameters()] == flags[n], f"{n} requires_grad flags not restored"


def test_optimization_renders_like_generate(tiny, refs):
    """The differentiable run (checkpointed) is the sampler of generate_images: same final image."""
    pipe, clip = tiny
    s = fast()
    c, z = refs.centroid()
    z_T = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    loss_fn = SeedLoss(pipe, clip, [PROMPT] * 2, s)
    loss_fn(z_T.clone().requires_grad_(True), Targets(c.expand(2, -1), z.expand(2, 4, 4, 4)))
    with torch.no_grad():
        mine = (decode(pipe.vae, loss_fn.last_z0).permute(0, 2, 3, 1).numpy() * 255).round()
        ref = _arr(generate_images(pipe, [PROMPT] * 2, [0, 1], s.steps, s.guidance, s.sampler, latents=z_T)).astype(np.float64)
    assert np.abs(mine - ref).max() <= 1


class Spy:
    def __init__(self, clip):
        self.clip, self.seen = clip, []

    def image(self, x):
        self.seen.append(x.detach().clone())
        return self.clip.image(x)


def test_semantic_loss_sees_last_three_predictions(tiny, refs):
    """CLIP gets the decoded x0-predictions of the last 3 steps, oldest first, weighted 0.05/0.25/0.7."""
    from personify.sampling import cfg_denoiser, encode_prompts, make_scheduler, sample, unet_denoiser

    pipe, clip = tiny
    s = fast(steps=5)
    spy = Spy(clip)
    fn = SeedLoss(pipe, spy, [PROMPT], s)
    assert fn.weights.tolist() == pytest.approx([0.05, 0.25, 0.7])
    z_T = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    c, z = refs.centroid()
    fn(z_T, Targets(c[None], z[None]))
    x0s = []
    with torch.no_grad():
        model = cfg_denoiser(unet_denoiser(pipe.unet), encode_prompts(pipe.tokenizer, pipe.text_encoder, [""]), s.guidance)
        cond = encode_prompts(pipe.tokenizer, pipe.text_encoder, [PROMPT])
        sample(model, z_T, cond, make_scheduler("ddim", pipe.scheduler), 5, callback=lambda i, xp, x0: x0s.append(x0))
        expected = decode(pipe.vae, torch.cat(x0s[-3:]))
    assert len(spy.seen) == 1 and torch.allclose(spy.seen[0], expected, atol=1e-5)
    assert Settings(steps=2).step_weights() == pytest.approx([0.25 / 0.95, 0.7 / 0.95])


def test_cli_outputs_and_latents_reuse(tiny, tmp_path):
    pipe, clip = tiny
    cfg = SeedSelectConfig(images=str(make_subject(tmp_path / "refs", n=3, size=40)), prompt=PROMPT, n=3, out=str(tmp_path / "out"),
                           iterations=2, bootstrap_iterations=2, steps=4, clip="tiny")
    res = main(cfg, pipe=pipe, clip=clip, quiet=True)
    out = tmp_path / "out"
    pngs = sorted(out.glob("*-seedselect-*.png"))
    assert len(pngs) == 3 and (out / "contact_sheet.png").is_file()
    lat = load_file(out / "latents.safetensors")["latents"]
    assert lat.shape == (3, 4, 4, 4) and torch.equal(lat, res.latents)
    with safe_open(out / "latents.safetensors", "pt") as f:
        meta = f.metadata()
    assert meta["steps"] == "4" and meta["prompt"] == PROMPT and meta["sampler"] == "ddim"
    with torch.no_grad():  # what `personify generate --latents FILE --steps 4` does
        again = generate_images(pipe, [PROMPT] * 3, [0, 1, 2], int(meta["steps"]), float(meta["guidance"]), meta["sampler"], latents=lat)
    assert np.array_equal(_arr(again), _arr([Image.open(p) for p in pngs]))
    rep = json.loads((out / "seedselect.json").read_text())
    assert "--latents" in rep["reuse"] and "--steps 4" in rep["reuse"] and rep["seconds"]["per_image"] > 0


def test_reuse_through_generate_command(tiny, tmp_path):
    """The real `personify generate --latents` path (run_generate) gives SeedSelect's images."""
    from personify.generate import GenerateConfig, run_generate

    pipe, clip = tiny
    cfg = SeedSelectConfig(images=str(make_subject(tmp_path / "refs", n=3, size=40)), prompt=PROMPT, n=2, out=str(tmp_path / "out"),
                           model="tiny", iterations=1, bootstrap_iterations=1, steps=4, clip="tiny")
    main(cfg, pipe=pipe, clip=clip, quiet=True)
    # No --steps/--guidance/--n: the latents file's own settings apply.
    paths = run_generate(GenerateConfig(prompt=PROMPT, model="tiny", latents=str(tmp_path / "out" / "latents.safetensors"),
                                        out=str(tmp_path / "gen")))
    assert len(paths) == 2
    mine = sorted((tmp_path / "out").glob("*-seedselect-*.png"))
    assert np.array_equal(_arr([Image.open(p) for p in paths]), _arr([Image.open(p) for p in mine]))


class NaNAfter:
    """A CLIP whose image embeddings turn NaN from the (after+1)-th call on (one call per iteration)."""

    def __init__(self, clip, after: int):
        self.clip, self.after, self.calls = clip, after, 0

    def image(self, x):
        self.calls += 1
        e = self.clip.image(x)
        return e * float("nan") if self.calls > self.after else e


def test_nan_keeps_last_good_seed(tiny, refs):
    pipe, clip = tiny
    c, z = refs.centroid()
    z0 = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(5))
    tg = Targets(c.expand(2, -1), z.expand(2, 4, 4, 4))
    with pytest.warns(UserWarning, match="non-finite loss at iteration 2"):
        bad = optimize_seeds(pipe, NaNAfter(clip, after=2), z0, [PROMPT] * 2, tg, fast(iterations=5))
    # iterations 0 and 1 were finite: the seed evaluated at iteration 1 is the one after 1 step
    good = optimize_seeds(pipe, clip, z0, [PROMPT] * 2, tg, fast(iterations=1))
    assert bad.stopped and len(bad.loss) == 2
    assert torch.isfinite(bad.latents).all()
    assert torch.equal(bad.latents, good.latents)
    with pytest.warns(UserWarning, match="iteration 0"):  # NaN from the start: the initial seed comes back
        first = optimize_seeds(pipe, NaNAfter(clip, after=0), z0, [PROMPT] * 2, tg, fast(iterations=3))
    assert torch.equal(first.latents, z0)


def test_one_reference_warns_and_works(tiny, tmp_path):
    pipe, clip = tiny
    with pytest.warns(UserWarning, match="1 reference image"):
        one = encode_references(pipe, clip, make_subject(tmp_path / "one", n=1, size=40))
    assert len(one) == 1
    r = seedselect(pipe, clip, PROMPT, one, n=3, settings=fast(iterations=1), bootstrap_iterations=1)
    assert r.latents.shape == (3, 4, 4, 4) and torch.isfinite(r.latents).all()
    assert not torch.equal(r.latents[1], r.latents[2])  # same bootstrap target: only the jitter diversifies


def test_mixed_reference_sizes_and_modes(tiny, tmp_path):
    pipe, clip = tiny
    d = tmp_path / "mixed"
    d.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (50, 90, 3), dtype=np.uint8)).save(d / "a.jpg")
    Image.fromarray(rng.integers(0, 255, (70, 40, 4), dtype=np.uint8), "RGBA").save(d / "b.png")
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8), "L").convert("P").save(d / "c.png")
    Image.fromarray(rng.integers(0, 65535, (48, 48), dtype=np.uint16)).save(d / "d.png")
    r = encode_references(pipe, clip, d)
    assert len(r) == 4 and r.latents.shape == (4, 4, 4, 4) and torch.isfinite(r.clip).all()


def test_bootstrap_gives_distinct_images(tiny, refs):
    pipe, clip = tiny
    s = fast(iterations=2)
    for jitter in (0.0, 0.1):
        r = seedselect(pipe, clip, PROMPT, refs, n=4, settings=s, bootstrap_iterations=2, bootstrap_jitter=jitter)
        subsets = r.subsets[1:]
        assert len({tuple(x) for x in subsets}) == 3  # distinct bootstrap samples
        with torch.no_grad():
            ims = _arr(generate_images(pipe, [PROMPT] * 4, [0, 1, 2, 3], s.steps, s.guidance, latents=r.latents)).astype(int)
        for i in range(4):
            for j in range(i + 1, 4):
                assert not torch.equal(r.latents[i], r.latents[j])
                assert np.abs(ims[i] - ims[j]).max() > 0, (jitter, i, j)


def test_norm_kept_on_shell(tiny, refs):
    pipe, clip = tiny
    r = seedselect(pipe, clip, PROMPT, refs, n=2, settings=fast(iterations=3, weight_decay=0.5), bootstrap=False)
    assert torch.allclose(r.latents.flatten(1).norm(dim=1), r.initial.flatten(1).norm(dim=1), rtol=1e-4)
    off = seedselect(pipe, clip, PROMPT, refs, n=2, settings=fast(iterations=3, weight_decay=0.5, renormalize=False), bootstrap=False)
    assert not torch.allclose(off.latents.flatten(1).norm(dim=1), off.initial.flatten(1).norm(dim=1), rtol=1e-3)


def test_batching_is_independent(tiny, refs):
    """Optimizing 2 seeds together equals optimizing each alone (AdamW is element-wise, loss is a sum)."""
    pipe, clip = tiny
    c, z = refs.centroid()
    z0 = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(9))
    tg = Targets(torch.stack([c, -c]), z.expand(2, 4, 4, 4))
    both = optimize_seeds(pipe, clip, z0, [PROMPT] * 2, tg, fast(iterations=2))
    one = optimize_seeds(pipe, clip, z0[1:], [PROMPT], tg.take(slice(1, 2)), fast(iterations=2))
    assert torch.allclose(both.latents[1:], one.latents, atol=1e-4)
    chunked = optimize_seeds(pipe, clip, z0, [PROMPT] * 2, tg, fast(iterations=2, batch_size=1))
    assert torch.allclose(both.latents, chunked.latents, atol=1e-4)
    assert np.allclose(both.loss, chunked.loss, atol=1e-4) and len(chunked.loss) == 2


def test_multi_contrastive(tiny, tmp_path):
    pipe, clip = tiny
    a = encode_references(pipe, clip, make_subject(tmp_path / "a", n=3, size=40, seed=1))
    b = encode_references(pipe, clip, make_subject(tmp_path / "b", n=3, size=40, seed=2))
    r = seedselect_multi(pipe, clip, ["a photo of a box", "a photo of a ball"], [a, b], n=2, settings=fast(iterations=3))
    assert r.latents.shape == (4, 4, 4, 4) and r.prompts[2] == "a photo of a ball"
    loss = np.array(r.runs[0]["loss"])  # (iterations, 4)
    assert loss.shape == (3, 4) and loss[-1].sum() < loss[0].sum()
    # the contrastive semantic term prefers the own class centroid
    s = fast()
    fn = SeedLoss(pipe, clip, ["x"], s)
    ca, cb = a.centroid()[0], b.centroid()[0]
    tg = Targets(ca[None], a.latents[:1], torch.stack([ca, cb]), torch.tensor([0]))
    assert fn.semantic(ca[None], tg) < fn.semantic(cb[None], tg)
    with pytest.raises(PersonifyError, match="2 classes"):
        seedselect_multi(pipe, clip, ["x"], [a], settings=s)


def test_bootstrap_subsets_deterministic():
    assert bootstrap_subsets(5, 6, 0) == bootstrap_subsets(5, 6, 0)
    assert bootstrap_subsets(5, 6, 0) != bootstrap_subsets(5, 6, 1)
    assert all(len(x) == 5 and all(0 <= i < 5 for i in x) for x in bootstrap_subsets(5, 6, 0))


def test_config_validation(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="--images"):
        SeedSelectConfig(prompt=PROMPT)
    with pytest.raises(ConfigError, match="--prompt"):
        SeedSelectConfig(images="x")
    with pytest.raises(ConfigError, match="semantic_weight"):
        SeedSelectConfig(images="x", prompt=PROMPT, semantic_weight=1.5)
    with pytest.raises(ConfigError, match="steps"):
        SeedSelectConfig(images="x", prompt=PROMPT, steps=0)
    assert abs(SeedSelectConfig(images="x", prompt=PROMPT).semantic_weight / (1 - SeedSelectConfig(images="x", prompt=PROMPT).semantic_weight) - 10) < 1e-9
    import personify.seedselect.run as run

    monkeypatch.setattr(run, "default_clip_path", lambda: tmp_path / "nope")
    with pytest.raises(PersonifyError, match="--clip"):
        run.resolve_clip(None)


def test_cli_bad_input_exit_code(tmp_path, capsys):
    assert cli(["--images", str(tmp_path / "missing"), "--prompt", PROMPT, "--model", "tiny", "--clip", "tiny"]) == 2
    assert "folder not found" in capsys.readouterr().err
    assert cli(["--prompt", PROMPT]) == 2


def test_experiment_runner_smoke(tiny, tmp_path):
    from personify.seedselect.experiment import LongTailConfig, run_longtail

    pipe, clip = tiny
    refs = {"box": [Image.open(p) for p in sorted(make_subject(tmp_path / "box", n=2, size=40, seed=1).glob("*.png"))],
            "ball": [Image.open(p) for p in sorted(make_subject(tmp_path / "ball", n=2, size=40, seed=2).glob("*.png"))]}
    classify = lambda x: torch.stack([x.mean((1, 2, 3)), 1 - x.mean((1, 2, 3))], -1)  # noqa: E731 - stand-in classifier
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = run_longtail(pipe, clip, classify, ["box", "ball"], refs,
                               LongTailConfig(n_per_class=1, methods=("baseline", "seedselect", "seedselect_multi"),
                                              bootstrap_iterations=1, settings=fast(iterations=1)), tmp_path / "exp")
    assert set(summary) == {"baseline", "seedselect", "seedselect_multi"}
    rows = json.loads((tmp_path / "exp" / "results.json").read_text())["rows"]
    assert len(rows) == 6 and all(0 <= r["accuracy"] <= 1 for r in rows)


def test_fewshot_probe_uses_the_extra_images():
    """run_fewshot: extra images that carry the class signal raise probe accuracy; pure-noise extras
    with the same labels do not (so the comparison can go both ways)."""
    from personify.seedselect.experiment import run_fewshot

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 8, generator=g) * 1.5

    def draw(c, n, noise=2.0):  # "images" are feature vectors here; features() is the identity
        return [centres[c] + noise * torch.randn(8, generator=g) for _ in range(n)]

    classes = ["a", "b", "c", "d"]
    real = {k: draw(i, 1) for i, k in enumerate(classes)}
    test = {k: draw(i, 100) for i, k in enumerate(classes)}
    good = {k: draw(i, 40, noise=1.0) for i, k in enumerate(classes)}
    junk = {k: [torch.randn(8, generator=g) * 3 for _ in range(40)] for k in classes}
    r = run_fewshot(lambda ims: torch.stack(ims), real, test, {"good": good, "junk": junk}, ks=[0, 40])
    assert r["n_test"] == 400 and r["good+0"] == r["junk+0"] == r["real_only"]
    assert r["good+40"] > r["real_only"] + 0.1
    assert r["junk+40"] < r["good+40"] - 0.1
