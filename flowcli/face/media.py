"""Reading images and videos for face fitting, with one-line errors for what cannot be used."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flowcli.errors import InputError
from flowcli.io.media import IMAGE_SUFFIXES, _every_frame_once, is_video, natural_sort_key

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
    elif a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    h, w = a.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise InputError(f"{name} is {w}x{h} px; face fitting needs at least {MIN_SIDE} px on each side")
    return np.ascontiguousarray(a)


def read_image(path: str | Path) -> np.ndarray:
    """An image file -> H x W x 3 uint8 RGB, upright as viewers show it (EXIF orientation applied)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder, not an image; give an image file")
    if not path.is_file():
        raise InputError(f"{path} not found")
    from flowcli.io.media import read_image_array  # applies EXIF orientation, converts CMYK and the like to RGB

    return as_rgb8(read_image_array(path), path.name)


class VideoReader:
    """Frames of a video as uint8 RGB, through imageio-ffmpeg; stops quietly at the first undecodable frame."""

    def __init__(self, path: str | Path):
        import imageio.v2 as imageio

        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"{self.path} not found")
        try:
            # each decoded frame once: without it ffmpeg repeats frames of variable-frame-rate (phone) video
            self._reader = imageio.get_reader(str(self.path), "ffmpeg", output_params=list(_every_frame_once()))
            meta = self._reader.get_meta_data()
        except Exception as error:
            raise InputError(f"cannot open {self.path} as a video: {str(error).splitlines()[0]}") from None
        self.fps = float(meta.get("fps") or 25.0)
        self.size = tuple(meta.get("size") or (0, 0))
        self.decode_error: str | None = None

    def __iter__(self):
        index = 0
        while True:
            try:
                frame = self._reader.get_data(index)
            except IndexError:
                return
            except Exception as error:
                self.decode_error = (
                    f"frame {index}: {str(error).splitlines()[0] if str(error) else type(error).__name__}"
                )
                return
            yield as_rgb8(frame, f"{self.path.name} frame {index}")
            index += 1

    def close(self) -> None:
        self._reader.close()
