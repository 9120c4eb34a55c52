"""`flowcli vis`: colour-code flow, disparity and depth files that already exist (flowcli's raw outputs, dataset
ground truth) with the colours of `estimate --vis` and `stereo --vis`.

Every input is read twice: a first pass checks them all (format, size, and the value of full colour when the scale
is 'global') before any file is written, the second colours and writes them; no array is held beyond its file.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from flowcli.cli.options import (
    DEFAULT_FPS,
    DEFAULT_OUTPUT,
    INPUT_PANEL,
    OUTPUT_PANEL,
    OutputDirOption,
    OverwriteOption,
    QuietOption,
    check_fps_has_a_video,
    check_fps_option,
    check_output_is_no_video_name,
    nonempty_path,
)
from flowcli.errors import InputError, OutputError

if TYPE_CHECKING:
    import numpy as np

SUFFIXES = (".flo", ".png", ".pfm", ".npy", ".npz")
GLOBAL = "global"
VIDEO_NAME = "vis.mp4"
NAME_FIELDS = ("stem", "parent", "format", "kind", "ext")
_SAMPLE_NAME_FIELDS = {"stem": "frame_0001", "parent": "alley_1", "format": "flo", "kind": "vis", "ext": "png"}
_GLOB_CHARS = "*?["
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOUR_TYPES = {0: "gray", 2: "RGB", 3: "palette", 4: "gray+alpha", 6: "RGBA"}
DEPTH_SUFFIXES = (".npy", ".pfm", ".png")  # of files named as depth maps: flowcli stereo's depth outputs
_UNKNOWN = {"flow": "inf, NaN, >= 1e9, or valid = 0 in a KITTI PNG",  # what makes a pixel unknown, per kind
            "disparity": "inf, NaN, >= 1e9, or 0 in a KITTI PNG", "depth": "0 or below, inf or NaN"}
_KIND_NAMES = {"flow": "flow field", "disparity": "disparity map", "depth": "depth map (named depth or *_depth)"}

_HELP_PARAGRAPHS = [
    "Colour-code flow, disparity and depth files that already exist: one colour PNG per file, OUT/STEM_vis.png.",
    "For flowcli estimate and stereo outputs, or dataset ground truth (Sintel and Chairs .flo, KITTI flow_occ and "
    "disp_occ PNGs, Middlebury disp0GT.pfm); nothing is estimated. INPUTS are files, folders (their flow, "
    "disparity and depth files in natural order, not recursive; hidden files and 8-bit PNGs such as earlier _vis.png "
    "pictures are left out) and quoted glob patterns, several in one call, coloured in the order given (quote a "
    "glob for natural order: frame_2 before frame_10). Formats, by extension: "
    ".flo (flow); .png, told apart by its channels: 16-bit RGB is KITTI flow (third channel = valid), 16-bit gray "
    "KITTI disparity (px x 256, 0 = invalid), anything else a picture and refused; .pfm (1 channel: disparity, "
    "3 channels: flow u, v); .npy ([H, W, 2] flow; [H, W] or [H, W, 1] disparity or another one-channel map); .npz "
    "(a flowcli estimate --npz bundle: its forward flow, and with --backward its backward flow too, written as "
    "STEM_backward_vis.png). Depth maps are told by name: a .npy, .pfm or .png whose name without extension is "
    "depth or ends in _depth (flowcli stereo's depth, depth_pfm and depth_png outputs) is a depth map, .npy and "
    ".pfm one channel in metres, .png 16-bit gray in millimetres; 0 = invalid.",
    "Colours: flow as estimate --vis (Middlebury colour wheel: hue = direction, saturation = magnitude), disparity "
    "as stereo --vis (turbo: large disparity, near, red; small, far, blue), depth as stereo --vis colours the "
    "disparity it came from (turbo of inverse depth: near red, far blue). Unknown pixels are black and never set "
    "the scale: KITTI valid = 0, values >= 1e9 (.flo), inf and NaN (.pfm), depth 0 or below. Full colour is at "
    "--max-flow / --max-disparity px, by default each file's own largest valid value, and at --min-depth metres "
    "(depths nearer are full colour too), by default each file's own nearest valid depth; 'global' takes the "
    "largest (for depth the nearest) over all inputs of that kind, so that colours compare across files.",
    "--name sets the output names: a template with {stem} (the input's name without extension), {parent} (the "
    "name of its folder), {format} (the input's extension: flo, png, pfm, npy, npz), {kind} (vis, or "
    "backward_vis) and {ext} (png); _{kind}.{ext} is added when missing, and "
    "a / makes subfolders. Files of one name in several folders, as in datasets (Sintel's "
    "flow/*/frame_0002.flo, Middlebury's */disp0GT.pfm), need --name '{parent}/{stem}' or '{parent}_{stem}'.",
    "All inputs are read and checked, and all output names planned, before any file is written: existing files "
    "are never replaced without --overwrite, and two inputs that would write one name (a/x.flo and b/x.flo "
    "without {parent}; x.flo and x.pfm) are refused. --video also writes OUT/" + VIDEO_NAME + ", one frame per "
    "input (its forward flow, its disparity or its depth) in input order; all inputs must then have one size.",
    "--json prints one JSON line per PNG written on stdout with keys: type (\"vis\"), input, output, kind (flow, "
    "disparity or depth), backward (true for an .npz's backward flow), width, height, scale (the px of full colour "
    "used, for depth the metres; null when the file has no valid pixel), max (the file's largest valid flow "
    "magnitude or disparity, px, for depth its farthest valid depth, m; or null), valid_fraction. The video adds a "
    "line with type \"video\", output, frames, fps.",
    "Exit codes: 0 ok, 1 other error, 2 input error, 3 output error.",
    "Examples:",
    "  flowcli vis flowcli_out/ -o vis/",
    "  flowcli vis 'sintel/training/flow/alley_1/*.flo' --max-flow global --video -o vis/",
    "  flowcli vis kitti/training/flow_occ/000000_10.png kitti/training/disp_occ_0/000000_10.png --name "
    "'{parent}/{stem}' -o vis/",
    "  flowcli vis middlebury/tsukuba/disp0GT.pfm --max-disparity 16 -o vis/",
    "  flowcli vis 'stereo_out/*_depth.npy' --min-depth global --video -o vis/",
    "  flowcli vis 'sintel/training/flow/*/frame_0002.flo' --name '{parent}/{stem}' -o vis/",
    "  flowcli vis out/*.npz --backward --json -o vis/ > vis.jsonl",
]
HELP = "\n\n".join(_HELP_PARAGRAPHS)


def register(app: typer.Typer) -> None:
    app.command("vis", help=HELP, no_args_is_help=True)(vis)


# ----------------------------------------------------------------------------- inputs


@dataclass
class _Field:
    """One array to colour: flow [H, W, 2] (unknown pixels >= 1e9 or non-finite), a disparity map [H, W] (px) or a
    depth map [H, W] (metres)."""

    kind: str  # "flow", "disparity" or "depth"
    values: np.ndarray
    valid: np.ndarray  # [H, W] bool

    @property
    def size(self) -> tuple[int, int]:
        return self.valid.shape[1], self.valid.shape[0]

    def largest(self) -> float | None:
        """The largest valid flow magnitude or disparity (px), or the farthest depth (m); None without a valid
        pixel."""
        import numpy as np

        if not self.valid.any():
            return None
        if self.kind == "flow":
            return float(np.sqrt((self.values.astype(np.float64) ** 2).sum(axis=-1))[self.valid].max())
        return float(self.values[self.valid].max())

    def full_colour(self) -> float | None:
        """The value the file's own scale shows at full colour: its largest flow magnitude or disparity, or its
        nearest depth (near is red, as large disparity is)."""
        if self.kind != "depth":
            return self.largest()
        return float(self.values[self.valid].min()) if self.valid.any() else None


@dataclass
class _Input:
    path: Path
    kind: str = ""  # of its forward field, known after the first pass
    size: tuple[int, int] = (0, 0)  # (width, height)
    has_backward: bool = False  # an .npz whose backward flow is coloured

    def outputs(self, directory: Path, template: str) -> dict[bool, Path]:
        """backward? -> the PNG of that field, named by the checked --name template."""
        from flowcli.outputs import inside_output, render_name

        # the folder's own name, also for a path given as ../x.flo
        fields = {"stem": self.path.stem, "parent": Path(os.path.abspath(self.path)).parent.name,
                  "format": self.path.suffix.lstrip(".").lower(), "ext": "png"}
        kinds = {False: "vis", True: "backward_vis"} if self.has_backward else {False: "vis"}
        return {backward: directory / inside_output(render_name(template, {**fields, "kind": kind}))
                for backward, kind in kinds.items()}


def _is_glob(text: str) -> bool:
    return any(char in text for char in _GLOB_CHARS)


def _png_layout(path: Path) -> tuple[int, int] | None:
    """(bit depth, PNG colour type) from the header; None when it is no readable PNG (the reader then says why)."""
    try:
        with open(path, "rb") as file:
            head = file.read(26)
    except OSError:
        return None
    if len(head) < 26 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def _png_kind(layout: tuple[int, int] | None) -> str | None:
    """flow (16-bit RGB, KITTI flow), disparity (16-bit gray, KITTI disparity), or None for anything else."""
    return {(16, 2): "flow", (16, 0): "disparity"}.get(layout)


def _is_depth_name(path: Path) -> bool:
    """STEM_depth.npy / .pfm / .png, or depth.* ('{stem}/{kind}'): named as flowcli stereo names its depth maps."""
    stem = path.stem.lower()
    return path.suffix.lower() in DEPTH_SUFFIXES and (stem == "depth" or stem.endswith("_depth"))


def _is_picture(path: Path) -> bool:
    """A PNG that is readable but neither KITTI flow nor disparity: an 8-bit picture, say an earlier _vis.png."""
    if path.suffix.lower() != ".png":
        return False
    layout = _png_layout(path)
    return layout is not None and _png_kind(layout) is None


def _listed(candidates: list[Path], label: str) -> list[Path]:
    """The flow and disparity files among a folder's or glob's matches, in natural order."""
    from flowcli.console import warn
    from flowcli.io.media import natural_sort_key

    files = [p for p in candidates if p.suffix.lower() in SUFFIXES and not p.name.startswith(".") and p.is_file()]
    pictures = [p for p in files if _is_picture(p)]
    files = [p for p in files if p not in pictures]
    left_out = f"; {len(pictures)} 8-bit PNG picture(s) left out" if pictures else ""
    if not files:
        raise InputError(f"no flow or disparity files ({' '.join(SUFFIXES)}) in {label}{left_out}")
    if pictures:
        warn(f"{label}: {len(pictures)} PNG(s) that are pictures, not 16-bit flow or disparity, are left out")
    return sorted(files, key=natural_sort_key)


def collect_inputs(arguments: list[str]) -> list[_Input]:
    """The files INPUTS name, in order; a file given twice (a folder and a file in it) is refused."""
    files: list[tuple[Path, str]] = []  # (file, the argument that named it)
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            found = _listed(list(path.iterdir()), argument)
        elif path.is_file():
            if path.suffix.lower() not in SUFFIXES:
                shown = path.suffix or "no extension"
                raise InputError(
                    f"{argument}: unknown extension '{shown}'; flowcli vis reads {', '.join(SUFFIXES)} files"
                )
            found = [path]
        elif path.exists():  # a pipe (<(command)) or a device: not "does not exist"
            raise InputError(
                f"{argument} is not a regular file or folder; flowcli vis reads each input twice, so save it to a "
                "file first"
            )
        elif _is_glob(argument):
            matches = [Path(match) for match in glob.glob(argument, recursive=True)]
            if not matches:
                raise InputError(f"no files match {argument}; check the pattern")
            if all(match.is_dir() for match in matches):  # folders are listed when given, not when matched
                raise InputError(
                    f"{argument} matches {len(matches)} folder(s) and no files; match the files in them "
                    f"('{os.path.join(argument, '*')}') or give the folders"
                )
            found = _listed(matches, argument)
        else:
            raise InputError(f"{argument} does not exist; check the path")
        files += [(file, argument) for file in found]

    seen: dict[Path, tuple[Path, str]] = {}
    for file, argument in files:
        key = file.resolve()
        if key in seen:
            first, first_argument = seen[key]
            given = f"as {first_argument} and {argument}" if first_argument != argument else f"in {argument}"
            raise InputError(f"{file} is given twice ({given}); give each file once")
        seen[key] = (file, argument)
    return [_Input(file) for file, _ in files]


def _flow_field(flow: np.ndarray) -> _Field:
    from flowcli.io.flow_formats import valid_mask

    return _Field("flow", flow, valid_mask(flow))


def _map_field(values: np.ndarray, valid: np.ndarray | None = None) -> _Field:
    import numpy as np

    from flowcli.io.flow_formats import UNKNOWN_FLOW_THRESHOLD

    values = values.astype(np.float32)
    known = np.isfinite(values) & (np.abs(values) < UNKNOWN_FLOW_THRESHOLD)
    return _Field("disparity", values, known if valid is None else known & valid)


def _read_png(path: Path) -> _Field:
    from flowcli.io.flow_formats import UNKNOWN_FLOW, read_disparity_png, read_kitti_flow

    layout = _png_layout(path)
    kind = _png_kind(layout)
    if layout is not None and kind is None:
        depth, colour_type = layout
        raise InputError(
            f"{path} is a {depth}-bit {_PNG_COLOUR_TYPES.get(colour_type, 'unknown')} PNG, a picture: flowcli vis "
            "reads 16-bit PNGs, RGB for KITTI flow or gray for KITTI disparity"
        )
    if kind == "disparity":
        disparity, valid = read_disparity_png(path)
        return _map_field(disparity, valid)
    flow, valid = read_kitti_flow(path)  # also for a header it cannot parse: the reader's message says why
    flow[~valid] = UNKNOWN_FLOW
    return _flow_field(flow)


def _numeric(path: Path, array: np.ndarray, what: str = "") -> np.ndarray:
    import numpy as np

    if array.dtype == bool or np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating):
        return array
    raise InputError(f"{path}{what} holds {array.dtype} values, not numbers; flowcli vis colours flow or disparity")


def _read_array(path: Path, array: np.ndarray, what: str = "") -> _Field:
    """A .npy or .pfm array: [H, W, 2] (or a .pfm's [H, W, 3]) is flow, [H, W] or [H, W, 1] a disparity map."""
    import numpy as np

    array = _numeric(path, array, what)
    if (array.ndim == 3 and array.shape[2] == 2) or (path.suffix.lower() == ".pfm" and array.ndim == 3):
        return _flow_field(np.ascontiguousarray(array[:, :, :2], dtype=np.float32))
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 1):
        return _map_field(array.reshape(array.shape[:2]))
    raise InputError(
        f"{path}{what} holds an array of shape {list(array.shape)}, neither flow [H, W, 2] nor a map [H, W]"
    )


def _read_depth(path: Path) -> _Field:
    """A file named as a depth map: .npy or .pfm in metres, 16-bit gray .png in millimetres; valid = finite, > 0."""
    import numpy as np

    from flowcli.io.flow_formats import read_npy, read_pfm, read_png
    from flowcli.stereo import PNG_DEPTH_SCALE

    suffix = path.suffix.lower()
    if suffix == ".png":
        layout = _png_layout(path)
        if layout is not None and layout != (16, 0):
            bits, colour_type = layout
            raise InputError(
                f"{path} is named as a depth map but is a {bits}-bit {_PNG_COLOUR_TYPES.get(colour_type, 'unknown')} "
                "PNG: flowcli vis reads depth PNGs as 16-bit gray millimetres (flowcli stereo --depth-png); rename "
                "it if it holds no depth"
            )
        depth = read_png(path).astype(np.float64) / PNG_DEPTH_SCALE  # also for a header it cannot parse
    else:
        depth = _numeric(path, read_npy(path) if suffix == ".npy" else read_pfm(path))
    if depth.ndim == 3 and depth.shape[2] in (2, 3):
        raise InputError(
            f"{path} is named as a depth map but holds a flow field of shape {list(depth.shape)}; a depth map is one "
            "channel [H, W] of metres: rename it if it holds flow"
        )
    if not (depth.ndim == 2 or (depth.ndim == 3 and depth.shape[2] == 1)):
        raise InputError(f"{path} holds an array of shape {list(depth.shape)}, not a depth map [H, W]")
    depth = depth.reshape(depth.shape[:2]).astype(np.float32)
    return _Field("depth", depth, np.isfinite(depth) & (depth > 0))


def _read_bundle(path: Path, with_backward: bool) -> dict[bool, _Field]:
    from flowcli.io.flow_formats import as_flow_hw2, read_npz

    arrays = read_npz(path)
    if "forward" not in arrays:
        names = ", ".join(arrays) or "none"
        raise InputError(
            f"{path} has no 'forward' array (it has: {names}); flowcli vis reads the .npz bundles of flowcli "
            "estimate --npz, or give the flow as .npy"
        )
    fields = {}
    for backward, name in ((False, "forward"), (True, "backward")):
        if name not in arrays or (backward and not with_backward):
            continue
        array = _numeric(path, arrays[name], f" ('{name}')")
        try:
            fields[backward] = _flow_field(as_flow_hw2(array))
        except ValueError:
            raise InputError(
                f"{path}: '{name}' holds an array of shape {list(array.shape)}, not a flow field [H, W, 2]"
            ) from None
    if True in fields and fields[True].size != fields[False].size:
        raise InputError(f"{path}: its backward flow differs in size from its forward flow; the bundle is corrupt")
    return fields


def _read(path: Path, with_backward: bool) -> dict[bool, _Field]:
    """backward? -> field: the file's flow, disparity or depth (False), and an .npz's backward flow (True) if
    asked."""
    import numpy as np

    from flowcli.io.flow_formats import read_flo, read_npy, read_pfm

    suffix = path.suffix.lower()
    # float64 values beyond float32's range become inf, unknown as a file's own inf is; numpy's warning about
    # the cast would name no file
    with np.errstate(over="ignore"):
        if suffix == ".npz":
            fields = _read_bundle(path, with_backward)
        elif suffix == ".flo":
            fields = {False: _flow_field(read_flo(path))}
        elif _is_depth_name(path):
            fields = {False: _read_depth(path)}
        elif suffix == ".png":
            fields = {False: _read_png(path)}
        else:
            fields = {False: _read_array(path, read_npy(path) if suffix == ".npy" else read_pfm(path))}
    width, height = fields[False].size
    if not width or not height:  # a .npy or .npz array may have 0 rows or columns, no picture can
        raise InputError(f"{path} holds an empty {width}x{height} array; flowcli vis colours maps of at least one "
                         "pixel")
    return fields


# ----------------------------------------------------------------------------- scale and colours


def _scale_option(text: str | None, flag: str, unit: str = "pixels") -> float | str | None:
    """--max-flow / --max-disparity / --min-depth: None (per file), GLOBAL, or a finite positive number of the
    unit."""
    if text is None:
        return None
    if text.strip().lower() == GLOBAL:
        return GLOBAL
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise OutputError(f"{flag} must be a positive number of {unit} or '{GLOBAL}', got {text!r}")
    if unit == "metres" and not math.isfinite(1.0 / value):  # depth is coloured by its inverse
        raise OutputError(f"{flag} {text} is too small to invert; give at least 1e-300 {unit}")
    return value


def _scale(option: float | str | None, global_full_colour: float | None) -> float | None:
    """The px (depth: m) of full colour: the option's number, the global one, or None (the file's own)."""
    if option == GLOBAL:
        # an all-zero (or all-unknown) kind has no scale to share: each file's own is as good
        return global_full_colour if global_full_colour is not None and global_full_colour > 0 else None
    return option


def _colour(field: _Field, scale: float | None) -> np.ndarray:
    if field.kind == "flow":
        from flowcli.io.visualize import flow_to_rgb

        return flow_to_rgb(field.values, max_flow=scale)
    import numpy as np

    from flowcli.stereo import disparity_to_rgb

    if field.kind == "depth":
        # inverse depth is proportional to the disparity the depth came from: coloured as stereo --vis colours that
        nearest = field.full_colour() if scale is None else scale
        inverse = np.zeros(field.valid.shape)
        inverse[field.valid] = 1.0 / field.values[field.valid].astype(np.float64)
        return disparity_to_rgb(inverse, max_disparity=None if nearest is None else 1.0 / nearest, valid=field.valid)
    return disparity_to_rgb(field.values, max_disparity=scale, valid=field.valid)


# ----------------------------------------------------------------------------- outputs


def _plan_outputs(inputs: list[_Input], directory: Path, template: str, video: bool, overwrite: bool) -> None:
    """Refuse, before anything is written: an output over an input, two inputs writing one name, existing files
    without --overwrite, a file where the output folder must be."""
    from flowcli.io.atomic import check_creatable

    input_files = {item.path.resolve(): item.path for item in inputs}
    owners: dict[Path, Path] = {}
    planned = [(path, item.path) for item in inputs for path in item.outputs(directory, template).values()]
    if video:
        planned.append((directory / VIDEO_NAME, None))
    for path, owner in planned:
        key = path.resolve()
        if key in input_files:
            raise OutputError(
                f"output {path} would replace the input {input_files[key]}; choose another output folder with -o"
            )
        if key in owners:
            first = owners[key]
            if first is not None and owner is not None and first.with_suffix("") == owner.with_suffix(""):
                raise OutputError(
                    f"{first} and {owner} would both write {path}; name the outputs by format too "
                    "(--name '{stem}_{format}'), or leave one of them out (a glob such as 'DIR/*.npz' takes one format)"
                )
            raise OutputError(
                f"{first} and {owner} would both write {path}; name the outputs by folder too "
                "(--name '{parent}/{stem}'), leave one of them out (a glob such as 'DIR/*.npz' takes one format) "
                "or colour them into separate -o folders"
            )
        owners[key] = owner
        check_creatable(path, overwrite)


def _check_one_size(inputs: list[_Input]) -> None:
    first = inputs[0]
    for item in inputs[1:]:
        if item.size != first.size:
            raise InputError(
                f"--video needs inputs of one size: {first.path} is {first.size[0]}x{first.size[1]}, {item.path} is "
                f"{item.size[0]}x{item.size[1]}; leave out --video or colour them in separate runs"
            )


# ----------------------------------------------------------------------------- the command


def vis(
    inputs: Annotated[
        list[str],
        typer.Argument(help="Flow, disparity or depth files (.flo .png .pfm .npy .npz), folders of them, quoted "
                       "globs.",
                       show_default=False, metavar="INPUTS"),
    ],
    backward: Annotated[
        bool,
        typer.Option("--backward", help="Also colour the backward flow of .npz bundles (STEM_backward_vis.png).",
                     rich_help_panel=INPUT_PANEL),
    ] = False,
    output: OutputDirOption = DEFAULT_OUTPUT,
    max_flow: Annotated[
        Optional[str],
        typer.Option("--max-flow", metavar="PX|global", help="Flow magnitude (px) of full colour; 'global': the "
                     "largest over all inputs. Default: each file's own.", rich_help_panel=OUTPUT_PANEL,
                     show_default=False),
    ] = None,
    max_disparity: Annotated[
        Optional[str],
        typer.Option("--max-disparity", metavar="PX|global", help="Disparity (px) of full colour; 'global': the "
                     "largest over all inputs. Default: each file's own.", rich_help_panel=OUTPUT_PANEL,
                     show_default=False),
    ] = None,
    min_depth: Annotated[
        Optional[str],
        typer.Option("--min-depth", metavar="M|global", help="Depth (metres) of full colour, for depth maps (nearer "
                     "is full colour too); 'global': the nearest over all inputs. Default: each file's own nearest.",
                     rich_help_panel=OUTPUT_PANEL, show_default=False),
    ] = None,
    video: Annotated[
        bool,
        typer.Option("--video", help=f"Also write OUT/{VIDEO_NAME}, one frame per input (inputs of one size).",
                     rich_help_panel=OUTPUT_PANEL),
    ] = False,
    fps: Annotated[
        Optional[float],
        typer.Option("--fps", help=f"Frame rate of --video; default {DEFAULT_FPS:g}.", rich_help_panel=OUTPUT_PANEL,
                     show_default=False),
    ] = None,
    name: Annotated[
        str,
        typer.Option("--name", metavar="TEMPLATE", help="Output names: {stem} {parent} {format} {kind} {ext} (see "
                     "above); '{parent}/{stem}' for files of one name in several folders, '{stem}_{format}' for one "
                     "name in several formats.", rich_help_panel=OUTPUT_PANEL),
    ] = "{stem}",
    overwrite: OverwriteOption = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="One JSON line per file written on stdout (keys above).",
                           rich_help_panel=OUTPUT_PANEL)
    ] = False,
    quiet: QuietOption = False,
) -> None:
    stdout = sys.stdout  # the progress display may redirect sys.stdout while it runs

    from rich.markup import escape  # a file name as given: y[red]z.flo is not "yz.flo" in red

    from flowcli.console import progress, say, warn
    from flowcli.io.flow_formats import write_png
    from flowcli.io.media import VideoWriter, check_video_size
    from flowcli.outputs import check_template

    # ---- options, before anything is read
    for arg in inputs:
        nonempty_path(arg, "an input", "flow, disparity or depth files, folders of them or quoted globs")
    output = nonempty_path(output, "-o", "the output folder")
    check_output_is_no_video_name(output, video, VIDEO_NAME)
    scales = {"flow": _scale_option(max_flow, "--max-flow"),
              "disparity": _scale_option(max_disparity, "--max-disparity"),
              "depth": _scale_option(min_depth, "--min-depth", "metres")}
    check_fps_option(fps)
    check_fps_has_a_video(fps, video)
    template = check_template(name, NAME_FIELDS, _SAMPLE_NAME_FIELDS)

    items = collect_inputs(inputs)
    # the names are known without reading, the backward ones after the check
    _plan_outputs(items, output, template, video, overwrite)
    # per kind, the full colour over all inputs: the largest flow magnitude and disparity, the nearest depth
    global_full_colour: dict[str, float | None] = dict.fromkeys(scales)

    def emit(record: dict) -> None:
        if json_output:
            stdout.write(json.dumps(record) + "\n")
            stdout.flush()

    # ---- first pass: every input read and checked, nothing written; the bar goes when done (a terminal's only)
    all_unknown: list[str] = []  # warned of once the bar is gone
    with progress(quiet, transient=True) as bar:
        task = bar.add_task("check", total=len(items), info="")
        for item in items:
            fields = _read(item.path, backward)
            item.kind, item.size, item.has_backward = fields[False].kind, fields[False].size, True in fields
            for is_backward, field in fields.items():
                if not field.valid.any():
                    which = "its backward flow" if is_backward else f"its {field.kind}"
                    all_unknown.append(f"{item.path}: {which} has no valid pixel ({_UNKNOWN[field.kind]}); its "
                                       "picture is all black")
                full_colour = field.full_colour()
                if full_colour is not None:
                    known = global_full_colour[field.kind]
                    wider = min if field.kind == "depth" else max
                    global_full_colour[field.kind] = full_colour if known is None else wider(known, full_colour)
            bar.update(task, advance=1, info=escape(item.path.name))
    for message in all_unknown:
        warn(message)
    if backward and not any(item.has_backward for item in items):
        warn("--backward: no input holds a backward flow (flowcli estimate --npz bundles do)")
    kinds = {item.kind for item in items}
    for kind, flag in (("flow", "--max-flow"), ("disparity", "--max-disparity"), ("depth", "--min-depth")):
        if scales[kind] is not None and kind not in kinds:
            warn(f"{flag} is left unused: no input is a {_KIND_NAMES[kind]}")
    if video:
        _check_one_size(items)
        check_video_size(output / VIDEO_NAME, *items[0].size)
    _plan_outputs(items, output, template, video, overwrite)

    # ---- second pass: colour and write
    with progress(quiet) as bar, contextlib.ExitStack() as stack:
        task = bar.add_task("vis", total=len(items), info="")
        writer = None
        if video:
            writer = stack.enter_context(VideoWriter(output / VIDEO_NAME, fps=fps or DEFAULT_FPS, overwrite=overwrite))
        for item in items:
            fields = _read(item.path, backward)
            if fields[False].size != item.size or fields[False].kind != item.kind:
                raise InputError(f"{item.path} changed while flowcli vis ran; run it again")
            for is_backward, path in item.outputs(output, template).items():
                field = fields[is_backward]
                scale = _scale(scales[field.kind], global_full_colour[field.kind])
                rgb = _colour(field, scale)
                write_png(path, rgb, overwrite=overwrite)
                if writer is not None and not is_backward:
                    writer.write(rgb)
                width, height = field.size
                emit({
                    "type": "vis", "input": str(item.path), "output": str(path), "kind": field.kind,
                    "backward": is_backward, "width": width, "height": height,
                    "scale": _rounded(field.full_colour() if scale is None else scale),
                    "max": _rounded(field.largest()),
                    "valid_fraction": round(float(field.valid.mean()), 6),
                })
            bar.update(task, advance=1, info=escape(item.path.name))
    if writer is not None:
        emit({"type": "video", "output": str(writer.path), "frames": writer.frames_written, "fps": writer.fps})
    if not quiet:
        written = sum(len(item.outputs(output, template)) for item in items) + (1 if video else 0)
        say(f"{len(items)} input(s) -> {written} file(s) in {output}")


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
