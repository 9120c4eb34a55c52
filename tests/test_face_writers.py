"""Mesh and result writers: what is written reads back; nothing is overwritten without permission.
Also the readers: every stored image layout comes back as upright 8-bit RGB, every video frame once."""

import json
import re

import numpy as np
import pytest

from flowcli.errors import OutputError
from flowcli.face import writers


class TinyModel:
    triangles = np.array([[0, 1, 2], [0, 2, 3]])
    uvs = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.5, 0.5]])
    uv_triangles = np.array([[0, 1, 2], [0, 2, 4]])


VERTS = np.array([[0.0, 0.0, 0.0], [1.5, 0.0, 0.25], [1.5, 2.0, -0.5], [0.0, 2.0, 1.0]])


def test_obj_round_trip(tmp_path):
    path = writers.write_mesh(tmp_path / "m.obj", VERTS, TinyModel)
    back = writers.read_obj(path)
    np.testing.assert_allclose(back["vertices"], VERTS, atol=1e-6)
    np.testing.assert_array_equal(back["triangles"], TinyModel.triangles)
    np.testing.assert_allclose(back["uvs"], TinyModel.uvs, atol=1e-6)
    np.testing.assert_array_equal(back["uv_triangles"], TinyModel.uv_triangles)


def test_ply_round_trip(tmp_path):
    path = writers.write_mesh(tmp_path / "m.ply", VERTS, TinyModel)
    back = writers.read_ply(path)
    np.testing.assert_allclose(back["vertices"], VERTS, atol=1e-6)
    np.testing.assert_array_equal(back["triangles"], TinyModel.triangles)
    np.testing.assert_allclose(back["face_uvs"], TinyModel.uvs[TinyModel.uv_triangles], atol=1e-6)
    assert path.read_bytes().startswith(b"ply\nformat binary_little_endian 1.0\n")


def test_no_overwrite_and_atomic(tmp_path):
    path = writers.write_json(tmp_path / "pose.json", {"yaw": 1.0})
    with pytest.raises(OutputError, match="--overwrite"):
        writers.write_json(path, {"yaw": 2.0})
    assert json.loads(path.read_text()) == {"yaw": 1.0}
    writers.write_json(path, {"yaw": 2.0}, overwrite=True)
    assert json.loads(path.read_text()) == {"yaw": 2.0}
    assert [p.name for p in tmp_path.iterdir()] == ["pose.json"]  # no temp files left
    assert path.stat().st_mode & 0o044  # readable by others like any new file, not the temp file's 0600
    with pytest.raises(OutputError, match="unknown mesh format"):
        writers.write_mesh(tmp_path / "m.stl", VERTS, TinyModel)


def test_tables_and_arrays(tmp_path):
    rows = [(0, {"jawOpen": 0.5, "eyeBlinkLeft": 0.25}), (1, None)]
    path = writers.write_blendshapes_csv(tmp_path / "b.csv", ["jawOpen", "eyeBlinkLeft"], rows)
    assert path.read_text().splitlines() == ["frame,jawOpen,eyeBlinkLeft", "0,0.50000,0.25000", "1,,"]
    arr = np.arange(12.0).reshape(2, 3, 2)
    np.testing.assert_array_equal(np.load(writers.write_npy(tmp_path / "a.npy", arr)), arr)
    image = np.zeros((31, 33, 3), np.uint8)
    image[5:9, 5:9] = 200
    import imageio.v3 as iio

    np.testing.assert_array_equal(iio.imread(writers.write_png(tmp_path / "o.png", image)), image)
    video = writers.Mp4Writer(tmp_path / "o.mp4", fps=10)
    for _ in range(3):
        video.append(image)  # odd size: padded to even
    video.close()
    frames = iio.imread(tmp_path / "o.mp4")
    assert frames.shape[0] == 3 and frames.shape[1:3] == (32, 34)


def test_read_image_layouts(tmp_path):
    """Gray + alpha, CMYK JPEG (K is not alpha) and EXIF-rotated photos read as the picture a viewer shows."""
    from PIL import Image

    from flowcli.face.media import read_image

    y, x = np.mgrid[0:96, 0:128]
    rgb = np.stack([x * 2, y * 2, 255 - x - y], -1).astype(np.uint8)  # no symmetry: a rotation shows
    picture = Image.fromarray(rgb)
    picture.convert("LA").save(tmp_path / "la.png")
    gray = read_image(tmp_path / "la.png")
    assert gray.shape == (96, 128, 3) and (gray == np.asarray(picture.convert("L"))[:, :, None]).all()
    picture.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    assert np.abs(read_image(tmp_path / "cmyk.jpg").astype(int) - rgb).mean() < 4
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    picture.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    upright = read_image(tmp_path / "rotated.jpg")
    assert upright.shape == rgb.shape and np.abs(upright.astype(int) - rgb).mean() < 4


def test_half_precision_pictures_are_scaled_like_other_floats():
    from flowcli.face.media import as_rgb8

    picture = np.full((64, 64, 3), 0.6, np.float16)
    assert (as_rgb8(picture) == 153).all()


def test_mp4_writer_leaves_no_temp_file_when_the_encoder_fails(tmp_path, monkeypatch):
    """An encoder that fails to start or to finish: one OutputError, and no hidden temp file left behind."""
    import imageio_ffmpeg

    path = tmp_path / "clip.overlay.mp4"
    frame = np.zeros((64, 64, 3), np.uint8)
    writer = writers.Mp4Writer(path, 10.0)
    writer.append(frame)
    writer._writer._process.kill()  # the encoder dies before it finishes the file
    killed = f"^cannot write video {re.escape(str(path))}: ffmpeg failed \\(killed by SIGKILL\\)$"  # not its temp file
    with pytest.raises(OutputError, match=killed):
        writer.close(ok=True)
    assert list(tmp_path.iterdir()) == []
    writer = writers.Mp4Writer(path, 10.0)
    writer.append(frame)
    writer._writer._process.kill()
    writer.close(ok=False)  # already failing: the first error is the one the caller reports
    assert list(tmp_path.iterdir()) == []

    def no_encoder():
        raise RuntimeError("no ffmpeg here")

    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", no_encoder)
    writer = writers.Mp4Writer(path, 10.0)
    with pytest.raises(OutputError, match="no ffmpeg here"):
        writer.append(frame)
    writer.close(ok=False)
    assert list(tmp_path.iterdir()) == []


def test_mp4_writer_on_a_full_disk_is_an_output_error_not_a_truncated_video(tmp_path, monkeypatch):
    """ffmpeg failing to write the overlay (a full disk, here a file size limit) went unnoticed: the truncated
    file was renamed into place as the video, and the run ended with exit 0."""
    import resource
    import subprocess

    real_popen = subprocess.Popen

    def popen_with_a_small_disk(*args, **kwargs):
        before = kwargs.get("preexec_fn")

        def limit():
            if before is not None:
                before()
            resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

        return real_popen(*args, **{**kwargs, "preexec_fn": limit})

    monkeypatch.setattr(subprocess, "Popen", popen_with_a_small_disk)
    noise = np.random.default_rng(0).integers(0, 256, (3, 128, 128, 3), dtype=np.uint8)  # far above 4 KB encoded
    writer = writers.Mp4Writer(tmp_path / "clip.overlay.mp4", 10.0)
    with pytest.raises(OutputError, match="^cannot write .*clip.overlay.mp4: ffmpeg "):
        ok = False
        try:
            for frame in noise:
                writer.append(frame)
            ok = True
        finally:
            writer.close(ok)
    assert list(tmp_path.iterdir()) == []


def test_mp4_writer_refuses_a_rate_the_container_cannot_store(tmp_path):
    """A clip timed in microseconds plays at millions of fps: ffmpeg stored the overlay at 1,001,000 fps, shorter
    than the clip, without an error (and above 2^31 fps wrote an empty file)."""
    with pytest.raises(OutputError, match="at most 1,001,000 fps"):
        writers.Mp4Writer(tmp_path / "clip.overlay.mp4", 2e6)
    assert list(tmp_path.iterdir()) == []


def test_npy_on_a_full_disk_is_an_output_error(tmp_path):
    """numpy reports a short write (a full disk, here a file size limit) as "N requested and M written", an
    OSError without errno that went through as a traceback."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        with pytest.raises(OutputError, match="^cannot write .*a.npy: .*the disk may be full"):
            writers.write_npy(tmp_path / "a.npy", np.zeros((68, 468, 3)))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert list(tmp_path.iterdir()) == []


def test_a_variable_frame_rate_video_gives_each_frame_once(tmp_path):
    """A phone's variable-frame-rate clip: each recorded frame is fitted once, so `frame` t in the JSON is the
    file's t-th frame and the overlay keeps the clip's length (not frames repeated up to the nominal rate)."""
    import subprocess

    import imageio_ffmpeg

    from flowcli.face.media import VideoReader

    # 10 of 30 test-pattern frames, kept in runs of 2 (gaps of 1/30 and 5/30 s)
    path = tmp_path / "phone.mp4"
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i",
               "testsrc=size=96x64:rate=30", "-t", "1", "-vf", r"select=lt(mod(n\,6)\,2)", "-fps_mode", "vfr",
               "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)]  # fmt: skip
    if subprocess.run(command, capture_output=True, check=False).returncode != 0:
        pytest.skip("this ffmpeg cannot make a variable-frame-rate test video")
    reader = VideoReader(path)
    frames = list(reader)
    reader.close()
    assert len(frames) == 10 and reader.decode_error is None
    assert all(not np.array_equal(a, b) for a, b in zip(frames, frames[1:]))


def test_a_video_with_a_frame_that_cannot_be_decoded_warns_that_the_numbers_shift(tmp_path):
    """ffmpeg leaves out a frame it cannot decode without an error: the face reader went on silently, so the JSON's
    frame t was the file's frame t + 1 from there on (flowcli's other reader warns of it)."""
    import re
    import subprocess

    import imageio_ffmpeg

    from flowcli.face.media import VideoReader

    path = tmp_path / "damaged.avi"
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "testsrc=size=96x64:rate=5",
               "-frames:v", "3", "-c:v", "mjpeg", str(path)]  # fmt: skip
    if subprocess.run(command, capture_output=True, check=False).returncode != 0:
        pytest.skip("this ffmpeg cannot make an MJPEG test video")
    data = bytearray(path.read_bytes())
    second = [m.start() for m in re.finditer(b"\xff\xd8\xff", data)][1]  # frame 1's JPEG
    data[second + 2 : second + 600] = bytes(598)
    path.write_bytes(bytes(data))
    reader = VideoReader(path)
    with pytest.warns(UserWarning, match="only 2 of about 3 frames decoded; the file is damaged"):
        frames = list(reader)
    reader.close()
    assert len(frames) == 2 and reader.decode_error is None


def test_a_float_picture_with_resampling_overshoot_is_read_as_0_to_1():
    """Bicubic resizing leaves values a little above 1; such a picture used to be read as 0-255 (almost
    black), and a face photo then gave "no face found"."""
    import numpy as np
    import pytest

    from flowcli.errors import InputError
    from flowcli.face.media import as_rgb8

    picture = np.full((80, 80, 3), 0.5, np.float32)
    picture[0, 0] = 1.0005
    assert as_rgb8(picture)[40, 40].tolist() == [128, 128, 128]
    assert as_rgb8(picture * 255)[40, 40].tolist() == [127, 127, 127]  # a float picture in 0-255 stays so
    picture[1, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        as_rgb8(picture)
