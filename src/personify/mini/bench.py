"""Throughput of candidate UNet sizes (fwd + bwd + AdamW step, fp32, CPU), used to pick the shipped size.

    python -m personify.mini.bench [--threads 2] [--batch 64]
"""
from __future__ import annotations

import argparse
import time

import torch

from . import models as M
from .config import ClipConfig, UnetConfig

CANDIDATES = [((64, 128, 128), 1), ((64, 128, 192), 1), ((96, 192, 192), 1), ((64, 128, 128), 2)]


def bench_unet(block_out_channels, layers_per_block, batch: int = 64, steps: int = 10, warmup: int = 3) -> dict:
    cfg = UnetConfig(block_out_channels=block_out_channels, layers_per_block=layers_per_block)
    text_len, text_dim = ClipConfig().max_length, ClipConfig().text_hidden
    unet = M.build_unet(cfg, text_dim)
    opt = torch.optim.AdamW(unet.parameters(), 1e-4)
    x, enc = torch.randn(batch, 4, 8, 8), torch.randn(batch, text_len, text_dim)
    t = torch.randint(0, 1000, (batch,))

    def step():
        loss = (unet(x, t, encoder_hidden_states=enc).sample - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        s = time.perf_counter()
        step()
        times.append(time.perf_counter() - s)
    times.sort()
    return {"block_out_channels": block_out_channels, "layers_per_block": layers_per_block,
            "params_M": M.count_params(unet) / 1e6, "img_per_s_median": batch / times[len(times) // 2],
            "img_per_s_best": batch / times[0]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="personify.mini.bench")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    for boc, lpb in CANDIDATES:
        r = bench_unet(boc, lpb, a.batch)
        print(f"UNet {r['block_out_channels']} layers_per_block={lpb}: {r['params_M']:.2f} M params, "
              f"{r['img_per_s_median']:.0f} img/s median ({r['img_per_s_best']:.0f} best), batch {a.batch}", flush=True)


if __name__ == "__main__":
    main()
