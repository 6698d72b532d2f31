"""The in-domain scorer: a small CLIP trained from scratch on the dataset, with K-fold cross-fitting.

A generic CLIP has never seen most remote-sensing vocabulary and imagery, so its scores say
little about whether *this* caption fits *this* tile. The in-domain scorer learns the dataset's
own image–text alignment instead. To score every pair with a model that never saw it, the images
(each with all its captions) are split into K folds; fold model ``k`` is trained on every pair
whose image is *not* in fold ``k`` (all splits) and scores only the pairs of fold ``k``.

Caption *text* repeats across images (generic captions, copy-paste noise, swapped captions), so
"never saw the pair" also needs "never saw the text": by default (``fold_groups: text``) images
that share a normalised caption text share a fold, and where such a group is too large to keep
whole the training of fold ``k`` drops every pair whose text occurs in fold ``k``
(:func:`dldc.iel.folds.group_folds`, :func:`training_pairs`; the scene head obeys the same rule;
``indomain.json``'s ``fold_rule`` records the rule and the pairs it dropped per fold). A text
scored on an image other than its own (an EGL candidate) goes to a fold model that did not train
on it (:meth:`IndomainScorer.fold_for`, from ``texts.parquet``).

The pieces, behind this module's public face (``__all__``):

* :mod:`dldc.iel.indomain_arch` — the open_clip architecture config, the model, its pixels
  (:class:`IndomainPreprocess`) and the output folder's file names;
* :mod:`dldc.iel.folds` — the fold assignment (balanced per scene; :func:`hash_fold` for unseen ids);
* :mod:`dldc.iel.indomain_train` — :func:`train_indomain`: data, loss, the training loop, held-out metrics;
* this module — the scorers: :class:`IndomainScorer` and its fold models, :func:`load_indomain`.

Output folder (written atomically: built in a temporary sibling, then renamed)::

    out/
      open_clip_config.json    {"model_cfg": ..., "preprocess_cfg": ...}; open_clip's
                               ``local-dir:`` format, so ``create_model("local-dir:out")`` works
      fold-<k>.safetensors     weights of fold model k (trained without fold k), k = 0..K-1
      fold-<k>.scene.safetensors  fold k's caption -> scene naive Bayes (scene_head; scene_text.py)
      folds.parquet            image_id (string), fold (int32): the held-out fold of each image
      texts.parquet            (fold_groups: text) text (normalised, string), trained_by (int64):
                               bitmask of the fold models that trained on the text
      indomain.json            config, data counts, per-fold losses, held-out metrics, timings, and
                               ``files``: the sha256 of every file above

:func:`load_indomain` reads the folder back as an :class:`IndomainScorer` (a
:class:`~dldc.iel.base.CrossFitScorer`), refusing files that no longer match ``files``; its fold
models implement :class:`~dldc.iel.base.Scorer`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import open_clip
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file

from dldc.device import resolve_device
from dldc.iel.base import l2_normalise
from dldc.iel.folds import FoldPlan, assign_folds, group_folds, hash_fold, ids_digest, scoring_fold, stable_hash
from dldc.iel.indomain_arch import (
    FOLDS_FILE,
    OPEN_CLIP_CONFIG_FILE,
    REPORT_FILE,
    SCORER_NAME,
    TEXTS_FILE,
    IndomainPreprocess,
    create_indomain_model,
    encode_tokens,
    fold_weights_file,
    image_size_of,
    image_to_uint8,
    resolve_architecture,
    scene_model_file,
)
from dldc.iel.indomain_train import (
    contrastive_loss,
    embed_images,
    embed_tokens,
    plan_folds,
    prepare_data,
    rank_auroc,
    text_keys,
    texts_trained_by,
    train_fold,
    train_indomain,
    training_pairs,
)
from dldc.iel.open_clip_scorer import TokenCountMemo
from dldc.iel.scene_text import SceneCaptionModel, content_tokens

__all__ = [
    "FOLDS_FILE",
    "TEXTS_FILE",
    "FoldPlan",
    "OPEN_CLIP_CONFIG_FILE",
    "REPORT_FILE",
    "SCORER_NAME",
    "IndomainFoldScorer",
    "IndomainPreprocess",
    "IndomainScorer",
    "assign_folds",
    "contrastive_loss",
    "create_indomain_model",
    "embed_images",
    "embed_tokens",
    "encode_tokens",
    "fold_weights_file",
    "group_folds",
    "hash_fold",
    "ids_digest",
    "image_to_uint8",
    "load_indomain",
    "plan_folds",
    "prepare_data",
    "rank_auroc",
    "resolve_architecture",
    "scene_model_file",
    "scoring_fold",
    "stable_hash",
    "text_keys",
    "texts_trained_by",
    "train_fold",
    "train_indomain",
    "training_pairs",
]


class IndomainFoldScorer:
    """One fold model as a :class:`~dldc.iel.base.Scorer` (scores only its held-out fold).

    ``preprocess`` is an :class:`IndomainPreprocess` instance attribute, not a bound method, so
    worker processes receive a few numbers instead of the model when it is pickled.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        scorer_id: str,
        tokenizer: Any,
        image_size: int,
        device: torch.device,
        scene_model: SceneCaptionModel | None = None,
    ):
        self.model = model.eval()
        self.scorer_id = scorer_id
        self.name = SCORER_NAME
        self.device = device
        self.context_length = int(model.context_length)
        self.tokenizer = tokenizer
        self.preprocess = IndomainPreprocess(image_size)
        self.scene_model = scene_model
        self._token_counts = TokenCountMemo(tokenizer)

    def scene_fit(self, texts: list[str], scenes: list[str]) -> list[float]:
        """``P(scene | text)`` of each (caption, image scene) pair under this fold's scene model.

        NaN where the scene was not in the fold's training data.

        Raises:
            RuntimeError: the scorer was trained without the scene head.
        """
        if self.scene_model is None:
            raise RuntimeError("this in-domain scorer has no scene head; retrain with indomain.scene_head=true")
        tokens = self.tokenizer(list(texts), context_length=self.context_length)
        captions = content_tokens(tokens, self.tokenizer.sot_token_id, self.tokenizer.eot_token_id)
        return self.scene_model.probability(captions, scenes).tolist()

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` preprocessed batch → ``(N, D)`` L2-normalised float32 CPU embeddings."""
        return l2_normalise(self.model.encode_image(pixels.to(self.device, torch.float32)))

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Texts → ``(N, D)`` L2-normalised float32 CPU embeddings (truncated to ``context_length``)."""
        tokens = self.tokenizer(list(texts), context_length=self.context_length)
        self._token_counts.record(list(texts), tokens)
        return l2_normalise(encode_tokens(self.model, tokens.to(self.device)))

    def token_counts(self, texts: list[str]) -> list[int]:
        """Untruncated token count of each text, start- and end-of-text tokens included."""
        return self._token_counts.counts(list(texts))


class IndomainScorer:
    """The K fold models of a trained in-domain scorer (a :class:`~dldc.iel.base.CrossFitScorer`).

    Attributes:
        scorer_id: ``indomain:<12 hex>``, a sha256 over the model config, ``folds.parquet`` and
            every fold's weights, so it changes whenever any embedding could.
        name: ``indomain``.
        n_folds: K.
        has_scene_head: whether each fold also has a caption–scene model (``scene_fit``).
        path: the output folder.
        folds: ``{image_id: fold}`` from ``folds.parquet``.
        seed: the training seed (used by the :func:`hash_fold` fallback).
        trained_by: ``{normalised text: bitmask of the fold models that trained on it}`` from
            ``texts.parquet``; empty for a scorer trained with image folds (``fold_groups: image``).
    """

    def __init__(self, path: str | Path, device: str = "auto"):
        self.path = Path(path)
        report = json.loads((self.path / REPORT_FILE).read_text(encoding="utf-8"))
        self.n_folds = int(report["config"]["folds"])
        self.seed = int(report["config"]["seed"])
        self.name = SCORER_NAME
        self.device = resolve_device(device)
        table = pq.read_table(self.path / FOLDS_FILE)
        self.folds = dict(zip(table["image_id"].to_pylist(), table["fold"].to_pylist()))
        self.has_scene_head = bool(report.get("scene_head", False))
        files = [OPEN_CLIP_CONFIG_FILE, FOLDS_FILE] + [fold_weights_file(k) for k in range(self.n_folds)]
        if (report.get("fold_rule") or {}).get("fold_groups") == "text":
            files.append(TEXTS_FILE)
        if self.has_scene_head:
            files += [scene_model_file(k) for k in range(self.n_folds)]
        missing = [name for name in files if not (self.path / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{self.path} is not a complete in-domain scorer: missing {missing}")
        digest = hashlib.sha256()
        damaged = []
        recorded = report.get("files") or {}  # absent in folders written before checksums were recorded
        for name in files:
            file_digest = hashlib.sha256((self.path / name).read_bytes())
            if name in recorded and recorded[name] != file_digest.hexdigest():
                damaged.append(name)
            digest.update(name.encode())
            digest.update(file_digest.digest())
        if damaged:
            raise ValueError(
                f"{self.path} is damaged: {damaged} no longer match the sha256 recorded in {REPORT_FILE}; "
                "train the scorer again (`dldc train-scorer`)"
            )
        self.scorer_id = f"{SCORER_NAME}:{digest.hexdigest()[:12]}"
        config = json.loads((self.path / OPEN_CLIP_CONFIG_FILE).read_text(encoding="utf-8"))
        self.image_size = image_size_of(config["model_cfg"])
        self.context_length = int(config["model_cfg"]["text_cfg"].get("context_length", 77))
        self.tokenizer = open_clip.get_tokenizer(f"local-dir:{self.path}", context_length=self.context_length)
        self.trained_by: dict[str, int] = {}
        self._text_keys: dict[str, str] = {}
        if TEXTS_FILE in files:
            texts = pq.read_table(self.path / TEXTS_FILE)
            self.trained_by = dict(zip(texts["text"].to_pylist(), texts["trained_by"].to_pylist()))
        self._models: dict[int, IndomainFoldScorer] = {}

    def fold_of(self, image_id: str) -> int:
        """The fold an image was held out in; unseen ids fall back to :func:`hash_fold`."""
        fold = self.folds.get(image_id)
        return int(fold) if fold is not None else hash_fold(image_id, self.n_folds, self.seed)

    def fold_for(self, image_id: str, caption: str) -> int:
        """The fold model to score ``caption`` on ``image_id`` with (:func:`scoring_fold`).

        The image's fold unless that fold's model trained on the text (as the tokenizer
        normalises it): a manifest pair always gets its image's fold (no fold model trains on a
        text of its own fold); a candidate text taken from another image (EGL retrieval) goes to
        a fold model that has not seen it. Image folds (no ``texts.parquet``): the image's fold.
        """
        fold = self.fold_of(image_id)
        if not self.trained_by:
            return fold
        key = self._text_keys.get(caption)
        if key is None:  # ftfy's cleaning is the slow part of scoring a big manifest: once per text
            key = self._text_keys[caption] = text_keys(self.tokenizer, [caption])[0]
        return scoring_fold(fold, self.trained_by.get(key, 0), self.n_folds)

    def fold_model(self, fold: int) -> IndomainFoldScorer:
        """The model trained without fold ``fold`` (loaded from safetensors on first use)."""
        if not 0 <= fold < self.n_folds:
            raise IndexError(f"fold {fold} out of range 0..{self.n_folds - 1}")
        if fold not in self._models:
            model = create_indomain_model(f"local-dir:{self.path}", device="cpu")
            # Non-persistent buffers (the causal mask) are rebuilt by the constructor.
            model.load_state_dict(load_file(str(self.path / fold_weights_file(fold))), strict=True)
            model.to(self.device)
            scene_model = SceneCaptionModel.load(self.path / scene_model_file(fold)) if self.has_scene_head else None
            self._models[fold] = IndomainFoldScorer(
                model, f"{self.scorer_id}#fold{fold}", self.tokenizer, self.image_size, self.device, scene_model
            )
        return self._models[fold]


def load_indomain(path: str | Path, device: str = "auto") -> IndomainScorer:
    """Open a folder written by :func:`train_indomain` as a cross-fitted scorer.

    Args:
        path: the training output folder.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda[:N]``.

    Raises:
        FileNotFoundError: the folder or one of its files is missing.
    """
    path = Path(path)
    if not (path / REPORT_FILE).is_file():
        raise FileNotFoundError(f"{path} has no {REPORT_FILE}; train it with `dldc train-scorer`")
    return IndomainScorer(path, device=device)
