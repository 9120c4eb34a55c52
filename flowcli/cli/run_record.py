"""Which settings made the outputs in a folder, so that `--resume` refuses to mix two runs' files.

`flowcli estimate` and `flowcli stereo` keep one hidden JSON record per output folder and command,
OUT/.flowcli-estimate.json and OUT/.flowcli-stereo.json, mapping each source to the settings that decide
what its output files contain:

    {"/data/clip.mp4": {"max_flow": null, "scale": 1.0, "step": 1, "weights": "1f1343f81a2d..."}}

A source is keyed by the resolved path of its video file, or of its first image (estimate: of an image pair,
a folder or a glob alike, so the same frames give the same key however they are given); stereo keys by the
first pair's files (or its videos), sorted, so that --swap changes which file is the left view but not the key.
Estimate keys a video piped into stdin by -: --resume takes the same video piped again, matched by frame number.

Recorded settings (any of them changed is refused on --resume):

    estimate  weights (sha256), step (not for an explicit image pair, where it does not apply), scale,
              max_flow (the colours of vis and video)
    stereo    weights (sha256), step (for sequences: the frames of their video), swap (which view is the
              left one), the camera: focal, fy, cx, cy, baseline, doffs (all null without one; depth and
              point clouds), max_depth (depth, point clouds), max_disparity (the colours of vis and video),
              lr_threshold (occlusion masks, point clouds)

Each entry also records `names`: the {source} names of its sources (clip, or clip and clip-2 for the same
frames given twice). Inputs of one name get -2, -3... in the order given, so a resume with them in another order
would take one source's files as another's; a changed name is refused like a changed setting.

A setting counts even where it decided no file (--max-disparity without vis, a camera added to a run that had
none): the record does not say which files were written.

Not recorded, so a resume may change them: settings that change the numbers only at float rounding level
(--device, --precision, --batch-size, tiling by --max-pixels), and options that only add, rename or re-encode
files (the formats, --backward, --name, --max-frames, --fps, --ascii-ply, --json). Stereo's --sbs is not
recorded either: it changes what the inputs are, and so the keys and the file names, never one file's content.

A run writes its sources' entries once, after the model is loaded and before the first pair is computed,
replacing those sources' older entries and keeping other sources' ones (the file is read again and replaced
whole, through a temp file). One write per run, not per source: a --pairs list of 20,000 pairs is 20,000 sources.
With --resume the entries are compared first: a recorded setting that differs ends the run with an InputError
before anything is computed or written. A source without an entry (a folder written by an older flowcli, or
the record deleted) resumes as before, and its entry is written then.

Because the entry is written before the pairs run, the folder may still hold files of the settings it replaced:
an --overwrite run with a new --step interrupted halfway leaves the old run's files under names the resumed run
takes as done. So the entries of both commands are stamped (`write(..., stamp=True)`): an entry a run without --resume
writes with other settings than recorded, or for a source without an entry, gets "since", the file-system
time (ns) of the record's write, and `made_since` gives it to the resumed run, which takes an output file
modified before it as left by other settings and makes it again. An entry whose settings stay keeps its stamp;
one that --resume writes for a source without an entry gets none (its files are trusted, as before).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from flowcli.errors import InputError, OutputError
from flowcli.io.atomic import atomic_path

STAMP = "since"  # an entry's stamp (see the module docstring); not a setting, so never compared
NAMES = "names"  # the {source} names of an entry's sources (see refuse_changed_settings)


@dataclass(frozen=True)
class Entry:
    """One source's settings, as its command ran it now."""

    key: str | None  # None: a source that is never recorded
    label: str  # the source as given, for messages
    settings: dict
    name: str | None = None  # the {source} of its output names (clip, clip-2: the order of the inputs decides)


class RunRecord:
    """The record of one command in one output folder."""

    def __init__(self, directory: Path, command: str):
        self.directory = Path(directory)
        self.path = self.directory / f".flowcli-{command}.json"

    def read(self) -> dict[str, dict]:
        """Source key -> recorded settings; {} when there is no record yet."""
        try:
            record = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:  # ValueError: not JSON, or not UTF-8
            record = error
        if not isinstance(record, dict) or not all(isinstance(entry, dict) for entry in record.values()):
            raise OutputError(
                f"{self.path} is not a run record flowcli can read; delete it (--resume then trusts the outputs "
                "there, as before flowcli kept a record) or choose another -o"
            )
        return record

    def refuse_changed_settings(self, entries: list[Entry]) -> None:
        """InputError when the outputs of one of `entries`' sources were made with other recorded settings, or
        under other names: inputs given in another order swap the names of sources of one name (a, a-2), and
        each would take the other's files as done."""
        record = self.read()
        for entry in _with_names(entries):
            recorded = record.get(entry.key) if entry.key is not None else None
            if not recorded:
                continue
            changes = [
                f"{name.replace('_', '-')}: {_shown(name, recorded[name])} -> {_shown(name, value)}"
                for name, value in entry.settings.items()
                if name != NAMES and name in recorded and recorded[name] != value  # a newer setting is not compared
            ]
            if changes:
                raise InputError(
                    f"--resume: {self.directory} holds outputs of {entry.label} made with other settings "
                    f"({'; '.join(changes)}); resume with the same settings, or use --overwrite to start afresh"
                )
            # (after the settings: --swap changes the names too, and is the better message)
            if NAMES in recorded and recorded[NAMES] != entry.settings[NAMES]:
                raise InputError(
                    f"--resume: {self.directory} holds outputs of {entry.label} named {', '.join(recorded[NAMES])}, "
                    f"and this run names them {', '.join(entry.settings[NAMES])}: inputs of one name are given in "
                    "another order than when the run started, or one was added or left out; give them as then, or "
                    "use --overwrite to start afresh"
                )

    def made_since(self, entries: list[Entry]) -> list[int | None]:
        """Per entry, the file-system time (ns) from which its source's outputs were made with the recorded
        settings: an output modified before it was left by a run with other settings. None: not known."""
        record = self.read()
        stamps = [record.get(entry.key, {}).get(STAMP) if entry.key is not None else None for entry in entries]
        return [stamp if isinstance(stamp, int) else None for stamp in stamps]

    def write(self, entries: list[Entry], stamp: bool = False) -> None:
        """Record `entries`, keeping other sources' entries; a record that already says so is left untouched.
        With `stamp` (a run that starts its outputs afresh, not --resume), an entry with new settings is stamped
        with the time of this write; an entry whose settings stay keeps its stamp."""
        record = self.read()
        changed, stamped = {}, []
        for entry in _with_names(entries):
            if entry.key is None:
                continue
            recorded = record.get(entry.key)
            settings = dict(entry.settings)
            same = recorded is not None and all(name in recorded and recorded[name] == value
                                                for name, value in settings.items())
            if stamp and not same:
                stamped.append(entry.key)  # stamped below, once the time of the write is known
            else:
                if recorded is not None and STAMP in recorded:
                    settings[STAMP] = recorded[STAMP]
                if recorded == settings:
                    continue
            changed[entry.key] = settings
        if not changed:
            return
        record.update(changed)
        with atomic_path(self.path, overwrite=True) as temp:
            # the temp file's creation time, by the clock of the file system the outputs are written to: the
            # outputs of this run are modified after it, those left by earlier runs before
            now = temp.stat().st_mtime_ns
            for key in stamped:
                record[key][STAMP] = now
            temp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def output_done(path: Path, made_since: int | None) -> bool:
    """Whether --resume takes the output `path` as done. Files are published whole under their final name (temp file
    + rename), so one that exists is complete; but one modified before its source's settings were recorded
    (`made_since`, see `RunRecord.made_since`) was left by a run with other settings (an interrupted --overwrite run
    with a new --step), and is made again."""
    try:
        modified = os.lstat(path).st_mtime_ns  # lstat: a dangling link (a dropped git-annex file) is there too
    except OSError:
        return False
    return made_since is None or modified >= made_since


def kept_video_frames(path: Path, label: str, pairs: int | None, fps: float) -> int | None:
    """--resume: the frame count of a sequence's finished video if it is kept, None if it is to be made again (with
    a warning saying why): a video is kept when ffmpeg reads it, it has one frame per pair of this run (`pairs`;
    None where they are not known before decoding: the caller checks after) and it plays at `fps`. Another
    --max-frames or --fps made it otherwise; --fps is not in the record, as it changes no pair's files."""
    from flowcli.console import warn
    from flowcli.io.media import VideoReader

    try:
        with VideoReader(path) as reader:
            frames, played = reader.num_frames, reader.fps
    except InputError:  # not a video ffmpeg can read: made again
        frames = played = None
    if frames is None:
        warn(f"{path} cannot be read as a video: made again")
    elif pairs is not None and frames != pairs:
        warn(f"{path} has {frames} frame(s) but {label} gives {pairs} pair(s) (made by a run with other "
             "--max-frames): made again")  # fmt: skip
    elif played is not None and abs(played - fps) > 0.005 * fps:
        warn(f"{path} plays at {played:g} fps and this run asks for {fps:g} (--fps): made again")
    else:
        return frames
    return None


def _with_names(entries: list[Entry]) -> list[Entry]:
    """`entries` with the names of their key's sources as a setting (NAMES): the same frames given twice are one
    key with two names."""
    names: dict[str, list[str]] = {}
    for entry in entries:
        if entry.key is not None and entry.name is not None:
            names.setdefault(entry.key, []).append(entry.name)
    return [Entry(entry.key, entry.label, {**entry.settings, NAMES: sorted(names[entry.key])}, entry.name)
            if entry.key in names else entry for entry in entries]  # fmt: skip


def _shown(name: str, value) -> str:
    """A setting's value in a message: the start of a sha256, 'unset' for a default left to flowcli."""
    if value is None:
        return "unset"
    if name == "weights" and isinstance(value, str):
        return value[:12]
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)
