"""Build a scorer from a one-line spec: ``open_clip:…``, ``hf:…`` or ``indomain:…``.

The spec is what ``params.yaml`` and the CLI carry, so it is a plain string; this module
parses it and hands off to the backend, which it imports lazily (importing open_clip costs
seconds, and a run that scores with one backend should not pay for the others).

Spec forms:

* ``open_clip:ARCH`` — an open_clip architecture with random weights (speed benchmarks);
* ``open_clip:ARCH:TAG`` — open_clip pretrained weights, e.g. ``open_clip:ViT-B-32:openai``;
* ``open_clip:ARCH:CHECKPOINT`` — a local ``.pt``/``.pth``/``.bin``/``.safetensors`` file, e.g.
  ``open_clip:ViT-L-14:/models/RemoteCLIP-ViT-L-14.pt``;

  where ``ARCH`` is an open_clip model name (``ViT-B-32``) or the path of an open_clip JSON
  model config (``/cfg/tiny-clip.json``);
* ``hf:HUB_ID[@REVISION]`` or ``hf:DIR`` — a Hugging Face CLIP/SigLIP model;
* ``indomain:DIR`` — the cross-fitted in-domain model (:mod:`dldc.iel.indomain`);
* ``onnx:DIR`` — any of the above exported by ``dldc export-scorer`` and run with ONNX Runtime
  (TensorRT, CUDA or CPU provider; :mod:`dldc.iel.onnx_scorer`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, NamedTuple

import torch

from dldc.device import resolve_device, resolve_precision

if TYPE_CHECKING:
    from dldc.iel.base import CrossFitScorer, Scorer

BACKENDS = ("open_clip", "hf", "indomain", "onnx")
SPEC_FORMS = (
    "open_clip:ARCH_OR_CONFIG_JSON (random weights), "
    "open_clip:ARCH_OR_CONFIG_JSON:TAG (e.g. open_clip:ViT-B-32:openai), "
    "open_clip:ARCH_OR_CONFIG_JSON:CHECKPOINT (e.g. open_clip:ViT-L-14:/models/RemoteCLIP-ViT-L-14.pt), "
    "hf:HUB_ID[@REVISION] or hf:DIR (e.g. hf:openai/clip-vit-base-patch32), "
    "indomain:DIR, "
    "onnx:DIR (an export of dldc export-scorer)"
)


class WeightsNotFoundError(FileNotFoundError):
    """Weights that must be downloaded are not available locally (e.g. offline)."""


class ScorerSpec(NamedTuple):
    """A parsed scorer spec.

    Attributes:
        backend: ``open_clip``, ``hf``, ``indomain`` or ``onnx``.
        target: the architecture / config path, hub id / directory, in-domain or export directory.
        weights: open_clip tag or checkpoint path, hf revision, or ``None``.
    """

    backend: str
    target: str
    weights: str | None = None


def parse_spec(spec: str) -> ScorerSpec:
    """Split a scorer spec into backend, target and weights.

    Args:
        spec: e.g. ``open_clip:ViT-L-14:/models/RemoteCLIP-ViT-L-14.pt``.

    Returns:
        The parsed spec; nothing is loaded or checked on disk.

    Raises:
        ValueError: unknown backend or malformed spec (the message lists the accepted forms).

    Example:
        >>> parse_spec("open_clip:ViT-L-14:/models/RemoteCLIP-ViT-L-14.pt")
        ScorerSpec(backend='open_clip', target='ViT-L-14', weights='/models/RemoteCLIP-ViT-L-14.pt')
        >>> parse_spec("hf:openai/clip-vit-base-patch32")
        ScorerSpec(backend='hf', target='openai/clip-vit-base-patch32', weights=None)
    """
    backend, sep, rest = spec.strip().partition(":")
    if not sep or backend not in BACKENDS:
        raise ValueError(f"unknown scorer spec {spec!r}: the backend must be one of {BACKENDS}; accepted: {SPEC_FORMS}")
    if not rest:
        raise ValueError(f"scorer spec {spec!r} names no model; accepted: {SPEC_FORMS}")

    if backend == "open_clip":
        # Split once: the checkpoint path may itself contain ':' (the architecture never does).
        target, sep, weights = rest.partition(":")
        if not target or (sep and not weights):
            raise ValueError(f"malformed open_clip spec {spec!r}; accepted: {SPEC_FORMS}")
        return ScorerSpec(backend, target, weights or None)
    if backend == "hf":
        # ``@REVISION`` only for hub ids: a local directory name may legitimately contain '@'.
        looks_local = rest.startswith(("/", ".", "~")) or os.path.isdir(rest)
        if not looks_local and "@" in rest:
            target, _, revision = rest.rpartition("@")
            if not target or not revision:
                raise ValueError(f"malformed hf spec {spec!r}; accepted: {SPEC_FORMS}")
            return ScorerSpec(backend, target, revision)
        return ScorerSpec(backend, rest)
    return ScorerSpec(backend, rest)


def create_scorer(
    spec: str,
    device: str | torch.device = "auto",
    precision: str = "auto",
    trust_remote_code: bool = False,
) -> Scorer | CrossFitScorer:
    """Load the scorer a spec names (see the module docstring for the forms).

    Args:
        spec: e.g. ``open_clip:ViT-L-14:/models/RemoteCLIP-ViT-L-14.pt`` or ``hf:DIR``.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``… (ignored by ``indomain``, whose
            loader decides; for ``onnx`` it picks the ONNX Runtime execution provider).
        precision: ``auto``, ``fp32``, ``fp16`` or ``bf16`` (see :func:`dldc.device.resolve_precision`; an ``onnx``
            export runs at the precision it was exported with).
        trust_remote_code: let ``hf`` models run code from their repository (off by default).

    Returns:
        A :class:`~dldc.iel.base.Scorer`, or a :class:`~dldc.iel.base.CrossFitScorer` for ``indomain``
        (and for an ``onnx`` export of it).

    Raises:
        ValueError: malformed spec, unknown architecture/tag, or weights that do not fit the model.
        WeightsNotFoundError: pretrained weights are not available offline.
    """
    parsed = parse_spec(spec)
    if parsed.backend == "indomain":
        from dldc.iel.indomain import load_indomain  # written separately; imported only when asked for

        return load_indomain(parsed.target)
    if parsed.backend == "onnx":
        from dldc.iel.onnx_scorer import load_onnx  # precision is the export's; device picks the provider

        return load_onnx(parsed.target, device=device)

    resolved_device = resolve_device(device)
    resolved_precision = resolve_precision(precision, resolved_device)
    if parsed.backend == "open_clip":
        from dldc.iel.open_clip_scorer import load_open_clip

        return load_open_clip(parsed.target, parsed.weights, resolved_device, resolved_precision)

    from dldc.iel.hf_scorer import load_hf

    return load_hf(
        parsed.target,
        resolved_device,
        resolved_precision,
        revision=parsed.weights,
        trust_remote_code=trust_remote_code,
    )
