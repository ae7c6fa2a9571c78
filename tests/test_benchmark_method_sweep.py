"""benchmarks/method_sweep.py: the grid is the cartesian product with typed values, and its options
are ones the method's config accepts (a typo must fail before hours of training, not after)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from personify.methods import get_method

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sweep():
    spec = importlib.util.spec_from_file_location("method_sweep", ROOT / "benchmarks" / "method_sweep.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_grid_is_the_typed_cartesian_product(sweep):
    grid = sweep.parse_grid(["learning_rate=1e-5,2e-5", "prior_weight=1,0.3", "steps=800"])
    assert grid == [{"learning_rate": 1e-5, "prior_weight": 1, "steps": 800}, {"learning_rate": 1e-5, "prior_weight": 0.3, "steps": 800},
                    {"learning_rate": 2e-5, "prior_weight": 1, "steps": 800}, {"learning_rate": 2e-5, "prior_weight": 0.3, "steps": 800}]
    assert isinstance(grid[0]["steps"], int) and sweep.parse_grid(["identifier=sks"]) == [{"identifier": "sks"}]
    with pytest.raises(SystemExit, match="NAME=V1,V2"):
        sweep.parse_grid(["learning_rate"])


def test_a_misspelt_option_fails_before_any_training(sweep, monkeypatch, tmp_path):
    import sys

    import personify.evaluation.run as run

    monkeypatch.setattr(run, "run_eval", lambda *a, **k: pytest.fail("trained despite a bad grid"))
    for bad in ("learnin_rate=1e-4", "learning_rate=-1"):
        monkeypatch.setattr(sys, "argv", ["method_sweep.py", "--method", "lora", "--grid", "prior_weight=0.3", bad, "--out", str(tmp_path)])
        with pytest.raises(Exception, match="learnin_rate|learning_rate"):
            sweep.main()
    assert get_method("lora").Config(class_word="dog", **sweep.parse_grid(["learning_rate=1e-4", "steps=10"])[0]).steps == 10


def test_table_sorts_rows_and_marks_unswept_options_default(sweep):
    row = lambda opts, dino: {"options": opts, "overall": {"dino": dino, "clip_i": 0.2, "clip_t": 0.4}, "normalized": {"clip_t": 0.9}}
    data = {"commands": [["benchmarks/method_sweep.py", "--method", "lora"]], "subjects": ["dog2"], "n_per_prompt": 2, "seed": 0,
            "base_clip_t": {"dog2": 0.5}, "rows": [row({"learning_rate": 1e-3}, 0.52), row({"learning_rate": 1e-4, "rank": 8}, 0.47)]}
    lines = sweep.table("lora", data).splitlines()
    body = [ln for ln in lines if ln.startswith("| 0.")]
    assert body == ["| 0.0001 | 8 | 0.470 | 0.200 | 0.400 | 0.900 |", "| 0.001 | default | 0.520 | 0.200 | 0.400 | 0.900 |"]
