"""`flowcli eval --predictions DIR` / `evaluate_predictions`: flow and disparity files from any tool, scored by the
same per-item code as a model."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_harness import assert_one_line_error, in_process_cli

from flowcli.data import make_dataset
from flowcli.errors import InputError
from flowcli.evaluation import evaluate, evaluate_predictions, fill_like_kitti_devkit
from flowcli.io.flow_formats import write_disparity_png, write_flo, write_kitti_flow, write_npy, write_pfm, write_png

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "flow").is_dir(), reason="../shared/data is absent")
CHAIRS = DATA / "flow" / "chairs"
SINTEL = DATA / "flow" / "sintel"


def _flow_hw2(item: dict) -> np.ndarray:
    return item["flow"].permute(1, 2, 0).numpy()


def _write_mask(path: Path, mask: torch.Tensor) -> None:
    """An occlusion mask [..., H, W] (1 = occluded) as flowcli estimate --occlusion writes it: 8-bit, 255 = occluded."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(path, (mask.reshape(mask.shape[-2:]).numpy() > 0.5).astype(np.uint8) * 255)


@needs_data
def test_the_ground_truth_as_predictions_scores_zero(tmp_path):
    for index, item in enumerate(make_dataset("chairs", CHAIRS)):
        suffix = "_flow" if index % 2 else ""  # both names are found: NAME.flo and flowcli estimate's NAME_flow.flo
        write_flo(tmp_path / f"{item['name']}{suffix}.flo", _flow_hw2(item))
    report = evaluate_predictions("chairs", CHAIRS, tmp_path, progress=False)
    assert [row["name"] for row in report.per_item] == ["00001", "00002", "00003", "00004", "00005", "00006"]
    for row in report.per_item:
        assert row["epe"] == 0 and row["fl_all"] == 0 and row["acc_1px"] == 100, row
        assert "seconds" not in row and "occ_f1" not in row  # nothing was timed, no occlusion was predicted
    assert report.mean["epe"] == 0 and report.mean["fl_all_px"] == 0 and report.mean["items"] == 6
    assert report.model == str(tmp_path)


@pytest.fixture(scope="module")
def model_and_its_files(tmp_path_factory):
    """The bundled model through `evaluate` (2 Chairs items, 1 Sintel item with occlusion), and the flow and
    occlusion that `estimate_flow` gave it for those items, written as flowcli estimate names them: NAME_flow.flo,
    NAME_occ.png. (Recorded rather than estimated again: the model runs once per item, half the time.)"""
    if not (DATA / "flow").is_dir():
        pytest.skip("../shared/data is absent")
    from flowcli import inference
    from flowcli.models import load_model

    model = load_model(None, device=torch.device("cpu")).eval()
    folder = tmp_path_factory.mktemp("predictions")
    results = []

    def recording(*args, **kwargs):
        results.append(real(*args, **kwargs))
        return results[-1]

    real = inference.estimate_flow
    reports = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(inference, "estimate_flow", recording)
        for name, root, count in (("chairs", CHAIRS, 2), ("sintel-clean", SINTEL, 1)):
            results.clear()
            reports[name] = evaluate(model, name, root, max_items=count, progress=False)
            for row, result in zip(reports[name].per_item, results, strict=True):
                (folder / row["name"]).parent.mkdir(parents=True, exist_ok=True)
                write_flo(folder / f"{row['name']}_flow.flo", result.forward)
                if result.occlusion is not None:
                    _write_mask(folder / f"{row['name']}_occ.png", result.occlusion)
    assert (folder / "alley_1" / "frame_0002_occ.png").is_file()
    return reports, folder


def test_a_models_flow_files_score_what_the_model_scores(model_and_its_files):
    reports, folder = model_and_its_files
    for name, root in (("chairs", CHAIRS), ("sintel-clean", SINTEL)):
        expected = reports[name]
        got = evaluate_predictions(name, root, folder, max_items=len(expected.per_item), progress=False)
        assert [row["name"] for row in got.per_item] == [row["name"] for row in expected.per_item]
        for ours, theirs in zip(got.per_item, expected.per_item):
            assert theirs["epe"] > 0.1  # a real flow, not a trivial zero
            for key in ("epe", "fl_all", "acc_1px", "acc_3px", "acc_5px", "epe_noc", "epe_occ"):
                if key in theirs:
                    assert ours[key] == pytest.approx(theirs[key], abs=1e-4), (name, key)
            assert set(ours) == set(theirs) - {"seconds"}


def test_occlusion_masks_score_the_models_occlusion_f1(model_and_its_files, tmp_path):
    reports, folder = model_and_its_files
    expected = reports["sintel-clean"].per_item[0]
    row = evaluate_predictions("sintel-clean", SINTEL, folder, max_items=1, progress=False).per_item[0]
    assert 0 < expected["occ_f1"] < 1 and row["occ_f1"] == pytest.approx(expected["occ_f1"], abs=1e-9)
    without = evaluate_predictions("sintel-clean", SINTEL, folder, max_items=1, occlusion=False, progress=False)
    assert "occ_f1" not in without.per_item[0]

    name = expected["name"]
    (tmp_path / name).parent.mkdir(parents=True)
    (tmp_path / f"{name}_flow.flo").write_bytes((folder / f"{name}_flow.flo").read_bytes())
    from flowcli.io.flow_formats import read_png

    mask = torch.from_numpy(read_png(folder / f"{name}_occ.png") > 127)
    _write_mask(tmp_path / f"{name}_occ.png", ~mask)
    inverted = evaluate_predictions("sintel-clean", SINTEL, tmp_path, max_items=1, progress=False).per_item[0]
    assert 0 <= inverted["occ_f1"] <= 1 and abs(inverted["occ_f1"] - row["occ_f1"]) > 0.05
    assert inverted["epe"] == row["epe"]


@needs_data
def test_kitti_png_and_npy_predictions_read_as_written(tmp_path):
    kitti = make_dataset("kitti2015", DATA / "flow" / "kitti2015")[0]
    offset = np.array([0.5, -0.25], np.float32)  # multiples of 1/64: exact in a KITTI PNG
    write_kitti_flow(tmp_path / "kitti" / f"{kitti['name']}.png", _flow_hw2(kitti) + offset)
    row = evaluate_predictions("kitti2015", DATA / "flow" / "kitti2015", tmp_path / "kitti", progress=False).per_item[0]
    assert row["epe"] == pytest.approx(math.hypot(0.5, 0.25), abs=1e-6) and row["fl_all"] == 0

    chairs = make_dataset("chairs", CHAIRS)[0]
    write_npy(tmp_path / "chairs" / f"{chairs['name']}.npy", _flow_hw2(chairs) + np.float32([3.0, 4.0]))
    row = evaluate_predictions("chairs", CHAIRS, tmp_path / "chairs", max_items=1, progress=False).per_item[0]
    assert row["epe"] == pytest.approx(5.0, abs=1e-4) and row["acc_3px"] == 0


NAN = math.nan


def _fill(rows: list) -> list:
    """fill_like_kitti_devkit on a disparity [H][W] (or, with [u, v] pixels, a flow) given as lists; NaN = unknown."""
    array = torch.tensor(rows, dtype=torch.float32)
    prediction = array[None] if array.dim() == 2 else array.permute(2, 0, 1)
    before = prediction.clone()
    filled = fill_like_kitti_devkit(prediction)
    assert torch.equal(prediction.nan_to_num(7.5), before.nan_to_num(7.5))  # the input is left as it was
    return (filled[0] if array.dim() == 2 else filled.permute(1, 2, 0)).tolist()


def test_the_devkit_fills_a_gap_in_a_row_with_the_smaller_neighbour():
    """io_disp.h / io_flow.h interpolateBackground: a run of unknowns between two known pixels takes their min; for
    flow u and v separately (here u from the left neighbour, v from the right one)."""
    assert _fill([[4, NAN, NAN, 2]]) == [[4, 2, 2, 2]]
    assert _fill([[[1, 5], [NAN, NAN], [NAN, 7], [3, 2]]]) == [[[1, 5], [1, 2], [1, 2], [3, 2]]]
    assert _fill([[1, NAN, 5, NAN, 3]]) == [[1, 1, 5, 3, 3]]  # each gap by its own neighbours


def test_the_devkit_extends_a_row_to_the_left_and_right_from_its_outer_known_pixels():
    assert _fill([[NAN, 3, NAN, 5, NAN, NAN]]) == [[3, 3, 3, 5, 5, 5]]
    assert _fill([[[NAN, NAN], [2, -1], [math.inf, 0]]]) == [[[2, -1], [2, -1], [2, -1]]]  # inf is unknown too


def test_the_devkit_fills_unknown_rows_from_the_columns():
    """Rows are filled first, then every row above the first known row copies it and every row below the last
    known row copies that. An unknown row between two known rows is left as the devkit's reader left it:
    disparity -1, flow (0, 0)."""
    rows = [[NAN, NAN, NAN], [1, NAN, 2], [NAN, 4, NAN], [NAN, NAN, NAN]]
    assert _fill(rows) == [[1, 1, 2], [1, 1, 2], [4, 4, 4], [4, 4, 4]]
    assert _fill([[1, 1], [NAN, NAN], [2, NAN]]) == [[1, 1], [-1, -1], [2, 2]]
    assert _fill([[[1, 1]], [[NAN, NAN]], [[2, 2]]]) == [[[1, 1]], [[0, 0]], [[2, 2]]]


@needs_data
def test_a_sparse_kitti_flow_prediction_is_filled_as_the_devkit_does_and_reports_its_density(tmp_path):
    """The ground truth of KITTI 2015 written back as a KITTI PNG, valid where the ground truth is but in every third
    column: the devkit's filling scores it close to exact, with density 2/3; a dense one has density 1."""
    root = DATA / "flow" / "kitti2015"
    item = make_dataset("kitti2015", root)[0]
    valid = item["valid"][0].numpy()
    given = valid.copy()
    given[:, 1::3] = False
    write_kitti_flow(tmp_path / "sparse" / f"{item['name']}.png", _flow_hw2(item), valid=given)
    report = evaluate_predictions("kitti2015", root, tmp_path / "sparse", progress=False)
    row = report.per_item[0]
    assert row["density"] == pytest.approx(given.sum() / valid.sum(), abs=1e-12) and 0.6 < row["density"] < 0.7
    assert 0 < row["epe"] < 0.5 and math.isfinite(row["fl_all"])  # filled from the neighbours, not zeros (9 px off)
    assert report.mean["density"] == report.mean["density_px"] == row["density"]

    offset = np.array([0.5, -0.25], np.float32)  # as in the test above: its score must not change
    write_kitti_flow(tmp_path / "dense" / f"{item['name']}.png", _flow_hw2(item) + offset)
    dense = evaluate_predictions("kitti2015", root, tmp_path / "dense", progress=False)
    assert dense.per_item[0]["density"] == 1.0 and dense.mean["density"] == 1.0
    assert dense.per_item[0]["epe"] == pytest.approx(math.hypot(0.5, 0.25), abs=1e-6)
    assert dense.per_item[0]["fl_all"] == 0


def _tiny_kitti_stereo(root: Path, disparity: np.ndarray) -> None:
    """A KITTI 2015 stereo layout with one item, 000000_10, whose ground truth is `disparity` (all valid)."""
    for folder in ("image_2", "image_3"):
        write_png(root / "training" / folder / "000000_10.png", np.zeros((*disparity.shape, 3), np.uint8))
    write_disparity_png(root / "training" / "disp_occ_0" / "000000_10.png", disparity)


@pytest.mark.parametrize("as_flow", [False, True], ids=["disparity_png", "flow_npy"])
def test_a_sparse_kitti_stereo_prediction_is_filled_with_the_smaller_disparity(tmp_path, as_flow):
    """Ground truth 8 px everywhere (4x6); the prediction is exact but for row 1 = 8 8 ? ? 2 8: the devkit fills the
    gap with min(8, 2) = 2, so three pixels are 6 px off. As a flow (u = -disparity) the same: the min of the
    disparities is the max of u."""
    _tiny_kitti_stereo(tmp_path / "kitti", np.full((4, 6), 8.0, np.float32))
    disparity = np.full((4, 6), 8.0, np.float32)
    disparity[1, 2:4] = NAN
    disparity[1, 4] = 2.0
    if as_flow:
        write_npy(tmp_path / "preds" / "000000_10_flow.npy", np.stack((-disparity, np.zeros_like(disparity)), -1))
    else:
        write_disparity_png(tmp_path / "preds" / "000000_10.png", disparity)  # NaN: written as 0, unknown
    row = evaluate_predictions("kitti-stereo", tmp_path / "kitti", tmp_path / "preds", progress=False).per_item[0]
    assert row["density"] == pytest.approx(22 / 24) and row["epe"] == pytest.approx(18 / 24)
    assert row["d1"] == pytest.approx(100 * 3 / 24) and row["bad_4"] == pytest.approx(100 * 3 / 24)
    if as_flow:
        assert row["vert_abs"] == 0


def test_a_kitti_prediction_without_any_known_pixel_is_refused(tmp_path, cli):
    _tiny_kitti_stereo(tmp_path / "kitti", np.full((4, 6), 8.0, np.float32))
    write_disparity_png(tmp_path / "preds" / "000000_10.png", np.zeros((4, 6)), valid=np.zeros((4, 6), bool))
    code, out, err = cli("-d", "kitti-stereo", "-r", tmp_path / "kitti", "--predictions", tmp_path / "preds", "-q")
    assert_one_line_error(code, err, 2, str(tmp_path / "preds" / "000000_10.png"), "no pixel with a finite value")
    assert out == ""


def test_the_cli_prints_the_density_of_a_sparse_kitti_prediction_in_json(tmp_path, cli):
    _tiny_kitti_stereo(tmp_path / "kitti", np.full((4, 6), 8.0, np.float32))
    valid = np.ones((4, 6), bool)
    valid[0, :3] = False
    write_disparity_png(tmp_path / "preds" / "000000_10.png", np.full((4, 6), 8.0), valid=valid)
    code, out, err = cli("-d", "kitti-stereo", "-r", tmp_path / "kitti", "--predictions", tmp_path / "preds",
                         "--json", "-q")  # fmt: skip
    assert code == 0, err
    result = json.loads(out)["results"]["kitti-stereo"]
    assert result["per_item"][0]["density"] == 0.875 and result["per_item"][0]["epe"] == 0
    assert result["mean"]["density"] == result["mean"]["density_px"] == 0.875


@needs_data
def test_stereo_disparity_predictions(tmp_path):
    root = DATA / "stereo" / "middlebury"
    dataset = make_dataset("middlebury-stereo", root)
    for item in dataset:
        disparity = item["disparity"][0].numpy()
        write_pfm(tmp_path / "exact" / f"{item['name']}.pfm", disparity)
        write_pfm(tmp_path / "plus_one" / f"{item['name']}_disp.pfm", disparity + 1)  # flowcli stereo's name
        # flowcli's stereo convention: the left -> right flow is (-disparity, 0)
        write_npy(tmp_path / "flow" / f"{item['name']}_flow.npy", np.stack((-disparity, np.zeros_like(disparity)), -1))
    exact = evaluate_predictions("middlebury-stereo", root, tmp_path / "exact", progress=False)
    assert len(exact.per_item) == 3
    for row in exact.per_item:
        assert row["epe"] == 0 and row["d1"] == 0 and row["bad_1"] == 0
        assert "vert_abs" not in row  # a disparity map has no vertical component to score
    # one item each from here: the same code path, a third of the time
    plus_one = evaluate_predictions("middlebury-stereo", root, tmp_path / "plus_one", max_items=1, progress=False)
    assert plus_one.per_item[0]["epe"] == pytest.approx(1.0, abs=1e-4) and plus_one.per_item[0]["bad_2"] == 0
    as_flow = evaluate_predictions("middlebury-stereo", root, tmp_path / "flow", max_items=1, progress=False)
    assert as_flow.per_item[0]["epe"] == 0 and as_flow.per_item[0]["vert_abs"] == 0


def _tiny_chairs(root: Path, pairs: int = 2, size=(12, 16)) -> None:
    rng = np.random.default_rng(0)
    for index in range(1, pairs + 1):
        for frame in ("img1", "img2"):
            write_png(root / "data" / f"{index:05d}_{frame}.png", rng.integers(0, 255, (*size, 3), dtype=np.uint8))
        write_flo(root / "data" / f"{index:05d}_flow.flo", np.full((*size, 2), index, np.float32))


@pytest.fixture
def cli(monkeypatch, capsys):
    monkeypatch.setattr("flowcli.models.load_model", lambda *a, **k: pytest.fail("model loaded"))
    return in_process_cli(monkeypatch, capsys, "eval")


def test_the_cli_scores_predictions_and_prints_their_folder_in_json(tmp_path, cli):
    _tiny_chairs(tmp_path / "chairs")
    write_flo(tmp_path / "preds" / "00001.flo", np.full((12, 16, 2), 1.0, np.float32))  # exact
    write_flo(tmp_path / "preds" / "00002_flow.flo", np.full((12, 16, 2), 2.0, np.float32) + [3.0, 4.0])
    code, out, err = cli("-d", "chairs", "-r", tmp_path / "chairs", "--predictions", tmp_path / "preds", "--json")
    assert code == 0, err
    payload = json.loads(out)
    assert set(payload) == {"predictions", "results"} and payload["predictions"] == str(tmp_path / "preds")
    result = payload["results"]["chairs"]
    assert [(row["name"], row["epe"]) for row in result["per_item"]] == [("00001", 0.0), ("00002", 5.0)]
    assert result["mean"]["epe"] == 2.5 and result["mean"]["items"] == 2
    assert "00002" in err and "s/pair" not in err  # the table, without a time column


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_json_to_a_full_device_is_a_one_line_error(tmp_path):
    """`flowcli eval --json > /dev/full` ended in an ENOSPC traceback."""
    _tiny_chairs(tmp_path / "chairs", pairs=1)
    write_flo(tmp_path / "preds" / "00001.flo", np.zeros((12, 16, 2), np.float32))
    command = [sys.executable, "-m", "flowcli.cli.main", "eval", *map(str, _args(tmp_path, "--json"))]
    with open("/dev/full", "w") as full:
        proc = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.startswith("error: cannot write to stdout: No space left on device; ") and (
        proc.stderr.count("\n") == 1
    )


def test_the_help_names_every_exit_code_eval_gives():
    """The help listed 0, 1, 2 and 4: not 3 (stdout that cannot be written, above), 130 (Ctrl-C) or 143 (SIGTERM)."""
    from flowcli.cli.eval import EVAL_HELP

    codes = EVAL_HELP.split("Exit codes: ", 1)[1].split("\n", 1)[0]
    for code in ("0 ok", "1 other error", "2 input error", "3 output error", "4 weights error", "130 interrupted",
                 "143 terminated"):  # fmt: skip
        assert code in codes


def _args(tmp_path: Path, *more) -> list:
    return ["-d", "chairs", "-r", tmp_path / "chairs", "--predictions", tmp_path / "preds", "-q", *more]


def _sintel_scene_and_prediction(tmp_path: Path, scene: str) -> None:
    """tmp_path/sintel with one item, SCENE/frame_0001 (zero flow), and its exact prediction in tmp_path/preds."""
    sintel = tmp_path / "sintel" / "training"
    for frame in (1, 2):
        write_png(sintel / "clean" / scene / f"frame_000{frame}.png", np.zeros((12, 16, 3), np.uint8))
    write_flo(sintel / "flow" / scene / "frame_0001.flo", np.zeros((12, 16, 2), np.float32))
    write_flo(tmp_path / "preds" / scene / "frame_0001_flow.flo", np.zeros((12, 16, 2), np.float32))


def test_an_item_name_with_brackets_is_shown_as_it_is_in_the_table(tmp_path, cli):
    """rich read the scene of Sintel item [b]/frame_0001 as markup: the table's row said /frame_0001."""
    _sintel_scene_and_prediction(tmp_path, "[b]")
    code, _, err = cli("-d", "sintel-clean", "-r", tmp_path / "sintel", "--predictions", tmp_path / "preds")
    assert code == 0, err
    assert "[b]/frame_0001" in err


def test_an_item_name_with_brackets_is_shown_as_it_is_in_the_progress_bar(tmp_path, monkeypatch):
    """The progress bar's info (the item and its EPE) is markup too: [b]/frame_0001 was shown as /frame_0001."""
    import io

    from rich.console import Console

    import flowcli.console

    screen = io.StringIO()
    monkeypatch.setattr(flowcli.console, "stderr", Console(file=screen, force_terminal=True, width=200))
    _sintel_scene_and_prediction(tmp_path, "[b]")
    evaluate_predictions("sintel-clean", tmp_path / "sintel", tmp_path / "preds", progress=True)
    assert "[b]/frame_0001 epe 0.00" in screen.getvalue()


def test_a_missing_prediction_names_the_files_looked_for_and_the_count(tmp_path, cli):
    _tiny_chairs(tmp_path / "chairs", pairs=3)
    write_flo(tmp_path / "preds" / "00002.flo", np.zeros((12, 16, 2), np.float32))
    code, out, err = cli(*_args(tmp_path))
    looked_for = f"{tmp_path / 'preds' / '00001'}.{{flo,png,npy,pfm}}, {tmp_path / 'preds' / '00001'}_flow."
    assert_one_line_error(code, err, 2, "no prediction for chairs item 00001", looked_for, "2 of 3 items have none")
    assert out == ""


def test_a_missing_prediction_names_the_first_frame_names_looked_for_too(tmp_path, cli):
    _tiny_chairs(tmp_path / "chairs", pairs=1)
    write_flo(tmp_path / "preds" / "00001_img2_flow.flo", np.zeros((12, 16, 2), np.float32))  # frame 2's name
    code, out, err = cli(*_args(tmp_path))
    preds = tmp_path / "preds"
    assert_one_line_error(code, err, 2, f"{preds / '00001_img1_flow'}.{{flo,png,npy,pfm}}",
                          f"{preds / 'data' / '00001_img1_flow'}.{{flo,png,npy,pfm}}); 1 of 1 items have none")


def test_a_root_with_a_tilde_is_in_the_home_folder_as_the_predictions_folder_is(tmp_path, cli, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # `--root=~/chairs`: the shell leaves a ~ after = alone
    _tiny_chairs(tmp_path / "chairs", pairs=1)
    write_flo(tmp_path / "preds" / "00001.flo", np.full((12, 16, 2), 1.0, np.float32))
    code, out, err = cli("-d", "chairs", "--root=~/chairs", "--predictions=~/preds", "--json", "-q")
    assert code == 0, err
    assert json.loads(out)["results"]["chairs"]["mean"]["epe"] == 0.0


def test_two_candidates_for_one_item_are_refused_naming_both(tmp_path, cli):
    _tiny_chairs(tmp_path / "chairs", pairs=1)
    write_flo(tmp_path / "preds" / "00001.flo", np.zeros((12, 16, 2), np.float32))
    write_npy(tmp_path / "preds" / "00001_flow.npy", np.zeros((12, 16, 2), np.float32))
    code, _, err = cli(*_args(tmp_path))
    both = str(tmp_path / "preds" / "00001.flo"), str(tmp_path / "preds" / "00001_flow.npy")
    assert_one_line_error(code, err, 2, "2 predictions for chairs item 00001", *both)


def test_a_prediction_of_another_size_is_refused(tmp_path, cli):
    _tiny_chairs(tmp_path / "chairs", pairs=1)
    write_flo(tmp_path / "preds" / "00001.flo", np.zeros((10, 16, 2), np.float32))
    code, _, err = cli(*_args(tmp_path))
    assert_one_line_error(code, err, 2, str(tmp_path / "preds" / "00001.flo"), "is 16x10", "item 00001 is 16x12")


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e10])  # 1e10: .flo's "unknown" marker
def test_non_finite_predictions_get_no_score(tmp_path, cli, bad):
    _tiny_chairs(tmp_path / "chairs", pairs=1)
    flow = np.zeros((12, 16, 2), np.float32)
    flow[0, :3, 1] = bad
    write_flo(tmp_path / "preds" / "00001.flo", flow)
    code, out, err = cli(*_args(tmp_path, "--json"))
    assert_one_line_error(code, err, 2, str(tmp_path / "preds" / "00001.flo"), "3 of 192 pixels")
    assert out == ""


def test_an_invalid_pixel_of_a_kitti_png_prediction_gets_no_score(tmp_path):
    _tiny_chairs(tmp_path / "chairs", pairs=1)
    valid = np.ones((12, 16), bool)
    valid[5, 5] = False
    write_kitti_flow(tmp_path / "preds" / "00001.png", np.ones((12, 16, 2), np.float32), valid=valid)
    with pytest.raises(InputError, match="00001.png has 1 of 192 pixels"):
        evaluate_predictions("chairs", tmp_path / "chairs", tmp_path / "preds", progress=False)


def test_a_hole_in_a_sintel_prediction_is_refused_saying_only_kitti_fills_gaps(tmp_path, cli):
    sintel = tmp_path / "sintel" / "training"
    for frame in (1, 2):
        write_png(sintel / "clean" / "alley_1" / f"frame_000{frame}.png", np.zeros((12, 16, 3), np.uint8))
    write_flo(sintel / "flow" / "alley_1" / "frame_0001.flo", np.zeros((12, 16, 2), np.float32))
    flow = np.zeros((12, 16, 2), np.float32)
    flow[3:5, 7] = NAN
    write_flo(tmp_path / "preds" / "alley_1" / "frame_0001_flow.flo", flow)
    code, out, err = cli("-d", "sintel-clean", "-r", tmp_path / "sintel", "--predictions", tmp_path / "preds", "-q")
    assert_one_line_error(code, err, 2, "frame_0001_flow.flo has 2 of 192 pixels without a finite value",
                          "only KITTI's evaluation", "fills gaps")  # fmt: skip
    assert out == ""


@pytest.mark.parametrize(
    "options, needle",
    [
        (["--weights", "flowcli-pwc-synth"], "--weights applies to a model"),
        (["--device", "cpu", "--precision", "fp32"], "--device and --precision apply to a model"),
        (["--scale", "1"], "--scale applies"),
        (["--offline"], "--offline applies"),
    ],
)
def test_model_options_are_refused_with_predictions(tmp_path, cli, options, needle):
    _tiny_chairs(tmp_path / "chairs", pairs=1)
    write_flo(tmp_path / "preds" / "00001.flo", np.zeros((12, 16, 2), np.float32))
    code, out, err = cli(*_args(tmp_path, *options))
    assert_one_line_error(code, err, 2, needle, "--predictions")
    assert out == ""


@pytest.mark.parametrize("option, needle", [("--device", "unknown device ''"), ("--precision", "unknown precision ''")])
def test_an_empty_device_or_precision_is_refused_not_the_default(tmp_path, cli, option, needle):
    """`--device "$DEVICE"` with the variable unset ran on the default device (and --precision "" in fp32), where
    estimate and stereo refuse it."""
    _tiny_chairs(tmp_path / "chairs", pairs=1)
    code, out, err = cli("-d", "chairs", "-r", tmp_path / "chairs", option, "", "-q")
    assert_one_line_error(code, err, 2, needle)
    assert out == ""


def test_an_empty_root_or_predictions_folder_is_refused_not_the_current_folder(tmp_path, cli, monkeypatch):
    """`--predictions "$PREDS"` with the variable unset read the current folder: in a Chairs data/ folder the ground
    truth NNNNN_flow.flo was scored as the predictions, EPE 0. `--root ""` read it as the dataset."""
    _tiny_chairs(tmp_path / "chairs", pairs=1)
    write_flo(tmp_path / "preds" / "00001.flo", np.zeros((12, 16, 2), np.float32))
    monkeypatch.chdir(tmp_path / "chairs" / "data")
    code, out, err = cli("-d", "chairs", "-r", tmp_path / "chairs", "--predictions", "", "--json")
    assert_one_line_error(code, err, 2, '--predictions "" is empty', "current folder")
    code, out, err = cli("-d", "chairs", "-r", "", "--predictions", tmp_path / "preds", "--json")
    assert_one_line_error(code, err, 2, '--root "" is empty', "current folder", "chairs dataset folder")
    assert out == ""


def test_sintel_both_passes_and_a_missing_folder_are_refused(tmp_path, cli):
    _tiny_chairs(tmp_path / "chairs", pairs=1)
    code, _, err = cli("-d", "sintel", "-r", tmp_path, "--predictions", tmp_path)
    assert_one_line_error(code, err, 2, "-d sintel-clean or -d sintel-final")
    code, _, err = cli(*_args(tmp_path))
    assert_one_line_error(code, err, 2, f"predictions folder {tmp_path / 'preds'} is not a folder")


def test_flowcli_estimate_names_are_found_by_the_items_first_frame(tmp_path, cli):
    """`flowcli estimate --pairs` names Chairs' outputs after frame 1 (00001_img1_flow.flo), and --name
    '{source}/{frame1}' gives SCENE/frame10_flow.flo for Middlebury: both are found. A frame name that two
    items share (Sintel's frame_0002 in every scene) would score one file twice, and is refused."""
    _tiny_chairs(tmp_path / "chairs")
    write_flo(tmp_path / "preds" / "00001_img1_flow.flo", np.full((12, 16, 2), 1.0, np.float32))  # exact
    write_flo(tmp_path / "preds" / "data" / "00002_img1_flow.flo", np.full((12, 16, 2), 2.0, np.float32) + [3.0, 4.0])
    code, out, err = cli("-d", "chairs", "-r", tmp_path / "chairs", "--predictions", tmp_path / "preds", "--json")
    assert code == 0, err
    rows = json.loads(out)["results"]["chairs"]["per_item"]
    assert [(row["name"], row["epe"]) for row in rows] == [("00001", 0.0), ("00002", 5.0)]

    sintel = tmp_path / "sintel" / "training"
    for scene in ("alley_1", "cave_2"):
        for frame in (1, 2):
            write_png(sintel / "clean" / scene / f"frame_000{frame}.png", np.zeros((12, 16, 3), np.uint8))
        write_flo(sintel / "flow" / scene / "frame_0001.flo", np.zeros((12, 16, 2), np.float32))
    write_flo(tmp_path / "flat" / "frame_0001_flow.flo", np.zeros((12, 16, 2), np.float32))
    code, _, err = cli("-d", "sintel-clean", "-r", tmp_path / "sintel", "--predictions", tmp_path / "flat", "-q")
    assert_one_line_error(code, err, 2, "would be the prediction of both alley_1/frame_0001 and cave_2/frame_0001",
                          "--name '{source}/{frame1}'")


# ----------------------------------------------------------------------------- eval running a model

TINY = dict(pyramid_channels=(8, 8, 8, 8, 8, 8), decoder_channels=(8, 8), context_channels=(8,), context_dilations=(1,))


def _tiny_sintel_with_occlusion(root: Path) -> None:
    rng = np.random.default_rng(0)
    base = root / "training"
    for frame in (1, 2):
        write_png(base / "clean" / "alley_1" / f"frame_000{frame}.png", rng.integers(0, 255, (32, 48, 3), np.uint8))
    write_flo(base / "flow" / "alley_1" / "frame_0001.flo", np.zeros((32, 48, 2), np.float32))
    occluded = np.zeros((32, 48), np.uint8)
    occluded[:, :12] = 255
    write_png(base / "occlusions" / "alley_1" / "frame_0001.png", occluded)


@pytest.fixture
def model_cli(monkeypatch, capsys):
    torch.manual_seed(0)
    return in_process_cli(monkeypatch, capsys, "eval")


@pytest.mark.parametrize("matching", ["pwc", "maskflownet"])
def test_precision_auto_and_the_learned_occlusion_column(tmp_path, model_cli, matching):
    """--precision auto was refused, unlike in estimate and stereo; a model's own occlusion mask was scored in --json
    (occ_f1_learned) but had no column in the table."""
    from flowcli.checkpoint import save_checkpoint
    from flowcli.models.pwc import FlowNet, FlowNetConfig

    _tiny_sintel_with_occlusion(tmp_path / "sintel")
    weights = save_checkpoint(FlowNet(FlowNetConfig(matching=matching, **TINY)), tmp_path / "tiny.safetensors")
    code, out, err = model_cli("-d", "sintel-clean", "-r", tmp_path / "sintel", "-w", weights, "--device", "cpu",
                               "--precision", "auto", "--json")
    assert code == 0, err
    payload = json.loads(out)
    assert payload["precision"] == "fp32"  # auto is fp32 off CUDA
    row = payload["results"]["sintel-clean"]["per_item"][0]
    header = next(line for line in err.splitlines() if "EPE" in line)
    cells = next(line for line in err.splitlines() if "alley_1/frame_0001" in line)

    def cell(label: str) -> str:  # numbers are right-aligned under their label
        return cells[: header.index(label) + len(label)].split()[-1]

    assert cell("occ F1") == f"{row['occ_f1']:.3f}"  # from forward-backward consistency
    if matching == "maskflownet":
        assert 0 <= row["occ_f1_learned"] <= 1
        assert cell("learned F1") == f"{row['occ_f1_learned']:.3f}"
    else:
        assert "occ_f1_learned" not in row and "learned" not in header


@needs_data
def test_a_terminal_too_narrow_for_the_table_gets_it_in_parts_that_fit(monkeypatch):
    """On an 80-column terminal one Sintel table (117 columns wide) came out with its numbers cut to "0.…"; it is
    now printed as several tables of the columns that fit, every one with the items."""
    import io

    from rich.console import Console

    import flowcli.console
    from flowcli.cli.eval import _print_report
    from flowcli.evaluation import EvalReport
    from flowcli.metrics import mean_metrics

    row = {"name": "market_5/frame_0002", "width": 1024, "height": 436, "n_valid": 446464, "epe": 16.815,
           "epe_noc": 16.498, "epe_occ": 19.066, "fl_all": 58.52, "acc_1px": 22.8, "acc_3px": 41.5, "acc_5px": 48.8,
           "occ_f1": 0.321, "seconds": 0.56}  # fmt: skip
    report = EvalReport(dataset="sintel-clean", per_item=[row], mean=mean_metrics([row]))
    screen = io.StringIO()
    terminal = Console(file=screen, force_terminal=True, width=80, color_system=None)
    monkeypatch.setattr(flowcli.console, "stderr", terminal)
    _print_report(report, stereo=False)
    text = screen.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text and text.count("market_5/frame_0002") >= 2
    for shown in ("16.815", "19.066", "58.52", "48.8", "0.321", "0.56"):
        assert shown in text


def test_quiet_fetches_the_weights_quietly(tmp_path, model_cli, monkeypatch):
    """eval -q left the weights' download progress on stderr: the fetch was not told to be quiet, as estimate,
    stereo and export tell it."""
    import flowcli.registry

    real = flowcli.registry.resolve
    quiet_asked = []

    def resolve(spec, offline=False, *, quiet=False):
        quiet_asked.append(quiet)
        return real(spec, offline=offline, quiet=quiet)

    monkeypatch.setattr(flowcli.registry, "resolve", resolve)
    _tiny_chairs(tmp_path / "chairs", pairs=1)
    for options, quiet in ((["-q"], True), ([], False)):
        code, _, err = model_cli("-d", "chairs", "-r", tmp_path / "chairs", "--device", "cpu", *options)
        assert code == 0, err
        assert quiet_asked.pop() is quiet


def test_the_datasets_own_ground_truth_is_refused_as_a_prediction(tmp_path, cli):
    """--predictions given the dataset's own folder (Chairs data/, Sintel flow/, KITTI flow_occ/) found each item's
    ground truth by its name and scored it: EPE 0, a perfect score without a word."""
    _tiny_chairs(tmp_path / "chairs", pairs=1)
    data = tmp_path / "chairs" / "data"
    code, out, err = cli("-d", "chairs", "-r", tmp_path / "chairs", "--predictions", data, "--json", "-q")
    expected = f"{data / '00001_flow.flo'} is the ground truth of chairs item 00001, not a prediction; give the folder"
    assert_one_line_error(code, err, 2, expected)
    assert out == ""
    _tiny_kitti_stereo(tmp_path / "kitti", np.full((4, 6), 8.0, np.float32))
    (tmp_path / "preds").mkdir()
    (tmp_path / "preds" / "000000_10.png").symlink_to(tmp_path / "kitti" / "training" / "disp_occ_0" / "000000_10.png")
    with pytest.raises(InputError, match="000000_10.png is the ground truth of kitti-stereo item 000000_10"):
        evaluate_predictions("kitti-stereo", tmp_path / "kitti", tmp_path / "preds", progress=False)


def test_a_broken_link_in_the_predictions_is_said_to_be_one(tmp_path, cli):
    """A link to a file that is gone was reported as a missing prediction, "looked for preds/00001.{flo,...}",
    while ls lists preds/00001.flo."""
    _tiny_chairs(tmp_path / "chairs", pairs=1)
    (tmp_path / "preds").mkdir()
    (tmp_path / "preds" / "00001.flo").symlink_to(tmp_path / "gone.flo")
    code, out, err = cli(*_args(tmp_path))
    link, target = tmp_path / "preds" / "00001.flo", tmp_path / "gone.flo"
    expected = f"{link} is a link to {target}, which does not exist; point it at the prediction of chairs item 00001"
    assert_one_line_error(code, err, 2, expected)


def test_a_ground_truth_left_out_for_a_missing_frame_is_warned_about_once(tmp_path, monkeypatch, capsys):
    """eval lists the dataset to check its layout before loading the model, then again to score it: the warning
    that a ground-truth file was left out came twice."""
    from flowcli.models.pwc import FlowNet, FlowNetConfig

    model = FlowNet(FlowNetConfig(**TINY))
    monkeypatch.setattr("flowcli.models.load_model", lambda *a, **k: model)
    # every warning issued is shown: in a real run, the imports of loading a model reset what hides a repeat
    cli = in_process_cli(monkeypatch, capsys, "eval", show_every_warning=True)
    _tiny_chairs(tmp_path / "chairs", pairs=2)
    (tmp_path / "chairs" / "data" / "00002_img2.png").unlink()
    code, out, err = cli("-d", "chairs", "-r", tmp_path / "chairs", "--device", "cpu", "--json", "-q")
    assert code == 0, err
    assert err.count("1 of the 2 chairs ground-truth files are left out") == 1, err
    assert json.loads(out)["results"]["chairs"]["mean"]["items"] == 1
