"""AFLW2000-3D accuracy of `flowcli face`: NME of the 68 landmarks per yaw bin, and yaw error.

    python benchmarks/face_aflw.py [--data ../shared/data/face] [--calibrate-jaw] [--json]

NME protocol (shared/data/README.md): mean L2 distance over the 68 re-annotated points divided by
sqrt(width * height) of the ground-truth 68-point box; per yaw bin (|yaw| <= 30, 30-60, > 60) and their
mean. Yaw ground truth is Pose_Para[1] of the .mat files (read with scipy, a benchmark-only dependency).

The jaw landmarks of the fitted model are 17 mesh vertices (flowcli/face/fit.py JAW_VERTICES) chosen to
match AFLW2000-3D's 3D jawline on these samples. `--calibrate-jaw` redoes that choice and reports its
leave-one-out NME (each image scored with vertices chosen on the other seven), the honest estimate.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flowcli.errors import FlowcliError  # noqa: E402 (after the sys.path insert)


def read_pts(path: Path) -> np.ndarray:
    text = path.read_text()
    body = text[text.index("{") + 1 : text.index("}")]
    return np.array(body.split(), dtype=np.float64).reshape(-1, 2)


def nme(pred: np.ndarray, gt: np.ndarray) -> float:
    wh = gt.max(0) - gt.min(0)
    return float(np.linalg.norm(pred - gt, axis=1).mean() / math.sqrt(wh[0] * wh[1]))


def bins(yaws, values) -> dict:
    yaws, values = np.abs(np.asarray(yaws)), np.asarray(values)
    out = {}
    for name, lo, hi in (("0-30", -1, 30), ("30-60", 30, 60), ("60-90", 60, math.inf)):
        sel = (yaws > lo) & (yaws <= hi)
        out[name] = float(values[sel].mean()) if sel.any() else None
    present = [v for v in out.values() if v is not None]
    out["bin_mean"] = float(np.mean(present))
    out["image_mean"] = float(values.mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "face")
    parser.add_argument("--calibrate-jaw", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"error: face data folder {args.data} not found; pass --data (the shared data's face/ folder)")

    try:
        import scipy.io
    except ImportError:
        sys.exit("error: face_aflw.py reads the .mat ground truth with scipy (not in flowcli): pip install scipy")
    import torch

    torch.set_num_threads(1)
    from flowcli.face.assets import FaceAssets
    from flowcli.face.correspondence import MP_TO_68
    from flowcli.face.media import read_image
    from flowcli.face.pipeline import FacePipeline

    pipe = FacePipeline(FaceAssets.locate(args.data))
    images = sorted((args.data / "aflw2000-3d").glob("*.jpg"))
    if not images:
        sys.exit(f"error: no AFLW2000-3D images (*.jpg) in {args.data / 'aflw2000-3d'}; pass --data")
    rows = []
    for path in images:
        gt = read_pts(path.with_name(path.stem + "_reannotated.pts"))
        pose = scipy.io.loadmat(path.with_suffix(".mat"))["Pose_Para"].ravel()
        yaw_gt = math.degrees(pose[1])
        image = read_image(path)
        t0 = time.perf_counter()
        results, _ = pipe.fit_image(image)
        seconds = time.perf_counter() - t0
        res = results[0]
        yaw = res.fit.euler_degrees()[1]
        lm = res.landmarks68[:, :2]
        norm = math.sqrt(float(np.prod(gt.max(0) - gt.min(0))))
        rows.append(
            {
                "image": path.name,
                "yaw_gt": yaw_gt,
                "yaw": yaw,
                "yaw_error": abs(yaw - yaw_gt),
                "nme": nme(lm, gt),
                "nme_inner": float(np.linalg.norm(lm[17:] - gt[17:], axis=1).mean() / norm),
                "nme_jaw": float(np.linalg.norm(lm[:17] - gt[:17], axis=1).mean() / norm),
                "nme_mediapipe": nme(res.landmarks468[MP_TO_68, :2], gt),
                "seconds": seconds,
                "_vertices": res.vertices[:, :2],
                "_gt": gt,
            }
        )
    yaws = [r["yaw_gt"] for r in rows]
    summary = {
        "images": len(rows),
        "nme_fitted": bins(yaws, [r["nme"] for r in rows]),
        "nme_mediapipe_raw": bins(yaws, [r["nme_mediapipe"] for r in rows]),
        "nme_fitted_inner51": float(np.mean([r["nme_inner"] for r in rows])),
        "nme_fitted_jaw17": float(np.mean([r["nme_jaw"] for r in rows])),
        "yaw_error_deg_mean": float(np.mean([r["yaw_error"] for r in rows])),
        "seconds_per_image": float(np.mean([r["seconds"] for r in rows])),
    }
    if args.calibrate_jaw:
        summary["jaw_calibration"] = calibrate_jaw(pipe.model, rows)
        loo_jaw = summary["jaw_calibration"]["loo_nme_jaw_per_image"]
        loo_all = [(51 * r["nme_inner"] + 17 * j) / 68 for r, j in zip(rows, loo_jaw)]
        summary["nme_fitted_leave_one_out_jaw"] = bins(yaws, loo_all)
    for r in rows:
        r.pop("_vertices")
        r.pop("_gt")
    if args.json:
        print(json.dumps({"summary": summary, "images": rows}, indent=1))
        return
    for r in rows:
        print(
            f"{r['image']}: yaw {r['yaw_gt']:6.1f} (fit {r['yaw']:6.1f})  NME fitted {100 * r['nme']:.2f}%  "
            f"(inner {100 * r['nme_inner']:.2f}%, jaw {100 * r['nme_jaw']:.2f}%)  "
            f"MediaPipe {100 * r['nme_mediapipe']:.2f}%  {r['seconds']:.2f}s"
        )
    print(json.dumps(summary, indent=1))


def calibrate_jaw(model, rows, radius_cm: float = 2.0) -> dict:
    """Choose 17 mirror-symmetric jaw vertices near ICT's extended jawline that best match the annotations.

    Candidates for landmark k lie within radius_cm of the arc-length jawline point k on the neutral mesh;
    landmark 16-k takes the mirror vertex of landmark k's choice.
    """
    from scipy.spatial import cKDTree

    from flowcli.face.fit import landmark68_surface_points

    v = model.mean.astype(np.float64)
    vids, bary = landmark68_surface_points(model, jaw="arc")
    arc = (v[vids[:17]] * bary[:17, :, None]).sum(1)
    mirror = cKDTree(v).query(v * np.array([-1.0, 1.0, 1.0]))[1]
    cands = [np.nonzero(np.linalg.norm(v - a, axis=1) < radius_cm)[0] for a in arc]
    err = []
    for r in rows:
        gt = r["_gt"]
        norm = math.sqrt(np.prod(gt.max(0) - gt.min(0)))
        err.append(np.linalg.norm(r["_vertices"][None] - gt[:17, None], axis=2) / norm)  # 17 x V
    err = np.array(err)

    def choose(idx):
        best = np.zeros(17, np.int64)
        for k in range(9):
            c = cands[k]
            cost = err[idx][:, k, c].mean(0) + err[idx][:, 16 - k, mirror[c]].mean(0)
            best[k] = c[int(np.argmin(cost))]
            best[16 - k] = mirror[best[k]]
        return best

    loo = []
    for i in range(len(rows)):
        chosen = choose([j for j in range(len(rows)) if j != i])
        loo.append(float(err[i, np.arange(17), chosen].mean()))
    final = choose(list(range(len(rows))))
    return {
        "vertices": final.tolist(),
        "loo_nme_jaw_per_image": loo,
        "loo_nme_jaw": float(np.mean(loo)),
        "in_sample_nme_jaw": float(err[:, np.arange(17), final].mean()),
    }


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        main()
    except FlowcliError as error:  # the TFLite runtime not installed, a face model file missing: one line, no traceback
        sys.exit(f"error: {error}")
