"""Run by test_distributed.py under `accelerate launch --multi_gpu --num_processes 2` (CPU: MULTI_CPU over gloo): train DreamBooth on
the tiny model with a per-process batch of 1 (global batch 2)."""
import sys

import personify.data.class_images as ci

import personify

ci.CLASS_STEPS = 2
images, out = sys.argv[1], sys.argv[2]
personify.train(
    "dreambooth", images=images, out=out, model="tiny", class_word="dog", num_class_images=2, steps=3,
    batch_size=1, resolution=32, progress=False, save_precision="fp32", learning_rate=1e-3,
)
