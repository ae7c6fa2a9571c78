"""Put the 16-channel VAE and a UNet checkpoint (fp16, as shipped) into a code snapshot's assets/mini-sd,
and record their provenance in personify_mini.json. usage: build_candidate.py SNAPSHOT VAE_MODEL_DIR UNET_RUN_DIR"""
import json, sys
from pathlib import Path
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

snap, vae_dir, unet_run = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
dst = snap / "src/personify/assets/mini-sd"
for sub, cls, src in (("vae", AutoencoderKL, vae_dir), ("unet", UNet2DConditionModel, unet_run / "model")):
    m = cls.from_pretrained(src).to(torch.float16)
    for f in (dst / sub).iterdir():
        f.unlink()
    m.save_pretrained(dst / sub)
meta = json.loads((dst / "personify_mini.json").read_text())
vst = json.loads((vae_dir.parent / "status.json").read_text())
ust = json.loads((unet_run / "status.json").read_text())
vcfg = json.loads((vae_dir / "config.json").read_text())
meta["vae"] = {"stage": "vae", "run_root": f"{vae_dir.parent.parent} (2 threads)", "step": vst["step"],
               "init_from": "generator v5's VAE (8x8x4), widened to 16 latent channels (--grow_latent 16)",
               "grow_latent": 16, "crop_size": 64, "batch_size": 8, "lr": 2e-4, "latent_channels": vcfg["latent_channels"],
               "scaling_factor": vcfg["scaling_factor"], "layers_per_block": vcfg["layers_per_block"],
               **{k: vst[k] for k in ("val_psnr", "val_l1") if k in vst}}
meta["unet"] = {"stage": "unet", "step_total": 47242 + ust["step"], "steps_on_w16_latents": ust["step"],
                "unet_params": ust.get("unet_params"), "run_root": f"{unet_run.parent} (2 threads, one run)", "time": ust["time"],
                "init_from": "generator v5's UNet (47,242 steps), widened to 16 latent channels (new conv_in inputs and conv_out rows zero)",
                "vae_latents": "this folder's VAE (16 channels, scaling_factor kept from v5)", "train_images": 20000,
                "recipe": "batch 64, lr 2e-4 after 200 warmup steps, linear decay to 0 over the last 2,500 steps, EMA 0.999, min-SNR 5, cond dropout 0.1"}
(dst / "personify_mini.json").write_text(json.dumps(meta, indent=1) + "\n")
print("candidate in", dst, "unet step", ust["step"], "vae step", vst["step"])
