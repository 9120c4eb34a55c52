"""The user's footage for `flowcli adapt`: sequences of frames, the tuples drawn from them, the
held-out slice and a fingerprint for the checkpoint's provenance.

A source is a video file, a folder or a quoted glob. A folder's own images (natural order) form one
sequence, each video in it another, and its subfolders are searched the same way, so a dataset
folder such as Sintel's `training/clean` (one subfolder per scene) gives one sequence per scene. A
glob's images form one sequence (natural order, whatever folders they are in), each video it matches
another. Videos are decoded once into an uint8 cache file (memory-mapped, random access) in the run
folder; a video in a folder or glob that cannot be decoded is skipped with a warning, a video given
as a source itself is an error.

Frame sizes are read from the image headers up front: frames that cannot be read are skipped with a
warning (and every tuple that needs them); frames of different sizes may be in different sequences,
but the frames of one tuple must agree (an error naming the two files otherwise).

Stereo footage (`stereo=True`): rectified left/right pairs, from two folders (left, right), a folder
holding `left/` and `right/` (or KITTI's `image_2/` and `image_3/`) subfolders, a folder of
`*left*` / `*right*` files (e.g. `desk_left.png`, `desk_right.png`), Middlebury-style scene folders
(`<scene>/im0.png`, `im1.png`) or a .txt list of `LEFT RIGHT` pairs, one a line, read as `flowcli
stereo --pairs` reads one (flowcli.io.pair_list: split as a shell would, relative to the list's
folder). The pairs of one source are a stereo sequence in natural order (consecutive in time for
`--temporal`).
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from flowcli.io.pair_list import ListedPair, read_image_pairs
from flowcli.console import say, warn
from flowcli.errors import InputError
from flowcli.io import media

MIN_SIDE = 64
FINGERPRINT_SAMPLES = 64


@dataclass
class Sequence:
    """Frames in time order. `frames[i]` is a Path (mono), a (left, right) pair of Paths (stereo), or
    an index into the decoded video cache `video_cache` (mono video)."""

    label: str
    frames: list
    sizes: list  # per frame (h, w), or None where the frame cannot be read
    video: Path | None = None
    video_cache: Path | None = None
    source: str = ""

    def __len__(self) -> int:
        return len(self.frames)


@dataclass
class Footage:
    sequences: list[Sequence]
    stereo: bool = False
    skipped: list[str] = field(default_factory=list)  # unreadable frames
    skipped_videos: list[str] = field(default_factory=list)  # undecodable videos of folders and globs

    # ------------------------------------------------------------------ tuples

    def tuples(self, length: int, step: int = 1) -> list[tuple[int, int]]:
        """(sequence, start) of every usable tuple of `length` time steps `step` apart.

        Mono: `length` frames; stereo: `length` time steps of (left, right). Tuples with an
        unreadable frame are left out; frames of different sizes within a tuple raise InputError.
        """
        span = (length - 1) * step
        out = []
        for s, seq in enumerate(self.sequences):
            for start in range(len(seq) - span):
                indices = [start + k * step for k in range(length)]
                sizes = [seq.sizes[i] for i in indices]
                if any(size is None for size in sizes):
                    continue
                if len(set(sizes)) > 1:
                    neighbours = zip(indices, indices[1:], strict=False)
                    a, b = next((i, j) for i, j in neighbours if seq.sizes[i] != seq.sizes[j])
                    raise InputError(
                        f"{seq.label}: {self.frame_name(s, a)} is {_hw(seq.sizes[a])} but {self.frame_name(s, b)} is "
                        f"{_hw(seq.sizes[b])} (height x width); the frames of one sequence must share a size (put them "
                        "in separate folders or resize them)"
                    )
                out.append((s, start))
        return out

    def frame_name(self, seq: int, index: int) -> str:
        frame = self.sequences[seq].frames[index]
        if isinstance(frame, tuple):
            return f"{frame[0].name}|{frame[1].name}"
        if isinstance(frame, Path):
            return frame.name
        return f"{self.sequences[seq].label}#{frame}"

    def tuple_size(self, seq: int, start: int) -> tuple[int, int]:
        return self.sequences[seq].sizes[start]

    def load(self, seq: int, start: int, length: int, step: int = 1) -> torch.Tensor:
        """The frames of a tuple as [T, 3, H, W] float in [0, 1] (stereo: L, R of each time step)."""
        sequence = self.sequences[seq]
        images = []
        for k in range(length):
            frame = sequence.frames[start + k * step]
            if isinstance(frame, tuple):
                images.extend(media.read_image(p) for p in frame)
            elif isinstance(frame, Path):
                images.append(media.read_image(frame))
            else:
                images.append(_video_frame(sequence, frame))
        sizes = {tuple(image.shape[-2:]) for image in images}
        if len(sizes) > 1:
            shown = ", ".join(map(_hw, sorted(sizes)))
            raise InputError(f"{sequence.label}: the frames of one tuple differ in size ({shown}, height x width)")
        return torch.stack(images)

    # ------------------------------------------------------------------ split

    def split(
        self, tuples: list[tuple[int, int]], fraction: float, span: int
    ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """(train, held-out): the last `fraction` of each sequence's tuples are held out, and training
        tuples never share a frame with held-out ones. Shares are spread over sequences by size. A
        fraction that would leave nothing to train on holds out fewer tuples, as many as leave some."""
        if fraction <= 0 or len(tuples) < 2:
            return list(tuples), []
        by_seq: dict[int, list[int]] = {}
        for s, start in tuples:
            by_seq.setdefault(s, []).append(start)
        want = max(1, round(fraction * len(tuples)))
        train, held = self._split_off(by_seq, len(tuples), want, span)
        if train:
            return train, held
        # So large a share leaves no training tuple: bisect for the largest share that leaves some.
        best, low, high = None, 1, want - 1
        while low <= high:
            middle = (low + high) // 2
            train, held = self._split_off(by_seq, len(tuples), middle, span)
            if train:
                best, low = (train, held), middle + 1
            else:
                high = middle - 1
        return best or (list(tuples), list(tuples))

    def _split_off(
        self, by_seq: dict[int, list[int]], total: int, want: int, span: int
    ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """(train, held-out) with `want` of the `total` tuples held out; train may come out empty."""
        # Largest-remainder apportionment of `want` held-out tuples over the sequences.
        quotas = {s: want * len(v) / total for s, v in by_seq.items()}
        counts = {s: int(q) for s, q in quotas.items()}
        for s in sorted(quotas, key=lambda s: (counts[s] - quotas[s], s))[: want - sum(counts.values())]:
            counts[s] += 1
        train, held = [], []
        for s, starts in by_seq.items():
            k = min(counts[s], len(starts))
            held_starts = starts[len(starts) - k :] if k else []
            cut = held_starts[0] if held_starts else math.inf
            held += [(s, v) for v in held_starts]
            train += [(s, v) for v in starts if v + span < cut]
        # The same frames can be in two sequences (a folder given twice, or a folder and its subfolder):
        # a training tuple may not use a frame that a held-out tuple uses in any sequence.
        held_frames = {key for s, v in held for key in self._frame_keys(s, v, span)}
        train = [(s, v) for s, v in train if held_frames.isdisjoint(self._frame_keys(s, v, span))]
        return train, held

    def _frame_keys(self, seq: int, start: int, span: int) -> list:
        """What identifies the frames start .. start + span of a sequence, whichever source named them."""
        sequence = self.sequences[seq]
        keys = []
        for frame in sequence.frames[start : start + span + 1]:
            if isinstance(frame, (Path, tuple)):
                keys += [_resolved(p) for p in (frame if isinstance(frame, tuple) else (frame,))]
            else:
                keys.append((_resolved(sequence.video), frame) if sequence.video is not None else (seq, frame))
        return keys

    # ------------------------------------------------------------------ provenance

    def fingerprint(self) -> str:
        """sha256 over every sequence's length, frame names and file sizes, plus the content of up to
        FINGERPRINT_SAMPLES evenly spaced frame files (and the first and last MiB of each video).

        What the files are, not how the sources were spelt: a label holds a glob's text or a folder's
        path relative to the source, so it is left out (`dir/*.png` and `./dir/*.png` are one footage)."""
        digest = hashlib.sha256()
        files: list[Path] = []
        for seq in self.sequences:
            digest.update(f"{len(seq)}\0".encode())
            if seq.video is not None:
                size = seq.video.stat().st_size
                digest.update(f"{seq.video.name}\0{size}\0".encode())
                with open(seq.video, "rb") as f:
                    digest.update(f.read(1 << 20))
                    f.seek(max(0, size - (1 << 20)))
                    digest.update(f.read())
                continue
            for frame in seq.frames:
                for path in frame if isinstance(frame, tuple) else (frame,):
                    digest.update(f"{path.name}\0{_file_size(path)}\0".encode())
                    files.append(path)
        if files:
            picks = sorted(
                {round(i * (len(files) - 1) / max(1, FINGERPRINT_SAMPLES - 1)) for i in range(FINGERPRINT_SAMPLES)}
            )
            for i in picks:
                try:
                    digest.update(files[i].read_bytes())
                except OSError:
                    digest.update(b"unreadable")
        return digest.hexdigest()

    def summary(self) -> dict:
        return {
            "sequences": len(self.sequences),
            "frames": sum(len(s) for s in self.sequences),
            "sources": sorted({s.source for s in self.sequences}),
            "stereo": self.stereo,
        }

    def min_size(self) -> tuple[int, int]:
        sizes = [size for seq in self.sequences for size in seq.sizes if size is not None]
        return min(h for h, _ in sizes), min(w for _, w in sizes)


def _hw(size) -> str:
    """A frame size as HEIGHTxWIDTH, the order --crop takes."""
    return f"{size[0]}x{size[1]}" if size else "unreadable"


@functools.lru_cache(maxsize=1 << 16)
def _resolved(path: Path) -> str:
    try:
        return str(path.resolve())
    except OSError:
        return str(path.absolute())


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


# ----------------------------------------------------------------------------- scanning


def _header_size(path: Path) -> tuple[int, int] | None:
    """(h, w) from the image header, None when the file cannot be read as an image."""
    from flowcli.io.media import image_size

    try:
        w, h = image_size(path)  # as the frame will be read: EXIF orientation applied
    except InputError:
        return None
    return (h, w)


def _image_sequence(paths: list[Path], label: str, source: str, skipped: list[str]) -> Sequence:
    sizes = []
    for path in paths:
        size = _header_size(path)
        if size is None:
            skipped.append(str(path))
        sizes.append(size)
    return Sequence(label=label, frames=list(paths), sizes=sizes, source=source)


def _walk(
    folder: Path,
    root: Path,
    source: str,
    skipped: list[str],
    skipped_videos: list[str],
    cache_dir: Path | None,
    max_frames,
    walked: set[str] | None = None,
) -> list[Sequence]:
    walked = set() if walked is None else walked
    if _resolved(folder) in walked:  # a link back to a folder already searched (`latest -> ..`): no loop
        return []
    walked.add(_resolved(folder))
    try:
        entries = sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=media.natural_sort_key)
        images = [p for p in entries if p.is_file() and p.suffix.lower() in media.IMAGE_SUFFIXES]
        videos = [p for p in entries if p.is_file() and media.is_video(p)]
        folders = [p for p in entries if p.is_dir() and not p.name.endswith(".adapt")]
    except OSError as error:  # no permission: a drive's lost+found, another user's folder
        if folder == root:
            raise InputError(f"cannot read the folder {folder}: {error.strerror}; check its permissions") from None
        warn(f"cannot read the folder {folder} ({error.strerror}); skipping it")
        return []
    out = []
    label = str(folder.relative_to(root.parent)) if folder != root else folder.name or str(folder)
    if images:
        out.append(_image_sequence(images[:max_frames], label, source, skipped))
    out.extend(_decodable_videos(videos, source, skipped_videos, cache_dir, max_frames))
    for sub in folders:
        out.extend(_walk(sub, root, source, skipped, skipped_videos, cache_dir, max_frames, walked))
    return out


def _decodable_videos(videos, source, skipped_videos, cache_dir, max_frames) -> list[Sequence]:
    """The sequences of the videos a folder or glob holds; one that cannot be decoded is skipped, as an unreadable
    image is, so that one broken file among many does not stop the run."""
    out = []
    for video in videos:
        try:
            out.append(_video_sequence(video, source, cache_dir, max_frames))
        except InputError as error:
            warn(f"{error}; skipping it")  # the error names the file
            skipped_videos.append(str(video))
    return out


def _video_sequence(path: Path, source: str, cache_dir: Path | None, max_frames: int | None) -> Sequence:
    cache_dir = cache_dir or path.parent / ".flowcli-cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    stat = path.stat()
    key = hashlib.sha1(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\0{max_frames}".encode()).hexdigest()[:16]
    data, meta = cache_dir / f"{path.stem}-{key}.u8", cache_dir / f"{path.stem}-{key}.json"
    info = _cache_info(meta)
    if not (info and data.is_file() and data.stat().st_size == info["count"] * info["height"] * info["width"] * 3):
        count, size = 0, None
        tmp = data.with_suffix(".part")
        try:
            with media.VideoReader(path, max_frames=max_frames) as reader, open(tmp, "wb") as out:
                say(f"decoding {path.name} into the adaptation cache ({reader.num_frames or '?'} frames)")
                for frame in reader:
                    array = (frame.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
                    size = array.shape[:2]
                    out.write(array.tobytes())
                    count += 1
        except InputError:
            tmp.unlink(missing_ok=True)
            raise
        if size is None:
            tmp.unlink(missing_ok=True)
            raise InputError(f"{path}: no frame of the video could be decoded; the file is corrupt or empty")
        tmp.replace(data)
        meta_tmp = meta.with_suffix(".json.part")
        meta_tmp.write_text(json.dumps({"count": count, "height": size[0], "width": size[1]}))
        meta_tmp.replace(meta)  # atomic: an interrupted write leaves no half-written record to trip on later
    info = _cache_info(meta)
    size = (info["height"], info["width"])
    return Sequence(
        label=path.name, frames=list(range(info["count"])), sizes=[size] * info["count"], video=path,
        video_cache=data, source=source,
    )  # fmt: skip


def _cache_info(meta: Path) -> dict | None:
    """The record of a decoded video (frame count and size), None if it is missing or unreadable."""
    try:
        info = json.loads(meta.read_text())
        return info if all(isinstance(info.get(k), int) for k in ("count", "height", "width")) else None
    except (OSError, ValueError, AttributeError):
        return None


_VIDEO_MAPS: dict[str, np.memmap] = {}


def _video_frame(sequence: Sequence, index: int) -> torch.Tensor:
    key = str(sequence.video_cache)
    array = _VIDEO_MAPS.get(key)
    if array is None:
        h, w = sequence.sizes[0]
        array = np.memmap(sequence.video_cache, dtype=np.uint8, mode="r", shape=(len(sequence), h, w, 3))
        _VIDEO_MAPS[key] = array
    return torch.from_numpy(np.array(array[index])).permute(2, 0, 1).float() / 255.0


def scan_footage(
    sources: list[str | Path],
    *,
    stereo: bool = False,
    cache_dir: Path | None = None,
    max_frames: int | None = None,
    min_frames: int = 2,
) -> Footage:
    """Find the sequences of `sources`; every source must give at least `min_frames` frames in one sequence."""
    if not sources:
        raise InputError("no footage given; pass video files or folders of frames")
    if max_frames is not None and max_frames < min_frames:
        what = "stereo pairs" if stereo else "frames"
        temporal = " with --temporal" if min_frames == (2 if stereo else 3) else ""
        raise InputError(
            f"--max-frames {max_frames} keeps too few {what} of each sequence: adaptation needs at least "
            f"{min_frames}{temporal}; pass --max-frames {min_frames} or more"
        )
    skipped: list[str] = []
    skipped_videos: list[str] = []
    sequences: list[Sequence] = []
    stereo_sources = _stereo_sources(sources) if stereo else None
    for source in stereo_sources or sources:
        videos_before = len(skipped_videos)
        found = (
            _stereo_source(source, skipped, max_frames)
            if stereo
            else _mono_source(source, skipped, skipped_videos, cache_dir, max_frames)
        )
        label = (
            source
            if isinstance(source, str)
            else " + ".join(map(str, source))
            if isinstance(source, tuple)
            else str(source)
        )
        readable = [sum(size is not None for size in seq.sizes) for seq in found]
        if not found or max(readable) < min_frames:
            frames = max((len(seq) for seq in found), default=0)
            what = "stereo pair(s)" if stereo else "frame(s)"
            bad_videos = len(skipped_videos) - videos_before
            detail = (
                f"{frames} {what}"
                + (f", {frames - max(readable)} unreadable" if found and max(readable) < frames else "")
                + (f" ({bad_videos} undecodable video(s) skipped)" if bad_videos else "")
            )
            raise InputError(
                f"{label}: {detail}; adaptation needs at least {min_frames} readable {what} in a sequence"
                + (" (--temporal needs 3)" if min_frames == 3 and not stereo else "")
            )
        sequences.extend(found)
    if skipped:
        # paths, not names: scenes of a dataset share frame names (alley_1/frame_0001.png, cave_2/frame_0001.png)
        shown = ", ".join(skipped[:3]) + (f" and {len(skipped) - 3} more" if len(skipped) > 3 else "")
        warn(f"skipping {len(skipped)} unreadable frame(s) ({shown}) and the pairs that need them")
    for seq in sequences:
        for size, frame in zip(seq.sizes, seq.frames, strict=True):
            if size is not None and min(size) < MIN_SIDE:
                name = frame[0].name if isinstance(frame, tuple) else getattr(frame, "name", frame)
                raise InputError(
                    f"{seq.label}: {name} is {_hw(size)} (height x width); frames must be at least "
                    f"{MIN_SIDE}x{MIN_SIDE} pixels"
                )
    return Footage(sequences=sequences, stereo=stereo, skipped=skipped, skipped_videos=skipped_videos)


def _mono_source(source, skipped, skipped_videos, cache_dir, max_frames) -> list[Sequence]:
    text = str(source)
    path = Path(text).expanduser()
    if path.is_file():
        if media.is_video(path):
            return [_video_sequence(path, text, cache_dir, max_frames)]
        raise InputError(f"{path} is neither a video nor a folder of frames; give videos, folders or a quoted glob")
    if path.is_dir():
        return _walk(path, path, text, skipped, skipped_videos, cache_dir, max_frames)
    if any(c in text for c in "*?["):
        # a quoted glob reaches us with its ~ unexpanded, as a quoted folder does
        pattern = os.path.expanduser(text)
        # hidden files are skipped, as in a folder: among them the temp files of writes in progress
        matches = [Path(m) for m in glob.glob(pattern, recursive=True)]
        files = sorted((p for p in matches if p.is_file() and not p.name.startswith(".")), key=media.natural_sort_key)
        images = [p for p in files if p.suffix.lower() in media.IMAGE_SUFFIXES]
        videos = [p for p in files if media.is_video(p)]
        if not images and not videos:
            hint = media._literal_bracket_hint(pattern)  # `take [2]/*.png`: glob reads [2] as one character
            raise InputError(f"no images or videos found in {text}{hint or '; check the pattern'}")
        found = [_image_sequence(images[:max_frames], text, text, skipped)] if images else []
        return found + _decodable_videos(videos, text, skipped_videos, cache_dir, max_frames)
    raise InputError(f"{text} does not exist; check the path")


# ----------------------------------------------------------------------------- stereo

_LEFT_RIGHT_DIRS = (("left", "right"), ("image_2", "image_3"), ("colored_0", "colored_1"), ("cam0", "cam1"))
_LEFT_TOKEN = re.compile(r"(left|Left|LEFT|_l\b|_L\b)")
_RIGHT_OF = {"left": "right", "Left": "Right", "LEFT": "RIGHT", "_l": "_r", "_L": "_R"}


def _stereo_sources(sources) -> list:
    """Two folders of images given together are one left/right source; anything else stays itself."""
    paths = [Path(str(s)).expanduser() for s in sources]

    def plain_folder(p: Path) -> bool:  # images, none of them named as one side of a pair
        images = _images(p) if p.is_dir() else []
        return bool(images) and not any(_LEFT_TOKEN.search(i.stem) for i in images)

    if len(paths) == 2:
        plain = [plain_folder(p) for p in paths]
        if all(plain):
            return [(paths[0], paths[1])]
        if any(plain) and not _stereo_layout(paths[plain.index(True)]):
            # one side's images next to a path that is not the other side's: blame that path, not the folder
            folder, other = (paths[0], paths[1]) if plain[0] else (paths[1], paths[0])
            _check_other_side(folder, other, "right" if plain[0] else "left")
    return [str(s) for s in sources]


def _stereo_layout(folder: Path) -> bool:
    """Whether a folder is a stereo source on its own: left/right subfolders or Middlebury-style scene folders."""
    if any((folder / left).is_dir() and (folder / right).is_dir() for left, right in _LEFT_RIGHT_DIRS):
        return True
    return any((d / "im0.png").is_file() and (d / "im1.png").is_file() for d in folder.iterdir() if d.is_dir())


def _check_other_side(folder: Path, other: Path, side: str) -> None:
    """Refuse `other`, given with `folder` (images of one side) as LEFT_DIR RIGHT_DIR, where it cannot be the
    `side` folder: missing, a file other than a pairs list, or a folder without images."""
    usage = "--stereo LEFT_DIR RIGHT_DIR takes two folders of images"
    if not other.exists():
        raise InputError(f"{other} does not exist, so the frames of {folder} have no {side} partners; check the path")
    if other.is_file() and other.suffix.lower() != ".txt":
        raise InputError(f"{other} is not a folder, so the frames of {folder} have no {side} partners; {usage}")
    if other.is_dir() and not _images(other) and not _stereo_layout(other):
        raise InputError(f"{other} holds no images, so the frames of {folder} have no {side} partners; {usage}")


def _images(folder: Path) -> list[Path]:
    return sorted(
        (
            p
            for p in folder.iterdir()
            if p.is_file() and p.suffix.lower() in media.IMAGE_SUFFIXES and not p.name.startswith(".")
        ),
        key=media.natural_sort_key,
    )


def _stereo_sequence(
    pairs: list[tuple[Path, Path]], label: str, source: str, skipped: list[str], wheres: list[str] | None = None
) -> Sequence:
    """`wheres`: the LIST:LINE of each pair, for pairs from a .txt list, to name the line of a pair in error."""
    sizes = []
    for index, (left, right) in enumerate(pairs):
        a, b = _header_size(left), _header_size(right)
        for path, size in ((left, a), (right, b)):
            if size is None:
                skipped.append(str(path))
        if a is not None and b is not None and a != b:
            raise InputError(
                (f"{wheres[index]}: " if wheres else "")
                + f"{left} is {_hw(a)} but {right} is {_hw(b)} (height x width); a rectified stereo pair must share "
                "a size"
            )
        sizes.append(a if (a is not None and b is not None) else None)
    return Sequence(label=label, frames=list(pairs), sizes=sizes, source=source)


def _match_folders(left: Path, right: Path) -> list[tuple[Path, Path]]:
    lefts, rights = _images(left), _images(right)
    by_name = {p.stem: p for p in rights}
    if lefts and all(p.stem in by_name for p in lefts):
        return [(p, by_name[p.stem]) for p in lefts]
    if len(lefts) != len(rights):
        raise InputError(
            f"{left} has {len(lefts)} images but {right} has {len(rights)}; left and right folders must pair up "
            "(same file names, or the same count in natural order)"
        )
    return list(zip(lefts, rights, strict=True))


def _listed_pairs(path: Path) -> list[ListedPair]:
    """The pairs of a .txt list, read as `flowcli stereo --pairs` reads one (flowcli.io.pair_list)."""
    try:
        path.open("rb").close()  # checked here for adapt's words: pair_list's error names --pairs, not an adapt option
    except OSError as error:
        raise InputError(f"cannot read the list of stereo pairs {path}: {error.strerror}") from None
    return list(read_image_pairs(str(path)))


def _stereo_source(source, skipped, max_frames) -> list[Sequence]:
    if isinstance(source, tuple):
        pairs = _match_folders(*source)[:max_frames]
        return [_stereo_sequence(pairs, f"{source[0].name}+{source[1].name}", f"{source[0]} {source[1]}", skipped)]
    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() == ".txt":
        listed = _listed_pairs(path)[:max_frames]
        pairs = [(pair.first, pair.second) for pair in listed]
        return [_stereo_sequence(pairs, path.name, source, skipped, [pair.where for pair in listed])]
    if not path.is_dir():
        raise InputError(
            f"{source} is not a folder or a .txt list of pairs; --stereo takes LEFT_DIR RIGHT_DIR, a folder with "
            "left/ and right/ (or image_2/ and image_3/), a folder of *_left/*_right images, or a pairs .txt file"
        )
    for left_name, right_name in _LEFT_RIGHT_DIRS:
        left, right = path / left_name, path / right_name
        if left.is_dir() and right.is_dir():
            return [_stereo_sequence(_match_folders(left, right)[:max_frames], path.name, source, skipped)]
    images = _images(path)
    pairs = []
    names = {p.name: p for p in images}
    for image in images:
        # replace the side token where it matched (the last such place first), not the first look-alike:
        # `kitchen_light_l.png` pairs with `kitchen_light_r.png`
        for match in reversed(list(_LEFT_TOKEN.finditer(image.stem))):
            other = _RIGHT_OF[match.group()]
            partner = names.get(image.name[: match.start()] + other + image.name[match.end() :])
            if partner is not None:
                pairs.append((image, partner))
                break
    if pairs:
        return [_stereo_sequence(pairs[:max_frames], path.name, source, skipped)]
    scenes = [
        d
        for d in sorted(path.iterdir(), key=media.natural_sort_key)
        if (d / "im0.png").is_file() and (d / "im1.png").is_file()
    ]
    if scenes:
        pairs = [(d / "im0.png", d / "im1.png") for d in scenes]
        return [_stereo_sequence(pairs[:max_frames], path.name, source, skipped)]
    raise InputError(
        f"no stereo pairs found in {path}; expected left/ and right/ subfolders, *_left/*_right images, "
        "<scene>/im0.png + im1.png, or pass LEFT_DIR RIGHT_DIR"
    )
