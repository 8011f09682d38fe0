"""``convert(model)``: put a :class:`HardThreshold` at every ReLU site of any PyTorch model.

``torch.fx.symbolic_trace`` finds every ReLU *call site*, whatever its form: the module
``nn.ReLU`` (in place or not), ``F.relu``, ``torch.relu``, ``torch.relu_`` and the method
``x.relu()`` / ``x.relu_()``. Then one of two paths:

* **module swap** where it suffices: every site is an ``nn.ReLU`` module called once (and an
  in-place one's input is not read again). The modules are replaced in place, so the model
  keeps its class and its own methods (a timm or Hugging Face model keeps ``forward_features``,
  ``reset_classifier``, ``pretrained_cfg``).
* **fx** otherwise (functional relus, a ReLU module called at two places, as in torchvision's
  ResNet blocks): each site gets its own ``HardThreshold``, so a module called twice becomes two
  layers with two supports, as the paper's per-layer support requires. The result is a
  ``torch.fx.GraphModule`` with the original parameter names, and the report says that the
  class changed (the model's own methods are gone).

A model whose whole ``forward`` fx cannot trace (data-dependent control flow, ``int(x.size(1) *
ratio)``) is converted child by child: each child module fx can trace is converted as above
(swapped in place, or replaced by its ``GraphModule``); each one it cannot is searched in turn,
its ``nn.ReLU`` children swapped. A relu called in the forward of a module fx cannot trace is
left, and the report names the modules whose source calls one.

With ``tau = 0`` the converted model computes exactly what the original did
(``HardThreshold`` in ``free`` mode calls ``torch.relu``), bit for bit; conversion
only makes the supports controllable.
"""

from __future__ import annotations

import inspect
import re
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
    path: str = "fx"  # "fx" (a GraphModule) or "module" (modules swapped in place, the class kept)
    reason: str = ""  # why the fallback was taken
    class_changed: list[str] = field(default_factory=list)  # modules now a torch.fx.GraphModule ("": the model)
    left: list[str] = field(default_factory=list)  # modules fx cannot trace whose own forward calls a relu

    def __str__(self) -> str:
        s = f"converted {len(self.converted)} ReLU site(s) via the {self.path} path"
        if self.reason:
            s += f" ({self.reason})"
        if self.converted:
            s += ": " + ", ".join(self.converted)
        if self.left_alone:
            s += f"; left {len(self.left_alone)} other non-linearit(ies) alone: " + ", ".join(self.left_alone)
        if self.class_changed:
            which = ", ".join(n or "the model" for n in self.class_changed)
            s += f"; now a torch.fx.GraphModule (the class changed, its own methods are gone): {which}"
        if self.left:
            which = ", ".join(n or "the model" for n in self.left)
            s += f"; relu sites left (fx cannot trace these modules, whose forward calls a relu): {which}"
        return s


def convert(model: nn.Module, tau: float = 0.0, path: str = "auto", *, tau_in_state_dict: bool = False) -> nn.Module:
    """Replace every ReLU site of ``model`` by ``HardThreshold(tau)`` and return the converted
    model: ``model = supportnet.convert(model)``. See the module docstring.

    ``path``: ``auto`` (the module swap where it converts every site, else fx; child by child
    where fx cannot trace the model), ``fx`` (always a ``GraphModule``; fail if fx cannot trace)
    or ``module`` (swap every ``nn.ReLU`` module). The fx path returns a new
    ``torch.fx.GraphModule`` (same parameters, same names) and leaves ``model`` as it was; the
    module swap changes ``model`` in place and returns it, its class kept. Either way, use the
    returned model. :func:`conversion_report` says which sites
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
    if path == "module":
        return _convert_modules(model, tau, saved)
    try:
        gm = trace(model)
    except Exception as e:  # noqa: BLE001 - fx raises many kinds of errors on untraceable code
        if path == "fx":
            raise ConfigError(
                f"torch.fx cannot trace {type(model).__name__} ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:120]}); use path='module'"
            ) from None
        report = ConversionReport(model, path="module", reason=f"fx could not trace the model: {type(e).__name__}")
        _convert_children(model, "", tau, saved, report)  # each child fx can trace, as convert would
        if _calls_relu(model):
            report.left.append("")
        return report
    if path == "auto" and _swap_suffices(gm):
        return _convert_modules(model, tau, saved, sites=_relu_modules(gm))
    report = _convert_fx(model, tau, saved, gm)
    report.class_changed.append("")
    return report


def _relu_modules(gm) -> set[str]:
    return {n.target for n in gm.graph.nodes if n.op == "call_module" and type(gm.get_submodule(n.target)) is nn.ReLU}


def _swap_suffices(gm) -> bool:
    """Whether swapping modules converts every ReLU site of the traced ``gm`` as fx would: every
    site an ``nn.ReLU`` module called once, and no in-place one's input read after it."""
    calls: dict[str, int] = {}
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in RELU_FUNCTIONS:
            return False
        if node.op == "call_method" and node.target in RELU_METHODS:
            return False
        if node.op != "call_module" or type(mod := gm.get_submodule(node.target)) is not nn.ReLU:
            continue
        calls[node.target] = calls.get(node.target, 0) + 1
        inp = node.args[0] if node.args else None
        if mod.inplace and isinstance(inp, torch.fx.Node) and any(order[u] > order[node] for u in inp.users):
            return False
    return all(c == 1 for c in calls.values())


_RELU_SOURCE = re.compile(r"(?<!self\.)\brelu_?\(")  # F.relu(, torch.relu(, x.relu(; not a self.relu module


def _calls_relu(module: nn.Module) -> bool:
    """Whether the source of ``module``'s own ``forward`` calls a relu (``F.relu``, ``x.relu()``, ...)."""
    try:
        return bool(_RELU_SOURCE.search(inspect.getsource(type(module).forward)))
    except (OSError, TypeError):
        return False


def _convert_children(module: nn.Module, prefix: str, tau: float, saved: bool, report: ConversionReport) -> None:
    """Convert the children of ``module``, whose own forward fx cannot trace: an ``nn.ReLU`` child
    is swapped; a child fx traces is converted as :func:`convert` would (in place, or replaced by
    its ``GraphModule``); a child it cannot is searched in turn."""
    for name, child in list(module.named_children()):
        where = f"{prefix}{name}"
        if type(child) is nn.ReLU:
            setattr(module, name, HardThreshold(tau, tau_in_state_dict=saved))
            report.converted.append(f"{where} (nn.ReLU)")
            continue
        if isinstance(child, OTHER_NONLINEAR):
            report.left_alone.append(f"{where} ({type(child).__name__})")
            continue
        if isinstance(child, HardThreshold) or _is_torch_leaf(child):
            continue
        if isinstance(child, (nn.ModuleList, nn.ModuleDict)):  # no forward of their own: their children
            _convert_children(child, f"{where}.", tau, saved, report)
            continue
        sub = _convert(child, tau, "auto", saved)
        if sub.model is not child:
            setattr(module, name, sub.model)
        report.converted += [f"{where}.{c}" for c in sub.converted]
        report.left_alone += [f"{where}.{c}" for c in sub.left_alone]
        report.class_changed += [f"{where}.{c}" if c else where for c in sub.class_changed]
        report.left += [f"{where}.{c}" if c else where for c in sub.left]


def _is_torch_leaf(module: nn.Module) -> bool:
    """A module of ``torch.nn`` without children (Conv2d, Linear, ...): no relu site inside."""
    return type(module).__module__.startswith("torch.nn.") and not any(True for _ in module.children())


def _convert_fx(model: nn.Module, tau: float, saved: bool = False, gm=None) -> ConversionReport:
    gm = trace(model) if gm is None else gm
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


def _convert_modules(
    model: nn.Module, tau: float, saved: bool = False, sites: set[str] | None = None
) -> ConversionReport:
    """Swap ``nn.ReLU`` children in place (``sites``: only these qualified names, the ones the
    forward calls; default every one)."""
    report = ConversionReport(model, path="module")
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            where = f"{name}.{child_name}" if name else child_name
            if type(child) is nn.ReLU and (sites is None or where in sites):
                setattr(module, child_name, HardThreshold(tau, tau_in_state_dict=saved))
                report.converted.append(f"{where} (nn.ReLU)")
            elif isinstance(child, OTHER_NONLINEAR):
                report.left_alone.append(f"{where} ({type(child).__name__})")
    return report
