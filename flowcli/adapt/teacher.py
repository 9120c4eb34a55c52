"""Teachers for the distillation stage: one frozen model or an ensemble (DistillFlow).

The ensemble's flow is the mean of its members' predictions (several checkpoints, and with
`flip=True` each also on horizontally flipped inputs, un-flipped afterwards; with `scales` each at
those input sizes, the flow resized back); its occlusion is the forward-backward check of the mean
flows, and pixels where the members disagree by more than 1 px + 5 % of the flow are not confident
either.

A teacher run on frames upsampled 2x sees each feature at four times the pixels: on the KITTI 2015 pair
in ../shared/data the default model's 1 px accuracy goes from 73 to 81 % and Fl-all from 10.3 to 9.9 %
(`flowcli eval --scale 2`), at four times the cost. Distilled into the student it did not lower KITTI's
Fl-all reliably (-1.2 % and +1.7 % over two seeds; docs/adapt.md), so it is an option, off by default.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from flowcli.inference import forward_backward_occlusion, resize_flow, scale_frames


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy in eval mode (no gradients)."""
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _padded_flow(model, first: torch.Tensor, second: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    multiple = model.config.size_multiple
    h, w = first.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        first = F.pad(first, (0, pw, 0, ph), mode="replicate")
        second = F.pad(second, (0, pw, 0, ph), mode="replicate")
    with torch.autocast(first.device.type, dtype=dtype, enabled=dtype != torch.float32):
        flow = model(first, second).flow
    return flow[..., :h, :w].float()


def _scaled_flow(model, first: torch.Tensor, second: torch.Tensor, dtype: torch.dtype, scale: float) -> torch.Tensor:
    if scale == 1.0:
        return _padded_flow(model, first, second, dtype)
    h, w = first.shape[-2:]
    first, second = scale_frames((first, second), scale)
    return resize_flow(_padded_flow(model, first, second, dtype), (h, w))


def _unflip(flow: torch.Tensor) -> torch.Tensor:
    flow = flow.flip(-1)
    return torch.cat((-flow[:, :1], flow[:, 1:]), dim=1)


@torch.no_grad()
def ensemble_flow(
    teachers: list[torch.nn.Module],
    first: torch.Tensor,
    second: torch.Tensor,
    *,
    flip: bool = False,
    scales: tuple[float, ...] = (1.0,),
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean flow [B, 2, H, W], disagreement [B, 1, H, W] bool) of the members on first -> second."""
    members = []
    for teacher in teachers:
        for scale in scales:
            members.append(_scaled_flow(teacher, first, second, dtype, scale))
            if flip:
                members.append(_unflip(_scaled_flow(teacher, first.flip(-1), second.flip(-1), dtype, scale)))
    stack = torch.stack(members)
    mean = stack.mean(0)
    if len(members) == 1:
        return mean, torch.zeros_like(mean[:, :1], dtype=torch.bool)
    spread = (stack - mean).norm(dim=2).amax(0, keepdim=False)[:, None]
    return mean, spread > 1.0 + 0.05 * mean.norm(dim=1, keepdim=True)


@torch.no_grad()
def teacher_predictions(
    teachers: list[torch.nn.Module],
    frames: torch.Tensor,
    *,
    temporal: bool,
    flip: bool,
    dtype: torch.dtype,
    scales: tuple[float, ...] = (1.0,),
) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's forward flow and occlusion for the main pair of each window tuple.

    frames [B, T, 3, H, W]: T = 2 (frame 1, frame 2) or, with `temporal`, T = 3 (t-1, t, t+1) with
    the main pair (t, t+1). With `temporal`, pixels occluded in t -> t+1 but visible in t -> t-1
    get the constant-velocity estimate -w(t -> t-1) and count as confident (SelFlow's temporal cue).
    Returns (flow [B, 2, H, W], occlusion [B, 1, H, W], 1 = not confident).
    """
    b = frames.shape[0]
    if temporal:
        prev, cur, nxt = frames[:, 0], frames[:, 1], frames[:, 2]
        first, second = torch.cat((cur, nxt, cur, prev)), torch.cat((nxt, cur, prev, cur))
    else:
        cur, nxt = frames[:, 0], frames[:, 1]
        first, second = torch.cat((cur, nxt)), torch.cat((nxt, cur))
    flows, disagree = ensemble_flow(teachers, first, second, flip=flip, scales=scales, dtype=dtype)
    fw, bw = flows[:b], flows[b : 2 * b]
    occ = forward_backward_occlusion(fw, bw)
    occ = torch.maximum(occ, disagree[:b].float())
    if temporal:
        pv, pvb = flows[2 * b : 3 * b], flows[3 * b :]
        occ_prev = torch.maximum(forward_backward_occlusion(pv, pvb), disagree[2 * b : 3 * b].float())
        fill = (occ > 0.5) & (occ_prev < 0.5)
        fw = torch.where(fill, -pv, fw)
        occ = torch.where(fill, torch.zeros_like(occ), occ)
    return fw, occ
