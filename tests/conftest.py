import os
import subprocess
import sys
from pathlib import Path

import pytest

# Triton's interpreter for the kernel tests on a machine without a GPU (tests/test_kernels.py):
# set before anything imports triton, since triton.jit reads it when it decorates, and triton's own
# library (tl.zeros, ...) is decorated once, by whichever test first imports triton.language.
if not os.path.exists("/dev/nvidiactl"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Intra-op threads: the cores shared out among the xdist workers (one each with `-n 2` on two
# cores), at most two. More threads than cores is not just shared time: torch's OpenMP threads
# spin at each barrier, and test_fit_graphs.py took 142 s instead of 11 s beside one busy
# process with two threads per worker. OMP_NUM_THREADS carries the count to the supportnet
# processes the tests start (set before torch is imported, so this process reads it too).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, (os.cpu_count() or 1) // _WORKERS))
os.environ["OMP_NUM_THREADS"] = str(THREADS)

import torch  # noqa: E402

torch.set_num_threads(THREADS)
ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=None, env=None, timeout=600):
    """Run ``python -m supportnet ARGS`` and return the CompletedProcess."""
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + e.get("PYTHONPATH", "")
    e.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "supportnet", *map(str, args)],
        cwd=cwd,
        env=e,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_user_error(proc, *words):
    """Exit code 2, one line on stderr naming the problem, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert len(err.splitlines()) == 1, err
    assert err.startswith("supportnet: error:"), err
    for w in words:
        assert w.lower() in err.lower(), (w, err)


@pytest.fixture
def cli(capfd, monkeypatch):
    """``cli(*args, cwd=None, env=None)``: ``supportnet ARGS`` through ``supportnet.cli.main`` in
    this process (:func:`run_cli_inprocess`: the exit code, stdout and stderr a fresh process
    shows, without its second of start-up), ``cwd`` and ``env`` for that call only. A test of
    the process itself (argv, environment read at start-up, signals) uses :func:`run_cli`."""

    def run(*args, cwd=None, env=None, timeout=None):
        with monkeypatch.context() as mp:
            return run_cli_inprocess(args, cwd or Path.cwd(), env, capfd, mp)

    return run


@pytest.fixture(scope="session")
def synthetic():
    from supportnet.data import load_data

    return load_data("synthetic")


def run_train(args, cwd, fault=None):
    """``supportnet train ARGS`` in a subprocess, optionally with ``SUPPORTNET_FAULT=fault``."""
    e = {k: v for k, v in os.environ.items() if k != "SUPPORTNET_FAULT"}
    e["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + e.get("PYTHONPATH", "")
    if fault:
        e["SUPPORTNET_FAULT"] = fault
    return subprocess.run(
        [sys.executable, "-m", "supportnet", "train", *map(str, args)],
        cwd=cwd,
        env=e,
        capture_output=True,
        text=True,
        timeout=300,
    )


# ----------------------------------------------------------------------------- the bad-input harness
# One table row per case (tests/test_bad_inputs.py); other test files (checkpoints, export) reuse
# BadCase and run_bad_case. A case runs `supportnet ARGV` in its own folder, in this process
# (supportnet.cli.main: fast) or, for the denial-of-service cases, in a fresh process whose time and
# peak memory are measured (os.wait4). Every case asserts the exit code, exactly one line on
# stderr naming the problem and the fix, no traceback, and that no file that existed before it
# ran was modified or deleted.

#: Bounds every denial-of-service case must meet (the issue's "finished within 10 s, under 500 MB").
DOS_SECONDS = 10.0
DOS_MAX_RSS_MB = 500.0


def snapshot(root: Path) -> dict[str, str]:
    """SHA-256 of every regular file under ``root`` (links are not followed: a loop is fine)."""
    import hashlib

    out = {}
    for dirpath, _dirs, filenames in os.walk(root):  # os.walk does not follow symlinked folders
        for name in filenames:
            p = Path(dirpath) / name
            if p.is_symlink() or not p.is_file():
                continue
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


class Outcome:
    """What a command did: exit code, stdout, stderr, wall seconds, peak RSS in MB (a fresh process)."""

    def __init__(self, returncode, stdout, stderr, seconds, maxrss_mb=None):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr
        self.seconds, self.maxrss_mb = seconds, maxrss_mb


# A small launcher forks and execs the measured command and reports its child's rusage: measured
# straight from pytest, the child's peak RSS would include pytest's own (the address space it is
# forked from counts towards ru_maxrss until exec), hundreds of MB late in a full run.
_LAUNCHER = """
import json, os, resource, sys
report, limit, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
pid = os.fork()
if pid == 0:
    try:
        if limit:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        os.execv(argv[0], argv)
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
with open(report, "w") as f:
    json.dump({"maxrss_kb": ru.ru_maxrss, "cpu": ru.ru_utime + ru.ru_stime}, f)
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def run_cli_measured(args, cwd, env=None, timeout: float = 60.0, as_limit: int = 0) -> Outcome:
    """``python -m supportnet ARGS`` in a fresh process (killed after ``timeout`` seconds): its
    wall seconds, its own CPU seconds (``cpu``: its cost, whatever else the machine runs) and
    its own peak resident memory, from ``wait4`` in a small launcher process. ``as_limit``:
    an address-space limit in bytes for it (0: none)."""
    import json
    import signal
    import tempfile
    import time

    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + e.get("PYTHONPATH", "")
    e.update(env or {})
    with tempfile.TemporaryDirectory() as d:
        report = Path(d) / "rusage.json"
        cmd = [sys.executable, "-S", "-c", _LAUNCHER, str(report), str(as_limit), sys.executable, "-m", "supportnet"]
        t0 = time.perf_counter()
        p = subprocess.Popen([*cmd, *map(str, args)], cwd=cwd, env=e, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
        seconds = time.perf_counter() - t0
        usage = json.loads(report.read_text()) if report.is_file() else {"maxrss_kb": float("nan"), "cpu": seconds}
    o = Outcome(p.returncode, out.decode(errors="replace"), err.decode(errors="replace"), seconds,
                usage["maxrss_kb"] / 1024)  # fmt: skip
    o.cpu = usage["cpu"]
    return o


def run_cli_inprocess(args, cwd, env, capfd, monkeypatch) -> Outcome:
    """``supportnet.cli.main(ARGS)`` in this process, in ``cwd`` with ``env`` set.

    Warnings and supportnet log records of level WARNING or more count as stderr lines (a real
    process prints them there; pytest would swallow them). An exception that escapes ``main``
    fails the test with its traceback, as it would print one in a real process.
    """
    import logging
    import time
    import warnings

    from supportnet.cli import main

    monkeypatch.chdir(cwd)
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    records: list[logging.LogRecord] = []

    class _Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = _Keep(logging.WARNING)
    logger = logging.getLogger("supportnet")
    logger.addHandler(handler)
    capfd.readouterr()
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                code = main([str(a) for a in args])
            except SystemExit as ex:  # argparse
                code = ex.code if isinstance(ex.code, int) else (0 if ex.code is None else 2)
    finally:
        logger.removeHandler(handler)
        torch.set_num_threads(threads)
        torch.set_rng_state(rng)
    seconds = time.perf_counter() - t0
    out, err = capfd.readouterr()
    extra = [f"{w.category.__name__}: {w.message}" for w in caught] + [r.getMessage() for r in records]
    if extra:
        err = err + "".join(f"{x}\n" for x in extra)
    return Outcome(code, out, err, seconds)


def assert_one_line_error(o: Outcome, code: int = 2, words=()) -> str:
    """Exit ``code``, exactly one stderr line ``supportnet: error: <problem>; <fix>``, no traceback."""
    err = o.stderr.strip()
    assert o.returncode == code, (o.returncode, o.stdout[-500:], o.stderr[-1500:])
    assert "Traceback" not in o.stderr and "Traceback" not in o.stdout, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("supportnet: error:"), err
    assert ";" in err or "see '" in err, f"no fix named: {err}"
    for w in words:
        assert w.lower() in err.lower(), (w, err)
    return err


def assert_one_line_note(o: Outcome, words=()) -> str:
    """Exit 0 and exactly one line in all (stdout and stderr together), no traceback: the answer
    to a request that is refused without being an error (resuming a finished run)."""
    lines = (o.stdout + o.stderr).strip().splitlines()
    assert o.returncode == 0, (o.returncode, o.stdout[-500:], o.stderr[-1500:])
    assert "Traceback" not in o.stderr and "Traceback" not in o.stdout, o.stderr
    assert len(lines) == 1, lines
    for w in words:
        assert w.lower() in lines[0].lower(), (w, lines[0])
    return lines[0]


class BadCase:
    """One bad input: ``supportnet ARGV`` in a folder holding ``files`` must exit ``code`` with one
    line containing ``words``. ``code=0``: a request answered with one line and nothing written
    (resuming a finished run): no file changes or appears, the run folder's lock file aside.

    ``files``: ``{relative path: bytes}``, or a callable that returns such a dict (built once, when
    the case runs), or a callable ``make(folder)`` that makes anything (links, modes) itself.
    ``hold``: a folder (relative) whose run-folder lock another owner holds while the case runs.
    ``dos``: a fresh process that must finish within ``DOS_SECONDS`` under ``DOS_MAX_RSS_MB``.
    ``fresh``: a fresh process without the bounds (a case that needs a real argv or environment).
    """

    def __init__(self, id, category, argv, words=(), files=None, code=2, dos=False, fresh=False, hold=None):
        self.id, self.category, self.argv, self.words = id, category, list(argv), list(words)
        self.files, self.code, self.dos, self.fresh, self.hold = files, code, dos, fresh, hold

    def materialise(self, folder: Path) -> None:
        files = self.files
        if files is None:
            return
        if callable(files):
            import inspect

            if inspect.signature(files).parameters:
                files(folder)
                return
            files = files()
        for rel, data in files.items():
            p = folder / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)


def run_bad_case(case: BadCase, folder: Path, capfd, monkeypatch, statics: Path | None = None) -> Outcome:
    """Run ``case`` in ``folder`` and assert everything the corpus promises (see above)."""
    from contextlib import nullcontext

    case.materialise(folder)
    env = {"SUPPORTNET_DATA": str(folder / "nowhere"), "HOME": str(folder)}
    if case.hold:  # another owner, as a second process would be (flock: per open file, so this works here)
        from supportnet.runfolder import claim_run_folder

        held = claim_run_folder(folder / case.hold, resume=True)
    else:
        held = nullcontext()
    before = snapshot(folder)
    static_before = snapshot(statics) if statics else None
    with held:
        if case.dos or case.fresh:
            o = run_cli_measured(case.argv, folder, env, timeout=60 if case.fresh else 3 * DOS_SECONDS)
        else:
            o = run_cli_inprocess(case.argv, folder, env, capfd, monkeypatch)
    if case.code == 0:
        assert_one_line_note(o, case.words)
    else:
        assert_one_line_error(o, case.code, case.words)
    if case.dos:
        # its own CPU time (the cost of refusing the file, whatever the neighbours do), and no hang
        assert o.cpu < DOS_SECONDS and o.seconds < 6 * DOS_SECONDS, f"{case.id}: {o.cpu:.1f} s CPU, {o.seconds:.1f} s"
        assert o.maxrss_mb < DOS_MAX_RSS_MB, f"{case.id}: peak memory {o.maxrss_mb:.0f} MB"
    after = snapshot(folder)
    changed = sorted(k for k, v in before.items() if after.get(k) != v)
    assert not changed, f"user files modified or deleted: {changed}"
    if case.code == 0:  # nothing written at all: only a run folder's lock may be made
        made = sorted(k for k in after if k not in before and Path(k).name != ".supportnet.lock")
        assert not made, f"files written: {made}"
    assert not (folder / "PWNED").exists()
    if statics:
        assert snapshot(statics) == static_before
    return o


# ----------------------------------------------------------------------------- test tiers
# `make check` runs the tests marked neither `slow` nor `integration` (the edit-test loop);
# `make test`, which CI runs, runs them all. The marks are given here, in one table, rather than
# in each file. A new test that belongs to a tier and is not listed still runs everywhere: it
# only slows `make check`.

#: over ~20 s alone on two cores (their files are scheduled first: see below)
SLOW = (
    "tests/test_readme_commands.py::test_readme_commands_run_in_order",
    "tests/test_bench.py::test_gpu_check_smoke_runs_every_step_and_writes_their_json",
)

#: tests that start another process (a supportnet command, torchrun, a script), by file and name
#: (every parametrization), the files with the most of that work first
INTEGRATION = (
    "tests/test_resume.py::",
    "tests/test_optimizers_fit.py::test_sigkill_then_resume_is_bit_identical",
    "tests/test_optimizers_fit.py::test_checkpoint_holds_the_kfac_state",
    "tests/test_distributed.py::test_global_balt_two_ranks_match_one_process",
    "tests/test_distributed.py::test_local_sync_differs_from_global",
    "tests/test_distributed.py::test_kfac_factors_are_all_reduced_in_fit",
    "tests/test_distributed.py::test_ialt_runs_on_two_ranks",
    "tests/test_distributed.py::test_torchrun_cli_rank0_writes_the_run_folder",
    "tests/test_distributed.py::test_end_process_flushes_what_was_printed",
    "tests/test_bench.py::test_gpu_script_parses_and_runs_its_cpu_smoke",
    "tests/test_bench.py::test_overhead_bench_runs_every_figure_with_repeated_fits",
    "tests/test_bench.py::test_overhead_bench_refuses_bad_options_before_measuring",
    "tests/test_bench.py::test_bench_scripts_refuse_bad_arguments_in_one_line",
    "tests/test_bench.py::test_check_numbers_cli_exit_code",
    "tests/test_bench_optimizers.py::test_smoke_runs_the_protocol_end_to_end",
    "tests/test_export.py::test_export_runs_without_supportnet",
    "tests/test_readme.py::test_readme_python_block_runs",
    "tests/test_examples.py::",
    "tests/test_reliability.py::",
    "tests/test_kernels.py::test_kernels_compile_for_the_gpu",
    "tests/test_loggers.py::test_resumed_jsonl_drops_lines_after_the_checkpoint",
    "tests/test_hostile.py::test_two_processes_cannot_share_a_run_folder",
    "tests/test_allocator.py::test_tuned_heap_keeps_a_freed_buffer",
    "tests/test_allocator.py::test_tune_allocator_honours_the_opt_out",
    "tests/test_allocator.py::test_alternation_tunes_the_allocator",
    "tests/test_allocator.py::test_unknown_choice_is_one_line_exit_2",
    "tests/test_cpu_kernels.py::test_cache_is_verified_and_rebuilt",
    "tests/test_cpu_kernels.py::test_no_compiler_falls_back_to_torch_code",
    "tests/test_cpu_kernels.py::test_misspelt_switch_is_one_line_exit_2",
    "tests/test_cpu_kernels.py::test_traced_kernels_give_the_eager_result",
    "tests/test_models.py::test_cheap_commands_do_not_import_torch",
    "tests/test_models.py::test_model_table_writer_refuses_unknown_arguments",
    "tests/test_configs.py::test_make_configs_reproduces_every_committed_config",
)


def _listed(nodeid: str, table) -> bool:
    name = nodeid.split("[")[0]
    return any(name == t or (t.endswith("::") and name.startswith(t)) for t in table)


def _tier(item) -> str | None:
    """``slow``, ``integration`` or None (``make check``'s tier)."""
    if _listed(item.nodeid, SLOW):
        return "slow"
    case = item.callspec.params.get("case") if hasattr(item, "callspec") else None
    if isinstance(case, BadCase) and (case.dos or case.fresh):  # tests/test_bad_inputs.py
        return "slow" if case.dos else "integration"  # a bound on a fresh process's CPU time and memory
    if isinstance(case, tuple) and case[0] in getattr(item.module, "DOS", ()):  # tests/test_bad_checkpoints.py
        return "slow"
    return "integration" if _listed(item.nodeid, INTEGRATION) else None


@pytest.hookimpl(tryfirst=True)  # before -m deselects by these marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        tier = _tier(item)
        if tier:
            item.add_marker(getattr(pytest.mark, tier))
    # Longest first, for `-n 2 --dist loadfile --no-loadscope-reorder` (the workers take the files
    # in this order; xdist's own order, the most tests first, starts test_readme_commands.py's one
    # test of over two minutes late, to run alone at the end): SLOW's files in its order, then
    # INTEGRATION's, then the others; the tests within a file keep their order.
    first = list(dict.fromkeys(t.split("::")[0] for t in SLOW + INTEGRATION))
    rank = {f: k for k, f in enumerate(first)}
    items.sort(key=lambda i: rank.get(i.nodeid.split("::")[0], len(first)))
