"""DreamBooth: fine-tune the whole UNet (optionally the text encoder) on "a [V] [class]" with the
class-specific prior-preservation loss (Ruiz et al. 2023, Eq. 2):

    E[ ‖ε − ε_θ(z_t, t, c_V)‖² + λ ‖ε′ − ε_θ(z′_t′, t′, c_class)‖² ]

The artifact holds the fine-tuned weights (fp16 by default), so it is as large as the UNet.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ...errors import PersonifyError
from ...tokens import check_identifier, rare_identifier
from .. import register
from ..base import Method, Prior, prefixed, unprefixed
from .config import DreamBoothConfig


def instance_prompt(template: str, identifier: str, class_word: str) -> str:
    return template.format(identifier=identifier, class_word=class_word)


def sidecar_caption(sidecar: str | None, identifier: str, default: str) -> list[str]:
    """A sidecar caption may name the subject with `[V]`; otherwise the instance prompt is used."""
    if sidecar and "[V]" in sidecar:
        return [sidecar.replace("[V]", identifier)]
    return [default]


def joint_caption(sidecar: str | None, identifiers: list[str], prompts: list[str]) -> list[str]:
    """Several subjects trained jointly: a sidecar holding just an identifier selects that subject's
    instance prompt; a caption naming an identifier as a word is used verbatim ("a sks dog on grass")."""
    text = (sidecar or "").strip()
    if text in identifiers:
        return [prompts[identifiers.index(text)]]
    if "[V]" in text:
        raise PersonifyError(f"sidecar caption {text!r}: '[V]' is ambiguous with several subjects; name the identifier ({', '.join(identifiers)}) instead")
    if any(i in text.split() for i in identifiers):
        return [text]
    raise PersonifyError(
        f"joint training of {len(identifiers)} subjects: every image needs a sidecar NAME.txt naming its subject's identifier "
        f"({' or '.join(identifiers)}), e.g. '{identifiers[0]}'; build the folder with personify.methods.custom_diffusion.join_concept_folders"
    )


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
        taken = tuple(t for c in getattr(pipe, "personify_concepts", []) for t in c.get("tokens", []))
        if config.identifier:
            for ident in config.identifier:
                check_identifier(tok, ident)
            self.identifiers = list(config.identifier)
        else:
            self.identifiers = []
            for _ in config.class_word:
                self.identifiers.append(rare_identifier(tok, exclude=taken + tuple(self.identifiers)))
        self.prompts = [instance_prompt(config.instance_template, i, w) for i, w in zip(self.identifiers, config.class_word)]
        self.identifier, self.prompt = self.identifiers[0], self.prompts[0]
        self.text_frozen = not config.train_text_encoder

    def setup(self) -> None:
        super().setup()
        self.pipe.unet.requires_grad_(True)
        if self.config.train_text_encoder:
            self.pipe.text_encoder.requires_grad_(True)
        self.pipe.unet.train()

    def captions(self, sidecar: str | None) -> list[str]:
        if len(self.identifiers) == 1:
            return sidecar_caption(sidecar, self.identifier, self.prompt)
        return joint_caption(sidecar, self.identifiers, self.prompts)

    def prior(self) -> Prior | None:
        cfg = self.config
        if cfg.prior_weight <= 0:
            return None
        return Prior(cfg.class_prompts(), Path(cfg.class_images) if cfg.class_images else None)

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
        cw = self.config.class_word
        if len(cw) == 1:
            return {"tokens": [self.identifier], "class_word": cw[0], "instance_prompt": self.prompt}
        return {"tokens": list(self.identifiers), "class_word": list(cw),
                "instance_prompt": " and ".join(self.prompts),
                "concepts": [{"token": i, "class_word": w, "instance_prompt": p} for i, w, p in zip(self.identifiers, cw, self.prompts)]}

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
