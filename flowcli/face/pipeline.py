"""Image in, fitted faces out: detection, 468 landmarks, model fit."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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

    def fit_image(self, image: np.ndarray, max_faces: int = 1) -> tuple[list[FaceResult], int]:
        """Faces of an H x W (x 1/3/4) picture: uint8, uint16 or float in [0, 1], gray, RGB or RGBA."""
        found, total = self.landmarks(as_rgb8(image), max_faces)
        results = []
        for lm in found:
            fit = self.fitter.fit(lm.points)
            fit.score = lm.score
            fit.box = lm.detection.box if lm.detection is not None else None
            results.append(self.result(fit))
        return results, total
