"""Side-by-side comparison of training methods from the same start.

Every method gets the same initial weights (same seed), the same data order
(:func:`supportnet.data.epoch_order`), the same learning-rate schedule, batch
size, weight decay and epoch budget; only ``support.*`` differs.

A method is a preset name, optionally followed by support overrides in
brackets: ``i-alt``, ``b-alt-vote``, ``i-alt[backend=stored,max_gap=2]``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .choices import PRESETS
from .config import Config, from_dict
from .errors import ConfigError, DivergenceError
from .io import atomic_write_text
from .report import markdown_table, plot_compare

_SPEC = re.compile(r"^([a-z0-9-]+)(?:\[(.*)\])?$")


def parse_method(spec: str) -> tuple[str, dict]:
    """``'i-alt[backend=stored,max_gap=2]'`` -> ``('i-alt[...]', {method: i-alt, backend: stored, max_gap: 2})``."""
    import yaml

    m = _SPEC.match(spec.strip())
    if not m or m.group(1) not in PRESETS:
        raise ConfigError(
            f"unknown method {spec!r}; choose from {', '.join(PRESETS)}, optionally with "
            f"support overrides such as 'i-alt[max_gap=2]'"
        )
    over = dict(PRESETS[m.group(1)])
    if m.group(2):
        for item in m.group(2).split(","):
            if "=" not in item:
                raise ConfigError(f"method override {item!r} in {spec!r} is not key=value; e.g. i-alt[max_gap=2]")
            k, v = item.split("=", 1)
            over[k.strip()] = yaml.safe_load(v)
    return spec.strip(), over


def method_config(base: Config, spec: str) -> Config:
    name, over = parse_method(spec)
    d = base.to_dict()
    d["support"].update(over)
    return from_dict(d)


def compare(base: Config, methods: list[str], out: str | Path, data=None) -> dict:
    """Train every method in ``methods`` from the same start and write the comparison to ``out``."""
    out = Path(out)
    if not methods:
        raise ConfigError("no methods given; e.g. --methods sgd,b-alt,i-alt")
    cfgs = {spec: method_config(base, spec) for spec in methods}  # validate all before training any
    from .train import build, fit

    if data is None:
        data, _ = build(base)
    results: dict[str, dict] = {}
    for spec, cfg in cfgs.items():
        cfg.out = str(out / re.sub(r"[^A-Za-z0-9_.-]+", "_", spec))
        try:
            run = fit(cfg, data=data)
        except DivergenceError as e:
            results[spec] = {"error": f"diverged: {e}"}
            continue
        s = json.loads((run / "summary.json").read_text())
        results[spec] = {k: s[k] for k in ("test_acc", "test_loss", "iterations", "seconds", "curve")}
        results[spec]["run"] = str(run)
    summary = {
        "data": base.data.name,
        "model": base.model.name,
        "epochs": base.train.epochs,
        "seed": base.train.seed,
        "subset": base.data.subset,
        "methods": results,
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    table = markdown_table(results)
    atomic_write_text(out / "table.md", table)
    plot_compare(results, out / "curves.png", title=f"{base.model.name} on {base.data.name}, seed {base.train.seed}")
    return summary
