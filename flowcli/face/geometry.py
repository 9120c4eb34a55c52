"""Camera and geometry helpers for face fitting.

Camera: scaled orthographic. A model point X (centimetres; x right, y up, z towards the viewer, ICT's frame)
maps to image pixels as  p = s * C R X + t,  C = diag(1, -1, -1),  of which (x, y) are image coordinates
(x right, y down) and the third coordinate is depth (larger = farther), the convention of MediaPipe's z.
Euler angles: R = Rx(pitch) Ry(yaw) Rz(roll), in the model frame.
"""

from __future__ import annotations

import math

import numpy as np
import torch

FLIP = np.diag([1.0, -1.0, -1.0])


def nearest_rotation(m: np.ndarray) -> np.ndarray:
    """The rotation closest to a 3x3 matrix in Frobenius norm (SVD, determinant forced to +1)."""
    u, _, vt = np.linalg.svd(m)
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1.0, 1.0, d]) @ vt


def affine_camera(points3d: np.ndarray, image_points: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Least-squares affine camera T (D x 4) with image_points ~ T [X; 1]:  T = Y Xh^T (Xh Xh^T)^-1 (weighted)."""
    x = np.asarray(points3d, np.float64)
    y = np.asarray(image_points, np.float64)
    xh = np.concatenate([x, np.ones((len(x), 1))], 1)
    w = np.ones(len(x)) if weights is None else np.asarray(weights, np.float64)
    gram = (xh * w[:, None]).T @ xh
    return np.linalg.solve(gram, (xh * w[:, None]).T @ y).T


def pose_from_affine(t_affine: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Project an affine camera (2x4 or 3x4, in the s C R X + t convention) to (scale, rotation, translation)."""
    a = t_affine[:, :3]
    n0, n1 = np.linalg.norm(a[0]), np.linalg.norm(a[1])
    scale = (n0 + n1) / 2
    r0, r1 = a[0] / n0, -a[1] / n1
    r2 = np.cross(r0, r1)
    if a.shape[0] == 3 and np.linalg.norm(a[2]) > 0:
        r2 = -a[2] / np.linalg.norm(a[2]) + r2  # both estimates of the third row, averaged
    rotation = nearest_rotation(np.stack([r0, r1, r2]))
    translation = np.zeros(3)
    translation[: t_affine.shape[0]] = t_affine[:, 3]
    return float(scale), rotation, translation


def closed_form_pose(
    points3d, image_points, weights=None, depth_weight: float = 0.0
) -> tuple[float, np.ndarray, np.ndarray]:
    """Pose guidance: affine camera in closed form, projected to a scaled rotation, then the scale and
    translation re-solved in closed form for that rotation (from image x, y).

    With 3D image points (x, y, depth) and depth_weight > 0 the depth row joins the affine fit: it pins
    down pitch and yaw, which x and y alone confuse with face shape.
    """
    x = np.asarray(points3d, np.float64)
    y_all = np.asarray(image_points, np.float64)
    y = y_all[:, :2]
    w = np.ones(len(x)) if weights is None else np.asarray(weights, np.float64)
    if depth_weight > 0 and y_all.shape[1] == 3:
        t3 = affine_camera(x, y_all, w)
        a = t3[:, :3]
        # every row has the same norm (s) for a scaled rotation: rebalance the depth row before projecting
        rows = a / np.linalg.norm(a, axis=1, keepdims=True)
        m = FLIP @ np.stack(
            [rows[0], rows[1], rows[2] * depth_weight + (1 - depth_weight) * -np.cross(rows[0], -rows[1])]
        )
        rotation = nearest_rotation(m)
        scale, translation = 1.0, np.zeros(3)
    else:
        scale, rotation, translation = pose_from_affine(affine_camera(x, y, w))
    q = (x @ rotation.T @ FLIP.T)[:, :2]
    wn = w / w.sum()
    qc, yc = q - wn @ q, y - wn @ y
    scale = float((wn * (qc * yc).sum(1)).sum() / (wn * (qc * qc).sum(1)).sum())
    translation[:2] = wn @ y - scale * (wn @ q)
    return scale, rotation, translation


def project(points3d: np.ndarray, scale: float, rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """s C R X + t for an N x 3 array (numpy)."""
    return scale * np.asarray(points3d) @ (FLIP @ rotation).T + translation


def euler_to_rotation(pitch: float, yaw: float, roll: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = (
        math.cos(pitch),
        math.sin(pitch),
        math.cos(yaw),
        math.sin(yaw),
        math.cos(roll),
        math.sin(roll),
    )
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rx @ ry @ rz


def rotation_to_euler(rotation: np.ndarray) -> tuple[float, float, float]:
    """(pitch, yaw, roll) in radians with R = Rx(pitch) Ry(yaw) Rz(roll)."""
    r = np.asarray(rotation)
    yaw = math.asin(float(np.clip(r[0, 2], -1.0, 1.0)))
    pitch = math.atan2(-r[1, 2], r[2, 2])
    roll = math.atan2(-r[0, 1], r[0, 0])
    return pitch, yaw, roll


def axis_angle_to_matrix(v: torch.Tensor) -> torch.Tensor:
    """Rodrigues for a batch [..., 3] -> [..., 3, 3], smooth at zero."""
    theta2 = (v * v).sum(-1, keepdim=True)[..., None]
    theta = torch.sqrt(theta2 + 1e-24)
    k = torch.zeros(v.shape[:-1] + (3, 3), dtype=v.dtype, device=v.device)
    k[..., 0, 1], k[..., 0, 2], k[..., 1, 2] = -v[..., 2], v[..., 1], -v[..., 0]
    k = k - k.transpose(-1, -2)
    small = theta2 < 1e-8
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / (theta2 + 1e-24))
    eye = torch.eye(3, dtype=v.dtype, device=v.device).expand_as(k)
    return eye + a * k + b * (k @ k)


def axis_angle_to_matrix_np(v: np.ndarray) -> np.ndarray:
    theta = float(np.linalg.norm(v))
    if theta < 1e-12:
        return np.eye(3)
    k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]]) / theta
    return np.eye(3) + math.sin(theta) * k + (1 - math.cos(theta)) * (k @ k)


def matrix_to_axis_angle(r: np.ndarray) -> np.ndarray:
    cos = np.clip((np.trace(r) - 1) / 2, -1.0, 1.0)
    theta = math.acos(cos)
    if theta < 1e-8:
        return np.zeros(3)
    axis = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    if math.pi - theta < 1e-4:  # near 180 degrees the antisymmetric part vanishes
        w, v = np.linalg.eigh((r + np.eye(3)) / 2)
        return v[:, -1] * theta
    return axis / (2 * math.sin(theta)) * theta


def rotation_angle_deg(r1: np.ndarray, r2: np.ndarray) -> float:
    """Geodesic angle between two rotations, in degrees."""
    cos = (np.trace(np.asarray(r1).T @ np.asarray(r2)) - 1) / 2
    return math.degrees(math.acos(float(np.clip(cos, -1.0, 1.0))))


def closest_points_on_mesh(points: np.ndarray, vertices: np.ndarray, triangles: np.ndarray, k: int = 12):
    """For each point, the closest point on the mesh: (triangle index, barycentric weights, distance).

    Candidate triangles are those touching the k nearest vertices, which is exact for reasonable meshes.
    """
    points = np.asarray(points, np.float64)
    vertices = np.asarray(vertices, np.float64)
    d2 = ((points[:, None, :] - vertices[None]) ** 2).sum(-1)
    nearest = np.argpartition(d2, k, axis=1)[:, :k]
    incident = [[] for _ in range(len(vertices))]
    for f, tri in enumerate(triangles):
        for v in tri:
            incident[v].append(f)
    out_tri = np.zeros(len(points), np.int64)
    out_bary = np.zeros((len(points), 3))
    out_dist = np.zeros(len(points))
    for i, p in enumerate(points):
        cands = np.unique(np.concatenate([incident[v] for v in nearest[i]]).astype(np.int64))
        tri = vertices[triangles[cands]]
        q, bary = _closest_on_triangles(p, tri)
        dist = np.linalg.norm(q - p, axis=1)
        j = int(np.argmin(dist))
        out_tri[i], out_bary[i], out_dist[i] = cands[j], bary[j], dist[j]
    return out_tri, out_bary, out_dist


def _closest_on_triangles(p: np.ndarray, tri: np.ndarray):
    """Closest point of p on each triangle (Ericson, Real-Time Collision Detection 5.1.5), vectorised."""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = (ab * ap).sum(1), (ac * ap).sum(1)
    bp = p - b
    d3, d4 = (ab * bp).sum(1), (ac * bp).sum(1)
    cp = p - c
    d5, d6 = (ab * cp).sum(1), (ac * cp).sum(1)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2
    n = len(tri)
    bary = np.zeros((n, 3))
    denom = va + vb + vc
    with np.errstate(divide="ignore", invalid="ignore"):
        v = vb / denom
        w = vc / denom
    bary[:] = np.stack([1 - v - w, v, w], 1)
    # edge and vertex regions, later assignments take precedence in the order of Ericson's tests
    e_bc = (va <= 0) & ((d4 - d3) >= 0) & ((d5 - d6) >= 0)
    t = (d4 - d3) / np.where(e_bc, (d4 - d3) + (d5 - d6), 1)
    bary[e_bc] = np.stack([np.zeros(n), 1 - t, t], 1)[e_bc]
    e_ac = (vb <= 0) & (d2 >= 0) & (d6 <= 0)
    t = d2 / np.where(e_ac, d2 - d6, 1)
    bary[e_ac] = np.stack([1 - t, np.zeros(n), t], 1)[e_ac]
    e_ab = (vc <= 0) & (d1 >= 0) & (d3 <= 0)
    t = d1 / np.where(e_ab, d1 - d3, 1)
    bary[e_ab] = np.stack([1 - t, t, np.zeros(n)], 1)[e_ab]
    v_c = (d6 >= 0) & (d5 <= d6)
    bary[v_c] = [0, 0, 1]
    v_b = (d3 >= 0) & (d4 <= d3)
    bary[v_b] = [0, 1, 0]
    v_a = (d1 <= 0) & (d2 <= 0)
    bary[v_a] = [1, 0, 0]
    q = bary[:, :1] * a + bary[:, 1:2] * b + bary[:, 2:] * c
    return q, bary
