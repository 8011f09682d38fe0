"""supportnet.allocator: glibc's malloc thresholds, set once per process for training."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from supportnet import allocator

# A training step's pattern: large buffers allocated and freed every step. The child counts the
# page faults (ru_minflt) of 50 such steps after a warm-up: a count, not a time.
CHILD = """
import resource, sys, torch
if sys.argv[1] == "tune":
    from supportnet.allocator import tune_allocator
    assert tune_allocator() == "tuned", tune_allocator()
keep = []
for _ in range(3):
    a = torch.ones(4 << 20); keep.append(torch.ones(1 << 20)); del a
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    a = torch.ones(4 << 20)  # 16 MiB
    b = torch.ones(3 << 20)  # 12 MiB
    del a, b
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


def _faults(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "SUPPORTNET_MALLOC"}
    out = subprocess.run([sys.executable, "-c", CHILD, mode], env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tuned_process_does_not_fault_the_same_buffers_back_every_step():
    if allocator._why_not() is not None and "preloaded" in allocator._why_not():
        pytest.skip("another allocator is preloaded")
    default, tuned = _faults("default"), _faults("tune")
    # untuned, freed buffers go back to the kernel and fault in again (about 50 x 7000 pages);
    # tuned, the heap keeps them: only first touches remain
    assert tuned * 4 < default, (tuned, default)


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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
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
