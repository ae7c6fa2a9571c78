"""Tests of the embedded mini Stable Diffusion (personify.mini): builders, one step per stage,
bitwise checkpoint-resume, export -> StableDiffusionPipeline.from_pretrained round trip.

Everything runs on a tiny synthetic world and tiny architectures (no network, CPU, < 30 s).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from personify.mini import models as M
from personify.mini.config import ClipConfig, EvaluatorsConfig, UnetConfig, VaeConfig
from personify.mini.data import load_split, make_synthetic_world

TINY_CLIP = dict(text_hidden=32, text_layers=1, text_heads=2, vision_hidden=32, vision_layers=1, vision_heads=2,
                 projection_dim=32, max_length=16)
TINY_VAE = dict(block_out_channels=(8, 8, 16, 16), norm_num_groups=8, scale_samples=32)
TINY_UNET = dict(block_out_channels=(32, 32), norm_num_groups=8, attention_heads=2)
TINY_EVAL = dict(clip_hidden=32, clip_layers=1, dino_hidden=32, dino_layers=1, dino_out_dim=64, dino_batch_size=4,
                 dino_local_crops=2)
COMMON = dict(batch_size=8, log_every=1, warmup_steps=1, threads=1)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_synthetic_world(tmp_path_factory.mktemp("world"), n_per_split=40)


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    """clip -> vae -> unet, two steps each, on the synthetic world."""
    from personify.mini.train import main

    root = tmp_path_factory.mktemp("run")
    kw = dict(run_root=str(root), world_dir=str(world), max_steps=2, **COMMON)
    status = {
        "clip": main(ClipConfig(**kw, **TINY_CLIP)),
        "vae": main(VaeConfig(**kw, **TINY_VAE)),
        "unet": main(UnetConfig(**kw, **TINY_UNET)),
    }
    return root, status


# ------------------------------------------------------------------------------------------
def test_config_validation():
    with pytest.raises(ValueError):
        VaeConfig(block_out_channels=(32, 64, 128))  # factor 4, not 8
    with pytest.raises(ValueError):
        UnetConfig(cond_dropout=1.5)
    with pytest.raises(ValueError):
        EvaluatorsConfig(split="gen_train")  # evaluators never see the generator's data
    with pytest.raises(ValueError):
        ClipConfig(batch_size=1)
    with pytest.raises(ValueError):
        ClipConfig(split="nope")
    assert VaeConfig(block_out_channels=[32, 64, 128, 128]).block_out_channels == (32, 64, 128, 128)


def test_data_contract(world):
    d = load_split(world, "gen_train")
    assert d.images.dtype == np.uint8 and d.images.shape[1:] == (64, 64, 3)
    assert len(d.captions) == len(d.images) == len(d.class_id)
    assert d.num_classes == len(d.meta["classes"])
    with pytest.raises(FileNotFoundError):
        load_split(world / "missing", "gen_train")


def test_tokenizer_is_openai_bpe():
    tok = M.build_tokenizer(32)
    assert len(tok) == 49408 and tok.model_max_length == 32
    ids = M.tokenize(tok, ["a red circle", ""])
    assert ids.shape == (2, 32)
    assert ids[0, 0].item() == M.BOS_ID and ids[1, 1].item() == M.EOS_ID
    assert tok.convert_ids_to_tokens(int(ids[0, 2])) == "red</w>"


def test_builders_declared_shapes():
    torch.manual_seed(0)
    clip = M.build_clip(ClipConfig(**TINY_CLIP))
    ids = M.tokenize(M.build_tokenizer(16), ["a cat", "a dog"])
    out = clip(input_ids=ids, pixel_values=torch.randn(2, 3, 64, 64))
    assert out.text_model_output.last_hidden_state.shape == (2, 16, 32)
    assert out.logits_per_image.shape == (2, 2)

    vae = M.build_vae(VaeConfig(**TINY_VAE))
    z = vae.encode(torch.randn(2, 3, 64, 64)).latent_dist.sample()
    assert z.shape == (2, 4, 8, 8)  # SD's downsampling factor 8
    assert vae.decode(z).sample.shape == (2, 3, 64, 64)

    unet = M.build_unet(UnetConfig(**TINY_UNET), cross_attention_dim=32)
    eps = unet(z, torch.tensor([1, 999]), encoder_hidden_states=torch.randn(2, 16, 32)).sample
    assert eps.shape == z.shape

    # shipped default sizes: UNet within the 3-9 M budget, VAE factor 8
    n = M.count_params(M.build_unet(UnetConfig(), cross_attention_dim=ClipConfig().text_hidden))
    assert 3e6 <= n <= 9e6, n
    assert len(VaeConfig().block_out_channels) == 4

    cls = M.MiniClassifier(7, width=8)
    assert cls(torch.randn(3, 3, 64, 64)).shape == (3, 7)


def test_one_step_each_stage_finite(trained, world, tmp_path):
    root, status = trained
    for stage in ("clip", "vae", "unet"):
        assert status[stage]["done"] and status[stage]["step"] == 2
        rows = (root / stage / "log.csv").read_text().strip().splitlines()
        assert len(rows) == 3  # header + 2 steps
        header = rows[0].split(",")
        loss = float(rows[-1].split(",")[header.index("loss")])
        assert np.isfinite(loss) and 0 < loss < 100
        assert (root / stage / "model" / "config.json").exists()
        assert list((root / stage / "tb").iterdir())
    sf = json.loads((root / "vae" / "model" / "config.json").read_text())["scaling_factor"]
    assert sf == pytest.approx(status["vae"]["scaling_factor"]) and sf > 0 and sf != 1.0
    assert (root / "unet" / "samples" / "latest.png").exists()

    from personify.mini.train import main

    ev = main(EvaluatorsConfig(run_root=str(tmp_path), world_dir=str(world), clip_steps=2, dino_steps=2,
                               classifier_steps=2, **COMMON, **TINY_EVAL))
    for name in ("clip", "dino", "classifier"):
        assert ev[name]["done"], ev
        assert (tmp_path / "evaluators" / name / "model" / "config.json").exists()
    assert 0 <= ev["classifier"]["val_acc"] <= 1 and 0 <= ev["dino"]["val_knn1_class_acc"] <= 1


def _state(path):
    return torch.load(path, weights_only=False)["state"]


def _assert_same(a, b, prefix=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), prefix
        for k in a:
            _assert_same(a[k], b[k], f"{prefix}.{k}")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{prefix} differs"
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{prefix}[{i}]")
    else:
        assert a == b, prefix


@pytest.mark.parametrize("stage", ["vae", "vae_decoder_gan", "unet"])
def test_resume_is_bitwise_identical(stage, trained, world, tmp_path):
    from personify.mini.train import main

    root, _ = trained

    def cfg(run_root, steps):
        kw = dict(run_root=str(run_root), world_dir=str(world), max_steps=steps, **COMMON)
        if stage == "vae":
            return VaeConfig(**kw, **TINY_VAE)
        if stage == "vae_decoder_gan":  # the discriminator and its optimizer are checkpointed too
            return VaeConfig(**kw, **TINY_VAE, init_from=str(root / "vae" / "model"), train_encoder=False,
                             adv_weight=0.5, adv_start=1, disc_channels=8)
        return UnetConfig(**kw, **TINY_UNET, clip_dir=str(root / "clip" / "model"), vae_dir=str(root / "vae" / "model"))

    main(cfg(tmp_path / "a", 4))  # uninterrupted
    main(cfg(tmp_path / "b", 2))  # interrupted after 2 steps ...
    main(cfg(tmp_path / "b", 4))  # ... and resumed
    sub = "vae" if stage.startswith("vae") else stage
    a, b = _state(tmp_path / "a" / sub / "checkpoint.pt"), _state(tmp_path / "b" / sub / "checkpoint.pt")
    _assert_same(a, b)
    rows = (tmp_path / "b" / sub / "log.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]
    # and the check can fail: one more step changes the weights
    main(cfg(tmp_path / "b", 5))
    with pytest.raises(AssertionError):
        _assert_same(a, _state(tmp_path / "b" / sub / "checkpoint.pt"))


def test_decoder_finetune_keeps_the_latent_space(trained, world, tmp_path):
    """train_encoder=False + a GAN term changes the decoder only: same encoder weights, same
    scaling_factor (so a UNet trained on the old latents stays valid), decoder moved."""
    from diffusers import AutoencoderKL

    from personify.mini.train import main

    root, _ = trained
    base = root / "vae" / "model"
    status = main(VaeConfig(run_root=str(tmp_path), world_dir=str(world), max_steps=3, **COMMON, **TINY_VAE,
                            init_from=str(base), train_encoder=False, adv_weight=0.5, adv_start=1, disc_channels=8))
    assert status["step"] == 3
    rows = (tmp_path / "vae" / "log.csv").read_text().splitlines()
    assert "d_loss" in rows[0] and "adv_lambda" in rows[0]  # the adversarial term ran
    old, new = AutoencoderKL.from_pretrained(str(base)), AutoencoderKL.from_pretrained(str(tmp_path / "vae" / "model"))
    assert new.config.scaling_factor == old.config.scaling_factor
    olds, news = old.state_dict(), new.state_dict()
    enc = [k for k in olds if k.startswith(("encoder.", "quant_conv."))]
    dec = [k for k in olds if k.startswith(("decoder.", "post_quant_conv."))]
    assert enc and dec
    assert all(torch.equal(olds[k], news[k]) for k in enc)
    assert not all(torch.equal(olds[k], news[k]) for k in dec)
    with pytest.raises(ValueError, match="init_from"):
        VaeConfig(train_encoder=False)
    with pytest.raises(FileNotFoundError, match="init_from"):
        main(VaeConfig(run_root=str(tmp_path / "x"), world_dir=str(world), max_steps=1, **COMMON, **TINY_VAE,
                       init_from=str(tmp_path / "missing")))


def test_grown_decoder_starts_as_the_old_vae_and_keeps_its_latents(trained, world, tmp_path):
    """grow_layers deepens an existing VAE without changing what it computes; decoder-only training
    then moves the decoder while the (deeper) encoder still gives the old latents."""
    from diffusers import AutoencoderKL

    from personify.mini.models import grow_vae
    from personify.mini.train import main

    root, _ = trained
    base = root / "vae" / "model"
    old = AutoencoderKL.from_pretrained(str(base)).eval()
    grown = grow_vae(old, 1).eval()
    assert grown.config.layers_per_block == old.config.layers_per_block + 1
    assert sum(p.numel() for p in grown.parameters()) > sum(p.numel() for p in old.parameters())
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        z_old, z_new = old.encode(x).latent_dist.mean, grown.encode(x).latent_dist.mean
        assert torch.allclose(z_old, z_new, atol=1e-6)
        assert torch.allclose(old.decode(z_old).sample, grown.decode(z_new).sample, atol=1e-5)

    cfg = VaeConfig(run_root=str(tmp_path), world_dir=str(world), max_steps=3, **COMMON, **TINY_VAE,
                    init_from=str(base), train_encoder=False, grow_layers=1, lr=1e-2)
    main(cfg)
    trained_vae = AutoencoderKL.from_pretrained(str(tmp_path / "vae" / "model")).eval()
    assert trained_vae.config.layers_per_block == old.config.layers_per_block + 1
    assert trained_vae.config.scaling_factor == old.config.scaling_factor
    with torch.no_grad():
        assert torch.allclose(trained_vae.encode(x).latent_dist.mean, z_old, atol=1e-6)
        assert not torch.allclose(trained_vae.decode(z_old).sample, old.decode(z_old).sample, atol=1e-4)
    main(VaeConfig(**{**cfg.__dict__, "max_steps": 4}))  # resumes into the grown architecture
    with pytest.raises(ValueError, match="grow_layers"):
        VaeConfig(grow_layers=1)


def test_widened_latent_starts_as_the_old_vae_then_uses_its_new_channels(trained, world, tmp_path):
    """grow_latent adds latent channels: the old ones are unchanged and the decoder first ignores the new
    ones (same reconstructions); after training the decoder reads them."""
    from diffusers import AutoencoderKL

    from personify.mini.models import widen_latent
    from personify.mini.train import main

    root, _ = trained
    base = root / "vae" / "model"
    old = AutoencoderKL.from_pretrained(str(base)).eval()
    c = old.config.latent_channels
    wide = widen_latent(old, c + 4).eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        p_old, p_new = old.encode(x).latent_dist, wide.encode(x).latent_dist
        assert p_new.mean.shape[1] == c + 4
        assert torch.allclose(p_old.mean, p_new.mean[:, :c], atol=1e-6) and torch.allclose(p_old.std, p_new.std[:, :c], atol=1e-6)
        assert p_new.mean[:, c:].abs().mean() > 1e-3  # the new channels carry features from the start
        assert torch.allclose(p_new.std[:, c:], torch.full_like(p_new.std[:, c:], 0.05), atol=1e-4)
        z = p_new.mean.clone()
        assert torch.allclose(old.decode(z[:, :c]).sample, wide.decode(z).sample, atol=1e-5)
        z[:, c:] += 3.0
        assert torch.allclose(old.decode(z[:, :c]).sample, wide.decode(z).sample, atol=1e-5)  # ignored at first
    with pytest.raises(ValueError, match="must exceed"):
        widen_latent(old, c)

    cfg = VaeConfig(run_root=str(tmp_path), world_dir=str(world), max_steps=3, **COMMON, **TINY_VAE,
                    init_from=str(base), grow_latent=c + 4, lr=1e-2)
    main(cfg)
    trained_vae = AutoencoderKL.from_pretrained(str(tmp_path / "vae" / "model")).eval()
    assert trained_vae.config.latent_channels == c + 4
    assert trained_vae.config.scaling_factor == old.config.scaling_factor  # the old channels keep their scale
    with torch.no_grad():
        z = trained_vae.encode(x).latent_dist.mean
        moved = z.clone()
        moved[:, c:] += 3.0
        assert not torch.allclose(trained_vae.decode(z).sample, trained_vae.decode(moved).sample, atol=1e-4)
    main(VaeConfig(**{**cfg.__dict__, "max_steps": 4}))  # resumes into the widened architecture
    with pytest.raises(ValueError, match="grow_latent"):
        VaeConfig(grow_latent=8)
    with pytest.raises(ValueError, match="grow_latent"):
        VaeConfig(init_from=str(base), grow_latent=8, train_encoder=False)


def test_unet_carried_over_to_a_widened_latent(trained, world, tmp_path):
    """A UNet continued (init_from) on a VAE with more latent channels is widened: on the old channels it first
    predicts exactly what the old UNet did, whatever the new channels hold, and predicts zero noise for them."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from personify.mini.models import widen_latent, widen_unet
    from personify.mini.train import main

    root, _ = trained
    old = UNet2DConditionModel.from_pretrained(str(root / "unet" / "model")).eval()
    c = old.config.in_channels
    wide = widen_unet(old, c + 4).eval()
    g = torch.Generator().manual_seed(0)
    z, enc = torch.randn(2, c + 4, 8, 8, generator=g), torch.randn(2, 77, old.config.cross_attention_dim, generator=g)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        ref = old(z[:, :c], t, encoder_hidden_states=enc).sample
        out = wide(z, t, encoder_hidden_states=enc).sample
        assert torch.allclose(out[:, :c], ref, atol=1e-5) and out[:, c:].abs().max() == 0
        z[:, c:] = 5.0
        assert torch.allclose(wide(z, t, encoder_hidden_states=enc).sample[:, :c], ref, atol=1e-5)

    wide_vae = tmp_path / "wide_vae"
    widen_latent(AutoencoderKL.from_pretrained(str(root / "vae" / "model")), c + 4).save_pretrained(str(wide_vae))
    kw = dict(run_root=str(tmp_path / "run"), world_dir=str(world), max_steps=2, **COMMON, **TINY_UNET,
              clip_dir=str(root / "clip" / "model"), vae_dir=str(wide_vae))
    main(UnetConfig(**kw, init_from=str(root / "unet" / "model")))
    trained_unet = UNet2DConditionModel.from_pretrained(str(tmp_path / "run" / "unet" / "model"))
    assert trained_unet.config.in_channels == trained_unet.config.out_channels == c + 4
    with pytest.raises(ValueError, match="cannot continue"):
        main(UnetConfig(**{**kw, "run_root": str(tmp_path / "run2"), "vae_dir": str(root / "vae" / "model")},
                        init_from=str(tmp_path / "run" / "unet" / "model")))


def test_export_roundtrip(trained, tmp_path):
    from diffusers import DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline
    from safetensors import safe_open

    from personify.mini.export import export_pipeline, verify_pipeline

    root, _ = trained
    out = export_pipeline(root, tmp_path / "mini-sd")
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (out / sub).is_dir(), sub
    with safe_open(str(out / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16
    img = verify_pipeline(out, prompt="a red circle on a white background", steps=3)
    assert img.size == (64, 64)
    pipe = StableDiffusionPipeline.from_pretrained(str(out), safety_checker=None)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.tokenizer.model_max_length == pipe.text_encoder.config.max_position_embeddings == 16
    EulerDiscreteScheduler.from_config(pipe.scheduler.config)  # compatible config
    vae_sf = json.loads((root / "vae" / "model" / "config.json").read_text())["scaling_factor"]
    assert pipe.vae.config.scaling_factor == pytest.approx(vae_sf)


def test_export_cli_takes_stages_from_other_folders(trained, tmp_path):
    """`--unet_dir` (likewise --clip_dir / --vae_dir): a UNet continued in another run root is exported."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    from personify.mini.export import cli

    root, _ = trained
    other = UNet2DConditionModel.from_pretrained(root / "unet" / "model")
    with torch.no_grad():
        other.conv_out.bias.fill_(0.25)
    other.save_pretrained(tmp_path / "other_unet")
    cli(["--run_root", str(root), "--out", str(tmp_path / "a"), "--fp32"])
    cli(["--run_root", str(root), "--out", str(tmp_path / "b"), "--fp32", "--unet_dir", str(tmp_path / "other_unet")])
    f = "unet/diffusion_pytorch_model.safetensors"
    a, b = load_file(tmp_path / "a" / f)["conv_out.bias"], load_file(tmp_path / "b" / f)["conv_out.bias"]
    assert (b == 0.25).all() and not (a == 0.25).all()


def test_signal_stops_the_whole_evaluators_stage(world, tmp_path, monkeypatch):
    """SIGTERM during the first evaluator checkpoints it and does not start the next one
    (session 2 found the v0 code moving on to the next evaluator after a kill)."""
    import os
    import signal

    from personify.mini import train as T

    real_step = T.ClassifierStage.train_step

    def step_then_signal(self, step, g):
        out = real_step(self, step, g)
        if step == 0:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(T.ClassifierStage, "train_step", step_then_signal)
    ev = T.main(EvaluatorsConfig(run_root=str(tmp_path), world_dir=str(world), which="classifier,clip",
                                 clip_steps=2, classifier_steps=3, **COMMON, **TINY_EVAL))
    assert ev["classifier"]["interrupted"] and ev["classifier"]["step"] == 1 and not ev["classifier"]["done"]
    assert "clip" not in ev and not (tmp_path / "evaluators" / "clip").exists()
    assert (tmp_path / "evaluators" / "classifier" / "checkpoint.pt").exists()
    assert json.loads((tmp_path / "evaluators" / "classifier" / "model" / "config.json").read_text())["stem_stride"] == 2


def test_lr_schedule_warmup_stable_decay():
    from personify.mini.loop import lr_at

    assert [lr_at(s, 1.0, 4) for s in (0, 3, 100)] == [0.25, 1.0, 1.0]  # no decay: constant after warm-up
    assert [lr_at(s, 1.0, 4, max_steps=20, decay_steps=10) for s in (9, 10, 15, 19)] == [1.0, 1.0, 0.5, 0.1]
    with pytest.raises(ValueError):
        UnetConfig(decay_steps=-1)


def test_a_decay_branch_continues_a_constant_run(trained, world, tmp_path):
    """Copy a stage folder, extend it with decay_steps: it resumes (not restarts) and the logged lr falls to ~0."""
    import shutil

    from personify.mini.train import main

    root, _ = trained
    kw = dict(world_dir=str(world), clip_dir=str(root / "clip" / "model"), vae_dir=str(root / "vae" / "model"), **COMMON, **TINY_UNET)
    main(UnetConfig(run_root=str(tmp_path / "a"), max_steps=2, **kw))
    shutil.copytree(tmp_path / "a" / "unet", tmp_path / "b" / "unet")
    main(UnetConfig(run_root=str(tmp_path / "b"), max_steps=6, decay_steps=4, **kw))
    rows = (tmp_path / "b" / "unet" / "log.csv").read_text().strip().splitlines()
    head = rows[0].split(",")
    lr = {int(r.split(",")[0]): float(r.split(",")[head.index("lr")]) for r in rows[1:]}
    peak = UnetConfig(**kw).lr
    assert sorted(lr) == [1, 2, 3, 4, 5, 6]  # steps 1-2 from the copied run, 3-6 the branch
    assert lr[2] == pytest.approx(peak) and [lr[s] / peak for s in (3, 4, 5, 6)] == pytest.approx([1.0, 0.75, 0.5, 0.25])


def test_shipped_weights_fit_the_budget():
    """Issue 3: shipped weights (generator + evaluators) <= 60 MB. Weights = the safetensors files;
    tokenizer vocabularies and configs are not counted."""
    from pathlib import Path

    import personify

    assets = Path(personify.__file__).parent / "assets"
    files = sorted((assets / "mini-sd").rglob("*.safetensors")) + sorted((assets / "evaluators").rglob("*.safetensors"))
    folders = {f.relative_to(assets).parts[1] for f in files}
    assert {"unet", "vae", "text_encoder", "clip", "dino", "classifier"} <= folders, folders
    assert sum(f.stat().st_size for f in files) <= 60_000_000


def test_unet_init_from_continues_a_trained_unet(trained, world, tmp_path):
    """init_from starts the UNet stage (weights and EMA) from a trained UNet folder, e.g. to carry it over to
    a new VAE's latents; a missing folder or a text-encoder width mismatch is one clear error."""
    from diffusers import UNet2DConditionModel

    from personify.mini.train import main

    root, _ = trained
    src = root / "unet" / "model"
    kw = dict(world_dir=str(world), **COMMON, **TINY_UNET, clip_dir=str(root / "clip" / "model"),
              vae_dir=str(root / "vae" / "model"), lr=1e-6)
    main(UnetConfig(run_root=str(tmp_path / "init"), max_steps=1, init_from=str(src), **kw))
    main(UnetConfig(run_root=str(tmp_path / "fresh"), max_steps=1, seed=1, **kw))
    ref = UNet2DConditionModel.from_pretrained(str(src)).state_dict()

    def gap(run):
        new = UNet2DConditionModel.from_pretrained(str(tmp_path / run / "unet" / "model")).state_dict()
        return max((new[k] - ref[k]).abs().max().item() for k in ref)

    assert gap("init") < 1e-4 < gap("fresh")  # one step at lr 1e-6 from the source vs a random start
    with pytest.raises(FileNotFoundError, match="init_from"):
        main(UnetConfig(run_root=str(tmp_path / "x"), max_steps=1, init_from=str(tmp_path / "missing"), **kw))
    bad = tmp_path / "bad"
    UNet2DConditionModel.from_pretrained(str(src)).save_pretrained(str(bad))
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "cross_attention_dim": cfg["cross_attention_dim"] + 1}))
    with pytest.raises(ValueError, match="cross_attention_dim"):
        main(UnetConfig(run_root=str(tmp_path / "y"), max_steps=1, init_from=str(bad), **kw))
