"""Image features and image–prompt scores from IEL scorers, for the evaluation.

Two uses of one IEL scorer (:func:`dldc.iel.factory.create_scorer` specs):

* :class:`ScorerFeatures` — its image tower as the feature extractor of a Fréchet / kernel
  distance, reported as ``FD-<label>`` / ``KD-<label>`` (never "FID": the numbers live in
  another feature space and are not comparable with Inception FIDs).
* :class:`PromptScorer` — cosine of the image and prompt embeddings (the CLIP score; both the
  raw cosine and ``100·max(cos, 0)`` are reported).

Cross-fitted scorers (the in-domain model: K fold models, fold ``k`` never trained on the images
of fold ``k``, nor on their captions). Each fold model has its own embedding space, so
embeddings of different fold models must never be mixed. Our choices:

* prompt scores use, for every image (generated or real), the fold model of the *source* test
  image (``fold_of(image_id)``): the one model that never saw that image or its captions, so the
  prompt is as new to it as the generated image;
* distances are computed in each fold model's space over all images and averaged over the K
  models (``spaces = K``). Every fold model saw (K−1)/K of the real test images in training; that
  bias is the same for every arm, so compare arms with each other, not with other tables.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from dldc.data.images import load_rgb

RESAMPLING = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "lanczos": Image.Resampling.LANCZOS,
}


def is_crossfit(scorer: Any) -> bool:
    """Whether a scorer is cross-fitted (has K fold models)."""
    return hasattr(scorer, "fold_model") and hasattr(scorer, "fold_of")


def describe_preprocess(model: Any, limit: int = 240) -> str:
    """A one-line description of a scorer's image preprocessing (recorded with every number)."""
    text = " ".join(repr(getattr(model, "preprocess", "?")).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ScorerFeatures:
    """An IEL image tower as a distance's feature extractor.

    Args:
        scorer: a loaded scorer (plain or cross-fitted).
        spec: the spec it was loaded from (recorded).

    Attributes:
        extractor_id: the scorer id.
        spaces: 1, or K for a cross-fitted scorer (distances are averaged over the K spaces).
        dim: embedding width (known after the first :meth:`extract`).
        input_description: the scorer's preprocessing.
    """

    def __init__(self, scorer: Any, spec: str):
        self.spec = spec
        self.extractor_id = scorer.scorer_id
        self.crossfit = is_crossfit(scorer)
        self.models = [scorer.fold_model(k) for k in range(scorer.n_folds)] if self.crossfit else [scorer]
        self.spaces = len(self.models)
        self.dim = int(getattr(self.models[0], "embed_dim", 0) or 0)
        self.input_description = describe_preprocess(self.models[0]) + " -> L2-normalised image embedding"

    def extract(self, images: list[Image.Image], image_ids: list[str]) -> list[np.ndarray]:
        """Images → one ``(N, D)`` float64 array per space (``image_ids`` unused)."""
        del image_ids
        out = []
        for model in self.models:
            pixels = torch.stack([model.preprocess(image) for image in images])
            out.append(model.encode_images(pixels).double().numpy())
        self.dim = out[0].shape[1]
        return out


class PromptScorer:
    """Image–prompt cosine with one IEL scorer (per-image fold model when cross-fitted).

    Args:
        scorer: a loaded scorer (plain or cross-fitted).
        spec: the spec it was loaded from (recorded).
    """

    def __init__(self, scorer: Any, spec: str):
        self.spec = spec
        self.scorer = scorer
        self.scorer_id = scorer.scorer_id
        self.crossfit = is_crossfit(scorer)
        first = scorer.fold_model(0) if self.crossfit else scorer
        self.context_length = int(first.context_length)
        self.input_description = describe_preprocess(first)
        self.truncated_prompts = 0

    def _groups(self, image_ids: list[str]) -> dict[int, list[int]]:
        if not self.crossfit:
            return {-1: list(range(len(image_ids)))}
        groups: dict[int, list[int]] = {}
        for row, image_id in enumerate(image_ids):
            groups.setdefault(self.scorer.fold_of(image_id), []).append(row)
        return groups

    def _model(self, fold: int) -> Any:
        return self.scorer if fold < 0 else self.scorer.fold_model(fold)

    def image_embeddings(self, images: list[Image.Image], image_ids: list[str]) -> np.ndarray:
        """``(N, D)`` embeddings; row ``i`` from the model for ``image_ids[i]``'s fold."""
        rows: dict[int, np.ndarray] = {}
        for fold, members in self._groups(image_ids).items():
            model = self._model(fold)
            pixels = torch.stack([model.preprocess(images[i]) for i in members])
            for i, embedding in zip(members, model.encode_images(pixels).double().numpy()):
                rows[i] = embedding
        return np.stack([rows[i] for i in range(len(image_ids))])

    def select(self, per_space: list[np.ndarray], image_ids: list[str]) -> np.ndarray:
        """:meth:`image_embeddings` from embeddings already computed by every fold model.

        Args:
            per_space: :meth:`ScorerFeatures.extract` of the same scorer and images (one array per
                fold model, or one array).
            image_ids: the source image of each row.
        """
        if not self.crossfit:
            return per_space[0]
        return np.stack([per_space[self.scorer.fold_of(i)][row] for row, i in enumerate(image_ids)])

    def text_embeddings(self, texts: list[str], image_ids: list[str]) -> np.ndarray:
        """``(N, D)`` prompt embeddings, in the same fold spaces as :meth:`image_embeddings`."""
        rows: dict[int, np.ndarray] = {}
        for fold, members in self._groups(image_ids).items():
            model = self._model(fold)
            batch = [texts[i] for i in members]
            self.truncated_prompts += sum(n > model.context_length for n in model.token_counts(batch))
            for i, embedding in zip(members, model.encode_texts(batch).double().numpy()):
                rows[i] = embedding
        return np.stack([rows[i] for i in range(len(texts))])


def load_image(path: str | Path, size: tuple[int, int], resize: str, exact: bool) -> Image.Image:
    """Read an image as RGB at ``size`` = ``(width, height)``.

    Args:
        path: the file.
        size: the evaluation resolution.
        resize: ``bicubic``, ``bilinear`` or ``lanczos`` (PIL, antialiased when shrinking).
        exact: the file must already have ``size`` (generated images); otherwise it is centre-cropped
            to the aspect ratio of ``size`` and resized (real images).

    Raises:
        ValueError: ``exact`` and the image has another size, or the file cannot be decoded.
    """
    try:
        image = load_rgb(Path(path))
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read {path}: {err}") from None
    if image.size == size:
        return image
    if exact:
        raise ValueError(f"{path} is {image.size[0]}x{image.size[1]}, but its row says {size[0]}x{size[1]}")
    return ImageOps.fit(image, size, method=RESAMPLING[resize])


def load_images(
    paths: list[str], size: tuple[int, int], resize: str, exact: bool, workers: int = 4
) -> list[Image.Image]:
    """:func:`load_image` over many files, decoded in threads (Pillow releases the GIL)."""
    if workers <= 1 or len(paths) < 2:
        return [load_image(p, size, resize, exact) for p in paths]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: load_image(p, size, resize, exact), paths))
