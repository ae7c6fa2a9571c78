from __future__ import annotations

from dataclasses import dataclass, field

from ...config import check
from ..base import MethodConfig, PriorConfig


@dataclass
class DreamBoothConfig(PriorConfig, MethodConfig):
    """DreamBooth (Ruiz et al. 2023). Paper on SD: ~1000 steps at lr 5e-6, λ = 1, 200-1000 class
    images. The embedded mini model is ~150x smaller and learns at 64 px, so its defaults are
    steps 400 and lr 2e-5 — re-measure for your model (docs/results.md)."""

    steps: int = field(default=400, metadata={"help": "optimizer steps (paper: ~1000 on SD)"})
    learning_rate: float = field(default=2e-5, metadata={"help": "AdamW learning rate (paper: 5e-6 on SD)"})
    identifier: str | None = field(default=None, metadata={"help": "the rare token [V] (default: chosen from the vocabulary, see personify/tokens.py)"})
    train_text_encoder: bool = field(default=False, metadata={"help": "fine-tune the text encoder too"})
    instance_template: str = field(default="a {identifier} {class_word}", metadata={"help": "instance prompt"})

    def __post_init__(self) -> None:
        MethodConfig.__post_init__(self)
        self.check_prior()
        check("{identifier}" in self.instance_template, "instance_template must contain {identifier}")
