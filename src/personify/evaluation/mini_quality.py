"""Quality of the embedded mini model, measured with the separately trained evaluators.

    python -m personify.evaluation.mini_quality --model mini --out docs/img

- class fidelity: "a photo of a {class}" for the 50 most frequent classes, top-1 of the evaluator
  classifier; its ceiling is the same classifier on real test renders of those classes, and the
  generator's own ceiling the classifier on those renders after a VAE round trip (encode -> decode):
  a generator can draw no sharper than its VAE decodes;
- background and style words obeyed: zero-shot CLIP-evaluator choice among all background (style)
  phrases for images generated with one of them, each phrase naming the image's class ("a photo of a
  dog on the beach"); the ceiling is the same on real test renders (for styles, an equal number per
  style, as generated); styles also per style, after the VAE round trip, and over the style-word prompts only
  (`style_words_obeyed`: "a pencil sketch of a dog" etc., "photo" prompts excluded);
- Fréchet distance between generated and real test renders in the DINO evaluator's feature space
  (Heusel et al. 2017, Eq. 6, with DINO features instead of Inception);
- sampling speed in images/s (25 DDIM steps with guidance, batch 16).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..generate import contact_sheet, generate_images
from .dreambench import Evaluator
from .run import default_evaluator_path

CLIP_MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
CLIP_STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)


def load_classifier(path: Path):
    from ..mini.models import MiniClassifier

    return MiniClassifier.from_pretrained(path).float().eval()


def _u8(images) -> torch.Tensor:
    """PIL list or uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1]."""
    if isinstance(images, list):
        images = np.stack([np.asarray(im.convert("RGB")) for im in images])
    return torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2).float() / 255.0


@torch.no_grad()
def classify(clf, x01: torch.Tensor, batch: int = 256) -> torch.Tensor:
    return torch.cat([clf((x01[i : i + batch] - CLIP_MEAN) / CLIP_STD).argmax(-1) for i in range(0, len(x01), batch)])


@torch.no_grad()
def zero_shot(ev: Evaluator, x01: torch.Tensor, prompts: list[str], batch: int = 256) -> torch.Tensor:
    text = ev.text(prompts)  # (K, D)
    return torch.cat([(ev.clip.image(x01[i : i + batch]) @ text.T).argmax(-1) for i in range(0, len(x01), batch)])


@torch.no_grad()
def features(ev: Evaluator, x01: torch.Tensor, batch: int = 256) -> np.ndarray:
    return torch.cat([ev.dino.image(x01[i : i + batch]) for i in range(0, len(x01), batch)]).double().numpy()


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)
    covmean = (covmean[0] if isinstance(covmean, tuple) else covmean).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def balanced_indices(labels: np.ndarray, k: int, n: int) -> np.ndarray:
    """The first `n` indices of each label 0..k-1, `n` cut to the rarest label's count: a set whose
    plain accuracy is the balanced accuracy (mean per-label recall)."""
    n = min([n] + [int((labels == c).sum()) for c in range(k)])
    return np.concatenate([np.flatnonzero(labels == c)[:n] for c in range(k)])


def background_prompts(meta: dict) -> tuple[list, list[str]]:
    """The world's backgrounds and a zero-shot template for each ("a photo of {} on the beach")."""
    from ..world.backgrounds import BACKGROUNDS

    bgs = [b for b in BACKGROUNDS if b.name in meta["backgrounds"]]
    return bgs, [f"a photo of {{}} {b.phrase}" for b in bgs]


def style_prompts(meta: dict) -> tuple[list[str], list[str]]:
    """["photo", *styles] and their zero-shot templates ("a pencil sketch of {}")."""
    from ..world.captions import STYLE_PREFIX

    return ["photo"] + list(meta["styles"]), ["a photo of {}"] + [f"{STYLE_PREFIX[s]} {{}}" for s in meta["styles"]]


@torch.no_grad()
def choose(ev: Evaluator, x01: torch.Tensor, templates: list[str], classes: list[str] | None = None, batch: int = 256) -> torch.Tensor:
    """Zero-shot choice among `templates` per image. With `classes`, {} is the image's class with its
    article ("a photo of a dog on the beach" vs "... a dog in the snow"): the question is which
    background (style) the dog is in. Without, {} is "something", the wording before session 9 — a word no
    world caption contains, so the evaluator's text embedding of it is partly untrained noise."""
    from ..world.captions import with_article

    if classes is None:
        return zero_shot(ev, x01, [t.format("something") for t in templates], batch)
    img = torch.cat([ev.clip.image(x01[i : i + batch]) for i in range(0, len(x01), batch)])  # (N, D)
    text = {c: ev.text([t.format(with_article(c, c)) for t in templates]) for c in set(classes)}  # class -> (K, D)
    return torch.stack([(img[i] @ text[c].T).argmax() for i, c in enumerate(classes)])


def real_background_accuracy(ev: Evaluator, meta: dict, test: dict, n: int = 3000, named: bool = True) -> float:
    """Zero-shot background choice on the first `n` unstyled real renders with a listed background:
    the ceiling of "background obeyed" (what this evaluator can read on real images). `named`: the
    prompts name the render's class (see `choose`)."""
    bgs, templates = background_prompts(meta)
    name_to_i = {b.name: i for i, b in enumerate(bgs)}
    names = meta["backgrounds"]
    sel = np.array([bid >= 0 and names[bid] in name_to_i for bid in test["background_id"]]) & (test["style_id"] < 0)
    idx = np.flatnonzero(sel)[:n]
    truth = torch.tensor([name_to_i[names[b]] for b in test["background_id"][idx]])
    classes = [meta["classes"][c] for c in test["class_id"][idx]] if named else None
    return float((choose(ev, _u8(test["images"][idx]), templates, classes) == truth).float().mean())


def per_label_accuracy(pred: torch.Tensor, truth: torch.Tensor, names: list[str]) -> dict[str, float]:
    """{name: accuracy among the samples whose true label is that name} (which style fails, not only how many)."""
    return {n: float((pred[truth == i] == i).float().mean()) for i, n in enumerate(names) if (truth == i).any()}


def confusion_per_style(cm: np.ndarray, styles: list[str]) -> dict[str, float]:
    """{style: its row's recall} of a (S, S) confusion matrix (rows = true styles; empty rows read 0)."""
    return {st: float(cm[i, i] / max(cm[i].sum(), 1)) for i, st in enumerate(styles)}


def style_words_mean(per_style: dict[str, float]) -> float:
    """Mean accuracy over the styles a prompt names by a word (every style but "photo"; equal counts per style)."""
    words = [v for k, v in per_style.items() if k != "photo"]
    return float(sum(words) / len(words))


def real_style_confusion(ev: Evaluator, meta: dict, test: dict, per_style: int = 150, named: bool = True,
                         transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> np.ndarray:
    """(S, S) confusion of the zero-shot style choice on real renders, `per_style` of each (rows = true,
    photo first). Balanced like the generated set: ~85% of real renders are photos, so an unbalanced
    set mostly measures how often the evaluator calls a photo a photo. `named`: see `choose`.
    `transform`: applied to the (N, 3, H, W) [0, 1] renders first, e.g. the VAE round trip (the style ceiling
    of a generator that decodes through that VAE)."""
    styles, templates = style_prompts(meta)
    sid = test["style_id"] + 1  # 0 = photo
    idx = balanced_indices(sid, len(styles), per_style)
    classes = [meta["classes"][c] for c in test["class_id"][idx]] if named else None
    x = _u8(test["images"][idx])
    pred = choose(ev, transform(x) if transform else x, templates, classes).numpy()
    cm = np.zeros((len(styles), len(styles)), int)
    np.add.at(cm, (sid[idx], pred), 1)
    return cm


@torch.no_grad()  # 1,000 images' encode/decode graphs would hold ~20 GB
def vae_roundtrip(vae, x01: torch.Tensor, batch: int = 100) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> the VAE's reconstruction (posterior mean), same range."""
    out = []
    for s in range(0, len(x01), batch):
        x = x01[s:s + batch].to(vae.dtype) * 2 - 1
        out.append((vae.decode(vae.encode(x).latent_dist.mean).sample.float().clamp(-1, 1) + 1) / 2)
    return torch.cat(out)


def measure(model: str = "mini", per_class: int = 8, per_background: int = 24, fd_n: int = 1000, seed: int = 0, out: Path | None = None,
            evaluators: Path | None = None) -> dict:
    from .. import load_pipeline
    from ..evaluation.encoders import load_clip, load_dino
    from ..world import load_meta, load_split
    from ..world.captions import STYLE_PREFIX

    if out:  # made before any sampling, so a bad --out fails at once instead of after minutes of work
        Path(out).mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline(model)
    root = Path(evaluators) if evaluators else default_evaluator_path("clip").parent
    ev = Evaluator(load_clip(root / "clip"), load_dino(root / "dino"))
    clf = load_classifier(root / "classifier")
    meta = load_meta()
    classes = meta["classes"]
    test = load_split("test")
    rng = np.random.default_rng(seed)
    res: dict = {"model": model}

    # Sampling speed first, on a warm model.
    generate_images(pipe, ["a photo of a dog"] * 2, [0, 1], steps=25)
    t0 = time.time()
    generate_images(pipe, ["a photo of a cat"] * 16, list(range(16)), steps=25)
    res["images_per_s"] = 16 / (time.time() - t0)

    head = meta["head"][:50]
    prompts = [f"a photo of a {c}" for c in head for _ in range(per_class)]
    imgs = generate_images(pipe, prompts, [seed + i for i in range(len(prompts))], steps=25)
    pred = classify(clf, _u8(imgs))
    target = torch.tensor([classes.index(c) for c in head for _ in range(per_class)])
    res["head50_top1"] = float((pred == target).float().mean())
    mask = np.isin(test["class_id"], [classes.index(c) for c in head])
    real = _u8(test["images"][mask][:5000])
    res["head50_top1_real_ceiling"] = float((classify(clf, real) == torch.from_numpy(test["class_id"][mask][:5000]).long()).float().mean())
    res["head50_top1_vae_ceiling"] = float((classify(clf, vae_roundtrip(pipe.vae, real[:1000])) ==
                                            torch.from_numpy(test["class_id"][mask][:1000]).long()).float().mean())
    if out:
        contact_sheet(imgs[:: per_class][:50], cols=10).save(Path(out) / "mini_head50.png")

    # Backgrounds: generate with each phrase, choose among all phrases zero-shot.
    # Both wordings of the prompts (see `choose`): named is the measure, "something" the pre-session-9 one.
    bgs, bg_templates = background_prompts(meta)
    cls_pick = [head[i % 10] for i in range(per_background)]
    gen = [f"a photo of a {c} {b.phrase}" for b in bgs for c in cls_pick]
    imgs_bg = generate_images(pipe, gen, [seed + i for i in range(len(gen))], steps=25)
    truth = torch.tensor([i for i in range(len(bgs)) for _ in cls_pick])
    for key, named in (("", True), ("_something", False)):
        pred = choose(ev, _u8(imgs_bg), bg_templates, [c for _ in bgs for c in cls_pick] if named else None)
        res[f"background_obeyed{key}"] = float((pred == truth).float().mean())
        res[f"background_obeyed_real_ceiling{key}"] = real_background_accuracy(ev, meta, test, named=named)
    if out:
        contact_sheet(imgs_bg[:: per_background], cols=len(bgs) // 2 + 1).save(Path(out) / "mini_backgrounds.png")

    # Styles: "photo" plus the three styles.
    styles, st_templates = style_prompts(meta)
    gen = [f"a photo of a {c}" if s == "photo" else f"{STYLE_PREFIX[s]} a {c}" for s in styles for c in cls_pick]
    imgs_st = generate_images(pipe, gen, [seed + i for i in range(len(gen))], steps=25)
    truth = torch.tensor([i for i in range(len(styles)) for _ in cls_pick])
    for key, named in (("", True), ("_something", False)):
        pred = choose(ev, _u8(imgs_st), st_templates, [c for _ in styles for c in cls_pick] if named else None)
        res[f"style_obeyed{key}"] = float((pred == truth).float().mean())
        res[f"style_obeyed_per_style{key}"] = per_label_accuracy(pred, truth, styles)
        cm = real_style_confusion(ev, meta, test, named=named)
        res[f"style_obeyed_real_ceiling{key}"] = float(cm.trace() / cm.sum())
        res[f"style_obeyed_real_per_style{key}"] = confusion_per_style(cm, styles)
    # The same real renders after the VAE round trip: which styles the decoder can still show.
    cm = real_style_confusion(ev, meta, test, transform=lambda x: vae_roundtrip(pipe.vae, x))
    res["style_obeyed_vae_ceiling"] = float(cm.trace() / cm.sum())
    res["style_obeyed_vae_per_style"] = confusion_per_style(cm, styles)
    # The prompts that carry a style word (photo rows excluded): the evaluator itself calls only about half of the
    # real plain renders "a photo", so the 4-way number mixes the evaluator's photo confusion into the generator's.
    for k in ("style_obeyed_per_style", "style_obeyed_real_per_style", "style_obeyed_vae_per_style"):
        res[k.replace("style_obeyed", "style_words_obeyed").replace("_per_style", "")] = style_words_mean(res[k])

    # Fréchet distance on test captions vs the renders they describe.
    pick = rng.choice(len(test["captions"]), size=min(fd_n, len(test["captions"])), replace=False)
    gen = generate_images(pipe, [str(c) for c in test["captions"][pick]], [seed + i for i in range(len(pick))], steps=25)
    res["frechet_dino"] = frechet(features(ev, _u8(gen)), features(ev, _u8(test["images"][pick])))
    other = rng.choice(len(test["captions"]), size=len(pick), replace=False)
    res["frechet_dino_real_vs_real"] = frechet(features(ev, _u8(test["images"][other])), features(ev, _u8(test["images"][pick])))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mini")
    ap.add_argument("--per-class", type=int, default=8)
    ap.add_argument("--fd-n", type=int, default=1000)
    ap.add_argument("--out", default=None, help="folder for sample grids")
    ap.add_argument("--json", default=None, help="write the numbers here")
    ap.add_argument("--per-background", type=int, default=24)
    ap.add_argument("--evaluators", default=None, help="folder with clip/, dino/, classifier/ (default: shipped)")
    a = ap.parse_args()
    res = measure(a.model, a.per_class, a.per_background, fd_n=a.fd_n, out=Path(a.out) if a.out else None,
                  evaluators=Path(a.evaluators) if a.evaluators else None)
    text = json.dumps(res, indent=1)
    print(text)
    if a.json:
        Path(a.json).write_text(text)


if __name__ == "__main__":
    main()
