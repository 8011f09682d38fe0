"""Hostile inputs beyond the one-line corpus (tests/test_bad_inputs.py): the config loader and the
``--set`` parser fuzzed (hypothesis), run folders owned by one run, what must keep working (non-ASCII
paths, --overwrite, resume, the study's reuse), atomic writes (umask, messages by cause)."""

import os
import stat
import string

import pytest
import yaml
from conftest import run_cli_inprocess

from supportnet.config import Config, load_config
from supportnet.errors import SupportnetError

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

KEYS = [f"{sec}.{k}" for sec, d in Config().to_dict().items() if isinstance(d, dict) for k in d]
SECTIONS = list(Config().to_dict())
TOKENS = [
    *"[]{}:,-'\"&*!|>#%@`\n\t ",
    "  ",
    "- ",
    ": ",
    "&a ",
    "*a",
    "<<: ",
    "!!python/object:os.system ",
    "!!binary ",
    "!!float ",
    "!!int ",
    "!!timestamp ",
    ".nan",
    ".inf",
    "-.inf",
    "1e400",
    "9" * 40,
    "0x1F",
    "0o17",
    "1_000",
    "2001-13-45",
    "~",
    "null",
    "yes",
    "train",
    "lr",
    "epochs",
    "model",
    "kwargs",
    "support",
    "tau",
    "data",
    "pad",
    "\ud800",
    "\x00",
    "💥",
]
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
#: Configs shaped like real ones (known sections and keys, any values) and token soup.
STRUCTURED = st.dictionaries(
    st.sampled_from(SECTIONS) | st.text(max_size=8),
    st.dictionaries(st.sampled_from([k.split(".")[1] for k in KEYS]) | st.text(max_size=8), VALUES, max_size=6)
    | VALUES,
    max_size=5,
).map(lambda d: yaml.safe_dump(d, allow_unicode=True))
SOUP = st.lists(st.sampled_from(TOKENS) | st.text(string.printable, max_size=6), max_size=60).map("".join)
CONFIG_TEXT = STRUCTURED | SOUP | st.text(max_size=200)
SET_ITEM = st.tuples(
    st.sampled_from(KEYS) | st.text(max_size=12),
    st.sampled_from(["=", "=", "==", ""]),
    SOUP | VALUES.map(lambda v: yaml.safe_dump(v, default_flow_style=True, allow_unicode=True).strip()),
).map("".join)


def _loads_or_refuses(make) -> None:
    """``make()`` returns a Config (which then round-trips through its YAML) or raises the
    one-line SupportnetError; anything else (a traceback) fails."""
    try:
        cfg = make()
    except SupportnetError as e:
        msg = str(e)
        assert msg and "; " in msg, f"no problem; fix in {msg!r}"
        return
    again = load_config(None, [(k, v) for k, v in _flatten(cfg.to_dict())])
    assert again.to_dict() == cfg.to_dict()


def _flatten(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict) and k in SECTIONS and not prefix:
            yield from _flatten(v, f"{k}.")
        else:
            yield f"{prefix}{k}", v


@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=CONFIG_TEXT)
def test_config_loader_loads_or_refuses_in_one_line(tmp_path_factory, text):
    p = tmp_path_factory.getbasetemp() / "fuzz.yaml"
    try:
        p.write_text(text, encoding="utf-8", errors="surrogatepass")
    except UnicodeEncodeError:  # pragma: no cover
        return
    _loads_or_refuses(lambda: load_config(p))


@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
@given(items=st.lists(SET_ITEM, min_size=1, max_size=3))
def test_set_parser_loads_or_refuses_in_one_line(items):
    _loads_or_refuses(lambda: load_config(None, items))


# ----------------------------------------------------------------------------- run folders
TINY = [
    "--data",
    "synthetic",
    "--epochs",
    "1",
    "--subset",
    "64",
    "--quiet",
    "--set",
    "model.kwargs={width: 4, hidden: 8}",
    "--set",
    "train.train_eval_size=0",
]


def test_overwrite_replaces_a_run_and_resume_clears_stale_temporaries(tmp_path, capfd, monkeypatch):
    from conftest import snapshot

    env = {"SUPPORTNET_DATA": str(tmp_path / "nowhere"), "HOME": str(tmp_path)}
    run = lambda *a: run_cli_inprocess(list(a), tmp_path, env, capfd, monkeypatch)  # noqa: E731
    assert run("train", *TINY, "--out", "run-💥").returncode == 0  # a non-ASCII --out
    first = snapshot(tmp_path / "run-💥")
    assert "config.yaml" in first and "final.pt" in first and "summary.json" in first
    assert run("train", *TINY, "--out", "run-💥").returncode == 2  # refused: the corpus checks the line
    assert snapshot(tmp_path / "run-💥") == first
    (tmp_path / "run-💥" / "masks-round000.smask").write_bytes(b"old store")  # an older run's file
    (tmp_path / "run-💥" / "notes.txt").write_text("mine")
    o = run("train", *TINY, "--seed", "1", "--out", "run-💥", "--overwrite")
    assert o.returncode == 0, o.stderr
    now = snapshot(tmp_path / "run-💥")
    assert now["final.pt"] != first["final.pt"] and "masks-round000.smask" not in now  # replaced, none mixed
    assert (tmp_path / "run-💥" / "notes.txt").read_text() == "mine"  # not a run file: kept
    # a killed run's temporary is gone once a resume has finished (a finished run is read-only,
    # so the run is made one killed before its summary.json, the file written last)
    tmp = tmp_path / "run-💥" / ".checkpoint.pt.x1y2z3w4.tmp"
    tmp.write_bytes(b"half a checkpoint")
    (tmp_path / "run-💥" / "summary.json").unlink()
    o = run("train", "--resume", "run-💥", "--quiet")
    assert o.returncode == 0, o.stderr
    assert not tmp.exists() and (tmp_path / "run-💥" / "summary.json").is_file()


def test_non_ascii_data_dir_is_used(tmp_path, capfd, monkeypatch):
    import numpy as np

    from supportnet.data.idx import write_idx

    d = tmp_path / "données-💥"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name, arr in {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (16, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": (np.arange(16) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (8, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": (np.arange(8) % 10).astype(np.uint8),
    }.items():
        write_idx(d / name, arr)
    env = {"SUPPORTNET_DATA": str(tmp_path / "nowhere"), "HOME": str(tmp_path)}
    args = ["train", "--data", "fashion-mnist", "--data-dir", str(d), "--epochs", "1", "--quiet", "--out", "r"]
    o = run_cli_inprocess(args + TINY[6:], tmp_path, env, capfd, monkeypatch)
    assert o.returncode == 0, o.stderr
    cfg = load_config(tmp_path / "r" / "config.yaml")
    assert cfg.data.data_dir == str(d)  # recorded as given, and the files used are these (16 examples)
    import json

    assert json.loads((tmp_path / "r" / "summary.json").read_text())["iterations"] == 1  # 16 examples, batch 128


def test_lock_refuses_a_second_owner_and_is_released(tmp_path):
    from supportnet.runfolder import RunFolderError, claim_run_folder, releases_run_folders

    with claim_run_folder(tmp_path / "r") as held:
        assert held.held and (tmp_path / "r" / ".supportnet.lock").read_text().strip() == str(os.getpid())
        with pytest.raises(RunFolderError, match="in use by another supportnet process"):
            claim_run_folder(tmp_path / "r", resume=True)
    claim_run_folder(tmp_path / "r", resume=True).release()  # free again

    @releases_run_folders
    def fails():
        claim_run_folder(tmp_path / "s")
        raise ValueError("a run that raises")

    with pytest.raises(ValueError):
        fails()
    claim_run_folder(tmp_path / "s", resume=True).release()  # the decorator released it


def test_two_processes_cannot_share_a_run_folder(tmp_path):
    """Two real ``train --out same`` at once: one runs, the other is refused; nothing is mixed."""
    import subprocess
    import sys

    from conftest import ROOT

    e = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    cmd = [sys.executable, "-m", "supportnet", "train", *TINY, "--epochs", "2", "--out", "same"]
    ps = [subprocess.Popen(cmd, cwd=tmp_path, env=e, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    res = [(p.wait(120), p.stderr.read()) for p in ps]
    assert sorted(r for r, _ in res) == [0, 2], res
    err = next(e for r, e in res if r == 2)
    assert "in use by another supportnet process" in err or "already holds another run's files" in err, err
    cfg = load_config(tmp_path / "same" / "config.yaml")
    assert cfg.train.epochs == 2


def test_study_reuses_its_own_runs_and_refuses_another_config(tmp_path):
    from supportnet.study import run_study

    base = load_config(None, [("data.name", "synthetic"), ("data.subset", 64), ("train.epochs", 1)])
    base.model.kwargs = {"width": 4, "hidden": 8}
    base.train.train_eval_size = 0
    log: list[str] = []
    run_study(base, ["sgd"], [0], tmp_path / "st", log=log.append)
    run_study(base, ["sgd"], [0], tmp_path / "st", log=log.append)  # the same study again: reused
    assert any(m.strip().startswith("reuse") for m in log), log
    other = base.copy()
    other.train.lr = 0.01
    with pytest.raises(SupportnetError, match="seed0/sgd already holds another run's files"):
        run_study(other, ["sgd"], [0], tmp_path / "st", log=log.append)
    run_study(other, ["sgd"], [0], tmp_path / "st", log=log.append, overwrite=True)
    assert load_config(tmp_path / "st" / "seed0" / "sgd" / "config.yaml").train.lr == 0.01


# ----------------------------------------------------------------------------- atomic writes
@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_atomic_files_and_mask_stores_respect_the_umask(tmp_path, mask):
    import torch

    from supportnet.io import atomic_write_text
    from supportnet.masks import MaskStore

    old = os.umask(mask)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        st_ = MaskStore(2, [(3,)], path=tmp_path / "m.smask")
        st_.write(torch.arange(2), [torch.ones(2, 3, dtype=torch.bool)])
        st_.finalize()
    finally:
        os.umask(old)
    for name in ("a.txt", "m.smask"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~mask, name


def test_atomic_write_names_the_cause(tmp_path, monkeypatch):
    from supportnet import faults
    from supportnet.io import atomic_write_text

    (tmp_path / "d").mkdir()
    with pytest.raises(SupportnetError, match="it is a folder") as e:
        atomic_write_text(tmp_path / "d", "x")
    assert "disk space" not in str(e.value)
    (tmp_path / "f").write_text("mine")
    with pytest.raises(SupportnetError, match="a part of the path is a file"):
        atomic_write_text(tmp_path / "f" / "x.txt", "x")
    monkeypatch.setenv("SUPPORTNET_FAULT", "disk-full:1")
    faults._counts.clear()
    with pytest.raises(SupportnetError, match="free some disk space") as e:
        atomic_write_text(tmp_path / "g.txt", "x")
    assert "No space left" in str(e.value) and not list(tmp_path.glob(".g.txt.*"))
    monkeypatch.delenv("SUPPORTNET_FAULT")
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "ro").mkdir(mode=0o500)
        with pytest.raises(SupportnetError, match="not writable"):
            atomic_write_text(tmp_path / "ro" / "x.txt", "x")


def test_one_line_escapes_newlines_and_undecodable_bytes():
    from supportnet.cli import one_line

    assert one_line("run a\nb\udcff failed") == "run a\\nb\\udcff failed"
    assert one_line("run-💥") == "run-💥"


def test_yaml_aliases_within_the_bound_still_work(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train: &t {epochs: 2, lr: 0.1}\nsupport: {method: sgd}\n")
    assert load_config(p).train.epochs == 2
    p.write_text("base: &b {width: 4}\nmodel: {kwargs: {<<: *b, hidden: 8}}\n".replace("base:", "paper:"))
    assert load_config(p).model.kwargs == {"width": 4, "hidden": 8}


def test_cost_of_refusing_a_mask_store_is_bounded_by_its_size(tmp_path):
    """The header is checked against the file's size before any loop: 10^18 rows of a 192-byte file."""
    import time

    from test_bad_inputs import _stores  # the corpus builder

    from supportnet.errors import IntegrityError
    from supportnet.masks import MaskStore

    for meta in ({"n": 10**18, "shapes": [[8]]}, {"n": 10**18, "shapes": [[0]], "bits": 0, "row_bytes": 0}):
        p = tmp_path / "m.smask"
        p.write_bytes(_stores(**meta)["m.smask"])
        assert p.stat().st_size == 192
        t0 = time.perf_counter()
        with pytest.raises(IntegrityError):
            MaskStore.open(p)
        assert time.perf_counter() - t0 < 1.0


def test_every_command_that_writes_a_folder_takes_overwrite():
    """Every command that writes a folder takes --overwrite (the run-folder claim) or --root (the path check)."""
    from supportnet.cli import build_parser

    p = build_parser()
    sub = next(a for a in p._actions if a.dest == "cmd").choices
    for cmd in ("train", "compare", "dsd"):
        assert "--overwrite" in sub[cmd].format_help()
    theory = next(a for a in sub["theory"]._actions if a.dest == "theory_cmd").choices
    for action in ("planted", "solvers", "check-rip", "three-layer"):
        assert "--overwrite" in theory[action].format_help(), action
