"""`flowcli adapt` under torchrun: two CPU processes (gloo) train one model with DistributedDataParallel through
both stages, step in lockstep, and rank 0 alone measures, writes the checkpoint and prints the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from test_adapt_run import base, footage  # noqa: F401  (module fixtures: tiny footage and a tiny untrained model)

from flowcli.checkpoint import load_checkpoint, read_metadata

pytestmark = pytest.mark.slow


def _torchrun_adapt(footage, base, output, *budget: str) -> subprocess.CompletedProcess:  # noqa: F811
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FLOWCLI_CORR": "torch"}
    env.pop("WORLD_SIZE", None)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "flowcli.cli.main", "adapt", str(footage), "-w", str(base), "-o", str(output), *budget,
        "--stage1-fraction", "0.5", "--batch-size", "1", "--crop", "64x64", "--lr", "1e-3",
        "--transform", "superpixel_segments=24", "--device", "cpu", "--json", "-q",
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=output.parent)


def test_torchrun_two_processes_train_one_model_through_both_stages(footage, base, tmp_path):  # noqa: F811
    output = tmp_path / "ddp.safetensors"
    run = _torchrun_adapt(footage, base, output, "--steps", "4")
    assert run.returncode == 0, run.stderr[-3000:]

    report = json.loads(run.stdout)  # one JSON document: rank 1 prints nothing
    assert report["steps"] == 4
    assert report["stages"] == {"photometric": 2, "total": 4}
    provenance = read_metadata(output)["flowcli.provenance"]
    assert provenance["stages"] == {"photometric": 2, "distillation": 2}
    assert provenance["complete"] is True
    assert provenance["processes"] == 2 and provenance["config"]["batch_size"] == 1

    trained, untrained = load_checkpoint(output), load_checkpoint(base)
    changed = [name for name, value in trained.state_dict().items()
               if not torch.equal(value, untrained.state_dict()[name])]  # fmt: skip
    assert changed, "two processes ran 4 steps but the weights did not move"
    assert not list(tmp_path.glob("ddp.adapt")), "the resume state is removed after success"


def test_torchrun_a_budget_too_short_is_refused_once(footage, base, tmp_path):  # noqa: F811
    output = tmp_path / "short.safetensors"
    run = _torchrun_adapt(footage, base, output, "--minutes", "0.001")
    assert run.returncode != 0
    refusals = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(refusals) == 1 and "--minutes 0.001" in refusals[0], run.stderr[-3000:]  # rank 0 speaks for both
    assert "flowcli/" not in run.stderr, "no traceback from flowcli (torchrun prints its own when a process fails)"
    assert not output.exists()
