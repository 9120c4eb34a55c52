"""flowcli.io: flow/disparity/array formats, images, frame lists, video, visualisation."""

from __future__ import annotations

import os
import struct
import warnings

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from flowcli.errors import InputError, OutputError
from flowcli.io import media
from flowcli.io.flow_formats import (
    UNKNOWN_FLOW,
    read_disparity_png,
    read_flo,
    read_flow,
    read_kitti_flow,
    read_npy,
    read_npz,
    read_pfm,
    read_png,
    valid_mask,
    write_disparity_png,
    write_flo,
    write_flow,
    write_kitti_flow,
    write_npy,
    write_npz,
    write_pfm,
)
from flowcli.io.media import (
    FramePair,
    VideoReader,
    VideoWriter,
    frame_pairs,
    list_frames,
    natural_sort_key,
    read_image,
)
from flowcli.io.visualize import flow_to_rgb, mask_to_png_array, write_png
from flowcli.ops.warp import backward_warp, out_of_frame

RNG = np.random.default_rng(0)


def random_flow(h=13, w=17, scale=20.0) -> np.ndarray:
    return (RNG.standard_normal((h, w, 2)) * scale).astype(np.float32)


def assert_one_line_error(excinfo, *fragments):
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert str(fragment) in message


# ----------------------------------------------------------------------------- .flo


def test_flo_round_trip_is_exact_and_keeps_unknown(tmp_path):
    flow = random_flow()
    flow[2, 3] = [1e10, 1e10]
    flow[4, 5, 1] = np.float32(1e9)
    path = write_flo(tmp_path / "a.flo", flow)
    back = read_flo(path)
    assert back.dtype == np.float32 and back.shape == (13, 17, 2)
    np.testing.assert_array_equal(back, flow)
    valid = valid_mask(back)
    assert not valid[2, 3] and not valid[4, 5] and valid.sum() == 13 * 17 - 2


def test_flo_layout_matches_the_middlebury_spec(tmp_path):
    flow = random_flow(3, 4)
    data = write_flo(tmp_path / "a.flo", flow).read_bytes()
    magic, width, height = struct.unpack("<fii", data[:12])
    assert (magic, width, height) == (202021.25, 4, 3)
    # u, v interleaved, rows top to bottom
    np.testing.assert_array_equal(np.frombuffer(data[12:], "<f4"), flow.reshape(-1))
    # and a hand-made file reads back as written
    hand = struct.pack("<fii", 202021.25, 2, 1) + struct.pack("<4f", 1.5, -2.0, 3.0, 4.25)
    (tmp_path / "hand.flo").write_bytes(hand)
    np.testing.assert_array_equal(read_flo(tmp_path / "hand.flo"), [[[1.5, -2.0], [3.0, 4.25]]])


def test_flow_tensor_layout_is_accepted(tmp_path):
    flow = random_flow(5, 6)
    write_flo(tmp_path / "t.flo", torch.from_numpy(flow).permute(2, 0, 1).unsqueeze(0))
    np.testing.assert_array_equal(read_flo(tmp_path / "t.flo"), flow)


# ----------------------------------------------------------------------------- KITTI PNG


def test_kitti_flow_round_trip_within_quantisation(tmp_path):
    flow = random_flow(20, 30, scale=100.0)
    valid = RNG.random((20, 30)) > 0.3
    flow[0, 0] = np.nan  # non-finite pixels are always written invalid
    path = write_kitti_flow(tmp_path / "k.png", flow, valid)
    back, back_valid = read_kitti_flow(path)
    expected_valid = valid.copy()
    expected_valid[0, 0] = False
    np.testing.assert_array_equal(back_valid, expected_valid)
    assert np.abs(back[expected_valid] - flow[expected_valid]).max() <= 1 / 128 + 1e-6
    assert (back[~expected_valid] == 0).all()
    # exact on the 1/64 grid
    grid = np.round(flow * 64) / 64
    np.testing.assert_array_equal(back[expected_valid], grid[expected_valid])


def test_kitti_flow_png_channels_and_byte_order(tmp_path):
    flow = np.zeros((4, 5, 2), np.float32)
    flow[..., 0], flow[..., 1] = 1.0, -2.0
    path = write_kitti_flow(tmp_path / "k.png", flow)
    raw = read_png(path)
    assert raw.dtype == np.uint16 and raw.shape == (4, 5, 3)
    assert tuple(raw[0, 0]) == (2**15 + 64, 2**15 - 128, 1)
    # An independent decoder (Pillow, which keeps the high byte of 16-bit colour) agrees.
    np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB")), (raw >> 8).astype(np.uint8))


def test_flow_beyond_the_kitti_range_is_clipped_with_a_warning_that_names_no_temp_file(tmp_path):
    """The CLI writes through temp files: a warning naming one points at a file the user never sees."""
    from flowcli.inference import FlowResult
    from flowcli.outputs import write_pair_outputs

    flow = torch.zeros(1, 2, 3, 4)
    flow[0, 0, 0, 0], flow[0, 1, 0, 1] = 900.0, -900.0
    image = torch.zeros(3, 3, 4)
    with pytest.warns(UserWarning, match="KITTI PNG range") as record:
        write_pair_outputs(FlowResult(forward=flow), image, image, {"kitti": tmp_path / "a_flow.png"})
    assert not any(".a_flow." in str(warning.message) for warning in record)
    back, valid = read_kitti_flow(tmp_path / "a_flow.png")
    assert valid.all() and back[0, 0, 0] == 32767 / 64 and back[0, 1, 1] == -512  # clipped, still valid


def test_disparity_png_round_trip_within_quantisation(tmp_path):
    disparity = (RNG.random((11, 9)) * 200).astype(np.float32)
    disparity[1, 1] = np.inf
    valid = RNG.random((11, 9)) > 0.2
    path = write_disparity_png(tmp_path / "d.png", disparity, valid)
    back, back_valid = read_disparity_png(path)
    expected = valid & np.isfinite(disparity)
    np.testing.assert_array_equal(back_valid, expected)
    assert np.abs(back[expected] - disparity[expected]).max() <= 1 / 512 + 1e-6
    raw = np.asarray(Image.open(path))  # Pillow reads 16-bit gray exactly
    np.testing.assert_array_equal(raw[expected], np.clip(np.rint(disparity[expected] * 256), 1, None))
    assert (raw[~expected] == 0).all()


def test_disparity_beyond_the_kitti_png_range_warns_that_it_was_clipped(tmp_path):
    disparity = np.array([[10.0, 300.0]], np.float32)  # wide-baseline or full-resolution stereo
    with pytest.warns(UserWarning, match="disparity beyond the KITTI PNG range"):
        write_disparity_png(tmp_path / "d.png", disparity)
    back, valid = read_disparity_png(tmp_path / "d.png")
    assert valid.all() and back.tolist() == [[10.0, 65535 / 256]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_disparity_png(tmp_path / "in_range.png", np.array([[255.99]], np.float32))


# ----------------------------------------------------------------------------- PFM


def test_pfm_round_trip_gray_and_colour_with_inf(tmp_path):
    gray = RNG.standard_normal((7, 5)).astype(np.float32)
    gray[0, 0], gray[6, 4] = np.inf, -np.inf
    colour = RNG.standard_normal((4, 6, 3)).astype(np.float32)
    np.testing.assert_array_equal(read_pfm(write_pfm(tmp_path / "g.pfm", gray)), gray)
    np.testing.assert_array_equal(read_pfm(write_pfm(tmp_path / "c.pfm", colour)), colour)


def test_pfm_rows_are_bottom_up_and_scale_sign_is_endianness(tmp_path):
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    data = write_pfm(tmp_path / "a.pfm", array).read_bytes()
    header = b"Pf\n3 2\n-1.0\n"
    assert data.startswith(header)
    np.testing.assert_array_equal(np.frombuffer(data[len(header) :], "<f4"), [3, 4, 5, 0, 1, 2])
    # big endian (positive scale), hand made
    big = b"Pf\n3 2\n1.0\n" + np.array([3, 4, 5, 0, 1, 2], ">f4").tobytes()
    (tmp_path / "big.pfm").write_bytes(big)
    np.testing.assert_array_equal(read_pfm(tmp_path / "big.pfm"), array)


def test_pfm_with_a_windows_crlf_header_reads_the_right_values(tmp_path):
    array = np.arange(6, dtype=np.float32).reshape(2, 3) + 1
    rows = np.ascontiguousarray(array[::-1], "<f4").tobytes()
    (tmp_path / "crlf.pfm").write_bytes(b"Pf\r\n3 2\r\n-1.0\r\n" + rows)
    np.testing.assert_array_equal(read_pfm(tmp_path / "crlf.pfm"), array)
    (tmp_path / "one_line.pfm").write_bytes(b"Pf 3 2 -1.0\n" + rows)
    np.testing.assert_array_equal(read_pfm(tmp_path / "one_line.pfm"), array)


def test_empty_flow_is_refused_instead_of_writing_an_unreadable_file(tmp_path):
    for shape in ((0, 5, 2), (5, 0, 2)):
        for name in ("f.flo", "f.pfm"):
            with pytest.raises(ValueError, match="at least one pixel"):
                write_flow(tmp_path / name, np.zeros(shape, np.float32))
    assert not any(tmp_path.iterdir())


def test_writers_take_bfloat16_tensors(tmp_path):
    flow = torch.from_numpy(random_flow(3, 4)).permute(2, 0, 1).to(torch.bfloat16)
    expected = flow.float().permute(1, 2, 0).numpy()
    for suffix in (".flo", ".npy", ".pfm"):
        np.testing.assert_array_equal(read_flow(write_flow(tmp_path / f"f{suffix}", flow)), expected)
    disparity = torch.tensor([[[1.5, 2.25]]], dtype=torch.bfloat16)
    np.testing.assert_array_equal(read_pfm(write_pfm(tmp_path / "d.pfm", disparity)), [[1.5, 2.25]])


# ----------------------------------------------------------------------------- NumPy, dispatch


def test_npy_and_npz_round_trip(tmp_path):
    flow = random_flow()
    np.testing.assert_array_equal(read_npy(write_npy(tmp_path / "f.npy", flow)), flow)
    occlusion = RNG.random((13, 17)) > 0.5
    bundle = read_npz(write_npz(tmp_path / "b.npz", flow=flow, occlusion=occlusion))
    assert set(bundle) == {"flow", "occlusion"}
    np.testing.assert_array_equal(bundle["flow"], flow)
    np.testing.assert_array_equal(bundle["occlusion"], occlusion)
    # a name without the .npz suffix is written exactly there
    write_npz(tmp_path / "bundle.data", flow=flow)
    assert (tmp_path / "bundle.data").is_file() and not (tmp_path / "bundle.data.npz").exists()


@pytest.mark.parametrize("suffix", [".flo", ".png", ".npy", ".pfm"])
def test_read_write_flow_dispatch(tmp_path, suffix):
    flow = random_flow(8, 10)
    flow[1, 2] = UNKNOWN_FLOW
    path = write_flow(tmp_path / f"f{suffix}", flow)
    back = read_flow(path)
    assert back.shape == (8, 10, 2) and back.dtype == np.float32
    valid = valid_mask(flow)
    np.testing.assert_array_equal(valid_mask(back), valid)
    tolerance = 1 / 128 + 1e-6 if suffix == ".png" else 0
    assert np.abs(back[valid] - flow[valid]).max() <= tolerance
    if suffix == ".pfm":
        assert read_pfm(path).shape == (8, 10, 3) and (read_pfm(path)[..., 2] == 0).all()


def test_write_flow_fmt_overrides_extension(tmp_path):
    flow = random_flow(4, 4)
    write_flow(tmp_path / "out.bin", flow, fmt="flo")
    np.testing.assert_array_equal(read_flo(tmp_path / "out.bin"), flow)


def test_unknown_flow_format_is_one_line_listing_formats(tmp_path):
    with pytest.raises(OutputError) as excinfo:
        write_flow(tmp_path / "f.xyz", random_flow())
    assert_one_line_error(excinfo, "f.xyz", ".flo", ".png", ".npy", ".pfm")
    (tmp_path / "f.xyz").write_bytes(b"x")
    with pytest.raises(InputError) as excinfo:
        read_flow(tmp_path / "f.xyz")
    assert_one_line_error(excinfo, "f.xyz", ".flo")


def test_writes_refuse_to_overwrite_and_leave_no_temp_files(tmp_path):
    path = write_flo(tmp_path / "a.flo", random_flow())
    with pytest.raises(OutputError):
        write_flo(path, random_flow())
    write_flo(path, np.zeros((2, 2, 2), np.float32), overwrite=True)
    assert read_flo(path).shape == (2, 2, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.flo"]


# ----------------------------------------------------------------------------- corrupt inputs


def _corrupt_files(tmp_path):
    flow = random_flow(6, 7)
    flo = write_flo(tmp_path / "good.flo", flow).read_bytes()
    png = write_kitti_flow(tmp_path / "good.png", flow).read_bytes()
    pfm = write_pfm(tmp_path / "good.pfm", flow[..., 0]).read_bytes()
    npy = write_npy(tmp_path / "good.npy", flow).read_bytes()
    npz = write_npz(tmp_path / "good.npz", flow=flow).read_bytes()
    return {
        "truncated.flo": (read_flo, flo[:-5]),
        "magic.flo": (read_flo, b"\0\0\0\0" + flo[4:]),
        "empty.flo": (read_flo, b""),
        "truncated.png": (read_kitti_flow, png[: len(png) // 2]),
        "notpng.png": (read_kitti_flow, b"GIF89a" + b"\0" * 40),
        "eightbit.png": (read_kitti_flow, iio.imwrite("<bytes>", np.zeros((4, 4, 3), np.uint8), extension=".png")),
        "truncated.pfm": (read_pfm, pfm[:-9]),
        "header.pfm": (read_pfm, b"P7\nhello"),
        "truncated.npy": (read_npy, npy[:-7]),
        "truncated.npz": (read_npz, npz[: len(npz) // 2]),
        "image.png": (media.read_image, png[:60]),
        "image.jpg": (media.read_image, b"\xff\xd8\xff\xe0 not a jpeg"),
        "image.ppm": (media.read_image, b"P6\n10 10\n255\n" + b"\0" * 20),
    }


def test_a_file_that_is_no_numpy_file_is_not_called_a_pickle(tmp_path):
    """np.load reads a file without the .npy or zip signature as a pickle: a text file named .npy said it held
    "pickled (object) data", and a .npz bundle named .npy came back as an open bundle instead of an array."""
    text = tmp_path / "notes.npy"
    text.write_text("x,y\n1,2\n")
    with pytest.raises(InputError, match="not a NumPy .npy file") as excinfo:
        read_npy(text)
    assert "pickle" not in str(excinfo.value)
    bundle = write_npz(tmp_path / "b.npz", flow=np.zeros((2, 3, 2), np.float32))
    renamed = bundle.rename(tmp_path / "bundle.npy")
    with pytest.raises(InputError, match="not a NumPy .npy file"):
        read_npy(renamed)
    with pytest.raises(InputError, match="not a NumPy .npz bundle"):
        read_npz(text.rename(tmp_path / "notes.npz"))


def test_corrupt_and_missing_inputs_raise_one_line_input_error(tmp_path):
    for name, (reader, data) in _corrupt_files(tmp_path).items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(InputError) as excinfo:
            reader(path)
        assert_one_line_error(excinfo, path)
    for reader in (read_flo, read_flow, read_pfm, read_png, read_npy, read_image):
        with pytest.raises(InputError) as excinfo:
            reader(tmp_path / "missing.flo")
        assert_one_line_error(excinfo, "missing.flo", "does not exist")


# ----------------------------------------------------------------------------- real data


def warp_errors(image1, image2, flow_hw2, valid=None):
    """Mean |frame1 - warp(frame2, flow)| and mean |frame1 - frame2| over valid in-frame pixels."""
    flow = torch.from_numpy(np.where(np.isfinite(flow_hw2), flow_hw2, 0)).permute(2, 0, 1)[None].float()
    keep = ~out_of_frame(flow)[0, 0]
    if valid is not None:
        keep &= torch.from_numpy(valid)
    warped = backward_warp(image2[None], flow)[0]
    warp_error = (image1 - warped).abs().mean(0)[keep].mean().item()
    still_error = (image1 - image2).abs().mean(0)[keep].mean().item()
    return warp_error, still_error


def test_sintel_flo_ground_truth(shared_data):
    root = shared_data / "flow" / "sintel" / "training"
    flow = read_flow(root / "flow" / "alley_1" / "frame_0002.flo")
    assert flow.shape == (436, 1024, 2) and valid_mask(flow).all()
    image1 = read_image(root / "clean" / "alley_1" / "frame_0002.png")
    image2 = read_image(root / "clean" / "alley_1" / "frame_0003.png")
    assert image1.shape == (3, 436, 1024)
    warp_error, still_error = warp_errors(image1, image2, flow)
    assert warp_error < 0.5 * still_error
    occlusion = read_image(root / "occlusions" / "alley_1" / "frame_0002.png")
    assert 0 < occlusion[0].mean() < 0.5


def test_kitti_flow_ground_truth(shared_data):
    root = shared_data / "flow" / "kitti2015" / "training"
    flow, valid = read_kitti_flow(root / "flow_occ" / "000010_10.png")
    assert flow.shape == (375, 1242, 2) and valid.shape == (375, 1242)
    assert 0.1 < valid.mean() < 0.9  # sparse
    assert np.abs(flow[valid]).max() < 512 and (flow[~valid] == 0).all()
    _, valid_noc = read_kitti_flow(root / "flow_noc" / "000010_10.png")
    assert (valid_noc <= valid).all() and valid_noc.sum() < valid.sum()
    image1 = read_image(root / "image_2" / "000010_10.png")
    image2 = read_image(root / "image_2" / "000010_11.png")
    warp_error, still_error = warp_errors(image1, image2, flow, valid)
    assert warp_error < 0.5 * still_error
    flow_via_dispatch = read_flow(root / "flow_occ" / "000010_10.png")
    np.testing.assert_array_equal(valid_mask(flow_via_dispatch), valid)


def test_middlebury_flo_with_unknown_and_gray_frames(shared_data):
    root = shared_data / "flow" / "middlebury"
    flow = read_flo(root / "other-gt-flow" / "Dimetrodon" / "flow10.flo")
    assert flow.shape == (388, 584, 2)
    valid = valid_mask(flow)
    assert 0 < (~valid).sum() and valid.mean() > 0.5
    assert (np.abs(flow[~valid]) >= 1e9).any()
    image1 = read_image(root / "other-data" / "Dimetrodon" / "frame10.png")
    image2 = read_image(root / "other-data" / "Dimetrodon" / "frame11.png")
    assert image1.shape == (3, 388, 584)
    assert torch.equal(image1[0], image1[1]) and torch.equal(image1[0], image1[2])  # gray replicated
    warp_error, still_error = warp_errors(image1, image2, flow, valid)
    assert warp_error < 0.7 * still_error
    rgb = flow_to_rgb(flow)
    assert rgb.shape == (388, 584, 3) and (rgb[~valid] == 0).all()


@pytest.mark.parametrize("scene", ["tsukuba", "venus"])
def test_middlebury_stereo_pfm_ground_truth(shared_data, scene):
    root = shared_data / "stereo" / "middlebury" / scene
    disparity = read_pfm(root / "disp0GT.pfm")
    left, right = read_image(root / "im0.png"), read_image(root / "im1.png")
    assert disparity.shape == tuple(left.shape[1:]) and disparity.dtype == np.float32
    finite = np.isfinite(disparity)
    assert finite.mean() > 0.7 and (disparity[finite] >= 0).all()
    # left(x) = right(x - d): a flow of (-d, 0) brings the right image onto the left one
    flow = np.stack((-np.where(finite, disparity, 0), np.zeros_like(disparity)), axis=-1)
    warp_error, still_error = warp_errors(left, right, flow, finite)
    assert warp_error < 0.5 * still_error
    # reading rows top-down instead of bottom-up would not match
    flipped_error, _ = warp_errors(left, right, flow[::-1].copy(), finite[::-1].copy())
    assert warp_error < 0.5 * flipped_error


def test_flying_chairs_ppm_and_flo(shared_data):
    root = shared_data / "flow" / "chairs" / "data"
    flow = read_flow(root / "00001_flow.flo")
    assert flow.shape == (384, 512, 2) and valid_mask(flow).all()
    pair = next(iter(frame_pairs((root / "00001_img1.ppm", root / "00001_img2.ppm"))))
    assert isinstance(pair, FramePair)
    assert (pair.name1, pair.name2, pair.index) == ("00001_img1", "00001_img2", 0)
    assert pair.image1.shape == (3, 384, 512) and pair.image1.dtype == torch.float32
    warp_error, still_error = warp_errors(pair.image1, pair.image2, flow)
    assert warp_error < 0.5 * still_error


# ----------------------------------------------------------------------------- images


def test_read_image_conversions(tmp_path):
    gray = RNG.integers(0, 256, (6, 5), dtype=np.uint8)
    rgba = RNG.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    rgb16 = RNG.integers(0, 65536, (6, 5, 3), dtype=np.uint16)
    gray16 = RNG.integers(0, 65536, (6, 5), dtype=np.uint16)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    Image.fromarray(rgba[..., :3]).save(tmp_path / "rgb.ppm")
    Image.fromarray(rgba[..., :3]).save(tmp_path / "rgb.bmp")
    write_png(tmp_path / "rgb16.png", rgb16)
    write_png(tmp_path / "gray16.png", gray16)

    image = read_image(tmp_path / "gray.png")
    assert image.shape == (3, 6, 5) and image.dtype == torch.float32
    for channel in range(3):
        np.testing.assert_allclose(image[channel].numpy(), gray / 255, atol=1e-7)
    rgb = rgba[..., :3].transpose(2, 0, 1) / 255
    for name in ("rgba.png", "rgb.ppm", "rgb.bmp"):
        np.testing.assert_allclose(read_image(tmp_path / name).numpy(), rgb, atol=1e-7)
    np.testing.assert_allclose(read_image(tmp_path / "rgb16.png").numpy(), rgb16.transpose(2, 0, 1) / 65535, atol=1e-7)
    np.testing.assert_allclose(read_image(tmp_path / "gray16.png")[2].numpy(), gray16 / 65535, atol=1e-7)


def test_natural_sort_and_list_frames(tmp_path):
    names = ["frame_10.png", "frame_2.png", "frame_1.jpg", "Frame_3.PNG", "notes.txt", "frame_20.ppm"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    listed = [p.name for p in list_frames(tmp_path)]
    assert listed == ["frame_1.jpg", "frame_2.png", "Frame_3.PNG", "frame_10.png", "frame_20.ppm"]
    assert [p.name for p in list_frames(tmp_path / "frame_*.png")] == ["frame_2.png", "frame_10.png"]
    assert sorted(["a10", "a9", "a100"], key=natural_sort_key) == ["a9", "a10", "a100"]
    with pytest.raises(InputError) as excinfo:
        list_frames(tmp_path / "*.webp")
    assert_one_line_error(excinfo, "no images")
    with pytest.raises(InputError):
        list_frames(tmp_path / "sub")
    with pytest.raises(InputError):
        list_frames(tmp_path / "nowhere")


def test_a_glob_through_a_folder_named_with_brackets_says_how_to_escape_them(tmp_path):
    """'sp ace[1]/*.png' reads [1] as a set of characters (the folder 'sp ace1'): the error said only "no images
    found in 'sp ace[1]/*.png'"."""
    (tmp_path / "sp ace[1]").mkdir()
    (tmp_path / "sp ace[1]" / "a.png").write_bytes(b"")
    with pytest.raises(InputError) as excinfo:
        list_frames(tmp_path / "sp ace[1]" / "*.png")
    escaped = f"'{tmp_path}/sp ace[[]1]/*.png'"
    assert_one_line_error(excinfo, f"found in {tmp_path}/sp ace[1]/*.png; ", "not the brackets", "[[]", escaped)
    assert [p.name for p in list_frames(escaped.strip("'"))] == ["a.png"]
    with pytest.raises(InputError) as excinfo:  # no image with the brackets taken as they are either: no hint
        list_frames(tmp_path / "sp ace[1]" / "*.jpg")
    assert "[[]" not in str(excinfo.value)


def test_frame_pairs_from_folder_with_step_and_limit(shared_data):
    folder = shared_data / "footage" / "traffic"
    pairs = list(frame_pairs(folder, step=2, max_frames=4))
    expected = [("00001", "00003", 0), ("00003", "00005", 1), ("00005", "00007", 2)]
    assert [(p.name1, p.name2, p.index) for p in pairs] == expected
    assert pairs[0].image2 is pairs[1].image1  # each frame decoded once
    assert pairs[0].image1.shape == (3, 272, 480)


def test_frame_pairs_errors(tmp_path):
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(InputError) as excinfo:
        list(frame_pairs((tmp_path / "a.png", tmp_path / "b.png")))
    assert_one_line_error(excinfo, "a.png", "b.png", "6x4", "6x5")
    with pytest.raises(InputError) as excinfo:
        list(frame_pairs(tmp_path / "a.png"))
    assert_one_line_error(excinfo, "single image")
    single = tmp_path / "single"
    single.mkdir()
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(single / "only.png")
    with pytest.raises(InputError) as excinfo:
        frame_pairs(single)
    assert_one_line_error(excinfo, "at least 2")
    with pytest.raises(InputError):
        frame_pairs((tmp_path / "a.png", tmp_path / "missing.png"))


# ----------------------------------------------------------------------------- video


def test_video_reader_streams_vtest(shared_data):
    path = shared_data / "footage" / "vtest.avi"
    reader = VideoReader(path, max_frames=3)
    assert reader.fps == 10.0 and reader.size == (768, 576)
    assert reader.num_frames == 3
    assert abs(VideoReader(path).num_frames - 795) <= 2
    frames = list(reader)
    assert len(frames) == 3 and reader.frames_read == 3
    assert all(f.shape == (3, 576, 768) and f.dtype == torch.float32 for f in frames)
    assert 0.0 <= float(frames[0].min()) and float(frames[0].max()) <= 1.0 and float(frames[0].std()) > 0.05
    assert 0 < (frames[0] - frames[1]).abs().mean() < 0.1  # consecutive frames differ, but not much
    pairs = list(frame_pairs(path, step=2, max_frames=3))
    assert [(p.name1, p.name2) for p in pairs] == [("frame_000000", "frame_000002"), ("frame_000002", "frame_000004")]
    assert torch.equal(pairs[0].image1, frames[0]) and torch.equal(pairs[0].image2, frames[2])


def _gradient_frames(count, height=49, width=65):
    ys, xs = np.mgrid[0:height, 0:width]
    for i in range(count):
        frame = np.stack(((xs * 3 + i * 8) % 256, (ys * 4) % 256, np.full_like(xs, 40 + 20 * i)), axis=-1)
        yield frame.astype(np.uint8)


def test_video_writer_round_trip_keeps_fps_and_frame_count(tmp_path):
    path = tmp_path / "out.mp4"
    frames = list(_gradient_frames(6))
    with VideoWriter(path, fps=7, overwrite=False) as writer:
        for frame in frames:
            writer.write(frame)
    assert writer.frames_written == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]
    reader = VideoReader(path)
    assert reader.fps == pytest.approx(7.0) and reader.num_frames == 6
    assert reader.size == (66, 50)  # odd sizes padded to even for yuv420p
    back = list(reader)
    assert len(back) == 6
    first = back[0][:, :49, :65].permute(1, 2, 0).numpy() * 255
    assert np.abs(first - frames[0]).mean() < 6
    with pytest.raises(OutputError):
        VideoWriter(path, fps=7)


def test_video_writer_failure_leaves_no_file(tmp_path):
    path = tmp_path / "out.mp4"
    with pytest.raises(KeyError):
        with VideoWriter(path, fps=5) as writer:
            writer.write(next(_gradient_frames(1)))
            raise KeyError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OutputError):
        with VideoWriter(path, fps=5):
            pass
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OutputError):
        VideoWriter(tmp_path / "out.webm", fps=5)


def test_a_failed_video_write_leaves_no_folder_it_made(tmp_path):
    """The writer made a/b/ before its temp file was set up: a failed `flowcli synth a/b/c.mp4 --clip` left them."""
    path = tmp_path / "a" / "b" / "c.mp4"
    with pytest.raises(ValueError, match="differs from the first frame"):
        with VideoWriter(path, fps=5) as writer:
            writer.write(np.zeros((8, 8, 3), np.uint8))
            writer.write(np.zeros((8, 10, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OutputError, match="no frames were written"):
        with VideoWriter(path, fps=5):
            pass
    assert list(tmp_path.iterdir()) == []
    VideoWriter(path, fps=5)  # made and never used
    assert list(tmp_path.iterdir()) == []


def _write_flat_video(path, fps: float, frames: int = 3) -> None:
    with VideoWriter(path, fps=fps) as writer:
        for i in range(frames):
            writer.write(np.full((8, 8, 3), 60 * i, np.uint8))


def test_a_video_rate_beyond_what_its_container_stores_is_refused_before_any_frame(tmp_path):
    """`flowcli synth c.mp4 --clip --fps 2e6` stored 1,001,000 fps, and --fps 4e9 failed in ffmpeg after the work."""
    from flowcli.io.media import MAX_FPS, check_fps_fits

    for name, highest in (("top.mp4", MAX_FPS), ("top.mov", MAX_FPS), ("top.mkv", 1000)):
        _write_flat_video(tmp_path / name, highest)
        assert VideoReader(tmp_path / name).fps == pytest.approx(highest, rel=1e-6)
        check_fps_fits(tmp_path / name, highest)
    made = sorted(tmp_path.iterdir())
    for name, fps, limit in (("new/c.mp4", 2e6, "1,001,000 fps"), ("new/c.m4v", 4e9, "1,001,000 fps"),
                             ("new/c.mkv", 1001, "1,000 fps")):  # fmt: skip
        with pytest.raises(OutputError) as excinfo:
            VideoWriter(tmp_path / name, fps=fps)
        assert_one_line_error(excinfo, tmp_path / name, f"{fps:g} fps", f"stores at most {limit}")
    assert_one_line_error(excinfo, "whole milliseconds", "write a .mp4")
    assert sorted(tmp_path.iterdir()) == made


def test_corrupt_and_short_videos(tmp_path, shared_data):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video" * 100)
    with pytest.raises(InputError) as excinfo:
        VideoReader(garbage)
    assert_one_line_error(excinfo, "garbage.mp4")
    with pytest.raises(InputError):
        frame_pairs(garbage)

    one = tmp_path / "one.mp4"
    with VideoWriter(one, fps=5) as writer:
        writer.write(next(_gradient_frames(1)))
    assert len(list(VideoReader(one))) == 1
    with pytest.raises(InputError) as excinfo:
        list(frame_pairs(one))
    assert_one_line_error(excinfo, "one.mp4", "fewer than 2 frames")

    truncated = tmp_path / "truncated.avi"
    truncated.write_bytes((shared_data / "footage" / "vtest.avi").read_bytes()[:200_000])
    with pytest.warns(UserWarning, match="truncated"):
        frames = list(VideoReader(truncated))
    assert 2 <= len(frames) < 795


def _fake_stream(frames_before_failure):
    def read_frames(path, pix_fmt="rgb24", output_params=None):
        yield {"size": (4, 3), "fps": 10.0, "duration": 1.0}
        for _ in range(frames_before_failure):
            yield bytes(4 * 3 * 3)
        raise RuntimeError("Could not read frame:\nEnd of file reached before full frame could be read.")

    return read_frames


def test_mid_stream_decode_failure_policy(tmp_path, monkeypatch):
    path = tmp_path / "fake.mp4"
    path.write_bytes(b"x")
    monkeypatch.setattr(media.imageio_ffmpeg, "read_frames", _fake_stream(3))
    with pytest.warns(UserWarning, match="decoding failed after frame 2"):
        assert len(list(VideoReader(path))) == 3
    monkeypatch.setattr(media.imageio_ffmpeg, "read_frames", _fake_stream(1))
    with pytest.raises(InputError) as excinfo, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        list(VideoReader(path))
    assert_one_line_error(excinfo, "fake.mp4", "after 1 frame")


# ----------------------------------------------------------------------------- visualisation


def test_flow_to_rgb_colours_and_max_flow():
    flow = np.zeros((2, 4, 2), np.float32)
    flow[0, 1] = [5, 0]
    flow[0, 2] = [-5, 0]
    flow[0, 3] = [0, 5]
    flow[1, 0] = [10, 0]
    flow[1, 1] = [np.nan, 0]
    rgb = flow_to_rgb(flow)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 4, 3)
    assert (rgb[0, 0] == 255).all()  # zero flow is white
    assert len({tuple(rgb[0, i]) for i in (1, 2, 3)}) == 3  # directions differ in hue
    assert (rgb[1, 1] == 0).all()  # unknown is black
    np.testing.assert_array_equal(flow_to_rgb(torch.from_numpy(flow).permute(2, 0, 1)), rgb)

    # With max_flow, a vector keeps its colour whatever the largest flow of its frame is.
    small_frame, big_frame = flow.copy(), flow.copy()
    big_frame[1, 0] = [40, 0]
    np.testing.assert_array_equal(flow_to_rgb(small_frame, 20)[0, 1], flow_to_rgb(big_frame, 20)[0, 1])
    assert not np.array_equal(flow_to_rgb(small_frame)[0, 1], flow_to_rgb(big_frame)[0, 1])
    # beyond max_flow: saturated like exactly max_flow, not darkened
    np.testing.assert_array_equal(flow_to_rgb(big_frame, 20)[1, 0], flow_to_rgb(big_frame, 40)[1, 0])


@pytest.mark.parametrize("max_flow", [float("nan"), float("inf")])
def test_flow_to_rgb_refuses_a_max_flow_that_is_not_a_finite_number(max_flow):
    with pytest.raises(ValueError, match="max_flow must be"):
        flow_to_rgb(random_flow(3, 4), max_flow)


def test_mask_to_png_array_and_write_png(tmp_path):
    assert mask_to_png_array(np.array([[True, False]])).tolist() == [[255, 0]]
    assert mask_to_png_array(torch.tensor([[[[0.0, 0.5, 1.0, 2.0]]]])).tolist() == [[0, 128, 255, 255]]
    assert mask_to_png_array(np.array([[0, 3]], np.int64)).tolist() == [[0, 255]]
    for array in (
        RNG.integers(0, 256, (5, 6), dtype=np.uint8),
        RNG.integers(0, 256, (5, 6, 3), dtype=np.uint8),
        RNG.integers(0, 65536, (5, 6), dtype=np.uint16),
        RNG.integers(0, 65536, (5, 6, 3), dtype=np.uint16),
    ):
        path = write_png(tmp_path / "x.png", array, overwrite=True)
        back = read_png(path)
        assert back.dtype == array.dtype
        np.testing.assert_array_equal(back, array)
    with pytest.raises(OutputError):
        write_png(tmp_path / "x.png", array)


def test_read_image_converts_cmyk_to_rgb(tmp_path):
    Image.new("RGB", (5, 3), (8, 15, 16)).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    Image.new("RGB", (5, 3), (8, 15, 16)).convert("CMYK").save(tmp_path / "cmyk.tif")
    expected = np.array([8, 15, 16]).reshape(3, 1, 1) / 255
    for name, atol in (("cmyk.jpg", 2 / 255), ("cmyk.tif", 1e-7)):
        image = read_image(tmp_path / name)
        assert image.shape == (3, 3, 5)
        np.testing.assert_allclose(image.numpy(), np.broadcast_to(expected, (3, 3, 5)), atol=atol)


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    return exif


def test_read_image_applies_exif_orientation(tmp_path):
    from PIL import ImageOps

    # a photo taken upright and stored sideways: four gray quadrants tell every rotation and flip apart
    upright = np.zeros((16, 32), np.uint8)
    upright[:8, 16:], upright[8:, :16], upright[8:, 16:] = 80, 160, 240
    Image.fromarray(np.rot90(upright)).save(tmp_path / "photo.jpg", quality=95, exif=_exif(6))
    image = read_image(tmp_path / "photo.jpg")
    assert image.shape == (3, 16, 32)
    np.testing.assert_allclose(image[0].numpy(), upright / 255, atol=0.05)

    stored = RNG.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    for orientation in range(1, 9):
        Image.fromarray(stored).save(tmp_path / "o.png", exif=_exif(orientation))
        with Image.open(tmp_path / "o.png") as file:
            reference = np.asarray(ImageOps.exif_transpose(file))
        np.testing.assert_array_equal(media.read_image_array(tmp_path / "o.png"), reference)
        # the header size that commands check before reading must be the upright one too
        assert media.image_size(tmp_path / "o.png") == (reference.shape[1], reference.shape[0])

    gray16 = RNG.integers(0, 65536, (4, 6), dtype=np.uint16)  # 16 bits survive the rotation
    Image.fromarray(gray16).save(tmp_path / "g16.tif", exif=_exif(6))
    array = media.read_image_array(tmp_path / "g16.tif")
    assert array.dtype == np.uint16
    np.testing.assert_array_equal(array, np.rot90(gray16, -1))


def test_output_path_that_is_a_folder_is_refused_before_writing(tmp_path):
    from flowcli.inference import FlowResult
    from flowcli.io.atomic import check_target, check_writable
    from flowcli.outputs import write_pair_outputs

    folder = tmp_path / "a_flow.flo"
    folder.mkdir()
    for check in (check_target, check_writable):
        with pytest.raises(OutputError) as excinfo:
            check(folder, overwrite=True)
        assert_one_line_error(excinfo, folder, "is a folder")
    with pytest.raises(OutputError):
        write_flo(folder, random_flow(), overwrite=True)

    result = FlowResult(forward=torch.zeros(1, 2, 4, 5))
    image = torch.zeros(3, 4, 5)
    paths = {"vis": tmp_path / "a_vis.png", "flo": folder}  # vis is renamed into place first when both succeed
    with pytest.raises(OutputError):
        write_pair_outputs(result, image, image, paths, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_flow.flo"]  # no output, no temp file
    assert folder.is_dir() and not any(folder.iterdir())


def test_disparity_png_of_one_pixel_tall_or_wide_maps(tmp_path):
    for shape in ((1, 30), (30, 1), (1, 1)):
        disparity = RNG.uniform(1, 50, shape).astype(np.float32)
        write_disparity_png(tmp_path / "d.png", disparity, overwrite=True)
        back, valid = read_disparity_png(tmp_path / "d.png")
        assert back.shape == shape and valid.all()
        np.testing.assert_allclose(back, disparity, atol=0.5 / 256)
        # the project's tensor layouts and a trailing channel axis are accepted too
        tensor = torch.from_numpy(disparity)
        for variant in (tensor[None], tensor[None, None], disparity[:, :, None]):
            write_disparity_png(tmp_path / "v.png", variant, overwrite=True)
            assert read_disparity_png(tmp_path / "v.png")[0].shape == shape
    with pytest.raises(ValueError, match="one-channel map"):
        write_disparity_png(tmp_path / "bad.png", np.ones((2, 3, 4)))


def test_outputs_get_the_usual_permissions_even_when_the_writer_recreates_the_file(tmp_path):
    """safetensors recreates its file 0600; a checkpoint must be as readable as any other output."""
    import os

    from flowcli.checkpoint import save_checkpoint
    from flowcli.models import FlowNet, FlowNetConfig

    umask = os.umask(0o022)
    try:
        save_checkpoint(FlowNet(FlowNetConfig()), tmp_path / "model.safetensors")
    finally:
        os.umask(umask)
    assert (tmp_path / "model.safetensors").stat().st_mode & 0o777 == 0o644


def test_natural_order_of_a_name_and_its_numbered_relatives():
    from flowcli.io.media import natural_sort_key

    names = ["a/seq10", "a/seq", "a/seq2", "frame_10.png", "frame_2.png"]
    assert sorted(names, key=natural_sort_key) == ["a/seq", "a/seq2", "a/seq10", "frame_2.png", "frame_10.png"]


def test_16_bit_pgm_and_ppm_keep_their_bits(tmp_path):
    # Pillow reads 16-bit PGM as int32 (which read_image refused) and 16-bit PPM truncated to 8 bits
    gray = RNG.integers(0, 65536, (5, 7), dtype=np.uint16)
    colour = RNG.integers(0, 65536, (5, 7, 3), dtype=np.uint16)
    twelve = RNG.integers(0, 4096, (5, 7), dtype=np.uint16)
    (tmp_path / "g.pgm").write_bytes(b"P5\n# a comment\n7 5\n65535\n" + gray.astype(">u2").tobytes())
    (tmp_path / "c.ppm").write_bytes(b"P6\n7 5\n65535\n" + colour.astype(">u2").tobytes())
    (tmp_path / "t.pgm").write_bytes(b"P5 7 5 4095\n" + twelve.astype(">u2").tobytes())
    assert np.array_equal(media.read_image_array(tmp_path / "g.pgm"), gray)
    assert np.array_equal(media.read_image_array(tmp_path / "c.ppm"), colour)
    np.testing.assert_allclose(read_image(tmp_path / "t.pgm")[0].numpy(), twelve / 4095, atol=1e-5)
    np.testing.assert_allclose(read_image(tmp_path / "c.ppm").numpy(), colour.transpose(2, 0, 1) / 65535, atol=1e-6)
    (tmp_path / "short.ppm").write_bytes(b"P6\n7 5\n65535\n" + colour.astype(">u2").tobytes()[:-4])
    with pytest.raises(InputError) as excinfo:
        read_image(tmp_path / "short.ppm")
    assert_one_line_error(excinfo, "short.ppm", "truncated")


def test_an_image_over_pillows_pixel_limit_says_so(tmp_path, monkeypatch):
    """A huge JPEG (15000x15000) trips Pillow's guard against decompression bombs; read_image called it "not an
    image format flowcli reads". The limit is kept; the message gives the pixel count and what to do."""
    for name in ("huge.jpg", "huge.png"):
        Image.fromarray(np.zeros((60, 50, 3), np.uint8)).save(tmp_path / name)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses images over twice this
    for name in ("huge.jpg", "huge.png"):
        for read in (read_image, media.image_size):
            with pytest.raises(InputError) as excinfo:
                read(tmp_path / name)
            assert_one_line_error(
                excinfo, name, "3,000 pixels exceed Pillow's safety limit against decompression bombs", "downscale it"
            )
    assert Image.MAX_IMAGE_PIXELS == 1000  # not raised behind the user's back


def test_int32_images_are_scaled_by_their_bit_depth(tmp_path):
    """Pillow's mode I (int32, as it gives 16-bit gray PNG and TIFF in some versions, and 32-bit TIFF) was refused
    by read_image ("unsupported image pixel type int32"), where the face reader clipped it to white."""
    sixteen = RNG.integers(0, 65536, (5, 7)).astype(np.int32)
    Image.fromarray(sixteen).save(tmp_path / "sixteen.tif")
    assert Image.open(tmp_path / "sixteen.tif").mode == "I"
    assert media.read_image_array(tmp_path / "sixteen.tif").dtype == np.uint16
    np.testing.assert_allclose(read_image(tmp_path / "sixteen.tif")[0].numpy(), sixteen / 65535, atol=1e-6)
    wide = sixteen * 32768  # values past 16 bits: scaled from int32's range
    Image.fromarray(wide).save(tmp_path / "wide.tif")
    np.testing.assert_allclose(read_image(tmp_path / "wide.tif")[0].numpy(), wide / (2**31 - 1), atol=2e-5)
    Image.fromarray(sixteen - 70000).save(tmp_path / "signed.tif")
    with pytest.raises(InputError) as excinfo:
        read_image(tmp_path / "signed.tif")
    assert_one_line_error(excinfo, "signed.tif", "negative pixel values")


def test_write_errors_are_one_line_output_errors_without_temp_files(tmp_path, monkeypatch):
    import errno

    from flowcli.io import atomic

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(type(tmp_path), "write_bytes", full)
    with pytest.raises(OutputError) as excinfo:
        write_flo(tmp_path / "f.flo", random_flow())
    assert_one_line_error(excinfo, "f.flo", "No space left")
    assert list(tmp_path.iterdir()) == []

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "open", denied)  # what root gets in a read-only special folder (mkstemp calls it too)
    with pytest.raises(OutputError) as excinfo:
        write_npy(tmp_path / "f.npy", random_flow())
    assert_one_line_error(excinfo, "f.npy", "Permission denied")
    with pytest.raises(OutputError) as excinfo:
        atomic.probe_folder(tmp_path)
    assert_one_line_error(excinfo, str(tmp_path), "Permission denied")


def test_a_rotated_video_reads_upright_without_log_noise(tmp_path, caplog):
    import logging
    import subprocess

    import imageio_ffmpeg

    frames = [RNG.integers(0, 256, (24, 40, 3), dtype=np.uint8) for _ in range(2)]
    with VideoWriter(tmp_path / "flat.mp4", fps=5) as writer:
        for frame in frames:
            writer.write(frame)
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-display_rotation", "90", "-i",
               str(tmp_path / "flat.mp4"), "-c", "copy", str(tmp_path / "phone.mp4")]
    if subprocess.run(command, capture_output=True, check=False).returncode != 0:
        pytest.skip("this ffmpeg cannot set a display rotation")
    with caplog.at_level(logging.INFO):
        reader = VideoReader(tmp_path / "phone.mp4")
        decoded = list(reader)
    assert reader.size == (24, 40) and [f.shape for f in decoded] == [(3, 40, 24)] * 2
    assert not [r for r in caplog.records if "frame size" in r.getMessage()]  # was logged twice per video


def test_pfm_takes_tensors_in_the_project_layout(tmp_path):
    # a DisparityResult.disparity [1, 1, H, W] raised "PFM stores [H, W] or [H, W, 3]"
    disparity = torch.rand(1, 1, 5, 7) * 30
    write_pfm(tmp_path / "d.pfm", disparity)
    np.testing.assert_array_equal(read_pfm(tmp_path / "d.pfm"), disparity[0, 0].numpy())
    colour = torch.rand(3, 5, 7)
    write_pfm(tmp_path / "c.pfm", colour)
    np.testing.assert_array_equal(read_pfm(tmp_path / "c.pfm"), colour.permute(1, 2, 0).numpy())
    write_pfm(tmp_path / "a.pfm", disparity[0, 0].numpy()[:, :3].copy())  # arrays are taken as [H, W] / [H, W, C]
    assert read_pfm(tmp_path / "a.pfm").shape == (5, 3)


def test_a_variable_frame_rate_video_gives_each_frame_once(tmp_path):
    import subprocess

    import imageio_ffmpeg

    # 10 of 30 test-pattern frames, kept in runs of 2 (gaps of 1/30 and 5/30 s), as phones record them
    path = tmp_path / "phone.mp4"
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i",
               "testsrc=size=48x32:rate=30", "-t", "1", "-vf", r"select=lt(mod(n\,6)\,2)", "-fps_mode", "vfr",
               "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)]
    if subprocess.run(command, capture_output=True, check=False).returncode != 0:
        pytest.skip("this ffmpeg cannot make a variable-frame-rate test video")
    frames = list(VideoReader(path))
    assert len(frames) == 10  # not resampled to 30 fps with repeated frames
    assert all(not torch.equal(a, b) for a, b in zip(frames, frames[1:]))
    # MPEG-TS states the nominal 30 fps, not the average: the reader counts the frames from their timestamps
    remuxed = tmp_path / "phone.ts"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-c", "copy", str(remuxed)],
                   check=True, capture_output=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reader = VideoReader(remuxed)
        assert reader.num_frames == 10 and len(list(reader)) == 10
    assert not [w for w in caught if "frames decoded" in str(w.message)]  # was "only 10 of about 30 ..."


def _ffmpeg_duration(path) -> float:
    """The duration ffmpeg states for a media file (ffprobe is not shipped with imageio-ffmpeg)."""
    import re
    import subprocess

    import imageio_ffmpeg

    header = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)],
                            capture_output=True, text=True).stderr
    hours, minutes, seconds = re.search(r"Duration: (\d+):(\d+):([\d.]+)", header).groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _encode_test_pattern(path, frames, video_filter, rate="30"):
    import subprocess

    import imageio_ffmpeg

    codec = ["-c:v", "libvpx-vp9"] if path.suffix == ".webm" else ["-c:v", "libx264", "-pix_fmt", "yuv420p"]
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", f"testsrc=size=48x32:rate={rate}",
               "-frames:v", str(frames), "-vf", video_filter, "-fps_mode", "passthrough", *codec, str(path)]
    if subprocess.run(command, capture_output=True, check=False).returncode != 0:
        pytest.skip(f"this ffmpeg cannot encode a {path.suffix} test video")


@pytest.mark.parametrize("container", [".mp4", ".ts", ".webm", ".mkv"])
def test_a_video_of_a_variable_frame_rate_source_lasts_as_long_as_the_source(tmp_path, container):
    # .ts, .webm and .mkv state the nominal 30 fps (.mp4 a rate off by the last frame's length): 20 frames at
    # 30 fps played the 1.75 s source in 0.67 s
    source = tmp_path / f"phone{container}"
    _encode_test_pattern(source, 20, "setpts='if(lt(N,5),N*0.25,1.25+(N-5)/30)/TB'")  # 4 fps, then 30 fps
    reader = VideoReader(source)
    assert reader.num_frames == 20
    output = tmp_path / "out.mp4"
    with VideoWriter(output, fps=reader.fps) as writer:
        for frame in reader:
            writer.write(frame)
    assert writer.frames_written == 20
    assert _ffmpeg_duration(output) == pytest.approx(_ffmpeg_duration(source), abs=1 / reader.fps + 0.01)

    # a constant frame rate keeps the rate the container states, not one measured from rounded timestamps
    steady = tmp_path / f"steady{container}"
    _encode_test_pattern(steady, 12, "null", rate="30000/1001")
    with VideoReader(steady) as steady_reader:
        assert steady_reader.fps == 29.97 and steady_reader.num_frames == 12


def test_image_content_wins_over_a_wrong_extension(tmp_path):
    rgb = RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    rgb16 = RNG.integers(0, 65536, (6, 5, 3), dtype=np.uint16)
    Image.fromarray(rgb).save(tmp_path / "jpeg.png", format="JPEG", quality=100)
    Image.fromarray(rgb).save(tmp_path / "jpeg.jpg", format="JPEG", quality=100)
    write_png(tmp_path / "png16.jpg", rgb16)
    assert media.image_size(tmp_path / "jpeg.png") == (5, 6)
    np.testing.assert_array_equal(read_image(tmp_path / "jpeg.png").numpy(), read_image(tmp_path / "jpeg.jpg").numpy())
    np.testing.assert_allclose(read_image(tmp_path / "png16.jpg").numpy(), rgb16.transpose(2, 0, 1) / 65535, atol=1e-7)


def test_float_tiff_frames_have_a_size(tmp_path):
    rgb = RNG.random((6, 5, 3), dtype=np.float32)
    iio.imwrite(tmp_path / "linear.tif", rgb)
    assert media.image_size(tmp_path / "linear.tif") == (5, 6)
    np.testing.assert_allclose(read_image(tmp_path / "linear.tif").numpy(), rgb.transpose(2, 0, 1), atol=1e-7)


def test_a_relative_video_name_with_a_colon_is_a_file_not_a_url(tmp_path, monkeypatch):
    # 'take:2.mp4' was opened by ffmpeg as protocol 'take' and refused as a corrupt video
    with VideoWriter(tmp_path / "take:2.mp4", fps=5) as writer:
        for frame in _gradient_frames(2):
            writer.write(frame)
    monkeypatch.chdir(tmp_path)
    assert len(list(VideoReader("take:2.mp4"))) == 2


@pytest.mark.parametrize("content", [b"just some text, not pixels", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00"])
def test_a_file_in_a_format_flowcli_cannot_read_says_to_convert_it(tmp_path, content):
    """A text file or a HEIC photo used to give imageio's "Could not find a backend to open ... with iomode `r`"."""
    from flowcli.errors import InputError
    from flowcli.io.media import read_image

    path = tmp_path / "photo.heic"
    path.write_bytes(content)
    with pytest.raises(InputError, match=r"not an image format flowcli reads; convert it to PNG or JPEG") as error:
        read_image(path)
    assert "backend" not in str(error.value)


@pytest.mark.parametrize("name", ["photo.jpg", "photo.png", "frame.ppm"])
def test_an_empty_image_file_is_said_to_be_empty(tmp_path, name):
    """A 0-byte .jpg (a copy that never finished) was "not an image format flowcli reads" when read, and "the file is
    corrupt or not an image" when estimate first asked its size."""
    from flowcli.face.media import read_image as read_face_image
    from flowcli.io.media import image_size

    empty, good = tmp_path / name, tmp_path / "good.png"
    empty.write_bytes(b"")
    iio.imwrite(good, np.zeros((8, 8, 3), np.uint8))
    reads = (read_image, image_size, read_face_image, lambda path: next(frame_pairs((good, path))))
    for read in reads:
        with pytest.raises(InputError) as excinfo:
            read(empty)
        assert_one_line_error(excinfo, f"cannot read image {empty}: the file is empty (0 bytes)")


def test_an_empty_video_file_is_said_to_be_empty(tmp_path):
    empty = tmp_path / "clip.mp4"
    empty.write_bytes(b"")
    with pytest.raises(InputError) as excinfo:
        VideoReader(empty)
    assert_one_line_error(excinfo, f"cannot read video {empty}: the file is empty (0 bytes)")


def test_an_audio_only_file_is_said_to_have_no_video_stream(tmp_path):
    """An .mp4 of a voice memo was refused as "ffmpeg cannot open it; the file is corrupt or not a video"."""
    import subprocess

    import imageio_ffmpeg

    audio = tmp_path / "memo.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono",
                    "-t", "0.5", "-c:a", "aac", str(audio)], check=True)  # fmt: skip
    with pytest.raises(InputError) as excinfo:
        VideoReader(audio)
    assert_one_line_error(excinfo, f"cannot read video {audio}: it has no video stream, only audio")


def test_an_output_folder_under_a_file_names_the_file(tmp_path):
    from flowcli.errors import OutputError
    from flowcli.io.atomic import check_writable

    (tmp_path / "taken").write_text("keep me")
    with pytest.raises(OutputError, match=r"taken is a file"):
        check_writable(tmp_path / "taken" / "sub" / "out.mp4")
    assert (tmp_path / "taken").read_text() == "keep me"


def test_a_file_another_run_wrote_meanwhile_is_kept_without_overwrite(tmp_path, monkeypatch):
    """Two runs writing the same -o: both pass the up-front check, and the rename of the later one replaced the
    earlier one's file without --overwrite, both reporting success."""
    import errno

    from flowcli.io import atomic

    path = tmp_path / "a_flow.flo"
    with pytest.raises(OutputError) as excinfo:
        with atomic.atomic_path(path) as mine:
            write_flo(path, random_flow(), overwrite=False)  # the other run finishes first
            mine.write_bytes(b"mine")
    assert_one_line_error(excinfo, path, "already exists", "--overwrite")
    assert read_flo(path).shape == (13, 17, 2)
    assert [p.name for p in tmp_path.iterdir()] == ["a_flow.flo"]  # no temp file left

    with atomic.atomic_path(path, overwrite=True) as mine:  # --overwrite replaces it
        mine.write_bytes(b"mine")
    assert path.read_bytes() == b"mine"

    def no_hard_links(*args, **kwargs):  # FAT, some network and FUSE mounts
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(atomic.os, "link", no_hard_links)
    with pytest.raises(OutputError, match="already exists"):
        with atomic.atomic_path(path) as mine:
            mine.write_bytes(b"other")
    write_npy(tmp_path / "b.npy", random_flow())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_flow.flo", "b.npy"]


def test_a_failed_output_leaves_no_folder_it_made(tmp_path):
    """`flowcli export -o new/deep/m.onnx` whose check failed said "nothing was written" and left new/deep behind,
    empty. A folder that other outputs share stays."""
    from flowcli.io import atomic

    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_path(tmp_path / "new" / "deep" / "m.onnx") as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []

    write_npy(tmp_path / "shared" / "a.npy", random_flow())
    with pytest.raises(ValueError):
        with atomic.atomic_path(tmp_path / "shared" / "b.npy"):
            raise ValueError("the writer failed")
    assert [p.name for p in (tmp_path / "shared").iterdir()] == ["a.npy"]


def _interrupted(*args, **kwargs):
    raise KeyboardInterrupt


def _open_then_interrupted(file, flags, *args, **kwargs):
    """os.open, interrupted just after it made a temp file for `a_flow.flo`."""
    fd = _REAL_OPEN(file, flags, *args, **kwargs)
    if os.path.basename(file).startswith(".a_flow."):
        os.close(fd)
        raise KeyboardInterrupt
    return fd


_REAL_OPEN = os.open


@pytest.mark.parametrize(
    ("patched", "interruption"),
    [
        # between making the temp file and the body of the write (a hidden `.NAME.xxxx.ext` was left)
        ("umask", _interrupted),
        # while the temp file is being made: mkstemp ran Python code after making it and before returning its name,
        # and an interrupt there left it where nothing knew the name (a killed `estimate -` left one behind)
        ("open", _open_then_interrupted),
    ],
)
def test_an_interrupt_as_the_temp_file_is_made_leaves_no_temp_file(patched, interruption, tmp_path, monkeypatch):
    from flowcli.io import atomic

    monkeypatch.setattr(os, patched, interruption)  # (os.open: as mkstemp calls it too)
    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_path(tmp_path / "a_flow.flo") as tmp:
            tmp.write_bytes(b"never")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
    assert atomic._OUTPUT_OF_TEMP == {}


def test_a_write_error_of_one_pair_output_names_that_output_not_a_temp_file(tmp_path, monkeypatch):
    """A full disk during `estimate` said 'cannot write out/.a_flow.mq_l9svn.flo', a hidden temp name."""
    import errno

    from flowcli.inference import FlowResult
    from flowcli.outputs import write_pair_outputs

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(type(tmp_path), "write_bytes", full)
    image = torch.zeros(3, 4, 5)
    paths = {"flo": tmp_path / "a_flow.flo"}
    with pytest.raises(OutputError) as excinfo:
        write_pair_outputs(FlowResult(forward=torch.zeros(1, 2, 4, 5)), image, image, paths)
    assert_one_line_error(excinfo, f"cannot write {tmp_path / 'a_flow.flo'}: No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_a_dangling_symlink_at_an_output_path_is_not_replaced_without_overwrite(tmp_path):
    """A git-annex or DVC file whose content was dropped is a dangling link: it was silently replaced."""
    from flowcli.io.atomic import check_creatable, check_target, check_writable

    link = tmp_path / "a_vis.png"
    link.symlink_to("annex/objects/missing.png")
    for check in (check_target, check_writable, check_creatable):
        with pytest.raises(OutputError) as excinfo:
            check(link)
        assert_one_line_error(excinfo, link, "already exists")
    with pytest.raises(OutputError):
        write_png(link, np.zeros((2, 3, 3), np.uint8))
    assert link.is_symlink() and [p.name for p in tmp_path.iterdir()] == ["a_vis.png"]
    write_png(link, np.zeros((2, 3, 3), np.uint8), overwrite=True)
    assert not link.is_symlink() and read_png(link).shape == (2, 3, 3)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_check_creatable_refuses_a_folder_that_takes_no_files_even_for_root():
    """os.access calls /proc writable for root: `flowcli export -o /proc/x.onnx` loaded the model, then failed."""
    from flowcli.io.atomic import check_creatable

    with pytest.raises(OutputError) as excinfo:
        check_creatable("/proc/x.onnx")
    assert_one_line_error(excinfo, "cannot write in output folder /proc", "choose another")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes in a 0555 folder")
def test_check_creatable_refuses_a_read_only_folder(tmp_path):
    from flowcli.io.atomic import check_creatable

    folder = tmp_path / "ro"
    folder.mkdir(mode=0o555)
    try:
        with pytest.raises(OutputError, match="not writable"):
            check_creatable(folder / "sub" / "x.onnx")
    finally:
        folder.chmod(0o755)


def test_a_folder_that_cannot_be_written_is_not_said_to_need_an_o_option(tmp_path, monkeypatch):
    """`flowcli synth /sys/kernel/x.mp4 --clip` said "choose another with -o": synth takes its output as an argument."""
    from flowcli.io import atomic

    def no_files(**kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(atomic.tempfile, "mkstemp", no_files)
    checks = [
        lambda **hint: atomic.probe_folder(tmp_path, **hint),
        lambda **hint: atomic.check_creatable(tmp_path / "x.mp4", **hint),
    ]
    for check in checks:  # (os.access says yes to root: the probe is what fails)
        with pytest.raises(OutputError) as excinfo:
            check()
        assert_one_line_error(excinfo, tmp_path, "choose another output path")
        assert "with -o" not in str(excinfo.value)
        with pytest.raises(OutputError) as excinfo:
            check(hint="choose another with -o")
        assert str(excinfo.value).endswith("; choose another with -o")
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)
    for check in (atomic.check_writable, atomic.check_creatable):
        with pytest.raises(OutputError) as excinfo:
            check(tmp_path / "new" / "x.mp4")
        assert_one_line_error(excinfo, "is not writable; choose another output path")
        with pytest.raises(OutputError) as excinfo:
            check(tmp_path / "new" / "x.mp4", hint="choose another with -o")
        assert str(excinfo.value).endswith("is not writable; choose another with -o")


def test_check_creatable_leaves_nothing_and_tries_a_folder_once(tmp_path, monkeypatch):
    from flowcli.io import atomic

    made = []
    mkstemp = atomic.tempfile.mkstemp
    monkeypatch.setattr(atomic.tempfile, "mkstemp", lambda **kwargs: made.append(kwargs) or mkstemp(**kwargs))
    for name in ("a.png", "b.png", "new/c.png"):  # new/ does not exist: its parent is the folder tried
        atomic.check_creatable(tmp_path / name)
    assert [kwargs["dir"] for kwargs in made] == [tmp_path] and list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- a video on stdin


def _noise_video(path, frames: int, fps: float = 7, size=(48, 80)):
    rng = np.random.default_rng(3)
    with VideoWriter(path, fps=fps) as writer:
        for _ in range(frames):
            writer.write(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    return path


@pytest.mark.parametrize("container", [".mkv", ".mp4"])
def test_a_video_piped_into_stdin_reads_as_its_file(tmp_path, pipe_into_stdin, container):
    path = _noise_video(tmp_path / f"clip{container}", 4)
    pipe_into_stdin(path.read_bytes())
    reader = VideoReader("-")
    assert (reader.name, reader.size, reader.fps, reader.num_frames) == ("stdin", (80, 48), pytest.approx(7), None)
    piped = list(reader)
    from_file = list(VideoReader(path))
    assert len(piped) == 4 and all(torch.equal(a, b) for a, b in zip(piped, from_file))
    with pytest.raises(RuntimeError, match="read once"):
        list(reader)

    pipe_into_stdin(path.read_bytes())
    pairs = list(frame_pairs("-", max_frames=3))
    assert [(p.name1, p.name2) for p in pairs] == [("frame_000000", "frame_000001"), ("frame_000001", "frame_000002")]
    assert torch.equal(pairs[1].image2, from_file[2])


def test_a_broken_stream_on_stdin_fails_as_a_broken_file_does(tmp_path, pipe_into_stdin, monkeypatch):
    clip = _noise_video(tmp_path / "clip.mkv", 12).read_bytes()
    pipe_into_stdin(clip[: len(clip) * 2 // 3])  # cut off mid-frame: ffmpeg logs it and ends with code 0
    with pytest.warns(UserWarning, match="stdin: decoding failed after frame"):
        frames = list(VideoReader("-"))
    assert 2 <= len(frames) < 12

    pipe_into_stdin(b"not a video" * 1000)
    with pytest.raises(InputError) as excinfo:
        VideoReader("-")
    assert_one_line_error(excinfo, "cannot read the video on stdin", "not a video")

    pipe_into_stdin(clip[:1500])  # the header and less than a frame
    with pytest.raises(InputError) as excinfo:
        VideoReader("-")
    assert_one_line_error(excinfo, "cannot read the video on stdin")

    class Terminal:
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stdin", Terminal())
    with pytest.raises(InputError) as excinfo:  # not a wait for keystrokes
        VideoReader("-")
    assert_one_line_error(excinfo, "nothing is piped in")


def test_an_mp4_with_its_index_at_the_end_on_stdin_says_to_give_its_path(tmp_path, pipe_into_stdin):
    import subprocess

    import imageio_ffmpeg

    path = tmp_path / "camera.mp4"  # lossless noise: bigger than what ffmpeg reads ahead from a pipe
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i",
               "nullsrc=size=64x48:rate=10,geq=random(1)*255:128:128", "-frames:v", "16", "-c:v", "libx264",
               "-qp", "0", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path)]
    if subprocess.run(command, capture_output=True, check=False).returncode != 0:
        pytest.skip("this ffmpeg cannot make the test video")
    pipe_into_stdin(path.read_bytes())
    with pytest.raises(InputError) as excinfo:
        VideoReader("-")
    assert_one_line_error(excinfo, "index at the start", "give its path")


def test_a_name_whose_temp_file_would_not_fit_the_file_system_is_refused_up_front(tmp_path):
    """A 246-byte output name fits a 255-byte file system, but its temp file (10 bytes longer) does not: runs
    planned such names, did all their work, then failed at the first write."""
    from flowcli.io.atomic import TEMP_NAME_EXTRA, atomic_path, check_creatable, check_target, check_writable

    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    fits, too_long = (tmp_path / "new" / ("x" * (limit - TEMP_NAME_EXTRA - 4 + extra) + ".flo") for extra in (0, 1))
    for check in (check_target, check_writable, check_creatable):
        with pytest.raises(OutputError, match=rf"\({limit - TEMP_NAME_EXTRA + 1} bytes\) is too long"):
            check(too_long)
        check(fits)
    with atomic_path(fits) as tmp:  # the longest name that passes is one that can be written
        tmp.write_bytes(b"flow")
    assert fits.read_bytes() == b"flow"


@pytest.mark.parametrize(
    ("template", "fragments"),
    [
        ("{index:q}", ["{index:q}", "{index} is a number", "{index:06d}"]),
        ("{stem:06d}_x", ["{stem:06d}", "{stem} is text", "{stem:.20}"]),
        ("{stem!x}", ["{stem!x}", "{stem} is text"]),
    ],
)
def test_a_name_template_with_a_bad_format_spec_names_the_placeholder_and_a_valid_spec(template, fragments):
    """`--name '{index:q}'` gave only Python's "Unknown format code 'q' for object of type 'int'"."""
    from flowcli.outputs import check_template

    with pytest.raises(OutputError) as excinfo:
        check_template(template)
    assert_one_line_error(excinfo, *fragments, f"--name {template!r}")
    assert check_template("{index:06d}") == "{index:06d}_{kind}.{ext}"


@pytest.mark.parametrize("template", ["x{", "x}", "{stem"])
def test_a_name_template_with_a_lone_brace_says_how_to_write_one(template):
    """`--name 'x{'` printed Python's "Single '{' encountered in format string" and nothing about what to write."""
    from flowcli.outputs import check_template

    with pytest.raises(OutputError) as raised:
        check_template(template)
    message = str(raised.value)
    assert f"invalid --name template {template!r}" in message and "doubled: {{ or }}" in message


def test_npy_on_a_full_disk_is_an_output_error(tmp_path):
    """numpy reports a short write (a full disk, here a file size limit) as "N requested and M written", an
    OSError without errno: `estimate -f npy` on a full disk ended in a traceback."""
    import resource

    from flowcli.io.flow_formats import write_npy

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        with pytest.raises(OutputError, match="^cannot write .*flow.npy: .*the disk may be full"):
            write_npy(tmp_path / "flow.npy", np.zeros((2, 64, 64), np.float32))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert list(tmp_path.iterdir()) == []
