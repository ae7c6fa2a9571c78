"""personify LoRA <-> kohya-ss / AUTOMATIC1111 LoRA files (SD 1.x/2.x layout).

A kohya file names each adapted module by its diffusers path with dots as underscores:

    lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight  (r, in)   = peft lora_A
    lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight    (out, r)  = peft lora_B
    lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha             ()        = α
    lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight                  (text encoder)

and W' = W + (α/r)·up·down, the same update peft computes with lora_alpha = α. Text-encoder names
always carry `text_model_` (transformers 4's CLIPTextModel path, which A1111 and kohya expect), also
when this transformers version has flattened it away.
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from ..artifact import atomic_save_safetensors, read_concept
from ..errors import PersonifyError
from ..models.loading import same_base
from ..methods.lora.adapters import COMPONENTS, activate_all, add_adapters, fresh_adapter_name, load_adapter_state, lora_configs

PREFIX = {"unet": "lora_unet_", "text_encoder": "lora_te_"}
PEFT_TO_KOHYA = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight"}
KOHYA_TO_PEFT = {v: k for k, v in PEFT_TO_KOHYA.items()}
SOURCE_KEY = "personify_source"  # kohya files we write carry the concept's tokens and base model


def kohya_module_name(component: str, module_path: str) -> str:
    """('unet', 'down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q') -> 'lora_unet_down_blocks_0_..._to_q'."""
    if component == "text_encoder" and not module_path.startswith("text_model."):
        module_path = "text_model." + module_path
    return PREFIX[component] + module_path.replace(".", "_")


def lora_to_kohya(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A personify LoRA artifact (tensors, meta) -> kohya tensors and safetensors header metadata."""
    if meta.get("method") != "lora":
        raise PersonifyError(f"{meta.get('path')}: kohya export is for LoRA concepts, this one is {meta.get('method')!r}")
    cfg = meta["config"]["method"]
    alphas = {comp: float(c.lora_alpha) for comp, c in lora_configs(cfg).items()}  # the α the adapters were trained with
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        comp, _, rest = key.partition(".")
        suffix = next((s for s in PEFT_TO_KOHYA if rest.endswith("." + s)), None)
        if comp not in alphas or suffix is None:
            raise PersonifyError(f"{meta.get('path')}: unexpected LoRA tensor {key!r}; re-train with this personify version")
        name = kohya_module_name(comp, rest[: -len(suffix) - 1])
        out[f"{name}.{PEFT_TO_KOHYA[suffix]}"] = value
        out[f"{name}.alpha"] = torch.tensor(alphas[comp], dtype=torch.float32)
    rank = int(cfg["rank"])
    header = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alphas["unet"]),
        "ss_training_comment": f"personify {meta.get('method')}; prompt: {meta.get('instance_prompt', '')}",
        SOURCE_KEY: json.dumps({k: meta.get(k) for k in ("method", "tokens", "class_word", "instance_prompt", "base_model", "base_model_hash")}),
    }
    return out, header


def export_kohya(concept_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    tensors, meta = read_concept(concept_path)
    kohya, header = lora_to_kohya(tensors, meta)
    out = Path(out_path)
    atomic_save_safetensors(kohya, out, header)
    return out


def _module_lookup(module: torch.nn.Module, component: str) -> dict[str, str]:
    """kohya name -> this model's module path, for every module of `module`."""
    return {kohya_module_name(component, n): n for n, _ in module.named_modules() if n}


def read_kohya(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    p = Path(path).expanduser()
    if not p.is_file():
        raise PersonifyError(f"{p}: LoRA file not found")
    if p.suffix != ".safetensors":
        raise PersonifyError(f"{p}: only .safetensors LoRA files are read (pickle files can run code); convert it first")
    try:
        with safe_open(str(p), "pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise PersonifyError(f"{p}: unreadable .safetensors file ({str(e)[:100]})") from None
    return tensors, header


def load_kohya_lora(pipe, path: str | os.PathLike, adapter_name: str | None = None) -> str:
    """Add the LoRA in a kohya/A1111 `.safetensors` to `pipe` as a new peft adapter, active together
    with any LoRA already there. Returns the adapter name. Plain linear LoRA only (no LoCon/LoHa/DoRA)."""
    tensors, header = read_kohya(path)
    source = json.loads(header[SOURCE_KEY]) if SOURCE_KEY in header else {}
    base = getattr(pipe, "personify_base_hash", None)
    if not same_base(pipe, source.get("base_model_hash")):
        raise PersonifyError(
            f"{path}: exported from a concept trained on base model {source['base_model_hash']} ({source.get('base_model')}), "
            f"but the loaded model is {base}; pass --model {source.get('base_model')}"
        )
    tokens = source.get("tokens") or []
    for other in getattr(pipe, "personify_concepts", []):
        shared = set(other.get("tokens") or []) & set(tokens)
        if shared:
            raise PersonifyError(f"{path}: identifier {sorted(shared)[0]!r} is also used by {other['path']}; retrain one concept with another --identifier")

    # group tensors by (component, module path)
    lookups = {comp: _module_lookup(getattr(pipe, comp), comp) for comp in COMPONENTS}
    modules: dict[str, dict[str, dict[str, torch.Tensor]]] = {comp: {} for comp in COMPONENTS}
    for key, value in tensors.items():
        name, _, suffix = key.partition(".")
        comp = next((c for c, pre in PREFIX.items() if name.startswith(pre)), None)
        if comp is None:
            raise PersonifyError(f"{path}: unsupported key {key!r}; only SD 1.x/2.x LoRA (lora_unet_*, lora_te_*) is supported")
        if suffix not in ("lora_down.weight", "lora_up.weight", "alpha"):
            raise PersonifyError(f"{path}: unsupported tensor {key!r}; only plain LoRA (lora_down/lora_up/alpha) is supported, not LyCORIS/DoRA")
        target = lookups[comp].get(name)
        if target is None:
            raise PersonifyError(f"{path}: module {name!r} does not exist in this model's {comp}; use the base model the LoRA was trained for")
        modules[comp].setdefault(target, {})[suffix] = value

    from peft import LoraConfig

    configs, state = {}, {}
    for comp, mods in modules.items():
        if not mods:
            continue
        ranks, alphas = {}, {}
        for target, parts in mods.items():
            if "lora_down.weight" not in parts or "lora_up.weight" not in parts:
                raise PersonifyError(f"{path}: module {kohya_module_name(comp, target)!r} lacks lora_down or lora_up")
            down, up = parts["lora_down.weight"], parts["lora_up.weight"]
            if down.dim() != 2 or up.dim() != 2 or down.shape[0] != up.shape[1]:
                raise PersonifyError(f"{path}: module {kohya_module_name(comp, target)!r} is not a linear LoRA (shapes {tuple(down.shape)}, {tuple(up.shape)})")
            ranks[target] = down.shape[0]
            alphas[target] = float(parts["alpha"]) if "alpha" in parts else float(down.shape[0])  # kohya: no alpha = scale 1
            state[f"{comp}.{target}.lora_A.weight"] = down
            state[f"{comp}.{target}.lora_B.weight"] = up
        r = Counter(ranks.values()).most_common(1)[0][0]
        a = Counter(alphas.values()).most_common(1)[0][0]
        configs[comp] = LoraConfig(
            r=r, lora_alpha=a, target_modules=sorted(mods), init_lora_weights=False,
            rank_pattern={re.escape(t): v for t, v in ranks.items() if v != r},
            alpha_pattern={re.escape(t): v for t, v in alphas.items() if v != a},
        )
    if not configs:
        raise PersonifyError(f"{path}: no LoRA tensors found")
    name = adapter_name or fresh_adapter_name(pipe, "kohya")
    with torch.random.fork_rng(devices=[]):
        add_adapters(pipe, configs, name)
    load_adapter_state(pipe, state, name, str(path))
    activate_all(pipe)
    if hasattr(pipe, "personify_concepts"):
        pipe.personify_concepts.append({"method": "lora", "format": "kohya", "path": str(path), "tokens": tokens, **{k: source[k] for k in ("class_word", "instance_prompt") if k in source}})
    return name
