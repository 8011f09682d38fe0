"""The CPU kernels under torch.compile and torch.export: the custom ops of supportnet.kernels.cpu.

Run by tests/test_cpu_kernels.py in a child process (tracing imports torch._inductor, and with it
triton without its interpreter, which the Triton tests of test_kernels.py need). Prints one JSON
line, ``{check: "ok" or what went wrong}``.

The backend is aot_eager: AOTAutograd traces the ops' fake implementations and autograd formulas
as inductor would, then runs the graph eagerly, so the results are the eager step's bits
(inductor takes over a minute on a 2-core CPU, and rounds its own convolutions differently).
"""

import json
import traceback
import warnings

import torch
from torch import nn

import supportnet as sn
from supportnet.bits import LayerBits
from supportnet.kernels import cpu
from supportnet.layers import HardThreshold, configure, support_penalty


def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), HardThreshold(0.05), nn.Flatten(), nn.Linear(4 * 8 * 8, 16),
        HardThreshold(0.05), nn.Linear(16, 3),
    )  # fmt: skip


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g), g


def _recording_backend(seen: list):
    aot = torch._dynamo.lookup_backend("aot_eager")

    def backend(gm, example_inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return aot(gm, example_inputs)

    return backend


def _step(model, run, x, y):
    """One step's output, penalty, batch supports and gradients."""
    out = run(x)
    pen = support_penalty(model)
    (nn.functional.cross_entropy(out, y) + pen).backward()
    masks = [m.batch_mask.clone() if m.batch_mask is not None else None for m in model if isinstance(m, HardThreshold)]
    return [out.detach(), torch.as_tensor(pen).detach(), masks, [p.grad.clone() for p in model.parameters()]]


def _same(a, b) -> bool:
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(u, v) for u, v in zip(a, b))
    return (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))


def _compiled(model, seen):
    torch._dynamo.reset()
    return torch.compile(model, backend=_recording_backend(seen), fullgraph=True)


def compiled_b_alt_step() -> None:
    x, y, _ = _data()
    results, seen = [], []
    for compiled in (False, True):
        model = _net()
        alt = sn.alternation("b-alt", model, warmup=0, tau=0.05)
        alt.start_epoch(0)
        run = _compiled(model, seen) if compiled else model
        with alt.step():
            results.append(_step(model, run, x, y))
    assert seen.count("supportnet.cpu_gated_batch") == 2, f"the batch op, once per layer, in {seen}"
    assert _same(*results), "the compiled step differs from the eager one"


def compiled_i_alt_step_with_the_penalty() -> None:
    x, y, g = _data()
    rows = torch.randint(0, 256, (8, 36), generator=g, dtype=torch.uint8)  # 256 + 16 bits a row, and spare
    results, seen = [], []
    for compiled in (False, True):
        model = _net()
        configure(model, mode="instance", consistency=1.0)
        model[1].instance_mask, model[4].instance_mask = LayerBits(rows, 0, (4, 8, 8)), LayerBits(rows, 256, (16,))
        run = _compiled(model, seen) if compiled else model
        results.append(_step(model, run, x, y))
    assert seen.count("supportnet.cpu_gated_instance") == 2, f"the instance op, once per layer, in {seen}"
    assert results[0][1] > 0, "the penalty is zero: the check does not exercise it"
    assert _same(*results), "the compiled step differs from the eager one"


def export_sees_the_batch_kernel() -> None:
    model = _net()
    configure(model, mode="batch")
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        want = model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # batch_mask, a plain attribute, is assigned while tracing
        ep = torch.export.export(model, (x,))
    ops = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert ops.count("supportnet.cpu_gated_batch.default") == 2, f"the batch op, once per layer, in {ops}"
    with torch.no_grad():
        assert torch.equal(ep.module()(x), want), "the exported program differs from the model"


def opcheck() -> None:
    g = torch.Generator().manual_seed(2)
    q = (torch.randn(6, 3, 4, 5, generator=g) * 2).requires_grad_()
    rows = torch.randint(0, 256, (6, 9), generator=g, dtype=torch.uint8)
    ops = torch.ops.supportnet
    for penalty in (False, True):
        torch.library.opcheck(ops.cpu_gated_instance, (q, rows, 3, 0.1, penalty))
    torch.library.opcheck(ops.cpu_gated_batch, (q, 0.1, "energy-rel", 0.5))
    torch.library.opcheck(ops.cpu_record, (q.detach(), 0.1, torch.zeros(6, 9, dtype=torch.uint8), 3))


CHECKS = [compiled_b_alt_step, compiled_i_alt_step_with_the_penalty, export_sees_the_batch_kernel, opcheck]


def main() -> None:
    if not cpu.enabled():
        raise SystemExit(f"CPU kernels not in use: {cpu.status()}")
    out = {}
    for check in CHECKS:
        try:
            check()
            out[check.__name__] = "ok"
        except Exception as e:  # noqa: BLE001 - reported to the test, which fails on it
            out[check.__name__] = f"{type(e).__name__}: {e}\n{traceback.format_exc()[-1500:]}"
    print(json.dumps(out))


if __name__ == "__main__":
    main()
