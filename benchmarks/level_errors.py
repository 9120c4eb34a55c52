"""Where in the coarse-to-fine pass does a checkpoint go wrong? EPE at each decoder level, by band of rows.

For one item of a flow dataset with ground truth, the network runs on the item cropped to a multiple of
its size multiple, and the flow each pyramid level has reached (upsampled to full resolution) is scored
against the ground truth on the non-occluded valid pixels: over the whole frame and over its top, middle
and bottom thirds. A level that has the motion and a finer one that loses it reads differently from a
model that never finds it. Zero flow's EPE is printed as the floor a level must beat. For the two coarsest
levels it also prints how often their cost volume at zero flow peaks at the true motion: whether the
features match at all, before any decoder reads them.

    python benchmarks/level_errors.py flowcli-pwc-synth --dataset sintel-final --item market_5
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from flowcli.data import make_dataset
from flowcli.errors import FlowcliError, InputError
from flowcli.models import load_model
from flowcli.models.pwc import normalize_for_matching
from flowcli.ops.correlation import correlation, displacements

SINTEL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flow" / "sintel"
BANDS = ("all", "top", "middle", "bottom")


def level_report(model, item: dict) -> dict:
    """EPE and mean (u, v) of every decoder level and of the output, per band, on visible valid pixels."""
    multiple = model.config.size_multiple
    h, w = item["image1"].shape[-2:]
    top, height, width = (h % multiple) // 2, h - h % multiple, w - w % multiple
    crop = (..., slice(top, top + height), slice(0, width))
    truth = item["flow"][crop]
    scored = torch.ones(height, width, dtype=torch.bool)
    if item.get("valid") is not None:
        scored &= item["valid"][crop][0].bool()
    if item.get("occlusion") is not None:
        scored &= item["occlusion"][crop][0] < 0.5
    rows = torch.arange(height)[:, None].expand(height, width)
    masks = {
        "all": scored,
        "top": scored & (rows < height // 3),
        "middle": scored & (rows >= height // 3) & (rows < 2 * height // 3),
        "bottom": scored & (rows >= 2 * height // 3),
    }
    with torch.no_grad():
        output = model(item["image1"][crop][None], item["image2"][crop][None])
    flows = {f"level {level}": F.interpolate(flow, size=(height, width), mode="bilinear", align_corners=False)[0]
             * 2**level for level, flow in sorted(output.level_flows.items(), reverse=True)}
    flows["output"] = output.flow[0]
    peaks = cost_volume_peaks(model, item["image1"][crop][None], item["image2"][crop][None], truth, scored, masks)
    report = {"item": item.get("name"), "bands": {}, "cost_volume_peak_within_one_cell": peaks}
    for band, mask in masks.items():
        pixels = int(mask.sum())
        entry = {"pixels": pixels, "truth_uv": None, "zero_flow_epe": None, "levels": {}}
        if pixels:
            entry["truth_uv"] = [round(float(v), 2) for v in truth[:, mask].mean(1)]
            entry["zero_flow_epe"] = round(float(truth.norm(dim=0)[mask].mean()), 2)
            for name, flow in flows.items():
                entry["levels"][name] = {
                    "epe": round(float((flow - truth).norm(dim=0)[mask].mean()), 2),
                    "uv": [round(float(v), 2) for v in flow[:, mask].mean(1)],
                }
        report["bands"][band] = entry
    return report


def cost_volume_peaks(model, image1, image2, truth, scored, masks) -> dict:
    """Per coarse level and band: the share of cells whose cost volume at zero flow (the level's features
    correlated without warping) peaks within one cell of the true motion, over the cells whose true motion the
    volume's window reaches. A level whose features match the scene peaks at the truth whatever its decoder does."""
    cfg = model.config
    with torch.no_grad():
        first, second = model.normalize(image1, image2)
        pyramid = model.pyramid(torch.cat((first, second), dim=0))
    shifts = torch.tensor(displacements(cfg.max_displacement), dtype=torch.float32)  # (dy, dx)
    shares = {}
    for level in cfg.decoded_levels[:2]:  # the finer levels match around the flow from above, not around zero
        features = pyramid[level - 1]
        if cfg.normalize_features:
            features = normalize_for_matching(features)
        with torch.no_grad():
            cost = correlation(features[:1], features[1:], cfg.max_displacement)[0]
        cells = F.avg_pool2d(truth[None], 2**level)[0] / 2**level
        peak = shifts[cost.argmax(0)].permute(2, 0, 1).flip(0)  # (dx, dy) of the best match per cell
        reached = cells.abs().amax(0) <= cfg.max_displacement
        near = (peak - cells).norm(dim=0) < 1
        shares[f"level {level}"] = {}
        for band, mask in masks.items():
            # a cell counts where nine tenths of its pixels are scored in this band
            cell_mask = F.avg_pool2d(mask[None, None].float(), 2**level)[0, 0] > 0.9
            counted = cell_mask & reached
            shares[f"level {level}"][band] = round(float(near[counted].float().mean()), 2) if counted.any() else None
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", nargs="+", help="checkpoint names or paths")
    parser.add_argument("--dataset", default="sintel-final", help="a `flowcli eval` dataset name")
    parser.add_argument("--root", type=Path, default=SINTEL)
    parser.add_argument("--item", default="market_5", help="score the items whose name contains this")
    parser.add_argument("--json", type=Path, help="also write the reports here")
    args = parser.parse_args()
    if args.json:  # made now: the report is written after the whole run
        args.json.parent.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    items = [item for item in make_dataset(args.dataset, args.root) if args.item in str(item.get("name", ""))]
    if not items:
        raise InputError(f"no {args.dataset} item under {args.root} has {args.item!r} in its name; "
                         "pass --item with part of an item name (`flowcli eval` lists them)")
    machine = platform.processor() or platform.machine()
    print(f"# {args.dataset} under {args.root}, {machine}, torch {torch.__version__}")
    reports = []
    for weights in args.weights:
        model = load_model(weights).eval()
        for item in items:
            report = {"weights": weights, **level_report(model, item)}
            reports.append(report)
            levels = list(report["bands"]["all"]["levels"])
            print(f"\n{weights}, {report['item']}: EPE (mean u, v) on non-occluded valid pixels")
            print("| rows | pixels | true u, v | zero flow | " + " | ".join(levels) + " |")
            print("|---" * (4 + len(levels)) + "|")
            for band, entry in report["bands"].items():
                if not entry["pixels"]:
                    print(f"| {band} | 0 | - | - |" + " - |" * len(levels))
                    continue
                cells = [f"{v['epe']:.1f} ({v['uv'][0]:+.0f}, {v['uv'][1]:+.0f})" for v in entry["levels"].values()]
                truth = entry["truth_uv"]
                print(f"| {band} | {entry['pixels']} | {truth[0]:+.1f}, {truth[1]:+.1f} | "
                      f"{entry['zero_flow_epe']:.1f} | " + " | ".join(cells) + " |")
            for level, shares in report["cost_volume_peak_within_one_cell"].items():
                listed = ", ".join(f"{band} {'-' if v is None else f'{100 * v:.0f} %'}" for band, v in shares.items())
                print(f"{level} cost volume at zero flow peaks within one cell of the truth: {listed}")
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2))


if __name__ == "__main__":
    try:
        main()
    except FlowcliError as error:  # no dataset layout under --root, an unknown model: one line, no traceback
        sys.exit(f"error: {error}")
