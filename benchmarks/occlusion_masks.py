"""Which pixels does each occlusion estimate hide from the photometric loss of `flowcli adapt`?

For every labeled item of Sintel (both passes) and KITTI 2015 in ../shared/data, the model's forward
and backward flows give two occlusion estimates: forward-backward consistency (`--loss occlusion=fb`)
and the range map of the backward flow (`--loss occlusion=range`). For each it reports

- `all`: the fraction of the frame marked occluded;
- `wrong`: the fraction of the wrong-but-visible pixels (EPE > 3 px where the GT says visible) it
  marks occluded: these are the pixels adaptation should correct, and a marked pixel gets no
  photometric gradient;
- `F1`: its F-score against the GT occlusion (KITTI: pixels with flow in flow_occ but not in flow_noc).

plus the census distance (flowcli.adapt.losses) of frame 2 warped by the GT flow and by the model's
flow on the wrong-but-visible pixels: where the GT's is lower, the photometric term prefers the truth
there, if it is allowed to see those pixels.

    python benchmarks/occlusion_masks.py [--weights NAME_OR_PATH] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flowcli.errors import FlowcliError  # noqa: E402 (after the sys.path insert)

DEFAULT_DATA = REPO.parent / "shared" / "data"
DATASETS = (("sintel-clean", "flow/sintel"), ("sintel-final", "flow/sintel"), ("kitti2015", "flow/kitti2015"))


def measure(model, item) -> dict:
    import torch

    from flowcli.adapt.losses import census_distance, fb_occlusion, range_occlusion
    from flowcli.inference import estimate_flow
    from flowcli.metrics import occlusion_f1
    from flowcli.ops.warp import backward_warp

    image1, image2 = item["image1"][None], item["image2"][None]
    gt, valid = item["flow"][None], item["valid"][None].bool()
    truth = item["occlusion"][None].bool() if "occlusion" in item else torch.zeros_like(valid)
    result = estimate_flow(model, image1, image2, backward=True)
    forward, backward = result.forward.float(), result.backward.float()
    wrong = ((forward - gt).norm(dim=1, keepdim=True) > 3) & valid & ~truth
    row = {
        "item": item["name"],
        "epe": float((forward - gt).norm(dim=1, keepdim=True)[valid].mean()),
        "wrong_visible": float(wrong.sum() / valid.sum()),
        "census_gt": float(census_distance(image1, backward_warp(image2, gt))[wrong].mean()),
        "census_model": float(census_distance(image1, backward_warp(image2, forward))[wrong].mean()),
    }
    for name, estimate in (("fb", fb_occlusion), ("range", range_occlusion)):
        occluded = estimate(forward, backward).bool()
        row[name] = {
            "all": float(occluded.float().mean()),
            "wrong": float(occluded[wrong].float().mean()) if wrong.any() else None,
            "f1": occlusion_f1(occluded.float(), truth.float(), valid) if truth.any() else None,
        }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default="flowcli-pwc-synth")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    args = parser.parse_args()
    if args.json:  # made now: the report is written after the whole run
        args.json.parent.mkdir(parents=True, exist_ok=True)

    import torch

    from flowcli.data import make_dataset
    from flowcli.models import load_model

    torch.set_grad_enabled(False)
    datasets = [(name, make_dataset(name, str(args.data / root))) for name, root in DATASETS]  # layout checked
    model = load_model(args.weights).eval()
    rows = []
    columns = "fb: all / wrong / F1 | range: all / wrong / F1"
    print(f"| dataset | item | EPE | wrong & visible | {columns} | census GT / model |")
    print("|---|---|---:|---:|---|---|---|")

    def fmt(v):
        return "-" if v is None else f"{v:.3f}"

    for dataset, items in datasets:
        for item in items:
            row = {"dataset": dataset, **measure(model, item)}
            rows.append(row)
            masks = [" / ".join(fmt(row[m][k]) for k in ("all", "wrong", "f1")) for m in ("fb", "range")]
            print(
                f"| {dataset} | {row['item'].split('/')[0]} | {row['epe']:.2f} | {row['wrong_visible']:.3f} | "
                f"{masks[0]} | {masks[1]} | {row['census_gt']:.3f} / {row['census_model']:.3f} |",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps({"weights": args.weights, "rows": rows}, indent=1))


if __name__ == "__main__":
    try:
        main()
    except FlowcliError as error:  # no Sintel / KITTI layout under --data, an unknown model: one line, no traceback
        sys.exit(f"error: {error}")
