"""Options that `flowcli estimate` and `flowcli stereo` share word for word (the "Model" help panel)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

MODEL_PANEL = "Model"

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
OfflineOption = Annotated[
    bool, typer.Option("--offline", help="Use only cached weights, never the network.", rich_help_panel=MODEL_PANEL)
]
