"""Planted-teacher experiments: is the global optimum found given the support?

A random two-layer teacher with positive hard-threshold units (Eq. 9) labels
Gaussian inputs. From the same random starts we compare

(a) ``oracle``: local descent on the factors with the teacher's support fixed
    (the setting of Theorem 1);
(b) ``relu``: plain gradient descent through the threshold, no support given;
(c) ``alternation``: estimate the support from the current weights, solve the
    weights given it (ALS), repeat.

Success: relative loss below ``tol`` (1e-8) or recovery of the teacher's per-unit
products to relative distance below 1e-6. Three-layer teachers get the oracle
descent, plain descent, and exact per-layer least squares given both supports
(``oracle-als``: the output is linear in each layer's weights given the others and
the supports, so each block step is a convex least-squares solve); the paper's
"analogously by using multi-dimensional tensors" claim has no proof, so we only
report what happens.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from ..solvers import KFAC
from .recovery import (
    DT,
    SolveResult,
    TwoLayerProblem,
    als,
    armijo_descent,
    distance,
    lifted_svd,
    local_descent,
    random_starts,
    solve_given_support,
    svp,
    theorem1_two_layer,
    two_layer_grad,
)


def pht(q: torch.Tensor, tau: float) -> torch.Tensor:
    return torch.where(q > tau, q, 0.0)


def make_teacher(
    d: int = 20, h: int = 10, o: int = 5, n: int = 500, tau: float = 0.0, seed: int = 0
) -> TwoLayerProblem:
    g = torch.Generator().manual_seed(10_000 + seed)
    W1 = torch.randn(h, d, generator=g, dtype=DT) / math.sqrt(d)
    W2 = torch.randn(o, h, generator=g, dtype=DT) / math.sqrt(h)
    X = torch.randn(n, d, generator=g, dtype=DT)
    Q = X @ W1.t()
    M = (Q > tau).to(DT)
    Y = pht(Q, tau) @ W2.t()
    return TwoLayerProblem(X, M, Y, W1, W2, tau)


def relu_descent(P: TwoLayerProblem, W1, W2, max_steps: int = 3000, tol: float = 1e-10):
    """(b): gradient descent through the threshold (support follows the weights)."""
    ynorm = (P.Y**2).sum()

    def f(ps):
        H = pht(torch.matmul(P.X, ps[0].transpose(1, 2)), P.tau)
        return ((torch.matmul(H, ps[1].transpose(1, 2)) - P.Y) ** 2).sum((1, 2)) / ynorm

    (A, B), hist, st, ss = armijo_descent(
        [W1, W2], f, max_steps, tol, grad_fn=lambda ps: two_layer_grad(P.X, P.Y, ps[0], ps[1], tau=P.tau)
    )
    return A, B, hist, st, ss, f([A, B]).tolist()


def free_loss(P: TwoLayerProblem, W1, W2) -> torch.Tensor:
    H = pht(torch.matmul(P.X, W1.transpose(1, 2)), P.tau)
    return ((torch.matmul(H, W2.transpose(1, 2)) - P.Y) ** 2).sum((1, 2)) / (P.Y**2).sum()


def alternation(P: TwoLayerProblem, W1, W2, rounds: int = 30, tol: float = 1e-10):
    """(c): support from the current weights, then the weights given that support, repeat.

    The weight step is solved exactly in the lifted per-unit variables (least
    squares, batched over starts), then factored by per-unit rank-one SVD (Eq. 28);
    see :func:`~supportnet.theory.recovery.solve_given_support`.
    """
    S = W1.shape[0]
    rows = []
    st: list[int | None] = [None] * S
    ss: list[float | None] = [None] * S
    active = torch.ones(S, dtype=torch.bool)
    t0 = time.perf_counter()
    for r in range(1, rounds + 1):
        M = (torch.einsum("nd,shd->snh", P.X, W1) > P.tau).to(DT)  # (S, N, h): each start's own support
        A, B = solve_given_support(P.X, M, P.Y, P.tau)
        keep = active.view(-1, 1, 1)
        W1, W2 = torch.where(keep, A, W1), torch.where(keep, B, W2)
        f = free_loss(P, W1, W2)
        rows.append(torch.where(active, f, torch.nan))
        newly = active & (f < tol)
        for s in torch.nonzero(newly).flatten().tolist():
            st[s], ss[s] = r, time.perf_counter() - t0
        active &= ~newly
        if not active.any():
            break
    hist = [[v for v in row.tolist() if v == v] for row in torch.stack(rows, 1)]
    return W1, W2, hist, st, ss, free_loss(P, W1, W2).tolist()


@dataclass
class PlantedConfig:
    d: int = 20
    h: int = 10
    o: int = 5
    n: int = 500
    tau: float = 0.0
    starts: int = 50
    seed: int = 0
    max_steps: int = 3000
    tol: float = 1e-8  # success threshold on the relative loss
    rounds: int = 30


def _summ(name, rel, dist, tol, hist) -> dict:
    """Success counts and iterations to the success threshold (read off each start's history)."""
    S = len(rel)
    ok = [(r < tol) or (d is not None and d < 1e-6) for r, d in zip(rel, dist or [None] * S)]
    its = [next((i for i, v in enumerate(h) if v < tol), None) for h in hist]
    st = sorted(i for i, k in zip(its, ok) if k and i is not None)
    return {
        "method": name,
        "starts": S,
        "successes": sum(ok),
        "success_rate": sum(ok) / S,
        "median_iterations_to_success": st[len(st) // 2] if st else None,
        "max_iterations_to_success": st[-1] if st else None,
        "median_final_rel_loss": sorted(rel)[S // 2],
        "curves": [{"every": max(1, len(h) // 200), "values": h[:: max(1, len(h) // 200)]} for h in hist[:10]],
    }


def run_planted(cfg: PlantedConfig, progress=None) -> dict:
    """One planted problem, ``cfg.starts`` shared random starts, methods (a)-(c)."""
    P = make_teacher(cfg.d, cfg.h, cfg.o, cfg.n, cfg.tau, cfg.seed)
    W1, W2 = random_starts(cfg.d, cfg.h, cfg.o, cfg.starts, cfg.seed)
    out = {
        "problem": {
            "d": cfg.d,
            "h": cfg.h,
            "o": cfg.o,
            "n": cfg.n,
            "tau": cfg.tau,
            "seed": cfg.seed,
            "size_ratio": cfg.n * cfg.o / (cfg.h * cfg.d * cfg.o),
            "size_ratio_meaning": "measurements N*o over identifiable unknowns h*d*o",
        },
        "methods": {},
    }
    stop = cfg.tol * 1e-2  # run past the success threshold to see where descent ends
    t = time.perf_counter()
    r = local_descent(P, W1, W2, cfg.max_steps, stop)
    out["methods"]["oracle"] = _summ("oracle", r.rel_loss, r.distance, cfg.tol, r.history)
    out["methods"]["oracle"]["seconds"] = time.perf_counter() - t
    if progress:
        progress("oracle")
    t = time.perf_counter()
    A, B, hist, st, ss, rel = relu_descent(P, W1, W2, cfg.max_steps, stop)
    out["methods"]["relu"] = _summ("relu", rel, distance(P, A, B), cfg.tol, hist)
    out["methods"]["relu"]["seconds"] = time.perf_counter() - t
    if progress:
        progress("relu")
    t = time.perf_counter()
    A, B, hist, st, ss, rel = alternation(P, W1.clone(), W2.clone(), cfg.rounds, tol=stop)
    out["methods"]["alternation"] = _summ("alternation", rel, distance(P, A, B), cfg.tol, hist)
    out["methods"]["alternation"]["seconds"] = time.perf_counter() - t
    if progress:
        progress("alternation")
    th = theorem1_two_layer(P, rip_samples=20)
    out["theorem1"] = {
        "literal_holds": th["full"]["holds"],
        "identifiable_holds": th["identifiable"]["holds"],
        "full": th["full"],
        "identifiable": th["identifiable"],
        "rip2_delta_hat": th["rip2"]["delta_hat"],
        "rip2_ratio": {k: th["rip2"][k] for k in ("ratio_min", "ratio_max")},
    }
    return out


def solver_times(cfg: PlantedConfig, tol: float = 1e-10) -> list[dict]:
    """Each two-layer solver on the default planted problem, given the teacher's support."""
    P = make_teacher(cfg.d, cfg.h, cfg.o, cfg.n, cfg.tau, cfg.seed)
    W1, W2 = random_starts(cfg.d, cfg.h, cfg.o, 1, cfg.seed)
    rows = []
    for res in (
        *torch_solvers(P, W1, W2, cfg.max_steps * 3, tol),
        local_descent(P, W1, W2, cfg.max_steps * 3, tol),
        als(P, W1, W2, 500, tol),
        lifted_svd(P),
        lifted_svd(P, full=True),
        svp(P, 3000, tol),
    ):
        rows.append(
            {
                "solver": res.name,
                "final_rel_loss": res.rel_loss[0],
                "iterations_to_tol": res.steps_to_tol[0],
                "seconds_to_tol": res.seconds_to_tol[0],
                "seconds": res.seconds,
                "distance_to_teacher": res.distance[0] if res.distance else None,
            }
        )
    return rows


class _Masked(torch.nn.Module):
    """The two-layer network with a fixed support: ``(X W1^T * M) W2^T`` (float64)."""

    def __init__(self, W1: torch.Tensor, W2: torch.Tensor, M: torch.Tensor):
        super().__init__()
        self.l1 = torch.nn.Linear(W1.shape[1], W1.shape[0], bias=False, dtype=DT)
        self.l2 = torch.nn.Linear(W2.shape[1], W2.shape[0], bias=False, dtype=DT)
        with torch.no_grad():
            self.l1.weight.copy_(W1)
            self.l2.weight.copy_(W2)
        self.register_buffer("M", M)

    def forward(self, x):
        return self.l2(self.l1(x) * self.M)


SGD_LRS = (0.1, 0.3, 1.0, 2.0)  # full-batch SGD (momentum 0.9) on the relative loss: its grid
KFAC_DAMPINGS = (1e-6, 1e-4, 1e-2, 1.0)  # full-batch K-FAC (momentum 0.9, Armijo from lr 1): a grid of the same size


def _torch_run(name, P, model, opt, steps: int, tol: float, closure_step: bool):
    ynorm = float((P.Y**2).sum())
    hist, t0, hit, hit_s = [], time.perf_counter(), None, None

    def objective():
        return ((model(P.X) - P.Y) ** 2).sum() / ynorm

    for it in range(steps + 1):
        opt.zero_grad()
        loss = objective()
        loss.backward()
        v = float(loss.detach())
        hist.append(v)
        if v < tol or not math.isfinite(v) or it == steps:
            if v < tol:
                hit, hit_s = it, time.perf_counter() - t0
            break
        opt.step(objective, loss=loss.detach()) if closure_step else opt.step()
    W1, W2 = model.l1.weight.detach()[None], model.l2.weight.detach()[None]
    return SolveResult(name, W1, W2, [hist], time.perf_counter() - t0, [hit], [hit_s], [hist[-1]], distance(P, W1, W2))


def torch_solvers(P: TwoLayerProblem, W1, W2, steps: int, tol: float) -> list:
    """The library's weight-phase solvers on the planted problem with the teacher's support fixed:
    full-batch SGD with momentum 0.9, its rate the best of ``SGD_LRS``, and
    :class:`supportnet.solvers.KFAC` (exact factors every step, momentum 0.9, Armijo line search
    from the plain step), its damping the best of ``KFAC_DAMPINGS``: best = the fewest iterations
    to ``tol``, then the lowest loss. Returns the two best runs."""

    def best(runs):
        return min(runs, key=lambda r: (r.steps_to_tol[0] is None, r.steps_to_tol[0] or 0, r.rel_loss[0]))

    sgd, kfac = [], []
    for lr in SGD_LRS:
        m = _Masked(W1[0], W2[0], P.M)
        opt = torch.optim.SGD(m.parameters(), lr, momentum=0.9)
        sgd.append(_torch_run(f"sgd (lr {lr:g})", P, m, opt, steps, tol, False))
    for damping in KFAC_DAMPINGS:
        m = _Masked(W1[0], W2[0], P.M)
        opt = KFAC(m, 1.0, momentum=0.9, damping=damping, update_every=1, ema=1.0, ls_steps=20)
        kfac.append(_torch_run(f"kfac (damping {damping:g})", P, m, opt, steps, tol, True))
    return [best(sgd), best(kfac)]


# -- three layers --------------------------------------------------------------------
def three_layer_als(X, M1, M2, Y, W: list[torch.Tensor], rounds: int = 300, tol: float = 1e-8):
    """Block-coordinate exact least squares on a three-layer network given both hidden supports.

    ``W`` = [W1 (S, h1, d), W2 (S, h2, h1), W3 (S, o, h2)] for S starts. Each round solves W3, then
    W2, then W1 exactly (float64 ``lstsq``) with the other two fixed: given M1 and M2 the output is
    linear in each one, so every block step is a convex problem solved to optimality and the loss
    never rises. Returns each start's final relative loss and its history (one value per round).
    """
    W1, W2, W3 = (w.clone() for w in W)
    S, (n, o) = W1.shape[0], Y.shape
    ynorm = (Y**2).sum()
    Yb = Y.expand(S, n, o)
    hist = []
    for _ in range(rounds):
        z1 = torch.einsum("nd,shd->snh", X, W1) * M1
        z2 = torch.einsum("snh,skh->snk", z1, W2) * M2
        W3 = torch.linalg.lstsq(z2, Yb).solution.transpose(1, 2)
        A = torch.einsum("nk,sok,snj->snokj", M2, W3, z1).reshape(S, n * o, -1)  # d y[n,o] / d W2[k,j]
        W2 = torch.linalg.lstsq(A, Yb.reshape(S, n * o, 1)).solution.reshape(W2.shape)
        B = torch.einsum("nk,sok,skj->snoj", M2, W3, W2) * M1[None, :, None, :]  # through W2 to layer 1
        A = torch.einsum("snoj,ni->snoji", B, X).reshape(S, n * o, -1)  # d y[n,o] / d W1[j,i]
        W1 = torch.linalg.lstsq(A, Yb.reshape(S, n * o, 1)).solution.reshape(W1.shape)
        z2 = torch.einsum("snh,skh->snk", torch.einsum("nd,shd->snh", X, W1) * M1, W2) * M2
        rel = ((torch.einsum("snk,sok->sno", z2, W3) - Y) ** 2).sum((1, 2)) / ynorm
        hist.append(rel)
        if bool((rel < tol).all()):
            break
    H = torch.stack(hist, 1)
    return H[:, -1].tolist(), H.tolist()


def run_three_layer(
    d=20, h1=10, h2=8, o=5, n=800, starts=20, seed=0, max_steps=5000, tol=1e-8, tau=0.0, als_rounds=300
) -> dict:
    """Oracle-support local descent on a planted three-layer teacher (no theory claimed)."""
    g = torch.Generator().manual_seed(20_000 + seed)
    T = [
        torch.randn(h1, d, generator=g, dtype=DT) / math.sqrt(d),
        torch.randn(h2, h1, generator=g, dtype=DT) / math.sqrt(h1),
        torch.randn(o, h2, generator=g, dtype=DT) / math.sqrt(h2),
    ]
    X = torch.randn(n, d, generator=g, dtype=DT)
    Q1 = X @ T[0].t()
    M1 = (Q1 > tau).to(DT)
    Q2 = pht(Q1, tau) @ T[1].t()
    M2 = (Q2 > tau).to(DT)
    Y = pht(Q2, tau) @ T[2].t()
    ynorm = (Y**2).sum()
    gs = torch.Generator().manual_seed(seed)
    W = [torch.randn(starts, *t.shape, generator=gs, dtype=DT) / math.sqrt(t.shape[1]) for t in T]

    def oracle(ps):
        z = torch.einsum("nd,shd->snh", X, ps[0]) * M1
        z = torch.einsum("snh,skh->snk", z, ps[1]) * M2
        return ((torch.einsum("snk,sok->sno", z, ps[2]) - Y) ** 2).sum((1, 2)) / ynorm

    def relu(ps):
        z = pht(torch.einsum("nd,shd->snh", X, ps[0]), tau)
        z = pht(torch.einsum("snh,skh->snk", z, ps[1]), tau)
        return ((torch.einsum("snk,sok->sno", z, ps[2]) - Y) ** 2).sum((1, 2)) / ynorm

    out = {"problem": {"d": d, "h1": h1, "h2": h2, "o": o, "n": n, "tau": tau, "seed": seed}, "methods": {}}
    t = time.perf_counter()
    rel, hist = three_layer_als(X, M1, M2, Y, W, als_rounds, tol)
    out["methods"]["oracle-als"] = _summ("oracle-als", rel, None, tol, hist)
    out["methods"]["oracle-als"]["seconds"] = time.perf_counter() - t
    for name, f in (("oracle", oracle), ("relu", relu)):
        t = time.perf_counter()
        ps, hist, st, ss = armijo_descent(W, f, max_steps, tol * 1e-2)
        rel = f(ps).tolist()
        out["methods"][name] = _summ(name, rel, None, tol, hist)
        out["methods"][name]["seconds"] = time.perf_counter() - t
    return out
