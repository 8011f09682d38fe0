#!/usr/bin/env bash
# Make Fashion-MNIST available to supportnet.
#  1. already present (any place supportnet looks): nothing to do;
#  2. apt exists and we are root: Debian's dataset-fashion-mnist -> /usr/share/datasets/fashion-mnist;
#  3. otherwise: a download verified against the published MD5s -> ~/.cache/supportnet/fashion-mnist.
set -uo pipefail
PY=${PY:-.venv/bin/python}
if "$PY" -m supportnet data check fashion-mnist >/dev/null 2>&1; then
  echo "fashion-mnist: present and verified"; exit 0
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "fashion-mnist: installing Debian's dataset-fashion-mnist"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 || true
  if "$PY" -m supportnet data check fashion-mnist >/dev/null 2>&1; then
    echo "fashion-mnist: verified in /usr/share/datasets/fashion-mnist"; exit 0
  fi
fi
echo "fashion-mnist: downloading with checksum verification"
if "$PY" -m supportnet data fetch fashion-mnist; then exit 0; fi
cat >&2 <<'MSG'
fashion-mnist: could not install or download the data set.
  Fix: as root run 'apt-get install dataset-fashion-mnist', or copy the four official
  files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz,
  t10k-labels-idx1-ubyte.gz) into ~/.cache/supportnet/fashion-mnist/ or a folder named by
  $SUPPORTNET_DATA, then run 'make demo' again.
MSG
exit 1
