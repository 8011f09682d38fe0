"""A CPU stand-in for CUDA graph capture, so that fit()'s captured step is tested without a GPU.

A CUDA graph records the kernels a step launched and replays them on the same memory, without
running any Python. :class:`EmulatedStep` does the same with the aten operations: capture runs
the step once under a dispatch mode that records every operation with its arguments and
results; replay runs the recorded operations again on those very tensors (the results copied
into the tensors the capture produced), and no Python of the step. So, as on a GPU:

* a Python decision taken at capture (a layer's ``track`` flag, the learning rate as a float,
  a mask set as an attribute) is frozen; only device tensors changed in place reach a replay;
* a host read inside the step is refused at capture, as CUDA refuses a synchronisation while a
  stream captures: the aten operations that read a value or a data-dependent size on the host
  (``HOST_READS``, boolean indexing) and ``Tensor.tolist``/``numpy``/``cpu``/``__array__``;
* a tensor the graph reads that was made before the capture and has been freed since, or whose
  memory was swapped under it (``.data =``, ``set_``, ``resize_``), is an error at replay (a real
  graph would read or write memory that another tensor now owns); the emulation holds such
  tensors weakly, as the GPU allocator does not keep them alive, and checks their address.

Not seen: host reads that are no-ops on the CPU (``.to("cpu")``) or happen below the recorded
operation (``y[mask] = v``: ``index_put_``'s own ``nonzero``); ``Tensor.tolist``/``cpu`` are refused
in the whole process during a capture, for any tensor.

Random operations draw new numbers on each replay (a CUDA graph replays its own philox
offsets): use models without dropout. Operations that do not dispatch through aten (numpy, the
C kernels) are not recorded: run with ``SUPPORTNET_KERNELS=0``, as a GPU graph would not hold
host work either.
"""

from __future__ import annotations

import contextlib
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from supportnet.cuda_graphs import GraphedStep

HOST_READS = {"_local_scalar_dense", "item", "is_nonzero", "nonzero", "equal", "masked_select", "_unique2",
              "unique_dim", "unique_consecutive", "bincount"}  # fmt: skip
TENSOR_READS = ("tolist", "numpy", "cpu", "__array__")


def _host_read(func, args) -> str | None:
    name = func.__name__.split(".")[0]
    if name in HOST_READS or func.__name__ == "repeat_interleave.Tensor":
        return str(func)
    if name == "index" and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1]):
        return f"{func} with a boolean index"
    return None


class HostReadInCapture(RuntimeError):
    pass


class _Ref:
    """A tensor as the recording names it (a leaf to pytree)."""

    def __init__(self, kind: str, value) -> None:
        self.kind, self.value = kind, value


class _Recorder(TorchDispatchMode):
    """Records each aten operation with its tensors named: ``("slot", k)`` for the k-th result some
    recorded operation produced, ``("ext", weakref)`` for a tensor made before the capture,
    ``("const", t)`` for a constant the step made on the host (``torch.tensor(2.0)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list = []
        self.slots: dict[int, int] = {}  # id of a produced tensor -> its slot
        self.pool: dict[int, torch.Tensor] = {}  # slot -> tensor, for results that own their memory
        self.held: list = []  # every tensor seen, alive until the capture ends (so ids stay unique)

    def _name(self, t, const: bool):
        if not isinstance(t, torch.Tensor):
            return t
        if id(t) in self.slots:
            return _Ref("slot", self.slots[id(t)])
        return _Ref("const", t) if const else _Ref("ext", (weakref.ref(t), t.data_ptr()))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "profiler":
            return func(*args, **kwargs)
        what = _host_read(func, args)
        if what:
            raise HostReadInCapture(f"{what} reads a device value on the host inside the captured step")
        out = func(*args, **kwargs)
        self.held.append((args, kwargs, out))
        const = func.__name__.startswith("lift_fresh")
        named = (tree_map(lambda t: self._name(t, const), args), tree_map(lambda t: self._name(t, const), kwargs))
        outs = []
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                k = self.slots[id(t)] = len(self.held) * 64 + len(outs)  # unique per result
                if not _aliases(func):
                    self.pool[k] = t  # owns its memory: the graph's pool keeps it
                outs.append(k)
            else:
                outs.append(None)
        self.ops.append((func, *named, outs))
        return out


def _aliases(func) -> bool:
    """In-place, out= and view operations: their results are their arguments' memory."""
    return any(r.alias_info is not None for r in func._schema.returns) or not func._schema.returns


class EmulatedGraph:
    def __init__(self, rec: _Recorder):
        self.ops, self.pool = rec.ops, rec.pool
        self.ran = True  # recording ran the step once: GraphedStep's replay right after the capture is it
        self.replays = 0  # replays proper (the step not run by Python)

    def _value(self, env: dict, ref):
        if not isinstance(ref, _Ref):
            return ref
        kind, v = ref.kind, ref.value
        if kind == "slot":
            return env[v]
        if kind == "const":
            return v
        t = v[0]()
        if t is None:
            raise RuntimeError("the graph reads a tensor that was freed after the capture (a CUDA graph "
                               "would read memory another tensor owns)")  # fmt: skip
        if t.data_ptr() != v[1]:
            raise RuntimeError("the graph reads a tensor whose memory was replaced after the capture (a CUDA "
                               "graph would still use the old address)")  # fmt: skip
        return t

    def replay(self) -> None:
        if self.ran:
            self.ran = False
            return
        self.replays += 1
        env: dict[int, torch.Tensor] = {}
        with torch.no_grad():
            for func, args, kwargs, outs in self.ops:
                a = tree_map(lambda r: self._value(env, r), args)
                kw = tree_map(lambda r: self._value(env, r), kwargs)
                new = tree_flatten(func(*a, **kw))[0]
                for k, n in zip(outs, new):
                    if k is None:
                        continue
                    if k in self.pool:  # the captured memory gets the new values, as a graph's would
                        self.pool[k].detach().copy_(n)
                        env[k] = self.pool[k]
                    else:
                        env[k] = n


@contextlib.contextmanager
def _no_tensor_reads():
    """``Tensor.tolist()`` and friends raise while the step is captured."""
    saved = {name: getattr(torch.Tensor, name) for name in TENSOR_READS}

    def refuse(name):
        def read(self, *a, **k):
            raise HostReadInCapture(f"Tensor.{name} reads a device value on the host inside the captured step")

        return read

    for name in TENSOR_READS:
        setattr(torch.Tensor, name, refuse(name))
    try:
        yield
    finally:
        for name, f in saved.items():
            setattr(torch.Tensor, name, f)


class EmulatedStep(GraphedStep):
    """:class:`~supportnet.cuda_graphs.GraphedStep` with :class:`EmulatedGraph` on the CPU."""

    captured = 0

    def _check_device(self) -> None:
        pass

    def _on(self, inputs):
        return contextlib.nullcontext()

    def _eager(self, inputs):
        self.eager_calls += 1
        return self.step(*inputs)

    def _capture(self, inputs):
        static = [t.detach().clone() for t in inputs]
        rec = _Recorder()
        with rec, _no_tensor_reads():
            out = self.step(*static)
        EmulatedStep.captured += 1
        return EmulatedGraph(rec), static, out
