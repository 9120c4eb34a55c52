"""Flow, occlusion and stereo metrics as pure torch functions.

Every function takes a batch and returns plain floats. Each metric is computed per item over that
item's valid pixels and the batch value is the mean over items (an item with no pixel in a region
contributes NaN for that region and is skipped by the mean). Percentages are in [0, 100].
A pixel counts as valid only where its ground truth is known: a ground truth that is not finite, or
>= 1e9 in magnitude (the .flo unknown marker), is excluded even where `valid` is set. A prediction
that is not finite is an infinite error there (an outlier in every rate).

Averaging over a dataset (see `flowcli.evaluate`): the reported mean is the mean over items, as
Middlebury's table averages its sequences. On Sintel (every frame 1024x436) that equals the mean over
pixels for `epe` up to the invalid pixels, but `epe_noc` / `epe_occ` weigh every frame alike whatever
its occluded area, where a mean over pooled pixels (RAFT's evaluate.py) weighs every pixel alike.
KITTI 2015's devkit counts Fl-all, Fl-noc and D1 outliers over all valid (non-occluded) pixels of the
whole dataset, so every result also carries its pixel counts, `n_valid` and, with occlusion ground
truth, `n_noc` / `n_occ` (valid non-occluded / occluded pixels), and the evaluation adds pixel-weighted
`*_px` versions of EPE, Fl-all, D1, EPE noc / occ and Fl-noc, each weighted by the pixels it is over
(`PIXEL_COUNTS`), next to the item means. KITTI 2012's devkit (evaluate_flow.cpp) averages each image's
rates and EPE over images, as the item means do, and its Out-Noc / Out-All count EPE > 3 px without
the 5 % rule: `fl_all` / `fl_noc` are not its Out-All / Out-Noc; 100 - `acc_3px` is its Out-All, but
for errors of exactly 3 px (an outlier here, not there). Its Out-Noc has no key here.
"""

from __future__ import annotations

import math

import torch

from flowcli.io.flow_formats import UNKNOWN_FLOW_THRESHOLD

FL_ABS = 3.0  # KITTI outlier: end-point error > 3 px ...
FL_REL = 0.05  # ... and > 5 % of the ground-truth magnitude


def _check(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, channels: int) -> tuple:
    if pred.dim() == 3:
        pred, gt, valid = pred[None], gt[None], valid[None]
    if valid.dim() == 3:
        valid = valid[:, None]
    if pred.shape != gt.shape or pred.shape[1] != channels:
        raise ValueError(
            f"prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} must both be [B,{channels},H,W]"
        )
    if valid.shape[0] != pred.shape[0] or valid.shape[-2:] != pred.shape[-2:]:
        raise ValueError(f"valid mask {tuple(valid.shape)} does not match {tuple(pred.shape)}")
    gt = gt.float()
    known = (torch.isfinite(gt) & (gt.abs() < UNKNOWN_FLOW_THRESHOLD)).all(dim=1, keepdim=True)
    return pred.float(), gt, valid.bool() & known


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean over items of the per-item mean of `values` [B,H,W] where `mask` [B,H,W]; NaN if empty."""
    out = []
    for v, m in zip(values, mask):
        n = int(m.sum())
        out.append(float(v[m].double().sum() / n) if n else math.nan)
    return _nanmean(out)


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def endpoint_error(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per-pixel end-point error [B,H,W] of two flows [B,2,H,W]."""
    return torch.linalg.vector_norm(pred.float() - gt.float(), dim=1)


def _finite_error(error: torch.Tensor) -> torch.Tensor:
    """A non-finite prediction (NaN, inf) is an infinite error: an outlier in every rate, and an infinite
    mean, rather than a NaN that the mean over items would skip as if the item had no pixel to score."""
    return torch.nan_to_num(error, nan=math.inf, posinf=math.inf)  # posinf's default is the largest finite float


def flow_metrics(
    pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, occlusion: torch.Tensor | None = None
) -> dict[str, float]:
    """EPE and outlier rates of `pred` against `gt` ([B,2,H,W]) over `valid` ([B,1,H,W] bool).

    Keys: epe (all valid pixels), fl_all (% of valid pixels whose EPE > 3 px and > 5 % of |gt|),
    acc_1px / acc_3px / acc_5px (% with EPE < 1 / 3 / 5 px), n_valid (valid pixels, summed over
    the batch) and, when `occlusion` ([B,1,H,W], 1 = occluded) is given, epe_noc, epe_occ, fl_noc (fl_all
    over the non-occluded valid pixels: KITTI 2015's Fl-noc) and their pixel counts n_noc and n_occ.
    """
    pred, gt, valid = _check(pred, gt, valid, 2)
    mask = valid[:, 0]
    epe = _finite_error(endpoint_error(pred, gt))
    magnitude = torch.linalg.vector_norm(gt, dim=1)
    outlier = ((epe > FL_ABS) & (epe > FL_REL * magnitude)).float()
    out = {
        "epe": _masked_mean(epe, mask),
        "fl_all": 100.0 * _masked_mean(outlier, mask),
        "acc_1px": 100.0 * _masked_mean((epe < 1.0).float(), mask),
        "acc_3px": 100.0 * _masked_mean((epe < 3.0).float(), mask),
        "acc_5px": 100.0 * _masked_mean((epe < 5.0).float(), mask),
    }
    if occlusion is not None:
        occluded = occlusion.reshape(mask.shape[0], -1, *mask.shape[-2:])[:, 0] > 0.5
        noc, occ = mask & ~occluded, mask & occluded
        out["epe_noc"] = _masked_mean(epe, noc)
        out["epe_occ"] = _masked_mean(epe, occ)
        out["fl_noc"] = 100.0 * _masked_mean(outlier, noc)
        out["n_noc"] = float(noc.sum())
        out["n_occ"] = float(occ.sum())
    out["n_valid"] = float(mask.sum())
    return out


def occlusion_f1(pred_occ: torch.Tensor, gt_occ: torch.Tensor, valid: torch.Tensor | None = None) -> float:
    """F1 score of the occluded class: 2TP / (2TP + FP + FN), per item, mean over the batch.

    Both masks are [B,1,H,W] and binarised at 0.5 (1 = occluded); `valid` restricts the pixels
    counted. An item with no occluded pixel in either mask scores 1 (nothing to find, nothing wrong);
    one with no valid pixel scores NaN (nothing scored) and is skipped by the mean.
    """
    if pred_occ.dim() == 3:
        pred_occ, gt_occ = pred_occ[None], gt_occ[None]
        valid = valid[None] if valid is not None else None
    if pred_occ.shape != gt_occ.shape:
        raise ValueError(f"occlusion masks {tuple(pred_occ.shape)} and {tuple(gt_occ.shape)} differ in shape")
    p, g = pred_occ > 0.5, gt_occ > 0.5
    v = valid.reshape(p.shape).bool() if valid is not None else torch.ones_like(p)
    p, g = p & v, g & v
    scores = []
    for pi, gi, vi in zip(p, g, v):
        tp = int((pi & gi).sum())
        fp = int((pi & ~gi).sum())
        fn = int((~pi & gi).sum())
        denom = 2 * tp + fp + fn
        scores.append(2 * tp / denom if denom else 1.0 if vi.any() else math.nan)
    return _nanmean(scores)


def stereo_metrics(pred_disp: torch.Tensor, gt_disp: torch.Tensor, valid: torch.Tensor) -> dict[str, float]:
    """Disparity errors over `valid` pixels; disparities are [B,1,H,W] in pixels (left image).

    Keys: epe (mean absolute error), bad_1 / bad_2 / bad_4 (% of pixels with error > 1 / 2 / 4 px),
    d1 (KITTI: % with error > 3 px and > 5 % of the true disparity), n_valid.
    """
    pred, gt, valid = _check(pred_disp, gt_disp, valid, 1)
    mask = valid[:, 0]
    err = _finite_error((pred - gt).abs()[:, 0])
    out = {"epe": _masked_mean(err, mask)}
    for n in (1, 2, 4):
        out[f"bad_{n}"] = 100.0 * _masked_mean((err > n).float(), mask)
    out["d1"] = 100.0 * _masked_mean(((err > FL_ABS) & (err > FL_REL * gt.abs()[:, 0])).float(), mask)
    out["n_valid"] = float(mask.sum())
    return out


# The pixel count each metric is over: what its `<key>_px` dataset mean is weighted by (default n_valid).
PIXEL_COUNTS = {"epe_noc": "n_noc", "fl_noc": "n_noc", "epe_occ": "n_occ"}
PIXEL_WEIGHTED = ("epe", "fl_all", "d1", "epe_noc", "epe_occ", "fl_noc")
NOT_AVERAGED = ("n_valid", "n_noc", "n_occ", "height", "width")


def mean_metrics(per_item: list[dict], pixel_weighted: tuple[str, ...] = PIXEL_WEIGHTED) -> dict[str, float]:
    """Dataset summary: the mean over items of every numeric key (NaN and None skipped), plus
    `<key>_px` for the `pixel_weighted` keys, weighted by each item's count of the pixels that key is over
    (`PIXEL_COUNTS`, else `n_valid`: KITTI's convention, outliers counted over all the pixels of the
    dataset); an item without such pixels, or without the count, is left out. The counts are summed."""
    keys: list[str] = []
    for item in per_item:
        for k, v in item.items():
            if k not in keys and isinstance(v, (int, float)) and not isinstance(v, bool) and k not in NOT_AVERAGED:
                keys.append(k)
    mean = {k: _nanmean([float(item[k]) for item in per_item if item.get(k) is not None]) for k in keys}
    for k in pixel_weighted:
        count = PIXEL_COUNTS.get(k, "n_valid")
        pairs = [
            (float(item[k]), float(item[count]))
            for item in per_item
            if item.get(k) is not None and item.get(count) is not None and item[count] > 0 and not math.isnan(item[k])
        ]
        total = sum(w for _, w in pairs)
        if pairs and total > 0:
            mean[f"{k}_px"] = sum(v * w for v, w in pairs) / total
    if per_item:
        mean["n_valid"] = sum(float(item.get("n_valid", 0.0)) for item in per_item)
        for count in ("n_noc", "n_occ"):
            if any(item.get(count) is not None for item in per_item):
                mean[count] = sum(float(item.get(count) or 0.0) for item in per_item)
        mean["items"] = len(per_item)
    return mean
