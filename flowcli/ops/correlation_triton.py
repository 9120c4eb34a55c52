"""Triton backend for `correlation` and `warp_correlation` (see flowcli/ops/correlation.py).

Two fused kernels and their backward kernels, behind autograd.Functions in eager mode and
torch.library custom ops under torch.compile (one opaque op each, with fakes and autograd):

- `flowcli::correlation(f1, f2, max_displacement)`: the local cost volume read straight from the
  two feature maps. One program owns a block of pixels and all (2r+1)^2 displacements; it walks the
  channels, so f1 is read once and f2's neighbourhood comes from L1/L2, and writes each output once.
- `flowcli::warp_correlation(f1, f2, flow, max_displacement)`: the same with f2 sampled bilinearly
  at q + flow(q) inside the kernel (q = p + d), i.e. `correlation(f1, backward_warp(f2, flow))`
  without materialising the warped map.

Accumulation is fp32 for fp32/fp16/bf16 inputs (fp64 for fp64, which gradcheck uses); outputs and
gradients come back in the input dtypes. Backward passes are gathers, not scatters: grad_f1 at p sums
over the displacements of p, grad_f2 (plain correlation) at q sums over the displacements that land
on q, so they are deterministic and atomic-free. The one exception is grad_f2 of the fused warp
variant: bilinear sampling at an arbitrary flow has no inverse to gather over, so it scatters four
weights per (channel, pixel) with atomics, or, when torch.use_deterministic_algorithms(True) is on,
writes the gradient of the warped map and scatters it with a deterministic `index_put_`.

Inputs are made contiguous NCHW. On CPU tensors the kernels only run under Triton's interpreter
(TRITON_INTERPRET=1 set before triton is first imported), which the tests use.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError as error:  # re-raised with the fix; flowcli's dispatch catches ImportError
    raise ImportError(
        f"the Triton correlation backend needs triton ({error}); install flowcli[gpu] or set FLOWCLI_CORR=torch"
    ) from error

INTERPRETER = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Per kernel: (displacement x pixel lanes per program, warps). Chosen from ptxas register counts for
# sm_90 (no spills, <= ~100 registers/thread), not from timings: no GPU was at hand. The fused warp
# backward runs as two launches (grad_f1; grad_f2 + grad_flow), which needs far fewer registers than
# one launch doing both. `benchmarks/bench_correlation.py --sweep-blocks` times the alternatives.
KERNEL_CONFIG = {
    "fwd": (4096, 8),
    "bwd": (2048, 8),
    "warp_fwd": (2048, 8),
    "warp_bwd_f1": (2048, 8),
    "warp_bwd_f2": (4096, 8),
}


def _config(max_displacement: int, kind: str) -> tuple[int, int, int]:
    """(BLOCK_D, BLOCK_P, num_warps) for a kernel."""
    lanes, num_warps = KERNEL_CONFIG[kind]
    block_d = triton.next_power_of_2((2 * max_displacement + 1) ** 2)
    block_p = triton.next_power_of_2(max(4, min(128, lanes // block_d)))
    return block_d, block_p, num_warps


def _acc_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


# --------------------------------------------------------------------------------------------------
# Kernels. Integer division and modulo only ever see non-negative values (the interpreter follows
# numpy's floor semantics, the compiled path C's truncation). Masks are built from tensors only.


@triton.jit
def _pixel_setup(pid_p, HW, W, R: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr):
    K: tl.constexpr = 2 * R + 1
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    d = tl.arange(0, BLOCK_D)
    p_ok = p < HW
    d_ok = d < K * K
    y = p // W
    x = p % W
    dy = d // K - R
    dx = d % K - R
    return p, d, p_ok, d_ok, y, x, dy, dx


@triton.jit
def _inside(yy, xx, H, W):
    return (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)


@triton.jit
def _bilinear(qy, qx, fy, fx, H, W, sy, sx, ok, ACC: tl.constexpr):
    """Corners, weights and masks of grid_sample(align_corners=True, zeros) at (qy + fy, qx + fx).

    sx (sy) is 0 when W (H) is 1: grid_sample then always samples column (row) 0. Coordinates are
    clamped to [-2, size + 1] first: beyond that every corner is outside anyway, and the clamp keeps
    the integer conversion in range.
    """
    X = (qx.to(ACC) + fx) * sx
    Y = (qy.to(ACC) + fy) * sy
    X = tl.minimum(tl.maximum(X, -2.0), W + 1.0)
    Y = tl.minimum(tl.maximum(Y, -2.0), H + 1.0)
    X0 = tl.floor(X)
    Y0 = tl.floor(Y)
    wx = X - X0
    wy = Y - Y0
    x0 = X0.to(tl.int32)
    y0 = Y0.to(tl.int32)
    x1 = x0 + 1
    y1 = y0 + 1
    mx0 = (x0 >= 0) & (x0 < W)
    mx1 = (x1 >= 0) & (x1 < W)
    my0 = ok & (y0 >= 0) & (y0 < H)
    my1 = ok & (y1 >= 0) & (y1 < H)
    return y0 * W + x0, wx, wy, my0 & mx0, my0 & mx1, my1 & mx0, my1 & mx1


@triton.jit
def _corr_fwd_kernel(
    f1_ptr, f2_ptr, out_ptr, C, H, W,
    R: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    pid_p = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    HW = H * W
    D: tl.constexpr = (2 * R + 1) * (2 * R + 1)
    p, d, p_ok, d_ok, y, x, dy, dx = _pixel_setup(pid_p, HW, W, R, BLOCK_D, BLOCK_P)
    qy = y[None, :] + dy[:, None]
    qx = x[None, :] + dx[:, None]
    ok = d_ok[:, None] & p_ok[None, :] & _inside(qy, qx, H, W)
    q = qy * W + qx
    acc = tl.zeros([BLOCK_D, BLOCK_P], dtype=ACC)
    off = b * C * HW
    for _c in range(C):
        a = tl.load(f1_ptr + off + p, mask=p_ok, other=0.0).to(ACC)
        v = tl.load(f2_ptr + off + q, mask=ok, other=0.0).to(ACC)
        acc += a[None, :] * v
        off += HW
    out = acc / C
    o = b * D * HW + d[:, None] * HW + p[None, :]
    tl.store(out_ptr + o, out.to(out_ptr.dtype.element_ty), mask=d_ok[:, None] & p_ok[None, :])


@triton.jit
def _corr_bwd_kernel(
    g_ptr, f1_ptr, f2_ptr, g1_ptr, g2_ptr, C, H, W,
    R: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr, ACC: tl.constexpr,
    NEED1: tl.constexpr, NEED2: tl.constexpr,
):  # fmt: skip
    """grad_f1[p] = sum_d g[d, p] f2[p + d] / C;  grad_f2[q] = sum_d g[d, q - d] f1[q - d] / C."""
    pid_p = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    HW = H * W
    D: tl.constexpr = (2 * R + 1) * (2 * R + 1)
    p, d, p_ok, d_ok, y, x, dy, dx = _pixel_setup(pid_p, HW, W, R, BLOCK_D, BLOCK_P)
    g_base = g_ptr + b * D * HW + d[:, None] * HW
    if NEED1:
        ty = y[None, :] + dy[:, None]
        tx = x[None, :] + dx[:, None]
        ok1 = d_ok[:, None] & p_ok[None, :] & _inside(ty, tx, H, W)
        t = ty * W + tx
        g1 = tl.load(g_base + p[None, :], mask=ok1, other=0.0).to(ACC)
    if NEED2:
        sy = y[None, :] - dy[:, None]
        sx = x[None, :] - dx[:, None]
        ok2 = d_ok[:, None] & p_ok[None, :] & _inside(sy, sx, H, W)
        s = sy * W + sx
        g2 = tl.load(g_base + s, mask=ok2, other=0.0).to(ACC)
    off = b * C * HW
    for _c in range(C):
        if NEED1:
            v = tl.load(f2_ptr + off + t, mask=ok1, other=0.0).to(ACC)
            r1 = tl.sum(g1 * v, axis=0) / C
            tl.store(g1_ptr + off + p, r1.to(g1_ptr.dtype.element_ty), mask=p_ok)
        if NEED2:
            u = tl.load(f1_ptr + off + s, mask=ok2, other=0.0).to(ACC)
            r2 = tl.sum(g2 * u, axis=0) / C
            tl.store(g2_ptr + off + p, r2.to(g2_ptr.dtype.element_ty), mask=p_ok)
        off += HW


@triton.jit
def _warp_corr_fwd_kernel(
    f1_ptr, f2_ptr, flow_ptr, out_ptr, C, H, W, sy, sx,
    R: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """out[d, p] = sum_c f1[c, p] * bilinear(f2[c], q + flow[q]) / C with q = p + d inside the image."""
    pid_p = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    HW = H * W
    D: tl.constexpr = (2 * R + 1) * (2 * R + 1)
    p, d, p_ok, d_ok, y, x, dy, dx = _pixel_setup(pid_p, HW, W, R, BLOCK_D, BLOCK_P)
    qy = y[None, :] + dy[:, None]
    qx = x[None, :] + dx[:, None]
    ok = d_ok[:, None] & p_ok[None, :] & _inside(qy, qx, H, W)
    q = qy * W + qx
    flow_base = flow_ptr + b * 2 * HW
    fx = tl.load(flow_base + q, mask=ok, other=0.0).to(ACC)
    fy = tl.load(flow_base + HW + q, mask=ok, other=0.0).to(ACC)
    a00, wx, wy, m00, m01, m10, m11 = _bilinear(qy, qx, fy, fx, H, W, sy, sx, ok, ACC)
    acc = tl.zeros([BLOCK_D, BLOCK_P], dtype=ACC)
    off = b * C * HW
    for _c in range(C):
        a = tl.load(f1_ptr + off + p, mask=p_ok, other=0.0).to(ACC)
        v00 = tl.load(f2_ptr + off + a00, mask=m00, other=0.0).to(ACC)
        v01 = tl.load(f2_ptr + off + a00 + 1, mask=m01, other=0.0).to(ACC)
        v10 = tl.load(f2_ptr + off + a00 + W, mask=m10, other=0.0).to(ACC)
        v11 = tl.load(f2_ptr + off + a00 + W + 1, mask=m11, other=0.0).to(ACC)
        top = v00 + wx * (v01 - v00)
        bottom = v10 + wx * (v11 - v10)
        acc += a[None, :] * (top + wy * (bottom - top))
        off += HW
    out = acc / C
    o = b * D * HW + d[:, None] * HW + p[None, :]
    tl.store(out_ptr + o, out.to(out_ptr.dtype.element_ty), mask=d_ok[:, None] & p_ok[None, :])


@triton.jit
def _warp_corr_bwd_kernel(
    g_ptr, f1_ptr, f2_ptr, flow_ptr, g1_ptr, gw_ptr, gflow_ptr, C, H, W, sy, sx,
    R: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr, ACC: tl.constexpr,
    NEED1: tl.constexpr, NEED2: tl.constexpr, NEEDFLOW: tl.constexpr, ATOMIC: tl.constexpr,
):  # fmt: skip
    """Per pixel block, as p: grad_f1; as q: gw = dL/d warped(q) (a gather), then the flow gradient
    at q and gw's bilinear scatter into grad_f2 (atomics into gw_ptr when ATOMIC, else gw itself is
    written to gw_ptr for a deterministic scatter outside)."""
    pid_p = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    HW = H * W
    D: tl.constexpr = (2 * R + 1) * (2 * R + 1)
    p, d, p_ok, d_ok, y, x, dy, dx = _pixel_setup(pid_p, HW, W, R, BLOCK_D, BLOCK_P)
    g_base = g_ptr + b * D * HW + d[:, None] * HW
    flow_base = flow_ptr + b * 2 * HW
    if NEED1:
        ty = y[None, :] + dy[:, None]
        tx = x[None, :] + dx[:, None]
        ok1 = d_ok[:, None] & p_ok[None, :] & _inside(ty, tx, H, W)
        t = ty * W + tx
        fx = tl.load(flow_base + t, mask=ok1, other=0.0).to(ACC)
        fy = tl.load(flow_base + HW + t, mask=ok1, other=0.0).to(ACC)
        t00, twx, twy, t00m, t01m, t10m, t11m = _bilinear(ty, tx, fy, fx, H, W, sy, sx, ok1, ACC)
        g1 = tl.load(g_base + p[None, :], mask=ok1, other=0.0).to(ACC)
    if NEED2 or NEEDFLOW:
        sy_ = y[None, :] - dy[:, None]
        sx_ = x[None, :] - dx[:, None]
        ok2 = d_ok[:, None] & p_ok[None, :] & _inside(sy_, sx_, H, W)
        s = sy_ * W + sx_
        g2 = tl.load(g_base + s, mask=ok2, other=0.0).to(ACC)
        ofx = tl.load(flow_base + p, mask=p_ok, other=0.0).to(ACC)
        ofy = tl.load(flow_base + HW + p, mask=p_ok, other=0.0).to(ACC)
        o00, owx, owy, o00m, o01m, o10m, o11m = _bilinear(y, x, ofy, ofx, H, W, sy, sx, p_ok, ACC)
        gfx = tl.zeros([BLOCK_P], dtype=ACC)
        gfy = tl.zeros([BLOCK_P], dtype=ACC)
    off = b * C * HW
    for _c in range(C):
        if NEED1:
            v00 = tl.load(f2_ptr + off + t00, mask=t00m, other=0.0).to(ACC)
            v01 = tl.load(f2_ptr + off + t00 + 1, mask=t01m, other=0.0).to(ACC)
            v10 = tl.load(f2_ptr + off + t00 + W, mask=t10m, other=0.0).to(ACC)
            v11 = tl.load(f2_ptr + off + t00 + W + 1, mask=t11m, other=0.0).to(ACC)
            top = v00 + twx * (v01 - v00)
            bottom = v10 + twx * (v11 - v10)
            r1 = tl.sum(g1 * (top + twy * (bottom - top)), axis=0) / C
            tl.store(g1_ptr + off + p, r1.to(g1_ptr.dtype.element_ty), mask=p_ok)
        if NEED2 or NEEDFLOW:
            u = tl.load(f1_ptr + off + s, mask=ok2, other=0.0).to(ACC)
            gw = tl.sum(g2 * u, axis=0) / C
            if NEEDFLOW:
                w00 = tl.load(f2_ptr + off + o00, mask=o00m, other=0.0).to(ACC)
                w01 = tl.load(f2_ptr + off + o00 + 1, mask=o01m, other=0.0).to(ACC)
                w10 = tl.load(f2_ptr + off + o00 + W, mask=o10m, other=0.0).to(ACC)
                w11 = tl.load(f2_ptr + off + o00 + W + 1, mask=o11m, other=0.0).to(ACC)
                gfx += gw * ((1.0 - owy) * (w01 - w00) + owy * (w11 - w10))
                gfy += gw * ((1.0 - owx) * (w10 - w00) + owx * (w11 - w01))
            if NEED2:
                if ATOMIC:
                    gw_row = gw_ptr + off
                    tl.atomic_add(gw_row + o00, gw * (1.0 - owx) * (1.0 - owy), mask=o00m)
                    tl.atomic_add(gw_row + o00 + 1, gw * owx * (1.0 - owy), mask=o01m)
                    tl.atomic_add(gw_row + o00 + W, gw * (1.0 - owx) * owy, mask=o10m)
                    tl.atomic_add(gw_row + o00 + W + 1, gw * owx * owy, mask=o11m)
                else:
                    tl.store(gw_ptr + off + p, gw, mask=p_ok)
        off += HW
    if NEEDFLOW:
        gflow_base = gflow_ptr + b * 2 * HW
        tl.store(gflow_base + p, (gfx * sx).to(gflow_ptr.dtype.element_ty), mask=p_ok)
        tl.store(gflow_base + HW + p, (gfy * sy).to(gflow_ptr.dtype.element_ty), mask=p_ok)


# --------------------------------------------------------------------------------------------------
# Launchers


def _device_guard(tensor: torch.Tensor):
    if tensor.is_cuda:
        return torch.cuda.device(tensor.device)
    import contextlib

    return contextlib.nullcontext()


def _check_runnable(tensor: torch.Tensor) -> None:
    if not tensor.is_cuda and not INTERPRETER:
        raise RuntimeError(
            f"the Triton correlation backend needs CUDA tensors (got {tensor.device}); "
            "set FLOWCLI_CORR=torch, or TRITON_INTERPRET=1 before importing triton to run it on the CPU"
        )


def _launch_corr_fwd(f1: torch.Tensor, f2: torch.Tensor, max_displacement: int) -> torch.Tensor:
    b, c, h, w = f1.shape
    block_d, block_p, num_warps = _config(max_displacement, "fwd")
    out = f1.new_empty(b, (2 * max_displacement + 1) ** 2, h, w)
    if out.numel() == 0 or c == 0:
        return out.zero_()
    grid = (triton.cdiv(h * w, block_p), b)
    with _device_guard(f1):
        _corr_fwd_kernel[grid](
            f1, f2, out, c, h, w,
            R=max_displacement, BLOCK_D=block_d, BLOCK_P=block_p, ACC=_acc_dtype(f1.dtype), num_warps=num_warps,
        )  # fmt: skip
    return out


def _launch_corr_bwd(grad, f1, f2, max_displacement: int, need1: bool, need2: bool):
    b, c, h, w = f1.shape
    block_d, block_p, num_warps = _config(max_displacement, "bwd")
    g1 = torch.empty_like(f1) if need1 else f1.new_empty(0)
    g2 = torch.empty_like(f2) if need2 else f2.new_empty(0)
    if f1.numel() == 0 or not (need1 or need2):
        return g1.zero_(), g2.zero_()
    grid = (triton.cdiv(h * w, block_p), b)
    with _device_guard(f1):
        _corr_bwd_kernel[grid](
            grad, f1, f2, g1 if need1 else f1, g2 if need2 else f2, c, h, w,
            R=max_displacement, BLOCK_D=block_d, BLOCK_P=block_p, ACC=_acc_dtype(f1.dtype),
            NEED1=need1, NEED2=need2, num_warps=num_warps,
        )  # fmt: skip
    return g1, g2


def _sample_scales(h: int, w: int) -> tuple[float, float]:
    # grid_sample(align_corners=True) maps any coordinate to row/column 0 of a size-1 axis.
    return (1.0 if h > 1 else 0.0), (1.0 if w > 1 else 0.0)


def _launch_warp_fwd(f1, f2, flow, max_displacement: int) -> torch.Tensor:
    b, c, h, w = f1.shape
    block_d, block_p, num_warps = _config(max_displacement, "warp_fwd")
    out = f1.new_empty(b, (2 * max_displacement + 1) ** 2, h, w)
    if out.numel() == 0 or c == 0:
        return out.zero_()
    sy, sx = _sample_scales(h, w)
    grid = (triton.cdiv(h * w, block_p), b)
    with _device_guard(f1):
        _warp_corr_fwd_kernel[grid](
            f1, f2, flow, out, c, h, w, sy, sx,
            R=max_displacement, BLOCK_D=block_d, BLOCK_P=block_p, ACC=_acc_dtype(f1.dtype), num_warps=num_warps,
        )  # fmt: skip
    return out


def _scatter_bilinear_deterministic(gw: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """grad_f2 from dL/d warped: grid_sample's bilinear scatter with a deterministic index_put_."""
    b, c, h, w = gw.shape
    sy, sx = _sample_scales(h, w)
    ys, xs = torch.meshgrid(
        torch.arange(h, device=gw.device, dtype=gw.dtype),
        torch.arange(w, device=gw.device, dtype=gw.dtype),
        indexing="ij",
    )
    fl = flow.to(gw.dtype)
    x = ((xs + fl[:, 0]) * sx).clamp(-2.0, w + 1.0)
    y = ((ys + fl[:, 1]) * sy).clamp(-2.0, h + 1.0)
    x0, y0 = x.floor(), y.floor()
    wx, wy = x - x0, y - y0
    x0, y0 = x0.long(), y0.long()
    out = torch.zeros(b * c * h * w, device=gw.device, dtype=gw.dtype)
    plane = (
        torch.arange(b, device=gw.device).view(b, 1, 1, 1) * c + torch.arange(c, device=gw.device).view(1, c, 1, 1)
    ) * (h * w)
    for oy, ox, weight in ((0, 0, (1 - wx) * (1 - wy)), (0, 1, wx * (1 - wy)), (1, 0, (1 - wx) * wy), (1, 1, wx * wy)):
        cy, cx = y0 + oy, x0 + ox
        valid = (cy >= 0) & (cy < h) & (cx >= 0) & (cx < w)
        index = (cy.clamp(0, h - 1) * w + cx.clamp(0, w - 1)).unsqueeze(1) + plane
        values = gw * (weight * valid).unsqueeze(1)
        out.index_put_((index.reshape(-1),), values.reshape(-1), accumulate=True)
    return out.view(b, c, h, w)


def _launch_warp_bwd(grad, f1, f2, flow, max_displacement: int, need1: bool, need2: bool, need_flow: bool):
    b, c, h, w = f1.shape
    acc_dtype = torch.float64 if f1.dtype == torch.float64 else torch.float32
    deterministic = torch.are_deterministic_algorithms_enabled()
    g1 = torch.empty_like(f1) if need1 else f1.new_empty(0)
    gflow = torch.empty_like(flow) if need_flow else flow.new_empty(0)
    # grad_f2 accumulates in acc_dtype: atomics land there, or gw (dL/d warped f2) for the scatter.
    gw = torch.zeros(f2.shape, device=f2.device, dtype=acc_dtype) if need2 else f2.new_empty(0)
    if f1.numel() == 0:
        return g1.zero_(), gw.to(f2.dtype), gflow.zero_()
    sy, sx = _sample_scales(h, w)
    acc = _acc_dtype(f1.dtype)
    launches = []
    if need1:
        launches.append(("warp_bwd_f1", True, False, False))
    if need2 or need_flow:
        launches.append(("warp_bwd_f2", False, need2, need_flow))
    with _device_guard(f1):
        for kind, n1, n2, nflow in launches:
            block_d, block_p, num_warps = _config(max_displacement, kind)
            grid = (triton.cdiv(h * w, block_p), b)
            _warp_corr_bwd_kernel[grid](
                grad, f1, f2, flow, g1 if n1 else f1, gw if n2 else f2, gflow if nflow else flow,
                c, h, w, sy, sx,
                R=max_displacement, BLOCK_D=block_d, BLOCK_P=block_p, ACC=acc,
                NEED1=n1, NEED2=n2, NEEDFLOW=nflow, ATOMIC=not deterministic, num_warps=num_warps,
            )  # fmt: skip
    if need2:
        g2 = (_scatter_bilinear_deterministic(gw, flow) if deterministic else gw).to(f2.dtype)
    else:
        g2 = gw
    return g1, g2, gflow


# --------------------------------------------------------------------------------------------------
# Autograd. Eager calls go through plain autograd.Functions: a torch.library op costs a dispatcher
# round trip per call and imports torch._dynamo on its first call (seconds), which the CLI and the
# batch-1 case (launch-latency bound) should not pay. Under torch.compile the same launchers run as
# torch.library custom ops with registered fakes and autograd, so graphs stay whole.


class _CorrelationFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, f1, f2, max_displacement):
        ctx.save_for_backward(f1, f2)
        ctx.max_displacement = max_displacement
        return _launch_corr_fwd(f1, f2, max_displacement)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        f1, f2 = ctx.saved_tensors
        need1, need2 = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        g1, g2 = _launch_corr_bwd(grad.contiguous(), f1, f2, ctx.max_displacement, need1, need2)
        return (g1 if need1 else None), (g2 if need2 else None), None


class _WarpCorrelationFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, f1, f2, flow, max_displacement):
        ctx.save_for_backward(f1, f2, flow)
        ctx.max_displacement = max_displacement
        return _launch_warp_fwd(f1, f2, flow, max_displacement)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        f1, f2, flow = ctx.saved_tensors
        need1, need2, need_flow = ctx.needs_input_grad[:3]
        g1, g2, gflow = _launch_warp_bwd(grad.contiguous(), f1, f2, flow, ctx.max_displacement, need1, need2, need_flow)
        return (g1 if need1 else None), (g2 if need2 else None), (gflow if need_flow else None), None


def _empty_unless(flag: bool, like: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(like) if flag else like.new_empty(0)


def _register_custom_ops():
    """flowcli::correlation and flowcli::warp_correlation (+ backward ops); None before torch 2.4."""
    if not hasattr(torch.library, "custom_op"):
        return None, None
    if hasattr(torch.ops.flowcli, "warp_correlation_backward"):  # module re-imported: ops already exist
        return torch.ops.flowcli.correlation.default, torch.ops.flowcli.warp_correlation.default

    @torch.library.custom_op("flowcli::correlation", mutates_args=())
    def correlation_op(f1: torch.Tensor, f2: torch.Tensor, max_displacement: int) -> torch.Tensor:
        return _launch_corr_fwd(f1, f2, max_displacement)

    @correlation_op.register_fake
    def _(f1, f2, max_displacement):
        b, _, h, w = f1.shape
        return f1.new_empty(b, (2 * max_displacement + 1) ** 2, h, w)

    @torch.library.custom_op("flowcli::correlation_backward", mutates_args=())
    def correlation_backward_op(
        grad: torch.Tensor, f1: torch.Tensor, f2: torch.Tensor, max_displacement: int, need_f1: bool, need_f2: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return _launch_corr_bwd(grad, f1, f2, max_displacement, need_f1, need_f2)

    @correlation_backward_op.register_fake
    def _(grad, f1, f2, max_displacement, need_f1, need_f2):
        return _empty_unless(need_f1, f1), _empty_unless(need_f2, f2)

    def correlation_setup(ctx, inputs, output):
        f1, f2, max_displacement = inputs
        ctx.save_for_backward(f1, f2)
        ctx.max_displacement = max_displacement

    def correlation_backward(ctx, grad):
        f1, f2 = ctx.saved_tensors
        need1, need2 = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        g1, g2 = correlation_backward_op(grad.contiguous(), f1, f2, ctx.max_displacement, need1, need2)
        return (g1 if need1 else None), (g2 if need2 else None), None

    correlation_op.register_autograd(correlation_backward, setup_context=correlation_setup)

    @torch.library.custom_op("flowcli::warp_correlation", mutates_args=())
    def warp_correlation_op(
        f1: torch.Tensor, f2: torch.Tensor, flow: torch.Tensor, max_displacement: int
    ) -> torch.Tensor:
        return _launch_warp_fwd(f1, f2, flow, max_displacement)

    @warp_correlation_op.register_fake
    def _(f1, f2, flow, max_displacement):
        b, _, h, w = f1.shape
        return f1.new_empty(b, (2 * max_displacement + 1) ** 2, h, w)

    @torch.library.custom_op("flowcli::warp_correlation_backward", mutates_args=())
    def warp_correlation_backward_op(
        grad: torch.Tensor,
        f1: torch.Tensor,
        f2: torch.Tensor,
        flow: torch.Tensor,
        max_displacement: int,
        need_f1: bool,
        need_f2: bool,
        need_flow: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _launch_warp_bwd(grad, f1, f2, flow, max_displacement, need_f1, need_f2, need_flow)

    @warp_correlation_backward_op.register_fake
    def _(grad, f1, f2, flow, max_displacement, need_f1, need_f2, need_flow):
        return _empty_unless(need_f1, f1), _empty_unless(need_f2, f2), _empty_unless(need_flow, flow)

    def warp_setup(ctx, inputs, output):
        f1, f2, flow, max_displacement = inputs
        ctx.save_for_backward(f1, f2, flow)
        ctx.max_displacement = max_displacement

    def warp_backward(ctx, grad):
        f1, f2, flow = ctx.saved_tensors
        need1, need2, need_flow = ctx.needs_input_grad[:3]
        g1, g2, gflow = warp_correlation_backward_op(
            grad.contiguous(), f1, f2, flow, ctx.max_displacement, need1, need2, need_flow
        )
        return (g1 if need1 else None), (g2 if need2 else None), (gflow if need_flow else None), None

    warp_correlation_op.register_autograd(warp_backward, setup_context=warp_setup)
    return correlation_op, warp_correlation_op


correlation_op, warp_correlation_op = _register_custom_ops()


def _compiling() -> bool:
    is_compiling = getattr(torch.compiler, "is_compiling", None)
    return bool(is_compiling and is_compiling())


# --------------------------------------------------------------------------------------------------
# Public entry points (called by flowcli.ops.correlation's dispatch)


def _prepare(f1: torch.Tensor, f2: torch.Tensor, max_displacement: int) -> tuple[torch.Tensor, torch.Tensor]:
    if f1.dim() != 4 or f1.shape != f2.shape:
        raise ValueError(
            f"correlation needs two [B, C, H, W] maps of equal shape, got {tuple(f1.shape)}, {tuple(f2.shape)}"
        )
    if f1.device != f2.device:
        raise ValueError(f"correlation inputs are on {f1.device} and {f2.device}")
    if int(max_displacement) != max_displacement or max_displacement < 0:
        raise ValueError(f"max_displacement must be a non-negative integer, got {max_displacement!r}")
    _check_runnable(f1)
    dtype = torch.promote_types(f1.dtype, f2.dtype)
    if not dtype.is_floating_point:
        raise ValueError(f"correlation needs floating-point features, got {dtype}")
    return f1.to(dtype).contiguous(), f2.to(dtype).contiguous()


def correlation_triton(f1: torch.Tensor, f2: torch.Tensor, max_displacement: int = 4) -> torch.Tensor:
    """Fused cost volume [B, (2r+1)^2, H, W]; same values and gradients as `correlation_torch`."""
    f1, f2 = _prepare(f1, f2, max_displacement)
    if correlation_op is not None and _compiling():
        return correlation_op(f1, f2, int(max_displacement))
    return _CorrelationFunction.apply(f1, f2, int(max_displacement))


def warp_correlation_triton(
    f1: torch.Tensor, f2: torch.Tensor, flow: torch.Tensor, max_displacement: int = 4
) -> torch.Tensor:
    """`correlation(f1, backward_warp(f2, flow))` in one kernel; gradients for f1, f2 and flow."""
    f1, f2 = _prepare(f1, f2, max_displacement)
    b, _, h, w = f1.shape
    if flow.shape != (b, 2, h, w):
        raise ValueError(f"flow must be [{b}, 2, {h}, {w}], got {tuple(flow.shape)}")
    if flow.device != f1.device or not flow.dtype.is_floating_point:
        raise ValueError(f"flow must be a floating-point tensor on {f1.device}")
    flow = flow.contiguous()
    if warp_correlation_op is not None and _compiling():
        return warp_correlation_op(f1, f2, flow, int(max_displacement))
    return _WarpCorrelationFunction.apply(f1, f2, flow, int(max_displacement))
