"""Resumable from-scratch pretraining of the mini Stable Diffusion stack and its evaluators.

    main(ClipConfig(...))        # stage clip: contrastive CLIP; its text tower = frozen text encoder
    main(VaeConfig(...))         # stage vae: AutoencoderKL, factor 8, KL, measured scaling_factor
    main(UnetConfig(...))        # stage unet: DDPM epsilon UNet with cross-attention, CFG dropout, EMA
    main(EvaluatorsConfig(...))  # stage evaluators: CLIP evaluator, DINO ViT, classifier (split eval_train)

or from a shell: ``python -m personify.mini.train --stage unet --max_steps 20000``.
Each call trains until ``max_steps`` (or ``time_budget_s``), checkpointing atomically to
``<run_root>/<stage>/checkpoint.pt`` and writing the usable HF-format model to
``<run_root>/<stage>/model/``; re-running the same command continues from the checkpoint.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import ClipConfig, EvaluatorsConfig, StageConfig, UnetConfig, VaeConfig
from .data import CLIP_MEAN, CLIP_STD, SceneSplit, load_split, split_path, to_clip_pixels, to_unit
from .loop import run_loop
from . import models as M


def _holdout(n: int) -> int:
    """Images kept out of training at the end of a split, for validation numbers."""
    return min(1000, n // 20)


def _adamw(params, cfg: StageConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW([p for p in params if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay,
                             betas=(0.9, 0.999))


def _caption_index(captions: list[str]) -> tuple[list[str], torch.Tensor]:
    uniq: dict[str, int] = {}
    idx = [uniq.setdefault(c, len(uniq)) for c in captions]
    return list(uniq), torch.tensor(idx, dtype=torch.long)


# ==========================================================================================
# CLIP (generator text encoder, and the CLIP evaluator)
# ==========================================================================================
class ClipStage:
    def __init__(self, data: SceneSplit, model, max_length: int, batch_size: int, opt_cfg: StageConfig,
                 caption_aware: bool = True, seed: int = 0):
        self.model = model
        self.tokenizer = M.build_tokenizer(max_length)
        n_val = _holdout(len(data))
        self.n_train = len(data) - n_val
        self.images = torch.from_numpy(data.images)
        uniq, self.cap_idx = _caption_index(data.captions)
        self.ids = M.tokenize(self.tokenizer, uniq)
        self.batch_size = min(batch_size, self.n_train)
        self.caption_aware = caption_aware
        self.opt = _adamw(model.parameters(), opt_cfg)

    def state(self):
        return {"model": self.model, "opt": self.opt}

    def _loss(self, idx: torch.Tensor):
        out = self.model(input_ids=self.ids[self.cap_idx[idx]], pixel_values=to_clip_pixels(self.images[idx]))
        li, lt = out.logits_per_image, out.logits_per_text
        if self.caption_aware:
            same = (self.cap_idx[idx][:, None] == self.cap_idx[idx][None, :]).float()
            tgt = same / same.sum(1, keepdim=True)
        else:
            tgt = torch.eye(len(idx))
        loss = 0.5 * (-(tgt * li.log_softmax(-1)).sum(-1).mean() - (tgt * lt.log_softmax(-1)).sum(-1).mean())
        acc = tgt.gather(1, li.argmax(-1, keepdim=True)).gt(0).float().mean()
        return loss, acc

    def train_step(self, step: int, g: torch.Generator) -> dict:
        self.model.train()
        idx = torch.randint(0, self.n_train, (self.batch_size,), generator=g)
        loss, acc = self._loss(idx)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, np.log(100.0))
        return {"loss": loss.item(), "img2txt_acc": acc.item(), "logit_scale": self.model.logit_scale.exp().item()}

    @torch.no_grad()
    def validate(self) -> dict:
        n = len(self.images) - self.n_train
        if n < 2:
            return {}
        self.model.eval()
        accs, losses = [], []
        for s in range(self.n_train, len(self.images) - 1, 256):
            idx = torch.arange(s, min(s + 256, len(self.images)))
            if len(idx) < 2:
                break
            loss, acc = self._loss(idx)
            losses.append(loss.item())
            accs.append(acc.item())
        return {"val_loss": float(np.mean(losses)), "val_img2txt_acc_per256": float(np.mean(accs))}

    def save_model(self, out: Path) -> dict:
        from transformers import CLIPImageProcessor

        self.model.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}, image_mean=list(CLIP_MEAN),
                           image_std=list(CLIP_STD)).save_pretrained(out)
        return self.validate()


# ==========================================================================================
# VAE
# ==========================================================================================
class VaeStage:
    """L1 + edge (+ KL) reconstruction, optionally with an adaptive patch-GAN term (VQGAN, Esser et al.
    2021): L = L_rec + lambda * L_G, lambda = adv_weight * ||grad L_rec|| / ||grad L_G|| at the decoder's
    last layer (their eq. 7), so the adversarial push never outweighs reconstruction at the output."""

    def __init__(self, cfg: VaeConfig, data: SceneSplit):
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        self.vae = M.load_or_build_vae(cfg)
        # Decoder-only fine-tuning freezes what defines the latent space (encoder + quant_conv).
        for module in (self.vae.encoder, self.vae.quant_conv):
            module.requires_grad_(cfg.train_encoder)
        n_val = _holdout(len(data))
        self.n_train = len(data) - n_val
        self.images = torch.from_numpy(data.images)
        self.opt = _adamw(self.vae.parameters(), cfg)
        self.batch_size = min(cfg.batch_size, self.n_train)
        self.disc = self.disc_opt = None
        if cfg.adv_weight > 0:
            self.disc = M.build_patch_discriminator(cfg.disc_channels)
            self.disc_opt = torch.optim.AdamW(self.disc.parameters(), lr=cfg.lr, betas=(0.5, 0.9), weight_decay=0.0)

    def state(self):
        extra = {"disc": self.disc, "disc_opt": self.disc_opt} if self.disc is not None else {}
        return {"vae": self.vae, "opt": self.opt, **extra}

    def _losses(self, x: torch.Tensor, g: torch.Generator | None):
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.cfg.train_encoder):
            post = self.vae.encode(x).latent_dist
            z = post.sample(generator=g) if g is not None else post.mean  # (B, C, h/8, w/8)
        rec = self.vae.decode(z).sample  # (B, 3, h, w)
        l1 = (rec - x).abs().mean()
        edge = ((rec.diff(dim=-1) - x.diff(dim=-1)).abs().mean() + (rec.diff(dim=-2) - x.diff(dim=-2)).abs().mean())
        kl = post.kl().mean() / z[0].numel()
        return l1, edge, kl, rec

    def train_step(self, step: int, g: torch.Generator) -> dict:
        self.vae.train()
        idx = torch.randint(0, self.n_train, (self.batch_size,), generator=g)
        x = to_unit(self.images[idx])
        c, size = self.cfg.crop_size, x.shape[-1]
        if c < size:
            ox, oy = (int(v) for v in torch.randint(0, size - c + 1, (2,), generator=g))
            x = x[:, :, oy:oy + c, ox:ox + c]
        flip = torch.rand(len(idx), generator=g) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        l1, edge, kl, rec = self._losses(x, g)
        loss = l1 + self.cfg.edge_weight * edge + (self.cfg.kl_weight * kl if self.cfg.train_encoder else 0.0)
        out = {"l1": l1.item(), "edge": edge.item(), "kl": kl.item()}
        adversarial = self.disc is not None and step >= self.cfg.adv_start
        if adversarial:
            self.disc.requires_grad_(False)
            g_loss = -self.disc(rec).mean()
            last = self.vae.decoder.conv_out.weight
            g_rec = torch.autograd.grad(loss, last, retain_graph=True)[0].norm()
            g_adv = torch.autograd.grad(g_loss, last, retain_graph=True)[0].norm()
            lam = (self.cfg.adv_weight * g_rec / (g_adv + 1e-4)).clamp(max=1e4).detach()
            loss = loss + lam * g_loss
            out.update(g_loss=g_loss.item(), adv_lambda=lam.item())
        out["loss"] = loss.item()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in self.vae.parameters() if p.requires_grad], 1.0)
        self.opt.step()
        if adversarial:  # hinge loss (Lim & Ye 2017) on real crops vs. this step's reconstructions
            self.disc.requires_grad_(True)
            d_loss = 0.5 * (F.relu(1 - self.disc(x)).mean() + F.relu(1 + self.disc(rec.detach())).mean())
            self.disc_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            self.disc_opt.step()
            out["d_loss"] = d_loss.item()
        return out

    @torch.no_grad()
    def measure_latent_std(self) -> float:
        self.vae.eval()
        n = min(self.cfg.scale_samples, self.n_train)
        g = torch.Generator().manual_seed(1234)
        zs = [self.vae.encode(to_unit(self.images[s:s + 256][: n - s])).latent_dist.sample(generator=g)
              for s in range(0, n, 256)]
        return float(torch.cat(zs).std())

    def save_model(self, out: Path) -> dict:
        std = self.measure_latent_std()
        # A frozen encoder keeps the scaling_factor its UNet was trained with; so does a widened latent, whose
        # old channels a carried-over UNet reads at their old scale (one factor over all channels would move them).
        if self.cfg.train_encoder and not self.cfg.grow_latent:
            self.vae.register_to_config(scaling_factor=1.0 / std)
        self.vae.save_pretrained(out)
        info = {"latent_std": std, "scaling_factor": self.vae.config.scaling_factor}
        n0 = self.n_train
        if len(self.images) - n0 >= 1:
            with torch.no_grad():
                x = to_unit(self.images[n0:n0 + 256])
                l1, edge, kl, _ = self._losses(x, None)
                rec = self.vae.decode(self.vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
                mse = F.mse_loss((rec + 1) / 2, (x + 1) / 2).item()
            info.update(val_l1=l1.item(), val_psnr=float(10 * np.log10(1.0 / max(mse, 1e-12))))
        return info


# ==========================================================================================
# UNet
# ==========================================================================================
class UnetStage:
    def __init__(self, cfg: UnetConfig, data: SceneSplit, stage_dir: Path):
        from diffusers import AutoencoderKL
        from transformers import CLIPTextModel, CLIPTokenizer

        from transformers.utils import logging as hf_logging

        self.cfg = cfg
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the text tower is read out of a full CLIPModel folder
        try:
            self.text_encoder = CLIPTextModel.from_pretrained(cfg.clip_path).eval().requires_grad_(False)
        finally:
            hf_logging.set_verbosity(verbosity)
        self.tokenizer = CLIPTokenizer.from_pretrained(cfg.clip_path)
        self.vae = AutoencoderKL.from_pretrained(cfg.vae_path).eval().requires_grad_(False)
        self.scaling = float(self.vae.config.scaling_factor)
        torch.manual_seed(cfg.seed)
        self.unet = M.load_or_build_unet(cfg, self.text_encoder.config.hidden_size, self.vae.config.latent_channels)
        self.ema = copy.deepcopy(self.unet).requires_grad_(False)
        self.sched = M.build_train_scheduler(cfg)
        self.alphas_cumprod = self.sched.alphas_cumprod.float()
        self.opt = _adamw(self.unet.parameters(), cfg)
        self.batch_size = cfg.batch_size
        self.steps_done = 0
        uniq, self.cap_idx = _caption_index(data.captions)
        self.sample_captions = uniq[:8]
        t = time.time()
        self.cap_emb = self._encode_text(uniq)
        self.empty_emb = self._encode_text([""])[0]
        self.mean, self.std = self._encode_latents(data, stage_dir)
        print(f"[unet] cached {len(uniq)} caption embeddings and {len(self.mean)} latents in {time.time() - t:.0f}s",
              flush=True)

    @torch.no_grad()
    def _encode_text(self, captions: list[str]) -> torch.Tensor:
        out = []
        for s in range(0, len(captions), 512):
            ids = M.tokenize(self.tokenizer, captions[s:s + 512])
            out.append(self.text_encoder(ids)[0].to(torch.float16))  # fp16 cache: 115k captions x 32 x 128
        return torch.cat(out)

    @torch.no_grad()
    def _encode_latents(self, data: SceneSplit, stage_dir: Path):
        """Posterior mean/std of every training image, cached in ``stage_dir/latent_cache.pt``.
        The cache is a prefix of the split: growing ``max_train_images`` only encodes the new images."""
        vae_file = next(Path(self.cfg.vae_path).glob("*.safetensors"))
        npz = split_path(self.cfg.world, self.cfg.split)
        key = f"{vae_file.resolve()}:{vae_file.stat().st_mtime_ns}:{npz.resolve()}:{npz.stat().st_mtime_ns}"
        cache = stage_dir / "latent_cache.pt"
        means, stds, start = [], [], 0
        if cache.exists():
            c = torch.load(cache, weights_only=False)
            if c.get("key") == key:
                means, stds, start = [c["mean"]], [c["std"]], len(c["mean"])
        if start >= len(data):
            return means[0][: len(data)], stds[0][: len(data)]
        last_save = time.time()
        for s in range(start, len(data), 256):
            post = self.vae.encode(to_unit(torch.from_numpy(data.images[s:s + 256]))).latent_dist
            means.append(post.mean)
            stds.append(post.std)
            if (s // 256) % 40 == 0:
                print(f"[unet] encoding latents {s}/{len(data)}", flush=True)
            if time.time() - last_save > 300 or s + 256 >= len(data):  # resumable encoding
                means, stds = [torch.cat(means)], [torch.cat(stds)]
                stage_dir.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_name(cache.name + ".tmp")
                torch.save({"key": key, "mean": means[0], "std": stds[0]}, tmp)
                os.replace(tmp, cache)
                last_save = time.time()
        return means[0], stds[0]

    def state(self):
        return {"unet": self.unet, "ema": self.ema, "opt": self.opt}

    def train_step(self, step: int, g: torch.Generator) -> dict:
        self.unet.train()
        self.steps_done = step + 1
        b = self.batch_size
        idx = torch.randint(0, len(self.mean), (b,), generator=g)
        z = (self.mean[idx] + self.std[idx] * torch.randn(self.mean[idx].shape, generator=g)) * self.scaling
        noise = torch.randn(z.shape, generator=g)
        t = torch.randint(0, self.cfg.num_train_timesteps, (b,), generator=g)
        drop = torch.rand(b, generator=g) < self.cfg.cond_dropout
        enc = torch.where(drop[:, None, None], self.empty_emb[None], self.cap_emb[self.cap_idx[idx]]).float()
        noisy = self.sched.add_noise(z, noise, t)
        pred = self.unet(noisy, t, encoder_hidden_states=enc).sample
        mse = ((pred - noise) ** 2).mean(dim=(1, 2, 3))
        if self.cfg.snr_gamma > 0:
            ac = self.alphas_cumprod[t]
            snr = ac / (1 - ac)
            w = torch.clamp(snr, max=self.cfg.snr_gamma) / snr
            loss = (w * mse).mean()
        else:
            loss = mse.mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(self.unet.parameters(), 1.0)
        self.opt.step()
        decay = min(self.cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(self.ema.parameters(), self.unet.parameters()):
                pe.lerp_(p, 1 - decay)
        return {"loss": loss.item(), "mse": mse.mean().item(), "grad_norm": float(gn)}

    def save_model(self, out: Path) -> dict:
        self.ema.save_pretrained(out)
        try:
            self._write_samples(out.parent / "samples")
        except Exception as e:  # sampling is a convenience, never a reason to lose a checkpoint
            print(f"[unet] sample grid failed: {e!r}", flush=True)
        return {"unet_params": M.count_params(self.unet)}

    @torch.no_grad()
    def _write_samples(self, folder: Path) -> None:
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                                       unet=self.ema, scheduler=M.build_inference_scheduler(self.cfg),
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        imgs = pipe(self.sample_captions, height=64, width=64, num_inference_steps=25, guidance_scale=5.0,
                    generator=torch.Generator().manual_seed(0), output_type="np").images
        grid = (np.concatenate(list(imgs), axis=1) * 255).round().astype(np.uint8)
        from PIL import Image

        folder.mkdir(parents=True, exist_ok=True)
        (folder / "captions.json").write_text(json.dumps(self.sample_captions, indent=1))
        Image.fromarray(grid).save(folder / f"step_{self.steps_done:07d}.png")
        Image.fromarray(grid).save(folder / "latest.png")


# ==========================================================================================
# Evaluators: DINO ViT and classifier (the CLIP evaluator reuses ClipStage)
# ==========================================================================================
def _random_resized_crop(x: torch.Tensor, size: int, scale: tuple[float, float], g: torch.Generator,
                         flip: bool = True) -> torch.Tensor:
    """Batched RandomResizedCrop (+ horizontal flip) with affine grids. x: float NCHW."""
    b = x.shape[0]
    area = torch.empty(b).uniform_(*scale, generator=g)
    logr = torch.empty(b).uniform_(np.log(3 / 4), np.log(4 / 3), generator=g)
    r = logr.exp()
    w = (area * r).sqrt().clamp(max=1.0)
    h = (area / r).sqrt().clamp(max=1.0)
    cx = (torch.rand(b, generator=g) * 2 - 1) * (1 - w)
    cy = (torch.rand(b, generator=g) * 2 - 1) * (1 - h)
    sgn = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0) if flip else torch.ones(b)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * sgn, cx, h, cy
    grid = F.affine_grid(theta, (b, x.shape[1], size, size), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _color_jitter(x: torch.Tensor, g: torch.Generator, strength: float = 0.3, p_gray: float = 0.1) -> torch.Tensor:
    """x in [0, 1]; per-sample brightness/contrast/saturation jitter and random grayscale."""
    b = x.shape[0]
    u = lambda: (1 + (torch.rand(b, 1, 1, 1, generator=g) * 2 - 1) * strength)  # noqa: E731
    x = x * u()
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - m) * u() + m
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = (x - gray) * u() + gray
    x = torch.where(torch.rand(b, 1, 1, 1, generator=g) < p_gray, gray.expand_as(x), x)
    return x.clamp(0, 1)


def _norm(x01: torch.Tensor) -> torch.Tensor:
    return (x01 - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)


class _Center(torch.nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("center", torch.zeros(1, dim))


class DinoStage:
    def __init__(self, cfg: EvaluatorsConfig, data: SceneSplit):
        self.cfg = cfg
        torch.manual_seed(cfg.seed + 101)
        self.student = M.build_dino_vit(cfg)
        self.student_head = M.DinoHead(cfg.dino_hidden, cfg.dino_out_dim)
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        self.teacher_head = copy.deepcopy(self.student_head).requires_grad_(False)
        self.center = _Center(cfg.dino_out_dim)
        self.images = torch.from_numpy(data.images)
        self.labels = torch.from_numpy(data.class_id)
        self.n_train = len(data) - _holdout(len(data))
        params = [p for p in list(self.student.parameters()) + list(self.student_head.parameters()) if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.04)
        self.batch_size = min(cfg.dino_batch_size, self.n_train)

    def state(self):
        return {"student": self.student, "student_head": self.student_head, "teacher": self.teacher,
                "teacher_head": self.teacher_head, "center": self.center, "opt": self.opt}

    def _cls(self, vit, x, head):
        h = vit(pixel_values=x, interpolate_pos_encoding=x.shape[-1] != 64).last_hidden_state[:, 0]
        return head(h)

    def train_step(self, step: int, g: torch.Generator) -> dict:
        c = self.cfg
        self.student.train()
        idx = torch.randint(0, self.n_train, (self.batch_size,), generator=g)
        x = self.images[idx].permute(0, 3, 1, 2).float() / 255
        glob = [_norm(_color_jitter(_random_resized_crop(x, 64, (0.4, 1.0), g), g)) for _ in range(2)]
        loc = [_norm(_color_jitter(_random_resized_crop(x, 32, (0.1, 0.4), g), g)) for _ in range(c.dino_local_crops)]
        with torch.no_grad():
            t_out = self._cls(self.teacher, torch.cat(glob), self.teacher_head)
            t_prob = F.softmax((t_out - self.center.center) / c.dino_teacher_temp, dim=-1).chunk(2)
        s_out = [self._cls(self.student, torch.cat(glob), self.student_head)]
        if loc:
            s_out.append(self._cls(self.student, torch.cat(loc), self.student_head))
        s_logp = F.log_softmax(torch.cat(s_out) / c.dino_student_temp, dim=-1).chunk(2 + len(loc))
        loss, n = 0.0, 0
        for i, tp in enumerate(t_prob):
            for v, sl in enumerate(s_logp):
                if v == i:
                    continue
                loss = loss + (-(tp * sl).sum(-1).mean())
                n += 1
        loss = loss / n
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(self.student.parameters()) + list(self.student_head.parameters()), 3.0)
        self.opt.step()
        with torch.no_grad():
            m = c.dino_teacher_momentum
            for pt, ps in zip(list(self.teacher.parameters()) + list(self.teacher_head.parameters()),
                              list(self.student.parameters()) + list(self.student_head.parameters())):
                pt.mul_(m).add_(ps.detach(), alpha=1 - m)
            self.center.center.mul_(0.9).add_(t_out.mean(0, keepdim=True), alpha=0.1)
            tp = torch.cat(t_prob)
            ent = -(tp * tp.clamp_min(1e-12).log()).sum(-1).mean()
        return {"loss": loss.item(), "teacher_entropy": ent.item(), "teacher_max_prob": tp.max(-1).values.mean().item()}

    @torch.no_grad()
    def embed(self, images_u8: torch.Tensor) -> torch.Tensor:
        self.teacher.eval()
        out = [self.teacher(pixel_values=_norm(images_u8[s:s + 256].permute(0, 3, 1, 2).float() / 255)).last_hidden_state[:, 0]
               for s in range(0, len(images_u8), 256)]
        return F.normalize(torch.cat(out), dim=-1)

    def save_model(self, out: Path) -> dict:
        from transformers import ViTImageProcessor

        self.teacher.save_pretrained(out)
        ViTImageProcessor(size={"height": 64, "width": 64}, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD)).save_pretrained(out)
        return _knn_info(self.embed, self.images, self.labels, self.n_train)


def _knn_info(embed, images, labels, n_train) -> dict:
    """1-NN class accuracy of held-out images against (up to 5000) training images."""
    if len(images) - n_train < 1:
        return {}
    tr = torch.arange(0, n_train, max(1, n_train // 5000))
    e_tr, e_va = embed(images[tr]), embed(images[n_train:])
    nn_idx = (e_va @ e_tr.T).argmax(-1)
    acc = (labels[tr][nn_idx] == labels[n_train:]).float().mean().item()
    return {"val_knn1_class_acc": acc, "n_val": len(images) - n_train}


class ClassifierStage:
    def __init__(self, cfg: EvaluatorsConfig, data: SceneSplit):
        self.cfg = cfg
        torch.manual_seed(cfg.seed + 202)
        names = data.meta.get("classes") or [str(i) for i in range(data.num_classes)]
        self.model = M.MiniClassifier(max(len(names), int(data.class_id.max()) + 1), class_names=names,
                                      stem_stride=cfg.classifier_stem_stride)
        self.images = torch.from_numpy(data.images)
        self.labels = torch.from_numpy(data.class_id)
        self.n_train = len(data) - _holdout(len(data))
        self.opt = _adamw(self.model.parameters(), cfg)
        self.batch_size = min(cfg.batch_size, self.n_train)

    def state(self):
        return {"model": self.model, "opt": self.opt}

    def train_step(self, step: int, g: torch.Generator) -> dict:
        self.model.train()
        idx = torch.randint(0, self.n_train, (self.batch_size,), generator=g)
        x = self.images[idx].permute(0, 3, 1, 2).float() / 255
        x = _norm(_random_resized_crop(x, 64, (0.6, 1.0), g))
        logits = self.model(x)
        loss = F.cross_entropy(logits, self.labels[idx], label_smoothing=0.1)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": loss.item(), "acc": (logits.argmax(-1) == self.labels[idx]).float().mean().item()}

    def save_model(self, out: Path) -> dict:
        self.model.save_pretrained(out)
        if len(self.images) - self.n_train < 1:
            return {}
        self.model.eval()
        with torch.no_grad():
            x = to_clip_pixels(self.images[self.n_train:])
            pred = torch.cat([self.model(x[s:s + 256]).argmax(-1) for s in range(0, len(x), 256)])
        return {"val_acc": (pred == self.labels[self.n_train:]).float().mean().item(),
                "n_val": len(self.images) - self.n_train}


# ==========================================================================================
# Entry points
# ==========================================================================================
def _loop(stage, cfg: StageConfig, stage_dir: Path, tag: str, max_steps: int) -> dict:
    return run_loop(stage, stage_dir, seed=cfg.seed, tag=tag, max_steps=max_steps, lr=cfg.lr,
                    warmup_steps=cfg.warmup_steps, log_every=cfg.log_every,
                    checkpoint_every_s=cfg.checkpoint_every_s, time_budget_s=cfg.time_budget_s, decay_steps=cfg.decay_steps)


def _finished(stage_dir: Path, max_steps: int) -> bool:
    st, ck = stage_dir / "status.json", stage_dir / "checkpoint.pt"
    if not (st.exists() and ck.exists() and (stage_dir / "model").exists()):
        return False
    return int(json.loads(st.read_text()).get("step", -1)) >= max_steps


def _write_config(cfg: StageConfig, stage_dir: Path) -> None:
    stage_dir.mkdir(parents=True, exist_ok=True)
    (stage_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))


def main(cfg: StageConfig) -> dict:
    """Train (or continue training) one stage; returns its status dict."""
    torch.set_num_threads(cfg.threads)
    stage_dir = cfg.stage_dir
    if not isinstance(cfg, EvaluatorsConfig) and _finished(stage_dir, cfg.max_steps):
        return json.loads((stage_dir / "status.json").read_text())  # nothing to do: skip loading the data
    _write_config(cfg, stage_dir)
    if isinstance(cfg, ClipConfig):
        data = load_split(cfg.world, cfg.split, cfg.max_train_images)
        torch.manual_seed(cfg.seed)
        stage = ClipStage(data, M.build_clip(cfg), cfg.max_length, cfg.batch_size, cfg, cfg.caption_aware_targets)
        return _loop(stage, cfg, stage_dir, "clip", cfg.max_steps)
    if isinstance(cfg, VaeConfig):
        data = load_split(cfg.world, cfg.split, cfg.max_train_images)
        return _loop(VaeStage(cfg, data), cfg, stage_dir, "vae", cfg.max_steps)
    if isinstance(cfg, UnetConfig):
        for p, name in ((cfg.clip_path, "clip"), (cfg.vae_path, "vae")):
            if not (p / "config.json").exists():
                raise FileNotFoundError(f"{p} missing: train stage {name} first")
        data = load_split(cfg.world, cfg.split, cfg.max_train_images)
        return _loop(UnetStage(cfg, data, stage_dir), cfg, stage_dir, "unet", cfg.max_steps)
    if isinstance(cfg, EvaluatorsConfig):
        data = load_split(cfg.world, cfg.split, cfg.max_train_images)
        result = {}
        for name in cfg.evaluators:
            sub = stage_dir / name
            if _finished(sub, {"clip": cfg.clip_steps, "dino": cfg.dino_steps}.get(name, cfg.classifier_steps)):
                result[name] = json.loads((sub / "status.json").read_text())
                continue
            if name == "clip":
                torch.manual_seed(cfg.seed + 303)
                stage = ClipStage(data, M.build_eval_clip(cfg), cfg.clip_max_length, cfg.batch_size, cfg)
                result[name] = _loop(stage, cfg, sub, "eval_clip", cfg.clip_steps)
            elif name == "dino":
                dcfg = dataclasses.replace(cfg, lr=min(cfg.lr, 5e-4))
                result[name] = _loop(DinoStage(dcfg, data), dcfg, sub, "eval_dino", cfg.dino_steps)
            else:
                result[name] = _loop(ClassifierStage(cfg, data), cfg, sub, "eval_classifier", cfg.classifier_steps)
            if result[name].get("interrupted"):  # SIGTERM/Ctrl-C stops the whole stage, not just this evaluator
                break
        return result
    raise TypeError(f"unknown config type {type(cfg).__name__}")


def cli(argv: list[str] | None = None) -> None:
    """`python -m personify.mini.train --stage S ...` = `personify mini train --stage S ...` (one schema)."""
    from ..cli import main as personify_main

    sys.exit(personify_main(["mini", "train", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    cli()
