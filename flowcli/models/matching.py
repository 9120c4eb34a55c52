"""Matching modules: how frame 2's features are brought onto frame 1 before the cost volume.

- PWC-Net: bilinear backward warp of f2 by the upsampled flow (fused with the correlation, see
  flowcli.ops.correlation.warp_correlation).
- AsymOFMM (MaskFlowNet, CVPR'20): f2 goes through a deformable 3x3 convolution whose sampling
  points are shifted by the flow, is multiplied by a learnable occlusion mask (sigmoid of the
  previous level's mask logit, learned with no occlusion labels) and gets a trade-off term added,
  so occluded regions stop feeding the correlation with misleading matches. Only f2 is
  transformed: the matching is asymmetric.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from flowcli.ops.warp import at_least_fp32, normalized_grid, sample_coordinates


class FlowDeformableConv(nn.Module):
    """3x3 deformable convolution with every tap shifted by the flow, in plain PyTorch.

    Tap k of output pixel p reads f2 at p + k + flow(p) (bilinear). The nine sampled maps are
    stacked and mixed by one 1x1 convolution, which is exactly a 3x3 convolution over the
    displaced taps.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.mix = nn.Conv2d(channels * 9, channels, kernel_size=1)
        self.mix.keep_init = True
        nn.init.zeros_(self.mix.weight)
        with torch.no_grad():  # start as a plain warp: the centre tap passes through
            for c in range(channels):
                self.mix.weight[c, 4 * channels + c] = 1.0
        nn.init.zeros_(self.mix.bias)

    def forward(self, feature2: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        b, c, h, w = feature2.shape
        base = sample_coordinates(flow)  # at least fp32: a bf16 position is off by up to 2 px past 256
        sampled = at_least_fp32(feature2)
        taps = []
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                offset = torch.tensor([dx, dy], device=flow.device, dtype=base.dtype).view(1, 2, 1, 1)
                grid = normalized_grid(base + offset).to(sampled.dtype)
                taps.append(F.grid_sample(sampled, grid, mode="bilinear", padding_mode="zeros",
                                          align_corners=True).to(feature2.dtype))  # fmt: skip
        return self.mix(torch.cat(taps, dim=1))


class AsymOFMM(nn.Module):
    """Asymmetric occlusion-aware feature matching (MaskFlowNet)."""

    def __init__(self, channels: int, decoder_channels: int):
        super().__init__()
        self.deform = FlowDeformableConv(channels)
        self.tradeoff = nn.Conv2d(decoder_channels, channels, kernel_size=1)
        self.tradeoff.keep_init = True
        nn.init.zeros_(self.tradeoff.weight)
        nn.init.zeros_(self.tradeoff.bias)

    def forward(self, feature2, flow, mask_logit=None, decoder_feature=None):
        warped = self.deform(feature2, flow)
        if mask_logit is None:
            return warped
        return warped * torch.sigmoid(mask_logit) + self.tradeoff(decoder_feature)
