"""Training schedules: SGD, B-alternation and I-alternation (paper Sec. 4.1-4.2).

Each schedule is a small controller that a training loop consults at three
points: the start of an epoch (which phase? re-estimate the support?), each
step (hand the layers their support) and the end of an epoch (has the loss
plateaued?). :func:`fit` is one loop that does so; a user's own loop does the
same in a few lines (docs/own-loop.md)::

    alt = supportnet.alternation("i-alt", model, train_set, backend="stored")
    for epoch in range(epochs):
        alt.start_epoch(epoch)
        for x, y, idx in loader:                 # idx: the examples' indices in train_set
            with alt.step(idx, x):               # fixes the supports for this batch
                loss = F.cross_entropy(model(x), y) + alt.penalty()
            ...                                  # backward, optimizer step, as usual
        alt.end_epoch(mean_loss)

* ``sgd``: every epoch free.
* ``b-alt``: ``warmup`` free epochs, then every step computes one support for
  the mini-batch from its own activations (Eq. 39-41) and trains under it.
* ``i-alt``: ``warmup`` free epochs, then rounds. A round estimates every
  example's support with the weights at its start, then trains the weights
  with those supports fixed until the training loss plateaus (relative drop
  below ``plateau_tol`` for ``patience`` epochs), between ``min_gap`` and
  ``max_gap`` epochs (the paper used gaps of 4 to 50).

Two interchangeable I-alternation back ends:

* ``stored``: one pass over the training set writes every support, bit-packed,
  into a :class:`~supportnet.masks.MaskStore` (memory or memory-mapped file).
* ``snapshot``: a frozen copy of the weights from the start of the round
  recomputes the support of each batch; no storage, one extra forward a step.

Supports are estimated in eval mode (dropout off), so without augmentation
both back ends give the same masks, bit for bit.

Over 500 lines: the three schedules are one protocol (:class:`Schedule`: ``start_epoch``,
``step``, ``end_epoch``, ``state_dict``) that the loop and a user's own loop call, and most of
the module is :class:`IAlternation` alone (about 300 lines): its two back ends share one round
(estimate, hold, plateau test, re-estimate) and one resumable state, so they are not split
apart. The bit packing is :mod:`supportnet.bits` and the store :mod:`supportnet.masks`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import faults, kernels
from .bits import PackedMasks, _popcount, fits_on_device, pack_masks
from .choices import METHODS
from .config import METHOD_DEFAULTS, SupportConfig, eval_batch_for
from .data import Split, batches
from .data.adapters import as_split, first_input
from .data.augment import crop_flip
from .errors import ConfigError
from .layers import configure, record_masks, record_rows, set_instance_masks, support_penalty, threshold_layers
from .masks import MaskStore, RowWriter

log = logging.getLogger("supportnet")
PROBE_SIZE = 4096  # examples used to measure support change for the snapshot back end


@dataclass
class EpochEvent:
    """What :meth:`Schedule.start_epoch` did, for the loop to log.

    ``phase``: ``warmup``, ``sgd``, ``b-alt`` or ``i-alt``; ``round``: support estimations so
    far; ``reestimated``: whether this epoch started a new round; ``mask_change``: the fraction
    of mask bits that changed since the previous support (NaN if none); ``est_seconds``: time
    spent estimating.
    """

    phase: str
    round: int = 0
    reestimated: bool = False
    mask_change: float = float("nan")
    est_seconds: float = 0.0

    def to_dict(self) -> dict:
        """The event as a plain dict (a mid-epoch checkpoint stores it)."""
        return dataclasses.asdict(self)


class Schedule:
    """Base controller: plain SGD (every epoch free).

    The hooks, in the order a loop calls them: :meth:`start_epoch`, then for every batch
    :meth:`step` (a context manager around the forward pass; or :meth:`before_step`),
    :meth:`penalty` added to the loss, and :meth:`end_epoch` with the epoch's mean loss.
    ``lr_factor`` is the learning-rate multiplier of the current phase (``support.lr_scale``
    while a support is held fixed). :meth:`state_dict` / :meth:`load_state_dict` resume it.
    """

    name = "sgd"

    def __init__(
        self,
        cfg: SupportConfig,
        model: nn.Module,
        train: Split,
        device: torch.device,
        run_dir: Path | None = None,
        eval_batch_size: int | None = None,
        augment_seed: int | None = None,
    ):
        self.cfg, self.model, self.train, self.device = cfg, model, train, device
        self.augment_seed = augment_seed  # not None: the loader augments; views are keyed by view_key()
        self.run_dir, self.eval_batch_size = run_dir, eval_batch_for(eval_batch_size, device)
        self.phase = "sgd"
        self.round = 0
        self.lr_factor = 1.0
        consistency = cfg.consistency if cfg.consistency is not None else METHOD_DEFAULTS[cfg.method]["consistency"]
        configure(
            model,
            apply=cfg.apply,
            rule=cfg.rule,
            beta=cfg.beta,
            tau=cfg.tau,
            mode="free",
            consistency=consistency,
            strict=False,  # plain SGD may train a model without threshold layers
        )

    def start_epoch(self, epoch: int) -> EpochEvent:
        """Called before epoch ``epoch`` (0-based): sets the layers' modes for the epoch's phase
        and, when a round starts, re-estimates the supports. Returns what it did."""
        configure(self.model, mode="free", strict=False)
        return EpochEvent(self.phase, self.round)

    def resume_epoch(self, epoch: int) -> None:
        """Re-enter epoch ``epoch`` part-way (after a resume): set the layers' modes as
        :meth:`start_epoch` did, without estimating anything."""
        self.start_epoch(epoch)

    def before_step(self, x: torch.Tensor | None, index: torch.Tensor | None) -> None:
        """Called before each training forward pass on the batch ``x`` whose examples have the
        indices ``index`` in the training set (I-alternation's stored supports are looked up by
        index; the snapshot back end needs ``x``)."""

    def step_masks(self, x: torch.Tensor | None, index: torch.Tensor | None):
        """The fixed per-example supports :meth:`before_step` would hand the layers for this batch,
        returned instead (a captured step takes them as an input: :mod:`supportnet.cuda_graphs`);
        None when the phase has none."""
        return None

    @contextmanager
    def step(self, index: torch.Tensor | None = None, x: torch.Tensor | None = None) -> Iterator[None]:
        """Fix the supports for one batch: ``with alt.step(idx, x): loss = ...``.

        ``index``: the batch's example indices in the training set (I-alternation, stored
        back end); ``x``: the batch itself (I-alternation, snapshot back end). In a warm-up
        epoch, and for SGD and B-alternation, the step needs neither. When the block exits,
        errors included, the layers get back the modes and supports they had before it, so a
        forward outside the block never runs under this batch's supports."""
        saved = [(lay, lay.mode, lay.instance_mask, lay.given_batch_mask) for _, lay in threshold_layers(self.model)]
        self.before_step(x, index)
        try:
            yield
        finally:
            for lay, mode, instance, given in saved:
                lay.mode, lay.instance_mask, lay.given_batch_mask = mode, instance, given

    def penalty(self) -> torch.Tensor | float:
        """The support-consistency penalty of the last forward pass, to add to its loss
        (0 when the phase has none); see :func:`supportnet.layers.support_penalty`."""
        return support_penalty(self.model)

    def view_key(self, epoch: int) -> int:
        """Key of the augmented views this epoch: a fresh view every epoch."""
        return epoch

    def end_epoch(self, obj_loss: float) -> None:
        """Called after the epoch's training with its mean training-objective loss."""

    def extra_passes(self, ev: EpochEvent, steps: int, batch: int) -> float:
        """Forward passes this epoch makes outside the training steps, in batches of ``batch``
        (an epoch of ``steps`` steps): none for SGD."""
        return 0.0

    def state_dict(self) -> dict:
        """The schedule's state (phase, round, plateau counters, supports' provenance) for a checkpoint."""
        return {"phase": self.phase, "round": self.round}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s state (and, for I-alternation, the current round's supports)."""
        self.phase, self.round = state["phase"], state["round"]


class BAlternation(Schedule):
    """B-alternation: one support per mini-batch (Eq. 39-41).

    ``sync=local`` (default): each threshold layer computes the support from the
    batch's own activations inside the training forward (layer ``l`` sees the
    supports of layers ``< l`` already applied).
    ``sync=global-inline``: the same, but each layer's statistics are summed over all
    ranks inside the forward (one small all-reduce per layer), so N ranks compute
    exactly the supports of one process with the global batch.
    ``sync=global`` (or ``probe=True``): a no-grad probe forward in eval mode first
    collects every layer's per-unit energy and vote counts; under torchrun they
    are summed over all ranks in *one* all-reduce, so the support is the global
    batch's; the training forward then applies those supports.
    """

    name = "b-alt"

    @property
    def probing(self) -> bool:
        return self.cfg.sync == "global" or self.cfg.probe

    def before_step(self, x: torch.Tensor, index: torch.Tensor) -> None:
        if self.phase != "b-alt" or not self.probing:
            return
        from .layers import stats_over_ranks, support_from_stats

        layers = [lay for _, lay in threshold_layers(self.model)]
        was_training = self.model.training
        self.model.eval()
        try:
            configure(self.model, mode="probe")
            with torch.no_grad():
                self.model(x)
        finally:
            self.model.train(was_training)
        stats, n = [lay.probe_stats[0] for lay in layers], layers[0].probe_stats[1]
        if self.cfg.sync == "global":  # one statistic per layer (energy, or votes), all layers in one bucket
            stats, n = stats_over_ranks(stats, n)
        configure(self.model, mode="batch")
        for layer, stat in zip(layers, stats):
            layer.given_batch_mask = support_from_stats(stat, n, layer.rule, layer.beta)
            layer.probe_stats = None

    def extra_passes(self, ev: EpochEvent, steps: int, batch: int) -> float:
        """The probe pass of every step (``sync=global`` or ``probe``) in an alternation epoch."""
        return float(steps) if ev.phase == "b-alt" and self.probing else 0.0

    def start_epoch(self, epoch: int) -> dict:
        if epoch < self.cfg.warmup:
            self.phase, self.lr_factor = "warmup", 1.0
            configure(self.model, mode="free")
        else:
            self.phase, self.lr_factor = "b-alt", self.cfg.lr_scale
            configure(self.model, mode="batch", apply=self.cfg.apply, rule=self.cfg.rule, beta=self.cfg.beta)
            for _, layer in threshold_layers(self.model):
                layer.sync_inline = self.cfg.sync == "global-inline"
        return EpochEvent(self.phase, self.round)


class IAlternation(Schedule):
    """I-alternation: per-example supports re-estimated in rounds (Sec. 4.1)."""

    name = "i-alt"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.store: MaskStore | None = None
        self.snapshot: nn.Module | None = None
        self.round_epochs = 0
        self.below = 0
        self.prev_loss: float | None = None
        self.need_new = True
        self.shapes: list[tuple[int, ...]] | None = None
        self._probe_prev: np.ndarray | None = None  # snapshot back end: last round's probe supports, packed
        self.shard_rank, self.shard_world = 0, 1  # stored back end under torchrun: examples i % world == rank
        self.round_start: dict | None = None  # weights the current supports were estimated from (for resume)
        self.strict = False  # resume: a damaged mask store is an error, not a re-estimation
        self._rows_buf: torch.Tensor | None = None  # CPU: the packed supports of the step (_rows_buffer)
        self._placed: MaskStore | None = None  # the store masks_for last placed (masks.fits_on_device)

    def set_shard(self, rank: int, world: int) -> None:
        """Keep only this rank's masks: examples ``i`` with ``i % world == rank`` (row ``i // world``)."""
        self.shard_rank, self.shard_world = rank, world

    # -- support estimation ----------------------------------------------------
    def store_bits(self) -> int:
        """Support bits per example (every threshold layer's units)."""
        return sum(math.prod(s) for s in self._layer_shapes())

    def _layer_shapes(self) -> list[tuple[int, ...]]:
        if self.shapes is None:
            masks = record_masks(self._eval_model(self.model), first_input(self.train).to(self.device))
            self.model.train()
            self.shapes = [tuple(m.shape[1:]) for m in masks]
        return self.shapes

    @staticmethod
    def _eval_model(model: nn.Module) -> nn.Module:
        return model.eval()

    def estimate_store(self, model: nn.Module | None = None, previous: MaskStore | None = None) -> MaskStore:
        """One pass over the training set in eval mode, writing every support (bit-packed).

        On CUDA each batch's packed rows reach the host while the next batch runs
        (:class:`~supportnet.masks.RowWriter`). With ``previous``, the store's ``changed``
        is the fraction of bits that differ from it (counted as the rows arrive)."""
        model = model if model is not None else self.model
        shapes = self._layer_shapes()
        path = None
        if self.cfg.store == "file" and self.run_dir is not None:
            path = self.run_dir / f"masks-round{self.round:03d}.smask"
        w = self.shard_world
        if w > 1 and path is not None:
            path = path.with_name(f"masks-round{self.round:03d}-rank{self.shard_rank}.smask")
        mine = torch.arange(self.shard_rank, len(self.train), w) if w > 1 else None
        store = MaskStore(len(self.train) if mine is None else len(mine), shapes, path=path)
        was_training = model.training
        model.eval()
        n_batches = -(-(len(self.train) if mine is None else len(mine)) // self.eval_batch_size)
        same = previous is not None and (previous.n, previous.shapes) == (store.n, store.shapes)
        writer = RowWriter(store, self.device, previous if same else None)
        packed = self._record_packed()
        try:
            with torch.inference_mode():  # (no autograd bookkeeping at all: 4% of the pass on the 2-core CPU)
                for b, (x, idx) in enumerate(self._estimation_batches(mine)):
                    if self.augment_seed is not None:  # the exact view training will see this round
                        x = crop_flip(x, idx, self.augment_seed, self.view_key(-1))
                    x = x.to(self.device, non_blocking=True)
                    rows_idx = idx // w if w > 1 else idx
                    if packed:
                        writer.put_rows(rows_idx, record_rows(model, x, shapes).numpy())
                    else:
                        writer.put(rows_idx, record_masks(model, x))
                    if b == n_batches // 2:
                        faults.hit("estimate")
                writer.close()
        except BaseException:
            store.discard()
            raise
        finally:
            model.train(was_training)
        store.changed = writer.diff / (store.n * store.bits) if same else float("nan")
        return store.finalize()

    def _estimation_batches(self, mine: torch.Tensor | None):
        """``(x, index)`` of the estimation pass. The whole set in storage order is sliced, not
        gathered (``batches`` copies each batch by index: 6% of the pass on the 2-core CPU)."""
        if mine is not None or hasattr(self.train, "loader"):
            yield from ((x, idx) for x, _, idx in batches(self.train, self.eval_batch_size, mine))
            return
        bs, n = self.eval_batch_size, len(self.train)
        for i in range(0, n, bs):
            yield self.train.x[i : i + bs], torch.arange(i, min(n, i + bs))

    def _probe_masks(self, model: nn.Module) -> np.ndarray:
        """The supports of the first :data:`PROBE_SIZE` examples, bit-packed (1 bit per activation:
        unpacked, 4096 examples of convnet-s's 40,896 units held 167 MB between rounds)."""
        n = min(PROBE_SIZE, len(self.train))
        model.eval()
        out = []
        for x, _, _ in batches(self.train, self.eval_batch_size, torch.arange(n)):
            x = x.to(self.device)
            out.append(
                record_rows(model, x, self._layer_shapes()).numpy()
                if self._record_packed()
                else pack_masks(record_masks(model, x))
            )
        return np.concatenate(out)

    def reestimate(self) -> dict:
        """Estimate every example's support with the current weights (a new round); returns the
        fraction of mask bits that changed (``mask_change``) and the time taken (``est_seconds``)."""
        t0 = time.perf_counter()
        change = float("nan")
        self.round_start = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if self.cfg.backend == "stored":
            old = self.store
            if old is not None:  # its copy on a GPU, if any, is not needed for the estimation
                old.drop_device_copy()
                self._placed = None
            self.store = self.estimate_store(previous=old)
            if old is not None:
                change = self.store.changed
                old_path = old.path
                del old
                if old_path is not None and old_path != self.store.path:
                    old_path.unlink(missing_ok=True)
        else:
            old_snap = self.snapshot
            snap = copy.deepcopy(self.model).eval()
            for p in snap.parameters():
                p.requires_grad_(False)
            probe = self._probe_masks(snap)
            if old_snap is not None:  # the old snapshot's probe masks were computed last round
                change = _popcount(np.bitwise_xor(self._probe_prev, probe)) / (probe.shape[0] * self.store_bits())
            self.snapshot, self._probe_prev = snap, probe
        self.model.train()
        return {"mask_change": change, "est_seconds": time.perf_counter() - t0}

    # -- controller hooks ------------------------------------------------------
    def start_epoch(self, epoch: int) -> EpochEvent:
        if epoch < self.cfg.warmup:
            self.phase, self.lr_factor = "warmup", 1.0
            configure(self.model, mode="free")
            return EpochEvent("warmup", self.round)
        self.phase, self.lr_factor = "i-alt", self.cfg.lr_scale
        ev = EpochEvent(self.phase, self.round)
        if self.need_new:  # a new round: estimate every example's support with the current weights
            self.round += 1
            ev = EpochEvent(self.phase, self.round, reestimated=True, **self.reestimate())
            self.need_new = False
            self.round_epochs = 0
            self.below = 0
        configure(self.model, mode="instance", apply=self.cfg.apply)
        return ev

    def extra_passes(self, ev: EpochEvent, steps: int, batch: int) -> float:
        """A re-estimation's pass over the training set (stored), or over the probe examples and
        then the frozen snapshot's forward of every step (snapshot)."""
        if ev.phase != "i-alt":
            return 0.0
        if self.cfg.backend == "stored":
            return len(self.train) / batch if ev.reestimated else 0.0
        return steps + (min(PROBE_SIZE, len(self.train)) / batch if ev.reestimated else 0.0)

    def view_key(self, epoch: int) -> int:
        """Stored supports need one fixed view per example for the whole round."""
        if self.phase == "i-alt" and self.cfg.backend == "stored":
            return 1_000_000 + self.round
        return epoch

    def masks_for(self, x: torch.Tensor | None, index: torch.Tensor | None, reuse: bool = False):
        """The fixed supports of the batch ``x`` with example indices ``index``: bool masks
        ``(B, *unit)``, one per threshold layer, or, where the fused kernels read them packed
        (:func:`supportnet.kernels.packed_supports`), packed rows (:class:`~supportnet.masks.PackedMasks`):
        the stored back end's on CUDA and the CPU, the snapshot's on the CPU. ``reuse`` (what
        :meth:`before_step` passes): CPU packed rows go into one buffer that the next such call
        overwrites, instead of new memory each step."""
        if self.cfg.backend == "stored":
            assert self.store is not None
            if index is None:
                raise ConfigError("I-alternation with stored supports needs the batch's example indices: alt.step(idx)")
            packed = kernels.packed_supports(self.device)
            if self._placed is not self.store:
                self._place_store()
            reused = reuse and self._record_packed()
            out = self._rows_buffer(len(index), self.store.row_bytes).numpy() if reused else None
            return self.store.read(index // self.shard_world, device=self.device, packed=packed, out=out)
        assert self.snapshot is not None
        if x is None:
            raise ConfigError("I-alternation with the snapshot back end needs the batch: alt.step(idx, x)")
        if self._record_packed():
            shapes = self._layer_shapes()
            rows = self._rows_buffer(x.shape[0], (sum(math.prod(s) for s in shapes) + 7) // 8) if reuse else None
            return PackedMasks(record_rows(self.snapshot, x, shapes, out=rows), shapes)
        return record_masks(self.snapshot, x)

    def _place_store(self) -> None:
        """A new store: on a GPU, copied there when it fits (:func:`~supportnet.masks.fits_on_device`);
        if the copy runs out of memory after all, the rows go through pinned host buffers instead."""
        self._placed = self.store
        if self.store is None or not fits_on_device(self.store.payload_nbytes, self.device):
            return
        try:
            self.store.to_device(self.device)
        except torch.cuda.OutOfMemoryError:
            self.store.drop_device_copy()
            log.info("the mask store (%d bytes) did not fit on %s; its rows are copied each step", self.store.nbytes,
                     self.device)  # fmt: skip

    def _rows_buffer(self, n: int, row_bytes: int) -> torch.Tensor:
        """The CPU buffer each step's packed supports go into (:meth:`before_step`): one, reused, because
        a new one each step that lives until the next step moves the large activation buffers around the
        heap (docs/performance.md). The layers hold the previous step's rows until they get these;
        nothing reads them by then (the CPU kernels do not save the rows for backward)."""
        buf = self._rows_buf
        if buf is None or buf.shape[0] < n or buf.shape[1] != row_bytes:
            buf = self._rows_buf = torch.empty((n, row_bytes), dtype=torch.uint8)
        return buf[:n]

    def _record_packed(self) -> bool:
        """Whether supports are recorded straight into packed rows (the CPU kernels)."""
        return torch.device(self.device).type == "cpu" and kernels.packed_supports(self.device)

    def before_step(self, x: torch.Tensor, index: torch.Tensor) -> None:
        if self.phase == "i-alt":
            set_instance_masks(self.model, self.masks_for(x, index, reuse=True))

    def step_masks(self, x: torch.Tensor | None, index: torch.Tensor | None):
        return self.masks_for(x, index) if self.phase == "i-alt" else None

    def end_epoch(self, obj_loss: float) -> None:
        if self.phase == "i-alt":
            self.round_epochs += 1
            if self.prev_loss is not None and math.isfinite(self.prev_loss) and self.prev_loss != 0:
                rel = (self.prev_loss - obj_loss) / abs(self.prev_loss)
                self.below = self.below + 1 if rel < self.cfg.plateau_tol else 0
            self.need_new = self.round_epochs >= self.cfg.max_gap or (
                self.round_epochs >= self.cfg.min_gap and self.below >= self.cfg.patience
            )
        self.prev_loss = obj_loss

    def state_dict(self) -> dict:
        return {
            "phase": self.phase,
            "round": self.round,
            "round_epochs": self.round_epochs,
            "below": self.below,
            "prev_loss": self.prev_loss,
            "need_new": self.need_new,
            "store_checksum": self.store.checksum if self.store is not None else None,
            "store_path": str(self.store.path) if self.store is not None and self.store.path else None,
            "round_start": self.round_start,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore the counters and rebuild this round's supports: the snapshot from the
        round-start weights, the mask store from its file when it verifies against the
        checksum the checkpoint recorded, else re-estimated from the round-start weights
        (the same masks, bit for bit: the estimation is deterministic)."""
        for k in ("phase", "round", "round_epochs", "below", "prev_loss", "need_new"):
            setattr(self, k, state[k])
        self.round_start = state.get("round_start")
        if self.round_start is None or self.phase != "i-alt":
            return
        frozen = copy.deepcopy(self.model)
        frozen.load_state_dict(self.round_start)
        frozen.eval()
        for p in frozen.parameters():
            p.requires_grad_(False)
        if self.cfg.backend == "snapshot":
            self.snapshot, self._probe_prev = frozen, self._probe_masks(frozen)
            self.model.train()
            return
        want, path = state.get("store_checksum"), state.get("store_path")
        if path and Path(path).is_file():
            import warnings

            from .errors import IntegrityError

            try:
                store = MaskStore.open(path)
                if store.checksum != want:
                    raise IntegrityError(f"mask store {path} is not the one the checkpoint recorded")
                self.store = store
            except IntegrityError as e:
                if self.strict:
                    raise IntegrityError(f"{e}; rerun without --strict to re-estimate the supports") from None
                warnings.warn(f"{e}; re-estimating the supports from the round-start weights", stacklevel=2)
        if self.store is None:
            self.store = self.estimate_store(frozen)
            if want is not None and self.store.checksum != want:
                from .errors import IntegrityError

                raise IntegrityError(
                    "re-estimated supports differ from the ones the checkpoint recorded; the data "
                    "or the code changed since the run started; start a new run"
                )
        self.model.train()

    def resume_epoch(self, epoch: int) -> None:
        if self.phase == "i-alt":
            self.lr_factor = self.cfg.lr_scale
            configure(self.model, mode="instance", apply=self.cfg.apply)
        else:
            self.lr_factor = 1.0
            configure(self.model, mode="free")


SCHEDULES = {cls.name: cls for cls in (Schedule, BAlternation, IAlternation)}
assert tuple(SCHEDULES) == METHODS, "every method in choices.METHODS has one schedule"


def make_schedule(
    cfg: SupportConfig,
    model: nn.Module,
    train,
    device,
    run_dir=None,
    eval_batch_size: int | None = None,
    augment_seed: int | None = None,
) -> Schedule:
    """The schedule of ``cfg.method`` for ``model`` trained on ``train`` (see :func:`alternation`)."""
    if not threshold_layers(model) and cfg.method != "sgd":
        raise ConfigError(
            f"support.method={cfg.method} needs HardThreshold layers and the model has none; "
            f"convert it first: model = supportnet.convert(model)"
        )
    train = as_split(train)
    if cfg.method == "i-alt" and cfg.backend == "stored" and not getattr(train, "deterministic", True):
        raise ConfigError(
            "stored supports need one fixed view per example, and this training set returns a different "
            "view each time an example is read (random transforms); use the snapshot back end "
            "(backend='snapshot', support.backend=snapshot), or drop the random transforms"
        )
    return SCHEDULES[cfg.method](cfg, model, train, device, run_dir, eval_batch_size, augment_seed)


def alternation(
    method: str,
    model: nn.Module,
    train=None,
    *,
    device: torch.device | str | None = None,
    eval_batch_size: int | None = None,
    run_dir: str | Path | None = None,
    **support,
) -> Schedule:
    """A training schedule for a user's own loop: ``"sgd"``, ``"b-alt"`` or ``"i-alt"``.

    ``train``: the training set the loop iterates over, by index: a map-style
    ``torch.utils.data.Dataset`` returning ``(x, y)``, a ``(x, y)`` pair of tensors, or a
    :class:`~supportnet.data.Split`. I-alternation's estimation pass reads it in order, in
    eval mode; B-alternation and SGD do not need it. ``support``: any ``support.*`` config
    key (``backend="stored"``, ``warmup=1``, ``rule="vote"``, ``consistency=0.5``, ...; see
    :class:`~supportnet.config.SupportConfig`); unknown keys and bad values are one-line errors.
    ``device``: where the model lives (default: the device of its first parameter).
    ``eval_batch_size``: the estimation pass's batch (default: 128 on the CPU, 1024 on CUDA).
    ``run_dir``: where a file-backed mask store goes (``store="file"``).

    The same schedule drives :func:`supportnet.fit`; the loop in docs/own-loop.md gives the
    same weights as ``fit`` for the same seed and data order, bit for bit.

    It leaves the process alone: unlike ``fit()`` and the command line, it does not tune the
    C allocator; call :func:`supportnet.tune_allocator` once to opt in (docs/performance.md).
    """
    from .config import from_dict

    cfg = from_dict({"support": {"method": method, **support}}).support
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    if train is None:
        if cfg.method == "i-alt":
            raise ConfigError("i-alt needs the training set (its supports are per example); pass train=...")
        train = Split(torch.zeros(0), torch.zeros(0, dtype=torch.long))
    run_dir = Path(run_dir) if run_dir is not None else None
    return make_schedule(cfg, model, train, torch.device(device), run_dir, eval_batch_size)
