"""The Triton kernels compile for a GPU target without a GPU.

Triton's interpreter (test_correlation_triton.py) is laxer than its compiler about types, scoping and
layouts, so this compiles every kernel variant the launchers use ahead of time for sm_90 (Triton ->
PTX -> cubin through the ptxas bundled with triton), in a subprocess without TRITON_INTERPRET and
with an empty Triton cache.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import traceback

import pytest


def _compile_worker() -> None:
    """Compile every kernel variant the launchers use to a cubin for sm_90 (no GPU needed): the
    interpreter is laxer than the compiler about types and scoping, so this covers the GPU path."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from flowcli.ops import correlation_triton as ct

    r = 4
    shape = {"C": "i32", "H": "i32", "W": "i32"}
    scales = {"sy": "fp32", "sx": "fp32"}
    results = {}
    for dt in ("fp32", "bf16"):
        p = "*" + dt
        variants = [
            ("fwd", ct._corr_fwd_kernel, {"f1_ptr": p, "f2_ptr": p, "out_ptr": p, **shape}, {}),
            ("bwd", ct._corr_bwd_kernel, {"g_ptr": p, "f1_ptr": p, "f2_ptr": p, "g1_ptr": p, "g2_ptr": p, **shape},
             {"NEED1": True, "NEED2": True}),
            ("warp_fwd", ct._warp_corr_fwd_kernel,
             {"f1_ptr": p, "f2_ptr": p, "flow_ptr": "*fp32", "out_ptr": p, **shape, **scales}, {}),
        ]  # fmt: skip
        warp_bwd = {"g_ptr": p, "f1_ptr": p, "f2_ptr": p, "flow_ptr": "*fp32", "g1_ptr": p, "gw_ptr": "*fp32",
                    "gflow_ptr": "*fp32", **shape, **scales}  # fmt: skip
        variants += [
            ("warp_bwd_f1", ct._warp_corr_bwd_kernel, warp_bwd,
             {"NEED1": True, "NEED2": False, "NEEDFLOW": False, "ATOMIC": True}),
            ("warp_bwd_f2", ct._warp_corr_bwd_kernel, warp_bwd,
             {"NEED1": False, "NEED2": True, "NEEDFLOW": True, "ATOMIC": dt == "bf16"}),
        ]  # fmt: skip
        for kind, kernel, signature, flags in variants:
            block_d, block_p, num_warps = ct._config(r, kind)
            constexprs = {"R": r, "BLOCK_D": block_d, "BLOCK_P": block_p, "ACC": tl.float32, **flags}
            start = time.perf_counter()
            try:
                compiled = triton.compile(
                    ASTSource(kernel, signature, constexprs),
                    target=GPUTarget("cuda", 90, 32),
                    options={"num_warps": num_warps},
                )
                ok, detail = bool(compiled.asm.get("cubin")), ""
            except Exception:  # report and go on with the other variants
                ok, detail = False, traceback.format_exc(limit=4)
            results[f"{kind}_{dt}"] = {"ok": ok, "detail": detail, "seconds": round(time.perf_counter() - start, 2)}
    print(json.dumps(results))


def _has_nvidia_toolchain() -> bool:
    spec = importlib.util.find_spec("triton")
    if spec is None or not spec.submodule_search_locations:
        return False
    root = spec.submodule_search_locations[0]
    return os.path.exists(os.path.join(root, "backends", "nvidia", "bin", "ptxas"))


@pytest.mark.slow
@pytest.mark.skipif(not _has_nvidia_toolchain(), reason="needs triton with its NVIDIA backend (ptxas)")
def test_kernels_compile_for_sm90(tmp_path):
    """Ahead-of-time compile (Triton -> PTX -> cubin via ptxas) of every launched variant, no GPU needed."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compile for real, not from an earlier run's cache
    proc = subprocess.run(
        [sys.executable, __file__, "--compile-worker"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    failed = {k: v["detail"] for k, v in json.loads(lines[-1]).items() if not v["ok"]}
    assert not failed, failed


if __name__ == "__main__" and "--compile-worker" in sys.argv:
    _compile_worker()
