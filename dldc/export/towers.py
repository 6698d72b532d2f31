"""The image and text towers of an IEL scorer as export-ready modules, and their pre-processing.

Two scorer families cover every IEL backend:

* ``open_clip`` — :class:`~dldc.iel.open_clip_scorer.OpenClipScorer` (incl. RemoteCLIP checkpoints)
  and the in-domain fold models (:class:`~dldc.iel.indomain.IndomainFoldScorer`), both open_clip
  ``CLIP`` models;
* ``hf`` — :class:`~dldc.iel.hf_scorer.HFScorer` (CLIP, SigLIP, … through transformers).

Each tower outputs the *raw* (un-normalised) embeddings in fp32; the runtime L2-normalises them
on the host exactly as the torch scorers do, so an fp16 graph never normalises in half precision.

Text sequence length
    open_clip's CLIP text tower is causal and pools at the end-of-text token (``argmax`` of the
    token ids). The torch scorer therefore encodes only up to the batch's longest caption
    (:func:`~dldc.iel.open_clip_scorer.encode_text_trimmed`), and so does the ONNX graph: its
    ``tokens`` input has a dynamic sequence axis (2..context) and the runtime trims the padded
    ``(N, 77)`` ids to the batch's longest before the call. Trimming is exact (the tests check
    it against the padded computation), keeps parity with the torch scorer *and* its speed
    (captions use ~15 of 77 positions). Towers that cannot be trimmed (non-causal or non-argmax
    pooling, SigLIP's ``max_length`` padding) take a fixed ``context_length``-long input instead.
    Hugging Face CLIP towers take ``input_ids`` + ``attention_mask`` padded to the longest text,
    as :class:`~dldc.iel.hf_scorer.HFScorer` does.

Pre-processing is *recorded*, not pickled: ``export.json`` names its kind and parameters (and the
Hugging Face processor files are saved beside the graphs), and
:func:`dldc.iel.onnx_processing.load_processing` rebuilds the very same transform and tokenizer
from them. The parity gate runs each side with its own
pre-processing, so a mismatch would fail the export.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from dldc.iel.base import Scorer
from dldc.iel.onnx_processing import HF_PROCESSOR_DIR, OPEN_CLIP_CONFIG_FILE

# Texts of different lengths, so the traced graph cannot specialise on one sequence length.
EXAMPLE_TEXTS = ["a river", "many buildings and some green trees are near a river"]
MAX_BATCH = 4096


@dataclass
class Tower:
    """One tower ready for :func:`torch.onnx.export`.

    Attributes:
        module: maps the inputs to ``(N, D)`` fp32 features.
        example: example inputs, in ``input_names`` order.
        input_names: graph input names.
        dynamic: per input, ``{axis: (name, min, max)}`` of its dynamic axes.
    """

    module: torch.nn.Module
    example: tuple[torch.Tensor, ...]
    input_names: list[str]
    dynamic: dict[str, dict[int, tuple[str, int, int]]]


@dataclass
class TowerPair:
    """The two towers of one scorer and what the runtime needs to feed them.

    Attributes:
        family: ``open_clip`` or ``hf``.
        image, text: the towers.
        image_shape: ``(3, H, W)`` of a preprocessed image.
        embed_dim: embedding width.
        context_length: the text tower's token budget.
        text_sequence: ``dynamic`` (trimmed to the batch's longest) or ``fixed`` (always ``context_length``).
        processing: the JSON record of the pre-processing (see :func:`dldc.iel.onnx_processing.load_processing`).
        save_processing: writes the files that record refers to into an export folder.
    """

    family: str
    image: Tower
    text: Tower
    image_shape: tuple[int, int, int]
    embed_dim: int
    context_length: int
    text_sequence: str
    processing: dict[str, Any]
    save_processing: Callable[[Path], None] = field(repr=False)


class OpenClipImageTower(torch.nn.Module):
    """``pixels (N, 3, H, W)`` → ``model.encode_image`` features."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels).float()


class OpenClipTextTower(torch.nn.Module):
    """``tokens (N, S)`` → text features, S = the batch's longest caption (causal, argmax-pooled towers).

    The same computation as :func:`dldc.iel.open_clip_scorer.encode_text_trimmed` with the length
    taken from the input's shape (so the exported graph has a dynamic sequence axis).
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        from open_clip.transformer import text_global_pool

        model = self.model
        length = tokens.shape[1]
        cast_dtype = model.transformer.get_cast_dtype()
        x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
        x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
        x = text_global_pool(model.ln_final(x), tokens, "argmax")
        projection = model.text_projection
        if projection is not None:
            x = projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
        return x.float()


class OpenClipFullTextTower(torch.nn.Module):
    """``tokens (N, context)`` → ``model.encode_text`` (towers whose padding cannot be trimmed)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens).float()


class HFImageTower(torch.nn.Module):
    """``pixel_values`` → ``get_image_features``."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        from dldc.iel.hf_scorer import features_tensor

        return features_tensor(self.model.get_image_features(pixel_values=pixel_values), "image").float()


class HFTextTower(torch.nn.Module):
    """``input_ids`` → ``get_text_features``."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        from dldc.iel.hf_scorer import features_tensor

        return features_tensor(self.model.get_text_features(input_ids=input_ids), "text").float()


class HFMaskedTextTower(HFTextTower):
    """``input_ids, attention_mask`` → ``get_text_features``."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        from dldc.iel.hf_scorer import features_tensor

        output = self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return features_tensor(output, "text").float()


def towers_of(scorer: Scorer, crossfit_source: Any | None = None) -> TowerPair:
    """The export-ready towers of a loaded scorer.

    Args:
        scorer: an :class:`~dldc.iel.open_clip_scorer.OpenClipScorer`,
            :class:`~dldc.iel.hf_scorer.HFScorer` or in-domain fold model.
        crossfit_source: the in-domain :class:`~dldc.iel.indomain.IndomainScorer` a fold model
            belongs to (its folder holds the tokenizer config).

    Returns:
        The towers, inputs and the pre-processing record.

    Raises:
        TypeError: a scorer type this module does not know how to export.
    """
    example_pixels = scorer.preprocess(Image.new("RGB", (64, 48), (90, 120, 60))).unsqueeze(0).repeat(2, 1, 1, 1)
    image_shape = tuple(int(s) for s in example_pixels.shape[1:])
    model = getattr(scorer, "model", None)
    if model is not None and hasattr(model, "encode_image") and hasattr(model, "encode_text"):
        return _open_clip_towers(scorer, crossfit_source, example_pixels.to(scorer.device), image_shape)
    if model is not None and hasattr(model, "get_image_features"):
        return _hf_towers(scorer, example_pixels.to(scorer.device), image_shape)
    raise TypeError(f"cannot export {type(scorer).__name__}: only open_clip, in-domain and Hugging Face scorers")


def _open_clip_towers(scorer: Any, crossfit_source: Any | None, pixels: torch.Tensor, image_shape) -> TowerPair:
    from dldc.iel.indomain_arch import IndomainPreprocess
    from dldc.iel.open_clip_scorer import can_trim_padding

    model = scorer.model
    context = int(scorer.context_length)
    tokens = scorer.tokenizer(EXAMPLE_TEXTS, context_length=context).to(scorer.device)
    with torch.no_grad():
        embed_dim = int(model.encode_image(pixels[:1]).shape[-1])
    batch = ("batch", 1, MAX_BATCH)
    if can_trim_padding(model):
        longest = int((tokens != 0).sum(dim=1).max())
        text = Tower(
            OpenClipTextTower(model).eval(),
            (tokens[:, :longest],),
            ["tokens"],
            {"tokens": {0: batch, 1: ("sequence", 2, context)}},
        )
        sequence = "dynamic"
    else:
        text = Tower(OpenClipFullTextTower(model).eval(), (tokens,), ["tokens"], {"tokens": {0: batch}})
        sequence = "fixed"
    image = Tower(OpenClipImageTower(model).eval(), (pixels,), ["pixels"], {"pixels": {0: batch}})

    if isinstance(scorer.preprocess, IndomainPreprocess):
        pre = scorer.preprocess
        image_record = {"kind": "indomain", "size": pre.size, "mean": list(pre.mean), "std": list(pre.std)}
        config_file = Path(crossfit_source.path) / OPEN_CLIP_CONFIG_FILE
        open_clip_config = json.loads(config_file.read_text(encoding="utf-8"))
    else:
        import open_clip

        preprocess_cfg = dict(model.visual.preprocess_cfg)
        image_record = {"kind": "open_clip", "config": _jsonable(preprocess_cfg)}
        model_name = scorer.scorer_id.split(":")[1].split("@", 1)[0]
        model_cfg = open_clip.get_model_config(model_name)
        if model_cfg is None:
            raise ValueError(f"open_clip does not know the architecture {model_name!r} of {scorer.scorer_id}")
        open_clip_config = {"model_cfg": model_cfg, "preprocess_cfg": _jsonable(preprocess_cfg)}

    def save(out: Path) -> None:
        (out / OPEN_CLIP_CONFIG_FILE).write_text(json.dumps(open_clip_config, indent=2), encoding="utf-8")

    record = {
        "image": image_record,
        "text": {"kind": "open_clip", "config": OPEN_CLIP_CONFIG_FILE, "context_length": context},
    }
    return TowerPair("open_clip", image, text, image_shape, embed_dim, context, sequence, record, save)


def _hf_towers(scorer: Any, pixels: torch.Tensor, image_shape) -> TowerPair:
    model = scorer.model
    context = int(scorer.context_length)
    batch = ("batch", 1, MAX_BATCH)
    encoded = scorer.tokenizer(
        EXAMPLE_TEXTS, padding=scorer.text_padding, truncation=True, max_length=context, return_tensors="pt"
    )
    accepted = set(getattr(scorer, "text_input_names", {"input_ids", "attention_mask"}))
    names = ["input_ids"] + (["attention_mask"] if "attention_mask" in accepted and "attention_mask" in encoded else [])
    dynamic_sequence = scorer.text_padding == "longest"
    axes: dict[int, tuple[str, int, int]] = {0: batch}
    if dynamic_sequence:
        axes[1] = ("sequence", 2, context)
    module = (HFMaskedTextTower if len(names) == 2 else HFTextTower)(model).eval()
    text = Tower(module, tuple(encoded[n].to(scorer.device) for n in names), names, {n: dict(axes) for n in names})
    image = Tower(HFImageTower(model).eval(), (pixels,), ["pixel_values"], {"pixel_values": {0: batch}})
    with torch.no_grad():
        embed_dim = int(image.module(pixels[:1]).shape[-1])

    def save(out: Path) -> None:
        target = out / HF_PROCESSOR_DIR
        target.mkdir(exist_ok=True)
        scorer.preprocess.image_processor.save_pretrained(target)
        scorer.tokenizer.save_pretrained(target)

    record = {
        "image": {"kind": "hf", "processor": HF_PROCESSOR_DIR},
        "text": {
            "kind": "hf",
            "processor": HF_PROCESSOR_DIR,
            "padding": scorer.text_padding,
            "context_length": context,
            "inputs": names,
        },
    }
    sequence = "dynamic" if dynamic_sequence else "fixed"
    return TowerPair("hf", image, text, image_shape, embed_dim, context, sequence, record, save)


def _jsonable(value: Any) -> Any:
    """Tuples → lists, recursively (preprocess configs hold tuples)."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def copy_processing_files(source: Path, target: Path) -> None:
    """Copy the pre-processing files of one export folder into another (fold sub-folders share them)."""
    for name in (OPEN_CLIP_CONFIG_FILE, HF_PROCESSOR_DIR):
        path = source / name
        if path.is_dir():
            shutil.copytree(path, target / name, dirs_exist_ok=True)
        elif path.is_file():
            shutil.copy2(path, target / name)
