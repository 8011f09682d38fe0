"""``fit(config) -> run folder``: the training loop for every schedule (paper Sec. 4).

The loop reads as the algorithm does::

    run = start_run(cfg, ...)                    # device, DDP, compile, optimizer, resume
    for epoch in range(run.state.epoch, cfg.train.epochs):
        ev = run.start_epoch(epoch)              # warm-up, or alternation: a new round re-estimates the supports
        obj = train_one_epoch(run, epoch, ev)    # SGD steps on the weights, the supports held as the schedule says
        run.sched.end_epoch(obj)                 # has the objective plateaued? (the next round starts then)
        row = evaluate_epoch(run, epoch, ev, obj)  # free-mode test figures: the threshold applies at test time
        log_and_checkpoint(run, row)

Each piece is a plain function over a :class:`Run`; :func:`train_step` is the one training
step that ``bench/overhead.py`` times too. What a schedule does in each phase lives in
:mod:`supportnet.alternation`; a user's own loop drives the same schedules
(docs/own-loop.md).

Run folder::

    config.yaml      the resolved config
    metrics.csv      one row per epoch (see ``METRIC_DOC``); metrics.jsonl and tensorboard/ with train.loggers
    curves.png       loss and error against epochs, re-estimations marked
    checkpoint.pt    latest checkpoint (model, optimizer, schedule state, RNG, metrics)
    final.pt         final weights: {"state_dict", "config", "metrics", "taus", "arch"} (supportnet.export)
    model.safetensors  the same weights, with arch, taus and config in its metadata
    summary.json     final figures, written last: with final.pt it marks the run finished

A finished run is read-only: ``fit(cfg, resume=run)`` (and ``supportnet train --resume``) of
one says so in one line and returns without writing (:func:`open_resume`).

Over 500 lines: the loop, its set-up (:func:`start_run`), its checkpoint and its resume
(:func:`save_run_checkpoint`, :func:`restore`, the RNG state, :func:`open_resume`) are one
unit: a checkpoint holds exactly a :class:`Run`'s state, so what is saved and what is restored
must change together with the loop that fills it, and the resume is bit-exact only while they
do. The schedules (:mod:`supportnet.alternation`), the step (:mod:`supportnet.step`), the
optimizers (:mod:`supportnet.optim`) and the artefacts (:mod:`supportnet.artifacts`) are
already elsewhere.
"""

from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import cuda_graphs, distributed, faults
from .allocator import tune_allocator
from .alternation import EpochEvent, IAlternation, Schedule, make_schedule
from .artifacts import save_final
from .build import build, build_on, seed_everything, to_device  # noqa: F401  (build etc.: re-exported)
from .checkpoint import load_checkpoint, save_checkpoint
from .config import Config, check_same_config, resolve_method_defaults
from .data import DataBundle, Split, batches, epoch_order, num_batches
from .data.adapters import from_datasets
from .data.augment import crop_flip
from .errors import ConfigError
from .guard import DivergenceGuard, lazy_default
from .io import atomic_write_text
from .layers import collect_stats, configure, layer_mode, threshold_layers
from .loggers import Loggers
from .models import count_params
from .optim import lr_at, make_optimizer
from .report import plot_run
from .runfolder import check_run_folder, claim_run_folder, releases_run_folders
from .solvers import solve_head
from .step import evaluate, train_step

log = logging.getLogger("supportnet")

__all__ = [
    "fit", "evaluate", "train_step", "train_one_epoch", "evaluate_epoch", "Run", "start_run", "Resume", "open_resume",
]  # fmt: skip

METRIC_DOC = {
    "epoch": "epochs completed",
    "phase": "warmup | sgd | b-alt | i-alt",
    "round": "I-alternation round (support estimations so far)",
    "lr": "learning rate at the end of the epoch",
    "iterations": "optimizer steps so far",
    "passes": "forward(+backward) passes over a training batch so far: one per step, plus K-FAC's line search, "
    "the support estimation passes and the head solves",
    "seconds": "training wall time so far, support estimation included, evaluation excluded",
    "obj_loss": "mean training loss of the epoch under the schedule's support (the objective)",
    "train_loss / train_acc": "free-mode loss and accuracy on up to train.train_eval_size training examples",
    "test_loss / test_acc / test_err": "free-mode test figures (accuracy and error as fractions)",
    "maskt_acc": "test accuracy with binary masks as activations (the paper's MaskT), if train.maskt",
    "reestimated": "1 if the support was re-estimated at the start of this epoch",
    "mask_change": "fraction of mask bits changed since the previous support (stored: all examples; "
    "snapshot: the first 4096 training examples)",
    "est_seconds": "time spent estimating supports this epoch",
    "active/<layer>": "fraction of active units (sampled every train.stats_every steps)",
    "drift/<layer>": "fraction of units whose free support disagrees with the fixed one",
}


# ----------------------------------------------------------------------------- the run


@dataclass
class RunState:
    """Where a run is: what a checkpoint saves beside the model, optimizer and schedule."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps so far
    seconds: float = 0.0  # training wall time so far (support estimation in, evaluation out)
    rows: list = field(default_factory=list)  # metrics.csv rows
    trace: list = field(default_factory=list)  # test accuracy at evals_per_epoch points per epoch
    resume_step: int = 0  # steps of epoch ``epoch`` already done when resumed mid-epoch
    partial: dict | None = None  # that partial epoch's sums (mid-epoch checkpoint)
    extra_passes: float = 0.0  # forward passes outside the steps, in training batches (estimation, head solves)


@dataclass
class Run:
    """Everything one training run holds: set up by :func:`start_run`, read by the loop's pieces."""

    cfg: Config
    data: DataBundle
    model: nn.Module  # the module whose weights are trained (and saved)
    net: nn.Module  # what the forward pass calls: model, or its DDP / compiled wrapper
    opt: torch.optim.Optimizer
    sched: Schedule
    guard: DivergenceGuard
    loggers: Loggers
    device: torch.device
    info: distributed.DistInfo
    out: Path
    state: RunState
    steps_per_epoch: int
    local_batch: int
    sharded: bool = False  # I-alt stored under torchrun: a fixed shard of examples (and masks) per rank
    step_hook: Callable | None = None
    autocast: Callable = nullcontext
    layer_names: list = field(default_factory=list)
    eval_train: Split | None = None
    eval_at: set = field(default_factory=set)  # steps within an epoch after which the trace evaluates
    epoch_t0: float = 0.0
    last_lr: float = 0.0
    user_model: bool = False  # the caller passed the model (fit(cfg, model=...)): arch records its class

    @property
    def main(self) -> bool:
        """Only rank 0 writes the run folder."""
        return self.info.is_main

    def start_epoch(self, epoch: int) -> EpochEvent:
        """The schedule's :meth:`~supportnet.alternation.Schedule.start_epoch`, timed (support
        estimation counts as training time); resumed mid-epoch, the supports of that epoch are
        rebuilt without a new estimation."""
        self.epoch_t0 = time.perf_counter()
        if epoch == self.state.epoch and self.state.resume_step:
            self.sched.resume_epoch(epoch)
            self.epoch_t0 -= self.state.partial["elapsed"]
            ev = EpochEvent(**self.state.partial["ev"])
        else:
            ev = self.sched.start_epoch(epoch)
            self.state.extra_passes += self.sched.extra_passes(ev, self.steps_per_epoch, self.local_batch)
            if wants_head_solve(self.cfg.head.solve, ev):
                self.state.extra_passes += solve_head_of(self)
        self.guard.at(epoch, ev.phase)
        if ev.reestimated and self.loggers.wants_steps:
            self.loggers.log_step(self.state.step, {"mask_change": ev.mask_change, "est_seconds": ev.est_seconds})
        return ev


def wants_head_solve(when: str, ev: EpochEvent) -> bool:
    """Whether ``head.solve`` (``when``) solves the classifier at the start of this epoch: every
    epoch, or at each support estimation (an I-alternation round's start, a B-alternation epoch)."""
    return when == "epoch" or (when == "round" and (ev.reestimated or ev.phase == "b-alt"))


def solve_head_of(run: Run) -> float:
    """The classifier layer solved exactly on the free-mode features of the training set (right
    after an estimation, the support's features: it was estimated from these weights); returns
    the forward passes it cost, in training batches."""
    t, h = run.cfg.train, run.cfg.head
    with layer_mode(run.model, "free"):
        rep = solve_head(run.model, run.data.train, weight_decay=t.weight_decay, label_smoothing=t.label_smoothing,
                         tol=h.tol, max_iter=h.max_iter, batch_size=t.eval_batch_size,
                         max_examples=h.max_examples)  # fmt: skip
    if run.main and not run.cfg.quiet:
        log.info(f"head solved: loss {rep.loss:.4f}, gradient norm {rep.grad_norm:.1e}, {rep.iterations} iterations")
    return rep.examples / run.local_batch


def optimizer_passes(opt: torch.optim.Optimizer) -> int:
    """Forward passes an optimizer made beyond the loop's one per step (K-FAC's line search)."""
    return int(getattr(opt, "counts", {}).get("extra_forwards", 0))


def _default_out(cfg: Config) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.model.name}-{cfg.support.method}-{stamp}"


def start_run(
    cfg: Config,
    data: DataBundle | None = None,
    model: nn.Module | None = None,
    *,
    step_hook: Callable | None = None,
    resume: Resume | None = None,
    strict: bool = False,
    overwrite: bool = False,
) -> Run:
    """Set a run up, every check first: the config checked and resolved, a taken run folder
    refused (nothing written), the process group, the data and the seeded model on the device,
    the optimizer, schedule, guard and DDP / compiled wrappers, then the folder claimed (locked:
    :mod:`supportnet.runfolder`) and, with ``resume`` (:func:`open_resume`), the checkpoint restored."""
    check_config_runs(cfg, data, step_hook)
    if resume is not None:
        cfg.out = str(resume.folder)
    cfg = resolve_method_defaults(cfg.copy())
    t, rs = cfg.train, resume.state if resume is not None else None
    out = Path(cfg.out) if cfg.out else _default_out(cfg)
    if rs is None:  # a taken or impossible folder is refused now, before the data is loaded
        check_run_folder(out, overwrite=overwrite)
    if t.threads:
        torch.set_num_threads(t.threads)
    tune_allocator()  # no page faults for the same activations every step (supportnet.allocator)
    info = distributed.setup(t.device)
    distributed.check_batch(t.batch_size, info)
    device = torch.device(f"cuda:{info.local_rank}" if info.active and t.device.startswith("cuda") else t.device)
    user_model = model is not None
    data, model = build_on(cfg, device, data, model)
    lazy = lazy_default(device)
    opt = make_optimizer(model, cfg, fused=lazy)
    if step_hook is not None:
        step_hook(model, opt)
    augment_seed = t.seed if cfg.data.augment else None
    sched = make_schedule(cfg.support, model, data.train, device, out, t.eval_batch_size, augment_seed=augment_seed)
    sharded = info.active and cfg.support.method == "i-alt" and cfg.support.backend == "stored"
    if sharded:
        sched.set_shard(info.rank, info.world)
    guard = DivergenceGuard(model, opt, device, lazy=lazy, distributed_active=info.active)
    net = distributed.wrap(model, info, device)
    if info.is_main:  # the folder is this run's (locked) until fit returns
        claim_run_folder(out, resume=rs is not None, overwrite=overwrite)
        if rs is None:
            atomic_write_text(out / "config.yaml", cfg.to_yaml())
    local_batch = t.batch_size // info.world if sharded else t.batch_size
    n_train = len(data.train) // info.world if sharded else len(data.train)
    steps = num_batches(n_train, local_batch)
    n_eval = min(t.train_eval_size, len(data.train))  # free-mode training figures each epoch
    k = max(1, t.evals_per_epoch)
    run = Run(
        cfg, data, model, torch.compile(net) if t.compile else net, opt, sched, guard, Loggers([], None), device,
        info, out, RunState(), steps, local_batch, sharded, step_hook,
        # a captured step must not keep autocast's cast cache between replays
        (lambda: torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=not t.cuda_graphs))
        if t.amp == "bf16" else nullcontext,
        [name for name, _ in threshold_layers(model)], data.train.take(torch.arange(n_eval)) if n_eval else None,
        {round(j * steps / k) for j in range(1, k)} - {0, steps},  # the trace's mid-epoch test evaluations
    )  # fmt: skip
    run.user_model = user_model
    if rs is not None:
        restore(run, rs, strict)
    run.loggers = Loggers(["csv", *t.loggers], out if info.is_main else None, rs["step"] if rs else None)
    return run


# ----------------------------------------------------------------------------- one epoch


@dataclass
class _Epoch:
    """The running sums of one epoch (a mid-epoch checkpoint saves them as ``partial``)."""

    ev: EpochEvent
    loss_sum: torch.Tensor  # on the device (float64), read every 20 steps and at the end
    n_seen: int = 0
    steps: int = 0  # steps done this epoch
    eval_seconds: float = 0.0  # mid-epoch trace evaluations: not training time
    lr: float = 0.0
    tracking: bool | None = None  # the layers' track flag as last set (None: unknown)

    def partial(self, run: Run) -> dict:
        return {
            "ev": self.ev.to_dict(),
            "loss_sum": self.loss_sum.item(),
            "n_seen": self.n_seen,
            "eval_seconds": self.eval_seconds,
            "elapsed": time.perf_counter() - run.epoch_t0,
        }


def _begin(run: Run, epoch: int, ev: EpochEvent) -> _Epoch:
    st = run.state
    if epoch == st.epoch and st.resume_step:  # resumed part-way through this epoch
        p = st.partial
        assert p is not None
        ep = _Epoch(ev, torch.tensor(p["loss_sum"], dtype=torch.float64, device=run.device), p["n_seen"],
                    st.resume_step, p["eval_seconds"])  # fmt: skip
        st.resume_step, st.partial = 0, None
        return ep
    return _Epoch(ev, torch.zeros((), dtype=torch.float64, device=run.device))


def train_one_epoch(run: Run, epoch: int, ev: EpochEvent) -> float:
    """SGD steps over one epoch of the training set, the supports set by the schedule before
    each step. Returns the epoch's mean training objective (cross-entropy under the
    supports; summed over every rank)."""
    ep = _begin(run, epoch, ev)
    st = run.state
    run.model.train()
    penalised = any(layer.consistency > 0 for _, layer in threshold_layers(run.model))  # set per phase
    graphed = cuda_graphs.FitStep(run, penalised) if run.cfg.train.cuda_graphs else None
    try:
        _steps(run, epoch, ep, penalised, graphed)
    finally:  # the learning rate a float again, the graphs' memory freed
        if graphed is not None:
            graphed.close(ep.lr or None)
    configure(run.model, track=False, strict=False)
    run.guard.check_pending(st.step)
    loss_sum, n_seen = ep.loss_sum.item(), ep.n_seen
    if run.info.active:
        sums = distributed.all_reduce_sum(
            torch.tensor([loss_sum, float(n_seen)], dtype=torch.float64, device=run.device)
        )
        loss_sum, n_seen = sums[0].item(), int(sums[1].item())
    st.seconds += time.perf_counter() - run.epoch_t0 - ep.eval_seconds
    run.last_lr = ep.lr  # for the epoch's row
    return loss_sum / max(n_seen, 1)


def _steps(run: Run, epoch: int, ep: _Epoch, penalised: bool, graphed: cuda_graphs.FitStep | None) -> None:
    """The epoch's steps from ``ep.steps`` on."""
    st, t = run.state, run.cfg.train
    bar, key = _progress(run, epoch, ep)
    for x, y, idx in bar:
        x, y, idx = _prepare(run, key, x, y, idx)
        track = st.step % t.stats_every == 0  # sample the active fraction and drift every stats_every steps
        if track != ep.tracking:  # (set on the layers only when it changes: a walk of the model per call)
            for _, layer in threshold_layers(run.model):
                layer.track = track
            ep.tracking = track
        ep.lr = t.lr * lr_at(run.cfg, st.step, run.steps_per_epoch) * run.sched.lr_factor
        cuda_graphs.set_lr(run.opt, ep.lr)
        if graphed is not None:  # the same step, captured once and replayed (train.cuda_graphs)
            loss = graphed(x, y, idx, ep.tracking)
        else:
            run.sched.before_step(x, idx)  # the supports of this batch (I-alt: looked up by example index)
            loss = train_step(run.net, run.opt, x, y, model=run.model, penalised=penalised, guard=run.guard,
                              step=st.step + 1, autocast=run.autocast, step_hook=run.step_hook,
                              label_smoothing=t.label_smoothing)  # fmt: skip
        st.step += 1
        ep.steps += 1
        ep.loss_sum.add_(loss, alpha=y.numel())  # on the device (float64)
        ep.n_seen += y.numel()
        faults.hit("step")
        _after_step(run, epoch, ep, bar, loss)
    bar.close()


def _progress(run: Run, epoch: int, ep: _Epoch):
    """This epoch's batches in the epoch's order, with a progress bar on a terminal, and the key
    of the epoch's augmented views (the schedule's: one view per example for a stored round)."""
    from tqdm import tqdm

    data, t = run.data, run.cfg.train
    key = run.sched.view_key(epoch)
    order = epoch_order(len(data.train), t.seed, epoch)
    if hasattr(data.train, "loader"):  # the workers draw this epoch's views (random-resized crops, flips)
        data.train.key = key
    if run.sharded:
        order = distributed.shard_order(order, run.info, len(data.train))
    quiet = run.cfg.quiet or not run.main or not sys.stderr.isatty()  # no \r updates in log files
    bar = tqdm(
        batches(data.train, run.local_batch, order, start=ep.steps),
        total=run.steps_per_epoch,
        initial=ep.steps,
        leave=False,
        disable=quiet,
        desc=f"epoch {epoch + 1}/{t.epochs} [{ep.ev.phase}]",
    )
    return bar, key


def _prepare(run: Run, key: int, x, y, idx):
    """This rank's slice of the batch, its augmented view (``key``: the epoch's), on the device."""
    t = run.cfg.train
    if run.info.active and not run.sharded:  # this rank's slice of the global batch
        sl = distributed.local_slice(len(idx), run.info)
        x, y, idx = x[sl], y[sl], idx[sl]
    if run.cfg.data.augment and not hasattr(run.data.train, "loader"):
        x = crop_flip(x, idx, t.seed, key)  # the view: a function of (seed, key, index)
    x, y = x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)
    if t.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y, idx


def _after_step(run: Run, epoch: int, ep: _Epoch, bar, loss: torch.Tensor) -> None:
    """Mid-epoch work: a trace evaluation, the device guard's check, a checkpoint, step logs."""
    st, t = run.state, run.cfg.train
    if ep.steps in run.eval_at:  # a mid-epoch trace point; its time is not training time
        te = time.perf_counter()
        tl, ta = evaluate(run.model, run.data.test, t.eval_batch_size, run.device)
        seconds = round(st.seconds + te - run.epoch_t0 - ep.eval_seconds, 3)
        st.trace.append({"epoch": epoch + ep.steps / run.steps_per_epoch, "iterations": st.step,
                         "seconds": seconds, "test_loss": tl, "test_acc": ta})  # fmt: skip
        if t.trace_train_loss and run.eval_train is not None:  # free-mode loss on the train_eval_size subset
            st.trace[-1]["train_loss"], st.trace[-1]["train_acc"] = evaluate(
                run.model, run.eval_train, t.eval_batch_size, run.device
            )
        ep.eval_seconds += time.perf_counter() - te
        ep.tracking = None
    ckpt = bool(t.checkpoint_steps) and st.step % t.checkpoint_steps == 0
    if st.step % 20 == 0 or ckpt:
        run.guard.check_pending(st.step)
    if run.main and ckpt and ep.steps < run.steps_per_epoch:  # everything needed to continue from this step
        partial = ep.partial(run)
        run.guard.last_good = save_run_checkpoint(run, epoch, ep.steps, partial)
    if st.step % 20 == 0 and not bar.disable:
        bar.set_postfix(loss=f"{ep.loss_sum.item() / ep.n_seen:.4f}")
    if run.loggers.wants_steps and st.step % t.log_every == 0:
        run.loggers.log_step(st.step, _step_scalars(run, loss, ep.lr))


def _step_scalars(run: Run, loss: torch.Tensor, lr: float) -> dict[str, float]:
    """The step's loss, the learning rate and each layer's active fraction so far this epoch."""
    out = {"loss": loss.item(), "lr": lr}
    for name, layer in threshold_layers(run.model):
        active, total = layer.stats[:2].tolist()
        if total:
            out[f"active/{name}"] = active / total
    return out


# ----------------------------------------------------------------------------- after an epoch


def evaluate_epoch(run: Run, epoch: int, ev: EpochEvent, obj_loss: float) -> dict:
    """The epoch's row of metrics.csv: free-mode test figures (the paper applies the threshold
    at test time), free-mode training and validation figures, the schedule's events and the
    layers' active fractions and drift. Stops the run if the weights or the test loss are no
    longer finite."""
    st, t, model = run.state, run.cfg.train, run.model
    st.epoch = epoch + 1
    run.guard.check_weights()
    test_loss, test_acc = evaluate(model, run.data.test, t.eval_batch_size, run.device)
    run.guard.check_test_loss(test_loss, obj_loss, lambda: run.data.test.x[: t.eval_batch_size].to(run.device))
    row = {"epoch": st.epoch, "phase": ev.phase, "round": ev.round, "lr": run.last_lr,
           "iterations": st.step, "seconds": round(st.seconds, 3), "obj_loss": obj_loss,
           "passes": round(st.step + optimizer_passes(run.opt) + st.extra_passes, 3)}  # fmt: skip
    if run.eval_train is not None:
        row["train_loss"], row["train_acc"] = evaluate(model, run.eval_train, t.eval_batch_size, run.device)
    if run.data.val is not None:  # the split to tune on; never the test set
        row["val_loss"], row["val_acc"] = evaluate(model, run.data.val, t.eval_batch_size, run.device)
    row.update(test_loss=test_loss, test_acc=test_acc, test_err=1.0 - test_acc)
    st.trace.append({"epoch": float(st.epoch), "iterations": st.step, "seconds": round(st.seconds, 3),
                     "test_loss": test_loss, "test_acc": test_acc})  # fmt: skip
    if t.trace_train_loss and "train_loss" in row:  # the end-of-epoch train evaluation, already done
        st.trace[-1]["train_loss"], st.trace[-1]["train_acc"] = row["train_loss"], row["train_acc"]
    if t.maskt:
        row["maskt_acc"] = evaluate(model, run.data.test, t.eval_batch_size, run.device, mode="binary")[1]
    row.update(reestimated=int(ev.reestimated), mask_change=ev.mask_change, est_seconds=round(ev.est_seconds, 3))
    stats = collect_stats(model)
    row.update({f"active/{name}": stats[name]["active"] for name in run.layer_names})
    row.update({f"drift/{name}": stats[name]["drift"] for name in run.layer_names})
    return row


def log_and_checkpoint(run: Run, row: dict) -> None:
    """Record the row (metrics.csv and the other loggers; one line to the log) and checkpoint."""
    st, t = run.state, run.cfg.train
    st.rows.append(row)
    if not run.main:
        return
    if not run.cfg.quiet:
        log.info(
            f"epoch {st.epoch:3d} [{row['phase']:6s}] obj {row['obj_loss']:.4f}  test loss {row['test_loss']:.4f}  "
            f"acc {row['test_acc']:.4f}  {st.seconds:7.1f}s"
            + ("  (support re-estimated)" if row["reestimated"] else "")
        )
    run.loggers.log_epoch(row, st.rows)
    if (t.checkpoint_every and st.epoch % t.checkpoint_every == 0) or t.checkpoint_steps:
        run.guard.last_good = save_run_checkpoint(run, st.epoch, 0, None)


def finish_run(run: Run) -> Path:
    """The final artefacts (weights, summary, curves), written by rank 0; returns the run folder."""
    if run.main:
        cfg, rows, model = run.cfg, run.state.rows, run.model
        # final.pt, model.safetensors
        save_final(run.out, model, cfg, rows, run.data.in_shape, run.data.num_classes, run.user_model)
        last = rows[-1]
        summary = {"method": cfg.support.method, "model": cfg.model.name, "data": cfg.data.name,
                   "params": count_params(model), "test_acc": last["test_acc"], "test_loss": last["test_loss"],
                   "iterations": last["iterations"], "seconds": last["seconds"],
                   "curve": [curve_point(r) for r in rows], "trace": run.state.trace}  # fmt: skip
        plot_run(rows, run.out / "curves.png", title=f"{cfg.model.name} on {cfg.data.name}: {cfg.support.method}")
        atomic_write_text(run.out / "summary.json", json.dumps(summary, indent=2))  # last: the run is finished
    distributed.teardown(run.info)
    return run.out


@releases_run_folders
def fit(
    cfg: Config,
    data: DataBundle | None = None,
    model: nn.Module | None = None,
    *,
    train=None,
    test=None,
    step_hook: Callable | None = None,
    resume: Resume | str | Path | None = None,
    strict: bool = False,
    overwrite: bool = False,
) -> Path:
    """Train as ``cfg`` says and return the run folder (see the module docstring).

    ``fit`` is the paper's loop: the objective is the cross-entropy (``train.label_smoothing``)
    plus the support-consistency penalty, and the weights take the optimizer
    ``train.optimizer`` names (``sgd``, ``adamw``, ``kfac``, ``soap``: :mod:`supportnet.optim`)
    under the config's learning-rate schedule. Any other loss or optimizer: the own loop
    (docs/own-loop.md) is the general one; it drives the same schedules, and with the same
    seed, data order and SGD gives ``fit``'s weights bit for bit.

    ``data``: a loaded :class:`~supportnet.data.DataBundle` (default: the one ``cfg.data``
    names); or ``train`` and ``test``: any map-style ``torch.utils.data.Dataset`` of
    ``(x, y)`` (an adapter attaches the example indices I-alternation needs; a data set with
    random transforms takes the snapshot back end). ``model``: default, ``cfg.model``; a model
    of your own is recorded as such in the run (``arch["user_model"]``), and
    ``load_model(run, model=skeleton)`` reads it back.
    ``step_hook(model, optimizer)``, if given, runs once before training and after every
    optimizer step (DSD uses it to hold pruned weights at zero).
    ``resume``: a run folder (or its :class:`Resume`, read once by :func:`open_resume`);
    training continues from its ``checkpoint.pt`` (which may be mid-epoch) and ends with the
    weights an uninterrupted run would have, bit for bit on CPU.
    ``strict``: a damaged mask store is an error instead of a re-estimation.
    ``overwrite``: a new run may replace another run's files in ``cfg.out`` (else refused;
    :mod:`supportnet.runfolder`). A ``resume`` of a finished run writes nothing: one line is
    logged and the run folder returned (:func:`open_resume`).
    """
    if isinstance(resume, (str, Path)):
        resume = open_resume(resume, cfg)
    if resume is not None and resume.note:
        log.warning(resume.note)
        return resume.folder
    if train is not None:
        if test is None:
            raise ConfigError("fit(train=...) also needs test=...: the run evaluates on it after every epoch")
        data = from_datasets(train, test, workers=cfg.data.workers if cfg.data.stream else 0)
    run = start_run(cfg, data, model, step_hook=step_hook, resume=resume, strict=strict, overwrite=overwrite)
    try:
        for epoch in range(run.state.epoch, run.cfg.train.epochs):
            ev = run.start_epoch(epoch)  # warm-up, or alternation: a new round re-estimates the supports
            obj = train_one_epoch(run, epoch, ev)  # the weights, with the supports held as the schedule says
            run.sched.end_epoch(obj)  # plateau test on the objective: when the next round starts
            row = evaluate_epoch(run, epoch, ev, obj)
            log_and_checkpoint(run, row)
        return finish_run(run)
    finally:
        run.loggers.close()


def save_run_checkpoint(run: Run, epoch_done: int, step_in_epoch: int, partial: dict | None) -> Path:
    """``checkpoint.pt``: everything needed to continue from this very step (see ``restore``)."""
    st = run.state  # every state gathered first, then written at once
    model, opt, sched, rng = run.model.state_dict(), _optimizer_state(run.opt), run.sched.state_dict(), get_rng_state()
    return save_checkpoint(
        run.out / "checkpoint.pt",
        {
            "model": model,
            "optimizer": opt,
            "schedule": sched,
            "epoch": epoch_done,
            "step": st.step,
            "step_in_epoch": step_in_epoch,
            "partial": partial,
            "seconds": st.seconds,
            "extra_passes": st.extra_passes,
            "config": run.cfg.to_dict(),
            "rng": rng,
            "metrics": st.rows,
            "trace": st.trace,
            "format": RESUME_FORMAT,
        },
        kind="resume",
    )


def _optimizer_state(opt: torch.optim.Optimizer) -> dict:
    """``opt.state_dict()`` with a float learning rate (a captured step holds it as a device tensor)."""
    sd = opt.state_dict()
    for g in sd["param_groups"]:  # (new dicts: the optimizer's own groups are untouched)
        if isinstance(g.get("lr"), torch.Tensor):
            g["lr"] = g["lr"].item()
    return _sets_out(sd)


def _sets_out(x):
    """Python sets (heavyball keeps its initialised steps in one) as ``{"__set__": [...]}``: a
    checkpoint holds dicts, lists, tensors and scalars only; :func:`_sets_in` turns them back."""
    if isinstance(x, (set, frozenset)):
        return {"__set__": sorted(x)}
    if isinstance(x, dict):
        return {k: _sets_out(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_sets_out(v) for v in x)
    return x


def _sets_in(x):
    if isinstance(x, dict):
        return set(x["__set__"]) if set(x) == {"__set__"} else {k: _sets_in(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_sets_in(v) for v in x)
    return x


def restore(run: Run, rs: dict, strict: bool = False) -> None:
    """Continue exactly where the checkpoint ``rs`` was taken (weights, momentum, schedule and
    supports, position in the epoch, sums, every RNG)."""
    run.model.load_state_dict(rs["model"])
    run.opt.load_state_dict(_sets_in(rs["optimizer"]))
    if isinstance(run.sched, IAlternation):
        run.sched.strict = strict
    run.sched.load_state_dict(rs["schedule"])
    run.state = RunState(epoch=rs["epoch"], step=rs["step"], seconds=rs["seconds"], rows=list(rs["metrics"]),
                         trace=list(rs.get("trace", [])), resume_step=rs.get("step_in_epoch", 0),
                         partial=rs.get("partial"), extra_passes=rs.get("extra_passes", 0.0))  # fmt: skip
    run.guard.last_good = run.out / "checkpoint.pt"
    if run.step_hook is not None:
        run.step_hook(run.model, run.opt)
    set_rng_state(rs["rng"])


RESUME_FORMAT = 2  # what a checkpoint.pt holds (see open_resume)


def get_rng_state() -> dict:
    """Every random number generator the training loop draws from, in a weights_only-safe form."""
    py = random.getstate()
    npst = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [npst[0], torch.from_numpy(npst[1].astype(np.int64)), int(npst[2]), int(npst[3]), float(npst[4])],
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate((s["python"][0], tuple(s["python"][1]), s["python"][2]))
    n = s["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    if s.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


@dataclass
class Resume:
    """A run folder to continue, read and checked once (:func:`open_resume`): ``note`` is the
    one line to say instead where the run has finished; else ``state`` is its checkpoint."""

    folder: Path
    note: str | None = None
    state: dict | None = None


def is_finished(run: str | Path) -> bool:
    """Whether the run in folder ``run`` has finished: its ``final.pt`` and ``summary.json`` (the
    file :func:`finish_run` writes last) are there."""
    run = Path(run)
    return (run / "final.pt").is_file() and (run / "summary.json").is_file()


def open_resume(run: str | Path, cfg: Config) -> Resume:
    """The run in folder ``run``, to be resumed with ``cfg``: one file read (a finished run's
    ``final.pt``, else ``checkpoint.pt``) and one check that ``cfg`` is the config the run was
    started with (a ConfigError otherwise).

    A finished run is read-only: its :class:`Resume` holds the one line to say instead (a
    finished run cannot be continued with changes either), and nothing in it is written again."""
    run = Path(run)
    finished = is_finished(run)
    ck = run / ("final.pt" if finished else "checkpoint.pt")
    if not ck.is_file():
        raise ConfigError(
            f"{run} has no checkpoint.pt to resume from; pass a run folder written by "
            f"'supportnet train' (with train.checkpoint_every or train.checkpoint_steps > 0)"
        )
    rs = load_checkpoint(ck, kind="final" if finished else "resume")
    if not finished and rs.get("format") != RESUME_FORMAT:
        raise ConfigError(
            f"{ck} was written by another supportnet version (resume format "
            f"{rs.get('format')}, this one reads {RESUME_FORMAT}); start a new run"
        )
    fix = "a finished run is not changed: start a new run with a new --out" if finished else None
    check_same_config(rs["config"], cfg, run, fix or "resume with the run's own config.yaml")
    if not finished:
        return Resume(run, state=rs)
    n = cfg.train.epochs
    note = (
        f"{run} has already finished ({n} epoch{'s' * (n != 1)}); nothing to resume: "
        f"its files are left as they are (a new run needs a new --out)"
    )
    return Resume(run, note=note)


def curve_point(r: dict) -> dict:
    return {
        "epoch": r["epoch"],
        "iterations": r["iterations"],
        "seconds": r["seconds"],
        "train_loss": r.get("train_loss", r["obj_loss"]),
        "obj_loss": r["obj_loss"],
        "test_loss": r["test_loss"],
        "test_acc": r["test_acc"],
        "reestimated": bool(r["reestimated"]),
        **({"val_loss": r["val_loss"], "val_acc": r["val_acc"]} if "val_acc" in r else {}),
        "mask_change": _finite_or_none(r.get("mask_change")),
    }


def _finite_or_none(v):
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


def check_config_runs(cfg: Config, data: DataBundle | None = None, step_hook: Callable | None = None) -> None:
    """Combinations that validate field by field but cannot run here (on ``data``, under
    torchrun, with ``step_hook``): checked once, before anything is loaded or written."""
    if cfg.data.stream and cfg.train.loader == "device":
        raise ConfigError("data.stream=true decodes images on the host; it cannot use train.loader=device")
    if data is not None and not isinstance(data.train, Split):
        if cfg.train.loader == "device":
            raise ConfigError(
                "train.loader=device holds tensor data sets on the device; a Dataset is read by a DataLoader "
                "on the host: drop train.loader=device"
            )
        if cfg.data.augment:
            raise ConfigError(
                "data.augment crops and flips tensor data sets; a Dataset augments in its own transforms: "
                "drop data.augment"
            )
    if cfg.data.stream and cfg.support.method == "i-alt" and cfg.support.backend == "stored":
        raise ConfigError(
            "stored supports need one fixed view per example, which streamed random crops do not "
            "give; use support.backend=snapshot with data.stream=true"
        )
    if cfg.train.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"train.device={cfg.train.device} but no CUDA device is available; use --set train.device=cpu"
        )
    torchrun = distributed.env_world() > 1
    cuda_graphs.check_run(cfg, torchrun, step_hook, lazy_default(torch.device(cfg.train.device)))
    if torchrun and cfg.head.solve != "off":
        raise ConfigError("head.solve solves the classifier on one process's data; under torchrun set head.solve=off")
