from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ...config import check
from ..base import MethodConfig, PriorConfig

FREEZE_MODES = ("crossattn_kv", "crossattn")


@dataclass
class CustomDiffusionConfig(PriorConfig, MethodConfig):
    """Custom Diffusion (Kumari et al., CVPR 2023): fine-tune only the key/value projections of every
    cross-attention layer plus a new modifier token V*, with ~200 retrieved real regularization images.
    Paper on SD 1.4: 250 steps (500 for two concepts trained jointly), batch 8, lr 1e-5 x GPUs x batch
    = 8e-5 (scale_lr), λ = 1. Adam's step size does not grow with the batch, so the default keeps the
    paper's per-step size (lr 1e-4 ≈ 8e-5) at batch 1, and 250 steps. Not yet measured on the mini
    model (not shipped in this checkout): see docs/custom-diffusion.md."""

    steps: int = field(default=250, metadata={"help": "optimizer steps (paper: 250 for one concept, 500 for two trained jointly)"})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate (paper: 1e-5 x GPUs x batch = 8e-5 on SD)"})
    class_word: list[str] = field(default_factory=list, metadata={"help": "class noun of each concept, e.g. 'dog' (joint training: one per modifier token, e.g. dog teapot)"})
    modifier_token: list[str] = field(default_factory=list, metadata={"help": "new token(s) V* (default '<new1>', '<new2>', ...: one per --class-word)"})
    initializer: list[str] = field(default_factory=list, metadata={"help": "word(s) each modifier starts from (several tokens: their mean) (default: a rare token from personify.tokens.rare_identifier; the paper uses 'ktn')"})
    instance_template: str = field(default="photo of a {modifier} {class_word}", metadata={"help": "instance prompt (paper: 'photo of a V* dog')"})
    freeze_model: Literal["crossattn_kv", "crossattn"] = field(default="crossattn_kv", metadata={"help": "what trains in the UNet: cross-attention K/V (paper) or all cross-attention projections (q, k, v, out)"})
    augment: bool = field(default=True, metadata={"help": "random rescale 0.4-1.4x with 'very small'/'far away' or 'zoomed in'/'close up' in the prompt, loss masked to the image (paper Sec. 3.1)"})
    retrieval: bool = field(default=True, metadata={"help": "regularize with real images whose captions match the class prompt (paper) instead of generated class images; falls back to generated ones when no pool exists"})
    retrieval_threshold: float = field(default=0.85, metadata={"help": "minimum CLIP text-text cosine similarity of a pool caption to the class prompt"})
    retrieval_pool: str | None = field(default=None, metadata={"help": "folder of captioned images (NAME.png + NAME.txt) to retrieve from (default: the emoji world's gen_train split)"})
    retrieval_clip: str | None = field(default=None, metadata={"help": "local CLIP folder for caption similarity (default: the base model's own text encoder)"})
    # PriorConfig defaults overridden: the paper retrieves 200 real images; λ = 1.
    num_class_images: int = field(default=200, metadata={"help": "regularization images (paper: 200 retrieved real images)"})

    def __post_init__(self) -> None:
        MethodConfig.__post_init__(self)
        self.check_prior()
        for name in ("class_word", "modifier_token", "initializer"):
            v = getattr(self, name)
            setattr(self, name, [v] if isinstance(v, str) else list(v or []))
        check(len(self.class_word) >= 1, "custom_diffusion needs the subject's class word; pass --class-word, e.g. --class-word dog (joint training: --class-word dog teapot)")
        check(all(w.strip() for w in self.class_word), "class words must be non-empty")
        n = len(self.class_word)
        check(not self.modifier_token or len(self.modifier_token) == n,
              f"give one --modifier-token per --class-word ({n} class word(s), {len(self.modifier_token)} token(s))")
        check(n == 1 or not self.class_prompt, "class_prompt applies to one concept; joint training uses 'a photo of a {class word}' per concept")
        check(len(set(self.modifier_token)) == len(self.modifier_token), f"modifier tokens must differ, got {self.modifier_token}")
        for t in self.modifier_token:
            check(t.strip() != "" and not any(c.isspace() for c in t) and "{" not in t and "}" not in t,
                  f"modifier token must be one word without spaces or braces, got {t!r}")
        check(not self.initializer or len(self.initializer) == n, f"give one --initializer per --class-word ({n}), got {len(self.initializer)}")
        check("{modifier}" in self.instance_template and "{class_word}" in self.instance_template,
              "instance_template must contain {modifier} and {class_word}")
        check(self.freeze_model in FREEZE_MODES, f"freeze_model must be one of {', '.join(FREEZE_MODES)}, got {self.freeze_model!r}")
        check(-1.0 <= self.retrieval_threshold <= 1.0, f"retrieval_threshold is a cosine similarity in [-1, 1], got {self.retrieval_threshold}")

    @property
    def tokens(self) -> list[str]:
        return self.modifier_token or [f"<new{i + 1}>" for i in range(len(self.class_word))]
