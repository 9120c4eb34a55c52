"""Benchmark dataset readers (`make_dataset`) and unlabeled footage (`UnlabeledFrames`)."""

from flowcli.data.datasets import (
    DATASETS,
    KITTI,
    STEREO_DATASETS,
    FlowDataset,
    FlyingChairs,
    KITTIStereo,
    Middlebury,
    MiddleburyStereo,
    Sintel,
    UnlabeledFrames,
    make_dataset,
    parse_dataset_spec,
)

__all__ = [
    "DATASETS",
    "KITTI",
    "STEREO_DATASETS",
    "FlowDataset",
    "FlyingChairs",
    "KITTIStereo",
    "Middlebury",
    "MiddleburyStereo",
    "Sintel",
    "UnlabeledFrames",
    "make_dataset",
    "parse_dataset_spec",
]
