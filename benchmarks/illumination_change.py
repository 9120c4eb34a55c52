"""How much change of light between the frames can a checkpoint match through? EPE on relit synthetic planes.

Supervised training frames share their light; real ones often do not (a cloud, a moving lamp, auto-exposure,
Sintel's market_5, whose ground re-rendered from frame 2 with the true motion has half the error). This
script renders seeded ground-plane scenes (`flowcli synth`'s generator with `perspective_prob` 1, 320x448,
no layers, exact flow), multiplies frame 2 by a smooth gain field (a 4x5-point bicubic field of normal
log-gains times s) and reports, per checkpoint and s, the EPE on the visible pixels and the share of
cells where the level-5 cost volume at zero flow peaks within one cell of the truth (level_errors.py).

    python benchmarks/illumination_change.py flowcli-pwc-synth runs/flowcli-pwc-synth/stage17-relight/ema.safetensors
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
from flowcli.models import load_model
from flowcli.synth.generator import SynthConfig, TextureBank, generate_sample

HERE = Path(__file__).resolve().parent
FOOTAGE = HERE.parent.parent / "shared" / "data" / "footage"


def gain_field(strength: float, seed: int, h: int, w: int) -> torch.Tensor:
    coarse = torch.randn(1, 1, 4, 5, generator=torch.Generator().manual_seed(seed))
    return torch.exp(strength * F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", nargs="+", help="registry names or checkpoint files")
    parser.add_argument("--strengths", default="0,0.15,0.3,0.5", help="comma-separated s, in log units")
    parser.add_argument("--scenes", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--data", type=Path, default=FOOTAGE, help="footage folder with street_frames/, traffic/")
    args = parser.parse_args()
    if args.scenes < 1:
        parser.error("--scenes must be at least 1")
    folders = [args.data / "street_frames", args.data / "traffic"]
    if not all(folder.is_dir() for folder in folders):
        raise FlowcliError(
            f"{args.data} has no street_frames/ and traffic/ folders; pass --data ../shared/data/footage"
        )
    torch.set_num_threads(2)
    level_report = runpy.run_path(str(HERE / "level_errors.py"))["level_report"]
    label = runpy.run_path(str(HERE / "exposure_range.py"))["label"]  # a checkpoint's name in a table
    models = {name: load_model(name).eval() for name in args.weights}  # first: a wrong name fails before rendering
    bank = TextureBank.from_paths([str(folder) for folder in folders], max_images=40)
    cfg = SynthConfig(height=320, width=448, min_layers=0, max_layers=0, photometric=False, noise_std=0.0,
                      perspective_prob=1.0)  # fmt: skip
    scenes = [generate_sample(cfg, torch.Generator().manual_seed(args.seed + k), bank) for k in range(args.scenes)]
    print(f"# {platform.processor() or platform.machine()} | torch {torch.__version__} | {args.scenes} ground-plane "
          f"scenes 320x448, seed {args.seed}")  # fmt: skip
    print("| s | " + " | ".join(f"{label(n)}: EPE / level 5 at truth" for n in models) + " |")
    print("|---" * (len(models) + 1) + "|")
    for strength in (float(s) for s in args.strengths.split(",")):
        row = []
        for model in models.values():
            epes, shares = [], []
            for k, scene in enumerate(scenes):
                relit = (scene.images[1] * gain_field(strength, k, 320, 448)).clamp(0, 1)
                item = {
                    "image1": scene.images[0], "image2": relit, "flow": scene.flow_forward,
                    "valid": torch.ones(1, 320, 448), "occlusion": scene.occlusion_forward, "name": str(k),
                }  # fmt: skip
                report = level_report(model, item)
                epes.append(report["bands"]["all"]["levels"]["output"]["epe"])
                shares.append(report["cost_volume_peak_within_one_cell"]["level 5"]["all"] or 0.0)
            row.append(f"{sum(epes) / len(epes):.2f} / {100 * sum(shares) / len(shares):.0f} %")
        print(f"| {strength:g} | " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    try:
        main()
    except FlowcliError as error:  # an unknown model, no footage: one line, no traceback
        sys.exit(f"error: {error}")
