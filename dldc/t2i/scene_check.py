"""Does a generator follow the prompt's scene? A nearest-centroid scene classifier on in-domain embeddings.

The in-domain scorer's image tower (:mod:`dldc.iel.indomain`, ``dldc train-scorer``) maps
SynthRS images to an embedding where scenes cluster. :class:`SceneClassifier` averages the
L2-normalised embeddings of reference images per scene (the centroids) and assigns an image to
the scene of the most similar centroid; chance is 1 / number of scenes.

A tiny generator draws through a tiny VAE, which smooths away the fine texture the image tower
leans on, so sharp centroids misjudge even perfect reconstructions (SynthRS, demo base: 95% on
real test images, about 30% on their VAE round trips). :func:`check_base_scenes` therefore
judges samples against centroids of the reference images *after a round trip through the
generator's own VAE* (:func:`vae_round_trip`) and reports that classifier's accuracy on the
round trips of the real test images as the ceiling a perfect generator would reach.

Example:
    >>> import torch
    >>> centroids = torch.eye(2)
    >>> SceneClassifier.from_centroids(["farmland", "lake"], centroids).predict_embeddings(torch.tensor([[0.1, 0.9]]))
    ['lake']
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dldc.iel.base import l2_normalise
from dldc.t2i.data import load_pairs, to_model_range

_ENCODE_BATCH = 128


class SceneClassifier:
    """Nearest scene centroid in the in-domain scorer's image embedding space.

    Attributes:
        scenes: scene names, index-aligned with ``centroids``.
        centroids: ``(S, D)`` L2-normalised mean embedding per scene.
    """

    def __init__(self, scenes: list[str], centroids: torch.Tensor, model: Any = None):
        self.scenes = list(scenes)
        self.centroids = l2_normalise(centroids.float())
        self._model = model

    @classmethod
    def from_centroids(cls, scenes: list[str], centroids: torch.Tensor) -> SceneClassifier:
        """A classifier over given centroids (no image tower: use :meth:`predict_embeddings`)."""
        return cls(scenes, centroids)

    @classmethod
    def fit(
        cls,
        scorer_dir: str | Path,
        manifest: str | Path,
        splits: list[str],
        device: str = "cpu",
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> SceneClassifier:
        """Centroids of the real images of ``splits`` in ``manifest``, embedded by fold model 0 of the scorer.

        Args:
            scorer_dir: an in-domain scorer folder (``dldc train-scorer``).
            manifest: the reference images' manifest.
            splits: which splits' images make the centroids.
            device: where the image tower runs.
            transform: applied to the ``uint8 (N, 3, S, S)`` reference images first, e.g.
                :func:`vae_round_trip` so the centroids live where a generator's images can.

        Raises:
            FileNotFoundError: the scorer folder or the manifest is missing.
        """
        from dldc.iel.indomain import load_indomain

        model = load_indomain(scorer_dir, device=device).fold_model(0)
        pairs = load_pairs(manifest, splits, model.preprocess.size)
        image_scenes = _image_scenes(pairs)
        embeddings = _embed_uint8(model, transform(pairs.pixels) if transform else pairs.pixels)
        scenes = sorted(set(image_scenes))
        labels = np.asarray(image_scenes)
        centroids = torch.stack([embeddings[torch.from_numpy(labels == scene)].mean(0) for scene in scenes])
        return cls(scenes, centroids, model)

    def predict_embeddings(self, embeddings: torch.Tensor) -> list[str]:
        """Scene of the nearest centroid (cosine) for each ``(N, D)`` embedding."""
        similarity = l2_normalise(embeddings.float()) @ self.centroids.T
        return [self.scenes[i] for i in similarity.argmax(dim=1).tolist()]

    def predict(self, images: list[Image.Image]) -> list[str]:
        """Scene of each PIL image."""
        if self._model is None:
            raise ValueError("this classifier has no image tower; build it with SceneClassifier.fit")
        pixels = torch.stack([self._model.preprocess(image.convert("RGB")) for image in images])
        embeddings = torch.cat(
            [self._model.encode_images(pixels[i : i + _ENCODE_BATCH]) for i in range(0, len(pixels), _ENCODE_BATCH)]
        )
        return self.predict_embeddings(embeddings)

    def predict_uint8(self, pixels: torch.Tensor) -> list[str]:
        """Scene of each ``uint8 (N, 3, H, W)`` image at the scorer's size."""
        return self.predict_embeddings(_embed_uint8(self._model, pixels))


def _embed_uint8(model: Any, pixels: torch.Tensor) -> torch.Tensor:
    preprocess = model.preprocess
    mean = torch.tensor(preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std).view(1, 3, 1, 1)
    chunks = []
    for start in range(0, len(pixels), _ENCODE_BATCH):
        batch = (pixels[start : start + _ENCODE_BATCH].float() / 255.0 - mean) / std
        chunks.append(model.encode_images(batch))
    return torch.cat(chunks)


def _image_scenes(pairs: Any) -> list[str]:
    scene_of_row: dict[int, str] = {}
    for row, scene in zip(pairs.pair_image.tolist(), pairs.scenes):
        scene_of_row.setdefault(row, scene)
    return [scene_of_row[row] for row in range(len(pairs.pixels))]


@torch.no_grad()
def vae_round_trip(vae: Any, pixels: torch.Tensor, resolution: int, batch_size: int = 64) -> torch.Tensor:
    """``uint8`` images → encoded and decoded by ``vae`` at ``resolution`` → ``uint8`` at the input size.

    What the best possible generator with this autoencoder could draw: the reference for
    judging its samples.
    """
    device, dtype = vae.device, vae.dtype
    out = []
    for start in range(0, len(pixels), batch_size):
        batch = pixels[start : start + batch_size].float()
        if batch.shape[-1] != resolution:
            batch = F.interpolate(batch, size=resolution, mode="bicubic", antialias=True)
        x = to_model_range(batch.clamp(0, 255)).to(device, dtype)
        decoded = vae.decode(vae.encode(x).latent_dist.mean).sample.float().cpu()
        if decoded.shape[-1] != pixels.shape[-1]:
            decoded = F.interpolate(decoded, size=pixels.shape[-1], mode="bicubic", antialias=True)
        out.append(((decoded.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))
    return torch.cat(out)


def accuracy(predicted: list[str], expected: list[str]) -> dict[str, Any]:
    """Overall and per-scene share of ``predicted == expected``."""
    hits = np.asarray(predicted) == np.asarray(expected)
    per_scene = {scene: round(float(hits[np.asarray(expected) == scene].mean()), 4) for scene in sorted(set(expected))}
    return {"accuracy": round(float(hits.mean()), 4), "n": int(len(hits)), "per_scene": per_scene}


def check_base_scenes(
    base: str,
    manifest: str | Path,
    scorer_dir: str | Path,
    images_per_scene: int,
    steps: int,
    guidance_scale: float,
    seed: int,
    device: torch.device | str = "cpu",
    samples_png: str | Path | None = None,
) -> dict[str, Any]:
    """Generate from held-out prompts of each scene and report how often the scene is recognised.

    Prompts are the first ``images_per_scene`` captions of each scene's ``test`` pairs in
    ``manifest``; image ``i`` uses seed ``seed + i``. Two nearest-centroid classifiers judge them:

    * ``generated``: centroids of the ``train`` images after a round trip through the base's own
      VAE (:func:`vae_round_trip`). The in-domain image tower leans on fine texture that a tiny
      VAE smooths away, so sharp centroids misjudge even perfect reconstructions; its
      ``ceiling`` is its accuracy on the VAE round trips of the ``test`` images.
    * ``generated_sharp_centroids``: centroids of the real ``train`` images (``real``: its
      accuracy on the real ``test`` images).

    Returns:
        ``generated``, ``ceiling``, ``generated_sharp_centroids`` and ``real`` accuracy dicts
        (:func:`accuracy`), ``chance`` and the generation settings.
    """
    from dldc.t2i.grid import image_grid
    from dldc.t2i.models import load_pipeline

    pipe = load_pipeline(base).to(device)
    resolution = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)

    def round_trip(pixels: torch.Tensor) -> torch.Tensor:
        return vae_round_trip(pipe.vae, pixels, resolution)

    sharp = SceneClassifier.fit(scorer_dir, manifest, ["train"])
    smooth = SceneClassifier.fit(scorer_dir, manifest, ["train"], transform=round_trip)
    test = load_pairs(manifest, ["test"], sharp._model.preprocess.size)
    truth = _image_scenes(test)

    prompts, scenes = [], []
    for scene in test.scene_names:
        chosen = [caption for caption, s in zip(test.captions, test.scenes) if s == scene][:images_per_scene]
        prompts += chosen
        scenes += [scene] * len(chosen)
    images = []
    for start in range(0, len(prompts), 32):
        batch = prompts[start : start + 32]
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(len(batch))]
        images += pipe(batch, num_inference_steps=steps, guidance_scale=guidance_scale, generator=generators).images
    if samples_png is not None:
        per_row = max(1, min(8, images_per_scene))
        rows = [[img for img, s in zip(images, scenes) if s == scene][:per_row] for scene in test.scene_names]
        image_grid(rows).save(samples_png)
    return {
        "generated": accuracy(smooth.predict(images), scenes),
        "ceiling": accuracy(smooth.predict_uint8(round_trip(test.pixels)), truth),
        "generated_sharp_centroids": accuracy(sharp.predict(images), scenes),
        "real": accuracy(sharp.predict_uint8(test.pixels), truth),
        "chance": round(1.0 / len(test.scene_names), 4),
        "prompts": len(prompts),
        "steps": steps,
        "guidance_scale": guidance_scale,
        "classifier": "nearest centroid of in-domain fold-0 image embeddings (centroids: train images, "
        "through the base's VAE for `generated` / `ceiling`, as they are for the sharp variants)",
    }
