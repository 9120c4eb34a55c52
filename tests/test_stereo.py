"""flowcli.stereo: disparity from flow, left-right occlusion, depth, calibration, point clouds."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from flowcli.errors import InputError
from flowcli.inference import FlowResult
from flowcli.metrics import occlusion_f1
from flowcli.models.pwc import FlowNet, FlowNetConfig
from flowcli.stereo import (
    Camera,
    depth_from_disparity,
    depth_to_png_array,
    disparity_to_rgb,
    estimate_disparity,
    left_right_occlusion,
    point_cloud,
    read_calibration,
    read_ply,
    split_side_by_side,
    turbo,
    write_ply,
)
from flowcli.synth import SynthConfig, generate_sample
from flowcli.synth.stereo_video import StereoVideoConfig, generate_stereo_video

TINY = dict(pyramid_channels=(8, 8, 8, 8, 8, 8), decoder_channels=(8, 8), context_channels=(8,), context_dilations=(1,))
LR_F1_BOUND = 0.9  # measured 0.95-0.99 per scene (mean 0.97) on the generator's stereo GT


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _fake_flow(monkeypatch, forward: torch.Tensor, backward: torch.Tensor):
    """estimate_flow returns the given flows ([2, H, W]) for any batch, as if a model had predicted them."""

    def fake(model, image1, image2, **kwargs):
        b = image1.shape[0] if image1.dim() == 4 else 1
        result = FlowResult(forward=forward[None].expand(b, -1, -1, -1).clone())
        if kwargs.get("backward"):
            result.backward = backward[None].expand(b, -1, -1, -1).clone()
        return result

    monkeypatch.setattr("flowcli.inference.estimate_flow", fake)


def test_gt_stereo_flow_gives_positive_disparity_and_depth_f_b_over_z(monkeypatch):
    s = generate_stereo_video(StereoVideoConfig(height=48, width=64, photometric=False, real_texture_prob=0),
                              torch.Generator().manual_seed(1))
    right_flow = torch.cat((s.disparity_right[0], torch.zeros_like(s.disparity_right[0])))
    _fake_flow(monkeypatch, s.stereo_flow(0), right_flow)
    result = estimate_disparity(None, s.left[0], s.right[0])
    assert (result.disparity >= 0).all() and result.disparity.mean() > 1
    torch.testing.assert_close(result.disparity[0], s.disparity_left[0])
    torch.testing.assert_close(result.disparity_right[0], s.disparity_right[0])
    assert result.negative_fraction == [0.0] and result.vertical_median == [0.0]
    depth = depth_from_disparity(result.disparity, s.focal, s.baseline)
    torch.testing.assert_close(depth[0], s.depth_left[0], rtol=1e-5, atol=0)
    # and back: d = f B / Z
    torch.testing.assert_close(s.focal * s.baseline / depth[0], s.disparity_left[0], rtol=1e-5, atol=0)


def test_negative_disparity_is_clamped_and_reported_vertical_flow_warns(monkeypatch):
    flow = torch.zeros(2, 8, 12)
    flow[0, :, :6] = 3.0  # a right-to-left shift: negative disparity on half the image
    flow[0, :, 6:] = -2.0
    flow[1] = 4.5
    _fake_flow(monkeypatch, flow, -flow)
    image = torch.rand(3, 8, 12)
    with pytest.warns(UserWarning, match="does not look rectified"):
        result = estimate_disparity(None, image, image)
    assert result.disparity.min() == 0 and result.disparity.max() == 2
    assert result.negative_fraction == [0.5] and result.vertical_median == [4.5]
    torch.testing.assert_close(result.vertical_flow[0, 0], flow[1])


def test_different_sizes_are_an_input_error():
    model = FlowNet(FlowNetConfig(**TINY)).eval()
    with pytest.raises(InputError, match="differ in size"):
        estimate_disparity(model, torch.rand(3, 32, 48), torch.rand(3, 32, 40))


def test_tiny_model_plumbing_shapes():
    torch.manual_seed(0)
    model = FlowNet(FlowNetConfig(**TINY)).eval()
    result = estimate_disparity(model, torch.rand(2, 3, 40, 56), torch.rand(2, 3, 40, 56), max_vertical=None)
    assert result.disparity.shape == (2, 1, 40, 56) and result.occlusion.shape == (2, 1, 40, 56)
    assert result.vertical_flow.shape == (2, 1, 40, 56) and len(result.negative_fraction) == 2
    assert (result.disparity >= 0).all() and set(result.occlusion.unique().tolist()) <= {0.0, 1.0}


def test_left_right_consistency_finds_the_generators_occlusions():
    cfg = SynthConfig(height=64, width=96, photometric=False, stereo=True, real_texture_prob=0)
    scores = []
    for seed in range(4):
        s = generate_sample(cfg, torch.Generator().manual_seed(seed))
        left = (-s.flow_forward[None, :1]).clamp_min(0)
        right = s.flow_backward[None, :1].clamp_min(0)
        occ = left_right_occlusion(left, right)
        assert s.occlusion_forward.sum() > 20  # there is something to find
        scores.append(occlusion_f1(occ, s.occlusion_forward[None]))
    assert min(scores) > LR_F1_BOUND, scores


def test_left_right_occlusion_on_a_step():
    # background disparity 2, a foreground block with disparity 6 on columns 20..29 of the left image
    left = torch.full((1, 1, 4, 40), 2.0)
    left[..., 20:30] = 6.0
    right = torch.full((1, 1, 4, 40), 2.0)
    right[..., 14:24] = 6.0
    occ = left_right_occlusion(left, right)[0, 0, 0]
    # left pixels 0, 1 leave the image; background 16..19 is hidden behind the block in the right view
    expected = torch.zeros(40)
    expected[:2] = 1
    expected[16:20] = 1
    torch.testing.assert_close(occ, expected)


def test_depth_invalid_where_disparity_not_positive_and_png_millimetres():
    d = np.array([[0.0, -1.0, 2.0, np.nan], [4.0, 0.5, 1e-9, 8.0]], dtype=np.float32)
    depth = depth_from_disparity(d, focal=400.0, baseline=0.1)
    expected = np.where(d > 0, 40.0 / np.where(d > 0, d, 1), 0.0)
    expected[1, 2] = 40.0 / 1e-9
    expected[0, 3] = 0
    np.testing.assert_allclose(depth, expected, rtol=1e-6)
    png = depth_to_png_array(depth)
    assert png.dtype == np.uint16
    assert png[0, 2] == 20000 and png[1, 0] == 10000 and png[1, 3] == 5000
    assert png[0, 0] == png[0, 1] == png[0, 3] == 0
    assert png[1, 1] == 0 and png[1, 2] == 0  # 80 m and 4e10 m: beyond 65.535 m is invalid, not clipped
    assert (depth_from_disparity(d, 400.0, 0.1, max_depth=15.0) <= 15.0).all()
    for focal, baseline in ((0.0, 0.1), (-5.0, 0.1), (400.0, 0.0), (400.0, -0.2), (math.nan, 0.1)):
        with pytest.raises(InputError, match="must be a positive number"):
            depth_from_disparity(d, focal, baseline)


def test_calibration_json_and_middlebury(tmp_path, shared_data):
    camera = read_calibration(shared_data / "footage" / "oakd_stereo" / "stereodemo_calibration.json")
    assert camera.focal == pytest.approx(451.0344543457031) and camera.baseline == pytest.approx(0.075)
    assert (camera.width, camera.height, camera.doffs) == (640, 480, 0.0)
    assert camera.intrinsics(640, 480)[2:] == pytest.approx((299.03839111328125, 255.16502380371094))
    camera.check_size(640, 480)
    with pytest.raises(InputError, match="is for 640x480 images"):
        camera.check_size(320, 240)
    txt = tmp_path / "calib.txt"
    txt.write_text("cam0=[3997.684 0 1176.728; 0 3997.684 1011.728; 0 0 1]\n"
                   "cam1=[3997.684 0 1307.839; 0 3997.684 1011.728; 0 0 1]\ndoffs=131.111\nbaseline=193.001\n"
                   "width=2964\nheight=1988\n")
    mb = read_calibration(txt)
    assert mb.focal == pytest.approx(3997.684) and mb.baseline == pytest.approx(0.193001)
    assert mb.doffs == pytest.approx(131.111) and (mb.width, mb.height) == (2964, 1988)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"fx": 400, "baseline_meters": -0.1}))
    with pytest.raises(InputError, match="baseline.*must be a positive"):
        read_calibration(bad)
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        read_calibration(bad)
    bad.write_text(json.dumps({"baseline_meters": 0.1}))
    with pytest.raises(InputError, match="no focal length"):
        read_calibration(bad)
    # an unrectified OpenCV calibration was only told it had no focal length; its K1 is not the rectified one
    bad.write_text(json.dumps({"K1": [[451, 0, 320], [0, 451, 240], [0, 0, 1]], "D1": [0.1, 0, 0, 0, 0],
                               "R": [[1, 0, 0], [0, 1, 0], [0, 0, 1]], "T": [-0.075, 0, 0]}))
    with pytest.raises(InputError, match=r"\(K1, D1, R, T\), not the rectified rig's: rectify the images"):
        read_calibration(bad)


def test_calibration_with_unreadable_numbers_is_an_input_error(tmp_path):
    """A calib.txt matrix entry such as 1.2.3, and a JSON width or height that is NaN, infinite, negative or
    fractional, were tracebacks (ValueError, OverflowError) or silently truncated: each is one InputError."""
    txt = tmp_path / "calib.txt"
    txt.write_text("cam0=[1.2.3 0 48; 0 100 32; 0 0 1]\nbaseline=100\n")
    with pytest.raises(InputError, match=r"cam0 must be a 3x3 matrix of numbers, got '\[1\.2\.3"):
        read_calibration(txt)
    txt.write_text("cam0=[100 0 48; 0 100 32; 0 0 1]\nbaseline=100\nwidth=96.5\nheight=64\n")
    with pytest.raises(InputError, match="width must be a positive whole number of pixels, got 96.5"):
        read_calibration(txt)
    calib = tmp_path / "calib.json"
    for text, shown in (("NaN", "nan"), ("Infinity", "inf"), ("1e400", "inf"), ("-96", "-96"), ("96.7", "96.7")):
        calib.write_text(f'{{"fx": 100, "baseline_meters": 0.1, "width": {text}, "height": 64}}')
        with pytest.raises(InputError, match=f"width must be a positive whole number of pixels, got {shown}$"):
            read_calibration(calib)
    calib.write_text('{"fx": 100, "baseline_meters": 0.1, "width": 96.0, "height": 64}')
    assert (read_calibration(calib).width, read_calibration(calib).height) == (96, 64)


@pytest.mark.parametrize("binary", [True, False])
def test_point_cloud_back_projects_and_ply_round_trips(tmp_path, binary):
    depth = np.zeros((6, 8), np.float32)
    depth[2:5, 1:7] = np.linspace(1.0, 3.0, 18).reshape(3, 6)
    image = torch.rand(3, 6, 8)
    camera = Camera(focal=100.0, baseline=0.1, cx=3.5, cy=2.5)
    mask = np.ones((6, 8), bool)
    mask[3, 3] = False
    points, colours = point_cloud(depth, image, camera, mask=mask)
    assert len(points) == 17
    # re-projecting gives back the pixels and their depth
    x = points[:, 0] * 100 / points[:, 2] + 3.5
    y = points[:, 1] * 100 / points[:, 2] + 2.5
    ys, xs = np.nonzero((depth > 0) & mask)
    np.testing.assert_allclose(x, xs, atol=1e-4)
    np.testing.assert_allclose(y, ys, atol=1e-4)
    np.testing.assert_allclose(points[:, 2], depth[ys, xs])
    expected_colours = (image.permute(1, 2, 0).numpy()[ys, xs] * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(colours, expected_colours)
    path = write_ply(tmp_path / "cloud.ply", points, colours, binary=binary)
    header = path.read_bytes()[:200]
    assert (b"binary_little_endian" in header) == binary and b"element vertex 17" in header
    back, back_colours = read_ply(path)
    np.testing.assert_allclose(back, points, rtol=1e-6 if not binary else 0)
    np.testing.assert_array_equal(back_colours, colours)


def test_disparity_colours_and_side_by_side():
    d = np.array([[2.0, 5.0, 10.0, np.inf]])
    rgb = disparity_to_rgb(d, max_disparity=10)
    assert rgb.shape == (1, 4, 3) and rgb.dtype == np.uint8
    assert (rgb[0, 3] == 0).all()  # unknown: black
    assert rgb[0, 2, 0] > rgb[0, 2, 2] and rgb[0, 0, 2] > rgb[0, 0, 0]  # near red, far blue
    frame = torch.arange(2 * 3 * 6, dtype=torch.float32).reshape(1, 3, 2, 6)[0]
    left, right = split_side_by_side(frame)
    assert torch.equal(left, frame[..., :3]) and torch.equal(right, frame[..., 3:])
    with pytest.raises(InputError, match="odd width"):
        split_side_by_side(frame[..., :5])


def test_library_disparity_names_the_view_and_checks_the_layout_before_sizes():
    from flowcli.errors import InputError
    from flowcli.models import load_model
    from flowcli.stereo import estimate_disparity

    model = load_model()
    with pytest.raises(InputError, match="left is torch.uint8"):
        estimate_disparity(model, torch.zeros(1, 3, 64, 64, dtype=torch.uint8), torch.zeros(1, 3, 64, 64))
    with pytest.raises(InputError, match="channels first"):  # not "differ in size" for channels-last frames
        estimate_disparity(model, torch.rand(64, 64, 3), torch.rand(64, 80, 3))
    with pytest.raises(InputError, match="differ in size"):
        estimate_disparity(model, torch.rand(3, 64, 64), torch.rand(3, 64, 80))


def test_camera_numbers_may_be_numpy_or_tensor_scalars_and_depth_options_are_checked():
    """A focal length read from a float32 calibration matrix (np.float32) or a tensor is a number like any other;
    a NaN doffs or a max_depth that is not positive is a one-line error, not an all-invalid depth map."""
    d = np.array([[0.0, 2.0, 4.0]], np.float32)
    expected = depth_from_disparity(d, 400.0, 0.1)
    np.testing.assert_allclose(depth_from_disparity(d, np.float32(400.0), torch.tensor(0.1)), expected, rtol=1e-6)
    np.testing.assert_allclose(depth_from_disparity(d, np.int64(400), np.float64(0.1), doffs=np.float32(0)), expected)
    camera = Camera(focal=np.float32(451.0), baseline=torch.tensor(0.075), cx=np.int64(320))
    assert type(camera.focal) is float and camera.focal == 451.0 and camera.intrinsics(640, 480)[2] == 320.0
    for bad in (dict(doffs=math.nan), dict(doffs=math.inf), dict(max_depth=math.nan), dict(max_depth=0.0),
                dict(max_depth=-1.0)):
        with pytest.raises(InputError, match="doffs must be a finite|max_depth must be a positive"):
            depth_from_disparity(d, 400.0, 0.1, **bad)
    with pytest.raises(InputError, match="cx must be a finite"):
        Camera(focal=400.0, baseline=0.1, cx=math.nan)


def test_point_cloud_takes_float_arrays_and_refuses_images_of_another_size():
    """A float [H, W, 3] array in [0, 1] gave all-black colours; a [3, H, W] array garbage; an image of another
    size read colours from the wrong pixels (or crashed with a reshape error); infinite depths became points."""
    depth = np.zeros((4, 6), np.float32)
    depth[1:3, 1:4] = 2.0
    depth[0, 0] = np.inf
    image = torch.rand(3, 4, 6)
    camera = Camera(focal=100.0, baseline=0.1)
    points, colours = point_cloud(depth, image, camera)
    assert len(points) == 6 and np.isfinite(points).all()
    for same in (image.numpy(), image.permute(1, 2, 0).numpy(), image[None], image.permute(1, 2, 0).double()):
        np.testing.assert_array_equal(point_cloud(depth, same, camera)[1], colours)
    for image_bad, message in ((torch.rand(3, 5, 6), "depth map has shape"), (np.zeros((4, 7, 3), np.uint8), "shape"),
                               (torch.rand(1, 4, 6), "RGB"), (image.numpy() * 255, "divide 8-bit"),
                               (np.zeros((4, 6, 3), np.uint16), "uint16")):
        with pytest.raises(InputError, match=message):
            point_cloud(depth, image_bad, camera)
    with pytest.raises(InputError, match=r"give one map \[H, W\]"):
        point_cloud(np.stack([depth, depth])[:, None], image, camera)
    with pytest.raises(InputError, match="the mask has shape"):
        point_cloud(depth, image, camera, mask=np.ones((3, 3), bool))
    with pytest.raises(InputError, match=r"give one map \[H, W\]"):
        disparity_to_rgb(torch.ones(2, 1, 4, 6))


def test_left_right_occlusion_marks_nan_disparity_occluded_instead_of_crashing():
    left = torch.full((1, 1, 2, 8), 2.0)
    left[0, 0, 0, 5] = math.nan
    occ = left_right_occlusion(left, torch.full((1, 1, 2, 8), 2.0))
    expected = torch.zeros(1, 1, 2, 8)
    expected[..., :2] = 1  # x - d leaves the image
    expected[0, 0, 0, 5] = 1
    torch.testing.assert_close(occ, expected)


@pytest.mark.parametrize("threshold", [math.nan, -1.0, 0.0])
def test_lr_threshold_must_be_positive(monkeypatch, threshold):
    """NaN marked nothing occluded and a negative threshold everything, silently."""
    flow = torch.zeros(2, 8, 12)
    _fake_flow(monkeypatch, flow, flow)
    with pytest.raises(InputError, match="lr_threshold must be a positive number of pixels"):
        estimate_disparity(None, torch.rand(3, 8, 12), torch.rand(3, 8, 12), lr_threshold=threshold)


def test_max_vertical_is_checked_before_it_warns_about_every_pair(monkeypatch):
    flow = torch.zeros(2, 8, 12)
    _fake_flow(monkeypatch, flow, flow)
    image = torch.rand(3, 8, 12)
    for bad in (-1.0, float("nan"), "1"):  # -1 warned "0.0 px (above -1 px)" for a rectified pair, "1" crashed
        with pytest.raises(InputError, match="max_vertical"):
            estimate_disparity(None, image, image, max_vertical=bad)
    assert estimate_disparity(None, image, image, max_vertical=np.float32(0.5)).vertical_median == [0.0]


def test_a_folder_given_as_calibration_or_ply_is_named_as_a_folder(tmp_path):
    """--calib FOLDER said the calibration "does not exist", which sends a user looking for a typo."""
    from flowcli.errors import InputError
    from flowcli.stereo import read_calibration, read_ply

    with pytest.raises(InputError, match="is a folder; give the calibration file in it"):
        read_calibration(tmp_path)
    with pytest.raises(InputError, match="is a folder; give a .ply file"):
        read_ply(tmp_path)


def test_ply_colours_follow_the_image_convention_and_points_must_be_triples(tmp_path):
    """Float colours in [0, 1] (Open3D's) were written black, 300 wrapped to 44, [N, 2] points were reshaped into
    other points and a tensor that requires grad crashed in numpy()."""
    points = torch.rand(4, 3, requires_grad=True)
    path = write_ply(tmp_path / "float.ply", points, np.full((4, 3), 0.8))
    np.testing.assert_array_equal(read_ply(path)[1], np.full((4, 3), 204, np.uint8))
    np.testing.assert_allclose(read_ply(path)[0], points.detach().numpy())
    organised = np.random.rand(2, 5, 3)  # an [H, W, 3] point map is still N triples
    assert len(read_ply(write_ply(tmp_path / "map.ply", organised, organised))[0]) == 10
    for bad_points, bad_colours, needle in (
        (np.random.rand(3, 2), None, r"points have shape \(3, 2\)"),
        (points, np.full((4, 3), 300), "colours hold values from 300"),
        (points, np.full((4, 3), 255.0), "float colours in"),
        (points, np.full((4, 4), 10, np.uint8), r"colours have shape"),
    ):
        with pytest.raises(InputError, match=needle):
            write_ply(tmp_path / "bad.ply", bad_points, bad_colours)
    assert not (tmp_path / "bad.ply").exists()


@pytest.mark.parametrize("binary", [True, False])
def test_a_cut_short_or_malformed_ply_is_a_one_line_input_error(tmp_path, binary):
    """Were numpy's ValueError, KeyError or UnicodeDecodeError tracebacks."""
    whole = write_ply(tmp_path / "whole.ply", np.random.rand(4, 3), np.zeros((4, 3), np.uint8), binary=binary)
    data = whole.read_bytes()
    header, body = data.split(b"end_header\n")
    cases = [
        (data[:-5], "cut short"),
        (header.replace(b"element vertex 4", b"element vertex x") + b"end_header\n" + body, "no vertex count"),
        (header.replace(b"property float x\n", b"property float a\n") + b"end_header\n" + body, "no x, y, z"),
    ]
    if not binary:
        cases.append((header + b"end_header\n" + b"\xff 1 2 3 4 5\n" + body, "not 6 numbers each"))
    for i, (broken, needle) in enumerate(cases):
        (tmp_path / f"{i}.ply").write_bytes(broken)
        with pytest.raises(InputError, match=needle) as error:
            read_ply(tmp_path / f"{i}.ply")
        assert len(str(error.value).splitlines()) == 1


def test_point_cloud_refuses_a_calibration_made_for_another_image_size():
    """Its focal length and principal point are in another size's pixels: the cloud came out silently scaled."""
    camera = Camera(focal=100.0, baseline=0.1, cx=31.5, cy=23.5, width=64, height=48)
    assert len(point_cloud(np.ones((48, 64)), np.zeros((48, 64, 3), np.uint8), camera)[0]) == 64 * 48
    with pytest.raises(InputError, match="is for 64x48 images but the images are 32x24"):
        point_cloud(np.ones((24, 32)), np.zeros((24, 32, 3), np.uint8), camera)


def test_left_right_occlusion_refuses_maps_of_different_shapes():
    """A right map one column wider was read silently (one narrower crashed in gather, a 3D one in indexing)."""
    left = torch.full((1, 1, 2, 8), 2.0)
    for right in (torch.full((1, 1, 2, 9), 2.0), torch.full((1, 1, 2, 7), 2.0), torch.full((1, 2, 8), 2.0)):
        with pytest.raises(InputError, match="give two \\[B, 1, H, W\\] maps of the same pair"):
            left_right_occlusion(left if right.dim() == 4 else left[0], right)


def test_a_camera_checks_its_image_size_as_read_calibration_does():
    """Camera(width=-5, height=2.5) was accepted (only read_calibration checked the size)."""
    for size, message in (
        (dict(width=-5, height=48), "width must be a positive whole number of pixels, got -5$"),
        (dict(width=64, height=2.5), "height must be a positive whole number of pixels, got 2.5$"),
        (dict(width="64", height=48), "width must be a positive whole number of pixels, got '64'$"),
        (dict(width=64, height=math.nan, source="rig.json"), "height in rig.json must be a positive whole number"),
    ):
        with pytest.raises(InputError, match=message):
            Camera(focal=100.0, baseline=0.1, **size)
    camera = Camera(focal=100.0, baseline=0.1, width=64.0, height=np.int64(48))
    assert (camera.width, camera.height) == (64, 48) and type(camera.width) is type(camera.height) is int


def test_a_camera_of_another_size_names_both_sizes_and_the_command_line_flags_as_such():
    """Raised from point_cloud, the message told a library user to give --focal and --baseline."""
    camera = Camera(focal=100.0, baseline=0.1, width=64, height=48)
    with pytest.raises(InputError) as error:
        point_cloud(np.ones((24, 32)), np.zeros((24, 32, 3), np.uint8), camera)
    message = str(error.value)
    assert message.startswith(
        "the camera is for 64x48 images but the images are 32x24; give a camera calibrated "
        "for 32x24 images (on the command line: --focal and --baseline instead of --calib)"
    )


def test_turbo_colours_non_finite_values_black_as_disparity_to_rgb_does():
    """turbo(NaN) was black only by accident, with numpy's "invalid value encountered in cast"; inf was red."""
    with np.errstate(all="raise"):
        rgb = turbo(np.array([np.nan, np.inf, -np.inf, 0.5]))
        assert turbo(np.nan).tolist() == [0, 0, 0]
    assert rgb[:3].tolist() == [[0, 0, 0]] * 3 and rgb[3].tolist() == turbo(0.5).tolist()
    assert (rgb[:3] == disparity_to_rgb(np.array([[np.nan, np.inf, -np.inf]]), max_disparity=1.0)).all()


@pytest.mark.parametrize("binary", [True, False])
def test_a_ply_with_crlf_lines_is_read_and_a_repeated_property_is_an_input_error(tmp_path, binary):
    """A header written with Windows line endings was "not a PLY file"; a property named twice was numpy's
    ValueError (binary) or silently read the last column of that name (ASCII)."""
    points, colours = np.random.rand(4, 3).astype(np.float32), np.arange(12, dtype=np.uint8).reshape(4, 3)
    header, body = write_ply(tmp_path / "lf.ply", points, colours, binary=binary).read_bytes().split(b"end_header\n")
    crlf = tmp_path / "crlf.ply"
    crlf.write_bytes(
        header.replace(b"\n", b"\r\n") + b"end_header\r\n" + (body if binary else body.replace(b"\n", b"\r\n"))
    )
    back, back_colours = read_ply(crlf)
    np.testing.assert_allclose(back, points, rtol=1e-6)
    np.testing.assert_array_equal(back_colours, colours)
    twice = tmp_path / "twice.ply"
    twice.write_bytes(header.replace(b"property uchar red", b"property float x") + b"end_header\n" + body)
    with pytest.raises(InputError, match="names the vertex property x twice") as error:
        read_ply(twice)
    assert len(str(error.value).splitlines()) == 1


@pytest.mark.parametrize("ply_type, dtype", [("short", "<i2"), ("ushort", "<u2"), ("uint", "<u4"), ("char", "i1"),
                                             ("int16", "<i2"), ("uint16", "<u2")])
def test_a_binary_ply_of_the_other_standard_property_types_is_read(tmp_path, ply_type, dtype):
    """Points stored as short, ushort, uint or char (scanners write them) were refused as "only vertex-only ascii
    or binary_little_endian PLY is supported", a format the file had."""
    points = np.array([[1, 2, 3], [4, 5, 6]], dtype=dtype)
    header = (f"ply\nformat binary_little_endian 1.0\nelement vertex 2\nproperty {ply_type} x\n"
              f"property {ply_type} y\nproperty {ply_type} z\nend_header\n")  # fmt: skip
    path = tmp_path / "scan.ply"
    path.write_bytes(header.encode() + points.tobytes())
    back, colours = read_ply(path)
    np.testing.assert_array_equal(back, points.astype(np.float32))
    assert colours is None


def test_a_calibration_that_states_only_its_width_or_height_is_checked_on_it(tmp_path):
    """A JSON calibration with a width but no height was taken for images of any size."""
    calib = tmp_path / "calib.json"
    for stated, shown in (({"width": 64}, "64 px wide"), ({"height": 48}, "48 px high")):
        calib.write_text(json.dumps({"fx": 100, "baseline_meters": 0.1, **stated}))
        camera = read_calibration(calib)
        camera.check_size(64, 48)
        with pytest.raises(InputError, match=f"is for {shown} images but the images are 96x72"):
            camera.check_size(96, 72)


def test_a_calibration_txt_names_the_entry_that_is_no_number_and_a_byte_order_mark_is_read(tmp_path):
    """baseline=abc was "could not convert string to float: 'abc'", naming no entry; a file saved with a UTF-8 byte
    order mark (Windows Notepad) was not valid JSON, or not a calib.txt."""
    txt = tmp_path / "calib.txt"
    for entry, unit in (("baseline=abc", "millimetres"), ("doffs=8px", "pixels"), ("height=x", "pixels")):
        txt.write_text(f"cam0=[100 0 48; 0 100 32; 0 0 1]\nbaseline=100\n{entry}\n")
        key, value = entry.split("=")
        with pytest.raises(InputError, match=f"{key} must be a number of {unit}, got '{value}'$"):
            read_calibration(txt)
    txt.write_bytes(b"\xef\xbb\xbfcam0=[100 0 48; 0 100 32; 0 0 1]\ncam1=[100 0 48; 0 100 32; 0 0 1]\nbaseline=100\n")
    assert (read_calibration(txt).focal, read_calibration(txt).baseline) == (100.0, 0.1)
    calib = tmp_path / "calib.json"
    calib.write_bytes(b"\xef\xbb\xbf" + json.dumps({"fx": 100, "baseline_meters": 0.1}).encode())
    assert (read_calibration(calib).focal, read_calibration(calib).baseline) == (100.0, 0.1)


def test_a_json_calibration_with_cx0_or_cx1_alone_is_refused_and_cx_stands_for_cx0(tmp_path):
    """cx1 without cx0 (or cx0 without cx1) silently gave doffs 0: depth off by d / (d + doffs)."""
    calib = tmp_path / "rig calib.json"
    for given, missing in (({"cx1": 60.0}, "cx0"), ({"cx0": 50.0}, "cx1"), ({"cx0": 50.0, "cx": 50.0}, "cx1")):
        calib.write_text(json.dumps({"fx": 100, "baseline_meters": 0.1, **given}))
        with pytest.raises(InputError) as error:
            read_calibration(calib)
        message = str(error.value)
        assert str(calib) in message and f"but no {missing}:" in message and "needs both (or neither" in message
        assert len(message.splitlines()) == 1
    for given, cx, doffs in (({"cx": 50.0, "cx1": 60.5}, 50.0, 10.5), ({"cx": 50.0}, 50.0, 0.0), ({}, None, 0.0),
                             ({"cx0": 50.0, "cx1": 40.0}, 50.0, -10.0)):
        calib.write_text(json.dumps({"fx": 100, "baseline_meters": 0.1, **given}))
        camera = read_calibration(calib)
        assert (camera.cx, camera.doffs) == (cx, doffs)


def test_a_json_calibration_reads_doffs_and_checks_it_against_cx1_minus_cx0(tmp_path):
    """A doffs key (as in calib.txt) was silently ignored; a NaN cx1 was reported as a doffs the file did not have."""
    calib = tmp_path / "calib.json"
    for given, doffs in (({"doffs": 12.0}, 12.0), ({"doffs": 12.0, "cx0": 50.0}, 12.0),
                         ({"doffs": 10.0, "cx0": 50.0, "cx1": 60.0}, 10.0)):
        calib.write_text(json.dumps({"fx": 100, "baseline_meters": 0.1, **given}))
        assert read_calibration(calib).doffs == doffs
    calib.write_text(json.dumps({"fx": 100, "baseline_meters": 0.1, "doffs": 12.0, "cx0": 50.0, "cx1": 60.0}))
    with pytest.raises(InputError, match="gives doffs=12 but cx1 - cx0 = 10; they must agree"):
        read_calibration(calib)
    calib.write_text('{"fx": 100, "baseline_meters": 0.1, "cx0": 50, "cx1": NaN}')
    with pytest.raises(InputError, match="cx1 must be a finite number of pixels, got nan"):
        read_calibration(calib)


def test_a_calib_txt_without_cam1_or_with_a_broken_matrix_is_refused(tmp_path):
    """cam0 without cam1 or doffs gave doffs 0 silently, and so did a cam1 of 8 numbers; a cam0 of 8 numbers or a
    missing baseline line was "expected JSON ... or a Middlebury calib.txt", naming nothing."""
    txt = tmp_path / "calib.txt"
    cam0, cam1 = "cam0=[100 0 48; 0 100 32; 0 0 1]\n", "cam1=[100 0 58; 0 100 32; 0 0 1]\n"
    for text, needle in (
        (cam0 + "baseline=100\n", r"has cam0 but no cam1 \(or doffs\): doffs = cx1 - cx0 needs both; add the cam1"),
        (cam0 + "cam1=[100 0 58; 0 100 32; 0 1]\nbaseline=100\n", r"cam1 must be a 3x3 matrix of numbers, got '\[100"),
        ("cam0=[nan 0 48; 0 100 32; 0 0 1]\n" + cam1 + "baseline=100\n", "cam0 must be a 3x3 matrix of numbers"),
        (cam0 + cam1, "has no baseline= line"),
        (cam1 + "baseline=100\n", r"has no cam0=\[f 0 cx; 0 f cy; 0 0 1\] line"),
    ):
        txt.write_text(text)
        with pytest.raises(InputError, match=needle) as error:
            read_calibration(txt)
        assert str(txt) in str(error.value) and len(str(error.value).splitlines()) == 1
    txt.write_text(cam0 + cam1 + "baseline=100\n")
    assert read_calibration(txt).doffs == 10.0
    txt.write_text(cam0 + "doffs=0\nbaseline=100\n")
    assert read_calibration(txt).doffs == 0.0


def test_two_baseline_keys_of_a_json_calibration_must_agree(tmp_path):
    """baseline_meters and baseline_mm both given: the first was taken and the other silently dropped."""
    calib = tmp_path / "calib.json"
    for given, shown in (({"baseline_meters": 0.1, "baseline_mm": 75}, "0.1 m vs 0.075 m"),
                         ({"baseline": 75, "baseline_mm": 75}, "75 m vs 0.075 m")):
        calib.write_text(json.dumps({"fx": 100, **given}))
        with pytest.raises(InputError, match=f"which disagree \\({shown}\\); keep only the right one"):
            read_calibration(calib)
    calib.write_text(json.dumps({"fx": 100, "baseline_meters": 0.075, "baseline_mm": 75}))
    assert read_calibration(calib).baseline == 0.075


def test_an_empty_utf16_or_huge_number_calibration_is_a_one_line_error(tmp_path):
    """An empty file was "not valid JSON (Expecting value at line 1)", a UTF-16 one a codec message without advice, an
    integer beyond float's range an OverflowError traceback; a string or null value was shown as Python ('1', None)."""
    for name, data, needle in (
        ("calib.json", b"", "is empty; give a JSON calibration"),
        ("calib.txt", b" \n", "is empty; give a JSON calibration"),
        ("calib.json", json.dumps({"fx": 100, "baseline_meters": 0.1}).encode("utf-16"), "not UTF-8.*save it as UTF-8"),
        ("calib.json", b'{"fx": 1' + b"0" * 400 + b', "baseline_meters": 0.1}', "focal length.*got inf"),
        ("calib.json", b'{"fx": 100, "baseline_meters": 0.1, "width": 1' + b"0" * 400 + b"}", "width.*got inf"),
        ("calib.json", b'{"fx": "100", "baseline_meters": 0.1}', 'fx must be a number, got "100"$'),
        ("calib.json", b'{"fx": 100, "baseline_meters": 0.1, "cy": null}', "cy must be a number, got null$"),
    ):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(InputError, match=needle) as error:
            read_calibration(tmp_path / name)
        assert len(str(error.value).splitlines()) == 1
    with pytest.raises(InputError, match="baseline must be a positive number of metres, got inf"):
        Camera(focal=100.0, baseline=10**400)


def test_write_ply_with_other_counts_of_points_and_colours_says_both_and_what_to_pass(tmp_path):
    """It was a bare ValueError("4 points but 3 colours"), not the InputError of write_ply's other checks."""
    needle = r"write_ply got 4 points but 3 colours; pass one colour per point \(\[4, 3\]\), or colors=None"
    with pytest.raises(InputError, match=needle) as error:
        write_ply(tmp_path / "cloud.ply", np.zeros((4, 3)), np.zeros((3, 3), np.uint8))
    assert len(str(error.value).splitlines()) == 1
    assert not (tmp_path / "cloud.ply").exists()
