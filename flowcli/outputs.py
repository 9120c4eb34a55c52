"""Writing what flow estimation produced for one frame pair: every output kind, named by a template.

`flowcli estimate` is a loop over these; library users can call them directly:

    options = OutputOptions(directory=Path("out"), formats=frozenset({"flo", "vis"}))
    result = estimate_flow(model, image1, image2, backward=options.needs_backward,
                           occlusion=options.needs_occlusion)
    paths = output_paths(options, PairNames(source="clip", frame1="a", frame2="b", index=0))
    write_pair_outputs(result, image1, image2, paths, max_flow=options.max_flow)

Output keys (the keys of `output_paths` and of the CLI's JSON "outputs"), with their {kind} and {ext}:

    flo        flow  .flo   forward flow, Middlebury .flo
    kitti      flow  .png   forward flow, KITTI 16-bit PNG (1/64 px, about +-512 px)
    npy        flow  .npy   forward flow, float32 H x W x 2
    npz        flow  .npz   bundle: forward, backward (H x W x 2 float32), occlusion,
                            occlusion_backward (H x W bool, True = occluded), learned_occlusion (float32, if any)
    vis        vis   .png   colour-coded forward flow (Middlebury colour wheel)
    occlusion  occ   .png   forward-backward occlusion mask of frame 1, 255 = occluded
    occlusion_learned  occ_learned .png  the model's own occlusion probability (models that have one), 0..255
    warp       warp  .png   frame 2 backward-warped onto frame 1 by the forward flow (black = outside frame 2)
    <key>_backward  <kind>_bw   the same for the backward flow 2 -> 1 (flo, kitti, npy, vis, occlusion)
    video      vis   .mp4   colour-coded flow of a whole sequence (written by the CLI, named {source}_vis.mp4)
"""

from __future__ import annotations

import contextlib
import string
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import TYPE_CHECKING

from flowcli.errors import OutputError

if TYPE_CHECKING:  # torch, numpy and the writers are imported where used: `flowcli --help` stays fast
    import numpy as np
    import torch

    from flowcli.inference import FlowResult

# Format names a user can ask for, in help order.
FORMATS = {
    "flo": "forward flow as Middlebury .flo",
    "kitti": "forward flow as KITTI 16-bit PNG",
    "npy": "forward flow as NumPy .npy (H x W x 2 float32)",
    "npz": "one .npz bundle per pair: forward, backward, occlusion arrays",
    "vis": "colour-coded flow PNG",
    "video": "colour-coded flow video per sequence (mp4)",
    "occlusion": "occlusion mask PNG (255 = occluded)",
    "warp": "frame 2 warped onto frame 1 by the flow (PNG)",
}
DEFAULT_FORMATS = frozenset({"flo", "vis"})
BACKWARD_CAPABLE = ("flo", "kitti", "npy", "vis", "occlusion")  # formats that get a `_backward` twin

# output key -> ({kind}, {ext}) used to name its file
FILE_KINDS = {
    "flo": ("flow", "flo"),
    "kitti": ("flow", "png"),
    "npy": ("flow", "npy"),
    "npz": ("flow", "npz"),
    "vis": ("vis", "png"),
    "occlusion": ("occ", "png"),
    "occlusion_learned": ("occ_learned", "png"),
    "warp": ("warp", "png"),
    "flo_backward": ("flow_bw", "flo"),
    "kitti_backward": ("flow_bw", "png"),
    "npy_backward": ("flow_bw", "npy"),
    "vis_backward": ("vis_bw", "png"),
    "occlusion_backward": ("occ_bw", "png"),
    "video": ("vis", "mp4"),
}

DEFAULT_NAME = "{stem}"
NAME_FIELDS = ("source", "stem", "frame1", "frame2", "index", "kind", "ext")
_SAMPLE_FIELDS = {
    "source": "clip", "stem": "clip_frame_000000", "frame1": "frame_000000", "frame2": "frame_000001",
    "index": 0, "kind": "flow", "ext": "flo",
}


def parse_formats(text: str | None) -> frozenset[str]:
    """'flo,vis' -> {'flo', 'vis'}; 'all' means every format. Unknown names raise a one-line OutputError."""
    if text is None:
        return frozenset()
    names = [part.strip().lower().lstrip(".") for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in FORMATS and n != "all"]
    if unknown:
        raise OutputError(
            f"unknown output format {unknown[0]!r}; valid formats: {', '.join(FORMATS)}, all (comma-separated)"
        )
    return frozenset(FORMATS) if "all" in names else frozenset(names)


def check_template(template: str, names: tuple[str, ...] = NAME_FIELDS, sample_fields: dict | None = None) -> str:
    """Validate a --name template and complete it: `_{kind}` and `.{ext}` are appended when missing.

    Placeholders: `names` (for flow: {source} {stem} {frame1} {frame2} {index} {kind} {ext}), with format
    specs ({index:06d}); `sample_fields` fills them to try the template. A missing `_{kind}` goes before a
    final `.{ext}`. The result must be a relative path
    inside the output folder (subfolders allowed).
    """
    if not template.strip():  # `--name "$NAME"` with the variable unset: every output would be named _KIND.EXT
        raise OutputError('--name "" is empty; give a template such as \'{stem}\', or leave --name out')
    sample_fields = _SAMPLE_FIELDS if sample_fields is None else sample_fields
    given = template
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as error:  # "Single '{' encountered in format string" and the like
        raise OutputError(f"invalid --name template {template!r}: {error}; placeholders are written {{stem}}, and a "
                          "literal brace is doubled: {{ or }}") from None  # fmt: skip
    for name in fields:
        if name not in names:
            shown = "{" + name + "}" if name else "{}"
            allowed = " ".join("{" + f + "}" for f in names)
            raise OutputError(f"unknown placeholder {shown} in --name {template!r}; use {allowed}")
    if "kind" not in fields:  # before a final '.{ext}': '{stem}.{ext}' -> a_flow.flo, not a.flo_flow
        ext_end = template.endswith(".{ext}") and not template.endswith("}.{ext}}")
        template = template[: -len(".{ext}")] + "_{kind}.{ext}" if ext_end else template + "_{kind}"
    if "ext" not in fields:
        template += ".{ext}"
    try:
        sample = render_name(template, sample_fields)
    except (ValueError, TypeError, KeyError, IndexError) as error:
        raise OutputError(
            _unformattable_placeholder(given, sample_fields) or f"invalid --name template {template!r}: {error}"
        ) from None
    if PurePath(sample).is_absolute() or ".." in PurePath(sample).parts:
        raise OutputError(f"--name {template!r} must give a path inside the output folder (no leading / or ..)")
    return template


def _unformattable_placeholder(template: str, sample_fields: dict) -> str | None:
    """The message for the first placeholder of `template` whose format spec or conversion its value refuses
    ({index:q}: Python's own message says nothing of what to give instead), or None if each renders alone."""
    for _, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        placeholder = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
        try:
            render_name(placeholder, sample_fields)
        except (ValueError, TypeError, KeyError, IndexError) as error:
            if isinstance(sample_fields.get(name), int):
                valid = f"{{{name}}} is a number: use a spec such as {{{name}:06d}} (6 digits, zero-padded)"
            else:
                valid = f"{{{name}}} is text: use a spec such as {{{name}:.20}} (its first 20 characters)"
            return f"{placeholder} in --name {template!r} cannot be formatted ({error}); {valid}, or none"
    return None


def render_name(template: str, fields: dict) -> str:
    return template.format(**fields)


def inside_output(name: str) -> str:
    """A rendered output name, refused (OutputError) if it would leave the output folder: the template was checked
    with sample values, but real values (a file stem '..') could still lead out of it."""
    if PurePath(name).is_absolute() or ".." in PurePath(name).parts:
        raise OutputError(f"output name {name!r} leads out of the output folder; choose another --name")
    return name


@dataclass(frozen=True)
class PairNames:
    """What a pair's output files are named from: see `check_template` for the placeholders.

    `stem` defaults to `frame1`; the CLI sets it to "{source}_{frame1}" for video frames, whose names
    (frame_NNNNNN) are the same in every video.
    """

    source: str
    frame1: str
    frame2: str
    index: int
    stem: str | None = None

    def fields(self) -> dict:
        return {
            "source": self.source,
            "stem": self.stem if self.stem is not None else self.frame1,
            "frame1": self.frame1,
            "frame2": self.frame2,
            "index": self.index,
        }


@dataclass(frozen=True)
class OutputOptions:
    """Which outputs to write, where and how they are named."""

    directory: Path = Path("flowcli_out")
    formats: frozenset[str] = DEFAULT_FORMATS
    backward: bool = False  # also write the backward twin of each flow-like output
    template: str = DEFAULT_NAME
    max_flow: float | None = None  # vis colour scale; None = per-frame maximum
    overwrite: bool = False
    learned_occlusion: bool = False  # the model predicts its own occlusion: also write it with `occlusion`
    _checked_template: str = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        unknown = sorted(set(self.formats) - set(FORMATS))
        if unknown:
            raise OutputError(f"unknown output format {unknown[0]!r}; valid formats: {', '.join(FORMATS)}")
        object.__setattr__(self, "_checked_template", check_template(self.template))

    @property
    def needs_backward(self) -> bool:
        return self.needs_occlusion or (self.backward and bool(self.formats & set(BACKWARD_CAPABLE)))

    @property
    def needs_occlusion(self) -> bool:
        return bool(self.formats & {"occlusion", "npz"})

    def pair_keys(self) -> list[str]:
        """Output keys written for every pair (everything but the per-sequence video)."""
        keys = [k for k in ("flo", "kitti", "npy", "npz", "vis", "occlusion", "warp") if k in self.formats]
        if "occlusion" in self.formats and self.learned_occlusion:
            keys.append("occlusion_learned")
        if self.backward:
            keys += [f"{k}_backward" for k in BACKWARD_CAPABLE if k in self.formats]
        return keys

    def path_for(self, key: str, names: PairNames) -> Path:
        kind, ext = FILE_KINDS[key]
        name = render_name(self._checked_template, {**names.fields(), "kind": kind, "ext": ext})
        return self.directory / inside_output(name)


def output_paths(options: OutputOptions, names: PairNames) -> dict[str, Path]:
    """{output key: path} for one pair, in writing order."""
    return {key: options.path_for(key, names) for key in options.pair_keys()}


def refuse_image_among_frames(path: Path, frame_folders: dict[Path, str], resolved: dict[Path, Path]) -> None:
    """OutputError when the output `path` is an image in a folder of input frames (`frame_folders`: resolved folder
    -> the input whose frames are there), which a later run over that folder would take for a frame; `resolved`
    caches each output folder's resolved path."""
    from flowcli.errors import OutputError
    from flowcli.io.media import IMAGE_SUFFIXES

    if not frame_folders or path.suffix.lower() not in IMAGE_SUFFIXES:
        return
    folder = resolved.get(path.parent) or resolved.setdefault(path.parent, path.parent.resolve())
    if folder in frame_folders:
        raise OutputError(
            f"{path} would be an image among the frames of {frame_folders[folder]}, and a later run over them would "
            "take it for a frame; choose another output folder with -o"
        )


def video_path(options: OutputOptions, source: str) -> Path:
    """The per-sequence visualisation video: {source}_vis.mp4 in the output folder."""
    return options.directory / f"{source}_vis.mp4"


# ----------------------------------------------------------------------------- results


def write_video_frame_from_png(writer, vis: Path, frame_size: tuple[int, int]) -> None:
    """A skipped pair's frame of a video that --resume makes again, from the pair's vis PNG.

    Checked against the frames' size, not the video's first frame: that one may come from a bad PNG too."""
    from flowcli.errors import InputError
    from flowcli.io.flow_formats import read_png

    width, height = frame_size
    try:
        colours = read_png(vis)
    except InputError:  # a dangling link, or not a PNG
        colours = None
    if colours is None or str(colours.dtype) != "uint8" or colours.shape != (height, width, 3):
        raise OutputError(
            f"cannot use {vis} for video {writer.path}: it is not an 8-bit colour PNG of the frames' size "
            f"{width}x{height}; delete it and run again with --resume"
        )
    writer.write(colours)


def pair_result(result: FlowResult, i: int) -> FlowResult:
    """The i-th pair of a batched FlowResult, on the CPU, each tensor [1, C, H, W]."""
    from flowcli.inference import FlowResult

    def take(tensor):
        return None if tensor is None else tensor[i : i + 1].detach().float().cpu()

    return FlowResult(
        forward=take(result.forward),
        backward=take(result.backward),
        occlusion=take(result.occlusion),
        occlusion_backward=take(result.occlusion_backward),
        learned_occlusion=take(result.learned_occlusion),
        tiles=result.tiles,
    )


def flow_stats(result: FlowResult) -> dict:
    """flow_mean / flow_max (forward magnitude in px over known pixels), occluded_fraction (None if not computed)."""
    import numpy as np

    from flowcli.io.flow_formats import as_flow_hw2, valid_mask

    flow = as_flow_hw2(result.forward)
    magnitude = np.sqrt((flow.astype(np.float64) ** 2).sum(axis=-1))[valid_mask(flow)]
    occluded = None
    if result.occlusion is not None:
        occluded = float((result.occlusion > 0.5).float().mean())
    return {
        "flow_mean": float(magnitude.mean()) if magnitude.size else None,
        "flow_max": float(magnitude.max()) if magnitude.size else None,
        "occluded_fraction": occluded,
    }


def visualize(result: FlowResult, max_flow: float | None = None, backward: bool = False) -> np.ndarray:
    """Colour-coded flow, uint8 H x W x 3."""
    from flowcli.io.visualize import flow_to_rgb

    return flow_to_rgb(result.backward if backward else result.forward, max_flow=max_flow)


def _image_uint8(image: torch.Tensor) -> np.ndarray:
    import torch

    image = image[0] if image.dim() == 4 else image
    return (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def _mask(mask: torch.Tensor) -> np.ndarray:
    from flowcli.io.visualize import mask_to_png_array

    return mask_to_png_array(mask.detach().cpu() > 0.5)


def _npz_arrays(result: FlowResult) -> dict[str, np.ndarray]:
    import numpy as np

    from flowcli.io.flow_formats import as_flow_hw2

    arrays = {"forward": as_flow_hw2(result.forward), "backward": as_flow_hw2(result.backward)}
    arrays["occlusion"] = (result.occlusion[0, 0] > 0.5).cpu().numpy()
    if result.occlusion_backward is not None:
        arrays["occlusion_backward"] = (result.occlusion_backward[0, 0] > 0.5).cpu().numpy()
    if result.learned_occlusion is not None:
        arrays["learned_occlusion"] = result.learned_occlusion[0, 0].cpu().numpy().astype(np.float32)
    return arrays


def _needed(result: FlowResult, key: str) -> None:
    needs = {
        "npz": ("backward", "occlusion"),
        "occlusion": ("occlusion",),
        "occlusion_learned": ("learned_occlusion",),
        "occlusion_backward": ("occlusion_backward",),
    }.get(key, ("backward",) if key.endswith("_backward") else ())
    for name in needs:
        if getattr(result, name) is None:
            raise ValueError(f"output {key!r} needs FlowResult.{name}; estimate with backward/occlusion enabled")


def write_pair_outputs(
    result: FlowResult,
    image1: torch.Tensor,
    image2: torch.Tensor,
    paths: dict[str, Path],
    *,
    max_flow: float | None = None,
    overwrite: bool = False,
    vis: np.ndarray | None = None,
) -> dict[str, Path]:
    """Write one pair's outputs ({output key: path}, see the module docstring) all-or-nothing.

    `result` holds one pair ([1, C, H, W] tensors or unbatched); images are RGB [3, H, W] in [0, 1].
    Each file is written to a temp file next to its target; the temp files are renamed over their
    targets only once every output was written, so an error leaves no new file behind. Existing
    files raise OutputError before anything is written unless `overwrite`. `vis` is a precomputed
    colour coding of the forward flow (saves recomputing it when the caller needs it too).
    """
    from flowcli.io.atomic import atomic_path
    from flowcli.io.flow_formats import as_flow_hw2, write_flo, write_kitti_flow, write_npy, write_npz
    from flowcli.io.visualize import mask_to_png_array, write_png
    from flowcli.ops.warp import backward_warp

    result = pair_result(result, 0) if result.forward.dim() == 4 else pair_result(_batched(result), 0)
    for key in paths:
        if key not in FILE_KINDS or key == "video":
            raise ValueError(f"unknown pair output {key!r}")
        _needed(result, key)
    with contextlib.ExitStack() as stack:
        temps = {key: stack.enter_context(atomic_path(path, overwrite)) for key, path in paths.items()}
        for key, tmp in temps.items():
            backward = key.endswith("_backward")
            base = key.removesuffix("_backward")
            flow = result.backward if backward else result.forward
            if base == "flo":
                write_flo(tmp, flow, overwrite=True)
            elif base == "kitti":
                write_kitti_flow(tmp, flow, overwrite=True)
            elif base == "npy":
                write_npy(tmp, as_flow_hw2(flow), overwrite=True)
            elif base == "npz":
                write_npz(tmp, overwrite=True, **_npz_arrays(result))
            elif base == "vis":
                rgb = vis if (vis is not None and not backward) else visualize(result, max_flow, backward)
                write_png(tmp, rgb, overwrite=True)
            elif base == "occlusion":
                write_png(tmp, _mask(result.occlusion_backward if backward else result.occlusion), overwrite=True)
            elif base == "occlusion_learned":
                write_png(tmp, mask_to_png_array(result.learned_occlusion.clamp(0, 1)), overwrite=True)
            elif base == "warp":
                image2_batch = image2.detach().float().cpu().reshape(1, *image2.shape[-3:])
                warped = backward_warp(image2_batch, result.forward.to(image2_batch.dtype))
                write_png(tmp, _image_uint8(warped), overwrite=True)
    return dict(paths)


def _batched(result: FlowResult) -> FlowResult:
    from flowcli.inference import FlowResult

    def add(tensor):
        return None if tensor is None else tensor[None]

    return FlowResult(
        forward=add(result.forward),
        backward=add(result.backward),
        occlusion=add(result.occlusion),
        occlusion_backward=add(result.occlusion_backward),
        learned_occlusion=add(result.learned_occlusion),
        tiles=result.tiles,
    )
