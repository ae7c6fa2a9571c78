"""Evaluation: image/text encoders for DreamBench metrics (DINO, CLIP-I, CLIP-T) and the protocol."""
from .encoders import CLIPEncoder, DINOEncoder, load_clip, load_dino, tiny_clip, tiny_dino

__all__ = ["CLIPEncoder", "DINOEncoder", "load_clip", "load_dino", "tiny_clip", "tiny_dino"]
