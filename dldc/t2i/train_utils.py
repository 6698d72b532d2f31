"""Min-SNR loss weights, shared by the T2I training loops.

The learning-rate schedule is :func:`dldc.schedule.lr_at`; device, precision and thread helpers
are in :mod:`dldc.device`.
"""

from __future__ import annotations

import torch

__all__ = ["min_snr_weights"]


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

