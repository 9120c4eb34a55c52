"""`flowcli train`: a tiny CPU run learns, and an interrupted run resumes bit for bit."""

import torch

from flowcli.checkpoint import load_checkpoint
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
    torch.save(state, tmp_path / "state.pt")
    assert len(train(cfg, quiet=True)["history"]) == 6
