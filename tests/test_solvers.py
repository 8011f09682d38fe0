"""supportnet.solvers: K-FAC factors under a fixed support, the line search, held supports, the head
solve, exact resume, refused values, and a short training run (tiny models, synthetic data)."""

import io
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT
from torch import nn

import supportnet as sn
from supportnet.data import Split, batches
from supportnet.errors import ConfigError
from supportnet.layers import HardThreshold, configure, layer_mode, record_masks, set_instance_masks, threshold_layers
from supportnet.solvers import KFAC, hold_supports, newton_cg_layer, solve_head, support_from_output
from supportnet.solvers.newton import _Block


def _mlp(d=6, h=5, k=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, h), HardThreshold(), nn.Linear(h, k))


def _convnet(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), HardThreshold(),  # (B, 4, 8, 8)
        nn.Conv2d(4, 4, 3, stride=2, padding=1), HardThreshold(),  # (B, 4, 4, 4)
        nn.Flatten(), nn.Linear(64, 8), HardThreshold(), nn.Linear(8, 3),
    )  # fmt: skip


def _problem(n=512, d=20, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (torch.tanh(x @ torch.randn(d, k, generator=g)) + 0.3 * torch.randn(n, k, generator=g)).argmax(1)
    return x, y


def _one_step(model, x, y, **kw):
    """One forward/backward and a plain step with the current batch's factors (ema=1)."""
    opt = KFAC(model, lr=1e-12, momentum=0.0, ema=1.0, line_search="none", **kw)
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return opt


# -- factors against dense references ----------------------------------------------------------------


@pytest.mark.parametrize("apply", ["gated", "linear"])
def test_linear_factors_equal_per_example_outer_products_under_a_batch_support(apply):
    """A and G of both layers against explicit per-example outer products, with the gradient at
    the first layer's output derived by hand: g1 = (p - e_y) W2 * m (* 1[s1 > 0] when gated)."""
    model = _mlp()
    configure(model, mode="batch", apply=apply, rule="energy-rel", beta=1.0)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    w1, b1, w2, b2 = (p.detach().clone() for p in model.parameters())
    opt = _one_step(model, x, y)
    m = model[1].batch_mask.clone()
    assert m.any() and not m.all(), "the support must switch some units off and keep some on"
    s1 = x @ w1.t() + b1  # (B, 5)
    gate = m & (s1 > 0) if apply == "gated" else m.expand_as(s1)
    z = s1 * gate  # (B, 5)
    r = torch.softmax(z @ w2.t() + b2, 1) - F.one_hot(y, 3).float()  # (B, 3) per-example dl/dlogits
    g1 = (r @ w2) * gate  # (B, 5)
    a1, a2 = torch.cat([x, torch.ones(16, 1)], 1), torch.cat([z, torch.ones(16, 1)], 1)
    for w, a, g in ((model[0].weight, a1, g1), (model[2].weight, a2, r)):
        st = opt.state[w]
        torch.testing.assert_close(st["A"], a.t() @ a / 16, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(st["G"], g.t() @ g / 16, atol=1e-7, rtol=1e-5)
    g_first = opt.state[model[0].weight]["G"]
    assert torch.equal(g_first[~m], torch.zeros_like(g_first[~m])), "a unit held off has no gradient"
    configure(model, mode="free")
    free = _one_step(model, x, y).state[model[0].weight]["G"]
    assert not torch.allclose(free, g_first), "the free support gives other factors"


@pytest.mark.parametrize("apply", ["gated", "linear"])
def test_conv_factors_equal_explicit_patches_under_instance_supports(apply):
    """KFC (Grosse & Martens 2016): A = 1/B sum_n sum_t a aᵀ over patches cut from the padded input
    by hand, G = 1/(B T) sum g gᵀ of per-example gradients at the conv output, with per-example
    supports that switch units off."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), HardThreshold(), nn.Flatten(), nn.Linear(27, 3))
    configure(model, apply=apply)
    x, y = torch.randn(8, 2, 5, 5), torch.randint(0, 3, (8,))
    masks = [m & (torch.rand(m.shape) > 0.3) for m in record_masks(model, x)]
    set_instance_masks(model, masks)
    s = model[0](x)  # (B, 3, 3, 3)
    s.retain_grad()
    F.cross_entropy(model[1:](s), y, reduction="sum").backward()
    g = s.grad.permute(0, 2, 3, 1).reshape(-1, 3)  # (B*T, 3), per-example: the sum's gradient
    xp = F.pad(x, (1, 1, 1, 1))
    a_ref = torch.zeros(19, 19)
    for i in range(3):
        for j in range(3):
            a = torch.cat([xp[:, :, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].reshape(8, -1), torch.ones(8, 1)], 1)
            a_ref += a.t() @ a
    model.zero_grad()
    st = _one_step(model, x, y).state[model[0].weight]
    torch.testing.assert_close(st["A"], a_ref / 8, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(st["G"], g.t() @ g / (8 * 9), atol=1e-7, rtol=1e-5)
    assert (masks[0] == 0).any() and ((masks[0] == 0) != (record_masks(model, x)[0] == 0)).any()


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("mode", ["batch", "instance", "free"])
def test_factors_equal_curvlinops_kfac(kind, mode):
    """The same factors as curvlinops' KFACLinearOperator (empirical Fisher, KFAC-expand) on one
    batch with the supports held: curvlinops puts the 1/T of a conv layer on A, KFC on G."""
    curvlinops = pytest.importorskip("curvlinops")
    torch.manual_seed(2)
    if kind == "linear":
        model, x, t = _mlp(), torch.randn(16, 6), 1
    else:
        model = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), HardThreshold(), nn.Flatten(), nn.Linear(27, 3))
        x, t = torch.randn(16, 2, 5, 5), 9
    y = torch.randint(0, 3, (16,))
    if mode == "instance":
        set_instance_masks(model, [m & (torch.rand(m.shape) > 0.3) for m in record_masks(model, x)])
    else:
        configure(model, mode=mode, beta=0.5)
    opt = _one_step(model, x, y)
    op = curvlinops.KFACLinearOperator(
        model, nn.CrossEntropyLoss(), list(model.parameters()), [(x, y)], fisher_type="empirical",
        separate_weight_and_bias=False, check_deterministic=False,
    )  # fmt: skip
    op.compute_kronecker_factors()
    ref = op.state_dict()
    first, last = model[0], model[-1]
    for name, mod, scale in (("0", first, t), (str(len(model) - 1), last, 1)):
        torch.testing.assert_close(opt.state[mod.weight]["A"] / scale, ref["input_covariances"][name])
        torch.testing.assert_close(opt.state[mod.weight]["G"] * scale, ref["gradient_covariances"][name])


def test_direction_is_the_damped_kronecker_solve_and_other_parameters_take_sgd():
    """delta W = -lr (G + sqrt(l)/pi I)^-1 [dW db] (A + pi sqrt(l) I)^-1 (Martens & Grosse 2015,
    6.3), computed here with float64 solves; a parameter outside a Linear/Conv2d gets -lr * grad."""

    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.s = nn.Parameter(torch.tensor(1.5))

        def forward(self, x):
            return x * self.s

    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 5), HardThreshold(), Scale(), nn.Linear(5, 3))
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    before = [p.detach().clone() for p in model.parameters()]
    opt = KFAC(model, lr=0.1, momentum=0.0, damping=0.05, ema=1.0, line_search="none")
    F.cross_entropy(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    st = opt.state[model[0].weight]
    a, g = st["A"].double(), st["G"].double()
    pi = math.sqrt((a.trace() / 7) / (g.trace() / 5))
    grad = torch.cat([grads[0], grads[1][:, None]], 1).double()  # (5, 7)
    v = torch.linalg.solve(g + math.sqrt(0.05) / pi * torch.eye(5), grad)
    v = torch.linalg.solve(a + pi * math.sqrt(0.05) * torch.eye(7), v.t()).t()
    after = list(model.parameters())
    torch.testing.assert_close((after[0] - before[0]).double(), -0.1 * v[:, :6], atol=1e-6, rtol=1e-4)
    torch.testing.assert_close((after[1] - before[1]).double(), -0.1 * v[:, 6], atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(after[2] - before[2], -0.1 * grads[2])


# -- the line search -----------------------------------------------------------------------------------


@pytest.mark.parametrize("search", ["armijo", "interp"])
def test_line_search_keeps_armijo_and_counts_every_pass(search):
    model = _mlp(20, 16, 4)
    x, y = _problem(64)
    opt = KFAC(model, lr=30.0, momentum=0.0, damping=1e-3, line_search=search, ls_steps=10)
    calls = []

    def closure():
        calls.append(1)
        return F.cross_entropy(model(x), y)

    for step in range(3):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        before = [p.detach().clone() for p in model.parameters()]
        n = len(calls)
        f = opt.step(closure, loss=loss if step else None)  # the first step evaluates f(w) itself
        with torch.no_grad():
            after = float(F.cross_entropy(model(x), y))
        moved = sum(float((p.detach() - b).mul(p.grad).sum()) for p, b in zip(model.parameters(), before))
        assert after == pytest.approx(f, rel=1e-6)
        assert after <= loss.item() + 1e-4 * moved + 1e-7, "Armijo: f(w + a d) <= f(w) + c <grad, a d>"
        assert moved < 0 and after < loss.item()
        assert len(calls) - n >= (3 if step == 0 else 2), "lr=30 overshoots: the search must backtrack"
    assert opt.counts["extra_forwards"] == len(calls)
    assert opt.passes == opt.counts["forward_backward"] + len(calls) and opt.counts["forward_backward"] == 3


def test_no_accepted_step_leaves_the_weights_and_clears_momentum_and_none_takes_the_lr_step():
    model = _mlp(20, 16, 4)
    x, y = _problem(64)
    opt = KFAC(model, lr=1e6, line_search="armijo", ls_steps=1)
    F.cross_entropy(model(x), y).backward()
    before = [p.detach().clone() for p in model.parameters()]
    opt.step(lambda: F.cross_entropy(model(x), y))
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert opt.counts["rejected"] == 1 and opt.counts["extra_forwards"] == 2
    assert all(not opt.state[p]["momentum_buffer"].any() for p in model.parameters())
    plain = KFAC(_mlp(20, 16, 4), lr=0.01, line_search=None)
    F.cross_entropy(plain.model(x), y).backward()
    assert plain.step() is None and plain.counts["extra_forwards"] == 0 and plain.passes == 1
    with pytest.raises(ConfigError, match="closure"):
        opt.step()


# -- held supports -------------------------------------------------------------------------------------


@pytest.mark.parametrize("apply", ["gated", "linear"])
@pytest.mark.parametrize("rule,beta", [("energy-rel", 0.8), ("energy", 2.0), ("vote", 0.0)])
def test_batch_support_is_recoverable_from_the_output(apply, rule, beta):
    """m = (out != 0).any(0) in batch mode for tau >= 0 and beta >= 0 (the claim in hold.py)."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(8, 32), HardThreshold())
    configure(model, mode="batch", apply=apply, rule=rule, beta=beta)
    for _ in range(5):
        out = model(torch.randn(16, 8))
        m = model[1].batch_mask
        assert m.any() and not m.all()
        assert torch.equal(support_from_output(out), m)


def _batch_masks(model):
    return [lay.batch_mask.clone() for _, lay in threshold_layers(model)]


def test_hold_supports_keeps_a_batch_support_fixed_and_free_mode_moves():
    model = _convnet()
    x = torch.randn(16, 1, 8, 8)
    configure(model, mode="batch", rule="energy-rel", beta=0.5)
    with hold_supports(model) as held:
        model(x)
        first = _batch_masks(model)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        out = model[:2](x)
        assert len(held) == 3 and all(torch.equal(a, b) for a, b in zip(_batch_masks(model), first))
        assert torch.equal(support_from_output(out), first[0] & support_from_output(out)), "held off stays off"
    assert all(lay.given_batch_mask is None for _, lay in threshold_layers(model))
    model(x)
    assert any(not torch.equal(a, b) for a, b in zip(_batch_masks(model), first)), "released: the rule again"
    configure(model, mode="free")
    with hold_supports(model) as held:
        before = record_masks(model, x)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        assert not held and any(not torch.equal(a, b) for a, b in zip(record_masks(model, x), before))


@pytest.mark.parametrize("hold", [True, False])
def test_kfac_line_search_passes_see_the_support_of_the_gradient_pass(hold):
    """B-alternation: with hold (the default) every closure pass applies the batch support of the
    forward the gradient came from; without it the support moves with the trial weights."""
    model = _mlp(20, 32, 4, seed=5)
    configure(model, mode="batch", rule="energy-rel", beta=0.5)
    x, y = _problem(64)
    opt = KFAC(model, lr=50.0, momentum=0.0, damping=1e-3, ls_steps=6, hold=hold)
    seen = []

    def closure():
        loss = F.cross_entropy(model(x), y)
        seen.append(model[1].batch_mask.clone())
        return loss

    loss = F.cross_entropy(model(x), y)
    first = model[1].batch_mask.clone()
    opt.zero_grad()
    loss.backward()
    opt.step(closure, loss=loss)
    assert len(seen) >= 2
    same = [torch.equal(m, first) for m in seen]
    assert all(same) if hold else not all(same)
    assert model[1].given_batch_mask is None


# -- the head solve ------------------------------------------------------------------------------------


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_solve_head_reaches_the_convex_optimum(smoothing):
    torch.manual_seed(6)
    model = _mlp(5, 8, 3).double()
    x, y = torch.randn(300, 5, dtype=torch.float64), torch.randint(0, 3, (300,))
    hidden = [p.detach().clone() for p in model[0].parameters()]
    rep = solve_head(model, (x, y), weight_decay=1e-3, label_smoothing=smoothing, tol=1e-10, batch_size=128)
    assert rep.method == "newton" and rep.converged and rep.grad_norm <= 1e-10 and rep.iterations >= 2
    assert rep.forward_batches == 3 and rep.examples == 300 and rep.params == 27 and rep.evaluations > rep.iterations
    assert all(torch.equal(p, h) for p, h in zip(model[0].parameters(), hidden)), "only the head is written"
    head = model[2]
    loss = F.cross_entropy(head(model[:2](x)), y, label_smoothing=smoothing)
    loss = loss + 0.5e-3 * (head.weight.square().sum() + head.bias.square().sum())
    grads = torch.autograd.grad(loss, list(head.parameters()))  # an independent gradient: autograd's
    assert math.sqrt(sum(float(g.square().sum()) for g in grads)) < 1e-9
    assert loss.item() == pytest.approx(rep.loss, rel=1e-12)
    other = _mlp(5, 8, 3).double()
    ref = solve_head(other, Split(x, y), weight_decay=1e-3, label_smoothing=smoothing, tol=1e-9, method="lbfgs",
                     max_iter=2000)  # fmt: skip
    assert ref.method == "lbfgs" and ref.grad_norm < 1e-8
    torch.testing.assert_close(other[2].weight, head.weight, atol=1e-6, rtol=0)
    assert ref.loss == pytest.approx(rep.loss, abs=1e-12)


def test_solve_head_takes_a_dataset_and_features_of_the_set_modes():
    torch.manual_seed(7)
    model = _mlp(5, 8, 3)
    x, y = torch.randn(100, 5), torch.randint(0, 3, (100,))
    a, b = _mlp(5, 8, 3, seed=1), _mlp(5, 8, 3, seed=1)
    solve_head(a, (x, y), batch_size=32)
    rep = solve_head(b, torch.utils.data.TensorDataset(x, y), batch_size=32)
    assert rep.forward_batches == 4
    torch.testing.assert_close(a[2].weight, b[2].weight, atol=1e-6, rtol=0)
    configure(model, mode="instance")
    set_instance_masks(model, [torch.zeros(100, 8, dtype=torch.bool)])  # every unit held off
    zero = solve_head(model, (x, y), batch_size=None, weight_decay=1e-2)
    assert zero.converged and not model[2].weight.any(), "no features: the L2 term sets the weights to 0"
    with pytest.raises(ConfigError, match="method"):
        solve_head(model, (x, y), method="exact")


# -- Newton-CG on one layer ----------------------------------------------------------------------------


def test_newton_cg_layer_solves_a_linear_block_under_instance_supports():
    """apply=linear with fixed per-example supports: the output is linear in the middle layer's
    weights, so the Gauss-Newton product equals the Hessian's (double backward) and Newton-CG
    reaches the block's optimum; the other layers are not touched."""
    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(6, 8), HardThreshold(), nn.Linear(8, 8), HardThreshold(), nn.Linear(8, 3))
    model = model.double()
    x, y = torch.randn(64, 6, dtype=torch.float64), torch.randint(0, 3, (64,))
    configure(model, apply="linear")
    set_instance_masks(model, [m & (torch.rand(m.shape) > 0.2) for m in record_masks(model, x)])
    params = list(model[2].parameters())
    block = _Block(model, params, x, y, 0.0)
    block.linearise()
    v = [torch.randn_like(p) for p in params]
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), params, create_graph=True)
    for a, b in zip(block.ggn(v, 0.0), torch.autograd.grad(grads, params, v)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-9)
    others = [p.detach().clone() for i in (0, 4) for p in model[i].parameters()]
    start = F.cross_entropy(model(x), y).item()
    rep = newton_cg_layer(model, model[2], x, y, weight_decay=1e-3, tol=1e-9, max_iter=30)
    assert rep.converged and rep.grad_norm <= 1e-9 and rep.loss < start and rep.cg_iterations > rep.iterations
    assert all(torch.equal(p, o) for p, o in zip([p for i in (0, 4) for p in model[i].parameters()], others))
    with pytest.raises(ConfigError, match="cg_rtol"):
        newton_cg_layer(model, model[2], x, y, cg_rtol=1.0)


# -- exact resume ----------------------------------------------------------------------------------------


def _train(model, opt, x, y, steps, start=0):
    for s in range(start, start + steps):
        i = (s % 4) * 16
        xb, yb = x[i : i + 16], y[i : i + 16]
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step(lambda xb=xb, yb=yb: F.cross_entropy(model(xb), yb), loss=loss)


@pytest.mark.parametrize("mode,decoupled", [("batch", False), ("free", True)])
def test_resume_is_bit_identical(mode, decoupled):
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 3, (64,))
    kw = dict(lr=0.05, damping=1e-2, update_every=3, factor_every=2, weight_decay=1e-3, ls_grow=2.0, ls_max=4.0,
              decoupled_weight_decay=decoupled)  # fmt: skip

    def fresh(seed):
        model = _convnet(seed)
        configure(model, mode=mode, rule="energy-rel", beta=0.3)
        return model, KFAC(model, **kw)

    model, opt = fresh(0)
    _train(model, opt, x, y, 10)
    half, hopt = fresh(0)
    _train(half, hopt, x, y, 5)
    buf = io.BytesIO()
    torch.save({"model": half.state_dict(), "opt": hopt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    resumed, ropt = fresh(1)
    resumed.load_state_dict(saved["model"])
    ropt.load_state_dict(saved["opt"])
    _train(resumed, ropt, x, y, 5, start=5)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), resumed.state_dict().values()))
    assert ropt.counts == opt.counts and ropt.alpha == opt.alpha and opt.counts["inverse_updates"] >= 3
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert opt.state[p].keys() == ropt.state[q].keys()
        assert all(torch.equal(opt.state[p][k], ropt.state[q][k]) for k in opt.state[p])


# -- refused values ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {"damping": -1e-3}, {"update_every": 0}, {"update_every": -2}, {"factor_every": 0}, {"update_every": 2.5},
        {"lr": 0.0}, {"lr": -0.1}, {"line_search": "wolfe"}, {"ema": 0.0}, {"ema": 1.5}, {"momentum": 1.0},
        {"ls_shrink": 1.0}, {"kl_clip": 0.0}, {"weight_decay": -1.0},
    ],
)  # fmt: skip
def test_bad_values_are_refused_with_one_line(kw):
    with pytest.raises(ConfigError) as e:
        KFAC(_mlp(), **kw)
    msg = str(e.value)
    ((key, value),) = kw.items()
    assert "\n" not in msg and key in msg and repr(value) in msg and "; use" in msg, msg


# -- training ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["free", "batch"])
def test_kfac_training_decreases_the_loss(mode):
    x, y = _problem()
    model = nn.Sequential(nn.Linear(20, 32), HardThreshold(), nn.Linear(32, 32), HardThreshold(), nn.Linear(32, 4))
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.reset_parameters()
    configure(model, mode=mode)
    opt = KFAC(model, lr=0.1, momentum=0.0, damping=1e-2, update_every=5)
    with torch.no_grad(), layer_mode(model, "free"):
        start = F.cross_entropy(model(x), y).item()
    for _ in range(5):
        for i in range(0, 512, 64):
            xb, yb = x[i : i + 64], y[i : i + 64]
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step(lambda xb=xb, yb=yb: F.cross_entropy(model(xb), yb), loss=loss)
    with torch.no_grad(), layer_mode(model, "free"):
        end = float(F.cross_entropy(model(x), y))
    assert end < 0.5 * start, (start, end)
    assert opt.counts["steps"] == 40 and opt.passes >= 80


def test_drives_an_i_alternation_loop():
    """The loop of docs/own-loop.md with KFAC: the closure's passes, inside the step's block,
    reuse the instance supports alt.step set, and the supports' training objective decreases."""
    x, y = _problem(256)
    train = Split(x, y)
    model = sn.convert(nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 4)))
    alt = sn.alternation("i-alt", model, train, backend="stored", warmup=1, consistency=0.0)
    opt = KFAC(model, lr=0.03)
    losses = []
    for epoch in range(3):
        alt.start_epoch(epoch)
        total = 0.0
        for xb, yb, idx in batches(train, 64, torch.randperm(256, generator=torch.Generator().manual_seed(epoch))):
            with alt.step(idx, xb):  # (the block gives the layers back their state when it exits)
                loss = F.cross_entropy(model(xb), yb)
                opt.zero_grad()
                loss.backward()
                total += float(opt.step(lambda xb=xb, yb=yb: F.cross_entropy(model(xb), yb), loss=loss))
        alt.end_epoch(total / 4)
        losses.append(total / 4)
    assert threshold_layers(model)[0][1].mode == "instance"
    assert losses[-1] < losses[0], losses


# -- distributed ---------------------------------------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import sys, torch, torch.distributed as dist, torch.nn.functional as F
    from torch import nn
    from supportnet.layers import HardThreshold, configure
    from supportnet.solvers import KFAC
    rank, world, path, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    if world > 1:
        dist.init_process_group("gloo", init_method="file://" + path, rank=rank, world_size=world)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), HardThreshold(), nn.Linear(8, 3))
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    sl = slice(rank * 32 // world, (rank + 1) * 32 // world)
    def averaged_grads():
        for p in model.parameters():
            if world > 1:
                dist.all_reduce(p.grad)
                p.grad /= world

    opt = KFAC(model, lr=0.05, ema=1.0, line_search="none")
    loss = F.cross_entropy(model(x[sl]), y[sl])
    loss.backward()
    averaged_grads()
    opt.step()
    saved = {k + str(i): opt.state[model[i].weight][k] for i in (0, 2) for k in ("A", "G", "A_inv", "G_inv")}
    # then three line-search steps on each rank's half, the gradients averaged as DDP would
    opt = KFAC(model, lr=5.0, damping=1e-3, ls_steps=8)
    for _ in range(3):
        loss = F.cross_entropy(model(x[sl]), y[sl])
        opt.zero_grad()
        loss.backward()
        averaged_grads()
        opt.step(lambda: F.cross_entropy(model(x[sl]), y[sl]), loss=loss)
    saved.update({f"w{i}": p.detach() for i, p in enumerate(model.parameters())}, passes=opt.passes)
    torch.save(saved, out)
    """
)


def test_factors_are_averaged_over_ranks(tmp_path):
    """Two gloo ranks, each on half the batch, fold the same averaged factors as one process on the
    whole batch (free mode: a batch support would differ between the halves and the whole), and
    with DDP-averaged gradients their line searches, on averaged losses, accept the same steps."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    runs = [(r, 2, tmp_path / f"r{r}.pt") for r in range(2)] + [(0, 1, tmp_path / "one.pt")]
    procs = [
        subprocess.Popen([sys.executable, str(script), str(r), str(w), str(tmp_path / "rdv"), str(o)], env=env)
        for r, w, o in runs[:2]
    ]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    subprocess.run(
        [sys.executable, str(script), "0", "1", str(tmp_path / "rdv1"), str(runs[2][2])], env=env, check=True
    )
    r0, r1, one = (torch.load(o, weights_only=True) for _, _, o in runs)
    assert r0.keys() == one.keys() and {"A0", "G0", "A2", "G2", "w0", "passes"} <= r0.keys()
    for k in r0:
        assert r0[k] == r1[k] if k == "passes" else torch.equal(r0[k], r1[k]), k  # the ranks agree
        if k[0] in "AG":
            torch.testing.assert_close(r0[k], one[k], msg=k)
    assert r0["passes"] > 6, "the ranks backtracked (lr=5): the same accepted steps from averaged losses"
