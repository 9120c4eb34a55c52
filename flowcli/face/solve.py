"""Closed-form pieces of the fit: point bases, the box-constrained shape solve, and pose/shape alternation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flowcli.face.geometry import FLIP
from flowcli.face.model import FaceModel


@dataclass
class PointBasis:
    """The linear model restricted to N surface points (each a barycentric mix of 3 vertices)."""

    mean: np.ndarray  # N x 3
    id: np.ndarray  # K x N x 3
    exp: np.ndarray  # E x N x 3

    def __post_init__(self):
        self.mean, self.id, self.exp = (np.ascontiguousarray(a, np.float64) for a in (self.mean, self.id, self.exp))
        self._id_flat = self.id.reshape(len(self.id), -1)
        self._exp_flat = self.exp.reshape(len(self.exp), -1)

    def points(self, id_coeffs, exp_weights) -> np.ndarray:
        flat = np.asarray(id_coeffs, np.float64) @ self._id_flat + np.asarray(exp_weights, np.float64) @ self._exp_flat
        return self.mean + flat.reshape(self.mean.shape)


def point_basis(model: FaceModel, vertex_ids: np.ndarray, bary: np.ndarray | None = None) -> PointBasis:
    """Bases at surface points: vertex_ids N x 3 with barycentric weights N x 3, or plain vertex ids N."""
    vertex_ids = np.asarray(vertex_ids)
    if bary is None:
        vertex_ids, bary = vertex_ids[:, None], np.ones((len(vertex_ids), 1))
    bary = np.asarray(bary, np.float64)

    def mix(a):
        return (a[..., vertex_ids, :].astype(np.float64) * bary[..., None]).sum(-2)

    return PointBasis(mean=mix(model.mean), id=mix(model.id_basis), exp=mix(model.exp_basis))


def box_qp(h: np.ndarray, g: np.ndarray, lower: np.ndarray, upper: np.ndarray, x0=None, iters: int = 150) -> np.ndarray:
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
    # primal active-set polish (finite for a convex QP): fix the variables FISTA left on a bound, solve for
    # the rest, step to the first bound hit, release a bound whose multiplier has the wrong sign
    tol = 1e-10
    on_lower = x <= lower + tol
    on_upper = x >= upper - tol
    x = np.where(on_lower, lower, np.where(on_upper, upper, x))
    for _ in range(4 * n + 10):
        fixed = on_lower | on_upper
        free = ~fixed
        target = x.copy()
        if free.any():
            rhs = g[free] - h[np.ix_(free, fixed)] @ x[fixed]
            target[free] = np.linalg.solve(h[np.ix_(free, free)], rhs)
        direction = target - x
        with np.errstate(divide="ignore", invalid="ignore"):
            room = np.where(
                direction < -tol, (lower - x) / direction, np.where(direction > tol, (upper - x) / direction, np.inf)
            )
        room[fixed] = np.inf
        alpha = float(min(1.0, room.min()))
        x = x + alpha * direction
        if alpha < 1.0:  # blocked: the blocking variable joins its bound
            j = int(np.argmin(room))
            if direction[j] < 0:
                on_lower[j], x[j] = True, lower[j]
            else:
                on_upper[j], x[j] = True, upper[j]
            continue
        grad = h @ x - g
        wrong = np.where(on_lower, -grad, 0.0) + np.where(on_upper, grad, 0.0)  # > 0: should leave the bound
        j = int(np.argmax(wrong))
        if wrong[j] <= 1e-12 * (1.0 + np.abs(g).max()):
            return x
        on_lower[j] = on_upper[j] = False
    return np.clip(x, lower, upper)


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
    exp_rot = basis.exp[exp_active] @ cr.T  # E' x N x D
    cols = [exp_rot]
    if fixed_id is None:
        cols.insert(0, basis.id[:k] @ cr.T)
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


def _skew_columns(x: np.ndarray) -> np.ndarray:
    """d(R exp([w]x) X)/dw at w = 0 is -R [X]x; returns -[X]x for every point: N x 3 x 3."""
    out = np.zeros(x.shape[:-1] + (3, 3))
    out[..., 0, 1], out[..., 0, 2] = x[..., 2], -x[..., 1]
    out[..., 1, 0], out[..., 1, 2] = -x[..., 2], x[..., 0]
    out[..., 2, 0], out[..., 2, 1] = x[..., 1], -x[..., 0]
    return out


def gauss_newton(
    basis: PointBasis,
    targets: np.ndarray,
    params: tuple,
    weights: np.ndarray,
    config: ShapeSolveConfig,
    exp_active: np.ndarray,
    iterations: int = 10,
    fixed_id: np.ndarray | None = None,
):
    """Joint damped Gauss-Newton over rotation, scale, translation, identity and expression (weights kept
    in [0, 1] by solving each step as a box-constrained QP). Residuals in cm as in `solve_shape`.

    params: (scale, rotation, translation, id, exp). Returns the same tuple.
    """
    from flowcli.face.geometry import FLIP, axis_angle_to_matrix_np

    scale, rotation, translation, id_coeffs, exp_weights = params
    id_coeffs = np.array(id_coeffs, np.float64)
    exp_weights = np.array(exp_weights, np.float64)
    n, dims = targets.shape
    dim_w = np.sqrt(np.array([1.0, 1.0, config.z_weight])[:dims])
    sw = np.sqrt(np.asarray(weights, np.float64))[:, None] * dim_w[None, :]
    k = 0 if fixed_id is not None else (len(id_coeffs) if config.num_id is None else min(config.num_id, len(id_coeffs)))
    ea = np.asarray(exp_active)
    damping = 1e-3

    def residual(s, r, t, a, b):
        cr = (FLIP @ r)[:dims]
        pts = basis.points(a, b)
        return ((pts @ cr.T) + t[:dims] / s - targets / s) * sw, pts

    res, pts = residual(scale, rotation, translation, id_coeffs, exp_weights)

    def cost(res, a, b):
        return float((res**2).sum() + config.id_reg * (a[:k] ** 2).sum() + config.exp_reg * (b[ea] ** 2).sum())

    current = cost(res, id_coeffs, exp_weights)
    for _ in range(iterations):
        cr = (FLIP @ rotation)[:dims]
        # residual r = C R X + t/s - y/s (cm); columns: rotation (3), log-scale (1), t/s (dims), id (k), exp
        # Jacobian laid out parameter-major (P x N x D) so that flattening it is free
        j_rot = np.einsum("dc,nce->end", cr, _skew_columns(pts))  # 3 x N x D
        j_scale = (targets / scale)[None]  # d(-y/s)/d(log s) = +y/s
        j_t = np.broadcast_to(np.eye(dims)[:, None, :], (dims, n, dims))
        cols = [j_rot, j_scale, j_t]
        if k:
            cols.append(basis.id[:k] @ cr.T)
        cols.append(basis.exp[ea] @ cr.T)
        jac = np.concatenate(cols, 0) * sw[None]
        p = jac.shape[0]
        jm = jac.reshape(p, -1)
        rv = res.reshape(-1)
        h = jm @ jm.T
        g = -(jm @ rv)
        n_pose = 3 + 1 + dims
        reg = np.zeros(p)
        reg[n_pose : n_pose + k] = config.id_reg
        reg[n_pose + k :] = config.exp_reg
        x_now = np.concatenate([np.zeros(n_pose), id_coeffs[:k], exp_weights[ea]])
        g -= reg * x_now
        lower = np.full(p, -np.inf)
        upper = np.full(p, np.inf)
        lower[n_pose + k :] = -exp_weights[ea]
        upper[n_pose + k :] = 1.0 - exp_weights[ea]
        for _attempt in range(6):
            step = box_qp(h + np.diag(reg) + damping * np.diag(np.diag(h) + 1e-9), g, lower, upper, iters=30)
            r_new = rotation @ axis_angle_to_matrix_np(step[:3])
            s_new = scale * np.exp(step[3])
            t_new = translation.copy()
            # t/s is the parameter: t_new/s_new = t/s + dt
            t_new[:dims] = (translation[:dims] / scale + step[4 : 4 + dims]) * s_new
            a_new = id_coeffs.copy()
            a_new[:k] += step[n_pose : n_pose + k]
            b_new = exp_weights.copy()
            b_new[ea] = np.clip(b_new[ea] + step[n_pose + k :], 0.0, 1.0)
            res_new, pts_new = residual(s_new, r_new, t_new, a_new, b_new)
            new = cost(res_new, a_new, b_new)
            if new <= current:
                scale, rotation, translation, id_coeffs, exp_weights = s_new, r_new, t_new, a_new, b_new
                res, pts, current = res_new, pts_new, new
                damping = max(damping / 3, 1e-9)
                break
            damping *= 10
        else:
            break
    return scale, rotation, translation, id_coeffs, exp_weights


def robust_weights(residual_cm: np.ndarray, sigma: float) -> np.ndarray:
    """Cauchy IRLS weights for per-point residual norms."""
    return 1.0 / (1.0 + (residual_cm / sigma) ** 2)
