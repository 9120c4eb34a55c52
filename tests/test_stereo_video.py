"""The synthetic stereo video's ground truth is exact: Flow2Stereo's constraints, warps, depth."""

from __future__ import annotations

import pytest
import torch

from flowcli.ops.warp import backward_warp
from flowcli.synth.stereo_video import LEFT, RIGHT, StereoScene, StereoVideoConfig, generate_stereo_video

CFG = StereoVideoConfig(height=64, width=96, num_frames=3, photometric=False, real_texture_prob=0, max_disparity=16)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def samples():
    return [generate_stereo_video(CFG, torch.Generator().manual_seed(seed)) for seed in range(3)]


def _sample(field: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """Bilinear sample of field [C, H, W] at pixel positions at [2, H, W]."""
    return backward_warp(field[None], (at - _grid(field))[None])[0]


def _grid(field: torch.Tensor) -> torch.Tensor:
    h, w = field.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.stack((xs, ys))


def _same_layer(index: torch.Tensor, at: torch.Tensor, layer: torch.Tensor) -> torch.Tensor:
    """True where all four pixels around `at` show `layer` (bilinear sampling is then exact for affine GT)."""
    h, w = index.shape
    x0, y0 = at[0].floor().long(), at[1].floor().long()
    ok = (x0 >= 0) & (y0 >= 0) & (x0 + 1 < w) & (y0 + 1 < h)
    x0, y0 = x0.clamp(0, w - 2), y0.clamp(0, h - 2)
    for dy in (0, 1):
        for dx in (0, 1):
            ok &= index[y0 + dy, x0 + dx] == layer
    return ok


def test_flow2stereo_constraints_hold_exactly(samples):
    checked = 0
    for s in samples:
        for t in range(CFG.num_frames - 1):
            grid = _grid(s.left[t])
            d_t = s.disparity_left[t]
            flow_l = s.flow_left[t]
            at_right = grid + s.stereo_flow(t)  # p in R_t
            at_left_next = grid + flow_l  # p in L_t+1
            flow_r = _sample(s.flow_right[t], at_right)
            d_next = _sample(s.disparity_left[t + 1], at_left_next)
            layer = s.layer_index_left[t]
            keep = (s.occlusion_left[t][0] == 0) & (s.occlusion_stereo[t][0] == 0)
            keep &= _same_layer(s.layer_index_right[t], at_right, layer)
            keep &= _same_layer(s.layer_index_left[t + 1], at_left_next, layer)
            assert keep.float().mean() > 0.3
            du = (flow_r[0] - flow_l[0]) - ((-d_next[0]) - (-d_t[0]))
            dv = flow_r[1] - flow_l[1]
            assert du[keep].abs().max() < 2e-3 and dv[keep].abs().max() < 2e-3
            checked += int(keep.sum())
            # and the motion is not trivial: disparity changes, the rig moves vertically too
            assert flow_l[1][keep].abs().max() > 0.05
    assert checked > 3000
    assert any((s.disparity_left[1] - s.disparity_left[0]).abs().max() > 0.05 for s in samples)


def test_gt_warps_views_onto_each_other(samples):
    for s in samples:
        for t in range(CFG.num_frames - 1):
            pairs = [
                (s.left[t], s.right[t], s.stereo_flow(t), s.occlusion_stereo[t], s.layer_index_left[t]),
                (s.left[t], s.left[t + 1], s.flow_left[t], s.occlusion_left[t], s.layer_index_left[t]),
                (s.right[t], s.right[t + 1], s.flow_right[t], s.occlusion_right[t], s.layer_index_right[t]),
            ]
            for image1, image2, flow, occ, index in pairs:
                warped = backward_warp(image2[None], flow[None])[0]
                edges = torch.nn.functional.max_pool2d(index.float()[None], 5, 1, 2) != -torch.nn.functional.max_pool2d(
                    -index.float()[None], 5, 1, 2
                )
                keep = (occ == 0) & ~edges
                error = (warped - image1).abs().mean(0, keepdim=True)[keep].mean()
                assert error < 0.01


def test_disparity_is_focal_times_baseline_over_depth_and_right_view_agrees(samples):
    for s in samples:
        for t in range(CFG.num_frames):
            torch.testing.assert_close(s.disparity_left[t], s.focal * s.baseline / s.depth_left[t])
        assert (s.disparity_left[0] >= CFG.min_disparity - 1e-4).all()
    scene = StereoScene(CFG, torch.Generator().manual_seed(5))
    assert torch.equal(scene.matrix(2, LEFT, 0), torch.eye(3, dtype=torch.float64))
    shift = scene.matrix(2, LEFT, 1) - scene.matrix(2, RIGHT, 1)
    assert shift[0, 2] == pytest.approx(scene.disparity_of(2, 1))
