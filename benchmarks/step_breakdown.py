"""Where a full-fine-tuning (DreamBooth) training step goes, and what the alternatives cost, side by side.

    OMP_NUM_THREADS=1 python benchmarks/step_breakdown.py [--model DIR] [--batch 1] [--compile]

One process, one thread, the mini UNet in fp32 at its latent size, a random text condition. Every
variant runs the same steps (forward, MSE to the noise, backward, clip to 1.0, AdamW, zero grad):

- per-tensor: torch's default AdamW (what diffusers' scripts get on CPU) + clip_grad_norm_;
- fused: AdamW(fused=True), personify's default (training.loop.make_adamw);
- flat: every parameter and gradient a view of one buffer, so clipping is one norm and AdamW one
  fused tensor (gradients then accumulate in place instead of being stolen by autograd);
- compile (--compile): torch.compile(unet) with the fused optimizer; its compile time is printed apart.

Prints ms per step split into forward+backward and clip+optimizer, and each variant's ratio to
per-tensor. Numbers quoted in benchmarks/results/diffusers_scripts.md.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def build(model: str, variant: str):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(Path(model) / "unet").float().train()
    params = [p for p in unet.parameters() if p.requires_grad]
    grads = None
    if variant == "flat":
        n = sum(p.numel() for p in params)
        flat, grads = torch.empty(n), torch.zeros(n)
        o = 0
        for p in params:
            k = p.numel()
            flat[o : o + k].copy_(p.data.reshape(-1))
            p.data, p.grad = flat[o : o + k].view_as(p), grads[o : o + k].view_as(p)
            o += k
        whole = torch.nn.Parameter(flat)
        whole.grad = grads
        opt = torch.optim.AdamW([whole], lr=1e-5, fused=True)
    else:
        opt = torch.optim.AdamW(params, lr=1e-5, **({"fused": True} if variant in ("fused", "compile") else {}))
    fn = torch.compile(unet) if variant == "compile" else unet
    return unet, fn, params, grads, opt


def run(model: str, variant: str, batch: int, steps: int) -> dict:
    unet, fn, params, grads, opt = build(model, variant)
    c = unet.config
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, c.in_channels, c.sample_size, c.sample_size, generator=g)
    cond = torch.randn(batch, 16, c.cross_attention_dim, generator=g)

    def step():
        t = torch.randint(0, 1000, (batch,), generator=g)
        t0 = time.perf_counter()
        loss = (fn(x, t, cond).sample - x).pow(2).mean()
        loss.backward()
        t1 = time.perf_counter()
        if grads is not None:
            grads.mul_(torch.clamp(1.0 / (grads.norm() + 1e-6), max=1.0))
            opt.step()
            grads.zero_()
        else:
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return t1 - t0, time.perf_counter() - t1

    t0 = time.perf_counter()
    step(), step()
    warm = time.perf_counter() - t0
    ts = [step() for _ in range(steps)]
    fb, co = (sum(x[i] for x in ts) / steps * 1000 for i in (0, 1))
    return {"variant": variant, "fwd_bwd_ms": fb, "clip_opt_ms": co, "step_ms": fb + co, "warmup_s": warm}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "src" / "personify" / "assets" / "mini-sd"))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--compile", action="store_true", help="also torch.compile (minutes of compile on CPU)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    variants = ["per-tensor", "fused", "flat"] + (["compile"] if args.compile else [])
    rows = [run(args.model, v, args.batch, args.steps) for v in variants]
    ref = rows[0]["step_ms"]
    print(f"{'variant':12s} {'fwd+bwd ms':>10s} {'clip+opt ms':>11s} {'step ms':>8s} {'vs per-tensor':>13s} {'warm-up s':>9s}")
    for r in rows:
        print(f"{r['variant']:12s} {r['fwd_bwd_ms']:10.1f} {r['clip_opt_ms']:11.1f} {r['step_ms']:8.1f} {ref / r['step_ms']:12.2f}x {r['warmup_s']:9.1f}")


if __name__ == "__main__":
    main()
