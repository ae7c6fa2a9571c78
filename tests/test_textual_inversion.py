"""Textual Inversion: only the placeholder rows of the embedding matrix change, the artifact is the
vectors, and the A1111 / diffusers exports load in diffusers' `load_textual_inversion`."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import personify
from personify.artifact import read_concept
from personify.errors import ConfigError, PersonifyError
from personify.export import export
from personify.generate import generate_images
from personify.methods.textual_inversion import OBJECT_TEMPLATES, STYLE_TEMPLATES, TextualInversion, TextualInversionConfig
from personify.models import load_pipeline

from conftest import make_subject

PLACEHOLDER = "<red-box>"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short 2-vector run shared by the module; lr and weight decay high enough that a missing
    restore of the frozen rows would show."""
    root = tmp_path_factory.mktemp("ti")
    pipe = load_pipeline("tiny")
    before = {c: {k: v.clone() for k, v in getattr(pipe, c).state_dict().items()} for c in ("unet", "text_encoder", "vae")}
    art = personify.train(
        "textual_inversion", images=make_subject(root / "subject"), pipe=pipe, out=str(root / "run"), steps=2,
        resolution=32, progress=False, class_word="box", placeholder=PLACEHOLDER, num_vectors=2,
        learning_rate=5e-2, weight_decay=0.1, save_precision="fp32",
    )
    return pipe, before, art


def test_only_placeholder_rows_change(trained):
    pipe, before, art = trained
    emb_key = "embeddings.token_embedding.weight"
    old = before["text_encoder"][emb_key]
    new = pipe.text_encoder.state_dict()[emb_key]
    ids = pipe.tokenizer.convert_tokens_to_ids([PLACEHOLDER, PLACEHOLDER + "_1"])
    assert new.shape[0] == old.shape[0] + 2 and ids == [old.shape[0], old.shape[0] + 1]
    assert torch.equal(new[: old.shape[0]], old)  # every original row bit-identical
    init = old[pipe.tokenizer.convert_tokens_to_ids("box</w>")]
    assert not torch.equal(new[ids[0]], init) and not torch.equal(new[ids[1]], init)  # the new rows learned
    for comp in ("unet", "text_encoder", "vae"):
        after = getattr(pipe, comp).state_dict()
        for k, v in before[comp].items():
            if k != emb_key:
                assert torch.equal(after[k], v), f"{comp}.{k} changed"


def test_artifact_is_the_vectors(trained):
    pipe, _, art = trained
    tensors, meta = read_concept(art)
    assert list(tensors) == [PLACEHOLDER] and tensors[PLACEHOLDER].shape == (2, 16)
    emb = pipe.text_encoder.get_input_embeddings().weight
    assert torch.equal(tensors[PLACEHOLDER], emb[-2:].detach())
    assert meta["tokens"] == [PLACEHOLDER, PLACEHOLDER + "_1"] and meta["instance_prompt"] == f"a photo of a {PLACEHOLDER}"
    assert art.stat().st_size < 4096


def test_apply_reproduces_trained_pipe(trained):
    pipe, _, art = trained
    prompt = f"a photo of a {PLACEHOLDER} {PLACEHOLDER}_1"  # the core does not expand multi-vector tokens yet
    fresh = load_pipeline("tiny")
    personify.apply_concepts(fresh, [art])
    with torch.no_grad():
        a = np.asarray(generate_images(pipe, [prompt], [5], steps=3)[0])
        b = np.asarray(generate_images(fresh, [prompt], [5], steps=3)[0])
    assert np.array_equal(a, b)


def test_same_placeholder_twice_is_an_error(trained):
    _, _, art = trained
    with pytest.raises(PersonifyError, match="also used by") as e:
        personify.apply_concepts(load_pipeline("tiny"), [art, art])
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("fmt", ["a1111", "diffusers"])
def test_export_loads_in_diffusers(trained, tmp_path, fmt):
    _, _, art = trained
    vectors = read_concept(art)[0][PLACEHOLDER]
    out = export(art, tmp_path, format=fmt)
    data = load_file(str(out))
    if fmt == "a1111":
        assert out.name == "red-box.safetensors" and list(data) == ["emb_params"]
    else:
        assert out.name == "learned_embeds.safetensors" and list(data) == [PLACEHOLDER]
    pipe = load_pipeline("tiny")
    pipe.load_textual_inversion(str(out), token="<other-name>" if fmt == "a1111" else None)
    token = "<other-name>" if fmt == "a1111" else PLACEHOLDER
    ids = pipe.tokenizer.convert_tokens_to_ids([token, token + "_1"])
    emb = pipe.text_encoder.get_input_embeddings().weight
    assert torch.equal(emb[ids].detach(), vectors)


def test_export_rejects_kohya_lora_format_for_ti_and_other_methods(trained, tmp_path):
    _, _, art = trained
    assert load_file(str(export(art, tmp_path / "k.safetensors", format="kohya"))).keys() == {"emb_params"}  # kohya = a1111
    with pytest.raises(PersonifyError, match="a1111 or kohya or diffusers"):
        export(art, tmp_path / "x.safetensors", format="onnx")


def test_load_restores_state_exactly_on_fresh_pipeline(trained):
    _, _, art = trained
    tensors, meta = read_concept(art)
    m = TextualInversion(load_pipeline("tiny"), TextualInversionConfig(**meta["config"]["method"]))
    m.setup()
    assert not torch.equal(m.state_dict()[PLACEHOLDER], tensors[PLACEHOLDER])
    m.load(tensors)
    assert torch.equal(m.state_dict()[PLACEHOLDER], tensors[PLACEHOLDER])
    with pytest.raises(PersonifyError, match="does not fit"):
        m.load({PLACEHOLDER: torch.zeros(2, 8)})


def test_placeholder_in_vocabulary_is_an_error():
    m = TextualInversion(load_pipeline("tiny"), TextualInversionConfig(class_word="dog", placeholder="dog"))
    with pytest.raises(PersonifyError, match="already in the vocabulary"):
        m.setup()


def test_multi_word_class_word_starts_from_the_mean_of_its_tokens():
    """DreamBench class words such as "race car" are several tokens: TI must train on them (it used
    to refuse), with a whitespace-free default placeholder and the vectors at the tokens' mean."""
    pipe = load_pipeline("tiny")
    emb = pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    word_ids = pipe.tokenizer("race car", add_special_tokens=False).input_ids
    assert len(word_ids) == 2
    m = TextualInversion(pipe, TextualInversionConfig(class_word="race car", num_vectors=2))
    assert m.config.token == "<my-race-car>"
    m.setup()
    new = pipe.text_encoder.get_input_embeddings().weight.detach()[m.ids]  # (2, D)
    expected = emb[word_ids].mean(0)
    assert not torch.allclose(expected, emb[word_ids[0]])
    torch.testing.assert_close(new, expected.expand_as(new))


def test_initializer_without_tokens_is_an_error():
    m = TextualInversion(load_pipeline("tiny"), TextualInversionConfig(initializer=" "))
    with pytest.raises(PersonifyError, match="no tokens"):
        m.setup()


def _ti_loss(m, pipe, prompts):
    g = torch.Generator().manual_seed(0)
    return m.loss({
        "latents": torch.randn(len(prompts), 4, 4, 4, generator=g), "noise": torch.randn(len(prompts), 4, 4, 4, generator=g),
        "timesteps": torch.tensor([500, 900][: len(prompts)]),
        "input_ids": pipe.tokenizer(prompts, padding="max_length", max_length=16, return_tensors="pt").input_ids,
    })


def test_setup_freezes_the_model_and_trains_only_the_placeholder_rows():
    pipe = load_pipeline("tiny")
    m = TextualInversion(pipe, TextualInversionConfig(class_word="dog", placeholder="<d>", num_vectors=2))
    m.setup()
    emb = pipe.text_encoder.get_input_embeddings().weight
    assert m.trainable_parameters() == [m.rows.param] and m.rows.param.shape == (2, emb.shape[1]) and not m.text_frozen
    assert torch.equal(m.rows.param, emb[m.ids])
    assert not any(p.requires_grad for c in (pipe.unet, pipe.text_encoder, pipe.vae) for p in c.parameters())
    _ti_loss(m, pipe, ["a photo of a <d> <d>_1"]).backward()
    assert emb.grad is None and bool((m.rows.param.grad.abs().sum(1) > 0).all())  # both vectors, nothing else
    assert not pipe.text_encoder.get_input_embeddings()._forward_hooks  # the swap hook lives only inside encode_text


class _MaskedWholeMatrix:
    """The reference implementations' way (diffusers' textual_inversion.py): the optimizer gets the
    whole (V, D) matrix, the other rows' gradients are masked to zero and the rows restored after
    every step (AdamW's weight decay would still move them)."""

    def __init__(self, text_encoder, ids: list[int]):
        self.weight = text_encoder.get_input_embeddings().weight  # (V, D)
        self.weight.requires_grad_(True)
        self.frozen = torch.ones(self.weight.shape[0], dtype=torch.bool)
        self.frozen[ids] = False
        self.original = self.weight.detach().clone()
        mask = (~self.frozen).to(self.weight.dtype)[:, None]  # (V, 1)
        self.weight.register_hook(lambda g: g * mask)

    def restore(self) -> None:
        with torch.no_grad():
            self.weight[self.frozen] = self.original[self.frozen]


def test_rows_train_as_the_whole_masked_matrix_would():
    """The (N, D) parameter moves exactly like the placeholder rows of the whole embedding matrix
    with the other rows' gradients masked to zero (the reference implementation's optimizer): the
    same AdamW update, weight decay and clipping, and the other rows stay bit-identical."""
    from personify.methods.base import Method

    prompts = ["a photo of a <d> <d>_1", "a <d> <d>_1 and a <d> <d>_1"]  # repeated tokens: gradients sum
    pipe = load_pipeline("tiny")
    m = TextualInversion(pipe, TextualInversionConfig(class_word="dog", placeholder="<d>", num_vectors=2))
    m.setup()
    ref_pipe = load_pipeline("tiny")
    ref = TextualInversion(ref_pipe, TextualInversionConfig(class_word="dog", placeholder="<d>", num_vectors=2))
    ref.setup()
    ref.encode_text = lambda batch: Method.encode_text(ref, batch)  # the plain lookup of the matrix, no swap
    whole = _MaskedWholeMatrix(ref_pipe.text_encoder, ref.ids)
    before = ref_pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    opts = [torch.optim.AdamW(m.trainable_parameters(), lr=5e-2, weight_decay=0.1), torch.optim.AdamW([whole.weight], lr=5e-2, weight_decay=0.1)]
    for _ in range(3):
        for method, p, opt, done in ((m, pipe, opts[0], m.after_step), (ref, ref_pipe, opts[1], whole.restore)):
            params = opt.param_groups[0]["params"]
            _ti_loss(method, p, prompts).backward()
            torch.nn.utils.clip_grad_norm_(params, 1e-3)  # small enough to clip every step
            opt.step()
            opt.zero_grad(set_to_none=True)
            done()
    emb, ref_emb = pipe.text_encoder.get_input_embeddings().weight, ref_pipe.text_encoder.get_input_embeddings().weight
    torch.testing.assert_close(m.rows.param.detach(), ref_emb[ref.ids].detach(), rtol=1e-5, atol=1e-6)
    assert torch.equal(emb[m.ids], m.rows.param.detach())  # synced into the matrix after every step
    assert not torch.equal(emb[m.ids], before[m.ids])
    others = torch.ones(emb.shape[0], dtype=torch.bool)
    others[m.ids] = False
    assert torch.equal(emb[others], before[others]) and torch.equal(ref_emb[others], before[others])


def test_templates_and_captions():
    pipe = load_pipeline("tiny")
    m = TextualInversion(pipe, TextualInversionConfig(class_word="cat", num_vectors=3))
    assert m.placeholder == "<my-cat>" and m.names == ["<my-cat>", "<my-cat>_1", "<my-cat>_2"]
    caps = m.captions(None)
    assert len(set(caps)) == len(OBJECT_TEMPLATES) >= 20 and all("<my-cat> <my-cat>_1 <my-cat>_2" in c for c in caps)
    assert m.captions("[V] sleeping on a sofa") == ["<my-cat> <my-cat>_1 <my-cat>_2 sleeping on a sofa"]
    s = TextualInversion(pipe, TextualInversionConfig(initializer="watercolor", what="style", placeholder="<wc>"))
    assert s.captions(None) == [t.format("<wc>") for t in STYLE_TEMPLATES] and len(STYLE_TEMPLATES) >= 10


@pytest.mark.parametrize("bad", [{"num_vectors": 0}, {"placeholder": "two words"}, {"placeholder": "{x}"}, {"learning_rate": 0.0}])
def test_config_validation(bad):
    with pytest.raises(ConfigError):
        TextualInversionConfig(class_word="dog", **bad)
    with pytest.raises(ConfigError, match="--initializer"):
        TextualInversionConfig()


def test_cli_flags(capsys):
    from personify.cli import main

    assert main(["train", "--method", "textual_inversion", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--placeholder", "--num-vectors", "--initializer", "--what", "--class-word", "--steps"):
        assert flag in out


def test_resume_from_a_whole_matrix_optimizer_state_is_a_clear_error(tmp_path):
    """Checkpoints written before TI trained the rows alone hold AdamW state of the whole (V, D)
    matrix; torch loads it without a shape check, so the loop names the problem instead of failing
    inside the first step."""
    kw = dict(images=make_subject(tmp_path / "subject"), model="tiny", out=str(tmp_path / "run"), resolution=32, progress=False,
              class_word="box", placeholder=PLACEHOLDER, checkpoint_every=1)
    personify.train("textual_inversion", steps=1, **kw)
    opt_file = next((tmp_path / "run" / "checkpoints").glob("step-*")) / "optimizer.pt"
    opt = torch.load(opt_file, weights_only=True)
    st = opt["state"][0]
    vocab = load_pipeline("tiny").text_encoder.get_input_embeddings().weight.shape[0] + 1
    st["exp_avg"], st["exp_avg_sq"] = torch.zeros(vocab, st["exp_avg"].shape[1]), torch.zeros(vocab, st["exp_avg"].shape[1])
    torch.save(opt, opt_file)
    with pytest.raises(PersonifyError, match="optimizer state does not fit"):
        personify.train("textual_inversion", steps=2, resume=True, **kw)
