"""``supportnet theory ...``: the Section 3 claims as commands that print real numbers.

* ``lift-check``  - F(x_n) = U_n v against the network's forward, random FC/conv nets (Eq. 14-19)
* ``planted``     - planted two-layer teacher: oracle support vs plain ReLU vs alternation
* ``solvers``     - local descent, ALS, lifted+SVD, SVP on the default planted problem (P1-P3)
* ``check-rip``   - Theorem 1 (Eq. 29) quantities for the first layer of a CNN on real data
* ``three-layer`` - oracle-support descent on a planted three-layer teacher
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .._optional import plot
from ..errors import ConfigError
from ..io import atomic_write_text


def add_parser(sub, add_overwrite=None) -> None:
    """The ``theory`` command and its actions; ``add_overwrite(parser)`` adds ``--overwrite`` to
    the actions that write a folder."""
    t = sub.add_parser("theory", help="Section 3: lifting, recovery given support, Theorem 1, planted teachers")
    t.set_defaults(func=run)
    ts = t.add_subparsers(dest="theory_cmd", metavar="ACTION", parser_class=type(t))
    lc = ts.add_parser("lift-check", help="check F(x_n) = U_n v on random small networks (float64)")
    lc.add_argument("--seed", type=int, default=0)
    for name, helptext in (
        ("planted", "planted two-layer teacher, three methods from shared random starts"),
        ("solvers", "time each two-layer solver to relative loss 1e-10"),
    ):
        p = ts.add_parser(name, help=helptext)
        p.add_argument("--d", type=int, default=20, help="input dimension")
        p.add_argument("--h", type=int, default=10, help="hidden units")
        p.add_argument("--o", type=int, default=5, help="outputs")
        p.add_argument("--n", type=int, default=500, help="training samples")
        p.add_argument("--tau", type=float, default=0.0, help="threshold of the teacher's units")
        p.add_argument("--starts", type=int, default=50, help="random starts shared by the methods")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--max-steps", type=int, default=3000, help="gradient steps per start")
        p.add_argument("--out", help="folder for JSON, table and plot (default runs/theory-<action>)")
        if add_overwrite:
            add_overwrite(p)
        if name == "planted":
            p.add_argument("--widths", help="grid of hidden widths, e.g. 5,10,20 (sweep)")
            p.add_argument("--samples", help="grid of sample counts, e.g. 100,250,500 (sweep)")
    cr = ts.add_parser("check-rip", help="Theorem 1 quantities for the first layer of a CNN on real data")
    cr.add_argument("--data", default="fashion-mnist")
    cr.add_argument("--data-dir")
    cr.add_argument("--checkpoint", help="final.pt of a convnet-s run (default: train 1 epoch on 10k images)")
    cr.add_argument("--n", type=int, default=256, help="examples stacked into U")
    cr.add_argument("--seed", type=int, default=0)
    cr.add_argument("--out", help="folder for the JSON result")
    if add_overwrite:
        add_overwrite(cr)
    tl = ts.add_parser("three-layer", help="oracle-support descent on a planted three-layer teacher")
    tl.add_argument("--starts", type=int, default=20)
    tl.add_argument("--seed", type=int, default=0)
    tl.add_argument("--out")
    if add_overwrite:
        add_overwrite(tl)


#: The range of every integer option of the theory actions: enough for every experiment in
#: docs/theory.md, small enough that a typo cannot ask for terabytes (``--widths 100000000``).
LIMITS = {
    "d": (1, 1000),
    "h": (1, 1000),
    "o": (1, 1000),
    "n": (1, 100_000),
    "starts": (1, 10_000),
    "max_steps": (1, 10_000_000),
    "seed": (0, 2**62),
    "widths": (1, 1000),
    "samples": (1, 100_000),
}
#: check-rip stacks N examples' patches and masks in float64: N x 9 x H x W x (1 + channels).
CHECK_RIP_MAX_N = 4096
#: The largest two-layer problem: h*d unknowns per output (the Gram matrix of the design is (h*d)^2).
MAX_UNKNOWNS = 4096


def _flag(k: str) -> str:
    return "--" + k.replace("_", "-")


def _in_range(k: str, v: int) -> None:
    lo, hi = LIMITS[k]
    if not lo <= v <= hi:
        raise ConfigError(f"{_flag(k)} must be between {lo} and {hi:,}, got {v}; fix the value")


def _ints(s: str | None, name: str) -> list[int] | None:
    if s is None:
        return None
    try:
        vals = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--{name} must be comma-separated integers, got {s!r}; e.g. --{name} 5,10,20") from None
    if not vals or min(vals) <= 0:
        raise ConfigError(f"--{name} needs positive integers, got {s!r}; e.g. --{name} 5,10,20")
    for v in vals:
        _in_range(name, v)
    return vals


def _check_sizes(a) -> None:
    """Every integer option within :data:`LIMITS`, and the two-layer problem within :data:`MAX_UNKNOWNS`."""
    import math

    if getattr(a, "tau", None) is not None and not math.isfinite(a.tau):
        raise ConfigError(f"--tau must be a finite number, got {a.tau}; e.g. --tau 0.1")
    for k in ("d", "h", "o", "n", "starts", "max_steps", "seed"):
        v = getattr(a, k, None)
        if v is None:
            continue
        if v <= 0 and k != "seed":
            raise ConfigError(f"{_flag(k)} must be positive, got {v}; fix the value")
        if k == "n" and a.theory_cmd == "check-rip":
            if v > CHECK_RIP_MAX_N:
                raise ConfigError(f"--n must be at most {CHECK_RIP_MAX_N} for check-rip, got {v}; e.g. --n 256")
            continue
        _in_range(k, v)
    widths = _ints(getattr(a, "widths", None), "widths") or ([a.h] if getattr(a, "h", None) else [])
    if widths and getattr(a, "d", None):
        _ints(getattr(a, "samples", None), "samples")
        if max(widths) * a.d > MAX_UNKNOWNS:
            raise ConfigError(
                f"a planted problem of width {max(widths)} on d={a.d} inputs has {max(widths) * a.d:,} unknowns "
                f"per output, more than the {MAX_UNKNOWNS:,} these experiments handle; use smaller --widths/--h or --d"
            )


def _claim(a, out: Path):
    """The output folder of a theory action, claimed once its results are ready to write."""
    from ..runfolder import claim_run_folder

    return claim_run_folder(out, overwrite=getattr(a, "overwrite", False), resumable=False)


def run(a) -> int:
    import torch  # here, not at the top: building the command line must not import torch

    from ..runfolder import check_run_folder

    torch.set_num_threads(1)  # tiny float64 problems: one thread avoids oversubscription overhead
    cmd = a.theory_cmd
    if cmd is None:
        raise ConfigError("missing theory action; choose lift-check, planted, solvers, check-rip or three-layer")
    _check_sizes(a)
    out = Path(a.out) if getattr(a, "out", None) else Path("runs") / f"theory-{cmd}"
    if cmd == "lift-check":
        return lift_check(a.seed)
    check_run_folder(out, overwrite=a.overwrite, resumable=False)  # refuse a taken folder before computing
    if cmd == "planted":
        return planted(a, out)
    if cmd == "solvers":
        return solvers(a, out)
    if cmd == "check-rip":
        return check_rip(a, out)
    if cmd == "three-layer":
        return three_layer(a, out)
    return 2


def lift_check(seed: int) -> int:
    import torch
    from torch import nn

    from ..layers import HardThreshold
    from .lifting import check_lifting

    torch.manual_seed(seed)
    nets = {
        "fc-fc (2 layers)": (
            nn.Sequential(nn.Linear(6, 5, bias=False), HardThreshold(), nn.Linear(5, 3, bias=False)),
            (6,),
        ),
        "fc-fc-fc (3 layers)": (
            nn.Sequential(
                nn.Linear(6, 5, bias=False),
                HardThreshold(),
                nn.Linear(5, 4, bias=False),
                HardThreshold(),
                nn.Linear(4, 3, bias=False),
            ),
            (6,),
        ),
        "conv-fc (2 layers)": (
            nn.Sequential(
                nn.Conv2d(1, 2, 3, padding=1, bias=False),
                HardThreshold(),
                nn.Flatten(),
                nn.Linear(2 * 5 * 5, 3, bias=False),
            ),
            (1, 5, 5),
        ),
        "conv-conv-fc (3 layers)": (
            nn.Sequential(
                nn.Conv2d(2, 2, 3, padding=1, bias=False),
                HardThreshold(),
                nn.Conv2d(2, 2, 3, stride=2, bias=False),
                HardThreshold(),
                nn.Flatten(),
                nn.Linear(2 * 2 * 2, 3, bias=False),
            ),
            (2, 6, 6),
        ),
    }
    print("| network | max relative error of U_n v vs forward (float64, 4 inputs) |")
    print("|---|---:|")
    worst = 0.0
    for name, (net, shape) in nets.items():
        err = check_lifting(net, torch.randn(4, *shape))
        worst = max(worst, err)
        print(f"| {name} | {err:.2e} |")
    print(f"identity {'holds' if worst < 1e-10 else 'FAILS'} (worst {worst:.2e}, threshold 1e-10)")
    return 0 if worst < 1e-10 else 1


def _fmt(v, spec=".3g"):
    return "–" if v is None else format(v, spec)


def planted(a, out: Path) -> int:
    from .planted import PlantedConfig, run_planted

    widths = _ints(a.widths, "widths") or [a.h]
    samples = _ints(a.samples, "samples") or [a.n]
    results = []
    t0 = time.perf_counter()
    from tqdm import tqdm

    grid = [(h, n) for h in widths for n in samples]
    for h, n in tqdm(grid, desc="planted problems", disable=len(grid) == 1):
        cfg = PlantedConfig(d=a.d, h=h, o=a.o, n=n, tau=a.tau, starts=a.starts, seed=a.seed, max_steps=a.max_steps)
        results.append(run_planted(cfg))
    lines = [
        "| d | h | o | N | N·o/(h·d·o) | oracle | plain ReLU | alternation | median iters (oracle / ReLU / alt rounds) "
        "| seconds, all starts (oracle / ReLU / alt) | Thm 1 holds (literal / identifiable part) |",
        "|---|---|---|---|---:|---:|---:|---:|---|---|---|",
    ]
    for r in results:
        p, m = r["problem"], r["methods"]
        lines.append(
            f"| {p['d']} | {p['h']} | {p['o']} | {p['n']} | {p['size_ratio']:.2f} "
            f"| {m['oracle']['successes']}/{m['oracle']['starts']} "
            f"| {m['relu']['successes']}/{m['relu']['starts']} "
            f"| {m['alternation']['successes']}/{m['alternation']['starts']} "
            f"| {_fmt(m['oracle']['median_iterations_to_success'])} / "
            f"{_fmt(m['relu']['median_iterations_to_success'])} / "
            f"{_fmt(m['alternation']['median_iterations_to_success'])} "
            f"| {m['oracle']['seconds']:.1f} / {m['relu']['seconds']:.1f} / {m['alternation']['seconds']:.1f} "
            f"| {'yes' if r['theorem1']['literal_holds'] else 'no'} / "
            f"{'yes' if r['theorem1']['identifiable_holds'] else 'no'} |"
        )
    table = "\n".join(lines) + "\n"
    secs = time.perf_counter() - t0
    with _claim(a, out):
        atomic_write_text(out / "planted.json", json.dumps({"results": results, "seconds": secs}, indent=2))
        atomic_write_text(out / "planted.md", table)
        _plot_planted(results, out / "planted.png")
    print(table, end="")
    print(
        f"success: relative loss < 1e-8 or per-unit products within 1e-6 of the teacher; "
        f"{a.starts} shared random starts; {secs:.1f}s"
    )
    print(f"written: {out / 'planted.json'}, {out / 'planted.md'}, {out / 'planted.png'}")
    return 0


@plot
def _plot_planted(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..report import _save

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    r0 = results[0]
    colors = {"oracle": "C0", "relu": "C1", "alternation": "C2"}
    for name, m in r0["methods"].items():
        for i, c in enumerate(m["curves"]):
            xs = [k * c["every"] for k in range(len(c["values"]))]
            a.semilogy(
                xs,
                [max(v, 1e-16) for v in c["values"]],
                color=colors[name],
                alpha=0.5,
                lw=0.8,
                label=name if i == 0 else None,
            )
    a.set_xscale("symlog", linthresh=10)
    a.set_xlabel("iteration (alternation: round)"), a.set_ylabel("relative loss")
    p = r0["problem"]
    a.set_title(f"d={p['d']} h={p['h']} o={p['o']} N={p['n']}: first 10 starts", fontsize=9)
    a.legend(fontsize=8), a.grid(alpha=0.3)
    widths = sorted({r["problem"]["h"] for r in results})
    styles = ["-", "--", ":", "-."]
    for name in ("oracle", "relu", "alternation"):
        for wi, h in enumerate(widths):
            rs = sorted((r for r in results if r["problem"]["h"] == h), key=lambda r: r["problem"]["size_ratio"])
            b.plot(
                [r["problem"]["size_ratio"] for r in rs],
                [r["methods"][name]["success_rate"] for r in rs],
                marker="o",
                ls=styles[wi % 4],
                color=colors[name],
                label=f"{name}, h={h}" if len(widths) > 1 else name,
            )
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    b.set_xscale("log")
    b.xaxis.set_major_formatter(ScalarFormatter())
    b.xaxis.set_minor_formatter(NullFormatter())
    b.set_xlabel("size ratio N·o / (h·d·o)"), b.set_ylabel("success rate"), b.set_ylim(-0.05, 1.05)
    b.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5)), b.grid(alpha=0.3)
    _save(fig, path)


def solvers(a, out: Path) -> int:
    from .planted import PlantedConfig, solver_times

    cfg = PlantedConfig(d=a.d, h=a.h, o=a.o, n=a.n, tau=a.tau, seed=a.seed, max_steps=a.max_steps)
    rows = solver_times(cfg)
    lines = [
        "| solver | final relative loss | iterations to 1e-10 | seconds to 1e-10 | seconds | distance to teacher |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['solver']} | {r['final_rel_loss']:.2e} | {_fmt(r['iterations_to_tol'], 'd')} "
            f"| {_fmt(r['seconds_to_tol'], '.3f')} | {r['seconds']:.3f} | {_fmt(r['distance_to_teacher'], '.2e')} |"
        )
    table = "\n".join(lines) + "\n"
    with _claim(a, out):
        atomic_write_text(out / "solvers.json", json.dumps(rows, indent=2))
        atomic_write_text(out / "solvers.md", table)
    print(table, end="")
    print(
        "distance: relative Frobenius distance between per-unit products W2[:, j] W1[j, :] "
        "(invariant to the per-unit scaling symmetry)"
    )
    return 0


def _rip_model(path: str, data, fix: str):
    """The model of a run's ``final.pt``; a checkpoint of another model, or another file's dict,
    is one line, not a KeyError."""
    from ..checkpoint import load_checkpoint
    from ..models import create_model

    ck = load_checkpoint(path)
    try:
        mc = ck["config"]["model"]
        model = create_model(mc["name"], in_shape=data.in_shape, num_classes=data.num_classes, **mc.get("kwargs", {}))
        model.load_state_dict(ck["state_dict"])
        model.features[0].kernel_size  # noqa: B018 - the layer the theorem is checked on
    except (KeyError, TypeError, AttributeError, IndexError, RuntimeError) as e:
        raise ConfigError(f"{path} is not a convnet-s final.pt ({type(e).__name__}); {fix}") from None
    return model


def check_rip(a, out: Path) -> int:
    import tempfile

    import torch
    import torch.nn.functional as F

    from ..checkpoint import load_checkpoint
    from ..config import load_config
    from ..data import load_data
    from ..layers import record_masks
    from ..models import create_model
    from ..paths import check_input_file
    from ..train import fit
    from .recovery import theorem1_from_gram_eigs

    fix = "pass the final.pt of a 'supportnet train' run of convnet-s"
    if a.checkpoint:
        check_input_file(a.checkpoint, "checkpoint", fix)
    data = load_data(a.data, a.data_dir, seed=a.seed)
    if a.n > len(data.train):
        raise ConfigError(f"--n {a.n} is more than the {len(data.train)} training examples of {a.data}; lower --n")
    if a.checkpoint:
        model = _rip_model(a.checkpoint, data, fix)
        source = f"checkpoint {a.checkpoint}"
    else:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = load_config(
                None,
                [
                    ("data.name", a.data),
                    ("data.subset", 10000),
                    ("train.epochs", 1),
                    ("quiet", True),
                    ("out", tmp),
                    ("train.seed", a.seed),
                    ("train.train_eval_size", 0),
                ]
                + ([("data.data_dir", a.data_dir)] if a.data_dir else []),
            )
            run = fit(cfg, data=data)
            model = create_model("convnet-s", in_shape=data.in_shape, num_classes=data.num_classes)
            model.load_state_dict(load_checkpoint(run / "final.pt")["state_dict"])
        source = f"convnet-s trained 1 epoch on 10,000 images (seed {a.seed})"
    model = model.double().eval()
    conv = model.features[0]
    x = data.train.x[: a.n].double()
    masks = record_masks(model, x)[0]  # (N, C, H, W): support of the first threshold layer
    patches = F.unfold(x, conv.kernel_size, padding=conv.padding, stride=conv.stride)  # (N, Q, L)
    has_bias = conv.bias is not None
    if has_bias:  # the bias is one more parameter: a constant-one row in every patch
        patches = torch.cat([patches, torch.ones_like(patches[:, :1])], 1)
    C = masks.shape[1]
    mflat = masks.reshape(a.n, C, -1).double()  # (N, C, L)
    # U^T U is block diagonal over output channels: G_c = sum_n P_n diag(m_n[c]) P_n^T
    G = torch.einsum("nql,ncl,nrl->cqr", patches, mflat, patches)
    eigs = torch.linalg.eigvalsh(G).flatten()
    m = a.n * C * patches.shape[2]
    res = theorem1_from_gram_eigs(eigs, m, C * patches.shape[1])
    res.update(
        source=source,
        layer="features.0 (conv 3x3) with its support from features.1",
        examples=a.n,
        bias_included=has_bias,
        active_fraction=mflat.mean().item(),
    )
    with _claim(a, out):
        atomic_write_text(out / "check-rip.json", json.dumps(res, indent=2))
    print(f"Theorem 1 (Eq. 29) for U = [U_1; ...; U_N], U_n = M_n J(x_n): first layer of {source}")
    print(
        f"  rows m = {m:,} (N={a.n} x {C} channels x {patches.shape[2]} positions), columns = {res['columns']} "
        f"(weights{' + bias' if has_bias else ''}), active fraction {res['active_fraction']:.3f}"
    )
    print(f"  lambda_min^2 / m = {res['lambda_min_sq_over_m']:.4g}   (needs >= 0.9 + eps)")
    print(f"  lambda_max^2 / m = {res['lambda_max_sq_over_m']:.4g}   (needs <= 1.1 - eps)")
    print(f"  kappa^2 = lambda_max^2 / lambda_min^2 = {res['kappa_sq']:.4g}   (any rescaling of U needs < 1.222)")
    print(
        f"  sufficient condition holds: {'yes' if res['holds'] else 'NO'}; "
        f"holds after the best rescaling of U: {'yes' if res['holds_after_best_rescaling'] else 'NO'}"
    )
    return 0


def three_layer(a, out: Path) -> int:
    from .planted import run_three_layer

    r = run_three_layer(starts=a.starts, seed=a.seed)
    with _claim(a, out):
        atomic_write_text(out / "three-layer.json", json.dumps(r, indent=2))
    p = r["problem"]
    print(f"planted three-layer teacher d={p['d']} h1={p['h1']} h2={p['h2']} o={p['o']} N={p['n']}, {a.starts} starts")
    print("| method | successes | median iterations | median final relative loss | seconds |")
    print("|---|---:|---:|---:|---:|")
    for name, m in r["methods"].items():
        print(
            f"| {name} | {m['successes']}/{m['starts']} | {_fmt(m['median_iterations_to_success'])} "
            f"| {m['median_final_rel_loss']:.2e} | {m['seconds']:.1f} |"
        )
    return 0
