"""estimate_flow: any size, both directions, occlusion, tiling."""

import warnings

import pytest
import torch

from flowcli.errors import InputError
from flowcli.inference import estimate_flow, forward_backward_occlusion, resolve_precision
from flowcli.models.pwc import FlowNet, FlowNetConfig

TINY = dict(pyramid_channels=(8, 8, 8, 8, 8, 8), decoder_channels=(8, 8), context_channels=(8,), context_dilations=(1,))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return FlowNet(FlowNetConfig(**TINY)).eval()


def test_any_size_is_padded_and_cropped_back(model):
    result = estimate_flow(model, torch.rand(3, 70, 100), torch.rand(3, 70, 100), occlusion=True)
    assert result.forward.shape == (1, 2, 70, 100)
    assert result.backward.shape == (1, 2, 70, 100)
    assert result.occlusion.shape == (1, 1, 70, 100)


def test_backward_flow_is_the_forward_flow_of_the_swapped_pair(model):
    a, b = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    both = estimate_flow(model, a, b, backward=True)
    swapped = estimate_flow(model, b, a)
    torch.testing.assert_close(both.backward, swapped.forward, atol=1e-4, rtol=1e-4)


def test_tiled_result_matches_untiled_away_from_seams():
    # A model whose flow depends only on local content (constant output) makes seams exact.
    model = FlowNet(FlowNetConfig(**TINY)).eval()
    for p in model.parameters():
        torch.nn.init.zeros_(p)
    model.context.body[-1][0].bias.data[:] = torch.tensor([1.5, -0.5])
    a, b = torch.rand(1, 3, 200, 300), torch.rand(1, 3, 200, 300)
    whole = estimate_flow(model, a, b)
    tiled = estimate_flow(model, a, b, max_pixels=128 * 128, tile_overlap=32)
    assert tiled.tiles > 1
    torch.testing.assert_close(tiled.forward, whole.forward, atol=1e-4, rtol=1e-4)


def test_scale_returns_full_size_flow_in_full_size_pixels():
    model = FlowNet(FlowNetConfig(**TINY)).eval()
    for p in model.parameters():
        torch.nn.init.zeros_(p)
    model.context.body[-1][0].bias.data[:] = torch.tensor([1.5, -0.5])  # 4x that in network-input pixels
    a, b = torch.rand(1, 3, 130, 190), torch.rand(1, 3, 130, 190)
    native = estimate_flow(model, a, b).forward
    half = estimate_flow(model, a, b, scale=0.5, occlusion=True)
    assert half.forward.shape == (1, 2, 130, 190) and half.occlusion.shape == (1, 1, 130, 190)
    torch.testing.assert_close(native.mean((2, 3)), torch.tensor([[6.0, -2.0]]), atol=1e-4, rtol=0)
    torch.testing.assert_close(half.forward.mean((2, 3)), torch.tensor([[12.0, -4.0]]), atol=1e-4, rtol=0)
    with pytest.raises(InputError, match="scale"):
        estimate_flow(model, a, b, scale=0)


def test_frames_of_different_sizes_are_an_input_error(model):
    with pytest.raises(InputError, match="differ in size"):
        estimate_flow(model, torch.rand(3, 64, 64), torch.rand(3, 64, 80))


def test_fp16_on_cpu_falls_back_with_a_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_precision("fp16", torch.device("cpu")) == torch.float32
    assert any("fp32" in str(w.message) for w in caught)


def test_forward_backward_occlusion_marks_inconsistent_and_outgoing_pixels():
    fw = torch.zeros(1, 2, 16, 16)
    bw = torch.zeros(1, 2, 16, 16)
    fw[..., 4:8, 4:8] = 3.0  # pixels whose backward flow does not bring them back
    fw[..., :, 15] = torch.tensor([2.0, 0.0]).view(2, 1)  # last column leaves the image
    occ = forward_backward_occlusion(fw, bw)[0, 0]
    assert occ[4:8, 4:8].all() and occ[:, 15].all()
    assert occ[10:14, 0:4].sum() == 0
