"""Prompts for layout descriptions, and turning a model's raw answer into a caption.

The templates themselves are configuration (``caption.prompts`` in :mod:`dldc.config`: an id
such as ``layout-v1`` → a template with ``{scene}`` and ``{caption}`` placeholders), so that a
changed prompt is a changed parameter and every candidate records the prompt id it came from.

A generated caption goes through :func:`clean_output` (whitespace, chat artefacts, preambles,
markdown, repeated sentences and words) and :func:`fit_to_budget`, which keeps it within the
text encoders' token budget (77 for CLIP and Stable Diffusion) by cutting at a sentence
boundary, so that no scorer or text encoder silently truncates it later.

Example:
    >>> raw = "<|im_start|>assistant\\nSure! Here is the caption: **A lake at the top left.** A lake at the top left."
    >>> clean_output(raw)
    'A lake at the top left.'
    >>> fit_to_budget("A lake at the top left. Trees all around it.", lambda t: len(t.split()) + 2, 9)
    ('A lake at the top left.', True)
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping

from dldc.data.vocabulary import scene_words

TokenCounter = Callable[[str], int]

# Special tokens of the chat templates we load (Qwen, LLaVA, InternVL, Llama, Gemma, BLIP-2).
_SPECIAL_TOKENS = re.compile(
    r"<\|[^|>]{1,40}\|>|</?s>|<image>|<img>|</img>|<IMG_CONTEXT>|\[/?INST\]|<(?:start|end)_of_turn>|<pad>|<unk>"
)
# A new turn started by the model: everything from it on is not the answer.
_NEXT_TURN = re.compile(r"\s(?:USER|Human|<\|im_start\|>user)\s*:", re.IGNORECASE)
_ROLE_PREFIX = re.compile(r"^\s*(?:assistant|ASSISTANT|Assistant|model|GPT|gpt)\s*[:\n]\s*")
_PREAMBLE = re.compile(
    r"^\s*(?:(?:sure|certainly|of course|okay|ok)\b[,!.]?\s*)?"
    r"(?:(?:here\s+is|here's|this\s+is)\s+(?:a|an|the|my)?\s*(?:\w+\s+){0,3}?(?:caption|description)\b[^:.\n]*[:.]\s*)?"
    r"(?:(?:new\s+)?(?:caption|description|answer)\s*:\s*)?",
    re.IGNORECASE,
)
_MARKDOWN = re.compile(r"\*\*|__|`+|^#+\s*|^\s*(?:[-*•]|\d+[.)])\s+", re.MULTILINE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_REPEATED_WORD = re.compile(r"\b(\w+)(?:\s+\1\b){2,}", re.IGNORECASE)
_CLAUSE_BREAKS = re.compile(r"[,;:]\s|\s(?:and|with|while|where|which)\s")


def render_prompt(template: str, scene: str, caption: str) -> str:
    """Fill a template with the scene (as words; ``a remote sensing`` when unknown) and the caption."""
    return template.format(scene=scene_words(scene) or "remote sensing", caption=caption.strip() or "(none)")


def select_prompt(prompts: Mapping[str, str], round_index: int) -> str:
    """The prompt id of a round: round 1 uses the first prompt, round 2 the next, and so on (cycling).

    Example:
        >>> select_prompt({"a": "x", "b": "y"}, 1), select_prompt({"a": "x", "b": "y"}, 3)
        ('a', 'a')
    """
    if not prompts:
        raise ValueError("no prompts configured (caption.prompts is empty)")
    ids = list(prompts)
    return ids[(round_index - 1) % len(ids)]


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` (split after ``.``, ``!`` or ``?`` followed by whitespace)."""
    return [part.strip() for part in _SENTENCE_END.split(text.strip()) if part.strip()]


def clean_output(text: str) -> str:
    """Turn a model's raw answer into a one-paragraph caption.

    Removes special tokens and anything after a new user turn, role labels, polite preambles
    ("Sure! Here is the caption:"), markdown and surrounding quotes; collapses whitespace, runs
    of one word repeated three or more times, and repeated sentences (case-insensitive).

    Args:
        text: the decoded generation.

    Returns:
        The cleaned caption; ``""`` when nothing is left.
    """
    text = _SPECIAL_TOKENS.sub(" ", text)
    turn = _NEXT_TURN.search(" " + text)
    if turn:
        text = (" " + text)[: turn.start()]
    text = _ROLE_PREFIX.sub("", text)
    text = _MARKDOWN.sub("", text)
    text = " ".join(text.split())
    text = _PREAMBLE.sub("", text, count=1)
    text = text.strip().strip("\"'“”‘’").strip()
    text = _REPEATED_WORD.sub(r"\1", text)
    kept, seen = [], set()
    for sentence in split_sentences(text):
        key = re.sub(r"[^a-z0-9 ]", "", sentence.lower()).strip()
        if key and key not in seen:
            seen.add(key)
            kept.append(sentence.strip("\"'“” "))
    return " ".join(kept)


def fit_to_budget(text: str, count_tokens: TokenCounter, budget: int) -> tuple[str, bool]:
    """Shorten ``text`` to at most ``budget`` tokens, cutting at a sentence boundary.

    Whole sentences are kept from the start while they fit. When not even the first sentence
    fits, it is cut at its last clause break (``,`` ``;`` ``:`` or before and/with/while/where/
    which) that fits, else after its last word that fits.

    Args:
        text: a cleaned caption.
        count_tokens: the scorer's token count of a text, special tokens included.
        budget: the context length (77 for CLIP).

    Returns:
        ``(text, cut)``: the fitted text and whether anything was removed.

    Raises:
        ValueError: a budget too small for even one word.
    """
    if count_tokens(text) <= budget:
        return text, False
    kept: list[str] = []
    for sentence in split_sentences(text):
        trial = " ".join([*kept, sentence])
        if count_tokens(trial) > budget:
            break
        kept.append(sentence)
    if kept:
        return " ".join(kept), True
    first = split_sentences(text)[0]
    breaks = [match.start() for match in _CLAUSE_BREAKS.finditer(first)]
    for end in reversed(breaks):
        piece = first[:end].rstrip(" ,;:")
        if piece and count_tokens(piece) <= budget:
            return piece, True
    words = first.split()
    for size in range(len(words) - 1, 0, -1):
        piece = " ".join(words[:size]).rstrip(" ,;:")
        if count_tokens(piece) <= budget:
            return piece, True
    raise ValueError(f"token budget {budget} cannot hold even one word of {text[:40]!r}")


@functools.cache
def clip_token_counter() -> TokenCounter:
    """Token count with open_clip's CLIP BPE tokenizer (shipped with open_clip, works offline).

    Counts start- and end-of-text tokens, like the IEL scorers' ``token_counts``.
    """
    import open_clip

    tokenizer = open_clip.SimpleTokenizer()
    return lambda text: len(tokenizer.encode(text)) + 2
