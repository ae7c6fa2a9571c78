"""`personify eval`: score concepts (or train-and-score a method) with the DreamBench protocol."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

from ..config import ModelSource, check
from ..errors import PersonifyError
from .dreambench import Benchmark, Evaluator, base_clip_t, evaluate_subject, load_mini, load_real


def default_evaluator_path(name: str) -> Path:
    return Path(str(resources.files("personify") / "assets" / "evaluators" / name))


@dataclass
class EvalConfig(ModelSource):
    concept: list[str] = field(default_factory=list, metadata={"help": "concept artifact(s) to score; several = one comparison report"})
    method_options: dict = field(default_factory=dict, metadata={"help": "extra method options for --method (config file only)", "cli": False})
    method: list[str] = field(default_factory=list, metadata={"help": "train these methods on each subject, then score them (several = comparison)"})
    subject: list[str] = field(default_factory=list, metadata={"help": "subject name(s): one per concept, one for all, or a subset for --method"})
    benchmark: Literal["mini", "real"] = field(default="mini", metadata={"help": "mini-DreamBench (shipped) or real DreamBench"})
    prompts_file: str | None = field(default=None, metadata={"help": "real DreamBench prompts_and_classes.txt"})
    images_root: str | None = field(default=None, metadata={"help": "real DreamBench images, one folder per subject"})
    clip: str | None = field(default=None, metadata={"help": "CLIP folder (CLIPModel + tokenizer); default: the mini evaluator"})
    dino: str | None = field(default=None, metadata={"help": "DINO ViT folder (ViTModel); default: the mini evaluator"})
    n_per_prompt: int = field(default=4, metadata={"help": "images per prompt (protocol: 4)"})
    steps: int = field(default=25, metadata={"help": "sampling steps"})
    guidance: float = field(default=7.5, metadata={"help": "guidance scale"})
    seed: int = field(default=0, metadata={"help": "seed of the first image"})
    train_steps: int | None = field(default=None, metadata={"help": "with --method: override the method's default steps"})
    out: str = field(default="runs/eval", metadata={"help": "report folder"})

    def __post_init__(self) -> None:
        check(bool(self.concept) != bool(self.method), "pass either --concept ART ... or --method NAME")
        check(self.n_per_prompt >= 1, "n_per_prompt must be >= 1")
        check(not self.concept or len(self.subject) in (1, len(self.concept)), "pass one --subject for all concepts, or one per concept")
        if self.benchmark == "real":
            check(self.prompts_file is not None and self.images_root is not None, "real DreamBench needs --prompts-file and --images-root")
            check(self.clip is not None and self.dino is not None, "real DreamBench needs --clip and --dino (local CLIP ViT-B/32 and DINO ViT-S/16 folders)")


def load_evaluator(cfg: EvalConfig) -> Evaluator:
    from .encoders import load_clip, load_dino

    clip = Path(cfg.clip) if cfg.clip else default_evaluator_path("clip")
    dino = Path(cfg.dino) if cfg.dino else default_evaluator_path("dino")
    for p, flag in ((clip, "--clip"), (dino, "--dino")):
        if not (p / "config.json").is_file():
            raise PersonifyError(f"{p}: evaluator weights missing; pass {flag} DIR (a local folder saved with save_pretrained)")
    return Evaluator(load_clip(clip), load_dino(dino))


def load_benchmark(cfg: EvalConfig) -> Benchmark:
    if cfg.benchmark == "real":
        return load_real(Path(cfg.prompts_file), Path(cfg.images_root))
    return load_mini()


def run_eval(cfg: EvalConfig, evaluator: Evaluator | None = None, base_t: dict[str, float] | None = None) -> Path:
    """Train (with --method) and score; `base_t` caches the base model's CLIP-T per subject across calls
    with the same model, prompts and sampling settings (sweeps)."""
    import personify
    from ..artifact import read_concept

    bench = load_benchmark(cfg)
    ev = evaluator or load_evaluator(cfg)
    for s in cfg.subject:
        if s not in bench.subjects:
            raise PersonifyError(f"unknown subject {s!r} in {bench.name}; choose from: {', '.join(sorted(bench.subjects))}")
    jobs: list[tuple[str, str, str]] = []  # (concept path, subject, label)
    out = Path(cfg.out)
    if cfg.concept:
        subjects = cfg.subject * len(cfg.concept) if len(cfg.subject) == 1 else cfg.subject
        for c, s in zip(cfg.concept, subjects):
            jobs.append((c, s, read_concept(c)[1]["method"] + ":" + Path(c).parent.name))
    else:
        for method in cfg.method:
            for s in cfg.subject or sorted(bench.subjects):
                sub = bench.subjects[s]
                extra = {**cfg.method_options, **({"steps": cfg.train_steps} if cfg.train_steps else {})}
                run_dir = out / "train" / method / s
                from ..training.checkpoint import list_checkpoints

                art = personify.train(method, images=str(sub.images[0].parent), class_word=sub.class_word, **cfg.model_options(),
                                      out=str(run_dir), seed=cfg.seed, progress=False, resume=bool(list_checkpoints(run_dir)), **extra)
                jobs.append((str(art), s, method))
    results = []
    base_t = {} if base_t is None else base_t
    base = cfg.load_pipeline()
    for path, s, label in jobs:
        sub = bench.subjects[s]
        if s not in base_t:
            base_t[s] = base_clip_t(base, bench, sub, ev, cfg.n_per_prompt, cfg.steps, cfg.guidance, cfg.seed)
        pipe = cfg.load_pipeline()
        personify.apply_concepts(pipe, [path])
        meta = pipe.personify_concepts[-1]
        ident = meta["tokens"][0]
        results.append(evaluate_subject(pipe, bench, sub, ident, ev, label, cfg.n_per_prompt, cfg.steps, cfg.guidance, cfg.seed))
    from .report import write_report

    report = write_report(results, out, f"personify eval — {bench.name}", base_t)
    (out / "command.json").write_text(json.dumps({k: v for k, v in cfg.__dict__.items()}, indent=1, default=str))
    return report
