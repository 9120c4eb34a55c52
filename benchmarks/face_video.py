"""Video mode of `flowcli face`: a face on every frame, and landmark jitter against per-frame fits.

    python benchmarks/face_video.py [--video ../shared/data/face/video/obama.mp4] [--smooth 40] [--census 0.5] [--json]

Jitter: mean norm of the second temporal difference of the fitted model's 68 landmarks (pixels). The
baseline fits every frame independently (detection, landmark passes, fit: image mode); video mode tracks
the crop from frame to frame and fits all frames jointly (one identity, temporal and census terms). A value the
clip is too short for (jitter needs 3 frames with a face, census 2) is null, with a note on stderr saying why.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flowcli.errors import FlowcliError  # noqa: E402 (after the sys.path insert)


def tracking_quality(
    independent: list, joint: list, independent_fits: list, fits: list, census: Callable[[list], float]
) -> tuple[dict, list[str]]:
    """The summary's jitter, distance and census values, and one line for each group of them that is n/a (null).

    `independent` and `joint` hold each frame's 68 x 2 landmarks or None (no face) in either mode, `independent_fits`
    and `fits` their fits; `census(fits)` is the census distance of a clip's consecutive fits. Jitter (a second
    difference) needs 3 frames and census 2, each with a face in both modes: a shorter clip gives n/a, not NaN.
    """
    from flowcli.face.video import landmark_jitter

    both = [i for i in range(len(independent)) if independent[i] is not None and joint[i] is not None]
    contiguous = len(both) == len(independent)
    ind = np.array([independent[i] for i in both])
    jnt = np.array([joint[i] for i in both])
    quality = dict.fromkeys(
        (
            "jitter_px_independent",
            "jitter_px_video_mode",
            "jitter_reduction",
            "mean_distance_video_vs_independent_px",
            "census_distance_independent",
            "census_distance_video_mode",
        )
    )
    notes = []
    if both:
        quality["mean_distance_video_vs_independent_px"] = float(np.linalg.norm(ind - jnt, axis=-1).mean())
    else:
        notes.append("mean_distance_video_vs_independent_px is n/a: no frame has a face in both modes")
    if not contiguous:
        notes.append(
            f"jitter and census values are n/a: {len(independent) - len(both)} of {len(independent)} frames lack a "
            "face in one mode, and they compare consecutive frames"
        )
        return quality, notes
    if len(both) >= 3:
        quality["jitter_px_independent"] = landmark_jitter(ind)
        quality["jitter_px_video_mode"] = landmark_jitter(jnt)
        if quality["jitter_px_independent"] > 0:
            quality["jitter_reduction"] = 1 - quality["jitter_px_video_mode"] / quality["jitter_px_independent"]
        else:
            notes.append("jitter_reduction is n/a: the per-frame fits do not jitter at all (a still clip?)")
    else:
        notes.append(f"jitter values are n/a: they need at least 3 frames, the clip has {len(both)}")
    if len(both) >= 2:
        quality["census_distance_independent"] = census(independent_fits)
        quality["census_distance_video_mode"] = census(fits)
    else:
        notes.append(f"census values are n/a: they need at least 2 frames, the clip has {len(both)}")
    return quality, notes


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
        small_flow,
        small_gray,
    )

    video = args.video or args.data / "video" / "obama.mp4"
    pipe = FacePipeline(FaceAssets.locate(args.data))
    reader = VideoReader(video)
    frames = list(reader)
    if not frames:
        stopped = reader.decode_error or "it has none"
        sys.exit(f"error: no frame of {video} could be decoded ({stopped}); give another --video")
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

    quality, notes = tracking_quality(
        independent, joint, independent_fits, fits, lambda clip: census_consistency(pipe.fitter, clip, grays, zoom)
    )
    summary = {
        "video": str(video),
        "frames_decoded": len(frames),
        "decode_stopped": reader.decode_error,
        "frames_with_face_independent": sum(x is not None for x in independent),
        "frames_with_face_video_mode": sum(x is not None for x in joint),
        **quality,
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
    for note in notes:  # on stderr: --json output stays one JSON document
        print(f"note: {note}", file=sys.stderr)
    print(json.dumps(summary, indent=None if args.json else 1))


if __name__ == "__main__":
    try:
        main()
    except FlowcliError as error:  # the TFLite runtime not installed, an unreadable video: one line, no traceback
        sys.exit(f"error: {error}")
