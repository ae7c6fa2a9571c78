"""Compare VAE decoders on the very same generated latents and real renders, side by side.

    python benchmarks/vae_decoder.py --decoder shipped=src/personify/assets/mini-sd/vae \
        --decoder gan=/work/runs/mini3/vae/model --json benchmarks/results/vae_decoder.json

The generator's UNet (``--model``) samples "a photo of a {class}" for the 50 most frequent classes
once (same seeds as ``personify.evaluation.mini_quality``, so the shipped row reproduces its
``head50_top1``); every decoder then decodes those latents. Per decoder:

- ``gen_top1``: evaluator-classifier top-1 on the decoded samples (what a user sees);
- ``vae_ceiling_top1``: top-1 on 1,000 real head-50 test renders after that VAE's round trip;
- ``psnr_db``: PSNR of that round trip (blur lowers it; a GAN decoder may trade PSNR for detail);
- ``frechet``: Fréchet distance (DINO evaluator) of the decoded samples to real head-50 renders;
- ``subject_dino_rt`` / ``subject_clip_i_rt``: mean cosine (DINO / CLIP evaluator) between each image of
  the held-out mini-DreamBench subjects and its round trip through that VAE: what a decoder keeps of
  subjects drawn in a style pretraining never saw. It is a reconstruction measure, not a prediction of
  the tuning methods' scores: in session 7 the decoder that scored best here lowered them (results.md).

A decoder fine-tuned with its encoder frozen (``personify mini train --stage vae --no-train-encoder``)
keeps the latent space, so the same UNet applies to every row; the script checks that the
scaling_factors agree and refuses otherwise.

``--autoencoder NAME=FOLDER`` adds whole autoencoders with a latent space of their own (a retrained
encoder): no UNet was trained on it yet, so they get the round-trip columns only, plus ``latent_drift``,
the RMS difference of their scaled latents from the generator VAE's, relative to the latter's RMS (how far
a UNet continued from the generator's must move; for a widened latent, of the channels it kept). ``--downsample F`` adds reference rows: the real images
area-downsampled by F and upsampled back (F = 8 keeps 8x8x3 numbers, a 8x8x4 latent keeps 8x8x4);
``--blur SIGMA`` rows Gaussian-blur them (how much of a round trip's loss is the classifier's fragility).
Every round-trip row also has the style ceiling after it (``style rt``: mini_quality's 4-way zero-shot style
choice on 150 real renders per style; ``words rt``: the three styles a prompt names by a word), per style in the JSON.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """(N, C, H, W) -> the same blurred by a separable Gaussian (radius 3 sigma, reflected borders)."""
    r = max(1, round(3 * sigma))
    k = torch.exp(-torch.arange(-r, r + 1, dtype=x.dtype) ** 2 / (2 * sigma ** 2))
    k, c = k / k.sum(), x.shape[1]
    x = torch.nn.functional.pad(x, (r, r, r, r), mode="reflect")
    x = torch.nn.functional.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return torch.nn.functional.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--decoder", action="append", default=[], metavar="NAME=VAE_FOLDER")
    ap.add_argument("--autoencoder", action="append", default=[], metavar="NAME=VAE_FOLDER",
                    help="a whole VAE with its own latent space: round-trip columns and latent drift only")
    ap.add_argument("--downsample", action="append", type=int, default=[], metavar="F",
                    help="reference row: real images area-downsampled by F, upsampled back (bilinear)")
    ap.add_argument("--blur", action="append", type=float, default=[], metavar="SIGMA",
                    help="reference row: real images Gaussian-blurred with this sigma in pixels (how fragile the classifier is)")
    ap.add_argument("--model", default="mini", help="generator whose UNet samples the latents")
    ap.add_argument("--per-class", type=int, default=8)
    ap.add_argument("--n-real", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grid", default=None, help="write one PNG per decoder (first image of each class) here")
    ap.add_argument("--classifier", action="append", default=[], metavar="NAME=FOLDER",
                    help="extra MiniClassifier folders to score with (columns NAME gen / NAME ceiling); the evaluator's own always runs")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from diffusers import AutoencoderKL

    import personify
    from personify.data.images import load_rgb
    from personify.evaluation.dreambench import Evaluator, load_mini, pixels
    from personify.evaluation.encoders import load_clip, load_dino
    from personify.evaluation.mini_quality import (_u8, classify, confusion_per_style, features, frechet, load_classifier,
                                                   real_style_confusion, style_prompts, style_words_mean, vae_roundtrip)
    from personify.evaluation.run import default_evaluator_path
    from personify.generate import contact_sheet, generate_latents, latents_to_images
    from personify.world import load_meta, load_split

    torch.set_num_threads(1)
    if not args.decoder and not args.autoencoder:
        raise SystemExit("nothing to compare: give --decoder and/or --autoencoder NAME=FOLDER")

    def load_vaes(specs: list[str], flag: str) -> dict:
        out = {}
        for spec in specs:
            name, _, path = spec.partition("=")
            if not path or not (Path(path) / "config.json").exists():
                raise SystemExit(f"{flag} {spec}: expected NAME=FOLDER with an AutoencoderKL config.json")
            out[name] = AutoencoderKL.from_pretrained(path).float().eval()
        return out

    decoders, autoencoders = load_vaes(args.decoder, "--decoder"), load_vaes(args.autoencoder, "--autoencoder")
    pipe = personify.load_pipeline(args.model)
    sf = {n: v.config.scaling_factor for n, v in decoders.items()}
    if len({round(v, 6) for v in sf.values()} | {round(pipe.vae.config.scaling_factor, 6)}) != 1:
        raise SystemExit(f"scaling factors differ ({sf}, generator {pipe.vae.config.scaling_factor}): "
                         "these decoders do not share the generator's latent space")

    root = default_evaluator_path("clip").parent
    ev = Evaluator(load_clip(root / "clip"), load_dino(root / "dino"))
    clf = load_classifier(root / "classifier")
    extra = {}
    for spec in args.classifier:
        cname, _, cpath = spec.partition("=")
        if not cpath or not (Path(cpath) / "config.json").exists():
            raise SystemExit(f"--classifier {spec}: expected NAME=FOLDER with a MiniClassifier config.json")
        extra[cname] = load_classifier(Path(cpath))
    meta = load_meta()
    classes, head = meta["classes"], meta["head"][:50]
    prompts = [f"a photo of a {c}" for c in head for _ in range(args.per_class)]
    target = torch.tensor([classes.index(c) for c in head for _ in range(args.per_class)])
    test = load_split("test")
    mask = np.isin(test["class_id"], [classes.index(c) for c in head])
    real = _u8(test["images"][mask][: args.n_real])
    real_y = torch.from_numpy(test["class_id"][mask][: args.n_real]).long()
    real_feat = features(ev, real)
    subj = pixels([load_rgb(p) for s in load_mini().subjects.values() for p in s.images])  # (N, 3, 64, 64) in [0, 1]
    with torch.no_grad():
        subj_dino, subj_clip = ev.dino.image(subj), ev.clip.image(subj)

    def roundtrip_row(fn) -> dict:
        """Round-trip columns for `fn`: (N, 3, H, W) in [0, 1] -> its reconstruction."""
        with torch.no_grad():
            rec, srec = fn(real), fn(subj)
            s_dino = float((ev.dino.image(srec) * subj_dino).sum(-1).mean())
            s_clip = float((ev.clip.image(srec) * subj_clip).sum(-1).mean())
        mse = torch.mean((rec - real) ** 2).item()
        return {
            "vae_ceiling_top1": float((classify(clf, rec) == real_y).float().mean()),
            "psnr_db": float(10 * np.log10(1.0 / max(mse, 1e-12))),
            "subject_dino_rt": s_dino,
            "subject_clip_i_rt": s_clip,
            **{f"{c}_vae_ceiling_top1": float((classify(m, rec) == real_y).float().mean()) for c, m in extra.items()},
            **style_columns(fn),
        }

    def style_columns(fn) -> dict:
        """Style ceiling after `fn` (mini_quality's zero-shot style choice on 150 real renders per style)."""
        cm = real_style_confusion(ev, meta, test, transform=fn)
        per = confusion_per_style(cm, style_prompts(meta)[0])
        return {"style_rt": float(cm.trace() / cm.sum()), "style_words_rt": style_words_mean(per), "style_rt_per_style": per}

    @torch.no_grad()
    def scaled_latents(vae) -> torch.Tensor:  # (N, C, h, w): what the UNet sees
        return torch.cat([vae.encode(real[s:s + 100] * 2 - 1).latent_dist.mean for s in range(0, len(real), 100)]) * vae.config.scaling_factor

    rows = {}
    if decoders:
        t0 = time.time()
        with torch.no_grad():
            z0 = generate_latents(pipe, prompts, [args.seed + i for i in range(len(prompts))], steps=25)
        print(f"sampled {len(z0)} latents in {time.time() - t0:.0f} s", flush=True)
    for name, vae in decoders.items():
        with torch.no_grad():
            imgs = latents_to_images(vae, z0)
        gen = _u8(imgs)
        rows[name] = {
            "gen_top1": float((classify(clf, gen) == target).float().mean()),
            "frechet": frechet(features(ev, gen), real_feat),
            **roundtrip_row(lambda x, vae=vae: vae_roundtrip(vae, x)),
            **{f"{c}_gen_top1": float((classify(m, gen) == target).float().mean()) for c, m in extra.items()},
        }
        if args.grid:
            Path(args.grid).mkdir(parents=True, exist_ok=True)
            contact_sheet(imgs[:: args.per_class], cols=10).save(Path(args.grid) / f"vae_decoder_{name}.png")
    z_gen = scaled_latents(pipe.vae) if autoencoders else None
    for name, vae in autoencoders.items():
        rows[name] = roundtrip_row(lambda x, vae=vae: vae_roundtrip(vae, x))
        z = scaled_latents(vae)
        if z.shape[2:] == z_gen.shape[2:] and z.shape[1] >= z_gen.shape[1]:
            z = z[:, : z_gen.shape[1]]  # a widened latent (--grow_latent): drift of the channels it kept
            rows[name]["latent_drift"] = float((z - z_gen).pow(2).mean().sqrt() / z_gen.pow(2).mean().sqrt())
    for f in args.downsample:
        rows[f"area/{f}"] = roundtrip_row(lambda x, f=f: torch.nn.functional.interpolate(
            torch.nn.functional.interpolate(x, scale_factor=1 / f, mode="area"), size=x.shape[-2:], mode="bilinear",
            align_corners=False).clamp(0, 1))
    for sigma in args.blur:
        rows[f"blur/{sigma:g}"] = roundtrip_row(lambda x, sigma=sigma: gaussian_blur(x, sigma))
    rows["_real"] = {"vae_ceiling_top1": float((classify(clf, real) == real_y).float().mean()), **style_columns(None),
                     **{f"{c}_vae_ceiling_top1": float((classify(m, real) == real_y).float().mean()) for c, m in extra.items()}}

    names = [n for n in rows if n != "_real"]
    ref = next(iter(decoders), None)
    print(f"{'row':<14}{'gen top-1':>10}{'VAE ceiling':>13}{'PSNR dB':>9}{'Fréchet':>9}{'subj DINO rt':>13}{'subj CLIP-I rt':>15}"
          f"{'drift':>7}{'style rt':>10}{'words rt':>10}" + (f"   ratios vs {ref}" if ref else ""))
    for name in names:
        r = rows[name]
        gen = f"{r['gen_top1']:>10.1%}" if "gen_top1" in r else f"{'-':>10}"
        fd = f"{r['frechet']:>9.4f}" if "frechet" in r else f"{'-':>9}"
        drift = f"{r['latent_drift']:>7.2f}" if "latent_drift" in r else f"{'-':>7}"
        ratio = ""
        if ref and "gen_top1" in r:
            b = rows[ref]
            ratio = f"   top-1 x{r['gen_top1'] / max(b['gen_top1'], 1e-9):.2f}, Fréchet x{r['frechet'] / b['frechet']:.2f}"
        print(f"{name:<14}{gen}{r['vae_ceiling_top1']:>13.1%}{r['psnr_db']:>9.2f}{fd}"
              f"{r['subject_dino_rt']:>13.3f}{r['subject_clip_i_rt']:>15.3f}{drift}{r['style_rt']:>10.1%}{r['style_words_rt']:>10.1%}{ratio}")
    rr = rows["_real"]
    print(f"{'real renders':<14}{'':>10}{rr['vae_ceiling_top1']:>13.1%}{'':>9}{'':>9}{'':>13}{'':>15}{'':>7}{rr['style_rt']:>10.1%}{rr['style_words_rt']:>10.1%}")
    print("style per style (photo, sketch, pixel art, watercolor) after the round trip: " + "; ".join(
        f"{n} " + " / ".join(f"{v:.0%}" for v in rows[n]["style_rt_per_style"].values()) for n in names + ["_real"]))
    for c in extra:  # the same decoded images, judged by another classifier
        print(f"classifier {c}: " + "; ".join(f"{n} gen {rows[n].get(c + '_gen_top1', float('nan')):.1%}, VAE ceiling {rows[n][c + '_vae_ceiling_top1']:.1%}"
                                              for n in names) + f"; real renders {rows['_real'][c + '_vae_ceiling_top1']:.1%}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
