"""CPU time of two or more checkpoints, interleaved in one run (e.g. bilinear vs convex upsampler).

Times `estimate_flow` on one 1024x436 Sintel pair for each checkpoint in rounds (each round runs
every checkpoint `--repeats` times, so host load drifts hit all of them alike) and prints the median
and minimum seconds per pair and the ratio against the first checkpoint.

    python benchmarks/checkpoint_speed_ab.py flowcli-pwc-synth runs/flowcli-pwc-synth/stage5-upsampler/last.safetensors
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from flowcli.errors import FlowcliError
from flowcli.inference import estimate_flow
from flowcli.io.media import read_image
from flowcli.models import load_model

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", nargs="+", help="registry names or checkpoint files")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.rounds < 1 or args.repeats < 1:
        parser.error("--rounds and --repeats must be at least 1")
    torch.set_num_threads(args.threads)
    scene = args.data / "flow/sintel/training/clean/alley_1"
    image1, image2 = read_image(scene / "frame_0002.png"), read_image(scene / "frame_0003.png")
    models = {name: load_model(name) for name in args.weights}
    seconds = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            estimate_flow(model, image1, image2)  # warm-up
        for _ in range(args.rounds):
            for name, model in models.items():
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    estimate_flow(model, image1, image2)
                    seconds[name].append(time.perf_counter() - start)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads, "
          f"{args.rounds} rounds x {args.repeats} runs, 1024x436 pair")
    print("| checkpoint | median s | min s | vs first |\n|---|---|---|---|")
    first = statistics.median(seconds[args.weights[0]])
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.3f} | {min(values):.3f} | {median / first:.2f}x |")


if __name__ == "__main__":
    try:
        main()
    except FlowcliError as error:  # no Sintel pair under --data, an unknown model: one line, no traceback
        sys.exit(f"error: {error}")
