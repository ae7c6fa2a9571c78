#!/usr/bin/env bash
# Full rerun on candidate D (session 16). usage: LANE=prep|1|2 [R=...] [UNET=...] ./rerun.sh  (prep once, then 1 and 2 in parallel)
# Lane 1: mini-DreamBench -> the shipped apprentice scored on D (needs lane 1's baseline) -> the vae_decoder screen.
# Lane 2: mini_quality -> Custom Diffusion pairs -> SeedSelect long tail.
set -euo pipefail
R=${R:-/work/runs/s16/D}; C=$R/code; UNET=${UNET:-/work/runs/s16/unet_d/unet}
HERE=$(cd "$(dirname "$0")" && pwd)
PY=/work/main/.venv/bin/python
export OMP_NUM_THREADS=1 PYTHONPATH=$C/src
case $LANE in
prep)
  rm -rf $R && mkdir -p $R && git clone -q /work/main $C && (cd $C && git log -1 --oneline)
  $PY $HERE/build_candidate.py $C $UNET
  cd $C && $PY -c "from personify.models import load_pipeline as L; p=L('mini'); print('hash', p.personify_base_hash)"
  ;;
1)
  cd $C
  $PY benchmarks/mini_dreambench.py --methods dreambooth lora textual_inversion custom_diffusion --subjects dog cat backpack teapot \
    --out $R/results --doc $R/results_A.md
  $PY benchmarks/incontext_mini.py --weights src/personify/assets/apprentice/apprentice.safetensors --allow-other-base --eval-out $R/app/eval \
    --baseline $R/results/results.json --baseline-train $R/results/train \
    --subjects backpack cat cat2 colorful_sneaker dog dog2 duck_toy robot_toy teapot vase --n-per-prompt 4 --demo-cfg both cond \
    --doc $R/results_app.md
  $PY benchmarks/vae_decoder.py --model src/personify/assets/mini-sd --decoder v6vae=src/personify/assets/mini-sd/vae --per-class 16 \
    --json $R/screen.json
  ;;
2)
  cd $C
  $PY -m personify.evaluation.mini_quality --model mini --per-background 96 --out $R/img --json $R/mini_quality_bg96.json
  $PY benchmarks/custom_diffusion_pairs.py --out $R/cd_pairs --doc $R/results_B.md
  $PY benchmarks/seedselect_longtail.py --n-per-class 4 --out $R/seedselect_longtail --doc $R/results_B.md
  ;;
esac
echo "lane $LANE done $(date -u)"
