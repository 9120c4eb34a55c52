"""Local correlation cost volume, the matching step of PWC-Net.

`correlation(f1, f2, max_displacement=4)` returns, for every pixel of `f1`, the channel-mean of
f1(x) * f2(x + d) for the (2r+1)^2 displacements d in [-r, r]^2 (81 channels for r = 4), ordered
row-major over (dy, dx). Outside `f2` counts as zero. Normalising by the channel count follows
PWC-Net (spatial-correlation-sampler and MMCV return the plain sum).

Backends plug in behind `correlation()`:
- "torch": pure PyTorch. Its forward multiplies 8x8-pixel tiles of f1 with the 16x16 windows of f2
  around them in one batched matrix product per band of tile rows and reads the 81 displacements out
  of the products through a strided view. On CPU that is 1.6x faster than a loop over displacements,
  which re-reads both maps 81 times (30 ms against 47 ms for the five levels of a 1024x448 pair on
  2 cores). Its backward loops over the displacements and recomputes products instead of storing them.
- "triton": the fused GPU kernel (flowcli.ops.correlation_triton), imported lazily.
- "shifts": one slice-multiply-mean per displacement, plain tensor operations only, so that
  torch.onnx and torch.export can trace it (the "torch" backend's autograd.Function and strided view
  cannot be exported). Slower; `flowcli.export` uses it through `use_backend("shifts")`.
`warp_correlation(f1, f2, flow, r)` is `correlation(f1, backward_warp(f2, flow), r)`, fused on triton.
`FLOWCLI_CORR=torch|triton|shifts` forces one; the default picks triton for CUDA tensors when available.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys

import torch
import torch.nn.functional as F


def _overlap(shift: int, size: int) -> tuple[slice, slice]:
    """Slices (into f1, into f2) of the pixels x where both x and x + shift lie inside [0, size)."""
    if shift >= 0:
        return slice(0, size - shift), slice(shift, size)
    return slice(-shift, size), slice(0, size + shift)


def displacements(max_displacement: int) -> list[tuple[int, int]]:
    r = max_displacement
    return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]


def _correlation_tiled(f1: torch.Tensor, f2: torch.Tensor, r: int, tile: int = 8, band_tiles: int = 512):
    """Cost volume from per-tile matrix products: tile pixels x (tile + 2r)^2 window pixels.

    Product (i, j) of a tile's row-major pixel i and window pixel j; pixel (y, x) of the tile meets
    displacement (dy, dx) at window pixel (y + dy, x + dx), so all (2r+1)^2 displacements of all tile
    pixels form one strided view of the products. Bands of tile rows bound the temporary memory.
    Channels-last features (CPU inference) are tiled pixel-major, without a transpose, and give a
    channels-last cost volume, so that the decoder's input stays channels-last for oneDNN (1.05-1.07x per
    1024x436 pair, benchmarks/cpu_inference_ab.py). NCHW features (training) keep the NCHW way: pixel-major
    tiles of them were 1.1x slower at batch 8.
    """
    b, c, h, w = f1.shape
    d, win = 2 * r + 1, tile + 2 * r
    rows, cols = -(-h // tile), -(-w // tile)
    channels_last = f1.is_contiguous(memory_format=torch.channels_last) and not f1.is_contiguous()
    f1 = F.pad(f1, (0, cols * tile - w, 0, rows * tile - h))
    f2 = F.pad(f2, (r, r + cols * tile - w, r, r + rows * tile - h))
    if channels_last:  # [B, H, W, C] views
        f1, f2 = f1.permute(0, 2, 3, 1), f2.permute(0, 2, 3, 1)
        out = f1.new_empty(b, rows * tile, cols * tile, d * d)
    else:
        out = f1.new_empty(b, d * d, rows * tile, cols * tile)
    n = win * win
    band = max(1, band_tiles // max(1, b * cols))
    for top in range(0, rows, band):
        nrows = min(band, rows - top)
        y0, y1 = top * tile, (top + nrows) * tile
        if channels_last:
            a = f1[:, y0:y1].reshape(b, nrows, tile, cols, tile, c).permute(0, 1, 3, 2, 4, 5)
            windows = f2[:, y0 : y1 + 2 * r].unfold(1, win, tile).unfold(2, win, tile).permute(0, 1, 2, 4, 5, 3)
            products = torch.bmm(a.reshape(-1, tile * tile, c), windows.reshape(-1, n, c).transpose(1, 2))
        else:
            a = f1[:, :, y0:y1].reshape(b, c, nrows, tile, cols, tile).permute(0, 2, 4, 3, 5, 1)
            windows = f2[:, :, y0 : y1 + 2 * r].unfold(2, win, tile).unfold(3, win, tile).permute(0, 2, 3, 1, 4, 5)
            products = torch.bmm(a.reshape(-1, tile * tile, c), windows.reshape(-1, c, n))
        strides = (tile * tile * n, tile * n + win, n + 1, win, 1)
        costs = products.as_strided((products.shape[0], tile, tile, d, d), strides)
        if channels_last:
            costs = costs.view(b, nrows, cols, tile, tile, d, d).permute(0, 1, 3, 2, 4, 5, 6)
            out[:, y0:y1].view(b, nrows, tile, cols, tile, d, d).copy_(costs)
        else:
            costs = costs.reshape(b, nrows, cols, tile, tile, d * d).permute(0, 5, 1, 3, 2, 4)
            out[:, :, y0:y1] = costs.reshape(b, d * d, nrows * tile, cols * tile)
    out = out[:, :h, :w].permute(0, 3, 1, 2) if channels_last else out[:, :, :h, :w]
    return out.div_(c)


class _TorchCorrelation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, f1: torch.Tensor, f2: torch.Tensor, max_displacement: int) -> torch.Tensor:
        out = _correlation_tiled(f1, f2, max_displacement)
        ctx.save_for_backward(f1, f2)
        ctx.max_displacement = max_displacement
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        f1, f2 = ctx.saved_tensors
        b, c, h, w = f1.shape
        grad_out = grad_out / c
        grad_f1 = torch.zeros_like(f1) if ctx.needs_input_grad[0] else None
        grad_f2 = torch.zeros_like(f2) if ctx.needs_input_grad[1] else None
        for k, (dy, dx) in enumerate(displacements(ctx.max_displacement)):
            (y1, y2), (x1, x2) = _overlap(dy, h), _overlap(dx, w)
            if y1.stop <= y1.start or x1.stop <= x1.start:
                continue
            g = grad_out[:, k : k + 1, y1, x1]
            if grad_f1 is not None:
                grad_f1[:, :, y1, x1].add_(g * f2[:, :, y2, x2])
            if grad_f2 is not None:
                grad_f2[:, :, y2, x2].add_(g * f1[:, :, y1, x1])
        return grad_f1, grad_f2, None


def correlation_torch(f1: torch.Tensor, f2: torch.Tensor, max_displacement: int = 4) -> torch.Tensor:
    """Reference backend: pure PyTorch, any device and dtype (mixed dtypes promote, as on triton)."""
    dtype = torch.promote_types(f1.dtype, f2.dtype)
    return _TorchCorrelation.apply(f1.to(dtype), f2.to(dtype), max_displacement)


def correlation_shifts(f1: torch.Tensor, f2: torch.Tensor, max_displacement: int = 4) -> torch.Tensor:
    """The "shifts" backend: f2 zero-padded by r, then one shifted product per displacement."""
    r = max_displacement
    h, w = f1.shape[-2:]
    padded = F.pad(f2, (r, r, r, r))
    planes = [
        (f1 * padded[:, :, r + dy : r + dy + h, r + dx : r + dx + w]).mean(dim=1, keepdim=True)
        for dy, dx in displacements(r)
    ]
    return torch.cat(planes, dim=1)


BACKENDS = ("torch", "triton", "shifts")
_USED_BACKEND: contextvars.ContextVar[str | None] = contextvars.ContextVar("flowcli_correlation_backend", default=None)


@contextlib.contextmanager
def use_backend(name: str):
    """Within the block, `correlation` and `warp_correlation` use backend `name`, whatever FLOWCLI_CORR says."""
    if name not in BACKENDS:
        raise ValueError(f"{name!r} is not a correlation backend; use one of {', '.join(BACKENDS)}")
    token = _USED_BACKEND.set(name)
    try:
        yield
    finally:
        _USED_BACKEND.reset(token)


def backend_name(tensor: torch.Tensor) -> str:
    """The backend `correlation`/`warp_correlation` would use for this tensor ("torch", "triton" or "shifts")."""
    return _backend_for(tensor)


def _backend_for(tensor: torch.Tensor) -> str:
    used = _USED_BACKEND.get()
    if used is not None:
        return used
    forced = os.environ.get("FLOWCLI_CORR", "").strip().lower()
    if forced in BACKENDS:
        return forced
    if forced:
        raise ValueError(f"FLOWCLI_CORR={forced!r} is not a backend; use 'torch', 'triton' or 'shifts'")
    if tensor.is_cuda and _triton_available():
        return "triton"
    return "torch"


_TRITON_STATE: dict[str, object] = {}


def _triton_available() -> bool:
    """Whether the Triton backend imports; on failure warns once (only asked for CUDA tensors)."""
    if "ok" not in _TRITON_STATE:
        try:
            from flowcli.ops import correlation_triton  # noqa: F401

            _TRITON_STATE["ok"] = True
        except ImportError as error:
            import warnings

            _TRITON_STATE["error"] = str(error)
            warnings.warn(f"fused correlation unavailable ({error}); using the PyTorch reference", stacklevel=3)
            _TRITON_STATE["ok"] = False
    return bool(_TRITON_STATE["ok"])


def _launch_errors() -> tuple[type[BaseException], ...]:
    """What a kernel that imports but cannot be built or launched here raises: no C compiler or an unsupported
    GPU (RuntimeError), a Triton compilation error."""
    compiler_errors = sys.modules.get("triton.compiler.errors")  # imported by then if Triton compiled anything
    compilation_error = getattr(compiler_errors, "CompilationError", None)
    return (RuntimeError, compilation_error) if isinstance(compilation_error, type) else (RuntimeError,)


def _first_launch_checked(kind: str, dtype: torch.dtype, fused, reference):
    """Run the fused kernel; the first launch of each kernel and dtype falls back to the reference with a
    warning if the kernel cannot be built or launched, and so do all later calls. An explicit
    FLOWCLI_CORR=triton, out-of-memory, and any failure after a first success are raised as they are."""
    key = f"launched:{kind}:{dtype}"
    if key in _TRITON_STATE or os.environ.get("FLOWCLI_CORR", "").strip().lower() == "triton":
        return fused()
    try:
        result = fused()
    except torch.OutOfMemoryError:
        raise
    except _launch_errors() as error:
        import warnings

        message = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        _TRITON_STATE["ok"], _TRITON_STATE["error"] = False, message
        warnings.warn(f"fused correlation failed to run ({message}); using the PyTorch reference", stacklevel=3)
        return reference()
    _TRITON_STATE[key] = True
    return result


def correlation(f1: torch.Tensor, f2: torch.Tensor, max_displacement: int = 4) -> torch.Tensor:
    """Cost volume [B, (2r+1)^2, H, W] between feature maps f1, f2 of shape [B, C, H, W]."""
    if f1.shape != f2.shape:
        raise ValueError(f"correlation needs equal shapes, got {tuple(f1.shape)} and {tuple(f2.shape)}")
    backend = _backend_for(f1)
    if backend == "shifts":
        return correlation_shifts(f1, f2, max_displacement)
    if backend == "triton":
        from flowcli.ops.correlation_triton import correlation_triton

        return _first_launch_checked(
            "correlation", f1.dtype, lambda: correlation_triton(f1, f2, max_displacement),
            lambda: correlation_torch(f1, f2, max_displacement),
        )  # fmt: skip
    return correlation_torch(f1, f2, max_displacement)


def warp_correlation_torch(
    f1: torch.Tensor, f2: torch.Tensor, flow: torch.Tensor, max_displacement: int = 4
) -> torch.Tensor:
    """Reference for the fused variant: f2 backward-warped by flow (bilinear, zeros, align_corners=True)."""
    from flowcli.ops.warp import backward_warp

    return correlation_torch(f1, backward_warp(f2, flow), max_displacement)


def warp_correlation(f1: torch.Tensor, f2: torch.Tensor, flow: torch.Tensor, max_displacement: int = 4) -> torch.Tensor:
    """`correlation(f1, backward_warp(f2, flow), max_displacement)`, fused into one kernel on the triton backend."""
    if f1.shape != f2.shape:
        raise ValueError(f"correlation needs equal shapes, got {tuple(f1.shape)} and {tuple(f2.shape)}")
    b, _, h, w = f1.shape
    if flow.shape != (b, 2, h, w):
        raise ValueError(f"flow must be [{b}, 2, {h}, {w}], got {tuple(flow.shape)}")
    backend = _backend_for(f1)
    if backend == "shifts":
        from flowcli.ops.warp import backward_warp

        return correlation_shifts(f1, backward_warp(f2, flow), max_displacement)
    if backend == "triton":
        from flowcli.ops.correlation_triton import warp_correlation_triton

        return _first_launch_checked(
            "warp_correlation", f1.dtype, lambda: warp_correlation_triton(f1, f2, flow, max_displacement),
            lambda: warp_correlation_torch(f1, f2, flow, max_displacement),
        )  # fmt: skip
    return warp_correlation_torch(f1, f2, flow, max_displacement)
