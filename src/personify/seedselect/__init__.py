"""SeedSelect (Samuel et al., AAAI 2024): find initial noise that makes a frozen text-to-image model
draw a rare class / a subject shown in 3-5 reference images. See docs/seedselect.md."""
from .config import SeedSelectConfig, default_clip_path
from .core import (
    LAST_STEP_WEIGHTS, SEMANTIC_WEIGHT, References, SeedLoss, SeedSelectResult, Settings, Targets, bootstrap_subsets,
    encode_references, load_reference_pixels, optimize_seeds, seedselect, seedselect_multi,
)
from .run import main, render, resolve_clip

__all__ = [
    "LAST_STEP_WEIGHTS", "SEMANTIC_WEIGHT", "References", "SeedLoss", "SeedSelectConfig", "SeedSelectResult", "Settings",
    "Targets", "bootstrap_subsets", "default_clip_path", "encode_references", "load_reference_pixels", "main",
    "optimize_seeds", "render", "resolve_clip", "seedselect", "seedselect_multi",
]
