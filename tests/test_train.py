"""`flowcli train`: a tiny CPU run learns, and an interrupted run resumes bit for bit."""

import torch

from flowcli.checkpoint import load_checkpoint
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


def test_fifty_step_cpu_run_lowers_the_loss_and_writes_a_loadable_checkpoint(tmp_path):
    torch.set_num_threads(1)
    summary = train(tiny_config(tmp_path, 50), quiet=True)
    epe = [r["epe"] for r in summary["history"]]
    assert summary["steps"] == 50
    assert sum(epe[-10:]) / 10 < sum(epe[:10]) / 10
    model = load_checkpoint(tmp_path / "last.safetensors")
    assert model.provenance["steps"] == 50


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
