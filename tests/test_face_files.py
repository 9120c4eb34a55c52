"""Face model files, cache names and the correspondence table generator (no shared data needed: tiny files)."""

import os
import re
from pathlib import Path

import numpy as np
import pytest

from flowcli.errors import InputError, OutputError, WeightsError

QUAD = "v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\n"


def _arrays():
    mean = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], np.float32)
    return {"mean": mean, "id": np.ones((1, 4, 3)), "exp": np.ones((1, 4, 3)), "exp_names": np.array(["jawOpen"])}


def test_convert_names_a_missing_folder_or_a_file_as_such(tmp_path):
    """`flowcli face convert nonexist` said "nonexist has no generic_neutral_mesh.obj", as if the folder were there."""
    from flowcli.face.model import convert_ict

    with pytest.raises(InputError, match=r"^\S+nonexist does not exist; point at ICT-FaceKit's FaceXModel folder$"):
        convert_ict(tmp_path / "nonexist")
    (tmp_path / "model.zip").write_bytes(b"PK")
    with pytest.raises(InputError, match=r"model.zip is not a folder; point at"):
        convert_ict(tmp_path / "model.zip")


def test_topology_obj_without_uvs_is_a_face_model_error(tmp_path):
    """`face convert` and the model loader name the OBJ that lacks texture coordinates: exit 4, no crash."""
    import typer
    from typer.testing import CliRunner

    from flowcli.cli import face
    from flowcli.face.model import build_compact, convert_ict, load_face_model

    folder = tmp_path / "FaceXModel"
    folder.mkdir()
    names = ("generic_neutral_mesh.obj", "identity000.obj", "jawOpen.obj")
    for name in names:
        (folder / name).write_text(QUAD)
    with pytest.raises(InputError, match="generic_neutral_mesh.obj has 4 vertices, fewer than the 9409"):
        convert_ict(folder)  # not a ValueError from numpy
    face_region = QUAD + "v 0 0 1\n" * (9409 - 4)
    for name in names:
        (folder / name).write_text(face_region + "f 1 2 3 4\n")  # polygons without /vt indices, no vt lines
    app = typer.Typer()
    app.command("noop")(lambda: None)
    face.register(app)
    out = tmp_path / "m.npz"
    run = CliRunner().invoke(app, ["face", "convert", str(folder), "-o", str(out)])
    assert isinstance(run.exception, WeightsError) and run.exception.exit_code == 4, run.output
    message = str(run.exception)
    assert "generic_neutral_mesh.obj" in message and "texture coordinates" in message and "\n" not in message
    assert not out.exists() and os.listdir(tmp_path) == ["FaceXModel"]  # no temp file left
    np.savez(tmp_path / "bare.npz", **_arrays())
    with pytest.raises(WeightsError, match="generic_neutral_mesh.obj has no texture coordinates"):
        load_face_model(tmp_path / "bare.npz", topology_obj=folder / "generic_neutral_mesh.obj")
    half = tmp_path / "half.obj"  # UVs on one polygon only
    half.write_text(QUAD + "vt 0 0\nvt 1 0\nvt 1 1\nf 1/1 2/2 3/3\nf 1 3 4\n")
    with pytest.raises(WeightsError, match="half.obj has polygons without valid UVs"):
        build_compact(_arrays(), half, tmp_path / "half.npz")


def test_convert_of_a_bad_folder_leaves_no_output_folders(tmp_path):
    """`face convert` of a folder without the OBJs into -o new/deep/m.npz: exit 2 and no new folder."""
    import typer
    from typer.testing import CliRunner

    from flowcli.cli import face

    app = typer.Typer()
    app.command("noop")(lambda: None)
    face.register(app)
    (tmp_path / "empty").mkdir()
    run = CliRunner().invoke(app, ["face", "convert", str(tmp_path / "empty"), "-o", str(tmp_path / "new/deep/m.npz")])
    assert isinstance(run.exception, InputError) and run.exception.exit_code == 2, run.output
    assert os.listdir(tmp_path) == ["empty"]


@pytest.mark.parametrize(
    "content, message",
    [
        (QUAD.replace("v 1 1 0", "v 1 abc 0"), "not a usable OBJ file (could not convert string to float: 'abc')"),
        (QUAD.replace("v 1 1 0", "v 1 nan 0"), "not a usable OBJ file (vertices with NaN or infinite coordinates)"),
        (None, "cannot read"),  # a folder named like an OBJ
    ],
)
def test_a_corrupt_obj_is_one_line_and_exit_4(tmp_path, content, message):
    """An OBJ that cannot be read or whose numbers are not numbers: a WeightsError naming it, not a traceback."""
    from flowcli.face.model import read_obj_topology, read_obj_vertices

    obj = tmp_path / "identity000.obj"
    if content is None:
        obj.mkdir()
    else:
        obj.write_text(content + "vt 0 0\nf 1/1 2/x 3/1\n")
    with pytest.raises(WeightsError, match="identity000.obj"):
        read_obj_topology(obj)
    with pytest.raises(WeightsError, match=re.escape(message)) as raised:
        read_obj_vertices(obj)
    assert raised.value.exit_code == 4 and "\n" not in str(raised.value)


def test_an_obj_with_a_comment_that_is_not_utf8_is_read(tmp_path):
    from flowcli.face.model import read_obj_vertices

    obj = tmp_path / "identity000.obj"
    obj.write_bytes("# mod\xe8le\n".encode("latin-1") + QUAD.encode())
    assert read_obj_vertices(obj).shape == (4, 3)


def test_cached_model_name_carries_the_format_version(tmp_path, monkeypatch):
    """A new compact-file format must not read a cache written by an older one."""
    from flowcli.face import assets

    root = tmp_path / "assets"
    (root / "ict-facekit" / "FaceXModel").mkdir(parents=True)
    (root / "ict-facekit" / "FaceXModel" / "generic_neutral_mesh.obj").write_text(QUAD)
    (root / "ict-facekit" / "ict_face_region.npz").write_bytes(b"")
    (root / "mine").mkdir()
    (root / "mine" / "identity000.obj").write_text(QUAD)
    monkeypatch.setenv("FLOWCLI_CACHE", str(tmp_path / "cache"))
    built = []
    monkeypatch.setattr(assets, "load_face_model_arrays", lambda path: {})
    monkeypatch.setattr(assets, "convert_ict", lambda path: {})
    monkeypatch.setattr(assets, "_build_and_load", lambda arrays, topology, cached, source: built.append(cached))
    for version in (1, 2):
        monkeypatch.setattr(assets, "COMPACT_VERSION", version)
        assets.FaceAssets.locate(root).model()
        assets.load_user_model(root / "mine", None)
    assert [p.name.split("-")[:2] for p in built] == [
        ["ict_face_compact", "v1"],
        ["user_compact", "v1"],
        ["ict_face_compact", "v2"],
        ["user_compact", "v2"],
    ]
    assert len(set(built)) == 4


def test_the_face_cache_is_the_face_folder_of_the_weights_cache(tmp_path, monkeypatch):
    """The face cache ignored $XDG_CACHE_HOME (and did not expand ~ in $FLOWCLI_CACHE), which the weights cache
    honours: the compact model landed in ~/.cache/flowcli/face, apart from the downloads."""
    from flowcli.face import assets

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FLOWCLI_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert assets.cache_dir() == tmp_path / "xdg" / "flowcli" / "face"
    monkeypatch.setenv("FLOWCLI_CACHE", "~/flowcli-cache")
    assert assets.cache_dir() == tmp_path / "home" / "flowcli-cache" / "face"
    monkeypatch.delenv("FLOWCLI_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert assets.cache_dir() == tmp_path / "home" / ".cache" / "flowcli" / "face"


def test_the_asset_model_cache_follows_every_obj_it_is_built_from(tmp_path, monkeypatch):
    """The cache of an asset folder's FaceXModel OBJs was named after the identity OBJs only: a removed or
    changed expression OBJ kept the old blendshapes."""
    from flowcli.face import assets

    folder = tmp_path / "assets" / "ict-facekit" / "FaceXModel"
    folder.mkdir(parents=True)
    for name in ("generic_neutral_mesh.obj", "identity000.obj", "jawOpen.obj", "eyeBlink_L.obj"):
        (folder / name).write_text(QUAD)
    monkeypatch.setenv("FLOWCLI_CACHE", str(tmp_path / "cache"))
    built = []
    monkeypatch.setattr(assets, "convert_ict", lambda path: {})
    monkeypatch.setattr(assets, "_build_and_load", lambda arrays, topology, cached, source: built.append(cached))
    model = assets.FaceAssets.locate(tmp_path / "assets")
    model.model()
    (folder / "eyeBlink_L.obj").unlink()
    model.model()
    (folder / "jawOpen.obj").write_text(QUAD + "v 0 0 1\n")
    model.model()
    assert len(set(built)) == 3


def _asset_folder(tmp_path, region: bytes | None = None, jaw_vertices: int | None = 9409) -> Path:
    """An asset folder with FaceXModel OBJs of the face region's size (jawOpen.obj of jaw_vertices, or none) and,
    if given, these bytes as ict_face_region.npz."""
    root = tmp_path / "assets"
    folder = root / "ict-facekit" / "FaceXModel"
    folder.mkdir(parents=True)
    region_obj = QUAD + "v 0 0 1\n" * (9409 - 4) + "vt 0 0\nf 1/1 2/1 3/1 4/1\n"
    (folder / "generic_neutral_mesh.obj").write_text(region_obj)
    (folder / "identity000.obj").write_text(region_obj)
    if jaw_vertices is not None:
        (folder / "jawOpen.obj").write_text(QUAD + "v 0 0 1\n" * (jaw_vertices - 4))
    if region is not None:
        (root / "ict-facekit" / "ict_face_region.npz").write_bytes(region)
    return root


def _npz_bytes(**arrays) -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "region, jaw_vertices, message",
    [
        (b"not a zip", 9409, "ict_face_region.npz is not a face model .npz"),  # was a traceback (ValueError)
        (_npz_bytes(mean=np.zeros((4, 3))), 9409, "ict_face_region.npz lacks id, exp, exp_names"),  # was a KeyError
        (None, 100, "jawOpen.obj has 100 vertices where generic_neutral_mesh.obj has 9409"),  # was exit 2
        (None, None, "has no expression blendshapes"),  # was exit 2
    ],
    ids=["not-a-zip", "arrays-missing", "short-expression-obj", "no-expression-obj"],
)
def test_a_broken_model_in_the_asset_folder_is_a_weights_error(tmp_path, monkeypatch, region, jaw_vertices, message):
    """A face model in --face-assets that cannot be used stops `fit` with exit 4, as with --face-model, naming
    the file; no cache file is written for it."""
    from flowcli.face.assets import FaceAssets

    monkeypatch.setenv("FLOWCLI_CACHE", str(tmp_path / "cache"))
    root = _asset_folder(tmp_path, region, jaw_vertices)
    with pytest.raises(WeightsError, match=re.escape(message)) as raised:
        FaceAssets.locate(root).model()
    assert raised.value.exit_code == 4 and "\n" not in str(raised.value)
    assert not list((tmp_path / "cache").rglob("*.npz"))


def test_convert_of_an_obj_with_the_wrong_vertex_count_is_exit_4(tmp_path):
    """A truncated expression OBJ is an OBJ that cannot be used (exit 4, as `face convert -h` says), named in
    full, with what to do."""
    import typer
    from typer.testing import CliRunner

    from flowcli.cli import face

    app = typer.Typer()
    app.command("noop")(lambda: None)
    face.register(app)
    folder = _asset_folder(tmp_path, jaw_vertices=100) / "ict-facekit" / "FaceXModel"
    run = CliRunner().invoke(app, ["face", "convert", str(folder), "-o", str(tmp_path / "m.npz")])
    assert isinstance(run.exception, WeightsError) and run.exception.exit_code == 4, run.output
    assert str(folder / "jawOpen.obj") in str(run.exception) and "ICT-FaceKit's OBJ files" in str(run.exception)
    assert not (tmp_path / "m.npz").exists()


def test_convert_to_an_upper_case_npz_name_writes_the_model_there(tmp_path):
    """`face convert -o ict.NPZ` (the suffix check ignores case) published an empty ict.NPZ and left the model
    in a hidden temp file: np.savez, given a name, appends .npz to any other suffix."""
    import typer
    from typer.testing import CliRunner

    from flowcli.cli import face
    from flowcli.face.model import load_face_model

    app = typer.Typer()
    app.command("noop")(lambda: None)
    face.register(app)
    folder = _asset_folder(tmp_path) / "ict-facekit" / "FaceXModel"
    out = tmp_path / "out" / "ict.NPZ"
    run = CliRunner().invoke(app, ["face", "convert", str(folder), "-o", str(out)])
    assert run.exit_code == 0, run.output
    assert os.listdir(out.parent) == ["ict.NPZ"]  # no temp file beside it
    model = load_face_model(out)
    assert model.num_vertices == 9409 and model.exp_names == ["jawOpen"]


def test_convert_expands_a_tilde_in_its_output(tmp_path, monkeypatch):
    """`face convert DIR --output=~/ict.npz` (the shell leaves that ~ alone) wrote ./~/ict.npz."""
    import typer
    from typer.testing import CliRunner

    from flowcli.cli import face

    app = typer.Typer()
    app.command("noop")(lambda: None)
    face.register(app)
    folder = _asset_folder(tmp_path) / "ict-facekit" / "FaceXModel"
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir(), cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    run = CliRunner().invoke(app, ["face", "convert", str(folder), "--output=~/models/ict.npz"])
    assert run.exit_code == 0, run.output
    assert (home / "models" / "ict.npz").is_file() and os.listdir(cwd) == []


def test_correspondence_generator_checks_arguments(tmp_path, capsys):
    from flowcli.face import correspondence

    table = Path(correspondence.__file__).with_name("mp468_ict.py")
    before = table.stat().st_mtime_ns
    for argv, needle in (
        ([], "required"),
        ([str(tmp_path / "missing.mp4"), str(tmp_path)], "missing.mp4 not found"),
        ([__file__, str(tmp_path / "nowhere")], "nowhere not found"),
        ([__file__, str(tmp_path), "--output", str(tmp_path / "table.txt")], "must be a .py file"),
    ):
        with pytest.raises(SystemExit) as stop:
            correspondence.main(argv)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and needle in err and "Traceback" not in err
    assert table.stat().st_mtime_ns == before  # the shipped table is untouched


def test_correspondence_table_is_written_atomically(tmp_path, monkeypatch):
    from flowcli.face.correspondence import write_table

    vids, bary = np.array([[1, 2, 3], [4, 5, 6]]), np.array([[0.5, 0.25, 0.25], [1.0, 0.0, 0.0]])
    out = tmp_path / "table.py"
    write_table(out, vids, bary)
    space = {}
    exec(out.read_text(), space)
    assert space["VERTS"] == [(1, 2, 3), (4, 5, 6)] and space["BARY"][0] == (0.5, 0.25, 0.25)
    before = out.read_text()

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device", str(dst))

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OutputError):
        write_table(out, vids[:1], bary[:1])
    assert out.read_text() == before and os.listdir(tmp_path) == ["table.py"]


def test_a_bare_model_without_topology_says_where_the_topology_comes_from(tmp_path):
    """`--face-model bare.npz` (no triangles) with no asset folder: the message names both ways to fix it."""
    from flowcli.face.assets import FaceAssets

    np.savez(tmp_path / "bare.npz", **_arrays())
    with pytest.raises(WeightsError) as caught:
        FaceAssets(None).model(tmp_path / "bare.npz")
    message = str(caught.value)
    assert "--face-assets" in message and "generic_neutral_mesh.obj" in message and "uv_triangles" in message


def _ffmpeg_duration(path) -> float:
    """The duration ffmpeg states for a media file (ffprobe is not shipped with imageio-ffmpeg)."""
    import re
    import subprocess

    import imageio_ffmpeg

    header = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)],
                            capture_output=True, text=True).stderr  # fmt: skip
    hours, minutes, seconds = re.search(r"Duration: (\d+):(\d+):([\d.]+)", header).groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


@pytest.mark.parametrize("container", [".mkv", ".webm", ".ts"])
def test_a_face_overlay_of_a_variable_frame_rate_video_lasts_as_long_as_the_source(tmp_path, container):
    """The face reader took the rate these containers state (30 fps) for a phone clip that plays 5 frames at
    4 fps, then 15 at 30 fps: the overlay played 1.75 s in 0.67 s. It could not open .ts files at all."""
    import subprocess

    import imageio_ffmpeg

    from flowcli.face.media import VideoReader
    from flowcli.face.writers import Mp4Writer

    source = tmp_path / f"phone{container}"
    codec = ["-c:v", "libvpx-vp9"] if container == ".webm" else ["-c:v", "libx264", "-pix_fmt", "yuv420p"]
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "testsrc=size=96x64:rate=30",
               "-frames:v", "20", "-vf", "setpts='if(lt(N,5),N*0.25,1.25+(N-5)/30)/TB'", "-fps_mode", "passthrough",
               *codec, str(source)]  # fmt: skip
    if subprocess.run(command, capture_output=True, check=False).returncode != 0:
        pytest.skip(f"this ffmpeg cannot encode a {container} test video")
    reader = VideoReader(source)
    frames = list(reader)
    assert len(frames) == 20 and reader.decode_error is None
    assert all(frame.shape == (64, 96, 3) and frame.dtype == np.uint8 for frame in frames)
    overlay = tmp_path / "overlay.mp4"
    writer = Mp4Writer(overlay, reader.fps)
    for frame in frames:
        writer.append(frame)
    writer.close()
    assert _ffmpeg_duration(overlay) == pytest.approx(_ffmpeg_duration(source), abs=1 / reader.fps + 0.01)


def test_wide_integer_pictures_are_scaled_not_clipped_to_white(tmp_path):
    """Pillow's int32 mode I (a 16-bit gray TIFF, and PNG in some Pillow versions) was clipped to 255 by as_rgb8:
    a white picture, in which no face is found."""
    from PIL import Image

    from flowcli.face.media import as_rgb8, read_image

    sixteen = np.tile(np.arange(0, 65536, 1024, dtype=np.int32), (64, 1))
    expected = np.round(sixteen / 257).astype(np.uint8)
    assert np.array_equal(as_rgb8(sixteen)[:, :, 0], expected)
    assert np.array_equal(as_rgb8(expected.astype(np.int64))[:, :, 0], expected)  # 8-bit values stay
    Image.fromarray(sixteen).save(tmp_path / "gray.tif")
    assert np.abs(read_image(tmp_path / "gray.tif")[:, :, 1].astype(int) - expected).max() <= 1
    with pytest.raises(InputError, match="negative pixel values"):
        as_rgb8(sixteen - 1)


def test_face_assets_that_is_empty_or_a_file_and_an_input_that_is_not_a_file(tmp_path, monkeypatch):
    """--face-assets "" (and --face-model "") was the current folder (then a missing-model error, exit 4),
    --face-assets photo.png was "folder not found", and /dev/null as an input was "not found": each is now one line
    saying what is wrong."""
    import typer
    from typer.testing import CliRunner

    from flowcli.cli import face
    from flowcli.face.media import read_image

    monkeypatch.delenv("FLOWCLI_FACE_ASSETS", raising=False)
    app = typer.Typer()
    app.command("noop")(lambda: None)
    face.register(app)
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"")  # only checked to exist: the assets are looked for first
    for assets, message in (("", "the face asset folder is an empty path"), (str(photo), "is a file, not a folder")):
        run = CliRunner().invoke(app, ["face", "fit", str(photo), "--face-assets", assets, "-o", str(tmp_path / "o")])
        assert isinstance(run.exception, InputError) and run.exception.exit_code == 2, run.output
        assert message in str(run.exception) and "\n" not in str(run.exception)
    run = CliRunner().invoke(app, ["face", "fit", str(photo), "--face-model", "", "-o", str(tmp_path / "o")])
    assert isinstance(run.exception, InputError) and "--face-model is an empty path" in str(run.exception)
    run = CliRunner().invoke(app, ["face", "fit", os.devnull, "-o", str(tmp_path / "o")])
    assert isinstance(run.exception, InputError) and "/dev/null is not a regular file" in str(run.exception)
    with pytest.raises(InputError, match="/dev/null is not a regular file"):
        read_image(os.devnull)
    assert sorted(os.listdir(tmp_path)) == ["photo.png"]
