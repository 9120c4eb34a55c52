"""How much zoom between the frames can a checkpoint follow? EPE on real frames scaled about a focus.

Sintel's market_5 ground shrinks between its two frames by an eighth across the image and a quarter down it
(its ground truth over the bottom third: du/dx = -0.125, dv/dy = -0.24), and no checkpoint finds its motion.
This script takes whole real frames as frame 1 and renders frame 2 by one exact affine map about market_5's
focus of contraction, (256, 245): a pure translation, market_5's zoom, half of it, and its inverse (an
expansion). A frame is blurred by a [1, 2, 1] kernel before it is shrunk, as a camera's pixels would
average it. It reports, per checkpoint, the EPE over the bottom third of the frame (where market_5's ground
is) and the share of the bottom third's cells where the level-5 cost volume at zero flow peaks within one
cell of the truth (level_errors.py). Frame-2 pixels that come from outside frame 1 are reflections, so
frame-1 pixels near the borders see some made-up texture; every checkpoint sees the same pairs.

    python benchmarks/scale_change.py flowcli-pwc-synth runs/flowcli-pwc-synth/stage18-zoom/ema.safetensors
"""

from __future__ import annotations

import argparse
import platform
import runpy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from flowcli.errors import FlowcliError
from flowcli.io.media import read_image
from flowcli.models import load_model
from flowcli.ops.warp import normalized_grid, pixel_grid

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
FOCUS = (256.0, 245.0)  # market_5's focus of contraction on its bottom third, from its ground truth
MOTIONS = {  # name: (scale x, scale y, translation x, translation y)
    "translate (-30, -30)": (1.0, 1.0, -30.0, -30.0),
    "zoom x0.875 / x0.76 (market_5's)": (0.875, 0.76, 0.0, 0.0),
    "zoom x0.94 / x0.88 (half)": (0.94, 0.88, 0.0, 0.0),
    "zoom x1.14 / x1.32 (inverse)": (1 / 0.875, 1 / 0.76, 0.0, 0.0),
}


def textures(data: Path) -> dict[str, torch.Tensor]:
    sintel = data / "flow" / "sintel" / "training"
    street = sorted((data / "footage" / "street_frames").iterdir())
    frames = {
        "market_5 clean": read_image(sintel / "clean" / "market_5" / "frame_0002.png"),
        "market_5 final": read_image(sintel / "final" / "market_5" / "frame_0002.png"),
        "alley_1 clean": read_image(sintel / "clean" / "alley_1" / "frame_0002.png"),
    }
    frames["street frame"] = F.interpolate(read_image(street[0])[None], size=(436, 1024), mode="area")[0]
    return frames


def affine_pair(frame: torch.Tensor, scale_x: float, scale_y: float, shift_x: float, shift_y: float) -> dict:
    """Frame 1 is `frame`; its pixel p moves to focus + S (p - focus) + t, and frame 2 is rendered to match."""
    _, h, w = frame.shape
    x, y = pixel_grid(1, h, w, "cpu", torch.float32)[0]
    cx, cy = FOCUS
    flow = torch.stack([cx + scale_x * (x - cx) + shift_x - x, cy + scale_y * (y - cy) + shift_y - y])
    source = frame
    if min(scale_x, scale_y) < 0.95:
        kernel = torch.tensor([0.25, 0.5, 0.25])
        kernel = (kernel[:, None] * kernel[None]).expand(3, 1, 3, 3)
        source = F.conv2d(F.pad(frame[None], (1, 1, 1, 1), mode="replicate"), kernel, groups=3)[0]
    back = torch.stack([cx + (x - shift_x - cx) / scale_x, cy + (y - shift_y - cy) / scale_y])
    image2 = F.grid_sample(source[None], normalized_grid(back[None]), mode="bilinear", padding_mode="reflection",
                           align_corners=True)[0]  # fmt: skip
    return {"image1": frame, "image2": image2.clamp(0, 1), "flow": flow, "valid": None, "occlusion": None}


def checkpoints_and_frames(description: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """The command line this script shares with cast_shadow.py: the checkpoints, and the real frames of --data."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", nargs="+", help="registry names or checkpoint files")
    parser.add_argument("--data", type=Path, default=DATA, help="the shared data folder (flow/sintel, footage/)")
    args = parser.parse_args()
    needed = [args.data / "flow" / "sintel" / "training" / "clean" / "market_5",
              args.data / "footage" / "street_frames"]  # fmt: skip
    if not all(folder.is_dir() for folder in needed):
        raise FlowcliError(f"{args.data} has no flow/sintel/training/ and footage/street_frames/; "
                           "pass --data ../shared/data")  # fmt: skip
    torch.set_num_threads(2)
    models = {name: load_model(name).eval() for name in args.weights}  # first: a wrong name fails before reading
    return models, textures(args.data)


def main() -> None:
    models, frames = checkpoints_and_frames(__doc__)
    level_report = runpy.run_path(str(HERE / "level_errors.py"))["level_report"]
    label = runpy.run_path(str(HERE / "exposure_range.py"))["label"]  # a checkpoint's name in a table
    print(f"# {platform.processor() or platform.machine()} | torch {torch.__version__} | whole frames 436x1024, "
          f"focus {FOCUS}; bottom third of the frame")  # fmt: skip
    columns = " | ".join(f"{label(n)}: EPE / level 5 at truth" for n in models)
    print(f"| frame | motion | zero-flow EPE | {columns} |")
    print("|---|---|---" + "|---" * len(models) + "|")
    for frame_name, frame in frames.items():
        for motion_name, motion in MOTIONS.items():
            item = affine_pair(frame, *motion)
            row, zero = [], None
            for model in models.values():
                bottom = level_report(model, item)
                zero = bottom["bands"]["bottom"]["zero_flow_epe"]
                share = bottom["cost_volume_peak_within_one_cell"]["level 5"]["bottom"] or 0.0
                row.append(f"{bottom['bands']['bottom']['levels']['output']['epe']:.2f} / {100 * share:.0f} %")
            print(f"| {frame_name} | {motion_name} | {zero:.1f} | " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    try:
        main()
    except FlowcliError as error:  # an unknown model, no data: one line, no traceback
        sys.exit(f"error: {error}")
