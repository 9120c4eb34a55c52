"""flowcli: optical flow, stereo disparity, occlusion and 3D face fitting, as a library and a CLI.

    import flowcli
    model = flowcli.load_model()                       # the bundled default (see `flowcli weights list`)
    result = flowcli.estimate_flow(model, image1, image2, occlusion=True)

The names below are imported on first use, so `import flowcli` (and the CLI's start-up) stays light.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "load_model": "flowcli.models",
    "estimate_flow": "flowcli.inference",
    "evaluate": "flowcli.evaluation",
    "evaluate_predictions": "flowcli.evaluation",
    "estimate_disparity": "flowcli.stereo",
}

__all__ = ["__version__", *_LAZY]


def __dir__() -> list[str]:  # the lazy names too, for tab completion and help()
    return sorted({*globals(), *_LAZY})


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'flowcli' has no attribute {name!r}")
