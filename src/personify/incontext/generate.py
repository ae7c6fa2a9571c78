"""Generation from demonstrations: `generate_with_demos` and `personify generate --demos DIR`."""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..config import ModelSource, check
from ..errors import PersonifyError
from ..models.loading import same_base
from ..sampling import SAMPLERS, cfg_denoiser, decode, encode_prompts, make_scheduler, sample
from .model import Apprentice, DemoContext

MIN_DEMOS, MAX_DEMOS = 2, 8
CONSISTENCY_THRESHOLD = 0.6  # mean pairwise CLIP image cosine below this -> "different subjects?" warning
ADAPTER_FORMAT = "personify.apprentice/1"
DEMO_CFG = ("both", "cond", "dual")  # which CFG branches see the demos (see generate_with_demos)


def check_demo_count(n: int) -> None:
    if n < MIN_DEMOS:
        raise PersonifyError(f"{n} demonstration image(s): the apprentice needs {MIN_DEMOS}-{MAX_DEMOS} photos of the subject; add more")
    if n > MAX_DEMOS:
        raise PersonifyError(f"{n} demonstration images: the apprentice reads at most {MAX_DEMOS}; pass the {MAX_DEMOS} most varied ones")


def _pil_to_unit(images: list[Image.Image], size: int) -> torch.Tensor:
    from ..data.images import resize_crop, to_rgb

    arr = [np.asarray(resize_crop(to_rgb(im), size), np.float32) / 255.0 for im in images]
    return torch.from_numpy(np.stack(arr)).permute(0, 3, 1, 2)  # (K, 3, H, W) in [0, 1]


@torch.no_grad()
def demo_consistency(images: list[Image.Image], clip, threshold: float = CONSISTENCY_THRESHOLD, warn: bool = True) -> float:
    """Mean pairwise CLIP image cosine similarity among the demos; warns below `threshold`.

    `clip`: an `evaluation.encoders.CLIPEncoder` (anything with `.image((B,3,H,W) in [0,1]) -> (B,D)`
    L2-normalised). The threshold suits real CLIP ViT-B/32 photos of one object (~0.75-0.9 typical);
    other encoders need their own threshold."""
    x = _pil_to_unit(images, 224 if min(images[0].size) >= 224 else min(images[0].size))
    e = clip.image(x.to(next(clip.parameters()).device)).float()
    sims = [float(e[i] @ e[j]) for i, j in combinations(range(len(e)), 2)]
    score = float(np.mean(sims)) if sims else 1.0
    if warn and score < threshold:
        warnings.warn(f"demonstrations look like different subjects (mean pairwise CLIP similarity {score:.2f} < {threshold:.2f}); "
                      "use 2-8 photos of one subject")
    return score


def load_apprentice(pipe, state, *, allow_other_base: bool = False, **kw) -> Apprentice:
    """`state`: an Apprentice already on `pipe.unet`, a dict of adapter tensors, or a `.safetensors` path.
    `allow_other_base`: load a file trained on another base model with a warning instead of an error. Only for
    measuring how an adapter transfers to a continued UNet of the same shapes (benchmarks/incontext_mini.py
    --allow-other-base); shapes must still fit."""
    if isinstance(state, Apprentice):
        if state.unet is not pipe.unet:
            raise PersonifyError("the apprentice was built on a different UNet than this pipeline's")
        return state
    meta: dict = {}
    unet_file = None
    if isinstance(state, (str, Path)):
        from safetensors import safe_open

        p = Path(state).expanduser()
        if not p.is_file():
            raise PersonifyError(f"{p}: apprentice weights not found; train them with `personify incontext train`")
        try:
            with safe_open(str(p), "pt") as f:
                meta = json.loads((f.metadata() or {}).get("personify", "{}"))
                state = {k: f.get_tensor(k) for k in f.keys()}
        except (OSError, ValueError, json.JSONDecodeError) as e:
            raise PersonifyError(f"{p}: not an apprentice weights file ({str(e)[:80]})") from None
        if meta.get("format") != ADAPTER_FORMAT:
            raise PersonifyError(f"{p}: not an apprentice weights file (format {meta.get('format')!r})")
        if not same_base(pipe, meta.get("base_model_hash")):
            msg = f"{p}: trained on base model {meta['base_model_hash']}, not this one"
            if not allow_other_base:
                raise PersonifyError(msg + "; use the model it was trained on")
            warnings.warn(msg + "; loaded anyway (allow_other_base), results are a transfer measurement", stacklevel=2)
        if meta.get("unet_file"):  # trained with the whole UNet unfrozen: its UNet comes along
            unet_file = p.with_name(meta["unet_file"])
            if not unet_file.is_file():
                raise PersonifyError(f"{p}: needs its tuned UNet {unet_file.name} beside it; copy both files together")
    kw.setdefault("t_demo", int(meta.get("t_demo", 50)))
    kw.setdefault("demo_noise_seed", int(meta.get("demo_noise_seed", 0)))
    app = getattr(pipe, "personify_apprentice", None)
    if app is None:
        app = Apprentice(pipe.unet, pipe.scheduler.alphas_cumprod, **kw)
        pipe.personify_apprentice = app
    app.load_adapter_state_dict(state)
    if unet_file is not None:
        from safetensors.torch import load_file

        missing, unexpected = pipe.unet.load_state_dict(load_file(str(unet_file)), strict=False)
        if missing or unexpected:
            raise PersonifyError(f"{unet_file}: UNet weights do not fit this model; use the base model it was trained on")
    return app


@torch.no_grad()
def encode_demo_images(pipe, apprentice: Apprentice, demo_images: list[Image.Image], demo_captions: list[str]) -> DemoContext:
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    px = _pil_to_unit(demo_images, size) * 2 - 1
    vae = pipe.vae
    z = vae.encode(px.to(vae.device, vae.dtype)).latent_dist.mean * vae.config.scaling_factor
    text = encode_prompts(pipe.tokenizer, pipe.text_encoder, list(demo_captions))
    return apprentice.encode_demos(z, text)


def generate_with_demos(pipe, apprentice_state, demo_images: list[Image.Image], demo_captions: list[str], prompt: str | list[str],
                        n: int = 4, seed: int = 0, steps: int = 25, guidance: float = 7.5, sampler: str = "ddim",
                        clip=None, consistency_threshold: float = CONSISTENCY_THRESHOLD, negative_prompt: str = "",
                        seeds: list[int] | None = None, batch_size: int = 16, demo_cfg: str = "both",
                        demo_guidance: float = 3.0) -> list[Image.Image]:
    """Generate `n` images of the demonstrated subject for `prompt`, in one sampling run, no tuning.

    `prompt` may be a list: then one image per prompt (`n` is ignored), image i with `seeds[i]`
    (default `seed + i`); the demos are encoded once and the images sampled `batch_size` at a time.
    2-8 demos (else PersonifyError); with `clip` given, a consistency check warns when the demos look
    like different subjects. CFG: `demo_cfg="both"`: both branches see the demos (as in SuTI); only the
    text is amplified. `"cond"`: only the conditional branch sees them, so guidance amplifies the demo
    signal too (ε = ε(∅) + w·(ε(text, demos) − ε(∅)): higher subject fidelity, lower prompt fidelity).
    `"dual"`: two scales, one per condition (as InstructPix2Pix guides image and text apart, Brooks et
    al. 2023, Eq. 3): ε = ε(∅) + w·(ε(text) − ε(∅)) + w_d·(ε(text, demos) − ε(text)), w_d =
    `demo_guidance`; three UNet passes per step. w_d = w is "cond"; smaller w_d trades subject for prompt."""
    check_demo_count(len(demo_images))
    if demo_cfg not in DEMO_CFG:
        raise PersonifyError(f"demo_cfg must be one of {', '.join(DEMO_CFG)}, got {demo_cfg!r}")
    if len(demo_captions) != len(demo_images):
        raise PersonifyError(f"{len(demo_images)} demo images but {len(demo_captions)} captions; give one caption per image")
    prompts = [prompt] * n if isinstance(prompt, str) else list(prompt)
    seeds = [seed + i for i in range(len(prompts))] if seeds is None else [int(s) for s in seeds]
    if len(seeds) != len(prompts):
        raise PersonifyError(f"{len(prompts)} prompts but {len(seeds)} seeds; give one seed per image")
    if clip is not None:
        demo_consistency(demo_images, clip, consistency_threshold)
    from ..generate import initial_noise

    app = load_apprentice(pipe, apprentice_state)
    ctx = encode_demo_images(pipe, app, demo_images, demo_captions)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    dev, dtype = pipe.unet.device, pipe.unet.dtype
    out: list[Image.Image] = []
    with torch.no_grad():
        uncond = encode_prompts(pipe.tokenizer, pipe.text_encoder, [negative_prompt]).to(dtype)
        if demo_cfg == "both" or (guidance == 1.0 and demo_cfg == "cond"):
            model = cfg_denoiser(app.denoiser(ctx), uncond, guidance)
        elif demo_cfg == "dual":
            def model(x, t, cond):
                e_u, e_t = app(torch.cat([x, x]), t, torch.cat([uncond.expand_as(cond), cond]), None).chunk(2)  # plain UNet
                e_d = app(x, t, cond, ctx)
                return e_u + guidance * (e_t - e_u) + demo_guidance * (e_d - e_t)
        else:
            def model(x, t, cond):
                e_u = app(x, t, uncond.expand_as(cond), None)
                e_c = app(x, t, cond, ctx)
                return e_u + guidance * (e_c - e_u)
        for start in range(0, len(prompts), batch_size):
            ps, ss = prompts[start : start + batch_size], seeds[start : start + batch_size]
            x = torch.cat([initial_noise(pipe, s, size, size) for s in ss]).to(dev, dtype)
            cond = encode_prompts(pipe.tokenizer, pipe.text_encoder, ps).to(dtype)
            z0 = sample(model, x, cond, make_scheduler(sampler, pipe.scheduler), steps)
            imgs = decode(pipe.vae, z0.to(pipe.vae.dtype))
            arr = (imgs.float().permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
            out.extend(Image.fromarray(a) for a in arr)
    return out


@dataclass
class DemosConfig(ModelSource):
    prompt: str = field(default="", metadata={"help": "text prompt; '[class]' is replaced by --class-word", "cli": False})
    demos: str = field(default="", metadata={"help": "folder with 2-8 photos of one subject (optional name.txt captions)"})
    apprentice: str = field(default="", metadata={"help": "apprentice weights (.safetensors from personify incontext train); default for --model mini: the shipped one"})
    class_word: str = field(default="", metadata={"help": "subject class word for '[class]' and default demo captions"})
    seed: int = field(default=0, metadata={"help": "seed of the first image; image i uses seed+i"})
    steps: int = field(default=25, metadata={"help": "sampling steps"})
    guidance: float = field(default=7.5, metadata={"help": "classifier-free guidance scale (both branches see the demos)"})
    sampler: str = field(default="ddim", metadata={"help": f"one of {', '.join(SAMPLERS)}"})
    n: int = field(default=4, metadata={"help": "number of images"})
    demo_cfg: str = field(default="both", metadata={"help": "CFG branches that see the demos: 'both' (SuTI; follows the prompt), 'cond' (guidance amplifies the subject too; closer to the demos, follows the prompt less) or 'dual' (separate scales: --guidance for the text, --demo-guidance for the demos)"})
    demo_guidance: float = field(default=3.0, metadata={"help": "with --demo-cfg dual: guidance scale of the demos"})
    out: str = field(default="out", metadata={"help": "output folder"})
    clip: str | None = field(default=None, metadata={"help": "local CLIP folder for the demo consistency check (default for --model mini: the shipped evaluator CLIP; otherwise skipped if unset)"})
    consistency_threshold: float = field(default=CONSISTENCY_THRESHOLD, metadata={"help": "warn when mean pairwise CLIP similarity of demos is below this"})

    def __post_init__(self) -> None:
        check(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        check(1 <= self.n <= 10_000, f"n must be in 1..10000, got {self.n}")
        check(self.sampler in SAMPLERS, f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        check(self.guidance >= 1.0, f"guidance must be >= 1, got {self.guidance}")
        check(self.demo_cfg in DEMO_CFG, f"demo_cfg must be one of {', '.join(DEMO_CFG)}, got {self.demo_cfg!r}")
        check(self.demo_guidance >= 0, f"demo_guidance must be >= 0, got {self.demo_guidance}")
        check(-1.0 <= self.consistency_threshold <= 1.0, f"consistency_threshold must be in [-1, 1], got {self.consistency_threshold}")


def default_apprentice(model: str) -> Path | None:
    """The apprentice shipped for the embedded mini model (`assets/apprentice`), else None: weights are
    tied to the base model they were trained on, so no other model gets a default."""
    if model != "mini":
        return None
    from importlib import resources

    p = Path(str(resources.files("personify") / "assets" / "apprentice" / "apprentice.safetensors"))
    return p if p.is_file() else None


def main(cfg: DemosConfig) -> list[Path]:
    """Write one PNG + JSON sidecar per image; return the image paths."""
    from ..data.dataset import SubjectImages

    if not cfg.demos:
        raise PersonifyError("--demos is required: a folder with 2-8 photos of the subject")
    apprentice = cfg.apprentice or default_apprentice(cfg.model)
    if not apprentice:
        raise PersonifyError(f"--apprentice is required for model {cfg.model!r} (a default ships only for 'mini'): "
                             "weights from `personify incontext train`")
    pipe = cfg.load_pipeline()
    try:
        app = load_apprentice(pipe, apprentice)  # read once; generate_with_demos takes the loaded one
    except PersonifyError as e:
        if cfg.apprentice:
            raise
        raise PersonifyError(f"the shipped apprentice does not fit this mini model ({e}); retrain it with "
                             "benchmarks/incontext_mini.py or pass --apprentice FILE") from None
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    subj = SubjectImages(cfg.demos, size, subject=False)
    check_demo_count(len(subj))
    word = cfg.class_word or "object"
    captions = [it.caption or f"a photo of a {word}" for it in subj.items]
    prompt = cfg.prompt.replace("[class]", word)
    clip = None
    # The mini model's own evaluator CLIP separates mini-DreamBench subjects well at the default
    # threshold (docs/incontext.md: no false alarm on 30 subjects, 90% of 3-subject mixes caught).
    from ..evaluation.run import default_evaluator_path

    clip_path = cfg.clip or (default_evaluator_path("clip") if cfg.model == "mini" else None)
    if clip_path:
        from ..evaluation.encoders import load_clip

        clip = load_clip(clip_path)
    images = generate_with_demos(pipe, app, [it.image for it in subj.items], captions, prompt, cfg.n, cfg.seed,
                                 cfg.steps, cfg.guidance, cfg.sampler, clip=clip, consistency_threshold=cfg.consistency_threshold,
                                 demo_cfg=cfg.demo_cfg, demo_guidance=cfg.demo_guidance)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        p = out / f"demos-{cfg.seed + i:06d}.png"
        img.save(p)
        side = {"prompt": prompt, "seed": cfg.seed + i, "model": pipe.personify_source, "model_hash": pipe.personify_base_hash, "full_model_hash": getattr(pipe, "personify_full_hash", None),
                "apprentice": str(apprentice), "demos": [str(it.path) for it in subj.items], "demo_captions": captions,
                "sampler": cfg.sampler, "steps": cfg.steps, "guidance": cfg.guidance, "demo_cfg": cfg.demo_cfg,
                **({"demo_guidance": cfg.demo_guidance} if cfg.demo_cfg == "dual" else {})}
        p.with_suffix(".json").write_text(json.dumps(side, indent=1))
        paths.append(p)
    return paths
