"""The scorer interface every IEL backend implements.

A scorer turns images and texts into L2-normalised embeddings in one shared space; the
IEL engine (:mod:`dldc.iel.engine`) batches, caches and scores with it. A *cross-fitted*
scorer (the in-domain model) holds K fold models and scores each pair with the model that
never saw it in training.
"""

from __future__ import annotations

import hashlib
import re
from typing import Protocol, runtime_checkable

import torch
from PIL import Image


@runtime_checkable
class Scorer(Protocol):
    """One contrastive model.

    Attributes:
        scorer_id: stable identity of the weights and preprocessing (e.g.
            ``open_clip:ViT-B-32:sha256-1a2b3c4d5e6f``); embedding caches are keyed by it,
            so it must change whenever the embeddings would.
        name: short column name for score tables (``[a-z0-9_]+``).
        context_length: the text encoder's token budget (77 for CLIP).
        device: where the model runs.
    """

    scorer_id: str
    name: str
    context_length: int
    device: torch.device

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image → ``(3, H, W)`` float tensor (must be picklable for worker processes)."""
        ...

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` batch → ``(N, D)`` L2-normalised float32 embeddings on the CPU."""
        ...

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Texts → ``(N, D)`` L2-normalised float32 embeddings on the CPU (truncated to
        ``context_length`` tokens; the engine records which ones were)."""
        ...

    def token_counts(self, texts: list[str]) -> list[int]:
        """Token count of each text *without* truncation, special tokens included."""
        ...


@runtime_checkable
class CrossFitScorer(Protocol):
    """K fold models; pair ``p`` is scored by ``fold_model(fold_of(p.image_id))``.

    A scorer that knows which texts each fold model trained on may also offer
    ``fold_for(image_id, caption)`` (the in-domain scorer does); the engine then uses it, so a
    text scored on another image is not judged by a model that learnt it
    (:func:`dldc.iel.engine.pair_folds`).
    """

    scorer_id: str
    name: str
    n_folds: int

    def fold_of(self, image_id: str) -> int:
        """The fold an image was held out in (all captions of an image share it)."""
        ...

    def fold_model(self, fold: int) -> Scorer:
        """The model trained without fold ``fold``."""
        ...


def column_name(text: str) -> str:
    """A safe score-column name: ``ViT-B-32 / openai`` → ``vit_b_32_openai``."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "scorer"


def file_digest(path: str, length: int = 12) -> str:
    """Short sha256 of a file's bytes, for scorer ids that follow the weights."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


def l2_normalise(embeddings: torch.Tensor) -> torch.Tensor:
    """Float32 CPU rows of unit length (the cosine of two rows is their dot product)."""
    embeddings = embeddings.detach().float()
    return torch.nn.functional.normalize(embeddings, dim=-1).cpu()
