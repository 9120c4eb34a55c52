"""MediaPipe BlazeFace (short range) and Face Mesh (468 points) run through the ai-edge-litert TFLite runtime.

Both models come from the `mediapipe==0.10.21` wheel (Apache-2.0) and are found in the face asset folder.
The pre- and post-processing follows MediaPipe's graphs: letterboxed 128x128 detector input in [-1, 1],
SSD anchors, weighted NMS; a rotated square crop (1.5x the box, eyes level) fed to the 192x192 landmark
model in [0, 1]; a second landmark pass on the crop the first pass implies.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from flowcli.errors import FlowcliError, WeightsError

DETECTOR_FILE = "face_detection_short_range.tflite"
LANDMARK_FILE = "face_landmark.tflite"


@dataclass
class Detection:
    """A face box in image pixels, its score and 6 keypoints (right eye, left eye, nose, mouth, right ear, left ear)."""

    box: np.ndarray  # x0, y0, x1, y1
    score: float
    keypoints: np.ndarray  # 6 x 2


@dataclass
class FaceLandmarks:
    """468 Face Mesh points in image pixels: x, y and a relative depth z (same scale as x, larger = farther)."""

    points: np.ndarray  # 468 x 3
    score: float
    detection: Detection | None = None


@contextlib.contextmanager
def _quiet_stderr():
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):  # no real stderr (e.g. captured by a test runner)
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


def _interpreter(path: Path, input_shape: tuple, output_sizes: tuple):
    """A TFLite interpreter for MediaPipe's model file `path`, checked to take `input_shape` and give outputs of
    `output_sizes` elements: another model (the two files swapped, another MediaPipe release's) failed only at
    its first image, with a traceback."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise FlowcliError(
            "face detection needs the TFLite runtime: pip install 'flowcli[face]' (ai-edge-litert)"
        ) from None
    if not path.is_file():
        raise WeightsError(f"face model file {path} not found; check --face-assets or FLOWCLI_FACE_ASSETS")
    try:
        with _quiet_stderr():  # the runtime prints an INFO line about its CPU delegate to fd 2
            interpreter = Interpreter(model_path=str(path), num_threads=1)
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as error:
        raise WeightsError(f"cannot load {path}: {_first_line(error)}; {_REPLACE_HINT}") from None
    got_input = tuple(int(n) for n in interpreter.get_input_details()[0]["shape"])
    got_outputs = tuple(int(np.prod(o["shape"])) for o in interpreter.get_output_details())
    if got_input != input_shape or got_outputs != output_sizes:

        def shapes(image, outputs):
            return f"a {'x'.join(map(str, image))} input and outputs of {' and '.join(map(str, outputs))} values"

        raise WeightsError(
            f"{path} is not MediaPipe's {path.name}: it has {shapes(got_input, got_outputs)}, where "
            f"{shapes(input_shape, output_sizes)} are expected; {_REPLACE_HINT}"
        )
    return interpreter


# what to do about a MediaPipe model file that cannot be used, wherever it came from
_REPLACE_HINT = (
    "replace it with the file from the mediapipe==0.10.21 wheel, or remove it to use the checked download "
    "(flowcli weights download mediapipe-face)"
)


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0].strip()


def ssd_anchors() -> np.ndarray:
    """The 896 anchor centres (x, y in [0,1]) of BlazeFace short range: strides 8, 16, 16, 16, 2 anchors per cell."""
    anchors = []
    strides = [8, 16, 16, 16]
    layer = 0
    while layer < len(strides):
        repeats = 0
        stride = strides[layer]
        while layer < len(strides) and strides[layer] == stride:
            repeats += 2  # one aspect ratio plus the interpolated scale
            layer += 1
        size = math.ceil(128 / stride)
        ys, xs = np.meshgrid((np.arange(size) + 0.5) / size, (np.arange(size) + 0.5) / size, indexing="ij")
        cells = np.stack([xs.ravel(), ys.ravel()], 1)
        anchors.append(np.repeat(cells, repeats, axis=0))
    return np.concatenate(anchors).astype(np.float32)


def _affine_crop(image: np.ndarray, center, size: float, angle: float, out: int) -> tuple[np.ndarray, np.ndarray]:
    """Crop a square of side `size` px rotated by `angle` (radians) around `center`, resampled to out x out.

    Returns the crop (float32 [0,1]) and the 2x3 matrix mapping crop pixels to image pixels.
    """
    c, s = math.cos(angle), math.sin(angle)
    k = size / out
    # crop pixel (u, v) -> image: center + R @ ((u, v) - out/2) * k
    a, b = c * k, -s * k
    d, e = s * k, c * k
    tx = center[0] - (a + b) * out / 2
    ty = center[1] - (d + e) * out / 2
    # PIL and the landmark model use continuous pixel coordinates (pixel i spans [i, i+1]); the returned
    # matrix gives index coordinates (pixel centres on integers), as landmarks are usually reported.
    pil = Image.fromarray(image)
    crop = pil.transform((out, out), Image.Transform.AFFINE, (a, b, tx, d, e, ty), resample=Image.Resampling.BILINEAR)
    matrix = np.array([[a, b, tx - 0.5], [d, e, ty - 0.5]], np.float64)
    return np.asarray(crop, np.float32) / 255.0, matrix


class FaceMeshRunner:
    """Detect faces and their 468 landmarks in uint8 RGB images (H x W x 3)."""

    def __init__(self, mediapipe_dir: Path, min_score: float = 0.5):
        # BlazeFace: 896 anchors x 16 box and keypoint values, 896 scores; Face Mesh: 468 x 3 points, one score
        self.detector = _interpreter(Path(mediapipe_dir) / DETECTOR_FILE, (1, 128, 128, 3), (896 * 16, 896))
        self.landmarker = _interpreter(Path(mediapipe_dir) / LANDMARK_FILE, (1, 192, 192, 3), (468 * 3, 1))
        self.anchors = ssd_anchors()
        self.min_score = min_score

    @staticmethod
    def _run(interpreter, x: np.ndarray) -> list[np.ndarray]:
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x[None].astype(np.float32))
        interpreter.invoke()
        return [interpreter.get_tensor(o["index"]) for o in interpreter.get_output_details()]

    def detect(self, image: np.ndarray) -> list[Detection]:
        """BlazeFace boxes, most confident first, after weighted non-maximum suppression."""
        h, w = image.shape[:2]
        # shrunk to 128 px first, then letterboxed: a square canvas of the full-size picture took 2.7 GB for a
        # 1000 x 30000 panorama
        small_w, small_h = max(1, round(w * 128 / max(h, w))), max(1, round(h * 128 / max(h, w)))
        pad = np.array([(128 - small_w) // 2, (128 - small_h) // 2])
        canvas = Image.new("RGB", (128, 128))
        canvas.paste(Image.fromarray(image).resize((small_w, small_h), Image.Resampling.BILINEAR), tuple(pad))
        x = np.asarray(canvas, np.float32) / 127.5 - 1.0
        regressors, scores = self._run(self.detector, x)
        raw = regressors[0]
        score = _sigmoid(scores[0, :, 0])
        keep = score >= self.min_score
        if not keep.any():
            return []
        raw, score, anchors = raw[keep], score[keep], self.anchors[keep]
        # detector input pixels -> image pixels, per axis: the shrunk sides were rounded to whole pixels
        zoom = np.array([w / small_w, h / small_h])
        centre = raw[:, :2] + anchors * 128
        half = raw[:, 2:4] / 2
        boxes = np.concatenate([(centre - half - pad) * zoom, (centre + half - pad) * zoom], 1)
        keypoints = (raw[:, 4:16].reshape(-1, 6, 2) + anchors[:, None] * 128 - pad) * zoom
        return _weighted_nms(boxes, score, keypoints)

    def landmarks_in_roi(self, image: np.ndarray, center, size: float, angle: float) -> FaceLandmarks:
        crop, matrix = _affine_crop(image, center, size, angle, 192)
        points, score = self._run(self.landmarker, crop)
        pts = points.reshape(468, 3).astype(np.float64)
        xy = pts[:, :2] @ matrix[:, :2].T + matrix[:, 2]
        z = pts[:, 2] * size / 192
        score = float(_sigmoid(score.ravel()[:1])[0])
        return FaceLandmarks(np.concatenate([xy, z[:, None]], 1), score)

    def landmarks(self, image: np.ndarray, detection: Detection, refine: int = 8) -> FaceLandmarks:
        """Face Mesh on the detection's rotated crop, then up to `refine` passes on the crop the landmarks
        imply, until it stops moving (turned heads need several: each pass centres the face better)."""
        x0, y0, x1, y1 = detection.box
        eye_r, eye_l = detection.keypoints[0], detection.keypoints[1]
        angle = math.atan2(eye_l[1] - eye_r[1], eye_l[0] - eye_r[0])
        center = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
        size = max(x1 - x0, y1 - y0) * 1.5
        result = self.landmarks_in_roi(image, center, size, angle)
        result = self.track(image, result.points, passes=refine)
        result.detection = detection
        return result

    def track(self, image: np.ndarray, previous: np.ndarray, passes: int = 2, tol: float = 0.005) -> FaceLandmarks:
        """Landmarks from the crop that earlier landmarks (this frame's or the previous frame's) imply."""
        center, size, angle = roi_from_landmarks(previous)
        result = self.landmarks_in_roi(image, center, size, angle)
        for _ in range(passes - 1):
            new_center, new_size, new_angle = roi_from_landmarks(result.points)
            moved = np.linalg.norm(new_center - center) / size + abs(new_size - size) / size + abs(new_angle - angle)
            if moved < tol:
                break
            center, size, angle = new_center, new_size, new_angle
            result = self.landmarks_in_roi(image, center, size, angle)
        return result


def roi_from_landmarks(points: np.ndarray) -> tuple[np.ndarray, float, float]:
    """MediaPipe's tracking crop: eyes (33, 263) level, the rotated bounding box scaled 1.5x, square."""
    right, left = points[33, :2], points[263, :2]
    angle = math.atan2(left[1] - right[1], left[0] - right[0])
    c, s = math.cos(-angle), math.sin(-angle)
    xy = points[:, :2]
    mid = (xy.min(0) + xy.max(0)) / 2
    rotated = (xy - mid) @ np.array([[c, s], [-s, c]])
    lo, hi = rotated.min(0), rotated.max(0)
    centre_rot = (lo + hi) / 2
    center = mid + centre_rot @ np.array([[c, -s], [s, c]])
    size = float(max(hi - lo)) * 1.5
    return center, size, angle


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, np.float64)))


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    lo = np.maximum(box[:2], boxes[:, :2])
    hi = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), 1)
    area = lambda b: np.prod(np.clip(b[..., 2:] - b[..., :2], 0, None), -1)  # noqa: E731
    return inter / (area(box) + area(boxes) - inter + 1e-9)


def _weighted_nms(boxes, scores, keypoints, threshold: float = 0.3) -> list[Detection]:
    order = np.argsort(-scores)
    boxes, scores, keypoints = boxes[order], scores[order], keypoints[order]
    remaining = np.ones(len(scores), bool)
    detections = []
    for i in range(len(scores)):
        if not remaining[i]:
            continue
        overlap = (_iou(boxes[i], boxes) > threshold) & remaining
        remaining &= ~overlap
        w = scores[overlap][:, None]
        box = (boxes[overlap] * w).sum(0) / w.sum()
        kps = (keypoints[overlap] * w[:, :, None]).sum(0) / w.sum()
        detections.append(Detection(box=box, score=float(scores[i]), keypoints=kps))
    return detections
