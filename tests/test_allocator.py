"""supportnet.allocator: glibc's malloc thresholds, set once per process for training."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from supportnet import allocator

# A buffer allocated and freed over and over, as a training step does with its activations.
# The child counts the page faults (ru_minflt) of 50 rounds: a count, not a time. Untuned,
# glibc maps and unmaps the first rounds' buffers (41,000-51,000 faults measured); tuned, only
# the first touches remain (about 10,000).
FAULTS = """
import resource, sys, torch
if sys.argv[1] == "tune":
    from supportnet.allocator import tune_allocator
    assert tune_allocator() == "tuned", tune_allocator()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    a = torch.ones(5 << 20)  # 20 MiB
    del a
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""

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


def _child(code: str, mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "SUPPORTNET_MALLOC"}
    out = subprocess.run([sys.executable, "-c", code, mode], env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or "preloaded" in (allocator._why_not() or ""),
    reason="glibc's mallopt, no other allocator preloaded",
)


@glibc
def test_tuned_heap_keeps_a_freed_buffer():
    assert _child(KEPT, "default") > 20 << 20  # handed back to the kernel
    assert _child(KEPT, "tune") < 2 << 20  # kept for the next step


@glibc
def test_tuned_process_does_not_fault_the_same_buffer_back_in():
    default, tuned = _child(FAULTS, "default"), _child(FAULTS, "tune")
    assert tuned * 2 < default, (tuned, default)


@pytest.mark.parametrize(
    "env, why",
    [
        ({"SUPPORTNET_MALLOC": "default"}, "SUPPORTNET_MALLOC=default"),
        ({"MALLOC_TRIM_THRESHOLD_": "0"}, "MALLOC_* tunables"),
        ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, "another allocator preloaded"),
    ],
)
def test_left_alone_where_the_user_chose(monkeypatch, env, why):
    for k in ("SUPPORTNET_MALLOC", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "LD_PRELOAD"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(sys, "platform", "linux")
    assert why in allocator._why_not()


@glibc
def test_alternation_tunes_the_allocator():
    """An own loop's schedule tunes the allocator as fit() does (once per process; the result is kept)."""
    code = (
        "import supportnet.allocator as a, supportnet as sn, torch\n"
        "sn.alternation('b-alt', sn.convert(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())))\n"
        "print(a._state.get('result'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "SUPPORTNET_MALLOC"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "tuned"
