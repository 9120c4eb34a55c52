"""Speed of `flowcli face` per 1280x720 frame on this CPU, by stage.

    python benchmarks/face_speed.py [--frames 12] [--threads 1]

Stages (image mode): BlazeFace detection, Face Mesh passes until the crop settles, closed-form fit
(pose guidance, shape least squares, Gauss-Newton), PyTorch refinement, overlay rendering.
Video mode: tracked Face Mesh (two passes from the previous frame's crop) and the joint fit per frame.
Reports the median per frame and the 1-minute load average (other jobs on the machine slow all of it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flowcli.errors import FlowcliError  # noqa: E402 (after the sys.path insert)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "face")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"error: face data folder {args.data} not found; pass --data (the shared data's face/ folder)")

    import torch

    torch.set_num_threads(args.threads)
    from itertools import islice

    from flowcli.face.assets import FaceAssets
    from flowcli.face.media import VideoReader
    from flowcli.face.pipeline import FacePipeline
    from flowcli.face.render import render_overlay
    from flowcli.face.video import fit_video, small_gray

    t0 = time.perf_counter()
    pipe = FacePipeline(FaceAssets.locate(args.data))
    setup = time.perf_counter() - t0
    frames = list(islice(VideoReader(args.data / "video" / "obama.mp4"), args.frames))
    stages = {k: [] for k in ("detect", "landmarks", "fit_closed_form", "fit_refine", "overlay", "image_total")}
    for frame in frames:
        t = [time.perf_counter()]
        det = pipe.runner.detect(frame)[0]
        t.append(time.perf_counter())
        lm = pipe.runner.landmarks(frame, det)
        t.append(time.perf_counter())
        fit = pipe.fitter.initial_fit(lm.points)
        t.append(time.perf_counter())
        fit = pipe.fitter.refine([fit])[0]
        t.append(time.perf_counter())
        res = pipe.result(fit)
        render_overlay(frame, [(res.vertices, pipe.model.triangles)], [res.landmarks68])
        t.append(time.perf_counter())
        for key, a, b in zip(stages, t[:-1], t[1:]):
            stages[key].append(b - a)
        stages["image_total"].append(t[-1] - t[0])
    t0 = time.perf_counter()
    points, grays, previous, zoom = [], [], None, 1.0
    for frame in frames:
        pts, _ = pipe.track(frame, previous)
        points.append(pts)
        previous = pts
        gray, zoom = small_gray(frame, 640)
        grays.append(gray)
    track = (time.perf_counter() - t0) / len(frames)
    t0 = time.perf_counter()
    fit_video(pipe.fitter, points, grays, zoom)
    joint = (time.perf_counter() - t0) / len(frames)
    report = {
        "frame_size": list(frames[0].shape[1::-1]),
        "frames": len(frames),
        "torch_threads": args.threads,
        "setup_seconds": setup,
        "image_mode_median_seconds": {k: float(np.median(v)) for k, v in stages.items()},
        "video_mode_seconds_per_frame": {"tracked_landmarks": track, "joint_fit": joint, "total": track + joint},
        "load_average_1min": os.getloadavg()[0],
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        main()
    except FlowcliError as error:  # the TFLite runtime not installed, a face model file missing: one line, no traceback
        sys.exit(f"error: {error}")
