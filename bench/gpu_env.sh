# Sourced by bench/gpu_check*.sh (not run by itself): the output folder (the script's first
# argument, else its DEFAULT_OUT), the environment every GPU check runs in (this repository's
# src/, Fashion-MNIST .gz files in ./data/fashion-mnist), and gpu_banner, which names the device.
set -u
OUT=${1:-$DEFAULT_OUT}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 SUPPORTNET_DATA=$PWD/data

gpu_banner() {
  nvidia-smi -L
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
}
