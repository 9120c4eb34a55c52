"""Ablation of `flowcli adapt`'s components on the acceptance setup of benchmarks/adapt_sintel.py.

Every variant starts from the same base weights, sees the same footage and budget (--steps,
default 1500) and seed, and changes one thing relative to `full` (the CLI defaults):

  photometric-unmasked  no distillation, photometric term not masked by occlusion
  photometric-only   no distillation stage
  no-census          photometric term = SSIM + L1 only
  no-occlusion       the photometric term is not masked by forward-backward occlusion
  no-smoothness      no edge-aware smoothness
  smooth-1st         first-order smoothness instead of second-order
  single-scale       photometric loss at full resolution only
  crop-only          distillation with DDFlow's crops only (no superpixels, colour, geometry)
  no-superpixels     distillation without SelFlow's superpixel occlusions
  no-colour-geom     distillation without DistillFlow's colour and geometric transforms
  temporal           three-frame temporal consistency (SelFlow)
  flip-ensemble      teacher = stage-1 model on original and flipped frames (DistillFlow)

Read as a ladder, five of them add one component at a time (`--variants ladder`):
photometric-unmasked -> photometric-only (+ occlusion masking) -> crop-only (+ distillation with crops)
-> no-colour-geom (+ superpixel hallucination) -> full (+ colour/geometric transforms).

The table (markdown, stdout) has one row per variant: EPE on each labeled dataset and the held-out
photometric error (photo_all) and occluded fraction after adaptation, plus the base model's row.

    python benchmarks/adapt_ablation.py --device cuda                     # Sintel
    python benchmarks/adapt_ablation.py --device cuda --dataset kitti
    python benchmarks/adapt_ablation.py --variants full,photometric-only --steps 500
    python benchmarks/adapt_ablation.py --smoke --variants full,no-census  # plumbing check (tiny, CPU)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from adapt_sintel import DEFAULT_DATA, SETUPS, config_for, smoke_weights  # noqa: E402 (after the sys.path insert)

from flowcli.errors import FlowcliError  # noqa: E402

_NO_TRANSFORMS = {"superpixel": 0.0, "colour": 0.0, "geometric": 0.0}
VARIANTS: dict[str, dict] = {
    "full": {},
    "photometric-unmasked": {"distill": False, "losses": {"occlusion": "none"}},
    "photometric-only": {"distill": False},
    "no-census": {"losses": {"census": 0.0, "ssim": 0.85, "l1": 0.15}},
    "no-occlusion": {"losses": {"occlusion": "none"}},
    "no-smoothness": {"losses": {"smooth1": 0.0, "smooth2": 0.0}},
    "smooth-1st": {"losses": {"smooth1": 0.5, "smooth2": 0.0}},
    "single-scale": {"losses": {"scales": (0,)}},
    "crop-only": {"transforms": _NO_TRANSFORMS},
    "no-superpixels": {"transforms": {"superpixel": 0.0}},
    "no-colour-geom": {"transforms": {"colour": 0.0, "geometric": 0.0}},
    "temporal": {"temporal": True},
    "flip-ensemble": {"teacher_flip": True},
}
LADDER = ["photometric-unmasked", "photometric-only", "crop-only", "no-colour-geom", "full"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(SETUPS), default="sintel")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--weights", default=None)
    parser.add_argument(
        "--variants", default=",".join(VARIANTS),
        help="comma-separated subset of: " + ", ".join(VARIANTS) + "; or ladder (the five cumulative rows)",
    )
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--minutes", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop", default="320x448")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="tiny random model, 2 steps per variant")
    args = parser.parse_args()
    if args.json:  # made now: the report is written after the whole run
        args.json.parent.mkdir(parents=True, exist_ok=True)
    names = LADDER if args.variants == "ladder" else [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        sys.exit(f"error: unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")

    from flowcli.adapt import adapt

    data = args.data.resolve()
    if not data.is_dir():
        sys.exit(f"error: data folder {data} not found; pass --data")
    results, base_row = {}, None
    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            args.weights = smoke_weights(Path(tmp))
        for name in names:
            started = time.time()
            cfg = config_for(args, data, Path(tmp) / f"{name}.safetensors", **VARIANTS[name])
            result = adapt(cfg, quiet=True)
            result.pop("history", None)
            result["wall_s"] = round(time.time() - started, 1)
            results[name] = result
            base_row = base_row or {"gt": (result.get("gt") or {}).get("before") or {},
                                    "heldout": result["heldout"]["before"] or {}}  # fmt: skip
            print(f"{name}: done in {result['wall_s']} s", file=sys.stderr)

    datasets = list(base_row["gt"]) if base_row else []
    header = ["variant", *[f"{d} EPE" for d in datasets], "held-out photo_all", "held-out occ", "s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]

    def fmt(v):
        return "-" if v is None else f"{v:.3f}"

    if base_row:
        cells = [fmt(base_row["gt"][d].get("epe")) for d in datasets]
        lines.append(
            "| base (no adaptation) | "
            + " | ".join(cells + [fmt(base_row["heldout"].get("photo_all")), fmt(base_row["heldout"].get("occ")), "-"])
            + " |"
        )
    for name, result in results.items():
        gt_after = (result.get("gt") or {}).get("after") or {}
        held = result["heldout"]["after"] or {}
        cells = [fmt((gt_after.get(d) or {}).get("epe")) for d in datasets]
        lines.append(
            f"| {name} | "
            + " | ".join(cells + [fmt(held.get("photo_all")), fmt(held.get("occ")), f"{result['wall_s']:.0f}"])
            + " |"
        )
    budget = f"{args.minutes} min" if args.minutes is not None else f"{next(iter(results.values()))['steps']} steps"
    base = args.weights or "default model"
    print(f"\n## flowcli adapt ablation on {args.dataset} ({budget} per variant, base {base})\n")
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    try:
        main()
    except FlowcliError as error:  # a --data folder without the footage, an unknown model: one line, no traceback
        sys.exit(f"error: {error}")
