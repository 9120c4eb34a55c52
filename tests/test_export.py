"""`flowcli export`: the ONNX graph computes what estimate_flow computes, at any batch and size."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import onnx
import pytest
import torch

import flowcli
from flowcli.checkpoint import save_checkpoint
from flowcli.errors import InputError
from flowcli.export import MAX_OPSET, ExportReport, FlowGraph, check_pair, export_onnx, onnx_session, run_onnx
from flowcli.inference import estimate_flow
from flowcli.models import FlowNet, FlowNetConfig
from tests.cli_harness import assert_one_line_error, in_process_cli

TINY = dict(pyramid_channels=(8, 8, 8, 8, 8, 8), decoder_channels=(8, 8), context_channels=(8,), context_dilations=(1,))


@pytest.fixture(scope="module")
def default_model():
    return flowcli.load_model()  # the bundled weights: real flows, so the warps and the occlusion check matter


@pytest.fixture(scope="module")
def exported(default_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "default.onnx"
    report = export_onnx(default_model, path, occlusion=True, source={"weights": "default", "sha256": "abc"})
    return path, report


def _scenes(seeds: list[int], height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [check_pair(height, width, seed) for seed in seeds]
    return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])


@pytest.mark.parametrize("seeds,height,width", [([1], 244, 332), ([2, 3], 150, 230)])
def test_the_graph_gives_estimate_flows_outputs_at_any_batch_and_size(default_model, exported, seeds, height, width):
    path, _ = exported
    image1, image2 = _scenes(seeds, height, width)
    outputs = run_onnx(onnx_session(path), image1, image2)
    expected = estimate_flow(default_model, image1, image2, occlusion=True)
    assert outputs["flow"].shape == (len(seeds), 2, height, width)
    assert expected.forward.abs().max() > 2.0  # a real motion to compare, not zeros
    assert torch.allclose(outputs["flow"], expected.forward, atol=1e-3)
    assert torch.allclose(outputs["flow_backward"], expected.backward, atol=1e-3)
    assert outputs["occlusion"].shape == (len(seeds), 1, height, width)
    assert 0.01 < expected.occlusion.mean() < 0.5
    assert (outputs["occlusion"] != expected.occlusion).float().mean() < 1e-3  # pixels on the threshold may flip


def test_the_file_describes_itself_and_the_model_is_left_as_it_was(default_model, exported):
    path, report = exported
    proto = onnx.load(str(path))
    metadata = {entry.key: entry.value for entry in proto.metadata_props}
    assert json.loads(metadata["flowcli.config"]) == default_model.config.to_dict()
    assert json.loads(metadata["flowcli.source"]) == {"weights": "default", "sha256": "abc"}
    assert [i.name for i in proto.graph.input] == ["image1", "image2"]
    assert [o.name for o in proto.graph.output] == ["flow", "flow_backward", "occlusion"]
    assert report.max_difference is not None and report.max_difference < 1e-3
    parameter = next(default_model.parameters())
    assert not default_model.training and parameter.dtype == torch.float32
    assert parameter.is_contiguous(memory_format=torch.channels_last)  # the CPU inference layout, untouched


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return FlowNet(FlowNetConfig(**TINY)).eval()


def test_the_outputs_declare_their_channels(exported):
    path, _ = exported
    shapes = {
        output.name: [d.dim_param or d.dim_value for d in output.type.tensor_type.shape.dim]
        for output in onnx.load(str(path)).graph.output
    }
    assert shapes == {
        "flow": ["batch", 2, "height", "width"],
        "flow_backward": ["batch", 2, "height", "width"],
        "occlusion": ["batch", 1, "height", "width"],
    }


@pytest.fixture(scope="module")
def tiny_graph(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "flow.onnx"
    export_onnx(tiny_model, path, check=False)
    return path


def test_a_flow_only_graph_has_one_output(tiny_model, tiny_graph):
    image1, image2 = check_pair(height=70, width=90)
    outputs = run_onnx(onnx_session(tiny_graph), image1, image2)
    assert list(outputs) == ["flow"]
    assert torch.allclose(outputs["flow"], FlowGraph(tiny_model)(image1, image2), atol=1e-3)


@pytest.fixture
def tiny_checkpoint(tiny_model, tmp_path):
    return save_checkpoint(tiny_model, tmp_path / "tiny.safetensors", provenance={"note": "test"})


def test_cli_writes_the_graph_and_reports_it(monkeypatch, capsys, tmp_path, tiny_checkpoint):
    run = in_process_cli(monkeypatch, capsys, "export")
    monkeypatch.chdir(tmp_path)
    code, out, err = run("-w", tiny_checkpoint, "--json", "-q")
    assert code == 0, err
    payload = json.loads(out)
    assert payload["path"] == "tiny.onnx" and (tmp_path / "tiny.onnx").is_file()
    assert payload["outputs"] == ["flow"] and payload["max_difference"] < 1e-3
    from flowcli.registry import sha256_file

    assert payload["sha256"] == sha256_file(tiny_checkpoint)


def test_cli_refuses_bad_requests_and_keeps_what_exists(monkeypatch, capsys, tmp_path, tiny_checkpoint):
    run = in_process_cli(monkeypatch, capsys, "export")
    existing = tmp_path / "model.onnx"
    existing.write_bytes(b"keep me")
    code, _, err = run("-w", tiny_checkpoint, "-o", existing)
    assert_one_line_error(code, err, 3, "already exists", "--overwrite")
    assert existing.read_bytes() == b"keep me"
    code, _, err = run("-w", tiny_checkpoint, "-o", tmp_path / "model.pt")
    assert_one_line_error(code, err, 2, ".onnx")
    code, _, err = run("-w", tiny_checkpoint, "-o", tmp_path / ".onnx")
    assert_one_line_error(code, err, 2, "no name before .onnx", "model.onnx")
    code, _, err = run("-w", tiny_checkpoint, "-o", tmp_path / "new.onnx", "--opset", "13")
    assert_one_line_error(code, err, 2, "GridSample")


def test_a_graph_that_fails_the_check_is_not_written(monkeypatch, capsys, tmp_path, tiny_checkpoint):
    import flowcli.export

    monkeypatch.setattr(flowcli.export, "CHECK_TOLERANCE", 0.0)
    monkeypatch.setattr(flowcli.export, "check_export", lambda *args: 0.5)
    run = in_process_cli(monkeypatch, capsys, "export")
    code, _, err = run("-w", tiny_checkpoint, "-o", tmp_path / "bad.onnx", "-q")
    assert_one_line_error(code, err, 1, "0.5 px", "nothing was written")
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.safetensors"]  # no output, no temp file


def test_the_readme_example_runs_as_written(monkeypatch, capsys, tmp_path, tiny_graph):
    image = pytest.importorskip("PIL.Image")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Deploying: ONNX", 1)[1].split("\n## ", 1)[0]
    example = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    shutil.copy(tiny_graph, "flowcli-pwc-synth.onnx")
    for name, seed in (("frame1.png", 1), ("frame2.png", 2)):
        pixels = torch.randint(0, 256, (37, 53, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
        image.fromarray(pixels.numpy()).save(name)
    namespace = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert namespace["flow"].shape == (1, 2, 37, 53)


def _weights_must_not_load(*args, **kwargs):
    pytest.fail("the weights were loaded before the request was refused")


def test_an_opset_torch_cannot_write_is_refused_before_any_work(monkeypatch, capsys, tmp_path, tiny_model):
    monkeypatch.setattr(flowcli.models, "load_model_and_file", _weights_must_not_load)
    run = in_process_cli(monkeypatch, capsys, "export")
    code, _, err = run("-o", tmp_path / "new.onnx", "--opset", MAX_OPSET + 4)  # torch fails with a traceback
    assert_one_line_error(code, err, 2, f"--opset {MAX_OPSET + 4}", f"use 16 to {MAX_OPSET}")
    with pytest.raises(InputError, match="newer than"):  # torch writes it with a warning that it is unsupported
        export_onnx(tiny_model, tmp_path / "new.onnx", opset=MAX_OPSET + 1, check=False)
    assert list(tmp_path.iterdir()) == []


def test_without_onnx_the_weights_are_not_fetched(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)
    monkeypatch.setattr(flowcli.models, "load_model_and_file", _weights_must_not_load)
    run = in_process_cli(monkeypatch, capsys, "export")
    code, _, err = run("-w", "hf://owner/repo/flow.safetensors", "-o", tmp_path / "flow.onnx")
    assert_one_line_error(code, err, 1, "onnx package", "pip install")


def test_the_default_name_of_an_hf_file_drops_its_revision(monkeypatch, capsys, tmp_path, tiny_model, tiny_checkpoint):
    loaded = (tiny_model, tiny_checkpoint, "0")
    monkeypatch.setattr(flowcli.models, "load_model_and_file", lambda *args, **kwargs: loaded)
    run = in_process_cli(monkeypatch, capsys, "export")
    monkeypatch.chdir(tmp_path)
    code, out, err = run("-w", "hf://owner/repo/flow.safetensors@v1.2", "--no-check", "--json", "-q")
    assert code == 0, err
    assert json.loads(out)["path"] == "flow.onnx" and (tmp_path / "flow.onnx").is_file()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_a_folder_that_takes_no_files_is_refused_before_the_weights_load(monkeypatch, capsys, tmp_path):
    """/proc passed the up-front check (os.access says yes to root), so the model loaded before the write failed."""
    monkeypatch.setattr(flowcli.models, "load_model_and_file", _weights_must_not_load)
    run = in_process_cli(monkeypatch, capsys, "export")
    code, _, err = run("-o", "/proc/x.onnx")
    assert_one_line_error(code, err, 3, "/proc", "choose another with -o")
    (tmp_path / "file").write_bytes(b"")
    code, _, err = run("-o", tmp_path / "file" / "x.onnx")
    assert_one_line_error(code, err, 3, "is a file")


def test_the_default_name_of_a_registry_name_with_a_slash_is_in_the_current_folder(
    monkeypatch, capsys, tmp_path, tiny_model, tiny_checkpoint
):
    registry_file = tmp_path / "registry.json"
    record = {"path": "flow.safetensors", "source": "https://example.com/flow.safetensors"}
    registry_file.write_text(json.dumps({"models": {"team/flow": {"task": "flow", "files": [record]}}}))
    monkeypatch.setenv("FLOWCLI_REGISTRY", str(registry_file))
    loaded = (tiny_model, tiny_checkpoint, "0")
    monkeypatch.setattr(flowcli.models, "load_model_and_file", lambda *args, **kwargs: loaded)

    def export_stub(model, path, **kwargs):  # the name is what is tested, not the (seconds-long) export
        Path(path).write_bytes(b"onnx")
        return ExportReport(Path(path), ["image1", "image2"], ["flow"], 17, 0.0)

    monkeypatch.setattr(flowcli.export, "export_onnx", export_stub)
    run = in_process_cli(monkeypatch, capsys, "export")
    monkeypatch.chdir(tmp_path)
    code, out, err = run("-w", "team/flow", "--no-check", "--json", "-q")
    assert code == 0, err
    assert json.loads(out)["path"] == "team-flow.onnx" and (tmp_path / "team-flow.onnx").is_file()


@pytest.fixture
def export_stub(monkeypatch, tiny_model, tiny_checkpoint):
    """The CLI around export_onnx, which only writes a placeholder file: for what the CLI prints."""
    loaded = (tiny_model, tiny_checkpoint, "0")
    monkeypatch.setattr(flowcli.models, "load_model_and_file", lambda *args, **kwargs: loaded)

    def export_stub(model, path, **kwargs):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(b"onnx")
        return ExportReport(Path(path), ["image1", "image2"], ["flow"], 17, 0.0)

    monkeypatch.setattr(flowcli.export, "export_onnx", export_stub)


def test_an_output_path_with_brackets_is_printed_as_given(monkeypatch, capsys, tmp_path, tiny_checkpoint, export_stub):
    """`-o 'out[/b]/m.onnx'` ended in a rich MarkupError traceback before anything was exported, and
    `-o 'a [b].onnx'` was reported as written to 'a .onnx'."""
    run = in_process_cli(monkeypatch, capsys, "export")
    for output in (tmp_path / "out[/b]" / "m.onnx", tmp_path / "a [b].onnx"):
        code, _, err = run("-w", tiny_checkpoint, "-o", output, "--no-check")
        assert code == 0, err
        assert f"exporting {tiny_checkpoint} to {output} ..." in err and f"wrote {output} (" in err
        assert output.is_file()


def test_a_long_output_path_is_printed_on_one_line(monkeypatch, capsys, tmp_path, tiny_checkpoint, export_stub):
    """Into a log (no terminal: 80 columns) the messages were wrapped, the output's path cut in two."""
    run = in_process_cli(monkeypatch, capsys, "export")
    monkeypatch.setattr(flowcli.console.stderr, "soft_wrap", False)  # as on a real stderr; the harness sets it
    output = tmp_path / ("a_folder_name_long_enough_to_pass_80_columns_" * 2) / "model.onnx"
    code, _, err = run("-w", tiny_checkpoint, "-o", output, "--no-check")
    assert code == 0, err
    assert err.splitlines() == [
        f"exporting {tiny_checkpoint} to {output} ...",
        f"wrote {output} (0.0 MB, 0.0 s); not checked",
    ]


def test_a_folder_as_output_is_refused_with_a_file_name_to_give(monkeypatch, capsys, tmp_path):
    """`-o models/` (a folder) was told only that it "should end in .onnx"."""
    monkeypatch.setattr(flowcli.models, "load_model_and_file", _weights_must_not_load)
    run = in_process_cli(monkeypatch, capsys, "export")
    (tmp_path / "models").mkdir()
    code, _, err = run("-w", "hf://owner/repo/flow.safetensors@v1", "-o", tmp_path / "models")
    assert_one_line_error(
        code, err, 3, f"-o {tmp_path / 'models'} is a folder", f"-o {tmp_path / 'models' / 'flow.onnx'}"
    )
    assert list((tmp_path / "models").iterdir()) == []
