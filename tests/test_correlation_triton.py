"""Triton correlation kernels against the PyTorch reference.

On a CPU-only machine the kernels run under Triton's interpreter, which must be switched on
(TRITON_INTERPRET=1) before triton is first imported and stays on for the whole process. So the
checks run in one subprocess (this file, run as a script with --worker) and report JSON; each check
becomes one test here, and the pytest process itself never imports triton. Shapes are odd on
purpose: channel counts, H and W that fill no tile, batch > 1. Sizes stay tiny: the interpreter pays
per program instance. With a CUDA device, `test_cuda_*` run the compiled kernels in-process.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import traceback

import pytest
import torch

HAS_TRITON = importlib.util.find_spec("triton") is not None

CHECKS = [
    "corr_fp32_r4",
    "corr_radii_and_edges",
    "corr_half_precision",
    "corr_partial_grads",
    "warp_fp32_r4",
    "warp_edges_and_out_of_frame",
    "warp_half_precision",
    "warp_partial_grads",
    "warp_deterministic",
    "gradcheck_corr",
    "gradcheck_warp",
    "opcheck",
    "torch_compile",
    "dispatch_and_doctor",
]


# --------------------------------------------------------------------------------------------------
# Worker side (runs in the subprocess with TRITON_INTERPRET=1)


def _close(name, got, want, atol, rtol=0.0):
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = (got - want).abs()
    bound = atol + rtol * want.abs()
    assert bool((err <= bound).all()), f"{name}: max error {err.max().item():.3e} (atol {atol}, rtol {rtol})"


def _inputs(b, c, h, w, dtype=torch.float64, flow_scale=2.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    f1 = torch.randn(b, c, h, w, generator=gen, dtype=torch.float64).to(dtype)
    f2 = torch.randn(b, c, h, w, generator=gen, dtype=torch.float64).to(dtype)
    # Non-integer flow: bilinear sampling has a gradient kink at integer positions.
    flow = (torch.randn(b, 2, h, w, generator=gen, dtype=torch.float64) * flow_scale).add_(0.037)
    return f1, f2, flow


def _run(fn, tensors, grad=None, wrt=None):
    """Output and gradients of fn(*tensors) w.r.t. tensors[i] for i in wrt (default: all)."""
    wrt = range(len(tensors)) if wrt is None else wrt
    leaves = [t.detach().clone().requires_grad_(i in wrt) for i, t in enumerate(tensors)]
    out = fn(*leaves)
    if grad is None:
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = torch.autograd.grad(out, [leaves[i] for i in wrt], grad.to(out.dtype))
    return out, grads, grad


def _compare_corr(b, c, h, w, r, dtype=torch.float32, atol=1e-5):
    from flowcli.ops.correlation import correlation_torch
    from flowcli.ops.correlation_triton import correlation_triton

    f1, f2, _ = _inputs(b, c, h, w, dtype, seed=b * 1000 + c * 100 + h * 10 + w + r)
    out, grads, g = _run(lambda a, b_: correlation_triton(a, b_, r), (f1, f2))
    assert out.dtype == dtype and all(t.dtype == dtype for t in grads)
    ref, ref_grads, _ = _run(lambda a, b_: correlation_torch(a, b_, r), (f1.double(), f2.double()), g)
    tag = f"corr {b}x{c}x{h}x{w} r={r} {dtype}"
    _close(f"{tag} forward", out, ref, atol)
    _close(f"{tag} grad_f1", grads[0], ref_grads[0], atol)
    _close(f"{tag} grad_f2", grads[1], ref_grads[1], atol)


def _compare_warp(b, c, h, w, r, dtype=torch.float32, atol=1e-5, flow_scale=2.0, wrt=None):
    from flowcli.ops.correlation import warp_correlation_torch
    from flowcli.ops.correlation_triton import warp_correlation_triton

    f1, f2, flow = _inputs(b, c, h, w, dtype, flow_scale, seed=b * 1000 + c * 100 + h * 10 + w + r)
    wrt = (0, 1, 2) if wrt is None else wrt
    out, grads, g = _run(lambda a, b_, fl: warp_correlation_triton(a, b_, fl, r), (f1, f2, flow), wrt=wrt)
    assert out.dtype == dtype
    ref, ref_grads, _ = _run(
        lambda a, b_, fl: warp_correlation_torch(a, b_, fl, r), (f1.double(), f2.double(), flow), g, wrt=wrt
    )
    tag = f"warp {b}x{c}x{h}x{w} r={r} {dtype}"
    _close(f"{tag} forward", out, ref, atol)
    names = ("grad_f1", "grad_f2", "grad_flow")
    for i, got, want in zip(wrt, grads, ref_grads):
        # grad_flow sums over channels and displacements of differences of f2: scale its tolerance.
        _close(f"{tag} {names[i]}", got, want, atol * (8 if i == 2 else 1))


def check_corr_fp32_r4():
    _compare_corr(2, 5, 7, 11, 4)  # 81 displacements, 77 pixels: no full tile anywhere


def check_corr_radii_and_edges():
    _compare_corr(2, 3, 5, 6, 0)
    _compare_corr(1, 3, 6, 9, 1)
    _compare_corr(1, 2, 3, 4, 3)  # displacement larger than the image
    _compare_corr(2, 3, 1, 9, 2)  # single row
    _compare_corr(1, 3, 8, 1, 2)  # single column


def check_corr_half_precision():
    from flowcli.ops.correlation import correlation_torch
    from flowcli.ops.correlation_triton import correlation_triton

    for dtype in (torch.float16, torch.bfloat16):
        f1, f2, _ = _inputs(2, 7, 5, 9, dtype)
        out, grads, g = _run(lambda a, b_: correlation_triton(a, b_, 2), (f1, f2))
        ref, ref_grads, _ = _run(lambda a, b_: correlation_torch(a, b_, 2), (f1.double(), f2.double()), g.to(dtype))
        assert out.dtype == dtype and grads[0].dtype == dtype and grads[1].dtype == dtype
        # fp32 accumulation: only the final rounding to dtype remains (one ulp: 2^-10 fp16, 2^-7 bf16).
        eps = torch.finfo(dtype).eps
        for name, got, want in (
            ("forward", out, ref),
            ("grad_f1", grads[0], ref_grads[0]),
            ("grad_f2", grads[1], ref_grads[1]),
        ):
            _close(f"{dtype} {name}", got, want, atol=1e-6, rtol=eps)


def check_corr_partial_grads():
    from flowcli.ops.correlation import correlation_torch
    from flowcli.ops.correlation_triton import correlation_triton

    f1, f2, _ = _inputs(2, 3, 5, 7, torch.float64)
    for wrt in ((0,), (1,)):
        _, grads, g = _run(lambda a, b_: correlation_triton(a, b_, 2), (f1, f2), wrt=wrt)
        _, ref_grads, _ = _run(lambda a, b_: correlation_torch(a, b_, 2), (f1, f2), g, wrt=wrt)
        _close(f"grad wrt {wrt}", grads[0], ref_grads[0], 1e-12)


def check_warp_fp32_r4():
    _compare_warp(2, 5, 7, 11, 4)


def check_warp_edges_and_out_of_frame():
    _compare_warp(2, 3, 5, 6, 0)
    _compare_warp(1, 3, 1, 9, 2)  # H = 1: grid_sample pins y to row 0
    _compare_warp(1, 3, 8, 1, 1)  # W = 1
    _compare_warp(1, 3, 6, 7, 2, flow_scale=6.0)  # many samples leave the frame
    _compare_warp(1, 2, 5, 6, 1, flow_scale=1e4)  # all outside: zeros, zero gradients


def check_warp_half_precision():
    from flowcli.ops.correlation import warp_correlation_torch
    from flowcli.ops.correlation_triton import warp_correlation_triton

    for dtype in (torch.float16, torch.bfloat16):
        f1, f2, flow = _inputs(2, 7, 5, 9, dtype)
        out, grads, g = _run(lambda a, b_, fl: warp_correlation_triton(a, b_, fl, 2), (f1, f2, flow.float()))
        assert out.dtype == dtype and grads[2].dtype == torch.float32
        # The reference in float64 (the PyTorch path would also round the sampling grid to dtype).
        ref, ref_grads, _ = _run(
            lambda a, b_, fl: warp_correlation_torch(a, b_, fl, 2), (f1.double(), f2.double(), flow), g.to(dtype)
        )
        eps = torch.finfo(dtype).eps
        _close(f"{dtype} forward", out, ref, atol=1e-6, rtol=eps)
        _close(f"{dtype} grad_f1", grads[0], ref_grads[0], atol=1e-6, rtol=eps)
        _close(f"{dtype} grad_f2", grads[1], ref_grads[1], atol=1e-6, rtol=eps)
        _close(f"{dtype} grad_flow", grads[2], ref_grads[2], atol=1e-4, rtol=1e-5)


def check_warp_partial_grads():
    for wrt in ((0,), (1,), (2,), (0, 2)):
        _compare_warp(2, 3, 5, 7, 2, dtype=torch.float64, atol=1e-12, wrt=wrt)


def check_warp_deterministic():
    """With deterministic algorithms on, grad_f2 skips atomics: same values, identical across runs."""
    from flowcli.ops.correlation_triton import warp_correlation_triton

    f1, f2, flow = _inputs(2, 3, 6, 7, torch.float32)
    torch.use_deterministic_algorithms(True)
    try:
        _compare_warp(2, 3, 6, 7, 2)
        first = _run(lambda a, b_, fl: warp_correlation_triton(a, b_, fl, 2), (f1, f2, flow.float()))[1]
        second = _run(lambda a, b_, fl: warp_correlation_triton(a, b_, fl, 2), (f1, f2, flow.float()))[1]
        assert all(torch.equal(x, y) for x, y in zip(first, second)), "deterministic mode is not bitwise repeatable"
    finally:
        torch.use_deterministic_algorithms(False)


def check_gradcheck_corr():
    from flowcli.ops.correlation_triton import correlation_triton

    f1, f2, _ = _inputs(2, 3, 4, 5, torch.float64)
    assert torch.autograd.gradcheck(
        lambda a, b_: correlation_triton(a, b_, 1), (f1.requires_grad_(), f2.requires_grad_()), fast_mode=True
    )


def check_gradcheck_warp():
    from flowcli.ops.correlation_triton import warp_correlation_triton

    f1, f2, _ = _inputs(1, 3, 4, 5, torch.float64)
    gen = torch.Generator().manual_seed(3)
    # |flow| < 0.5 plus an offset: finite differences of 1e-6 never cross an integer coordinate.
    flow = torch.rand(1, 2, 4, 5, generator=gen, dtype=torch.float64) * 0.8 - 0.4 + 0.5
    assert torch.autograd.gradcheck(
        lambda a, b_, fl: warp_correlation_triton(a, b_, fl, 1),
        (f1.requires_grad_(), f2.requires_grad_(), flow.requires_grad_()),
        fast_mode=True,
    )


def check_opcheck():
    from flowcli.ops import correlation_triton as ct

    if ct.correlation_op is None:
        return "skipped: torch.library.custom_op needs torch >= 2.4"
    f1, f2, flow = _inputs(1, 3, 4, 5, torch.float32)
    torch.library.opcheck(ct.correlation_op, (f1.requires_grad_(), f2.requires_grad_(), 1))
    torch.library.opcheck(
        ct.warp_correlation_op,
        (f1.detach().requires_grad_(), f2.detach().requires_grad_(), flow.float().requires_grad_(), 1),
    )
    return None


def check_torch_compile():
    """The ops stay whole in a fullgraph compile (aot_eager: no C++/GPU toolchain needed)."""
    from flowcli.ops.correlation_triton import correlation_triton, warp_correlation_triton

    def fn(a, b_, fl):
        return correlation_triton(a, b_, 2).square().sum() + warp_correlation_triton(a, b_, fl, 2).sum()

    f1, f2, flow = _inputs(2, 3, 5, 6, torch.float32)
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    got = _run(compiled, (f1, f2, flow.float()), grad=torch.tensor(1.0, dtype=torch.float64))
    want = _run(fn, (f1, f2, flow.float()), grad=torch.tensor(1.0, dtype=torch.float64))
    _close("compiled loss", got[0], want[0], 1e-5)
    for i, (x, y) in enumerate(zip(got[1], want[1])):
        _close(f"compiled grad {i}", x, y, 1e-5)


def check_dispatch_and_doctor():
    from flowcli.cli.doctor import self_check
    from flowcli.ops.correlation import backend_name, correlation, warp_correlation, warp_correlation_torch

    f1, f2, flow = _inputs(2, 3, 5, 6, torch.float32)
    os.environ["FLOWCLI_CORR"] = "triton"
    try:
        assert backend_name(f1) == "triton"
        out = warp_correlation(f1, f2, flow.float(), 2)
        _close("dispatched warp_correlation", out, warp_correlation_torch(f1.double(), f2.double(), flow, 2), 1e-5)
        _close("dispatched correlation", correlation(f1, f2, 1), correlation(f1.double(), f2.double(), 1), 1e-5)
        check = self_check("cpu")
        assert check.ok and check.backend == "triton", check
    finally:
        del os.environ["FLOWCLI_CORR"]
    # Without FLOWCLI_CORR the CPU keeps the reference, and doctor checks the interpreter as well.
    import typer
    from typer.testing import CliRunner

    from flowcli.cli import doctor

    app = typer.Typer()
    doctor.register(app)
    app.callback()(lambda: None)
    result = CliRunner().invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["self_check"]["backend"] == "torch" and report["interpreter_check"]["ok"], report


def _worker() -> None:
    os.environ["TRITON_INTERPRET"] = "1"
    os.environ.pop("FLOWCLI_CORR", None)
    torch.manual_seed(0)
    import triton

    from flowcli.ops import correlation_triton

    assert correlation_triton.INTERPRETER
    results = {"_triton": triton.__version__}
    for name in CHECKS:
        start = time.perf_counter()
        try:
            note = globals()[f"check_{name}"]()
            results[name] = {"ok": True, "detail": note or ""}
        except Exception:  # report every failure, keep running the other checks
            results[name] = {"ok": False, "detail": traceback.format_exc(limit=6)}
        results[name]["seconds"] = round(time.perf_counter() - start, 2)
    print(json.dumps(results))


# --------------------------------------------------------------------------------------------------
# pytest side


def _major_minor(version: str) -> tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", version).groups()
    return int(major), int(minor)


def _interpreter_skip_reason() -> str | None:
    if not HAS_TRITON:
        return "triton is not installed (pip install 'flowcli[gpu]')"
    import numpy

    triton_version = importlib.metadata.version("triton")
    if _major_minor(triton_version) < (3, 7) and _major_minor(numpy.__version__) >= (2, 4):
        return f"triton {triton_version}'s interpreter fails with numpy {numpy.__version__} (triton >= 3.7 works)"
    return None


@pytest.fixture(scope="module")
def interpreter_results():
    reason = _interpreter_skip_reason()
    if reason:
        pytest.skip(reason)
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env.pop("FLOWCLI_CORR", None)
    proc = subprocess.run(
        [sys.executable, __file__, "--worker"], check=False, capture_output=True, text=True, env=env, timeout=600
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        pytest.fail(f"interpreter worker failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1])


@pytest.mark.parametrize("name", CHECKS)
def test_interpreter(interpreter_results, name):
    result = interpreter_results[name]
    assert result["ok"], result["detail"]
    if result["detail"].startswith("skipped"):
        pytest.skip(result["detail"])


cuda = pytest.mark.skipif(not (HAS_TRITON and torch.cuda.is_available()), reason="needs CUDA and triton")


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_matches_reference(dtype):
    """Compiled kernels at a PWC level-2-like size (C=32, r=4, batch 2) against float64."""
    from flowcli.ops.correlation import correlation_torch, warp_correlation_torch
    from flowcli.ops.correlation_triton import correlation_triton, warp_correlation_triton

    f1, f2, flow = (t.cuda() for t in _inputs(2, 32, 61, 99, dtype, flow_scale=3.0))
    flow = flow.float()
    eps = 1e-6 if dtype == torch.float32 else torch.finfo(dtype).eps
    out, grads, g = _run(lambda a, b_: correlation_triton(a, b_, 4), (f1, f2))
    ref, ref_grads, _ = _run(lambda a, b_: correlation_torch(a, b_, 4), (f1.double(), f2.double()), g.cuda().to(dtype))
    for got, want in zip((out, *grads), (ref, *ref_grads)):
        _close(f"cuda corr {dtype}", got, want, atol=1e-5, rtol=eps)
    out, grads, g = _run(lambda a, b_, fl: warp_correlation_triton(a, b_, fl, 4), (f1, f2, flow))
    ref, ref_grads, _ = _run(
        lambda a, b_, fl: warp_correlation_torch(a, b_, fl, 4),
        (f1.double(), f2.double(), flow.double()),
        g.cuda().to(dtype),
    )
    for got, want in zip((out, *grads[:2]), (ref, *ref_grads[:2])):
        _close(f"cuda warp {dtype}", got, want, atol=1e-5, rtol=eps)
    _close(f"cuda warp grad_flow {dtype}", grads[2], ref_grads[2], atol=1e-3, rtol=1e-3)


@cuda
def test_cuda_correlation_is_deterministic():
    from flowcli.ops.correlation_triton import correlation_triton

    f1, f2, _ = (t.cuda() for t in _inputs(2, 32, 40, 56, torch.float32))
    first = _run(lambda a, b_: correlation_triton(a, b_, 4), (f1, f2))
    second = _run(lambda a, b_: correlation_triton(a, b_, 4), (f1, f2), first[2])
    assert all(torch.equal(x, y) for x, y in zip((first[0], *first[1]), (second[0], *second[1])))


if __name__ == "__main__" and "--worker" in sys.argv:
    _worker()
