import math

import pytest
import torch
from torch import nn

from supportnet import HardThreshold
from supportnet.theory.lifting import check_lifting, conv_matrix, jacobian, lifted_U, lifted_v, theta
from supportnet.theory.planted import (
    PlantedConfig,
    make_teacher,
    run_planted,
    run_three_layer,
    torch_solvers,
)
from supportnet.theory.recovery import (
    als,
    lifted_operator,
    lifted_svd,
    local_descent,
    random_starts,
    rel_loss,
    solve_given_support,
    svp,
    theorem1,
    theorem1_two_layer,
    unit_products,
)

D = torch.float64


def _fc(dims, seed):
    torch.manual_seed(seed)
    layers = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1], bias=False))
        if i < len(dims) - 2:
            layers.append(HardThreshold())
    return nn.Sequential(*layers)


def _conv(n_layers, seed):
    torch.manual_seed(seed)
    if n_layers == 2:
        return nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1, bias=False),
            HardThreshold(),
            nn.Flatten(),
            nn.Linear(3 * 5 * 5, 4, bias=False),
        ), (2, 5, 5)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1, bias=False),
        HardThreshold(),
        nn.Conv2d(2, 3, 3, stride=2, bias=False),
        HardThreshold(),
        nn.Flatten(),
        nn.Linear(3 * 2 * 2, 2, bias=False),
    ), (1, 6, 6)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dims", [(7, 5, 3), (6, 5, 4, 3)])
def test_lifting_identity_fc(dims, seed):
    assert check_lifting(_fc(dims, seed), torch.randn(5, dims[0], dtype=D)) < 1e-10


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("n_layers", [2, 3])
def test_lifting_identity_conv(n_layers, seed):
    net, shape = _conv(n_layers, seed)
    assert check_lifting(net, torch.randn(4, *shape, dtype=D)) < 1e-10


def test_lifting_fails_with_wrong_masks():
    """The identity is about the network's own support: a flipped mask breaks it (the check can fail)."""
    net = _fc((6, 5, 3), 0).double().eval()
    x = torch.randn(6, dtype=D)
    from supportnet.layers import record_masks

    m = record_masks(net, x[None])[0][0].clone()
    m[0] = ~m[0]
    f = lifted_U(net, x, [m]) @ lifted_v(net)
    assert not torch.allclose(f, net(x[None])[0])


def test_first_layer_is_x_kron_M_column_major():
    """Eq. 14 with the exact shapes: U_1 = x^T (x) M_1 for column-major vec(W1)."""
    torch.manual_seed(0)
    lin = nn.Linear(4, 3, bias=False).double()
    x = torch.randn(4, dtype=D)
    m = torch.tensor([1.0, 0.0, 1.0], dtype=D)
    U1 = torch.diag(m) @ jacobian(lin, x, (4,))
    assert torch.equal(U1, torch.kron(x[None], torch.diag(m)))
    assert torch.allclose(U1 @ theta(lin), m * lin(x))


def test_conv_matrix_is_the_toeplitz_form():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=False).double()
    T = conv_matrix(conv, (2, 7, 7))
    u = torch.randn(2, 7, 7, dtype=D)
    assert torch.allclose(T @ u.reshape(-1), conv(u[None]).reshape(-1))
    assert torch.allclose(jacobian(conv, u.reshape(-1), (2, 7, 7)) @ theta(conv), conv(u[None]).reshape(-1))


@pytest.fixture(scope="module")
def planted():
    return make_teacher(d=8, h=4, o=3, n=200, seed=1)


def test_explicit_lifted_operator_matches_network(planted):
    P = planted
    U = lifted_operator(P)
    v = torch.kron(P.W1.t().reshape(-1), P.W2.t().reshape(-1))  # vec(W1) (x) vec(W2), column-major
    assert torch.allclose(U @ v, P.Y.reshape(-1), rtol=1e-10, atol=1e-12)
    zero_cols = int((U.abs().sum(0) == 0).sum())
    d, h, o = 8, 4, 3
    assert zero_cols == d * h * h * o - h * d * o  # every cross-unit entry of V is unobserved


def test_solvers_reach_the_planted_optimum(planted):
    P = planted
    W1, W2 = random_starts(8, 4, 3, 4, seed=0)
    ld = local_descent(P, W1, W2, max_steps=4000, tol=1e-12)
    assert max(ld.rel_loss) < 1e-10
    a = als(P, W1, W2, iters=300, tol=1e-12)
    assert max(a.rel_loss) < 1e-10 and max(a.distance) < 1e-4
    ls = lifted_svd(P)
    assert ls.rel_loss[0] < 1e-20 and ls.distance[0] < 1e-10
    full = lifted_svd(P, full=True)  # the literal P3 route: unobserved entries come out zero
    assert full.rel_loss[0] > 1e-3
    s = svp(P, steps=50)
    assert len(s.history[0]) == 50 and math.isfinite(s.rel_loss[0])


def test_recovery_is_up_to_per_unit_scaling(planted):
    P = planted
    a = torch.tensor([2.0, -0.5, 3.0, 0.25], dtype=D)
    W1 = (P.W1 * a[:, None])[None]
    W2 = (P.W2 / a[None, :])[None]
    assert rel_loss(P, W1, W2).item() < 1e-25  # same outputs with the masks fixed
    assert torch.allclose(unit_products(W1, W2), unit_products(P.W1[None], P.W2[None]))


def test_solve_given_support_keeps_each_units_own_support(planted):
    P = planted
    W1, W2 = solve_given_support(P.X, P.M[None], P.Y, tau=0.0)
    assert torch.equal((P.X @ W1[0].t() > 0).double(), P.M)  # no complemented units
    assert rel_loss(P, W1, W2).item() < 1e-20


def test_theorem1_quantities_and_failure(planted):
    U = torch.randn(400, 10, dtype=D)
    r = theorem1(U)
    assert 0 < r["lambda_min_sq_over_m"] <= r["lambda_max_sq_over_m"]
    assert r["holds"] == (r["lambda_min_sq_over_m"] > 0.9 and r["lambda_max_sq_over_m"] < 1.1)
    q, _ = torch.linalg.qr(torch.randn(400, 10, dtype=D))
    assert theorem1(q * math.sqrt(400))["holds"]  # an exact isometry satisfies Eq. 29
    th = theorem1_two_layer(planted, rip_samples=5)
    assert not th["full"]["holds"] and th["full"]["lambda_min_sq_over_m"] == 0.0
    assert th["rip2"]["cross_unit_witness"] == 0.0 and th["rip2"]["delta_hat"] >= 1.0
    assert "Gaussian rank-2" in th["rip2"]["method"]


def test_planted_oracle_succeeds_small():
    out = run_planted(PlantedConfig(d=8, h=4, o=3, n=200, starts=6, max_steps=3000, rounds=10))
    assert out["methods"]["oracle"]["success_rate"] == 1.0
    for m in ("relu", "alternation"):
        assert 0.0 <= out["methods"][m]["success_rate"] <= 1.0


def test_three_layer_runs():
    r = run_three_layer(d=6, h1=4, h2=3, o=2, n=150, starts=3, max_steps=300)
    assert set(r["methods"]) == {"oracle-als", "oracle", "relu"}
    assert all(m["median_final_rel_loss"] >= 0 for m in r["methods"].values())


def test_three_layer_exact_least_squares_given_the_supports_reaches_the_optimum():
    """Each block step is an exact convex solve: the loss never rises, and every start converges."""
    r = run_three_layer(d=8, h1=5, h2=4, o=3, n=300, starts=4, max_steps=1, als_rounds=300, tol=1e-8)
    als = r["methods"]["oracle-als"]
    assert als["successes"] == 4, als["median_final_rel_loss"]
    for c in als["curves"]:
        v = c["values"]
        assert all(b <= a * (1 + 1e-9) + 1e-15 for a, b in zip(v, v[1:]))  # monotone


def test_library_solvers_on_the_planted_problem(planted):
    """SGD and K-FAC (supportnet.solvers) with the teacher's support reach the optimum; each is the
    best of a grid of four."""
    W1, W2 = random_starts(8, 4, 3, 1, seed=0)
    sgd, kfac = torch_solvers(planted, W1, W2, steps=3000, tol=1e-10)
    assert sgd.name.startswith("sgd (lr ") and kfac.name.startswith("kfac (damping ")
    for r in (sgd, kfac):
        assert r.rel_loss[0] < 1e-10 and r.steps_to_tol[0] is not None and r.distance[0] < 1e-3
