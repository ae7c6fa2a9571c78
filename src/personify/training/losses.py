"""The denoising loss every method shares (Ho et al. 2020, Eq. 14; v-prediction: Salimans & Ho 2022)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def diffusion_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, t)
    raise ValueError(f"unsupported prediction_type {kind!r}")


def diffusion_loss(unet, scheduler, batch: dict[str, Any], cond: torch.Tensor, prior_weight: float = 0.0) -> torch.Tensor:
    """‖ε − ε_θ(z_t, t, c)‖² on instance examples + λ·the same on class (prior) examples.

    batch: latents (B, C, h, w), noise (B, C, h, w), timesteps (B,), is_prior (B,) bool,
    optional mask (B, 1, h, w) restricting the loss to valid pixels (Custom Diffusion's rescale).
    """
    latents, noise, t = batch["latents"], batch["noise"], batch["timesteps"]
    noisy = scheduler.add_noise(latents, noise, t)  # z_t = √ᾱ_t z_0 + √(1−ᾱ_t) ε
    pred = unet(noisy, t, encoder_hidden_states=cond).sample
    target = diffusion_target(scheduler, latents, noise, t)
    err = F.mse_loss(pred.float(), target.float(), reduction="none")  # (B, C, h, w)
    mask = batch.get("mask")
    if mask is not None:
        per = (err * mask).sum(dim=(1, 2, 3)) / (mask.sum(dim=(1, 2, 3)) * err.shape[1]).clamp_min(1)
    else:
        per = err.mean(dim=(1, 2, 3))  # (B,)
    is_prior = batch.get("is_prior")
    if is_prior is None or not bool(is_prior.any()):
        return per.mean()
    inst = per[~is_prior].mean()
    return inst + prior_weight * per[is_prior].mean()
