"""Assemble the trained stages into a stock diffusers folder (and the evaluators into their own).

    export_pipeline(run_root, out)   # model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/
    export_evaluators(run_root, out) # clip/ (CLIPModel), dino/ (ViTModel), classifier/ (safetensors + json)
    verify_pipeline(out)             # StableDiffusionPipeline.from_pretrained(out) -> one 64x64 image

Weights are written as fp16 safetensors (load them with ``torch_dtype=torch.float32`` on CPU,
where fp16 convolutions are slow or unsupported; diffusers/transformers upcast on load).

CLI: ``python -m personify.mini.export --run_root /work/runs/mini --out DIR [--evaluators_out DIR]``.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from .config import DEFAULT_RUN_ROOT, UnetConfig


def _stage_config(run_root: Path, stage: str) -> dict:
    p = run_root / stage / "config.json"
    return json.loads(p.read_text()) if p.exists() else {}


def _fp16(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    return module.to(dtype)


def export_pipeline(run_root: str | Path = DEFAULT_RUN_ROOT, out: str | Path = "mini-sd", dtype: torch.dtype = torch.float16,
                    clip_dir: str | Path | None = None, vae_dir: str | Path | None = None,
                    unet_dir: str | Path | None = None) -> Path:
    """Write a StableDiffusionPipeline folder built from ``<run_root>/{clip,vae,unet}/model``."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer
    from transformers.utils import logging as hf_logging

    run_root, out = Path(run_root), Path(out)
    clip_dir = Path(clip_dir) if clip_dir else run_root / "clip" / "model"
    vae_dir = Path(vae_dir) if vae_dir else run_root / "vae" / "model"
    unet_dir = Path(unet_dir) if unet_dir else run_root / "unet" / "model"
    ucfg = {k: v for k, v in _stage_config(run_root, "unet").items() if k in UnetConfig.__dataclass_fields__}
    ucfg.pop("block_out_channels", None)
    sched_cfg = UnetConfig(**{k: v for k, v in ucfg.items() if k in ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end")})

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # loading the text tower out of a full CLIPModel lists the vision keys
    try:
        text_encoder = CLIPTextModel.from_pretrained(clip_dir)
    finally:
        hf_logging.set_verbosity(verbosity)
    tokenizer = CLIPTokenizer.from_pretrained(clip_dir)
    vae = AutoencoderKL.from_pretrained(vae_dir)
    unet = UNet2DConditionModel.from_pretrained(unet_dir)
    from .models import build_inference_scheduler

    pipe = StableDiffusionPipeline(
        vae=_fp16(vae, dtype), text_encoder=_fp16(text_encoder, dtype), tokenizer=tokenizer, unet=_fp16(unet, dtype),
        scheduler=build_inference_scheduler(sched_cfg), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    return _finish(tmp, out, "personify_mini.json", run_root, ("clip", "vae", "unet"), {"source_run_root": str(run_root)})


def _finish(tmp: Path, out: Path, info_name: str, stages_root: Path, stages: tuple[str, ...], info: dict) -> Path:
    """Record each stage's status.json beside the export, then swap `tmp` into place."""
    for stage in stages:
        st = stages_root / stage / "status.json"
        if st.exists():
            info[stage] = json.loads(st.read_text())
    (tmp / info_name).write_text(json.dumps(info, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def export_evaluators(run_root: str | Path = DEFAULT_RUN_ROOT, out: str | Path = "mini-eval",
                      dtype: torch.dtype = torch.float16) -> Path:
    """Copy the evaluators (CLIPModel, DINO ViTModel, classifier) to ``out`` in ``dtype``."""
    from transformers import CLIPModel, CLIPTokenizer, ViTModel

    from .models import MiniClassifier

    run_root, out = Path(run_root), Path(out)
    src = run_root / "evaluators"
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if (src / "clip" / "model").exists():
        d = src / "clip" / "model"
        CLIPModel.from_pretrained(d).to(dtype).save_pretrained(tmp / "clip")
        CLIPTokenizer.from_pretrained(d).save_pretrained(tmp / "clip")
        shutil.copy(d / "preprocessor_config.json", tmp / "clip" / "preprocessor_config.json")
    if (src / "dino" / "model").exists():
        d = src / "dino" / "model"
        ViTModel.from_pretrained(d, add_pooling_layer=False).to(dtype).save_pretrained(tmp / "dino")
        shutil.copy(d / "preprocessor_config.json", tmp / "dino" / "preprocessor_config.json")
    if (src / "classifier" / "model").exists():
        MiniClassifier.from_pretrained(src / "classifier" / "model").save_pretrained(tmp / "classifier", dtype=dtype)
    return _finish(tmp, out, "personify_mini_evaluators.json", src, ("clip", "dino", "classifier"), {})


@torch.no_grad()
def verify_pipeline(path: str | Path, prompt: str = "", steps: int = 10, seed: int = 0):
    """Load with stock diffusers (no personify code involved) and generate one 64x64 image."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(path), safety_checker=None, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    img = pipe(prompt or "an emoji", height=64, width=64, num_inference_steps=steps, guidance_scale=5.0,
               generator=torch.Generator().manual_seed(seed)).images[0]
    if img.size != (64, 64):
        raise AssertionError(f"expected a 64x64 image, got {img.size}")
    return img


def weights_size_bytes(path: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*.safetensors"))


def cli(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="personify.mini.export")
    ap.add_argument("--run_root", default=DEFAULT_RUN_ROOT, help="Root of the run state (stages' model/ folders).")
    ap.add_argument("--out", required=True, help="Output folder of the diffusers pipeline.")
    ap.add_argument("--evaluators_out", default="", help="Also export the evaluators to this folder.")
    ap.add_argument("--fp32", action="store_true", help="Keep fp32 weights instead of fp16.")
    ap.add_argument("--verify", action="store_true", help="Load with StableDiffusionPipeline and render one image.")
    for stage in ("clip", "vae", "unet"):  # stages continued in other run roots (e.g. a carried-over UNet)
        ap.add_argument(f"--{stage}_dir", default=None, help=f"{stage} model folder (default: <run_root>/{stage}/model)")
    a = ap.parse_args(argv)
    dtype = torch.float32 if a.fp32 else torch.float16
    out = export_pipeline(a.run_root, a.out, dtype, clip_dir=a.clip_dir, vae_dir=a.vae_dir, unet_dir=a.unet_dir)
    print(f"pipeline -> {out} ({weights_size_bytes(out) / 1e6:.1f} MB of weights)")
    if a.evaluators_out:
        ev = export_evaluators(a.run_root, a.evaluators_out, dtype)
        print(f"evaluators -> {ev} ({weights_size_bytes(ev) / 1e6:.1f} MB of weights)")
    if a.verify:
        img = verify_pipeline(out)
        img.save(Path(a.out) / "verify.png")
        print(f"verified: StableDiffusionPipeline.from_pretrained generated {img.size} -> {Path(a.out) / 'verify.png'}")


if __name__ == "__main__":
    cli()
