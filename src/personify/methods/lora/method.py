"""LoRA DreamBooth: DreamBooth's recipe (rare identifier, "a [V] [class]", prior preservation,
Ruiz et al. 2023) with the UNet frozen and a low-rank update on each attention projection
(Hu et al. 2022):

    W' = W + (α/r) · B A,   A ∈ R^{r×k} ~ N(0, 1/r),  B ∈ R^{d×r} = 0  (so training starts at W)

applied to to_q, to_k, to_v, to_out.0 of every UNet attention (optionally q/k/v/out_proj of the text
encoder) through peft. The artifact holds only A and B (peft's key layout, `unet.` / `text_encoder.`
prefixed): a few MB on SD instead of DreamBooth's GBs. Several LoRA concepts apply together, each as
its own peft adapter, all active.
"""
from __future__ import annotations

from typing import Any

import torch

from ...config import to_dict
from ...errors import PersonifyError
from .. import register
from ..base import Method
from ..dreambooth.method import DreamBooth
from .adapters import activate_all, adapter_parameters, adapter_state, add_adapters, fresh_adapter_name, load_adapter_state, lora_configs
from .config import LoRAConfig


@register
class LoRA(DreamBooth):
    """LoRA DreamBooth: low-rank updates of the UNet attention (and optionally text encoder), prior preservation."""

    name = "lora"
    Config = LoRAConfig

    def __init__(self, pipe, config: LoRAConfig):
        if not config.class_word:
            raise PersonifyError("lora needs the subject's class word; pass --class-word, e.g. --class-word dog")
        super().__init__(pipe, config)  # identifier, instance prompt, text_frozen, as DreamBooth
        self.adapter = fresh_adapter_name(pipe)

    def setup(self) -> None:
        Method.setup(self)  # freeze everything (not DreamBooth's set-up, which unfreezes the UNet)
        add_adapters(self.pipe, lora_configs(to_dict(self.config)), self.adapter)
        for comp in self._components():
            module = getattr(self.pipe, comp)
            module.requires_grad_(False)
            for _, p in adapter_parameters(module, self.adapter):
                p.requires_grad_(True)
        self.pipe.unet.train()

    def _components(self) -> tuple[str, ...]:
        return ("unet", "text_encoder") if self.config.train_text_encoder else ("unet",)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for comp in self._components() for _, p in adapter_parameters(getattr(self.pipe, comp), self.adapter)]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return adapter_state(self.pipe, self.adapter)

    def load(self, state: dict[str, torch.Tensor]) -> None:
        load_adapter_state(self.pipe, state, self.adapter, "checkpoint")

    @classmethod
    def apply(cls, pipe, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        configs = lora_configs(meta["config"]["method"])
        name = fresh_adapter_name(pipe)
        with torch.random.fork_rng(devices=[]):  # adapter init draws random numbers; keep the caller's RNG
            add_adapters(pipe, configs, name)
        load_adapter_state(pipe, state, name, meta["path"])
        activate_all(pipe)
