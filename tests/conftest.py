"""Shared fixtures: tiny random SD components built in code, and small subject folders. No network."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ["HF_HUB_OFFLINE"] = "1"


def make_subject(folder: Path, n: int = 3, size: int = 48, seed: int = 0) -> Path:
    """`n` photos of a 'subject': a coloured square on a varying background."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        a = np.full((size, size, 3), rng.integers(0, 255, 3), np.uint8)
        o = size // 4 + i
        a[o : o + size // 2, o : o + size // 2] = (220, 40, 40)
        Image.fromarray(a).save(folder / f"{i:02d}.png")
    return folder


@pytest.fixture
def subject_dir(tmp_path: Path) -> Path:
    return make_subject(tmp_path / "subject")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSONIFY_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def tiny_pipe():
    from personify.models import load_pipeline

    return load_pipeline("tiny")
