"""The captioner interface every EGL backend implements.

A captioner takes a batch of :class:`CaptionRequest` (an image, its scene, its current caption
and the texts it must not repeat) and an :class:`Attempt` (which round of the loop, which prompt,
temperature and seed), and returns one :class:`Proposal` per request: a candidate caption, or
``None`` with the reason why there is none (no mask, no neighbour left…) so that the loop can
record it instead of dropping it.

Example:
    >>> class Echo:
    ...     backend, model_id = "echo", "echo-v1"
    ...     def caption(self, requests, attempt):
    ...         return [Proposal(f"a {r.scene} seen from above") for r in requests]
    >>> request = CaptionRequest("a:0", "a", Path("/data"), "images/a.png", "lake", "an aerial image")
    >>> Echo().caption([request], Attempt(1, "layout-v1"))[0].text
    'a lake seen from above'
    >>> isinstance(Echo(), Captioner)
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class CaptionRequest:
    """One pair that needs a new caption.

    Attributes:
        pair_id: the manifest pair (``<image_id>:<k>``).
        image_id: the image's stable id (selects the in-domain fold model, the neighbours…).
        root: the dataset root.
        image: the image path relative to ``root`` (the manifest's ``image``).
        scene: scene class (``unknown`` when the dataset has none).
        caption: the pair's original caption, given to prompts as context.
        image_sha256: sha256 of the image file (keys the IEL embedding store); may be empty.
        avoid: texts that must not come back (already tried for this pair, or in use by the
            image's other pairs): a backend returns something else or nothing.
    """

    pair_id: str
    image_id: str
    root: Path
    image: str
    scene: str
    caption: str
    image_sha256: str = ""
    avoid: tuple[str, ...] = ()

    @property
    def image_path(self) -> Path:
        """The image file, checked to stay inside the dataset root."""
        from dldc.data.images import resolve_inside

        return resolve_inside(self.root, self.image)


@dataclass(frozen=True)
class Attempt:
    """How to regenerate in this round: the loop's feedback to the captioner.

    Attributes:
        round: loop round, from 1.
        prompt_id: id of the prompt template (VLMs) or description variant (mask2text).
        temperature: 0 = greedy decoding; above 0 = sampling.
        seed: seeds sampling, so a rerun proposes the same candidates.
    """

    round: int
    prompt_id: str
    temperature: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class Proposal:
    """A captioner's answer to one request.

    Attributes:
        text: the raw candidate (cleaned and fitted to the token budget by the loop), or
            ``None`` when the backend has no candidate.
        detail: provenance or the reason for ``None`` (e.g. ``neighbour <pair_id>``, ``no mask``).
    """

    text: str | None
    detail: str = ""


@runtime_checkable
class Captioner(Protocol):
    """A caption generator.

    Attributes:
        backend: ``hf``, ``mask2text`` or ``retrieval`` (recorded in the lineage).
        model_id: what produced the text: a hub id or folder, a class table, a scorer id.
    """

    backend: str
    model_id: str

    def caption(self, requests: Sequence[CaptionRequest], attempt: Attempt) -> list[Proposal]:
        """One proposal per request, in order."""
        ...
