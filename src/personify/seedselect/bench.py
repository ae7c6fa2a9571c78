"""Speed-only benchmark of SeedSelect on *random* models of mini size (the mini model is not trained
yet, so the images are meaningless; only the seconds are).

    python -m personify.seedselect.bench [--n 8] [--unet 64,128,256] [--cross 256] [--threads 2]

Sizes default to the brief's mini: 64 px images, 8x8x4 latents, UNet block_out_channels (64, 128, 256)
with cross_attention_dim 256, a 4-block VAE (32, 64, 128, 128), a 4-layer CLIP text encoder and a
4-layer 64 px ViT-B/8-style CLIP evaluator of width 128. Timings include everything SeedSelect does
for the n images: the 30-iteration full run, the bootstrap runs and the final no-grad rendering.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def random_mini_pipeline(unet_channels=(64, 128, 256), cross_dim: int = 256, text_layers: int = 4, seed: int = 0):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..models.tiny import clip_tokenizer

    torch.manual_seed(seed)
    n = len(unet_channels)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=tuple(unet_channels), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        cross_attention_dim=cross_dim, attention_head_dim=4, norm_num_groups=32,
    )
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(32, 64, 128, 128), layers_per_block=1,
                        latent_channels=4, norm_num_groups=32, sample_size=64, scaling_factor=1.0)
    tok = clip_tokenizer(32)
    te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=cross_dim, intermediate_size=4 * cross_dim,
                                      num_hidden_layers=text_layers, num_attention_heads=4, max_position_embeddings=32,
                                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    sched = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=te, tokenizer=tok, scheduler=sched, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def random_mini_clip(width: int = 128, layers: int = 4, seed: int = 1):
    from transformers import CLIPConfig, CLIPModel

    from ..evaluation.encoders import CLIPEncoder
    from ..models.tiny import clip_tokenizer

    torch.manual_seed(seed)
    tok = clip_tokenizer(32)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                         num_attention_heads=4, max_position_embeddings=32, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers, num_attention_heads=4,
                           image_size=64, patch_size=8),
        projection_dim=width,
    )
    return CLIPEncoder(CLIPModel(cfg), tok)


def params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def main(argv: list[str] | None = None) -> dict:
    from .config import SeedSelectConfig
    from .run import main as run_main

    ap = argparse.ArgumentParser(prog="python -m personify.seedselect.bench")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--unet", default="64,128,256", help="UNet block_out_channels")
    ap.add_argument("--cross", type=int, default=256, help="cross_attention_dim = text encoder width")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--bootstrap-iterations", type=int, default=5)
    ap.add_argument("--no-checkpoint", action="store_true")
    ap.add_argument("--no-bootstrap", action="store_true")
    ap.add_argument("--out", default="/tmp/personify-seedselect-bench")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    warnings.simplefilter("ignore")
    out = Path(a.out)
    refs_dir = out / "refs"
    refs_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(5):  # mixed sizes, as user photos come
        Image.fromarray(rng.integers(0, 255, (64 + 16 * i, 80, 3), dtype=np.uint8)).save(refs_dir / f"{i}.png")
    pipe = random_mini_pipeline(tuple(int(c) for c in a.unet.split(",")), a.cross)
    clip = random_mini_clip()
    cfg = SeedSelectConfig(images=str(refs_dir), prompt="a photo of a dog", n=a.n, out=str(out / "run"), iterations=a.iterations,
                           bootstrap_iterations=a.bootstrap_iterations, checkpoint=not a.no_checkpoint, bootstrap=not a.no_bootstrap)
    t0 = time.perf_counter()
    run_main(cfg, pipe=pipe, clip=clip, quiet=True)
    wall = time.perf_counter() - t0
    rep = json.loads((out / "run" / "seedselect.json").read_text())
    result = {
        "speed_only_random_weights": True, "n": a.n, "threads": a.threads, "cpu": platform.processor() or platform.machine(),
        "unet_block_out_channels": a.unet, "cross_attention_dim": a.cross,
        "params_M": {"unet": params(pipe.unet) / 1e6, "vae": params(pipe.vae) / 1e6, "text_encoder": params(pipe.text_encoder) / 1e6,
                     "clip": params(clip) / 1e6},
        "iterations": a.iterations, "bootstrap_iterations": a.bootstrap_iterations, "bootstrap": not a.no_bootstrap,
        "checkpoint": not a.no_checkpoint, "seconds": rep["seconds"], "wall_s": round(wall, 2),
        "per_image_s": round(wall / a.n, 2),
        "full_run_s": rep["runs"][0]["seconds"], "bootstrap_run_s": rep["runs"][1]["seconds"] if len(rep["runs"]) > 1 else None,
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
