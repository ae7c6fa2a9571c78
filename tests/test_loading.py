"""Model loading from local paths only: diffusers folders, single files, pickle refusal, hashes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from personify.errors import PersonifyError
from personify.generate import generate_images
from personify.models import load_pipeline
from personify.models.loading import save_single_file


def _img(pipe, seed=3):
    with torch.no_grad():
        return np.asarray(generate_images(pipe, ["a dog"], [seed], steps=2)[0])


def test_diffusers_folder_roundtrip(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "m")
    pipe = load_pipeline(tmp_path / "m")
    assert pipe.personify_base_hash == tiny_pipe.personify_base_hash
    assert np.array_equal(_img(pipe), _img(tiny_pipe))


def test_hash_tells_models_apart_and_ignores_fp16(tiny_pipe):
    other = load_pipeline("tiny:1")
    assert other.personify_base_hash != tiny_pipe.personify_base_hash
    from personify.models import model_hash

    half = load_pipeline("tiny")
    half.to(torch.float16)
    assert model_hash(half) == tiny_pipe.personify_base_hash
    # the VAE encoder (the latent space) counts, a swapped-in decoder does not
    for prefix, same in (("decoder.", True), ("post_quant_conv.", True), ("encoder.", False), ("quant_conv.", False)):
        m = load_pipeline("tiny")
        with torch.no_grad():
            next(p for k, p in m.vae.named_parameters() if k.startswith(prefix)).add_(0.1)
        assert (model_hash(m) == tiny_pipe.personify_base_hash) == same, prefix
    # artifacts recorded under the older fingerprint (decoder included) still name this model
    from personify.models import same_base

    assert model_hash(tiny_pipe, decoder=True) != tiny_pipe.personify_base_hash
    assert same_base(tiny_pipe, model_hash(tiny_pipe, decoder=True)) and same_base(tiny_pipe, tiny_pipe.personify_base_hash)
    assert not same_base(tiny_pipe, other.personify_base_hash) and not same_base(tiny_pipe, other.personify_full_hash)


def test_vae_that_does_not_fit_the_latents_is_refused(tiny_pipe, tmp_path):
    from diffusers import AutoencoderKL

    cfg = {k: v for k, v in tiny_pipe.vae.config.items() if not k.startswith("_")}
    AutoencoderKL(**{**cfg, "latent_channels": 8}).save_pretrained(tmp_path / "vae8")
    with pytest.raises(PersonifyError, match="do not fit"):
        load_pipeline("tiny", vae=tmp_path / "vae8")


def test_single_file_flat_with_config(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "cfg")
    save_single_file(tiny_pipe, tmp_path / "model.safetensors")
    with pytest.raises(PersonifyError, match="--model-config"):
        load_pipeline(tmp_path / "model.safetensors")
    pipe = load_pipeline(tmp_path / "model.safetensors", config=tmp_path / "cfg")
    assert pipe.personify_base_hash == tiny_pipe.personify_base_hash
    assert np.array_equal(_img(pipe), _img(tiny_pipe))


def test_pickle_refused_unless_allowed(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "cfg")
    state = {f"unet.{k}": v for k, v in tiny_pipe.unet.state_dict().items()}
    state.update({f"vae.{k}": v for k, v in tiny_pipe.vae.state_dict().items()})
    state.update({f"text_encoder.{k}": v for k, v in tiny_pipe.text_encoder.state_dict().items()})
    torch.save({"state_dict": state}, tmp_path / "model.ckpt")
    with pytest.raises(PersonifyError, match="--allow-pickle"):
        load_pipeline(tmp_path / "model.ckpt", config=tmp_path / "cfg")
    pipe = load_pipeline(tmp_path / "model.ckpt", config=tmp_path / "cfg", allow_pickle=True)
    assert pipe.personify_base_hash == tiny_pipe.personify_base_hash


def test_pickle_with_code_is_rejected_even_when_allowed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"state_dict": {"x": Evil()}}, tmp_path / "evil.ckpt")
    with pytest.raises(PersonifyError, match="weights_only"):
        load_pipeline(tmp_path / "evil.ckpt", config=tmp_path, allow_pickle=True)


def test_pickle_weights_in_folder_refused(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "m", safe_serialization=False)
    with pytest.raises(PersonifyError, match="--allow-pickle"):
        load_pipeline(tmp_path / "m")
    assert load_pipeline(tmp_path / "m", allow_pickle=True).personify_base_hash == tiny_pipe.personify_base_hash


def test_v_prediction_model_trains(tmp_path, subject_dir):
    from personify.models.tiny import build_tiny_pipeline
    import personify

    pipe = build_tiny_pipeline(prediction_type="v_prediction")
    pipe.personify_base_hash, pipe.personify_source, pipe.personify_concepts = "v", "tiny-v", []
    pipe.save_pretrained(tmp_path / "v")
    loaded = load_pipeline(tmp_path / "v")
    assert loaded.scheduler.config.prediction_type == "v_prediction"
    art = personify.train("dreambooth", images=subject_dir, pipe=loaded, out=str(tmp_path / "run"), class_word="dog",
                          prior_weight=0.0, steps=2, resolution=32, progress=False)
    assert art.is_file()


def test_v_prediction_target_is_velocity():
    from diffusers import DDPMScheduler
    from personify.training.losses import diffusion_target

    s = DDPMScheduler(prediction_type="v_prediction")
    x, n, t = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4), torch.tensor([10, 900])
    a = s.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(diffusion_target(s, x, n, t), a.sqrt() * n - (1 - a).sqrt() * x)


def test_a_deepened_vae_keeps_the_fingerprint(tiny_pipe):
    """grow_vae's new encoder blocks are exact identities: the latents and so the fingerprint stay, and
    concepts trained on the model still load with the deeper decoder; a block that computes something
    changes it."""
    from personify.mini.models import grow_vae
    from personify.models import model_hash

    grown = load_pipeline("tiny")
    grown.vae = grow_vae(grown.vae, 1)
    assert model_hash(grown) == tiny_pipe.personify_base_hash
    assert model_hash(grown, decoder=True) != tiny_pipe.personify_full_hash  # the decoder did change
    with torch.no_grad():
        grown.vae.encoder.down_blocks[0].resnets[-1].conv2.bias.add_(0.1)  # no longer the identity
    assert model_hash(grown) != tiny_pipe.personify_base_hash
