"""Image–caption pairs of a manifest as training tensors, and their cached VAE latents.

Training never augments: captions name positions ("a lake at the top left"), so a flip or a
rotation would make them wrong. Each image is therefore decoded and encoded by the VAE *once*
(:func:`encode_latents`) and the cached latent is the VAE posterior's mean, as latent-caching
LoRA trainers use it. For Stable Diffusion's VAE the posterior's standard deviation is about a
thousandth of the latents' spread, so this is what sampling would give; a tiny VAE trained for a
few minutes has a much wider posterior, and sampling from it would teach the UNet to draw grain.

Example:
    >>> pairs = PairData.from_lists(["a", "b"], ["farmland", "lake"], torch.zeros(1, 3, 8, 8, dtype=torch.uint8),
    ...                             [0, 0], ["i:0", "i:1"], ["i"])
    >>> len(pairs), pairs.scene_names
    (2, ['farmland', 'lake'])
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from dldc.data.images import load_rgb, resolve_inside
from dldc.data.manifest import dataset_root, read_manifest
from dldc.iel.indomain_arch import image_to_uint8


@dataclass
class PairData:
    """Training pairs: each caption with the index of its (decoded) image.

    Attributes:
        captions: caption per pair.
        scenes: scene per pair.
        pixels: ``uint8 (n_images, 3, R, R)``, every distinct image once (centre crop + bicubic resize).
        pair_image: ``int64 (n_pairs,)``, row of ``pixels`` of each pair.
        pair_ids: manifest ``pair_id`` per pair.
        image_ids: manifest ``image_id`` per row of ``pixels``.
    """

    captions: list[str]
    scenes: list[str]
    pixels: torch.Tensor
    pair_image: np.ndarray
    pair_ids: list[str]
    image_ids: list[str]

    @classmethod
    def from_lists(
        cls,
        captions: list[str],
        scenes: list[str],
        pixels: torch.Tensor,
        pair_image: list[int],
        pair_ids: list[str],
        image_ids: list[str],
    ) -> PairData:
        return cls(list(captions), list(scenes), pixels, np.asarray(pair_image, dtype=np.int64), pair_ids, image_ids)

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def scene_names(self) -> list[str]:
        return sorted(set(self.scenes))


def _decode(path: Path, size: int) -> torch.Tensor:
    try:
        return image_to_uint8(load_rgb(path), size)
    except (OSError, ValueError) as err:
        raise OSError(f"cannot read {path}: {err} (re-run `dldc ingest`?)") from err


def load_pairs(
    manifest: str | Path, splits: list[str], resolution: int, progress: bool = False, max_pairs: int | None = None
) -> PairData:
    """Read the pairs of ``splits`` from a manifest and decode their images at ``resolution``.

    Args:
        manifest: a ``manifest.parquet`` (:mod:`dldc.data.manifest`).
        splits: which ``split`` values to keep, e.g. ``["train"]``.
        resolution: square side in pixels (centre crop, then bicubic resize).
        progress: show a progress bar while decoding.
        max_pairs: keep only the first pairs in manifest order (quick runs); ``None`` keeps all.

    Raises:
        FileNotFoundError: the manifest does not exist.
        ValueError: no pair of ``splits`` in it.
        OSError: an image cannot be read, or its path escapes the dataset root.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest {manifest} not found; run `dldc ingest` (or set the stage's manifest)")
    frame, meta = read_manifest(manifest)
    frame = frame[frame["split"].isin(splits)].reset_index(drop=True)
    if max_pairs is not None:
        frame = frame.iloc[:max_pairs]
    if frame.empty:
        raise ValueError(f"manifest {manifest} has no pairs in splits {splits}")
    root = dataset_root(manifest, meta)
    images = frame.drop_duplicates("image_id")
    image_ids = images["image_id"].tolist()
    paths = [resolve_inside(root, relative) for relative in images["image"]]
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        decoded = list(
            tqdm(
                pool.map(_decode, paths, [resolution] * len(paths)),
                total=len(paths),
                desc="decode",
                disable=not progress,
            )
        )
    row = {image_id: index for index, image_id in enumerate(image_ids)}
    return PairData(
        captions=frame["caption"].tolist(),
        scenes=frame["scene"].tolist(),
        pixels=torch.stack(decoded),
        pair_image=frame["image_id"].map(row).to_numpy(dtype=np.int64).copy(),
        pair_ids=frame["pair_id"].tolist(),
        image_ids=image_ids,
    )


def to_model_range(pixels: torch.Tensor) -> torch.Tensor:
    """``uint8`` pixels → floats in [-1, 1], the VAE's input range."""
    return pixels.float() / 127.5 - 1.0


@torch.no_grad()
def encode_latents(
    vae: Any, pixels: torch.Tensor, device: torch.device, batch_size: int = 32, progress: bool = False
) -> torch.Tensor:
    """Encode every image once: the VAE posterior's mean times ``scaling_factor``, float32 on the CPU.

    Returns:
        ``(N, C, h, w)`` latents, the UNet's training input.
    """
    scale = float(vae.config.scaling_factor)
    dtype = next(vae.parameters()).dtype
    means = []
    for start in tqdm(range(0, len(pixels), batch_size), desc="encode latents", disable=not progress):
        batch = to_model_range(pixels[start : start + batch_size]).to(device, dtype)
        means.append((vae.encode(batch).latent_dist.mean * scale).float().cpu())
    return torch.cat(means)


def tokenize(tokenizer: Any, captions: list[str]) -> torch.Tensor:
    """Captions → ``(N, 77)`` input ids, padded and truncated to the tokenizer's context (as SD does)."""
    return tokenizer(
        list(captions),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
