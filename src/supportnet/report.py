"""Curves and tables: the paper's Fig. 1/3-style plots (loss and error against
epochs, support re-estimations marked) and Markdown comparison tables."""

from __future__ import annotations

from pathlib import Path

from ._optional import plot
from .io import atomic_write


class _LazyPyplot:
    """matplotlib is imported at the first plot, not at import time (its first import on a
    fresh machine builds a font cache and says so on stderr)."""

    def __getattr__(self, name):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        return getattr(plt, name)


plt = _LazyPyplot()


def _save(fig, path: Path) -> None:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def _mark_reestimations(ax, rows, color="k"):
    for r in rows:
        if r.get("reestimated"):
            ax.axvline(r["epoch"] - 0.5, color=color, ls=":", lw=0.8, alpha=0.6)


@plot
def plot_run(rows: list[dict], path: Path, title: str = "") -> None:
    """Loss and test error against epochs for one run; dotted lines mark support re-estimations."""
    ep = [r["epoch"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.plot(ep, [r["obj_loss"] for r in rows], "o-", ms=3, label="train objective")
    if "train_loss" in rows[0]:
        a.plot(ep, [r["train_loss"] for r in rows], "s--", ms=3, label="train (free)")
    a.plot(ep, [r["test_loss"] for r in rows], "^-", ms=3, label="test")
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.legend(fontsize=8)
    b.plot(ep, [100 * r["test_err"] for r in rows], "o-", ms=3, label="test error")
    if "maskt_acc" in rows[0]:
        b.plot(ep, [100 * (1 - r["maskt_acc"]) for r in rows], "x--", ms=3, label="MaskT error")
    b.set_xlabel("epoch"), b.set_ylabel("error (%)"), b.legend(fontsize=8)
    for ax in (a, b):
        _mark_reestimations(ax, rows)
        ax.grid(alpha=0.3)
    fig.suptitle(title + "  (dotted: support re-estimated)", fontsize=9)
    _save(fig, path)


@plot
def plot_compare(methods: dict[str, dict], path: Path, title: str = "") -> None:
    """One figure, every method: training loss, test loss and test error against epochs."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, m) in enumerate(methods.items()):
        c = colors[i % len(colors)]
        curve = m.get("curve") or []
        if not curve:
            continue
        ep = [p["epoch"] for p in curve]
        axes[0].plot(ep, [p["train_loss"] for p in curve], "o-", ms=3, color=c, label=name)
        axes[1].plot(ep, [p["test_loss"] for p in curve], "o-", ms=3, color=c, label=name)
        axes[2].plot(ep, [100 * (1 - p["test_acc"]) for p in curve], "o-", ms=3, color=c, label=name)
        for ax in axes:
            for p in curve:
                if p.get("reestimated"):
                    ax.axvline(p["epoch"] - 0.5, color=c, ls=":", lw=0.8, alpha=0.6)
    for ax, lab in zip(axes, ("train loss (free mode)", "test loss", "test error (%)")):
        ax.set_xlabel("epoch"), ax.set_ylabel(lab), ax.grid(alpha=0.3)
    axes[2].legend(fontsize=8)
    fig.suptitle(title + "  (dotted: support re-estimated)", fontsize=9)
    _save(fig, path)


def markdown_table(methods: dict[str, dict]) -> str:
    lines = [
        "| method | test acc (%) | test loss | iterations | train seconds | status |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, m in methods.items():
        if m.get("error"):
            lines.append(f"| {name} | – | – | – | – | {m['error']} |")
            continue
        lines.append(
            f"| {name} | {100 * m['test_acc']:.2f} | {m['test_loss']:.4f} | {m['iterations']} "
            f"| {m['seconds']:.1f} | ok |"
        )
    return "\n".join(lines) + "\n"
