"""How often a torchrun rank aborts at exit after its work is done, with and without end_process.

    python bench/teardown_aborts.py [--runs 60] [--busy 2] [--out DIR]

Each run is ``torchrun --standalone --nproc_per_node=2 -m supportnet train`` on a tiny synthetic
set (one epoch, convnet-s at width 8), beside ``--busy`` processes that spin (the load under
which the abort was seen in CI). Two variants, run alternately: ``end_process`` (the CLI as
shipped: each rank ends with :func:`supportnet.distributed.end_process`) and ``plain`` (the same
CLI with ``end_process`` replaced by ``return code``: the interpreter's normal exit, which
destroys the process group that DistributedDataParallel keeps alive). Per run: the exit code,
whether the abort's signature ("terminate called without an active exception") was printed, and
whether the run folder is complete (summary.json, final.pt, both ranks' "run folder:" line).
Writes ``teardown_aborts.json`` into ``--out`` (default bench/out). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from convergence import git_commit, machine, make_out  # bench/ is the script's folder, first on sys.path

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "out"
ABORT = "terminate called without an active exception"
PLAIN = (
    "import sys, supportnet.distributed as d; d.end_process = lambda code: code; "
    "from supportnet.cli import main; raise SystemExit(main(sys.argv[1:]))"
)
ARGS = ["train", "--data", "synthetic", "--subset", "256", "--epochs", "1", "--quiet",
        "--set", "model.kwargs={width: 8, hidden: 32}", "--set", "train.batch_size=32"]  # fmt: skip


def one_run(variant: str, out: Path, plain: Path) -> dict:
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    target = ["-m", "supportnet"] if variant == "end_process" else [str(plain)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    t = time.perf_counter()
    try:
        p = subprocess.run(launch + target + ARGS + ["--out", str(out)], env=env, capture_output=True, text=True,
                           timeout=300)  # fmt: skip
        rc, stdout, stderr = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:  # a hang is a failed run, not the end of the bench
        rc, stdout, stderr = "timeout", str(e.stdout or ""), str(e.stderr or "")
    complete = (out / "summary.json").is_file() and (out / "final.pt").is_file()
    return {
        "variant": variant,
        "returncode": rc,
        "abort": ABORT in stderr,
        "complete": complete and stdout.count("run folder:") == 2,
        "seconds": round(time.perf_counter() - t, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=60, help="runs per variant")
    ap.add_argument("--busy", type=int, default=2, help="spinning processes beside the runs")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    if a.runs < 1 or a.busy < 0:
        ap.error(f"--runs must be at least 1 and --busy at least 0, got {a.runs} and {a.busy}")
    make_out(ap, a.out)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(a.busy)]
    runs = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            plain = Path(tmp) / "plain_cli.py"
            plain.write_text(PLAIN + "\n")
            for i in range(a.runs):
                for variant in ("plain", "end_process"):
                    runs.append(one_run(variant, Path(tmp) / f"{variant}-{i}", plain))
                    print(json.dumps(runs[-1]), flush=True)
    finally:
        for b in busy:
            b.kill()
    summary = {
        v: {
            "runs": sum(r["variant"] == v for r in runs),
            "aborts": sum(r["variant"] == v and r["abort"] for r in runs),
            "nonzero_exits": sum(r["variant"] == v and r["returncode"] != 0 for r in runs),
            "complete": sum(r["variant"] == v and r["complete"] for r in runs),
        }
        for v in ("plain", "end_process")
    }
    res = {
        "what": "torchrun ranks aborting at exit, with the interpreter's exit (plain) and with end_process",
        "command": "python bench/" + Path(__file__).name + " " + shlex.join(sys.argv[1:]),
        **git_commit(),
        "machine": machine(),
        "busy_processes": a.busy,
        "seeds": "none to vary: every run trains the same synthetic set with seed 0; runs differ in timing only",
        "date": time.strftime("%Y-%m-%d"),
        "summary": summary,
        "per_run": runs,
    }
    (a.out / "teardown_aborts.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
