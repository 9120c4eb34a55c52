"""Classic baselines next to flowcli's model, on the same benchmark items, in one run.

Flow: OpenCV DIS (preset MEDIUM) and DeepFlow (opencv-contrib) vs the flowcli model on
sintel-clean, sintel-final, chairs, kitti2015 and middlebury: mean EPE over items (and Fl-all for
KITTI), plus seconds per pair at each item size. Stereo: OpenCV StereoSGBM vs flowcli disparity
(-u of the left->right flow) on middlebury-stereo: mean EPE and bad-2. `--speed` times one
1024x436 pair (Sintel alley_1) for DIS-medium, DeepFlow and the flowcli model in this process.

Needs OpenCV with the contrib modules, which flowcli itself never depends on: run it from the
benchmark environment described in benchmarks/README.md.

    .venv-bench/bin/python benchmarks/classic_baselines.py                    # default model
    .venv-bench/bin/python benchmarks/classic_baselines.py --weights ckpt.safetensors
    .venv-bench/bin/python benchmarks/classic_baselines.py --random-init      # plumbing check only
    .venv-bench/bin/python benchmarks/classic_baselines.py --speed

Protocol (fixed so numbers are comparable run to run):
- OpenCV methods read each frame with cv2.imread(path, IMREAD_GRAYSCALE) (what an OpenCV user
  does; DIS on Sintel market_5 is sensitive to the last grey level, so the conversion matters).
- SGBM: minDisparity 0, numDisparities = width / 4 rounded to the nearest multiple of 16,
  blockSize 3, P1 = 8*3*9, P2 = 32*3*9 (colour input), MODE_HH; pixels SGBM leaves invalid count as
  disparity 0 (they are errors, not excluded).
- Metrics from flowcli.metrics over each item's valid GT pixels; means are over items.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flowcli.data import make_dataset  # noqa: E402
from flowcli.errors import FlowcliError  # noqa: E402
from flowcli.metrics import flow_metrics, mean_metrics, stereo_metrics  # noqa: E402

FLOW_SETS = {
    "sintel-clean": "flow/sintel",
    "sintel-final": "flow/sintel",
    "chairs": "flow/chairs",
    "kitti2015": "flow/kitti2015",
    "middlebury": "flow/middlebury",
}
STEREO_SETS = {"middlebury-stereo": "stereo/middlebury"}
METHODS = ("dis", "deepflow", "flowcli")
LABELS = {
    "dis": "DIS-medium (OpenCV)",
    "deepflow": "DeepFlow (OpenCV)",
    "flowcli": "flowcli",
    "sgbm": "StereoSGBM (OpenCV)",
}


def import_cv2():
    try:
        import cv2
    except ImportError:
        sys.exit(
            "error: OpenCV (cv2) is not installed here; the baselines need opencv-contrib-python-headless, kept "
            "out of flowcli's dependencies: run this script with .venv-bench/bin/python (set-up: benchmarks/README.md)"
        )
    if not hasattr(cv2, "optflow"):
        sys.exit(
            "error: this OpenCV lacks the contrib modules (cv2.optflow, for DeepFlow): "
            "uninstall opencv-python(-headless) in the benchmark venv and install opencv-contrib-python-headless"
        )
    return cv2


# ----------------------------------------------------------------------------- methods


class Baselines:
    def __init__(self, cv2, model):
        self.cv2 = cv2
        self.dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        self.deepflow = cv2.optflow.createOptFlow_DeepFlow()
        self.model = model

    def gray(self, path: Path) -> np.ndarray:
        image = self.cv2.imread(str(path), self.cv2.IMREAD_GRAYSCALE)
        if image is None:
            sys.exit(f"error: OpenCV cannot read {path}")
        return image

    def flow(self, method: str, item: dict, paths) -> tuple[torch.Tensor, float]:
        """[1,2,H,W] flow and the seconds the method itself took (file reading excluded)."""
        if method == "flowcli":
            from flowcli.inference import estimate_flow

            start = time.perf_counter()
            with torch.inference_mode():
                flow = estimate_flow(self.model, item["image1"][None], item["image2"][None]).forward
            return flow.float(), time.perf_counter() - start
        g1, g2 = self.gray(paths[0]), self.gray(paths[1])
        algorithm = self.dis if method == "dis" else self.deepflow
        start = time.perf_counter()
        flow = algorithm.calc(g1, g2, None)
        seconds = time.perf_counter() - start
        return torch.from_numpy(flow).permute(2, 0, 1)[None].float(), seconds

    def sgbm(self, paths) -> tuple[torch.Tensor, float]:
        cv2 = self.cv2
        left, right = cv2.imread(str(paths[0])), cv2.imread(str(paths[1]))
        channels, block = 3, 3
        start = time.perf_counter()
        matcher = cv2.StereoSGBM_create(
            minDisparity=0,
            numDisparities=sgbm_num_disparities(left.shape[1]),
            blockSize=block,
            P1=8 * channels * block**2,
            P2=32 * channels * block**2,
            mode=cv2.STEREO_SGBM_MODE_HH,
        )
        disparity = matcher.compute(left, right).astype(np.float32) / 16.0
        seconds = time.perf_counter() - start
        disparity[disparity < 0] = 0.0
        return torch.from_numpy(disparity)[None, None], seconds


def sgbm_num_disparities(width: int) -> int:
    """A quarter of the width, rounded to the nearest multiple of 16 (at least 16)."""
    return max(16, int(round(width / 4 / 16)) * 16)


# ----------------------------------------------------------------------------- runs


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_flow(baselines: Baselines, data: Path, methods, datasets, max_items):
    """{dataset: {method: mean metrics}}, {(method, 'WxH'): [seconds]}."""
    results, times = {}, {}
    for name in datasets:
        dataset = make_dataset(name, data / FLOW_SETS[name])
        count = len(dataset) if max_items is None else min(max_items, len(dataset))
        rows = {m: [] for m in methods}
        for index in range(count):
            item = dataset[index]
            paths = dataset.image_paths(index)
            size = f"{item['image1'].shape[-1]}x{item['image1'].shape[-2]}"
            for method in methods:
                flow, seconds = baselines.flow(method, item, paths)
                metrics = flow_metrics(flow, item["flow"][None], item["valid"][None])
                metrics["seconds"] = seconds
                rows[method].append(metrics)
                times.setdefault((method, size), []).append(seconds)
                log(f"{name:13s} {item['name']:20s} {method:9s} EPE {metrics['epe']:7.3f}  {seconds:6.2f} s")
        results[name] = {m: mean_metrics(rows[m]) for m in methods}
    return results, times


def run_stereo(baselines: Baselines, data: Path, methods, max_items):
    results, times = {}, {}
    for name, folder in STEREO_SETS.items():
        dataset = make_dataset(name, data / folder)
        count = len(dataset) if max_items is None else min(max_items, len(dataset))
        rows = {m: [] for m in methods}
        for index in range(count):
            item = dataset[index]
            paths = dataset.image_paths(index)
            size = f"{item['image1'].shape[-1]}x{item['image1'].shape[-2]}"
            for method in methods:
                if method == "sgbm":
                    disparity, seconds = baselines.sgbm(paths)
                    vertical = None
                else:
                    flow, seconds = baselines.flow("flowcli", item, paths)
                    disparity, vertical = -flow[:, :1], flow[:, 1]
                metrics = stereo_metrics(disparity, item["disparity"][None], item["valid"][None])
                if vertical is not None:
                    metrics["vert_abs"] = float(vertical[item["valid"]].abs().mean())
                metrics["seconds"] = seconds
                rows[method].append(metrics)
                times.setdefault((method, size), []).append(seconds)
                log(
                    f"{name:13s} {item['name']:20s} {method:9s} EPE {metrics['epe']:7.3f} "
                    f"bad-2 {metrics['bad_2']:5.1f}  {seconds:6.2f} s"
                )
        results[name] = {m: mean_metrics(rows[m]) for m in methods}
    return results, times


def run_speed(baselines: Baselines, data: Path, methods, repeats: int) -> dict:
    """Median seconds per 1024x436 pair (Sintel clean alley_1), after one warm-up run."""
    dataset = make_dataset("sintel-clean", data / FLOW_SETS["sintel-clean"])
    index = next((i for i, s in enumerate(dataset.samples) if s["name"].startswith("alley_1")), 0)
    item, paths = dataset[index], dataset.image_paths(index)
    out = {}
    for method in methods:
        baselines.flow(method, item, paths)  # warm-up (allocations, OpenCV / torch thread pools)
        seconds = [baselines.flow(method, item, paths)[1] for _ in range(repeats)]
        out[method] = statistics.median(seconds)
        log(f"speed {method:9s} {out[method]:.3f} s/pair (median of {repeats})")
    return out


# ----------------------------------------------------------------------------- tables


def flow_table(results: dict, methods) -> str:
    names = list(results)
    header = ["method"] + [f"{n} EPE" if n != "kitti2015" else "kitti2015 EPE / Fl-all %" for n in names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in methods:
        cells = [LABELS[method]]
        for name in names:
            mean = results[name][method]
            cell = f"{mean['epe']:.2f}"
            if name == "kitti2015":
                cell += f" / {mean.get('fl_all_px', mean['fl_all']):.1f}"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def time_table(times: dict, methods) -> str:
    sizes = sorted({size for _, size in times}, key=lambda s: -int(s.split("x")[0]) * int(s.split("x")[1]))
    lines = ["| method | " + " | ".join(f"s/pair {s}" for s in sizes) + " |", "|" + "---|" * (len(sizes) + 1)]
    for method in methods:
        cells = [LABELS[method]]
        for size in sizes:
            values = times.get((method, size))
            cells.append(f"{statistics.mean(values):.2f}" if values else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def stereo_table(results: dict, methods) -> str:
    lines = ["| method | dataset | EPE px | bad-2 % | D1 % | s/pair |", "|---|---|---|---|---|---|"]
    for name, by_method in results.items():
        for method in methods:
            m = by_method[method]
            lines.append(
                f"| {LABELS[method]} | {name} | {m['epe']:.2f} | {m['bad_2']:.1f} | {m['d1']:.1f} "
                f"| {m['seconds']:.2f} |"
            )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def load_flowcli_model(weights: str | None, random_init: bool):
    if random_init:
        from flowcli.models import FlowNet

        torch.manual_seed(0)
        model = FlowNet().eval()
        model.checkpoint_path = "random-init (seed 0)"
        return model
    from flowcli.models import load_model

    try:
        return load_model(weights)
    except FlowcliError as error:
        sys.exit(f"error: {error} (use --weights PATH, --random-init, or --methods dis,deepflow)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, default=REPO.parent / "shared" / "data", help="shared data folder (default ../shared/data)"
    )
    parser.add_argument(
        "--weights", default=None, help="flowcli model: registry name or checkpoint path (default: the default model)"
    )
    parser.add_argument(
        "--random-init", action="store_true", help="use a randomly initialised flowcli model (checks the plumbing only)"
    )
    parser.add_argument("--methods", default=",".join(METHODS), help="comma list of dis, deepflow, flowcli")
    parser.add_argument("--datasets", default=",".join(FLOW_SETS), help="comma list of flow datasets")
    parser.add_argument("--no-stereo", action="store_true", help="skip the SGBM stereo comparison")
    parser.add_argument("--max-items", type=int, default=None, help="items per dataset (default: all)")
    parser.add_argument("--speed", action="store_true", help="only time one 1024x436 pair per method")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method in --speed mode")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch and OpenCV threads (default: library defaults)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write every number to this JSON file")
    args = parser.parse_args(argv)
    if args.json:  # made now: the report is written after the whole run
        args.json.parent.mkdir(parents=True, exist_ok=True)

    cv2 = import_cv2()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {METHODS}")
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    if [d for d in datasets if d not in FLOW_SETS]:
        parser.error(f"datasets must be among {list(FLOW_SETS)}")
    if not (args.data / "flow").is_dir():
        sys.exit(f"error: {args.data} has no flow/ folder; pass --data pointing at the shared data")
    if args.threads:
        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    model = load_flowcli_model(args.weights, args.random_init) if "flowcli" in methods else None
    baselines = Baselines(cv2, model)
    model_label = getattr(model, "checkpoint_path", None)
    header = (
        f"OpenCV {cv2.__version__}, torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
        f"{cv2.getNumThreads()} OpenCV threads; flowcli model: {model_label or '-'}"
    )
    report: dict = {"opencv": cv2.__version__, "torch": torch.__version__, "model": model_label}

    if args.speed:
        speed = run_speed(baselines, args.data, methods, args.repeats)
        report["speed_s_per_1024x436_pair"] = speed
        print(f"{header}\n\n| method | s per 1024x436 pair |\n|---|---|")
        for method, seconds in speed.items():
            print(f"| {LABELS[method]} | {seconds:.3f} |")
    else:
        flow_results, times = run_flow(baselines, args.data, methods, datasets, args.max_items)
        report["flow"] = flow_results
        report["flow_seconds"] = {f"{m} {s}": statistics.mean(v) for (m, s), v in times.items()}
        print(f"{header}\n\nMean EPE over items (px); KITTI Fl-all over all valid pixels (%)\n")
        print(flow_table(flow_results, methods))
        print("\nSeconds per pair by image size (method time only, files already read)\n")
        print(time_table(times, methods))
        if not args.no_stereo:
            stereo_methods = ["sgbm"] + (["flowcli"] if "flowcli" in methods else [])
            stereo_results, _ = run_stereo(baselines, args.data, stereo_methods, args.max_items)
            report["stereo"] = stereo_results
            print("\nStereo: disparity of the left image (flowcli: -u of the left->right flow)\n")
            print(stereo_table(stereo_results, stereo_methods))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except FlowcliError as error:  # a data folder in the wrong layout, say: one line, no traceback
        sys.exit(f"error: {error}")
