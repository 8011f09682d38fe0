"""Dense-Sparse-Dense training with support pruning (the paper's Table 8; Han et al., ICLR 2017).

Three phases, each a :func:`~supportnet.train.fit` call with its own learning-rate
schedule, on one model:

1. ``dense``: ``dsd.dense_epochs`` of SGD.
2. ``sparse``: prune, then ``dsd.sparse_epochs`` of retraining with the pruned
   weights held at exactly zero (zeroed after every step, their gradients masked,
   their momentum cleared). The pruning rule is ``dsd.prune``:

   * ``magnitude`` (DSD's baseline): per Conv/Linear layer, the ``dsd.sparsity``
     fraction of smallest-magnitude weights; the sparse step trains with SGD.
   * ``support-b``: a census pass over one epoch of training batches computes each
     threshold layer's batch support (the B-alternation rule); a unit (a channel
     for convolutions, its support taken over all positions) that is on in at most
     a fraction ``dsd.eps`` of batches is pruned, with the weights that feed it
     (its producer's output channel, bias and batch-norm scale/shift) and the
     weights it feeds (its consumer's input channel). The sparse step trains with
     B-alternation. The sparsity is an output.
   * ``support-i``: the same with per-example supports (a unit on for at most
     ``eps`` of the examples); the sparse step trains with I-alternation.
   * ``channel-l2`` (a structured baseline, Li et al. 2017 with the L2 norm): per prunable
     threshold layer, the units whose producer filters have the smallest L2 norm, with the
     weights in and out of them as for support pruning; the sparse step trains with SGD.

   Equal sparsity (docs/results.md, "DSD at equal sparsity"): ``dsd(..., match=pruning)`` makes ``magnitude`` prune, in
   every weight tensor, exactly as many weights as ``pruning`` (e.g. support pruning's)
   zeroed there, and ``channel-l2`` exactly as many units per layer; without ``match``
   they prune the ``dsd.sparsity`` fraction (of weights, of units). ``dsd(..., start=
   state_dict)`` skips the dense phase and starts from a given (converged) dense model.

3. ``redense``: the pruned weights restart at zero and everything trains with SGD
   for ``dsd.redense_epochs`` at ``dsd.redense_lr`` (default 0.1x, as DSD advises).
   A whole pruned unit is a stationary point at zero (no gradient reaches either
   side), so its *producer* weights are redrawn from the default initialisation
   while its consumer weights restart at zero (see :func:`revive`).

Units are pruned only where the graph is a chain: producer Conv/Linear (optionally
followed by batch norm) -> threshold -> channel-wise ops (pooling, dropout,
flatten) -> consumer Conv/Linear, each with a single user (checked with torch.fx).
Threshold layers elsewhere (residual sums, concatenations, the class maps of NIN)
are left alone and reported.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import torch
from torch import nn

from . import cuda_graphs
from .artifacts import arch_of, plain_state_dict, taus_of
from .build import build
from .checkpoint import load_checkpoint, save_checkpoint
from .config import Config, check_same_config
from .data import batches, epoch_order
from .errors import ConfigError
from .export import export_model
from .io import atomic_write_text
from .layers import batch_support, configure
from .models import count_params
from .runfolder import claim_run_folder, releases_run_folders
from .step import evaluate
from .train import fit, is_finished
from .units import Pruning, Unit, compact, count_flops, find_units

_log = logging.getLogger("supportnet")

# ----------------------------------------------------------------------------- pruning rules


def magnitude_pruning(model: nn.Module, sparsity: float, counts: dict[str, int] | None = None) -> Pruning:
    """DSD's rule: per Conv/Linear layer, the ``sparsity`` fraction of smallest-magnitude weights,
    or exactly ``counts[param name]`` of them where ``counts`` is given (layers it omits: none).
    Ties at the threshold are kept, so a layer can lose slightly fewer than asked."""
    pr = Pruning()
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            w = mod.weight.detach()
            k = int(sparsity * w.numel()) if counts is None else int(counts.get(f"{name}.weight", 0))
            keep = torch.ones_like(w, dtype=torch.bool)
            if k:
                thr = w.abs().flatten().kthvalue(k).values
                keep = w.abs() > thr
            pr.keep[f"{name}.weight"] = keep
    return pr


@torch.no_grad()
def support_census(
    model: nn.Module,
    units: list[Unit],
    train,
    batch_size: int,
    kind: str,
    seed: int,
    rule: str = "energy-rel",
    beta: float = 0.1,
    device=None,
) -> dict[str, tuple[torch.Tensor, int]]:
    """Per unit channel, in how many batches (``kind='b'``) or examples (``'i'``) its support is on."""
    mods = dict(model.named_modules())
    counts = {u.act: torch.zeros(u.channels, dtype=torch.long) for u in units}
    total = 0
    captured: dict[str, torch.Tensor] = {}
    hooks = []
    for u in units:

        def hook(m, inp, out, name=u.act):
            q = inp[0]
            if kind == "b":
                captured[name] = batch_support(q, m.tau, rule, beta)  # (*unit)
            else:
                captured[name] = q > m.tau  # (B, *unit)

        hooks.append(mods[u.act].register_forward_hook(hook))
    was = model.training
    model.eval()
    try:
        configure(model, mode="free")
        for x, _, _ in batches(train, batch_size, epoch_order(len(train), seed, 0)):
            model(x.to(device))
            for u in units:
                m = captured[u.act]
                if kind == "b":
                    counts[u.act] += m.reshape(u.channels, -1).any(1).long().cpu()
                else:
                    counts[u.act] += m.reshape(m.shape[0], u.channels, -1).any(2).sum(0).long().cpu()
            total += 1 if kind == "b" else x.shape[0]
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return {k: (v, total) for k, v in counts.items()}


def unit_pruning(model: nn.Module, units: list[Unit], census: dict, eps: float) -> Pruning:
    """Prune every unit on in at most ``eps`` of the census, with the weights in and out of it."""
    dead_by = {}
    for u in units:
        on, total = census[u.act]
        dead = (on.double() <= eps * total).nonzero().flatten()
        if dead.numel() == u.channels:  # never remove a whole layer: keep its most active unit
            dead = dead[dead != int(on.argmax())]
        dead_by[u.act] = dead
    return prune_units(model, units, dead_by)


def channel_norm_pruning(
    model: nn.Module, units: list[Unit], counts: dict[str, int] | None = None, fraction: float = 0.3
) -> Pruning:
    """Prune, per threshold layer, the units whose producer filter (weights into the unit, bias
    included) has the smallest L2 norm: ``counts[layer]`` of them, or the ``fraction`` of the
    layer's units; never a whole layer. Weights in and out go as in :func:`unit_pruning`."""
    mods = dict(model.named_modules())
    dead_by = {}
    for u in units:
        k = int(counts.get(u.act, 0)) if counts is not None else int(fraction * u.channels)
        k = min(k, u.channels - 1)
        if k <= 0:
            continue
        p = mods[u.producer]
        w = p.weight.detach().reshape(u.channels, -1)
        sq = (w**2).sum(1) + (p.bias.detach() ** 2 if p.bias is not None else 0.0)
        dead_by[u.act] = torch.argsort(sq, stable=True)[:k].sort().values
    return prune_units(model, units, dead_by)


def prune_units(model: nn.Module, units: list[Unit], dead_by: dict[str, torch.Tensor]) -> Pruning:
    """The :class:`Pruning` that removes the channels ``dead_by[layer]`` of each unit layer, with the
    weights that feed them (producer rows, bias, batch norm) and the weights they feed (consumer columns)."""
    mods = dict(model.named_modules())
    pr = Pruning(keep={n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters()})
    for u in units:
        dead = dead_by.get(u.act)
        if dead is None or not dead.numel():
            continue
        pr.units[u.act] = dead.tolist()
        pr.keep[f"{u.producer}.weight"][dead] = False
        if mods[u.producer].bias is not None:
            pr.keep[f"{u.producer}.bias"][dead] = False
        if u.bn:
            pr.keep[f"{u.bn}.weight"][dead] = False
            pr.keep[f"{u.bn}.bias"][dead] = False
        cw = pr.keep[f"{u.consumer}.weight"]
        if u.block == 1:
            cw[:, dead] = False
        else:
            cols = (dead[:, None] * u.block + torch.arange(u.block)[None, :]).flatten()
            cw[:, cols] = False
    pr.keep = {n: m for n, m in pr.keep.items() if not m.all()}
    return pr


def pruned_counts(pruning: Pruning) -> dict:
    """What ``pruning`` removes: weights per weight tensor (``weights``) and units per layer (``units``),
    the counts a pruning at equal sparsity must match."""
    return {
        "weights": {n: int((~m).sum()) for n, m in pruning.keep.items() if m.dim() > 1 and not m.all()},
        "units": {k: len(v) for k, v in pruning.units.items()},
    }


class Enforcer:
    """Hold pruned weights at exactly zero: weights zeroed after every step, gradients masked
    (a hook), momentum buffers cleared at the pruned positions."""

    def __init__(self, pruning: Pruning):
        self.pruning = pruning
        self.handles: list = []

    def __call__(self, model: nn.Module, opt: torch.optim.Optimizer) -> None:
        params = dict(model.named_parameters())
        if not self.handles:
            for n, keep in self.pruning.keep.items():
                k = keep.to(params[n].device)
                self.handles.append(params[n].register_hook(lambda g, k=k: g * k))
        with torch.no_grad():
            for n, keep in self.pruning.keep.items():
                p = params[n]
                k = keep.to(p.device)
                p.mul_(k)
                buf = opt.state.get(p, {}).get("momentum_buffer")
                if buf is not None:
                    buf.mul_(k)

    def release(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def revive(model: nn.Module, units: list[Unit], pruning: Pruning, seed: int = 0) -> list[str]:
    """Make the pruned units of ``pruning`` trainable again for re-dense.

    A unit whose weights in *and* out are all zero is a stationary point: its output is
    zero, so neither side gets a gradient. So its consumer weights restart at zero (the
    network computes exactly what the sparse one did) while its producer weights are
    drawn afresh from the layer's default initialisation (and a batch-norm scale reset
    to 1), which gives the unit an output and its consumer weights a gradient.
    Unstructured (magnitude) pruning needs none of this: its zeros restart as they are.
    """
    mods = dict(model.named_modules())
    g = torch.random.fork_rng()
    done = []
    with g, torch.no_grad():
        torch.manual_seed(seed)
        for u in units:
            dead = pruning.units.get(u.act)
            if not dead:
                continue
            p = mods[u.producer]
            fresh = copy.deepcopy(p)
            fresh.reset_parameters()
            p.weight[dead] = fresh.weight[dead].to(p.weight.device)
            if u.bn:
                mods[u.bn].weight[dead] = 1.0
            done.append(u.act)
    return done


# ----------------------------------------------------------------------------- the three phases


def _phase_cfg(cfg: Config, phase: str, epochs: int, lr: float, method: str, out: Path) -> Config:
    c = cfg.copy()
    c.train.epochs, c.train.lr = epochs, lr
    c.support.method = method
    c.support.warmup = 0 if phase == "sparse" else c.support.warmup
    c.support.consistency = None
    c.out = str(out / phase)
    return c


class _Phases:
    """Runs, finishes (after a resume) or loads each DSD phase, recording it in ``res``."""

    def __init__(self, model, data, res: dict, log, resume: bool, overwrite: bool):
        self.model, self.data, self.res, self.log = model, data, res, log
        self.resume, self.overwrite = resume, overwrite

    def record(self, phase: str, run: Path) -> None:
        s = json.loads((run / "summary.json").read_text())
        self.res["phases"][phase] = {"test_acc": s["test_acc"], "test_loss": s["test_loss"],
                                     "epochs": len(s["curve"]), "run": str(run)}  # fmt: skip
        self.log(f"{phase}: test accuracy {100 * s['test_acc']:.2f}%")

    def run(self, name: str, pcfg: Config, hook=None) -> bool:
        """Run (or finish, or load) one phase; True if it had already finished."""
        run = Path(pcfg.out)
        if self.resume and is_finished(run):
            self.model.load_state_dict(load_checkpoint(run / "final.pt", kind="final")["state_dict"])
            self.record(name, run)
            return True
        again = self.resume and (run / "checkpoint.pt").is_file()
        # under a resume, a phase folder without a checkpoint holds this run's own start: redone
        ow = self.overwrite or self.resume
        self.record(name, fit(pcfg, self.data, self.model, step_hook=hook, resume=run if again else None, overwrite=ow))
        return False


@releases_run_folders
def dsd(
    cfg: Config,
    out: str | Path | None = None,
    data=None,
    log=None,
    resume: bool = False,
    overwrite: bool = False,
    start: dict | None = None,
    match: dict | None = None,
) -> dict:
    """Run the three phases (module docstring); write ``out/dsd.json`` and ``out/sparse.pt``.

    ``resume=True`` continues an interrupted DSD run in ``out``: finished phases are loaded
    from their ``final.pt``, the pruning from ``out/pruning.pt``, and an interrupted phase
    resumes from its own checkpoint (exactly, as ``supportnet train --resume`` does). A
    finished DSD run (its ``dsd.json``, written last, is there) is read-only: its ``dsd.json``
    is returned, one line logged, and nothing written (:func:`dsd_finished_note`).
    ``out`` is claimed for this run once the config, data and model are valid, and its config
    written to ``out/dsd-config.yaml`` (what ``--resume`` reads); a folder holding another
    run's files is refused unless ``overwrite`` (:mod:`supportnet.runfolder`).
    ``start``: a dense model's state dict; the dense phase is skipped and DSD starts from it.
    ``match``: the :func:`pruned_counts` of another pruning (e.g. ``res["pruned_counts"]`` of a
    support-pruning run) that ``magnitude`` and ``channel-l2`` reproduce exactly (weights per
    tensor, units per layer).
    """
    out = Path(out or cfg.out or "runs/dsd")
    if resume and (note := dsd_finished_note(out, cfg)):  # a finished run is read-only: said, nothing written
        (log or _log.warning)(note)
        return json.loads((out / "dsd.json").read_text(encoding="utf-8"))
    log = log or _log.info  # a library logs; the command line shows it
    ds = cfg.dsd
    if min(ds.dense_epochs, ds.sparse_epochs) < 1:
        raise ConfigError("dsd needs dense_epochs >= 1 and sparse_epochs >= 1; fix the values")
    cuda_graphs.check_hook(cfg, Enforcer)  # the sparse phase's hook: refused now, not after the dense phase
    if resume and not (out / "dense").is_dir():
        raise ConfigError(f"{out} holds no DSD run to resume (no dense/ folder); drop --resume to start one")
    data, model = build(cfg, data)
    claim_run_folder(out, resume=resume, overwrite=overwrite)
    if not resume:
        atomic_write_text(out / "dsd-config.yaml", cfg.to_yaml())
    device = torch.device(cfg.train.device)
    res: dict = {"prune": ds.prune, "config": cfg.to_dict(), "phases": {}}
    phases = _Phases(model, data, res, log, resume, overwrite)
    # Dense: plain SGD (or a given dense model, e.g. trained to convergence once for every rule)
    if start is None:
        phases.run("dense", _phase_cfg(cfg, "dense", ds.dense_epochs, cfg.train.lr, "sgd", out))
    else:
        model.load_state_dict(start)
        model.to(device)
        loss, acc = evaluate(model, data.test, cfg.train.eval_batch_size, device)
        res["phases"]["dense"] = {"test_acc": acc, "test_loss": loss, "epochs": 0, "run": "given (start=)"}
    # Sparse: prune (by magnitude, filter norm, or the learned support), retrain with the pruned weights at zero
    units, skipped = find_units(model) if ds.prune != "magnitude" else ([], [])
    pruning = _pruning(cfg, model, data, units, skipped, match, res, out / "pruning.pt", resume, device)
    method = {"magnitude": "sgd", "channel-l2": "sgd", "support-b": "b-alt", "support-i": "i-alt"}[ds.prune]
    enforce = Enforcer(pruning)
    phases.run("sparse", _phase_cfg(cfg, "sparse", ds.sparse_epochs, ds.sparse_lr or cfg.train.lr, method, out),
               hook=enforce)  # fmt: skip
    enforce.release()
    _save_sparse(cfg, model, data, units, pruning, skipped, res, out)
    log(
        f"sparse: {100 * res['sparsity']['weights']:.1f}% of weights pruned; compact model "
        f"{res['params']['compact']:,} parameters (dense {res['params']['dense']:,})"
    )
    # Re-dense: the pruned weights restart at zero, at a lower rate
    if ds.redense_epochs:
        rcfg = _phase_cfg(cfg, "redense", ds.redense_epochs, ds.redense_lr or 0.1 * cfg.train.lr, "sgd", out)
        if not (resume and (Path(rcfg.out) / "checkpoint.pt").is_file()):
            res["revived"] = revive(model, units, pruning, cfg.train.seed)
        phases.run("redense", rcfg)
    res["final_test_acc"] = evaluate(model, data.test, cfg.train.eval_batch_size, device)[1]
    atomic_write_text(out / "dsd.json", json.dumps(res, indent=1))
    return res


def dsd_finished_note(out: str | Path, cfg: Config) -> str | None:
    """The one line to say instead of resuming the DSD run in ``out`` if it has finished (its
    ``dsd.json`` and ``sparse.pt`` are there), else None. ``cfg`` must be the config it ran with
    (a ConfigError otherwise: a finished run is not continued with changes)."""
    out = Path(out)
    if not ((out / "dsd.json").is_file() and (out / "sparse.pt").is_file()):
        return None
    try:
        saved = json.loads((out / "dsd.json").read_text(encoding="utf-8"))["config"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(
            f"{out / 'dsd.json'} cannot be read ({type(e).__name__}); the finished run's record is damaged: "
            f"start a new run with a new --out"
        ) from None
    check_same_config(saved, cfg, out, "a finished run is not changed: start a new run with a new --out")
    return (
        f"{out} holds a finished DSD run (dsd.json); nothing to resume: its files are left as they are "
        f"(a new run needs a new --out)"
    )


def _pruning(cfg: Config, model, data, units, skipped, match, res: dict, saved: Path, resume: bool, device):
    """The Sparse step's pruning: loaded after a resume, else chosen by ``dsd.prune`` (and saved)."""
    ds = cfg.dsd
    if resume and saved.is_file():
        pk = load_checkpoint(saved, kind="pruning")
        res["census"] = pk.get("census")
        pruning = Pruning(keep=pk["keep"], units={k: list(v) for k, v in pk["units"].items()})
        pruning.left_alone = skipped
        return pruning
    if ds.prune == "magnitude":
        pruning = magnitude_pruning(model, ds.sparsity, match["weights"] if match else None)
    elif not units:
        raise ConfigError(
            f"no threshold layer of {cfg.model.name} can be pruned by units ({ds.prune}) "
            f"({'; '.join(skipped) or 'none found'}); use dsd.prune=magnitude"
        )
    elif ds.prune == "channel-l2":
        pruning = channel_norm_pruning(model, units, match["units"] if match else None, ds.sparsity)
    else:
        t, s = cfg.train, cfg.support
        census = support_census(model, units, data.train, t.batch_size, ds.prune[-1], t.seed, s.rule, s.beta, device)
        pruning = unit_pruning(model, units, census, ds.eps)
        res["census"] = {k: {"on": v.tolist(), "of": n} for k, (v, n) in census.items()}
    save_checkpoint(saved, {"keep": pruning.keep, "units": pruning.units, "census": res.get("census")}, kind="pruning")
    pruning.left_alone = skipped
    return pruning


def _save_sparse(cfg: Config, model, data, units, pruning, skipped, res: dict, out: Path) -> None:
    """The Sparse step's figures (sparsity, compact size and FLOPs) into ``res``, and ``out/sparse.pt``."""
    res["sparsity"] = pruning.sparsity(model)
    res["pruned_units"] = pruning.units
    res["pruned_counts"] = pruned_counts(pruning)
    res["left_alone"] = skipped
    small = compact(model, units, pruning)
    res["params"] = {"dense": count_params(model), "compact": count_params(small)}
    res["flops"] = {"dense": count_flops(model, data.in_shape), "compact": count_flops(small, data.in_shape)}
    save_checkpoint(
        out / "sparse.pt",
        {
            "state_dict": plain_state_dict(model),
            "config": cfg.to_dict(),
            "keep": pruning.keep,
            "units": pruning.units,
            "arch": arch_of(cfg, data.in_shape, data.num_classes),
            "taus": taus_of(model),
        },
        kind="sparse",
    )


def export_compact(sparse_ckpt: str | Path, dest: str | Path) -> dict:
    """Write the physically smaller model of a DSD sparse checkpoint (``supportnet export --compact``),
    after checking its outputs against the masked model's; see :func:`supportnet.export.export_model`."""
    return export_model(sparse_ckpt, "state_dict", dest, compact=True)


def dsd_table(results: dict[str, dict]) -> str:
    """Markdown: accuracy after each phase, sparsity, compact parameters, per row."""
    lines = [
        "| row | dense acc (%) | sparse acc (%) | re-dense acc (%) | weights pruned (%) | units pruned | "
        "compact params |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        ph = r.get("phases", {})
        acc = [f"{100 * ph[p]['test_acc']:.2f}" if p in ph else "–" for p in ("dense", "sparse", "redense")]
        sp = r.get("sparsity", {})
        units = sum(sp.get("units", {}).values()) if sp else 0
        lines.append(
            f"| {name} | {' | '.join(acc)} | {100 * sp.get('weights', 0):.1f} | {units} | "
            f"{r.get('params', {}).get('compact', 0):,} |"
        )
    return "\n".join(lines) + "\n"
