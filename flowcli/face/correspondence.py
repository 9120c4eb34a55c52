"""Where MediaPipe's 468 Face Mesh points lie on the face model's surface, and the 68-point mappings.

`compute_correspondence` derives the dense correspondence from data: fit the model to the inner 51 of the
68 landmarks, carry every MediaPipe point into model space, take its closest point on the fitted surface,
average over frames on the neutral mesh, and repeat with all 468 points. The shipped table
(`flowcli/face/mp468_ict.py`) was made this way from the talking-head clip in the shared data (not from any
evaluation image); `python -m flowcli.face.correspondence VIDEO ASSETS` regenerates it.
"""

from __future__ import annotations

import numpy as np

from flowcli.face.geometry import FLIP, closed_form_pose, closest_points_on_mesh
from flowcli.face.model import FaceModel
from flowcli.face.solve import (
    ShapeSolveConfig,
    gauss_newton,
    point_basis,
    robust_weights,
    solve_shape,
)

# MediaPipe Face Mesh index for each of the 68 iBUG / Multi-PIE landmarks (the commonly used mapping).
MP_TO_68 = [
    127,
    234,
    93,
    132,
    58,
    136,
    150,
    176,
    152,
    400,
    379,
    365,
    288,
    361,
    323,
    454,
    356,
    70,
    63,
    105,
    66,
    107,
    336,
    296,
    334,
    293,
    300,
    168,
    197,
    5,
    4,
    75,
    97,
    2,
    326,
    305,
    33,
    160,
    158,
    133,
    153,
    144,
    362,
    385,
    387,
    263,
    373,
    380,
    61,
    39,
    37,
    0,
    267,
    269,
    291,
    405,
    314,
    17,
    84,
    181,
    78,
    82,
    13,
    312,
    308,
    317,
    14,
    87,
]

# MediaPipe's face oval, clockwise from the top of the forehead.
FACE_OVAL = [
    10,
    338,
    297,
    332,
    284,
    251,
    389,
    356,
    454,
    323,
    361,
    288,
    397,
    365,
    379,
    378,
    400,
    377,
    152,
    148,
    176,
    149,
    150,
    136,
    172,
    58,
    132,
    93,
    234,
    127,
    162,
    21,
    54,
    103,
    67,
    109,
]
# The lower part of the oval (temple to chin to temple): the face contour a jaw term works on.
# The first list is on the subject's left (image right in a frontal view), the second on the subject's right.
JAW_OVAL_LEFT = [356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377]
JAW_OVAL_RIGHT = [127, 234, 93, 132, 58, 172, 136, 150, 149, 176, 148]
CHIN = 152


def fit_frame(
    basis, targets, model, config, weights, iterations=6, sigma=None, fixed_id=None, depth_weight=0.0, gn_rounds=3
):
    """Closed-form pose and regularised shape alternated on fixed correspondences, then joint damped
    Gauss-Newton rounds (Cauchy-reweighted when sigma is given). Returns (scale, R, t, id, exp)."""
    exp_active = model.active_expressions()
    id_coeffs = np.zeros(len(model.id_basis)) if fixed_id is None else fixed_id
    exp_weights = np.zeros(len(model.exp_basis))
    w = np.asarray(weights, np.float64).copy()

    def reweight(scale, rotation, translation, id_coeffs, exp_weights):
        if sigma is None:
            return w
        pred = scale * basis.points(id_coeffs, exp_weights) @ (FLIP @ rotation).T + translation
        res = np.linalg.norm((pred - targets)[:, :2], axis=1) / scale
        return weights * robust_weights(res, sigma)

    for _ in range(iterations):
        pts = basis.points(id_coeffs, exp_weights)
        scale, rotation, _ = closed_form_pose(pts, targets, w, depth_weight=depth_weight)
        id_coeffs, exp_weights, translation = solve_shape(
            basis, targets, scale, rotation, w, config, exp_active, fixed_id=fixed_id
        )
        w = reweight(scale, rotation, translation, id_coeffs, exp_weights)
    params = (scale, rotation, translation, id_coeffs, exp_weights)
    for _ in range(gn_rounds):
        params = gauss_newton(basis, targets, params, w, config, exp_active, iterations=4, fixed_id=fixed_id)
        w = reweight(*params)
    return params


def compute_correspondence(model: FaceModel, frames_points: list[np.ndarray], rounds: int = 3, z_weight: float = 0.5):
    """Dense correspondence from MediaPipe point sets (each 468 x 3, image px + depth) of real faces.

    Returns (vertex ids 468 x 3, barycentric weights 468 x 3, mean residual in cm per round).
    """
    config = ShapeSolveConfig(id_reg=2.0, exp_reg=0.1, z_weight=z_weight)
    vids = model.landmarks68[17:][:, None].repeat(3, 1)
    bary = np.tile([1.0, 0.0, 0.0], (51, 1))
    sparse = True
    history = []
    mean_mesh = model.mean.astype(np.float64)
    for _ in range(rounds):
        on_mean, dists = [], []
        for pts in frames_points:
            targets = pts[MP_TO_68[17:]] if sparse else pts
            basis = point_basis(model, vids, bary)
            s, r, t, a, b = fit_frame(
                basis, targets, model, config, np.ones(len(targets)), sigma=None if sparse else 0.5
            )
            verts = model.vertices(a, b)
            local = (pts - t) @ (FLIP @ r) / s  # inverse of s C R X + t (C R is orthogonal)
            tri, w, dist = closest_points_on_mesh(local, verts, model.triangles)
            on_mean.append((mean_mesh[model.triangles[tri]] * w[:, :, None]).sum(1))
            dists.append(dist)
        target = np.median(np.stack(on_mean), 0)
        tri, bary, _ = closest_points_on_mesh(target, mean_mesh, model.triangles)
        vids = model.triangles[tri]
        history.append(float(np.mean(dists)))
        sparse = False
    return vids, bary, history


TABLE = "mp468_ict.py"


def write_table(path, vids: np.ndarray, bary: np.ndarray) -> None:
    """Write the correspondence table as a Python module, atomically: an interrupted or failed write leaves
    the previous table whole (the package imports it)."""
    from flowcli.io.atomic import atomic_path

    lines = [
        '"""Generated by `python -m flowcli.face.correspondence VIDEO ASSETS`: MediaPipe point i lies at',
        'sum_k BARY[i][k] * vertex[VERTS[i][k]] of the ICT-FaceKit face region (see correspondence.py)."""',
        "",
        "# fmt: off",
        "VERTS = [",
        *[f"    ({a}, {b}, {c})," for a, b, c in np.asarray(vids).tolist()],
        "]",
        "BARY = [",
        *[f"    ({a:.5f}, {b:.5f}, {c:.5f})," for a, b, c in np.asarray(bary).tolist()],
        "]",
        "# fmt: on",
        "",
    ]
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    """`python -m flowcli.face.correspondence VIDEO ASSETS [--output FILE]`: regenerate the table."""
    import argparse
    import sys
    from pathlib import Path

    parser = argparse.ArgumentParser(
        prog="python -m flowcli.face.correspondence",
        description="Derive MediaPipe's 468-point correspondence on the ICT-FaceKit face mesh from a video of a face "
        "and write it as a Python module (by default flowcli/face/mp468_ict.py, replaced atomically).",
    )
    parser.add_argument("video", type=Path, help="a video of one real face (e.g. shared/data/face/video/obama.mp4)")
    parser.add_argument("assets", type=Path, help="a face asset folder laid out like shared/data/face")
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name(TABLE), help="the module to write")
    args = parser.parse_args(argv)
    if not args.video.is_file():
        parser.error(f"video {args.video} not found")
    if not args.assets.is_dir():
        parser.error(f"face asset folder {args.assets} not found")
    if args.output.suffix != ".py" or args.output.is_dir():
        parser.error(f"--output {args.output} must be a .py file")
    from flowcli.errors import FlowcliError

    try:
        _main(args.video, args.assets, args.output)
    except FlowcliError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(error.exit_code) from None


def _main(video, assets, out) -> None:
    import sys

    from flowcli.errors import InputError
    from flowcli.face.assets import FaceAssets
    from flowcli.face.media import VideoReader
    from flowcli.face.mediapipe import FaceMeshRunner

    fa = FaceAssets.locate(assets)
    model = fa.model()
    runner = FaceMeshRunner(fa.mediapipe_dir)
    sets = []
    reader = VideoReader(video)
    try:
        for i, frame in enumerate(reader):
            if i % 2:
                continue
            dets = runner.detect(frame)
            if dets:
                sets.append(runner.landmarks(frame, dets[0]).points)
    finally:
        reader.close()
    if not sets:
        raise InputError(f"{video}: no face found in any frame; give a video of one real face")
    vids, bary, history = compute_correspondence(model, sets)
    print(
        f"# {len(sets)} frames, mean point-to-surface distance per round (cm): {np.round(history, 3).tolist()}",
        file=sys.stderr,
    )
    write_table(out, vids, bary)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
