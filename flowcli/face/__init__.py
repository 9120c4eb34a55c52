"""3D face model fitting: MediaPipe landmarks -> ICT-FaceKit pose, identity and ARKit blendshapes.

Entry points: `FaceAssets.locate(dir)` (flowcli.face.assets), `FacePipeline` (flowcli.face.pipeline) for
images, `fit_video` (flowcli.face.video) for clips, `FaceFitter` (flowcli.face.fit) for MediaPipe points
you already have. The CLI is `flowcli face fit` (flowcli/cli/face.py); see docs/face.md.
"""
