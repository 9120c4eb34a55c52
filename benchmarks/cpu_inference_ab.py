"""CPU inference A/B: what each of the two CPU speed-ups buys, interleaved in one run.

Times `estimate_flow` on one 1024x436 pair with the bundled model under four settings, in rounds
(each round runs every setting once, so host load drifts hit all of them alike):
- weights NCHW or channels-last (what `FlowNet.eval()` picks on CPU),
- cost volume from the tiled batched matmul (flowcli's torch backend) or the plain loop over the
  81 displacements it replaced.
Prints the median seconds per setting and the ratios against the slowest (NCHW + loop), and the
largest flow difference between settings.

    python benchmarks/cpu_inference_ab.py                # 3 rounds x 5 timed runs, 2 threads
    python benchmarks/cpu_inference_ab.py --rounds 5 --repeats 7
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

import flowcli.ops.correlation as correlation_module
from flowcli.inference import estimate_flow
from flowcli.models import load_model


def correlation_loop(f1: torch.Tensor, f2: torch.Tensor, r: int) -> torch.Tensor:
    """The displacement loop: one product and channel sum per displacement (on NCHW copies: its slices
    are ~5x slower on the channels-last maps that eval-mode convolutions hand out)."""
    f1, f2 = f1.contiguous(), f2.contiguous()
    b, c, h, w = f1.shape
    out = f1.new_zeros(b, (2 * r + 1) ** 2, h, w)
    for k, (dy, dx) in enumerate(correlation_module.displacements(r)):
        (y1, y2), (x1, x2) = correlation_module._overlap(dy, h), correlation_module._overlap(dx, w)
        out[:, k, y1, x1] = (f1[:, :, y1, x1] * f2[:, :, y2, x2]).sum(dim=1)
    return out.div_(c)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per setting and round")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.rounds < 1 or args.repeats < 1:
        parser.error("--rounds and --repeats must be at least 1")

    torch.set_num_threads(args.threads)
    model = load_model(None)
    generator = torch.Generator().manual_seed(0)
    image1, image2 = (torch.rand(1, 3, 436, 1024, generator=generator) for _ in range(2))
    tiled = correlation_module._correlation_tiled
    settings = {
        "NCHW + loop": (torch.contiguous_format, correlation_loop),
        "NCHW + tiled": (torch.contiguous_format, tiled),
        "channels-last + loop": (torch.channels_last, correlation_loop),
        "channels-last + tiled (shipped)": (torch.channels_last, tiled),
    }
    seconds: dict[str, list[float]] = {name: [] for name in settings}
    flows: dict[str, torch.Tensor] = {}
    try:
        with torch.inference_mode():
            for _ in range(args.rounds):
                for name, (layout, cost_volume) in settings.items():
                    model.to(memory_format=layout)
                    correlation_module._correlation_tiled = cost_volume
                    flows[name] = estimate_flow(model, image1, image2).forward  # warm-up
                    for _ in range(args.repeats):
                        start = time.perf_counter()
                        estimate_flow(model, image1, image2)
                        seconds[name].append(time.perf_counter() - start)
    finally:
        correlation_module._correlation_tiled = tiled

    reference = statistics.median(seconds["NCHW + loop"])
    print(f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}, "
          f"{args.rounds} rounds x {args.repeats} runs, one 1024x436 pair")
    print("\n| setting | s per pair (median) | speed-up |\n|---|---|---|")
    for name, times in seconds.items():
        median = statistics.median(times)
        print(f"| {name} | {median:.3f} | {reference / median:.2f}x |")
    first = flows["NCHW + loop"]
    spread = max(float((flow - first).abs().max()) for flow in flows.values())
    print(f"\nlargest flow difference between settings: {spread:.4f} px")


if __name__ == "__main__":
    main()
