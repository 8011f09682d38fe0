"""Every number under a results heading of README.md and docs/*.md is backed by a committed file.

    python bench/check_numbers.py            # exit 1 and one line per unbacked number
    python bench/check_numbers.py --list     # also list every block and its label

The convention (also in docs/results.md, "How the numbers here are backed"):

* **Scope.** A heading whose text contains "result" (any level, case-insensitive) opens a results
  section, which runs to the next heading of the same or a higher level. docs/results.md is one
  ("# Results"). Numbers elsewhere are not checked.
* **Labels.** Inside a results section every number must stand under a label, a line of its own
  that starts with one of (in italics, so readers see it):
  - ``*Source: bench/results/a.json, bench/results/b.json*`` - each number of the block must be a
    value of one of these committed JSON files (a number or a numeric key; shown rounded, or as a
    percentage of a fraction, or in minutes of a value in seconds, or in thousands with "k").
    ``pending bench/results/x.json`` names a file a run will write; until it exists the block may
    hold placeholders ``⟪...⟫`` for its numbers, and the check lists it as pending.
  - ``*Cheap to rerun: `command` (time)*`` - the block is that command's output; rerun it.
  - ``*Not yet re-run: ...*`` - numbers from an earlier session with no committed result file,
    kept as history; the label says so, and nothing in the block is checked.
  A label holds until the next label or heading.
* **Not numbers.** Text in code spans and command-only code fences, link targets, headings, the
  labels themselves, placeholders, dates, versions, and numbers that are part of a name (``H100``,
  ``t8-vgg16``, ``3x32x32``) or follow a reference word (Eq., Table, Fig., Sec., Section, Theorem,
  issue, seed(s)) are not checked.

A presence check: a number can match a value of the files by coincidence (small integers most of
all); what it catches is a figure with no file behind it, a stale figure and a mistyped one.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LABEL = re.compile(r"^\*(Source|Cheap to rerun|Not yet re-run):\s*(.*?)\*?\s*$")
HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
REFERENCE = re.compile(
    r"(?:\b(?:Eqs?|Equations?|Tables?|Figs?|Figures?|Sec|Sections?|Theorem|Thm|issues?|seeds?|rows?|Step|step|"
    r"Tables)\.?|§)\s*$"
)
NUMBER = re.compile(r"(?<![\w.])[-−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[kM](?![A-Za-z]))?")
COMMAND = re.compile(r"^\s*(\$|#|python|supportnet|make|bash|torchrun|pip|\.venv|\.\/|cd |PY=|SUBSET=)")


@dataclass
class Block:
    path: str
    line: int
    kind: str  # "source" | "cheap" | "history" | "none"
    sources: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    numbers: list[tuple[int, str]] = field(default_factory=list)  # (line, token)


def strip_exempt(line: str) -> str:
    """The line without the parts whose digits are not result numbers."""
    line = re.sub(r"⟪[^⟫]*⟫", " ", line)  # placeholders
    line = re.sub(r"`[^`]*`", " ", line)  # code spans
    line = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", line)  # links and images: keep the text, drop the target
    line = re.sub(r"<!--.*?-->", " ", line)
    line = re.sub(r"\b\d{4}-\d{2}-\d{2}\b", " ", line)  # dates
    line = re.sub(r"\b\d+\.\d+\.\d+\w*", " ", line)  # versions (torch 2.13.0)
    line = re.sub(r"\b\d+(?:[x×]\d+)+\b", " ", line)  # shapes: 3x32x32, 28x28
    return line


def numbers_in(line: str) -> list[str]:
    """Number tokens of ``line`` that are results: not part of a name, not after a reference word,
    not in a list of seeds (``seeds 0, 1, 2``, ``seeds [0, 1]``)."""
    text = strip_exempt(line)
    seed_spans = [m.span(1) for m in re.finditer(r"\bseeds?\s*\[?((?:\d+\s*,\s*)*\d+)\]?", text)]
    out = []
    for m in NUMBER.finditer(text):
        tok, start, end = m.group(0), m.start(), m.end()
        before, after = text[:start], text[end:]
        if before and (before[-1].isalpha() or before[-1] in "_/") and not before.endswith("−"):
            continue  # part of a name (H100, bf16, t8) or the second half of a fraction
        if before.endswith("-") and len(before) > 1 and not (before[-2].isdigit() or before[-2].isspace()):
            continue  # t8-vgg16, top-1 (a range 30-40 keeps its second number)
        if after[:1].isalpha() and after[:1] not in "x×":
            continue  # 1st, 2D
        if REFERENCE.search(before) or any(a <= start < b for a, b in seed_spans):
            continue  # Eq. 41, Table 8, Fig. 3, seeds 0, 1, 2
        out.append(tok)
    return out


def value_of(tok: str) -> tuple[float, int]:
    """(value, decimals) of a displayed number: thousands separators, a unicode minus, k and M."""
    t = tok.replace("−", "-").replace(",", "")
    mult = 1.0
    if t[-1] in "kM":
        mult, t = (1e3 if t[-1] == "k" else 1e6), t[:-1]
    dec = len(t.split(".")[1]) if "." in t else 0
    return float(t) * mult, dec if mult == 1.0 else 0


def json_values(path: Path) -> list[float]:
    """Every number of a JSON file: leaves, and dictionary keys that parse as numbers."""
    vals: list[float] = []

    def walk(x):
        if isinstance(x, bool):
            return
        if isinstance(x, (int, float)):
            if math.isfinite(x):
                vals.append(float(x))
        elif isinstance(x, dict):
            for k, v in x.items():
                try:
                    vals.append(float(k))
                except ValueError:
                    pass
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(json.loads(path.read_text()))
    return vals


def matches(tok: str, values: list[float]) -> bool:
    v, dec = value_of(tok)
    tol = 0.5 * 10.0**-dec + 1e-9
    if tok.endswith(("k", "M")):
        tol = 0.5 * (1e3 if tok.endswith("k") else 1e6)
    v = abs(v)
    for x in values:
        for scaled in (abs(x), abs(100 * x), abs(x / 60), abs(x / 3600)):
            if abs(scaled - v) <= tol:
                return True
    return False


def scan(path: Path) -> list[Block]:
    """The labelled blocks of ``path``'s results sections, with their number tokens."""
    rel = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    blocks: list[Block] = []
    scope: int | None = None  # heading level that opened the results section
    cur: Block | None = None
    fence: list[tuple[int, str]] | None = None
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip().startswith("```"):
            if fence is None:
                fence = []
            else:
                if cur is not None and not all(COMMAND.match(x) or not x.strip() for _, x in fence):
                    for n, x in fence:
                        cur.numbers += [(n, t) for t in numbers_in(x)]
                fence = None
            continue
        if fence is not None:
            fence.append((i, line))
            continue
        h = HEADING.match(line)
        if h:
            level = len(h.group(1))
            if scope is not None and level <= scope and "result" not in h.group(2).lower():
                scope = None
            if scope is None and "result" in h.group(2).lower():
                scope = level
            cur = Block(rel, i, "none") if scope is not None else None
            if cur is not None:
                blocks.append(cur)
            continue
        if cur is None:
            continue
        lab = LABEL.match(line.strip())
        if lab:
            kind = {"Source": "source", "Cheap to rerun": "cheap", "Not yet re-run": "history"}[lab.group(1)]
            cur = Block(rel, i, kind)
            if kind == "source":
                for item in (x.strip() for x in re.split(r"[,;]", lab.group(2)) if x.strip()):
                    if item.startswith("pending "):
                        cur.pending.append(item.split(None, 1)[1])
                    else:
                        cur.sources.append(item)
            blocks.append(cur)
            continue
        cur.numbers += [(i, t) for t in numbers_in(line)]
    return blocks


def check(files: list[Path]) -> tuple[list[str], list[Block]]:
    """Problems (one line each) and every block scanned."""
    problems, blocks = [], []
    cache: dict[str, list[float]] = {}
    for f in files:
        for b in scan(f):
            blocks.append(b)
            if b.kind in ("cheap", "history"):
                continue
            if b.kind == "none":
                problems += [
                    f"{b.path}:{n}: {t} has no label (Source / Cheap to rerun / Not yet re-run)" for n, t in b.numbers
                ]
                continue
            values: list[float] = []
            for src in b.sources:
                p = ROOT / src
                if not src.startswith("bench/results/") or p.suffix != ".json" or not p.is_file():
                    problems.append(f"{b.path}:{b.line}: source {src} is not a JSON file in bench/results/")
                    continue
                if src not in cache:
                    cache[src] = json_values(p)
                values += cache[src]
            for pend in b.pending:
                if (ROOT / pend).is_file():
                    problems.append(f"{b.path}:{b.line}: {pend} exists now; fill the placeholders and drop 'pending'")
            problems += [
                f"{b.path}:{n}: {t} is not a value of {', '.join(b.sources) or 'any source'}"
                for n, t in b.numbers
                if not matches(t, values)
            ]
    return problems, blocks


def doc_files() -> list[Path]:
    return [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true", help="list every results block and its label")
    ap.add_argument("files", nargs="*", help="Markdown files (default: README.md and docs/*.md)")
    a = ap.parse_args(argv)
    files = [Path(f).resolve() for f in a.files] or doc_files()
    problems, blocks = check(files)
    if a.list:
        for b in blocks:
            what = ", ".join(b.sources + [f"pending {p}" for p in b.pending])
            print(f"{b.path}:{b.line}: {b.kind} {what} ({len(b.numbers)} numbers)")
    pending = sorted({p for b in blocks for p in b.pending})
    for p in problems:
        print(p)
    checked = sum(len(b.numbers) for b in blocks if b.kind == "source")
    print(
        f"{len(problems)} problem(s); {checked} numbers checked against result files in {len(blocks)} blocks"
        + (f"; pending: {', '.join(pending)}" if pending else "")
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
