"""Device and precision helpers shared by every package (it imports only torch).

* :func:`resolve_device` — ``auto`` → CUDA when available, else CPU; refuses CUDA that is not there;
* :func:`resolve_precision` — ``auto`` → bf16/fp16 on CUDA, fp32 on CPU (half precisions are CUDA-only);
* :func:`autocast` — the mixed-precision context of a resolved device and precision;
* :data:`DTYPES` — precision name → torch dtype (for weights loaded in half precision);
* :func:`set_threads` — torch's CPU thread count.

Example:
    >>> resolve_precision("bf16", torch.device("cpu"))
    'fp32'
    >>> DTYPES["bf16"]
    torch.bfloat16
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext

import torch

__all__ = ["DTYPES", "HALF_PRECISIONS", "PRECISIONS", "autocast", "resolve_device", "resolve_precision", "set_threads"]

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "bf16")
HALF_PRECISIONS = ("fp16", "bf16")  # run through CUDA autocast only
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; anything else is checked and passed through.

    Args:
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1`` or a :class:`torch.device`.

    Returns:
        The device to run on.

    Raises:
        ValueError: CUDA was asked for but is not available.
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available (use 'auto' or 'cpu')")
    return resolved


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` → bf16 on CUDA when supported, else fp16; fp32 on CPU.

    Half precision is only used on CUDA, so a half precision asked for on the CPU falls back to
    fp32 (with a warning) rather than running slow, lossy CPU half kernels.

    Args:
        precision: ``auto``, ``fp32``, ``fp16`` or ``bf16``.
        device: the device the model runs on.

    Returns:
        The precision actually used: one of :data:`PRECISIONS`.

    Raises:
        ValueError: unknown precision.
    """
    if precision not in (*PRECISIONS, "auto"):
        raise ValueError(f"unknown precision {precision!r}; use one of {(*PRECISIONS, 'auto')}")
    if device.type != "cuda":
        if precision in HALF_PRECISIONS:
            log.warning("precision %s is only used on CUDA; running fp32 on %s", precision, device)
        return "fp32"
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """The autocast context for a forward pass: mixed precision on CUDA only, else a no-op.

    Args:
        device: the model's device.
        precision: one of :data:`PRECISIONS`.

    Returns:
        A context manager to wrap the forward pass in.
    """
    if device.type == "cuda" and precision in HALF_PRECISIONS:
        return torch.autocast(device_type="cuda", dtype=DTYPES[precision])
    return nullcontext()


def set_threads(threads: int) -> None:
    """Use ``threads`` CPU threads for torch (0 keeps torch's default)."""
    if threads > 0:
        torch.set_num_threads(threads)
