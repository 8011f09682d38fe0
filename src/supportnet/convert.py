"""``convert(model)``: put a :class:`HardThreshold` at every ReLU site of any PyTorch model.

Two paths:

* **fx** (preferred): ``torch.fx.symbolic_trace`` finds every ReLU *call site*,
  whatever its form: the module ``nn.ReLU`` (in place or not), ``F.relu``,
  ``torch.relu``, ``torch.relu_`` and the method ``x.relu()`` / ``x.relu_()``.
  Each site gets its own ``HardThreshold``, so a ReLU module that is called at
  two places (torchvision's ResNet blocks do this) becomes two layers with two
  supports, as the paper's per-layer support requires. The result is a
  ``torch.fx.GraphModule`` with the original parameter names.
* **module swap** (fallback, for models fx cannot trace, e.g. data-dependent
  control flow): every ``nn.ReLU`` child module is replaced in place. Functional
  relus are invisible to this path; the report says so.

With ``tau = 0`` the converted model computes exactly what the original did
(``HardThreshold`` in ``free`` mode calls ``torch.relu``), bit for bit; conversion
only makes the supports controllable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .layers import HardThreshold

#: Non-linear modules and functions that are reported but left in place (they are not ReLUs).
OTHER_NONLINEAR = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool2d,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.ELU,
    nn.LeakyReLU,
    nn.PReLU,
    nn.Softplus,
    nn.Hardtanh,
    nn.Mish,
    nn.ReLU6,
    nn.Hardswish,
    nn.Softmax,
)
OTHER_FUNCTIONS = {
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.adaptive_max_pool2d,
    F.gelu,
    F.silu,
    torch.tanh,
    torch.sigmoid,
    F.elu,
    F.leaky_relu,
    F.relu6,
    F.hardtanh,
    F.softplus,
    F.mish,
    F.softmax,
    torch.max_pool2d,
    F.hardswish,
}
RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_, F.relu_}
RELU_METHODS = {"relu", "relu_"}
OTHER_METHODS = {"sigmoid", "tanh", "softmax", "clamp", "clamp_"}


@dataclass
class ConversionReport:
    model: nn.Module
    converted: list[str] = field(default_factory=list)  # "name (form)" of every site now a HardThreshold
    left_alone: list[str] = field(default_factory=list)  # other non-linearities, unchanged
    path: str = "fx"  # "fx" or "module"
    reason: str = ""  # why the fallback was taken

    def __str__(self) -> str:
        s = f"converted {len(self.converted)} ReLU site(s) via the {self.path} path"
        if self.reason:
            s += f" ({self.reason})"
        if self.converted:
            s += ": " + ", ".join(self.converted)
        if self.left_alone:
            s += f"; left {len(self.left_alone)} other non-linearit(ies) alone: " + ", ".join(self.left_alone)
        return s


def convert(model: nn.Module, tau: float = 0.0, path: str = "auto", *, tau_in_state_dict: bool = False) -> nn.Module:
    """Replace every ReLU site of ``model`` by ``HardThreshold(tau)`` and return the converted
    model: ``model = supportnet.convert(model)``. See the module docstring.

    ``path``: ``auto`` (fx, falling back to the module swap), ``fx`` (fail if fx cannot trace)
    or ``module``. The fx path returns a new ``torch.fx.GraphModule`` (same parameters, same
    names) and leaves ``model`` as it was; the module swap changes ``model`` in place and
    returns it. Either way, use the returned model. :func:`conversion_report` says which sites
    were converted and which non-linearities were left alone.

    ``tau_in_state_dict``: every new layer keeps its ``tau`` in the model's ``state_dict``
    (:class:`HardThreshold`), so a ``tau > 0`` model's saved state round-trips by itself. Off
    by default: the converted model's state dict loads strictly into the original ReLU model.
    """
    report = _convert(model, tau, path, tau_in_state_dict)
    report.model.supportnet_conversion = report  # read by conversion_report()
    return report.model


def conversion_report(model: nn.Module) -> ConversionReport:
    """What :func:`convert` did to ``model``: converted sites, other non-linearities, the path."""
    report = getattr(model, "supportnet_conversion", None)
    if report is None:
        raise ConfigError(f"{type(model).__name__} was not made by supportnet.convert; convert it first")
    return report


def _convert(model: nn.Module, tau: float, path: str, saved: bool = False) -> ConversionReport:
    if path not in ("auto", "fx", "module"):
        raise ConfigError(f"unknown conversion path {path!r}; use auto, fx or module")
    if path != "module":
        try:
            return _convert_fx(model, tau, saved)
        except Exception as e:  # noqa: BLE001 - fx raises many kinds of errors on untraceable code
            if path == "fx":
                raise ConfigError(
                    f"torch.fx cannot trace {type(model).__name__} ({type(e).__name__}: "
                    f"{str(e).splitlines()[0][:120]}); use path='module'"
                ) from None
            report = _convert_modules(model, tau, saved)
            report.reason = f"fx could not trace the model: {type(e).__name__}"
            return report
    return _convert_modules(model, tau, saved)


def _convert_fx(model: nn.Module, tau: float, saved: bool = False) -> ConversionReport:

    gm = trace(model)
    modules = dict(gm.named_modules())
    report = ConversionReport(gm, path="fx")
    used: set[str] = set(modules)
    first_use: set[str] = set()
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for node in list(gm.graph.nodes):
        form = None
        if node.op == "call_module":
            mod = modules[node.target]
            if type(mod) is nn.ReLU:
                form = "nn.ReLU" + (", in place" if mod.inplace else "")
            elif isinstance(mod, HardThreshold):
                report.left_alone.append(f"{node.target} (already HardThreshold)")
            elif isinstance(mod, OTHER_NONLINEAR):
                report.left_alone.append(f"{node.target} ({type(mod).__name__})")
        elif node.op == "call_function":
            if node.target in RELU_FUNCTIONS:
                form = f"{getattr(node.target, '__module__', 'torch')}.{node.target.__name__}"
            elif node.target in OTHER_FUNCTIONS:
                report.left_alone.append(f"{node.name} ({node.target.__name__})")
        elif node.op == "call_method":
            if node.target in RELU_METHODS:
                form = f"Tensor.{node.target}()"
            elif node.target in OTHER_METHODS:
                report.left_alone.append(f"{node.name} (Tensor.{node.target})")
        if form is None:
            continue
        if node.op == "call_module" and node.target not in first_use:
            name = node.target  # the first call of a ReLU module keeps its name (and state-dict place)
            first_use.add(name)
        else:  # a second call of the same module, or a functional site: a new layer of its own
            name = _unique(node.target if node.op == "call_module" else node.name, used)
        used.add(name)
        gm.add_submodule(name, HardThreshold(tau, tau_in_state_dict=saved))
        inp = node.args[0] if node.args else node.kwargs.get("input")
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(name, args=(inp,))
        order[new] = order[node]
        node.replace_all_uses_with(new)
        if _inplace(node, modules) and isinstance(inp, torch.fx.Node):
            # an in-place relu also changed its input: later readers of the input read the output
            at = order[node]
            inp.replace_all_uses_with(
                new, delete_user_cb=lambda u, new=new, at=at: u is not new and order.get(u, -1) > at
            )
        gm.graph.erase_node(node)
        report.converted.append(f"{name} ({form})")
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return report


def trace(model: nn.Module):
    """``torch.fx`` trace of ``model`` that keeps every :class:`HardThreshold` as one module call."""
    import torch.fx as fx

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return isinstance(m, HardThreshold) or super().is_leaf_module(m, qualname)

    root = model
    graph = _Tracer().trace(root)
    return fx.GraphModule(root, graph, type(root).__name__)


def _inplace(node, modules) -> bool:
    if node.op == "call_module":
        return bool(getattr(modules[node.target], "inplace", False))
    if node.op == "call_method":
        return node.target == "relu_"
    return (
        node.target in (torch.relu_, F.relu_)
        or bool(node.kwargs.get("inplace"))
        or (node.target is F.relu and len(node.args) > 1 and bool(node.args[1]))
    )


def _unique(base: str, used: set[str]) -> str:
    name, i = base, 1
    while name in used:
        name, i = f"{base}_{i}", i + 1
    return name


def _convert_modules(model: nn.Module, tau: float, saved: bool = False) -> ConversionReport:
    report = ConversionReport(model, path="module")
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            where = f"{name}.{child_name}" if name else child_name
            if type(child) is nn.ReLU:
                setattr(module, child_name, HardThreshold(tau, tau_in_state_dict=saved))
                report.converted.append(f"{where} (nn.ReLU)")
            elif isinstance(child, OTHER_NONLINEAR):
                report.left_alone.append(f"{where} ({type(child).__name__})")
    return report
