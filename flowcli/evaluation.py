"""Benchmark evaluation: run a model over a dataset reader and score it.

Flow datasets: `estimate_flow(model, image1, image2, backward=..., occlusion=...)`, then
`flow_metrics` per item; where the dataset has ground-truth occlusion (Sintel; KITTI's
flow_occ minus flow_noc) the rows also have `epe_noc`, `epe_occ`, `fl_noc` and their pixel counts
`n_noc` / `n_occ`, and with `occlusion=True` the forward-backward occlusion estimate is scored
with `occlusion_f1` (key `occ_f1`; `occ_f1_learned` for models with an occlusion head).

Stereo datasets: the flow from left to right is estimated with the flow model, disparity is
-u, and `stereo_metrics` scores it over every pixel with a known disparity, occluded ones included
(Middlebury's "all" mask, not its "nonocc"; KITTI's disp_occ: D1-all); the vertical component (0 for
rectified pairs) is reported as `vert_abs` (mean |v| over valid pixels, px) and `vert_gt1` (% of valid
pixels with |v| > 1 px).

Predictions (`evaluate_predictions`): flow or disparity files that any tool wrote, one per item, are
scored by the same per-item code (`score_item`) instead of a model's output; see `prediction_candidates` and
`read_prediction` for the file names and formats. On the KITTI datasets, pixels a prediction leaves unknown are
filled as the KITTI devkit fills them (`fill_like_kitti_devkit`) and the share it gave is reported as `density`;
elsewhere every pixel needs a value.

`EvalReport.mean` is the mean over items of each metric (NaNs from items without, e.g., occluded
pixels are skipped), plus pixel-weighted `epe_px`, `fl_all_px` and `d1_px` over all valid pixels of
the evaluated items, `epe_noc_px` and `fl_noc_px` over their non-occluded valid pixels and `epe_occ_px` over
their occluded ones (KITTI 2015's convention for Fl-all / Fl-noc / D1; KITTI 2012's devkit averages over
images, as the item means do), the pixel counts `n_valid` (`n_noc`, `n_occ`) and `items`.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from flowcli.data import STEREO_DATASETS, make_dataset
from flowcli.errors import InputError
from flowcli.io import flow_formats
from flowcli.metrics import PIXEL_WEIGHTED, flow_metrics, mean_metrics, occlusion_f1, stereo_metrics


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


def score_item(
    item: dict,
    prediction: torch.Tensor,
    *,
    stereo: bool,
    occlusion: torch.Tensor | None = None,
    learned_occlusion: torch.Tensor | None = None,
) -> dict:
    """The scores of one dataset item (a row of `EvalReport.per_item`, without `seconds`).

    `prediction`: flow [1,2,H,W] at the item's size; for a stereo dataset a disparity [1,1,H,W] or a flow
    whose -u is the disparity (then `vert_abs` / `vert_gt1` score its v). `occlusion` / `learned_occlusion`
    ([1,1,H,W], 1 = occluded) are scored as `occ_f1` / `occ_f1_learned` where the item has GT occlusion.
    The ground truth is moved to the prediction's device.
    """
    device = prediction.device
    prediction = prediction.float()
    valid = item["valid"][None].to(device)
    row: dict = {"name": item["name"], "height": int(valid.shape[-2]), "width": int(valid.shape[-1])}
    if stereo:
        disparity = prediction if prediction.shape[1] == 1 else -prediction[:, :1]
        row.update(stereo_metrics(disparity, item["disparity"][None].to(device), valid))
        if prediction.shape[1] == 2:
            # a NaN is an infinite error, as in the other metrics, not a pixel the mean skips and the rate passes
            vertical = torch.nan_to_num(prediction[:, 1][valid[:, 0]].abs(), nan=math.inf, posinf=math.inf)
            row["vert_abs"] = float(vertical.mean()) if vertical.numel() else math.nan
            row["vert_gt1"] = 100.0 * float((vertical > 1.0).float().mean()) if vertical.numel() else math.nan
        return row
    gt_occ = item["occlusion"][None].to(device) if item["occlusion"] is not None else None
    row.update(flow_metrics(prediction, item["flow"][None].to(device), valid, gt_occ))
    if gt_occ is not None:
        for key, predicted in (("occ_f1", occlusion), ("occ_f1_learned", learned_occlusion)):
            if predicted is not None:
                row[key] = occlusion_f1(predicted.float(), gt_occ, valid)
    return row


def _item_count(dataset, max_items: int | None) -> int:
    return len(dataset) if max_items is None else min(len(dataset), max(0, int(max_items)))


def _score_items(dataset, count: int, score, progress: bool) -> list[dict]:
    """`score(item) -> row` for the first `count` items of `dataset`, under a progress bar."""
    from rich.markup import escape

    from flowcli.console import progress as progress_bar

    per_item: list[dict] = []
    with progress_bar(quiet=not progress, transient=True) as bar:
        task = bar.add_task(f"eval {dataset.name}", total=count, info="")
        for index in range(count):
            item = dataset[index]
            row = score(item)
            per_item.append(row)
            bar.update(task, advance=1, info=f"{escape(item['name'])} epe {row['epe']:.2f}")
    return per_item


def _finish_queued_work(device: torch.device) -> None:
    """Wait for the GPU's queued kernels, so a timing covers the work and not only its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    from flowcli.inference import estimate_flow

    dataset = make_dataset(dataset_name, root)
    was_training = isinstance(model, torch.nn.Module) and model.training
    model, device = _resolve_model(model, device)
    stereo = dataset.name in STEREO_DATASETS

    def run_model(item: dict) -> dict:
        want_occ = occlusion and not stereo and item["occlusion"] is not None
        start = time.perf_counter()
        with torch.inference_mode():
            result = estimate_flow(
                model, item["image1"][None].to(device), item["image2"][None].to(device), backward=want_occ,
                occlusion=want_occ, max_pixels=max_pixels, precision=precision, scale=scale,
            )  # fmt: skip
        _finish_queued_work(device)
        seconds = time.perf_counter() - start
        row = score_item(
            item, result.forward, stereo=stereo, occlusion=result.occlusion if want_occ else None,
            learned_occlusion=getattr(result, "learned_occlusion", None) if want_occ else None,
        )  # fmt: skip
        row["seconds"] = seconds
        return row

    try:
        per_item = _score_items(dataset, _item_count(dataset, max_items), run_model, progress)
    finally:
        if was_training:
            model.train()
    report = EvalReport(dataset=dataset.name, per_item=per_item, mean=mean_metrics(per_item))
    report.model = getattr(model, "checkpoint_path", None)
    return report


PREDICTION_EXTENSIONS = ("flo", "png", "npy", "pfm")


def _prediction_suffixes(stereo: bool) -> tuple[str, ...]:
    """What follows an item's name in its prediction's file name: nothing, "_flow" (`flowcli estimate`'s default
    --name) and, for stereo datasets, "_disp" (`flowcli stereo`'s)."""
    return ("", "_flow", "_disp") if stereo else ("", "_flow")


def prediction_candidates(
    folder: str | Path, name: str, *, stereo: bool = False, first_image: str | Path | None = None
) -> list[Path]:
    """The files that may hold the prediction for item `name`, in lookup order: FOLDER/NAME.EXT, then
    FOLDER/NAME_flow.EXT (stereo: then FOLDER/NAME_disp.EXT), EXT in flo, png, npy, pfm. With the item's
    `first_image` (frame 1, or the left view), also the names `flowcli estimate` / `flowcli stereo` give its
    outputs by default and with --name '{source}/{frame1}': FOLDER/STEM_flow.EXT and FOLDER/PARENT/STEM_flow.EXT,
    STEM and PARENT being the image's name without extension and its folder's name (Chairs 00001 ->
    00001_img1_flow.flo, Middlebury Dimetrodon -> Dimetrodon/frame10_flow.flo)."""
    return [Path(f"{stem}.{ext}") for stem in _candidate_stems(folder, name, stereo, first_image)
            for ext in PREDICTION_EXTENSIONS]


def _candidate_stems(folder: str | Path, name: str, stereo: bool, first_image: str | Path | None) -> list[str]:
    """`prediction_candidates` without their extensions, in lookup order."""
    suffixes = _prediction_suffixes(stereo)
    names = [name]
    if first_image is not None:
        image = Path(first_image)
        names += [name for name in (image.stem, f"{image.parent.name}/{image.stem}") if name not in names]
    stems = [f"{Path(folder) / base}{suffix}" for base in names for suffix in suffixes
             if base == name or suffix]  # a bare image stem is not a prediction
    return list(dict.fromkeys(stems))


def _spelled_candidates(folder: Path, name: str, stereo: bool, first_image: str | Path | None) -> str:
    extensions = "{" + ",".join(PREDICTION_EXTENSIONS) + "}"
    return ", ".join(f"{stem}.{extensions}" for stem in _candidate_stems(folder, name, stereo, first_image))


def find_predictions(dataset, folder: Path, count: int) -> list[Path]:
    """The prediction file of each of the first `count` items: exactly one candidate must exist for each.
    Every item is checked before any is scored."""
    stereo = dataset.name in STEREO_DATASETS
    found: list[Path] = []
    claimed: dict[Path, str] = {}
    missing: list[dict] = []
    for record in dataset.samples[:count]:
        name = record["name"]
        first_image = record.get("left" if stereo else "image1")
        candidates = prediction_candidates(folder, name, stereo=stereo, first_image=first_image)
        broken = next((path for path in candidates if path.is_symlink() and not path.exists()), None)
        if broken is not None:  # is_file() follows the link: the file would be "missing" while ls lists it
            raise InputError(
                f"{broken} is a link to {os.readlink(broken)}, which does not exist; "
                f"point it at the prediction of {dataset.name} item {name}, or remove it"
            )
        existing = [path for path in candidates if path.is_file()]
        ground_truth = next((path for path in existing if _is_ground_truth(path, record)), None)
        if ground_truth is not None:  # --predictions given the dataset's own folder: a perfect score, silently
            raise InputError(
                f"{ground_truth} is the ground truth of {dataset.name} item {name}, not a prediction; "
                "give the folder the predictions were written to, outside the dataset"
            )
        if len(existing) > 1:
            raise InputError(
                f"{len(existing)} predictions for {dataset.name} item {name}: "
                f"{' and '.join(map(str, existing))}; keep one of them in {folder}"
            )
        if existing and existing[0] in claimed:  # a frame name that several items share (Sintel's frame_0002)
            raise InputError(
                f"{existing[0]} would be the prediction of both {claimed[existing[0]]} and {name}; name the files "
                "after the items (flowcli estimate: --name '{source}/{frame1}')"
            )
        if existing:
            found.append(existing[0])
            claimed[existing[0]] = name
        else:
            missing.append(record)
    if missing:
        name = missing[0]["name"]
        looked_for = _spelled_candidates(folder, name, stereo, missing[0].get("left" if stereo else "image1"))
        raise InputError(
            f"no prediction for {dataset.name} item {name} (looked for {looked_for}); "
            f"{len(missing)} of {count} items have none: give one file per item, named after it"
        )
    return found


def _is_ground_truth(path: Path, record: dict) -> bool:
    """Whether `path` is one of the dataset `record`'s ground-truth files (a link to one included)."""
    for key in ("flow", "disparity", "noc"):
        try:
            if record.get(key) is not None and path.samefile(record[key]):
                return True
        except OSError:
            pass
    return False


def _is_real_dtype(dtype: np.dtype) -> bool:
    """Integers or floats: not bools, strings or complex numbers (whose imaginary part a cast would drop)."""
    return np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)


def read_prediction(path: Path, *, stereo: bool) -> torch.Tensor:
    """A prediction file as a float32 tensor [1,C,H,W]: flow (C = 2) or, for stereo, also a disparity (C = 1).

    .flo: flow. .png: KITTI 16-bit flow, or for stereo a KITTI 16-bit disparity PNG. .npy: [H,W,2] flow, or
    for stereo also [H,W] / [H,W,1] disparity. .pfm: (u, v, 0) 3-channel flow, or for stereo also 1-channel
    disparity. Pixels the file marks unknown (.flo >= 1e9, KITTI valid bit 0, disparity 0) come back NaN.
    """
    suffix = path.suffix.lower()
    if suffix == ".flo":
        array = flow_formats.read_flo(path)
        array = np.where(flow_formats.valid_mask(array)[..., None], array, np.nan)
    elif suffix == ".png" and stereo:
        disparity, valid = flow_formats.read_disparity_png(path)
        array = np.where(valid, disparity, np.nan)
    elif suffix == ".png":
        array, valid = flow_formats.read_kitti_flow(path)
        array[~valid] = np.nan
    else:
        array = flow_formats.read_npy(path) if suffix == ".npy" else flow_formats.read_pfm(path)
        if suffix == ".pfm" and array.ndim == 3 and array.shape[2] == 3:
            array = array[:, :, :2]  # flow stored as (u, v, 0)
    shape = list(array.shape)
    if array.ndim == 2:
        array = array[:, :, None]
    allowed = (1, 2) if stereo else (2,)
    if array.ndim != 3 or array.shape[2] not in allowed or not _is_real_dtype(array.dtype):
        expected = "a disparity [H, W] or a flow [H, W, 2]" if stereo else "a flow [H, W, 2]"
        raise InputError(f"{path} holds an array of shape {shape} ({array.dtype}), not {expected}")
    flow_or_disparity = np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32)
    return torch.from_numpy(flow_or_disparity)[None]


def _read_occlusion_mask(path: Path) -> torch.Tensor:
    """An occlusion mask PNG (255 = occluded, as `flowcli estimate --occlusion` writes) as [1,1,H,W] float."""
    from flowcli.data.datasets import _mask_png  # the reader of the datasets' own occlusion masks

    return _mask_png(path).float()[None]


def _check_size(path: Path, prediction: torch.Tensor, item: dict, dataset_name: str) -> None:
    height, width = item["valid"].shape[-2:]
    if tuple(prediction.shape[-2:]) != (height, width):
        raise InputError(
            f"{path} is {prediction.shape[-1]}x{prediction.shape[-2]}, the ground truth of {dataset_name} item "
            f"{item['name']} is {width}x{height}; write predictions at the ground truth's size (eval does not resize)"
        )


KITTI_DATASETS = ("kitti2015", "kitti2012", "kitti-stereo")
# What the devkit's readers store at a pixel that the file marks invalid, and its interpolation leaves so:
# FlowImage::readFlowField writes (0, 0), DisparityImage::setInvalid writes -1.
_DEVKIT_UNFILLED = {2: 0.0, 1: -1.0}


def fill_like_kitti_devkit(prediction: torch.Tensor) -> torch.Tensor:
    """A flow [2,H,W] or disparity [1,H,W] with NaN (or inf) where unknown, filled as the official KITTI devkit
    fills a sparse submission before scoring it: `FlowImage::interpolateBackground` (io_flow.h) and
    `DisparityImage::interpolateBackground` (io_disp.h) of devkit_scene_flow (KITTI 2015) and devkit_stereo_flow
    (KITTI 2012), read in github.com/atinfinity/devkit_scene_flow devkit/cpp/io_flow.h, io_disp.h and
    github.com/speedbyte/kitti_devkit_stereo_opticalflow_sceneflow cpp/io_flow.h (the same code).

    A pixel is unknown when any of its channels is not finite (KITTI's valid bit is per pixel). The rules:
    1. per row, a gap between two known pixels takes, channel by channel, the smaller of the two known values
       beside it (for flow u and v are each the min of their own neighbours);
    2. per row, pixels before the first known pixel take its value, pixels after the last known one take that;
    3. per column (after 1 and 2 every row is either all known or all unknown), rows above the first known row
       take its values, rows below the last known row take that.
    An unknown row between two known rows is left as the devkit leaves it: the value its reader stores for an
    invalid pixel, flow (0, 0), disparity -1. With no known pixel at all everything is that value.
    """
    channels, height, width = prediction.shape
    unfilled = _DEVKIT_UNFILLED[channels]
    known = torch.isfinite(prediction).all(dim=0)
    known_rows = known.any(dim=1)
    if not known_rows.any():
        return torch.full_like(prediction, unfilled)

    # 1 and 2: for each pixel, the nearest known column at or left of it (-1: none) and at or right of it (width)
    columns = torch.arange(width, device=prediction.device).expand(height, width)
    left = torch.where(known, columns, -1).cummax(dim=1).values
    right = torch.where(known, columns, width).flip(1).cummin(dim=1).values.flip(1)
    at_left = prediction.gather(2, left.clamp(min=0).expand(channels, height, width))
    at_right = prediction.gather(2, right.clamp(max=width - 1).expand(channels, height, width))
    has_left, has_right = left >= 0, right < width
    outside = torch.where(has_left, at_left, at_right)  # a leading or trailing run (garbage in a row of unknowns)
    between = torch.where(has_left & has_right, torch.minimum(at_left, at_right), outside)
    filled = torch.where(known, prediction, between)

    # 3: each row's source row; -1 for an unknown row between known ones
    rows = torch.arange(height, device=prediction.device)
    first_known, last_known = rows[known_rows][0], rows[known_rows][-1]
    source = torch.where(known_rows, rows, -1)
    source = torch.where(rows < first_known, first_known, torch.where(rows > last_known, last_known, source))
    filled = filled[:, source.clamp(min=0)]
    filled[:, source < 0] = unfilled
    return filled


def _fill_kitti_prediction(prediction: torch.Tensor, stereo: bool) -> torch.Tensor:
    """`fill_like_kitti_devkit` on a [1,C,H,W] prediction. A stereo flow's -u is a disparity: it is filled as the
    devkit fills disparities (the min of the disparities is the max of u), its v as a flow's."""
    if stereo and prediction.shape[1] == 2:
        prediction = prediction.masked_fill(~torch.isfinite(prediction).all(dim=1, keepdim=True), math.nan)
        disparity = fill_like_kitti_devkit(-prediction[0, :1])
        vertical = fill_like_kitti_devkit(prediction[0])[1:]
        return torch.cat([-disparity, vertical])[None]
    return fill_like_kitti_devkit(prediction[0])[None]


def _density(known: torch.Tensor, valid: torch.Tensor) -> float:
    """The devkit's density: the share of the ground truth's valid pixels that the prediction gave a value."""
    n_valid = int(valid.sum())
    return float((known & valid).sum()) / n_valid if n_valid else math.nan


def evaluate_predictions(
    dataset_name: str,
    root: str | Path,
    predictions: str | Path,
    *,
    max_items: int | None = None,
    occlusion: bool = True,
    progress: bool = True,
) -> EvalReport:
    """Score prediction files, one per item, on a benchmark, with the metrics of `evaluate`.

    The prediction for an item is found by its name (`alley_1/frame_0002`, `00001`, `000010_10`...) as
    PREDICTIONS/NAME.EXT, NAME_flow.EXT or, for stereo, NAME_disp.EXT (`prediction_candidates`); exactly one
    must exist for every scored item, at the size of its ground truth (`read_prediction` lists the formats).
    Sintel, Chairs and Middlebury need a finite value at every pixel. KITTI (kitti2015, kitti2012, kitti-stereo)
    takes sparse predictions as its devkit does: the unknown pixels (KITTI valid bit 0, disparity 0, .flo >= 1e9,
    NaN, inf) are filled by `fill_like_kitti_devkit` before scoring, and each row gets `density`, the share of the
    ground truth's valid pixels that the prediction gave a value (1.0 when dense); the mean has it averaged over
    items (`density`) and over pixels (`density_px`). A prediction without any finite pixel is refused everywhere.
    With `occlusion`, the occlusion mask beside the flow (STEM_occ.png next to STEM_flow.EXT, or
    PREDICTIONS/NAME_occ.png; 255 = occluded), where present, is scored as `occ_f1` on datasets with occlusion
    ground truth. The report's `model` is the folder.
    """
    dataset = make_dataset(dataset_name, root)
    folder = Path(predictions).expanduser()
    if not folder.is_dir():
        raise InputError(f"predictions folder {folder} is not a folder; give the folder holding one file per item")
    stereo = dataset.name in STEREO_DATASETS
    fills_gaps = dataset.name in KITTI_DATASETS
    count = _item_count(dataset, max_items)
    names = [record["name"] for record in dataset.samples[:count]]
    paths = dict(zip(names, find_predictions(dataset, folder, count)))

    def read_and_score(item: dict) -> dict:
        path = paths[item["name"]]
        prediction = read_prediction(path, stereo=stereo)
        _check_size(path, prediction, item, dataset.name)
        known = torch.isfinite(prediction).all(dim=1)
        height, width = known.shape[-2:]
        unknown = height * width - int(known.sum())
        if unknown and not fills_gaps:
            raise InputError(
                f"{path} has {unknown} of {height * width} pixels without a finite value (NaN, inf or the format's "
                "unknown marker); a prediction must give every pixel a value (only KITTI's evaluation fills gaps: "
                f"{', '.join(KITTI_DATASETS)})"
            )
        if unknown == height * width:
            raise InputError(
                f"{path} has no pixel with a finite value (NaN, inf or the format's unknown marker everywhere); "
                "give at least one pixel a value (KITTI's evaluation fills the others)"
            )
        if fills_gaps:
            prediction = _fill_kitti_prediction(prediction, stereo)
        # beside its flow: STEM_occ.png next to STEM_flow.EXT (as flowcli estimate writes them), NAME_occ.png next to
        # NAME.EXT (in the item's scene folder for Sintel's alley_1/frame_0002)
        stem = path.stem.removesuffix("_flow")
        mask_path = path.with_name(f"{stem}_occ.png")
        predicted_occlusion = None
        if occlusion and not stereo and item["occlusion"] is not None and mask_path.is_file():
            predicted_occlusion = _read_occlusion_mask(mask_path)
            if predicted_occlusion.shape[-2:] != prediction.shape[-2:]:
                raise InputError(
                    f"{mask_path} is {predicted_occlusion.shape[-1]}x{predicted_occlusion.shape[-2]}, its flow "
                    f"{path} is {prediction.shape[-1]}x{prediction.shape[-2]}; the files do not belong together"
                )
        row = score_item(item, prediction, stereo=stereo, occlusion=predicted_occlusion)
        if fills_gaps:
            row["density"] = _density(known, item["valid"][None].to(known.device)[:, 0])
        return row

    per_item = _score_items(dataset, count, read_and_score, progress)
    # density: the mean over items (KITTI 2012's devkit) and, weighted by valid pixels, density_px (KITTI 2015's)
    mean = mean_metrics(per_item, pixel_weighted=(*PIXEL_WEIGHTED, "density"))
    return EvalReport(dataset=dataset.name, per_item=per_item, mean=mean, model=str(folder))


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
