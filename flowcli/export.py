"""Export a flow model to ONNX, to run it without flowcli or PyTorch (onnxruntime, TensorRT, OpenVINO).

The graph computes what `estimate_flow` computes in one untiled fp32 pass:
- inputs `image1`, `image2`: float RGB in [0, 1], [B, 3, H, W], batch, height and width free;
  the frames are padded inside the graph to the network's size multiple and the outputs cropped back;
- output `flow`: [B, 2, H, W] in pixels (x, y), frame 1 -> frame 2;
- with `occlusion=True` also `flow_backward` [B, 2, H, W] and `occlusion` [B, 1, H, W] (1 = occluded,
  the forward-backward check of `estimate_flow(..., occlusion=True)`), both directions in one batched pass.

The file is self-describing: its metadata holds the flowcli version, the architecture config, the source
checkpoint and its sha256, and the input and output conventions above.

The cost volume is traced from the "shifts" correlation backend (plain slices and products), since the
"torch" backend's autograd function cannot be exported. The export uses torch's TorchScript-based
exporter: torch.export's exporter needs minutes for free height and width on this network (376 s against
15 s for the same graph, on 2 busy CPU cores), for the same outputs.
"""

from __future__ import annotations

import copy
import inspect
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from flowcli.console import warn
from flowcli.errors import FlowcliError, InputError
from flowcli.inference import forward_backward_occlusion
from flowcli.io.atomic import atomic_path
from flowcli.ops.correlation import use_backend

CHECK_TOLERANCE = 0.01  # px; fp32 rounding through the network gives about 1e-4
DEFAULT_OPSET = 17  # GridSample needs 16; 17 is what onnxruntime >= 1.12, TensorRT 8.6 and OpenVINO 2023 all read
MIN_OPSET = 16  # GridSample, which the flow warp needs


def _newest_opset() -> int:
    """The newest opset torch's TorchScript-based exporter writes (20 in torch 2.13). Above it torch only warns
    that it is unsupported, and from 24 on it fails with a traceback."""
    try:
        from torch.onnx import _constants  # private, but the only place torch says which opsets it writes
    except ImportError:
        return 20
    return getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", getattr(_constants, "ONNX_MAX_OPSET", 20))


MAX_OPSET = _newest_opset()
# torch >= 2.5 takes `dynamo` (and from 2.9 defaults to the torch.export-based exporter); older ones have
# only the TorchScript-based one
_TORCHSCRIPT_EXPORTER = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
# the example pair the graph is traced with; any size works afterwards
_TRACE_SIZE = (128, 192)


@dataclass
class ExportReport:
    path: Path
    inputs: list[str]
    outputs: list[str]
    opset: int
    seconds: float
    # largest |ONNX - PyTorch| flow difference (px) on the check pair; None when not checked
    max_difference: float | None = None
    check_size: tuple[int, int] | None = None


class FlowGraph(nn.Module):
    """What the exported graph computes (see the module docstring), as a module torch.onnx can trace."""

    def __init__(self, model: nn.Module, occlusion: bool = False):
        super().__init__()
        self.model = model
        self.occlusion = occlusion

    def forward(self, image1: torch.Tensor, image2: torch.Tensor):
        h, w = image1.shape[-2:]
        multiple = self.model.config.size_multiple
        pad = (0, (-w) % multiple, 0, (-h) % multiple)
        image1, image2 = F.pad(image1, pad, mode="replicate"), F.pad(image2, pad, mode="replicate")
        if not self.occlusion:
            return self.model(image1, image2).flow[..., :h, :w]
        b = image1.shape[0]
        flows = self.model(torch.cat((image1, image2)), torch.cat((image2, image1))).flow[..., :h, :w]
        forward, backward = flows[:b], flows[b:]
        return forward, backward, forward_backward_occlusion(forward, backward)


def require_onnx():
    """The onnx module; FlowcliError if it is not installed."""
    try:
        import onnx
    except ImportError:
        raise FlowcliError("exporting to ONNX needs the onnx package; pip install 'flowcli[onnx]'") from None
    return onnx


def check_opset(opset: int, name: str = "opset") -> None:
    """InputError unless the flow warp can be written in `opset` (GridSample) and torch's exporter writes it."""
    if opset < MIN_OPSET:
        raise InputError(f"{name} {opset} has no GridSample, which the flow warp needs; use {MIN_OPSET} to {MAX_OPSET}")
    if opset > MAX_OPSET:
        raise InputError(
            f"{name} {opset} is newer than torch {torch.__version__}'s ONNX exporter can write; "
            f"use {MIN_OPSET} to {MAX_OPSET}"
        )


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    occlusion: bool = False,
    opset: int = DEFAULT_OPSET,
    source: dict | None = None,
    check: bool = True,
    overwrite: bool = False,
) -> ExportReport:
    """Write `model` as an ONNX graph to `path` (atomically). `source` (e.g. the checkpoint's name and sha256)
    goes into the file's metadata. The model itself is left as it was: the export traces a float32 CPU copy.

    check=True runs the graph in onnxruntime on a rendered pair before the file is published and raises
    FlowcliError (writing nothing) if its flow differs from PyTorch's by more than CHECK_TOLERANCE px.
    Without onnxruntime installed the check is skipped with a warning (`max_difference` None).
    An opset outside MIN_OPSET..MAX_OPSET raises InputError before any work.
    """
    onnx = require_onnx()
    check_opset(opset)
    started = time.perf_counter()
    graph = FlowGraph(copy.deepcopy(model).float().cpu().eval().to(memory_format=torch.contiguous_format), occlusion)
    inputs = ["image1", "image2"]
    outputs = ["flow", "flow_backward", "occlusion"] if occlusion else ["flow"]
    free_axes = {0: "batch", 2: "height", 3: "width"}
    generator = torch.Generator().manual_seed(0)
    example = tuple(torch.rand(1, 3, *_TRACE_SIZE, generator=generator) for _ in inputs)
    with atomic_path(path, overwrite=overwrite) as tmp:
        with use_backend("shifts"), torch.no_grad(), warnings.catch_warnings():
            # the TorchScript exporter is chosen on purpose (module docstring); the tracer's notes on shape
            # arithmetic concern the size check, which padding inside the graph always passes
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message="Constant folding")
            torch.onnx.export(
                graph, example, str(tmp), **_TORCHSCRIPT_EXPORTER, opset_version=opset, input_names=inputs,
                output_names=outputs, dynamic_axes={name: free_axes for name in inputs + outputs},
            )  # fmt: skip
        proto = onnx.load(str(tmp))
        # the tracer leaves the channel axes symbolic (the occlusion's named "batch", as if it had B channels)
        channels = {"flow": 2, "flow_backward": 2, "occlusion": 1}
        for output in proto.graph.output:
            output.type.tensor_type.shape.dim[1].dim_value = channels[output.name]
        metadata = {
            "flowcli.version": _flowcli_version(),
            "flowcli.config": json.dumps(model.config.to_dict()),
            "flowcli.source": json.dumps(source or {}),
            "flowcli.inputs": "image1, image2: float32 RGB in [0, 1], [B, 3, H, W], any B, H, W",
            "flowcli.outputs": "flow: [B, 2, H, W] pixels (x, y), frame 1 -> 2"
            + ("; flow_backward: [B, 2, H, W] frame 2 -> 1; occlusion: [B, 1, H, W] 1 = occluded" if occlusion else ""),
        }
        for key, value in metadata.items():
            proto.metadata_props.add(key=key, value=value)
        proto.producer_name = "flowcli"
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        report = ExportReport(Path(path), inputs, outputs, opset, 0.0)
        if check and _has_onnxruntime():
            image1, image2 = check_pair()
            report.max_difference = check_export(tmp, model, image1, image2)
            report.check_size = tuple(image1.shape[-2:])
            if not report.max_difference <= CHECK_TOLERANCE:  # also NaN
                raise FlowcliError(
                    f"the exported graph's flow differs from PyTorch's by up to {report.max_difference:.3g} px "
                    f"(more than {CHECK_TOLERANCE} px) on a test pair; nothing was written. Try another --opset"
                )
        elif check:
            warn("onnxruntime is not installed, so the exported graph was not checked; pip install 'flowcli[onnx]'")
    report.seconds = time.perf_counter() - started
    return report


def _has_onnxruntime() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def _flowcli_version() -> str:
    from flowcli import __version__

    return __version__


def onnx_session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session for an exported graph; FlowcliError if onnxruntime is not installed."""
    try:
        import onnxruntime
    except ImportError:
        raise FlowcliError("running an ONNX graph needs onnxruntime; pip install 'flowcli[onnx]'") from None
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session, image1: torch.Tensor, image2: torch.Tensor) -> dict[str, torch.Tensor]:
    """The graph's outputs by name, for frames [B, 3, H, W] float RGB in [0, 1]."""
    feed = {"image1": image1.float().cpu().numpy(), "image2": image2.float().cpu().numpy()}
    names = [output.name for output in session.get_outputs()]
    return {name: torch.from_numpy(value) for name, value in zip(names, session.run(names, feed))}


def check_export(path: str | Path, model: nn.Module, image1: torch.Tensor, image2: torch.Tensor) -> float:
    """Largest |ONNX - PyTorch| difference (px) of the forward flow on one pair, both in fp32 on the CPU."""
    from flowcli.inference import estimate_flow

    onnx_flow = run_onnx(onnx_session(path), image1, image2)["flow"]
    reference = estimate_flow(copy.deepcopy(model).float().cpu().eval(), image1, image2).forward
    return float((onnx_flow - reference).abs().max())


def check_pair(height: int = 244, width: int = 332, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A rendered scene with layered motion, at a size that is not a multiple of 64 (so the padding is checked)."""
    from flowcli.synth.generator import SynthConfig, generate_sample

    config = SynthConfig(height=height, width=width, photometric=False)
    sample = generate_sample(config, torch.Generator().manual_seed(seed))
    return sample.image1[None], sample.image2[None]
