#!/usr/bin/env bash
# Full rerun on candidate D (session 16). usage: LANE=prep|1|2 [R=...] [UNET=...] ./rerun.sh  (prep once, then 1 and 2 in parallel)
# Lane 1: mini-DreamBench -> the shipped apprentice scored on D (needs lane 1's baseline) -> the vae_decoder screen.
# Lane 2: mini_quality -> Custom Diffusion pairs -> SeedSelect long tail.
# LANE=worker (session 17): the same six jobs as one queue that two workers drain in order, so neither core idles;
# the queue order puts cd_pairs third, so the apprentice job (which needs mini-DreamBench's results) always
# starts after mini-DreamBench has finished.
set -euo pipefail
R=${R:-/work/runs/s16/D}; C=$R/code; UNET=${UNET:-/work/runs/s16/unet_d/unet}
HERE=$(cd "$(dirname "$0")" && pwd)
PY=/work/main/.venv/bin/python
export OMP_NUM_THREADS=1 PYTHONPATH=$C/src
job() {  # one of the six jobs, by name, run in the snapshot
  cd $C
  case $1 in
  dreambench) $PY benchmarks/mini_dreambench.py --methods dreambooth lora textual_inversion custom_diffusion --subjects dog cat backpack teapot \
    --out $R/results --doc $R/results_A.md ;;
  quality) $PY -m personify.evaluation.mini_quality --model mini --per-background 96 --out $R/img --json $R/mini_quality_bg96.json ;;
  cd_pairs) $PY benchmarks/custom_diffusion_pairs.py --out $R/cd_pairs --doc $R/results_B.md ;;
  app) while [ ! -e $R/done_dreambench ]; do sleep 20; done  # its baseline
    $PY benchmarks/incontext_mini.py --weights src/personify/assets/apprentice/apprentice.safetensors --allow-other-base --eval-out $R/app/eval \
    --baseline $R/results/results.json --baseline-train $R/results/train \
    --subjects backpack cat cat2 colorful_sneaker dog dog2 duck_toy robot_toy teapot vase --n-per-prompt 4 --demo-cfg both cond \
    --doc $R/results_app.md ;;
  seedselect) $PY benchmarks/seedselect_longtail.py --n-per-class 4 --out $R/seedselect_longtail --doc $R/results_B.md ;;
  screen) $PY benchmarks/vae_decoder.py --model src/personify/assets/mini-sd --decoder v6vae=src/personify/assets/mini-sd/vae --per-class 16 \
    --json $R/screen.json ;;
  esac
}
case $LANE in
worker)  # run two: LANE=worker ./rerun.sh & LANE=worker ./rerun.sh &
  Q=(dreambench quality cd_pairs app seedselect screen)
  while true; do
    i=$(flock $R/queue.lock bash -c 'n=$(cat '$R'/queue.next 2>/dev/null || echo 0); echo $((n+1)) > '$R'/queue.next; echo $n')
    [ "$i" -lt ${#Q[@]} ] || break
    echo "job ${Q[$i]} start $(date -u +%H:%M:%S)"; (job ${Q[$i]}) > $R/job_${Q[$i]}.log 2>&1 && touch $R/done_${Q[$i]} && echo "job ${Q[$i]} done $(date -u +%H:%M:%S)" \
      || echo "job ${Q[$i]} FAILED $(date -u +%H:%M:%S)"
  done
  ;;
prep)
  rm -rf $R && mkdir -p $R && git clone -q /work/main $C && (cd $C && git log -1 --oneline)
  $PY $HERE/build_candidate.py $C $UNET
  cd $C && $PY -c "from personify.models import load_pipeline as L; p=L('mini'); print('hash', p.personify_base_hash)"
  ;;
1) for j in dreambench app screen; do job $j; touch $R/done_$j; done ;;
2) for j in quality cd_pairs seedselect; do job $j; done ;;
esac
echo "lane $LANE done $(date -u)"
