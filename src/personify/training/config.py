"""Settings of the shared training loop (the method's own settings live in its Config)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..config import ModelSource, check


@dataclass
class TrainConfig(ModelSource):
    images: str | None = field(default=None, metadata={"help": "folder with 3-5 photos of the subject (captions from NAME.txt sidecars, optional)"})
    out: str = field(default="runs/concept", metadata={"help": "run folder: checkpoints, samples, logs, concept.safetensors"})
    batch_size: int = field(default=1, metadata={"help": "instance images per process per micro-batch"})
    gradient_accumulation: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    scale_lr: bool = field(default=False, metadata={"help": "multiply the learning rate by the global batch size"})
    lr_schedule: Literal["constant", "cosine", "linear"] = field(default="constant", metadata={"help": "learning-rate schedule after warm-up"})
    lr_warmup_steps: int = field(default=0, metadata={"help": "linear warm-up steps"})
    weight_decay: float = field(default=1e-2, metadata={"help": "AdamW weight decay"})
    fused_adamw: bool = field(default=True, metadata={"help": "torch's fused AdamW kernel where the parameters allow it (CPU/CUDA floats): 2.5x faster optimizer step measured on the mini UNet (same update up to float rounding)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0 disables)"})
    seed: int = field(default=0, metadata={"help": "seed of data order, noise and timesteps"})
    mixed_precision: Literal["no", "fp16", "bf16"] = field(default="no", metadata={"help": "autocast precision (GPU)"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute UNet activations in backward to save memory"})
    resolution: int | None = field(default=None, metadata={"help": "training resolution in px (default: the model's)"})
    center_crop: bool = field(default=True, metadata={"help": "center crop (else random crop, cached once)"})
    flip: bool = field(default=False, metadata={"help": "random horizontal flips"})
    checkpoint_every: int = field(default=100, metadata={"help": "save a resumable checkpoint every N steps"})
    keep_checkpoints: int = field(default=2, metadata={"help": "how many checkpoints to keep"})
    sample_every: int = field(default=0, metadata={"help": "save a sample grid every N steps (0: never)"})
    sample_prompts: list[str] = field(default_factory=list, metadata={"help": "prompts for sample grids ('{}' = the instance prompt)"})
    sample_steps: int = field(default=20, metadata={"help": "sampling steps for sample grids"})
    validate_every: int = field(default=0, metadata={"help": "score validation prompts every N steps and keep best.safetensors (0: never)"})
    validate_metric: Literal["clip_i+clip_t", "clip_i", "dino", "clip_t", "dino+clip_t"] = field(default="clip_i+clip_t", metadata={"help": "metric that picks the best checkpoint"})
    validate_prompts: list[str] = field(default_factory=list, metadata={"help": "validation prompts ('{}' = instance prompt; default: 4 DreamBench-style scenes)"})
    eval_clip: str | None = field(default=None, metadata={"help": "CLIP folder for validation (default: the mini evaluator)"})
    eval_dino: str | None = field(default=None, metadata={"help": "DINO folder for validation (default: the mini evaluator)"})
    save_precision: Literal["fp32", "fp16", "bf16"] = field(default="fp16", metadata={"help": "dtype of the concept artifact"})
    resume: bool = field(default=False, metadata={"help": "continue from the latest checkpoint in --out"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(self.gradient_accumulation >= 1, f"gradient_accumulation must be >= 1, got {self.gradient_accumulation}")
        check(self.lr_warmup_steps >= 0, "lr_warmup_steps must be >= 0")
        check(self.checkpoint_every >= 1, f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        check(self.keep_checkpoints >= 1, f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        check(self.sample_every >= 0, "sample_every must be >= 0")
        check(self.validate_every >= 0, "validate_every must be >= 0")
        check(self.resolution is None or (self.resolution >= 8 and self.resolution % 8 == 0), f"resolution must be a multiple of 8, got {self.resolution}")
        check(self.max_grad_norm >= 0, "max_grad_norm must be >= 0")
