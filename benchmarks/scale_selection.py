"""Does running the model at several input scales and picking per pixel help? EPE per scale, oracle, selection.

For each item the model runs at each `--scales` factor (`estimate_flow(..., scale=s)`). Reported per item and
as dataset means: the EPE of each scale alone, the per-pixel oracle (the best scale at every pixel, chosen
with the ground truth: an upper bound on any fusion of these candidates), and a label-free selection that
picks, at each pixel, the scale whose flow has the lowest full-resolution census error
(`flowcli.adapt.losses.census_distance`) averaged over a `--windows` box around it; a match that leaves
the frame counts as the worst error. It answers whether test-time resizing could stand in for training.
Running every scale costs the sum of the scales squared times one pass (1 + 0.25 + 4 = 5.25 for the default).

    python benchmarks/scale_selection.py                       # the default model, Sintel, Chairs, KITTI-15
    python benchmarks/scale_selection.py --weights FILE --scales 1,2 --windows 31
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from flowcli.adapt.losses import census_distance
from flowcli.data import make_dataset
from flowcli.errors import FlowcliError
from flowcli.inference import estimate_flow
from flowcli.models import load_model
from flowcli.ops.warp import backward_warp, out_of_frame

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATASETS = {
    "sintel-clean": "flow/sintel",
    "sintel-final": "flow/sintel",
    "chairs": "flow/chairs",
    "kitti2015": "flow/kitti2015",
}


def census_error(image1: torch.Tensor, image2: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """[1,1,H,W] census distance of frame 2 warped by `flow` onto frame 1, plus 1 where the match leaves the frame."""
    warped = backward_warp(image2, flow, padding_mode="border")
    return census_distance(image1, warped) + out_of_frame(flow).float()


def score_item(model, item: dict, scales: list[float], windows: list[int]) -> dict:
    image1, image2 = item["image1"][None], item["image2"][None]
    gt, valid = item["flow"][None], item["valid"][None, 0].bool()
    flows = []
    with torch.inference_mode():
        for scale in scales:
            flows.append(estimate_flow(model, image1, image2, scale=scale).forward.float())
        endpoint = torch.stack([(flow - gt).norm(dim=1) for flow in flows])  # [S, 1, H, W]
        errors = [census_error(image1, image2, flow) for flow in flows]
        selected = {}
        for window in windows:
            pooled = torch.stack([F.avg_pool2d(e, window, 1, window // 2, count_include_pad=False) for e in errors])
            choice = pooled.argmin(0)[:, 0]  # [1, H, W]
            selected[window] = float(torch.gather(endpoint, 0, choice[None]).squeeze(0)[valid].mean())
    return {
        "name": item["name"],
        "epe": [float(e[valid].mean()) for e in endpoint],
        "oracle": float(endpoint.min(0).values[valid].mean()),
        "selected": selected,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="registry name or checkpoint (default: the bundled model)")
    parser.add_argument("--data", type=Path, default=DATA, help="folder holding flow/sintel, flow/chairs, ...")
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated, from " + ", ".join(DATASETS))
    parser.add_argument("--scales", default="1,0.5,2", help="input scale factors, comma-separated")
    parser.add_argument("--windows", default="15,31,63", help="census averaging windows (px), comma-separated")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scales = [float(s) for s in args.scales.split(",")]
    windows = [int(w) for w in args.windows.split(",")]
    names = [name.strip() for name in args.datasets.split(",") if name.strip()]
    unknown = [name for name in names if name not in DATASETS]
    if unknown:
        parser.error(f"unknown dataset {unknown[0]!r}; choose from {', '.join(DATASETS)}")
    datasets = {name: make_dataset(name, args.data / DATASETS[name]) for name in names}  # layouts checked first
    model = load_model(args.weights).eval()
    print(f"# {args.weights or 'flowcli-pwc-synth'} on {platform.machine()}, {args.threads} threads, scales {scales}")
    header = [f"scale {s:g}" for s in scales] + ["oracle"] + [f"select {w}px" for w in windows]
    print("| item | " + " | ".join(header) + " |")
    print("|---" * (len(header) + 1) + "|")
    for name, dataset in datasets.items():
        rows = [score_item(model, dataset[i], scales, windows) for i in range(len(dataset))]
        for row in rows + [None]:
            if row is None:  # the dataset mean
                row = {
                    "name": f"**{name} mean**",
                    "epe": [statistics.mean(r["epe"][j] for r in rows) for j in range(len(scales))],
                    "oracle": statistics.mean(r["oracle"] for r in rows),
                    "selected": {w: statistics.mean(r["selected"][w] for r in rows) for w in windows},
                }
            else:
                row["name"] = f"{name} {row['name']}"
            cells = row["epe"] + [row["oracle"]] + [row["selected"][w] for w in windows]
            print(f"| {row['name']} | " + " | ".join(f"{c:.2f}" for c in cells) + " |", flush=True)


if __name__ == "__main__":
    try:
        main()
    except FlowcliError as error:  # no dataset layout under --data, an unknown model: one line, no traceback
        sys.exit(f"error: {error}")
