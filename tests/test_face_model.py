"""Face model assets: the OBJ converter reproduces the shipped arrays; the compact file loads back."""

from pathlib import Path

import numpy as np
import pytest

from flowcli.errors import WeightsError

FACE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "face"
ICT = FACE / "ict-facekit"
pytestmark = pytest.mark.skipif(not (ICT / "ict_face_region.npz").is_file(), reason="shared face data not present")


def _cache(tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "flowcli-face-cache"  # shared by the face test modules
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="module")
def reference():
    with np.load(ICT / "ict_face_region.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from flowcli.face.assets import FaceAssets

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLOWCLI_CACHE", str(_cache(tmp_path_factory)))
        return FaceAssets.locate(FACE).model()


def test_obj_converter_reproduces_npz(reference):
    from flowcli.face.model import convert_ict

    arrays = convert_ict(ICT / "FaceXModel")
    assert arrays["mean"].shape == reference["mean"].shape == (9409, 3)
    np.testing.assert_allclose(arrays["mean"], reference["mean"], atol=1e-6)
    # the folder holds identity000/001 and two expressions of the full download
    np.testing.assert_allclose(arrays["id"], reference["id"][:2], atol=1e-6)
    names = list(reference["exp_names"])
    assert list(arrays["exp_names"]) == ["eyeBlink_L", "jawOpen"]
    for i, name in enumerate(arrays["exp_names"]):
        np.testing.assert_allclose(arrays["exp"][i], reference["exp"][names.index(name)], atol=1e-6)


def test_compact_model(model, reference):
    assert model.num_vertices == 9409
    assert model.triangles.shape == (18460, 3) and model.triangles.max() < 9409
    assert model.uv_triangles.shape == model.triangles.shape and model.uv_triangles.max() < len(model.uvs)
    assert np.isfinite(model.uvs).all()
    np.testing.assert_array_equal(model.id_basis, reference["id"])
    assert model.exp_names == [str(n) for n in reference["exp_names"]]
    # PupilDilate_* do not move the face region and are left out of fitting
    active = {model.exp_names[i] for i in model.active_expressions()}
    assert "jawOpen" in active and "PupilDilate_L" not in active
    weights = model.arkit_weights(np.ones(len(model.exp_names)))
    assert len(weights) == 52 and weights["browInnerUp"] == 1.0 and weights["tongueOut"] == 0.0


def test_user_model_loader(tmp_path, reference, model):
    from flowcli.face.assets import load_user_model
    from flowcli.face.model import load_face_model

    bare = tmp_path / "mine.npz"
    np.savez(
        bare, mean=reference["mean"], id=reference["id"][:10], exp=reference["exp"], exp_names=reference["exp_names"]
    )
    mine = load_user_model(bare, ICT / "FaceXModel" / "generic_neutral_mesh.obj")
    assert mine.id_basis.shape[0] == 10 and mine.triangles.shape == model.triangles.shape
    broken = tmp_path / "broken.npz"
    np.savez(broken, mean=reference["mean"])
    with pytest.raises(WeightsError, match="lacks id, exp, exp_names"):
        load_face_model(broken)
    with pytest.raises(WeightsError, match="not found"):
        load_face_model(tmp_path / "missing.npz")


def test_obj_folder_model_fits_with_an_unwritable_cache(tmp_path, monkeypatch, reference):
    """`--face-model FOLDER` when the cache cannot be written (here: FLOWCLI_CACHE is a file): the compact
    model is built in a temporary folder, loaded and removed, as for the asset folder, instead of exit 3."""
    import tempfile

    from flowcli.face.assets import load_user_model

    folder = tmp_path / "FaceXModel"
    folder.mkdir()
    for name in ("generic_neutral_mesh.obj", "identity000.obj", "jawOpen.obj"):
        (folder / name).symlink_to(ICT / "FaceXModel" / name)
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("FLOWCLI_CACHE", str(tmp_path / "not-a-folder"))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    mine = load_user_model(folder, None)
    assert mine.id_basis.shape == (1, 9409, 3) and mine.exp_names == ["jawOpen"]
    np.testing.assert_allclose(mine.mean, reference["mean"], atol=1e-5)
    assert list(scratch.iterdir()) == []  # the temporary build is gone


def test_a_damaged_cached_model_is_rebuilt(tmp_path, monkeypatch):
    """A cached compact model that cannot be read is rebuilt from the asset folder, not reported as a bad
    --face-model the user never passed."""
    from flowcli.face.assets import FaceAssets

    monkeypatch.setenv("FLOWCLI_CACHE", str(tmp_path))
    FaceAssets.locate(FACE).model()
    (cached,) = (tmp_path / "face").iterdir()
    cached.write_bytes(b"damaged")
    assert FaceAssets.locate(FACE).model().num_vertices == 9409
    with np.load(cached) as data:  # and the cache holds the model again
        assert data["mean"].shape == (9409, 3)
