"""SLIC superpixels in plain torch (for SelFlow's superpixel occlusion hallucination).

k-means in (colour, position) space, each pixel compared with the centres of the 3x3 grid cells
around it (Achanta et al., SLIC, 2012). Vectorised over the batch; no connectivity post-processing
(a superpixel may come out in a few pieces, which is harmless for occlusion hallucination).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def slic(image: torch.Tensor, segments: int = 100, compactness: float = 10.0, iterations: int = 5) -> torch.Tensor:
    """Superpixel labels [B, H, W] (int64, 0 .. gh*gw-1) of RGB images [B, 3, H, W] in [0, 1].

    `segments` is the approximate count; `compactness` trades colour similarity (low) for regular
    shapes (high), on colours scaled to [0, 100] as SLIC does for Lab.
    """
    b, _, h, w = image.shape
    step = math.sqrt(h * w / max(1, segments))
    gh, gw = max(1, round(h / step)), max(1, round(w / step))
    cell_h, cell_w = h / gh, w / gw
    colour = image.float() * 100.0
    ys = torch.arange(h, device=image.device, dtype=torch.float32)
    xs = torch.arange(w, device=image.device, dtype=torch.float32)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    features = torch.cat((colour, xx.expand(b, 1, h, w), yy.expand(b, 1, h, w)), dim=1)  # [B, 5, H, W]

    centres = F.adaptive_avg_pool2d(features, (gh, gw)).flatten(2)  # [B, 5, K]
    k = gh * gw
    cy = (yy / cell_h).floor().clamp(max=gh - 1).long()
    cx = (xx / cell_w).floor().clamp(max=gw - 1).long()
    candidates, valid = [], []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            ny, nx = cy + dy, cx + dx
            ok = (ny >= 0) & (ny < gh) & (nx >= 0) & (nx < gw)
            candidates.append(ny.clamp(0, gh - 1) * gw + nx.clamp(0, gw - 1))
            valid.append(ok)
    candidates = torch.stack(candidates, dim=-1).view(-1, 9)  # [N, 9] cell indices around each pixel
    invalid = ~torch.stack(valid, dim=-1).view(-1, 9)
    flat = features.flatten(2).transpose(1, 2)  # [B, N, 5]
    spatial_scale = (compactness / step) ** 2
    labels = None
    for _ in range(iterations):
        near = centres.transpose(1, 2).index_select(1, candidates.view(-1)).view(b, -1, 9, 5)  # [B, N, 9, 5]
        diff = flat[:, :, None, :] - near
        diff = diff * diff
        dist = diff[..., :3].sum(-1) + spatial_scale * diff[..., 3:].sum(-1)  # [B, N, 9]
        dist = dist.masked_fill(invalid[None], float("inf"))
        choice = dist.argmin(-1, keepdim=True)  # [B, N, 1]
        labels = torch.gather(candidates.expand(b, -1, -1), 2, choice)[..., 0]  # [B, N] nearest centre's cell
        sums = torch.zeros(b, k, 5, device=image.device).scatter_add_(1, labels[..., None].expand(-1, -1, 5), flat)
        counts = torch.zeros(b, k, 1, device=image.device).scatter_add_(
            1, labels[..., None], torch.ones(b, labels.shape[1], 1, device=image.device)
        )
        centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres.transpose(1, 2)).transpose(1, 2)
    return labels.view(b, h, w)


def random_superpixel_mask(
    image: torch.Tensor, generator: torch.Generator, segments: int = 150, fraction: tuple[float, float] = (0.02, 0.1)
) -> torch.Tensor:
    """[B, 1, H, W] float mask (1 = selected) of random superpixels of `image` covering about `fraction`."""
    labels = slic(image, segments=segments)
    b = labels.shape[0]
    k = int(labels.max()) + 1
    masks = []
    for i in range(b):
        target = float(torch.empty(()).uniform_(*fraction, generator=generator))
        chosen = torch.rand(k, generator=generator) < target  # superpixels are about equal in area
        if not bool(chosen.any()):
            chosen[int(torch.randint(k, (1,), generator=generator))] = True
        masks.append(chosen.to(labels.device)[labels[i]])
    return torch.stack(masks)[:, None].float()
