"""`flowcli train`: supervised training on synthetic scenes and labelled datasets, resumable."""

from __future__ import annotations

from pathlib import Path

import typer

from flowcli.console import say, warn

# The flag of each TrainConfig field that is not --field-name.
_FLAGS = {"out_dir": "--out", "init_weights": "--init", "datasets": "--dataset", "eval_datasets": "--eval"}


_HELP_PARAGRAPHS = [
    "Train a flow network on flowcli's synthetic scenes (exact flow, occlusion, stereo), and on labelled datasets.",
    "With --dataset, random crops of a benchmark's training items (colour-jittered, flow pairs mirrored half the "
    "time; sparse KITTI ground truth included: pixels without it take no part) are mixed with the synthetic scenes,"
    " each source drawn in proportion to its weight; --synth-weight 0 trains on the datasets alone, e.g. to "
    "fine-tune a model on Sintel as PWC-Net does, or a model from flowcli adapt (supervised fine-tuning after "
    "self-supervised pre-training). --eval scores the weights (the moving average with --ema-decay) during the run.",
    "Interrupt with Ctrl-C at any time: the state is saved and the same command resumes it, bit for bit on the CPU "
    "(on a GPU to within float rounding; a resume may change --checkpoint-every, --eval and --eval-every, which "
    "cannot change the result; any other difference is refused, naming the settings). The weights are in "
    "OUT/last.safetensors (and OUT/ema.safetensors with --ema-decay), usable anywhere with --weights.",
    "Exit codes: 0 ok (or a run already finished), 1 other error (an interrupted run: the message says how to "
    "resume), 2 input error (a bad setting, config file, texture or dataset folder), 3 output error (the run "
    "folder), 4 weights error (--init).",
    "Each option's default is in its help: without --config or flags a run is full size (20000 steps of 8 pairs "
    "at 320x448, into runs/flow).",
    "Examples:",
    "  flowcli train -c recipes/flowcli-pwc-synth.json --out runs/mine",
    "  flowcli train --init flowcli-pwc-synth --dataset sintel:MPI-Sintel/training --dataset "
    "kitti2015:KITTI/training:0.5 --synth-weight 0 --lr 5e-5 --steps 20000 --eval chairs:FlyingChairs_release "
    "--eval-every 1000 --out runs/sintel-ft",
]
HELP = "\n\n".join(_HELP_PARAGRAPHS)


def train(
    config: str = typer.Option(  # a str: a Path would read --config "" as "."
        None, "--config", "-c", metavar="PATH", help="JSON recipe (see recipes/); flags override it."
    ),
    out: str = typer.Option(
        None, "--out", "-o", help="Run folder: state.pt (resume), last.safetensors, config.json (default runs/flow)."
    ),
    steps: int = typer.Option(None, help="Total optimiser steps (the one-cycle schedule spans them; default 20000)."),
    batch_size: int = typer.Option(None, help="Pairs per step (default 8)."),
    lr: float = typer.Option(None, help="Peak learning rate of the one-cycle schedule (AdamW; default 4e-4)."),
    size: str = typer.Option(None, help="Training crop HEIGHTxWIDTH, multiples of 64 (default 320x448)."),
    seed: int = typer.Option(
        None,
        help="Seed for the model init and the data stream (runs are deterministic), between -10^12 and 10^12 "
        "(default 0).",
    ),
    textures: list[str] = typer.Option(
        None,
        "--textures",
        help="Real images to texture scenes: image files, folders of images (every 8th), videos (every 8th frame); "
        "at most 400 in all. Repeatable.",
    ),
    stereo_fraction: float = typer.Option(None, help="Share of purely horizontal (stereo) scenes (default 0.2)."),
    init_weights: str = typer.Option(None, "--init", help="Start from these weights (name or path) to fine-tune."),
    datasets: list[str] = typer.Option(
        None,
        "--dataset",
        help="Also train on a labelled dataset, NAME:ROOT or NAME:ROOT:WEIGHT (sintel, sintel-clean, sintel-final, "
        "kitti2015, kitti2012, chairs (its training split), middlebury, middlebury-stereo, kitti-stereo): random "
        "crops of its items, mixed with the synthetic scenes by weight. Repeatable.",
    ),
    synth_weight: float = typer.Option(
        None, help="Weight of the synthetic scenes among the sources (default 1; 0: the --dataset ones alone)."
    ),
    eval_datasets: list[str] = typer.Option(
        None,
        "--eval",
        help="Score the weights on a labelled dataset, NAME:ROOT (as flowcli eval), every --eval-every steps; "
        "the scores go to the progress log and OUT/eval.json. Repeatable.",
    ),
    eval_every: int = typer.Option(None, help="Steps between evaluations (default: at each checkpoint)."),
    checkpoint_every: int = typer.Option(
        None, help="Save the resumable state every N steps (default 200; may change when a run resumes)."
    ),
    ema_decay: float = typer.Option(
        None, help="Also keep an exponential moving average of the weights (e.g. 0.999), saved as OUT/ema.safetensors."
    ),
    stop_after: int = typer.Option(None, help="Stop after this step (the schedule still assumes --steps)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace the weights in OUT of a finished run or of another config (a run of the same config, with "
        "its state.pt, resumes; --checkpoint-every, --eval and --eval-every may differ).",
    ),
) -> None:
    from flowcli.cli.options import nonempty_path
    from flowcli.errors import InputError
    from flowcli.train.trainer import TrainConfig, setting_problem
    from flowcli.train.trainer import train as run_training

    config = nonempty_path(config, "--config", "a JSON recipe such as recipes/flowcli-pwc-synth.json, or leave it out")
    if textures and not all(textures):  # `--textures "$DIR"` with the variable unset: Path("") is the current folder
        raise InputError('--textures "" is empty, which would take the images of the current folder; give image '
                         "files, folders of images or videos")  # fmt: skip
    if init_weights is not None and not init_weights.strip():  # `--init "$BASE"` with the variable unset
        raise InputError('--init "" is empty, which would train from scratch; give the weights to fine-tune (a '
                         "model name, hf:// spec, URL or .safetensors file), or leave --init out")  # fmt: skip
    height = width = None
    if size is not None:
        try:
            height, width = (int(v) for v in size.lower().split("x"))
        except ValueError:
            raise InputError(f"--size {size!r} is not HEIGHTxWIDTH, e.g. 256x320") from None
        if min(height, width) <= 0 or height % 64 or width % 64:
            raise InputError(f"--size {size}: height and width must be positive multiples of 64, e.g. 256x320")
    overrides = dict(
        out_dir=out, steps=steps, batch_size=batch_size, lr=lr, height=height, width=width, seed=seed,
        textures=list(textures) if textures else None, stereo_fraction=stereo_fraction,
        init_weights=init_weights, checkpoint_every=checkpoint_every, ema_decay=ema_decay,
        datasets=list(datasets) if datasets else None, synth_weight=synth_weight,
        eval_datasets=list(eval_datasets) if eval_datasets else None, eval_every=eval_every,
    )
    overrides = {name: value for name, value in overrides.items() if value is not None}
    for name, value in overrides.items():
        problem = setting_problem(name, value)
        if problem:
            raise InputError(f"{_FLAGS.get(name, '--' + name.replace('_', '-'))} {problem}")
    cfg = TrainConfig.from_file(config, **overrides) if config is not None else TrainConfig(**overrides)
    if cfg.eval_every and not cfg.eval_datasets:
        warn(
            "eval_every has no effect without evaluation data: add --eval NAME:ROOT (\"eval_datasets\" in a "
            f"config), or score the run's weights with flowcli eval --weights {Path(cfg.out_dir) / 'last.safetensors'}"
        )
    summary = run_training(cfg, quiet=quiet, stop_after=stop_after, overwrite=overwrite)
    weights = summary["checkpoint"] + (f" (moving average: {summary['ema_checkpoint']})" if cfg.ema_decay else "")
    say(f"done: {summary['steps']} steps, weights in {weights}")


def register(app: typer.Typer) -> None:
    app.command("train", help=HELP)(train)
