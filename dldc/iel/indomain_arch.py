"""The in-domain scorer's model, pixels and files: what training and scoring both need.

Architecture
    An open_clip JSON model config (``dldc/iel/configs/<name>.json`` or a path), registered with
    :func:`open_clip.add_model_config` and built with :func:`open_clip.create_model`. The text
    tower must keep open_clip's CLIP tokenizer (vocabulary 49408, context 77) so it works offline.

Pixels
    :func:`image_to_uint8` (centre square crop, bicubic resize) is what training caches and what
    :class:`IndomainPreprocess` starts from, so training and scoring see the same pixels.

Files of an output folder: see :mod:`dldc.iel.indomain`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from open_clip.transformer import text_global_pool
from PIL import Image, ImageOps

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
OPEN_CLIP_CONFIG_FILE = "open_clip_config.json"
FOLDS_FILE = "folds.parquet"
TEXTS_FILE = "texts.parquet"  # normalised text -> bitmask of the fold models that trained on it
REPORT_FILE = "indomain.json"
SCORER_NAME = "indomain"


def scene_model_file(fold: int) -> str:
    """File name of fold ``fold``'s caption–scene model (:mod:`dldc.iel.scene_text`)."""
    return f"fold-{fold}.scene.safetensors"


def fold_weights_file(fold: int) -> str:
    """File name of fold model ``fold``'s weights inside the output folder."""
    return f"fold-{fold}.safetensors"


def resolve_architecture(architecture: str) -> tuple[str, dict[str, Any]]:
    """Find an open_clip JSON model config and register it with open_clip.

    Args:
        architecture: a file name in ``dldc/iel/configs`` without ``.json`` (``indomain-tiny``)
            or a path to a JSON file; the model name is the file's stem.

    Returns:
        ``(name, model_cfg)``: the name :func:`open_clip.create_model` knows it by, and the config.

    Raises:
        FileNotFoundError: no such config (the message lists the shipped ones).
        ValueError: the JSON is not an open_clip model config.
    """
    looks_like_path = architecture.endswith(".json") or os.sep in architecture or "/" in architecture
    path = Path(architecture) if looks_like_path else CONFIG_DIR / f"{architecture}.json"
    if not path.is_file():
        shipped = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
        raise FileNotFoundError(f"architecture {architecture!r}: {path} not found (shipped configs: {shipped})")
    model_cfg = json.loads(path.read_text(encoding="utf-8"))
    missing = [key for key in ("embed_dim", "vision_cfg", "text_cfg") if key not in model_cfg]
    if missing:
        raise ValueError(f"{path} is not an open_clip model config: missing {missing}")
    # open_clip keys its registry by file stem; re-register when the name is unknown or taken by
    # another file with the same stem, so the name always means this file's content.
    if open_clip.get_model_config(path.stem) != model_cfg:
        open_clip.add_model_config(path)
    return path.stem, model_cfg


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """Silence open_clip's root-logger warnings while building a model.

    ``create_model`` always warns "No pretrained weights loaded ... initialized randomly" (true but
    expected here: the weights are trained, or loaded from safetensors right after).
    """
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def create_indomain_model(model_name: str, device: torch.device | str = "cpu") -> torch.nn.Module:
    """Build an untrained model with :func:`open_clip.create_model`.

    Args:
        model_name: a registered name (see :func:`resolve_architecture`) or ``local-dir:PATH`` of
            an output folder.
        device: where to put it.
    """
    with _quiet_open_clip():
        model = open_clip.create_model(model_name, pretrained=None, load_weights=False, device=device)
    return model


def image_size_of(model_cfg: dict[str, Any]) -> int:
    """The (square) input size of a model config's vision tower."""
    size = model_cfg["vision_cfg"].get("image_size", 224)
    if isinstance(size, list | tuple):
        if len(set(size)) != 1:
            raise ValueError(f"only square image sizes are supported, got {size}")
        size = size[0]
    return int(size)


def encode_tokens(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Text features of token ids, computed on the shortest prefix that holds every text.

    For open_clip's ``CLIP`` with a causal mask and end-of-text (argmax) pooling, the pooled
    feature only sees positions up to the end-of-text token, so cutting the padding is exact
    and saves most of the text tower's cost (RSICD captions use ~15 of 77 positions). Other
    text towers fall back to ``model.encode_text`` on the full context.
    """
    trimmable = isinstance(model, open_clip.CLIP) and model.attn_mask is not None and model.text_pool_type == "argmax"
    if not trimmable:
        return model.encode_text(tokens)
    length = int(tokens.argmax(dim=-1).max()) + 1  # end-of-text has the highest id
    tokens = tokens[:, :length]
    x = model.token_embedding(tokens) + model.positional_embedding[:length]
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, "argmax")
    if model.text_projection is None:
        return x
    if isinstance(model.text_projection, torch.nn.Linear):
        return model.text_projection(x)
    return x @ model.text_projection


def image_to_uint8(image: Image.Image, size: int) -> torch.Tensor:
    """RGB PIL image → ``(3, size, size)`` uint8: centre square crop, then bicubic resize.

    Training caches exactly this tensor, and :class:`IndomainPreprocess` starts from it, so
    training and scoring see the same pixels.
    """
    square = ImageOps.fit(image.convert("RGB"), (size, size), method=Image.Resampling.BICUBIC)
    array = np.asarray(square, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def normalise_pixels(pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, 3, H, W)`` → float, scaled to [0, 1] and standardised per channel."""
    return (pixels.float() / 255.0 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


@dataclass(frozen=True)
class IndomainPreprocess:
    """Picklable PIL → tensor transform of the in-domain models (no model inside)."""

    size: int
    mean: tuple[float, float, float] = open_clip.OPENAI_DATASET_MEAN
    std: tuple[float, float, float] = open_clip.OPENAI_DATASET_STD

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image → ``(3, size, size)`` float tensor."""
        pixels = image_to_uint8(image, self.size).unsqueeze(0)
        return normalise_pixels(pixels, torch.tensor(self.mean), torch.tensor(self.std))[0]
