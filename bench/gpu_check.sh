#!/usr/bin/env bash
# The GPU checks of docs/performance.md, as one script for a lent GPU machine:
#   bash bench/gpu_check.sh OUT_DIR
# Needs python3 with torch (CUDA); Fashion-MNIST .gz files in ./data/fashion-mnist.
DEFAULT_OUT=bench/out/gpu
source "$(dirname "$0")/gpu_env.sh" "$@"
{
  gpu_banner
  echo "== throughput"
  timeout 240 python3 bench/gpu_throughput.py --compile
  cp bench/out/gpu_throughput.json "$OUT/"
  echo "== overhead on the GPU"
  timeout 120 python3 bench/overhead.py --device cuda --subset 12800 --repeats 5
  cp bench/out/overhead-cuda.json "$OUT/"
  echo "== fit on the GPU with the fast path (2 epochs, full Fashion-MNIST)"
  timeout 150 python3 -m supportnet compare --data fashion-mnist --methods sgd,b-alt,i-alt --epochs 2 --quiet \
    --set train.device=cuda --set train.loader=device --set train.amp=bf16 --set train.channels_last=true \
    --set train.train_eval_size=0 --out /tmp/gpu-compare
  echo "== conversion tests against torchvision"
  timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_convert.py -k "torchvision or zoo" 2>&1 | tail -5
} 2>&1 | tee "$OUT/gpu_check.log"
