"""The FID Inception network (torch-fidelity's port of TF Inception 2015-12-05), from a local file.

FID is only comparable across papers with the exact TensorFlow Inception weights of 2015-12-05
and torch-fidelity's TF1-compatible input resize. Both come from torch-fidelity (pinned); the
weights are *never* downloaded here: the file must be staged beforehand, and a missing file
stops the run with a message naming the file, its URL and where to put it.

The weights file is the one torch-fidelity downloads (``weights-inception-2015-12-05-6726825d.pth``),
the same tensors pytorch-fid ships as ``pt_inception-2015-12-05-6726825d.pth``. It is read with
``torch.load(weights_only=True)`` (torch-fidelity itself unpickles it without that guard, so we
load it first and hand the tensors over).

Input protocol (recorded with every FID): ``uint8`` RGB at the evaluation resolution, resized
inside the network to 299×299 by torch-fidelity's TF1-compatible bilinear interpolation without
antialiasing; features are the 2,048-d pool3 activations.
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np
import torch
from PIL import Image

from dldc.io import file_sha256

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_URLS = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
)
# torch.hub names files <name>-<first 8 hex of sha256>.<ext>.
INCEPTION_SHA256_PREFIX = "6726825d"
FEATURE_DIM = 2048
INPUT_SIZE = 299
INPUT_DESCRIPTION = "uint8 RGB -> 299x299, torch-fidelity TF1-compatible bilinear (no antialias); pool3 2048-d"


class InceptionWeightsMissing(FileNotFoundError):
    """The FID Inception weights file is not where the configuration says."""


def missing_weights_message(path: str | Path) -> str:
    """What to do when the Inception weights are not at ``path``."""
    return (
        f"FID needs the Inception-2015-12-05 weights at {path}, which does not exist. Download "
        f"{INCEPTION_URLS[0]} (or the identical {INCEPTION_URLS[1]}) on a machine with internet access "
        f"and place it at {path}, or point `evaluate.inception_weights` at your copy. dldc never downloads "
        "weights at run time. Without the file, set `evaluate.fid: false` to report only FD-<scorer>."
    )


def load_inception(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Build torch-fidelity's FID Inception network with the weights in ``path``.

    Args:
        path: the staged weights file (see :data:`INCEPTION_URLS`).
        device: where the network runs.

    Returns:
        The network in eval mode; ``model(uint8 (N, 3, H, W))`` returns a 1-tuple with the
        ``(N, 2048)`` features.

    Raises:
        InceptionWeightsMissing: no file at ``path`` (the message says where to get it).
        ValueError: the file is not a state dict of the torch-fidelity Inception network.
    """
    path = Path(path)
    if not path.is_file():
        raise InceptionWeightsMissing(missing_weights_message(path))
    # Imported lazily: torch-fidelity imports torchvision datasets and more on import.
    from torch_fidelity import feature_extractor_inceptionv3 as fidelity_inception

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unpickling failure means "not a plain state dict"
        raise ValueError(
            f"{path} is not a tensor-only state dict (torch.load(weights_only=True) failed: {err})"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a state dict of tensors; expected the Inception-2015-12-05 weights")
    # torch-fidelity fetches weights through load_state_dict_from_url when given no path; hand it ours.
    with mock.patch.object(fidelity_inception, "load_state_dict_from_url", lambda *args, **kwargs: state):
        try:
            model = fidelity_inception.FeatureExtractorInceptionV3("inception-v3-compat", [str(FEATURE_DIM)])
        except RuntimeError as err:
            raise ValueError(f"{path} does not fit torch-fidelity's Inception network: {err}") from None
    return model.to(device).eval()


class InceptionFeatures:
    """FID features of PIL images: the pool3 layer of the 2015-12-05 Inception network.

    Args:
        weights: the staged weights file.
        device: where the network runs.

    Attributes:
        extractor_id: ``inception-2015-12-05:<sha256 prefix of the file>``.
        dim: 2048.
        spaces: 1 (one feature space).
        input_description: the resize protocol, recorded with every number.
        weights_sha256: the file's sha256 (a different prefix than ``6726825d`` means the
            numbers are not comparable to published FIDs).
    """

    dim = FEATURE_DIM
    spaces = 1
    input_description = INPUT_DESCRIPTION

    def __init__(self, weights: str | Path, device: str | torch.device = "cpu"):
        self.model = load_inception(weights, device)
        self.device = torch.device(device)
        self.weights = str(weights)
        self.weights_sha256 = file_sha256(weights)
        self.extractor_id = f"inception-2015-12-05:{self.weights_sha256[:12]}"

    @torch.no_grad()
    def extract(self, images: list[Image.Image], image_ids: list[str]) -> list[np.ndarray]:
        """RGB images of one size → ``[(N, 2048)]`` float64 features (``image_ids`` unused)."""
        del image_ids
        arrays = np.stack([np.asarray(image.convert("RGB"), dtype=np.uint8) for image in images])
        pixels = torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous().to(self.device)
        (features,) = self.model(pixels)
        return [features.double().cpu().numpy()]
