"""The Hugging Face backend: CLIP-style dual encoders (CLIP, SigLIP, …) through ``transformers``.

Loads ``AutoModel`` + ``AutoTokenizer`` + ``AutoImageProcessor`` from a hub id (served from the
local cache when ``HF_HUB_OFFLINE=1``) or a local directory saved with ``save_pretrained``.
The tokenizer and image processor are loaded separately rather than through ``AutoProcessor``
because that also works for repositories whose processor class cannot be built (or has none).
Remote code runs only when ``trust_remote_code=True`` is passed.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from dldc.device import PRECISIONS, autocast
from dldc.iel.base import column_name, file_digest, l2_normalise
from dldc.iel.factory import WeightsNotFoundError

log = logging.getLogger(__name__)

# Model types whose text towers were trained on texts padded to the full context ("max_length"),
# as their processors document; the others (CLIP) pad to the longest text and use the attention mask.
MAX_LENGTH_PADDING_TYPES = frozenset({"siglip", "siglip2"})
# Files of a local model directory that determine its embeddings (weights, configs, tokenizer).
_IDENTITY_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json", ".txt", ".model")


class HFImagePreprocess:
    """RGB PIL image → ``(3, H, W)`` ``pixel_values`` via a transformers image processor.

    A small class (not a closure or bound method) so that it pickles into DataLoader workers
    carrying only the image processor, not the model.
    """

    def __init__(self, image_processor: Any) -> None:
        self.image_processor = image_processor

    def __call__(self, image: Image.Image) -> torch.Tensor:
        inputs = self.image_processor(images=image.convert("RGB"), return_tensors="pt")
        extra = sorted(set(inputs.keys()) - {"pixel_values"})
        if extra:
            # e.g. SigLIP2 NaFlex patches with pixel_attention_mask/spatial_shapes: not a fixed-size image.
            raise ValueError(f"image processor returns {extra} besides pixel_values; only fixed-size inputs work")
        return inputs["pixel_values"][0].float()

    def __repr__(self) -> str:
        return f"HFImagePreprocess({type(self.image_processor).__name__})"


class HFScorer:
    """A :class:`~dldc.iel.base.Scorer` around a Hugging Face dual encoder.

    Build it with :func:`load_hf` (or :func:`dldc.iel.factory.create_scorer`).

    Attributes:
        scorer_id: ``hf:<hub id or directory name>:<12 hex>`` (see :func:`load_hf`).
        name: score-column name, e.g. ``clip_vit_base_patch32``.
        context_length: the text tower's position budget (77 for CLIP, 64 for SigLIP).
        device: where the model runs.
        precision: ``fp32``, or ``fp16``/``bf16`` (CUDA autocast).
        embed_dim: width of the embeddings.
        model: the transformers model (eval mode).
        tokenizer: its tokenizer.
        preprocess: an :class:`HFImagePreprocess` (picklable).
        text_padding: ``max_length`` for SigLIP-style models, else ``longest``.
        text_input_names: the keyword arguments ``get_text_features`` accepts (``attention_mask``
            is passed only when it is one of them).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        image_processor: Any,
        *,
        scorer_id: str,
        name: str,
        device: torch.device,
        precision: str = "fp32",
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; use one of {PRECISIONS}")
        for method in ("get_image_features", "get_text_features"):
            if not callable(getattr(model, method, None)):
                raise ValueError(f"{type(model).__name__} has no {method}(): not a CLIP-style dual encoder")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.preprocess = HFImagePreprocess(image_processor)
        self.scorer_id = scorer_id
        self.name = name
        self.device = device
        self.precision = precision
        config = model.config
        text_config = getattr(config, "text_config", config)
        self.context_length = int(text_config.max_position_embeddings)
        # CLIP: projection_dim; SigLIP: the text head's projection_size (defaults to the hidden size).
        width = getattr(config, "projection_dim", None) or getattr(text_config, "projection_size", None)
        self.embed_dim = int(width or text_config.hidden_size)
        self.text_padding = "max_length" if config.model_type in MAX_LENGTH_PADDING_TYPES else "longest"
        # Pass only the tokenizer outputs the text tower accepts (e.g. no token_type_ids).
        self.text_input_names = set(inspect.signature(model.get_text_features).parameters)

    def __repr__(self) -> str:
        return f"HFScorer({self.scorer_id!r}, device={self.device}, precision={self.precision})"

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` preprocessed batch → ``(N, D)`` L2-normalised float32 CPU embeddings."""
        if len(pixels) == 0:
            return torch.empty(0, self.embed_dim)
        with torch.inference_mode(), autocast(self.device, self.precision):
            output = self.model.get_image_features(pixel_values=pixels.to(self.device, non_blocking=True))
        return l2_normalise(features_tensor(output, "image"))

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Texts → ``(N, D)`` L2-normalised float32 CPU embeddings (truncated to ``context_length``)."""
        if not texts:
            return torch.empty(0, self.embed_dim)
        encoded = self.tokenizer(
            list(texts),
            padding=self.text_padding,
            truncation=True,
            max_length=self.context_length,
            return_tensors="pt",
        )
        inputs = {k: v.to(self.device) for k, v in encoded.items() if k in self.text_input_names}
        with torch.inference_mode(), autocast(self.device, self.precision):
            output = self.model.get_text_features(**inputs)
        return l2_normalise(features_tensor(output, "text"))

    def token_counts(self, texts: list[str]) -> list[int]:
        """Token count of each text without truncation, special tokens included."""
        if not texts:
            return []
        encoded = self.tokenizer(list(texts), truncation=False, padding=False, verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]


def features_tensor(output: Any, kind: str) -> torch.Tensor:
    """The ``(N, D)`` embeddings from ``get_image_features`` / ``get_text_features``.

    transformers 4 returned a tensor; transformers 5 returns an output object whose
    ``pooler_output`` holds the projected embeddings (some models name them ``image_embeds`` /
    ``text_embeds``). Both forms are accepted.

    Args:
        output: what the model returned.
        kind: ``image`` or ``text``.

    Returns:
        The embeddings tensor.

    Raises:
        TypeError: no 2-D embeddings tensor could be found.
    """
    if isinstance(output, torch.Tensor):
        tensor = output
    else:
        tensor = None
        for attr in (f"{kind}_embeds", "pooler_output"):
            value = getattr(output, attr, None)
            if isinstance(value, torch.Tensor):
                tensor = value
                break
    if tensor is None or tensor.ndim != 2:
        shape = None if tensor is None else tuple(tensor.shape)
        raise TypeError(f"get_{kind}_features returned {type(output).__name__} without (N, D) embeddings ({shape})")
    return tensor


def load_hf(
    model_id: str,
    device: torch.device | str,
    precision: str = "fp32",
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    name: str | None = None,
) -> HFScorer:
    """Build an :class:`HFScorer` from a hub id or a local ``save_pretrained`` directory.

    Args:
        model_id: hub id (``openai/clip-vit-base-patch32``) or directory.
        device: where to run.
        precision: ``fp32``, ``fp16`` or ``bf16``; weights stay fp32 and half precisions use autocast,
            on CUDA only.
        revision: hub branch, tag or commit (hub ids only).
        trust_remote_code: allow the repository's own modelling code to run.
        name: override the score-column name.

    Returns:
        The scorer. Its ``scorer_id`` is ``hf:<hub id>:<12 hex of the resolved commit>`` for hub ids
        and ``hf:<directory name>:<12 hex sha256 over the directory's weight, config and tokenizer
        files>`` for directories.

    Raises:
        WeightsNotFoundError: a hub id that is not in the local cache while offline.
        FileNotFoundError: a local path that does not exist.
        ValueError: the model is not a CLIP-style dual encoder, or its images are not fixed-size.
    """
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    device = torch.device(device)
    local = Path(model_id).expanduser()
    is_local = local.is_dir()
    if not is_local and (model_id.startswith(("/", ".", "~")) or local.exists()):
        raise FileNotFoundError(f"not a model directory: {model_id} (expected a save_pretrained folder)")
    source = str(local) if is_local else model_id
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if revision and not is_local:
        kwargs["revision"] = revision

    try:
        # fp32 weights explicitly: transformers 5 would otherwise keep the checkpoint's dtype.
        model = AutoModel.from_pretrained(source, dtype=torch.float32, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        image_processor = AutoImageProcessor.from_pretrained(source, **kwargs)
    except OSError as err:
        if is_local:
            raise
        raise WeightsNotFoundError(
            f"Hugging Face model {model_id!r} is not available offline. On a machine with network run "
            f"`hf download {model_id}` and copy the Hugging Face cache ($HF_HOME/hub) here, or save the model "
            f"to a directory (save_pretrained) and use hf:/path/to/dir. Cause: {err}"
        ) from err

    if is_local:
        label, version = local.resolve().name, _directory_digest(local)
    else:
        label, version = model_id, _hub_commit(model_id, revision)
    scorer = HFScorer(
        model.to(device),
        tokenizer,
        image_processor,
        scorer_id=f"hf:{label}:{version}",
        name=name or column_name(label.rsplit("/", 1)[-1]),
        device=device,
        precision=precision,
    )
    # Fail at load time, not in a DataLoader worker, if the processor's output does not fit.
    scorer.preprocess(Image.new("RGB", (8, 8)))
    return scorer


def _directory_digest(directory: Path, length: int = 12) -> str:
    """sha256 over the files that determine a local model's embeddings (names and contents)."""
    digest = hashlib.sha256()
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in _IDENTITY_SUFFIXES)
    for path in files:
        digest.update(f"{path.name}\0{file_digest(str(path), length=64)}\n".encode())
    return digest.hexdigest()[:length]


def _hub_commit(model_id: str, revision: str | None, length: int = 12) -> str:
    """The commit a hub id resolved to (from the cache's ``snapshots/<commit>/`` path)."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model_id, "config.json", revision=revision)
    if isinstance(cached, str) and Path(cached).parent.parent.name == "snapshots":
        return Path(cached).parent.name[:length]
    # Not in the standard cache layout: fall back to hashing the files transformers used.
    if isinstance(cached, str):
        return _directory_digest(Path(cached).parent, length)
    log.warning("could not resolve the commit of %s; its scorer id uses the revision name", model_id)
    return column_name(revision or "main")
