"""Disparity and depth from rectified stereo pairs with the flow network (Flow2Stereo's view of stereo).

A rectified pair is a flow problem whose flow is purely horizontal: the left -> right flow of a
left pixel is (-d, 0), d its disparity. So one network serves both tasks:

    result = estimate_disparity(model, left, right)          # DisparityResult
    depth = depth_from_disparity(result.disparity, focal=451.0, baseline=0.075)   # metres, 0 = invalid

- disparity = -u of the left -> right flow, clamped at 0; `negative_fraction` reports how much of it
  was clearly negative (below -0.5 px) before clamping: most of it means left and right are swapped.
- `vertical_flow` is v of the same flow, 0 for a rectified pair; `vertical_median` (median |v| per
  pair) above `max_vertical` px warns that the pair does not look rectified.
- occlusion comes from the left-right consistency check: the right -> left flow gives the right
  image's disparity d_R, and a left pixel is occluded (or unreliable) where
  |d_L(x, y) - d_R(x - d_L(x, y), y)| > `lr_threshold` px, or where x - d_L leaves the image.
- depth Z = f B / (d + doffs) (doffs = cx_right - cx_left, 0 for most rigs), invalid (0) where d <= 0.

Also here: `Camera` and `read_calibration` (JSON like stereodemo's, or Middlebury calib.txt),
`point_cloud` + `write_ply` / `read_ply` (binary or ASCII PLY with colours), `disparity_to_rgb`
(turbo colour map) and `split_side_by_side`.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from flowcli.console import warn
from flowcli.errors import InputError

NEGATIVE_TOLERANCE = 0.5  # px: -u below -this counts as negative disparity (sub-pixel noise around 0 does not)
DEFAULT_LR_THRESHOLD = 1.0  # px
# px of median |v| before a pair is called non-rectified: rectified OAK-D pairs show up to 3 px (the model's own
# vertical error), and Middlebury's disparity EPE barely moves until the pair is 4 px off
# (benchmarks/vertical_offset.py)
DEFAULT_MAX_VERTICAL = 4.0
PNG_DEPTH_SCALE = 1000.0  # 16-bit depth PNG: millimetres


@dataclass
class DisparityResult:
    disparity: torch.Tensor  # [B, 1, H, W] left disparity in px, >= 0
    occlusion: torch.Tensor | None  # [B, 1, H, W] 1 = left pixel fails the left-right check (None: not run)
    vertical_flow: torch.Tensor  # [B, 1, H, W] v of the left -> right flow (px; 0 when rectified)
    disparity_right: torch.Tensor | None = None  # [B, 1, H, W] right disparity (u of right -> left), >= 0
    negative_fraction: list[float] = field(default_factory=list)  # per pair, before clamping
    vertical_median: list[float] = field(default_factory=list)  # per pair, median |v| in px
    tiles: int = 1


def _pair_size_error(left: torch.Tensor, right: torch.Tensor) -> InputError:
    (h1, w1), (h2, w2) = left.shape[-2:], right.shape[-2:]
    return InputError(
        f"left and right images differ in size ({w1}x{h1} vs {w2}x{h2}); a rectified pair has two images "
        "of the same size"
    )


def estimate_disparity(
    model: torch.nn.Module,
    left: torch.Tensor,
    right: torch.Tensor,
    *,
    consistency: bool = True,
    lr_threshold: float = DEFAULT_LR_THRESHOLD,
    max_vertical: float | None = DEFAULT_MAX_VERTICAL,
    max_pixels: int | None = None,
    tile_overlap: int = 64,
    precision: str = "fp32",
) -> DisparityResult:
    """Left disparity of rectified pairs ([B,3,H,W] or [3,H,W], RGB in [0,1]) with a flow model.

    consistency=True also runs right -> left (in the same batch) for the right disparity and the
    left-right occlusion. `max_vertical=None` turns the non-rectified warning off (callers that warn
    themselves read `vertical_median`).
    """
    from flowcli.inference import check_frame, estimate_flow

    left, right = check_frame("left", left), check_frame("right", right)
    if left.shape[-2:] != right.shape[-2:]:
        raise _pair_size_error(left, right)
    if consistency and not _is_positive(lr_threshold):
        raise InputError(f"lr_threshold must be a positive number of pixels, got {lr_threshold!r}")
    if max_vertical is not None and not (_is_positive(max_vertical) or _real(max_vertical) == 0.0):
        raise InputError(
            f"max_vertical must be 0 or more pixels of median vertical flow (None: no warning), got {max_vertical!r}"
        )
    flows = estimate_flow(
        model, left, right, backward=consistency, max_pixels=max_pixels, tile_overlap=tile_overlap,
        precision=precision,
    )  # fmt: skip
    raw = -flows.forward[:, :1]
    vertical = flows.forward[:, 1:2]
    result = DisparityResult(
        disparity=raw.clamp_min(0.0),
        occlusion=None,
        vertical_flow=vertical,
        negative_fraction=[float(v) for v in (raw < -NEGATIVE_TOLERANCE).float().flatten(1).mean(1)],
        vertical_median=[float(v) for v in vertical.abs().flatten(1).median(1).values],
        tiles=flows.tiles,
    )
    if consistency:
        result.disparity_right = flows.backward[:, :1].clamp_min(0.0)
        result.occlusion = left_right_occlusion(result.disparity, result.disparity_right, lr_threshold)
    if max_vertical is not None:
        for i, median in enumerate(result.vertical_median):
            if median > max_vertical:
                which = f"pair {i}: " if len(result.vertical_median) > 1 else ""
                warn(non_rectified_message(median, max_vertical, which))
    return result


def non_rectified_message(median: float, max_vertical: float, prefix: str = "") -> str:
    return (
        f"{prefix}median vertical flow between left and right is {median:.1f} px (above {max_vertical:g} px): "
        "the pair does not look rectified, and the disparity degrades from here on; rectify it so that rows match"
    )


def left_right_occlusion(
    disparity_left: torch.Tensor, disparity_right: torch.Tensor, threshold: float = DEFAULT_LR_THRESHOLD
) -> torch.Tensor:
    """[B,1,H,W] float, 1 where the left disparity fails the left-right consistency check.

    d_R is read at (x - d_L, y) by linear interpolation along the row; a pixel is occluded where
    |d_L - d_R(x - d_L)| > threshold, or where x - d_L falls left of the image (or d_L is NaN).
    """
    if disparity_left.dim() != 4 or disparity_left.shape != disparity_right.shape:
        raise InputError(
            f"the left and right disparities have shapes {tuple(disparity_left.shape)} and "
            f"{tuple(disparity_right.shape)}; give two [B, 1, H, W] maps of the same pair"
        )
    w = disparity_left.shape[-1]
    xs = torch.arange(w, device=disparity_left.device, dtype=disparity_left.dtype).view(1, 1, 1, w)
    target = xs - disparity_left
    x0 = target.floor().nan_to_num(0.0).clamp(0, w - 1)
    frac = (target - x0).clamp(0, 1)
    i0 = x0.long()
    i1 = (i0 + 1).clamp(max=w - 1)
    right = disparity_right.to(disparity_left.dtype)
    sampled = torch.gather(right, 3, i0) * (1 - frac) + torch.gather(right, 3, i1) * frac
    inconsistent = (disparity_left - sampled).abs() > threshold
    return (inconsistent | (target < 0) | disparity_left.isnan()).float()


# ----------------------------------------------------------------------------- depth and camera


def _real(value):
    """A Python, numpy or one-element tensor number as a float (None stays None); anything else as given."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dtype != torch.bool:
        return float(value)
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        try:
            return float(value)
        except OverflowError:  # an int beyond float's range (a JSON 1000...0): infinite, which the checks refuse
            return math.inf if value > 0 else -math.inf
    return value


def _is_positive(value) -> bool:
    value = _real(value)
    return isinstance(value, float) and math.isfinite(value) and value > 0


@dataclass(frozen=True)
class Camera:
    """A rectified stereo rig: focal length (px), baseline (m), principal point, disparity offset.

    fy defaults to focal, cx/cy to the image centre, doffs (cx_right - cx_left) to 0. width/height,
    when known (calibration files), are the image size the calibration is for.
    """

    focal: float
    baseline: float
    fy: float | None = None
    cx: float | None = None
    cy: float | None = None
    doffs: float = 0.0
    width: int | None = None
    height: int | None = None
    source: str | None = None
    # where the calibration file gave the baseline, and whether that place takes millimetres (for warnings)
    baseline_field: str | None = None
    baseline_in_millimetres: bool = False

    def __post_init__(self):
        where = f" in {self.source}" if self.source else ""
        for attribute, name in (("focal", "focal length"), ("baseline", "baseline"), ("fy", "fy")):
            value = _real(getattr(self, attribute))
            if value is not None and not _is_positive(value):
                unit = "metres" if name == "baseline" else "pixels"
                raise InputError(f"the {name}{where} must be a positive number of {unit}, got {value}")
            object.__setattr__(self, attribute, value)  # numpy and tensor scalars stored as plain floats
        for attribute in ("cx", "cy", "doffs"):  # cx, cy may be None (the image centre)
            value = _real(getattr(self, attribute))
            if (value is not None or attribute == "doffs") and not (isinstance(value, float) and math.isfinite(value)):
                raise InputError(f"{attribute}{where} must be a finite number of pixels, got {value}")
            object.__setattr__(self, attribute, value)
        for attribute in ("width", "height"):  # None: the calibration's size is unknown
            if getattr(self, attribute) is not None:
                object.__setattr__(self, attribute, _image_size(getattr(self, attribute), f"{attribute}{where}"))

    def check_size(self, width: int, height: int) -> None:
        """An InputError unless the camera is for images of this size (or its size is unknown); a calibration that
        states only its width or only its height is checked on that one."""
        if (self.width is not None and self.width != width) or (self.height is not None and self.height != height):
            what = f"calibration {self.source}" if self.source else "camera"
            if self.width is not None and self.height is not None:
                stated = f"{self.width}x{self.height}"
            else:
                stated = f"{self.width} px wide" if self.width is not None else f"{self.height} px high"
            raise InputError(
                f"the {what} is for {stated} images but the images are {width}x{height}; "
                f"give a camera calibrated for {width}x{height} images (on the command line: --focal and "
                "--baseline instead of --calib)"
            )

    def intrinsics(self, width: int, height: int) -> tuple[float, float, float, float]:
        """(fx, fy, cx, cy) for an image of this size."""
        cx = self.cx if self.cx is not None else (width - 1) / 2
        cy = self.cy if self.cy is not None else (height - 1) / 2
        return self.focal, self.fy or self.focal, cx, cy


def depth_from_disparity(disparity, focal: float, baseline: float, *, doffs: float = 0.0,
                         max_depth: float | None = None):
    """Depth Z = focal * baseline / (disparity + doffs) in the baseline's unit (metres).

    Invalid pixels (disparity <= 0 or not finite, or beyond `max_depth`) are 0. Takes and returns a
    torch tensor or a numpy array of any shape.
    """
    camera = Camera(focal=focal, baseline=baseline, doffs=doffs)  # validates all three
    focal, baseline, doffs = camera.focal, camera.baseline, camera.doffs
    if max_depth is not None and not _is_positive(max_depth):
        raise InputError(f"max_depth must be a positive number of metres (None: no limit), got {max_depth}")
    is_tensor = isinstance(disparity, torch.Tensor)
    d = disparity.float() if is_tensor else torch.as_tensor(np.asarray(disparity, dtype=np.float32))
    shifted = d + doffs
    valid = torch.isfinite(d) & (d > 0) & (shifted > 0)
    depth = torch.where(valid, (focal * baseline) / torch.where(valid, shifted, torch.ones_like(d)),
                        torch.zeros_like(d))
    if max_depth is not None:
        depth = torch.where(depth > max_depth, torch.zeros_like(depth), depth)
    return depth if is_tensor else depth.numpy()


def depth_to_png_array(depth) -> np.ndarray:
    """Depth in metres -> uint16 millimetres for a 16-bit PNG; 0 = invalid (also depths beyond 65.535 m)."""
    depth = np.asarray(depth.detach().cpu() if isinstance(depth, torch.Tensor) else depth, dtype=np.float64)
    mm = np.rint(np.nan_to_num(depth, nan=0.0, posinf=0.0) * PNG_DEPTH_SCALE)
    return np.where((mm >= 1) & (mm <= 65535), mm, 0).astype(np.uint16)


_FOCAL_KEYS = ("fx", "focal", "focal_px", "f")
# keys of an OpenCV stereo calibration (stereoCalibrate / stereoRectify): intrinsics of the unrectified cameras
_OPENCV_KEYS = ("K1", "K2", "D1", "D2", "M1", "M2", "R", "T", "P1", "P2", "cameraMatrix1", "camera_matrix",
                "dist_coeffs")
_BASELINE_KEYS = (("baseline_meters", 1.0), ("baseline_m", 1.0), ("baseline", 1.0), ("baseline_mm", 1e-3))


def read_calibration(path: str | os.PathLike) -> Camera:
    """A rig's calibration from a JSON file or a Middlebury calib.txt.

    JSON (e.g. stereodemo's): focal from fx / focal / focal_px / f; baseline in metres from
    baseline_meters / baseline_m / baseline (or baseline_mm); optional fy, cx0 (or cx), cx1, cy,
    width, height, doffs. doffs = cx1 - cx0: both or neither (cx alone is a rig without offset), or doffs itself.
    Two baseline keys must agree. Middlebury calib.txt: cam0=[f 0 cx; 0 f cy; 0 0 1], cam1 (or doffs),
    baseline (mm), width, height.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"calibration {path} is a folder; give the calibration file in it (JSON or calib.txt)")
    if not path.is_file():
        raise InputError(f"calibration file {path} does not exist; check the path")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a byte order mark, as Windows Notepad may write
    except UnicodeDecodeError:
        raise InputError(
            f"cannot read calibration {path}: it is not UTF-8 text (UTF-16 or not a text file); save it as UTF-8"
        ) from None
    except OSError as error:
        raise InputError(f"cannot read calibration {path}: {error.strerror or error}") from None
    if not text.strip():
        raise InputError(
            f"calibration {path} is empty; give a JSON calibration (fx, baseline_meters) or a Middlebury calib.txt"
        )
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise InputError(
                f"cannot read calibration {path}: not valid JSON ({error.msg} at line {error.lineno})"
            ) from None
        if not isinstance(data, dict):
            raise InputError(f"calibration {path} must hold a JSON object with fx and baseline_meters")
        return _camera_from_json(data, path)
    return _camera_from_middlebury(text, path)


def _number(data: dict, key: str, path: Path) -> float:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"calibration {path}: {key} must be a number, got {json.dumps(value)}")
    return _real(value)


def _image_size(value, what: str) -> int:
    """A calibration's width or height: a positive whole number of pixels, or an InputError naming `what`."""
    number = _real(value)
    if not (isinstance(number, float) and math.isfinite(number) and number > 0 and number.is_integer()):
        got = f"{number:g}" if isinstance(number, float) else repr(value)
        raise InputError(f"{what} must be a positive whole number of pixels, got {got}")
    return int(number)


def _camera_from_json(data: dict, path: Path) -> Camera:
    focal_key = next((k for k in _FOCAL_KEYS if k in data), None)
    if focal_key is None:
        opencv = [key for key in _OPENCV_KEYS if key in data]
        if opencv:
            raise InputError(
                f"calibration {path} holds the cameras' own calibration ({', '.join(opencv)}), not the rectified "
                "rig's: rectify the images (OpenCV stereoRectify + remap) and give the rectified focal length "
                "(P1[0][0]) as fx and the baseline as baseline_meters"
            )
        raise InputError(f"calibration {path} has no focal length; expected one of {', '.join(_FOCAL_KEYS)} (pixels)")
    baselines = [(k, _number(data, k, path) * scale) for k, scale in _BASELINE_KEYS if k in data]
    if not baselines:
        raise InputError(f"calibration {path} has no baseline; expected baseline_meters (or baseline_mm)")
    (key, baseline), *others = baselines
    for other, metres in others:  # one of them is usually millimetres written under a metres key
        if not math.isclose(metres, baseline, rel_tol=1e-3):
            raise InputError(
                f"calibration {path} gives {key}={data[key]} and {other}={data[other]}, which disagree "
                f"({baseline:g} m vs {metres:g} m); keep only the right one"
            )

    def optional(*keys):
        key = next((k for k in keys if k in data), None)
        return None if key is None else _number(data, key, path)

    cx0, cx1, doffs = optional("cx0", "cx"), optional("cx1"), optional("doffs")
    if cx1 is not None and not math.isfinite(cx1):
        raise InputError(f"calibration {path}: cx1 must be a finite number of pixels, got {cx1:g}")
    if doffs is None:
        # cx alone is the principal point of a rig without offset; cx0 or cx1 alone means one was left out
        missing = "cx0" if cx1 is not None and cx0 is None else "cx1" if "cx0" in data and cx1 is None else None
        if missing is not None:
            given = "cx1" if missing == "cx0" else "cx0"
            raise InputError(
                f"calibration {path} gives {given} but no {missing}: doffs = cx1 - cx0 needs both (or neither, for "
                f"a rig without offset); add {missing}, or give doffs"
            )
        doffs = (cx1 - cx0) if cx1 is not None else 0.0
    elif cx0 is not None and cx1 is not None and not math.isclose(doffs, cx1 - cx0, rel_tol=1e-6, abs_tol=1e-3):
        raise InputError(
            f"calibration {path} gives doffs={doffs:g} but cx1 - cx0 = {cx1 - cx0:g}; they must agree: keep the "
            "right one"
        )
    width, height = optional("width"), optional("height")
    return Camera(
        focal=_number(data, focal_key, path),
        baseline=baseline,
        fy=optional("fy"),
        cx=cx0,
        cy=optional("cy", "cy0"),
        doffs=doffs,
        width=None if width is None else _image_size(width, f"calibration {path}: width"),
        height=None if height is None else _image_size(height, f"calibration {path}: height"),
        source=str(path),
        baseline_field=key,
        baseline_in_millimetres=dict(_BASELINE_KEYS)[key] != 1.0,
    )


def _camera_from_middlebury(text: str, path: Path) -> Camera:
    values = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    values = {k.strip(): v.strip() for k, v in values.items()}

    def matrix(key):
        if key not in values:
            return None
        numbers = re.findall(r"[-+0-9.eE]+", values[key])
        try:
            if len(numbers) != 9:  # also a nan or inf entry, which the pattern skips
                raise ValueError
            return [float(n) for n in numbers]
        except ValueError:
            raise InputError(
                f"cannot read calibration {path}: {key} must be a 3x3 matrix of numbers, got {values[key]!r}"
            ) from None

    if "cam0" not in values and "baseline" not in values:
        raise InputError(
            f"cannot read calibration {path}: expected JSON (fx, baseline_meters) or a Middlebury calib.txt "
            "(cam0=[f 0 cx; 0 f cy; 0 0 1], baseline in mm)"
        )
    for key, what in (("cam0", "cam0=[f 0 cx; 0 f cy; 0 0 1] line"), ("baseline", "baseline= line (millimetres)")):
        if key not in values:
            raise InputError(f"cannot read calibration {path}: this calib.txt has no {what}; add it")
    cam0, cam1 = matrix("cam0"), matrix("cam1")

    def number(key, unit):
        try:
            return float(values[key])
        except ValueError:
            raise InputError(
                f"cannot read calibration {path}: {key} must be a number of {unit}, got {values[key]!r}"
            ) from None

    baseline_mm = number("baseline", "millimetres")
    doffs = number("doffs", "pixels") if "doffs" in values else ((cam1[2] - cam0[2]) if cam1 else None)
    width = _image_size(number("width", "pixels"), f"calibration {path}: width") if "width" in values else None
    height = _image_size(number("height", "pixels"), f"calibration {path}: height") if "height" in values else None
    if doffs is None:
        raise InputError(
            f"calibration {path} has cam0 but no cam1 (or doffs): doffs = cx1 - cx0 needs both; add the cam1=[...] "
            "line, or doffs=0 for a rig without offset"
        )
    return Camera(focal=cam0[0], baseline=baseline_mm / 1000.0, fy=cam0[4], cx=cam0[2], cy=cam0[5], doffs=doffs,
                  width=width, height=height, source=str(path), baseline_field="baseline=",
                  baseline_in_millimetres=True)


# ----------------------------------------------------------------------------- point clouds


def point_cloud(depth, image, camera: Camera, mask=None) -> tuple[np.ndarray, np.ndarray]:
    """(points float32 [N, 3] in metres, colours uint8 [N, 3]) for the valid (finite, > 0) depths.

    depth [H, W] (or [1, 1, H, W]); image RGB [3, H, W] (or [1, 3, H, W]) or [H, W, 3], float in [0, 1]
    or uint8, tensor or array; `mask` [H, W] True = keep. Camera frame as OpenCV: x right, y down, z forward.
    """
    depth = _one_map("depth", depth).astype(np.float32)
    h, w = depth.shape
    camera.check_size(w, h)  # a calibration for another size has other focal lengths and principal point
    image = _rgb8(image, h, w)
    fx, fy, cx, cy = camera.intrinsics(w, h)
    keep = np.isfinite(depth) & (depth > 0)
    if mask is not None:
        mask = _one_map("mask", mask)
        if mask.shape != (h, w):
            raise InputError(f"the mask has shape {mask.shape} but the depth map has shape {(h, w)}")
        keep &= mask.astype(bool)
    ys, xs = np.nonzero(keep)
    z = depth[ys, xs]
    points = np.stack(((xs - cx) * z / fx, (ys - cy) * z / fy, z), axis=1).astype(np.float32)
    return points, np.ascontiguousarray(image[ys, xs])


def _one_map(name: str, array) -> np.ndarray:
    """A tensor or array [H, W], [1, H, W] or [1, 1, H, W] as a numpy [H, W]."""
    array = np.asarray(array.detach().cpu() if isinstance(array, torch.Tensor) else array)
    if array.ndim < 2 or any(n != 1 for n in array.shape[:-2]):
        raise InputError(f"the {name} has shape {array.shape}; give one map [H, W] (of a batch [B, 1, H, W], "
                         "take [i, 0])")
    return array.reshape(array.shape[-2:])


def _rgb8(image, h: int, w: int) -> np.ndarray:
    """An RGB image [3, H, W], [1, 3, H, W] or [H, W, 3] (float in [0, 1] or uint8) as uint8 [h, w, 3]."""
    image = np.asarray(image.detach().float().cpu() if isinstance(image, torch.Tensor) else image)
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim == 3 and image.shape == (3, h, w):
        image = image.transpose(1, 2, 0)
    if image.ndim != 3 or image.shape[:2] != (h, w) or image.shape[2] not in (3, 4):
        raise InputError(
            f"the image has shape {image.shape} but the depth map has shape {(h, w)}; give the left image of the "
            "pair, RGB [3, H, W] or [H, W, 3]"
        )
    image = image[..., :3]
    if np.issubdtype(image.dtype, np.floating):
        if image.size and not (image.min() >= -1.0 and image.max() <= 2.0):  # also NaN
            raise InputError(f"the image holds values from {image.min():g} to {image.max():g}; a float image must "
                             "be RGB in [0, 1] (divide 8-bit images by 255)")
        return np.rint(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    if image.dtype != np.uint8:
        raise InputError(f"the image is {image.dtype}; give float RGB in [0, 1] or uint8")
    return image


_PLY_TYPES = {"float": "<f4", "float32": "<f4", "double": "<f8", "float64": "<f8",
              "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "<i2", "int16": "<i2",
              "ushort": "<u2", "uint16": "<u2", "int": "<i4", "int32": "<i4", "uint": "<u4", "uint32": "<u4"}


def _triples(name: str, values) -> np.ndarray:
    """Points or colours [..., 3] (tensor or array) as a numpy [N, 3]."""
    values = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values)
    if values.ndim == 0 or values.shape[-1] != 3:
        raise InputError(f"the {name} have shape {values.shape}; give them as [N, 3]")
    return values.reshape(-1, 3)


def _colours8(colors) -> np.ndarray:
    """Colours [..., 3] as uint8 [N, 3]: float ones in [0, 1] (as point_cloud's images), integer ones in 0-255."""
    colors = _triples("colours", colors)
    if colors.size and np.issubdtype(colors.dtype, np.floating):
        if not (colors.min() >= 0.0 and colors.max() <= 1.0):  # also NaN
            raise InputError(
                f"the colours hold values from {colors.min():g} to {colors.max():g}; give float "
                "colours in [0, 1] or uint8 ones in 0-255"
            )
        return np.rint(colors * 255).astype(np.uint8)
    if colors.size and not (colors.min() >= 0 and colors.max() <= 255):
        raise InputError(
            f"the colours hold values from {colors.min()} to {colors.max()}; give uint8 colours "
            "in 0-255 or float ones in [0, 1]"
        )
    return colors.astype(np.uint8)


def write_ply(path, points, colors=None, *, binary: bool = True, overwrite: bool = False) -> Path:
    """Write a coloured point cloud as PLY (binary little endian or ASCII), atomically.

    points [N, 3] (or [..., 3]); colors the same count, uint8 in 0-255 or float in [0, 1].
    """
    from flowcli.io.atomic import atomic_path

    points = _triples("points", points).astype(np.float32)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if colors is not None:
        colors = _colours8(colors)
        if len(colors) != len(points):
            raise InputError(
                f"write_ply got {len(points)} points but {len(colors)} colours; pass one colour per point "
                f"([{len(points)}, 3]), or colors=None for a cloud without colours"
            )
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    header = ["ply", f"format {'binary_little_endian' if binary else 'ascii'} 1.0", "comment written by flowcli",
              f"element vertex {len(points)}"]
    header += [f"property {'float' if t == '<f4' else 'uchar'} {name}" for name, t in fields]
    header_bytes = ("\n".join(header + ["end_header"]) + "\n").encode("ascii")
    with atomic_path(path, overwrite) as tmp, open(tmp, "wb") as file:
        file.write(header_bytes)
        if binary:
            vertices = np.empty(len(points), dtype=fields)
            vertices["x"], vertices["y"], vertices["z"] = points.T
            if colors is not None:
                vertices["red"], vertices["green"], vertices["blue"] = colors.T
            file.write(vertices.tobytes())
        elif len(points):
            columns = [points.astype(np.float64)] + ([colors.astype(np.float64)] if colors is not None else [])
            fmt = ["%.7g"] * 3 + (["%d"] * 3 if colors is not None else [])
            np.savetxt(file, np.concatenate(columns, axis=1), fmt=fmt)
    return Path(path)


def read_ply(path) -> tuple[np.ndarray, np.ndarray | None]:
    """(points float32 [N, 3], colours uint8 [N, 3] or None) of a vertex-only PLY such as write_ply's."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder; give a .ply file")
    if not path.is_file():
        raise InputError(f"{path} does not exist; check the path")
    data = path.read_bytes()
    end_header = re.search(rb"end_header\r?\n", data)  # \r\n: a header written on Windows
    if not data.startswith(b"ply") or end_header is None:
        raise InputError(f"cannot read {path}: not a PLY file")
    header = [line.split() for line in data[: end_header.start()].decode("ascii", errors="replace").splitlines()]
    fmt = next((words[1] for words in header if words[:1] == ["format"] and len(words) > 1), "")
    counts = [words[2] for words in header if words[:2] == ["element", "vertex"] and len(words) > 2]
    if not counts or not counts[0].isdigit():
        raise InputError(f"cannot read {path}: its header has no vertex count (element vertex N)")
    count = int(counts[0])
    props = [(words[-1], _PLY_TYPES.get(words[1])) for words in header if words[:1] == ["property"] and len(words) > 2]
    if fmt not in ("ascii", "binary_little_endian") or any(t is None for _, t in props):
        raise InputError(f"cannot read {path}: only vertex-only ascii or binary_little_endian PLY is supported")
    names = [name for name, _ in props]
    twice = next((name for i, name in enumerate(names) if name in names[:i]), None)
    if twice is not None:
        raise InputError(f"cannot read {path}: its header names the vertex property {twice} twice")
    if not all(k in names for k in ("x", "y", "z")):
        have = ", ".join(names) or "nothing"
        raise InputError(f"cannot read {path}: its vertices have no x, y, z (they have {have})")
    body = data[end_header.end() :]
    truncated = InputError(f"cannot read {path}: the header promises {count} vertices but the file is cut short")
    if fmt == "ascii":
        try:
            lines = [line for line in body.decode("ascii").splitlines() if line.strip()][:count]
            table = np.loadtxt(lines, ndmin=2) if count else np.zeros((0, len(props)))
        except (UnicodeDecodeError, ValueError):
            table = None
        if table is None or table.shape[1] != len(props):
            raise InputError(f"cannot read {path}: its vertex lines are not {len(props)} numbers each (cut short?)")
        if len(table) < count:
            raise truncated
        vertices = {name: table[:, i] for i, name in enumerate(names)}
    else:
        if len(body) < count * np.dtype(props).itemsize:
            raise truncated
        vertices = np.frombuffer(body, dtype=props, count=count)
    points = np.stack([vertices[k] for k in ("x", "y", "z")], axis=1).astype(np.float32)
    colors = None
    if all(k in names for k in ("red", "green", "blue")):
        colors = np.stack([vertices[k] for k in ("red", "green", "blue")], axis=1).astype(np.uint8)
    return points, colors


# ----------------------------------------------------------------------------- pictures and layouts

# Turbo colour map (Google, Apache-2.0), polynomial approximation by its authors: t in [0, 1] -> RGB.
_TURBO = (
    ((0.13572138, 4.61539260, -42.66032258, 132.13108234), (-152.94239396, 59.28637943)),
    ((0.09140261, 2.19418839, 4.84296658, -14.18503333), (4.27729857, 2.82956604)),
    ((0.10667330, 12.64194608, -60.58204836, 110.36276771), (-89.90310912, 27.34824973)),
)


def turbo(t) -> np.ndarray:
    """Values in [0, 1] (any shape) -> uint8 RGB [..., 3] with the turbo colour map; non-finite values are black."""
    t = np.asarray(t, dtype=np.float64)
    finite = np.isfinite(t)
    t = np.clip(np.where(finite, t, 0.0), 0.0, 1.0)
    powers = [np.ones_like(t), t, t**2, t**3, t**4, t**5]
    channels = [sum(c * p for c, p in zip(low + high, powers)) for low, high in _TURBO]
    rgb = np.rint(np.clip(np.stack(channels, axis=-1), 0, 1) * 255).astype(np.uint8)
    rgb[~finite] = 0
    return rgb


def disparity_to_rgb(disparity, max_disparity: float | None = None, valid=None) -> np.ndarray:
    """Colour-code disparity ([H, W], [1, H, W] or [1, 1, H, W]; tensor or array) as uint8 RGB [H, W, 3].

    Turbo colour map, near (large disparity) red, far blue; full scale at `max_disparity` (default:
    the frame's maximum). Pixels not `valid` and non-finite ones are black.
    """
    d = _one_map("disparity", disparity).astype(np.float64)
    known = np.isfinite(d)
    if valid is not None:
        valid = _one_map("valid mask", valid)
        if valid.shape != d.shape:
            raise InputError(f"the valid mask has shape {valid.shape} but the disparity has shape {d.shape}")
        known &= valid.astype(bool)
    if max_disparity is None:
        max_disparity = float(d[known].max()) if known.any() else 1.0
    elif not _is_positive(max_disparity):
        raise InputError(f"max_disparity must be a positive number of pixels, got {max_disparity}")
    rgb = turbo(np.where(known, d, 0.0) / max(max_disparity, 1e-6))
    rgb[~known] = 0
    return rgb


def split_side_by_side(frame: torch.Tensor, label: str = "the frame") -> tuple[torch.Tensor, torch.Tensor]:
    """A side-by-side frame [3, H, 2W] -> (left half, right half)."""
    w = frame.shape[-1]
    if w % 2:
        raise InputError(f"{label} is {w} px wide, an odd width; a side-by-side frame has two halves of equal width")
    return frame[..., : w // 2], frame[..., w // 2 :]

