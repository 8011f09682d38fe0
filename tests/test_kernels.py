"""The Triton kernels of supportnet.kernels against the torch autograd reference of layers.py.

On a machine without CUDA they run on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1,
set here before triton is imported); with CUDA, compiled on the device. Shapes are tiny and the
blocks small (the interpreter is slow), with sizes that are not multiples of the block.
"""

import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from supportnet import kernels  # noqa: E402
from supportnet.masks import LayerBits, PackedMasks, pack_masks  # noqa: E402
from supportnet.support import _GatedBatch, _GatedInstance, batch_support  # noqa: E402

if torch.cuda.is_available():
    DEVICES = ["cuda"]
elif os.environ.get("TRITON_INTERPRET") == "1":
    DEVICES = ["cpu"]
    import triton.language as tl  # noqa: E402
    from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

    # triton.jit reads TRITON_INTERPRET when it decorates: triton's own library (tl.zeros, ...) must
    # have been imported with it set, which tests/conftest.py does before anything imports triton
    assert isinstance(tl.zeros, InterpretedFunction), "triton.language was imported before TRITON_INTERPRET=1"
else:  # triton present, no GPU, interpreter switched off by the caller
    DEVICES = []
pytestmark = pytest.mark.skipif(not DEVICES, reason="needs CUDA or TRITON_INTERPRET=1")

BLOCK = 64  # small blocks: several per row, the last one partial
# (shape, channels_last): 2-D, 4-D contiguous, 4-D channels_last, 4-D with a size-1 dim
SHAPES = [((5, 37), False), ((3, 5, 7, 6), False), ((3, 5, 7, 6), True), ((4, 3, 1, 9), True)]
TOL = {torch.float32: dict(rtol=1e-6, atol=1e-6), torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2)}


def _q(shape, cl, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(shape, generator=g).to(dtype)
    if cl:
        q = q.contiguous(memory_format=torch.channels_last)
    return q.to(device).requires_grad_()


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(kernels, "BLOCK", BLOCK)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,cl", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rule,beta,tau", [("energy-rel", 0.5, 0.0), ("energy", 0.0, 0.0), ("vote", 0.1, 0.3)])
def test_gated_batch_matches_reference(device, shape, cl, dtype, rule, beta, tau):
    q = _q(shape, cl, dtype, device)
    q_ref = q.detach().clone().requires_grad_()
    out, m = kernels.gated_batch(q, tau, rule, beta)
    ref_out, ref_m = _GatedBatch.apply(q_ref, tau, lambda a, x: batch_support(a, tau, rule, beta, x=x))
    assert m.dtype == torch.bool and m.shape == ref_m.shape
    assert torch.equal(m, ref_m), "batch support differs"
    assert 0 < int(m.sum()) < m.numel() or rule == "energy"  # the data exercise both sides of the rule
    assert torch.equal(out, ref_out) and out.stride() == q.stride()
    w = torch.randn(shape).to(dtype).to(device)  # a contiguous gradient, whatever the layout of q
    (out.float() * w.float()).sum().backward()
    (ref_out.float() * w.float()).sum().backward()
    torch.testing.assert_close(q.grad, q_ref.grad, **TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
def test_gated_batch_energy_rel_near_mean(device):
    """energy-rel compares with the layer's mean energy, summed from the partial sums of pass 1."""
    q = _q((9, 300), False, torch.float32, device, seed=3)  # 300 units: 5 blocks, pass-1 splits
    for beta in (0.0, 0.7, 1.0, 1.5):
        out, m = kernels.batch_forward(q.detach(), 0.0, "energy-rel", beta, block=BLOCK)
        x = torch.relu(q.detach())
        e = (x * x).sum(0)
        assert torch.equal(m, e > beta * e.mean())
        assert torch.equal(out, x * m)


def _packed(m: torch.Tensor, device, prefix_bits: int = 13):
    """Pack ``m`` after a ``prefix_bits`` layer (so its bits start mid-byte), as the store does."""
    b = m.shape[0]
    g = torch.Generator().manual_seed(1)
    prefix = torch.rand(b, prefix_bits, generator=g) < 0.5
    rows = torch.from_numpy(pack_masks([prefix, m.cpu()])).to(device)
    pm = PackedMasks(rows, [(prefix_bits,), tuple(m.shape[1:])])
    return pm, pm[1]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,cl", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tau,penalty", [(0.0, True), (0.2, True), (0.0, False)])
def test_gated_instance_matches_reference(device, shape, cl, dtype, tau, penalty):
    q = _q(shape, cl, dtype, device, seed=2)
    g = torch.Generator().manual_seed(5)
    m = (torch.rand(shape, generator=g) < 0.6).to(device)
    pm, bits = _packed(m, device)
    assert isinstance(bits, LayerBits) and bits.shape == m.shape and bits.offset == 13
    assert torch.equal(bits.unpack(), m) and torch.equal(pm.unpack()[1], m)
    q_ref = q.detach().clone().requires_grad_()
    out, pen = kernels.gated_instance(q, bits, tau, penalty)
    ref_out, ref_pen = _GatedInstance.apply(q_ref, m, tau, penalty)
    assert torch.equal(out, ref_out) and out.stride() == q.stride()
    # the penalty against float64 arithmetic (the kernel sums in float32)
    qd = q.detach().double()
    want = torch.where(m, 0.0, torch.relu(qd - kernels._tau_in(tau, dtype))).pow(2).mean() if penalty else 0.0
    torch.testing.assert_close(pen.double(), torch.as_tensor(want, dtype=torch.float64, device=device), **TOL[dtype])
    torch.testing.assert_close(pen.float(), ref_pen.float(), **TOL[dtype])
    w = torch.randn(shape).to(dtype).to(device)
    ((out.float() * w.float()).sum() + 3.0 * pen.float()).backward()
    ((ref_out.float() * w.float()).sum() + 3.0 * ref_pen.float()).backward()
    torch.testing.assert_close(q.grad, q_ref.grad, **TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
def test_gated_instance_against_plain_autograd(device):
    """The literal definition (relu, multiply, penalty by plain autograd), not only the fused torch node."""
    q = _q((3, 4, 5, 5), True, torch.float32, device, seed=7)
    m = (torch.rand(3, 4, 5, 5, generator=torch.Generator().manual_seed(8)) < 0.5).to(device)
    _, bits = _packed(m, device, prefix_bits=5)
    out, pen = kernels.gated_instance(q, bits, 0.1, True)
    q2 = q.detach().clone().requires_grad_()
    ref = torch.where(q2 > 0.1, q2, 0.0) * m
    ref_pen = torch.where(m, 0.0, torch.relu(q2 - 0.1)).pow(2).mean()
    assert torch.equal(out, ref)
    torch.testing.assert_close(pen, ref_pen, rtol=1e-6, atol=1e-7)
    (out.sum() + 2.0 * pen).backward()
    (ref.sum() + 2.0 * ref_pen).backward()
    torch.testing.assert_close(q.grad, q2.grad, rtol=1e-6, atol=1e-7)


def test_geometry():
    g = kernels.geometry(torch.empty(2, 3, 4, 5))
    assert g == kernels.Geometry(60, 4, 5, 20, 5, 1, True)
    g = kernels.geometry(torch.empty(2, 3, 4, 5).contiguous(memory_format=torch.channels_last))
    assert g == kernels.Geometry(60, 5, 3, 5, 1, 20, False)  # memory order (H, W, C)
    assert kernels.geometry(torch.empty(2, 7)) == kernels.Geometry(7, 1, 7, 0, 0, 1, True)
    assert kernels.geometry(torch.empty(2, 3, 8)[:, :, ::2]) is None  # not dense
    assert kernels.geometry(torch.empty(4, 6).t()) is None  # batch not outermost
    assert not kernels.usable(torch.empty(2, 3))  # the CPU never takes the kernel path
    p = np.arange(60)
    h, w, c = p // 15, (p // 3) % 5, p % 3
    assert sorted(c * 20 + h * 5 + w) == list(range(60))  # the channels_last map is a permutation


def test_kernels_compile_for_the_gpu(tmp_path):
    """Every kernel variant compiles to an sm_90 cubin (no GPU needed): the interpreter alone
    would accept Python that compiled Triton rejects."""
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = str(root / "src") + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, str(root / "tests" / "kernels_compile.py")], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert "kernel variants compiled" in proc.stdout


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["b-alt", "i-alt"])
def test_layers_and_schedules_take_the_kernels(device, method, monkeypatch):
    """HardThreshold takes the kernels where they are enabled (here forced on the interpreter's
    CPU tensors): B-alt's batch mode and I-alt's stored supports (handed packed by the schedule)
    give the torch path's outputs, penalty and gradients."""
    from supportnet.alternation import make_schedule
    from supportnet.config import SupportConfig
    from supportnet.data import Split
    from supportnet.layers import configure, support_penalty, threshold_layers
    from supportnet.masks import PackedMasks
    from supportnet.models import create_model

    torch.manual_seed(0)
    model = create_model("convnet-s", (1, 12, 12), 10, width=4, hidden=8).to(device)
    x, y = torch.randn(6, 1, 12, 12, device=device), torch.randint(0, 10, (6,), device=device)
    cfg = SupportConfig(method=method, backend="stored", warmup=0)
    sched = make_schedule(cfg, model, Split(x, y), torch.device(device))
    sched.start_epoch(0)
    with torch.no_grad():  # the weights move after the estimation: some stored supports now disagree
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    calls = []
    for name in ("gated_batch", "gated_instance"):
        f = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, f=f, name=name: calls.append(name) or f(*a))
    results = {}
    monkeypatch.setenv(kernels.ENV, "0")  # the C kernels of the CPU off: the reference is the torch code
    for on in (False, True):
        monkeypatch.setattr(kernels, "enabled", lambda d, on=on: on)
        monkeypatch.setattr(kernels, "packed_supports", lambda d, on=on: on)
        configure(model, consistency=1.0 if method == "i-alt" else 0.0)
        sched.before_step(x, torch.arange(6))
        if method == "i-alt":
            masks = sched.masks_for(x, torch.arange(6))
            assert isinstance(masks, PackedMasks) == on
        model.zero_grad()
        out = model(x)
        pen = support_penalty(model)
        (torch.nn.functional.cross_entropy(out, y) + pen).backward()
        pen = float(pen.detach()) if torch.is_tensor(pen) else pen
        results[on] = (out.detach(), pen, [p.grad.clone() for p in model.parameters()])
    n_layers = len(threshold_layers(model))
    assert calls == ["gated_batch" if method == "b-alt" else "gated_instance"] * n_layers
    torch.testing.assert_close(results[True][0], results[False][0], rtol=1e-5, atol=1e-6)
    assert results[True][1] == pytest.approx(results[False][1], rel=1e-5, abs=1e-9)
    assert (results[False][1] > 0) == (method == "i-alt")  # the penalty is exercised
    for a, b in zip(results[True][2], results[False][2]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


VARIANTS = [("batch", r) for r in kernels.RULE_CODES] + [("instance", p) for p in (True, False)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ident", [True, False])
@pytest.mark.parametrize("kind,variant", VARIANTS)
def test_self_check_passes_the_kernels(device, ident, kind, variant, monkeypatch):
    """trusted()'s self-check: every variant agrees with the torch nodes (fp32 and bf16)."""
    monkeypatch.setattr(kernels, "BLOCK", 1024)  # the real block: the check's input spans two of them
    for dtype in (torch.float32, torch.bfloat16):
        assert kernels._self_check(torch.device(device), dtype, kind, variant, ident) is None


@pytest.mark.parametrize("device", DEVICES)
def test_self_check_names_a_kernel_that_disagrees_or_fails(device, monkeypatch):
    monkeypatch.setattr(kernels, "BLOCK", 1024)
    dev = torch.device(device)
    real = kernels.batch_forward
    monkeypatch.setattr(kernels, "batch_forward", lambda *a: (lambda o, m: (o * 2, m))(*real(*a)))
    assert "output differs" in kernels._self_check(dev, torch.float32, "batch", "energy-rel", True)
    monkeypatch.setattr(kernels, "batch_forward", lambda *a: (lambda o, m: (o, ~m))(*real(*a)))
    assert "support differs" in kernels._self_check(dev, torch.float32, "batch", "vote", True)

    def broken(*a, **k):
        raise RuntimeError("PTX .version 9.9 does not support .target sm_12\nmore")

    monkeypatch.setattr(kernels, "gated_backward", broken)
    assert kernels._self_check(dev, torch.float32, "instance", True, False) == (
        "RuntimeError: PTX .version 9.9 does not support .target sm_12"
    )


@pytest.mark.parametrize("device", DEVICES)
def test_a_layer_whose_kernel_fails_its_self_check_runs_the_torch_code(device, monkeypatch, caplog):
    """A variant that fails its self-check is left off for the process with one warning; the layer
    gives the torch code's output and gradient, and the other variants still run."""
    from supportnet.layers import HardThreshold

    monkeypatch.setattr(kernels, "_CHECKS", {})
    monkeypatch.setattr(kernels, "BLOCK", 1024)
    monkeypatch.setenv(kernels.ENV, "0")  # the C kernels of the CPU off: the reference is the torch code
    monkeypatch.setattr(kernels, "enabled", lambda d: True)
    real = kernels.batch_forward

    def wrong_for_vote(q, tau, rule, *a):
        out, m = real(q, tau, rule, *a)
        return out * (rule != "vote"), m

    monkeypatch.setattr(kernels, "batch_forward", wrong_for_vote)
    calls = []
    gb = kernels.gated_batch
    monkeypatch.setattr(kernels, "gated_batch", lambda *a: calls.append(a[2]) or gb(*a))
    q = _q((5, 3, 4, 4), False, torch.float32, device)
    results = {}
    for rule in ("vote", "vote", "energy"):
        layer = HardThreshold(tau=0.0)
        layer.mode, layer.application, layer.rule, layer.beta = "batch", "gated", rule, 0.1
        with caplog.at_level("WARNING", logger="supportnet"):
            out = layer(q)
        out.sum().backward()
        results.setdefault(rule, (out.detach(), q.grad.clone()))
        q.grad = None
    assert calls == ["energy"]  # vote failed its check (twice asked, checked once); energy passed
    warned = [r.getMessage() for r in caplog.records if "self-check" in r.getMessage()]
    assert len(warned) == 1 and "batch kernel (vote" in warned[0] and "output differs" in warned[0]
    ref = HardThreshold(tau=0.0)
    ref.mode, ref.application, ref.rule, ref.beta = "batch", "gated", "vote", 0.1
    monkeypatch.setattr(kernels, "enabled", lambda d: False)
    q2 = q.detach().clone().requires_grad_()
    out2 = ref(q2)
    out2.sum().backward()
    assert torch.equal(results["vote"][0], out2.detach()) and torch.equal(results["vote"][1], q2.grad)


@pytest.mark.parametrize("device", DEVICES)
def test_self_check_runs_apart_from_the_callers_autograd_context(device, monkeypatch):
    """A variant first used inside non-reentrant activation checkpointing: the check's own forward
    and backward run in a thread of their own, so the checkpoint's recomputation sees only the
    layer's tensors and the gradient is the torch code's."""
    from torch.utils.checkpoint import checkpoint

    from supportnet.layers import HardThreshold

    monkeypatch.setattr(kernels, "_CHECKS", {})
    monkeypatch.setattr(kernels, "BLOCK", 1024)
    monkeypatch.setenv(kernels.ENV, "0")
    grads = []
    for on in (True, False):
        monkeypatch.setattr(kernels, "enabled", lambda d, on=on: on)
        layer = HardThreshold(tau=0.0)
        layer.mode, layer.application, layer.rule, layer.beta = "batch", "gated", "energy-rel", 0.5
        q = _q((5, 3, 4, 4), True, torch.float32, device)
        checkpoint(lambda t, f=layer: f(t) * 2, q, use_reentrant=False).sum().backward()
        grads.append(q.grad)
    assert list(kernels._CHECKS.values()) == [None]
    assert torch.equal(grads[0], grads[1])
