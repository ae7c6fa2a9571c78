"""DreamBench protocol: prompt parsing, metric arithmetic, the eval command and its report."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
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


def test_window_fidelity_finds_each_subject_in_a_two_subject_image():
    """Two subjects side by side: each subject's best window sits on its own half and scores higher
    than the whole image; window embeddings are the encoder applied to the crops; the leave-one-out
    upper bound of identical real images is 1."""
    import numpy as np
    import torch.nn.functional as F
    from PIL import Image

    from personify.evaluation.regions import best_window, subject_upper_bound, window_boxes, window_embeddings

    class Ink:  # toy encoder: mean "ink" (1 - pixel) per channel
        def image(self, x):
            return F.normalize((1 - x).mean((2, 3)), dim=-1)

    def scene(boxes):
        a = np.full((64, 64, 3), 255, np.uint8)
        for (t, l, s), c in boxes:
            a[t : t + s, l : l + s] = c
        return Image.fromarray(a)

    red, blue = (220, 40, 40), (40, 40, 220)
    enc = Ink()
    pair = scene([((20, 4, 22), red), ((24, 38, 22), blue)])
    emb = window_embeddings(enc, [pair])  # (1, R, 3)
    boxes = window_boxes(64)
    assert emb.shape == (1, len(boxes), 3) and boxes[-1] == (0, 0, 64)
    t, l, s = boxes[7]
    crop = torch.from_numpy(np.asarray(pair, np.float32)[t : t + s, l : l + s] / 255).permute(2, 0, 1)[None]
    assert torch.allclose(emb[0, 7], enc.image(crop)[0], atol=1e-6)
    for colour, left_half in ((red, True), (blue, False)):
        real = enc.image(torch.from_numpy(np.asarray(scene([((16, 16, 30), colour)]), np.float32) / 255).permute(2, 0, 1)[None])
        best, arg = best_window(emb, real)
        whole = float(emb[0, -1] @ real[0])
        t, l, s = boxes[int(arg)]
        assert float(best) > whole + 0.05 and float(best) > 0.99 and ((l + s / 2) < 32) == left_half
    same = [scene([((16, 16, 30), red)])] * 3
    assert subject_upper_bound(enc, same) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(PersonifyError, match="at least 2"):
        subject_upper_bound(enc, same[:1])


def test_vae_roundtrip_ceiling_input(tiny_pipe):
    """mini_quality's VAE ceiling classifies decode(encode(x)): same shape and range as x, batched the
    same as unbatched, and not the identity (a random VAE must change the image)."""
    from personify.evaluation.mini_quality import vae_roundtrip

    x = torch.rand(5, 3, 32, 32)
    r = vae_roundtrip(tiny_pipe.vae, x, batch=2)
    assert r.shape == x.shape and 0 <= r.min() and r.max() <= 1
    assert not r.requires_grad, "the round trip must not build a graph (it held ~20 GB on 1,000 images)"
    assert torch.allclose(r, vae_roundtrip(tiny_pipe.vae, x, batch=5), atol=1e-5)
    assert (r - x).abs().mean() > 0.05


def test_style_ceiling_set_is_balanced_like_the_generated_set():
    """mini_quality's style ceiling: equal counts per style (85% of real renders are photos), cut to the
    rarest style, first occurrences in order."""
    from personify.evaluation.mini_quality import balanced_indices

    labels = np.array([0] * 50 + [1, 2, 3] * 4 + [0] * 5)
    idx = balanced_indices(labels, 4, 10)
    assert np.bincount(labels[idx], minlength=4).tolist() == [4, 4, 4, 4]
    assert idx[:4].tolist() == [0, 1, 2, 3] and idx[4:8].tolist() == [50, 53, 56, 59]
    assert np.bincount(labels[balanced_indices(labels, 4, 2)]).tolist() == [2, 2, 2, 2]


def test_per_label_accuracy_is_per_true_label():
    from personify.evaluation.mini_quality import per_label_accuracy, style_words_mean

    truth = torch.tensor([0, 0, 1, 1, 1, 1, 2, 2])
    pred = torch.tensor([0, 1, 1, 1, 0, 1, 0, 0])
    acc = per_label_accuracy(pred, truth, ["photo", "sketch", "pixel art", "watercolor"])
    assert acc == {"photo": 0.5, "sketch": 0.75, "pixel art": 0.0}  # no watercolor samples: no entry
    assert style_words_mean(acc) == 0.375 and style_words_mean({"photo": 1.0, "sketch": 0.2}) == 0.2


class _StyleReader(torch.nn.Module):
    """A fake CLIP that reads the style from the red channel (0, 85, 170, 255 = photo, sketch, pixel
    art, watercolor) and embeds prompt k as the k-th unit vector."""

    def image(self, x):
        return torch.nn.functional.one_hot((x[:, 0, 0, 0] * 3).round().long(), 4).float()

    def __init__(self):
        super().__init__()
        self.prompts = []

    def text(self, prompts):
        self.prompts += prompts
        return torch.eye(4)[: len(prompts)]


def test_real_style_confusion_rows_are_true_styles():
    """The style ceiling's confusion matrix: balanced rows (per_style each), rows = truth, columns = the
    zero-shot choice; a render whose pixels say "watercolor" but whose label says "photo" lands in (0, 3)."""
    from personify.evaluation.dreambench import Evaluator
    from personify.evaluation.mini_quality import confusion_per_style, real_style_confusion

    style_id = np.array([-1] * 8 + [0, 1, 2] * 3)  # -1 = photo
    images = np.zeros((len(style_id), 4, 4, 3), np.uint8)
    images[..., 0] = ((style_id + 1) * 85)[:, None, None]
    images[1, ..., 0] = 255  # the second photo looks like a watercolor
    reader = _StyleReader()
    meta = {"styles": ["sketch", "pixel art", "watercolor"], "classes": ["dog", "owl"]}
    test = {"style_id": style_id, "images": images, "class_id": np.arange(len(style_id)) % 2}
    for named in (True, False):
        cm = real_style_confusion(Evaluator(reader, None), meta, test, per_style=3, named=named)
        assert cm.tolist() == [[2, 0, 0, 1], [0, 3, 0, 0], [0, 0, 3, 0], [0, 0, 0, 3]]
        assert confusion_per_style(cm, ["photo", "sketch", "pixel art", "watercolor"]) == {
            "photo": 2 / 3, "sketch": 1.0, "pixel art": 1.0, "watercolor": 1.0}
    # A transform (the VAE round trip in mini_quality) runs before the choice: here one that paints everything
    # watercolor-red, so every row lands in the last column.
    cm = real_style_confusion(Evaluator(reader, None), meta, test, per_style=3, transform=lambda x: torch.ones_like(x))
    assert cm.tolist() == [[0, 0, 0, 3]] * 4
    # named: each image is asked about its own class; otherwise the old placeholder word
    assert {"a photo of a dog", "a pencil sketch of an owl", "a watercolor painting of a dog"} <= set(reader.prompts)
    assert "a photo of something" in reader.prompts and not any("something" in p for p in reader.prompts[:8])


def test_evaluator_quality_auc():
    """benchmarks/evaluator_quality.py's pair AUC: 1 when every positive outscores every negative, 0 when
    reversed, ties count half."""
    from conftest import load_benchmark

    auc = load_benchmark("evaluator_quality").auc
    assert auc(np.array([0.9, 0.8]), np.array([0.1, 0.2, 0.3])) == 1.0
    assert auc(np.array([0.1]), np.array([0.5, 0.6])) == 0.0
    assert auc(np.array([0.5, 0.9]), np.array([0.5, 0.1])) == 0.875  # (0.5 + 1 + 1 + 1) / 4

def test_mini_quality_makes_its_out_folder_before_any_work(tmp_path):
    """A new --out folder is created up front (a run once lost minutes of sampling to a missing one)."""
    from personify.errors import PersonifyError
    from personify.evaluation.mini_quality import measure

    out = tmp_path / "new" / "img"
    with pytest.raises(PersonifyError, match="no-model"):  # the model folder is missing, so nothing is sampled
        measure(model=str(tmp_path / "no-model"), out=out)
    assert out.is_dir()


def test_half_precision_encoders_resize_other_sizes():
    """The shipped mini evaluators are fp16: crops of another size are resized in float32 (the
    antialiased bicubic kernel has no CPU half version) and embedded as the float32 model does."""
    from personify.evaluation.encoders import DINOEncoder, tiny_dino

    d = tiny_dino()
    x = torch.rand(2, 3, 48, 48)
    half = DINOEncoder(d.model.half())
    out = half.image(x)
    assert out.dtype == torch.float16 and out.shape == (2, 16)
    assert torch.allclose(out.float(), DINOEncoder(d.model.float()).image(x), atol=2e-2)
