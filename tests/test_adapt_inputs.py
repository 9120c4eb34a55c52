"""`flowcli adapt` on bad input: clear one-line errors (exit codes 2 / 3) before any training, and
the footage reader's handling of unreadable frames, mixed sizes, stereo layouts and the held-out split."""

from __future__ import annotations

import re
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from flowcli.adapt.footage import scan_footage
from flowcli.errors import FlowcliError, InputError


def _png(path: Path, h: int = 64, w: int = 96, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    iio.imwrite(path, (rng.random((h, w, 3)) * 255).astype(np.uint8))
    return path


def _frames(folder: Path, count: int, h: int = 64, w: int = 96) -> Path:
    for i in range(count):
        _png(folder / f"frame_{i + 1}.png", h, w, seed=i)
    return folder


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    from flowcli.checkpoint import save_checkpoint
    from flowcli.models.pwc import FlowNet, FlowNetConfig

    config = FlowNetConfig(
        pyramid_channels=(8,) * 6, decoder_channels=(8, 8), context_channels=(8,), context_dilations=(1,)
    )
    path = tmp_path_factory.mktemp("base") / "tiny.safetensors"
    save_checkpoint(FlowNet(config), path)
    return path


def _cli(*args) -> tuple[int, str]:
    """(exit code, message) of `flowcli adapt ARGS`, as the real entry point would report them."""
    from flowcli.cli import adapt as adapt_cli

    app = typer.Typer()
    adapt_cli.register(app)

    @app.callback()
    def main() -> None:
        """flowcli (test app holding only `adapt`)"""

    result = CliRunner().invoke(app, ["adapt", *map(str, args)])
    if isinstance(result.exception, FlowcliError):
        message = str(result.exception)
        assert len(message.splitlines()) == 1, message
        return result.exception.exit_code, message
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


def test_too_few_frames(tmp_path, base):
    _frames(tmp_path / "one", 1)
    code, message = _cli(tmp_path / "one", "-o", tmp_path / "m.safetensors", "-w", base, "--steps", 2)
    assert code == 2 and "1 frame(s)" in message and "at least 2" in message
    _frames(tmp_path / "two", 2)
    code, message = _cli(tmp_path / "two", "--temporal", "-o", tmp_path / "m.safetensors", "-w", base, "--steps", 2)
    assert code == 2 and "--temporal needs 3" in message
    code, message = _cli(tmp_path / "missing", "-o", tmp_path / "m.safetensors", "-w", base)
    assert code == 2 and "does not exist" in message


def test_a_refused_run_leaves_no_output_folder_behind(tmp_path, base):
    _frames(tmp_path / "one", 1)
    output = tmp_path / "new" / "models" / "m.safetensors"
    code, message = _cli(tmp_path / "one", "-o", output, "-w", base, "--steps", 2)
    assert code == 2 and "at least 2" in message
    assert not (tmp_path / "new").exists()
    (tmp_path / "a_file").write_text("")
    code, message = _cli(tmp_path / "one", "-o", tmp_path / "a_file" / "m.safetensors", "-w", base)
    assert code == 3 and "a_file is a file" in message


def test_unreadable_frames_are_skipped_with_a_warning(tmp_path):
    folder = _frames(tmp_path / "shot", 4)
    (folder / "frame_3.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match="skipping 1 unreadable frame"):
        footage = scan_footage([folder])
    assert footage.tuples(2) == [(0, 0)]  # 1-2 only: 2-3 and 3-4 need the broken frame
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(3):
        (bad / f"f{i}.png").write_bytes(b"junk")
    with pytest.raises(InputError, match="3 unreadable"):
        scan_footage([bad])


def test_frames_that_decode_badly_later_are_replaced(tmp_path):
    from flowcli.adapt.footage import Footage

    folder = _frames(tmp_path / "shot", 3)
    data = (folder / "frame_2.png").read_bytes()
    (folder / "frame_2.png").write_bytes(data[: len(data) // 2])  # valid header, truncated pixels
    footage: Footage = scan_footage([folder])
    assert footage.tuples(2) == [(0, 0), (0, 1)]  # the header check passes...
    with pytest.raises(InputError, match="truncated|corrupt"):
        footage.load(0, 0, 2)  # ...decoding does not; the trainer warns and uses another pair


def test_mixed_sizes(tmp_path):
    _frames(tmp_path / "small", 3, 64, 96)
    _frames(tmp_path / "large", 3, 128, 160)
    footage = scan_footage([tmp_path / "small", tmp_path / "large"])  # each sequence keeps its own size
    assert len(footage.tuples(2)) == 4 and footage.min_size() == (64, 96)
    mixed = _frames(tmp_path / "mixed", 3, 64, 96)
    _png(mixed / "frame_3.png", 80, 96)
    footage = scan_footage([mixed])
    with pytest.raises(InputError, match=r"frame_2.png is 64x96 but frame_3.png is 80x96 \(height x width\)"):
        footage.tuples(2)


def test_sizes_in_messages_are_height_by_width_as_crop_takes_them(tmp_path, base):
    folder = _frames(tmp_path / "shot", 3, 128, 192)
    settings = ("--loss", "scales=3", "--loss", "min_scale_side=32")  # refused right after the crop is chosen
    crops = r"training crops are 128x192 \(height x width, as --crop takes them\): the smallest frames are 128x192"
    with pytest.warns(UserWarning, match=crops):
        code, message = _cli(folder, "-o", tmp_path / "m.safetensors", "-w", base, "--steps", 2, *settings)
    assert code == 2 and "at the 128x192 (height x width) training crop" in message, message
    with pytest.raises(InputError, match=r"frame_1.png is 48x96 \(height x width\); frames must be at least 64x64"):
        scan_footage([_frames(tmp_path / "small", 3, 48, 96)])


@pytest.mark.filterwarnings("ignore:the footage has only")
def test_budget_output_and_option_errors(tmp_path, base):
    folder = _frames(tmp_path / "shot", 3)
    out = tmp_path / "m.safetensors"
    assert _cli(folder, "-o", out, "-w", base, "--steps", 0)[0] == 2
    assert _cli(folder, "-o", out, "-w", base, "--minutes", 0)[0] == 2
    assert _cli(folder, "-o", out, "-w", base, "--steps", 5, "--minutes", 1)[0] == 2
    assert _cli(folder, "-o", tmp_path / "m.pt", "-w", base)[0] == 2
    assert _cli(folder, "-o", out, "-w", base, "--crop", "big")[0] == 2
    assert _cli(folder, "-o", out, "-w", base, "--loss", "nonsense=1")[0] == 2
    code, message = _cli(folder, "-o", out, "-w", base, "--loss", "occlusion=census")
    assert code == 2 and "fb, range, none" in message
    code, message = _cli(folder, "-o", out, "-w", base, "--anchor", -1)
    assert code == 2 and "--anchor" in message
    assert _cli(folder, "-o", out, "-w", base, "--gt", "sintel")[0] == 2
    no_photometric = ("--loss", "census=0", "--loss", "ssim=0", "--loss", "l1=0", "--loss", "smooth2=0")
    code, message = _cli(folder, "-o", out, "-w", base, "--steps", 8, *no_photometric)
    assert code == 2 and "photometric stage has no loss term" in message and "--stage1-fraction 0" in message
    code, message = _cli(folder, "-o", out, "-w", base, "--steps", 8, "--stage1-fraction", 0, "--loss", "distill=0",
                         *no_photometric)  # fmt: skip
    assert code == 2 and "distillation stage has no loss term" in message
    code, message = _cli(folder, "-o", out, "-w", base, "--distill-only", "--no-distill")
    assert code == 2 and "--distill-only needs the distillation stage" in message
    code, message = _cli(folder, "-o", out, "-w", base, "--distill-only", "--stage1-fraction", 0.5)
    assert code == 2 and "--stage1-fraction is 0.5" in message
    out.write_bytes(b"existing")
    code, message = _cli(folder, "-o", out, "-w", base, "--steps", 2)
    assert code == 3 and "--overwrite" in message
    assert out.read_bytes() == b"existing"
    assert _cli(folder, "-o", tmp_path / "n.safetensors", "-w", tmp_path / "nope.safetensors")[0] == 4


@pytest.mark.filterwarnings("ignore:the footage has only")
def test_distill_only_runs_no_photometric_step(tmp_path, base):
    from flowcli.checkpoint import read_metadata

    folder = _frames(tmp_path / "shot", 4)
    out = tmp_path / "d.safetensors"
    code, _ = _cli(folder, "-o", out, "-w", base, "--steps", 4, "--crop", "64x64", "--batch-size", 1, "--distill-only",
                   "-q")  # fmt: skip
    assert code == 0
    prov = read_metadata(out)["flowcli.provenance"]
    assert prov["stages"] == {"photometric": 0, "distillation": 4} and prov["teachers"][0] == "base model"
    assert prov["config"]["losses"] == {"census": 0.0, "ssim": 0.0, "l1": 0.0, "smooth1": 0.0, "smooth2": 0.0}


def test_stereo_layouts(tmp_path):
    oakd = tmp_path / "oakd"
    for name in ("desk", "toy"):
        _png(oakd / f"{name}_left.png")
        _png(oakd / f"{name}_right.png", seed=1)
    footage = scan_footage([oakd], stereo=True, min_frames=1)
    assert [tuple(p.name for p in pair) for pair in footage.sequences[0].frames] == [
        ("desk_left.png", "desk_right.png"), ("toy_left.png", "toy_right.png"),
    ]  # fmt: skip
    left, right = _frames(tmp_path / "L", 3), _frames(tmp_path / "R", 3)
    assert len(scan_footage([left, right], stereo=True, min_frames=1).tuples(2)) == 2
    nested = tmp_path / "rig"
    _frames(nested / "left", 2)
    _frames(nested / "right", 2)
    assert len(scan_footage([nested], stereo=True, min_frames=1).tuples(1)) == 2
    listing = tmp_path / "pairs.txt"
    listing.write_text("# left right\noakd/desk_left.png oakd/desk_right.png\n")
    assert len(scan_footage([listing], stereo=True, min_frames=1).tuples(1)) == 1
    _png(oakd / "odd_left.png", 64, 96)
    _png(oakd / "odd_right.png", 80, 96)
    with pytest.raises(InputError, match="must share a size"):
        scan_footage([oakd], stereo=True, min_frames=1)


def test_stereo_input_errors_name_the_side_at_fault(tmp_path, base):
    left = _frames(tmp_path / "st" / "left", 3)
    missing = tmp_path / "st" / "nothere"
    code, message = _cli("--stereo", left, missing, "-o", tmp_path / "x.safetensors", "-w", base, *_TINY)
    assert code == 2 and message.startswith(f"{missing} does not exist") and "right" in message, message
    with pytest.raises(InputError, match=f"^{re.escape(str(missing))} does not exist.* no left partners"):
        scan_footage([missing, left], stereo=True, min_frames=1)
    empty = tmp_path / "st" / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=f"^{re.escape(str(empty))} holds no images"):
        scan_footage([left, empty], stereo=True, min_frames=1)
    video = tmp_path / "st" / "right.mp4"
    video.write_bytes(b"")
    with pytest.raises(InputError, match=f"^{re.escape(str(video))} is not a folder"):
        scan_footage([left, video], stereo=True, min_frames=1)
    fewer = _frames(tmp_path / "st" / "fewer", 2)
    with pytest.raises(InputError, match=re.escape(f"{left} has 3 images but {fewer} has 2")):
        scan_footage([left, fewer], stereo=True, min_frames=1)
    taller = _frames(tmp_path / "st" / "taller", 3, 80, 96)
    sizes = f"{left / 'frame_1.png'} is 64x96 but {taller / 'frame_1.png'} is 80x96 (height x width)"
    with pytest.raises(InputError, match=re.escape(sizes)):
        scan_footage([left, taller], stereo=True, min_frames=1)


def test_heldout_split_never_shares_frames(tmp_path):
    footage = scan_footage([_frames(tmp_path / "a", 10), _frames(tmp_path / "b", 5)])
    tuples = footage.tuples(2)
    train, held = footage.split(tuples, 0.2, span=1)
    assert held and train and not set(train) & set(held)
    for seq in (0, 1):
        held_frames = {s + k for s_, s in held if s_ == seq for k in (0, 1)}
        train_frames = {s + k for s_, s in train if s_ == seq for k in (0, 1)}
        assert not held_frames & train_frames
    assert footage.split(tuples[:1], 0.2, span=1) == (tuples[:1], [])
    fingerprint = footage.fingerprint()
    assert len(fingerprint) == 64 and footage.fingerprint() == fingerprint
    (tmp_path / "a" / "frame_1.png").write_bytes((tmp_path / "a" / "frame_2.png").read_bytes())
    assert scan_footage([tmp_path / "a", tmp_path / "b"]).fingerprint() != fingerprint


def test_the_fingerprint_is_the_same_however_the_footage_is_spelt(tmp_path, monkeypatch):
    _frames(tmp_path / "clips" / "shot", 3)
    monkeypatch.chdir(tmp_path)
    spellings = ["clips/shot/*.png", "./clips/shot/*.png", f"{tmp_path}/clips/shot/*.png", "clips/shot", "clips/shot/"]
    assert len({scan_footage([s]).fingerprint() for s in spellings}) == 1
    monkeypatch.chdir(tmp_path / "clips")
    assert scan_footage(["."]).fingerprint() == scan_footage([tmp_path / "clips"]).fingerprint()


def test_videos_and_folders_mix_and_videos_are_cached(tmp_path):
    import torch

    from flowcli.io.media import VideoWriter

    video = tmp_path / "clip.mp4"
    with VideoWriter(video, fps=10) as writer:
        for i in range(4):
            writer.write(torch.full((3, 64, 96), 0.2 + 0.15 * i))
    folder = _frames(tmp_path / "shots" / "a", 3)
    cache = tmp_path / "cache"
    footage = scan_footage([video, tmp_path / "shots"], cache_dir=cache)
    assert [len(seq) for seq in footage.sequences] == [4, 3]
    assert footage.sequences[1].label == "shots/a" and footage.sequences[1].frames[0] == folder / "frame_1.png"
    assert len(footage.tuples(2, step=2)) == 2 + 1
    frames = footage.load(0, 1, 2, step=2)  # video frames 1 and 3, from the uint8 cache
    assert frames.shape == (2, 3, 64, 96) and float(frames[1].mean()) > float(frames[0].mean()) + 0.2
    assert len(list(cache.glob("clip-*.u8"))) == 1
    assert scan_footage([video], cache_dir=cache).sequences[0].video_cache == footage.sequences[0].video_cache


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if the footage is scanned: option errors must come before any decoding."""
    from flowcli.adapt import trainer

    def scan(*args, **kwargs):
        raise AssertionError("the footage was scanned before the options were checked")

    monkeypatch.setattr(trainer, "scan_footage", scan)


_TINY = ("--steps", 2, "--crop", "64x64", "--batch-size", 1)


def test_loss_and_transform_values_of_the_wrong_type_are_refused_up_front(tmp_path, base, no_decoding):
    from flowcli.adapt.losses import LossWeights
    from flowcli.cli.adapt import _parse_settings

    folder = _frames(tmp_path / "shot", 3)
    out = tmp_path / "m.safetensors"
    for option, setting, expected in (
        ("--loss", "census=abc", "census must be a number, e.g. --loss census=1.0"),
        ("--loss", "census_patch=7.5", "census_patch must be a whole number"),
        ("--loss", "scales=0,x", "scales must be whole numbers separated by commas"),
        ("--loss", "zero_vertical=maybe", "zero_vertical must be true or false"),
        ("--transform", "colour=abc", "colour must be a number, e.g. --transform colour=0.5"),
        ("--transform", "zoom=1", "zoom must be 2 numbers separated by commas, e.g. --transform zoom=0.8,1.25"),
    ):
        code, message = _cli(folder, "-o", out, "-w", base, *_TINY, option, setting)
        assert code == 2 and message.startswith(f"{option} '{setting}': ") and expected in message, message
    assert not out.exists() and not (tmp_path / "m.adapt").exists()
    settings = _parse_settings(["scales=2", "zero-vertical=yes", "census=0"], "--loss", LossWeights)
    assert settings == {"scales": (2,), "zero_vertical": True, "census": 0.0}
    with pytest.raises(ValueError, match="census must be a number"):
        LossWeights(census="abc")  # the Python API checks too, before a run starts


def test_max_frames_caps_each_sequence_and_must_be_positive(tmp_path, base, no_decoding):
    import torch

    from flowcli.cli import adapt as adapt_cli
    from flowcli.io.media import VideoWriter

    for scene in ("a", "b"):
        _frames(tmp_path / "scenes" / scene, 4)
    footage = scan_footage([tmp_path / "scenes"], max_frames=2)
    assert [len(seq) for seq in footage.sequences] == [2, 2]  # per sequence, as the help says
    app = typer.Typer()
    adapt_cli.register(app)
    params = {p.name: p for p in typer.main.get_command(app).params}
    assert "of each sequence" in params["max_frames"].help
    video = tmp_path / "clip.mp4"
    with VideoWriter(video, fps=10) as writer:
        for i in range(3):
            writer.write(torch.full((3, 64, 96), 0.2 + 0.2 * i))
    for source, value in ((tmp_path / "scenes", -1), (tmp_path / "scenes", 0), (video, -1)):
        code, message = _cli(source, "-o", tmp_path / "m.safetensors", "-w", base, *_TINY, "--max-frames", value)
        assert code == 2 and f"--max-frames must be at least 1, got {value}" in message, message


def test_too_small_crop_is_named_with_the_minimum(tmp_path, base, no_decoding):
    folder = _frames(tmp_path / "shot", 3)
    code, message = _cli(folder, "-o", tmp_path / "m.safetensors", "-w", base, "--steps", 2, "--crop", "10x10")
    assert code == 2 and "--crop 10x10 is too small" in message and "at least 64x64" in message, message
    assert "frames" not in message
    code, message = _cli(folder, "-o", tmp_path / "m.safetensors", "-w", base, "--steps", 2, "--crop", "64x63")
    assert code == 2 and "--crop 64x63 is too small" in message


def test_stage1_fraction_outside_zero_to_one_is_refused(tmp_path, base, no_decoding):
    folder = _frames(tmp_path / "shot", 3)
    out = tmp_path / "m.safetensors"
    for value in (2, -1, 1.5):
        code, message = _cli(folder, "-o", out, "-w", base, *_TINY, "--stage1-fraction", value)
        assert code == 2 and "--stage1-fraction must be in [0, 1]" in message and f"got {value:g}" in message
    code, message = _cli(folder, "-o", out, "-w", base, "--distill-only", "--stage1-fraction", 2)
    assert code == 2 and "--distill-only skips stage 1" in message


def test_options_without_effect_in_the_mode_are_refused(tmp_path, base, no_decoding):
    """--teacher & co. with --stereo (stage 1 only) or --no-distill, and stereo options without --stereo: an error
    naming them, like --distill-only --stereo, before any teacher is loaded or footage decoded."""
    folder = _frames(tmp_path / "shot", 3)
    out = tmp_path / "m.safetensors"
    missing = tmp_path / "missing_teacher.safetensors"  # loading it would be a weights error (exit 4)
    for args in (("--teacher", missing), ("--teacher-flip",), ("--teacher-scale", 2), ("--stage1-fraction", 0.5),
                 ("--loss", "distill=2"), ("--transform", "colour=0")):  # fmt: skip
        name = "--loss distill" if args[0] == "--loss" else args[0]
        code, message = _cli("--stereo", folder, folder, "-o", out, "-w", base, *_TINY, *args)
        assert code == 2 and f"{name} has no effect here" in message and "--stereo" in message, message
        code, message = _cli(folder, "-o", out, "-w", base, *_TINY, "--no-distill", *args)
        assert code == 2 and f"{name} has no effect here" in message and "--no-distill" in message, message
    code, message = _cli("--stereo", folder, folder, "-o", out, "-w", base, *_TINY, "--teacher", missing,
                         "--teacher-flip")  # fmt: skip
    assert code == 2 and "--teacher and --teacher-flip have no effect here" in message and "drop them" in message
    for args in (("--vertical", "zero"), ("--vertical", "penalty")):
        code, message = _cli(folder, "-o", out, "-w", base, *_TINY, *args)
        assert code == 2 and f"--vertical {args[1]} has no effect here" in message, message
    for key in ("vertical=0.5", "zero_vertical=true", "quadrilateral=1", "triangle=1"):
        code, message = _cli(folder, "-o", out, "-w", base, *_TINY, "--loss", key)
        assert code == 2 and f"--loss {key.split('=')[0]} has no effect here" in message, message
    code, message = _cli("--stereo", folder, folder, "-o", out, "-w", base, *_TINY, "--loss", "triangle=1")
    assert code == 2 and "--stereo --temporal" in message
    code, message = _cli(folder, "-o", out, "-w", base, *_TINY, "--loss", "temporal=1")
    assert code == 2 and "--loss temporal has no effect here" in message


@pytest.mark.filterwarnings("ignore:the footage has only")
def test_teachers_are_not_loaded_without_a_distillation_stage(tmp_path, base, monkeypatch):
    """A budget that is all photometric (--stage1-fraction 1) loads no --teacher, and says so."""
    import flowcli.models

    folder = _frames(tmp_path / "shot", 3)
    loaded = []
    real = flowcli.models.load_model
    monkeypatch.setattr(flowcli.models, "load_model", lambda spec, **kw: loaded.append(spec) or real(spec, **kw))
    with pytest.warns(UserWarning, match="--teacher not used: the 1-step budget leaves no distillation stage"):
        code, _ = _cli(folder, "-o", tmp_path / "m.safetensors", "-w", base, *_TINY[2:], "--steps", 1,
                       "--stage1-fraction", 1, "--teacher", base, "-q")  # fmt: skip
    assert code == 0 and loaded == []


def test_provenance_urls_lose_user_info_and_query_strings():
    """Base weights and teachers named by a signed or token-bearing URL are recorded without the secret parts."""
    from flowcli.adapt.trainer import AdaptConfig, _public, _public_config

    url = "https://user:hf_secret@mirror.example:8443/models/base.safetensors?token=hf_secret&X-Amz-Signature=s#x"
    assert _public(url) == "https://mirror.example:8443/models/base.safetensors"
    assert _public("http://tok@127.0.0.1:9000/t.safetensors?sig=1") == "http://127.0.0.1:9000/t.safetensors"
    for kept in ("hf://owner/repo/model.safetensors@0123abc", "default", "bundled:pwc.safetensors"):
        assert _public(kept) == kept
    config = _public_config(AdaptConfig(sources=["/home/me/clips/a.mp4"], output="/home/me/o.safetensors",
                                        weights=url, teachers=[url, "hf://o/r/t.safetensors"]))  # fmt: skip
    assert "hf_secret" not in str(config) and "Signature" not in str(config) and config["sources"] == ["a.mp4"]
    assert config["teachers"] == ["https://mirror.example:8443/models/base.safetensors", "hf://o/r/t.safetensors"]


def test_library_config_of_the_wrong_shape_is_an_input_error():
    """AdaptConfig from Python: a bare source path is one source; wrong types are refused with the field named."""
    from flowcli.adapt.trainer import AdaptConfig
    from flowcli.errors import InputError

    assert AdaptConfig(sources="clips/a.mp4", output="o.safetensors").sources == ["clips/a.mp4"]
    for settings, field_name in ((dict(crop="64x64"), "crop"), (dict(crop=(64,)), "crop"), (dict(steps=1.5), "steps")):
        with pytest.raises(InputError, match=f'"{field_name}"'):
            AdaptConfig(sources=["a.mp4"], output="o.safetensors", **settings)
    with pytest.raises(InputError, match="teacher scales"):
        AdaptConfig(sources=["a.mp4"], output="o.safetensors", teacher_scales=(0.0,))


def test_out_of_range_option_values_are_refused_up_front(tmp_path, base, no_decoding):
    """Values of the right type but outside their range: one line and exit code 2, never a traceback mid-run."""
    folder = _frames(tmp_path / "shot", 3)
    out = tmp_path / "m.safetensors"
    for args, expected in (
        (("--workers", -1), "--workers must be 0 or more"),
        (("--lr", -1), "--lr must be positive"),
        (("--lr", 0), "--lr must be positive"),
        (("--loss", "scales=1"), "this model has no pyramid level 1"),
        (("--loss", "scales=-1"), "scales must be 0 (full resolution) or pyramid levels above 0"),
        (("--loss", "census_patch=4"), "census_patch must be an odd number"),
        (("--loss", "distill=-1"), "distill must be 0 or more"),
        (("--loss", "max_occluded=2"), "max_occluded must be in [0, 1]"),
        (("--transform", "zoom=2,1"), "zoom must be two positive numbers"),
        (("--transform", "colour=2"), "colour is a probability"),
    ):
        code, message = _cli(folder, "-o", out, "-w", base, *_TINY, *args)
        assert code == 2 and expected in message, (args, message)
    assert not out.exists() and not (tmp_path / "m.adapt").exists()


@pytest.mark.filterwarnings("ignore:the footage has only")
def test_scales_that_leave_no_level_at_the_crop_are_refused(tmp_path, base):
    folder = _frames(tmp_path / "shot", 3)
    code, message = _cli(folder, "-o", tmp_path / "m.safetensors", "-w", base, *_TINY, "--loss", "scales=3")
    assert code == 2 and "at the 64x64 (height x width) training crop every level is under" in message, message


def test_heldout_frames_are_not_trained_on_when_sources_overlap(tmp_path):
    """A folder given twice, or a folder and its own subfolder: the same frames are in two sequences, and
    none of the held-out ones may be in a training tuple of the other copy."""
    shot = _frames(tmp_path / "footage" / "shot", 6)
    for sources in ([shot, shot], [tmp_path / "footage", shot]):
        footage = scan_footage(sources)
        train, held = footage.split(footage.tuples(2), 0.1, span=1)
        assert held and train

        def files(tuples):
            return {footage.sequences[s].frames[v + k].resolve() for s, v in tuples for k in (0, 1)}

        assert not files(train) & files(held), sources


def test_side_tokens_are_replaced_where_they_match(tmp_path):
    """`desk_lamp_l.png` pairs with `desk_lamp_r.png`: the `_l` of `_lamp` is not the side token."""
    for name in ("desk_lamp", "kitchen_light"):
        _png(tmp_path / "rig" / f"{name}_l.png")
        _png(tmp_path / "rig" / f"{name}_r.png", seed=1)
    footage = scan_footage([tmp_path / "rig"], stereo=True, min_frames=1)
    assert [tuple(p.name for p in pair) for pair in footage.sequences[0].frames] == [
        ("desk_lamp_l.png", "desk_lamp_r.png"), ("kitchen_light_l.png", "kitchen_light_r.png"),
    ]  # fmt: skip


def test_a_damaged_video_cache_record_is_decoded_again(tmp_path):
    import torch

    from flowcli.io.media import VideoWriter

    video = tmp_path / "clip.mp4"
    with VideoWriter(video, fps=10) as writer:
        for i in range(3):
            writer.write(torch.full((3, 64, 96), 0.2 + 0.2 * i))
    cache = tmp_path / "cache"
    first = scan_footage([video], cache_dir=cache).sequences[0]
    (meta,) = cache.glob("clip-*.json")
    meta.write_text('{"count": 3, "hei')  # a write cut short (disk full, killed)
    assert len(scan_footage([video], cache_dir=cache).sequences[0]) == 3
    first.video_cache.write_bytes(first.video_cache.read_bytes()[:100])  # truncated frames
    again = scan_footage([video], cache_dir=cache)
    assert len(again.sequences[0]) == 3 and first.video_cache.stat().st_size == 3 * 64 * 96 * 3


def test_bad_synthetic_replay_settings_are_refused_before_the_run(tmp_path, no_decoding):
    from flowcli.adapt import AdaptConfig, adapt

    out = tmp_path / "o.safetensors"
    for anchor_synth, expected in (({"height": 64}, "may not set height"), ({"nonsense": 1}, "nonsense")):
        cfg = AdaptConfig(sources=["a"], output=str(out), losses={"anchor": 1.0}, anchor_synth=anchor_synth)
        with pytest.raises(InputError, match=expected):
            adapt(cfg, quiet=True)


def test_a_file_where_the_run_folder_goes_is_an_output_error(tmp_path, base, no_decoding):
    folder = _frames(tmp_path / "shot", 3)
    (tmp_path / "m.adapt").write_text("not a folder")
    code, message = _cli(folder, "-o", tmp_path / "m.safetensors", "-w", base, *_TINY)
    assert code == 3 and "m.adapt is a file" in message, message
    assert (tmp_path / "m.adapt").read_text() == "not a folder"


def test_a_step_longer_than_every_sequence_is_named_in_the_error(tmp_path, base):
    folder = _frames(tmp_path / "shot", 5)
    code, message = _cli(folder, "-o", tmp_path / "m.safetensors", "-w", base, *_TINY, "--step", 5)
    assert code == 2 and "--step 5 needs sequences of at least 6 frames" in message and "has 5" in message, message
    assert not (tmp_path / "m.adapt").exists()


def test_without_output_the_checkpoint_is_named_after_the_first_source(tmp_path, base, monkeypatch):
    """`flowcli adapt my_footage/` (the brief's command) writes my_footage-adapted.safetensors here."""
    from flowcli.cli.adapt import default_output

    assert default_output(["shots/my_footage/"]) == Path("my_footage-adapted.safetensors")
    assert default_output(["clips/holiday.mp4", "b/"]) == Path("holiday-adapted.safetensors")  # a file: its stem
    assert default_output(["shots/*/*.png"]) == Path("shots-adapted.safetensors")
    footage = _frames(tmp_path / "my_footage", 3)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    code, message = _cli(footage, "-w", base, "--steps", 2, "-q")
    assert code == 0, message
    from flowcli.checkpoint import load_checkpoint, read_metadata

    output = tmp_path / "work" / "my_footage-adapted.safetensors"
    load_checkpoint(output)
    assert read_metadata(output)["flowcli.provenance"]["footage"]["sources"] == ["my_footage"]
    assert (tmp_path / "work" / "my_footage-adapted.report.json").is_file()


def test_a_gt_root_of_the_wrong_layout_is_refused_before_the_footage_is_decoded(tmp_path, base, no_decoding):
    folder = _frames(tmp_path / "shot", 3)
    out = tmp_path / "m.safetensors"
    code, message = _cli(folder, "-o", out, "-w", base, *_TINY, "--gt", f"kitti2015:{tmp_path / 'missing'}")
    assert code == 2 and message.startswith("--gt kitti2015:") and "KITTI 2015 layout" in message, message
    code, message = _cli(folder, "-o", out, "-w", base, *_TINY, "--gt", f"sintel:{folder}")
    assert code == 2 and "no sintel-clean items found" in message and "MPI-Sintel layout" in message, message
    assert not (tmp_path / "m.adapt").exists()


def test_a_folder_link_back_into_the_footage_is_not_searched_again(tmp_path):
    """`scene/a/up -> ..` would walk the footage over and over (a link loop, 40 levels deep until the OS gives
    up), `scene/b -> a` would give a's frames twice: each folder is searched once."""
    for name, link, target in (("looped", "a/up", ".."), ("aliased", "b", "a")):
        scene = tmp_path / name / "scene"
        _frames(scene / "a", 3)
        (scene / link).symlink_to(target, target_is_directory=True)
        footage = scan_footage([tmp_path / name])
        assert [(seq.label, len(seq)) for seq in footage.sequences] == [(f"{name}/scene/a", 3)]


def test_a_val_fraction_too_large_to_leave_training_pairs_holds_out_fewer(tmp_path):
    footage = scan_footage([_frames(tmp_path / "ten", 10)])
    tuples = footage.tuples(2)
    train, held = footage.split(tuples, 0.9, span=1)  # 8 of 9 held out would leave nothing to train on
    assert train == [(0, 0)] and held == [(0, v) for v in range(2, 9)]
    assert footage.split(tuples, 0.5, span=1) == (tuples[:4], tuples[5:])  # a share that fits is kept
    short = scan_footage([_frames(tmp_path / "three", 3)])
    assert short.split(short.tuples(2), 0.5, span=1) == (short.tuples(2),) * 2  # too short for any: measured on all


def test_a_max_frames_below_the_tuple_length_names_the_option(tmp_path, base):
    import torch

    from flowcli.io.media import VideoWriter

    video = tmp_path / "clip.mp4"
    with VideoWriter(video, fps=10) as writer:
        for i in range(4):
            writer.write(torch.full((3, 64, 96), 0.2 + 0.15 * i))
    with pytest.raises(InputError, match="--max-frames 2 keeps too few frames .* at least 3 with --temporal"):
        scan_footage([video], cache_dir=tmp_path / "cache", max_frames=2, min_frames=3)
    assert not (tmp_path / "cache").exists()  # refused before the video is decoded
    code, message = _cli(video, "-o", tmp_path / "m.safetensors", "-w", base, *_TINY, "--max-frames", 1)
    assert code == 2 and "--max-frames 1 keeps too few frames" in message and "--max-frames 2 or more" in message


def test_the_default_output_keeps_brackets_of_an_existing_source_name(tmp_path, monkeypatch):
    from flowcli.cli.adapt import default_output

    monkeypatch.chdir(tmp_path)
    (tmp_path / "take [2]").mkdir()
    (tmp_path / "clip [final].mp4").write_bytes(b"")
    assert default_output(["take [2]/"]) == Path("take [2]-adapted.safetensors")
    assert default_output(["take [2]/*.png"]) == Path("take [2]-adapted.safetensors")
    assert default_output(["clip [final].mp4"]) == Path("clip [final]-adapted.safetensors")
    assert default_output(["shots/scene_[0-9]/*.png"]) == Path("shots-adapted.safetensors")  # a pattern still


def test_anchor_nan_and_padded_text_values(tmp_path, base, no_decoding):
    from flowcli.adapt.losses import LossWeights
    from flowcli.cli.adapt import _parse_settings

    folder = _frames(tmp_path / "shot", 3)
    for value in ("nan", "inf"):
        code, message = _cli(folder, "-o", tmp_path / "m.safetensors", "-w", base, *_TINY, "--anchor", value)
        assert code == 2 and message.startswith(f"--anchor must be a number, 0 or more, got {value}"), message
    assert _parse_settings(["occlusion= range "], "--loss", LossWeights) == {"occlusion": "range"}


def test_an_empty_source_is_refused_not_read_as_the_current_folder(tmp_path, base, no_decoding, monkeypatch):
    """`flowcli adapt "$FOOTAGE"` with the variable unset adapted on every image and video under the current folder."""
    monkeypatch.chdir(_frames(tmp_path / "here", 3))
    for sources in ([""], ["shot", ""]):
        code, message = _cli(*sources, "-o", tmp_path / "m.safetensors", "-w", base, *_TINY)
        assert code == 2 and 'a source is "" (empty)' in message, message
    code, message = _cli("shot", "--teacher", "", "-o", tmp_path / "m.safetensors", "-w", base, *_TINY)
    assert code == 4 and message.startswith('--teacher "" is empty'), message  # was: "--teacher  is a folder"
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize("flag", ["--minutes", "--lr", "--val-fraction", "--stage1-fraction"])
def test_a_number_option_that_is_not_finite_is_named_by_its_flag(tmp_path, base, no_decoding, flag):
    """`--lr inf` said 'adapt setting "lr" must be a number, got Infinity' (`--minutes nan`: "a number or null"),
    naming the config field instead of the option."""
    folder = _frames(tmp_path / "shot", 3)
    budget = () if flag == "--minutes" else ("--steps", 2)
    for value in ("nan", "inf"):
        code, message = _cli(folder, "-o", tmp_path / "m.safetensors", "-w", base, *budget, flag, value)
        assert code == 2 and message == f"{flag} must be a finite number, got {value}", message


def _video(path: Path, count: int = 3) -> Path:
    import torch

    from flowcli.io.media import VideoWriter

    path.parent.mkdir(parents=True, exist_ok=True)
    with VideoWriter(path, fps=10) as writer:
        for i in range(count):
            writer.write(torch.full((3, 64, 96), 0.2 + 0.2 * i))
    return path


def test_an_undecodable_video_among_the_footage_is_skipped_like_an_unreadable_frame(tmp_path):
    """`bad.mp4` (garbage) or a copy cut short beside good frames: skipped with a warning naming it, not the run
    stopped; a source left with nothing usable, or the bad video given as a source itself, is still an error."""
    folder = _frames(tmp_path / "shots", 3)
    good = _video(folder / "good.mp4")
    (folder / "bad.mp4").write_bytes(b"not a video" * 100)
    (folder / "cut.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    cache = tmp_path / "cache"
    for source in (folder, f"{folder}/*"):
        with pytest.warns(UserWarning) as warned:
            footage = scan_footage([source], cache_dir=cache)
        assert [(seq.label, len(seq)) for seq in footage.sequences][1:] == [("good.mp4", 3)]
        assert sorted(Path(p).name for p in footage.skipped_videos) == ["bad.mp4", "cut.mp4"]
        messages = [str(w.message) for w in warned]
        for name in ("bad.mp4", "cut.mp4"):
            assert any(name in m and m.endswith("skipping it") and "\n" not in m for m in messages), messages
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    (only_bad / "bad.mp4").write_bytes(b"junk")
    with pytest.warns(UserWarning, match="bad.mp4"), pytest.raises(InputError, match="1 undecodable video"):
        scan_footage([only_bad], cache_dir=cache)
    with pytest.raises(InputError, match="cannot read video .*bad.mp4"):
        scan_footage([folder / "bad.mp4"], cache_dir=cache)  # given by name, like an unreadable image: an error


def test_a_glob_collects_videos_each_as_its_own_sequence(tmp_path, monkeypatch):
    """`'clips/*.mp4'` gave 'no images found'; a glob's images stay one sequence, across folders too."""
    monkeypatch.chdir(tmp_path)
    _video(tmp_path / "clips" / "b.mp4", 4)
    _video(tmp_path / "clips" / "a.mp4", 3)
    _frames(tmp_path / "clips", 2)
    cache = tmp_path / "cache"
    footage = scan_footage(["clips/*.mp4"], cache_dir=cache)
    assert [(seq.label, len(seq), seq.source) for seq in footage.sequences] == [
        ("a.mp4", 3, "clips/*.mp4"), ("b.mp4", 4, "clips/*.mp4"),
    ]  # fmt: skip
    footage = scan_footage(["clips/*"], cache_dir=cache)
    assert [(seq.label, len(seq)) for seq in footage.sequences] == [("clips/*", 2), ("a.mp4", 3), ("b.mp4", 4)]
    _frames(tmp_path / "shots" / "x", 2)
    _frames(tmp_path / "shots" / "y", 2)
    assert [len(seq) for seq in scan_footage(["shots/*/*.png"]).sequences] == [4]
    with pytest.raises(InputError, match="no images or videos found in clips/\\*.mov"):
        scan_footage(["clips/*.mov"], cache_dir=cache)


def test_a_teacher_that_cannot_load_is_refused_before_the_footage_is_scanned(tmp_path, base, no_decoding):
    from flowcli.cli.adapt import _check_teachers

    folder = _frames(tmp_path / "shot", 3)
    (tmp_path / "notes.pt").write_bytes(b"not a checkpoint")
    for spec, expected in (
        (tmp_path / "missing.safetensors", "no such checkpoint file or model name"),
        (tmp_path / "notes.pt", "is not a readable safetensors checkpoint"),
        (tmp_path, "is a folder, not a checkpoint file"),
        ("no-such-model", "flowcli-pwc-synth"),
        ("mediapipe-face", "is a face model, not a flow network"),
    ):
        code, message = _cli(folder, "-o", tmp_path / "m.safetensors", "-w", base, *_TINY, "--teacher", spec)
        assert code == 4 and message.startswith(f"--teacher {spec}") and expected in message, message
    assert not (tmp_path / "m.adapt").exists()
    _check_teachers([str(base), "flowcli-pwc-synth", "hf://owner/repo/t.safetensors"])  # fetched when loaded


def test_a_video_that_fails_mid_decoding_leaves_no_partial_cache(tmp_path, monkeypatch):
    import torch

    from flowcli.io import media

    class FailingReader:
        num_frames = 3

        def __init__(self, path, max_frames=None):
            self.path = path

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def __iter__(self):
            yield torch.zeros(3, 64, 96)
            raise InputError(f"cannot decode video {self.path}: decoding failed after 1 frame(s); the file is corrupt")

    folder = _frames(tmp_path / "shots", 3)
    (folder / "broken.mp4").write_bytes(b"")
    monkeypatch.setattr(media, "VideoReader", FailingReader)
    with pytest.warns(UserWarning, match="broken.mp4: decoding failed after 1 frame"):
        footage = scan_footage([folder], cache_dir=tmp_path / "cache")
    assert len(footage.sequences) == 1 and not list((tmp_path / "cache").iterdir())


def test_provenance_keeps_a_globs_pattern_from_the_folder_it_searches(tmp_path):
    """A glob source is recorded from the folder it searches on, not reduced to `*.png`, and without the folders
    above it; an existing folder whose name has brackets is a name, not a pattern."""
    from flowcli.adapt.trainer import _public

    assert _public("/home/me/shots/*.png") == "shots/*.png"
    assert _public("shots/*/*.png") == "shots/*/*.png"
    assert _public("../data/clips/*.mp4") == "clips/*.mp4"
    assert _public("*.png") == "*.png"
    take = tmp_path / "take [2]"
    take.mkdir()
    assert _public(str(take)) == "take [2]"


def test_a_quoted_glob_starting_with_a_tilde_searches_the_home_folder(tmp_path, monkeypatch):
    """`flowcli adapt '~/shots/*.png'` (quoted, so the shell leaves the ~) found nothing, though '~/shots' worked, and
    its default output was named after the current folder."""
    from flowcli.cli.adapt import default_output

    monkeypatch.setenv("HOME", str(tmp_path))
    _frames(tmp_path / "shots", 3)
    (tmp_path / "v1.2").mkdir()
    monkeypatch.chdir(tmp_path / "v1.2")
    assert [len(seq) for seq in scan_footage(["~/shots/*.png"]).sequences] == [3]
    assert default_output(["~/shots/*.png"]) == Path("shots-adapted.safetensors")
    assert default_output(["~/v1.2"]) == Path("v1.2-adapted.safetensors")  # a folder, not a file with a suffix


def test_a_glob_through_a_folder_named_with_brackets_says_how_to_escape_them(tmp_path):
    take = _frames(tmp_path / "take [2]", 3)
    with pytest.raises(InputError, match=re.escape("write a [ of a name as [[]")):
        scan_footage([f"{take}/*.png"])
    assert [len(seq) for seq in scan_footage([f"{tmp_path}/take [[]2]/*.png"]).sequences] == [3]


def test_a_stereo_pairs_list_that_is_not_text_or_has_spaces_in_paths(tmp_path):
    """A binary or non-UTF-8 list was a UnicodeDecodeError traceback; a path with a space could not be given."""
    _png(tmp_path / "my shots" / "a left.png")
    _png(tmp_path / "my shots" / "a right.png", seed=1)
    binary = tmp_path / "pairs.txt"
    binary.write_bytes(b"\x00\xff\xfe binary")
    with pytest.raises(InputError, match=f"^{re.escape(str(binary))} is binary, not text .*; give a text file"):
        scan_footage([binary], stereo=True, min_frames=1)
    quoted = tmp_path / "quoted.txt"
    quoted.write_bytes(b"\xef\xbb\xbf\"my shots/a left.png\" 'my shots/a right.png'\r\n")  # BOM and CRLF: Notepad
    (pair,) = scan_footage([quoted], stereo=True, min_frames=1).sequences[0].frames
    assert pair == (tmp_path / "my shots" / "a left.png", tmp_path / "my shots" / "a right.png")
    unquoted = tmp_path / "unquoted.txt"
    unquoted.write_text("my shots/a left.png my shots/a right.png\n")
    with pytest.raises(InputError, match=r"unquoted.txt:1: expected two image paths, found 6; quote paths"):
        scan_footage([unquoted], stereo=True, min_frames=1)


def test_a_stereo_pairs_list_reads_as_flowcli_stereo_pairs_reads_it(tmp_path, monkeypatch):
    """adapt split a .txt list its own way: a backslash-escaped space, a leading ~ and a UTF-16 list (PowerShell's >)
    that `flowcli stereo --pairs` reads were refused or misread, and a lone quote it refuses was read as a name."""
    from flowcli.io.pair_list import read_image_pairs

    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    _png(home / "rig" / "h_left.png")
    _png(home / "rig" / "h_right.png", seed=1)
    _png(tmp_path / "my shots" / "a left.png")
    _png(tmp_path / "my shots" / "a right.png", seed=1)
    text = "# left right\n\nmy\\ shots/a\\ left.png my\\ shots/a\\ right.png\n~/rig/h_left.png\t~/rig/h_right.png\n"
    listing = tmp_path / "pairs.txt"
    for data in (text.encode(), text.encode("utf-16")):
        listing.write_bytes(data)
        frames = scan_footage([listing], stereo=True, min_frames=1).sequences[0].frames
        assert frames == [(pair.first, pair.second) for pair in read_image_pairs(str(listing))]
        assert frames == [
            (tmp_path / "my shots" / "a left.png", tmp_path / "my shots" / "a right.png"),
            (home / "rig" / "h_left.png", home / "rig" / "h_right.png"),
        ]
    _png(tmp_path / "it's_left.png")
    _png(tmp_path / "its_right.png", seed=1)
    listing.write_text("# a lone quote\nit's_left.png its_right.png\n")
    with pytest.raises(InputError, match=f"^{re.escape(str(listing))}:2: no closing quotation; close the quote"):
        scan_footage([listing], stereo=True, min_frames=1)
    listing.write_text('"it\'s_left.png" its_right.png extra.png\n')
    with pytest.raises(InputError, match=f"^{re.escape(str(listing))}:1: expected two image paths, found 3"):
        scan_footage([listing], stereo=True, min_frames=1)


def test_a_listed_stereo_pair_of_two_sizes_is_named_by_its_line(tmp_path):
    """The error named the two files but not the line of the list, as every other error about a listed pair does."""
    _png(tmp_path / "a_left.png")
    _png(tmp_path / "a_right.png", seed=1)
    _png(tmp_path / "b_left.png")
    _png(tmp_path / "b_right.png", h=80, seed=1)
    listing = tmp_path / "pairs.txt"
    listing.write_text("# left right\na_left.png a_right.png\nb_left.png b_right.png\n")
    with pytest.raises(InputError) as error:
        scan_footage([listing], stereo=True, min_frames=1)
    assert str(error.value) == (
        f"{listing}:3: {tmp_path / 'b_left.png'} is 64x96 but {tmp_path / 'b_right.png'} is 80x96 (height x width); "
        "a rectified stereo pair must share a size"
    )


def test_an_unreadable_subfolder_is_skipped_and_an_unreadable_source_is_an_error(tmp_path, monkeypatch):
    """A drive's `lost+found` (no read permission) inside the footage was a PermissionError traceback."""
    drive = tmp_path / "drive"
    _frames(drive / "scene", 3)
    (drive / "lost+found").mkdir()
    iterdir = Path.iterdir

    def denied(self):
        if self.name in ("lost+found", "locked"):
            raise PermissionError(13, "Permission denied", str(self))
        return iterdir(self)

    monkeypatch.setattr(Path, "iterdir", denied)
    with pytest.warns(UserWarning, match=r"cannot read the folder .*lost\+found \(Permission denied\); skipping it"):
        footage = scan_footage([drive])
    assert [(seq.label, len(seq)) for seq in footage.sequences] == [("drive/scene", 3)]
    (tmp_path / "locked").mkdir()
    with pytest.raises(InputError, match="^cannot read the folder .*locked: Permission denied; check its permissions"):
        scan_footage([tmp_path / "locked"])


def test_a_skipped_frame_is_named_by_its_path_not_a_name_many_scenes_share(tmp_path):
    for scene in ("alley_1", "cave_2"):
        _frames(tmp_path / "clean" / scene, 3)
        (tmp_path / "clean" / scene / "frame_2.png").write_bytes(b"broken")
    with pytest.warns(UserWarning) as warned:
        scan_footage([tmp_path / "clean"])
    (message,) = [str(w.message) for w in warned if "unreadable frame" in str(w.message)]
    for scene in ("alley_1", "cave_2"):
        assert str(tmp_path / "clean" / scene / "frame_2.png") in message, message


def test_a_gt_dataset_named_twice_is_measured_once_or_refused_with_two_roots(tmp_path, base, no_decoding, monkeypatch):
    """`--gt kitti2015:A --gt kitti2015:B` reported B's metrics as kitti2015 and dropped A's without a word (the
    report keys them by dataset); `--gt sintel:R --gt sintel-clean:R` measured sintel-clean twice."""
    from flowcli.adapt import report

    checked = []
    monkeypatch.setattr(report, "make_dataset", lambda name, root: checked.append((name, root)))
    gt_sets = report.parse_gt(["sintel:data/sintel", "sintel-clean:data/sintel/", "chairs:c"])
    assert gt_sets == [("sintel-clean", "data/sintel"), ("sintel-final", "data/sintel"), ("chairs", "c")]
    assert checked == gt_sets
    folder = _frames(tmp_path / "shot", 3)
    code, message = _cli(folder, "-o", tmp_path / "m.safetensors", "-w", base, *_TINY, "--gt", "kitti2015:a",
                         "--gt", "kitti2015:b")  # fmt: skip
    assert code == 2 and message.startswith("--gt kitti2015:a and --gt kitti2015:b both name kitti2015"), message


def test_an_output_that_is_a_folder_is_asked_for_a_file_name(tmp_path, base, no_decoding):
    """`-o models/` said 'the output models must be a .safetensors file', as if the folder were a badly named file."""
    folder = _frames(tmp_path / "shot", 3)
    models = tmp_path / "models"
    models.mkdir()
    code, message = _cli(folder, "-o", models, "-w", base, *_TINY)
    assert code == 3 and message == (
        f"-o {models} is a folder; give the checkpoint's file name, e.g. -o {models / 'shot-adapted.safetensors'}"
    ), message
    assert list(models.iterdir()) == []


def test_option_messages_name_the_value_and_read_right(tmp_path, base, no_decoding):
    """`--val-fraction 1` did not show the value; `--loss zero_vertical` alone was told "they are terms of --stereo";
    `-o out/.safetensors` "must be a .safetensors file" (its name is empty); `--loss scales=0,0` weighted the full
    resolution twice without a word."""
    folder = _frames(tmp_path / "shot", 3)
    out = tmp_path / "m.safetensors"
    code, message = _cli(folder, "-o", out, "-w", base, *_TINY, "--val-fraction", 1)
    assert code == 2 and message == "--val-fraction must be in [0, 1) (a share of the pairs), got 1", message
    code, message = _cli(folder, "-o", out, "-w", base, *_TINY, "--loss", "zero_vertical=true")
    assert code == 2 and "--loss zero_vertical has no effect here: it is a --stereo setting," in message, message
    code, message = _cli(folder, "-o", out, "-w", base, *_TINY, "--loss", "vertical=1", "--loss", "triangle=1")
    assert code == 2 and "--loss vertical and --loss triangle have no effect here: they are --stereo" in message
    code, message = _cli("--stereo", folder, folder, "-o", out, "-w", base, *_TINY, "--loss", "triangle=1")
    assert code == 2 and "--loss triangle has no effect here: it is a constraint of a stereo video" in message
    code, message = _cli(folder, "-o", tmp_path / "out" / ".safetensors", "-w", base, *_TINY)
    assert code == 2 and "has an empty file name" in message and "model.safetensors" in message, message
    code, message = _cli(folder, "-o", out, "-w", base, *_TINY, "--loss", "scales=0,2,0")
    assert code == 2 and message == "--loss: scales=0,2,0 names level 0 more than once; give each level once"
    assert not out.exists() and not (tmp_path / "m.adapt").exists() and not (tmp_path / "out").exists()


def test_a_step_too_long_for_the_frames_max_frames_keeps_names_max_frames(tmp_path, base):
    """`--max-frames 2 --step 2` said only "lower --step", though the cap is what left the sequences too short."""
    folder = _frames(tmp_path / "shot", 5)
    code, message = _cli(folder, "-o", tmp_path / "m.safetensors", "-w", base, *_TINY, "--max-frames", 2, "--step", 2)
    assert code == 2 and "the longest has 2 (--max-frames 2); raise --max-frames to 3 or more" in message, message
    code, message = _cli(folder, "-o", tmp_path / "m.safetensors", "-w", base, *_TINY, "--max-frames", 9, "--step", 5)
    assert code == 2 and message.endswith("the longest has 5; lower --step"), message  # the cap was not the limit
