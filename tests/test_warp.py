"""`flowcli.ops.warp`: sampling positions stay exact when the flow or the image is bf16 / fp16 (autocast on a GPU)."""

from __future__ import annotations

import pytest
import torch

from flowcli.ops.warp import backward_warp, out_of_frame, splat_density


def _textured(h: int, w: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(1, 3, h // 4, w // 4, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_warp_samples_where_the_fp32_warp_does(dtype):
    """x + flow(x) was built in the flow's dtype: in bf16 a position past 256 px is kept only to within 2 px, so
    under autocast every warp of a wide frame (and MaskFlowNet's deformable taps) moved by up to that much."""
    image = _textured(8, 1024)
    flow = torch.full((1, 2, 8, 1024), 0.25)
    exact = backward_warp(image, flow)
    half = backward_warp(image.to(dtype), flow.to(dtype))
    assert half.dtype == dtype
    # what is left is the rounding of the sampled values to the half type, not of the positions
    assert (half.float() - exact).abs().max() < 2e-2
    density = splat_density(flow.to(dtype))
    assert density.dtype == dtype and (density[..., 1:, 1:].float() - 1).abs().max() < 1e-2
    assert not out_of_frame(torch.full((1, 2, 8, 1024), -0.0).to(dtype)).any()
