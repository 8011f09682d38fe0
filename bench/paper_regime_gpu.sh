#!/usr/bin/env bash
# The paper's regime (docs/paper-regime.md) on one GPU: ALL-CNN-C with dropout, Fashion-MNIST padded to
# 32x32, the methods and protocol of `python bench/convergence.py --regime paper`, 50 epochs with a
# x0.1 decay at epoch 40, every run of a stage side by side on the one GPU. Under 9 minutes in all.
#
#   bash bench/paper_regime_gpu.sh OUT_DIR               # on the GPU machine (H100 / H200)
#   bash bench/paper_regime_gpu.sh --cpu-smoke OUT_DIR   # the same script, tiny, on the CPU (< 1 minute)
#
# Needs Fashion-MNIST's four .gz files in ./data/fashion-mnist (ignored by git) or anywhere supportnet
# looks; on the development machine: `mkdir -p data && cp -r /usr/share/datasets/fashion-mnist data/`,
# then call the device tool with carry=["data"] and a timeout_s of about 560 (BUDGET_S + start-up). Writes bench/results/convergence-allcnn-gpu.{json,md}
# and its figures, and copies them, with the log, into OUT_DIR (what the device tool brings back).
#
# Budget (estimated, not yet measured on a GPU): the H100's ALL-CNN-C training throughput at batch 256,
# one process (docs/performance.md: SGD 46.6k, B-alt 39.8k, I-alt 32.9k images/s) bounds the main stage
# at about 14 runs x 50 epochs x 15,000 images / ~40k images/s = 260 s of GPU time, evaluations
# (10,000 test + 2,000 train images per epoch and run, forward only) about 60 s more, tuning
# (12 runs x 10 epochs x 12,000 images, + the beta search) about 60 s; start-up of the processes about
# 30 s. Hence SUBSET=15000 by default. The whole study runs under `timeout $BUDGET_S`; if that fires,
# the finished runs are summarised (`--collect`) and the JSON says which runs were unfinished.
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=0
if [ "${1:-}" = "--cpu-smoke" ]; then SMOKE=1; shift; fi
DEFAULT_OUT=bench/out/paper-regime-gpu
OUT=${1:-$DEFAULT_OUT}   # what the device tool brings back
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 SUPPORTNET_DATA=$PWD/data
gpu_banner() {
  nvidia-smi -L
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
}
SUBSET=${SUBSET:-15000}     # training images (the test set is always the full 10,000)
SEEDS=${SEEDS:-0,1}
JOBS=${JOBS:-14}            # processes side by side on the GPU (14 = every main run at once)
BUDGET_S=${BUDGET_S:-470}   # the study's time limit; the summary and copies take a few seconds more
PY=${PY:-python3}
LOG="$OUT/paper_regime_gpu.log"

if [ "$SMOKE" = 1 ]; then
  # 2 epochs (1 warm-up, 1 alternation), synthetic data, width 4/8, on the CPU: the code path, not a result
  $PY bench/convergence.py --regime allcnn-gpu --smoke --jobs 1 --seeds 0 --out "$OUT/smoke" \
    --set train.epochs=2 --set train.milestones=[1] 2>&1 | tee "$LOG"
  rc=${PIPESTATUS[0]}
  cp "$OUT/smoke/results.json" "$OUT/smoke-results.json" 2>/dev/null || true
  exit "$rc"
fi

{
  gpu_banner
  nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv
  echo "== allcnn-gpu: subset $SUBSET, seeds $SEEDS, $JOBS side by side, limit ${BUDGET_S}s"
  start=$(date +%s)
  timeout "$BUDGET_S" $PY bench/convergence.py --regime allcnn-gpu --seeds "$SEEDS" --jobs "$JOBS" \
    --threads 1 --set "data.subset=$SUBSET"
  rc=$?
  if [ "$rc" = 124 ]; then
    echo "== time limit reached after $(( $(date +%s) - start ))s: summarising the finished runs"
    $PY bench/convergence.py --regime allcnn-gpu --seeds "$SEEDS" --jobs "$JOBS" --threads 1 \
      --set "data.subset=$SUBSET" --collect
    rc=$?
  fi
  echo "== done in $(( $(date +%s) - start ))s (rc $rc)"
  nvidia-smi --query-gpu=memory.used --format=csv
} 2>&1 | tee "$LOG"
for f in bench/results/convergence-allcnn-gpu.json bench/results/convergence-allcnn-gpu.md \
         bench/results/convergence-allcnn-gpu-*-trace.png bench/results/convergence-allcnn-gpu-*-ratio.png; do
  [ -f "$f" ] && cp "$f" "$OUT/"
done
ls -la "$OUT"
