"""estimate_flow: any size, both directions, occlusion, tiling."""

import json
from pathlib import Path
import warnings

import numpy as np
import pytest
import torch
from cli_harness import assert_one_line_error, in_process_cli

from flowcli.checkpoint import save_checkpoint
from flowcli.errors import FlowcliError, InputError
from flowcli.inference import estimate_flow, forward_backward_occlusion, resolve_device, resolve_precision
from flowcli.io.flow_formats import write_flo, write_png
from flowcli.models.pwc import FlowNet, FlowNetConfig

TINY = dict(pyramid_channels=(8, 8, 8, 8, 8, 8), decoder_channels=(8, 8), context_channels=(8,), context_dilations=(1,))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return FlowNet(FlowNetConfig(**TINY)).eval()


def test_any_size_is_padded_and_cropped_back(model):
    result = estimate_flow(model, torch.rand(3, 70, 100), torch.rand(3, 70, 100), occlusion=True)
    assert result.forward.shape == (1, 2, 70, 100)
    assert result.backward.shape == (1, 2, 70, 100)
    assert result.occlusion.shape == (1, 1, 70, 100)


def test_backward_flow_is_the_forward_flow_of_the_swapped_pair(model):
    a, b = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    both = estimate_flow(model, a, b, backward=True)
    swapped = estimate_flow(model, b, a)
    torch.testing.assert_close(both.backward, swapped.forward, atol=1e-4, rtol=1e-4)


def test_tiled_result_matches_untiled_away_from_seams():
    # A model whose flow depends only on local content (constant output) makes seams exact.
    model = FlowNet(FlowNetConfig(**TINY)).eval()
    for p in model.parameters():
        torch.nn.init.zeros_(p)
    model.context.body[-1][0].bias.data[:] = torch.tensor([1.5, -0.5])
    a, b = torch.rand(1, 3, 200, 300), torch.rand(1, 3, 200, 300)
    whole = estimate_flow(model, a, b)
    tiled = estimate_flow(model, a, b, max_pixels=128 * 128, tile_overlap=32)
    assert tiled.tiles > 1
    torch.testing.assert_close(tiled.forward, whole.forward, atol=1e-4, rtol=1e-4)


def test_scale_returns_full_size_flow_in_full_size_pixels():
    model = FlowNet(FlowNetConfig(**TINY)).eval()
    for p in model.parameters():
        torch.nn.init.zeros_(p)
    model.context.body[-1][0].bias.data[:] = torch.tensor([1.5, -0.5])  # 4x that in network-input pixels
    a, b = torch.rand(1, 3, 130, 190), torch.rand(1, 3, 130, 190)
    native = estimate_flow(model, a, b).forward
    half = estimate_flow(model, a, b, scale=0.5, occlusion=True)
    assert half.forward.shape == (1, 2, 130, 190) and half.occlusion.shape == (1, 1, 130, 190)
    torch.testing.assert_close(native.mean((2, 3)), torch.tensor([[6.0, -2.0]]), atol=1e-4, rtol=0)
    torch.testing.assert_close(half.forward.mean((2, 3)), torch.tensor([[12.0, -4.0]]), atol=1e-4, rtol=0)
    with pytest.raises(InputError, match="scale"):
        estimate_flow(model, a, b, scale=0)


def test_frames_of_different_sizes_are_an_input_error(model):
    with pytest.raises(InputError, match="differ in size"):
        estimate_flow(model, torch.rand(3, 64, 64), torch.rand(3, 64, 80))


def test_fp16_on_cpu_falls_back_with_a_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_precision("fp16", torch.device("cpu")) == torch.float32
    assert any("fp32" in str(w.message) for w in caught)


def test_unknown_or_absent_devices_are_one_line_errors():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    for device in ("cuda:x", "cuda:", "cpu:0", "bogus", "cuda:-1"):
        with pytest.raises(FlowcliError, match="unknown device"):
            resolve_device(device)
    with pytest.raises(FlowcliError, match="cuda:99") as absent:  # no CUDA at all, or not 100 GPUs
        resolve_device("cuda:99")
    assert absent.value.exit_code == 2  # the device asked for is not here: bad input, as in flowcli doctor


def test_eval_checks_the_device_and_runs_on_auto(tmp_path, monkeypatch, capsys, model):
    weights = save_checkpoint(model, tmp_path / "tiny.safetensors")
    rng = np.random.default_rng(0)
    for name in ("00001_img1.png", "00001_img2.png"):
        write_png(tmp_path / "chairs" / "data" / name, rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    write_flo(tmp_path / "chairs" / "data" / "00001_flow.flo", np.zeros((64, 64, 2), np.float32))
    cli = in_process_cli(monkeypatch, capsys, "eval")
    args = ["-d", "chairs", "-r", tmp_path / "chairs", "-w", weights, "-q", "--json"]
    for device, needle, expected in (("bogus", "unknown device 'bogus'", 2), ("cuda:99", "device cuda:99", 2)):
        code, stdout, err = cli(*args, "--device", device)
        assert_one_line_error(code, err, expected, needle)
        assert stdout == ""
    code, stdout, err = cli(*args, "--device", "auto")
    assert code == 0, err
    assert json.loads(stdout)["device"] == str(resolve_device("auto"))


def test_forward_backward_occlusion_marks_inconsistent_and_outgoing_pixels():
    fw = torch.zeros(1, 2, 16, 16)
    bw = torch.zeros(1, 2, 16, 16)
    fw[..., 4:8, 4:8] = 3.0  # pixels whose backward flow does not bring them back
    fw[..., :, 15] = torch.tensor([2.0, 0.0]).view(2, 1)  # last column leaves the image
    occ = forward_backward_occlusion(fw, bw)[0, 0]
    assert occ[4:8, 4:8].all() and occ[:, 15].all()
    assert occ[10:14, 0:4].sum() == 0


def test_package_level_evaluate_stays_the_function_after_its_module_is_imported():
    """`flowcli.evaluate(...)` must keep working once any code has imported the evaluation module."""
    import flowcli
    import flowcli.evaluation  # noqa: F401  (what the CLI and adapt's report do)

    assert callable(flowcli.evaluate) and flowcli.evaluate.__name__ == "evaluate"
    from flowcli import evaluate

    assert callable(evaluate)


@pytest.mark.parametrize(
    "image1, image2, message",
    [
        (torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.uint8), None, "divide 8-bit images by 255"),
        (torch.rand(1, 1, 64, 64), None, "RGB"),
        (torch.rand(1, 4, 64, 64), None, "RGB"),
        (torch.rand(64, 64, 3), None, "channels first"),
        (torch.rand(3, 64, 64), torch.rand(2, 3, 64, 64), "give as many of each"),
    ],
)
def test_frames_of_the_wrong_kind_are_input_errors_that_say_what_to_do(model, image1, image2, message):
    image2 = torch.zeros_like(image1) if image2 is None else image2
    with pytest.raises(InputError, match=message):
        estimate_flow(model, image1, image2)


def test_tiles_without_overlap_and_bad_options(model):
    image1, image2 = torch.rand(1, 3, 128, 192), torch.rand(1, 3, 128, 192)
    result = estimate_flow(model, image1, image2, max_pixels=64 * 64, tile_overlap=0)
    assert result.forward.shape == (1, 2, 128, 192) and result.tiles > 1
    for bad in (float("nan"), float("inf"), 0.0):
        with pytest.raises(InputError, match="scale"):
            estimate_flow(model, image1, image2, scale=bad)
    with pytest.raises(InputError, match="tile_overlap"):
        estimate_flow(model, image1, image2, tile_overlap=-1)


def test_results_are_ordinary_tensors_the_caller_may_edit(model):
    result = estimate_flow(model, torch.rand(3, 64, 64), torch.rand(3, 64, 64), occlusion=True)
    result.forward[:, 1] = 0  # an inference tensor would refuse this in-place update
    assert not result.forward.is_inference() and not result.backward.is_inference()


def test_evaluate_leaves_the_callers_model_as_it_was_and_devices_resolve():
    from flowcli.evaluation import evaluate
    from flowcli.models import load_model

    chairs = Path(__file__).resolve().parents[2] / "shared" / "data" / "flow" / "chairs"
    if not chairs.is_dir():
        pytest.skip("needs ../shared/data")
    model = load_model(device="auto").train()
    report = evaluate(model, "chairs", chairs, max_items=1, progress=False)
    assert len(report.per_item) == 1 and model.training
    for device in (torch.device("cpu"), "cpu", None):  # a name is loaded onto a torch.device, a string or auto
        report = evaluate("flowcli-pwc-synth", "chairs", chairs, max_items=1, progress=False, device=device)
        assert len(report.per_item) == 1
    with pytest.raises(FlowcliError, match="unknown device"):
        load_model(device="bogus")


class _TileRecorder(torch.nn.Module):
    """A stand-in network: zero flow, records the columns each call saw (channel 0 of image1 = x / 1e4)."""

    def __init__(self, fail_above: int | None = None):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.config = FlowNetConfig(**TINY)
        self.fail_above, self.columns = fail_above, []

    def forward(self, image1, image2):
        from flowcli.models.pwc import FlowOutput

        if self.fail_above is not None and image1.shape[-2] * image1.shape[-1] > self.fail_above:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        xs = (image1[0, 0, 0] * 1e4).round()
        self.columns.append((int(xs.min()), int(xs.max())))
        return FlowOutput(flow=torch.zeros_like(image1[:, :2]))


def _column_coded(h, w):
    image = torch.zeros(1, 3, h, w)
    image[:, 0] = torch.arange(w) / 1e4
    return image


def test_short_wide_images_keep_the_requested_overlap_between_tiles():
    model = _TileRecorder()
    image = _column_coded(40, 1200)
    result = estimate_flow(model, image, image, max_pixels=40 * 256, tile_overlap=64)
    starts_ends = sorted(model.columns)
    assert result.tiles == len(starts_ends) > 1
    for (_, end), (start, _) in zip(starts_ends, starts_ends[1:]):
        assert end - start + 1 >= 64, starts_ends  # was capped at half the 40 px tile height


def test_out_of_memory_in_tiles_retries_with_smaller_tiles():
    model = _TileRecorder(fail_above=200_000)
    image = _column_coded(600, 600)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = estimate_flow(model, image, image, max_pixels=300_000)
    assert result.tiles > 1 and any("out of memory" in str(w.message) for w in caught)


def test_float_frames_outside_0_1_and_empty_frames_are_input_errors(model):
    good = torch.rand(1, 3, 64, 64)
    for bad, needle in ((good * 255, "divide 8-bit images by 255"), (good * float("nan"), "NaN"),
                        (good * 2 - 1, r"map frames in \[-1, 1\] back with \(x \+ 1\) / 2"),  # ran, a few px worse
                        (torch.rand(1, 3, 0, 64), "empty")):
        with pytest.raises(InputError, match=needle):
            estimate_flow(model, bad, good if bad.numel() else bad)
    estimate_flow(model, good * 1.2 - 0.1, good)  # resampling overshoot stays fine


def test_max_pixels_and_tile_overlap_options(model):
    image1, image2 = torch.rand(1, 3, 200, 300), torch.rand(1, 3, 200, 300)
    assert estimate_flow(model, image1, image2, max_pixels=0).tiles == 1  # 0 = never tile, as --max-pixels 0
    assert estimate_flow(model, image1, image2, max_pixels=128 * 128, tile_overlap=16.0).tiles > 1
    with pytest.raises(InputError, match="max_pixels"):
        estimate_flow(model, image1, image2, max_pixels=-1)
    with pytest.raises(InputError, match="tile_overlap"):
        estimate_flow(model, image1, image2, tile_overlap=2.5)


def test_a_float64_model_runs_and_matches_float32():
    torch.manual_seed(0)
    model32 = FlowNet(FlowNetConfig(**TINY)).eval()
    model64 = FlowNet(FlowNetConfig(**TINY)).eval()
    model64.load_state_dict(model32.state_dict())
    model64.double()
    a, b = torch.rand(1, 3, 64, 96), torch.rand(1, 3, 64, 96)
    result = estimate_flow(model64, a, b)
    assert result.forward.dtype == torch.float32
    torch.testing.assert_close(result.forward, estimate_flow(model32, a, b).forward, atol=1e-4, rtol=1e-4)


def _tiny_model_and_its_copy_in(dtype: torch.dtype) -> tuple[FlowNet, FlowNet]:
    """A seeded tiny float32 model and the same weights cast to `dtype`."""
    torch.manual_seed(0)
    model32 = FlowNet(FlowNetConfig(**TINY)).eval()
    low = FlowNet(FlowNetConfig(**TINY)).eval()
    low.load_state_dict(model32.state_dict())
    return model32, low.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_model_on_cpu_matches_float32(dtype):
    # at this size PyTorch's CPU grid_sample of half-precision channels-last features returned NaN
    model32, low = _tiny_model_and_its_copy_in(dtype)
    a = torch.rand(1, 3, 384, 512)
    b = a.roll(2, -1)
    result = estimate_flow(low, a, b)
    assert result.forward.dtype == torch.float32
    torch.testing.assert_close(result.forward, estimate_flow(model32, a, b).forward, atol=0.05, rtol=0)


def test_load_model_checks_a_torch_device_like_its_name():
    from flowcli.models import load_model

    with pytest.raises(FlowcliError, match="cuda:99"):  # was torch's AssertionError or invalid-ordinal traceback
        load_model(device=torch.device("cuda:99"))
    assert next(load_model(device=torch.device("cpu", 0)).parameters()).device.type == "cpu"


@pytest.mark.parametrize("dtype, precision", [(torch.float16, "bf16"), (torch.bfloat16, "fp16")])
def test_a_half_precision_model_runs_in_its_own_dtype_whatever_the_precision(dtype, precision):
    # a model.half() under bf16 autocast was torch's "Unexpected floating ScalarType in autocast::prioritize"
    model32, low = _tiny_model_and_its_copy_in(dtype)
    a = torch.rand(1, 3, 64, 96)
    b = a.roll(2, -1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nor a warning that fp16 falls back to fp32 on CPU: it runs in bf16
        result = estimate_flow(low, a, b, precision=precision)
    torch.testing.assert_close(result.forward, estimate_flow(model32, a, b).forward, atol=0.05, rtol=0)
    with pytest.raises(InputError, match="unknown precision"):
        estimate_flow(low, a, b, precision="fp8")


def test_numpy_numbers_are_options_and_other_types_are_input_errors(model):
    image1, image2 = torch.rand(1, 3, 200, 300), torch.rand(1, 3, 200, 300)
    # a numpy integer overlap was refused as "not a whole number of pixels"
    assert estimate_flow(model, image1, image2, max_pixels=np.int64(128 * 128), tile_overlap=np.int64(16)).tiles > 1
    for options, needle in ((dict(max_pixels="16384"), "max_pixels"), (dict(scale="0.5"), "scale"),
                            (dict(scale=None), "scale")):  # were TypeErrors from deep inside
        with pytest.raises(InputError, match=needle):
            estimate_flow(model, image1, image2, **options)


def test_load_model_takes_a_gpu_number_as_torch_does():
    from flowcli.models import load_model

    if torch.cuda.is_available():
        assert next(load_model(device=0).parameters()).device == torch.device("cuda", 0)
    else:
        with pytest.raises(FlowcliError, match="cuda:0"):  # was torch's "Cannot access accelerator device"
            load_model(device=0)


def test_a_float_pixel_budget_tiles_a_short_wide_image():
    model = _TileRecorder()
    image = _column_coded(40, 1200)
    # 1.024e4 gave float tile widths: "slice indices must be integers"
    assert estimate_flow(model, image, image, max_pixels=1.024e4).tiles == estimate_flow(
        model, image, image, max_pixels=10240).tiles > 1


def test_a_model_name_or_another_object_instead_of_a_loaded_model_is_an_input_error(model):
    """evaluate() takes a registry name, so estimate_flow("flowcli-pwc-synth", ...) is a natural mistake: it was
    AttributeError: 'str' object has no attribute 'parameters' (and 'Conv2d' object has no attribute 'config')."""
    from flowcli.stereo import estimate_disparity

    image = torch.rand(3, 64, 64)
    for not_a_model, needle in (
        ("flowcli-pwc-synth", "got 'flowcli-pwc-synth'"),
        (Path("m.safetensors"), "got 'm"),
        (None, "got None"),
        (torch.nn.Conv2d(3, 2, 1), "got a Conv2d"),
    ):
        for estimate in (estimate_flow, estimate_disparity):
            with pytest.raises(InputError, match=f"flowcli.load_model.*{needle}"):
                estimate(not_a_model, image, image)


def test_a_bool_tile_overlap_is_refused_like_a_bool_max_pixels(model):
    image = torch.rand(1, 3, 64, 64)
    for options in (dict(tile_overlap=True), dict(max_pixels=True)):  # tile_overlap=True ran as 1 px
        with pytest.raises(InputError, match=next(iter(options))):
            estimate_flow(model, image, image, **options)


def test_load_model_takes_a_numpy_gpu_number_and_refuses_other_device_types():
    from flowcli.models import load_model

    if torch.cuda.is_available():
        assert next(load_model(device=np.int64(0)).parameters()).device == torch.device("cuda", 0)
    else:
        with pytest.raises(FlowcliError, match="cuda:0"):  # was torch's "Cannot access accelerator device"
            load_model(device=np.int64(0))
    for bad in (True, [0], 0.5):  # True was nn.Module.to's "dtype=torch.bool" TypeError, [0] a many-line one
        with pytest.raises(InputError, match="device must be auto, cpu"):
            load_model(device=bad)


def test_dir_of_the_package_lists_the_lazily_imported_api():
    import flowcli

    assert {"load_model", "estimate_flow", "estimate_disparity", "evaluate"} <= set(dir(flowcli))


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_a_float64_model_warns_that_half_precision_does_not_apply_to_it(precision):
    """autocast leaves float64 alone: bf16 ran in float64 silently, and fp16 on CPU warned "running in fp32"."""
    model32, model64 = _tiny_model_and_its_copy_in(torch.float64)
    a = torch.rand(1, 3, 64, 96)
    b = a.roll(2, -1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = estimate_flow(model64, a, b, precision=precision)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "float64" in messages[0] and "fp32" not in messages[0], messages
    torch.testing.assert_close(result.forward, estimate_flow(model64, a, b).forward, atol=0, rtol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        estimate_flow(model64, a, b, precision="fp32")


def test_a_batch_of_no_frames_is_an_input_error(model):
    """[0, 3, H, W] frames returned empty results without a word; every caller skips an empty batch itself."""
    from flowcli.stereo import estimate_disparity

    empty = torch.rand(0, 3, 32, 32)
    for estimate, name in ((estimate_flow, "image1"), (estimate_disparity, "left")):
        with pytest.raises(InputError, match=rf"^{name} has shape \(0, 3, 32, 32\).*at least one frame$") as error:
            estimate(model, empty, empty)
        assert len(str(error.value).splitlines()) == 1
