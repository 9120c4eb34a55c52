"""Video mode of `flowcli face`: a face on every frame, and landmark jitter against per-frame fits.

    python benchmarks/face_video.py [--video ../shared/data/face/video/obama.mp4] [--smooth 40] [--census 0.5] [--json]

Jitter: mean norm of the second temporal difference of the fitted model's 68 landmarks (pixels). The
baseline fits every frame independently (detection, landmark passes, fit: image mode); video mode tracks
the crop from frame to frame and fits all frames jointly (one identity, temporal and census terms).
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
    parser.add_argument("--video", type=Path, default=None)
    parser.add_argument("--smooth", type=float, default=None, help="VideoOptions.smooth_weight")
    parser.add_argument("--census", type=float, default=None, help="VideoOptions.census_weight")
    parser.add_argument("--flow-weight", type=float, default=None, help="VideoOptions.flow_weight")
    parser.add_argument("--flow", action="store_true", help="add the optical-flow term (flowcli.inference)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"error: face data folder {args.data} not found; pass --data (the shared data's face/ folder)")

    import torch

    torch.set_num_threads(1)
    from flowcli.face.assets import FaceAssets
    from flowcli.face.media import VideoReader
    from flowcli.face.pipeline import FacePipeline, NoFaceError
    from flowcli.face.video import (
        VideoOptions,
        census_consistency,
        fit_video,
        flow_function,
        landmark_jitter,
        small_flow,
        small_gray,
    )

    video = args.video or args.data / "video" / "obama.mp4"
    pipe = FacePipeline(FaceAssets.locate(args.data))
    reader = VideoReader(video)
    frames = list(reader)
    options = VideoOptions()
    if args.smooth is not None:
        options.smooth_weight = args.smooth
    if args.census is not None:
        options.census_weight = args.census
    if args.flow_weight is not None:
        options.flow_weight = args.flow_weight

    t0 = time.perf_counter()
    independent, independent_fits = [], []
    for frame in frames:
        try:
            results, _ = pipe.fit_image(frame)
            independent.append(results[0].landmarks68[:, :2])
            independent_fits.append(results[0].fit)
        except NoFaceError:
            independent.append(None)
            independent_fits.append(None)
    t_independent = (time.perf_counter() - t0) / len(frames)

    t0 = time.perf_counter()
    points, grays, previous, zoom = [], [], None, 1.0
    for frame in frames:
        pts, _ = pipe.track(frame, previous)
        points.append(pts)
        previous = pts
        gray, zoom = small_gray(frame, options.max_side)
        grays.append(gray)
    t_track = (time.perf_counter() - t0) / len(frames)
    flows, t_flow = None, 0.0
    if args.flow:
        flow_fn = flow_function()
        if flow_fn is None:
            raise SystemExit("flowcli.inference (or its weights) is unavailable")
        t0 = time.perf_counter()
        size = tuple(grays[0].shape[-2:])
        flows = [small_flow(flow_fn(a, b), zoom, size) for a, b in zip(frames[:-1], frames[1:])]
        t_flow = (time.perf_counter() - t0) / len(frames)
    t0 = time.perf_counter()
    fits = fit_video(pipe.fitter, points, grays, zoom, flows, options)
    t_fit = (time.perf_counter() - t0) / len(frames)
    joint = [None if f is None else pipe.fitter.landmarks68(f)[:, :2] for f in fits]

    both = [i for i in range(len(frames)) if independent[i] is not None and joint[i] is not None]
    contiguous = len(both) == len(frames)
    ind = np.array([independent[i] for i in both])
    jnt = np.array([joint[i] for i in both])
    summary = {
        "video": str(video),
        "frames_decoded": len(frames),
        "decode_stopped": reader.decode_error,
        "frames_with_face_independent": sum(x is not None for x in independent),
        "frames_with_face_video_mode": sum(x is not None for x in joint),
        "jitter_px_independent": landmark_jitter(ind) if contiguous else None,
        "jitter_px_video_mode": landmark_jitter(jnt) if contiguous else None,
        "mean_distance_video_vs_independent_px": float(np.linalg.norm(ind - jnt, axis=-1).mean()),
        "seconds_per_frame_independent": t_independent,
        "seconds_per_frame_video_tracking": t_track,
        "seconds_per_frame_video_fit": t_fit,
        "seconds_per_frame_flow": t_flow,
        "options": {
            k: getattr(options, k)
            for k in ("smooth_weight", "exp_smooth_weight", "census_weight", "flow_weight", "steps", "window")
        },
        "flow_term": bool(args.flow),
        "load_average": os.getloadavg()[0],
    }
    if contiguous:
        summary["census_distance_independent"] = census_consistency(pipe.fitter, independent_fits, grays, zoom)
        summary["census_distance_video_mode"] = census_consistency(pipe.fitter, fits, grays, zoom)
        summary["jitter_reduction"] = 1 - summary["jitter_px_video_mode"] / summary["jitter_px_independent"]
    print(json.dumps(summary, indent=None if args.json else 1))


if __name__ == "__main__":
    try:
        main()
    except FlowcliError as error:  # the TFLite runtime not installed, an unreadable video: one line, no traceback
        sys.exit(f"error: {error}")
