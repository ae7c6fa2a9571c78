from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ...config import check
from ..base import MethodConfig


@dataclass
class TextualInversionConfig(MethodConfig):
    """Textual Inversion (Gal et al. 2023): learn 1-N new token embeddings, everything else frozen.
    Paper on SD/LDM: 5,000 steps at base lr 5e-3 (scaled by batch × GPUs), 1 vector initialised from
    a coarse descriptor word. The mini model is ~150x smaller and trains at 64 px; its defaults are
    1,000 steps at lr 5e-3 with a constant schedule (not yet measured: see docs/results.md)."""

    steps: int = field(default=1000, metadata={"help": "optimizer steps (paper: 5000 on SD)"})
    learning_rate: float = field(default=5e-3, metadata={"help": "AdamW learning rate of the new embedding rows (paper: 5e-3)"})
    placeholder: str | None = field(default=None, metadata={"help": "the new token, e.g. '<my-dog>' (default: '<my-{initializer}>')"})
    num_vectors: int = field(default=1, metadata={"help": "embedding vectors for the placeholder (more: more capacity, less editability)"})
    initializer: str | None = field(default=None, metadata={"help": "word(s) the vectors start from; several tokens start from their mean (default: --class-word)"})
    what: Literal["object", "style"] = field(default="object", metadata={"help": "learn an object ('a photo of a {}') or a style ('a painting in the style of {}')"})

    def __post_init__(self) -> None:
        MethodConfig.__post_init__(self)
        check(1 <= self.num_vectors <= 75, f"num_vectors must be in 1..75, got {self.num_vectors}")
        check(self.initializer is not None or self.class_word is not None, "textual_inversion needs --initializer WORD or --class-word WORD to start the embedding from")
        if self.placeholder is not None:
            check(self.placeholder.strip() != "" and not any(c.isspace() for c in self.placeholder), f"placeholder must be one word without spaces, got {self.placeholder!r}")
            check("{" not in self.placeholder and "}" not in self.placeholder, f"placeholder must not contain braces, got {self.placeholder!r}")

    @property
    def init_word(self) -> str:
        return self.initializer or self.class_word  # type: ignore[return-value]

    @property
    def token(self) -> str:
        # "race car" -> "<my-race-car>": a placeholder must be one whitespace-free token
        return self.placeholder or f"<my-{'-'.join(self.init_word.split())}>"
