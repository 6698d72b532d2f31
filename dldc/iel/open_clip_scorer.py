"""The open_clip backend: any open_clip architecture with pretrained, local or random weights.

``ARCH`` is an open_clip model name (``ViT-L-14``) or the path of an open_clip JSON model
config (``{"embed_dim": …, "vision_cfg": {…}, "text_cfg": {…}}``), which is registered with
``open_clip.add_model_config`` under its file stem. Weights are

* ``None`` — a random initialisation, seeded so that the same ARCH always gives the same
  weights (used for speed benchmarks; the scorer id says ``random``);
* an open_clip pretrained tag (``openai``, ``laion2b_s34b_b79k``) — resolved through open_clip's
  download path, which works offline only when the file is already in the Hugging Face cache;
* a local file — a ``.pt``/``.pth``/``.bin`` state dict (RemoteCLIP's format, optionally wrapped
  as ``{"state_dict": …}`` with DDP ``module.`` prefixes) read with
  ``torch.load(weights_only=True)`` only, a ``.safetensors`` file, or a big_vision ``.npz``.

Every checkpoint is loaded with strict key checking. Heavy imports (open_clip pulls in
transformers and timm, seconds of start-up) happen inside the functions that need them.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import pickle
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from dldc.device import PRECISIONS, autocast
from dldc.iel.base import column_name, file_digest, l2_normalise
from dldc.iel.factory import WeightsNotFoundError

log = logging.getLogger(__name__)

# Seed of the random initialisation, so that ``open_clip:ARCH`` (id ``…:random``) is reproducible.
RANDOM_INIT_SEED = 0
# Wrappers that training scripts put around a state dict.
_STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict")
# Prefixes added by DistributedDataParallel and torch.compile.
_KEY_PREFIXES = ("module.", "_orig_mod.")
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz")


class OpenClipScorer:
    """A :class:`~dldc.iel.base.Scorer` around an open_clip model.

    Build it with :func:`load_open_clip` (or :func:`dldc.iel.factory.create_scorer`).

    Attributes:
        scorer_id: e.g. ``open_clip:ViT-L-14:sha256-1a2b3c4d5e6f`` (see :func:`load_open_clip`).
        name: score-column name, e.g. ``remoteclip_vit_l_14``.
        context_length: the text encoder's token budget.
        device: where the model runs.
        precision: ``fp32``, or ``fp16``/``bf16`` (CUDA autocast).
        embed_dim: width of the embeddings.
        model: the open_clip model (eval mode).
        tokenizer: the open_clip tokenizer for the model.
        preprocess: open_clip's eval transform, RGB PIL image → ``(3, H, W)`` tensor. It is a
            plain torchvision ``Compose`` (not a bound method), so it pickles without the model.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Callable[[Image.Image], torch.Tensor],
        tokenizer: Any,
        *,
        scorer_id: str,
        name: str,
        embed_dim: int,
        device: torch.device,
        precision: str = "fp32",
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; use one of {PRECISIONS}")
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.scorer_id = scorer_id
        self.name = name
        self.embed_dim = embed_dim
        self.device = device
        self.precision = precision
        self.context_length = int(getattr(model, "context_length", None) or tokenizer.context_length)
        self._token_counts = TokenCountMemo(tokenizer)

    def __repr__(self) -> str:
        return f"OpenClipScorer({self.scorer_id!r}, device={self.device}, precision={self.precision})"

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` preprocessed batch → ``(N, D)`` L2-normalised float32 CPU embeddings."""
        if len(pixels) == 0:
            return torch.empty(0, self.embed_dim)
        with torch.inference_mode(), autocast(self.device, self.precision):
            features = self.model.encode_image(pixels.to(self.device, non_blocking=True))
        return l2_normalise(features)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Texts → ``(N, D)`` L2-normalised float32 CPU embeddings (truncated to ``context_length``)."""
        if not texts:
            return torch.empty(0, self.embed_dim)
        tokens = self.tokenizer(list(texts), context_length=self.context_length)
        self._token_counts.record(list(texts), tokens)
        tokens = tokens.to(self.device)
        with torch.inference_mode(), autocast(self.device, self.precision):
            if can_trim_padding(self.model):
                features = encode_text_trimmed(self.model, tokens)
            else:
                features = self.model.encode_text(tokens)
        return l2_normalise(features)

    def token_counts(self, texts: list[str]) -> list[int]:
        """Token count of each text without truncation, start/end (special) tokens included."""
        return self._token_counts.counts(list(texts))


def can_trim_padding(model: torch.nn.Module) -> bool:
    """Whether :func:`encode_text_trimmed` is exact for ``model`` (the export traces it then).

    Standard CLIP text towers: causal attention and pooling at the end-of-text token, so the
    positions after the longest caption in a batch cannot change any output.
    """
    return (
        getattr(model, "text_pool_type", None) == "argmax"
        and getattr(model, "attn_mask", None) is not None
        and hasattr(model, "token_embedding")
        and hasattr(model, "positional_embedding")
    )


def trimmed_length(tokens: torch.Tensor) -> int:
    """Positions up to and including the batch's last end-of-text token, where argmax pooling reads.

    Not the count of non-zero ids: padding is id 0, but so is ``!`` in CLIP's vocabulary, and a
    caption with ``!`` would lose its end-of-text token. The end-of-text id is the vocabulary's
    largest, so its position is the row's argmax.

    Example:
        >>> trimmed_length(torch.tensor([[49406, 0, 320, 49407, 0, 0], [49406, 320, 49407, 0, 0, 0]]))
        4
    """
    return int(tokens.argmax(dim=1).max().item()) + 1


def encode_text_trimmed(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text`` on the tokens up to the batch's longest caption, not all 77.

    Captions are ~15 tokens against CLIP's 77-token context, so this cuts the text tower's
    work about fourfold; the result equals the padded computation (the mask is causal and
    the EOT position is pooled), which tests check.
    """
    from open_clip.transformer import text_global_pool

    length = trimmed_length(tokens)
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = text_global_pool(model.ln_final(x), tokens, "argmax")
    projection = model.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection


class TokenCountMemo:
    """Untruncated token counts read off the ids that ``encode_texts`` already made.

    The engine asks for ``token_counts`` of the texts it has just encoded; tokenising them a second
    time (text cleaning included) cost 7.5 s of 380 s in ``dldc score`` at 10⁵ pairs with the
    smallest model. For open_clip's ``SimpleTokenizer`` the ids hold the count: start token, the
    text, end token, then padding, so a row whose end token sits before the last position was not
    truncated and its count is that position + 1. Rows that reach the last position (possibly
    truncated) and other tokenizers are counted by :func:`count_tokens`, so every count is exact.
    The memo holds at most ``limit`` texts (it is emptied past that) and hands each out once.

    Example:
        >>> from open_clip.tokenizer import SimpleTokenizer
        >>> tokenizer = SimpleTokenizer()
        >>> memo = TokenCountMemo(tokenizer)
        >>> memo.record(["a lake"], tokenizer(["a lake"], context_length=8))
        >>> memo.counts(["a lake", "two planes"])
        [4, 4]
    """

    def __init__(self, tokenizer: Any, limit: int = 1 << 16):
        from open_clip.tokenizer import SimpleTokenizer

        self.tokenizer = tokenizer
        self.limit = limit
        # A reduction_fn (e.g. random token dropping) changes the ids: counts cannot be read off them.
        self.readable = isinstance(tokenizer, SimpleTokenizer) and getattr(tokenizer, "reduction_fn", None) is None
        self._counts: dict[str, int] = {}

    def record(self, texts: list[str], tokens: torch.Tensor) -> None:
        """Remember the counts of ``texts`` from their ``(N, context)`` token ids."""
        if not self.readable or len(texts) == 0:
            return
        if len(self._counts) + len(texts) > self.limit:
            self._counts.clear()
        last = tokens.shape[1] - 1
        ends = (tokens == self.tokenizer.eot_token_id).int().argmax(dim=1).tolist()
        for text, end in zip(texts, ends):
            if 0 < end < last:
                self._counts[text] = end + 1

    def counts(self, texts: list[str]) -> list[int]:
        """Counts of ``texts``: remembered ones (then forgotten), the rest by :func:`count_tokens`."""
        memo = self._counts
        return [memo.pop(text) if text in memo else count_tokens(self.tokenizer, text) for text in texts]


def count_tokens(tokenizer: Any, text: str) -> int:
    """Untruncated length of ``text`` under an open_clip tokenizer, special tokens included.

    Mirrors what each tokenizer's ``__call__`` does before it truncates: the same text cleaning,
    the same special tokens.

    Args:
        tokenizer: an open_clip ``SimpleTokenizer``, ``HFTokenizer`` or ``SigLipTokenizer``.
        text: one caption.

    Returns:
        The number of tokens the text encoder would see if it had no budget.
    """
    from open_clip.tokenizer import HFTokenizer, SigLipTokenizer, SimpleTokenizer, basic_clean, canonicalize_text

    if isinstance(tokenizer, SimpleTokenizer):
        return len(tokenizer.encode(text)) + 2  # encode() cleans the text and adds no start/end tokens
    if isinstance(tokenizer, HFTokenizer):
        cleaned = tokenizer.clean_fn(text)
        if tokenizer.tokenizer_mode == "clips":  # bos + text + eos + class token
            return len(tokenizer.tokenizer(cleaned, add_special_tokens=False)["input_ids"]) + 3
        return len(tokenizer.tokenizer(cleaned, truncation=False, verbose=False)["input_ids"])
    if isinstance(tokenizer, SigLipTokenizer):
        cleaned = canonicalize_text(basic_clean(text))
        return len(tokenizer.tokenizer(cleaned, truncation=False, verbose=False)["input_ids"])
    raise TypeError(f"cannot count tokens for tokenizer type {type(tokenizer).__name__}")


def load_open_clip(
    arch: str,
    weights: str | None,
    device: torch.device | str,
    precision: str = "fp32",
    *,
    name: str | None = None,
) -> OpenClipScorer:
    """Build an :class:`OpenClipScorer`.

    Args:
        arch: open_clip model name (``ViT-B-32``) or path of an open_clip JSON model config.
        weights: ``None`` (seeded random init), a pretrained tag (``openai``), or a local
            checkpoint (``.pt``/``.pth``/``.bin``/``.safetensors``/``.npz``).
        device: where to run.
        precision: ``fp32``, ``fp16`` or ``bf16``; half precisions use autocast, on CUDA only.
        name: override the score-column name.

    RemoteCLIP checkpoints load with the plain architecture names (``RN50``, ``ViT-B-32``,
    ``ViT-L-14``), as in RemoteCLIP's own loading example; the architecture must match what the
    weights were trained with (e.g. ``-quickgelu`` variants), which a state dict cannot tell.

    Returns:
        The scorer. Its ``scorer_id`` is ``open_clip:<ARCH>:<WEIGHTS>`` where ``<ARCH>`` is the
        model name, or ``<stem>@cfg-<12 hex sha256 of the JSON file>`` for a config file, and
        ``<WEIGHTS>`` is ``random``, the tag, or ``sha256-<12 hex of the checkpoint file>``.

    Raises:
        ValueError: unknown architecture or tag, unreadable/unsafe checkpoint, or a checkpoint
            whose keys or shapes do not match the architecture (all listed).
        WeightsNotFoundError: a pretrained tag's file is not available offline.
        FileNotFoundError: a config or checkpoint path does not exist.
    """
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {PRECISIONS}")
    model_name, arch_label = _resolve_arch(arch)

    # Resolve the weights before building the model, so a missing file fails fast.
    create_kwargs: dict[str, Any] = {}
    checkpoint: str | None = None
    if weights is None:
        weights_label = "random"
    elif _is_checkpoint_path(weights):
        if not Path(weights).is_file():
            raise FileNotFoundError(f"checkpoint file not found: {weights}")
        checkpoint = weights
        weights_label = f"sha256-{file_digest(weights)}"
    else:
        tag_cfg = open_clip.get_pretrained_cfg(model_name, weights)
        if not tag_cfg:
            tags = open_clip.list_pretrained_tags_by_model(model_name)
            raise ValueError(
                f"{weights!r} is neither a checkpoint file nor an open_clip pretrained tag of {model_name}; "
                f"known tags: {tags or 'none'}"
            )
        checkpoint = _download_tag(model_name, weights, tag_cfg)
        weights_label = weights
        # Tags carry the preprocessing they were trained with (mean/std, resize mode), and OpenAI-
        # derived ones need QuickGELU; open_clip 3 only warns about the latter, we apply it.
        create_kwargs["force_quick_gelu"] = bool(tag_cfg.get("quick_gelu", False))
        create_kwargs["force_preprocess_cfg"] = {
            k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg
        }

    # Seeded, so that a random model is the same model every time (its id does not change), and
    # built on the CPU so that the init does not depend on the device's RNG.
    quiet = _drop_root_warning("initialized randomly") if checkpoint else nullcontext()
    with torch.random.fork_rng(devices=[]), quiet:
        torch.manual_seed(RANDOM_INIT_SEED)
        model = open_clip.create_model(
            model_name, pretrained=None, device="cpu", pretrained_image=False, pretrained_text=False, **create_kwargs
        )
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    model = model.to(device).eval()

    preprocess = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
    tokenizer = open_clip.get_tokenizer(model_name)
    return OpenClipScorer(
        model,
        preprocess,
        tokenizer,
        scorer_id=f"open_clip:{arch_label}:{weights_label}",
        name=name or _column(arch_label, weights),
        embed_dim=int(open_clip.get_model_config(model_name)["embed_dim"]),
        device=device,
        precision=precision,
    )


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat state dict, never unpickling arbitrary objects.

    ``.safetensors`` files go through safetensors; anything else through
    ``torch.load(path, map_location="cpu", weights_only=True)``, which refuses any pickled object
    that is not a tensor or plain container. ``{"state_dict": …}`` wrappers and ``module.`` /
    ``_orig_mod.`` key prefixes are removed.

    Args:
        path: the checkpoint.

    Returns:
        Parameter name → tensor.

    Raises:
        ValueError: the file holds something other than tensors, or no state dict.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path), device="cpu")
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise ValueError(
                f"refusing to load {path}: it contains pickled objects other than tensors, and checkpoints are "
                "only read with torch.load(weights_only=True). Re-save it as a plain state dict "
                "(torch.save(model.state_dict(), path)) or as .safetensors. An OpenAI TorchScript archive should "
                f"be loaded through its pretrained tag instead. Details: {err}"
            ) from err

    for key in _STATE_DICT_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(f"{path}: state dict entries that are not tensors: {_preview(not_tensors)}")
    return {_strip_prefixes(k): v for k, v in state.items()}


def load_checkpoint(model: torch.nn.Module, path: str | Path) -> None:
    """Load a checkpoint into an open_clip model, strictly.

    Applies open_clip's lossless key/shape conversions (third-party formats, text-tower layout,
    scalar ``logit_scale``) but, unlike ``open_clip.load_checkpoint``, never interpolates position
    embeddings and never falls back to unsafe unpickling.

    Args:
        model: an open_clip ``CLIP``/``CustomTextCLIP`` model.
        path: ``.pt``/``.pth``/``.bin``/``.safetensors`` state dict, or big_vision ``.npz``.

    Raises:
        ValueError: the checkpoint does not match the model; the message lists the missing,
            unexpected and mis-shaped keys.
    """
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict

    path = Path(path)
    if path.suffix in (".npz", ".npy"):
        from open_clip.convert import load_big_vision_weights  # numpy arrays, read without pickle

        load_big_vision_weights(model, str(path))
        return

    state = convert_state_dict(model, load_state_dict_file(path))
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    for key in ("logit_scale", "logit_bias"):
        target = getattr(model, key, None)
        if key in state and target is not None and state[key].ndim != target.ndim:
            state[key] = state[key].reshape(target.shape)
    # Buffer that transformers >= 4.31 no longer registers in HF text towers.
    state.pop("text.transformer.embeddings.position_ids", None)

    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    if missing or unexpected or mis_shaped:
        raise ValueError(
            f"checkpoint {path} does not match the architecture (wrong ARCH for these weights?): "
            f"{len(missing)} missing keys {_preview(missing)}; {len(unexpected)} unexpected keys "
            f"{_preview(unexpected)}; {len(mis_shaped)} shape mismatches {_preview(mis_shaped)}"
        )
    model.load_state_dict(state, strict=True)


def _resolve_arch(arch: str) -> tuple[str, str]:
    """ARCH → (open_clip model name, label for the scorer id); registers JSON configs."""
    import open_clip

    if _looks_like_path(arch) or arch.endswith(".json"):
        return _register_config(Path(arch))
    if open_clip.get_model_config(arch) is None:
        close = difflib.get_close_matches(arch, open_clip.list_models(), n=5)
        raise ValueError(
            f"unknown open_clip architecture {arch!r} (close matches: {close or 'none'}); use a name from "
            "open_clip.list_models() or the path of an open_clip JSON model config"
        )
    return arch, arch


def _register_config(path: Path) -> tuple[str, str]:
    """Register an open_clip JSON model config under its file stem; return (name, id label)."""
    import open_clip

    if not path.is_file():
        raise FileNotFoundError(f"open_clip model config not found: {path}")
    raw = path.read_bytes()
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(config, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= config.keys():
        raise ValueError(f"{path} is not an open_clip model config: it needs top-level embed_dim, vision_cfg, text_cfg")

    stem = path.stem
    builtin = Path(open_clip.__file__).parent / "model_configs" / f"{stem}.json"
    if builtin.is_file() and json.loads(builtin.read_bytes()) != config:
        # The registry is global and keyed by stem: registering would silently change the built-in model.
        raise ValueError(f"{path} would shadow open_clip's built-in {stem!r} with a different config; rename the file")
    if open_clip.get_model_config(stem) != config:
        # add_model_config rescans every registered path, later ones winning, so (re-)adding this
        # file makes its content the one in force for this stem.
        open_clip.add_model_config(path)
    if open_clip.get_model_config(stem) != config:
        raise RuntimeError(f"open_clip did not register {path} under the name {stem!r}")
    return stem, f"{stem}@cfg-{hashlib.sha256(raw).hexdigest()[:12]}"


def _download_tag(model_name: str, tag: str, tag_cfg: dict[str, Any]) -> str:
    """Local path of a pretrained tag's file: downloaded, or found in the cache when offline."""
    import open_clip

    try:
        path = open_clip.download_pretrained(tag_cfg)
    except Exception as err:  # hub/network errors come in many types; all mean "not available here"
        hub = tag_cfg.get("hf_hub", "")
        if hub:
            # open_clip writes 'org/repo/' (default file name) or 'org/repo/file.bin'.
            repo, filename = os.path.split(hub)
            filename = filename or "open_clip_model.safetensors (or open_clip_pytorch_model.bin)"
            where = (
                f"{filename} of the Hugging Face repo {repo} in the Hugging Face cache (on a machine with network: "
                f"`hf download {repo}`, then copy $HF_HOME/hub here)"
            )
        else:
            where = f"{tag_cfg.get('url')} in open_clip's download cache (~/.cache/clip)"
        raise WeightsNotFoundError(
            f"open_clip weights {model_name}/{tag} are not available offline. Put {where}, or pass a local "
            f"checkpoint instead of the tag: open_clip:{model_name}:/path/to/checkpoint.(pt|bin|safetensors). "
            f"Cause: {type(err).__name__}: {err}"
        ) from err
    if not path:
        raise WeightsNotFoundError(f"open_clip has no download location for {model_name}/{tag}")
    return str(path)


def _looks_like_path(text: str) -> bool:
    """A filesystem path rather than a model name or tag (those never contain a separator)."""
    return "/" in text or "\\" in text or Path(text).suffix in (*_CHECKPOINT_SUFFIXES, ".json")


def _is_checkpoint_path(weights: str) -> bool:
    """Whether WEIGHTS names a file rather than a pretrained tag."""
    return _looks_like_path(weights) or Path(weights).is_file()


def _column(arch_label: str, weights: str | None) -> str:
    """Score-column name: the checkpoint's own name for RemoteCLIP files, else arch + weights."""
    base = arch_label.split("@", 1)[0]
    if weights is None:
        return column_name(f"{base}_random")
    if _is_checkpoint_path(weights):
        stem = Path(weights).stem
        return column_name(stem if "remoteclip" in stem.lower() else f"{base}_{stem}")
    return column_name(f"{base}_{weights}")


@contextmanager
def _drop_root_warning(fragment: str) -> Iterator[None]:
    """Silence one message open_clip logs on the root logger.

    We build the model without weights and load them ourselves, so open_clip's "initialized
    randomly" warning would be false.
    """

    def keep(record: logging.LogRecord) -> bool:
        return fragment not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _strip_prefixes(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _KEY_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


def _preview(items: list[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{', …' if len(items) > limit else ''}]"
