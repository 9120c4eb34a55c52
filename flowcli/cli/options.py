"""Options that `flowcli estimate` and `flowcli stereo` share word for word, their defaults, and how both
claim output names."""

from __future__ import annotations

import math

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Optional

import typer

from flowcli.errors import InputError, OutputError
from flowcli.io.atomic import check_target

INPUT_PANEL = "Inputs"
OUTPUT_PANEL = "Outputs"
MODEL_PANEL = "Model"

DEFAULT_OUTPUT = "flowcli_out"  # a str, as -o is: see nonempty_path
DEFAULT_MAX_PIXELS = 8_000_000
DEFAULT_FPS = 10.0
PRECISION_NAMES = ("fp32", "fp16", "bf16")  # flowcli.inference.PRECISIONS, without importing torch

# ---- outputs
OutputDirOption = Annotated[
    str, typer.Option("-o", "--output", metavar="PATH", help="Output folder (created when needed).",
                      rich_help_panel=OUTPUT_PANEL),
]
NameOption = Annotated[
    str, typer.Option("--name", help="File name template, see above.", rich_help_panel=OUTPUT_PANEL)
]
FpsOption = Annotated[
    Optional[float],
    typer.Option("--fps", help=f"Frame rate of --video; default: the source video's (divided by --step), "
                 f"{DEFAULT_FPS:g} for images.", rich_help_panel=OUTPUT_PANEL, show_default=False),
]
OverwriteOption = Annotated[
    bool, typer.Option("--overwrite", help="Replace existing output files.", rich_help_panel=OUTPUT_PANEL)
]
ResumeOption = Annotated[
    bool,
    typer.Option("--resume", help="Finish an interrupted run (same inputs and options): skip pairs whose outputs "
                 "all exist, write only missing files, never touch existing ones; a changed setting that alters "
                 "the outputs is refused (see above). --video: see above.",
                 rich_help_panel=OUTPUT_PANEL),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="One JSON line per pair on stdout (keys above).", rich_help_panel=OUTPUT_PANEL)
]
QuietOption = Annotated[
    bool, typer.Option("-q", "--quiet", help="No progress bar or info on stderr (warnings and errors stay).",
                       rich_help_panel=OUTPUT_PANEL)
]


def formats_option(formats: dict[str, str]):
    """`-f/--formats`, listing this command's output formats in its help."""
    return Annotated[
        Optional[str],
        typer.Option("-f", "--formats", help=f"Comma-separated outputs: {','.join(formats)} or all.",
                     rich_help_panel=OUTPUT_PANEL, show_default=False),
    ]


def format_flag(formats: dict[str, str], name: str, note: str = ""):
    """`--NAME` (underscores as dashes): a one-format switch whose help is the format's description."""
    description = formats[name]
    return typer.Option(f"--{name.replace('_', '-')}", help=description[0].upper() + description[1:] + note + ".",
                        rich_help_panel=OUTPUT_PANEL)


# ---- model
WeightsOption = Annotated[
    Optional[str],
    typer.Option("-w", "--weights", help="Registry name (flowcli weights list), checkpoint file, "
                 "hf://OWNER/REPO/FILE or https:// URL. Default: the registry default model.",
                 rich_help_panel=MODEL_PANEL, show_default=False),
]
DeviceOption = Annotated[
    str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.", rich_help_panel=MODEL_PANEL)
]
PrecisionOption = Annotated[
    str, typer.Option("--precision", help="auto (fp16 on CUDA, fp32 elsewhere), fp32, fp16 or bf16.",
                      rich_help_panel=MODEL_PANEL)
]
BatchSizeOption = Annotated[
    int,
    typer.Option("--batch-size", help="Pairs per forward pass: a sequence's pairs, or --pairs lines in a row of one "
                 "frame size.", rich_help_panel=MODEL_PANEL),
]
MaxPixelsOption = Annotated[
    int, typer.Option("--max-pixels", help="Larger frames run in overlapping tiles; 0 = never tile.",
                      rich_help_panel=MODEL_PANEL)
]
OfflineOption = Annotated[
    bool, typer.Option("--offline", help="Use only cached weights, never the network.", rich_help_panel=MODEL_PANEL)
]


def nonempty_path(value: str | None, what: str, expected: str) -> Path | None:
    """`value` of a path argument or option as a Path (None stays None). "" (`-o "$DIR"` with DIR unset) is an
    InputError naming `what` (-o, an input) and what to give (`expected`): as a Path it would be ".", the current
    folder, read or written without a word. Such parameters are typed str: a Path type cannot tell "" from "."."""
    if value is None:
        return None
    if value == "":
        raise InputError(f'{what} is "" (empty); give {expected} (an unset shell variable?)')
    return Path(value)


MIN_SCALE, MAX_SCALE = 0.05, 4.0


def check_scale(scale: float) -> None:
    """InputError unless --scale (the factor frames are resized by for the network) is in [0.05, 4]."""
    if not MIN_SCALE <= scale <= MAX_SCALE:  # also refuses nan
        raise InputError(f"--scale must be between {MIN_SCALE:g} and {MAX_SCALE:g}, got {scale:g}")


def check_precision_name(precision: str) -> None:
    """InputError unless `precision` is auto or a precision name (checked before any work)."""
    if precision != "auto" and precision not in PRECISION_NAMES:
        raise InputError(f"unknown precision {precision!r}; use auto, {', '.join(PRECISION_NAMES)}")


def device_and_precision(device: str, precision: str):
    """(torch device, precision name) of --device and --precision: auto is fp16 on CUDA, fp32 elsewhere; fp16 on
    the CPU becomes fp32 with one warning, here rather than for every batch."""
    from flowcli.inference import PRECISIONS, resolve_device, resolve_precision

    torch_device = resolve_device(device)
    if precision == "auto":
        precision = "fp16" if torch_device.type == "cuda" else "fp32"
    dtype = resolve_precision(precision, torch_device)
    return torch_device, next(name for name, value in PRECISIONS.items() if value == dtype)


# ---- output names


# names a user gives a video file: as -o, such a name became a folder, the video inside it
_VIDEO_FILE_SUFFIXES = (".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm", ".gif")


def check_output_is_no_video_name(output: Path, want_video: bool, video_name: str) -> None:
    """-o is the output folder and the video a file in it, named `video_name`: a -o named like a video file
    (out.mp4), not an existing folder, is refused before any work. An existing folder of such a name is used."""
    if not want_video or output.suffix.lower() not in _VIDEO_FILE_SUFFIXES or output.is_dir():
        return
    folder = output.with_suffix("")
    raise InputError(
        f"-o {output} names the output folder, not the video; the video is written inside it: "
        f"-o {folder} writes {os.path.join(folder, video_name)}"
    )


def check_fps_has_a_video(fps: float | None, want_video: bool) -> None:
    """--fps sets the frame rate of --video: given without it, it was accepted and ignored."""
    if fps is not None and not want_video:
        raise OutputError("--fps sets the frame rate of --video; add --video, or leave --fps out")


def check_video_rates(sources, want_video: bool, fps: float | None) -> None:
    """Before any work: a sequence's video, made at the source's rate / --step, must have a rate the video writer
    can store. `sources` are estimate's or stereo's inputs (label, sequence, fps)."""
    from flowcli.errors import OutputError
    from flowcli.io.media import MIN_FPS

    for source in sources:
        if want_video and source.sequence and fps is None and source.fps is not None and source.fps < MIN_FPS:
            raise OutputError(f"{source.label}: its video would have {source.fps:g} fps (the source's rate / "
                              f"--step), below the least of {MIN_FPS}; give --fps")


def check_fps_option(fps: float | None) -> None:
    """--fps of estimate, stereo and vis, whose videos are .mp4: a rate the video writer stores (MIN_FPS..MAX_FPS)."""
    from flowcli.io.media import MAX_FPS, MIN_FPS

    if fps is not None and not (math.isfinite(fps) and fps >= MIN_FPS):
        raise OutputError(f"--fps must be a positive number of at least {MIN_FPS}, got {fps:g}")
    if fps is not None and fps > MAX_FPS:
        raise OutputError(f"--fps {fps:g} is above {MAX_FPS:,}, the most an .mp4 video stores; give a lower rate")


def one_pair_list(pair_lists: list[str] | None) -> str | None:
    """The --pairs LIST of a run: a second one is refused (a str option kept the last and dropped the others)."""
    if pair_lists and len(pair_lists) > 1:
        raise InputError(f"--pairs is given {len(pair_lists)} times; a run reads one list: put the pairs in one "
                         "file (paths relative to its folder), or run once per list")  # fmt: skip
    if not pair_lists:
        return None
    nonempty_path(pair_lists[0], "--pairs", "a text file with two image paths per line, or - for stdin")
    return pair_lists[0]


def check_picking_applies(sources, step: int, max_frames: int | None, pair_list: str | None, picked: str,
                          sequences: str) -> None:  # fmt: skip
    """--step and --max-frames pick `picked` ("frames", "pairs") from the sequences among `sources`: with image
    pairs only they were accepted and ignored. `sequences` says what a sequence is for the command."""
    if (step == 1 and max_frames is None) or any(s.sequence for s in sources):
        return
    given = " and ".join(name for name, is_set in (("--step", step != 1), ("--max-frames", max_frames is not None))
                         if is_set)  # fmt: skip
    shorten = ", or shorten the --pairs list to run fewer pairs" if pair_list is not None else ""
    raise InputError(f"{given}: {picked} are picked from sequences only ({sequences}), and the inputs are image "
                     f"pairs, each run whole; drop {given}{shorten}")  # fmt: skip


def unique_source_names(names: list[str]) -> list[str]:
    """{source} names that tell a run's inputs apart: a repeated name gets -2, -3... (clip, clip-2)."""
    given, taken, unique = set(names), set(), []
    last_number: dict[str, int] = {}  # numbers below it are taken: 20,000 'before' pairs stay linear
    for name in names:
        number = last_number.get(name, 1)
        candidate = name if number == 1 else f"{name}-{number}"
        while candidate in taken or (candidate != name and candidate in given):
            number += 1
            candidate = f"{name}-{number}"
        last_number[name] = number
        taken.add(candidate)
        unique.append(candidate)
    return unique


@dataclass(frozen=True)
class Owner:
    """What writes an output: pair `pair` of input number `input`, or (pair None) that input's video."""

    input: int
    pair: int | None
    text: str = field(compare=False)  # for messages

    @classmethod
    def video(cls, number: int, label: str) -> Owner:
        """The video written from input number `number` (labelled `label` in messages)."""
        return cls(number, None, f"{label} video")


def _collision_advice(first: Owner, second: Owner) -> str:
    if first.pair is None and second.pair is None:  # videos are named after {source}, whatever --name says
        return "rename one of the inputs"
    if first.pair is None or second.pair is None:
        return "choose another --name"
    if first.input == second.input:
        return "add {index} to --name"
    return "add {source} to --name"


def _check_folder_can_be(folder: Path) -> None:
    """OutputError when a file stands where `folder` or a folder above it must be (a --name with subfolders)."""
    existing = folder
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if os.path.lexists(existing) and not existing.is_dir():
        raise OutputError(f"cannot create output folder {folder}: {existing} is a file; remove it or choose another -o")


class OutputClaims:
    """Output paths of one run: collisions between outputs, outputs over inputs, existing files."""

    def __init__(self, inputs: set[Path], overwrite: bool):
        self.inputs, self.overwrite = inputs, overwrite
        self.owners: dict[Path, Owner] = {}
        self._folders: dict[Path, Path] = {}  # resolved once per folder: a long video plans 100k names in one

    def check(self, path: Path, owner: Owner) -> None:
        folder = self._folders.get(path.parent)
        if folder is None:
            _check_folder_can_be(path.parent)
            folder = self._folders[path.parent] = path.parent.resolve()
        key = folder / path.name
        if key in self.inputs:
            raise OutputError(f"output {path} would replace an input file; choose another output folder with -o")
        first = self.owners.setdefault(key, owner)
        if first != owner:
            texts = [first.text, owner.text]
            if texts[0] == texts[1]:  # the same input given twice
                texts = [f"{o.text} (input {o.input + 1})" for o in (first, owner)]
            raise OutputError(f"{texts[0]} and {texts[1]} would both write {path}; {_collision_advice(first, owner)}")
        check_target(path, self.overwrite)  # a folder in the way, or an existing file without --overwrite
