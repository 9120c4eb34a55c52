"""Synthetic training scenes with exact flow and occlusion (FlyingChairs / AutoFlow style).

A scene is a background plus layers (ellipses, star polygons, noise blobs with soft edges), each
with a texture and its own affine motion M (the background too). Frame k shows layer i where its
canonical (frame-1) coordinates are M_i^-k(p), composited back to front, so every quantity is
analytic:
- forward flow at p in frame 1: M_i(p) - p for the topmost layer i at p;
- backward flow at p in frame 2: M_i^-1(p) - p;
- occlusion: p (layer i in frame 1) is occluded when its frame-2 position leaves the image or lies
  under a higher layer there, which is checked by evaluating the higher layers' shapes at that
  position, not by resampling masks.
Stereo scenes use purely horizontal motion: a slanted plane per layer, d(p) = a + b x + c y,
nearer layers larger, and the left-to-right flow u = -d (Flow2Stereo's view of stereo as flow).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from flowcli.ops.warp import normalized_grid, pixel_grid


@dataclass
class SynthConfig:
    height: int = 320
    width: int = 448
    min_layers: int = 3
    max_layers: int = 10
    layer_translation: float = 40.0  # std of a layer's translation scale (px); heavy-tailed below
    background_translation: float = 12.0
    rotation_deg: float = 8.0
    log_scale: float = 0.08
    shear: float = 0.05
    stereo: bool = False  # purely horizontal motion: image1 = left, image2 = right, flow u = -disparity
    max_disparity: float = 64.0
    num_frames: int = 2  # 3 gives a triplet with constant per-layer motion (SelFlow's temporal cue)
    real_texture_prob: float = 0.6
    edge_softness: tuple[float, float] = (0.3, 1.2)  # px
    photometric: bool = True
    noise_std: float = 0.02
    # Degradations of rendered frames (Sintel "final"-style), each applied to a sample with this
    # probability when `photometric` is on. Off by default so older recipes keep their exact data.
    motion_blur_prob: float = 0.0  # blur along each pixel's own motion, exposure up to one frame interval
    defocus_prob: float = 0.0  # Gaussian blur, sigma 0.5-2 px, same on every frame
    haze_prob: float = 0.0  # blend towards a grey-ish colour with a smooth vertical density ramp
    # Scene structure, also off by default (no random draws when 0).
    perspective_prob: float = 0.0  # background is a tilted plane seen by a moving camera (a homography)
    perspective_flow: float = 100.0  # largest background displacement of such a plane, px (drawn up to this)
    thin_prob: float = 0.0  # share of foreground layers that are thin bars, 1.5-6 px wide (legs, poles, wires)
    # Low light: the finished frames are dimmed by an exposure drawn log-uniformly down to `min_exposure`,
    # varying smoothly across the image (shadows), then quantised to 8 bits as a camera would.
    dark_prob: float = 0.0
    min_exposure: float = 1 / 8
    # Light that changes between the frames (a cloud, a moving lamp, auto-exposure): every frame after the
    # first is multiplied by its own smooth gain field, up to `illumination_change` in log units.
    illumination_prob: float = 0.0
    illumination_change: float = 0.4
    # A strong zoom of the background between the frames (a camera moving towards or away from a ground or a
    # wall): an anisotropic scale about a random focus, each axis up to `zoom_range` in log units. The default
    # background scales by a few per cent, and a model trained on that fails where a surface scales by a quarter.
    zoom_prob: float = 0.0
    zoom_range: float = 0.35
    # Cast shadows: 1-3 soft dark shapes over the scene, each moving by its own motion, unlike the surfaces they
    # fall on (a walker's shadow on a floor); the flow stays the surfaces'. Sintel's market_5 has one.
    shadow_prob: float = 0.0

    def __post_init__(self):
        if not 0 <= self.min_layers <= self.max_layers:
            raise ValueError(f"min_layers and max_layers need 0 <= min_layers <= max_layers, got {self.min_layers} "
                             f"and {self.max_layers}")
        if self.num_frames < 2:
            raise ValueError(f"num_frames must be at least 2, got {self.num_frames}")
        if not 0.0 < self.min_exposure <= 1.0:
            raise ValueError(f"min_exposure must be in (0, 1], got {self.min_exposure}")
        for name in (
            "real_texture_prob",
            "motion_blur_prob",
            "defocus_prob",
            "haze_prob",
            "perspective_prob",
            "thin_prob",
            "dark_prob",
            "illumination_prob",
            "zoom_prob",
            "shadow_prob",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a share between 0 and 1, got {getattr(self, name)}")
        # stereo flow is -disparity: a negative one made right images move the wrong way, without a word
        if not self.max_disparity >= 0:
            raise ValueError(f"max_disparity must be a number of pixels >= 0, got {self.max_disparity}")
        if not self.illumination_change >= 0:
            raise ValueError(f"illumination_change must be >= 0 (log units), got {self.illumination_change}")
        if not 0 <= self.zoom_range <= 1:
            raise ValueError(f"zoom_range must be between 0 and 1 (log units), got {self.zoom_range}")
        if not self.noise_std >= 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}")
        if not min(self.edge_softness) > 0:  # 0 divides by zero at a shape's edge; below 0 turns shapes inside out
            raise ValueError(
                f"edge_softness must be two widths in pixels above 0 (e.g. [0.3, 1.2]), got {list(self.edge_softness)}"
            )


@dataclass
class SynthSample:
    images: list[torch.Tensor]  # num_frames x [3, H, W] in [0, 1]
    flow_forward: torch.Tensor  # [2, H, W] frame 1 -> frame 2
    flow_backward: torch.Tensor  # [2, H, W] frame 2 -> frame 1
    occlusion_forward: torch.Tensor  # [1, H, W] 1 = pixel of frame 1 not visible in frame 2
    occlusion_backward: torch.Tensor  # [1, H, W] 1 = pixel of frame 2 not visible in frame 1
    layer_index: list[torch.Tensor] = field(default_factory=list)  # per frame [H, W] visible layer (0 = bg)
    flow_forward_23: torch.Tensor | None = None  # frame 2 -> frame 3 when num_frames == 3

    @property
    def image1(self):
        return self.images[0]

    @property
    def image2(self):
        return self.images[1]


class TextureBank:
    """Crops of real images or video frames, kept small in memory (uint8, at most `max_side`)."""

    def __init__(self, images: list[torch.Tensor]):
        self.images = images

    @staticmethod
    def stored(image: torch.Tensor, max_side: int = 640) -> torch.Tensor:
        """A float [3, H, W] image in [0, 1] as the bank keeps it: uint8, longest side at most max_side."""
        scale = max_side / max(image.shape[-2:])
        if scale < 1:
            image = F.interpolate(image[None], scale_factor=scale, mode="area")[0]
        return (image.clamp(0, 1) * 255).to(torch.uint8)

    @classmethod
    def from_paths(cls, paths: list[str | Path], max_images: int = 400, max_side: int = 640, frame_stride: int = 8):
        """Every `frame_stride`-th image of each folder or frame of each video, and each image file, in the
        order given, up to `max_images` in all. Every path is checked, those past that cap too: InputError
        unless each one exists and gives at least one readable image."""
        from flowcli.io.media import VideoReader, is_video, list_frames, read_image

        # a missing path or an empty folder is reported before any time is spent reading images
        frame_lists = {path: list_frames(path) for path in map(Path, paths) if path.is_dir() or not path.exists()}
        images: list[torch.Tensor] = []

        def keep(img: torch.Tensor):
            images.append(cls.stored(img, max_side))

        for path in map(Path, paths):
            room = max_images - len(images)
            if path in frame_lists:
                frames = frame_lists[path][:: frame_stride or 1]
                for frame in frames[:room] if room else frames[:1]:  # past the cap: read one, to check it
                    image = read_image(frame)
                    if room:
                        keep(image)
            elif is_video(path):
                with VideoReader(path) as reader:
                    for i, frame in enumerate(reader):
                        if len(images) >= max_images:  # past the cap, a video is only checked to give a frame
                            break
                        if i % frame_stride == 0:
                            keep(frame)
            else:
                image = read_image(path)
                if room:
                    keep(image)
        if not images:
            from flowcli.errors import InputError

            raise InputError(f"no texture images found in {', '.join(map(str, paths))}")
        return cls(images)

    def sample(self, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
        img = self.images[int(torch.randint(len(self.images), (1,), generator=gen))].float() / 255
        zoom = math.exp(_uniform(gen, math.log(0.6), math.log(2.0)))
        ch, cw = min(img.shape[1], max(8, int(h / zoom))), min(img.shape[2], max(8, int(w / zoom)))
        y = int(torch.randint(img.shape[1] - ch + 1, (1,), generator=gen))
        x = int(torch.randint(img.shape[2] - cw + 1, (1,), generator=gen))
        crop = img[:, y : y + ch, x : x + cw]
        if _uniform(gen, 0, 1) < 0.5:
            crop = crop.flip(-1)
        crop = F.interpolate(crop[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        # Recolour so one source image yields many textures.
        mix = torch.eye(3) + 0.3 * torch.randn(3, 3, generator=gen)
        crop = torch.einsum("ij,jhw->ihw", mix, crop - 0.5) + 0.5 + 0.1 * torch.randn(3, 1, 1, generator=gen)
        return crop.clamp(0, 1)


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def procedural_texture(h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    """Multi-octave coloured noise, sometimes with oriented stripes: structure at every scale.

    Octaves are accumulated coarse to fine (upsample x2, add noise), so the cost stays near one
    full-size image instead of one upsampling per octave.
    """
    octaves = 6
    size = (h // 2**octaves + 2, w // 2**octaves + 2)
    out = torch.zeros(3, *size)
    falloff = _uniform(gen, 0.5, 0.95)
    for octave in range(octaves, -1, -1):
        noise = torch.randn(3, *out.shape[-2:], generator=gen)
        if _uniform(gen, 0, 1) < 0.5:  # some octaves vary in brightness only
            noise = noise.mean(0, keepdim=True) * torch.rand(3, 1, 1, generator=gen) * 1.7
        out = out + falloff ** (octaves - octave) * _uniform(gen, 0.3, 1.0) * noise
        if octave:
            target = (max(h // 2 ** (octave - 1), out.shape[1]), max(w // 2 ** (octave - 1), out.shape[2]))
            out = F.interpolate(out[None], size=target, mode="bilinear", align_corners=False)[0]
    out = F.interpolate(out[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    out = torch.rand(3, 1, 1, generator=gen) + 0.12 * out / out.std().clamp_min(1e-6)
    if _uniform(gen, 0, 1) < 0.3:
        theta = _uniform(gen, 0, math.pi)
        freq = _uniform(gen, 0.05, 0.6)
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        stripes = torch.sin(freq * (xs * math.cos(theta) + ys * math.sin(theta)))
        out = out + 0.15 * stripes * torch.rand(3, 1, 1, generator=gen)
    return out.clamp(0, 1)


class Shape:
    """A soft-edged shape in canonical (frame-1) coordinates; alpha(coords) in [0, 1]."""

    def __init__(self, kind: str, center, size: float, gen: torch.Generator, h: int, w: int, softness: float):
        self.kind, self.center, self.size, self.softness = kind, center, size, softness
        self.angle = _uniform(gen, 0, 2 * math.pi)
        if kind == "ellipse":
            self.axes = (size, size * _uniform(gen, 0.3, 1.0))
        elif kind == "bar":
            self.half_width = _uniform(gen, 0.75, 3.0)
            self.half_length = size * _uniform(gen, 0.5, 1.5)
        elif kind == "polygon":
            n = int(torch.randint(3, 12, (1,), generator=gen))
            self.vertex_angles = torch.sort(torch.rand(n, generator=gen) * 2 * math.pi).values
            self.vertex_radii = size * (0.4 + 0.6 * torch.rand(n, generator=gen))
        else:  # blob: a thresholded smooth noise field, centred by a radial falloff
            cells = int(torch.randint(3, 7, (1,), generator=gen))
            self.field = torch.randn(1, 1, cells, cells, generator=gen)

    def signed_distance(self, coords: torch.Tensor) -> torch.Tensor:
        """Approximately the distance in pixels to the boundary, positive inside. coords [2, H, W]."""
        dx, dy = coords[0] - self.center[0], coords[1] - self.center[1]
        c, s = math.cos(self.angle), math.sin(self.angle)
        u, v = c * dx + s * dy, -s * dx + c * dy
        if self.kind == "ellipse":
            a, b = self.axes
            r = torch.sqrt((u / a) ** 2 + (v / b) ** 2 + 1e-12)
            return (1 - r) * b
        if self.kind == "bar":
            return torch.minimum(self.half_width - v.abs(), self.half_length - u.abs())
        radius = torch.sqrt(u * u + v * v + 1e-12)
        if self.kind == "polygon":
            phi = torch.atan2(v, u) % (2 * math.pi)
            angles = torch.cat([self.vertex_angles, self.vertex_angles[:1] + 2 * math.pi])
            radii = torch.cat([self.vertex_radii, self.vertex_radii[:1]])
            phi = torch.where(phi < angles[0], phi + 2 * math.pi, phi)
            k = torch.searchsorted(angles, phi.contiguous()).clamp(1, len(angles) - 1)
            t = (phi - angles[k - 1]) / (angles[k] - angles[k - 1])
            boundary = radii[k - 1] + t * (radii[k] - radii[k - 1])
            return boundary - radius
        grid = torch.stack((u / self.size, v / self.size), dim=-1)[None].clamp(-1, 1)
        noise = F.grid_sample(self.field, grid, mode="bicubic", align_corners=True)[0, 0]
        return self.size * (0.6 * noise + 1.0 - radius / self.size) * 0.5

    def alpha(self, coords: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.signed_distance(coords) / self.softness)


def _affine(center, tx, ty, angle, log_scale_x, log_scale_y, shear) -> torch.Tensor:
    """3x3 matrix p -> center + t + R S H (p - center)."""
    c, s = math.cos(angle), math.sin(angle)
    rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    scale = torch.diag(torch.tensor([math.exp(log_scale_x), math.exp(log_scale_y)], dtype=torch.float64))
    shr = torch.tensor([[1.0, shear], [0.0, 1.0]], dtype=torch.float64)
    a = rot @ scale @ shr
    cx, cy = center
    m = torch.eye(3, dtype=torch.float64)
    m[:2, :2] = a
    m[:2, 2] = torch.tensor([cx + tx, cy + ty], dtype=torch.float64) - a @ torch.tensor([cx, cy], dtype=torch.float64)
    return m


def _apply(m: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """The 3x3 transform `m` applied to pixel coordinates [2, H, W] (projective when its last row is not 0 0 1)."""
    projective = bool(m[2, 0] != 0 or m[2, 1] != 0)
    m = m.float()
    out = torch.einsum("ij,jhw->ihw", m[:2, :2], coords) + m[:2, 2, None, None]
    if projective:
        out = out / (m[2, 0] * coords[0] + m[2, 1] * coords[1] + m[2, 2])
    return out


def _heavy_tailed(gen: torch.Generator, scale: float) -> float:
    """A translation: mostly small, sometimes large (log-uniform magnitude, random direction)."""
    return scale * math.exp(_uniform(gen, math.log(0.05), math.log(2.5)))


def _random_motion(gen, center, cfg: SynthConfig, translation: float, strength: float = 1.0) -> torch.Tensor:
    mag, direction = _heavy_tailed(gen, translation), _uniform(gen, 0, 2 * math.pi)
    return _affine(
        center,
        mag * math.cos(direction),
        mag * math.sin(direction),
        math.radians(cfg.rotation_deg) * strength * float(torch.randn((), generator=gen)).__mul__(0.5),
        cfg.log_scale * strength * float(torch.randn((), generator=gen)),
        cfg.log_scale * strength * float(torch.randn((), generator=gen)),
        cfg.shear * strength * float(torch.randn((), generator=gen)),
    )


def _plane_motion(gen: torch.Generator, h: int, w: int, max_flow: float) -> torch.Tensor:
    """Homography K (I - T n^T) K^-1 of the plane n.X = 1 as the camera moves by T: a ground plane's flow.

    Unlike an affine motion its flow changes magnitude and direction across the image (large on the
    near side, zero at the focus of expansion). The tilt keeps the plane in front of the camera in every
    pixel (n.r >= 0.2 cos(tilt) over the image), and |T| <= 0.3 of the nearest depth keeps it there for
    two camera steps (three frames). T is then shrunk so no corner moves more than a draw up to `max_flow`.
    """
    f = w * _uniform(gen, 0.7, 1.4)
    k = torch.tensor([[f, 0.0, w / 2], [0.0, f, h / 2], [0.0, 0.0, 1.0]], dtype=torch.float64)
    k_inv = torch.linalg.inv(k)
    corners = torch.tensor([[0.0, 0.0, 1.0], [w, 0.0, 1.0], [0.0, h, 1.0], [w, h, 1.0]], dtype=torch.float64).T
    half_diagonal = math.hypot(w, h) / 2
    tilt = _uniform(gen, 0, math.atan(0.8 * f / half_diagonal))
    azimuth = _uniform(gen, 0, 2 * math.pi)
    normal = torch.tensor(
        [math.sin(tilt) * math.cos(azimuth), math.sin(tilt) * math.sin(azimuth), math.cos(tilt)], dtype=torch.float64
    )
    nearest = float(1 / (normal @ (k_inv @ corners)).max())  # depth of the closest corner's plane point
    direction = torch.randn(3, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 1.0, 2.0], dtype=torch.float64)
    translation = 0.3 * min(1.0, nearest) * direction / torch.linalg.vector_norm(direction)

    def homography(t: torch.Tensor) -> torch.Tensor:
        return k @ (torch.eye(3, dtype=torch.float64) - torch.outer(t, normal)) @ k_inv

    moved = homography(translation) @ corners
    largest = float(torch.linalg.vector_norm(moved[:2] / moved[2] - corners[:2], dim=0).max())
    target = max_flow * _uniform(gen, 0.1, 1.0)
    if largest > target:
        translation = translation * (target / largest)
    return homography(translation)


def _zoom_motion(gen: torch.Generator, h: int, w: int, largest: float) -> torch.Tensor:
    """An anisotropic scale about a focus inside the frame: a shared log-scale up to `largest` either way, split
    unevenly between the axes (a ground seen at a slant shrinks more along the rows than across them)."""
    focus = (_uniform(gen, 0, w), _uniform(gen, 0, h))
    shared = _uniform(gen, -largest, largest)
    uneven = _uniform(gen, -largest / 2, largest / 2)
    log_x = max(-largest, min(largest, shared + uneven))
    log_y = max(-largest, min(largest, shared - uneven))
    return _affine(focus, 0.0, 0.0, 0.0, log_x, log_y, 0.0)


def _stereo_motion(gen, h: int, w: int, disparity: float, cfg: SynthConfig) -> torch.Tensor:
    """x' = x - d(x, y) with d = a + b x + c y a slanted plane around `disparity` at the centre."""
    b = 0.1 * float(torch.randn((), generator=gen)) * disparity / w
    c = 0.1 * float(torch.randn((), generator=gen)) * disparity / h
    a = disparity - b * w / 2 - c * h / 2
    m = torch.eye(3, dtype=torch.float64)
    m[0, 0], m[0, 1], m[0, 2] = 1 - b, -c, -a
    return m


def generate_sample(cfg: SynthConfig, gen: torch.Generator, textures: TextureBank | None = None) -> SynthSample:
    h, w = cfg.height, cfg.width
    coords = pixel_grid(1, h, w, "cpu", torch.float32)[0]
    n_layers = int(torch.randint(cfg.min_layers, cfg.max_layers + 1, (1,), generator=gen))

    def texture():
        if textures is not None and _uniform(gen, 0, 1) < cfg.real_texture_prob:
            return textures.sample(h, w, gen)
        return procedural_texture(h, w, gen)

    center = (w / 2, h / 2)
    shapes: list[Shape | None] = [None]
    if cfg.stereo:
        disparities = sorted(_uniform(gen, 0, 1) ** 1.5 * cfg.max_disparity for _ in range(n_layers + 1))
        motions = [_stereo_motion(gen, h, w, d, cfg) for d in disparities]
    else:
        motions = [_random_motion(gen, center, cfg, cfg.background_translation, strength=0.5)]
        if cfg.perspective_prob > 0 and _uniform(gen, 0, 1) < cfg.perspective_prob:
            motions[0] = motions[0] @ _plane_motion(gen, h, w, cfg.perspective_flow)
        if cfg.zoom_prob > 0 and _uniform(gen, 0, 1) < cfg.zoom_prob:
            motions[0] = motions[0] @ _zoom_motion(gen, h, w, cfg.zoom_range)
    tex = [texture()]
    for i in range(n_layers):
        size = min(h, w) * math.exp(_uniform(gen, math.log(0.06), math.log(0.45)))
        c = (_uniform(gen, -0.1, 1.1) * w, _uniform(gen, -0.1, 1.1) * h)
        if cfg.thin_prob > 0 and _uniform(gen, 0, 1) < cfg.thin_prob:
            kind = "bar"
        else:
            kind = ("ellipse", "polygon", "blob")[int(torch.randint(3, (1,), generator=gen))]
        shapes.append(Shape(kind, c, size, gen, h, w, _uniform(gen, *cfg.edge_softness)))
        if not cfg.stereo:
            motions.append(_random_motion(gen, c, cfg, cfg.layer_translation))
        tex.append(texture())

    inverses = [torch.linalg.inv(m) for m in motions]

    def canonical(layer: int, frame: int, at: torch.Tensor) -> torch.Tensor:
        """Frame-1 coordinates of the layer point seen at `at` in frame `frame` (0-based)."""
        m = torch.linalg.matrix_power(inverses[layer], frame) if frame else torch.eye(3, dtype=torch.float64)
        return _apply(m, at)

    def sample_texture(layer: int, pts: torch.Tensor) -> torch.Tensor:
        grid = normalized_grid(pts[None])
        return F.grid_sample(tex[layer][None], grid, mode="bilinear", padding_mode="reflection", align_corners=True)[0]

    images, indices = [], []
    for frame in range(cfg.num_frames):
        image = sample_texture(0, canonical(0, frame, coords)) if frame else tex[0].clone()
        index = torch.zeros(h, w, dtype=torch.long)
        for i in range(1, n_layers + 1):
            pts = canonical(i, frame, coords)
            alpha = shapes[i].alpha(pts)[None]
            image = alpha * (sample_texture(i, pts) if frame else tex[i]) + (1 - alpha) * image
            index[alpha[0] > 0.5] = i
        images.append(image)
        indices.append(index)
    if cfg.shadow_prob > 0 and _uniform(gen, 0, 1) < cfg.shadow_prob:
        images = cast_shadows(images, gen, cfg, coords)

    def layer_flow(index: torch.Tensor, matrices: list[torch.Tensor]) -> torch.Tensor:
        flow = torch.zeros(2, h, w)
        for i, m in enumerate(matrices):
            sel = index == i
            if sel.any():
                flow[:, sel] = (_apply(m, coords) - coords)[:, sel]
        return flow

    def occluded(index: torch.Tensor, flow: torch.Tensor, target_frame: int) -> torch.Tensor:
        """Pixels whose point, moved by `flow`, leaves the image or lands under a higher layer."""
        target = coords + flow
        occ = (target[0] < 0) | (target[0] > w - 1) | (target[1] < 0) | (target[1] > h - 1)
        for j in range(1, n_layers + 1):
            above = index < j
            if above.any():
                covered = shapes[j].alpha(canonical(j, target_frame, target)) > 0.5
                occ |= above & covered
        return occ[None].float()

    fwd = layer_flow(indices[0], motions)
    bwd = layer_flow(indices[1], inverses)
    sample = SynthSample(
        images=images,
        flow_forward=fwd,
        flow_backward=bwd,
        occlusion_forward=occluded(indices[0], fwd, 1),
        occlusion_backward=occluded(indices[1], bwd, 0),
        layer_index=indices,
    )
    if cfg.num_frames == 3:
        sample.flow_forward_23 = layer_flow(indices[1], motions)
    if cfg.photometric:
        sample.images = degrade(sample, cfg, gen)
        sample.images = photometric_augment(sample.images, gen, cfg.noise_std)
        if cfg.illumination_prob > 0 and _uniform(gen, 0, 1) < cfg.illumination_prob:
            sample.images = illumination_change(sample.images, gen, cfg.illumination_change)
        if cfg.dark_prob > 0 and _uniform(gen, 0, 1) < cfg.dark_prob:  # last: it quantises to 8 bits
            sample.images = low_light(sample.images, gen, cfg.min_exposure)
    return sample


def cast_shadows(
    images: list[torch.Tensor], gen: torch.Generator, cfg: SynthConfig, coords: torch.Tensor
) -> list[torch.Tensor]:
    """Darken the frames by 1-3 soft shadows, each taking 30-75 % of the light and moving by a motion of its own
    (drawn as a layer's), so the dark shapes move unlike the texture under them while the flow stays its.
    `coords` is the frame's pixel grid [2, H, W]."""
    h, w = images[0].shape[-2:]
    light = [torch.ones(1, h, w) for _ in images]
    for _ in range(int(torch.randint(1, 4, (1,), generator=gen))):
        size = min(h, w) * math.exp(_uniform(gen, math.log(0.15), math.log(0.6)))
        center = (_uniform(gen, 0, w), _uniform(gen, 0, h))
        kind = ("ellipse", "polygon", "blob")[int(torch.randint(3, (1,), generator=gen))]
        shape = Shape(kind, center, size, gen, h, w, _uniform(gen, 1.0, 12.0))  # a penumbra of a few pixels
        darkness = _uniform(gen, 0.3, 0.75)
        back = torch.linalg.inv(_random_motion(gen, center, cfg, cfg.layer_translation))
        for frame, frame_light in enumerate(light):
            seen_from = torch.linalg.matrix_power(back, frame) if frame else torch.eye(3, dtype=torch.float64)
            frame_light.mul_(1 - darkness * shape.alpha(_apply(seen_from, coords))[None])
    return [image * frame_light for image, frame_light in zip(images, light)]


def motion_blur(image: torch.Tensor, velocity: torch.Tensor, exposure: float, taps: int = 9) -> torch.Tensor:
    """Mean of `image` [3,H,W] sampled along each pixel's motion, x + s * velocity(x), s in exposure * [-1/2, 1/2].

    The shutter-open integral for the topmost layer at each pixel; at layer boundaries it smears the
    foreground over the background instead of mixing in the hidden layer, a fine approximation here.
    """
    h, w = image.shape[-2:]
    coords = pixel_grid(1, h, w, image.device, image.dtype)
    total = torch.zeros_like(image)
    for s in torch.linspace(-0.5, 0.5, taps).tolist():
        grid = normalized_grid(coords + (s * exposure) * velocity[None])
        total += F.grid_sample(image[None], grid, mode="bilinear", padding_mode="border", align_corners=True)[0]
    return total / taps


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=image.dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = image.shape[0]
    out = F.pad(image[None], (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return out[0]


def degrade(sample: SynthSample, cfg: SynthConfig, gen: torch.Generator) -> list[torch.Tensor]:
    """Motion blur, defocus and haze, each with its configured probability (no random draws when 0)."""
    images = list(sample.images)
    if cfg.motion_blur_prob > 0 and _uniform(gen, 0, 1) < cfg.motion_blur_prob:
        exposure = _uniform(gen, 0.2, 1.0)
        # Frame 1 moves along the forward flow; frame 2 (and a third frame, approximately) along -backward.
        # Stereo scenes are blurred along their disparity: not physical, a horizontal-blur augmentation.
        velocities = [sample.flow_forward] + [-sample.flow_backward] * (len(images) - 1)
        images = [motion_blur(img, v, exposure) for img, v in zip(images, velocities)]
    if cfg.defocus_prob > 0 and _uniform(gen, 0, 1) < cfg.defocus_prob:
        sigma = _uniform(gen, 0.5, 2.0)
        images = [gaussian_blur(img, sigma) for img in images]
    if cfg.haze_prob > 0 and _uniform(gen, 0, 1) < cfg.haze_prob:
        h = images[0].shape[-2]
        top, bottom = _uniform(gen, 0.0, 0.5), _uniform(gen, 0.0, 0.5)
        density = torch.linspace(top, bottom, h).view(1, h, 1)
        colour = torch.tensor([_uniform(gen, 0.4, 0.9) for _ in range(3)]).view(3, 1, 1)
        colour = 0.7 * colour.mean() + 0.3 * colour  # mostly grey, a little tint
        images = [img * (1 - density) + colour * density for img in images]
    return images


def photometric_augment(images: list[torch.Tensor], gen: torch.Generator, noise_std: float) -> list[torch.Tensor]:
    """Shared colour jitter (brightness, contrast, saturation, gamma), a little per frame, and noise."""
    brightness = _uniform(gen, -0.15, 0.15)
    contrast = math.exp(_uniform(gen, -0.3, 0.3))
    saturation = _uniform(gen, 0.5, 1.4)
    gamma = math.exp(_uniform(gen, -0.25, 0.25))
    out = []
    for img in images:
        gray = img.mean(0, keepdim=True)
        x = gray + saturation * (img - gray)
        x = (x - 0.5) * contrast + 0.5 + brightness + _uniform(gen, -0.02, 0.02)
        x = x.clamp(0, 1) ** gamma
        sigma = noise_std * float(torch.rand((), generator=gen))
        x = x + sigma * torch.randn(x.shape, generator=gen)
        out.append(x.clamp(0, 1))
    return out


def low_light(images: list[torch.Tensor], gen: torch.Generator, min_exposure: float) -> list[torch.Tensor]:
    """Dim every frame by one exposure map (log-uniform level, a smooth +-0.7 log-unit field), 8-bit.

    Real dark footage (Sintel's market_5 ground, cave_2, night driving) keeps little of its texture
    contrast: the model has to match on a few grey levels, which the rest of the data never asks of it.
    """
    h, w = images[0].shape[-2:]
    level = math.log(min_exposure) * _uniform(gen, 0, 1)
    shading = 0.7 * (2 * torch.rand(1, 1, 3, 4, generator=gen) - 1)
    shading = F.interpolate(shading, size=(h, w), mode="bicubic", align_corners=True)[0]
    exposure = torch.exp(level + shading).clamp(max=1.0)
    return [torch.round((img * exposure).clamp(0, 1) * 255) / 255 for img in images]


def illumination_change(images: list[torch.Tensor], gen: torch.Generator, largest: float) -> list[torch.Tensor]:
    """Frames after the first times their own smooth gain field: a global gain and a 3x4-control-point field,
    together up to `largest` log units. The first frame keeps its light, so the flow is unchanged.

    Supervised data whose frames share their light teaches features that stop matching when the light changes
    (Sintel's market_5: its ground, re-rendered from frame 2 with the true motion, has half the error)."""
    h, w = images[0].shape[-2:]
    out = [images[0]]
    for img in images[1:]:
        strength = largest * _uniform(gen, 0, 1)
        field = 2 * torch.rand(1, 1, 3, 4, generator=gen) - 1
        field = F.interpolate(field, size=(h, w), mode="bicubic", align_corners=True)[0]
        gain = torch.exp(strength * (0.5 * field + 0.5 * _uniform(gen, -1, 1)))
        out.append((img * gain).clamp(0, 1))
    return out


def generate_batch(cfg: SynthConfig, batch_size: int, gen: torch.Generator, textures: TextureBank | None = None):
    """Stacked (image1 [B,3,H,W], image2, flow [B,2,H,W], occlusion [B,1,H,W])."""
    samples = [generate_sample(cfg, gen, textures) for _ in range(batch_size)]
    return (
        torch.stack([s.images[0] for s in samples]),
        torch.stack([s.images[1] for s in samples]),
        torch.stack([s.flow_forward for s in samples]),
        torch.stack([s.occlusion_forward for s in samples]),
    )
