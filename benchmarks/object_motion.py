"""Which moving objects does a checkpoint follow? Foreground EPE by object size and speed.

FlyingChairs' error is mostly small objects moving fast (its 6 pairs: objects 60-120 px across moving
40-100 px have EPE 30-60, a miss). This script asks whether that is the data or the model: it renders
synthetic scenes (`flowcli synth`'s generator, 384x512, noise-free, a near-static background) with exact
flow and reports each checkpoint's EPE over the pixels of each foreground object, binned by the object's
visible size (square root of its area) and its mean speed. Cells are pixel-weighted means; the number of
objects is in brackets. Seeded: the same scenes for every checkpoint and every run.

    python benchmarks/object_motion.py flowcli-pwc-synth runs/flowcli-pwc-synth/stage11-untied/last.safetensors
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
from flowcli.models import load_model
from flowcli.synth.generator import SynthConfig, generate_sample

SIZE_BINS = [(0, 30), (30, 60), (60, 120), (120, math.inf)]
SPEED_BINS = [(0, 20), (20, 40), (40, 80), (80, math.inf)]


def label(low: float, high: float) -> str:
    return f"{low:g}+" if math.isinf(high) else f"{low:g}-{high:g}"


def object_errors(model, scenes: int, seed: int) -> torch.Tensor:
    """Rows (sqrt(area), mean speed, mean EPE, area), one per visible foreground object of >= 50 px."""
    cfg = SynthConfig(height=384, width=512, layer_translation=64.0, background_translation=4.0, photometric=False)
    rows = []
    for scene in range(scenes):
        sample = generate_sample(cfg, torch.Generator().manual_seed(seed + scene))
        truth, layers = sample.flow_forward, sample.layer_index[0]
        predicted = estimate_flow(model, sample.images[0], sample.images[1]).forward[0]
        error = (predicted - truth).norm(dim=0)
        for layer in layers.unique().tolist():
            pixels = layers == layer
            area = int(pixels.sum())
            if layer == 0 or area < 50:
                continue
            speed = float(truth[:, pixels].norm(dim=0).mean())
            rows.append((math.sqrt(area), speed, float(error[pixels].mean()), area))
    return torch.tensor(rows, dtype=torch.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", nargs="+", help="registry names or checkpoint files")
    parser.add_argument("--scenes", type=int, default=40)
    parser.add_argument("--seed", type=int, default=777)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.scenes < 1:
        parser.error("--scenes must be at least 1")
    torch.set_num_threads(args.threads)
    models = {name: load_model(name).eval() for name in args.weights}  # a wrong name fails before any scene
    print(f"# {platform.node()} | torch {torch.__version__} | {args.scenes} synthetic 384x512 scenes, seed {args.seed}")
    with torch.inference_mode():
        for name, model in models.items():
            rows = object_errors(model, args.scenes, args.seed)
            title = Path(name).parent.name if "/" in name else name
            overall = float((rows[:, 2] * rows[:, 3]).sum() / rows[:, 3].sum())
            print(f"\n{title}: foreground EPE {overall:.2f} over {len(rows)} objects")
            print("| size \\ speed (px) | " + " | ".join(label(*b) for b in SPEED_BINS) + " |")
            print("|---" * (len(SPEED_BINS) + 1) + "|")
            for size_low, size_high in SIZE_BINS:
                cells = []
                for speed_low, speed_high in SPEED_BINS:
                    sel = (rows[:, 0] >= size_low) & (rows[:, 0] < size_high)
                    sel &= (rows[:, 1] >= speed_low) & (rows[:, 1] < speed_high)
                    if not sel.any():
                        cells.append("-")
                        continue
                    epe = float((rows[sel, 2] * rows[sel, 3]).sum() / rows[sel, 3].sum())
                    cells.append(f"{epe:.1f} ({int(sel.sum())})")
                print(f"| {label(size_low, size_high)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    try:
        main()
    except FlowcliError as error:  # an unknown model or checkpoint file: one line, no traceback
        sys.exit(f"error: {error}")
