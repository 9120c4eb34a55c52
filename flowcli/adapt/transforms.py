"""The challenging views a distillation student sees, and the teacher's targets mapped into them.

A view is drawn per sample (on the CPU, from a seeded generator, so runs are reproducible) and
applied to whole batches on the training device:
- crop (DDFlow): the student sees a crop of the window the teacher saw, so pixels whose match lies
  outside the crop become occluded for the student but not for the teacher;
- geometric (DistillFlow): a similarity transform (zoom, small rotation, horizontal flip) of all
  frames of the tuple; the target flow is transformed with it, w_s(x) = L^-1 w_t(L x + t);
- colour (DistillFlow): brightness, contrast, saturation, gamma and noise, the same on all frames;
- superpixels (SelFlow): random SLIC superpixels of the student's frame 2 are filled with noise,
  so the pixels of frame 1 that map into them lose their match.
The student is then taught the teacher's confident flow (pixels the teacher's forward-backward check
calls visible) where the view occluded or changed them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from flowcli.adapt.settings import check_fields
from flowcli.adapt.superpixels import slic
from flowcli.ops.warp import backward_warp, out_of_frame, pixel_grid


@dataclass
class TransformConfig:
    superpixel: float = 0.5  # probability per sample
    colour: float = 0.5
    geometric: float = 0.5
    zoom: tuple[float, float] = (0.8, 1.25)
    rotation_deg: float = 5.0
    flip: float = 0.5  # within a geometric transform
    superpixel_segments: int = 150
    superpixel_fraction: tuple[float, float] = (0.02, 0.1)

    def __post_init__(self):
        check_fields(self)
        for name in ("superpixel", "colour", "geometric", "flip"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} is a probability, in [0, 1], got {getattr(self, name):g}")
        lo, hi = self.zoom
        if not 0 < lo <= hi:
            raise ValueError(f"zoom must be two positive numbers LOW,HIGH with LOW <= HIGH, got {lo:g},{hi:g}")
        lo, hi = self.superpixel_fraction
        if not 0 <= lo <= hi <= 1:
            raise ValueError(f"superpixel_fraction must be LOW,HIGH with 0 <= LOW <= HIGH <= 1, got {lo:g},{hi:g}")
        if self.rotation_deg < 0 or self.superpixel_segments < 1:
            raise ValueError("rotation_deg must be 0 or more and superpixel_segments at least 1")


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


# ----------------------------------------------------------------------------- stage 1 (photometric)


def random_crop(frames: torch.Tensor, size: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    """A random crop [T, 3, h, w] of frames [T, 3, H, W], the same window in every frame."""
    h, w = size
    top = int(torch.randint(frames.shape[-2] - h + 1, (1,), generator=gen))
    left = int(torch.randint(frames.shape[-1] - w + 1, (1,), generator=gen))
    return frames[..., top : top + h, left : left + w]


def flip_and_reverse(frames: torch.Tensor, gen: torch.Generator, stereo: bool, length: int) -> torch.Tensor:
    """Label-free augmentations valid for self-supervision: horizontal flip (stereo: flip and swap left
    and right, which keeps it a left/right pair) and time reversal."""
    if float(torch.rand((), generator=gen)) < 0.5:
        frames = frames.flip(-1)
        if stereo:
            frames = frames.view(length, 2, *frames.shape[1:]).flip(1).reshape(frames.shape)
    if float(torch.rand((), generator=gen)) < 0.5:
        if stereo:
            frames = frames.view(length, 2, *frames.shape[1:]).flip(0).reshape(frames.shape)
        else:
            frames = frames.flip(0)
    return frames


# ----------------------------------------------------------------------------- stage 2 (distillation)


def sample_view(
    gen: torch.Generator, crop: tuple[int, int], window: tuple[int, int], cfg: TransformConfig
) -> dict[str, torch.Tensor]:
    """Parameters of one student view: `theta` [2, 3] maps student pixels to window pixels
    (x_w = L x_s + t), `colour` [5] (brightness, contrast, saturation, gamma, noise std), flags, and
    `sp_u` [K] uniforms that choose superpixels (K = the SLIC grid size for this crop)."""
    ch, cw = crop
    wh, ww = window
    geometric = float(torch.rand((), generator=gen)) < cfg.geometric
    if geometric:
        angle = math.radians(_uniform(gen, -cfg.rotation_deg, cfg.rotation_deg))
        flip = float(torch.rand((), generator=gen)) < cfg.flip
        c, s = abs(math.cos(angle)), abs(math.sin(angle))
        # smallest zoom whose preimage of the crop still fits in the window
        need = max(((cw - 1) * c + (ch - 1) * s) / max(ww - 1, 1), ((cw - 1) * s + (ch - 1) * c) / max(wh - 1, 1))
        lo, hi = max(need, cfg.zoom[0]), max(need, cfg.zoom[1])
        zoom = math.exp(_uniform(gen, math.log(lo), math.log(hi)))
        rot = torch.tensor(
            [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], dtype=torch.float64
        )
        linear = rot @ torch.diag(torch.tensor([-1.0 if flip else 1.0, 1.0], dtype=torch.float64)) / zoom
        corners = torch.tensor([[0, 0], [cw - 1, 0], [0, ch - 1], [cw - 1, ch - 1]], dtype=torch.float64)
        mapped = corners @ linear.T
        lo_xy, hi_xy = mapped.min(0).values, mapped.max(0).values
        tx = _uniform(gen, float(-lo_xy[0]), float(ww - 1 - hi_xy[0]))
        ty = _uniform(gen, float(-lo_xy[1]), float(wh - 1 - hi_xy[1]))
    else:
        linear = torch.eye(2, dtype=torch.float64)
        tx = float(torch.randint(ww - cw + 1, (1,), generator=gen))
        ty = float(torch.randint(wh - ch + 1, (1,), generator=gen))
    theta = torch.cat((linear, torch.tensor([[tx], [ty]], dtype=torch.float64)), dim=1).float()
    colour_on = float(torch.rand((), generator=gen)) < cfg.colour
    colour = (
        torch.tensor(
            [
                _uniform(gen, -0.1, 0.1),
                math.exp(_uniform(gen, -0.3, 0.3)),
                _uniform(gen, 0.6, 1.4),
                math.exp(_uniform(gen, -0.25, 0.25)),
                _uniform(gen, 0.0, 0.03),
            ]
        )
        if colour_on
        else torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0])
    )
    superpixel = float(torch.rand((), generator=gen)) < cfg.superpixel
    grid = superpixel_grid(crop, cfg.superpixel_segments)
    return {
        "theta": theta,
        "colour": colour,
        "geometric": torch.tensor(geometric),
        "colour_on": torch.tensor(colour_on),
        "superpixel": torch.tensor(superpixel),
        "sp_fraction": torch.tensor(_uniform(gen, *cfg.superpixel_fraction)),
        "sp_u": torch.rand(grid[0] * grid[1], generator=gen),
        "noise_seed": torch.randint(2**62, (1,), generator=gen)[0],
    }


def superpixel_grid(crop: tuple[int, int], segments: int) -> tuple[int, int]:
    """The SLIC grid `slic` uses for the (half-resolution) crop: (rows, columns)."""
    h, w = _slic_size(crop)
    step = math.sqrt(h * w / max(1, segments))
    return max(1, round(h / step)), max(1, round(w / step))


def _slic_size(crop: tuple[int, int]) -> tuple[int, int]:
    h, w = crop
    return (h // 2, w // 2) if min(h, w) >= 128 else (h, w)  # SLIC at half resolution: same regions, 4x cheaper


def _student_grid(theta: torch.Tensor, crop: tuple[int, int], window: tuple[int, int]) -> torch.Tensor:
    """Window pixel coordinates [B, 2, h, w] of each student pixel."""
    b = theta.shape[0]
    coords = pixel_grid(b, crop[0], crop[1], theta.device, theta.dtype)
    return torch.einsum("bij,bjhw->bihw", theta[:, :, :2], coords) + theta[:, :, 2, None, None]


def _sample(x: torch.Tensor, coords: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """x [B, C, H, W] sampled at pixel coordinates [B, 2, h, w] of x (any h, w)."""
    h, w = x.shape[-2:]
    grid = torch.stack((coords[:, 0] * (2.0 / max(w - 1, 1)) - 1.0, coords[:, 1] * (2.0 / max(h - 1, 1)) - 1.0), dim=-1)
    return F.grid_sample(x, grid.to(x.dtype), mode=mode, padding_mode="border", align_corners=True)


def _apply_colour(frames: torch.Tensor, colour: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """frames [B, T, 3, h, w]; colour [B, 5]; noise standard normal like frames."""
    p = colour.to(frames.dtype).view(-1, 5, 1, 1, 1, 1).unbind(1)
    brightness, contrast, saturation, gamma, sigma = p
    gray = frames.mean(2, keepdim=True)
    x = gray + saturation * (frames - gray)
    x = ((x - 0.5) * contrast + 0.5 + brightness).clamp(1e-4, 1) ** gamma
    return (x + sigma * noise).clamp(0, 1)


def make_student_view(
    window_frames: torch.Tensor,
    params: dict[str, torch.Tensor],
    crop: tuple[int, int],
    cfg: TransformConfig,
    target_index: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(student frames [B, T, 3, h, w], superpixel noise mask [B, 1, h, w] on frame `target_index`).

    window_frames [B, T, 3, H, W] on the device; params stacked per sample (see `sample_view`).
    """
    b, t = window_frames.shape[:2]
    device = window_frames.device
    theta = params["theta"].to(device)
    coords = _student_grid(theta, crop, tuple(window_frames.shape[-2:]))
    coords_t = coords.repeat_interleave(t, dim=0)
    frames = _sample(window_frames.flatten(0, 1), coords_t).view(b, t, 3, *crop)
    gen = torch.Generator(device=device).manual_seed(int(params["noise_seed"][0]) % (2**63))
    if bool(params["colour_on"].any()):
        noise = torch.randn(frames.shape, generator=gen, device=device, dtype=frames.dtype)
        coloured = _apply_colour(frames, params["colour"].to(device), noise)
        on = params["colour_on"].to(device).view(b, 1, 1, 1, 1)
        frames = torch.where(on, coloured, frames)
    mask = frames.new_zeros(b, 1, *crop)
    if bool(params["superpixel"].any()):
        target = frames[:, target_index]
        small = F.interpolate(target, size=_slic_size(crop), mode="area")
        labels = slic(small, segments=cfg.superpixel_segments)  # [B, h', w']
        chosen = params["sp_u"].to(device) < params["sp_fraction"].to(device)[:, None]  # [B, K]
        picked = torch.gather(chosen.float(), 1, labels.flatten(1)).view(b, 1, *labels.shape[-2:])
        picked = F.interpolate(picked, size=crop, mode="nearest")
        mask = picked * params["superpixel"].to(device).view(b, 1, 1, 1).float()
        fill = torch.rand(target.shape, generator=gen, device=device, dtype=frames.dtype)
        frames = frames.clone()
        frames[:, target_index] = mask * fill + (1 - mask) * target
    return frames, mask


def teacher_targets(
    teacher_flow: torch.Tensor,
    teacher_occlusion: torch.Tensor,
    params: dict[str, torch.Tensor],
    crop: tuple[int, int],
    noise_mask: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """The teacher's forward flow and confidence in the student's view, and the pixels the view occluded.

    teacher_flow [B, 2, H, W] and teacher_occlusion [B, 1, H, W] (1 = occluded) on the window.
    Returns `flow` [B, 2, h, w] (w_s = L^-1 w_t(L x + t)), `confident` (the teacher saw it as
    visible), `hallucinated` (visible for the teacher, occluded in the student's view: its match
    left the crop or fell into a noise-filled superpixel) and `mask` = confident and (hallucinated
    or the view was changed by a colour or geometric transform), where distillation applies.
    """
    b = teacher_flow.shape[0]
    theta = params["theta"].to(teacher_flow.device)
    coords = _student_grid(theta, crop, tuple(teacher_flow.shape[-2:]))
    flow_w = _sample(teacher_flow.float(), coords)
    inverse = torch.linalg.inv(theta[:, :, :2].double()).float()
    flow = torch.einsum("bij,bjhw->bihw", inverse, flow_w)
    confident = (_sample(teacher_occlusion.float(), coords) < 0.5).float()
    lost = out_of_frame(flow).float()
    lost = torch.maximum(lost, (backward_warp(noise_mask, flow) > 0.0).float())  # any noise in the bilinear sample
    hallucinated = confident * lost
    changed = (params["geometric"] | params["colour_on"]).to(flow.device).view(b, 1, 1, 1).float()
    mask = confident * torch.maximum(hallucinated, changed.expand_as(hallucinated))
    return {"flow": flow, "confident": confident, "hallucinated": hallucinated, "mask": mask}
