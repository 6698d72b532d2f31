"""Small pieces the T2I training loops share: learning-rate schedule, Min-SNR weights, threads.

Example:
    >>> round(lr_at(0, 100, 1e-3, warmup=10), 6), round(lr_at(99, 100, 1e-3, warmup=10), 6)
    (0.0001, 0.0001)
"""

from __future__ import annotations

import math

import torch

from dldc.iel.factory import resolve_device, resolve_precision

__all__ = ["lr_at", "min_snr_weights", "resolve_device", "resolve_precision", "set_threads"]

MIN_LR_RATIO = 0.1  # cosine decay ends at lr / 10 (nanoGPT's min_lr)


def lr_at(step: int, total: int, lr: float, warmup: int) -> float:
    """Linear warmup to ``lr`` over ``warmup`` steps, then cosine decay to ``lr * MIN_LR_RATIO``."""
    warmup = min(warmup, total // 2)
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup - 1)
    return lr * (MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def min_snr_weights(
    alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, gamma: float | None, prediction_type: str
) -> torch.Tensor:
    """Per-sample loss weights of Min-SNR-γ (Hang et al. 2023), as diffusers' training scripts use them.

    ``snr = ᾱ / (1 - ᾱ)``; epsilon prediction weighs a sample by ``min(snr, γ) / snr``,
    v-prediction by ``min(snr, γ) / (snr + 1)``. ``gamma`` of ``None`` or 0 gives weight 1.
    """
    if not gamma:
        return torch.ones(timesteps.shape, device=timesteps.device)
    alpha = alphas_cumprod[timesteps].float()
    snr = alpha / (1.0 - alpha)
    clipped = torch.clamp(snr, max=gamma)
    if prediction_type == "v_prediction":
        return clipped / (snr + 1.0)
    if prediction_type == "epsilon":
        return clipped / snr
    raise ValueError(f"Min-SNR weighting supports epsilon and v_prediction, not {prediction_type!r}")


def set_threads(threads: int) -> None:
    """Use ``threads`` CPU threads for torch (0 keeps torch's default)."""
    if threads > 0:
        torch.set_num_threads(threads)
