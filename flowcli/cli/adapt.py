"""`flowcli adapt`: self-supervised fine-tuning on the user's own unlabeled footage."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from flowcli.cli.options import nonempty_path
from flowcli.errors import InputError, OutputError

_HELP_PARAGRAPHS = [
    "Fine-tune a flow model on your own footage, without labels, and write the adapted checkpoint.",
    "SOURCES are video files, folders of frames (natural order; subfolders are searched, one sequence per folder) "
    "and quoted globs, in any mix. Consecutive frames, --step apart, form the training pairs (triplets with "
    "--temporal); --val-fraction of the pairs, the last ones of the sequences, is held out to measure the result.",
    "Two stages, split automatically by the footage size: photometric (census + SSIM + L1, occlusion-masked by "
    "forward-backward consistency, edge-aware smoothness, multi-scale), then distillation: the stage-1 model, "
    "frozen, teaches a student that sees crops, superpixel occlusions, colour and geometric transformations of the "
    "same frames (DDFlow / SelFlow / DistillFlow). --teacher adds checkpoints to the teacher ensemble, "
    "--teacher-flip adds predictions on flipped frames, --teacher-scale 2 runs the teacher on frames upsampled 2x.",
    "--stereo adapts on rectified left/right pairs (LEFT_DIR RIGHT_DIR, a folder with left/ and right/, a folder of "
    "*_left/*_right images, or a .txt file of 'LEFT RIGHT' lines): photometric + smoothness with the vertical "
    "component penalised (--vertical zero also drops it from the warp); with --temporal the pairs are a stereo "
    "video and Flow2Stereo's quadrilateral and triangle constraints tie flow and disparity together.",
    "-o defaults to NAME-adapted.safetensors in the current folder, NAME being the first source's name (the "
    "video's file name without its extension, the folder's name): flowcli adapt my_footage/ writes "
    "my_footage-adapted.safetensors.",
    "Budget: --steps N or --minutes M. Ctrl-C saves the state in OUTPUT_STEM.adapt/ next to the output; the same "
    "command resumes it. The output is a self-describing checkpoint (architecture + provenance: base weights, "
    "footage fingerprint, steps, losses, before/after metrics, date) that works anywhere with --weights; "
    "OUTPUT_STEM.report.json holds the report. Publish it with `flowcli weights push`.",
    "On a GPU, bf16 autocast (Ampere and later) and the fused correlation kernel are used automatically. Several GPUs: "
    "torchrun --nproc_per_node N -m flowcli.cli.main adapt ... (pairs are sharded with DistributedSampler).",
    "Exit codes: 0 ok, 1 other error or interrupted (resumable), 2 input error, 3 output error, 4 weights error.",
    "Examples:",
    "  flowcli adapt my_footage/    (writes my_footage-adapted.safetensors)",
    "  flowcli adapt my_footage/ -o my_model.safetensors",
    "  flowcli adapt clip.mp4 shots/ --minutes 30 --device cuda -o my_model.safetensors",
    "  flowcli adapt sintel/training/clean --gt sintel:sintel/ --steps 3000 -o sintel_adapted.safetensors",
    "  flowcli adapt --stereo left/ right/ --steps 1000 -o my_stereo.safetensors",
]
HELP = "\n\n".join(_HELP_PARAGRAPHS)

_DATA, _TRAIN, _MODEL, _OUT = "Footage", "Training", "Model and compute", "Output"


def _parse_crop(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"--crop {text!r} is not HEIGHTxWIDTH, e.g. 320x448") from None
    if h <= 0 or w <= 0:
        raise InputError(f"--crop {text!r}: height and width must be positive")
    return h, w


def _parse_settings(items: list[str] | None, option: str, config: type) -> dict:
    """KEY=VALUE settings of `config` (LossWeights or TransformConfig), each value converted to its field's type."""
    from flowcli.adapt.settings import as_text, convert, expected, field_types

    types = field_types(config)
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in types:
            raise InputError(f"{option} {item!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(types))}")
        try:
            out[key] = convert(value.strip(), types[key])  # `occlusion= range` is range, as `census= 1` is 1
        except ValueError:
            example = as_text(getattr(config(), key))
            raise InputError(
                f"{option} {item!r}: {key} must be {expected(types[key])}, e.g. {option} {key}={example}"
            ) from None
    return out


def _check_teachers(specs: list[str]) -> None:
    """Refuse a --teacher that cannot load (a missing file, not a flowcli checkpoint, an unknown name) now: the
    teachers are loaded after the footage scan, which can take minutes. Remote specs are checked when fetched."""
    from flowcli.checkpoint import read_metadata
    from flowcli.errors import WeightsError
    from flowcli.registry import SOURCE_PREFIXES, load_registry

    for spec in specs:
        if not spec:  # Path("") is the current folder
            raise WeightsError('--teacher "" is empty; pass a flowcli .safetensors checkpoint or a model name')
        if spec.startswith(SOURCE_PREFIXES):
            continue
        path = Path(spec).expanduser()
        if path.is_file():  # as load_model takes it: a local file before a registry name
            try:
                read_metadata(path)  # the header only
            except WeightsError as error:
                raise WeightsError(f"--teacher {spec}: {error}") from None
            continue
        models = load_registry()["models"]
        if spec in models:
            task = models[spec].get("task") or "flow"
            if task not in ("flow", "stereo"):
                raise WeightsError(
                    f"--teacher {spec} is a {task} model, not a flow network; see `flowcli weights list`"
                )
            continue
        if path.is_dir():
            raise WeightsError(
                f"--teacher {spec} is a folder, not a checkpoint file; pass the .safetensors file inside it"
            )
        raise WeightsError(
            f"--teacher {spec}: no such checkpoint file or model name; pass a flowcli .safetensors checkpoint or "
            f"one of {', '.join(models)} (see `flowcli weights list`)"
        )


def adapt_command(
    sources: Annotated[
        list[str],
        typer.Argument(help="Videos, frame folders or quoted globs (stereo: see above).", metavar="SOURCES"),
    ],
    output: Annotated[
        Optional[str],  # a str: a Path would read -o "" as "."
        typer.Option(
            "--output", "-o", metavar="PATH", help="The adapted checkpoint (.safetensors); default: "
            "NAME-adapted.safetensors here, NAME from the first source.", rich_help_panel=_OUT, show_default=False
        ),
    ] = None,
    weights: Annotated[
        Optional[str],
        typer.Option(
            "--weights",
            "-w",
            help="Base model: registry name, checkpoint file, hf://OWNER/REPO/FILE or URL. "
            "Default: the registry default model.",
            rich_help_panel=_MODEL,
            show_default=False,
        ),
    ] = None,
    steps: Annotated[
        Optional[int],
        typer.Option(
            "--steps",
            help="Budget in optimiser steps (default 2000 without --minutes).",
            rich_help_panel=_TRAIN,
            show_default=False,
        ),
    ] = None,
    minutes: Annotated[
        Optional[float],
        typer.Option(
            "--minutes",
            help="Budget in wall-clock minutes (report included).",
            rich_help_panel=_TRAIN,
            show_default=False,
        ),
    ] = None,
    step: Annotated[int, typer.Option("--step", help="Frame gap within a pair.", rich_help_panel=_DATA)] = 1,
    temporal: Annotated[
        bool,
        typer.Option(
            "--temporal",
            help="Triplets with temporal consistency (SelFlow); with --stereo: a stereo "
            "video with Flow2Stereo's constraints.",
            rich_help_panel=_DATA,
        ),
    ] = False,
    stereo: Annotated[
        bool, typer.Option("--stereo", help="Rectified left/right pairs.", rich_help_panel=_DATA)
    ] = False,
    vertical: Annotated[
        Optional[str],
        typer.Option(
            "--vertical",
            help="Stereo: 'penalty' (|v| loss, the default) or 'zero' (also warp with u only).",
            rich_help_panel=_DATA,
            show_default=False,
        ),
    ] = None,
    val_fraction: Annotated[
        float,
        typer.Option(
            "--val-fraction",
            help="Share of the pairs held out for the report: the last pairs of the sequences, shared out by length.",
            rich_help_panel=_DATA,
        ),
    ] = 0.1,
    max_frames: Annotated[
        Optional[int],
        typer.Option(
            "--max-frames",
            help="Use the first N frames (pairs with --stereo) of each sequence: of each video, each folder's own "
            "images, each glob.",
            rich_help_panel=_DATA,
            show_default=False,
        ),
    ] = None,
    gt: Annotated[
        Optional[list[str]],
        typer.Option(
            "--gt",
            help="DATASET:ROOT of a labeled copy (sintel, sintel-clean, sintel-final, kitti2015, "
            "kitti2012, chairs, middlebury, middlebury-stereo, kitti-stereo): EPE before/after in the "
            "report. Repeatable.",
            rich_help_panel=_OUT,
            show_default=False,
        ),
    ] = None,
    teacher: Annotated[
        Optional[list[str]],
        typer.Option(
            "--teacher",
            help="Extra teacher checkpoint for the distillation ensemble. Repeatable.",
            rich_help_panel=_TRAIN,
            show_default=False,
        ),
    ] = None,
    teacher_flip: Annotated[
        bool,
        typer.Option(
            "--teacher-flip",
            help="Add the teachers' predictions on flipped frames to the ensemble.",
            rich_help_panel=_TRAIN,
        ),
    ] = False,
    teacher_scale: Annotated[
        Optional[list[float]],
        typer.Option(
            "--teacher-scale",
            help="Run the teachers on frames resized by this factor (repeatable; several are averaged). "
            "2 sharpens small motions at 4x the teacher's cost. Default: 1.",
            rich_help_panel=_TRAIN,
            show_default=False,
            min=0.25,
            max=4.0,
        ),
    ] = None,
    distill: Annotated[
        bool, typer.Option("--distill/--no-distill", help="Run the distillation stage.", rich_help_panel=_TRAIN)
    ] = True,
    stage1_fraction: Annotated[
        Optional[float],
        typer.Option(
            "--stage1-fraction",
            help="Share of the budget for stage 1 (default: from the footage size); 0 distils the base model directly.",
            rich_help_panel=_TRAIN,
            show_default=False,
        ),
    ] = None,
    distill_only: Annotated[
        bool,
        typer.Option(
            "--distill-only",
            help="No photometric stage or terms: the student learns only the teachers' confident flow "
            "(short for --stage1-fraction 0 --loss census=0 --loss ssim=0 --loss l1=0 --loss smooth2=0; "
            "an explicit --loss still wins). With --teacher-scale 1.5 it lowered KITTI's Fl-all (docs/adapt.md).",
            rich_help_panel=_TRAIN,
        ),
    ] = False,
    anchor: Annotated[
        Optional[float],
        typer.Option(
            "--anchor",
            help="Weight of synthetic replay: each step adds 2 flowcli-synth scenes textured with your training "
            "frames, supervised by their exact flow, so the model keeps what it knew where the photometric "
            "loss is blind (occlusions, blur, flat regions). 0 = off. Same as --loss anchor=W.",
            rich_help_panel=_TRAIN,
            show_default=False,
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Tuples per step (per GPU).", rich_help_panel=_TRAIN)
    ] = 4,
    crop: Annotated[
        str,
        typer.Option(
            "--crop", help="Training crop HEIGHTxWIDTH (rounded down to multiples of 64).", rich_help_panel=_TRAIN
        ),
    ] = "320x448",
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW).", rich_help_panel=_TRAIN)] = 5e-5,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of the data order and transformations.", rich_help_panel=_TRAIN)
    ] = 0,
    loss: Annotated[
        Optional[list[str]],
        typer.Option(
            "--loss",
            help="Loss setting KEY=VALUE, e.g. census=1 ssim=0 smooth2=1 occlusion=fb|range|none scales=0,2,3. "
            "Repeatable.",
            rich_help_panel=_TRAIN,
            show_default=False,
        ),
    ] = None,
    transform: Annotated[
        Optional[list[str]],
        typer.Option(
            "--transform",
            help="Student view setting KEY=VALUE, e.g. superpixel=0 colour=0.5 geometric=0. Repeatable.",
            rich_help_panel=_TRAIN,
            show_default=False,
        ),
    ] = None,
    device: Annotated[
        str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.", rich_help_panel=_MODEL)
    ] = "auto",
    precision: Annotated[
        str,
        typer.Option("--precision", help="auto (bf16 on GPUs with bf16 in hardware: Ampere and later; fp32 "
                     "elsewhere), fp32 or bf16.", rich_help_panel=_MODEL),
    ] = "auto",
    workers: Annotated[
        Optional[int],
        typer.Option(
            "--workers",
            help="Data loading processes (default: 0 on CPU; on GPU 4, fewer where a process has under 5 CPU cores).",
            rich_help_panel=_MODEL,
            show_default=False,
        ),
    ] = None,
    offline: Annotated[
        bool, typer.Option("--offline", help="Use only cached weights.", rich_help_panel=_MODEL)
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing output.", rich_help_panel=_OUT)
    ] = False,
    restart: Annotated[
        bool, typer.Option("--restart", help="Ignore a saved state and start over.", rich_help_panel=_OUT)
    ] = False,
    keep_state: Annotated[
        bool, typer.Option("--keep-state", help="Keep OUTPUT_STEM.adapt/ after success.", rich_help_panel=_OUT)
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON on stdout.", rich_help_panel=_OUT)
    ] = False,
    quiet: Annotated[
        bool, typer.Option("-q", "--quiet", help="No progress bar or report table.", rich_help_panel=_OUT)
    ] = False,
) -> None:
    stdout = sys.stdout
    from flowcli.adapt.losses import LossWeights
    from flowcli.adapt.transforms import TransformConfig

    if not all(sources):  # `flowcli adapt "$FOOTAGE"` with the variable unset: Path("") is the current folder
        raise InputError('a source is "" (empty), which would adapt on the current folder; give videos, folders '
                         "of frames or quoted globs")  # fmt: skip
    output = nonempty_path(output, "-o", "the checkpoint file to write, or leave -o out for NAME-adapted.safetensors")
    if vertical not in (None, "penalty", "zero"):
        raise InputError(f"--vertical must be 'penalty' or 'zero', got {vertical!r}")
    if vertical is not None and not stereo:
        raise InputError(f"--vertical {vertical} has no effect here: it is a --stereo option; drop it")
    if precision not in ("auto", "fp32", "bf16"):
        raise InputError(f"--precision must be auto, fp32 or bf16, got {precision!r}")
    numbers = (("--minutes", minutes), ("--lr", lr), ("--val-fraction", val_fraction),
               ("--stage1-fraction", stage1_fraction))  # fmt: skip
    for flag, value in numbers:  # (AdaptConfig would name its field, "lr", and allow null)
        if value is not None and not math.isfinite(value):
            raise InputError(f"{flag} must be a finite number, got {value:g}")
    losses = _parse_settings(loss, "--loss", LossWeights)
    if distill_only:
        if stereo or not distill:
            raise InputError("--distill-only needs the distillation stage: drop --no-distill / --stereo")
        if stage1_fraction not in (None, 0):
            raise InputError(f"--distill-only skips stage 1, but --stage1-fraction is {stage1_fraction:g}; drop one")
        stage1_fraction = 0.0
        losses = {"census": 0.0, "ssim": 0.0, "l1": 0.0, "smooth1": 0.0, "smooth2": 0.0, **losses}
    if vertical == "zero":
        losses["zero_vertical"] = True
    if anchor is not None:
        if not (math.isfinite(anchor) and anchor >= 0):  # nan fails every comparison
            raise InputError(f"--anchor must be a number, 0 or more, got {anchor:g}")
        losses["anchor"] = anchor
    transforms = _parse_settings(transform, "--transform", TransformConfig)
    if teacher and distill and not stereo:  # otherwise the run refuses --teacher as having no effect
        _check_teachers(teacher)

    from flowcli.adapt.trainer import AdaptConfig, adapt

    if output is not None and output.is_dir() and output.suffix != ".safetensors":  # `-o models/`
        raise OutputError(
            f"-o {output} is a folder; give the checkpoint's file name, e.g. -o {output / default_output(sources)}"
        )
    output = output or default_output(sources)
    cfg = AdaptConfig(
        sources=list(sources), output=str(output), weights=weights, steps=steps, minutes=minutes, step=step,
        temporal=temporal, stereo=stereo, batch_size=batch_size, crop=_parse_crop(crop), lr=lr, seed=seed,
        val_fraction=val_fraction, distill=distill, stage1_fraction=stage1_fraction, teachers=list(teacher or []),
        teacher_flip=teacher_flip, teacher_scales=tuple(teacher_scale or (1.0,)), max_frames=max_frames,
        losses=losses, transforms=transforms,
        gt=list(gt or []), device=device, precision=precision, workers=workers, overwrite=overwrite,
        offline=offline, keep_state=keep_state, restart=restart,
    )  # fmt: skip
    result = adapt(cfg, quiet=quiet)
    if "heldout" not in result:  # not the main process of a multi-GPU run
        return
    if json_output:
        stdout.write(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2) + "\n")
    if not quiet:
        print_report(result)


def default_output(sources: list[str]) -> Path:
    """NAME-adapted.safetensors in the current folder, NAME from the first source: a video's or a .txt list's
    file name without its extension, a folder's name, a glob's folder (`shots/*.png` -> shots)."""
    first = Path(sources[0]).expanduser() if sources else Path("footage")  # a quoted '~/v1.2' is a folder
    # a glob's pattern parts; an existing `take [2]/` or `clip [final].mp4` is a name, not a pattern
    while any(char in first.name for char in "*?[") and not first.exists():
        first = first.parent
    resolved = first.resolve()
    name = resolved.name if resolved.is_dir() or not resolved.suffix else resolved.stem
    return Path(f"{name or 'footage'}-adapted.safetensors")


def _row(table, name: str, before, after) -> None:
    def fmt(v):
        return "-" if v is None else f"{v:.4f}"

    change = ""
    if isinstance(before, (int, float)) and isinstance(after, (int, float)) and before:
        change = f"{100 * (after - before) / abs(before):+.1f}%"
    table.add_row(name, fmt(before), fmt(after), change)


def print_report(result: dict) -> None:
    from rich.table import Table
    from rich.text import Text

    from flowcli.console import say, stderr

    # the heading and the report's path on lines of their own, not wrapped by rich: a table's title is wrapped to
    # the table's width, and a path longer than the line was cut mid-name ("street_" / "scene_0001")
    heading = Text(f"flowcli adapt: {result['steps']} steps -> {result['output']}", style="table.title")
    stderr.print(heading, soft_wrap=True)
    held = result["heldout"]
    table = Table()
    for column in ("metric", "before", "after", "change"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    before, after = held.get("before") or {}, held.get("after") or {}
    on_training = held.get("measured_on") == "training"
    for key in after:
        _row(
            table,
            f"{'training-pair' if on_training else 'held-out'} {key} "
            f"({held['tuples']} pair{'s' if held['tuples'] != 1 else ''})",
            before.get(key),
            after.get(key),
        )
    gt = result.get("gt") or {}
    for dataset, metrics in (gt.get("after") or {}).items():
        for key, value in metrics.items():
            _row(table, f"{dataset} {key}", ((gt.get("before") or {}).get(dataset) or {}).get(key), value)
    stderr.print(table)
    if on_training:
        say("no held-out pair was measured: the training-pair rows are pairs the model trained on, not unseen frames")
    say(f"report: {result.get('report')}")


def register(app: typer.Typer) -> None:
    app.command("adapt", help=HELP, no_args_is_help=True)(adapt_command)
