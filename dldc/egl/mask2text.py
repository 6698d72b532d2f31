"""mask2text: the captioner that describes each image's segmentation mask (no model).

For datasets that ship masks (SynthRS, ``../shared/data/dubai-seg``) it gives the loop layout
descriptions even offline and on the CPU. The facts and their text are
:func:`dldc.data.mask_text.describe_mask` and :func:`~dldc.data.mask_text.render_description`;
the masks are read with a class table (:func:`dldc.data.class_tables.load_class_table`: a
shipped name such as ``synthrs`` or ``dubai-seg``, or a JSON path).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from dldc.data.class_tables import hash_table, load_class_table
from dldc.data.images import resolve_inside
from dldc.data.mask_text import FORMAT_VERSION, VARIANTS, MaskFacts, describe_mask, render_description
from dldc.egl.base import Attempt, CaptionRequest, Proposal

__all__ = ["Mask2TextCaptioner", "mask_path_for"]


def mask_path_for(image: str, mask_from: str = "images", mask_to: str = "masks", suffix: str = ".png") -> str:
    """The mask of an image: the last ``mask_from`` folder of its path becomes ``mask_to``, the suffix ``suffix``.

    Example:
        >>> mask_path_for("tile_1/images/image_part_001.jpg")
        'tile_1/masks/image_part_001.png'
    """
    parts = list(Path(image).parts)
    positions = [i for i, part in enumerate(parts[:-1]) if part == mask_from]
    if positions:
        parts[positions[-1]] = mask_to
    else:
        parts.insert(len(parts) - 1, mask_to)
    return Path(*parts).with_suffix(suffix).as_posix()


class Mask2TextCaptioner:
    """The :class:`~dldc.egl.base.Captioner` that describes each image's mask.

    Args:
        table: a class table name or path (see :func:`load_class_table`).
        mask_from, mask_to, mask_suffix: where an image's mask is (see :func:`mask_path_for`).

    The attempt's ``prompt_id`` picks the first variant to try (ids containing ``brief`` start
    with the brief one, all others with the full one); a variant whose text the request must
    avoid (already tried, or in use on the image) or that another pair of the same image got in
    this call is skipped for the next one, so several low pairs of one image get distinct
    descriptions. An image without a mask gets no candidate, with the reason in the detail.
    """

    backend = "mask2text"

    def __init__(
        self, table: str = "synthrs", mask_from: str = "images", mask_to: str = "masks", mask_suffix: str = ".png"
    ):
        self.table = load_class_table(table)
        self.model_id = self.table.name
        self.mask_from, self.mask_to, self.mask_suffix = mask_from, mask_to, mask_suffix
        self.fingerprint = f"mask2text:{self.table.name}:{FORMAT_VERSION}:{hash_table(self.table)}"
        self._facts: dict[tuple[str, str, str], MaskFacts] = {}  # an image's pairs share one description

    def describe(self, request: CaptionRequest) -> MaskFacts:
        """Read and describe the mask of a request's image.

        Raises:
            FileNotFoundError: the image has no mask file.
            ValueError: the mask does not fit the class table.
        """
        key = (str(request.root), request.image, request.scene)
        if key not in self._facts:
            relative = mask_path_for(request.image, self.mask_from, self.mask_to, self.mask_suffix)
            path = resolve_inside(request.root, relative)
            if not path.is_file():
                raise FileNotFoundError(f"no mask {relative} for {request.image}")
            with Image.open(path) as image:
                mask = self.table.decode(image, where=relative)
            self._facts[key] = describe_mask(mask, self.table, scene=request.scene)
        return self._facts[key]

    def caption(self, requests: Sequence[CaptionRequest], attempt: Attempt) -> list[Proposal]:
        """One description per request (variant chosen by ``attempt.prompt_id``)."""
        first = "brief" if "brief" in attempt.prompt_id else "full"
        order = [first, *(v for v in VARIANTS if v != first)]
        proposals = []
        given: dict[str, set[str]] = {}  # texts handed to each image's pairs in this call
        for request in requests:
            try:
                facts = self.describe(request)
            except (FileNotFoundError, ValueError, OSError) as err:
                proposals.append(Proposal(None, f"no description: {err}"))
                continue
            taken = given.setdefault(request.image_id, set())
            avoid = {_key(text) for text in request.avoid} | taken
            proposal = Proposal(None, f"every mask2text variant already tried or in use: {', '.join(order)}")
            for variant in order:
                text = render_description(facts, variant)
                if _key(text) not in avoid:
                    taken.add(_key(text))
                    proposal = Proposal(text, f"mask2text {variant}")
                    break
            proposals.append(proposal)
        return proposals


def _key(text: str) -> str:
    """How texts are compared for repeats: lower case, single spaces, no final period."""
    return " ".join(text.lower().split()).rstrip(" .")
