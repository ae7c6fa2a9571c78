"""benchmarks/method_sweep.py: the grid is the cartesian product with typed values, and its options
are ones the method's config accepts (a typo must fail before hours of training, not after)."""
from __future__ import annotations

import pytest
from conftest import load_benchmark

from personify.methods import get_method


@pytest.fixture(scope="module")
def sweep():
    return load_benchmark("method_sweep")


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


def _fake_eval(monkeypatch, dino_by_lr):
    """run_eval stand-in: writes the results.json that a real run would, DINO chosen by learning rate."""
    import json
    from pathlib import Path

    import personify.evaluation.run as run

    def fake(cfg, ev, base_t):
        base_t.update({s: 0.5 for s in cfg.subject})
        o = {"dino": dino_by_lr[cfg.method_options["learning_rate"]], "clip_i": 0.2, "clip_t": 0.4}
        Path(cfg.out).mkdir(parents=True)
        (Path(cfg.out) / "results.json").write_text(json.dumps({"summary": {cfg.method[0]: {"overall": o, "normalized": {"clip_t": 0.8}}}}))

    monkeypatch.setattr(run, "run_eval", fake)
    monkeypatch.setattr(run, "load_evaluator", lambda cfg: object())


def test_sweeps_add_rows_and_refuse_another_setting_in_the_same_folder(sweep, monkeypatch, tmp_path, capsys):
    import json
    import sys

    argv = ["method_sweep.py", "--method", "lora", "--out", str(tmp_path), "--subjects", "dog2"]
    _fake_eval(monkeypatch, {1e-4: 0.40, 1e-3: 0.50})
    monkeypatch.setattr(sys, "argv", argv + ["--grid", "learning_rate=1e-4,1e-3"])
    sweep.main()
    _fake_eval(monkeypatch, {1e-3: 0.55})  # a rerun of one setting replaces its row
    monkeypatch.setattr(sys, "argv", argv + ["--grid", "learning_rate=1e-3"])
    (tmp_path / "lora" / "learning_rate=0.001").rename(tmp_path / "old")
    sweep.main()
    data = json.loads((tmp_path / "lora" / "sweep.json").read_text())
    assert [(r["options"]["learning_rate"], r["overall"]["dino"]) for r in data["rows"]] == [(1e-4, 0.40), (1e-3, 0.55)]
    assert len(data["commands"]) == 2
    monkeypatch.setattr(sys, "argv", argv[:-1] + ["cat2", "--grid", "learning_rate=1e-3"])
    monkeypatch.setattr(sweep, "run_grid", lambda *a: pytest.fail("trained into a folder of another sweep"))
    with pytest.raises(SystemExit, match="other subjects"):
        sweep.main()
    assert "| 0.001 | 0.550 |" in capsys.readouterr().out
