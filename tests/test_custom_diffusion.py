"""Custom Diffusion: only cross-attention K/V and the modifier row train; the artifact is those
weights; retrieval feeds real regularization images to the loop (or falls back); the closed-form
merge meets its constraints and beats naive averaging on the regularization features; bad merges
and double applications fail with one-line errors."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

import personify
from personify.artifact import read_concept, save_concept
from personify.errors import ConfigError, PersonifyError
from personify.generate import generate_images
from personify.methods.custom_diffusion import (
    CustomDiffusion, CustomDiffusionConfig, MergeConfig, join_concept_folders, merge_concepts, retrieve_regularization,
)
from personify.methods.custom_diffusion.augment import augment_batch, draw, example_rng, prompt_prefix, rescale
from personify.methods.custom_diffusion.merge import builtin_captions, gram, reg_change, token_features
from personify.models import load_pipeline

from conftest import make_subject

KV = re.compile(r"\.attn2\.to_[kv]\.weight$")
TRAIN = dict(model="tiny", resolution=32, progress=False, save_precision="fp32", steps=2, learning_rate=1e-2, weight_decay=0.1)


def make_pool(folder, n_match: int = 3, n_other: int = 4):
    """Captioned pool: `n_match` images captioned exactly 'a photo of a dog' (cosine 1 with the
    class prompt), others with unrelated captions."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    caps = ["a photo of a dog"] * n_match + [f"{w} in the snow at night" for w in ("teapot", "violin", "bridge", "anchor")][:n_other]
    for i, c in enumerate(caps):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"p{i:02d}.png")
        (folder / f"p{i:02d}.txt").write_text(c)
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two separately trained concepts on the tiny model (the first with retrieved real
    regularization images), with the weights before and after training."""
    root = tmp_path_factory.mktemp("cd")
    import os

    os.environ["PERSONIFY_CACHE"] = str(root / "cache")
    pipe = load_pipeline("tiny")
    before = {c: {k: v.clone() for k, v in getattr(pipe, c).state_dict().items()} for c in ("unet", "text_encoder", "vae")}
    a = personify.train("custom_diffusion", images=make_subject(root / "dog"), pipe=pipe, out=str(root / "a"), class_word="dog",
                        modifier_token="<new1>", retrieval_pool=str(make_pool(root / "pool")), num_class_images=2, **TRAIN)
    b = personify.train("custom_diffusion", images=make_subject(root / "pot", seed=3), out=str(root / "b"), class_word="teapot",
                        modifier_token="<new2>", prior_weight=0.0, **TRAIN)
    return {"pipe": pipe, "before": before, "a": a, "b": b, "root": root}


def test_only_kv_and_modifier_row_change(trained):
    pipe, before = trained["pipe"], trained["before"]
    emb_key = "embeddings.token_embedding.weight"
    old = before["text_encoder"][emb_key]
    new = pipe.text_encoder.state_dict()[emb_key]
    (i,) = pipe.tokenizer.convert_tokens_to_ids(["<new1>"])
    assert new.shape[0] == old.shape[0] + 1 and i == old.shape[0]
    assert torch.equal(new[: old.shape[0]], old)  # every original row bit-identical
    init = old[pipe.tokenizer.convert_tokens_to_ids(CustomDiffusion(load_pipeline("tiny"), CustomDiffusionConfig(class_word="dog")).initializers[0] + "</w>")]
    assert not torch.equal(new[i], init)  # the modifier row learned
    changed = {k for k, v in pipe.unet.state_dict().items() if not torch.equal(v, before["unet"][k])}
    kv = {k for k in before["unet"] if KV.search(k)}
    assert kv and changed == kv, f"changed {sorted(changed - kv)[:3]}, unchanged K/V {sorted(kv - changed)[:3]}"
    for comp in ("text_encoder", "vae"):
        after = getattr(pipe, comp).state_dict()
        for k, v in before[comp].items():
            if k != emb_key:
                assert torch.equal(after[k], v), f"{comp}.{k} changed"


def test_artifact_is_kv_and_token_only(trained):
    pipe = trained["pipe"]
    tensors, meta = read_concept(trained["a"])
    kv = {f"unet.{k}" for k in pipe.unet.state_dict() if KV.search(k)}
    assert set(tensors) == kv | {"token.<new1>"}
    n_kv = sum(tensors[k].numel() for k in kv)
    n_unet = sum(p.numel() for p in pipe.unet.parameters())
    assert meta["unet_fraction"] == pytest.approx(n_kv / n_unet) and 0 < meta["unet_fraction"] < 0.05
    assert meta["tokens"] == ["<new1>"] and meta["instance_prompt"] == "photo of a <new1> dog" and meta["prior_source"] == "retrieved"


def test_retrieved_images_are_the_prior(trained):
    """The loop read the retrieved folder (recorded as the artifact's prior_images): it holds exactly
    the pool's matching images, with their captions and the manifest."""
    _, meta = read_concept(trained["a"])
    folder = meta["prior_images"]
    assert folder and "retrieved" in folder
    man = json.loads(open(f"{folder}/manifest.json").read())
    assert man["counts"] == [2] and {e["pool_index"] for e in man["images"]} <= {0, 1, 2}
    assert all(e["caption"] == "a photo of a dog" and e["similarity"] > 0.99 for e in man["images"])


def test_apply_reproduces_and_merge_is_exact(trained):
    root = trained["root"]
    pipe = load_pipeline("tiny")
    out = merge_concepts(pipe, [trained["a"], trained["b"]], builtin_captions(1000), root / "merged.safetensors")  # speed: bench.py
    tensors, meta = read_concept(out)
    assert meta["method"] == "custom_diffusion" and meta["tokens"] == ["<new1>", "<new2>"]
    assert pipe.tokenizer.convert_tokens_to_ids("<new1>") == pipe.tokenizer.unk_token_id  # merge left the pipe alone
    concepts = [read_concept(trained[k])[0] for k in ("a", "b")]
    fresh = load_pipeline("tiny")
    personify.apply_concepts(fresh, [out])
    # Constraint W Cᵀ = V on every concept-specific row (modifier token .. EOS), for every K/V layer.
    tok = fresh.tokenizer
    for ci, (prompt, t) in enumerate((("photo of a <new1> dog", "<new1>"), ("photo of a <new2> teapot", "<new2>"))):
        ids = tok(prompt, padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
        with torch.no_grad():
            feats = fresh.text_encoder(ids)[0][0].double()
        start = ids[0].tolist().index(tok.convert_tokens_to_ids(t))
        end = ids[0].tolist().index(tok.eos_token_id) + 1
        C = feats[start:end]
        for k, w in tensors.items():
            if k.startswith("unet."):
                target = concepts[ci][k].double() @ C.T
                assert torch.allclose(w.double() @ C.T, target, rtol=1e-4, atol=1e-5), (k, prompt)
                avg = (concepts[0][k].double() + concepts[1][k].double()) / 2  # naive averaging misses them
                assert not torch.allclose(avg @ C.T, target, rtol=1e-4, atol=1e-5)
    # ... and it is the feasible weight that changes the regularization features least: another
    # feasible point (the average, corrected onto the constraints with the least-norm fix) moves more.
    base = load_pipeline("tiny")
    M = gram(torch.cat([f for _, f in token_features(base, builtin_captions(1000))]))
    vecs = {t: tensors[f"token.{t}"] for t in ("<new1>", "<new2>")}
    feats = token_features(base, ["photo of a <new1> dog", "photo of a <new2> teapot"], vecs)
    rows = {}
    for ci, (ids, f) in enumerate(feats):
        for j in range(len(ids)):
            rows.setdefault(tuple(ids[: j + 1].tolist()), (f[j], set()))[1].add(ci)
    C = torch.stack([r for r, _ in rows.values()])
    for k in (k for k in tensors if k.startswith("unet.")):
        W0 = base.unet.get_parameter(k[5:]).detach().double()
        Wi = [c[k].double() for c in concepts]
        V = torch.stack([sum(Wi[c] @ r for c in us) / len(us) for r, us in rows.values()], dim=1)
        avg = (Wi[0] + Wi[1]) / 2
        fixed = avg + (V - avg @ C.T) @ torch.linalg.pinv(C.T)  # also meets W Cᵀ = V
        assert torch.allclose(fixed @ C.T, V, atol=1e-6)
        assert reg_change(tensors[k].double() - W0, M) < reg_change(fixed - W0, M), k
    with torch.no_grad():
        img = generate_images(fresh, ["photo of a <new1> dog and a <new2> teapot"], [3], steps=2)[0]
    assert np.asarray(img).std() > 0


def test_merge_errors(trained, tmp_path):
    a, b = trained["a"], trained["b"]
    pipe = load_pipeline("tiny")
    caps = builtin_captions(50)
    with pytest.raises(PersonifyError, match="also used by") as e:
        merge_concepts(pipe, [a, a], caps, tmp_path / "m.safetensors")
    assert "\n" not in str(e.value)
    tensors, meta = read_concept(b)
    meta = {k: v for k, v in meta.items() if k not in ("path", "format", "created")}
    other = save_concept(tmp_path / "other.safetensors", tensors, {**meta, "base_model_hash": "0123abcd", "base_model": "elsewhere"})
    with pytest.raises(PersonifyError, match="base model"):
        merge_concepts(pipe, [a, other], caps, tmp_path / "m.safetensors")
    with pytest.raises(PersonifyError, match="base model"):
        merge_concepts(load_pipeline("tiny:1"), [a, b], caps, tmp_path / "m.safetensors")
    # the same base under its older (decoder-inclusive) fingerprint merges with one under the current one
    older = save_concept(tmp_path / "older.safetensors", tensors, {**meta, "base_model_hash": pipe.personify_full_hash})
    assert merge_concepts(pipe, [a, older], caps, tmp_path / "ok.safetensors").is_file()
    wrong = save_concept(tmp_path / "lora.safetensors", tensors, {**meta, "method": "lora"})
    with pytest.raises(PersonifyError, match="only Custom Diffusion"):
        merge_concepts(pipe, [a, wrong], caps, tmp_path / "m.safetensors")
    with pytest.raises(PersonifyError, match="at least two"):
        merge_concepts(pipe, [a], caps, tmp_path / "m.safetensors")
    with pytest.raises(ConfigError, match="at least two"):
        MergeConfig(concept=[str(a)])
    assert not (tmp_path / "m.safetensors").exists()


def test_two_concepts_on_one_pipe_are_errors(trained):
    with pytest.raises(PersonifyError, match="also used by") as e:  # same modifier token
        personify.apply_concepts(load_pipeline("tiny"), [trained["a"], trained["a"]])
    assert "\n" not in str(e.value)
    with pytest.raises(PersonifyError, match="personify merge"):  # distinct tokens: K/V would be overwritten
        personify.apply_concepts(load_pipeline("tiny"), [trained["a"], trained["b"]])


def test_missing_pool_falls_back_with_warning(tmp_path):
    pipe = load_pipeline("tiny")
    cfg = CustomDiffusionConfig(class_word="dog", retrieval_pool=str(tmp_path / "nowhere"))
    m = CustomDiffusion(pipe, cfg)
    with pytest.warns(UserWarning, match="falling back"):
        prior = m.prior()
    assert prior.prompts == ["a photo of a dog"] and prior.folder is None and m.prior_source == "generated"  # the loop generates them


def test_mini_model_retrieves_from_the_world_pool(tmp_path, monkeypatch):
    """load_pipeline("mini") records personify_source = "mini": that is the embedded model, whose
    default pool is the emoji world (was compared with the asset path only, so it always fell back)."""
    from personify.methods.custom_diffusion import retrieval

    monkeypatch.setenv("PERSONIFY_CACHE", str(tmp_path / "cache"))
    asked = []
    monkeypatch.setattr(retrieval, "world_pool", lambda split="gen_train": asked.append(split) or retrieval.folder_pool(make_pool(tmp_path / "pool")))
    pipe = load_pipeline("tiny")
    pipe.personify_source = "mini"
    cfg = CustomDiffusionConfig(class_word="dog", num_class_images=2)
    m = CustomDiffusion(pipe, cfg)
    prior = m.prior()
    assert prior.prompts == ["a photo of a dog"] and cfg.class_images is None  # the config is not rewritten
    assert asked == ["gen_train"] and m.prior_source == "retrieved" and len(list(prior.folder.glob("*.png"))) == 2


def test_joint_retrieval_is_the_per_class_folders_joined(tmp_path, monkeypatch):
    """A joint (several class prompts) retrieval concatenates the per-prompt cached folders that
    single-concept runs use: after those it only copies, and it loads the pool at most once."""
    from personify.methods.custom_diffusion import retrieval

    monkeypatch.setenv("PERSONIFY_CACHE", str(tmp_path / "cache"))
    folder = make_pool(tmp_path / "pool")
    (folder / "p06.txt").write_text("a photo of a teapot")  # one teapot-only caption
    loads = []
    base = retrieval.folder_pool(folder)
    pool = retrieval.CaptionPool(base.name, lambda: loads.append(1) or base.load())
    enc = lambda caps: torch.tensor([[1.0, 0.0] if "dog" in c else [0.0, 1.0] if "teapot" in c else [0.6, -0.8] for c in caps])  # noqa: E731
    args = (enc, "toy", 5, 0.85)
    dog, n_dog = retrieval.retrieve_to_folder(pool, ["a photo of a dog"], *args)
    assert n_dog == [3] and len(loads) == 1
    joint, counts = retrieval.retrieve_to_folder(pool, ["a photo of a dog", "a photo of a teapot"], *args)
    assert counts == [3, 2] and len(loads) == 2  # the dog part came from the cache
    m = json.loads((joint / "manifest.json").read_text())
    assert [e["file"] for e in m["images"]] == [f"{i:05d}.png" for i in range(5)] and m["counts"] == [3, 2]
    assert [e["class_prompt"] for e in m["images"]] == ["a photo of a dog"] * 3 + ["a photo of a teapot"] * 2
    assert [(joint / f"{i:05d}.txt").read_text().strip() for i in range(5)] == [e["caption"] for e in m["images"]]
    assert (joint / "00000.png").read_bytes() == (dog / "00000.png").read_bytes()
    assert retrieval.retrieve_to_folder(pool, ["a photo of a dog", "a photo of a teapot"], *args) == (joint, [3, 2]) and len(loads) == 2
    loads.clear()
    retrieval.retrieve_to_folder(pool, ["a photo of a cat", "a photo of a bridge"], *args)  # neither cached: one load for both
    assert len(loads) == 1


def test_retrieve_regularization_threshold_order_k():
    vecs = {"a dog": [1, 0], "dog photo": [0.9, 0.1], "a cat": [0, 1], "a puppy": [0.95, 0.05], "tree": [-1, 0]}
    enc = lambda caps: torch.tensor([vecs.get(c, [1, 0]) for c in caps], dtype=torch.float32)  # noqa: E731
    caps = ["a cat", "dog photo", "a dog", "tree", "a puppy", "a dog"]
    r = retrieve_regularization(caps, list(range(len(caps))), "query", enc, k=3, threshold=0.85)
    assert r.indices == [2, 5, 4] and r.images == [2, 5, 4] and r.captions == ["a dog", "a dog", "a puppy"]
    assert all(s > 0.85 for s in r.similarities)
    assert retrieve_regularization(caps, caps, "query", enc, k=10, threshold=0.999).indices == [2, 5]


def test_augmentation_is_per_example_deterministic_and_masked():
    g = torch.Generator().manual_seed(0)
    lat, noise = torch.randn(6, 4, 8, 8, generator=g), torch.randn(6, 4, 8, 8, generator=g)
    is_prior = torch.tensor([False] * 4 + [True] * 2)
    canvas = torch.zeros(4, 8, 8)
    prompts = ["photo of a <new1> dog"] * 4 + ["a photo of a dog"] * 2
    z1, m1, p1 = augment_batch(lat, noise, prompts, is_prior, canvas)
    z2, m2, p2 = augment_batch(lat[1:3], noise[1:3], prompts[1:3], is_prior[1:3], canvas)  # another slicing
    assert torch.equal(z1[1:3], z2) and torch.equal(m1[1:3], m2) and p1[1:3] == p2
    assert torch.equal(z1[4:], lat[4:]) and bool((m1[4:] == 1).all()) and p1[4:] == prompts[4:]
    for i in range(4):
        d = draw(example_rng(noise[i]))
        assert p1[i] == prompt_prefix(d) + prompts[i]
        if d.scale < 1:
            n = max(1, round(8 * d.scale))
            assert int(m1[i].sum()) == n * n
        else:
            assert bool((m1[i] == 1).all())
    small = rescale(torch.ones(4, 8, 8), torch.zeros(4, 8, 8), type(d)(0.5, 0.0, 0.0, 0))
    assert torch.equal(small[1][0, :4, :4], torch.ones(4, 4)) and small[1].sum() == 16 and small[0][:, 4:, :].abs().sum() == 0
    assert prompt_prefix(type(d)(0.45, 0, 0, 0)) == "very small " and prompt_prefix(type(d)(1.3, 0, 0, 1)) == "close up "


def test_joint_training_assigns_images_by_sidecar(tmp_path):
    folder = join_concept_folders([make_subject(tmp_path / "d", n=2), make_subject(tmp_path / "t", n=2, seed=4)], ["<new1>", "<new2>"], tmp_path / "joint")
    assert sorted(p.read_text().strip() for p in folder.glob("*.txt")) == ["<new1>", "<new1>", "<new2>", "<new2>"]
    pipe = load_pipeline("tiny")
    before = pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    art = personify.train("custom_diffusion", images=folder, pipe=pipe, out=str(tmp_path / "run"), class_word=["dog", "teapot"],
                          prior_weight=0.0, **{**TRAIN, "batch_size": 2})
    tensors, meta = read_concept(art)
    assert meta["tokens"] == ["<new1>", "<new2>"] and meta["instance_prompt"] == "photo of a <new1> dog and a <new2> teapot"
    m = CustomDiffusion(load_pipeline("tiny"), CustomDiffusionConfig(class_word=["dog", "teapot"]))
    for t, init in zip(("<new1>", "<new2>"), m.initializers):
        assert not torch.equal(tensors[f"token.{t}"], before[pipe.tokenizer.convert_tokens_to_ids(init + "</w>")])
    assert m.captions("<new2>") == ["photo of a <new2> teapot"] and m.captions("a <new1> dog on the moon") == ["a <new1> dog on the moon"]
    with pytest.raises(PersonifyError, match="sidecar"):
        m.captions(None)


def test_config_validation():
    with pytest.raises(ConfigError, match="class word"):
        CustomDiffusionConfig()
    with pytest.raises(ConfigError, match="one --modifier-token per"):
        CustomDiffusionConfig(class_word=["dog", "cat"], modifier_token=["<a>"])
    with pytest.raises(ConfigError, match="must differ"):
        CustomDiffusionConfig(class_word=["dog", "cat"], modifier_token=["<a>", "<a>"])
    with pytest.raises(ConfigError, match="freeze_model"):
        CustomDiffusionConfig(class_word="dog", freeze_model="all")
    assert CustomDiffusionConfig(class_word="dog").tokens == ["<new1>"]


def test_merge_moves_less_than_averaging_at_realistic_width(tmp_path):
    """With the mini model's shapes (cross-attention width 128, ~10 constraint rows) the merge
    changes the regularization features less than averaging the two concepts' weights. (On the
    16-wide tiny model 10 constraint rows pin most of the space and averaging can move less.)"""
    from personify.methods.custom_diffusion.bench import mini_shaped_pipeline, synthetic_concept

    pipe = mini_shaped_pipeline()
    a = synthetic_concept(pipe, tmp_path / "a.safetensors", "<new1>", "dog", 1)
    b = synthetic_concept(pipe, tmp_path / "b.safetensors", "<new2>", "teapot", 2)
    out = merge_concepts(pipe, [a, b], builtin_captions(300), tmp_path / "m.safetensors")
    m = read_concept(out)[1]["metrics"]
    assert m["constraint_rel_residual"] < 1e-3  # fp16 inputs
    assert m["reg_change_merge"] < 0.5 * m["reg_change_average"]
