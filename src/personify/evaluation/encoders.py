"""Image and text encoders behind the metrics, all differentiable (SeedSelect backpropagates through
CLIP's image tower): images go in as float tensors (B, 3, H, W) in [0, 1], embeddings come out
L2-normalized (B, D).

Real backbones load from a local folder through transformers (`openai/clip-vit-base-patch32` as
`CLIPModel`, `facebook/dino-vits16` as `ViTModel`); the mini evaluators use the same classes.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import PersonifyError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _prep(x: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> resized (bicubic, antialiased) and normalized, still differentiable."""
    if x.shape[-1] != size or x.shape[-2] != size:
        # in float32: antialiased bicubic has no CPU kernel for half (the mini evaluators ship fp16)
        x = F.interpolate(x.float(), size=(size, size), mode="bicubic", align_corners=False, antialias=True).to(x.dtype)
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


class CLIPEncoder(torch.nn.Module):
    def __init__(self, model, tokenizer):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.size = model.config.vision_config.image_size

    def image(self, x: torch.Tensor) -> torch.Tensor:
        px = _prep(x.to(next(self.model.parameters()).dtype), self.size, CLIP_MEAN, CLIP_STD)
        return F.normalize(_as_tensor(self.model.get_image_features(pixel_values=px)), dim=-1)  # (B, D)

    def text(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.tokenizer.model_max_length, return_tensors="pt")
        dev = next(self.model.parameters()).device
        out = self.model.get_text_features(input_ids=ids.input_ids.to(dev), attention_mask=ids.attention_mask.to(dev))
        return F.normalize(_as_tensor(out), dim=-1)  # (B, D)

    forward = image


class DINOEncoder(torch.nn.Module):
    """DINO ViT: the CLS token of the last layer is the image embedding (Caron et al. 2021)."""

    def __init__(self, model):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.size = model.config.image_size

    def image(self, x: torch.Tensor) -> torch.Tensor:
        px = _prep(x.to(next(self.model.parameters()).dtype), self.size, IMAGENET_MEAN, IMAGENET_STD)
        return F.normalize(self.model(pixel_values=px).last_hidden_state[:, 0], dim=-1)  # (B, D)

    forward = image


def _as_tensor(out) -> torch.Tensor:
    # transformers 5 may return a model output object from get_*_features
    if isinstance(out, torch.Tensor):
        return out
    return out.pooler_output if getattr(out, "pooler_output", None) is not None else out[0]


def _need(path: str | Path, what: str) -> Path:
    p = Path(path).expanduser()
    if not (p / "config.json").is_file():
        raise PersonifyError(f"{p}: {what} weights not found (no config.json); pass a local folder saved with save_pretrained")
    return p


def load_clip(path: str | Path) -> CLIPEncoder:
    from transformers import CLIPModel, CLIPTokenizer

    p = _need(path, "CLIP")
    try:
        model = CLIPModel.from_pretrained(p, local_files_only=True)
        tok = CLIPTokenizer.from_pretrained(p, local_files_only=True)
    except Exception as e:
        raise PersonifyError(f"{p}: cannot load CLIP ({str(e).splitlines()[0][:120]}); save it with CLIPModel/CLIPTokenizer.save_pretrained") from None
    return CLIPEncoder(model, tok)


def load_dino(path: str | Path) -> DINOEncoder:
    from transformers import ViTModel

    p = _need(path, "DINO")
    try:
        model = ViTModel.from_pretrained(p, local_files_only=True, add_pooling_layer=False)
    except Exception as e:
        raise PersonifyError(f"{p}: cannot load DINO ViT ({str(e).splitlines()[0][:120]}); save it with ViTModel.save_pretrained") from None
    return DINOEncoder(model)


def tiny_clip(seed: int = 0) -> CLIPEncoder:
    """Random tiny CLIP for tests."""
    from transformers import CLIPConfig, CLIPModel

    from ..models.tiny import clip_tokenizer

    torch.manual_seed(seed)
    tok = clip_tokenizer(16)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         max_position_embeddings=16, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=16,
    )
    return CLIPEncoder(CLIPModel(cfg), tok)


def tiny_dino(seed: int = 0) -> DINOEncoder:
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(seed)
    cfg = ViTConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)
    return DINOEncoder(ViTModel(cfg, add_pooling_layer=False))
