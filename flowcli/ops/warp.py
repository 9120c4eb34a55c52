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


def backward_warp(image: torch.Tensor, flow: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """image2 sampled at x + flow(x): with the forward flow 1->2 this brings frame 2 onto frame 1."""
    b, _, h, w = flow.shape
    coords = pixel_grid(b, h, w, flow.device, flow.dtype) + flow
    return F.grid_sample(
        image, normalized_grid(coords).to(image.dtype), mode="bilinear", padding_mode=padding_mode, align_corners=True
    )


def out_of_frame(flow: torch.Tensor) -> torch.Tensor:
    """[B, 1, H, W] bool: pixels whose target x + flow(x) leaves the image."""
    b, _, h, w = flow.shape
    coords = pixel_grid(b, h, w, flow.device, flow.dtype) + flow
    x, y = coords[:, 0:1], coords[:, 1:2]
    return (x < 0) | (x > w - 1) | (y < 0) | (y > h - 1)
