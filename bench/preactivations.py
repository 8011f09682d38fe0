"""Pre-activation scale of a network at initialisation: the scale the thresholds tau are set against.

    python bench/preactivations.py [--model convnet-s] [--bias false] [--n 512]   # seconds

For each threshold layer of a freshly initialised model (seed 0), on the first ``--n`` Fashion-MNIST
training images: the standard deviation of the pre-activations q, and the median and 90th percentile
of their positive part. Prints a Markdown table (the choice of tau in docs/paper-regime.md, part 3).
"""

from __future__ import annotations

import argparse
import sys

import torch
import yaml


def main(argv: list[str] | None = None) -> int:
    from supportnet.data import load_data
    from supportnet.layers import threshold_layers
    from supportnet.models import create_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="convnet-s")
    ap.add_argument("--bias", default="false", help="model bias kwarg (true/false)")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--data", default="fashion-mnist")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    data = load_data(a.data, subset=max(a.n, 1))
    torch.manual_seed(0)
    model = create_model(a.model, data.in_shape, data.num_classes, bias=yaml.safe_load(a.bias))
    qs: dict[str, torch.Tensor] = {}
    for name, layer in threshold_layers(model):
        layer.register_forward_hook(lambda m, i, o, name=name: qs.__setitem__(name, i[0].detach()))
    with torch.no_grad():
        model.eval()(data.train.x[: a.n])
    print(f"{a.model} (bias={a.bias}) at initialisation, seed 0, {a.n} {a.data} training images")
    print("| threshold layer | std of q | median of q > 0 | 90th percentile of q > 0 |")
    print("|---|---:|---:|---:|")
    for name, q in qs.items():
        pos = q[q > 0]
        print(f"| {name} | {q.std():.3f} | {pos.median():.3f} | {pos.quantile(0.9):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
