"""Backward warping: sample an image or feature map at x + flow(x)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pixel_grid(b: int, h: int, w: int, device, dtype) -> torch.Tensor:
    """[B, 2, H, W] pixel coordinates (x, y)."""
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=dtype), torch.arange(w, device=device, dtype=dtype), indexing="ij"
    )
    return torch.stack((xs, ys)).unsqueeze(0).expand(b, 2, h, w)


def normalized_grid(coords: torch.Tensor) -> torch.Tensor:
    """Pixel coordinates [B, 2, H, W] -> grid_sample's [-1, 1] grid [B, H, W, 2] (align_corners=True)."""
    h, w = coords.shape[-2:]
    x = coords[:, 0] * (2.0 / max(w - 1, 1)) - 1.0
    y = coords[:, 1] * (2.0 / max(h - 1, 1)) - 1.0
    return torch.stack((x, y), dim=-1)


def at_least_fp32(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` in fp32 if it is a half type (fp64 stays fp64)."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def sample_coordinates(flow: torch.Tensor) -> torch.Tensor:
    """x + flow(x) in at least fp32 whatever the flow's dtype: bf16 holds a position past 256 px only to within
    2 px (fp16 past 1024), which under autocast moved every warp by up to that much."""
    b, _, h, w = flow.shape
    flow = at_least_fp32(flow)
    return pixel_grid(b, h, w, flow.device, flow.dtype) + flow


def backward_warp(image: torch.Tensor, flow: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """image2 sampled at x + flow(x): with the forward flow 1->2 this brings frame 2 onto frame 1. The sampling
    runs in at least fp32 (as autocast runs grid_sample) and the result has the image's dtype."""
    image_at_least_fp32 = at_least_fp32(image)
    grid = normalized_grid(sample_coordinates(flow)).to(image_at_least_fp32.dtype)
    sampled = F.grid_sample(image_at_least_fp32, grid, mode="bilinear", padding_mode=padding_mode, align_corners=True)
    return sampled.to(image.dtype)


def out_of_frame(flow: torch.Tensor) -> torch.Tensor:
    """[B, 1, H, W] bool: pixels whose target x + flow(x) leaves the image."""
    h, w = flow.shape[-2:]
    coords = sample_coordinates(flow)
    x, y = coords[:, 0:1], coords[:, 1:2]
    return (x < 0) | (x > w - 1) | (y < 0) | (y > h - 1)


def splat_density(flow: torch.Tensor) -> torch.Tensor:
    """[B, 1, H, W]: how much of the source lands on each target pixel when every pixel x moves to
    x + flow(x), by bilinear splatting of ones (1 where the motion is locally a translation, 0 where
    nothing arrives)."""
    b, _, h, w = flow.shape
    coords = sample_coordinates(flow)
    x, y = coords[:, 0].reshape(b, -1), coords[:, 1].reshape(b, -1)
    x0, y0 = x.floor(), y.floor()
    density = coords.new_zeros(b, h * w)
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            weight = (1 - (x - xi).abs()) * (1 - (y - yi).abs())
            inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
            index = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).long()
            density.scatter_add_(1, index, weight * inside)
    return density.view(b, 1, h, w).to(flow.dtype)
