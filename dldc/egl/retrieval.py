"""retrieval: propose the captions of the nearest images of the same scene (an offline fallback).

Without a VLM or masks, a good caption for an image is often one written for a very similar
image of the same scene. Nearness is the in-domain scorer's image embedding (the IEL's own view
of the images, :mod:`dldc.iel.indomain`): for an image in fold ``k`` the neighbours are ranked
by fold model ``k`` — the model that never saw that image — so the query image's own captions
cannot leak into its neighbourhood. The neighbours of a cross-fitted scorer are searched among
the images of fold ``k`` only: their captions are texts fold model ``k`` has not trained on (with
the in-domain scorer's text folds, a text occurring in fold ``k`` is never in its training), so
the candidate is scored by a model that has seen neither the image nor the text. Embeddings come
from, and go to, the IEL embedding store (:mod:`dldc.iel.store`), so images that ``dldc score``
encoded are not encoded again.

The pool of captions to propose excludes the image itself and the *known-low* pairs (those
below the loop's threshold at round 0): a noisy caption of a neighbour is no repair. Within a
neighbour, its captions are proposed best round-0 score first. A request's ``avoid`` texts
(already tried, or used by the image's other pairs) are skipped, so each attempt goes one
caption deeper.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dldc.data.images import load_rgb
from dldc.egl.base import Attempt, CaptionRequest, Proposal
from dldc.iel.base import CrossFitScorer, Scorer
from dldc.iel.store import EmbeddingStore


def normalise_text(text: str) -> str:
    """Comparison key of a caption: lower case, single spaces, no final period.

    Example:
        >>> normalise_text("  A lake  at the top. ")
        'a lake at the top'
    """
    return " ".join(text.lower().split()).rstrip(" .")


class RetrievalCaptioner:
    """Captions of the nearest same-scene images, as a :class:`~dldc.egl.base.Captioner`.

    Args:
        scorer: the in-domain scorer (cross-fitted) or any IEL scorer with an image tower.
        pool: manifest rows that may be proposed, with ``pair_id, image_id, image, image_sha256,
            scene, caption`` and ``fused`` (round-0 score, best first within a neighbour).
        root: the dataset root (image paths are relative to it).
        store_root: the IEL embedding store folder.
        neighbours: how many nearest images are searched.
        batch_size: images per encoder call.
    """

    backend = "retrieval"

    def __init__(
        self,
        scorer: Scorer | CrossFitScorer,
        pool: pd.DataFrame,
        root: Path,
        store_root: Path,
        neighbours: int = 16,
        batch_size: int = 64,
    ):
        self.scorer = scorer
        self.model_id = scorer.scorer_id
        self.root = Path(root)
        self.store_root = Path(store_root)
        self.neighbours = neighbours
        self.batch_size = batch_size
        pool = pool.sort_values(["image_id", "fused", "pair_id"], ascending=[True, False, True])
        self.captions_of = pool.groupby("image_id", sort=False)[["pair_id", "caption"]].apply(
            lambda rows: list(zip(rows["pair_id"], rows["caption"]))
        )
        images = pool.drop_duplicates("image_id")
        self.images_by_scene = {scene: group for scene, group in images.groupby("scene", sort=True)}
        self._stores: dict[str, EmbeddingStore] = {}
        pool_digest = hashlib.sha256("\x1f".join(pool["pair_id"] + "\x1e" + pool["caption"]).encode()).hexdigest()[:12]
        self.fingerprint = f"retrieval:{self.model_id}:n{neighbours}:pool-{pool_digest}"

    def _same_fold(self, image_id: str, images: pd.DataFrame) -> pd.DataFrame:
        """``images`` restricted to the fold of ``image_id`` (all of them for a single model)."""
        if isinstance(self.scorer, CrossFitScorer) and not isinstance(self.scorer, Scorer):
            fold = self.scorer.fold_of(image_id)
            return images[[self.scorer.fold_of(i) == fold for i in images["image_id"]]]
        return images

    def _model(self, image_id: str) -> Scorer:
        if isinstance(self.scorer, CrossFitScorer) and not isinstance(self.scorer, Scorer):
            return self.scorer.fold_model(self.scorer.fold_of(image_id))
        return self.scorer

    def embed(self, model: Scorer, images: list[tuple[str, str]]) -> torch.Tensor:
        """Image embeddings under ``model`` for ``(sha256, relative path)`` pairs, via the store."""
        store_id = f"{model.scorer_id}|{getattr(model, 'precision', 'fp32')}"  # the engine's store key
        store = self._stores.get(store_id)
        if store is None:
            store = self._stores[store_id] = EmbeddingStore(self.store_root, store_id)
        keys = [bytes.fromhex(sha) for sha, _ in images]
        missing = store.missing("image", keys)
        if missing:
            path_of = dict(zip(keys, (path for _, path in images)))
            chunks = []
            for start in range(0, len(missing), self.batch_size):
                pixels = torch.stack(
                    [
                        model.preprocess(load_rgb(self.root / path_of[k]))
                        for k in missing[start : start + self.batch_size]
                    ]
                )
                chunks.append(model.encode_images(pixels))
            store.add("image", missing, torch.cat(chunks))
        return store.get("image", keys)

    def neighbours_of(self, request: CaptionRequest, embeddings: dict[str, torch.Tensor]) -> list[tuple[str, float]]:
        """The nearest same-scene (and same-fold) images (``image_id``, cosine), nearest first, the
        image itself excluded.

        Args:
            request: the pair to find neighbours for.
            embeddings: image embeddings by sha256 under the request's fold model (see :meth:`embed`).
        """
        candidates = self.images_by_scene.get(request.scene)
        if candidates is None:
            return []
        candidates = self._same_fold(request.image_id, candidates[candidates["image_id"] != request.image_id])
        if candidates.empty:
            return []
        query = embeddings[self._sha_of(request)]
        pool = torch.stack([embeddings[sha] for sha in candidates["image_sha256"]])
        cosine = (pool @ query).numpy()
        order = np.argsort(-cosine, kind="stable")[: self.neighbours]
        ids = candidates["image_id"].to_numpy()
        return [(str(ids[i]), float(cosine[i])) for i in order]

    def caption(self, requests: Sequence[CaptionRequest], attempt: Attempt) -> list[Proposal]:
        """For each request, the best unused caption of its nearest neighbour that has one."""
        del attempt  # depth comes from each request's ``avoid`` list
        # One encoder pass per fold model over the requests' images and their scenes' pools.
        groups: dict[int, list[int]] = {}
        for position, request in enumerate(requests):
            groups.setdefault(id(self._model(request.image_id)), []).append(position)
        embeddings_of: dict[int, dict[str, torch.Tensor]] = {}
        for model_key, positions in groups.items():
            model = self._model(requests[positions[0]].image_id)
            images = {self._sha_of(requests[i]): requests[i].image for i in positions}
            for scene in {requests[i].scene for i in positions}:
                pool = self.images_by_scene.get(scene)
                if pool is not None:
                    pool = self._same_fold(requests[positions[0]].image_id, pool)
                    images.update(zip(pool["image_sha256"], pool["image"]))
            items = list(images.items())
            matrix = self.embed(model, items)
            embeddings_of[model_key] = {sha: matrix[row] for row, (sha, _) in enumerate(items)}
        proposals = []
        used: dict[str, set[str]] = {}
        for request in requests:
            taken = used.setdefault(request.image_id, set())
            avoid = {normalise_text(t) for t in request.avoid} | taken
            proposal = Proposal(None, f"no unused caption among {self.neighbours} nearest {request.scene} images")
            embeddings = embeddings_of[id(self._model(request.image_id))]
            for image_id, cosine in self.neighbours_of(request, embeddings):
                options = self.captions_of.get(image_id, [])
                choice = next(((p, c) for p, c in options if normalise_text(c) not in avoid), None)
                if choice:
                    taken.add(normalise_text(choice[1]))
                    proposal = Proposal(choice[1], f"neighbour {choice[0]} cos {cosine:.3f}")
                    break
            proposals.append(proposal)
        return proposals

    @staticmethod
    def _sha_of(request: CaptionRequest) -> str:
        return request.image_sha256 or hashlib.sha256(request.image_path.read_bytes()).hexdigest()
