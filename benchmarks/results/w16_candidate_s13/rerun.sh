#!/usr/bin/env bash
# Full rerun on candidate W2 (written in session 13, run in session 14).
# usage: LANE=prep|A|B [R=...] [VAE=...] [UNET=...] ./rerun.sh   (prep once, then A and B in parallel)
# R: output root; VAE: the trained VAE model folder; UNET: the UNet run folder (holds model/ and status.json)
set -euo pipefail
R=${R:-/work/runs/s14/W2}; C=$R/code
VAE=${VAE:-/work/runs/s14/vae_w16/vae/model}; UNET=${UNET:-/work/runs/s14/unet_w16/unet}
PY=/work/main/.venv/bin/python
export OMP_NUM_THREADS=1 PYTHONPATH=$C/src
[ "$LANE" = prep ] || grep -q '"latent_channels": 16' $C/src/personify/assets/mini-sd/vae/config.json || { echo "candidate not built"; exit 1; }
case $LANE in
prep)
  rm -rf $R && mkdir -p $R && git clone -q /work/main $C && (cd $C && git log -1 --oneline)
  $PY /work/main/benchmarks/results/w16_candidate_s13/build_candidate.py $C $VAE $UNET
  cd $C && $PY -c "from personify.models import load_pipeline as L; p=L('mini'); print('hash', p.personify_base_hash, p.unet.config.in_channels)"
  ;;
A)
  cd $C
  $PY benchmarks/incontext_mini.py --train-out $R/app --train-steps 9000 --batch-size 8 --n-demos 3 --lr 1e-3 --save-every 250 \
    --generic-p 0.5 --init src/personify/assets/apprentice/apprentice.safetensors --ship $R/ship_app --eval-out $R/app/eval \
    --baseline $R/results/results.json --baseline-train $R/results/train \
    --subjects backpack cat cat2 colorful_sneaker dog dog2 duck_toy robot_toy teapot vase --n-per-prompt 4 --demo-cfg both cond \
    --doc $R/results_app.md
  ;;
B)
  cd $C
  $PY benchmarks/mini_dreambench.py --methods dreambooth lora textual_inversion custom_diffusion --subjects dog cat backpack teapot \
    --out $R/results --doc $R/results_A.md
  $PY -m personify.evaluation.mini_quality --model mini --per-background 96 --out $R/img --json $R/mini_quality_bg96.json
  $PY benchmarks/custom_diffusion_pairs.py --out $R/cd_pairs --doc $R/results_B.md
  $PY benchmarks/seedselect_longtail.py --n-per-class 4 --out $R/seedselect_longtail --doc $R/results_B.md
  $PY benchmarks/vae_decoder.py --model src/personify/assets/mini-sd --decoder w16=src/personify/assets/mini-sd/vae --per-class 16 \
    --json $R/screen.json
  ;;
esac
echo "lane $LANE done $(date -u)"
