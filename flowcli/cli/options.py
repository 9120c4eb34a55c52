"""Options that `flowcli estimate` and `flowcli stereo` share word for word, and their defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

INPUT_PANEL = "Inputs"
OUTPUT_PANEL = "Outputs"
MODEL_PANEL = "Model"

DEFAULT_OUTPUT = Path("flowcli_out")
DEFAULT_MAX_PIXELS = 8_000_000
DEFAULT_FPS = 10.0
PRECISION_NAMES = ("fp32", "fp16", "bf16")  # flowcli.inference.PRECISIONS, without importing torch

# ---- outputs
OutputDirOption = Annotated[
    Path, typer.Option("-o", "--output", help="Output folder (created when needed).", rich_help_panel=OUTPUT_PANEL)
]
NameOption = Annotated[
    str, typer.Option("--name", help="File name template, see above.", rich_help_panel=OUTPUT_PANEL)
]
FpsOption = Annotated[
    Optional[float],
    typer.Option("--fps", help=f"Frame rate of --video; default: the source video's (divided by --step), "
                 f"{DEFAULT_FPS:g} for images.", rich_help_panel=OUTPUT_PANEL, show_default=False),
]
OverwriteOption = Annotated[
    bool, typer.Option("--overwrite", help="Replace existing output files.", rich_help_panel=OUTPUT_PANEL)
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="One JSON line per pair on stdout (keys above).", rich_help_panel=OUTPUT_PANEL)
]
QuietOption = Annotated[
    bool, typer.Option("-q", "--quiet", help="No progress bar or info on stderr (warnings and errors stay).",
                       rich_help_panel=OUTPUT_PANEL)
]


def formats_option(formats: dict[str, str]):
    """`-f/--formats`, listing this command's output formats in its help."""
    return Annotated[
        Optional[str],
        typer.Option("-f", "--formats", help=f"Comma-separated outputs: {','.join(formats)} or all.",
                     rich_help_panel=OUTPUT_PANEL, show_default=False),
    ]


def format_flag(formats: dict[str, str], name: str, note: str = ""):
    """`--NAME` (underscores as dashes): a one-format switch whose help is the format's description."""
    description = formats[name]
    return typer.Option(f"--{name.replace('_', '-')}", help=description[0].upper() + description[1:] + note + ".",
                        rich_help_panel=OUTPUT_PANEL)


# ---- model
WeightsOption = Annotated[
    Optional[str],
    typer.Option("--weights", help="Registry name (flowcli weights list), checkpoint file, hf://OWNER/REPO/FILE or "
                 "https:// URL. Default: the registry default model.", rich_help_panel=MODEL_PANEL, show_default=False),
]
DeviceOption = Annotated[
    str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.", rich_help_panel=MODEL_PANEL)
]
PrecisionOption = Annotated[
    Optional[str],
    typer.Option("--precision", help="fp32, fp16 or bf16; default fp16 on CUDA, fp32 elsewhere.",
                 rich_help_panel=MODEL_PANEL, show_default=False),
]
BatchSizeOption = Annotated[
    int, typer.Option("--batch-size", help="Pairs per forward pass (sequences).", rich_help_panel=MODEL_PANEL)
]
MaxPixelsOption = Annotated[
    int, typer.Option("--max-pixels", help="Larger frames run in overlapping tiles; 0 = never tile.",
                      rich_help_panel=MODEL_PANEL)
]
OfflineOption = Annotated[
    bool, typer.Option("--offline", help="Use only cached weights, never the network.", rich_help_panel=MODEL_PANEL)
]
