"""``fit(config) -> run folder``: the training loop for every schedule.

The loop reads as the algorithm does: warm-up epochs of free SGD, then (for the
alternation schedules) rounds of *estimate support, train weights with it
fixed*, with evaluation and logging after every epoch. What happens in each
phase lives in :mod:`supportnet.alternation`.

Run folder::

    config.yaml      the resolved config
    metrics.csv      one row per epoch (see ``METRIC_DOC``)
    curves.png       loss and error against epochs, re-estimations marked
    checkpoint.pt    latest checkpoint (model, optimizer, schedule state, RNG, metrics)
    final.pt         final weights and config: {"state_dict", "config", "metrics"}
    summary.json     final figures
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import distributed, faults
from .alternation import IAlternation, make_schedule
from .config import Config, resolve_method_defaults
from .data import DataBundle, Split, batches, epoch_order, load_data, num_batches
from .data.augment import crop_flip
from .errors import ConfigError, DivergenceError
from .io import atomic_write_text, save_checkpoint
from .layers import collect_stats, configure, layer_mode, support_penalty, threshold_layers
from .models import count_params, create_model

METRIC_DOC = {
    "epoch": "epochs completed",
    "phase": "warmup | sgd | b-alt | i-alt",
    "round": "I-alternation round (support estimations so far)",
    "lr": "learning rate at the end of the epoch",
    "iterations": "optimizer steps so far",
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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def lr_at(cfg: Config, step: int, steps_per_epoch: int) -> float:
    """Learning rate multiplier at optimizer step ``step`` (per-step cosine, or step decay)."""
    t = cfg.train
    total = max(1, t.epochs * steps_per_epoch)
    if t.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    if t.schedule == "step":
        epoch = step // steps_per_epoch
        return t.gamma ** sum(1 for m in t.milestones if epoch >= m)
    return 1.0


@torch.no_grad()
def evaluate(
    model: nn.Module, split: Split, batch_size: int = 128, device=None, mode: str = "free"
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``split`` with every layer in ``mode``."""
    from .distributed import all_reduce_sum, world_size

    was_training = model.training
    model.eval()
    total_loss, correct, n = 0.0, 0, 0
    world = world_size()
    if world > 1:  # each rank evaluates its share; the sums are all-reduced below
        import torch.distributed as dist

        split = split.take(torch.arange(dist.get_rank(), len(split), world))
    try:
        with layer_mode(model, mode):
            for x, y, _ in batches(split, batch_size):
                x, y = x.to(device), y.to(device)
                out = model(x)
                total_loss += F.cross_entropy(out, y, reduction="sum").item()
                correct += (out.argmax(1) == y).sum().item()
                n += y.numel()
    finally:
        model.train(was_training)
    if world > 1:
        sums = all_reduce_sum(torch.tensor([total_loss, float(correct), float(n)], dtype=torch.float64, device=device))
        total_loss, correct, n = sums[0].item(), int(sums[1].item()), int(sums[2].item())
    return total_loss / max(n, 1), correct / max(n, 1)


def first_nonfinite_layer(model: nn.Module, x: torch.Tensor) -> str:
    """Where the activations blew up on ``x``: the first module whose output is not finite, or
    else the module with the largest output magnitude (a diagnostic forward pass)."""
    found: list[str] = []
    largest: list[tuple[float, str]] = []
    hooks = []
    for name, mod in model.named_modules():
        if name and not list(mod.children()):

            def hook(m, inp, out, name=name):
                if isinstance(out, torch.Tensor) and out.is_floating_point():
                    if not found and not torch.isfinite(out).all():
                        found.append(name)
                    elif out.numel():
                        largest.append((out.detach().abs().max().item(), name))

            hooks.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    except Exception:  # noqa: BLE001 - diagnostics only
        pass
    finally:
        for h in hooks:
            h.remove()
    if found:
        return f"first non-finite activations in {found[0]}"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        return f"non-finite weights in {bad[0]}"
    if largest:
        v, name = max(largest)
        return f"activations finite, largest |output| {v:.3g} in {name}"
    return "activations finite"


@dataclass
class RunState:
    epoch: int = 0
    step: int = 0
    seconds: float = 0.0


def _default_out(cfg: Config) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.model.name}-{cfg.support.method}-{stamp}"


def build(cfg: Config, data: DataBundle | None = None):
    """Data and model for ``cfg``, seeded so every method starts from the same weights."""
    d = cfg.data
    data = data or load_data(
        d.name,
        d.data_dir,
        subset=d.subset,
        val=d.val,
        seed=cfg.train.seed,
        pad=d.pad,
        do_normalize=d.normalize,
        preprocess=d.preprocess,
        image_size=d.image_size,
        extra=d.extra,
        stream=d.stream,
        workers=d.workers,
        test_subset=d.test_subset,
    )
    seed_everything(cfg.train.seed)
    model = create_model(cfg.model.name, in_shape=data.in_shape, num_classes=data.num_classes, **cfg.model.kwargs)
    check_model_fits(model, cfg, data)
    return data, model


def check_model_fits(model: nn.Module, cfg: Config, data: DataBundle) -> None:
    """A dry forward of one input: a model that cannot take the data's shape fails here, clearly."""
    shape = "x".join(map(str, data.in_shape))
    rng = torch.get_rng_state()
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            out = model(torch.zeros(1, *data.in_shape))
            model.train(was)
    except RuntimeError as e:
        raise ConfigError(
            f"model {cfg.model.name!r} cannot take {shape} inputs from {data.name} "
            f"({str(e).splitlines()[0][:90]}); pad the data (data.pad), set data.image_size, "
            f"or pick a model for this input size"
        ) from None
    finally:
        torch.set_rng_state(rng)
    if out.shape[-1] != data.num_classes:
        raise ConfigError(
            f"model {cfg.model.name!r} gives {out.shape[-1]} outputs but {data.name} has "
            f"{data.num_classes} classes; drop the num_classes override"
        )


def fit(
    cfg: Config,
    data: DataBundle | None = None,
    model: nn.Module | None = None,
    step_hook=None,
    resume: str | Path | None = None,
    strict: bool = False,
) -> Path:
    """Train as ``cfg`` says and return the run folder (see the module docstring).

    ``step_hook(model, optimizer)``, if given, runs once before training and after every
    optimizer step (DSD uses it to hold pruned weights at zero).
    ``resume``: a run folder; training continues from its ``checkpoint.pt`` (which may
    be mid-epoch) and ends with the weights an uninterrupted run would have, bit for bit
    on CPU. ``strict``: a damaged mask store is an error instead of a re-estimation.
    """
    rs = None
    if resume is not None:
        rs = _load_resume(Path(resume), cfg)
        cfg.out = str(resume)
    cfg = resolve_method_defaults(cfg.copy())
    check_config_runs(cfg)
    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    info = distributed.setup(t.device)
    distributed.check_batch(t.batch_size, info)
    device = torch.device(f"cuda:{info.local_rank}" if info.active and t.device.startswith("cuda") else t.device)
    if model is None:
        data, model = build(cfg, data)
    elif data is None:
        data, _ = build(cfg)
    assert data is not None
    seed_everything(t.seed)
    fmt = torch.channels_last if t.channels_last else torch.contiguous_format
    model.to(device, memory_format=fmt)
    streaming = hasattr(data.train, "loader")
    if t.loader == "device":  # the whole set on the device: batches are gathers, no host copies
        data = to_device(data, device)
    out = Path(cfg.out) if cfg.out else _default_out(cfg)
    main = info.is_main  # only rank 0 writes the run folder
    if main and rs is None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", cfg.to_yaml())

    # On a GPU the divergence guard must not stall the queue with a host sync every step: the
    # fused SGD kernel skips its update on the device while ``found_inf`` is set (sticky: from the
    # first non-finite step on), and the flag is read every 20 steps and at the end of the epoch.
    # On the CPU (no queue to stall) every step is checked before its update, as before.
    lazy_guard = device.type == "cuda" or os.environ.get("SUPPORTNET_LAZY_GUARD") == "1"  # env: tests on CPU
    opt = torch.optim.SGD(
        model.parameters(),
        lr=t.lr,
        momentum=t.momentum,
        weight_decay=t.weight_decay,
        fused=True if lazy_guard else None,
    )
    if lazy_guard:
        guard = {"bad": torch.zeros((), dtype=torch.float32, device=device), "checked": 0}
        opt.found_inf = guard["bad"]  # type: ignore[attr-defined]

    def check_guard(epoch: int, phase: str) -> None:
        """Raise if a step since the last check was non-finite (its update, and every later one, was skipped)."""
        if not lazy_guard:
            return
        if not guard["bad"].item():
            guard["checked"] = st.step
            return
        raise DivergenceError(
            f"training objective or gradient became non-finite between steps {guard['checked'] + 1} and {st.step} "
            f"(epoch {epoch + 1}, {phase} phase); the weights were not updated from that step on; last good "
            f"checkpoint: {last_good or 'none'}; lower train.lr, or use support.apply=gated or another support.rule"
        )

    if step_hook is not None:
        step_hook(model, opt)
    sched = make_schedule(
        cfg.support,
        model,
        data.train,
        device,
        out,
        t.eval_batch_size,
        augment_seed=t.seed if cfg.data.augment else None,
    )
    # I-alternation with stored supports under torchrun: a fixed shard of examples (and masks) per rank.
    sharded = info.active and cfg.support.method == "i-alt" and cfg.support.backend == "stored"
    if sharded:
        sched.set_shard(info.rank, info.world)
    net = model
    if info.active:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if t.compile:
        net = torch.compile(net)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if t.amp == "bf16" else nullcontext
    named_layers = threshold_layers(model)
    layer_names, tlayers = [n for n, _ in named_layers], [layer for _, layer in named_layers]
    local_batch = t.batch_size // info.world if sharded else t.batch_size
    steps_per_epoch = num_batches(len(data.train) // info.world if sharded else len(data.train), local_batch)
    eval_train = data.train.take(torch.arange(min(t.train_eval_size, len(data.train)))) if t.train_eval_size else None
    rows: list[dict] = []
    trace: list[dict] = []  # test accuracy at evals_per_epoch points per epoch (time-to-target)
    k_eval = max(1, t.evals_per_epoch)
    eval_at = {round(j * steps_per_epoch / k_eval) for j in range(1, k_eval)} - {0, steps_per_epoch}
    st = RunState()
    last_good: Path | None = None
    first_epoch, first_step, partial = 0, 0, None
    if rs is not None:  # continue exactly where the checkpoint was taken
        model.load_state_dict(rs["model"])
        opt.load_state_dict(rs["optimizer"])
        if isinstance(sched, IAlternation):
            sched.strict = strict
        sched.load_state_dict(rs["schedule"])
        rows, trace = list(rs["metrics"]), list(rs.get("trace", []))
        st = RunState(epoch=rs["epoch"], step=rs["step"], seconds=rs["seconds"])
        first_epoch, first_step, partial = rs["epoch"], rs.get("step_in_epoch", 0), rs.get("partial")
        last_good = out / "checkpoint.pt"
        if step_hook is not None:
            step_hook(model, opt)
        set_rng_state(rs["rng"])
    from tqdm import tqdm

    def checkpoint(epoch_done: int, step_in_epoch: int, part: dict | None) -> Path:
        return save_checkpoint(
            out / "checkpoint.pt",
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "schedule": sched.state_dict(),
                "epoch": epoch_done,
                "step": st.step,
                "step_in_epoch": step_in_epoch,
                "partial": part,
                "seconds": st.seconds,
                "config": cfg.to_dict(),
                "rng": get_rng_state(),
                "metrics": rows,
                "trace": trace,
                "format": RESUME_FORMAT,
            },
        )

    for epoch in range(first_epoch, t.epochs):
        # Phase: the schedule decides warm-up vs alternation and re-estimates supports.
        t0 = time.perf_counter()
        start = first_step if epoch == first_epoch else 0
        if start:  # resumed part-way through this epoch: its supports were already estimated
            ev = dict(partial["ev"])
            sched.resume_epoch(epoch)
            t0 -= partial["elapsed"]
        else:
            ev = sched.start_epoch(epoch)
        model.train()
        penalised = any(layer.consistency > 0 for layer in tlayers)  # the schedule sets it per phase
        order = epoch_order(len(data.train), t.seed, epoch)
        if streaming:  # the workers draw this epoch's views (random-resized crops, flips)
            data.train.key = sched.view_key(epoch)
        if sharded:
            order = distributed.shard_order(order, info, len(data.train))
        loss_sum, n_seen, step_in_epoch, eval_seconds = 0.0, 0, 0, 0.0
        if start:
            loss_sum, n_seen, eval_seconds, step_in_epoch = (
                partial["loss_sum"],
                partial["n_seen"],
                partial["eval_seconds"],
                start,
            )
        loss_acc = torch.tensor(loss_sum, dtype=torch.float64, device=device)
        tracking: bool | None = None  # the layers' track flag as last set here (None: unknown)
        bar = tqdm(
            batches(data.train, local_batch, order, start=start),
            total=steps_per_epoch,
            initial=start,
            leave=False,
            disable=cfg.quiet or not main,
            desc=f"epoch {epoch + 1}/{t.epochs} [{ev['phase']}]",
        )
        for x, y, idx in bar:
            if info.active and not sharded:  # this rank's slice of the global batch
                sl = distributed.local_slice(len(idx), info)
                x, y, idx = x[sl], y[sl], idx[sl]
            if cfg.data.augment and not streaming:  # the view of each example: a function of (seed, view key, index)
                x = crop_flip(x, idx, t.seed, sched.view_key(epoch))
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if t.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            lr = t.lr * lr_at(cfg, st.step, steps_per_epoch) * sched.lr_factor
            for g in opt.param_groups:
                g["lr"] = lr
            sched.before_step(x, idx)
            track = st.step % t.stats_every == 0
            if track != tracking:  # set on the layers only when it changes (a walk of the model per call)
                for layer in tlayers:
                    layer.track = track
                tracking = track
            with autocast():
                loss = F.cross_entropy(net(x), y)
            objective = loss.float() + support_penalty(model) if penalised else loss.float()
            opt.zero_grad(set_to_none=True)
            objective.backward()
            # Divergence guard, before the update: is the objective finite, are the gradients?
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            gnorm = torch.stack(torch._foreach_norm(grads)).sum() if grads else torch.zeros_like(objective)
            if lazy_guard:  # on the device; the fused step skips while guard["bad"] is set
                now = (~torch.isfinite(objective.detach() + gnorm)).float()  # inf + -inf is nan: still caught
                if info.active:  # every rank skips together
                    distributed.all_reduce_sum(now)
                torch.maximum(guard["bad"], now, out=guard["bad"])
                bad_objective = bad_grad = 0.0
            else:  # one host read per step
                flags = torch.stack([~torch.isfinite(objective.detach()), ~torch.isfinite(gnorm)]).double()
                if info.active:  # every rank stops together
                    distributed.all_reduce_sum(flags)
                bad_objective, bad_grad = flags.tolist()
            if bad_objective:
                where = first_nonfinite_layer(model, x)
                raise DivergenceError(
                    f"training objective became {objective.item():.3g} (cross-entropy {loss.item():.3g}) at epoch "
                    f"{epoch + 1}, step {st.step + 1} ({ev['phase']} phase); {where}; last good checkpoint: "
                    f"{last_good or 'none'}; lower train.lr, or use support.apply=gated or another support.rule"
                )
            if bad_grad:
                bad = next(
                    (n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()),
                    "another rank's gradients",
                )
                raise DivergenceError(
                    f"gradient became non-finite at epoch {epoch + 1}, step {st.step + 1} ({ev['phase']} phase; "
                    f"first in {bad}) although the objective was {objective.item():.3g}; the weights were not "
                    f"updated; last good checkpoint: {last_good or 'none'}; lower train.lr, or use "
                    f"support.apply=gated or another support.rule"
                )
            opt.step()
            if step_hook is not None:
                step_hook(model, opt)
            st.step += 1
            step_in_epoch += 1
            loss_acc.add_(loss.detach(), alpha=y.numel())  # on the device (float64); read every 20 steps
            n_seen += y.numel()
            faults.hit("step")
            if step_in_epoch in eval_at:  # mid-epoch point of the trace; its time is not training time
                te = time.perf_counter()
                tl, ta = evaluate(model, data.test, t.eval_batch_size, device)
                trace.append(
                    {
                        "epoch": epoch + step_in_epoch / steps_per_epoch,
                        "iterations": st.step,
                        "seconds": round(st.seconds + te - t0 - eval_seconds, 3),
                        "test_loss": tl,
                        "test_acc": ta,
                    }
                )
                if t.trace_train_loss and eval_train is not None:  # free-mode loss on the train_eval_size subset
                    trace[-1]["train_loss"], trace[-1]["train_acc"] = evaluate(
                        model, eval_train, t.eval_batch_size, device
                    )
                eval_seconds += time.perf_counter() - te
                tracking = None
            if lazy_guard and (st.step % 20 == 0 or (t.checkpoint_steps and st.step % t.checkpoint_steps == 0)):
                check_guard(epoch, ev["phase"])
            if main and t.checkpoint_steps and st.step % t.checkpoint_steps == 0 and step_in_epoch < steps_per_epoch:
                # mid-epoch checkpoint: everything needed to continue from this very step
                last_good = checkpoint(
                    epoch,
                    step_in_epoch,
                    {
                        "ev": ev,
                        "loss_sum": loss_acc.item(),
                        "n_seen": n_seen,
                        "eval_seconds": eval_seconds,
                        "elapsed": time.perf_counter() - t0,
                    },
                )
            if st.step % 20 == 0 and not bar.disable:
                bar.set_postfix(loss=f"{loss_acc.item() / n_seen:.4f}")
        bar.close()
        check_guard(epoch, ev["phase"])
        loss_sum = loss_acc.item()
        configure(model, track=False)
        if info.active:
            sums = distributed.all_reduce_sum(
                torch.tensor([loss_sum, float(n_seen)], dtype=torch.float64, device=device)
            )
            loss_sum, n_seen = sums[0].item(), int(sums[1].item())
        obj_loss = loss_sum / max(n_seen, 1)
        sched.end_epoch(obj_loss)
        st.seconds += time.perf_counter() - t0 - eval_seconds
        st.epoch = epoch + 1
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise DivergenceError(
                f"weights became non-finite in epoch {epoch + 1}; last good checkpoint: "
                f"{last_good or 'none'}; lower train.lr or use support.apply=gated"
            )

        # Evaluate in free mode (the paper applies the threshold at test time).
        test_loss, test_acc = evaluate(model, data.test, t.eval_batch_size, device)
        if not math.isfinite(test_loss):  # weights finite but so large that the free forward overflows
            where = first_nonfinite_layer(model, data.test.x[: t.eval_batch_size].to(device))
            raise DivergenceError(
                f"test loss became {test_loss} after epoch {epoch + 1} ({ev['phase']} phase) although the training "
                f"objective was {obj_loss:.3g}; {where}; last good checkpoint: {last_good or 'none'}; lower "
                f"train.lr, or use support.apply=gated or another support.rule"
            )
        row = {
            "epoch": st.epoch,
            "phase": ev["phase"],
            "round": ev["round"],
            "lr": lr,
            "iterations": st.step,
            "seconds": round(st.seconds, 3),
            "obj_loss": obj_loss,
        }
        if eval_train is not None:
            row["train_loss"], row["train_acc"] = evaluate(model, eval_train, t.eval_batch_size, device)
        if data.val is not None:  # the split to tune on; never the test set
            row["val_loss"], row["val_acc"] = evaluate(model, data.val, t.eval_batch_size, device)
        row.update(test_loss=test_loss, test_acc=test_acc, test_err=1.0 - test_acc)
        trace.append(
            {
                "epoch": float(st.epoch),
                "iterations": st.step,
                "seconds": round(st.seconds, 3),
                "test_loss": test_loss,
                "test_acc": test_acc,
            }
        )
        if t.trace_train_loss and "train_loss" in row:  # the end-of-epoch train evaluation, already done
            trace[-1]["train_loss"], trace[-1]["train_acc"] = row["train_loss"], row["train_acc"]
        if t.maskt:
            row["maskt_acc"] = evaluate(model, data.test, t.eval_batch_size, device, mode="binary")[1]
        row.update(
            reestimated=int(ev["reestimated"]), mask_change=ev["mask_change"], est_seconds=round(ev["est_seconds"], 3)
        )
        stats = collect_stats(model)
        for name in layer_names:
            row[f"active/{name}"] = stats[name]["active"]
        for name in layer_names:
            row[f"drift/{name}"] = stats[name]["drift"]
        rows.append(row)
        if not main:
            continue
        if not cfg.quiet:
            tqdm.write(
                f"epoch {st.epoch:3d} [{ev['phase']:6s}] obj {obj_loss:.4f}  test loss {test_loss:.4f}  "
                f"acc {test_acc:.4f}  {st.seconds:7.1f}s" + ("  (support re-estimated)" if ev["reestimated"] else "")
            )
        write_metrics(out / "metrics.csv", rows)
        if (t.checkpoint_every and st.epoch % t.checkpoint_every == 0) or t.checkpoint_steps:
            last_good = checkpoint(st.epoch, 0, None)

    if not main:
        distributed.teardown(info)
        return out
    # Final artefacts: weights, curves, summary.
    save_checkpoint(out / "final.pt", {"state_dict": model.state_dict(), "config": cfg.to_dict(), "metrics": rows})
    last = rows[-1]
    summary = {
        "method": cfg.support.method,
        "model": cfg.model.name,
        "data": cfg.data.name,
        "params": count_params(model),
        "test_acc": last["test_acc"],
        "test_loss": last["test_loss"],
        "iterations": last["iterations"],
        "seconds": last["seconds"],
        "curve": [curve_point(r) for r in rows],
        "trace": trace,
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    from .report import plot_run

    plot_run(rows, out / "curves.png", title=f"{cfg.model.name} on {cfg.data.name}: {cfg.support.method}")
    distributed.teardown(info)
    return out


RESUME_FORMAT = 2  # what a checkpoint.pt holds (see _load_resume)


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


def _load_resume(run: Path, cfg: Config) -> dict:
    from .io import load_checkpoint

    ck = run / "checkpoint.pt"
    if not ck.is_file():
        raise ConfigError(
            f"{run} has no checkpoint.pt to resume from; pass a run folder written by "
            f"'supportnet train' (with train.checkpoint_every or train.checkpoint_steps > 0)"
        )
    rs = load_checkpoint(ck)
    if rs.get("format") != RESUME_FORMAT:
        raise ConfigError(
            f"{ck} was written by another supportnet version (resume format "
            f"{rs.get('format')}, this one reads {RESUME_FORMAT}); start a new run"
        )
    saved = resolve_method_defaults(Config.copy(_config_from(rs["config"]))).to_dict()
    mine = resolve_method_defaults(cfg.copy()).to_dict()
    for d in (saved, mine):
        d.pop("out", None), d.pop("quiet", None)
    if saved != mine:
        diff = sorted(
            f"{s}.{k}"
            for s in saved
            if isinstance(saved[s], dict)
            for k in saved[s]
            if saved[s][k] != mine.get(s, {}).get(k)
        )
        raise ConfigError(
            f"the config differs from the one {run} was started with ({', '.join(diff[:4])}); "
            f"resume with the run's own config.yaml"
        )
    return rs


def _config_from(d: dict) -> Config:
    from .config import from_dict

    return from_dict(d)


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


def write_metrics(path: Path, rows: list[dict]) -> None:
    import io

    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())


def to_device(data: DataBundle, device: torch.device) -> DataBundle:
    import dataclasses

    move = lambda s: None if s is None else Split(s.x.to(device), s.y.to(device))
    return dataclasses.replace(data, train=move(data.train), test=move(data.test), val=move(data.val))


def check_config_runs(cfg: Config) -> None:
    if cfg.data.stream and cfg.train.loader == "device":
        raise ConfigError("data.stream=true decodes images on the host; it cannot use train.loader=device")
    if cfg.data.stream and cfg.support.method == "i-alt" and cfg.support.backend == "stored":
        raise ConfigError(
            "stored supports need one fixed view per example, which streamed random crops do not "
            "give; use support.backend=snapshot with data.stream=true"
        )
    if cfg.train.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"train.device={cfg.train.device} but no CUDA device is available; use --set train.device=cpu"
        )
