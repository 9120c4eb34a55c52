"""Input media: images, frame folders and videos, as float RGB tensors [3, H, W] in [0, 1].

Videos are decoded and encoded by the ffmpeg binary that imageio-ffmpeg ships, streamed one frame at
a time: a long video is never held in memory.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import itertools
import logging
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import torch
from PIL import ExifTags, Image

from flowcli.console import warn
from flowcli.errors import InputError, OutputError
from flowcli.io.atomic import atomic_path, check_creatable
from flowcli.io.flow_formats import read_png

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp", ".gif")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv",
                  ".3gp", ".mts", ".m2ts", ".ts", ".flv", ".ogv")  # phones, camcorders, dashcams, the web
VIDEO_OUTPUT_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv")  # containers that take H.264
STDIN = "-"  # as a video path: the video piped into standard input
_NON_RGB_MODES = ("CMYK", "YCbCr", "LAB", "HSV")  # Pillow modes whose channels are not R, G, B

PathLike = str | os.PathLike


def _not_rotation_notice(record: logging.LogRecord) -> bool:
    # imageio-ffmpeg logs this (twice, unformatted, even with --quiet) for every video with a rotation: the frames
    # come upright and `VideoReader.size` is their size, so there is nothing for the user to do
    return not record.getMessage().startswith("The frame size for reading")


logging.getLogger("imageio_ffmpeg").addFilter(_not_rotation_notice)


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _existing_file(path: PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist; check the path")
    if not path.is_file():
        raise InputError(f"{path} is not a file")
    return path


def _check_not_empty(path: Path, kind: str) -> None:
    """An empty file (a copy or download that never finished) is said to be empty, not corrupt or of a format
    flowcli does not read."""
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(
            f"cannot read {kind} {path}: the file is empty (0 bytes); copy or download it again, or leave it out"
        )


# ----------------------------------------------------------------------------- images


def image_to_tensor(array: np.ndarray) -> torch.Tensor:
    """An image array [H, W] / [H, W, C] (uint8, uint16, bool or float in [0, 1]) -> float32 RGB [3, H, W].

    Gray is replicated to RGB, gray+alpha and RGBA lose their alpha, 16-bit is divided by 65535.
    """
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"an image must be [H, W] or [H, W, 1-4], got {list(array.shape)}")
    channels = array.shape[2]
    array = array[:, :, :1] if channels in (1, 2) else array[:, :, :3]
    if array.dtype == np.uint8:
        scale = 1 / 255
    elif array.dtype == np.uint16:
        scale = 1 / 65535
    elif array.dtype == np.bool_ or np.issubdtype(array.dtype, np.floating):
        scale = 1.0
    else:
        raise ValueError(f"unsupported image pixel type {array.dtype}")
    chw = np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32)
    chw *= scale
    if np.issubdtype(array.dtype, np.floating):
        np.clip(chw, 0.0, 1.0, out=chw)
    tensor = torch.from_numpy(chw)
    return tensor.expand(3, -1, -1).contiguous() if tensor.shape[0] == 1 else tensor


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation of an open image (1 = upright, also when its EXIF block cannot be read)."""
    if image.format == "PNG" and "exif" not in image.info:
        return 1  # getexif() would decode the whole PNG to look for a late eXIf chunk
    try:
        return int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # a bad EXIF block or tag is ignored
        return 1


def _image_header(path: Path) -> tuple[int, str | None, str | None]:
    """The EXIF orientation, Pillow mode and Pillow format (from the content, not the extension) of an image
    file, read from its header; mode and format are None for a header Pillow cannot read."""
    try:
        with Image.open(path) as image:
            return _orientation(image), image.mode, image.format
    except Image.DecompressionBombError as error:  # a readable file, refused: not "not an image format"
        raise _too_many_pixels(path, error) from None
    except Exception:  # an unreadable header: the decoder reports the broken file
        return 1, None, None


def _too_many_pixels(path: Path, error: Image.DecompressionBombError) -> InputError:
    """The error for an image Pillow refuses to open because it has more pixels than its decompression-bomb limit
    (twice `PIL.Image.MAX_IMAGE_PIXELS`), which flowcli keeps."""
    match = re.search(r"\((\d+) pixels\) exceeds limit of (\d+) pixels", str(error))
    pixels = f"its {int(match[1]):,} pixels exceed" if match else "its pixel count exceeds"
    limit = f" ({int(match[2]):,} pixels)" if match else ""
    return InputError(
        f"cannot read image {path}: {pixels} Pillow's safety limit against decompression bombs{limit}; "
        "downscale it (e.g. to half its width and height) and try again"
    )


def image_size(path: PathLike) -> tuple[int, int]:
    """(width, height) of an image as `read_image` returns it (EXIF orientation applied), from its header only."""
    path = Path(path)
    _check_not_empty(path, "image")
    try:
        with Image.open(path) as image:
            (width, height), orientation = image.size, _orientation(image)
    except Image.DecompressionBombError as error:
        raise _too_many_pixels(path, error) from None
    except Exception as error:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError... on bad files
        try:  # images Pillow cannot open but `read_image` reads through imageio's other plugins: float TIFF
            height, width = iio.improps(path, index=0).shape[:2]
            return width, height
        except Exception:
            raise InputError(
                f"cannot read image {path}: {_one_line(error)}; the file is corrupt or not an image"
            ) from None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)  # 5-8 turn the picture a quarter


def _upright(array: np.ndarray, orientation: int) -> np.ndarray:
    """Undo an EXIF orientation (2-8: flips, rotations) on an [H, W] / [H, W, C] array, as photo viewers do."""
    transforms = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.rot90(a, 1)[:, ::-1],
        8: lambda a: np.rot90(a, 1),
    }
    transform = transforms.get(orientation)
    return array if transform is None else np.ascontiguousarray(transform(array))


_NETPBM_SUFFIXES = (".pgm", ".ppm", ".pnm")
_NETPBM_HEADER = re.compile(rb"(P[56])((?:\s+|#[^\n]*\n)+)(\d+)((?:\s+|#[^\n]*\n)+)(\d+)((?:\s+|#[^\n]*\n)+)(\d+)\s")


def _read_netpbm16(path: Path) -> np.ndarray | None:
    """A binary PGM / PPM with more than 8 bits (maxval > 255) as uint16 scaled to 0..65535, else None.

    Pillow reads 16-bit PGM as int32 and 16-bit PPM truncated to 8 bits; the format is simple enough to read here.
    """
    try:
        with open(path, "rb") as file:
            head = file.read(512)
            match = _NETPBM_HEADER.match(head)
            if match is None or int(match.group(7)) <= 255:
                return None
            file.seek(match.end())
            data = file.read()
    except OSError as error:
        raise InputError(f"cannot read image {path}: {error.strerror}") from None
    channels = 1 if match.group(1) == b"P5" else 3
    width, height, maxval = int(match.group(3)), int(match.group(5)), int(match.group(7))
    count = width * height * channels
    if maxval > 65535 or width == 0 or height == 0 or len(data) < 2 * count:
        raise InputError(f"cannot read image {path}: truncated or invalid {width}x{height} netpbm file")
    array = np.frombuffer(data, ">u2", count=count).astype(np.uint32)
    if maxval != 65535:
        array = (array * 65535 + maxval // 2) // maxval
    array = np.minimum(array, 65535).astype(np.uint16).reshape(height, width, channels)
    return array[:, :, 0] if channels == 1 else array


def read_image_array(path: PathLike) -> np.ndarray:
    """An image file (uint8 or uint16; [H, W] or [H, W, C]); the first frame of animated files.

    The EXIF orientation is applied, and colour spaces other than RGB (CMYK, YCbCr, LAB, HSV) are
    converted to RGB, so the channels are always gray, gray+alpha, RGB or RGBA.
    """
    path = _existing_file(path)
    _check_not_empty(path, "image")
    orientation, mode, content = _image_header(path)
    # by content where Pillow knows it: phones and web downloads give JPEGs named .png and the reverse
    is_png = content == "PNG" if content else path.suffix.lower() == ".png"
    is_netpbm = content == "PPM" if content else path.suffix.lower() in _NETPBM_SUFFIXES
    if is_png:
        array = read_png(path)  # exact for 16-bit colour, which Pillow would truncate to 8 bits
    elif is_netpbm and (deep := _read_netpbm16(path)) is not None:
        array = deep  # 16-bit PGM / PPM: Pillow gives int32 gray and 8-bit colour
    else:
        try:
            if mode in _NON_RGB_MODES:
                array = iio.imread(path, index=0, plugin="pillow", mode="RGB")
            else:
                array = iio.imread(path, index=0)  # 16-bit colour TIFF goes to tifffile, which keeps 16 bits
        except Exception as error:  # Pillow raises OSError, SyntaxError, ValueError... on corrupt files
            if content is None:  # neither Pillow nor imageio knows the format (a text file, HEIC, RAW)
                raise InputError(
                    f"cannot read image {path}: not an image format flowcli reads; convert it to PNG or JPEG, "
                    "or leave it out"
                ) from None
            raise InputError(f"cannot read image {path}: {_one_line(error)}; the file is corrupt") from None
    if np.issubdtype(array.dtype, np.integer) and array.dtype not in (np.uint8, np.uint16):
        array = _wide_integers_as_uint16(array, path)
    return _upright(array, orientation)


def _wide_integers_as_uint16(array: np.ndarray, path: Path) -> np.ndarray:
    """Pixels of a wider integer type as uint16. Pillow's mode I (int32) holds 16-bit data (ASCII PGM scaled to
    65535, 16-bit gray PNG and TIFF in some Pillow versions): values up to 65535 are kept; larger ones are 32-bit
    data, scaled from their type's full range."""
    low, high = int(array.min()), int(array.max())
    if low < 0:
        raise InputError(
            f"cannot use image {path}: it has negative pixel values (down to {low}); convert it to an unsigned "
            "8- or 16-bit image"
        )
    if high <= 65535:
        return array.astype(np.uint16)
    return np.round(array / (np.iinfo(array.dtype).max / 65535)).astype(np.uint16)


def read_image(path: PathLike) -> torch.Tensor:
    """An image file -> float32 RGB [3, H, W] in [0, 1] (gray replicated, alpha dropped, 16-bit scaled)."""
    array = read_image_array(path)
    try:
        return image_to_tensor(array)
    except ValueError as error:
        raise InputError(f"cannot use image {path}: {error}") from None


# ----------------------------------------------------------------------------- frame lists


def natural_sort_key(path: PathLike) -> tuple:
    """Sort key where digit runs compare as numbers: frame_2 < frame_10."""
    text = str(path)
    parts = re.split(r"(\d+)", text)
    # tagged so that a number never meets a string: "seq" against "seq2" compares tags, not "seq" with 2;
    # the full text, last, breaks ties and ends a name before any of its longer relatives
    return tuple((0, int(part)) if i % 2 else (1, part.lower()) for i, part in enumerate(parts)) + ((-1, text),)


def _has_glob(text: str) -> bool:
    return any(char in text for char in "*?[")


def list_frames(folder_or_glob: PathLike) -> list[Path]:
    """Image files of a folder (not recursive) or a glob pattern, in natural order."""
    text = str(folder_or_glob)
    folder = Path(text)
    if folder.is_dir():
        candidates = list(folder.iterdir())
    elif _has_glob(text):
        candidates = [Path(match) for match in glob.glob(text, recursive=True)]
    elif folder.exists():
        raise InputError(f"{folder} is a file; give a folder of frames or a glob pattern such as 'frames/*.png'")
    else:
        raise InputError(f"{folder} does not exist; check the path")
    # hidden files are skipped: among them the temp files of writes in progress (see atomic_path)
    frames = [
        p for p in candidates if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    ]
    if not frames:
        raise InputError(f"no images ({' '.join(IMAGE_SUFFIXES)}) found in {text}{_literal_bracket_hint(text)}")
    return sorted(frames, key=natural_sort_key)


def _literal_bracket_hint(pattern: str) -> str:
    """For a glob that found no images through a [ that is part of a name (the folder 'shot[1]' in 'shot[1]/*.png',
    which glob reads as 'shot1'): what to write instead, or "" where a literal [ finds no image either."""
    if "[" not in pattern:
        return ""
    literal = pattern.replace("[", "[[]")  # glob.escape's spelling of [, leaving * and ? wildcards
    matches = [Path(match) for match in glob.glob(literal, recursive=True)]
    if not any(m.suffix.lower() in IMAGE_SUFFIXES and not m.name.startswith(".") for m in matches):
        return ""
    return (
        f"; in a glob, [...] matches one of the characters inside, not the brackets: write a [ of a name as [[] "
        f"('{literal}')"
    )


# ----------------------------------------------------------------------------- video


def is_video(path: PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


@functools.cache
def _every_frame_once() -> tuple[str, ...]:
    """ffmpeg options that output each decoded frame once. By default ffmpeg resamples to the nominal frame rate,
    which duplicates frames of variable-frame-rate video (phones, screen recordings): pairs of identical frames."""
    try:
        version = imageio_ffmpeg.get_ffmpeg_version()
    except Exception:  # no usable ffmpeg: opening the video reports it
        version = ""
    match = re.match(r"n?(\d+)\.(\d+)", version)
    if match and (int(match[1]), int(match[2])) < (5, 1):
        return ("-vsync", "passthrough")  # ffmpeg 5.1 renamed it -fps_mode; later versions dropped -vsync
    return ("-fps_mode", "passthrough")


@dataclass(frozen=True)
class _FrameTiming:
    frames: int
    span: float  # seconds from the earliest frame timestamp to the latest

    @property
    def average_fps(self) -> float | None:
        return (self.frames - 1) / self.span if self.frames > 1 and self.span > 0 else None


_AV_PKT_FLAG_DISCARD = 0x4  # frames before an edit list's start: decoded for reference, never output


def _frame_timing(path: Path) -> _FrameTiming | None:
    """Count the frames of the video stream ffmpeg decodes and the span of their timestamps, by demuxing
    without decoding (fast). None when ffmpeg cannot read the timestamps."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-nostdin", "-i", str(path.absolute()),
               "-an", "-sn", "-dn", "-c", "copy", "-f", "framecrc", "-"]
    time_base, frames, first, last = None, 0, None, None
    try:
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as process:
            for line in process.stdout:
                if line.startswith("#tb 0:"):
                    time_base = Fraction(line.split(":", 1)[1].strip())
                    continue
                fields = [field.strip() for field in line.split(",")]
                if line.startswith("#") or len(fields) < 6 or fields[0] != "0":
                    continue
                pts = int(fields[2])
                flags = next((int(f[2:], 16) for f in fields[6:] if f.startswith("F=")), 0)
                if pts < 0 or flags & _AV_PKT_FLAG_DISCARD:  # ffmpeg starts output at 0: these are pre-roll
                    continue
                frames += 1
                first = pts if first is None else min(first, pts)  # B-frames come out of order
                last = pts if last is None else max(last, pts)
    except (OSError, ValueError, ZeroDivisionError):
        return None
    if time_base is None or frames == 0:
        return None
    return _FrameTiming(frames=frames, span=float((last - first) * time_base))


def _same_rate(nominal: float | None, average: float, frames: int) -> bool:
    """Whether `frames` at the nominal rate last as long as at the average one, within a frame or the
    two decimals ffmpeg gives the nominal rate in (23.98 for 24000/1001)."""
    if not nominal:
        return False
    return abs(nominal - average) <= 0.006 or abs(frames / nominal - frames / average) <= 1 / nominal


_FFMPEG_LOG_LINE = re.compile(r"\[(info|warning|error|fatal|panic)\] ?(.*)")  # with -loglevel level+info
_FPS = re.compile(r" (\d+(?:\.\d+)?) fps")
_SIZE = re.compile(r" (\d+)x(\d+)[, ]")


def _check_stdin_is_piped() -> None:
    if sys.stdin is None or sys.stdin.isatty():  # a terminal: ffmpeg would wait for keystrokes
        raise InputError("- reads a video from stdin, but nothing is piped in; pipe one, "
                         "e.g. cat clip.mp4 | flowcli estimate -")


def _read_stdin_header(log, errors: deque) -> dict | None:
    """fps and size from ffmpeg's log, read up to the line of the stream it outputs; None when ffmpeg ends first.
    The rate is the input stream's nominal one, the size that of the (rotated) frames ffmpeg gives."""
    fps = None
    in_output = False
    for raw in log:
        match = _FFMPEG_LOG_LINE.search(raw.decode(errors="replace").rstrip())
        if match is None:
            continue
        level, text = match.groups()
        if level in ("error", "fatal", "panic"):
            errors.append(text.strip())
        elif text.startswith("Output #"):
            in_output = True
        elif " Video: " in text and text.lstrip().startswith("Stream #"):
            if not in_output:
                rate = _FPS.search(text)
                fps = fps or (float(rate[1]) if rate else None)
            elif size := _SIZE.search(text):
                return {"size": (int(size[1]), int(size[2])), "fps": fps, "duration": 0.0}
    return None


def _collect_errors(log, errors: deque) -> None:
    for raw in log:
        match = _FFMPEG_LOG_LINE.search(raw.decode(errors="replace").rstrip())
        if match and match[1] in ("error", "fatal", "panic"):
            errors.append(match[2].strip())


def _stdin_frames() -> Iterator:
    """`imageio_ffmpeg.read_frames` for the video on our stdin, which its ffmpeg cannot read (it gets a pipe of its
    own as stdin): the same ffmpeg output options, so the same frames as from a file. Yields the metadata
    {size, fps, duration}, then each frame's rgb24 bytes. ffmpeg ends a truncated or corrupt stream with exit code 0
    and logs why: RuntimeError with its last error at the end of such a stream, or when ffmpeg cannot open it
    (InputError for an mp4 whose index comes after its frames: a pipe cannot seek to it)."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", "-loglevel", "level+info",
               "-i", "pipe:0", "-pix_fmt", "rgb24", "-vcodec", "rawvideo", "-f", "image2pipe",
               *_every_frame_once(), "-"]
    errors: deque[str] = deque(maxlen=20)
    # a session of its own, as read_frames does: a Ctrl-C reaches Python, which stops ffmpeg
    process = subprocess.Popen(command, stdin=sys.stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
    log_reader = threading.Thread(target=_collect_errors, args=(process.stderr, errors), daemon=True)
    try:
        header = _read_stdin_header(process.stderr, errors)
        if header is None:
            process.wait()
            if any("partial file" in error for error in errors):  # the mov demuxer found the frames before the index
                raise InputError(
                    "cannot read the video on stdin: an mp4 or mov read from a pipe needs its index at the start, "
                    "and this one has it at the end; give its path instead, or remux it with -movflags +faststart"
                )
            raise RuntimeError(errors[-1] if errors else f"ffmpeg stopped with exit code {process.returncode}")
        log_reader.start()  # ffmpeg would stall on a full stderr pipe
        yield header
        width, height = header["size"]
        frame_size = width * height * 3
        while len(frame := process.stdout.read(frame_size)) == frame_size:
            yield frame
        process.wait()
        log_reader.join()
        if frame or process.returncode or errors:
            reason = f"ffmpeg stopped with exit code {process.returncode}" if process.returncode else "incomplete frame"
            raise RuntimeError(errors[-1] if errors else reason)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        if log_reader.is_alive():
            log_reader.join()
        process.stdout.close()
        process.stderr.close()


class VideoReader:
    """Streams a video's frames as float32 RGB tensors [3, H, W] in [0, 1], one at a time.

    `fps` (None when unknown), `size` = (width, height), `width`, `height`, and `num_frames`: an estimate
    from duration x fps, or the count of frames when the rate varies (None if unknown), capped by
    `max_frames`. Each decoded frame is given once, so `fps` is the rate at which they play for the source's
    duration: the container's nominal rate for constant-frame-rate video, frames / duration when the rate
    varies (read from the packet timestamps on first use of `fps` or `num_frames`).

    Decoding errors: a file ffmpeg cannot open raises InputError at construction. If decoding fails
    mid-stream, iteration stops with a warning when at least 2 frames were decoded (enough for flow),
    and raises InputError otherwise. A video that yields no frame at all raises InputError.
    Each iteration restarts decoding from the first frame.

    The path `-` (STDIN) is the video piped into standard input (InputError when stdin is a terminal), named
    `stdin` in messages. A pipe is read once: it can be iterated once, `fps` is its nominal rate and
    `num_frames` is `max_frames` or None. ffmpeg reads a truncated stream to its end: iteration then
    ends as after a decoding failure.
    """

    def __init__(self, path: PathLike, max_frames: int | None = None):
        self.from_stdin = str(path) == STDIN
        if self.from_stdin:
            _check_stdin_is_piped()
        self.path = Path(STDIN) if self.from_stdin else _existing_file(path)
        self.name = "stdin" if self.from_stdin else str(self.path)  # in messages
        if max_frames is not None and max_frames < 1:
            raise ValueError("max_frames must be at least 1")
        self.max_frames = max_frames
        self._stdin_opened = False
        self._pending = self._open()  # the stream opened to read the metadata serves the first iteration
        meta = self._meta
        self.width, self.height = (int(v) for v in meta["size"])
        self.size = (self.width, self.height)
        self._nominal_fps = float(meta["fps"]) if meta.get("fps") else None
        self._duration = float(meta.get("duration") or 0.0)
        self.frames_read = 0

    @functools.cached_property
    def _rate_and_count(self) -> tuple[float | None, int | None]:
        """(fps, frame count estimate), from the packet timestamps when the frame rate varies."""
        fps = self._nominal_fps
        estimate = round(self._duration * fps) if fps and self._duration > 0 else None
        timing = None if self.from_stdin else _frame_timing(self.path)  # a pipe cannot be read a second time
        average = timing.average_fps if timing else None
        if average and not _same_rate(fps, average, timing.frames):
            fps, estimate = average, timing.frames
        if self.max_frames is not None:
            estimate = self.max_frames if estimate is None else min(estimate, self.max_frames)
        return fps, estimate

    @property
    def fps(self) -> float | None:
        return self._rate_and_count[0]

    @property
    def num_frames(self) -> int | None:
        return self._rate_and_count[1]

    def _open(self):
        if self.from_stdin:
            return self._open_stdin()
        # absolute: ffmpeg reads a relative name like 'take:2.mp4' as a URL of protocol 'take'
        _check_not_empty(self.path, "video")
        path = str(self.path.absolute())
        stream = imageio_ffmpeg.read_frames(path, pix_fmt="rgb24", output_params=list(_every_frame_once()))
        try:
            self._meta = next(stream)
        except (OSError, RuntimeError, StopIteration, ValueError, KeyError) as error:
            stream.close()
            streams = re.findall(r"Stream #\S+ ?\S*: (\w+):", str(error))
            if streams and "Video" not in streams:  # ffmpeg read it: an audio file, or subtitles only
                kinds = ", ".join(sorted({kind.lower() for kind in streams}))
                raise InputError(f"cannot read video {self.path}: it has no video stream, only {kinds}") from None
            no_stream = isinstance(error, (StopIteration, KeyError))
            reason = "no video stream found" if no_stream else "ffmpeg cannot open it"
            raise InputError(f"cannot read video {self.path}: {reason}; the file is corrupt or not a video") from None
        return stream

    def _open_stdin(self):
        if self._stdin_opened:
            raise RuntimeError("the video on stdin is read once: iterate its VideoReader once")
        self._stdin_opened = True
        stream = _stdin_frames()
        try:
            self._meta = next(stream)
        except (OSError, RuntimeError, ValueError) as error:
            stream.close()
            raise InputError(
                f"cannot read the video on stdin: {_one_line(error).rstrip('.')}; the stream is empty, corrupt or "
                "not a video"
            ) from None
        return stream

    def _frame_tensor(self, raw: bytes) -> torch.Tensor:
        frame = np.frombuffer(raw, np.uint8).reshape(self.height, self.width, 3)
        return image_to_tensor(frame)

    def __iter__(self) -> Iterator[torch.Tensor]:
        stream, self._pending = (self._pending or self._open()), None
        count, failed = 0, False
        try:
            while self.max_frames is None or count < self.max_frames:
                try:
                    raw = next(stream)
                except StopIteration:
                    break
                except (RuntimeError, OSError) as error:
                    if count < 2:
                        raise InputError(
                            f"cannot decode video {self.name}: decoding failed after {count} frame(s); "
                            f"the {self._kind} is corrupt"
                        ) from None
                    warn(f"{self.name}: decoding failed after frame {count - 1} ({_one_line(error)}); stopping there")
                    failed = True
                    break
                count += 1
                self.frames_read = count
                yield self._frame_tensor(raw)
        finally:
            stream.close()
        if count == 0:
            raise InputError(f"cannot decode video {self.name}: no frame could be decoded; the {self._kind} is corrupt")
        if not failed and self.max_frames is None and self.num_frames and count < 0.9 * self.num_frames:
            warn(
                f"{self.name}: only {count} of about {self.num_frames} frames decoded; the file may be truncated, "
                "or its frame rate varies"
            )

    @property
    def _kind(self) -> str:
        return "stream" if self.from_stdin else "file"

    def close(self) -> None:
        if self._pending is not None:
            self._pending.close()
            self._pending = None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()


def _frame_to_uint8_hwc(frame) -> np.ndarray:
    """uint8 [H, W, 3] from a uint8 array [H, W, 3] or a float tensor/array [3, H, W] in [0, 1]."""
    if isinstance(frame, torch.Tensor):
        if frame.dim() == 4 and frame.shape[0] == 1:
            frame = frame[0]
        if frame.dim() != 3 or frame.shape[0] != 3:
            raise ValueError(f"a frame tensor must be [3, H, W], got {list(frame.shape)}")
        if frame.dtype != torch.uint8:
            frame = (frame.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
        frame = frame.permute(1, 2, 0).cpu().numpy()
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"a frame array must be uint8 [H, W, 3], got {frame.dtype} {list(frame.shape)}")
    return np.ascontiguousarray(frame)


MIN_FPS = 0.001  # the writer stores the rate as a fraction with a denominator of at most 10000
# ffmpeg reads a rate (-r) as a fraction of terms at most 1001000 (av_parse_video_rate): it stores a higher one as
# 1001000 fps, and fails on one above 2^31 only once the frames come. Rates up to it are stored within 5e-7.
MAX_FPS = 1_001_000
# Matroska times frames in whole milliseconds: at a higher rate, frames share a timestamp
_MAX_FPS_OF_SUFFIX = {".mkv": 1000}


def max_fps(path: PathLike) -> int:
    """The highest frame rate `VideoWriter` stores in a video named `path` (it depends on the container)."""
    return _MAX_FPS_OF_SUFFIX.get(Path(path).suffix.lower(), MAX_FPS)


def check_fps_fits(path: PathLike, fps: float) -> None:
    """OutputError if a video at `path` cannot store `fps` (above `max_fps(path)`): for commands to call before any
    work, as `VideoWriter` does only when it is made."""
    limit = max_fps(path)
    if fps > limit:
        suffix = Path(path).suffix.lower()
        if limit < MAX_FPS:
            why, other = "its frame times are whole milliseconds", f", or write a .mp4 (up to {MAX_FPS:,} fps)"
        else:
            why, other = "the most ffmpeg takes", ""
        raise OutputError(
            f"cannot write video {path} at {fps:g} fps: a {suffix} video stores at most {limit:,} fps ({why}); "
            f"give a lower frame rate{other}"
        )


MAX_VIDEO_SIDE = 16384  # libx264 refuses a wider or taller picture
# ffmpeg refuses a picture for which 8 * (width + 128) * (height + 128) reaches 2^31 (av_image_check_size): a
# 16384-wide video is at most 16128 tall
_MAX_PADDED_AREA = 2**28


def encoded_size(width: int, height: int) -> tuple[int, int]:
    """The size `VideoWriter` encodes frames of width x height at: odd sides padded to even (yuv420p needs it)."""
    return width + width % 2, height + height % 2


def check_video_size(path: PathLike, width: int, height: int) -> None:
    """OutputError if `VideoWriter` cannot encode frames of width x height (after padding): for commands to call
    before any work, as the writer fails only once ffmpeg starts, at the first frame."""
    padded_width, padded_height = encoded_size(width, height)
    fits_area = (padded_width + 128) * (padded_height + 128) < _MAX_PADDED_AREA
    if max(padded_width, padded_height) <= MAX_VIDEO_SIDE and fits_area:
        return
    raise OutputError(
        f"cannot write video {path} of {width}x{height} frames: H.264 takes at most {MAX_VIDEO_SIDE} pixels a side "
        f"and (width + 128) x (height + 128) under {_MAX_PADDED_AREA:,} (16384x16128 fits); leave out the video, "
        "or crop or downscale the frames"
    )


class VideoWriter:
    """Context manager writing RGB frames to an H.264 video (yuv420p) with the given fps, atomically.

    `write(frame)` takes uint8 [H, W, 3] arrays (or float [3, H, W] tensors in [0, 1]); all frames must
    have the size of the first. Odd sizes are padded by one black row/column (yuv420p needs even
    sizes). The file appears at `path` only when the block exits without error.
    """

    def __init__(self, path: PathLike, fps: float, overwrite: bool = False, crf: int = 18):
        self.path = Path(path)
        if self.path.suffix.lower() not in VIDEO_OUTPUT_SUFFIXES:
            raise OutputError(
                f"cannot write video {self.path}: use one of {' '.join(VIDEO_OUTPUT_SUFFIXES)} (H.264)"
            )
        if not (fps and math.isfinite(fps) and fps >= MIN_FPS):
            raise ValueError(f"fps must be at least {MIN_FPS}, got {fps}")
        check_fps_fits(self.path, fps)
        # fail before any frame is computed, making no folder: atomic_path makes them, and removes them on failure
        check_creatable(self.path, overwrite)
        self.fps = fps
        self.overwrite = overwrite
        self.crf = crf
        self.frames_written = 0
        self.size: tuple[int, int] | None = None  # (width, height) of the input frames
        self._stack: contextlib.ExitStack | None = None
        self._tmp: Path | None = None
        self._process: subprocess.Popen | None = None
        self._log = None

    def __enter__(self) -> VideoWriter:
        self._stack = contextlib.ExitStack()
        self._tmp = self._stack.enter_context(atomic_path(self.path, self.overwrite))
        self._log = self._stack.enter_context(tempfile.TemporaryFile())
        return self

    def _start(self, width: int, height: int) -> None:
        check_video_size(self.path, width, height)
        rate = Fraction(self.fps).limit_denominator(10000)
        command = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", "-nostdin"]
        command += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(rate), "-i", "pipe:0"]
        command += ["-an", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", str(self.crf), "-r", str(rate)]
        if width % 2 or height % 2:
            command += ["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"]
        if self.path.suffix.lower() in (".mp4", ".mov", ".m4v"):
            command += ["-movflags", "+faststart"]
        command.append(str(self._tmp))
        self._process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log
        )

    def _ffmpeg_message(self) -> str:
        self._log.seek(0)
        lines = self._log.read().decode(errors="replace").strip().splitlines()
        if lines:
            return lines[-1]
        code = self._process.returncode
        if code is not None and code < 0:  # killed (the OOM killer, a kill from outside): it wrote nothing
            return f"killed by {signal.Signals(-code).name}"
        return f"exit status {code}"

    def write(self, frame) -> None:
        if self._stack is None:
            raise RuntimeError("use VideoWriter as a context manager: `with VideoWriter(...) as writer:`")
        frame = _frame_to_uint8_hwc(frame)
        height, width = frame.shape[:2]
        if self._process is None:
            self.size = (width, height)
            self._start(width, height)
        elif (width, height) != self.size:
            first = f"{self.size[0]}x{self.size[1]}"
            raise ValueError(f"frame size {width}x{height} differs from the first frame's {first}")
        try:
            self._process.stdin.write(frame.tobytes())
        except (BrokenPipeError, OSError):
            self._process.wait()
            raise OutputError(f"cannot write video {self.path}: ffmpeg stopped ({self._ffmpeg_message()})") from None
        self.frames_written += 1

    def _finish(self) -> None:
        if self._process is None:
            raise OutputError(f"no frames were written to {self.path}")
        with contextlib.suppress(BrokenPipeError, OSError):
            self._process.stdin.close()
        if self._process.wait() != 0:
            raise OutputError(f"cannot write video {self.path}: ffmpeg failed ({self._ffmpeg_message()})")

    def __exit__(self, exc_type, exc, tb) -> bool:
        stack, self._stack = self._stack, None
        if exc_type is not None:
            if self._process is not None:
                self._process.kill()
                self._process.wait()
            return bool(stack.__exit__(exc_type, exc, tb))  # atomic_path removes the temp file
        with stack:  # renames the temp file over `path` only if ffmpeg finished cleanly
            self._finish()
        return False


# ----------------------------------------------------------------------------- frame pairs


@dataclass(frozen=True)
class FramePair:
    """Two consecutive frames (float32 RGB [3, H, W]); names are file stems or `frame_NNNNNN` for video."""

    image1: torch.Tensor
    image2: torch.Tensor
    name1: str
    name2: str
    index: int


@dataclass(frozen=True)
class _Frame:
    image: torch.Tensor
    name: str
    label: str  # how error messages name it


def _image_frames(paths: Sequence[Path]) -> Iterator[_Frame]:
    for path in paths:
        yield _Frame(read_image(path), path.stem, str(path))


def _video_frames(reader: VideoReader, step: int, count: int | None = None) -> Iterator[_Frame]:
    with reader:
        for number, image in enumerate(itertools.islice(reader, count)):
            if number % step == 0:
                yield _Frame(image, f"frame_{number:06d}", f"{reader.name} frame {number}")


def frame_pairs(source, step: int = 1, max_frames: int | None = None) -> Iterator[FramePair]:
    """Consecutive frame pairs from two image paths (a tuple), a folder or glob of frames, a video file, `-` (the
    video on stdin) or a VideoReader (read from its first frame: for stdin, whose fps is known only once opened).

    Frames are taken every `step` frames and at most `max_frames` of them are used (so at most
    max_frames - 1 pairs); both are ignored for an explicit image pair. Frames are read lazily and each
    is decoded once. Raises InputError for fewer than 2 frames or for frames of different sizes.
    """
    if step < 1:
        raise ValueError("step must be at least 1")
    if max_frames is not None and max_frames < 2:
        raise InputError(f"max_frames must be at least 2 to form a pair, got {max_frames}")
    label = str(source)
    to_decode = None if max_frames is None else (max_frames - 1) * step + 1
    if isinstance(source, VideoReader):
        frames = _video_frames(source, step, count=to_decode)
        label = source.name
    elif isinstance(source, (tuple, list)):
        if len(source) != 2:
            raise InputError(f"an image pair needs exactly 2 paths, got {len(source)}")
        paths = [_existing_file(p) for p in source]
        frames = _image_frames(paths)
        label = f"{paths[0]} and {paths[1]}"
    else:
        path = Path(source)
        if str(source) == STDIN or (path.is_file() and is_video(path)):
            reader = VideoReader(source, max_frames=to_decode)  # opened now: errors are immediate
            frames = _video_frames(reader, step)
            label = reader.name if reader.from_stdin else label
        elif path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            raise InputError(f"{path} is a single image; give two images, a folder of frames or a video")
        elif path.is_file():
            raise InputError(
                f"{path} is neither a video ({' '.join(VIDEO_SUFFIXES)}) nor an image; "
                "give a video, a folder or two images"
            )
        else:
            paths = list_frames(source)[::step][:max_frames]
            if len(paths) < 2:
                raise InputError(f"{source} has {len(paths)} frame(s) to use; optical flow needs at least 2")
            frames = _image_frames(paths)
    return _pairs(frames, label)


def _pairs(frames: Iterator[_Frame], label: str) -> Iterator[FramePair]:
    previous = next(frames, None)
    index = 0
    for frame in frames:
        if frame.image.shape != previous.image.shape:
            h1, w1 = previous.image.shape[-2:]
            h2, w2 = frame.image.shape[-2:]
            raise InputError(
                f"frames differ in size: {previous.label} is {w1}x{h1}, {frame.label} is {w2}x{h2}; "
                "resize them to match"
            )
        yield FramePair(previous.image, frame.image, previous.name, frame.name, index)
        previous = frame
        index += 1
    if index == 0:
        raise InputError(f"{label} has fewer than 2 frames; optical flow needs at least 2")
