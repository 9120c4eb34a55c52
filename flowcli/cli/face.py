"""`flowcli face fit` and `flowcli face convert`: 3D face model fitting for images and videos."""

from __future__ import annotations

import contextlib
import json
import re
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from flowcli.cli.options import nonempty_path
from flowcli.errors import FlowcliError, InputError, OutputError


class MeshFormat(str, Enum):
    obj = "obj"
    ply = "ply"
    both = "both"
    none = "none"


class Names(str, Enum):
    arkit = "arkit"
    ict = "ict"


class VideoMode(str, Enum):
    joint = "joint"
    independent = "independent"


_FIT_HELP_PARAGRAPHS = [
    "Fit the face model: pose, identity, expression (ARKit blendshapes), landmarks, mesh, overlay.",
    "Needs ICT-FaceKit's model: --face-assets DIR (or FLOWCLI_FACE_ASSETS=DIR), a folder holding "
    "ict-facekit/FaceXModel/ (ICT-FaceKit's OBJ files), or your own --face-model. The MediaPipe landmark models are "
    "read from DIR/mediapipe/ when there, else downloaded once (`flowcli weights download mediapipe-face`).",
    "--json prints one JSON line per image face or video frame on stdout, with keys input, frame (video frame "
    "number, null for images), face (1, 2... or null), status (ok, no_face or error), when ok yaw, pitch, roll "
    "(degrees), scale and outputs (output name -> path; a video's frames all name the clip's files); images add "
    "faces_found and score; an image or input that failed adds error (the message).",
    "Exit codes: 0 ok, 1 other error, 2 input error (an unreadable input, no face found: the other inputs are still "
    "fitted), 3 output error (an existing output without --overwrite), 4 weights error (a missing or broken face "
    "or landmark model).",
    "Examples:",
    "  flowcli face fit selfie.jpg --face-assets face_assets/ -o faces/",
    "  export FLOWCLI_FACE_ASSETS=face_assets/",
    "  flowcli face fit talk.mp4 --max-frames 100 --json -o faces/ > poses.jsonl",
]
FIT_HELP = "\n\n".join(_FIT_HELP_PARAGRAPHS)
_CONVERT_HELP_PARAGRAPHS = [
    "Convert ICT-FaceKit OBJ files into the compact model file `--face-model` reads (face region only).",
    "Prints one JSON line on stdout: output, identity_modes, expressions.",
    "Exit codes: 0 ok, 1 other error, 2 input error (a folder without the OBJ files), 3 output error (not a .npz "
    "path, or an existing file without --overwrite), 4 weights error (an OBJ file that cannot be used).",
    "Example: flowcli face convert ICT-FaceKit/FaceXModel -o ict.npz",
]
CONVERT_HELP = "\n\n".join(_CONVERT_HELP_PARAGRAPHS)


def register(app: typer.Typer) -> None:
    face_app = typer.Typer(
        help="Fit a 3D face model (ICT-FaceKit) to images and videos.\n\n"
        "flowcli face FILES... is short for flowcli face fit FILES... (a file named fit or convert: write ./fit).",
        no_args_is_help=True,
    )
    face_app.command("fit", help=FIT_HELP)(fit_command)
    face_app.command("convert", help=CONVERT_HELP)(convert_command)
    app.add_typer(face_app, name="face")


def fit_command(
    inputs: List[str] = typer.Argument(  # str, as the path options below: a Path would read "" as "."
        ...,
        metavar="INPUTS",
        help="Images and/or videos (.mp4, .mov, .avi, ...), or folders of them (natural order).",
    ),
    output: str = typer.Option("face-output", "-o", "--output", metavar="PATH", help="Folder for the results."),
    face_assets: Optional[str] = typer.Option(  # a str: a Path would read an empty --face-assets "" as "."
        None,
        "--face-assets",
        metavar="DIR",
        envvar="FLOWCLI_FACE_ASSETS",
        help="Folder laid out like shared/data/face (ict-facekit/, mediapipe/).",
    ),
    face_model: Optional[str] = typer.Option(  # a str, as --face-assets: an empty value is not "."
        None,
        "--face-model",
        metavar="PATH",
        help="Your own model with ICT-FaceKit's structure: .npz (mean, id, exp, exp_names) or a folder of OBJs.",
    ),
    max_faces: int = typer.Option(
        1, "--max-faces", min=1, help="Fit up to this many faces per image (largest first; videos fit one)."
    ),
    mesh_format: MeshFormat = typer.Option(MeshFormat.obj, "--mesh-format", help="Mesh file(s) to write."),
    mesh_space: str = typer.Option(
        "model", "--mesh-space", help="'model' (cm, pose in the JSON) or 'image' (pixels, depth)."
    ),
    names: Names = typer.Option(Names.arkit, "--blendshape-names", help="ARKit's 52 names or ICT's 57."),
    overlay: bool = typer.Option(True, "--overlay/--no-overlay", help="Write an overlay PNG (images) or MP4 (videos)."),
    video_mode: Optional[VideoMode] = typer.Option(  # None: not given, so a run without videos can say it is unused
        None,
        "--video-mode",
        help="joint (default): one identity, temporal terms; independent: per-frame fits.",
        show_default=False,
    ),
    flow: bool = typer.Option(
        False,
        "--flow/--no-flow",
        help="Add the optical-flow consistency term to --video-mode joint (slow on CPU); "
        "an error with --video-mode independent, which has no temporal terms.",
    ),
    device: Optional[str] = typer.Option(
        None,
        "--device",
        help="Device of the --flow model: auto (default), cpu, cuda, cuda:N or mps (the face fit itself runs on "
        "the CPU).",
        show_default=False,
    ),
    precision: Optional[str] = typer.Option(
        None,
        "--precision",
        help="Precision of the --flow model: auto (default: fp16 on CUDA, fp32 elsewhere), fp32, fp16 or bf16.",
        show_default=False,
    ),
    max_frames: Optional[int] = typer.Option(
        None, "--max-frames", min=1, help="Fit only the first N frames of videos."
    ),
    json_lines: bool = typer.Option(False, "--json", help="One JSON line per image or video frame on stdout."),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace existing outputs; for each input fitted, also remove an earlier run's NAME.* / "
        "NAME.faceK.* outputs (flowcli's own names only) that this run does not rewrite.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    import torch

    from flowcli.console import print_error, progress, warn
    from flowcli.face.assets import FaceAssets
    from flowcli.face.media import is_video
    from flowcli.face.pipeline import FacePipeline

    inputs = [nonempty_path(path, "an input", "images, videos or folders of them") for path in inputs]
    # expanduser as --face-assets: the shell leaves the ~ of --output=~/faces alone
    output = nonempty_path(output, "-o", "the folder for the results").expanduser()
    if mesh_space not in ("model", "image"):
        raise InputError("--mesh-space must be 'model' or 'image'")
    if flow and video_mode == VideoMode.independent:
        raise InputError(
            "--flow needs --video-mode joint: independent per-frame fits have no temporal term for it; "
            "drop --flow or use --video-mode joint"
        )
    if not flow and (device is not None or precision is not None):
        given = " and ".join(flag for flag, value in (("--device", device), ("--precision", precision)) if value)
        raise InputError(f"{given} set the --flow model, and this run has none (the face fit runs on the CPU); add "
                         "--flow or leave them out")
    flow_device, flow_precision = (
        _flow_device_and_precision(device or "auto", precision or "auto") if flow else (None, None)
    )
    if face_model is not None and not face_model.strip():
        raise InputError("--face-model is an empty path; give a .npz model file or a folder of ICT-FaceKit OBJs")
    inputs = _expand_inputs(inputs)
    _warn_of_unused_options(inputs, flow, video_mode, max_frames, max_faces, device, precision)
    video_mode = video_mode or VideoMode.joint
    settings = dict(
        mesh_format=mesh_format.value, mesh_space=mesh_space, names=names.value, overlay=overlay, overwrite=overwrite
    )
    torch.set_num_threads(1)  # many tiny solves: threads only add contention
    # the runtime, assets and model first: a run that cannot start leaves no output folder behind
    pipeline = FacePipeline(
        FaceAssets.locate(face_assets), face_model=Path(face_model).expanduser() if face_model else None
    )
    exp_names = pipeline.model.exp_names
    if names == Names.arkit and not any(pipeline.model.arkit_weights([1.0] * len(exp_names)).values()):
        warn(  # a model of other names: every ARKit column is 0 while the fit has weights for its own
            f"none of the face model's {len(exp_names)} expression names (e.g. {exp_names[0]}) is ARKit's or "
            "ICT-FaceKit's (jawOpen, eyeBlink_L, ...), so every ARKit blendshape weight would be 0; pass "
            "--blendshape-names ict to write the model's own names"
        )
    flow_fn = _flow_model(flow_device, flow_precision) if flow and any(is_video(p) for p in inputs) else None
    job = FaceJob(pipeline, Path(output), settings, json_lines, inputs)
    stems = _unique_stems(inputs, max_faces)
    fitted = []  # stems whose outputs this run wrote
    new_folders = _missing_folders(Path(output))
    try:
        for path, stem in zip(inputs, stems):  # fail before any work if an output exists
            job.check_outputs(stem, video=is_video(path), faces=1 if is_video(path) else max_faces)
        failures = []
        with progress(quiet) as bar:
            # a video shows its own tasks; the images share one, else a folder of photos ran without a sign of life
            images = sum(not is_video(p) for p in inputs)
            image_task = bar.add_task("images", total=images, info="") if images else None
            for path, stem in zip(inputs, stems):
                printed = job.records_printed
                try:
                    if is_video(path):
                        job.video(
                            path,
                            stem,
                            bar,
                            video_mode=video_mode.value,
                            flow_fn=flow_fn,
                            max_frames=max_frames,
                        )
                    else:
                        job.image(path, stem, max_faces, warn)
                    fitted.append(stem)
                except FlowcliError as error:
                    if job.records_printed == printed:  # a shell pipeline learns of every input that failed
                        job.emit_error(path, error)
                    # only a bad input is skipped: an output that cannot be written (a full disk) fails the next
                    # ones too, and is exit 3, not one of "N inputs failed"
                    if len(inputs) == 1 or not isinstance(error, InputError):
                        raise
                    print_error(error)
                    failures.append(path)
                if not is_video(path):
                    bar.advance(image_task)
        if overwrite:
            job.remove_stale_outputs(fitted, stems)
        if failures:
            names = ", ".join(p.name for p in failures[:3]) + (", ..." if len(failures) > 3 else "")
            raise InputError(f"{len(failures)} of {len(inputs)} inputs failed ({names})")
    except BaseException:
        _remove_empty(new_folders)  # a run that wrote nothing leaves no empty output folder behind
        raise


def convert_command(
    folder: str = typer.Argument(  # str, as -o: a Path would read "" as "."
        ...,
        metavar="FOLDER",
        help="ICT-FaceKit's FaceXModel folder (generic_neutral_mesh.obj, identity*.obj, expressions).",
    ),
    output: str = typer.Option(..., "-o", "--output", metavar="PATH", help="The compact model file (.npz) to write."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
) -> None:
    from flowcli.face.model import build_compact, convert_ict
    from flowcli.io.atomic import check_writable

    folder = nonempty_path(folder, "FOLDER", "ICT-FaceKit's FaceXModel folder")
    # expanduser as fit's path options: the shell leaves the ~ of --output=~/ict.npz alone
    output = nonempty_path(output, "-o", "the .npz file to write, e.g. -o ict.npz").expanduser()
    if output.suffix.lower() != ".npz":
        raise OutputError(f"-o {output}: the compact model file must end in .npz; give e.g. -o ict.npz")
    new_folders = _missing_folders(output.parent)
    try:
        check_writable(output, overwrite)
        arrays = convert_ict(folder)
        build_compact(arrays, folder / "generic_neutral_mesh.obj", output, source=str(folder))
    except BaseException:
        _remove_empty(new_folders)
        raise
    print(
        json.dumps(
            {
                "output": str(output),
                "identity_modes": int(arrays["id"].shape[0]),
                "expressions": int(arrays["exp"].shape[0]),
            }
        )
    )


def _missing_folders(folder: Path) -> list[Path]:
    """`folder` and those of its parents that do not exist yet, deepest first: what a run would create."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders a failed run created (deepest first), as long as they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except FileNotFoundError:
            continue
        except OSError:  # not empty: neither are its parents
            break


def _warn_of_unused_options(inputs, flow, video_mode, max_frames, max_faces, device, precision) -> None:
    """One warning for the options that act on videos (or images) only, when no input is one: they were
    silently ignored."""
    from flowcli.console import warn
    from flowcli.face.media import is_video

    videos = sum(is_video(p) for p in inputs)
    if not videos:
        video_only = {
            "--flow": flow,
            "--device": device is not None,
            "--precision": precision is not None,
            "--video-mode": video_mode is not None,
            "--max-frames": max_frames is not None,
        }
        unused = [flag for flag, given in video_only.items() if given]
        if unused:
            if len(unused) == 1:
                warn(f"{unused[0]} is left unused: no input is a video")
            else:
                warn(f"{', '.join(unused[:-1])} and {unused[-1]} are left unused: no input is a video")
    if videos == len(inputs) and max_faces > 1:
        warn("--max-faces is left unused: no input is an image (a video's largest face is fitted)")


def _flow_device_and_precision(device: str, precision: str):
    """The torch device and precision name of the --flow model, checked before any work: a GPU asked for but
    absent is an error, not a silent CPU run; fp16 on the CPU runs in fp32 (one warning)."""
    from flowcli.cli.options import check_precision_name, device_and_precision

    check_precision_name(precision)
    return device_and_precision(device, precision)


def _flow_model(device, precision: str):
    """The --flow model as a function of two frames, loaded once before any work: a missing or broken checkpoint
    stops the run with its WeightsError (exit 4); None, with a warning, when flow inference cannot be imported."""
    from flowcli.console import warn
    from flowcli.face.video import flow_function

    flow_fn = flow_function(device=device, precision=precision)
    if flow_fn is None:
        warn("optical flow is unavailable (flowcli's flow inference cannot be imported); fitting without the flow term")
    return flow_fn


def _expand_inputs(inputs: list[Path]) -> list[Path]:
    """Files as given, folders replaced by their images and videos; a file given twice is fitted once."""
    from flowcli.face.media import IMAGE_SUFFIXES, media_in_folder

    files = []
    for path in inputs:
        if path.is_dir():
            found = [p for p in media_in_folder(path) if not _is_own_output(p)]
            if not found:
                raise InputError(f"{path} holds no images ({' '.join(sorted(IMAGE_SUFFIXES))}) or videos")
            files += found
        elif path.is_file():
            files.append(path)
        elif path.exists():
            raise InputError(f"{path} is not a regular file (a device, pipe or socket); give an image or video file")
        else:
            raise InputError(f"{path} not found; check the path")
    unique = {}
    for path in files:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


# what flowcli writes for an output stem NAME: NAME.obj, NAME.pose.json, ..., NAME.faceK.* (K >= 2)
OUTPUT_SUFFIXES = (
    ".obj",
    ".ply",
    ".pose.json",
    ".landmarks.json",
    ".landmarks68.npy",
    ".landmarks468.npy",
    ".blendshapes.csv",
    ".blendshapes.json",
)
OVERLAY_SUFFIXES = (".overlay.png", ".overlay.mp4")  # one per input stem, never NAME.faceK.overlay.*


def _is_own_output(path: Path) -> bool:
    """An overlay flowcli wrote (NAME.overlay.png / .mp4 next to the NAME.pose.json of the same run), which an
    expanded folder must not offer as an input: a user's own picture named like that has no such neighbour."""
    name = path.name
    for suffix in OVERLAY_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return path.with_name(name[: -len(suffix)] + ".pose.json").is_file()
    return False


def _owned_by(name: str, stem: str) -> bool:
    """Whether a file name is one of flowcli's outputs for this output stem (any face, any format)."""
    if not name.startswith(stem + "."):
        return False
    rest = name[len(stem) :]
    if rest in OUTPUT_SUFFIXES or rest in OVERLAY_SUFFIXES:
        return True
    match = re.fullmatch(r"\.face([1-9][0-9]*)(\..+)", rest)
    return bool(match) and int(match.group(1)) >= 2 and match.group(2) in OUTPUT_SUFFIXES


def _unique_stems(paths: list[Path], max_faces: int = 1) -> list[str]:
    """One output stem per input, none of whose output names another input also wants, ignoring case
    (macOS, Windows): d1/x.jpg, d2/x.jpg, x-2.jpg -> x, x-3, x-2. Extra faces of an image take NAME.face2..."""
    from flowcli.face.media import is_video

    def names(stem: str, path: Path) -> set[str]:
        faces = 1 if is_video(path) else max_faces
        return {(stem if k == 1 else f"{stem}.face{k}").casefold() for k in range(1, faces + 1)}

    wanted = set().union(*(names(p.stem, p) for p in paths))
    used, stems = set(), []
    for path in paths:
        stem, n = path.stem, 1
        while names(stem, path) & used or (n > 1 and names(stem, path) & wanted):
            n += 1
            stem = f"{path.stem}-{n}"
        used |= names(stem, path)
        stems.append(stem)
    return stems


class FaceJob:
    """Writes the outputs of one run and prints JSON lines."""

    def __init__(self, pipeline, output: Path, settings: dict, json_lines: bool, inputs: list[Path]):
        self.pipeline = pipeline
        self.model = pipeline.model
        self.output = output
        self.s = settings
        self.json_lines = json_lines
        self.records_printed = 0
        self.written: set[Path] = set()  # every output file this run wrote
        # never replaced nor removed: a picture named like another's output (x.overlay.png next to x.png)
        self.inputs = {path.resolve() for path in inputs}

    # --- file names -----------------------------------------------------------------------------------------

    def outputs(self, stem: str, video: bool) -> dict[str, Path]:
        out = {}
        fmt = self.s["mesh_format"]
        if fmt in ("obj", "both"):
            out["mesh_obj"] = self.output / f"{stem}.obj"
        if fmt in ("ply", "both"):
            out["mesh_ply"] = self.output / f"{stem}.ply"
        out["pose"] = self.output / f"{stem}.pose.json"
        out["landmarks"] = self.output / f"{stem}.landmarks.json"
        out["landmarks68"] = self.output / f"{stem}.landmarks68.npy"
        out["landmarks468"] = self.output / f"{stem}.landmarks468.npy"
        out["blendshapes_csv"] = self.output / f"{stem}.blendshapes.csv"
        out["blendshapes_json"] = self.output / f"{stem}.blendshapes.json"
        if self.s["overlay"]:
            out["overlay"] = self.output / (f"{stem}.overlay.mp4" if video else f"{stem}.overlay.png")
        return out

    def check_outputs(self, stem: str, video: bool, faces: int) -> None:
        from flowcli.io.atomic import check_writable

        stems = [stem] if faces == 1 else [stem] + [f"{stem}.face{k}" for k in range(2, faces + 1)]
        for st in stems:
            for key, path in self.outputs(st, video).items():
                if key == "overlay" and st != stem:
                    continue
                if path.resolve() in self.inputs:  # --overwrite would replace it, --overwrite's cleanup remove it
                    raise OutputError(
                        f"{path} is one of the inputs, and the results of {stem} would replace it; write them to "
                        "another folder with -o, or rename that input"
                    )
                check_writable(path, self.s["overwrite"])

    def _names_and_weights(self, exp_weights):
        if self.s["names"] == "arkit":
            weights = self.model.arkit_weights(exp_weights)
        else:
            weights = {n: float(w) for n, w in zip(self.model.exp_names, exp_weights)}
        return list(weights), weights

    def _mesh_vertices(self, fit, result_vertices):
        return (
            self.model.vertices(fit.id_coeffs, fit.exp_weights) if self.s["mesh_space"] == "model" else result_vertices
        )

    def _emit(self, record: dict) -> None:
        self.records_printed += 1
        if self.json_lines:
            sys.stdout.write(json.dumps(record) + "\n")
            sys.stdout.flush()

    def emit_error(self, path: Path, error: Exception) -> None:
        """The record of an input that failed before any record of its own (unreadable, tiny, no frames...)."""
        self._emit({"input": str(path), "frame": None, "face": None, "status": "error", "error": str(error)})

    def remove_stale_outputs(self, fitted: list[str], stems: list[str]) -> None:
        """--overwrite: remove files an earlier run wrote for a stem this run fitted (flowcli's own names, e.g.
        NAME.face2.* or NAME.ply) and this run did not rewrite, so a folder never mixes two runs. A file
        another of this run's stems could own (input two.face2.jpg next to two.jpg) is left alone."""
        if not fitted or not self.output.is_dir():
            return
        written = {p.name for p in self.written}
        others = set(stems) - set(fitted)
        for entry in self.output.iterdir():
            name = entry.name
            if name in written or not entry.is_file() or entry.is_symlink() or entry.resolve() in self.inputs:
                continue
            owners = [stem for stem in fitted if _owned_by(name, stem)]
            if owners and not any(_owned_by(name, stem) for stem in others):
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()

    # --- images ---------------------------------------------------------------------------------------------

    def image(self, path: Path, stem: str, max_faces: int, warn) -> None:
        from flowcli.face import writers
        from flowcli.face.media import read_image
        from flowcli.face.pipeline import NoFaceError
        from flowcli.face.render import render_overlay

        image = read_image(path)
        try:
            results, total = self.pipeline.fit_image(image, max_faces)
        except NoFaceError as error:
            self._emit({"input": str(path), "frame": None, "face": None, "status": "no_face", "error": str(error)})
            raise InputError(f"{path.name}: {error}; try a larger, frontal, well-lit face") from None
        if total > len(results) and max_faces < total:
            warn(
                f"{path.name}: {total} faces found, fitted {len(results)} (largest first); "
                f"use --max-faces {total} for all"
            )
        ow = self.s["overwrite"]
        records = []
        with writers.published_together():  # an interrupted image leaves all its files or none
            for k, res in enumerate(results):
                st = stem if k == 0 else f"{stem}.face{k + 1}"
                out = self.outputs(st, video=False)
                if "overlay" in out:  # one overlay picture shows all the image's faces
                    out["overlay"] = self.outputs(stem, video=False)["overlay"]
                fit = res.fit
                verts = self._mesh_vertices(fit, res.vertices)
                for key in ("mesh_obj", "mesh_ply"):
                    if key in out:
                        writers.write_mesh(out[key], verts, self.model, overwrite=ow)
                pose = fit.pose_dict()
                writers.write_json(
                    out["pose"], {"input": str(path), "face": k + 1, "score": round(fit.score, 4), **pose}, overwrite=ow
                )
                writers.write_json(
                    out["landmarks"],
                    {
                        "input": str(path),
                        "face": k + 1,
                        "landmarks68": [[round(x, 2), round(y, 2)] for x, y in res.landmarks68[:, :2].tolist()],
                        "landmarks468": [
                            [round(x, 2), round(y, 2), round(z, 2)] for x, y, z in res.landmarks468.tolist()
                        ],
                        "note": "68: the fitted model's landmarks (iBUG order, 3D jawline); "
                        "468: MediaPipe Face Mesh points (x, y px, relative depth)",
                    },
                    overwrite=ow,
                )
                writers.write_npy(out["landmarks68"], res.landmarks68[:, :2], overwrite=ow)
                writers.write_npy(out["landmarks468"], res.landmarks468, overwrite=ow)
                names, weights = self._names_and_weights(fit.exp_weights)
                writers.write_blendshapes_csv(out["blendshapes_csv"], names, [(0, weights)], overwrite=ow)
                writers.write_json(
                    out["blendshapes_json"],
                    {"input": str(path), "face": k + 1, "blendshapes": {n: round(w, 5) for n, w in weights.items()}},
                    overwrite=ow,
                )
                self.written.update(out.values())
                records.append(
                    {
                        "input": str(path),
                        "frame": None,
                        "face": k + 1,
                        "status": "ok",
                        "faces_found": total,
                        "score": round(fit.score, 4),
                        **{key: pose[key] for key in ("yaw", "pitch", "roll", "scale")},
                        "outputs": {key: str(p) for key, p in out.items()},
                    }
                )
            if self.s["overlay"]:
                picture = render_overlay(
                    image, [(r.vertices, self.model.triangles) for r in results], [r.landmarks68 for r in results]
                )
                writers.write_png(self.outputs(stem, video=False)["overlay"], picture, overwrite=ow)
        for record in records:  # printed once every file it names exists
            self._emit(record)

    # --- videos ---------------------------------------------------------------------------------------------

    def video(
        self,
        path: Path,
        stem: str,
        bar,
        video_mode: str,
        flow_fn=None,
        max_frames: int | None = None,
    ) -> None:
        from itertools import islice

        from rich.markup import escape

        from flowcli.console import warn
        from flowcli.face.media import VideoReader
        from flowcli.face.video import ClipTextures, VideoOptions, fit_video, small_gray
        from flowcli.io.media import max_fps

        options = VideoOptions()
        # pass 1: landmarks (tracked); the census grays and flows come from a second decode, as the fit needs them
        reader = VideoReader(path)
        overlay = self.outputs(stem, video=True).get("overlay")
        if overlay is not None and reader.fps > max_fps(overlay):  # known before the fit, which would be lost
            reader.close()
            raise InputError(
                f"{path} plays at {reader.fps:g} fps, above the {max_fps(overlay):,} fps an MP4 overlay stores; "
                "pass --no-overlay to fit it without one"
            )
        name = escape(path.name)  # a progress description is markup: [red]take.mp4 is a file name
        task = bar.add_task(f"{name}: landmarks", total=max_frames, info="")
        points, previous, zoom = [], None, 1.0
        for frame in islice(reader, max_frames):
            pts, _ = self.pipeline.track(frame, None if video_mode == "independent" else previous)
            if not points:
                zoom = small_gray(frame, options.max_side)[1]
            points.append(pts)
            previous = pts
            bar.advance(task)
        reader.close()
        if reader.decode_error:
            warn(
                f"{path.name}: stopped at an undecodable frame ({reader.decode_error}); "
                f"fitting the {len(points)} frames before it"
            )
        if not points:
            raise InputError(f"{path}: no decodable frames")
        found = sum(p is not None for p in points)
        if found == 0:
            message = f"no face found in any of {len(points)} frames"
            for t in range(len(points)):  # an input that failed: its records say why, as a faceless image's do
                self._emit({"input": str(path), "frame": t, "face": None, "status": "no_face", "error": message})
            raise InputError(f"{path}: {message}; try a clip with a larger, frontal, well-lit face")
        # pass 2: the fit
        bar.update(task, description=f"{name}: fitting", completed=0, total=found)
        fitter = self.pipeline.fitter
        if video_mode == "independent":
            fits = []
            for p in points:
                fits.append(None if p is None else fitter.fit(p))
                if p is not None:  # the total counts the frames with a face
                    bar.advance(task)
        else:
            with contextlib.closing(VideoReader(path)) as again:
                clip = ClipTextures(
                    islice(again, len(points)), options.max_side, flow_fn, keep=options.window, name=str(path)
                )
                fits = fit_video(fitter, points, clip.grays, zoom, clip.flows, options,
                                 progress=lambda n: bar.update(task, completed=n))
        self._write_video(path, stem, fits, reader.fps, bar)

    def _write_video(self, path: Path, stem: str, fits: list, fps: float, bar) -> None:
        import numpy as np
        from rich.markup import escape

        from flowcli.console import warn
        from flowcli.face import writers
        from flowcli.face.media import VideoReader
        from flowcli.face.render import render_overlay

        frames_total = len(fits)
        found = sum(f is not None for f in fits)
        ow = self.s["overwrite"]
        out = self.outputs(stem, video=True)
        present = [f for f in fits if f is not None]
        identity = np.mean([f.id_coeffs for f in present], 0)
        # --video-mode independent fits an identity per frame: each frame's pose entry keeps its own
        per_frame_identity = any(np.abs(f.id_coeffs - identity).max() > 1e-6 for f in present)
        if self.s["mesh_space"] == "model":
            mesh = self.model.vertices(identity, None)
        else:  # pixels exist only per frame: the first frame with a face, as fitted there
            mesh = self.pipeline.fitter.vertices_image(present[0])
        paths = {key: str(p) for key, p in out.items()}
        lm68 = np.full((frames_total, 68, 2), np.nan)
        lm468 = np.full((frames_total, 468, 3), np.nan)
        poses, rows, blend, records = [], [], [], []
        names = None
        with writers.published_together():  # an interrupted clip leaves all its files or none
            writer = writers.Mp4Writer(out["overlay"], fps, overwrite=ow) if "overlay" in out else None
            reader = None
            task = bar.add_task(f"{escape(path.name)}: writing", total=frames_total, info="")
            ok = False
            try:
                reader = VideoReader(path) if writer else None
                frames = iter(reader) if reader else iter(lambda: None, 0)
                for t, fit in enumerate(fits):
                    frame = next(frames, None) if writer else None
                    if writer and frame is None:
                        raise InputError(f"{path}: frame {t} could not be decoded again for the overlay")
                    bar.advance(task)
                    if fit is None:
                        poses.append({"frame": t, "status": "no_face"})
                        rows.append((t, None))
                        blend.append({"frame": t, "status": "no_face"})
                        records.append(
                            {"input": str(path), "frame": t, "face": None, "status": "no_face", "outputs": paths}
                        )
                        if writer:
                            writer.append(frame)
                        continue
                    res = self.pipeline.result(fit)
                    lm68[t], lm468[t] = res.landmarks68[:, :2], res.landmarks468
                    pose = fit.pose_dict()
                    poses.append({"frame": t, "status": "ok", **pose})
                    if per_frame_identity:
                        poses[-1]["identity"] = np.round(fit.id_coeffs, 5).tolist()
                    names, weights = self._names_and_weights(fit.exp_weights)
                    rows.append((t, weights))
                    blend.append(
                        {"frame": t, "status": "ok", "blendshapes": {n: round(w, 5) for n, w in weights.items()}}
                    )
                    records.append(
                        {
                            "input": str(path),
                            "frame": t,
                            "face": 1,
                            "status": "ok",
                            **{k: pose[k] for k in ("yaw", "pitch", "roll", "scale")},
                            "outputs": paths,
                        }
                    )
                    if writer:
                        writer.append(render_overlay(frame, [(res.vertices, self.model.triangles)], [res.landmarks68]))
                ok = True
            finally:
                if writer:
                    writer.close(ok)
                if reader:
                    reader.close()
            names = names or list(self._names_and_weights(np.zeros(len(self.model.exp_names)))[0])
            for key in ("mesh_obj", "mesh_ply"):
                if key in out:
                    writers.write_mesh(out[key], mesh, self.model, overwrite=ow)
            writers.write_json(
                out["pose"],
                {"input": str(path), "fps": fps, "identity": np.round(identity, 5).tolist(), "frames": poses},
                overwrite=ow,
            )
            writers.write_json(
                out["landmarks"],
                {
                    "input": str(path),
                    "frames": [
                        {"frame": t, "landmarks68": None if np.isnan(lm68[t, 0, 0]) else np.round(lm68[t], 2).tolist()}
                        for t in range(frames_total)
                    ],
                    "note": "landmarks468 (MediaPipe) are in the .npy file; NaN where no face",
                },
                overwrite=ow,
            )
            writers.write_npy(out["landmarks68"], lm68, overwrite=ow)
            writers.write_npy(out["landmarks468"], lm468, overwrite=ow)
            writers.write_blendshapes_csv(out["blendshapes_csv"], names, rows, overwrite=ow)
            writers.write_json(out["blendshapes_json"], {"input": str(path), "frames": blend}, overwrite=ow)
        self.written.update(out.values())
        for record in records:  # printed once the clip's files exist
            self._emit(record)
        if found < frames_total:
            warn(f"{path.name}: no face in {frames_total - found} of {frames_total} frames")
