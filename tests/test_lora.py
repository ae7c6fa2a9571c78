"""LoRA DreamBooth: only the adapters train, the artifact is small, several concepts combine, and the
kohya/A1111 export loads back (here and in diffusers) to bit-identical images."""
from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from safetensors import safe_open

import personify
from personify.artifact import read_concept, save_concept
from personify.errors import ConfigError, PersonifyError
from personify.export import export, load_kohya_lora
from personify.generate import generate_images
from personify.methods.lora import LoRA, LoRAConfig
from personify.models import load_pipeline

from conftest import make_subject


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short LoRA run (UNet + text encoder adapters) shared by the tests of this module."""
    root = tmp_path_factory.mktemp("lora")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PERSONIFY_CACHE", str(root / "cache"))
        mp.setattr("personify.data.class_images.CLASS_STEPS", 2)
        pipe = load_pipeline("tiny")
        before = {c: {k: v.clone() for k, v in getattr(pipe, c).state_dict().items()} for c in ("unet", "text_encoder", "vae")}
        art = personify.train(
            "lora", images=make_subject(root / "subject"), pipe=pipe, out=str(root / "run"), steps=2, resolution=32,
            progress=False, class_word="dog", num_class_images=2, learning_rate=5e-2, rank=2, train_text_encoder=True,
            save_precision="fp32",
        )
    return pipe, before, art


def _image(pipe, prompt: str, seed: int = 3) -> np.ndarray:
    with torch.no_grad():
        return np.asarray(generate_images(pipe, [prompt], [seed], steps=3)[0])


def test_only_lora_parameters_change(trained):
    pipe, before, art = trained
    for comp in ("unet", "text_encoder", "vae"):
        after = getattr(pipe, comp).state_dict()
        base = {k.replace(".base_layer", ""): v for k, v in after.items() if ".lora_" not in k}
        assert base.keys() == before[comp].keys(), comp
        for k, v in base.items():
            assert torch.equal(v, before[comp][k]), f"{comp}.{k} changed"
    tensors, meta = read_concept(art)
    assert {k.split(".")[0] for k in tensors} == {"unet", "text_encoder"}
    assert all(re.search(r"\.lora_[AB]\.weight$", k) for k in tensors)
    # lora_B starts at zero: training moved it, and rank 2 shapes come from the config
    assert any(v.abs().sum() > 0 for k, v in tensors.items() if "lora_B" in k)
    assert all(v.shape[0] == 2 for k, v in tensors.items() if "lora_A" in k)
    assert meta["tokens"] == [meta["instance_prompt"].split()[1]] and meta["class_word"] == "dog"


def test_artifact_is_small(trained):
    pipe, before, art = trained
    unet_bytes = sum(v.numel() * v.element_size() for v in before["unet"].values())
    lora_bytes = sum(v.numel() * v.element_size() for v in read_concept(art)[0].values())
    assert lora_bytes < 0.2 * unet_bytes  # tiny model: 0.1x; on SD 1.5 rank 4 it is ~0.1% of the UNet
    assert art.stat().st_size < 0.2 * unet_bytes + 20_000


def test_applied_concept_reproduces_trained_pipe_and_differs_from_base(trained):
    pipe, _, art = trained
    prompt = read_concept(art)[1]["instance_prompt"]
    fresh = load_pipeline("tiny")
    personify.apply_concepts(fresh, [art])
    assert np.array_equal(_image(pipe, prompt), _image(fresh, prompt))
    assert not np.array_equal(_image(load_pipeline("tiny"), prompt), _image(fresh, prompt))


def test_kohya_export_round_trip_identical_images(trained, tmp_path):
    _, _, art = trained
    out = export(art, tmp_path / "dog.safetensors")
    with safe_open(str(out), "pt") as f:
        keys, header = list(f.keys()), f.metadata()
    assert all(re.fullmatch(r"lora_(unet|te)_[A-Za-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)", k) for k in keys)
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in keys
    assert "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_out_0.lora_up.weight" in keys
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha" in keys
    assert header["ss_network_module"] == "networks.lora" and header["ss_network_dim"] == "2"

    prompt = read_concept(art)[1]["instance_prompt"]
    applied = load_pipeline("tiny")
    personify.apply_concepts(applied, [art])
    kohya = load_pipeline("tiny")
    load_kohya_lora(kohya, out)
    assert kohya.personify_concepts[0]["tokens"] == read_concept(art)[1]["tokens"]
    img = _image(applied, prompt)
    assert np.array_equal(img, _image(kohya, prompt))
    assert not np.array_equal(img, _image(load_pipeline("tiny"), prompt))  # the LoRA does something

    # A third-party reader agrees: diffusers' own kohya converter gives the same images.
    other = load_pipeline("tiny")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        other.load_lora_weights(str(out))
    assert np.array_equal(img, _image(other, prompt))


def test_kohya_export_to_folder_and_wrong_method(trained, tmp_path):
    _, _, art = trained
    out = export(art, tmp_path / "exports")
    assert out.parent == tmp_path / "exports" and out.suffix == ".safetensors"
    with pytest.raises(PersonifyError, match="kohya or a1111"):
        export(art, tmp_path / "x.safetensors", format="diffusers")
    with pytest.raises(PersonifyError, match="trained on base model"):  # the export remembers its base model
        load_kohya_lora(load_pipeline("tiny:1"), out)


def _renamed(art, tmp_path, identifier: str, scale: float):
    """A second LoRA concept: the same adapters scaled, under another identifier."""
    tensors, meta = read_concept(art)
    meta = {k: v for k, v in meta.items() if k not in ("path", "format", "created")}
    meta.update(tokens=[identifier], instance_prompt=f"a {identifier} dog")
    return save_concept(tmp_path / f"{identifier}.safetensors", {k: v * scale if "lora_B" in k else v for k, v in tensors.items()}, meta)


def test_several_lora_concepts_apply_together(trained, tmp_path):
    _, _, art = trained
    second = _renamed(art, tmp_path, "sks", -1.5)
    prompt = "a photo of a dog"
    one, two, both = load_pipeline("tiny"), load_pipeline("tiny"), load_pipeline("tiny")
    personify.apply_concepts(one, [art])
    personify.apply_concepts(two, [second])
    personify.apply_concepts(both, [art, second])
    assert sorted(both.unet.active_adapters()) == ["personify", "personify_1"]
    assert sorted(both.text_encoder.active_adapters()) == ["personify", "personify_1"]
    images = [_image(p, prompt) for p in (one, two, both)]
    assert not np.array_equal(images[2], images[0]) and not np.array_equal(images[2], images[1])
    # the same identifier twice is a conflict, named in one line
    again = load_pipeline("tiny")
    with pytest.raises(PersonifyError, match="also used by") as e:
        personify.apply_concepts(again, [art, art])
    assert "\n" not in str(e.value)


def test_load_restores_state_exactly_on_fresh_pipeline(trained):
    pipe, _, art = trained
    tensors, meta = read_concept(art)
    cfg = LoRAConfig(**meta["config"]["method"])
    torch.manual_seed(123)  # a different random LoRA init than the run's
    m = LoRA(load_pipeline("tiny"), cfg)
    m.setup()
    assert any(not torch.equal(v, tensors[k]) for k, v in m.state_dict().items())
    m.load(tensors)
    state = m.state_dict()
    assert state.keys() == tensors.keys() and all(torch.equal(state[k], tensors[k]) for k in tensors)
    with pytest.raises(PersonifyError, match="do not fit"):
        m.load({k: v for k, v in tensors.items() if "attn1" not in k})


def test_trainable_parameters_are_only_the_adapter():
    pipe = load_pipeline("tiny")
    m = LoRA(pipe, LoRAConfig(class_word="dog", rank=3))
    m.setup()
    params = m.trainable_parameters()
    named = {id(p): n for n, p in pipe.unet.named_parameters()}
    assert params and all(".lora_" in named[id(p)] for p in params)
    assert {id(p) for p in params} == {id(p) for p in pipe.unet.parameters() if p.requires_grad}
    assert not any(p.requires_grad for p in pipe.text_encoder.parameters())
    assert m.text_frozen and not LoRA(pipe, LoRAConfig(class_word="dog", train_text_encoder=True)).text_frozen


def test_common_identifier_warns_and_rare_one_does_not():
    pipe = load_pipeline("tiny")
    with pytest.warns(UserWarning, match="common word"):
        LoRA(pipe, LoRAConfig(class_word="dog", identifier="dog"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = LoRA(pipe, LoRAConfig(class_word="dog", identifier="sks"))
    assert m.prompt == "a sks dog" and m.captions(None) == ["a sks dog"] and m.prior().prompts == ["a photo of a dog"]


@pytest.mark.parametrize("bad", [{"rank": 0}, {"alpha": -1.0}, {"dropout": 1.0}, {"text_encoder_rank": 0}, {"steps": 0}])
def test_config_validation(bad):
    with pytest.raises(ConfigError):
        LoRAConfig(class_word="dog", **bad)


def test_missing_class_word_is_a_one_line_error():
    with pytest.raises(PersonifyError, match="--class-word"):
        LoRA(load_pipeline("tiny"), LoRAConfig())


def test_load_kohya_rejects_foreign_layouts(tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "locon.safetensors"
    save_file({"lora_unet_conv_in.hada_w1_a": torch.zeros(2, 2)}, str(bad))
    with pytest.raises(PersonifyError, match="LyCORIS"):
        load_kohya_lora(load_pipeline("tiny"), bad)
    missing = tmp_path / "other.safetensors"
    save_file({"lora_unet_no_such_module.lora_down.weight": torch.zeros(2, 4), "lora_unet_no_such_module.lora_up.weight": torch.zeros(4, 2)}, str(missing))
    with pytest.raises(PersonifyError, match="does not exist"):
        load_kohya_lora(load_pipeline("tiny"), missing)


def test_cli_flags(capsys):
    from personify.cli import main

    assert main(["train", "--method", "lora", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--rank", "--alpha", "--dropout", "--text-encoder-rank", "--train-text-encoder", "--identifier", "--prior-weight", "--num-class-images"):
        assert flag in out


def test_load_kohya_mixed_ranks_and_missing_alpha(tmp_path):
    """A foreign kohya file: ranks differ per module and one module has no alpha (kohya: α = r)."""
    from safetensors.torch import save_file

    from personify.export.kohya import kohya_module_name

    g = torch.Generator().manual_seed(0)
    q = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q"  # 16 -> 16
    k = "mid_block.attentions.0.transformer_blocks.0.attn1.to_k"  # 32 -> 32
    te = "encoder.layers.1.self_attn.v_proj"  # 16 -> 16
    tensors = {
        "lora_unet_" + q.replace(".", "_") + ".lora_down.weight": torch.randn(1, 16, generator=g),
        "lora_unet_" + q.replace(".", "_") + ".lora_up.weight": torch.randn(16, 1, generator=g),
        "lora_unet_" + q.replace(".", "_") + ".alpha": torch.tensor(0.5),
        "lora_unet_" + k.replace(".", "_") + ".lora_down.weight": torch.randn(3, 32, generator=g),
        "lora_unet_" + k.replace(".", "_") + ".lora_up.weight": torch.randn(32, 3, generator=g),
        "lora_te_text_model_" + te.replace(".", "_") + ".lora_down.weight": torch.randn(2, 16, generator=g),
        "lora_te_text_model_" + te.replace(".", "_") + ".lora_up.weight": torch.randn(16, 2, generator=g),
        "lora_te_text_model_" + te.replace(".", "_") + ".alpha": torch.tensor(4.0),
    }
    path = tmp_path / "foreign.safetensors"
    save_file(tensors, str(path))
    pipe = load_pipeline("tiny")
    if hasattr(pipe.text_encoder, "text_model"):  # transformers 4 layout
        te = "text_model." + te
    W = {n: getattr(pipe, c).get_submodule(n).weight.detach().clone() for c, n in (("unet", q), ("unet", k), ("text_encoder", te))}
    load_kohya_lora(pipe, path)
    x16, x32 = torch.randn(2, 16, generator=g), torch.randn(2, 32, generator=g)
    for comp, name, x, scale in (("unet", q, x16, 0.5 / 1), ("unet", k, x32, 1.0), ("text_encoder", te, x16, 4.0 / 2)):
        key = kohya_module_name(comp, name)
        module = getattr(pipe, comp).get_submodule(name)
        delta = tensors[key + ".lora_up.weight"] @ tensors[key + ".lora_down.weight"]
        base_bias = module.base_layer.bias if module.base_layer.bias is not None else 0
        expected = x @ (W[name] + scale * delta).T + base_bias
        with torch.no_grad():
            torch.testing.assert_close(module(x), expected, rtol=1e-5, atol=1e-5)
