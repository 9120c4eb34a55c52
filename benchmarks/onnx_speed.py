"""ONNX export on the CPU: onnxruntime against flowcli's PyTorch path, interleaved in one run.

Exports a model (default: the bundled one) with `flowcli.export.export_onnx`, then times one pair at the
given size in rounds, each round running both settings (so host load drifts hit both alike):
- PyTorch: `estimate_flow` (channels-last weights, the tiled-matmul cost volume),
- onnxruntime: the exported graph on the CPU execution provider, same thread count.
Prints the median seconds per pair, the ratio onnxruntime / PyTorch, and the largest flow difference on a
real Sintel pair when ../shared/data is there (else on the random pair timed).

    python benchmarks/onnx_speed.py                     # 1024x436, 3 rounds x 5 runs, 2 threads
    python benchmarks/onnx_speed.py --occlusion --rounds 5
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from flowcli.errors import FlowcliError
from flowcli.export import export_onnx, onnx_session, run_onnx
from flowcli.inference import estimate_flow
from flowcli.models import load_model

SINTEL_PAIR = Path(__file__).resolve().parents[1] / "../shared/data/flow/sintel/training/final/market_5"


def _pair(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return tuple(torch.rand(1, 3, height, width, generator=generator) for _ in range(2))


def _real_pair() -> tuple[torch.Tensor, torch.Tensor] | None:
    from flowcli.io.media import read_image

    frames = sorted(SINTEL_PAIR.glob("frame_*.png"))
    if len(frames) < 2:
        return None
    return tuple(read_image(path)[None] for path in frames[1:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="model name or checkpoint (default: the bundled model)")
    parser.add_argument("--size", default="436x1024", help="HxW of the timed pair")
    parser.add_argument("--occlusion", action="store_true", help="both directions and the occlusion check")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per setting and round")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.rounds < 1 or args.repeats < 1:
        parser.error("--rounds and --repeats must be at least 1")

    torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.size.lower().split("x"))
    model = load_model(args.weights)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        report = export_onnx(model, path, occlusion=args.occlusion)
        session = onnx_session(path, threads=args.threads)
        image1, image2 = _pair(height, width)
        settings = {
            "pytorch": lambda: estimate_flow(model, image1, image2, occlusion=args.occlusion),
            "onnxruntime": lambda: run_onnx(session, image1, image2),
        }
        for run in settings.values():  # warm-up: first-call allocations and oneDNN kernel selection
            run()
        seconds: dict[str, list[float]] = {name: [] for name in settings}
        for _ in range(args.rounds):
            for name, run in settings.items():
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    run()
                    seconds[name].append(time.perf_counter() - start)
        real = _real_pair()
        check1, check2 = real if real is not None else (image1, image2)
        difference = (run_onnx(session, check1, check2)["flow"] - estimate_flow(model, check1, check2).forward).abs()

    print(f"host: {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}")
    print(f"export: {report.seconds:.1f} s, opset {report.opset}, outputs {', '.join(report.outputs)}")
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    for name, median in medians.items():
        print(f"{name:12s} {median:.3f} s per {width}x{height} pair (median of {len(seconds[name])})")
    print(f"onnxruntime / pytorch: {medians['onnxruntime'] / medians['pytorch']:.2f}x time")
    what = "Sintel final market_5 frames 2-3" if real is not None else "the timed random pair"
    print(f"largest flow difference on {what}: {difference.max():.2e} px (mean {difference.mean():.2e})")


if __name__ == "__main__":
    try:
        main()
    except FlowcliError as error:  # onnx / onnxruntime not installed, an unknown model: one line, no traceback
        sys.exit(f"error: {error}")
