"""Finding the face assets and building the compact model file once.

An asset folder is laid out like the shared test data:

    <dir>/ict-facekit/ict_face_region.npz            (or ict-facekit/FaceXModel/*.obj, the OBJ download)
    <dir>/ict-facekit/FaceXModel/generic_neutral_mesh.obj   (topology and UVs)
    <dir>/mediapipe/face_detection_short_range.tflite
    <dir>/mediapipe/face_landmark.tflite

It is chosen by `--face-assets DIR`, else `FLOWCLI_FACE_ASSETS`; the MediaPipe models fall back to the registry.
The compact model (bases + triangles + UVs + landmark indices) is written to the cache on first use: the
`face` folder of the weights cache (`flowcli.registry.cache_dir`: `$FLOWCLI_CACHE`, `$XDG_CACHE_HOME/flowcli`
or `~/.cache/flowcli`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from flowcli.errors import InputError, WeightsError
from flowcli.face.model import (
    COMPACT_VERSION,
    FaceModel,
    build_compact,
    convert_ict,
    load_face_model,
    read_model_arrays,
)

ENV_ASSETS = "FLOWCLI_FACE_ASSETS"
REGISTRY_NAMES = {"mediapipe": "mediapipe-face"}
MEDIAPIPE_FILES = ("face_detection_short_range.tflite", "face_landmark.tflite")


def cache_dir() -> Path:
    from flowcli.registry import cache_dir as weights_cache_dir

    return weights_cache_dir() / "face"


def _fingerprint(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    return digest.hexdigest()[:16]


def _cached_name(kind: str, sources: list[Path]) -> Path:
    """The compact file for these sources in this file format: a new COMPACT_VERSION never reads an old cache."""
    return cache_dir() / f"{kind}-v{COMPACT_VERSION}-{_fingerprint(sources)}.npz"


@dataclass
class FaceAssets:
    """Where the face models come from: a user folder (`--face-assets`) and/or the weights registry.

    The MediaPipe detector and landmarker come from `<root>/mediapipe` when that folder has them, else from
    the registry entry `mediapipe-face` (the two files inside the published mediapipe 0.10.21 wheel, checked
    by sha256, downloaded once). The ICT-FaceKit model must be on disk (`<root>/ict-facekit`) or given with
    `--face-model`: no copy with a published checksum can be fetched and verified automatically.
    """

    root: Path | None
    offline: bool = False

    @property
    def ict_dir(self) -> Path:
        if self.root is None:
            raise WeightsError(
                "the ICT-FaceKit model is needed: download FaceXModel from https://github.com/ICT-VGL/ICT-FaceKit "
                f"and pass --face-assets DIR (with DIR/ict-facekit/FaceXModel/*.obj, or set {ENV_ASSETS}) "
                "or --face-model PATH"
            )
        return self.root / "ict-facekit"

    @property
    def mediapipe_dir(self) -> Path:
        if self.root is not None:
            local = self.root / "mediapipe"
            if all((local / name).is_file() for name in MEDIAPIPE_FILES):
                return local
        from flowcli.registry import fetch_model

        paths = fetch_model(REGISTRY_NAMES["mediapipe"], offline=self.offline)
        return paths[0].parent

    @property
    def topology_obj(self) -> Path:
        return self.ict_dir / "FaceXModel" / "generic_neutral_mesh.obj"

    @classmethod
    def locate(cls, directory: str | os.PathLike | None = None, offline: bool = False) -> "FaceAssets":
        if directory is None:
            directory = os.environ.get(ENV_ASSETS) or None
        if directory is None:
            return cls(None, offline)
        if not str(directory):  # Path("") would be the current folder
            raise InputError(f"the face asset folder is an empty path; pass --face-assets DIR or set {ENV_ASSETS}")
        root = Path(directory).expanduser()
        if root.exists() and not root.is_dir():
            raise InputError(
                f"face asset folder {root} is a file, not a folder; pass --face-assets DIR, the folder that holds "
                f"ict-facekit/ (and mediapipe/), or set {ENV_ASSETS}"
            )
        if not root.is_dir():
            raise InputError(f"face asset folder {root} not found; pass --face-assets DIR or set {ENV_ASSETS}")
        return cls(root, offline)

    def model(self, face_model: str | os.PathLike | None = None) -> FaceModel:
        """The face model: a user's file/folder if given, else ICT-FaceKit from the asset folder (cached)."""
        if face_model is not None:
            topology = self.topology_obj if self.root is not None and self.topology_obj.is_file() else None
            return load_user_model(Path(face_model), topology)
        if not self.topology_obj.is_file():
            raise WeightsError(f"{self.topology_obj} not found; the face asset folder needs ICT-FaceKit's FaceXModel")
        region = self.ict_dir / "ict_face_region.npz"
        obj_folder = self.ict_dir / "FaceXModel"
        if not region.is_file() and not any(obj_folder.glob("identity*.obj")):
            raise WeightsError(
                f"no ICT-FaceKit model in {self.ict_dir} (need ict_face_region.npz or the FaceXModel OBJs)"
            )
        # every OBJ the conversion reads, expressions included: a changed or removed blendshape builds a new model
        sources = [region] if region.is_file() else sorted(obj_folder.glob("*.obj"))
        cached = _cached_name("ict_face_compact", sources + [self.topology_obj])
        model = _load_cached(cached)
        if model is not None:
            return model
        if region.is_file():
            arrays = load_face_model_arrays(region)
        else:
            try:
                arrays = convert_ict(obj_folder)
            except InputError as error:  # for `fit`, the asset folder's OBJs are a model, not an input
                raise WeightsError(str(error)) from None
        return _build_and_load(arrays, self.topology_obj, cached, source=str(sources[0].parent))


def _load_cached(cached: Path) -> FaceModel | None:
    """The cached compact model, or None when there is none or it cannot be read (damaged, or written by
    something else): a cache is rebuilt from its sources, never the user's problem."""
    if not cached.is_file():
        return None
    try:
        return load_face_model(cached)
    except WeightsError:
        return None


def _build_and_load(arrays: dict, topology_obj: Path, cached: Path, source: str) -> FaceModel:
    """Write the compact model to the cache and load it; a cache that cannot be written (read-only, not a
    folder) must not stop fitting: the file is then built in a temporary folder, loaded and removed."""
    from flowcli.errors import OutputError

    try:
        build_compact(arrays, topology_obj, cached, source=source)
    except (OSError, OutputError):
        import shutil
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix="flowcli-face-"))
        try:
            return load_face_model(build_compact(arrays, topology_obj, tmp / cached.name, source=source))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return load_face_model(cached)


def load_face_model_arrays(path: Path) -> dict:
    """mean, id, exp and exp_names of the asset folder's ict_face_region.npz; a WeightsError if it is unusable."""
    arrays = read_model_arrays(
        path,
        hint="replace it with ICT-FaceKit's face region model (mean, id, exp, exp_names), or remove it to use the "
        "FaceXModel OBJs next to it",
    )
    return {k: arrays[k] for k in ("mean", "id", "exp", "exp_names")}


def load_user_model(path: Path, topology_obj: Path | None) -> FaceModel:
    """`--face-model PATH`: a compact or bare .npz (mean, id, exp, exp_names), or a folder of ICT-style OBJs."""
    if path.is_dir():
        cached = _cached_name("user_compact", sorted(path.glob("*.obj")))
        model = _load_cached(cached)  # built from these very files: no need to read them again
        if model is not None:
            return model
        try:
            arrays = convert_ict(path)
        except InputError as error:  # for `fit`, the OBJ folder is a model, not an input
            raise WeightsError(str(error)) from None
        return _build_and_load(arrays, path / "generic_neutral_mesh.obj", cached, source=str(path))
    return load_face_model(path, topology_obj=topology_obj)
