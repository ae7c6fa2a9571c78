"""Merge timing: `python -m personify.methods.custom_diffusion.bench [--threads N] [--repeats R]`.

Builds two synthetic Custom Diffusion concepts (base K/V plus random perturbations and random
modifier embeddings: the merge's cost does not depend on what the weights are) on
- the tiny test model (cross-attention width 16, 16-token prompts) and
- a random model with the embedded mini model's shapes (mini/config.py defaults: UNet widths
  64/128/128, text encoder 128 wide x 4 layers, 32-token prompts),
then times `merge_concepts` end to end (read both files, encode the prompts and 1,000 regularization
captions, solve, write the artifact) and prints the median over repeats, plus the artifact's share
of the UNet.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def mini_shaped_pipeline():
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    from ...mini.config import ClipConfig, UnetConfig
    from ...mini.models import build_unet, clip_config
    from ...models.loading import model_hash
    from ...models.tiny import build_tiny_pipeline, clip_tokenizer

    torch.manual_seed(0)
    c = ClipConfig()
    text_cfg = clip_config(c.max_length, c.text_hidden, c.text_layers, c.text_heads, c.vision_hidden, c.vision_layers,
                           c.vision_heads, c.patch_size, c.image_size, c.projection_dim).text_config
    tiny = build_tiny_pipeline()
    pipe = StableDiffusionPipeline(
        unet=build_unet(UnetConfig(), c.text_hidden), vae=tiny.vae, text_encoder=CLIPTextModel(text_cfg),
        tokenizer=clip_tokenizer(c.max_length), scheduler=tiny.scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.personify_base_hash, pipe.personify_source, pipe.personify_concepts = model_hash(pipe), "mini-shaped", []
    return pipe


def synthetic_concept(pipe, path: Path, token: str, class_word: str, seed: int) -> Path:
    from ...artifact import save_concept
    from .method import cross_attention_parameters

    g = torch.Generator().manual_seed(seed)
    params = cross_attention_parameters(pipe.unet)
    tensors = {f"unet.{k}": p.detach() + 0.05 * p.detach().std() * torch.randn(p.shape, generator=g) for k, p in params.items()}
    d = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    tensors[f"token.{token}"] = 0.02 * torch.randn(d, generator=g)
    prompt = f"photo of a {token} {class_word}"
    meta = {"method": "custom_diffusion", "base_model_hash": pipe.personify_base_hash, "base_model": pipe.personify_source,
            "tokens": [token], "class_word": class_word, "instance_prompt": prompt,
            "concepts": [{"token": token, "class_word": class_word, "instance_prompt": prompt}]}
    return save_concept(path, tensors, meta, torch.float16)


def run(name: str, pipe, repeats: int) -> dict:
    from ...artifact import read_concept
    from .merge import builtin_captions, merge_concepts

    caps = builtin_captions(1000)
    with tempfile.TemporaryDirectory() as tmp:
        a = synthetic_concept(pipe, Path(tmp) / "a.safetensors", "<new1>", "dog", 1)
        b = synthetic_concept(pipe, Path(tmp) / "b.safetensors", "<new2>", "teapot", 2)
        times = []
        for i in range(repeats):
            t0 = time.perf_counter()
            out = merge_concepts(pipe, [a, b], caps, Path(tmp) / f"m{i}.safetensors")
            times.append(time.perf_counter() - t0)
        tensors, meta = read_concept(out)
        unet_bytes = sum(p.numel() * 2 for p in pipe.unet.parameters())  # fp16, as the artifact
        art_bytes = out.stat().st_size
    kv = sum(v.numel() for k, v in tensors.items() if k.startswith("unet."))
    unet_n = sum(p.numel() for p in pipe.unet.parameters())
    return {"model": name, "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "kv_params": kv, "unet_params": unet_n, "kv_fraction": kv / unet_n, "artifact_bytes": art_bytes,
            "artifact_vs_unet_fp16": art_bytes / unet_bytes, "rows": meta["config"]["merge"]["constraint_rows"],
            "residual": meta["metrics"]["constraint_rel_residual"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from ...models import load_pipeline

    print(f"torch threads: {torch.get_num_threads()}")
    for name, pipe in (("tiny", load_pipeline("tiny")), ("mini-shaped", mini_shaped_pipeline())):
        r = run(name, pipe, args.repeats)
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
