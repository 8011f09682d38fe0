"""Where a run's numbers go: ``metrics.csv`` (always), JSON lines, TensorBoard.

A logger takes two kinds of record:

* **steps** (every ``train.log_every`` optimizer steps): the training loss of that step, the
  learning rate, the fraction of active units per threshold layer so far this epoch; and, at
  each support re-estimation, the fraction of mask bits that changed and the time it took;
* **epochs**: the row of ``metrics.csv`` (see :data:`supportnet.train.METRIC_DOC`).

Choose with ``train.loggers`` (``[csv]`` by default; ``[csv, jsonl, tensorboard]`` for all).
TensorBoard needs ``pip install 'supportnet[tensorboard]'``. Writing a logger of your own
means implementing :class:`Logger`'s three methods.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Protocol

from ._optional import require
from .io import atomic_write_text


class Logger(Protocol):
    """The logger protocol: step scalars, epoch rows, close."""

    def log_step(self, step: int, scalars: dict[str, float]) -> None: ...

    def log_epoch(self, row: dict, rows: list[dict]) -> None: ...

    def close(self) -> None: ...


class CSVLogger:
    """``metrics.csv``: one row per epoch, every column seen so far (rewritten atomically)."""

    def __init__(self, out: Path, resume_step: int | None = None):
        self.path = out / "metrics.csv"

    def log_step(self, step: int, scalars: dict[str, float]) -> None:
        pass  # epoch rows only

    def log_epoch(self, row: dict, rows: list[dict]) -> None:
        write_metrics(self.path, rows)

    def close(self) -> None:
        pass


class JSONLLogger:
    """``metrics.jsonl``: one JSON object per line, ``{"step": ..., ...}`` for step scalars and
    ``{"epoch": ..., ...}`` rows. A resumed run first drops the lines written after its checkpoint."""

    def __init__(self, out: Path, resume_step: int | None = None):
        self.path = out / "metrics.jsonl"
        if resume_step is None or not self.path.is_file():
            atomic_write_text(self.path, "")
        else:  # keep what the checkpoint covers; the resumed run writes the rest again
            kept = [line for line in self.path.read_text().splitlines() if _step_of(line) <= resume_step]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - open for the run's life

    def _write(self, rec: dict) -> None:
        self._f.write(json.dumps(rec, allow_nan=False, default=_jsonable) + "\n")
        self._f.flush()

    def log_step(self, step: int, scalars: dict[str, float]) -> None:
        self._write({"step": step, **{k: _finite(v) for k, v in scalars.items()}})

    def log_epoch(self, row: dict, rows: list[dict]) -> None:
        self._write({"step": row["iterations"], **{k: _finite(v) for k, v in row.items()}})

    def close(self) -> None:
        self._f.close()


class TensorBoardLogger:
    """A TensorBoard event file in ``RUN/tensorboard/``: step scalars under ``train/``, epoch
    rows under ``epoch/`` (x axis: optimizer steps). A resumed run purges events after its
    checkpoint's step (``SummaryWriter(purge_step=...)``)."""

    def __init__(self, out: Path, resume_step: int | None = None):

        require("tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(out / "tensorboard"), purge_step=resume_step)

    def log_step(self, step: int, scalars: dict[str, float]) -> None:
        for k, v in scalars.items():
            self.writer.add_scalar(f"train/{k}", v, step)

    def log_epoch(self, row: dict, rows: list[dict]) -> None:
        for k, v in row.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "iterations":
                self.writer.add_scalar(f"epoch/{k}", v, row["iterations"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


#: ``train.loggers`` names -> logger classes (choices.LOGGERS lists the names).
LOGGERS = {"csv": CSVLogger, "jsonl": JSONLLogger, "tensorboard": TensorBoardLogger}


class Loggers:
    """Several loggers as one. ``wants_steps``: whether any of them records step scalars (so the
    loop reads them from the device only then)."""

    def __init__(self, names: list[str], out: Path | None, resume_step: int | None = None):
        self.items = [LOGGERS[n](out, resume_step) for n in dict.fromkeys(names)] if out is not None else []
        self.wants_steps = any(not isinstance(lg, CSVLogger) for lg in self.items)

    def log_step(self, step: int, scalars: dict[str, float]) -> None:
        for lg in self.items:
            lg.log_step(step, scalars)

    def log_epoch(self, row: dict, rows: list[dict]) -> None:
        for lg in self.items:
            lg.log_epoch(row, rows)

    def close(self) -> None:
        for lg in self.items:
            lg.close()


def write_metrics(path: Path, rows: list[dict]) -> None:
    """``rows`` as CSV (every key seen in any row; floats to 6 significant digits), atomically."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())


def _finite(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _jsonable(v):
    return str(v)


def _step_of(line: str) -> float:
    try:
        return float(json.loads(line).get("step", math.inf))
    except (ValueError, AttributeError):
        return math.inf
