"""The real CLIP tokenizer, built offline from the BPE vocabulary that open_clip ships.

Stable Diffusion 1.x conditions on OpenAI CLIP's byte-level BPE (49,408 tokens: 256 byte
symbols, their 256 end-of-word variants, 48,894 merges and the two special tokens). open_clip
distributes exactly those merges as ``bpe_simple_vocab_16e6.txt.gz``, so the tokenizer files of
a hub Stable Diffusion (``vocab.json``, ``merges.txt``) can be rebuilt from it without network
access. The ids equal open_clip's tokenizer's (tested); only the padding differs: Stable
Diffusion pads with ``<|endoftext|>`` (id 49407), open_clip with 0.

Example:
    >>> import tempfile
    >>> tokenizer = write_clip_tokenizer(tempfile.mkdtemp())
    >>> tokenizer("a lake").input_ids
    [49406, 320, 2553, 49407]
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from open_clip.tokenizer import bytes_to_unicode, default_bpe
from transformers import CLIPTokenizer

VOCAB_SIZE = 49408
CONTEXT_LENGTH = 77
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# CLIP's vocabulary keeps the first 49152 - 256 - 2 merges of the file (open_clip and OpenAI alike).
_N_MERGES = 49152 - 256 - 2


def clip_vocabulary() -> tuple[dict[str, int], list[str]]:
    """The CLIP BPE vocabulary ``{token: id}`` and merge list, from open_clip's shipped file."""
    with gzip.open(default_bpe()) as handle:
        lines = handle.read().decode("utf-8").split("\n")
    merges = lines[1 : _N_MERGES + 1]
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [symbol + "</w>" for symbol in symbols]
    tokens += ["".join(merge.split()) for merge in merges]
    tokens += [BOS, EOS]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise RuntimeError(
            f"open_clip's BPE file gave {len(vocab)} tokens, expected {VOCAB_SIZE}; is open_clip intact?"
        )
    return vocab, merges


def write_clip_tokenizer(out: str | Path) -> CLIPTokenizer:
    """Write the CLIP tokenizer into ``out`` (``vocab.json``, ``merges.txt`` and transformers' files).

    The folder loads with ``CLIPTokenizer.from_pretrained(out)``, like the ``tokenizer``
    sub-folder of a hub Stable Diffusion.

    Returns:
        The tokenizer (77-token context, padding with ``<|endoftext|>``).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocabulary()
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(
        vocab=str(out / "vocab.json"),
        merges=str(out / "merges.txt"),
        bos_token=BOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=EOS,
        model_max_length=CONTEXT_LENGTH,
    )
    tokenizer.save_pretrained(str(out))
    return tokenizer
