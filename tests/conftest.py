"""Shared fixtures: tiny random SD components built in code, and small subject folders. No network."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ["HF_HUB_OFFLINE"] = "1"
ROOT = Path(__file__).resolve().parents[1]


def load_benchmark(name: str):
    """Import benchmarks/<name>.py (a script folder, not a package) as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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


def assert_same_training(a: dict, b: dict, lr: float, steps: int, atol: float = 1e-5) -> None:
    """Two runs that differ only in float summation order (accumulation, processes).

    Adam divides by sqrt(v): a weight whose gradient is ~0 can take a full ±lr step in either direction
    when the last bits of that gradient differ, so a handful of elements may differ by up to 2·lr per
    step. Everything else must agree to `atol`.
    """
    n_off, n = 0, 0
    for k in a:
        d = (a[k].float() - b[k].float()).abs()
        assert d.max() <= 2 * lr * steps + atol, (k, d.max())
        n_off += int((d > atol).sum())
        n += d.numel()
    assert n_off <= max(5, n * 1e-4), f"{n_off} of {n} weights differ by more than {atol}"


def fraction_different(a: dict, b: dict, atol: float = 1e-5) -> float:
    n_off = sum(int(((a[k].float() - b[k].float()).abs() > atol).sum()) for k in a)
    return n_off / sum(a[k].numel() for k in a)
