"""Segmentation models, built from config with random weights (nothing is downloaded).

* ``unet``: a compact U-Net (Ronneberger et al. 2015): per level two 3x3 conv-BN-ReLU blocks,
  max-pool down, bilinear up + skip concatenation; ``widths`` are the channels per level.
* ``lraspp``: torchvision's LR-ASPP MobileNetV3-Large, ``weights=None, weights_backbone=None``.
* ``deeplabv3``: torchvision's DeepLabV3 ResNet-50, ``weights=None, weights_backbone=None``.

Every model maps ``(B, 3, H, W)`` float images (ImageNet-normalised) to ``(B, C, H, W)`` logits.

Example:
    >>> import torch
    >>> model = create_segmenter("unet", num_classes=4, widths=(8, 16))
    >>> model(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 4, 32, 32])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

MODELS = ("unet", "lraspp", "deeplabv3")
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """A compact U-Net; input sides need not be multiples of ``2**(levels-1)`` (skips are resized)."""

    def __init__(self, num_classes: int, widths: Sequence[int] = (16, 32, 64, 128), in_channels: int = 3):
        super().__init__()
        if not widths:
            raise ValueError("a U-Net needs at least one level width")
        self.down = nn.ModuleList()
        previous = in_channels
        for width in widths:
            self.down.append(_block(previous, width))
            previous = width
        self.up = nn.ModuleList(_block(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(len(widths) - 1)))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        skips.pop()
        for block in self.up:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)


class _TorchvisionSegmenter(nn.Module):
    """torchvision's segmentation models return ``{"out": logits}``; this returns the logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def create_segmenter(name: str, num_classes: int, widths: Sequence[int] = (16, 32, 64, 128)) -> nn.Module:
    """Build a randomly initialised segmenter (see the module docstring).

    Raises:
        ValueError: unknown model name or fewer than one class.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    if name == "unet":
        return UNet(num_classes, widths)
    if name == "lraspp":
        from torchvision.models.segmentation import lraspp_mobilenet_v3_large

        model = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes)
        return _TorchvisionSegmenter(model)
    if name == "deeplabv3":
        from torchvision.models.segmentation import deeplabv3_resnet50

        return _TorchvisionSegmenter(
            deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)
        )
    raise ValueError(f"unknown segmentation model {name!r}; use one of {MODELS}")


def normalise(images: torch.Tensor) -> torch.Tensor:
    """``(B, H, W, 3)`` uint8 → ``(B, 3, H, W)`` float, ImageNet mean/std."""
    x = images.permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std
