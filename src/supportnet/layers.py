"""Positive hard-thresholding with a support that can be held fixed.

Implements the paper's non-linearity (Huang, Kong, Lucey 2017, Eq. 9)

    eta*(q; tau) = q  if q > tau else 0,

and its re-reading as a binary support ``m = 1[q > tau]`` (Eq. 12-13). One
module, :class:`HardThreshold`, replaces ``nn.ReLU``. The training loop (never
the model code) sets its *mode*:

=========  ==================================================================
mode       forward
=========  ==================================================================
free       ``q * 1[q > tau]``; with ``tau == 0`` this *is* ``torch.relu``
instance   fixed per-example support ``m_n`` supplied by the loop
batch      support shared by the batch, from this batch's ``q`` (Eq. 39-41)
binary     ``1[q > tau]``, the mask itself (the paper's "MaskT" test)
record     as ``free``, and keeps the mask in ``last_mask``
probe      as ``free``, and keeps per-unit batch statistics (``probe_stats``)
           from which a batch support is computed later, e.g. over all ranks
=========  ==================================================================

``model.eval()`` means free mode: a layer that is not in training mode runs ``instance`` and
``batch`` as ``free`` (a fixed support belongs to the training step; validation sees the
network). ``record``, ``binary`` and ``probe`` are explicit requests and run as the table says
in either mode. :func:`gated_eval` is ``model.eval()`` with the supports kept (dropout off,
supports on), for the evaluations that want both.

How a fixed support ``m`` is applied is a second choice, ``apply``:

* ``linear`` (Eq. 13, literal): ``z = m * q``. With every support fixed the
  network is linear in its input, which is what Section 3 needs.
* ``gated``: ``z = m * relu_tau(q)``. The support can only switch units off.

Gradients: the mask is a constant in every mode, so ``dz/dq = m``.

Batch rules (the ``x`` of Eq. 39-41 is the layer's free output ``relu_tau(q)``):

* ``energy`` (Eq. 41): ``m_i = 1[sum_n x_{n,i}^2 > beta]``; ``beta = 0`` is the
  OR of the examples' supports.
* ``energy-rel``: ``m_i = 1[sum_n x_{n,i}^2 > beta * mean_j sum_n x_{n,j}^2]``,
  Eq. 41 with ``beta`` measured in units of the layer's mean energy, so one
  value works across layers and batch sizes.
* ``vote`` (the paper's majority-vote remark): ``m_i = 1[mean_n 1[q_{n,i} > tau] > 1/2]``.

Over 500 lines: everything here is one object, :class:`HardThreshold` (about 200 lines: its
modes, its ``apply`` choice, the kernel it picks for each), and the few model-wide functions
that set or read its state (``configure``, ``layer_mode``, ``set_instance_masks``,
``record_masks``, ``collect_stats``). The arithmetic of a support already lives in
:mod:`supportnet.support` and the kernels in :mod:`supportnet.kernels`; what remains changes
together whenever a mode is added.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from . import kernels
from .bits import LayerBits, PackedMasks, put_bits
from .choices import APPLY, MODES, RULES
from .distributed import sum_stats
from .errors import ConfigError
from .kernels import cpu as cpu_kernels
from .support import (
    _BinaryStraightThrough,
    _factor,
    _GatedBatch,
    _GatedInstance,
    batch_support,
    unit_energy,  # noqa: F401  (public here too: the layer's energy, as study and bench read it)
)


def _batch_kernels(q: torch.Tensor, rule: str):
    """The module of fused kernels for a local batch support of ``q`` by ``rule`` (Triton on CUDA,
    C on the CPU), or None for the torch node."""
    if kernels.usable(q) and kernels.trusted(q, "batch", rule):
        return kernels
    return cpu_kernels if cpu_kernels.usable(q) else None


def _packed_instance(q: torch.Tensor, bits: LayerBits, penalty: bool):
    """The module of fused kernels that reads ``bits`` for ``q`` straight from the packed rows, or None
    (the rows are then unpacked, which checks them)."""
    if kernels.usable(q) and kernels.trusted(q, "instance", penalty=penalty):
        return kernels
    if cpu_kernels.usable(q, contiguous=True) and cpu_kernels.rows_fit(q, bits.rows, bits.offset):
        return cpu_kernels
    return None


FREE_IN_EVAL = ("instance", "batch")  # the modes a layer not in training mode runs as free

STAT_GROUP = 8  # examples summed together in float32 by unit_stats before the float64 sum


def unit_stats(q: torch.Tensor, free: torch.Tensor, tau: float, rule: str) -> tuple[torch.Tensor, int]:
    """The per-unit statistic ``rule`` needs, summable over examples (and ranks), in float64,
    and the example count: ``votes = sum_n 1[q > tau]`` for ``vote``, else
    ``energy = sum_n relu_tau(q)^2``.

    Votes are counted in float32, which holds every count up to 2^24 exactly, so they do not
    depend on the order of the sum at all. Energies are summed in float32 within consecutive
    groups of :data:`STAT_GROUP` examples, then across groups in float64. Each group's sum is
    the same number whichever rank holds the group, so when every rank's batch is a multiple
    of the group size the summed support does not depend on how the batch is split, up to
    float64 rounding (otherwise up to float32 rounding of the last partial groups).
    ``torch.sum(..., dtype=float64)`` gives the same guarantee but is not vectorised on the
    CPU: 42 ms against 5 ms for 256x32x28x28 activations, 8x a local support at batch 256.
    """
    b = q.shape[0]
    if rule == "vote":
        return (q > tau).float().sum(0).double(), b
    sq = free * free
    full = b - b % STAT_GROUP
    f32 = torch.float32  # (bf16/fp16 activations under autocast: the groups still add in float32)
    stat = sq[:full].view(full // STAT_GROUP, STAT_GROUP, *sq.shape[1:]).sum(1, dtype=f32).double().sum(0)
    if full < b:
        stat = stat + sq[full:].sum(0, dtype=f32).double()
    return stat, b


def stats_over_ranks(stats: list[torch.Tensor], n: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Sum per-unit statistics (of :func:`unit_stats`) and their example count ``n`` over every
    rank in *one* collective (:func:`supportnet.distributed.sum_stats`): one float64 vector.
    The count comes back as a tensor, so nothing waits for the device."""
    flat = sum_stats(
        torch.cat(
            [s.reshape(-1) for s in stats] + [torch.full((1,), float(n), dtype=torch.float64, device=stats[0].device)]
        )
    )
    parts = flat[:-1].split([s.numel() for s in stats])
    return [p.view_as(s) for p, s in zip(parts, stats)], flat[-1]


def support_from_stats(stat: torch.Tensor, n: float | torch.Tensor, rule: str, beta: float) -> torch.Tensor:
    """The batch support from the statistic of :func:`unit_stats`, summed over ``n`` examples
    (possibly over ranks): votes for ``vote``, energy for the energy rules."""
    if rule == "vote":
        return stat * 2 > n
    if rule == "energy":
        return stat > beta
    if rule == "energy-rel":
        return stat > beta * stat.mean()
    raise ConfigError(f"unknown batch rule {rule!r}; use one of {', '.join(RULES)}")


class HardThreshold(nn.Module):
    """Positive hard-thresholding ``q * 1[q > tau]`` whose support can be fixed.

    A drop-in replacement for ``nn.ReLU`` (``inplace`` is accepted and ignored).
    ``tau`` is a per-layer hyperparameter, not trained. See the module docstring
    for the modes, ``apply`` choices (the ``application`` attribute; ``apply`` stays
    ``nn.Module.apply``) and batch rules.

    ``torch.jit.script``, ``torch.jit.trace`` and ``torch.export`` see the free mode only
    (``q * 1[q > tau]``): they are for the trained, exported network, where no support is fixed.

    ``tau_in_state_dict``: keep ``tau`` in the module's ``state_dict`` (key ``<prefix>tau``, a
    float64 scalar), so that ``torch.save(model.state_dict())`` of a ``tau > 0`` model loads
    back with its thresholds; a strict load without the key is then an error. Off by default:
    the state dict is the ReLU model's (parameters and buffers only), and loads strictly into it.
    """

    def __init__(self, tau: float = 0.0, inplace: bool = False, tau_in_state_dict: bool = False):
        super().__init__()
        self.tau = float(tau)
        self.tau_in_state_dict = bool(tau_in_state_dict)
        if tau_in_state_dict:
            self.register_state_dict_post_hook(_save_tau)
            self.register_load_state_dict_pre_hook(_load_tau)
        self.mode = "free"
        self.application = "gated"  # how a fixed support is applied: linear | gated (config: support.apply)
        self.rule = "energy-rel"
        self.beta = 0.1
        self.instance_mask = None  # (B, *unit) bool, or LayerBits (packed rows), set by the loop
        self.last_mask = None  # (B, *unit) bool, record mode
        self.record_bits = None  # LayerBits: record mode writes the support there, packed (record_rows)
        self.record_done = False  # record_rows: the kernel has written this layer's bits
        self.batch_mask = None  # (*unit) bool, last batch support (the CPU kernels overwrite it next batch)
        self._mask_buf = None  # uint8: where the CPU kernels write the batch support
        self.given_batch_mask = None  # (*unit) bool: batch mode uses it instead of the rule
        self.sync_inline = False  # batch mode: all-reduce this layer's statistics inside the forward
        self.probe_stats = None  # probe mode: the rule's statistic, n
        self.track = False
        self.stats = torch.zeros(4, dtype=torch.float64)  # active, total, drift, drift_total
        self.consistency = 0.0  # weight of the support-consistency penalty (0: not computed)
        self.penalty = None  # last forward's penalty, read by the training loop

    # Plain attributes are set straight into __dict__: nn.Module.__setattr__ checks every value
    # against parameters, buffers and submodules (about 4 us), and the loops set these every batch.
    _PLAIN = frozenset(
        ("tau", "mode", "application", "rule", "beta", "instance_mask", "last_mask", "record_bits", "record_done",
         "batch_mask", "_mask_buf", "given_batch_mask", "sync_inline", "probe_stats", "track", "stats", "consistency",
         "penalty")
    )  # fmt: skip

    def __setattr__(self, name: str, value) -> None:
        if name in HardThreshold._PLAIN and "_parameters" in self.__dict__:
            self.__dict__[name] = value
        else:
            super().__setattr__(name, value)

    def extra_repr(self) -> str:
        saved = ", tau_in_state_dict=True" if self.tau_in_state_dict else ""
        return f"tau={self.tau}, mode={self.mode}, apply={self.application}{saved}"

    def reset_stats(self) -> None:
        """Zero the active-fraction and drift counters (:func:`collect_stats` reads them), in place:
        a captured step (:mod:`supportnet.cuda_graphs`) keeps adding to the same tensor."""
        self.stats.zero_()

    def _free(self, q: torch.Tensor) -> torch.Tensor:
        return torch.relu(q) if self.tau == 0.0 else torch.where(q > self.tau, q, 0.0)

    def _apply_support(self, q: torch.Tensor, m: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        if self.application == "linear":
            out = torch.where(m, q, 0.0)
        else:  # gated: relu_tau(q) * m, the same values and gradient as where(m & (q > tau), q, 0)
            out = (self._free(q) if x is None else x) * _factor(m)
        if self.consistency > 0:
            # Keep the weights consistent with the fixed support: units the support holds off
            # should stay below tau ('gated' and 'linear'); units it holds on above tau ('linear').
            over = torch.where(m, 0.0, torch.relu(q - self.tau))
            pen = over.pow(2).mean()
            if self.application == "linear":
                pen = pen + torch.where(m, torch.relu(self.tau - q), 0.0).pow(2).mean()
            self.penalty = pen
        if self.track:
            self._track_support(q, m, linear=self.application == "linear")
        return out

    def _record(self, q: torch.Tensor) -> torch.Tensor:
        """``record`` mode: the free output, and the support ``1[q > tau]`` written packed into
        ``record_bits`` by the CPU kernel where it runs (:func:`record_rows`), else kept as a bool
        mask in ``last_mask``."""
        bits = self.record_bits
        if bits is not None and bits.shape != q.shape:
            raise RuntimeError(f"record rows for {tuple(bits.shape)} do not match activations {tuple(q.shape)}")
        if (
            bits is not None
            and not self.record_done  # a layer called twice: the last call's support, as record_masks
            and not (q.requires_grad and torch.is_grad_enabled())
            and cpu_kernels.usable(q, contiguous=True)
            and cpu_kernels.rows_fit(q, bits.rows, bits.offset)
        ):
            self.record_done = True  # written (record_rows packs the layers whose bits are left)
            return cpu_kernels.record(q, self.tau, bits.rows, bits.offset)
        self.last_mask = (q > self.tau).detach()
        return self._free(q)

    @torch.no_grad()
    def _track_support(self, q: torch.Tensor, m: torch.Tensor, linear: bool = False) -> None:
        """Count the active units under the fixed support ``m`` (broadcast over the batch when
        shared) and its drift from the free support ``1[q > tau]``."""
        free = q > self.tau
        on = m if linear else (m & free)
        self._count(on.expand_as(q).sum(), q.numel(), (free != m).sum(), q.numel())

    def _count(self, active: torch.Tensor | int, total: int, drift, drift_total: int) -> None:
        # accumulated where the activations live, so counting never waits for the device
        if isinstance(active, torch.Tensor) and self.stats.device != active.device:
            self.stats = self.stats.to(active.device)
        self.stats[0].add_(active)
        self.stats[1].add_(float(total))
        if isinstance(drift, torch.Tensor) or drift:
            self.stats[2].add_(drift)
        self.stats[3].add_(float(drift_total))

    def _batch_rule(self, q: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        """This batch's support ``(*unit)`` (bool): the given one, the rule's over every rank
        (``sync_inline``), or the rule's over this batch. ``x``: the free output, if computed."""
        m = self.given_batch_mask
        if m is not None:
            return m
        if self.sync_inline:  # this layer's statistics summed over every rank
            with torch.no_grad():
                free = (x if x is not None else self._free(q)).detach()
                stat, n = unit_stats(q, free, self.tau, self.rule)
                (stat,), n = stats_over_ranks([stat], n)
                return support_from_stats(stat, n, self.rule, self.beta)
        return batch_support(q, self.tau, self.rule, self.beta, x=x)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # an exported network: free mode, nothing recorded
            return torch.where(q > self.tau, q, torch.zeros_like(q))
        return self._forward_mode(q)

    @torch.jit.unused
    def _forward_mode(self, q: torch.Tensor) -> torch.Tensor:
        mode = self.mode
        if not self.training and mode in FREE_IN_EVAL:
            mode = "free"  # model.eval(): the fixed support is the training step's, not validation's
        if mode == "free" or mode == "record":
            out = self._record(q) if mode == "record" else self._free(q)
            if self.track:
                with torch.no_grad():
                    self._count(cpu_kernels.count_above(q.detach(), self.tau), q.numel(), 0, 0)
            return out
        if mode == "instance":
            m = self.instance_mask
            if m is None:
                raise RuntimeError(
                    "HardThreshold in 'instance' mode has no mask; run the forward inside alt.step(idx, x), "
                    "or call model.eval() for free mode"
                )
            if m.shape != q.shape:
                raise RuntimeError(f"instance mask shape {tuple(m.shape)} does not match activations {tuple(q.shape)}")
            if self.application == "gated" and self.tau >= 0 and isinstance(m, LayerBits):
                fused = _packed_instance(q, m, self.consistency > 0)
                if fused is not None:  # one fused kernel reads the packed bits (and sums the penalty)
                    out, pen = fused.gated_instance(q, m, self.tau, self.consistency > 0)
                    if self.consistency > 0:
                        self.penalty = pen
                    if self.track:
                        self._track_support(q, m.unpack())
                    return out
            if isinstance(m, LayerBits):  # packed rows where the kernels cannot run: unpack them
                m = m.unpack()
            if self.application == "gated" and self.tau >= 0:
                # fused: the output, and the consistency penalty if any, in one autograd node
                out, pen = _GatedInstance.apply(q, m, self.tau, self.consistency > 0)
                if self.consistency > 0:
                    self.penalty = pen
                if self.track:
                    self._track_support(q, m)
                return out
            return self._apply_support(q, m)
        if mode == "probe":
            out = self._free(q)
            with torch.no_grad():
                self.probe_stats = unit_stats(q, out.detach(), self.tau, self.rule)
            return out
        if mode == "batch":
            if self.application == "gated" and self.tau >= 0 and self.consistency == 0:
                # fused: one saved tensor, one backward pass (same values and gradient as below);
                # the rule's own statistics in the kernels of supportnet.kernels (Triton on CUDA, C on the CPU)
                fused = _batch_kernels(q, self.rule) if self.given_batch_mask is None and not self.sync_inline else None
                if fused is cpu_kernels and not torch.compiler.is_compiling():
                    # the support written into this layer's own buffer, step after step (compiled: the op's own)
                    self._mask_buf = cpu_kernels.mask_buffer(q, self._mask_buf)
                    out, m = cpu_kernels.gated_batch(q, self.tau, self.rule, self.beta, self._mask_buf)
                elif fused is not None:
                    out, m = fused.gated_batch(q, self.tau, self.rule, self.beta)
                else:
                    out, m = _GatedBatch.apply(q, self.tau, self._batch_rule)
                self.batch_mask = m
                if self.track:
                    self._track_support(q, m)
                return out
            x = self._free(q) if self.application == "gated" else None  # computed once, reused by the rule
            m = self._batch_rule(q, x)
            self.batch_mask = m
            return self._apply_support(q, m.unsqueeze(0), x)
        if mode == "binary":
            out = _BinaryStraightThrough.apply(q, self.tau)
            if self.track:
                with torch.no_grad():
                    self._count((q > self.tau).sum(), q.numel(), 0, 0)
            return out
        raise ConfigError(f"unknown HardThreshold mode {mode!r}; use one of {', '.join(MODES)}")


TAU_KEY = "tau"  # a HardThreshold(tau_in_state_dict=True)'s key in its state dict


def _save_tau(module: HardThreshold, state_dict: dict, prefix: str, _meta) -> None:
    state_dict[prefix + TAU_KEY] = torch.tensor(module.tau, dtype=torch.float64)


def _load_tau(module: HardThreshold, state_dict: dict, prefix: str, _meta, strict, missing, _unexpected, _errs) -> None:
    value = state_dict.pop(prefix + TAU_KEY, None)  # (a copy of the caller's dict: load_state_dict makes one)
    if value is not None:
        module.tau = float(value)
    elif strict:
        missing.append(prefix + TAU_KEY)


def threshold_layers(model: nn.Module) -> list[tuple[str, HardThreshold]]:
    """Every :class:`HardThreshold` in ``model``, in registration order (the support order)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, HardThreshold)]


def require_layers(model: nn.Module, what: str) -> list[tuple[str, HardThreshold]]:
    """The threshold layers of ``model``, or a one-line error if it has none."""
    layers = threshold_layers(model)
    if not layers:
        raise ConfigError(
            f"{what}: {type(model).__name__} has no HardThreshold layers, so there is no support to "
            f"{'record' if what.startswith('record') else 'set'}; convert it first: model = supportnet.convert(model)"
        )
    return layers


def configure(
    model: nn.Module,
    *,
    mode: str | None = None,
    apply: str | None = None,
    rule: str | None = None,
    beta: float | None = None,
    tau=None,
    track: bool | None = None,
    consistency: float | None = None,
    strict: bool = True,
) -> None:
    """Set the given attributes on every threshold layer of ``model``.

    ``tau`` may be a number or a list with one value per layer. With ``strict`` (the
    default), a model without any :class:`HardThreshold` is an error: configuring it would
    silently do nothing (convert it first: ``model = supportnet.convert(model)``).
    """
    if mode is not None and mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    if apply is not None and apply not in APPLY:
        raise ConfigError(f"unknown support.apply {apply!r}; use one of {', '.join(APPLY)}")
    if rule is not None and rule not in RULES:
        raise ConfigError(f"unknown support.rule {rule!r}; use one of {', '.join(RULES)}")
    layers = require_layers(model, "configure") if strict else threshold_layers(model)
    _set_layers(layers, mode=mode, apply=apply, rule=rule, beta=beta, tau=tau, track=track, consistency=consistency)


def _set_layers(layers, *, mode=None, apply=None, rule=None, beta=None, tau=None, track=None, consistency=None) -> None:
    """:func:`configure` on a list of ``(name, layer)`` pairs, the choices already checked."""
    taus = None
    if tau is not None:
        taus = list(tau) if isinstance(tau, (list, tuple)) else [tau] * len(layers)
        if len(taus) != len(layers):
            raise ConfigError(
                f"support.tau has {len(taus)} values but the model has {len(layers)} "
                f"threshold layers; give one value or one per layer"
            )
    for i, (_, layer) in enumerate(layers):
        if mode is not None:
            layer.mode = mode
            layer.given_batch_mask = None
            if mode != "instance":
                layer.instance_mask = None
        if apply is not None:
            layer.application = apply
        if rule is not None:
            layer.rule = rule
        if beta is not None:
            layer.beta = float(beta)
        if taus is not None:
            layer.tau = float(taus[i])
        if track is not None:
            layer.track = track
        if consistency is not None:
            layer.consistency = float(consistency)
        layer.penalty = None


@contextmanager
def layer_mode(model: nn.Module, mode: str, layers=None) -> Iterator[None]:
    """Temporarily put every threshold layer in ``mode`` (restores the previous modes).
    ``layers``: the model's :func:`threshold_layers`, when the caller has them (saves a walk)."""
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    layers = threshold_layers(model) if layers is None else layers
    saved = [(lay.mode, lay.track) for _, lay in layers]
    _set_layers(layers, mode=mode, track=False)
    try:
        yield
    finally:
        for (_, lay), (m, t) in zip(layers, saved):
            lay.mode, lay.track = m, t


@contextmanager
def gated_eval(model: nn.Module) -> Iterator[None]:
    """``model.eval()`` with every threshold layer left in training mode, so the supports set on
    the layers (``instance``, ``batch``) still apply while dropout is off and batch norm uses its
    running statistics. Restores every module's training flag when the block exits."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    for _, lay in threshold_layers(model):
        lay.training = True
    try:
        yield
    finally:
        for m, t in flags:
            m.training = t


def set_instance_masks(model: nn.Module, masks) -> None:
    """Hand each threshold layer its per-example support (``instance`` mode): a list of bool
    masks, one per layer, or a :class:`~supportnet.masks.PackedMasks` (each layer gets its
    :class:`~supportnet.masks.LayerBits`; the CUDA kernels read them packed, else they are unpacked)."""
    layers = threshold_layers(model)
    if len(masks) != len(layers):
        raise RuntimeError(f"{len(masks)} masks for {len(layers)} threshold layers")
    for (_, layer), m in zip(layers, masks):
        layer.instance_mask = m
        layer.mode = "instance"


@torch.no_grad()
def record_masks(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Run ``model`` on ``x`` in ``record`` mode and return every layer's support: one bool
    tensor ``(B, *unit)`` per threshold layer, in :func:`threshold_layers` order."""
    layers = require_layers(model, "record_masks")
    with layer_mode(model, "record", layers):
        model(x)
        masks = [lay.last_mask for _, lay in layers]
        for _, lay in layers:
            lay.last_mask = None
    return masks  # type: ignore[return-value]


@torch.no_grad()
def record_rows(model: nn.Module, x: torch.Tensor, shapes, out: torch.Tensor | None = None) -> torch.Tensor:
    """Every layer's support ``1[q > tau]`` for the batch ``x``, packed: ``(B, row_bytes)`` uint8
    in the :class:`~supportnet.masks.MaskStore` row layout for the unit ``shapes`` (one per layer).
    On the CPU the kernels write each layer's bits as its free output is computed; a layer they do
    not take keeps a bool mask, packed afterwards. Same bytes as ``pack_masks(record_masks(...))``.
    ``out``: a ``(B, row_bytes)`` uint8 tensor on ``x``'s device to write the rows into (zeroed first)."""
    layers = require_layers(model, "record_rows")
    if len(shapes) != len(layers):
        raise RuntimeError(f"{len(shapes)} layer shapes for {len(layers)} threshold layers")
    bits = sum(math.prod(s) for s in shapes)
    shape = (x.shape[0], (bits + 7) // 8)
    if out is not None and (tuple(out.shape) != shape or out.dtype != torch.uint8 or not out.is_contiguous()):
        raise ValueError(f"record_rows: out must be a contiguous uint8 tensor of shape {shape}")
    rows = out.zero_() if out is not None else torch.zeros(shape, dtype=torch.uint8, device=x.device)
    packed = PackedMasks(rows, shapes)
    try:
        with layer_mode(model, "record", layers):
            for (_, lay), lb in zip(layers, packed):
                lay.record_bits, lay.last_mask, lay.record_done = lb, None, False
            model(x)
        for (name, lay), lb in zip(layers, packed):
            if lay.last_mask is not None:  # (over the kernel's bits if an earlier call wrote them)
                put_bits(lb, lay.last_mask, replace=lay.record_done)
            elif not lay.record_done:
                raise RuntimeError(f"threshold layer {name!r} did not run in the forward pass; no support to record")
    finally:
        for _, lay in layers:
            lay.record_bits, lay.last_mask, lay.record_done = None, None, False
    return packed.rows


def support_penalty(model: nn.Module) -> torch.Tensor | float:
    """Sum over layers of ``consistency * penalty`` from the last forward pass (0 if none).

    The penalty keeps the pre-activations consistent with a fixed support (units the support
    holds off stay below tau); add it to the loss of the same forward pass. Reading it clears it.
    """
    total: torch.Tensor | float = 0.0
    for _, layer in threshold_layers(model):
        if layer.penalty is not None:
            total = total + layer.consistency * layer.penalty
            layer.penalty = None
    return total


def collect_stats(model: nn.Module, reset: bool = True) -> dict[str, dict[str, float]]:
    """Per-layer fraction of active units and support drift since the last reset."""
    out = {}
    for name, layer in threshold_layers(model):
        a, t, d, dt = layer.stats.tolist()
        out[name] = {"active": a / t if t else float("nan"), "drift": d / dt if dt else float("nan")}
        if reset:
            layer.reset_stats()
    return out
