"""Closed-form pose, rotations, the box-constrained solver and closest points: exact on noise-free data."""

import math

import numpy as np
import pytest
import torch

from flowcli.face.geometry import (
    FLIP,
    axis_angle_to_matrix,
    closed_form_pose,
    closest_points_on_mesh,
    euler_to_rotation,
    matrix_to_axis_angle,
    project,
    rotation_angle_deg,
    rotation_to_euler,
)
from flowcli.face.solve import box_qp


@pytest.mark.parametrize("seed", range(5))
def test_closed_form_pose_exact(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, 3)) * [7.0, 9.0, 4.0]
    r = euler_to_rotation(*np.radians(rng.uniform(-60, 60, 3)))
    s, t = rng.uniform(5, 40), np.array([rng.uniform(100, 600), rng.uniform(100, 400), 0.0])
    y = project(x, s, r, t)
    for targets, depth_weight in ((y[:, :2], 0.0), (y, 1.0)):
        s2, r2, t2 = closed_form_pose(x, targets, depth_weight=depth_weight)
        np.testing.assert_allclose(r2, r, atol=1e-10)
        assert abs(s2 - s) < 1e-8 * s
        np.testing.assert_allclose(t2[:2], t[:2], atol=1e-6)
    # the affine solve is the textbook formula T = X_uv Xh^T (Xh Xh^T)^-1
    xh = np.concatenate([x, np.ones((len(x), 1))], 1).T
    affine = y[:, :2].T @ xh.T @ np.linalg.inv(xh @ xh.T)
    np.testing.assert_allclose(affine[:, :3], s * (FLIP @ r)[:2], atol=1e-8)


def test_euler_and_axis_angle_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(20):
        angles = np.radians(rng.uniform(-80, 80, 3))
        r = euler_to_rotation(*angles)
        np.testing.assert_allclose(rotation_to_euler(r), angles, atol=1e-10)
        v = matrix_to_axis_angle(r)
        back = axis_angle_to_matrix(torch.tensor(v)).numpy()
        np.testing.assert_allclose(back, r, atol=1e-10)
    assert np.allclose(axis_angle_to_matrix(torch.zeros(3)).numpy(), np.eye(3))
    assert math.isclose(rotation_angle_deg(np.eye(3), euler_to_rotation(0, math.radians(30), 0)), 30.0, rel_tol=1e-9)


def test_box_qp_matches_kkt():
    rng = np.random.default_rng(1)
    for _ in range(10):
        a = rng.normal(size=(60, 40))
        h = a.T @ a + 0.1 * np.eye(40)
        g = rng.normal(size=40) * 5
        lower = np.r_[np.full(10, -np.inf), np.zeros(30)]
        upper = np.r_[np.full(10, np.inf), np.ones(30)]
        x = box_qp(h, g, lower, upper)
        assert np.all(x >= lower) and np.all(x <= upper)
        grad = h @ x - g
        free = (x > lower + 1e-9) & (x < upper - 1e-9)
        assert np.abs(grad[free]).max() < 1e-8
        assert np.all(grad[x <= lower + 1e-9] >= -1e-8) and np.all(grad[x >= upper - 1e-9] <= 1e-8)


def test_closest_points_on_mesh():
    # a unit square of two triangles in z = 0
    v = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], float)
    tri = np.array([[0, 1, 2], [0, 2, 3]])
    pts = np.array([[0.25, 0.1, 2.0], [2.0, 0.5, 0.0], [-1.0, -1.0, 1.0]])
    f, bary, dist = closest_points_on_mesh(pts, v, tri, k=3)
    q = (v[tri[f]] * bary[:, :, None]).sum(1)
    np.testing.assert_allclose(q, [[0.25, 0.1, 0], [1.0, 0.5, 0], [0, 0, 0]], atol=1e-12)
    np.testing.assert_allclose(dist, [2.0, 1.0, math.sqrt(3)], atol=1e-12)
