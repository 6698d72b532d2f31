"""Fold assignment of the in-domain scorer's K-fold cross-fitting.

Two assignments. :func:`group_folds` (``indomain.fold_groups: text``, the default) keeps caption
*text* from leaking: images joined by a shared caption text share a fold, and where such a group
is too large to place, training drops the pairs whose text occurs in the fold being scored — so no
fold model has trained on a text that it scores (see its docstring for the rules and
:func:`scoring_fold` for texts scored on other images, e.g. EGL candidates).

:func:`assign_folds` (``fold_groups: image``, the earlier behaviour) folds by image only: images
are sorted by scene, then by a seeded stable hash of ``image_id``, and dealt to folds
round-robin: folds differ in size by at most one image overall and within every scene. An
image id absent from ``folds.parquet`` (not in the training manifest) falls back to
:func:`hash_fold`; any fold model is then held out for it.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any


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


def text_keys(tokenizer: Any, texts: list[str]) -> list[str]:
    """Each text as the tokenizer normalises it before BPE: two texts with the same key get the
    same tokens, so a model that trained on one has trained on the other.

    open_clip's tokenizer cleans with ``clean_fn`` (``lower``: ftfy fix, HTML unescape, single
    spaces, lower case); a tokenizer without one gets single spaces and lower case.

    Example:
        >>> import open_clip
        >>> text_keys(open_clip.get_tokenizer("ViT-B-32"), ["Many  Planes &amp; a terminal ."])
        ['many planes & a terminal .']
    """
    clean = getattr(tokenizer, "clean_fn", None) or (lambda text: " ".join(text.split()).lower())
    return [clean(text) for text in texts]


def ids_digest(image_ids: list[str]) -> str:
    """Short sha256 of a set of image ids (order-independent), to record training sets."""
    return hashlib.sha256("\n".join(sorted(image_ids)).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- text-aware folds

# A component of images joined by shared caption text is placed whole in one fold unless it holds
# more than this share of a fold's ideal size (n_images / n_folds): beyond that, keeping it whole
# would unbalance the folds (RSICD's generic captions chain hundreds of images on the full set).
MAX_GROUP_SHARE = 0.1


@dataclass
class FoldPlan:
    """A text-aware fold assignment and what it cost.

    Attributes:
        folds: ``{image_id: fold}``.
        text_folds: ``{text key: bitmask of the folds holding an image with that text}``.
        cut_texts: texts whose images were allowed into different folds (their component was too
            large); training of fold ``k`` drops their pairs where the text occurs in fold ``k``.
        components: connected components of images joined by a shared text (before cutting).
        largest_component: images in the largest of them.
        split_components: components larger than ``max_group`` images, placed by cutting texts.
        max_group: the largest component placed whole.
    """

    folds: dict[str, int]
    text_folds: dict[str, int]
    cut_texts: list[str]
    components: int
    largest_component: int
    split_components: int
    max_group: int

    def spanning_texts(self) -> list[str]:
        """Texts that occur in more than one fold (the ones the drop rule costs pairs for)."""
        return sorted(text for text, mask in self.text_folds.items() if mask & (mask - 1))


class _UnionFind:
    def __init__(self, size: int):
        self.parent = list(range(size))

    def find(self, item: int) -> int:
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[max(a, b)] = min(a, b)  # the smaller index is the root: order-independent


def _components(members: list[int], texts_of: list[list[str]], skip: set[str]) -> list[list[int]]:
    """Connected components of ``members`` (image indices) joined by a shared text not in ``skip``."""
    local = {image: position for position, image in enumerate(members)}
    sets = _UnionFind(len(members))
    first_holder: dict[str, int] = {}
    for image in members:
        for text in texts_of[image]:
            if text in skip:
                continue
            if text in first_holder:
                sets.union(local[first_holder[text]], local[image])
            else:
                first_holder[text] = image
    groups: dict[int, list[int]] = {}
    for image in members:
        groups.setdefault(sets.find(local[image]), []).append(image)
    return list(groups.values())


def _split(component: list[int], texts_of: list[list[str]], max_group: int, cut: set[str]) -> list[list[int]]:
    """Cut the texts that join the most images of ``component`` until every part fits ``max_group``."""
    parts, done = [component], []
    while parts:
        part = parts.pop()
        if len(part) <= max_group:
            done.append(part)
            continue
        holders: dict[str, int] = {}
        for image in part:
            for text in set(texts_of[image]) - cut:
                holders[text] = holders.get(text, 0) + 1
        # The most shared text first (ties: alphabetical): generic captions are cut, specific ones kept.
        text = min((t for t, n in holders.items() if n > 1), key=lambda t: (-holders[t], t))
        cut.add(text)
        parts.extend(_components(part, texts_of, cut))
    return done


def group_folds(
    image_ids: list[str],
    scenes: list[str],
    texts: list[list[str]],
    n_folds: int,
    seed: int,
    max_group_share: float = MAX_GROUP_SHARE,
) -> FoldPlan:
    """Deal images to folds so that images sharing a caption text share a fold where they can.

    Rule 1 (components): images joined, directly or through others, by a shared text (already
    normalised, see :func:`dldc.iel.indomain_train.caption_keys`) form a connected component,
    placed whole in one fold. Rule 2 (oversize fallback): a component of more than ``max_group =
    max(1, floor(max_group_share * n_images / n_folds))`` images is split by cutting its most
    shared texts until every part fits; those texts may then occur in several folds, and the
    trainer drops, from the training of fold ``k``, every pair whose text occurs in fold ``k``
    (:func:`dldc.iel.indomain_train.training_pairs`). Either way no fold model trains on a text
    that occurs in the fold it scores.

    Placement is deterministic and machine-independent: parts largest first (ties by scene, then
    :func:`stable_hash` of their first image), each into a fold it does not push past
    ``ceil(n_images / n_folds)`` where one exists, among those the one with the fewest images of
    its scenes, then the fewest images, then the lowest index. With no repeated text it deals each
    scene round-robin, like :func:`assign_folds`.

    Args:
        image_ids: unique image ids.
        scenes: the scene of each image.
        texts: the normalised caption texts of each image.
        n_folds: K.
        seed: changes the order of ties.
        max_group_share: the largest component placed whole, as a share of a fold's ideal size.

    Raises:
        ValueError: duplicate ids, mismatched lengths, or fewer images than folds.

    Example:
        >>> plan = group_folds(["a", "b", "c", "d"], ["x"] * 4, [["t"], ["t"], ["u"], ["v"]], 2, 0, 1.0)
        >>> plan.folds["a"] == plan.folds["b"], plan.cut_texts
        (True, [])
    """
    if len(set(image_ids)) != len(image_ids):
        raise ValueError("image ids must be unique")
    if not len(image_ids) == len(scenes) == len(texts):
        raise ValueError("image_ids, scenes and texts must have the same length")
    if len(image_ids) < n_folds:
        raise ValueError(f"{len(image_ids)} images cannot fill {n_folds} folds; use folds <= {len(image_ids)}")
    max_group = max(1, math.floor(max_group_share * len(image_ids) / n_folds))
    hashes = [stable_hash(image_id, seed) for image_id in image_ids]
    # Members of a part in (scene, hash) order, so its first image and its tie-break do not
    # depend on the order images were given in.
    ordered = sorted(range(len(image_ids)), key=lambda i: (scenes[i], hashes[i]))
    components = _components(ordered, texts, set())
    cut: set[str] = set()
    parts: list[list[int]] = []
    split = 0
    for component in components:
        if len(component) > max_group:
            split += 1
            parts.extend(_split(component, texts, max_group, cut))
        else:
            parts.append(component)
    parts = [sorted(part, key=lambda i: (scenes[i], hashes[i])) for part in parts]
    parts.sort(key=lambda part: (-len(part), scenes[part[0]], hashes[part[0]]))
    capacity = math.ceil(len(image_ids) / n_folds)
    sizes = [0] * n_folds
    scene_sizes: list[dict[str, int]] = [{} for _ in range(n_folds)]
    folds: dict[str, int] = {}
    for part in parts:
        load = [sum(scene_sizes[k].get(scenes[i], 0) for i in part) for k in range(n_folds)]
        fold = min(range(n_folds), key=lambda k: (sizes[k] + len(part) > capacity, load[k], sizes[k], k))
        for image in part:
            folds[image_ids[image]] = fold
            scene_sizes[fold][scenes[image]] = scene_sizes[fold].get(scenes[image], 0) + 1
        sizes[fold] += len(part)
    text_folds: dict[str, int] = {}
    for image, image_texts in enumerate(texts):
        for text in image_texts:
            text_folds[text] = text_folds.get(text, 0) | (1 << folds[image_ids[image]])
    return FoldPlan(
        folds=folds,
        text_folds=text_folds,
        cut_texts=sorted(cut),
        components=len(components),
        largest_component=max(len(c) for c in components),
        split_components=split,
        max_group=max_group,
    )


def scoring_fold(image_fold: int, trained_by: int, n_folds: int) -> int:
    """The fold model to score a (image, text) pair with: the image's, unless it trained on the text.

    ``trained_by`` is the bitmask of fold models that trained on the text (0 for a text outside
    the training data, such as a fresh EGL candidate). When the image's own fold model trained on
    it (a retrieval candidate: another image's caption), the lowest fold whose model did not is
    used instead: that model has seen the image, not the text — the text is the stronger leak
    (it was learnt paired with another image). If every fold model trained on the text (only
    possible with image folds), the image's fold is kept.

    Example:
        >>> scoring_fold(0, 0b000, 3), scoring_fold(0, 0b011, 3), scoring_fold(1, 0b111, 3)
        (0, 2, 1)
    """
    if not trained_by >> image_fold & 1:
        return image_fold
    clean = [k for k in range(n_folds) if not trained_by >> k & 1]
    return clean[0] if clean else image_fold
