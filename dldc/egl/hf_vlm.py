"""Vision-language models from Hugging Face as captioners (transformers' image-text-to-text API).

One loading path for every model that ``AutoModelForImageTextToText`` knows — Qwen2-VL and
Qwen2.5-VL, LLaVA-1.5 / LLaVA-NeXT (``llava-hf/…``), InternVL in HF format (``OpenGVLab/…-hf``),
BLIP-2 — by hub id or local folder: ``AutoProcessor`` + ``AutoModelForImageTextToText``, the
processor's chat template (a plain prompt for processors without one, such as BLIP-2), left
padding for batched generation, bf16 (fp16 where bf16 is unsupported) on the GPU and fp32 on
the CPU. Custom model code runs only with ``trust_remote_code=True`` from the configuration.

Decoding: greedy by default (``Attempt.temperature == 0``); with a temperature the loop samples
extra candidates, seeded per batch so that a rerun proposes the same texts. A batch that runs
out of CUDA memory is split in halves and retried.

Example (a local folder saved with ``save_pretrained`` loads exactly like a hub id)::

    captioner = HFCaptioner("Qwen/Qwen2.5-VL-7B-Instruct", prompts={"layout-v1": "Describe the {scene}."})
    captioner.caption(requests, Attempt(1, "layout-v1"))
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from dldc.data.images import load_rgb
from dldc.device import DTYPES, resolve_device, resolve_precision
from dldc.egl.base import Attempt, CaptionRequest, Proposal
from dldc.egl.prompts import render_prompt
from dldc.iel.factory import WeightsNotFoundError

log = logging.getLogger(__name__)

def _load_error(source: str, err: Exception) -> Exception:
    """A missing or unreadable model, explained (offline machines cannot download)."""
    if Path(source).exists():
        return ValueError(f"{source} is not a loadable image-text-to-text model folder: {type(err).__name__}: {err}")
    return WeightsNotFoundError(
        f"vision-language model {source!r} is not available here. On a machine with network run "
        f"`hf download {source}` and copy $HF_HOME/hub here, or save it with save_pretrained and pass the folder "
        f"(hf:/path/to/model). Cause: {type(err).__name__}: {err}"
    )


class HFCaptioner:
    """A Hugging Face VLM as a :class:`~dldc.egl.base.Captioner`.

    Args:
        source: hub id (``Qwen/Qwen2.5-VL-7B-Instruct``) or a folder written by ``save_pretrained``.
        prompts: prompt id → template (``{scene}``, ``{caption}``); ``Attempt.prompt_id`` picks one.
        revision: hub revision (branch, tag or commit); ``None`` for the default.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        precision: ``auto`` (bf16 on CUDA when supported, else fp16; fp32 on the CPU) or an explicit one.
        trust_remote_code: let the model's repository run its own code (off unless configured).
        max_new_tokens: generation length limit.
        batch_size: images per ``generate`` call.

    Raises:
        WeightsNotFoundError: a hub id that is not in the local cache (offline).
        ValueError: a folder that is not an image-text-to-text model.
    """

    backend = "hf"

    def __init__(
        self,
        source: str,
        prompts: Mapping[str, str],
        revision: str | None = None,
        device: str | torch.device = "auto",
        precision: str = "auto",
        trust_remote_code: bool = False,
        max_new_tokens: int = 96,
        batch_size: int = 8,
    ):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.source = source
        self.model_id = source if revision is None else f"{source}@{revision}"
        self.prompts = dict(prompts)
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.max_new_tokens = max_new_tokens
        settings = json.dumps([self.prompts, max_new_tokens, self.precision], sort_keys=True)
        self.fingerprint = f"hf:{self.model_id}:{hashlib.sha256(settings.encode()).hexdigest()[:12]}"
        self.batch_size = batch_size
        options: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
        try:
            self.processor = AutoProcessor.from_pretrained(source, **options)
            self.model = AutoModelForImageTextToText.from_pretrained(
                source, dtype=DTYPES[self.precision], **options
            ).to(self.device)
        except (OSError, ValueError, KeyError) as err:
            raise _load_error(source, err) from err
        self.model.eval()
        self.tokenizer = getattr(self.processor, "tokenizer", None)
        if self.tokenizer is not None:
            self.tokenizer.padding_side = "left"  # decoder-only generation continues after the prompt
            if self.tokenizer.pad_token is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
        self.has_chat_template = bool(getattr(self.processor, "chat_template", None))

    def prompt_text(self, request: CaptionRequest, prompt_id: str) -> str:
        """The model input text for one request: the chat template around image + prompt."""
        if prompt_id not in self.prompts:
            raise KeyError(f"unknown prompt id {prompt_id!r}; configured: {sorted(self.prompts)}")
        prompt = render_prompt(self.prompts[prompt_id], request.scene, request.caption)
        if not self.has_chat_template:  # BLIP-2 style: the processor inserts the image tokens itself
            return f"Question: {prompt} Answer:"
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def caption(self, requests: Sequence[CaptionRequest], attempt: Attempt) -> list[Proposal]:
        """Generate one caption per request, ``batch_size`` images per call."""
        proposals: list[Proposal] = []
        for batch_index, start in enumerate(range(0, len(requests), self.batch_size)):
            batch = list(requests[start : start + self.batch_size])
            texts = self._generate(batch, attempt, seed=attempt.seed * 100_003 + batch_index)
            proposals += [
                Proposal(text, f"{self.model_id} {attempt.prompt_id} t={attempt.temperature:g}") for text in texts
            ]
        return proposals

    def _generate(self, batch: list[CaptionRequest], attempt: Attempt, seed: int) -> list[str]:
        try:
            return self._generate_once(batch, attempt, seed)
        except torch.OutOfMemoryError:
            if len(batch) == 1:
                raise
            torch.cuda.empty_cache()
            half = len(batch) // 2
            log.warning("out of memory generating %d captions: retrying in halves", len(batch))
            return self._generate(batch[:half], attempt, seed) + self._generate(batch[half:], attempt, seed + 1)

    @torch.no_grad()
    def _generate_once(self, batch: list[CaptionRequest], attempt: Attempt, seed: int) -> list[str]:
        images = [load_rgb(request.image_path) for request in batch]
        texts = [self.prompt_text(request, attempt.prompt_id) for request in batch]
        image_arg = images if not self.has_chat_template else [[image] for image in images]
        inputs = self.processor(text=texts, images=image_arg, return_tensors="pt", padding=True)
        inputs = {key: value.to(self.device) if hasattr(value, "to") else value for key, value in inputs.items()}
        if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        sampling = attempt.temperature > 0
        options: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": sampling}
        if sampling:
            options["temperature"] = attempt.temperature
            torch.manual_seed(seed)  # seeds the CPU and every CUDA generator
        else:  # greedy: drop sampling defaults of the model's generation_config, which would only warn
            options.update(temperature=None, top_p=None, top_k=None)
        output = self.model.generate(**inputs, **options)
        prompt_ids = inputs["input_ids"]
        # Decoder-only models return prompt + continuation; some (encoder-decoder) only the continuation.
        if output.shape[1] > prompt_ids.shape[1] and torch.equal(output[:, : prompt_ids.shape[1]], prompt_ids):
            output = output[:, prompt_ids.shape[1] :]
        return self.processor.batch_decode(output, skip_special_tokens=True)
