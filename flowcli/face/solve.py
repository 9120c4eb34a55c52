"""Closed-form pieces of the fit: point bases, the box-constrained shape solve, and pose/shape alternation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flowcli.face.geometry import FLIP, closed_form_pose
from flowcli.face.model import FaceModel


@dataclass
class PointBasis:
    """The linear model restricted to N surface points (each a barycentric mix of 3 vertices)."""

    mean: np.ndarray  # N x 3
    id: np.ndarray  # K x N x 3
    exp: np.ndarray  # E x N x 3

    def points(self, id_coeffs, exp_weights) -> np.ndarray:
        return self.mean + np.tensordot(id_coeffs, self.id, 1) + np.tensordot(exp_weights, self.exp, 1)


def point_basis(model: FaceModel, vertex_ids: np.ndarray, bary: np.ndarray | None = None) -> PointBasis:
    """Bases at surface points: vertex_ids N x 3 with barycentric weights N x 3, or plain vertex ids N."""
    vertex_ids = np.asarray(vertex_ids)
    if bary is None:
        vertex_ids, bary = vertex_ids[:, None], np.ones((len(vertex_ids), 1))
    bary = np.asarray(bary, np.float64)

    def mix(a):
        return (a[..., vertex_ids, :].astype(np.float64) * bary[..., None]).sum(-2)

    return PointBasis(mean=mix(model.mean), id=mix(model.id_basis), exp=mix(model.exp_basis))


def box_qp(h: np.ndarray, g: np.ndarray, lower: np.ndarray, upper: np.ndarray, x0=None, iters: int = 300) -> np.ndarray:
    """min 1/2 x'Hx - g'x  subject to lower <= x <= upper (H positive definite; bounds may be +-inf).

    Accelerated projected gradient (FISTA) to find the active set, then exact solves on the free variables
    with KKT checks, so noise-free problems are solved to machine precision.
    """
    n = len(g)
    lipschitz = float(np.linalg.eigvalsh(h)[-1])
    x = np.clip(np.zeros(n) if x0 is None else np.asarray(x0, np.float64), lower, upper)
    y, t = x.copy(), 1.0
    for _ in range(iters):
        x_new = np.clip(y - (h @ y - g) / lipschitz, lower, upper)
        t_new = (1 + np.sqrt(1 + 4 * t * t)) / 2
        y = x_new + (t - 1) / t_new * (x_new - x)
        x, t = x_new, t_new
    tol = 1e-9
    for _ in range(20):
        grad = h @ x - g
        at_lower = (x <= lower + tol) & (grad > 0)
        at_upper = (x >= upper - tol) & (grad < 0)
        free = ~(at_lower | at_upper)
        fixed = ~free
        xf = np.linalg.solve(h[np.ix_(free, free)], g[free] - h[np.ix_(free, fixed)] @ x[fixed])
        if np.all(xf >= lower[free] - tol) and np.all(xf <= upper[free] + tol):
            x_new = x.copy()
            x_new[free] = np.clip(xf, lower[free], upper[free])
            if np.allclose(x_new, x, atol=1e-12, rtol=0):
                return x_new
            x = x_new
        else:
            # step from x towards the free solution until the first bound is hit, then re-check KKT
            direction = np.zeros(n)
            direction[free] = xf - x[free]
            with np.errstate(divide="ignore", invalid="ignore"):
                steps = np.where(direction > 0, (upper - x) / direction, np.where(direction < 0, (lower - x) / direction, np.inf))
            alpha = float(np.clip(np.min(steps), 0.0, 1.0))
            x = np.clip(x + alpha * direction, lower, upper)
    return x


@dataclass
class ShapeSolveConfig:
    id_reg: float = 1.0  # weight of |id|^2 against squared residuals in cm
    exp_reg: float = 0.05  # weight of |exp|^2
    z_weight: float = 0.5  # weight of the depth coordinate (MediaPipe's z) against x and y
    num_id: int | None = None  # use only the first modes


def solve_shape(
    basis: PointBasis,
    targets: np.ndarray,
    scale: float,
    rotation: np.ndarray,
    weights: np.ndarray,
    config: ShapeSolveConfig,
    exp_active: np.ndarray,
    fixed_id: np.ndarray | None = None,
    exp_prior: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Identity and expression for a fixed rotation and scale; translation solved in closed form.

    targets: N x D (D = 2 image x, y or 3 with depth). Residuals are measured in model units (cm), so the
    regularisers do not depend on the face's size in pixels. Returns (id K, exp E, translation 3).
    """
    n, dims = targets.shape
    cr = (FLIP @ rotation)[:dims]
    dim_w = np.array([1.0, 1.0, config.z_weight])[:dims]
    k_all, e_all = basis.id.shape[0], basis.exp.shape[0]
    k = k_all if config.num_id is None else min(config.num_id, k_all)
    u = targets / scale
    w = np.asarray(weights, np.float64)
    wn = w / w.sum()
    mean_rot = basis.mean @ cr.T  # N x D
    exp_rot = np.einsum("enc,dc->end", basis.exp[exp_active], cr)  # E' x N x D
    cols = [exp_rot]
    if fixed_id is None:
        cols.insert(0, np.einsum("knc,dc->knd", basis.id[:k], cr))
    else:
        mean_rot = mean_rot + np.tensordot(fixed_id, basis.id, 1) @ cr.T
    jac = np.concatenate(cols, 0)  # P x N x D
    rhs = u - mean_rot
    # eliminate the translation: centre every column and the right-hand side per dimension
    jac = jac - np.einsum("n,pnd->pd", wn, jac)[:, None, :]
    rhs = rhs - wn @ rhs
    sw = np.sqrt(w)[:, None] * np.sqrt(dim_w)[None, :]
    jw = (jac * sw[None]).reshape(len(jac), -1)
    rw = (rhs * sw).reshape(-1)
    num_id = 0 if fixed_id is not None else k
    reg = np.concatenate([np.full(num_id, config.id_reg), np.full(len(exp_active), config.exp_reg)])
    h = jw @ jw.T + np.diag(reg)
    g = jw @ rw
    if exp_prior is not None:  # pull towards given weights instead of zero
        g[num_id:] += config.exp_reg * exp_prior[exp_active]
    lower = np.concatenate([np.full(num_id, -np.inf), np.zeros(len(exp_active))])
    upper = np.concatenate([np.full(num_id, np.inf), np.ones(len(exp_active))])
    x = box_qp(h, g, lower, upper)
    id_coeffs = np.zeros(k_all) if fixed_id is None else np.asarray(fixed_id, np.float64)
    if fixed_id is None:
        id_coeffs[:k] = x[:k]
    exp_weights = np.zeros(e_all)
    exp_weights[exp_active] = x[num_id:]
    shape_rot = basis.points(id_coeffs, exp_weights) @ cr.T
    offset = wn @ (u - shape_rot)
    translation = np.zeros(3)
    translation[:dims] = offset * scale
    return id_coeffs, exp_weights, translation


def robust_weights(residual_cm: np.ndarray, sigma: float) -> np.ndarray:
    """Cauchy IRLS weights for per-point residual norms."""
    return 1.0 / (1.0 + (residual_cm / sigma) ** 2)
