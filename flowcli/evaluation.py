"""Benchmark evaluation: run a model over a dataset reader and score it.

Flow datasets: `estimate_flow(model, image1, image2, backward=..., occlusion=...)`, then
`flow_metrics` per item; where the dataset has ground-truth occlusion (Sintel; KITTI's
flow_occ minus flow_noc) and `occlusion=True`, the forward-backward occlusion estimate is scored
with `occlusion_f1` (key `occ_f1`; `occ_f1_learned` for models with an occlusion head).

Stereo datasets: the flow from left to right is estimated with the flow model, disparity is
-u, and `stereo_metrics` scores it; the vertical component (0 for rectified pairs) is reported as
`vert_abs` (mean |v| over valid pixels, px) and `vert_gt1` (% of valid pixels with |v| > 1 px).

`EvalReport.mean` is the mean over items of each metric (NaNs from items without, e.g., occluded
pixels are skipped), plus pixel-weighted `epe_px`, `fl_all_px` and `d1_px` over all valid pixels of
the evaluated items (KITTI's convention for Fl-all / D1), `n_valid` and `items`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from flowcli.data import STEREO_DATASETS, make_dataset
from flowcli.metrics import flow_metrics, mean_metrics, occlusion_f1, stereo_metrics


@dataclass
class EvalReport:
    dataset: str
    per_item: list[dict] = field(default_factory=list)
    mean: dict = field(default_factory=dict)
    model: str | None = None

    def to_dict(self) -> dict:
        """JSON-ready: NaN becomes None."""
        return {
            "dataset": self.dataset,
            "model": self.model,
            "mean": _clean(self.mean),
            "per_item": [_clean(item) for item in self.per_item],
        }


def _clean(d: dict) -> dict:
    """NaN (nothing to score) and inf (a non-finite prediction) have no JSON spelling: None."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def _resolve_model(model, device):
    """(model on its device in eval mode, that device): a loaded module stays where it is unless `device` is given."""
    from flowcli.inference import resolve_device

    if device is not None:
        device = resolve_device(str(device))
    if isinstance(model, (str, Path)) or model is None:
        from flowcli.models import load_model

        device = device or resolve_device("auto")
        return load_model(model, device=device).eval(), device
    device = device or next(model.parameters()).device
    return model.to(device).eval(), device


def evaluate(
    model,
    dataset_name: str,
    root: str | Path,
    *,
    max_items: int | None = None,
    occlusion: bool = True,
    device: str | torch.device | None = None,
    progress: bool = True,
    precision: str = "fp32",
    max_pixels: int | None = None,
    scale: float = 1.0,
) -> EvalReport:
    """Evaluate `model` (a loaded module, or a registry name / checkpoint path) on a benchmark.

    `dataset_name`: sintel-clean, sintel-final, kitti2015, kitti2012, chairs, middlebury,
    middlebury-stereo or kitti-stereo; `root`: the dataset folder in its standard layout.
    `occlusion=True` also runs the backward flow and scores forward-backward occlusion where
    the dataset has occlusion ground truth. `device`: where to run (default: a loaded module's own
    device, "auto" for a name); a loaded module is left in the mode it came in.
    """
    from flowcli.console import progress as progress_bar
    from flowcli.inference import estimate_flow

    dataset = make_dataset(dataset_name, root)
    was_training = isinstance(model, torch.nn.Module) and model.training
    model, device = _resolve_model(model, device)
    stereo = dataset.name in STEREO_DATASETS
    count = len(dataset) if max_items is None else min(len(dataset), max(0, int(max_items)))
    per_item: list[dict] = []
    try:
        with progress_bar(quiet=not progress, transient=True) as bar:
            task = bar.add_task(f"eval {dataset.name}", total=count, info="")
            for index in range(count):
                item = dataset[index]
                image1 = item["image1"][None].to(device)
                image2 = item["image2"][None].to(device)
                valid = item["valid"][None].to(device)
                gt_occ = item["occlusion"]
                want_occ = occlusion and not stereo and gt_occ is not None
                start = time.perf_counter()
                with torch.inference_mode():
                    result = estimate_flow(
                        model, image1, image2, backward=want_occ, occlusion=want_occ,
                        max_pixels=max_pixels, precision=precision, scale=scale,
                    )  # fmt: skip
                seconds = time.perf_counter() - start
                flow = result.forward.float()
                row: dict = {"name": item["name"], "height": int(image1.shape[-2]), "width": int(image1.shape[-1])}
                if stereo:
                    gt_disp = item["disparity"][None].to(device)
                    row.update(stereo_metrics(-flow[:, :1], gt_disp, valid))
                    vertical = flow[:, 1][valid[:, 0]].abs()
                    row["vert_abs"] = float(vertical.mean()) if vertical.numel() else math.nan
                    row["vert_gt1"] = 100.0 * float((vertical > 1.0).float().mean()) if vertical.numel() else math.nan
                else:
                    gt_occ_d = gt_occ[None].to(device) if gt_occ is not None else None
                    row.update(flow_metrics(flow, item["flow"][None].to(device), valid, gt_occ_d))
                    if want_occ and result.occlusion is not None:
                        row["occ_f1"] = occlusion_f1(result.occlusion.float(), gt_occ_d, valid)
                    learned = getattr(result, "learned_occlusion", None)
                    if want_occ and learned is not None:
                        row["occ_f1_learned"] = occlusion_f1(learned.float(), gt_occ_d, valid)
                row["seconds"] = seconds
                per_item.append(row)
                bar.update(task, advance=1, info=f"{item['name']} epe {row['epe']:.2f}")
    finally:
        if was_training:
            model.train()
    report = EvalReport(dataset=dataset.name, per_item=per_item, mean=mean_metrics(per_item))
    report.model = getattr(model, "checkpoint_path", None)
    return report


HEADLINE_KEYS = ("epe", "epe_px", "epe_occ", "epe_noc", "fl_all", "fl_all_px", "d1", "d1_px", "occ_f1", "vert_abs")


def headline_metrics(
    model: torch.nn.Module,
    datasets: list[tuple[str, str]],
    *,
    precision: str = "fp32",
    max_pixels: int | None = None,
    occlusion: bool = True,
) -> dict[str, dict[str, float]]:
    """`evaluate` on each (dataset, root): {dataset: {metric: value}}, the usual headline metrics of each
    (HEADLINE_KEYS), on the model's device; the model is left in the mode it was in."""
    device = next(model.parameters()).device
    was_training = model.training
    out = {}
    try:
        for name, root in datasets:
            report = evaluate(
                model, name, root, device=device, progress=False, precision=precision, max_pixels=max_pixels,
                occlusion=occlusion,
            )  # fmt: skip
            out[name] = {
                k: round(float(v), 4) for k, v in report.mean.items()
                if k in HEADLINE_KEYS and isinstance(v, (int, float)) and not math.isnan(float(v))
            }  # fmt: skip
    finally:
        model.train(was_training)
    return out
