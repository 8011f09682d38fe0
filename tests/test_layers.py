import pytest
import torch
from torch import nn

from supportnet import HardThreshold, configure, record_masks, threshold_layers
from supportnet.layers import (
    STAT_GROUP,
    batch_support,
    gated_eval,
    set_instance_masks,
    support_from_stats,
    unit_stats,
)
from supportnet.models import create_model


def test_free_tau0_is_relu_bit_for_bit():
    q = torch.randn(64, 8, 5, 5)
    q[0, 0, 0, :3] = torch.tensor([0.0, -0.0, 1e-40])
    layer = HardThreshold(0.0)
    out = layer(q)
    ref = torch.relu(q)
    assert out.dtype == ref.dtype
    assert torch.equal(out.view(torch.int32), ref.view(torch.int32))  # bit for bit
    q1 = q.clone().requires_grad_(True)
    q2 = q.clone().requires_grad_(True)
    layer(q1).sum().backward()
    torch.relu(q2).sum().backward()
    assert torch.equal(q1.grad, q2.grad)


def test_free_positive_threshold_keeps_q_not_q_minus_tau():
    q = torch.tensor([-1.0, 0.2, 0.5, 0.51, 2.0])
    out = HardThreshold(0.5)(q)
    assert torch.equal(out, torch.tensor([0.0, 0.0, 0.0, 0.51, 2.0]))  # Eq. 9: q, not q - tau


def test_record_mode_returns_free_output_and_mask():
    layer = HardThreshold(0.1)
    layer.mode = "record"
    q = torch.randn(4, 10)
    out = layer(q)
    assert torch.equal(out, torch.where(q > 0.1, q, 0.0))
    assert torch.equal(layer.last_mask, q > 0.1)


def test_binary_mode_value_and_gradient():
    layer = HardThreshold(0.0)
    layer.mode = "binary"
    q = torch.randn(6, 7, requires_grad=True)
    out = layer(q)
    assert torch.equal(out, (q > 0).float())
    out.sum().backward()
    assert torch.equal(q.grad, (q > 0).float())  # dz/dq = m


@pytest.mark.parametrize("apply", ["linear", "gated"])
def test_instance_mode_applies_given_mask(apply):
    layer = HardThreshold(0.0)
    q = torch.randn(5, 3, 4, 4, requires_grad=True)
    m = torch.rand(5, 3, 4, 4) > 0.5
    configure(nn.Sequential(layer), mode="instance", apply=apply)
    layer.instance_mask = m
    out = layer(q)
    expect = torch.where(m, q, 0.0) if apply == "linear" else torch.where(m & (q > 0), q, 0.0)
    assert torch.equal(out, expect)
    out.sum().backward()
    gm = m if apply == "linear" else (m & (q > 0))
    assert torch.equal(q.grad, gm.float())


def test_instance_mode_without_mask_or_wrong_shape_raises():
    layer = HardThreshold()
    layer.mode = "instance"
    with pytest.raises(RuntimeError, match="no mask"):
        layer(torch.randn(2, 3))
    layer.instance_mask = torch.ones(3, 3, dtype=torch.bool)
    with pytest.raises(RuntimeError, match="does not match"):
        layer(torch.randn(2, 3))


@pytest.mark.parametrize("mode", ["instance", "batch"])
def test_a_layer_not_in_training_mode_runs_free(mode):
    """``model.eval()`` means free mode: a fixed support (instance) or a batch's own support (batch)
    does not apply; ``model.train()`` brings it back; ``gated_eval`` keeps it with eval elsewhere."""
    torch.manual_seed(0)
    layer, drop = HardThreshold(0.1), nn.Dropout(0.5)
    model = nn.Sequential(drop, layer)
    q = torch.randn(6, 8)
    configure(model, mode=mode, rule="vote")
    layer.instance_mask = torch.rand(6, 8) > 0.5
    free = torch.where(q > 0.1, q, 0.0)
    model.eval()
    assert torch.equal(model(q), free)
    model.train()
    layer.training = True
    drop.p = 0.0
    gated = layer(q)
    assert not torch.equal(gated, free)  # (the check can fail)
    drop.p = 0.5
    with gated_eval(model):
        assert not drop.training and layer.training
        assert torch.equal(model(q), gated)  # dropout off, supports on
    assert drop.training and layer.training
    model.eval()
    with gated_eval(model):
        pass
    assert not drop.training and not layer.training  # the flags restored


@pytest.mark.parametrize("mode", ["binary", "record"])
def test_binary_and_record_stay_explicit_in_eval_mode(mode):
    layer = HardThreshold(0.1).eval()
    layer.mode = mode
    q = torch.randn(4, 5)
    out = layer(q)
    assert torch.equal(out, (q > 0.1).float() if mode == "binary" else torch.where(q > 0.1, q, 0.0))
    if mode == "record":
        assert torch.equal(layer.last_mask, q > 0.1)


def test_energy_rule_beta0_is_or_of_supports():
    q = torch.randn(16, 50)
    m = batch_support(q, 0.0, "energy", 0.0)
    assert torch.equal(m, (q > 0).any(0))


def test_energy_rule_eq41_threshold():
    q = torch.tensor([[1.0, 0.5, -2.0], [1.0, 0.5, -1.0]])
    # energies of relu(q): [2, 0.5, 0]
    assert batch_support(q, 0.0, "energy", 1.0).tolist() == [True, False, False]
    assert batch_support(q, 0.0, "energy", 0.25).tolist() == [True, True, False]


def test_energy_rel_rule_scales_with_mean_energy():
    q = torch.tensor([[3.0, 1.0, 0.1, -1.0]])
    # energies: 9, 1, 0.01, 0 -> mean 2.5025
    assert batch_support(q, 0.0, "energy-rel", 0.3).tolist() == [True, True, False, False]
    assert batch_support(10 * q, 0.0, "energy-rel", 0.3).tolist() == [True, True, False, False]


def test_vote_rule_is_strict_majority():
    q = torch.tensor([[1.0, 1.0, -1.0], [1.0, -1.0, -1.0], [-1.0, 1.0, 1.0], [1.0, -1.0, -1.0]])
    # on-fractions: 0.75, 0.5, 0.25
    assert batch_support(q, 0.0, "vote", 0.0).tolist() == [True, False, False]


@pytest.mark.parametrize("rule", ["energy", "energy-rel", "vote"])
@pytest.mark.parametrize("b", [2 * STAT_GROUP * 3, 2 * STAT_GROUP * 3 + 6])
def test_unit_stats_sum_over_a_split_batch(rule, b):
    """The statistic of a batch is the sum of its halves' (as summed over ranks): exactly when the
    halves are whole groups, within float32 rounding otherwise; and it gives the local rule's support."""
    torch.manual_seed(0)
    q = torch.randn(b, 4, 5, 5)
    free = torch.relu(q)
    stat, n = unit_stats(q, free, 0.0, rule)
    assert stat.dtype == torch.float64 and n == b
    expect = (q > 0).sum(0).double() if rule == "vote" else (free.double() ** 2).sum(0)
    torch.testing.assert_close(stat, expect, rtol=1e-6, atol=0)
    h = b // 2
    (s0, n0), (s1, n1) = unit_stats(q[:h], free[:h], 0.0, rule), unit_stats(q[h:], free[h:], 0.0, rule)
    if rule == "vote" or h % STAT_GROUP == 0:
        assert torch.equal(stat, s0 + s1)  # the groups are the same numbers whichever rank holds them
    else:
        torch.testing.assert_close(stat, s0 + s1, rtol=1e-6, atol=0)
    beta = 0.0 if rule == "energy" else 0.5
    assert torch.equal(support_from_stats(s0 + s1, n0 + n1, rule, beta), batch_support(q, 0.0, rule, beta))


@pytest.mark.parametrize("apply", ["linear", "gated"])
@pytest.mark.parametrize("rule", ["energy", "energy-rel", "vote"])
def test_batch_mode_shares_one_support(apply, rule):
    layer = HardThreshold(0.0)
    configure(nn.Sequential(layer), mode="batch", apply=apply, rule=rule, beta=0.0 if rule == "energy" else 0.5)
    q = torch.randn(8, 20)
    out = layer(q)
    m = layer.batch_mask
    assert m.shape == (20,)
    assert torch.equal(m, batch_support(q, 0.0, rule, layer.beta))
    expect = torch.where(m, q, 0.0) if apply == "linear" else torch.where(m & (q > 0), q, 0.0)
    assert torch.equal(out, expect)


@pytest.mark.parametrize("tau", [0.0, 0.3])
@pytest.mark.parametrize("rule", ["energy-rel", "vote"])
def test_fused_gated_batch_matches_autograd_reference(tau, rule):
    """The fused gated batch path (one saved tensor, one backward pass) gives the values and the
    gradient of relu_tau(q) * m written with plain autograd, the track counts included."""
    torch.manual_seed(1)
    layer = HardThreshold(tau)
    net = nn.Sequential(layer)
    configure(net, mode="batch", apply="gated", rule=rule, beta=0.5, track=True)
    q = torch.randn(16, 3, 5, 5, requires_grad=True)
    g = torch.randn(16, 3, 5, 5)
    out = layer(q)
    (out * g).sum().backward()
    m = batch_support(q.detach(), tau, rule, 0.5)
    assert torch.equal(layer.batch_mask, m) and not m.all() and m.any()
    q2 = q.detach().clone().requires_grad_(True)
    ref = torch.where(q2 > tau, q2, 0.0) * m.to(q2.dtype)
    (ref * g).sum().backward()
    assert torch.equal(out, ref) and torch.equal(q.grad, q2.grad)
    from supportnet.layers import collect_stats

    s = collect_stats(net)["0"]
    on = m & (q.detach() > tau)
    assert s["active"] == pytest.approx(on.float().mean().item())
    assert s["drift"] == pytest.approx(((q.detach() > tau) != m).float().mean().item())


@pytest.mark.parametrize("tau", [0.0, 0.2])
@pytest.mark.parametrize("consistency", [0.0, 1.0])
def test_fused_gated_instance_matches_autograd_reference(tau, consistency):
    """The fused instance path gives the output, penalty and gradient of the plain-autograd
    definitions: relu_tau(q) * m and mean(where(m, 0, relu(q - tau))^2)."""
    from supportnet.layers import collect_stats, support_penalty

    torch.manual_seed(0)
    layer = HardThreshold(tau)
    net = nn.Sequential(layer)
    configure(net, mode="instance", apply="gated", consistency=consistency, track=True)
    q = torch.randn(8, 3, 4, 4, requires_grad=True)
    m = torch.rand(8, 3, 4, 4) > 0.4
    g = torch.randn(8, 3, 4, 4)
    layer.instance_mask = m
    out = layer(q)
    obj = (out * g).sum() + support_penalty(net)
    obj.backward()
    q2 = q.detach().clone().requires_grad_(True)
    ref = torch.where(q2 > tau, q2, 0.0) * m.float()
    pen = torch.where(m, 0.0, torch.relu(q2 - tau)).pow(2).mean()
    ((ref * g).sum() + consistency * pen).backward()
    assert torch.equal(out, ref)
    assert torch.allclose(q.grad, q2.grad, rtol=0, atol=1e-6)
    if consistency:
        assert pen.item() > 0  # the penalty term is exercised
    s = collect_stats(net)["0"]
    assert s["active"] == pytest.approx((m & (q.detach() > tau)).float().mean().item())
    assert s["drift"] == pytest.approx(((q.detach() > tau) != m).float().mean().item())


def test_gated_energy_beta0_equals_free():
    """With beta = 0 the batch support is the OR of supports, so gating changes nothing."""
    layer = HardThreshold(0.0)
    configure(nn.Sequential(layer), mode="batch", apply="gated", rule="energy", beta=0.0)
    q = torch.randn(32, 40)
    assert torch.equal(layer(q), torch.relu(q))


def test_unknown_mode_raises():
    layer = HardThreshold()
    layer.mode = "nope"
    with pytest.raises(Exception, match="unknown HardThreshold mode"):
        layer(torch.randn(2))


@pytest.mark.parametrize("name", ["mlp", "convnet-s"])
def test_fixed_support_bias_free_network_is_linear(name):
    """Eq. 13: with every support fixed (linear application) F(a x1 + b x2) = a F(x1) + b F(x2)."""
    torch.manual_seed(0)
    model = create_model(name, in_shape=(1, 12, 12), num_classes=5, bias=False).double()  # (eval: free mode)
    x0 = torch.randn(3, 1, 12, 12, dtype=torch.float64)
    masks = record_masks(model, x0)
    configure(model, apply="linear")
    set_instance_masks(model, masks)
    x1, x2 = torch.randn_like(x0), torch.randn_like(x0)
    a, b = 1.7, -0.6
    lhs = model(a * x1 + b * x2)
    rhs = a * model(x1) + b * model(x2)
    assert torch.allclose(lhs, rhs, rtol=1e-10, atol=1e-12)
    # and it is not linear in free mode (sanity: the check can fail)
    configure(model, mode="free")
    assert not torch.allclose(model(a * x1 + b * x2), a * model(x1) + b * model(x2), rtol=1e-6)


def test_stats_track_active_fraction_and_drift():
    layer = HardThreshold(0.0)
    net = nn.Sequential(layer)
    configure(net, mode="instance", apply="gated", track=True)
    q = torch.tensor([[1.0, -1.0, 2.0, -2.0]])
    layer.instance_mask = torch.tensor([[True, True, False, False]])
    layer(q)
    from supportnet.layers import collect_stats

    s = collect_stats(net)["0"]
    assert s["active"] == pytest.approx(0.25)  # only unit 0 is on under the gate
    assert s["drift"] == pytest.approx(0.5)  # units 1 and 2 disagree with the free support
    assert layer.stats.sum() == 0  # reset


def test_threshold_layers_order_and_tau_per_layer():
    model = create_model("convnet-s", in_shape=(1, 12, 12))
    names = [n for n, _ in threshold_layers(model)]
    assert names == ["features.1", "features.3", "features.5", "classifier.3"]
    configure(model, tau=[0.0, 0.1, 0.2, 0.3])
    assert [lay.tau for _, lay in threshold_layers(model)] == [0.0, 0.1, 0.2, 0.3]
    with pytest.raises(Exception, match="one value or one per layer"):
        configure(model, tau=[0.1, 0.2])


def test_unit_stats_low_precision_activations_add_in_float32():
    """Under autocast the activations are bf16: the squares are bf16, their sums are not."""
    torch.manual_seed(0)
    q = torch.randn(37, 6, 3, 3).to(torch.bfloat16)
    free = torch.relu(q)
    stat, n = unit_stats(q, free, 0.0, "energy-rel")
    expect = ((free * free).double()).sum(0)  # the same bf16 squares, added exactly
    assert stat.dtype == torch.float64 and n == 37
    torch.testing.assert_close(stat, expect, rtol=1e-6, atol=0)  # a bf16 running sum is off by ~1e-2


def test_converted_model_works_with_module_apply_script_trace_and_export():
    """nn.Module.apply is not shadowed, and the exporters see the free mode (tau > 0 too)."""
    from supportnet import conversion_report, convert

    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    model = convert(plain, tau=0.1)
    assert len(conversion_report(model).converted) == 1
    seen = []
    model.apply(lambda m: seen.append(type(m).__name__))
    assert "HardThreshold" in seen
    model.eval()
    x = torch.randn(5, 1, 8, 8)
    want = model(x)
    assert torch.equal(torch.jit.script(model)(x), want)
    assert torch.equal(torch.jit.trace(model, x)(x), want)
    assert torch.equal(torch.export.export(model, (x,)).module()(x), want)
    q = plain[0](x)
    assert torch.equal(want, plain[3](plain[2](torch.where(q > 0.1, q, 0.0))))  # q * 1[q > tau]
    assert set(model.state_dict()) == set(plain.state_dict())  # the state dict loads into the ReLU model


@pytest.mark.parametrize("consistency", [0.0, 1.0])
def test_instance_mode_takes_packed_masks(consistency):
    """Packed rows (what the stored back end hands the layers on CUDA) give the layers, on the
    CPU, the same outputs, penalties and gradients as the bool masks they unpack to."""
    from supportnet.layers import support_penalty
    from supportnet.masks import MaskStore

    torch.manual_seed(0)
    model = create_model("convnet-s", (1, 12, 12), 10, width=4, hidden=8)
    x = torch.randn(6, 1, 12, 12)
    shapes = [tuple(m.shape[1:]) for m in record_masks(model, x)]
    store = MaskStore(6, shapes)
    store.write(torch.arange(6), [torch.rand(6, *s) > 0.5 for s in shapes])
    configure(model, mode="instance", apply="gated", consistency=consistency)
    grads = []
    for packed in (False, True):
        set_instance_masks(model, store.read(torch.arange(6), packed=packed))
        model.zero_grad()
        out = model(x)
        (out.square().sum() + support_penalty(model)).backward()
        grads.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    assert torch.equal(grads[0][0], grads[1][0])
    assert all(torch.equal(a, b) for a, b in zip(grads[0][1], grads[1][1]))


def test_mask_multiplier_is_exact():
    """A bool mask applied as uint8 (the CPU's faster multiply) gives the same bits."""
    from supportnet.support import _factor

    q = torch.randn(4, 3, 5, 5)
    q[0, 0, 0, 0] = float("nan")
    m = torch.rand(4, 3, 5, 5) > 0.5
    for x in (q, q.bfloat16(), torch.relu(q)):
        a, b = x * m, x * _factor(m)
        assert a.dtype == b.dtype and torch.equal(a.view(-1)[1:], b.view(-1)[1:]) and b.view(-1)[0].isnan()


@pytest.mark.parametrize("shape", [(128, 32, 28, 28), (6, 5), (7, 3, 4), (2, 9)])
def test_unit_energy_matches_the_plain_sum_and_not_the_thread_count(shape):
    """The CPU's half-batch bmm (layers.unit_energy) is sum_n x_n^2 to float32 rounding, and
    the same bits whatever the thread count (an odd or tiny batch takes sum(0) itself)."""
    from supportnet.layers import unit_energy

    x = torch.relu(torch.randn(shape, generator=torch.Generator().manual_seed(0)))
    e = unit_energy(x)
    assert e.shape == x.shape[1:] and e.dtype == torch.float32
    torch.testing.assert_close(e, (x.double() ** 2).sum(0).float(), rtol=1e-5, atol=1e-6)
    threads = torch.get_num_threads()
    others = []
    try:
        for n in (1, 2):  # both, whichever the default is (one thread per xdist worker on two cores)
            torch.set_num_threads(n)
            others.append(unit_energy(x))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(o, e) for o in others)


def test_unit_energy_channels_last():
    from supportnet.layers import unit_energy

    x = torch.relu(torch.randn(8, 3, 4, 5)).contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(unit_energy(x), (x.double() ** 2).sum(0).float(), rtol=1e-5, atol=1e-6)


def test_tau_in_state_dict_is_a_float64_scalar_that_survives_half_and_deepcopy():
    import copy

    layer = HardThreshold(0.1, tau_in_state_dict=True)
    model = nn.Sequential(nn.Linear(3, 3), layer).half()
    state = copy.deepcopy(model).state_dict()
    assert state["1.tau"].dtype == torch.float64 and float(state["1.tau"]) == 0.1
    other = nn.Sequential(nn.Linear(3, 3), HardThreshold(tau_in_state_dict=True))
    other.load_state_dict(state)
    assert other[1].tau == 0.1 and "tau_in_state_dict=True" in repr(other)
    assert "1.tau" in state  # the caller's dict is not changed by the load
    assert list(nn.Sequential(nn.Linear(3, 3), HardThreshold(0.1)).state_dict()) == ["0.weight", "0.bias"]
