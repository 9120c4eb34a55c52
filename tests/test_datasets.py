"""Benchmark readers on the real items in ../shared/data, plus error paths."""

import itertools
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from flowcli.data import (
    KITTI,
    FlyingChairs,
    KITTIStereo,
    Middlebury,
    MiddleburyStereo,
    Sintel,
    UnlabeledFrames,
    make_dataset,
)
from flowcli.errors import InputError
from flowcli.metrics import flow_metrics, stereo_metrics
from flowcli.ops.warp import backward_warp

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
pytestmark = pytest.mark.skipif(not (DATA / "flow").is_dir(), reason="../shared/data is absent")


def _check_item(item, h, w, occlusion: bool):
    assert item["image1"].shape == item["image2"].shape == (3, h, w)
    assert item["image1"].dtype == torch.float32 and 0 <= item["image1"].min() and item["image1"].max() <= 1
    assert item["flow"].shape == (2, h, w) and item["flow"].dtype == torch.float32
    assert item["valid"].shape == (1, h, w) and item["valid"].dtype == torch.bool
    assert torch.isfinite(item["flow"]).all()
    assert (item["flow"][:, ~item["valid"][0]] == 0).all()  # unknown flow is zeroed
    if occlusion:
        occ = item["occlusion"]
        assert occ.shape == (1, h, w) and occ.dtype == torch.float32
        assert set(occ.unique().tolist()) <= {0.0, 1.0} and 0 < occ.mean() < 0.5
    else:
        assert item["occlusion"] is None
    assert isinstance(item["name"], str) and item["name"]


def _warp_gain(item) -> float:
    """Photometric error of frame 2 warped by the GT flow, relative to no warp (valid pixels)."""
    i1, i2 = item["image1"][None], item["image2"][None]
    mask = item["valid"][None].expand_as(i1)
    if item.get("occlusion") is not None:
        mask = mask & (item["occlusion"][None] < 0.5).expand_as(i1)
    warped = backward_warp(i2, item["flow"][None], padding_mode="border")
    return float((warped - i1).abs()[mask].mean() / (i2 - i1).abs()[mask].mean())


@pytest.mark.parametrize("dstype", ["clean", "final"])
def test_sintel(dstype):
    ds = Sintel(DATA / "flow" / "sintel", dstype=dstype)
    assert len(ds) == 3 and ds.name == f"sintel-{dstype}"
    assert [ds.samples[i]["name"] for i in range(3)] == [
        "alley_1/frame_0002",
        "cave_2/frame_0002",
        "market_5/frame_0002",
    ]
    item = ds[0]
    _check_item(item, 436, 1024, occlusion=True)
    assert 0.99 < item["valid"].float().mean() < 1  # a few invalid pixels from invalid/*.png
    assert _warp_gain(item) < 0.5
    # the split folder itself is accepted as root
    assert len(Sintel(DATA / "flow" / "sintel" / "training", dstype=dstype)) == 3


def test_chairs_both_roots():
    ds = FlyingChairs(DATA / "flow" / "chairs")
    assert len(ds) == 6 and len(FlyingChairs(DATA / "flow" / "chairs" / "data")) == 6
    item = ds[5]
    _check_item(item, 384, 512, occlusion=False)
    assert item["valid"].all() and item["name"] == "00006"
    assert _warp_gain(item) < 0.5


def test_kitti2015():
    ds = KITTI(DATA / "flow" / "kitti2015", year=2015)
    assert len(ds) == 1
    item = ds[0]
    _check_item(item, 375, 1242, occlusion=True)  # occlusion = flow_occ valid and not flow_noc valid
    density = item["valid"].float().mean()
    assert 0.1 < density < 0.6  # sparse
    assert (item["occlusion"].bool() <= item["valid"]).all()
    noc = KITTI(DATA / "flow" / "kitti2015", occ=False)[0]
    assert noc["occlusion"] is None and noc["valid"].sum() < item["valid"].sum()
    assert _warp_gain(item) < 0.7


def test_middlebury_unknown_is_invalid():
    ds = Middlebury(DATA / "flow" / "middlebury")
    assert len(ds) == 1
    item = ds[0]
    _check_item(item, 388, 584, occlusion=False)
    assert 0.8 < item["valid"].float().mean() < 1  # values >= 1e9 are unknown
    assert item["flow"].abs().max() < 100
    assert _warp_gain(item) < 0.7


def test_middlebury_stereo():
    ds = MiddleburyStereo(DATA / "stereo" / "middlebury")
    assert len(ds) == 3
    sizes = {}
    for item in ds:
        h, w = item["image1"].shape[-2:]
        sizes[item["name"]] = (w, h)
        assert item["disparity"].shape == item["valid"].shape == (1, h, w)
        assert torch.isfinite(item["disparity"]).all() and (item["disparity"][item["valid"]] > 0).all()
        assert torch.equal(item["flow"][0:1], -item["disparity"]) and (item["flow"][1] == 0).all()
        assert _warp_gain(item) < 0.7  # PFM rows read bottom-up the right way
    assert sizes == {"motorcycle": (741, 500), "tsukuba": (384, 288), "venus": (434, 383)}
    assert not ds[0]["valid"].all()  # motorcycle has inf = unknown


def test_kitti_stereo_synthetic_layout(tmp_path):
    from flowcli.io.flow_formats import write_disparity_png, write_png

    base = tmp_path / "training"
    for folder in ("image_2", "image_3", "disp_occ_0"):
        (base / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    write_png(base / "image_2" / "000000_10.png", rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
    write_png(base / "image_3" / "000000_10.png", rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
    disparity = np.full((20, 30), 12.5, np.float32)
    valid = np.ones((20, 30), bool)
    valid[:5] = False
    write_disparity_png(base / "disp_occ_0" / "000000_10.png", disparity, valid)
    ds = make_dataset("kitti-stereo", tmp_path)
    assert isinstance(ds, KITTIStereo) and len(ds) == 1
    item = ds[0]
    assert item["valid"].sum() == 15 * 30 and torch.allclose(item["disparity"][item["valid"]], torch.tensor(12.5))
    assert (item["disparity"][~item["valid"]] == 0).all()
    assert stereo_metrics(item["disparity"][None], item["disparity"][None], item["valid"][None])["epe"] == 0


def test_perfect_prediction_on_real_gt():
    item = make_dataset("sintel-clean", DATA / "flow" / "sintel")[2]
    m = flow_metrics(item["flow"][None], item["flow"][None], item["valid"][None], item["occlusion"][None])
    assert m["epe"] == m["epe_noc"] == m["epe_occ"] == m["fl_all"] == 0


def test_make_dataset_names():
    flow = DATA / "flow"
    assert len(make_dataset("sintel-final", flow / "sintel")) == 3
    assert len(make_dataset("chairs", flow / "chairs")) == 6
    assert len(make_dataset("kitti2015", flow / "kitti2015")) == 1
    assert len(make_dataset("middlebury", flow / "middlebury")) == 1
    assert len(make_dataset("middlebury-stereo", DATA / "stereo" / "middlebury")) == 3
    with pytest.raises(InputError, match="unknown dataset"):
        make_dataset("imagenet", flow)


@pytest.mark.parametrize(
    "name", ["sintel-clean", "chairs", "kitti2015", "kitti2012", "middlebury", "middlebury-stereo"]
)
def test_missing_or_empty_root(name, tmp_path):
    with pytest.raises(InputError, match="expected .*layout") as missing:
        make_dataset(name, tmp_path / "nope")
    assert "\n" not in str(missing.value)
    with pytest.raises(InputError, match="expected .*layout"):
        make_dataset(name, tmp_path)


def test_unlabeled_frames_folders_and_video():
    footage = DATA / "footage"
    pairs = UnlabeledFrames([footage / "sintel_frames", footage / "kitti_frames"])
    assert len(pairs) == 4 + 2  # pairs never straddle two sources
    items = list(pairs)
    assert len(items) == 6 and items[0]["name"] == "sintel_frames:frame_0004.png"
    assert items[-1]["image1"].shape == (3, 375, 1242)
    triplets = list(UnlabeledFrames(footage / "sintel_frames", frames=3, step=2))
    assert len(triplets) == 1 and torch.equal(triplets[0]["image3"], items[3]["image2"])  # frames 4, 6, 8
    assert [t["images"][0].shape for t in triplets] == [(3, 436, 1024)]
    video = UnlabeledFrames(footage / "sintel_demo.mp4", frames=3, step=2)
    first = list(itertools.islice(video, 3))
    assert [f["name"] for f in first] == ["sintel_demo.mp4:0", "sintel_demo.mp4:1", "sintel_demo.mp4:2"]
    assert first[0]["image3"].shape == (3, 436, 1024)
    assert torch.equal(first[0]["image2"], first[2]["image1"])  # tuples (0, 2, 4), (1, 3, 5), (2, 4, 6)
    with pytest.raises(InputError):
        UnlabeledFrames(footage / "stereo_demo_missing")


def _tiny_flow_model():
    from flowcli.models import FlowNet, FlowNetConfig

    config = FlowNetConfig(
        pyramid_channels=(4, 4, 4, 4, 4, 4),
        decoder_channels=(4,),
        context_channels=(4,),
        context_dilations=(1,),
        reduced_channels=4,
    )
    return FlowNet(config)


def test_evaluate_plumbing_with_a_tiny_model():
    from flowcli.evaluation import evaluate

    torch.manual_seed(0)
    model = _tiny_flow_model().eval()
    flow = evaluate(model, "sintel-clean", DATA / "flow" / "sintel", max_items=1, progress=False)
    assert len(flow.per_item) == 1 and flow.dataset == "sintel-clean"
    row = flow.per_item[0]
    assert {"epe", "epe_noc", "epe_occ", "fl_all", "acc_1px", "occ_f1", "seconds", "n_valid"} <= set(row)
    assert flow.mean["items"] == 1 and flow.mean["epe"] == pytest.approx(row["epe"])
    # spelt as make_dataset accepts it: still scored as stereo (it used to be scored as flow)
    stereo = evaluate(model, " Middlebury-Stereo", DATA / "stereo" / "middlebury", max_items=1, progress=False)
    assert {"epe", "bad_1", "bad_2", "bad_4", "d1", "vert_abs", "vert_gt1"} <= set(stereo.per_item[0])
    assert stereo.to_dict()["mean"]["items"] == 1


def test_evaluate_times_an_item_until_the_gpu_has_finished_it(monkeypatch):
    """On a GPU the model's kernels are queued, so a clock read when estimate_flow returns times the launch only:
    the per-item seconds include the wait for the queued work (faked here; no GPU on the test machine)."""
    import time

    from flowcli import evaluation

    synchronised = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synchronised.append(device))
    evaluation._finish_queued_work(torch.device("cuda", 0))
    evaluation._finish_queued_work(torch.device("cpu"))
    assert synchronised == [torch.device("cuda", 0)]

    monkeypatch.setattr(evaluation, "_finish_queued_work", lambda device: time.sleep(0.2))
    report = evaluation.evaluate(_tiny_flow_model().eval(), "chairs", DATA / "flow" / "chairs", max_items=1,
                                 progress=False)  # fmt: skip
    assert report.per_item[0]["seconds"] >= 0.2


def test_mask_pngs_of_every_bit_depth_mark_the_same_pixels(tmp_path):
    """A 1-bit PNG (PIL mode "1") decodes to bool, and `True > 127` is False: such an occlusion or
    invalid mask used to read as empty."""
    from PIL import Image

    from flowcli.data.datasets import _mask_png

    mask = np.zeros((4, 6), bool)
    mask[1:3, 2:5] = True
    Image.fromarray(mask).save(tmp_path / "one_bit.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "eight_bit.png")
    Image.fromarray(mask.astype(np.uint16) * 65535).save(tmp_path / "sixteen_bit.png")
    for name in ("one_bit.png", "eight_bit.png", "sixteen_bit.png"):
        read = _mask_png(tmp_path / name)
        assert read.shape == (1, 4, 6) and torch.equal(read[0], torch.from_numpy(mask)), name


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_evaluate_checks_a_torch_device_like_its_name():
    """`device=torch.device("cuda")` on a machine without CUDA used to end in torch's AssertionError
    traceback, while the string "cuda" gave the one-line error."""
    from flowcli.errors import FlowcliError
    from flowcli.evaluation import evaluate

    with pytest.raises(FlowcliError, match="no CUDA GPU"):
        evaluate(_tiny_flow_model(), "chairs", DATA / "flow" / "chairs", max_items=1, progress=False,
                 device=torch.device("cuda"))


def _write_frames(*paths, size=(12, 16)):
    from flowcli.io.flow_formats import write_png

    rng = np.random.default_rng(0)
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_png(path, rng.integers(0, 255, (*size, 3), dtype=np.uint8))


def _write_chairs(root, pairs: int):
    from flowcli.io.flow_formats import write_flo

    for index in range(1, pairs + 1):
        _write_frames(root / "data" / f"{index:05d}_img1.png", root / "data" / f"{index:05d}_img2.png")
        write_flo(root / "data" / f"{index:05d}_flow.flo", np.zeros((12, 16, 2), np.float32))


@pytest.mark.parametrize("split_file_in", [".", "data"])
def test_chairs_with_the_official_split_file_lists_its_validation_pairs(tmp_path, split_file_in):
    """The full FlyingChairs release comes with FlyingChairs_train_val.txt (1 = training, 2 = validation);
    `flowcli eval --dataset chairs` used to score all 22,872 pairs, training pairs included, instead of
    the 640 validation pairs the Chairs benchmark scores."""
    release = tmp_path / "FlyingChairs_release"
    _write_chairs(release, pairs=6)
    (release / split_file_in / "FlyingChairs_train_val.txt").write_text("1\n1\n2\n1\n2\n1\n")
    for root in (release, release / "data"):
        assert [r["name"] for r in FlyingChairs(root).samples] == ["00003", "00005"]
    assert [r["name"] for r in make_dataset("chairs", release).samples] == ["00003", "00005"]
    assert [r["name"] for r in FlyingChairs(release, split="training").samples] == ["00001", "00002", "00004", "00006"]
    assert len(FlyingChairs(release, split="all")) == 6
    (release / split_file_in / "FlyingChairs_train_val.txt").write_text("1\n2\n")  # another copy's split file
    with pytest.raises(InputError, match="00003 .* is not in .*FlyingChairs_train_val.txt"):
        FlyingChairs(release)


@pytest.mark.parametrize(
    "name, layout, root",
    [
        ("sintel-clean", ["test/clean/ambush_1/frame_0001.png", "test/clean/ambush_1/frame_0002.png"], "test"),
        ("sintel-final", ["test/final/ambush_1/frame_0001.png", "test/final/ambush_1/frame_0002.png"], "test"),
        ("kitti2015", ["testing/image_2/000000_10.png", "testing/image_2/000000_11.png"], "testing"),
        ("kitti2012", ["testing/colored_0/000000_10.png", "testing/colored_0/000000_11.png"], "testing"),
        ("kitti-stereo", ["testing/image_2/000000_10.png", "testing/image_3/000000_10.png"], "testing"),
        ("middlebury", ["eval-data/Army/frame10.png", "eval-data/Army/frame11.png"], "eval-data"),
        ("middlebury-stereo", ["testQ/Australia/im0.png", "testQ/Australia/im1.png"], "testQ"),
    ],
)
def test_a_test_split_without_ground_truth_says_so(tmp_path, name, layout, root):
    """Test splits (Sintel test/, KITTI testing/, Middlebury eval-data/ and MiddEval3 test*/) hold frames
    and no ground truth; the error said only "no items found", as for a wrong folder."""
    _write_frames(*(tmp_path / path for path in layout))
    with pytest.raises(InputError, match="frames but no ground truth.*test splits have none.*expected .*layout") as e:
        make_dataset(name, tmp_path / root)
    assert "\n" not in str(e.value)


def test_kitti_stereo_reads_the_kitti_2012_layout(tmp_path):
    """KITTI 2012 stereo is colored_0/ (left), colored_1/ (right), disp_occ/; kitti-stereo read only
    KITTI 2015's image_2/, image_3/, disp_occ_0/."""
    from flowcli.io.flow_formats import write_disparity_png

    base = tmp_path / "data_stereo_flow" / "training"
    for index in (1, 0):
        _write_frames(base / "colored_0" / f"{index:06d}_10.png", base / "colored_1" / f"{index:06d}_10.png")
        _write_frames(base / "image_0" / f"{index:06d}_10.png", base / "image_1" / f"{index:06d}_10.png")
        write_disparity_png(base / "disp_occ" / f"{index:06d}_10.png", np.full((12, 16), 7.5, np.float32))
    ds = make_dataset("kitti-stereo", tmp_path / "data_stereo_flow")
    assert [r["name"] for r in ds.samples] == ["000000_10", "000001_10"]
    assert ds.image_paths(0) == (base / "colored_0" / "000000_10.png", base / "colored_1" / "000000_10.png")
    item = ds[1]
    assert item["valid"].all() and torch.allclose(item["disparity"], torch.tensor(7.5))
    assert stereo_metrics(item["disparity"][None], item["disparity"][None], item["valid"][None])["d1"] == 0


def test_eval_checks_every_pass_of_sintel_before_scoring_one(monkeypatch, capsys, tmp_path):
    """`--dataset sintel` on a copy without the final pass used to score the whole clean pass first (an
    hour on the full dataset) and then fail, printing no --json."""
    from cli_harness import assert_one_line_error, in_process_cli

    from flowcli.io.flow_formats import write_flo

    training = tmp_path / "training"
    _write_frames(training / "clean" / "alley_1" / "frame_0001.png", training / "clean" / "alley_1" / "frame_0002.png")
    write_flo(training / "flow" / "alley_1" / "frame_0001.flo", np.zeros((12, 16, 2), np.float32))
    monkeypatch.setattr("flowcli.models.load_model", lambda *a, **k: pytest.fail("model loaded"))
    run = in_process_cli(monkeypatch, capsys, "eval")
    code, out, err = run("--dataset", "sintel", "--root", tmp_path, "--json")
    assert_one_line_error(code, err, 2, "sintel-final", "expected MPI-Sintel layout")
    assert out == ""


def _eval_recording_precision(monkeypatch, capsys):
    """(run `flowcli eval ARGS`, the list of the precisions estimate_flow was asked for)."""
    from cli_harness import in_process_cli

    from flowcli import inference

    asked = []
    real = inference.estimate_flow

    def recording(*args, **kwargs):
        asked.append(kwargs.get("precision"))
        return real(*args, **kwargs)

    monkeypatch.setattr(inference, "estimate_flow", recording)
    return in_process_cli(monkeypatch, capsys, "eval"), asked


def test_eval_runs_at_the_precision_asked_and_refuses_an_unknown_one(monkeypatch, capsys):
    """eval had no --precision, while estimate and stereo do: GPU users could not score the fp16/bf16 path
    they run."""
    import json

    from cli_harness import assert_one_line_error

    run, asked = _eval_recording_precision(monkeypatch, capsys)
    root = DATA / "flow" / "middlebury"
    code, out, err = run("-d", "middlebury", "-r", root, "--precision", "bf16", "--json", "-q")
    assert code == 0, err
    assert json.loads(out)["precision"] == "bf16" and asked == ["bf16"]
    assert json.loads(out)["results"]["middlebury"]["mean"]["epe"] < 2.0  # bf16 still scores a sane flow
    code, _, err = run("-d", "middlebury", "-r", root, "--precision", "fp8")
    assert_one_line_error(code, err, 2, "unknown precision 'fp8'")
    for scale in ("nan", "9"):  # typer's own range check said "Input should be less than or equal to 4" for nan
        code, _, err = run("-d", "middlebury", "-r", root, "--scale", scale)
        assert_one_line_error(code, err, 2, f"--scale must be between 0.05 and 4, got {scale}")


def test_eval_json_names_the_precision_that_ran_when_fp16_falls_back_to_fp32_on_the_cpu(monkeypatch, capsys):
    """fp16 on the CPU runs in fp32 (with a warning), but --json said "precision": "fp16": a score recorded
    as the fp16 path's was the fp32 one."""
    import json

    run, asked = _eval_recording_precision(monkeypatch, capsys)
    root = DATA / "flow" / "middlebury"
    code, out, err = run("-d", "middlebury", "-r", root, "--device", "cpu", "--precision", "fp16", "--json", "-q")
    assert code == 0, err
    assert json.loads(out)["precision"] == "fp32" and asked == ["fp32"]
    assert err.count("fp16 is not supported on CPU") == 1


def _write_sintel(root, flow_size=(12, 16)):
    """One Sintel item, alley_1/frame_0001, with 12x16 frames and a zero flow of `flow_size`."""
    from flowcli.io.flow_formats import write_flo

    scene = root / "training" / "clean" / "alley_1"
    _write_frames(scene / "frame_0001.png", scene / "frame_0002.png")
    write_flo(root / "training" / "flow" / "alley_1" / "frame_0001.flo", np.zeros((*flow_size, 2), np.float32))


def _write_kitti(root, noc_size=(12, 16)):
    """One KITTI 2015 flow item, 000000_10: 12x16 frames and flow_occ, a flow_noc of `noc_size`."""
    from flowcli.io.flow_formats import write_kitti_flow

    base = root / "training"
    _write_frames(base / "image_2" / "000000_10.png", base / "image_2" / "000000_11.png")
    write_kitti_flow(base / "flow_occ" / "000000_10.png", np.zeros((12, 16, 2), np.float32))
    write_kitti_flow(base / "flow_noc" / "000000_10.png", np.zeros((*noc_size, 2), np.float32))


@pytest.mark.parametrize("rows", [1, 10])
def test_a_mask_of_another_size_than_its_ground_truth_is_refused_naming_both(tmp_path, rows):
    """A Sintel invalid mask or a KITTI flow_noc of another size than the flow ended in torch's RuntimeError
    traceback; a one-row one was broadcast over every row without a word."""
    from flowcli.io.flow_formats import write_png

    _write_sintel(tmp_path / "sintel")
    invalid = tmp_path / "sintel" / "training" / "invalid" / "alley_1" / "frame_0001.png"
    write_png(invalid, np.zeros((rows, 16), np.uint8))
    flo = tmp_path / "sintel" / "training" / "flow" / "alley_1" / "frame_0001.flo"
    with pytest.raises(InputError, match=f"^{invalid} is 16x{rows}, its ground truth {flo} is 16x12; "):
        make_dataset("sintel-clean", tmp_path / "sintel")[0]
    _write_kitti(tmp_path / "kitti", noc_size=(rows, 16))
    noc, occ = (tmp_path / "kitti" / "training" / folder / "000000_10.png" for folder in ("flow_noc", "flow_occ"))
    with pytest.raises(InputError, match=f"^{noc} is 16x{rows}, its ground truth {occ} is 16x12; "):
        make_dataset("kitti2015", tmp_path / "kitti")[0]


def test_a_ground_truth_of_another_size_than_its_frames_is_named_with_them(tmp_path):
    """The error said "flow is (10, 16), image1 is (12, 16)": no file to look at, among thousands."""
    _write_sintel(tmp_path, flow_size=(10, 16))
    training = tmp_path / "training"
    flo, frame = training / "flow" / "alley_1" / "frame_0001.flo", training / "clean" / "alley_1" / "frame_0001.png"
    with pytest.raises(InputError, match=f"item alley_1/frame_0001: its flow {flo} is 16x10, its first frame {frame} "
                                         "is 16x12; the files do not belong together"):  # fmt: skip
        make_dataset("sintel-clean", tmp_path)[0]


def test_ground_truth_without_its_frames_is_left_out_with_a_warning(tmp_path):
    """A ground-truth file whose frame was missing was dropped without a word: a copy missing some frames was
    scored on fewer items, its mean taken for the dataset's."""
    from flowcli.io.flow_formats import write_flo

    _write_sintel(tmp_path)
    write_flo(tmp_path / "training" / "flow" / "alley_1" / "frame_0002.flo", np.zeros((12, 16, 2), np.float32))
    missing = tmp_path / "training" / "clean" / "alley_1" / "frame_0003.png"
    expected = f"^1 of the 2 sintel-clean ground-truth files are left out, their frames missing \\({missing} for "
    with pytest.warns(UserWarning, match=expected + r".*frame_0002.flo\); the other 1 items are used"):
        assert len(make_dataset("sintel-clean", tmp_path)) == 1
    _write_chairs(tmp_path / "chairs", pairs=2)
    (tmp_path / "chairs" / "data" / "00002_img2.png").unlink()
    with pytest.warns(UserWarning, match="1 of the 2 chairs ground-truth files are left out.*00002_img2"):
        assert len(make_dataset("chairs", tmp_path / "chairs")) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a complete copy: no warning
        _write_frames(missing)
        assert len(make_dataset("sintel-clean", tmp_path)) == 2
