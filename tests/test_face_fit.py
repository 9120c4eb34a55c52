"""Synthetic round trip: random identity, expression and pose, projected noise-free, are recovered."""

from pathlib import Path

import numpy as np
import pytest

from flowcli.face.geometry import euler_to_rotation, project, rotation_angle_deg

FACE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "face"
pytestmark = pytest.mark.skipif(
    not (FACE / "ict-facekit" / "ict_face_region.npz").is_file(), reason="shared face data not present"
)


def _cache(tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "flowcli-face-cache"  # shared by the face test modules
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="module")
def fitter(tmp_path_factory):
    from flowcli.face.assets import FaceAssets
    from flowcli.face.fit import FaceFitter, FitOptions

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLOWCLI_CACHE", str(_cache(tmp_path_factory)))
        model = FaceAssets.locate(FACE).model()
    # noise-free data: weak priors, so the solution is the truth rather than a shrunk estimate
    return FaceFitter(model, FitOptions(id_reg=1e-4, exp_reg=1e-5, alternations=8, refine_steps=0))


def synthetic(fitter, seed):
    rng = np.random.default_rng(seed)
    model = fitter.model
    id_coeffs = rng.normal(size=len(model.id_basis)) * 0.8
    exp = np.zeros(len(model.exp_basis))
    active = fitter.exp_active
    chosen = rng.choice(active, 8, replace=False)
    exp[chosen] = rng.uniform(0.1, 0.9, 8)
    angles = np.radians([rng.uniform(-20, 20), rng.uniform(-40, 40), rng.uniform(-15, 15)])
    rotation = euler_to_rotation(*angles)
    scale, translation = rng.uniform(8, 20), np.array([rng.uniform(200, 400), rng.uniform(150, 300), 0.0])
    points = project(fitter.dense.points(id_coeffs, exp), scale, rotation, translation)
    return id_coeffs, exp, rotation, scale, translation, points


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_trip(fitter, seed):
    id_coeffs, exp, rotation, scale, translation, points = synthetic(fitter, seed)
    fit = fitter.fit(points, refine=False)
    assert rotation_angle_deg(rotation, fit.rotation) < 1.0
    assert abs(fit.scale - scale) / scale < 0.01
    truth = fitter.model.vertices(id_coeffs, exp)
    estimate = fitter.model.vertices(fit.id_coeffs, fit.exp_weights)
    rms_cm = np.sqrt(((truth - estimate) ** 2).sum(1).mean())
    assert rms_cm < 0.1  # 1 mm
    assert fit.exp_weights.min() >= 0 and fit.exp_weights.max() <= 1


def test_refinement_keeps_exact_fit(fitter):
    from dataclasses import replace

    from flowcli.face.fit import FaceFitter

    id_coeffs, exp, rotation, scale, translation, points = synthetic(fitter, 7)
    refiner = FaceFitter(fitter.model, replace(fitter.options, refine_steps=15))
    fit = refiner.fit(points)
    assert rotation_angle_deg(rotation, fit.rotation) < 1.0
    truth = fitter.model.vertices(id_coeffs, exp)
    rms_cm = np.sqrt(((truth - fitter.model.vertices(fit.id_coeffs, fit.exp_weights)) ** 2).sum(1).mean())
    assert rms_cm < 0.1
    # landmarks of the fit land where the model's landmarks project
    lm = refiner.landmarks68(fit)[:, :2]
    expected = project(refiner.lm68.points(id_coeffs, exp), scale, rotation, translation)[:, :2]
    assert np.abs(lm - expected).mean() < 0.5  # pixels


def test_video_terms_batch(fitter):
    """The joint video refinement runs on a batch and keeps one identity."""
    from flowcli.face.video import VideoOptions, fit_video, landmark_jitter

    _, _, _, _, _, points = synthetic(fitter, 3)
    rng = np.random.default_rng(0)
    seq = [points + np.r_[rng.normal(0, 1.5, 2), 0.0] for _ in range(6)]
    seq[3] = None  # a frame without a face splits the clip
    fits = fit_video(fitter, seq, options=VideoOptions(steps=6, census_weight=0.0))
    assert fits[3] is None and all(f is not None for i, f in enumerate(fits) if i != 3)
    np.testing.assert_allclose(fits[0].id_coeffs, fits[5].id_coeffs, atol=1e-5)
    assert landmark_jitter(np.zeros((5, 68, 2))) == 0.0


def test_video_progress_counts_each_frame_with_a_face_once(fitter):
    """Overlapping windows counted their shared frames twice: `face fit` on an 84-frame clip showed 88/84."""
    from flowcli.face.video import VideoOptions, fit_video

    _, _, _, _, _, points = synthetic(fitter, 5)
    seq = [points] * 12
    seq[4] = None  # two runs of frames with a face, each longer than a window
    counts = []
    options = VideoOptions(steps=1, census_weight=0.0, window=4, overlap=2)
    fit_video(fitter, seq, options=options, progress=counts.append)
    assert counts == sorted(counts) and counts[-1] == 11


def test_census_and_flow_terms(fitter):
    """Census and flow terms: finite, differentiable, and zero flow with a static textured face is a fixed point."""
    import torch

    from flowcli.face.video import (
        VideoOptions,
        VideoTerms,
        fit_video,
        small_flow,
        small_gray,
    )

    _, _, _, _, _, points = synthetic(fitter, 4)
    rng = np.random.default_rng(0)
    texture = (rng.uniform(0, 255, (480, 640, 3))).astype(np.uint8)
    gray, zoom = small_gray(texture, 320)
    assert gray.shape == (1, 240, 320) and abs(zoom - 0.5) < 1e-9
    flow = small_flow(np.zeros((2, 480, 640)), zoom, (240, 320))
    seq = [points] * 4
    options = VideoOptions(steps=5, census_weight=1.0, flow_weight=1.0)
    fits = fit_video(fitter, seq, [gray] * 4, zoom, [flow] * 3, options)
    first = fits[0]
    for f in fits[1:]:  # identical frames stay identical
        assert np.abs(f.rotation - first.rotation).max() < 1e-3
    terms = VideoTerms(fitter, options, torch.stack([gray] * 3), zoom, [flow] * 2)
    rot = torch.eye(3, dtype=torch.float32).repeat(3, 1, 1).requires_grad_()
    state = dict(
        rot=rot,
        cr=torch.diag(torch.tensor([1.0, -1.0, -1.0])) @ rot,
        scale=torch.full((3,), 10.0),
        ident=torch.zeros(3, 100),
        exp=torch.zeros(3, 57),
        offset=torch.tensor([[32.0, 24.0, 0.0]] * 3),
    )
    loss = terms(state)
    loss.backward()
    assert torch.isfinite(loss) and rot.grad is not None


def test_census_consistency_needs_two_fits_and_a_gray_each(fitter):
    """The benchmarks' census_consistency divided by zero for a clip of one frame (ZeroDivisionError)."""
    from flowcli.face.video import census_consistency, small_gray

    gray, zoom = small_gray(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8), 320)
    fit = fitter.fit(synthetic(fitter, 0)[-1])
    assert census_consistency(fitter, [fit, fit], [gray, gray], zoom) < 1e-6  # the same texture, the same mesh
    for fits, grays in (([fit], [gray]), ([], []), ([fit, None], [gray, gray]), ([fit, fit], [gray])):
        with pytest.raises(ValueError, match="needs at least 2 fits, none of them None, and a gray image for each"):
            census_consistency(fitter, fits, grays, zoom)


def test_fit_takes_478_points_and_refuses_other_shapes(fitter):
    """MediaPipe's current face mesh adds 10 iris points after the 468; they are dropped, not a numpy error."""
    from flowcli.errors import InputError

    *_, points = synthetic(fitter, 0)
    with_irises = np.concatenate([points, np.zeros((10, 3))])
    np.testing.assert_allclose(fitter.fit(with_irises, refine=False).rotation,
                               fitter.fit(points, refine=False).rotation)
    for bad in (points[:, :2], points[:68], np.full_like(points, np.nan)):
        with pytest.raises(InputError):
            fitter.fit(bad, refine=False)


def test_degenerate_points_and_options_are_input_errors(fitter):
    """Placeholder points (all zeros, one point, a line) ended in numpy's 'SVD did not converge'; alternations=0
    in an UnboundLocalError and sigma_cm=0 in 'Singular matrix'."""
    from flowcli.errors import InputError
    from flowcli.face.fit import FitOptions

    line = np.stack([np.arange(468.0), 2 * np.arange(468.0), np.zeros(468)], axis=1)
    for bad in (np.zeros((468, 3)), np.full((468, 3), 120.0), line):
        with pytest.raises(InputError, match="lie on one point or line"):
            fitter.fit(bad, refine=False)
    for options in (dict(alternations=0), dict(sigma_cm=0.0), dict(sigma_cm=float("nan"))):
        with pytest.raises(InputError, match="FitOptions"):
            FitOptions(**options)


def test_pipeline_takes_one_picture_as_an_array_or_a_flow_style_tensor(tmp_path_factory):
    """fit_image said 'unsupported image layout' for the float RGB [3, H, W] tensor that flowcli's flow and stereo
    take; a batch is one clear error, and max_faces=0 fitted every face instead of refusing."""
    pytest.importorskip("ai_edge_litert")
    if not (FACE / "mediapipe" / "face_landmark.tflite").is_file():
        pytest.skip("shared MediaPipe models not present")
    import torch

    from flowcli.errors import InputError
    from flowcli.face.assets import FaceAssets
    from flowcli.face.media import read_image
    from flowcli.face.pipeline import FacePipeline

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLOWCLI_CACHE", str(_cache(tmp_path_factory)))
        pipeline = FacePipeline(FaceAssets.locate(FACE))
    rgb = read_image(FACE / "aflw2000-3d" / "image00050.jpg")
    reference = pipeline.fit_image(rgb)[0][0].landmarks68
    tensor = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    for picture in (tensor, tensor[None], tensor.numpy()):
        results, total = pipeline.fit_image(picture)
        assert total == 1
        np.testing.assert_array_equal(results[0].landmarks68, reference)  # same pixels, same fit
    for batch in (torch.stack([tensor, tensor]), np.stack([rgb, rgb])):
        with pytest.raises(InputError, match="batch.*loop over them"):
            pipeline.fit_image(batch)
    for max_faces in (0, -1, 1.5):
        with pytest.raises(InputError, match="max_faces must be a whole number"):
            pipeline.fit_image(rgb, max_faces=max_faces)


def test_clip_textures_match_lists_of_every_frame_and_keep_only_a_window():
    """A joint video fit used to keep every frame's census gray (about 1 MB per frame, 3 with --flow) until
    the end: a ten-minute clip needed over 20 GB. The lazy store gives the same values and keeps a window."""
    import torch

    from flowcli.face.video import ClipTextures, small_flow, small_gray

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (90, 160, 3), dtype=np.uint8) for _ in range(12)]

    def flow_fn(a, b):  # any deterministic function of the two frames stands in for the flow model
        return np.stack([a[..., 0] - b[..., 0], a[..., 1] * 0.5]).astype(np.float64)

    grays, zooms = zip(*(small_gray(f, 64) for f in frames))
    flows = [small_flow(flow_fn(a, b), zooms[0], tuple(grays[0].shape[-2:])) for a, b in zip(frames, frames[1:])]
    clip = ClipTextures(iter(frames), 64, flow_fn, keep=4)
    for start in (0, 2, 4, 6, 8):  # windows of 4 overlapping by 2, as fit_video walks them
        for t in range(start, start + 4):
            assert torch.equal(clip.grays[t], grays[t])
            if t < 11:
                assert np.array_equal(clip.flows[t], flows[t])
        assert len(clip._grays) <= 4 and len(clip._flows) <= 4


def test_flow_function_loads_the_model_on_the_device_and_resolves_precision_once(monkeypatch):
    """The flow term's model is loaded on the device asked for (it used to be the CPU always), and fp16 asked for on
    the CPU runs in fp32 with one warning for the clip, not one per frame pair."""
    import warnings

    import torch

    from flowcli import models
    from flowcli.face.video import flow_function
    from flowcli.models import FlowNet, FlowNetConfig

    tiny = dict(pyramid_channels=(4,) * 6, decoder_channels=(4,), context_channels=(4,), context_dilations=(1,))
    loaded_on = []

    def load_model(name_or_path=None, device="cpu", **kwargs):
        loaded_on.append(device)
        return FlowNet(FlowNetConfig(**tiny, reduced_channels=4)).eval()

    monkeypatch.setattr(models, "load_model", load_model)
    with pytest.warns(UserWarning, match="fp16 is not supported on CPU") as caught:
        flow = flow_function(device=torch.device("cpu"), precision="fp16")
    assert loaded_on == [torch.device("cpu")] and len(caught) == 1
    frames = np.random.default_rng(0).integers(0, 256, (3, 48, 64, 3), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flows = [flow(a, b) for a, b in zip(frames, frames[1:])]
    assert all(f.shape == (2, 48, 64) and np.isfinite(f).all() for f in flows)
