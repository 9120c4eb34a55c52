"""Can photometric self-supervision reach the ground truth where a checkpoint is wrong? Three probes on one pair.

`flowcli adapt` learns from a census photometric loss. Where a model is far off (Sintel market_5's ground,
the bottom third of the frame), adapting can only help if (1) the loss prefers the ground truth over the
model's flow and (2) something can get from the model's flow to it. On the pixels the ground truth marks
visible, this script measures:

1. the census distance (7x7, as in the adapt loss) of frame 2 warped onto frame 1 by the ground truth and
   by the model's flow: does the loss prefer the truth?
2. gradient descent on a free flow field (no network; one vector per 4x4 block, started at the model's
   flow) on the multi-scale census loss with second-order smoothness, as adapt's photometric stage uses:
   does following the loss's gradient reach the truth?
3. exhaustive block matching of the census signatures at 1/4 resolution (windowed cost, a search range
   that holds every ground-truth vector): does a wide search find the truth?

    python benchmarks/photometric_landscape.py                        # market_5, clean and final
    python benchmarks/photometric_landscape.py --scene alley_1 --steps 50
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from flowcli.adapt.losses import census_distance, census_transform, smoothness
from flowcli.data.datasets import Sintel
from flowcli.errors import FlowcliError
from flowcli.inference import estimate_flow
from flowcli.models import load_model
from flowcli.ops.warp import backward_warp

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BLOCK = 4  # the free field's and the search's grid: one vector per 4x4 pixels, the model's output resolution


def census_cost(image1: torch.Tensor, image2: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """[1,1,H,W] census distance between frame 1 and frame 2 warped onto it by `flow`."""
    return census_distance(image1, backward_warp(image2, flow))


def descend(image1, image2, start, visible, *, steps: int, scales=(0, 2, 3, 4), lr: float = 0.5) -> torch.Tensor:
    """Adam on a free [1,2,H/4,W/4] flow field: multi-scale census on visible pixels + 0.5 x 2nd-order smoothness."""
    size = image1.shape[-2:]
    field = F.avg_pool2d(start, BLOCK).clone().requires_grad_(True)
    optimiser = torch.optim.Adam([field], lr=lr)
    for _ in range(steps):
        flow = F.interpolate(field, size=size, mode="bilinear", align_corners=False)
        loss = flow.new_zeros(())
        for scale in scales:
            factor = 2**scale
            if factor == 1:
                i1, i2, f, v = image1, image2, flow, visible
            else:
                i1, i2, v = (F.interpolate(x, scale_factor=1 / factor, mode="area") for x in (image1, image2, visible))
                f = F.interpolate(flow, size=i1.shape[-2:], mode="area") / factor
            loss = loss + (census_cost(i1, i2, f) * v).sum() / v.sum().clamp_min(1) + 0.5 * smoothness(f, i1, 2)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        return F.interpolate(field, size=size, mode="bilinear", align_corners=False)


def block_match(image1, image2, reach_x: int, reach_y: int, window: int = 7) -> torch.Tensor:
    """Winner-take-all census matching at 1/4 resolution, +-reach full-resolution pixels, window x window cells."""
    small1, small2 = (F.interpolate(x, scale_factor=1 / BLOCK, mode="area") for x in (image1, image2))
    sig1, sig2 = census_transform(small1), census_transform(small2)
    rx, ry = -(-reach_x // BLOCK), -(-reach_y // BLOCK)
    h, w = sig1.shape[-2:]
    padded = F.pad(sig2, (rx, rx, ry, ry), mode="replicate")
    best = sig1.new_full((1, 1, h, w), float("inf"))
    vector = sig1.new_zeros(1, 2, h, w)
    for dy in range(-ry, ry + 1):
        for dx in range(-rx, rx + 1):
            diff = (sig1 - padded[..., ry + dy : ry + dy + h, rx + dx : rx + dx + w]) ** 2
            distance = (diff / (0.1 + diff)).mean(1, keepdim=True)
            cost = F.avg_pool2d(distance, window, 1, window // 2, count_include_pad=False)
            better = cost < best
            best = torch.where(better, cost, best)
            vector = torch.where(better, vector.new_tensor([float(dx), float(dy)]).view(1, 2, 1, 1), vector)
    return F.interpolate(vector * BLOCK, size=image1.shape[-2:], mode="bilinear", align_corners=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="flowcli-pwc-synth", help="registry name or checkpoint file")
    parser.add_argument("--data", type=Path, default=DATA, help="holds flow/sintel (the default: ../shared/data)")
    parser.add_argument("--scene", default="market_5", help="a Sintel scene with ground truth under --data")
    parser.add_argument("--passes", default="clean,final")
    parser.add_argument("--steps", type=int, default=300, help="gradient steps of probe 2")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = load_model(args.weights).eval()
    machine = f"{platform.node()} | torch {torch.__version__}"
    print(f"# {machine} | {args.weights} | Sintel {args.scene} | {args.steps} descent steps")
    print("| pass | region | census: truth / model | EPE: model | after descent | block matching |")
    print("|---|---|---|---|---|---|")
    for dstype in args.passes.split(","):
        dataset = Sintel(args.data / "flow" / "sintel", dstype=dstype.strip())
        items = [i for i, record in enumerate(dataset.samples) if record["name"].split("/")[0] == args.scene]
        if not items:
            raise FlowcliError(f"no Sintel scene {args.scene!r} with ground truth under {args.data}; pick one of "
                               + ", ".join(sorted({r["name"].split("/")[0] for r in dataset.samples})))
        item = dataset[items[0]]
        image1, image2, truth = item["image1"][None], item["image2"][None], item["flow"][None]
        visible = item["valid"][None].float()
        if item["occlusion"] is not None:
            visible = visible * (1 - item["occlusion"][None])
        started = time.perf_counter()
        model_flow = estimate_flow(model, image1, image2).forward
        descended = descend(image1, image2, model_flow, visible, steps=args.steps)
        reach_x = int(truth[:, 0].abs().max().ceil()) + BLOCK
        reach_y = int(truth[:, 1].abs().max().ceil()) + BLOCK
        matched = block_match(image1, image2, reach_x, reach_y)
        with torch.no_grad():
            cost_truth, cost_model = census_cost(image1, image2, truth), census_cost(image1, image2, model_flow)
        height = image1.shape[-2]
        bottom = torch.zeros_like(visible, dtype=torch.bool)
        bottom[..., 2 * height // 3 :, :] = True
        for region, mask in (("all visible", visible > 0), ("bottom third", (visible > 0) & bottom)):
            epe = [float((f - truth).norm(dim=1, keepdim=True)[mask].mean()) for f in (model_flow, descended, matched)]
            print(
                f"| {dstype} | {region} | {float(cost_truth[mask].mean()):.3f} / {float(cost_model[mask].mean()):.3f} "
                f"| {epe[0]:.2f} | {epe[1]:.2f} | {epe[2]:.2f} |",
                flush=True,
            )
        print(f"# {dstype}: {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    try:
        main()
    except FlowcliError as error:  # no Sintel data under --data, an unknown model: one line, no traceback
        sys.exit(f"error: {error}")
