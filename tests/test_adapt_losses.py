"""flowcli.adapt losses, occlusion, superpixels and student views: zero or minimal where theory says."""

from __future__ import annotations

import pytest
import torch

from flowcli.adapt import losses as L
from flowcli.adapt.losses import LossWeights, PairFlows, StereoVideo, adapt_loss
from flowcli.models.pwc import FlowOutput
from flowcli.synth import SynthConfig, generate_sample


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead on a shared 2-core machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def samples():
    out = []
    for seed in range(4):
        gen = torch.Generator().manual_seed(seed)
        out.append(generate_sample(SynthConfig(height=64, width=96, layer_translation=6, photometric=False), gen))
    return out


def _out(flow: torch.Tensor) -> FlowOutput:
    return FlowOutput(flow=flow, level_flows={})


def test_distances_vanish_on_identical_frames():
    image = torch.rand(2, 3, 32, 40)
    for distance in (L.census_distance, L.ssim_distance, L.l1_distance):
        assert float(distance(image, image).abs().max()) < 1e-6
    assert float(L.photometric_error(image, image, LossWeights()).max()) < 1e-6
    zero = torch.zeros(2, 2, 32, 40)
    terms = adapt_loss(PairFlows(image, image, _out(zero), _out(zero)), LossWeights(scales=(0,)))
    assert float(terms["photo"]) < 1e-6 and float(terms["occ"]) == 0.0 and float(terms["total"]) < 1e-6


def test_census_ignores_brightness_and_contrast():
    image = torch.rand(1, 3, 32, 32) * 0.5 + 0.25
    brighter = (image - 0.5) * 1.3 + 0.6
    assert float(L.census_distance(image, brighter).mean()) < 0.02
    assert float(L.l1_distance(image, brighter).mean()) > 0.05


def test_photometric_loss_is_minimal_at_the_true_flow(samples):
    weights = LossWeights(scales=(0,))
    for s in samples:
        i1, i2 = s.images[0][None], s.images[1][None]
        fw, bw = s.flow_forward[None], s.flow_backward[None]

        def photo(shift, i1=i1, i2=i2, fw=fw, bw=bw):
            delta = torch.tensor(shift, dtype=torch.float32).view(1, 2, 1, 1)
            return float(adapt_loss(PairFlows(i1, i2, _out(fw + delta), _out(bw - delta)), weights)["photo"])

        exact = photo((0.0, 0.0))
        assert exact < photo((0.0, 0.0)) + 1e-9
        for shift in ((1.0, 0.0), (-1.0, 0.0), (0.0, 1.0), (0.0, -1.0), (2.0, 2.0)):
            assert exact < photo(shift), shift
        zero = torch.zeros_like(fw)
        assert exact < float(adapt_loss(PairFlows(i1, i2, _out(zero), _out(zero)), weights)["photo"])


def test_smoothness_orders():
    image = torch.full((1, 3, 24, 32), 0.5)  # no image edges: full weight everywhere
    ys, xs = torch.meshgrid(torch.arange(24.0), torch.arange(32.0), indexing="ij")
    constant = torch.stack((torch.full_like(xs, 3.0), torch.full_like(xs, -1.0)))[None]
    affine = torch.stack((0.1 * xs - 0.05 * ys + 2, 0.02 * xs + 0.07 * ys))[None]
    curved = torch.stack((0.01 * xs**2, 0.01 * ys**2))[None]
    assert float(L.smoothness(constant, image, order=1)) == 0.0
    assert float(L.smoothness(affine, image, order=1)) > 0.0
    assert float(L.smoothness(affine, image, order=2)) < 1e-5
    assert float(L.smoothness(curved, image, order=2)) > 1e-3
    # edge-aware: the same flow edge costs less where the image has an edge too
    step = torch.zeros(1, 2, 24, 32)
    step[..., 16:] = 4.0
    flat, edged = torch.full((1, 3, 24, 32), 0.5), torch.full((1, 3, 24, 32), 0.2)
    edged[..., 16:] = 0.8
    assert float(L.smoothness(step, edged, order=1)) < 0.1 * float(L.smoothness(step, flat, order=1))


def test_distillation_temporal_and_stereo_terms_vanish_when_consistent():
    flow = torch.randn(2, 2, 16, 20)
    mask = torch.ones(2, 1, 16, 20)
    assert abs(float(L.distillation_loss(flow, flow, mask))) < 1e-6
    assert float(L.distillation_loss(flow + 1, flow, mask)) > 0.5
    assert abs(float(L.distillation_loss(flow + 1, flow, torch.zeros_like(mask)))) == 0.0  # empty mask: 0, not NaN
    assert abs(float(L.temporal_loss(flow, -flow, mask))) < 1e-6
    horizontal = torch.cat((torch.randn(2, 1, 16, 20), torch.zeros(2, 1, 16, 20)), dim=1)
    assert float(L.vertical_penalty(horizontal)) == 0.0 and float(L.vertical_penalty(flow)) > 0.1

    # a stereo video: camera translating by (2, 1) px per frame, disparity 3 px at t and 4 px at t+1
    h, w = 24, 32
    motion = torch.tensor([2.0, 1.0]).view(1, 2, 1, 1).expand(1, 2, h, w)
    disparity_t = torch.tensor([-3.0, 0.0]).view(1, 2, 1, 1).expand(1, 2, h, w)
    disparity_t1 = torch.tensor([-4.0, 0.0]).view(1, 2, 1, 1).expand(1, 2, h, w)
    flow_right = motion + disparity_t1 - disparity_t  # u_r - u_l = (-d_t1) - (-d_t), v_r = v_l
    inner = torch.zeros(1, 1, h, w)
    inner[..., 6:-6, 6:-6] = 1  # away from the borders, where warping samples outside the frame
    assert float(L.quadrilateral_loss(motion, flow_right, disparity_t, disparity_t1, inner)) < 1e-5
    assert float(L.quadrilateral_loss(motion, motion, disparity_t, disparity_t1, inner)) > 0.3
    assert float(L.triangle_loss(motion + disparity_t1, motion, disparity_t1, inner)) < 1e-5
    assert float(L.triangle_loss(motion + disparity_t, motion, disparity_t1, inner)) > 0.3
    video = StereoVideo(motion, -motion, flow_right, disparity_t, -disparity_t, disparity_t1, motion + disparity_t1)
    left = torch.rand(1, 3, h, w)
    pair = PairFlows(left, left, _out(disparity_t), _out(-disparity_t), stereo=True)
    terms = adapt_loss(pair, LossWeights(scales=(0,)), stereo_video=video)
    assert {"vertical", "quad", "triangle", "total"} <= set(terms)


def test_vertical_term_is_averaged_over_the_stereo_pairs():
    """A stereo video has two stereo pairs (t and t+1): --loss vertical=W weighs as much as for one stereo pair."""
    image = torch.rand(1, 3, 16, 20)
    flow = torch.zeros(1, 2, 16, 20)
    flow[:, 1] = 2.0  # |v| = 2 everywhere
    stereo = PairFlows(image, image, _out(flow), _out(flow), stereo=True)
    mono = PairFlows(image, image, _out(torch.zeros_like(flow)), _out(torch.zeros_like(flow)))
    weights = LossWeights(scales=(0,))
    one = adapt_loss(stereo, weights)["vertical"]
    video = adapt_loss([stereo, stereo, mono, mono], weights)["vertical"]  # the layout of a stereo video step
    assert float(one) == pytest.approx(2.0) and float(video) == pytest.approx(2.0)


def test_anchor_term_vanishes_at_the_exact_flow_and_joins_the_total(samples):
    s = samples[0]
    i1, i2 = s.images[0][None], s.images[1][None]
    fw, bw = s.flow_forward[None], s.flow_backward[None]
    assert abs(float(L.anchor_loss(fw, fw))) < 1e-6 and float(L.anchor_loss(fw + 1, fw)) > 0.5
    pair = PairFlows(i1, i2, _out(fw), _out(bw))
    plain = adapt_loss(pair, LossWeights(scales=(0,)))
    off = adapt_loss(pair, LossWeights(scales=(0,)), anchor=(fw + 1, fw))  # weight 0: not computed
    on = adapt_loss(pair, LossWeights(scales=(0,), anchor=2.0), anchor=(fw + 1, fw))
    assert "anchor" not in off and float(off["total"]) == float(plain["total"])
    assert float(on["total"]) == pytest.approx(float(plain["total"]) + 2.0 * float(on["anchor"]), rel=1e-6)


def test_multiscale_uses_the_pyramid_levels(samples):
    s = samples[0]
    i1, i2 = s.images[0][None], s.images[1][None]
    fw, bw = s.flow_forward[None], s.flow_backward[None]
    def level2(f):
        return torch.nn.functional.adaptive_avg_pool2d(f, (16, 24)) / 4
    out_fw, out_bw = FlowOutput(fw, {2: level2(fw)}), FlowOutput(bw, {2: level2(bw)})
    good = adapt_loss(PairFlows(i1, i2, out_fw, out_bw), LossWeights(scales=(0, 2)))
    bad = adapt_loss(PairFlows(i1, i2, FlowOutput(fw, {2: -level2(fw)}), FlowOutput(bw, {2: -level2(bw)})),
                     LossWeights(scales=(0, 2)))  # fmt: skip
    assert float(good["photo"]) < float(bad["photo"])  # the level-2 flow is scored too
    assert float(bad["total"]) > float(good["total"])


def test_fb_occlusion_finds_the_true_occlusions(samples):
    """Forward-backward consistency of the exact flows marks the generator's occlusions (F1 > 0.85);
    the appearance-only census estimate does worse but still clearly better than chance (F1 > 0.5)."""
    from flowcli.metrics import occlusion_f1

    fb, census = [], []
    for s in samples:
        fw, bw = s.flow_forward[None], s.flow_backward[None]
        fb.append(occlusion_f1(L.fb_occlusion(fw, bw), s.occlusion_forward[None]))
        census.append(
            occlusion_f1(L.census_occlusion(s.images[0][None], s.images[1][None], fw), s.occlusion_forward[None])
        )
    assert min(fb) > 0.85, fb
    assert sum(census) / len(census) > 0.5, census


def test_splat_density_counts_what_lands_where():
    """A shift by (3, 1) px lands exactly one source pixel on every target pixel except the strips
    nothing moves into; a half-pixel shift spreads each source pixel over two targets."""
    from flowcli.ops.warp import splat_density

    shift = torch.zeros(1, 2, 20, 30)
    shift[:, 0], shift[:, 1] = 3.0, 1.0
    density = splat_density(shift)[0, 0]
    assert torch.allclose(density[1:, 3:], torch.ones(19, 27)) and float(density[:1].abs().max()) == 0
    assert float(density[:, :3].abs().max()) == 0
    half = torch.zeros(1, 2, 20, 30)
    half[:, 0] = 0.5
    density = splat_density(half)[0, 0]
    assert torch.allclose(density[:, 1:-1], torch.ones(20, 28))
    assert torch.allclose(density[:, 0], torch.full((20,), 0.5))


def test_range_map_finds_the_true_occlusions(samples):
    """The range map of the exact backward flow marks the generator's occlusions (F1 > 0.9)."""
    from flowcli.metrics import occlusion_f1

    f1 = [
        occlusion_f1(L.range_occlusion(s.flow_forward[None], s.flow_backward[None]), s.occlusion_forward[None])
        for s in samples
    ]
    assert min(f1) > 0.9, f1


def test_range_map_leaves_a_wrong_but_visible_region_in_the_loss(samples):
    """A visible region whose forward flow is off by 4 px: the forward-backward check masks it out of
    the photometric term (no gradient can correct it), the range map keeps it, and its gradient there
    points back towards the true flow."""
    s = samples[0]
    image1, image2 = s.images[0][None], s.images[1][None]
    fw, bw = s.flow_forward[None], s.flow_backward[None]
    box = torch.zeros_like(s.occlusion_forward[None], dtype=torch.bool)
    box[..., 16:48, 24:72] = True
    region = box & (s.occlusion_forward[None] < 0.5) & (L.range_occlusion(fw, bw) < 0.5)
    assert int(region.sum()) > 500
    wrong = fw + 4.0 * box.float() * torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    assert float(L.fb_occlusion(wrong, bw)[region].mean()) > 0.9
    assert float(L.range_occlusion(wrong, bw)[region].mean()) < 0.05
    grads = {}
    for method in ("fb", "range"):
        flow = wrong.clone().requires_grad_(True)
        weights = LossWeights(occlusion=method, smooth2=0.0, max_occluded=1.0)
        L.photometric_terms(image1, image2, flow, bw, weights)["photo"].backward()
        grads[method] = flow.grad
    pull = {method: float(g[:, 0:1][region].sum()) for method, g in grads.items()}
    assert pull["range"] > 0  # descent lowers u, back towards the truth
    assert abs(pull["fb"]) < 0.1 * pull["range"]  # census windows reach a few masked pixels from outside


def test_occlusion_setting_accepts_old_booleans_and_rejects_unknown_methods():
    assert LossWeights(occlusion=True).occlusion == "fb" and LossWeights(occlusion=False).occlusion == "none"
    with pytest.raises(ValueError, match="occlusion must be one of"):
        LossWeights(occlusion="census")


def test_untrusted_occlusion_falls_back_to_out_of_frame():
    image1, image2 = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    fw = torch.full((1, 2, 32, 32), 0.5)
    bw = torch.full((1, 2, 32, 32), 0.5)  # both directions the same: inconsistent everywhere
    terms = L.photometric_terms(image1, image2, fw, bw, LossWeights(occlusion="fb"))
    assert float(terms["occ"]) > 0.9 and float(terms["photo"]) > 0.1  # not masked away to zero


def test_slic_superpixels_follow_the_layers(samples):
    from flowcli.adapt.superpixels import random_superpixel_mask, slic

    s = samples[1]
    labels = slic(s.images[0][None], segments=48)
    assert labels.shape == (1, 64, 96) and 30 <= int(labels.unique().numel()) <= 60
    layer = s.layer_index[0]
    purity = []
    for k in labels.unique():
        members = layer[labels[0] == k]
        purity.append(float((members == members.mode().values).float().mean()))
    assert sum(purity) / len(purity) > 0.85
    mask = random_superpixel_mask(s.images[0][None], torch.Generator().manual_seed(0), segments=48)
    assert 0.0 < float(mask.mean()) < 0.4


@pytest.mark.parametrize("geometric", [0.0, 1.0])
def test_student_view_targets_are_the_teacher_flow_in_the_new_frame(samples, geometric):
    """The teacher's exact flow, mapped into a cropped / zoomed / rotated / flipped view, still warps the
    student's frame 2 onto its frame 1; what the crop cut off or superpixels covered is flagged."""
    from flowcli.adapt.transforms import (
        TransformConfig,
        make_student_view,
        sample_view,
        teacher_targets,
    )
    from flowcli.ops.warp import backward_warp

    cfg = TransformConfig(geometric=geometric, colour=0.0, superpixel=1.0, superpixel_segments=40)
    crop, window = (48, 64), (64, 96)
    gen = torch.Generator().manual_seed(3)
    for s in samples[:2]:
        params = {k: v[None] for k, v in sample_view(gen, crop, window, cfg).items()}
        frames = torch.stack(s.images)[None]  # [1, 2, 3, 64, 96]: the window is the whole frame
        student, noise = make_student_view(frames, params, crop, cfg)
        occ = torch.maximum(s.occlusion_forward[None], L.fb_occlusion(s.flow_forward[None], s.flow_backward[None]))
        targets = teacher_targets(s.flow_forward[None], occ, params, crop, noise)
        keep = targets["confident"] * (1 - targets["hallucinated"])
        warped = backward_warp(student[:, 1], targets["flow"])
        error = (warped - student[:, 0]).abs().mean(1, keepdim=True)
        assert float(keep.mean()) > 0.3
        assert float(L.masked_mean(error, keep)) < 0.035  # bilinear resampling only (as in the original frames)
        assert float(L.masked_mean(error, targets["hallucinated"])) > float(L.masked_mean(error, keep))
        assert float(noise.mean()) > 0
        if geometric == 0.0:  # a plain crop keeps the flow values
            tx, ty = (int(v) for v in params["theta"][0, :, 2])
            expected = s.flow_forward[:, ty : ty + crop[0], tx : tx + crop[1]]
            assert torch.allclose(targets["flow"][0], expected, atol=1e-4)
        assert float((targets["mask"] > 0).float().mean()) <= float(targets["confident"].mean())


class _ShiftFinder(torch.nn.Module):
    """A stand-in teacher that finds a pair's global integer shift by brute force, in its own input pixels."""

    config = type("Config", (), {"size_multiple": 4})()

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> FlowOutput:
        m, reach = 12, 10
        h, w = first.shape[-2:]
        best = min(
            (float((first[..., m : h - m, m : w - m] - second[..., m + dy : h - m + dy, m + dx : w - m + dx])
                   .abs().mean()), dx, dy)
            for dy in range(-reach, reach + 1)
            for dx in range(-reach, reach + 1)
        )  # fmt: skip
        flow = torch.tensor([float(best[1]), float(best[2])]).view(1, 2, 1, 1)
        return _out(flow.expand(first.shape[0], 2, h, w).clone())


def test_teacher_ensemble_returns_flow_in_input_pixels_at_every_scale_and_flip():
    """Upsampled 2x the teacher sees a shift twice as long; the ensemble halves it back, un-flips the mirrored
    pass, and the members agree, so no pixel loses its confidence."""
    from flowcli.adapt.teacher import ensemble_flow

    gen = torch.Generator().manual_seed(0)
    texture = torch.nn.functional.interpolate(torch.rand(1, 3, 12, 16, generator=gen), size=(48, 64), mode="bicubic")
    first = texture[..., 4:44, 4:60]  # 40 x 56
    second = torch.roll(texture, shifts=(-2, 3), dims=(-2, -1))[..., 4:44, 4:60]  # content moves (+3, -2)
    teacher = _ShiftFinder()
    for scales in [(1.0,), (2.0,), (1.0, 2.0)]:
        flow, disagree = ensemble_flow([teacher], first, second, flip=True, scales=scales)
        assert flow.shape == (1, 2, 40, 56)
        assert torch.allclose(flow[:, 0], torch.full_like(flow[:, 0], 3.0))
        assert torch.allclose(flow[:, 1], torch.full_like(flow[:, 1], -2.0))
        assert not disagree.any()


def test_a_scale_given_twice_is_refused():
    """`scales=(0, 0)` counted the full-resolution terms twice while normalising their weight once."""
    with pytest.raises(ValueError, match=r"scales=0,2,2 names level 2 more than once"):
        LossWeights(scales=(0, 2, 2))
    assert LossWeights(scales=(2, 0)).scales == (2, 0)
