"""The long-tail experiment (paper: SeedSelect raises rare-class accuracy on ImageNet-LT): does
SeedSelect make the mini model draw its *tail* classes, as judged by an independent classifier?

Protocol (`run_longtail`):
- classes: the world's tail classes (`meta["tail"]`, the 20 rarest of the Zipf-weighted training set);
- references: `n_refs` (default 5) images per class from the world's `test` split (never seen by the
  generator, which trains on `gen_train`), via `world_references`;
- methods, same prompt ("a photo of a {class}"), sampler, steps, guidance and seeds for all:
  `baseline` (plain seeds seed..seed+n-1, i.e. `personify generate`), `seedselect` (bootstrap) and,
  optionally, `seedselect_multi` (contrastive over all listed classes);
- metrics, per class and averaged over classes: top-1 accuracy of the mini *classifier* evaluator
  (trained on `eval_train`, a different split and seed from the generator) on the generated images,
  and optionally DINO similarity to the class's reference centroid. CLIP similarity is recorded but is
  NOT a fair metric here: the SeedSelect loss optimizes it directly (use a different CLIP to score it).
- cost: seconds per image for each method.

Nothing here has been run on the mini model yet (it is still training); see docs/seedselect.md.
"""
from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..evaluation.dreambench import pixels
from .core import References, Settings, encode_references, seedselect, seedselect_multi
from .run import render

METHODS = ("baseline", "seedselect", "seedselect_multi")


@dataclass
class LongTailConfig:
    prompt_template: str = "a photo of a {}"
    n_per_class: int = 8
    n_refs: int = 5
    seed: int = 0
    methods: tuple[str, ...] = ("baseline", "seedselect")
    bootstrap_iterations: int = 5
    bootstrap_jitter: float = 0.1
    settings: Settings = field(default_factory=Settings)

    def __post_init__(self) -> None:
        from ..config import check

        check(self.n_per_class >= 1 and self.n_refs >= 1, "n_per_class and n_refs must be >= 1")
        bad = set(self.methods) - set(METHODS)
        check(not bad, f"unknown method(s) {sorted(bad)}; choose from {', '.join(METHODS)}")


def world_references(classes: Sequence[str], n_refs: int = 5, split: str = "test", seed: int = 0,
                     cache_dir: str | Path | None = None, rest: bool = False):
    """`n_refs` PIL images per class word from a world split (random, seeded; fewer if the split has fewer).
    With `rest=True` also returns the class's remaining images of the split: `(refs, rest)`."""
    from PIL import Image

    from ..world.builder import load_meta, load_split

    meta = load_meta(cache_dir)
    data = load_split(split, cache_dir)
    rng = np.random.default_rng(seed)
    out, others = {}, {}
    for c in classes:
        idx = rng.permutation(np.flatnonzero(data["class_id"] == meta["classes"].index(c)))
        out[c] = [Image.fromarray(data["images"][i]) for i in idx[:n_refs]]
        others[c] = [Image.fromarray(data["images"][i]) for i in idx[n_refs:]]
    return (out, others) if rest else out


def mini_classifier(path: str | Path) -> tuple[Callable[[torch.Tensor], torch.Tensor], list[str]]:
    """The exported mini classifier as `f(images (B, 3, H, W) in [0, 1]) -> logits` and its class names."""
    import torch.nn.functional as F

    from ..evaluation.encoders import CLIP_MEAN, CLIP_STD
    from ..mini.models import MiniClassifier

    model = MiniClassifier.from_pretrained(path)
    m = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    s = torch.tensor(CLIP_STD).view(1, 3, 1, 1)

    @torch.no_grad()
    def f(x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != 64:
            x = F.interpolate(x, size=(64, 64), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        return model((x - m) / s)

    return f, list(model.config.get("class_names") or [])


def run_longtail(pipe, loss_clip, classify: Callable[[torch.Tensor], torch.Tensor], class_names: Sequence[str],
                 references: dict[str, list], cfg: LongTailConfig, out: str | Path,
                 dino=None, log: Callable[[str], None] | None = None) -> dict:
    """Generate `cfg.n_per_class` images per class with each method; score them; write
    `results.json`, `results.csv` and the images under `out/<method>/<class>/`. Returns the summary."""
    out = Path(out)
    say = log or (lambda m: None)
    s = cfg.settings
    classes = list(references)
    refs: dict[str, References] = {c: encode_references(pipe, loss_clip, references[c]) for c in classes}
    rows = []
    images: dict[tuple[str, str], list] = {}
    seconds: dict[str, float] = {}
    for method in cfg.methods:
        t0 = time.perf_counter()
        if method == "baseline":
            from ..generate import generate_images

            with torch.no_grad():
                for c in classes:
                    p = cfg.prompt_template.format(c)
                    images[method, c] = generate_images(pipe, [p] * cfg.n_per_class, list(range(cfg.seed, cfg.seed + cfg.n_per_class)),
                                                        s.steps, s.guidance, s.sampler)
        elif method == "seedselect":
            for c in classes:
                p = cfg.prompt_template.format(c)
                r = seedselect(pipe, loss_clip, p, refs[c], cfg.n_per_class, cfg.seed, s, bootstrap=True,
                               bootstrap_iterations=cfg.bootstrap_iterations, bootstrap_jitter=cfg.bootstrap_jitter)
                images[method, c] = render(pipe, r.latents, r.prompts, s)
        else:
            r = seedselect_multi(pipe, loss_clip, [cfg.prompt_template.format(c) for c in classes], [refs[c] for c in classes],
                                 cfg.n_per_class, cfg.seed, s, contrastive=True)
            ims = render(pipe, r.latents, r.prompts, s)
            for k, c in enumerate(classes):
                images[method, c] = ims[k * cfg.n_per_class : (k + 1) * cfg.n_per_class]
        seconds[method] = time.perf_counter() - t0
        say(f"{method}: {seconds[method] / (len(classes) * cfg.n_per_class):.2f} s/image")
        for c in classes:
            ims = images[method, c]
            d = out / method / c.replace(" ", "_")
            d.mkdir(parents=True, exist_ok=True)
            for i, im in enumerate(ims):
                im.save(d / f"{i:03d}.png")
            x = pixels(ims)
            pred = classify(x).argmax(-1).tolist()
            target = list(class_names).index(c) if c in class_names else -1
            with torch.no_grad():
                ccent, _ = refs[c].centroid()
                clip_sim = (loss_clip.image(x).float().cpu() @ ccent).mean().item()
                dino_sim = None
                if dino is not None:
                    rd = dino.image(pixels(references[c])).float().mean(0)
                    dino_sim = (dino.image(x).float() @ torch.nn.functional.normalize(rd, dim=-1)).mean().item()
            rows.append({"method": method, "class": c, "n": len(ims), "accuracy": float(np.mean([p == target for p in pred])),
                         "dino_similarity": dino_sim, "clip_similarity_loss_encoder": clip_sim,
                         "seconds_per_image": seconds[method] / (len(classes) * cfg.n_per_class)})
    summary = {m: {"accuracy": float(np.mean([r["accuracy"] for r in rows if r["method"] == m])),
                   "dino_similarity": (float(np.mean([r["dino_similarity"] for r in rows if r["method"] == m])) if dino is not None else None),
                   "seconds_per_image": seconds[m] / (len(classes) * cfg.n_per_class)} for m in cfg.methods}
    out.mkdir(parents=True, exist_ok=True)
    cfg_d = asdict(cfg)
    (out / "results.json").write_text(json.dumps({"config": cfg_d, "classes": classes, "summary": summary, "rows": rows}, indent=1, default=str))
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return summary


# ------------------------------------------------------------------------------------------
# Few-shot data augmentation (the paper's second use, Sec. 5.3): does adding SeedSelect images
# to 5 real images per class train a better classifier than the 5 real images alone?
# ------------------------------------------------------------------------------------------
def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int, l2: float = 1e-3,
                 iterations: int = 200) -> torch.Tensor:
    """Multinomial logistic regression on frozen features (N, D) -> weights (D + 1, num_classes).

    A linear probe rather than a CNN from scratch: with 5 images per class a CNN mostly measures its
    own optimisation noise; on frozen self-supervised features the only variable is the training set."""
    x = torch.cat([train_x.double(), torch.ones(len(train_x), 1, dtype=torch.float64)], dim=1)  # (N, D + 1)
    w = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w, train_y) + l2 * (w[:-1] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def probe_accuracy(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    x = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
    return float(((x @ w).argmax(-1) == y).double().mean())


def run_fewshot(features: Callable[[list], torch.Tensor], real_train: dict[str, list], test: dict[str, list],
                extra: dict[str, dict[str, list]], ks: Sequence[int]) -> dict:
    """Accuracy on `test` of linear probes trained on `real_train` alone and on `real_train` plus the
    first k images of each `extra[source][class]` (e.g. source = 'seedselect' or 'baseline'), k in ks.

    features: PIL images -> (N, D) frozen features. Returns {"real_only": acc, "<source>+<k>": acc, ...}."""
    classes = list(real_train)
    feats = {}  # cache per (kind, class): features of every image once

    def f(key, images):
        if key not in feats:
            feats[key] = features(images) if images else torch.zeros(0, 1)
        return feats[key]

    def stack(parts):
        xs = [x for x, _ in parts if len(x)]
        ys = [torch.full((len(x),), y) for x, y in parts if len(x)]
        return torch.cat(xs), torch.cat(ys)

    tx, ty = stack([(f(("test", c), test[c]), i) for i, c in enumerate(classes)])
    base = [(f(("real", c), real_train[c]), i) for i, c in enumerate(classes)]
    out = {"real_only": probe_accuracy(linear_probe(*stack(base), len(classes)), tx, ty), "n_test": len(ty)}
    for source, per_class in extra.items():
        for k in ks:
            parts = base + [(f((source, c), per_class[c])[:k], i) for i, c in enumerate(classes)]
            out[f"{source}+{k}"] = probe_accuracy(linear_probe(*stack(parts), len(classes)), tx, ty)
    return out
