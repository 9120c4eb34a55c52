"""Does a shadow that moves unlike the ground drag the flow with it? EPE on real frames under a moving shadow.

On Sintel's market_5 the creature's shadow crosses the ground between the frames, by about (+100, +20) px
while the ground moves (-30, -23), and every decoder level predicts the ground moving right, between the two.
This script pans whole real frames by (-30, -30) px (an exact affine pair, as scale_change.py makes), then
darkens both frames by a soft elliptic shadow (440x140 px, 60 % of the light taken, centred at (250, 330)):
none, still, or moving by (+80, +40) or (+150, +60) px between the frames. The flow is the pan's in every
case. It reports, per checkpoint, the EPE over the bottom third of the frame, where the shadow falls.

    python benchmarks/cast_shadow.py flowcli-pwc-synth runs/flowcli-pwc-synth/stage19-shadows/ema.safetensors
"""

from __future__ import annotations

import platform
import runpy
import sys
from pathlib import Path

import torch

from flowcli.errors import FlowcliError
from flowcli.ops.warp import pixel_grid

HERE = Path(__file__).resolve().parent
SHADOWS = {"no shadow": None, "still": (0.0, 0.0), "moving (+80, +40)": (80.0, 40.0),
           "moving (+150, +60)": (150.0, 60.0)}  # fmt: skip


def shadow_light(h: int, w: int, shift: tuple[float, float]) -> torch.Tensor:
    """[1, H, W] share of the light left under the ellipse centred at (250, 330) + shift."""
    x, y = pixel_grid(1, h, w, "cpu", torch.float32)[0]
    inside = ((x - 250 - shift[0]) / 220) ** 2 + ((y - 330 - shift[1]) / 70) ** 2
    return (1 - 0.6 * torch.sigmoid((1 - inside) / 0.15))[None]


def main() -> None:
    scale_change = runpy.run_path(str(HERE / "scale_change.py"))
    models, frames = scale_change["checkpoints_and_frames"](__doc__)
    level_report = runpy.run_path(str(HERE / "level_errors.py"))["level_report"]
    label = runpy.run_path(str(HERE / "exposure_range.py"))["label"]  # a checkpoint's name in a table
    print(f"# {platform.processor() or platform.machine()} | torch {torch.__version__} | whole frames 436x1024 "
          "panned by (-30, -30); EPE over the bottom third")  # fmt: skip
    columns = " | ".join(label(n) for n in models)
    print(f"| frame | shadow | {columns} |")
    print("|---|---" + "|---" * len(models) + "|")
    for frame_name in ("market_5 clean", "alley_1 clean", "street frame"):
        pan = scale_change["affine_pair"](frames[frame_name], 1.0, 1.0, -30.0, -30.0)
        h, w = pan["image1"].shape[-2:]
        for shadow_name, shift in SHADOWS.items():
            item = dict(pan)
            if shift is not None:
                item["image1"] = pan["image1"] * shadow_light(h, w, (0.0, 0.0))
                item["image2"] = pan["image2"] * shadow_light(h, w, shift)
            epes = [level_report(m, item)["bands"]["bottom"]["levels"]["output"]["epe"] for m in models.values()]
            row = [f"{epe:.2f}" for epe in epes]
            print(f"| {frame_name} | {shadow_name} | " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    try:
        main()
    except FlowcliError as error:  # an unknown model, no data: one line, no traceback
        sys.exit(f"error: {error}")
