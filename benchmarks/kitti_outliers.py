"""Where are a checkpoint's KITTI 2015 outliers? Fl-all by ground-truth motion, and the fast pixels by level.

Fl-all counts the valid pixels whose endpoint error is above 3 px and 5 % of the true motion. This script
splits that count by the length of the true motion, and for the pixels moving 30 px or more (on the pair
in `../shared/data`: the silver SUV driving across the frame, about 41 px to the right) it prints the mean
flow that each pyramid level of the decoder has reached, upsampled to full resolution. A level that has
the motion and a finer one that loses it reads differently from a model that never finds it.

    python benchmarks/kitti_outliers.py flowcli-pwc-synth runs/adapt/kitti207-fb.safetensors
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
from flowcli.errors import FlowcliError
from flowcli.inference import estimate_flow
from flowcli.models import load_model

KITTI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flow" / "kitti2015"
MOTION_BANDS = [(0, 10), (10, 30), (30, 1e9)]
FAST = 30.0


def outlier_report(weights: str, item: dict) -> dict:
    model = load_model(weights).eval()
    image1, image2 = item["image1"][None], item["image2"][None]
    truth, valid = item["flow"][None], item["valid"][None].bool()
    with torch.no_grad():
        flow = estimate_flow(model, image1, image2).forward.float()
    error = (flow - truth).norm(dim=1, keepdim=True)
    motion = truth.norm(dim=1, keepdim=True)
    outlier = (error > 3) & (error > 0.05 * motion) & valid
    report = {"weights": weights, "fl_all": float(outlier.sum() / valid.sum()), "bands": []}
    for low, high in MOTION_BANDS:
        band = valid & (motion >= low) & (motion < high)
        report["bands"].append({
            "motion": f"{low:g}+" if high > 1e8 else f"{low:g}-{high:g}",
            "pixels": int(band.sum()),
            "outlier_share": float(outlier[band].float().mean()) if band.any() else None,
            "share_of_fl_all": float((outlier & band).sum() / valid.sum()),
        })
    # Decoder levels: run the network on a crop whose sides are multiples of its size multiple.
    multiple = model.config.size_multiple
    h, w = image1.shape[-2:]
    top, height, width = (h % multiple) // 2, h - h % multiple, w - w % multiple
    crop = (..., slice(top, top + height), slice(0, width))
    fast = (valid & (motion >= FAST))[crop][0, 0]
    report["fast_pixels"] = int(fast.sum())
    report["fast_truth"] = [round(float(v), 2) for v in truth[crop][0][:, fast].mean(1)]
    with torch.no_grad():
        output = model(image1[crop], image2[crop])
    report["fast_by_level"] = {}
    for level, level_flow in sorted(output.level_flows.items(), reverse=True):
        full = F.interpolate(level_flow, size=(height, width), mode="bilinear", align_corners=False) * 2**level
        report["fast_by_level"][level] = [round(float(v), 2) for v in full[0][:, fast].mean(1)]
    report["fast_output"] = [round(float(v), 2) for v in output.flow[0][:, fast].mean(1)]
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", nargs="+", help="checkpoint names or paths")
    parser.add_argument("--root", type=Path, default=KITTI)
    parser.add_argument("--json", type=Path, help="also write the reports here")
    args = parser.parse_args()
    if args.json:  # made now: the report is written after the whole run
        args.json.parent.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    item = next(iter(make_dataset("kitti2015", args.root)))
    machine = platform.processor() or platform.machine()
    print(f"# KITTI 2015 item {item.get('name', 0)}, {machine}, torch {torch.__version__}")
    reports = []
    for weights in args.weights:
        report = outlier_report(weights, item)
        reports.append(report)
        print(f"\n{weights}: Fl-all {100 * report['fl_all']:.2f} %")
        print("| true motion (px) | pixels | outlier share | share of Fl-all |")
        print("|---|---|---|---|")
        for band in report["bands"]:
            share = "-" if band["outlier_share"] is None else f"{100 * band['outlier_share']:.1f} %"
            print(f"| {band['motion']} | {band['pixels']} | {share} | {100 * band['share_of_fl_all']:.2f} % |")
        levels = ", ".join(f"level {k}: {v[0]:+.1f}" for k, v in report["fast_by_level"].items())
        print(f"pixels moving >= {FAST:g} px ({report['fast_pixels']}): true u {report['fast_truth'][0]:+.1f}; "
              f"mean u reached by {levels}; output {report['fast_output'][0]:+.1f}")
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2))


if __name__ == "__main__":
    try:
        main()
    except FlowcliError as error:  # no KITTI 2015 layout under --root, an unknown model: one line, no traceback
        sys.exit(f"error: {error}")
