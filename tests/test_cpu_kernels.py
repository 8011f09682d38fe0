"""The C kernels of supportnet.kernels.cpu against the torch autograd reference of layers.py.

Masks, outputs and gradients must be the same bits as the torch nodes'; the sums (the batch
rule's energy, the consistency penalty) are taken in another order, so the penalty is compared
within float32 rounding. Skipped where no C compiler is found (the layers then run the torch code).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from supportnet import kernels
from supportnet.kernels import cpu
from supportnet.layers import HardThreshold, configure, record_masks, record_rows
from supportnet.masks import PackedMasks, pack_masks
from supportnet.support import _GatedBatch, _GatedInstance, batch_support

pytestmark = pytest.mark.skipif(not cpu.enabled(), reason=f"CPU kernels not in use: {cpu.status()}")

# (shape, channels_last): 2-D, 4-D, 4-D channels_last, a batch that is not a multiple of the
# group of 16, a single example, a layer big enough for several threads and chunks
SHAPES = [
    ((5, 37), False),
    ((3, 5, 7, 6), False),
    ((19, 5, 7, 6), True),
    ((1, 3, 4, 4), False),
    ((33, 8, 30, 31), False),
]
RULES = [("energy-rel", 0.5, 0.0), ("energy", 0.0, 0.0), ("vote", 0.1, 0.3), ("energy-rel", 0.1, 0.2)]


def _q(shape, cl=False, seed=0):
    """Activations whose scale differs from unit to unit, so that the energy rules switch some off."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(shape, generator=g) * (2 * torch.rand(shape[1:], generator=g)) ** 2
    if cl:
        q = q.contiguous(memory_format=torch.channels_last)
    return q.requires_grad_()


def _packed(m: torch.Tensor, prefix_bits: int = 13):
    """``m`` packed after a ``prefix_bits`` layer, so that its bits start mid-byte."""
    prefix = torch.rand(m.shape[0], prefix_bits, generator=torch.Generator().manual_seed(1)) < 0.5
    pm = PackedMasks(torch.from_numpy(pack_masks([prefix, m])), [(prefix_bits,), tuple(m.shape[1:])])
    return pm[1]


@pytest.mark.parametrize("shape,cl", SHAPES)
@pytest.mark.parametrize("rule,beta,tau", RULES)
def test_gated_batch_matches_reference(shape, cl, rule, beta, tau):
    q = _q(shape, cl)
    q_ref = q.detach().clone().requires_grad_()
    out, m = cpu.gated_batch(q, tau, rule, beta)
    ref_out, ref_m = _GatedBatch.apply(q_ref, tau, lambda a, x: batch_support(a, tau, rule, beta, x=x))
    assert m.dtype == torch.bool and m.shape == ref_m.shape and torch.equal(m, ref_m)
    assert rule == "energy" or shape[0] == 1 or 0 < int(m.sum()) < m.numel()  # both sides of the rule
    assert torch.equal(out, ref_out) and out.stride() == q.stride()
    w = torch.randn(shape)
    (out * w).sum().backward()
    (ref_out * w).sum().backward()
    assert torch.equal(q.grad, q_ref.grad)


@pytest.mark.parametrize("shape,cl", [s for s in SHAPES if not s[1]])
@pytest.mark.parametrize("tau", [0.0, 0.25])
@pytest.mark.parametrize("penalty", [True, False])
def test_gated_instance_matches_reference(shape, cl, tau, penalty):
    q = _q(shape, seed=2)
    m = torch.rand(shape, generator=torch.Generator().manual_seed(5)) < 0.6
    bits = _packed(m)
    q_ref = q.detach().clone().requires_grad_()
    out, pen = cpu.gated_instance(q, bits, tau, penalty)
    ref_out, ref_pen = _GatedInstance.apply(q_ref, m, tau, penalty)
    assert torch.equal(out, ref_out)
    want = torch.where(m, 0.0, torch.relu(q.detach().double() - tau)).pow(2).mean() if penalty else 0.0
    torch.testing.assert_close(pen.double(), torch.as_tensor(want, dtype=torch.float64), rtol=1e-6, atol=1e-9)
    w = torch.randn(shape)
    ((out * w).sum() + 3.0 * pen).backward()
    ((ref_out * w).sum() + 3.0 * ref_pen).backward()
    assert torch.equal(q.grad, q_ref.grad)


def test_penalty_terms_are_the_switched_off_part():
    q = _q((9, 3, 11, 7), seed=10).detach()
    m = torch.rand(q.shape, generator=torch.Generator().manual_seed(11)) < 0.7
    bits = _packed(m, 6)
    out, _, terms = cpu.instance_forward(q, bits.rows, bits.offset, 0.2, True)
    on = ~m & (q > 0.2)
    assert torch.equal(terms.over, (q - 0.2)[on])  # C order, example after example
    assert terms.offsets.tolist() == [0, *on.flatten(1).sum(1).cumsum(0)[:-1].tolist()]
    word_bits = torch.stack([(terms.words >> j) & 1 for j in range(64)], -1).flatten(1)[:, : on[0].numel()]
    assert torch.equal(word_bits.bool(), on.flatten(1))


def test_gated_instance_penalty_unused_in_the_loss():
    q = _q((6, 40), seed=3)
    m = torch.rand(6, 40, generator=torch.Generator().manual_seed(4)) < 0.5
    out, _ = cpu.gated_instance(q, _packed(m, 3), 0.0, True)
    out.sum().backward()  # the penalty's gradient is None: the support's gradient alone
    assert torch.equal(q.grad, ((q.detach() > 0) & m).float())


def test_results_do_not_depend_on_the_thread_count():
    q = _q((40, 16, 20, 20), seed=6).detach()
    m = torch.rand(q.shape, generator=torch.Generator().manual_seed(7)) < 0.5
    bits = _packed(m, 5)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            out, bm = cpu.batch_forward(q, 0.0, "energy-rel", 0.3)
            iout, pen, terms = cpu.instance_forward(q, bits.rows, bits.offset, 0.1, True)
            results.append((out, bm, iout, pen, *terms))
    finally:
        torch.set_num_threads(threads)
    for r in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(r, results[0]))


class _Odd(nn.Module):
    """Layers whose bits start mid-byte (13 and 7 units), and one the kernels do not take."""

    def __init__(self, channels_last: bool = False):
        super().__init__()
        self.cl = channels_last
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.a0 = HardThreshold(0.1)
        self.fc1 = nn.Linear(3 * 5 * 5, 13)
        self.a1 = HardThreshold()
        self.fc2 = nn.Linear(13, 7)
        self.a2 = HardThreshold(0.05)

    def forward(self, x):
        h = self.conv(x)
        if self.cl:
            h = h.contiguous(memory_format=torch.channels_last)  # the record kernel wants C order
        h = self.a0(h)
        return self.a2(self.fc2(self.a1(self.fc1(h.flatten(1)))))


@pytest.mark.parametrize("channels_last", [False, True])
def test_record_rows_equals_packed_record_masks(channels_last):
    model = _Odd(channels_last).eval()
    x = torch.randn(11, 1, 5, 5, generator=torch.Generator().manual_seed(8))
    masks = record_masks(model, x)
    shapes = [tuple(m.shape[1:]) for m in masks]
    rows = record_rows(model, x, shapes)
    assert rows.dtype == torch.uint8 and np.array_equal(rows.numpy(), pack_masks(masks))
    assert all(lay.mode == "free" and lay.record_bits is None and lay.last_mask is None for lay in (model.a0, model.a1))


def test_record_rows_rejects_wrong_shapes_and_a_layer_that_did_not_run():
    model = _Odd().eval()
    x = torch.randn(4, 1, 5, 5)
    shapes = [tuple(m.shape[1:]) for m in record_masks(model, x)]
    with pytest.raises(RuntimeError, match="do not match"):
        record_rows(model, x, [shapes[0], (12,), shapes[2]])
    with pytest.raises(RuntimeError, match="layer shapes"):
        record_rows(model, x, shapes[:2])
    model.forward = lambda x: model.a0(model.conv(x))  # a1, a2 never run
    with pytest.raises(RuntimeError, match="did not run"):
        record_rows(model, x, shapes)
    assert all(lay.record_bits is None for lay in (model.a0, model.a1, model.a2))


def test_xor_popcount_matches_numpy():
    g = np.random.default_rng(0)
    a, b = g.integers(0, 256, (37, 29), dtype=np.uint8), g.integers(0, 256, (37, 29), dtype=np.uint8)
    want = int(np.unpackbits(a ^ b).sum())
    assert cpu.xor_popcount(a, b) == want and cpu.xor_popcount(a, a) == 0
    with pytest.raises(ValueError):
        cpu.xor_popcount(a, b[:3])


def test_layers_take_the_kernels_and_the_switch_turns_them_off(monkeypatch):
    lay = HardThreshold()
    lay.mode = "batch"
    q = _q((8, 4, 3, 3))
    out = lay(q)
    assert type(out.grad_fn).__name__ == "GatedBatchBackward" and kernels.packed_supports("cpu")
    monkeypatch.setenv(cpu.ENV, "0")
    assert not cpu.enabled() and not kernels.packed_supports("cpu") and "SUPPORTNET_KERNELS=0" in cpu.status()
    out2 = lay(q)
    assert type(out2.grad_fn).__name__ == "_GatedBatchBackward" and torch.equal(out, out2)


def test_training_steps_match_the_torch_code(synthetic, monkeypatch):
    """convnet-s, one B-alt step and one I-alt step of each back end (penalised, the schedule handing
    packed rows) with the kernels and with SUPPORTNET_KERNELS=0: the same gradients, bit for bit."""
    from supportnet.alternation import make_schedule
    from supportnet.config import SupportConfig
    from supportnet.models import create_model

    x, y, idx = synthetic.train.x[:64], synthetic.train.y[:64], torch.arange(64)

    def train(method, backend, switch):
        monkeypatch.setenv(cpu.ENV, switch)
        torch.manual_seed(0)
        model = create_model("convnet-s", synthetic.in_shape, synthetic.num_classes)
        cfg = SupportConfig(method=method, backend=backend, warmup=0)
        sched = make_schedule(cfg, model, synthetic.train, torch.device("cpu"))
        sched.start_epoch(0)
        if method == "i-alt":
            configure(model, consistency=1.0)
        sched.before_step(x, idx)
        loss = nn.functional.cross_entropy(model(x), y) + sched.penalty()
        loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    for method, backend in (("b-alt", "stored"), ("i-alt", "stored"), ("i-alt", "snapshot")):
        fused, plain = train(method, backend, "1"), train(method, backend, "0")
        assert all(torch.equal(a, b) for a, b in zip(fused, plain)), (method, backend)


def _child(env: dict, code: str) -> dict:
    e = dict(os.environ, **env)
    r = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


PROBE = (
    "import json; from supportnet.kernels import cpu; print(json.dumps({'on': cpu.enabled(), 'status': cpu.status()}))"
)


def test_cache_is_verified_and_rebuilt(tmp_path):
    env = {"SUPPORTNET_CACHE": str(tmp_path)}
    first = _child(env, PROBE)
    assert first["on"] and str(tmp_path) in first["status"]
    (lib,) = (tmp_path / "kernels").glob("cpu-*.so")
    lib.write_bytes(lib.read_bytes()[:1000])  # a damaged library: its SHA-256 no longer matches
    again = _child(env, PROBE)
    assert again["on"] and lib.stat().st_size > 1000  # rebuilt, not loaded


def test_no_compiler_falls_back_to_torch_code(tmp_path):
    out = _child({"SUPPORTNET_CACHE": str(tmp_path), "CC": "no-such-compiler-xyz"}, PROBE)
    assert not out["on"] and "no C compiler" in out["status"]


def test_count_above_matches_torch():
    q = _q((7, 3, 50, 50), seed=9).detach()
    for tau in (0.0, 0.4, -0.2):
        assert cpu.count_above(q, tau) == int((q > tau).sum())
    assert cpu.count_above(q.contiguous(memory_format=torch.channels_last), 0.1) == int((q > 0.1).sum())
    lay = HardThreshold(0.1)
    lay.track = True
    lay(q)
    assert lay.stats[:2].tolist() == [float((q > 0.1).sum()), float(q.numel())]


def test_portable_build_gives_the_same_results(tmp_path, monkeypatch):
    """The library built without -march=native (no AVX-512 mask code: the portable loops) gives the
    same outputs, penalty and terms as the one in use."""
    q = _q((21, 5, 13, 9), seed=12).detach()
    m = torch.rand(q.shape, generator=torch.Generator().manual_seed(13)) < 0.6
    bits = _packed(m, 3)

    def run():
        out, pen, terms = cpu.instance_forward(q, bits.rows, bits.offset, 0.1, True)
        bout, bm = cpu.batch_forward(q, 0.0, "energy-rel", 0.4)
        return out, pen, *terms, bout, bm, torch.tensor(cpu.count_above(q, 0.2))

    native = run()
    monkeypatch.setattr(cpu, "FLAGS", tuple("-march=x86-64-v2" if f == "-march=native" else f for f in cpu.FLAGS))
    lib = tmp_path / "portable.so"
    cpu._build(cpu._compiler(), lib)
    portable = cpu._load(lib)
    assert portable is not None
    monkeypatch.setattr(cpu, "library", lambda: portable)
    for a, b in zip(run(), native):
        assert torch.equal(a, b)


@pytest.mark.parametrize("tau", [0.0, 0.3])
def test_nan_activations_as_the_torch_code(tau):
    """With tau 0 the torch code's relu passes NaN on (and NaN x 0 is NaN), so a diverged activation
    reaches the loss; with tau > 0 its where(q > tau, q, 0) drops it. The kernels do the same."""
    q = _q((20, 3, 6, 6), seed=14).detach()
    q[3, 1, 2, 2] = q[7, 0, 0, 5] = float("nan")
    same = dict(rtol=0, atol=0, equal_nan=True)
    out, m = cpu.batch_forward(q, tau, "energy-rel", 0.3)
    ref_out, ref_m = _GatedBatch.apply(q.clone(), tau, lambda a, x: batch_support(a, tau, "energy-rel", 0.3, x=x))
    torch.testing.assert_close(out, ref_out, **same)
    assert torch.equal(m, ref_m)
    mask = torch.rand(q.shape, generator=torch.Generator().manual_seed(15)) < 0.5
    iout, pen, _ = cpu.instance_forward(q, _packed(mask, 5).rows, 5, tau, True)
    ref_iout, ref_pen = _GatedInstance.apply(q.clone(), mask, tau, True)
    torch.testing.assert_close(iout, ref_iout, **same)
    assert pen.isnan().item() == ref_pen.isnan().item() == (tau == 0.0)
    lay = HardThreshold(tau)
    torch.testing.assert_close(cpu.record(q, tau, torch.zeros(20, 14, dtype=torch.uint8), 0), lay(q), **same)


def test_record_rows_with_a_layer_called_twice_keeps_the_last_call():
    model = _Odd().eval()
    model.forward = lambda x: model.a2(model.fc2(model.a1(model.fc1(model.a0(model.a0(model.conv(x))).flatten(1)))))
    x = torch.randn(6, 1, 5, 5, generator=torch.Generator().manual_seed(16))
    masks = record_masks(model, x)
    rows = record_rows(model, x, [tuple(m.shape[1:]) for m in masks])
    assert np.array_equal(rows.numpy(), pack_masks(masks))


def test_rows_that_do_not_fit_are_refused():
    q = _q((2, 4096), seed=17).detach()
    short = torch.zeros(2, 1, dtype=torch.uint8)
    assert not cpu.rows_fit(q, short, 0) and cpu.rows_fit(q, torch.zeros(2, 512, dtype=torch.uint8), 0)
    assert not cpu.rows_fit(q, torch.zeros(2, 513, dtype=torch.uint8), 9)  # 9 + 4096 bits > 513 * 8
    with pytest.raises(ValueError, match="do not hold"):
        cpu.instance_forward(q, short, 0, 0.0, True)
    with pytest.raises(ValueError, match="do not hold"):
        cpu.record(q, 0.0, short, 0)
    lay = HardThreshold()
    lay.mode, lay.instance_mask = "instance", PackedMasks(short, [(4096,)])[0]
    with pytest.raises(RuntimeError):  # the torch path unpacks the rows, which checks them
        lay(q)


def test_masks_for_gives_fresh_rows_unless_reused(synthetic):
    from supportnet.alternation import make_schedule
    from supportnet.config import SupportConfig
    from supportnet.models import create_model

    model = create_model("convnet-s", synthetic.in_shape, synthetic.num_classes)
    for backend in ("stored", "snapshot"):
        s = make_schedule(SupportConfig(method="i-alt", backend=backend, warmup=0), model, synthetic.train, "cpu")
        s.start_epoch(0)
        x, idx = synthetic.train.x[:8], torch.arange(8)
        a = s.masks_for(x, idx)
        b = s.masks_for(synthetic.train.x[8:16], idx + 8)
        assert a.rows.data_ptr() != b.rows.data_ptr()
        r1 = s.masks_for(x, idx, reuse=True).rows
        r2 = s.masks_for(x, idx, reuse=True).rows
        assert r1.data_ptr() == r2.data_ptr() and torch.equal(r1, a.rows)


def test_second_derivative_through_the_penalty_is_refused():
    q = _q((4, 40), seed=18)
    m = torch.rand(4, 40, generator=torch.Generator().manual_seed(19)) < 0.5
    out, pen = cpu.gated_instance(q, _packed(m, 2), 0.0, True)
    (g,) = torch.autograd.grad((out * out).sum() + 2 * pen, q, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|twice"):
        g.sum().backward()


def test_misspelt_switch_is_one_line_exit_2(tmp_path):
    """SUPPORTNET_KERNELS must be 0 or 1: a misspelt value is refused before the command writes anything."""
    env = dict(os.environ, SUPPORTNET_KERNELS="off")
    out = subprocess.run(
        [sys.executable, "-m", "supportnet", "train", "--data", "synthetic", "--set", f"out={tmp_path / 'run'}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "SUPPORTNET_KERNELS='off' is not a choice" in out.stderr
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- torch.compile / torch.export
# The checks are tests/cpu_kernels_traced.py, run in a child process: tracing imports
# torch._inductor, which imports triton without its interpreter, and the Triton tests of
# test_kernels.py need triton imported under it (a worker may run both files).


@pytest.fixture(scope="module")
def traced():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = str(Path(__file__).with_name("cpu_kernels_traced.py"))
    r = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "check",
    ["compiled_b_alt_step", "compiled_i_alt_step_with_the_penalty", "export_sees_the_batch_kernel", "opcheck"],
)
def test_traced_kernels_give_the_eager_result(traced, check):
    """torch.compile (aot_eager) of a B- and an I-alternation step gives the eager step's bits with
    the kernels' ops in the graph; torch.export holds the batch op; the ops pass opcheck."""
    assert traced[check] == "ok", traced[check]
