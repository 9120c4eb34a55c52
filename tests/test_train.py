"""`flowcli train`: a tiny CPU run learns, and an interrupted run resumes bit for bit."""

import json
from pathlib import Path

import pytest
import torch
from cli_harness import assert_one_line_error, in_process_cli
from safetensors import safe_open

from flowcli.checkpoint import load_checkpoint
from flowcli.errors import FlowcliError, InputError
from flowcli.models.pwc import FlowNet
from flowcli.train.trainer import TrainConfig, train

TINY_MODEL = dict(
    pyramid_channels=(8, 12, 16, 16, 16, 16), decoder_channels=(16, 16), context_channels=(16,), context_dilations=(1,)
)


def tiny_config(out_dir, steps, **overrides) -> TrainConfig:
    settings = dict(
        out_dir=str(out_dir), steps=steps, batch_size=2, height=64, width=64, lr=1e-3, checkpoint_every=10,
        workers=0, device="cpu", model=TINY_MODEL,
        synth=dict(layer_translation=4.0, background_translation=2.0, min_layers=1, max_layers=3),
    )
    return TrainConfig(**{**settings, **overrides})


def test_fifty_step_cpu_run_is_stable_and_writes_a_loadable_checkpoint(tmp_path):
    """50 steps at a tiny size are too few to learn matching (the network starts at zero flow and the
    bundled model needed ~1000 steps to leave it), so this checks what such a run must guarantee: finite
    losses, no divergence from the zero-flow start on held-out scenes, a checkpoint that loads."""
    import math

    from flowcli.synth.generator import SynthConfig, generate_sample

    torch.set_num_threads(1)
    config = tiny_config(tmp_path, 50)
    summary = train(config, quiet=True)
    assert summary["steps"] == 50 and len(summary["history"]) == 50
    assert all(math.isfinite(r["total"]) and math.isfinite(r["epe"]) for r in summary["history"])
    model = load_checkpoint(tmp_path / "last.safetensors").eval()
    assert model.provenance["steps"] == 50
    scenes = SynthConfig(height=64, width=64, **config.synth)
    zero = err = 0.0
    for i in range(8):
        sample = generate_sample(scenes, torch.Generator().manual_seed(10_000 + i))
        with torch.no_grad():
            flow = model(sample.images[0][None], sample.images[1][None]).flow[0]
        zero += float(sample.flow_forward.norm(dim=0).mean())
        err += float((flow - sample.flow_forward).norm(dim=0).mean())
    assert err < 1.25 * zero


def test_resume_reproduces_the_uninterrupted_loss_curve(tmp_path):
    torch.set_num_threads(1)
    straight = train(tiny_config(tmp_path / "a", 20), quiet=True)["history"]
    train(tiny_config(tmp_path / "b", 20), quiet=True, stop_after=10)
    resumed = train(tiny_config(tmp_path / "b", 20), quiet=True)["history"]
    assert len(resumed) == 20
    for x, y in zip(straight, resumed):
        assert abs(x["total"] - y["total"]) < 1e-4, (x, y)


def test_resume_refuses_a_different_config(tmp_path):
    import pytest

    from flowcli.errors import FlowcliError

    train(tiny_config(tmp_path, 4), quiet=True, stop_after=2)
    with pytest.raises(FlowcliError, match="different training config"):
        train(tiny_config(tmp_path, 4, lr=5e-4), quiet=True)


def test_fine_tuning_starts_from_init_weights_and_records_them(tmp_path):
    torch.set_num_threads(1)
    train(tiny_config(tmp_path / "base", 4), quiet=True)
    base_file = tmp_path / "base" / "last.safetensors"
    train(tiny_config(tmp_path / "tuned", 3, init_weights=str(base_file), model={}), quiet=True)
    base, tuned = load_checkpoint(base_file), load_checkpoint(tmp_path / "tuned" / "last.safetensors")
    assert tuned.config == base.config  # the architecture comes from the init checkpoint
    assert tuned.provenance["init_weights"] == str(base_file)
    from flowcli.registry import sha256_file

    assert tuned.provenance["init_sha256"] == sha256_file(base_file)
    assert tuned.provenance["steps"] == 3
    assert any(not torch.equal(a, b) for a, b in zip(base.state_dict().values(), tuned.state_dict().values()))


def test_fine_tuning_from_a_registry_name_records_the_resolved_files_sha256(tmp_path):
    from flowcli.registry import model_entry

    torch.set_num_threads(1)
    train(tiny_config(tmp_path, 1, init_weights="flowcli-pwc-synth", model={}), quiet=True)
    tuned = load_checkpoint(tmp_path / "last.safetensors")
    assert tuned.provenance["init_weights"] == "flowcli-pwc-synth"
    assert tuned.provenance["init_sha256"] == model_entry("flowcli-pwc-synth")["files"][0]["sha256"]


def test_training_only_an_added_upsampler_leaves_the_base_weights_untouched(tmp_path):
    import pytest

    from flowcli.errors import FlowcliError

    torch.set_num_threads(1)
    train(tiny_config(tmp_path / "base", 4), quiet=True)
    base_file = tmp_path / "base" / "last.safetensors"
    added = dict(init_weights=str(base_file), model={"upsampler": "convex"}, train_only=["upsampler."])
    summary = train(tiny_config(tmp_path / "up", 3, full_resolution=1.0, **added), quiet=True)
    assert all("full" in record for record in summary["history"])
    base, tuned = load_checkpoint(base_file), load_checkpoint(tmp_path / "up" / "last.safetensors")
    assert tuned.config.upsampler == "convex"
    assert tuned.provenance["trained_parameters"] == ["upsampler."]
    base_state, tuned_state = base.state_dict(), tuned.state_dict()
    for name, value in tuned_state.items():
        if name.startswith("upsampler."):
            continue
        torch.testing.assert_close(value, base_state[name], rtol=0, atol=0)
    assert any(
        not torch.equal(value, FlowNet(tuned.config).state_dict()[name])
        for name, value in tuned_state.items()
        if name.startswith("upsampler.weights")
    )
    with pytest.raises(FlowcliError, match="matches no parameter"):
        train(tiny_config(tmp_path / "none", 2, init_weights=str(base_file), train_only=["nothing."]), quiet=True)


def test_untying_the_shared_decoder_keeps_the_function_then_trains_each_level_apart(tmp_path):
    torch.set_num_threads(1)
    train(tiny_config(tmp_path / "base", 4), quiet=True)
    base_file = tmp_path / "base" / "last.safetensors"
    untied = dict(init_weights=str(base_file), model={"shared_decoder": False})
    train(tiny_config(tmp_path / "start", 1, lr=1e-12, **untied), quiet=True)
    base, start = load_checkpoint(base_file).eval(), load_checkpoint(tmp_path / "start" / "last.safetensors").eval()
    assert start.config.shared_decoder is False
    image1, image2 = torch.rand(2, 1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(start(image1, image2).flow, base(image1, image2).flow, rtol=0, atol=1e-5)

    train(tiny_config(tmp_path / "tuned", 3, **untied), quiet=True)
    tuned = load_checkpoint(tmp_path / "tuned" / "last.safetensors").state_dict()
    coarse, fine = max(start.levels), min(start.levels)
    name = "predict_flow.0.weight"
    assert not torch.equal(tuned[f"decoders.{coarse}.{name}"], tuned[f"decoders.{fine}.{name}"])

    # `flowcli weights average` mixes the shared base with its untied fine-tune level by level.
    from flowcli.checkpoint import average_checkpoints

    soup = average_checkpoints([base_file, tmp_path / "tuned" / "last.safetensors"])
    assert soup.config.shared_decoder is False
    expected = 0.5 * (base.state_dict()[f"decoder.{name}"] + tuned[f"decoders.{coarse}.{name}"])
    torch.testing.assert_close(soup.state_dict()[f"decoders.{coarse}.{name}"], expected)


def test_every_recipe_in_the_repository_is_a_valid_training_config():
    from pathlib import Path

    from flowcli.models.pwc import FlowNetConfig
    from flowcli.synth.generator import SynthConfig

    recipes = sorted((Path(__file__).parent.parent / "recipes").rglob("*.json"))
    assert len(recipes) >= 3
    for path in recipes:
        cfg = TrainConfig.from_file(path)
        SynthConfig(height=cfg.height, width=cfg.width, **cfg.synth)  # a misspelt key raises here, not hours in
        FlowNetConfig(**cfg.model)
        assert cfg.height % 64 == 0 and cfg.width % 64 == 0, path


def test_weight_average_is_the_ema_of_the_run_and_resumes_bit_for_bit(tmp_path):
    """ema.safetensors is the moving average of the weights along the run (not the last weights), and
    an interrupted run resumes it exactly."""
    from flowcli.models.pwc import FlowNetConfig
    from flowcli.train.trainer import WeightEMA

    torch.set_num_threads(1)
    straight = train(tiny_config(tmp_path / "a", 12, ema_decay=0.9), quiet=True)
    assert straight["ema_checkpoint"] == str(tmp_path / "a" / "ema.safetensors")
    train(tiny_config(tmp_path / "b", 12, ema_decay=0.9), quiet=True, stop_after=5)
    train(tiny_config(tmp_path / "b", 12, ema_decay=0.9), quiet=True)
    last = load_checkpoint(tmp_path / "a" / "last.safetensors").state_dict()
    ema_a = load_checkpoint(tmp_path / "a" / "ema.safetensors").state_dict()
    ema_b = load_checkpoint(tmp_path / "b" / "ema.safetensors").state_dict()
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    assert any(not torch.equal(ema_a[k], last[k]) for k in last)  # an average, not the last weights

    # The update rule itself: with the warm-up, the first update weighs the new weights 9/10.
    model = FlowNet(FlowNetConfig(**TINY_MODEL))
    ema = WeightEMA(model, decay=0.99)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for k, v in ema.model.state_dict().items():
        assert torch.allclose(v, before[k] + 0.9, atol=1e-6)


def test_the_gpu_bf16_path_computes_the_loss_in_fp32_saves_fp32_and_resumes_bit_for_bit(tmp_path, monkeypatch):
    """What a GPU with bf16 in hardware runs, forced on the CPU (where bf16 autocast works too): the network in
    bf16, the loss on its outputs cast to fp32 outside autocast, fp32 weights in the state and the checkpoints,
    and a resume of such a run equal to the uninterrupted one."""
    import flowcli.inference
    import flowcli.train.trainer as trainer

    torch.set_num_threads(1)
    monkeypatch.setattr(flowcli.inference, "native_bf16", lambda device: True)
    network_dtypes, loss_dtypes = set(), set()
    forward = FlowNet.forward

    def recorded_forward(self, image1, image2):
        output = forward(self, image1, image2)
        network_dtypes.add(output.flow.dtype)
        return output

    def recorded_loss(output, target, valid=None, **kwargs):
        assert not torch.is_autocast_enabled("cpu")
        loss_dtypes.update(t.dtype for t in (output.flow, *output.level_flows.values(), target))
        return supervised_loss(output, target, valid, **kwargs)

    supervised_loss = trainer.supervised_loss
    monkeypatch.setattr(FlowNet, "forward", recorded_forward)
    monkeypatch.setattr(trainer, "supervised_loss", recorded_loss)
    straight = train(tiny_config(tmp_path / "a", 4, ema_decay=0.9), quiet=True)["history"]
    assert network_dtypes == {torch.bfloat16} and loss_dtypes == {torch.float32}
    train(tiny_config(tmp_path / "b", 4, ema_decay=0.9), quiet=True, stop_after=2)
    state = torch.load(tmp_path / "b" / "state.pt", weights_only=True)
    saved = [*state["model"].values(), *state["ema"]["model"].values()]
    saved += [t for moments in state["optimizer"]["state"].values() for t in moments.values()]
    assert {t.dtype for t in saved if t.is_floating_point()} == {torch.float32}
    resumed = train(tiny_config(tmp_path / "b", 4, ema_decay=0.9), quiet=True)["history"]
    assert [r["total"] for r in resumed] == [r["total"] for r in straight]
    for name in ("last", "ema"):
        with safe_open(str(tmp_path / "b" / f"{name}.safetensors"), framework="pt") as f:
            assert {f.get_slice(key).get_dtype() for key in f.keys()} == {"F32"}


def test_a_run_saved_before_a_config_field_existed_still_resumes(tmp_path):
    """A state saved by an older flowcli lacks fields added since; at their defaults it resumes."""
    import json

    torch.set_num_threads(1)
    cfg = tiny_config(tmp_path, 6)
    train(cfg, quiet=True, stop_after=3)
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    saved = json.loads(state["config"])
    del saved["ema_decay"]
    state["config"] = json.dumps(saved, sort_keys=True)
    del state["model_config"]
    torch.save(state, tmp_path / "state.pt")
    assert len(train(cfg, quiet=True)["history"]) == 6


# ----------------------------------------------------------------------------- `flowcli train`: bad input

# Flags of a run that would be quick if it started (it must not: each of these is refused up front).
QUICK_FLAGS = ("--size", "64x64", "--batch-size", "1", "--steps", "3", "-q")


def tiny_recipe(tmp_path):
    """A config file of a 2-step run of the tiny model in this process (no data worker), without out_dir."""
    from dataclasses import asdict

    settings = asdict(tiny_config("unused", 2, batch_size=1))
    del settings["out_dir"]
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(settings))
    return path


@pytest.mark.parametrize(
    "text, needles",
    [
        ('{"steps": 3,', ["not valid JSON", "line 1"]),
        ('{"steps": 3, "bogus": 1}', ['"bogus"', "known keys", "steps"]),
        ('{"stpes": 3}', ['did you mean "steps"']),
        ("[1, 2]", ["JSON object"]),
        ('{"steps": "abc"}', ['"steps"', "positive integer", '"abc"']),
        ('{"height": 100}', ['"height"', "multiple of 64", "100"]),
        ('{"model": {"bogus": 1}}', ['"model"', '"bogus"', "pyramid_channels"]),
        ('{"synth": {"bogus": 1}}', ['"synth"', '"bogus"', "layer_translation"]),
        ('{"textures": "/some/dir"}', ['"textures"', "list"]),
        # these reached the data worker, whose traceback ended the run
        ('{"synth": {"min_layers": 5, "max_layers": 2}}', ['"synth"', "min_layers", "max_layers"]),
        ('{"synth": {"max_layers": 0}}', ['"synth"', "min_layers", "max_layers"]),
        ('{"synth": {"num_frames": 1}}', ['"synth"', "num_frames", "at least 2"]),
        ('{"synth": {"max_disparity": -5}}', ['"synth"', "max_disparity", ">= 0"]),  # stereo scenes moved wrong
        ('{"pct_start": 1}', ['"pct_start"', "below 1"]),  # failed at the last step, and again on each resume
        ('{"init_weights": ""}', ['"init_weights"', "non-empty", "null"]),  # trained from scratch
    ],
)
def test_a_bad_config_file_is_a_one_line_error_naming_the_file_and_the_key(
    monkeypatch, capsys, tmp_path, text, needles
):
    config = tmp_path / "recipe.json"
    config.write_text(text)
    run = in_process_cli(monkeypatch, capsys, "train")
    code, _, err = run("-c", config, "-o", tmp_path / "run", *QUICK_FLAGS)
    assert_one_line_error(code, err, 2, str(config), *needles)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "flags, needles",
    [
        (["--checkpoint-every", "0"], ["--checkpoint-every", "positive"]),
        (["--batch-size", "0"], ["--batch-size", "positive"]),
        (["--lr", "-1"], ["--lr", "positive"]),
        (["--size", "0x64"], ["--size", "multiples of 64"]),
        (["--size", "abc"], ["--size", "HEIGHTxWIDTH"]),
        (["--steps", "0"], ["--steps", "positive"]),
        (["--stop-after", "0"], ["--stop-after", "positive"]),
        (["--stop-after", "-2"], ["--stop-after", "positive"]),
        (["--seed", str(10**16)], ["--seed", "10^12"]),  # overflowed torch's 64-bit seed: a traceback
        (["-c", "missing.json"], ["missing.json", "does not exist"]),
    ],
)
def test_a_bad_flag_is_a_one_line_input_error_and_writes_nothing(monkeypatch, capsys, tmp_path, flags, needles):
    monkeypatch.chdir(tmp_path)
    run = in_process_cli(monkeypatch, capsys, "train")
    code, _, err = run("-o", "run", *QUICK_FLAGS, *flags)
    assert_one_line_error(code, err, 2, *needles)
    assert not (tmp_path / "run").exists()


def test_an_output_that_is_a_file_is_a_one_line_output_error(monkeypatch, capsys, tmp_path):
    taken = tmp_path / "afile"
    taken.write_text("keep me")
    run = in_process_cli(monkeypatch, capsys, "train")
    code, _, err = run("-o", taken, *QUICK_FLAGS)
    assert_one_line_error(code, err, 3, str(taken), "is a file")
    assert taken.read_text() == "keep me"


def test_empty_textures_are_refused_not_read_as_the_current_folder(monkeypatch, capsys, tmp_path):
    """`--textures "$DIR"` with the variable unset trained on whatever images the current folder held."""
    import imageio.v3 as iio
    import numpy as np

    monkeypatch.chdir(tmp_path)
    iio.imwrite(tmp_path / "holiday.png", np.zeros((64, 64, 3), np.uint8))
    run = in_process_cli(monkeypatch, capsys, "train")
    code, _, err = run("-o", "run", "--textures", "", *QUICK_FLAGS)
    assert_one_line_error(code, err, 2, '--textures "" is empty')
    assert not (tmp_path / "run").exists()


def test_empty_init_weights_are_refused_not_taken_as_training_from_scratch(monkeypatch, capsys, tmp_path):
    """`--init "$BASE"` with the variable unset trained from scratch, as if --init had been left out."""
    from flowcli.errors import InputError

    monkeypatch.chdir(tmp_path)
    run = in_process_cli(monkeypatch, capsys, "train")
    for empty in ("", " "):
        code, _, err = run("-o", "run", "--init", empty, *QUICK_FLAGS)
        assert_one_line_error(code, err, 2, '--init "" is empty', "fine-tune")
    assert not (tmp_path / "run").exists()
    with pytest.raises(InputError, match='"init_weights" must be a weights name'):
        train(tiny_config(tmp_path / "api", 2, init_weights=""), quiet=True)


@pytest.mark.parametrize("kind", ["missing", "corrupt"])
def test_bad_textures_are_a_one_line_error_before_any_data_worker_starts(monkeypatch, capsys, tmp_path, kind):
    textures = tmp_path / "textures"
    if kind == "corrupt":
        textures.mkdir()
        for name in ("a.png", "b.png"):
            (textures / name).write_bytes(b"not a png at all")
    run = in_process_cli(monkeypatch, capsys, "train")
    code, _, err = run("-o", tmp_path / "run", "--textures", textures, *QUICK_FLAGS)  # 1 data worker by default
    assert_one_line_error(code, err, 2, "textures", str(textures))
    assert "DataLoader" not in err


def test_model_overrides_that_resize_the_init_weights_are_a_one_line_input_error(monkeypatch, capsys, tmp_path):
    """A recipe's "model" layer sizes with --init of another size made load_state_dict raise a RuntimeError:
    a traceback listing every tensor's shape."""
    from flowcli.checkpoint import save_checkpoint
    from flowcli.models import FlowNet, FlowNetConfig

    init = tmp_path / "init.safetensors"
    save_checkpoint(FlowNet(FlowNetConfig(**TINY_MODEL)), init)
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"model": {**TINY_MODEL, "decoder_channels": [24, 24]}, "workers": 0}))
    run = in_process_cli(monkeypatch, capsys, "train")
    code, _, err = run("-c", recipe, "--init", init, "-o", tmp_path / "run", *QUICK_FLAGS)
    assert_one_line_error(code, err, 2, "do not fit", str(init), "change shape", "decoder")
    assert not (tmp_path / "run").exists()


def test_a_crop_that_the_models_pyramid_does_not_divide_is_a_one_line_input_error(monkeypatch, capsys, tmp_path):
    """A model of 7 pyramid levels needs multiples of 128: --size 64x64 passed every check, made the run folder
    and failed at the first step with the model's traceback."""
    recipe = tmp_path / "recipe.json"
    recipe.write_text(
        json.dumps({"model": {**TINY_MODEL, "pyramid_channels": [8, 12, 16, 16, 16, 16, 16]}, "workers": 0})
    )
    run = in_process_cli(monkeypatch, capsys, "train")
    code, _, err = run("-c", recipe, "-o", tmp_path / "run", *QUICK_FLAGS)
    assert_one_line_error(code, err, 2, "64x64", "multiple of 128", "--size", "e.g. 128x128")
    assert not (tmp_path / "run").exists()


def test_textures_loaded_up_front_reach_the_data_worker(tmp_path):
    from flowcli.io.flow_formats import write_png

    torch.set_num_threads(1)
    (tmp_path / "textures").mkdir()
    image = (torch.rand(3, 48, 40) * 255).to(torch.uint8).permute(1, 2, 0).numpy()
    write_png(tmp_path / "textures" / "a.png", image)
    config = tiny_config(tmp_path / "run", 2, textures=[str(tmp_path / "textures")], workers=1)
    assert train(config, quiet=True)["steps"] == 2


def test_a_run_folder_resumes_bit_for_bit_when_spelt_differently_or_moved(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    straight = train(tiny_config("a", 6), quiet=True)["history"]
    train(tiny_config("b", 6), quiet=True, stop_after=2)
    train(tiny_config(str(tmp_path / "b") + "/", 6), quiet=True, stop_after=4)
    (tmp_path / "b").rename(tmp_path / "c")
    resumed = train(tiny_config("c", 6), quiet=True)["history"]
    assert [r["total"] for r in resumed] == [r["total"] for r in straight]
    with pytest.raises(FlowcliError, match="different training config"):  # the settings still count
        train(tiny_config("c", 6, seed=1), quiet=True)


def test_weights_without_a_state_are_not_replaced_without_overwrite(monkeypatch, capsys, tmp_path):
    recipe, out = tiny_recipe(tmp_path), tmp_path / "run"
    run = in_process_cli(monkeypatch, capsys, "train")
    assert run("-c", recipe, "-o", out, "-q")[0] == 0
    (out / "state.pt").unlink()  # a finished run whose state was cleaned away
    weights = (out / "last.safetensors").read_bytes()
    code, _, err = run("-c", recipe, "-o", out, "-q")
    assert_one_line_error(code, err, 3, str(out / "last.safetensors"), "--overwrite")
    assert (out / "last.safetensors").read_bytes() == weights

    assert run("-c", recipe, "-o", out, "-q", "--overwrite")[0] == 0
    code, _, err = run("-c", recipe, "-o", out, "-q", "--lr", "0.0005")  # another config on a resumable run
    assert_one_line_error(code, err, 3, "different training config", "--overwrite")
    code, _, err = run("-c", recipe, "-o", out, "-q", "--lr", "0.0005", "--overwrite")
    assert code == 0 and "replacing" in err
    assert load_checkpoint(out / "last.safetensors").provenance["steps"] == 2


def test_a_config_or_eval_json_train_did_not_write_is_not_replaced_without_overwrite(monkeypatch, capsys, tmp_path):
    """--out into a folder with another tool's config.json (or eval.json) replaced it without a word; and a run
    started afresh with --overwrite kept the replaced run's eval.json, whose scores were not of its weights."""
    recipe, out = tiny_recipe(tmp_path), tmp_path / "run"
    out.mkdir()
    run = in_process_cli(monkeypatch, capsys, "train")
    for name in ("config.json", "eval.json"):
        (out / name).write_text('{"theirs": 1}')
        code, _, err = run("-c", recipe, "-o", out, "-q")
        assert_one_line_error(code, err, 3, str(out / name), "--overwrite")
        assert (out / name).read_text() == '{"theirs": 1}'
        (out / name).unlink()
    (out / "config.json").write_text(json.dumps({"steps": 2, "lr": 1.0}))  # a run that stopped before saving
    (out / "eval.json").write_text(json.dumps([{"step": 1, "chairs epe": 1.0}]))
    assert run("-c", recipe, "-o", out, "-q")[0] == 0
    assert json.loads((out / "config.json").read_text())["lr"] == 1e-3
    assert not (out / "eval.json").exists()

    train(tiny_config(out, 2, eval_every=1), evaluate=lambda model: {"x epe": 1.0}, quiet=True, overwrite=True)
    assert len(json.loads((out / "eval.json").read_text())) == 2
    assert run("-c", recipe, "-o", out, "-q", "--lr", "0.0005", "--overwrite")[0] == 0
    assert not (out / "eval.json").exists()


def test_training_in_process_leaves_the_callers_thread_count(tmp_path):
    """With workers=0 the synthetic stream runs in the caller's process; only a data worker drops to 1 thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        train(tiny_config(tmp_path, 2), quiet=True)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_config_problems_found_before_the_run_folder_is_made(tmp_path):
    """A bad device, bad model overrides on init weights, train_only prefixes that match no parameter (which
    left an empty run folder and exit code 1) or a trainer-owned synth key: one line, no folder."""
    from flowcli.checkpoint import save_checkpoint
    from flowcli.errors import InputError
    from flowcli.models import FlowNet, FlowNetConfig

    init = tmp_path / "init.safetensors"
    save_checkpoint(FlowNet(FlowNetConfig(**TINY_MODEL)), init)
    bad = {
        "device": dict(device="cuda:x"),
        "overrides": dict(init_weights=str(init), model={"upsampler": "bogus"}),
        "train_only": dict(train_only=["nothing."]),
    }
    for name, overrides in bad.items():
        with pytest.raises(InputError):
            train(tiny_config(tmp_path / name, 2, **overrides), quiet=True)
        assert not (tmp_path / name).exists(), name
    from flowcli.train.trainer import settings_problem

    assert "top-level" in settings_problem({"synth": {"height": 64}})


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_an_interrupt_right_after_the_optimiser_step_saves_a_whole_step_and_resumes_bit_for_bit(tmp_path, signal_name):
    """SIGINT between the weight update and the step count used to save updated weights under the
    previous step number: the resumed run repeated that step on moved weights. flowcli turns SIGTERM into
    a Ctrl-C (a job scheduler's stop saves the state), so it must wait for the step too."""
    import signal

    from torch.optim.optimizer import register_optimizer_step_post_hook

    from flowcli.cli.main import _sigterm_as_ctrl_c

    torch.set_num_threads(1)
    straight = train(tiny_config(tmp_path / "a", 6), quiet=True)["history"]
    calls = []

    def interrupt_after_third_update(optimizer, args, kwargs):
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(getattr(signal, signal_name))

    handle = register_optimizer_step_post_hook(interrupt_after_third_update)
    try:
        with _sigterm_as_ctrl_c() as terminated, pytest.raises(FlowcliError, match="interrupted at step 3"):
            train(tiny_config(tmp_path / "b", 6), quiet=True)
    finally:
        handle.remove()
    assert terminated == ([signal.SIGTERM] if signal_name == "SIGTERM" else [])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    resumed = train(tiny_config(tmp_path / "b", 6), quiet=True)["history"]
    assert [r["total"] for r in resumed] == [r["total"] for r in straight]


def test_a_data_worker_ends_quietly_on_a_sigterm_sent_to_the_whole_job():
    """`timeout`, `kill -- -PGID`, systemd and Slurm send SIGTERM to every process of the job, data workers
    included. torch's workers died of it, and the main process failed with a "DataLoader worker is killed by
    signal" traceback instead of saving its state (a stopped job lost every step since its last checkpoint).
    A worker must end as on a Ctrl-C (exit code 0), leaving the main process to stop on its own SIGTERM."""
    from cli_harness import assert_worker_ends_quietly_on_sigterm

    from flowcli.train.trainer import _batches

    cfg = TrainConfig(height=64, width=64, batch_size=1, workers=1, synth={"min_layers": 1, "max_layers": 1})
    assert_worker_ends_quietly_on_sigterm(_batches(cfg, 0, None))


def test_a_ctrl_c_while_a_batch_is_received_waits_for_it_and_shuts_the_data_workers_down(tmp_path, monkeypatch):
    """A terminal sends Ctrl-C to the data workers too. A worker passes a batch's tensors over a socket (their shared
    memory's file descriptors): a Ctrl-C in the middle of receiving them cut it, and the worker printed a traceback
    from multiprocessing/resource_sharer.py (about one Ctrl-C in 15); a worker that ended on its own Ctrl-C could no
    longer send what the main process was receiving. The workers stayed up until exit, after the message."""
    import multiprocessing

    from cli_harness import ctrl_c_before_the_third_batch

    from flowcli.train import trainer

    torch.set_num_threads(1)
    others = set(multiprocessing.active_children())
    start_batches, received = trainer._batches, []

    def ctrl_c_mid_receive(*args, **kwargs):  # the workers start when the batches are asked for, as they do in train
        return ctrl_c_before_the_third_batch(start_batches(*args, **kwargs), received, others)

    monkeypatch.setattr(trainer, "_batches", ctrl_c_mid_receive)
    with pytest.raises(FlowcliError, match="interrupted at step 2") as raised:
        train(tiny_config(tmp_path, 6, workers=1), quiet=True)
    assert len(received) == 3  # the batch being received when the Ctrl-C came was received whole
    # gone while the error (its traceback, which holds train's variables) is still about, as when the CLI prints it
    assert raised.value and set(multiprocessing.active_children()) == others


def test_a_diverged_run_stops_before_it_saves_nan_weights(tmp_path):
    """A run whose loss turned NaN went on to its last step and said "done", leaving weights that no flowcli
    command loads (flowcli adapt already stopped such a run)."""
    torch.set_num_threads(1)
    diverged = r"training diverged: the (loss|gradient norm) is (nan|inf).*keeps the state"
    with pytest.raises(FlowcliError, match=diverged):
        train(tiny_config(tmp_path, 20, lr=1e8, checkpoint_every=1), quiet=True)
    saved = torch.load(tmp_path / "state.pt", weights_only=True)["step"]
    assert 1 <= saved < 20
    assert load_checkpoint(tmp_path / "last.safetensors").provenance["steps"] == saved  # finite: it loads


@pytest.mark.parametrize(
    "error",
    [
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory"),
    ],
)
def test_running_out_of_memory_is_a_one_line_error_that_says_what_to_lower(monkeypatch, tmp_path, error):
    """A batch too large for the GPU (or --size too large for the CPU's memory) ended the run with torch's
    traceback."""
    calls = []
    forward = FlowNet.forward

    def runs_out_at_step_3(self, image1, image2):
        calls.append(1)
        if len(calls) == 3:
            raise error
        return forward(self, image1, image2)

    monkeypatch.setattr(FlowNet, "forward", runs_out_at_step_3)
    expected = r"out of memory at step 3 \(batch size 2, crops of 64x64.*lower --batch-size or --size.*state of step 2"
    with pytest.raises(FlowcliError, match=expected):
        train(tiny_config(tmp_path, 4, checkpoint_every=2), quiet=True)
    assert torch.load(tmp_path / "state.pt", weights_only=True)["step"] == 2
    monkeypatch.setattr(FlowNet, "forward", lambda *args: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):  # any other error is not called a lack of memory
        train(tiny_config(tmp_path / "other", 4), quiet=True)


@pytest.mark.parametrize("content", [b"PK\x03\x04 truncated", "foreign", "a model of a newer flowcli"])
def test_an_unreadable_or_foreign_state_is_a_one_line_error_and_overwrite_starts_afresh(
    monkeypatch, capsys, tmp_path, content
):
    recipe, out = tiny_recipe(tmp_path), tmp_path / "run"
    out.mkdir()
    run = in_process_cli(monkeypatch, capsys, "train")
    if content == "foreign":
        torch.save({"weights": torch.zeros(2)}, out / "state.pt")
    elif content == "a model of a newer flowcli":
        assert run("-c", recipe, "-o", out, "-q")[0] == 0
        state = torch.load(out / "state.pt", weights_only=True)
        state["model_config"] = json.dumps({**json.loads(state["model_config"]), "attention": True})
        torch.save(state, out / "state.pt")
    else:
        (out / "state.pt").write_bytes(content)
    code, _, err = run("-c", recipe, "-o", out, "-q")
    assert_one_line_error(code, err, 3, str(out / "state.pt"), "--overwrite")  # the help: 3 is the run folder
    code, _, err = run("-c", recipe, "-o", out, "-q", "--overwrite")
    assert code == 0 and "replacing" in err, err
    assert load_checkpoint(out / "last.safetensors").provenance["steps"] == 2


def test_a_resume_may_change_only_settings_that_cannot_change_the_result(monkeypatch, capsys, tmp_path):
    """--checkpoint-every (and eval_every) used to make a resume "a different training config", whose
    offered --overwrite threw the run away; the refusal of a real change did not say what differed."""
    torch.set_num_threads(1)
    recipe, out = tiny_recipe(tmp_path), tmp_path / "run"
    run = in_process_cli(monkeypatch, capsys, "train")
    assert run("-c", recipe, "-o", out, "-q", "--steps", "4", "--stop-after", "2")[0] == 0
    code, _, err = run("-c", recipe, "-o", out, "-q", "--steps", "4", "--lr", "0.0005", "--seed", "3")
    assert_one_line_error(code, err, 3, "different training config", "lr: 0.001 -> 0.0005", "seed: 0 -> 3")
    code, _, err = run("-c", recipe, "-o", out, "-q", "--steps", "4", "--checkpoint-every", "1", "--stop-after", "3")
    assert code == 0 and "resuming" in err and "replacing" not in err, err
    assert json.loads((out / "config.json").read_text())["checkpoint_every"] == 1  # the new value applies
    state = torch.load(out / "state.pt", weights_only=True)
    assert state["step"] == 3 and json.loads(state["config"])["checkpoint_every"] == 1
    straight = train(tiny_config(tmp_path / "straight", 4, batch_size=1), quiet=True, stop_after=3)["history"]
    assert [r["total"] for r in json.loads(state["history"])] == [r["total"] for r in straight]
    synth = {**tiny_config(out, 4).synth, "max_layers": 2}
    with pytest.raises(FlowcliError, match=r"config \(synth\.max_layers: 3 -> 2\);"):  # nested ones named, alone
        train(tiny_config(out, 4, batch_size=1, eval_every=5, synth=synth), quiet=True)


def test_data_workers_share_the_stream_without_repeating_it():
    """Each batch is made by one worker: 2 workers give the batches 1 worker gives, in the same order."""
    from flowcli.train.trainer import _batches

    cfg = TrainConfig(height=64, width=64, batch_size=2, seed=5, synth={"min_layers": 1, "max_layers": 1})

    def first_batches(workers: int, step: int = 0, count: int = 3) -> list[torch.Tensor]:
        stream = _batches(TrainConfig(**{**cfg.__dict__, "workers": workers}), step, None)
        return [next(stream)[0] for _ in range(count)]

    one, two = first_batches(1), first_batches(2)
    assert all(torch.equal(a, b) for a, b in zip(one, two))
    assert not torch.equal(one[0], one[1])  # not the same scenes again
    assert torch.equal(first_batches(2, step=1, count=1)[0], one[1])  # resuming at step 1 starts at batch 1


def test_eval_every_without_evaluation_data_warns_that_it_has_nothing_to_evaluate(monkeypatch, capsys, tmp_path):
    """eval_every scores the weights on eval_datasets (or the Python API's `evaluate`); a recipe with
    eval_every and no datasets used to do nothing, silently."""
    recipe = tiny_recipe(tmp_path)
    recipe.write_text(json.dumps({**json.loads(recipe.read_text()), "eval_every": 1}))
    run = in_process_cli(monkeypatch, capsys, "train")
    code, _, err = run("-c", recipe, "-o", tmp_path / "run", "-q")
    assert code == 0, err
    assert "eval_every" in err and "no effect" in err and "flowcli eval --weights" in err
    assert (tmp_path / "run" / "last.safetensors").is_file()


SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CHAIRS = SHARED / "flow" / "chairs"
needs_chairs = pytest.mark.skipif(not CHAIRS.is_dir(), reason="../shared/data is absent")


def test_a_labelled_crop_keeps_frames_flow_and_validity_aligned_and_pads_without_ground_truth():
    from flowcli.train.trainer import random_crop

    h, w = 40, 50
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    item = {
        "image1": torch.stack((xs, ys, xs + ys)) / 100, "image2": torch.stack((ys, xs, xs - ys)) / 100,
        "flow": torch.stack((xs, ys)), "valid": (xs.long() % 3 == 0)[None],
    }
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        image1, image2, flow, valid = random_crop(item, 32, 32, gen)
        top, left = int(flow[1, 0, 0]), int(flow[0, 0, 0])
        window = (..., slice(top, top + 32), slice(left, left + 32))
        assert torch.equal(image1, item["image1"][window]) and torch.equal(image2, item["image2"][window])
        assert torch.equal(valid, item["valid"][window])
    image1, _, flow, valid = random_crop(item, 64, 64, gen)  # larger than the item: padded
    assert image1.shape[-2:] == (64, 64) and valid.dtype == torch.bool
    assert not valid[:, h:].any() and not valid[:, :, w:].any() and torch.equal(valid[:, :h, :w], item["valid"])


def test_pixels_without_ground_truth_take_no_part_and_sparse_truth_reaches_every_level():
    """KITTI's ground truth is sparse: a level's cell must keep a target when any of its pixels has one
    (requiring all of them left the coarse levels without any), and invalid pixels must not count."""
    from flowcli.models.pwc import FlowOutput
    from flowcli.train.losses import multiscale_epe

    torch.manual_seed(0)
    target = 3.0 + torch.randn(1, 2, 128, 128)
    valid = torch.zeros(1, 1, 128, 128, dtype=torch.bool)
    valid[..., ::8, ::8] = True  # one pixel in 64
    levels = {level: torch.zeros(1, 2, 128 >> level, 128 >> level) for level in (2, 3, 4, 5, 6)}
    output = FlowOutput(flow=torch.zeros(1, 2, 128, 128), level_flows=levels, occlusion_logit=None)
    garbage = torch.where(valid, target, torch.full_like(target, 1e4))
    assert multiscale_epe(output, garbage, valid) == pytest.approx(float(multiscale_epe(output, target, valid)))
    for level in levels:  # each level alone still has a target: the loss of a zero flow is the flow's size
        alone = FlowOutput(flow=output.flow, level_flows={level: levels[level]}, occlusion_logit=None)
        assert float(multiscale_epe(alone, garbage, valid)) == pytest.approx(3 * 2**0.5, rel=0.1), level


@needs_chairs
def test_sources_are_drawn_by_weight_and_augmented_crops_keep_their_flow(tmp_path):
    """Dataset crops are colour-jittered and mirrored half the time (x flow negated): frame 2 warped by the
    crop's flow must still match frame 1, mirrored or not."""
    from flowcli.ops.warp import backward_warp, out_of_frame
    from flowcli.train.trainer import SynthStream, load_datasets

    datasets = load_datasets([f"chairs:{CHAIRS}:3"])
    stream = SynthStream(tiny_config(tmp_path, 2, datasets=[f"chairs:{CHAIRS}:3"]), 0, datasets=datasets)
    picks = [int(torch.multinomial(stream.source_weights, 1, generator=torch.Generator().manual_seed(i)))
             for i in range(400)]  # fmt: skip
    assert 0.65 < sum(p > 0 for p in picks) / 400 < 0.85  # chairs: weight 3 of 4
    cfg = tiny_config(tmp_path, 2, datasets=[f"chairs:{CHAIRS}"], synth_weight=0.0, height=192, width=256)
    alone = SynthStream(cfg, 0, datasets=datasets)
    for index in range(8):
        image1, image2, flow, valid = alone.sample(index)
        assert image1.shape == (3, 192, 256) and flow.shape == (2, 192, 256) and bool(valid.all())
        seen = ~out_of_frame(flow[None])[0, 0]
        warped = backward_warp(image2[None], flow[None])[0]
        assert (image1 - warped).abs()[:, seen].mean() < 0.75 * (image1 - image2).abs()[:, seen].mean(), index


def test_the_provenance_names_the_stereo_share_only_when_synthetic_scenes_are_drawn(tmp_path):
    from flowcli.train.trainer import _provenance

    synthetic = _provenance(tiny_config(tmp_path, 2, stereo_fraction=0.15), 2, [], None)
    assert synthetic["stereo_fraction"] == 0.15
    assert list(synthetic) == [
        "trained_by", "data", "steps", "batch_size", "crop", "stereo_fraction", "recent_epe", "date"
    ]  # fmt: skip
    datasets_only = tiny_config(tmp_path, 2, datasets=["chairs:/data/chairs"], synth_weight=0.0, stereo_fraction=0.15)
    assert "stereo_fraction" not in _provenance(datasets_only, 2, [], None)


@needs_chairs
def test_training_on_a_dataset_with_evaluation_resumes_bit_for_bit_and_records_its_scores(
    monkeypatch, capsys, tmp_path
):
    torch.set_num_threads(1)
    mixed = dict(datasets=[f"chairs:{CHAIRS}"], eval_datasets=[f"chairs:{CHAIRS}"], eval_every=2)
    straight = train(tiny_config(tmp_path / "a", 4, **mixed), quiet=True)["history"]
    train(tiny_config(tmp_path / "b", 4, **mixed), quiet=True, stop_after=2)
    resumed = train(tiny_config(tmp_path / "b", 4, **mixed), quiet=True)["history"]
    assert [r["total"] for r in straight] == [r["total"] for r in resumed]
    scores = json.loads((tmp_path / "b" / "eval.json").read_text())
    assert [s["step"] for s in scores] == [2, 4] and all(s["chairs epe"] > 0 for s in scores)
    assert scores == [{"step": r["step"], **r["eval"]} for r in straight if "eval" in r]
    provenance = load_checkpoint(tmp_path / "b" / "last.safetensors").provenance
    assert "chairs" in provenance["data"] and "synthetic" in provenance["data"]
    assert provenance["stereo_fraction"] == 0.2


@needs_chairs
def test_train_cli_takes_datasets_and_evaluations(monkeypatch, capsys, tmp_path):
    run = in_process_cli(monkeypatch, capsys, "train")
    code, _, err = run(
        "-c", tiny_recipe(tmp_path), "-o", tmp_path / "run", "--dataset", f"chairs:{CHAIRS}", "--synth-weight", "0",
        "--eval", f"chairs:{CHAIRS}", "--eval-every", "1", "-q",
    )  # fmt: skip
    assert code == 0, err
    assert "chairs epe" in err
    assert len(json.loads((tmp_path / "run" / "eval.json").read_text())) == 2
    provenance = load_checkpoint(tmp_path / "run" / "last.safetensors").provenance
    assert "synthetic" not in provenance["data"] and str(CHAIRS) in provenance["data"]
    assert "stereo_fraction" not in provenance  # no synthetic scenes, so no stereo share was drawn from


@pytest.mark.parametrize(
    "flags, needles",
    [
        (["--dataset", "nope:/x"], ["--dataset", "'nope:/x'", "NAME:ROOT"]),
        (["--dataset", "chairs"], ["--dataset", "NAME:ROOT"]),
        (["--dataset", "chairs:/x:-1"], ["--dataset", "weight must be a positive"]),
        (["--dataset", "chairs:/no/such/folder"], ["datasets", "/no/such/folder"]),
        (["--eval", "kitti2015:/no/such/folder"], ["eval_datasets", "/no/such/folder"]),
        (["--synth-weight", "0"], ["synth_weight", "nothing to train on"]),
    ],
)
def test_bad_datasets_are_one_line_errors_before_the_run_folder_is_made(monkeypatch, capsys, tmp_path, flags, needles):
    run = in_process_cli(monkeypatch, capsys, "train")
    code, _, err = run("-c", tiny_recipe(tmp_path), "-o", tmp_path / "run", "-q", *flags)
    assert_one_line_error(code, err, 2, *needles)
    assert not (tmp_path / "run").exists()


def test_a_crop_without_ground_truth_is_drawn_again(tmp_path):
    """KITTI has no ground truth in its top rows: a crop there gave a step with loss 0 that taught nothing."""
    from flowcli.train.trainer import SynthStream

    class SparseAtTheBottom:
        name = "kitti2015"

        def __len__(self):
            return 1

        def __getitem__(self, index):
            valid = torch.zeros(1, 256, 256, dtype=torch.bool)
            valid[:, 128:] = True
            return {"image1": torch.rand(3, 256, 256), "image2": torch.rand(3, 256, 256),
                    "flow": torch.zeros(2, 256, 256), "valid": valid}  # fmt: skip

    cfg = tiny_config(tmp_path, 2, datasets=["kitti2015:unused"], synth_weight=0.0)
    stream = SynthStream(cfg, 0, datasets=[(SparseAtTheBottom(), 1.0)])
    assert all(bool(stream.sample(index)[3].any()) for index in range(20))


@pytest.mark.parametrize(
    "model",
    [
        dict(TINY_MODEL, output_level=1),
        dict(TINY_MODEL, pyramid_channels=(8, 12, 16, 16, 16, 16, 16)),
    ],
    ids=["output-level-1", "7-levels"],
)
def test_every_level_the_model_outputs_has_a_weight_in_the_loss(model):
    """The level weights covered levels 2-6: the flow of level 1 (output_level 1) or of level 7 (7 pyramid
    levels) silently took no part in the loss."""
    from flowcli.models.pwc import FlowNetConfig, FlowOutput
    from flowcli.train.losses import LEVEL_WEIGHTS, level_weight, multiscale_epe

    assert LEVEL_WEIGHTS == {2: 1.28, 3: 0.64, 4: 0.32, 5: 0.32, 6: 0.32}  # the shipped recipes' weights
    assert [level_weight(level) for level in range(1, 8)] == [2.56, 1.28, 0.64, 0.32, 0.32, 0.32, 0.32]
    torch.manual_seed(0)
    net = FlowNet(FlowNetConfig(**model))
    with torch.no_grad():
        output = net(torch.rand(1, 3, 128, 128), torch.rand(1, 3, 128, 128))
    assert sorted(output.level_flows) == sorted(net.config.decoded_levels)
    target = torch.randn(1, 2, 128, 128)
    loss = float(multiscale_epe(output, target))
    for level, flow in output.level_flows.items():  # the loss moves with each level's flow alone
        moved = FlowOutput(output.flow, {**output.level_flows, level: flow + 1.0}, output.occlusion_logit)
        assert float(multiscale_epe(moved, target)) != pytest.approx(loss, rel=1e-4), level


def test_train_help_says_textures_take_image_files(monkeypatch, capsys):
    """--textures said "Folder or video", but image files work too (they are read by the same texture bank)."""
    run = in_process_cli(monkeypatch, capsys, "train")
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run("--help")
    assert code == 0
    help_text = " ".join(out.replace("│", " ").split())
    assert "image files, folders of images (every 8th), videos (every 8th frame); at most 400 in all" in help_text


def test_train_help_gives_the_defaults_a_run_without_flags_takes(monkeypatch, capsys):
    """The options read None (a flag overrides a config), so --help showed no default at all, and a bare `flowcli
    train` started a 20000-step run. Each default in the help is TrainConfig's own."""
    defaults = TrainConfig()
    run = in_process_cli(monkeypatch, capsys, "train")
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run("--help")
    assert code == 0
    help_text = " ".join(out.replace("│", " ").split())
    for shown in (f"default {defaults.out_dir})", f"default {defaults.steps})", f"(default {defaults.batch_size})",
                  f"(default {defaults.height}x{defaults.width})",
                  f"(default {defaults.seed})", f"(default {defaults.stereo_fraction})",
                  f"(default {defaults.checkpoint_every};"):  # fmt: skip
        assert shown in help_text, shown
    assert "AdamW; default 4e-4)" in help_text and defaults.lr == 4e-4


def test_a_weight_given_to_an_evaluation_is_named_in_the_error(monkeypatch, capsys, tmp_path):
    """`--eval chairs:FOLDER:2` said only that "FOLDER:2" is not a folder: --eval takes no weight."""
    folder = tmp_path / "chairs"
    folder.mkdir()
    run = in_process_cli(monkeypatch, capsys, "train")
    code, _, err = run("-c", tiny_recipe(tmp_path), "-o", tmp_path / "run", "-q", "--eval", f"chairs:{folder}:2")
    assert_one_line_error(code, err, 2, f"{folder}:2 is not a folder", "no weight", f"'chairs:{folder}'")
    code, _, err = run("-c", tiny_recipe(tmp_path), "-o", tmp_path / "run", "-q", "--eval", f"chairs:{folder}:x")
    assert_one_line_error(code, err, 2, f"{folder}:x is not a folder")
    assert "no weight" not in err
    assert not (tmp_path / "run").exists()


def test_spaces_around_the_parts_of_a_dataset_spec_are_dropped(tmp_path):
    """`--dataset "chairs: /data"` looked for the folder " /data"; so did the same spec in a config file."""
    from flowcli.data.datasets import parse_dataset_spec
    from flowcli.io.flow_formats import write_flo, write_png
    from flowcli.train.trainer import dataset_evaluator, load_datasets

    for k in (1, 2):
        write_png(tmp_path / f"00000_img{k}.png", torch.zeros(8, 8, 3, dtype=torch.uint8).numpy())
    write_flo(tmp_path / "00000_flow.flo", torch.zeros(8, 8, 2).numpy())
    assert parse_dataset_spec(f" chairs : {tmp_path} : 2 ", weighted=True) == [("chairs", str(tmp_path), 2.0)]
    assert parse_dataset_spec(f"chairs: {tmp_path}") == [("chairs", str(tmp_path), 1.0)]
    [(reader, weight)] = load_datasets([f"chairs : {tmp_path} : 2"])
    assert len(reader) == 1 and weight == 2.0
    dataset_evaluator([f"chairs: {tmp_path} "])  # checks the folder now


def test_an_unknown_dataset_name_is_reported_before_its_weight(monkeypatch, capsys, tmp_path):
    """`--dataset foo:/x:0` said the weight must be a positive number, not that there is no dataset foo."""
    from flowcli.data.datasets import parse_dataset_spec

    with pytest.raises(ValueError, match="unknown dataset 'foo'"):
        parse_dataset_spec("foo:/x:0", weighted=True)
    with pytest.raises(ValueError, match="weight must be a positive number"):
        parse_dataset_spec("chairs:/x:0", weighted=True)
    with pytest.raises(ValueError, match="expected NAME:ROOT"):
        parse_dataset_spec("chairs::2", weighted=True)
    run = in_process_cli(monkeypatch, capsys, "train")
    code, _, err = run("-c", tiny_recipe(tmp_path), "-o", tmp_path / "run", "-q", "--dataset", "foo:/x:0")
    assert_one_line_error(code, err, 2, "unknown dataset 'foo'", "chairs")
    assert "weight" not in err.replace("WEIGHT", "")
    assert not (tmp_path / "run").exists()


def test_a_config_rule_between_settings_may_be_met_by_the_flags(tmp_path):
    """A config file with "synth_weight": 0 and `--dataset chairs:DIR` was refused: "synth_weight" 0 leaves
    nothing to train on, though the flag gave the datasets (flags override the file)."""
    path = tmp_path / "datasets-only.json"
    path.write_text(json.dumps({"synth_weight": 0}))
    cfg = TrainConfig.from_file(path, datasets=["chairs:/data"], steps=2)
    assert cfg.synth_weight == 0 and cfg.datasets == ["chairs:/data"] and cfg.steps == 2
    with pytest.raises(FlowcliError, match=r'datasets-only\.json: "synth_weight" 0 leaves nothing'):
        TrainConfig.from_file(path, steps=2)
    path.write_text(json.dumps({"synth_weight": 0, "steps": "2"}))  # a bad value in the file is still refused
    with pytest.raises(FlowcliError, match=r'datasets-only\.json: "steps" must be a positive integer'):
        TrainConfig.from_file(path, datasets=["chairs:/data"], steps=2)


def test_the_final_weights_are_evaluated_when_the_steps_are_no_multiple_of_eval_every(tmp_path):
    """`--eval` with the default eval_every (each checkpoint) on a run shorter than --checkpoint-every, or
    --eval-every not dividing --steps, never scored the weights the run ends with (no eval.json at all)."""
    torch.set_num_threads(1)
    scores = lambda model: {"x epe": 1.0}  # noqa: E731
    train(tiny_config(tmp_path / "a", 3, batch_size=1, eval_every=2), evaluate=scores, quiet=True)
    assert [r["step"] for r in json.loads((tmp_path / "a" / "eval.json").read_text())] == [2, 3]
    train(tiny_config(tmp_path / "b", 3, batch_size=1, eval_every=2), evaluate=scores, quiet=True, stop_after=1)
    assert not (tmp_path / "b" / "eval.json").exists()  # a stop before the end is not the final weights


def test_a_run_folder_and_textures_under_the_home_folder_are_found(monkeypatch, tmp_path):
    """`"out_dir": "~/runs/x"` (or `--out=~/runs/x`, which the shell leaves as is) trained into a folder named "~" in
    the current folder, and `"textures": ["~/pics"]` did not exist, though the dataset roots and --init expand "~"."""
    import imageio.v3 as iio
    import numpy as np

    home, here = tmp_path / "home", tmp_path / "here"
    home.mkdir(), here.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(here)
    iio.imwrite(home / "texture.png", np.full((48, 40, 3), 128, np.uint8))
    torch.set_num_threads(1)
    summary = train(tiny_config("~/run", 1, textures=["~/texture.png"]), quiet=True)
    assert summary["checkpoint"] == str(home / "run" / "last.safetensors")
    assert (home / "run" / "state.pt").exists() and not (here / "~").exists()


def test_a_resumed_run_records_the_init_weights_it_started_from(tmp_path):
    """The init checkpoint's sha256 was taken again on resume: a run fine-tuned from another run's weights that went
    on meanwhile named in its provenance a file it never started from."""
    import shutil

    from flowcli.registry import sha256_file

    torch.set_num_threads(1)
    train(tiny_config(tmp_path / "base", 2), quiet=True)
    init = tmp_path / "init.safetensors"
    shutil.copy(tmp_path / "base" / "last.safetensors", init)
    started_from = sha256_file(init)
    tuned = tiny_config(tmp_path / "tuned", 3, init_weights=str(init), model={})
    train(tuned, quiet=True, stop_after=1)
    train(tiny_config(tmp_path / "base", 2, seed=1), quiet=True, overwrite=True)
    shutil.copy(tmp_path / "base" / "last.safetensors", init)  # the init file is replaced by other weights
    assert sha256_file(init) != started_from
    train(tuned, quiet=True)
    assert load_checkpoint(tmp_path / "tuned" / "last.safetensors").provenance["init_sha256"] == started_from


@pytest.mark.parametrize("init_now", ["deleted", "another architecture"])
def test_a_fine_tuning_run_resumes_bit_for_bit_without_its_init_file(tmp_path, init_now):
    """A resume rebuilt the model from --init: with that file deleted (an earlier run's folder cleaned) it failed with
    "no such checkpoint file" (exit 4), with other weights of another architecture there, with a load_state_dict
    traceback, although state.pt holds every weight the run needs."""
    import shutil

    from flowcli.registry import sha256_file

    torch.set_num_threads(1)
    train(tiny_config(tmp_path / "base", 1), quiet=True)
    init = tmp_path / "init.safetensors"
    shutil.copy(tmp_path / "base" / "last.safetensors", init)
    started_from = sha256_file(init)
    straight = train(tiny_config(tmp_path / "a", 4, init_weights=str(init), model={}), quiet=True)["history"]
    tuned = tiny_config(tmp_path / "b", 4, init_weights=str(init), model={})
    train(tuned, quiet=True, stop_after=2)
    init.unlink()
    if init_now == "another architecture":
        narrower = {**TINY_MODEL, "pyramid_channels": (8, 8, 8, 8, 8, 8)}
        train(tiny_config(tmp_path / "other", 1, model=narrower), quiet=True)
        shutil.copy(tmp_path / "other" / "last.safetensors", init)
    resumed = train(tuned, quiet=True)["history"]
    assert [r["total"] for r in resumed] == [r["total"] for r in straight]
    provenance = load_checkpoint(tmp_path / "b" / "last.safetensors").provenance
    assert provenance["init_weights"] == str(init) and provenance["init_sha256"] == started_from


def test_an_evaluation_cut_by_a_ctrl_c_is_run_when_the_run_resumes(monkeypatch, tmp_path):
    """A Ctrl-C during an evaluation saved that step's state, and the resumed run went on from it without ever scoring
    those weights: at the final step, eval.json never got the final weights' scores."""
    torch.set_num_threads(1)
    evaluated = []

    def scores(model):
        evaluated.append(len(evaluated) + 1)
        if len(evaluated) == 2:  # the evaluation of the final step, 4
            raise KeyboardInterrupt
        return {"x epe": float(len(evaluated))}

    cfg = tiny_config(tmp_path, 4, batch_size=1, eval_every=2)
    with pytest.raises(FlowcliError, match="interrupted at step 4"):
        train(cfg, evaluate=scores, quiet=True)
    train(cfg, evaluate=scores, quiet=True)
    assert json.loads((tmp_path / "eval.json").read_text()) == [{"step": 2, "x epe": 1.0}, {"step": 4, "x epe": 3.0}]
    train(cfg, evaluate=scores, quiet=True)  # the state records it: a finished run is not scored again
    assert len(evaluated) == 3


def test_a_finished_run_writes_its_deleted_or_cut_weights_again_from_its_state(tmp_path):
    """Running a finished run again said "done: ..., weights in OUT/last.safetensors" when that file had been
    deleted (or OUT/ema.safetensors cut short): nothing was written, as no step was left to run."""
    torch.set_num_threads(1)
    cfg = tiny_config(tmp_path, 2, ema_decay=0.9)
    train(cfg, quiet=True)
    weights, average = load_checkpoint(tmp_path / "last.safetensors"), load_checkpoint(tmp_path / "ema.safetensors")
    (tmp_path / "last.safetensors").unlink()
    data = (tmp_path / "ema.safetensors").read_bytes()
    (tmp_path / "ema.safetensors").write_bytes(data[: len(data) // 2])
    assert train(cfg, quiet=True)["steps"] == 2
    for before, name in ((weights, "last"), (average, "ema")):
        after = load_checkpoint(tmp_path / f"{name}.safetensors")
        for key, value in before.state_dict().items():
            torch.testing.assert_close(after.state_dict()[key], value, rtol=0, atol=0)


def test_an_unreadable_dataset_item_in_a_data_worker_is_a_one_line_error(monkeypatch, capsys, tmp_path):
    """With a data worker (the default), a corrupt dataset file printed torch's "Caught InputError in DataLoader
    worker process 0. Original Traceback" and the worker's whole traceback after "error:"."""
    from flowcli.io.flow_formats import write_flo, write_png

    chairs = tmp_path / "chairs"
    for k in (1, 2):
        write_png(chairs / f"00000_img{k}.png", torch.zeros(64, 64, 3, dtype=torch.uint8).numpy())
    write_flo(chairs / "00000_flow.flo", torch.zeros(64, 64, 2).numpy())
    (chairs / "00000_flow.flo").write_bytes((chairs / "00000_flow.flo").read_bytes()[:100])  # cut short
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({**json.loads(tiny_recipe(tmp_path).read_text()), "workers": 1}))
    run = in_process_cli(monkeypatch, capsys, "train")
    code, _, err = run(
        "-c", recipe, "-o", tmp_path / "run", "-q", "--synth-weight", "0", "--dataset", f"chairs:{chairs}"
    )
    assert_one_line_error(code, err, 2, "cannot read", str(chairs / "00000_flow.flo"))
    assert "DataLoader" not in err


class _UnreadableItems(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        raise InputError(f"cannot read item{index}.flo: the file is truncated")


def test_receiving_batch_gives_a_worker_error_as_its_one_line_for_train_and_adapt():
    """The one place both training loops (train, adapt) take a batch from their data workers: the worker's flowcli
    error comes out with its own message, not torch's "Caught InputError in DataLoader worker process 0" and the
    worker's traceback; an error of the main process passes as it is."""
    from flowcli.data.workers import receiving_batch, start_data_worker

    loader = torch.utils.data.DataLoader(_UnreadableItems(), num_workers=1, worker_init_fn=start_data_worker)
    batches = iter(loader)
    with pytest.raises(InputError) as excinfo, receiving_batch(1):
        next(batches)
    assert str(excinfo.value) == "cannot read item0.flo: the file is truncated"
    del batches
    with pytest.raises(InputError, match="^Caught nothing$"), receiving_batch(0):
        raise InputError("Caught nothing")


def test_a_config_file_with_a_byte_order_mark_or_in_utf16_is_read(tmp_path):
    """A recipe saved by Notepad (UTF-8 with a BOM) or written by PowerShell's `>` (UTF-16) was "not valid JSON:
    Unexpected UTF-8 BOM (decode using utf-8-sig)", which says nothing a user can do."""
    path = tmp_path / "recipe.json"
    for encoding in ("utf-8-sig", "utf-16"):
        path.write_text(json.dumps({"steps": 7, "textures": ["Straße.png"]}), encoding=encoding)
        cfg = TrainConfig.from_file(path)
        assert cfg.steps == 7 and cfg.textures == ["Straße.png"]
