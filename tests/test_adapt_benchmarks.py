"""The adaptation benchmarks run end to end (tiny random model, 2 steps, CPU) and print their tables.

They are how the docs' adaptation numbers are reproduced, so a change to the library that breaks them
(a renamed option, a new config field) must fail here rather than when someone reruns them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--smoke", "--device", "cpu", *extra],
        check=False, capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_adapt_ablation_smoke(shared_data, tmp_path):
    out = tmp_path / "ablation.json"
    proc = _run("adapt_ablation.py", "--variants", "photometric-only,crop-only", "--json", str(out))
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows[1:]] == ["base (no adaptation)", "photometric-only", "crop-only"]
    results = json.loads(out.read_text())
    for variant in ("photometric-only", "crop-only"):
        assert results[variant]["steps"] == 2
        assert set(results[variant]["gt"]["after"]) == {"sintel-clean", "sintel-final"}


@pytest.mark.slow
def test_adapt_sintel_smoke(shared_data, tmp_path):
    out = tmp_path / "adapt.json"
    _run("adapt_sintel.py", "--occlusion", "range", "--json", str(out))
    result = json.loads(out.read_text())
    assert result["steps"] == 2 and set(result["gt"]["after"]) == {"sintel-clean", "sintel-final"}


@pytest.mark.slow
def test_kitti_outliers_splits_fl_all_by_motion_and_reports_every_decoder_level(shared_data, tmp_path):
    out = tmp_path / "outliers.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "kitti_outliers.py"), "flowcli-pwc-synth", "--json", str(out),
         "--root", str(shared_data / "flow" / "kitti2015")],
        check=False, capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (report,) = json.loads(out.read_text())
    assert sum(band["share_of_fl_all"] for band in report["bands"]) == pytest.approx(report["fl_all"], abs=1e-6)
    assert list(report["fast_by_level"]) == ["6", "5", "4", "3", "2"]
    assert report["fast_pixels"] > 0 and "Fl-all" in proc.stdout
