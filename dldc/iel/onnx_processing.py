"""The pre-processing of an exported scorer, rebuilt from its record in ``export.json``.

Pre-processing is *recorded*, not pickled: ``export.json`` names its kind and parameters (and the
Hugging Face processor files are saved beside the graphs by ``dldc export-scorer``),
and :func:`load_processing` rebuilds the very same transform and tokenizer from them.

Text sequence length
    open_clip's CLIP text tower is causal and pools at the end-of-text token, so an export of it
    takes ``tokens`` with a dynamic sequence axis and :class:`OpenClipTextInputs` trims the padded
    ``(N, 77)`` ids to the batch's longest text (``text_sequence == "dynamic"``); other towers take
    a fixed ``context_length``-long input. Hugging Face towers take ``input_ids`` (+
    ``attention_mask``) padded as :class:`~dldc.iel.hf_scorer.HFScorer` pads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["HF_PROCESSOR_DIR", "OPEN_CLIP_CONFIG_FILE", "HFTextInputs", "OpenClipTextInputs", "load_processing"]

OPEN_CLIP_CONFIG_FILE = "open_clip_config.json"
HF_PROCESSOR_DIR = "hf_processor"


class OpenClipTextInputs:
    """Texts → ``{"tokens": int64 (N, S)}`` with an open_clip tokenizer, trimmed when the graph allows.

    Args:
        tokenizer: the open_clip tokenizer.
        context_length: the token budget (texts are truncated to it, as in torch).
        trim: cut the padding after the batch's longest text (``text_sequence == "dynamic"``).
    """

    def __init__(self, tokenizer: Any, context_length: int, trim: bool):
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.trim = trim

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        tokens = self.tokenizer(list(texts), context_length=self.context_length)
        if self.trim:
            from dldc.iel.open_clip_scorer import trimmed_length

            tokens = tokens[:, : max(2, trimmed_length(tokens))]
        return {"tokens": tokens.numpy().astype(np.int64)}

    def token_counts(self, texts: list[str]) -> list[int]:
        from dldc.iel.open_clip_scorer import count_tokens

        return [count_tokens(self.tokenizer, text) for text in texts]


class HFTextInputs:
    """Texts → the Hugging Face tokenizer's ``input_ids`` (+ ``attention_mask``), as :class:`HFScorer` pads them."""

    def __init__(self, tokenizer: Any, padding: str, context_length: int, inputs: list[str]):
        self.tokenizer = tokenizer
        self.padding = padding
        self.context_length = context_length
        self.inputs = inputs

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        encoded = self.tokenizer(
            list(texts), padding=self.padding, truncation=True, max_length=self.context_length, return_tensors="np"
        )
        return {name: np.asarray(encoded[name], dtype=np.int64) for name in self.inputs}

    def token_counts(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        encoded = self.tokenizer(list(texts), truncation=False, padding=False, verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]


def load_processing(folder: str | Path, record: dict[str, Any], text_sequence: str) -> tuple[Any, Any]:
    """Rebuild ``(preprocess, text_inputs)`` from an export folder's pre-processing record.

    Args:
        folder: the export folder.
        record: ``export.json``'s ``processing`` entry.
        text_sequence: ``dynamic`` or ``fixed`` (whether the text graph accepts trimmed ids).

    Returns:
        A picklable PIL → ``(3, H, W)`` transform, and an :class:`OpenClipTextInputs` or
        :class:`HFTextInputs`.

    Raises:
        ValueError: an unknown kind of pre-processing.
    """
    folder = Path(folder)
    image, text = record["image"], record["text"]
    if image["kind"] == "open_clip":
        from open_clip.transform import PreprocessCfg, image_transform_v2

        config = {k: tuple(v) if isinstance(v, list) else v for k, v in image["config"].items()}
        preprocess = image_transform_v2(PreprocessCfg(**config), is_train=False)
    elif image["kind"] == "indomain":
        from dldc.iel.indomain_arch import IndomainPreprocess

        preprocess = IndomainPreprocess(int(image["size"]), tuple(image["mean"]), tuple(image["std"]))
    elif image["kind"] == "hf":
        from transformers import AutoImageProcessor

        from dldc.iel.hf_scorer import HFImagePreprocess

        preprocess = HFImagePreprocess(AutoImageProcessor.from_pretrained(folder / image["processor"]))
    else:
        raise ValueError(f"unknown image pre-processing {image['kind']!r} in {folder}")

    if text["kind"] == "open_clip":
        import open_clip

        tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}", context_length=int(text["context_length"]))
        text_inputs: Any = OpenClipTextInputs(tokenizer, int(text["context_length"]), text_sequence == "dynamic")
    elif text["kind"] == "hf":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder / text["processor"])
        text_inputs = HFTextInputs(tokenizer, text["padding"], int(text["context_length"]), list(text["inputs"]))
    else:
        raise ValueError(f"unknown text pre-processing {text['kind']!r} in {folder}")
    return preprocess, text_inputs
