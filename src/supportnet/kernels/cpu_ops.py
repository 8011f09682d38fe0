"""The CPU kernels of :mod:`supportnet.kernels.cpu` as ``torch.library`` custom ops.

``torch.compile`` and ``torch.export`` cannot see into a ctypes call; they see these ops instead,
each with a fake (meta) implementation for tracing and, where it is differentiable, an autograd
formula. :mod:`supportnet.kernels.cpu` calls them while a tracer runs
(``torch.compiler.is_compiling()``); eager calls keep its direct calls and autograd Functions:
there the batch support is written into the layer's own buffer (an op that writes an input may
not have an autograd formula), and an eager call does not pay the op's dispatch (about 0.1 ms a
call on a 2-core CPU). Both run the same C code, so a compiled step gives the eager result.

* ``supportnet::cpu_gated_batch(q, tau, rule, beta) -> (out, m)``: B-alternation's batch support;
* ``supportnet::cpu_gated_instance(q, rows, bit_off, tau, penalty) -> (out, pen, *PenaltyTerms)``:
  I-alternation's stored support; the penalty's terms, whose count is known only once the kernel
  ran, are an output of dynamic size (empty without the penalty);
* ``supportnet::cpu_instance_backward(grad, out, words, over, offsets, scale)``: its gradient;
* ``supportnet::cpu_record(q, tau, rows, bit_off) -> out``: the estimation pass (writes ``rows``).

Imported by :mod:`supportnet.kernels`, so the ops exist whenever the kernels do.
"""

from __future__ import annotations

import torch

from .cpu import PenaltyTerms, _record, batch_forward, instance_backward, instance_forward


@torch.library.custom_op("supportnet::cpu_gated_batch", mutates_args=(), device_types="cpu")
def _batch_op(q: torch.Tensor, tau: float, rule: str, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    return batch_forward(q, tau, rule, beta)


@_batch_op.register_fake
def _batch_fake(q, tau, rule, beta):
    return torch.empty_like(q), torch.empty_strided(q.shape[1:], q.stride()[1:], dtype=torch.bool, device=q.device)


def _batch_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(output[0])


def _batch_backward(ctx, grad, _grad_m):
    (out,) = ctx.saved_tensors
    return torch.ops.aten.threshold_backward(grad, out, 0.0), None, None, None


_batch_op.register_autograd(_batch_backward, setup_context=_batch_setup)

_record_op = torch.library.custom_op("supportnet::cpu_record", _record, mutates_args=("rows",), device_types="cpu")


@_record_op.register_fake
def _record_fake(q, tau, rows, bit_off):
    return torch.empty_like(q)


_Five = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@torch.library.custom_op("supportnet::cpu_gated_instance", mutates_args=(), device_types="cpu")
def _instance_op(q: torch.Tensor, rows: torch.Tensor, bit_off: int, tau: float, penalty: bool) -> _Five:
    """``(out, pen, *PenaltyTerms)`` of :func:`instance_forward` (empty terms without the penalty)."""
    out, pen, terms = instance_forward(q, rows, bit_off, tau, penalty)
    if terms is None:
        terms = PenaltyTerms(*(torch.empty(0, dtype=d) for d in (torch.int64, torch.float32, torch.int64)))
    return out, pen, *terms


@_instance_op.register_fake
def _instance_fake(q, rows, bit_off, tau, penalty):
    b = q.shape[0]
    out, pen = torch.empty_like(q), q.new_empty((), dtype=torch.float32)
    if not penalty:
        return out, pen, *(q.new_empty(0, dtype=d) for d in (torch.int64, torch.float32, torch.int64))
    n_terms = torch.library.get_ctx().new_dynamic_size()  # how many terms: known only once it ran
    words = q.new_empty((b, (q.numel() // b + 63) // 64), dtype=torch.int64)
    return out, pen, words, q.new_empty(n_terms, dtype=torch.float32), q.new_empty(b, dtype=torch.int64)


def _instance_setup(ctx, inputs, output) -> None:
    out, _, *terms = output
    ctx.penalty, ctx.numel = inputs[4], inputs[0].numel()
    ctx.save_for_backward(out, *terms)


def _instance_backward(ctx, grad, grad_pen, *_):
    out, *terms = ctx.saved_tensors
    none = (None,) * 4
    if not ctx.penalty:
        return torch.ops.aten.threshold_backward(grad, out, 0.0), *none
    # the penalty term's factor as the torch node forms it (a float32 product), so the same bits
    scale = torch.zeros((), dtype=torch.float32) if grad_pen is None else grad_pen * (2.0 / ctx.numel)
    return torch.ops.supportnet.cpu_instance_backward(grad, out, *terms, scale), *none


_instance_op.register_autograd(_instance_backward, setup_context=_instance_setup)


@torch.library.custom_op("supportnet::cpu_instance_backward", mutates_args=(), device_types="cpu")
def _instance_backward_op(
    grad: torch.Tensor,
    out: torch.Tensor,
    words: torch.Tensor,
    over: torch.Tensor,
    offsets: torch.Tensor,
    scale: torch.Tensor,
) -> torch.Tensor:
    return instance_backward(grad, out, PenaltyTerms(words, over, offsets), float(scale))


@_instance_backward_op.register_fake
def _instance_backward_fake(grad, out, words, over, offsets, scale):
    return torch.empty_like(out, memory_format=torch.contiguous_format)
