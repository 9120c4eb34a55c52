"""Self-supervised adaptation of a flow model to a user's own unlabeled footage (`flowcli adapt`).

Modules: `losses` (photometric, smoothness, occlusion, distillation, temporal and stereo terms and
their composer), `superpixels` (SLIC in torch), `transforms` (the student's views and the teacher's
targets in them), `teacher` (frozen teachers and ensembles), `footage` (sequences, tuples, held-out
slice, fingerprint), `report` (before/after metrics), `trainer` (`adapt(AdaptConfig)`).
"""

from flowcli.adapt.losses import LossWeights, adapt_loss
from flowcli.adapt.trainer import AdaptConfig, adapt

__all__ = ["AdaptConfig", "LossWeights", "adapt", "adapt_loss"]
