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

from .build import build, check_model_fits
from .choices import PRESETS
from .config import Config, from_dict, load_yaml
from .errors import ConfigError, DivergenceError
from .io import atomic_write_text
from .report import markdown_table, plot_compare
from .runfolder import claim_run_folder, releases_run_folders
from .train import fit

_SPEC = re.compile(r"^([a-z0-9-]+)(?:\[(.*)\])?$")


def _split_items(body: str) -> list[str]:
    """``'a=1,b=[1,2]'`` -> ``['a=1', 'b=[1,2]']``: commas inside brackets or braces do not split."""
    out, depth, cur = [], 0, ""
    for ch in body:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth <= 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return [*out, cur]


def parse_method(spec: str) -> tuple[str, dict]:
    """``'i-alt[backend=stored,max_gap=2]'`` -> ``('i-alt[...]', {method: i-alt, backend: stored, max_gap: 2})``.

    Values are YAML (bounded, :func:`supportnet.config.load_yaml`): ``i-alt[tau=[0.1,0.2]]`` works.
    """
    m = _SPEC.match(spec.strip())
    if not m or m.group(1) not in PRESETS:
        raise ConfigError(
            f"unknown method {spec!r}; choose from {', '.join(PRESETS)}, optionally with "
            f"support overrides such as 'i-alt[max_gap=2]'"
        )
    over = dict(PRESETS[m.group(1)])
    if m.group(2):
        for item in _split_items(m.group(2)):
            if "=" not in item:
                raise ConfigError(f"method override {item!r} in {spec!r} is not key=value; e.g. i-alt[max_gap=2]")
            k, v = item.split("=", 1)
            over[k.strip()] = load_yaml(v, f"method override {item.strip()!r} in {spec!r}", "e.g. i-alt[max_gap=2]")
    return spec.strip(), over


def method_config(base: Config, spec: str) -> Config:
    name, over = parse_method(spec)
    d = base.to_dict()
    d["support"].update(over)
    return from_dict(d)


@releases_run_folders
def compare(base: Config, methods: list[str], out: str | Path, data=None, overwrite: bool = False) -> dict:
    """Train every method in ``methods`` from the same start and write the comparison to ``out``.

    ``out`` is claimed for this comparison once every method spec is valid and the data is
    loaded (:mod:`supportnet.runfolder`): a folder holding another run's files is refused
    unless ``overwrite``, which also lets each method's run replace its sub-folder.
    """
    out = Path(out)
    if not methods:
        raise ConfigError("no methods given; e.g. --methods sgd,b-alt,i-alt")
    cfgs = {spec: method_config(base, spec) for spec in methods}  # validate all before training any

    data, model = build(base, data)
    for cfg in cfgs.values():  # each method's support config against the model, before anything is written
        check_model_fits(model, cfg, data)
    claim_run_folder(out, overwrite=overwrite, resumable=False)
    results: dict[str, dict] = {}
    for spec, cfg in cfgs.items():
        cfg.out = str(out / re.sub(r"[^A-Za-z0-9_.-]+", "_", spec))
        try:
            run = fit(cfg, data=data, overwrite=overwrite)
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
