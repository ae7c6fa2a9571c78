"""`main(cfg)`: the `personify seedselect` command.

Writes to `--out`: one PNG per image, `contact_sheet.png`, `latents.safetensors` (tensor `latents`
(n, C, h, w) with the prompt / sampler / steps / guidance / model hash in its metadata), and
`seedselect.json` (config, loss curves, timings, bootstrap subsets, the command that regenerates
the images with `personify generate --latents`).
"""
from __future__ import annotations

import json
import shlex
import sys
import time
import warnings
from pathlib import Path

import torch

from ..config import to_dict
from ..errors import PersonifyError
from .config import SeedSelectConfig, default_clip_path
from .core import References, SeedSelectResult, Settings, encode_references, seedselect


def resolve_clip(spec: str | None):
    """`--clip`: a CLIPModel folder, 'tiny' (random, tests) or None (the shipped mini evaluator)."""
    from ..evaluation.encoders import load_clip, tiny_clip

    if spec == "tiny":
        return tiny_clip()
    if spec is None:
        p = default_clip_path()
        if not (p / "config.json").is_file():
            raise PersonifyError(
                f"no CLIP evaluator at {p} (it ships with the mini model); pass --clip DIR, a CLIPModel folder saved with save_pretrained"
            )
        return load_clip(p)
    return load_clip(spec)


@torch.no_grad()
def render(pipe, latents: torch.Tensor, prompts: list[str], s: Settings):
    """The output images of optimized seeds: exactly `personify generate --latents` (same function)."""
    from ..generate import generate_images

    return generate_images(pipe, prompts, list(range(len(prompts))), s.steps, s.guidance, s.sampler, latents=latents)


@torch.no_grad()
def clip_similarity(clip, images, refs: References) -> list[float]:
    """cos(CLIP(image), reference centroid) per image (the optimized objective; not an independent metric)."""
    from ..data.images import to_tensor

    x = torch.stack([to_tensor(im) for im in images]) / 2 + 0.5
    c, _ = refs.centroid()
    return (clip.image(x).float().cpu() @ c).tolist()


def save_latents(path: Path, latents: torch.Tensor, meta: dict) -> None:
    from safetensors.torch import save_file

    save_file({"latents": latents.detach().float().contiguous().cpu()}, str(path), metadata={k: str(v) for k, v in meta.items()})


def reuse_command(cfg: SeedSelectConfig, latents_path: Path) -> str:
    args = ["personify", "generate", cfg.prompt, "--model", cfg.model, "--latents", str(latents_path), "--n", str(cfg.n),
            "--steps", str(cfg.steps), "--guidance", str(cfg.guidance), "--sampler", cfg.sampler]
    if cfg.model_config:
        args += ["--model-config", cfg.model_config]
    return " ".join(shlex.quote(a) for a in args)


def main(cfg: SeedSelectConfig, pipe=None, clip=None, quiet: bool = False) -> SeedSelectResult:
    """Run SeedSelect as configured and write the outputs (see module doc). `pipe` / `clip` may be
    passed in (tests, notebooks); otherwise they are loaded from `cfg.model` / `cfg.clip`."""
    from ..generate import _slug, contact_sheet

    def log(msg: str) -> None:
        if not quiet:
            print(f"seedselect: {msg}", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    if pipe is None:
        pipe = cfg.load_pipeline()
    if clip is None:
        clip = resolve_clip(cfg.clip)
    refs = encode_references(pipe, clip, cfg.images)
    log(f"{len(refs)} reference image(s) from {cfg.images}")
    s = cfg.settings()
    t_load = time.perf_counter() - t0
    res = seedselect(pipe, clip, cfg.prompt, refs, cfg.n, cfg.seed, s, bootstrap=cfg.bootstrap,
                     bootstrap_iterations=cfg.bootstrap_iterations, bootstrap_jitter=cfg.bootstrap_jitter, log=log)
    t1 = time.perf_counter()
    images = render(pipe, res.latents, res.prompts, s)
    t_render = time.perf_counter() - t1

    out = Path(cfg.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    slug = _slug(cfg.prompt)
    names = []
    for i, im in enumerate(images):
        name = f"{slug}-seedselect-{i:03d}.png"
        im.save(out / name)
        names.append(name)
    sheet = list(images)
    baseline = None
    if cfg.baseline:
        from ..generate import generate_images

        with torch.no_grad():
            baseline = generate_images(pipe, res.prompts, list(range(cfg.seed, cfg.seed + cfg.n)), s.steps, s.guidance, s.sampler)
        for i, im in enumerate(baseline):
            im.save(out / f"{slug}-baseline-{cfg.seed + i:06d}.png")
        sheet = sheet + baseline  # top rows: SeedSelect, bottom rows: plain seeds
    contact_sheet(sheet, cols=min(cfg.n, 8)).save(out / "contact_sheet.png")
    lat_path = out / "latents.safetensors"
    meta = {"prompt": cfg.prompt, "steps": s.steps, "guidance": s.guidance, "sampler": s.sampler, "model": cfg.model,
            "model_hash": getattr(pipe, "personify_base_hash", ""), "seed": cfg.seed, "method": "seedselect"}
    save_latents(lat_path, res.latents, meta)
    total = time.perf_counter() - t0
    report = {
        "config": to_dict(cfg), "model_hash": meta["model_hash"], "references": refs.paths, "images": names,
        "reuse": reuse_command(cfg, lat_path), "bootstrap_subsets": res.subsets,
        "clip_similarity": clip_similarity(clip, images, refs),
        "clip_similarity_baseline": clip_similarity(clip, baseline, refs) if baseline else None,
        "runs": res.runs,
        "seconds": {"load": round(t_load, 2), "optimize": round(res.seconds, 2), "render": round(t_render, 2),
                    "total": round(total, 2), "per_image": round((res.seconds + t_render) / cfg.n, 2)},
        "latents_norm": res.latents.flatten(1).norm(dim=1).tolist(),
    }
    (out / "seedselect.json").write_text(json.dumps(report, indent=1))
    log(f"{cfg.n} image(s) in {out} ({report['seconds']['per_image']:.1f} s/image); regenerate with: {report['reuse']}")
    return res


def cli(argv: list[str] | None = None) -> int:
    """`python -m personify.seedselect --images DIR --prompt TEXT ...` (same flags as `personify seedselect`)."""
    import argparse
    import dataclasses

    from ..config import add_arguments, build, load_file

    p = argparse.ArgumentParser(prog="personify seedselect", description="SeedSelect: optimize the initial noise toward 3-5 reference images.")
    p.add_argument("--config", help="YAML/TOML file with a 'seedselect:' section")
    add_arguments(p, SeedSelectConfig)
    warnings.simplefilter("default")
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
    try:
        args = p.parse_args(argv)
        values = dict(load_file(args.config).get("seedselect", {})) if args.config else {}
        names = {f.name for f in dataclasses.fields(SeedSelectConfig)}
        values.update({k: v for k, v in vars(args).items() if k in names})
        main(build(SeedSelectConfig, values, args.config or "command line"))
    except PersonifyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
