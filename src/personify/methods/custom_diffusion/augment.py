"""Custom Diffusion's rescale augmentation (Kumari et al. 2023, Sec. 3.1 "Training details"), done
on the batch's latents so the shared loop stays untouched and `--resume` stays bitwise-exact.

The paper rescales each training image by a random factor: shrunk images (factor 0.4-1.0, drawn
2/3 of the time) are pasted at a random place on a blank canvas and the loss only counts the
pasted region; enlarged ones (1.2-1.4, 1/3 of the time) are randomly cropped back. The prompt says
what happened: "very small" / "a far away" below 0.6, "zoomed in" / "close up" above 1.2.

The loop caches VAE latents of fixed crops, so the rescale is applied to the latent sample z0
(SD's latents are spatially local, 8x8 px per latent cell, so bilinear resampling of z0 with
antialiasing approximates encoding the resampled image; the masked loss ignores the seams). The
blank canvas is the VAE latent of a mid-grey image, as the paper's canvas is zeros in [-1, 1].

Randomness: each example's draws come from a hash of that example's own noise tensor, which the
loop draws from its per-step generator (seed, step). So the same step gives the same augmentation
after a resume, and an example is augmented the same whichever process / micro-batch it lands in.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

SMALL_RANGE = (0.4, 1.0)
LARGE_RANGE = (1.2, 1.4)
P_SMALL = 2 / 3
SMALL_WORDS = ("very small ", "a far away ")
LARGE_WORDS = ("zoomed in ", "close up ")
SMALL_BELOW = 0.6  # prompt says "very small"/"far away" below this factor


@dataclass
class Draw:
    scale: float
    top: float  # position of the paste / crop in [0, 1)
    left: float
    word: int


def example_rng(noise: torch.Tensor) -> np.random.Generator:
    """A generator derived from one example's noise tensor (bit pattern, device independent)."""
    digest = hashlib.sha256(noise.detach().float().cpu().contiguous().numpy().tobytes()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def draw(rng: np.random.Generator) -> Draw:
    lo, hi = SMALL_RANGE if rng.random() < P_SMALL else LARGE_RANGE
    return Draw(float(rng.uniform(lo, hi)), float(rng.random()), float(rng.random()), int(rng.integers(2)))


def prompt_prefix(d: Draw) -> str:
    if d.scale < SMALL_BELOW:
        return SMALL_WORDS[d.word]
    if d.scale >= LARGE_RANGE[0]:
        return LARGE_WORDS[d.word]
    return ""


def rescale(z: torch.Tensor, canvas: torch.Tensor, d: Draw) -> tuple[torch.Tensor, torch.Tensor]:
    """z (C, h, w) -> (rescaled z (C, h, w), mask (1, h, w)) for one draw."""
    c, h, w = z.shape
    nh, nw = max(1, round(h * d.scale)), max(1, round(w * d.scale))
    r = F.interpolate(z[None].float(), size=(nh, nw), mode="bilinear", align_corners=False, antialias=nh < h)[0].to(z.dtype)
    mask = torch.zeros((1, h, w), dtype=z.dtype, device=z.device)
    if nh <= h and nw <= w:  # shrink: paste onto the canvas, loss on the pasted cells only
        top, left = int(d.top * (h - nh + 1)), int(d.left * (w - nw + 1))
        out = canvas.to(z.dtype).expand(c, h, w).clone()
        out[:, top : top + nh, left : left + nw] = r
        mask[:, top : top + nh, left : left + nw] = 1
        return out, mask
    top, left = int(d.top * (nh - h + 1)), int(d.left * (nw - w + 1))  # enlarge: random crop
    mask.fill_(1)
    return r[:, top : top + h, left : left + w].contiguous(), mask


def augment_batch(latents: torch.Tensor, noise: torch.Tensor, prompts: list[str], is_prior: torch.Tensor, canvas: torch.Tensor):
    """Rescale every instance example (prior examples untouched, mask 1). Returns
    (latents, mask (B, 1, h, w), prompts)."""
    out, masks, new_prompts = [], [], []
    for i in range(latents.shape[0]):
        if bool(is_prior[i]):
            out.append(latents[i])
            masks.append(torch.ones((1, *latents.shape[2:]), dtype=latents.dtype, device=latents.device))
            new_prompts.append(prompts[i])
            continue
        d = draw(example_rng(noise[i]))
        z, m = rescale(latents[i], canvas, d)
        out.append(z)
        masks.append(m)
        new_prompts.append(prompt_prefix(d) + prompts[i])
    return torch.stack(out), torch.stack(masks), new_prompts
