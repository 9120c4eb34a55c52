"""Synthetic stereo video: a layered 2.5D world seen by a moving stereo rig, with exact ground truth.

The world is a stack of fronto-parallel textured planes (the generator's soft-edged shapes and
textures), each at its own depth Z. A rectified rig (focal f px, baseline B m, right camera B to the
right of the left one) moves through it, and the foreground layers move too. Canonical coordinates of
a layer are its left-image coordinates at frame 0; at frame t a layer at relative lateral offset
(a, b) and depth Z_t is seen at

    left:   x = cx + s (q_x - cx) + f a / Z_t,   y = cy + s (q_y - cy) + f b / Z_t,   s = Z_0 / Z_t
    right:  the same x minus the disparity d_t = f B / Z_t, the same y,

an affine map per layer, view and frame, so everything is analytic: images (composited far to near),
disparity and depth of both views, flow between any two views (L_t -> L_t+1, R_t -> R_t+1, L_t -> R_t
= (-d, 0)) and occlusion (the target point leaves the image or lies under a nearer layer there).

By construction the Flow2Stereo constraints hold exactly at corresponding points: with u_l the flow
of a left pixel from t to t+1 and u_r the flow of its right correspondent,
u_r - u_l = (-d_t+1) - (-d_t) and v_r - v_l = 0.

    sample = generate_stereo_video(StereoVideoConfig(num_frames=3), torch.Generator().manual_seed(0))
    sample.left[t], sample.right[t], sample.disparity_left[t], sample.flow_left[t], sample.stereo_flow(t)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from flowcli.ops.warp import normalized_grid, pixel_grid
from flowcli.synth.generator import Shape, TextureBank, photometric_augment, procedural_texture

LEFT, RIGHT = 0, 1


@dataclass
class StereoVideoConfig:
    height: int = 256
    width: int = 320
    num_frames: int = 2
    min_layers: int = 2
    max_layers: int = 7
    min_disparity: float = 1.0  # px, the background's
    max_disparity: float = 48.0  # px, the nearest layer's (at frame 0)
    focal: float | None = None  # px; default: the image width
    baseline: float = 0.1  # m
    rig_speed: float = 0.4  # std of the rig's lateral (x, y) translation per frame, in baselines
    rig_forward: float = 0.03  # max forward (z) rig speed per frame, as a fraction of the nearest depth
    layer_speed: float = 0.4  # std of a foreground layer's own lateral speed per frame, in baselines
    layer_forward: float = 0.03  # max own z speed of a layer per frame, as a fraction of its depth
    real_texture_prob: float = 0.6
    edge_softness: tuple[float, float] = (0.3, 1.2)  # px
    photometric: bool = True
    noise_std: float = 0.02


@dataclass
class StereoVideoSample:
    left: list[torch.Tensor]  # T x [3, H, W] in [0, 1]
    right: list[torch.Tensor]
    disparity_left: list[torch.Tensor]  # T x [1, H, W] px, of the visible layer
    disparity_right: list[torch.Tensor]
    depth_left: list[torch.Tensor]  # T x [1, H, W] metres
    flow_left: list[torch.Tensor]  # T-1 x [2, H, W] L_t -> L_t+1
    flow_right: list[torch.Tensor]  # T-1 x [2, H, W] R_t -> R_t+1
    occlusion_left: list[torch.Tensor]  # T-1 x [1, H, W] 1 = pixel of L_t not visible in L_t+1
    occlusion_right: list[torch.Tensor]  # T-1 x [1, H, W] same for R_t in R_t+1
    occlusion_stereo: list[torch.Tensor]  # T x [1, H, W] 1 = pixel of L_t not visible in R_t
    layer_index_left: list[torch.Tensor] = field(default_factory=list)  # T x [H, W] visible layer (0 = bg)
    layer_index_right: list[torch.Tensor] = field(default_factory=list)
    focal: float = 0.0
    baseline: float = 0.0
    cx: float = 0.0
    cy: float = 0.0

    def stereo_flow(self, t: int = 0) -> torch.Tensor:
        """[2, H, W] left -> right flow at frame t: (-disparity, 0)."""
        d = self.disparity_left[t]
        return torch.cat((-d, torch.zeros_like(d)))


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def _normal(gen: torch.Generator) -> float:
    return float(torch.randn((), generator=gen))


def _apply(m: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    m = m.float()
    return torch.einsum("ij,jhw->ihw", m[:2, :2], coords) + m[:2, 2, None, None]


class StereoScene:
    """The world and the rig's trajectory; renders any view (LEFT / RIGHT) at any frame with exact GT."""

    def __init__(self, cfg: StereoVideoConfig, gen: torch.Generator, textures: TextureBank | None = None):
        if cfg.num_frames < 2:
            raise ValueError("num_frames must be at least 2")
        if not 0 < cfg.min_disparity < cfg.max_disparity:
            raise ValueError("need 0 < min_disparity < max_disparity")
        self.cfg = cfg
        h, w = self.h, self.w = cfg.height, cfg.width
        self.focal = float(cfg.focal or w)
        self.baseline = float(cfg.baseline)
        self.cx, self.cy = (w - 1) / 2, (h - 1) / 2
        self.coords = pixel_grid(1, h, w, "cpu", torch.float32)[0]
        fb = self.focal * self.baseline
        n = int(torch.randint(cfg.min_layers, cfg.max_layers + 1, (1,), generator=gen))

        def texture():
            if textures is not None and _uniform(gen, 0, 1) < cfg.real_texture_prob:
                return textures.sample(h, w, gen)
            return procedural_texture(h, w, gen)

        # Layer 0 is the background, the farthest; foreground disparities spread over the range, nearer more rarely.
        disparities = [cfg.min_disparity] + sorted(
            cfg.min_disparity + (cfg.max_disparity - cfg.min_disparity) * _uniform(gen, 0.05, 1.0) ** 1.5
            for _ in range(n)
        )
        depth0 = torch.tensor([fb / d for d in disparities], dtype=torch.float64)
        self.shapes: list[Shape | None] = [None]
        self.textures = [texture()]
        for _ in range(n):
            size = min(h, w) * math.exp(_uniform(gen, math.log(0.08), math.log(0.45)))
            center = (_uniform(gen, -0.1, 1.1) * w, _uniform(gen, -0.1, 1.1) * h)
            kind = ("ellipse", "polygon", "blob")[int(torch.randint(3, (1,), generator=gen))]
            self.shapes.append(Shape(kind, center, size, gen, h, w, _uniform(gen, *cfg.edge_softness)))
            self.textures.append(texture())

        # Motion: constant velocities plus a little per-frame jitter; everything relative to the left camera.
        t_count = cfg.num_frames
        b = self.baseline
        rig_v = torch.tensor([cfg.rig_speed * b * _normal(gen), 0.5 * cfg.rig_speed * b * _normal(gen),
                              cfg.rig_forward * float(depth0.min()) * _uniform(gen, -1, 1)], dtype=torch.float64)
        layer_v = torch.zeros(n + 1, 3, dtype=torch.float64)
        for i in range(1, n + 1):
            layer_v[i] = torch.tensor([cfg.layer_speed * b * _normal(gen), cfg.layer_speed * b * _normal(gen),
                                       cfg.layer_forward * float(depth0[i]) * _uniform(gen, -1, 1)])
        offsets = torch.zeros(t_count, n + 1, 3, dtype=torch.float64)  # (a, b, Z) of each layer at each frame
        offsets[0, :, 2] = depth0
        for t in range(1, t_count):
            jitter = 0.1 * b * torch.randn(3, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 1.0, 0.0])
            offsets[t] = offsets[t - 1] + layer_v - rig_v - jitter
        offsets[..., 2] = torch.maximum(offsets[..., 2], 0.3 * depth0)  # never reach the camera
        self.offsets = offsets
        self.layers = n + 1

    # ---- geometry

    def depth(self, layer: int, t: int) -> float:
        return float(self.offsets[t, layer, 2])

    def disparity_of(self, layer: int, t: int) -> float:
        return self.focal * self.baseline / self.depth(layer, t)

    def matrix(self, layer: int, view: int, t: int) -> torch.Tensor:
        """3x3 float64: canonical (left, frame 0) coordinates of `layer` -> image coordinates of (view, t)."""
        a, b, z = self.offsets[t, layer].tolist()
        s = float(self.offsets[0, layer, 2]) / z
        m = torch.eye(3, dtype=torch.float64)
        m[0, 0] = m[1, 1] = s
        m[0, 2] = self.cx * (1 - s) + self.focal * a / z - (self.focal * self.baseline / z if view == RIGHT else 0.0)
        m[1, 2] = self.cy * (1 - s) + self.focal * b / z
        return m

    def _order(self, t: int) -> list[int]:
        """Layers far to near at frame t."""
        return sorted(range(self.layers), key=lambda i: -self.depth(i, t))

    def _canonical(self, layer: int, view: int, t: int, at: torch.Tensor) -> torch.Tensor:
        return _apply(torch.linalg.inv(self.matrix(layer, view, t)), at)

    def _alpha(self, layer: int, pts: torch.Tensor) -> torch.Tensor:
        return torch.ones(pts.shape[-2:]) if layer == 0 else self.shapes[layer].alpha(pts)

    # ---- rendering and ground truth

    def render(self, view: int, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(image [3, H, W], visible layer index [H, W]) of a view at frame t."""
        image = torch.zeros(3, self.h, self.w)
        index = torch.zeros(self.h, self.w, dtype=torch.long)
        for i in self._order(t):
            pts = self._canonical(i, view, t, self.coords)
            grid = normalized_grid(pts[None])
            colour = F.grid_sample(self.textures[i][None], grid, mode="bilinear", padding_mode="reflection",
                                   align_corners=True)[0]
            alpha = self._alpha(i, pts)[None]
            image = alpha * colour + (1 - alpha) * image
            index[alpha[0] > 0.5] = i
        return image, index

    def disparity_map(self, index: torch.Tensor, t: int) -> torch.Tensor:
        values = torch.tensor([self.disparity_of(i, t) for i in range(self.layers)], dtype=torch.float32)
        return values[index][None]

    def depth_map(self, index: torch.Tensor, t: int) -> torch.Tensor:
        values = torch.tensor([self.depth(i, t) for i in range(self.layers)], dtype=torch.float32)
        return values[index][None]

    def flow(self, index: torch.Tensor, source: tuple[int, int], target: tuple[int, int]):
        """(flow [2, H, W], occlusion [1, H, W]) from view/frame `source` to `target` ((view, t) tuples);
        `index` is the source's visible-layer map."""
        flow = torch.zeros(2, self.h, self.w)
        for i in range(self.layers):
            sel = index == i
            if sel.any():
                m = self.matrix(i, *target) @ torch.linalg.inv(self.matrix(i, *source))
                flow[:, sel] = (_apply(m, self.coords) - self.coords)[:, sel]
        moved = self.coords + flow
        occ = (moved[0] < 0) | (moved[0] > self.w - 1) | (moved[1] < 0) | (moved[1] > self.h - 1)
        t = target[1]
        source_depth = torch.tensor([self.depth(i, t) for i in range(self.layers)])[index]
        for j in range(1, self.layers):
            nearer = self.depth(j, t) < source_depth
            if nearer.any():
                occ |= nearer & (self._alpha(j, self._canonical(j, target[0], t, moved)) > 0.5)
        return flow, occ[None].float()

    def sample(self, gen: torch.Generator) -> StereoVideoSample:
        frames = range(self.cfg.num_frames)
        views = {(v, t): self.render(v, t) for t in frames for v in (LEFT, RIGHT)}
        idx = {key: index for key, (_, index) in views.items()}
        temporal_left = [self.flow(idx[LEFT, t], (LEFT, t), (LEFT, t + 1)) for t in frames[:-1]]
        temporal_right = [self.flow(idx[RIGHT, t], (RIGHT, t), (RIGHT, t + 1)) for t in frames[:-1]]
        stereo_occ = [self.flow(idx[LEFT, t], (LEFT, t), (RIGHT, t))[1] for t in frames]
        images = [views[LEFT, t][0] for t in frames] + [views[RIGHT, t][0] for t in frames]
        if self.cfg.photometric:
            images = photometric_augment(images, gen, self.cfg.noise_std)
        count = self.cfg.num_frames
        return StereoVideoSample(
            left=images[:count],
            right=images[count:],
            disparity_left=[self.disparity_map(idx[LEFT, t], t) for t in frames],
            disparity_right=[self.disparity_map(idx[RIGHT, t], t) for t in frames],
            depth_left=[self.depth_map(idx[LEFT, t], t) for t in frames],
            flow_left=[f for f, _ in temporal_left],
            flow_right=[f for f, _ in temporal_right],
            occlusion_left=[o for _, o in temporal_left],
            occlusion_right=[o for _, o in temporal_right],
            occlusion_stereo=stereo_occ,
            layer_index_left=[idx[LEFT, t] for t in frames],
            layer_index_right=[idx[RIGHT, t] for t in frames],
            focal=self.focal,
            baseline=self.baseline,
            cx=self.cx,
            cy=self.cy,
        )


def generate_stereo_video(
    cfg: StereoVideoConfig, gen: torch.Generator, textures: TextureBank | None = None
) -> StereoVideoSample:
    """One stereo clip of cfg.num_frames left/right frames with exact disparity, depth, flow and occlusion."""
    return StereoScene(cfg, gen, textures).sample(gen)
