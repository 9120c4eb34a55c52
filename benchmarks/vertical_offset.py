"""How far off rectification may a stereo pair be before its disparity suffers, and what median vertical flow
(`vertical_median`, the number `flowcli stereo` warns on) does a rectified pair show?

Middlebury (tsukuba, venus, motorcycle, with ground truth): the right image is shifted down by 0-8 px (rows rolled,
then 8 rows cropped off top and bottom so no wrapped row is compared) and each shift reports the median vertical
flow and the disparity EPE against disp0GT.pfm. OAK-D (`footage/oakd_stereo`, 12 rectified pairs, no ground
truth): each pair's median vertical flow as it is, the model's own vertical error on rectified footage.

    python benchmarks/vertical_offset.py                     # the default model; --weights NAME_OR_PATH
"""

from __future__ import annotations

import argparse
import platform
import sys
import warnings
from pathlib import Path

import torch

from flowcli.errors import FlowcliError
from flowcli.io.flow_formats import read_pfm
from flowcli.io.media import read_image
from flowcli.models import load_model
from flowcli.stereo import DEFAULT_MAX_VERTICAL, estimate_disparity

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SCENES = ("tsukuba", "venus", "motorcycle")
SHIFTS = (0, 1, 2, 3, 4, 6, 8)
CROP = 8  # rows cut from top and bottom: at least the largest shift


def shifted_scene(model, scene: Path, shift: int) -> tuple[float, float]:
    """(median vertical flow px, disparity EPE px) of the scene with its right image `shift` rows down."""
    left, right = read_image(scene / "im0.png")[None], read_image(scene / "im1.png")[None]
    right = torch.roll(right, shifts=shift, dims=2)
    truth = torch.from_numpy(read_pfm(scene / "disp0GT.pfm").copy()).float()
    truth = truth.reshape(truth.shape[:2])[CROP:-CROP]
    result = estimate_disparity(model, left[..., CROP:-CROP, :], right[..., CROP:-CROP, :], max_vertical=None)
    valid = torch.isfinite(truth)
    return result.vertical_median[0], (result.disparity[0, 0] - truth)[valid].abs().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="checkpoint name or path (default: the bundled default)")
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    oakd = args.data / "footage" / "oakd_stereo"
    if not any(oakd.glob("*_left.png")):  # checked first: the Middlebury half takes a minute or two
        sys.exit(f"error: no OAK-D pairs (*_left.png, *_right.png) in {oakd}; pass --data (the shared data folder)")
    warnings.simplefilter("ignore")
    model = load_model(args.weights) if args.weights else load_model()
    print(f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"warning threshold today {DEFAULT_MAX_VERTICAL:g} px\n")

    print("| Middlebury scene | " + " | ".join(f"shift {s} px" for s in SHIFTS) + " |")
    print("|---|" + "---|" * len(SHIFTS))
    for name in SCENES:
        cells = [shifted_scene(model, args.data / "stereo" / "middlebury" / name, shift) for shift in SHIFTS]
        print(f"| {name} (vertical median / EPE) | " + " | ".join(f"{v:.2f} / {e:.2f}" for v, e in cells) + " |")

    medians = {}
    for left_path in sorted(oakd.glob("*_left.png")):
        name = left_path.name.removesuffix("_left.png")
        left, right = read_image(left_path)[None], read_image(oakd / f"{name}_right.png")[None]
        medians[name] = estimate_disparity(model, left, right, max_vertical=None).vertical_median[0]
    print("\nOAK-D rectified pairs, median vertical flow (px): "
          + ", ".join(f"{name} {value:.2f}" for name, value in medians.items()))
    print(f"largest {max(medians.values()):.2f} px; over {DEFAULT_MAX_VERTICAL:g} px: "
          f"{sum(v > DEFAULT_MAX_VERTICAL for v in medians.values())} of {len(medians)}")


if __name__ == "__main__":
    try:
        main()
    except FlowcliError as error:  # no Middlebury scene under --data, an unknown model: one line, no traceback
        sys.exit(f"error: {error}")
