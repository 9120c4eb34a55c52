"""flowcli.cli.run_record: the stamp that tells a resumed run which files its recorded settings made."""

from __future__ import annotations

import json
import os
import time

from flowcli.cli.run_record import STAMP, Entry, RunRecord

SETTINGS = {"weights": "ab" * 32, "step": 1, "scale": 1.0, "max_flow": None}


def _entries(**changes) -> list[Entry]:
    return [Entry("/data/clip.mp4", "clip.mp4", {**SETTINGS, **changes})]


def test_new_settings_are_stamped_between_older_and_newer_files(tmp_path):
    record = RunRecord(tmp_path, "estimate")
    older = tmp_path / "older.flo"
    older.write_bytes(b"left by an earlier run")
    os.utime(older, ns=(older.stat().st_atime_ns, time.time_ns() - 10**9))  # not in this clock tick of the file system
    record.write(_entries(), stamp=True)
    newer = tmp_path / "newer.flo"
    newer.write_bytes(b"made by this run")
    [since] = record.made_since(_entries())
    assert older.stat().st_mtime_ns < since <= newer.stat().st_mtime_ns
    assert json.loads(record.path.read_text()) == {"/data/clip.mp4": {**SETTINGS, STAMP: since}}


def test_a_stamp_stays_while_the_settings_do_and_only_a_run_afresh_makes_one(tmp_path):
    record = RunRecord(tmp_path, "estimate")
    record.write(_entries(), stamp=False)  # --resume on a folder without a record: its files are trusted
    assert record.made_since(_entries()) == [None]
    record.write(_entries(), stamp=True)  # the same settings, started afresh: nothing new to say
    assert record.made_since(_entries()) == [None]
    record.write(_entries(step=2), stamp=True)
    [since] = record.made_since(_entries(step=2))
    written = record.path.stat().st_mtime_ns
    for stamp in (True, False):  # a run of the same settings keeps the stamp, and the record is not rewritten
        record.write(_entries(step=2), stamp=stamp)
        assert record.made_since(_entries(step=2)) == [since] and record.path.stat().st_mtime_ns == written
    record.write(_entries(), stamp=True)
    assert record.made_since(_entries())[0] >= since


def test_an_unreadable_stamp_is_none_and_is_never_a_setting(tmp_path):
    record = RunRecord(tmp_path, "estimate")
    record.path.write_text(json.dumps({"/data/clip.mp4": {**SETTINGS, STAMP: "yesterday"}}))
    assert record.made_since(_entries() + [Entry(None, "stdin", SETTINGS)]) == [None, None]
    record.refuse_changed_settings(_entries())  # the stamp is not compared: no InputError
