"""fit() with ``train.cuda_graphs=true``, on the CPU: the captured step replayed by the emulation
of tests/graph_emulator.py (aten operations recorded once and replayed on the same tensors, no
Python), so that what a CUDA graph freezes is frozen here too. The run must give the eager
run's weights and metrics, in every method and phase. The same on a GPU: test_cuda_graphs.py."""

import contextlib
import csv

import pytest
import torch
from graph_emulator import EmulatedGraph, EmulatedStep

from supportnet import choices, cuda_graphs
from supportnet.config import load_config
from supportnet.errors import ConfigError
from supportnet.train import fit


class Counted(EmulatedStep):
    made: list = []

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.captured: list = []
        Counted.made.append(self)

    def _capture(self, inputs):
        entry = super()._capture(inputs)
        self.captured.append(entry[0])
        return entry


@pytest.fixture
def emulated(monkeypatch):
    """CUDA graphs on the CPU: the emulation, the kernels' torch code, the device form of the guard."""
    monkeypatch.setattr(cuda_graphs, "GraphedStep", Counted)
    monkeypatch.setattr(choices, "CAPTURE_DEVICES", ("cpu",))  # the config's device rule: the emulation's device
    monkeypatch.setenv("SUPPORTNET_KERNELS", "0")  # the C kernels write through numpy: not recorded
    monkeypatch.setenv("SUPPORTNET_LAZY_GUARD", "1")
    Counted.made = []
    return Counted


def _cfg(out, graphs: bool, *sets):
    return load_config(None, ["data.name=synthetic", "train.epochs=3", "model.kwargs={width: 8, hidden: 32}",
                              "train.batch_size=32", "train.stats_every=3", "train.evals_per_epoch=2", f"out={out}",
                              "quiet=true", f"train.cuda_graphs={str(graphs).lower()}", *sets])  # fmt: skip


def _weights(run):
    return torch.load(run / "final.pt", weights_only=True)["state_dict"]


def _metrics(run):
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    drop = {"seconds", "est_seconds"}
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]


METHODS = {
    "sgd": ["support.method=sgd"],
    "b-alt": ["support.method=b-alt", "support.warmup=1"],
    "i-alt stored": ["support.method=i-alt", "support.backend=stored", "support.warmup=1", "support.max_gap=1"],
    "i-alt snapshot": ["support.method=i-alt", "support.backend=snapshot", "support.warmup=1"],
    "b-alt bf16": ["support.method=b-alt", "support.warmup=1", "train.amp=bf16"],
    "i-alt stored, packed rows": ["support.method=i-alt", "support.backend=stored", "support.warmup=1"],
}


@pytest.mark.parametrize("method", METHODS)
def test_captured_fit_gives_the_eager_run(emulated, synthetic, tmp_path, method, monkeypatch):
    if "packed" in method:  # the rows as the GPU's layers read them (PackedMasks), one tensor input
        from supportnet import kernels

        monkeypatch.setattr(kernels, "packed_supports", lambda device: True)
    eager = fit(_cfg(tmp_path / "eager", False, *METHODS[method]), data=synthetic)
    graphs = fit(_cfg(tmp_path / "graphs", True, *METHODS[method]), data=synthetic)
    # per epoch (32 steps): the full batch's two graphs (track on and off), each after 3 eager steps
    assert [(g.eager_calls, len(g.captured)) for g in emulated.made] == [(6, 2)] * 3
    assert [sum(c.replays for c in g.captured) for g in emulated.made] == [24] * 3  # not run by Python
    assert sum(len(g.graphs) for g in emulated.made) == 0  # each epoch's graphs dropped at its end
    opt = torch.load(graphs / "checkpoint.pt", weights_only=True)["optimizer"]
    assert all(type(g["lr"]) is float for g in opt["param_groups"])
    w0, w1 = _weights(eager), _weights(graphs)
    for k in w0:  # the same operations on the same values: the same bits on the CPU
        assert torch.equal(w1[k], w0[k]), k
    m0, m1 = _metrics(eager), _metrics(graphs)
    assert len(m0) == len(m1) == 3 and m0 == m1  # losses, accuracies, active fractions, drift


def test_a_python_float_is_frozen_into_the_replays(emulated, synthetic, tmp_path, monkeypatch):
    """The emulation replays without running the step's Python: a learning rate handed to the
    optimizer as a float (not the device tensor FitStep sets in place) keeps its value at the
    capture, and the weights leave the eager run's, as they would on a GPU."""
    eager = fit(_cfg(tmp_path / "eager", False, "train.epochs=1"), data=synthetic)

    def as_float(opt, lr):
        for g in opt.param_groups:
            g["lr"] = lr

    monkeypatch.setattr(cuda_graphs, "set_lr", as_float)
    graphs = fit(_cfg(tmp_path / "graphs", True, "train.epochs=1"), data=synthetic)
    assert sum(g.replays for g in emulated.made) > 0
    w0, w1 = _weights(eager), _weights(graphs)
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)


def test_a_freed_tensor_read_by_a_replay_is_an_error():
    holder = {"acc": torch.zeros(2)}

    def step(x):
        holder["acc"].add_(x.sum())
        return x.sum()

    g = EmulatedStep(step, warmup=1)
    for _ in range(3):
        g(torch.ones(2))
    assert holder["acc"].tolist() == [6.0, 6.0] and g.replays == 2
    holder["acc"] = torch.zeros(2)  # a tensor the graph writes, replaced behind its back
    with pytest.raises(RuntimeError, match="freed after the capture"):
        g(torch.ones(2))
    assert isinstance(next(iter(g.graphs.values()))[0], EmulatedGraph)


def test_a_host_read_in_the_captured_step_is_refused():
    from graph_emulator import HostReadInCapture

    g = EmulatedStep(lambda x: x * 2 if x.sum().item() > 0 else x, warmup=1)
    g(torch.ones(2))
    with pytest.raises(HostReadInCapture, match="_local_scalar_dense"):
        g(torch.ones(2))


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"step_hook": lambda model, opt: None}, "step hook"),
    ],
)
def test_fit_refuses_what_it_cannot_capture_before_writing(emulated, synthetic, tmp_path, kwargs, words):
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=words):
        fit(_cfg(out, True), data=synthetic, **kwargs)
    assert not out.exists()


def test_fit_refuses_the_host_guard(emulated, synthetic, tmp_path, monkeypatch):
    monkeypatch.delenv("SUPPORTNET_LAZY_GUARD")
    with pytest.raises(ConfigError, match="device form of the divergence guard"):
        fit(_cfg(tmp_path / "run", True), data=synthetic)
    assert not (tmp_path / "run").exists()


def test_dsd_refuses_cuda_graphs_before_its_dense_phase(emulated, synthetic, tmp_path):
    from supportnet.dsd import dsd

    with pytest.raises(ConfigError, match="pruning hook"):
        dsd(_cfg(tmp_path / "dsd", True), data=synthetic)
    assert not (tmp_path / "dsd").exists()


def test_fit_refuses_torchrun_before_joining_a_group(emulated, synthetic, tmp_path, monkeypatch):
    from supportnet import distributed

    for k, v in {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999"}.items():
        monkeypatch.setenv(k, v)

    def joined(device):
        raise AssertionError("a process group was joined before the refusal")

    monkeypatch.setattr(distributed, "setup", joined)
    with pytest.raises(ConfigError, match="not supported under torchrun"):
        fit(_cfg(tmp_path / "run", True), data=synthetic)
    assert not (tmp_path / "run").exists()


def _crash_at(monkeypatch, n: int) -> dict:
    """``faults.hit("step")`` raises KeyboardInterrupt (as a killed run) on its ``n``-th call; counts calls."""
    from supportnet import faults

    calls = {"step": 0}
    real = faults.hit

    def hit(point):
        calls[point] = calls.get(point, 0) + 1
        if point == "step" and calls["step"] == n:
            raise KeyboardInterrupt
        real(point)

    monkeypatch.setattr(faults, "hit", hit)
    return calls


def test_a_run_stopped_mid_epoch_resumes_to_the_eager_weights(emulated, synthetic, tmp_path, monkeypatch):
    """Mid-epoch checkpoints under graphs (the learning rate saved as a float), a crash, a resume."""
    sets = ["support.method=b-alt", "support.warmup=1", "train.checkpoint_steps=10"]
    eager = fit(_cfg(tmp_path / "eager", False, *sets), data=synthetic)
    _crash_at(monkeypatch, 45)  # mid-epoch 2 (of 32 steps each): the checkpoint of step 40 on disk
    with pytest.raises(KeyboardInterrupt):
        fit(_cfg(tmp_path / "graphs", True, *sets), data=synthetic)
    ck = torch.load(tmp_path / "graphs" / "checkpoint.pt", weights_only=True)
    assert (ck["step"], ck["step_in_epoch"]) == (40, 8)
    calls = _crash_at(monkeypatch, -1)
    graphs = fit(_cfg(tmp_path / "graphs", True, *sets), data=synthetic, resume=tmp_path / "graphs")
    assert calls["step"] == 96 - 40  # continued from step 40, not from the start
    w0, w1 = _weights(eager), _weights(graphs)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)


def test_the_learning_rate_is_a_float_again_after_an_error(emulated, synthetic, tmp_path, monkeypatch):
    from supportnet.train import start_run, train_one_epoch

    run = start_run(_cfg(tmp_path / "run", True), data=synthetic)
    try:
        _crash_at(monkeypatch, 10)  # after the graphs were captured and replayed
        with pytest.raises(KeyboardInterrupt):
            train_one_epoch(run, 0, run.start_epoch(0))
        assert emulated.made[0].replays > 0
        assert all(type(g["lr"]) is float for g in run.opt.param_groups)
    finally:
        run.loggers.close()


def test_graphed_step_runs_on_the_inputs_gpu(monkeypatch):
    """``cuda:1`` inputs make cuda:1 the current device for the whole step (the capture too); CPU
    inputs such as indices do not pick it. (On a machine without a GPU: the choice alone.)"""
    from types import SimpleNamespace

    from supportnet.cuda_graphs import GraphedStep

    chosen = []
    monkeypatch.setattr(torch.cuda, "device", lambda d: chosen.append(d) or contextlib.nullcontext())
    cpu_idx = SimpleNamespace(is_cuda=False, device=torch.device("cpu"))
    gpu_x = SimpleNamespace(is_cuda=True, device=torch.device("cuda:1"))
    with GraphedStep._on(None, [cpu_idx, gpu_x]):
        pass
    assert chosen == [torch.device("cuda:1")]
    assert isinstance(GraphedStep._on(None, [cpu_idx]), contextlib.nullcontext)


def test_reset_stats_keeps_the_tensor_a_graph_adds_to():
    from supportnet.layers import HardThreshold

    layer = HardThreshold()
    stats = layer.stats
    stats.add_(3.0)
    layer.reset_stats()
    assert layer.stats is stats and not stats.any()


def test_memory_swapped_under_a_tensor_is_an_error():
    acc = torch.zeros(2)

    def step(x):
        acc.add_(x.sum())
        return x.sum()

    g = EmulatedStep(step, warmup=1)
    for _ in range(2):
        g(torch.ones(2))
    acc.data = torch.zeros(2)  # the same Python object, other memory: a graph keeps the old address
    with pytest.raises(RuntimeError, match="memory was replaced"):
        g(torch.ones(2))


@pytest.mark.parametrize(
    "step, words",
    [
        (lambda x: x * len(x.tolist()), "Tensor.tolist"),
        (lambda x: x[x > 0].sum(), "boolean index"),
        (lambda x: torch.masked_select(x, x > 0).sum(), "masked_select"),
    ],
)
def test_other_host_reads_are_refused(step, words):
    from graph_emulator import HostReadInCapture

    g = EmulatedStep(step, warmup=1)
    g(torch.ones(2))
    with pytest.raises(HostReadInCapture, match=words):
        g(torch.ones(2))
