"""SeedSelect (Samuel et al., AAAI 2024): optimize the initial noise z_T, not the model.

    z_T* = argmin_z  λ · L_sem(z) + (1 − λ) · L_app(z)

through a whole differentiable DDIM run (model, VAE and CLIP frozen):

- L_sem: 1 − cos(CLIP(decode(x̂0_i)), c̄) on the predicted clean latents x̂0_i of the last k = 3
  denoising steps, weighted 0.05 / 0.25 / 0.7 (the last step weighs most), with c̄ the mean CLIP
  image embedding of the 3-5 reference images.
- L_app: MSE between the final latent z_0 and the mean VAE latent of the references (both scaled by
  the VAE's scaling_factor, i.e. in the space the UNet works in).
- λ = 10/11: the semantic term weighs 10x the appearance term (λ / (1 − λ) = 10).

AdamW on z_T, lr 0.1 for the first 3 iterations, then 0.01; 30 iterations; 20 DDIM steps,
guidance 7.5. Each step is gradient-checkpointed (`sample(..., checkpoint_steps=True)`), so memory is
that of one step, not of the whole run.

Batching: AdamW is element-wise and the loss is a *sum* of per-image losses that depend on their own
z only, so optimizing B seeds in one batch is B independent optimizations done at once.

Norm: after each AdamW step every z is rescaled to its starting norm ‖z_T‖ (≈ √d for a Gaussian
sample), keeping it on the Gaussian shell the model was trained on; AdamW's weight decay and large
early steps would otherwise shrink or grow it (set `renormalize=False` to turn this off).

Bad numbers: if any image's loss (or z's gradient) is not finite, optimization stops with a warning
and the last seeds whose loss was finite are returned.
"""
from __future__ import annotations

import math
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..errors import PersonifyError
from ..sampling import SAMPLERS, cfg_denoiser, decode, encode_prompts, make_scheduler, sample, unet_denoiser

LAST_STEP_WEIGHTS = (0.05, 0.25, 0.7)  # predicted clean images of the last 3 steps, oldest first
SEMANTIC_WEIGHT = 10.0 / 11.0  # λ: semantic / appearance = λ / (1 − λ) = 10


@dataclass
class Settings:
    """Optimization hyper-parameters (defaults: the SeedSelect reference code)."""

    iterations: int = 30
    lr: float = 0.1
    lr_low: float = 0.01
    lr_drop_after: int = 3  # iterations at `lr`, then `lr_low`
    weight_decay: float = 0.01  # torch AdamW default
    steps: int = 20
    guidance: float = 7.5
    sampler: str = "ddim"
    semantic_weight: float = SEMANTIC_WEIGHT
    last_step_weights: tuple[float, ...] = LAST_STEP_WEIGHTS
    temperature: float = 0.1  # contrastive (multi-class) semantic loss only
    renormalize: bool = True
    checkpoint: bool = True
    batch_size: int = 8  # seeds optimized together (memory); results do not depend on it

    def __post_init__(self) -> None:
        from ..config import check

        check(self.iterations >= 0, f"iterations must be >= 0, got {self.iterations}")
        check(self.lr > 0 and self.lr_low > 0, "lr and lr_low must be > 0")
        check(self.lr_drop_after >= 0, "lr_drop_after must be >= 0")
        check(self.weight_decay >= 0, "weight_decay must be >= 0")
        check(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        check(self.guidance >= 1.0, f"guidance must be >= 1, got {self.guidance}")
        check(self.sampler in SAMPLERS, f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        check(0.0 <= self.semantic_weight <= 1.0, f"semantic_weight must be in [0, 1], got {self.semantic_weight}")
        check(len(self.last_step_weights) >= 1 and all(w >= 0 for w in self.last_step_weights) and sum(self.last_step_weights) > 0,
              "last_step_weights must be non-negative with a positive sum")
        check(self.temperature > 0, "temperature must be > 0")
        check(self.batch_size >= 1, "batch_size must be >= 1")

    def lr_at(self, it: int) -> float:
        return self.lr if it < self.lr_drop_after else self.lr_low

    def step_weights(self) -> list[float]:
        """Weights of the last k = min(len(weights), steps) steps, renormalized to sum 1."""
        w = list(self.last_step_weights)[-min(len(self.last_step_weights), self.steps):]
        s = sum(w)
        return [x / s for x in w]


# ---------------------------------------------------------------------------------------------
# references


@dataclass
class References:
    """Per-image CLIP embeddings and VAE latents of the reference images; centroids are their means."""

    clip: torch.Tensor  # (N, D), L2-normalized
    latents: torch.Tensor  # (N, C, h, w), posterior means × scaling_factor
    paths: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.clip)

    def centroid(self, idx: Sequence[int] | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(D,) normalized mean CLIP embedding and (C, h, w) mean latent of the images `idx` (all by default)."""
        c, z = (self.clip, self.latents) if idx is None else (self.clip[torch.as_tensor(idx)], self.latents[torch.as_tensor(idx)])
        return F.normalize(c.mean(0), dim=-1), z.mean(0)


def pipe_resolution(pipe) -> int:
    return pipe.unet.config.sample_size * pipe.vae_scale_factor


def load_reference_pixels(images, resolution: int) -> tuple[torch.Tensor, list[str]]:
    """A folder, a list of paths or a list of PIL images -> (N, 3, R, R) in [0, 1] and their names.

    Mixed sizes and modes (RGBA, palette, greyscale, 16-bit, EXIF-rotated...) go through `load_rgb`
    and a center `resize_crop`, exactly as training data does.
    """
    from PIL import Image

    from ..data.dataset import SubjectImages
    from ..data.images import load_rgb, resize_crop, to_rgb, to_tensor

    if isinstance(images, (str, Path)):
        subj = SubjectImages(images, resolution, subject=False)  # counts are checked below
        pil, names = [it.image for it in subj.items], [str(it.path) for it in subj.items]
    else:
        pil, names = [], []
        for i, im in enumerate(images):
            if isinstance(im, Image.Image):
                pil.append(resize_crop(to_rgb(im), resolution))
                names.append(f"<image {i}>")
            else:
                pil.append(resize_crop(load_rgb(Path(im), min_side=8, target=resolution), resolution))
                names.append(str(im))
    if not pil:
        raise PersonifyError("SeedSelect needs at least 1 reference image (3-5 recommended)")
    x = torch.stack([to_tensor(im) for im in pil]) / 2 + 0.5  # [-1, 1] -> [0, 1]
    return x, names


@torch.no_grad()
def encode_references(pipe, clip, images, resolution: int | None = None) -> References:
    """CLIP embeddings and scaled VAE latent means of the reference images (see `load_reference_pixels`)."""
    from ..data.dataset import encode_latents

    x, names = load_reference_pixels(images, resolution or pipe_resolution(pipe))
    if len(x) == 1:
        warnings.warn(
            f"SeedSelect with 1 reference image ({names[0]}): it works, but the targets are that one image and "
            "bootstrap subsets cannot differ (only the jitter diversifies); 3-5 references are recommended"
        )
    emb = torch.cat([clip.image(x[i : i + 16]).float().cpu() for i in range(0, len(x), 16)])
    mean, _ = encode_latents(pipe.vae, x * 2 - 1)
    return References(emb, mean * pipe.vae.config.scaling_factor, names)


# ---------------------------------------------------------------------------------------------
# loss and optimization


@contextmanager
def frozen(*modules):
    """requires_grad False on every parameter for the duration, restored afterwards."""
    saved = [(p, p.requires_grad) for m in modules if hasattr(m, "parameters") for p in m.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, r in saved:
            p.requires_grad_(r)


@dataclass
class Targets:
    """What each image in a batch is pulled toward.

    Plain SeedSelect: `clip` (B, D) and `latents` (B, C, h, w) per image. Contrastive (several
    classes): additionally `centroids` (K, D) of all classes and `labels` (B,) = each image's class;
    the semantic loss is then an InfoNCE over the class centroids.
    """

    clip: torch.Tensor
    latents: torch.Tensor
    centroids: torch.Tensor | None = None
    labels: torch.Tensor | None = None

    def take(self, sl: slice) -> "Targets":
        lab = self.labels[sl] if self.labels is not None else None
        return Targets(self.clip[sl], self.latents[sl], self.centroids, lab)


class SeedLoss:
    """The SeedSelect loss of a batch of seeds z (B, C, h, w) -> per-image losses (B,) (and parts)."""

    def __init__(self, pipe, clip, prompts: list[str], s: Settings):
        self.pipe, self.clip, self.s = pipe, clip, s
        dev, dtype = pipe.unet.device, pipe.unet.dtype
        with torch.no_grad():
            uncond = encode_prompts(pipe.tokenizer, pipe.text_encoder, [""]).to(dtype)
            self.cond = encode_prompts(pipe.tokenizer, pipe.text_encoder, prompts).to(dtype)
        self.model = cfg_denoiser(unet_denoiser(pipe.unet), uncond, s.guidance)
        self.sched = make_scheduler(s.sampler, pipe.scheduler)
        self.weights = torch.tensor(s.step_weights(), device=dev)
        self.k = len(self.weights)

    def semantic(self, emb: torch.Tensor, t: Targets) -> torch.Tensor:
        """emb (B, D) normalized -> (B,)."""
        if t.centroids is None:
            return 1.0 - F.cosine_similarity(emb, t.clip.to(emb), dim=-1)
        logits = emb @ F.normalize(t.centroids.to(emb), dim=-1).T / self.s.temperature  # (B, K)
        return F.cross_entropy(logits, t.labels.to(emb.device), reduction="none")

    def __call__(self, z: torch.Tensor, t: Targets) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cond = self.cond
        B, steps, k = z.shape[0], self.s.steps, self.k
        x0s: list[torch.Tensor] = []

        def keep(i: int, x_prev: torch.Tensor, x0: torch.Tensor) -> None:
            if i >= steps - k:
                x0s.append(x0)

        z0 = sample(self.model, z, cond, self.sched, steps, callback=keep, checkpoint_steps=self.s.checkpoint)
        self.last_z0 = z0.detach()  # the final latent of this run (what the output image decodes)
        imgs = decode(self.pipe.vae, torch.cat(x0s).to(self.pipe.vae.dtype))  # (k·B, 3, H, W) in [0, 1]
        emb = self.clip.image(imgs).float().view(k, B, -1)
        sem = torch.stack([self.semantic(emb[j], t) for j in range(k)])  # (k, B)
        sem = (self.weights[:, None] * sem).sum(0)
        app = (z0.float() - t.latents.to(z0.device).float()).pow(2).flatten(1).mean(1)  # (B,)
        lam = self.s.semantic_weight
        return lam * sem + (1 - lam) * app, sem.detach(), app.detach()


@dataclass
class OptimResult:
    latents: torch.Tensor  # (B, C, h, w), detached, on CPU
    loss: list[list[float]]  # per iteration, per image (finite evaluations only)
    semantic: list[list[float]]
    appearance: list[list[float]]
    stopped: str | None = None  # why optimization stopped early, if it did
    seconds: float = 0.0


def optimize_seeds(pipe, clip, z_init: torch.Tensor, prompts: list[str], targets: Targets, s: Settings,
                   iterations: int | None = None, log: Callable[[str], None] | None = None) -> OptimResult:
    """Optimize a batch of seeds (B, C, h, w) in chunks of `s.batch_size` (independent per image)."""
    B = len(z_init)
    if len(prompts) != B:
        raise ValueError(f"{len(prompts)} prompts for {B} seeds")
    parts = [_optimize_chunk(pipe, clip, z_init[i : i + s.batch_size], prompts[i : i + s.batch_size],
                             targets.take(slice(i, i + s.batch_size)), s, iterations, log)
             for i in range(0, B, s.batch_size)]
    if len(parts) == 1:
        return parts[0]
    n_it = max(len(p.loss) for p in parts)

    def cat(name: str) -> list[list[float]]:  # a chunk that stopped early repeats its last values
        return [sum((getattr(p, name)[min(i, len(getattr(p, name)) - 1)] if getattr(p, name) else [math.nan] * len(p.latents)
                     for p in parts), []) for i in range(n_it)]

    stops = [p.stopped for p in parts if p.stopped]
    return OptimResult(torch.cat([p.latents for p in parts]), cat("loss"), cat("semantic"), cat("appearance"),
                       "; ".join(stops) or None, sum(p.seconds for p in parts))


@torch.enable_grad()  # the optimization needs gradients even when called under a caller's no_grad
def _optimize_chunk(pipe, clip, z_init, prompts, targets, s: Settings, iterations, log) -> OptimResult:
    t0 = time.perf_counter()
    iterations = s.iterations if iterations is None else iterations
    dev, dtype = pipe.unet.device, pipe.unet.dtype
    with frozen(pipe.unet, pipe.vae, pipe.text_encoder, clip):
        loss_fn = SeedLoss(pipe, clip, prompts, s)
        z = z_init.detach().clone().to(dev, torch.float32).requires_grad_(True)  # fp32 even for fp16 models
        radius = z.detach().flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        opt = torch.optim.AdamW([z], lr=s.lr, weight_decay=s.weight_decay)
        last_good = z.detach().clone()
        hist: tuple[list, list, list] = ([], [], [])
        stopped = None
        for it in range(iterations):
            for g in opt.param_groups:
                g["lr"] = s.lr_at(it)
            loss, sem, app = loss_fn(z.to(dtype), targets)
            if not torch.isfinite(loss).all():
                bad = (~torch.isfinite(loss)).nonzero().flatten().tolist()
                stopped = f"non-finite loss at iteration {it} (image(s) {bad}); kept the seeds of iteration {it - 1 if it else 'start'}"
                break
            last_good = z.detach().clone()
            for h, v in zip(hist, (loss, sem, app)):
                h.append(v.detach().float().cpu().tolist())
            if log:
                log(f"iteration {it + 1}/{iterations}: loss {loss.mean().item():.4f} (semantic {sem.mean().item():.4f}, appearance {app.mean().item():.4f})")
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            if not torch.isfinite(z.grad).all():
                stopped = f"non-finite gradient at iteration {it}; kept the seeds of iteration {it}"
                break
            opt.step()
            if s.renormalize:
                with torch.no_grad():
                    z.mul_(radius / z.flatten(1).norm(dim=1).view(-1, 1, 1, 1).clamp_min(1e-12))
        out = last_good if stopped else z.detach()
        if not torch.isfinite(out).all():  # cannot happen after finite gradients, but never return NaN seeds
            out, stopped = last_good, stopped or "non-finite seeds; kept the last good ones"
    if stopped:
        warnings.warn(f"SeedSelect: {stopped}")
    return OptimResult(out.float().cpu(), *hist, stopped=stopped, seconds=time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------
# the three entry points


@dataclass
class SeedSelectResult:
    latents: torch.Tensor  # (n, C, h, w): the optimized z_T, reusable with generate_images(latents=...)
    prompts: list[str]
    initial: torch.Tensor  # (n, C, h, w): where each optimization started
    runs: list[dict] = field(default_factory=list)  # per optimization run: what, loss history, time
    subsets: list[list[int] | None] = field(default_factory=list)  # bootstrap reference indices per image
    seconds: float = 0.0


def _noise(pipe, seeds: Sequence[int]) -> torch.Tensor:
    from ..generate import initial_noise

    r = pipe_resolution(pipe)
    return torch.cat([initial_noise(pipe, s, r, r) for s in seeds])


def _run_record(what: str, r: OptimResult) -> dict:
    return {"what": what, "loss": r.loss, "semantic": r.semantic, "appearance": r.appearance, "stopped": r.stopped,
            "seconds": round(r.seconds, 3)}


def bootstrap_subsets(n_refs: int, count: int, seed: int) -> list[list[int]]:
    """`count` bootstrap samples of the reference indices (size n_refs, with replacement), sorted;
    a multiset already drawn is redrawn (up to 100 times) so the targets differ where they can."""
    g = torch.Generator().manual_seed(int(seed) + 7919)
    seen: set[tuple[int, ...]] = set()
    out = []
    for _ in range(count):
        for _ in range(100):
            idx = tuple(sorted(torch.randint(0, n_refs, (n_refs,), generator=g).tolist()))
            if idx not in seen:
                break
        seen.add(idx)
        out.append(list(idx))
    return out


def jitter(z: torch.Tensor, rho: float, seed: int) -> torch.Tensor:
    """√(1−ρ²)·z + ρ·ε: a nearby seed that is still N(0, I) if z is (ρ = 0: z itself)."""
    if rho == 0:
        return z.clone()
    eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(int(seed)))
    return math.sqrt(1 - rho * rho) * z + rho * eps


def seedselect(pipe, clip, prompt: str, references: References, n: int = 1, seed: int = 0, settings: Settings | None = None,
               bootstrap: bool = True, bootstrap_iterations: int = 5, bootstrap_jitter: float = 0.1,
               log: Callable[[str], None] | None = None) -> SeedSelectResult:
    """SeedSelect for one class / subject: `n` optimized seeds (n, C, h, w) for `prompt`.

    bootstrap=True: optimize the seed `seed` on the full reference set (`settings.iterations`), which
    is image 0; images 1..n-1 start from that seed (jittered by `bootstrap_jitter`) and are optimized
    for `bootstrap_iterations` toward the centroids of a bootstrap sample of the references (a fresh
    AdamW with the same lr schedule each). bootstrap=False: seeds seed..seed+n-1 are each optimized
    from scratch for `settings.iterations` (n times slower).
    """
    s = settings or Settings()
    t0 = time.perf_counter()
    c_all, z_all = references.centroid()
    say = log or (lambda m: None)
    if not bootstrap or n == 1:
        z0 = _noise(pipe, range(seed, seed + n))
        say(f"optimizing {n} seed(s), {s.iterations} iterations")
        r = optimize_seeds(pipe, clip, z0, [prompt] * n, Targets(c_all.expand(n, -1), z_all.expand(n, *z_all.shape)), s, log=log)
        return SeedSelectResult(r.latents, [prompt] * n, z0, [_run_record("full", r)], [None] * n, time.perf_counter() - t0)

    z0 = _noise(pipe, [seed])
    say(f"optimizing seed {seed} on all {len(references)} references, {s.iterations} iterations")
    r = optimize_seeds(pipe, clip, z0, [prompt], Targets(c_all[None], z_all[None]), s, log=log)
    z_star = r.latents
    runs = [_run_record("full", r)]
    subsets = bootstrap_subsets(len(references), n - 1, seed)
    if len(references) == 1 and bootstrap_jitter == 0:
        warnings.warn("SeedSelect bootstrap with 1 reference and no jitter: all images will be identical")
    starts = torch.cat([jitter(z_star, bootstrap_jitter, seed * 100_003 + b + 1) for b in range(n - 1)])
    cents = [references.centroid(idx) for idx in subsets]
    tg = Targets(torch.stack([c for c, _ in cents]), torch.stack([z for _, z in cents]))
    say(f"bootstrap: {n - 1} seed(s), {bootstrap_iterations} iterations each")
    rb = optimize_seeds(pipe, clip, starts, [prompt] * (n - 1), tg, s, iterations=bootstrap_iterations, log=log)
    runs.append(_run_record("bootstrap", rb))
    latents = torch.cat([z_star, rb.latents])
    initial = torch.cat([z0, starts])
    return SeedSelectResult(latents, [prompt] * n, initial, runs, [None] + subsets, time.perf_counter() - t0)


def seedselect_multi(pipe, clip, prompts: Sequence[str], references: Sequence[References], n: int = 1, seed: int = 0,
                     settings: Settings | None = None, contrastive: bool = True,
                     log: Callable[[str], None] | None = None) -> SeedSelectResult:
    """Several classes at once: `n` seeds per class, classes in order (prompt k gets rows k·n..k·n+n-1).

    contrastive=True: the semantic loss is an InfoNCE over the classes' CLIP centroids,
    −log softmax_j(cos(e, c̄_j) / τ)[own class] (τ = `settings.temperature`): it pulls each image to
    its own class and pushes it from the others — what separates look-alike rare classes. The
    appearance term still pulls toward the own class's mean latent. contrastive=False: independent
    plain SeedSelect per class, batched. Image i of class k starts from seed `seed + k·n + i`.
    """
    s = settings or Settings()
    if len(prompts) != len(references) or not prompts:
        raise PersonifyError(f"seedselect_multi: {len(prompts)} prompts for {len(references)} reference sets; pass one set per prompt")
    if contrastive and len(prompts) < 2:
        raise PersonifyError("seedselect_multi: the contrastive loss needs at least 2 classes; use seedselect() for one")
    t0 = time.perf_counter()
    K = len(prompts)
    cents = [r.centroid() for r in references]
    C = torch.stack([c for c, _ in cents])  # (K, D)
    labels = torch.arange(K).repeat_interleave(n)
    tg = Targets(C[labels], torch.stack([z for _, z in cents])[labels], C if contrastive else None, labels if contrastive else None)
    z0 = _noise(pipe, range(seed, seed + K * n))
    ps = [p for p in prompts for _ in range(n)]
    r = optimize_seeds(pipe, clip, z0, ps, tg, s, log=log)
    return SeedSelectResult(r.latents, ps, z0, [_run_record("contrastive" if contrastive else "full", r)], [None] * len(ps),
                            time.perf_counter() - t0)
