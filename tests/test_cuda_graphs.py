"""supportnet.cuda_graphs: a captured training step gives the eager step's weights, and the
divergence guard and the device-side counters keep working inside the graph (CUDA only; the
CPU test checks the one-line error)."""

import pytest
import torch
import torch.nn.functional as F

from supportnet.errors import ConfigError

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (bash bench/gpu_check.sh)")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error of a machine without CUDA")
def test_needs_cuda():
    from supportnet.cuda_graphs import GraphedStep

    with pytest.raises(ConfigError, match="needs a CUDA device"):
        GraphedStep(lambda x: x)


@pytest.mark.parametrize(
    "sets, words",
    [
        ([], "train.device=cuda"),
        (["train.device=cuda", "train.compile=true"], "train.compile"),
        (["train.device=cuda", "support.method=b-alt", "support.sync=global"], "support.sync=local"),
        (["train.device=cuda", "support.method=b-alt", "support.probe=true"], "support.probe"),
    ],
)
def test_config_refuses_what_cannot_be_captured(sets, words):
    from supportnet.config import load_config

    with pytest.raises(ConfigError, match=words) as e:
        load_config(None, ["train.cuda_graphs=true", *sets])
    assert "drop train.cuda_graphs" in str(e.value)


def _setup(method: str):
    from supportnet.layers import configure
    from supportnet.models import create_model

    torch.manual_seed(0)
    model = create_model("convnet-s", (1, 28, 28), 10, width=8, hidden=32).cuda()
    lr = torch.tensor(0.05, device="cuda")
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, fused=True)
    bad = torch.zeros((), device="cuda")
    opt.found_inf = bad  # the fused step skips its update while set, as train.py's lazy guard
    acc = torch.zeros((), dtype=torch.float64, device="cuda")
    if method == "b-alt":
        configure(model, mode="batch", apply="gated", rule="energy-rel", beta=0.1)

    def step(x, y):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in model.parameters()]
        now = (~torch.isfinite(loss.detach() + torch.stack(torch._foreach_norm(grads)).sum())).float()
        torch.maximum(bad, now, out=bad)
        opt.step()
        acc.add_(loss.detach(), alpha=y.numel())
        return loss

    return model, opt, lr, bad, acc, step


def _batches(n, b=32, partial=20):
    g = torch.Generator().manual_seed(1)
    out = [(torch.randn(b, 1, 28, 28, generator=g), torch.randint(0, 10, (b,), generator=g)) for _ in range(n)]
    out.append((torch.randn(partial, 1, 28, 28, generator=g), torch.randint(0, 10, (partial,), generator=g)))
    return [(x.cuda(), y.cuda()) for x, y in out]


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("method", ["sgd", "b-alt"])
def test_graphed_step_matches_eager(method):
    from supportnet.cuda_graphs import GraphedStep

    data = _batches(8) * 2  # the partial batch twice: eager (warm-up 1), then its own graph
    runs = {}
    for graphed in (False, True):
        model, opt, lr, bad, acc, step = _setup(method)
        run = GraphedStep(step, warmup=1) if graphed else step
        for i, (x, y) in enumerate(data):
            lr.fill_(0.05 * (1 - i / len(data)))  # the schedule changes the device lr in place
            run(x, y)
        torch.cuda.synchronize()
        runs[graphed] = ([p.detach().clone() for p in model.parameters()], acc.item(), bad.item())
        if graphed:
            assert len(run.graphs) == 2 and run.replays == len(data) - 2 and run.eager_calls == 2
    for a, b in zip(runs[False][0], runs[True][0]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert runs[True][1] == pytest.approx(runs[False][1], rel=1e-6)
    assert runs[True][2] == runs[False][2] == 0.0


@cuda
@pytest.mark.gpu
def test_guard_inside_the_graph_skips_updates_from_the_bad_step_on():
    from supportnet.cuda_graphs import GraphedStep

    model, opt, lr, bad, acc, step = _setup("sgd")
    run = GraphedStep(step, warmup=2)
    data = _batches(6)[:-1]
    for x, y in data[:4]:
        run(x, y)
    assert run.replays == 2 and bad.item() == 0.0
    before = [p.detach().clone() for p in model.parameters()]
    x, y = data[4]
    run(torch.full_like(x, float("nan")), y)  # a non-finite step, replayed
    torch.cuda.synchronize()
    assert bad.item() == 1.0
    run(*data[0])  # sticky: later steps are skipped too
    for a, b in zip(before, model.parameters()):
        assert torch.equal(a, b.detach())


FIT_CASES = {
    "sgd": ["support.method=sgd"],
    "b-alt bf16": ["support.method=b-alt", "train.amp=bf16", "train.channels_last=true", "train.loader=device"],
    "i-alt stored bf16": ["support.method=i-alt", "support.backend=stored", "train.amp=bf16",
                          "train.channels_last=true", "train.loader=device"],
}  # fmt: skip


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("case", FIT_CASES)
def test_fit_with_cuda_graphs_matches_eager(synthetic, tmp_path, case, monkeypatch):
    """fit() with train.cuda_graphs=true on a GPU: graphs captured and replayed, and the eager
    run's weights (to the GPU's run-to-run tolerance: atomics in the convolutions' backward) and
    accuracy. The CPU emulation of the same, to the bit: test_fit_graphs.py."""
    import json

    from supportnet import cuda_graphs
    from supportnet.config import load_config
    from supportnet.train import fit

    made = []

    class Spy(cuda_graphs.GraphedStep):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)

    monkeypatch.setattr(cuda_graphs, "GraphedStep", Spy)
    runs = {}
    for graphs in (False, True):
        cfg = load_config(None, ["data.name=synthetic", "train.epochs=2", "train.batch_size=32",
                                 "model.kwargs={width: 8, hidden: 32}", "train.device=cuda", "train.stats_every=3",
                                 "support.warmup=1", *FIT_CASES[case], f"out={tmp_path / str(graphs)}",
                                 f"train.cuda_graphs={str(graphs).lower()}", "quiet=true"])  # fmt: skip
        run = fit(cfg, data=synthetic)
        runs[graphs] = (torch.load(run / "final.pt", weights_only=True)["state_dict"],
                        json.loads((run / "summary.json").read_text()))  # fmt: skip
    assert len(made) == 2 and all(g.replays >= 20 for g in made)  # of 32 steps an epoch, 6 eager
    for k, w in runs[False][0].items():
        torch.testing.assert_close(runs[True][0][k].float(), w.float(), rtol=1e-3, atol=1e-4, msg=k)
    assert runs[True][1]["test_acc"] == pytest.approx(runs[False][1]["test_acc"], abs=0.02)
