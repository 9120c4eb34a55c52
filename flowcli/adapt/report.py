"""Before/after measurements of an adaptation run: on the held-out slice of the footage (no labels)
and, when a labeled copy is named (`--gt DATASET:ROOT`), the benchmark metrics of flowcli.evaluate.

Held-out metrics (means over the held-out tuples, full-resolution frames, `estimate_flow` with
forward-backward occlusion):
  photo       photometric error (census + SSIM + L1 with the default LossWeights, whatever the run
              trained with, so runs compare) over non-occluded pixels
              (pairs where under 1 % is visible are left out; None if that is every pair)
  photo_all   the same over every pixel whose match stays in the frame (cannot be gamed by
              declaring pixels occluded)
  occ         fraction of pixels the forward-backward check calls occluded
  vertical    stereo only: mean |v| (0 for a perfectly rectified prediction)
"""

from __future__ import annotations

from pathlib import Path

import torch

from flowcli.adapt.footage import Footage
from flowcli.adapt.losses import LossWeights, masked_mean, photometric_error
from flowcli.data.datasets import make_dataset, parse_dataset_spec
from flowcli.errors import InputError
from flowcli.ops.warp import backward_warp, out_of_frame


@torch.no_grad()
def heldout_metrics(
    model: torch.nn.Module,
    footage: Footage,
    tuples: list[tuple[int, int]],
    *,
    step: int,
    weights: LossWeights | None = None,
    precision: str = "fp32",
    max_pixels: int | None = None,
) -> dict[str, float]:
    """Mean photometric error / occluded fraction of `model` on the main pair of each tuple."""
    from flowcli.inference import estimate_flow

    if not tuples:
        return {}
    weights = weights or LossWeights()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    try:
        for seq, start in tuples:
            try:
                frames = footage.load(seq, start, 1 if footage.stereo else 2, step)
            except InputError:  # a frame that passed the header check but does not decode: warned elsewhere
                continue
            image1, image2 = frames[0][None].to(device), frames[1][None].to(device)
            result = estimate_flow(model, image1, image2, occlusion=True, precision=precision, max_pixels=max_pixels)
            flow = result.forward
            error = photometric_error(image1, backward_warp(image2, flow), weights)
            visible = 1.0 - result.occlusion
            row = {
                # undefined (skipped) where the check leaves (almost) nothing visible
                "photo": float(masked_mean(error, visible)) if float(visible.mean()) >= 0.01 else None,
                "photo_all": float(masked_mean(error, ~out_of_frame(flow))),
                "occ": float(result.occlusion.mean()),
            }
            if footage.stereo:
                row["vertical"] = float(flow[:, 1].abs().mean())
            for key, value in row.items():
                if value is not None:
                    sums[key] = sums.get(key, 0.0) + value
                    counts[key] = counts.get(key, 0) + 1
    finally:
        model.train(was_training)
    order = ("photo", "photo_all", "occ", "vertical")
    return {key: round(sums[key] / counts[key], 5) if key in sums else None for key in order if key in sums or
            (key == "photo" and sums)}  # fmt: skip


def parse_gt(specs: list[str]) -> list[tuple[str, str]]:
    """`DATASET:ROOT` specs -> [(dataset, root)]; `sintel:ROOT` expands to the clean and final passes.

    Each root is checked against its dataset's layout here, so a wrong one is refused before any footage
    is decoded or measured, not when the labeled copy is first evaluated. The report keys the metrics by
    dataset, so a dataset named twice with one root is measured once, and with two roots is refused."""
    out = []
    roots: dict[str, tuple[str, str]] = {}  # dataset -> (spec, root) that named it first
    for spec in specs:
        try:
            datasets = [(name, root) for name, root, _ in parse_dataset_spec(spec)]
        except ValueError as error:
            raise InputError(f"--gt {error}") from None
        for name, root in datasets:
            if name in roots:
                first_spec, first_root = roots[name]
                if Path(first_root).expanduser().resolve() != Path(root).expanduser().resolve():
                    raise InputError(
                        f"--gt {first_spec} and --gt {spec} both name {name}, with different roots; the report has "
                        f"one {name} row, so give one root for it"
                    )
                continue
            try:
                make_dataset(name, root)
            except InputError as error:
                raise InputError(f"--gt {spec}: {error}") from None
            roots[name] = (spec, root)
            out.append((name, root))
    return out
