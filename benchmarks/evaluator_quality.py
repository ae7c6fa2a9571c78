"""How well two sets of mini evaluators read *real* renders, side by side (reference = the shipped ones).

    OMP_NUM_THREADS=1 python benchmarks/evaluator_quality.py --candidate DIR [--reference DIR] [--json F]

DIR holds clip/ and dino/ as `personify.mini.export.export_evaluators` writes them. Every measure is
on real images only — the world's `test` renders and mini-DreamBench's held-out subjects — never on
generated ones, so picking an evaluator by these numbers cannot flatter the generator:

- CLIP zero-shot style on real renders, balanced 150 per style (the ceiling of mini_quality's "style
  obeyed"), with the per-style recall;
- CLIP zero-shot background on 3,000 unstyled real renders (the ceiling of "background obeyed");
  both with the prompts naming each render's class (mini_quality's measure since session 9) and with
  the older "something" wording (`_something`);
- CLIP zero-shot class: "a photo of a {class}" over the 50 most frequent classes, real renders of them;
- subject separation on mini-DreamBench (30 held-out subjects, 4-6 photos each): the AUC with which the
  cosine of an image pair tells same-subject pairs from different-subject pairs (Mann-Whitney), for
  DINO and CLIP-I; also among the 7 dogs only (same class, other subject: what DreamBench's DINO metric
  is for, Ruiz et al. 2023 Sec. 4.1); and the mean same-subject cosine (the real-vs-real bound that
  DreamBench numbers are divided by);
- DINO 1-nearest-neighbour class accuracy, leave-one-out, on 3,000 real renders.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import rankdata

from personify.data.images import load_rgb
from personify.evaluation.dreambench import Evaluator, load_mini
from personify.evaluation.encoders import load_clip, load_dino
from personify.evaluation.mini_quality import _u8, features, real_background_accuracy, real_style_confusion, style_prompts, zero_shot
from personify.evaluation.run import default_evaluator_path
from personify.world import load_meta, load_split


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a positive pair's score > a negative pair's), ties half (Mann-Whitney U / (n_pos n_neg))."""
    r = rankdata(np.concatenate([pos, neg]))
    return float((r[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def subject_separation(ev: Evaluator) -> dict[str, float]:
    bench = load_mini()
    images, subj, cls = [], [], []
    for s in bench.subjects.values():
        for p in s.images:
            images.append(load_rgb(p))
            subj.append(s.name)
            cls.append(s.class_word)
    subj, cls = np.array(subj), np.array(cls)
    d, c = ev.embed(images)  # (N, Dd), (N, Dc), L2-normalized
    iu = np.triu_indices(len(images), 1)
    same = subj[iu[0]] == subj[iu[1]]
    dogs = (cls[iu[0]] == "dog") & (cls[iu[1]] == "dog")
    out = {}
    for name, e in (("dino", d), ("clip_i", c)):
        sim = (e @ e.T).numpy()[iu]
        out[f"{name}_auc"] = auc(sim[same], sim[~same])
        out[f"{name}_auc_dogs"] = auc(sim[same & dogs], sim[~same & dogs])
        out[f"{name}_same_subject_cos"] = float(sim[same].mean())
        out[f"{name}_other_subject_cos"] = float(sim[~same].mean())
    return out


def measure(root: Path, meta: dict, test: dict) -> dict[str, float]:
    ev = Evaluator(load_clip(root / "clip"), load_dino(root / "dino"))
    t0 = time.time()
    res: dict[str, float] = {}
    for key, named in (("", True), ("_something", False)):
        cm = real_style_confusion(ev, meta, test, named=named)
        res[f"style_real{key}"] = float(cm.trace() / cm.sum())
        for i, name in enumerate(style_prompts(meta)[0]):
            res[f"style_recall_{name.replace(' ', '_')}{key}"] = float(cm[i, i] / cm[i].sum())
        res[f"background_real{key}"] = real_background_accuracy(ev, meta, test, named=named)
    head = list(meta["head"][:50])
    pos = {meta["classes"].index(h): k for k, h in enumerate(head)}  # class id -> prompt index
    idx = np.flatnonzero(np.isin(test["class_id"], list(pos)))[:3000]
    truth = torch.tensor([pos[int(c)] for c in test["class_id"][idx]])
    pred = zero_shot(ev, _u8(test["images"][idx]), [f"a photo of a {h}" for h in head])
    res["class_head50_zero_shot"] = float((pred == truth).float().mean())
    res.update(subject_separation(ev))
    f = features(ev, _u8(test["images"][:3000]))
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    sim = f @ f.T
    np.fill_diagonal(sim, -np.inf)
    res["dino_knn1_class"] = float((test["class_id"][:3000][sim.argmax(1)] == test["class_id"][:3000]).mean())
    res["seconds"] = time.time() - t0
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidate", required=True, help="folder with clip/ and dino/")
    ap.add_argument("--reference", default=None, help="folder with clip/ and dino/ (default: the shipped evaluators)")
    ap.add_argument("--json", default=None, help="write both runs' numbers here")
    a = ap.parse_args()
    meta, test = load_meta(), load_split("test")
    ref = Path(a.reference) if a.reference else default_evaluator_path("clip").parent
    runs = {"reference": measure(ref, meta, test), "candidate": measure(Path(a.candidate), meta, test)}
    print(f"{'measure':36s} {'reference':>10s} {'candidate':>10s} {'diff':>8s}")
    for k in runs["reference"]:
        r, c = runs["reference"][k], runs["candidate"][k]
        print(f"{k:36s} {r:10.3f} {c:10.3f} {c - r:+8.3f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"reference_dir": str(ref), "candidate_dir": a.candidate, **runs}, indent=1))


if __name__ == "__main__":
    main()
