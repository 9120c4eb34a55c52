"""The synthetic generator's ground truth is exact."""

import pytest
import torch

from flowcli.inference import forward_backward_occlusion
from flowcli.ops.warp import backward_warp
from flowcli.synth import SynthConfig, generate_sample


def edge_band(index: torch.Tensor) -> torch.Tensor:
    """Pixels within 2 px of a layer boundary, where soft edges blend layers."""
    idx = index.float()[None, None]
    dil = torch.nn.functional.max_pool2d(idx, 5, 1, 2)
    ero = -torch.nn.functional.max_pool2d(-idx, 5, 1, 2)
    return (dil != ero)[0]


@pytest.mark.parametrize("stereo", [False, True])
def test_gt_flow_warps_frame2_onto_frame1(stereo):
    # What remains after warping is bilinear resampling of pixel-level texture noise, not GT error.
    cfg = SynthConfig(height=96, width=128, photometric=False, stereo=stereo, real_texture_prob=0)
    errors, unwarped = [], []
    for seed in range(4):
        s = generate_sample(cfg, torch.Generator().manual_seed(seed))
        warped = backward_warp(s.image2[None], s.flow_forward[None])[0]
        keep = (s.occlusion_forward == 0) & ~edge_band(s.layer_index[0])
        errors.append((warped - s.image1).abs().mean(0, keepdim=True)[keep].mean())
        unwarped.append((s.image2 - s.image1).abs().mean(0, keepdim=True)[keep].mean())
        if stereo:
            assert s.flow_forward[1].abs().max() == 0 and (s.flow_forward[0] <= 0).all()
    assert torch.stack(errors).mean() < 0.02
    assert torch.stack(errors).mean() < 0.25 * torch.stack(unwarped).mean()


def test_occlusion_agrees_with_forward_backward_consistency():
    cfg = SynthConfig(height=96, width=128, photometric=False, real_texture_prob=0)
    agree = []
    for seed in range(4):
        s = generate_sample(cfg, torch.Generator().manual_seed(seed))
        fb = forward_backward_occlusion(s.flow_forward[None], s.flow_backward[None])[0]
        keep = ~edge_band(s.layer_index[0])
        agree.append((fb[keep] == s.occlusion_forward[keep]).float().mean())
    assert torch.stack(agree).mean() > 0.97


def test_triplets_have_constant_motion_and_same_seed_same_scene():
    cfg = SynthConfig(height=64, width=64, num_frames=3)
    a = generate_sample(cfg, torch.Generator().manual_seed(7))
    b = generate_sample(cfg, torch.Generator().manual_seed(7))
    assert len(a.images) == 3 and a.flow_forward_23 is not None
    torch.testing.assert_close(a.images[2], b.images[2])
