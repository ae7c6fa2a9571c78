"""The DreamBench protocol (Ruiz et al. 2023, Sec. 4.1), for real DreamBench and mini-DreamBench.

For each subject: 25 prompts (objects: 20 recontextualization + 5 property; live subjects, i.e. cats
and dogs: 10 recontextualization + 10 accessorization + 5 property), 4 images per prompt, and

- DINO   = mean pairwise cosine between generated and real images, DINO ViT-S/16 CLS embeddings;
- CLIP-I = the same in CLIP image space;
- CLIP-T = mean cosine between each image and its prompt in CLIP space, where the prompt has the
  identifier token removed ("a rcn dog in the jungle" -> "a dog in the jungle"): CLIP has never seen
  the identifier, so leaving it in measures noise, and the paper's prompt fidelity is about the scene.

Normalized numbers put raw ones in context: DINO and CLIP-I divided by the real-vs-real upper bound
(mean pairwise cosine between *different* real photos of the subject), CLIP-T divided by the base
model's CLIP-T on the same prompts without the subject.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from ..errors import PersonifyError

LIVE_CLASSES = ("dog", "cat")


@dataclass
class Subject:
    name: str
    class_word: str
    images: list[Path]
    live: bool


@dataclass
class Benchmark:
    name: str
    subjects: dict[str, Subject]
    object_prompts: list[str]  # templates with {0} = identifier, {1} = class word
    live_prompts: list[str]

    def prompts(self, subject: Subject) -> list[tuple[str, str]]:
        """(template, kind) for the subject, in the protocol's order."""
        if subject.live:
            kinds = ["recontextualization"] * 10 + ["accessorization"] * 10 + ["property"] * 5
            return list(zip(self.live_prompts, kinds))
        kinds = ["recontextualization"] * 20 + ["property"] * 5
        return list(zip(self.object_prompts, kinds))


def parse_prompts_file(path: Path) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """DreamBench's prompts_and_classes.txt -> ([(subject, class)], object templates, live templates)."""
    if not Path(path).is_file():
        raise PersonifyError(f"{path}: DreamBench prompts file not found; pass --prompts-file pointing to prompts_and_classes.txt")
    text = Path(path).read_text()
    classes = re.findall(r"^([a-z0-9_]+),([a-z ]+)$", text, re.M)
    classes = [(s, c) for s, c in classes if s != "subject_name"]
    lists = re.findall(r"prompt_list = \[(.*?)\]", text, re.S)
    if not classes or len(lists) != 2:
        raise PersonifyError(f"{path}: not a DreamBench prompts file (need the class table and two prompt_list blocks)")
    parsed = [re.findall(r"'(.*?)'\.format\(unique_token, class_token\)", block) for block in lists]
    if [len(p) for p in parsed] != [25, 25]:
        raise PersonifyError(f"{path}: expected 25 object and 25 live prompts, found {len(parsed[0])} and {len(parsed[1])}")
    return classes, parsed[0], parsed[1]


def load_real(prompts_file: Path, images_root: Path, expected_images: tuple[int, int] = (4, 6)) -> Benchmark:
    """Real DreamBench: `images_root/<subject>/*.jpg`; only subjects whose folders exist are used."""
    from ..data.images import find_images

    classes, obj, live = parse_prompts_file(prompts_file)
    images_root = Path(images_root)
    if not images_root.is_dir():
        raise PersonifyError(f"{images_root}: DreamBench images folder not found; pass --images-root DIR with one folder per subject")
    subjects = {}
    for name, cls in classes:
        d = images_root / name
        if not d.is_dir():
            continue
        imgs = find_images(d)
        lo, hi = expected_images
        if not lo <= len(imgs) <= hi:
            raise PersonifyError(f"{d}: {len(imgs)} images, DreamBench subjects have {lo}-{hi}; restore the original folder")
        subjects[name] = Subject(name, cls, imgs, cls in LIVE_CLASSES)
    if not subjects:
        raise PersonifyError(f"{images_root}: no DreamBench subject folders (e.g. dog/, backpack/) found")
    return Benchmark("dreambench", subjects, obj, live)


def load_mini(root: Path | None = None) -> Benchmark:
    """mini-DreamBench shipped in personify/assets/mini_dreambench."""
    root = Path(root) if root else Path(str(resources.files("personify") / "assets" / "mini_dreambench"))
    meta_path, prompts_path = root / "subjects.json", root / "prompts.json"
    for p in (meta_path, prompts_path):
        if not p.is_file():
            raise PersonifyError(f"{p}: mini-DreamBench file missing; reinstall personify or pass --benchmark-root")
    prompts = json.loads(prompts_path.read_text())
    subjects = {}
    for s in json.loads(meta_path.read_text()):
        imgs = [root / p for p in s["images"]]
        missing = [p for p in imgs if not p.is_file()]
        if missing:
            raise PersonifyError(f"{missing[0]}: mini-DreamBench image missing; reinstall personify")
        subjects[s["subject"]] = Subject(s["subject"], s["class"], imgs, s.get("prompt_kind") == "live")
    return Benchmark("mini-dreambench", subjects, prompts["object"], prompts["live"])


def stylization_prompts() -> list[tuple[str, str]]:
    """SuTI's fourth skill, which DreamBench has no prompts for: the subject in each style the mini
    world renders ("a watercolor painting of a {0} {1}"), kind "stylization"."""
    from ..world.captions import STYLE_PREFIX

    return [(f"{prefix} a {{0}} {{1}}", "stylization") for prefix in STYLE_PREFIX.values()]


def strip_identifier(template: str, class_word: str) -> str:
    """'a {0} {1} in the jungle' -> 'a dog in the jungle' (the CLIP-T prompt)."""
    return re.sub(r"\s+", " ", template.replace("{0}", "").format("", class_word)).strip()


# ---------------------------------------------------------------------------------------------
def pixels(images: list[Image.Image]) -> torch.Tensor:
    """PIL images of one size -> (N, 3, H, W) float in [0, 1], what the encoders take."""
    return torch.stack([torch.from_numpy(np.asarray(im.convert("RGB"), np.float32) / 255.0).permute(2, 0, 1) for im in images])


@dataclass
class Evaluator:
    """The encoders behind the metrics (real CLIP/DINO from a local path, or the mini evaluators)."""

    clip: torch.nn.Module
    dino: torch.nn.Module
    batch: int = 32

    @torch.no_grad()
    def embed(self, images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (DINO (N, Dd), CLIP (N, Dc)), L2-normalized."""
        d, c = [], []
        for i in range(0, len(images), self.batch):
            x = pixels(images[i : i + self.batch])
            d.append(self.dino.image(x))
            c.append(self.clip.image(x))
        return torch.cat(d), torch.cat(c)

    @torch.no_grad()
    def text(self, prompts: list[str]) -> torch.Tensor:
        return torch.cat([self.clip.text(prompts[i : i + self.batch]) for i in range(0, len(prompts), self.batch)])


def mean_pairwise(a: torch.Tensor, b: torch.Tensor, exclude_diagonal: bool = False) -> float:
    sim = a @ b.T  # (Na, Nb) cosines
    if exclude_diagonal:
        n = sim.shape[0]
        return float((sim.sum() - sim.diagonal().sum()) / max(1, n * n - n))
    return float(sim.mean())


@dataclass
class SubjectResult:
    subject: str
    label: str  # method or concept name
    per_kind: dict[str, dict[str, float]]  # kind -> {dino, clip_i, clip_t}
    overall: dict[str, float]
    upper: dict[str, float]  # real-vs-real dino / clip_i
    images: dict[str, list[Image.Image]] = field(default_factory=dict, repr=False)  # kind -> a few samples
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"subject": self.subject, "label": self.label, "per_kind": self.per_kind, "overall": self.overall,
                "upper": self.upper, "seconds": self.seconds}


def real_upper_bound(ev: Evaluator, real: list[Image.Image]) -> dict[str, float]:
    if len(real) < 2:
        raise PersonifyError("the real-vs-real upper bound needs at least 2 real images of the subject")
    d, c = ev.embed(real)
    return {"dino": mean_pairwise(d, d, True), "clip_i": mean_pairwise(c, c, True)}


def evaluate_subject(
    pipe, bench: Benchmark, subject: Subject, identifier: str | None, ev: Evaluator, label: str,
    n_per_prompt: int = 4, steps: int = 25, guidance: float = 7.5, seed: int = 0, keep: int = 4,
    generate: Callable[[list[str], list[int]], list[Image.Image]] | None = None,
    prompts: list[tuple[str, str]] | None = None,
) -> SubjectResult:
    """Generate the protocol's images and score them.

    `generate(prompts, seeds) -> images` (one image per pair) makes the images; default: `pipe` with
    the concept applied (`generate_images`). `identifier=None`: no learned token, the prompts are the
    templates without it ("a dog on the beach"), as for the in-context apprentice
    (`apprentice_generator`). `seconds` covers generation and scoring, not loading the model.
    `prompts`: (template, kind) pairs to score instead of the protocol's 25 (e.g. SuTI's stylization
    prompts, a skill DreamBench has no prompts for)."""
    import time

    from ..data.images import load_rgb, resize_crop
    from ..generate import generate_images

    if generate is None:
        generate = lambda ps, ss: generate_images(pipe, ps, ss, steps=steps, guidance=guidance)  # noqa: E731
    t0 = time.time()
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    real = [resize_crop(load_rgb(p), size) for p in subject.images]
    rd, rc = ev.embed(real)
    items = bench.prompts(subject) if prompts is None else list(prompts)
    if identifier is None:
        prompts = [strip_identifier(tpl, subject.class_word) for tpl, _ in items]
    else:
        prompts = [tpl.format(identifier, subject.class_word) for tpl, _ in items]
    all_prompts = [p for p in prompts for _ in range(n_per_prompt)]
    seeds = [seed + i for i in range(len(all_prompts))]
    with torch.no_grad():
        images = generate(all_prompts, seeds)
    if len(images) != len(all_prompts):
        raise PersonifyError(f"generate returned {len(images)} images for {len(all_prompts)} prompts")
    gd, gc = ev.embed(images)
    text = ev.text([strip_identifier(tpl, subject.class_word) for tpl, _ in items])  # (P, D), P = 25 for the protocol
    per_image_t = (gc * text.repeat_interleave(n_per_prompt, 0)).sum(-1)  # (N,)
    kinds = [k for _, k in items for _ in range(n_per_prompt)]
    per_kind, shown = {}, {}
    for kind in dict.fromkeys(kinds):
        m = torch.tensor([k == kind for k in kinds])
        per_kind[kind] = {"dino": mean_pairwise(gd[m], rd), "clip_i": mean_pairwise(gc[m], rc), "clip_t": float(per_image_t[m].mean())}
        shown[kind] = [im for im, k in zip(images, kinds) if k == kind][: keep * n_per_prompt : n_per_prompt]
    overall = {"dino": mean_pairwise(gd, rd), "clip_i": mean_pairwise(gc, rc), "clip_t": float(per_image_t.mean())}
    res = SubjectResult(subject.name, label, per_kind, overall, real_upper_bound(ev, real), shown, round(time.time() - t0, 2))
    res.images["real"] = real
    return res


def base_clip_t(pipe, bench: Benchmark, subject: Subject, ev: Evaluator, n_per_prompt: int = 4, steps: int = 25, guidance: float = 7.5, seed: int = 0) -> float:
    """CLIP-T of the base model on the same prompts without the subject (the normalizer of CLIP-T)."""
    from ..generate import generate_images

    prompts = [strip_identifier(tpl, subject.class_word) for tpl, _ in bench.prompts(subject)]
    all_prompts = [p for p in prompts for _ in range(n_per_prompt)]
    with torch.no_grad():
        images = generate_images(pipe, all_prompts, [seed + i for i in range(len(all_prompts))], steps=steps, guidance=guidance)
    _, gc = ev.embed(images)
    return float((gc * ev.text(prompts).repeat_interleave(n_per_prompt, 0)).sum(-1).mean())


def apprentice_generator(pipe, apprentice, subject: Subject, n_demos: int = 3, steps: int = 25, guidance: float = 7.5,
                         caption: str = "a photo of a {}", demo_cfg: str = "both", demo_guidance: float = 3.0) -> tuple[Callable[[list[str], list[int]], list[Image.Image]], list[Path]]:
    """`generate(prompts, seeds)` for `evaluate_subject` with the in-context apprentice, zero tuning.

    The demonstrations are the subject's first `n_demos` real images in file order (DreamBooth trains
    on all of them, so the apprentice sees a subset of the same information), each captioned
    `caption.format(class_word)`; the metrics still compare against all real images. `demo_cfg`: which
    CFG branches see the demos (`generate_with_demos`). `apprentice`:
    weights path, state dict or `Apprentice` (see `incontext.load_apprentice`). Returns the callable
    and the demo paths."""
    from ..data.images import load_rgb
    from ..incontext.generate import check_demo_count, generate_with_demos, load_apprentice

    check_demo_count(n_demos)
    if len(subject.images) < n_demos:
        raise PersonifyError(f"{subject.name}: {len(subject.images)} real images, fewer than n_demos={n_demos}")
    paths = list(subject.images[:n_demos])
    demos = [load_rgb(p) for p in paths]
    captions = [caption.format(subject.class_word)] * n_demos
    app = load_apprentice(pipe, apprentice)

    def generate(prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        return generate_with_demos(pipe, app, demos, captions, prompts, seeds=seeds, steps=steps, guidance=guidance,
                                   demo_cfg=demo_cfg, demo_guidance=demo_guidance)

    return generate, paths
