"""supportnet.allocator: glibc's malloc thresholds, set once per process for training."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from supportnet import allocator

# Freeing a 30 MiB buffer: untuned it was mapped on its own (over glibc's initial 128 KiB
# threshold) and goes back to the kernel; tuned it came from the heap, which keeps it.
KEPT = """
import sys, torch
if sys.argv[1] == "tune":
    from supportnet.allocator import tune_allocator
    assert tune_allocator() == "tuned", tune_allocator()
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
a = torch.ones(30 << 18)  # 30 MiB, touched
before = rss()
del a
print(before - rss())
"""


def _env(**extra) -> dict:
    """This environment without the user's malloc choices (they would make tune_allocator a no-op)."""
    drop = ("SUPPORTNET_MALLOC", "GLIBC_TUNABLES", "LD_PRELOAD")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in drop}
    return {**env, **extra}


def _child(code: str, mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", code, mode], env=_env(), capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc's mallopt",
)


@glibc
def test_tuned_heap_keeps_a_freed_buffer():
    assert _child(KEPT, "default") > 20 << 20  # handed back to the kernel
    assert _child(KEPT, "tune") < 2 << 20  # kept for the next step


@pytest.mark.parametrize(
    "env, libc, why",
    [
        ({"SUPPORTNET_MALLOC": "default"}, "glibc", "SUPPORTNET_MALLOC=default"),
        ({"MALLOC_TRIM_THRESHOLD_": "0"}, "glibc", "malloc's settings chosen"),
        ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}, "glibc", "malloc's settings chosen"),
        ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, "glibc", "another allocator preloaded"),
        ({}, "", "not glibc"),  # musl (Alpine) has no mallopt of these
    ],
)
def test_left_alone_where_the_user_chose(monkeypatch, env, libc, why):
    for k in ("SUPPORTNET_MALLOC", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "LD_PRELOAD",
              "GLIBC_TUNABLES"):  # fmt: skip
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: (libc, "2.36"))
    assert why in allocator._why_not()


def test_tune_allocator_honours_the_opt_out():
    """tune_allocator() itself, in a fresh process, with SUPPORTNET_MALLOC=default."""
    code = "import supportnet.allocator as a; print(a.tune_allocator())"
    env = _env(SUPPORTNET_MALLOC="default")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "left: SUPPORTNET_MALLOC=default"


@glibc
def test_alternation_leaves_the_allocator_alone_and_sn_tune_allocator_opts_in():
    """A library call does not change the process: an own loop's schedule leaves malloc as it
    is; ``sn.tune_allocator()`` is the explicit opt-in (once per process; the result is kept)."""
    code = (
        "import supportnet.allocator as a, supportnet as sn, torch\n"
        "sn.alternation('b-alt', sn.convert(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())))\n"
        "print(a._state.get('result'))\n"
        "print(sn.tune_allocator(), a._state.get('result'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["None", "tuned tuned"]


@glibc
def test_fit_still_tunes_the_allocator(tmp_path):
    code = (
        "import supportnet.allocator as a, supportnet as sn\n"
        f"cfg = sn.load_config(None, ['data.name=synthetic', 'data.subset=64', 'data.test_subset=32', "
        f"'train.epochs=1', 'model.kwargs={{width: 4, hidden: 8}}', 'out={tmp_path}', 'quiet=true'])\n"
        "sn.fit(cfg)\n"
        "print(a._state.get('result'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == "tuned"


def test_unknown_choice_is_one_line_exit_2(tmp_path):
    """A misspelt SUPPORTNET_MALLOC is refused before the command does anything."""
    out = subprocess.run(
        [sys.executable, "-m", "supportnet", "train", "--set", f"out={tmp_path / 'run'}"],
        env=_env(SUPPORTNET_MALLOC="defualt"),
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "SUPPORTNET_MALLOC='defualt' is not a choice" in out.stderr
    assert not (tmp_path / "run").exists()
