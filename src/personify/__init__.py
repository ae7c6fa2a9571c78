"""personify: teach a text-to-image diffusion model your subject from 3-5 photos.

    import personify
    pipe = personify.load_pipeline("mini")            # or a diffusers folder / .safetensors
    art = personify.train("dreambooth", images="photos/", class_word="dog", steps=200)
    personify.apply_concepts(pipe, [art])
"""
from __future__ import annotations

import os

# Everything loads from local paths: never let a library reach for a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

__version__ = "0.1.0"

from .errors import ConfigError, PersonifyError  # noqa: E402


def load_pipeline(*args, **kwargs):
    from .models import load_pipeline as _load

    return _load(*args, **kwargs)


def apply_concepts(pipe, paths):
    from .artifact import apply_concepts as _apply

    return _apply(pipe, [str(p) for p in paths])


def train(method: str, images: str, pipe=None, **options):
    """Train `method` on the photos in `images`; options are TrainConfig or method-config fields.
    Returns the path of the concept artifact."""
    from .config import build
    from .methods import get_method
    from .training.config import TrainConfig
    from .training.loop import Trainer

    import dataclasses

    cls = get_method(method)
    train_names = {f.name for f in dataclasses.fields(TrainConfig)}
    tcfg = build(TrainConfig, {"images": str(images), **{k: v for k, v in options.items() if k in train_names}}, "personify.train")
    mcfg = build(cls.Config, {k: v for k, v in options.items() if k not in train_names}, "personify.train")
    return Trainer(method, mcfg, tcfg, pipe=pipe).run()


def generate(prompt: str, **options):
    """Write images for `prompt` (see GenerateConfig for options); returns their paths."""
    from .config import build
    from .generate import GenerateConfig, run_generate

    return run_generate(build(GenerateConfig, {"prompt": prompt, **options}, "personify.generate"))


__all__ = ["PersonifyError", "ConfigError", "load_pipeline", "apply_concepts", "train", "generate", "__version__"]
