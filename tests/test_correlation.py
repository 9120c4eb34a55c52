"""Correlation dispatch, the warp_correlation reference and `flowcli doctor` (PyTorch only, no triton import).

The Triton kernels themselves are tested in test_correlation_triton.py (interpreter subprocess).
"""

from __future__ import annotations

import json
import sys
import types
import warnings

import pytest
import torch
import typer
from typer.testing import CliRunner

from flowcli.cli import doctor
from flowcli.errors import FlowcliError
from flowcli.ops import correlation as corr
from flowcli.ops.warp import backward_warp


@pytest.fixture(autouse=True)
def _no_forced_backend(monkeypatch):
    monkeypatch.delenv("FLOWCLI_CORR", raising=False)


def _features(b=2, c=5, h=7, w=9, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, c, h, w, generator=gen),
        torch.randn(b, c, h, w, generator=gen),
        torch.randn(b, 2, h, w, generator=gen) * 2 + 0.1,
    )


@pytest.mark.parametrize("r", [0, 1, 3])
def test_reference_matches_independent_shift_implementation(r):
    f1, f2, _ = _features()
    _close = torch.testing.assert_close
    _close(corr.correlation_torch(f1.double(), f2.double(), r), doctor._shifted_reference(f1.double(), f2.double(), r))


def test_warp_correlation_torch_is_correlation_of_the_warped_map():
    f1, f2, flow = _features()
    want = corr.correlation_torch(f1, backward_warp(f2, flow), 2)
    assert torch.equal(corr.warp_correlation(f1, f2, flow, 2), want)
    assert torch.equal(corr.warp_correlation_torch(f1, f2, flow, 2), want)


def test_warp_correlation_reference_gradients_flow_to_all_inputs():
    f1, f2, flow = (t.double().requires_grad_() for t in _features(1, 2, 4, 5))
    assert torch.autograd.gradcheck(lambda a, b, fl: corr.warp_correlation(a, b, fl, 1), (f1, f2, flow), fast_mode=True)


def test_warp_correlation_checks_shapes():
    f1, f2, flow = _features()
    with pytest.raises(ValueError, match="flow must be"):
        corr.warp_correlation(f1, f2, flow[:, :1], 2)
    with pytest.raises(ValueError, match="equal shapes"):
        corr.warp_correlation(f1, f2[:, :3], flow, 2)


@pytest.mark.parametrize("r", [1, 4])
def test_shifts_backend_matches_the_reference_and_is_chosen_by_use_backend(monkeypatch, r):
    f1, f2, flow = _features(h=12, w=13)
    monkeypatch.setenv("FLOWCLI_CORR", "torch")
    with corr.use_backend("shifts"):  # wins over FLOWCLI_CORR, for the export's trace
        assert corr.backend_name(f1) == "shifts"
        shifted, warped = corr.correlation(f1, f2, r), corr.warp_correlation(f1, f2, flow, r)
    assert corr.backend_name(f1) == "torch"
    torch.testing.assert_close(shifted, corr.correlation_torch(f1, f2, r))
    torch.testing.assert_close(warped, corr.warp_correlation_torch(f1, f2, flow, r))
    monkeypatch.setenv("FLOWCLI_CORR", "shifts")
    assert corr.backend_name(f1) == "shifts"
    with pytest.raises(ValueError, match="not a correlation backend"):
        with corr.use_backend("cuda"):
            pass


def test_cpu_tensors_use_the_reference_without_importing_triton(monkeypatch):
    monkeypatch.delitem(sys.modules, "flowcli.ops.correlation_triton", raising=False)
    f1, f2, flow = _features()
    assert corr.backend_name(f1) == "torch"
    corr.correlation(f1, f2)
    corr.warp_correlation(f1, f2, flow)
    assert "flowcli.ops.correlation_triton" not in sys.modules


def test_forced_backend(monkeypatch):
    f1, _, _ = _features()
    monkeypatch.setenv("FLOWCLI_CORR", "torch")
    assert corr.backend_name(f1) == "torch"
    monkeypatch.setenv("FLOWCLI_CORR", " Triton ")
    assert corr.backend_name(f1) == "triton"
    monkeypatch.setenv("FLOWCLI_CORR", "cuda")
    with pytest.raises(ValueError, match="not a backend"):
        corr.correlation(f1, f1)


def test_cuda_without_triton_warns_once_and_falls_back(monkeypatch):
    monkeypatch.setattr(corr, "_TRITON_STATE", {})
    monkeypatch.delitem(sys.modules, "flowcli.ops.correlation_triton", raising=False)
    monkeypatch.setitem(sys.modules, "triton", None)  # import triton -> ImportError
    cuda_like = types.SimpleNamespace(is_cuda=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert corr._backend_for(cuda_like) == "torch"
        assert corr._backend_for(cuda_like) == "torch"
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "flowcli[gpu]" in messages[0], messages


def test_a_fused_kernel_that_cannot_launch_falls_back_once_with_a_warning(monkeypatch):
    """Triton imports, but its kernel cannot be built here (no C compiler, an unsupported GPU): the first
    launch warns and every call then uses the reference. Out of memory, a failure after a first success
    and an explicit FLOWCLI_CORR=triton are raised as they are."""
    f1, f2, _ = _features()
    calls = []

    def fused(a, b, r, error=None):
        calls.append(error)
        if error is not None:
            raise error
        return corr.correlation_torch(a, b, r)

    def use(error):
        fake = types.SimpleNamespace(correlation_triton=lambda a, b, r: fused(a, b, r, error))
        monkeypatch.setitem(sys.modules, "flowcli.ops.correlation_triton", fake)

    monkeypatch.setattr(corr, "_backend_for", lambda t: "triton" if corr._TRITON_STATE.get("ok", True) else "torch")
    monkeypatch.delenv("FLOWCLI_CORR", raising=False)
    expected = corr.correlation_torch(f1, f2, 4)

    monkeypatch.setattr(corr, "_TRITON_STATE", {})
    use(RuntimeError("Failed to find C compiler. Please specify via CC environment variable."))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert torch.equal(corr.correlation(f1, f2), expected)
        assert torch.equal(corr.correlation(f1, f2), expected)
    assert len(calls) == 1 and [str(w.message) for w in caught] == [
        "fused correlation failed to run (Failed to find C compiler. Please specify via CC environment variable.); "
        "using the PyTorch reference"
    ]

    monkeypatch.setattr(corr, "_TRITON_STATE", {})
    use(torch.OutOfMemoryError("CUDA out of memory"))
    with pytest.raises(torch.OutOfMemoryError):
        corr.correlation(f1, f2)

    monkeypatch.setattr(corr, "_TRITON_STATE", {})
    use(None)
    assert torch.equal(corr.correlation(f1, f2), expected)
    use(RuntimeError("illegal memory access"))
    with pytest.raises(RuntimeError, match="illegal memory access"):  # it ran before: a real error, not a setup one
        corr.correlation(f1, f2)

    monkeypatch.setattr(corr, "_TRITON_STATE", {})
    monkeypatch.setenv("FLOWCLI_CORR", "triton")
    use(RuntimeError("Failed to find C compiler"))
    with pytest.raises(RuntimeError, match="C compiler"):
        corr.correlation(f1, f2)


def test_missing_triton_message(monkeypatch):
    monkeypatch.delitem(sys.modules, "flowcli.ops.correlation_triton", raising=False)
    monkeypatch.setitem(sys.modules, "triton", None)
    with pytest.raises(ImportError, match=r"flowcli\[gpu\].*FLOWCLI_CORR=torch"):
        import flowcli.ops.correlation_triton  # noqa: F401


def _doctor_app() -> typer.Typer:
    app = typer.Typer()
    doctor.register(app)

    @app.callback()
    def _root():
        pass

    return app


def test_doctor_reports_and_self_checks():
    result = CliRunner().invoke(_doctor_app(), ["doctor"])
    assert result.exit_code == 0, result.output
    for key in ("torch", "triton", "CUDA available", "device", "correlation backend", "self-check"):
        assert key in result.output
    assert "passed" in result.output


def test_doctor_json():
    result = CliRunner().invoke(_doctor_app(), ["doctor", "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["self_check"]["ok"] and report["self_check"]["backend"] == "torch"
    assert set(report["self_check"]["max_error"]) >= {"correlation.forward", "warp_correlation.grad_flow"}


def test_doctor_checks_the_shifts_backend_itself(monkeypatch):
    called = []
    original = corr.correlation_shifts
    monkeypatch.setattr(corr, "correlation_shifts", lambda *args: called.append(1) or original(*args))
    monkeypatch.setenv("FLOWCLI_CORR", "shifts")
    result = CliRunner().invoke(_doctor_app(), ["doctor", "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["self_check"]["ok"] and report["self_check"]["backend"] == "shifts"
    assert len(called) >= 2  # correlation and warp_correlation both ran on it, not on the torch backend
    assert "onnxruntime" in report


def test_doctor_fails_on_a_bad_backend(monkeypatch):
    monkeypatch.setenv("FLOWCLI_CORR", "nope")
    result = CliRunner().invoke(_doctor_app(), ["doctor"])
    assert isinstance(result.exception, FlowcliError) and "not a backend" in str(result.exception)


def test_doctor_is_a_registered_command():
    from flowcli.cli.main import _COMMAND_MODULES

    assert "doctor" in _COMMAND_MODULES


def test_reference_promotes_mixed_dtypes_like_the_triton_backend():
    f1, f2, _ = _features()
    out = corr.correlation_torch(f1, f2.double(), 2)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, corr.correlation_torch(f1.double(), f2.double(), 2))
