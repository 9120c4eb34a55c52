"""Fitting the face model to MediaPipe's 468 points: closed-form initialisation, then a robust refinement.

Per face (image mode):
1. pose guidance: least-squares affine camera from the model's points to the image points, projected to a
   scaled rotation (`geometry.closed_form_pose`);
2. identity (ridge) and expression (ridge, weights in [0, 1]) by least squares for that pose
   (`solve.solve_shape`), alternated with 1. a few times under Cauchy reweighting;
3. refinement of everything together in PyTorch: robust (Cauchy) dense-landmark loss over all 468 points
   through the project's own landmark-to-surface correspondence, a jaw-contour term that matches the far
   side of MediaPipe's face oval to the model's silhouette when the head is turned, and priors.
Video mode (`video.fit_video`) reuses 3. over a batch of frames with one identity and temporal terms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from flowcli.face.correspondence import (
    JAW_OVAL_LEFT,
    JAW_OVAL_RIGHT,
    MP_TO_68,
    fit_frame,
)
from flowcli.face.geometry import (
    FLIP,
    axis_angle_to_matrix,
    matrix_to_axis_angle,
    nearest_rotation,
    rotation_to_euler,
)
from flowcli.face.model import ICT_JAW_LEFT, ICT_JAW_RIGHT, FaceModel
from flowcli.face.solve import ShapeSolveConfig, point_basis

JAW_ARC_CHIN = 966  # ICT's chin vertex (landmark 8)


@dataclass
class FitOptions:
    id_reg: float = 1.0  # prior weight on identity coefficients (N(0,1) modes) against residuals in cm^2
    exp_reg: float = 0.05  # prior weight on blendshape weights
    z_weight: float = 0.5  # MediaPipe depth against image x, y
    pose_depth_weight: float = 1.0  # depth in the closed-form pose
    sigma_cm: float = 0.3  # Cauchy scale of the dense-landmark loss
    alternations: int = 3
    refine_steps: int = 40
    lr: float = 0.01
    jaw_weight: float = 1.0  # contour term at full strength (|yaw| >= jaw_yaw_full)
    jaw_yaw_start: float = 15.0  # degrees where the contour term starts to replace the far-side oval points
    jaw_yaw_full: float = 40.0
    num_id: int | None = None

    def __post_init__(self):
        from flowcli.errors import InputError

        if self.alternations < 1:
            raise InputError(f"FitOptions.alternations must be at least 1, got {self.alternations}")
        if not self.sigma_cm > 0:
            raise InputError(f"FitOptions.sigma_cm must be a positive number of cm, got {self.sigma_cm}")

    def shape_config(self) -> ShapeSolveConfig:
        return ShapeSolveConfig(id_reg=self.id_reg, exp_reg=self.exp_reg, z_weight=self.z_weight, num_id=self.num_id)


@dataclass
class FaceFit:
    """One fitted face. Image point = scale * C R X + translation (see geometry.py)."""

    scale: float
    rotation: np.ndarray
    translation: np.ndarray
    id_coeffs: np.ndarray
    exp_weights: np.ndarray
    mediapipe: np.ndarray  # the 468 x 3 input points
    score: float = 1.0
    box: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    def euler_degrees(self) -> tuple[float, float, float]:
        """(pitch, yaw, roll) in degrees, signs as in AFLW2000-3D's Pose_Para (yaw > 0: the subject turns
        to their right, so the camera sees their left cheek)."""
        pitch, yaw, roll = rotation_to_euler(self.rotation)
        return -math.degrees(pitch), -math.degrees(yaw), -math.degrees(roll)

    def pose_dict(self) -> dict:
        pitch, yaw, roll = self.euler_degrees()
        return {
            "rotation": np.round(self.rotation, 6).tolist(),
            "translation": np.round(self.translation, 3).tolist(),
            "scale": round(float(self.scale), 5),
            "yaw": round(yaw, 3),
            "pitch": round(pitch, 3),
            "roll": round(roll, 3),
            "camera": "weak perspective: [x, y, depth] = "
            "scale * diag(1,-1,-1) @ rotation @ X_cm + translation (pixels)",
        }


# The 17 jaw landmarks: mirror-symmetric vertices within 2 cm of ICT's extended jawline, chosen so that the
# fitted model reproduces AFLW2000-3D's 3D jawline (benchmarks/face_aflw.py --calibrate-jaw; on the 8 shared
# samples its leave-one-out jaw NME is reported in docs/face.md). Multi-PIE order, subject's right first.
JAW_VERTICES = [8157, 7516, 7442, 7853, 8849, 828, 789, 817, 965, 3058, 3030, 3069, 9172, 7126, 6715, 6789, 7430]


def landmark68_surface_points(model: FaceModel, jaw: str = "calibrated") -> tuple[np.ndarray, np.ndarray]:
    """The fitted model's 68 landmarks as surface points (vertex ids 68 x 3, barycentric 68 x 3).

    Inner 51: where MediaPipe's corresponding points lie on the surface (the project's own correspondence).
    Jaw 17: `JAW_VERTICES` (jaw="calibrated"), or (jaw="arc") ICT's extended jawline (README) from the right
    temple over the chin (vertex 966) to the left, sampled uniformly in arc length on the neutral mesh.
    """
    from flowcli.face.mp468_ict import BARY, VERTS

    verts, bary = np.array(VERTS), np.array(BARY)
    if jaw == "calibrated":
        jaw_v = np.array(JAW_VERTICES)[:, None].repeat(3, 1)
        jaw_b = np.tile([1.0, 0.0, 0.0], (17, 1))
    else:
        chain = list(ICT_JAW_RIGHT) + [JAW_ARC_CHIN] + list(ICT_JAW_LEFT)
        pts = model.mean.astype(np.float64)[chain]
        seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
        cum = np.concatenate([[0.0], np.cumsum(seg)])
        mid = cum[len(ICT_JAW_RIGHT)]
        ts = np.concatenate([np.linspace(0, mid, 9), np.linspace(mid, cum[-1], 9)[1:]])
        jaw_v, jaw_b = [], []
        for t in ts:
            i = int(min(np.searchsorted(cum, t, side="right") - 1, len(chain) - 2))
            f = (t - cum[i]) / seg[i]
            jaw_v.append([chain[i], chain[i + 1], chain[i + 1]])
            jaw_b.append([1 - f, f, 0.0])
    vids = np.concatenate([np.array(jaw_v), verts[MP_TO_68[17:]]])
    bary = np.concatenate([np.array(jaw_b), bary[MP_TO_68[17:]]])
    return vids, bary


def contour_candidates(model: FaceModel) -> np.ndarray:
    """Vertices where the cheek and jaw silhouette can lie (neutral mesh, cm): below the eyes, outside the
    central face or under the chin, in front of the ears."""
    x, y, z = model.mean.astype(np.float64).T
    keep = (y > -8.2) & (y < 2.8) & ((np.abs(x) > 3.8) | (y < -5.5)) & (np.abs(x) < 7.7) & (z > 2.0)
    return np.nonzero(keep)[0]


def vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    v = np.asarray(vertices, np.float64)
    tri = v[triangles]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n = np.zeros_like(v)
    for k in range(3):
        np.add.at(n, triangles[:, k], fn)
    return n / (np.linalg.norm(n, axis=1, keepdims=True) + 1e-12)


def mediapipe_points(points) -> np.ndarray:
    """MediaPipe face-mesh points as 468 x 3 (x, y px, relative depth); the 10 iris points of the
    478-point model are dropped. InputError for anything else."""
    from flowcli.errors import InputError

    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[0] not in (468, 478) or points.shape[1] != 3:
        raise InputError(f"expected MediaPipe's 468 (or 478) face-mesh points as N x 3, got {points.shape}")
    if not np.isfinite(points).all():
        raise InputError("the face-mesh points hold NaN or infinite values; fit only faces that were found")
    if np.linalg.matrix_rank(points[:468, :2] - points[:468, :2].mean(0)) < 2:
        raise InputError("the face-mesh points lie on one point or line (placeholders?); "
                         "fit only faces that were found")
    return points[:468]


class FaceFitter:
    """Fits a FaceModel to MediaPipe points; holds the point bases so that many faces fit fast."""

    def __init__(self, model: FaceModel, options: FitOptions | None = None):
        from flowcli.face.mp468_ict import BARY, VERTS

        if model.num_vertices < max(max(v) for v in VERTS) + 1:
            from flowcli.errors import WeightsError

            raise WeightsError(  # a model of the wrong shape, like one without arrays: exit 4
                f"the face model has {model.num_vertices} vertices, but fitting needs ICT-FaceKit's face topology "
                "(its first 9,409 vertices, in its order); use a model built from ICT-FaceKit's FaceXModel "
                "(`flowcli face convert`)"
            )
        self.model = model
        self.options = options or FitOptions()
        self.dense = point_basis(model, np.array(VERTS), np.array(BARY))
        self.lm68_vids, self.lm68_bary = landmark68_surface_points(model)
        self.lm68 = point_basis(model, self.lm68_vids, self.lm68_bary)
        self.cand = contour_candidates(model)
        self.cand_basis = point_basis(model, self.cand)
        self.cand_normals = vertex_normals(model.mean, model.triangles)[self.cand]
        self.exp_active = model.active_expressions()
        self.jaw_left = np.array(JAW_OVAL_LEFT)
        self.jaw_right = np.array(JAW_OVAL_RIGHT)

    # --- closed form ---------------------------------------------------------------------------------------

    def initial_fit(self, points: np.ndarray, fixed_id: np.ndarray | None = None) -> FaceFit:
        points = mediapipe_points(points)
        o = self.options
        s, r, t, a, b = fit_frame(
            self.dense,
            points,
            self.model,
            o.shape_config(),
            np.ones(len(points)),
            iterations=o.alternations,
            sigma=o.sigma_cm,
            fixed_id=fixed_id,
            depth_weight=o.pose_depth_weight,
        )
        return FaceFit(scale=s, rotation=r, translation=t, id_coeffs=a, exp_weights=b, mediapipe=points)

    def fit(self, points: np.ndarray, refine: bool = True) -> FaceFit:
        fit = self.initial_fit(points)
        if refine and self.options.refine_steps > 0:
            fit = self.refine([fit])[0]
        return fit

    # --- PyTorch refinement over a batch of frames -----------------------------------------------------------

    def refine(
        self,
        fits: list[FaceFit],
        shared_id: bool = False,
        extra_loss=None,
        steps: int | None = None,
        optimize_id: bool = True,
    ) -> list[FaceFit]:
        """Jointly refine a batch of fits. `extra_loss(state) -> tensor` adds video terms; with
        optimize_id=False the (shared) identity stays as given."""
        o = self.options
        dtype = torch.float32  # float64 halves the speed and buys nothing at 1e-6 cm
        n = len(fits)
        mean, idb, expb = (torch.as_tensor(a, dtype=dtype) for a in (self.dense.mean, self.dense.id, self.dense.exp))
        targets = torch.as_tensor(np.stack([f.mediapipe for f in fits]), dtype=dtype)  # B x N x 3
        scale0 = torch.as_tensor([f.scale for f in fits], dtype=dtype)
        rotvec = torch.tensor(
            np.stack([matrix_to_axis_angle(f.rotation) for f in fits]), dtype=dtype, requires_grad=True
        )
        log_scale = torch.zeros(n, dtype=dtype, requires_grad=True)
        # translation in cm (divided by the initial scale) keeps every parameter on a similar footing
        offset = torch.tensor(
            np.stack([f.translation for f in fits]) / scale0.numpy()[:, None], dtype=dtype, requires_grad=True
        )
        ids0 = np.stack([f.id_coeffs for f in fits])
        id_param = torch.tensor(
            ids0.mean(0, keepdims=True) if shared_id else ids0, dtype=dtype, requires_grad=optimize_id
        )
        exp = torch.tensor(np.stack([f.exp_weights for f in fits]), dtype=dtype, requires_grad=True)
        active = torch.zeros(expb.shape[0], dtype=dtype)
        active[self.exp_active] = 1.0
        dim_w = torch.tensor([1.0, 1.0, o.z_weight], dtype=dtype)
        flip = torch.tensor(FLIP, dtype=dtype)
        cand_mean, cand_id, cand_exp = (
            torch.as_tensor(a, dtype=dtype) for a in (self.cand_basis.mean, self.cand_basis.id, self.cand_basis.exp)
        )
        cand_x = self.cand_basis.mean[:, 0]
        params = [rotvec, log_scale, offset, exp] + ([id_param] if optimize_id else [])
        optimizer = _Adam(params, lr=o.lr)
        steps = o.refine_steps if steps is None else steps
        jaw = None

        def state():
            rot = axis_angle_to_matrix(rotvec)
            cr = flip @ rot  # B x 3 x 3
            scale = scale0 * torch.exp(log_scale)
            ident = id_param.expand(n, -1)
            shape = mean + torch.einsum("bk,knc->bnc", ident, idb) + torch.einsum("be,enc->bnc", exp * active, expb)
            proj = torch.einsum("bnc,bdc->bnd", shape, cr) + offset[:, None, :]  # cm units, before scaling
            return rot, cr, scale, ident, proj

        for step in range(steps):
            if step % 15 == 0:
                with torch.no_grad():
                    jaw = self._jaw_matches(fits_now(fits, rotvec, log_scale, offset, id_param, exp, scale0, n), cand_x)
            optimizer.zero_grad()
            rot, cr, scale, ident, proj = state()
            res = (proj - targets / scale[:, None, None]) * dim_w.sqrt()
            r2 = (res**2).sum(-1)  # B x N, cm^2
            dense_w = torch.as_tensor(jaw["dense_w"], dtype=dtype)
            loss_dense = (dense_w * o.sigma_cm**2 * torch.log1p(r2 / o.sigma_cm**2)).sum(1)
            loss = loss_dense.sum()
            if jaw["pairs"]:
                b_idx = torch.tensor([p[0] for p in jaw["pairs"]])
                mp_idx = torch.tensor([p[1] for p in jaw["pairs"]])
                c_idx = torch.tensor([p[2] for p in jaw["pairs"]])
                wj = torch.tensor([p[3] for p in jaw["pairs"]], dtype=dtype)
                cshape = (
                    cand_mean[c_idx]
                    + torch.einsum("pk,pkc->pc", ident[b_idx], cand_id[:, c_idx].transpose(0, 1))
                    + torch.einsum("pe,pec->pc", (exp * active)[b_idx], cand_exp[:, c_idx].transpose(0, 1))
                )
                cproj = torch.einsum("pc,pdc->pd", cshape, cr[b_idx])[:, :2] + offset[b_idx, :2]
                cres = ((cproj - targets[b_idx, mp_idx, :2] / scale[b_idx, None]) ** 2).sum(-1)
                loss = loss + o.jaw_weight * (wj * o.sigma_cm**2 * torch.log1p(cres / o.sigma_cm**2)).sum()
            loss = loss + o.id_reg * (id_param**2).sum() * (n if shared_id else 1) + o.exp_reg * (exp**2).sum()
            if extra_loss is not None:
                loss = loss + extra_loss(
                    dict(rot=rot, cr=cr, scale=scale, ident=ident, exp=exp * active, offset=offset, proj=proj)
                )
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                exp.clamp_(0.0, 1.0)
        out = []
        with torch.no_grad():
            rot, _, scale, ident, _ = state()
            for b, f in enumerate(fits):
                out.append(
                    FaceFit(
                        scale=float(scale[b]),
                        rotation=nearest_rotation(rot[b].numpy().astype(np.float64)),
                        translation=(offset[b] * scale[b]).numpy().astype(np.float64),
                        id_coeffs=ident[b].numpy().astype(np.float64),
                        exp_weights=(exp[b] * active).numpy().astype(np.float64),
                        mediapipe=f.mediapipe,
                        score=f.score,
                        box=f.box,
                    )
                )
        return out

    def _jaw_matches(self, current: list[FaceFit], cand_x: np.ndarray) -> dict:
        """For turned heads, pair the far side's oval points with the model's silhouette (nearest in 2D).

        Returns per-frame dense weights (those oval points fade out of the fixed-correspondence term) and
        (frame, mediapipe index, candidate index, weight) pairs for the contour term.
        """
        o = self.options
        dense_w = np.ones((len(current), 468))
        pairs = []
        for b, f in enumerate(current):
            yaw = abs(f.euler_degrees()[1])
            blend = float(np.clip((yaw - o.jaw_yaw_start) / max(o.jaw_yaw_full - o.jaw_yaw_start, 1e-6), 0.0, 1.0))
            if blend <= 0:
                continue
            r = f.rotation
            far_is_left = (r @ np.array([1.0, 0.0, 0.0]))[2] < 0  # the +x (subject's left) side turns away
            oval = self.jaw_left if far_is_left else self.jaw_right
            side = cand_x > 0 if far_is_left else cand_x < 0
            normal_depth = (self.cand_normals @ r.T)[:, 2]  # model-frame z of rotated normals = -camera depth
            silhouette = side & (np.abs(normal_depth) < 0.3)
            if silhouette.sum() < 3:
                continue
            shape = self.cand_basis.points(f.id_coeffs, f.exp_weights)
            proj = f.scale * shape @ (FLIP @ r).T[:, :2] + f.translation[:2]
            sil_idx = np.nonzero(silhouette)[0]
            for j in oval:
                d = np.linalg.norm(proj[sil_idx] - f.mediapipe[j, :2], axis=1)
                k = int(np.argmin(d))
                pairs.append((b, int(j), int(sil_idx[k]), blend))
                dense_w[b, j] = 1.0 - blend
        return {"dense_w": dense_w, "pairs": pairs}

    # --- outputs -----------------------------------------------------------------------------------------------

    def landmarks68(self, fit: FaceFit) -> np.ndarray:
        """68 x 3 image points (x, y, depth) of the fitted model's landmarks."""
        pts = self.lm68.points(fit.id_coeffs, fit.exp_weights)
        return fit.scale * pts @ (FLIP @ fit.rotation).T + fit.translation

    def vertices_image(self, fit: FaceFit) -> np.ndarray:
        v = self.model.vertices(fit.id_coeffs, fit.exp_weights)
        return fit.scale * v @ (FLIP @ fit.rotation).T + fit.translation


class _Adam:
    """Plain Adam (torch.optim pulls in torch._dynamo, whose import alone takes seconds on a busy CPU)."""

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t = 0

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self):
        self.t += 1
        b1, b2 = self.betas
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            m.mul_(b1).add_(p.grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            denom = (v / (1 - b2**self.t)).sqrt_().add_(self.eps)
            p.addcdiv_(m, denom, value=-self.lr / (1 - b1**self.t))


def fits_now(fits, rotvec, log_scale, offset, id_param, exp, scale0, n) -> list[FaceFit]:
    """Snapshot of the optimiser's parameters as FaceFit objects (for correspondence updates)."""
    rot = axis_angle_to_matrix(rotvec).detach().numpy()
    scale = (scale0 * torch.exp(log_scale)).detach().numpy()
    ids = id_param.detach().expand(n, -1).numpy()
    out = []
    for b, f in enumerate(fits):
        out.append(
            FaceFit(
                scale=float(scale[b]),
                rotation=rot[b],
                translation=offset[b].detach().numpy() * scale[b],
                id_coeffs=ids[b],
                exp_weights=exp[b].detach().numpy(),
                mediapipe=f.mediapipe,
            )
        )
    return out
