"""benchmarks/diffusers_scripts.py, pure helpers only: no diffusers checkout, no torchvision, nothing timed."""
from __future__ import annotations

import argparse

import pytest
from conftest import load_benchmark

from personify.cli import _layered
from personify.config import add_arguments
from personify.methods import get_method
from personify.training.config import TrainConfig


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("diffusers_scripts")


def test_steps_per_second_leaves_out_warm_up(bench):
    stamps = [0.0, 5.0, 5.5, 6.0, 6.5]  # a slow first step, then 2 steps/s
    assert bench.steps_per_second(stamps, skip=1) == pytest.approx(2.0)
    assert bench.steps_per_second(stamps, skip=0) == pytest.approx(4 / 6.5)
    with pytest.raises(ValueError, match="more than 2"):
        bench.steps_per_second(stamps[:2], skip=1)


def test_summarize_takes_median_speed_and_highest_memory(bench):
    runs = [{"steps_per_s": s, "peak_mib": m, "wall_s": w, "memory": "peak_rss"} for s, m, w in [(3.0, 500, 9), (1.0, 700, 10), (2.0, 600, 20)]]
    out = bench.summarize(runs)
    assert (out["steps_per_s"], out["peak_mib"], out["wall_s"], out["runs"]) == (2.0, 700, 10, runs)


def _flags(cmd: list[str]) -> dict[str, str | bool]:
    out: dict[str, str | bool] = {}
    for i, a in enumerate(cmd):
        if a.startswith("--"):
            nxt = cmd[i + 1] if i + 1 < len(cmd) else "--"
            out[a] = True if nxt.startswith("--") else nxt
    return out


@pytest.mark.parametrize("method,prior", [("dreambooth", False), ("dreambooth", True), ("lora", False), ("lora", True), ("textual_inversion", False)])
def test_both_sides_get_the_same_settings(bench, tmp_path, method, prior):
    class_dir = None
    if prior:
        class_dir = tmp_path / "class"
        class_dir.mkdir()
        for i in range(3):
            (class_dir / f"{i}.png").write_bytes(b"")
        class_dir = str(class_dir)
    common = dict(model="/m", images="/img", class_word="dog", steps=37, batch=5, resolution=64, seed=3, class_dir=class_dir)
    d = bench.diffusers_cmd(method, "/diffusers", out="/d", **common)
    p = bench.personify_cmd(method, out="/p", **common)
    assert d[0] == f"/diffusers/{bench.SCRIPTS[method]}" and p[:5] == ["-m", "personify.cli", "train", "--method", method]

    cls = get_method(method)
    parser = argparse.ArgumentParser()
    add_arguments(parser, TrainConfig)
    add_arguments(parser, cls.Config)
    ns = parser.parse_args(p[5:])  # every flag is one personify accepts
    t, m = _layered(TrainConfig, {}, ns, "test"), _layered(cls.Config, {}, ns, "test")
    f = _flags(d)
    assert (f["--pretrained_model_name_or_path"], t.model) == ("/m", "/m")
    assert int(f["--max_train_steps"]) == m.steps == 37
    assert int(f["--train_batch_size"]) == t.batch_size == 5 and t.gradient_accumulation == 1
    assert int(f["--resolution"]) == t.resolution == 64 and f["--center_crop"] is True and t.center_crop
    assert float(f["--learning_rate"]) == m.learning_rate == bench.LR[method]
    assert int(f["--seed"]) == t.seed == 3
    assert (f["--lr_scheduler"], int(f["--lr_warmup_steps"])) == ("constant", 0) and (t.lr_schedule, t.lr_warmup_steps) == ("constant", 0)
    assert f["--mixed_precision"] == t.mixed_precision == "no" and not t.gradient_checkpointing and not t.scale_lr
    assert t.weight_decay == 1e-2  # diffusers' adam_weight_decay default
    assert int(f["--checkpointing_steps"]) > 37 and t.checkpoint_every > 37  # no mid-run checkpoints on either side
    if method == "textual_inversion":
        assert (f["--train_data_dir"], t.images) == ("/img", "/img")
        assert f["--placeholder_token"] == m.placeholder and f["--initializer_token"] == m.init_word == "dog"
        assert int(f["--save_steps"]) > 37 and t.max_grad_norm == 0 and t.flip  # diffusers' TI: no clipping, random flips
        return
    assert (f["--instance_data_dir"], t.images) == ("/img", "/img") and t.max_grad_norm == 1.0 and not t.flip
    one = lambda v: v[0] if isinstance(v, list) else v  # one subject (the config also takes lists)
    assert f["--instance_prompt"] == m.instance_template.format(identifier=one(m.identifier), class_word=one(m.class_word)) == "a sks dog"
    if prior:
        assert f["--with_prior_preservation"] is True and float(f["--prior_loss_weight"]) == m.prior_weight == 1.0
        assert f["--class_data_dir"] == m.class_images == class_dir and int(f["--num_class_images"]) == m.num_class_images == 3
        assert f["--class_prompt"] == "a photo of a dog" and m.class_prompt is None  # personify's default class prompt
    else:
        assert "--with_prior_preservation" not in f and m.prior_weight == 0
    if method == "lora":
        assert m.rank == 4 and m.alpha is None and m.dropout == 0  # diffusers' defaults: rank 4, alpha = rank
