"""`flowcli stereo`: disparity, occlusion, depth and point clouds for rectified stereo pairs, written as files.

Like `flowcli estimate`, the command validates everything it can before loading the model (inputs exist
and decode, left and right agree in size, the camera is sane, outputs can be written and do not exist
yet), then streams the pairs through `flowcli.stereo.estimate_disparity` in batches and writes each
pair's outputs all-or-nothing through temp files. With --resume, pairs whose outputs are all there already are
skipped without running the model, a run whose settings differ from those recorded in the output folder
(flowcli.cli.run_record) is refused, and files older than the recorded settings are made again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Optional

import typer

from flowcli.cli.options import (
    DEFAULT_FPS,
    DEFAULT_MAX_PIXELS,
    DEFAULT_OUTPUT,
    INPUT_PANEL,
    OUTPUT_PANEL,
    BatchSizeOption,
    DeviceOption,
    FpsOption,
    JsonOption,
    MaxPixelsOption,
    NameOption,
    OfflineOption,
    OutputClaims,
    OutputDirOption,
    OverwriteOption,
    Owner,
    PrecisionOption,
    QuietOption,
    ResumeOption,
    WeightsOption,
    check_fps_has_a_video,
    check_fps_option,
    check_picking_applies,
    check_precision_name,
    check_video_rates,
    device_and_precision,
    format_flag,
    formats_option,
    nonempty_path,
    one_pair_list,
    unique_source_names,
)
from flowcli.io.pair_list import errors_at, read_image_pairs, refuse_media_as_list
from flowcli.cli.run_record import Entry, RunRecord, kept_video_frames, output_done
from flowcli.errors import InputError, OutputError
from flowcli.io.atomic import probe_folder
from flowcli.outputs import check_template, inside_output, refuse_image_among_frames

DEFAULT_NAME = "{stem}"
LARGEST_LIKELY_BASELINE = 5.0  # metres; more is almost always millimetres or centimetres given as metres
SMALLEST_LIKELY_BASELINE = 0.001  # metres; less is almost always metres given as millimetres (calib.txt)

FORMATS = {
    "pfm": "left disparity as PFM (float32 px)",
    "kitti": "left disparity as KITTI 16-bit PNG (px x 256, 0 = invalid)",
    "npy": "left disparity as NumPy .npy (H x W float32 px)",
    "vis": "colour-coded disparity PNG (turbo: near red, far blue)",
    "video": "colour-coded disparity video per sequence (mp4)",
    "occlusion": "left-right consistency occlusion mask PNG (255 = occluded)",
    "depth": "depth as NumPy .npy (H x W float32 metres, 0 = invalid; needs a camera)",
    "depth_pfm": "depth as PFM (metres, 0 = invalid; needs a camera)",
    "depth_png": "depth as 16-bit PNG in millimetres (0 = invalid; needs a camera)",
    "ply": "coloured point cloud PLY (binary; --ascii-ply for text; needs a camera)",
}
FILE_KINDS = {
    "pfm": ("disp", "pfm"),
    "kitti": ("disp", "png"),
    "npy": ("disp", "npy"),
    "vis": ("disp_vis", "png"),
    "occlusion": ("occ", "png"),
    "depth": ("depth", "npy"),
    "depth_pfm": ("depth", "pfm"),
    "depth_png": ("depth", "png"),
    "ply": ("cloud", "ply"),
}
DEPTH_FORMATS = frozenset({"depth", "depth_pfm", "depth_png", "ply"})
DEFAULT_FORMATS = frozenset({"pfm", "vis"})
NAME_FIELDS = ("source", "stem", "left", "right", "index", "kind", "ext")
_SAMPLE_FIELDS = {"source": "rig", "stem": "rig_frame_000000", "left": "a_left", "right": "a_right", "index": 0,
                  "kind": "disp", "ext": "pfm"}

_HELP_PARAGRAPHS = [
    "Disparity (and with a camera, depth and point clouds) of rectified stereo pairs, with the flow model: the "
    "left -> right flow is (-disparity, 0) (Flow2Stereo), so one network serves flow and stereo.",
    "INPUTS, several in one call: LEFT RIGHT image files (more files in a row: LEFT1 RIGHT1 LEFT2 RIGHT2 ...); a "
    "folder or quoted glob whose images pair up by name (x_left.png / x_right.png, x_L / x_R, im0 / im1, cam0 / "
    "cam1; images without a partner are left out, with a warning); two folders (or globs) in a row, the left "
    "frames then the right frames, matched by name (also x_left / x_right), else by order; a left and a right "
    "video. With --sbs every input is side-by-side (left half = left view): an image, a folder or glob of them, or "
    "a video. --swap: the first image or half is the right view. Sequences (folders, globs, videos) use every "
    "--step-th pair, at most --max-frames pairs.",
    "--pairs LIST runs many unrelated LEFT RIGHT pairs (Middlebury scenes, KITTI frames) with one model load: a "
    "text file, or - for stdin, read as by flowcli estimate --pairs (one pair per line, two image paths split as a "
    "shell would; blank and # lines skipped; relative paths relative to the folder of LIST, or to the current "
    "folder for - and for a pipe such as <(...)). Each line is an input of its own, exactly like LEFT RIGHT on the "
    "command line (--swap swaps its images), after INPUTS if any; every line is checked before the model loads, and "
    "errors name LIST:LINE. Pairs in a row (the lines of LIST) of one size share batches of --batch-size pairs, as a "
    "sequence's pairs do. Not with --sbs.",
    "Outputs (choose with flags or --formats; default --pfm --vis, plus --depth when a camera is given): pfm, kitti, "
    "npy (left disparity in px, >= 0: negative values are clamped and their share reported), vis (colour PNG), video "
    "(colour mp4 per sequence, SOURCE_disp_vis.mp4), occlusion (mask PNG from the left-right consistency check, "
    "255 = occluded), and with a camera (--focal PX --baseline M, or --calib FILE) depth (.npy metres), depth_pfm, "
    "depth_png (16-bit millimetres, so 0 beyond 65.535 m) with Z = focal x baseline / (disparity + doffs), doffs "
    "from --calib (else 0), 0 where disparity <= 0, and ply (coloured "
    "point cloud, OpenCV camera frame: x right, y down, z forward; pixels failing the left-right check are left out).",
    "--calib reads a JSON calibration (fx, baseline_meters, optional fy, cx0 and cx1, doffs, cy, width, height, as "
    "written by stereodemo) or a Middlebury calib.txt; --focal / --baseline override its values. A calibration with "
    "a size must match the images.",
    f"File names come from --name (default '{DEFAULT_NAME}') with placeholders {{source}} (folder, video or pair "
    "name; a left and a right folder in one parent folder take the parent's name: KITTI/training/image_2 "
    "KITTI/training/image_3 -> training; -2, -3... added to tell apart inputs of the same name), {stem} (the "
    "pair's name: the left file's stem "
    "without its left/right token, the folder name for im0/im1, {source}_frame_NNNNNN for video frames), {left} "
    "{right} (file stems or frame_NNNNNN), {index} (pair number in its input), {kind} (disp, disp_vis, occ, depth, "
    "cloud) and {ext}; '_{kind}' and '.{ext}' are added when missing ('_{kind}' before a final '.{ext}'). Existing "
    "files are never replaced without "
    "--overwrite (all planned names are checked before any work, for a video as many pairs as its header or "
    "--max-frames tells); every file is written to a temp file and renamed when complete. Image outputs (kitti, vis, "
    "occlusion, depth_png) are refused in a folder the run lists frames from (a folder, a glob, side-by-side images "
    "in a row): a later run over it would take them for frames.",
    "--resume finishes an interrupted run: give the same inputs, options, camera and weights again, plus --resume. "
    "A pair whose outputs all exist is skipped without running the model (a video is still decoded up to its last "
    "pair); for the other pairs only the missing files are written, and existing files are never touched. The "
    "weights, --step, --swap, the camera (--focal, --baseline, --calib), --max-depth, --max-disparity and "
    "--lr-threshold must be the ones the outputs were made with (a hidden OUT/.flowcli-stereo.json records them per "
    "input): a change is refused; device, precision, batch size, --max-pixels and the formats may change. A file "
    "older than the settings recorded for its input counts as missing: a run with other settings left it (an "
    "interrupted --overwrite run with a new --max-disparity), and it is made again. --video: a sequence's existing "
    "video is kept if it has a frame per pair; a missing one, or one of another --max-frames, is made again over all "
    "pairs, taking skipped pairs' frames from their vis PNGs, so without --vis every pair of that "
    "sequence runs the model again (missing per-pair files are still the only ones written). The video is the only "
    "output per sequence: point clouds (--ply) are per pair and resume like the other files. Hidden .NAME.* temp "
    "files left by a killed run are not outputs and may be deleted. --resume and --overwrite exclude each other.",
    "--json prints one JSON line per pair on stdout with keys: type (\"pair\"), source, index, left, right, inputs, "
    "width, height (of one view), outputs (output name -> path), disparity_mean, disparity_max (px), "
    "negative_fraction (share of pixels with -u < -0.5 px before clamping), vertical_median (median |v| px; large = "
    "not rectified, warned above 4 px), occluded_fraction (null unless the left-right check ran), camera (focal, "
    "fy, baseline, cx, cy, doffs, or null), depth_median (m, over valid pixels, or null), points (in the .ply, or "
    "null; null too when --resume kept the .ply), ms, tiles, model, weights, sha256. Each video written adds a line "
    "with type \"video\", source, outputs, frames, fps. With --resume, a skipped pair gets a line with type "
    "\"skipped\", source, index, left, right, inputs and outputs (the files kept); a kept video gets no line.",
    "Exit codes: 0 ok, 1 other error, 2 input error, 3 output error, 4 weights error.",
    "Examples:",
    "  flowcli stereo left.png right.png",
    "  flowcli stereo oakd_stereo/ --calib oakd_stereo/stereodemo_calibration.json --depth --ply -o out/",
    "  flowcli stereo cam_left/ cam_right/ --focal 721.5 --baseline 0.54 --depth-png --video",
    "  for d in middlebury/*/; do echo \"${d}im0.png ${d}im1.png\"; done | flowcli stereo --pairs - --name "
    "'{stem}/{kind}' -o out/    (out/motorcycle/disp.pfm ...: an im0 / im1 pair takes its folder's name)",
    "  flowcli stereo --sbs clip_sbs.mp4 --max-frames 50 --formats npy,video --json > disparity.jsonl",
    "  flowcli stereo --sbs clip_sbs.mp4 --npy --vis --video --resume    (after an interruption: only what is missing)",
]
HELP = "\n\n".join(_HELP_PARAGRAPHS)

_CAMERA = "Camera"


def register(app: typer.Typer) -> None:
    app.command("stereo", help=HELP, no_args_is_help=True)(stereo)


# ----------------------------------------------------------------------------- left/right names

_LEFT_TOKENS = ("left", "l", "im0", "cam0", "view1")
_RIGHT_TOKENS = ("right", "r", "im1", "cam1", "view5")
_TOKEN_RE = re.compile(r"(?<![A-Za-z0-9])(left|right|l|r|im0|im1|cam0|cam1|view1|view5)(?![A-Za-z0-9])", re.I)
_DELIMITERS = "_-. "


@dataclass(frozen=True)
class _Role:
    side: str  # "left" or "right"
    key: str  # the stem with the token replaced by its family: equal for the two views of one pair
    bare: str  # the stem without the token, for output names ("" for im0 / im1)


def _role(stem: str) -> _Role | None:
    matches = list(_TOKEN_RE.finditer(stem))
    if not matches:
        return None
    match = matches[-1]
    token = match.group(1).lower()
    side = "left" if token in _LEFT_TOKENS else "right"
    family = (_LEFT_TOKENS if side == "left" else _RIGHT_TOKENS).index(token)
    before, after = stem[: match.start()], stem[match.end() :]
    if before and after and before[-1] in _DELIMITERS and after[0] in _DELIMITERS:
        after = after[1:]
    bare = (before + after).strip(_DELIMITERS)
    return _Role(side, f"{before.lower()}\0{family}\0{after.lower()}", bare)


def _folder(path: Path) -> Path:
    """The folder a file is given in: ".." collapsed (../im0.png is named after the real parent), links not followed."""
    return Path(os.path.abspath(path)).parent


def _pair_by_tokens(frames: list[Path], same_folder: bool = True,
                    leave_out_unpaired: bool = False) -> list[tuple[Path, Path, str]] | None:
    """[(left, right, bare name)] when every image has a left/right token and a counterpart, else None.

    Names pair up wherever the files are (L/x_left.png with R/x_right.png); with `same_folder`, names that
    repeat across folders (a glob over Middlebury scenes: */im0.png */im1.png) pair within each folder.
    With `leave_out_unpaired`, images without a counterpart are skipped (None only when no pair forms)."""
    pairs = _pair_tokens(frames, by_folder=False, leave_out_unpaired=leave_out_unpaired)
    if pairs is not None or not same_folder:
        return pairs
    return _pair_tokens(frames, by_folder=True, leave_out_unpaired=leave_out_unpaired)


def _pair_tokens(frames: list[Path], by_folder: bool, leave_out_unpaired: bool) -> list[tuple[Path, Path, str]] | None:
    lefts: dict[tuple, tuple[Path, str]] = {}
    rights: dict[tuple, Path] = {}
    for path in frames:
        role = _role(path.stem)
        if role is None:
            if leave_out_unpaired:
                continue
            return None
        side = lefts if role.side == "left" else rights
        key = (_folder(path) if by_folder else None, role.key)
        if key in side:
            return None
        side[key] = (path, role.bare) if role.side == "left" else path
    if leave_out_unpaired:
        lefts = {key: value for key, value in lefts.items() if key in rights}
        rights = {key: value for key, value in rights.items() if key in lefts}
    if not lefts or set(lefts) != set(rights):
        return None
    return [(left, rights[key], bare) for key, (left, bare) in lefts.items()]


def _warn_left_out(label: str, frames: list[Path], pairs: list[tuple[Path, Path, str]]) -> None:
    from flowcli.console import warn

    paired = {path for left, right, _ in pairs for path in (left, right)}
    left_out = [f"{path.parent.name}/{path.name}" for path in frames if path not in paired]
    shown = ", ".join(left_out[:3]) + (", ..." if len(left_out) > 3 else "")
    warn(f"{label}: {len(left_out)} image(s) without a left/right partner by name were left out ({shown})")


def _match_folders(lefts: list[Path], rights: list[Path], label: str) -> list[tuple[Path, Path, str]]:
    from flowcli.console import warn

    right_by_stem = {p.stem: p for p in rights}
    if len(lefts) == len(rights) and all(p.stem in right_by_stem for p in lefts):
        return [(p, right_by_stem[p.stem], p.stem) for p in lefts]
    by_token = _pair_by_tokens(lefts + rights, same_folder=False)
    if by_token is not None and len(by_token) == len(lefts) and {p for p, _, _ in by_token} == set(lefts):
        return by_token
    if len(lefts) == len(rights):
        warn(f"{label}: file names do not match, so left and right frames are paired in natural order")
        return [(a, b, a.stem) for a, b in zip(lefts, rights)]
    unmatched = next((p for p in lefts if p.stem not in right_by_stem), lefts[0])
    raise InputError(
        f"{label}: the left folder has {len(lefts)} images and the right folder {len(rights)}, and {unmatched.name} "
        "has no right image of the same name; give folders whose frames match by name or count"
    )


# ----------------------------------------------------------------------------- inputs


@dataclass
class _Source:
    label: str
    name: str  # the {source} placeholder
    pairs: list[tuple[Path, Path | None, str]] | None = None  # image inputs: (left, right or None for sbs, stem)
    video: Path | None = None
    video_right: Path | None = None  # a left/right video pair; None with --sbs
    fps: float | None = None
    count: int | None = None  # pairs, None if unknown before decoding
    sequence: bool = True  # False for explicit image pairs: no visualisation video
    size: tuple[int, int] | None = None  # (width, height) of one view, from headers (the first pair's)
    sizes_differ: bool = False  # pairs of different sizes: no visualisation video
    other_sizes: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # sizes besides `size`
    made_since: int | None = None  # --resume: outputs modified before this (ns) are not done (RunRecord.made_since)


@dataclass
class _Item:
    stem: str
    left_name: str
    right_name: str
    inputs: list[str]
    index: int
    load: Callable[[], tuple]  # -> (left, right), torch.Tensor [3, H, W]; image files are read only when called


def _is_glob(text: str) -> bool:
    return any(char in text for char in "*?[")


def _is_image_file(path: Path) -> bool:
    from flowcli.io.media import IMAGE_SUFFIXES

    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def _is_frames(arg: str) -> bool:
    return Path(arg).is_dir() or (_is_glob(arg) and not Path(arg).exists())


def _frames_name(arg: str) -> str:
    path = Path(arg)
    if path.is_dir():
        return path.resolve().name or "frames"
    parts = path.parts
    fixed = parts[: next((i for i, p in enumerate(parts) if _is_glob(p)), len(parts))]
    # resolved: '../*.png' is named after the real folder, never '..' (which would lead {source} out of -o)
    return (Path(*fixed) if fixed else Path.cwd()).resolve().name or "frames"


def _pair_stem(left: Path, right: Path) -> str:
    a, b = _role(left.stem), _role(right.stem)
    if a and b and a.side == "left" and b.side == "right" and a.key == b.key:
        return a.bare or _folder(left).name
    return left.stem


def _check_pair_sizes(left: Path, right: Path | None) -> tuple[int, int]:
    """Header check of one pair: (width, height) of one view."""
    from flowcli.io.media import image_size

    size = image_size(left)
    if right is None:
        if size[0] % 2:
            raise InputError(
                f"{left} is {size[0]} px wide, an odd width; a side-by-side image has two halves of equal width"
            )
        return size[0] // 2, size[1]
    other = image_size(right)
    if other != size:
        raise InputError(
            f"left and right differ in size: {left} is {size[0]}x{size[1]}, {right} is {other[0]}x{other[1]}; "
            "a rectified pair has two images of the same size"
        )
    return size


def _video_info(path: Path) -> tuple[float | None, int | None, tuple[int, int]]:
    """Open a video (errors now, not mid-run): (fps, frame count estimate, (width, height))."""
    from flowcli.io.media import VideoReader

    reader = VideoReader(path)
    try:
        return reader.fps, reader.num_frames, reader.size
    finally:
        reader.close()


def _image_pair_source(first: Path, second: Path, swap: bool) -> _Source:
    """An explicit LEFT RIGHT pair (two image files in a row among INPUTS, or a line of --pairs LIST), its sizes
    checked from the headers; with --swap the first image is the right view."""
    left, right = (second, first) if swap else (first, second)
    stem = _pair_stem(left, right)
    return _Source(label=f"{first} {second}", name=stem, pairs=[(left, right, stem)], count=1, sequence=False,
                   size=_check_pair_sizes(left, right))


def _pair_list_sources(pair_list: str, swap: bool) -> list[_Source]:
    """One LEFT RIGHT pair per line of --pairs LIST (see the command help); errors name LIST:LINE."""
    sources = []
    for pair in read_image_pairs(pair_list):
        with errors_at(pair.where):
            sources.append(_image_pair_source(pair.first, pair.second, swap))
    return sources


def collect_sources(inputs: list[str], *, sbs: bool = False, swap: bool = False, step: int = 1,
                    max_frames: int | None = None, pair_list: str | None = None) -> list[_Source]:
    """Group INPUTS into sources (see the command help), then add a source per pair of --pairs LIST, and check them
    from file headers, without decoding."""
    from flowcli.io.media import is_video, list_frames

    if pair_list is not None:  # before INPUTS: `--pairs l.png r.png` would call r.png an image without a partner
        refuse_media_as_list(pair_list)
    for arg in inputs:
        if not Path(arg).exists() and not _is_glob(arg):
            raise InputError(f"{arg} does not exist; check the path")
    sources: list[_Source] = []
    i = 0
    while i < len(inputs):
        arg, path = inputs[i], Path(inputs[i])
        if _is_image_file(path):
            j = i
            while j < len(inputs) and _is_image_file(Path(inputs[j])):
                j += 1
            run = [Path(a) for a in inputs[i:j]]
            if sbs:  # several in a row are a sequence (a shell-expanded glob): --step and --max-frames apply
                label = " ".join(inputs[i:j])
                used = run[::step][:max_frames]
                sources.append(_Source(label=label, name=run[0].stem, pairs=[(p, None, p.stem) for p in used],
                                       count=len(used), sequence=len(run) > 1))
            else:
                if len(run) % 2:
                    raise InputError(
                        f"{len(run)} image files in a row ({run[-1]} has no partner); give LEFT RIGHT pairs, "
                        "or --sbs for side-by-side images"
                    )
                sources += [_image_pair_source(first, second, swap) for first, second in zip(run[::2], run[1::2])]
            i = j
            continue
        if path.is_file() and is_video(path):
            if sbs:
                sources.append(_video_source(path, None, step, max_frames))
                i += 1
            elif i + 1 < len(inputs) and Path(inputs[i + 1]).is_file() and is_video(Path(inputs[i + 1])):
                first, second = path, Path(inputs[i + 1])
                source = _video_source(*((second, first) if swap else (first, second)), step, max_frames)
                source.label = f"{first} {second}"
                sources.append(source)
                i += 2
            else:
                raise InputError(
                    f"{arg} is a single video; pass --sbs for a side-by-side video, or give a left and a right video"
                )
            continue
        if path.is_file():
            raise InputError(
                f"{arg} is neither an image nor a video (mp4, avi, mov, mkv, webm); give images, folders or videos"
            )
        frames = list_frames(arg)
        name = _frames_name(arg)
        if sbs:
            pairs = [(p, None, p.stem) for p in frames]
            i += 1
        else:
            pairs = _pair_by_tokens(frames)
            if pairs is None:  # a Middlebury scene: im0 / im1 beside mask0nocc.png, im1E.png, im1L.png
                pairs = _pair_by_tokens(frames, leave_out_unpaired=True)
                if pairs is not None:
                    _warn_left_out(arg, frames, pairs)
            if pairs is not None:
                # im0 / im1 have no name of their own: their folder names them (a glob may span scenes)
                pairs = [(left, right, bare or _folder(left).name) for left, right, bare in pairs]
                i += 1
            elif i + 1 < len(inputs) and _is_frames(inputs[i + 1]):
                right_arg = inputs[i + 1]
                pairs = _match_folders(frames, list_frames(right_arg), f"{arg} and {right_arg}")
                right_parent = _folder(Path(right_arg)) if Path(right_arg).is_dir() else None
                if Path(arg).is_dir() and right_parent == _folder(Path(arg)):
                    name = right_parent.name
                arg = f"{arg} {right_arg}"
                i += 2
            else:
                raise InputError(
                    f"the images of {arg} do not pair up as left/right by name (x_left / x_right, im0 / im1); give "
                    "a left and a right folder, or --sbs for side-by-side images"
                )
            pairs = [(left, right, bare or name) for left, right, bare in sorted(pairs, key=lambda p: _natural(p[0]))]
            if swap:
                pairs = [(right, left, stem) for left, right, stem in pairs]
        pairs = pairs[::step][:max_frames]
        sources.append(_Source(label=arg, name=name, pairs=pairs, count=len(pairs)))
    if pair_list is not None:
        sources += _pair_list_sources(pair_list, swap)
    for source in sources:
        if source.size is not None:  # an explicit pair or a video: checked when it was made
            continue
        for left, right, _ in source.pairs or []:
            size = _check_pair_sizes(left, right)
            source.size = source.size or size
            if size != source.size:
                source.sizes_differ = True
                if size not in source.other_sizes:
                    source.other_sizes.append(size)
    for source, name in zip(sources, unique_source_names([s.name for s in sources])):
        source.name = name
    return sources


def _natural(path: Path):
    from flowcli.io.media import natural_sort_key

    return natural_sort_key(path)


def _video_source(left: Path, right: Path | None, step: int, max_frames: int | None) -> _Source:
    fps, count, size = _video_info(left)
    label, name = str(left), left.stem
    if right is None:
        if size[0] % 2:
            raise InputError(
                f"{left} is {size[0]} px wide, an odd width; a side-by-side video has two halves of equal width"
            )
        size = (size[0] // 2, size[1])
    else:
        fps_r, count_r, size_r = _video_info(right)
        if size_r != size:
            raise InputError(
                f"left and right videos differ in size: {left} is {size[0]}x{size[1]}, {right} is "
                f"{size_r[0]}x{size_r[1]}; a rectified pair has two views of the same size"
            )
        if fps and fps_r and not math.isclose(fps, fps_r, rel_tol=1e-3):
            from flowcli.console import warn

            warn(f"{left} plays at {fps:g} fps and {right} at {fps_r:g} fps, but their frames are paired by number, "
                 "so the views drift apart in time; give left and right videos of the same frame rate")
        count = min(count, count_r) if count and count_r else None
        role = _role(left.stem)
        name = role.bare if role and role.bare else left.stem
        label = f"{left} {right}"
    pairs = None
    if count:
        pairs = math.ceil(count / step)
        pairs = min(pairs, max_frames) if max_frames else pairs
    return _Source(label=label, name=name, video=left, video_right=right, fps=fps / step if fps else None,
                   count=pairs, size=size)


def _read_pairs(source: _Source, sbs: bool, swap: bool, step: int, max_frames: int | None) -> Iterator[_Item]:
    from flowcli.io.media import read_image
    from flowcli.stereo import split_side_by_side

    def load_side_by_side(path: Path) -> tuple:
        a, b = split_side_by_side(read_image(path), str(path))
        return (b, a) if swap else (a, b)

    def load_pair(left: Path, right: Path) -> tuple:
        a, b = read_image(left), read_image(right)
        if a.shape != b.shape:  # headers were checked; this catches files changed since
            raise InputError(f"left and right differ in size: {left} and {right}; resize them to match")
        return a, b

    if source.pairs is not None:  # read when loaded: pairs that --resume skips are never read
        for index, (left, right, stem) in enumerate(source.pairs):
            if right is None:
                yield _Item(stem, left.stem, left.stem, [str(left)], index, functools.partial(load_side_by_side, left))
            else:  # collect_sources already put the files of a --swap pair in left, right order
                yield _Item(stem, left.stem, right.stem, [str(left), str(right)], index,
                            functools.partial(load_pair, left, right))
        return
    yield from _video_pairs(source, swap, step, max_frames)


def _decoded(left, right) -> tuple:
    return left, right


def _video_pairs(source: _Source, swap: bool, step: int, max_frames: int | None) -> Iterator[_Item]:
    from flowcli.console import warn
    from flowcli.io.media import VideoReader
    from flowcli.stereo import split_side_by_side

    with contextlib.ExitStack() as stack:
        frames_left = iter(stack.enter_context(VideoReader(source.video)))
        stack.callback(frames_left.close)  # stops ffmpeg when --max-frames ends the loop early
        frames_right = None
        if source.video_right is not None:
            frames_right = iter(stack.enter_context(VideoReader(source.video_right)))
            stack.callback(frames_right.close)
        index = 0
        for number, frame in enumerate(frames_left):
            other = None
            if frames_right is not None:
                other = next(frames_right, None)
                if other is None:
                    warn(f"{source.video_right} ended after {number} frames, before {source.video}; stopping there")
                    break
            if number % step:
                continue
            if max_frames is not None and index >= max_frames:
                break
            if other is None:
                a, b = split_side_by_side(frame, f"{source.video}")
                if swap:
                    a, b = b, a
                inputs = [f"{source.video}#{number}"]
            else:  # collect_sources already put the videos of a --swap pair in left, right order
                a, b = frame, other
                inputs = [f"{source.video}#{number}", f"{source.video_right}#{number}"]
            name = f"frame_{number:06d}"
            yield _Item(f"{source.name}_{name}", name, name, inputs, index, functools.partial(_decoded, a, b))
            index += 1
        if frames_right is not None and max_frames is None and next(frames_right, None) is not None:
            warn(f"{source.video} ended before {source.video_right}; the extra right frames were not used")


# ----------------------------------------------------------------------------- outputs


def _format_names(text: str) -> list[str]:
    """--formats as names: 'npy, .depth-png' -> ['npy', 'depth_png']."""
    return [part.strip().lower().lstrip(".").replace("-", "_") for part in text.split(",") if part.strip()]


def parse_formats(text: str | None) -> frozenset[str]:
    if text is None:
        return frozenset()
    names = _format_names(text)
    unknown = [n for n in names if n not in FORMATS and n != "all"]
    if unknown:
        raise OutputError(f"unknown output format {unknown[0]!r}; valid formats: {', '.join(FORMATS)}, all")
    return frozenset(FORMATS) if "all" in names else frozenset(names)


def _output_paths(directory: Path, template: str, formats, source: _Source, item_fields: dict) -> dict[str, Path]:
    keys = [k for k in FILE_KINDS if k in formats]
    out = {}
    for key in keys:
        kind, ext = FILE_KINDS[key]
        out[key] = directory / inside_output(template.format(source=source.name, **item_fields, kind=kind, ext=ext))
    return out


def _item_fields(stem: str, left: str, right: str, index: int) -> dict:
    return {"stem": stem, "left": left, "right": right, "index": index}


def _known_fields(source: _Source, step: int, max_frames: int | None) -> list[dict]:
    """Name fields of every pair known before decoding: all image pairs; for videos, the pairs their header (frame
    count) or --max-frames promises, at least the first."""
    if source.pairs is not None:
        return [_item_fields(stem, left.stem, left.stem if right is None else right.stem, i)
                for i, (left, right, stem) in enumerate(source.pairs)]
    names = [f"frame_{i * step:06d}" for i in range(source.count or max_frames or 1)]
    return [_item_fields(f"{source.name}_{name}", name, name, i) for i, name in enumerate(names)]


def _pair_owner(number: int, source: _Source, index: int, stem: str) -> Owner:
    """Pair `index` of input number `number`: stems alone repeat (x_left / x_right and x_L / x_R in one folder)."""
    single = source.pairs is not None and len(source.pairs) == 1
    return Owner(number, index, source.label if single else f"{source.label} pair {index} ({stem})")


def _record_entry(source: _Source, settings: dict) -> Entry:
    """The source's entry in the run record (flowcli.cli.run_record): keyed by its first pair's files or its
    videos, sorted, so that --swap (recorded) does not change the key."""
    if source.pairs is not None:
        files = [path for path in source.pairs[0][:2] if path is not None]
    else:
        files = [path for path in (source.video, source.video_right) if path is not None]
    if not source.sequence:  # --step does not apply to an explicit pair
        settings = {name: value for name, value in settings.items() if name != "step"}
    return Entry(" ".join(sorted(str(path.resolve()) for path in files)), source.label, settings, source.name)


def _frame_folders(sources: list[_Source]) -> dict[Path, str]:
    """Resolved folder -> the input whose frames are images listed there (a folder, a glob, two folders, side-by-side
    images in a row). An explicit pair names its two images: it is not listed. Call it before --all takes a
    sequence's video away (`sequence` is then False for a listed input too)."""
    folders: dict[Path, str] = {}
    for source in sources:
        if source.sequence and source.pairs:
            for folder in {path.parent for pair in source.pairs for path in pair[:2] if path is not None}:
                folders.setdefault(folder.resolve(), source.label)
    return folders


def _video_path(directory: Path, source: _Source) -> Path:
    return directory / f"{source.name}_disp_vis.mp4"


def _check_output_folder(directory: Path) -> None:
    existing = directory.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(
            f"cannot create output folder {directory}: {existing} is not a folder; choose another with -o"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {existing} is not writable; choose another with -o")
    probe_folder(existing, "choose another with -o")


def _write_outputs(paths: dict[str, Path], *, disparity, occlusion, depth, left_image, camera, ascii_ply: bool,
                   overwrite: bool, vis) -> int | None:
    """Write one pair's outputs all-or-nothing; returns the number of points in the .ply (or None)."""
    from flowcli.io.atomic import atomic_path
    from flowcli.io.flow_formats import write_disparity_png, write_npy, write_pfm, write_png
    from flowcli.io.visualize import mask_to_png_array
    from flowcli.stereo import depth_to_png_array, point_cloud, write_ply

    points = None
    with contextlib.ExitStack() as stack:
        temps = {key: stack.enter_context(atomic_path(path, overwrite)) for key, path in paths.items()}
        for key, tmp in temps.items():
            if key == "pfm":
                write_pfm(tmp, disparity, overwrite=True)
            elif key == "kitti":
                write_disparity_png(tmp, disparity, valid=disparity > 0, overwrite=True)
            elif key == "npy":
                write_npy(tmp, disparity, overwrite=True)
            elif key == "vis":
                write_png(tmp, vis, overwrite=True)
            elif key == "occlusion":
                write_png(tmp, mask_to_png_array(occlusion > 0.5), overwrite=True)
            elif key == "depth":
                write_npy(tmp, depth, overwrite=True)
            elif key == "depth_pfm":
                write_pfm(tmp, depth, overwrite=True)
            elif key == "depth_png":
                write_png(tmp, depth_to_png_array(depth), overwrite=True)
            elif key == "ply":
                mask = None if occlusion is None else occlusion < 0.5
                cloud, colours = point_cloud(depth, left_image, camera, mask=mask)
                write_ply(tmp, cloud, colours, binary=not ascii_ply, overwrite=True)
                points = int(len(cloud))
    return points


# ----------------------------------------------------------------------------- the command


def _format_flag(name: str, note: str = ""):
    return format_flag(FORMATS, name, note)


def _positive(value, flag: str, unit: str, error=InputError) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise error(f"{flag} must be a positive number{unit}, got {value:g}")


def _camera(focal, baseline, calib):
    from flowcli.stereo import Camera, read_calibration

    _positive(focal, "--focal", " of pixels")
    _positive(baseline, "--baseline", " of metres")
    base = read_calibration(calib) if calib is not None else None
    if base is None:
        if focal is None and baseline is None:
            return None
        if focal is None or baseline is None:
            missing = "--baseline (metres)" if baseline is None else "--focal (pixels)"
            raise InputError(f"depth needs both --focal and --baseline; add {missing} or give --calib FILE")
        return Camera(focal=focal, baseline=baseline)
    if focal is None and baseline is None:
        return base
    from dataclasses import replace

    changed = {"focal": focal, "fy": None} if focal is not None else {}
    if baseline is not None:
        changed["baseline"] = baseline
    return replace(base, **changed)


def _baseline_origin(baseline, camera) -> tuple[str, bool]:
    """Where the camera's baseline was written, for a warning, and whether that place takes millimetres:
    ("--baseline", False), ("baseline= in x/calib.txt", True), ("baseline_mm in rig.json", True)."""
    if baseline is not None or camera.baseline_field is None:
        return "--baseline", False
    return f"{camera.baseline_field} in {camera.source}", camera.baseline_in_millimetres


def stereo(
    inputs: Annotated[
        Optional[list[str]],
        typer.Argument(help="LEFT RIGHT images, folders or globs of pairs, left and right folders, videos; several "
                       "allowed; optional with --pairs.", show_default=False, metavar="INPUTS"),
    ] = None,
    pair_lists: Annotated[
        Optional[list[str]],
        typer.Option("--pairs", metavar="LIST", help="Text file of LEFT RIGHT image pairs, one pair per line "
                     "(relative to its folder), or - for stdin; see above.", rich_help_panel=INPUT_PANEL,
                     show_default=False),
    ] = None,
    sbs: Annotated[
        bool, typer.Option("--sbs", help="Every input is side by side: left half = left view.",
                           rich_help_panel=INPUT_PANEL)
    ] = False,
    swap: Annotated[
        bool, typer.Option("--swap", help="The first image (or half) is the right view.", rich_help_panel=INPUT_PANEL)
    ] = False,
    step: Annotated[
        int, typer.Option("--step", help="Use every N-th pair of sequences (folders, videos).",
                          rich_help_panel=INPUT_PANEL)
    ] = 1,
    max_frames: Annotated[
        Optional[int],
        typer.Option("--max-frames", help="Use at most this many pairs of each sequence (after --step).",
                     rich_help_panel=INPUT_PANEL, show_default=False),
    ] = None,
    focal: Annotated[
        Optional[float],
        typer.Option("--focal", help="Focal length in pixels (of the rectified images), for depth.",
                     rich_help_panel=_CAMERA, show_default=False),
    ] = None,
    baseline: Annotated[
        Optional[float],
        typer.Option("--baseline", help="Distance between the two cameras in metres, for depth.",
                     rich_help_panel=_CAMERA, show_default=False),
    ] = None,
    calib: Annotated[
        Optional[str],
        typer.Option("--calib", metavar="PATH", help="Calibration file: JSON (fx, baseline_meters, cx0 and cx1 or "
                     "doffs, cy, width, height) or Middlebury calib.txt.", rich_help_panel=_CAMERA,
                     show_default=False),
    ] = None,
    max_depth: Annotated[
        Optional[float],
        typer.Option("--max-depth", help="Depths beyond this many metres are written invalid (0) and left out of "
                     "the point cloud.", rich_help_panel=_CAMERA, show_default=False),
    ] = None,
    output: OutputDirOption = DEFAULT_OUTPUT,
    name: NameOption = DEFAULT_NAME,
    formats: formats_option(FORMATS) = None,
    pfm: Annotated[bool, _format_flag("pfm")] = False,
    kitti: Annotated[bool, _format_flag("kitti")] = False,
    npy: Annotated[bool, _format_flag("npy")] = False,
    vis: Annotated[bool, _format_flag("vis")] = False,
    video: Annotated[bool, _format_flag("video")] = False,
    occlusion: Annotated[bool, _format_flag("occlusion")] = False,
    depth: Annotated[bool, _format_flag("depth")] = False,
    depth_pfm: Annotated[bool, _format_flag("depth_pfm")] = False,
    depth_png: Annotated[bool, _format_flag("depth_png")] = False,
    ply: Annotated[bool, _format_flag("ply")] = False,
    all_: Annotated[
        bool, typer.Option("--all", help="Every output format that applies (depth ones when a camera is given; "
                           "video for sequences of one size).", rich_help_panel=OUTPUT_PANEL)
    ] = False,
    ascii_ply: Annotated[
        bool, typer.Option("--ascii-ply", help="Write the point cloud as ASCII PLY (default binary).",
                           rich_help_panel=OUTPUT_PANEL)
    ] = False,
    max_disparity: Annotated[
        Optional[float],
        typer.Option("--max-disparity", help="Disparity (px) of full colour in vis/video; default: per-pair maximum.",
                     rich_help_panel=OUTPUT_PANEL, show_default=False),
    ] = None,
    lr_threshold: Annotated[
        float, typer.Option("--lr-threshold", help="Left-right consistency tolerance in px (occlusion, ply).",
                            rich_help_panel=OUTPUT_PANEL)
    ] = 1.0,
    fps: FpsOption = None,
    overwrite: OverwriteOption = False,
    resume: ResumeOption = False,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
    weights: WeightsOption = None,
    device: DeviceOption = "auto",
    precision: PrecisionOption = "auto",
    batch_size: BatchSizeOption = 1,
    max_pixels: MaxPixelsOption = DEFAULT_MAX_PIXELS,
    offline: OfflineOption = False,
) -> None:
    stdout = sys.stdout  # the progress display may redirect sys.stdout while it runs

    from rich.markup import escape  # names in info lines as given: left[v2] is not "left" in style v2

    from flowcli.console import progress, say, warn

    # ---- options, before anything is read
    pair_list = one_pair_list(pair_lists)
    if not inputs and pair_list is None:
        raise typer.BadParameter("give INPUTS, --pairs LIST, or both", param_hint="'INPUTS'")
    for arg in inputs or []:
        nonempty_path(arg, "an input", "LEFT RIGHT images, a folder, a quoted glob or videos")
    output = nonempty_path(output, "-o", "the output folder")
    calib = nonempty_path(calib, "--calib", "the calibration file (JSON or calib.txt), or leave --calib out")
    if sbs and pair_list is not None:
        raise InputError("--pairs lists LEFT RIGHT pairs of two images, not side-by-side ones: give side-by-side "
                         "images as INPUTS with --sbs, and the list in a run of its own")
    if resume and overwrite:
        raise InputError("--resume keeps existing outputs and --overwrite replaces them; use one of them")
    if step < 1:
        raise InputError(f"--step must be at least 1, got {step}")
    if max_frames is not None and max_frames < 1:
        raise InputError(f"--max-frames must be at least 1, got {max_frames}")
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    if max_pixels < 0:
        raise InputError(f"--max-pixels must be positive (0 turns tiling off), got {max_pixels}")
    check_fps_option(fps)
    _positive(max_disparity, "--max-disparity", " of pixels", OutputError)
    _positive(max_depth, "--max-depth", " of metres")
    _positive(lr_threshold, "--lr-threshold", " of pixels")
    check_precision_name(precision)
    camera = _camera(focal, baseline, calib)
    if max_depth is not None and camera is None:  # accepted and ignored, it left a user thinking depths were cut
        raise InputError("--max-depth limits depth, which needs a camera: give --focal PX and --baseline M, or "
                         "--calib FILE, or leave --max-depth out")
    if camera is not None and camera.baseline > LARGEST_LIKELY_BASELINE:
        where, in_millimetres = _baseline_origin(baseline, camera)
        advice = (
            f"{where} takes millimetres ({camera.baseline * 1000:g} here): check the value" if in_millimetres
            else f"is it in millimetres? {where} takes metres (a JSON calibration may give baseline_mm)"
        )  # fmt: skip
        warn(f"the baseline is {camera.baseline:g} m, far more than a stereo rig's usual few cm to 1 m: {advice}")
    elif camera is not None and camera.baseline < SMALLEST_LIKELY_BASELINE:
        where, in_millimetres = _baseline_origin(baseline, camera)
        if in_millimetres:
            written = camera.baseline * 1000
            advice = (
                f"{where} takes millimetres, so {written:g} is {camera.baseline:g} m; if {written:g} was meant "
                f"in metres, give {written * 1000:g} there"
            )
        else:
            advice = f"{where} takes metres ({camera.baseline * 1000:g} mm here): check the value"
        warn(f"the baseline is {camera.baseline:g} m, far less than a stereo rig's usual few cm to 1 m: {advice}")
    flags = {"pfm": pfm, "kitti": kitti, "npy": npy, "vis": vis, "video": video, "occlusion": occlusion,
             "depth": depth, "depth_pfm": depth_pfm, "depth_png": depth_png, "ply": ply}
    chosen = set(parse_formats(formats)) | {k for k, on in flags.items() if on}
    everything = all_ or (formats is not None and "all" in _format_names(formats))
    if everything:
        chosen = set(FORMATS) - (set() if camera else DEPTH_FORMATS)
    if not chosen:
        chosen = set(DEFAULT_FORMATS) | ({"depth"} if camera else set())
    if camera is None and chosen & DEPTH_FORMATS:
        wanted = min(chosen & DEPTH_FORMATS).replace("_", "-")
        raise InputError(f"--{wanted} needs a camera: give --focal PX and --baseline M, or --calib FILE")
    if ascii_ply and "ply" not in chosen:
        raise OutputError("--ascii-ply sets how --ply writes the point cloud; add --ply, or leave --ascii-ply out")
    template = check_template(name, NAME_FIELDS, _SAMPLE_FIELDS)
    want_video = "video" in chosen
    check_fps_has_a_video(fps, want_video)
    formats_set = frozenset(chosen - {"video"})

    # ---- inputs and outputs, before the model
    sources = collect_sources(inputs or [], sbs=sbs, swap=swap, step=step, max_frames=max_frames,
                              pair_list=pair_list)
    # before --all marks a folder of two sizes as no sequence (for want of a video): its pairs are still picked
    check_picking_applies(sources, step, max_frames, pair_list, "pairs", "a folder, a glob, a left and a right "
                          "video, or with --sbs a video or side-by-side images in a row")  # fmt: skip
    frame_folders = _frame_folders(sources)
    if camera is not None:
        for source in sources:  # every size of a folder, not only its first pair's: fail before any output
            for size in (source.size, *source.other_sizes):
                camera.check_size(*size)
    for source in sources:
        if want_video and source.sequence and source.sizes_differ:
            if not everything:
                raise InputError(f"{source.label}: pairs differ in size, and --video needs one size per sequence")
            source.sequence = False  # --all writes every format that applies: no video for this one
    check_video_rates(sources, want_video, fps)
    if want_video and not everything and not any(s.sequence for s in sources):
        raise InputError(
            "--video writes one video per sequence (a folder, a glob, a left and a right video, or with --sbs a "
            "video or side-by-side images in a row) and the inputs are image pairs only; drop --video, or give the "
            "frames as one sequence"
        )
    _check_output_folder(output)
    input_files = set()
    for s in sources:
        for left, right, _ in s.pairs or []:
            input_files.update(p.resolve() for p in (left, right) if p is not None)
        input_files.update(p.resolve() for p in (s.video, s.video_right) if p is not None)
    if calib is not None:
        input_files.add(calib.resolve())
    # --resume takes existing outputs as done: the claims then check only collisions, inputs and folders
    keep_existing = overwrite or resume
    claims = OutputClaims(input_files, keep_existing)
    resolved: dict[Path, Path] = {}  # output folder -> resolved, once per folder
    for number, s in enumerate(sources):
        for fields in _known_fields(s, step, max_frames):
            owner = _pair_owner(number, s, fields["index"], fields["stem"])
            for path in _output_paths(output, template, formats_set, s, fields).values():
                refuse_image_among_frames(path, frame_folders, resolved)
                claims.check(path, owner)
        if want_video and s.sequence:
            claims.check(_video_path(output, s), Owner.video(number, s.label))

    torch_device, precision = device_and_precision(device, precision)

    # ---- model
    from flowcli.models import DEFAULT_MODEL, load_model_and_file

    spec = DEFAULT_MODEL if weights is None else weights
    model, weights_path, sha256 = load_model_and_file(spec, torch_device, offline, quiet)

    # ---- the settings the outputs are made with: --resume refuses to add files made with others
    record = RunRecord(output, "stereo")
    camera_settings = {name: None if camera is None else getattr(camera, name)
                       for name in ("focal", "fy", "cx", "cy", "baseline", "doffs")}
    settings = {"weights": sha256, "step": step, "swap": swap, **camera_settings, "max_depth": max_depth,
                "max_disparity": max_disparity, "lr_threshold": lr_threshold}
    entries = [_record_entry(source, settings) for source in sources]
    if resume:
        record.refuse_changed_settings(entries)
    if not quiet:
        say(f"model {spec} ({sha256[:12]}) on {torch_device}, {precision}")

    run = _Run(model=model, directory=output, template=template, formats=formats_set, want_video=want_video,
               camera=camera, max_depth=max_depth, max_disparity=max_disparity, lr_threshold=lr_threshold,
               ascii_ply=ascii_ply, overwrite=overwrite, precision=precision, max_pixels=max_pixels or None,
               batch_size=batch_size, sbs=sbs, swap=swap, step=step, max_frames=max_frames, fps=fps,
               claims=OutputClaims(input_files, keep_existing), resume=resume,
               json_out=stdout if json_output else None,
               model_info={"model": spec, "weights": str(weights_path), "sha256": sha256})
    known = [s.count for s in sources]
    total = sum(known) if all(n is not None for n in known) else None
    record.write(entries, stamp=not resume)
    if resume:
        for source, since in zip(sources, record.made_since(entries)):
            source.made_since = since
    with progress(quiet) as bar:
        task = bar.add_task("stereo", total=total, info="")
        run.sources(sources, lambda info: bar.update(task, advance=1, info=escape(info)))
    if run.replaced:
        warn(f"{run.replaced} output file(s) in {output} predated the settings recorded for their input (left by a "
             "run with other settings, such as an interrupted --overwrite run): made again")
    if not quiet:
        counts = f": {run.computed} computed, {run.skipped} skipped (outputs already there)" if resume else ""
        say(f"{run.computed + run.skipped} pair(s) -> {output}{counts}")


@dataclass
class _PlannedPair:
    number: int  # of the pair's input, among all inputs: its warnings are given once
    source: _Source
    item: _Item
    paths: dict  # output key -> path, every output of the pair
    missing: dict  # the outputs to write: all of them, or with --resume those not done yet
    replaces: int = 0  # --resume: how many of `missing` exist, left by a run with other settings
    left: object = None  # torch.Tensor [3, H, W], loaded for pairs that run the model
    right: object = None


@dataclass
class _Run:
    model: object
    directory: Path
    template: str
    formats: frozenset
    want_video: bool
    camera: object
    max_depth: float | None
    max_disparity: float | None
    lr_threshold: float
    ascii_ply: bool
    overwrite: bool
    precision: str
    max_pixels: int | None
    batch_size: int
    sbs: bool
    swap: bool
    step: int
    max_frames: int | None
    fps: float | None
    claims: OutputClaims
    resume: bool
    json_out: object | None
    model_info: dict
    computed: int = 0
    skipped: int = 0
    replaced: int = 0  # --resume: files left by a run with other settings, made again
    warned: set = field(default_factory=set)  # (input number, kind): a sequence's warning is given once

    def _warn_once(self, number: int, source: _Source, kind: str, message: str) -> None:
        if (number, kind) in self.warned:
            return
        self.warned.add((number, kind))
        from flowcli.console import warn

        warn(message + (f" (said once for {source.label})" if source.sequence else ""))

    def _emit(self, record: dict) -> None:
        if self.json_out is not None:
            self.json_out.write(json.dumps(record) + "\n")
            self.json_out.flush()

    def sources(self, sources: list[_Source], advance) -> None:
        """Every pair of every input, in order. Inputs without a video of their own in a row (LEFT RIGHT pairs, the
        lines of a --pairs LIST) share batches across their pairs, as a sequence's pairs do; a sequence is batched
        on its own, for its video."""
        for explicit, group in itertools.groupby(enumerate(sources), key=lambda item: not item[1].sequence):
            if explicit:
                self._run_pairs((self._plan_pair(number, source, item) for number, source in group
                                 for item in _read_pairs(source, self.sbs, self.swap, self.step, self.max_frames)),
                                None, advance)
            else:
                for number, source in group:
                    self._sequence(number, source, advance)

    def _sequence(self, number: int, source: _Source, advance) -> None:
        from flowcli.io.media import VideoWriter

        path = _video_path(self.directory, source)
        kept_frames = self._kept_video_frames(path, source) if self.want_video and self.resume else None
        pairs_before = self.computed + self.skipped
        with contextlib.ExitStack() as stack:
            writer = None
            if self.want_video and kept_frames is None:
                self.claims.check(path, Owner.video(number, source.label))
                # --resume replaces a video it does not keep
                writer = stack.enter_context(VideoWriter(path, fps=self.fps or source.fps or DEFAULT_FPS,
                                                         overwrite=self.overwrite or self.resume))
            self._run_pairs((self._plan_pair(number, source, item)
                             for item in _read_pairs(source, self.sbs, self.swap, self.step, self.max_frames)),
                            writer, advance)
        pairs = self.computed + self.skipped - pairs_before
        if kept_frames is not None and kept_frames != pairs:  # a video whose header did not tell its pairs
            raise OutputError(
                f"{path} has {kept_frames} frame(s) but {source.label} gave {pairs} pair(s): it was made by a run "
                "with other --max-frames or from other frames; delete it and run again with --resume to make it again"
            )
        if writer is not None:
            self._emit({"type": "video", "source": source.label, "outputs": {"video": str(writer.path)},
                        "frames": writer.frames_written, "fps": writer.fps})

    def _kept_video_frames(self, path: Path, source: _Source) -> int | None:
        """--resume: the frame count of the sequence's video if it is done (see `run_record.output_done`) and kept
        (`run_record.kept_video_frames`), None if it is to be made (again)."""
        if not output_done(path, source.made_since):
            self.replaced += os.path.lexists(path)
            return None
        return kept_video_frames(path, source.label, source.count, self.fps or source.fps or DEFAULT_FPS)

    def _run_pairs(self, planned_pairs: Iterator[_PlannedPair], writer, advance) -> None:
        """The pairs in batches of up to --batch-size pairs of one size. Outputs, JSON lines, progress and video
        frames come in pair order: a pair --resume skips, or one of another size, first runs the batch before it."""
        batch: list[_PlannedPair] = []
        for planned in planned_pairs:
            # a missing video needs every pair's colours: a skipped pair's come from its vis PNG
            if self.resume and not planned.missing and (writer is None or "vis" in planned.paths):
                self._batch(batch, writer, advance)
                batch = []
                self._skip(planned, writer, advance)
                continue
            planned.left, planned.right = planned.item.load()
            if batch and (planned.left.shape != batch[0].left.shape or len(batch) == self.batch_size):
                self._batch(batch, writer, advance)
                batch = []
            batch.append(planned)
        self._batch(batch, writer, advance)

    def _plan_pair(self, number: int, source: _Source, item: _Item) -> _PlannedPair:
        """Every output of the pair is checked (collisions, inputs, folders in the way) before any model work."""
        paths = _output_paths(self.directory, self.template, self.formats, source,
                              _item_fields(item.stem, item.left_name, item.right_name, item.index))
        owner = _pair_owner(number, source, item.index, item.stem)
        for path in paths.values():
            self.claims.check(path, owner)
        done = {key for key, path in paths.items() if self.resume and output_done(path, source.made_since)}
        missing = {key: path for key, path in paths.items() if key not in done}
        replaces = sum(os.path.lexists(path) for path in missing.values()) if self.resume else 0
        return _PlannedPair(number, source, item, paths, missing, replaces=replaces)

    def _skip(self, planned: _PlannedPair, writer, advance) -> None:
        source, item = planned.source, planned.item
        if writer is not None:
            from flowcli.outputs import write_video_frame_from_png

            write_video_frame_from_png(writer, planned.paths["vis"], source.size)
        self.skipped += 1
        self._emit({
            "type": "skipped", "source": source.label, "index": item.index, "left": item.left_name,
            "right": item.right_name, "inputs": item.inputs,
            "outputs": {key: str(path) for key, path in planned.paths.items()},
        })
        advance(f"{item.stem} (skipped)")

    def _batch(self, batch: list[_PlannedPair], writer, advance) -> None:
        if not batch:
            return
        import numpy as np
        import torch

        from flowcli.stereo import (
            DEFAULT_MAX_VERTICAL,
            PNG_DEPTH_SCALE,
            depth_from_disparity,
            disparity_to_rgb,
            estimate_disparity,
            non_rectified_message,
        )

        if self.camera is not None:
            height, width = batch[0].left.shape[-2:]
            self.camera.check_size(int(width), int(height))
        start = time.perf_counter()
        result = estimate_disparity(
            self.model,
            torch.stack([planned.left for planned in batch]),
            torch.stack([planned.right for planned in batch]),
            consistency=bool(self.formats & {"occlusion", "ply"}),
            lr_threshold=self.lr_threshold,
            max_vertical=None,
            max_pixels=self.max_pixels,
            precision=self.precision,
        )
        if result.disparity.is_cuda:
            torch.cuda.synchronize()
        ms = (time.perf_counter() - start) * 1000 / len(batch)
        for i, planned in enumerate(batch):
            number, source, item, paths = planned.number, planned.source, planned.item, planned.paths
            label = f"{source.label}" if source.pairs is not None and len(source.pairs) == 1 else (
                f"{source.label} pair {item.stem}")
            vertical = result.vertical_median[i]
            if vertical > DEFAULT_MAX_VERTICAL:
                self._warn_once(number, source, "vertical", non_rectified_message(vertical, DEFAULT_MAX_VERTICAL,
                                                                                  f"{label}: "))
            negative = result.negative_fraction[i]
            if negative > 0.5:
                self._warn_once(number, source, "negative", f"{label}: {100 * negative:.0f}% of the disparity is "
                                "negative: are left and right swapped? (--swap exchanges them)")
            disparity = result.disparity[i, 0].float().cpu().numpy()
            occ = None if result.occlusion is None else result.occlusion[i, 0].cpu().numpy()
            depth_map = None
            if self.camera is not None:
                depth_map = depth_from_disparity(disparity, self.camera.focal, self.camera.baseline,
                                                 doffs=self.camera.doffs, max_depth=self.max_depth)
            if depth_map is not None and "depth_png" in planned.missing:
                beyond = float((np.rint(depth_map * PNG_DEPTH_SCALE) > 65535).mean())  # as depth_to_png_array
                if beyond:
                    self._warn_once(number, source, "depth_png", f"{label}: {100 * beyond:.2g}% of the depth lies "
                                    "beyond 65.535 m, which a 16-bit millimetre PNG cannot hold: those pixels are 0 "
                                    "(invalid) there; --depth (.npy) or --depth-pfm keep them")
            colours = None
            if writer is not None or "vis" in planned.missing:
                colours = disparity_to_rgb(disparity, self.max_disparity)
            points = _write_outputs(planned.missing, disparity=disparity, occlusion=occ, depth=depth_map,
                                    left_image=planned.left, camera=self.camera, ascii_ply=self.ascii_ply,
                                    overwrite=self.overwrite or planned.replaces > 0, vis=colours)
            if writer is not None:
                writer.write(colours)
            self.computed += 1
            self.replaced += planned.replaces
            height, width = disparity.shape
            valid_depth = None if depth_map is None else depth_map[depth_map > 0]
            cam = self.camera
            self._emit({
                "type": "pair", "source": source.label, "index": item.index, "left": item.left_name,
                "right": item.right_name, "inputs": item.inputs, "width": int(width), "height": int(height),
                "outputs": {key: str(path) for key, path in paths.items()},
                "disparity_mean": round(float(disparity.mean()), 4),
                "disparity_max": round(float(disparity.max()), 4),
                "negative_fraction": round(negative, 4),
                "vertical_median": round(vertical, 4),
                "occluded_fraction": None if occ is None else round(float((occ > 0.5).mean()), 4),
                "camera": None if cam is None else dict(zip(("focal", "fy", "cx", "cy"),
                                                            cam.intrinsics(int(width), int(height))),
                                                        baseline=cam.baseline, doffs=cam.doffs),
                "depth_median": None if valid_depth is None or not valid_depth.size
                else round(float(np.median(valid_depth)), 4),
                "points": points,
                "ms": round(ms, 2), "tiles": result.tiles, **self.model_info,
            })
            advance(item.stem)
