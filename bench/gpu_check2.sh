#!/usr/bin/env bash
# Second GPU session (2026-11-27): the per-step changes (fused gated threshold, fewer host
# syncs, masks packed/unpacked on the device) measured on a lent GPU:
#   bash bench/gpu_check2.sh OUT_DIR
# Needs python3 with torch (CUDA); Fashion-MNIST .gz files in ./data/fashion-mnist.
DEFAULT_OUT=bench/out/gpu2
source "$(dirname "$0")/gpu_env.sh" "$@"
{
  gpu_banner
  echo "== mask store on the device, fused threshold (tests)"
  timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_masks.py tests/test_layers.py 2>&1 | tail -3
  echo "== batch energy reduction forms"
  timeout 60 python3 bench/gpu_energy.py
  echo "== overhead on the GPU"
  timeout 120 python3 bench/overhead.py --device cuda --subset 12800 --repeats 5
  cp bench/out/overhead-cuda.json "$OUT/"
  echo "== throughput"
  timeout 200 python3 bench/gpu_throughput.py
  cp bench/out/gpu_throughput.json "$OUT/"
} 2>&1 | tee "$OUT/gpu_check2.log"
