"""Reading images and videos for face fitting, with one-line errors for what cannot be used."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flowcli.console import warn
from flowcli.errors import InputError
from flowcli.io import media
from flowcli.io.media import IMAGE_SUFFIXES, is_video, natural_sort_key

MIN_SIDE = 64  # smaller images cannot hold a face the detector finds


def media_in_folder(folder: Path) -> list[Path]:
    """The images and videos directly in a folder (not hidden), in natural order: frame_2 before frame_10."""
    found = [
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and (p.suffix.lower() in IMAGE_SUFFIXES or is_video(p))
    ]
    return sorted(found, key=natural_sort_key)


def as_rgb8(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Any decoded image -> H x W x 3 uint8 RGB: grayscale is replicated, alpha dropped, 16-bit scaled."""
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] in (1, 2):  # grayscale, grayscale + alpha
        a = a[:, :, 0]
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise InputError(f"{name}: unsupported image layout {a.shape}; expected an RGB or grayscale picture")
    a = a[:, :, :3]
    if a.dtype == np.uint16:
        a = (a / 257.0).round().astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise InputError(f"{name}: the image has NaN or infinite values; give a decoded picture")
        # [0, 1] like flowcli's frames, with the overshoot of resampling filters (1.0005 after bicubic
        # resizing); a float picture in 0-255 has values well above 2
        a = (
            (np.clip(a, 0.0, 1.0) * 255).round().astype(np.uint8)
            if a.max() <= 2.0
            else np.clip(a, 0, 255).astype(np.uint8)
        )
    elif a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:  # wider integers: 8-bit values, or 16-bit ones (Pillow's mode I is int32)
        low, high = int(a.min()), int(a.max())
        if low < 0:
            raise InputError(f"{name}: the image has negative pixel values; give an unsigned 8- or 16-bit picture")
        if high > 255:  # not 8-bit: clipping would make it white
            a = a / ((65535 if high <= 65535 else np.iinfo(a.dtype).max) / 255)
        a = np.round(a).astype(np.uint8)
    h, w = a.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise InputError(f"{name} is {w}x{h} px; face fitting needs at least {MIN_SIDE} px on each side")
    return np.ascontiguousarray(a)


def _not_a_file(path: Path) -> str:
    if path.exists():  # a device (/dev/null), a pipe or a socket
        return f"{path} is not a regular file; give an image or video file"
    return f"{path} not found"


def read_image(path: str | Path) -> np.ndarray:
    """An image file -> H x W x 3 uint8 RGB, upright as viewers show it (EXIF orientation applied)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder, not an image; give an image file")
    if not path.is_file():
        raise InputError(_not_a_file(path))
    from flowcli.io.media import read_image_array  # applies EXIF orientation, converts CMYK and the like to RGB

    return as_rgb8(read_image_array(path), path.name)


class VideoReader(media.VideoReader):
    """Frames of a video as uint8 RGB, streamed like the reader of `flowcli estimate` (each decoded frame once;
    `fps` = frames / duration when the rate varies, so an overlay lasts as long as the source); stops quietly at
    the first undecodable frame and names it in `decode_error`."""

    DEFAULT_FPS = 25.0  # for a container that states no rate: the overlay video needs one

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise InputError(_not_a_file(path))
        super().__init__(path)
        self.decode_error: str | None = None

    @property
    def fps(self) -> float:
        return super().fps or self.DEFAULT_FPS

    def __iter__(self):
        # not the base class's iteration: a face fit needs no second frame, so a decoding error after any
        # number of frames ends the clip there, and the caller reports `decode_error`
        stream, self._pending = (self._pending or self._open()), None
        index = 0
        try:
            while True:
                try:
                    raw = next(stream)
                except StopIteration:
                    # ffmpeg skips frames it cannot decode without an error: the later ones take their numbers
                    if self.num_frames and index < 0.9 * self.num_frames:
                        warn(
                            f"{self.path.name}: only {index} of about {self.num_frames} frames decoded; the file is "
                            "damaged or truncated: frames that could not be decoded are left out, and any after them "
                            "are numbered earlier"
                        )
                    return
                except (RuntimeError, OSError) as error:
                    self.decode_error = f"frame {index}: {media._one_line(error)}"
                    return
                frame = np.frombuffer(raw, np.uint8).reshape(self.height, self.width, 3).copy()  # writable
                yield as_rgb8(frame, f"{self.path.name} frame {index}")
                index += 1
        finally:
            stream.close()
