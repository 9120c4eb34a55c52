"""Models and `load_model(name_or_path)`."""

from __future__ import annotations

from pathlib import Path

import torch

from flowcli.models.pwc import FlowNet, FlowNetConfig, FlowOutput

DEFAULT_MODEL = "flowcli-pwc-synth"

__all__ = ["FlowNet", "FlowNetConfig", "FlowOutput", "load_model", "DEFAULT_MODEL"]


def load_model(name_or_path: str | Path | None = None, device: str | torch.device = "cpu", offline: bool = False):
    """Load a flow model by registry name (see `flowcli weights list`), hf:// spec, URL or local path.

    Registry and remote files are fetched into the cache on first use and sha256-verified.
    """
    from flowcli.checkpoint import load_checkpoint
    from flowcli.registry import resolve

    path = resolve(str(name_or_path or DEFAULT_MODEL), offline=offline)
    return load_checkpoint(path, device=device)
