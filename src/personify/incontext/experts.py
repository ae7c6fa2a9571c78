"""Per-subject experts, SuTI's data source: one LoRA per subject, its images in new contexts, CLIP-filtered.

One expert = one cluster (K demo renders of one subject, `data.SpriteClusters`, or any `Cluster`):

1. train a LoRA DreamBooth concept on the K demos with personify's `lora` method (the shared
   Trainer, prior preservation included). Each demo keeps its own caption with the identifier put
   before the class word ("a photo of a [V] dog on the beach"), so [V] binds to the subject, not the scene;
2. generate `images_per_prompt` images for each of `n_prompts` new contexts: world background phrases
   the demos were not rendered in ("a [V] dog in the snow");
3. score every image with CLIP: CLIP-I = mean cosine to the demos, CLIP-T = cosine to the prompt
   without the identifier (what the apprentice will read); keep the best `keep_fraction` by
   CLIP-I + CLIP-T (SuTI keeps the top 20-30 %), optionally only those above absolute gates;
4. write the kept (demos, prompt, image) triples as one shard `<out>/<subject>_seed<seed>.npz`
   (temp file + fsync + rename, so a killed worker never leaves half a shard; an existing shard is skipped).

The fan-out over subjects with Ray is `incontext/fanout.py`; the apprentice reads shards through
`data.ExpertTriples`.
"""
from __future__ import annotations

import contextlib
import json
import re
import shutil
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..config import ModelSource, check, to_dict
from ..sampling import SAMPLERS
from .data import Cluster
from .generate import MAX_DEMOS, MIN_DEMOS

N_BACKGROUNDS = 23  # world.backgrounds.BACKGROUNDS; demos may also use the plain background


@dataclass
class ExpertsConfig(ModelSource):
    out: str = field(default="runs/experts", metadata={"help": "shard folder (<subject>_seed<seed>.npz, experts.jsonl, experts.json); shared by all Ray nodes"})
    world_cache: str | None = field(default=None, metadata={"help": "emoji world cache folder (default $PERSONIFY_WORLD or ~/.cache/personify/world)"})
    n_demos: int = field(default=3, metadata={"help": f"demonstrations per subject ({MIN_DEMOS}-{MAX_DEMOS}); the expert trains on them"})
    n_subjects: int = field(default=0, metadata={"help": "only the first N subjects (0: all pretraining sprites)"})
    seed: int = field(default=0, metadata={"help": "seed of the clusters, the LoRA runs, prompts and sampling noise"})
    lora_steps: int = field(default=200, metadata={"help": "LoRA optimizer steps per expert"})
    lora_rank: int = field(default=4, metadata={"help": "LoRA rank"})
    lora_lr: float = field(default=1e-4, metadata={"help": "LoRA learning rate"})
    prior_weight: float = field(default=1.0, metadata={"help": "prior-preservation weight (0: off); class images are cached per class word"})
    num_class_images: int = field(default=50, metadata={"help": "class images for prior preservation"})
    lora_options: dict = field(default_factory=dict, metadata={"help": "further `personify train` options for the experts (config file only)", "cli": False})
    n_prompts: int = field(default=8, metadata={"help": "new contexts per subject (world backgrounds the demos do not show)"})
    images_per_prompt: int = field(default=4, metadata={"help": "images generated per context prompt"})
    steps: int = field(default=25, metadata={"help": "sampling steps"})
    guidance: float = field(default=7.5, metadata={"help": "classifier-free guidance scale"})
    sampler: str = field(default="ddim", metadata={"help": f"one of {', '.join(SAMPLERS)}"})
    keep_fraction: float = field(default=0.25, metadata={"help": "keep this best fraction of each expert's images by CLIP-I + CLIP-T (SuTI: 0.2-0.3)"})
    min_clip_i: float = field(default=-1.0, metadata={"help": "also drop images with CLIP-I to the demos below this (-1: off)"})
    min_clip_t: float = field(default=-1.0, metadata={"help": "also drop images with CLIP-T to the prompt below this (-1: off)"})
    clip: str | None = field(default=None, metadata={"help": "CLIP folder for the filter (default: the mini evaluator; 'tiny': random, tests)"})
    ray_address: str | None = field(default=None, metadata={"help": "Ray cluster to join ('auto', 'ray://head:10001'); unset: start a local one"})
    local_cpus: int = field(default=0, metadata={"help": "CPUs of the local Ray cluster (0: all); ignored with --ray-address"})
    num_cpus: float = field(default=1.0, metadata={"help": "CPUs reserved per expert task (@ray.remote num_cpus)"})
    num_gpus: float = field(default=0.0, metadata={"help": "GPUs per expert task (@ray.remote num_gpus; 0.125: 8 experts share a GPU)"})
    max_attempts: int = field(default=3, metadata={"help": "tries per subject in one run (a raising task or a dead worker counts)"})
    keep_work: bool = field(default=False, metadata={"help": "keep each expert's LoRA run folder (<out>/work/...)"})

    def __post_init__(self) -> None:
        check(MIN_DEMOS <= self.n_demos <= MAX_DEMOS, f"n_demos must be in {MIN_DEMOS}..{MAX_DEMOS}, got {self.n_demos}")
        check(self.n_subjects >= 0, f"n_subjects must be >= 0, got {self.n_subjects}")
        check(self.lora_steps >= 1 and self.lora_rank >= 1, "lora_steps and lora_rank must be >= 1")
        check(self.lora_lr > 0, f"lora_lr must be > 0, got {self.lora_lr}")
        check(self.prior_weight >= 0, f"prior_weight must be >= 0, got {self.prior_weight}")
        check(self.num_class_images >= 1, f"num_class_images must be >= 1, got {self.num_class_images}")
        check(1 <= self.n_prompts <= N_BACKGROUNDS - self.n_demos, f"n_prompts must be in 1..{N_BACKGROUNDS - self.n_demos} (backgrounds the demos do not use), got {self.n_prompts}")
        check(self.images_per_prompt >= 1 and self.steps >= 1, "images_per_prompt and steps must be >= 1")
        check(self.guidance >= 1.0, f"guidance must be >= 1, got {self.guidance}")
        check(self.sampler in SAMPLERS, f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        check(0 < self.keep_fraction <= 1, f"keep_fraction must be in (0, 1], got {self.keep_fraction}")
        check(-1 <= self.min_clip_i <= 1 and -1 <= self.min_clip_t <= 1, "min_clip_i and min_clip_t must be in [-1, 1]")
        check(self.local_cpus >= 0 and self.num_cpus >= 0 and self.num_gpus >= 0, "local_cpus, num_cpus and num_gpus must be >= 0")
        check(self.max_attempts >= 1, f"max_attempts must be >= 1, got {self.max_attempts}")


def shard_path(out: str | Path, subject: str, seed: int) -> Path:
    return Path(out) / f"{subject}_seed{seed}.npz"


def with_identifier(caption: str, word: str) -> str:
    """'a photo of a dog on the beach' -> 'a photo of a [V] dog on the beach' (DreamBooth's sidecar
    syntax); unchanged when the word is missing, and the Trainer then uses the instance prompt."""
    return re.sub(rf"\b{re.escape(word)}\b", f"[V] {word}", caption, count=1)


def select_top(score: np.ndarray, fraction: float, passed: np.ndarray | None = None) -> np.ndarray:
    """Indices of the best `fraction` of all N images (at least one), best first; with `passed`
    (bool (N,)), only those qualify, so fewer (or none) may be kept."""
    order = np.argsort(-score, kind="stable")
    if passed is not None:
        order = order[passed[order]]
    return order[: max(1, round(fraction * len(score)))]


def load_scorer(spec: str | None):
    from ..evaluation.encoders import load_clip, tiny_clip
    from ..evaluation.run import default_evaluator_path

    return tiny_clip() if spec == "tiny" else load_clip(spec or default_evaluator_path("clip"))


@torch.no_grad()
def clip_scores(clip, images: np.ndarray, demos: np.ndarray, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, H, W, 3), demos (K, H', W', 3) -> CLIP-I (N,): mean cosine to the K demos,
    CLIP-T (N,): cosine to the image's own prompt."""
    dev = next(clip.parameters()).device

    def embed(a: np.ndarray) -> torch.Tensor:  # (B, D), L2-normalised
        return clip.image(torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float().div(255).to(dev))

    e, d, t = embed(images), embed(demos), clip.text(prompts)
    return (e @ d.T).mean(1).float().cpu().numpy(), (e * t).sum(-1).float().cpu().numpy()


def context_prompts(cluster: Cluster, n: int, rng: np.random.Generator) -> list[tuple[int, str]]:
    """`n` world backgrounds none of the demos was rendered in -> [(background id, phrase)]."""
    from ..world.backgrounds import BACKGROUNDS

    seen = set(cluster.backgrounds[: len(cluster.demo_captions)])
    free = [b for b in range(len(BACKGROUNDS)) if b not in seen]
    return [(int(b), BACKGROUNDS[b].phrase) for b in rng.choice(free, size=min(n, len(free)), replace=False)]


def train_expert(cluster: Cluster, work: Path, cfg: ExpertsConfig):
    """LoRA on the demos (resumes a killed attempt from its checkpoints) -> (pipeline with the LoRA on, concept meta)."""
    import personify
    from ..artifact import read_concept

    demos = work / "demos"
    demos.mkdir(parents=True, exist_ok=True)
    for k, (img, cap) in enumerate(zip(cluster.demo_images, cluster.demo_captions)):
        Image.fromarray(img).save(demos / f"{k:02d}.png")
        (demos / f"{k:02d}.txt").write_text(with_identifier(cap, cluster.word))
    opts = {"steps": cfg.lora_steps, "rank": cfg.lora_rank, "learning_rate": cfg.lora_lr, "prior_weight": cfg.prior_weight,
            "num_class_images": cfg.num_class_images, "seed": cfg.seed, "resume": True, "progress": False, **cfg.lora_options}
    pipe = cfg.load_pipeline()  # fresh per expert: LoRA adapters on one pipeline all stay active
    art = personify.train("lora", str(demos), pipe=pipe, class_word=cluster.word, out=str(work / "lora"), **opts)
    return pipe, read_concept(art)[1]


def make_shard(cluster: Cluster, subject: str, cfg: ExpertsConfig) -> dict:
    """Train, generate, filter and write one subject's shard; returns a summary (skips an existing shard)."""
    from ..generate import generate_images
    from ..world.captions import noun_phrase

    path = shard_path(cfg.out, subject, cfg.seed)
    if path.is_file():
        return {"subject": subject, "shard": path.name, "skipped": True}
    work = Path(cfg.out) / "work" / path.stem
    pipe, meta = train_expert(cluster, work, cfg)
    rng = np.random.default_rng([cfg.seed, zlib.crc32(subject.encode())])
    contexts = [c for c in context_prompts(cluster, cfg.n_prompts, rng) for _ in range(cfg.images_per_prompt)]
    seeds = [int(s) for s in rng.integers(0, 2**31, len(contexts))]
    with torch.no_grad():  # the expert reads "a sks dog on the beach"; CLIP and the apprentice read "a dog on the beach"
        pil = generate_images(pipe, [f"{meta['instance_prompt']} {p}" for _, p in contexts], seeds, cfg.steps, cfg.guidance, cfg.sampler)
    images = np.stack([np.asarray(im) for im in pil])  # (N, S, S, 3) uint8
    prompts = [f"{noun_phrase(cluster.word)} {p}" for _, p in contexts]
    clip = load_scorer(cfg.clip).to(pipe.unet.device)
    clip_i, clip_t = clip_scores(clip, images, cluster.demo_images, prompts)
    kept = select_top(clip_i + clip_t, cfg.keep_fraction, (clip_i >= cfg.min_clip_i) & (clip_t >= cfg.min_clip_t))
    info = {"subject": subject, "seed": cfg.seed, "word": cluster.word, "sprite": int(cluster.sprite), "identifier": meta["tokens"][0],
            "model": meta.get("base_model"), "base_model_hash": meta.get("base_model_hash"), "expert": to_dict(cfg)}
    write_shard(path, {
        "demo_images": cluster.demo_images, "demo_captions": np.array(cluster.demo_captions),
        "demo_backgrounds": np.array(cluster.backgrounds[: len(cluster.demo_captions)], np.int64),
        "images": images[kept], "prompts": np.array(prompts)[kept], "backgrounds": np.array([b for b, _ in contexts], np.int64)[kept],
        "kept": kept.astype(np.int64), "clip_i": clip_i, "clip_t": clip_t, "generated_prompts": np.array(prompts),
        "meta": np.array(json.dumps(info, default=str)),
    })
    if not cfg.keep_work:
        shutil.rmtree(work, ignore_errors=True)
        with contextlib.suppress(OSError):
            work.parent.rmdir()  # <out>/work, once no other expert is running
    return {"subject": subject, "shard": path.name, "generated": len(images), "kept": len(kept),
            "clip_i_kept": float(clip_i[kept].mean()) if len(kept) else None, "clip_t_kept": float(clip_t[kept].mean()) if len(kept) else None}


def write_shard(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez, atomically (`artifact.atomic_write`: per-process temp file, fsync, rename)."""
    from ..artifact import atomic_write

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a path
            np.savez(f, **arrays)

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, write)
