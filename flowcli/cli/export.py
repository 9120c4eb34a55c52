"""`flowcli export`: a flow model as an ONNX graph, for onnxruntime, TensorRT, OpenVINO and the like."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional
from urllib.parse import urlsplit

import typer

from flowcli.cli.options import MODEL_PANEL, OUTPUT_PANEL, OfflineOption, OverwriteOption, WeightsOption, nonempty_path
from flowcli.errors import InputError, OutputError

EXPORT_HELP = (
    "Export a flow model to ONNX, to run it without flowcli or PyTorch.\n\n"
    "The graph takes image1 and image2, float32 RGB in [0, 1] as [B, 3, H, W] with any batch and size (padding "
    "to the network's multiple of 64 happens inside), and gives flow [B, 2, H, W] in pixels (x, y), frame 1 -> "
    "frame 2: what `flowcli estimate` computes in one untiled fp32 pass. --occlusion adds flow_backward and "
    "occlusion [B, 1, H, W] (1 = occluded), from both directions in one batched pass. The file's metadata "
    "records the weights it came from (name and sha256) and the architecture.\n\n"
    "Before the file is written, the graph runs in onnxruntime on a rendered test pair and must match PyTorch's "
    "flow within 0.01 px (--no-check skips this; without onnxruntime it is skipped with a warning).\n\n"
    "Needs the onnx extra: pip install 'flowcli\\[onnx]'.\n\n"
    "Examples:\n\n"
    "  flowcli export                          # the default model -> flowcli-pwc-synth.onnx\n\n"
    "  flowcli export -w my_adapted.safetensors -o adapted.onnx --occlusion\n\n"
    "Exit codes: 0 ok, 1 other error (the check failed, onnx missing), 2 input error, 3 output error (the file "
    "exists without --overwrite, a folder that cannot be written), 4 weights error, 130 interrupted (Ctrl-C), "
    "143 terminated (SIGTERM)."
)


def export_command(
    weights: WeightsOption = None,
    output: Annotated[
        Optional[str],  # a str: a Path would read -o "" as "."
        typer.Option("-o", "--output", metavar="PATH", help="The .onnx file to write; default: NAME.onnx in the "
                     "current folder, NAME being the registry name (a / in it as -) or the checkpoint's file name.",
                     rich_help_panel=OUTPUT_PANEL, show_default=False),
    ] = None,
    occlusion: Annotated[
        bool, typer.Option("--occlusion", help="Also output the backward flow and the forward-backward occlusion.",
                           rich_help_panel=OUTPUT_PANEL)
    ] = False,
    opset: Annotated[
        int, typer.Option("--opset", help="ONNX opset, from 16 (GridSample) to the newest that torch's exporter writes "
                          "(20 in torch 2.13).", rich_help_panel=MODEL_PANEL)
    ] = 17,
    check: Annotated[
        bool, typer.Option("--check/--no-check", help="Run the graph in onnxruntime and compare with PyTorch "
                           "before writing it.", rich_help_panel=OUTPUT_PANEL)
    ] = True,
    overwrite: OverwriteOption = False,
    offline: OfflineOption = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object on stdout: path, inputs, outputs, opset, seconds, "
                           "max_difference (px, null when not checked), check_size, weights, sha256.",
                           rich_help_panel=OUTPUT_PANEL)
    ] = False,
    quiet: Annotated[
        bool, typer.Option("-q", "--quiet", help="No messages on stderr (warnings and errors stay).",
                           rich_help_panel=OUTPUT_PANEL)
    ] = False,
):
    """Export a flow model to ONNX (help text: EXPORT_HELP)."""
    from rich.markup import escape  # a path as given: out[v2]/m.onnx is not "out" in style v2

    from flowcli.console import stderr
    from flowcli.export import check_opset, export_onnx, require_onnx
    from flowcli.io.atomic import check_creatable
    from flowcli.models import DEFAULT_MODEL, load_model_and_file

    check_opset(opset, name="--opset")
    output = nonempty_path(output, "-o", "the .onnx file to write, or leave -o out for NAME.onnx")
    name = weights or DEFAULT_MODEL
    if output is None:
        output = _default_output(name)
    if output.is_dir() and output.suffix.lower() != ".onnx":  # `-o models/`
        raise OutputError(f"-o {output} is a folder; give the file's name, e.g. -o {output / _default_output(name)}")
    if output.name.lower() == ".onnx":  # Path('.onnx') is a hidden file with no suffix
        raise InputError(f"-o {output} has no name before .onnx; give one, such as model.onnx")
    if output.suffix.lower() != ".onnx":
        raise InputError(f"-o {output} should end in .onnx")
    # before loading the weights, so that a refused run downloads nothing
    check_creatable(output, overwrite, hint="choose another with -o")
    require_onnx()
    model, checkpoint, sha256 = load_model_and_file(weights, device="cpu", offline=offline, quiet=quiet)
    if not quiet:
        # soft_wrap: a log (no terminal) is not wrapped at 80 columns, and the path stays whole
        stderr.print(f"exporting {escape(name)} to {escape(str(output))} ...", highlight=False, soft_wrap=True)
    report = export_onnx(
        model, output, occlusion=occlusion, opset=opset, check=check, overwrite=overwrite,
        source={"weights": name, "file": Path(checkpoint).name, "sha256": sha256},
    )  # fmt: skip
    if not quiet:
        checked = (
            f"onnxruntime matches PyTorch within {report.max_difference:.1e} px"
            if report.max_difference is not None
            else "not checked"
        )
        size_mb = output.stat().st_size / 1e6
        stderr.print(
            f"wrote {escape(str(output))} ({size_mb:.1f} MB, {report.seconds:.1f} s); {checked}",
            highlight=False,
            soft_wrap=True,
        )
    if as_json:
        payload = {
            "path": str(report.path), "inputs": report.inputs, "outputs": report.outputs, "opset": report.opset,
            "seconds": round(report.seconds, 2), "max_difference": report.max_difference,
            "check_size": report.check_size, "weights": name, "sha256": sha256,
        }  # fmt: skip
        typer.echo(json.dumps(payload))


def _default_output(spec: str) -> Path:
    """NAME.onnx in the current folder: a registry name with its slashes as dashes (a name may have them), else
    the checkpoint's file name without its extension (and, for hf://OWNER/REPO/FILE@REV and URLs, without the
    revision, query or fragment)."""
    from flowcli.registry import SOURCE_PREFIXES, list_models

    if spec in list_models():
        return Path(spec.replace("/", "-").replace("\\", "-") + ".onnx")
    if spec.startswith(SOURCE_PREFIXES):
        spec = urlsplit(spec.split("@")[0] if spec.startswith("hf://") else spec).path
    return Path(f"{Path(spec).stem or 'model'}.onnx")


def register(app: typer.Typer) -> None:
    app.command("export", help=EXPORT_HELP)(export_command)
