"""Acceptance experiment for `flowcli adapt`: does self-supervised adaptation on the benchmark's own
frames (no labels used for training) lower the EPE on Sintel (and on KITTI with --dataset kitti)?

Protocol (fixed so numbers are comparable run to run):
- footage: Sintel's training frames of both passes (`flow/sintel/training/clean` and `final`, one
  sequence per scene) plus `footage/sintel_frames`; KITTI: `flow/kitti2015/training/image_2` plus
  `footage/kitti_frames`. Paths are relative to --data (default ../shared/data).
- base model: --weights (default: the registry default model), evaluated with flowcli.evaluate on
  the labeled copy (sintel-clean + sintel-final, or kitti2015) before and after; held-out
  photometric error and occluded fraction as `flowcli adapt` reports them.
- adaptation: `flowcli.adapt.adapt` with the CLI defaults unless overridden here: --steps (default
  3000), batch 4, crop 320x448, lr 5e-5, seed 0; stages split automatically.
- output: a markdown table on stdout (metric, before, after, change) and, with --json, every number.

    python benchmarks/adapt_sintel.py --device cuda                       # Sintel, default model
    python benchmarks/adapt_sintel.py --device cuda --dataset kitti
    python benchmarks/adapt_sintel.py --weights run/model.safetensors --steps 5000 --json out.json
    python benchmarks/adapt_sintel.py --smoke                             # plumbing check (tiny model, CPU)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flowcli.errors import FlowcliError  # noqa: E402 (after the sys.path insert)

DEFAULT_DATA = REPO.parent / "shared" / "data"
SETUPS = {
    "sintel": {
        "sources": ["flow/sintel/training/clean", "flow/sintel/training/final", "footage/sintel_frames"],
        "gt": ["sintel-clean:flow/sintel", "sintel-final:flow/sintel"],
    },
    "kitti": {
        "sources": ["flow/kitti2015/training/image_2", "footage/kitti_frames"],
        "gt": ["kitti2015:flow/kitti2015"],
    },
}
HEADLINE = ("epe", "epe_occ", "epe_noc", "fl_all", "occ_f1")


def smoke_weights(folder: Path) -> str:
    """A tiny random model: checks that the pipeline runs, says nothing about accuracy."""
    import torch

    from flowcli.checkpoint import save_checkpoint
    from flowcli.models.pwc import FlowNet, FlowNetConfig

    torch.manual_seed(0)
    config = FlowNetConfig(
        pyramid_channels=(8,) * 6, decoder_channels=(8, 8), context_channels=(8,), context_dilations=(1,)
    )
    path = folder / "tiny.safetensors"
    save_checkpoint(FlowNet(config), path, provenance={"note": "smoke test, random init"})
    return str(path)


def config_for(args, data: Path, output: Path, **overrides):
    from flowcli.adapt import AdaptConfig

    setup = SETUPS[args.dataset]
    settings = dict(
        sources=[str(data / s) for s in setup["sources"]],
        output=str(output),
        weights=args.weights,
        steps=args.steps if args.minutes is None else None,
        minutes=args.minutes,
        batch_size=args.batch_size,
        crop=tuple(int(v) for v in args.crop.split("x")),
        lr=args.lr,
        seed=args.seed,
        gt=[f"{g.split(':')[0]}:{data / g.split(':', 1)[1]}" for g in setup["gt"]],
        device=args.device,
        precision=args.precision,
        overwrite=True,
        restart=True,
        losses={
            # adapt_ablation.py's parser has neither option: its variants set the losses themselves
            **({"anchor": args.anchor} if getattr(args, "anchor", None) else {}),
            **({"occlusion": args.occlusion} if getattr(args, "occlusion", None) else {}),
        },
    )
    if args.smoke:
        settings.update(steps=2, minutes=None, batch_size=1, crop=(64, 64), max_val=1, teacher_margin=16)
    settings.update(overrides)
    return AdaptConfig(**settings)


def table(result: dict) -> list[str]:
    def row(name, before, after):
        change = (
            f"{100 * (after - before) / abs(before):+.1f}%" if before not in (None, 0) and after is not None else ""
        )
        def fmt(v):
            return "-" if v is None else f"{v:.4f}"
        return f"| {name} | {fmt(before)} | {fmt(after)} | {change} |"

    lines = ["| metric | before | after | change |", "|---|---:|---:|---:|"]
    gt = result.get("gt") or {}
    for dataset, metrics in (gt.get("after") or {}).items():
        for key in HEADLINE:
            if key in metrics:
                lines.append(row(f"{dataset} {key}", (gt["before"].get(dataset) or {}).get(key), metrics[key]))
    held = result["heldout"]
    measured = "training-pair" if held.get("measured_on") == "training" else "held-out"  # nothing held out
    for key, value in (held.get("after") or {}).items():
        lines.append(row(f"{measured} {key}", (held.get("before") or {}).get(key), value))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(SETUPS), default="sintel")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    parser.add_argument("--weights", default=None, help="base model (default: the registry default model)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--minutes", type=float, default=None, help="budget in minutes instead of --steps")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop", default="320x448")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--anchor", type=float, default=0.0, help="weight of synthetic replay (flowcli adapt --anchor)")
    parser.add_argument(
        "--occlusion", choices=("fb", "range", "none"), default=None,
        help="occlusion mask of the photometric term (flowcli adapt --loss occlusion=...; default: adapt's)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--out", type=Path, default=None, help="adapted checkpoint (default: a temp folder)")
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    parser.add_argument("--smoke", action="store_true", help="tiny random model, 2 steps: plumbing check only")
    args = parser.parse_args()
    if args.json:  # made now: the report is written after the whole run
        args.json.parent.mkdir(parents=True, exist_ok=True)

    from flowcli.adapt import adapt

    data = args.data.resolve()
    if not data.is_dir():
        sys.exit(f"error: data folder {data} not found; pass --data")
    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            args.weights = smoke_weights(Path(tmp))
        output = args.out or Path(tmp) / f"adapted_{args.dataset}.safetensors"
        result = adapt(config_for(args, data, output), quiet=False)
    print(f"\n## flowcli adapt on {args.dataset} ({result['steps']} steps, base {args.weights or 'default model'})\n")
    print("\n".join(table(result)))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    try:
        main()
    except FlowcliError as error:  # a --data folder without the footage, an unknown model: one line, no traceback
        sys.exit(f"error: {error}")
