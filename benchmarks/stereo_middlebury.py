"""Stereo acceptance benchmark: flowcli disparity vs OpenCV StereoSGBM on Middlebury, side by side in one run.

flowcli: `flowcli.stereo.estimate_disparity` (the flow model's left -> right flow, disparity = -u clamped at
0), exactly what `flowcli stereo` writes. SGBM: `classic_baselines.Baselines.sgbm`, the same protocol as
benchmarks/classic_baselines.py (minDisparity 0, numDisparities = width / 4 rounded to a multiple of 16,
blockSize 3, MODE_HH, invalid pixels count as disparity 0). Metrics: `flowcli.metrics.stereo_metrics` over
each scene's valid ground-truth pixels (disp0GT.pfm, inf = unknown); means are over scenes.

Acceptance (issue `flowcli stereo`): with the shipped weights, flowcli's mean EPE AND mean bad-2 are both
lower than SGBM's on tsukuba, venus and motorcycle. `--check` exits 1 when that fails.

Needs OpenCV (the benchmark venv, see benchmarks/README.md):

    .venv-bench/bin/python benchmarks/stereo_middlebury.py                        # shipped default model
    .venv-bench/bin/python benchmarks/stereo_middlebury.py --weights run/model.safetensors --check
    .venv-bench/bin/python benchmarks/stereo_middlebury.py --weights tiny.safetensors --threads 1   # plumbing
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from classic_baselines import Baselines, import_cv2  # noqa: E402

from flowcli.data import make_dataset  # noqa: E402
from flowcli.errors import FlowcliError  # noqa: E402
from flowcli.metrics import mean_metrics, stereo_metrics  # noqa: E402
from flowcli.stereo import estimate_disparity  # noqa: E402

SCENES = ("tsukuba", "venus", "motorcycle")
LABELS = {"sgbm": "StereoSGBM (OpenCV)", "flowcli": "flowcli stereo"}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_model(weights: str | None):
    from flowcli.models import load_model as load

    try:
        return load(weights)
    except FlowcliError as error:
        sys.exit(f"error: {error} (pass --weights PATH to a checkpoint)")


def run(baselines: Baselines, root: Path, scenes, precision: str) -> dict:
    """{method: {scene: metrics}}."""
    dataset = make_dataset("middlebury-stereo", root)
    names = [s["name"] for s in dataset.samples]
    missing = [s for s in scenes if s not in names]
    if missing:
        sys.exit(f"error: {root} has no scene {missing[0]} (it has {', '.join(names)})")
    rows: dict = {"sgbm": {}, "flowcli": {}}
    for scene in scenes:
        index = names.index(scene)
        item, paths = dataset[index], dataset.image_paths(index)
        gt, valid = item["disparity"][None], item["valid"][None]

        disparity, seconds = baselines.sgbm(paths)
        metrics = stereo_metrics(disparity, gt, valid)
        metrics["seconds"] = seconds
        rows["sgbm"][scene] = metrics

        start = time.perf_counter()
        with torch.inference_mode():
            result = estimate_disparity(baselines.model, item["image1"], item["image2"], consistency=False,
                                        precision=precision)
        seconds = time.perf_counter() - start
        metrics = stereo_metrics(result.disparity.cpu(), gt, valid)
        metrics.update(seconds=seconds, negative_pct=100 * result.negative_fraction[0],
                       vertical_median=result.vertical_median[0])
        rows["flowcli"][scene] = metrics
        for method in rows:
            m = rows[method][scene]
            log(f"{scene:11s} {method:8s} EPE {m['epe']:7.3f}  bad-2 {m['bad_2']:5.1f} %  {m['seconds']:6.2f} s")
    return rows


def table(rows: dict, scenes) -> str:
    header = " | ".join(f"{s} EPE / bad-2 %" for s in scenes)
    lines = ["| method | " + header + " | mean EPE | mean bad-2 % | mean D1 % |",
             "|---|" + "---|" * (len(scenes) + 3)]
    for method, by_scene in rows.items():
        mean = mean_metrics(list(by_scene.values()))
        cells = [f"{by_scene[s]['epe']:.2f} / {by_scene[s]['bad_2']:.1f}" for s in scenes]
        lines.append(f"| {LABELS[method]} | " + " | ".join(cells)
                     + f" | {mean['epe']:.2f} | {mean['bad_2']:.1f} | {mean['d1']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data",
                        help="shared data folder; scenes are read from DATA/stereo/middlebury")
    parser.add_argument("--weights", default=None, help="registry name or checkpoint (default: the default model)")
    parser.add_argument("--scenes", default=",".join(SCENES), help="comma list of Middlebury scene folders")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--threads", type=int, default=None, help="torch and OpenCV threads")
    parser.add_argument("--json", type=Path, default=None, help="also write every number to this JSON file")
    parser.add_argument("--check", action="store_true", help="exit 1 unless flowcli beats SGBM on mean EPE and bad-2")
    args = parser.parse_args(argv)
    if args.json:  # made now: the report is written after the whole run
        args.json.parent.mkdir(parents=True, exist_ok=True)

    cv2 = import_cv2()
    if args.threads:
        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    scenes = [s.strip() for s in args.scenes.split(",") if s.strip()]
    model = load_model(args.weights)
    baselines = Baselines(cv2, model)
    rows = run(baselines, args.data / "stereo" / "middlebury", scenes, args.precision)
    means = {method: mean_metrics(list(by_scene.values())) for method, by_scene in rows.items()}
    better_epe = means["flowcli"]["epe"] < means["sgbm"]["epe"]
    better_bad2 = means["flowcli"]["bad_2"] < means["sgbm"]["bad_2"]
    passed = better_epe and better_bad2
    model_label = getattr(model, "checkpoint_path", None)
    print(f"OpenCV {cv2.__version__}, torch {torch.__version__}, {torch.get_num_threads()} torch threads; "
          f"flowcli model: {model_label}\n")
    print("Middlebury stereo, left disparity: EPE (px) / bad-2 (% of valid pixels with error > 2 px)\n")
    print(table(rows, scenes))
    seconds = {m: statistics.mean(r["seconds"] for r in by_scene.values()) for m, by_scene in rows.items()}
    print(f"\nseconds per pair (mean): SGBM {seconds['sgbm']:.2f}, flowcli {seconds['flowcli']:.2f}; flowcli "
          f"vertical |v| median {statistics.mean(r['vertical_median'] for r in rows['flowcli'].values()):.2f} px, "
          f"negative disparity {statistics.mean(r['negative_pct'] for r in rows['flowcli'].values()):.1f} %")
    print(f"\nACCEPTANCE {'PASS' if passed else 'FAIL'}: flowcli mean EPE {means['flowcli']['epe']:.2f} vs SGBM "
          f"{means['sgbm']['epe']:.2f} ({'lower' if better_epe else 'not lower'}), mean bad-2 "
          f"{means['flowcli']['bad_2']:.1f} % vs {means['sgbm']['bad_2']:.1f} % "
          f"({'lower' if better_bad2 else 'not lower'})")
    if args.json:
        report = {"opencv": cv2.__version__, "torch": torch.__version__, "model": model_label, "scenes": rows,
                  "mean": means, "pass": passed}
        args.json.write_text(json.dumps(report, indent=2, default=float) + "\n")
    return 1 if (args.check and not passed) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except FlowcliError as error:  # no stereo/middlebury under --data, say: one line, no traceback
        sys.exit(f"error: {error}")
