"""Put candidate D's UNet (fp16, as shipped) into a code snapshot's assets/mini-sd and record its provenance in
personify_mini.json; VAE, text encoder, tokenizer and scheduler stay v6's. usage: build_candidate.py SNAPSHOT UNET_RUN_DIR"""
import json, sys
from pathlib import Path
import torch
from diffusers import UNet2DConditionModel

snap, unet_run = Path(sys.argv[1]), Path(sys.argv[2])
dst = snap / "src/personify/assets/mini-sd"
m = UNet2DConditionModel.from_pretrained(unet_run / "model").to(torch.float16)
for f in (dst / "unet").iterdir():
    f.unlink()
m.save_pretrained(dst / "unet")
meta = json.loads((dst / "personify_mini.json").read_text())
ust = json.loads((unet_run / "status.json").read_text())
prev = meta["unet"]
meta["unet"] = {"stage": "unet", "step_total": prev["step_total"] + ust["step"], "steps_on_all_200k": ust["step"],
                "unet_params": ust.get("unet_params", prev.get("unet_params")), "run_root": f"{unet_run.parent} (2 threads, one run)",
                "time": ust["time"], "init_from": f"generator v6's UNet ({prev['step_total']:,} steps; its last 10,146 on the first 20,000 scenes)",
                "vae_latents": "this folder's VAE (v6's, unchanged)", "train_images": 200000,
                "recipe": "batch 64, lr 1e-4 after 200 warmup steps, linear decay to 0 over the last 2,000 steps, EMA 0.999, min-SNR 5, cond dropout 0.1",
                "previous": prev}
(dst / "personify_mini.json").write_text(json.dumps(meta, indent=1) + "\n")
print("candidate in", dst, "unet step", ust["step"])
