"""The network, its correlation reference, and self-describing checkpoints."""

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from flowcli.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from flowcli.errors import WeightsError
from flowcli.models.pwc import FlowNet, FlowNetConfig
from flowcli.ops.correlation import correlation_torch

TINY = dict(pyramid_channels=(8, 8, 8, 8, 8, 8), decoder_channels=(8, 8), context_channels=(8,), context_dilations=(1,))


def naive_correlation(f1, f2, r):
    h, w = f1.shape[-2:]
    padded = F.pad(f2, (r, r, r, r))
    shifts = [
        (f1 * padded[:, :, r + dy : r + dy + h, r + dx : r + dx + w]).mean(1)
        for dy in range(-r, r + 1)
        for dx in range(-r, r + 1)
    ]
    return torch.stack(shifts, 1)


@pytest.mark.parametrize("r", [1, 4])
def test_correlation_reference_matches_definition_and_gradcheck(r):
    torch.manual_seed(0)
    f1 = torch.randn(2, 3, 5, 7, dtype=torch.float64, requires_grad=True)
    f2 = torch.randn(2, 3, 5, 7, dtype=torch.float64, requires_grad=True)
    out = correlation_torch(f1, f2, r)
    assert out.shape == (2, (2 * r + 1) ** 2, 5, 7)
    torch.testing.assert_close(out, naive_correlation(f1, f2, r))
    assert torch.autograd.gradcheck(lambda a, b: correlation_torch(a, b, r), (f1, f2), fast_mode=True)


@pytest.mark.parametrize("band_tiles", [1, 512])
def test_tiled_cost_volume_matches_the_definition_across_tiles_and_bands(band_tiles):
    from flowcli.ops.correlation import _correlation_tiled

    torch.manual_seed(1)
    f1, f2 = torch.randn(2, 5, 19, 37, dtype=torch.float64), torch.randn(2, 5, 19, 37, dtype=torch.float64)
    torch.testing.assert_close(_correlation_tiled(f1, f2, 4, band_tiles=band_tiles), naive_correlation(f1, f2, 4))
    torch.testing.assert_close(_correlation_tiled(f1, f2, 2, tile=4), naive_correlation(f1, f2, 2))


@pytest.mark.parametrize("f2_layout", [torch.channels_last, torch.contiguous_format])
def test_channels_last_features_give_a_channels_last_cost_volume_of_the_same_values(f2_layout):
    """CPU inference hands in channels-last maps (f2 is NCHW when grid_sample warped it); an NCHW cost
    volume made torch.cat hand NCHW to the decoder, which oneDNN converted back before each convolution."""
    torch.manual_seed(2)
    f1, f2 = torch.randn(2, 6, 11, 21), torch.randn(2, 6, 11, 21)
    expected = correlation_torch(f1, f2, 4)
    assert expected.stride(3) == 1  # NCHW features keep an NCHW cost volume (training's layout)
    out = correlation_torch(f1.contiguous(memory_format=torch.channels_last), f2.contiguous(memory_format=f2_layout), 4)
    assert out.stride(1) == 1  # channels innermost (a crop of a channels-last tensor: 11x21 is padded to 16x24)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)


def test_correlation_peaks_at_true_shift():
    f2 = torch.randn(1, 16, 20, 20)
    f1 = torch.roll(f2, shifts=(-2, 3), dims=(2, 3))  # f1(x) = f2(x + (dx=-3, dy=2))
    out = correlation_torch(f1, f2, 4)
    best = out[0, :, 8:12, 8:12].mean((1, 2)).argmax().item()
    assert divmod(best, 9) == (2 + 4, -3 + 4)


@pytest.mark.parametrize("matching", ["pwc", "maskflownet"])
def test_flownet_shapes_and_gradients(matching):
    model = FlowNet(FlowNetConfig(matching=matching, **TINY))
    out = model(torch.rand(2, 3, 64, 128), torch.rand(2, 3, 64, 128))
    assert out.flow.shape == (2, 2, 64, 128)
    assert set(out.level_flows) == {2, 3, 4, 5, 6}
    assert (out.occlusion_logit is not None) == (matching == "maskflownet")
    out.flow.mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("matching", ["pwc", "maskflownet"])
def test_cpu_inference_layout_is_channels_last_and_gives_the_same_flow(matching):
    torch.manual_seed(0)
    model = FlowNet(FlowNetConfig(matching=matching, **TINY))
    image1, image2 = torch.rand(1, 3, 64, 128), torch.rand(1, 3, 64, 128)
    with torch.no_grad():
        trained_layout = model(image1, image2).flow
        model.eval()
        inference_layout = model(image1, image2).flow
    conv = model.decoder.body[0][0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    torch.testing.assert_close(inference_layout, trained_layout, atol=1e-4, rtol=1e-4)
    assert inference_layout.is_contiguous()
    model.train()  # training's backward is faster in NCHW
    assert model.decoder.body[0][0].weight.is_contiguous()


def test_cpu_inference_hands_every_decoder_convolution_a_channels_last_input():
    """One NCHW tensor in torch.cat (the coarsest level's zero flow) made every decoder input NCHW from
    there on, and oneDNN converted each to channels-last before the convolution (~5 % of CPU time)."""
    model = FlowNet(FlowNetConfig(**TINY)).eval()
    layouts = []
    model.decoder.body[0].register_forward_pre_hook(
        lambda module, inputs: layouts.append(inputs[0].is_contiguous(memory_format=torch.channels_last))
    )
    with torch.no_grad():
        model(torch.rand(1, 3, 64, 128), torch.rand(1, 3, 64, 128))
    assert layouts == [True] * len(model.levels)


def test_convex_upsampler_starts_as_bilinear_and_keeps_constant_flow_exact():
    """Added to a trained model it must change nothing until trained; it mixes flows convexly."""
    torch.manual_seed(0)
    bilinear = FlowNet(FlowNetConfig(**TINY)).eval()
    convex = FlowNet(FlowNetConfig(upsampler="convex", **TINY))
    convex.load_state_dict(bilinear.state_dict(), strict=False)
    convex.eval()
    image1, image2 = torch.rand(1, 3, 64, 128), torch.rand(1, 3, 64, 128)
    with torch.no_grad():
        a, b = bilinear(image1, image2), convex(image1, image2)
    torch.testing.assert_close(a.level_flows[2], b.level_flows[2])
    spread = float(a.flow.abs().max())
    assert spread > 0 and float((a.flow - b.flow).abs().max()) < 2e-3 * spread

    from flowcli.models.pwc import ConvexUpsampler

    upsampler = ConvexUpsampler(6, 4)
    nn.init.normal_(upsampler.weights.weight, std=1.0)  # arbitrary (trained-looking) mixing weights
    constant = torch.tensor([1.5, -2.0]).view(1, 2, 1, 1).expand(2, 2, 5, 7)
    fine = upsampler(constant, torch.randn(2, 6, 5, 7), torch.rand(2, 3, 20, 28))
    torch.testing.assert_close(fine, 4 * constant.repeat_interleave(4, 2).repeat_interleave(4, 3))


def test_every_upsampler_builds_on_the_meta_device():
    """The checkpoint loader checks a file's shapes on a meta-device build before allocating anything."""
    for upsampler in ("bilinear", "convex"):
        with torch.device("meta"):
            model = FlowNet(FlowNetConfig(upsampler=upsampler, **TINY))
        assert all(p.is_meta for p in model.parameters())


def test_convex_upsampler_config_round_trips_through_a_checkpoint(tmp_path):
    model = FlowNet(FlowNetConfig(upsampler="convex", upsampler_channels=(24,), **TINY)).eval()
    assert [m[0].out_channels for m in model.upsampler.body] == [24]
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    config = read_metadata(path)["flowcli.config"]
    assert config["upsampler"] == "convex" and config["upsampler_channels"] == [24]
    loaded = load_checkpoint(path)
    assert [m[0].out_channels for m in loaded.upsampler.body] == [24]
    x1, x2 = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x1, x2).flow, model(x1, x2).flow)
    with pytest.raises(ValueError, match="upsampler must be one of"):
        FlowNetConfig(upsampler="bicubic")
    with pytest.raises(ValueError, match="upsampler_channels"):
        FlowNetConfig(upsampler="convex", upsampler_channels=())


def test_flownet_rejects_unpadded_input():
    with pytest.raises(ValueError, match="multiple of 64"):
        FlowNet(FlowNetConfig(**TINY))(torch.rand(1, 3, 60, 64), torch.rand(1, 3, 60, 64))


def test_checkpoint_round_trip_is_self_describing(tmp_path):
    model = FlowNet(FlowNetConfig(matching="maskflownet", **TINY)).eval()
    path = save_checkpoint(model, tmp_path / "m.safetensors", provenance={"steps": 3})
    meta = read_metadata(path)
    assert meta["flowcli.config"]["matching"] == "maskflownet"
    assert meta["flowcli.provenance"] == {"steps": 3}
    loaded = load_checkpoint(path)
    x1, x2 = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x1, x2).flow, model(x1, x2).flow)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = save_checkpoint(FlowNet(FlowNetConfig(**TINY)), tmp_path / "m.safetensors")
    tensors = load_file(str(path))
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in read_metadata(path).items()}
    meta["flowcli.config"] = json.dumps(FlowNetConfig().to_dict())  # claims the full-size network
    save_file(tensors, str(tmp_path / "lying.safetensors"), metadata=meta)
    with pytest.raises(WeightsError, match="does not match its declared architecture"):
        load_checkpoint(tmp_path / "lying.safetensors")
    save_file(tensors, str(tmp_path / "bare.safetensors"))
    with pytest.raises(WeightsError, match="not a flowcli checkpoint"):
        load_checkpoint(tmp_path / "bare.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="not a readable"):
        load_checkpoint(tmp_path / "junk.safetensors")


def test_fp16_checkpoint_loads_as_fp32(tmp_path):
    model = FlowNet(FlowNetConfig(**TINY))
    path = save_checkpoint(model, tmp_path / "half.safetensors", dtype=torch.float16)
    loaded = load_checkpoint(path)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())


def test_checkpoint_from_before_feature_normalization_keeps_its_behaviour(tmp_path):
    model = FlowNet(FlowNetConfig(normalize_features=False, **TINY)).eval()
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in read_metadata(path).items()}
    config = json.loads(meta["flowcli.config"])
    del config["normalize_features"]  # written by a flowcli that did not have the field
    meta["flowcli.config"] = json.dumps(config)
    save_file(load_file(str(path)), str(tmp_path / "old.safetensors"), metadata=meta)
    loaded = load_checkpoint(tmp_path / "old.safetensors")
    assert loaded.config.normalize_features is False
    x1, x2 = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x1, x2).flow, model(x1, x2).flow)


def test_fresh_network_cost_volume_already_finds_the_shift():
    """With normalised matching features even untrained ones peak at the true displacement, which is
    what lets training leave the 'predict zero flow' plateau."""
    torch.manual_seed(0)
    model = FlowNet(FlowNetConfig())
    from flowcli.models.pwc import normalize_for_matching

    image = F.interpolate(torch.rand(1, 3, 24, 32), size=(192, 256), mode="bicubic", align_corners=False).clamp(0, 1)
    image1, image2 = image[..., 16:144, 16:208], image[..., 8:136, 0:192]  # content moves +16 x, +8 y
    with torch.no_grad():
        a, b = model.normalize(image1, image2)
        f = model.pyramid(torch.cat((a, b)))[2]  # level 3: shift (2, 1)
    cost = correlation_torch(normalize_for_matching(f[:1]), normalize_for_matching(f[1:]), 4)[0, :, 3:-3, 3:-3]
    true_index = (1 + 4) * 9 + (2 + 4)
    assert (cost.argmax(0) == true_index).float().mean() > 0.8


def _rewritten(path, out, tensors=None, **metadata):
    """A copy of checkpoint `path` with some metadata values (str) or config fields (JSON values) replaced."""
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in read_metadata(path).items()}
    config = json.loads(meta["flowcli.config"])
    for key, value in metadata.items():
        if key.startswith("flowcli."):
            meta[key] = value
        else:
            config[key] = value
    meta["flowcli.config"] = metadata.get("flowcli.config", json.dumps(config))
    save_file(load_file(str(path)) if tensors is None else tensors, str(out), metadata=meta)
    return out


@pytest.mark.parametrize(
    "change, message",
    [
        ({"flowcli.config": "[1, 2]"}, "corrupt flowcli.config metadata"),
        ({"flowcli.config": '"abc"'}, "corrupt flowcli.config metadata"),
        ({"flowcli.config": "[" * 100_000 + "]" * 100_000}, "corrupt flowcli.config metadata"),  # RecursionError
        ({"flowcli.provenance": "5"}, "corrupt flowcli.provenance metadata"),
        ({"normalize_features": "no"}, "normalize_features"),  # a truthy string is not True
        ({"pyramid_channels": [-1] * 6}, "pyramid_channels"),
        ({"context_dilations": [0]}, "context_dilations"),
        ({"max_displacement": -3}, "max_displacement"),
        ({"pyramid_channels": [65536] * 6}, "does not match its declared architecture"),  # never allocated
    ],
)
def test_hostile_checkpoint_metadata_is_one_weights_error(tmp_path, change, message):
    path = save_checkpoint(FlowNet(FlowNetConfig(**TINY)), tmp_path / "m.safetensors")
    hostile = _rewritten(path, tmp_path / "hostile.safetensors", **change)
    with pytest.raises(WeightsError, match=message) as error:
        load_checkpoint(hostile)
    assert len(str(error.value).splitlines()) == 1


def test_strict_loading_refuses_integer_and_non_finite_tensors(tmp_path):
    path = save_checkpoint(FlowNet(FlowNetConfig(**TINY)), tmp_path / "m.safetensors")
    tensors = load_file(str(path))
    name = sorted(tensors)[0]
    as_int = _rewritten(path, tmp_path / "int.safetensors", {**tensors, name: tensors[name].to(torch.int32)})
    with pytest.raises(WeightsError, match=f"stores {name} as I32"):
        load_checkpoint(as_int)
    nan = _rewritten(
        path, tmp_path / "nan.safetensors", {**tensors, name: torch.full_like(tensors[name], float("nan"))}
    )
    with pytest.raises(WeightsError, match=f"NaN or infinite values in 1 tensor.*{name}"):
        load_checkpoint(nan)
