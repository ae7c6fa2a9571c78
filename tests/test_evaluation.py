"""DreamBench protocol: prompt parsing, metric arithmetic, the eval command and its report."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from personify.cli import main
from personify.errors import PersonifyError
from personify.evaluation.dreambench import load_mini, mean_pairwise, parse_prompts_file, strip_identifier

SHARED = Path(__file__).resolve().parents[2] / "shared" / "dreambench"


@pytest.mark.skipif(not (SHARED / "prompts_and_classes.txt").is_file(), reason="shared/dreambench not beside the checkout")
def test_parse_real_dreambench_prompts():
    classes, obj, live = parse_prompts_file(SHARED / "prompts_and_classes.txt")
    assert len(classes) == 30 and ("dog", "dog") in classes and ("bear_plushie", "stuffed animal") in classes
    assert obj[0] == "a {0} {1} in the jungle" and obj[-1] == "a cube shaped {0} {1}"
    assert "wearing a red hat" in live[10]


def test_mini_benchmark_mirrors_dreambench():
    bench = load_mini()
    assert len(bench.subjects) == 30
    live = [s for s in bench.subjects.values() if s.live]
    assert live and all(s.class_word in ("dog", "cat") for s in live)
    assert all(4 <= len(s.images) <= 6 for s in bench.subjects.values())
    kinds = [k for _, k in bench.prompts(live[0])]
    assert kinds.count("accessorization") == 10 and kinds.count("property") == 5


def test_strip_identifier():
    assert strip_identifier("a {0} {1} in the jungle", "dog") == "a dog in the jungle"
    assert strip_identifier("a red {0} {1}", "teapot") == "a red teapot"


def test_metric_arithmetic():
    a = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    assert mean_pairwise(a, a) == pytest.approx(0.5)  # diagonal 1, off-diagonal 0
    assert mean_pairwise(a, a, exclude_diagonal=True) == pytest.approx(0.0)


def test_real_benchmark_errors(tmp_path):
    from personify.evaluation.dreambench import load_real

    with pytest.raises(PersonifyError, match="prompts file not found"):
        load_real(tmp_path / "missing.txt", tmp_path)
    if (SHARED / "prompts_and_classes.txt").is_file():
        (tmp_path / "dog").mkdir()
        from conftest import make_subject

        make_subject(tmp_path / "dog", n=2)
        with pytest.raises(PersonifyError, match="2 images, DreamBench subjects have 4-6"):
            load_real(SHARED / "prompts_and_classes.txt", tmp_path)


def test_eval_command_writes_report(tmp_path, monkeypatch):
    monkeypatch.setattr("personify.data.class_images.CLASS_STEPS", 2)
    from personify.evaluation import tiny_clip, tiny_dino

    c, d = tiny_clip(), tiny_dino()
    c.model.save_pretrained(tmp_path / "clip")
    c.tokenizer.save_pretrained(tmp_path / "clip")
    d.model.save_pretrained(tmp_path / "dino")
    bench = load_mini()
    subj = next(s for s in bench.subjects.values() if s.live)
    assert main(["train", "--method", "dreambooth", "--images", str(subj.images[0].parent), "--model", "tiny", "--class-word",
                 subj.class_word, "--steps", "1", "--prior-weight", "0", "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    args = ["eval", "--concept", str(tmp_path / "r" / "concept.safetensors"), "--subject", subj.name, "--model", "tiny",
            "--clip", str(tmp_path / "clip"), "--dino", str(tmp_path / "dino"), "--n-per-prompt", "1", "--steps", "2", "--out", str(tmp_path / "ev")]
    assert main(args) == 0
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    s = res["summary"]["dreambooth:r"]
    for m in ("dino", "clip_i", "clip_t"):
        assert -1.0 <= s["overall"][m] <= 1.0
    assert set(s["per_kind"]) == {"recontextualization", "accessorization", "property"}
    assert s["normalized"]["dino"] == pytest.approx(s["overall"]["dino"] / s["upper"]["dino"])
    html = (tmp_path / "ev" / "report.html").read_text()
    assert "data:image/png;base64," in html and "accessorization" in html and (tmp_path / "ev" / "chart.png").is_file()


def test_missing_evaluator_weights(tmp_path, capsys):
    code = main(["eval", "--concept", "x.safetensors", "--subject", "dog", "--clip", str(tmp_path / "none"), "--dino", str(tmp_path / "none")])
    assert code == 2 and "--clip" in capsys.readouterr().err


def test_frechet_distance():
    import numpy as np

    from personify.evaluation.mini_quality import frechet

    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    b = rng.normal(size=(4000, 3))
    assert frechet(a, b) < 0.02
    assert frechet(a, b + np.array([2.0, 0, 0])) == pytest.approx(4.0, abs=0.3)  # |Δμ|² (+ sampling noise)
