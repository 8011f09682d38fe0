"""Models that leave as plain PyTorch: ``final.pt``, ``model.safetensors``, exports, ``load_model``.

A trained network is the paper's network with a fixed ``tau`` per threshold layer (Eq. 9,
``eta*(q; tau) = q if q > tau else 0``) and no support held fixed: the free mode. That is
what leaves a run, in forms that need no supportnet to use:

* ``final.pt``: ``{"state_dict", "config", "metrics", "taus", "arch", "supportnet"}``,
  one ``torch.save`` (:mod:`supportnet.checkpoint`). ``["state_dict"]`` loads, strictly,
  into the model built with ``nn.ReLU`` (a ``HardThreshold`` has no parameters or buffers);
  ``"taus"`` maps each threshold layer's name to its ``tau``; ``"arch"`` names the registry
  model, its input shape, classes and options.
* ``model.safetensors`` beside it: the same tensors; ``arch``, ``taus`` and ``config`` as JSON
  and the SHA-256 of all of it in the safetensors metadata (written atomically by
  ``safetensors.torch.save_file``; read by the ``safetensors`` package, the SHA-256 checked).
* ``supportnet export``: ``state_dict`` (a checkpoint of kind ``state_dict``, or
  ``compact`` with ``--compact``), ``safetensors``, ``torchscript`` and ``onnx``. The last two
  hold the network with every threshold layer replaced by plain PyTorch: ``nn.ReLU`` where
  ``tau == 0``, else ``nn.Threshold(tau, 0)``, which computes Eq. 9 with ``tau`` stored in the
  file. Each export is loaded back and its outputs compared with the model's before it is
  kept (within 1e-5; ONNX through onnxruntime).
* :func:`load_model` reads ``final.pt``, ``model.safetensors``, a state_dict export or a
  compact DSD export (or a run folder) and returns the model in eval mode, ``tau`` restored.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._optional import require
from .artifacts import (  # noqa: F401  (re-exported: export's public names)
    SAFETENSORS_FORMAT,
    arch_of,
    plain_state_dict,
    read_safetensors,
    save_final,
    taus_of,
    write_safetensors,
)
from .build import build
from .checkpoint import describe, expect_kind, read_checkpoint, save_checkpoint
from .choices import EXPORT_FORMATS
from .config import from_dict
from .errors import ConfigError, IntegrityError, SupportnetError
from .io import atomic_write
from .layers import HardThreshold, configure, layer_mode, threshold_layers
from .models import count_params, create_model, on_meta
from .units import Pruning, compact, count_flops, find_units

log = logging.getLogger("supportnet")

TOL = 1e-5  #: an export's outputs must match the model's within this (absolute and relative)
MODEL_KINDS = ("final", "state_dict", "compact", "sparse")  #: checkpoint kinds load_model reads
MAX_INPUT = 3 * 1024 * 1024  #: most values in one input (C*H*W) an arch may declare: 3x1024x1024


@dataclass
class Loaded:
    """A model read back by :func:`read_model`, with what describes it."""

    model: nn.Module
    arch: dict
    taus: dict[str, float]
    config: dict
    kind: str  # the checkpoint kind, or "safetensors"
    units: dict[str, list[int]] | None = None  # a compact model: the pruned channels per layer
    extra: dict = field(default_factory=dict)  # a DSD sparse checkpoint's keep/units


# ----------------------------------------------------------------------------- loading


def _resolve(path: Path) -> Path:
    if path.is_dir():
        for name in ("final.pt", "model.safetensors"):
            if (path / name).is_file():
                return path / name
        raise ConfigError(f"{path} holds no final.pt or model.safetensors; pass a finished run's folder or a file")
    if not path.exists():
        raise ConfigError(f"{path} does not exist; pass a run folder, final.pt, model.safetensors or an export")
    if not path.is_file():
        raise ConfigError(f"{path} is not a file; pass a run folder, final.pt, model.safetensors or an export")
    return path


def _sniff(path: Path) -> str:
    """``"safetensors"``, ``"onnx"``, ``"torchscript"`` or ``"checkpoint"``, from the file's bytes."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{" and path.suffix != ".pt":
        return "safetensors"
    if path.suffix == ".onnx":
        return "onnx"
    if head.startswith(b"PK"):
        import zipfile

        try:
            with zipfile.ZipFile(path) as z:
                if any(n.split("/", 1)[-1] == "constants.pkl" for n in z.namelist()):
                    return "torchscript"
        except (zipfile.BadZipFile, OSError, ValueError):
            pass
    return "checkpoint"


def read_model(path: str | Path, kinds: tuple[str, ...] = MODEL_KINDS) -> Loaded:
    """Like :func:`load_model`, and also returns what describes the model (:class:`Loaded`).

    ``kinds``: the checkpoint kinds accepted (a safetensors file counts as ``final``)."""
    path = _resolve(Path(path))
    what = _sniff(path)
    if what == "onnx":
        raise ConfigError(f"{path} is an ONNX model; run it with onnxruntime (supportnet loads .pt and .safetensors)")
    if what == "torchscript":
        raise ConfigError(f"{path} is a TorchScript model; load it with torch.jit.load (no supportnet needed)")
    if what == "safetensors":
        expect_kind(path, "final", kinds)
        tensors, info = read_safetensors(path)
        return _rebuild(path, tensors, info, "safetensors")
    payload, kind, _ = read_checkpoint(path)
    expect_kind(path, kind, kinds)  # e.g. "X is a resume checkpoint, not a final model; ..."
    loaded = _rebuild(path, payload["state_dict"], payload, kind)
    if kind == "sparse":
        loaded.extra = {"keep": payload["keep"], "units": payload["units"]}
    return loaded


def load_model(path: str | Path) -> nn.Module:
    """The model in ``path``, ready for ``eval``: ``tau`` restored, every layer in free mode.

    ``path``: a run folder (its ``final.pt``), ``final.pt``, ``model.safetensors``, an export
    of ``supportnet export --format state_dict|safetensors``, a compact DSD export
    (``--compact``) or a DSD ``sparse.pt``. The model is built from the registry as the run
    built it (``arch``), so no data set is read, except for files written before ``arch``
    was recorded, whose data set gives the input shape.
    """
    return read_model(path).model


def _rebuild(path: Path, sd: dict, info: dict, kind: str) -> Loaded:
    """Build the model ``info["arch"]`` names, check ``sd`` fits it, load it and set the taus."""
    config = info.get("config") or {}
    if not isinstance(config, dict):
        raise IntegrityError(f"{path}: its config is not a mapping; use another file")
    arch = info.get("arch") or _arch_from_data(path, config)
    _check_arch(path, arch)
    units = info.get("units") if kind != "sparse" else None  # a sparse checkpoint's units are pruned, not removed

    with on_meta():  # shapes first: a forged arch costs nothing before it is refused
        try:
            skeleton = _build(path, arch, units)
        except (ValueError, RuntimeError, TypeError, OverflowError) as e:
            raise IntegrityError(
                f"{path}: its arch ({arch['name']} with {arch['kwargs']}) cannot be built "
                f"({type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}); use another file"
            ) from None
        _check_fits(path, arch, skeleton, sd)
    torch_state = torch.get_rng_state()  # building draws initial weights: leave the caller's generator as it was
    try:
        model = _build(path, arch, units)
    finally:
        torch.set_rng_state(torch_state)
    model.load_state_dict(sd)
    taus = info.get("taus")
    if taus is None:  # written before taus were recorded: the config's support.tau
        taus = _taus_from_config(model, config)
    layers = threshold_layers(model)
    if not (
        isinstance(taus, dict)
        and sorted(map(str, taus)) == sorted(n for n, _ in layers)
        and all(type(v) in (int, float) and math.isfinite(v) for v in taus.values())
    ):
        raise IntegrityError(
            f"{path}: its taus are not one finite number for each of the model's threshold layers "
            f"(taus name other layers, or hold something else); use another file"
        )
    configure(model, mode="free", tau=[float(taus[n]) for n, _ in layers])
    return Loaded(model.eval(), arch, {n: float(taus[n]) for n, _ in layers}, config, kind, units)


def _build(path: Path, arch: dict, units: Any) -> nn.Module:

    model = create_model(arch["name"], in_shape=arch["in_shape"], num_classes=arch["num_classes"], **arch["kwargs"])
    return _shrink(path, model, units) if units else model


def _check_fits(path: Path, arch: dict, skeleton: nn.Module, sd: dict) -> None:
    want = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in sd.items()}
    if want == have:
        return
    bad = sorted(set(want) ^ set(have)) or sorted(k for k in want if want[k] != have[k])
    k = bad[0]
    raise IntegrityError(
        f"{path} does not fit the {arch['name']} it names ({k}: file {have.get(k, 'missing')}, "
        f"model {want.get(k, 'missing')}); use the file's own model options"
    )


def _check_arch(path: Path, a: Any) -> None:
    ok = (
        isinstance(a, dict)
        and isinstance(a.get("name"), str)
        and isinstance(a.get("in_shape"), list)
        and len(a["in_shape"]) == 3
        and all(type(s) is int and s > 0 for s in a["in_shape"])
        and math.prod(a["in_shape"]) <= MAX_INPUT
        and type(a.get("num_classes")) is int
        and 0 < a["num_classes"] <= 1 << 20
        and isinstance(a.get("kwargs"), dict)
    )
    if not ok:
        raise IntegrityError(f"{path}: its 'arch' (model, input shape, classes) is malformed; use another file")


def _arch_from_data(path: Path, config: dict) -> dict:
    """A file written before ``arch`` was recorded: the data set gives the input shape."""
    log.info("%s records no input shape; reading its data set for it", path)
    cfg = from_dict(config)
    data, _ = build(cfg)
    return arch_of(cfg, data.in_shape, data.num_classes)


def _taus_from_config(model: nn.Module, config: dict) -> dict[str, float]:
    names = [n for n, _ in threshold_layers(model)]
    tau = (config.get("support") or {}).get("tau", 0.0)
    taus = list(tau) if isinstance(tau, list) else [tau] * len(names)
    if len(taus) != len(names) or not all(isinstance(t, (int, float)) and math.isfinite(t) for t in taus):
        raise IntegrityError(f"support.tau in the file's config does not fit the model ({len(names)} layers)")
    return dict(zip(names, map(float, taus)))


def _shrink(path: Path, model: nn.Module, units: Any) -> nn.Module:
    """The compact model's modules: the dense model without the pruned channels."""
    found = _check_units(path, model, units)
    return compact(model, found, Pruning(units={k: list(v) for k, v in units.items()}))


def _check_units(path: Path, model: nn.Module, units: Any) -> list:
    """``units`` (threshold layer -> pruned channels) fits ``model``; returns its prunable units."""
    ok = isinstance(units, dict) and all(
        isinstance(k, str) and isinstance(v, list) and all(type(c) is int for c in v) for k, v in units.items()
    )
    found, _ = find_units(model)
    known = {u.act: u.channels for u in found}
    if ok:
        for k, v in units.items():
            ok = ok and k in known and all(0 <= c < known[k] for c in v) and len(set(v)) < known[k]
    if not ok:
        raise IntegrityError(f"{path}: its pruned 'units' do not fit the model; use another file")
    return found


# ----------------------------------------------------------------------------- plain PyTorch


def plain_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every :class:`HardThreshold` replaced by plain PyTorch:
    ``nn.ReLU()`` where ``tau == 0``, else ``nn.Threshold(tau, 0.0)`` (Eq. 9 in free mode).
    The copy has the same parameter names and computes the model's free-mode output."""
    small = copy.deepcopy(model).eval()
    for name, layer in threshold_layers(small):
        new = nn.ReLU() if layer.tau == 0.0 else nn.Threshold(layer.tau, 0.0)
        parent, _, child = name.rpartition(".")
        setattr(small.get_submodule(parent) if parent else small, child, new)
    if any(isinstance(m, HardThreshold) for m in small.modules()):
        raise ConfigError("a threshold layer could not be replaced (the model itself is one); export its parent")
    return small


def example_input(arch: dict, n: int = 4, seed: int = 0) -> torch.Tensor:
    """A seeded batch of ``n`` inputs of the model's shape, for checking exports."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *arch["in_shape"], generator=g)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def _check_close(what: str, ref: torch.Tensor, got: torch.Tensor) -> float:
    diff = _max_diff(ref, got)
    bound = TOL + TOL * ref.abs().max().item()
    if not (diff <= bound):
        raise SupportnetError(
            f"the {what} export's outputs differ from the model's by {diff:.3g} (> {bound:.3g}); "
            f"nothing was written, report this with the model's name"
        )
    return diff


def _torchscript_bytes(plain: nn.Module, x: torch.Tensor, info: dict) -> tuple[bytes, float]:
    import warnings

    with warnings.catch_warnings():  # torch 2.13 marks TorchScript deprecated; torch.jit.load still reads it
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            scripted = torch.jit.script(plain)
        except Exception:  # noqa: BLE001 - models TorchScript cannot compile: trace the free forward instead
            scripted = torch.jit.trace(plain, x[:1], check_trace=False)
        buf = io.BytesIO()
        torch.jit.save(scripted, buf, _extra_files={"supportnet.json": json.dumps(info, sort_keys=True)})
        back = torch.jit.load(io.BytesIO(buf.getvalue()), map_location="cpu")
    with torch.no_grad():
        diff = _check_close("TorchScript", plain(x), back(x))
    return buf.getvalue(), diff


def _onnx_bytes(plain: nn.Module, x: torch.Tensor, info: dict) -> tuple[bytes, float]:

    require("onnx"), require("onnxscript")
    ort = require("onnxruntime")
    batch = torch.export.Dim("batch", min=1)
    for name in ("torch.onnx", "torch.export", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import contextlib
    import warnings

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            plain,
            (x,),
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            dynamo=True,
            verbose=False,
        )
    proto = prog.model_proto
    for k, v in (("supportnet", json.dumps(info, sort_keys=True)),):
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    raw = proto.SerializeToString()
    sess = ort.InferenceSession(raw, providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        diff = _check_close("ONNX", plain(x), got)
    return raw, diff


def check_output_path(out: Path, sources: list[Path]) -> None:
    """Refuse, before any work, an output that is a folder or one of the inputs."""
    if out.is_dir():
        raise ConfigError(f"-o {out} is a folder; give a file name, e.g. -o {out / 'model.pt'}")
    try:
        same = out.exists() and any(s.exists() and out.samefile(s) for s in sources)
    except OSError:
        same = False
    same = same or any(out.resolve() == s.resolve() for s in sources)
    if same:
        raise ConfigError(f"-o {out} is the input itself; write the export to another file")
    if out.parent.exists() and not out.parent.is_dir():
        raise ConfigError(f"-o {out}: {out.parent} is a file, not a folder; choose another output path")


def export_model(src: str | Path, fmt: str, out: str | Path, compact: bool = False) -> dict:
    """``supportnet export``: write the model of ``src`` (see :func:`load_model`) as ``fmt``.

    ``compact``: ``src`` is a DSD ``sparse.pt``; its pruned channels are removed first.
    Returns what was done: ``kind``, ``params``, ``max_abs_diff`` (the export against the
    model, or the compact model against the masked one) and, for ``compact``, the counts
    before and after.
    """
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}")
    src, out = Path(src), Path(out)
    check_output_path(out, [src, src / "final.pt", src / "model.safetensors"] if src.is_dir() else [src])
    ld = read_model(src, ("sparse",) if compact else MODEL_KINDS)
    info: dict = {"format": fmt}
    if compact:
        ld = _compact(src, ld)
        info.update(ld.extra["info"])
    elif ld.kind == "sparse":
        log.info("%s is a DSD sparse checkpoint; exporting it with its pruned weights at zero", src)

    info["params"] = count_params(ld.model)
    meta = {"arch": ld.arch, "taus": ld.taus, "config": ld.config}
    if ld.units:
        meta["units"] = ld.units
    sd = plain_state_dict(ld.model)
    if fmt == "state_dict":
        kind = "compact" if ld.units else "state_dict"
        save_checkpoint(out, {"state_dict": sd, **meta, **({"units": ld.units} if ld.units else {})}, kind=kind)
        info.setdefault("max_abs_diff", 0.0)
    elif fmt == "safetensors":
        write_safetensors(out, sd, meta)
        info.setdefault("max_abs_diff", 0.0)
    else:
        plain, x = plain_copy(ld.model), example_input(ld.arch)
        raw, diff = (_onnx_bytes if fmt == "onnx" else _torchscript_bytes)(plain, x, meta)
        atomic_write(out, lambda f: f.write(raw))
        info["max_abs_diff"] = max(diff, info.get("max_abs_diff", 0.0))
    info["kind"] = "compact" if ld.units else ld.kind
    return info


def _compact(src: Path, ld: Loaded) -> Loaded:
    """The compact model of a DSD sparse checkpoint, checked against the masked one."""
    if ld.kind != "sparse":
        raise ConfigError(
            f"{src} is not a DSD sparse checkpoint (it is {_describe(ld.kind)}); "
            f"pass RUN/sparse.pt from 'supportnet dsd'"
        )
    units = ld.extra["units"]
    found = _check_units(src, ld.model, units)
    units = {k: list(v) for k, v in units.items()}
    small = compact(ld.model, found, Pruning(keep=ld.extra["keep"], units=units)).eval()
    x = example_input(ld.arch, 16)
    with torch.no_grad(), layer_mode(ld.model, "free"), layer_mode(small, "free"):
        diff = _max_diff(ld.model(x), small(x))
    if diff > TOL:
        raise ConfigError(
            f"the compact model differs from the masked one by {diff:.3g} (> {TOL}); "
            f"the checkpoint's pruned weights are not all zero"
        )
    shape = tuple(ld.arch["in_shape"])
    info = {
        "params_before": count_params(ld.model),
        "params_after": count_params(small),
        "flops_before": count_flops(ld.model, shape),
        "flops_after": count_flops(small, shape),
        "max_abs_diff": diff,
    }
    return Loaded(small, ld.arch, ld.taus, ld.config, "compact", units or {}, {"info": info})


def _describe(kind: str) -> str:

    return "model.safetensors" if kind == "safetensors" else describe(kind)
