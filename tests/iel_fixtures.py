"""Tiny, offline contrastive models for IEL tests: built from configs, saved the way real ones are.

Everything here is a few MB and builds in well under a second; nothing is downloaded. The text
towers keep CLIP's real 49408-token vocabulary and 77-token context so the real tokenizers
(open_clip's shipped BPE, and a Hugging Face ``CLIPTokenizer`` rebuilt from it) work unchanged.

Import from a test with ``sys.path`` pointing at ``tests/`` (pytest runs with
``--import-mode=importlib``, which does not add it).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

TINY_OPEN_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def write_open_clip_config(directory: Path, name: str = "tiny-clip", **overrides: object) -> Path:
    """Write an open_clip JSON model config (``TINY_OPEN_CLIP_CONFIG`` updated with ``overrides``)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    path.write_text(json.dumps({**TINY_OPEN_CLIP_CONFIG, **overrides}, indent=2))
    return path


def build_open_clip_model(config_path: Path, seed: int) -> torch.nn.Module:
    """A freshly initialised open_clip model for a config file (registered under its stem)."""
    import open_clip

    open_clip.add_model_config(config_path)
    torch.manual_seed(seed)
    return open_clip.create_model(config_path.stem, pretrained=None).eval()


@functools.cache
def clip_tokenizer():
    """A Hugging Face ``CLIPTokenizer`` equivalent to open_clip's, built offline from its BPE file (shared)."""
    import open_clip
    from transformers import CLIPTokenizer

    simple = open_clip.SimpleTokenizer()
    vocab = dict(simple.encoder)
    # open_clip spells the special tokens differently from OpenAI / Hugging Face.
    vocab["<|startoftext|>"] = vocab.pop("<start_of_text>")
    vocab["<|endoftext|>"] = vocab.pop("<end_of_text>")
    merges = [pair for pair, _ in sorted(simple.bpe_ranks.items(), key=lambda item: item[1])]
    return CLIPTokenizer(vocab=vocab, merges=merges)


def _tiny_towers(max_positions: int) -> tuple[dict, dict]:
    text = {
        "vocab_size": 49408,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": max_positions,
    }
    vision = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    return text, vision


def save_hf_clip(directory: Path, seed: int = 0) -> Path:
    """Save a tiny ``CLIPModel`` + ``CLIPProcessor`` with ``save_pretrained``; return the directory."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    text, vision = _tiny_towers(77)
    text.update(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)).eval()
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    model.save_pretrained(directory)
    CLIPProcessor(image_processor=image_processor, tokenizer=clip_tokenizer()).save_pretrained(directory)
    return directory


def save_hf_siglip(directory: Path, seed: int = 0) -> Path:
    """Save a tiny ``SiglipModel`` with an image processor and a (CLIP BPE) tokenizer.

    Real SigLIP uses a sentencepiece tokenizer, which cannot be built offline here; the scorer
    only relies on the tokenizer interface and on the model type for its padding convention.
    """
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    text, vision = _tiny_towers(64)
    torch.manual_seed(seed)
    model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).eval()
    model.save_pretrained(directory)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(directory)
    clip_tokenizer().save_pretrained(directory)
    return directory


def sample_images(count: int = 3, size: tuple[int, int] = (48, 40)) -> list[Image.Image]:
    """Deterministic noise images (non-square, to exercise resize + crop)."""
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(count)]


CAPTIONS = [
    "many buildings are near a river",
    "A playground with a green football field.",
    "two white planes parked at the airport",
]

# 120 words: well past CLIP's 77-token budget.
LONG_CAPTION = " ".join(["many", "red", "roofs", "near", "green", "trees"] * 20)
