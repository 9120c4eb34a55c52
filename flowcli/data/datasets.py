"""Readers for the standard optical-flow and stereo benchmark layouts, and for unlabeled footage.

Every labeled reader is a small indexable class; an item is a dict:
  image1, image2  [3,H,W] float RGB in [0,1]
  flow            [2,H,W] float pixels, 0 where unknown (stereo: (-disparity, 0))
  valid           [1,H,W] bool, where the ground truth is known
  occlusion       [1,H,W] float (1 = occluded) or None where the dataset has no occlusion GT
  name            str, unique within the dataset ("alley_1/frame_0002", "000010_10", ...)
Stereo readers add `disparity` [1,H,W] (left-image disparity in pixels, 0 where unknown).

Paths are found once at construction; files are read on `__getitem__`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from flowcli.console import warn
from flowcli.errors import InputError
from flowcli.io import flow_formats, media


def _root(root: str | Path, layout: str, dataset: str) -> Path:
    if root is None or str(root) == "":
        raise InputError(f"no root folder given for {dataset}; expected {layout}")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise InputError(f"{dataset} root {path} is not a folder; expected {layout}")
    return path


def _empty(root: Path, layout: str, dataset: str, frames_without_gt: bool = False) -> InputError:
    """`frames_without_gt`: the folder has the dataset's frames but none of its ground truth, as a
    test split (Sintel test/, KITTI testing/, Middlebury eval-data/) has."""
    if frames_without_gt:
        return InputError(
            f"{root} has {dataset} frames but no ground truth to score them against (test splits have none); "
            f"give the folder of the training split, expected {layout}"
        )
    return InputError(f"no {dataset} items found under {root}; expected {layout}")


def _image(path: Path) -> torch.Tensor:
    return media.read_image(path)


def _mask_png(path: Path) -> torch.Tensor:
    """A single-channel mask PNG as [1,H,W] bool (> 127 = set, e.g. Sintel's 255; 1-bit PNGs: 1 = set)."""
    array = np.asarray(flow_formats.read_png(path))
    if array.ndim == 3:
        array = array[..., 0]
    if array.dtype == bool:  # a 1-bit PNG decodes to bool, where 1 (True) is set
        return torch.from_numpy(array.copy())[None]
    threshold = 32767 if array.dtype == np.uint16 else 127
    return torch.from_numpy(array > threshold)[None]


def _flow_from_flo(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(.flo flow [2,H,W] with unknown (>= 1e9, non-finite) set to 0, valid [1,H,W])."""
    array = flow_formats.read_flo(path)
    valid = flow_formats.valid_mask(array)
    array = np.where(valid[..., None], array, 0.0).astype(np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous(), torch.from_numpy(valid)[None]


def _flow_from_kitti(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    array, valid = flow_formats.read_kitti_flow(path)
    valid = np.asarray(valid).astype(bool)
    if valid.ndim == 3:
        valid = valid[..., 0]
    array = np.where(valid[..., None], np.asarray(array, dtype=np.float32), 0.0).astype(np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous(), torch.from_numpy(valid)[None]


# The record key of the file each item key was read from (the first the record has): the file an error names
_FILE_OF = {
    "image1": ("image1", "left"),
    "image2": ("image2", "right"),
    "flow": ("flow", "disparity"),
    "valid": ("flow", "disparity"),
    "occlusion": ("occlusion", "noc", "flow"),
    "disparity": ("disparity",),
}


def _file_of(record: dict, key: str):
    return next((record[name] for name in _FILE_OF[key] if record.get(name) is not None), key)


def _check_size(item: dict, what: str, record: dict) -> dict:
    h, w = item["image1"].shape[-2:]
    for key in ("image2", "flow", "valid", "occlusion", "disparity"):
        value = item.get(key)
        if value is not None and tuple(value.shape[-2:]) != (h, w):
            height, width = value.shape[-2:]
            raise InputError(
                f"{what}: its {key} {_file_of(record, key)} is {width}x{height}, its first frame "
                f"{_file_of(record, 'image1')} is {w}x{h}; the files do not belong together"
            )
    return item


def _check_mask_size(mask: torch.Tensor, mask_path: Path, gt: torch.Tensor, gt_path: Path) -> None:
    """A mask combined with its ground truth must be at its size: torch would broadcast a one-row mask silently."""
    if mask.shape[-2:] != gt.shape[-2:]:
        raise InputError(
            f"{mask_path} is {mask.shape[-1]}x{mask.shape[-2]}, its ground truth {gt_path} is "
            f"{gt.shape[-1]}x{gt.shape[-2]}; the files do not belong together"
        )


def _flow_item(record: dict, flow: torch.Tensor, valid: torch.Tensor, occlusion: torch.Tensor | None) -> dict:
    return {
        "image1": _image(record["image1"]),
        "image2": _image(record["image2"]),
        "flow": flow,
        "valid": valid,
        "occlusion": occlusion,
        "name": record["name"],
    }


class FlowDataset:
    """Base: a list of sample records and a `load(record)`."""

    name = "dataset"
    layout = ""

    def __init__(self):
        self.samples: list[dict] = []
        self.left_out: list[tuple[Path, Path]] = []  # (ground truth, the frame of it that is missing)

    def _leave_out(self, ground_truth: Path, *frames: Path) -> None:
        """`ground_truth` is not listed: one of its `frames` is missing."""
        self.left_out.append((ground_truth, next(frame for frame in frames if not frame.is_file())))

    def _warn_left_out(self) -> None:
        """A copy missing some frames would otherwise be scored on fewer items without a word."""
        if self.samples and self.left_out:
            ground_truth, frame = self.left_out[0]
            total = len(self.samples) + len(self.left_out)
            warn(
                f"{len(self.left_out)} of the {total} {self.name} ground-truth files are left out, their frames "
                f"missing ({frame} for {ground_truth}); the other {len(self.samples)} items are used"
            )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        record = self.samples[index]
        return _check_size(self.load(record), f"{self.name} item {record['name']}", record)

    def __iter__(self) -> Iterator[dict]:
        for i in range(len(self)):
            yield self[i]

    def image_paths(self, index: int) -> tuple[Path, Path]:
        """The files of image1 and image2 (left and right for stereo), e.g. for tools that read them."""
        record = self.samples[index]
        if "left" in record:
            return record["left"], record["right"]
        return record["image1"], record["image2"]

    def load(self, record: dict) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} items)"


class _FloPairs(FlowDataset):
    """Records of image1, image2 and a dense .flo with no occlusion mask (FlyingChairs, Middlebury)."""

    def load(self, record: dict) -> dict:
        flow, valid = _flow_from_flo(record["flow"])
        occlusion = _mask_png(record["occlusion"]).float() if record.get("occlusion") else None
        return _flow_item(record, flow, valid, occlusion=occlusion)


class FlyingChairs(_FloPairs):
    """FlyingChairs: data/NNNNN_img1.ppm, NNNNN_img2.ppm, NNNNN_flow.flo (root = the folder holding
    `data/`, or `data/` itself). `flowcli synth` writes the same layout with PNG frames and an
    NNNNN_occ.png occlusion mask (255 = occluded), which is read too.

    With the official split file FlyingChairs_train_val.txt (line N: 1 = pair N is for training,
    2 = for validation) next to `data/` or in it, `split` picks "validation" (the default: the 640
    pairs the Chairs benchmark scores), "training" or "all"; without it every pair is listed."""

    name = "chairs"
    layout = "FlyingChairs layout: <root>/data/NNNNN_img1.ppm (or .png), NNNNN_img2.ppm, NNNNN_flow.flo"
    SPLIT_FILE = "FlyingChairs_train_val.txt"
    SPLITS = {"training": "1", "validation": "2"}

    def __init__(self, root: str | Path, split: str = "validation"):
        super().__init__()
        if split not in (*self.SPLITS, "all"):
            raise InputError(f"FlyingChairs split must be 'training', 'validation' or 'all', got {split!r}")
        self.root = _root(root, self.layout, self.name)
        folder = self.root / "data" if (self.root / "data").is_dir() else self.root
        split_of = _chairs_split(folder) if split != "all" else None
        for flo in sorted(folder.glob("*_flow.flo")):
            stem = flo.name[: -len("_flow.flo")]
            if split_of is not None and split_of(stem) != self.SPLITS[split]:
                continue
            for suffix in (".ppm", ".png"):
                img1, img2 = folder / f"{stem}_img1{suffix}", folder / f"{stem}_img2{suffix}"
                if img1.is_file() and img2.is_file():
                    occ = folder / f"{stem}_occ.png"
                    self.samples.append(
                        {
                            "name": stem,
                            "image1": img1,
                            "image2": img2,
                            "flow": flo,
                            "occlusion": occ if occ.is_file() else None,
                        }
                    )
                    break
            else:  # the missing frame of the format the pair has one frame in (.ppm when it has none)
                pairs = [(folder / f"{stem}_img1{ext}", folder / f"{stem}_img2{ext}") for ext in (".ppm", ".png")]
                self._leave_out(flo, *next((pair for pair in pairs if any(map(Path.is_file, pair))), pairs[0]))
        if not self.samples and split_of is not None and any(folder.glob("*_flow.flo")):
            raise InputError(
                f"none of the pairs under {folder} is a {split} pair in {self.SPLIT_FILE}; "
                "use the split file of this copy of FlyingChairs, or remove it to list every pair"
            )
        if not self.samples:
            raise _empty(self.root, self.layout, self.name)
        self._warn_left_out()


def _chairs_split(folder: Path):
    """A function of a pair's stem ("00042") to its split code ("1" training, "2" validation) read from
    FlyingChairs_train_val.txt next to `folder` or in it; None when there is no split file."""
    candidates = [place / FlyingChairs.SPLIT_FILE for place in (folder.parent, folder)]
    path = next((candidate for candidate in candidates if candidate.is_file()), None)
    if path is None:
        return None
    codes = path.read_text(errors="replace").split()
    if not codes or set(codes) - {"1", "2"}:
        raise InputError(f"{path} is not a FlyingChairs split file (one 1 = training or 2 = validation per line)")

    def split_of(stem: str) -> str:
        if not stem.isdigit() or not 1 <= int(stem) <= len(codes):
            raise InputError(
                f"pair {stem} of {folder} is not in {path} ({len(codes)} pairs); "
                "use the split file of this copy of FlyingChairs, or remove it to list every pair"
            )
        return codes[int(stem) - 1]

    return split_of


class Sintel(FlowDataset):
    """MPI-Sintel: {clean,final}/<scene>/frame_NNNN.png, flow/<scene>/frame_NNNN.flo,
    occlusions/<scene>/frame_NNNN.png (255 = occluded), invalid/<scene>/frame_NNNN.png (255 =
    invalid). Root is the dataset folder (holding `training/`) or the split folder itself.
    Only pairs with ground-truth flow are listed."""

    layout = (
        "MPI-Sintel layout: <root>/training/{clean,final}/<scene>/frame_NNNN.png "
        "and <root>/training/flow/<scene>/frame_NNNN.flo"
    )

    def __init__(self, root: str | Path, split: str = "training", dstype: str = "clean"):
        super().__init__()
        if dstype not in ("clean", "final"):
            raise InputError(f"Sintel pass must be 'clean' or 'final', got {dstype!r}")
        self.name = f"sintel-{dstype}"
        self.dstype = dstype
        self.root = _root(root, self.layout, self.name)
        base = self.root / split if (self.root / split).is_dir() else self.root
        self.base = base
        for flo in sorted(base.glob("flow/*/frame_*.flo")):
            scene = flo.parent.name
            match = re.fullmatch(r"frame_(\d+)\.flo", flo.name)
            if not match:
                continue
            index, digits = int(match.group(1)), len(match.group(1))
            img1 = base / dstype / scene / f"frame_{index:0{digits}d}.png"
            img2 = base / dstype / scene / f"frame_{index + 1:0{digits}d}.png"
            if not (img1.is_file() and img2.is_file()):
                self._leave_out(flo, img1, img2)
                continue
            occ = base / "occlusions" / scene / f"{flo.stem}.png"
            inv = base / "invalid" / scene / f"{flo.stem}.png"
            self.samples.append(
                {
                    "name": f"{scene}/{flo.stem}",
                    "image1": img1,
                    "image2": img2,
                    "flow": flo,
                    "occlusion": occ if occ.is_file() else None,
                    "invalid": inv if inv.is_file() else None,
                }
            )
        if not self.samples:
            no_gt = any(base.glob(f"{dstype}/*/frame_*.png")) and not (base / "flow").is_dir()
            raise _empty(self.root, self.layout, self.name, frames_without_gt=no_gt)
        self._warn_left_out()

    def load(self, record: dict) -> dict:
        flow, valid = _flow_from_flo(record["flow"])
        if record["invalid"] is not None:
            invalid = _mask_png(record["invalid"])
            _check_mask_size(invalid, record["invalid"], flow, record["flow"])
            valid = valid & ~invalid
            flow = flow * valid
        occlusion = _mask_png(record["occlusion"]).float() if record["occlusion"] is not None else None
        return _flow_item(record, flow, valid, occlusion)


class KITTI(FlowDataset):
    """KITTI flow 2015 (image_2/NNNNNN_10.png, _11.png) or 2012 (colored_0/), ground truth in
    flow_occ/ (all pixels, occ=True) or flow_noc/ (non-occluded only). 16-bit PNG, sparse.

    With occ=True and both flow_occ and flow_noc present, `occlusion` marks the pixels valid in
    flow_occ but not in flow_noc (KITTI's own occluded region), so epe_noc / epe_occ can be split.
    """

    def __init__(self, root: str | Path, year: int = 2015, split: str = "training", occ: bool = True):
        super().__init__()
        year = int(year)
        if year not in (2012, 2015):
            raise InputError(f"KITTI year must be 2012 or 2015, got {year}")
        self.name = f"kitti{year}"
        images = "image_2" if year == 2015 else "colored_0"
        self.layout = (
            f"KITTI {year} layout: <root>/{split}/{images}/NNNNNN_10.png, NNNNNN_11.png "
            f"and <root>/{split}/flow_occ/NNNNNN_10.png"
        )
        self.root = _root(root, self.layout, self.name)
        base = self.root / split if (self.root / split).is_dir() else self.root
        gt_dir = base / ("flow_occ" if occ else "flow_noc")
        for gt in sorted(gt_dir.glob("*_10.png")):
            stem = gt.name[: -len("_10.png")]
            img1, img2 = base / images / f"{stem}_10.png", base / images / f"{stem}_11.png"
            if not (img1.is_file() and img2.is_file()):
                self._leave_out(gt, img1, img2)
                continue
            noc = base / "flow_noc" / gt.name
            self.samples.append(
                {
                    "name": f"{stem}_10",
                    "image1": img1,
                    "image2": img2,
                    "flow": gt,
                    "noc": noc if occ and noc.is_file() else None,
                }
            )
        if not self.samples:
            has_frames = any((base / images).glob("*_10.png"))
            raise _empty(self.root, self.layout, self.name, frames_without_gt=has_frames and not gt_dir.is_dir())
        self._warn_left_out()

    def load(self, record: dict) -> dict:
        flow, valid = _flow_from_kitti(record["flow"])
        occlusion = None
        if record["noc"] is not None:
            _, valid_noc = _flow_from_kitti(record["noc"])
            _check_mask_size(valid_noc, record["noc"], flow, record["flow"])
            occlusion = (valid & ~valid_noc).float()
        return _flow_item(record, flow, valid, occlusion)


class Middlebury(_FloPairs):
    """Middlebury flow: other-data/<scene>/frame10.png, frame11.png and
    other-gt-flow/<scene>/flow10.flo (values >= 1e9 = unknown -> invalid)."""

    name = "middlebury"
    layout = (
        "Middlebury flow layout: <root>/other-data/<scene>/frame10.png, frame11.png "
        "and <root>/other-gt-flow/<scene>/flow10.flo"
    )

    def __init__(self, root: str | Path):
        super().__init__()
        self.root = _root(root, self.layout, self.name)
        for flo in sorted(self.root.glob("other-gt-flow/*/flow10.flo")):
            scene = flo.parent.name
            img1 = self.root / "other-data" / scene / "frame10.png"
            img2 = self.root / "other-data" / scene / "frame11.png"
            if img1.is_file() and img2.is_file():
                self.samples.append({"name": scene, "image1": img1, "image2": img2, "flow": flo})
            else:
                self._leave_out(flo, img1, img2)
        if not self.samples:
            is_eval_data = self.root.name == "eval-data" and any(self.root.glob("*/frame10.png"))
            has_frames = is_eval_data or any(self.root.glob("*-data*/*/frame10.png"))
            no_gt = not (self.root / "other-gt-flow").is_dir()
            raise _empty(self.root, self.layout, self.name, frames_without_gt=has_frames and no_gt)
        self._warn_left_out()


def _stereo_item(left: Path, right: Path, disparity: np.ndarray, valid: np.ndarray, name: str) -> dict:
    disparity = np.where(valid, disparity, 0.0).astype(np.float32)
    disp = torch.from_numpy(disparity)[None]
    return {
        "image1": _image(left),
        "image2": _image(right),
        "disparity": disp,
        "flow": torch.cat((-disp, torch.zeros_like(disp)), dim=0),
        "valid": torch.from_numpy(valid)[None],
        "occlusion": None,
        "name": name,
    }


class MiddleburyStereo(FlowDataset):
    """Middlebury 2014 stereo layout: <scene>/im0.png (left), im1.png (right), disp0GT.pfm (left
    disparity in pixels; inf = unknown). image1 = left, image2 = right."""

    name = "middlebury-stereo"
    layout = "Middlebury stereo layout: <root>/<scene>/im0.png, im1.png, disp0GT.pfm"

    def __init__(self, root: str | Path):
        super().__init__()
        self.root = _root(root, self.layout, self.name)
        for gt in sorted(self.root.glob("*/disp0GT.pfm")):
            left, right = gt.parent / "im0.png", gt.parent / "im1.png"
            if left.is_file() and right.is_file():
                self.samples.append({"name": gt.parent.name, "left": left, "right": right, "disparity": gt})
            else:
                self._leave_out(gt, left, right)
        if not self.samples:
            raise _empty(self.root, self.layout, self.name, frames_without_gt=any(self.root.glob("*/im0.png")))
        self._warn_left_out()

    def load(self, record: dict) -> dict:
        disparity = np.asarray(flow_formats.read_pfm(record["disparity"]), dtype=np.float32)
        if disparity.ndim == 3:
            disparity = disparity[..., 0]
        valid = np.isfinite(disparity) & (disparity > 0)
        return _stereo_item(record["left"], record["right"], disparity, valid, record["name"])


class KITTIStereo(FlowDataset):
    """KITTI stereo, 2015 layout: image_2/NNNNNN_10.png (left), image_3/NNNNNN_10.png (right),
    disp_occ_0/NNNNNN_10.png; 2012 layout: colored_0/ (left), colored_1/ (right), disp_occ/.
    Disparity PNGs are 16-bit, disparity = value / 256, 0 = unknown."""

    name = "kitti-stereo"
    layout = (
        "KITTI stereo layout: <root>/training/image_2/NNNNNN_10.png, image_3/NNNNNN_10.png, disp_occ_0/NNNNNN_10.png "
        "(KITTI 2015) or <root>/training/colored_0/, colored_1/, disp_occ/ (KITTI 2012)"
    )
    # (left, right, ground truth) folders of KITTI 2015, then of KITTI 2012
    FOLDERS = (("image_2", "image_3", "disp_occ_0"), ("colored_0", "colored_1", "disp_occ"))

    def __init__(self, root: str | Path, split: str = "training"):
        super().__init__()
        self.root = _root(root, self.layout, self.name)
        base = self.root / split if (self.root / split).is_dir() else self.root
        for left_dir, right_dir, gt_dir in self.FOLDERS:
            self.left_out = []
            for gt in sorted(base.glob(f"{gt_dir}/*_10.png")):
                left, right = base / left_dir / gt.name, base / right_dir / gt.name
                if left.is_file() and right.is_file():
                    self.samples.append({"name": gt.stem, "left": left, "right": right, "disparity": gt})
                else:
                    self._leave_out(gt, left, right)
            if self.samples:
                break
        if not self.samples:
            has_frames = any(any(base.glob(f"{left_dir}/*_10.png")) for left_dir, _, _ in self.FOLDERS)
            no_gt = not any((base / gt_dir).is_dir() for _, _, gt_dir in self.FOLDERS)
            raise _empty(self.root, self.layout, self.name, frames_without_gt=has_frames and no_gt)
        self._warn_left_out()

    def load(self, record: dict) -> dict:
        result = flow_formats.read_disparity_png(record["disparity"])
        if isinstance(result, tuple):
            disparity, valid = (np.asarray(r) for r in result)
        else:
            disparity = np.asarray(result)
            valid = disparity > 0
        disparity = disparity.astype(np.float32)
        if disparity.ndim == 3:
            disparity = disparity[..., 0]
        valid = valid.astype(bool).reshape(disparity.shape) & np.isfinite(disparity)
        return _stereo_item(record["left"], record["right"], disparity, valid, record["name"])


class UnlabeledFrames:
    """Consecutive frame tuples from any mix of video files, frame folders and globs.

    `frames=2` yields pairs, `frames=3` triplets; frames within a tuple are `step` apart and
    successive tuples start `stride` frames apart. Tuples never straddle two sources. Iterating
    yields dicts with `images` (list of [3,H,W]), `image1`, `image2` (and `image3`), and `name`
    ("<folder>:<first frame file>" or "<video>:<first frame index>"). Videos are streamed, never
    loaded whole. `len()` is exact for frame folders and uses the container's frame-count
    estimate (duration x fps) for videos.
    """

    layout = "video files (.mp4, .avi, ...) or folders of image frames"

    def __init__(self, sources, frames: int = 2, step: int = 1, stride: int = 1):
        if isinstance(sources, (str, Path)):
            sources = [sources]
        if frames < 2:
            raise InputError(f"frames must be 2 or more, got {frames}")
        if step < 1 or stride < 1:
            raise InputError(f"step and stride must be at least 1, got step={step}, stride={stride}")
        self.frames, self.step, self.stride = int(frames), int(step), int(stride)
        self.sources: list[tuple[str, object]] = []  # ("video", Path) or ("frames", [Path, ...])
        for source in sources:
            path = Path(source).expanduser()
            if path.is_file() and media.is_video(path):
                self.sources.append(("video", path))
            elif path.is_file():
                raise InputError(f"{path} is neither a video file nor a folder of frames; give {self.layout}")
            else:
                frames_list = [Path(p) for p in media.list_frames(str(source))]
                if not frames_list:
                    raise InputError(f"no image frames found in {source}; give {self.layout}")
                self.sources.append(("frames", frames_list))
        if not self.sources:
            raise InputError(f"no sources given; give {self.layout}")

    @property
    def span(self) -> int:
        return (self.frames - 1) * self.step

    def _starts(self, count: int) -> range:
        return range(0, max(0, count - self.span), self.stride)

    def __len__(self) -> int:
        total = 0
        for kind, source in self.sources:
            if kind == "frames":
                total += len(self._starts(len(source)))
            else:
                total += len(self._starts(_video_length(source)))
        return total

    def __iter__(self) -> Iterator[dict]:
        for kind, source in self.sources:
            if kind == "frames":
                yield from self._from_frames(source)
            else:
                yield from self._from_video(source)

    def _tuple(self, images: list[torch.Tensor], name: str) -> dict:
        item = {"images": images, "name": name}
        for i, image in enumerate(images):
            item[f"image{i + 1}"] = image
        return item

    def _from_frames(self, paths: list[Path]) -> Iterator[dict]:
        cache: dict[int, torch.Tensor] = {}
        label = paths[0].parent.name or str(paths[0].parent)
        for start in self._starts(len(paths)):
            indices = [start + k * self.step for k in range(self.frames)]
            for index in indices:
                if index not in cache:
                    cache[index] = _image(paths[index])
            for old in [i for i in cache if i < start]:
                del cache[old]
            yield self._tuple([cache[i] for i in indices], f"{label}:{paths[start].name}")

    def _from_video(self, path: Path) -> Iterator[dict]:
        window: dict[int, torch.Tensor] = {}
        next_start = 0
        reader = media.VideoReader(path)
        try:
            for index, frame in enumerate(reader):
                window[index] = _as_image_tensor(frame)
                last = next_start + self.span
                while index >= last:
                    indices = [next_start + k * self.step for k in range(self.frames)]
                    yield self._tuple([window[i] for i in indices], f"{path.name}:{next_start}")
                    next_start += self.stride
                    last = next_start + self.span
                for old in [i for i in window if i < next_start]:
                    del window[old]
        finally:
            close = getattr(reader, "close", None)
            if close is not None:
                close()


def _as_image_tensor(frame) -> torch.Tensor:
    """A decoded video frame as [3,H,W] float in [0,1] (accepts the reader's tensor or an HxWx3 array)."""
    if isinstance(frame, torch.Tensor):
        if frame.dim() == 4:
            frame = frame[0]
        if frame.shape[0] != 3 and frame.shape[-1] == 3:
            frame = frame.permute(2, 0, 1)
        return frame.float() / 255.0 if frame.dtype == torch.uint8 else frame.float()
    array = np.asarray(frame)
    tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
    return tensor.float() / 255.0 if array.dtype == np.uint8 else tensor.float()


def _video_length(path: Path) -> int:
    with media.VideoReader(path) as reader:
        return int(reader.num_frames or 0)


STEREO_DATASETS = ("middlebury-stereo", "kitti-stereo")
DATASETS = ("sintel-clean", "sintel-final", "kitti2015", "kitti2012", "chairs", "middlebury") + STEREO_DATASETS


def parse_dataset_spec(spec: str, *, weighted: bool = False) -> list[tuple[str, str, float]]:
    """A `NAME:ROOT` spec (`NAME:ROOT:WEIGHT` when `weighted`) -> [(dataset, root, weight)]; `sintel` is the
    clean and the final pass, each with half the weight. Spaces around each part are dropped ("chairs: data").
    Raises ValueError saying what is expected."""
    expected = "NAME:ROOT" + (" or NAME:ROOT:WEIGHT" if weighted else "")
    name, sep, root = spec.partition(":")
    name, root, weight = name.strip().lower(), root.strip(), 1.0
    names = f"sintel, {', '.join(DATASETS)}"
    if sep and name and name not in ("sintel",) + DATASETS:
        raise ValueError(f"{spec!r}: unknown dataset {name!r}; expected {expected} with NAME one of {names}")
    if not sep or not root:
        raise ValueError(f"{spec!r}: expected {expected} with NAME one of {names}")
    if weighted and ":" in root:
        head, _, tail = root.rpartition(":")
        head = head.strip()
        try:
            weight, root = float(tail), head
        except ValueError:  # a colon inside the folder name
            pass
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"{spec!r}: the weight must be a positive number, e.g. {name}:{head}:2")
        if not root:  # "chairs::2"
            raise ValueError(f"{spec!r}: expected {expected} with NAME one of {names}")
    if name == "sintel":
        return [("sintel-clean", root, weight / 2), ("sintel-final", root, weight / 2)]
    return [(name, root, weight)]


def make_dataset(name: str, root: str | Path, **kwargs) -> FlowDataset:
    """A reader by benchmark name: sintel-clean, sintel-final, kitti2015, kitti2012, chairs,
    middlebury, middlebury-stereo, kitti-stereo. Extra keywords go to the reader."""
    key = name.lower().strip()
    if key in ("sintel-clean", "sintel-final"):
        return Sintel(root, dstype=key.split("-")[1], **kwargs)
    if key in ("kitti2015", "kitti2012", "kitti"):
        return KITTI(root, year=2012 if key == "kitti2012" else 2015, **kwargs)
    if key in ("chairs", "flyingchairs"):
        return FlyingChairs(root, **kwargs)
    if key == "middlebury":
        return Middlebury(root, **kwargs)
    if key == "middlebury-stereo":
        return MiddleburyStereo(root, **kwargs)
    if key == "kitti-stereo":
        return KITTIStereo(root, **kwargs)
    raise InputError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
