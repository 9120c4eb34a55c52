"""`flowcli estimate`: optical flow for image pairs, frame folders, globs and videos, written as files.

The command validates everything it can before loading the model (inputs exist and decode, frames agree
in size, outputs can be written and do not exist yet), then streams the pairs through `estimate_flow`
in batches and writes each pair's outputs with `flowcli.outputs.write_pair_outputs`. With --resume, pairs
whose outputs are all there already are skipped without running the model, and a run whose settings differ
from those recorded in the output folder (flowcli.cli.run_record) is refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

from flowcli.cli.options import (
    DEFAULT_FPS,
    DEFAULT_MAX_PIXELS,
    DEFAULT_OUTPUT,
    INPUT_PANEL,
    MODEL_PANEL,
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
    check_output_is_no_video_name,
    check_picking_applies,
    check_precision_name,
    check_scale,
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
from flowcli.outputs import DEFAULT_FORMATS, DEFAULT_NAME, FORMATS

_GLOB_CHARS = "*?["

_HELP_PARAGRAPHS = [
    "Estimate optical flow between consecutive frames and write it as files.",
    "INPUTS are image pairs, folders of frames, quoted glob patterns or video files, several of them in one call. "
    "Image files given in a row form one input: two of them are a pair, three or more a sequence in the order given "
    "(a shell-expanded glob; quote the glob, e.g. 'frames/*.png', to get natural order instead: frame_2 before "
    "frame_10). A folder or glob is a sequence of its images in natural order, a video (mp4, avi, mov, mkv, webm) a "
    "sequence of its frames, decoded as a stream. - is a video piped into stdin (mkv, ts, or mp4/mov with their "
    "index first, -movflags +faststart; at most one - per run), named 'stdin' for {source}, at the stream's nominal "
    "fps; its length is unknown until it ends. Sequences give consecutive pairs, every --step frames, at most "
    "--max-frames frames. All frames of an input must have the same size.",
    "--pairs LIST runs many unrelated image pairs (FlyingChairs, KITTI, before/after photos) with one model load: "
    "LIST is a text file, or - for stdin, with one pair per line, two image paths split as a shell would (quote a "
    "path that contains spaces; a space or a tab between the two). Blank lines and lines starting with # are "
    "skipped. Relative paths are relative to the folder of LIST (to the current folder for - and for a pipe such as "
    "<(...)). Each line is an input "
    "of its own, exactly like two images given on the command line, after INPUTS if any; every line is checked "
    "before the model loads, and errors name LIST:LINE. Image pairs in a row (the lines of LIST) of one frame size "
    "share batches of --batch-size pairs, as a sequence's pairs do.",
    "Outputs (choose with flags or --formats; default --flo --vis): flo, kitti, npy, npz (forward, backward, "
    "occlusion arrays), vis (colour PNG), video (colour mp4 per sequence, named SOURCE_vis.mp4, at the source fps "
    "divided by --step, or --fps), occlusion (mask PNG, 255 = occluded, from forward-backward consistency; models "
    "with a learned occlusion mask also write occ_learned), warp (frame 2 warped onto frame 1). --backward adds the "
    "backward flow (2 -> 1) twin of flo, kitti, npy, vis and occlusion.",
    f"File names come from --name (default '{DEFAULT_NAME}') with placeholders {{source}} (video file stem, folder "
    "name, or first image's stem; -2, -3... added to tell apart inputs of the same name), {frame1} {frame2} (image "
    "stems, or frame_NNNNNN for video frames), {index} (pair number in its input; format specs work: {index:06d}), "
    "{stem} ({frame1} for images, {source}_{frame1} for video frames), {kind} (flow, flow_bw, vis, vis_bw, occ, "
    "occ_bw, occ_learned, warp) and {ext}; '_{kind}' and '.{ext}' are added when missing ('_{kind}' before a final "
    "'.{ext}'). Subfolders work: "
    "--name '{source}/{index:06d}'. Existing files are never replaced without --overwrite (all planned names are "
    "checked before any work, for a video as many pairs as its header or --max-frames tells); every file is written "
    "to a temp file and renamed when complete, so a file under its final name is always whole. Image outputs (kitti, "
    "vis, occlusion, warp) are refused in a folder the run lists frames from (a folder, a glob, images in a row): a "
    "later run over it would take them for frames.",
    "--resume finishes an interrupted run: give the same inputs, options and weights again, plus --resume. A pair "
    "whose outputs all exist is skipped without running the model (a video is still decoded up to its last pair); "
    "for the other pairs only the missing files are written, and existing files are never touched. The weights, "
    "--step, --scale and --max-flow must be the ones the outputs were made with (a hidden OUT/.flowcli-estimate.json "
    "records them per input): a change is refused; device, precision, batch size, --max-pixels and the formats may "
    "change. A file older than the settings recorded for its input counts as missing: a run with other settings left "
    "it (an interrupted --overwrite run with a new --step), and it is made again. --video: a sequence's "
    "existing video is kept if it has a frame per pair; a missing one, or one of another --max-frames or --fps, is "
    "made again over all pairs, taking skipped pairs' frames from their vis PNGs, so without --vis every pair of that "
    "sequence runs the model again (missing per-pair files are still the only ones written); with - the pairs are "
    "known at the stream's end, and a video that does not match is then an error. Hidden .NAME.* temp "
    "files left by a killed run are not outputs and may be deleted. With - (stdin), pipe the same video again: pairs "
    "are matched by frame number, so a live stream cannot be resumed. --resume and --overwrite exclude each other.",
    "--json prints one JSON line per pair on stdout with keys: type (\"pair\"), source, index, frame1, frame2, inputs "
    "(paths; video frames as VIDEO#N, stdin#N for -), width, height, outputs (output name -> path), flow_mean, "
    "flow_max (px), occluded_fraction (null unless occlusion was computed), ms (inference time per pair), tiles, "
    "model, weights, sha256. Each video written adds a line with type \"video\", source, outputs "
    "({\"video\": path}), frames, fps. "
    "With --resume, a skipped pair gets a line with type \"skipped\", source, index, frame1, frame2, inputs and "
    "outputs (the files kept); a kept video gets no line.",
    "Exit codes: 0 ok, 1 other error, 2 input error, 3 output error, 4 weights error.",
    "Examples:",
    "  flowcli estimate a.png b.png",
    "  flowcli estimate --pairs chairs_pairs.txt --flo -o out/",
    "  for a in data/*_img1.ppm; do echo \"$a ${a%_img1.ppm}_img2.ppm\"; done | flowcli estimate --pairs - -o out/    "
    "(a list of FlyingChairs pairs built on the fly)",
    "  flowcli estimate frames/ --vis --video --fps 24 -o out/",
    "  flowcli estimate clip.mp4 --max-frames 100 --step 2 --formats flo,occlusion --json > flow.jsonl",
    "  flowcli estimate shots/*/ clip.mp4 --all --name '{source}/{index:06d}' --overwrite    (each shot folder a "
    "sequence of its own; a quoted glob such as 'shots/*/*.png' is one sequence)",
    "  flowcli estimate clip.mp4 --flo --vis -o out/ --resume    (after an interruption: only what is missing)",
    "  ffmpeg -i rtsp://camera/stream -f matroska - | flowcli estimate - --flo --vis -o out/",
    "  flowcli estimate a.png b.png --weights hf://OWNER/REPO/model.safetensors --device cuda --precision bf16",
]
HELP = "\n\n".join(_HELP_PARAGRAPHS)


def register(app: typer.Typer) -> None:
    app.command("estimate", help=HELP, no_args_is_help=True)(estimate)


# ----------------------------------------------------------------------------- inputs


@dataclass
class _Source:
    label: str  # the argument(s) as given, for messages and JSON
    name: str  # the {source} placeholder
    frames: list[Path] | None = None  # image frames in use, for image inputs
    video: Path | None = None
    stream: Iterator | None = None  # the video on stdin: its frame pairs, the first decoded already (read once)
    fps: float | None = None  # of the visualisation video
    pairs: int | None = None  # None: unknown before decoding
    frame_size: tuple[int, int] | None = None  # (width, height) of every frame
    sequence: bool = True  # False for an explicit image pair: no visualisation video
    made_since: int | None = None  # --resume: outputs modified before this (ns) are not done (RunRecord.made_since)


@dataclass
class _Pair:
    frame1: str
    frame2: str
    inputs: tuple[str, str]
    index: int
    load: Callable[[], tuple]  # -> (image1, image2), torch.Tensor [3, H, W]; image files are read only when called


def _is_glob(text: str) -> bool:
    return any(char in text for char in _GLOB_CHARS)


def _is_image_file(path: Path) -> bool:
    from flowcli.io.media import IMAGE_SUFFIXES

    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def _glob_folder_name(pattern: str) -> str:
    parts = Path(pattern).parts
    fixed = [p for p in parts[: next((i for i, p in enumerate(parts) if _is_glob(p)), len(parts))]]
    # resolved: '../*.png' is named after the real folder, never '..' (which would lead {source} out of -o)
    return (Path(*fixed) if fixed else Path.cwd()).resolve().name or "frames"


def _check_frame_sizes(frames: list[Path]) -> tuple[int, int]:
    """Every frame's header is read (cheap): unreadable files and size mismatches fail before any work.
    Returns the frames' (width, height)."""
    from flowcli.io.media import image_size

    first, first_size = frames[0], image_size(frames[0])
    for path in frames[1:]:
        size = image_size(path)
        if size != first_size:
            raise InputError(
                f"frames differ in size: {first} is {first_size[0]}x{first_size[1]}, {path} is {size[0]}x{size[1]}; "
                "resize them to match"
            )
    return first_size


def _too_few(label: str, count: int, step: int) -> InputError:
    after = f" after --step {step}" if step > 1 else ""
    return InputError(f"{label} has {count} frame(s) to use{after}; optical flow needs at least 2")


def _image_sequence(label: str, name: str, frames: list[Path], step: int, max_frames: int | None) -> _Source:
    used = frames[::step][:max_frames]
    if len(used) < 2:
        raise _too_few(label, len(used), step)
    size = _check_frame_sizes(used)
    return _Source(label=label, name=name, frames=used, pairs=len(used) - 1, frame_size=size)


def _video_source(path: Path, step: int, max_frames: int | None) -> _Source:
    """Open the video and decode its first step+1 frames, so a broken or 1-frame video fails up front."""
    from flowcli.io.media import VideoReader

    reader = VideoReader(path)
    count = 0
    try:
        frames = iter(reader)
        try:
            for _ in frames:
                count += 1
                if count > step:
                    break
        finally:
            frames.close()
    finally:
        reader.close()
    if count <= step:
        if count == 1:
            raise InputError(f"{path} has only 1 frame; optical flow needs at least 2")
        raise InputError(f"{path} has {count} frames, fewer than --step {step} + 1; lower --step")
    pairs = None
    if reader.num_frames:
        used = math.ceil(reader.num_frames / step)
        pairs = max(1, (min(used, max_frames) if max_frames else used) - 1)
    fps = reader.fps / step if reader.fps else None
    return _Source(label=str(path), name=path.stem, video=path, fps=fps, pairs=pairs, frame_size=reader.size)


def _stdin_source(step: int, max_frames: int | None) -> _Source:
    """Open the video on stdin and decode its first pair, so a broken or too short stream fails before the model
    loads. A pipe is read once: the pair is kept, and the run goes on from there."""
    from flowcli.io.media import STDIN, VideoReader, frame_pairs

    reader = VideoReader(STDIN)
    pairs = frame_pairs(reader, step=step, max_frames=max_frames)
    try:
        first = next(pairs)
    except InputError:
        if 1 < reader.frames_read <= step:
            raise InputError(
                f"stdin has {reader.frames_read} frames, fewer than --step {step} + 1; lower --step"
            ) from None
        raise
    fps = reader.fps / step if reader.fps else None
    return _Source(label=reader.name, name=reader.name, video=Path(STDIN), stream=itertools.chain([first], pairs),
                   fps=fps, frame_size=reader.size)


def _does_not_exist(path) -> InputError:
    return InputError(f"{path} does not exist; check the path")


def _image_pair_source(path1: Path, path2: Path) -> _Source:
    """An explicit pair of images (two in a row among INPUTS, or a line of --pairs LIST): --step and --max-frames
    do not apply, and it gets no visualisation video."""
    size = _check_frame_sizes([path1, path2])
    return _Source(label=f"{path1} {path2}", name=path1.stem, frames=[path1, path2], pairs=1, frame_size=size,
                   sequence=False)


def _pair_list_sources(pair_list: str) -> list[_Source]:
    """One explicit image pair per line of --pairs LIST (see the command help); errors name LIST:LINE."""
    sources = []
    for pair in read_image_pairs(pair_list):
        with errors_at(pair.where):
            sources.append(_image_pair_source(pair.first, pair.second))
    return sources


def collect_sources(
    inputs: list[str], step: int = 1, max_frames: int | None = None, pair_list: str | None = None
) -> list[_Source]:
    """Group INPUTS into sources (see the command help), then add a source per pair of --pairs LIST, and validate
    them, without decoding images."""
    from flowcli.io.media import STDIN, is_video, list_frames

    if pair_list is not None:  # before INPUTS: `--pairs a.png b.png` would call b.png a single image
        refuse_media_as_list(pair_list)
    if pair_list in (STDIN, "/dev/stdin", "/dev/fd/0", "/proc/self/fd/0") and STDIN in inputs:
        raise InputError(f"--pairs {pair_list} and the input - both read stdin; save the list or the video to a file")
    if inputs.count(STDIN) > 1:
        raise InputError(f"- (stdin) is given {inputs.count(STDIN)} times; a run reads one video from stdin at most")
    for arg in inputs:
        if arg != STDIN and not Path(arg).exists() and not _is_glob(arg):
            raise _does_not_exist(arg)

    sources: list[_Source] = []
    i = 0
    while i < len(inputs):
        arg, path = inputs[i], Path(inputs[i])
        if _is_image_file(path):
            j = i
            while j < len(inputs) and _is_image_file(Path(inputs[j])):
                j += 1
            run = [Path(a) for a in inputs[i:j]]
            if len(run) == 1:
                raise InputError(
                    f"{arg} is a single image; give two images for a pair, or a folder, a glob or a video"
                )
            if len(run) == 2:
                sources.append(_image_pair_source(*run))
            else:
                sources.append(_image_sequence(" ".join(inputs[i:j]), run[0].stem, run, step, max_frames))
            i = j
            continue
        if arg == STDIN:
            sources.append(_stdin_source(step, max_frames))
        elif path.is_file() and is_video(path):
            sources.append(_video_source(path, step, max_frames))
        elif path.is_dir():
            sources.append(_image_sequence(arg, path.resolve().name or "frames", list_frames(path), step, max_frames))
        elif path.is_file():
            raise InputError(  # a list of pairs given without --pairs is the likely mistake
                f"{arg} is neither an image nor a video (mp4, avi, mov, mkv, webm); give images, a folder, a glob "
                f"or a video, or --pairs {arg} if it lists image pairs"
            )
        elif path.exists():  # bash's <(...) is /dev/fd/63, a pipe: it cannot be opened twice as a video file is
            raise InputError(f"{arg} is a pipe or a device, not a file; pipe a video into stdin and give - instead "
                             "(... | flowcli estimate -)")
        else:  # a glob pattern the shell did not expand
            sources.append(_image_sequence(arg, _glob_folder_name(arg), list_frames(arg), step, max_frames))
        i += 1
    if pair_list is not None:
        sources += _pair_list_sources(pair_list)
    for source, name in zip(sources, unique_source_names([s.name for s in sources])):
        source.name = name
    return sources


def _image_pairs(source: _Source) -> Iterator[_Pair]:
    """Pairs of image frames, read when loaded: pairs that --resume skips are never read."""
    from flowcli.io.media import read_image

    frames = source.frames
    last_read: dict[int, object] = {}  # frame position -> image: consecutive pairs share a frame, read once

    def read(position: int):
        if position not in last_read:
            image = read_image(frames[position])
            last_read.clear()
            last_read[position] = image
        return last_read[position]

    def load(index: int) -> tuple:
        image1, image2 = read(index), read(index + 1)
        if image1.shape != image2.shape:  # headers were checked; this catches files changed since
            raise InputError(f"frames differ in size: {frames[index]} and {frames[index + 1]}; resize them to match")
        return image1, image2

    for index, (path1, path2) in enumerate(zip(frames, frames[1:])):
        yield _Pair(path1.stem, path2.stem, (str(path1), str(path2)), index, functools.partial(load, index))


def _decoded(image1, image2) -> Callable[[], tuple]:
    return lambda: (image1, image2)


def _video_pairs(source: _Source, step: int, max_frames: int | None) -> Iterator[_Pair]:
    from flowcli.io.media import frame_pairs

    pairs = frame_pairs(source.video, step=step, max_frames=max_frames) if source.stream is None else source.stream
    for pair in pairs:
        numbers = (pair.name1.rsplit("_", 1)[-1], pair.name2.rsplit("_", 1)[-1])
        inputs = (f"{source.label}#{int(numbers[0])}", f"{source.label}#{int(numbers[1])}")
        yield _Pair(pair.name1, pair.name2, inputs, pair.index, _decoded(pair.image1, pair.image2))


def _pairs(source: _Source, step: int, max_frames: int | None) -> Iterator[_Pair]:
    return _image_pairs(source) if source.video is None else _video_pairs(source, step, max_frames)


def _names(source: _Source, frame1: str, frame2: str, index: int):
    from flowcli.outputs import PairNames

    stem = f"{source.name}_{frame1}" if source.video is not None else frame1
    return PairNames(source=source.name, frame1=frame1, frame2=frame2, index=index, stem=stem)


def _known_names(source: _Source, step: int, max_frames: int | None) -> list:
    """Names of every pair known before decoding: all pairs of image inputs; for a video, the pairs its header
    (frame count) or --max-frames promises, at least the first."""
    if source.video is not None:
        count = source.pairs or (max_frames - 1 if max_frames else 1)
        return [_names(source, f"frame_{i * step:06d}", f"frame_{(i + 1) * step:06d}", i) for i in range(count)]
    frames = source.frames
    return [_names(source, a.stem, b.stem, i) for i, (a, b) in enumerate(zip(frames, frames[1:]))]


def _record_entry(source: _Source, settings: dict) -> Entry:
    """The source's entry in the run record (flowcli.cli.run_record): keyed by its video or first frame, so a
    folder and a glob of the same frames share it; the video on stdin by -, as --resume takes it piped again."""
    if source.stream is not None:
        return Entry(str(source.video), source.label, settings, source.name)
    if not source.sequence:  # --step does not apply to an explicit image pair
        settings = {name: value for name, value in settings.items() if name != "step"}
    return Entry(str((source.video or source.frames[0]).resolve()), source.label, settings, source.name)


def _progress_name(source: _Source, pair: _Pair) -> str:
    """The pair in the progress line: an image pair's source is named after its first image already."""
    return source.name if not source.sequence else f"{source.name} {pair.frame1}"


def _pair_owner(number: int, source: _Source, names) -> Owner:
    """Pair `names.index` of input number `number`: frame names alone repeat (a/0001 and b/0001 in one glob)."""
    return Owner(number, names.index, f"{source.label} pair {names.index} ({names.frame1} -> {names.frame2})")


# ----------------------------------------------------------------------------- outputs


def _check_output_folder(directory: Path) -> None:
    """The output folder, or the nearest existing folder above it, must be a writable folder."""
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


def _check_video_sizes(sources: list[_Source], options) -> None:
    """Before the model: each sequence's frames must have a size its video can be encoded at."""
    from flowcli.io.media import check_video_size
    from flowcli.outputs import video_path

    for source in sources:
        if source.sequence:
            check_video_size(video_path(options, source.name), *source.frame_size)


def _frame_folders(sources: list[_Source]) -> dict[Path, str]:
    """Resolved folder -> the sequence whose frames are images listed there (a folder, a glob, or images in a row,
    as a shell-expanded glob gives them). An explicit pair names its two images: it is not listed."""
    folders: dict[Path, str] = {}
    for source in sources:
        if source.sequence and source.frames:
            for folder in {frame.parent for frame in source.frames}:
                folders.setdefault(folder.resolve(), source.label)
    return folders


def _plan(
    sources: list[_Source], options, claims: OutputClaims, step: int, max_frames: int | None, video: bool
) -> None:
    from flowcli.outputs import output_paths, refuse_image_among_frames, video_path

    frame_folders = _frame_folders(sources)
    resolved: dict[Path, Path] = {}  # output folder -> resolved, once per folder
    for number, source in enumerate(sources):
        for names in _known_names(source, step, max_frames):
            owner = _pair_owner(number, source, names)
            for path in output_paths(options, names).values():
                refuse_image_among_frames(path, frame_folders, resolved)
                claims.check(path, owner)
        if video and source.sequence:
            claims.check(video_path(options, source.name), Owner.video(number, source.label))


# ----------------------------------------------------------------------------- the command


def _parse_outputs(formats: Optional[str], flags: dict[str, bool], all_: bool) -> tuple[frozenset[str], bool]:
    from flowcli.outputs import parse_formats

    chosen = set(parse_formats(formats)) | {name for name, on in flags.items() if on}
    if all_:
        chosen = set(FORMATS)
    asks_all = formats is not None and "all" in (part.strip().lower() for part in formats.split(","))
    return frozenset(chosen or DEFAULT_FORMATS), all_ or asks_all


def _check_numbers(step, max_frames, batch_size, max_pixels, fps, max_flow) -> None:
    if step < 1:
        raise InputError(f"--step must be at least 1, got {step}")
    if max_frames is not None and max_frames < 2:
        raise InputError(f"--max-frames must be at least 2 to form a pair, got {max_frames}")
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    if max_pixels < 0:
        raise InputError(f"--max-pixels must be positive (0 turns tiling off), got {max_pixels}")
    check_fps_option(fps)
    if max_flow is not None and not (math.isfinite(max_flow) and max_flow > 0):
        raise OutputError(f"--max-flow must be a positive number, got {max_flow}")


def _format_flag(name: str, note: str = ""):
    return format_flag(FORMATS, name, note)


def estimate(
    inputs: Annotated[
        Optional[list[str]],
        typer.Argument(help="Two images, a folder or quoted glob of frames, a video, or - for a video on stdin; "
                       "several allowed; optional with --pairs.",
                       show_default=False, metavar="INPUTS"),
    ] = None,
    pair_lists: Annotated[
        Optional[list[str]],
        typer.Option("--pairs", metavar="LIST", help="Text file of image pairs, one pair per line (two paths, "
                     "relative to its folder), or - for stdin; see above.", rich_help_panel=INPUT_PANEL,
                     show_default=False),
    ] = None,
    step: Annotated[
        int, typer.Option("--step", help="Frame gap within sequences: pairs (0, N), (N, 2N)...",
                          rich_help_panel=INPUT_PANEL)
    ] = 1,
    max_frames: Annotated[
        Optional[int],
        typer.Option("--max-frames", help="Use at most this many frames of each sequence (after --step).",
                     rich_help_panel=INPUT_PANEL, show_default=False),
    ] = None,
    output: OutputDirOption = DEFAULT_OUTPUT,
    name: NameOption = DEFAULT_NAME,
    formats: formats_option(FORMATS) = None,
    flo: Annotated[bool, _format_flag("flo")] = False,
    kitti: Annotated[bool, _format_flag("kitti")] = False,
    npy: Annotated[bool, _format_flag("npy")] = False,
    npz: Annotated[bool, _format_flag("npz")] = False,
    vis: Annotated[bool, _format_flag("vis")] = False,
    video: Annotated[bool, _format_flag("video", " (not for image pairs)")] = False,
    occlusion: Annotated[bool, _format_flag("occlusion")] = False,
    warp: Annotated[bool, _format_flag("warp")] = False,
    backward: Annotated[
        bool,
        typer.Option("--backward", help="Also write backward-flow twins of flo/kitti/npy/vis/occlusion.",
                     rich_help_panel=OUTPUT_PANEL),
    ] = False,
    all_: Annotated[
        bool, typer.Option("--all", help="Every output format, with --backward.", rich_help_panel=OUTPUT_PANEL)
    ] = False,
    max_flow: Annotated[
        Optional[float],
        typer.Option("--max-flow", help="Flow magnitude (px) of full colour in vis/video; default: per-frame maximum. "
                     "Set it for colours that compare across frames.", rich_help_panel=OUTPUT_PANEL,
                     show_default=False),
    ] = None,
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
    scale: Annotated[
        float, typer.Option("--scale", help="Resize frames by this factor for the network (0.5: about 4x faster "
                            "on large frames); flow is written at full size, in full-size pixels.",
                            rich_help_panel=MODEL_PANEL)
    ] = 1.0,
    offline: OfflineOption = False,
) -> None:
    stdout = sys.stdout  # the progress display may redirect sys.stdout to the console while it runs

    from rich.markup import escape  # names in info lines as given: out[v2] is not "out" in style v2

    from flowcli.console import progress, say, warn
    from flowcli.outputs import OutputOptions

    # ---- options, before anything is read
    pair_list = one_pair_list(pair_lists)
    if not inputs and pair_list is None:
        raise typer.BadParameter("give INPUTS, --pairs LIST, or both", param_hint="'INPUTS'")
    for arg in inputs or []:
        nonempty_path(arg, "an input", "two images, a folder, a quoted glob, a video or - for stdin")
    output = nonempty_path(output, "-o", "the output folder")
    flags = {"flo": flo, "kitti": kitti, "npy": npy, "npz": npz, "vis": vis, "video": video,
             "occlusion": occlusion, "warp": warp}
    if resume and overwrite:
        raise InputError("--resume keeps existing outputs and --overwrite replaces them; use one of them")
    chosen, everything = _parse_outputs(formats, flags, all_)
    backward = backward or everything
    _check_numbers(step, max_frames, batch_size, max_pixels, fps, max_flow)
    check_scale(scale)
    check_precision_name(precision)
    options = OutputOptions(directory=output, formats=chosen - {"video"}, backward=backward, template=name,
                            max_flow=max_flow, overwrite=overwrite)
    want_video = "video" in chosen
    check_fps_has_a_video(fps, want_video)
    check_output_is_no_video_name(output, want_video, "SOURCE_vis.mp4")

    # ---- inputs and outputs, before the model
    sources = collect_sources(inputs or [], step, max_frames, pair_list)
    check_video_rates(sources, want_video, fps)
    check_picking_applies(sources, step, max_frames, pair_list, "frames",
                          "a folder, a glob, a video or three or more images in a row")  # fmt: skip
    if want_video and not everything and not any(s.sequence for s in sources):
        raise InputError(
            "--video writes one video per sequence (a folder, a glob, a video file or three or more images in a row) "
            "and the inputs are image pairs only; drop --video, or give the frames as one sequence"
        )
    if want_video:
        _check_video_sizes(sources, options)
    _check_output_folder(output)
    input_files = {p.resolve() for s in sources if s.stream is None for p in (s.frames or [s.video])}
    # --resume takes existing outputs as done: the claims then check only collisions, inputs and folders
    keep_existing = overwrite or resume
    _plan(sources, options, OutputClaims(input_files, keep_existing), step, max_frames, want_video)

    torch_device, precision = device_and_precision(device, precision)

    # ---- model
    from flowcli.models import DEFAULT_MODEL, load_model_and_file

    spec = DEFAULT_MODEL if weights is None else weights
    model, weights_path, sha256 = load_model_and_file(spec, torch_device, offline, quiet)
    if getattr(model.config, "matching", None) == "maskflownet" and "occlusion" in chosen:
        options = dataclasses.replace(options, learned_occlusion=True)
        _plan(sources, options, OutputClaims(input_files, keep_existing), step, max_frames, want_video)

    # ---- the settings the outputs are made with: --resume refuses to add files made with others
    record = RunRecord(output, "estimate")
    settings = {"weights": sha256, "step": step, "scale": scale, "max_flow": max_flow}
    entries = [_record_entry(source, settings) for source in sources]
    if resume:
        record.refuse_changed_settings(entries)
    if not quiet:
        say(f"model {spec} ({sha256[:12]}) on {torch_device}, {precision}")

    # ---- run
    claims = OutputClaims(input_files, keep_existing)
    run = _Run(model=model, options=options, precision=precision, max_pixels=max_pixels or None, scale=scale,
               batch_size=batch_size, step=step, max_frames=max_frames, want_video=want_video, fps=fps,
               claims=claims, resume=resume, json_out=stdout if json_output else None,
               model_info={"model": spec, "weights": str(weights_path), "sha256": sha256})
    known = [s.pairs for s in sources]
    total = sum(known) if all(n is not None for n in known) else None
    record.write(entries, stamp=not resume)
    if resume:
        for source, since in zip(sources, record.made_since(entries)):
            source.made_since = since
    with progress(quiet) as bar:
        task = bar.add_task("estimate", total=total, info="")
        run.sources(sources, lambda info: bar.update(task, advance=1, info=escape(info)))
    if run.replaced:
        warn(f"{run.replaced} output file(s) in {output} predated the settings recorded for their input (left by a "
             "run with other settings, such as an interrupted --overwrite run): made again")
    if not quiet:
        counts = f": {run.computed} computed, {run.skipped} skipped (outputs already there)" if resume else ""
        say(f"{run.computed + run.skipped} pair(s) -> {output}{counts}")


@dataclass
class _PlannedPair:
    source: _Source
    pair: _Pair
    paths: dict  # output key -> path, every output of the pair
    missing: dict  # the outputs to write: all of them, or with --resume those not done yet
    replaces: int = 0  # --resume: how many of `missing` exist, left by a run with other settings
    images: tuple | None = None  # (image1, image2), torch.Tensor [3, H, W], loaded for pairs that run the model


@dataclass
class _Run:
    model: object
    options: object
    precision: str
    max_pixels: int | None
    scale: float
    batch_size: int
    step: int
    max_frames: int | None
    want_video: bool
    fps: float | None
    claims: OutputClaims
    resume: bool
    json_out: object | None
    model_info: dict
    computed: int = 0
    skipped: int = 0
    replaced: int = 0  # --resume: files left by a run with other settings, made again

    def _emit(self, record: dict) -> None:
        if self.json_out is not None:
            self.json_out.write(json.dumps(record) + "\n")
            self.json_out.flush()

    def sources(self, sources: list[_Source], advance) -> None:
        """Every pair of every input, in order. A run of explicit image pairs in a row (a --pairs LIST) shares
        batches across its pairs, as a sequence's pairs do; a sequence is batched on its own, for its video."""
        for explicit, group in itertools.groupby(enumerate(sources), key=lambda item: not item[1].sequence):
            if explicit:
                self._run_pairs((self._plan_pair(number, source, pair) for number, source in group
                                 for pair in _pairs(source, self.step, self.max_frames)), None, advance)
            else:
                for number, source in group:
                    self._sequence(number, source, advance)

    def _sequence(self, number: int, source: _Source, advance) -> None:
        from flowcli.io.media import VideoWriter
        from flowcli.outputs import video_path

        path = video_path(self.options, source.name)
        kept_frames = self._kept_video_frames(path, source) if self.want_video and self.resume else None
        pairs_before = self.computed + self.skipped
        with contextlib.ExitStack() as stack:
            writer = None
            if self.want_video and kept_frames is None:
                fps = self.fps or source.fps or DEFAULT_FPS
                self.claims.check(path, Owner.video(number, source.label))
                # --resume replaces a video it does not keep
                writer = stack.enter_context(VideoWriter(path, fps=fps,
                                                         overwrite=self.options.overwrite or self.resume))
            self._run_pairs((self._plan_pair(number, source, pair)
                             for pair in _pairs(source, self.step, self.max_frames)), writer, advance)
        pairs = self.computed + self.skipped - pairs_before
        if kept_frames is not None and kept_frames != pairs:  # a video whose pairs were not known before decoding
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
        return kept_video_frames(path, source.label, source.pairs, self.fps or source.fps or DEFAULT_FPS)

    def _run_pairs(self, planned_pairs: Iterator[_PlannedPair], writer, advance) -> None:
        """The pairs in batches of up to --batch-size pairs of one frame size. Outputs, JSON lines, progress and
        video frames come in pair order: a pair --resume skips, or one of another size, first runs the batch
        before it."""
        batch: list[_PlannedPair] = []
        for planned in planned_pairs:
            # a missing video needs every pair's colours: a skipped pair's come from its vis PNG
            if self.resume and not planned.missing and (writer is None or "vis" in planned.paths):
                self._compute(batch, writer, advance)
                batch = []
                self._skip(planned, writer, advance)
                continue
            planned.images = planned.pair.load()
            if batch and planned.images[0].shape != batch[0].images[0].shape:
                self._compute(batch, writer, advance)
                batch = []
            batch.append(planned)
            if len(batch) == self.batch_size:
                self._compute(batch, writer, advance)
                batch = []
        self._compute(batch, writer, advance)

    def _plan_pair(self, number: int, source: _Source, pair: _Pair) -> _PlannedPair:
        """Every output of the pair is checked (collisions, inputs, folders in the way) before any model work."""
        from flowcli.outputs import output_paths

        names = _names(source, pair.frame1, pair.frame2, pair.index)
        paths = output_paths(self.options, names)
        owner = _pair_owner(number, source, names)
        for path in paths.values():
            self.claims.check(path, owner)
        done = {key for key, path in paths.items() if self.resume and output_done(path, source.made_since)}
        missing = {key: path for key, path in paths.items() if key not in done}
        replaces = sum(os.path.lexists(path) for path in missing.values()) if self.resume else 0
        return _PlannedPair(source, pair, paths, missing, replaces=replaces)

    def _skip(self, planned: _PlannedPair, writer, advance) -> None:
        source, pair = planned.source, planned.pair
        if writer is not None:
            from flowcli.outputs import write_video_frame_from_png

            write_video_frame_from_png(writer, planned.paths["vis"], source.frame_size)
        self.skipped += 1
        self._emit({
            "type": "skipped", "source": source.label, "index": pair.index, "frame1": pair.frame1,
            "frame2": pair.frame2, "inputs": list(pair.inputs),
            "outputs": {key: str(path) for key, path in planned.paths.items()},
        })
        advance(f"{_progress_name(source, pair)} (skipped)")

    def _compute(self, batch: list[_PlannedPair], writer, advance) -> None:
        if not batch:
            return
        import torch

        from flowcli.inference import estimate_flow
        from flowcli.outputs import flow_stats, pair_result, visualize, write_pair_outputs

        options = self.options
        start = time.perf_counter()
        result = estimate_flow(
            self.model,
            torch.stack([planned.images[0] for planned in batch]),
            torch.stack([planned.images[1] for planned in batch]),
            backward=options.needs_backward,
            occlusion=options.needs_occlusion,
            max_pixels=self.max_pixels,
            precision=self.precision,
            scale=self.scale,
        )
        if result.forward.is_cuda:
            torch.cuda.synchronize()
        ms = (time.perf_counter() - start) * 1000 / len(batch)
        for i, planned in enumerate(batch):
            source, pair, (image1, image2) = planned.source, planned.pair, planned.images
            single = pair_result(result, i)
            colours = visualize(single, options.max_flow) if writer is not None or "vis" in planned.missing else None
            write_pair_outputs(single, image1, image2, planned.missing, max_flow=options.max_flow,
                               overwrite=options.overwrite or planned.replaces > 0, vis=colours)
            if writer is not None:
                writer.write(colours)
            self.computed += 1
            self.replaced += planned.replaces
            height, width = image1.shape[-2:]
            self._emit({
                "type": "pair", "source": source.label, "index": pair.index,
                "frame1": pair.frame1, "frame2": pair.frame2, "inputs": list(pair.inputs),
                "width": int(width), "height": int(height),
                "outputs": {key: str(path) for key, path in planned.paths.items()},
                **{k: (None if v is None else round(v, 4)) for k, v in flow_stats(single).items()},
                "ms": round(ms, 2), "tiles": result.tiles, **self.model_info,
            })
            advance(_progress_name(source, pair))
