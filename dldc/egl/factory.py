"""Build a captioner from a one-line spec (what ``params.yaml`` and ``--backend`` carry).

Spec forms:

* ``hf:HUB_ID[@REVISION]`` or ``hf:DIR`` — a vision-language model through transformers'
  image-text-to-text API (:mod:`dldc.egl.hf_vlm`), e.g. ``hf:Qwen/Qwen2.5-VL-7B-Instruct``;
* ``mask2text[:TABLE]`` — describe the image's segmentation mask (:mod:`dldc.egl.mask2text`);
  ``TABLE`` is a shipped class table (``synthrs``, the default; ``dubai-seg``) or a JSON path;
* ``retrieval[:INDOMAIN_DIR]`` — captions of the nearest same-scene images
  (:mod:`dldc.egl.retrieval`) by the in-domain scorer among the loop's scorers, or the one in
  ``INDOMAIN_DIR``.

Backends are imported lazily: a mask2text run never imports transformers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import pandas as pd

if TYPE_CHECKING:
    from dldc.config import CaptionConfig
    from dldc.egl.base import Captioner
    from dldc.iel.base import CrossFitScorer, Scorer

BACKENDS = ("hf", "mask2text", "retrieval")
SPEC_FORMS = (
    "hf:HUB_ID[@REVISION] or hf:DIR (e.g. hf:Qwen/Qwen2.5-VL-7B-Instruct), "
    "mask2text[:TABLE] (TABLE: synthrs, dubai-seg or a class-table JSON), "
    "retrieval[:INDOMAIN_DIR]"
)


class CaptionerSpec(NamedTuple):
    """A parsed captioner spec: ``backend``, ``target`` (model, table or folder) and ``revision``."""

    backend: str
    target: str | None = None
    revision: str | None = None


def parse_captioner_spec(spec: str) -> CaptionerSpec:
    """Split a captioner spec (see the module docstring).

    Raises:
        ValueError: unknown backend or malformed spec (the message lists the accepted forms).

    Example:
        >>> parse_captioner_spec("hf:Qwen/Qwen2.5-VL-7B-Instruct@main")
        CaptionerSpec(backend='hf', target='Qwen/Qwen2.5-VL-7B-Instruct', revision='main')
        >>> parse_captioner_spec("mask2text")
        CaptionerSpec(backend='mask2text', target=None, revision=None)
    """
    backend, sep, rest = spec.strip().partition(":")
    if backend not in BACKENDS:
        raise ValueError(
            f"unknown captioner spec {spec!r}: the backend must be one of {BACKENDS}; accepted: {SPEC_FORMS}"
        )
    if backend == "hf":
        if not rest:
            raise ValueError(f"captioner spec {spec!r} names no model; accepted: {SPEC_FORMS}")
        looks_local = rest.startswith(("/", ".", "~")) or os.path.isdir(rest)
        if not looks_local and "@" in rest:
            target, _, revision = rest.rpartition("@")
            if not target or not revision:
                raise ValueError(f"malformed hf captioner spec {spec!r}; accepted: {SPEC_FORMS}")
            return CaptionerSpec(backend, target, revision)
        return CaptionerSpec(backend, rest)
    if sep and not rest:
        raise ValueError(f"captioner spec {spec!r} ends with ':'; accepted: {SPEC_FORMS}")
    return CaptionerSpec(backend, rest or None)


@dataclass
class CaptionerContext:
    """What the loop knows that some captioners need.

    Attributes:
        root: the dataset root.
        pool: manifest rows retrieval may propose (not known-low), with round-0 ``fused``.
        scorers: the loop's IEL scorers (retrieval reuses the in-domain one).
        store_root: the IEL embedding store.
        score_batch_size: encoder batch size for retrieval's image embeddings.
    """

    root: Path
    pool: pd.DataFrame
    scorers: Sequence[Scorer | CrossFitScorer]
    store_root: Path
    score_batch_size: int = 64


def create_captioner(spec: str, cfg: CaptionConfig, context: CaptionerContext) -> Captioner:
    """Load the captioner a spec names, configured from the ``caption`` section.

    Raises:
        ValueError: malformed spec, or ``retrieval`` without an in-domain scorer to use.
        FileNotFoundError: missing class table or scorer folder.
        WeightsNotFoundError: a VLM that is not available offline.
    """
    parsed = parse_captioner_spec(spec)
    if parsed.backend == "mask2text":
        from dldc.egl.mask2text import Mask2TextCaptioner

        return Mask2TextCaptioner(parsed.target or "synthrs", cfg.mask_from, cfg.mask_to, cfg.mask_suffix)
    if parsed.backend == "retrieval":
        from dldc.egl.retrieval import RetrievalCaptioner

        return RetrievalCaptioner(
            _retrieval_scorer(parsed.target, context.scorers),
            context.pool,
            context.root,
            context.store_root,
            neighbours=cfg.retrieval_neighbours,
            batch_size=context.score_batch_size,
        )
    from dldc.egl.hf_vlm import HFCaptioner

    return HFCaptioner(
        parsed.target or "",
        cfg.prompts,
        revision=parsed.revision,
        device=cfg.device,
        precision=cfg.precision,
        trust_remote_code=cfg.trust_remote_code,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_size,
    )


def _retrieval_scorer(target: str | None, scorers: Sequence[Scorer | CrossFitScorer]) -> Scorer | CrossFitScorer:
    from dldc.iel.base import CrossFitScorer, Scorer

    if target is not None:
        from dldc.iel.indomain import load_indomain

        loaded = load_indomain(target)
        same = next((s for s in scorers if s.scorer_id == loaded.scorer_id), None)
        return same or loaded
    crossfit = [s for s in scorers if isinstance(s, CrossFitScorer) and not isinstance(s, Scorer)]
    if crossfit:
        return crossfit[0]
    raise ValueError(
        "the retrieval captioner needs the in-domain scorer's image embeddings, but no indomain:DIR scorer is "
        "among the caption scorers; add one (caption.scorers or score.scorers) or write retrieval:DIR"
    )
