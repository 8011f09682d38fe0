"""The ``supportnet`` command line.

Every user error prints one line, ``supportnet: error: <problem>; <fix>``, and
exits with code 2; a diverged run exits with 3. No tracebacks for either.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from pathlib import Path

from .allocator import tune_allocator
from .choices import EXPORT_FORMATS, PRUNE
from .errors import SupportnetError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints the whole usage otherwise)
        self.exit(2, f"supportnet: error: {one_line(message)}; see '{self.prog} --help'\n")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.lr=0.01 (repeatable)",
    )
    p.add_argument("--data-dir", help="folder holding the data set (used from there, or refused)")
    p.add_argument("--subset", type=int, help="train on a seeded subset of N training examples")
    p.add_argument(
        "--test-subset", type=int, help="evaluate on a fixed subset of N test examples (the same for every seed)"
    )
    p.add_argument("--val", type=int, help="hold out N training examples (seeded) as a validation split")
    p.add_argument("--seed", type=int, help="seed for weights, data order and dropout")
    p.add_argument("--epochs", type=int, help="number of epochs, warm-up included")
    p.add_argument("--out", help="run folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_overwrite(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier run's files in the output folder (without it such a folder is refused)",
    )


def _shortcuts(a: argparse.Namespace) -> list[tuple[str, object]]:
    """The options that set a config key, as ``(key, value)`` pairs: typed values, never YAML text
    (a folder named ``run-💥`` or ``a: b`` stays that string)."""
    sets: list[tuple[str, object]] = []
    for flag, key in (
        ("data_dir", "data.data_dir"),
        ("subset", "data.subset"),
        ("val", "data.val"),
        ("test_subset", "data.test_subset"),
        ("seed", "train.seed"),
        ("epochs", "train.epochs"),
        ("out", "out"),
        ("data", "data.name"),
        ("model", "model.name"),
        ("method", "support.method"),
    ):
        v = getattr(a, flag, None)
        if v is not None:
            sets.append((key, v))
    if getattr(a, "quiet", False):
        sets.append(("quiet", True))
    return sets


def _add_export(sub) -> None:
    ex = sub.add_parser(
        "export", help="write a trained model as a state_dict, safetensors, TorchScript or ONNX file (plain PyTorch)"
    )
    ex.add_argument(
        "source",
        metavar="RUN_OR_FILE",
        help="a run folder, its final.pt or model.safetensors, an export, or a DSD sparse.pt",
    )
    ex.add_argument("-o", "--output", required=True, help="file to write (not a folder, not the input)")
    ex.add_argument("--format", choices=EXPORT_FORMATS, default="state_dict", help="default: state_dict")
    ex.add_argument("--compact", action="store_true", help="DSD sparse.pt: physically remove the pruned channels")
    ex.set_defaults(func=cmd_export)


def build_parser() -> argparse.ArgumentParser:
    """The ``supportnet`` parser: one sub-parser per command, each dispatching to its ``cmd_*``."""
    from . import __version__
    from .theory.cli import add_parser as add_theory

    p = _Parser(prog="supportnet", description="CNN training by weight/support alternation (Huang, Kong, Lucey 2017).")
    p.add_argument("--version", action="version", version=f"supportnet {__version__}")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_Parser)
    _add_train(sub)
    _add_compare(sub)
    _add_dsd(sub)
    _add_export(sub)
    vf = sub.add_parser("verify", help="check a checkpoint (.pt) or mask store (.smask): format version and checksum")
    vf.add_argument("path")
    vf.set_defaults(func=cmd_verify)
    models = sub.add_parser("models", help="list the registered models with their parameter counts")
    models.set_defaults(func=cmd_models)
    _add_data(sub)
    add_theory(sub, _add_overwrite)
    return p


def _training_command(sub, name: str, func, help: str, config: str, add_own) -> None:
    """A command that trains from a config: ``--config`` (``config``: its help), ``--model``
    and ``--data``, the command's own options (``add_own(parser)``), then the options every
    training command shares (:func:`_add_common`, ``--overwrite``)."""
    p = sub.add_parser(name, help=help)
    p.add_argument("--config", help=config)
    p.add_argument("--model", help="model name (supportnet models)")
    p.add_argument("--data", help="data set name (supportnet data list)")
    add_own(p)
    _add_common(p)
    _add_overwrite(p)
    p.set_defaults(func=func)


def _add_train(sub) -> None:
    def own(t):
        t.add_argument("--method", help="support.method: sgd | b-alt | i-alt")
        t.add_argument(
            "--resume",
            metavar="RUN_DIR",
            help="continue the run in RUN_DIR from its checkpoint (its own config.yaml; exact on CPU)",
        )
        t.add_argument(
            "--strict",
            action="store_true",
            help="with --resume: stop on a damaged mask store instead of re-estimating the supports",
        )

    about = "train one model (defaults: convnet-s on Fashion-MNIST, SGD)"
    _training_command(sub, "train", cmd_train, about, "YAML config file (see configs/)", own)


def _add_compare(sub) -> None:
    def own(c):
        c.add_argument(
            "--methods",
            default="sgd,b-alt,i-alt",
            help="comma-separated methods, e.g. sgd,b-alt,i-alt,i-alt[backend=stored]",
        )
        c.add_argument(
            "--seeds",
            help="several seeds, e.g. 0,1,2: run the convergence study (time-to-target, "
            "mean ± std; see docs/results.md) instead of a single comparison",
        )
        c.add_argument(
            "--lr-grid", help="study: learning rates tuned per method on a validation split, e.g. 0.02,0.05,0.1"
        )
        c.add_argument("--tune-epochs", type=int, help="study: epochs per tuning run (default: --epochs)")
        c.add_argument(
            "--tune-val", type=int, default=5000, help="study: validation hold-out for tuning (default 5000)"
        )
        c.add_argument(
            "--targets",
            default="",
            help="study: fixed target accuracies, e.g. 0.88,0.90,0.91 "
            "(SGD's final accuracy - 0.2 points is always a target)",
        )
        c.add_argument("--jobs", type=int, default=1, help="study: runs in parallel processes (default 1)")

    about = "train several methods from the same start; table and plot"
    _training_command(sub, "compare", cmd_compare, about, "base YAML config", own)


def _add_dsd(sub) -> None:
    def own(ds):
        ds.add_argument("--prune", choices=PRUNE, help="dsd.prune")
        ds.add_argument("--resume", metavar="OUT", help="continue the interrupted DSD run in OUT (its own config)")

    about = "Dense-Sparse-Dense training with magnitude or support pruning (Table 8)"
    _training_command(sub, "dsd", cmd_dsd, about, "YAML config with a dsd: section (see configs/t8-*-dsd-*.yaml)", own)


def _add_data(sub) -> None:
    d = sub.add_parser("data", help="list, check or fetch data sets")
    dsub = d.add_subparsers(dest="data_cmd", metavar="ACTION", parser_class=_Parser)
    d.set_defaults(func=cmd_data_list)  # 'supportnet data' alone lists them
    dsub.add_parser("list", help="list the registered data sets").set_defaults(func=cmd_data_list)
    dc = dsub.add_parser("check", help="report where a data set was found and whether it verifies")
    dc.add_argument("name")
    dc.add_argument("--data-dir")
    dc.set_defaults(func=cmd_data_check)
    df = dsub.add_parser("fetch", help="download a data set with checksum verification")
    df.add_argument("name")
    df.add_argument("--root", help="target folder (default ~/.cache/supportnet/NAME)")
    df.add_argument("--quiet", action="store_true")
    df.add_argument("--extract", action="store_true", help="also unpack tarballs (safely) beside them")
    df.set_defaults(func=cmd_data_fetch)


def _split_methods(s: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in s:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        out.append(cur)
    return [m.strip() for m in out if m.strip()]


def _resume_config(a, sets: list, name: str, writer: str):
    """The run folder of ``--resume`` and the config it was started with (no other options allowed)."""
    from .config import load_config
    from .errors import ConfigError
    from .runfolder import check_run_folder

    if a.config or [x for x in sets if x != ("quiet", True)]:
        raise ConfigError("--resume continues a run with its own config; drop --config, --set and the other options")
    if getattr(a, "overwrite", False):
        raise ConfigError("--overwrite starts a new run over an old one; it cannot go with --resume: drop one")
    run = check_run_folder(a.resume, resume=True, flag="--resume")
    if not (run / name).is_file():
        raise ConfigError(f"{run} is not a run folder (no {name}); pass the folder '{writer}' wrote")
    return run, load_config(run / name, [("quiet", True)] if a.quiet else [])


def _train_config(a):
    """The config of ``supportnet train`` and the run it resumes (None: a new run), each
    checked once here; what is passed down is typed."""
    from .config import load_config
    from .errors import ConfigError
    from .train import open_resume

    sets = _shortcuts(a) + a.overrides
    if a.resume:
        run, cfg = _resume_config(a, sets, "config.yaml", "supportnet train")
        return cfg, open_resume(run, cfg)
    if a.strict:
        raise ConfigError("--strict only applies with --resume RUN_DIR; drop --strict or add --resume")
    return load_config(a.config, sets), None


def cmd_train(a) -> int:
    from .train import fit

    cfg, resume = _train_config(a)
    if resume is not None and resume.note:  # a finished run is read-only: said, nothing written
        print(f"supportnet: {resume.note}")
        return 0
    out = fit(cfg, resume=resume, strict=a.strict, overwrite=a.overwrite)
    print(f"run folder: {out}")
    return 0


def cmd_compare(a) -> int:
    from .compare import compare
    from .config import load_config
    from .report import markdown_table
    from .runfolder import check_run_folder

    cfg = load_config(a.config, _shortcuts(a) + a.overrides)
    out = Path(cfg.out or "runs/compare")
    if a.seeds:
        from .study import STUDY_REUSE, run_study

        seeds = _floats(a.seeds, "--seeds", int)
        lr_grid = _floats(a.lr_grid, "--lr-grid") if a.lr_grid else None
        targets = _floats(a.targets, "--targets") if a.targets else []
        check_run_folder(out, overwrite=a.overwrite, reuse=STUDY_REUSE, resumable=False)
        summary = run_study(
            cfg,
            _split_methods(a.methods),
            seeds,
            out,
            lr_grid=lr_grid,
            tune_epochs=a.tune_epochs,
            tune_val=a.tune_val,
            targets=targets,
            jobs=a.jobs,
            log=(lambda *_: None) if a.quiet else print,
            overwrite=a.overwrite,
        )
        print((out / "table.md").read_text(), end="")
        print(f"written: {out / 'study.json'}, {out / 'table.md'}, {out / 'curves.png'}, {out / 'ratio.png'}")
        return 0
    check_run_folder(out, overwrite=a.overwrite, resumable=False)
    summary = compare(cfg, _split_methods(a.methods), out, overwrite=a.overwrite)
    print(markdown_table(summary["methods"]), end="")
    print(f"written: {out / 'summary.json'}, {out / 'table.md'}, {out / 'curves.png'}")
    return 0


def _floats(s: str, flag: str, kind=float) -> list:
    from .errors import ConfigError

    try:
        vals = [kind(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag} {s!r} is not a comma-separated list of numbers; e.g. {flag} 0,1,2") from None
    if not vals:
        raise ConfigError(f"{flag} is empty; e.g. {flag} 0,1,2")
    if kind is float and any(not (v > 0) for v in vals) and flag != "--seeds":
        raise ConfigError(f"{flag} {s!r} holds a value that is not positive; give positive numbers")
    return vals


def cmd_dsd(a) -> int:
    from .config import load_config
    from .dsd import dsd, dsd_finished_note, dsd_table
    from .runfolder import check_run_folder

    sets = _shortcuts(a) + ([("dsd.prune", a.prune)] if a.prune else []) + a.overrides
    if a.resume:
        out, cfg = _resume_config(a, sets, "dsd-config.yaml", "supportnet dsd")
        if note := dsd_finished_note(out, cfg):  # a finished run is read-only: said, nothing written
            print(f"supportnet: {note}")
            return 0
    else:
        cfg = load_config(a.config, sets)
        out = check_run_folder(cfg.out or "runs/dsd", overwrite=a.overwrite)
    res = dsd(cfg, out, log=(lambda *_: None) if a.quiet else print, resume=bool(a.resume), overwrite=a.overwrite)
    print(dsd_table({cfg.dsd.prune: res}), end="")
    print(f"written: {out / 'dsd.json'}, {out / 'sparse.pt'}")
    return 0


def cmd_export(a) -> int:
    from .export import export_model

    info = export_model(a.source, a.format, a.output, compact=a.compact)
    if a.compact:
        print(
            f"parameters {info['params_before']:,} -> {info['params_after']:,}; "
            f"FLOPs {info['flops_before']:,} -> {info['flops_after']:,}; "
            f"max |output difference| {info['max_abs_diff']:.2e}; written {a.output} ({a.format})"
        )
    else:
        print(
            f"{info['params']:,} parameters; max |output difference| {info['max_abs_diff']:.2e}; "
            f"written {a.output} ({a.format})"
        )
    return 0


def cmd_verify(a) -> int:
    from .checkpoint import describe, read_checkpoint
    from .masks import MAGIC, MaskStore
    from .paths import check_input_file

    p = check_input_file(a.path, "file", "pass a checkpoint (.pt), model.safetensors or a mask store (.smask)")
    with open(p, "rb") as f:
        head = f.read(len(MAGIC))
    if head == MAGIC or p.suffix == ".smask":
        st = MaskStore.open(p)
        print(f"{p}: mask store OK, {st.n} examples x {st.bits} bits, checksum {st.checksum}")
    elif p.suffix == ".safetensors":
        from .export import read_safetensors

        tensors, info = read_safetensors(p)
        print(f"{p}: safetensors OK, {len(tensors)} tensors of {info.get('arch', {}).get('name', '?')}, checksum OK")
    else:
        ck, kind, fmt = read_checkpoint(p)
        print(f"{p}: {describe(kind)} OK (format {fmt}, checksum OK), keys {', '.join(sorted(map(str, ck)))}")
    return 0


def cmd_models(a) -> int:
    from .model_table import TABLE  # the built-in models, counted without importing torch

    print(f"{'name':14s} {'input':>10s} {'params':>12s}  note")
    for name, shape, n, note in TABLE:
        print(f"{name:14s} {'x'.join(map(str, shape)):>10s} {n:12,d}  {note}")
    return 0


def cmd_data_list(a) -> int:
    from .data import DATASETS

    for name, spec in sorted(DATASETS.items()):
        print(f"{name:16s} {spec.num_classes:4d} classes  {spec.note}")
    return 0


def cmd_data_check(a) -> int:
    from .data import check_dataset, get_spec

    get_spec(a.name)
    rows = check_dataset(a.name, getattr(a, "data_dir", None))
    for r in rows:
        print(f"{'OK ' if r['ok'] else 'BAD'} {r['file']:30s} {r['path'] or '-':60s} {r['how']}")
    ok = all(r["ok"] for r in rows)
    print(f"{a.name}: {'verified' if ok else 'NOT verified'}")
    if not ok:
        print(
            f"supportnet: error: data set {a.name!r} is missing or fails verification; "
            f"run 'supportnet data fetch {a.name}'",
            file=sys.stderr,
        )
    return 0 if ok else 2


def cmd_data_fetch(a) -> int:
    from .data import fetch_dataset, get_spec
    from .paths import check_output_dir

    get_spec(a.name)
    if a.root is not None:
        check_output_dir(a.root, "--root")

    dest = fetch_dataset(a.name, a.root, quiet=a.quiet, extract=a.extract)
    print(f"{a.name}: verified in {dest}")
    return 0


class _TqdmHandler(logging.Handler):
    """Log lines to stderr through ``tqdm.write``, so that they do not break a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never stop a run
            self.handleError(record)


def _setup_logging(quiet: bool) -> None:
    """The library logs to ``logging.getLogger("supportnet")``; the command line shows it on stderr."""
    logger = logging.getLogger("supportnet")
    if not any(isinstance(h, _TqdmHandler) for h in logger.handlers):
        handler = _TqdmHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


def one_line(msg: str) -> str:
    """``msg`` as one printable line: a newline, a control character or an undecodable byte of a
    user's path is shown escaped, so the error stays one line and can always be printed."""
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in msg)
    enc = getattr(sys.stderr, "encoding", None) or "utf-8"
    return out.encode(enc, "backslashreplace").decode(enc, "replace")


def _check_kernel_switch() -> None:
    """A misspelt SUPPORTNET_KERNELS is refused before the command writes anything."""
    if "SUPPORTNET_KERNELS" in os.environ:
        from .kernels import switched_on

        switched_on()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    if getattr(a, "func", None) is None:  # no command: the help
        parser.print_help()
        return 0
    _setup_logging(bool(getattr(a, "quiet", False)))
    return _command(a)


def entry() -> None:
    """The ``supportnet`` command (console script and ``python -m supportnet``): :func:`main`, then
    the process ends with its code. A torchrun rank ends through
    :func:`supportnet.distributed.end_process` (no interpreter teardown: docs/design.md 17), an
    unexpected error's traceback printed first; ``main`` itself always returns."""
    try:
        code = main()
    except Exception:
        dist = sys.modules.get("supportnet.distributed")
        if dist is not None and dist._JOINED:
            traceback.print_exc()
            dist.end_process(1)
        raise
    dist = sys.modules.get("supportnet.distributed")  # (imported only where a command may have joined a group)
    raise SystemExit(dist.end_process(code) if dist is not None else code)


def _command(a: argparse.Namespace) -> int:
    try:
        tune_allocator()  # every command trains or evaluates (supportnet.allocator)
        _check_kernel_switch()
        return a.func(a)
    except SupportnetError as e:
        print(f"supportnet: error: {one_line(str(e))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("supportnet: interrupted; the last checkpoint in the run folder is intact", file=sys.stderr)
        return 130
