"""Models and `load_model(name_or_path)`."""

from __future__ import annotations

import numbers
from pathlib import Path

import torch

from flowcli.models.pwc import FlowNet, FlowNetConfig, FlowOutput

DEFAULT_MODEL = "flowcli-pwc-synth"

__all__ = ["FlowNet", "FlowNetConfig", "FlowOutput", "load_model", "resolve_model_file", "DEFAULT_MODEL"]


def resolve_model_file(name_or_path: str | Path | None = None, offline: bool = False, quiet: bool = False) -> Path:
    """The verified local checkpoint for a flow model spec (default: the bundled model), fetched if needed; "" (an
    unset `-w "$WEIGHTS"`) is refused by `resolve`, not taken as the default."""
    from flowcli.errors import WeightsError
    from flowcli.registry import load_registry, resolve

    spec = str(DEFAULT_MODEL if name_or_path is None else name_or_path)
    entry = load_registry()["models"].get(spec)
    if entry is not None and entry.get("task") not in (None, "flow", "stereo"):
        raise WeightsError(f"{spec} is a {entry['task']} model, not a flow network; see `flowcli weights list`")
    return resolve(spec, offline=offline, quiet=quiet)


def load_model(
    name_or_path: str | Path | None = None,
    device: str | torch.device = "cpu",
    offline: bool = False,
    quiet: bool = False,
):
    """Load a flow model by registry name (see `flowcli weights list`), hf:// spec, URL or local path,
    onto `device` (a torch.device, a GPU number, or auto, cpu, cuda, cuda:N, mps).

    Registry and remote files are fetched into the cache on first use and sha256-verified.
    """
    from flowcli.checkpoint import load_checkpoint
    from flowcli.errors import InputError
    from flowcli.inference import resolve_device

    if isinstance(device, numbers.Integral) and not isinstance(device, bool):  # numpy integers too
        device = f"cuda:{int(device)}"  # torch's spelling of GPU number N, as in model.to(0)
    elif device is not None and not isinstance(device, (str, torch.device)):
        raise InputError(f"device must be auto, cpu, cuda, cuda:N, mps, a torch.device or a GPU number, got {device!r}")
    if isinstance(device, torch.device) and device.type in ("cuda", "mps"):
        device = str(device)  # checked like a string: an absent GPU is a one-line error, not torch's assertion
    device = resolve_device(device) if isinstance(device, str) else device
    return load_checkpoint(resolve_model_file(name_or_path, offline, quiet), device=device)


def load_model_and_file(name_or_path: str | Path | None, device, offline: bool = False, quiet: bool = False):
    """(model, checkpoint path, its sha256): what the CLIs need to record which weights made an output."""
    from flowcli.checkpoint import load_checkpoint
    from flowcli.registry import sha256_file

    path = resolve_model_file(name_or_path, offline, quiet)
    return load_checkpoint(path, device=device), path, sha256_file(path)
