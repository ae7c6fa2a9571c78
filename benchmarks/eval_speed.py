"""mini-DreamBench for one subject and one method, generation included, against the 60 s target.

    python benchmarks/eval_speed.py --method lora --subject dog

Prints the time of each phase and the ratio to the target side by side.
"""
from __future__ import annotations

import argparse
import tempfile
import time

TARGET_S = 60.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="lora")
    ap.add_argument("--subject", default="dog")
    ap.add_argument("--model", default="mini")
    args = ap.parse_args()

    import personify
    from personify.evaluation.dreambench import evaluate_subject, load_mini
    from personify.evaluation.run import EvalConfig, load_evaluator

    bench = load_mini()
    sub = bench.subjects[args.subject]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        art = personify.train(args.method, images=str(sub.images[0].parent), model=args.model, class_word=sub.class_word, out=tmp, progress=False)
        t_train = time.time() - t0
        ev = load_evaluator(EvalConfig(concept=["x"], subject=[args.subject]))
        pipe = personify.load_pipeline(args.model)
        personify.apply_concepts(pipe, [art])
        t1 = time.time()
        res = evaluate_subject(pipe, bench, sub, pipe.personify_concepts[-1]["tokens"][0], ev, args.method)
        t_eval = time.time() - t1
    total = t_train + t_eval
    print(f"{'phase':<22}{'seconds':>10}")
    print(f"{'train':<22}{t_train:>10.1f}")
    print(f"{'generate + score':<22}{t_eval:>10.1f}   (100 images)")
    print(f"{'total':<22}{total:>10.1f}   target {TARGET_S:.0f} s, ratio {total / TARGET_S:.2f}x")
    print(f"DINO {res.overall['dino']:.3f}  CLIP-I {res.overall['clip_i']:.3f}  CLIP-T {res.overall['clip_t']:.3f}")


if __name__ == "__main__":
    main()
