"""Hostile and mistaken checkpoints (the checkpoint cases of docs/reliability.md).

Every case runs the command line and asserts: exit code 2, exactly one line on stderr naming
the problem (no traceback, no torch warning), and every file that existed before is unchanged
(hashes), with no file written. It runs in this process (conftest's ``cli``: a warning is a
stderr line there too, an exception that escapes fails the case), except the denial-of-service
cases: a fresh process each, which must also meet a bound: finished within 10 s of CPU time
with a peak memory under 500 MB (the child's own CPU time and maximum resident set, from
``wait4``: on a shared 2-core machine wall time measures the neighbours; an address-space
limit guards the machine if it regresses).
"""

import hashlib
import io
import os
import pickle
import struct
import zipfile
import zlib
from pathlib import Path

import pytest
import torch
from conftest import assert_user_error, run_cli_measured

from supportnet.checkpoint import META, content_digest, save_checkpoint

KW = {"width": 8, "hidden": 32}
_HUGE = {"width": 10**6, "hidden": 10**6}  # ~10^13 weights: only ever built on the meta device
_NEG = {"width": -8, "hidden": 32}


# ----------------------------------------------------------------------------- builders


def _final(d: Path, name: str = "final.pt", **change) -> Path:
    """A real final.pt (convnet-s, untrained) written by the library, with ``change`` applied
    to its payload before saving (so its checksum is right and its content is not)."""
    from supportnet.config import load_config
    from supportnet.export import arch_of, plain_state_dict, taus_of
    from supportnet.models import create_model

    cfg = load_config(None, ["data.name=synthetic", "model.kwargs={width: 8, hidden: 32}"])
    model = create_model("convnet-s", (1, 16, 16), 10, **KW)
    payload = {
        "state_dict": plain_state_dict(model),
        "config": cfg.to_dict(),
        "metrics": [],
        "taus": taus_of(model),
        "arch": arch_of(cfg, (1, 16, 16), 10),
    }
    payload.update(change)
    p = d / name
    save_checkpoint(p, payload, kind="final")
    return p


def _forged(d: Path, name: str, payload, kind: str = "final", fmt: int = 2, digest: str | None = None) -> Path:
    """A file in the checkpoint format with a *correct* digest over a payload of any shape."""
    obj = dict(payload) if isinstance(payload, dict) else payload
    if isinstance(obj, dict):
        obj[META] = {"format": fmt, "kind": kind, "sha256": digest or content_digest(payload, kind)}
    torch.save(obj, d / name)
    return d / name


def _legacy(d: Path, name: str, inner: bytes, fmt: int = 1) -> Path:
    """The format-1 wrapper with a correct outer SHA-256 around ``inner`` bytes."""
    w = {"format": fmt, "sha256": hashlib.sha256(inner).hexdigest()}
    w["body"] = torch.frombuffer(bytearray(inner), dtype=torch.uint8)
    torch.save(w, d / name)
    return d / name


def _saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _zip(records: list[tuple[str, bytes, int, int, int]]) -> bytes:
    """A zip archive by hand: ``(name, data, method, declared size, crc)`` per record, so the
    declared sizes and the compression can be anything (a stored record declares its size
    for both its compressed and uncompressed length)."""
    out, central = bytearray(), bytearray()
    for name, data, method, size, crc in records:
        n = name.encode()
        off = len(out)
        csize = size if method == zipfile.ZIP_STORED else len(data)
        out += struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 0, method, 0, 0, crc, csize, size, len(n), 0) + n
        out += data
        central += struct.pack(
            "<4s6H3I5H2I", b"PK\x01\x02", 20, 20, 0, method, 0, 0, crc, csize, size, len(n), 0, 0, 0, 0, 0, off
        )
        central += n
    cd = len(out)
    out += central + struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, len(records), len(records), len(central), cd, 0)
    return bytes(out)


def _records(raw: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        return [(i.filename, z.read(i.filename)) for i in z.infolist()]


def _bomb(d: Path) -> Path:
    """About 1 MB that inflates to 1 GiB: a torch.save archive whose pickle declares a 1 GiB
    storage and whose storage record is deflated zeros (torch.load would inflate it)."""
    recs = _records(_saved({"state_dict": {"w": torch.zeros(1000, dtype=torch.uint8)}}))
    size = 1 << 30
    chunk = bytes(16 << 20)
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = co.compress(chunk) + co.flush(zlib.Z_FULL_FLUSH)  # the same bytes for every 16 MiB of zeros
    stream = block * (size // len(chunk)) + b"\x03\x00"  # ... and an empty final block
    crc = 0
    for _ in range(size // len(chunk)):
        crc = zlib.crc32(chunk, crc)
    out = []
    for name, data in recs:
        if name.endswith("data.pkl"):
            data = data.replace(b"M\xe8\x03", b"J" + struct.pack("<i", size))  # numel and shape 1000 -> 2^30
        if name.endswith("data/0"):
            out.append((name, stream, zipfile.ZIP_DEFLATED, size, crc))
        else:
            out.append((name, data, zipfile.ZIP_STORED, len(data), zlib.crc32(data)))
    p = d / "bomb.pt"
    p.write_bytes(_zip(out))
    return p


def _oversized(d: Path) -> Path:
    """A stored archive whose storage record declares 2 GiB in a file of a few kB."""
    recs = _records(_saved({"state_dict": {"w": torch.zeros(10)}}))
    out = [(n, x, 0, (1 << 31) if n.endswith("data/0") else len(x), zlib.crc32(x)) for n, x in recs]
    p = d / "big.pt"
    p.write_bytes(_zip(out))
    return p


def _flip(p: Path, where: str) -> Path:
    """Flip one bit inside a record of ``p``'s archive (``where``: the record's name suffix)."""
    raw = bytearray(p.read_bytes())
    with zipfile.ZipFile(p) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(where))
    (extra_len,) = struct.unpack("<H", raw[info.header_offset + 28 : info.header_offset + 30])
    start = info.header_offset + 30 + len(info.filename.encode()) + extra_len
    raw[start + info.file_size // 2] ^= 0x04
    p.write_bytes(bytes(raw))
    return p


def _torchscript(p: Path) -> None:
    import warnings

    with warnings.catch_warnings():  # deprecated in torch 2.13, still written and read
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(torch.nn.ReLU()), str(p))


def _moved(p: Path) -> bytes:
    """The bytes of ``p``, which is removed (a builder's intermediate file)."""
    raw = p.read_bytes()
    p.unlink()
    return raw


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


# ----------------------------------------------------------------------------- cases
# (id, builder(d) -> None, argv, words). Paths in argv are relative to the case folder d.


def _run_folder(d: Path, ckpt_builder) -> None:
    (d / "run").mkdir()
    (d / "run" / "config.yaml").write_text("data:\n  name: synthetic\nmodel:\n  kwargs: {width: 8, hidden: 32}\n")
    ckpt_builder(d / "run")


def _sparse(d: Path, units) -> None:
    from supportnet.config import load_config
    from supportnet.export import arch_of, plain_state_dict, taus_of
    from supportnet.models import create_model

    cfg = load_config(None, ["data.name=synthetic", "model.kwargs={width: 8, hidden: 32}"])
    model = create_model("convnet-s", (1, 16, 16), 10, **KW)
    save_checkpoint(
        d / "sparse.pt",
        {
            "state_dict": plain_state_dict(model),
            "config": cfg.to_dict(),
            "keep": {},
            "units": units,
            "arch": arch_of(cfg, (1, 16, 16), 10),
            "taus": taus_of(model),
        },
        kind="sparse",
    )


CASES = [
    # bodies that are not what they should be (their checksums are right)
    ("body-list", lambda d: _forged(d, "c.pt", [1, 2, 3]), ["verify", "c.pt"], ["holds a list"]),
    (
        "body-non-tensor-weights",
        lambda d: _forged(d, "c.pt", {"state_dict": {"w": "x"}, "config": {}, "metrics": [], "taus": {}, "arch": {}}),
        ["verify", "c.pt"],
        ["not a map of names to tensors"],
    ),
    (
        "body-missing-keys",
        lambda d: _forged(d, "c.pt", {"state_dict": {}, "config": {}, "metrics": []}),
        ["verify", "c.pt"],
        ["without taus, arch"],
    ),
    (
        "body-wrong-types",
        lambda d: _forged(d, "c.pt", {"state_dict": {}, "config": [], "metrics": [], "taus": {}, "arch": {}}),
        ["verify", "c.pt"],
        ["'config' is of type list, not dict"],
    ),
    (
        "resume-wrong-types",
        lambda d: _run_folder(
            d,
            lambda r: _forged(
                r,
                "checkpoint.pt",
                {k: {} for k in ("model", "optimizer", "schedule", "rng", "config")}
                | {"epoch": "1", "step": 0, "metrics": []},
                kind="resume",
            ),
        ),
        ["train", "--resume", "run"],
        ["'epoch' is of type str, not int"],
    ),
    (
        "body-bad-taus",
        lambda d: _forged(
            d, "c.pt", {"state_dict": {}, "config": {}, "metrics": [], "taus": {"a": float("nan")}, "arch": {}}
        ),
        ["verify", "c.pt"],
        ["taus"],
    ),
    (
        "body-deep-nesting",
        lambda d: _forged(d, "c.pt", {"config": _deep(200)}, kind="other", digest="0" * 64),
        ["verify", "c.pt"],
        ["deeper than"],
    ),
    ("body-unknown-kind", lambda d: _forged(d, "c.pt", {"x": 1}, kind="weird"), ["verify", "c.pt"], ["unknown kind"]),
    ("body-format-99", lambda d: _forged(d, "c.pt", {"x": 1}, fmt=99), ["verify", "c.pt"], ["version 99"]),
    ("legacy-inner-list", lambda d: _legacy(d, "c.pt", _saved([1, 2])), ["verify", "c.pt"], ["holds a list"]),
    (
        "legacy-inner-non-tensor",
        lambda d: _legacy(d, "c.pt", _saved({"state_dict": {"w": 3}, "config": {}, "metrics": []})),
        ["verify", "c.pt"],
        ["not a map of names to tensors"],
    ),
    (
        "legacy-inner-pickle-payload",
        lambda d: _legacy(d, "c.pt", _saved({"state_dict": {}, "x": _Evil()})),
        ["verify", "c.pt"],
        ["not a supportnet checkpoint"],
    ),
    (
        "legacy-inner-bomb",
        lambda d: _legacy(d, "c.pt", _moved(_oversized(d))),
        ["verify", "c.pt"],
        ["declares more bytes"],
    ),
    ("legacy-version", lambda d: _legacy(d, "c.pt", b"x", fmt=7), ["verify", "c.pt"], ["version 7"]),
    # damaged or foreign files
    ("deflate-bomb", _bomb, ["verify", "bomb.pt"], ["compressed record"]),
    ("declared-sizes-too-big", _oversized, ["verify", "big.pt"], ["declares more bytes"]),
    (
        "truncated",
        lambda d: (d / "c.pt").write_bytes(_moved(_final(d, "x.pt"))[:5000]),
        ["verify", "c.pt"],
        ["truncated"],
    ),
    ("bitflip-weight", lambda d: _flip(_final(d), "data/0"), ["verify", "final.pt"], ["checksum"]),
    ("bitflip-pickle", lambda d: _flip(_final(d), "data.pkl"), ["verify", "final.pt"], []),
    (
        "foreign-torch",
        lambda d: torch.save({"weights": torch.zeros(2)}, d / "c.pt"),
        ["verify", "c.pt"],
        ["not a supportnet"],
    ),
    ("foreign-bytes", lambda d: (d / "c.pt").write_bytes(b"hello " * 100), ["verify", "c.pt"], ["not a zip archive"]),
    ("empty-file", lambda d: (d / "c.pt").write_bytes(b""), ["verify", "c.pt"], ["not a zip archive"]),
    (
        "zip-not-torch",
        lambda d: (d / "c.pt").write_bytes(_zip([("a.txt", b"hi", 0, 2, zlib.crc32(b"hi"))])),
        ["verify", "c.pt"],
        ["no data.pkl"],
    ),
    (
        "legacy-pickle",
        lambda d: torch.save({"w": torch.zeros(2)}, d / "old.pt", _use_new_zipfile_serialization=False),
        ["verify", "old.pt"],
        ["legacy pickle"],
    ),
    (
        "plain-pickle",
        lambda d: (d / "p.pkl").write_bytes(pickle.dumps({"a": 1}, protocol=4)),
        ["verify", "p.pkl"],
        ["legacy pickle"],
    ),
    ("verify-dir", lambda d: (d / "sub").mkdir(), ["verify", "sub"], ["not a file"]),
    ("verify-dev-null", lambda d: None, ["verify", "/dev/null"], ["not a file"]),
    (
        "safetensors-damaged",
        lambda d: (d / "m.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + b"{}"),
        ["verify", "m.safetensors"],
        ["not a safetensors file"],
    ),
    # the wrong kind of file
    (
        "resume-from-final",
        lambda d: _run_folder(d, lambda r: _final(r, "checkpoint.pt")),
        ["train", "--resume", "run"],
        ["a final model, not a resume checkpoint"],
    ),
    (
        "resume-from-legacy-pickle",
        lambda d: _run_folder(d, lambda r: torch.save({}, r / "checkpoint.pt", _use_new_zipfile_serialization=False)),
        ["train", "--resume", "run"],
        ["legacy pickle"],
    ),
    # export
    (
        "export-same-path-compact",
        lambda d: _sparse(d, {"features.1": [1]}),
        ["export", "--compact", "sparse.pt", "-o", "sparse.pt"],
        ["is the input itself"],
    ),
    (
        "export-same-path-spelt-otherwise",
        lambda d: _final(d),
        ["export", "final.pt", "--format", "state_dict", "-o", "./sub/../final.pt"],
        ["is the input itself"],
    ),
    (
        "export-into-run-final",
        lambda d: (d / "run").mkdir() or _final(d / "run"),
        ["export", "run", "-o", "run/final.pt"],
        ["is the input itself"],
    ),
    (
        "export-to-dir",
        lambda d: _final(d) and (d / "out").mkdir(),
        ["export", "final.pt", "-o", "out"],
        ["is a folder"],
    ),
    (
        "export-under-a-file",
        lambda d: _final(d) and (d / "notes.txt").write_text("x"),
        ["export", "final.pt", "-o", "notes.txt/m.pt"],
        ["is a file, not a folder"],
    ),
    (
        "export-not-a-checkpoint",
        lambda d: (d / "notes.txt").write_text("hello"),
        ["export", "notes.txt", "-o", "m.pt"],
        ["not a zip archive"],
    ),
    ("export-missing", lambda d: None, ["export", "nothing.pt", "-o", "m.pt"], ["does not exist"]),
    (
        "export-resume-checkpoint",
        lambda d: _forged(
            d,
            "checkpoint.pt",
            {k: {} for k in ("model", "optimizer", "schedule", "rng", "config")}
            | {"epoch": 1, "step": 8, "metrics": []},
            kind="resume",
        ),
        ["export", "checkpoint.pt", "-o", "m.pt"],
        ["a resume checkpoint, not a final model"],
    ),
    (
        "export-compact-of-final",
        lambda d: _final(d),
        ["export", "--compact", "final.pt", "-o", "m.pt"],
        ["a final model, not a dsd sparse checkpoint"],
    ),
    (
        "export-compact-bad-units",
        lambda d: _sparse(d, {"features.1": [999]}),
        ["export", "--compact", "sparse.pt", "-o", "m.pt"],
        ["do not fit the model"],
    ),
    (
        "export-unknown-model",
        lambda d: _final(d, arch={"name": "nope", "in_shape": [1, 16, 16], "num_classes": 10, "kwargs": {}}),
        ["export", "final.pt", "-o", "m.pt"],
        ["unknown model"],
    ),
    (
        "export-malformed-arch",
        lambda d: _final(d, arch={"name": "convnet-s", "in_shape": [1, -16], "num_classes": 10, "kwargs": {}}),
        ["export", "final.pt", "-o", "m.pt"],
        ["malformed"],
    ),
    (
        "export-weights-do-not-fit",
        lambda d: _final(d, state_dict={"w": torch.zeros(2)}),
        ["export", "final.pt", "-o", "m.pt"],
        ["does not fit"],
    ),
    (
        "export-forged-huge-arch",
        lambda d: _final(d, arch={"name": "convnet-s", "in_shape": [1, 16, 16], "num_classes": 10, "kwargs": _HUGE}),
        ["export", "final.pt", "-o", "m.pt"],
        ["does not fit"],
    ),
    (
        "export-unbuildable-arch",
        lambda d: _final(d, arch={"name": "convnet-s", "in_shape": [1, 16, 16], "num_classes": 10, "kwargs": _NEG}),
        ["export", "final.pt", "-o", "m.pt"],
        [],
    ),
    (
        "export-taus-other-layers",
        lambda d: _final(d, taus={"features.9": 0.0}),
        ["export", "final.pt", "-o", "m.pt"],
        ["taus name other layers"],
    ),
    (
        "export-onnx-torchscript-input",
        lambda d: _torchscript(d / "m.ts"),
        ["export", "m.ts", "-o", "m2.pt"],
        ["torchscript model"],
    ),
]
DOS = {"deflate-bomb", "declared-sizes-too-big", "legacy-inner-bomb", "export-forged-huge-arch"}


def _deep(n: int):
    x: list = []
    for _ in range(n):
        x = [x]
    return x


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def _run_bounded(args: list[str], cwd: Path, wall: float = 60.0):
    """Run the CLI (killed after ``wall`` seconds); return (outcome, CPU seconds, peak RSS in MB)."""
    o = run_cli_measured(args, cwd, timeout=wall, as_limit=4 << 30)  # a guard for the machine, far above the bound
    return o, o.cpu, o.maxrss_mb


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_checkpoint(tmp_path, case, cli):
    name, build, argv, words = case
    build(tmp_path)
    before = _snapshot(tmp_path)
    if name in DOS:
        proc, cpu, peak = _run_bounded(argv, tmp_path)
        assert cpu < 10 and peak < 500, (cpu, peak, proc.stderr[-500:])
    else:
        proc = cli(*argv, cwd=tmp_path, env={"HOME": str(tmp_path), "SUPPORTNET_DATA": str(tmp_path / "nowhere")})
    assert_user_error(proc, *words)
    assert ";" in proc.stderr, proc.stderr  # 'problem; fix'
    assert _snapshot(tmp_path) == before, "a file was modified, deleted or written"
    assert not (tmp_path / "PWNED").exists()


def test_corpus_covers_each_class():
    ids = {c[0].split("-")[0] for c in CASES}
    assert {"body", "legacy", "deflate", "truncated", "bitflip", "foreign", "verify", "resume", "export"} <= ids
    assert len(CASES) >= 40
