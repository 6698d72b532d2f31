"""Downstream segmentation evaluation: datasets, a seeded resumable trainer, metrics, synthetic arms.

* :mod:`dldc.segment.datasets`: image/mask folder layouts, patches, the split by tile;
* :mod:`dldc.segment.models`: a compact U-Net and torchvision's LR-ASPP / DeepLabV3 (random weights);
* :mod:`dldc.segment.trainer`: the training loop, checkpoints, prediction;
* :mod:`dldc.segment.metrics`: confusion matrix, mIoU / mAcc, bootstrap intervals;
* :mod:`dldc.segment.synthetic`: layout prompts from real masks, rendering, the two mask protocols;
* :mod:`dldc.segment.experiment`: ``dldc segment`` (every arm, one results table).
"""

from dldc.segment.datasets import LAYOUTS, LabelSpace, list_pairs, load_patches, split_tiles
from dldc.segment.metrics import bootstrap_intervals, confusion_matrix, scores
from dldc.segment.models import create_segmenter

__all__ = [
    "LAYOUTS",
    "LabelSpace",
    "bootstrap_intervals",
    "confusion_matrix",
    "create_segmenter",
    "list_pairs",
    "load_patches",
    "scores",
    "split_tiles",
]
