"""Distributed training on PyTorch's own engine: torchrun + DistributedDataParallel.

``torchrun --nproc_per_node=N -m supportnet train ...`` sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous variables; :func:`setup` reads
them and joins the process group (``gloo`` on CPU, ``nccl`` on GPU). A plain
``supportnet train`` is a world of one and never touches ``torch.distributed``.

Data: ``train.batch_size`` is the *global* batch. Every rank walks the same global
order (:func:`supportnet.data.epoch_order`) and takes its contiguous slice of
each global batch, so N ranks with B/N examples each see exactly the batches
that one process with batch B sees. (I-alternation with the stored back end
instead keeps a fixed shard of examples per rank; see :func:`shard_order`.)

Only rank 0 writes the run folder; metrics are all-reduced; every rank loads the
same checkpoint when resuming.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import ConfigError


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None
    owned: bool = False  # this module started the process group (and so ends it)

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number; launch with torchrun") from None


def setup(device: str) -> DistInfo:
    """Join the process group torchrun described (no-op for a world of one)."""
    world = env_world()
    if world <= 1:
        return DistInfo()
    for k in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if k not in os.environ:
            raise ConfigError(f"WORLD_SIZE={world} but {k} is not set; launch with torchrun --nproc_per_node=N")
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group(backend=backend)
    global _JOINED
    _JOINED = True
    return DistInfo(rank=rank, world=world, local_rank=local, backend=backend, owned=owned)


def teardown(info: DistInfo) -> None:
    if info.active and info.owned and dist.is_initialized():
        dist.barrier()  # every rank's last collective is done before the group goes (gloo aborts otherwise)
        dist.destroy_process_group()


_JOINED = False  # setup() joined a process group in this process (end_process ends it without destructors)


def end_process(code: int) -> int:
    """End a torchrun rank that :func:`setup` joined, with ``code``, once everything is written:
    stdio and logging flushed, then ``os._exit`` (no interpreter teardown, no C++ static
    destructors). A DistributedDataParallel wrapper keeps its process group alive past
    ``destroy_process_group`` (torch 2.13: gloo's threads still run after it, though no Python
    object holds the group), and that group's destruction at exit sometimes aborts the rank
    ("terminate called without an active exception", exit -6) after its work is done, which torchrun
    reports as a failed run: 6 of 60 two-rank runs beside two busy processes on the 2-core machine,
    0 of 60 with this (bench/results/teardown-aborts.json; docs/design.md 17). Returns ``code`` in a
    process that joined no group. The ``supportnet`` command calls it (:func:`supportnet.cli.entry`)."""
    if not _JOINED:
        return code
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can be said there
            pass
    os._exit(code)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks in place (one collective); identity for a world of one."""
    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


GATHER_MAX_WORLD = 8  # sum_stats: gather-then-sum on gloo up to this many ranks


def sum_stats(t: torch.Tensor) -> torch.Tensor:
    """Sum a small statistics vector over ranks (the B-alternation supports' collective).

    Returns the sum (``t`` itself for a world of one). On gloo with up to
    :data:`GATHER_MAX_WORLD` ranks every rank gathers all ranks' vectors (one exchange) and
    adds them in rank order, so every rank gets the same bits. Gloo's ring all-reduce takes
    several exchanges, each a thread wake-up: on the project's 2-core VM a 100-200 KB float64
    all-reduce between 2 pinned ranks often took ~3 ms where the gather took 0.3-0.9 ms
    (``docs/performance.md``). Otherwise (NCCL, or many ranks, where a gather's volume grows with
    the world) one all-reduce in place.
    """
    w = world_size()
    if w == 1:
        return t
    if dist.get_backend() == "gloo" and w <= GATHER_MAX_WORLD:
        flat = t.reshape(-1)
        out = flat.new_empty(w * flat.numel())
        dist.all_gather_into_tensor(out, flat)
        return out.view(w, -1).sum(0).view_as(t)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def local_slice(n: int, info: DistInfo) -> slice:
    """This rank's contiguous part of a global batch of ``n`` examples."""
    if not info.active:
        return slice(0, n)
    per = -(-n // info.world)
    return slice(min(n, info.rank * per), min(n, (info.rank + 1) * per))


def shard_order(order: torch.Tensor, info: DistInfo, n: int) -> torch.Tensor:
    """The global ``order`` restricted to this rank's fixed shard ``{i : i % world == rank}``,
    cut to the same length on every rank (so every rank takes the same number of steps)."""
    mine = order[order % info.world == info.rank]
    return mine[: n // info.world]


def wrap(model: torch.nn.Module, info: DistInfo, device: torch.device) -> torch.nn.Module:
    """The module the forward pass calls: ``model`` under DistributedDataParallel when a
    process group is joined, else ``model`` itself."""
    if not info.active:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP  # (its import is slow; torchrun only)

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def check_batch(batch_size: int, info: DistInfo) -> None:
    if info.active and batch_size % info.world:
        raise ConfigError(
            f"train.batch_size={batch_size} (the global batch) does not divide among "
            f"{info.world} processes; use a multiple of {info.world}"
        )
