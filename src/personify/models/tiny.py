"""Tiny random Stable Diffusion components built in code.

Used by the tests (no network, no weights on disk) and as the stand-in model before the embedded mini
model ships. Same classes as SD (UNet2DConditionModel, AutoencoderKL with 8x downsampling,
CLIPTextModel with OpenAI's real BPE vocabulary), just a few thousand times smaller: 32 px images,
(B, 4, 4, 4) latents.
"""
from __future__ import annotations

from importlib import resources

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer


def clip_tokenizer(max_length: int = 77) -> CLIPTokenizer:
    """OpenAI CLIP's tokenizer from the vocab shipped in personify/assets (MIT, see bpe_vocab.py)."""
    root = resources.files("personify") / "assets" / "clip_tokenizer"
    tok = CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"), model_max_length=max_length)
    return tok


def build_tiny_pipeline(seed: int = 0, prediction_type: str = "epsilon", max_length: int = 16,
                        latent_channels: int = 4) -> StableDiffusionPipeline:
    """`latent_channels` other than SD's 4 stands in for a widened latent (the mini model's 8x8x16 candidate)."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=4,
        in_channels=latent_channels,
        out_channels=latent_channels,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        # 4 blocks -> 3 downsamplings -> factor 8, as in SD.
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        latent_channels=latent_channels,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=32,
    )
    tokenizer = clip_tokenizer(max_length)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
