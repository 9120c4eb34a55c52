"""Fl-noc and the pixel-pooled EPE noc / occ and Fl-noc (`*_px`): KITTI 2015's and RAFT's pooling over the
non-occluded or occluded pixels of the whole dataset, not over items or over every valid pixel."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_harness import in_process_cli

from flowcli.evaluation import EvalReport
from flowcli.io.flow_formats import write_kitti_flow, write_npy, write_png
from flowcli.metrics import flow_metrics, mean_metrics

# Item a, 2x3. |gt| = 10 (5 % = 0.5 px) but at (1, 2), |gt| = 100 (5 % = 5 px). Errors (u only):
#   0 4 1      occluded:  . . X
#   5 0 4                 X . .
# The 4 px at (0, 1) is a non-occluded outlier, the 5 px at (1, 0) an occluded one, the 4 px at (1, 2) no outlier
# (not > 5 % of 100). Non-occluded: 4 pixels, EPE 0 + 4 + 0 + 4 = 8, 1 outlier; occluded: 2 pixels, EPE 1 + 5 = 6.
GT_A = [[10.0, 10.0, 10.0], [10.0, 10.0, 100.0]]
ERROR_A = [[0.0, 4.0, 1.0], [5.0, 0.0, 4.0]]
OCC_A = [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
# Item b, 1x4, zero motion (any error > 3 px is an outlier): errors 4 0 0 6, the 6 px occluded.
# Non-occluded: 3 pixels, EPE 4, 1 outlier; occluded: 1 pixel, EPE 6.
GT_B = [[0.0, 0.0, 0.0, 0.0]]
ERROR_B = [[4.0, 0.0, 0.0, 6.0]]
OCC_B = [[0.0, 0.0, 0.0, 1.0]]
# Item c, 1x2, exact and with no occluded pixel: epe_occ has nothing to score.
GT_C = [[0.0, 0.0]]
ERROR_C = [[0.0, 0.0]]
OCC_C = [[0.0, 0.0]]


def _row(name: str, gt: list, error: list, occlusion: list) -> dict:
    """flow_metrics of a prediction that is `error` px off `gt` in u (v = 0 in both)."""
    gt_u = torch.tensor(gt)
    gt_flow = torch.stack((gt_u, torch.zeros_like(gt_u)))[None]
    pred = gt_flow.clone()
    pred[0, 0] += torch.tensor(error)
    valid = torch.ones(1, 1, *gt_u.shape, dtype=torch.bool)
    return dict(flow_metrics(pred, gt_flow, valid, occlusion=torch.tensor(occlusion)[None, None]), name=name)


def test_fl_noc_counts_only_the_non_occluded_outliers():
    row = _row("a", GT_A, ERROR_A, OCC_A)
    assert row["fl_noc"] == pytest.approx(100 * 1 / 4)  # the occluded 5-px outlier is not counted
    assert row["fl_all"] == pytest.approx(100 * 2 / 6)
    assert row["epe_noc"] == pytest.approx(8 / 4) and row["epe_occ"] == pytest.approx(6 / 2)
    assert (row["n_noc"], row["n_occ"], row["n_valid"]) == (4, 2, 6)
    no_occlusion_gt = flow_metrics(torch.zeros(1, 2, 2, 3), torch.zeros(1, 2, 2, 3), torch.ones(1, 1, 2, 3))
    assert not {"fl_noc", "n_noc", "n_occ"} & set(no_occlusion_gt)


def test_noc_and_occ_means_over_pixels_pool_each_region_pixels():
    mean = mean_metrics([_row("a", GT_A, ERROR_A, OCC_A), _row("b", GT_B, ERROR_B, OCC_B)])
    # over items: every item alike
    assert mean["epe_noc"] == pytest.approx((2 + 4 / 3) / 2) and mean["epe_occ"] == pytest.approx((3 + 6) / 2)
    assert mean["fl_noc"] == pytest.approx((25 + 100 / 3) / 2)
    # over pixels: the 4 + 3 non-occluded pixels alike, the 2 + 1 occluded ones alike (not weighted by n_valid,
    # which would give epe_noc (2 * 6 + 4 / 3 * 4) / 10 and epe_occ (3 * 6 + 6 * 4) / 10)
    assert mean["epe_noc_px"] == pytest.approx((8 + 4) / 7) and mean["epe_noc_px"] != pytest.approx(mean["epe_noc"])
    assert mean["epe_occ_px"] == pytest.approx((6 + 6) / 3) and mean["epe_occ_px"] != pytest.approx(mean["epe_occ"])
    assert mean["fl_noc_px"] == pytest.approx(100 * 2 / 7) and mean["fl_noc_px"] != pytest.approx(mean["fl_noc"])
    assert (mean["n_noc"], mean["n_occ"], mean["n_valid"]) == (7, 3, 10)
    # the keys that were there keep their values: all valid pixels, weighted by n_valid
    assert mean["epe_px"] == pytest.approx((14 + 10) / 10) and mean["fl_all_px"] == pytest.approx(100 * 4 / 10)


def test_an_item_without_occluded_pixels_has_null_epe_occ_and_is_left_out_of_its_pixel_mean():
    rows = [_row("a", GT_A, ERROR_A, OCC_A), _row("c", GT_C, ERROR_C, OCC_C)]
    assert math.isnan(rows[1]["epe_occ"]) and rows[1]["n_occ"] == 0 and rows[1]["fl_noc"] == 0
    report = EvalReport("x", per_item=rows, mean=mean_metrics(rows))
    payload = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert payload["per_item"][1]["epe_occ"] is None
    assert payload["mean"]["epe_occ"] == pytest.approx(3.0) and payload["mean"]["epe_occ_px"] == pytest.approx(3.0)
    assert payload["mean"]["epe_noc_px"] == pytest.approx(8 / 6)  # item c's 2 exact pixels do count there


def _tiny_kitti(root: Path, items: list[tuple[list, list]]) -> None:
    """A KITTI 2015 flow layout: item NNNNNN_10 with ground truth u = gt (v = 0) valid everywhere in flow_occ and
    valid where not occluded in flow_noc."""
    for index, (gt, occlusion) in enumerate(items):
        name = f"{index:06d}"
        flow = np.stack((np.array(gt, np.float32), np.zeros((len(gt), len(gt[0])), np.float32)), -1)
        for frame in ("10", "11"):
            write_png(root / "training" / "image_2" / f"{name}_{frame}.png", np.zeros((*flow.shape[:2], 3), np.uint8))
        write_kitti_flow(root / "training" / "flow_occ" / f"{name}_10.png", flow)
        write_kitti_flow(root / "training" / "flow_noc" / f"{name}_10.png", flow, valid=np.array(occlusion) < 0.5)


def test_the_cli_prints_fl_noc_and_the_pooled_noc_occ_means_in_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("flowcli.models.load_model", lambda *a, **k: pytest.fail("model loaded"))
    cli = in_process_cli(monkeypatch, capsys, "eval")
    items = [(GT_A, ERROR_A, OCC_A), (GT_B, ERROR_B, OCC_B), (GT_C, ERROR_C, OCC_C)]
    _tiny_kitti(tmp_path / "kitti", [(gt, occlusion) for gt, _, occlusion in items])
    for index, (gt, error, _) in enumerate(items):
        u = np.array(gt, np.float32) + np.array(error, np.float32)
        write_npy(tmp_path / "preds" / f"{index:06d}_10.npy", np.stack((u, np.zeros_like(u)), -1))
    code, out, err = cli("-d", "kitti2015", "-r", tmp_path / "kitti", "--predictions", tmp_path / "preds", "--json")
    assert code == 0, err
    result = json.loads(out)["results"]["kitti2015"]
    rows = result["per_item"]
    assert [row["fl_noc"] for row in rows] == [pytest.approx(25.0), pytest.approx(100 / 3), 0.0]
    assert [(row["n_noc"], row["n_occ"]) for row in rows] == [(4, 2), (3, 1), (2, 0)]
    assert rows[2]["epe_occ"] is None
    mean = result["mean"]
    assert mean["epe_noc_px"] == pytest.approx((8 + 4 + 0) / 9) and mean["fl_noc_px"] == pytest.approx(100 * 2 / 9)
    assert mean["epe_occ_px"] == pytest.approx((6 + 6) / 3)  # item c has no occluded pixel to weigh
    assert mean["fl_noc"] == pytest.approx((25 + 100 / 3 + 0) / 3)
    assert "Fl-noc %" in err
