#!/usr/bin/env bash
# Candidate D's UNet (session 16; rebuilt in session 18 from this file): generator v6's UNet continued 6,000 steps
# on all 200,000 gen_train scenes, VAE and text encoder v6's (fp32 copies of the shipped fp16 weights).
# usage: R=/work/runs/s18 benchmarks/results/unet_d_s16/train_unet.sh   (needs `personify world build` first)
set -euo pipefail
R=${R:-/work/runs/s16}; A=src/personify/assets/mini-sd; PY=${PY:-.venv/bin/python}
cd "$(dirname "$0")/../../.."
[ -e $R/vae32/config.json ] || $PY - "$R" <<'PYEOF'
import sys
from diffusers import AutoencoderKL
from transformers import CLIPTextModel, CLIPTokenizer
r, a = sys.argv[1], "src/personify/assets/mini-sd"
AutoencoderKL.from_pretrained(a + "/vae").float().save_pretrained(r + "/vae32")
CLIPTextModel.from_pretrained(a + "/text_encoder").float().save_pretrained(r + "/clip32")
CLIPTokenizer.from_pretrained(a + "/tokenizer").save_pretrained(r + "/clip32")
PYEOF
exec .venv/bin/personify mini train --stage unet --run_root $R/unet_d --threads 2 \
  --init_from $A/unet --vae_dir $R/vae32 --clip_dir $R/clip32 \
  --batch_size 64 --lr 1e-4 --warmup_steps 200 --max_train_images 200000 --max_steps 6000 --decay_steps 2000
