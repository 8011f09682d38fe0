#!/usr/bin/env bash
# Every GPU figure of docs/performance.md (its overhead table), in one run on a lent GPU machine:
#
#   bash bench/gpu_check.sh [--out DIR] [--data NAME] [--no-tests] [--no-baseline] [--no-graphs] [--energy] [--fit] [--smoke]
#
#   --out DIR       where the JSON and the log go (default bench/results/gpu-<date>-<time>/); each step
#                   writes its JSON there as soon as it is done
#   --data NAME     data set of bench/overhead.py (default fashion-mnist: .gz files in ./data/fashion-mnist
#                   or $SUPPORTNET_DATA; synthetic needs none)
#   --no-tests      skip the CUDA tests (kernels compiled on the device, CUDA graphs, guard, mask store)
#   --no-baseline   skip the throughput rerun with the kernels off (SUPPORTNET_KERNELS=0, the torch path)
#   --no-graphs     skip bench/gpu_graphs.py (a hand loop's step and fit(), eager against captured in a CUDA graph)
#   --energy        also time the batch energy reduction forms (bench/gpu_energy.py)
#   --fit           also train sgd,b-alt,i-alt for 2 epochs with the fast path (accuracy, end to end)
#   --smoke         a CPU smoke run of the script itself: tiny sizes, no GPU needed, nothing timed
#
# Steps, in order of need, each under `timeout`: the CUDA tests, throughput with the kernels (and each
# method's top kernels), overhead (every figure of the table, with peak memory), CUDA graphs, and the
# throughput baseline; their limits add up to 8.5 minutes on an H100/H200, the steps themselves take
# less. Needs python3 with torch (CUDA build; triton comes with it). A step that fails or times out
# loses only itself.
set -u
cd "$(dirname "$0")/.."
OUT="bench/results/gpu-$(date +%Y-%m-%d-%H%M)"
DATA=fashion-mnist
TESTS=1 BASELINE=1 GRAPHS=1 ENERGY=0 FIT=0 SMOKE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$2; shift ;;
    --data) DATA=$2; shift ;;
    --no-tests) TESTS=0 ;;
    --no-baseline) BASELINE=0 ;;
    --no-graphs) GRAPHS=0 ;;
    --energy) ENERGY=1 ;;
    --fit) FIT=1 ;;
    --smoke) SMOKE=1 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: error: unknown option $1; see --help" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 SUPPORTNET_DATA=${SUPPORTNET_DATA:-$PWD/data}
if [ "$SMOKE" = 1 ]; then  # the limits are for a GPU: a CPU smoke run gets 5 times as long
  DEV=cpu OVERHEAD_ARGS="--quick --no-tax" THROUGHPUT_ARGS="--quick --device cpu --repeats 1 --fast-only" SCALE=5
else
  DEV=cuda OVERHEAD_ARGS="--subset 12800 --repeats 5" THROUGHPUT_ARGS="--fast-only --repeats 5" SCALE=1
fi
FAILED=0

step() {  # step SECONDS NAME COMMAND...: run with a time limit, note a failure, go on
  local limit=$1 name=$2
  shift 2
  echo "== $name"
  local t0=$SECONDS
  timeout $((limit * SCALE)) "$@"
  local rc=$?
  echo "-- $name: exit $rc after $((SECONDS - t0)) s"
  [ $rc = 0 ] || FAILED=$((FAILED + 1))
}

{
  echo "gpu_check.sh $(date -u +%FT%TZ) out=$OUT smoke=$SMOKE"
  [ "$SMOKE" = 1 ] || nvidia-smi -L
  $PY - <<'EOF' | tee "$OUT/env.json"
import json, torch
from supportnet import kernels
dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
try:
    import triton
    tv = triton.__version__
except Exception as e:  # noqa: BLE001
    tv = f"not importable: {type(e).__name__}"
print(json.dumps({"device": dev, "torch": torch.__version__, "cuda": torch.version.cuda, "triton": tv,
                  "kernels_enabled": kernels.enabled("cuda") if torch.cuda.is_available() else False}))
EOF
  if [ "$TESTS" = 1 ] && [ "$SMOKE" = 0 ]; then
    step 120 "CUDA tests: kernels compiled on the device, CUDA graphs (fit() too), mask store, guard" \
      $PY -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_cuda_graphs.py tests/test_masks.py \
      tests/test_layers.py tests/test_train.py -k "not slow and (kernels or graph or cuda or guard or nonfinite or packed or fused)"
  fi
  step 120 "throughput, bf16 + channels_last, fused kernels (allcnn-c, resnet18), with each method's top kernels" \
    $PY bench/gpu_throughput.py $THROUGHPUT_ARGS --profile --out "$OUT"
  step 150 "overhead ($DEV, convnet-s, $DATA): every figure of the table, with peak memory" \
    $PY bench/overhead.py --device $DEV --data "$DATA" $OVERHEAD_ARGS --out "$OUT"
  if [ "$GRAPHS" = 1 ] && [ "$SMOKE" = 0 ]; then
    step 80 "CUDA graphs: a hand loop's step, then fit(), eager against captured" \
      $PY bench/gpu_graphs.py --fit-data "$DATA" --out "$OUT"
  fi
  if [ "$BASELINE" = 1 ]; then
    step 40 "throughput with the kernels off (SUPPORTNET_KERNELS=0: the torch path)" \
      env SUPPORTNET_KERNELS=0 $PY bench/gpu_throughput.py $THROUGHPUT_ARGS --repeats 3 --out "$OUT/torch-path"
  fi
  if [ "$ENERGY" = 1 ] && [ "$SMOKE" = 0 ]; then
    step 60 "batch energy reduction forms" $PY bench/gpu_energy.py
  fi
  if [ "$FIT" = 1 ] && [ "$SMOKE" = 0 ]; then
    step 150 "fit with the fast path (2 epochs, sgd,b-alt,i-alt)" \
      $PY -m supportnet compare --data "$DATA" --methods sgd,b-alt,i-alt --epochs 2 --quiet \
      --set train.device=cuda --set train.loader=device --set train.amp=bf16 --set train.channels_last=true \
      --set train.train_eval_size=0 --out "$OUT/compare"
  fi
  echo "gpu_check.sh: $FAILED step(s) failed; results in $OUT"
  [ "$FAILED" = 0 ]
} 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
