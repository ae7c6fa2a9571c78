"""Samplers: plain functions over `model(x, t, cond) -> prediction` (k-diffusion style).

No `torch.no_grad()` here: SeedSelect differentiates through a whole sampling run, so the call
site decides (`with torch.no_grad(): ddim(...)`). The schedulers' `step()` from diffusers are pure
tensor arithmetic, so gradients flow through them.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, SchedulerMixin

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
SAMPLERS = ("ddim", "euler")


def unet_denoiser(unet) -> Denoiser:
    """Wrap a UNet2DConditionModel as `model(x, t, cond)`."""

    def model(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return unet(x, t, encoder_hidden_states=cond).sample

    return model


def cfg_denoiser(model: Denoiser, uncond: torch.Tensor, guidance: float) -> Denoiser:
    """Classifier-free guidance (Ho & Salimans 2022): ε = ε_u + w (ε_c − ε_u), one batched call."""
    if guidance == 1.0:
        return model

    def guided(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        u = uncond.expand_as(cond) if uncond.shape[0] == 1 else uncond
        out = model(torch.cat([x, x]), t, torch.cat([u, cond]))  # (2B, C, h, w)
        e_u, e_c = out.chunk(2)
        return e_u + guidance * (e_c - e_u)

    return guided


def make_scheduler(name: str, base: SchedulerMixin) -> SchedulerMixin:
    """A fresh sampler scheduler sharing the base model's noise schedule and prediction type."""
    if name == "ddim":
        return DDIMScheduler.from_config(base.config)
    if name == "euler":
        return EulerDiscreteScheduler.from_config(base.config)
    raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")


def sample(
    model: Denoiser,
    x: torch.Tensor,
    cond: torch.Tensor,
    scheduler: SchedulerMixin,
    steps: int,
    generator: torch.Generator | None = None,
    callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
    checkpoint_steps: bool = False,
) -> torch.Tensor:
    """Run `steps` denoising steps from unit-variance noise `x` (B, C, h, w) to clean latents
    (C = the VAE's latent channels: 4 on SD 1.x/2.x, 16 on the mini model since v6).

    `callback(i, x_prev, x0_pred)` sees each step's predicted clean latent (SeedSelect applies its
    semantic loss to the last few). `checkpoint_steps` recomputes each step's activations in the
    backward pass, so memory stays that of one step when differentiating through the run.
    """
    sched = copy.deepcopy(scheduler)
    sched.set_timesteps(steps, device=x.device)
    x = x * sched.init_noise_sigma
    for i, t in enumerate(sched.timesteps):
        def one_step(x_in: torch.Tensor, i: int = i, t: torch.Tensor = t) -> tuple[torch.Tensor, torch.Tensor]:
            if hasattr(sched, "_step_index"):
                # Euler keeps a step counter; pin it so a checkpoint replay in backward sees step i.
                sched._step_index = i
            inp = sched.scale_model_input(x_in, t)
            pred = model(inp, t, cond)  # t: scalar tensor, broadcast by the UNet
            out = _step(sched, pred, t, x_in, generator)
            x0 = out.pred_original_sample if out.pred_original_sample is not None else out.prev_sample
            return out.prev_sample, x0

        if checkpoint_steps and torch.is_grad_enabled():
            x_prev, x0 = torch.utils.checkpoint.checkpoint(one_step, x, use_reentrant=False)
        else:
            x_prev, x0 = one_step(x)
        if callback is not None:
            callback(i, x_prev, x0)
        x = x_prev
    return x


def _step(sched, pred, t, x, generator):
    if isinstance(sched, DDIMScheduler):
        return sched.step(pred, t, x, eta=0.0, generator=generator)
    return sched.step(pred, t, x, generator=generator)


def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Latents (B, C, h, w) -> images in [0, 1], (B, 3, 8h, 8w)."""
    img = vae.decode(latents / vae.config.scaling_factor).sample
    return (img / 2 + 0.5).clamp(0, 1)


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    """Prompts -> token ids (B, L), padded to max length as in SD; multi-vector placeholders expanded."""
    from .tokens import expand_prompt

    prompts = [expand_prompt(tokenizer, p) for p in prompts]
    return tokenizer(prompts, padding="max_length", truncation=True, max_length=tokenizer.model_max_length, return_tensors="pt").input_ids


def encode_prompts(tokenizer, text_encoder, prompts: list[str]) -> torch.Tensor:
    """Prompts -> CLIP hidden states (B, L, D)."""
    return text_encoder(tokenize(tokenizer, prompts).to(text_encoder.device))[0]
