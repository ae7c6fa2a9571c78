from __future__ import annotations

from dataclasses import dataclass, field

from ...config import check
from ..dreambooth.config import DreamBoothConfig


@dataclass
class LoRAConfig(DreamBoothConfig):
    """LoRA DreamBooth: DreamBooth's data, prompts and prior-preservation loss, but only low-rank
    updates ΔW = (α/r)·B·A of the attention projections train (Hu et al. 2022). Rank 4 and α = rank
    follow diffusers' train_dreambooth_lora; 500 steps (a little longer than full DreamBooth's 400,
    since the update is low-rank); λ = 0.3 and lr 3e-4 were chosen on the mini model by
    `benchmarks/method_sweep.py` with DreamBooth's rule (highest DINO with CLIP-T within 0.02 of diffusers'
    defaults; docs/results.md): lr 1e-3 won on 4 subjects of generator v2, 3e-4 on 8 subjects × 2 seeds of
    v3, where 1e-3 cost 0.065 CLIP-T — on SD start from diffusers' lr 1e-4, λ = 1."""

    steps: int = field(default=500, metadata={"help": "optimizer steps"})
    learning_rate: float = field(default=3e-4, metadata={"help": "AdamW learning rate (mini model; diffusers' LoRA DreamBooth on SD: 1e-4)"})
    train_text_encoder: bool = field(default=False, metadata={"help": "add LoRA to the text encoder's attention too (q/k/v/out_proj)"})
    rank: int = field(default=4, metadata={"help": "LoRA rank r of the UNet attention projections (to_q, to_k, to_v, to_out.0)"})
    alpha: float | None = field(default=None, metadata={"help": "LoRA α; the update is scaled by α/r (default: α = rank, scale 1)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA branch"})
    text_encoder_rank: int | None = field(default=None, metadata={"help": "LoRA rank of the text encoder (q/k/v/out_proj) with --train-text-encoder (default: --rank)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.rank >= 1, f"rank must be >= 1, got {self.rank}")
        check(self.alpha is None or self.alpha > 0, f"alpha must be positive, got {self.alpha}")
        check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        check(self.text_encoder_rank is None or self.text_encoder_rank >= 1, f"text_encoder_rank must be >= 1, got {self.text_encoder_rank}")
