"""Fold assignment of the in-domain scorer's K-fold cross-fitting.

Images are sorted by scene, then by a seeded stable hash of ``image_id``, and dealt to folds
round-robin: folds differ in size by at most one image overall and within every scene. An
image id absent from ``folds.parquet`` (not in the training manifest) falls back to
:func:`hash_fold`; any fold model is then held out for it.
"""

from __future__ import annotations

import hashlib


def stable_hash(image_id: str, seed: int) -> int:
    """A 64-bit hash of ``(seed, image_id)`` that is the same on every machine and run.

    Example:
        >>> stable_hash("0e17841014d8e425", 0) == stable_hash("0e17841014d8e425", 0)
        True
    """
    return int.from_bytes(hashlib.sha256(f"{seed}:{image_id}".encode()).digest()[:8], "big")


def hash_fold(image_id: str, n_folds: int, seed: int) -> int:
    """Fallback fold of an image that was not in the training manifest."""
    return stable_hash(image_id, seed) % n_folds


def assign_folds(image_ids: list[str], scenes: list[str], n_folds: int, seed: int) -> dict[str, int]:
    """Deal images to ``n_folds`` folds, balanced overall and within each scene.

    Images are ordered by scene, then by :func:`stable_hash`, and dealt round-robin, so every
    fold model trains on (nearly) the same share of every scene.

    Args:
        image_ids: unique image ids.
        scenes: the scene of each image (same order).
        n_folds: K.
        seed: changes the assignment.

    Returns:
        ``{image_id: fold}``.

    Raises:
        ValueError: fewer images than folds (a fold would be empty).

    Example:
        >>> folds = assign_folds(["a", "b", "c", "d"], ["x", "x", "y", "y"], 2, seed=0)
        >>> sorted(folds.values())
        [0, 0, 1, 1]
    """
    if len(set(image_ids)) != len(image_ids):
        raise ValueError("image ids must be unique")
    if len(image_ids) < n_folds:
        raise ValueError(f"{len(image_ids)} images cannot fill {n_folds} folds; use folds <= {len(image_ids)}")
    order = sorted(zip(scenes, image_ids), key=lambda item: (item[0], stable_hash(item[1], seed)))
    return {image_id: position % n_folds for position, (_, image_id) in enumerate(order)}


def ids_digest(image_ids: list[str]) -> str:
    """Short sha256 of a set of image ids (order-independent), to record training sets."""
    return hashlib.sha256("\n".join(sorted(image_ids)).encode()).hexdigest()[:16]
