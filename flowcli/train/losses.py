"""Supervised losses: pure functions, plus one composer returning named terms."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flowcli.models.pwc import FlowOutput

# PWC-Net weights its levels 0.005, 0.01, 0.02, 0.08, 0.32 (levels 2..6) on errors *summed* over
# pixels. We average per level instead, so each weight is multiplied by the level's pixel count
# relative to level 6 (256, 64, 16, 4, 1); otherwise the 1/64 level would take 74% of the loss.
LEVEL_WEIGHTS = {2: 1.28, 3: 0.64, 4: 0.32, 5: 0.32, 6: 0.32}


def level_weight(level: int) -> float:
    """The weight of a pyramid level: LEVEL_WEIGHTS, extended to every level a model can output (output_level 1,
    more than 6 levels) as PWC-Net's pattern goes on: its weight halves per finer level below level 4 (doubles
    once averaged: level 1 gets 2.56) and is 4x per coarser level above it (the same once averaged: 0.32)."""
    if level in LEVEL_WEIGHTS:
        return LEVEL_WEIGHTS[level]
    return LEVEL_WEIGHTS[2] * 2.0 ** (2 - level) if level < 2 else LEVEL_WEIGHTS[6]


def endpoint_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel EPE [B, 1, H, W]."""
    return torch.linalg.vector_norm(pred - target, dim=1, keepdim=True)


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return x.mean()
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def robust_penalty(epe: torch.Tensor, q: float = 0.4, eps: float = 0.01) -> torch.Tensor:
    """PWC-Net's fine-tuning loss (|e| + eps)^q: damps the pull of outliers."""
    return (epe + eps) ** q


def downsample_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Area-average the flow to `size`, in that size's pixel units."""
    scale = size[1] / flow.shape[-1]
    return F.adaptive_avg_pool2d(flow, size) * scale


def downsample_valid_flow(flow: torch.Tensor, valid: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """(flow averaged over the valid pixels of each cell of `size`, in that size's pixel units; cells with any
    valid pixel). Sparse ground truth (KITTI) keeps a target at every level instead of vanishing at coarse ones."""
    valid = valid.to(flow.dtype)
    share = F.adaptive_avg_pool2d(valid, size)
    flow = F.adaptive_avg_pool2d(flow * valid, size) / share.clamp_min(1e-6) * (size[1] / flow.shape[-1])
    return flow, share > 0


def multiscale_epe(output: FlowOutput, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """PWC-Net's multi-scale loss, with each level's EPE measured in full-resolution pixels.

    Level weights are PWC-Net's (adjusted for averaging, see LEVEL_WEIGHTS and level_weight), normalised to sum
    to one.
    With `valid` [B,1,H,W] (bool), pixels without ground truth take no part.
    """
    total_weight = sum(level_weight(lvl) for lvl in output.level_flows)
    loss = target.new_zeros(())
    for lvl, flow in output.level_flows.items():
        size = flow.shape[-2:]
        if valid is None:
            gt, mask = downsample_flow(target, size), None
        else:
            gt, mask = downsample_valid_flow(target, valid, size)
        err = endpoint_error(flow, gt) * (target.shape[-1] / size[1])
        loss = loss + level_weight(lvl) / total_weight * masked_mean(err, mask)
    return loss


def supervised_loss(
    output: FlowOutput,
    target: torch.Tensor,
    valid: torch.Tensor | None = None,
    robust: bool = False,
    full_resolution: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Named terms; `total` is what is minimised. `epe` is the full-resolution EPE (monitoring).

    `full_resolution` weights the EPE of the full-resolution flow, the only term that reaches a
    learned upsampler (the multi-scale terms stop at the decoder's finest level).
    """
    full_epe = endpoint_error(output.flow, target)
    terms = {"multiscale": multiscale_epe(output, target, valid)}
    terms["total"] = terms["multiscale"]
    if full_resolution:
        terms["full"] = masked_mean(full_epe, valid)
        terms["total"] = terms["total"] + full_resolution * terms["full"]
    if robust:
        terms["robust"] = masked_mean(robust_penalty(full_epe), valid)
        terms["total"] = terms["total"] + terms["robust"]
    terms["epe"] = masked_mean(full_epe.detach(), valid)
    return terms
