"""Pictures of results: flow colour coding (Middlebury colour wheel, via flow_vis) and masks as PNG."""

from __future__ import annotations

import flow_vis
import numpy as np

from flowcli.io.flow_formats import as_flow_hw2, valid_mask, write_png

__all__ = ["flow_to_rgb", "mask_to_png_array", "write_png"]


def flow_to_rgb(flow, max_flow: float | None = None) -> np.ndarray:
    """Colour-code flow ([2, H, W] tensor or [H, W, 2] array) as uint8 RGB [H, W, 3].

    Hue is the direction, saturation the magnitude. Without `max_flow` the frame's largest valid
    magnitude is fully saturated (flow_vis's normalisation). With `max_flow`, magnitudes are divided by
    it and clamped to 1, so colours compare across frames. Unknown pixels (non-finite or >= 1e9) are black.
    """
    flow = as_flow_hw2(flow).astype(np.float64)
    known = valid_mask(flow)
    flow[~known] = 0.0
    if max_flow is None:
        rgb = flow_vis.flow_to_color(flow)
    else:
        if not (np.isfinite(max_flow) and max_flow > 0):
            raise ValueError(f"max_flow must be a finite positive number, got {max_flow}")
        # Divided by the larger of the magnitude and max_flow, so |uv| <= 1 and nothing overflows (flow / 1e-300
        # would, then its square). Beyond max_flow: the saturated colour of that direction (flow_vis would darken
        # it as 'out of range'); the tiny factor keeps rounding from pushing radius 1 over its test.
        radius = np.hypot(flow[:, :, 0], flow[:, :, 1])[:, :, None]
        uv = flow / np.maximum(radius, max_flow)
        uv /= 1.0 + 1e-9
        rgb = flow_vis.flow_uv_to_colors(uv[:, :, 0], uv[:, :, 1])
    rgb[~known] = 0
    return rgb


def mask_to_png_array(mask) -> np.ndarray:
    """A mask ([H, W], [1, H, W] or [1, 1, H, W]; tensor or array) as uint8 [H, W] for a PNG.

    bool and integer masks become 0 / 255 (nonzero = 255); float masks in [0, 1] (soft occlusion
    probabilities) are scaled to 0..255.
    """
    if hasattr(mask, "detach"):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    while mask.ndim > 2 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.ndim != 2:
        raise ValueError(f"a mask must be [H, W] (leading dims of 1 allowed), got {list(mask.shape)}")
    if np.issubdtype(mask.dtype, np.floating):
        return np.rint(np.clip(np.nan_to_num(mask), 0.0, 1.0) * 255).astype(np.uint8)
    return np.where(mask != 0, 255, 0).astype(np.uint8)
