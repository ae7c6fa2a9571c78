"""The same loop under 2 accelerate processes on CPU equals one process with the same global batch
(within float tolerance: only the gradient summation order differs).

`accelerate launch --cpu --num_processes 2` starts a single process unless MPI is configured
(accelerate's simple launcher); `--multi_gpu` starts 2 processes through torchrun, and on a machine
without CUDA they run as MULTI_CPU over gloo. That is what this test launches."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import personify
from personify.artifact import read_concept

from conftest import assert_same_training, fraction_different

HERE = Path(__file__).parent


@pytest.fixture(autouse=True)
def fast_class_images(monkeypatch):
    monkeypatch.setattr("personify.data.class_images.CLASS_STEPS", 2)


def test_two_processes_match_one(subject_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
        str(HERE / "dist_train.py"), str(subject_dir), str(tmp_path / "two"),
    ]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    two, meta2 = read_concept(tmp_path / "two" / "concept.safetensors")
    assert meta2["config"]["train"]["batch_size"] == 1

    one, _ = read_concept(personify.train(
        "dreambooth", images=subject_dir, out=str(tmp_path / "one"), model="tiny", class_word="dog", num_class_images=2,
        steps=3, batch_size=2, resolution=32, progress=False, save_precision="fp32", learning_rate=1e-3,
    ))
    assert_same_training(one, two, lr=1e-3, steps=3)
    base = {f"unet.{k}": v for k, v in personify.load_pipeline("tiny").unet.state_dict().items()}
    assert fraction_different(one, base) > 0.5  # training moved most weights: the agreement is not vacuous
