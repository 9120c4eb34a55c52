"""Inference throughput: flowcli's network (both correlation backends) vs torchvision's RAFT.

Pairs per second and peak memory for one forward pass of each model on random frames (random
weights: speed does not depend on them), at 1024x436 and 1920x1080, batch 1 and 8, fp32 and bf16
(autocast). Frames are padded to multiples of 64 as flowcli's inference does (1024x448, 1920x1088);
RAFT runs on the same padded frames. torchvision is imported here only, and the RAFT rows are
skipped when it is missing.

    python benchmarks/bench_gpu_inference.py                  # GPU, full grid
    python benchmarks/bench_gpu_inference.py --compile        # also torch.compile the flowcli model
    python benchmarks/bench_gpu_inference.py --smoke          # CPU, tiny frames: checks the script runs

Models: `flowcli-triton` (FLOWCLI_CORR=triton: fused kernels), `flowcli-torch` (FLOWCLI_CORR=torch:
reference correlation), `raft_small`, `raft_large` (torchvision, --raft-iters refinement steps).
Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from flowcli.errors import FlowcliError
from flowcli.inference import resolve_device
from flowcli.models.pwc import FlowNet, FlowNetConfig

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
MODELS = ("flowcli-triton", "flowcli-torch", "raft_small", "raft_large")


@contextlib.contextmanager
def corr_backend(name: str | None):
    """Force flowcli's correlation backend (the dispatch reads FLOWCLI_CORR on every call)."""
    old = os.environ.get("FLOWCLI_CORR")
    if name:
        os.environ["FLOWCLI_CORR"] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("FLOWCLI_CORR", None)
        else:
            os.environ["FLOWCLI_CORR"] = old


def build_model(name: str, device: torch.device, compile_model: bool):
    """(callable(image1, image2), backend) or raises ModuleNotFoundError for a missing torchvision."""
    if name.startswith("flowcli"):
        model = FlowNet(FlowNetConfig()).to(device).eval()
        fn = torch.compile(model) if compile_model else model
        return (lambda a, b: fn(a, b).flow), name.split("-", 1)[1]
    from torchvision.models.optical_flow import raft_large, raft_small

    model = (raft_small if name == "raft_small" else raft_large)(weights=None, progress=False).to(device).eval()
    return model, None


def skip_reason(name: str, device: torch.device) -> str | None:
    if name.startswith("raft") and importlib.util.find_spec("torchvision") is None:
        return "torchvision not installed"
    if name == "flowcli-triton":
        if importlib.util.find_spec("triton") is None:
            return "triton not installed"
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            return "triton needs CUDA"
    return None


def time_ms(fn, device: torch.device, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench_row(name, width, height, batch, dtype_name, args, device) -> dict:
    pw, ph = math.ceil(width / 64) * 64, math.ceil(height / 64) * 64
    row = {"model": name, "resolution": f"{width}x{height}", "input": f"{pw}x{ph}", "b": batch, "dtype": dtype_name}
    reason = skip_reason(name, device)
    if reason:
        return {**row, "skipped": reason}
    gen = torch.Generator().manual_seed(0)
    image1 = torch.rand(batch, 3, ph, pw, generator=gen).to(device)
    image2 = torch.roll(image1, shifts=(3, -5), dims=(2, 3))
    model, backend = build_model(name, device, args.compile)
    if name.startswith("raft"):
        # RAFT takes [-1, 1] frames and returns one flow per refinement step.
        a, b = image1 * 2 - 1, image2 * 2 - 1

        def call():
            return model(a, b, num_flow_updates=args.raft_iters)[-1]
    else:

        def call():
            return model(image1, image2)

    autocast = DTYPES[dtype_name]

    def step():
        with torch.no_grad(), corr_backend(backend):
            if autocast is None:
                return call()
            with torch.autocast(device.type, dtype=autocast):
                return call()

    try:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        ms = time_ms(step, device, args.warmup, args.iters)
        row.update(ms=ms, pairs_per_s=batch * 1e3 / ms)
        if device.type == "cuda":
            row["peak_mib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    except torch.cuda.OutOfMemoryError:
        row["skipped"] = "OOM"
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def markdown(report: dict) -> str:
    lines = [
        (
            f"device: {report['device']}; torch {report['torch']}; triton {report['triton']}; "
            f"torchvision {report['torchvision']}; RAFT updates {report['raft_iters']}; compile {report['compile']}"
        ),
        "",
        "| model | frames | padded | B | dtype | ms/batch | pairs/s | peak MiB | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        ms = f"{r['ms']:.2f}" if "ms" in r else "-"
        pps = f"{r['pairs_per_s']:.1f}" if "pairs_per_s" in r else "-"
        peak = f"{r['peak_mib']:.0f}" if r.get("peak_mib") is not None else "-"
        lines.append(
            f"| {r['model']} | {r['resolution']} | {r['input']} | {r['b']} | {r['dtype']} | {ms} | {pps} | {peak} "
            f"| {r.get('skipped', '')} |"
        )
    return "\n".join(lines)


def _version(package: str) -> str | None:
    return importlib.metadata.version(package) if importlib.util.find_spec(package) else None


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--smoke", action="store_true", help="tiny frames on the CPU: check that the script runs")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--resolutions", default="1024x436,1920x1080", help="comma-separated WxH")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--dtypes", default="fp32,bf16", help=f"comma-separated, of {','.join(DTYPES)}")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {','.join(MODELS)}")
    p.add_argument("--raft-iters", type=int, default=12, help="RAFT refinement steps (torchvision default 12)")
    p.add_argument("--compile", action="store_true", help="torch.compile the flowcli model")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--out", type=Path, default=Path("bench_gpu_inference.json"), help="JSON output path")
    args = p.parse_args(argv)
    if args.smoke:
        args.device = args.device or "cpu"
        explicit = {a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:])}
        if "--resolutions" not in explicit:
            args.resolutions = "128x64"
        if "--batches" not in explicit:
            args.batches = "1"
        if "--raft-iters" not in explicit:
            args.raft_iters = 2
        args.warmup, args.iters = 0, 1
    try:  # flowcli's own device check: one line for a bad or missing device
        device = resolve_device(args.device or "auto")
    except FlowcliError as error:
        sys.exit(f"error: --device {args.device}: {error}")
    args.device = str(device)
    args.resolutions = [tuple(int(v) for v in s.lower().split("x")) for s in args.resolutions.split(",") if s.strip()]
    args.batches = [int(v) for v in args.batches.split(",")]
    args.dtypes = [v.strip() for v in args.dtypes.split(",")]
    args.models = [v.strip() for v in args.models.split(",")]
    for name in args.dtypes:
        if name not in DTYPES:
            p.error(f"unknown dtype {name!r}; use {', '.join(DTYPES)}")
    for name in args.models:
        if name not in MODELS:
            p.error(f"unknown model {name!r}; use {', '.join(MODELS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    rows = []
    for width, height in args.resolutions:
        for batch in args.batches:
            for dtype_name in args.dtypes:
                for name in args.models:
                    row = bench_row(name, width, height, batch, dtype_name, args, device)
                    rows.append(row)
                    print(f"  {row}", file=sys.stderr, flush=True)
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "triton": _version("triton"),
        "torchvision": _version("torchvision"),
        "raft_iters": args.raft_iters,
        "compile": args.compile,
        "smoke": args.smoke,
        "rows": rows,
    }
    print(markdown(report))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
