from __future__ import annotations

from dataclasses import dataclass, field

from ...config import check
from ..base import MethodConfig, PriorConfig


@dataclass
class DreamBoothConfig(PriorConfig, MethodConfig):
    """DreamBooth (Ruiz et al. 2023). Paper on SD: ~1000 steps at lr 5e-6, λ = 1, 200-1000 class
    images. The embedded mini model is ~150x smaller and learns at 64 px, so its defaults are
    steps 400, lr 1e-4 and λ = 0.3, chosen by `benchmarks/method_sweep.py` on generator v2 (docs/results.md,
    "dreambooth: training options swept"): the highest DINO whose CLIP-T stays within 0.02 of the old
    defaults' (lr 2e-5, λ = 1). On SD pass the paper's values (`--learning-rate 5e-6 --prior-weight 1`).

    Several subjects train jointly with one class word and one identifier each
    (`--class-word dog teapot`); each image's sidecar NAME.txt names its subject's identifier."""

    steps: int = field(default=400, metadata={"help": "optimizer steps (paper: ~1000 on SD)"})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate (mini model; paper: 5e-6 on SD)"})
    prior_weight: float = field(default=0.3, metadata={"help": "λ of the prior-preservation loss; 0 disables it (mini model; paper: 1 on SD)"})
    class_word: list[str] = field(default_factory=list, metadata={"help": "the subject's class noun, e.g. 'dog' (several subjects trained jointly: one per subject, e.g. dog teapot)"})
    identifier: list[str] = field(default_factory=list, metadata={"help": "the rare token [V], one per --class-word (default: chosen from the vocabulary, see personify/tokens.py)"})
    train_text_encoder: bool = field(default=False, metadata={"help": "fine-tune the text encoder too"})
    instance_template: str = field(default="a {identifier} {class_word}", metadata={"help": "instance prompt"})

    def __post_init__(self) -> None:
        MethodConfig.__post_init__(self)
        self.check_prior()
        for name in ("class_word", "identifier"):
            v = getattr(self, name)
            setattr(self, name, [v] if isinstance(v, str) else list(v or []))
        check("{identifier}" in self.instance_template, "instance_template must contain {identifier}")
        n = len(self.class_word)
        check(all(w.strip() for w in self.class_word), "class words must be non-empty")
        check(not self.identifier or len(self.identifier) == max(n, 1),
              f"give one --identifier per --class-word ({n} class word(s), {len(self.identifier)} identifier(s))")
        check(len(set(self.identifier)) == len(self.identifier), f"identifiers must differ, got {self.identifier}")
        check(n <= 1 or not self.class_prompt, "class_prompt applies to one subject; joint training uses 'a photo of a {class word}' per subject")
