"""DreamBooth: fine-tune the whole UNet (optionally the text encoder) on "a [V] [class]" with the
class-specific prior-preservation loss (Ruiz et al. 2023, Eq. 2):

    E[ ‖ε − ε_θ(z_t, t, c_V)‖² + λ ‖ε′ − ε_θ(z′_t′, t′, c_class)‖² ]

The artifact holds the fine-tuned weights (fp16 by default), so it is as large as the UNet.
"""
from __future__ import annotations

from typing import Any

import torch

from ...errors import PersonifyError
from ...tokens import check_identifier, rare_identifier
from .. import register
from ..base import Method, prefixed, unprefixed
from .config import DreamBoothConfig


def instance_prompt(template: str, identifier: str, class_word: str) -> str:
    return template.format(identifier=identifier, class_word=class_word)


def sidecar_caption(sidecar: str | None, identifier: str, default: str) -> list[str]:
    """A sidecar caption may name the subject with `[V]`; otherwise the instance prompt is used."""
    if sidecar and "[V]" in sidecar:
        return [sidecar.replace("[V]", identifier)]
    return [default]


@register
class DreamBooth(Method):
    """Fine-tune the UNet (optionally the text encoder) on 'a [V] class' with prior preservation."""

    name = "dreambooth"
    Config = DreamBoothConfig

    def __init__(self, pipe, config: DreamBoothConfig):
        super().__init__(pipe, config)
        if not config.class_word:
            raise PersonifyError(f"{self.name} needs the subject's class word; pass --class-word, e.g. --class-word dog")
        tok = pipe.tokenizer
        self.identifier = config.identifier or rare_identifier(tok, exclude=tuple(t for c in getattr(pipe, "personify_concepts", []) for t in c.get("tokens", [])))
        if config.identifier:
            check_identifier(tok, config.identifier)
        self.prompt = instance_prompt(config.instance_template, self.identifier, config.class_word)
        self.text_frozen = not config.train_text_encoder

    def setup(self) -> None:
        super().setup()
        self.pipe.unet.requires_grad_(True)
        if self.config.train_text_encoder:
            self.pipe.text_encoder.requires_grad_(True)
        self.pipe.unet.train()

    def captions(self, sidecar: str | None) -> list[str]:
        return sidecar_caption(sidecar, self.identifier, self.prompt)

    def prior_prompt(self) -> str | None:
        if self.config.prior_weight <= 0:
            return None
        return self.config.class_prompt or f"a photo of a {self.config.class_word}"

    def _modules(self) -> dict[str, torch.nn.Module]:
        mods = {"unet": self.pipe.unet}
        if self.config.train_text_encoder:
            mods["text_encoder"] = self.pipe.text_encoder
        return mods

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for m in self._modules().values() for p in m.parameters() if p.requires_grad]

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, m in self._modules().items():
            out.update(prefixed(name, m.state_dict()))
        return out

    def load(self, state: dict[str, torch.Tensor]) -> None:
        _load_modules(self.pipe, state)

    def metadata(self) -> dict[str, Any]:
        return {"tokens": [self.identifier], "class_word": self.config.class_word, "instance_prompt": self.prompt}

    @classmethod
    def apply(cls, pipe, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        for other in pipe.personify_concepts:
            if other["method"] == cls.name:
                raise PersonifyError(
                    f"{meta['path']}: two DreamBooth concepts both replace the UNet weights ({other['path']}); "
                    "train them jointly, or use LoRA/Custom Diffusion concepts to combine"
                )
        _load_modules(pipe, state)


def _base_layer_key(key: str) -> str:
    head, _, leaf = key.rpartition(".")
    return f"{head}.base_layer.{leaf}"


def _load_modules(pipe, state: dict[str, torch.Tensor]) -> None:
    for name in ("unet", "text_encoder"):
        sub = unprefixed(name, state)
        if not sub:
            continue
        module = getattr(pipe, name)
        ref = module.state_dict()
        # A LoRA concept applied first wraps layers: `to_q.weight` now lives at `to_q.base_layer.weight`.
        sub = {(k if k in ref else _base_layer_key(k)): v for k, v in sub.items()}
        bad = [k for k in sub if k not in ref or ref[k].shape != sub[k].shape]
        if bad:
            raise PersonifyError(f"DreamBooth weights do not fit this model's {name} ({bad[0]}); load the base model it was trained on")
        with torch.no_grad():
            for k, v in sub.items():
                ref[k].copy_(v.to(ref[k].dtype))
