"""The synthetic generator's ground truth is exact."""

import math
from dataclasses import replace

import pytest
import torch

from flowcli.inference import forward_backward_occlusion
from flowcli.ops.warp import backward_warp
from flowcli.synth import SynthConfig, generate_sample


def edge_band(index: torch.Tensor) -> torch.Tensor:
    """Pixels within 2 px of a layer boundary, where soft edges blend layers."""
    idx = index.float()[None, None]
    dil = torch.nn.functional.max_pool2d(idx, 5, 1, 2)
    ero = -torch.nn.functional.max_pool2d(-idx, 5, 1, 2)
    return (dil != ero)[0]


SCENES = {
    "layers": {},
    "stereo": {"stereo": True},
    "plane-and-bars": {"perspective_prob": 1.0, "thin_prob": 0.5},
    "zoom": {"zoom_prob": 1.0},
}


@pytest.mark.parametrize("scene", SCENES)
def test_gt_flow_warps_frame2_onto_frame1(scene):
    # What remains after warping is bilinear resampling of pixel-level texture noise, not GT error.
    stereo = scene == "stereo"
    cfg = SynthConfig(height=96, width=128, photometric=False, real_texture_prob=0, **SCENES[scene])
    errors, unwarped = [], []
    for seed in range(4):
        s = generate_sample(cfg, torch.Generator().manual_seed(seed))
        warped = backward_warp(s.image2[None], s.flow_forward[None])[0]
        keep = (s.occlusion_forward == 0) & ~edge_band(s.layer_index[0])
        errors.append((warped - s.image1).abs().mean(0, keepdim=True)[keep].mean())
        unwarped.append((s.image2 - s.image1).abs().mean(0, keepdim=True)[keep].mean())
        if stereo:
            assert s.flow_forward[1].abs().max() == 0 and (s.flow_forward[0] <= 0).all()
    assert torch.stack(errors).mean() < 0.02
    assert torch.stack(errors).mean() < 0.25 * torch.stack(unwarped).mean()


@pytest.mark.parametrize("scene", ["layers", "plane-and-bars"])
def test_occlusion_agrees_with_forward_backward_consistency(scene):
    cfg = SynthConfig(height=96, width=128, photometric=False, real_texture_prob=0, **SCENES[scene])
    agree = []
    for seed in range(4):
        s = generate_sample(cfg, torch.Generator().manual_seed(seed))
        fb = forward_backward_occlusion(s.flow_forward[None], s.flow_backward[None])[0]
        keep = ~edge_band(s.layer_index[0])
        agree.append((fb[keep] == s.occlusion_forward[keep]).float().mean())
    assert torch.stack(agree).mean() > 0.97


def test_triplets_have_constant_motion_and_same_seed_same_scene():
    cfg = SynthConfig(height=64, width=64, num_frames=3)
    a = generate_sample(cfg, torch.Generator().manual_seed(7))
    b = generate_sample(cfg, torch.Generator().manual_seed(7))
    assert len(a.images) == 3 and a.flow_forward_23 is not None
    torch.testing.assert_close(a.images[2], b.images[2])


def test_motion_blur_follows_each_pixels_motion():
    from flowcli.synth.generator import motion_blur

    # A vertical step edge, moving 8 px to the right, spreads over 8 px; a still one stays sharp.
    image = torch.zeros(3, 16, 32)
    image[..., 16:] = 1.0
    moving = torch.zeros(2, 16, 32)
    moving[0] = 8.0
    blurred = motion_blur(image, moving, exposure=1.0)[0, 8]
    ramp = (blurred > 0.01) & (blurred < 0.99)
    assert 6 <= int(ramp.sum()) <= 9 and abs(float(blurred[16]) - 0.5) < 0.1
    torch.testing.assert_close(motion_blur(image, torch.zeros(2, 16, 32), exposure=1.0), image)


def test_degradations_are_off_by_default_and_keep_older_recipes_exact():
    from flowcli.synth.generator import degrade

    cfg = SynthConfig(height=64, width=96, real_texture_prob=0, photometric=False)
    s = generate_sample(cfg, torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    assert all(torch.equal(a, b) for a, b in zip(degrade(s, cfg, gen), s.images))
    assert torch.equal(gen.get_state(), state)  # no random draws: older synthetic streams are unchanged
    blurry = replace(cfg, motion_blur_prob=1.0, defocus_prob=1.0, haze_prob=1.0)
    out = degrade(s, blurry, torch.Generator().manual_seed(0))
    # Blur and haze lower the image's high-frequency energy; the flow ground truth is untouched.
    def detail(img):
        return float((img[..., 1:] - img[..., :-1]).abs().mean())

    assert detail(out[0]) < 0.8 * detail(s.images[0]) and len(out) == len(s.images)


def test_low_light_dims_to_8_bit_levels_and_keeps_the_flow():
    cfg = SynthConfig(height=64, width=96, real_texture_prob=0, noise_std=0.0)
    dark = replace(cfg, dark_prob=1.0, min_exposure=0.125)
    for seed in range(4):
        bright = generate_sample(cfg, torch.Generator().manual_seed(seed))
        dim = generate_sample(dark, torch.Generator().manual_seed(seed))
        assert torch.equal(dim.flow_forward, bright.flow_forward)  # the scene and its flow are the same
        assert torch.equal(dim.occlusion_forward, bright.occlusion_forward)
        for a, b in zip(dim.images, bright.images):
            assert torch.equal(torch.round(a * 255), a * 255)  # quantised to 8 bits
            assert float(a.mean()) < 0.9 * float(b.mean()) and float(a.std()) < float(b.std())
    with pytest.raises(ValueError, match="min_exposure"):
        SynthConfig(min_exposure=0.0)


def test_synth_cli_writes_blurred_scenes_and_rejects_a_share_above_one(monkeypatch, capsys, tmp_path):
    import json

    from cli_harness import assert_one_line_error, in_process_cli

    run = in_process_cli(monkeypatch, capsys, "synth")
    code, _, err = run(tmp_path / "bad", "-n", "1", "--size", "64x64", "--motion-blur", "1.5")
    assert_one_line_error(code, err, 2, "--motion-blur", "between 0 and 1")
    code, _, err = run(tmp_path / "bad", "-n", "1", "--size", "64x64", "--thin", "2")
    assert_one_line_error(code, err, 2, "--thin", "between 0 and 1")
    code, _, err = run(tmp_path / "bad", "-n", "1", "--size", "64x64", "--dark", "0.5", "--min-exposure", "0")
    assert_one_line_error(code, err, 2, "--min-exposure", "(0, 1]")
    code, _, err = run(tmp_path / "ok", "-n", "2", "--size", "64x64", "--motion-blur", "1", "--perspective", "1", "-q")
    assert code == 0, err
    settings = json.loads((tmp_path / "ok" / "synth.json").read_text())
    assert settings["motion_blur"] == 1.0 and settings["perspective"] == 1.0
    assert len(list((tmp_path / "ok").glob("*_flow.flo"))) == 2


def test_plane_background_moves_projectively_within_the_requested_range():
    # A tilted plane's flow is not affine: its best affine fit leaves pixels off by pixels (planes facing
    # the camera, or moving little, stay close to affine).
    cfg = SynthConfig(height=96, width=128, min_layers=0, max_layers=0, perspective_prob=1.0, perspective_flow=40.0,
                      background_translation=0.0, rotation_deg=0.0, log_scale=0.0, shear=0.0, photometric=False)
    ys, xs = torch.meshgrid(torch.arange(96.0), torch.arange(128.0), indexing="ij")
    design = torch.stack((xs.flatten(), ys.flatten(), torch.ones(96 * 128)), dim=1)
    residuals = []
    for seed in range(6):
        flow = generate_sample(cfg, torch.Generator().manual_seed(seed)).flow_forward.reshape(2, -1).T
        assert flow.norm(dim=1).max() <= 40.0 + 1e-3
        fit = torch.linalg.lstsq(design, flow).solution
        residuals.append(float((design @ fit - flow).norm(dim=1).max()))
    assert sum(r > 1.0 for r in residuals) >= 2 and max(residuals) > 5.0, residuals  # an affine motion gives 0


def test_thin_bars_are_a_few_pixels_wide():
    from flowcli.synth.generator import Shape, pixel_grid

    coords = pixel_grid(1, 96, 128, "cpu", torch.float32)[0]
    for seed in range(5):
        bar = Shape("bar", (64.0, 48.0), 40.0, torch.Generator().manual_seed(seed), 96, 128, softness=0.5)
        inside = (bar.alpha(coords) > 0.5).float()[None, None]
        eroded = -torch.nn.functional.max_pool2d(-inside, 7, 1, 3)  # nothing survives a 7x7 erosion
        assert inside.sum() >= 40 and eroded.sum() == 0


def test_scene_structure_shares_must_be_between_0_and_1():
    with pytest.raises(ValueError, match="thin_prob"):
        SynthConfig(thin_prob=1.5)


@pytest.mark.parametrize(
    "setting",
    [
        dict(max_disparity=-5.0),
        dict(noise_std=-1.0),
        dict(real_texture_prob=2.0),
        dict(edge_softness=(0.0, 1.0)),
        dict(edge_softness=(-1.0, -0.5)),
    ],
)
def test_settings_that_would_render_wrong_scenes_are_refused(setting):
    """A negative max_disparity rendered stereo scenes whose right image moved the wrong way, a negative
    edge softness shapes turned inside out, without a word."""
    with pytest.raises(ValueError, match=next(iter(setting))):
        SynthConfig(**setting)


def test_synth_output_is_an_eval_dataset_with_its_occlusion(monkeypatch, capsys, tmp_path):
    """`flowcli synth` promises FlyingChairs naming readable by `flowcli eval --dataset chairs`: the PNG
    frames, the flow and the occlusion mask come back as written."""
    from cli_harness import in_process_cli

    from flowcli.data import make_dataset
    from flowcli.evaluation import evaluate
    from flowcli.io.flow_formats import read_flo

    code, _, err = in_process_cli(monkeypatch, capsys, "synth")(tmp_path, "-n", "2", "--size", "64x96", "-q")
    assert code == 0, err
    dataset = make_dataset("chairs", tmp_path)
    assert len(dataset) == 2
    item = dataset[1]
    assert item["image1"].shape == (3, 64, 96) and item["occlusion"].shape == (1, 64, 96)
    assert torch.equal(item["flow"], torch.from_numpy(read_flo(tmp_path / "00001_flow.flo")).permute(2, 0, 1))
    assert 0 < item["occlusion"].mean() < 1
    report = evaluate("flowcli-pwc-synth", "chairs", tmp_path, progress=False)
    assert len(report.per_item) == 2 and "occ_f1" in report.per_item[0]


@pytest.mark.parametrize("fps", ["0", "-3", "nan", "inf", "1e-9"])  # 1e-9: below what the writer stores (traceback)
def test_synth_clip_refuses_a_frame_rate_that_is_not_positive_and_finite(monkeypatch, capsys, tmp_path, fps):
    from cli_harness import assert_one_line_error, in_process_cli

    run = in_process_cli(monkeypatch, capsys, "synth")
    code, _, err = run(tmp_path / "c.mp4", "--clip", "--size", "32x32", "--fps", fps)
    assert_one_line_error(code, err, 3, "--fps", "positive")
    assert not (tmp_path / "c.mp4").exists()


def test_synth_output_of_the_wrong_kind_is_a_one_line_error(monkeypatch, capsys, tmp_path):
    from cli_harness import assert_one_line_error, in_process_cli

    run = in_process_cli(monkeypatch, capsys, "synth")
    (tmp_path / "afile").write_text("keep")
    code, _, err = run(tmp_path / "afile", "-n", "1", "--size", "32x32")
    assert_one_line_error(code, err, 3, "afile is a file, not a folder")
    assert (tmp_path / "afile").read_text() == "keep"
    code, _, err = run(tmp_path / "clip.mp4", "-n", "1", "--size", "32x32")  # --clip forgotten
    assert_one_line_error(code, err, 3, "clip.mp4 is named like a video", "--clip")
    assert not (tmp_path / "clip.mp4").exists()
    (tmp_path / "dir.mp4").mkdir()
    for extra in ([], ["--overwrite"]):
        code, _, err = run(tmp_path / "dir.mp4", "--clip", "--size", "32x32", *extra)
        assert_one_line_error(code, err, 3, "dir.mp4 is a folder")
    assert list((tmp_path / "dir.mp4").iterdir()) == []


def test_synth_clip_reports_the_size_it_wrote(monkeypatch, capsys, tmp_path):
    from cli_harness import in_process_cli

    from flowcli.io.media import VideoReader

    code, _, err = in_process_cli(monkeypatch, capsys, "synth")(tmp_path / "c.mp4", "--clip", "--size", "37x51")
    assert code == 0, err
    with VideoReader(tmp_path / "c.mp4") as reader:
        assert reader.size == (52, 38)  # (width, height), padded to even for H.264
    assert "52 wide x 38 high" in err and "padded" in err


def test_synth_refuses_an_existing_dataset_before_writing_any_scene(monkeypatch, capsys, tmp_path):
    """Without --overwrite, a scene file or synth.json already in OUTPUT used to be found only when its
    turn came: earlier scenes were replaced by the new seed's and synth.json was overwritten. Bad
    settings are input errors (2), as in `flowcli train`."""
    import json

    from cli_harness import assert_one_line_error, in_process_cli

    run = in_process_cli(monkeypatch, capsys, "synth")
    code, _, err = run(tmp_path / "bad", "-n", "1", "--size", "64x", "-q")
    assert_one_line_error(code, err, 2, "--size")
    assert run(tmp_path, "-n", "2", "--size", "32x32", "-q")[0] == 0
    (tmp_path / "00000_img1.png").unlink()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    code, _, err = run(tmp_path, "-n", "2", "--size", "32x32", "--seed", "5", "-q")
    assert_one_line_error(code, err, 3, "00000_img2.png already exists", "--overwrite")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    only_settings = tmp_path / "other"
    only_settings.mkdir()
    (only_settings / "synth.json").write_text("mine")
    code, _, err = run(only_settings, "-n", "1", "--size", "32x32", "-q")
    assert_one_line_error(code, err, 3, "synth.json already exists")
    assert [p.name for p in only_settings.iterdir()] == ["synth.json"]
    assert run(tmp_path, "-n", "2", "--size", "32x32", "--seed", "5", "-q", "--overwrite")[0] == 0
    assert json.loads((tmp_path / "synth.json").read_text())["seed"] == 5


def test_synth_overwrite_removes_the_earlier_runs_scenes_it_does_not_rewrite(monkeypatch, capsys, tmp_path):
    """`synth -n 3 --frames 3` then `synth -n 2 --overwrite` used to leave scene 00002 and every img3:
    synth.json said 2 scenes and `flowcli eval --dataset chairs` read 3, mixing two data sets. Files synth
    does not name, and synth-like names in a folder that is not a synth dataset (no synth.json), stay."""
    import json

    from cli_harness import in_process_cli

    from flowcli.data import make_dataset

    run = in_process_cli(monkeypatch, capsys, "synth")
    assert run(tmp_path, "-n", "3", "--frames", "3", "--size", "32x32", "-q")[0] == 0
    foreign = ["notes.txt", "00002_img1.ppm", "00002_flow.flo.bak", "0002_flow.flo", "000002_flow.flo"]
    for name in foreign:
        (tmp_path / name).write_text("mine")
    assert run(tmp_path, "-n", "2", "--size", "32x32", "--seed", "1", "-q", "--overwrite")[0] == 0
    kinds = ("img1.png", "img2.png", "flow.flo", "flow_bw.flo", "occ.png")
    scenes = [f"{i:05d}_{kind}" for i in range(2) for kind in kinds]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*scenes, *foreign, "synth.json"])
    assert json.loads((tmp_path / "synth.json").read_text())["count"] == 2
    with pytest.warns(UserWarning, match="2 of the 4 chairs ground-truth files are left out"):  # the foreign .flo
        assert len(make_dataset("chairs", tmp_path)) == 2
    chairs = tmp_path / "chairs"  # a FlyingChairs-like folder that synth did not make: nothing is removed
    chairs.mkdir()
    (chairs / "00005_flow.flo").write_text("theirs")
    assert run(chairs, "-n", "1", "--size", "32x32", "-q", "--overwrite")[0] == 0
    assert (chairs / "00005_flow.flo").read_text() == "theirs"


def test_synth_refuses_a_seed_too_large_for_the_scene_seeds(monkeypatch, capsys, tmp_path):
    """Scene i is rendered from seed * 1_000_003 + i: --seed 10^16 overflowed torch's 64-bit seed with a
    traceback, after the output folder was made."""
    from cli_harness import assert_one_line_error, in_process_cli

    run = in_process_cli(monkeypatch, capsys, "synth")
    for args in ([tmp_path / "data", "-n", "1"], [tmp_path / "c.mp4", "--clip"]):
        code, _, err = run(*args, "--size", "32x32", "--seed", str(10**16), "-q")
        assert_one_line_error(code, err, 2, "--seed", "10^12")
    assert list(tmp_path.iterdir()) == []
    assert run(tmp_path / "data", "-n", "1", "--size", "32x32", "--seed", str(-(10**12)), "-q")[0] == 0


def test_synth_refuses_perspective_with_stereo_instead_of_ignoring_it(monkeypatch, capsys, tmp_path):
    from cli_harness import assert_one_line_error, in_process_cli

    run = in_process_cli(monkeypatch, capsys, "synth")
    code, _, err = run(tmp_path / "data", "-n", "1", "--size", "32x32", "--stereo", "--perspective", "0.5")
    assert_one_line_error(code, err, 2, "--perspective", "--stereo")
    assert not (tmp_path / "data").exists()


def test_texture_bank_reads_every_video_container_media_knows(tmp_path):
    """A .ts (or .mts, .flv...) video used to be opened as one image and failed."""
    import numpy as np

    from flowcli.io.media import VideoWriter
    from flowcli.synth import TextureBank

    with VideoWriter(tmp_path / "clip.mp4", fps=10) as writer:
        for k in range(9):
            writer.write(np.full((32, 48, 3), 20 * k, dtype=np.uint8))
    (tmp_path / "clip.mp4").rename(tmp_path / "dashcam.ts")
    bank = TextureBank.from_paths([tmp_path / "dashcam.ts"], frame_stride=8)
    assert len(bank.images) == 2 and bank.images[0].shape == (3, 32, 48)  # frames 0 and 8


def _bad_texture(tmp_path, kind: str):
    """A texture path that gives no image: missing, an empty folder, a corrupt image, a folder of corrupt images,
    a corrupt video."""
    bad = tmp_path / "bad"
    if kind == "empty folder":
        bad.mkdir()
    elif kind == "corrupt image":
        bad = tmp_path / "bad.png"
        bad.write_bytes(b"not a png at all")
    elif kind == "folder of corrupt images":
        bad.mkdir()
        (bad / "a.png").write_bytes(b"not a png at all")
    elif kind == "corrupt video":
        bad = tmp_path / "bad.mp4"
        bad.write_bytes(b"not a video at all")
    return bad


@pytest.mark.parametrize(
    "kind", ["missing", "empty folder", "corrupt image", "folder of corrupt images", "corrupt video"]
)
def test_texture_paths_past_the_image_cap_are_checked_too(tmp_path, kind):
    """Reading stopped at max_images, so a bad path listed after a folder that filled the bank was ignored."""
    import numpy as np

    from flowcli.errors import InputError
    from flowcli.io.flow_formats import write_png
    from flowcli.synth import TextureBank

    (tmp_path / "big").mkdir()
    for k in range(3):
        write_png(tmp_path / "big" / f"{k}.png", np.full((8, 8, 3), 40 * k, dtype=np.uint8))
    bad = _bad_texture(tmp_path, kind)
    assert len(TextureBank.from_paths([tmp_path / "big"], max_images=2, frame_stride=1).images) == 2
    with pytest.raises(InputError, match=str(bad)):
        TextureBank.from_paths([tmp_path / "big", bad], max_images=2, frame_stride=1)


def test_synth_writes_the_same_files_for_the_same_command(monkeypatch, capsys, tmp_path):
    """synth.json held the rendering speed, so two runs of one command differed."""
    from cli_harness import in_process_cli

    run = in_process_cli(monkeypatch, capsys, "synth")
    for name in ("a", "b"):
        assert run(tmp_path / name, "-n", "2", "--size", "32x48", "--seed", "3", "--haze", "0.5", "-q")[0] == 0
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_synth_overwrite_after_an_interrupted_run_leaves_none_of_its_scenes(monkeypatch, capsys, tmp_path):
    """synth.json was written last: after Ctrl-C the folder was not known as synth's, and a smaller
    --overwrite run kept the interrupted run's later scenes, which `flowcli eval` then read too."""
    from cli_harness import in_process_cli

    from flowcli.data import make_dataset
    from flowcli.synth import generator

    render = generator.generate_sample
    calls = []

    def interrupted_after_three(*args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return render(*args, **kwargs)

    run = in_process_cli(monkeypatch, capsys, "synth")
    monkeypatch.setattr(generator, "generate_sample", interrupted_after_three)
    assert run(tmp_path, "-n", "10", "--size", "32x32", "-q")[0] == 130
    assert (tmp_path / "00002_flow.flo").is_file()
    monkeypatch.setattr(generator, "generate_sample", render)
    assert run(tmp_path, "-n", "1", "--size", "32x32", "--seed", "4", "-q", "--overwrite")[0] == 0
    assert len(make_dataset("chairs", tmp_path)) == 1
    scene = ["00000_flow.flo", "00000_flow_bw.flo", "00000_img1.png", "00000_img2.png", "00000_occ.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [*scene, "synth.json"]


def test_synth_triplets_come_with_the_flow_from_frame_2_to_3(monkeypatch, capsys, tmp_path):
    """--frames 3 wrote img3 without any ground truth for it; NNNNN_flow_23.flo is the 2->3 flow, which
    warps frame 3 onto frame 2 where the same layer is seen in both."""
    from cli_harness import in_process_cli

    from flowcli.io.flow_formats import read_flo

    code, _, err = in_process_cli(monkeypatch, capsys, "synth")(tmp_path, "-n", "2", "--frames", "3",
                                                                  "--size", "48x64", "--seed", "2", "-q")
    assert code == 0, err
    for i in range(2):
        written = torch.from_numpy(read_flo(tmp_path / f"{i:05d}_flow_23.flo")).permute(2, 0, 1)
        cfg = SynthConfig(height=48, width=64, num_frames=3)
        expected = generate_sample(cfg, torch.Generator().manual_seed(2 * 1_000_003 + i)).flow_forward_23
        assert torch.equal(written, expected)

    cfg = SynthConfig(height=96, width=128, num_frames=3, photometric=False, real_texture_prob=0)
    grid = torch.stack(torch.meshgrid(torch.arange(96.0), torch.arange(128.0), indexing="ij")[::-1])
    errors, unwarped = [], []
    for seed in range(3):
        s = generate_sample(cfg, torch.Generator().manual_seed(seed))
        target = (grid + s.flow_forward_23).round().long()
        inside = (target[0] >= 0) & (target[0] < 128) & (target[1] >= 0) & (target[1] < 96)
        layer3 = torch.full_like(s.layer_index[1], -1)
        layer3[inside] = s.layer_index[2][target[1][inside], target[0][inside]]
        keep = (layer3 == s.layer_index[1]) & ~edge_band(s.layer_index[1])[0]
        warped = backward_warp(s.images[2][None], s.flow_forward_23[None])[0]
        errors.append((warped - s.image2).abs().mean(0)[keep].mean())
        unwarped.append((s.images[2] - s.image2).abs().mean(0)[keep].mean())
    assert torch.stack(errors).mean() < 0.02
    assert torch.stack(errors).mean() < 0.25 * torch.stack(unwarped).mean()


def test_synth_at_a_size_too_large_for_memory_is_a_one_line_error_that_writes_nothing(monkeypatch, capsys, tmp_path):
    """--size 100000x100000 ended with torch's allocator traceback, after the dataset folder and its synth.json
    were made (which a rerun at a smaller size then refused without --overwrite)."""
    from cli_harness import assert_one_line_error, in_process_cli

    from flowcli.synth import generator

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(generator, "generate_sample", out_of_memory)
    run = in_process_cli(monkeypatch, capsys, "synth")
    for args, size in (
        ([tmp_path / "data", "-n", "2"], "100000x100000"),
        ([tmp_path / "c.mp4", "--clip"], "16000x16000"),
    ):
        code, _, err = run(*args, "--size", size, "-q")
        assert_one_line_error(code, err, 2, "memory", f"--size {size}", "smaller")
    assert list(tmp_path.iterdir()) == []


def test_synth_refuses_an_empty_output_instead_of_writing_into_the_current_folder(monkeypatch, capsys, tmp_path):
    """Typer turned "" into ".": `flowcli synth "" -n 1` wrote a data set into the current folder."""
    from cli_harness import assert_one_line_error, in_process_cli

    monkeypatch.chdir(tmp_path)
    run = in_process_cli(monkeypatch, capsys, "synth")
    for extra in ([], ["--clip"]):
        code, _, err = run("", "--size", "32x32", "-q", *extra)
        assert_one_line_error(code, err, 2, "OUTPUT", '""')
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["missing", "empty folder", "corrupt image"])
def test_synth_texture_errors_name_the_textures_option(monkeypatch, capsys, tmp_path, kind):
    from cli_harness import assert_one_line_error, in_process_cli

    textures = _bad_texture(tmp_path, kind)
    run = in_process_cli(monkeypatch, capsys, "synth")
    code, _, err = run(tmp_path / "data", "-n", "1", "--size", "32x32", "-q", "--textures", textures)
    assert_one_line_error(code, err, 2, "--textures", str(textures))


def test_synth_refuses_empty_textures_instead_of_the_current_folders_images(monkeypatch, capsys, tmp_path):
    """`--textures "$DIR"` with the variable unset textured the scenes with whatever the current folder held."""
    import imageio.v3 as iio
    import numpy as np
    from cli_harness import assert_one_line_error, in_process_cli

    monkeypatch.chdir(tmp_path)
    iio.imwrite(tmp_path / "holiday.png", np.zeros((32, 32, 3), np.uint8))
    run = in_process_cli(monkeypatch, capsys, "synth")
    code, _, err = run(tmp_path / "data", "-n", "1", "--size", "32x32", "-q", "--textures", "")
    assert_one_line_error(code, err, 2, '--textures "" is empty')
    assert not (tmp_path / "data").exists()


def test_synth_overwrite_removes_scenes_only_where_synth_json_is_one_synth_wrote(monkeypatch, capsys, tmp_path):
    """Any synth.json, a user's own too, made --overwrite delete the folder's FlyingChairs-named files."""
    import json

    from cli_harness import assert_one_line_error, in_process_cli

    run = in_process_cli(monkeypatch, capsys, "synth")
    for text in ('{"name": "my chairs", "count": 22872}', "notes", "[1, 2]", '{"count": 1, "size": [32, 32]}'):
        chairs = tmp_path / "chairs"
        chairs.mkdir(exist_ok=True)
        (chairs / "synth.json").write_text(text)
        (chairs / "00005_flow.flo").write_text("theirs")
        code, _, err = run(chairs, "-n", "1", "--size", "32x32", "-q", "--overwrite")
        assert_one_line_error(code, err, 3, "synth.json", "not the settings file of a flowcli synth run")
        assert sorted(p.name for p in chairs.iterdir()) == ["00005_flow.flo", "synth.json"]
        assert (chairs / "synth.json").read_text() == text
    # a synth.json of an older synth (fewer shares, the rendering speed) is synth's: its extra scenes go
    older = {"count": 6, "size": [32, 32], "seed": 0, "stereo": False, "frames": 2, "motion_blur": 0.0,
             "defocus": 0.0, "haze": 0.0, "textures": [], "scenes_per_second": 12.5}  # fmt: skip
    (chairs / "synth.json").write_text(json.dumps(older))
    assert run(chairs, "-n", "1", "--size", "32x32", "-q", "--overwrite")[0] == 0
    assert not (chairs / "00005_flow.flo").exists()
    assert json.loads((chairs / "synth.json").read_text())["count"] == 1


def test_synth_refuses_the_options_of_the_other_mode_only_when_given(monkeypatch, capsys, tmp_path):
    """--count with --clip and --fps without it were ignored without a word; the summary said "wrote 1 scenes"."""
    from cli_harness import assert_one_line_error, in_process_cli

    run = in_process_cli(monkeypatch, capsys, "synth")
    code, _, err = run(tmp_path / "c.mp4", "--clip", "-n", "5", "--size", "32x32")
    assert_one_line_error(code, err, 2, "--count", "--clip")
    code, _, err = run(tmp_path / "data", "-n", "1", "--fps", "24", "--size", "32x32")
    assert_one_line_error(code, err, 2, "--fps", "--clip")
    assert list(tmp_path.iterdir()) == []
    code, _, err = run(tmp_path / "data", "-n", "1", "--size", "32x32")
    assert code == 0, err
    assert "wrote 1 scene to" in err
    code, _, err = run(tmp_path / "c.mp4", "--clip", "--size", "32x32")
    assert code == 0, err
    assert "12 fps" in err


def test_synth_clip_of_an_extension_no_video_takes_is_refused_before_rendering_leaving_no_folder(
    monkeypatch, capsys, tmp_path
):
    """A clip named .avi was refused by the video writer only after its scene was rendered, and the folders made for
    it were left behind."""
    from cli_harness import assert_one_line_error, in_process_cli

    import flowcli.synth.generator as generator

    def no_rendering(*args, **kwargs):
        raise AssertionError("rendered before the output was checked")

    monkeypatch.setattr(generator, "generate_sample", no_rendering)
    run = in_process_cli(monkeypatch, capsys, "synth")
    code, _, err = run(tmp_path / "new" / "sub" / "c.avi", "--clip", "--size", "32x32")
    assert_one_line_error(code, err, 3, "c.avi", ".mp4")
    assert list(tmp_path.iterdir()) == []


def test_synth_rate_counts_the_rendering_of_the_first_scene(monkeypatch, capsys, tmp_path):
    """The first scene is rendered before the folder is made: the rate left its rendering out, so `-n 1` reported
    the speed of writing five small files."""
    import time

    from cli_harness import in_process_cli

    import flowcli.synth.generator as generator

    render = generator.generate_sample

    def slow_render(*args, **kwargs):
        time.sleep(0.25)
        return render(*args, **kwargs)

    monkeypatch.setattr(generator, "generate_sample", slow_render)
    code, _, err = in_process_cli(monkeypatch, capsys, "synth")(tmp_path / "data", "-n", "1", "--size", "32x32")
    assert code == 0, err
    rate = float(err.split("(")[-1].split(" scenes/s")[0])
    assert rate < 4.0, err


def test_synth_frames_help_says_what_it_means_for_a_clip(monkeypatch, capsys):
    from cli_harness import in_process_cli

    code, out, err = in_process_cli(monkeypatch, capsys, "synth")("--help")
    assert code == 0, err
    help_text = " ".join(out.replace("│", " ").split())
    assert "With --clip: the video's length, any number >= 2" in help_text


def test_synth_interrupted_overwrite_leaves_none_of_the_earlier_runs_scenes(monkeypatch, capsys, tmp_path):
    """--overwrite removed only the earlier run's scenes it would not rewrite: after a Ctrl-C its later scenes stayed
    under the new synth.json, and `flowcli eval` read the two data sets mixed."""
    import json

    from cli_harness import in_process_cli

    from flowcli.data import make_dataset
    from flowcli.synth import generator

    run = in_process_cli(monkeypatch, capsys, "synth")
    assert run(tmp_path, "-n", "3", "--size", "32x32", "-q")[0] == 0
    render = generator.generate_sample
    calls = []

    def interrupted_after_two(*args, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return render(*args, **kwargs)

    monkeypatch.setattr(generator, "generate_sample", interrupted_after_two)
    assert run(tmp_path, "-n", "3", "--size", "32x32", "--seed", "1", "-q", "--overwrite")[0] == 130
    assert json.loads((tmp_path / "synth.json").read_text())["seed"] == 1
    assert not list(tmp_path.glob("00002_*"))
    assert len(make_dataset("chairs", tmp_path)) == 2


def _no_rendering(monkeypatch):
    from flowcli.synth import generator

    def no_rendering(*args, **kwargs):
        raise AssertionError("rendered before the options were checked")

    monkeypatch.setattr(generator, "generate_sample", no_rendering)


def test_synth_refuses_min_exposure_without_dark_scenes_instead_of_ignoring_it(monkeypatch, capsys, tmp_path):
    """--min-exposure without --dark (or with --dark 0) darkened no scene, without a word."""
    import json

    from cli_harness import assert_one_line_error, in_process_cli

    run = in_process_cli(monkeypatch, capsys, "synth")
    with monkeypatch.context() as patch:
        _no_rendering(patch)
        for args in ([tmp_path / "data"], [tmp_path / "data", "--dark", "0"], [tmp_path / "c.mp4", "--clip"]):
            code, _, err = run(*args, "--size", "32x32", "--min-exposure", "0.125")
            assert_one_line_error(code, err, 2, "--min-exposure", "--dark P (P > 0)")
    assert list(tmp_path.iterdir()) == []
    assert run(tmp_path / "dark", "-n", "1", "--size", "32x32", "--dark", "1", "--min-exposure", "0.5", "-q")[0] == 0
    assert run(tmp_path / "plain", "-n", "1", "--size", "32x32", "-q")[0] == 0
    for name, expected in (("dark", 0.5), ("plain", 0.125)):
        assert json.loads((tmp_path / name / "synth.json").read_text())["min_exposure"] == expected
    code, out, _ = run("--help")
    assert code == 0 and "(default 0.125)" in " ".join(out.replace("│", " ").split())


def test_synth_refuses_a_count_whose_scenes_would_repeat_the_next_seeds(monkeypatch, capsys, tmp_path):
    """Scene i is rendered from seed * 1_000_003 + i: scene 1_000_003 of --seed 0 was scene 0 of --seed 1."""
    from cli_harness import assert_one_line_error, in_process_cli

    from flowcli.synth import generator

    _no_rendering(monkeypatch)
    run = in_process_cli(monkeypatch, capsys, "synth")
    for count in ("1000004", str(10**30)):
        code, _, err = run(tmp_path / "data", "-n", count, "--size", "32x32")
        assert_one_line_error(code, err, 2, f"--count {count}", "1000003", "--seed + 1")
    assert list(tmp_path.iterdir()) == []

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(generator, "generate_sample", interrupt)  # the largest count gets as far as rendering
    assert run(tmp_path / "data", "-n", "1000003", "--size", "32x32", "-q")[0] == 130


def test_synth_refuses_a_size_its_files_cannot_store_before_rendering(monkeypatch, capsys, tmp_path):
    """--size 99999999999999999999x32 ended in torch's OverflowError traceback, and a --clip wider than libx264's 16384
    was rendered, then failed in ffmpeg with "Nothing was written into output file"."""
    from cli_harness import assert_one_line_error, in_process_cli

    _no_rendering(monkeypatch)
    run = in_process_cli(monkeypatch, capsys, "synth")
    for size in ("99999999999999999999x32", "32x2147483648"):
        code, _, err = run(tmp_path / "data", "-n", "1", "--size", size)
        assert_one_line_error(code, err, 2, f"--size {size}", "2147483647", "smaller")
    code, _, err = run(tmp_path / "c.mp4", "--clip", "--size", "32x16385")
    assert_one_line_error(code, err, 3, "--size 32x16385", "H.264", "16384", "smaller")
    assert list(tmp_path.iterdir()) == []


def test_synth_overwrite_removes_only_the_scenes_the_earlier_run_wrote(monkeypatch, capsys, tmp_path):
    """A second --overwrite run into a folder of someone else's FlyingChairs-named files deleted them: the first run's
    synth.json made the folder synth's, and every file of synth's names went, not just that run's scenes."""
    import json

    from cli_harness import in_process_cli

    run = in_process_cli(monkeypatch, capsys, "synth")
    (tmp_path / "00005_flow.flo").write_text("theirs")
    (tmp_path / "00000_img3.png").write_text("theirs")
    for seed in ("1", "2"):
        assert run(tmp_path, "-n", "2", "--size", "32x32", "--seed", seed, "-q", "--overwrite")[0] == 0
        assert (tmp_path / "00005_flow.flo").read_text() == "theirs"
        assert (tmp_path / "00000_img3.png").read_text() == "theirs"
    assert run(tmp_path, "-n", "1", "--size", "32x32", "-q", "--overwrite")[0] == 0
    assert not (tmp_path / "00001_flow.flo").exists() and (tmp_path / "00005_flow.flo").exists()
    # synth versions that saved the rendering speed left the scenes of longer runs behind: those are removed still
    older = {"count": 1, "size": [32, 32], "seed": 0, "stereo": False, "frames": 2, "textures": [],
             "scenes_per_second": 12.5}  # fmt: skip
    (tmp_path / "synth.json").write_text(json.dumps(older))
    assert run(tmp_path, "-n", "1", "--size", "32x32", "-q", "--overwrite")[0] == 0
    assert not (tmp_path / "00005_flow.flo").exists()


def test_synth_refuses_a_clip_rate_its_video_cannot_store_before_rendering(monkeypatch, capsys, tmp_path):
    """--fps 2e6 was stored as 1,001,000 fps (4e9 failed in ffmpeg) only after the scene was rendered; an .mkv
    times frames in whole milliseconds, so it stores at most 1000 fps."""
    from cli_harness import assert_one_line_error, in_process_cli

    import flowcli.synth.generator as generator

    def no_rendering(*args, **kwargs):
        raise AssertionError("rendered before the rate was checked")

    monkeypatch.setattr(generator, "generate_sample", no_rendering)
    run = in_process_cli(monkeypatch, capsys, "synth")
    for name, fps, needle in (("c.mp4", "2e6", "stores at most 1,001,000 fps"), ("c.mkv", "5000", "at most 1,000 fps")):
        code, _, err = run(tmp_path / "new" / name, "--clip", "--size", "32x32", "--fps", fps)
        assert_one_line_error(code, err, 3, needle)
    assert list(tmp_path.iterdir()) == []


def test_illumination_change_relights_later_frames_only_and_keeps_older_streams_exact():
    """Frames that share their light taught features that stop matching when the light changes; the option
    relights frames 2 (and 3) by a smooth gain, keeps the scene and its flow, and draws nothing when off."""
    cfg = SynthConfig(height=64, width=96, real_texture_prob=0, noise_std=0.0, num_frames=3)
    relit = replace(cfg, illumination_prob=1.0, illumination_change=0.4)
    for seed in range(3):
        plain = generate_sample(cfg, torch.Generator().manual_seed(seed))
        changed = generate_sample(relit, torch.Generator().manual_seed(seed))
        assert torch.equal(changed.flow_forward, plain.flow_forward)
        assert torch.equal(changed.occlusion_forward, plain.occlusion_forward)
        assert torch.equal(changed.images[0], plain.images[0])  # the first frame keeps its light
        for later, before in zip(changed.images[1:], plain.images[1:]):
            lit = before > 0.05  # where the gain can be read (and nothing was clipped at 1)
            lit &= later < 0.99
            gain = (later[lit] / before[lit]).log()
            assert float(gain.abs().max()) <= 0.4 + 1e-3 and float(gain.std()) > 1e-3
    generator = torch.Generator().manual_seed(7)
    generate_sample(cfg, generator)
    off = torch.Generator().manual_seed(7)
    generate_sample(replace(cfg, illumination_prob=0.0, illumination_change=0.9), off)
    assert torch.equal(generator.get_state(), off.get_state())  # off: no draws, every recipe's stream unchanged
    with pytest.raises(ValueError, match="illumination_prob"):
        SynthConfig(illumination_prob=1.5)
    with pytest.raises(ValueError, match="illumination_change"):
        SynthConfig(illumination_change=-0.1)


def test_synth_relight_writes_the_same_scenes_with_frame_2_relit(monkeypatch, capsys, tmp_path):
    """`--relight P` is the generator's illumination_prob: the flow and frame 1 stay, frame 2 changes its light."""
    import json

    from cli_harness import assert_one_line_error, in_process_cli

    from flowcli.io.flow_formats import read_flo
    from flowcli.io.media import read_image

    run = in_process_cli(monkeypatch, capsys, "synth")
    code, _, err = run(tmp_path / "bad", "-n", "1", "--size", "64x64", "--relight", "1.5")
    assert_one_line_error(code, err, 2, "--relight", "between 0 and 1")
    for name, share in (("plain", "0"), ("relit", "1")):
        code, _, err = run(tmp_path / name, "-n", "1", "--size", "64x64", "--relight", share, "-q")
        assert code == 0, err
    assert json.loads((tmp_path / "relit" / "synth.json").read_text())["relight"] == 1.0
    plain, relit = tmp_path / "plain" / "00000", tmp_path / "relit" / "00000"
    assert (read_flo(f"{plain}_flow.flo") == read_flo(f"{relit}_flow.flo")).all()
    assert torch.equal(read_image(f"{plain}_img1.png"), read_image(f"{relit}_img1.png"))
    assert not torch.equal(read_image(f"{plain}_img2.png"), read_image(f"{relit}_img2.png"))


def test_zoom_scales_the_background_by_up_to_its_range_and_draws_nothing_when_off():
    """A model trained on backgrounds that scale by a few per cent fails where a ground scales by a quarter
    (market_5); `zoom_prob` scales the background about a focus by up to `zoom_range` per axis."""
    cfg = SynthConfig(height=64, width=96, min_layers=0, max_layers=0, real_texture_prob=0, noise_std=0.0,
                      background_translation=0.0, rotation_deg=0.0, log_scale=0.0, shear=0.0)
    zoomed = replace(cfg, zoom_prob=1.0, zoom_range=0.35)
    largest = 0.0
    for seed in range(12):
        flow = generate_sample(zoomed, torch.Generator().manual_seed(seed)).flow_forward.double()
        # an affine flow: its x-derivative of u and y-derivative of v are the two scales minus one
        scale_x = 1 + float((flow[0, :, 1:] - flow[0, :, :-1]).mean())
        scale_y = 1 + float((flow[1, 1:] - flow[1, :-1]).mean())
        for s in (scale_x, scale_y):
            assert abs(math.log(s)) <= 0.35 + 1e-4
        largest = max(largest, abs(math.log(scale_x)), abs(math.log(scale_y)))
    assert largest > 0.15  # far beyond the few per cent of the default background
    plain = generate_sample(cfg, torch.Generator().manual_seed(0)).flow_forward
    assert float(plain.abs().max()) < 1e-3  # with every other motion off, no zoom means no motion
    generator, off = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    generate_sample(cfg, generator)
    generate_sample(replace(cfg, zoom_range=0.9), off)
    assert torch.equal(generator.get_state(), off.get_state())  # off: no draws, every recipe's stream unchanged
    with pytest.raises(ValueError, match="zoom_prob"):
        SynthConfig(zoom_prob=-0.1)
    with pytest.raises(ValueError, match="zoom_range"):
        SynthConfig(zoom_range=1.5)


def test_synth_zoom_option_is_the_generators_zoom_and_is_recorded(monkeypatch, capsys, tmp_path):
    import json

    from cli_harness import assert_one_line_error, in_process_cli

    from flowcli.io.flow_formats import read_flo

    run = in_process_cli(monkeypatch, capsys, "synth")
    code, _, err = run(tmp_path / "bad", "-n", "1", "--size", "64x64", "--zoom", "2")
    assert_one_line_error(code, err, 2, "--zoom", "between 0 and 1")
    code, _, err = run(tmp_path / "bad", "-n", "1", "--size", "64x64", "--shadows", "-1")
    assert_one_line_error(code, err, 2, "--shadows", "between 0 and 1")
    code, _, err = run(tmp_path / "shaded", "-n", "1", "--size", "64x64", "--shadows", "1", "-q")
    assert code == 0 and json.loads((tmp_path / "shaded" / "synth.json").read_text())["shadows"] == 1.0, err
    for name, share in (("plain", "0"), ("zoomed", "1")):
        code, _, err = run(tmp_path / name, "-n", "1", "--size", "64x64", "--zoom", share, "-q")
        assert code == 0, err
    assert json.loads((tmp_path / "zoomed" / "synth.json").read_text())["zoom"] == 1.0
    plain, zoomed = read_flo(tmp_path / "plain" / "00000_flow.flo"), read_flo(tmp_path / "zoomed" / "00000_flow.flo")
    assert not (plain == zoomed).all()


def test_cast_shadows_darken_the_frames_move_on_their_own_and_leave_the_flow():
    """A shadow that moves unlike the ground it falls on (market_5) drags a model's coarse levels with it; the
    generator's shadows darken frames where they fall, move between the frames, keep the scene's flow and
    occlusion, and draw nothing when off."""
    cfg = SynthConfig(height=64, width=96, real_texture_prob=0, noise_std=0.0, photometric=False)
    shaded = replace(cfg, shadow_prob=1.0)
    for seed in range(3):
        plain = generate_sample(cfg, torch.Generator().manual_seed(seed))
        changed = generate_sample(shaded, torch.Generator().manual_seed(seed))
        assert torch.equal(changed.flow_forward, plain.flow_forward)
        assert torch.equal(changed.occlusion_forward, plain.occlusion_forward)
        lit = plain.images[0] > 0.05
        light = [(after / before)[lit] for after, before in zip(changed.images, plain.images)]
        for frame_light in light:
            assert float(frame_light.max()) <= 1 + 1e-5 and float(frame_light.min()) >= (1 - 0.75) ** 3 - 1e-5
        assert float(light[0].min()) < 0.9  # a shadow falls on frame 1
        # where frame 1 is in shadow, frame 2 seen through the true flow is not darkened alike: the shadow moved
        warped = backward_warp(changed.images[1][None], changed.flow_forward[None])[0]
        warped_plain = backward_warp(plain.images[1][None], plain.flow_forward[None])[0]
        keep = (plain.occlusion_forward[0] == 0) & lit.all(0) & (warped_plain > 0.05).all(0)
        moved = (warped / warped_plain)[:, keep] - (changed.images[0] / plain.images[0])[:, keep]
        assert float(moved.abs().max()) > 0.1
    generator, off = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    generate_sample(cfg, generator)
    generate_sample(replace(cfg, shadow_prob=0.0), off)
    assert torch.equal(generator.get_state(), off.get_state())
    with pytest.raises(ValueError, match="shadow_prob"):
        SynthConfig(shadow_prob=2.0)
