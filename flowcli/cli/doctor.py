"""`flowcli doctor`: what flowcli will run on here, and a quick self-check of the correlation backend.

Prints versions (flowcli, python, torch, triton), CUDA availability, the device and the correlation
backend the dispatch picks (`FLOWCLI_CORR` forces one), then checks `correlation` and
`warp_correlation` on that backend (forward and gradients) against an independent float64
computation on a small case. On the CPU the Triton backend only runs under Triton's interpreter
(TRITON_INTERPRET=1 with triton installed): then it is checked too, on a tiny case. Exit code 1 when
a self-check fails.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from typing import Annotated

import typer

from flowcli.errors import FlowcliError, InputError

# Forward and gradients against float64; fp32 kernels differ from it by rounding only.
_TOLERANCE = 1e-4


@dataclass
class SelfCheck:
    ok: bool
    backend: str
    device: str
    seconds: float = 0.0
    max_error: dict[str, float] = field(default_factory=dict)
    message: str = ""


_HELP_PARAGRAPHS = [
    "Show versions, device and correlation backend, and self-check the backend against a reference.",
    "--json prints one JSON document on stdout with keys flowcli, python, torch, torch_cuda_build, triton, "
    "onnxruntime, cuda_available, cuda_devices (name, capability, memory_gib), FLOWCLI_CORR, TRITON_INTERPRET, device "
    "and self_check (ok, backend, device, seconds, max_error, message); interpreter_check as well when the Triton "
    "interpreter is checked on the CPU.",
    "Exit codes: 0 ok, 1 a self-check failed, 2 a --device that is unknown or that this machine does not have.",
    "Examples:",
    "  flowcli doctor",
    "  flowcli doctor --device cpu --json",
]
HELP = "\n\n".join(_HELP_PARAGRAPHS)


def register(app: typer.Typer) -> None:
    app.command("doctor", help=HELP)(doctor)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _shifted_reference(f1, f2, max_displacement: int):
    """Cost volume by padding and slicing: independent of both backends, differentiable, any dtype."""
    import torch
    import torch.nn.functional as F

    r = max_displacement
    h, w = f1.shape[-2:]
    padded = F.pad(f2, (r, r, r, r))
    planes = [
        (f1 * padded[:, :, r + dy : r + dy + h, r + dx : r + dx + w]).mean(dim=1)
        for dy in range(-r, r + 1)
        for dx in range(-r, r + 1)
    ]
    return torch.stack(planes, dim=1)


def self_check(device: str | None = None, backend: str | None = None) -> SelfCheck:
    """Run correlation and warp_correlation on a backend (default: the one the dispatch picks for
    `device`) against a float64 reference."""
    import torch

    from flowcli.ops import correlation as corr
    from flowcli.ops.warp import backward_warp

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    probe = torch.empty(0, device=device)
    if backend is None:
        try:
            backend = corr.backend_name(probe)
        except ValueError as error:
            return SelfCheck(False, "?", device, message=str(error))
    if backend == "triton" and probe.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return SelfCheck(
            False,
            backend,
            device,
            message="the triton backend needs a CUDA device (or TRITON_INTERPRET=1 for the CPU interpreter); "
            "unset FLOWCLI_CORR=triton",
        )
    if backend == "triton":
        try:
            from flowcli.ops.correlation_triton import correlation_triton as correlation
            from flowcli.ops.correlation_triton import warp_correlation_triton as warp_correlation
        except ImportError as error:
            return SelfCheck(False, backend, device, message=str(error))
    elif backend == "shifts":
        correlation = corr.correlation_shifts

        def warp_correlation(f1, f2, flow, r):
            return corr.correlation_shifts(f1, backward_warp(f2, flow), r)
    else:
        correlation, warp_correlation = corr.correlation_torch, corr.warp_correlation_torch
    # Interpreted Triton costs milliseconds per program: keep the CPU case tiny.
    b, c, h, w, r = (2, 16, 24, 40, 4) if probe.device.type == "cuda" else (1, 3, 5, 7, 2)
    gen = torch.Generator().manual_seed(0)
    f1 = torch.randn(b, c, h, w, generator=gen, dtype=torch.float64)
    f2 = torch.randn(b, c, h, w, generator=gen, dtype=torch.float64)
    # Flow away from integers, where bilinear sampling has a kink in its gradient.
    flow = (torch.rand(b, 2, h, w, generator=gen, dtype=torch.float64) * 3.0 - 1.5).add_(0.05)
    grad = torch.randn(b, (2 * r + 1) ** 2, h, w, generator=gen, dtype=torch.float64)

    def run(fn, inputs, dtype, dev):
        leaves = [t.to(dev, dtype).requires_grad_() for t in inputs]
        out = fn(*leaves)
        # A scalar loss: autograd.grad with a grad_outputs tensor imports sympy on its first call (seconds).
        grads = torch.autograd.grad((out * grad.to(dev, out.dtype)).sum(), leaves)
        return [t.detach().double().cpu() for t in (out, *grads)]

    start = time.perf_counter()
    errors: dict[str, float] = {}
    try:
        cases = {
            "correlation": (lambda a, b_: correlation(a, b_, r), lambda a, b_: _shifted_reference(a, b_, r), (f1, f2)),
            "warp_correlation": (
                lambda a, b_, fl: warp_correlation(a, b_, fl, r),
                lambda a, b_, fl: _shifted_reference(a, backward_warp(b_, fl), r),
                (f1, f2, flow),
            ),
        }
        for name, (fn, reference, inputs) in cases.items():
            got = run(fn, inputs, torch.float32, device)
            want = run(reference, inputs, torch.float64, "cpu")
            labels = ["forward", "grad_f1", "grad_f2", "grad_flow"][: len(got)]
            for label, x, y in zip(labels, got, want):
                errors[f"{name}.{label}"] = float((x - y).abs().max()) if x.numel() else 0.0
        if probe.device.type == "cuda":
            torch.cuda.synchronize()
    except (RuntimeError, ImportError, ValueError) as error:
        return SelfCheck(
            False, backend, device, time.perf_counter() - start, errors, f"{type(error).__name__}: {error}"
        )
    worst = max(errors.values())
    ok = worst <= _TOLERANCE
    message = "ok" if ok else f"max error {worst:.2e} exceeds {_TOLERANCE:.0e}"
    return SelfCheck(ok, backend, device, time.perf_counter() - start, errors, message)


def environment() -> dict:
    import torch

    from flowcli import __version__

    info = {
        "flowcli": __version__,  # the code running, as `flowcli --version` says (not a stale install record)
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda_build": torch.version.cuda,
        "triton": _version("triton") if importlib.util.find_spec("triton") else None,
        "onnxruntime": _version("onnxruntime") if importlib.util.find_spec("onnxruntime") else None,
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": [],
        "FLOWCLI_CORR": os.environ.get("FLOWCLI_CORR") or None,
        "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET") or None,
    }
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            info["cuda_devices"].append(
                {
                    "name": props.name,
                    "capability": f"{props.major}.{props.minor}",
                    "memory_gib": round(props.total_memory / 2**30, 1),
                }
            )
    return info


def doctor(
    device: Annotated[
        str, typer.Option("--device", help="Device to check: auto (CUDA when available), cpu, cuda or cuda:N.")
    ] = "auto",
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON on stdout (for scripts).")] = False,
) -> None:
    import torch

    from flowcli.inference import resolve_device

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.partition(":")[0] == "mps":
        raise InputError(f"--device {device!r}: doctor checks cpu or cuda devices only; use --device cpu or cuda")
    dev = resolve_device(device)  # what every other --device takes: torch.device alone took cpu:1
    info = environment()
    check = self_check(device)
    checks = [("self-check", check)]
    if dev.type == "cpu" and check.backend == "torch" and info["TRITON_INTERPRET"] == "1" and info["triton"]:
        # On the CPU the dispatch keeps the reference; with the interpreter on, check Triton as well.
        checks.append(("self-check (triton interpreter)", self_check(device, backend="triton")))
    if json_output:
        extra = {"interpreter_check": asdict(checks[1][1])} if len(checks) > 1 else {}
        typer.echo(json.dumps({**info, "device": device, "self_check": asdict(check), **extra}, indent=2))
    else:
        rows = [
            ("flowcli", info["flowcli"] or "?"),
            ("python", info["python"]),
            ("torch", f"{info['torch']} (CUDA build: {info['torch_cuda_build'] or 'none'})"),
            ("triton", info["triton"] or "not installed (pip install 'flowcli[gpu]' for the fused kernels)"),
            ("onnxruntime", info["onnxruntime"] or "not installed (pip install 'flowcli[onnx]' for flowcli export)"),
            ("CUDA available", "yes" if info["cuda_available"] else "no"),
        ]
        for index, gpu in enumerate(info["cuda_devices"]):
            rows.append((f"cuda:{index}", f"{gpu['name']} (sm {gpu['capability']}, {gpu['memory_gib']} GiB)"))
        rows += [
            ("device", device),
            ("correlation backend", check.backend + (" (forced by FLOWCLI_CORR)" if info["FLOWCLI_CORR"] else "")),
        ]
        if info["TRITON_INTERPRET"]:
            rows.append(("TRITON_INTERPRET", info["TRITON_INTERPRET"]))
        for label, result in checks:
            status = "passed" if result.ok else "FAILED"
            if not result.max_error:  # stopped before computing anything (an unknown or unusable backend)
                rows.append((label, f"{status}: {result.message}"))
                continue
            worst = max(result.max_error.values())
            rows.append(
                (label, f"{status} in {result.seconds:.2f} s, max error {worst:.1e} vs float64 ({result.message})")
            )
        width = max(len(key) for key, _ in rows)
        for key, value in rows:
            typer.echo(f"{key.ljust(width)}  {value}")
    for _, result in checks:
        if not result.ok:
            raise FlowcliError(f"correlation self-check failed on {device} ({result.backend}): {result.message}")
