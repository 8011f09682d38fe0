"""Compile every variant of supportnet.kernels for sm_90 without a GPU (Triton -> PTX -> cubin with
the ptxas that triton bundles): what the interpreter runs, compiled Triton must accept too.

Run by tests/test_kernels.py in a subprocess, without TRITON_INTERPRET (which must be unset when
the kernels are defined). Exit code 0 when every variant compiled.
"""

import itertools
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from supportnet.kernels import _triton as k  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
I32 = "i32"


def cases():
    for dt in ("*fp32", "*bf16"):
        for vote in (False, True):
            sig = {"q_ptr": dt, "part_ptr": "*fp32", "tot_ptr": "*fp32", "B": I32, "U": I32, "rows_per": I32}
            sig.update(tau="fp32", VOTE="constexpr", BLOCK="constexpr")
            yield k.batch_stats_kernel, sig, {"VOTE": vote, "BLOCK": 1024}
        for rule in (0, 1, 2):
            sig = {"q_ptr": dt, "out_ptr": dt, "m_ptr": "*u8", "part_ptr": "*fp32", "tot_ptr": "*fp32"}
            sig.update(B=I32, U=I32, splits=I32, n_tot=I32, rows_per=I32, tau="fp32", beta="fp32")
            sig.update(RULE="constexpr", BLOCK="constexpr", TBLOCK="constexpr")
            yield k.batch_apply_kernel, sig, {"RULE": rule, "BLOCK": 1024, "TBLOCK": 256}
        geo = {"e2": I32, "e3": I32, "l1": I32, "l2": I32, "l3": I32}
        for pen, ident in itertools.product((False, True), (False, True)):
            sig = {"q_ptr": dt, "out_ptr": dt, "bits_ptr": "*u8", "part_ptr": "*fp32", "U": I32}
            sig.update(row_stride=I32, bit_off=I32, tau="fp32", **geo)
            sig.update(PEN="constexpr", IDENT="constexpr", BLOCK="constexpr")
            yield k.instance_fwd_kernel, sig, {"PEN": pen, "IDENT": ident, "BLOCK": 1024}
        for (bits, pen), ident in itertools.product(((False, False), (True, False), (True, True)), (False, True)):
            sig = {"g_ptr": dt, "grad_ptr": dt, "src_ptr": dt, "bits_ptr": "*u8" if bits else dt}
            sig.update(gpen_ptr="*fp32" if pen else dt, U=I32, row_stride=I32, bit_off=I32, tau="fp32")
            sig.update(pen_scale="fp32", **geo)
            sig.update(FROM_BITS="constexpr", PEN="constexpr", IDENT="constexpr", BLOCK="constexpr")
            yield k.gated_bwd_kernel, sig, {"FROM_BITS": bits, "PEN": pen, "IDENT": ident, "BLOCK": 1024}


def main() -> int:
    ok = total = 0
    for fn, sig, const in cases():
        total += 1
        try:
            compiled = triton.compile(ASTSource(fn, sig, const), target=TARGET)
            ok += bool(compiled.asm.get("cubin"))
        except Exception as e:  # noqa: BLE001 - report every failing variant
            print(f"FAIL {fn.fn.__name__} {const}: {type(e).__name__}: {str(e)[:400]}")
    print(f"{ok}/{total} kernel variants compiled to sm_90 cubins")
    return 0 if ok == total else 1


if __name__ == "__main__":
    sys.exit(main())
