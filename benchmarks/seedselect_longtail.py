"""SeedSelect on the mini model's long tail, and few-shot augmentation (issue 7). Writes the
`seedselect` section of docs/results.md.

    OMP_NUM_THREADS=1 python benchmarks/seedselect_longtail.py --n-per-class 4

1. Long tail: for the world's rarest classes (meta["tail"]), 5 reference renders each from the
   `test` split (the generator's emoji images in scenes it never saw; `--ref-split eval_train`: other
   emoji images of the class, the setting before session 5), prompt
   "a photo of a {class}": vanilla seeds vs SeedSelect (bootstrap), same seeds/sampler/steps/guidance,
   scored by the mini *classifier* evaluator (not the CLIP that drives the SeedSelect loss).
2. Few-shot: a linear probe on the frozen mini DINO evaluator, trained on the same 5 real images per
   class, vs 5 real + k SeedSelect images (and, as a control, + k vanilla images); tested on the
   classes' other real renders (the rest of the reference split + the other split).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mini")
    ap.add_argument("--n-classes", type=int, default=20, help="rarest classes to use")
    ap.add_argument("--n-per-class", type=int, default=4, help="images per class and method")
    ap.add_argument("--n-refs", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--semantic-weight", type=float, default=None,
                    help="λ in λ·semantic + (1−λ)·appearance (default: personify's, 10/11)")
    ap.add_argument("--ref-split", choices=["eval_train", "test"], default="test",
                    help="where the references come from: test = the generator's own emoji images in new scenes (what the "
                         "classifier evaluator knows), eval_train = other emoji images of the class (before session 5)")
    ap.add_argument("--out", default="runs/seedselect_longtail")
    ap.add_argument("--doc", default=str(ROOT / "docs" / "results.md"))
    args = ap.parse_args()

    import torch
    from PIL import Image

    from personify.evaluation.encoders import load_dino
    from personify.models.loading import load_pipeline
    from personify.seedselect.config import default_clip_path
    from personify.seedselect.core import Settings
    from personify.evaluation.dreambench import pixels
    from personify.seedselect.experiment import LongTailConfig, mini_classifier, run_fewshot, run_longtail, world_references
    from personify.seedselect.run import resolve_clip
    from personify.world.builder import load_meta

    torch.set_num_threads(1)
    t0 = time.time()
    ev = default_clip_path().parent  # assets/evaluators
    pipe = load_pipeline(args.model)
    clip, dino = resolve_clip(None), load_dino(ev / "dino")
    classify, names = mini_classifier(ev / "classifier")
    classes = load_meta(None)["tail"][: args.n_classes]
    other = "test" if args.ref_split == "eval_train" else "eval_train"
    refs, rest = world_references(classes, args.n_refs, split=args.ref_split, seed=0, rest=True)
    extra = world_references(classes, 10_000, split=other, seed=0)
    test = {c: rest[c] + extra[c] for c in classes}  # few-shot test renders: everything but the references
    test_extra = rest if args.ref_split == "test" else extra  # real renders of the generator's emoji images

    # checkpointing only bounds memory on SD-sized latents; at 8x8 it costs ~30% time for nothing
    lam = {} if args.semantic_weight is None else {"semantic_weight": args.semantic_weight}
    settings = Settings(iterations=args.iterations, checkpoint=False, **lam)
    cfg = LongTailConfig(n_per_class=args.n_per_class, n_refs=args.n_refs, settings=settings)
    out = Path(args.out)
    summary = run_longtail(pipe, clip, classify, names, refs, cfg, out, dino=dino, log=print)

    def load(method):
        return {c: [Image.open(p).convert("RGB") for p in sorted((out / method / c.replace(" ", "_")).glob("*.png"))] for c in classes}

    with torch.no_grad():
        feats = lambda ims: dino.image(pixels(ims)).float()  # noqa: E731
        ks = sorted({args.n_per_class // 2, args.n_per_class} - {0})
        fewshot = run_fewshot(feats, refs, test, {"seedselect": load("seedselect"), "baseline": load("baseline")}, ks)
    (out / "fewshot.json").write_text(json.dumps(fewshot, indent=1))

    from personify.evaluation.mini_quality import _u8

    def real_top1(by_class):  # the classifier's ceiling: real renders of the same classes
        hits = [(int((classify(_u8(ims)).argmax(-1) == names.index(c)).sum()), len(ims)) for c, ims in by_class.items() if ims]
        n = sum(k for _, k in hits)
        return sum(h for h, _ in hits) / max(n, 1), n

    ceil_gen, n_gen = real_top1(test_extra)  # the generator's emoji images, new scenes
    ceil_ref, n_ref = real_top1(refs)  # the references' (unseen) emoji images
    rows = json.loads((out / "results.json").read_text())["rows"]

    lines = [
        "## SeedSelect: the mini model's long tail and few-shot augmentation", "",
        "Regenerated by (wall time {:.0f} s):".format(time.time() - t0), "",
        "```", "OMP_NUM_THREADS=1 python " + " ".join(shlex.quote(a) for a in sys.argv), "```", "",
        f"{len(classes)} rarest classes of the generator's training split; {args.n_refs} reference renders per class from "
        + ("`test` (the generator's emoji images in scenes it never saw)" if args.ref_split == "test" else "`eval_train` (emoji images the generator never saw)")
        + f"; {args.n_per_class} images per class and method, prompt \"a photo of a {{class}}\", "
        f"DDIM {settings.steps} steps, guidance {settings.guidance}, SeedSelect {settings.iterations} iterations + bootstrap "
        f"(λ = {settings.semantic_weight:.3g}; loss CLIP: the mini CLIP evaluator). Accuracy: top-1 of the mini classifier evaluator (598 classes; it never drives the loss). "
        f"Its ceiling on real renders of these classes: {100 * ceil_gen:.1f}% on {n_gen} `test` renders (the generator's emoji images), "
        f"{100 * ceil_ref:.1f}% on the {n_ref} references. Before session 5 the references came from `eval_train` and the classifier "
        "from `eval_train` too (`--ref-split eval_train`).", "",
        "| method | tail top-1 | DINO sim. to refs | s / image |", "|---|---|---|---|",
    ]
    for m, s in summary.items():
        lines.append(f"| {m} | {100 * s['accuracy']:.1f}% | {s['dino_similarity']:.3f} | {s['seconds_per_image']:.1f} |")
    gain = 100 * (summary["seedselect"]["accuracy"] - summary["baseline"]["accuracy"])
    lines += ["", f"SeedSelect − vanilla: **{gain:+.1f} points** (target: +30). Target ≤ 10 s/image with the bootstrap: "
              f"**{summary['seedselect']['seconds_per_image']:.1f} s**. Per class: `{out}/results.csv`.", "",
              f"Few-shot (linear probe on the frozen mini DINO evaluator, {len(classes)}-way, {fewshot['n_test']} test renders):", "",
              "| training set | accuracy |", "|---|---|", f"| {args.n_refs} real / class | {100 * fewshot['real_only']:.1f}% |"]
    for k in ks:
        for src in ("seedselect", "baseline"):
            lines.append(f"| {args.n_refs} real + {k} {src} / class | {100 * fewshot[f'{src}+{k}']:.1f}% |")
    per_class = {m: sum(r["accuracy"] > 0 for r in rows if r["method"] == m) for m in summary}
    lines += ["", "Classes with at least one correctly classified image: "
              + ", ".join(f"{m} {v}/{len(classes)}" for m, v in per_class.items()) + "."]
    sys.path.insert(0, str(Path(__file__).parent))
    from results_doc import write_section

    print(f"wrote {write_section('seedselect', chr(10).join(lines), args.doc, notes=Path(__file__).with_suffix('.md'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
