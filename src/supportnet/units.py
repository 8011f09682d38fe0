"""Prunable units: the threshold layers that sit in a chain, and a model without their pruned channels.

What DSD's support pruning (:mod:`supportnet.dsd`, paper Table 8) and the compact export
(:mod:`supportnet.export`) share. A *unit* is a channel of a threshold layer that stands in a
chain: producer Conv/Linear (optionally followed by batch norm) -> threshold -> channel-wise ops
(pooling, dropout, flatten) -> consumer Conv/Linear, each with a single user (checked with
torch.fx). Threshold layers elsewhere (residual sums, concatenations, the class maps of NIN)
are left alone and reported. :class:`Pruning` says what is pruned; :func:`compact` builds the
physically smaller model with the same outputs; :func:`count_flops` counts what it saves.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn

from .convert import trace
from .errors import ConfigError
from .layers import HardThreshold, layer_mode

__all__ = ["CHANNELWISE", "Pruning", "Unit", "compact", "count_flops", "find_units"]

CHANNELWISE = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Dropout, nn.Identity, nn.Flatten)


@dataclass
class Unit:
    """A prunable threshold layer and its neighbours (qualified module names)."""

    act: str
    producer: str
    bn: str | None
    consumer: str
    channels: int
    block: int = 1  # consumer Linear after flatten: input features per channel


@dataclass
class Pruning:
    keep: dict[str, torch.Tensor] = field(default_factory=dict)  # parameter name -> bool mask (True: kept)
    units: dict[str, list[int]] = field(default_factory=dict)  # threshold layer -> pruned channels
    left_alone: list[str] = field(default_factory=list)

    def sparsity(self, model: nn.Module) -> dict:
        params = dict(model.named_parameters())
        per = {n: 1.0 - m.float().mean().item() for n, m in self.keep.items()}
        tot = sum(p.numel() for n, p in params.items() if p.dim() > 1)
        zero = sum((~m).sum().item() for n, m in self.keep.items() if params[n].dim() > 1)
        return {"weights": zero / max(tot, 1), "per_param": per, "units": {k: len(v) for k, v in self.units.items()}}


def find_units(model: nn.Module) -> tuple[list[Unit], list[str]]:
    """Chain-structured threshold layers of ``model`` (see the module docstring)."""
    try:
        gm = trace(model)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(
            f"support pruning needs a model torch.fx can trace ({type(e).__name__}); use dsd.prune=magnitude"
        ) from None
    mods = dict(model.named_modules())
    units, skipped = [], []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), HardThreshold):
            continue
        why = None
        prev = node.args[0]
        bn = None
        if (
            isinstance(prev, fx.Node)
            and prev.op == "call_module"
            and isinstance(mods[prev.target], nn.BatchNorm2d)
            and len(prev.users) == 1
        ):
            bn, prev = prev.target, prev.args[0]
        if not (
            isinstance(prev, fx.Node)
            and prev.op == "call_module"
            and isinstance(mods[prev.target], (nn.Conv2d, nn.Linear))
            and len(prev.users) == 1
        ):
            why = "no single Conv/Linear producer"
        cur, consumer = node, None
        while why is None:
            if len(cur.users) != 1:
                why = "its output has several users"
                break
            cur = next(iter(cur.users))
            if cur.op == "call_module" and isinstance(mods[cur.target], (nn.Conv2d, nn.Linear)):
                consumer = cur.target
                break
            ok = (
                (cur.op == "call_module" and isinstance(mods[cur.target], CHANNELWISE))
                or (cur.op == "call_function" and cur.target in (torch.flatten,))
                or (cur.op == "call_method" and cur.target in ("flatten", "view", "reshape"))
            )
            if not ok:
                why = "no Conv/Linear consumer through channel-wise ops"
        if why is None:
            p, c = mods[prev.target], mods[consumer]
            ch = p.out_channels if isinstance(p, nn.Conv2d) else p.out_features
            if isinstance(c, nn.Conv2d):
                if c.in_channels != ch or c.groups != 1:
                    why = "consumer channels do not match"
                block = 1
            else:
                block = c.in_features // ch if c.in_features % ch == 0 else 0
                if not block:
                    why = "consumer features do not match"
            if getattr(p, "groups", 1) != 1:
                why = "grouped producer"
        if why:
            skipped.append(f"{node.target} ({why})")
            continue
        units.append(Unit(node.target, prev.target, bn, consumer, ch, block))
    return units, skipped


def compact(model: nn.Module, units: list[Unit], pruning: Pruning) -> nn.Module:
    """A physically smaller copy of ``model`` without the pruned channels (same outputs)."""
    small = copy.deepcopy(model)
    mods = dict(small.named_modules())

    def put(name: str, new: nn.Module) -> None:
        parent, _, child = name.rpartition(".")
        setattr(mods[parent] if parent else small, child, new)
        mods[name] = new

    for u in units:
        dead = pruning.units.get(u.act)
        if not dead:
            continue
        keep = torch.tensor([c for c in range(u.channels) if c not in set(dead)])
        p = mods[u.producer]
        if isinstance(p, nn.Conv2d):
            q = nn.Conv2d(
                p.in_channels,
                len(keep),
                p.kernel_size,
                p.stride,
                p.padding,
                p.dilation,
                1,
                p.bias is not None,
                p.padding_mode,
            )
        else:
            q = nn.Linear(p.in_features, len(keep), p.bias is not None)
        with torch.no_grad():
            q.weight.copy_(p.weight[keep])
            if p.bias is not None:
                q.bias.copy_(p.bias[keep])
        put(u.producer, q)
        if u.bn:
            b = mods[u.bn]
            nb = nn.BatchNorm2d(len(keep), b.eps, b.momentum, b.affine, b.track_running_stats)
            with torch.no_grad():
                for attr in ("weight", "bias", "running_mean", "running_var"):
                    if getattr(b, attr) is not None:
                        getattr(nb, attr).copy_(getattr(b, attr)[keep])
            put(u.bn, nb)
        c = mods[u.consumer]
        if isinstance(c, nn.Conv2d):
            nc = nn.Conv2d(
                len(keep),
                c.out_channels,
                c.kernel_size,
                c.stride,
                c.padding,
                c.dilation,
                1,
                c.bias is not None,
                c.padding_mode,
            )
            cols = keep
        else:
            nc = nn.Linear(len(keep) * u.block, c.out_features, c.bias is not None)
            cols = (keep[:, None] * u.block + torch.arange(u.block)[None, :]).flatten()
        with torch.no_grad():
            nc.weight.copy_(c.weight[:, cols])
            if c.bias is not None:
                nc.bias.copy_(c.bias)
        put(u.consumer, nc)
    return small


def count_flops(model: nn.Module, in_shape) -> int:
    """Multiply-accumulates x 2 of the Conv2d and Linear layers for one input."""
    total = [0]

    def conv(m, i, o):
        total[0] += 2 * o.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def lin(m, i, o):
        total[0] += 2 * m.in_features * m.out_features

    hs = [
        m.register_forward_hook(conv if isinstance(m, nn.Conv2d) else lin)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    was = model.training
    model.eval()
    with torch.no_grad(), _free(model):
        model(torch.zeros(1, *in_shape, device=next(model.parameters()).device))
    model.train(was)
    for h in hs:
        h.remove()
    return total[0]


def _free(model):
    return layer_mode(model, "free")
