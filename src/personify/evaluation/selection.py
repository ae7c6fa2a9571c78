"""Metric-driven checkpoint selection: during training, score a few validation prompts every N steps
and keep the best concept. Long DreamBooth runs overfit (the subject's photos come back whatever the
prompt: CLIP-I rises while CLIP-T falls), so the default metric adds the two.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from .dreambench import Evaluator, mean_pairwise

DEFAULT_PROMPTS = ["{} on the beach", "{} in the snow", "a red {}", "{} with a city in the background"]
METRICS = ("clip_i+clip_t", "clip_i", "dino", "clip_t", "dino+clip_t")


class Validator:
    def __init__(self, evaluator: Evaluator, out: Path, metric: str, prompts: list[str], real_images, class_word: str | None,
                 images_per_prompt: int = 2, steps: int = 20):
        self.ev, self.out, self.metric = evaluator, Path(out), metric
        self.prompts, self.n, self.steps = prompts or DEFAULT_PROMPTS, images_per_prompt, steps
        self.real_dino, self.real_clip = evaluator.embed(real_images)
        self.class_word = class_word
        self.path = self.out / "validation.json"
        self.curve: list[dict] = json.loads(self.path.read_text())["curve"] if self.path.is_file() else []

    def score(self, pipe, instance_prompt: str, identifier: str | None) -> dict[str, float]:
        from ..generate import generate_images

        prompts = [p.replace("{}", instance_prompt) for p in self.prompts]
        plain = [p.replace(identifier + " ", "") if identifier else p for p in prompts]  # CLIP-T without the identifier
        all_p = [p for p in prompts for _ in range(self.n)]
        with torch.no_grad():
            imgs = generate_images(pipe, all_p, list(range(len(all_p))), steps=self.steps)
        d, c = self.ev.embed(imgs)
        t = self.ev.text(plain).repeat_interleave(self.n, 0)
        m = {"dino": mean_pairwise(d, self.real_dino), "clip_i": mean_pairwise(c, self.real_clip), "clip_t": float((c * t).sum(-1).mean())}
        m["clip_i+clip_t"] = m["clip_i"] + m["clip_t"]
        m["dino+clip_t"] = m["dino"] + m["clip_t"]
        return m

    def __call__(self, step: int, pipe, instance_prompt: str, identifier: str | None, save_best: Callable[[Path, dict], None]) -> None:
        if any(e["step"] == step for e in self.curve):
            return
        unet_training = pipe.unet.training
        pipe.unet.eval()
        m = self.score(pipe, instance_prompt, identifier)
        pipe.unet.train(unet_training)
        best = max((e[self.metric] for e in self.curve), default=float("-inf"))
        self.curve.append({"step": step, **m})
        if m[self.metric] > best:
            save_best(self.out / "best.safetensors", {"best_step": step, "best_metric": self.metric, "best_value": m[self.metric]})
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"metric": self.metric, "curve": self.curve}, indent=1))
        tmp.replace(self.path)
