"""Load a Stable Diffusion pipeline from a local path, always offline.

Accepted sources:
- `"tiny"` / `"tiny:SEED"`: random tiny components built in code (tests, demos before weights exist);
- `"mini"`: the embedded miniature model shipped in `personify/assets/mini-sd` (default when present);
- a diffusers folder (`model_index.json`, SD 1.x / 2.x, epsilon or v-prediction);
- a single `.safetensors` file plus a local config: either the original LDM layout
  (`model.diffusion_model.*`, loaded through diffusers' `from_single_file`) or personify's flat layout
  (`unet.*`, `vae.*`, `text_encoder.*`, written by `save_single_file`);
- pickle files (`.ckpt`, `.pt`, `.bin`) only with `allow_pickle=True`, then `weights_only=True`.

Every failure is a `PersonifyError` naming the missing piece.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from importlib import resources
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..errors import PersonifyError

DEFAULT_MODEL = "mini"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
# component -> (config files, any one suffices; accepted weight files)
_COMPONENTS = {
    "unet": (("config.json",), ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.bin")),
    "vae": (("config.json",), ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.bin")),
    "text_encoder": (("config.json",), ("model.safetensors", "model.fp16.safetensors", "pytorch_model.bin")),
    "tokenizer": (("tokenizer.json", "vocab.json"), ()),
    "scheduler": (("scheduler_config.json",), ()),
}


def mini_model_path() -> Path:
    return Path(str(resources.files("personify") / "assets" / "mini-sd"))


def resolve_model(spec: str | os.PathLike | None) -> str:
    """Map the user's `--model` to a concrete source; `None` means the default model."""
    spec = str(spec) if spec is not None else DEFAULT_MODEL
    if spec == "mini":
        if (mini_model_path() / "model_index.json").is_file():
            return str(mini_model_path())
        warnings.warn("the embedded mini model is not shipped in this version; using random 'tiny' weights (images are noise)")
        return "tiny"
    return spec


def load_pipeline(
    path: str | os.PathLike | None = None,
    *,
    config: str | os.PathLike | None = None,
    allow_pickle: bool = False,
    vae: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float32,
) -> StableDiffusionPipeline:
    """Load a StableDiffusionPipeline from a local source (see module doc). Sets `pipe.personify_base_hash`.
    ``vae``: an AutoencoderKL folder that replaces the model's VAE (e.g. a fine-tuned decoder)."""
    source = resolve_model(path)
    name = "mini" if source == str(mini_model_path()) else source  # recorded in artifacts: portable
    if source == "tiny" or source.startswith("tiny:"):
        from .tiny import build_tiny_pipeline

        seed = int(source.split(":")[1]) if ":" in source else 0
        pipe = build_tiny_pipeline(seed=seed)
    else:
        p = Path(source).expanduser()
        if p.is_dir():
            pipe = _load_folder(p, allow_pickle, dtype)
        elif p.is_file():
            pipe = _load_file(p, config, allow_pickle, dtype)
        else:
            raise PersonifyError(f"{p}: model not found; pass a diffusers folder, a .safetensors file, 'mini' or 'tiny'")
    if vae:
        _swap_vae(pipe, Path(vae).expanduser(), dtype)
    pipe.set_progress_bar_config(disable=True)
    pipe.personify_base_hash = model_hash(pipe)
    pipe.personify_full_hash = model_hash(pipe, decoder=True)  # tells decoders apart (image sidecars)
    pipe.personify_source = name
    pipe.personify_concepts = []
    return pipe


def _swap_vae(pipe: StableDiffusionPipeline, p: Path, dtype: torch.dtype) -> None:
    """Replace ``pipe.vae`` by the AutoencoderKL saved in folder ``p``; it must fit the UNet's latents."""
    from diffusers import AutoencoderKL

    if not (p / "config.json").is_file():
        raise PersonifyError(f"{p}: not a VAE folder (no config.json); pass a folder saved with AutoencoderKL.save_pretrained (e.g. <model>/vae)")
    try:
        vae = AutoencoderKL.from_pretrained(p, local_files_only=True, torch_dtype=dtype)
    except Exception as e:
        raise PersonifyError(f"{p}: cannot load the VAE ({_first_line(e)}); pass a complete AutoencoderKL folder") from None
    ours, theirs = pipe.vae.config, vae.config
    if theirs.latent_channels != ours.latent_channels or len(theirs.block_out_channels) != len(ours.block_out_channels):
        raise PersonifyError(f"{p}: VAE latents ({theirs.latent_channels} channels, factor {2 ** (len(theirs.block_out_channels) - 1)}) "
                             f"do not fit this model's ({ours.latent_channels}, {pipe.vae_scale_factor}); use a VAE made for it")
    pipe.register_modules(vae=vae)


def _check_folder(p: Path, allow_pickle: bool) -> None:
    index = p / "model_index.json"
    if not index.is_file():
        raise PersonifyError(f"{p}: not a diffusers model folder (model_index.json is missing); pass the folder that contains it")
    try:
        json.loads(index.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        raise PersonifyError(f"{index}: unreadable JSON; re-download or re-export the model") from None
    for comp, (cfgs, weights) in _COMPONENTS.items():
        d = p / comp
        if not any((d / c).is_file() for c in cfgs):
            raise PersonifyError(f"{p}: missing {comp}/{cfgs[0]}; the model folder is incomplete, re-export it")
        if weights:
            found = [w for w in weights if (d / w).is_file()]
            if not found:
                raise PersonifyError(f"{p}: missing {comp}/{weights[0]}; the model folder is incomplete, re-export it")
            if all(w.endswith(".bin") for w in found) and not allow_pickle:
                raise PersonifyError(
                    f"{d / found[0]}: pickle weights can run code when loaded; convert to .safetensors or pass --allow-pickle"
                )


def _load_folder(p: Path, allow_pickle: bool, dtype: torch.dtype) -> StableDiffusionPipeline:
    _check_folder(p, allow_pickle)
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    variant = None
    if not (p / "unet" / "diffusion_pytorch_model.safetensors").is_file() and (p / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file():
        variant = "fp16"
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            p, local_files_only=True, safety_checker=None, requires_safety_checker=False,
            dtype=dtype, variant=variant, use_safetensors=None if allow_pickle else True,
        )
    except Exception as e:  # diffusers raises many types; name the folder and the first line
        raise PersonifyError(f"{p}: cannot load model ({_first_line(e)}); check the folder is a complete SD 1.x/2.x export") from None
    return pipe


def _load_file(p: Path, config, allow_pickle: bool, dtype: torch.dtype) -> StableDiffusionPipeline:
    if p.suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise PersonifyError(f"{p}: pickle checkpoints can run code when loaded; convert to .safetensors or pass --allow-pickle")
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:
            raise PersonifyError(f"{p}: cannot read pickle checkpoint with weights_only=True ({_first_line(e)}); convert it to .safetensors") from None
        while isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        keys = list(state)
    elif p.suffix == ".safetensors":
        try:
            with safe_open(p, "pt") as f:
                keys = list(f.keys())
        except Exception as e:
            raise PersonifyError(f"{p}: unreadable .safetensors file ({_first_line(e)}); re-download it") from None
        state = None
    else:
        raise PersonifyError(f"{p}: unknown model file type {p.suffix!r}; pass a diffusers folder or a .safetensors file")
    if config is None:
        raise PersonifyError(f"{p}: a single-file checkpoint needs --model-config DIR (a diffusers folder with the component configs)")
    cfg = Path(config).expanduser()
    if not cfg.exists():
        raise PersonifyError(f"{cfg}: model config not found; pass a diffusers folder (model_index.json, unet/config.json, ...)")
    if any(k.startswith("model.diffusion_model.") for k in keys):
        try:
            return StableDiffusionPipeline.from_single_file(
                str(p), config=str(cfg), local_files_only=True, safety_checker=None,
                requires_safety_checker=False, torch_dtype=dtype,
            )
        except Exception as e:
            raise PersonifyError(f"{p}: cannot load single-file checkpoint ({_first_line(e)}); check --model-config matches it") from None
    if any(k.startswith("unet.") for k in keys):
        return _load_flat(p, state, cfg, dtype)
    raise PersonifyError(f"{p}: not a Stable Diffusion checkpoint (no 'model.diffusion_model.*' or 'unet.*' keys)")


def _load_flat(p: Path, state, cfg: Path, dtype: torch.dtype) -> StableDiffusionPipeline:
    """personify's flat single-file layout: `<component>.<param>` keys, configs from a folder."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    from diffusers.schedulers import DDIMScheduler

    state = state if state is not None else load_file(p)
    try:
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(cfg / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(cfg / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(cfg / "text_encoder", local_files_only=True))
        tokenizer = CLIPTokenizer.from_pretrained(cfg / "tokenizer", local_files_only=True)
        scheduler = DDIMScheduler.from_config(DDIMScheduler.load_config(cfg / "scheduler"))
    except Exception as e:
        raise PersonifyError(f"{cfg}: incomplete model config ({_first_line(e)}); pass a diffusers folder") from None
    for name, module in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
        sub = {k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(name + ".")}
        missing, unexpected = module.load_state_dict(sub, strict=False)
        missing = [m for m in missing if not m.endswith("position_ids")]
        if missing or unexpected:
            what = missing[0] if missing else unexpected[0]
            raise PersonifyError(f"{p}: {name} weights do not match {cfg}/{name} ({what}); use the config of the same model")
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    return pipe.to(dtype=dtype)


def save_single_file(pipe: StableDiffusionPipeline, path: str | os.PathLike) -> None:
    """Write unet/vae/text_encoder into one flat `.safetensors` (load it with a config folder)."""
    state = {}
    for name in ("unet", "vae", "text_encoder"):
        for k, v in getattr(pipe, name).state_dict().items():
            state[f"{name}.{k}"] = v.detach().contiguous()
    save_file(state, str(path))


# The VAE decoder is left out of the fingerprint: concepts, class latents and the apprentice live in
# the latent space (UNet, text encoder, VAE encoder), so a fine-tuned decoder swapped in (as SD users
# do with the ft-MSE VAE, or `personify mini train --stage vae --no-train-encoder`) keeps them valid.
_DECODER_PREFIXES = ("decoder.", "post_quant_conv.")


def model_hash(pipe: StableDiffusionPipeline, decoder: bool = False) -> str:
    """A fingerprint of what trained concepts depend on: for each tensor of unet / text encoder /
    VAE encoder, its name, shape and up to 1024 evenly strided values rounded to fp16 (so an fp32
    model and its fp16 copy agree). ``decoder=True`` also hashes the VAE decoder: the fingerprint
    artifacts recorded until 22 Nov 2026 (session 4), still accepted by :func:`same_base`.

    Hashing every byte of SD (~4 GB) takes seconds; any training touches far more than one
    value in 1024, so the strided sample tells models apart just as well.
    """
    h = hashlib.sha256()
    identity = _identity_encoder_blocks(pipe.vae)
    for name in ("unet", "text_encoder", "vae"):
        module = getattr(pipe, name)
        for k, v in sorted(module.state_dict().items()):
            if name == "vae" and ((not decoder and k.startswith(_DECODER_PREFIXES)) or k.startswith(identity)):
                continue
            flat = v.detach().reshape(-1)
            step = max(1, flat.numel() // 1024)
            sample = flat[::step].to(torch.float16).cpu().numpy().tobytes()
            h.update(f"{name}.{k}:{tuple(v.shape)}".encode())
            h.update(sample)
    return h.hexdigest()[:16]


def _identity_encoder_blocks(vae) -> tuple[str, ...]:
    """State-dict prefixes of VAE-encoder ResNet blocks that return their input exactly (conv2 all
    zero, no shortcut, output scale 1): the blocks ``mini.models.grow_vae`` adds. They change no
    latent, so a deepened VAE keeps its fingerprint and the concepts trained on it."""
    encoder = getattr(vae, "encoder", None)
    if encoder is None:
        return ()
    out = []
    for n, m in encoder.named_modules():
        conv2 = getattr(m, "conv2", None)
        if (type(m).__name__ == "ResnetBlock2D" and m.conv_shortcut is None and m.output_scale_factor == 1
                and not conv2.weight.any() and (conv2.bias is None or not conv2.bias.any())):
            out.append(f"encoder.{n}.")
    return tuple(out)


def same_base(pipe, recorded: str | None) -> bool:
    """Whether a base-model hash recorded in an artifact/checkpoint names the loaded model (also
    under the older fingerprint that included the decoder). Unknown on either side = no objection."""
    ours = getattr(pipe, "personify_base_hash", None)
    if not recorded or not ours or recorded == ours:
        return True
    return recorded == getattr(pipe, "personify_full_hash", None)


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:200] if s else type(e).__name__
