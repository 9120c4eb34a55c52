"""`flowcli eval`: score a model, or prediction files from any tool, on a benchmark in its standard layout."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Optional

import typer

from flowcli.cli.options import check_precision_name, check_scale, device_and_precision
from flowcli.errors import InputError

CHOICES = (
    "sintel-clean",
    "sintel-final",
    "sintel",
    "kitti2015",
    "kitti2012",
    "chairs",
    "middlebury",
    "middlebury-stereo",
    "kitti-stereo",
)

FLOW_COLUMNS = [
    ("epe", "EPE", "{:.3f}"),
    ("epe_noc", "EPE noc", "{:.3f}"),
    ("epe_occ", "EPE occ", "{:.3f}"),
    ("fl_all", "Fl-all %", "{:.2f}"),
    ("fl_noc", "Fl-noc %", "{:.2f}"),
    ("acc_1px", "<1px %", "{:.1f}"),
    ("acc_3px", "<3px %", "{:.1f}"),
    ("acc_5px", "<5px %", "{:.1f}"),
    ("occ_f1", "occ F1", "{:.3f}"),
    ("occ_f1_learned", "learned F1", "{:.3f}"),  # only models with an occlusion mask of their own (MaskFlowNet)
    ("density", "density", "{:.1%}"),
    ("seconds", "s/pair", "{:.2f}"),
]
STEREO_COLUMNS = [
    ("epe", "EPE", "{:.3f}"),
    ("bad_1", "bad-1 %", "{:.1f}"),
    ("bad_2", "bad-2 %", "{:.1f}"),
    ("bad_4", "bad-4 %", "{:.1f}"),
    ("d1", "D1 %", "{:.2f}"),
    ("vert_abs", "|v| px", "{:.2f}"),
    ("vert_gt1", "|v|>1 %", "{:.1f}"),
    ("density", "density", "{:.1%}"),
    ("seconds", "s/pair", "{:.2f}"),
]


EVAL_HELP = (
    "Score a model, or the flow or disparity files of any tool (--predictions), on a benchmark: EPE, Fl-all and "
    "accuracy for flow; EPE, bad-N and D1 for stereo. Fl-all and D1 are KITTI 2015's outliers (error > 3 px and "
    "> 5 % of the true motion) on every dataset, KITTI 2012 too, whose own table counts > 3 px alone (its Out-All "
    "is 100 - acc_3px, over the flow_occ pixels).\n\n"
    "Prints a table per item and the mean over items on stderr (KITTI 2012's convention), plus pixel-weighted EPE, "
    "Fl-all, Fl-noc and D1 (KITTI 2015's); --json prints every number as one JSON object on stdout, with keys "
    "weights, model (checkpoint path), device, scale, precision and results: per dataset, per_item (name, width, "
    "height, n_valid, "
    "seconds and the scores: epe, fl_all, acc_1px, acc_3px, acc_5px for flow, with epe_noc, epe_occ, fl_noc (Fl-all "
    "over the non-occluded pixels), their pixel counts n_noc and n_occ, and occ_f1 (not with --no-occlusion) where "
    "the dataset has ground-truth occlusion, and occ_f1_learned (the table's learned F1) for a model that predicts "
    "its own occlusion mask; epe, bad_1, bad_2, bad_4, d1, vert_abs, vert_gt1 for stereo; null where nothing was "
    "scored) and mean (their means over items; epe_px, fl_all_px, d1_px weighted by n_valid, epe_noc_px and "
    "fl_noc_px by n_noc, epe_occ_px by n_occ, pooling the pixels of every item; n_valid, n_noc, n_occ summed; "
    "items).\n\n"
    "--predictions DIR scores files instead of running a model, with the same code and metrics. The file of an item "
    "is found by the item's name (alley_1/frame_0002 in Sintel, 00001 in Chairs, 000010_10 in KITTI, Dimetrodon in "
    "Middlebury, tsukuba in Middlebury stereo) as DIR/NAME.EXT, then DIR/NAME_flow.EXT (what flowcli estimate "
    "writes) and, for stereo, DIR/NAME_disp.EXT (flowcli stereo), then by the item's first frame as flowcli "
    "estimate names its outputs: DIR/STEM_flow.EXT and DIR/FOLDER/STEM_flow.EXT (Chairs 00001: 00001_img1_flow.flo; "
    "Middlebury Dimetrodon: Dimetrodon/frame10_flow.flo), EXT in flo, png (KITTI 16-bit flow; for stereo a "
    "KITTI 16-bit disparity PNG), npy, pfm: exactly one must exist for every item scored, at the size of its ground "
    "truth; a file that two items would share is refused. Every pixel needs a finite value, except on KITTI "
    "(kitti2015, kitti2012, kitti-stereo), which fills unknown pixels (valid bit 0, disparity 0, .flo >= 1e9, NaN, "
    "inf) by its devkit's background interpolation and reports density, the share of valid ground-truth pixels the "
    "file gave (per item, mean over items, density_px over pixels; a column when below 100 %). Stereo "
    "predictions are a disparity map (1 channel, positive px) or a flow whose -u is the disparity (2 channels: |v| "
    "is scored too). The occlusion mask beside the flow (STEM_occ.png next to STEM_flow.EXT, or DIR/NAME_occ.png; "
    "255 = occluded, as estimate --occlusion writes), where present, is scored as occ F1. -d sintel is refused: "
    "give one pass. --weights, "
    "--device, --scale, --precision and --offline do not apply; --json gives predictions (the folder) in place of "
    "weights, model, device, scale and precision, and no seconds.\n\n"
    "Exit codes: 0 ok, 1 other error, 2 input error (unknown dataset, a --root without its layout, a missing, "
    "ambiguous or unusable prediction), 3 output error (stdout cannot be written: --json into a full disk), "
    "4 weights error, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).\n\n"
    "Examples:\n\n"
    "  flowcli eval --dataset sintel --root ../shared/data/flow/sintel --max-items 3\n\n"
    "  flowcli eval -d kitti2015 -r ../shared/data/flow/kitti2015 -w flowcli-pwc-synth --json > kitti.json\n\n"
    "  flowcli estimate ../shared/data/flow/sintel/training/clean/*/ --flo --occlusion --name '{source}/{frame1}' "
    "-o preds    (preds/alley_1/frame_0002_flow.flo ...)\n\n"
    "  flowcli eval -d sintel-clean -r ../shared/data/flow/sintel --predictions preds"
)


def _format(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


def _table(report, stereo: bool, keys: list[str] | None = None):
    """The per-item table of `report`; `keys`: only these score columns (default: every one that has values)."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    def shown(key: str) -> bool:  # density only where some prediction left pixels to KITTI's filling
        values = [r[key] for r in report.per_item if key in r]
        return bool(values) and (key != "density" or any(v is not None and v < 1 for v in values))

    wanted = STEREO_COLUMNS if stereo else FLOW_COLUMNS
    columns = [c for c in wanted if shown(c[0]) and (keys is None or c[0] in keys)]
    table = Table(title=f"{report.dataset} ({len(report.per_item)} items)", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("item", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)
    for _, label, _ in columns:
        table.add_column(label, justify="right", no_wrap=True)
    for row in report.per_item:
        cells = [_format(row.get(key), fmt) for key, _, fmt in columns]
        table.add_row(escape(row["name"]), f"{row['width']}x{row['height']}", *cells)  # a scene named [b]
    mean = report.mean
    table.add_row("mean (items)", "", *[_format(mean.get(key), fmt) for key, _, fmt in columns], style="bold")
    if any(f"{key}_px" in mean for key, *_ in columns):
        cells = [_format(mean.get(f"{key}_px"), fmt) if f"{key}_px" in mean else "" for key, _, fmt in columns]
        table.add_row("mean (pixels)", "", *cells, style="dim")
    return table


def _print_report(report, stereo: bool) -> None:
    """The table on stderr, in parts that fit on a narrow terminal (`console.print_table`)."""
    from flowcli.console import print_table, stderr

    columns = [c[0] for c in (STEREO_COLUMNS if stereo else FLOW_COLUMNS)]
    print_table(stderr, lambda keys: _table(report, stereo, keys), columns)


def eval_command(
    dataset: str = typer.Option(
        ...,
        "--dataset",
        "-d",
        help="Benchmark: " + ", ".join(CHOICES) + " ('sintel' runs the clean and final passes; 'chairs' scores "
        "the validation pairs of FlyingChairs_train_val.txt when that file is next to data/, else every pair).",
        show_default=False,
    ),
    root: str = typer.Option(  # a str: a Path would read an empty --root "" (an unset variable) as "."
        ...,
        "--root",
        "-r",
        metavar="DIR",
        help="The dataset folder in its standard layout, e.g. --root ../shared/data/flow/sintel "
        "(holding training/clean, training/flow...) or --root ~/datasets/KITTI2015.",
        show_default=False,
    ),
    predictions: Optional[str] = typer.Option(  # a str, as --root
        None,
        "--predictions",
        metavar="DIR",
        help="Score the files in this folder (one per item, named after it, see above) instead of running a model.",
        show_default=False,
    ),
    weights: Optional[str] = typer.Option(
        None, "--weights", "-w", help="Registry name, hf:// spec, URL or checkpoint path (default: the default model)."
    ),
    max_items: Optional[int] = typer.Option(None, "--max-items", "-n", min=1, help="Evaluate only the first N items."),
    # device, scale and precision default to None so that giving them with --predictions can be refused
    device: Optional[str] = typer.Option(
        None, "--device", help="auto (the default), cpu, cuda, cuda:N or mps.", show_default=False
    ),
    occlusion: bool = typer.Option(
        True,
        "--occlusion/--no-occlusion",
        help="Also score forward-backward occlusion (with --predictions: the NAME_occ.png masks) where GT occlusion "
        "exists.",
    ),
    scale: Optional[float] = typer.Option(
        None,
        "--scale",
        help="Resize frames by this factor for the network (as estimate --scale; default 1).",
        show_default=False,
    ),
    precision: Optional[str] = typer.Option(
        None,
        "--precision",
        help="fp32 (the default), auto (fp16 on CUDA, fp32 elsewhere, as in estimate and stereo), fp16 or bf16 "
        "(autocast; fp16 and bf16 are for GPUs: scores may differ a little).",
        show_default=False,
    ),
    offline: bool = typer.Option(False, "--offline", help="Never download weights; use the cache only."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object with every result on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or table on stderr."),
):
    """Score a model or prediction files on a benchmark (help text: EVAL_HELP)."""
    from flowcli.data import STEREO_DATASETS, make_dataset
    from flowcli.evaluation import evaluate
    from flowcli.models import load_model

    name = dataset.lower().strip()
    if name not in CHOICES:
        raise InputError(f"unknown dataset '{dataset}'; choose one of {', '.join(CHOICES)}")
    if predictions is not None:
        if not predictions:
            raise InputError('--predictions "" is empty, which would read the current folder; give the folder '
                             "holding one file per item")  # fmt: skip
        model_options = {"--weights": weights, "--device": device, "--scale": scale, "--precision": precision}
        given = [flag for flag, value in model_options.items() if value is not None] + ["--offline"] * offline
        if given:
            raise InputError(
                f"{' and '.join(given)} {'applies' if len(given) == 1 else 'apply'} to a model, and --predictions "
                "runs none; leave out one or the other"
            )
        if name == "sintel":
            raise InputError("--predictions scores one Sintel pass; give -d sintel-clean or -d sintel-final")
    device = "auto" if device is None else device  # --device "" (an unset variable) is refused, not the default
    scale = 1.0 if scale is None else scale
    check_scale(scale)
    precision = "fp32" if precision is None else precision
    check_precision_name(precision)
    names = ["sintel-clean", "sintel-final"] if name == "sintel" else [name]
    if not root:
        raise InputError(f'--root "" is empty, which would read the current folder; give the {names[0]} dataset '
                         "folder in its standard layout")  # fmt: skip
    root = Path(root).expanduser()  # as --predictions: '--root=~/datasets/KITTI2015' reaches us unexpanded
    if not root.is_dir():
        raise InputError(f"--root {root} is not a folder; give the {names[0]} dataset folder in its standard layout")
    if predictions is not None:
        _eval_predictions(name, root, Path(predictions), max_items=max_items, occlusion=occlusion, quiet=quiet,
                          as_json=as_json)  # fmt: skip
        return
    for each in names:  # a root without the layout (or without sintel's final pass) fails before any scoring
        with warnings.catch_warnings():  # evaluate lists it again and warns then, once
            warnings.simplefilter("ignore")
            make_dataset(each, root)
    # the precision that runs: fp16 on the CPU is fp32 (with a warning), and --json must say so
    torch_device, precision = device_and_precision(device, precision)
    model = load_model(weights, device=torch_device, offline=offline, quiet=quiet)
    reports = []
    for each in names:
        report = evaluate(
            model, each, root, max_items=max_items, occlusion=occlusion, device=torch_device, progress=not quiet,
            scale=scale, precision=precision,
        )
        reports.append(report)
        if not quiet:
            _print_report(report, each in STEREO_DATASETS)
    if as_json:
        payload = {
            "weights": weights or getattr(model, "checkpoint_path", None),
            "model": getattr(model, "checkpoint_path", None),
            "device": str(torch_device),
            "scale": scale,
            "precision": precision,
            "results": {
                r.dataset: {k: v for k, v in r.to_dict().items() if k not in ("dataset", "model")} for r in reports
            },
        }
        typer.echo(json.dumps(payload, allow_nan=False))


def _eval_predictions(
    name: str, root: Path, predictions: Path, *, max_items: int | None, occlusion: bool, quiet: bool, as_json: bool
) -> None:
    from flowcli.data import STEREO_DATASETS
    from flowcli.evaluation import evaluate_predictions

    report = evaluate_predictions(name, root, predictions, max_items=max_items, occlusion=occlusion, progress=not quiet)
    if not quiet:
        _print_report(report, name in STEREO_DATASETS)
    if as_json:
        result = {k: v for k, v in report.to_dict().items() if k not in ("dataset", "model")}
        typer.echo(json.dumps({"predictions": report.model, "results": {report.dataset: result}}, allow_nan=False))


def register(app: typer.Typer) -> None:
    app.command("eval", help=EVAL_HELP)(eval_command)
