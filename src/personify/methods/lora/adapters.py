"""peft plumbing shared by the LoRA method and the kohya importer: build the LoRA configs from a
method config, add a named adapter to the UNet / text encoder, load its weights, and keep every
LoRA adapter on a pipeline active at once (several concepts add up)."""
from __future__ import annotations

import warnings
from typing import Any

import torch

from ...errors import PersonifyError

UNET_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
COMPONENTS = ("unet", "text_encoder")


def lora_configs(cfg: dict[str, Any]) -> dict[str, Any]:
    """{'unet': LoraConfig, ['text_encoder': LoraConfig]} from a LoRAConfig as a dict (the artifact
    stores it as meta['config']['method'], so apply rebuilds exactly the trained adapter)."""
    from peft import LoraConfig

    rank = int(cfg["rank"])
    out = {"unet": LoraConfig(
        r=rank, lora_alpha=cfg.get("alpha") or rank, lora_dropout=cfg.get("dropout", 0.0),
        init_lora_weights="gaussian", target_modules=list(UNET_TARGETS),
    )}
    if cfg.get("train_text_encoder"):
        te_rank = int(cfg.get("text_encoder_rank") or rank)
        out["text_encoder"] = LoraConfig(
            r=te_rank, lora_alpha=cfg.get("alpha") or te_rank, lora_dropout=cfg.get("dropout", 0.0),
            init_lora_weights="gaussian", target_modules=list(TEXT_TARGETS),
        )
    return out


def fresh_adapter_name(pipe, base: str = "personify") -> str:
    taken = set()
    for comp in COMPONENTS:
        taken |= set(getattr(getattr(pipe, comp), "peft_config", {}) or {})
    if base not in taken:
        return base
    i = 1
    while f"{base}_{i}" in taken:
        i += 1
    return f"{base}_{i}"


def add_adapters(pipe, configs: dict[str, Any], name: str) -> None:
    """Add adapter `name` to each component in `configs` (random LoRA init from the global torch RNG)."""
    for comp, config in configs.items():
        with warnings.catch_warnings():  # peft warns that a second adapter is "multiple adapters": intended
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            getattr(pipe, comp).add_adapter(config, adapter_name=name)
    activate_all(pipe)


def activate_all(pipe) -> None:
    """Make every LoRA adapter on the pipeline active (add_adapter activates only the newest)."""
    for comp in COMPONENTS:
        module = getattr(pipe, comp)
        names = list(getattr(module, "peft_config", {}) or {})
        if not names:
            continue
        if hasattr(module, "set_adapters"):  # diffusers models: also resets each scale to α/r
            module.set_adapters(names)
        else:
            module.set_adapter(names)


def adapter_parameters(module: torch.nn.Module, name: str) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in module.named_parameters() if ".lora_" in n and f".{name}." in n]


def adapter_state(pipe, name: str) -> dict[str, torch.Tensor]:
    """`unet.<module>.lora_A.weight`, ... for adapter `name` (peft's adapter-free key layout)."""
    from peft import get_peft_model_state_dict

    out = {}
    for comp in COMPONENTS:
        module = getattr(pipe, comp)
        if name in (getattr(module, "peft_config", {}) or {}):
            out.update({f"{comp}.{k}": v for k, v in get_peft_model_state_dict(module, adapter_name=name).items()})
    return out


def load_adapter_state(pipe, state: dict[str, torch.Tensor], name: str, source: str) -> None:
    """Copy `state` (layout of `adapter_state`) into adapter `name`; every key must fit exactly."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    for comp in COMPONENTS:
        n = len(comp) + 1
        sub = {k[n:]: v for k, v in state.items() if k.startswith(comp + ".")}
        module = getattr(pipe, comp)
        has = name in (getattr(module, "peft_config", {}) or {})
        if not sub and not has:
            continue
        if not has:
            raise PersonifyError(f"{source}: holds {comp} LoRA weights but no {comp} adapter was configured; the file is inconsistent, re-export it")
        ref = get_peft_model_state_dict(module, adapter_name=name)
        bad = sorted(set(sub) ^ set(ref)) or [k for k in sub if sub[k].shape != ref[k].shape]
        if bad:
            raise PersonifyError(f"{source}: LoRA weights do not fit this model's {comp} ({bad[0]}); use the base model it was trained on")
        with torch.no_grad():
            result = set_peft_model_state_dict(module, sub, adapter_name=name)
        if result.unexpected_keys:
            raise PersonifyError(f"{source}: LoRA weights do not fit this model's {comp} ({result.unexpected_keys[0]})")
