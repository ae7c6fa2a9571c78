"""The data world of the embedded miniature Stable Diffusion: open-licensed emoji sprites rendered
into captioned 64x64 scenes (see docs/world.md).

    from personify.world import WorldConfig, build, load_split
    build(WorldConfig())                 # one-time: npm pack + render (~minutes)
    data = load_split("gen_train")       # dict of numpy arrays, sha256-validated
"""
from . import classes
from .builder import build, load_meta, load_split, main
from .config import SPLITS, WorldConfig, WorldError

__all__ = ["SPLITS", "WorldConfig", "WorldError", "build", "classes", "load_meta", "load_split", "main"]
