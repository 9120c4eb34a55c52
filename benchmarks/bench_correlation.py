"""Correlation benchmark: Triton kernels vs the PyTorch reference at the PWC pyramid levels.

For every (resolution, level, batch, dtype, op, implementation) it measures forward time,
forward+backward time and the peak memory of forward+backward, and converts the time into achieved
bytes/s against the minimum traffic of the op (inputs read once, outputs written once) as a fraction of
the device's memory bandwidth. Ops: `corr` = correlation(f1, f2) and `warp` = correlation(f1,
backward_warp(f2, flow)), the reference doing warp then correlation, Triton the fused kernel.

    python benchmarks/bench_correlation.py                      # GPU: 1024x436 and 1920x1080, levels 2-6
    python benchmarks/bench_correlation.py --peak-bandwidth-gbs 4800 --out h200.json
    python benchmarks/bench_correlation.py --sweep-blocks       # also try other Triton tile sizes
    python benchmarks/bench_correlation.py --smoke              # CPU, tiny sizes: checks the script runs
    TRITON_INTERPRET=1 python benchmarks/bench_correlation.py --smoke   # ... with Triton rows (interpreted)

Resolutions are padded to multiples of 64 as flowcli's inference does (1024x436 -> 1024x448); level l
has stride 2**l and the model's channel count for that level. Prints a markdown table, writes JSON.
"""

from __future__ import annotations

import argparse
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
from flowcli.models.pwc import FlowNetConfig
from flowcli.ops.correlation import correlation_torch, warp_correlation_torch

# Peak DRAM bandwidth in GB/s by device-name fragment (first match wins); H100 SXM is the default.
PEAK_BANDWIDTH_GBS = [("H200", 4800.0), ("H100 PCIe", 2000.0), ("H100 NVL", 3900.0), ("H100", 3350.0), ("A100", 2039.0)]
DEFAULT_PEAK_GBS = 3350.0
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Acceptance targets (checked at the finest level of 1024x436, batch 8, bf16).
TARGET_SPEEDUP = 5.0
TARGET_BANDWIDTH = 0.5


def parse_resolution(text: str) -> tuple[int, int]:
    w, h = (int(v) for v in text.lower().split("x"))
    return w, h


def level_shapes(width: int, height: int, levels: list[int], multiple: int = 64) -> list[tuple[int, int, int, int]]:
    """(level, channels, h, w) of the feature maps for an input padded to `multiple`."""
    channels = FlowNetConfig().pyramid_channels
    pw, ph = math.ceil(width / multiple) * multiple, math.ceil(height / multiple) * multiple
    return [(lvl, channels[lvl - 1], ph >> lvl, pw >> lvl) for lvl in levels]


def triton_usable(device: torch.device) -> tuple[bool, str]:
    if importlib.util.find_spec("triton") is None:
        return False, "triton not installed"
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return False, "triton needs CUDA (or TRITON_INTERPRET=1 on CPU)"
    return True, ""


def min_bytes(op: str, b: int, c: int, h: int, w: int, d: int, itemsize: int, backward: bool) -> int:
    """Minimum DRAM traffic: every input read once, every output written once."""
    feat, vol, flow = b * c * h * w * itemsize, b * d * h * w * itemsize, b * 2 * h * w * 4
    fwd = 2 * feat + vol + (flow if op == "warp" else 0)
    if not backward:
        return fwd
    # backward reads grad_out, f1, f2 (and flow), writes grad_f1, grad_f2 (and grad_flow)
    bwd = vol + 4 * feat + (2 * flow if op == "warp" else 0)
    return fwd + bwd


class Timer:
    def __init__(self, device: torch.device):
        self.device = device

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def measure(self, fn, warmup: int, iters: int) -> float:
        """Median milliseconds per call."""
        for _ in range(warmup):
            fn()
        self.sync()
        times = []
        for _ in range(iters):
            if self.device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)


def implementations(op: str):
    """name -> callable(f1, f2, flow, r) for the op."""
    impls = {}
    if op == "corr":
        impls["torch"] = lambda f1, f2, flow, r: correlation_torch(f1, f2, r)
    else:
        impls["torch"] = lambda f1, f2, flow, r: warp_correlation_torch(f1, f2, flow, r)
    return impls


def triton_impl(op: str):
    from flowcli.ops.correlation_triton import correlation_triton, warp_correlation_triton

    if op == "corr":
        return lambda f1, f2, flow, r: correlation_triton(f1, f2, r)
    return lambda f1, f2, flow, r: warp_correlation_triton(f1, f2, flow, r)


def bench_case(fn, b, c, h, w, r, dtype, device, timer, warmup, iters) -> dict:
    gen = torch.Generator(device="cpu").manual_seed(0)
    f1 = torch.randn(b, c, h, w, generator=gen).to(device, dtype)
    f2 = torch.randn(b, c, h, w, generator=gen).to(device, dtype)
    flow = (torch.randn(b, 2, h, w, generator=gen) * 2.0).to(device)
    d = (2 * r + 1) ** 2
    grad = torch.randn(b, d, h, w, generator=gen).to(device, dtype)

    def forward():
        with torch.no_grad():
            fn(f1, f2, flow, r)

    leaves = [t.detach().clone().requires_grad_() for t in (f1, f2, flow)]

    def forward_backward():
        for t in leaves:
            t.grad = None
        fn(*leaves, r).backward(grad)

    result = {"fwd_ms": timer.measure(forward, warmup, iters)}
    result["fwdbwd_ms"] = timer.measure(forward_backward, warmup, iters)
    if device.type == "cuda":
        for t in leaves:
            t.grad = None
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        forward_backward()
        torch.cuda.synchronize(device)
        result["peak_mib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        result["peak_mib"] = None
    return result


def run(args) -> dict:
    device = torch.device(args.device)
    timer = Timer(device)
    peak_gbs = args.peak_bandwidth_gbs
    if peak_gbs is None and device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak_gbs = next((v for key, v in PEAK_BANDWIDTH_GBS if key in name), DEFAULT_PEAK_GBS)
    use_triton, why_not = triton_usable(device)
    rows = []
    for res in args.resolutions:
        width, height = parse_resolution(res)
        for lvl, c, h, w in level_shapes(width, height, args.levels):
            for b in args.batches:
                for dtype_name in args.dtypes:
                    dtype = DTYPES[dtype_name]
                    for op in args.ops:
                        impls = implementations(op)
                        if use_triton:
                            impls["triton"] = triton_impl(op)
                        for impl, fn in impls.items():
                            row = {"resolution": res, "level": lvl, "b": b, "c": c, "h": h, "w": w}
                            row.update({"dtype": dtype_name, "op": op, "impl": impl, "r": args.max_displacement})
                            try:
                                row.update(
                                    bench_case(
                                        fn,
                                        b,
                                        c,
                                        h,
                                        w,
                                        args.max_displacement,
                                        dtype,
                                        device,
                                        timer,
                                        args.warmup,
                                        args.iters,
                                    )
                                )
                            except torch.cuda.OutOfMemoryError:
                                row.update(fwd_ms=None, fwdbwd_ms=None, peak_mib=None, error="OOM")
                                torch.cuda.empty_cache()
                            d = (2 * args.max_displacement + 1) ** 2
                            itemsize = torch.tensor([], dtype=dtype).element_size()
                            row["bytes_fwd"] = min_bytes(op, b, c, h, w, d, itemsize, backward=False)
                            row["bytes_fwdbwd"] = min_bytes(op, b, c, h, w, d, itemsize, backward=True)
                            for key in ("fwd", "fwdbwd"):
                                ms = row.get(f"{key}_ms")
                                row[f"{key}_bw_frac"] = (
                                    row[f"bytes_{key}"] / (ms * 1e-3) / (peak_gbs * 1e9) if ms and peak_gbs else None
                                )
                            rows.append(row)
                            timing = f"fwd {_fmt(row.get('fwd_ms'))} ms  fwd+bwd {_fmt(row.get('fwdbwd_ms'))} ms"
                            label = f"{res} L{lvl} b{b} {dtype_name} {op:4s} {impl:6s}"
                            print(f"  {label} {timing}", file=sys.stderr, flush=True)
    _add_speedups(rows)
    sweep = sweep_blocks(args, device, timer) if args.sweep_blocks and use_triton else None
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "triton": _triton_version(),
        "peak_bandwidth_gbs": peak_gbs,
        "triton_rows": use_triton,
        "triton_skipped_because": why_not or None,
        "smoke": args.smoke,
        "rows": rows,
        "acceptance": acceptance(rows),
        "block_sweep": sweep,
    }


def _triton_version():
    if importlib.util.find_spec("triton") is None:
        return None
    return importlib.metadata.version("triton")


def _add_speedups(rows: list[dict]) -> None:
    """speedup = reference time / triton time for the same case."""
    ref = {_case(r): r for r in rows if r["impl"] == "torch"}
    for row in rows:
        base = ref.get(_case(row))
        for key in ("fwd", "fwdbwd"):
            t, t0 = row.get(f"{key}_ms"), base.get(f"{key}_ms") if base else None
            row[f"{key}_speedup"] = t0 / t if t and t0 else None


def _case(row: dict) -> tuple:
    return row["resolution"], row["level"], row["b"], row["dtype"], row["op"]


def acceptance(rows: list[dict]) -> list[dict]:
    """The targets at the finest level of 1024x436, batch 8, bf16 (when that case was run)."""
    out = []
    for row in rows:
        if (row["resolution"], row["b"], row["dtype"], row["impl"]) != ("1024x436", 8, "bf16", "triton"):
            continue
        finest = min(r["level"] for r in rows if r["resolution"] == "1024x436")
        if row["level"] != finest:
            continue
        speed, frac = row.get("fwdbwd_speedup"), row.get("fwdbwd_bw_frac")
        out.append(
            {
                "op": row["op"],
                "level": row["level"],
                "fwdbwd_speedup": speed,
                "speedup_ok": speed is not None and speed >= TARGET_SPEEDUP,
                "fwdbwd_bw_frac": frac,
                "fwd_bw_frac": row.get("fwd_bw_frac"),
                "bandwidth_ok": frac is not None and frac >= TARGET_BANDWIDTH,
            }
        )
    return out


def sweep_blocks(args, device, timer) -> list[dict]:
    """Triton times for other (lanes per program, warps) settings at the finest level, largest batch.

    All kernels of an op get the same setting; the defaults live in correlation_triton.KERNEL_CONFIG.
    """
    from flowcli.ops import correlation_triton as ct

    res = args.resolutions[0]
    lvl, c, h, w = level_shapes(*parse_resolution(res), [min(args.levels)])[0]
    b, dtype_name = max(args.batches), args.dtypes[-1]
    saved = dict(ct.KERNEL_CONFIG)
    kinds = {"corr": ("fwd", "bwd"), "warp": ("warp_fwd", "warp_bwd_f1", "warp_bwd_f2")}
    out = []
    try:
        for op in args.ops:
            for lanes in (1024, 2048, 4096, 8192):
                for warps in (4, 8):
                    ct.KERNEL_CONFIG.update({k: (lanes, warps) for k in kinds[op]})
                    r = bench_case(triton_impl(op), b, c, h, w, args.max_displacement, DTYPES[dtype_name], device,
                                   timer, args.warmup, args.iters)  # fmt: skip
                    out.append({"op": op, "lanes": lanes, "warps": warps, "resolution": res, "level": lvl, "b": b,
                                "dtype": dtype_name, **r})  # fmt: skip
                    ct.KERNEL_CONFIG.update(saved)
    finally:
        ct.KERNEL_CONFIG.update(saved)
    return out


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _speed(value) -> str:
    return "-" if value is None else f"{value:.1f}x"


def markdown(report: dict) -> str:
    head = (
        "| res | lvl | B | C | HxW | dtype | op | impl | fwd ms | fwd+bwd ms | speedup fwd | speedup fwd+bwd "
        "| peak MiB | BW fwd | BW fwd+bwd |"
    )
    lines = [
        f"device: {report['device']}; torch {report['torch']}; triton {report['triton']}; "
        f"peak bandwidth {report['peak_bandwidth_gbs'] or '-'} GB/s"
        + (f"; triton rows skipped: {report['triton_skipped_because']}" if report["triton_skipped_because"] else ""),
        "",
        head,
        "|" + "---|" * (head.count("|") - 1),
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['resolution']} | {r['level']} | {r['b']} | {r['c']} | {r['h']}x{r['w']} | {r['dtype']} | {r['op']} "
            f"| {r['impl']} | {_fmt(r.get('fwd_ms'))} | {_fmt(r.get('fwdbwd_ms'))} | {_speed(r.get('fwd_speedup'))} "
            f"| {_speed(r.get('fwdbwd_speedup'))} | {_fmt(r.get('peak_mib'))} | {_pct(r.get('fwd_bw_frac'))} "
            f"| {_pct(r.get('fwdbwd_bw_frac'))} |" + (f" {r['error']}" if r.get("error") else "")
        )
    if report["acceptance"]:
        lines += ["", "acceptance (1024x436, finest level, batch 8, bf16, fwd+bwd):"]
        for a in report["acceptance"]:
            lines.append(
                f"- {a['op']}: speedup {a['fwdbwd_speedup'] and round(a['fwdbwd_speedup'], 2)}x "
                f"({'ok' if a['speedup_ok'] else 'below'} {TARGET_SPEEDUP}x), bandwidth "
                f"{a['fwdbwd_bw_frac'] and round(100 * a['fwdbwd_bw_frac'])}% "
                f"({'ok' if a['bandwidth_ok'] else 'below'} {100 * TARGET_BANDWIDTH:.0f}%)"
            )
    if report["block_sweep"]:
        lines += [
            "",
            "block sweep (KERNEL_CONFIG):",
            "",
            "| op | lanes | warps | fwd ms | fwd+bwd ms |",
            "|---|---|---|---|---|",
        ]
        for s in report["block_sweep"]:
            lines.append(f"| {s['op']} | {s['lanes']} | {s['warps']} | {_fmt(s['fwd_ms'])} | {_fmt(s['fwdbwd_ms'])} |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: check that the script runs")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--resolutions", default="1024x436,1920x1080", help="comma-separated WxH")
    p.add_argument("--levels", default="2,3,4,5,6")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--dtypes", default="fp32,bf16", help=f"comma-separated, of {','.join(DTYPES)}")
    p.add_argument("--ops", default="corr,warp", help="corr (correlation) and/or warp (warp + correlation)")
    p.add_argument("--max-displacement", type=int, default=4)
    p.add_argument("--peak-bandwidth-gbs", type=float, default=None,
                   help="memory bandwidth for the roofline fraction "
                        f"(default: by GPU name, H100 SXM {DEFAULT_PEAK_GBS:.0f})")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--sweep-blocks", action="store_true", help="also time other Triton tile sizes (finest level)")
    p.add_argument("--out", type=Path, default=Path("bench_correlation.json"), help="JSON output path")
    args = p.parse_args(argv)
    if args.smoke:
        args.device = args.device or "cpu"
        explicit = {a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:])}
        if "--resolutions" not in explicit:
            args.resolutions = "96x64"
        if "--batches" not in explicit:
            args.batches = "1,2"
        if "--levels" not in explicit:
            args.levels = "2,5,6"
        args.warmup, args.iters = min(args.warmup, 1), min(args.iters, 2)
        if os.environ.get("TRITON_INTERPRET") == "1":
            # The interpreter takes milliseconds per program and channel: smallest levels, one pass.
            if "--levels" not in explicit:
                args.levels = "5,6"
            if "--batches" not in explicit:
                args.batches = "1"
            if "--dtypes" not in explicit:
                args.dtypes = "fp32"
            args.warmup, args.iters = 0, 1
    try:  # flowcli's own device check: one line for a bad or missing device
        device = resolve_device(args.device or "auto")
    except FlowcliError as error:
        sys.exit(f"error: --device {args.device}: {error}")
    args.device = str(device)
    args.resolutions = [s.strip() for s in args.resolutions.split(",") if s.strip()]
    args.levels = [int(v) for v in args.levels.split(",")]
    args.batches = [int(v) for v in args.batches.split(",")]
    args.dtypes = [v.strip() for v in args.dtypes.split(",")]
    args.ops = [v.strip() for v in args.ops.split(",")]
    for name in args.dtypes:
        if name not in DTYPES:
            p.error(f"unknown dtype {name!r}; use {', '.join(DTYPES)}")
    for name in args.ops:
        if name not in ("corr", "warp"):
            p.error(f"unknown op {name!r}; use corr, warp")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    report = run(args)
    print(markdown(report))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
