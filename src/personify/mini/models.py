"""Model builders for the mini Stable Diffusion stack and its evaluators.

Everything except the classifier is a stock ``transformers`` / ``diffusers`` class, so the saved
folders load with ``from_pretrained`` and no personify code.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
from torch import nn

from .config import ClipConfig, EvaluatorsConfig, UnetConfig, VaeConfig

TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "assets" / "clip_tokenizer"
BOS_ID, EOS_ID = 49406, 49407  # OpenAI CLIP BPE special tokens (pad = eos, as in SD 1.x)
VOCAB_SIZE = 49408


def build_tokenizer(max_length: int = 32):
    """OpenAI CLIP BPE tokenizer (real 49,408-token vocabulary) truncated/padded to ``max_length``."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer(
        str(TOKENIZER_DIR / "vocab.json"),
        str(TOKENIZER_DIR / "merges.txt"),
        model_max_length=max_length,
        pad_token="<|endoftext|>",
    )


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    """Token ids (N, model_max_length), padded with EOS exactly as the SD pipeline does."""
    return tokenizer(
        list(captions), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def clip_config(max_length: int, text_hidden: int, text_layers: int, text_heads: int, vision_hidden: int,
                vision_layers: int, vision_heads: int, patch_size: int, image_size: int, projection_dim: int):
    from transformers import CLIPConfig

    text = dict(
        vocab_size=VOCAB_SIZE, hidden_size=text_hidden, intermediate_size=4 * text_hidden,
        num_hidden_layers=text_layers, num_attention_heads=text_heads, max_position_embeddings=max_length,
        projection_dim=projection_dim, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=EOS_ID,
        hidden_act="quick_gelu",
    )
    vision = dict(
        hidden_size=vision_hidden, intermediate_size=4 * vision_hidden, num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads, image_size=image_size, patch_size=patch_size,
        projection_dim=projection_dim, hidden_act="quick_gelu",
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


def build_clip(cfg: ClipConfig):
    from transformers import CLIPModel

    return CLIPModel(clip_config(cfg.max_length, cfg.text_hidden, cfg.text_layers, cfg.text_heads, cfg.vision_hidden,
                                 cfg.vision_layers, cfg.vision_heads, cfg.patch_size, cfg.image_size, cfg.projection_dim))


def build_eval_clip(cfg: EvaluatorsConfig):
    from transformers import CLIPModel

    h, n = cfg.clip_hidden, cfg.clip_layers
    return CLIPModel(clip_config(cfg.clip_max_length, h, n, 4, h, n, 4, 8, 64, h))


def build_vae(cfg: VaeConfig, scaling_factor: float = 1.0):
    from diffusers import AutoencoderKL

    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.block_out_channels, layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels, norm_num_groups=cfg.norm_num_groups,
        sample_size=cfg.image_size, scaling_factor=scaling_factor,
    )


def load_or_build_vae(cfg: VaeConfig):
    """The VAE a stage trains: ``cfg.init_from`` when set (fine-tuning), else a fresh one."""
    if not cfg.init_from:
        return build_vae(cfg)
    from diffusers import AutoencoderKL

    folder = Path(cfg.init_from).expanduser()
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder}: no AutoencoderKL folder (config.json) to start from; fix init_from")
    vae = AutoencoderKL.from_pretrained(str(folder)).float()
    vae = grow_vae(vae, cfg.grow_layers) if cfg.grow_layers else vae
    return widen_latent(vae, cfg.grow_latent) if cfg.grow_latent else vae


def _copy_matching(old: dict, new: dict) -> None:
    """Copy every tensor of state dict `old` into `new` where the shapes agree (in place, under no_grad)."""
    for k, v in old.items():
        if new[k].shape == v.shape:
            new[k].copy_(v)


def widen_latent(vae, channels: int):
    """The same AutoencoderKL with a `channels`-channel latent whose first C channels are the old latent and
    whose decoder starts by ignoring the new ones, so it first reconstructs exactly as before. The new
    channels' random init comes from the caller's torch seed (the VAE stage seeds before building).

    AutoencoderKL's encoder ends in conv_out -> quant_conv giving (B, 2C, h, w) = [means | log-variances];
    post_quant_conv and decoder.conv_in read (B, C, h, w). New mean rows of conv_out keep a fresh random
    init (so the new channels carry some image features from the start and the decoder gets a gradient
    to use them), new log-variance rows start at log(0.05^2) (about the old channels' posterior std, not
    the prior's 1, which would drown that signal), quant_conv / post_quant_conv pass the new channels
    through, and decoder.conv_in's weights on them are zero. Training then decides what they hold."""
    from diffusers import AutoencoderKL

    c = vae.config.latent_channels
    if channels <= c:
        raise ValueError(f"grow_latent={channels} must exceed the VAE's latent_channels={c}")
    wide = AutoencoderKL.from_config({**vae.config, "latent_channels": channels})
    old = vae.state_dict()
    rows = [*range(c), *range(channels, channels + c)]  # old [mean | logvar] rows inside the new layout
    with torch.no_grad():
        new = wide.state_dict()
        _copy_matching(old, new)
        w, b = new["encoder.conv_out.weight"], new["encoder.conv_out.bias"]
        w[channels + c:].zero_()
        b[channels + c:].fill_(2 * math.log(0.05))
        w[rows], b[rows] = old["encoder.conv_out.weight"], old["encoder.conv_out.bias"]
        for name, idx in (("quant_conv", rows), ("post_quant_conv", list(range(c)))):
            w, b = new[f"{name}.weight"], new[f"{name}.bias"]  # 1x1 convs: (out, in, 1, 1)
            w.zero_()
            b.zero_()
            w[:, :, 0, 0] += torch.eye(w.shape[0])  # new channels pass through
            w[idx, :, 0, 0] = 0
            w[torch.tensor(idx)[:, None], torch.tensor(idx)[None, :]] = old[f"{name}.weight"]
            b[idx] = old[f"{name}.bias"]
        w = new["decoder.conv_in.weight"]
        w.zero_()
        w[:, :c] = old["decoder.conv_in.weight"]
        new["decoder.conv_in.bias"].copy_(old["decoder.conv_in.bias"])
    wide.load_state_dict(new)
    return wide


def grow_vae(vae, extra: int):
    """The same AutoencoderKL with ``extra`` more ResNet blocks per resolution, computing exactly the same
    function: old blocks keep their index (new ones are appended before each resampler) and each new
    block's conv2 is zero, so ResnetBlock2D returns its input (x + 0). Deepening à la Net2Net
    (Chen et al. 2016): the decoder gains capacity without leaving the latent space a UNet was trained on."""
    from diffusers import AutoencoderKL

    grown = AutoencoderKL.from_config({**vae.config, "layers_per_block": vae.config.layers_per_block + extra})
    missing, unexpected = grown.load_state_dict(vae.state_dict(), strict=False)
    assert not unexpected, unexpected
    new_blocks = {k.rsplit(".", 2)[0] for k in missing}  # e.g. decoder.up_blocks.0.resnets.2
    assert all(re.fullmatch(r"(encoder\.down|decoder\.up)_blocks\.\d+\.resnets\.\d+", b) for b in new_blocks), new_blocks
    with torch.no_grad():
        for b in new_blocks:
            conv2 = grown.get_submodule(b).conv2
            conv2.weight.zero_()
            conv2.bias.zero_()
    return grown


def build_patch_discriminator(channels: int = 32) -> nn.Module:
    """PatchGAN (Isola et al. 2017) with GroupNorm: (B, 3, H, W) -> (B, 1, H/4 - 2, W/4 - 2) logits,
    one real/fake score per ~22 px patch. Used only while fine-tuning the VAE; never shipped."""
    c = channels

    def block(i: int, o: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 4, stride, 1), nn.GroupNorm(8, o), nn.LeakyReLU(0.2)]

    return nn.Sequential(nn.Conv2d(3, c, 4, 2, 1), nn.LeakyReLU(0.2), *block(c, 2 * c, 2), *block(2 * c, 4 * c, 1),
                         nn.Conv2d(4 * c, 1, 4, 1, 1))


def build_unet(cfg: UnetConfig, cross_attention_dim: int, latent_channels: int = 4):
    from diffusers import UNet2DConditionModel

    n = len(cfg.block_out_channels)
    down = ("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",)
    up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1)
    return UNet2DConditionModel(
        sample_size=cfg.latent_size, in_channels=latent_channels, out_channels=latent_channels,
        down_block_types=down, up_block_types=up, block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block, cross_attention_dim=cross_attention_dim,
        attention_head_dim=cfg.attention_heads, norm_num_groups=cfg.norm_num_groups,
    )


def load_or_build_unet(cfg: UnetConfig, cross_attention_dim: int, latent_channels: int = 4):
    """The UNet a stage trains: ``cfg.init_from`` when set (continuing a trained UNet, widened when the VAE's
    latent has more channels than it was trained on), else a fresh one."""
    if not cfg.init_from:
        return build_unet(cfg, cross_attention_dim, latent_channels)
    from diffusers import UNet2DConditionModel

    folder = Path(cfg.init_from).expanduser()
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder}: no UNet2DConditionModel folder (config.json) to start from; fix init_from")
    dim = UNet2DConditionModel.load_config(str(folder)).get("cross_attention_dim")
    if dim != cross_attention_dim:
        raise ValueError(f"{folder}: cross_attention_dim {dim} does not match the text encoder's width "
                         f"{cross_attention_dim}; fix init_from or clip_dir")
    unet = UNet2DConditionModel.from_pretrained(str(folder)).float()
    c = unet.config.in_channels
    if latent_channels < c:
        raise ValueError(f"{folder}: a UNet on {c} latent channels cannot continue on a {latent_channels}-channel VAE; fix init_from or vae_dir")
    return widen_unet(unet, latent_channels) if latent_channels > c else unet


def widen_unet(unet, channels: int):
    """The UNet for a VAE widened by `widen_latent`: conv_in ignores the new latent channels (zero weights) and
    conv_out predicts zero noise for them (zero rows), so on the old channels it first computes exactly the old
    UNet; training teaches it the new ones."""
    from diffusers import UNet2DConditionModel

    c = unet.config.in_channels
    wide = UNet2DConditionModel.from_config({**unet.config, "in_channels": channels, "out_channels": channels})
    old = unet.state_dict()
    with torch.no_grad():
        new = wide.state_dict()
        _copy_matching(old, new)
        new["conv_in.weight"].zero_()
        new["conv_in.weight"][:, :c] = old["conv_in.weight"]
        for k in ("conv_out.weight", "conv_out.bias"):
            new[k].zero_()
            new[k][:c] = old[k]
    wide.load_state_dict(new)
    return wide


def build_train_scheduler(cfg: UnetConfig):
    """DDPM training scheduler, epsilon prediction (the SD recipe)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule, beta_start=cfg.beta_start,
        beta_end=cfg.beta_end, prediction_type="epsilon", clip_sample=False,
    )


def build_inference_scheduler(cfg: UnetConfig):
    """The shipped scheduler: DDIM with the training betas (config is Euler/PNDM/DPM-compatible via from_config)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule, beta_start=cfg.beta_start,
        beta_end=cfg.beta_end, prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False,
        steps_offset=1, timestep_spacing="leading",
    )


def build_dino_vit(cfg: EvaluatorsConfig):
    """Small ViT backbone (transformers ViTModel) for the DINO evaluator; features = CLS token."""
    from transformers import ViTConfig, ViTModel

    conf = ViTConfig(
        image_size=64, patch_size=8, num_channels=3, hidden_size=cfg.dino_hidden, num_hidden_layers=cfg.dino_layers,
        num_attention_heads=4, intermediate_size=4 * cfg.dino_hidden, qkv_bias=True,
    )
    return ViTModel(conf, add_pooling_layer=False)


class DinoHead(nn.Module):
    """DINO projection head: 3-layer MLP -> L2-normalised bottleneck -> weight-normalised prototypes."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 256, bottleneck: int = 64):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        self.last = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, out_dim, bias=False))
        self.last.parametrizations.weight.original0.data.fill_(1.0)
        self.last.parametrizations.weight.original0.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(nn.functional.normalize(self.mlp(x), dim=-1))


class MiniClassifier(nn.Module):
    """Small CNN over the pretraining classes. Input: CLIP-normalised 64x64 RGB; output: logits.

    Saved as ``model.safetensors`` + ``config.json`` (``save_pretrained`` / ``from_pretrained``).
    """

    def __init__(self, num_classes: int, width: int = 32, class_names: list[str] | None = None, stem_stride: int = 1):
        super().__init__()
        self.config = {"num_classes": int(num_classes), "width": int(width), "class_names": list(class_names or []),
                       "stem_stride": int(stem_stride),
                       "input": "64x64 RGB, (x/255 - CLIP_MEAN)/CLIP_STD, NCHW", "architecture": "MiniClassifier"}
        w = width

        def blk(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
                                 nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

        # stem_stride=2 runs the first block at 32x32 (4x fewer FLOPs; emoji scenes are low-frequency)
        stem = nn.Sequential(nn.Conv2d(3, w, 3, stride=2, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                             blk(w, w)) if stem_stride == 2 else blk(3, w)
        self.features = nn.Sequential(stem, nn.MaxPool2d(2), blk(w, 2 * w), nn.MaxPool2d(2), blk(2 * w, 4 * w),
                                      nn.MaxPool2d(2), blk(4 * w, 8 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8 * w, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def save_pretrained(self, path: str | Path, dtype: torch.dtype | None = None) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        sd = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
              for k, v in self.state_dict().items()}
        save_file(sd, str(path / "model.safetensors"))
        (path / "config.json").write_text(json.dumps(self.config, indent=1))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "MiniClassifier":
        from safetensors.torch import load_file

        path = Path(path)
        conf = json.loads((path / "config.json").read_text())
        model = cls(conf["num_classes"], conf.get("width", 32), conf.get("class_names"), conf.get("stem_stride", 1))
        sd = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path / "model.safetensors")).items()}
        model.load_state_dict(sd)
        return model.eval()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
