"""Output files for face fits, each written atomically (temp file + rename) and never over an existing file
without overwrite: meshes (.obj with UVs, .ply with per-face texture coordinates), pose and landmark JSON,
.npy arrays, blendshape CSV/JSON, overlay PNG and MP4 (imageio-ffmpeg)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
from pathlib import Path

import numpy as np

from flowcli.errors import OutputError
from flowcli.io.atomic import atomic_path as _atomic_path
from flowcli.io.flow_formats import save_npy


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# the temp files of `published_together`'s block, renamed into place when it ends; None outside one
_held: contextlib.ExitStack | None = None


@contextlib.contextmanager
def atomic_path(path, overwrite=False):
    """flowcli.io.atomic.atomic_path, with the file made readable like any other new file (the temp file
    starts as 0600). Inside `published_together`, the temp file stays until the block ends."""
    if _held is not None:
        tmp = _held.enter_context(_atomic_path(path, overwrite))  # an error here or later removes it
        yield tmp
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~_umask())
        return
    with _atomic_path(path, overwrite) as tmp:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~_umask())


@contextlib.contextmanager
def published_together():
    """Every file this module writes in the block (the overlay video included) stays a temp file until the block
    ends, then all are renamed into place one after the other, so that an input interrupted or failed while its
    files are written leaves none of them, not a part a re-run refuses."""
    global _held
    if _held is not None:  # nested: the outer block publishes
        yield
        return
    with contextlib.ExitStack() as held:  # its exit publishes the files, or removes them on an error
        _held = held
        try:
            yield
        finally:
            _held = None


def write_obj(path, vertices, triangles, uvs=None, uv_triangles=None, overwrite=False) -> Path:
    v = np.asarray(vertices, np.float64)
    t = np.asarray(triangles, np.int64) + 1
    lines = ["# flowcli face mesh", *[f"v {a:.6f} {b:.6f} {c:.6f}" for a, b, c in v.tolist()]]
    if uvs is not None and uv_triangles is not None:
        lines += [f"vt {a:.6f} {b:.6f}" for a, b in np.asarray(uvs, np.float64).tolist()]
        tt = np.asarray(uv_triangles, np.int64) + 1
        lines += [f"f {a}/{p} {b}/{q} {c}/{r}" for (a, b, c), (p, q, r) in zip(t.tolist(), tt.tolist())]
    else:
        lines += [f"f {a} {b} {c}" for a, b, c in t.tolist()]
    with atomic_path(path, overwrite) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return Path(path)


def read_obj(path) -> dict:
    """Vertices, triangles (0-based), and UVs / UV triangles when present."""
    v, vt, f, ft = [], [], [], []
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "v":
            v.append([float(x) for x in parts[1:4]])
        elif parts[0] == "vt":
            vt.append([float(x) for x in parts[1:3]])
        elif parts[0] == "f":
            corners = [p.split("/") for p in parts[1:]]
            f.append([int(c[0]) - 1 for c in corners])
            if all(len(c) > 1 and c[1] for c in corners):
                ft.append([int(c[1]) - 1 for c in corners])
    out = {"vertices": np.array(v), "triangles": np.array(f, np.int64)}
    if vt:
        out["uvs"] = np.array(vt)
        out["uv_triangles"] = np.array(ft, np.int64)
    return out


def write_ply(path, vertices, triangles, uvs=None, uv_triangles=None, overwrite=False) -> Path:
    """Binary little-endian PLY; UVs as a per-face `texcoord` list (6 floats), as MeshLab reads them."""
    v = np.asarray(vertices, np.float32)
    t = np.asarray(triangles, np.int32)
    with_uv = uvs is not None and uv_triangles is not None
    header = [
        "ply",
        "format binary_little_endian 1.0",
        "comment flowcli face mesh",
        f"element vertex {len(v)}",
        "property float x",
        "property float y",
        "property float z",
        f"element face {len(t)}",
        "property list uchar int vertex_indices",
    ]
    if with_uv:
        header.append("property list uchar float texcoord")
    header.append("end_header")
    face_dtype = [("n", "u1"), ("idx", "<i4", (3,))]
    if with_uv:
        face_dtype += [("m", "u1"), ("uv", "<f4", (6,))]
    faces = np.zeros(len(t), dtype=face_dtype)
    faces["n"], faces["idx"] = 3, t
    if with_uv:
        faces["m"] = 6
        faces["uv"] = np.asarray(uvs, np.float32)[np.asarray(uv_triangles)].reshape(len(t), 6)
    with atomic_path(path, overwrite) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(("\n".join(header) + "\n").encode("ascii"))
            fh.write(v.astype("<f4").tobytes())
            fh.write(faces.tobytes())
    return Path(path)


def read_ply(path) -> dict:
    """Reads the binary PLY that write_ply writes (vertices, triangles, per-face UVs if present)."""
    data = Path(path).read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    nv = int(next(h for h in header if h.startswith("element vertex")).split()[-1])
    nf = int(next(h for h in header if h.startswith("element face")).split()[-1])
    with_uv = any("texcoord" in h for h in header)
    v = np.frombuffer(data, "<f4", nv * 3, end).reshape(nv, 3)
    face_dtype = [("n", "u1"), ("idx", "<i4", (3,))] + ([("m", "u1"), ("uv", "<f4", (6,))] if with_uv else [])
    faces = np.frombuffer(data, np.dtype(face_dtype), nf, end + nv * 12)
    out = {"vertices": v.astype(np.float64), "triangles": faces["idx"].astype(np.int64)}
    if with_uv:
        out["face_uvs"] = faces["uv"].reshape(nf, 3, 2).astype(np.float64)
    return out


def write_mesh(path, vertices, model, overwrite=False) -> Path:
    suffix = Path(path).suffix.lower()
    writer = {".obj": write_obj, ".ply": write_ply}.get(suffix)
    if writer is None:
        raise OutputError(f"unknown mesh format {suffix!r}; use .obj or .ply")
    return writer(path, vertices, model.triangles, model.uvs, model.uv_triangles, overwrite=overwrite)


def write_json(path, payload, overwrite=False) -> Path:
    with atomic_path(path, overwrite) as tmp:
        tmp.write_text(json.dumps(payload, indent=1) + "\n")
    return Path(path)


def write_npy(path, array, overwrite=False) -> Path:
    with atomic_path(path, overwrite) as tmp:
        save_npy(tmp, np.asarray(array), path)
    return Path(path)


def write_blendshapes_csv(path, names: list[str], rows: list[tuple[int, dict | None]], overwrite=False) -> Path:
    """One row per frame: frame index then one column per blendshape (empty where no face)."""
    with atomic_path(path, overwrite) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["frame", *names])
            for frame, weights in rows:
                writer.writerow(
                    [frame, *(["" for _ in names] if weights is None else [f"{weights[n]:.5f}" for n in names])]
                )
    return Path(path)


def write_png(path, image: np.ndarray, overwrite=False) -> Path:
    import imageio.v3 as iio

    with atomic_path(path, overwrite) as tmp:
        iio.imwrite(tmp, image, extension=".png")
    return Path(path)


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0]


class Mp4Writer:
    """An H.264 MP4 written to a temp file and renamed on close (with the other files of a `published_together`
    block); odd sizes are padded by repeating the last row and column. flowcli's VideoWriter encodes it: it refuses
    a rate the container cannot store and checks ffmpeg's exit status, so a video it could not finish (a full
    disk) is an OutputError, never a truncated file."""

    CRF = 15  # imageio's quality 7, which wrote these overlays before

    def __init__(self, path, fps: float, overwrite=False):
        from flowcli.io.media import VideoWriter, check_fps_fits

        self.path = Path(path)
        check_fps_fits(self.path, fps)
        self._context = atomic_path(path, overwrite)
        self._tmp = self._context.__enter__()
        try:
            self._writer = VideoWriter(self._tmp, fps, overwrite=True, crf=self.CRF)
            self._writer.__enter__()
        except BaseException as error:  # no temp file left behind
            self._context.__exit__(type(error), error, error.__traceback__)
            if isinstance(error, ValueError):  # a rate below the lowest it stores
                raise OutputError(f"cannot write {path}: {error}") from None
            raise

    def _as_ours(self, error: Exception) -> OutputError:
        """The encoder's error, naming the video rather than its temp file."""
        return OutputError(_first_line(error).replace(str(self._tmp), str(self.path)))

    def append(self, frame: np.ndarray) -> None:
        h, w = frame.shape[:2]
        if h % 2 or w % 2:
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        try:
            self._writer.write(frame)
        except OutputError as error:
            raise self._as_ours(error) from None
        except (OSError, RuntimeError) as error:  # no ffmpeg executable
            raise OutputError(f"cannot write {self.path}: {_first_line(error)}") from None

    def close(self, ok: bool = True) -> None:
        """Keep the video (ok) or remove its temp file; an encoder that fails to finish never leaves one."""
        try:
            if ok:
                self._writer.__exit__(None, None, None)
            else:
                self._writer.__exit__(RuntimeError, RuntimeError("aborted"), None)
        except BaseException as error:
            self._context.__exit__(type(error), error, error.__traceback__)
            if isinstance(error, OutputError):
                raise self._as_ours(error) from None
            raise
        if ok:
            self._context.__exit__(None, None, None)
        else:
            self._context.__exit__(RuntimeError, RuntimeError("aborted"), None)
