"""`flowcli adapt` end to end on tiny synthetic footage (flowcli.synth) and a tiny model, on the CPU:
the photometric loss goes down, the checkpoint describes itself, Ctrl-C saves a resumable state and
the resumed run continues the same schedule, and the triplet / stereo / stereo-video modes run."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from flowcli.adapt import AdaptConfig, adapt
from flowcli.errors import FlowcliError

TINY = dict(pyramid_channels=(8, 8, 8, 8, 8, 8), decoder_channels=(8, 8), context_channels=(8,), context_dilations=(1,))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _write(path: Path, image: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, (image.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8))


@pytest.fixture(scope="module")
def footage(tmp_path_factory) -> Path:
    """Two sequences of five 64x96 frames: layered scenes moving a few pixels per frame."""
    from flowcli.synth import SynthConfig, generate_sample

    root = tmp_path_factory.mktemp("footage")
    for seq in range(2):
        cfg = SynthConfig(height=64, width=96, num_frames=5, min_layers=2, max_layers=3, layer_translation=3,
                          background_translation=2, rotation_deg=2, photometric=False)  # fmt: skip
        sample = generate_sample(cfg, torch.Generator().manual_seed(seq))
        for i, image in enumerate(sample.images):
            _write(root / f"shot{seq}" / f"frame_{i}.png", image)
    return root


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny untrained model: its flow is noisy (several px), so the photometric loss has room to fall."""
    from flowcli.checkpoint import save_checkpoint
    from flowcli.models.pwc import FlowNet, FlowNetConfig

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("base") / "tiny.safetensors"
    model = FlowNet(FlowNetConfig(**TINY))
    for head in (model.decoder.predict_flow[0], model.context.body[-1][0]):  # FlowNet starts these near zero
        torch.nn.init.kaiming_normal_(head.weight, a=0.1, nonlinearity="leaky_relu")
    save_checkpoint(model, path, provenance={"note": "random init"})
    return path


def _config(footage, base, output, **overrides) -> AdaptConfig:
    settings = dict(sources=[str(footage)], output=str(output), weights=str(base), steps=6, batch_size=2, crop=(64, 64),
                    lr=1e-3, warmup=2, teacher_margin=16, transforms={"superpixel_segments": 24})  # fmt: skip
    settings.update(overrides)
    return AdaptConfig(**settings)


def _interrupt_at(config: AdaptConfig, step: int) -> None:
    """Run adapt until `step` is done and stop it there as a Ctrl-C would: the state is saved, to resume."""

    def interrupt(done, record):
        if done == step:
            raise KeyboardInterrupt

    with pytest.raises(FlowcliError, match="to resume"):
        adapt(config, quiet=True, callback=interrupt)


def _photometric(model_path: Path, footage: Path) -> float:
    """Mean photometric error of the forward flow over every pixel of every pair (zero padding outside the
    frame, so flow that leaves the image is not excused)."""
    from flowcli.adapt.losses import LossWeights, photometric_error
    from flowcli.checkpoint import load_checkpoint
    from flowcli.inference import estimate_flow
    from flowcli.io.media import read_image
    from flowcli.ops.warp import backward_warp

    model = load_checkpoint(model_path)
    errors = []
    for shot in sorted(footage.iterdir()):
        frames = [read_image(p) for p in sorted(shot.glob("*.png"))]
        for a, b in zip(frames, frames[1:], strict=False):
            flow = estimate_flow(model, a, b).forward
            errors.append(float(photometric_error(a[None], backward_warp(b[None], flow), LossWeights()).mean()))
    return sum(errors) / len(errors)


def test_twenty_steps_lower_the_photometric_loss_and_the_checkpoint_describes_itself(footage, base, tmp_path):
    from flowcli.checkpoint import read_metadata
    from flowcli.models import load_model

    output = tmp_path / "adapted.safetensors"
    result = adapt(_config(footage, base, output, steps=20), quiet=True)
    assert result["steps"] == 20 and output.is_file()
    assert _photometric(output, footage) < 0.9 * _photometric(base, footage)
    photo = [r["photo"] for r in result["history"]]
    assert sum(photo[-5:]) < sum(photo[:5])
    assert {r["stage"] for r in result["history"]} == {1, 2}  # both stages ran
    assert any(r.get("distill_px", 0) >= 0 for r in result["history"] if r["stage"] == 2)

    meta = read_metadata(output)
    prov = meta["flowcli.provenance"]
    assert meta["flowcli.config"]["pyramid_channels"] == [8] * 6
    assert prov["base_weights"]["spec"] == base.name and len(prov["base_weights"]["sha256"]) == 64  # no local folders
    assert prov["footage"]["sources"] == [footage.name] and prov["config"]["output"] == "adapted.safetensors"
    assert len(prov["footage"]["fingerprint"]) == 64 and prov["footage"]["sequences"] == 2
    assert prov["steps"] == 20 and prov["stages"]["photometric"] + prov["stages"]["distillation"] == 20
    assert "photo" in prov["losses"] and prov["date"]
    distill = [r["distill"] for r in result["history"] if "distill" in r]  # stage 2 only: its mean where it ran
    assert prov["losses"]["distill"] == pytest.approx(sum(distill) / len(distill), abs=1e-5)
    assert set(prov["heldout_before"]) >= {"photo", "photo_all", "occ"}
    report = json.loads((tmp_path / "adapted.report.json").read_text())
    assert report["heldout"]["after"] == prov["heldout_after"]
    assert not (tmp_path / "adapted.adapt").exists()  # the run folder is cleaned up after success
    load_model(str(output))  # usable wherever --weights is


def test_ctrl_c_saves_state_and_the_resumed_run_continues_the_schedule(footage, base, tmp_path):
    straight = adapt(_config(footage, base, tmp_path / "straight.safetensors"), quiet=True)

    output = tmp_path / "resumed.safetensors"

    def interrupt(step, record):
        if step == 4:  # in the distillation stage (stage 1 is 3 of the 6 steps here)
            raise KeyboardInterrupt

    with pytest.raises(FlowcliError) as error:
        adapt(_config(footage, base, output), quiet=True, callback=interrupt)
    message = str(error.value)
    assert "interrupted at step 4/6" in message and "Run the same command again to resume" in message
    assert (tmp_path / "resumed.adapt" / "state.pt").is_file()
    assert (tmp_path / "resumed.adapt" / "last.safetensors").is_file()
    assert not output.exists()

    with pytest.raises(FlowcliError, match="different settings"):
        adapt(_config(footage, base, output, lr=2e-3), quiet=True)
    resumed = adapt(_config(footage, base, output), quiet=True)
    assert [r["stage"] for r in resumed["history"]] == [1, 1, 1, 2, 2, 2]
    for a, b in zip(straight["history"], resumed["history"], strict=True):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5)
    assert resumed["heldout"]["before"] == straight["heldout"]["before"]


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_an_interrupt_right_after_the_optimiser_step_saves_a_whole_step(footage, base, tmp_path, signal_name):
    """A Ctrl-C (or a job's SIGTERM, which flowcli turns into one) between the weight update and the step count
    saved updated weights under the previous step number: the resumed run repeated that step on moved weights."""
    import signal

    from torch.optim.optimizer import register_optimizer_step_post_hook

    from flowcli.cli.main import _sigterm_as_ctrl_c

    straight = adapt(_config(footage, base, tmp_path / "straight.safetensors"), quiet=True)
    calls = []

    def interrupt_after_fourth_update(optimizer, args, kwargs):
        calls.append(1)
        if len(calls) == 4:
            signal.raise_signal(getattr(signal, signal_name))

    output = tmp_path / "resumed.safetensors"
    handle = register_optimizer_step_post_hook(interrupt_after_fourth_update)
    try:
        with _sigterm_as_ctrl_c(), pytest.raises(FlowcliError, match="interrupted at step 4/6"):
            adapt(_config(footage, base, output), quiet=True)
    finally:
        handle.remove()
    resumed = adapt(_config(footage, base, output), quiet=True)
    for a, b in zip(straight["history"], resumed["history"], strict=True):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5)


def test_a_state_saved_before_a_setting_existed_still_resumes(footage, base, tmp_path):
    """A run interrupted under an older flowcli lacks settings added since; at their defaults it resumes."""
    output = tmp_path / "old.safetensors"

    def interrupt(step, record):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(FlowcliError):
        adapt(_config(footage, base, output), quiet=True, callback=interrupt)
    state_path = tmp_path / "old.adapt" / "state.pt"
    state = torch.load(state_path, weights_only=True)
    saved = json.loads(state["config"])
    del saved["teacher_scales"], saved["anchor_synth"]  # (1.0,) and {}: a tuple and a dict at their defaults
    state["config"] = json.dumps(saved, sort_keys=True)
    torch.save(state, state_path)
    with pytest.raises(FlowcliError, match="different settings"):  # a setting that is not at its default
        adapt(_config(footage, base, output, teacher_scales=(2.0,)), quiet=True)
    assert adapt(_config(footage, base, output), quiet=True)["steps"] == 6


def test_ctrl_c_during_the_final_measurement_says_how_to_finish(footage, base, tmp_path, monkeypatch):
    """Training is done and saved; the message says so, and the same command measures and writes the output."""
    from flowcli.adapt import trainer

    output = tmp_path / "measured.safetensors"
    measure = trainer.heldout_metrics
    calls = []

    def interrupt_after(*args, **kwargs):  # the first call measures the base, the second the trained model
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return measure(*args, **kwargs)

    monkeypatch.setattr(trainer, "heldout_metrics", interrupt_after)
    with pytest.raises(FlowcliError) as error:
        adapt(_config(footage, base, output, steps=2, checkpoint_every=50), quiet=True)
    message = str(error.value)
    assert "interrupted while measuring the trained model" in message and "training is done (2/2 steps)" in message
    assert "state saved in" in message and "last.safetensors" in message and "Run the same command again" in message
    assert (tmp_path / "measured.adapt" / "state.pt").is_file() and not output.exists()
    monkeypatch.setattr(trainer, "heldout_metrics", measure)
    result = adapt(_config(footage, base, output, steps=2, checkpoint_every=50), quiet=True)
    assert result["steps"] == 2 and len(result["history"]) == 2 and output.is_file()


def test_triplets_with_temporal_consistency(footage, base, tmp_path):
    result = adapt(_config(footage, base, tmp_path / "t.safetensors", steps=4, temporal=True, batch_size=1,
                           teacher_flip=True, teacher_scales=(1.0, 1.5)), quiet=True)  # fmt: skip
    assert [r["stage"] for r in result["history"]] == [1, 1, 2, 2]
    assert all("temporal" in r for r in result["history"])
    assert all("distill" in r for r in result["history"] if r["stage"] == 2)


@pytest.fixture(scope="module")
def stereo_footage(tmp_path_factory) -> Path:
    """A rectified stereo video: left frames moving over time, right = left shifted 3 px to the left."""
    from flowcli.synth import SynthConfig, generate_sample

    root = tmp_path_factory.mktemp("stereo")
    cfg = SynthConfig(height=64, width=96, num_frames=3, min_layers=1, max_layers=2, layer_translation=2)
    sample = generate_sample(cfg, torch.Generator().manual_seed(5))
    for i, image in enumerate(sample.images):
        _write(root / "left" / f"{i:04d}.png", image)
        _write(root / "right" / f"{i:04d}.png", torch.roll(image, -3, dims=-1))
    return root


def test_stereo_pairs_and_stereo_video(stereo_footage, base, tmp_path):
    pairs = adapt(_config(stereo_footage, base, tmp_path / "s.safetensors", steps=2, stereo=True, batch_size=1,
                          losses={"zero_vertical": True}, transforms={}), quiet=True)  # fmt: skip
    assert all("vertical" in r and r["stage"] == 1 for r in pairs["history"])  # stereo: photometric stage only
    assert "vertical" in pairs["heldout"]["after"]
    video = adapt(_config(stereo_footage, base, tmp_path / "v.safetensors", steps=2, stereo=True, temporal=True,
                          batch_size=1, val_fraction=0.0, transforms={}), quiet=True)  # fmt: skip
    assert all({"quad", "triangle", "vertical"} <= set(r) for r in video["history"])


@pytest.fixture
def fake_clock(monkeypatch):
    """The budget's clock, advanced by hand: `clock.now` in seconds; `clock.measure` (0 by default) is what each
    held-out measurement (before and after training) costs on it."""
    from flowcli.adapt import trainer

    class Clock:
        now = 0.0
        measure = 0.0

    clock = Clock()
    monkeypatch.setattr(trainer, "clock", lambda: clock.now)
    measure = trainer.heldout_metrics

    def timed_measure(*args, **kwargs):
        clock.now += clock.measure
        return measure(*args, **kwargs)

    monkeypatch.setattr(trainer, "heldout_metrics", timed_measure)
    return clock


def test_a_minutes_budget_shorter_than_the_timing_stops_at_the_budget(footage, base, tmp_path, fake_clock):
    """10 s a step and 5 s a measurement against a 30-second budget: the timing (CALIBRATION_STEPS steps) does not fit,
    and the run stops when the measured step time says the next one would not, report included."""
    from flowcli.adapt.trainer import CALIBRATION_STEPS

    fake_clock.measure = 5.0

    def tick(step, record):
        fake_clock.now += 10.0

    cfg = _config(footage, base, tmp_path / "m.safetensors", steps=None, minutes=0.5, batch_size=1)
    with pytest.warns(UserWarning, match="allows only 2 training step"):
        result = adapt(cfg, quiet=True, callback=tick)
    # 5 s measuring before, 20 s of steps, 5 s measuring after: the budget to the second
    assert result["steps"] == 2 < CALIBRATION_STEPS and fake_clock.now == 30.0
    assert result["stages"] == {"photometric": 2, "total": 2}  # the steps timed count as training, stage 1 here


def test_a_minutes_budget_ends_within_one_step_of_it(footage, base, tmp_path, fake_clock):
    fake_clock.measure = 3.0

    def tick(step, record):
        fake_clock.now += 2.0

    cfg = _config(footage, base, tmp_path / "m.safetensors", steps=None, minutes=1.0, batch_size=1)
    result = adapt(cfg, quiet=True, callback=tick)
    assert result["steps"] == 27 and fake_clock.now == 60.0  # 3 + 27 * 2 + 3

    def slows_down(step, record):  # the machine gets busy after the timing: 4 s a step from step 10 on
        fake_clock.now += 2.0 if step < 10 else 4.0

    fake_clock.now = 0.0  # photometric only: no second timing to catch the change
    cfg = _config(footage, base, tmp_path / "s.safetensors", steps=None, minutes=1.0, batch_size=1, distill=False,
                  transforms={})  # fmt: skip
    with pytest.warns(UserWarning, match="too few to adapt the model much"):  # stopped before step 20
        result = adapt(cfg, quiet=True, callback=slows_down)
    assert 60.0 - 4.0 <= fake_clock.now <= 60.0 + 4.0 and result["steps"] == result["stages"]["total"] < 27
    # the schedule shrank with the steps the slowdown left, so the learning rate still decayed to its floor (10 %)
    assert result["history"][-1]["lr"] < 0.15 * cfg.lr


def test_a_minutes_budget_slowing_in_the_photometric_stage_still_leaves_distillation(
    footage, base, tmp_path, fake_clock
):
    """Photometric steps that slow from 2 to 8 s after the timing: the plan is split again on the time left, so
    stage 1 still decays its learning rate and a distillation stage still runs (longer than its own timing, which
    a shorter budget would leave it: see the test below), instead of stage 1 taking it all."""

    def slows_down(step, record):
        fake_clock.now += 2.0 if step < 6 else 8.0

    cfg = _config(footage, base, tmp_path / "m.safetensors", steps=None, minutes=2.5, batch_size=1)
    result = adapt(cfg, quiet=True, callback=slows_down)
    photometric = [record for record in result["history"] if record["stage"] == 1]
    assert len(photometric) == result["stages"]["photometric"] < result["stages"]["total"] == result["steps"]
    assert photometric[-1]["lr"] < 0.15 * cfg.lr and result["history"][-1]["lr"] < 0.2 * cfg.lr


@pytest.mark.parametrize("distillation_seconds", [10.0, 4.5])
def test_a_minutes_budget_spent_while_timing_distillation_skips_that_stage(
    footage, base, tmp_path, fake_clock, monkeypatch, distillation_seconds
):
    """Distillation steps much slower than photometric ones: 10 s, and the budget runs out while they are timed; 4.5 s,
    and their timing (CALIBRATION_STEPS) uses up the rest. Either way no distillation step would run on a schedule
    sized to the time, only in the learning rate's warm-up, so the stage is skipped and the stage-1 model kept."""
    from flowcli.adapt import trainer
    from flowcli.checkpoint import load_checkpoint, read_metadata

    freeze, snapshots = trainer.freeze, []

    def keep_snapshot(model):  # the teacher: the model as stage 1 left it
        snapshots.append(freeze(model))
        return snapshots[-1]

    monkeypatch.setattr(trainer, "freeze", keep_snapshot)

    def tick(step, record):
        fake_clock.now += {1: 2.0, 2: distillation_seconds}[record["stage"]]

    output = tmp_path / "m.safetensors"
    cfg = _config(footage, base, output, steps=None, minutes=1.0, batch_size=1)
    with pytest.warns(UserWarning, match="too little time for a distillation stage"):
        result = adapt(cfg, quiet=True, callback=tick)
    # 18 photometric steps (36 s) as in the test below; the distillation steps timed after them are undone
    assert result["stages"] == {"photometric": 18, "total": 18} and result["steps"] == 18
    assert [r["stage"] for r in result["history"]] == [1] * 18 and result["history"][-1]["lr"] < 0.15 * cfg.lr
    assert fake_clock.now == {10.0: 56.0, 4.5: 58.5}[distillation_seconds]
    stage1_model = snapshots[0].state_dict()
    assert all(torch.equal(v, stage1_model[k]) for k, v in load_checkpoint(output).state_dict().items())
    provenance = read_metadata(output)["flowcli.provenance"]
    assert provenance["stages"] == {"photometric": 18, "distillation": 0} and provenance["teachers"] == []


def test_a_resumed_minutes_run_continues_within_the_time_left(footage, base, tmp_path, fake_clock):
    def tick(step, record):
        fake_clock.now += 10.0

    def interrupt(step, record):
        tick(step, record)
        if step == 2:
            raise KeyboardInterrupt

    cfg = _config(footage, base, tmp_path / "m.safetensors", steps=None, minutes=40 / 60, batch_size=1)
    with pytest.raises(FlowcliError, match="to resume"):
        adapt(cfg, quiet=True, callback=interrupt)
    steps_run = []

    def record_and_tick(step, record):
        steps_run.append(step)
        tick(step, record)

    with pytest.warns(UserWarning, match="allows only 4 training step"):
        resumed = adapt(cfg, quiet=True, callback=record_and_tick)
    assert steps_run == [3, 4] and len(resumed["history"]) == 4 and fake_clock.now == 40.0  # 20 s before, 20 after


def test_a_minutes_budget_that_cannot_fit_one_step_is_refused(footage, base, tmp_path, fake_clock, capsys):
    from flowcli.errors import InputError

    def tick(step, record):
        fake_clock.now += 40.0

    fake_clock.measure = 20.0  # measuring before and after: 40 s of the 30
    output = tmp_path / "m.safetensors"
    cfg = _config(footage, base, output, steps=None, minutes=0.5, batch_size=1)
    steps_run = []
    capsys.readouterr()
    with pytest.raises(InputError, match="--minutes 0.5 leaves no time to train"):
        adapt(cfg, callback=lambda step, record: steps_run.append(step))
    assert steps_run == []  # refused before any step
    assert "adapt" not in capsys.readouterr().err  # and before an empty progress bar is drawn

    fake_clock.now, fake_clock.measure = 0.0, 1.0
    with pytest.raises(InputError, match="--minutes 0.5 is too short for one training step: the first took 40.0 s"):
        adapt(cfg, quiet=True, callback=tick)
    assert not output.exists() and not (tmp_path / "m.adapt").exists()  # nothing to resume: no trace left


def test_minutes_budget_is_timed_again_on_distillation_steps(footage, base, tmp_path, monkeypatch):
    """A distillation step costs more or less than a photometric one. Timed on stage 1 alone, a minutes budget
    would overrun here; the first distillation steps are timed again and the run ends on budget."""
    from flowcli.adapt import trainer

    now = [0.0]
    monkeypatch.setattr(trainer, "clock", lambda: now[0])
    seconds = {1: 2.0, 2: 4.0}  # per step, on the fake clock

    def tick(step, record):
        now[0] += seconds[record["stage"]]

    cfg = _config(footage, base, tmp_path / "m.safetensors", steps=None, minutes=1.0, batch_size=1)
    result = adapt(cfg, quiet=True, callback=tick)
    # timed at 2 s/step: 30 steps, 18 of them photometric (36 s); the 24 s left are 6 distillation steps, not 12
    assert result["stages"] == {"photometric": 18, "total": 24} and result["steps"] == 24
    assert [r["stage"] for r in result["history"]] == [1] * 18 + [2] * 6
    assert now[0] == 60.0

    def interrupt_while_timing_stage2(step, record):  # Ctrl-C during the second timing; the resume finishes it
        tick(step, record)
        if step == 20:
            raise KeyboardInterrupt

    now[0] = 0.0
    cfg = _config(footage, base, tmp_path / "r.safetensors", steps=None, minutes=1.0, batch_size=1)
    with pytest.raises(FlowcliError, match="to resume"):
        adapt(cfg, quiet=True, callback=interrupt_while_timing_stage2)
    resumed = adapt(cfg, quiet=True, callback=tick)
    assert resumed["stages"] == {"photometric": 18, "total": 24} and now[0] == 60.0


def test_stage1_fraction_zero_distils_the_base_model_directly(footage, tmp_path, monkeypatch):
    from flowcli.adapt import trainer
    from flowcli.checkpoint import save_checkpoint
    from flowcli.models.pwc import FlowNet, FlowNetConfig

    torch.manual_seed(0)
    base = tmp_path / "calm.safetensors"  # heads start near zero: consistent flow, so the teacher is confident
    save_checkpoint(FlowNet(FlowNetConfig(**TINY)), base)
    no_photometric = {"census": 0, "ssim": 0, "l1": 0, "smooth2": 0}
    result = adapt(_config(footage, base, tmp_path / "d.safetensors", steps=3, stage1_fraction=0.0,
                           losses=no_photometric), quiet=True)  # fmt: skip
    assert [r["stage"] for r in result["history"]] == [2, 2, 2] and result["stages"]["photometric"] == 0
    assert all(r["photo"] == 0 and r["distill_px"] > 0.5 for r in result["history"])  # the teacher's labels alone
    now = [0.0]
    monkeypatch.setattr(trainer, "clock", lambda: now[0])

    def tick(step, record):
        now[0] += 1.0

    with pytest.warns(UserWarning, match="allows only 6 training step"):
        timed = adapt(_config(footage, base, tmp_path / "m.safetensors", steps=None, minutes=0.1, batch_size=1,
                              stage1_fraction=0.0), quiet=True, callback=tick)  # fmt: skip
    assert timed["stages"] == {"photometric": 0, "total": 6} and {r["stage"] for r in timed["history"]} == {2}


def test_synthetic_replay_anchor_runs_in_both_stages_and_is_reproducible(footage, base, tmp_path):
    cfg = dict(steps=4, losses={"anchor": 1.0}, anchor_pairs=1)
    first = adapt(_config(footage, base, tmp_path / "a.safetensors", **cfg), quiet=True)
    assert [r["stage"] for r in first["history"]] == [1, 1, 2, 2]
    assert all(r["anchor"] > 0 for r in first["history"])  # the replay term is in every step of both stages
    again = adapt(_config(footage, base, tmp_path / "b.safetensors", **cfg), quiet=True)
    for a, b in zip(first["history"], again["history"], strict=True):  # replay scenes are seeded by step
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5)
    off = adapt(_config(footage, base, tmp_path / "c.safetensors", steps=4), quiet=True)
    assert all("anchor" not in r for r in off["history"])


def test_a_run_resumes_after_its_folders_are_moved_and_refuses_changed_footage(footage, base, tmp_path):
    """The same footage, base and output named by other paths (the project folder moved, or relative and
    absolute paths mixed) is the same run; different footage under the same path is not."""
    import shutil

    def interrupt(step, record):
        if step == 2:
            raise KeyboardInterrupt

    old = tmp_path / "old"
    shutil.copytree(footage, old / "clips")
    shutil.copy(base, old / "base.safetensors")

    def cfg(root, **overrides):
        return _config(root / "clips", root / "base.safetensors", root / "out" / "m.safetensors", steps=4, **overrides)

    with pytest.raises(FlowcliError):
        adapt(cfg(old), quiet=True, callback=interrupt)
    new = tmp_path / "new"
    old.rename(new)
    with pytest.raises(FlowcliError, match=r"different settings \(lr\)"):  # the refusal names what differs
        adapt(cfg(new, lr=2e-3), quiet=True)
    frame = next((new / "clips" / "shot0").iterdir())
    original = frame.read_bytes()
    frame.write_bytes(next((new / "clips" / "shot1").iterdir()).read_bytes())
    with pytest.raises(FlowcliError, match="different footage"):
        adapt(cfg(new), quiet=True)
    frame.write_bytes(original)
    steps_run = []
    resumed = adapt(cfg(new), quiet=True, callback=lambda step, record: steps_run.append(step))
    assert steps_run == [3, 4] and len(resumed["history"]) == 4  # continued, not started over


def test_a_run_on_a_glob_resumes_when_the_glob_is_spelt_another_way(footage, base, tmp_path, monkeypatch):
    import shutil

    def interrupt(step, record):
        if step == 2:
            raise KeyboardInterrupt

    shutil.copytree(footage, tmp_path / "clips")
    monkeypatch.chdir(tmp_path)

    def cfg(*globs):
        return _config(footage, base, tmp_path / "m.safetensors", steps=4, sources=list(globs))

    with pytest.raises(FlowcliError, match="to resume"):
        adapt(cfg("clips/shot0/*.png", "clips/shot1/*.png"), quiet=True, callback=interrupt)
    steps_run = []
    resumed = adapt(cfg("./clips/shot0/*.png", f"{tmp_path}/clips/shot1/*.png"), quiet=True,
                    callback=lambda step, record: steps_run.append(step))  # fmt: skip
    assert steps_run == [3, 4] and len(resumed["history"]) == 4


def test_a_diverging_run_stops_without_writing_nan_weights(footage, base, tmp_path):
    output = tmp_path / "nan.safetensors"
    with pytest.raises(FlowcliError, match="training diverged.*lower --lr"):
        adapt(_config(footage, base, output, steps=6, lr=1e6), quiet=True)
    assert not output.exists() and not (tmp_path / "nan.report.json").exists()
    assert not (tmp_path / "nan.adapt").exists()  # nothing saved to resume: no trace left


def test_left_and_right_folders_are_both_named_in_the_provenance(stereo_footage, base, tmp_path):
    from flowcli.checkpoint import read_metadata

    output = tmp_path / "lr.safetensors"
    sources = [str(stereo_footage / "left"), str(stereo_footage / "right")]
    result = adapt(_config(stereo_footage, base, output, sources=sources, steps=1, stereo=True, batch_size=1,
                           transforms={}), quiet=True)  # fmt: skip
    assert result["footage"]["sources"] == ["left", "right"]
    assert read_metadata(output)["flowcli.provenance"]["footage"]["sources"] == ["left", "right"]


def test_a_heldout_frame_that_does_not_decode_is_left_out_of_the_report_with_a_warning(footage, base, tmp_path):
    """The last frame has a valid header but truncated pixels: the held-out pair that needs it cannot be measured,
    and the report says so and measures the training pairs instead of coming out empty."""
    import shutil

    clip = tmp_path / "clip"
    shutil.copytree(footage / "shot0", clip)
    last = sorted(clip.iterdir())[-1]
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning) as warned:
        result = adapt(_config(clip, base, tmp_path / "m.safetensors", steps=1, batch_size=1), quiet=True)
    messages = [str(w.message) for w in warned]
    assert any(last.name in m and "the report leaves that pair out" in m for m in messages), messages
    assert any("the report measures the training pairs" in m for m in messages), messages
    assert result["heldout"]["tuples"] >= 1 and result["heldout"]["measured_on"] == "training"
    for when in ("before", "after"):
        assert {"photo_all", "occ"} <= set(result["heldout"][when])


def test_a_run_that_holds_nothing_out_says_it_measured_training_pairs(footage, base, tmp_path, monkeypatch):
    """--val-fraction 0 measured training pairs, but the table said "held-out photo (N pairs)" and the provenance
    counted them as held-out tuples."""
    import io

    from rich.console import Console

    import flowcli.console
    from flowcli.checkpoint import read_metadata
    from flowcli.cli.adapt import print_report

    for val_fraction, measured_on in ((0.0, "training"), (0.1, "heldout")):
        output = tmp_path / f"v{val_fraction}.safetensors"
        result = adapt(_config(footage, base, output, steps=1, batch_size=1, val_fraction=val_fraction), quiet=True)
        footage_record = read_metadata(output)["flowcli.provenance"]["footage"]
        report = json.loads(output.with_name(output.stem + ".report.json").read_text())
        assert result["heldout"]["measured_on"] == report["heldout"]["measured_on"] == measured_on
        assert footage_record["measured_on"] == report["footage"]["measured_on"] == measured_on
        assert (footage_record["heldout_tuples"] == 0) == (measured_on == "training")
        assert footage_record["train_tuples"] == (8 if measured_on == "training" else 6)  # 2 x 4 pairs; 1 of each held
        screen = io.StringIO()
        monkeypatch.setattr(flowcli.console, "stderr", Console(file=screen, width=200, color_system=None))
        print_report(result)
        shown = screen.getvalue()
        assert ("held-out photo" in shown) == (measured_on == "heldout"), shown
        assert ("training-pair photo_all" in shown and "no held-out pair was measured" in shown) == (
            measured_on == "training"
        ), shown


def test_a_resume_refused_for_changed_settings_is_an_input_error(footage, base, tmp_path):
    """A refused resume exited with code 1 (other error), not 2 as every other inconsistent input does."""
    from flowcli.errors import InputError

    output = tmp_path / "r.safetensors"

    _interrupt_at(_config(footage, base, output, steps=2, batch_size=1), step=1)
    with pytest.raises(InputError, match=r"belongs to a run with different settings \(lr\)") as refused:
        adapt(_config(footage, base, output, steps=2, batch_size=1, lr=2e-3), quiet=True)
    assert refused.value.exit_code == 2


def test_gt_on_another_root_when_resuming_measures_the_base_model_there(footage, base, tmp_path, monkeypatch):
    """--gt is matched by dataset name: resuming with `--gt kitti2015:OTHER_ROOT` compared "before" on the old root
    with "after" on the new one."""
    from flowcli.adapt import trainer
    from flowcli.checkpoint import load_checkpoint

    def weights_sum(model) -> float:
        return round(sum(float(p.detach().double().sum()) for p in model.parameters()), 4)

    roots = [str(tmp_path / "kitti_a"), str(tmp_path / "kitti_b")]
    monkeypatch.setattr(trainer, "parse_gt", lambda specs: [tuple(spec.split(":", 1)) for spec in specs])
    monkeypatch.setattr(trainer, "headline_metrics", lambda model, sets, **kwargs: {
        name: {"root": roots.index(root), "weights": weights_sum(model)} for name, root in sets
    })  # fmt: skip
    output = tmp_path / "g.safetensors"

    _interrupt_at(_config(footage, base, output, steps=2, batch_size=1, gt=[f"kitti2015:{roots[0]}"]), step=1)
    result = adapt(_config(footage, base, output, steps=2, batch_size=1, gt=[f"kitti2015:{roots[1]}"]), quiet=True)
    base_weights = weights_sum(load_checkpoint(base))
    assert result["gt"]["before"]["kitti2015"] == {"root": 1, "weights": base_weights}  # the base, on the new root
    assert result["gt"]["after"]["kitti2015"]["root"] == 1


@pytest.mark.parametrize("kept", [["kitti2015"], []])
def test_gt_dropped_when_resuming_leaves_the_before_record(footage, base, tmp_path, monkeypatch, kept):
    """Resuming with fewer --gt datasets kept the dropped ones in "before": the report and the checkpoint's
    provenance showed a before row for a dataset no longer measured after."""
    from flowcli.adapt import trainer
    from flowcli.checkpoint import read_metadata

    roots = {"kitti2015": str(tmp_path / "kitti"), "sintel_clean": str(tmp_path / "sintel")}
    monkeypatch.setattr(trainer, "parse_gt", lambda specs: [tuple(spec.split(":", 1)) for spec in specs])
    monkeypatch.setattr(trainer, "headline_metrics", lambda model, sets, **kwargs: {
        name: {"epe": 1.0} for name, root in sets
    })  # fmt: skip
    output = tmp_path / "g.safetensors"

    every_gt = [f"{n}:{r}" for n, r in roots.items()]
    _interrupt_at(_config(footage, base, output, steps=2, batch_size=1, gt=every_gt), step=1)
    result = adapt(_config(footage, base, output, steps=2, batch_size=1, gt=[f"{n}:{roots[n]}" for n in kept]),
                   quiet=True)  # fmt: skip
    provenance = read_metadata(output)["flowcli.provenance"]
    if kept:
        assert set(result["gt"]["before"]) == set(result["gt"]["after"]) == set(kept)
        assert set(provenance["gt_before"]) == set(provenance["gt_after"]) == set(kept)
    else:
        assert result["gt"] is None and provenance["gt_before"] is None and provenance["gt_after"] is None


def test_gt_added_when_resuming_measures_the_base_model_before(footage, base, tmp_path):
    from flowcli.evaluation import headline_metrics
    from flowcli.checkpoint import load_checkpoint

    middlebury = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flow" / "middlebury"
    if not middlebury.is_dir():
        pytest.skip("shared data not available")
    output = tmp_path / "g.safetensors"

    _interrupt_at(_config(footage, base, output, steps=3), step=2)
    result = adapt(_config(footage, base, output, steps=3, gt=[f"middlebury:{middlebury}"]), quiet=True)
    base_metrics = headline_metrics(load_checkpoint(base), [("middlebury", str(middlebury))])
    assert result["gt"]["before"] == base_metrics and result["gt"]["after"]["middlebury"]


def test_a_data_worker_ends_quietly_on_a_sigterm_sent_to_the_whole_job():
    """As in `flowcli train`: a SIGTERM to every process of the job (timeout, kill -- -PGID, Slurm) killed adapt's
    data workers (4 on a GPU), and the main process failed with a "DataLoader worker is killed by signal"
    traceback instead of saving its state. A worker must end as on a Ctrl-C, exit code 0."""
    from cli_harness import assert_worker_ends_quietly_on_sigterm

    from flowcli.adapt.trainer import _loader

    assert_worker_ends_quietly_on_sigterm(iter(_loader([torch.zeros(1)] * 8, 0, 8, workers=1)))


def test_a_ctrl_c_while_a_batch_is_received_waits_for_it_and_shuts_the_data_workers_down(
    footage, base, tmp_path, monkeypatch
):
    """As in `flowcli train`: a terminal sends Ctrl-C to the data workers too, and a Ctrl-C in the middle of receiving
    a batch cut the socket that passes its tensors' shared memory, so a worker printed a traceback from
    multiprocessing/resource_sharer.py after the "interrupted" line; a worker that ended on its own Ctrl-C could no
    longer send what the main process was receiving. The workers stayed up until exit, after the message."""
    import multiprocessing

    from cli_harness import ctrl_c_before_the_third_batch

    from flowcli.adapt import trainer

    others = set(multiprocessing.active_children())
    start_loader, received = trainer._loader, []

    def ctrl_c_mid_receive(*args, **kwargs):  # the workers start now, as they do in adapt
        return ctrl_c_before_the_third_batch(iter(start_loader(*args, **kwargs)), received, others)

    monkeypatch.setattr(trainer, "_loader", ctrl_c_mid_receive)
    output = tmp_path / "adapted.safetensors"
    with pytest.raises(FlowcliError, match=r"interrupted at step 2/6; state saved .* to resume") as raised:
        adapt(_config(footage, base, output, workers=1), quiet=True)
    assert len(received) == 3  # the batch being received when the Ctrl-C came was received whole
    # gone while the error (its traceback, which holds adapt's variables) is still about, as when the CLI prints it
    assert raised.value and set(multiprocessing.active_children()) == others
    assert (tmp_path / "adapted.adapt" / "state.pt").is_file() and not output.exists()


def test_the_final_report_on_80_columns_keeps_paths_and_numbers_whole(monkeypatch):
    """The report's heading was the table's title, wrapped to the table's width even on a wide terminal, and its
    output path (and the report's) folded mid-name ("street_" / "scene_0001"); the paths now come whole on lines of
    their own, for the terminal to wrap, and the table fits 80 columns."""
    import io

    from rich.console import Console

    import flowcli.console
    from flowcli.cli.adapt import print_report

    folder = "/home/someone/projects/footage/a-rather-long-folder-name/takes"
    result = {
        "steps": 2000,
        "output": f"{folder}/street_scene_0001-adapted.safetensors",
        "report": f"{folder}/street_scene_0001-adapted.report.json",
        "heldout": {"tuples": 12, "before": {"photo": 0.123456, "photo_all": 0.13, "occ": 0.05},
                    "after": {"photo": 0.1, "photo_all": 0.12, "occ": 0.04}},
        "gt": {"before": {"middlebury_stereo": {"epe": 1234.5678, "bad2": 11.1}},
               "after": {"middlebury_stereo": {"epe": 1000.1234, "bad2": 10.1}}},
    }  # fmt: skip
    for width in (80, 200):
        screen = io.StringIO()
        monkeypatch.setattr(
            flowcli.console, "stderr", Console(file=screen, force_terminal=True, width=width, color_system=None)
        )
        print_report(result)
        lines = screen.getvalue().splitlines()
        assert lines[0] == f"flowcli adapt: 2000 steps -> {result['output']}"
        assert lines[-1] == f"report: {result['report']}"
        assert max(len(line) for line in lines[1:-1]) <= 80
        words = screen.getvalue().split()
        for shown in ("0.1235", "0.1000", "1234.5678", "1000.1234", "-19.0%", "-9.0%"):
            assert shown in words


# ----------------------------------------------------------------------------- what a GPU runs


def test_the_bf16_path_runs_both_stages_with_the_losses_in_fp32(footage, base, tmp_path, monkeypatch):
    """`--precision auto` on a GPU with bf16 in hardware, run on the CPU (bf16 autocast works there too): the
    network and the teacher in bf16, every loss on fp32 flows outside autocast, and fp32 weights written."""
    from safetensors import safe_open

    from flowcli.adapt import trainer

    network_dtypes, loss_dtypes = set(), set()
    chunks, adapt_loss = trainer._chunks, trainer.adapt_loss

    def recorded_chunks(out, sizes):
        network_dtypes.add(out.flow.dtype)
        return chunks(out, sizes)

    def recorded_loss(pairs, weights, **kwargs):
        assert not torch.is_autocast_enabled("cpu")
        for pair in pairs if isinstance(pairs, list) else [pairs]:
            loss_dtypes.update(t.dtype for output in (pair.forward, pair.backward)
                               for t in (output.flow, *output.level_flows.values()))  # fmt: skip
        if kwargs.get("teacher_flow") is not None:
            loss_dtypes.add(kwargs["teacher_flow"].dtype)
        return adapt_loss(pairs, weights, **kwargs)

    monkeypatch.setattr(trainer, "_chunks", recorded_chunks)
    monkeypatch.setattr(trainer, "adapt_loss", recorded_loss)
    output = tmp_path / "bf16.safetensors"
    result = adapt(_config(footage, base, output, precision="bf16", teacher_flip=True), quiet=True)
    assert [r["stage"] for r in result["history"]] == [1, 1, 1, 2, 2, 2]
    assert network_dtypes == {torch.bfloat16} and loss_dtypes == {torch.float32}
    assert all(np.isfinite(r["total"]) for r in result["history"])
    with safe_open(str(output), framework="pt") as f:
        assert {f.get_slice(key).get_dtype() for key in f.keys()} == {"F32"}


def test_auto_precision_is_bf16_only_on_gpus_with_bf16_in_hardware(monkeypatch):
    """torch.cuda.is_bf16_supported() says yes for a T4 or V100 too (it emulates bf16, slower than fp32 there)."""
    from flowcli.adapt import trainer

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    for capability, expected in (((7, 5), torch.float32), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert trainer._precision("auto", torch.device("cuda")) == expected
    assert trainer._precision("auto", torch.device("cpu")) == torch.float32


def test_fp16_is_refused_for_training(footage, base, tmp_path):
    """fp16 autocast without loss scaling (a GradScaler) loses small gradients to underflow; the CLI offers auto,
    fp32 and bf16 only, and the Python API refuses the rest as well, before anything is written."""
    from flowcli.errors import InputError

    output = tmp_path / "fp16.safetensors"
    with pytest.raises(InputError, match="precision must be auto, fp32 or bf16, got 'fp16'"):
        adapt(_config(footage, base, output, precision="fp16"), quiet=True)
    assert not output.exists() and not (tmp_path / "fp16.adapt").exists()


def test_under_torchrun_an_absent_or_single_gpu_device_is_refused_not_replaced_by_the_cpu(monkeypatch):
    """Each torchrun process takes the GPU of its LOCAL_RANK; `--device cuda` on a machine without one, or a device
    naming one GPU for every process, fell back to training on the CPU without a word."""
    from flowcli.adapt import trainer
    from flowcli.errors import InputError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(trainer.dist, "is_initialized", lambda: True)  # as if torchrun's group were up
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device, needle in (("cuda", "no CUDA GPU is visible"), ("bogus", "unknown device")):
        with pytest.raises(InputError, match=needle):
            trainer._init_distributed(device)
    assert trainer._init_distributed("cpu")[1] == torch.device("cpu")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    with pytest.raises(InputError, match="--device cuda:0 names one GPU.*LOCAL_RANK"):
        trainer._init_distributed("cuda:0")
    ctx, device = trainer._init_distributed("cuda")
    assert (ctx.rank, ctx.world, device) == (1, 2, torch.device("cuda", 1))


def test_a_cpu_run_on_a_machine_with_a_gpu_does_not_pin_its_batches(footage, base, tmp_path, monkeypatch):
    """pin_memory followed torch.cuda.is_available(): `--device cpu` on a GPU machine started a CUDA context on
    GPU 0 for page-locked batches that nothing copied to a GPU."""
    from flowcli.adapt import trainer

    pinned = []
    real_loader = trainer.DataLoader

    def recording_loader(*args, pin_memory=False, **kwargs):
        pinned.append(pin_memory)
        return real_loader(*args, pin_memory=False, **kwargs)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(trainer, "DataLoader", recording_loader)
    adapt(_config(footage, base, tmp_path / "p.safetensors", steps=2, batch_size=1, device="cpu"), quiet=True)
    assert pinned and not any(pinned)
