"""Apprentice training: ε-prediction on a cluster's target given its demonstrations.

Trainable: the added demo-attention layers (`Apprentice.demo_layers`), optionally the whole UNet at
a lower learning rate (`unet_lr > 0`; the demo encoder shares those weights, so it is tuned too).
VAE and text encoder stay frozen. Checkpoints (`<out>/checkpoint.pt`) are written atomically
(temp file + fsync + rename) every `save_every` steps and hold adapter (+UNet) weights, optimizer
state, step and RNG state, so a killed run resumes where it stopped with `--resume`.

Data: ground-truth clusters of the world renderer (`data.SpriteClusters`), optionally mixed with
CLIP-filtered expert triples (`--experts DIR` from `personify incontext experts`): each batch row is
an expert triple with probability `expert_ratio`. The shards in use are pinned in
`<out>/expert_shards.json`, so a resumed run draws from the same triples even while experts are
still being written.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ModelSource, check
from ..artifact import atomic_save_safetensors, atomic_write
from ..errors import PersonifyError
from ..sampling import encode_prompts
from .generate import ADAPTER_FORMAT, MAX_DEMOS, MIN_DEMOS
from .model import Apprentice, DemoContext


@dataclass
class Batch:
    demo_latents: torch.Tensor  # (B, K, C, h, w), VAE-scaled
    demo_text: torch.Tensor  # (B, K, L, D)
    target_latents: torch.Tensor  # (B, C, h, w), VAE-scaled
    target_text: torch.Tensor  # (B, L, D)


def _pixels(images: np.ndarray, size: int) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)).float().permute(0, 3, 1, 2) / 127.5 - 1
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp(-1, 1)
    return x  # (N, 3, size, size) in [-1, 1]


@torch.no_grad()
def images_to_latents(pipe, images: np.ndarray | list[np.ndarray]) -> torch.Tensor:
    """uint8 (N, H, W, 3), or a list of such arrays of different sizes (world renders and expert
    images), -> VAE-scaled posterior means (N, C, h, w) at the pipeline's resolution."""
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    x = torch.cat([_pixels(a, size) for a in (images if isinstance(images, list) else [images])])
    vae = pipe.vae
    return vae.encode(x.to(vae.device, vae.dtype)).latent_dist.mean * vae.config.scaling_factor


class LatentCache:
    """Memo of the VAE latents of whole clusters, keyed by the content of their images (the VAE
    encoder dominates a CPU training step on the mini model; clusters repeat every epoch)."""

    def __init__(self, max_bytes: int = 1 << 30):
        self.items: dict[bytes, torch.Tensor] = {}
        self.max_bytes, self.bytes, self.hits, self.misses = int(max_bytes), 0, 0, 0

    def get(self, key: bytes, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        z = self.items.get(key)
        if z is not None:
            self.hits += 1
            return z
        self.misses += 1
        z = make()
        size = z.numel() * z.element_size()
        if self.bytes + size <= self.max_bytes:
            self.items[key] = z
            self.bytes += size
        return z


def cluster_latents(pipe, cluster) -> torch.Tensor:
    """(K + 1, C, h, w): the K demos then the target, encoded as one VAE batch, so the result does not
    depend on which other clusters share the training batch (a cached and a fresh encoding agree bitwise)."""
    cache = getattr(pipe, "personify_latent_cache", None)
    make = lambda: images_to_latents(pipe, [cluster.demo_images, cluster.target_image[None]])  # noqa: E731
    if cache is None:
        return make()
    h = hashlib.blake2b(digest_size=20)
    for a in (cluster.demo_images, cluster.target_image):
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return cache.get(h.digest(), make)


@torch.no_grad()
def make_batch(pipe, clusters) -> Batch:
    """Clusters (`data.SpriteClusters`, `data.ExpertTriples`) -> tensors; all clusters must have the same K.
    With `pipe.personify_latent_cache` (a `LatentCache`, set by `main`) the latents are memoized."""
    k = len(clusters[0].demo_captions)
    lat = [cluster_latents(pipe, c) for c in clusters]
    demos = torch.cat([z[:k] for z in lat])
    target = torch.stack([z[k] for z in lat])
    caps = [cap for c in clusters for cap in c.demo_captions]
    dtext = encode_prompts(pipe.tokenizer, pipe.text_encoder, caps)
    ttext = encode_prompts(pipe.tokenizer, pipe.text_encoder, [c.target_caption for c in clusters])
    b = len(clusters)
    return Batch(demos.view(b, k, *demos.shape[1:]), dtext.view(b, k, *dtext.shape[1:]), target, ttext)


def encode_batch_demos(app: Apprentice, demo_latents: torch.Tensor, demo_text: torch.Tensor) -> DemoContext:
    """(B, K, ...) demos -> one DemoContext with per-row tokens (B, K*h_l*w_l, C_l)."""
    ctxs = [app.encode_demos(z, t) for z, t in zip(demo_latents, demo_text)]
    return DemoContext([torch.cat(ts) for ts in zip(*(c.tokens for c in ctxs))], demo_latents.shape[1])


def loss_on(app: Apprentice, scheduler, batch: Batch, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard ε-prediction MSE on the target latents, the UNet attending to the cluster's demos."""
    dev = app.unet.device
    z0 = batch.target_latents.to(dev)
    noise = torch.randn(z0.shape, generator=generator).to(dev, z0.dtype)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (z0.shape[0],), generator=generator).to(dev)
    zt = scheduler.add_noise(z0, noise, t)
    ctx = encode_batch_demos(app, batch.demo_latents.to(dev), batch.demo_text.to(dev))
    pred = app(zt, t, batch.target_text.to(dev), ctx)
    if scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(z0, noise, t)
    else:
        target = noise
    return F.mse_loss(pred.float(), target.float())


def make_optimizer(app: Apprentice, lr: float, unet_lr: float = 0.0) -> torch.optim.Optimizer:
    app.unet.requires_grad_(unet_lr > 0)
    app.demo_layers.requires_grad_(True)
    groups = [{"params": list(app.adapter_parameters()), "lr": lr}]
    if unet_lr > 0:
        groups.append({"params": list(app.unet.parameters()), "lr": unet_lr})
    return torch.optim.AdamW(groups, weight_decay=0.0)


@torch.enable_grad()  # also under a caller's no_grad (notebooks)
def train_steps(app: Apprentice, scheduler, next_batch: Callable[[int], Batch], opt: torch.optim.Optimizer, start: int, stop: int,
                generator: torch.Generator, on_step: Callable[[int, float], None] | None = None, grad_clip: float = 1.0) -> list[float]:
    losses = []
    params = [p for g in opt.param_groups for p in g["params"]]
    for step in range(start, stop):
        loss = loss_on(app, scheduler, next_batch(step), generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        value = loss.item()
        losses.append(value)
        if on_step is not None:
            on_step(step + 1, value)
    return losses


def save_adapter(app: Apprentice, path: Path, pipe, extra: dict | None = None) -> None:
    meta = {"format": ADAPTER_FORMAT, "base_model_hash": getattr(pipe, "personify_base_hash", ""), "t_demo": app.t_demo,
            "demo_noise_seed": app.demo_noise_seed, **(extra or {})}
    atomic_save_safetensors(app.adapter_state_dict(), Path(path), {"personify": json.dumps(meta)})


def init_adapter(app: Apprentice, path: Path) -> None:
    """Load adapter weights from an apprentice file whatever base model it was trained on (the base
    model check of `load_apprentice` is for generating, not for a warm start); shapes must fit."""
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (OSError, ValueError) as e:
        raise PersonifyError(f"{path}: cannot read apprentice weights for --init ({str(e)[:80]})") from None
    try:
        app.load_adapter_state_dict(state)
    except PersonifyError as e:
        raise PersonifyError(f"{path}: --init {e}") from None


def save_checkpoint(path: Path, app: Apprentice, opt, step: int, generator: torch.Generator, full_unet: bool, cfg: dict) -> None:
    state = {"step": step, "adapter": app.adapter_state_dict(), "optimizer": opt.state_dict(), "generator": generator.get_state(),
             "config": cfg, "unet": {k: v.cpu() for k, v in app.unet.state_dict().items()} if full_unet else None}
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path, app: Apprentice, opt, generator: torch.Generator) -> int:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise PersonifyError(f"{path}: unreadable checkpoint ({str(e)[:80]}); delete it to start over") from None
    app.load_adapter_state_dict(state["adapter"])
    if state.get("unet") is not None:
        app.unet.load_state_dict(state["unet"])
    opt.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    return int(state["step"])


@dataclass
class ApprenticeTrainConfig(ModelSource):
    out: str = field(default="runs/apprentice", metadata={"help": "output folder (checkpoint.pt, apprentice.safetensors, log.jsonl)"})
    world_cache: str | None = field(default=None, metadata={"help": "emoji world cache folder (default $PERSONIFY_WORLD or ~/.cache/personify/world)"})
    steps: int = field(default=2000, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=8, metadata={"help": "clusters per step"})
    n_demos: int = field(default=3, metadata={"help": f"demonstrations per cluster ({MIN_DEMOS}-{MAX_DEMOS}; SuTI uses 3-5)"})
    n_clusters: int = field(default=0, metadata={"help": "use only the first N subjects (0: all pretraining sprites)"})
    lr: float = field(default=1e-4, metadata={"help": "learning rate of the added demo-attention layers"})
    unet_lr: float = field(default=0.0, metadata={"help": "learning rate of the whole UNet (0: UNet frozen)"})
    t_demo: int = field(default=50, metadata={"help": "fixed noise level of the demonstrations (0: clean)"})
    experts: str | None = field(default=None, metadata={"help": "folder of expert shards (`personify incontext experts`) to mix in"})
    generic_p: float = field(default=0.0, metadata={"help": "fraction of ground-truth clusters captioned with a generic word ('animal'/'object') instead of the sprite's class word, so that only the demos say which sprite it is (data.SpriteClusters)"})
    expert_ratio: float = field(default=0.5, metadata={"help": "with --experts: fraction of batch rows that are expert triples (0: ground truth only)"})
    seed: int = field(default=0, metadata={"help": "random seed (clusters, noise, timesteps)"})
    save_every: int = field(default=200, metadata={"help": "checkpoint every N steps"})
    resume: bool = field(default=True, metadata={"help": "resume from <out>/checkpoint.pt when present"})
    init: str | None = field(default=None, metadata={"help": "start the demo-attention layers from this apprentice.safetensors (e.g. one trained on an earlier version of the base model) instead of zero; ignored when resuming"})
    device: str = field(default="cuda" if torch.cuda.is_available() else "cpu", metadata={"help": "torch device"})

    def __post_init__(self) -> None:
        check(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(MIN_DEMOS <= self.n_demos <= MAX_DEMOS, f"n_demos must be in {MIN_DEMOS}..{MAX_DEMOS}, got {self.n_demos}")
        check(self.n_clusters >= 0, f"n_clusters must be >= 0, got {self.n_clusters}")
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(self.unet_lr >= 0, f"unet_lr must be >= 0, got {self.unet_lr}")
        check(0 <= self.t_demo < 1000, f"t_demo must be in 0..999, got {self.t_demo}")
        check(self.save_every >= 1, f"save_every must be >= 1, got {self.save_every}")
        check(0 <= self.expert_ratio <= 1, f"expert_ratio must be in [0, 1], got {self.expert_ratio}")
        check(0 <= self.generic_p <= 1, f"generic_p must be in [0, 1], got {self.generic_p}")


def expert_triples(cfg: ApprenticeTrainConfig, out: Path, resumed: bool):
    """The expert triples of `cfg.experts`; a resumed run reads the shard list it started with."""
    from .data import ExpertTriples

    pinned = out / "expert_shards.json"
    names = json.loads(pinned.read_text()) if resumed and pinned.is_file() else None
    triples = ExpertTriples(cfg.experts, cfg.n_demos, names)
    if names is None:
        atomic_write(pinned, lambda tmp: tmp.write_text(json.dumps(triples.names)))
    return triples


def main(cfg: ApprenticeTrainConfig, clusters=None) -> Path:
    """Train and write `<out>/apprentice.safetensors`; returns its path. `clusters` overrides the world data."""
    from .data import SpriteClusters

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = cfg.load_pipeline()
    pipe.to(cfg.device)
    pipe.vae.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    pipe.personify_latent_cache = LatentCache()
    clusters = clusters if clusters is not None else SpriteClusters(cfg.world_cache, cfg.n_demos, cfg.seed, generic_p=cfg.generic_p)
    n = min(cfg.n_clusters or len(clusters), len(clusters))
    app = Apprentice(pipe.unet, pipe.scheduler.alphas_cumprod, t_demo=cfg.t_demo)
    opt = make_optimizer(app, cfg.lr, cfg.unet_lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    ckpt = out / "checkpoint.pt"
    start = load_checkpoint(ckpt, app, opt, gen) if cfg.resume and ckpt.is_file() else 0
    if start == 0 and cfg.init:
        init_adapter(app, Path(cfg.init))
    app.train()

    experts = expert_triples(cfg, out, resumed=start > 0) if cfg.experts else None

    def next_batch(step: int) -> Batch:
        rng = np.random.default_rng([cfg.seed, step])  # batch depends on the step only: resumes reproduce
        idx = rng.choice(n, size=cfg.batch_size, replace=n < cfg.batch_size)
        if experts is None:
            return make_batch(pipe, [clusters[int(i)] for i in idx])
        # drawn after the ground-truth picks, so runs without experts keep their old batches
        use, pick = rng.random(cfg.batch_size) < cfg.expert_ratio, rng.integers(len(experts), size=cfg.batch_size)
        return make_batch(pipe, [experts[int(j)] if u else clusters[int(i)] for i, u, j in zip(idx, use, pick)])

    log = open(out / "log.jsonl", "a")
    t0 = time.time()

    def on_step(step: int, loss: float) -> None:
        log.write(json.dumps({"step": step, "loss": loss, "s": round(time.time() - t0, 2)}) + "\n")
        if step % cfg.save_every == 0 or step == cfg.steps:
            log.flush()
            save_checkpoint(ckpt, app, opt, step, gen, cfg.unet_lr > 0, asdict(cfg))

    try:
        train_steps(app, pipe.scheduler, next_batch, opt, start, cfg.steps, gen, on_step)
    finally:
        log.close()
    path = out / "apprentice.safetensors"
    extra = {"steps": cfg.steps, "n_demos": cfg.n_demos}
    if cfg.unet_lr > 0:
    
        atomic_save_safetensors(app.unet.state_dict(), out / "unet.safetensors")
        extra["unet_file"] = "unet.safetensors"
    save_adapter(app, path, pipe, extra)
    return path
