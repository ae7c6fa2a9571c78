"""Calibrate the demo consistency check (incontext.generate.demo_consistency) with the mini evaluator CLIP.

    OMP_NUM_THREADS=1 python benchmarks/demo_consistency.py

Mean pairwise CLIP image similarity of 3 demos for: each of the 30 mini-DreamBench subjects (its
first 3 photos: should never warn), 60 random triples of 3 different subjects, and 60 triples of
2 photos of one subject + 1 of another; then, per threshold, the share of false alarms and of mixes
caught. The threshold used by `personify generate --demos` is CONSISTENCY_THRESHOLD.
"""

from __future__ import annotations

import numpy as np
import torch


def main() -> None:
    from personify.data.images import load_rgb
    from personify.evaluation.dreambench import load_mini
    from personify.evaluation.encoders import load_clip
    from personify.evaluation.run import default_evaluator_path
    from personify.incontext.generate import CONSISTENCY_THRESHOLD, demo_consistency

    torch.set_num_threads(1)
    clip = load_clip(default_evaluator_path("clip"))
    bench = load_mini()
    names = sorted(bench.subjects)
    imgs = {n: [load_rgb(p) for p in bench.subjects[n].images[:3]] for n in names}
    score = lambda ims: demo_consistency(ims, clip, warn=False)  # noqa: E731
    same = np.array([score(imgs[n]) for n in names])
    rng = np.random.default_rng(0)
    mixed, two = [], []
    for _ in range(60):
        a, c, d = rng.choice(len(names), 3, replace=False)
        mixed.append(score([imgs[names[a]][0], imgs[names[c]][1], imgs[names[d]][2]]))
    for _ in range(60):
        a, c = rng.choice(len(names), 2, replace=False)
        two.append(score([imgs[names[a]][0], imgs[names[a]][1], imgs[names[c]][2]]))
    mixed, two = np.array(mixed), np.array(two)
    print(f"same subject: min {same.min():.3f} p10 {np.percentile(same, 10):.3f} median {np.median(same):.3f}")
    print(f"3 subjects:   max {mixed.max():.3f} p90 {np.percentile(mixed, 90):.3f} median {np.median(mixed):.3f}")
    print(f"2+1 subjects: max {two.max():.3f} p90 {np.percentile(two, 90):.3f} median {np.median(two):.3f}")
    print(f"default threshold {CONSISTENCY_THRESHOLD}")
    for t in (0.3, 0.4, 0.5, 0.6, 0.7):
        print(f"threshold {t}: false alarms on one subject {np.mean(same < t):.2f}, 3-subject mixes caught {np.mean(mixed < t):.2f}, "
              f"2+1 mixes caught {np.mean(two < t):.2f}")


if __name__ == "__main__":
    main()
