"""Flow inference on images of any size: padding, batching, both directions, occlusion, tiling.

`estimate_flow(model, image1, image2)` is the library entry point; the CLI only wraps it.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from flowcli.console import warn
from flowcli.errors import FlowcliError, InputError
from flowcli.ops.warp import backward_warp, out_of_frame, splat_density

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class FlowResult:
    forward: torch.Tensor  # [B, 2, H, W] frame 1 -> frame 2, pixels
    backward: torch.Tensor | None = None  # [B, 2, H, W] frame 2 -> frame 1
    occlusion: torch.Tensor | None = None  # [B, 1, H, W] 1 = pixel of frame 1 not visible in frame 2
    occlusion_backward: torch.Tensor | None = None  # [B, 1, H, W] same for frame 2
    learned_occlusion: torch.Tensor | None = None  # [B, 1, H, W] probability, models with a mask (MaskFlowNet)
    tiles: int = 1


def resolve_device(device: str = "auto") -> torch.device:
    """The torch device for --device auto, cpu, cuda, cuda:N or mps; InputError (exit 2) if it is unknown or absent."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind, colon, number = device.partition(":")
    numbered = colon and kind == "cuda" and number.isascii() and number.isdigit()
    if kind not in ("cpu", "cuda", "mps") or (colon and not numbered):
        raise InputError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device} was asked for but no CUDA GPU is visible; use cpu or auto")
        count = torch.cuda.device_count()
        if int(number or 0) >= count:
            raise InputError(f"device {device}: there is no such GPU; use cuda:0 to cuda:{count - 1}")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("device mps was asked for but MPS is not available; use cpu or auto")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; use fp32, fp16 or bf16")
    dtype = PRECISIONS[precision]
    if dtype == torch.float16 and device.type == "cpu":
        warn("fp16 is not supported on CPU; running in fp32")
        return torch.float32
    return dtype


def native_bf16(device: torch.device) -> bool:
    """Whether `device` is a GPU with bf16 arithmetic in hardware (compute capability 8.0 on: Ampere and later), where
    the training commands' bf16 autocast pays off. torch.cuda.is_bf16_supported() also says yes for older GPUs
    (V100, T4), which emulate bf16 and have no cuDNN bf16 convolutions: slower than fp32 there."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)


def forward_backward_occlusion(
    flow_fw: torch.Tensor, flow_bw: torch.Tensor, alpha1: float = 0.01, alpha2: float = 0.5
) -> torch.Tensor:
    """Occlusion of frame 1's pixels by forward-backward consistency (UnFlow/DDFlow):

    occluded where |w_f + w_b(x + w_f)|^2 >= alpha1 (|w_f|^2 + |w_b(x + w_f)|^2) + alpha2,
    or where x + w_f leaves the image.
    """
    bw_warped = backward_warp(flow_bw, flow_fw)
    mismatch = (flow_fw + bw_warped).pow(2).sum(1, keepdim=True)
    bound = alpha1 * (flow_fw.pow(2).sum(1, keepdim=True) + bw_warped.pow(2).sum(1, keepdim=True)) + alpha2
    return ((mismatch >= bound) | out_of_frame(flow_fw)).float()


def range_map_occlusion(flow_fw: torch.Tensor, flow_bw: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Occlusion of frame 1's pixels from the range map of the backward flow (Wang et al. 2018):
    occluded where fewer than `threshold` of frame 2's pixels, moved by the backward flow, land, or
    where x + w_f leaves the image. Unlike the forward-backward check, a region whose flow is merely
    wrong is still reached by frame 2's pixels, so it is not marked occluded."""
    return ((splat_density(flow_bw) < threshold) | out_of_frame(flow_fw)).float()


def scale_frames(frames: tuple[torch.Tensor, ...], scale: float) -> tuple[torch.Tensor, ...]:
    """Frames [B, 3, H, W] resized by `scale` (sides rounded, at least 8 px; antialiased when shrinking)."""
    h, w = frames[0].shape[-2:]
    size = (max(8, round(h * scale)), max(8, round(w * scale)))
    return tuple(F.interpolate(x, size=size, mode="bilinear", antialias=scale < 1) for x in frames)


def resize_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Flow [B, 2, h, w] resampled to `size` (H, W), its vectors rescaled to the new pixels."""
    ratio = torch.tensor([size[1] / flow.shape[-1], size[0] / flow.shape[-2]], device=flow.device)
    return F.interpolate(flow, size=tuple(size), mode="bilinear", align_corners=False) * ratio.view(1, 2, 1, 1)


def _pad(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x, (h, w)


def _run_model(model, image1, image2, dtype: torch.dtype):
    """One padded forward pass: returns (flow [B,2,H,W], occlusion logit or None), fp32, cropped."""
    multiple = model.config.size_multiple
    (x1, size), (x2, _) = _pad(image1, multiple), _pad(image2, multiple)
    device_type = x1.device.type
    with torch.inference_mode(), torch.autocast(device_type, dtype=dtype, enabled=dtype != torch.float32):
        out = model(x1, x2)
    h, w = size
    flow = out.flow[..., :h, :w].float()
    logit = None if out.occlusion_logit is None else out.occlusion_logit[..., :h, :w].float()
    return flow, logit


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    n = math.ceil((length - overlap) / (tile - overlap))
    stride = (length - tile) / (n - 1)
    return [round(i * stride) for i in range(n)]


def _ramp(length: int, overlap: int, at_start: bool, at_end: bool) -> torch.Tensor:
    """1D blending weight: linear ramps over the overlap on inner edges, flat elsewhere."""
    weight = torch.ones(length)
    if overlap == 0:  # tiles abut: weight[-0:] would be the whole ramp
        return weight
    ramp = torch.linspace(0, 1, overlap + 2)[1:-1]
    if not at_start:
        weight[:overlap] = ramp
    if not at_end:
        weight[-overlap:] = ramp.flip(0)
    return weight


def _run_tiled(model, image1, image2, dtype, max_pixels: int, overlap: int):
    """Overlapping tiles, each with at most `max_pixels`, blended with linear ramps at the seams."""
    h, w = image1.shape[-2:]
    multiple = model.config.size_multiple
    side = max(multiple * 2, int(math.sqrt(max_pixels)) // multiple * multiple)
    tile_h = min(h, side)
    tile_w = min(w, max(side, max_pixels // tile_h // multiple * multiple))
    # per axis: a short, wide image (one row of tiles) keeps the full overlap between its columns
    overlap_y, overlap_x = min(overlap, tile_h // 2), min(overlap, tile_w // 2)
    ys, xs = _tile_starts(h, tile_h, overlap_y), _tile_starts(w, tile_w, overlap_x)
    b = image1.shape[0]
    flow_sum = image1.new_zeros(b, 2, h, w, dtype=torch.float32)  # _run_model's outputs are fp32
    logit_sum = None
    weight_sum = image1.new_zeros(1, 1, h, w, dtype=torch.float32)
    for y in ys:
        for x in xs:
            th, tw = min(tile_h, h - y), min(tile_w, w - x)
            flow, logit = _run_model(
                model, image1[..., y : y + th, x : x + tw], image2[..., y : y + th, x : x + tw], dtype
            )
            wy = _ramp(th, overlap_y, y == 0, y + th >= h).to(flow.device)
            wx = _ramp(tw, overlap_x, x == 0, x + tw >= w).to(flow.device)
            weight = (wy[:, None] * wx[None, :])[None, None]
            flow_sum[..., y : y + th, x : x + tw] += flow * weight
            if logit is not None:
                if logit_sum is None:
                    logit_sum = image1.new_zeros(b, 1, h, w, dtype=torch.float32)
                logit_sum[..., y : y + th, x : x + tw] += logit * weight
            weight_sum[..., y : y + th, x : x + tw] += weight
    flow = flow_sum / weight_sum
    logit = None if logit_sum is None else logit_sum / weight_sum
    return flow, logit, len(ys) * len(xs)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is torch running out of GPU or CPU memory (on the CPU, a RuntimeError that says so)."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _predict(model, image1, image2, dtype, max_pixels: int | None, overlap: int):
    h, w = image1.shape[-2:]
    tiled = max_pixels is not None and h * w > max_pixels
    try:
        if tiled:
            return _run_tiled(model, image1, image2, dtype, max_pixels, overlap)
        flow, logit = _run_model(model, image1, image2, dtype)
        return flow, logit, 1
    except (RuntimeError, torch.cuda.OutOfMemoryError) as error:
        if not is_out_of_memory(error):
            raise
    if image1.is_cuda:
        torch.cuda.empty_cache()
    budget = (max_pixels if tiled else h * w) // 2  # tiles at `max_pixels` ran out too: halve those
    while budget >= 256 * 256:
        warn(f"out of memory at {w}x{h}; retrying with tiles of at most {budget} pixels")
        try:
            return _run_tiled(model, image1, image2, dtype, budget, overlap)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as error:
            if not is_out_of_memory(error):
                raise
            if image1.is_cuda:
                torch.cuda.empty_cache()
            budget //= 2
    raise FlowcliError(f"out of memory even with small tiles at {w}x{h}; use --device cpu or smaller images")


def _is_number(value) -> bool:
    """A Python or numpy real number (not a bool, a string or a tensor)."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def check_frame(name: str, image) -> torch.Tensor:
    """One frame as a [B,3,H,W] floating-point tensor, or an InputError naming it."""
    if not isinstance(image, torch.Tensor):
        raise InputError(f"{name} must be a torch tensor [B,3,H,W] or [3,H,W], got {type(image).__name__}")
    if not image.is_floating_point():
        raise InputError(f"{name} is {image.dtype}; frames must be float RGB in [0, 1] (divide 8-bit images by 255)")
    if image.dim() not in (3, 4) or image.shape[-3] != 3:
        raise InputError(
            f"{name} has shape {tuple(image.shape)}; frames must be RGB [B,3,H,W] or [3,H,W] "
            "(convert gray or RGBA images to RGB, channels first)"
        )
    if 0 in image.shape[-2:]:
        raise InputError(f"{name} has shape {tuple(image.shape)}, an empty image; frames need at least 1x1 pixels")
    if image.shape[0] == 0:
        raise InputError(
            f"{name} has shape {tuple(image.shape)}, a batch of no frames; a batch needs at least one frame"
        )
    low, high = (float(v) for v in torch.aminmax(image.detach()))
    # resampling overshoots [0, 1] a little; [-1, 1] (torchvision's RAFT takes frames so) ran, a few px worse
    if not (-0.5 <= low and high <= 2.0):  # also catches NaN and inf
        raise InputError(
            f"{name} holds values from {low:g} to {high:g}; frames must be float RGB in [0, 1] "
            "(divide 8-bit images by 255, 16-bit ones by 65535; map frames in [-1, 1] back with (x + 1) / 2; "
            "replace NaN and inf)"
        )
    return image[None] if image.dim() == 3 else image


def check_model(model) -> None:
    """An InputError unless `model` is a loaded flow network (a name or path is the commonest mistake)."""
    if isinstance(model, torch.nn.Module) and hasattr(model, "config") and any(True for _ in model.parameters()):
        return
    if isinstance(model, (str, os.PathLike)):
        got = repr(str(model))
    else:
        got = "None" if model is None else f"a {type(model).__name__}"
    raise InputError(
        f"model must be a flow network loaded with flowcli.load_model(name or path), got {got}; "
        "load it once and pass it to every call"
    )


def check_frames(image1: torch.Tensor, image2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two frames as [B,3,H,W] floating-point tensors of the same shape, or an InputError saying what is wrong."""
    image1, image2 = check_frame("image1", image1), check_frame("image2", image2)
    if image1.shape[-2:] != image2.shape[-2:]:
        raise InputError(
            f"the two frames differ in size ({tuple(image1.shape[-2:])} vs {tuple(image2.shape[-2:])}); "
            "flow needs frames of the same size"
        )
    if image1.shape[0] != image2.shape[0]:
        raise InputError(f"the two batches hold {image1.shape[0]} and {image2.shape[0]} frames; give as many of each")
    return image1, image2


def estimate_flow(
    model: torch.nn.Module,
    image1: torch.Tensor,
    image2: torch.Tensor,
    *,
    backward: bool = False,
    occlusion: bool = False,
    max_pixels: int | None = None,
    tile_overlap: int = 64,
    precision: str = "fp32",
    scale: float = 1.0,
) -> FlowResult:
    """Flow between image1 and image2 ([B,3,H,W] or [3,H,W], RGB in [0,1], any size).

    backward=True also returns the flow 2 -> 1; occlusion=True (implies backward) adds the
    forward-backward consistency occlusion of both frames. Images larger than `max_pixels` run
    in overlapping tiles; running out of memory retries with tiles automatically. `scale` resizes the
    frames before the network (0.5: half size, 4x faster) and the flow back to full size and pixels.
    A model.half() or .bfloat16() runs in its own dtype under autocast; a model.double() runs in float64 (fp16
    and bf16 do not apply to it, and a warning says so). The results are fp32 tensors on
    the model's device, computed without autograd (no gradient reaches the frames).
    """
    check_model(model)
    image1, image2 = check_frames(image1, image2)
    if not (_is_number(scale) and math.isfinite(scale) and scale > 0):
        raise InputError(f"scale must be a positive number, got {scale!r}")
    if _is_number(tile_overlap) and float(tile_overlap).is_integer():  # 64.0 and numpy integers too
        tile_overlap = int(tile_overlap)
    if not isinstance(tile_overlap, int) or isinstance(tile_overlap, bool):
        raise InputError(f"tile_overlap must be a whole number of pixels, got {tile_overlap!r}")
    if tile_overlap < 0:
        raise InputError(f"tile_overlap must be 0 or more pixels, got {tile_overlap}")
    if max_pixels is not None and not (_is_number(max_pixels) and max_pixels >= 0):  # also NaN
        raise InputError(f"max_pixels must be a positive number of pixels (0 or None: never tile), got {max_pixels!r}")
    # 0 = never tile, as the CLIs' --max-pixels 0 (and so does inf); a float budget such as 2e6 counts whole pixels
    max_pixels = int(max_pixels) if max_pixels and math.isfinite(max_pixels) else None
    weight = next(model.parameters())
    device = weight.device
    # the model's own floating dtype (a model.double() or .half() runs), fp32 otherwise
    model_dtype = weight.dtype if weight.is_floating_point() else torch.float32
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; use fp32, fp16 or bf16")
    if model_dtype in (torch.float16, torch.bfloat16):
        # A half-precision model runs in its own dtype under autocast, whatever `precision` says: autocast to the
        # other half type fails in torch (autocast::prioritize), and autocast keeps grid_sample in fp32 (on CPU,
        # PyTorch's half-precision grid_sample of the network's channels-last features returns NaN flow).
        dtype = model_dtype
    elif model_dtype == torch.float64:
        # autocast leaves float64 ops alone: fp16 or bf16 would silently run in float64
        if precision != "fp32":
            warn(
                f"precision {precision} does not apply to a float64 model; running in float64 "
                f"(convert it with model.float() to run in {precision})"
            )
        dtype = torch.float32
    else:
        dtype = resolve_precision(precision, device)
    image1, image2 = image1.to(device, model_dtype), image2.to(device, model_dtype)
    backward = backward or occlusion
    b = image1.shape[0]
    if backward:  # both directions in one batch
        first, second = torch.cat((image1, image2)), torch.cat((image2, image1))
    else:
        first, second = image1, image2
    full_size = first.shape[-2:]
    if scale != 1.0:
        first, second = scale_frames((first, second), scale)
    flow, logit, tiles = _predict(model, first, second, dtype, max_pixels, tile_overlap)
    if flow.shape[-2:] != full_size:
        flow = resize_flow(flow, full_size)
        if logit is not None:
            logit = F.interpolate(logit, size=full_size, mode="bilinear", align_corners=False)
    if flow.is_inference():  # straight from the network: callers get a tensor they may edit in place
        flow = flow.clone()
    result = FlowResult(forward=flow[:b], tiles=tiles)
    if logit is not None:
        result.learned_occlusion = torch.sigmoid(logit[:b])
    if backward:
        result.backward = flow[b:]
        if occlusion:
            result.occlusion = forward_backward_occlusion(result.forward, result.backward)
            result.occlusion_backward = forward_backward_occlusion(result.backward, result.forward)
    return result
