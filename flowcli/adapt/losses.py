"""Self-supervised losses for adapting a flow model to unlabeled footage: pure functions + one composer.

Per-pixel terms ([B, 1, H, W], >= 0, zero where theory says):
- `census_distance`: soft Hamming distance of ternary census signatures (UnFlow, DDFlow); invariant
  to brightness changes that keep the local ordering, so it is the main data term.
- `ssim_distance`: (1 - SSIM) / 2 on 3x3 windows; `l1_distance`: mean absolute colour difference.
- `photometric_error`: their weighted sum between frame 1 and frame 2 warped onto frame 1.
Scalar terms:
- `smoothness` (order 1 or 2): edge-aware |grad^k flow| weighted by exp(-alpha |grad I|); order 1
  is zero for constant flow, order 2 for any affine flow.
- `distillation_loss`: robust (|d| + 0.01)^0.4 between student and teacher flow on a mask (DDFlow,
  SelFlow, DistillFlow).
- `temporal_loss`: constant-velocity consistency w(t->t+1) = -w(t->t-1) on mutually visible pixels.
- `vertical_penalty`: |v| for rectified stereo.
- `quadrilateral_loss` / `triangle_loss`: Flow2Stereo's constraints between left flow, right flow
  and the disparities at t and t+1.
`adapt_loss` composes them over the output scales and returns named terms with `total`.

Occlusion of the photometric term, from the (detached) flows at each scale, so occluded pixels do
not pull the flow: `occlusion="fb"`, forward-backward consistency
(`flowcli.inference.forward_backward_occlusion`), or `"range"`, the range map of the backward flow
(`flowcli.inference.range_map_occlusion`). The forward-backward check also marks every region
where the model is wrong, since its two directions disagree there, and so takes exactly those
pixels out of the loss that should correct them; the range map marks only pixels that nothing of
frame 2 lands on. A sample where the estimate flags more than `max_occluded` of the frame is not
trusted (an untrained or drifting model would otherwise mask itself out of the loss and stall): it
is masked only where the flow leaves the frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from flowcli.adapt.settings import check_fields
from flowcli.inference import forward_backward_occlusion, range_map_occlusion
from flowcli.models.pwc import FlowOutput
from flowcli.ops.warp import backward_warp, out_of_frame


OCCLUSION_METHODS = ("fb", "range", "none")


@dataclass
class LossWeights:
    census: float = 1.0
    ssim: float = 0.2
    l1: float = 0.1
    smooth1: float = 0.0
    smooth2: float = 0.5
    edge_alpha: float = 150.0  # edge-aware weight exp(-alpha |grad I|), I in [0, 1]
    census_patch: int = 7
    occlusion: str = "fb"  # mask the photometric term: "fb" (forward-backward), "range" (range map) or "none"
    max_occluded: float = 0.5  # a sample whose occlusion estimate flags more than this is not trusted
    scales: tuple[int, ...] = (0, 2, 3)  # 0 = full resolution, k = pyramid level k (1/2^k)
    min_scale_side: int = 16  # skip scales whose flow is smaller than this on a side
    distill: float = 1.0
    temporal: float = 0.05
    vertical: float = 0.1  # stereo: |v| penalty
    quadrilateral: float = 0.2  # stereo video (Flow2Stereo)
    triangle: float = 0.2
    zero_vertical: bool = False  # stereo: warp with the horizontal component only (|v| is still penalised)
    anchor: float = 0.0  # supervised term on synthetic scenes with exact flow (0 = off; see anchor_loss)

    def __post_init__(self):
        if isinstance(self.occlusion, bool):  # recipes and checkpoints written before the choice existed
            self.occlusion = "fb" if self.occlusion else "none"
        check_fields(self)
        if self.occlusion not in OCCLUSION_METHODS:
            raise ValueError(f"occlusion must be one of {', '.join(OCCLUSION_METHODS)}, got {self.occlusion!r}")
        for name in _NON_NEGATIVE:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more, got {getattr(self, name):g}")
        if self.census_patch < 3 or self.census_patch % 2 == 0:
            raise ValueError(f"census_patch must be an odd number of pixels, 3 or more, got {self.census_patch}")
        if not 0 <= self.max_occluded <= 1:
            raise ValueError(f"max_occluded must be in [0, 1] (a share of the frame), got {self.max_occluded:g}")
        if any(scale < 0 for scale in self.scales):
            raise ValueError(f"scales must be 0 (full resolution) or pyramid levels above 0, got {self.scales}")
        repeated = sorted({scale for scale in self.scales if self.scales.count(scale) > 1})
        if repeated:  # a level given twice would be weighted twice, silently
            listed = ",".join(map(str, self.scales))
            raise ValueError(f"scales={listed} names level {repeated[0]} more than once; give each level once")


_NON_NEGATIVE = ("census", "ssim", "l1", "smooth1", "smooth2", "edge_alpha", "min_scale_side", "distill", "temporal",
                 "vertical", "quadrilateral", "triangle", "anchor")  # fmt: skip


# ----------------------------------------------------------------------------- per-pixel distances


def _gray(image: torch.Tensor) -> torch.Tensor:
    return (0.299 * image[:, 0:1] + 0.587 * image[:, 1:2] + 0.114 * image[:, 2:3]) * 255.0


def census_transform(image: torch.Tensor, patch: int = 7) -> torch.Tensor:
    """Soft ternary census signature [B, patch^2, H, W]: (I(q) - I(p)) / sqrt(0.81 + (I(q) - I(p))^2)."""
    gray = _gray(image)
    pad = patch // 2
    neighbours = F.unfold(F.pad(gray, (pad, pad, pad, pad), mode="replicate"), patch)
    neighbours = neighbours.view(gray.shape[0], patch * patch, *gray.shape[-2:])
    diff = neighbours - gray
    return diff / torch.sqrt(0.81 + diff * diff)


def census_distance(image1: torch.Tensor, image2: torch.Tensor, patch: int = 7) -> torch.Tensor:
    """Soft Hamming distance of the census signatures, in [0, 1): mean over the patch of d^2 / (0.1 + d^2)."""
    diff = census_transform(image1, patch) - census_transform(image2, patch)
    sq = diff * diff
    return (sq / (0.1 + sq)).mean(1, keepdim=True)


def ssim_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(1 - SSIM) / 2 over 3x3 windows (reflection padded), mean over channels, in [0, 1]."""
    c1, c2 = 0.01**2, 0.03**2
    x, y = F.pad(x, (1, 1, 1, 1), mode="reflect"), F.pad(y, (1, 1, 1, 1), mode="reflect")
    mu_x, mu_y = F.avg_pool2d(x, 3, 1), F.avg_pool2d(y, 3, 1)
    sigma_x = F.avg_pool2d(x * x, 3, 1) - mu_x * mu_x
    sigma_y = F.avg_pool2d(y * y, 3, 1) - mu_y * mu_y
    sigma_xy = F.avg_pool2d(x * y, 3, 1) - mu_x * mu_y
    ssim = ((2 * mu_x * mu_y + c1) * (2 * sigma_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sigma_x + sigma_y + c2))
    return ((1 - ssim) / 2).clamp(0, 1).mean(1, keepdim=True)


def l1_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x - y).abs().mean(1, keepdim=True)


def photometric_error(image1: torch.Tensor, warped2: torch.Tensor, weights: LossWeights) -> torch.Tensor:
    """Weighted census + SSIM + L1 distance [B, 1, H, W] between frame 1 and frame 2 warped onto it."""
    error = image1.new_zeros(image1.shape[0], 1, *image1.shape[-2:])
    if weights.census:
        error = error + weights.census * census_distance(image1, warped2, weights.census_patch)
    if weights.ssim:
        error = error + weights.ssim * ssim_distance(image1, warped2)
    if weights.l1:
        error = error + weights.l1 * l1_distance(image1, warped2)
    return error


# ----------------------------------------------------------------------------- scalar terms


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of x over mask (broadcast); 0 (not NaN) for an empty mask."""
    if mask is None:
        return x.mean()
    mask = mask.to(x.dtype).expand_as(x)
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def _image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def smoothness(flow: torch.Tensor, image: torch.Tensor, order: int = 2, edge_alpha: float = 150.0) -> torch.Tensor:
    """Edge-aware smoothness: mean of exp(-alpha |dI|) |d^order flow| over both axes (flow in pixels)."""
    if order not in (1, 2):
        raise ValueError(f"smoothness order must be 1 or 2, got {order}")
    img_dx, img_dy = _image_gradients(image)
    w_x = torch.exp(-edge_alpha * img_dx.abs().mean(1, keepdim=True))
    w_y = torch.exp(-edge_alpha * img_dy.abs().mean(1, keepdim=True))
    dx, dy = _image_gradients(flow)
    if order == 2:
        dx, _ = _image_gradients(dx)
        _, dy = _image_gradients(dy)
        w_x, w_y = w_x[..., :, 1:], w_y[..., 1:, :]
    return 0.5 * ((w_x * dx.abs()).mean() + (w_y * dy.abs()).mean())


def robust_penalty(x: torch.Tensor, q: float = 0.4, eps: float = 0.01) -> torch.Tensor:
    return (x.abs() + eps) ** q


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Robust (|du| + 0.01)^0.4 + (|dv| + 0.01)^0.4 between student and teacher flow, mean over mask.

    The constant 2 * 0.01^0.4 of a perfect match is subtracted, so an exact student scores 0.
    """
    floor = 2 * 0.01**0.4
    per_pixel = robust_penalty(student - teacher.detach()).sum(1, keepdim=True) - floor
    return masked_mean(per_pixel, mask)


def anchor_loss(flow: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The distillation penalty against exact flow, on synthetic scenes rendered from the footage.

    Photometric self-supervision has its own optimum, which is not the true flow where the frames are
    ambiguous (occlusions, blur, dark or flat regions), so on its own it pulls a supervised base model
    away from what it knew there. A few synthetic pairs per step with exact ground truth hold it back
    (replay); an exact prediction scores 0.
    """
    return distillation_loss(flow, target, None)


def temporal_loss(flow_next: torch.Tensor, flow_prev: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Constant velocity (SelFlow's temporal cue): w(t->t+1) + w(t->t-1) = 0 on mutually visible pixels."""
    floor = 2 * 0.01**0.4
    return masked_mean(robust_penalty(flow_next + flow_prev).sum(1, keepdim=True) - floor, mask)


def vertical_penalty(flow: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean |v|: rectified stereo has no vertical displacement."""
    return masked_mean(flow[:, 1:2].abs(), mask)


def quadrilateral_residual(
    flow_left: torch.Tensor, flow_right: torch.Tensor, stereo_t: torch.Tensor, stereo_t1: torch.Tensor
) -> torch.Tensor:
    """Flow2Stereo's quadrilateral constraint at pixels p of the left frame at t, [B, 2, H, W]:

    w_l(p) + s_{t+1}(p + w_l(p)) - s_t(p) - w_r(p + s_t(p)) = 0, with s = (-d, 0) the left->right
    stereo flow; componentwise u_r - u_l = (-d_{t+1}) - (-d_t) and v_r - v_l = 0.
    """
    return flow_left + backward_warp(stereo_t1, flow_left) - stereo_t - backward_warp(flow_right, stereo_t)


def triangle_residual(cross: torch.Tensor, flow_left: torch.Tensor, stereo_t1: torch.Tensor) -> torch.Tensor:
    """Flow2Stereo's triangle constraint: the flow L_t -> R_{t+1} equals L_t -> L_{t+1} -> R_{t+1}."""
    return cross - flow_left - backward_warp(stereo_t1, flow_left)


def quadrilateral_loss(flow_left, flow_right, stereo_t, stereo_t1, mask=None) -> torch.Tensor:
    floor = 2 * 0.01**0.4
    residual = quadrilateral_residual(flow_left, flow_right, stereo_t, stereo_t1)
    return masked_mean(robust_penalty(residual).sum(1, keepdim=True) - floor, mask)


def triangle_loss(cross, flow_left, stereo_t1, mask=None) -> torch.Tensor:
    floor = 2 * 0.01**0.4
    residual = triangle_residual(cross, flow_left, stereo_t1)
    return masked_mean(robust_penalty(residual).sum(1, keepdim=True) - floor, mask)


# ----------------------------------------------------------------------------- occlusion


def fb_occlusion(flow_fw: torch.Tensor, flow_bw: torch.Tensor) -> torch.Tensor:
    """Occlusion [B, 1, H, W] (1 = occluded or leaving the frame) by forward-backward consistency, no gradient."""
    with torch.no_grad():
        return forward_backward_occlusion(flow_fw.detach().float(), flow_bw.detach().float())


def range_occlusion(flow_fw: torch.Tensor, flow_bw: torch.Tensor) -> torch.Tensor:
    """Occlusion [B, 1, H, W] from the range map of the backward flow (1 = nothing of frame 2 lands
    there, or leaving the frame), no gradient. It leaves a region whose flow is only wrong unmasked,
    so the photometric term can still correct it; the forward-backward check masks such regions."""
    with torch.no_grad():
        return range_map_occlusion(flow_fw.detach().float(), flow_bw.detach().float())


def census_occlusion(
    image1: torch.Tensor, image2: torch.Tensor, flow: torch.Tensor, threshold: float = 0.4, patch: int = 7
) -> torch.Tensor:
    """Occlusion from appearance alone: census distance after warping above `threshold`, or leaving the frame."""
    with torch.no_grad():
        distance = census_distance(image1, backward_warp(image2, flow), patch)
        return ((distance > threshold) | out_of_frame(flow)).float()


# ----------------------------------------------------------------------------- composer


def _resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image, size=size, mode="area")


def _resize_mask(mask: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor | None:
    """A validity mask at a coarser scale: valid only where every covered pixel was valid."""
    if mask is None or tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return 1.0 - F.adaptive_max_pool2d(1.0 - mask.float(), size)


def _scale_flows(
    forward: FlowOutput, backward: FlowOutput, weights: LossWeights
) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    out = []
    for scale in weights.scales:
        if scale == 0:
            fw, bw = forward.flow, backward.flow
        elif scale in forward.level_flows:
            fw, bw = forward.level_flows[scale], backward.level_flows[scale]
        else:
            continue
        if min(fw.shape[-2:]) >= weights.min_scale_side or scale == 0:
            out.append((scale, fw, bw))
    return out


def photometric_terms(
    image1: torch.Tensor,
    image2: torch.Tensor,
    flow_fw: torch.Tensor,
    flow_bw: torch.Tensor,
    weights: LossWeights,
    valid1: torch.Tensor | None = None,
    valid2: torch.Tensor | None = None,
    horizontal: bool = False,
) -> dict[str, torch.Tensor]:
    """Photometric (both directions, occlusion-masked) and smoothness terms at one scale.

    Images are resized to the flow's size; flows are in that size's pixels. `valid1`/`valid2`
    exclude pixels (e.g. hallucinated occlusions) from frame 1's / frame 2's photometric term.
    `horizontal=True` zeroes the vertical component before warping (rectified stereo).
    """
    size = tuple(flow_fw.shape[-2:])
    i1, i2 = _resize_image(image1, size), _resize_image(image2, size)
    if horizontal:
        keep = flow_fw.new_tensor([1.0, 0.0]).view(1, 2, 1, 1)
        warp_fw, warp_bw = flow_fw * keep, flow_bw * keep
    else:
        warp_fw, warp_bw = flow_fw, flow_bw
    oof1, oof2 = out_of_frame(warp_fw.detach()).float(), out_of_frame(warp_bw.detach()).float()
    if weights.occlusion != "none":
        estimate = fb_occlusion if weights.occlusion == "fb" else range_occlusion
        occ1, occ2 = estimate(warp_fw, warp_bw), estimate(warp_bw, warp_fw)
        # A model whose two directions disagree almost everywhere (untrained, or drifting) would mask
        # itself out of the loss and stall; such a sample falls back to out-of-frame masking only.
        mask1 = torch.where(occ1.mean((1, 2, 3), keepdim=True) > weights.max_occluded, oof1, occ1)
        mask2 = torch.where(occ2.mean((1, 2, 3), keepdim=True) > weights.max_occluded, oof2, occ2)
    else:
        occ1, occ2 = mask1, mask2 = oof1, oof2
    vis1, vis2 = 1.0 - mask1, 1.0 - mask2
    if valid1 is not None:
        vis1 = vis1 * _resize_mask(valid1, size)
    if valid2 is not None:
        vis2 = vis2 * _resize_mask(valid2, size)
    err1 = photometric_error(i1, backward_warp(i2, warp_fw), weights)
    err2 = photometric_error(i2, backward_warp(i1, warp_bw), weights)
    terms = {
        "photo": 0.5 * (masked_mean(err1, vis1) + masked_mean(err2, vis2)),
        "occ": 0.5 * (occ1.mean() + occ2.mean()),
    }
    for order, weight in ((1, weights.smooth1), (2, weights.smooth2)):
        if weight:
            terms[f"smooth{order}"] = 0.5 * (
                smoothness(flow_fw, i1, order, weights.edge_alpha) + smoothness(flow_bw, i2, order, weights.edge_alpha)
            )
    return terms


@dataclass
class PairFlows:
    """One frame pair and the model's outputs on it in both directions.

    stereo=True: a rectified left/right pair; it adds the `vertical` |v| term, and with
    `LossWeights.zero_vertical` the photometric warp uses the horizontal component only.
    valid1 / valid2 ([B,1,H,W], 1 = use) exclude pixels from frame 1's / frame 2's photometric term.
    """

    image1: torch.Tensor
    image2: torch.Tensor
    forward: FlowOutput
    backward: FlowOutput
    valid1: torch.Tensor | None = None
    valid2: torch.Tensor | None = None
    stereo: bool = False


@dataclass
class StereoVideo:
    """The flows of a stereo video step (all [B, 2, H, W], full resolution, pixels):
    flow_left L_t->L_t+1 (+ its backward), flow_right R_t->R_t+1, stereo_t L_t->R_t (+ backward),
    stereo_t1 L_t+1->R_t+1, cross L_t->R_t+1 (optional, for the triangle constraint)."""

    flow_left: torch.Tensor
    flow_left_bw: torch.Tensor
    flow_right: torch.Tensor
    stereo_t: torch.Tensor
    stereo_t_bw: torch.Tensor
    stereo_t1: torch.Tensor
    cross: torch.Tensor | None = None


def adapt_loss(
    pairs: PairFlows | list[PairFlows],
    weights: LossWeights,
    *,
    teacher_flow: torch.Tensor | None = None,
    teacher_mask: torch.Tensor | None = None,
    previous: torch.Tensor | None = None,
    previous_mask: torch.Tensor | None = None,
    stereo_video: StereoVideo | None = None,
    anchor: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Named loss terms for one batch; `total` is what is minimised.

    pairs: one or more frame pairs with the model's outputs in both directions; the photometric and
    smoothness terms are averaged over them and over `weights.scales` (full resolution and level 2
    weigh 1 and 1/2, each further level half the one before), and the `vertical` term over the
    stereo pairs (so its weight means the same for stereo pairs and a stereo video). The first
    pair is the main one: teacher_flow + teacher_mask distil its full-resolution forward flow
    (DDFlow / SelFlow / DistillFlow); previous (the flow t->t-1 of the same frame 1) + previous_mask add the
    constant-velocity temporal term. stereo_video adds Flow2Stereo's quadrilateral and triangle terms.
    anchor, (predicted flow, exact flow) of synthetic pairs, adds the supervised replay term.
    Monitoring terms (not in `total`): `occ`, the occluded fraction at full resolution.
    """
    if isinstance(pairs, PairFlows):
        pairs = [pairs]
    terms: dict[str, torch.Tensor] = {}
    share = 1.0 / len(pairs)
    stereo_share = 1.0 / max(1, sum(pair.stereo for pair in pairs))  # |v| is averaged over the stereo pairs
    for pair in pairs:
        scales = _scale_flows(pair.forward, pair.backward, weights)
        scale_weight = {s: 1.0 if s == 0 else 0.5 ** (s - 1) for s, _, _ in scales}
        norm = sum(scale_weight.values())
        for scale, fw, bw in scales:
            at_scale = photometric_terms(
                pair.image1, pair.image2, fw, bw, weights, pair.valid1, pair.valid2,
                horizontal=pair.stereo and weights.zero_vertical,
            )  # fmt: skip
            for name, value in at_scale.items():
                if name == "occ":
                    if scale == 0:
                        terms["occ"] = terms.get("occ", 0.0) + share * value.detach()
                    continue
                terms[name] = terms.get(name, 0.0) + share * scale_weight[scale] / norm * value
        if pair.stereo and weights.vertical:
            vertical = 0.5 * (vertical_penalty(pair.forward.flow) + vertical_penalty(pair.backward.flow))
            terms["vertical"] = terms.get("vertical", 0.0) + stereo_share * vertical
    total = terms["photo"]
    for name, weight in (("smooth1", weights.smooth1), ("smooth2", weights.smooth2), ("vertical", weights.vertical)):
        if name in terms:
            total = total + weight * terms[name]
    main = pairs[0]
    if teacher_flow is not None and weights.distill:
        terms["distill"] = distillation_loss(main.forward.flow, teacher_flow, teacher_mask)
        total = total + weights.distill * terms["distill"]
    if previous is not None and weights.temporal:
        terms["temporal"] = temporal_loss(main.forward.flow, previous, previous_mask)
        total = total + weights.temporal * terms["temporal"]
    if stereo_video is not None:
        sv = stereo_video
        visible = (1 - fb_occlusion(sv.flow_left, sv.flow_left_bw)) * (1 - fb_occlusion(sv.stereo_t, sv.stereo_t_bw))
        if weights.quadrilateral:
            terms["quad"] = quadrilateral_loss(sv.flow_left, sv.flow_right, sv.stereo_t, sv.stereo_t1, visible)
            total = total + weights.quadrilateral * terms["quad"]
        if weights.triangle and sv.cross is not None:
            terms["triangle"] = triangle_loss(sv.cross, sv.flow_left, sv.stereo_t1, visible)
            total = total + weights.triangle * terms["triangle"]
    if anchor is not None and weights.anchor:
        terms["anchor"] = anchor_loss(*anchor)
        total = total + weights.anchor * terms["anchor"]
    terms["total"] = total
    return terms
