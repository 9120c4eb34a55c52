"""Overlay pictures: the fitted mesh, Lambert-shaded, and its landmarks drawn over the frame.

A painter's algorithm with PIL (front-facing triangles, far to near) is enough for one face region of
about 18k triangles and needs no GPU or OpenGL.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def render_overlay(
    image: np.ndarray,
    meshes: list[tuple[np.ndarray, np.ndarray]],
    landmarks68: list[np.ndarray] = (),
    landmarks468: list[np.ndarray] = (),
    opacity: float = 0.55,
) -> np.ndarray:
    """image H x W x 3 uint8; meshes: (vertices V x 3 in image x, y, depth; triangles F x 3). Returns RGB."""
    base = Image.fromarray(image).convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    alpha = int(round(255 * opacity))
    for vertices, triangles in meshes:
        tri = vertices[triangles]  # F x 3 x 3
        normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        length = np.linalg.norm(normal, axis=1) + 1e-12
        # image x right, y down, depth away: a face towards the camera has a negative depth component
        facing = -normal[:, 2] / length
        front = np.nonzero(facing > 0.02)[0]
        order = front[np.argsort(-tri[front, :, 2].mean(1))]
        shade = (60 + 195 * np.clip(facing[order], 0, 1) ** 0.8).astype(int)
        for f, g in zip(order, shade):
            pts = [tuple(p) for p in tri[f, :, :2].tolist()]
            draw.polygon(pts, fill=(g, int(g * 0.92), int(g * 0.85), alpha))
    for pts in landmarks468:
        for x, y in np.asarray(pts)[:, :2].tolist():
            draw.point((x, y), fill=(0, 220, 255, 255))
    radius = max(1.5, min(image.shape[:2]) / 300)
    for pts in landmarks68:
        for x, y in np.asarray(pts)[:, :2].tolist():
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=(255, 40, 40, 255))
    return np.asarray(Image.alpha_composite(base, layer).convert("RGB"))
