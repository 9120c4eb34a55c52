"""Every script in benchmarks/ still starts against today's library, and refuses bad input in one line.

`--help` runs each script in this process (its top-level imports and its argument parser), so a renamed
function or option fails here in a second rather than when someone reruns a benchmark. The refusals run
the scripts on a missing data folder, an unknown model, a bad device or no OpenCV: each must exit with
one `error: ...` line, never a traceback. End-to-end runs (--smoke) live in tests/test_adapt_benchmarks.py
and tests/test_correlation_benchmarks.py.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(path.name for path in BENCHMARKS.glob("*.py"))


@pytest.fixture
def run_script(monkeypatch):
    """run(name, *args): `python benchmarks/NAME ARGS` in this process; returns its exit code (None: it returned).

    The scripts set process-wide state (torch threads, grad mode, sys.path); all of it is put back afterwards."""
    threads, grad = torch.get_num_threads(), torch.is_grad_enabled()
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))

    def run(name: str, *args: str):
        path = BENCHMARKS / name
        monkeypatch.setattr(sys, "argv", [str(path), *args])
        try:
            runpy.run_path(str(path), run_name="__main__")
        except SystemExit as exit_:
            return exit_.code
        return None

    yield run
    torch.set_num_threads(threads)
    torch.set_grad_enabled(grad)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_runs(script, run_script, capsys):
    assert run_script(script, "--help") == 0
    assert capsys.readouterr().out.startswith(f"usage: {script}")


# {missing}: a folder that does not exist; {empty}: an empty one. The last item is a word the message must name.
REFUSALS = [
    ("checkpoint_speed_ab.py", ["flowcli-pwc-synth", "--data", "{empty}"], "{empty}"),
    ("motion_range.py", ["flowcli-pwc-synth", "--data", "{empty}"], "{empty}"),
    ("kitti_outliers.py", ["flowcli-pwc-synth", "--root", "{missing}"], "{missing}"),
    ("level_errors.py", ["flowcli-pwc-synth", "--root", "{missing}"], "{missing}"),
    ("occlusion_masks.py", ["--data", "{empty}"], "{empty}"),
    ("photometric_landscape.py", ["--data", "{empty}"], "{empty}"),
    ("scale_selection.py", ["--data", "{empty}"], "{empty}"),
    ("vertical_offset.py", ["--data", "{empty}"], "{empty}"),
    ("stereo_render.py", ["--data", "{empty}", "--out", "{empty}/sheet.png"], "{empty}"),
    ("face_aflw.py", ["--data", "{missing}"], "{missing}"),
    ("face_speed.py", ["--data", "{missing}"], "{missing}"),
    ("face_video.py", ["--data", "{missing}"], "{missing}"),
    ("adapt_sintel.py", ["--data", "{missing}"], "{missing}"),
    ("adapt_ablation.py", ["--data", "{missing}"], "{missing}"),
    ("exposure_range.py", ["no-such-model", "--scenes", "1"], "no-such-model"),
    ("illumination_change.py", ["flowcli-pwc-synth", "--data", "{missing}"], "{missing}"),
    ("scale_change.py", ["flowcli-pwc-synth", "--data", "{missing}"], "{missing}"),
    ("cast_shadow.py", ["flowcli-pwc-synth", "--data", "{missing}"], "{missing}"),
    ("object_motion.py", ["no-such-model"], "no-such-model"),
    ("onnx_speed.py", ["--weights", "no-such-model"], "no-such-model"),
    ("bench_correlation.py", ["--device", "no-such-device"], "--device"),
    ("bench_gpu_inference.py", ["--device", "no-such-device"], "--device"),
]


@pytest.mark.parametrize(("script", "args", "named"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_bad_input_is_one_line(script, args, named, run_script, tmp_path):
    places = {"{missing}": str(tmp_path / "missing"), "{empty}": str(tmp_path)}

    def fill(text: str) -> str:
        for key, value in places.items():
            text = text.replace(key, value)
        return text

    code = run_script(script, *map(fill, args))
    assert isinstance(code, str) and code.startswith("error: ") and "\n" not in code, code
    assert fill(named) in code


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
@pytest.mark.parametrize("script", ["bench_correlation.py", "bench_gpu_inference.py"])
def test_cuda_without_a_gpu_is_one_line(script, run_script):
    code = run_script(script, "--device", "cuda")
    assert isinstance(code, str) and code.startswith("error: --device cuda") and "\n" not in code, code


@pytest.mark.parametrize("script", ["classic_baselines.py", "stereo_middlebury.py"])
def test_without_opencv_is_one_line(script, run_script, monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` raises ImportError
    code = run_script(script)
    assert isinstance(code, str) and code.startswith("error: OpenCV") and "\n" not in code, code


def test_level_errors_refuses_an_item_no_name_contains(run_script, shared_data):
    code = run_script("level_errors.py", "flowcli-pwc-synth", "--root", str(shared_data / "flow" / "sintel"),
                      "--item", "no-such-scene")
    assert isinstance(code, str) and "\n" not in code and "'no-such-scene'" in code and "--item" in code, code


def test_scale_selection_refuses_an_unknown_dataset(run_script, capsys):
    assert run_script("scale_selection.py", "--datasets", "chairs,no-such-set") == 2
    assert "unknown dataset 'no-such-set'" in capsys.readouterr().err


def test_face_aflw_without_scipy_is_one_line(run_script, monkeypatch, shared_data):
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    code = run_script("face_aflw.py", "--data", str(shared_data / "face"))
    assert isinstance(code, str) and code.startswith("error: ") and "pip install scipy" in code and "\n" not in code


def test_face_aflw_puts_every_yaw_over_60_degrees_in_the_top_bin(monkeypatch):
    """The top bin ended at 91 degrees, so a face turned further (AFLW2000-3D has some) fell out of every bin;
    AFLW2000-3D's protocol bins |yaw| in [0, 30], (30, 60] and over 60."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    bins = runpy.run_path(str(BENCHMARKS / "face_aflw.py"), run_name="face_aflw")["bins"]
    result = bins([10.0, -95.0, 70.0], [1.0, 4.0, 2.0])
    assert result["0-30"] == 1.0 and result["30-60"] is None and result["60-90"] == 3.0


@pytest.mark.parametrize(
    ("script", "args"),
    [
        ("checkpoint_speed_ab.py", ["flowcli-pwc-synth", "flowcli-pwc-synth", "--rounds", "0"]),
        ("cpu_inference_ab.py", ["--repeats", "0"]),
        ("onnx_speed.py", ["--rounds", "0"]),
        ("exposure_range.py", ["flowcli-pwc-synth", "--scenes", "0"]),
        ("object_motion.py", ["flowcli-pwc-synth", "--scenes", "0"]),
        ("photometric_landscape.py", ["--steps", "0"]),
    ],
)
def test_a_count_of_zero_is_a_usage_error(script, args, run_script, capsys):
    """--rounds 0 and the like ended in a statistics or division traceback after the model loaded."""
    assert run_script(script, *args) == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_stereo_render_does_not_replace_an_existing_picture_without_overwrite(run_script, tmp_path, capsys):
    """By default it re-rendered docs/img/stereo_oakd.png over the committed picture."""
    picture = tmp_path / "sheet.png"
    picture.write_bytes(b"mine")
    assert run_script("stereo_render.py", "--out", str(picture)) == 2
    assert "pass --overwrite" in capsys.readouterr().err and picture.read_bytes() == b"mine"


def _tracking_quality(monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    return runpy.run_path(str(BENCHMARKS / "face_video.py"), run_name="face_video")["tracking_quality"]


@pytest.mark.parametrize(("frames", "census_runs"), [(1, []), (2, [2, 2])])
def test_face_video_on_a_clip_too_short_for_a_value_reports_it_as_n_a(frames, census_runs, monkeypatch):
    """A 1- or 2-frame clip printed NaN jitter, then failed dividing by it, or census_consistency raised for one fit."""
    tracking_quality = _tracking_quality(monkeypatch)
    independent = [np.full((68, 2), 10.0 * t) for t in range(frames)]
    joint = [points + [3.0, 4.0] for points in independent]
    census_runs_seen = []

    def census(fits):
        census_runs_seen.append(len(fits))
        return 0.25

    quality, notes = tracking_quality(independent, joint, ["fit"] * frames, ["fit"] * frames, census)
    json.dumps(quality, allow_nan=False)  # no NaN
    assert quality["jitter_px_independent"] is quality["jitter_px_video_mode"] is quality["jitter_reduction"] is None
    assert quality["mean_distance_video_vs_independent_px"] == pytest.approx(5.0)
    assert census_runs_seen == census_runs
    assert quality["census_distance_video_mode"] == (0.25 if census_runs else None)
    assert any("at least 3 frames" in note for note in notes)
    assert any("at least 2 frames" in note for note in notes) == (frames == 1)


def test_face_video_reports_jitter_and_census_of_a_clip_of_three_frames(monkeypatch):
    tracking_quality = _tracking_quality(monkeypatch)
    independent = [np.full((68, 2), x) for x in (0.0, 4.0, 0.0)]  # second difference: (-8, -8) at frame 1
    joint = [np.full((68, 2), x) for x in (0.0, 1.0, 0.0)]
    quality, notes = tracking_quality(independent, joint, ["fit"] * 3, ["fit"] * 3, lambda fits: 0.5)
    assert quality["jitter_px_independent"] == pytest.approx(8 * np.sqrt(2))
    assert quality["jitter_reduction"] == pytest.approx(0.75)
    assert quality["census_distance_independent"] == 0.5 and notes == []


def test_adapt_sintel_labels_training_pairs_as_such_when_nothing_was_held_out(monkeypatch):
    """With nothing held out, adapt measures its training pairs; the benchmark's table called them held-out."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    table = runpy.run_path(str(BENCHMARKS / "adapt_sintel.py"), run_name="adapt_sintel")["table"]
    for measured_on, label in (("training", "| training-pair photo |"), ("heldout", "| held-out photo |")):
        held = {"before": {"photo": 0.3}, "after": {"photo": 0.2}, "measured_on": measured_on}
        assert any(line.startswith(label) for line in table({"heldout": held}))


def test_level_errors_finds_a_translation_in_the_coarse_cost_volume_and_the_output():
    """The cost-volume peak is read in the flow's (x, y) order and in cells of the level: a textured frame moved
    by (+64, -32) px peaks within one cell of (+2, -1) at level 5 almost everywhere, and the output follows it."""
    script = runpy.run_path(str(BENCHMARKS / "level_errors.py"))
    from flowcli.models import load_model

    generator = torch.Generator().manual_seed(0)
    texture = sum(  # smooth noise at two scales, larger than the frame so both frames are crops of it
        weight * torch.nn.functional.interpolate(torch.rand(1, 3, 352 // k, 512 // k, generator=generator),
                                                 size=(352, 512), mode="bilinear", align_corners=False)
        for weight, k in ((0.6, 8), (0.4, 4))
    )[0]  # fmt: skip
    item = {
        "image1": texture[:, 0:320, 64:512],  # a point at texture (X, Y) is at (X - 64, Y) in frame 1
        "image2": texture[:, 32:352, 0:448],  # and at (X, Y - 32) in frame 2: it moves (+64, -32) px
        "flow": torch.tensor([64.0, -32.0])[:, None, None].expand(2, 320, 448).clone(),
        "valid": torch.ones(1, 320, 448),
        "name": "moved",
    }
    report = script["level_report"](load_model("flowcli-pwc-synth").eval(), item)
    assert report["cost_volume_peak_within_one_cell"]["level 5"]["all"] > 0.7
    output = report["bands"]["all"]["levels"]["output"]
    assert output["epe"] < 4 and abs(output["uv"][0] - 64) < 3 and abs(output["uv"][1] + 32) < 3
    assert report["bands"]["all"]["zero_flow_epe"] == pytest.approx(71.55, abs=0.01)


def test_a_json_report_in_a_folder_that_does_not_exist_yet_is_written(run_script, shared_data, tmp_path):
    """--json runs/x.json on a fresh checkout (no runs/) crashed with a traceback after the whole run."""
    report = tmp_path / "runs" / "new" / "levels.json"
    assert run_script("level_errors.py", "flowcli-pwc-synth", "--root", str(shared_data / "flow" / "sintel"),
                      "--item", "alley_1", "--json", str(report)) is None  # fmt: skip
    assert json.loads(report.read_text())[0]["item"] == "alley_1/frame_0002"
