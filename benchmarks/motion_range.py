"""How large a motion can a checkpoint follow? EPE on pure translations of a real frame.

Two crops of one Sintel frame, offset by (dx, dy), form a pair whose exact flow is that offset everywhere.
For each magnitude the offset is taken in 8 directions and the mean EPE reported per checkpoint, so a
table row shows where a model stops following camera motion (a prior that the training data's largest
background motion sets). Pure translation is the easiest large motion there is: a model that fails here
fails on a real camera pan of that size too.

    python benchmarks/motion_range.py flowcli-pwc-synth runs/flowcli-pwc-synth/stage9-large-clean/last.safetensors
    python benchmarks/motion_range.py flowcli-pwc-synth --scale 0.5   # what --scale 0.5 buys on fast pans
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
from pathlib import Path

import torch

from flowcli.errors import FlowcliError
from flowcli.inference import estimate_flow
from flowcli.io.media import read_image
from flowcli.models import load_model

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CROP_H, CROP_W = 256, 640


def translated_pair(image: torch.Tensor, dx: int, dy: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops whose flow is (dx, dy): a point at q is at q - o1 in crop 1 and q - o2 in crop 2, so flow = o1 - o2."""
    _, h, w = image.shape
    y_span, x_span = h - CROP_H, w - CROP_W
    if abs(dy) > y_span or abs(dx) > x_span:
        raise ValueError(f"offset ({dx}, {dy}) does not fit a {CROP_H}x{CROP_W} crop of a {h}x{w} frame")
    y1, x1 = (y_span + dy) // 2, (x_span + dx) // 2
    y2, x2 = y1 - dy, x1 - dx
    return image[:, y1 : y1 + CROP_H, x1 : x1 + CROP_W], image[:, y2 : y2 + CROP_H, x2 : x2 + CROP_W]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", nargs="+", help="registry names or checkpoint files")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--magnitudes", default="8,16,32,48,64,80,96,128", help="comma-separated, px")
    parser.add_argument("--scale", type=float, default=1.0, help="as `flowcli estimate --scale` (0.5: half size)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    image = read_image(args.data / "flow/sintel/training/clean/market_5/frame_0002.png")
    magnitudes = [float(m) for m in args.magnitudes.split(",")]
    models = {name: load_model(name) for name in args.weights}
    print(
        f"# {platform.node()} | torch {torch.__version__} | {CROP_H}x{CROP_W} crops of market_5 frame 2, "
        f"8 directions, scale {args.scale:g}"
    )
    print("| motion (px) | " + " | ".join(Path(n).parent.name if "/" in n else n for n in models) + " |")
    print("|---" * (len(models) + 1) + "|")
    with torch.inference_mode():
        for magnitude in magnitudes:
            row = []
            for model in models.values():
                errors = []
                for k in range(8):
                    angle = k * math.pi / 4
                    dx, dy = round(magnitude * math.cos(angle)), round(magnitude * math.sin(angle))
                    image1, image2 = translated_pair(image, dx, dy)
                    flow = estimate_flow(model, image1, image2, scale=args.scale).forward[0]
                    truth = torch.tensor([dx, dy], dtype=flow.dtype)[:, None, None]
                    errors.append(float((flow - truth).norm(dim=0).mean()))
                row.append(f"{sum(errors) / len(errors):.2f}")
            print(f"| {magnitude:g} | " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    try:
        main()
    except FlowcliError as error:  # no Sintel frame under --data, an unknown model: one line, no traceback
        sys.exit(f"error: {error}")
