"""The correlation and inference benchmarks run end to end (CPU, --smoke) and write their JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, out: Path, *extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("FLOWCLI_CORR", "TRITON_INTERPRET")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--smoke", "--out", str(out), *extra],
        check=False, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.lstrip().startswith("device:") and "|---" in proc.stdout
    return json.loads(out.read_text())


@pytest.mark.slow
def test_bench_correlation_smoke(tmp_path):
    report = _run("bench_correlation.py", tmp_path / "corr.json", "--levels", "5,6", "--batches", "2")
    rows = report["rows"]
    assert {r["op"] for r in rows} == {"corr", "warp"} and {r["dtype"] for r in rows} == {"fp32", "bf16"}
    assert all(r["fwd_ms"] > 0 and r["fwdbwd_ms"] > 0 and r["bytes_fwdbwd"] > r["bytes_fwd"] for r in rows)


@pytest.mark.slow
def test_bench_gpu_inference_smoke(tmp_path):
    report = _run("bench_gpu_inference.py", tmp_path / "infer.json", "--dtypes", "fp32")
    rows = {r["model"]: r for r in report["rows"]}
    assert rows["flowcli-torch"]["pairs_per_s"] > 0
    assert set(rows) == {"flowcli-triton", "flowcli-torch", "raft_small", "raft_large"}
