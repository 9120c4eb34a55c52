"""Metrics on tiny hand-computed cases."""

import math

import pytest
import torch

from flowcli.metrics import flow_metrics, mean_metrics, occlusion_f1, stereo_metrics


def _flow(u, v):
    """[1,2,H,W] flow from two nested lists."""
    return torch.stack((torch.tensor(u, dtype=torch.float32), torch.tensor(v, dtype=torch.float32)))[None]


def test_perfect_prediction_is_zero():
    gt = torch.randn(2, 2, 5, 7) * 10
    valid = torch.ones(2, 1, 5, 7, dtype=torch.bool)
    m = flow_metrics(gt.clone(), gt, valid, occlusion=torch.zeros(2, 1, 5, 7))
    assert m["epe"] == 0 and m["epe_noc"] == 0 and m["fl_all"] == 0
    assert m["acc_1px"] == m["acc_3px"] == m["acc_5px"] == 100
    assert math.isnan(m["epe_occ"])  # no occluded pixel
    s = stereo_metrics(gt[:, :1].abs(), gt[:, :1].abs(), valid)
    assert s["epe"] == 0 and s["bad_1"] == s["bad_2"] == s["bad_4"] == s["d1"] == 0


def test_epe_and_accuracy_hand_computed():
    gt = _flow([[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]])
    # errors: 5 (3-4-5), 0.5, 2, invalid 100
    pred = _flow([[3.0, 0.5], [2.0, 100.0]], [[4.0, 0.0], [0.0, 0.0]])
    valid = torch.tensor([[[[True, True], [True, False]]]])
    m = flow_metrics(pred, gt, valid)
    assert m["epe"] == pytest.approx((5 + 0.5 + 2) / 3)
    assert m["acc_1px"] == pytest.approx(100 / 3)
    assert m["acc_3px"] == pytest.approx(200 / 3)
    assert m["acc_5px"] == pytest.approx(200 / 3)  # EPE < 5 is strict: the 5-px error is not counted
    assert m["n_valid"] == 3


def test_fl_all_needs_both_thresholds():
    # gt magnitude 100: 5% is 5 px, so an error of 4 px (> 3 px) is NOT an outlier, 6 px is.
    # gt magnitude 10: 5% is 0.5 px, so an error of 3 px is NOT an outlier (not > 3), 3.5 px is.
    gt = _flow([[100.0, 100.0, 10.0, 10.0]], [[0.0, 0.0, 0.0, 0.0]])
    pred = _flow([[104.0, 106.0, 13.0, 13.5]], [[0.0, 0.0, 0.0, 0.0]])
    valid = torch.ones(1, 1, 1, 4, dtype=torch.bool)
    m = flow_metrics(pred, gt, valid)
    assert m["fl_all"] == pytest.approx(50.0)


def test_noc_occ_split():
    gt = torch.zeros(1, 2, 1, 4)
    pred = _flow([[1.0, 1.0, 3.0, 5.0]], [[0.0, 0.0, 0.0, 0.0]])
    occ = torch.tensor([[[[0.0, 0.0, 1.0, 1.0]]]])
    m = flow_metrics(pred, gt, torch.ones(1, 1, 1, 4, dtype=torch.bool), occlusion=occ)
    assert m["epe_noc"] == pytest.approx(1.0) and m["epe_occ"] == pytest.approx(4.0) and m["epe"] == pytest.approx(2.5)


def test_batch_mean_is_over_items():
    gt = torch.zeros(2, 2, 1, 2)
    pred = torch.zeros(2, 2, 1, 2)
    pred[0, 0] = 1.0  # item 0: EPE 1 at both pixels
    pred[1, 0, 0, 0] = 4.0  # item 1: one valid pixel with EPE 4
    valid = torch.tensor([[[[True, True]]], [[[True, False]]]])
    m = flow_metrics(pred, gt, valid)
    assert m["epe"] == pytest.approx((1 + 4) / 2)  # not the pixel-weighted (1+1+4)/3


def test_occlusion_f1():
    pred = torch.tensor([[[[1.0, 1.0, 0.0, 0.0, 1.0]]]])
    gt = torch.tensor([[[[1.0, 0.0, 1.0, 0.0, 1.0]]]])
    # TP 2, FP 1, FN 1 -> 4 / 6
    assert occlusion_f1(pred, gt) == pytest.approx(4 / 6)
    valid = torch.tensor([[[[True, False, True, True, True]]]])  # drops the FP -> 4 / 5
    assert occlusion_f1(pred, gt, valid) == pytest.approx(4 / 5)
    assert occlusion_f1(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)) == 1.0
    assert occlusion_f1(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)) == 0.0


def test_stereo_bad_n_and_d1():
    gt = torch.tensor([[[[10.0, 10.0, 10.0, 100.0, 100.0, 50.0]]]])
    pred = torch.tensor([[[[10.5, 12.0, 12.5, 104.0, 106.0, 0.0]]]])
    valid = torch.tensor([[[[True, True, True, True, True, False]]]])
    s = stereo_metrics(pred, gt, valid)
    # errors 0.5, 2, 2.5, 4, 6 on the valid pixels
    assert s["epe"] == pytest.approx(15 / 5)
    assert s["bad_1"] == pytest.approx(80.0)
    assert s["bad_2"] == pytest.approx(60.0)  # 2.0 is not > 2
    assert s["bad_4"] == pytest.approx(20.0)
    # D1: > 3 px and > 5 %: 4 px on 100 is not (5 % = 5 px), 6 px on 100 is
    assert s["d1"] == pytest.approx(20.0)


def test_mean_metrics_items_and_pixels():
    rows = [
        {"name": "a", "epe": 1.0, "fl_all": 0.0, "epe_occ": math.nan, "n_valid": 300.0, "height": 4, "width": 5},
        {"name": "b", "epe": 3.0, "fl_all": 50.0, "epe_occ": 2.0, "n_valid": 100.0, "height": 4, "width": 5},
    ]
    mean = mean_metrics(rows)
    assert mean["epe"] == pytest.approx(2.0) and mean["fl_all"] == pytest.approx(25.0)
    assert mean["epe_occ"] == pytest.approx(2.0)  # NaN skipped
    assert mean["epe_px"] == pytest.approx(1.5) and mean["fl_all_px"] == pytest.approx(12.5)
    assert mean["items"] == 2 and "height" not in mean


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        flow_metrics(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 4), torch.ones(1, 1, 3, 3, dtype=torch.bool))


def test_a_non_finite_prediction_is_an_outlier_not_a_skipped_item():
    """NaN used to make the item's EPE NaN (dropped by the mean over items) and to count as an inlier in
    Fl-all and bad-N; inf made `eval --json` fail on a value JSON cannot hold."""
    gt = torch.zeros(2, 2, 1, 2)
    pred = torch.zeros(2, 2, 1, 2)
    pred[0, 0, 0, 0] = math.nan  # item 0: one NaN pixel, one perfect pixel
    pred[1, 0] = 2.0  # item 1: EPE 2 everywhere
    valid = torch.ones(2, 1, 1, 2, dtype=torch.bool)
    m = flow_metrics(pred, gt, valid)
    assert m["epe"] == math.inf  # not 2.0, the EPE of the other item alone
    assert m["fl_all"] == pytest.approx(25.0) and m["acc_1px"] == pytest.approx(25.0)
    rows = [dict(flow_metrics(pred[i : i + 1], gt[i : i + 1], valid[i : i + 1]), name=str(i)) for i in range(2)]
    assert mean_metrics(rows)["epe"] == math.inf
    s = stereo_metrics(torch.tensor([[[[math.nan, 10.0]]]]), torch.tensor([[[[10.0, 10.0]]]]), valid[:1, :, :, :])
    assert s["bad_2"] == pytest.approx(50.0) and s["d1"] == pytest.approx(50.0)

    import json

    from flowcli.evaluation import EvalReport

    report = EvalReport("x", per_item=rows, mean=mean_metrics(rows))
    assert json.loads(json.dumps(report.to_dict(), allow_nan=False))["mean"]["epe"] is None


def test_prediction_occlusion_masks_are_read_beside_flows_in_scene_folders(shared_data, tmp_path):
    """PREDICTIONS/alley_1/frame_0002_occ.png belongs to alley_1/frame_0002.flo; a frame_0002_occ.png at the top,
    which every scene's frame_0002 would share, is not it."""
    import numpy as np

    from flowcli.evaluation import evaluate_predictions
    from flowcli.io.flow_formats import read_flo, read_png, write_flo, write_png

    sintel = shared_data / "flow" / "sintel"
    for scene in ("alley_1", "cave_2"):
        (tmp_path / scene).mkdir()
        flow = read_flo(sintel / "training" / "flow" / scene / "frame_0002.flo")
        write_flo(tmp_path / scene / "frame_0002.flo", flow)
        occlusion = read_png(sintel / "training" / "occlusions" / scene / "frame_0002.png")
        write_png(tmp_path / scene / "frame_0002_occ.png", occlusion)
    write_png(tmp_path / "frame_0002_occ.png", np.zeros_like(occlusion))  # a decoy: nothing occluded
    report = evaluate_predictions("sintel-clean", sintel, tmp_path, max_items=2, progress=False)
    assert [row["occ_f1"] for row in report.per_item] == [1.0, 1.0]


def test_a_complex_prediction_is_refused_not_cast_to_its_real_part(tmp_path):
    import numpy as np

    from flowcli.errors import InputError
    from flowcli.evaluation import read_prediction

    np.save(tmp_path / "00001.npy", np.ones((4, 5, 2), np.complex64) * 1j)
    with pytest.raises(InputError, match="complex64"):  # was read as a zero flow (ComplexWarning at most)
        read_prediction(tmp_path / "00001.npy", stereo=False)
    np.save(tmp_path / "00002.npy", np.ones((4, 5, 2), np.int16))
    assert read_prediction(tmp_path / "00002.npy", stereo=False).shape == (1, 2, 4, 5)


def test_noc_occ_exclude_invalid_pixels_and_all_occluded_has_no_noc():
    gt = torch.zeros(1, 2, 1, 4)
    pred = _flow([[1.0, 2.0, 6.0, 8.0]], [[0.0, 0.0, 0.0, 0.0]])
    occ = torch.tensor([[[[0.0, 1.0, 1.0, 1.0]]]])
    valid = torch.tensor([[[[True, True, True, False]]]])  # the 8-px error is occluded but invalid: in no mean
    m = flow_metrics(pred, gt, valid, occlusion=occ)
    assert m["epe"] == pytest.approx((1 + 2 + 6) / 3)
    assert m["epe_noc"] == pytest.approx(1.0) and m["epe_occ"] == pytest.approx((2 + 6) / 2)
    m = flow_metrics(pred, gt, valid, occlusion=torch.ones(1, 1, 1, 4))
    assert math.isnan(m["epe_noc"]) and m["epe_occ"] == pytest.approx(3.0)


def test_fl_all_on_zero_ground_truth_motion_is_the_3_px_rule():
    # KITTI devkit: f_dist / f_mag > 0.05 with f_mag 0 is inf > 0.05 (true) for any error above 0
    gt = torch.zeros(1, 2, 1, 4)
    pred = _flow([[3.0, 3.5, 0.0, 10.0]], [[0.0, 0.0, 0.0, 0.0]])
    m = flow_metrics(pred, gt, torch.ones(1, 1, 1, 4, dtype=torch.bool))
    assert m["fl_all"] == pytest.approx(50.0)  # 3.5 and 10; 3.0 is not > 3, 0 is not an outlier


def test_an_item_without_valid_pixels_is_nan_and_left_out_of_the_means():
    gt = torch.zeros(1, 2, 2, 2)
    empty = flow_metrics(gt + 7.0, gt, torch.zeros(1, 1, 2, 2, dtype=torch.bool), occlusion=torch.ones(1, 1, 2, 2))
    assert empty["n_valid"] == 0
    assert all(math.isnan(empty[k]) for k in ("epe", "fl_all", "acc_1px", "acc_3px", "acc_5px", "epe_noc", "epe_occ"))
    full = flow_metrics(gt + 1.0, gt, torch.ones(1, 1, 2, 2, dtype=torch.bool))  # EPE sqrt(2) everywhere
    mean = mean_metrics([dict(empty, name="empty"), dict(full, name="full")])
    assert mean["epe"] == pytest.approx(math.sqrt(2)) and mean["epe_px"] == pytest.approx(math.sqrt(2))
    assert mean["acc_1px"] == 0 and mean["acc_3px"] == 100 and mean["items"] == 2 and mean["n_valid"] == 4


def test_kitti_sparse_masks_fl_all_over_items_and_over_pixels():
    gt = torch.zeros(2, 2, 2, 2)
    gt[:, 0] = 10.0  # |gt| = 10: 5 % is 0.5 px, so any error > 3 px is an outlier
    pred = gt.clone()
    pred[0, 0, 1, 1] += 4.0  # item a: 4 valid pixels, one 4-px error
    pred[1, 1, 0, 0] += 5.0  # item b: 1 valid pixel, a 5-px error; its other pixels are wrong but not valid
    pred[1, 0, 1] += 50.0
    valid = torch.tensor([[[[True, True], [True, True]]], [[[True, False], [False, False]]]])
    rows = [dict(flow_metrics(pred[i : i + 1], gt[i : i + 1], valid[i : i + 1]), name=str(i)) for i in range(2)]
    assert [r["fl_all"] for r in rows] == [pytest.approx(25.0), pytest.approx(100.0)]
    assert [r["n_valid"] for r in rows] == [4, 1]
    mean = mean_metrics(rows)
    assert mean["fl_all"] == pytest.approx((25 + 100) / 2) and mean["epe"] == pytest.approx((1 + 5) / 2)
    assert mean["fl_all_px"] == pytest.approx(100 * 2 / 5)  # 2 outliers among the 5 valid pixels
    assert mean["epe_px"] == pytest.approx((4 + 5) / 5)


def test_stereo_d1_relative_threshold_on_a_near_disparity():
    gt = torch.tensor([[[[20.0, 100.0, 100.0]]]])
    pred = torch.tensor([[[[23.5, 104.5, 100.5]]]])  # errors 3.5, 4.5, 0.5
    s = stereo_metrics(pred, gt, torch.ones(1, 1, 1, 3, dtype=torch.bool))
    assert s["epe"] == pytest.approx(8.5 / 3)
    assert s["bad_1"] == pytest.approx(200 / 3) and s["bad_2"] == pytest.approx(200 / 3)
    assert s["bad_4"] == pytest.approx(100 / 3)  # only 4.5
    # D1: 3.5 on 20 is > 3 px and > 1 px (5 %); 4.5 on 100 is > 3 px but not > 5 px
    assert s["d1"] == pytest.approx(100 / 3)


def test_unknown_ground_truth_is_not_scored_even_where_valid_says_so():
    """NaN, inf and the .flo unknown marker (>= 1e9) in the ground truth used to be scored: EPE inf (or 5e9)
    while Fl-all counted the NaN pixel as an inlier."""
    gt = _flow([[math.nan, 1e10, math.inf, 0.0]], [[0.0, 0.0, 0.0, 0.0]])
    pred = _flow([[0.0, 0.0, 0.0, 2.0]], [[0.0, 0.0, 0.0, 0.0]])
    m = flow_metrics(pred, gt, torch.ones(1, 1, 1, 4, dtype=torch.bool), occlusion=torch.zeros(1, 1, 1, 4))
    assert m["n_valid"] == 1 and m["epe"] == pytest.approx(2.0) and m["epe_noc"] == pytest.approx(2.0)
    assert m["fl_all"] == 0 and m["acc_1px"] == 0 and m["acc_3px"] == 100
    s = stereo_metrics(torch.tensor([[[[5.0, 12.0]]]]), torch.tensor([[[[math.inf, 10.0]]]]), torch.ones(1, 1, 1, 2))
    assert s["n_valid"] == 1 and s["epe"] == pytest.approx(2.0) and s["bad_1"] == 100 and s["bad_2"] == 0


def test_an_infinite_prediction_is_an_infinite_error_not_the_largest_float():
    gt = torch.zeros(1, 2, 1, 2)
    valid = torch.ones(1, 1, 1, 2, dtype=torch.bool)
    for bad in (math.inf, -math.inf):
        pred = torch.zeros(1, 2, 1, 2)
        pred[0, 1, 0, 0] = bad
        m = flow_metrics(pred, gt, valid)
        assert m["epe"] == math.inf and m["fl_all"] == pytest.approx(50.0)  # was 1.7e38: 3.4e38 / 2
        s = stereo_metrics(pred[:, 1:], gt[:, 1:], valid)
        assert s["epe"] == math.inf and s["d1"] == pytest.approx(50.0)


def test_occlusion_f1_of_an_item_without_valid_pixels_is_nan_not_perfect():
    pred = torch.tensor([[[[1.0, 1.0]]], [[[1.0, 1.0]]]])
    gt = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 0.0]]]])
    valid = torch.tensor([[[[True, True]]], [[[False, False]]]])
    # item 0: TP 1, FP 1 -> 2 / 3; item 1 has nothing to score (was 1.0, raising the batch mean to 5 / 6)
    assert occlusion_f1(pred, gt, valid) == pytest.approx(2 / 3)
    assert math.isnan(occlusion_f1(pred[1:], gt[1:], valid[1:]))


def test_mean_metrics_reads_rows_back_from_json():
    """`eval --json` writes inf and NaN as null; averaging those rows again raised TypeError on the pixel means."""
    rows = [
        {"name": "a", "epe": None, "fl_all": 50.0, "n_valid": 2.0},
        {"name": "b", "epe": 2.0, "fl_all": 0.0, "n_valid": 6.0},
    ]
    mean = mean_metrics(rows)
    assert mean["epe"] == 2.0 and mean["epe_px"] == 2.0
    assert mean["fl_all"] == pytest.approx(25.0) and mean["fl_all_px"] == pytest.approx(100 * 1 / 8)


def test_stereo_vertical_error_over_valid_pixels():
    from flowcli.evaluation import score_item

    disparity = torch.tensor([[[10.0, 20.0, 30.0, 40.0]]])
    item = {"name": "x", "valid": torch.tensor([[[True, True, False, True]]]), "disparity": disparity}
    flow = torch.stack((-disparity[0], torch.tensor([[0.5, -2.0, 3.0, 1.0]])))[None]  # v = 3 is not valid
    row = score_item(item, flow, stereo=True)
    assert row["epe"] == 0 and row["n_valid"] == 3
    assert row["vert_abs"] == pytest.approx((0.5 + 2.0 + 1.0) / 3)
    assert row["vert_gt1"] == pytest.approx(100 / 3)  # only |-2|; 1.0 is not > 1


def test_a_nan_vertical_flow_is_an_infinite_vertical_error():
    """A NaN v made vert_abs NaN, which the dataset mean skips as if the item had no pixel, and vert_gt1 counted
    it as under 1 px."""
    from flowcli.evaluation import score_item

    disparity = torch.tensor([[[10.0, 20.0]]])
    item = {"name": "x", "valid": torch.tensor([[[True, True]]]), "disparity": disparity}
    flow = torch.stack((-disparity[0], torch.tensor([[math.nan, 0.0]])))[None]
    row = score_item(item, flow, stereo=True)
    assert row["vert_abs"] == math.inf and row["vert_gt1"] == pytest.approx(50.0)


def test_face_nme_is_mean_point_distance_over_sqrt_of_the_gt_box_area():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "face_aflw.py"
    spec = importlib.util.spec_from_file_location("face_aflw", path)
    face_aflw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(face_aflw)
    gt = torch.rand(68, 2, generator=torch.Generator().manual_seed(0)).double().numpy() * [4.0, 9.0]
    gt[0], gt[1] = (0.0, 0.0), (4.0, 9.0)  # the box is 4 x 9: sqrt(36) = 6
    pred = gt.copy()
    pred[:34] += (3.0, 4.0)  # 34 points 5 px off, 34 exact: mean distance 2.5
    assert face_aflw.nme(pred, gt) == pytest.approx(2.5 / 6)
