"""`SeedSelectConfig`: the one schema behind `personify seedselect` flags, config files and Python."""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..config import ModelSource, check
from ..sampling import SAMPLERS
from .core import LAST_STEP_WEIGHTS, SEMANTIC_WEIGHT, Settings


def default_clip_path() -> Path:
    """The mini CLIP evaluator shipped with personify (may be absent until the mini model ships)."""
    return Path(str(resources.files("personify") / "assets" / "evaluators" / "clip"))


@dataclass
class SeedSelectConfig(ModelSource):
    images: str = field(default="", metadata={"help": "folder with the 3-5 reference photos of the class/subject (any size or mode)"})
    prompt: str = field(default="", metadata={"help": "text prompt, e.g. 'a photo of a [class]'"})
    n: int = field(default=4, metadata={"help": "number of images (seeds) to produce"})
    out: str = field(default="out/seedselect", metadata={"help": "output folder: PNGs, contact_sheet.png, latents.safetensors, seedselect.json"})
    clip: str | None = field(default=None, metadata={"help": "CLIP used for the semantic loss: a CLIPModel folder (save_pretrained); default: the mini evaluator in personify/assets/evaluators/clip; 'tiny' = random (tests only)"})
    iterations: int = field(default=30, metadata={"help": "AdamW iterations on the full reference set (reference code: 30)"})
    bootstrap_iterations: int = field(default=5, metadata={"help": "AdamW iterations per bootstrap image, starting from the optimized seed"})
    lr: float = field(default=0.1, metadata={"help": "AdamW learning rate of the first --lr-drop-after iterations (reference code: 0.1)"})
    lr_low: float = field(default=0.01, metadata={"help": "learning rate after --lr-drop-after iterations (reference code: 0.01)"})
    lr_drop_after: int = field(default=3, metadata={"help": "iterations at --lr before dropping to --lr-low (reference code: 3)"})
    steps: int = field(default=20, metadata={"help": "DDIM steps of the differentiable sampling run (and of the output images)"})
    guidance: float = field(default=7.5, metadata={"help": "classifier-free guidance scale"})
    sampler: str = field(default="ddim", metadata={"help": f"sampler, one of {', '.join(SAMPLERS)} (paper: ddim)"})
    semantic_weight: float = field(default=SEMANTIC_WEIGHT, metadata={"help": "λ in λ·semantic + (1−λ)·appearance; default 10/11 = semantic weighs 10x appearance"})
    bootstrap: bool = field(default=True, metadata={"help": "optimize one seed on all references, then the others on bootstrap subsets (fast); --no-bootstrap optimizes every seed from scratch"})
    bootstrap_jitter: float = field(default=0.1, metadata={"help": "bootstrap starts from sqrt(1-r^2)*z* + r*noise (personify addition for diversity; 0 = exactly z*)"})
    renormalize: bool = field(default=True, metadata={"help": "rescale z_T to its starting norm after every step (stay on the Gaussian shell)"})
    checkpoint: bool = field(default=True, metadata={"help": "gradient-checkpoint each sampling step (memory of one step, about a third more compute)"})
    batch_size: int = field(default=8, metadata={"help": "seeds optimized together (memory only; results do not depend on it)"})
    seed: int = field(default=0, metadata={"help": "seed of the first initial noise (image i without bootstrap: seed+i)"})
    baseline: bool = field(default=False, metadata={"help": "also render the plain seeds seed..seed+n-1 (what 'personify generate' gives) for comparison"})

    def __post_init__(self) -> None:
        check(bool(self.images), "pass --images DIR: the folder with 3-5 reference photos")
        check(bool(self.prompt.strip()), "pass --prompt TEXT, e.g. --prompt 'a photo of a dog'")
        check(1 <= self.n <= 10_000, f"n must be in 1..10000, got {self.n}")
        check(self.bootstrap_iterations >= 0, f"bootstrap_iterations must be >= 0, got {self.bootstrap_iterations}")
        check(0.0 <= self.bootstrap_jitter < 1.0, f"bootstrap_jitter must be in [0, 1), got {self.bootstrap_jitter}")
        self.settings()  # validates the optimization fields

    def settings(self) -> Settings:
        return Settings(
            iterations=self.iterations, lr=self.lr, lr_low=self.lr_low, lr_drop_after=self.lr_drop_after, steps=self.steps,
            guidance=self.guidance, sampler=self.sampler, semantic_weight=self.semantic_weight,
            renormalize=self.renormalize, checkpoint=self.checkpoint, batch_size=self.batch_size,
            last_step_weights=LAST_STEP_WEIGHTS,
        )
