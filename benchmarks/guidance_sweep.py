"""Head-50 "a photo of a {class}" top-1 (evaluator classifier) at several guidance scales, same seeds.

    OMP_NUM_THREADS=1 python benchmarks/guidance_sweep.py [MODEL]

Prints one line per scale (25 DDIM steps, 8 samples per class, seeds 0..399 as mini_quality)."""
import sys
import time

import torch


def main(model: str = "mini") -> None:
    torch.set_num_threads(1)
    import personify
    from personify.evaluation.mini_quality import _u8, classify, load_classifier
    from personify.evaluation.run import default_evaluator_path
    from personify.generate import generate_latents, latents_to_images
    from personify.world import load_meta

    pipe = personify.load_pipeline(model)
    clf = load_classifier(default_evaluator_path("clip").parent / "classifier")
    meta = load_meta()
    classes, head, per = meta["classes"], meta["head"][:50], 8
    prompts = [f"a photo of a {c}" for c in head for _ in range(per)]
    target = torch.tensor([classes.index(c) for c in head for _ in range(per)])
    for g in (3.0, 5.0, 7.5, 10.0, 14.0):
        t = time.time()
        with torch.no_grad():
            z = generate_latents(pipe, prompts, list(range(len(prompts))), steps=25, guidance=g)
            acc = (classify(clf, _u8(latents_to_images(pipe.vae, z))) == target).float().mean().item()
        print(f"guidance {g:5.1f}: head-50 top-1 {acc:.1%} ({len(prompts)} samples, {time.time() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:2])
