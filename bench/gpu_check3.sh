#!/usr/bin/env bash
# Third GPU check (2026-11-27): the device-side divergence guard (fused SGD + found_inf, no host
# sync per step) and the framework tax it was meant to cut, at two epoch lengths:
#   bash bench/gpu_check3.sh OUT_DIR
DEFAULT_OUT=bench/out/gpu3
source "$(dirname "$0")/gpu_env.sh" "$@"
{
  gpu_banner
  echo "== guard tests on cuda"
  timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_train.py -k "guard or nonfinite or divergence" 2>&1 | tail -3
  for n in 12800 60000; do
    echo "== overhead on the GPU, subset $n"
    timeout 150 python3 bench/overhead.py --device cuda --subset $n --repeats 5
    cp bench/out/overhead-cuda.json "$OUT/overhead-cuda-$n.json"
  done
} 2>&1 | tee "$OUT/gpu_check3.log"
