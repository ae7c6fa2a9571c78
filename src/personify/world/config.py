"""`WorldConfig` (what to build, where) and `WorldError` (every user-facing failure of the world).

The CLI (`personify world build`) generates one flag per field from `metadata["help"]`, so every
field carries a help string and `__post_init__` validates values with one-line messages.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import PersonifyError

SPLITS = ("gen_train", "eval_train", "test", "eval_seen")
ENV_CACHE = "PERSONIFY_WORLD"


class WorldError(PersonifyError):
    """One line: what failed and how to fix it (no network, corrupt cache, bad config value)."""


def default_cache_dir() -> Path:
    """`$PERSONIFY_WORLD` if set, else `~/.cache/personify/world`."""
    env = os.environ.get(ENV_CACHE)
    return Path(env).expanduser() if env else Path("~/.cache/personify/world").expanduser()


@dataclass
class WorldConfig:
    cache_dir: Optional[Path] = field(
        default=None, metadata={"help": f"cache folder for npm packages and scenes (default ${ENV_CACHE} or ~/.cache/personify/world)"})
    gen_train: int = field(default=200_000, metadata={"help": "scenes in gen_train (generator pretraining)"})
    eval_train: int = field(default=40_000, metadata={"help": "scenes in eval_train (evaluator training, disjoint emoji images)"})
    test: int = field(default=10_000, metadata={"help": "scenes in test (held-out scenes for quality measurement)"})
    eval_seen: int = field(default=40_000, metadata={
        "help": "scenes in eval_seen (evaluator training on the generator's emoji images, in scenes of its own seed stream)"})
    seed: int = field(default=0, metadata={"help": "base random seed; each split derives its own stream"})
    image_size: int = field(default=64, metadata={"help": "scene side in pixels (only 64 is supported)"})
    zipf_exponent: float = field(default=1.0, metadata={"help": "long-tail strength s of class weights (rank+5)^-s; 0 = uniform"})
    workers: int = field(default_factory=lambda: min(16, os.cpu_count() or 1), metadata={"help": "render processes (default: CPU cores, at most 16)"})
    force: bool = field(default=False, metadata={"help": "re-render scenes even if a valid cache exists"})

    def __post_init__(self) -> None:
        self.cache_dir = Path(self.cache_dir).expanduser() if self.cache_dir is not None else default_cache_dir()
        for name in SPLITS:
            n = getattr(self, name)
            if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 2_000_000:
                raise WorldError(f"WorldConfig.{name} = {n!r}: must be an int in [1, 2000000]")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise WorldError(f"WorldConfig.seed = {self.seed!r}: must be an int >= 0")
        if self.image_size != 64:
            raise WorldError(f"WorldConfig.image_size = {self.image_size!r}: only 64 is supported (sprites are 64 px)")
        if not isinstance(self.zipf_exponent, (int, float)) or not 0.0 <= self.zipf_exponent <= 3.0:
            raise WorldError(f"WorldConfig.zipf_exponent = {self.zipf_exponent!r}: must be in [0, 3]")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or not 1 <= self.workers <= 64:
            raise WorldError(f"WorldConfig.workers = {self.workers!r}: must be an int in [1, 64]")
