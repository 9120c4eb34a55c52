"""CPU inference A/B: what each of the CPU speed-ups buys, interleaved in one run.

Times `estimate_flow` on one 1024x436 pair with the bundled model under five settings, in rounds
(each round runs every setting once, so host load drifts hit all of them alike):
- weights NCHW or channels-last (what `FlowNet.eval()` picks on CPU),
- cost volume from the tiled batched matmul (flowcli's torch backend) or the plain loop over the
  81 displacements it replaced,
- the tiled cost volume handed back channels-last for channels-last features (shipped), or NCHW as it was
  before, which made the decoder's input NCHW and oneDNN convert it before each convolution.
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
import torch.nn.functional as F

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


def correlation_tiled_nchw(f1: torch.Tensor, f2: torch.Tensor, r: int, tile: int = 8, band_tiles: int = 512):
    """The tiled cost volume as it was before it kept the features' layout: always NCHW."""
    b, c, h, w = f1.shape
    d, win = 2 * r + 1, tile + 2 * r
    rows, cols = -(-h // tile), -(-w // tile)
    f1 = F.pad(f1, (0, cols * tile - w, 0, rows * tile - h))
    f2 = F.pad(f2, (r, r + cols * tile - w, r, r + rows * tile - h))
    out = f1.new_empty(b, d * d, rows * tile, cols * tile)
    n = win * win
    band = max(1, band_tiles // max(1, b * cols))
    for top in range(0, rows, band):
        nrows = min(band, rows - top)
        a = f1[:, :, top * tile : (top + nrows) * tile].reshape(b, c, nrows, tile, cols, tile)
        a = a.permute(0, 2, 4, 3, 5, 1).reshape(-1, tile * tile, c)
        windows = f2[:, :, top * tile : (top + nrows) * tile + 2 * r].unfold(2, win, tile).unfold(3, win, tile)
        windows = windows.permute(0, 2, 3, 1, 4, 5).reshape(-1, c, n)
        products = torch.bmm(a, windows)
        strides = (tile * tile * n, tile * n + win, n + 1, win, 1)
        costs = products.as_strided((products.shape[0], tile, tile, d, d), strides)
        costs = costs.reshape(b, nrows, cols, tile, tile, d * d).permute(0, 5, 1, 3, 2, 4)
        out[:, :, top * tile : (top + nrows) * tile] = costs.reshape(b, d * d, nrows * tile, cols * tile)
    return out[:, :, :h, :w].div_(c)


def _test_pair() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return tuple(torch.rand(1, 3, 436, 1024, generator=generator) for _ in range(2))


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
    image1, image2 = _test_pair()
    tiled = correlation_module._correlation_tiled
    settings = {
        "NCHW + loop": (torch.contiguous_format, correlation_loop),
        "NCHW + tiled": (torch.contiguous_format, tiled),
        "channels-last + loop": (torch.channels_last, correlation_loop),
        "channels-last + tiled, NCHW cost volume": (torch.channels_last, correlation_tiled_nchw),
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
