"""Video mode: one identity per clip, per-frame expression and pose, fitted jointly over frames.

Terms added to the per-frame robust landmark loss (`FaceFitter.refine` over a batch of frames):
- temporal smoothness: second differences of the projected 68 landmarks and of the blendshape weights;
- census photometric consistency: the soft census signature (7x7, as in UFlow) of the image around each
  visible vertex must agree between consecutive frames, so the mesh follows the skin texture;
- optical flow (optional): the projected motion of visible vertices must agree with the flow from
  `flowcli.inference.estimate_flow` between consecutive frames; skipped when unavailable.
All terms are measured in model units (cm) through each frame's scale, like the landmark loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from flowcli.errors import InputError
from flowcli.face.fit import FaceFit, FaceFitter, vertex_normals


@dataclass
class VideoOptions:
    smooth_weight: float = 200.0  # second differences of the 68 landmarks (cm^2, summed over points)
    exp_smooth_weight: float = 2.0  # second differences of blendshape weights
    census_weight: float = 5.0
    census_vertices: int = 400
    flow_weight: float = 1.0
    window: int = 64  # frames per joint refinement window (overlapping by `overlap`)
    overlap: int = 8
    steps: int = 60
    max_side: int = 640  # frames are downscaled to this for the census term


def sample_vertices(model, count: int) -> np.ndarray:
    """Evenly spread vertices of the inner face (ICT's narrow face area, first 6,706 vertices), away from
    the eyes' and mouth's openings where the texture is not skin."""
    v = model.mean[:6706].astype(np.float64)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(v))
    chosen = [order[0]]
    dist = np.linalg.norm(v - v[order[0]], axis=1)
    for _ in range(count - 1):  # farthest-point sampling
        k = int(np.argmax(dist))
        chosen.append(k)
        dist = np.minimum(dist, np.linalg.norm(v - v[k], axis=1))
    return np.array(sorted(chosen))


def soft_census(samples: torch.Tensor) -> torch.Tensor:
    """[..., 49] intensities (0-255, centre at index 24) -> [..., 48] soft census signature."""
    centre = samples[..., 24:25]
    diff = torch.cat([samples[..., :24], samples[..., 25:]], -1) - centre
    return diff / torch.sqrt(0.81 + diff * diff)


class VideoTerms:
    """Builds the extra loss for a window of frames: smoothness, census, optional flow."""

    def __init__(
        self, fitter: FaceFitter, options: VideoOptions, gray: torch.Tensor | None, zoom: float, flows: list | None
    ):
        self.fitter = fitter
        self.options = options
        self.gray = gray  # T x 1 x h x w, 0-255, frames downscaled by `zoom`
        self.zoom = zoom
        self.flows = flows  # per consecutive pair: 2 x H x W numpy (full resolution) or None
        dt = torch.float32
        self.lm_mean, self.lm_id, self.lm_exp = (
            torch.as_tensor(a, dtype=dt) for a in (fitter.lm68.mean, fitter.lm68.id, fitter.lm68.exp)
        )
        idx = sample_vertices(fitter.model, options.census_vertices)
        from flowcli.face.solve import point_basis

        basis = point_basis(fitter.model, idx)
        self.v_mean, self.v_id, self.v_exp = (torch.as_tensor(a, dtype=dt) for a in (basis.mean, basis.id, basis.exp))
        self.v_normals = torch.as_tensor(vertex_normals(fitter.model.mean, fitter.model.triangles)[idx], dtype=dt)
        g = torch.arange(-3, 4, dtype=dt)
        self.offsets = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2).flip(-1)  # (dx, dy), 49

    def _points(self, mean, idb, expb, state) -> torch.Tensor:
        shape = (
            mean + torch.einsum("bk,knc->bnc", state["ident"], idb) + torch.einsum("be,enc->bnc", state["exp"], expb)
        )
        cam = torch.einsum("bnc,bdc->bnd", shape, state["cr"]) + state["offset"][:, None, :]
        return cam * state["scale"][:, None, None]  # image px (x, y) and depth

    def __call__(self, state) -> torch.Tensor:
        o = self.options
        scale = state["scale"]
        loss = torch.zeros((), dtype=scale.dtype)
        n = scale.shape[0]
        if n >= 3 and o.smooth_weight > 0:
            lm = self._points(self.lm_mean, self.lm_id, self.lm_exp, state)[..., :2] / scale.mean()
            acc = lm[2:] - 2 * lm[1:-1] + lm[:-2]
            loss = loss + o.smooth_weight * (acc**2).sum(-1).mean(-1).sum()
            e = state["exp"]
            loss = loss + o.exp_smooth_weight * ((e[2:] - 2 * e[1:-1] + e[:-2]) ** 2).sum()
        if n >= 2 and (o.census_weight > 0 and self.gray is not None or self.flows is not None):
            pts = self._points(self.v_mean, self.v_id, self.v_exp, state)[..., :2]  # B x M x 2 (px)
            facing = torch.einsum("mc,bdc->bmd", self.v_normals, state["rot"])[..., 2]  # towards the camera
            visible = ((facing[1:] > 0.3) & (facing[:-1] > 0.3)).to(pts.dtype)
            if o.census_weight > 0 and self.gray is not None:
                loss = loss + o.census_weight * self._census(pts, scale, visible)
            if self.flows is not None and o.flow_weight > 0:
                loss = loss + o.flow_weight * self._flow(pts, scale, visible)
        return loss

    def _census(self, pts, scale, visible) -> torch.Tensor:
        gray = self.gray
        _, _, h, w = gray.shape
        spacing = (0.25 * scale * self.zoom).clamp(min=1.0)  # 2.5 mm between samples, in downscaled px
        p = pts * self.zoom
        locs = p[:, :, None, :] + self.offsets[None, None] * spacing[:, None, None, None]  # B x M x 49 x 2
        grid = torch.stack([(locs[..., 0] + 0.5) / w * 2 - 1, (locs[..., 1] + 0.5) / h * 2 - 1], -1)
        samples = F.grid_sample(gray, grid.to(gray.dtype), mode="bilinear", padding_mode="border", align_corners=False)[
            :, 0
        ]
        sig = soft_census(samples)  # B x M x 48
        d = (sig[1:] - sig[:-1]) ** 2
        dist = (d / (0.1 + d)).mean(-1)  # B-1 x M, in [0, 1)
        return (dist * visible).sum() / visible.sum().clamp(min=1.0) * (pts.shape[0] - 1)

    def _flow(self, pts, scale, visible) -> torch.Tensor:
        total = torch.zeros((), dtype=pts.dtype)
        p = pts * self.zoom
        for t, flow in enumerate(self.flows):
            if flow is None:
                continue
            fl = torch.as_tensor(flow, dtype=pts.dtype)[None]  # 1 x 2 x h x w, downscaled pixels
            _, _, h, w = fl.shape
            grid = torch.stack([(p[t, :, 0] + 0.5) / w * 2 - 1, (p[t, :, 1] + 0.5) / h * 2 - 1], -1)[None, None]
            f = F.grid_sample(fl, grid.detach(), mode="bilinear", padding_mode="border", align_corners=False)[0, :, 0].T
            motion = p[t + 1] - p[t]
            r2 = ((motion - f) ** 2).sum(-1) / (scale[t].detach() * self.zoom) ** 2  # cm^2
            total = total + (visible[t] * 0.09 * torch.log1p(r2 / 0.09)).sum() / visible[t].sum().clamp(min=1.0)
        return total


def small_gray(frame: np.ndarray, max_side: int) -> tuple[torch.Tensor, float]:
    """A frame as 1 x h x w grayscale (0-255) with its longer side at most max_side, and the zoom factor."""
    h, w = frame.shape[:2]
    zoom = min(1.0, max_side / max(h, w))
    g = torch.as_tensor(frame.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))[None, None]
    if zoom < 1.0:
        g = F.interpolate(g, size=(round(h * zoom), round(w * zoom)), mode="area")
        zoom = g.shape[-1] / w
    return g[0], zoom


def small_flow(flow: np.ndarray, zoom: float, size: tuple[int, int]) -> np.ndarray:
    """A full-resolution flow (2 x H x W, pixels) at the census resolution."""
    t = torch.as_tensor(np.asarray(flow, np.float32))[None]
    return (F.interpolate(t, size=size, mode="area")[0] * zoom).numpy()


class ClipTextures:
    """The census grays and pair flows of a clip, computed from a second decode of it as `fit_video` reaches
    them, and dropped once its windows have passed: a long clip fits in constant memory, where keeping them all
    took about 1 MB per frame (3 MB with the flow term). `grays[t]` is frame t's 1 x h x w grayscale at the
    census resolution, `flows[t]` the flow from frame t to t + 1 at that resolution; frames are requested in
    order, at most `keep` back from the newest decoded (a window's length covers fit_video's overlap). A clip that
    ends before a frame asked for (changed on disk since its landmarks were read) is an InputError naming `name`."""

    def __init__(
        self, frames: Iterable[np.ndarray], max_side: int, flow_fn=None, keep: int = 64, name: str = "the clip"
    ):
        self._frames = iter(frames)
        self._name = name
        self._max_side, self._flow_fn, self._keep = max_side, flow_fn, keep
        self._grays: dict[int, torch.Tensor] = {}
        self._flows: dict[int, np.ndarray] = {}
        self._previous: np.ndarray | None = None
        self._decoded = 0
        self.grays = _Lookup(self._gray)
        self.flows = _Lookup(self._flow) if flow_fn is not None else None

    def _decode_through(self, t: int) -> None:
        while self._decoded <= t:
            frame = next(self._frames, None)
            if frame is None:  # a bare StopIteration would surface as a traceback
                raise InputError(
                    f"{self._name}: frame {self._decoded} could not be decoded again for the fit; the file changed "
                    "since it was first read, or is damaged; fit it again once it is complete"
                )
            gray, zoom = small_gray(frame, self._max_side)
            self._grays[self._decoded] = gray
            if self._flow_fn is not None and self._previous is not None:
                flow = self._flow_fn(self._previous, frame)
                self._flows[self._decoded - 1] = small_flow(flow, zoom, tuple(gray.shape[-2:]))
            self._previous = frame
            self._decoded += 1
            for old in [k for k in self._grays if k < self._decoded - self._keep]:
                del self._grays[old]
                self._flows.pop(old, None)

    def _gray(self, t: int) -> torch.Tensor:
        self._decode_through(t)
        return self._grays[t]

    def _flow(self, t: int) -> np.ndarray:
        self._decode_through(t + 1)
        return self._flows[t]


class _Lookup:
    def __init__(self, get: Callable[[int], object]):
        self._get = get

    def __getitem__(self, t: int):
        return self._get(t)


def fit_video(
    fitter: FaceFitter,
    points: list[np.ndarray | None],
    grays: list[torch.Tensor] | None = None,
    zoom: float = 1.0,
    flows: list[np.ndarray | None] | None = None,
    options: VideoOptions | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[FaceFit | None]:
    """Fit a clip: `points[t]` is frame t's 468 x 3 MediaPipe points or None (no face).

    grays: per-frame 1 x h x w grayscale at `zoom` times the frame size (census term; None skips it);
    flows: per consecutive pair t -> t+1, 2 x h x w flow at the same resolution (None skips the term).
    Both are indexed by frame in increasing windows: lists, or `ClipTextures` for a clip of any length.
    One identity (mean of closed-form identities over a spread of frames, then refined jointly), per-frame
    pose and expression; frames without a face stay None and split the clip into independent runs.
    """
    o = options or VideoOptions()
    present = [t for t, p in enumerate(points) if p is not None]
    if not present:
        return [None] * len(points)
    # identity from a spread of frames (closed form), then every frame's pose and expression for it
    sample = present[:: max(1, len(present) // 16)]
    identity = np.mean([fitter.initial_fit(points[t]).id_coeffs for t in sample], 0)
    fits: dict[int, FaceFit] = {t: fitter.initial_fit(points[t], fixed_id=identity) for t in present}
    runs, run = [], [present[0]]
    for t in present[1:]:
        if t == run[-1] + 1:
            run.append(t)
        else:
            runs.append(run)
            run = [t]
    runs.append(run)
    done, first = 0, True
    for run in runs:
        start = 0
        while start < len(run):
            window = run[start : start + o.window]
            gray = torch.stack([grays[t] for t in window]) if grays is not None and o.census_weight > 0 else None
            pair_flows = [flows[t] for t in window[:-1]] if flows is not None else None
            terms = VideoTerms(fitter, o, gray, zoom, pair_flows)
            # one identity per clip: the first window of a clip settles it, later windows keep it
            refined = fitter.refine(
                [fits[t] for t in window], shared_id=True, extra_loss=terms, steps=o.steps, optimize_id=first
            )
            if first:
                identity = refined[0].id_coeffs
                for t in present:
                    if t not in window:
                        fits[t].id_coeffs = identity
                first = False
            keep_from = 0 if start == 0 else o.overlap // 2  # overlapping frames keep the earlier window's fit
            for t, f in list(zip(window, refined))[keep_from:]:
                f.score = fits[t].score
                fits[t] = f
            done += len(window) - (0 if start == 0 else o.overlap)  # the overlap was counted with the last window
            if progress is not None:
                progress(done)
            if start + o.window >= len(run):
                break
            start += o.window - o.overlap
    return [fits.get(t) for t in range(len(points))]


def landmark_jitter(landmarks: np.ndarray) -> float:
    """Mean norm of the second temporal difference of T x P x 2 landmark tracks (pixels)."""
    lm = np.asarray(landmarks, np.float64)[..., :2]
    acc = lm[2:] - 2 * lm[1:-1] + lm[:-2]
    return float(np.linalg.norm(acc, axis=-1).mean())


def flow_function(device: str | torch.device = "cpu", precision: str = "fp32"):
    """`estimate_flow` with the default model on `device` (a torch.device or auto, cpu, cuda, cuda:N, mps) at
    `precision` (fp32, fp16 or bf16; fp16 on the CPU runs in fp32, with one warning), or None when flowcli's flow
    inference cannot be imported. A missing or broken checkpoint raises its WeightsError. Flows come back as numpy
    arrays on the CPU."""
    try:
        from flowcli.inference import PRECISIONS, estimate_flow, resolve_precision
        from flowcli.models import load_model

        model = load_model(None, device=device)  # the checkpoint loader imports its own dependencies here
    except ImportError:
        return None
    dtype = resolve_precision(precision, next(model.parameters()).device)  # warns here once, not for every pair
    precision = next(name for name, value in PRECISIONS.items() if value == dtype)

    def flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        ta = torch.as_tensor(a).permute(2, 0, 1)[None].float() / 255
        tb = torch.as_tensor(b).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            result = estimate_flow(model, ta, tb, precision=precision)
        return result.forward[0].cpu().numpy().astype(np.float64)

    return flow


@torch.no_grad()
def census_consistency(fitter: FaceFitter, fits: list[FaceFit], grays: list[torch.Tensor], zoom: float) -> float:
    """Mean soft-census distance (0 = identical texture) of visible vertices between consecutive frames:
    how well the fitted mesh sticks to the skin. Consecutive fits must all be present."""
    from flowcli.face.geometry import FLIP

    if len(fits) < 2 or any(f is None for f in fits) or len(grays) != len(fits):
        raise ValueError(
            f"census_consistency compares consecutive frames: it needs at least 2 fits, none of them None, and a "
            f"gray image for each; got {len(fits)} fits ({sum(f is None for f in fits)} None) and {len(grays)} grays"
        )
    terms = VideoTerms(fitter, VideoOptions(census_weight=1.0), torch.stack(grays), zoom, None)
    rot = torch.tensor(np.stack([f.rotation for f in fits]), dtype=torch.float32)
    scale = torch.tensor([f.scale for f in fits], dtype=torch.float32)
    state = dict(
        rot=rot,
        cr=torch.tensor(FLIP, dtype=torch.float32) @ rot,
        scale=scale,
        ident=torch.tensor(np.stack([f.id_coeffs for f in fits]), dtype=torch.float32),
        exp=torch.tensor(np.stack([f.exp_weights for f in fits]), dtype=torch.float32),
        offset=torch.tensor(np.stack([f.translation for f in fits]), dtype=torch.float32) / scale[:, None],
    )
    pts = terms._points(terms.v_mean, terms.v_id, terms.v_exp, state)[..., :2]
    facing = torch.einsum("mc,bdc->bmd", terms.v_normals, rot)[..., 2]
    visible = ((facing[1:] > 0.3) & (facing[:-1] > 0.3)).float()
    return float(terms._census(pts, scale, visible)) / (len(fits) - 1)
