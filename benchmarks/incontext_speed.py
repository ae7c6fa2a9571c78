"""Per-subject time of the in-context apprentice vs the tuning methods, side by side in one process.

    OMP_NUM_THREADS=1 python benchmarks/incontext_speed.py --subject dog [--methods lora dreambooth textual_inversion]

For one mini-DreamBench subject, on the same model, thread count and machine state:

- tuning method M: train with personify's defaults (as benchmarks/mini_dreambench.py does), load a
  fresh pipeline, apply the concept, generate;
- apprentice (the shipped one by default): load it, encode the subject's first 3 photos, generate.

Two generation loads, same prompts and seeds on both sides (DDIM 25 steps, guidance 7.5): 4 images of
one prompt ("time to the first images of a new subject", what SuTI's speed claim is about) and the
100 images of the protocol (25 prompts x 4). Scoring is left out: it costs both sides the same.
Prints each phase and the ratio (tuning method / apprentice); target in issue 8: >= 50x per subject
against the fastest tuning method.
"""
from __future__ import annotations

import argparse
import tempfile
import time

TARGET = 50.0


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subject", default="dog")
    ap.add_argument("--model", default="mini")
    ap.add_argument("--methods", nargs="+", default=["lora", "dreambooth", "textual_inversion"])
    ap.add_argument("--apprentice", default=None, help="apprentice weights (default: the shipped one for the mini model)")
    ap.add_argument("--n-demos", type=int, default=3)
    args = ap.parse_args()

    import torch

    import personify
    from personify.data.images import load_rgb
    from personify.evaluation.dreambench import load_mini, strip_identifier
    from personify.generate import generate_images
    from personify.incontext.generate import default_apprentice, encode_demo_images, generate_with_demos, load_apprentice

    bench = load_mini()
    sub = bench.subjects[args.subject]
    templates = [t for t, _ in bench.prompts(sub)]
    seeds4, seeds100 = list(range(4)), list(range(4 * len(templates)))
    rows = []
    with torch.no_grad():  # generation; personify.train enables gradients for its own steps
        for method in args.methods:
            with tempfile.TemporaryDirectory() as tmp:
                art, t_train = timed(lambda: personify.train(method, images=str(sub.images[0].parent), model=args.model,
                                                             class_word=sub.class_word, out=tmp, progress=False))
                pipe = personify.load_pipeline(args.model)
                personify.apply_concepts(pipe, [art])
                token = pipe.personify_concepts[-1]["tokens"][0]
            prompts = [t.format(token, sub.class_word) for t in templates]
            _, t4 = timed(lambda: generate_images(pipe, [prompts[0]] * 4, seeds4))
            _, t100 = timed(lambda: generate_images(pipe, [p for p in prompts for _ in range(4)], seeds100))
            rows.append((method, t_train, t4, t100))
        pipe = personify.load_pipeline(args.model)
        weights = args.apprentice or default_apprentice(args.model)
        demos = [load_rgb(p) for p in sub.images[: args.n_demos]]
        caps = [f"a photo of a {sub.class_word}"] * len(demos)
        app, t_load = timed(lambda: load_apprentice(pipe, weights))
        _, t_enc = timed(lambda: encode_demo_images(pipe, app, demos, caps))
        plain = [strip_identifier(t, sub.class_word) for t in templates]
        # generate_with_demos encodes the demos itself: its time is adaptation + generation
        _, a4 = timed(lambda: generate_with_demos(pipe, app, demos, caps, [plain[0]] * 4, seeds=seeds4))
        _, a100 = timed(lambda: generate_with_demos(pipe, app, demos, caps, [p for p in plain for _ in range(4)], seeds=seeds100))

    print(f"subject {sub.name} ({sub.class_word}), model {args.model}, torch threads {torch.get_num_threads()}")
    print(f"apprentice: load {t_load:.2f} s (once per process), encode {len(demos)} demos {t_enc * 1000:.0f} ms, "
          f"4 images {a4:.2f} s, 100 images {a100:.2f} s (both incl. encoding the demos)")
    print(f"{'method':<20}{'train s':>9}{'4 images s':>12}{'100 images s':>14}{'first 4: x apprentice':>24}{'protocol: x apprentice':>25}")
    for method, t_train, t4, t100 in rows:
        print(f"{method:<20}{t_train:>9.1f}{t4:>12.2f}{t100:>14.2f}{(t_train + t4) / a4:>23.1f}x{(t_train + t100) / a100:>24.1f}x")
    fastest = min(rows, key=lambda r: r[1] + r[2])
    ratio = (fastest[1] + fastest[2]) / a4
    print(f"fastest tuning method {fastest[0]}: {ratio:.1f}x to the first 4 images (target >= {TARGET:.0f}x: "
          f"{'met' if ratio >= TARGET else 'not met'}), {(fastest[1] + fastest[3]) / a100:.1f}x for the 100-image protocol")


if __name__ == "__main__":
    main()
