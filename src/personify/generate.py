"""Text-to-image generation with personify's samplers, and the `personify generate` command."""
from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import warnings

from PIL import Image

from .config import ModelSource, check
from .models.loading import same_base
from .sampling import SAMPLERS, cfg_denoiser, decode, encode_prompts, make_scheduler, sample, unet_denoiser


def initial_noise(pipe, seed: int, height: int, width: int) -> torch.Tensor:
    """z_T for one image, (1, C, h, w): a seed alone reproduces an image, whatever the batch."""
    f = pipe.vae_scale_factor
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn((1, pipe.unet.config.in_channels, height // f, width // f), generator=g)


def iter_latents(
    pipe,
    prompts: list[str],
    seeds: list[int],
    steps: int = 25,
    guidance: float = 7.5,
    sampler: str = "ddim",
    height: int | None = None,
    width: int | None = None,
    latents: torch.Tensor | None = None,
    negative_prompt: str = "",
    batch_size: int = 16,
) -> Iterator[torch.Tensor]:
    """Clean latents (B, C, h, w) batch by batch, one per (prompt, seed), before the VAE decodes
    them. Gradients flow unless the caller disables them (SeedSelect needs them); a consumer that
    drops each batch before the next holds one batch's sampling graph at a time."""
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    height, width = height or size, width or size
    dev = pipe.unet.device
    dtype = pipe.unet.dtype
    sched = make_scheduler(sampler, pipe.scheduler)
    uncond = encode_prompts(pipe.tokenizer, pipe.text_encoder, [negative_prompt])  # (1, L, D)
    for start in range(0, len(prompts), batch_size):
        ps, ss = prompts[start : start + batch_size], seeds[start : start + batch_size]
        if latents is not None:
            x = latents[start : start + batch_size].to(dev, dtype)
        else:
            x = torch.cat([initial_noise(pipe, s, height, width) for s in ss]).to(dev, dtype)
        cond = encode_prompts(pipe.tokenizer, pipe.text_encoder, ps)  # (B, L, D)
        model = cfg_denoiser(unet_denoiser(pipe.unet), uncond.to(dtype), guidance)
        yield sample(model, x, cond.to(dtype), sched, steps)  # (B, C, h, w)


def generate_latents(pipe, prompts: list[str], seeds: list[int], *args, **kw) -> torch.Tensor:
    """All clean latents (N, C, h, w) at once (arguments as :func:`iter_latents`), so several decoders
    can be compared on the very same samples. Keeps every batch's graph unless gradients are off."""
    return torch.cat(list(iter_latents(pipe, prompts, seeds, *args, **kw)))


def latents_to_images(vae, z0: torch.Tensor, batch_size: int = 16) -> list[Image.Image]:
    """Decode clean latents (N, C, h, w) with ``vae`` into PIL images."""
    out: list[Image.Image] = []
    for start in range(0, len(z0), batch_size):
        imgs = decode(vae, z0[start : start + batch_size].to(vae.dtype))  # (B, 3, H, W) in [0, 1]
        arr = (imgs.detach().float().permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
        out.extend(Image.fromarray(a) for a in arr)
    return out


def generate_images(pipe, prompts: list[str], seeds: list[int], *args, **kw) -> list[Image.Image]:
    """Generate one image per (prompt, seed); arguments as :func:`iter_latents`. Decodes batch by
    batch, so a caller who left gradients on holds one batch's sampling graph at a time."""
    out: list[Image.Image] = []
    for z0 in iter_latents(pipe, prompts, seeds, *args, **kw):
        out.extend(latents_to_images(pipe.vae, z0, len(z0)))
    return out


def contact_sheet(images: list[Image.Image], cols: int | None = None, pad: int = 2) -> Image.Image:
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    sheet = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + pad) + pad), (255, 255, 255))
    for i, im in enumerate(images):
        sheet.paste(im, (pad + (i % cols) * (w + pad), pad + (i // cols) * (h + pad)))
    return sheet


@dataclass
class GenerateConfig(ModelSource):
    prompt: str = field(default="", metadata={"help": "text prompt", "cli": False})
    concept: list[str] = field(default_factory=list, metadata={"help": "concept artifact(s) to apply"})
    seed: int = field(default=0, metadata={"help": "seed of the first image; image i uses seed+i"})
    steps: int | None = field(default=None, metadata={"help": "sampling steps (default 25, or the --latents file's)"})
    guidance: float | None = field(default=None, metadata={"help": "classifier-free guidance scale (default 7.5, or the --latents file's)"})
    sampler: str | None = field(default=None, metadata={"help": f"one of {', '.join(SAMPLERS)} (default ddim, or the --latents file's)"})
    n: int | None = field(default=None, metadata={"help": "number of images (default 4, or all of --latents)"})
    out: str = field(default="out", metadata={"help": "output folder"})
    latents: str | None = field(default=None, metadata={"help": "initial latents .safetensors (e.g. from personify seedselect)"})

    def __post_init__(self) -> None:
        check(self.steps is None or self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        check(self.n is None or 1 <= self.n <= 10_000, f"n must be in 1..10000, got {self.n}")
        check(self.sampler is None or self.sampler in SAMPLERS, f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        check(self.guidance is None or self.guidance >= 1.0, f"guidance must be >= 1, got {self.guidance}")

    def resolve(self, latents_meta: dict[str, str] | None = None, n_latents: int | None = None) -> "GenerateConfig":
        """Fill unset sampling settings from a --latents file (so its images reproduce), else defaults."""
        m = latents_meta or {}
        return dataclasses.replace(
            self,
            steps=self.steps or int(m.get("steps", 25)),
            guidance=self.guidance or float(m.get("guidance", 7.5)),
            sampler=self.sampler or m.get("sampler", "ddim"),
            n=min(self.n or n_latents or 4, n_latents or 10_000),
        )


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "image"


def run_generate(cfg: GenerateConfig) -> list[Path]:
    """Write PNGs, one JSON sidecar per image and a contact sheet; return the image paths."""
    from .artifact import apply_concepts
    from .errors import PersonifyError

    pipe = cfg.load_pipeline()
    apply_concepts(pipe, cfg.concept)
    latents, lat_meta = None, None
    if cfg.latents:
        from safetensors import safe_open

        try:
            with safe_open(cfg.latents, "pt") as f:
                latents, lat_meta = f.get_tensor("latents"), f.metadata() or {}
        except Exception:
            raise PersonifyError(f"{cfg.latents}: not a latents file with a 'latents' tensor; use one written by personify seedselect") from None
        want = (pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
        if latents.ndim != 4 or tuple(latents.shape[1:]) != want:
            raise PersonifyError(f"{cfg.latents}: latents of shape {tuple(latents.shape[1:])} do not fit this model's {want}; use the model they were made with")
        if not same_base(pipe, lat_meta.get("model_hash")):
            warnings.warn(f"{cfg.latents}: made with model {lat_meta['model_hash']}, not {pipe.personify_base_hash}; images will differ")
    cfg = cfg.resolve(lat_meta, None if latents is None else len(latents))
    seeds = [cfg.seed + i for i in range(cfg.n)]
    with torch.no_grad():
        images = generate_images(pipe, [cfg.prompt] * cfg.n, seeds, cfg.steps, cfg.guidance, cfg.sampler, latents=latents)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    concepts = [{"path": m["path"], "method": m["method"], "tokens": m.get("tokens")} for m in pipe.personify_concepts]
    for i, (img, s) in enumerate(zip(images, seeds)):
        p = out / f"{_slug(cfg.prompt)}-{s:06d}.png"
        img.save(p)
        side = {
            "prompt": cfg.prompt, "seed": s, "model": pipe.personify_source, "model_hash": pipe.personify_base_hash, "full_model_hash": getattr(pipe, "personify_full_hash", None),
            "concepts": concepts, "sampler": cfg.sampler, "steps": cfg.steps, "guidance": cfg.guidance,
            "latents": f"{cfg.latents}[{i}]" if latents is not None else None,
        }
        p.with_suffix(".json").write_text(json.dumps(side, indent=1))
        paths.append(p)
    contact_sheet(images).save(out / "contact_sheet.png")
    return paths
