"""Image in, fitted faces out: detection, 468 landmarks, model fit."""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
import torch

from flowcli.errors import InputError
from flowcli.face.assets import FaceAssets
from flowcli.face.fit import FaceFit, FaceFitter, FitOptions
from flowcli.face.media import as_rgb8
from flowcli.face.mediapipe import FaceMeshRunner


class NoFaceError(Exception):
    """No face in an image (handled per input by the CLI, which turns it into a JSON record and exit code)."""


@dataclass
class FaceResult:
    fit: FaceFit
    landmarks68: np.ndarray  # 68 x 3 image x, y, depth of the fitted model's landmarks
    landmarks468: np.ndarray  # 468 x 3 MediaPipe points (x, y px, relative depth)
    vertices: np.ndarray  # V x 3 fitted mesh in image coordinates (x, y px, depth)


class FacePipeline:
    def __init__(self, assets: FaceAssets, face_model=None, options: FitOptions | None = None, min_score: float = 0.5):
        self.assets = assets
        self.model = assets.model(face_model)
        self.fitter = FaceFitter(self.model, options)
        self.runner = FaceMeshRunner(assets.mediapipe_dir, min_score=min_score)

    def landmarks(self, image: np.ndarray, max_faces: int = 1):
        """MediaPipe points of up to max_faces faces (largest first) and how many faces were found in all
        (the faces fitted plus the detections left untried)."""
        if isinstance(max_faces, bool) or not isinstance(max_faces, numbers.Integral) or max_faces < 1:
            raise InputError(f"max_faces must be a whole number of at least 1, got {max_faces!r}")
        detections = self.runner.detect(image)
        if not detections:
            raise NoFaceError("no face found")
        detections.sort(key=lambda d: -float(np.prod(d.box[2:] - d.box[:2])))
        found, tried = [], 0
        for det in detections:  # a larger face-like region without landmarks must not hide a real face
            tried += 1
            lm = self.runner.landmarks(image, det)
            if lm.score >= 0.5:
                found.append(lm)
            if len(found) == max_faces:
                break
        if not found:
            raise NoFaceError("a face-like region was found but no face landmarks could be placed")
        return found, len(found) + len(detections) - tried

    def track(self, frame: np.ndarray, previous: np.ndarray | None) -> tuple[np.ndarray | None, int]:
        """One video frame's 468 points: tracked from the previous frame's crop, re-detected when lost.
        Returns (points or None, faces detected on re-detection or 1 when tracked)."""
        if previous is not None:
            lm = self.runner.track(frame, previous, passes=2)
            if lm.score >= 0.5:
                return lm.points, 1
        try:
            found, total = self.landmarks(frame, 1)
        except NoFaceError:
            return None, 0
        return found[0].points, total

    def result(self, fit: FaceFit) -> FaceResult:
        return FaceResult(
            fit=fit,
            landmarks68=self.fitter.landmarks68(fit),
            landmarks468=fit.mediapipe,
            vertices=self.fitter.vertices_image(fit),
        )

    def fit_image(self, image, max_faces: int = 1) -> tuple[list[FaceResult], int]:
        """Faces of one picture: an H x W (x 1/3/4) array, uint8, uint16 or float in [0, 1], gray, RGB or RGBA,
        or a frame as flowcli's flow and stereo take it, a float RGB tensor [3, H, W] (or [1, 3, H, W]) in
        [0, 1]. Raises NoFaceError when it holds no face."""
        found, total = self.landmarks(as_rgb8(_channels_last(image)), max_faces)
        results = []
        for lm in found:
            fit = self.fitter.fit(lm.points)
            fit.score = lm.score
            fit.box = lm.detection.box if lm.detection is not None else None
            results.append(self.result(fit))
        return results, total


def _channels_last(image):
    """One picture as an H x W (x C) array: tensors [3, H, W] / [1, 3, H, W] (RGB in [0, 1]) and channels-first
    arrays are moved to channels last; a batch of several pictures is an InputError."""
    if isinstance(image, torch.Tensor):
        from flowcli.inference import check_frame

        frame = check_frame("image", image)  # float RGB in [0, 1]: the flow and stereo convention
        if len(frame) != 1:
            raise InputError(f"image holds a batch of {len(frame)} pictures; fit_image takes one, loop over them")
        return (frame[0].detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    array = np.asarray(image)
    if array.ndim == 4:
        raise InputError(f"image has shape {array.shape}, a batch; fit_image takes one H x W x 3 picture, "
                         "loop over them")
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[2] > 4:  # channels first
        return array.transpose(1, 2, 0)
    return array
