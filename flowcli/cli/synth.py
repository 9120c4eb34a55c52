"""`flowcli synth`: write synthetic scenes with exact flow and occlusion to disk, or a short clip."""

from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path

import typer

from flowcli.console import progress, stderr

# Scene i is rendered from torch seed seed * SEED_STRIDE + i, which must fit in 64 bits. The formula fixes every
# data set written so far; more than SEED_STRIDE scenes would run into those of --seed + 1.
SEED_STRIDE = 1_000_003
MAX_SEED = 10**12
MAX_COUNT = SEED_STRIDE
# The largest frame side: PNG and .flo store sides as 32-bit integers, libx264 (--clip) encodes at most 16384
MAX_SIDE = 2**31 - 1
MAX_VIDEO_SIDE = 16384

_HELP_PARAGRAPHS = [
    "Render FlyingChairs-style scenes: layered textured shapes with their own affine motions.",
    "Dataset layout (FlyingChairs naming, readable by `flowcli eval --dataset chairs`): NNNNN_img1.png, "
    "NNNNN_img2.png, NNNNN_flow.flo (1->2), NNNNN_flow_bw.flo (2->1), NNNNN_occ.png (255 = pixel of img1 occluded in "
    "img2), with --frames 3 also NNNNN_img3.png and NNNNN_flow_23.flo (2->3), plus synth.json with the settings "
    "(written first, so an interrupted run's folder is known as synth's).",
    "With --overwrite over an earlier synth dataset, all its scene files are removed first (also those this run "
    "rewrites, so an interrupted run leaves none), so `flowcli eval` never mixes the two; files of other names are "
    "kept.",
    "Exit codes: 0 ok, 1 other error, 2 input error (an option out of range, or one that would be ignored: --count "
    "with --clip, --fps without, --min-exposure without --dark, --perspective with --stereo), 3 output error (an "
    "existing file without --overwrite, a synth.json synth did not write with --overwrite, a folder that cannot be "
    "written, a dataset folder named like a video, a --fps the video cannot store: under 0.001, or not finite, a "
    "--size with a side above 16384 for a video).",
    "Examples:",
    "  flowcli synth data/synth -n 1000",
    "  flowcli synth data/synth-final -n 1000 --motion-blur 0.4 --haze 0.2",
    "  flowcli synth data/synth-street -n 1000 --perspective 0.5 --thin 0.15",
    "  flowcli synth data/synth-night -n 1000 --dark 0.35 --min-exposure 0.125",
    "  flowcli synth clip.mp4 --clip --frames 24 --size 256x384",
]
HELP = "\n\n".join(_HELP_PARAGRAPHS)


def synth(
    output: str = typer.Argument(..., metavar="OUTPUT", help="Dataset folder, or a .mp4 path with --clip."),
    count: int = typer.Option(None, "--count", "-n", help="Scenes to write (datasets; default 100, at most 1000003)."),
    size: str = typer.Option(
        "384x512", help="HEIGHTxWIDTH of the frames (--clip videos pad odd sizes to even, as H.264 needs)."
    ),
    seed: int = typer.Option(
        0, help="Scene i uses seed (seed, i): the same command writes the same data. Between -10^12 and 10^12."
    ),
    stereo: bool = typer.Option(False, help="Purely horizontal motion: img1 = left, img2 = right, disparity = -u."),
    frames: int = typer.Option(
        2,
        help="Frames per scene: 2, or 3 for triplets (constant motion). With --clip: the video's length, any "
        "number >= 2.",
    ),
    textures: list[str] = typer.Option(  # not Path: Typer would make "" the current folder
        None,
        help="Real images used as textures: image files, folders of frames and videos (every 8th image of a "
        "folder or frame of a video, as neighbours are near duplicates; at most 400 in all). Repeat for more.",
    ),
    motion_blur: float = typer.Option(0.0, help="Share of scenes blurred along their own motion (Sintel-final-like)."),
    defocus: float = typer.Option(0.0, help="Share of scenes with a Gaussian defocus blur."),
    haze: float = typer.Option(0.0, help="Share of scenes with haze (a smooth blend towards grey)."),
    perspective: float = typer.Option(
        0.0, help="Share of scenes whose background is a tilted plane seen by a moving camera (ground-plane flow)."
    ),
    thin: float = typer.Option(0.0, help="Share of moving shapes that are thin bars, 1.5-6 px wide (legs, poles)."),
    dark: float = typer.Option(
        0.0, help="Share of scenes dimmed to low light (exposure down to --min-exposure, uneven, 8-bit)."
    ),
    min_exposure: float = typer.Option(
        None, help="Darkest exposure factor of --dark scenes, in (0, 1] (default 0.125)."
    ),
    relight: float = typer.Option(
        0.0, help="Share of scenes whose later frames are relit by a smooth gain field (up to 0.4 log units): light "
        "that changes between the frames, as clouds, lamps and auto-exposure change it."
    ),
    zoom: float = typer.Option(
        0.0, help="Share of scenes whose background zooms between the frames by up to 0.35 log units on each axis "
        "(x0.70 to x1.42), as a ground or a wall does when the camera moves towards or away from it."
    ),
    shadows: float = typer.Option(
        0.0, help="Share of scenes with 1-3 soft cast shadows that move unlike the surfaces they fall on (a "
        "walker's shadow on a floor); the flow stays the surfaces'."
    ),
    clip: bool = typer.Option(False, help="Write one scene as a video of --frames frames instead of a dataset."),
    fps: float = typer.Option(None, help="Frame rate of --clip videos (default 12)."),
    overwrite: bool = typer.Option(
        False,
        help="Replace existing files. In a dataset folder of an earlier synth run (one with the synth.json it "
        "wrote; a synth.json of anything else is refused), first remove that run's scene files (all of them, extra "
        "scenes, img3 and flow_23 of triplets too), so the folder holds only the new data set, even after a Ctrl-C; "
        "other files are left alone.",
    ),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="No progress bar or summary on stderr (warnings and errors stay)."
    ),
) -> None:
    import torch

    from flowcli.errors import FlowcliError, InputError, OutputError
    from flowcli.io.atomic import atomic_path
    from flowcli.io.flow_formats import write_flo, write_png
    from flowcli.inference import is_out_of_memory
    from flowcli.io.media import MIN_FPS, VideoWriter, check_fps_fits
    from flowcli.synth.generator import SynthConfig, TextureBank, generate_sample

    if not output:  # Typer's Path would make "" the current folder
        raise InputError('OUTPUT must be a folder path (or a .mp4 path with --clip), got ""')
    output = Path(output)
    # Options of the other mode are refused only when given: their defaults are None
    if clip and count is not None:
        raise InputError(
            "--count does not apply to --clip, which writes one scene as a video (--frames sets its length); "
            "leave --count out"
        )
    if not clip and fps is not None:
        raise InputError("--fps applies to --clip videos only; leave it out, or add --clip")
    count = 100 if count is None else count
    fps = 12.0 if fps is None else fps
    try:
        height, width = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise InputError(f"--size {size!r} is not HEIGHTxWIDTH, e.g. 384x512") from None
    if height < 32 or width < 32:
        raise InputError(f"--size must be at least 32x32; got {height}x{width}")
    if max(height, width) > MAX_SIDE:
        raise InputError(f"--size {height}x{width} has a side above {MAX_SIDE}, more than PNG and .flo files store; "
                         "choose a smaller --size")  # fmt: skip
    if clip and max(height, width) > MAX_VIDEO_SIDE:
        raise OutputError(f"--size {height}x{width} is too large for an H.264 video, which takes sides of at most "
                          f"{MAX_VIDEO_SIDE}; choose a smaller --size")  # fmt: skip
    if count <= 0:
        raise InputError("--count must be positive")
    if count > MAX_COUNT:  # before the output's scene names are listed, let alone rendered
        raise InputError(f"--count {count} is above {MAX_COUNT}: scene i is rendered from torch seed --seed * "
                         f"{SEED_STRIDE} + i, so later scenes would repeat those of --seed + 1; write more in runs of "
                         "other --seed values, into other folders")  # fmt: skip
    if abs(seed) > MAX_SEED:
        raise InputError(f"--seed must be between -10^12 and 10^12; got {seed}")
    shares = (("--motion-blur", motion_blur), ("--defocus", defocus), ("--haze", haze),
              ("--perspective", perspective), ("--thin", thin), ("--dark", dark), ("--relight", relight),
              ("--zoom", zoom), ("--shadows", shadows))
    for name, share in shares:
        if not 0 <= share <= 1:
            raise InputError(f"{name} is a share of scenes, between 0 and 1; got {share:g}")
    if stereo and perspective > 0:  # the generator has no perspective stereo scenes: it would be ignored
        raise InputError("--perspective does not apply to --stereo scenes (their layers are slanted planes); "
                         "leave one out")
    if frames < 2 or (not clip and frames > 3):
        raise InputError("--frames must be 2 or 3 for datasets (any number >= 2 with --clip)")
    if min_exposure is not None and dark == 0:  # given (its default is None), and no scene is dark
        raise InputError("--min-exposure only applies with --dark P (P > 0), the share of scenes it darkens; add "
                         "--dark, or leave --min-exposure out")  # fmt: skip
    min_exposure = 0.125 if min_exposure is None else min_exposure
    if not 0 < min_exposure <= 1:
        raise InputError(f"--min-exposure is a factor in (0, 1]; got {min_exposure:g}")
    if not (math.isfinite(fps) and fps >= MIN_FPS):  # (the video writer stores the rate as a fraction)
        raise OutputError(f"--fps must be a positive number of frames per second of at least {MIN_FPS:g}, e.g. 12; "
                          f"got {fps:g}")
    check_fps_fits(output, fps)  # before the scene is rendered: the writer would refuse it only afterwards
    if textures and not all(textures):  # `--textures "$DIR"` with the variable unset
        raise InputError('--textures "" is empty, which would take the images of the current folder; give image '
                         "files, folders of frames or videos")  # fmt: skip
    stale = _check_output(output, clip, overwrite, count, frames)
    try:
        bank = TextureBank.from_paths(list(textures)) if textures else None
    except FlowcliError as error:
        raise InputError(f"--textures: {error}") from None
    cfg = SynthConfig(height=height, width=width, stereo=stereo, num_frames=frames,
                      motion_blur_prob=motion_blur, defocus_prob=defocus, haze_prob=haze,
                      perspective_prob=perspective, thin_prob=thin, dark_prob=dark, min_exposure=min_exposure,
                      illumination_prob=relight, zoom_prob=zoom, shadow_prob=shadows)

    def to_uint8(img: torch.Tensor):
        return (img.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()

    def render(scene_seed: int):
        try:
            return generate_sample(cfg, torch.Generator().manual_seed(scene_seed), bank)
        except RuntimeError as error:  # (torch's out-of-memory errors are RuntimeErrors)
            if not is_out_of_memory(error):
                raise
            raise InputError(
                f"not enough memory to render scenes of --size {height}x{width}; choose a smaller --size"
            ) from None

    if clip:
        sample = render(seed)
        with VideoWriter(output, fps=fps, overwrite=overwrite) as writer:
            for image in sample.images:
                writer.write(to_uint8(image))
        # VideoWriter pads odd sizes by a black row/column: report what the file holds
        padded = f", padded from --size {height}x{width} as H.264 needs even sizes" if width % 2 or height % 2 else ""
        size_written = f"{width + width % 2} wide x {height + height % 2} high"
        if not quiet:
            stderr.print(f"wrote {output} ({frames} frames, {size_written}{padded}, {fps:g} fps)")
        return

    started = time.perf_counter()  # the rate counts the first scene's rendering too
    first = render(seed * SEED_STRIDE)  # before anything is written: a --size too large for memory fails here
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create dataset folder {output}: {error.strerror}; choose another") from None
    for path in stale:  # an earlier run's scenes, before any new file is written
        try:
            path.unlink(missing_ok=True)
        except OSError as error:
            raise OutputError(f"cannot remove {path} of the earlier data set: {error.strerror}") from None
    # Written before the scenes: an interrupted run's folder is then known as synth's to a later --overwrite
    # run (which removes its scenes); no timing in it, so the same command writes the same files.
    settings = {"count": count, "size": [height, width], "seed": seed, "stereo": stereo, "frames": frames,
                "motion_blur": motion_blur, "defocus": defocus, "haze": haze,
                "perspective": perspective, "thin": thin, "dark": dark, "min_exposure": min_exposure,
                "relight": relight, "zoom": zoom, "shadows": shadows,
                "textures": [str(Path(t)) for t in textures or []]}
    with atomic_path(output / "synth.json", overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(settings, indent=2))
    with progress(quiet) as bar:
        task = bar.add_task("rendering", total=count, info="")
        for i in range(count):
            sample = first if i == 0 else render(seed * SEED_STRIDE + i)
            stem = output / f"{i:05d}"
            for k, image in enumerate(sample.images, start=1):
                write_png(f"{stem}_img{k}.png", to_uint8(image), overwrite=overwrite)
            write_flo(f"{stem}_flow.flo", sample.flow_forward.permute(1, 2, 0).numpy(), overwrite=overwrite)
            write_flo(f"{stem}_flow_bw.flo", sample.flow_backward.permute(1, 2, 0).numpy(), overwrite=overwrite)
            if sample.flow_forward_23 is not None:
                write_flo(f"{stem}_flow_23.flo", sample.flow_forward_23.permute(1, 2, 0).numpy(), overwrite=overwrite)
            occ = (sample.occlusion_forward[0] * 255).to(torch.uint8).numpy()
            write_png(f"{stem}_occ.png", occ, overwrite=overwrite)
            bar.update(task, advance=1)
    rate = count / max(time.perf_counter() - started, 1e-9)
    if not quiet:
        scenes = "1 scene" if count == 1 else f"{count} scenes"
        stderr.print(f"wrote {scenes} to {output} ({rate:.1f} scenes/s including PNG/.flo writing)")


# The name of every scene file a dataset run writes: NNNNN_img1.png .. NNNNN_img3.png, NNNNN_flow.flo,
# NNNNN_flow_bw.flo, NNNNN_flow_23.flo, NNNNN_occ.png (NNNNN: the scene index, at least 5 digits, zero-padded).
_SCENE_FILE = re.compile(r"(?P<index>\d{5,})_(?P<kind>img[1-3]\.png|flow\.flo|flow_bw\.flo|flow_23\.flo|occ\.png)")
_TRIPLET_KINDS = {"img3.png", "flow_23.flo"}


# The keys of synth.json as every version of synth wrote it, and those of some versions only (older ones wrote
# fewer shares, and the rendering speed).
_SETTINGS_KEYS = {"count", "size", "seed", "stereo", "frames", "textures"}
_VERSION_SETTINGS_KEYS = {
    "motion_blur", "defocus", "haze", "perspective", "thin", "dark", "min_exposure", "relight", "zoom",
    "shadows", "scenes_per_second",
}  # fmt: skip


def _synth_settings(path: Path) -> dict | None:
    """The settings in `path` if synth wrote them to synth.json; None for anything else (a user's file of that name)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or not _SETTINGS_KEYS <= set(data) <= _SETTINGS_KEYS | _VERSION_SETTINGS_KEYS:
        return None

    def is_int(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    counts = [data["count"], data["frames"], *(data["size"] if isinstance(data["size"], list) else [None])]
    written_by_synth = (
        len(counts) == 4
        and all(is_int(value) and value > 0 for value in counts)
        and data["frames"] >= 2
        and is_int(data["seed"])
        and isinstance(data["stereo"], bool)
        and isinstance(data["textures"], list)
    )
    return data if written_by_synth else None


def _check_output(output: Path, clip: bool, overwrite: bool, count: int, frames: int) -> list[Path]:
    """Fail before rendering when OUTPUT cannot be written: a folder for --clip, a file for a dataset,
    or (without --overwrite) a dataset file that already exists, so no scene of the old data set is
    mixed with the new one. Returns the files to remove first (with --overwrite): the scene files of the
    earlier synth run in the folder (the one its synth.json describes), all of them: those this run rewrites
    would otherwise stay, mixed with the new scenes, when it is interrupted."""
    from flowcli.errors import OutputError
    from flowcli.io.atomic import check_creatable, check_target
    from flowcli.io.media import VIDEO_OUTPUT_SUFFIXES, is_video

    if clip:
        # before the scene is rendered, and without making its folders: the video writer makes them
        if output.suffix.lower() not in VIDEO_OUTPUT_SUFFIXES:
            raise OutputError(
                f"cannot write video {output}: use one of {' '.join(VIDEO_OUTPUT_SUFFIXES)} (H.264), e.g. clip.mp4"
            )
        check_creatable(output, overwrite)  # refuses a folder even with --overwrite
        return []
    if output.exists() and not output.is_dir():
        raise OutputError(
            f"{output} is a file, not a folder; give a folder for the dataset (or a .mp4 path with --clip)"
        )
    if is_video(output) and not output.is_dir():  # a forgotten --clip: 100 scenes in a folder named like a video
        raise OutputError(
            f"{output} is named like a video; add --clip to write one scene as a video, or give a folder for the "
            "dataset"
        )
    if not output.is_dir():
        return []
    names = []
    for i in range(count):
        names += [f"{i:05d}_img{k}.png" for k in range(1, frames + 1)]
        names += [f"{i:05d}_flow.flo", f"{i:05d}_flow_bw.flo", f"{i:05d}_occ.png"]
        if frames == 3:
            names.append(f"{i:05d}_flow_23.flo")
    names.append("synth.json")
    for name in names:
        check_target(output / name, overwrite)
    settings_file = output / "synth.json"
    if not overwrite or not os.path.lexists(settings_file):
        return []  # not a synth dataset: its files of synth's names may be someone else's (FlyingChairs .flo)
    earlier = _synth_settings(settings_file)
    if earlier is None:
        raise OutputError(
            f"{settings_file} is not the settings file of a flowcli synth run, so the scene files in {output} may "
            "not be synth's to remove; move that synth.json away, or choose another folder"
        )
    stale = []
    for path in sorted(output.iterdir()):
        match = _SCENE_FILE.fullmatch(path.name)
        if not match or f"{int(match['index']):05d}" != match["index"]:
            continue  # synth's own spelling of the index only (00012, 123456; not 012345)
        # the earlier run's scenes and frames only: other files of synth's names may be someone else's (FlyingChairs);
        # but synth versions that saved the rendering speed left longer runs' scenes behind, taken as theirs too
        in_earlier_run = "scenes_per_second" in earlier or (
            int(match["index"]) < earlier["count"] and (earlier["frames"] >= 3 or match["kind"] not in _TRIPLET_KINDS)
        )
        if in_earlier_run and (path.is_symlink() or path.is_file()):  # files, not folders
            stale.append(path)
    return stale


def register(app: typer.Typer) -> None:
    app.command("synth", help=HELP)(synth)
