"""Readers and writers for flow, disparity and array files, exact to each format's precision.

Formats:
- `.flo` (Middlebury): float32 magic 202021.25, int32 width, int32 height, then H*W*2 float32 (u, v).
  Values >= 1e9 mean 'unknown' (see `valid_mask`).
- KITTI flow PNG: 16-bit RGB, channel = value * 64 + 2**15 for u and v, third channel 1 = valid.
- KITTI disparity PNG: 16-bit gray, value = disparity * 256, 0 = invalid.
- `.pfm`: 'Pf' (1 channel) or 'PF' (3 channels) float32, negative scale = little endian, rows stored
  bottom-up; inf is allowed (Middlebury stereo uses it for unknown disparity).
- `.npy` / `.npz`: NumPy arrays, never pickled objects.

Also home of the PNG codec shared by the package: Pillow (under imageio) reads 16-bit colour PNGs
as 8-bit and cannot write them, so 16-bit colour is decoded by the ffmpeg binary that imageio-ffmpeg
ships, and every PNG is encoded here with numpy + zlib.

Arrays are [H, W, C] numpy (flow [H, W, 2] float32). Writers also accept torch tensors in the
project layout ([2, H, W] or [1, 2, H, W] for flow). Every write goes through `atomic_path`.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import zlib
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from flowcli.console import warn
from flowcli.errors import InputError, OutputError
from flowcli.io.atomic import atomic_path

FLO_MAGIC = 202021.25
UNKNOWN_FLOW_THRESHOLD = 1e9
UNKNOWN_FLOW = 1e10  # what read_flow stores at pixels a format marks invalid (Middlebury convention)
KITTI_FLOW_SCALE = 64.0
KITTI_DISPARITY_SCALE = 256.0

FLOW_FORMATS = {
    ".flo": "Middlebury .flo",
    ".png": "KITTI 16-bit PNG",
    ".npy": "NumPy [H,W,2] float32",
    ".pfm": "PFM (u, v, 0)",
}

PathLike = str | os.PathLike


# ----------------------------------------------------------------------------- helpers


def _known_flow_formats() -> str:
    return ", ".join(FLOW_FORMATS)


def _existing_file(path: PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist; check the path")
    if not path.is_file():
        raise InputError(f"{path} is not a file")
    return path


def _read_bytes(path: PathLike) -> tuple[Path, bytes]:
    path = _existing_file(path)
    try:
        return path, path.read_bytes()
    except OSError as error:
        raise InputError(f"cannot read {path}: {error.strerror}") from None


def _corrupt(path: Path, what: str) -> InputError:
    return InputError(f"cannot read {path}: {what}; the file is corrupt or not in the expected format")


def _write_bytes(path: PathLike, data: bytes, overwrite: bool) -> Path:
    with atomic_path(path, overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def _to_numpy(array) -> np.ndarray:
    if hasattr(array, "detach"):  # a torch tensor; duck-typed so this module does not import torch
        array = array.detach().cpu()
        if str(array.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            array = array.float()
        array = array.numpy()
    return np.asarray(array)


def as_flow_hw2(flow) -> np.ndarray:
    """Flow as a float32 [H, W, 2] array: numpy [H, W, 2], or a torch tensor [2, H, W] / [1, 2, H, W]."""
    is_tensor = hasattr(flow, "detach")
    flow = _to_numpy(flow)
    if is_tensor:
        if flow.ndim == 4 and flow.shape[0] == 1:
            flow = flow[0]
        if flow.ndim != 3 or flow.shape[0] != 2:
            raise ValueError(f"flow tensor must be [2, H, W] or [1, 2, H, W], got {list(flow.shape)}")
        flow = flow.transpose(1, 2, 0)
    elif flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"flow array must be [H, W, 2], got {list(flow.shape)}")
    return np.ascontiguousarray(flow, dtype=np.float32)


def as_map_hw(array) -> np.ndarray:
    """A one-channel map as [H, W]: numpy [H, W] / [H, W, 1], or a torch tensor [H, W] / [1, H, W] / [1, 1, H, W].

    Only the channel and batch axes are dropped, never H or W, so 1-pixel-tall or -wide maps keep their shape.
    """
    is_tensor = hasattr(array, "detach")
    array = _to_numpy(array)
    shape = list(array.shape)
    if is_tensor:
        while array.ndim > 2 and array.shape[0] == 1:
            array = array[0]
    elif array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim != 2:
        layouts = "[H, W], [1, H, W] or [1, 1, H, W]" if is_tensor else "[H, W] or [H, W, 1]"
        raise ValueError(f"a one-channel map must be {layouts}, got {shape}")
    return array


def valid_mask(flow) -> np.ndarray:
    """[H, W] bool: pixels whose flow is known (finite and both components below 1e9 in magnitude)."""
    flow = as_flow_hw2(flow)
    return (np.isfinite(flow) & (np.abs(flow) < UNKNOWN_FLOW_THRESHOLD)).all(axis=-1)


# ----------------------------------------------------------------------------- PNG


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type (gray, gray+alpha, RGB, RGBA)
_FFMPEG_PIX_FMTS = {4: ("ya16le", 2), 2: ("rgb48le", 3), 6: ("rgba64le", 4)}  # 16-bit colour types


def _png_header(path: Path, data: bytes) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from the IHDR chunk."""
    if data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR" or len(data) < 33:
        raise _corrupt(path, "not a PNG file")
    width, height, depth, color_type = struct.unpack(">IIBB", data[16:26])
    if width == 0 or height == 0:
        raise _corrupt(path, "PNG header gives an empty image")
    return width, height, depth, color_type


def _decode_png16_ffmpeg(path: Path, data: bytes, width: int, height: int, color_type: int) -> np.ndarray:
    import imageio_ffmpeg

    pix_fmt, channels = _FFMPEG_PIX_FMTS[color_type]
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "png_pipe", "-i", "pipe:0"]
    command += ["-frames:v", "1", "-f", "rawvideo", "-pix_fmt", pix_fmt, "pipe:1"]
    result = subprocess.run(command, input=data, capture_output=True, check=False)
    expected = width * height * channels * 2
    if result.returncode != 0 or len(result.stdout) != expected:
        reason = result.stderr.decode(errors="replace").strip().splitlines()
        raise _corrupt(path, f"PNG decoding failed ({reason[-1] if reason else 'truncated data'})")
    return np.frombuffer(result.stdout, dtype="<u2").reshape(height, width, channels).astype(np.uint16)


def read_png(path: PathLike) -> np.ndarray:
    """A PNG as stored: uint8 or uint16, [H, W] for gray, else [H, W, C]. Exact for 16-bit colour."""
    path, data = _read_bytes(path)
    width, height, depth, color_type = _png_header(path, data)
    if depth == 16 and color_type in _FFMPEG_PIX_FMTS:
        return _decode_png16_ffmpeg(path, data, width, height, color_type)
    try:
        array = iio.imread(data, extension=".png")
    except Exception as error:  # Pillow raises OSError, SyntaxError, ValueError... for bad data
        raise _corrupt(path, f"PNG decoding failed ({_one_line(error)})") from None
    if array.shape[:2] != (height, width):
        raise _corrupt(path, "decoded size does not match the PNG header")
    return array


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def encode_png(array) -> bytes:
    """PNG bytes for a uint8 or uint16 array [H, W] or [H, W, C] (C = 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA)."""
    array = _to_numpy(array)
    if array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"PNG needs a uint8 or uint16 array, got {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in _PNG_COLOR_TYPES or 0 in array.shape[:2]:
        raise ValueError(f"PNG needs [H, W] or [H, W, 1-4], got {list(array.shape)}")
    height, width, channels = array.shape
    depth = 8 * array.dtype.itemsize
    bpp = channels * array.dtype.itemsize  # bytes per pixel, the distance the Sub filter looks back
    rows = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder(">")).view(np.uint8).reshape(height, -1)

    # Per row, keep the cheapest of the None / Sub / Up filters (libpng's minimum-sum heuristic, without Paeth).
    sub = rows.copy()
    sub[:, bpp:] -= rows[:, :-bpp]
    up = rows.copy()
    up[1:] -= rows[:-1]
    candidates = np.stack((rows, sub, up))
    cost = np.abs(candidates.view(np.int8).astype(np.int32)).sum(axis=2)
    choice = cost.argmin(axis=0)
    filtered = candidates[choice, np.arange(height)]
    scanlines = np.concatenate((choice.astype(np.uint8)[:, None], filtered), axis=1)

    header = struct.pack(">IIBBBBB", width, height, depth, _PNG_COLOR_TYPES[channels], 0, 0, 0)
    return b"".join(
        (
            _PNG_SIGNATURE,
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 6)),
            _png_chunk(b"IEND", b""),
        )
    )


def write_png(path: PathLike, array, overwrite: bool = False) -> Path:
    """Write a uint8 or uint16 array [H, W] / [H, W, C] as PNG, atomically."""
    return _write_bytes(path, encode_png(array), overwrite)


# ----------------------------------------------------------------------------- .flo


def read_flo(path: PathLike) -> np.ndarray:
    """Middlebury .flo -> float32 [H, W, 2]; unknown values (>= 1e9) are returned as stored, see `valid_mask`."""
    path, data = _read_bytes(path)
    if len(data) < 12 or np.frombuffer(data[:4], "<f4")[0] != FLO_MAGIC:
        raise _corrupt(path, "missing .flo magic number 202021.25")
    width, height = (int(v) for v in np.frombuffer(data[4:12], "<i4"))
    if width <= 0 or height <= 0:
        raise _corrupt(path, f"invalid .flo size {width}x{height}")
    expected = 12 + width * height * 8
    if len(data) != expected:
        raise _corrupt(path, f"a {width}x{height} .flo needs {expected} bytes, the file has {len(data)}")
    return np.frombuffer(data, "<f4", offset=12).reshape(height, width, 2).astype(np.float32)


def write_flo(path: PathLike, flow, overwrite: bool = False) -> Path:
    """Write flow ([H, W, 2] array or [2, H, W] tensor) as Middlebury .flo."""
    flow = as_flow_hw2(flow)
    if flow.size == 0:  # a 0-pixel .flo is unreadable, by read_flo and by OpenCV alike
        raise ValueError(f".flo needs at least one pixel, got {list(flow.shape)}")
    height, width = flow.shape[:2]
    header = np.array([FLO_MAGIC], "<f4").tobytes() + np.array([width, height], "<i4").tobytes()
    return _write_bytes(path, header + flow.astype("<f4").tobytes(), overwrite)


# ----------------------------------------------------------------------------- KITTI PNG


def read_kitti_flow(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """KITTI flow PNG -> (flow float32 [H, W, 2], valid bool [H, W]); flow is 0 at invalid pixels."""
    raw = read_png(path)
    if raw.dtype != np.uint16 or raw.ndim != 3 or raw.shape[2] != 3:
        raise _corrupt(Path(path), f"KITTI flow needs a 16-bit RGB PNG, got {raw.dtype} {list(raw.shape)}")
    valid = raw[:, :, 2] > 0
    flow = (raw[:, :, :2].astype(np.float32) - 2**15) / KITTI_FLOW_SCALE
    flow[~valid] = 0.0
    return flow, valid


def write_kitti_flow(path: PathLike, flow, valid=None, overwrite: bool = False) -> Path:
    """Write KITTI flow PNG (quantised to 1/64 px, clipped to about +-512 px).

    `valid` defaults to `valid_mask(flow)`; non-finite or unknown pixels are always written invalid.
    """
    flow = as_flow_hw2(flow)
    known = valid_mask(flow)
    valid = known if valid is None else (_to_numpy(valid).astype(bool).reshape(known.shape) & known)
    # float64: in float32, v * 64 + 2**15 loses the 1/64 grid for large values
    encoded = np.rint(np.where(valid[:, :, None], flow.astype(np.float64), 0.0) * KITTI_FLOW_SCALE + 2**15)
    if (encoded < 0).any() or (encoded > 65535).any():
        # No file name: callers write through a temp file (atomic_path), whose name the user never sees.
        warn("flow beyond the KITTI PNG range (about +-512 px) was clipped; write .flo or .npy to keep it exact")
    raw = np.empty(flow.shape[:2] + (3,), np.uint16)
    raw[:, :, :2] = np.clip(encoded, 0, 65535)
    raw[:, :, 2] = valid
    return write_png(path, raw, overwrite)


def read_disparity_png(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """KITTI disparity PNG -> (disparity float32 [H, W] in px, valid bool [H, W]); 0 is invalid."""
    raw = read_png(path)
    if raw.dtype != np.uint16 or raw.ndim != 2:
        raise _corrupt(Path(path), f"KITTI disparity needs a 16-bit gray PNG, got {raw.dtype} {list(raw.shape)}")
    return raw.astype(np.float32) / KITTI_DISPARITY_SCALE, raw > 0


def write_disparity_png(path: PathLike, disparity, valid=None, overwrite: bool = False) -> Path:
    """Write KITTI disparity PNG (quantised to 1/256 px).

    `valid` defaults to the finite pixels; valid values are clipped to [1/256, 65535/256] so that they
    stay distinguishable from the invalid code 0 (with a warning when a disparity exceeds 65535/256 px).
    """
    disparity = as_map_hw(disparity).astype(np.float64)
    finite = np.isfinite(disparity)
    valid = finite if valid is None else (_to_numpy(valid).astype(bool).reshape(finite.shape) & finite)
    encoded = np.rint(np.where(valid, disparity, 0.0) * KITTI_DISPARITY_SCALE)
    if (encoded > 65535).any():
        warn("disparity beyond the KITTI PNG range (255.99 px) was clipped; write .pfm or .npy to keep it exact")
    encoded = np.clip(encoded, 1, 65535)
    return write_png(path, np.where(valid, encoded, 0).astype(np.uint16), overwrite)


# ----------------------------------------------------------------------------- PFM


# The header ends with one whitespace byte, or CR LF (Windows text mode): taking only the CR would shift the data.
_PFM_HEADER = re.compile(rb"(P[Ff])\s+(\d+)\s+(\d+)\s+(\S+)(?:\r\n|\s)")


def read_pfm(path: PathLike) -> np.ndarray:
    """PFM -> float32 [H, W] ('Pf') or [H, W, 3] ('PF'), top row first; inf and nan are kept."""
    path, data = _read_bytes(path)
    match = _PFM_HEADER.match(data[:256])
    if match is None:
        raise _corrupt(path, "missing PFM header ('PF' or 'Pf', width, height, scale)")
    channels = 3 if match.group(1) == b"PF" else 1
    width, height = int(match.group(2)), int(match.group(3))
    try:
        scale = float(match.group(4))
    except ValueError:
        raise _corrupt(path, "PFM scale is not a number") from None
    if width == 0 or height == 0 or scale == 0:
        raise _corrupt(path, f"invalid PFM header (size {width}x{height}, scale {scale})")
    count = width * height * channels
    if len(data) - match.end() < count * 4:
        raise _corrupt(path, f"a {width}x{height}x{channels} PFM needs {count * 4} data bytes, the file is shorter")
    dtype = "<f4" if scale < 0 else ">f4"
    array = np.frombuffer(data, dtype, count=count, offset=match.end()).reshape(height, width, channels)
    array = array[::-1].astype(np.float32)  # rows are stored bottom-up
    return array[:, :, 0] if channels == 1 else array


def write_pfm(path: PathLike, array, overwrite: bool = False) -> Path:
    """Write float [H, W] / [H, W, 1] as 'Pf' or [H, W, 3] as 'PF' (little endian, rows bottom-up).

    Torch tensors are taken in the project layout: [1, H, W] / [1, 1, H, W] (a disparity map) or [3, H, W].
    """
    is_tensor = hasattr(array, "detach")
    array = _to_numpy(array)
    if is_tensor:
        while array.ndim > 3 and array.shape[0] == 1:
            array = array[0]
        if array.ndim == 3 and array.shape[0] in (1, 3):
            array = array.transpose(1, 2, 0)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ValueError(f"PFM stores [H, W] or [H, W, 3], got {list(array.shape)}")
    if array.size == 0:  # a 0-pixel PFM is unreadable, by read_pfm and by OpenCV alike
        raise ValueError(f"PFM needs at least one pixel, got {list(array.shape)}")
    tag = "Pf" if array.ndim == 2 else "PF"
    height, width = array.shape[:2]
    header = f"{tag}\n{width} {height}\n-1.0\n".encode("ascii")
    return _write_bytes(path, header + np.ascontiguousarray(array[::-1], "<f4").tobytes(), overwrite)


# ----------------------------------------------------------------------------- NumPy


def _check_signature(path: Path, signature: bytes, what: str) -> None:
    """np.load takes any file without the .npy or zip signature for a pickle, and calls it one."""
    with open(path, "rb") as file:
        if file.read(len(signature)) != signature:
            raise _corrupt(path, f"not {what}")


def read_npy(path: PathLike) -> np.ndarray:
    """A .npy array (no pickles)."""
    path = _existing_file(path)
    _check_signature(path, b"\x93NUMPY", "a NumPy .npy file")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as error:  # ValueError, EOFError, OSError, UnpicklingError for corrupt files
        raise _corrupt(path, _one_line(error)) from None


def read_npz(path: PathLike) -> dict[str, np.ndarray]:
    """All arrays of a .npz bundle, loaded eagerly (no pickles)."""
    path = _existing_file(path)
    _check_signature(path, b"PK", "a NumPy .npz bundle (a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as bundle:
            return {name: bundle[name] for name in bundle.files}
    except Exception as error:  # BadZipFile, zlib.error, ValueError, EOFError for corrupt bundles
        raise _corrupt(path, _one_line(error)) from None


def write_npy(path: PathLike, array, overwrite: bool = False) -> Path:
    """Write one array as .npy, atomically."""
    array = _to_numpy(array)
    with atomic_path(path, overwrite) as tmp, open(tmp, "wb") as file:
        save_npy(file, array, path)
    return Path(path)


def save_npy(file, array: np.ndarray, path: PathLike) -> None:
    """np.save into `file` (an open file or a temp path) of the output `path`; a short write on a full disk is an
    OutputError naming `path`."""
    try:
        np.save(file, array, allow_pickle=False)
    except OSError as error:
        if error.errno is not None:  # atomic_path names those
            raise
        # numpy's short write on a full disk ("N requested and M written") has no errno to know it by
        raise OutputError(f"cannot write {path}: {error}; the disk may be full; choose another output") from None


def write_npz(path: PathLike, overwrite: bool = False, **arrays) -> Path:
    """Write named arrays as a compressed .npz bundle, atomically."""
    if not arrays:
        raise ValueError("write_npz needs at least one array")
    arrays = {name: _to_numpy(value) for name, value in arrays.items()}
    with atomic_path(path, overwrite) as tmp, open(tmp, "wb") as file:
        np.savez_compressed(file, **arrays)
    return Path(path)


# ----------------------------------------------------------------------------- dispatch


def _flow_format(path: Path, fmt: str | None, error: type[Exception]) -> str:
    suffix = ("." + fmt.lstrip(".").lower()) if fmt else path.suffix.lower()
    if suffix == ".kitti":
        suffix = ".png"
    if suffix not in FLOW_FORMATS:
        shown = fmt if fmt else (path.suffix or "no extension")
        raise error(f"unknown flow format '{shown}' for {path}; known formats: {_known_flow_formats()}")
    return suffix


def read_flow(path: PathLike) -> np.ndarray:
    """Flow [H, W, 2] float32 from .flo, KITTI .png, .npy or .pfm, chosen by extension.

    Pixels the file marks invalid (KITTI valid = 0, PFM inf/nan) come back as unknown (>= 1e9 or
    non-finite), so `valid_mask(flow)` works for every format.
    """
    path = Path(path)
    suffix = _flow_format(path, None, InputError)
    if suffix == ".flo":
        return read_flo(path)
    if suffix == ".png":
        flow, valid = read_kitti_flow(path)
        flow[~valid] = UNKNOWN_FLOW
        return flow
    array = read_npy(path) if suffix == ".npy" else read_pfm(path)
    if array.ndim != 3 or array.shape[2] not in ((2,) if suffix == ".npy" else (2, 3)):
        raise InputError(f"{path} holds an array of shape {list(array.shape)}, not a flow field [H, W, 2]")
    return np.ascontiguousarray(array[:, :, :2], dtype=np.float32)


def write_flow(path: PathLike, flow, fmt: str | None = None, overwrite: bool = False) -> Path:
    """Write flow ([H, W, 2] array or [2, H, W] tensor) in the format of `fmt` or of the extension.

    fmt: 'flo', 'png' (or 'kitti'), 'npy' or 'pfm'. Unknown pixels are written invalid in KITTI PNG.
    """
    path = Path(path)
    suffix = _flow_format(path, fmt, OutputError)
    flow = as_flow_hw2(flow)
    if suffix == ".flo":
        return write_flo(path, flow, overwrite)
    if suffix == ".png":
        return write_kitti_flow(path, flow, overwrite=overwrite)
    if suffix == ".npy":
        return write_npy(path, flow, overwrite)
    padded = np.concatenate((flow, np.zeros_like(flow[:, :, :1])), axis=2)
    return write_pfm(path, padded, overwrite)
