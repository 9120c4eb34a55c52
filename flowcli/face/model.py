"""The linear face model: neutral mesh, identity modes and expression blendshapes, with topology and UVs.

`convert_ict(folder)` turns ICT-FaceKit's OBJ files (what a user downloads) into the face-region arrays;
`build_compact(...)` adds the triangulated topology, UVs and landmark indices and writes one cached .npz;
`load_face_model(path)` reads that file (or any .npz with the same arrays, e.g. a user's own model).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from flowcli.errors import InputError, WeightsError

FACE_VERTICES = 9409  # ICT-FaceKit: the face region is the first 9,409 vertices (polygons [0:9229])
FACE_POLYGONS = 9230
COMPACT_VERSION = 1

# ICT-FaceKit README, "Multi-PIE 68 point facial landmarks indices" (0-indexed).
ICT_LANDMARKS_68 = [
    1225,
    1888,
    1052,
    367,
    1719,
    1722,
    2199,
    1447,
    966,
    3661,
    4390,
    3927,
    3924,
    2608,
    3272,
    4088,
    3443,
    268,
    493,
    1914,
    2044,
    1401,
    3615,
    4240,
    4114,
    2734,
    2509,
    978,
    4527,
    4942,
    4857,
    1140,
    2075,
    1147,
    4269,
    3360,
    1507,
    1542,
    1537,
    1528,
    1518,
    1511,
    3742,
    3751,
    3756,
    3721,
    3725,
    3732,
    5708,
    5695,
    2081,
    0,
    4275,
    6200,
    6213,
    6346,
    6461,
    5518,
    5957,
    5841,
    5702,
    5711,
    5533,
    6216,
    6207,
    6470,
    5517,
    5966,
]
# ICT-FaceKit README, extended jawlines (supersets of the jaw points 0-7 and 9-16), ordered top to chin.
ICT_JAW_RIGHT = [1280, 1278, 1275, 1272, 1248, 12, 820, 1834, 1902, 243, 844, 781, 1673, 2199, 801, 1447, 800]
ICT_JAW_LEFT = [3041, 3661, 3042, 4390, 3880, 3022, 3085, 2484, 4102, 4036, 3061, 2253, 3466, 3490, 3493, 3496, 3498]

# ICT names -> Apple ARKit names (ICT splits browInnerUp and cheekPuff into left and right).
ARKIT_NAMES = [
    "browDownLeft",
    "browDownRight",
    "browInnerUp",
    "browOuterUpLeft",
    "browOuterUpRight",
    "cheekPuff",
    "cheekSquintLeft",
    "cheekSquintRight",
    "eyeBlinkLeft",
    "eyeBlinkRight",
    "eyeLookDownLeft",
    "eyeLookDownRight",
    "eyeLookInLeft",
    "eyeLookInRight",
    "eyeLookOutLeft",
    "eyeLookOutRight",
    "eyeLookUpLeft",
    "eyeLookUpRight",
    "eyeSquintLeft",
    "eyeSquintRight",
    "eyeWideLeft",
    "eyeWideRight",
    "jawForward",
    "jawLeft",
    "jawOpen",
    "jawRight",
    "mouthClose",
    "mouthDimpleLeft",
    "mouthDimpleRight",
    "mouthFrownLeft",
    "mouthFrownRight",
    "mouthFunnel",
    "mouthLeft",
    "mouthLowerDownLeft",
    "mouthLowerDownRight",
    "mouthPressLeft",
    "mouthPressRight",
    "mouthPucker",
    "mouthRight",
    "mouthRollLower",
    "mouthRollUpper",
    "mouthShrugLower",
    "mouthShrugUpper",
    "mouthSmileLeft",
    "mouthSmileRight",
    "mouthStretchLeft",
    "mouthStretchRight",
    "mouthUpperUpLeft",
    "mouthUpperUpRight",
    "noseSneerLeft",
    "noseSneerRight",
    "tongueOut",
]


def ict_to_arkit(name: str) -> str:
    return re.sub(r"_L$", "Left", re.sub(r"_R$", "Right", name))


@dataclass
class FaceModel:
    """A linear face model in centimetres: vertices = mean + sum id_k * id_basis[k] + sum exp_j * exp_basis[j]."""

    mean: np.ndarray  # V x 3
    id_basis: np.ndarray  # K x V x 3, scaled so that coefficients are about N(0, 1)
    exp_basis: np.ndarray  # E x V x 3, blendshape offsets, weights in [0, 1]
    exp_names: list[str]
    triangles: np.ndarray  # F x 3 vertex indices
    uvs: np.ndarray  # T x 2 texture coordinates
    uv_triangles: np.ndarray  # F x 3 indices into uvs
    landmarks68: np.ndarray  # 68 vertex indices, iBUG / Multi-PIE order
    jaw_right: np.ndarray = field(default_factory=lambda: np.array(ICT_JAW_RIGHT))
    jaw_left: np.ndarray = field(default_factory=lambda: np.array(ICT_JAW_LEFT))
    source: str = ""

    @property
    def num_vertices(self) -> int:
        return self.mean.shape[0]

    def active_expressions(self) -> np.ndarray:
        """Indices of blendshapes that move the face region (ICT's PupilDilate_* do not)."""
        norms = np.abs(self.exp_basis).reshape(len(self.exp_basis), -1).max(1)
        return np.nonzero(norms > 1e-6)[0]

    def vertices(self, id_coeffs=None, exp_weights=None) -> np.ndarray:
        v = self.mean.astype(np.float64).copy()
        if id_coeffs is not None:
            v += np.tensordot(np.asarray(id_coeffs, np.float64), self.id_basis, 1)
        if exp_weights is not None:
            v += np.tensordot(np.asarray(exp_weights, np.float64), self.exp_basis, 1)
        return v

    def torch_bases(self, dtype=torch.float64):
        """(mean V x 3, id K x V x 3, exp E x V x 3) as tensors, cached."""
        key = str(dtype)
        cache = self.__dict__.setdefault("_torch", {})
        if key not in cache:
            cache[key] = tuple(
                torch.as_tensor(np.ascontiguousarray(a), dtype=dtype)
                for a in (self.mean, self.id_basis, self.exp_basis)
            )
        return cache[key]

    def arkit_weights(self, exp_weights: np.ndarray) -> dict[str, float]:
        """Per-frame weights under ARKit's 52 names (left/right halves averaged where ICT splits; tongueOut 0)."""
        by_name = {ict_to_arkit(n): float(w) for n, w in zip(self.exp_names, exp_weights)}
        out = {}
        for name in ARKIT_NAMES:
            if name in by_name:
                out[name] = by_name[name]
            elif name + "Left" in by_name and name + "Right" in by_name:
                out[name] = (by_name[name + "Left"] + by_name[name + "Right"]) / 2
            else:
                out[name] = 0.0
        return out


# --- OBJ reading -------------------------------------------------------------------------------------------


def _obj_text(path: str | Path) -> str:
    """An OBJ file's text. Latin-1 takes any byte: the numbers are ASCII, and a comment in another encoding
    must not stop the conversion. A file that cannot be read is a model that cannot be used (exit 4)."""
    try:
        return Path(path).read_text(encoding="latin-1")
    except OSError as error:
        raise WeightsError(f"cannot read {path}: {error.strerror or error}; use ICT-FaceKit's OBJ files") from None


def _bad_obj(path, error: ValueError) -> WeightsError:
    return WeightsError(f"{path} is not a usable OBJ file ({error}); use ICT-FaceKit's OBJ files")


def read_obj_vertices(path: str | Path) -> np.ndarray:
    """The `v` lines of an OBJ file as a float64 N x 3 array (fast path: one regex over the text)."""
    rows = re.findall(r"^v\s+(\S+)\s+(\S+)\s+(\S+)", _obj_text(path), flags=re.M)
    if not rows:
        raise InputError(f"{path} has no vertices; is it an OBJ file?")
    try:
        vertices = np.array(rows, dtype=np.float64)
    except ValueError as error:
        raise _bad_obj(path, error) from None
    if not np.isfinite(vertices).all():
        raise _bad_obj(path, ValueError("vertices with NaN or infinite coordinates"))
    return vertices


def read_obj_topology(path: str | Path, max_polygons: int | None = None):
    """Polygons of an OBJ: (list of vertex-index lists, list of uv-index lists, uv array T x 2), 0-indexed."""
    text = _obj_text(path)
    polys, uv_polys = [], []
    try:
        uvs = np.array(re.findall(r"^vt\s+(\S+)\s+(\S+)", text, flags=re.M), dtype=np.float64).reshape(-1, 2)
        for line in re.findall(r"^f\s+(.+)$", text, flags=re.M)[:max_polygons]:
            corners = [c.split("/") for c in line.split()]
            polys.append([int(c[0]) - 1 for c in corners])
            uv_polys.append([int(c[1]) - 1 if len(c) > 1 and c[1] else -1 for c in corners])
    except ValueError as error:
        raise _bad_obj(path, error) from None
    return polys, uv_polys, uvs


def triangulate(polys, uv_polys) -> tuple[np.ndarray, np.ndarray]:
    """Fan-triangulate polygons (ICT's face region is all quads: 0-1-2, 0-2-3)."""
    tris, uv_tris = [], []
    for poly, uv in zip(polys, uv_polys):
        for k in range(1, len(poly) - 1):
            tris.append([poly[0], poly[k], poly[k + 1]])
            uv_tris.append([uv[0], uv[k], uv[k + 1]])
    return np.array(tris, dtype=np.int32), np.array(uv_tris, dtype=np.int32)


def convert_ict(folder: str | Path, num_vertices: int = FACE_VERTICES) -> dict[str, np.ndarray]:
    """ICT-FaceKit's FaceXModel OBJ folder -> {mean, id, exp, exp_names} for the first `num_vertices` vertices.

    `generic_neutral_mesh.obj` is the mean; `identityNNN.obj` (numeric order) and every other OBJ (expressions,
    sorted by name) become offsets from it, as float32 in the OBJ's units (cm).
    """
    folder = Path(folder)
    neutral_path = folder / "generic_neutral_mesh.obj"
    if not folder.is_dir():
        state = "is not a folder" if folder.exists() else "does not exist"
        raise InputError(f"{folder} {state}; point at ICT-FaceKit's FaceXModel folder")
    if not neutral_path.is_file():
        raise InputError(f"{folder} has no generic_neutral_mesh.obj; point at ICT-FaceKit's FaceXModel folder")
    identity, expressions = [], []
    for path in sorted(folder.glob("*.obj")):
        if path.name == neutral_path.name:
            continue
        match = re.fullmatch(r"identity(\d+)", path.stem)
        (identity if match else expressions).append((int(match.group(1)) if match else path.stem, path))
    missing = []
    if not identity:
        missing.append("identity modes (identityNNN.obj)")
    if not expressions:
        missing.append("expression blendshapes (jawOpen.obj, ...)")
    if missing:
        raise InputError(
            f"{folder} has no {' and no '.join(missing)}; point at ICT-FaceKit's complete FaceXModel folder"
        )
    identity.sort()
    expressions.sort()
    neutral = read_obj_vertices(neutral_path)
    if len(neutral) < num_vertices:
        raise InputError(
            f"{neutral_path} has {len(neutral)} vertices, fewer than the {num_vertices} of ICT-FaceKit's face "
            "region; point at ICT-FaceKit's FaceXModel folder"
        )

    def offsets(items):
        out = np.zeros((len(items), num_vertices, 3), np.float32)
        for i, (_, path) in enumerate(items):
            v = read_obj_vertices(path)
            if v.shape != neutral.shape:  # truncated, or from another model: an OBJ that cannot be used
                raise WeightsError(
                    f"{path} has {len(v)} vertices where {neutral_path.name} has {len(neutral)}; it is incomplete "
                    "or from another model: use ICT-FaceKit's OBJ files"
                )
            out[i] = (v[:num_vertices] - neutral[:num_vertices]).astype(np.float32)
        return out

    return {
        "mean": neutral[:num_vertices].astype(np.float32),
        "id": offsets(identity),
        "exp": offsets(expressions),
        "exp_names": np.array([name for name, _ in expressions]),
    }


# --- the compact cached file ---------------------------------------------------------------------------------


def build_compact(
    arrays: dict[str, np.ndarray],
    topology_obj: str | Path,
    out_path: str | Path,
    landmarks68=ICT_LANDMARKS_68,
    source: str = "",
) -> Path:
    """Write one .npz with everything fitting needs: bases, triangles, UVs, landmark indices."""
    from flowcli.io.atomic import atomic_path

    num_vertices = arrays["mean"].shape[0]
    polys, uv_polys, uvs = read_obj_topology(topology_obj)
    polys_uv = [(p, u) for p, u in zip(polys, uv_polys) if max(p) < num_vertices]
    if not polys_uv:
        raise InputError(f"{topology_obj} has no polygons within the model's {num_vertices} vertices")
    tris, uv_tris = triangulate([p for p, _ in polys_uv], [u for _, u in polys_uv])
    _check_uvs(topology_obj, uv_tris, uvs)
    used_uv = np.unique(uv_tris)
    remap = np.full(len(uvs), -1, np.int64)
    remap[used_uv] = np.arange(len(used_uv))
    # through an open file: given a name, np.savez appends .npz to any other suffix (-o model.NPZ), so the temp
    # file stayed behind and an empty one was published
    with atomic_path(out_path, overwrite=True) as tmp, open(tmp, "wb") as fh:
        np.savez(  # uncompressed: loads in a blink; compression saves only ~10%
            fh,
            version=np.array(COMPACT_VERSION),
            mean=arrays["mean"].astype(np.float32),
            id=arrays["id"].astype(np.float32),
            exp=arrays["exp"].astype(np.float32),
            exp_names=np.asarray(arrays["exp_names"]).astype(str),
            triangles=tris,
            uvs=uvs[used_uv].astype(np.float32),
            uv_triangles=remap[uv_tris].astype(np.int32),
            landmarks68=np.asarray(landmarks68, np.int32),
            jaw_right=np.asarray(ICT_JAW_RIGHT, np.int32),
            jaw_left=np.asarray(ICT_JAW_LEFT, np.int32),
            source=np.array(source),
        )
    return Path(out_path)


def _check_uvs(topology_obj, uv_tris: np.ndarray, uvs: np.ndarray) -> None:
    """Every face-region polygon of the topology OBJ needs texture coordinates (f v/vt): meshes are written with UVs."""
    if len(uv_tris) and (uv_tris.min() < 0 or uv_tris.max() >= len(uvs)):
        problem = "has no texture coordinates (vt lines)" if len(uvs) == 0 else "has polygons without valid UVs"
        raise WeightsError(
            f"topology OBJ {topology_obj} {problem}; use ICT-FaceKit's generic_neutral_mesh.obj, which has them"
        )


def load_face_model(path: str | Path, topology_obj: str | Path | None = None) -> FaceModel:
    """Load a compact model file, or a bare {mean, id, exp, exp_names} .npz plus an OBJ that gives its topology."""
    path = Path(path)
    arrays = read_model_arrays(path)
    mean = arrays["mean"]
    if "triangles" not in arrays:
        if topology_obj is None:
            raise WeightsError(
                f"face model {path} has no triangles: add triangles, uvs and uv_triangles to it (as `flowcli face "
                "convert` does), or pass --face-assets DIR with DIR/ict-facekit/FaceXModel/generic_neutral_mesh.obj"
            )
        polys, uv_polys, uvs = read_obj_topology(topology_obj)
        keep = [i for i, p in enumerate(polys) if max(p) < len(mean)]
        tris, uv_tris = triangulate([polys[i] for i in keep], [uv_polys[i] for i in keep])
        _check_uvs(topology_obj, uv_tris, uvs)
        arrays.update(triangles=tris, uvs=uvs, uv_triangles=uv_tris)
    landmarks = arrays.setdefault("landmarks68", np.array(ICT_LANDMARKS_68))
    problem = _topology_problem(arrays, len(mean))
    if problem:
        raise WeightsError(f"face model {path}: {problem}")
    return FaceModel(
        mean=mean.astype(np.float32),
        id_basis=arrays["id"].astype(np.float32),
        exp_basis=arrays["exp"].astype(np.float32),
        exp_names=[str(n) for n in arrays["exp_names"]],
        triangles=arrays["triangles"].astype(np.int64),
        uvs=arrays["uvs"].astype(np.float32),
        uv_triangles=arrays["uv_triangles"].astype(np.int64),
        landmarks68=landmarks.astype(np.int64),
        jaw_right=arrays.get("jaw_right", np.array(ICT_JAW_RIGHT)).astype(np.int64),
        jaw_left=arrays.get("jaw_left", np.array(ICT_JAW_LEFT)).astype(np.int64),
        source=str(arrays.get("source", path)),
    )


_MODEL_HINT = (
    "pass --face-model an .npz with mean (V x 3), id (K x V x 3), exp (E x V x 3) and exp_names "
    "(e.g. written by `flowcli face convert`), or a folder of ICT-FaceKit OBJs"
)


def read_model_arrays(path: str | Path, hint: str = _MODEL_HINT) -> dict[str, np.ndarray]:
    """Every array of a model .npz, checked to hold usable mean, id, exp and exp_names: a WeightsError naming the
    file, with `hint` (what to do), where it cannot be read or they are missing or malformed."""
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"face model {path} not found; {hint}")
    if not zipfile.is_zipfile(path):  # np.load would take any other file for a pickle and say so
        raise WeightsError(f"{path} is not a face model .npz; {hint}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise WeightsError(f"cannot read face model {path}: {error}".splitlines()[0]) from None
    missing = [k for k in ("mean", "id", "exp", "exp_names") if k not in arrays]
    if missing:
        raise WeightsError(f"face model {path} lacks {', '.join(missing)}; {hint}")
    problem = _basis_problem(arrays)
    if problem:
        raise WeightsError(f"face model {path}: {problem}; {hint}")
    return arrays


def _numeric(a) -> bool:
    return isinstance(a, np.ndarray) and np.issubdtype(a.dtype, np.number)


def _basis_problem(arrays: dict) -> str | None:
    """What makes mean, id, exp, exp_names unusable (None when they are fine)."""
    mean, ids, exps = arrays["mean"], arrays["id"], arrays["exp"]
    if not all(_numeric(a) for a in (mean, ids, exps)):
        return "mean, id and exp must be numeric arrays"
    if mean.ndim != 2 or mean.shape[1] != 3 or len(mean) == 0:
        return f"mean is {mean.shape}, not V x 3"
    if ids.ndim != 3 or ids.shape[1:] != mean.shape or exps.ndim != 3 or exps.shape[1:] != mean.shape:
        return f"id {ids.shape} and exp {exps.shape} must be K x V x 3 and E x V x 3 with mean's V = {len(mean)}"
    if len(ids) == 0:
        return "it has no identity modes (id is empty)"
    if len(exps) == 0:
        return "it has no expression blendshapes (exp is empty)"
    if np.shape(arrays["exp_names"]) != (len(exps),):
        return f"exp_names must name its {len(exps)} expressions"
    if not all(np.isfinite(a).all() for a in (mean, ids, exps)):
        return "mean, id or exp holds NaN or infinite values"
    return None


def _topology_problem(arrays: dict, num_vertices: int) -> str | None:
    """What makes the triangles, UVs or landmark indices unusable for a mesh of num_vertices (None if fine)."""
    tris, uv_tris, uvs = (arrays.get(key) for key in ("triangles", "uv_triangles", "uvs"))
    if not all(_numeric(a) for a in (tris, uv_tris, uvs)):
        return "triangles, uvs and uv_triangles must be numeric arrays"
    if tris.ndim != 2 or tris.shape[1] != 3 or len(tris) == 0 or tris.min() < 0 or tris.max() >= num_vertices:
        return f"triangles must be F x 3 indices of its {num_vertices} vertices"
    if (
        uv_tris.shape != tris.shape
        or uvs.ndim != 2
        or uvs.shape[1] != 2
        or uv_tris.min() < 0
        or uv_tris.max() >= len(uvs)
    ):
        return "uvs (T x 2) and uv_triangles (one row per triangle) do not match"
    for key, count in (("landmarks68", 68), ("jaw_right", None), ("jaw_left", None)):
        if key in arrays:
            a = arrays[key]
            if not _numeric(a) or a.ndim != 1 or count not in (None, len(a)) or len(a) == 0:
                return f"{key} must be a list of {count or 'some'} vertex indices"
            if a.min() < 0 or a.max() >= num_vertices:
                return f"{key} indices exceed its {num_vertices} vertices"
    return None


def vertex_indices(folder: str | Path) -> dict:
    """ICT-FaceKit's vertex_indices.json (landmark, fitting and rigid vertex sets)."""
    return json.loads(Path(folder, "vertex_indices.json").read_text())
