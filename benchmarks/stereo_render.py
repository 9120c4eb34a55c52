"""Render the README picture of `flowcli stereo` on an OAK-D pair: left view, disparity, depth, point cloud.

Runs the documented command in a subprocess (so the picture shows exactly what users get),

    flowcli stereo LEFT RIGHT --calib stereodemo_calibration.json --pfm --vis --occlusion --depth --ply

then composes one PNG: the left image, the colour-coded disparity, the depth (turbo over the calibration's
depth_range, near = red, invalid = black) and the point cloud re-rendered from a viewpoint turned by --yaw
degrees (z-buffered splats), with the model and its sha256 in the caption.

    python benchmarks/stereo_render.py                                   # shipped default model, 'cycles' pair
    python benchmarks/stereo_render.py --weights tiny.safetensors --note "plumbing check: random tiny model"
    python benchmarks/stereo_render.py --scene desk --out docs/img/stereo_desk.png
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flowcli.errors import FlowcliError  # noqa: E402
from flowcli.io.flow_formats import read_npy, read_png, write_png  # noqa: E402
from flowcli.stereo import read_calibration, read_ply, turbo  # noqa: E402

OAKD = REPO.parent / "shared" / "data" / "footage" / "oakd_stereo"
PANEL = (320, 240)


def run_stereo(left: Path, right: Path, calib: Path, weights: str | None, out: Path, threads: int | None) -> dict:
    command = [sys.executable, "-m", "flowcli.cli.main", "stereo", str(left), str(right), "--calib", str(calib),
               "--pfm", "--vis", "--occlusion", "--depth", "--ply", "-o", str(out), "--json", "-q", "--overwrite"]
    if weights:
        command += ["--weights", weights]
    env = None
    if threads:
        import os

        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    print("$ flowcli " + " ".join(command[3:]), file=sys.stderr)
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    sys.stderr.write(result.stderr)
    if result.returncode != 0:
        sys.exit(f"flowcli stereo failed with exit code {result.returncode}")
    return json.loads(result.stdout.splitlines()[0])


def depth_colours(depth: np.ndarray, near: float, far: float) -> np.ndarray:
    t = 1.0 - (np.clip(depth, near, far) - near) / (far - near)
    rgb = turbo(t)
    rgb[depth <= 0] = 0
    return rgb


def rotation(yaw_deg: float, pitch_deg: float) -> np.ndarray:
    y, p = math.radians(yaw_deg), math.radians(pitch_deg)
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    return ry @ rx


def render_cloud(points, colours, camera, size, yaw: float, pitch: float) -> np.ndarray:
    """The cloud seen by the same camera turned around the cloud's median depth; 2x2 splats, nearest wins."""
    w, h = size
    image = np.full((h, w, 3), 255, np.uint8)
    if not len(points):
        return image
    fx, fy, cx, cy = camera.intrinsics(w, h)
    pivot = np.array([0.0, 0.0, float(np.median(points[:, 2]))])
    moved = (points - pivot) @ rotation(yaw, pitch).T + pivot
    z = moved[:, 2]
    front = z > 0.05
    moved, z, colours = moved[front], z[front], colours[front]
    u = np.floor(fx * moved[:, 0] / z + cx).astype(np.int64)
    v = np.floor(fy * moved[:, 1] / z + cy).astype(np.int64)
    us = np.concatenate([u + dx for dx in (0, 1) for _ in (0, 1)])
    vs = np.concatenate([v + dy for _ in (0, 1) for dy in (0, 1)])
    zs, cs = np.tile(z, 4), np.tile(colours, (4, 1))
    inside = (us >= 0) & (us < w) & (vs >= 0) & (vs < h)
    us, vs, zs, cs = us[inside], vs[inside], zs[inside], cs[inside]
    order = np.argsort(-zs, kind="stable")  # far first: nearer points overwrite
    image[vs[order], us[order]] = cs[order]
    return image


def panel(rgb: np.ndarray, title: str) -> Image.Image:
    image = Image.fromarray(rgb).resize(PANEL, Image.BILINEAR)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, 8 + 7 * len(title), 16), fill=(0, 0, 0))
    draw.text((4, 3), title, fill=(255, 255, 255))
    return image


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=OAKD, help="folder with SCENE_left.png, SCENE_right.png")
    parser.add_argument("--scene", default="cycles", help="pair name in the folder (default cycles)")
    parser.add_argument("--calib", type=Path, default=None, help="default: DATA/stereodemo_calibration.json")
    parser.add_argument("--weights", default=None, help="registry name or checkpoint (default: the default model)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "stereo_oakd.png")
    parser.add_argument("--keep", type=Path, default=None, help="keep the command's outputs in this folder")
    parser.add_argument("--yaw", type=float, default=35.0, help="point cloud view: degrees turned around y")
    parser.add_argument("--pitch", type=float, default=-15.0, help="point cloud view: degrees turned around x")
    parser.add_argument("--note", default="", help="extra caption text, e.g. 'plumbing check: random tiny model'")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the flowcli run")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists (the docs' picture)")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.overwrite:
        parser.error(f"{args.out} exists; pass --overwrite to render it again, or choose another --out")

    left, right = args.data / f"{args.scene}_left.png", args.data / f"{args.scene}_right.png"
    calib = args.calib or args.data / "stereodemo_calibration.json"
    camera = read_calibration(calib)
    near = far = None
    if calib.suffix.lower() == ".json":
        near, far = json.loads(calib.read_text()).get("depth_range", [None, None])
    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep or Path(tmp)
        record = run_stereo(left, right, calib, args.weights, out, args.threads)
        outputs = {k: Path(v) for k, v in record["outputs"].items()}
        image = read_png(left)
        image = np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image[:, :, :3]
        depth = read_npy(outputs["depth"])
        if near is None:
            valid = depth[depth > 0]
            near, far = (np.percentile(valid, [5, 95]) if valid.size else (1.0, 5.0))
        points, colours = read_ply(outputs["ply"])
        size = (image.shape[1], image.shape[0])
        panels = [
            panel(image, f"left ({args.scene})"),
            panel(read_png(outputs["vis"]), "disparity"),
            panel(depth_colours(depth, near, far), f"depth {near:g}-{far:g} m"),
            panel(render_cloud(points, colours, camera, size, args.yaw, args.pitch), f"point cloud, {args.yaw:g} deg"),
        ]
    caption = (f"flowcli stereo --calib {calib.name}   model {record['model']} ({record['sha256'][:12]})   "
               f"median depth {record['depth_median']} m   {record['points']} points   {args.note}")
    sheet = Image.new("RGB", (PANEL[0] * len(panels), PANEL[1] + 20), (255, 255, 255))
    for i, p in enumerate(panels):
        sheet.paste(p, (i * PANEL[0], 0))
    ImageDraw.Draw(sheet).text((4, PANEL[1] + 4), caption, fill=(0, 0, 0))
    write_png(args.out, np.asarray(sheet), overwrite=args.overwrite)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except FlowcliError as error:  # no calibration or pair under --data: one line, no traceback
        sys.exit(f"error: {error}")
