"""``convert(model)``: swap every ReLU module of any PyTorch model for a HardThreshold.

With ``tau = 0`` the converted model computes exactly what the original did
(``HardThreshold`` in ``free`` mode calls ``torch.relu``), so conversion never
changes a trained model's outputs; it only makes its supports controllable.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .layers import HardThreshold

#: Non-linear modules that are reported but left in place (they are not ReLUs).
OTHER_NONLINEAR = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool2d, nn.GELU, nn.SiLU, nn.Tanh,
                   nn.Sigmoid, nn.ELU, nn.LeakyReLU, nn.PReLU, nn.Softplus, nn.Hardtanh, nn.Mish)


@dataclass
class ConversionReport:
    model: nn.Module
    converted: list[str] = field(default_factory=list)  # module paths now HardThreshold
    left_alone: list[str] = field(default_factory=list)  # other non-linearities, unchanged
    path: str = "module"  # how the sites were found

    def __str__(self) -> str:
        s = f"converted {len(self.converted)} ReLU site(s) via {self.path} swap"
        if self.converted:
            s += ": " + ", ".join(self.converted)
        if self.left_alone:
            s += f"; left {len(self.left_alone)} other non-linearit(ies) alone: " + ", ".join(self.left_alone)
        return s


def convert(model: nn.Module, tau: float = 0.0) -> ConversionReport:
    """Replace every ``nn.ReLU`` (and ``nn.ReLU6`` is *not* touched) by ``HardThreshold(tau)`` in place."""
    report = ConversionReport(model)
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            path = f"{name}.{child_name}" if name else child_name
            if type(child) is nn.ReLU:
                setattr(module, child_name, HardThreshold(tau))
                report.converted.append(path)
            elif isinstance(child, OTHER_NONLINEAR) or type(child) is nn.ReLU6:
                report.left_alone.append(f"{path} ({type(child).__name__})")
    return report
